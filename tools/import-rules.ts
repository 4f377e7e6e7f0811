/*
 * The core's import rule, as code: the core imports only its own modules and
 * tweetnacl, and uses no host global. Tests run it over the whole tree, and the
 * XS harness enforces the same rule again at load time on the real engine.
 *
 * It parses with TypeScript itself, so comments, strings and odd formatting
 * can neither hide an import nor fake one.
 */
import fs from "node:fs";
import path from "node:path";
import ts from "typescript";

export const CORE_ALLOWED_PACKAGES = ["tweetnacl"];

/** Globals that exist on Node or Moddable but not on every engine the core runs on. */
export const HOST_GLOBALS = [
  "process", "Buffer", "require", "module", "exports", "__dirname", "__filename", "global",
  "setTimeout", "setInterval", "setImmediate", "clearTimeout", "clearInterval", "queueMicrotask",
  "TextEncoder", "TextDecoder", "fetch", "console", "trace", "crypto", "performance", "navigator", "self", "window",
];

export interface ImportUse {
  specifier: string;
  line: number;
}

/** Every module specifier a file uses: static imports, re-exports, dynamic import(), require(). */
export function importsOf(source: string, fileName = "file.ts"): ImportUse[] {
  const sf = ts.createSourceFile(fileName, source, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const out: ImportUse[] = [];
  const add = (node: ts.Node, spec: ts.Expression | undefined) => {
    if (spec && ts.isStringLiteralLike(spec)) out.push({ specifier: spec.text, line: sf.getLineAndCharacterOfPosition(node.getStart()).line + 1 });
    else if (spec) out.push({ specifier: `<computed:${spec.getText(sf)}>`, line: sf.getLineAndCharacterOfPosition(node.getStart()).line + 1 });
  };
  const visit = (node: ts.Node) => {
    if (ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) add(node, node.moduleSpecifier);
    else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference)) add(node, node.moduleReference.expression);
    else if (ts.isCallExpression(node) && (node.expression.kind === ts.SyntaxKind.ImportKeyword || (ts.isIdentifier(node.expression) && node.expression.text === "require"))) add(node, node.arguments[0]);
    else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument)) add(node, node.argument.literal as ts.Expression);
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

/** Uses of host globals as free identifiers (not as property names or locally declared names). */
export function hostGlobalsUsed(source: string, fileName = "file.ts", globals = HOST_GLOBALS): ImportUse[] {
  const sf = ts.createSourceFile(fileName, source, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const declared = new Set<string>();
  const collect = (node: ts.Node) => {
    if ((ts.isVariableDeclaration(node) || ts.isFunctionDeclaration(node) || ts.isClassDeclaration(node) || ts.isParameter(node)) && node.name && ts.isIdentifier(node.name)) declared.add(node.name.text);
    if (ts.isImportSpecifier(node) || ts.isImportClause(node) || ts.isNamespaceImport(node)) if (node.name) declared.add(node.name.text);
    ts.forEachChild(node, collect);
  };
  collect(sf);
  const out: ImportUse[] = [];
  const visit = (node: ts.Node) => {
    if (ts.isIdentifier(node) && globals.includes(node.text) && !declared.has(node.text)) {
      const p = node.parent;
      const isPropertyName =
        (ts.isPropertyAccessExpression(p) && p.name === node) ||
        ((ts.isPropertyAssignment(p) || ts.isPropertyDeclaration(p) || ts.isPropertySignature(p) || ts.isMethodDeclaration(p) || ts.isMethodSignature(p)) && p.name === node) ||
        (ts.isQualifiedName(p) && p.right === node);
      if (!isPropertyName) out.push({ specifier: node.text, line: sf.getLineAndCharacterOfPosition(node.getStart()).line + 1 });
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

export interface Violation {
  file: string;
  line: number;
  problem: string;
}

/** Check every .ts file under coreDir against the core rule. */
export function checkCoreTree(coreDir: string): Violation[] {
  const violations: Violation[] = [];
  const root = path.resolve(coreDir);
  for (const name of fs.readdirSync(root, { recursive: true }) as string[]) {
    if (!name.endsWith(".ts")) continue;
    const file = path.join(root, name);
    const source = fs.readFileSync(file, "utf8");
    for (const use of importsOf(source, file)) {
      const s = use.specifier;
      if (CORE_ALLOWED_PACKAGES.includes(s)) continue;
      if (s.startsWith("./") || s.startsWith("../")) {
        if (/\.[cm]?[jt]s$/.test(s)) violations.push({ file, line: use.line, problem: `"${s}": use an extensionless specifier (mcconfig resolves those)` });
        const target = path.resolve(path.dirname(file), s);
        if (target !== root && !target.startsWith(root + path.sep)) violations.push({ file, line: use.line, problem: `"${s}" leaves the core` });
        else if (!fs.existsSync(target + ".ts")) violations.push({ file, line: use.line, problem: `"${s}" does not resolve to a core module` });
        continue;
      }
      violations.push({ file, line: use.line, problem: `imports "${s}": the core may import only its own modules and ${CORE_ALLOWED_PACKAGES.join(", ")}` });
    }
    for (const g of hostGlobalsUsed(source, file)) violations.push({ file, line: g.line, problem: `uses host global ${g.specifier}: reach the platform through a port` });
  }
  return violations;
}
