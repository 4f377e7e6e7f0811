/*
 * Module resolution for core code on XS, mirroring what mcconfig builds.
 *
 * The device manifest maps "core/*" to ./modules/core/* and "tweetnacl" to
 * ./modules/vendor/tweetnacl, so on the device a core module's full specifier
 * is "core/<name>", a relative extensionless import resolves against the
 * importer's specifier ("./bytes" from "core/events" is "core/bytes"), and the
 * only bare specifier the core may use is "tweetnacl". Everything else a core
 * module could name (node:*, a Moddable module, another package, a file
 * outside modules/core) is refused here with the specifier and importer, so a
 * leak fails in the XS tests instead of on the device.
 *
 * "harness/<name>" modules are test scaffolding (tools/xs/deterministic.ts):
 * run bodies may import them, core modules may not.
 */
import { existsSync, statSync } from "node:fs";
import { join, posix } from "node:path";

export interface ModuleRoots {
  /** Directory served as "core/*" (modules/core, or a fixture directory in tests). */
  coreDir: string;
  /** File served as "tweetnacl". */
  naclFile: string;
  /** Files served as "harness/<name>", by name. */
  harness: Readonly<Record<string, string>>;
}

export interface ResolvedModule {
  specifier: string;
  file: string;
  /** How the file is turned into JavaScript before XS sees it. */
  loader: "ts" | "js";
}

export class ModuleRefusedError extends Error {
  override name = "ModuleRefusedError";
}

const CORE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;
const HAS_EXTENSION = /\.(?:[cm]?[jt]s|json)$/;

function describe(importer: string | undefined): string {
  return importer === undefined ? "the harness" : importer;
}

/**
 * Turn an import specifier, as written in `importer` (undefined for a
 * top-level import from a harness run), into a full specifier the loader serves.
 */
export function resolveSpecifier(specifier: string, importer: string | undefined, roots: ModuleRoots): string {
  const refuse = (why: string): never => {
    throw new ModuleRefusedError(`xs loader: cannot import "${specifier}" from ${describe(importer)}: ${why}`);
  };
  const fromCore = importer !== undefined && importer.startsWith("core/");
  let full: string;
  if (specifier.startsWith("./") || specifier.startsWith("../")) {
    if (importer === undefined) refuse("a top-level import needs a full specifier such as \"core/events\"");
    if (HAS_EXTENSION.test(specifier)) refuse("Moddable module specifiers carry no file extension");
    full = posix.normalize(posix.join(posix.dirname(importer!), specifier));
  } else if (specifier === "tweetnacl") {
    full = specifier;
  } else if (!fromCore && (specifier.startsWith("core/") || specifier.startsWith("harness/"))) {
    full = specifier;
  } else {
    return refuse(
      fromCore
        ? "core modules may only import other core modules (\"./<name>\") and \"tweetnacl\"; anything else is not on the device"
        : "only \"core/<name>\", \"harness/<name>\" and \"tweetnacl\" are served",
    );
  }
  if (full === "tweetnacl") return full;
  const slash = full.indexOf("/");
  const space = full.slice(0, slash);
  const name = full.slice(slash + 1);
  if (space === "core") {
    if (!CORE_NAME.test(name) || HAS_EXTENSION.test(name)) refuse(`"${full}" is not a module in modules/core`);
    if (!isFile(join(roots.coreDir, `${name}.ts`))) refuse(`"${full}" has no file ${join(roots.coreDir, `${name}.ts`)}`);
    return full;
  }
  if (space === "harness" && !fromCore) {
    if (!Object.hasOwn(roots.harness, name)) refuse(`there is no harness module "${name}"`);
    return full;
  }
  return refuse(fromCore ? `it resolves to "${full}", outside modules/core` : `"${full}" is not served`);
}

/** The file behind a full specifier returned by resolveSpecifier. */
export function moduleFile(specifier: string, roots: ModuleRoots): ResolvedModule {
  if (specifier === "tweetnacl") return { specifier, file: roots.naclFile, loader: "js" };
  if (specifier.startsWith("core/")) return { specifier, file: join(roots.coreDir, `${specifier.slice(5)}.ts`), loader: "ts" };
  if (specifier.startsWith("harness/") && Object.hasOwn(roots.harness, specifier.slice(8))) {
    return { specifier, file: roots.harness[specifier.slice(8)], loader: "ts" };
  }
  throw new ModuleRefusedError(`xs loader: "${specifier}" is not a full specifier the loader serves`);
}

function isFile(path: string): boolean {
  return existsSync(path) && statSync(path).isFile();
}
