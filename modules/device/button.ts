/*
 * The bell push on a GPIO, as the core's Button port (ECMA-419 Digital).
 *
 * The pin is an input with the internal pull-up, interrupting on both edges,
 * and reports raw edges: debouncing is the core's job. The runtime coalesces
 * interrupts (modules/io/digital/esp32: one callback per batch of edges), so
 * the callback reads the level rather than trusting one edge per call. When
 * the level read equals the last one reported, the line went away and came
 * back between two callbacks: that short pulse is reported as the two edges
 * it was, so a quick tap is never lost.
 */
import Digital from "embedded:io/digital";
import type { Button } from "../core/ports";
import type { ButtonSettings } from "./settings";

export function createButton(settings: ButtonSettings): Button {
  const pin = settings.pin;
  if (pin === undefined) throw new RangeError("button: no pin configured for this board (hardware/<board>.json)");
  const activeLow = settings.activeLow ?? true;
  let io: Digital | undefined;

  return {
    start(onEdge: (pressed: boolean) => void): void {
      if (io) return;
      let last = false;
      io = new Digital({
        pin,
        mode: activeLow ? Digital.InputPullUp : Digital.InputPullDown,
        edge: Digital.Rising | Digital.Falling,
        onReadable(this: Digital) {
          const pressed = (this.read() === 0) === activeLow;
          if (pressed === last) onEdge(!pressed);
          onEdge(pressed);
          last = pressed;
        },
      });
      last = (io.read() === 0) === activeLow;
    },
    stop(): void {
      io?.close();
      io = undefined;
    },
  };
}
