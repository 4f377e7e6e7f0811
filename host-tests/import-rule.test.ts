import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { checkCoreTree, importsOf, hostGlobalsUsed } from "../tools/import-rules";

test("the core imports only its own modules and tweetnacl, and uses no host global", (t) => {
  const violations = checkCoreTree("modules/core");
  t.deepEqual(violations, [], violations.map((v) => `${v.file}:${v.line} ${v.problem}`).join("\n"));
  t.true(fs.readdirSync("modules/core").filter((f) => f.endsWith(".ts")).length >= 8);
});

test("the checker catches every form of leak (so the rule can fail)", (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "core-"));
  const leaks: Record<string, string> = {
    "a.ts": 'import fs from "node:fs";',
    "b.ts": 'export { x } from "mqtt";',
    "c.ts": 'const m = await import("net");',
    "d.ts": 'const t = require("timer");',
    "e.ts": 'import Digital from "embedded:io/digital";',
    "f.ts": 'import { y } from "../outside";',
    "g.ts": 'import { z } from "./missing";',
    "h.ts": 'export const now = () => process.hrtime();',
    "i.ts": 'export const b = Buffer.from("x");',
    "j.ts": 'export const later = () => setTimeout(() => 0, 1);',
    "k.ts": 'import { a } from "./a.js";',
  };
  for (const [name, src] of Object.entries(leaks)) fs.writeFileSync(path.join(dir, name), src);
  fs.writeFileSync(path.join(dir, "ok.ts"), '// import fs from "node:fs"\nconst s = "require(\\"net\\")";\nconst o = { process: 1 };\nexport const v = o.process;\n');
  const found = new Set(checkCoreTree(dir).map((v) => path.basename(v.file)));
  for (const name of Object.keys(leaks)) t.true(found.has(name), `${name} not caught`);
  t.false(found.has("ok.ts"), "comments, strings and property names are not leaks");
});

test("importsOf sees static, re-export, dynamic, require and import-type forms", (t) => {
  const src = 'import a from "a";\nexport * from "b";\nimport("c");\nrequire("d");\ntype T = import("e").T;\n';
  t.deepEqual(importsOf(src).map((u) => u.specifier), ["a", "b", "c", "d", "e"]);
  t.deepEqual(hostGlobalsUsed("const process = 1; export const x = process;"), []);
});
