// End to end, as a user runs it: a gateway process started through the CLI, two handsets booting the
// real Puck.js bundle in the emulator (through the BLE UART test double), join and register; then the
// gateway process is restarted on the same data directory and everything it stored is still there.
import { test } from "node:test";
import assert from "node:assert/strict";
import { buildFirmware } from "../flash/build.ts";
import { startSim } from "../emulator/sim.ts";
import { openStore } from "../gateway/gateway.ts";
import { verifyCertificate } from "../gateway/encoding/cwt.ts";
import { loadOrCreateGatewayKey } from "../gateway/fleet/identity.ts";
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
    const ids = ["sim-1", "sim-2"];
    const issuer = loadOrCreateGatewayKey(dataDir).key.publicKey;
    /** The registrations on record now (the process writes the file; a fresh connection reads it). */
    const onRecord = async () => {
      const store = await openStore(dataDir);
      try {
        const rows = [];
        for (const id of ids) rows.push({ reg: (await store.getRegistration(id))!, joinCounter: (await store.getDeviceInfo(id))!.joinCounter });
        return rows;
      } finally {
        await store.close();
      }
    };
    /** Whether each handset holds the certificate on record for it. */
    const holdsRecorded = (records: Awaited<ReturnType<typeof onRecord>>) => records.every((r, i) => !!r.reg?.certId && Buffer.from(status(i).certId).equals(Buffer.from(r.reg.certId)));
    // Compared at one moment: a handset under load may retry a registration (a request timeout makes it
    // join again), so the test waits until what each holds is what is on record rather than assuming so.
    let before = await onRecord();
    await until(async () => holdsRecorded((before = await onRecord())), "each handset holds the certificate on record", 20000);
    for (const [i, { reg }] of before.entries()) {
      const claims = verifyCertificate(reg.cert!, issuer, Math.floor(Date.now() / 1000));
      assert.equal(claims.sub, ids[i]);
      assert.equal(claims.exp - claims.nbf, 600);
    }
    for (const id of ids) {
      assert.ok(gw.events("joined").some((e) => e.device === id), `${id} joined`);
      assert.ok(gw.events("registered").some((e) => e.device === id), `${id} registered`);
    }

    assert.equal(await gw.stop(), 0, "the gateway stops cleanly on SIGTERM");
    await until(() => status(0).state === "down" && status(1).state === "down", "handsets notice the gateway is gone", 10000);

    // What the stopped gateway left on disk, read before the new process starts (the handsets
    // reconnect within half a second of it and renew, which replaces the certificate): the
    // certificate each handset holds, and its join counter.
    const stopped = await onRecord();
    assert.ok(holdsRecorded(stopped), "the certificate each handset holds survived the restart");
    for (const [i, r] of stopped.entries()) assert.ok(r.joinCounter >= 1, `${ids[i]}'s join counter survived the restart`);
    gw = await startGatewayProcess(dataDir, gw.port);
    // The handsets come back by themselves: a new join and a renewed registration. The registration
    // is still on record, so the gateway logs the new one as a renewal; the test waits for that event
    // and then for the handsets to hold what it recorded.
    const renewed = (id: string) => gw.events("renewed").some((e) => e.device === id);
    await until(() => ids.every(renewed) && status(0).registered && status(1).registered, "both re-registered after the restart", 20000);
    let after = await onRecord();
    await until(async () => holdsRecorded((after = await onRecord())), "each handset holds its renewed certificate", 20000);
    for (const [i, r] of after.entries()) {
      assert.notDeepEqual(r.reg.certId, stopped[i].reg.certId, `${ids[i]} got a new certificate`);
      assert.ok(r.joinCounter > stopped[i].joinCounter, `${ids[i]} joined with a counter above the one on record`);
    }
  } finally {
    sim.stop();
    await gw.stop();
  }
});
