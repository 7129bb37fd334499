// The real-interpreter tier: an application bundled with the runtime (`keyproxy build --app`) runs on
// the real interpreter. Two Puck.js handsets carry examples/device/puckjs-button.ts; a press of one's
// button reaches the other over an end-to-end session through a gateway process, as the policy
// allows.
//
// The Linux build of Espruino has no button (no BTN, and a watch on a pin never fires), so the test
// gives the pressing handset a stand-in in a boot file of its own (.boot1, run before .bootcde as on
// a board): BTN, and a setWatch that keeps the watches on BTN for pressButton() to call, as a press
// would. The stand-in is the test's, in Storage beside the firmware; it is never in the bundle.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import path from "node:path";
import { promisify } from "node:util";
import { fileURLToPath } from "node:url";
import { flashCommand } from "../cli/flash-cmd.ts";
import { flashDevice } from "../flash/flash.ts";
import { provisionDevice } from "../flash/provision.ts";
import { crc32, EspruinoSerial } from "../flash/serial.ts";
import { bootZero, RealDevice } from "../interpreter/device.ts";
import { INTERPRETER_ANSWER_MS } from "../interpreter/handsets.ts";
import { CLI } from "./support/process.ts";
import { tempDir } from "./support/harness.ts";
import { bundleFor, realRig, realTest, type RealRig } from "./support/real.ts";

const execFileP = promisify(execFile);
const ROOT = fileURLToPath(new URL("..", import.meta.url));
const APP = path.join(ROOT, "examples", "device", "puckjs-button.ts");

/** The button of a Puck.js, for an interpreter that has none. */
const BUTTON_STAND_IN = `(function(){var w=[];global.BTN={};var sw=setWatch;
global.setWatch=function(f,p,o){if(p!==BTN)return sw(f,p,o);w.push(f);return 1000+w.length;};
global.pressButton=function(){var t=getTime();w.forEach(function(f){f({state:true,time:t,lastTime:t-1});});return w.length;};})();`;

/** A Puck.js flashed with the application's bundle and provisioned as a user does it (`keyproxy
 *  flash`'s and `keyproxy provision`'s code over a pseudo-terminal), with the test's files in Storage
 *  first: .boot0 as the harness writes it (RNG seed, BLE stand-ins), and `files` (the button's
 *  stand-in, the application's settings). Without a BTN the example would stop at "BTN is not
 *  defined", as it would on a board that has no button. */
