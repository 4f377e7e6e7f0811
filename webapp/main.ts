/*
 * The owner web app, in the browser: the owner's (or a shared user's) window on
 * one doorbell.
 *
 * It joins the broker over MQTT/WebSocket with its app token, verifies every
 * event with the device's Ed25519 key (tools/verifier, the reference verifier),
 * decrypts each snapshot wrapped for this user (./snapshots), and sends sealed
 * commands through the user apps of tools/user-app, the same code the tests and
 * the simulator use. The owner's page also lists users, invites a guest
 * (./invitation), lets the guest in with a signed list, and revokes one user or
 * all, showing when the device confirmed. Keys are made here and kept here
 * (./keystore); the only things sent out are public keys, sealed commands and
 * the sealed invitation answer.
 *
 * Fragments it understands: #setup=<code> (take the doorbell over from the
 * simulator's development owner), #invite=<code> (a guest joins).
 */
import mqtt, { type MqttClient } from "mqtt";
import qrcode from "qrcode-generator";
import { fromBase64Url, toBase64Url, toHex, utf8Decode } from "../modules/core/bytes";
import { topicsFor } from "../modules/core/topics";
import { readReply, type ReadReply } from "../modules/core/commands";
import { userFromJson, userToJson, type AccessUser, type Role } from "../modules/core/access";
import { EventVerifier } from "../tools/event-verifier";
import { createUserKeys, keysFromJson, keysToJson, OwnerApp, UserApp, type AppKeys, type MadeCommand } from "../tools/user-app";
import { appClientIdBase, PRESENCE_PREFIX } from "../tools/standin/app-names";
import { Keystore, type Profile, type Secrets } from "./keystore";
import { BrowserSnapshots, type BrowserSnapshot } from "./snapshots";
import { InvitationError, invitationLink, invitesTopic, openAnswer, parseInvitation, sealAnswer } from "./invitation";

const COMMAND_TIMEOUT_MS = 10_000;

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`page is missing #${id}`);
  return el as T;
};

