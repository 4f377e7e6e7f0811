/*
 * The owner web app's own modules, run in Node (the same WebCrypto API as a
 * browser): invitations and their answers, and snapshot assembly. Bad input is
 * the point: every malformed invitation, forged answer, wrong key or tampered
 * chunk must end in a sentence for the user, never an exception or an image.
 */
import test from "ava";
import nacl from "tweetnacl";
import { canonicalBytes } from "../modules/core/canonical";
import { toBase64Url } from "../modules/core/bytes";
import type { DoorEvent } from "../modules/core/events";
import { manifestFields, SnapshotSealer } from "../modules/core/snapshot";
import { newContentKey, wrapContentKey } from "../modules/core/footage-keys";
import { hostAesGcm, hostSha256 } from "../modules/host/cipher";
import { sceneJpeg } from "../tools/make-sample-jpegs";
import { createUserKeys, naclRandom, UserApp } from "../tools/user-app";
import { encodeInvitation, InvitationError, invitationLink, openAnswer, parseInvitation, sealAnswer, type Invitation } from "../webapp/invitation";
import { BrowserSnapshots, type BrowserSnapshot } from "../webapp/snapshots";

const device = nacl.box.keyPair();
const deviceSign = nacl.sign.keyPair();
const invitation: Invitation = {
  thing: "porch-1", user: "guest", role: "viewer", token: "dwt1.x.y",
  deviceSignPublicKey: deviceSign.publicKey, deviceBoxPublicKey: device.publicKey, secret: nacl.randomBytes(32),
};

test("an invitation survives its link, and the guest's answer opens only with its secret", (t) => {
  const parsed = parseInvitation(invitationLink("https://localhost:1234", invitation));
  t.deepEqual(parsed, invitation);
  const guest = createUserKeys("guest", "viewer");
  const answer = sealAnswer(guest.identity, invitation.secret);
  t.deepEqual(openAnswer(answer, "guest", invitation.secret), guest.identity);
  const wrongSecret = t.throws(() => openAnswer(answer, "guest", nacl.randomBytes(32)), { instanceOf: InvitationError });
  t.is(wrongSecret?.message, "the answer was not sealed with this invitation's secret");
  t.throws(() => openAnswer(answer, "bob", invitation.secret), { instanceOf: InvitationError, message: "the answer is for guest, not bob" });
  const owner = createUserKeys("guest", "owner");
  t.throws(() => openAnswer(sealAnswer(owner.identity, invitation.secret), "guest", invitation.secret), { message: "the answer claims the owner's role" });
  t.throws(() => openAnswer(new TextEncoder().encode("{\"v\":1}"), "guest", invitation.secret), { message: "the answer is not an invitation answer" });
});

test("malformed invitations each get their own sentence", (t) => {
  const code = encodeInvitation(invitation);
  const doc = JSON.parse(Buffer.from(code, "base64url").toString()) as Record<string, unknown>;
  const variant = (change: Record<string, unknown>) => toBase64Url(canonicalBytes({ ...doc, ...change } as never));
  const cases: Array<[string, RegExp]> = [
    ["", /is empty/],
    ["not-base64!", /damaged or cut short/],
    [code.slice(0, code.length - 7), /damaged or cut short/],
    [toBase64Url(new TextEncoder().encode("[1,2]")), /does not hold an invitation/],
    [variant({ v: 2 }), /version this app does not know/],
    [variant({ extra: 1 }), /missing parts or has unknown ones/],
    [variant({ thing: "no spaces allowed" }), /not a thing name/],
    [variant({ user: "Guest!" }), /not a user id/],
    [variant({ role: "owner" }), /no role a guest can have/],
    [variant({ token: "" }), /broker token is missing/],
    [variant({ box: toBase64Url(new Uint8Array(31)) }), /box key in it is not a 32-byte key/],
    [variant({ box: toBase64Url(new Uint8Array(32)) }), /unusable \(a low-order point\)/],
    [variant({ secret: "AAAA" }), /secret in it is not a 32-byte key/],
  ];
  for (const [text, message] of cases) {
    const e = t.throws(() => parseInvitation(`https://localhost/#invite=${text}`), { instanceOf: InvitationError }, text);
    t.regex(e?.message ?? "", message, text);
  }
});

