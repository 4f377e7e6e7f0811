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

// ------------------------------------------------------------------ the network rule

/**
 * The egress rule, as code: no module reaches the network except through a
 * chokepoint that checks the allowlist first (modules/core/egress.ts). Over the
 * whole source tree (modules/**, tools/**), only the files named below may
 * import a network-capable module, each with its reason; a listed file that no
 * longer exists is itself a violation, so the list cannot go stale.
 */

/** Node built-ins and npm packages that can open a connection or look up a name. */
export const NODE_NETWORK_MODULES = ["net", "tls", "dgram", "dns", "http", "https", "http2", "mqtt", "ws", "undici", "node-fetch", "axios", "socks"];
/** Moddable modules that can (the classic ones by name, the ECMA-419 ones by prefix). */
export const MODDABLE_NETWORK_MODULES = ["socket", "securesocket", "mqtt", "net", "sntp", "http", "websocket", "dns", "mdns", "ping", "telnet", "wifi"];
export const MODDABLE_NETWORK_PREFIXES = ["embedded:io/socket/", "embedded:network/", "embedded:provider/"];
/** Globals that reach the network without an import (Node's fetch, a browser-style WebSocket, the ECMA-419 host provider). */
export const NETWORK_GLOBALS = ["fetch", "WebSocket", "XMLHttpRequest", "EventSource", "device"];

/** The chokepoints: the only files of the firmware (device or simulated) that touch the network. */
export const NETWORK_CHOKEPOINTS: Readonly<Record<string, string>> = {
  "modules/device/egress.ts": "the device chokepoint: checks the allowlist before DNS, sockets and SNTP",
  "modules/host/egress.ts": "the host chokepoint: checks the allowlist, then dials TLS itself and hands mqtt.js the stream",
};

/** Tools that are the outside world the device talks to, or watch it from outside; none runs inside the firmware. */
export const OUTSIDE_WORLD_TOOLS: Readonly<Record<string, string>> = {
  "tools/standin.ts": "plays AWS IoT Core: the TLS broker the device connects to (listens on 127.0.0.1 only)",
  "tools/cloud.ts": "plays the owner's backend: a separate MQTT client of the broker",
  "tools/snapshot-consumer.ts": "the owner's snapshot viewer: a cloud-side MQTT client",
  "tools/bench/latency.ts": "the bench's bare-MQTT baseline client, measured against the device path",
  "tools/lib/broker.ts": "how the cloud-side tools join a broker (the service identity's mqtt.js client, with deadlines and named refusals); the device never uses it",
  "tools/mosquitto.ts": "runs Mosquitto as a broker of the user's own and probes a free loopback port for it",
  "tools/simulator.ts": "runs the phone apps' MQTT client and a local HTTP button beside the simulated device; the device inside reaches the network only through modules/host/egress",
  "tools/standin/wss.ts": "plays AWS IoT Core's MQTT-over-WebSocket endpoint for browsers, and serves the owner web app's page (127.0.0.1 only)",
  "webapp/main.ts": "the owner web app in a browser: the owner's phone, an MQTT-over-WebSocket client of the broker",
};

/** Specifiers allowed in one file (or under a folder, if `under` ends in "/") although they match the lists above, with the reason. */
export const LINK_LAYER_EXCEPTIONS: readonly { readonly under: string; readonly specifier: string; readonly reason: string }[] = [
  { under: "modules/device/board.ts", specifier: "embedded:network/interface/wifi", reason: "joins the access point (./wifi drives it): the link layer, with no destination and no application data" },
];

export function isNetworkModule(specifier: string): boolean {
  const s = specifier.replace(/^node:/, "");
  const root = s.startsWith("@") ? s.split("/").slice(0, 2).join("/") : s.split("/")[0];
  if (NODE_NETWORK_MODULES.includes(root) || MODDABLE_NETWORK_MODULES.includes(s)) return true;
  if (MODDABLE_NETWORK_PREFIXES.some((p) => s.startsWith(p))) return true;
  return specifier.startsWith("<computed:");
}

