/*
 * The owner web app in a real browser: Debian's chromium, headless, driven by
 * playwright-core over the DevTools protocol (no browser is downloaded), against
 * `npm start` itself. Two browser profiles play the owner's phone and a guest's.
 *
 * The story: the owner's browser makes its keys and takes the doorbell over; a
 * ring shows a snapshot decrypted in the page; the owner invites a guest, whose
 * browser makes its own keys and answers; the owner lets the guest in and the
 * guest sees a snapshot; the owner revokes the guest and the device confirms; the
 * guest's request is then refused and the next snapshot is not theirs to open.
 * Bad input (a malformed invitation) gets a message, and no page throws.
 *
 * Screenshots of every step go to test-output/screenshots/ (git ignores it); their
 * paths are in the test log.
 */
import test from "ava";
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { createHash, X509Certificate } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium, type BrowserContext, type Page } from "playwright-core";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const CHROMIUM = process.env.DOORWARD_CHROMIUM ?? "/usr/bin/chromium";
const SHOTS = path.join(REPO, "test-output", "screenshots");
const STEP_MS = 30_000;

/** Start `npm start` (interactive, so it serves the page) and read what it prints. */
function startSimulator(home: string): Promise<{ child: ChildProcessWithoutNullStreams; setupUrl: string; pressUrl: string; out: () => string }> {
  const child = spawn(process.execPath, ["--import=tsx", "tools/simulator.ts", "--home", home, "--rings", "0", "--quiet"], {
    cwd: REPO, env: { ...process.env, DOORWARD_BUTTON_PORT: "0" },
  });
  let out = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGTERM"); // else its open pipes keep the test process alive
      reject(new Error(`the simulator did not print its URLs within 60 s:\n${out}`));
    }, 60_000);
    const onData = (b: Buffer) => {
      out += b.toString();
      const setup = /take the doorbell over in a browser, once: (\S+)/.exec(out)?.[1];
      const press = /button endpoint: curl -X POST (\S+)/.exec(out)?.[1];
      if (setup && press) {
        clearTimeout(timer);
        resolve({ child, setupUrl: setup, pressUrl: press, out: () => out });
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.once("exit", (code) => reject(new Error(`the simulator exited (${code}):\n${out}`)));
  });
}

/** Runs in the page: the image element has decoded real pixels. */
const decoded = (i: unknown) => (i as { complete: boolean; naturalWidth: number }).complete && (i as { naturalWidth: number }).naturalWidth > 0;

/** Chromium's pin for exactly the stand-in's server key: base64(SHA-256(SPKI)). Nothing else is trusted. */
function spkiPin(certPem: string): string {
  const spki = new X509Certificate(certPem).publicKey.export({ type: "spki", format: "der" });
  return createHash("sha256").update(spki).digest("base64");
}

