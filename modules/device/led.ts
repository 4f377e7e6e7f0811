/*
 * The status LED: one light that tells an installer what the doorbell is doing.
 *
 * A status is a repeating blink pattern; a flash ("ring", "ring-sent") plays
 * once over it and then the status pattern resumes from its start. Patterns
 * are lists of milliseconds, on then off then on..., so they read like the
 * table in hardware/README.md:
 *
 *   provisioning  double blink every 2 s    waiting for a bundle on the local channel
 *   connecting    4 Hz blink                Wi-Fi, time and the broker coming up
 *   online        steady on                 the MQTT link is up
 *   offline       short blink every 2 s     was online; retrying with backoff
 *   error         10 Hz flicker             cannot run (bad config, no vault key, ...): see the log
 *   unlocked      two long, one short, 3 s  a release build on a chip without its locks: no secret is read
 *   ring          three quick flickers      a press was recognised
 *   ring-sent     one long glow             the broker acknowledged the ring
 *
 * Platform-free: the output is a function (a GPIO through embedded:io/digital
 * on a board, a log line on the simulator) and time is the Clock's scheduler,
 * so the host tests play the patterns on a manual clock.
 */

export type LedStatus = "provisioning" | "connecting" | "online" | "offline" | "error" | "unlocked";
export type LedFlash = "ring" | "ring-sent";

/** Milliseconds on, off, on, off...; an empty list is steady on, [0] steady off. */
export const LED_PATTERNS: Readonly<Record<LedStatus, readonly number[]>> = {
  provisioning: [120, 120, 120, 1640],
  connecting: [125, 125],
  online: [],
  offline: [120, 1880],
  error: [50, 50],
  unlocked: [600, 200, 600, 200, 150, 1250],
};

/**
 * Played once, then the status resumes. Each starts with a zero-length "on" so
 * that its first real step is a gap: a flash must show over a steady-on LED too.
 */
export const LED_FLASHES: Readonly<Record<LedFlash, readonly number[]>> = {
  ring: [0, 150, 60, 60, 60, 60, 60, 200],
  "ring-sent": [0, 150, 900, 200],
};

export interface StatusLedOptions {
  /** Drive the light (true = lit). */
  write: (on: boolean) => void;
  schedule: (callback: () => void, delayMs: number) => () => void;
  /** Told of every status change (the simulator has no light, only this). */
  onStatus?: (status: LedStatus | LedFlash) => void;
}

export class StatusLed {
  status: LedStatus = "connecting";
  #options: StatusLedOptions;
  #cancel: (() => void) | undefined;
  #flash: LedFlash | undefined;
  #lit: boolean | undefined;
  #closed = false;

  constructor(options: StatusLedOptions) {
    this.#options = options;
  }

  /** Show a status (restarting its pattern only when it changes). */
  set(status: LedStatus): void {
    if (this.#closed || (status === this.status && this.#lit !== undefined)) return;
    this.status = status;
    this.#options.onStatus?.(status);
    if (!this.#flash) this.#play(LED_PATTERNS[status], true);
  }

  /** Play a flash once over the status; a later flash replaces one still playing. */
  flash(kind: LedFlash): void {
    if (this.#closed) return;
    this.#flash = kind;
    this.#options.onStatus?.(kind);
    this.#play(LED_FLASHES[kind], false);
  }

  close(): void {
    this.#stop();
    this.#write(false);
    this.#closed = true;
  }

  #play(pattern: readonly number[], repeat: boolean): void {
    this.#stop();
    if (pattern.length === 0 || (pattern.length === 1 && pattern[0] === 0)) {
      this.#write(pattern.length === 0);
      return;
    }
    let step = 0;
    const next = () => {
      if (step === pattern.length) {
        if (!repeat) {
          this.#flash = undefined;
          this.#play(LED_PATTERNS[this.status], true);
          return;
        }
        step = 0;
      }
      this.#write(step % 2 === 0);
      const ms = pattern[step++];
      this.#cancel = this.#options.schedule(next, ms);
    };
    next();
  }

  #stop(): void {
    this.#cancel?.();
    this.#cancel = undefined;
  }

  #write(on: boolean): void {
    if (this.#lit === on) return;
    this.#lit = on;
    this.#options.write(on);
  }
}
