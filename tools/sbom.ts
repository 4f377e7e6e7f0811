/*
 * The release's software bill of materials: a CycloneDX 1.6 JSON document,
 * made with the CycloneDX project's own JavaScript library.
 *
 * What it lists:
 *  - every npm package in package-lock.json, with its version, licence, the
 *    lockfile's SHA-512 and a purl. Only the runtime dependency (tweetnacl,
 *    vendored into the firmware as modules/vendor/tweetnacl.js) is scope
 *    "required"; the tools and tests' packages never reach a device and are
 *    "excluded";
 *  - the Moddable SDK release the firmware is built with, and inside it the
 *    SDK modules and examples the manifests include;
 *  - ESP-IDF, and inside it the components the firmware calls into: each
 *    function bound through the XS FFI in hardware/*.json names its component
 *    (a binding this table does not know is an error, so the SBOM cannot fall
 *    behind the firmware), plus the base every Moddable ESP32 build links.
 *    With --idf-build DIR the list is instead exactly the build's own
 *    (project_description.json's build_components).
 *
 *   npx tsx tools/sbom.ts [--out FILE] [--idf-build DIR]
 */
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Enums, Models, Serialize, SPDX, Spec } from "@cyclonedx/cyclonedx-library";
import { ESP_IDF_VERSION, MODDABLE_VERSION } from "./mc";
import { runAsEntry, UserError } from "./lib/cli";
import { writeFileAtomic } from "../modules/host/file-store";
import { utf8Encode } from "../modules/core/bytes";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

/** npm packages that are part of the firmware image; everything else in the lockfile is tooling. */
export const FIRMWARE_PACKAGES: readonly string[] = ["tweetnacl"];

/** The ESP-IDF component that defines each function the firmware binds through the XS FFI. */
export const FFI_COMPONENTS: Readonly<Record<string, string>> = {
  esp_fill_random: "esp_hw_support",
  bootloader_random_enable: "bootloader_support",
  bootloader_random_disable: "bootloader_support",
  esp_get_flash_encryption_mode: "bootloader_support",
  esp_flash_encryption_enabled: "bootloader_support",
  esp_hmac_calculate: "esp_security",
  esp_efuse_read_reg: "efuse",
  esp_efuse_get_key_purpose: "efuse",
  esp_efuse_get_key_dis_read: "efuse",
  esp_efuse_read_secure_version: "efuse",
  esp_ota_mark_app_valid_cancel_rollback: "app_update",
  esp_ota_mark_app_invalid_rollback_and_reboot: "app_update",
  esp_restart: "esp_system",
};
/** FFI functions the Moddable SDK's own runtime defines (not ESP-IDF). */
export const SDK_FUNCTIONS: readonly string[] = ["ESP_getc"];
/** FFI functions of the Linux simulator (glibc): not in a device image. */
export const SIMULATOR_FUNCTIONS: readonly string[] = ["getrandom", "open", "read", "close", "unlink"];

/**
 * What every Moddable ESP32 build links whatever the firmware calls: the
 * kernel, the network stack the SDK's sockets, TLS and MQTT run on, NVS (the
 * `preference` module) with its HMAC-keyed encryption, the console, GPIO.
 */
export const BASE_COMPONENTS: readonly string[] = [
  "freertos", "esp_system", "esp_common", "esp_rom", "soc", "hal", "heap", "log", "newlib", "esp_timer", "esp_event",
  "esp_wifi", "wpa_supplicant", "esp_phy", "esp_coex", "esp_netif", "lwip", "mbedtls",
  "nvs_flash", "nvs_sec_provider", "spi_flash", "esp_partition", "esp_driver_gpio", "esp_driver_uart", "esp_driver_usb_serial_jtag", "vfs",
];
/** Components pulled in by the SDK modules the boards include. */
const MODULE_COMPONENTS: Readonly<Record<string, { component: string; purl?: string; license: string }>> = {
  "modules/io/imagein/camera": { component: "esp32-camera", purl: "pkg:github/espressif/esp32-camera", license: "Apache-2.0" },
};

