/*
 * A DNS resolver in the ECMA-419 shape (embedded:network/dns/resolver) over
 * the system resolver, Net.resolve: lwIP's DNS client on ESP32, getaddrinfo
 * on the simulator.
 *
 * The ECMA-419 MQTT client asks its `dns.io` for the broker's address. The
 * SDK's UDP resolver needs a list of public DNS servers (its example uses
 * 1.1.1.1); this one uses whatever server DHCP configured, so the device talks
 * to no extra host. Callbacks are always asynchronous.
 */
import Net from "net";

export interface ResolveOptions {
  host: string;
  onResolved?: (host: string, address: string) => void;
  onError?: (host: string) => void;
}

const IPV4 = /^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$/;

export default class NetResolver {
  #closed = false;

  constructor(_options?: object) {}

  resolve(options: ResolveOptions): void {
    const { host, onResolved, onError } = options;
    if (IPV4.test(host)) {
      Promise.resolve().then(() => {
        if (!this.#closed) onResolved?.(host, host);
      });
      return;
    }
    Net.resolve(host, (_name, address) => {
      if (this.#closed) return;
      if (address) onResolved?.(host, address);
      else onError?.(host);
    });
  }

  close(): void {
    this.#closed = true;
  }
}
