/*
 * The update agent with its manifest verify on the crypto worker, and the rate
 * at which jobs may make the device pay for signature checks. The worker is
 * runCryptoJob, run when the test says.
 */
import test from "ava";
import nacl from "tweetnacl";
import { UpdateAgent } from "../modules/core/update";
import { manualWorker } from "./helpers/manual-worker";
import { keyedTag } from "../modules/core/record";
import { utf8Encode } from "../modules/core/bytes";
import type { BootControl, UpdateSink } from "../modules/core/ports";
import { MemoryStore } from "../modules/host/file-store";
import { hostSha256 } from "../modules/host/cipher";
import { ManualClock } from "../tools/owner-app";
import { firmwareJobDocument } from "../tools/update-service";
import { builtInKeys, releaseKeyFromSeed, signImage } from "../tools/release";

const THING = "worker-porch";
const BOARD = "host/sim";
const KEY = releaseKeyFromSeed(new Uint8Array(32).fill(4));
const jobs = `$aws/things/${THING}/jobs`;
const streams = `$aws/things/${THING}/streams`;

class Sink implements UpdateSink, BootControl {
  opened = 0;
  open() { this.opened++; }
  write() {}
  complete() {}
  cancel() {}
  confirm() {}
  rollback() {}
  restart() {}
}

function world() {
  const clock = new ManualClock();
  const sink = new Sink();
  const { crypto, jobs: posted, work } = manualWorker();
  const published: string[] = [];
  const logs: string[] = [];
  let mainVerifies = 0;
  const agent = new UpdateAgent({
    thing: THING, board: BOARD, runningVersion: 3, releaseKeys: builtInKeys(KEY), store: new MemoryStore(), sink, boot: sink, clock,
    log: (_l, m) => void logs.push(m), recordTag: keyedTag("test", new Uint8Array(32).fill(7), (d) => nacl.hash(d)),
    createDigest: hostSha256, maxImageBytes: 64 * 1024, pollIntervalMs: 0, crypto,
    verify: () => { mainVerifies++; return true; },
    verifyRate: { burst: 2, everyMs: 60_000 },
    publish: (topic) => { published.push(topic); return Promise.resolve(); },
  });
  agent.start();
  const offer = (id: string, version: number, forged = false) => {
    const release = signImage(new Uint8Array(2000).fill(version), { key: KEY, version, board: BOARD });
    const doc = firmwareJobDocument(release, { id: "img" }) as Record<string, any>;
    if (forged) doc.release.sig = doc.release.sig.replace(/^./, (c: string) => (c === "A" ? "B" : "A"));
    agent.onMessage(`${jobs}/notify-next`, utf8Encode(JSON.stringify({ timestamp: 1, execution: { jobId: id, status: "QUEUED", queuedAt: 1, lastUpdatedAt: 1, versionNumber: 1, executionNumber: 1, jobDocument: doc } })));
  };
  return { clock, sink, posted, published, logs, agent, work, offer, mainVerifies: () => mainVerifies };
}

test("a release manifest is verified on the worker; the download starts only once the worker says it is good", async (t) => {
  const w = world();
  w.offer("fw-4", 4);
  w.clock.advance(10);
  t.is(w.posted.length, 1);
  t.is(w.posted[0].op, "verify");
  t.is(w.mainVerifies(), 0, "nothing verified on the main machine");
  t.false(w.published.some((p) => p.startsWith(streams)), "no download before the verdict");
  await w.work();
  w.clock.advance(10);
  t.true(w.published.some((p) => p === `${streams}/img/get/json`), "download requested after a good verdict");
  t.is(w.sink.opened, 1);
  t.is(w.agent.stats.verifies, 1);
});

test("forged jobs buy at most the rate's signature checks: later ones wait for a token, and a newer job replaces one still waiting", async (t) => {
  const w = world();
  w.offer("forged-1", 4, true);
  w.clock.advance(10);
  await w.work();
  w.offer("forged-2", 5, true);
  w.clock.advance(10);
  await w.work();
  t.is(w.agent.stats.verifies, 2);
  t.is(w.logs.filter((m) => m === "update: job REJECTED").length, 2, "both forgeries refused after their checks");
  t.false(w.published.some((p) => p.startsWith(streams)));
  w.offer("forged-3", 6, true);
  w.clock.advance(10);
  t.is(w.posted.length, 0, "the third check waits: the burst is spent");
  t.true(w.logs.includes("update: signature checks are rate-limited; the job waits"));
  w.offer("forged-4", 7, true);
  w.clock.advance(20_000);
  t.is(w.posted.length, 0);
  w.clock.advance(40_000);
  t.is(w.posted.length, 1, "one token back after a minute: one check");
  await w.work();
  w.clock.advance(120_000);
  t.is(w.agent.stats.verifies, 3, "the job replaced while waiting never cost a check");
  t.is(w.sink.opened, 0);
});
