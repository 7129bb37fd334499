// No (key, nonce) pair is ever used twice, whatever reboots the handset goes through.
//
// The real firmware bundle runs in the emulator against an in-process gateway. Every AES call the
// device makes and every seal the gateway makes goes into a ledger (test/support/aes-ledger.ts);
// reboots are triggered from inside the emulator's event handlers, so each one happens exactly at its
// point: right after a durable Storage write (kp.ctr: persisted but not yet used), at a transport
// write (the bytes never leave), or after some milliseconds. The property: after any such scenario the
// device still ends joined and registered, the gateway's join counter equals the device's kp.ctr, and
// the ledger shows no keystream (key, counter block) and no (key, nonce) used twice.
//
// The last group shows the detector catches a broken device: with the counter rolled back on both
// sides AND both random number generators stuck, a second join derives the same link keys and the
// ledger sees the reuse; with only one of the two broken, the keys stay fresh (docs/PROTOCOL.md §3).

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { crc32 } from "node:zlib";
import fc from "fast-check";
import { EmulatedDevice, type AesObservation } from "../emulator/device.ts";
import { createEspruinoCrypto } from "../emulator/espruino-crypto.ts";
import { provisionEmulated } from "../emulator/sim.ts";
import { buildFirmware } from "../flash/build.ts";
import * as gcbor from "../gateway/encoding/cbor.ts";
import { nodeCrypto } from "../gateway/crypto/symmetric.ts";
import type { Gateway } from "../gateway/gateway.ts";
import { fromHex, toHex } from "../firmware/bytes.ts";
import { deviceCrypto } from "../firmware/crypto/device.ts";
import { espruinoNatives } from "../firmware/crypto/natives.ts";
import { SUITE_AES_CCM_16_64_128 } from "../firmware/crypto/types.ts";
import { FrameDecoder } from "../firmware/proto/frame.ts";
import { frameNonce, DIR_DOWN, DIR_UP } from "../firmware/proto/keys.ts";
import { encodeMessage, Msg } from "../firmware/proto/messages.ts";
import { AesLedger, ccmCounterBlocks, describeReuse, type Reuse } from "./support/aes-ledger.ts";
import { startGateway, tempDir, until, type TestGateway, testDatabaseOf } from "./support/harness.ts";

/** The Storage file the firmware keeps its join counter in (firmware/platform/espruino.ts). */
const COUNTER_FILE = "kp.ctr";
const BOARDS_UNDER_TEST = ["emulator", "puckjs"] as const;
type BoardId = (typeof BOARDS_UNDER_TEST)[number];
/** A join and registration take about 150 ms here, a whole scenario under 2 s: this is room for a slow
 *  CI, and short enough that a hang fails (and shrinks) in reasonable time. */
const REGISTER_WITHIN_MS = 10_000;

const bundles = new Map<BoardId, string>();
const buildDir = tempDir("kp-nonce-build-");

before(async () => {
  // The real bundles, built once for the file, into a directory of our own (not build/).
  for (const board of BOARDS_UNDER_TEST) {
    const r = await buildFirmware({ board, outDir: buildDir });
    assert.ok(r.ok, `firmware for ${board} did not build: ${r.problems.join("; ")}`);
    bundles.set(board, r.code);
  }
});

after(() => rmSync(buildDir, { recursive: true, force: true }));

// ---- a gateway, one emulated handset and the ledger over both ------------------------------------

interface JoinSeen {
  boot: number;
  ctr: number;
  /** The device's join nonce, hex (public: it travels in the clear). */
  nonce: string;
}

interface Rig {
  t: TestGateway;
  dev: EmulatedDevice;
  id: string;
  ledger: AesLedger;
  /** Boots begun so far (1 after the first boot). */
  boots: number;
  /** The boot in which the device last logged a registration (0: none yet). */
  registeredInBoot: number;
  /** Every JoinRequest the device handed to its transport (a kill may have stopped it leaving). */
  joins: JoinSeen[];
  uncaught: string[];
  /** Reboots whose boot failed (none expected). */
  bootErrors: string[];
  /** The device's last log lines (the firmware logs no key material). */
  recentLogs: string[];
  boot(): Promise<void>;
  /** Kills the device now and boots it again in the background: safe inside an emulator event handler. */
  reboot(): void;
  /** The device's kp.ctr as a number (0 when absent). */
  deviceCounter(): number;
  gatewayCounter(): Promise<number>;
  close(): Promise<void>;
}

