/*
 * Sample camera frames, drawn by the project: a porch with a door, a porch
 * light, and sometimes a visitor or a parcel, rasterised here pixel by pixel
 * and encoded with jpeg-js. The host camera (modules/host/camera.ts) serves
 * them in the simulator; tests use the same renderer to make frames of any
 * size. Deterministic: the same command writes the same bytes.
 *
 *   npx tsx tools/make-sample-jpegs.ts [outDir]     (default assets/samples)
 */
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import jpeg from "jpeg-js";
import { runAsEntry } from "./lib/cli";

export type SceneName = "visitor-day" | "courier-parcel" | "empty-porch-night" | "visitor-night";
export const SCENES: readonly SceneName[] = ["visitor-day", "courier-parcel", "empty-porch-night", "visitor-night"];

type Rgb = [number, number, number];

class Canvas {
  readonly data: Uint8Array;
  constructor(readonly width: number, readonly height: number) {
    this.data = new Uint8Array(width * height * 4);
  }
  set(x: number, y: number, [r, g, b]: Rgb): void {
    if (x < 0 || y < 0 || x >= this.width || y >= this.height) return;
    const i = (y * this.width + x) * 4;
    this.data[i] = r;
    this.data[i + 1] = g;
    this.data[i + 2] = b;
    this.data[i + 3] = 255;
  }
  /** Coordinates in units of 1/320 of the width, so scenes scale with the frame. */
  rect(x0: number, y0: number, x1: number, y1: number, c: Rgb | ((x: number, y: number) => Rgb)): void {
    const s = this.width / 320;
    for (let y = Math.round(y0 * s); y < Math.round(y1 * s); y++) {
      for (let x = Math.round(x0 * s); x < Math.round(x1 * s); x++) this.set(x, y, typeof c === "function" ? c(x / s, y / s) : c);
    }
  }
  fillEllipse(cx: number, cy: number, rx: number, ry: number, c: Rgb): void {
    const s = this.width / 320;
    for (let y = Math.floor((cy - ry) * s); y <= Math.ceil((cy + ry) * s); y++) {
      for (let x = Math.floor((cx - rx) * s); x <= Math.ceil((cx + rx) * s); x++) {
        const dx = (x / s - cx) / rx, dy = (y / s - cy) / ry;
        if (dx * dx + dy * dy <= 1) this.set(x, y, c);
      }
    }
  }
  /** Light falling off around a point, added to what is there. */
  glow(cx: number, cy: number, radius: number, [r, g, b]: Rgb): void {
    const s = this.width / 320;
    for (let y = 0; y < this.height; y++) {
      for (let x = 0; x < this.width; x++) {
        const d = Math.hypot(x / s - cx, y / s - cy) / radius;
        if (d >= 1) continue;
        const k = (1 - d) * (1 - d);
        const i = (y * this.width + x) * 4;
        this.data[i] = Math.min(255, this.data[i] + r * k);
        this.data[i + 1] = Math.min(255, this.data[i + 1] + g * k);
        this.data[i + 2] = Math.min(255, this.data[i + 2] + b * k);
      }
    }
  }
  /** Mild deterministic sensor noise, so the JPEG looks (and compresses) like a photo, not a cartoon. */
  noise(amount: number, seed: number): void {
    let state = seed >>> 0 || 1;
    for (let i = 0; i < this.data.length; i += 4) {
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      const n = ((state >>> 0) % (2 * amount + 1)) - amount;
      for (let k = 0; k < 3; k++) this.data[i + k] = Math.max(0, Math.min(255, this.data[i + k] + n));
    }
  }
}

function shade([r, g, b]: Rgb, k: number): Rgb {
  return [Math.round(r * k), Math.round(g * k), Math.round(b * k)];
}

function person(c: Canvas, x: number, night: boolean, coat: Rgb, holdingParcel: boolean): void {
  const k = night ? 0.55 : 1;
  c.rect(x - 22, 112, x + 22, 215, shade(coat, k)); // body
  c.rect(x - 30, 118, x - 20, 185, shade(coat, k * 0.85)); // arms
  c.rect(x + 20, 118, x + 30, 185, shade(coat, k * 0.85));
  c.rect(x - 18, 205, x - 4, 240, shade([40, 40, 60], k)); // legs
  c.rect(x + 4, 205, x + 18, 240, shade([40, 40, 60], k));
  c.fillEllipse(x, 92, 17, 21, shade([224, 172, 140], k)); // head
  c.fillEllipse(x, 76, 18, 9, shade([60, 40, 30], k)); // hair
  c.fillEllipse(x - 6, 92, 2, 2, [30, 30, 30]);
  c.fillEllipse(x + 6, 92, 2, 2, [30, 30, 30]);
  c.rect(x - 6, 103, x + 6, 105, shade([150, 70, 70], k));
  if (holdingParcel) {
    c.rect(x - 34, 140, x + 34, 186, shade([176, 132, 84], k));
    c.rect(x - 34, 160, x + 34, 165, shade([220, 200, 150], k)); // tape
  }
}