function el(tag: string, attrs: Record<string, string> = {}, ...children: Array<Node | string>): HTMLElement {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

const time = (ms: number) => new Date(ms).toLocaleTimeString(undefined, { hour12: false }) + `.${String(ms % 1000).padStart(3, "0")}`;

/** A sentence for the user, shown in the banner; never a stack trace. */
function say(text: string, kind: "info" | "error" = "info"): void {
  const banner = $("message");
  banner.textContent = text;
  banner.className = kind;
}

/** Why the device refused, in words. */
const REFUSALS: Record<string, string> = {
  "unknown-sender": "you are not on this doorbell's access list (not let in yet, or never)",
  revoked: "the owner removed you from this doorbell; it refuses your commands",
  forbidden: "your role does not allow that",
  "stale-generation": "the access list changed; try again",
  expired: "the command arrived too late",
  replay: "the command was a repeat",
  "bad-mac": "the command was not sealed with a key the doorbell knows (wrong key)",
  "bad-signature": "the list is not signed by the doorbell's owner (wrong key)",
  busy: "the doorbell is busy; try again",
  malformed: "the doorbell could not read the command",
  "wrong-thing": "the command was for another doorbell",
  "storage-failed": "the doorbell could not store the change",
  internal: "the doorbell failed to handle it",
};

export function refusalText(r: ReadReply): string {
  const reason = r.reply.reason ?? "internal";
  return `${REFUSALS[reason] ?? reason} (${reason})`;
}

class Session {
  readonly topics;
  readonly verifier = new EventVerifier();
  readonly snapshots: BrowserSnapshots;
  #client: MqttClient;
  #waiting = new Map<string, (payload: Uint8Array) => void>();
  #answers = new Map<string, AccessUser>();

  constructor(readonly ks: Keystore, readonly profile: Profile, readonly secrets: Secrets, readonly app: UserApp) {
    this.topics = topicsFor(profile.thing);
    this.verifier.register(profile.thing, fromBase64Url(profile.deviceSignPublicKey));
    this.snapshots = new BrowserSnapshots({ app, onResult: (r) => this.#showSnapshot(r) });
    this.#client = mqtt.connect(`wss://${location.host}/mqtt`, {
      clientId: `${appClientIdBase(profile.thing, profile.user)}:${toHex(crypto.getRandomValues(new Uint8Array(4)))}`,
      username: "doorward-app",
      password: profile.token,
      protocolVersion: 4,
      clean: true,
      reconnectPeriod: 3000,
      connectTimeout: 10_000,
    });
    this.#client.on("connect", () => this.#subscribe());
    this.#client.on("error", (e) => say(`The broker refused this app: ${e.message}. Open the setup or invitation link again.`, "error"));
    this.#client.on("offline", () => this.#setBroker("not connected to the broker; retrying"));
    this.#client.on("message", (topic, payload) => this.#onMessage(topic, new Uint8Array(payload)));
  }

  get owner(): OwnerApp | undefined {
    return this.app instanceof OwnerApp ? this.app : undefined;
  }

  #setBroker(text: string): void {
    $("broker").textContent = text;
  }

  #subscribe(): void {
    this.#setBroker("connected to the broker over WSS");
    const filters = [this.topics.events, this.topics.snapshots, this.topics.replies, `${PRESENCE_PREFIX}/+/${this.profile.thing}`];
    if (this.owner) filters.push(`doorward/${this.profile.thing}/invites/+`);
    this.#client.subscribe(filters, { qos: 1 }, (err) => {
      if (err) say(`The broker refused a subscription: ${err.message}`, "error");
      else document.body.dataset.ready = "true";
    });
  }

  publish(topic: string, payload: Uint8Array, retain = false): Promise<void> {
    return new Promise((resolve, reject) => this.#client.publish(topic, payload as never, { qos: 1, retain }, (e) => (e ? reject(e) : resolve())));
  }

  #onMessage(topic: string, payload: Uint8Array): void {
    try {
      if (topic === this.topics.events) this.#onEvent(payload);
      else if (topic === this.topics.snapshots) this.snapshots.addChunk(payload);
      else if (topic === this.topics.replies) this.#onReply(payload);
      else if (topic.startsWith(`${PRESENCE_PREFIX}/`)) this.#onPresence(payload);
      else if (topic.startsWith(`doorward/${this.profile.thing}/invites/`)) this.#onAnswer(topic.split("/")[3], payload);
    } catch (e) {
      say(`Ignored a message on ${topic} that could not be read: ${(e as Error).message}`, "error");
    }
  }

  #onPresence(payload: Uint8Array): void {
    const doc = JSON.parse(utf8Decode(payload)) as { eventType?: string; timestamp?: number };
    if (doc.eventType !== "connected" && doc.eventType !== "disconnected") return;
    const p = $("presence");
    p.textContent = `${doc.eventType === "connected" ? "online" : "offline"} since ${time(doc.timestamp ?? Date.now())} (the broker's lifecycle event)`;
    p.dataset.state = doc.eventType === "connected" ? "online" : "offline";
  }

  #onEvent(payload: Uint8Array): void {
    const v = this.verifier.verify(payload, { topic: this.topics.events });
    const feed = $("feed");
    if (!v.ok) {
      if (v.reason === "replay") return; // an at-least-once redelivery
      feed.prepend(el("li", { "data-testid": "rejected", class: "bad" }, `✘ an event failed verification in this browser: ${v.reason} (${v.detail}); it is not shown`));
      return;
    }
    const e = v.event;
    const presence = $("presence");
    if (presence.dataset.state === "unknown") {
      presence.textContent = `online (a signed event from it just arrived, ${time(Date.now())})`;
      presence.dataset.state = "online";
    }
    $("last-event").textContent = `${e.type} seq ${e.seq} at ${e.time === null ? "unknown time" : time(e.time)}, signature verified here`;
    if (e.type === "ring") {
      feed.prepend(el("li", { "data-testid": "ring", "data-seq": String(e.seq) },
        el("strong", {}, `Ring #${e.seq}`), ` at ${e.time === null ? "(device has no clock yet)" : time(e.time)} · ✔ Ed25519 signature verified in this browser`,
        el("div", { class: "snap", id: `snap-${e.seq}` }, "snapshot on its way…")));
    } else if (e.type === "status" && typeof e.snapshot === "string") {
      feed.prepend(el("li", { "data-testid": "status", "data-seq": String(e.seq) },
        `Snapshot requested by ${String(e.user)} · ✔ verified`, el("div", { class: "snap", id: `snap-${e.seq}` }, "snapshot on its way…")));
    } else if (e.type === "snapshot") {
      this.snapshots.addManifest(e);
    } else if (e.type === "audit") {
      $("audit").prepend(el("li", {}, `${time(Date.now())}: audit report ${String(e.report)} · ✔ verified`));
    }
  }

  #showSnapshot(r: BrowserSnapshot): void {
    const slot = r.ring === undefined ? undefined : document.getElementById(`snap-${r.ring}`);
    const target = slot ?? $("feed").appendChild(el("li", {}, `Snapshot for event #${r.ring ?? "?"}`, el("div", { class: "snap" })));
    const box = slot ?? (target.lastChild as HTMLElement);
    box.replaceChildren();
    if (r.ok) {
      const url = URL.createObjectURL(new Blob([r.jpeg as BlobPart], { type: "image/jpeg" }));
      box.append(el("img", { src: url, alt: `snapshot for #${r.ring}`, "data-testid": "snapshot", "data-ring": String(r.ring) }),
        el("div", { class: "note" }, `decrypted in this browser (digest ✔, AES-GCM ✔, list generation ${r.gen})`));
    } else {
      box.append(el("div", { class: "bad", "data-testid": "snapshot-refused", "data-code": r.code, "data-ring": String(r.ring) }, `Cannot open: ${r.message}`));
    }
  }

  #onReply(payload: Uint8Array): void {
    let n: string | null = null;
    try {
      n = readReply(payload).reply.n;
    } catch {
      return;
    }
    if (n !== null) this.#waiting.get(n)?.(payload);
  }

  /** Send a command; on stale-generation, remake it once with the generation the device reported. */
  async request(make: () => MadeCommand): Promise<ReadReply> {
    let r = await this.#roundTrip(make());
    if (r.authenticated && r.reply.reason === "stale-generation") r = await this.#roundTrip(make());
    $("gen").textContent = String(this.app.gen);
    return r;
  }

  #roundTrip(made: MadeCommand): Promise<ReadReply> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiting.delete(made.n);
        reject(new Error(`the doorbell did not answer within ${COMMAND_TIMEOUT_MS / 1000} s (is it online?)`));
      }, COMMAND_TIMEOUT_MS);
      this.#waiting.set(made.n, (payload) => {
        clearTimeout(timer);
        this.#waiting.delete(made.n);
        resolve(this.app.read(payload));
      });
      this.publish(this.topics.commands, made.payload).catch((e: Error) => {
        clearTimeout(timer);
        this.#waiting.delete(made.n);
        reject(e);
      });
    });
  }

  // ---- the owner's side ----

  #onAnswer(user: string, payload: Uint8Array): void {
    if (payload.length === 0 || !this.owner) return;
    const invite = this.secrets.invites[user];
    const answers = $("answers");
    answers.querySelector(`[data-user="${CSS.escape(user)}"]`)?.remove();
    if (!invite) return; // an answer to an invitation this browser did not make, or one already used
    let identity: AccessUser;
    try {
      identity = openAnswer(payload, user, fromBase64Url(invite.secret));
    } catch (e) {
      answers.append(el("li", { "data-user": user, class: "bad" }, `An answer for "${user}" cannot be used: ${(e as Error).message}.`));
      return;
    }
    if (identity.role !== invite.role) {
      answers.append(el("li", { "data-user": user, class: "bad" }, `"${user}" answered as ${identity.role}, but was invited as ${invite.role}; not let in.`));
      return;
    }
    this.#answers.set(user, identity);
    const button = el("button", { "data-testid": "let-in" }, `Let ${user} in`);
    button.addEventListener("click", () => void this.letIn(user));
    answers.append(el("li", { "data-testid": "answer", "data-user": user },
      `${user} (${identity.role}) opened the invitation and made keys: sign ${toHex(identity.signPublicKey).slice(0, 16)}…, box ${toHex(identity.boxPublicKey).slice(0, 16)}… `, button));
  }

  async invite(user: string, role: "resident" | "viewer"): Promise<void> {
    const owner = this.owner!;
    if (owner.users.some((u) => u.id === user)) return say(`"${user}" is already on the list.`, "error");
    const res = await fetch("/api/invite", { method: "POST", headers: { authorization: `Bearer ${this.profile.token}`, "content-type": "application/json" }, body: JSON.stringify({ user }) });
    const body = (await res.json()) as { token?: string; error?: string };
    if (!res.ok || !body.token) return say(`Could not make an invitation: ${body.error ?? res.statusText}`, "error");
    const secret = crypto.getRandomValues(new Uint8Array(32));
    this.secrets.invites[user] = { role, secret: toBase64Url(secret) };
    await this.ks.saveSecrets(this.secrets);
    const link = invitationLink(location.origin, {
      thing: this.profile.thing, user, role, token: body.token, secret,
      deviceSignPublicKey: fromBase64Url(this.profile.deviceSignPublicKey), deviceBoxPublicKey: fromBase64Url(this.profile.deviceBoxPublicKey),
    });
    const out = $<HTMLTextAreaElement>("invite-link");
    out.value = link;
    const qr = qrcode(0, "L");
    qr.addData(link);
    qr.make();
    $("invite-qr").innerHTML = qr.createSvgTag({ cellSize: 3, margin: 2 });
    say(`Invitation for "${user}" made. Send the link (or show the QR code); whoever opens it makes their own keys in their browser.`);
  }

  async letIn(user: string): Promise<void> {
    const identity = this.#answers.get(user);
    const owner = this.owner!;
    if (!identity) return;
    try {
      const r = await this.request(() => owner.addUser(identity));
      if (!r.authenticated) return say(`The reply to "let ${user} in" is not sealed by the doorbell; nothing changed on this page.`, "error");
      if (!r.reply.ok) return say(`The doorbell refused to let ${user} in: ${refusalText(r)}`, "error");
      delete this.secrets.invites[user];
      this.#answers.delete(user);
      $("answers").querySelector(`[data-user="${CSS.escape(user)}"]`)?.remove();
      await this.#confirmed(`${user} let in`, r);
    } catch (e) {
      say(`Could not let ${user} in: ${(e as Error).message}`, "error");
    }
  }

  async revoke(user: string | "*"): Promise<void> {
    const owner = this.owner!;
    const before = owner.users.map((u) => u.id);
    try {
      const r = await this.request(() => (user === "*" ? owner.revokeAll() : owner.revoke(user)));
      if (!r.authenticated) return say("The reply is not sealed by the doorbell; nothing changed on this page.", "error");
      if (!r.reply.ok) return say(`The doorbell refused: ${refusalText(r)}`, "error");
      const gone = before.filter((id) => !owner.users.some((u) => u.id === id));
      const at = Date.now();
      for (const id of gone) this.profile.revoked.push({ user: id, at, gen: r.reply.gen });
      await this.#confirmed(user === "*" ? `everyone but the owner revoked (${gone.join(", ") || "nobody else was on the list"})` : `${user} revoked`, r);
    } catch (e) {
      say(`Could not revoke: ${(e as Error).message}`, "error");
    }
  }

  async #confirmed(what: string, r: ReadReply): Promise<void> {
    const owner = this.owner!;
    this.profile.users = owner.users.map(userToJson);
    this.profile.gen = r.reply.gen;
    await this.ks.saveProfile(this.profile);
    await this.ks.saveSecrets(this.secrets);
    renderUsers(this);
    $("confirmations").prepend(el("li", { "data-testid": "confirmed" }, `✔ ${what}: the doorbell confirmed at ${time(Date.now())} (sealed reply; list generation ${r.reply.gen})`));
    say(`${what}: confirmed by the doorbell.`);
  }

  /** Leave cleanly: mqtt.js sends DISCONNECT, so the broker does not wait out the keepalive. */
  close(): void {
    this.#client.end(false);
  }
}

