// A handset asks for a rekey of an SA once REKEY_AT of the SA's lifetime has passed on its own clock
// (firmware/handset.ts send: `p.now() >= sa.rekeyAt`), however few messages it has sent. Two
// emulated Puck.js handsets running the real bundle; the device clock is moved by a .boot0 that
// wraps getTime before the firmware starts (the firmware reads its time through getTime), so no test
// waits for real time to pass. The gateway's own rekey timer is far off (80% of 600 s), and the
// message limit is far away, so a rekey here can only be the device's time trigger.
import { test } from "node:test";
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { EmulatedDevice } from "../emulator/device.ts";
import { provisionEmulated } from "../emulator/sim.ts";
import { buildFirmware } from "../flash/build.ts";
import { Msg } from "../firmware/proto/messages.ts";
import * as gcbor from "../gateway/encoding/cbor.ts";
import { nodeCrypto } from "../gateway/crypto/symmetric.ts";
import { startGateway, tempDir, until, testDatabaseOf } from "./support/harness.ts";
import { stopGateway } from "./support/session-rig.ts";

const BOARD = "puckjs";
const LIFETIME_S = 600;

/** Runs before the firmware: the device's clock reads CLOCK_SKEW seconds ahead of the host's. */
const CLOCK_SHIM = "var hostTime = getTime; global.CLOCK_SKEW = 0; getTime = function () { return hostTime() + CLOCK_SKEW; };";

const DEVICE_APP = `
global.SPI = 0;
KP.onRequest = function (from, app) { return app === "chat"; };
KP.onConnect = function (spi) { SPI = spi; };
1`;

/** The gateway's crypto, with the inner message types of everything it opened from devices recorded
 *  (a Rekey is a notice on the link: this is how the test sees who asked). */
function openingRecorder() {
  const inner = nodeCrypto();
  const opened: number[] = [];
  const crypto: typeof inner = {
    ...inner,
    open: (suite, key, nonce, sealed) => {
      const pt = inner.open(suite, key, nonce, sealed);
      if (pt) {
        try {
          const m = gcbor.decode(pt);
          if (Array.isArray(m) && typeof m[0] === "number") opened.push(m[0]);
        } catch {
          // application data of an SA is not CBOR: not an inner message
        }
      }
      return pt;
    },
  };
  return { crypto, rekeysAsked: () => opened.filter((t) => t === Msg.Rekey).length };
}

test(`${BOARD}: an SA past 80% of its lifetime on the device's clock is rekeyed when the device next sends`, async () => {
  const buildDir = tempDir("kp-rekey-build-");
  const storage = tempDir("kp-rekey-dev-");
  const built = await buildFirmware({ board: BOARD, outDir: buildDir });
  assert.ok(built.ok, built.problems.join("\n"));
  const rec = openingRecorder();
  const t = await startGateway({ crypto: rec.crypto, sessions: { lifetime: LIFETIME_S } });
  await t.gw.policy.setDefault("allow");
  const make = async (id: string) => {
    const dev = new EmulatedDevice({ board: BOARD, storageDir: `${storage}/${id}`, gateway: t.gw.address, name: id });
    await provisionEmulated(dev, t.dataDir, id, BOARD, t.gw.address, 3600, await testDatabaseOf(t.dataDir));
    dev.storage.write(".boot0", CLOCK_SHIM);
    dev.storage.write(".bootcde", built.code);
    return dev;
  };
  const a = await make("emu-a");
  const b = await make("emu-b");
  const num = (d: EmulatedDevice, expr: string) => d.eval(expr) as number;
  try {
    await a.boot();
    await b.boot();
    await until(() => a.eval("KP.status().registered") === true && b.eval("KP.status().registered") === true, "both registered", 15_000);
    a.eval(DEVICE_APP);
    b.eval(DEVICE_APP);
    a.eval('KP.connect("emu-b", "chat")');
    await until(() => num(a, "SPI") !== 0 && num(b, "SPI") === num(a, "SPI"), "the first SA", 10_000);
    const first = num(a, "SPI");

    // Early in the SA's life a send asks for nothing.
    assert.equal(a.eval('KP.send(SPI, E.toUint8Array("early"))'), true);
    assert.equal(rec.rekeysAsked(), 0, "no rekey asked before the rekey point");

    // 85% of the lifetime later on emu-a's clock (past the rekey point, before the SA expires).
    a.eval(`CLOCK_SKEW = ${LIFETIME_S * 0.85}`);
    assert.equal(a.eval('KP.send(SPI, E.toUint8Array("late"))'), true);
    await until(() => rec.rekeysAsked() > 0 || t.events("session-rekeyed").length > 0, "a rekey", 10_000);
    assert.equal(rec.rekeysAsked(), 1, "the device asked for the rekey");
    await until(() => num(a, "SPI") !== first && num(b, "SPI") === num(a, "SPI"), "the replacement SA at both ends", 10_000);
    assert.equal(t.events("session-rekeyed").length, 1);
  } finally {
    a.powerOff();
    b.powerOff();
    await stopGateway(t);
    rmSync(buildDir, { recursive: true, force: true });
    rmSync(storage, { recursive: true, force: true });
  }
});
