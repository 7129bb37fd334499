// A test double of the radio, at @stoprocent/noble's API and nowhere else (issue 10, scope 5): the
// central (gateway/ble/central.ts) runs over it exactly as over the library. It has what the central
// uses, with the library's names and shapes (gateway/ble/noble-api.ts): stateChange,
// startScanningAsync/stopScanningAsync, discover (advertisement.localName, rssi), connectAsync /
// disconnectAsync, discoverSomeServicesAndCharacteristicsAsync, the UART's two characteristics
// (writeAsync, subscribeAsync, "data"), a peripheral's "disconnect" and its mtu.
//
// Behind each peripheral is a handset: on the real interpreter, the BLE stand-ins' TCP connection to
// kp.cfg's "gw" (interpreter/device.ts: one TCP connection is one BLE connection), which this double
// accepts only while the central is connected (tcpBacking); in unit tests, the firmware's Handset
// engine in Node (engineBacking). What a radio does that the double does too: a peripheral advertises
// (a "discover" every advertiseMs) only while in range and not connected; a write longer than the MTU
// allows is refused; notifications come in pieces of at most MTU - 3 bytes; a handset that walks out
// of range drops its connection ("disconnect", reason 8: supervision timeout) and a connect to it
// does not complete until it is back or the central gives up.

import { EventEmitter } from "node:events";
import net from "node:net";
import type { AdapterState } from "../../gateway/ble/noble-api.ts";
import { DEFAULT_ATT_MTU, NUS_RX, NUS_SERVICE, NUS_TX } from "../../gateway/ble/nus.ts";

/** The radio link to one handset, open. */
export interface BackingPipe {
  write(bytes: Buffer): void;
  onData(cb: (bytes: Buffer) => void): void;
  onClose(cb: () => void): void;
  close(): void;
}

/** Where a peripheral's handset is: open() is the radio connection coming up. */
export interface PeripheralBacking {
  /** Resolves when the handset is connected; rejects when cancelled (cancel()). */
  open(): Promise<BackingPipe>;
  cancel(): void;
}

/** BLE supervision timeout: the reason a link lost to range gives (HCI error 0x08). */
export const REASON_OUT_OF_RANGE = 8;
/** The central's own disconnect (HCI 0x16, connection terminated by local host). */
export const REASON_LOCAL = 0x16;

class DoubleCharacteristic extends EventEmitter {
  constructor(readonly uuid: string, private readonly p: DoublePeripheral) {
    super();
  }

  async writeAsync(data: Buffer, withoutResponse: boolean): Promise<void> {
    void withoutResponse;
    if (this.uuid !== NUS_RX) throw new Error("the handset's TX takes no writes");
    await this.p.centralWrote(data);
  }

  async subscribeAsync(): Promise<void> {
    if (this.uuid !== NUS_TX) throw new Error("the handset's RX does not notify");
    this.p.subscribed();
  }
}

export class DoublePeripheral extends EventEmitter {
  state: "disconnected" | "connecting" | "connected" | "disconnecting" = "disconnected";
  mtu: number | null = null;
  inRange = true;
  /** Every write the central made, and every notification sent, for the test to check. */
  readonly writes: Buffer[] = [];
  readonly notified: Buffer[] = [];
  /** Radio connections made so far. */
  connections = 0;
  private pipe: BackingPipe | undefined;
  private tx = new DoubleCharacteristic(NUS_TX, this);
  private rx = new DoubleCharacteristic(NUS_RX, this);
  private notifying = false;
  private held: Buffer[] = [];

  constructor(readonly id: string, readonly advertisement: { localName?: string }, public rssi: number, private readonly backing: PeripheralBacking, private readonly negotiatedMtu: number | null = null) {
    super();
  }

  /** The payload of one ATT write or notification at this link's MTU. */
  get payloadBytes(): number {
    return (this.mtu ?? DEFAULT_ATT_MTU) - 3;
  }

  async connectAsync(): Promise<void> {
    if (this.state !== "disconnected") throw new Error(`connect while ${this.state}`);
    this.state = "connecting";
    let pipe: BackingPipe;
    try {
      pipe = await this.whenInRange(() => this.backing.open());
    } catch (e) {
      this.state = "disconnected";
      throw e;
    }
    if (this.state !== "connecting") {
      pipe.close();
      throw new Error("connection cancelled");
    }
    this.pipe = pipe;
    this.state = "connected";
    this.connections++;
    this.mtu = this.negotiatedMtu;
    this.emit("connected");
    this.notifying = false;
    this.held = [];
    pipe.onData((b) => this.fromHandset(b));
    pipe.onClose(() => this.lost(REASON_OUT_OF_RANGE));
  }

  /** open() once the handset is in range (a connect to one out of range waits, as a radio's does). */
  private async whenInRange<T>(open: () => Promise<T>): Promise<T> {
    while (!this.inRange) {
      if (this.state !== "connecting") throw new Error("connection cancelled");
      await new Promise<void>((r) => this.once("inRange", r).once("cancel", r));
    }
    return open();
  }

