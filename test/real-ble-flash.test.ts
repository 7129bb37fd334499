// The real-interpreter tier: a Puck.js flashed and provisioned over Bluetooth LE (`--port ble:<name>`,
// issue 10 scope 3), as `keyproxy flash` and `keyproxy provision` do it, then it registers with its
// gateway. The radio is the test's double at @stoprocent/noble's API (test/support/ble-double.ts); behind
// it is the real interpreter's own console, the one a central reaches on a stock Puck.js: so the
// unmodified bundle and kp.cfg travel in 20-byte acknowledged writes as Espruino's file packets, and the
// interpreter stores, checks and runs them.
import assert from "node:assert/strict";
import { SerialPort } from "serialport";
import { flashDevice } from "../flash/flash.ts";
import { provisionDevice } from "../flash/provision.ts";
import { EspruinoSerial } from "../flash/serial.ts";
import { bootZero, RealDevice } from "../interpreter/device.ts";
import { INTERPRETER_ANSWER_MS } from "../interpreter/handsets.ts";
import { BleDouble, DoublePeripheral, type BackingPipe, type PeripheralBacking } from "./support/ble-double.ts";
import { tempDir } from "./support/harness.ts";
import { bundleFor, realRig, realTest } from "./support/real.ts";

/** The console behind the radio: the interpreter's console on its pseudo-terminal, opened for each
 *  connection as a central's connection gets the console on a stock board. */
function ttyBacking(tty: string): PeripheralBacking {
  return {
    open: () => new Promise<BackingPipe>((resolve, reject) => {
      const port = new SerialPort({ path: tty, baudRate: 115200, autoOpen: false });
      port.open((err) => {
        if (err) return reject(err);
        resolve({
          write: (b) => void port.write(b),
          onData: (cb) => void port.on("data", cb),
          onClose: (cb) => void port.on("close", cb),
          close: () => {
            if (port.isOpen) port.close();
          },
        });
      });
    }),
    cancel: () => {},
  };
}

realTest("puckjs: flashed and provisioned over Bluetooth (the BLE double in front of the real console), it joins and registers", ["puckjs"], async () => {
  const rig = await realRig();
  const dev = new RealDevice({ board: "puckjs", dir: tempDir("kp-real-bleflash-"), name: "ble-flash" });
  rig.handsets.push(dev);
  try {
    const bundle = await bundleFor("puckjs");
    await dev.start();
    await dev.withSerial(async (tty) => {
      // The board's environment first, over the cable, as every real-tier handset gets it: .boot0 with
      // the RNG seed and the BLE stand-ins (interpreter/device.ts), which the Linux build lacks.
      const wired = await EspruinoSerial.open({ path: tty, baudRate: 115200, answerMs: INTERPRETER_ANSWER_MS, firstAnswerMs: INTERPRETER_ANSWER_MS });
      try {
        await wired.writeFile(".boot0", new Uint8Array(Buffer.from(bootZero("puckjs"), "latin1")));
      } finally {
        await wired.close();
      }
      const noble = new BleDouble(20);
      const peripheral = noble.add(new DoublePeripheral("c0ffee0000aa", { localName: "Puck.js 00aa" }, -55, ttyBacking(tty)));
      const r = await flashDevice({ port: "ble:Puck.js 00aa", noble, board: "puckjs", bundle, answerMs: INTERPRETER_ANSWER_MS, reboot: false });
      assert.equal(r.bytes, Buffer.byteLength(bundle));
      // Provisioning reboots the device at its end, into what came over the radio.
      await provisionDevice({ port: "ble:c0:ff:ee:00:00:aa", noble, keyOverBle: true, board: "puckjs", id: "ble-flash", gateway: rig.address, dataDir: rig.dataDir, answerMs: INTERPRETER_ANSWER_MS });
      // The files went as packets in pieces of at most 20 bytes, and the key never came back.
      const sent = Buffer.concat(peripheral.writes).toString("latin1");
      assert.ok(peripheral.writes.every((w) => w.length <= 20));
      assert.match(sent, /\x10\x01[\x60-\x7f][\s\S]\{"fn":"kp\.fw\.new"/);
      assert.match(sent, /\x10\x01[\x60-\x7f][\s\S]\{"fn":"kp\.cfg\.new"/);
      const key = /"key":"([0-9a-f]{32})"/.exec(sent)?.[1];
      assert.ok(key, "kp.cfg went out");
      assert.ok(!Buffer.concat(peripheral.notified).toString("latin1").includes(key!), "the key never comes back across the radio");
      await peripheral.disconnectAsync();
    });
    // The unmodified bundle joins and registers.
    await dev.waitFor(/^KP registered for 3600s$/, 60_000);
  } finally {
    await rig.stop();
  }
});
