// A gateway reports a session "connected" only when each device's key confirmation (SaConfirm) is the
// tag the SA's seed predicts (gateway/sessions/session-broker.ts confirm, gateway/crossgw/cross-gateway.ts confirmLocal). A
// device that answers with any other tag did not derive the SA's keys (or is not the one the seed
// went to): the SA is ended at both ends and neither device is told it is up. The firmware's own
// Handset engine in Node; one case inside a gateway, one across two gateways of a fleet.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { Msg, type InnerMessage } from "../firmware/proto/messages.ts";
import { startBroker, type EmbeddedBroker } from "../gateway/monitor/embedded-broker.ts";
import { Fleet } from "../gateway/fleet/fleet.ts";
import { fleetGateway } from "./support/fleet-rig.ts";
import { Clock, provision, startGateway, tempDir, until, type TestGateway } from "./support/harness.ts";
import { sessionHandset, stopGateway, type SessionHandset } from "./support/session-rig.ts";

const APP = "chat";

/** Makes the handset answer every SaInstall with a key confirmation one bit off its true value, as a
 *  device holding other keys would. */
function confirmWithWrongTag(d: SessionHandset): void {
  const send = d.h.request_.bind(d.h);
  d.h.request_ = (m: InnerMessage, answer: boolean) => {
    if (m.t === Msg.SaConfirm) {
      const tag = new Uint8Array(m.tag);
      tag[0] ^= 0x01;
      return send({ ...m, tag }, answer);
    }
    return send(m, answer);
  };
}

/** Neither end holds an SA that is ready (Connected received). */
const noneReady = (...ds: SessionHandset[]) => ds.every((d) => d.h.sas.every((s) => !s.ready));

/** Waits until the bad confirmation has had its effect either way: the caller's SA closed, or some SA
 *  up (what a gateway that skipped the check would do). */
async function outcomeOfConfirmation(caller: SessionHandset, callee: SessionHandset): Promise<void> {
  await until(() => caller.closed.length > 0 || !noneReady(caller, callee), "the SA to be closed or come up", 10_000);
}

describe("within one gateway", () => {
  let t: TestGateway;
  let alice: SessionHandset;
  let bob: SessionHandset;

  before(async () => {
    t = await startGateway();
    await t.gw.policy.setDefault("allow");
    alice = await sessionHandset(t.gw, "alice", await provision(t.gw, "alice"));
    bob = await sessionHandset(t.gw, "bob", await provision(t.gw, "bob"));
    await until(() => alice.h.status().registered && bob.h.status().registered, "both registered");
  });

  after(async () => {
    alice?.close();
    bob?.close();
    if (t) await stopGateway(t);
  });

  test("a callee's wrong key confirmation ends the SA at both ends, and neither is told it is up", async () => {
    bob.h.onRequest = (_from, app) => app === APP;
    confirmWithWrongTag(bob);
    assert.equal(alice.h.connect("bob", APP), true);
    await outcomeOfConfirmation(alice, bob);
    assert.ok(noneReady(alice, bob), "no Connected for an SA whose keys were not confirmed");
    const dropped = t.events("session-confirm-dropped");
    assert.deepEqual(dropped.map((e) => [e.device, e.reason]), [["bob", "key confirmation does not verify"]]);
    assert.deepEqual(t.events("session-aborted").map((e) => e.reason), ["a key confirmation did not verify"]);
    assert.equal(t.events("session-up").length, 0);
    await until(() => bob.closed.length > 0, "bob told the SA is closed");
    assert.equal(t.gw.sessions.sessions.size, 0, "the gateway holds no SA for them");
  });
});

describe("across two gateways", () => {
  let broker: EmbeddedBroker;
  let fleetDir: string;
  const clock = new Clock();
  const sides: { t: TestGateway; dev: SessionHandset }[] = [];

  before(async () => {
    broker = await startBroker({ host: "127.0.0.1", port: 0 });
    fleetDir = tempDir("kp-xgw-fleet-");
    const fleet = Fleet.create(fleetDir, "kp-fleet", clock.now());
    for (const [domain, id] of [["a.example", "alice"], ["b.example", "bob"]]) {
      const t = await fleetGateway(domain, fleet, broker, clock.now);
      const dev = await sessionHandset(t.gw, id, await provision(t.gw, id));
      sides.push({ t, dev });
      await until(() => dev.h.status().registered, `${id} registered`);
    }
  });

  after(async () => {
    for (const s of sides) {
      s.dev.close();
      await stopGateway(s.t);
    }
    await broker?.close();
    if (fleetDir) rmSync(fleetDir, { recursive: true, force: true });
  });

  test("a callee's wrong key confirmation at its own gateway ends the SA at both gateways, and neither device is told it is up", async () => {
    const [a, b] = sides;
    b.dev.h.onRequest = (_from, app) => app === APP;
    confirmWithWrongTag(b.dev);
    assert.equal(a.dev.h.connect("bob@b.example", APP), true);
    await outcomeOfConfirmation(a.dev, b.dev);
    assert.ok(noneReady(a.dev, b.dev), "no Connected for an SA whose keys were not confirmed");
    const dropped = b.t.events("session-confirm-dropped");
    assert.deepEqual(dropped.map((e) => [e.device, e.reason]), [["bob", "key confirmation does not verify"]]);
    assert.equal(a.t.events("session-confirm-dropped").length, 0, "alice's confirmation verified at her gateway");
    await until(() => b.dev.closed.length > 0, "bob told the SA is closed");
  });
});