function renderUsers(s: Session): void {
  const owner = s.owner;
  $("gen").textContent = String(s.profile.gen);
  if (!owner) return;
  const rows = owner.users.map((u) => {
    const cells = [el("td", {}, u.id), el("td", {}, u.role), el("td", { class: "mono" }, `${toHex(u.signPublicKey).slice(0, 16)}…`)];
    const action = el("td");
    if (u.role !== "owner") {
      const b = el("button", { class: "revoke", "data-testid": "revoke" }, `Revoke ${u.id}`);
      b.addEventListener("click", () => void s.revoke(u.id));
      action.append(b);
    } else action.append("(owner: moves only by a signed list)");
    return el("tr", { "data-testid": "user-row", "data-user": u.id }, ...cells, action);
  });
  $("users").replaceChildren(...rows);
  $("revoked").replaceChildren(...s.profile.revoked.map((r) => el("li", { "data-testid": "revoked-user", "data-user": r.user },
    el("strong", {}, r.user), ` was removed; the doorbell confirmed at ${time(r.at)} (list generation ${r.gen}). From then on ${r.user} can no longer: ask for a snapshot or live view, test the chime, or open any snapshot taken after that moment (the doorbell wraps no key for them). `,
    el("em", {}, `Snapshots taken before, while ${r.user} was on the list, stay readable to them: they already had those keys.`))));
}

