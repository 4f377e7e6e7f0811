/* A broker that acknowledges every publish at once and keeps what it got: for tests of what the core sends, with no network. */
import type { MqttHandlers, MqttTransport } from "../../modules/core/ports";

export class AckingTransport implements MqttTransport {
  published: Array<{ topic: string; payload: Uint8Array }> = [];
  connect(handlers: MqttHandlers): void {
    handlers.onConnect();
  }
  publish(topic: string, payload: Uint8Array): Promise<void> {
    this.published.push({ topic, payload });
    return Promise.resolve();
  }
  subscribe(): Promise<void> {
    return Promise.resolve();
  }
  close(): void {}
}
