/*
 * The network rule over the whole source tree (modules/**, tools/**): only the
 * two egress chokepoints, and the tools that are the outside world (each
 * listed with its reason in tools/import-rules.ts), may import a module that
 * can open a connection or resolve a name, or use a global that can. The
 * checker is also run on a tree full of leaks, so it cannot quietly stop
 * finding them.
 */
import test from "ava";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {
  LINK_LAYER_EXCEPTIONS, NETWORK_CHOKEPOINTS, OUTSIDE_WORLD_TOOLS, checkNetworkTree, isNetworkModule, runtimeImportsOf,
} from "../tools/import-rules";

test("no module or tool reaches the network except through a chokepoint or as a listed outside-world tool", (t) => {
  const violations = checkNetworkTree(".");
  t.deepEqual(violations, [], violations.map((v) => `${v.file}:${v.line} ${v.problem}`).join("\n"));
  // The exceptions are few, and each says why.
  t.deepEqual(Object.keys(NETWORK_CHOKEPOINTS).sort(), ["modules/device/egress.ts", "modules/host/egress.ts"]);
  for (const [file, reason] of Object.entries({ ...NETWORK_CHOKEPOINTS, ...OUTSIDE_WORLD_TOOLS })) {
    t.true(reason.length > 20, `${file} needs a reason`);
    t.false(file.startsWith("modules/") && !(file in NETWORK_CHOKEPOINTS), `${file}: no module is outside world`);
  }
  for (const e of LINK_LAYER_EXCEPTIONS) t.true(isNetworkModule(e.specifier), `${e.specifier} is listed although it is not a network module`);
  // The chokepoints are where the network modules are actually imported.
  const device = runtimeImportsOf(fs.readFileSync("modules/device/egress.ts", "utf8")).map((u) => u.specifier);
  for (const s of ["embedded:network/mqtt/client", "embedded:io/socket/tcp", "embedded:io/socket/tcp/tls", "embedded:io/socket/udp", "net"]) t.true(device.includes(s), s);
  const host = runtimeImportsOf(fs.readFileSync("modules/host/egress.ts", "utf8")).map((u) => u.specifier);
  for (const s of ["node:tls", "node:dns", "mqtt"]) t.true(host.includes(s), s);
  t.false(runtimeImportsOf(fs.readFileSync("modules/host/mqtt-transport.ts", "utf8")).some((u) => isNetworkModule(u.specifier)), "the transport now goes through ./egress");
  t.false(runtimeImportsOf(fs.readFileSync("modules/device/mqtt.ts", "utf8")).some((u) => isNetworkModule(u.specifier)));
  t.false(runtimeImportsOf(fs.readFileSync("modules/device/resolver.ts", "utf8")).some((u) => isNetworkModule(u.specifier)));
});

test("isNetworkModule knows the Node, npm and Moddable network modules, and nothing else", (t) => {
  for (const s of ["net", "node:net", "tls", "node:tls", "dgram", "node:dns", "dns/promises", "node:dns/promises", "http", "https", "node:http2", "mqtt", "mqtt/lib/connect", "ws", "undici",
    "socket", "securesocket", "sntp", "websocket", "embedded:io/socket/tcp", "embedded:io/socket/tcp/tls", "embedded:io/socket/udp", "embedded:io/socket/listener",
    "embedded:network/mqtt/client", "embedded:network/dns/resolver/udp", "embedded:network/http/client", "embedded:provider/builtin", "<computed:spec>"]) t.true(isNetworkModule(s), s);
  for (const s of ["node:fs", "fs", "path", "tweetnacl", "timer", "preference", "embedded:io/digital", "embedded:storage/key-value", "mqtt-packet", "network-utils", "./net", "../core/egress", "netmask"]) t.false(isNetworkModule(s), s);
});