function keysFor(profile: Profile, secrets: Secrets): AppKeys {
  return keysFromJson({ id: profile.user, role: profile.role, sign: secrets.sign, box: secrets.box });
}

function appFor(profile: Profile, keys: AppKeys): UserApp {
  const o = { keys, thing: profile.thing, deviceBoxPublicKey: fromBase64Url(profile.deviceBoxPublicKey), gen: profile.gen };
  return profile.role === "owner" ? new OwnerApp({ ...o, users: profile.users.map(userFromJson) }) : new UserApp(o);
}

/** #setup=<code>: make owner keys here and have the simulator's development owner hand the doorbell over to them. */
async function setUpOwner(ks: Keystore, code: string): Promise<{ profile: Profile; secrets: Secrets } | undefined> {
  const keys = createUserKeys("owner", "owner");
  say("Made owner keys in this browser; asking the doorbell to take them as its owner…");
  const res = await fetch("/api/setup", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ code, owner: userToJson(keys.identity) }) });
  const body = (await res.json()) as Partial<Profile> & { error?: string };
  if (!res.ok || body.error) {
    say(`Setup failed: ${body.error ?? res.statusText}`, "error");
    return undefined;
  }
  const k = keysToJson(keys);
  const profile: Profile = {
    thing: body.thing!, user: "owner", role: "owner", deviceSignPublicKey: body.deviceSignPublicKey!, deviceBoxPublicKey: body.deviceBoxPublicKey!,
    token: body.token!, gen: body.gen!, users: body.users!, revoked: [],
  };
  const secrets: Secrets = { sign: k.sign, box: k.box, invites: {} };
  await ks.saveSecrets(secrets);
  await ks.saveProfile(profile);
  say(`This browser now holds the owner keys of ${profile.thing} (the doorbell confirmed: list generation ${profile.gen}).`);
  return { profile, secrets };
}

