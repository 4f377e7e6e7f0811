/*
 * The device's one way out: the only device module that may import a
 * network-capable Moddable module (tools/import-rules.ts enforces it).
 *
 * Everything that leaves the board is built here, from the core's EgressGuard
 * over the allowlist in mc/config (manifest.json config.doorward.egress,
 * frozen at build time):
 *  - DNS: resolve() looks up only names the allowlist holds. A refused name
 *    never reaches Net.resolve; an IPv4 literal the allowlist holds (the
 *    development stand-in) is answered without DNS.
 *  - MQTT over TLS: mqttIo() gives ./mqtt-session the SDK's ECMA-419 MQTT
 *    client, TLS socket, TCP socket and ./resolver, each checking first. The
 *    client checks host and port before it exists (so a refusal creates no
 *    resolver and no socket) and is handed the normalised name. The sockets
 *    connect only to an address this module itself resolved for an allowed
 *    name, and only on a port the allowlist gives that name: lwIP's and
 *    glibc's inet_aton would otherwise accept "127.1" or "0x7f000001".
 *  - SNTP: sntpClass() is the SDK `sntp` class's shape over the ECMA-419 UDP
 *    socket, asking the allowlisted NTP host and no other, and accepting only
 *    the reply to its own request. No module imports the SDK's `sntp`, and
 *    the SDK's setup/network must not run its own SNTP (config "sntp": "" in
 *    manifest.json), or it would reach config.sntp unchecked.
 * Every refusal is counted by the guard, which reports it as a signed audit
 * event once the firmware attaches its doorbell.
 *
 * Not preloadable: the guard's counters change at run time.
 */
import config from "mc/config";
import MQTTClient from "embedded:network/mqtt/client";
import TCP from "embedded:io/socket/tcp";
import TLSSocket from "embedded:io/socket/tcp/tls";
import UDP from "embedded:io/socket/udp";
import Net from "net";
import Timer from "timer";
import type { Log, Random } from "../core/ports";
import { EgressGuard, EgressRefusedError, describeDestination, type EgressPurpose } from "../core/egress";
import type { Client419Constructor, Client419Options, ResolverConstructor, SocketConstructor, SocketOptions } from "./mqtt-session";
import { resolverClass, type Lookup } from "./resolver";

/** A received datagram: the bytes, with where they came from. */
export type Datagram = ArrayBuffer & { address: string; port: number };

export interface UdpSocket {
  write(data: ArrayBuffer | Uint8Array, address: string, port: number): void;
  read(): Datagram | undefined;
  close(): void;
}
export type UdpConstructor = new (options: { port?: number; onReadable?: (this: UdpSocket, packets: number) => void; onError?: () => void }) => UdpSocket;

/** The SDK's network classes, passed in so the host tests can run this module against spies. */
export interface NetworkModules {
  client: Client419Constructor;
  tls: SocketConstructor;
  tcp: SocketConstructor;
  udp: UdpConstructor;
  /** Net.resolve. */
  resolve: (name: string, callback: (name: string, address?: string) => void) => void;
  /** Timer.set; returns a function that cancels. */
  schedule: (callback: () => void, delayMs: number) => () => void;
}

export interface MqttIo {
  client: Client419Constructor;
  tls: SocketConstructor;
  tcp: SocketConstructor;
  resolver: ResolverConstructor;
}

/** The SDK `sntp` module's callback messages (modules/network/sntp): SNTP.time, SNTP.retry, SNTP.error. */
export const SNTP_TIME = 1;
export const SNTP_RETRY = 2;
export const SNTP_ERROR = -1;

export interface SntpClient {
  close(): void;
}
/** The SDK `sntp` class's shape: one query, up to `tries` requests 5 s apart, then SNTP_TIME with Unix seconds or SNTP_ERROR. */
export type SntpClass = new (options: { host: string }, callback: (message: number, value?: unknown) => void) => SntpClient;

/** Seconds between 1900 (NTP's epoch) and 1970. */
const NTP_UNIX_OFFSET = 2208988800;
const NTP_PACKET = 48;
/** Addresses remembered from look-ups; sockets may only connect to these. */
const MAX_APPROVED = 16;
const IPV4 = /^(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}$/;

function later(callback: () => void): void {
  Promise.resolve().then(callback);
}

export class DeviceEgress {
  readonly guard: EgressGuard;
  #sdk: NetworkModules;
  /** address → "port/purpose" keys it was resolved for. */
  #approved = new Map<string, Set<string>>();

  constructor(guard: EgressGuard, sdk: NetworkModules) {
    this.guard = guard;
    this.#sdk = sdk;
  }