test("the checker finds every form of leak in a broken tree (so the rule can fail)", (t) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "dw-netrule-"));
  const write = (file: string, source: string) => {
    fs.mkdirSync(path.dirname(path.join(root, file)), { recursive: true });
    fs.writeFileSync(path.join(root, file), source);
  };
  const leaks: Record<string, string> = {
    "modules/host/a.ts": 'import net from "node:net";\nexport const a = net;\n',
    "modules/host/b.ts": 'export { connect } from "mqtt";\n',
    "modules/host/c.ts": 'import { type MqttClient } from "mqtt";\nexport type C = MqttClient;\n', // still loads mqtt
    "modules/host/d.ts": 'export const d = () => fetch("https://phone-home.example/");\n',
    "modules/host/e.ts": 'export const e = () => new WebSocket("wss://phone-home.example/");\n',
    "modules/host/f.ts": 'export const f = async () => (await import("node:" + "https")).request;\n', // computed
    "modules/device/a.ts": 'import TCP from "embedded:io/socket/tcp";\nexport const a = TCP;\n',
    "modules/device/b.ts": 'import Net from "net";\nexport const b = Net;\n',
    "modules/device/c.ts": 'import SNTP from "sntp";\nexport const c = SNTP;\n',
    "modules/device/d.ts": 'import { Socket } from "socket";\nexport const d = Socket;\n',
    "modules/device/e.ts": 'import SecureSocket from "securesocket";\nexport const e = SecureSocket;\n',
    "modules/device/f.ts": 'import Resolver from "embedded:network/dns/resolver/udp";\nexport const f = Resolver;\n',
    "modules/device/g.ts": 'export const g = () => device.network.mqtt;\n', // the ECMA-419 host provider global
    "modules/device/h.ts": 'import "embedded:provider/builtin";\n',
    "modules/device/i.ts": 'import { Client } from "mqtt";\nexport const i = Client;\n',
    "modules/device/j.ts": 'import HTTP from "http";\nexport const j = HTTP;\n',
    "modules/core/a.ts": 'import dgram from "node:dgram";\nexport const a = dgram;\n',
    "tools/a.ts": 'const https = await import("https");\nexport const a = https;\n',
    "tools/b.ts": 'const dgram = require("dgram");\nexport const b = dgram;\n',
    "tools/sub/c.ts": 'import tls from "tls";\nexport const c = tls;\n',
    "tools/d.js": 'import http from "node:http";\nexport const d = http;\n',
  };
  for (const [file, source] of Object.entries(leaks)) write(file, source);
  const clean: Record<string, string> = {
    "modules/host/ok.ts": 'import type { MqttClient } from "mqtt";\ntype S = import("node:net").Socket;\n// import net from "node:net"\nconst s = "require(\\"net\\")";\nconst fetch = (x: string) => x;\nexport const ok = [s, fetch("x"), { fetch: 1 }.fetch] as unknown as [MqttClient, S];\n',
    "modules/device/board.ts": 'import WiFi from "embedded:network/interface/wifi";\nexport const w = WiFi;\n', // link layer: listed
    "modules/device/egress.ts": 'import TCP from "embedded:io/socket/tcp";\nexport const x = TCP;\n',
    "modules/host/egress.ts": 'import tls from "node:tls";\nexport const x = tls;\n',
    "tools/standin.ts": 'import net from "node:net";\nexport const x = net;\n',
    "host-tests/x.test.ts": 'import net from "node:net";\nexport const x = net;\n', // not scanned: tests play the outside world
    "modules/host/types.d.ts": 'declare module "x" { import net from "node:net"; }\n',
  };
  for (const [file, source] of Object.entries(clean)) write(file, source);
  const options = { chokepoints: NETWORK_CHOKEPOINTS, outsideWorld: { "tools/standin.ts": "plays the broker", "tools/gone.ts": "a stale entry" } };
  const violations = checkNetworkTree(root, options);
  const found = new Set(violations.map((v) => v.file));
  for (const file of Object.keys(leaks)) t.true(found.has(file), `${file} not caught`);
  for (const file of Object.keys(clean)) t.false(found.has(file), `${file} wrongly flagged: ${violations.filter((v) => v.file === file).map((v) => v.problem).join("; ")}`);
  t.true(found.has("tools/gone.ts"), "a listed file that no longer exists is reported");
  t.regex(violations.find((v) => v.file === "modules/device/a.ts")!.problem, /modules\/device\/egress\.ts/);
  t.regex(violations.find((v) => v.file === "modules/host/a.ts")!.problem, /modules\/host\/egress\.ts/);
  // Without the link-layer exception, the Wi-Fi interface is a network module like any other.
  t.true(checkNetworkTree(root, { ...options, linkLayer: [] }).some((v) => v.file === "modules/device/board.ts"));
  // The exception is for that one file: the same import anywhere else is a leak.
  write("modules/device/other.ts", 'import WiFi from "embedded:network/interface/wifi";\nexport const w = WiFi;\n');
  t.true(checkNetworkTree(root, options).some((v) => v.file === "modules/device/other.ts"));
});
