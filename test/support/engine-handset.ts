// A handset for the BLE double's peripherals in fast tests: the firmware's Handset engine in Node
// (the same code the bundle runs), speaking first on each radio connection as the firmware does on
// NRF "connect". Its join counter and console lines outlive each connection, as a board's do.
import * as deviceCbor from "../../firmware/cbor.ts";
import { SUITE_AES_CCM_16_64_128 } from "../../firmware/crypto/types.ts";
import { Handset, type Platform } from "../../firmware/handset.ts";
import { crc32 } from "../../emulator/espruino-crypto.ts";
import type { BackingPipe, PeripheralBacking } from "./ble-double.ts";
import { nodeDeviceCrypto } from "./harness.ts";

/** A handset: the firmware's engine in Node, behind a peripheral of the double. Its counter and its
 *  log outlive each radio connection, as a board's Storage and console do. */
export class EngineHandset implements PeripheralBacking {
  readonly lines: string[] = [];
  counter = 0;
  readonly h: Handset;
  private cancelled: ((e: Error) => void) | undefined;

  constructor(readonly id: string, rootKey: Uint8Array) {
    const p: Platform = {
      crypto: nodeDeviceCrypto(),
      cbor: deviceCbor,
      crc32,
      counter: (n) => (n === undefined ? this.counter : (this.counter = n)),
      now: () => Date.now() / 1000,
      setTimeout: (fn, ms) => setTimeout(fn, ms),
      clearTimeout: (t) => clearTimeout(t),
      log: (l) => this.lines.push(l),
      firmware: "node-ble",
    };
    this.h = new Handset({ id, rootKey, lifetime: 600, suite: SUITE_AES_CCM_16_64_128, suites: [[SUITE_AES_CCM_16_64_128, 1]] }, p);
  }

  open(): Promise<BackingPipe> {
    let data: (b: Buffer) => void = () => {};
    let closed: () => void = () => {};
    let open = true;
    const close = () => {
      if (!open) return;
      open = false;
      this.h.down();
      setImmediate(closed);
    };
    // The handset speaks first, as the firmware does on NRF "connect".
    setImmediate(() => { if (open) this.h.up({ write: (b) => { if (open) data(Buffer.from(b)); } }); });
    return Promise.resolve({
      write: (b) => { if (open) this.h.receive(new Uint8Array(b)); },
      onData: (cb) => { data = cb; },
      onClose: (cb) => { closed = cb; },
      close,
    });
  }

  cancel(): void {
    this.cancelled?.(new Error("cancelled"));
  }
}

