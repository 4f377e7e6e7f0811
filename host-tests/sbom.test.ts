/*
 * The release SBOM (tools/sbom.ts): valid CycloneDX 1.6 under the CycloneDX
 * library's strict JSON-schema validator, complete against package-lock.json,
 * and unable to fall behind the firmware: an FFI binding whose ESP-IDF
 * component it does not know stops it.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { Spec, Validation } from "@cyclonedx/cyclonedx-library";
import { BASE_COMPONENTS, FFI_COMPONENTS, SbomError, makeSbomJson, npmPurl } from "../tools/sbom";
import { ESP_IDF_VERSION, MODDABLE_VERSION } from "../tools/mc";

const REPO = path.resolve(import.meta.dirname, "..");
const at = new Date("2026-01-01T00:00:00Z");
const validator = new Validation.JsonStrictValidator(Spec.Version.v1dot6);

/** A copy of what the SBOM reads (package files and manifests), to change safely. */
function repoCopy(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dw-sbom-"));
  for (const f of ["package.json", "package-lock.json", "manifest.json"]) fs.copyFileSync(path.join(REPO, f), path.join(dir, f));
  fs.mkdirSync(path.join(dir, "hardware"));
  for (const f of fs.readdirSync(path.join(REPO, "hardware")).filter((f) => f.endsWith(".json"))) fs.copyFileSync(path.join(REPO, "hardware", f), path.join(dir, "hardware", f));
  return dir;
}

test("the SBOM is valid CycloneDX 1.6 (strict schema), and a damaged one is not", async (t) => {
  const json = makeSbomJson({ timestamp: at });
  t.is(await validator.validate(json), null);
  const doc = JSON.parse(json);
  t.is(doc.bomFormat, "CycloneDX");
  t.is(doc.specVersion, "1.6");
  t.is(doc.metadata.component.type, "firmware");
  // The validator can fail: a component type the schema does not have.
  const broken = structuredClone(doc);
  broken.components[0].type = "gadget";
  t.not(await validator.validate(JSON.stringify(broken)), null);
  // Reproducible for a given time.
  t.is(makeSbomJson({ timestamp: at }), json);
});

test("every package of the lockfile is listed with version, purl and hash; only the firmware's own is required", (t) => {
  const lock = JSON.parse(fs.readFileSync(path.join(REPO, "package-lock.json"), "utf8"));
  const doc = JSON.parse(makeSbomJson({ timestamp: at }));
  const refs = new Set(doc.components.map((c: any) => c["bom-ref"]));
  let n = 0;
  for (const [key, p] of Object.entries(lock.packages as Record<string, any>)) {
    if (key === "" || p.link) continue;
    const name = key.slice(key.lastIndexOf("node_modules/") + 13);
    t.true(refs.has(`npm:${name}@${p.version}`), name);
    n++;
  }
  t.true(n > 100);
  const npm = doc.components.filter((c: any) => c["bom-ref"].startsWith("npm:"));
  for (const c of npm) {
    t.regex(c.purl, /^pkg:npm\/(%40[^/]+\/)?[^@/]+@[^@]+$/, c.name);
    t.is(c.hashes?.[0]?.alg, "SHA-512", c.name);
  }
  t.deepEqual(npm.filter((c: any) => c.scope === "required").map((c: any) => c.name), ["tweetnacl"]);
  t.is(npmPurl("@agoric", "xsnap", "0.15.0"), "pkg:npm/%40agoric/xsnap@0.15.0");
});

test("the Moddable SDK and ESP-IDF are listed at the versions the build uses, with the components the firmware links", (t) => {
  const doc = JSON.parse(makeSbomJson({ timestamp: at }));
  const sdk = doc.components.find((c: any) => c.name === "moddable");
  const idf = doc.components.find((c: any) => c.name === "esp-idf");
  t.is(sdk.version, MODDABLE_VERSION);
  t.is(idf.version, ESP_IDF_VERSION);
  t.is(idf.purl, `pkg:github/espressif/esp-idf@${ESP_IDF_VERSION}`);
  const sdkParts = sdk.components.map((c: any) => c.name);
  for (const m of ["modules/files/preference", "modules/io/update", "modules/io/imagein/camera", "examples/io/tcp/mqttclient/mqttclient"]) t.true(sdkParts.includes(m), m);
  const idfParts: string[] = idf.components.map((c: any) => c.name);
  for (const c of [...BASE_COMPONENTS, "efuse", "esp_security", "bootloader_support", "app_update", "esp_hw_support"]) t.true(idfParts.includes(c), c);
  t.true(doc.components.some((c: any) => c.name === "esp32-camera"), "the camera driver the SDK's camera module pulls in");
  const deps = doc.dependencies.find((d: any) => d.ref === doc.metadata.component["bom-ref"]);
  t.true(["moddable@" + MODDABLE_VERSION, "esp-idf@" + ESP_IDF_VERSION, "npm:tweetnacl@1.0.3"].every((r) => deps.dependsOn.includes(r)));
  t.true(Object.values(FFI_COMPONENTS).every((c) => idfParts.includes(c)));
});

test("a new FFI binding the SBOM cannot place stops it; a build's own component list replaces the derived one", async (t) => {
  const dir = repoCopy();
  const s3 = JSON.parse(fs.readFileSync(path.join(dir, "hardware", "esp32s3.json"), "utf8"));
  s3.ffi.functions.esp_mystery_call = { arguments: [], returns: "void" };
  fs.writeFileSync(path.join(dir, "hardware", "esp32s3.json"), JSON.stringify(s3));
  t.throws(() => makeSbomJson({ repo: dir, timestamp: at }), { instanceOf: SbomError, message: /esp32s3\.json binds esp_mystery_call/ });

  const build = fs.mkdtempSync(path.join(os.tmpdir(), "dw-idf-build-"));
  fs.writeFileSync(path.join(build, "project_description.json"), JSON.stringify({ build_components: ["freertos", "main", "esp_wifi", "espressif__esp32-camera"] }));
  const doc = JSON.parse(makeSbomJson({ repo: REPO, idfBuild: build, timestamp: at }));
  const idf = doc.components.find((c: any) => c.name === "esp-idf");
  t.deepEqual(idf.components.map((c: any) => c.name), ["esp_wifi", "espressif__esp32-camera", "freertos", "main"]);
  t.is(await validator.validate(JSON.stringify(doc)), null);
  fs.writeFileSync(path.join(build, "project_description.json"), "{}");
  t.throws(() => makeSbomJson({ idfBuild: build }), { instanceOf: SbomError, message: /build_components/ });
});

test("CLI: --out writes the document; a bad build directory is one clear line and exit 2", (t) => {
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "dw-sbom-out-")), "doorward.cdx.json");
  const ok = spawnSync(process.execPath, ["--import=tsx", "tools/sbom.ts", "--out", out], { cwd: REPO, encoding: "utf8" });
  t.is(ok.status, 0, ok.stderr);
  t.is(JSON.parse(fs.readFileSync(out, "utf8")).bomFormat, "CycloneDX");
  const bad = spawnSync(process.execPath, ["--import=tsx", "tools/sbom.ts", "--idf-build", "/nonexistent"], { cwd: REPO, encoding: "utf8" });
  t.is(bad.status, 2);
  t.regex(bad.stderr, /project_description\.json/);
  t.notRegex(bad.stderr, /at .*\.ts:\d+/, "no stack trace");
});
