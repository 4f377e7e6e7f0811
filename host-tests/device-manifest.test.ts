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
 *
 * Per board it also checks what a maker flashes: the pins (defined, distinct,
 * clear of the camera, the PSRAM and the strapping pins), the partition table
 * (two equal OTA slots, otadata, nvs, nvs_keys, aligned, inside the flash the
 * sdkconfig declares), the sdkconfig (rollback on), the key hardware each board
 * binds, and that a board build's egress allowlist and trust store are the
 * production ones: the AWS endpoint given at build time, one NTP host, Amazon
 * Root CA 1 and 3, and nothing of the simulator's.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { builtinModules } from "node:module";
import { importsOf } from "../tools/import-rules";
import nacl from "tweetnacl";
import { parseSettings, SettingsError } from "../modules/device/settings";
import { AMAZON_ROOTS, AMAZON_ROOT_RESOURCES, EgressConfigError, parseEgressConfig, trustAnchorNamesProblem } from "../modules/core/egress";
import { toHex } from "../modules/core/bytes";
import { BOARDS as MC_BOARDS, BUDGETS } from "../tools/mc";

const ROOT = path.resolve(".");
const S3_BOARDS = ["esp32/xiao_esp32s3_sense", "esp32/m5atom_s3r_m12", "esp32/lilygo_t_camera_plus_s3"];
const BOARDS = [...S3_BOARDS, "esp32/esp32cam"];
const PLATFORMS = [...BOARDS, "lin"];
const ENDPOINT = "abc123example-ats.iot.eu-west-1.amazonaws.com";
/** SDK modules device code may import (all provided by manifest.json's includes). */
const SDK_MODULES = ["preference", "timer", "time", "net", "crypt", "gcm", "Resource", "mc/config", "mc/ffi", "worker"];

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

/**
 * Problems with imports, for every mapped TS module of a platform. A relative import must reach, on
 * disk, the very file the platform maps its run-time specifier to: mcconfig's tsc follows the path on
 * disk whatever the platform, XS resolves the specifier through the manifest, and where the two differ
 * one platform's file is compiled into another's build (an ESP32-only module in the simulator's). A
 * module that differs per platform is imported by its manifest specifier ("device/board"), which tsc
 * resolves through the generated per-platform paths, like XS.
 */