/** Draw a scene into RGBA pixels. */
export function renderScene(scene: SceneName, width = 320, height = 240): { width: number; height: number; data: Uint8Array } {
  const c = new Canvas(width, height);
  const night = scene.endsWith("night");
  const k = night ? 0.35 : 1;
  c.rect(0, 0, 320, 240, (x, y) => shade([196 - y * 0.2, 180 - y * 0.15, 160], k)); // wall
  for (let y = 10; y < 240; y += 14) c.rect(0, y, 320, y + 1, shade([150, 136, 120], k)); // siding lines
  c.rect(0, 214, 320, 240, shade([110, 100, 92], k)); // porch floor
  c.rect(110, 40, 210, 214, shade([120, 60, 40], k)); // door frame
  c.rect(116, 46, 204, 214, shade([150, 78, 48], k)); // door
  c.rect(126, 58, 194, 120, shade([136, 70, 44], k)); // panels
  c.rect(126, 132, 194, 200, shade([136, 70, 44], k));
  c.fillEllipse(194, 140, 4, 4, shade([212, 180, 80], k)); // knob
  c.rect(232, 60, 250, 84, [70, 70, 70]); // lamp
  c.rect(236, 64, 246, 80, night ? [255, 230, 160] : [200, 200, 180]);
  c.rect(60, 150, 80, 166, shade([60, 60, 64], k)); // the doorbell itself
  c.fillEllipse(70, 158, 4, 4, night ? [120, 200, 255] : [90, 160, 220]);
  if (night) c.glow(241, 72, 140, [110, 90, 50]);
  if (scene === "visitor-day") person(c, 160, false, [40, 90, 160], false);
  if (scene === "courier-parcel") person(c, 150, false, [200, 120, 30], true);
  if (scene === "visitor-night") person(c, 168, true, [150, 40, 50], false);
  c.noise(night ? 6 : 4, SCENES.indexOf(scene) + 1);
  return { width, height, data: c.data };
}

export function sceneJpeg(scene: SceneName, options: { width?: number; height?: number; quality?: number } = {}): Uint8Array {
  const image = renderScene(scene, options.width ?? 320, options.height ?? 240);
  const out = jpeg.encode({ width: image.width, height: image.height, data: image.data }, options.quality ?? 70);
  return new Uint8Array(out.data.buffer, out.data.byteOffset, out.data.byteLength);
}

/**
 * The same JPEG grown to exactly `bytes` by COM (comment) segments right after
 * SOI, which every decoder skips: an exact-size frame for measurements.
 */
export function padJpeg(jpegBytes: Uint8Array, bytes: number, fill = 0x5a): Uint8Array {
  let extra = bytes - jpegBytes.length;
  if (extra === 0) return jpegBytes.slice();
  if (extra < 4) throw new RangeError("padJpeg: target must be the same size or at least 4 bytes larger");
  const out = new Uint8Array(bytes);
  out.set(jpegBytes.subarray(0, 2), 0);
  let o = 2;
  while (extra > 0) {
    // Each COM segment is FF FE, a 2-byte length counting itself, then data; at most 65535.
    let seg = Math.min(extra, 65537);
    if (extra - seg > 0 && extra - seg < 4) seg -= 4;
    const len = seg - 2;
    out[o] = 0xff;
    out[o + 1] = 0xfe;
    out[o + 2] = len >> 8;
    out[o + 3] = len & 255;
    out.fill(fill, o + 4, o + seg);
    o += seg;
    extra -= seg;
  }
  out.set(jpegBytes.subarray(2), o);
  return out;
}

export function writeSamples(outDir: string): string[] {
  fs.mkdirSync(outDir, { recursive: true });
  return SCENES.map((scene, i) => {
    const file = path.join(outDir, `${String(i + 1).padStart(2, "0")}-${scene}.jpg`);
    fs.writeFileSync(file, sceneJpeg(scene));
    return file;
  });
}

const CLI = {
  name: "make-sample-jpegs",
  usage: `usage: npx tsx tools/make-sample-jpegs.ts [OUTDIR]

Draws the sample porch frames the simulator's camera serves and writes them as JPEGs
into OUTDIR (default assets/samples). The same command always writes the same bytes.

  -h, --help     this text`,
  options: {},
  positionals: { max: 1 },
} as const;

runAsEntry(import.meta.url, CLI, (args) => {
  const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
  const outDir = path.resolve(args.positionals[0] ?? path.join(repo, "assets", "samples"));
  for (const file of writeSamples(outDir)) process.stdout.write(`${path.relative(process.cwd(), file)} ${fs.statSync(file).size} bytes\n`);
  return 0;
});
