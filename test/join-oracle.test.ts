// Existence oracles (issue 11, finding 5): a join naming an unknown device id must cost the gateway
// what a known id with a wrong MAC costs (the same MAC derivations, against a decoy root key, and the
// same registry reads and writes), and what an MQTT subscriber learns of either must be the same:
// "join-rejected" and the id tried. Counted, never timed (this machine is noisy); bench/join-oracle.ts
// prints the medians of both paths.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { crc32 } from "node:zlib";
import { connect } from "mqtt";
import * as gcbor from "../gateway/encoding/cbor.ts";
import { startBroker } from "../gateway/monitor/embedded-broker.ts";
import { nodeCrypto, type GatewayCrypto } from "../gateway/crypto/symmetric.ts";
import { topics } from "../gateway/monitor/monitor.ts";
import type { Store } from "../gateway/registry/store.ts";
import { encodeFrame } from "../firmware/proto/frame.ts";
import { encodeMessage, Msg } from "../firmware/proto/messages.ts";
import { SUITE_AES_CCM_16_64_128 } from "../firmware/crypto/types.ts";
import { provision, rawClient, startGateway, until, type TestGateway } from "./support/harness.ts";

/** A JoinRequest for id whose tag verifies under no key anybody has. */
function joinWithWrongMac(id: string): Uint8Array {
  const m = { t: Msg.JoinRequest, id, ctr: 7, nonce: new Uint8Array(randomBytes(16)), suite: SUITE_AES_CCM_16_64_128, tag: new Uint8Array(randomBytes(16)) } as const;
  return encodeFrame(gcbor.encode(encodeMessage(m)), (b) => crc32(b) >>> 0);
}

/** The gateway's crypto, counting the calls a join's MAC check makes. */
function countingCrypto(): { crypto: GatewayCrypto; calls: Record<string, number> } {
  const base = nodeCrypto();
  const calls: Record<string, number> = {};
  const counted = <F extends (...a: never[]) => unknown>(name: string, f: F): F => ((...a: never[]) => {
    calls[name] = (calls[name] ?? 0) + 1;
    return f(...a);
  }) as F;
  return { crypto: { ...base, hkdf: counted("hkdf", base.hkdf), hmacSha256: counted("hmacSha256", base.hmacSha256), sha256: counted("sha256", base.sha256) }, calls };
}

/** Counts the registry reads and writes a join can make. */
function countingStore(store: Store): Record<string, number> {
  const calls: Record<string, number> = {};
  for (const name of ["getDevice", "advanceJoinCounter", "audit", "setMeta"] as const) {
    const original = store[name].bind(store) as (...a: unknown[]) => unknown;
    (store as unknown as Record<string, unknown>)[name] = (...a: unknown[]) => {
      calls[name] = (calls[name] ?? 0) + 1;
      return original(...a);
    };
  }
  return calls;
}

/** Sends one join, waits for its answer and its log record; returns what it cost and got. */
async function oneJoin(t: TestGateway, id: string, crypto: Record<string, number>, store: Record<string, number>) {
  for (const c of [crypto, store]) for (const k of Object.keys(c)) delete c[k];
  const before = t.events("join-rejected").length;
  const raw = await rawClient(t.gw);
  try {
    raw.write(joinWithWrongMac(id));
    await until(() => raw.received.length > 0 && t.events("join-rejected").length === before + 1, `the answer to a join as ${id}`);
    return { crypto: { ...crypto }, store: { ...store }, answer: Buffer.concat(raw.received).toString("hex"), reason: String(t.events("join-rejected").at(-1)!.reason) };
  } finally {
    raw.socket.destroy();
  }
}

test("an unknown id costs what a known id with a wrong MAC costs: the MAC derivations (against a decoy key), the registry reads, the answer", async () => {
  const { crypto, calls } = countingCrypto();
  const t = await startGateway({ crypto });
  try {
    await provision(t.gw, "dev-known");
    await provision(t.gw, "dev-revoked");
    await t.gw.store.revokeDevice("dev-revoked", t.clock.now(), "test");
    const storeCalls = countingStore(t.gw.store);
    const before = (await t.gw.store.snapshot());
    const unknown = await oneJoin(t, "dev-unknown", calls, storeCalls);
    const known = await oneJoin(t, "dev-known", calls, storeCalls);
    const revoked = await oneJoin(t, "dev-revoked", calls, storeCalls);
    assert.ok((unknown.crypto.hkdf ?? 0) > 0 && (unknown.crypto.hmacSha256 ?? 0) > 0, `the unknown id's MAC is computed: ${JSON.stringify(unknown.crypto)}`);
    assert.deepEqual(unknown.crypto, known.crypto, "the same MAC work");
    assert.deepEqual(revoked.crypto, known.crypto, "a revoked device's too");
    assert.deepEqual(unknown.store, { getDevice: 1 }, "one registry read, no write");
    assert.deepEqual(known.store, unknown.store);
    assert.deepEqual(revoked.store, unknown.store);
    assert.equal(unknown.answer, known.answer, "the same bare JoinReject");
    assert.equal(revoked.answer, known.answer);
    assert.equal((await t.gw.store.snapshot()), before, "nothing changed");
    // The gateway's own log keeps the reasons, for its operator.
    assert.deepEqual([unknown.reason, revoked.reason], ["unknown device", "join MAC does not verify (wrong root key or altered request)"]);
    assert.match(known.reason, /join MAC does not verify/);
  } finally {
    await t.gw.stop();
  }
});

test("MQTT subscribers get the same join-rejected event for an unknown id and a known one: no reason", async () => {
  const broker = await startBroker({ host: "127.0.0.1", port: 0 });
  const gatewayId = `oracle-${randomBytes(3).toString("hex")}.example`;
  const events: Record<string, unknown>[] = [];
  const sub = connect(broker.url, { protocolVersion: 4 }).on("message", (topic, payload) => {
    if (topic === topics.events(gatewayId)) events.push(JSON.parse(payload.toString()));
  });
  await new Promise<void>((res) => sub.once("connect", () => sub.subscribe(topics.events(gatewayId), { qos: 1 }, () => res())));
  const t = await startGateway({ id: gatewayId, mqtt: { url: broker.url } });
  try {
    await provision(t.gw, "dev-known");
    await provision(t.gw, "dev-revoked");
    await t.gw.store.revokeDevice("dev-revoked", t.clock.now(), "test");
    for (const id of ["dev-unknown", "dev-known", "dev-revoked"]) {
      const raw = await rawClient(t.gw);
      raw.write(joinWithWrongMac(id));
      await until(() => events.some((e) => e.event === "join-rejected" && e.device === id), `the event for ${id}`);
      raw.socket.destroy();
    }
    const rejected = events.filter((e) => e.event === "join-rejected");
    const [unknown, known, revoked] = ["dev-unknown", "dev-known", "dev-revoked"].map((id) => rejected.find((e) => e.device === id)!);
    const apartFromIdAndTime = (e: Record<string, unknown>) => ({ ...e, device: undefined, ts: undefined });
    assert.deepEqual(apartFromIdAndTime(unknown), apartFromIdAndTime(known));
    assert.deepEqual(apartFromIdAndTime(revoked), apartFromIdAndTime(known));
    assert.ok(!("reason" in unknown), `no reason on MQTT: ${JSON.stringify(unknown)}`);
    assert.equal(t.events("join-rejected").length, 3, "the local log has all three, with their reasons");
    assert.ok(t.events("join-rejected").every((e) => typeof e.reason === "string" && e.reason.length > 0));
  } finally {
    await t.gw.stop();
    await sub.endAsync();
    await broker.close();
  }
});
