/*
 * Provisioning from a file: the simulator's local channel.
 *
 * Moddable's Linux simulator has no serial console of its own (a -d build's
 * log goes to xsbug), so while unprovisioned it polls one file, named at
 * build time (`npm run sim:lin` passes provisionFile=<repo>/.doorward/lin/bundle.json).
 * Whatever is found there is deleted at once, before it is parsed, because a
 * bundle holds the Wi-Fi passphrase and the TLS private key; then it goes to
 * Provisioning.accept() exactly as a bundle from the console would. The result
 * (the device's public key, or the reason for a refusal) is logged.
 *
 * Whoever can write that path can provision the simulator: it sits in the
 * repository's own git-ignored .doorward/ directory, not in /tmp.
 *
 * Platform-free: file access is passed in (libc through the XS FFI on lin).
 */
import type { Log } from "../core/ports";
import { toHex, wipe } from "../core/bytes";
import { BUNDLE_MAX_BYTES } from "../core/provisioning";
import type { BundleAcceptor } from "./provision-serial";

export interface BundleFiles {
  /** The file's bytes (at most max; more means too large), or undefined when it does not exist. */
  read(path: string, max: number): Uint8Array | undefined;
  /** Delete it; false if it could not be deleted. */
  remove(path: string): boolean;
}

export interface FileProvisionerOptions {
  files: BundleFiles;
  path: string;
  provisioning: BundleAcceptor;
  schedule: (callback: () => void, delayMs: number) => () => void;
  log: Log;
  onProvisioned: (result: { thing: string; publicKey: Uint8Array }) => void;
  /** Default 1 s. */
  pollMs?: number;
}

export class FileProvisioner {
  #options: FileProvisionerOptions;
  #cancel: (() => void) | undefined;
  #running = false;

  constructor(options: FileProvisionerOptions) {
    this.#options = options;
  }

  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#options.log("info", "provisioning: waiting for a bundle file", { path: this.#options.path });
    this.#poll();
  }

  stop(): void {
    this.#running = false;
    this.#cancel?.();
    this.#cancel = undefined;
  }

  /** Look once (the poll loop does; exposed for tests). Returns true when a file was found. */
  check(): boolean {
    const { files, path, log } = this.#options;
    const bytes = files.read(path, BUNDLE_MAX_BYTES + 1);
    if (!bytes) return false;
    const removed = files.remove(path);
    try {
      if (!removed) {
        log("error", "provisioning: cannot delete the bundle file; refusing it (delete it by hand)", { path });
        return true;
      }
      if (bytes.length > BUNDLE_MAX_BYTES) {
        log("error", "provisioning: bundle file too large", { bytes: bytes.length });
        return true;
      }
      try {
        const result = this.#options.provisioning.accept(bytes);
        log("info", "provisioning: bundle accepted", { thing: result.thing, publicKey: toHex(result.publicKey) });
        this.stop();
        this.#options.onProvisioned(result);
      } catch (e) {
        log("error", "provisioning: bundle refused", { reason: e instanceof Error ? e.message : String(e) });
      }
      return true;
    } finally {
      wipe(bytes);
    }
  }

  #poll(): void {
    if (!this.#running) return;
    this.check();
    if (this.#running) this.#cancel = this.#options.schedule(() => this.#poll(), this.#options.pollMs ?? 1000);
  }
}
