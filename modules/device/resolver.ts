/*
 * A DNS resolver in the ECMA-419 shape (embedded:network/dns/resolver) over a
 * look-up function: on the device, the guarded Net.resolve of ./egress, which
 * asks the allowlist first and otherwise uses lwIP's DNS client (ESP32) or
 * getaddrinfo (the simulator).
 *
 * The ECMA-419 MQTT client asks its `dns.io` for the broker's address. The
 * SDK's UDP resolver needs a list of public DNS servers (its example uses
 * 1.1.1.1); this one uses whatever server DHCP configured, so the device talks
 * to no extra host. It imports no network module itself: ./egress builds it
 * with resolverClass(). Callbacks are always asynchronous.
 */

export interface ResolveOptions {
  host: string;
  onResolved?: (host: string, address: string) => void;
  onError?: (host: string) => void;
}

/** Net.resolve's shape: address is undefined when the name cannot be resolved (or may not be). */
export type Lookup = (host: string, callback: (name: string, address?: string) => void) => void;

export interface LookupResolver {
  resolve(options: ResolveOptions): void;
  close(): void;
}

export function resolverClass(lookup: Lookup): new (options?: object) => LookupResolver {
  return class Resolver implements LookupResolver {
    #closed = false;

    constructor(_options?: object) {}

    resolve(options: ResolveOptions): void {
      const { host, onResolved, onError } = options;
      let sync = true;
      lookup(host, (_name, address) => {
        const answer = () => {
          if (this.#closed) return;
          if (address) onResolved?.(host, address);
          else onError?.(host);
        };
        if (sync) Promise.resolve().then(answer);
        else answer();
      });
      sync = false;
    }

    close(): void {
      this.#closed = true;
    }
  };
}
