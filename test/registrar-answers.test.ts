// The registrar (gateway/registry/registrar.ts) on its own, against a real registry file: what it answers
// and what it records (registration, audit trail, log) for each request, at the edges the end-to-end
// tests in gateway.test.ts do not reach: a message that is not a request, suites none of which the
// gateway runs, a registration without a certificate, renewal against first registration,
// deregistering twice, and certificate queries by full name, at the instant of expiry, and under a
// policy that allows only certificate queries. Written for the mutants that survived
// `npm run mutation -- gateway/registry/registrar.ts` (docs/MUTATION.md).
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { toHex } from "../firmware/bytes.ts";
import { SUITE_AES_CCM_16_64_128 as AES, SUITE_XSALSA20_POLY1305 as XSALSA } from "../firmware/crypto/types.ts";
import { ErrorCode, Msg, type InnerMessage } from "../firmware/proto/messages.ts";
import { nodeCrypto } from "../gateway/crypto/symmetric.ts";
import { ed25519FromSeed, generateEd25519 } from "../gateway/crypto/ed25519.ts";
import { readCertificateUnverified } from "../gateway/encoding/cwt.ts";
import { Logger } from "../gateway/log/logger.ts";
import { Policy } from "../gateway/registry/policy.ts";
import { DEFAULT_POLICY, Registrar } from "../gateway/registry/registrar.ts";
import { openStore } from "../gateway/gateway.ts";
import type { Store } from "../gateway/registry/store.ts";
import { tempDir } from "./support/harness.ts";

const GATEWAY = "gw.example";
const dirs: string[] = [];
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

const stores: Store[] = [];
after(async () => { for (const s of stores) await s.close(); });

async function rig(onDeregistered?: (id: string) => void) {
  const dir = tempDir("kp-registrar-");
  dirs.push(dir);
  const store = await openStore(dir);
  stores.push(store);
  const logs: Record<string, unknown>[] = [];
  const clock = { t: 1_800_000_000 };
  const permissions = new Policy(store);
  await permissions.setDefault("allow");
  const registrar = new Registrar({
    store, log: new Logger((l) => logs.push(JSON.parse(l))), crypto: nodeCrypto(), gatewayId: GATEWAY, gatewayKey: generateEd25519(),
    policy: DEFAULT_POLICY, permissions, now: () => clock.t, onDeregistered,
  });
  for (const id of ["alice", "bob"]) await store.addDevice(id, new Uint8Array(16), "emulator", clock.t);
  const audit = async (id: string) => (await store.query("SELECT event, detail FROM audit WHERE device_id = ? ORDER BY id", [id])).rows as { event: string; detail: string }[];
  const events = (e: string) => logs.filter((r) => r.event === e);
  const register = (id: string, o: Partial<{ lifetime: number; suites: number[][]; wantCert: boolean }> = {}) =>
    registrar.handle(id, { t: Msg.RegisterRequest, rid: 1, lifetime: o.lifetime ?? 600, suites: o.suites ?? [[AES, 1]], wantCert: o.wantCert ?? true, firmware: "fw-1", memory: 5 });
  return { store, registrar, clock, permissions, audit, events, register };
}

test("a message that is not a request is answered Unsupported, with its request id, and logged", async () => {
  const r = await rig();
  assert.deepEqual(await r.registrar.handle("alice", { t: Msg.Answer, rid: 7, accept: true }), { t: Msg.Error, rid: 7, code: ErrorCode.Unsupported });
  assert.deepEqual(await r.registrar.handle("alice", { t: Msg.Bye, spi: 3 } as InnerMessage), { t: Msg.Error, rid: 0, code: ErrorCode.Unsupported });
  assert.deepEqual(r.events("request-rejected").map((e) => e.reason), [`message type ${Msg.Answer} is not a request`, `message type ${Msg.Bye} is not a request`]);
});

test("suites none of which the gateway runs: Unsupported, and nothing registered", async () => {
  const r = await rig();
  assert.deepEqual(await r.register("alice", { suites: [[11, 1], [12, 2]] }), { t: Msg.Error, rid: 1, code: ErrorCode.Unsupported });
  assert.equal(await r.store.getRegistration("alice"), undefined);
  assert.deepEqual(r.events("register-rejected").map((e) => e.reason), ["none of the suites 11,12 is supported"]);
});

test("first registration and renewal are told apart in the audit trail and the log; no certificate unless asked", async () => {
  const r = await rig();
  const first = await r.register("alice", { wantCert: false });
  assert.equal(first.t, Msg.RegisterOk);
  assert.deepEqual([(first as { certId: Uint8Array }).certId.length, (first as { cert: unknown }).cert], [0, null], "no certificate unless asked");
  const renewed = (await r.register("alice", { suites: [[AES, 1], [XSALSA, 2]] })) as { certId: Uint8Array; cert: Uint8Array };
  assert.equal(renewed.certId.length, 16);
  assert.deepEqual((await r.audit("alice")).map((a) => a.event), ["registered", "renewed"]);
  assert.equal((await r.audit("alice"))[1].detail, `granted=600 cert=${toHex(renewed.certId)}`);
  const logged = [...r.events("registered"), ...r.events("renewed")];
  assert.deepEqual(logged.map((e) => [e.event, e.requested, e.granted, e.suites, e.certId]), [
    ["registered", 600, 600, String(AES), ""],
    ["renewed", 600, 600, `${AES},${XSALSA}`, toHex(renewed.certId)],
  ]);
});

