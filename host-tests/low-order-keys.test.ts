/*
 * Low-order X25519 keys: a user (or owner) whose box key is a point of small
 * order would share an all-zero secret with every device, so anyone could
 * derive their command, reply and footage keys. Such keys are refused at every
 * door: a signed list, the stored list, owner enrolment, the provisioning
 * bundle and the key derivation itself.
 */
import test from "ava";
import nacl from "tweetnacl";
import { AccessTestbed, createUserKeys } from "../tools/owner-app";
import { AccessRejection, LOW_ORDER_X25519, isUsableBoxKey, signedListToJson, userFromJson, userKeysFor, userToJson } from "../modules/core/access";
import type { Json } from "../modules/core/canonical";

const hex = (h: string) => Uint8Array.from(Buffer.from(h, "hex"));
/** The core's own list: the test below proves each entry really is low-order. */
const LOW_ORDER = LOW_ORDER_X25519.map(hex);
/** The same points with the ignored top bit set. */
const HIGH_BIT = LOW_ORDER.map((k) => {
  const c = k.slice();
  c[31] |= 0x80;
  return c;
});

test("every refused key really is low-order: its shared point with a random secret is all zero", (t) => {
  const secret = nacl.randomBytes(32);
  for (const k of [...LOW_ORDER, ...HIGH_BIT]) {
    t.true(nacl.scalarMult(secret, k).every((b) => b === 0), Buffer.from(k).toString("hex"));
    t.false(isUsableBoxKey(k), Buffer.from(k).toString("hex"));
  }
  // Ordinary keys pass, so the check is about the points, not about refusing everything.
  for (let i = 0; i < 20; i++) t.true(isUsableBoxKey(nacl.box.keyPair().publicKey));
  t.false(isUsableBoxKey(new Uint8Array(31)));
});

test("key derivation and the stored-list parser refuse a zero box key", (t) => {
  const device = nacl.box.keyPair();
  t.throws(() => userKeysFor(new Uint8Array(32), device.secretKey), { instanceOf: AccessRejection, message: /low-order/ });
  const u = createUserKeys("eve", "viewer").identity;
  const doc = userToJson({ ...u, boxPublicKey: new Uint8Array(32) });
  t.throws(() => userFromJson(doc), { instanceOf: AccessRejection, message: /low-order/ });
  t.notThrows(() => userFromJson(userToJson(u)));
});

test("an owner-signed list granting a user a zero box key is refused and changes nothing", (t) => {
  const tb = new AccessTestbed();
  const eve = createUserKeys("eve", "viewer");
  const gen = tb.access.generation;
  const signed = tb.owner.signList([...tb.owner.users, { ...eve.identity, boxPublicKey: new Uint8Array(32) }], gen + 1);
  const r = tb.send(tb.owner, tb.owner.command("access-update", { list: signedListToJson(signed) as Json }));
  t.false(r.ok);
  t.is(r.reason, "malformed");
  t.is(tb.access.generation, gen);
  t.is(tb.access.list.user("eve"), undefined);
  // Control: the same user with their real key is granted.
  const good = tb.owner.signList([...tb.owner.users, eve.identity], gen + 1);
  t.true(tb.send(tb.owner, tb.owner.command("access-update", { list: signedListToJson(good) as Json })).ok);
  t.truthy(tb.access.list.user("eve"));
});
