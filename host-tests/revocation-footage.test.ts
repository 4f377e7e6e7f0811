/*
 * End-to-end footage keys: each snapshot's content key is wrapped for exactly the
 * users authorised at capture. A key revoked before a capture opens nothing of it
 * (not its own entry, which is absent, nor anyone else's); current keys do, and
 * footage from before the revocation stays readable by whoever held it then.
 */
import test from "ava";
import nacl from "tweetnacl";
import { AccessTestbed } from "../tools/owner-app";
import {
  FootageKeys,
  newContentKey,
  unwrapContentKey,
  wrapContentKey,
  wrappingFromJson,
  wrappingToJson,
  type ContentKeyWrapping,
} from "../modules/core/footage-keys";
import { canonicalBytes, parseCanonical } from "../modules/core/canonical";
import { utf8Encode } from "../modules/core/bytes";
import { SeededRandom } from "../tools/xs/deterministic";

/** What the camera pipeline does, in miniature: encrypt the image under a fresh key and wrap the key. */
function capture(tb: AccessTestbed, image: Uint8Array, id: string) {
  const footage = new FootageKeys({ keyring: tb.access.list, random: { fill: (b) => b.set(nacl.randomBytes(b.length)) } });
  const contentKey = footage.newContentKey();
  const nonce = nacl.randomBytes(24);
  const sealed = nacl.secretbox(image, nonce, contentKey);
  const context = utf8Encode(`porch-1/snapshot/${id}`);
  // The wrapping travels in the snapshot manifest as canonical JSON; make it go through that form.
  const wire = canonicalBytes(wrappingToJson(tb.access.wrapContentKey(contentKey, context)));
  contentKey.fill(0);
  return { sealed, nonce, context, wrapping: wrappingFromJson(parseCanonical(wire, 4096)) };
}

function view(app: { unwrap(w: ContentKeyWrapping, c?: Uint8Array): Uint8Array | undefined }, shot: ReturnType<typeof capture>): Uint8Array | null {
  const key = app.unwrap(shot.wrapping, shot.context);
  return key ? nacl.secretbox.open(shot.sealed, shot.nonce, key) : null;
}

test("a revoked key cannot open a snapshot captured after the revocation; current keys can", (t) => {
  const tb = new AccessTestbed();
  const resident = tb.addUser("resident-1", "resident");
  const viewer = tb.addUser("viewer-1", "viewer");
  const image1 = utf8Encode("JPEG before revocation");
  const before = capture(tb, image1, "1");
  t.deepEqual(before.wrapping.keys.map((k) => k.user).sort(), ["owner", "resident-1", "viewer-1"]);
  t.deepEqual(view(viewer, before), image1, "authorised at capture time: can view");

  t.true(tb.send(tb.owner, tb.owner.revoke("viewer-1")).ok);
  const image2 = utf8Encode("JPEG after revocation");
  const after = capture(tb, image2, "2");
  t.is(after.wrapping.gen, tb.access.generation);
  t.deepEqual(after.wrapping.keys.map((k) => k.user).sort(), ["owner", "resident-1"], "the revoked viewer is not a recipient");
  t.is(view(viewer, after), null, "the revoked key opens nothing captured after");
  // Not even by trying their footage key on every entry, or relabelling an entry as theirs.
  for (const entry of after.wrapping.keys) {
    t.is(unwrapContentKey(entry, viewer.footageKey, after.context), undefined);
    t.is(viewer.unwrap({ gen: after.wrapping.gen, keys: [{ ...entry, user: "viewer-1" }] }, after.context), undefined);
  }
  t.deepEqual(view(resident, after), image2, "a current key succeeds");
  t.deepEqual(view(tb.owner, after), image2);
  // A wrapped key moved to another snapshot's manifest does not open under that snapshot's context.
  t.is(resident.unwrap(after.wrapping, before.context), undefined);
});

test("revoke everyone: the next snapshot is for the owner alone", (t) => {
  const tb = new AccessTestbed();
  const resident = tb.addUser("resident-1", "resident");
  t.true(tb.send(tb.owner, tb.owner.revokeAll()).ok);
  const shot = capture(tb, utf8Encode("night visitor"), "3");
  t.deepEqual(shot.wrapping.keys.map((k) => k.user), ["owner"]);
  t.is(view(resident, shot), null);
  t.deepEqual(view(tb.owner, shot), utf8Encode("night visitor"));
});

test("wrapping uses a fresh nonce per recipient and a fresh content key per snapshot", (t) => {
  const tb = new AccessTestbed();
  tb.addUser("a", "viewer");
  tb.addUser("b", "viewer");
  const random = new SeededRandom(99);
  const k1 = newContentKey(random);
  const k2 = newContentKey(random);
  t.notDeepEqual(k1, k2);
  const w = wrapContentKey(k1, tb.access.list, random);
  t.is(new Set(w.keys.map((k) => Buffer.from(k.nonce).toString("hex"))).size, 3);
  t.is(w.keys[0].wrapped.length, 48);
  t.throws(() => wrapContentKey(new Uint8Array(16), tb.access.list, random), { message: /32 bytes/ });
  t.throws(() => wrapContentKey(k1, tb.access.list, random, new Uint8Array(65)), { message: /context/ });
  t.throws(() => wrappingFromJson({ gen: 1, keys: [{ k: "AA", n: "AA", user: "a" }] }), { message: /sizes/ });
  t.throws(() => wrappingFromJson({ gen: 0, keys: [] }));
  t.throws(() => wrappingFromJson([]));
  // A tampered wrapped key does not open.
  const bad = { ...w.keys[0], wrapped: Uint8Array.from(w.keys[0].wrapped) };
  bad.wrapped[5] ^= 1;
  t.is(tb.owner.unwrap({ gen: w.gen, keys: [bad] }), undefined);
  t.deepEqual(tb.owner.unwrap(w), k1);
});
