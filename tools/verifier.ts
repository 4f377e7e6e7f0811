/*
 * Reference verifier for Doorward events: the CLI over ./event-verifier, and
 * FileReplayState, the file its replay marks live in on a server.
 *
 *   tsx tools/verifier.ts [--state FILE] <thing> <public-key-hex> <payload-file>...
 */
import fs from "node:fs";
import { fromHex, utf8Encode } from "../modules/core/bytes";
import { writeFileAtomic } from "../modules/host/file-store";
import { runAsEntry, UserError } from "./lib/cli";
import { EventVerifier, ReplayStateError, formatReplayState, parseReplayState, type ReplayMark, type ReplayState } from "./event-verifier";

export * from "./event-verifier";

/** The marks in one JSON file, replaced atomically on every accepted event. A missing file is a first run. */
export class FileReplayState implements ReplayState {
  constructor(readonly file: string) {}

  load(): Record<string, ReplayMark> {
    let text: string;
    try {
      text = fs.readFileSync(this.file, "utf8");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return {};
      throw e;
    }
    try {
      return parseReplayState(text);
    } catch (e) {
      throw new ReplayStateError(`${this.file}: ${(e as Error).message}; move it aside only if you accept that old events may be taken as new`);
    }
  }

  save(marks: Record<string, ReplayMark>): void {
    writeFileAtomic(this.file, utf8Encode(formatReplayState(marks)));
  }
}

const CLI = {
  name: "verifier",
  usage: `usage: npx tsx tools/verifier.ts [--state FILE] <thing> <public-key-hex> <payload-file>...

Checks saved Doorward event payloads (the bytes of an MQTT message on
doorward/<thing>/events) as the cloud does: envelope format, thing name, Ed25519
signature under the thing's public key, and rising (boot, seq) across the files in
the order given. A device whose counters went backwards (its flash written back)
is printed as ALERT. Prints one line per file; exits 1 if any is refused.

  --state FILE   keep the replay marks in FILE (created if missing), so a later
                 run refuses what this one accepted
  -h, --help     this text`,
  options: { state: { type: "string" } },
  positionals: { min: 3, max: Number.MAX_SAFE_INTEGER },
} as const;

runAsEntry(import.meta.url, CLI, async ({ values, positionals }) => {
  const [thing, keyHex, ...files] = positionals;
  if (!/^[0-9a-fA-F]{64}$/.test(keyHex)) throw new UserError(`the public key must be 64 hex digits (32 bytes), got ${JSON.stringify(keyHex)}`);
  let verifier: EventVerifier;
  try {
    verifier = new EventVerifier({ [thing]: fromHex(keyHex) }, { state: values.state ? new FileReplayState(values.state) : undefined });
  } catch (e) {
    if (e instanceof ReplayStateError) throw new UserError(e.message);
    throw e;
  }
  let failures = 0;
  for (const file of files) {
    const verdict = verifier.verify(new Uint8Array(fs.readFileSync(file)), { expectThing: thing });
    if (verdict.ok) {
      process.stdout.write(`${file}: ok ${verdict.event.type} boot=${verdict.event.boot} seq=${verdict.event.seq}\n`);
      if (verdict.alert) process.stdout.write(`${file}: ALERT ${verdict.alert}\n`);
    } else {
      failures++;
      process.stdout.write(`${file}: ${verdict.reason === "rollback" ? "ALERT" : "REJECTED"} ${verdict.reason}: ${verdict.detail}\n`);
    }
  }
  return failures ? 1 : 0;
});
