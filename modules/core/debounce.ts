/*
 * Button debouncing: a burst of contact bounce is one press.
 *
 * Leading-edge with lockout: the first "pressed" edge after the contact has been
 * quiet rings at once (no added latency), and every edge within quietMs of the
 * previous one belongs to the same burst. A new press is only recognised after
 * the line has been quiet for quietMs, so chatter on release never rings twice.
 */
export interface DebounceOptions {
  /** Contact must be quiet this long before a new press counts. */
  quietMs?: number;
  now: () => number;
  onPress: () => void;
}

export class Debouncer {
  readonly quietMs: number;
  #lastEdge = -Infinity;
  #now: () => number;
  #onPress: () => void;

  constructor(options: DebounceOptions) {
    this.quietMs = options.quietMs ?? 50;
    this.#now = options.now;
    this.#onPress = options.onPress;
  }

  /** Feed every raw edge here, in order. */
  edge(pressed: boolean): void {
    const t = this.#now();
    const quiet = t - this.#lastEdge >= this.quietMs;
    this.#lastEdge = t;
    if (pressed && quiet) this.#onPress();
  }
}