function importProblems(root: string, platform: string, npmPackages: string[]): string[] {
  const { files } = moduleMap(root, platform);
  const problems: string[] = [];
  for (const [specifier, file] of files) {
    if (!file.endsWith(".ts")) continue;
    const rel = path.relative(root, file);
    for (const { specifier: imported } of importsOf(fs.readFileSync(file, "utf8"), file)) {
      if (imported.startsWith(".")) {
        const runtime = path.posix.normalize(path.posix.join(path.posix.dirname(specifier), imported));
        const onDisk = [".ts", ".js"].map((e) => path.resolve(path.dirname(file), imported) + e).find((f) => fs.existsSync(f));
        if (!files.has(runtime)) problems.push(`${platform}: ${rel} imports ${imported}, i.e. "${runtime}", which is not mapped`);
        else if (!onDisk) problems.push(`${platform}: ${rel} imports ${imported}, which is not a file`);
        else if (files.get(runtime) !== onDisk) {
          problems.push(`${platform}: ${rel} imports ${imported}: tsc compiles ${path.relative(root, onDisk)} but "${runtime}" is ${path.relative(root, files.get(runtime)!)} here; import it as "${runtime}"`);
        }
        continue;
      }
      if (files.has(imported) && !imported.startsWith("embedded:") && !SDK_MODULES.includes(imported)) {
        if (!files.get(imported)!.startsWith(path.join(root, "modules") + path.sep)) problems.push(`${platform}: ${rel} imports ${imported}, which maps outside modules/`);
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
      else if (imported === "tweetnacl" || files.has(imported)) visit(imported, via);
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

const ffiOf = (p: string): Json => Object.assign({}, ...manifestsFor(ROOT, p).flatMap((m) => sectionsOf(m, p).map((s) => s.ffi?.functions ?? {})));
/** build.* of a platform, "./" paths resolved against the manifest that sets them (as mcmanifest.js parseBuild does). */
function buildFor(root: string, platform: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of manifestsFor(root, platform)) {
    for (const s of sectionsOf(m, platform)) {
      for (const [k, v] of Object.entries((s.build ?? {}) as Record<string, string>)) out[k] = v.startsWith("./") ? path.resolve(path.dirname(m.file), v) : v;
    }
  }
  return out;
}

test("every module path the manifest names exists, on every platform", (t) => {
  for (const platform of PLATFORMS) {
    const { problems, files } = moduleMap(ROOT, platform);
    t.deepEqual(problems, [], platform);
    for (const m of ["device/button", "device/random", "device/board", "device/vault-key", "device/main", "device/egress"]) t.true(files.has(m), `${platform} maps ${m}`);
  }
});

test("every file in modules/device is listed, and the entry module is the one creation.main names", (t) => {
  const sources = new Set(PLATFORMS.flatMap((p) => [...moduleMap(ROOT, p).files.values()]));
  const device = fs.readdirSync("modules/device").filter((f) => f.endsWith(".ts") && !f.endsWith(".d.ts"));
  t.true(device.length >= 30);
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

test("platforms: the four boards and lin, each matched before the esp32/* catch-all; tools/mc.ts builds exactly these", (t) => {
  const platforms = manifest().platforms;
  const keys = Object.keys(platforms);
  for (const p of PLATFORMS) t.truthy(platforms[p], p);
  for (const b of BOARDS) t.true(keys.indexOf(b) < keys.indexOf("esp32/*"), `${b} must come before esp32/*`);
  t.truthy(platforms["esp32/*"].error);
  t.truthy(platforms["..."].error);
  for (const b of BOARDS) t.is(matchPlatform(platforms, b), platforms[b]);
  t.is(matchPlatform(platforms, "esp32/some_other_board"), platforms["esp32/*"]);
  t.is(matchPlatform(platforms, "mac"), platforms["..."]);
  t.deepEqual(MC_BOARDS.map((b) => b.manifestKey).sort(), [...PLATFORMS].sort());
  // The custom target: mcconfig -p esp32:<dir> names the platform esp32/<its build.SUBPLATFORM>.
  const cam = MC_BOARDS.find((b) => b.name === "esp32cam")!;
  const dir = path.resolve(ROOT, cam.platform.split(":")[1]);
  const target = JSON.parse(fs.readFileSync(path.join(dir, "manifest.json"), "utf8"));
  t.is(`esp32/${target.build.SUBPLATFORM}`, cam.manifestKey);
  t.is(target.build.ESP32_SUBCLASS, undefined, "a classic ESP32");
  const pins = ["xclk", "pclk", "href", "vsync", "scl", "sda", "d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7", "powerdown"];
  for (const k of pins) t.true(Number.isInteger(target.defines.camera[k]), `camera.${k}`);
  // The SDK's ESP32 I/O manifest maps embedded:provider/builtin to $(SUBPLATFORMDIRECTORY)/host/provider: a custom target brings its own.
  const provider = path.join(dir, "host", "provider.js");
  t.true(fs.existsSync(provider), `${path.relative(ROOT, provider)} exists`);
  const source = fs.readFileSync(provider, "utf8");
  t.regex(source, /^export default device;$/m);
  for (const { specifier } of importsOf(source, provider)) t.true(["embedded:io/digital", "embedded:io/pwm", "embedded:io/serial"].includes(specifier), specifier);
  const wiring = configFor(ROOT, cam.manifestKey).doorward;
  t.true(source.includes(`button: ${wiring.button.pin},`) && source.includes(`led: ${wiring.led.pin},`) && source.includes(`chime: ${wiring.chime.pin},`), "the provider's pins are the board's wiring");
});

test("the merged config of each platform passes the device's settings parser", (t) => {
  const linConfig = configFor(ROOT, "lin");
  const lin = parseSettings(linConfig);
  t.is(lin.board, "lin");
  t.is(lin.broker.host, "127.0.0.1");
  t.is(lin.broker.serverName, "localhost");
  t.true(lin.button.simulatedPressEveryMs! > 0);
  t.true(lin.keepAliveSeconds <= 1200);
  t.deepEqual(lin.time, { source: "host" });
  t.true(lin.trustProvisionedCa);
  t.is(lin.provisioning.channel, "none", "no file until tools/mc.ts names one");
  t.deepEqual(parseSettings({ ...linConfig, provisionFile: "/repo/.doorward/lin/bundle.json" }).provisioning, { channel: "file", path: "/repo/.doorward/lin/bundle.json" });
  for (const b of BOARDS) {
    const config = configFor(ROOT, b);
    t.is(config.tls.DHE_RSA, false);
    // The shipped endpoint is a placeholder: a board build without broker= must stop at boot, saying so.
    t.throws(() => parseSettings(config), { instanceOf: SettingsError, message: /broker/ }, b);
    const s = parseSettings({ ...config, broker: ENDPOINT });
    t.is(s.board, b.split("/")[1]);
    t.true(Number.isInteger(s.button.pin), `${b} has a button pin`);
    t.true(s.chime !== undefined && s.chime.pattern.length > 0, `${b} has a chime output`);
    t.true(s.camera, `${b} has a camera`);
    t.deepEqual(s.time, { source: "sntp" });
    t.deepEqual(s.provisioning, { channel: "serial" });
    t.false(s.trustProvisionedCa, `${b} trusts only its built-in roots`);
    t.false(s.devVaultKey);
    t.is(s.broker.serverName, ENDPOINT, "SNI follows the endpoint");
    // A -d build (tools/mc.ts debug) turns the console channel off, saying why.
    const debug = parseSettings({ ...config, broker: ENDPOINT, console: "xsbug" }).provisioning;
    t.is(debug.channel, "none");
    t.regex(debug.channel === "none" ? debug.reason : "", /xsbug/);
  }
});

test("egress: a board build's allowlist is production-only (the build's AWS endpoint and one NTP host); the simulator's is development", (t) => {
  for (const b of BOARDS) {
    const config = configFor(ROOT, b);
    // Nothing lets the SDK's own setup reach the network: no Wi-Fi in the config, no SNTP host.
    t.is(config.sntp, "", `${b}: setup/network must not run SNTP on its own`);
    for (const k of ["ssid", "password", "devVaultKey", "provisionFile", "console"]) t.false(k in config, `${b}: ${k} must not be in the shipped config`);
    t.throws(() => parseEgressConfig(config), { instanceOf: EgressConfigError, message: /placeholder/ }, `${b}: no build without broker=`);
    const allow = parseEgressConfig({ ...config, broker: ENDPOINT });
    t.is(allow.profile, "production", b);
    t.deepEqual(
      allow.entries.map((e) => [e.purpose, e.host, e.port, e.development]).sort(),
      [["mqtt", ENDPOINT, 8883, false], ["ntp", "time.aws.com", 123, false]],
      b,
    );
    t.is(config.doorward.egress.development, undefined, `${b}: no development entries`);
    t.is(config.doorward.broker.host, config.doorward.egress.allow.find((e: Json) => e.purpose === "mqtt").host, "the broker and the allowlist name one endpoint");
  }
  const lin = parseEgressConfig(configFor(ROOT, "lin"));
  t.is(lin.profile, "development");
  t.true(lin.entries.filter((e) => e.purpose === "mqtt").every((e) => e.development && e.host === "127.0.0.1"));
});

test("trust store: a board carries Amazon Root CA 1 and 3 only, by name and by content", (t) => {
  const m = manifest();
  t.is(m.config.tls.DHE_RSA, false);
  for (const b of BOARDS) {
    const config = configFor(ROOT, b);
    const anchors: string[] = config.doorward.trustAnchors;
    t.is(trustAnchorNamesProblem("production", anchors), undefined, b);
    t.deepEqual([...anchors].sort(), [...AMAZON_ROOT_RESOURCES].sort());
    const resources = manifestsFor(ROOT, b).flatMap((x) => sectionsOf(x, b).flatMap((s) => [s.resources?.["*"] ?? []].flat() as string[]).map((r) => path.resolve(path.dirname(x.file), r)));
    t.deepEqual(resources.map((r) => path.basename(r) + ".der").sort(), [...anchors].sort(), `${b}: the firmware holds exactly these CA files`);
    for (const r of resources) {
      const der = new Uint8Array(fs.readFileSync(r + ".der"));
      t.is(der[0], 0x30, `${r}.der is DER`);
      t.true(AMAZON_ROOTS.some((a) => a.sha512 === toHex(nacl.hash(der))), `${r}.der is an Amazon root`);
    }
  }
});

test("key hardware: S3 boards use the eFuse HMAC, the ESP32-CAM the flash-encryption-gated key, only the simulator a development key", (t) => {
  const key = (p: string) => path.basename(moduleMap(ROOT, p).files.get("device/vault-key")!);
  for (const b of S3_BOARDS) {
    t.is(key(b), "vault-key.ts", b);
    t.deepEqual(ffiOf(b).esp_hmac_calculate, { arguments: ["uint32_t", "void*", "uint32_t", "uint8_t[32]"], returns: "int32_t" });
    t.false("esp_flash_encryption_enabled" in ffiOf(b));
  }
  t.is(key("esp32/esp32cam"), "vault-key-fe.ts");
  t.false("esp_hmac_calculate" in ffiOf("esp32/esp32cam"), "the classic ESP32 has no HMAC peripheral");
  t.deepEqual(ffiOf("esp32/esp32cam").esp_flash_encryption_enabled, { arguments: [], returns: "uint8_t" });
  t.is(key("lin"), "vault-key-sim.ts");
  for (const b of BOARDS) {
    const mapped = [...moduleMap(ROOT, b).files.values()].map((f) => path.basename(f));
    t.deepEqual(mapped.filter((f) => /-sim\.ts$/.test(f)), [], `${b} maps no simulator module`);
  }
  t.regex(fs.readFileSync("modules/device/vault-key-sim.ts", "utf8"), /DEVELOPMENT ONLY/);
});

test("FFI: each platform binds what its modules call, and nothing of the other platform's", (t) => {
  for (const b of BOARDS) {
    const bound = ffiOf(b);
    t.deepEqual(bound.esp_fill_random, { arguments: ["void*", "uint32_t"], returns: "void" });
    t.deepEqual(bound.ESP_getc, { arguments: [], returns: "int32_t" });
    for (const f of ["getrandom", "open", "read", "unlink"]) t.false(f in bound, `${b} must not bind glibc's ${f}`);
  }
  const lin = ffiOf("lin");
  t.deepEqual(Object.keys(lin).sort(), ["close", "getrandom", "open", "read", "unlink"]);
  t.deepEqual(lin.getrandom, { arguments: ["void*", "uint64_t", "uint32_t"], returns: "int64_t" });
  t.deepEqual(lin.read, { arguments: ["int32_t", "void*", "uint64_t"], returns: "int64_t" });
  t.regex(fs.readFileSync(moduleMap(ROOT, BOARDS[0]).files.get("device/random")!, "utf8"), /\.esp_fill_random\(/);
  t.regex(fs.readFileSync(moduleMap(ROOT, "lin").files.get("device/random")!, "utf8"), /\.getrandom\(/);
  t.regex(fs.readFileSync(moduleMap(ROOT, BOARDS[0]).files.get("device/board")!, "utf8"), /\.ESP_getc\(/);
  for (const f of fs.readdirSync("modules/device")) t.notRegex(fs.readFileSync(path.join("modules/device", f), "utf8"), /Math\.random/, f);
});

// ------------------------------------------------------------------ pins

/** Pins each board's SDK target (or our esp32cam target) gives the camera, PSRAM, display, audio, I²C and UART. */
const TAKEN: Record<string, number[]> = {
  "esp32/xiao_esp32s3_sense": [10, 13, 47, 38, 39, 40, 15, 17, 18, 16, 14, 12, 11, 48, /* I2S */ 2, 3, 4, 41, 42, /* I2C */ 5, 6, /* SPI */ 7, 8, 9, /* USB */ 19, 20],
  "esp32/m5atom_s3r_m12": [21, 40, 14, 10, 9, 12, 3, 42, 46, 48, 4, 17, 11, 13, /* camera power */ 18, /* I2C */ 45, 0, /* IR */ 47, /* USB */ 19, 20],
  "esp32/lilygo_t_camera_plus_s3": [3, 7, 10, 5, 4, 2, 1, 12, 14, 15, 13, 11, 9, 8, 6, /* display */ 21, 45, 33, 35, 36, 37, 46, 48, /* audio */ 41, 38, 42, 18, 39, 40, /* USB */ 19, 20],
  "esp32/esp32cam": [/* camera: read from the target below */ /* PSRAM */ 16, 17, /* UART0 */ 1, 3, /* flash LED */ 4],
};
const STRAPPING: Record<string, number[]> = { s3: [0, 3, 45, 46], classic: [0, 2, 5, 12, 15] };
const INPUT_ONLY_CLASSIC = [34, 35, 36, 37, 38, 39];

function pinProblems(board: string, s: ReturnType<typeof parseSettings>, taken: number[]): string[] {
  const problems: string[] = [];
  const classic = board === "esp32/esp32cam";
  const outputs = [["led", s.led?.pin], ["chime", s.chime?.pin]] as const;
  const all = [["button", s.button.pin], ...outputs] as const;
  for (const [name, pin] of all) {
    if (pin === undefined) continue;
    if (taken.includes(pin)) problems.push(`${board}: ${name} on GPIO ${pin}, which the board uses already`);
    if (classic && pin > 39) problems.push(`${board}: ${name} on GPIO ${pin}, which a classic ESP32 lacks`);
  }
  for (const [name, pin] of outputs) {
    if (pin === undefined) continue;
    if (STRAPPING[classic ? "classic" : "s3"].includes(pin)) problems.push(`${board}: ${name} output on strapping pin ${pin}`);
    if (classic && INPUT_ONLY_CLASSIC.includes(pin)) problems.push(`${board}: ${name} output on input-only GPIO ${pin}`);
  }
  return problems;
}

test("pins: defined, distinct, clear of the camera, PSRAM and buses, and no output on a strapping or input-only pin", (t) => {
  const camTarget = JSON.parse(fs.readFileSync("hardware/targets/esp32cam/manifest.json", "utf8"));
  const taken: Record<string, number[]> = { ...TAKEN, "esp32/esp32cam": [...TAKEN["esp32/esp32cam"], ...Object.values(camTarget.defines.camera as Record<string, number>).filter((p) => p >= 0)] };
  for (const b of BOARDS) {
    const s = parseSettings({ ...configFor(ROOT, b), broker: ENDPOINT });
    t.deepEqual(pinProblems(b, s, taken[b]), [], b);
  }
  // The checker finds each kind of mistake.
  const xiao = parseSettings({ ...configFor(ROOT, "esp32/xiao_esp32s3_sense"), broker: ENDPOINT });
  t.true(pinProblems("esp32/xiao_esp32s3_sense", { ...xiao, chime: { ...xiao.chime!, pin: 13 } }, taken["esp32/xiao_esp32s3_sense"]).some((p) => /uses already/.test(p)));
  t.true(pinProblems("esp32/xiao_esp32s3_sense", { ...xiao, led: { pin: 46, activeLow: false } }, []).some((p) => /strapping/.test(p)));
  const cam = parseSettings({ ...configFor(ROOT, "esp32/esp32cam"), broker: ENDPOINT });
  t.true(pinProblems("esp32/esp32cam", { ...cam, chime: { ...cam.chime!, pin: 34 } }, []).some((p) => /input-only/.test(p)));
  t.throws(() => parseSettings({ ...configFor(ROOT, "esp32/esp32cam"), broker: ENDPOINT, doorward: { ...configFor(ROOT, "esp32/esp32cam").doorward, led: { pin: 13 } } }), { message: /different pins/ });
});

// ------------------------------------------------------------------ flash layout

interface Partition { name: string; type: string; subtype: string; offset: number; size: number; flags: string }

function parsePartitions(text: string): Partition[] {
  const num = (v: string) => (v.startsWith("0x") ? parseInt(v, 16) : v.endsWith("K") ? parseInt(v) * 1024 : v.endsWith("M") ? parseInt(v) * 1048576 : parseInt(v));
  return text.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#")).map((l) => {
    const [name, type, subtype, offset, size, flags = ""] = l.split(",").map((x) => x.trim());
    return { name, type, subtype, offset: num(offset), size: num(size), flags };
  });
}

function layoutProblems(parts: Partition[], flashBytes: number): string[] {
  const problems: string[] = [];
  const by = (name: string) => parts.find((p) => p.name === name);
  for (const p of parts) {
    if (!Number.isInteger(p.offset) || !Number.isInteger(p.size)) problems.push(`${p.name}: offset and size must be explicit`);
    if (p.type === "app" && p.offset % 0x10000) problems.push(`${p.name}: an app partition must be 64 KB aligned`);
    if (p.offset % 0x1000 || p.size % 0x1000) problems.push(`${p.name}: not 4 KB aligned`);
    if (p.offset < 0x9000) problems.push(`${p.name}: overlaps the bootloader or the partition table`);
    if (p.offset + p.size > flashBytes) problems.push(`${p.name}: ends past the ${flashBytes >> 20} MB flash`);
  }
  const sorted = [...parts].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) if (sorted[i].offset < sorted[i - 1].offset + sorted[i - 1].size) problems.push(`${sorted[i].name} overlaps ${sorted[i - 1].name}`);
  const a = by("ota_0"), b = by("ota_1");
  if (!a || !b || a.subtype !== "ota_0" || b.subtype !== "ota_1") problems.push("two OTA slots (ota_0, ota_1) are needed");
  else if (a.size !== b.size) problems.push("the OTA slots must be the same size");
  if (parts.some((p) => p.subtype === "factory")) problems.push("a factory app would make mcconfig re-split the table");
  if (by("otadata")?.subtype !== "ota" || by("otadata")?.size !== 0x2000) problems.push("otadata (8 KB) is needed");
  if (by("nvs")?.subtype !== "nvs" || by("nvs")!.size < 0xC000) problems.push("nvs of at least 48 KB is needed (vault and store, two slots each)");
  const keys = by("nvs_keys");
  if (keys?.subtype !== "nvs_keys" || keys.size !== 0x1000 || !keys.flags.includes("encrypted")) problems.push("nvs_keys (4 KB, encrypted) is needed");
  return problems;
}

function flashBytesOf(sdkconfig: string): number {
  const m = /^CONFIG_ESPTOOLPY_FLASHSIZE_([0-9]+)MB=y$/m.exec(sdkconfig);
  return m ? Number(m[1]) * 1048576 : 0;
}

test("flash layout: each board's partition table has two equal OTA slots, otadata, nvs and nvs_keys, inside its flash", (t) => {
  for (const b of BOARDS) {
    const build = buildFor(ROOT, b);
    t.truthy(build.PARTITIONS_FILE, `${b}: build.PARTITIONS_FILE`);
    t.truthy(build.SDKCONFIGPATH, `${b}: build.SDKCONFIGPATH`);
    const sdkconfig = fs.readFileSync(path.join(build.SDKCONFIGPATH, "sdkconfig.defaults"), "utf8");
    const flash = flashBytesOf(sdkconfig);
    t.true(flash >= 4 * 1048576, `${b}: the sdkconfig states the flash size`);
    t.deepEqual(layoutProblems(parsePartitions(fs.readFileSync(build.PARTITIONS_FILE, "utf8")), flash), [], b);
    t.regex(sdkconfig, /^CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE=y$/m, `${b}: rollback on`);
    t.regex(sdkconfig, /^CONFIG_SPIRAM=y$/m, `${b}: PSRAM on (the camera's frame buffers live there)`);
    // The XS heaps are one malloc each, larger than internal RAM can spare: malloc must reach PSRAM.
    for (const file of [path.join(build.SDKCONFIGPATH, "sdkconfig.defaults"), path.join(build.SDKCONFIGPATH, "release", "sdkconfig.defaults")].filter((x) => fs.existsSync(x))) {
      const text = fs.readFileSync(file, "utf8");
      t.regex(text, /^CONFIG_SPIRAM_USE_MALLOC=y$/m, `${path.relative(ROOT, file)}: malloc uses PSRAM`);
      t.notRegex(text, /^CONFIG_SPIRAM_USE_CAPS_ALLOC=y$/m, path.relative(ROOT, file));
    }
    t.regex(sdkconfig, /^CONFIG_PARTITION_TABLE_CUSTOM=y$/m);
    t.notRegex(sdkconfig, /^CONFIG_SECURE_FLASH_ENC_ENABLED=y$/m, `${b}: nothing that burns eFuses is on by default`);
  }
  // The classic ESP32's production fragment turns on flash and NVS encryption together.
  const fe = fs.readFileSync("hardware/sdkconfig/esp32cam/flash-encryption.defaults", "utf8");
  for (const line of ["CONFIG_SECURE_FLASH_ENC_ENABLED=y", "CONFIG_NVS_ENCRYPTION=y", "CONFIG_NVS_SEC_KEY_PROTECT_USING_FLASH_ENC=y"]) t.true(fe.split("\n").includes(line), line);
  // The checker finds broken tables.
  const good = parsePartitions(fs.readFileSync("hardware/partitions/xiao_esp32s3_sense.csv", "utf8"));
  const broken = (edit: (p: Partition[]) => Partition[]) => layoutProblems(edit(good.map((p) => ({ ...p }))), 8 * 1048576);
  t.true(broken((p) => p.map((x) => (x.name === "ota_1" ? { ...x, offset: x.offset - 0x10000 } : x))).some((m) => /overlaps/.test(m)));
  t.true(broken((p) => p.map((x) => (x.name === "ota_1" ? { ...x, size: x.size + 0x100000 } : x))).some((m) => /same size|past/.test(m)));
  t.true(broken((p) => p.filter((x) => x.name !== "nvs_keys")).some((m) => /nvs_keys/.test(m)));
  t.true(broken((p) => p.map((x) => (x.name === "ota_0" ? { ...x, offset: x.offset + 0x1000 } : x))).some((m) => /64 KB/.test(m)));
  t.deepEqual(layoutProblems(good, 4 * 1048576).length > 0, true, "an 8 MB table does not fit 4 MB");
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
  write("modules/device/a.ts", 'import fs from "node:fs";\nimport { m } from "mqtt";\nimport os from "os";\nimport { b } from "./b";\nimport { v } from "./v";\nimport { w } from "device/v";\nimport { z } from "device/z";\nexport const a = [fs, m, os, b, v, w, z];\n');
  write("modules/device/b.ts", "export const b = 1;\n");
  write("modules/device/v.ts", "export const v = 1;\n");
  write("modules/device/v-sim.ts", "export const w = 1;\n");
  const { problems } = moduleMap(dir, "lin");
  t.true(problems.some((p) => p.includes("device/gone")), problems.join("\n"));
  const imports = importProblems(dir, "lin", ["mqtt"]).join("\n");
  for (const needle of ["Node module node:fs", "Node module os", "npm package mqtt", '"device/b", which is not mapped', "tweetnacl is not mapped", 'tsc compiles modules/device/v.ts but "device/v" is modules/device/v-sim.ts here', "device/z, not a known Moddable module"]) t.true(imports.includes(needle), `missed: ${needle}\n${imports}`);
  t.false(imports.includes("imports device/v,"), "a mapped specifier is fine");
  t.true(preloadProblems(dir, "lin").some((p) => p.includes("pulls in tweetnacl")));
});

/** The merged "creation" of a platform (deep merge in manifest order, as mcconfig does). */
function creationFor(root: string, platform: string): Json {
  const creation: Json = {};
  for (const m of manifestsFor(root, platform)) for (const s of sectionsOf(m, platform)) mergeProperties(creation, s.creation);
  return creation;
}

/** What is wrong with a platform's XS creation values; a board may not grow its heaps. */
function creationProblems(creation: Json, board: boolean): string[] {
  const problems: string[] = [];
  const whole = (v: unknown, min: number, name: string) => { if (!Number.isInteger(v) || (v as number) < min) problems.push(`${name} must be a whole number of at least ${min} (is ${JSON.stringify(v)})`); };
  whole(creation.stack, 512, "stack");
  whole(creation.chunk?.initial, 65536, "chunk.initial");
  whole(creation.heap?.initial, 4096, "heap.initial");
  if (board) {
    if (creation.chunk?.incremental !== 0) problems.push("chunk.incremental must be 0: a board's chunk heap is fixed");
    if (creation.heap?.incremental !== 0) problems.push("heap.incremental must be 0: a board's slot heap is fixed");
    if (creation.static !== 0) problems.push("static must be 0 (the heaps are allocated, as in the SDK's board targets)");
  }
  if (creation.main !== "device/main") problems.push("main must stay device/main");
  return problems;
}

test("XS creation values: every target sets its stack and heaps, a board's do not grow, and the simulator budgets are the boards' own", (t) => {
  for (const b of BOARDS) t.deepEqual(creationProblems(creationFor(ROOT, b), true), [], b);
  t.deepEqual(creationProblems(creationFor(ROOT, "lin"), false), [], "lin");
  const s3 = S3_BOARDS.map((b) => creationFor(ROOT, b));
  for (const c of s3) t.deepEqual(c, s3[0], "the three S3 boards share one budget");
  const expected: Record<string, Json> = { s3: s3[0], esp32cam: creationFor(ROOT, "esp32/esp32cam") };
  t.deepEqual(Object.keys(BUDGETS).sort(), Object.keys(expected).sort());
  for (const [name, file] of Object.entries(BUDGETS)) {
    const budget = readManifest(path.join(ROOT, file));
    t.deepEqual([budget.json.include].flat().map((i: string) => path.resolve(path.dirname(budget.file), i)), [path.join(ROOT, "manifest.json")], `${file} builds the firmware itself`);
    // mcconfig merges the including manifest last: its creation wins over hardware/lin.json's.
    t.deepEqual(mergeProperties(structuredClone(creationFor(ROOT, "lin")), budget.json.creation), expected[name], `${file} is the ${name} budget`);
  }
  // The checker finds what is missing or growing.
  t.true(creationProblems({ main: "device/main", stack: 768, chunk: { initial: 65536, incremental: 1024 }, heap: { initial: 8192, incremental: 0 }, static: 0 }, true).some((p) => p.startsWith("chunk.incremental")));
  t.true(creationProblems({ main: "device/main" }, false).some((p) => p.startsWith("stack")));
  t.deepEqual(creationProblems({ main: "device/main", stack: 768, chunk: { initial: 65536, incremental: 0 }, heap: { initial: 8192, incremental: 0 }, static: 0 }, true), []);
});
