import test from "ava";
import nacl from "tweetnacl";
import { sealEvent, openEnvelope, EVENT_DOMAIN, type DoorEvent } from "../modules/core/events";
import { Ed25519Signer } from "../modules/core/signer";
import { canonicalBytes } from "../modules/core/canonical";
import { utf8Decode, utf8Encode, concatBytes } from "../modules/core/bytes";
import { EventVerifier } from "../tools/verifier";
import { opensslVerify, seededRandom } from "./helpers/crypto";

const seed = new Uint8Array(32).fill(3);
const thing = "porch-1";

function makeSigner() {
  const signer = new Ed25519Signer(seed, { random: seededRandom("v"), boot: 2, poolSize: 16 });
  while (signer.precompute());
  return signer;
}

function ring(seq: number, over: Partial<DoorEvent> = {}): DoorEvent {
  return { v: 1, type: "ring", thing, boot: 2, seq, time: 1_790_000_000_000 + seq, ...over };
}

test("a sealed ring verifies, under tweetnacl and OpenSSL, and the envelope is the documented shape", (t) => {
  const signer = makeSigner();
  const payload = sealEvent(ring(1), signer);
  const text = utf8Decode(payload);
  t.regex(text, /^\{"event":\{"boot":2,"seq":1,"thing":"porch-1","time":\d+,"type":"ring","v":1\},"sig":"[A-Za-z0-9_-]{86}"\}$/);
  const verdict = new EventVerifier({ [thing]: signer.publicKey }).verify(payload, { topic: `doorward/${thing}/events` });
  t.true(verdict.ok);
  const { signature, message } = openEnvelope(payload);
  t.deepEqual(message, concatBytes(utf8Encode(EVENT_DOMAIN), canonicalBytes(ring(1))));
  t.true(opensslVerify(message, signature, signer.publicKey));
});

test("tampered, replayed, wrong-key, wrong-thing and unknown-thing events are each rejected", (t) => {
  const signer = makeSigner();
  const verifier = new EventVerifier({ [thing]: signer.publicKey, "other-1": nacl.sign.keyPair().publicKey });
  const first = sealEvent(ring(5), signer);
  t.true(verifier.verify(first).ok);

  // Tampered: change the time inside the signed event, keep it canonical.
  const tampered = utf8Encode(utf8Decode(sealEvent(ring(6), signer)).replace('"seq":6', '"seq":7'));
  const v1 = verifier.verify(tampered);
  t.false(v1.ok);
  t.is(!v1.ok && v1.reason, "signature");

  // Replayed: the same bytes again, and an older sequence number.
  const v2 = verifier.verify(first);
  t.is(!v2.ok && v2.reason, "replay");
  const v3 = verifier.verify(sealEvent(ring(4), signer));
  t.is(!v3.ok && v3.reason, "replay");

  // Wrong key: signed by a device key the verifier doesn't hold for this thing.
  const impostor = new Ed25519Signer(new Uint8Array(32).fill(9), { random: seededRandom("i"), boot: 1 });
  const v4 = verifier.verify(sealEvent(ring(8), impostor));
  t.is(!v4.ok && v4.reason, "signature");

  // Wrong thing: a valid event from porch-1 presented as other-1's, or on other-1's topic.
  const good = sealEvent(ring(9), signer);
  const v5 = verifier.verify(good, { expectThing: "other-1" });
  t.is(!v5.ok && v5.reason, "wrong-thing");
  const v6 = verifier.verify(good, { topic: "doorward/other-1/events" });
  t.is(!v6.ok && v6.reason, "wrong-thing");
  // Claiming to be other-1 inside the event: the signature is checked under other-1's key, and fails.
  const v7 = verifier.verify(sealEvent(ring(10, { thing: "other-1" }), signer));
  t.is(!v7.ok && v7.reason, "signature");
  // Unknown thing.
  const v8 = verifier.verify(sealEvent(ring(11, { thing: "stranger" }), signer));
  t.is(!v8.ok && v8.reason, "unknown-thing");

  // State advanced only for events that passed: seq 9 still verifies after all the rejections.
  t.true(verifier.verify(good).ok);
  t.is(verifier.lastSeq(thing), 9);
});

test("format errors are rejected with reason 'format'", (t) => {
  const signer = makeSigner();
  const verifier = new EventVerifier({ [thing]: signer.publicKey });
  const text = utf8Decode(sealEvent(ring(1), signer));
  const cases = [
    text.replace('{"event"', '{ "event"'), // not canonical
    text.replace('"v":1', '"v":2'), // unknown version (also breaks signature, but format comes first)
    text.replace('"type":"ring"', '"type":"party"'),
    text.replace(/"sig":"[^"]+"/, '"sig":"AAAA"'),
    text.replace('"seq":1', '"seq":0'),
    text.replace('"seq":1', '"seq":-1'),
    text.replace(/,"sig":"[^"]+"/, ""),
    "not json",
    "",
  ];
  for (const c of cases) {
    const verdict = verifier.verify(utf8Encode(c));
    t.is(!verdict.ok && verdict.reason, "format", c);
  }
  t.is((verifier.verify(new Uint8Array([0xff, 0xfe])) as { reason: string }).reason, "format");
});

test("sealEvent refuses malformed headers instead of signing them", (t) => {
  const signer = makeSigner();
  t.throws(() => sealEvent(ring(0), signer), { message: /sequence/ });
  t.throws(() => sealEvent(ring(1, { thing: "bad/thing" }), signer), { message: /thing/ });
  t.throws(() => sealEvent(ring(1, { time: 1.5 }), signer), { message: /time/ });
});
