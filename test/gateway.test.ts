// The gateway against the firmware's own Handset engine over real TCP and a real SQLite file:
// join, register, renew, deregister, restart; and each bad input rejected with a reason and no state
// change (issue: foundation, acceptance 3).
import { test } from "node:test";
import assert from "node:assert/strict";
import { crc32 } from "node:zlib";
import { join } from "node:path";
import Database from "better-sqlite3";
import * as gcbor from "../gateway/encoding/cbor.ts";
import { verifyCertificate } from "../gateway/encoding/cwt.ts";
import { loadOrCreateGatewayKey } from "../gateway/fleet/identity.ts";
import { Gateway, openStore } from "../gateway/gateway.ts";
import { Store } from "../gateway/registry/store.ts";
import { deviceCommand } from "../cli/device-cmd.ts";
import { encodeFrame } from "../firmware/proto/frame.ts";
import { ErrorCode, Msg } from "../firmware/proto/messages.ts";
import { toHex } from "../firmware/bytes.ts";
import { NODE_FIRMWARE, nodeHandset, provision, rawClient, startGateway, tempDir, testDatabaseOf, until } from "./support/harness.ts";

const frame = (payload: Uint8Array) => encodeFrame(payload, (b) => crc32(b) >>> 0);

/** The Link frame f with one bit of its ciphertext flipped, re-framed with a valid CRC. */
function tamper(f: Uint8Array): Uint8Array {
  const w = gcbor.decode(f.subarray(3, f.length - 4)) as [number, number, Uint8Array];
  const sealed = new Uint8Array(w[2]);
  sealed[0] ^= 1;
  return frame(gcbor.encode([w[0], w[1], sealed]));
}

test("a handset joins and registers; its certificate is valid for exactly the granted lifetime", async () => {
  const t = await startGateway({ policy: { maxLifetime: 300 } });
  const key = await provision(t.gw, "dev-a");
  const d = await nodeHandset(t.gw, "dev-a", key, 3600);
  try {
    await until(() => d.h.status().registered, "registration");
    const reg = (await t.gw.store.getRegistration("dev-a"))!;
    assert.equal(reg.expiresAt - reg.registeredAt, 300, "lifetime clamped to the policy maximum");
    const claims = verifyCertificate(reg.cert!, loadOrCreateGatewayKey(t.dataDir).key.publicKey, t.clock.now());
    assert.equal(claims.sub, "dev-a");
    assert.equal(claims.iss, "gateway.local");
    assert.equal(claims.exp - claims.nbf, 300);
    assert.deepEqual(claims.publicKey, (await t.gw.store.getDevice("dev-a"))!.identityPublic);
    assert.equal(toHex(d.h.status().certId!), toHex(reg.certId!), "device keeps the certificate id");
    assert.ok(Math.abs(d.h.status().expiresIn - 300) <= 1);
    assert.equal((await t.gw.store.getDevice("dev-a"))!.joinCounter, 1);
    // What the device reported: its firmware id; no memory count (Node has no Espruino variables: 0).
    assert.deepEqual([reg.firmware, reg.memoryUsed], [NODE_FIRMWARE, 0]);
    // Renewal: register again; a new certificate, the same identity key, and the new report kept.
    const first = reg.certId!;
    t.clock.advance(100);
    d.h.p_.memory = () => ({ usage: 812 });
    d.h.register();
    await until(async () => toHex((await t.gw.store.getRegistration("dev-a"))!.certId!) !== toHex(first), "renewal");
    assert.equal((await t.gw.store.getRegistration("dev-a"))!.expiresAt, t.clock.now() + 300);
    assert.equal((await t.gw.store.getRegistration("dev-a"))!.memoryUsed, 812, "the variables in use the device reported at renewal");
    assert.deepEqual((await t.gw.store.listDevices()).map((r) => [r.id, r.firmware, r.memoryUsed]), [["dev-a", NODE_FIRMWARE, 812]]);
    assert.deepEqual(verifyCertificate((await t.gw.store.getRegistration("dev-a"))!.cert!, loadOrCreateGatewayKey(t.dataDir).key.publicKey, t.clock.now()).publicKey, claims.publicKey);
    // Deregistration deletes the registration and its certificate.
    d.h.register(0);
    await until(async () => !(await t.gw.store.getRegistration("dev-a")), "deregistration");
    await until(() => d.h.status().registered === false, "device forgets");
  } finally {
    d.close();
    await t.gw.stop();
  }
});

