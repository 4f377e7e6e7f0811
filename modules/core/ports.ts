/*
 * Ports: the only ways the core touches the world.
 *
 * Every capability the doorbell needs from its platform is one small interface
 * here. Device adapters (modules/device, Moddable APIs) and host adapters
 * (modules/host, Node) implement them; the core never imports either side.
 * Shapes follow the platform-neutral style of ECMA-419: plain option bags,
 * callbacks for events, Uint8Array for bytes. Nothing here is Node-shaped.
 */

/** The one clock. Monotonic time drives timers and debouncing; wall time is only for stamping events. */
export interface Clock {
  /** Milliseconds since an arbitrary origin; never goes backwards. */
  monotonic(): number;
  /** Milliseconds since the Unix epoch, or undefined while the device has no trusted time (before SNTP). */
  wallTime(): number | undefined;
  /** Run callback once after delayMs; returns a function that cancels it. */
  schedule(callback: () => void, delayMs: number): () => void;
}

/** Cryptographically strong random bytes. Device: esp_fill_random via FFI. Host: crypto.getRandomValues. */
export interface Random {
  fill(target: Uint8Array): void;
}

/**
 * Flash key-value storage, shaped like Moddable's `preference` / `embedded:storage/key-value`.
 * A single write of one key must be atomic (NVS guarantees this per entry; the host
 * adapter writes a temp file and renames it). Names are at most KV_MAX_KEY characters,
 * values at most KV_MAX_VALUE bytes.
 */
export interface KeyValueStore {
  read(key: string): Uint8Array | undefined;
  write(key: string, value: Uint8Array): void;
  delete(key: string): void;
  keys(): string[];
}
export const KV_MAX_KEY = 15;
export const KV_MAX_VALUE = 4000;

/** Callbacks a transport reports a session through. */
export interface MqttHandlers {
  onConnect(): void;
  onMessage(topic: string, payload: Uint8Array): void;
  /** The session ended or could not start; reason is a short human-readable cause. */
  onClose(reason: string): void;
}

/**
 * One MQTT session over mutual TLS to the single allowed broker. Reconnect policy
 * lives in the core, so a transport only ever makes one attempt per connect().
 */
export interface MqttTransport {
  connect(handlers: MqttHandlers): void;
  /** QoS 1 resolves on PUBACK; QoS 0 resolves once written. Rejects if the session ends first. */
  publish(topic: string, payload: Uint8Array, qos: 0 | 1): Promise<void>;
  subscribe(topicFilter: string): Promise<void>;
  close(): void;
}

/** Raw button edges; debouncing is the core's job so it behaves the same everywhere. */
export interface Button {
  start(onEdge: (pressed: boolean) => void): void;
  stop(): void;
}

/** One JPEG frame per capture. The device returns a buffer in PSRAM that is valid until the next capture. */
export interface Camera {
  capture(): Promise<Uint8Array>;
  /** Hand the frame buffer back early (the device's disposable frames); optional. */
  release?(): void;
}

/** Where a firmware image is written. Device: embedded:update (inactive OTA slot). Host: a file. */
export interface UpdateSink {
  open(byteLength: number): void;
  write(chunk: Uint8Array): void;
  /** Mark the written image bootable. Only called after it has been verified. */
  complete(): void;
  /** Abandon the partial image; the running firmware is untouched. */
  cancel(): void;
}

/**
 * Named secrets at rest. The vault (modules/core/vault) implements it over the
 * KeyValueStore with authenticated encryption; nothing else stores a secret.
 */
export interface SecretStore {
  get(name: string): Uint8Array | undefined;
  set(name: string, value: Uint8Array): void;
  delete(name: string): void;
}

/**
 * Authenticated encryption of one chunk: AES-256-GCM with a 12-byte nonce and a
 * 16-byte tag. Device: Moddable `crypt` BlockCipher + `gcm` (native AES, GHASH).
 * Host: node:crypto.
 */
export interface Aead {
  /** Returns ciphertext ‖ tag (plaintext.length + 16 bytes). */
  seal(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Uint8Array;
}

/** An incremental digest, so a hash over many chunks never needs them all in memory. */
export interface DigestStream {
  update(data: Uint8Array): void;
  /** The digest; the stream is finished afterwards. */
  digest(): Uint8Array;
}
/** The bootloader, as far as the agent needs it. Device: ESP-IDF app rollback through FFI. Host: modules/host/update-sink. */
export interface BootControl {
  /** Mark the running image good so the bootloader never rolls it back. Idempotent. */
  confirm(): void;
  /** Give up on the running trial image: mark it invalid and restart into the previous one. */
  rollback(reason: string): void;
  /** Restart so the bootloader starts the image complete() made bootable. */
  restart(): void;
}

/** SHA-256 as a stream, native on the device (Moddable `crypt` Digest("SHA256")), node:crypto on the host. */
export type Sha256Factory = () => DigestStream;

/** SHA-512, replaceable by a native digest on the device (Moddable `crypt` Digest). */
export type Sha512 = (data: Uint8Array) => Uint8Array;

export type LogLevel = "debug" | "info" | "warn" | "error";
/** Structured log sink. Fields must never hold secrets: the core logs ids, counts and reasons only. */
export type Log = (level: LogLevel, message: string, fields?: Record<string, string | number | boolean | null>) => void;
