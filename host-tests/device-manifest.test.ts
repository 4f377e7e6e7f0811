/*
 * The Moddable manifest, checked without the SDK.
 *
 * mcconfig resolves module specifiers from manifest.json (and the board files
 * it includes for each platform), and XS resolves relative imports against
 * those specifiers at run time, not against the file system. These tests
 * rebuild each platform's module map the way tools/mcmanifest.js does for the
 * parts Doorward uses (local "include", "modules" with a trailing "*",
 * "platforms" with the first matching key winning) and check that every file
 * is there, every import resolves on every platform, nothing Node-only is
 * imported, nothing preloaded drags in tweetnacl, and the shipped config
 * passes the device's own settings parser. The checkers are also run on a
 * broken tree, so a check that stops finding problems fails too.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { builtinModules } from "node:module";
import { importsOf } from "../tools/import-rules";
import { parseSettings, SettingsError } from "../modules/device/settings";

const ROOT = path.resolve(".");
const BOARDS = ["esp32/xiao_esp32s3_sense", "esp32/m5atom_s3r_m12", "esp32/lilygo_t_camera_plus_s3"];
const PLATFORMS = [...BOARDS, "lin"];
/** SDK modules device code may import (all provided by manifest.json's includes). */
const SDK_MODULES = ["preference", "timer", "time", "net", "crypt", "gcm", "Resource", "mc/config", "mc/ffi"];

type Json = Record<string, any>;

interface Manifest {
  file: string;
  json: Json;
}

function readManifest(file: string): Manifest {
  return { file, json: JSON.parse(fs.readFileSync(file, "utf8")) };
}

/** mcmanifest.js matchPlatform: the first key (in order) that matches the longest prefix of the name. */
function matchPlatform(platforms: Json | undefined, name: string): Json | undefined {
  if (!platforms) return undefined;
  const parts = name.split("/");
  while (parts.length) {
    const partial = parts.join("/");
    for (const n of Object.keys(platforms)) {
      if (n.endsWith("/*") ? partial.startsWith(n.slice(0, -1)) : partial === n) return platforms[n];
    }
    parts.length -= 1;
  }
  return platforms["..."];
}

/** The local manifests mcconfig merges for a platform, includes first (SDK includes, "$(...)", are skipped). */
function manifestsFor(root: string, platform: string): Manifest[] {
  const out: Manifest[] = [];
  const visit = (file: string) => {
    const m = readManifest(file);
    const p = matchPlatform(m.json.platforms, platform);
    const includes = [...[m.json.include ?? []].flat(), ...[p?.include ?? []].flat()] as string[];
    for (const inc of includes) if (!inc.startsWith("$(")) visit(path.resolve(path.dirname(file), inc));
    out.push(m);
  };
  visit(path.join(root, "manifest.json"));
  return out;
}

interface Mapping {
  specifier: string;
  /** Absolute path without extension (with a trailing "*" for a wildcard). */
  source: string;
  declaredIn: string;
}

function sectionsOf(m: Manifest, platform: string): Json[] {
  const p = matchPlatform(m.json.platforms, platform);
  return p ? [m.json, p] : [m.json];
}

/**
 * specifier → file (absolute, with extension) for one platform, wildcards expanded. As in
 * mcmanifest.js (appendFile), the first source for a specifier wins, in merge order: included
 * manifests before the one including them, top level before its platform section.
 */
function moduleMap(root: string, platform: string): { files: Map<string, string>; mappings: Mapping[]; problems: string[] } {
  const files = new Map<string, string>();
  const mappings: Mapping[] = [];
  const problems: string[] = [];
  for (const m of manifestsFor(root, platform)) {
    for (const section of sectionsOf(m, platform)) {
      for (const [specifier, value] of Object.entries((section.modules ?? {}) as Record<string, string | string[]>)) {
        for (const src of [value].flat()) {
          if (typeof src !== "string" || src.startsWith("$(")) continue;
          const source = path.resolve(path.dirname(m.file), src);
          mappings.push({ specifier, source, declaredIn: path.relative(root, m.file) });
          if (source.endsWith("*")) {
            const dir = path.dirname(source);
            const prefix = path.basename(source).slice(0, -1);
            if (!fs.existsSync(dir)) { problems.push(`${specifier}: directory ${path.relative(root, dir)} missing`); continue; }
            const names = fs.readdirSync(dir).filter((f) => f.startsWith(prefix) && /\.(ts|js)$/.test(f) && !f.endsWith(".d.ts"));
            if (!names.length) problems.push(`${specifier}: no modules in ${path.relative(root, dir)}`);
            for (const f of names) {
              const target = specifier.slice(0, -1) + f.slice(prefix.length).replace(/\.(ts|js)$/, "");
              if (!files.has(target)) files.set(target, path.join(dir, f));
            }
          } else {
            const file = [".ts", ".js"].map((e) => source + e).find((f) => fs.existsSync(f));
            if (!file) problems.push(`${specifier}: ${path.relative(root, source)}.ts/.js does not exist (${path.relative(root, m.file)})`);
            else if (!files.has(specifier)) files.set(specifier, file);
          }
        }
      }
    }
  }
  return { files, mappings, problems };
}