test("registry, counters and certificates survive a gateway restart on the same data directory", async () => {
  const t = await startGateway();
  const key = await provision(t.gw, "dev-r");
  const counter = { value: 0 };
  const d = await nodeHandset(t.gw, "dev-r", key, 600, counter);
  await until(() => d.h.status().registered, "registration");
  const before = (await t.gw.store.getRegistration("dev-r"))!;
  d.close();
  await t.gw.stop();
  const again = await Gateway.start({ dataDir: t.dataDir, database: await testDatabaseOf(t.dataDir), listen: { host: "127.0.0.1", port: 0 }, now: t.clock.now, log: t.gw.log });
  try {
    const after = (await again.store.getRegistration("dev-r"))!;
    assert.deepEqual(after.cert, before.cert);
    assert.equal((await again.store.getDevice("dev-r"))!.joinCounter, 1);
    const d2 = await nodeHandset(again, "dev-r", key, 600, counter);
    await until(() => d2.h.status().registered, "registration after restart");
    assert.equal((await again.store.getDevice("dev-r"))!.joinCounter, 2, "the join counter continued");
    d2.close();
  } finally {
    await again.stop();
  }
});

test("a wrong root key is rejected with a reason and changes nothing", async () => {
  const t = await startGateway();
  await provision(t.gw, "dev-w");
  const before = (await t.gw.store.snapshot());
  const d = await nodeHandset(t.gw, "dev-w", new Uint8Array(16).fill(7));
  try {
    await until(() => t.events("join-rejected").length > 0, "rejection");
    assert.match(String(t.events("join-rejected")[0].reason), /join MAC does not verify/);
    assert.equal((await t.gw.store.snapshot()), before);
    // The event is logged when the gateway decides; the handset learns it from the JoinReject after.
    await until(() => d.h.status().state === "down", "the handset to take the JoinReject");
  } finally {
    d.close();
    await t.gw.stop();
  }
});

test("a replayed join is rejected with a reason and changes nothing", async () => {
  const t = await startGateway();
  const key = await provision(t.gw, "dev-j");
  const d = await nodeHandset(t.gw, "dev-j", key);
  await until(() => d.h.status().registered, "registration");
  const joinFrame = d.sent[0];
  d.close();
  const before = (await t.gw.store.snapshot());
  const raw = await rawClient(t.gw);
  try {
    raw.write(joinFrame);
    await until(() => t.events("join-rejected").length > 0, "rejection");
    assert.match(String(t.events("join-rejected")[0].reason), /replayed join: counter 1 is not above 1/);
    await until(() => raw.received.length > 0, "JoinReject");
    assert.deepEqual([...raw.received[0].subarray(3, -4)], [...gcbor.encode([Msg.JoinReject])]);
    assert.equal((await t.gw.store.snapshot()), before);
  } finally {
    raw.socket.destroy();
    await t.gw.stop();
  }
});

test("a tampered frame is rejected with a reason, changes nothing and does not burn its sequence number", async () => {
  const t = await startGateway();
  const key = await provision(t.gw, "dev-t");
  const d = await nodeHandset(t.gw, "dev-t", key);
  try {
    await until(() => d.h.status().registered, "registration");
    const before = (await t.gw.store.snapshot());
    let good: Uint8Array | undefined;
    d.h.port = { write: (b) => { good = b; d.socket.write(tamper(b)); } };
    d.h.register(0);
    await until(() => t.events("frame dropped").length > 0, "drop");
    assert.match(String(t.events("frame dropped")[0].reason), /failed authentication/);
    assert.equal((await t.gw.store.snapshot()), before);
    // The genuine frame with the same sequence number is still accepted.
    d.socket.write(good!);
    await until(async () => !(await t.gw.store.getRegistration("dev-t")), "genuine frame accepted");
  } finally {
    d.close();
    await t.gw.stop();
  }
});

