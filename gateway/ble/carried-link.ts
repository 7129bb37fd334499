// A device link carried by something other than the link server's own TCP port: a BLE central in the
// gateway, or a bridge elsewhere (gateway/ble/bridge-server.ts). To the link server it is a transport
// like a TCP socket (LinkTransport): bytes in, bytes out, closed from either end. What it carries are
// the same frames as over TCP, sealed end to end by the link keys, which the carrier never has.

import { EventEmitter } from "node:events";
import type { LinkTransport } from "../link/server.ts";

export interface Carrier {
  /** Bytes from the gateway to the handset (the carrier pieces them for its radio). */
  write(bytes: Uint8Array): void;
  /** The gateway is done with this link: the carrier drops the radio connection. */
  close(): void;
}

export class CarriedLink extends EventEmitter implements LinkTransport {
  private idleMs = 0;
  private onIdle: (() => void) | undefined;
  private idleTimer: NodeJS.Timeout | undefined;
  private closed = false;

  /** remoteAddress: "ble <address>" in the gateway, "bridge <name> ble <address>" from a bridge (no
   *  colon: it is also the per-source key of the link limits, gateway/link/limits.ts). */
  constructor(readonly remoteAddress: string, private carrier: Carrier) {
    super();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  // ---- the link server's side (LinkTransport) ----

  write(bytes: Uint8Array): boolean {
    if (!this.closed) this.carrier.write(bytes);
    return true;
  }

  end(): void {
    this.destroy();
  }

  destroy(): void {
    if (this.closeOnce()) this.carrier.close();
  }

  setTimeout(ms: number, onIdle?: () => void): this {
    this.idleMs = ms;
    this.onIdle = onIdle;
    this.armIdle();
    return this;
  }

  // ---- the carrier's side ----

  /** Bytes from the handset. */
  received(bytes: Uint8Array): void {
    if (this.closed) return;
    this.armIdle();
    this.emit("data", Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length));
  }

  /** The radio connection is gone (the handset left, went out of range, or the bridge went away). */
  carrierClosed(): void {
    this.closeOnce();
  }

  private closeOnce(): boolean {
    if (this.closed) return false;
    this.closed = true;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    // After the caller's own work, as a socket's "close" comes: never inside the link server's write.
    setImmediate(() => this.emit("close"));
    return true;
  }

  private armIdle(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    if (this.idleMs > 0 && !this.closed) {
      this.idleTimer = setTimeout(() => this.onIdle?.(), this.idleMs);
      this.idleTimer.unref();
    }
  }
}
