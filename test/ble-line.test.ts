// The console line over Bluetooth LE (flash/ble-line.ts) on its own: which device a `ble:` port names,
// what it says when it finds none or cannot connect (hostile advertised names escaped), the pieces it
// writes, and that a library it loaded itself is released (its HCI socket would keep the command's
// process alive) while a caller's is left alone. The radio is the double at noble's API.
import { test } from "node:test";
import assert from "node:assert/strict";
import { blePortTarget, openBleLine } from "../flash/ble-line.ts";
import { SerialError } from "../flash/port-errors.ts";
import { hasPacketUpload } from "../flash/serial.ts";
import { BleDouble, DoublePeripheral, type BackingPipe, type PeripheralBacking } from "./support/ble-double.ts";

/** A handset that answers nothing and keeps what it was sent. */
function recordingBacking(got: Buffer[]): PeripheralBacking {
  return {
    open: async (): Promise<BackingPipe> => ({
      write: (b) => void got.push(Buffer.from(b)),
      onData: () => {},
      onClose: () => {},
      close: () => {},
    }),
    cancel: () => {},
  };
}

/** A double whose stop() is counted, as @stoprocent/noble's releases the adapter. */
function stoppable(noble: BleDouble): BleDouble & { stops: number; stop(): void } {
  const n = noble as BleDouble & { stops: number; stop(): void };
  n.stops = 0;
  n.stop = () => void n.stops++;
  return n;
}

test("ble: ports: the device named, a bare ble: refused, a serial path is not one", () => {
  assert.equal(blePortTarget("ble:kp-alice"), "kp-alice");
  assert.equal(blePortTarget("ble:c0:ff:ee:00:00:01"), "c0:ff:ee:00:00:01");
  assert.equal(blePortTarget("/dev/ttyUSB0"), undefined);
  assert.throws(() => blePortTarget("ble:"), (e: Error) => e instanceof SerialError && /ble:<name it advertises>/.test(e.message));
  assert.throws(() => blePortTarget("ble:  "), SerialError);
});

test("found by advertised name or by address (any case, with or without colons); writes cut to the MTU", async () => {
  const got: Buffer[] = [];
  const noble = new BleDouble(10);
  const p = noble.add(new DoublePeripheral("c0ffee0000aa", { localName: "Puck.js 00aa" }, -50, recordingBacking(got)));
  for (const port of ["ble:Puck.js 00aa", "ble:C0:FF:EE:00:00:AA", "ble:c0ffee0000aa"]) {
    const line = await openBleLine(port, { noble, scanMs: 2000 });
    assert.equal(line.isOpen, true);
    await line.write(Buffer.alloc(45, 0x41));
    await line.close();
    assert.equal(line.isOpen, false);
  }
  assert.deepEqual(p.writes.slice(0, 3).map((w) => w.length), [20, 20, 5], "20-byte writes at the default MTU");
  assert.equal(Buffer.concat(got).length, 3 * 45);
});

test("no such device: a clear error within the scan time, naming what was seen, hostile names escaped; the library it loaded is released", async () => {
  const noble = stoppable(new BleDouble(10));
  noble.add(new DoublePeripheral("0a0b0c0d0e0f", { localName: "evil\x1b[2J\u202ename" }, -70, recordingBacking([])));
  await assert.rejects(openBleLine("ble:kp-nobody", { load: async () => noble, scanMs: 300 }), (e: Error) =>
    e instanceof SerialError
    && /no Bluetooth device "kp-nobody" found within 0\.3 s/.test(e.message)
    && e.message.includes("evil\\\\x1b[2J\\\\u202ename")
    && !/[\x1b\u202e]/.test(e.message));
  assert.equal(noble.stops, 1, "the library it loaded is let go");
  assert.equal(noble.isScanning, false, "scanning stopped");
});

test("the adapter off: the error names the fix; a device out of range: the connect gives up in time", async () => {
  const off = new BleDouble(10);
  off.state = "poweredOff";
  await assert.rejects(openBleLine("ble:kp-x", { noble: off }), (e: Error) => e instanceof SerialError && /cannot use Bluetooth for ble:kp-x: the Bluetooth adapter is off/.test(e.message));

  const noble = stoppable(new BleDouble(10));
  const p = noble.add(new DoublePeripheral("c0ffee0000bb", { localName: "kp-far" }, -95, recordingBacking([])));
  // Seen once, then gone before the connect completes.
  const seen = new Promise<void>((r) => noble.once("discover", () => r()));
  const opening = openBleLine("ble:kp-far", { load: async () => noble, scanMs: 2000, connectMs: 300 });
  await seen;
  p.walkAway();
  await assert.rejects(opening, (e: Error) => e instanceof SerialError && /could not connect to ble:kp-far within 0\.3 s/.test(e.message));
  assert.equal(p.state, "disconnected");
  assert.equal(noble.stops, 1);
});

test("a link lost mid-session says so; the caller's own library is never stopped, the line's is on close", async () => {
  const own = stoppable(new BleDouble(10));
  const p = own.add(new DoublePeripheral("c0ffee0000cc", { localName: "kp-c" }, -60, recordingBacking([])));
  const line = await openBleLine("ble:kp-c", { noble: own });
  const lost = new Promise<string>((r) => line.onClose(r));
  p.walkAway();
  assert.match(await lost, /the Bluetooth link to ble:kp-c was lost/);
  assert.equal(line.isOpen, false);
  await line.close();
  assert.equal(own.stops, 0, "a library the caller handed in stays the caller's");

  const loaded = stoppable(new BleDouble(10));
  loaded.add(new DoublePeripheral("c0ffee0000dd", { localName: "kp-d" }, -60, recordingBacking([])));
  const line2 = await openBleLine("ble:kp-d", { load: async () => loaded });
  assert.equal(loaded.stops, 0);
  await line2.close();
  assert.equal(loaded.stops, 1, "released on close");
});

test("file packets only from Espruino 2v25 on (older firmware gets Storage.write lines)", () => {
  for (const v of ["2v25", "2v29", "2v29.12", "3v00"]) assert.equal(hasPacketUpload(v), true, v);
  for (const v of ["2v24", "2v09.100", "1v99", "", "unknown", "v30"]) assert.equal(hasPacketUpload(v), false, v);
});
