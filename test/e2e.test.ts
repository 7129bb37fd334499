// End to end, as a user runs it: a gateway process started through the CLI, two handsets booting the
// real Puck.js bundle in the emulator (through the BLE UART test double), join and register; then the
// gateway process is restarted on the same data directory and everything it stored is still there.
import { test } from "node:test";
import assert from "node:assert/strict";
import { buildFirmware } from "../flash/build.ts";
import { startSim } from "../emulator/sim.ts";
import { openStore } from "../gateway/gateway.ts";
import { verifyCertificate } from "../gateway/cwt.ts";
import { loadOrCreateGatewayKey } from "../gateway/identity.ts";
import { startGatewayProcess } from "./support/process.ts";
import { tempDir, until } from "./support/harness.ts";

type Status = { state: string; registered: boolean; expiresIn: number; certId: Uint8Array; joins: number };

test("two Puck.js handsets join and register with a gateway process; its state survives a restart", async () => {
  const build = await buildFirmware({ board: "puckjs", outDir: tempDir("kp-build-") });
  assert.ok(build.ok, build.problems.join("\n"));
  const dataDir = tempDir("kp-e2e-");
  let gw = await startGatewayProcess(dataDir);
  const sim = await startSim({ dataDir, gateway: { host: "127.0.0.1", port: gw.port }, count: 2, board: "puckjs", bundle: build.code, lifetime: 600 });
  const status = (i: number) => sim.devices[i].eval("KP.status()") as Status;
  try {
    await until(() => status(0).registered && status(1).registered, "both handsets registered", 20000);
    assert.equal(gw.events("joined").length, 2);
    assert.equal(gw.events("registered").length, 2);

    const store = openStore(dataDir);
    const before = ["sim-1", "sim-2"].map((id) => store.getRegistration(id)!);
    store.close();
    const issuer = loadOrCreateGatewayKey(dataDir).key.publicKey;
    for (const [i, reg] of before.entries()) {
      const claims = verifyCertificate(reg.cert!, issuer, Math.floor(Date.now() / 1000));
      assert.equal(claims.sub, `sim-${i + 1}`);
      assert.equal(claims.exp - claims.nbf, 600);
      assert.deepEqual(Buffer.from(status(i).certId), Buffer.from(reg.certId!));
    }

    assert.equal(await gw.stop(), 0, "the gateway stops cleanly on SIGTERM");
    await until(() => status(0).state === "down" && status(1).state === "down", "handsets notice the gateway is gone", 10000);

    // What the stopped gateway left on disk, read before the new process starts: the handsets
    // reconnect within half a second of it and renew, which replaces the certificate.
    const again = openStore(dataDir);
    try {
      for (const [i, reg] of before.entries()) assert.deepEqual(again.getRegistration(`sim-${i + 1}`)!.cert, reg.cert, "certificate survived the restart");
    } finally {
      again.close();
    }
    gw = await startGatewayProcess(dataDir, gw.port);
    // The handsets come back by themselves: a new join (counter 2) and a renewed registration.
    // The registration is still on record, so the gateway logs the new one as a renewal.
    await until(() => status(0).joins === 2 && status(1).joins === 2 && gw.events("renewed").length === 2, "both re-registered after the restart", 20000);
    assert.ok(status(0).registered && status(1).registered);
    const after = openStore(dataDir);
    try {
      assert.equal(after.getDevice("sim-1")!.joinCounter, 2);
      assert.equal(after.getDevice("sim-2")!.joinCounter, 2);
    } finally {
      after.close();
    }
  } finally {
    sim.stop();
    await gw.stop();
  }
});