async function browser(name: string, pin: string, errors: string[]): Promise<{ context: BrowserContext; page: Page }> {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), `dw-chromium-${name}-`));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", `--ignore-certificate-errors-spki-list=${pin}`,
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("pageerror", (e) => errors.push(`${name}: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") errors.push(`${name} console: ${m.text()}`); });
  return { context, page };
}

test("owner web app in chromium: ring → image; invite → guest sees → revoke → guest refused", async (t) => {
  t.timeout(240_000);
  if (!fs.existsSync(CHROMIUM)) return t.fail(`no browser at ${CHROMIUM}: install Debian's chromium (apt-get install chromium), as .ci/run does`);
  fs.mkdirSync(SHOTS, { recursive: true });
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "dw-webapp-"));
  const sim = await startSimulator(home);
  t.teardown(() => { sim.child.kill("SIGTERM"); });
  const pin = spkiPin(fs.readFileSync(path.join(home, "pki", "server.cert.pem"), "utf8"));
  const errors: string[] = [];
  const owner = await browser("owner", pin, errors);
  t.teardown(() => owner.context.close());
  const guest = await browser("guest", pin, errors);
  t.teardown(() => guest.context.close());
  const shot = async (page: Page, name: string) => {
    const file = path.join(SHOTS, `${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    t.log(`screenshot: ${path.relative(REPO, file)}`);
  };
  const ring = async () => {
    const res = await fetch(sim.pressUrl, { method: "POST" });
    t.is(res.status, 202);
  };
  const o = owner.page;
  const g = guest.page;
  // On a failure, what each page said is the first thing to read.
  t.teardown(async () => {
    for (const [name, page] of [["owner", o], ["guest", g]] as const) {
      const said = await page.textContent("#message").catch(() => "(page gone)");
      t.log(`${name} page says: ${said}; errors: ${errors.join(" | ") || "none"}`);
    }
  });

  // The owner's browser takes the doorbell over with keys it made itself.
  await o.goto(sim.setupUrl);
  await o.waitForSelector("body[data-ready=true]", { timeout: STEP_MS });
  await o.locator("#message", { hasText: "now holds the owner keys" }).waitFor({ timeout: STEP_MS });
  t.regex((await o.textContent("#keys-note")) ?? "", /non-extractable/);
  t.is(new URL(o.url()).hash, "", "the setup code is taken off the address bar");

  // Ring → the owner sees the ring verified and the snapshot decrypted in the page.
  await ring();
  const firstRing = o.locator("[data-testid=ring]").first();
  await firstRing.waitFor({ timeout: STEP_MS });
  t.regex((await firstRing.textContent()) ?? "", /signature verified in this browser/);
  const img = o.locator("img[data-testid=snapshot]").first();
  await img.waitFor({ timeout: STEP_MS });
  t.true(await img.evaluate(decoded), "the decrypted JPEG decodes");
  await shot(o, "1-owner-ring");

  // Bad input first: a malformed invitation is refused with a message, and the page stays usable.
  await g.goto(`${new URL(sim.setupUrl).origin}/#invite=bm90LWFuLWludml0YXRpb24`);
  await g.locator("#message.error").waitFor({ timeout: STEP_MS });
  t.regex((await g.textContent("#message")) ?? "", /This invitation cannot be used: .+\. Ask the owner for a new link\./);
  await shot(g, "2-guest-malformed-invitation");

  // The owner invites a guest; the guest's browser makes its own keys and answers.
  await o.fill("#invite-user", "guest");
  await o.click("#invite");
  await o.locator("#message", { hasText: "Invitation for \"guest\" made" }).waitFor({ timeout: STEP_MS });
  const link = await o.inputValue("#invite-link");
  t.truthy(await o.$("#invite-qr svg"), "a QR code of the link is shown");
  await shot(o, "3-owner-invitation");
  // The owner's own browser refuses the invitation rather than give up the owner keys.
  await o.goto(link);
  await o.locator("#message.error", { hasText: "holds the owner keys of doorward-sim-1" }).waitFor({ timeout: STEP_MS });
  await o.locator("#who", { hasText: "owner (owner) of doorward-sim-1" }).waitFor({ timeout: STEP_MS });
  await o.waitForSelector("body[data-ready=true]", { timeout: STEP_MS });
  await g.goto(link);
  await g.waitForSelector("body[data-ready=true]", { timeout: STEP_MS });
  await g.locator("#message", { hasText: "answered the invitation" }).waitFor({ timeout: STEP_MS });

  // Before the owner lets them in, the device refuses the guest.
  await g.click("#request-snapshot");
  await g.waitForSelector("#request-result[data-ok=false]", { timeout: STEP_MS });
  t.regex((await g.textContent("#request-result")) ?? "", /not on this doorbell's access list .*\(unknown-sender\)/);

  // The fingerprints the owner is shown are the ones the guest's page made.
  const guestKeys = /sign ([0-9a-f]{16})…, box ([0-9a-f]{16})…/.exec((await g.textContent("#my-keys")) ?? "");
  t.truthy(guestKeys);
  t.regex((await o.textContent("[data-testid=answer][data-user=guest]")) ?? "", new RegExp(`sign ${guestKeys![1]}…, box ${guestKeys![2]}…`));

  // The owner lets the guest in; the device confirms.
  await o.click("[data-testid=answer][data-user=guest] [data-testid=let-in]", { timeout: STEP_MS });
  await o.waitForSelector("[data-testid=confirmed]:has-text('guest let in')", { timeout: STEP_MS });
  await o.waitForSelector("[data-testid=user-row][data-user=guest]", { timeout: STEP_MS });

  // The guest sees: a ring's snapshot opens in the guest's browser.
  await ring();
  const guestImg = g.locator("img[data-testid=snapshot]").first();
  await guestImg.waitFor({ timeout: STEP_MS });
  t.true(await guestImg.evaluate(decoded));
  await g.click("#request-snapshot");
  await g.waitForSelector("#request-result[data-ok=true]", { timeout: STEP_MS });
  await shot(g, "4-guest-sees");

  // The owner revokes the guest; the device confirms, and the page says what the guest loses.
  await o.click("[data-testid=user-row][data-user=guest] [data-testid=revoke]");
  await o.waitForSelector("[data-testid=confirmed]:has-text('guest revoked')", { timeout: STEP_MS });
  const revoked = (await o.textContent("[data-testid=revoked-user][data-user=guest]")) ?? "";
  t.regex(revoked, /the doorbell confirmed at .* can no longer: ask for a snapshot or live view, test the chime, or open any snapshot taken after that moment/);
  t.is(await o.$("[data-testid=user-row][data-user=guest]"), null);
  await shot(o, "5-owner-revoked");

  // The guest is refused: commands, and the next snapshot.
  await g.click("#request-snapshot");
  await g.locator("#request-result[data-ok=false]", { hasText: "revoked" }).waitFor({ timeout: STEP_MS });
  t.regex((await g.textContent("#request-result")) ?? "", /removed you from this doorbell.*\(revoked\)/);
  const ringsBefore = await o.locator("img[data-testid=snapshot]").count();
  await ring();
  const refused = g.locator("[data-testid=snapshot-refused][data-code=not-a-recipient]").first();
  await refused.waitFor({ timeout: STEP_MS });
  t.regex((await refused.textContent()) ?? "", /not shared with you: when it was taken \(access list generation \d+\) "guest" was not on the doorbell's list/);
  await o.locator("img[data-testid=snapshot]").nth(ringsBefore).waitFor({ timeout: STEP_MS });
  await shot(g, "6-guest-refused");
  await shot(o, "7-owner-after-revoke");

  // Revoke all: a second guest (the same browser, a new invitation) is let in, then everyone but the owner goes.
  await o.fill("#invite-user", "guest2");
  await o.click("#invite");
  await o.locator("#message", { hasText: "Invitation for \"guest2\" made" }).waitFor({ timeout: STEP_MS });
  await g.goto(await o.inputValue("#invite-link"));
  await g.locator("#who", { hasText: "guest2 (viewer)" }).waitFor({ timeout: STEP_MS });
  await o.click("[data-testid=answer][data-user=guest2] [data-testid=let-in]", { timeout: STEP_MS });
  await o.waitForSelector("[data-testid=confirmed]:has-text('guest2 let in')", { timeout: STEP_MS });
  await o.click("#revoke-all");
  await o.waitForSelector("[data-testid=confirmed]:has-text('everyone but the owner revoked (guest2)')", { timeout: STEP_MS });
  t.deepEqual(await o.locator("[data-testid=user-row]").evaluateAll((rows) => rows.map((r) => (r as unknown as { dataset: { user: string } }).dataset.user)), ["owner"]);
  await o.waitForSelector("[data-testid=revoked-user][data-user=guest2]");
  await g.click("#request-snapshot");
  await g.locator("#request-result[data-ok=false]", { hasText: "revoked" }).waitFor({ timeout: STEP_MS });
  await shot(o, "8-owner-revoked-all");

  t.deepEqual(errors, [], "no page threw or logged an error");
  t.notRegex(sim.out(), /REJECTED/);
});