/** Watches every seal the gateway makes; optionally makes its random numbers constant (a broken RNG).
 *  Gateway.start takes no crypto option, so this wraps the SymCrypto object it built, in place. */
function instrumentGateway(gw: Gateway, ledger: AesLedger, stuckRandom: boolean): void {
  const c = gw.links.deps.crypto;
  const seal = c.seal;
  c.seal = (suite, key, nonce, pt) => {
    ledger.recordGatewaySeal(suite, key, nonce, pt);
    return seal(suite, key, nonce, pt);
  };
  if (stuckRandom) c.random = (n) => new Uint8Array(n).fill(0xa5);
}

/** The JoinRequests inside one transport write. */
function joinRequestsIn(bytes: Uint8Array): { ctr: number; nonce: string }[] {
  const out: { ctr: number; nonce: string }[] = [];
  for (const payload of new FrameDecoder((b) => crc32(b) >>> 0).push(bytes)) {
    const m = gcbor.decode(payload) as unknown[];
    if (Array.isArray(m) && m[0] === Msg.JoinRequest) out.push({ ctr: m[2] as number, nonce: toHex(m[3] as Uint8Array) });
  }
  return out;
}

async function startRig(board: BoardId, opts: { stuckRandom?: boolean } = {}): Promise<Rig> {
  const t = await startGateway();
  const ledger = new AesLedger();
  instrumentGateway(t.gw, ledger, opts.stuckRandom ?? false);
  const id = `nonce-${board}`;
  const storageDir = tempDir("kp-nonce-dev-");
  const dev = new EmulatedDevice({ board, storageDir, gateway: t.gw.address, name: id });
  await provisionEmulated(dev, t.dataDir, id, board, t.gw.address, 3600, await testDatabaseOf(t.dataDir));
  dev.storage.write(".bootcde", bundles.get(board)!);
  // A stuck hardware RNG, the way Espruino would run it: a boot file that runs before the firmware.
  if (opts.stuckRandom) dev.storage.write(".boot0", "E.hwRand = function () { return 0x5a5a5a5a; };");

  const pending: Promise<void>[] = [];
  const rig: Rig = {
    t, dev, id, ledger,
    boots: 0,
    registeredInBoot: 0,
    joins: [],
    uncaught: [],
    bootErrors: [],
    recentLogs: [],
    boot: async () => {
      rig.boots++;
      ledger.context = `boot ${rig.boots}`;
      await dev.boot();
    },
    reboot: () => {
      rig.boots++;
      ledger.context = `boot ${rig.boots}`;
      pending.push(dev.reboot().catch((e: unknown) => { rig.bootErrors.push(String(e)); }));
    },
    deviceCounter: () => {
      const b = dev.storage.read(COUNTER_FILE);
      return b ? Number(Buffer.from(b).toString("latin1")) : 0;
    },
    gatewayCounter: async () => (await t.gw.store.getDeviceInfo(id))!.joinCounter,
    close: async () => {
      dev.powerOff();
      await Promise.all(pending);
      dev.powerOff(); // a boot that was already past its overtaking check
      await t.gw.stop();
      rmSync(storageDir, { recursive: true, force: true });
      rmSync(t.dataDir, { recursive: true, force: true });
    },
  };
  dev.on("aes", (o: AesObservation) => ledger.observeDevice(o));
  dev.on("log", (line: string) => {
    if (line.startsWith("KP registered")) rig.registeredInBoot = rig.boots;
    rig.recentLogs.push(`boot ${rig.boots}: ${line}`);
    if (rig.recentLogs.length > 12) rig.recentLogs.shift();
  });
  dev.on("uncaught", (e: string) => rig.uncaught.push(`boot ${rig.boots}: ${e}`));
  dev.on("transport-write", (w: { bytes: Uint8Array }) => {
    for (const j of joinRequestsIn(w.bytes)) rig.joins.push({ boot: rig.boots, ...j });
  });
  return rig;
}