/** #invite=<code>: a guest makes keys and answers the owner. */
async function acceptInvitation(ks: Keystore, text: string, existing: { profile: Profile; secrets: Secrets } | undefined) {
  let inv;
  try {
    inv = parseInvitation(text);
  } catch (e) {
    const why = e instanceof InvitationError ? e.message : "it could not be read";
    say(`This invitation cannot be used: ${why}. Ask the owner for a new link.`, "error");
    return undefined;
  }
  if (existing?.profile.role === "owner") {
    say(`This browser holds the owner keys of ${existing.profile.thing}; taking an invitation here would replace them. Open the link in another browser or profile.`, "error");
    return undefined;
  }
  let keys: AppKeys;
  let profile: Profile;
  let secrets: Secrets;
  if (existing && existing.profile.thing === inv.thing && existing.profile.user === inv.user) {
    ({ profile, secrets } = existing);
    keys = keysFor(profile, secrets);
  } else {
    keys = createUserKeys(inv.user, inv.role);
    const k = keysToJson(keys);
    profile = {
      thing: inv.thing, user: inv.user, role: inv.role, deviceSignPublicKey: toBase64Url(inv.deviceSignPublicKey), deviceBoxPublicKey: toBase64Url(inv.deviceBoxPublicKey),
      token: inv.token, gen: 1, users: [], revoked: [],
    };
    secrets = { sign: k.sign, box: k.box, invites: {} };
    await ks.saveSecrets(secrets);
    await ks.saveProfile(profile);
  }
  return { profile, secrets, answer: sealAnswer(keys.identity, inv.secret), topic: invitesTopic(inv.thing, inv.user) };
}

