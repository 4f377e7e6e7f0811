/*
 * The host key provider: a 0600 key file, created once, refused when others
 * can read or write it, when it is a symbolic link or has the wrong size, and
 * always announced as development-only.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { openKeyFile, KeyFileError } from "../modules/host/key-file";
import { toHex } from "../modules/core/bytes";

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), "dw-key-"));
}

test("creates a 32-byte key file with mode 0600 (whatever the umask) and warns that it is for development", (t) => {
  const dir = tmp();
  const file = path.join(dir, "sub", "vault.key");
  const warnings: string[] = [];
  const old = process.umask(0o000);
  let provider;
  try {
    provider = openKeyFile(file, { warn: (l) => warnings.push(l) });
  } finally {
    process.umask(old);
  }
  t.true(provider.created);
  t.is(fs.statSync(file).mode & 0o777, 0o600);
  t.is(fs.statSync(file).size, 32);
  t.is(warnings.length, 1);
  t.regex(warnings[0], /DEVELOPMENT ONLY/);
  t.regex(warnings[0], /eFuse/);
  const k1 = provider.storageKey();
  const k2 = provider.storageKey();
  t.is(k1.length, 32);
  t.is(toHex(k1), toHex(k2));
  k1.fill(0);
  t.is(toHex(provider.storageKey()), toHex(k2), "the vault wiping its copy does not change the key");
  t.false(warnings[0].includes(toHex(k2)), "the warning does not print the key");
  const again = openKeyFile(file, { warn: () => {} });
  t.false(again.created);
  t.is(toHex(again.storageKey()), toHex(k2));
});

test("refuses a key file others can read or write, a symbolic link, a wrong size, and a missing one when told not to create", (t) => {
  const dir = tmp();
  const file = path.join(dir, "vault.key");
  openKeyFile(file, { warn: () => {} });
  for (const mode of [0o644, 0o640, 0o604, 0o620, 0o602]) {
    fs.chmodSync(file, mode);
    const e = t.throws(() => openKeyFile(file, { warn: () => {} }), { instanceOf: KeyFileError })!;
    t.regex(e.message, /accessible to other users.*chmod 600/, mode.toString(8));
  }
  fs.chmodSync(file, 0o600);
  // A provider opened earlier stops handing out the key once the file becomes readable by others.
  const provider = openKeyFile(file, { warn: () => {} });
  fs.chmodSync(file, 0o644);
  t.throws(() => provider.storageKey(), { instanceOf: KeyFileError });
  fs.chmodSync(file, 0o600);

  const link = path.join(dir, "link.key");
  fs.symlinkSync(file, link);
  t.throws(() => openKeyFile(link, { warn: () => {} }), { instanceOf: KeyFileError, message: /symbolic link/ });
  const dangling = path.join(dir, "dangling.key");
  fs.symlinkSync(path.join(dir, "nowhere"), dangling);
  t.throws(() => openKeyFile(dangling, { warn: () => {} }), { instanceOf: KeyFileError, message: /symbolic link/ });
  t.false(fs.existsSync(path.join(dir, "nowhere")), "a dangling link is not followed to create a file");

  const short = path.join(dir, "short.key");
  fs.writeFileSync(short, new Uint8Array(16), { mode: 0o600 });
  t.throws(() => openKeyFile(short, { warn: () => {} }), { instanceOf: KeyFileError, message: /exactly 32 bytes/ });
  t.throws(() => openKeyFile(path.join(dir, "absent.key"), { create: false, warn: () => {} }), { instanceOf: KeyFileError, message: /does not exist/ });
  t.throws(() => openKeyFile(dir, { warn: () => {} }), { instanceOf: KeyFileError, message: /not a regular file/ });
});

test("two devices get two different keys", (t) => {
  const dir = tmp();
  const a = openKeyFile(path.join(dir, "a.key"), { warn: () => {} }).storageKey();
  const b = openKeyFile(path.join(dir, "b.key"), { warn: () => {} }).storageKey();
  t.not(toHex(a), toHex(b));
});
