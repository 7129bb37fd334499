// Every board's firmware within its budget: bundle bytes, and estimated Espruino variables at rest
// after a join and a registration (the emulator's calibrated model, docs/EMULATOR.md).
import { test } from "node:test";
import assert from "node:assert/strict";
import { BOARDS } from "../boards/index.ts";
import { buildFirmware } from "../flash/build.ts";
import { startSim } from "../emulator/sim.ts";
import { startBroker } from "../gateway/broker.ts";
import { Fleet } from "../gateway/fleet.ts";
import { fleetGateway } from "./support/fleet-rig.ts";
import { startGateway, tempDir, until } from "./support/harness.ts";

for (const board of Object.values(BOARDS)) {
  test(`${board.id}: bundle within ${board.budget.bundleBytes} bytes, at most ${board.budget.varsAtRest} variables at rest when registered`, async () => {
    const build = await buildFirmware({ board: board.id, outDir: tempDir("kp-mem-") });
    assert.ok(build.ok, build.problems.join("\n"));
    assert.ok(build.bytes <= board.budget.bundleBytes, `${build.bytes} bytes`);
    const t = await startGateway();
    const sim = await startSim({ dataDir: t.dataDir, gateway: t.gw.address, count: 1, board: board.id, bundle: build.code });
    const dev = sim.devices[0];
    try {
      await until(() => (dev.eval("KP.status().registered") as boolean) === true, "registration", 15000);
      await new Promise((r) => setTimeout(r, 200));
      const { estimatedVars, totalVars } = dev.memory();
      assert.equal(totalVars, board.vars);
      assert.ok(estimatedVars > 0, "the estimate measured something");
      assert.ok(estimatedVars <= board.budget.varsAtRest, `${estimatedVars} estimated variables at rest, budget ${board.budget.varsAtRest}`);
      // The handset reported its firmware id and process.memory().usage (here: the same model) when
      // it registered, and the gateway kept them.
      const reg = t.gw.store.getRegistration("sim-1")!;
      assert.equal(reg.firmware, build.firmware);
      assert.ok(reg.memoryUsed! > 0 && reg.memoryUsed! <= totalVars, `${reg.memoryUsed} variables reported in use`);
    } finally {
      sim.stop();
      await t.gw.stop();
    }
  });
}

test("puckjs: at most 1,000 variables at rest with one open SA, at both ends", async () => {
  const board = BOARDS.puckjs;
  const build = await buildFirmware({ board: board.id, outDir: tempDir("kp-mem-") });
  assert.ok(build.ok, build.problems.join("\n"));
  const t = await startGateway();
  t.gw.policy.add("sim-1", "sim-2", "app", "allow");
  const sim = await startSim({ dataDir: t.dataDir, gateway: t.gw.address, count: 2, board: board.id, bundle: build.code });
  const [a, b] = sim.devices;
  try {
    await until(() => a.eval("KP.status().registered") === true && b.eval("KP.status().registered") === true, "registration", 15000);
    // The callee's application: a hook that accepts, as a real application would set one.
    b.eval("KP.onRequest = function (from, app) { return app === 'app'; }; 1");
    a.eval('KP.connect("sim-2", "app"); 1');
    await until(() => a.eval("KP.sas.length === 1 && KP.sas[0].ready") === true && b.eval("KP.sas.length === 1 && KP.sas[0].ready") === true, "the SA", 15000);
    await new Promise((r) => setTimeout(r, 200));
    for (const [role, dev] of [["caller", a], ["callee", b]] as const) {
      const { estimatedVars } = dev.memory();
      assert.ok(estimatedVars <= board.budget.varsAtRest, `${role}: ${estimatedVars} estimated variables with one SA, budget ${board.budget.varsAtRest}`);
    }
  } finally {
    sim.stop();
    await t.gw.stop();
  }
});

test("puckjs: at most 1,000 variables at rest with one open SA across gateways (longer peer names), at both ends", async () => {
  const board = BOARDS.puckjs;
  const build = await buildFirmware({ board: board.id, outDir: tempDir("kp-mem-") });
  assert.ok(build.ok, build.problems.join("\n"));
  const broker = await startBroker({ host: "127.0.0.1", port: 0 });
  const now = () => Math.floor(Date.now() / 1000);
  const fleet = Fleet.create(tempDir("kp-mem-fleet-"), "kp-mem", now());
  const north = await fleetGateway("north.example", fleet, broker, now);
  const south = await fleetGateway("south.example", fleet, broker, now);
  const simN = await startSim({ dataDir: north.dataDir, gateway: north.gw.address, count: 1, board: board.id, bundle: build.code });
  const simS = await startSim({ dataDir: south.dataDir, gateway: south.gw.address, count: 1, board: board.id, bundle: build.code });
  const [a, b] = [simN.devices[0], simS.devices[0]];
  try {
    await until(() => a.eval("KP.status().registered") === true && b.eval("KP.status().registered") === true, "registration", 15000);
    b.eval("KP.onRequest = function (from, app) { return app === 'app'; }; 1");
    a.eval('KP.connect("sim-1@south.example", "app"); 1');
    await until(() => a.eval("KP.sas.length === 1 && KP.sas[0].ready") === true && b.eval("KP.sas.length === 1 && KP.sas[0].ready") === true, "the SA", 15000);
    assert.equal(a.eval("KP.sas[0].peer"), "sim-1@south.example");
    await new Promise((r) => setTimeout(r, 200));
    for (const [role, dev] of [["caller", a], ["callee", b]] as const) {
      const { estimatedVars } = dev.memory();
      assert.ok(estimatedVars <= board.budget.varsAtRest, `${role}: ${estimatedVars} estimated variables with one SA across gateways, budget ${board.budget.varsAtRest}`);
    }
  } finally {
    simN.stop();
    simS.stop();
    await north.gw.stop();
    await south.gw.stop();
    await broker.close();
  }
});