/** Waits for cond; a timeout says what the device last logged and threw, to tell a hang from a crash. */
async function waitFor(rig: Rig, cond: () => boolean, what: () => string, ms: number): Promise<void> {
  try {
    await until(cond, "", ms);
  } catch {
    throw new Error(`timed out waiting for ${what()}; device log: ${rig.recentLogs.join(" | ")}; uncaught: ${rig.uncaught.join(" | ") || "none"}`);
  }
}

function registeredNow(rig: Rig): Promise<void> {
  return waitFor(rig, () => rig.registeredInBoot === rig.boots, () => `registration in boot ${rig.boots}`, REGISTER_WITHIN_MS);
}

// ---- the scenarios ------------------------------------------------------------------------------

/** Where in a boot the device is rebooted. Counts restart at every boot. */
type RebootPoint =
  | { kind: "storage-write"; n: number }
  | { kind: "transport-write"; n: number }
  | { kind: "time"; ms: number };

function describePoint(p: RebootPoint): string {
  if (p.kind === "storage-write") return `right after durable Storage write #${p.n} (kp.ctr persisted, not yet sent)`;
  if (p.kind === "transport-write") return `at transport write #${p.n} (${p.n === 1 ? "the JoinRequest" : "the sealed RegisterRequest"}), before it leaves`;
  return `${p.ms} ms into the boot`;
}

/** Gives a point a readable form in fast-check's counterexamples. */
function readable(p: RebootPoint): RebootPoint {
  return Object.assign(p, { [fc.toStringMethod]: () => describePoint(p) });
}

// Only points every boot reaches: one Storage write (kp.ctr) and two transport writes (the JoinRequest,
// then the RegisterRequest) per boot; time points may also land after the registration.
const rebootPoint: fc.Arbitrary<RebootPoint> = fc.oneof(
  fc.constant<RebootPoint>({ kind: "storage-write", n: 1 }),
  fc.integer({ min: 1, max: 2 }).map((n): RebootPoint => ({ kind: "transport-write", n })),
  fc.integer({ min: 0, max: 250 }).map((ms): RebootPoint => ({ kind: "time", ms })),
).map(readable);

/** Boots the handset, reboots it at each point in turn (the i-th point in the i-th boot), then lets it
 *  join and register, and checks the ledger, the registration and the counters. */
