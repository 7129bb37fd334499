// `--port ble:<name or address>`: the console of a Puck.js or a Bangle.js 2 over the Nordic UART, as
// the Espruino IDE and EspruinoTools reach it (core/serial_noble.js): scan for the device by the name
// it advertises (or its address), connect, subscribe to its TX, write to its RX in pieces that fit the
// link's MTU, each write acknowledged by the device (a write with response: that is the flow control;
// a BLE UART has no XON/XOFF). The REPL protocol on top is flash/serial.ts's, the same as over a cable.
//
// The device gives its console to a central only when its firmware lets it: a stock Espruino always
// does; a handset running keyproxy only when it was provisioned with --ble-repl (the default keeps the
// REPL, and with it the root key, off Bluetooth: docs/INTERPRETER.md, "The BLE console is shared").

import { loadNoble, poweredOn } from "../gateway/ble/load-noble.ts";
import type { Noble, NobleCharacteristic, NoblePeripheral } from "../gateway/ble/noble-api.ts";
import { NUS_RX, NUS_SERVICE, NUS_TX, pieces } from "../gateway/ble/nus.ts";
import { forTerminal } from "../gateway/log/terminal.ts";
import type { ConsoleLine } from "./console-line.ts";
import { SerialError } from "./port-errors.ts";

export const BLE_PORT_PREFIX = "ble:";
/** How long to look for the device before saying it is not there. */
export const BLE_SCAN_MS = 10_000;
/** How long connecting and finding the UART may take. */
export const BLE_CONNECT_MS = 10_000;
/** What a BLE UART carries at best with acknowledged 20-byte writes (one per connection event or
 *  two, at Espruino's default 7.5-20 ms interval): for timeouts only, on the safe side. */
export const BLE_BYTES_PER_SECOND = 1000;

/** The device named by a `ble:` port, or undefined for a serial port. */
export function blePortTarget(port: string): string | undefined {
  if (!port.startsWith(BLE_PORT_PREFIX)) return undefined;
  const target = port.slice(BLE_PORT_PREFIX.length).trim();
  if (target === "") throw new SerialError(`--port ${BLE_PORT_PREFIX} needs a device: ${BLE_PORT_PREFIX}<name it advertises> or ${BLE_PORT_PREFIX}<address>, e.g. ble:kp-alice or ble:c0:ff:ee:00:00:01`);
  return target;
}

/** An address written with or without colons, in lower case: how noble's id writes it on Linux. */
const bareAddress = (s: string) => s.toLowerCase().replace(/[:-]/g, "");

function matches(p: NoblePeripheral, target: string): boolean {
  return p.advertisement.localName === target || bareAddress(p.id) === bareAddress(target);
}

export interface BleLineOptions {
  /** The BLE library, or a test double at its API, owned by the caller. Default: loaded now (load). */
  noble?: Noble;
  /** How the library is loaded when no noble is given, and then released (stop()) when the line is
   *  done with. Default: @stoprocent/noble (gateway/ble/load-noble.ts). */
  load?: () => Promise<Noble>;
  scanMs?: number;
  connectMs?: number;
}