/** Imports that load a module at run time: `import type` and `export type` (erased) and import types are left out. */
export function runtimeImportsOf(source: string, fileName = "file.ts"): ImportUse[] {
  const sf = ts.createSourceFile(fileName, source, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const out: ImportUse[] = [];
  const line = (node: ts.Node) => sf.getLineAndCharacterOfPosition(node.getStart()).line + 1;
  const add = (node: ts.Node, spec: ts.Expression | undefined) => {
    if (!spec) return;
    out.push({ specifier: ts.isStringLiteralLike(spec) ? spec.text : `<computed:${spec.getText(sf)}>`, line: line(node) });
  };
  const visit = (node: ts.Node) => {
    if (ts.isImportDeclaration(node)) {
      // `import { type A } from "m"` still loads "m" under verbatimModuleSyntax; only `import type` is erased.
      if (!node.importClause?.isTypeOnly) add(node, node.moduleSpecifier);
    } else if (ts.isExportDeclaration(node)) {
      if (!node.isTypeOnly) add(node, node.moduleSpecifier);
    } else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference)) {
      if (!node.isTypeOnly) add(node, node.moduleReference.expression);
    } else if (ts.isCallExpression(node) && (node.expression.kind === ts.SyntaxKind.ImportKeyword || (ts.isIdentifier(node.expression) && node.expression.text === "require"))) {
      add(node, node.arguments[0] ?? ts.factory.createIdentifier("undefined"));
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

export interface NetworkRuleOptions {
  /** Directories under root to scan. Default modules and tools. */
  roots?: string[];
  chokepoints?: Readonly<Record<string, string>>;
  outsideWorld?: Readonly<Record<string, string>>;
  linkLayer?: typeof LINK_LAYER_EXCEPTIONS;
}

/** Every file under the roots (root-relative, "/"-separated) that may hold code. */
function sourceFiles(root: string, roots: string[]): string[] {
  const out: string[] = [];
  for (const dir of roots) {
    const abs = path.join(root, dir);
    if (!fs.existsSync(abs)) continue;
    for (const name of fs.readdirSync(abs, { recursive: true }) as string[]) {
      if (/\.(?:[cm]?ts|[cm]?js|tsx|jsx)$/.test(name) && !name.endsWith(".d.ts")) out.push(path.posix.join(dir, name.split(path.sep).join("/")));
    }
  }
  return out.sort();
}

/** Check a tree against the network rule. `root` is the repository (or a test tree shaped like it). */
export function checkNetworkTree(root: string, options: NetworkRuleOptions = {}): Violation[] {
  const roots = options.roots ?? ["modules", "tools", "webapp"];
  const chokepoints = options.chokepoints ?? NETWORK_CHOKEPOINTS;
  const outside = options.outsideWorld ?? OUTSIDE_WORLD_TOOLS;
  const linkLayer = options.linkLayer ?? LINK_LAYER_EXCEPTIONS;
  const violations: Violation[] = [];
  for (const listed of [...Object.keys(chokepoints), ...Object.keys(outside)]) {
    if (!fs.existsSync(path.join(root, listed))) violations.push({ file: listed, line: 0, problem: "listed as allowed to reach the network, but the file does not exist (remove it from the list)" });
  }
  for (const file of sourceFiles(root, roots)) {
    if (file in chokepoints || file in outside) continue;
    const source = fs.readFileSync(path.join(root, file), "utf8");
    for (const use of runtimeImportsOf(source, file)) {
      if (!isNetworkModule(use.specifier)) continue;
      if (linkLayer.some((e) => (e.under.endsWith("/") ? file.startsWith(e.under) : file === e.under) && e.specifier === use.specifier)) continue;
      const where = file.startsWith("modules/device/") ? "modules/device/egress.ts" : file.startsWith("modules/") ? "modules/host/egress.ts" : "a chokepoint, or list this tool in OUTSIDE_WORLD_TOOLS with its reason";
      violations.push({ file, line: use.line, problem: `imports ${use.specifier}: only the egress chokepoints may reach the network (go through ${where})` });
    }
    for (const g of hostGlobalsUsed(source, file, NETWORK_GLOBALS)) {
      violations.push({ file, line: g.line, problem: `uses the global ${g.specifier}: only the egress chokepoints may reach the network` });
    }
  }
  return violations;
}