async function rebootsThenRegister(board: BoardId, points: RebootPoint[]): Promise<void> {
  const rig = await startRig(board);
  let stage = 0;
  let storageWrites = 0;
  let transportWrites = 0;
  let timer: NodeJS.Timeout | undefined;
  const fired: string[] = [];
  const arm = () => {
    storageWrites = 0;
    transportWrites = 0;
    const p = points[stage];
    if (p && p.kind === "time") timer = setTimeout(() => fire(), p.ms);
  };
  function fire(detail = "") {
    clearTimeout(timer);
    fired.push(`boot ${rig.boots}: ${describePoint(points[stage])}${detail}`);
    stage++;
    rig.reboot();
    arm();
  }
  rig.dev.on("storage-write", (w: { name: string }) => {
    const p = points[stage];
    if (p && p.kind === "storage-write" && ++storageWrites === p.n) fire(` [${w.name}]`);
  });
  rig.dev.on("transport-write", () => {
    const p = points[stage];
    if (p && p.kind === "transport-write" && ++transportWrites === p.n) fire();
  });
  try {
    arm();
    await rig.boot();
    await waitFor(rig, () => stage === points.length && rig.registeredInBoot === rig.boots, () => `every reboot, then registration (fired: ${fired.join(" | ") || "none"})`, REGISTER_WITHIN_MS);
    const last = `boot ${rig.boots}`;

    assert.deepEqual(rig.ledger.unexpected, [], "the device used AES only for CCM");
    assert.deepEqual(rig.ledger.reuses().map(describeReuse), [], `no (key, counter block) or (key, nonce) twice; reboots: ${fired.join(" | ")}`);
    // The ledger saw the traffic it vouches for (so an empty list of reuses means something).
    assert.ok(rig.ledger.of("device", "seal").some((m) => m.what === "RegisterRequest" && m.context === last), "device sealed its RegisterRequest");
    assert.ok(rig.ledger.of("device", "open").some((m) => m.what === "RegisterOk" && m.context === last), "device opened the RegisterOk");
    // The gateway sealed the RegisterOk the device opened, and the counter blocks the ledger derives for
    // that seal are the very ones the device's CCM code computed: both sides share one block space.
    // (A gateway record's context is the device's boot at that moment; a seal for a connection the
    // device had just left can carry the next boot's name, hence "some".)
    const deviceBlocks = new Set(rig.ledger.blocks.filter((b) => b.party === "device").map((b) => `${b.keyId}|${b.block}`));
    assert.ok(
      rig.ledger.of("gateway", "seal").some((m) => m.what === "RegisterOk" && m.context === last &&
        ccmCounterBlocks(fromHex(m.nonce)!, m.length).every((a) => deviceBlocks.has(`${m.keyId}|${toHex(a)}`))),
      "the device opened the RegisterOk with the counter blocks the gateway sealed it with",
    );
    assert.equal(rig.dev.eval("KP.status().registered"), true, "the device ends registered");
    assert.ok((await rig.t.gw.store.getRegistration(rig.id)), "the gateway holds the registration");
    assert.equal(await rig.gatewayCounter(), rig.deviceCounter(), "the gateway's join counter equals the device's kp.ctr");
    const ctrs = rig.joins.map((j) => j.ctr);
    assert.ok(ctrs.every((c, i) => i === 0 || c > ctrs[i - 1]), `every join attempt used a higher counter: ${ctrs.join(", ")}`);
    assert.deepEqual(rig.uncaught, []);
    assert.deepEqual(rig.bootErrors, [], "every reboot booted");
  } finally {
    clearTimeout(timer);
    await rig.close();
  }
}

test("reboots anywhere in join and registration never reuse a (key, nonce) pair, and the counters agree", { timeout: 120_000 }, async () => {
  await fc.assert(
    fc.asyncProperty(fc.constantFrom(...BOARDS_UNDER_TEST), fc.array(rebootPoint, { maxLength: 4 }), rebootsThenRegister),
    { numRuns: 14, includeErrorInReport: true },
  );
});

test("the three crash points of a join, one boot each, on both boards: no reuse, counters agree", async () => {
  // kp.ctr persisted but unused, the JoinRequest unsent, the sealed RegisterRequest unsent: the points
  // the property is most about, run on each board every time rather than left to chance.
  for (const board of BOARDS_UNDER_TEST) {
    await rebootsThenRegister(board, [readable({ kind: "storage-write", n: 1 }), readable({ kind: "transport-write", n: 1 }), readable({ kind: "transport-write", n: 2 })]);
  }
});

// ---- the detector, on broken devices ------------------------------------------------------------
//
// Link keys are HKDF(salt = nD || nG, IKM = root key, info = [.., ctr, ..]) (docs/PROTOCOL.md §3), and
// every link starts its sequence numbers at 1, so the first RegisterRequest of every join is sealed
// under nonce N(up, 0, 1). Only the keys differ between joins. They are fresh if EITHER the nonces
// (nD from the device, nG from the gateway) OR the counter differ: rolling back the counter alone
// cannot make a reuse while the random numbers are good, and stuck random numbers alone cannot while
// the counter is persisted before use. Both broken at once must show up in the ledger.

/** Two joins, with a power cut in between; optionally the join counter rolled back on both sides
 *  behind the firmware's and the gateway's backs, as if neither had persisted it. */