test("a replayed frame is rejected with a reason and changes nothing", async () => {
  const t = await startGateway();
  const key = await provision(t.gw, "dev-p");
  const d = await nodeHandset(t.gw, "dev-p", key);
  try {
    await until(() => d.h.status().registered, "registration");
    const registerFrame = d.sent[1];
    const before = (await t.gw.store.snapshot());
    d.socket.write(registerFrame);
    await until(() => t.events("frame dropped").length > 0, "drop");
    assert.match(String(t.events("frame dropped")[0].reason), /replayed frame/);
    assert.equal((await t.gw.store.snapshot()), before, "the replayed RegisterRequest issued no new certificate");
  } finally {
    d.close();
    await t.gw.stop();
  }
});

test("an expired registration is rejected with a reason and changes nothing", async () => {
  const t = await startGateway({ policy: { minLifetime: 60, maxLifetime: 60 } });
  await t.gw.policy.add("dev-x", "dev-y", "*", "allow");
  const a = await nodeHandset(t.gw, "dev-x", await provision(t.gw, "dev-x"));
  const b = await nodeHandset(t.gw, "dev-y", await provision(t.gw, "dev-y"));
  try {
    await until(() => a.h.status().registered && b.h.status().registered, "registrations");
    a.h.certQuery("dev-y");
    await until(() => a.h.lastType === Msg.CertAnswer, "certificate while both are live");
    t.clock.advance(61);
    const before = (await t.gw.store.snapshot());
    a.h.certQuery("dev-y");
    await until(() => a.h.lastType === Msg.Error, "refusal");
    assert.equal(a.h.lastCode, ErrorCode.NotRegistered);
    const r = t.events("request-rejected");
    assert.equal(r.length, 1);
    assert.equal(r[0].reason, "caller's registration expired");
    assert.equal((await t.gw.store.snapshot()), before);
    // Renewed caller, expired target: the expired certificate is not served.
    a.h.register();
    await until(async () => a.h.status().expiresIn > 50 && (await t.gw.store.getRegistration("dev-x"))!.expiresAt > t.clock.now(), "renewal");
    a.h.certQuery("dev-y");
    await until(() => a.h.lastType === Msg.Error && a.h.lastCode === ErrorCode.NotFound, "not found");
    assert.equal(t.events("cert-query-not-found").at(-1)!.reason, "registration expired");
  } finally {
    a.close();
    b.close();
    await t.gw.stop();
  }
});

test("malformed CBOR is rejected with a reason and changes nothing", async () => {
  const t = await startGateway();
  await provision(t.gw, "dev-m");
  const before = (await t.gw.store.snapshot());
  const raw = await rawClient(t.gw);
  try {
    raw.write(frame(Uint8Array.from([0xff, 0x00])));
    raw.write(frame(Uint8Array.from([0x9f, 0x01])));
    raw.write(frame(gcbor.encode([Msg.JoinRequest, "dev-m", 1])));
    await until(() => t.events("malformed frame").length === 3, "three rejections");
    const reasons = t.events("malformed frame").map((r) => String(r.reason));
    assert.match(reasons[0], /^cbor: /);
    assert.match(reasons[1], /^cbor: /);
    assert.match(reasons[2], /needs 5 fields, got 2/);
    assert.equal((await t.gw.store.snapshot()), before);
    assert.equal(raw.received.length, 0, "nothing is answered to garbage");
  } finally {
    raw.socket.destroy();
    await t.gw.stop();
  }
});

test("a firmware id that is not printable ASCII is refused with a reason and changes nothing", async () => {
  const t = await startGateway();
  const d = await nodeHandset(t.gw, "dev-f", await provision(t.gw, "dev-f"));
  try {
    await until(() => d.h.status().registered, "registration");
    const before = (await t.gw.store.snapshot());
    for (const bad of ["fw\u001b[2J", "fw\u00e9", "fw\u007f"]) {
      d.h.p_.firmware = bad;
      d.h.lastType = 0;
      d.h.register();
      await until(() => d.h.lastType === Msg.Error, `refusal of ${JSON.stringify(bad)}`);
      assert.equal(d.h.lastCode, ErrorCode.Malformed);
      assert.equal((await t.gw.store.snapshot()), before);
    }
    assert.deepEqual(t.events("register-rejected").map((r) => r.reason), Array(3).fill("the firmware id is not printable ASCII"));
    d.h.p_.firmware = "1.2.3-0123abcd ok";
    d.h.register();
    await until(async () => (await t.gw.store.getRegistration("dev-f"))!.firmware === "1.2.3-0123abcd ok", "a printable id is kept");
  } finally {
    d.close();
    await t.gw.stop();
  }
});

