/*
 * The device Log: one line per entry through trace().
 *
 * trace() goes to xsbug in debug builds and to the serial console otherwise.
 * Fields are appended as key=value pairs, strings JSON-quoted so that a value
 * containing spaces or '=' cannot be mistaken for another field. The core only
 * logs ids, counts and reasons, never secrets; nothing here adds any.
 */
import type { Log, LogLevel } from "../core/ports";

const RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

export interface DeviceLogOptions {
  /** Entries below this level are dropped. Default "info". */
  level?: LogLevel;
  /** Milliseconds to prefix each line with (the monotonic clock), so a serial log can be read without xsbug. */
  now?: () => number;
}

export function createLog(options: DeviceLogOptions = {}): Log {
  const min = RANK[options.level ?? "info"];
  const now = options.now;
  return (level, message, fields) => {
    if (RANK[level] < min) return;
    let line = (now ? now() + " " : "") + level + " " + message;
    if (fields) {
      for (const name in fields) {
        const value = fields[name];
        line += " " + name + "=" + (typeof value === "string" ? JSON.stringify(value) : String(value));
      }
    }
    trace(line + "\n");
  };
}
