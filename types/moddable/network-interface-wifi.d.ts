/*
 * "embedded:network/interface/wifi" (modules/io/wifi): the ECMA-419 Wi-Fi
 * network interface, which the SDK 8.2 setup/network itself uses on ESP32.
 *
 * Missing from @moddable/typings 5.6.0. Declared as the SDK 8.2 typings
 * declare it (typings/embedded_network/interface/wifi.d.ts), because mcconfig
 * checks the device sources against those. `connection` is 200 (disconnected),
 * 300 (connecting), 400 (associated) or 500 (address acquired); one connect()
 * is one attempt, and "already connecting" is thrown while one is under way
 * (modules/io/wifi/esp32/wifi-esp32.c). Not available on lin.
 */
declare module "embedded:network/interface/wifi" {
  import type { PortSpecifier } from "embedded:io/_common";

  export type WiFiChangedProperty = "connection" | "address";

  export interface WiFiConstructorOptions {
    port?: PortSpecifier;
    onChanged?: (property: WiFiChangedProperty) => void;
  }

  export interface WiFiScanResult {
    SSID: string;
    channel: number;
    RSSI: number;
    BSSID?: string;
  }

  export interface WiFiScanOptions {
    onFound?: (result: WiFiScanResult) => void;
    onComplete?: () => void;
  }

  export interface WiFiConnectOptions {
    SSID: string;
    password?: string;
  }

  export interface WiFiStaticAddress {
    address: string;
    mask: string;
    gateway: string;
  }

  export interface WiFiConfigureOptions {
    hostname?: string;
    static?: WiFiStaticAddress | false;
  }

  class WiFi {
    constructor(options: WiFiConstructorOptions);
    close(): void;
    scan(options: WiFiScanOptions): void;
    connect(options: WiFiConnectOptions): void;
    disconnect(): void;
    configure(options: WiFiConfigureOptions): void;
    readonly connection: number;
    readonly address: string | undefined;
    readonly MAC: string | undefined;
    readonly SSID: string | undefined;
    readonly RSSI: number | undefined;
  }

  export default WiFi;
}
