/*
 * The firmware, assembled: what runs after the board has power.
 *
 * Both entry points (modules/device/main.ts on a board, tools/simulator.ts on a
 * laptop) hand their adapters to bootFirmware(); everything else is decided
 * here, once: open the vault, check provisioning, and if the device has an
 * identity, start access control and the doorbell with commands routed to it.
 * An unprovisioned or damaged device does not crash or loop: it reports why and
 * waits for a provisioning bundle on its local channel.
 */
import type { Aead, BootControl, Button, Camera, Clock, KeyValueStore, Log, MqttTransport, Random, Sha256Factory, Sha512, UpdateSink } from "./ports";
import nacl from "tweetnacl";
import { UpdateAgent, updateSubscriptions, type UpdateEvent } from "./update";
import { keyedTag, type RecordTag } from "./record";
import { ANCHOR_DOMAIN } from "./acl-anchor";
import type { TrustedKeys } from "./release";
import { Snapshotter } from "./snapshot";
import { Vault, type KeyProvider } from "./vault";
import { Provisioning, type DeviceIdentity, type ProvisioningStatus } from "./provisioning";
import { AccessControl, type CommandOutcome } from "./commands";
import { deviceBoxSecretFromSeed } from "./access";
import { Doorbell, type OutboxSettings, type RingRecord } from "./doorbell";
import type { EgressGuard } from "./egress";
import type { HeavyCrypto } from "./heavy-crypto";
import { ChipLockError, judgeChipLock, type BuildKind, type ChipState, type LockVerdict } from "./chip-lock";

export interface FirmwarePorts {
  clock: Clock;
  random: Random;
  /** Flash for secrets: only the vault reads or writes it. */
  vaultStore: KeyValueStore;
  /** Flash for everything else (boot counter, sequence marks, replay marks). */
  store: KeyValueStore;
  keys: KeyProvider;
  log: Log;
  /** Build the one MQTT transport from the provisioned identity (endpoint, client certificate, CA), opening it through the egress guard. */
  transport: (identity: DeviceIdentity, egress: EgressGuard | undefined) => MqttTransport;
  /**
   * The egress allowlist (./egress). With it, a trust anchor the profile does not allow stops the boot
   * (throws EgressConfigError), and refused destinations are reported as signed audit events.
   */
  egress?: EgressGuard;
  button?: Button;
  sha512?: Sha512;
  /**
   * The chip's locks (./chip-lock), judged before the vault is opened: a
   * release build on an unlocked chip stops there (throws ChipLockError), so
   * no production secret is read or accepted; a development build logs what
   * is missing and goes on.
   */
  chipLock?: { build: BuildKind; read: () => ChipState };
  /**
   * False while no true entropy source feeds `random` (a device before its
   * radio is up): nonce precomputation waits, and a signature needed
   * meanwhile is the deterministic one.
   */
  entropyReady?: () => boolean;
  /**
   * Where the seconds-long curve work runs (./heavy-crypto): nonce points, grant
   * and update verifies, box.before. A worker on a second core keeps presses and
   * revokes served meanwhile; without one it all runs here.
   */
  crypto?: HeavyCrypto;
  /** With all three, every ring is followed by an end-to-end encrypted snapshot. */
  camera?: Camera;
  cipher?: Aead;
  sha256?: Sha256Factory;
  /** Outbox limits; `flashBytes` is sized to the board's NVS partition (docs/reliability.md, "Capacity"). */
  outbox?: OutboxSettings;
  /** Snapshot chunk size: sized to the device's free RAM (default 8 KB). */
  chunkBytes?: number;
  /** With this, signed firmware updates arrive through AWS IoT Jobs and streams on the same connection. */
  update?: FirmwareUpdatePorts;
  /** Drive the chime and the status LED from here. */
  onPress?: () => void;
  /** A ring's signed event is ready and queued (its seq, payload and PUBACK promise). */
  onRing?: (ring: RingRecord) => void;
  onChime?: () => void;
}

export interface FirmwareUpdatePorts {
  /** This build's board name and version, and the release keys built into it. */
  board: string;
  runningVersion: number;
  releaseKeys: TrustedKeys;
  sink: UpdateSink;
  boot: BootControl;
  /** Largest image the inactive slot holds. */
  maxImageBytes: number;
  /** Local self-test of a new image after it reached the cloud (default: the link is up). */
  healthCheck?: () => boolean;
  onEvent?: (event: UpdateEvent) => void;
}

