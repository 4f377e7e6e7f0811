/*
 * The owner's app, and a shared user's, on the Node side: the apps themselves
 * (./user-app, which the web app bundles too), AppLink to carry commands and
 * replies over an mqtt.js client (the cloud relay), a device test bed, and a
 * small CLI for key files. The apps never touch the network, so tests can feed
 * payloads straight to the device.
 *
 *   npx tsx tools/owner-app.ts keygen --id alice --role resident --out alice.json
 *   npx tsx tools/owner-app.ts show alice.json
 */
import fs from "node:fs";
import type { MqttClient } from "mqtt";
import type { Clock, KeyValueStore, Log, SecretStore } from "../modules/core/ports";
import { ROLES, SECRET_KEYS, SECRET_LIST, type Role } from "../modules/core/access";
import { AccessControl, readReply, type AccessControlOptions, type CommandOutcome, type ReadReply } from "../modules/core/commands";
import { MemoryStore } from "../modules/host/file-store";
import { toBase64Url, toHex } from "../modules/core/bytes";
import { topicsFor } from "../modules/core/topics";
import { createUserKeys, createDeviceBoxKeys, keysFromJson, keysToJson, naclRandom, UserApp, OwnerApp, type AppKeys, type MadeCommand } from "./user-app";
import { runAsEntry, UserError } from "./lib/cli";

/** A rate no test bed reaches. */
const UNLIMITED = { burst: 1e9, everyMs: 1 };

export * from "./user-app";

export function saveKeys(file: string, k: AppKeys): void {
  fs.writeFileSync(file, JSON.stringify(keysToJson(k), null, 2) + "\n", { mode: 0o600 });
}

export function loadKeys(file: string): AppKeys {
  return keysFromJson(JSON.parse(fs.readFileSync(file, "utf8")));
}

/**
 * Commands over MQTT through the cloud relay: publish on doorward/<thing>/commands,
 * wait for the reply quoting the command's nonce on doorward/<thing>/replies.
 */
