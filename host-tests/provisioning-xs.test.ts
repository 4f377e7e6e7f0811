/*
 * The provisioning bundle parser on the XS engine: a bundle nested 5000 deep (10 KB, well
 * under the size limit) is refused with a clear error, and the engine lives on. Without a
 * nesting guard, JSON.parse recursed until the native stack overflowed and killed XS.
 */
import test from "ava";
import { startXsCore } from "../tools/xs/core";

test("on XS, a bundle nested 5000 deep is refused with a clear error and the engine survives", async (t) => {
  t.timeout(120_000);
  const xs = await startXsCore({ name: "xs-bundle", stdout: "ignore", timeoutMs: 60_000 });
  try {
    const attempt = `
      const { parseBundle } = importNow("core/provisioning");
      const ascii = (s) => { const b = new Uint8Array(s.length); for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i); return b; };
      try {
        parseBundle(ascii(args.text));
        return "accepted";
      } catch (e) {
        return e.name + ": " + e.message;
      }`;
    const cases = [
      ["5000-deep arrays", "[".repeat(5000) + "]".repeat(5000)],
      ["5000-deep objects inside a member", '{"kind":' + '{"a":'.repeat(5000) + "1" + "}".repeat(5000) + "}"],
    ];
    for (const [name, text] of cases) {
      let outcome: string;
      try {
        outcome = (await xs.run<string>(attempt, { text })).value;
      } catch (e) {
        outcome = `XS died: ${String((e as Error).message).slice(0, 200)}`;
      }
      t.regex(outcome, /ProvisioningError: .*nested/, `${name}: ${outcome}`);
    }
    t.is((await xs.run<number>("return 6 * 7;")).value, 42, "the engine still runs");
  } finally {
    await xs.close().catch(() => {});
  }
});