async function twoJoins(opts: { stuckRandom: boolean; rollBackCounter: boolean }): Promise<{ reuses: Reuse[]; joins: JoinSeen[] }> {
  const rig = await startRig("emulator", { stuckRandom: opts.stuckRandom });
  try {
    const deviceBefore = rig.dev.storage.read(COUNTER_FILE);
    const gatewayBefore = await rig.gatewayCounter();
    await rig.boot();
    await registeredNow(rig);
    rig.dev.powerOff();
    if (opts.rollBackCounter) {
      if (deviceBefore) rig.dev.storage.write(COUNTER_FILE, deviceBefore);
      else rig.dev.storage.erase(COUNTER_FILE);
      await rig.t.gw.store.query("UPDATE devices SET join_counter = ? WHERE id = ?", [gatewayBefore, rig.id]);
    }
    await rig.boot();
    await registeredNow(rig);
    assert.deepEqual(rig.ledger.unexpected, []);
    assert.equal(rig.joins.length, 2, "one join per boot");
    return { reuses: rig.ledger.reuses(), joins: rig.joins };
  } finally {
    await rig.close();
  }
}

describe("key freshness comes from the join nonces and the counter", () => {
  test("counter rolled back on both sides and both RNGs stuck: the ledger sees the reuse", async () => {
    const { reuses, joins } = await twoJoins({ stuckRandom: true, rollBackCounter: true });
    assert.equal(joins[1].ctr, joins[0].ctr, "the same counter twice");
    assert.equal(joins[1].nonce, joins[0].nonce, "the same device nonce twice");
    const lines = reuses.map(describeReuse);
    assert.ok(
      reuses.some((r) => r.party === "device" && r.kind === "counter block" && r.first.includes("seal of RegisterRequest") && r.second.includes("boot 2")),
      `the device's RegisterRequest keystream reused across the boots: ${lines.join(" | ")}`,
    );
    assert.ok(
      reuses.some((r) => r.party === "device" && r.kind === "nonce" && r.first.includes("seal of RegisterRequest")),
      `the device's (key, nonce) reused: ${lines.join(" | ")}`,
    );
    assert.ok(
      reuses.some((r) => r.party === "gateway" && r.kind === "nonce" && r.first.includes("seal of RegisterOk")),
      `the gateway's (key, nonce) reused: ${lines.join(" | ")}`,
    );
  });

  test("counter rolled back on both sides, RNGs healthy: fresh nonces alone keep the keys fresh", async () => {
    const { reuses, joins } = await twoJoins({ stuckRandom: false, rollBackCounter: true });
    assert.equal(joins[1].ctr, joins[0].ctr, "the same counter twice");
    assert.notEqual(joins[1].nonce, joins[0].nonce);
    assert.deepEqual(reuses.map(describeReuse), []);
  });

  test("both RNGs stuck, counter persisted: the counter alone keeps the keys fresh", async () => {
    const { reuses, joins } = await twoJoins({ stuckRandom: true, rollBackCounter: false });
    assert.equal(joins[1].nonce, joins[0].nonce, "the same device nonce twice");
    assert.ok(joins[1].ctr > joins[0].ctr);
    assert.deepEqual(reuses.map(describeReuse), []);
  });
});

// ---- the ledger itself, on the device's real CCM code in Node -------------------------------------

/** The device's SymCrypto on the model of Espruino's natives, reporting its AES calls to `ledger`. */
function observedDeviceCrypto(ledger: AesLedger) {
  const { cryptoModule } = createEspruinoCrypto({ aesEcbCbc: true, aesCcm: false, observe: (o) => ledger.observeDevice(o) });
  return deviceCrypto(espruinoNatives(cryptoModule, undefined, { hwRand: () => randomBytes(4).readInt32LE(0) }), []);
}

const registerRequest = gcbor.encode(encodeMessage({ t: Msg.RegisterRequest, rid: 1, lifetime: 60, suites: [[SUITE_AES_CCM_16_64_128, 1]], wantCert: true, firmware: "test", memory: 0 }));
const registerOk = gcbor.encode(encodeMessage({ t: Msg.RegisterOk, rid: 1, granted: 60, certId: new Uint8Array(16), cert: new Uint8Array(40) }));