export class AppLink {
  readonly topics: ReturnType<typeof topicsFor>;
  #client: MqttClient;
  #waiting = new Map<string, (payload: Uint8Array) => void>();
  #onMessage = (topic: string, buf: Buffer) => {
    if (topic !== this.topics.replies) return;
    const payload = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    try {
      const n = readReply(payload).reply.n;
      if (n !== null) this.#waiting.get(n)?.(payload);
    } catch {
      // Not a reply: ignore.
    }
  };

  constructor(client: MqttClient, thing: string) {
    this.#client = client;
    this.topics = topicsFor(thing);
    client.on("message", this.#onMessage);
  }

  start(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#client.subscribe(this.topics.replies, { qos: 1 }, (err, granted) => {
        if (err) reject(err);
        else if (granted?.some((g) => g.qos === 128)) reject(new Error("reply subscription refused"));
        else resolve();
      });
    });
  }

  close(): void {
    this.#client.off("message", this.#onMessage);
  }

  /** Send a command and resolve with the app's reading of the reply. On stale-generation, remake once with the generation the device reported. */
  async request(app: UserApp, make: () => MadeCommand, o: { timeoutMs?: number; retryStale?: boolean } = {}): Promise<ReadReply> {
    const first = await this.#roundTrip(app, make(), o.timeoutMs ?? 5000);
    if (first.authenticated && first.reply.reason === "stale-generation" && (o.retryStale ?? true)) {
      return this.#roundTrip(app, make(), o.timeoutMs ?? 5000);
    }
    return first;
  }

  #roundTrip(app: UserApp, made: MadeCommand, timeoutMs: number): Promise<ReadReply> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiting.delete(made.n);
        reject(new Error(`no reply to ${made.body.op} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#waiting.set(made.n, (payload) => {
        clearTimeout(timer);
        this.#waiting.delete(made.n);
        resolve(app.read(payload));
      });
      this.#client.publish(this.topics.commands, Buffer.from(made.payload), { qos: 1 }, (err) => {
        if (err) {
          clearTimeout(timer);
          this.#waiting.delete(made.n);
          reject(err);
        }
      });
    });
  }
}

/** A SecretStore in RAM, for tests and for the simulator until it runs the vault. Not secret at all. */
export class MemorySecretStore implements SecretStore {
  readonly entries = new Map<string, Uint8Array>();
  get(name: string): Uint8Array | undefined {
    return this.entries.get(name)?.slice();
  }
  set(name: string, value: Uint8Array): void {
    this.entries.set(name, value.slice());
  }
  delete(name: string): void {
    this.entries.delete(name);
  }
}

/** A clock whose time moves only when told to: timers run in order inside advance(). */
export class ManualClock implements Clock {
  #now = 0;
  #timers: Array<{ at: number; seq: number; fn: () => void }> = [];
  #seq = 0;
  /** wallOrigin null: a device with no trusted time yet (before SNTP). */
  constructor(readonly wallOrigin: number | null = 1_780_000_000_000) {}
  monotonic(): number {
    return this.#now;
  }
  wallTime(): number | undefined {
    return this.wallOrigin === null ? undefined : this.wallOrigin + this.#now;
  }
  schedule(fn: () => void, delayMs: number): () => void {
    const t = { at: this.#now + Math.max(0, delayMs), seq: this.#seq++, fn };
    this.#timers.push(t);
    return () => {
      const i = this.#timers.indexOf(t);
      if (i >= 0) this.#timers.splice(i, 1);
    };
  }
  get pending(): number {
    return this.#timers.length;
  }
  /** Move time forward, running every timer that falls due (at most 100 000, so a runaway chain fails loudly). */
  advance(ms: number): void {
    const end = this.#now + ms;
    for (let guard = 0; guard < 100_000; guard++) {
      this.#timers.sort((a, b) => a.at - b.at || a.seq - b.seq);
      const next = this.#timers[0];
      if (!next || next.at > end) {
        this.#now = end;
        return;
      }
      this.#timers.shift();
      this.#now = next.at;
      next.fn();
    }
    throw new Error("ManualClock: too many timers");
  }
}

/**
 * A device-side AccessControl with an owner app, in RAM: what tests and the
 * simulator need to play owner, shared users and doorbell in one process.
 */
export class AccessTestbed {
  readonly thing: string;
  readonly device = createDeviceBoxKeys();
  readonly ownerKeys: AppKeys;
  readonly owner: OwnerApp;
  /** The device's SecretStore (RAM by default; tests may pass the vault). Replaceable, to model a reopen. */
  secrets: SecretStore;
  readonly store: KeyValueStore = new MemoryStore();
  readonly clock: Clock;
  readonly logs: Array<{ level: string; message: string; fields?: Record<string, unknown> }> = [];
  readonly log: Log = (level, message, fields) => this.logs.push({ level, message, fields });
  access: AccessControl;
  #extra: Partial<AccessControlOptions>;

  constructor(o: { thing?: string; clock?: Clock; ownerId?: string; secrets?: SecretStore; store?: KeyValueStore; access?: Partial<AccessControlOptions> } = {}) {
    this.thing = o.thing ?? "porch-1";
    this.secrets = o.secrets ?? new MemorySecretStore();
    if (o.store) this.store = o.store;
    this.clock = o.clock ?? new ManualClock();
    this.ownerKeys = createUserKeys(o.ownerId ?? "owner", "owner");
    this.#extra = o.access ?? {};
    this.access = this.boot();
    this.owner = new OwnerApp({ keys: this.ownerKeys, thing: this.thing, deviceBoxPublicKey: this.device.publicKey, now: () => this.now() });
  }

  now(): number {
    return this.clock.wallTime() ?? Date.now();
  }

  /** A fresh AccessControl over the same stores: what a reboot does. */
  boot(extra: Partial<AccessControlOptions> = {}): AccessControl {
    this.access = new AccessControl({
      thing: this.thing,
      secrets: this.secrets,
      store: this.store,
      random: naclRandom,
      clock: this.clock,
      log: this.log,
      deviceBoxSecretKey: this.device.secretKey,
      owner: this.ownerKeys.identity,
      // The bed drives many commands through one clock instant: rate limits are tested on their own.
      senderRate: UNLIMITED, grantRate: UNLIMITED,
      ...this.#extra,
      ...extra,
    });
    return this.access;
  }

  app(keys: AppKeys): UserApp {
    return new UserApp({ keys, thing: this.thing, deviceBoxPublicKey: this.device.publicKey, gen: this.access.generation, now: () => this.now() });
  }

  /** Deliver a command to the device and let the sending app read the reply. */
  send(app: UserApp, made: MadeCommand): CommandOutcome & { read: ReadReply } {
    const outcome = this.access.handleCommand(made.payload);
    return { ...outcome, read: app.read(outcome.reply) };
  }

  /** Owner adds a user through a signed list update; returns that user's app. Throws if the device refuses. */
  addUser(id: string, role: Role): UserApp {
    const keys = createUserKeys(id, role);
    const r = this.send(this.owner, this.owner.addUser(keys.identity));
    if (!r.ok) throw new Error(`device refused to add ${id}: ${r.reason} (${r.detail})`);
    return this.app(keys);
  }

  /** Every stored byte, for "state unchanged" checks. */
  snapshotState(): string {
    const kv = this.store.keys().map((k) => `${k}=${toHex(this.store.read(k)!)}`);
    const sec = [SECRET_LIST, SECRET_KEYS].map((k) => `${k}=${toHex(this.secrets.get(k) ?? new Uint8Array(0))}`);
    return [...kv, ...sec, `gen=${this.access.generation}`, `sessions=${this.access.sessions.active().map((s) => s.id).join(",")}`].join("\n");
  }
}

const CLI = {
  name: "owner-app",
  usage: `usage: npx tsx tools/owner-app.ts keygen --id ID [--role owner|resident|viewer] --out FILE
       npx tsx tools/owner-app.ts show FILE

Key files for an owner or a shared user of a doorbell.

  keygen   make a user's Ed25519 signing and X25519 box key pairs and write them to FILE
           (mode 0600); --role defaults to resident
  show     print a key file's public half as JSON {id, role, sign, box} (base64url), the
           form provision.ts create --owner takes
  -h, --help     this text`,
  options: { id: { type: "string" }, role: { type: "string" }, out: { type: "string" } },
  positionals: { min: 1, max: 2 },
} as const;

runAsEntry(import.meta.url, CLI, ({ values, positionals }) => {
  const [verb, file] = positionals;
  if (verb === "keygen") {
    if (file !== undefined) throw new UserError(`keygen takes no file argument; give it with --out`);
    if (!values.id) throw new UserError("keygen needs --id ID");
    if (!values.out) throw new UserError("keygen needs --out FILE");
    const role = (values.role ?? "resident") as Role;
    if (!ROLES.includes(role)) throw new UserError(`--role must be one of ${ROLES.join(", ")} (got ${JSON.stringify(values.role)})`);
    if (fs.existsSync(values.out)) throw new UserError(`${values.out} exists; a key file is never overwritten`);
    const k = createUserKeys(values.id, role);
    saveKeys(values.out, k);
    process.stdout.write(`${values.id} (${role}) sign ${toHex(k.identity.signPublicKey)} box ${toHex(k.identity.boxPublicKey)} → ${values.out}\n`);
    return 0;
  }
  if (verb === "show") {
    if (!file) throw new UserError("show needs a key file");
    if (values.id || values.role || values.out) throw new UserError("show takes only a key file");
    if (!fs.existsSync(file)) throw new UserError(`${file} does not exist`);
    const k = loadKeys(file);
    process.stdout.write(JSON.stringify({ id: k.identity.id, role: k.identity.role, sign: toBase64Url(k.identity.signPublicKey), box: toBase64Url(k.identity.boxPublicKey) }) + "\n");
    return 0;
  }
  throw new UserError(`unknown command ${JSON.stringify(verb)} (see --help)`);
});