const exportsOf = (file: string) =>
  [...fs.readFileSync(file, "utf8").matchAll(/^export\s+(?:default\s+)?(?:function|class|const|let|interface|type)\s+(\w+)|^export default/gm)].map((m) => m[1] ?? "default").sort();

/** Problems with imports, for every mapped TS module of a platform. */
function importProblems(root: string, platform: string, npmPackages: string[]): string[] {
  const { files } = moduleMap(root, platform);
  const problems: string[] = [];
  for (const [specifier, file] of files) {
    if (!file.endsWith(".ts")) continue;
    const rel = path.relative(root, file);
    for (const { specifier: imported } of importsOf(fs.readFileSync(file, "utf8"), file)) {
      if (imported.startsWith(".")) {
        const runtime = path.posix.normalize(path.posix.join(path.posix.dirname(specifier), imported));
        const onDisk = path.resolve(path.dirname(file), imported) + ".ts";
        if (!files.has(runtime)) problems.push(`${platform}: ${rel} imports ${imported}, i.e. "${runtime}", which is not mapped`);
        else if (!fs.existsSync(onDisk)) problems.push(`${platform}: ${rel} imports ${imported}, which is not a file`);
        else if (files.get(runtime) !== onDisk && exportsOf(files.get(runtime)!).join() !== exportsOf(onDisk).join()) {
          problems.push(`${platform}: "${runtime}" runs ${path.relative(root, files.get(runtime)!)} but ${rel} is type-checked against ${path.relative(root, onDisk)}, and their exports differ`);
        }
        continue;
      }
      const bare = imported.replace(/^node:/, "");
      if (imported.startsWith("node:") || builtinModules.includes(bare) && !SDK_MODULES.includes(imported)) problems.push(`${platform}: ${rel} imports the Node module ${imported}`);
      else if (imported === "tweetnacl") { if (!files.has("tweetnacl")) problems.push(`${platform}: tweetnacl is not mapped`); }
      else if (npmPackages.includes(imported.split("/")[0])) problems.push(`${platform}: ${rel} imports the npm package ${imported}`);
      else if (!imported.startsWith("embedded:") && !SDK_MODULES.includes(imported)) problems.push(`${platform}: ${rel} imports ${imported}, not a known Moddable module`);
    }
  }
  return problems;
}

/** Local modules reachable from the preload list; tweetnacl must not be among them (its setPRNG writes a frozen binding). */
function preloadProblems(root: string, platform: string): string[] {
  const { files } = moduleMap(root, platform);
  const preload = manifestsFor(root, platform).flatMap((m) => sectionsOf(m, platform).flatMap((s) => [s.preload ?? []].flat() as string[]));
  const problems: string[] = [];
  const seen = new Set<string>();
  const visit = (specifier: string, via: string) => {
    if (specifier === "tweetnacl") { problems.push(`${platform}: preloading ${via} pulls in tweetnacl`); return; }
    if (seen.has(specifier)) return;
    seen.add(specifier);
    const file = files.get(specifier);
    if (!file?.endsWith(".ts")) return;
    for (const { specifier: imported } of importsOf(fs.readFileSync(file, "utf8"), file)) {
      if (imported.startsWith(".")) visit(path.posix.normalize(path.posix.join(path.posix.dirname(specifier), imported)), via);
      else if (imported === "tweetnacl") visit("tweetnacl", via);
    }
  };
  for (const p of preload) {
    if (p.startsWith("core/") || p.startsWith("device/") || p === "tweetnacl") {
      if (!files.has(p)) problems.push(`${platform}: preload ${p} is not mapped`);
      visit(p, p);
    }
  }
  return problems;
}