export interface RunningFirmware {
  state: "running";
  identity: DeviceIdentity;
  doorbell: Doorbell;
  egress: EgressGuard | undefined;
  /** The doorbell's counters plus the egress counts: what a status command or the simulator's `s` shows. */
  status(): ReturnType<Doorbell["status"]> & { egress: ReturnType<EgressGuard["status"]> | undefined };
  access: AccessControl;
  snapshots: Snapshotter | undefined;
  updates: UpdateAgent | undefined;
  vault: Vault;
  provisioning: Provisioning;
  stop(): void;
}

export interface WaitingFirmware {
  state: "unprovisioned" | "damaged";
  status: ProvisioningStatus;
  vault: Vault;
  provisioning: Provisioning;
}

/**
 * The MAC of the update agent's anti-rollback records, under a key derived
 * from the vault's key provider (eFuse HMAC on a board): not in flash, and
 * kept by a factory reset, as those records are.
 */
export function updateRecordTag(keys: KeyProvider, sha512: Sha512 = (d) => nacl.hash(d)): RecordTag {
  const secret = keys.storageKey();
  try {
    return keyedTag(UPDATE_RECORD_DOMAIN, secret, sha512);
  } finally {
    secret.fill(0);
  }
}
export const UPDATE_RECORD_DOMAIN = "doorward/update-records/v1";

/** The access anchor's MAC (./acl-anchor), under a key from the key provider: it outlives a factory reset, as the chip does. */
export function anchorTag(keys: KeyProvider, sha512: Sha512 = (d) => nacl.hash(d)): RecordTag {
  const secret = keys.storageKey();
  try {
    return keyedTag(ANCHOR_DOMAIN, secret, sha512);
  } finally {
    secret.fill(0);
  }
}

/** Judge the chip's locks and say so; throws ChipLockError when production secrets are refused. */
export function checkChipLock(chipLock: NonNullable<FirmwarePorts["chipLock"]>, log: Log): LockVerdict {
  let state: ChipState | Error;
  try {
    state = chipLock.read();
  } catch (e) {
    state = e instanceof Error ? e : new Error(String(e));
  }
  const verdict = judgeChipLock(chipLock.build, state);
  const level = verdict.locked ? "info" : verdict.productionSecrets ? "warn" : "error";
  log(level, verdict.summary, state instanceof Error ? {} : { chip: state.chip });
  for (const p of verdict.problems) log(level, `chip lock: ${p.reason}`, { lock: p.lock });
  if (!verdict.productionSecrets) throw new ChipLockError(verdict.summary);
  return verdict;
}

