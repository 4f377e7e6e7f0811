/* A clock the test drives by hand: time moves only when advance() is called, and due callbacks run in order. */
import type { Clock } from "../../modules/core/ports";

export class ManualClock implements Clock {
  now = 0;
  wall: number | undefined = 1_790_000_000_000;
  #timers: Array<{ at: number; id: number; fn: () => void }> = [];
  #next = 0;

  monotonic(): number {
    return this.now;
  }
  wallTime(): number | undefined {
    return this.wall === undefined ? undefined : this.wall + this.now;
  }
  schedule(fn: () => void, delayMs: number): () => void {
    const id = this.#next++;
    this.#timers.push({ at: this.now + Math.max(0, delayMs), id, fn });
    return () => {
      this.#timers = this.#timers.filter((t) => t.id !== id);
    };
  }
  /** Move time forward, running every callback that falls due, in time order. */
  advance(ms: number): void {
    const end = this.now + ms;
    for (;;) {
      this.#timers.sort((a, b) => a.at - b.at || a.id - b.id);
      const t = this.#timers[0];
      if (!t || t.at > end) break;
      this.#timers.shift();
      this.now = t.at;
      t.fn();
    }
    this.now = end;
  }
  get pending(): number {
    return this.#timers.length;
  }
}
