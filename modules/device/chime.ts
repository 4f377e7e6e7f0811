/*
 * The chime: a GPIO output pulsed on every ring (and on the owner's chime test).
 *
 * The pin drives whatever the installer wired: a relay across a mechanical
 * chime's push terminals (one pulse, [200]), or an active buzzer ("ding-dong",
 * [150, 150, 300]). The pattern comes from hardware/<board>.json; it always
 * ends with the output off, even if a pattern has an even length. A ring
 * while the pattern plays is not queued: a visitor pressing twice hears it
 * once more at most, and a stuck button cannot hold a relay closed.
 *
 * A plain digital output, not PWM: the camera driver takes LEDC timer 0 and
 * channel 0 for its clock, and a PWM chime could collide with it.
 *
 * Platform-free: the output is a function, time is the Clock's scheduler.
 */

export interface ChimeOptions {
  /** Drive the output (true = sounding). */
  write: (on: boolean) => void;
  /** Milliseconds on, off, on, ...; each 10-2000 ms, checked by ./settings. */
  pattern: readonly number[];
  schedule: (callback: () => void, delayMs: number) => () => void;
}

export class Chime {
  rings = 0;
  #options: ChimeOptions;
  #cancel: (() => void) | undefined;
  #playing = false;

  constructor(options: ChimeOptions) {
    if (options.pattern.length === 0) throw new RangeError("chime: empty pattern");
    this.#options = options;
    options.write(false);
  }

  get playing(): boolean {
    return this.#playing;
  }

  /** Sound the pattern; returns false (and does nothing) while it is still playing. */
  ring(): boolean {
    if (this.#playing) return false;
    this.#playing = true;
    this.rings++;
    const pattern = this.#options.pattern;
    let step = 0;
    const next = () => {
      if (step === pattern.length) {
        this.#options.write(false);
        this.#playing = false;
        this.#cancel = undefined;
        return;
      }
      this.#options.write(step % 2 === 0);
      this.#cancel = this.#options.schedule(next, pattern[step++]);
    };
    next();
    return true;
  }

  close(): void {
    this.#cancel?.();
    this.#cancel = undefined;
    this.#playing = false;
    this.#options.write(false);
  }
}