  /**
   * Look a name up, if the allowlist holds it. callback(address) on success;
   * callback(undefined, error) when refused or not found. Always asynchronous.
   */
  resolve(host: unknown, requester: string, callback: (address: string | undefined, error?: Error) => void): void {
    const verdict = this.guard.checkName(host, requester);
    if (!verdict.allowed) {
      const error = new EgressRefusedError(verdict.reason, verdict.destination);
      later(() => callback(undefined, error));
      return;
    }
    const name = verdict.host;
    if (verdict.kind === "ipv4") {
      this.#approve(name, name);
      later(() => callback(name));
      return;
    }
    this.#sdk.resolve(name, (_answered, address) => {
      if (address === undefined) {
        callback(undefined, new Error(`dns: cannot resolve ${name}`));
        return;
      }
      // Net.resolve answers in dotted quad; anything else would be read differently by inet_aton, so it is not trusted.
      if (!IPV4.test(address)) {
        callback(undefined, new Error(`dns: unexpected answer for ${name}`));
        return;
      }
      this.#approve(name, address);
      callback(address);
    });
  }

  /** The classes an ECMA-419 MQTT session is built from (for ./mqtt-session), each checking the allowlist first. */
  mqttIo(requester: string): MqttIo {
    const egress = this;
    const lookup: Lookup = (host, callback) => {
      this.resolve(host, requester, (address) => callback(host, address));
    };
    const tls = this.#pinnedSocket(this.#sdk.tls, "mqtt", requester);
    const tcp = this.#pinnedSocket(this.#sdk.tcp, "mqtt", requester);
    const Client = this.#sdk.client;
    class GuardedClient extends Client {
      constructor(options: Client419Options) {
        const verdict = egress.guard.check({ host: options.host, port: options.port, purpose: "mqtt", requester });
        if (!verdict.allowed) throw new EgressRefusedError(verdict.reason, verdict.destination);
        const secure = (options.socket.secure ?? {}) as Record<string, unknown>;
        super({
          ...options,
          // What was checked is what is used: the normalised name, the allowlisted port, and the ALPN AWS needs on 443.
          host: verdict.host,
          port: verdict.port,
          socket: {
            ...options.socket,
            ...(verdict.entry.alpn ? { secure: { ...secure, applicationLayerProtocolNegotiation: verdict.entry.alpn } } : {}),
          },
        });
      }
    }
    return { client: GuardedClient, tls, tcp, resolver: resolverClass(lookup) };
  }

  /**
   * An SNTP client shaped like the SDK's `sntp` class (so ./sntp's TimeSync
   * takes it unchanged), over the ECMA-419 UDP socket. It asks only the
   * allowlisted NTP host: `host` is that name, or an address this module
   * resolved for it. It accepts only a server reply that echoes this
   * request's transmit timestamp and comes from that address and port. That
   * timestamp is 64 random bits from `random`, so an off-path forger cannot
   * guess it (a clock-based one could be predicted from the time of day).
   */
  sntpClass(random: Random, requester = "device/sntp", tries = 5, retryMs = 5000): SntpClass {
    const egress = this;
    const Udp = this.#pinnedUdp("ntp", requester);
    return class Sntp implements SntpClient {
      #socket: UdpSocket | undefined;
      #cancel: (() => void) | undefined;
      #done = false;
      #callback: (message: number, value?: unknown) => void;

      constructor(options: { host: string }, callback: (message: number, value?: unknown) => void) {
        this.#callback = callback;
        const entry = egress.guard.allowlist.entries.find((e) => e.purpose === "ntp");
        if (!entry) throw new EgressRefusedError("not-allowlisted", describeDestination(options.host, "ntp"));
        const start = (address: string) => this.#query(address, entry.port);
        if (typeof options.host === "string" && egress.#isApproved(options.host, entry.port, "ntp")) later(() => start(options.host));
        else {
          egress.resolve(options.host, requester, (address, error) => {
            if (this.#done) return;
            if (address) start(address);
            else this.#finish(SNTP_ERROR, error?.message ?? "cannot resolve");
          });
        }
      }

      close(): void {
        this.#done = true;
        this.#cancel?.();
        this.#cancel = undefined;
        const socket = this.#socket;
        this.#socket = undefined;
        try {
          socket?.close();
        } catch {
          // already closed
        }
      }

      #finish(message: number, value: unknown): void {
        if (this.#done) return;
        this.close();
        this.#callback(message, value);
      }

      #query(address: string, port: number): void {
        if (this.#done) return;
        const request = new Uint8Array(NTP_PACKET);
        // LI 0, version 4, mode 3 (client), and a random transmit timestamp the reply must echo as its originate timestamp.
        request[0] = 0x23;
        const nonce = new Uint8Array(8);
        random.fill(nonce);
        request.set(nonce, 40);
        const sntp = this;
        try {
          this.#socket = new Udp({
            onReadable(packets: number) {
              for (let i = 0; i < packets; i++) {
                const reply = this.read();
                if (!reply || reply.address !== address || reply.port !== port) continue;
                const ms = parseNtpReply(new Uint8Array(reply), nonce);
                if (ms !== undefined) return sntp.#finish(SNTP_TIME, Math.floor(ms / 1000));
              }
            },
            onError() {
              sntp.#finish(SNTP_ERROR, "socket error");
            },
          });
        } catch (e) {
          return this.#finish(SNTP_ERROR, e instanceof Error ? e.message : String(e));
        }
        let left = Math.max(1, tries);
        const send = () => {
          this.#cancel = undefined;
          if (this.#done || !this.#socket) return;
          if (left-- === 0) return this.#finish(SNTP_ERROR, "no response from SNTP server");
          if (left < tries - 1) this.#callback(SNTP_RETRY);
          try {
            this.#socket.write(request, address, port);
          } catch (e) {
            return this.#finish(SNTP_ERROR, e instanceof Error ? e.message : String(e));
          }
          this.#cancel = egress.#sdk.schedule(send, retryMs);
        };
        send();
      }
    };
  }

  #approve(name: string, address: string): void {
    const keys = this.#approved.get(address) ?? new Set<string>();
    for (const e of this.guard.entriesFor(name)) keys.add(`${e.port}/${e.purpose}`);
    this.#approved.delete(address);
    this.#approved.set(address, keys);
    while (this.#approved.size > MAX_APPROVED) this.#approved.delete(this.#approved.keys().next().value as string);
  }

  #isApproved(address: string, port: unknown, purpose: EgressPurpose): boolean {
    return this.#approved.get(address)?.has(`${port}/${purpose}`) === true;
  }

  /** Throws unless this address was resolved here for an allowed name and this port is that name's. */
  #assertApproved(address: unknown, port: unknown, purpose: EgressPurpose, requester: string): void {
    if (typeof address === "string" && this.#isApproved(address, port, purpose)) return;
    // Count it like any refusal (an allowlisted literal address passes here too).
    const verdict = this.guard.check({ host: address, port, purpose, requester });
    if (!verdict.allowed) throw new EgressRefusedError(verdict.reason, verdict.destination);
  }

  #pinnedSocket(Socket: SocketConstructor, purpose: EgressPurpose, requester: string): SocketConstructor {
    const egress = this;
    return class PinnedSocket extends Socket {
      constructor(options: SocketOptions) {
        if (options.from !== undefined || options.address === undefined) {
          throw new EgressRefusedError("not-allowlisted", describeDestination(options.host ?? "(no address)", options.port));
        }
        egress.#assertApproved(options.address, options.port, purpose, requester);
        super(options);
      }
    };
  }

  #pinnedUdp(purpose: EgressPurpose, requester: string): UdpConstructor {
    const egress = this;
    const Udp = this.#sdk.udp;
    return class PinnedUdp extends Udp {
      override write(data: ArrayBuffer | Uint8Array, address: string, port: number): void {
        egress.#assertApproved(address, port, purpose, requester);
        super.write(data, address, port);
      }
    };
  }
}

