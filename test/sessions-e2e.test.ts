// Sessions end to end: two emulated Puck.js handsets running the real bundle connect by name,
// exchange 1,000 messages each way, rekey in the middle without losing or reordering one, and
// terminate; afterwards neither holds an SA.
import { test } from "node:test";
import assert from "node:assert/strict";
import { buildFirmware } from "../flash/build.ts";
import { startSim } from "../emulator/sim.ts";
import type { EmulatedDevice } from "../emulator/device.ts";
import { startGateway, tempDir, until } from "./support/harness.ts";

const TOTAL = 1000;
const BATCH = 40;

/** The application both handsets run, installed over the console as a user would. */
const APP = `
global.N = 0; global.BAD = 0; global.SENT = 0; global.SPI = 0; global.CLOSED = [];
KP.onRequest = function (from, app) { return from === "sim-1" && app === "chat"; };
KP.onConnect = function (spi, peer, app, replaces) { SPI = spi; };
KP.onMessage = function (d, spi) { if (E.toString(d) !== "m" + N) BAD++; N++; };
KP.onClose = function (spi, reason) { CLOSED.push(reason); };
global.burst = function (n) {
  for (var i = 0; i < n && SENT < ${TOTAL}; i++) { if (!KP.send(SPI, E.toUint8Array("m" + SENT))) break; SENT++; }
  return SENT;
};
1`;

test("two handsets connect by name, exchange 1,000 messages each way across a rekey, and terminate", async () => {
  const build = await buildFirmware({ board: "puckjs", outDir: tempDir("kp-build-") });
  assert.ok(build.ok, build.problems.join("\n"));
  // A message limit of 1,000 per direction: each side asks for a rekey at 800, in the middle of the run.
  const t = await startGateway({ sessions: { limit: TOTAL, lifetime: 3600 } });
  await t.gw.policy.add("sim-1", "sim-2", "chat", "allow");
  const sim = await startSim({ dataDir: t.dataDir, gateway: t.gw.address, count: 2, board: "puckjs", bundle: build.code });
  const [a, b] = sim.devices as [EmulatedDevice, EmulatedDevice];
  const g = (d: EmulatedDevice, expr: string) => d.eval(expr) as number;
  try {
    await until(() => a.eval("KP.status().registered") === true && b.eval("KP.status().registered") === true, "both registered", 15000);
    a.eval(APP);
    b.eval(APP);
    a.eval('KP.connect("sim-2", "chat")');
    await until(() => g(a, "SPI") !== 0 && g(b, "SPI") !== 0, "both ends connected", 10000);
    const firstSpi = g(a, "SPI");
    assert.equal(g(b, "SPI"), firstSpi, "one SA, one SPI at both ends");

    while (g(a, "SENT") < TOTAL || g(b, "SENT") < TOTAL) {
      const sa = g(a, `burst(${BATCH})`);
      const sb = g(b, `burst(${BATCH})`);
      // Wait for both bursts to arrive before the next: the rekey has time to complete in between.
      await until(() => g(b, "N") === sa && g(a, "N") === sb, `delivery of ${sa}/${sb}`, 10000);
    }
    assert.equal(g(a, "N"), TOTAL);
    assert.equal(g(b, "N"), TOTAL);
    assert.equal(g(a, "BAD") + g(b, "BAD"), 0, "every message arrived, in order");
    assert.notEqual(g(a, "SPI"), firstSpi, "the SA was replaced during the run");
    assert.ok(t.events("session-rekeyed").length >= 1);
    assert.equal(g(a, "KP.status().dropped") + g(b, "KP.status().dropped"), 0, "no frame was dropped");

    a.eval("KP.close(SPI)");
    await until(() => g(b, "CLOSED.length") === 1, "the peer is told", 10000);
    assert.equal(g(b, "CLOSED[0]"), 1, "closed by a bye");
    assert.equal(g(a, "KP.sas.length"), 0);
    assert.equal(g(b, "KP.sas.length"), 0);
    assert.equal(t.gw.sessions.sessions.size === 0 || [...t.gw.sessions.sessions.values()].every((s) => s.state === "retiring"), true);
  } finally {
    sim.stop();
    await t.gw.stop();
  }
});
