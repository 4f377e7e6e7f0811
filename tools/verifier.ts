/*
 * Reference verifier for Doorward events: the CLI over ./event-verifier.
 *
 *   tsx tools/verifier.ts <thing> <public-key-hex> <payload-file>...
 */
import { fromHex } from "../modules/core/bytes";
import { runAsEntry, UserError } from "./lib/cli";
import { EventVerifier } from "./event-verifier";

export * from "./event-verifier";

const CLI = {
  name: "verifier",
  usage: `usage: npx tsx tools/verifier.ts <thing> <public-key-hex> <payload-file>...

Checks saved Doorward event payloads (the bytes of an MQTT message on
doorward/<thing>/events) as the cloud does: envelope format, thing name, Ed25519
signature under the thing's public key, and rising sequence numbers across the files
in the order given. Prints one line per file; exits 1 if any is refused.

  -h, --help     this text`,
  options: {},
  positionals: { min: 3, max: Number.MAX_SAFE_INTEGER },
} as const;

runAsEntry(import.meta.url, CLI, async ({ positionals }) => {
  const fs = await import("node:fs");
  const [thing, keyHex, ...files] = positionals;
  if (!/^[0-9a-fA-F]{64}$/.test(keyHex)) throw new UserError(`the public key must be 64 hex digits (32 bytes), got ${JSON.stringify(keyHex)}`);
  const verifier = new EventVerifier({ [thing]: fromHex(keyHex) });
  let failures = 0;
  for (const file of files) {
    const verdict = verifier.verify(new Uint8Array(fs.readFileSync(file)), { expectThing: thing });
    if (verdict.ok) process.stdout.write(`${file}: ok ${verdict.event.type} seq=${verdict.event.seq}\n`);
    else {
      failures++;
      process.stdout.write(`${file}: REJECTED ${verdict.reason}: ${verdict.detail}\n`);
    }
  }
  return failures ? 1 : 0;
});
