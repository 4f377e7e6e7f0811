/*
 * A virtual bell push for the Linux simulator, which has no GPIO.
 *
 * hardware/lin.json maps "device/button" here. When
 * doorward.button.simulatedPressEveryMs is set, the push is pressed for 100 ms
 * at that interval, producing the same raw edges a real button would, so the
 * whole ring path (debounce, sign, publish, PUBACK) runs in the simulator.
 */
import Timer from "timer";
import type { Button } from "../core/ports";
import type { ButtonSettings } from "./settings";

const HOLD_MS = 100;

export function createButton(settings: ButtonSettings): Button {
  const every = settings.simulatedPressEveryMs ?? 0;
  let repeat: Timer | undefined;
  let release: Timer | undefined;

  return {
    start(onEdge: (pressed: boolean) => void): void {
      if (repeat || every <= 0) return;
      repeat = Timer.repeat(() => {
        onEdge(true);
        release = Timer.set(() => {
          release = undefined;
          onEdge(false);
        }, HOLD_MS);
      }, every);
    },
    stop(): void {
      if (release) Timer.clear(release);
      if (repeat) Timer.clear(repeat);
      repeat = release = undefined;
    },
  };
}