/** A real snapshot as the device makes it: sealed chunks and the signed-event fields, wrapped for `recipients`. */
function makeSnapshot(recipients: Array<{ user: string; key: Uint8Array }>, gen = 3) {
  const frame = sceneJpeg("visitor-day");
  const id = nacl.randomBytes(16);
  const key = newContentKey(naclRandom);
  const sealer = new SnapshotSealer({ frame, key, id, chunkBytes: 4096, cipher: hostAesGcm, sha256: hostSha256 });
  const chunks: Uint8Array[] = [];
  for (let c = sealer.next(); c; c = sealer.next()) chunks.push(c.payload);
  const wrapping = wrapContentKey(key, { generation: gen, footageRecipients: () => recipients.map((r) => ({ user: r.user, key: r.key.slice() })) }, naclRandom, id);
  const event = {
    v: 1, type: "snapshot", thing: "porch-1", boot: 1, seq: 9, time: null,
    ...manifestFields({ ring: 8, id, size: frame.length, chunks: chunks.length, chunkBytes: 4096, digest: sealer.digest(), wrapping }),
  } as DoorEvent;
  return { frame, chunks, event };
}

function assemble(app: UserApp, chunks: Uint8Array[], event: DoorEvent): Promise<BrowserSnapshot> {
  return new Promise((resolve) => {
    const s = new BrowserSnapshots({ app, onResult: resolve, graceMs: 200 });
    s.addManifest(event);
    for (const c of [...chunks].reverse()) s.addChunk(c);
  });
}

const guestKeys = createUserKeys("guest", "viewer");
const guest = new UserApp({ keys: guestKeys, thing: "porch-1", deviceBoxPublicKey: device.publicKey });

test("a snapshot wrapped for this user decrypts to the JPEG the camera took", async (t) => {
  const { frame, chunks, event } = makeSnapshot([{ user: "guest", key: guest.footageKey }]);
  const r = await assemble(guest, chunks, event);
  if (!r.ok) return t.fail(r.message);
  t.deepEqual(r.jpeg, frame);
  t.is(r.ring, 8);
});

test("not a recipient, a wrong key, a changed chunk, a missing chunk: a reason each, and no image", async (t) => {
  const other = createUserKeys("resident", "resident");
  const otherApp = new UserApp({ keys: other, thing: "porch-1", deviceBoxPublicKey: device.publicKey });
  const notMine = makeSnapshot([{ user: "resident", key: otherApp.footageKey }], 4);
  const r1 = await assemble(guest, notMine.chunks, notMine.event);
  t.like(r1, { ok: false, code: "not-a-recipient" });
  t.regex((r1 as { message: string }).message, /not shared with you: when it was taken \(access list generation 4\) "guest" was not on/);

  // Wrapped for "guest", but under another key pair's footage key: the keys in this browser are the wrong ones.
  const wrongKey = makeSnapshot([{ user: "guest", key: otherApp.footageKey }]);
  t.like(await assemble(guest, wrongKey.chunks, wrongKey.event), { ok: false, code: "wrong-key" });

  const changed = makeSnapshot([{ user: "guest", key: guest.footageKey }]);
  changed.chunks[1] = changed.chunks[1].slice();
  changed.chunks[1][40] ^= 1;
  t.like(await assemble(guest, changed.chunks, changed.event), { ok: false, code: "digest-mismatch" });

  const missing = makeSnapshot([{ user: "guest", key: guest.footageKey }]);
  t.like(await assemble(guest, missing.chunks.slice(1), missing.event), { ok: false, code: "missing-chunks" });

  const bad = makeSnapshot([{ user: "guest", key: guest.footageKey }]);
  t.like(await assemble(guest, bad.chunks, { ...bad.event, chunks: 99 } as DoorEvent), { ok: false, code: "bad-manifest" });
});