/** Deep merge, as mcmanifest.js mergeProperties does for "config". */
function mergeProperties(target: Json, source: Json | undefined): Json {
  for (const [k, v] of Object.entries(source ?? {})) {
    if (v && typeof v === "object" && !Array.isArray(v) && target[k] && typeof target[k] === "object" && !Array.isArray(target[k])) mergeProperties(target[k], v);
    else target[k] = structuredClone(v);
  }
  return target;
}

function configFor(root: string, platform: string): Json {
  const config: Json = {};
  for (const m of manifestsFor(root, platform)) for (const s of sectionsOf(m, platform)) mergeProperties(config, s.config);
  return config;
}

const npmPackages = () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8"));
  return Object.keys({ ...pkg.dependencies, ...pkg.devDependencies }).filter((n) => n !== "tweetnacl");
};

const manifest = () => readManifest(path.join(ROOT, "manifest.json")).json;

test("every module path the manifest names exists, on every platform", (t) => {
  for (const platform of PLATFORMS) {
    const { problems, files } = moduleMap(ROOT, platform);
    t.deepEqual(problems, [], platform);
    t.true(files.has("device/button") && files.has("device/random"), `${platform} maps its platform modules`);
  }
});

test("every file in modules/device is listed, and the entry module is the one creation.main names", (t) => {
  const sources = new Set(PLATFORMS.flatMap((p) => [...moduleMap(ROOT, p).files.values()]));
  const device = fs.readdirSync("modules/device").filter((f) => f.endsWith(".ts") && !f.endsWith(".d.ts"));
  t.true(device.length >= 10);
  for (const f of device) t.true(sources.has(path.resolve("modules/device", f)), `modules/device/${f} is not in manifest.json or a hardware/*.json`);
  const main = manifest().creation?.main;
  t.is(main, "device/main");
  for (const p of PLATFORMS) t.is(moduleMap(ROOT, p).files.get(main), path.resolve("modules/device/main.ts"), p);
});

test("every core module is mapped as core/<name> on every platform; tweetnacl maps to the vendored ES module", (t) => {
  const core = fs.readdirSync("modules/core").filter((f) => f.endsWith(".ts") && !f.endsWith(".d.ts"));
  for (const p of PLATFORMS) {
    const { files } = moduleMap(ROOT, p);
    for (const f of core) t.is(files.get("core/" + f.slice(0, -3)), path.resolve("modules/core", f), `${p}: core/${f}`);
    t.is(files.get("tweetnacl"), path.resolve("modules/vendor/tweetnacl.js"), p);
  }
});

test("relative imports resolve at run time on every platform, and no device module imports Node or npm code", (t) => {
  for (const p of PLATFORMS) t.deepEqual(importProblems(ROOT, p, npmPackages()), [], p);
});

test("nothing preloaded reaches tweetnacl", (t) => {
  const preload = [manifest().preload].flat();
  t.false(preload.includes("tweetnacl"));
  for (const p of PLATFORMS) t.deepEqual(preloadProblems(ROOT, p), [], p);
});

test("TLS: DHE_RSA off; the trust anchors are DER files the config names", (t) => {
  const m = manifest();
  t.is(m.config.tls.DHE_RSA, false);
  const anchors: string[] = m.config.doorward.trustAnchors;
  const resources = ([m.resources["*"]].flat() as string[]).map((r) => path.resolve(r));
  t.deepEqual(resources.map((r) => path.basename(r) + ".der").sort(), [...anchors].sort());
  for (const r of resources) {
    const der = fs.readFileSync(r + ".der");
    t.is(der[0], 0x30, `${r}.der is DER`);
    t.true(der.length > 300 && der.length < 2000);
  }
});

test("platforms: the three camera boards and lin, each matched before the esp32/* catch-all", (t) => {
  const platforms = manifest().platforms;
  const keys = Object.keys(platforms);
  for (const p of PLATFORMS) t.truthy(platforms[p], p);
  for (const b of BOARDS) t.true(keys.indexOf(b) < keys.indexOf("esp32/*"), `${b} must come before esp32/*`);
  t.truthy(platforms["esp32/*"].error);
  t.truthy(platforms["..."].error);
  for (const b of BOARDS) t.is(matchPlatform(platforms, b), platforms[b]);
  t.is(matchPlatform(platforms, "esp32/some_other_board"), platforms["esp32/*"]);
  t.is(matchPlatform(platforms, "mac"), platforms["..."]);
});