export class SbomError extends Error {
  override name = "SbomError";
}

interface LockPackage {
  version?: string;
  license?: string;
  integrity?: string;
  resolved?: string;
  dev?: boolean;
  optional?: boolean;
  link?: boolean;
}

function readJson(file: string): any {
  try {
    return JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    throw new SbomError(`${file}: ${(e as Error).message}`);
  }
}

/** Every manifest of the firmware: the project's and the board files it includes. */
function manifests(repo: string): Array<{ file: string; json: any }> {
  const files = [path.join(repo, "manifest.json"), ...fs.readdirSync(path.join(repo, "hardware")).filter((f) => f.endsWith(".json")).map((f) => path.join(repo, "hardware", f))];
  return files.map((file) => ({ file, json: readJson(file) }));
}

/** Every "$(MODDABLE)/…" path a manifest names (includes and module mappings), anywhere in it. */
function sdkPaths(json: unknown, out: Set<string>): void {
  if (typeof json === "string") {
    const m = /^\$\(MODDABLE\)\/(.+?)(?:\/manifest\.json)?$/.exec(json);
    if (m) out.add(m[1]);
  } else if (Array.isArray(json)) json.forEach((v) => sdkPaths(v, out));
  else if (json && typeof json === "object") Object.values(json).forEach((v) => sdkPaths(v, out));
}

/** FFI function names bound by any manifest, with the file that binds each. */
function ffiFunctions(repo: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (json: any, file: string): void => {
    if (!json || typeof json !== "object") return;
    if (json.ffi?.functions) for (const name of Object.keys(json.ffi.functions)) out.set(name, file);
    for (const v of Object.values(json)) if (v && typeof v === "object") walk(v, file);
  };
  for (const m of manifests(repo)) walk(m.json, path.relative(repo, m.file));
  return out;
}

/** The ESP-IDF components of the firmware: from a build's project_description.json, or derived from the manifests. */
export function idfComponents(repo: string, idfBuild?: string): { names: string[]; source: string } {
  if (idfBuild) {
    const file = path.join(idfBuild, "project_description.json");
    const desc = readJson(file);
    const names = desc.build_components;
    if (!Array.isArray(names) || names.length === 0 || !names.every((n: unknown) => typeof n === "string" && /^[A-Za-z0-9_.-]+$/.test(n))) {
      throw new SbomError(`${file}: build_components is not a list of component names`);
    }
    return { names: [...new Set(names as string[])].sort(), source: `the build's ${path.basename(file)}` };
  }
  const names = new Set(BASE_COMPONENTS);
  for (const [fn, file] of ffiFunctions(repo)) {
    if (SIMULATOR_FUNCTIONS.includes(fn) || SDK_FUNCTIONS.includes(fn)) continue;
    const component = FFI_COMPONENTS[fn];
    if (!component) throw new SbomError(`${file} binds ${fn}, and the SBOM does not know which ESP-IDF component defines it: add it to FFI_COMPONENTS in tools/sbom.ts`);
    names.add(component);
  }
  return { names: [...names].sort(), source: "the firmware's FFI bindings and the SDK's ESP32 base" };
}

/** A licence as the lockfile gives it: an SPDX id, an SPDX expression, or a name. */
export function licenseOf(text: string): Models.License {
  if (SPDX.isSupportedSpdxId(text)) return new Models.SpdxLicense(text);
  if (/ (AND|OR|WITH) |[()]/.test(text)) return new Models.LicenseExpression(text);
  return new Models.NamedLicense(text);
}

/** The package URL of an npm package (the scope's "@" percent-encoded, as the purl spec asks). */
export function npmPurl(group: string | undefined, name: string, version: string): string {
  return `pkg:npm/${group ? encodeURIComponent(group) + "/" : ""}${encodeURIComponent(name)}@${encodeURIComponent(version)}`;
}