test("deregistering: audited once, only when there was a registration; the hook is optional", async () => {
  const gone: string[] = [];
  const r = await rig((id) => gone.push(id));
  await r.register("alice");
  assert.deepEqual(await r.registrar.handle("alice", { t: Msg.DeregisterRequest, rid: 4 }), { t: Msg.DeregisterOk, rid: 4 });
  assert.deepEqual(await r.registrar.handle("alice", { t: Msg.DeregisterRequest, rid: 5 }), { t: Msg.DeregisterOk, rid: 5 });
  assert.deepEqual((await r.audit("alice")).map((a) => a.event), ["registered", "deregistered"]);
  assert.equal((await r.audit("alice"))[1].detail, "");
  assert.deepEqual(r.events("deregistered").map((e) => e.existed), [true, false]);
  assert.deepEqual(gone, ["alice", "alice"]);
  const noHook = await rig();
  assert.deepEqual(await noHook.registrar.handle("bob", { t: Msg.DeregisterRequest, rid: 6 }), { t: Msg.DeregisterOk, rid: 6 });
});

test("certificate queries: by full name on this gateway, and the reason for each refusal in the log only", async () => {
  const r = await rig();
  await r.register("alice");
  const bob = (await r.register("bob")) as { certId: Uint8Array; cert: Uint8Array };
  const query = (name: string) => r.registrar.handle("alice", { t: Msg.CertQuery, rid: 9, name });
  assert.deepEqual(await query(`bob@${GATEWAY}`), { t: Msg.CertAnswer, rid: 9, cert: bob.cert });
  assert.deepEqual(r.events("cert-query").map((e) => [e.name, e.certId]), [["bob", toHex(bob.certId)]]);
  const notFound = { t: Msg.Error, rid: 9, code: ErrorCode.NotFound };
  assert.deepEqual(await query("carol"), notFound);
  await r.permissions.setDefault("deny");
  assert.deepEqual(await query("bob"), notFound);
  await r.permissions.add("alice", "bob", "cert", "allow");
  assert.deepEqual(await query("bob"), { t: Msg.CertAnswer, rid: 9, cert: bob.cert }, "the permission for app \"cert\" is what counts");
  assert.deepEqual(r.events("cert-query-not-found").map((e) => e.reason), ["no such registration", "policy denies it"]);
});

test("certificate queries at the instant of expiry: neither an expired caller nor an expired name is served", async () => {
  const r = await rig();
  await r.register("bob", { lifetime: 600 });
  r.clock.t += 300;
  await r.register("alice", { lifetime: 600 });
  r.clock.t += 300; // bob's registration ends now
  const query = () => r.registrar.handle("alice", { t: Msg.CertQuery, rid: 2, name: "bob" });
  assert.deepEqual(await query(), { t: Msg.Error, rid: 2, code: ErrorCode.NotFound });
  assert.deepEqual(r.events("cert-query-not-found").map((e) => e.reason), ["registration expired"]);
  await r.register("bob", { lifetime: 600 });
  r.clock.t += 300; // alice's registration ends now
  assert.deepEqual(await query(), { t: Msg.Error, rid: 2, code: ErrorCode.NotRegistered });
  assert.deepEqual(r.events("request-rejected").map((e) => [e.reason, e.request]), [["caller's registration expired", "cert-query"]]);
  await r.register("alice", { lifetime: 600, wantCert: false });
  await r.register("bob", { lifetime: 600, wantCert: false });
  assert.deepEqual(await query(), { t: Msg.Error, rid: 2, code: ErrorCode.NotFound });
  assert.equal(r.events("cert-query-not-found").at(-1)!.reason, "no certificate issued");
  const stranger = await r.registrar.handle("carol", { t: Msg.CertQuery, rid: 3, name: "bob" });
  assert.deepEqual(stranger, { t: Msg.Error, rid: 3, code: ErrorCode.NotRegistered });
  assert.equal(r.events("request-rejected").at(-1)!.reason, "caller is not registered");
});

test("the certificate's key is the one the sealed identity seed makes: an identity_public altered in the database is refused, and no certificate issued", async () => {
  const r = await rig();
  const first = (await r.register("alice")) as { cert: Uint8Array };
  const dev = (await r.store.getDevice("alice"))!;
  const fromSeed = ed25519FromSeed(dev.identitySeed!).publicKey;
  assert.deepEqual(readCertificateUnverified(first.cert).publicKey, fromSeed, "certified: the seed's public key");
  assert.deepEqual(dev.identityPublic, fromSeed);
  // Someone who can write the database but not read the KEK puts a key of theirs in the column.
  const theirs = generateEd25519().publicKey;
  await r.store.query("UPDATE devices SET identity_public = ? WHERE id = 'alice'", [Buffer.from(theirs)]);
  const before = await r.store.getRegistration("alice");
  await assert.rejects(async () => await r.register("alice"), /the identity key of alice in the registry is not the one its sealed seed makes: the row was altered/);
  assert.deepEqual(await r.store.getRegistration("alice"), before, "the registration is unchanged: nothing certified");
  assert.ok(!(await r.audit("alice")).some((a) => a.event === "renewed"), "no renewal recorded");
});