  async disconnectAsync(): Promise<void> {
    if (this.state === "connecting") {
      this.state = "disconnected";
      this.emit("cancel");
      this.backing.cancel();
      return;
    }
    if (this.state !== "connected") return;
    this.lost(REASON_LOCAL);
  }

  async discoverSomeServicesAndCharacteristicsAsync(services: string[], characteristics: string[]): Promise<{ characteristics: DoubleCharacteristic[] }> {
    if (this.state !== "connected") throw new Error("not connected");
    if (!services.includes(NUS_SERVICE)) return { characteristics: [] };
    return { characteristics: [this.rx, this.tx].filter((c) => characteristics.includes(c.uuid)) };
  }

  /** The handset walks out of range: the link drops (if up) and it no longer advertises. */
  walkAway(): void {
    this.inRange = false;
    if (this.state === "connected") this.lost(REASON_OUT_OF_RANGE);
  }

  comeBack(): void {
    this.inRange = true;
    this.emit("inRange");
  }

  async centralWrote(data: Buffer): Promise<void> {
    if (this.state !== "connected" || !this.pipe) throw new Error("not connected");
    if (data.length > this.payloadBytes) throw new Error(`an ATT write of ${data.length} bytes at MTU ${this.mtu ?? DEFAULT_ATT_MTU} (at most ${this.payloadBytes})`);
    this.writes.push(Buffer.from(data));
    this.pipe.write(Buffer.from(data));
  }

  subscribed(): void {
    this.notifying = true;
    for (const b of this.held.splice(0)) this.notify(b);
  }

  /** The handset's bytes: held until the central subscribes (as the handset's output queue does), then
   *  notified in pieces that fit the MTU. */
  private fromHandset(b: Buffer): void {
    if (!this.notifying) this.held.push(b);
    else this.notify(b);
  }

  private notify(b: Buffer): void {
    for (let o = 0; o < b.length; o += this.payloadBytes) {
      const piece = b.subarray(o, o + this.payloadBytes);
      this.notified.push(piece);
      this.tx.emit("data", piece, true);
    }
  }

  private lost(reason: number): void {
    if (this.state !== "connected") return;
    this.state = "disconnected";
    const pipe = this.pipe;
    this.pipe = undefined;
    this.tx.removeAllListeners("data");
    pipe?.close();
    this.emit("disconnect", reason);
  }
}

/** The adapter: a Noble as the central sees it. */
export class BleDouble extends EventEmitter {
  state: AdapterState = "poweredOn";
  readonly peripherals: DoublePeripheral[] = [];
  private scanning = false;
  private timer: NodeJS.Timeout | undefined;
  /** The most handsets connected at once so far. */
  maxConnected = 0;

  constructor(private readonly advertiseMs = 100) {
    super();
  }

  add(p: DoublePeripheral): DoublePeripheral {
    this.peripherals.push(p);
    p.on("connected", () => this.count());
    return p;
  }

  /** Counts the connections up now (a test checks the central's limit against the peak). */
  count(): number {
    const n = this.peripherals.filter((p) => p.state === "connected").length;
    this.maxConnected = Math.max(this.maxConnected, n);
    return n;
  }

  async startScanningAsync(serviceUUIDs?: string[], allowDuplicates?: boolean): Promise<void> {
    void serviceUUIDs;
    void allowDuplicates;
    if (this.state !== "poweredOn") throw new Error(`Could not start scanning, state is ${this.state} (not poweredOn)`);
    this.scanning = true;
    const advertise = () => {
      this.count();
      for (const p of this.peripherals) if (p.inRange && p.state === "disconnected") this.emit("discover", p);
      this.timer = setTimeout(advertise, this.advertiseMs);
      this.timer.unref();
    };
    advertise();
  }

  async stopScanningAsync(): Promise<void> {
    this.scanning = false;
    if (this.timer) clearTimeout(this.timer);
  }

  get isScanning(): boolean {
    return this.scanning;
  }
}

/** A free TCP port on loopback (for a handset's kp.cfg "gw" before the double listens there). */
export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** A handset on the real interpreter: its BLE stand-ins open a TCP connection to kp.cfg's "gw" every
 *  half second while they have none (advertising). The double listens there only while the central
 *  connects, so the handset sees a central exactly when the central has connected; it stops listening
 *  as soon as the one connection is there. */
export function tcpBacking(port: number): PeripheralBacking {
  let server: net.Server | undefined;
  let cancelled: ((e: Error) => void) | undefined;
  const stopListening = () => {
    server?.close();
    server = undefined;
  };
  return {
    open: () => new Promise<BackingPipe>((resolve, reject) => {
      cancelled = reject;
      server = net.createServer((sock) => {
        stopListening();
        cancelled = undefined;
        sock.setNoDelay(true);
        sock.on("error", () => {});
        resolve({
          write: (b) => sock.write(b),
          onData: (cb) => sock.on("data", cb),
          onClose: (cb) => sock.on("close", cb),
          close: () => sock.destroy(),
        });
      });
      server.on("error", (e) => {
        stopListening();
        reject(e);
      });
      server.listen(port, "127.0.0.1");
    }),
    cancel: () => {
      stopListening();
      cancelled?.(new Error("connection cancelled"));
      cancelled = undefined;
    },
  };
}