/** The time in an NTP server reply to our request, or undefined if it is not one. */
export function parseNtpReply(reply: Uint8Array, nonce: Uint8Array): number | undefined {
  if (reply.length < NTP_PACKET) return undefined;
  const view = new DataView(reply.buffer, reply.byteOffset, reply.byteLength);
  const mode = reply[0] & 7;
  const leap = reply[0] >> 6;
  const stratum = reply[1];
  // Mode 4 = server; stratum 0 is a kiss-o'-death; leap 3 = clock not synchronised.
  if (mode !== 4 || stratum === 0 || stratum > 15 || leap === 3) return undefined;
  if (nonce.length !== 8) return undefined;
  let diff = 0;
  for (let i = 0; i < 8; i++) diff |= reply[24 + i] ^ nonce[i];
  if (diff !== 0) return undefined;
  const seconds = view.getUint32(40);
  const fraction = view.getUint32(44);
  if (seconds === 0) return undefined;
  // Era 0 ends in 2036; a reply below 1970's offset is taken as era 1.
  const unix = seconds >= NTP_UNIX_OFFSET ? seconds - NTP_UNIX_OFFSET : seconds + 0x100000000 - NTP_UNIX_OFFSET;
  return unix * 1000 + Math.floor((fraction / 0x100000000) * 1000);
}

const SDK: NetworkModules = {
  // The published typings of the client and TLS socket disagree with the SDK's implementation (see ./mqtt-session).
  client: MQTTClient as unknown as Client419Constructor,
  tls: TLSSocket as unknown as SocketConstructor,
  tcp: TCP as unknown as SocketConstructor,
  udp: UDP as unknown as UdpConstructor,
  resolve: (name, callback) => Net.resolve(name, callback),
  schedule: (callback, delayMs) => {
    const timer = Timer.set(callback, delayMs);
    return () => Timer.clear(timer);
  },
};

let shared: DeviceEgress | undefined;

/**
 * The device's egress, built from mc/config on first use. Throws
 * EgressConfigError when the configuration may not run (a production build
 * with development entries, a placeholder endpoint): the firmware refuses to
 * start, and nothing has been contacted.
 */
export function deviceEgress(options: { log?: Log } = {}): DeviceEgress {
  shared ??= new DeviceEgress(EgressGuard.fromConfig(config, { log: options.log }), SDK);
  return shared;
}

