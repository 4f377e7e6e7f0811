/* Host entropy: the OS CSPRNG through WebCrypto, behind the core's Random port. */
import { webcrypto } from "node:crypto";
import type { Random } from "../core/ports";

export const hostRandom: Random = {
  fill(target) {
    // getRandomValues is limited to 65536 bytes per call.
    for (let o = 0; o < target.length; o += 65536) webcrypto.getRandomValues(target.subarray(o, Math.min(target.length, o + 65536)));
  },
};