async function appHandset(rig: RealRig, id: string, bundle: string, files: Record<string, string>): Promise<RealDevice> {
  // The flash gets one more try on a fresh device if the interpreter itself crashed while taking it
  // (the host's fault, not the firmware's: docs/INTERPRETER.md), as the harness's golden image does.
  for (let attempt = 1; ; attempt++) {
    const dev = new RealDevice({ board: "puckjs", dir: tempDir(`kp-real-${id}-`), name: id });
    rig.handsets.push(dev);
    await dev.start();
    try {
      await dev.withSerial(async (tty) => {
        const link = await EspruinoSerial.open({ path: tty, baudRate: 115200, answerMs: INTERPRETER_ANSWER_MS, firstAnswerMs: INTERPRETER_ANSWER_MS });
        try {
          const all: Record<string, string> = { ".boot0": bootZero("puckjs"), ...files };
          for (const name of Object.keys(all)) await link.writeFile(name, new Uint8Array(Buffer.from(all[name], "latin1")));
        } finally {
          await link.close();
        }
        await flashDevice({ port: tty, board: "puckjs", bundle, baudRate: 115200, answerMs: INTERPRETER_ANSWER_MS });
      });
    } catch (e) {
      const crash = dev.lines.find((l) => /^\[harness\] the interpreter exited \(SIG/.test(l));
      await dev.powerOff();
      if (!crash || attempt > 1) throw new Error(`flashing ${id}: ${(e as Error).message}\n${dev.lines.slice(-10).join("\n")}`);
      console.log(`# ${id}: ${crash} while being flashed; flashing a fresh one once more`);
      continue;
    }
    await dev.withSerial((tty) => provisionDevice({ port: tty, board: "puckjs", id, gateway: rig.address, dataDir: rig.dataDir, baudRate: 115200, answerMs: INTERPRETER_ANSWER_MS }));
    return dev;
  }
}

realTest("puckjs: the example application's button press reaches its peer over an end-to-end session", ["puckjs"], async () => {
  const rig = await realRig();
  try {
    const bundle = await bundleFor("puckjs", APP);
    // Both are Pucks, with a button; the pressing one knows its peer from button.json, as the
    // example says.
    const a = await appHandset(rig, "puck-a", bundle, { ".boot1": BUTTON_STAND_IN, "button.json": JSON.stringify({ peer: "puck-b" }) });
    const b = await appHandset(rig, "puck-b", bundle, { ".boot1": BUTTON_STAND_IN });
    await a.waitFor(/^KP registered for 3600s$/, 60_000);
    await b.waitFor(/^KP registered for 3600s$/, 60_000);
    await a.waitFor(/^button: ready, peer puck-b$/);
    await b.waitFor(/^button: ready, peer peer$/);

    await execFileP(process.execPath, [CLI, "policy", "allow", "--from", "puck-a", "--to", "puck-b", "--app", "button", "--data-dir", rig.dataDir]);

    // The first press asks for a session and sends once it is up; the second goes over it.
    const since = b.lines.length;
    assert.equal(await a.eval("pressButton()"), 1, "the application watches the button");
    assert.match(await b.waitFor(/^button: /, 30_000, since), /^button: puck-a says press 1$/);
    const up = rig.gw.events("session-up").find((e) => e.device === "puck-a" && e.peer === "puck-b");
    assert.ok(up, "the gateway set up the session");
    assert.equal(up.app, "button");
    const next = b.lines.length;
    await a.eval("pressButton()");
    assert.match(await b.waitFor(/^button: /, 30_000, next), /^button: puck-a says press 2$/);
    assert.equal(rig.gw.events("session-requested").filter((e) => e.device === "puck-a").length, 1, "one session for both presses");
    // One session at the peer, the one the presses went over.
    assert.equal((await b.eval<{ sas: number }>("KP.status()")).sas, 1);
  } finally {
    await rig.stop();
  }
}, 420_000);

realTest("puckjs: with an application, a device that is not provisioned boots without starting it", ["puckjs"], async () => {
  const bundle = await bundleFor("puckjs", APP);
  const dev = new RealDevice({ board: "puckjs", dir: tempDir("kp-real-app-"), name: "unprovisioned" });
  try {
    await dev.start();
    await dev.withSerial((tty) => flashDevice({ port: tty, board: "puckjs", bundle, baudRate: 115200, answerMs: INTERPRETER_ANSWER_MS }));
    await dev.waitFor(/^KP application not started: no handset$/);
    const boot = dev.lines.slice(dev.bootLine);
    assert.ok(boot.some((l) => /^KP not provisioned/.test(l)), boot.join("\n"));
    assert.equal(boot.find((l) => /Uncaught|Error/.test(l)), undefined, "nothing thrown at boot");
    assert.equal(await dev.eval("typeof KP"), "undefined");
    assert.equal(await dev.eval("1+1"), 2, "the console answers");
  } finally {
    await dev.powerOff();
  }
});

realTest("esp32: keyproxy flash --app builds the firmware with the application and flashes it", ["esp32"], async () => {
  const app = path.join(ROOT, "examples", "device", "esp32-sensor.ts");
  const dev = new RealDevice({ board: "esp32", dir: tempDir("kp-real-app-"), name: "esp32-app" });
  try {
    await dev.start();
    const code = await dev.withSerial((tty) => flashCommand(["--port", tty, "--board", "esp32", "--app", app, "--baud", "115200", "--answer-timeout", String(INTERPRETER_ANSWER_MS / 1000)]));
    assert.equal(code, 0);
    const built = await bundleFor("esp32", app);
    assert.equal(await dev.eval(`require("Storage").read(".bootcde").length`), built.length);
    assert.equal(await dev.eval(`E.CRC32(require("Storage").read(".bootcde"))`), crc32(new Uint8Array(Buffer.from(built, "latin1"))));
    await dev.waitFor(/^KP application not started: no handset$/);
  } finally {
    await dev.powerOff();
  }
});
