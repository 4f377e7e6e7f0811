/*
 * Token buckets: how often an inbound message may make the device do
 * something expensive.
 *
 * An Ed25519 verify costs seconds on the device and a grant's box.before about
 * two more, whichever core runs them; a command's MAC check costs
 * milliseconds. Each bucket holds up to `capacity` tokens and gains one every
 * `everyMs`; an action that finds it empty waits or is refused, by the
 * caller's choice. So no sender, authenticated or not, can buy seconds of CPU
 * more than a few times an hour, and no one sender can crowd out the others.
 */
import type { Clock } from "./ports";

export interface TokenBucketOptions {
  capacity: number;
  /** One token comes back this often. */
  everyMs: number;
  clock: Pick<Clock, "monotonic">;
}

export class TokenBucket {
  readonly capacity: number;
  readonly everyMs: number;
  #clock: Pick<Clock, "monotonic">;
  #tokens: number;
  #at: number;

  constructor(options: TokenBucketOptions) {
    if (!(options.capacity >= 1) || !(options.everyMs > 0)) throw new RangeError("budget: capacity must be ≥ 1 and everyMs > 0");
    this.capacity = options.capacity;
    this.everyMs = options.everyMs;
    this.#clock = options.clock;
    this.#tokens = options.capacity;
    this.#at = options.clock.monotonic();
  }

  /** Tokens available now. */
  get tokens(): number {
    this.#refill();
    return Math.floor(this.#tokens);
  }

  /** Take one token if there is one. */
  take(): boolean {
    this.#refill();
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }

  /** Milliseconds until a token is available (0 if one is). */
  waitMs(): number {
    this.#refill();
    return this.#tokens >= 1 ? 0 : Math.ceil((1 - this.#tokens) * this.everyMs);
  }

  #refill(): void {
    const now = this.#clock.monotonic();
    if (now > this.#at) {
      this.#tokens = Math.min(this.capacity, this.#tokens + (now - this.#at) / this.everyMs);
    }
    this.#at = now;
  }
}

/** One bucket per key (a sender), created full on first use; at most `maxKeys`, the least recently used forgotten first. */
export class BucketsByKey {
  #o: TokenBucketOptions & { maxKeys: number };
  #buckets = new Map<string, TokenBucket>();

  constructor(options: TokenBucketOptions & { maxKeys: number }) {
    this.#o = options;
  }

  take(key: string): boolean {
    let b = this.#buckets.get(key);
    if (b) this.#buckets.delete(key);
    else b = new TokenBucket(this.#o);
    this.#buckets.set(key, b);
    while (this.#buckets.size > this.#o.maxKeys) this.#buckets.delete(this.#buckets.keys().next().value!);
    return b.take();
  }
}