/** A time for a message: "0.3 s", "10 s". */
const seconds = (ms: number) => `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;

function withDeadline<T>(p: Promise<T>, ms: number, why: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new SerialError(why())), ms);
  });
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}

/** Scans until a device advertising `target` (its name or address) is seen. */
async function find(noble: Noble, target: string, scanMs: number): Promise<NoblePeripheral> {
  const seen = new Set<string>();
  let onDiscover: ((p: NoblePeripheral) => void) | undefined;
  const found = new Promise<NoblePeripheral>((resolve) => {
    onDiscover = (p) => {
      if (matches(p, target)) resolve(p);
      else if (seen.size < 20) seen.add(p.advertisement.localName ?? p.id);
    };
    noble.on("discover", onDiscover);
  });
  try {
    await noble.startScanningAsync([], true);
    return await withDeadline(found, scanMs, () => {
      const names = [...seen].map((n) => JSON.stringify(forTerminal(n))).join(", ");
      return `no Bluetooth device ${JSON.stringify(forTerminal(target))} found within ${seconds(scanMs)} (${names ? `seen: ${names}` : "none seen"}); is it in range and advertising, and not connected to another central (the Espruino IDE, a phone, a keyproxy gateway with --ble)?`;
    });
  } finally {
    if (onDiscover) noble.removeListener("discover", onDiscover);
    await noble.stopScanningAsync().catch(() => {});
  }
}

/** The UART's two characteristics on a connected device. */
async function uart(p: NoblePeripheral, name: string): Promise<{ rx: NobleCharacteristic; tx: NobleCharacteristic }> {
  const { characteristics } = await p.discoverSomeServicesAndCharacteristicsAsync([NUS_SERVICE], [NUS_RX, NUS_TX]);
  const rx = characteristics.find((c) => c.uuid === NUS_RX);
  const tx = characteristics.find((c) => c.uuid === NUS_TX);
  if (!rx || !tx) throw new SerialError(`${name} has no Nordic UART service: not an Espruino device, or one whose firmware turned its UART off (NRF.setServices(..., {uart:false}))`);
  return { rx, tx };
}

/** Connects and finds the UART, within connectMs; disconnected again on failure. */
async function connect(p: NoblePeripheral, name: string, connectMs: number): Promise<{ rx: NobleCharacteristic; tx: NobleCharacteristic }> {
  try {
    return await withDeadline((async () => {
      await p.connectAsync();
      return uart(p, name);
    })(), connectMs, () => `could not connect to ${name} within ${seconds(connectMs)} (out of range, or busy with another central?)`);
  } catch (e) {
    await p.disconnectAsync().catch(() => {});
    throw e instanceof SerialError ? e : new SerialError(`could not connect to ${name}: ${(e as Error).message}`);
  }
}

/** Opens the console of the device a `ble:` port names. */
export async function openBleLine(port: string, o: BleLineOptions = {}): Promise<ConsoleLine> {
  const target = blePortTarget(port);
  if (target === undefined) throw new SerialError(`${port} is not a ${BLE_PORT_PREFIX} port`);
  const name = `${BLE_PORT_PREFIX}${forTerminal(target)}`;
  let noble: Noble;
  try {
    noble = o.noble ? await poweredOn(o.noble, 5000) : await (o.load ?? loadNoble)();
  } catch (e) {
    throw new SerialError(`cannot use Bluetooth for ${name}: ${(e as Error).message}`);
  }
  // The library we loaded holds the adapter's HCI socket, which would keep the process alive after
  // the command: let it go when the line is done with (a double handed in is the caller's).
  const release = () => {
    if (!o.noble) noble.stop?.();
  };
  let p: NoblePeripheral;
  let uartFound: { rx: NobleCharacteristic; tx: NobleCharacteristic };
  try {
    p = await find(noble, target, o.scanMs ?? BLE_SCAN_MS);
    uartFound = await connect(p, name, o.connectMs ?? BLE_CONNECT_MS);
  } catch (e) {
    release();
    throw e;
  }
  const { rx, tx } = uartFound;

  let open = true;
  const closers: ((why: string) => void)[] = [];
  p.once("disconnect", () => {
    if (!open) return;
    open = false;
    for (const fn of closers) fn(`the Bluetooth link to ${name} was lost (out of range, or the device disconnected)`);
  });
  const readers: ((s: string) => void)[] = [];
  tx.on("data", (d: Buffer) => {
    const s = d.toString("latin1");
    for (const fn of readers) fn(s);
  });
  await tx.subscribeAsync();

  return {
    name,
    bytesPerSecond: BLE_BYTES_PER_SECOND,
    silenceHint: "is its console on Bluetooth? A handset running keyproxy keeps its REPL off Bluetooth unless it was provisioned with --ble-repl; flash it over serial, or provision it with --ble-repl",
    get isOpen() {
      return open;
    },
    write: async (bytes) => {
      // One acknowledged write at a time: the device takes the next only when it has the last.
      for (const piece of pieces(bytes, p.mtu)) await rx.writeAsync(Buffer.from(piece), false);
    },
    onData: (fn) => void readers.push(fn),
    onClose: (fn) => void closers.push(fn),
    close: async () => {
      if (open) {
        open = false;
        tx.removeAllListeners("data");
        await p.disconnectAsync().catch(() => {});
      }
      release();
    },
  };
}
