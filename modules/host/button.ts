/*
 * Simulated doorbell button: the host stand-in for a GPIO line.
 *
 * press() plays a realistic contact: a short burst of bounce on the way down,
 * a hold, and a burst on release, so the core's debouncer does real work in
 * the simulator just as it does on a board. The keyboard and HTTP front-ends
 * of the simulator call press().
 */
import type { Button } from "../core/ports";

export class SimulatedButton implements Button {
  #onEdge: ((pressed: boolean) => void) | undefined;

  start(onEdge: (pressed: boolean) => void): void {
    this.#onEdge = onEdge;
  }

  stop(): void {
    this.#onEdge = undefined;
  }

  /** One human press: bounce, hold, bounce. The first edge rings synchronously. */
  press(options: { bounces?: number; holdMs?: number } = {}): void {
    const edge = this.#onEdge;
    if (!edge) return;
    const bounces = options.bounces ?? 3;
    edge(true);
    for (let i = 0; i < bounces; i++) {
      edge(false);
      edge(true);
    }
    setTimeout(() => {
      for (let i = 0; i < bounces; i++) {
        edge(false);
        edge(true);
      }
      edge(false);
    }, options.holdMs ?? 120);
  }
}