async function start(): Promise<void> {
  let ks: Keystore;
  try {
    ks = await Keystore.open();
  } catch (e) {
    return say(`This browser will not keep keys for this page (IndexedDB or WebCrypto unavailable: ${(e as Error).message}).`, "error");
  }
  $("keys-note").textContent = `Keys are kept in this browser's IndexedDB, sealed by an AES-GCM key that is ${ks.wrapKeyExtractable ? "EXTRACTABLE (unexpected)" : "non-extractable"}; they are never sent anywhere.`;
  let loaded: { profile: Profile; secrets: Secrets } | undefined;
  try {
    loaded = await ks.load();
  } catch {
    say("The keys stored in this browser cannot be opened (damaged, or sealed by another browser profile). Open the setup or invitation link again.", "error");
  }
  const fragment = new URLSearchParams(location.hash.slice(1));
  history.replaceState(null, "", location.pathname);
  let answer: { payload: Uint8Array; topic: string } | undefined;
  if (fragment.has("setup")) loaded = (await setUpOwner(ks, fragment.get("setup")!)) ?? loaded;
  else if (fragment.has("invite")) {
    const accepted = await acceptInvitation(ks, `invite=${fragment.get("invite")}`, loaded);
    if (accepted) {
      loaded = accepted;
      answer = { payload: accepted.answer, topic: accepted.topic };
    } else if (loaded && loaded.profile.role !== "owner") say(`${$("message").textContent} This browser keeps its earlier keys (${loaded.profile.user} of ${loaded.profile.thing}).`, "error");
  }
  if (!loaded) {
    if (!$("message").textContent) say("This browser holds no keys for a doorbell yet. Open the setup link that `npm start` printed, or an invitation link from the owner.");
    return;
  }
  const { profile, secrets } = loaded;
  const app = appFor(profile, keysFor(profile, secrets));
  const session = new Session(ks, profile, secrets, app);
  document.body.dataset.role = profile.role === "owner" ? "owner" : "guest";
  $("who").textContent = `${profile.user} (${profile.role}) of ${profile.thing}`;
  $("thing").textContent = profile.thing;
  $("device-keys").textContent = `Ed25519 ${toHex(fromBase64Url(profile.deviceSignPublicKey))} · X25519 ${toHex(fromBase64Url(profile.deviceBoxPublicKey))}`;
  const me = app.identity;
  $("my-keys").textContent = `your keys (made here): sign ${toHex(me.signPublicKey).slice(0, 16)}…, box ${toHex(me.boxPublicKey).slice(0, 16)}…`;
  renderUsers(session);
  if (answer) {
    await session.publish(answer.topic, answer.payload, true).then(
      () => say(`You made your own keys in this browser and answered the invitation. Wait for the owner to let you in; rings appear below.`),
      (e: Error) => say(`Could not send your answer to the owner: ${e.message}`, "error"),
    );
  }
  $("request-snapshot").addEventListener("click", () => {
    void session.request(() => app.command("snapshot")).then(
      (r) => {
        const out = $("request-result");
        out.dataset.ok = String(r.reply.ok);
        out.textContent = r.reply.ok ? `✔ the doorbell accepted (sealed reply); the snapshot follows in the feed` : `✘ refused: ${refusalText(r)}`;
      },
      (e: Error) => say(`Snapshot request failed: ${e.message}`, "error"),
    );
  });
  $("invite-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const user = $<HTMLInputElement>("invite-user").value.trim();
    const role = $<HTMLSelectElement>("invite-role").value as Exclude<Role, "owner">;
    void session.invite(user, role).catch((e: Error) => say(`Could not make an invitation: ${e.message}`, "error"));
  });
  $("revoke-all").addEventListener("click", () => void session.revoke("*"));
  addEventListener("pagehide", () => session.close());
}

// A new link pasted into the address bar changes only the fragment: start over with it.
addEventListener("hashchange", () => location.reload());
addEventListener("error", (ev) => say(`Something went wrong on this page: ${ev.message}`, "error"));
addEventListener("unhandledrejection", (ev) => say(`Something went wrong on this page: ${String((ev.reason as Error)?.message ?? ev.reason)}`, "error"));
void start();