test("the merged config of each platform passes the device's settings parser", (t) => {
  const lin = parseSettings(configFor(ROOT, "lin"));
  t.is(lin.board, "lin");
  t.is(lin.broker.host, "127.0.0.1");
  t.is(lin.broker.serverName, "localhost");
  t.true(lin.button.simulatedPressEveryMs! > 0);
  t.true(lin.keepAliveSeconds <= 1200);
  for (const b of BOARDS) {
    const config = configFor(ROOT, b);
    t.is(config.tls.DHE_RSA, false);
    // The shipped endpoint is a placeholder: a board build without broker= must stop at boot, saying so.
    t.throws(() => parseSettings(config), { instanceOf: SettingsError, message: /broker/ }, b);
    const s = parseSettings({ ...config, broker: "abc123-ats.iot.eu-west-1.amazonaws.com", thing: "door-7" });
    t.is(s.board, b.split("/")[1]);
    t.true(Number.isInteger(s.button.pin), `${b} has a button pin`);
    t.is(s.broker.serverName, "abc123-ats.iot.eu-west-1.amazonaws.com", "SNI follows the endpoint");
    t.is(s.thing, "door-7");
  }
});

test("FFI: each platform binds the RNG function its random module calls, and not the other platform's", (t) => {
  const ffiOf = (p: string) => Object.assign({}, ...manifestsFor(ROOT, p).flatMap((m) => sectionsOf(m, p).map((s) => s.ffi?.functions ?? {})));
  for (const b of BOARDS) {
    const bound = ffiOf(b);
    t.deepEqual(bound.esp_fill_random, { arguments: ["void*", "uint32_t"], returns: "void" });
    t.false("getrandom" in bound, `${b} must not bind glibc's getrandom`);
  }
  t.deepEqual(ffiOf("lin"), { getrandom: { arguments: ["void*", "uint64_t", "uint32_t"], returns: "int64_t" } });
  t.regex(fs.readFileSync(moduleMap(ROOT, BOARDS[0]).files.get("device/random")!, "utf8"), /\.esp_fill_random\(/);
  t.regex(fs.readFileSync(moduleMap(ROOT, "lin").files.get("device/random")!, "utf8"), /\.getrandom\(/);
  for (const f of fs.readdirSync("modules/device")) t.notRegex(fs.readFileSync(path.join("modules/device", f), "utf8"), /Math\.random/, f);
});

test("the checkers find problems in a broken tree (so these tests can fail)", (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-manifest-"));
  const write = (f: string, s: string) => { fs.mkdirSync(path.dirname(path.join(dir, f)), { recursive: true }); fs.writeFileSync(path.join(dir, f), s); };
  write("manifest.json", JSON.stringify({
    modules: { "core/*": "./modules/core/*", "device/a": "./modules/device/a", "device/gone": "./modules/device/gone", "device/v": "./modules/device/v" },
    preload: ["core/x"],
    platforms: { lin: { include: "./hardware/lin.json" } },
  }));
  write("hardware/lin.json", JSON.stringify({ modules: { "device/v": "../modules/device/v-sim" } }));
  write("modules/core/x.ts", 'import nacl from "tweetnacl";\nexport const x = nacl;\n');
  write("modules/device/a.ts", 'import fs from "node:fs";\nimport { m } from "mqtt";\nimport os from "os";\nimport { b } from "./b";\nimport { v } from "./v";\nexport const a = [fs, m, os, b, v];\n');
  write("modules/device/b.ts", "export const b = 1;\n");
  write("modules/device/v.ts", "export const v = 1;\n");
  write("modules/device/v-sim.ts", "export const w = 1;\n");
  const { problems } = moduleMap(dir, "lin");
  t.true(problems.some((p) => p.includes("device/gone")), problems.join("\n"));
  const imports = importProblems(dir, "lin", ["mqtt"]).join("\n");
  for (const needle of ["Node module node:fs", "Node module os", "npm package mqtt", '"device/b", which is not mapped', "tweetnacl is not mapped", "exports differ"]) t.true(imports.includes(needle), `missed: ${needle}\n${imports}`);
  t.true(preloadProblems(dir, "lin").some((p) => p.includes("pulls in tweetnacl")));
});