/** The registrations table as the first release made it, before firmware and memory were reported. */
const FIRST_REGISTRATIONS_TABLE = `
CREATE TABLE devices (id TEXT PRIMARY KEY, root_key BLOB NOT NULL, board TEXT NOT NULL, created_at INTEGER NOT NULL,
  revoked_at INTEGER, join_counter INTEGER NOT NULL DEFAULT 0, identity_seed BLOB, identity_public BLOB);
CREATE TABLE registrations (device_id TEXT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
  registered_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, suites TEXT NOT NULL, cert_id BLOB, cert BLOB);
`;

test("a data directory from before firmware and memory were reported keeps working: the columns are added", async () => {
  const dataDir = tempDir("kp-old-");
  const file = join(dataDir, "keyproxy.db");
  const old = new Database(file);
  old.exec(FIRST_REGISTRATIONS_TABLE);
  old.prepare("INSERT INTO devices (id, root_key, board, created_at, join_counter) VALUES ('old-1', ?, 'puckjs', 0, 4)").run(Buffer.alloc(16, 1));
  old.prepare("INSERT INTO registrations VALUES ('old-1', 10, 4000000000, '[[10,1]]', ?, NULL)").run(Buffer.alloc(16, 2));
  old.close();
  const store = await openStore(dataDir);
  assert.equal(store.location, file, "the gateway's database file (DB_FILE) is the one made above");
  const columns = async (s: Store) => (await s.query("PRAGMA table_info(registrations)")).rows.map((c) => c.name);
  try {
    assert.deepEqual((await columns(store)).slice(-2), ["firmware", "memory_used"]);
    const reg = (await store.getRegistration("old-1"))!;
    assert.deepEqual([reg.expiresAt, reg.firmware, reg.memoryUsed], [4000000000, null, null], "the old registration is there, with nothing reported");
    await store.putRegistration({ ...reg, firmware: "0.1.0-3ca9ccef", memoryUsed: 943 });
  } finally {
    await store.close();
  }
  // Opening it again adds nothing twice and keeps what was stored.
  const again = await openStore(dataDir);
  try {
    assert.equal((await columns(again)).filter((c) => c === "firmware").length, 1);
    assert.deepEqual((await again.listDevices()).map((r) => [r.id, r.joinCounter, r.firmware, r.memoryUsed]), [["old-1", 4, "0.1.0-3ca9ccef", 943]]);
  } finally {
    await again.close();
  }
  // keyproxy device list shows the report beside the registration, with the board's pool.
  const lines: string[] = [];
  const log = console.log;
  console.log = (...a: unknown[]) => void lines.push(a.join(" "));
  try {
    assert.equal(await deviceCommand(["list", "--data-dir", dataDir]), 0);
  } finally {
    console.log = log;
  }
  assert.equal(lines.length, 1);
  assert.match(lines[0], /^old-1 +puckjs +joins=4 +registered, \d+s left +fw=0\.1\.0-3ca9ccef mem=943\/2630$/);
});

test("lifetimes stay under the ceiling JavaScript timers allow (devices renew with a timer)", async () => {
  const { LIFETIME_CEILING } = await import("../gateway/registry/registrar.ts");
  const t = await startGateway({ policy: { maxLifetime: 10 * LIFETIME_CEILING } });
  const d = await nodeHandset(t.gw, "dev-c", await provision(t.gw, "dev-c"), 100 * LIFETIME_CEILING);
  try {
    await until(() => d.h.status().registered, "registration");
    const reg = (await t.gw.store.getRegistration("dev-c"))!;
    assert.equal(reg.expiresAt - reg.registeredAt, LIFETIME_CEILING, "granted no more than the ceiling");
    assert.ok(LIFETIME_CEILING * 800 < 2 ** 31 - 1, "the device's renewal timer at 80% fits a JavaScript timer");
  } finally {
    d.close();
    await t.gw.stop();
  }
  await assert.rejects(startGateway({ sessions: { lifetime: 10 * LIFETIME_CEILING } }), /session lifetime must be 1 to/);
});
