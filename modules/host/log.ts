/*
 * Host log sink: one line per entry, fields as key=value, to a chosen writer.
 * Tests capture the lines to prove no secret is ever printed.
 */
import type { Log } from "../core/ports";

export function createHostLog(write: (line: string) => void = (l) => process.stderr.write(l + "\n"), minLevel: "debug" | "info" | "warn" | "error" = "info"): Log {
  const order = { debug: 0, info: 1, warn: 2, error: 3 };
  return (level, message, fields) => {
    if (order[level] < order[minLevel]) return;
    let line = `[${level}] ${message}`;
    if (fields) for (const k of Object.keys(fields)) line += ` ${k}=${fields[k]}`;
    write(line);
  };
}