export function bootFirmware(ports: FirmwarePorts): RunningFirmware | WaitingFirmware {
  const { log } = ports;
  if (ports.chipLock) checkChipLock(ports.chipLock, log);
  const vault = Vault.open({ store: ports.vaultStore, keys: ports.keys, random: ports.random, log, sha512: ports.sha512 });
  // Before anything reads the store: an interrupted factory reset is finished here.
  const provisioning = new Provisioning({ vault, random: ports.random, log, store: ports.store, entropyReady: ports.entropyReady });
  const status = provisioning.status();
  if (!status.provisioned) {
    log(status.state === "damaged" ? "error" : "warn", status.message, { state: status.state });
    return { state: status.state === "damaged" ? "damaged" : "unprovisioned", status, vault, provisioning };
  }
  const identity = provisioning.identity();
  // Production trusts Amazon Root CA 1 and 3 only: a development CA in the bundle stops here, before any connection.
  ports.egress?.assertTrustStore([identity.tls.certificate], ports.sha512);

  const crypto = ports.crypto?.concurrent ? ports.crypto : undefined;
  const access = new AccessControl({
    thing: identity.thing,
    secrets: vault,
    store: ports.store,
    random: ports.random,
    clock: ports.clock,
    log,
    deviceBoxSecretKey: deviceBoxSecretFromSeed(identity.signingSeed, ports.sha512),
    owner: { signPublicKey: identity.owner.signKey, boxPublicKey: identity.owner.boxKey },
    sha512: ports.sha512,
    crypto,
    // A live view is a snapshot per frame, each wrapped only for who is authorised at that moment.
    onSessionFrame: (session) => requestSnapshot(session.user, "live-view"),
    // The generation is anchored in the device's shadow, outside its flash (./acl-anchor).
    // Under the chip's key, with its count of factory resets, so a dump from before a reset is told apart from a previous owner's anchor.
    anchor: { publish: (topic, payload) => void doorbell.send(topic, payload, 0), tag: anchorTag(ports.keys, ports.sha512), resets: provisioning.resets() ?? 0,
      // The next reset must move above the count the chip's own anchor shows.
      onRetired: (resets) => provisioning.raiseResets(resets),
    },
  });

  let doorbell: Doorbell;
  let snapshots: Snapshotter | undefined;
  /**
   * A snapshot nobody rang for is anchored to a signed status event recording who asked,
   * so it is bound to a signed, sequenced event exactly as a ring's snapshot is.
   */
  function requestSnapshot(user: string, reason: "request" | "live-view"): void {
    if (!snapshots || snapshots.busy) return;
    const s = snapshots;
    doorbell.emitWhenReady("status", { snapshot: reason, user }).then(
      (event) => void s.onRing(event),
      (e) => log("error", "snapshot request could not be signed", { reason: String((e as Error)?.message ?? e) }),
    );
  }
  let updates: UpdateAgent | undefined;
  const update = ports.update;
  if (update && ports.sha256) {
    updates = new UpdateAgent({
      thing: identity.thing, board: update.board, runningVersion: update.runningVersion, releaseKeys: update.releaseKeys,
      store: ports.store, recordTag: updateRecordTag(ports.keys, ports.sha512), sink: update.sink, boot: update.boot, clock: ports.clock, log, createDigest: ports.sha256,
      maxImageBytes: update.maxImageBytes, onEvent: update.onEvent, crypto,
      publish: (topic, payload) => doorbell.send(topic, payload, 0),
      healthCheck: () => (update.healthCheck ? update.healthCheck() : doorbell.link.online),
    });
  }
  const answer = (outcome: CommandOutcome): void => {
    doorbell.send(doorbell.topics.replies, outcome.reply, 0);
    const action = outcome.action;
    if (action?.type === "chime-test") ports.onChime?.();
    else if (action?.type === "snapshot") requestSnapshot(action.user, "request");
  };
  // With a worker, a grant's verify runs there; every other command (a revoke above all) is in force when this returns.
  const onCommand = (payload: Uint8Array): void => {
    if (crypto) void access.submitCommand(payload).then(answer);
    else answer(access.handleCommand(payload));
  };

  doorbell = new Doorbell({
    thing: identity.thing,
    signingSeed: identity.signingSeed,
    signingPublicKey: identity.publicKey,
    clock: ports.clock,
    random: ports.random,
    store: ports.store,
    outbox: ports.outbox,
    transport: ports.transport(identity, ports.egress),
    log,
    button: ports.button,
    sha512: ports.sha512,
    crypto: ports.crypto,
    onPress: () => {
      ports.onPress?.();
      ports.onChime?.();
    },
    // The ring is published first; its snapshot follows once the broker has acknowledged it.
    onRing: (ring) => {
      ports.onRing?.(ring);
      void snapshots?.onRing(ring);
    },
    mayPrecompute: () => (ports.entropyReady?.() ?? true) && !snapshots?.busy,
    entropyReady: ports.entropyReady,
    subscriptions: [...(updates ? updateSubscriptions(identity.thing) : []), ...access.anchorSubscriptions],
    onOnline: () => {
      access.requestAnchor();
      updates?.linkOnline();
    },
    onMessage: (topic, payload) => {
      if (topic === doorbell.topics.commands) onCommand(payload);
      else if (access.onAnchorMessage(topic, payload)) return;
      else if (updates?.handles(topic)) updates.onMessage(topic, payload);
      else log("debug", "message on a topic nothing handles", { topic, bytes: payload.length });
    },
  });
  if (ports.camera && ports.cipher && ports.sha256) {
    snapshots = new Snapshotter({
      host: doorbell, camera: ports.camera, cipher: ports.cipher, sha256: ports.sha256, keys: access,
      random: ports.random, clock: ports.clock, log, chunkBytes: ports.chunkBytes,
    });
  }
  const egress = ports.egress;
  const detachAudit = egress?.attachReporter({ clock: ports.clock, emit: (fields) => void doorbell.emit("audit", fields), mayReport: () => doorbell.spareNonces > 0 });
  doorbell.start();
  updates?.start();
  return {
    state: "running",
    identity,
    doorbell,
    egress,
    status: () => ({ ...doorbell.status(), egress: egress?.status() }),
    access,
    snapshots,
    updates,
    vault,
    provisioning,
    stop: () => {
      detachAudit?.();
      updates?.stop();
      doorbell.stop();
    },
  };
}