describe("the ledger", () => {
  test("records one message and the CCM counter blocks A0..An of each device seal, as RFC 3610 lays them out", async () => {
    const ledger = new AesLedger();
    const c = observedDeviceCrypto(ledger);
    const key = new Uint8Array(randomBytes(16));
    const nonce = frameNonce(SUITE_AES_CCM_16_64_128, DIR_UP, 0, 7);
    c.seal(SUITE_AES_CCM_16_64_128, key, nonce, registerRequest);
    assert.deepEqual(ledger.unexpected, []);
    assert.deepEqual(ledger.messages.map((m) => [m.party, m.role, m.what, m.nonce, m.length]), [["device", "seal", "RegisterRequest", toHex(nonce), registerRequest.length]]);
    assert.deepEqual(ledger.blocks.map((b) => b.block), ccmCounterBlocks(nonce, registerRequest.length).map(toHex));
    assert.equal(ledger.blocks.length, 1 + Math.ceil(registerRequest.length / 16));
    assert.deepEqual(ledger.reuses(), []);
  });

  test("a device opening what the gateway sealed is one use each, not a reuse; a second seal is", async () => {
    const ledger = new AesLedger();
    const c = observedDeviceCrypto(ledger);
    const key = new Uint8Array(randomBytes(16));
    const nonce = frameNonce(SUITE_AES_CCM_16_64_128, DIR_DOWN, 0, 1);
    const sealed = nodeCrypto().seal(SUITE_AES_CCM_16_64_128, key, nonce, registerOk);
    ledger.recordGatewaySeal(SUITE_AES_CCM_16_64_128, key, nonce, registerOk);
    assert.deepEqual(c.open(SUITE_AES_CCM_16_64_128, key, nonce, sealed), registerOk);
    assert.deepEqual(ledger.messages.map((m) => `${m.party} ${m.role} ${m.what}`), ["gateway seal RegisterOk", "device open RegisterOk"]);
    assert.deepEqual(ledger.reuses(), []);
    // The gateway derives exactly the blocks the device computed.
    const blocksOf = (party: string) => ledger.blocks.filter((b) => b.party === party).map((b) => b.block);
    assert.deepEqual(blocksOf("gateway"), blocksOf("device"));

    ledger.recordGatewaySeal(SUITE_AES_CCM_16_64_128, key, nonce, registerOk); // the same plaintext again
    const found = ledger.reuses();
    assert.deepEqual(new Set(found.map((r) => `${r.party} ${r.kind}`)), new Set(["gateway counter block", "gateway nonce"]));
    assert.equal(found.filter((r) => r.kind === "counter block").length, 1 + Math.ceil(registerOk.length / 16));
  });

  test("the device and the gateway sealing under one (key, nonce) is reported, without key material", async () => {
    const ledger = new AesLedger();
    const c = observedDeviceCrypto(ledger);
    const key = new Uint8Array(randomBytes(16));
    const nonce = frameNonce(SUITE_AES_CCM_16_64_128, DIR_UP, 0, 1);
    ledger.context = "step 1";
    c.seal(SUITE_AES_CCM_16_64_128, key, nonce, registerRequest);
    ledger.context = "step 2";
    ledger.recordGatewaySeal(SUITE_AES_CCM_16_64_128, key, nonce, registerOk);
    const found = ledger.reuses();
    assert.deepEqual(found.map((r) => `${r.party} ${r.kind} ${r.value}`), [`both nonce ${toHex(nonce)}`]);
    const line = describeReuse(found[0]);
    assert.match(line, /device and gateway both sealed nonce .* under key#1 twice: first device step 1: seal of RegisterRequest .*; then gateway step 2: seal of RegisterOk/);
    assert.ok(!line.includes(toHex(key)), "the report names the key, never shows it");
  });

  test("AES calls that are not CCM's CBC-MAC and keystream are listed, not silently ignored", async () => {
    const ledger = new AesLedger();
    const { cryptoModule } = createEspruinoCrypto({ aesEcbCbc: true, aesCcm: false, observe: (o) => ledger.observeDevice(o) });
    cryptoModule.AES.encrypt(new Uint8Array(16), new Uint8Array(16), { mode: "CBC", iv: new Uint8Array(16).fill(1) });
    cryptoModule.AES.decrypt(new Uint8Array(16), new Uint8Array(16), { mode: "ECB" });
    assert.equal(ledger.unexpected.length, 2);
    assert.deepEqual(ledger.messages, []);
    assert.deepEqual(ledger.blocks, []);
  });
});