function npmComponent(key: string, p: LockPackage): Models.Component {
  const fullName = key.slice(key.lastIndexOf("node_modules/") + "node_modules/".length);
  const [group, name] = fullName.startsWith("@") ? fullName.split("/", 2) : [undefined, fullName];
  if (!p.version) throw new SbomError(`package-lock.json: ${key} has no version`);
  const firmware = FIRMWARE_PACKAGES.includes(fullName);
  const c = new Models.Component(Enums.ComponentType.Library, name, {
    group,
    version: p.version,
    bomRef: `npm:${fullName}@${p.version}`,
    scope: firmware ? Enums.ComponentScope.Required : Enums.ComponentScope.Excluded,
  });
  if (p.license) c.licenses.add(licenseOf(p.license));
  const integrity = /^sha512-([A-Za-z0-9+/=]+)$/.exec(p.integrity ?? "");
  if (integrity) c.hashes.set(Enums.HashAlgorithm["SHA-512"], Buffer.from(integrity[1], "base64").toString("hex"));
  if (p.resolved && /^https:\/\//.test(p.resolved)) c.externalReferences.add(new Models.ExternalReference(p.resolved, Enums.ExternalReferenceType.Distribution));
  c.purl = npmPurl(group, name, p.version);
  c.properties.add(new Models.Property("doorward:part", firmware ? "firmware (vendored as modules/vendor/tweetnacl.js)" : "tools and tests only: not in the firmware image"));
  return c;
}

export interface SbomOptions {
  repo?: string;
  /** An ESP-IDF build directory holding project_description.json: its exact component list. */
  idfBuild?: string;
  /** Fixed for reproducible output; default now. */
  timestamp?: Date;
}

/** The BOM as a CycloneDX model. */
export function makeBom(options: SbomOptions = {}): Models.Bom {
  const repo = options.repo ?? REPO;
  const pkg = readJson(path.join(repo, "package.json"));
  const lock = readJson(path.join(repo, "package-lock.json"));
  if (lock.lockfileVersion < 2 || typeof lock.packages !== "object") throw new SbomError("package-lock.json: lockfileVersion 2 or 3 (a packages map) is needed");

  const bom = new Models.Bom();
  bom.metadata.timestamp = options.timestamp ?? new Date();
  const firmware = new Models.Component(Enums.ComponentType.Firmware, pkg.name, { version: pkg.version, bomRef: `doorward@${pkg.version}`, description: pkg.description });
  firmware.licenses.add(licenseOf(pkg.license));
  bom.metadata.component = firmware;
  bom.metadata.tools.components.add(new Models.Component(Enums.ComponentType.Application, "doorward tools/sbom.ts", { version: pkg.version }));

  const byRef = new Map<string, Models.Component>();
  for (const [key, p] of Object.entries(lock.packages as Record<string, LockPackage>)) {
    if (key === "" || p.link) continue;
    const c = npmComponent(key, p);
    if (byRef.has(c.bomRef.value!)) continue; // the same version nested twice
    byRef.set(c.bomRef.value!, c);
    bom.components.add(c);
  }
  const required = [...byRef.values()].filter((c) => c.scope === Enums.ComponentScope.Required);
  for (const name of FIRMWARE_PACKAGES) {
    if (!required.some((c) => (c.group ? `${c.group}/${c.name}` : c.name) === name)) throw new SbomError(`package-lock.json does not hold ${name}, which the firmware includes`);
  }

  const sdk = new Models.Component(Enums.ComponentType.Framework, "moddable", {
    group: "Moddable-OpenSource", version: MODDABLE_VERSION, bomRef: `moddable@${MODDABLE_VERSION}`,
    purl: `pkg:github/Moddable-OpenSource/moddable@${MODDABLE_VERSION}`, scope: Enums.ComponentScope.Required,
    description: "Moddable SDK: the XS engine and the runtime modules the firmware is built on",
  });
  // Runtime modules LGPL-3.0, the XS engine Apache-2.0, the examples the manifests include CC-BY-4.0 (the SDK's licenses/readme.md).
  sdk.licenses.add(new Models.LicenseExpression("LGPL-3.0-or-later AND Apache-2.0 AND CC-BY-4.0"));
  sdk.externalReferences.add(new Models.ExternalReference("https://github.com/Moddable-OpenSource/moddable", Enums.ExternalReferenceType.VCS));
  const included = new Set<string>();
  for (const m of manifests(repo)) sdkPaths(m.json, included);
  for (const p of [...included].sort()) {
    sdk.components.add(new Models.Component(Enums.ComponentType.Library, p, { bomRef: `moddable@${MODDABLE_VERSION}:${p}`, version: MODDABLE_VERSION, scope: Enums.ComponentScope.Required }));
  }
  bom.components.add(sdk);

  const { names, source } = idfComponents(repo, options.idfBuild);
  const idf = new Models.Component(Enums.ComponentType.Framework, "esp-idf", {
    group: "espressif", version: ESP_IDF_VERSION, bomRef: `esp-idf@${ESP_IDF_VERSION}`,
    purl: `pkg:github/espressif/esp-idf@${ESP_IDF_VERSION}`, scope: Enums.ComponentScope.Required,
    description: "Espressif IoT Development Framework: the components the firmware links",
  });
  idf.licenses.add(licenseOf("Apache-2.0"));
  idf.externalReferences.add(new Models.ExternalReference("https://github.com/espressif/esp-idf", Enums.ExternalReferenceType.VCS));
  idf.properties.add(new Models.Property("doorward:components-from", source));
  for (const n of names) {
    idf.components.add(new Models.Component(Enums.ComponentType.Library, n, { bomRef: `esp-idf@${ESP_IDF_VERSION}:${n}`, version: ESP_IDF_VERSION, scope: Enums.ComponentScope.Required }));
  }
  bom.components.add(idf);
  for (const [modulePath, extra] of Object.entries(MODULE_COMPONENTS)) {
    if (!included.has(modulePath)) continue;
    const c = new Models.Component(Enums.ComponentType.Library, extra.component, { bomRef: `${extra.component}`, purl: extra.purl, scope: Enums.ComponentScope.Required, description: `pulled in by the Moddable SDK's ${modulePath}` });
    c.licenses.add(licenseOf(extra.license));
    bom.components.add(c);
    sdk.dependencies.add(c.bomRef);
  }

  for (const c of [sdk, idf, ...required]) firmware.dependencies.add(c.bomRef);
  sdk.dependencies.add(idf.bomRef);
  return bom;
}

/** The BOM as CycloneDX 1.6 JSON text. */
export function makeSbomJson(options: SbomOptions = {}): string {
  const serializer = new Serialize.JsonSerializer(new Serialize.JSON.Normalize.Factory(Spec.Spec1dot6));
  return serializer.serialize(makeBom(options), { sortLists: true, space: 2 }) + "\n";
}

const CLI = {
  name: "sbom",
  usage: `usage: npx tsx tools/sbom.ts [--out FILE] [--idf-build DIR]

Writes the release's CycloneDX 1.6 software bill of materials (JSON): the npm packages
of package-lock.json (tweetnacl, in the firmware, as required; the tools' and tests'
packages as excluded), the Moddable SDK ${MODDABLE_VERSION} and the SDK modules the
manifests include, and ESP-IDF ${ESP_IDF_VERSION} with the components the firmware links.

  --out FILE        write it here (replaced atomically) instead of printing it
  --idf-build DIR   take the exact ESP-IDF component list from a build: DIR holds its
                    project_description.json
  -h, --help        this text`,
  options: { out: { type: "string" }, "idf-build": { type: "string" } },
} as const;

runAsEntry(import.meta.url, CLI, ({ values }) => {
  let json: string;
  try {
    json = makeSbomJson({ idfBuild: values["idf-build"] });
  } catch (e) {
    if (e instanceof SbomError) throw new UserError(e.message);
    throw e;
  }
  if (values.out) writeFileAtomic(path.resolve(values.out), utf8Encode(json), 0o644);
  else process.stdout.write(json);
  return 0;
});
