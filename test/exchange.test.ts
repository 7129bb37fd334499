// The gateway-to-gateway key exchange (gateway/exchange.ts): a full run gives both sides the same SA
// seed and SPI; every attack is refused with a clear reason and leaves the refusing side's state as it
// was, which each test proves by finishing the genuine exchange afterwards.

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { toHex } from "../firmware/bytes.ts";
import { SUITE_AES_CCM_16_64_128, SUITE_XSALSA20_POLY1305 } from "../firmware/crypto/types.ts";
import { issueCertificate } from "../gateway/cwt.ts";
import { generateEd25519, type Ed25519KeyPair } from "../gateway/ed25519.ts";
import {
  decodeMsg1,
  decodeMsg2,
  decodeMsg3,
  decodeMsg4,
  encodeMsg1,
  encodeMsg2,
  encodeMsg3,
  encodeMsg4,
  ExchangeError,
  Initiator,
  Responder,
  SeenSessions,
  type ExchangeErrorCode,
  type LocalCallee,
  type LocalParty,
  type Msg2,
  type ResponderDeps,
} from "../gateway/exchange.ts";
import { Fleet, generateX25519 } from "../gateway/fleet.ts";
import { CertificateChecker, localSource, Verifier } from "../gateway/verifier.ts";

const T0 = 1_800_000_000;
const AES = SUITE_AES_CCM_16_64_128;
const XS = SUITE_XSALSA20_POLY1305;

interface GatewayKeys {
  signing: Ed25519KeyPair;
  cert: Uint8Array;
}

interface World {
  dirs: string[];
  fleet: Fleet;
  verifier: Verifier;
  verifierKey: Ed25519KeyPair;
  clock: { t: number };
  a: GatewayKeys;
  b: GatewayKeys;
  alice: LocalParty;
  bob: LocalCallee;
}

function tmp(): string {
  return mkdtempSync(join(tmpdir(), "kp-exchange-"));
}

function gatewayKeys(fleet: Fleet, id: string): GatewayKeys {
  const signing = generateEd25519();
  return { signing, cert: fleet.issueGateway(id, { signingKey: signing.publicKey, encryptionKey: generateX25519().publicKey }, T0, 86_400) };
}

function device(gw: GatewayKeys, gatewayId: string, id: string, nbf = T0, exp = T0 + 3600, identity = generateEd25519()): LocalParty {
  const cert = issueCertificate({ iss: gatewayId, sub: id, iat: nbf, nbf, exp, cti: new Uint8Array(16).fill(id.length), publicKey: identity.publicKey }, gw.signing.seed);
  return { name: `${id}@${gatewayId}`, identitySeed: identity.seed, cert, gatewayCert: gw.cert };
}

function world(): World {
  const dir = tmp();
  const fleet = Fleet.create(dir, "kp-fleet", T0);
  const verifierKey = generateEd25519();
  const verifier = new Verifier({ anchor: fleet.anchor, key: verifierKey, verifierId: "verifier.kp" });
  verifier.updateRevocationList(fleet.signedList());
  const a = gatewayKeys(fleet, "a.example");
  const b = gatewayKeys(fleet, "b.example");
  return {
    dirs: [dir],
    fleet,
    verifier,
    verifierKey,
    clock: { t: T0 + 10 },
    a,
    b,
    alice: device(a, "a.example", "alice"),
    // Bob prefers XSalsa20 (priority 1); the callee's priority decides (seed 003 V2).
    bob: { ...device(b, "b.example", "bob"), suites: [[AES, 2], [XS, 1]] },
  };
}

function done(w: World): void {
  for (const d of w.dirs) rmSync(d, { recursive: true, force: true });
}

/** A fresh checker: CertificateChecker caches good answers, and each test sets its own revocations. */
function deps(w: World): ResponderDeps {
  return {
    checker: new CertificateChecker({ source: localSource(w.verifier), verifierPublicKey: w.verifierKey.publicKey }),
    now: () => w.clock.t,
    seen: new SeenSessions(),
  };
}

function start(w: World, to = "bob@b.example"): Initiator {
  return new Initiator(deps(w), w.alice, to, "chat", [[AES, 1], [XS, 2]]);
}

async function refused(p: Promise<unknown> | (() => unknown), code: ExchangeErrorCode, reason?: RegExp): Promise<void> {
  await assert.rejects(
    async () => (typeof p === "function" ? p() : p),
    (e: unknown) => {
      assert.ok(e instanceof ExchangeError, `expected an ExchangeError, got ${String(e)}`);
      assert.equal(e.code, code, e.message);
      if (reason) assert.match(e.message, reason);
      return true;
    },
  );
}

/** Runs the rest of an exchange from msg2 and checks both sides agree. */
async function finish(init: Initiator, resp: Responder): Promise<void> {
  const msg3 = await init.onMsg2(resp.msg2);
  const { msg4, result: r } = await resp.onMsg3(msg3);
  const i = init.onMsg4(msg4);
  assert.equal(toHex(i.seed), toHex(r.seed));
  assert.equal(i.spi, r.spi);
  assert.equal(init.status, "done");
  assert.equal(resp.status, "done");
}

test("a full run: both gateways derive the same SA seed and SPI, the callee's suite priority wins, peers are the certified names", async () => {
  const w = world();
  try {
    const init = start(w);
    // Every message crosses the interlink as bytes: round-trip each through its codec.
    const msg1 = decodeMsg1(encodeMsg1(init.msg1));
    const resp = new Responder(deps(w), msg1, w.bob);
    const msg3 = await init.onMsg2(decodeMsg2(encodeMsg2(resp.msg2)));
    const { msg4, result: r } = await resp.onMsg3(decodeMsg3(encodeMsg3(msg3)));
    const i = init.onMsg4(decodeMsg4(encodeMsg4(msg4)));
    assert.equal(i.seed.length, 32);
    assert.equal(toHex(i.seed), toHex(r.seed));
    assert.equal(i.spi, r.spi);
    assert.ok(i.spi > 0);
    assert.equal(i.suite, XS, "Bob's priority 1, though Alice preferred AES");
    assert.equal(r.suite, XS);
    assert.deepEqual([i.role, i.self, i.peer, i.app], ["initiator", "alice@a.example", "bob@b.example", "chat"]);
    assert.deepEqual([r.role, r.self, r.peer, r.app], ["responder", "bob@b.example", "alice@a.example", "chat"]);
    // A second run has fresh ephemerals: a different seed.
    const init2 = start(w);
    const resp2 = new Responder(deps(w), init2.msg1, w.bob);
    const m3 = await init2.onMsg2(resp2.msg2);
    const other = (await resp2.onMsg3(m3)).result;
    assert.notEqual(toHex(other.seed), toHex(i.seed));
  } finally {
    done(w);
  }
});

test("a forged signature is refused (bad-signature) and the initiator still accepts the genuine msg2", async () => {
  const w = world();
  try {
    const init = start(w);
    const resp = new Responder(deps(w), init.msg1, w.bob);
    const sig = new Uint8Array(resp.msg2.sig);
    sig[10] ^= 1;
    await refused(init.onMsg2({ ...resp.msg2, sig }), "bad-signature", /bob@b\.example/);
    // Signed by a key that is not the one in Bob's certificate (the gateway kept another device's key).
    const impostor = new Responder(deps(w), init.msg1, { ...w.bob, identitySeed: generateEd25519().seed });
    await refused(init.onMsg2(impostor.msg2), "bad-signature");
    assert.equal(init.status, "wait-msg2");
    // On msg3 too: a flipped signature bit from Alice's side.
    const msg3 = await init.onMsg2(resp.msg2);
    const sig3 = new Uint8Array(msg3.sig);
    sig3[0] ^= 0x80;
    await refused(resp.onMsg3({ ...msg3, sig: sig3 }), "bad-signature", /alice@a\.example/);
    assert.equal(resp.status, "wait-msg3");
    const { msg4, result } = await resp.onMsg3(msg3);
    assert.equal(init.onMsg4(msg4).spi, result.spi);
  } finally {
    done(w);
  }
});

test("a certificate chain from another CA is refused (untrusted-certificate, unknown issuer)", async () => {
  const w = world();
  const rivalDir = tmp();
  w.dirs.push(rivalDir);
  try {
    // Same gateway id and keys, certified by a rival fleet: the chain does not reach our CA.
    const rival = Fleet.create(rivalDir, "rival", T0);
    const rivalB = { signing: w.b.signing, cert: rival.issueGateway("b.example", { signingKey: w.b.signing.publicKey, encryptionKey: generateX25519().publicKey }, T0, 86_400) };
    const init = start(w);
    const forged = new Responder({ ...deps(w) }, init.msg1, { ...w.bob, gatewayCert: rivalB.cert });
    await refused(init.onMsg2(forged.msg2), "untrusted-certificate", /unknown-issuer/);
    assert.equal(init.status, "wait-msg2");
    // A whole rival gateway issuing its own "bob@b.example": its device certificate does not verify either.
    const rivalSigning = generateEd25519();
    const rivalGw = { signing: rivalSigning, cert: rival.issueGateway("b.example", { signingKey: rivalSigning.publicKey, encryptionKey: generateX25519().publicKey }, T0, 86_400) };
    const fakeBob = { ...device(rivalGw, "b.example", "bob"), suites: w.bob.suites };
    await refused(init.onMsg2(new Responder(deps(w), init.msg1, fakeBob).msg2), "untrusted-certificate", /unknown-issuer/);
    await finish(init, new Responder(deps(w), init.msg1, w.bob));
  } finally {
    done(w);
  }
});

test("an expired device certificate is refused (untrusted-certificate, expired), on either side", async () => {
  const w = world();
  try {
    const init = start(w);
    const expiredBob = { ...device(w.b, "b.example", "bob", T0 - 7200, T0 - 3600), suites: w.bob.suites };
    await refused(init.onMsg2(new Responder(deps(w), init.msg1, expiredBob).msg2), "untrusted-certificate", /expired/);
    assert.equal(init.status, "wait-msg2");
    // Alice's expires while Bob's gateway waits: the clock moves past it before msg3 is judged.
    const shortAlice = device(w.a, "a.example", "alice", T0, T0 + 20);
    const init2 = new Initiator(deps(w), shortAlice, "bob@b.example", "chat", [[XS, 1]]);
    const resp2 = new Responder(deps(w), init2.msg1, w.bob);
    const msg3 = await init2.onMsg2(resp2.msg2);
    w.clock.t = T0 + 25;
    await refused(resp2.onMsg3(msg3), "untrusted-certificate", /expired/);
    assert.equal(resp2.status, "wait-msg3");
    w.clock.t = T0 + 10;
    await finish(init, new Responder(deps(w), init.msg1, w.bob));
  } finally {
    done(w);
  }
});

test("a revoked device is refused (untrusted-certificate, revoked), and the refusal changes nothing", async () => {
  const w = world();
  try {
    const init = start(w);
    const resp = new Responder(deps(w), init.msg1, w.bob);
    const msg3 = await init.onMsg2(resp.msg2);
    w.verifier.updateRevocationList(w.fleet.revoke({ devices: ["alice@a.example"] }, w.clock.t));
    await refused(resp.onMsg3(msg3), "untrusted-certificate", /revoked/);
    assert.equal(resp.status, "wait-msg3");
    // And Bob revoked, seen from Alice's side.
    w.verifier.updateRevocationList(w.fleet.revoke({ devices: ["bob@b.example"] }, w.clock.t));
    const init2 = start(w);
    await refused(init2.onMsg2(new Responder(deps(w), init2.msg1, w.bob).msg2), "untrusted-certificate", /device "bob@b\.example" is revoked/);
    assert.equal(init2.status, "wait-msg2");
  } finally {
    done(w);
  }
});

test("a device under a revoked gateway is refused (untrusted-certificate, revoked issuing gateway)", async () => {
  const w = world();
  try {
    w.verifier.updateRevocationList(w.fleet.revoke({ gateways: ["b.example"] }, w.clock.t));
    const init = start(w);
    await refused(init.onMsg2(new Responder(deps(w), init.msg1, w.bob).msg2), "untrusted-certificate", /issuing gateway "b\.example".*revoked/);
    assert.equal(init.status, "wait-msg2");
    // The other direction: Alice's gateway revoked, Bob's gateway refuses msg3.
    const w2 = world();
    w.dirs.push(...w2.dirs);
    const init2 = start(w2);
    const resp2 = new Responder(deps(w2), init2.msg1, w2.bob);
    const msg3 = await init2.onMsg2(resp2.msg2);
    w2.verifier.updateRevocationList(w2.fleet.revoke({ gateways: ["a.example"] }, w2.clock.t));
    await refused(resp2.onMsg3(msg3), "untrusted-certificate", /issuing gateway "a\.example".*revoked/);
    assert.equal(resp2.status, "wait-msg3");
  } finally {
    done(w);
  }
});

test("replayed messages are refused: msg1 by session id, msg2/msg3/msg4 by state", async () => {
  const w = world();
  try {
    const d = deps(w);
    const init = start(w);
    const resp = new Responder(d, init.msg1, w.bob);
    await refused(async () => new Responder(d, init.msg1, w.bob), "replay");
    const msg3 = await init.onMsg2(resp.msg2);
    await refused(init.onMsg2(resp.msg2), "unexpected", /wait-msg4/);
    const { msg4, result } = await resp.onMsg3(msg3);
    await refused(resp.onMsg3(msg3), "unexpected", /done/);
    const r = init.onMsg4(msg4);
    await refused(async () => init.onMsg4(msg4), "unexpected", /done/);
    assert.equal(r.spi, result.spi);
    // Still refused after the exchange ended: the session id stays remembered.
    await refused(async () => new Responder(d, init.msg1, w.bob), "replay");
    // A message from another exchange is not accepted by this one.
    const other = start(w);
    const otherResp = new Responder(d, other.msg1, w.bob);
    const fresh = start(w);
    await refused(fresh.onMsg2(otherResp.msg2), "unexpected", /another exchange/);
    assert.equal(fresh.status, "wait-msg2");
  } finally {
    done(w);
  }
});

test("a man in the middle substituting eA or eB is refused (bad-mac / bad-signature); the genuine run still completes", async () => {
  const w = world();
  try {
    const init = start(w);
    // Mallory swaps eA towards Bob: Bob signs a transcript Alice never sent.
    const mallory = new Initiator(deps(w), w.alice, "bob@b.example", "chat", [[AES, 1], [XS, 2]]);
    const towardsBob = { ...init.msg1, eA: mallory.msg1.eA };
    const bobFooled = new Responder(deps(w), towardsBob, w.bob);
    await refused(init.onMsg2(bobFooled.msg2), "bad-mac");
    // Mallory swaps eB with her own and recomputes the MAC (she knows that shared secret), but can only
    // sign with her own key over Bob's certificate.
    const malloryAsBob = new Responder(deps(w), init.msg1, { ...w.bob, identitySeed: generateEd25519().seed });
    await refused(init.onMsg2(malloryAsBob.msg2), "bad-signature");
    // Bare substitution of eB in Bob's genuine msg2.
    const swapped: Msg2 = { ...bobFooled.msg2, sessionId: init.msg1.sessionId, eB: malloryAsBob.msg2.eB };
    await refused(init.onMsg2(swapped), "bad-mac");
    assert.equal(init.status, "wait-msg2");
    // Towards Bob: a msg3 computed on the other leg fails Bob's MAC.
    const resp = new Responder(deps(w), init.msg1, w.bob);
    const other = start(w);
    const otherResp = new Responder(deps(w), other.msg1, w.bob);
    const foreign3 = await other.onMsg2(otherResp.msg2);
    await refused(resp.onMsg3({ ...foreign3, sessionId: init.msg1.sessionId }), "bad-mac");
    await finish(init, resp);
  } finally {
    done(w);
  }
});

test("wrong names, unoffered suites, no common suite, timeouts and low-order keys are refused", async () => {
  const w = world();
  try {
    const init = start(w);
    const d = deps(w); // shared by the refusals below and the genuine answer at the end
    // A good certificate for someone else: carol@b.example answering for bob.
    const carol = { ...device(w.b, "b.example", "carol"), suites: w.bob.suites };
    await refused(async () => new Responder(d, init.msg1, carol), "wrong-peer");
    await refused(init.onMsg2(new Responder(deps(w), { ...init.msg1, to: carol.name }, carol).msg2), "bad-mac");
    const onlyAes = new Initiator(deps(w), w.alice, "bob@b.example", "chat", [[AES, 1]]);
    const r = new Responder(deps(w), onlyAes.msg1, w.bob);
    assert.equal(r.msg2.suite, AES);
    await refused(onlyAes.onMsg2({ ...r.msg2, suite: XS }), "bad-suite");
    await refused(async () => new Responder(d, init.msg1, { ...w.bob, suites: [[99, 1]] }), "no-common-suite");
    // The all-zero point is of low order: the shared secret would be zero.
    await refused(async () => new Responder(d, { ...init.msg1, eA: new Uint8Array(32) }, w.bob), "malformed", /low order/);
    // The refusals above recorded nothing: the genuine msg1, same session id, is still answered.
    const resp = new Responder(d, init.msg1, w.bob);
    w.clock.t += 31;
    await refused(init.onMsg2(resp.msg2), "timeout");
    w.clock.t -= 31;
    await finish(init, resp);
  } finally {
    done(w);
  }
});

test("property: the message decoders refuse any mutation with an ExchangeError, never a crash", async () => {
  const w = world();
  try {
    const init = start(w);
    const resp = new Responder(deps(w), init.msg1, w.bob);
    const msg3 = await init.onMsg2(resp.msg2);
    const samples: [Uint8Array, (b: Uint8Array) => unknown][] = [
      [encodeMsg1(init.msg1), decodeMsg1],
      [encodeMsg2(resp.msg2), decodeMsg2],
      [encodeMsg3(msg3), decodeMsg3],
      [encodeMsg4({ sessionId: init.msg1.sessionId, mac: new Uint8Array(32) }), decodeMsg4],
    ];
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 3 }), fc.nat(), fc.integer({ min: 1, max: 255 }), fc.boolean(), (which, pos, flip, cut) => {
        const [bytes, decodeFn] = samples[which];
        const b = new Uint8Array(bytes);
        const at = pos % b.length;
        const input = cut ? b.subarray(0, at) : (b[at] ^= flip, b);
        try {
          decodeFn(input);
          return true; // some flips land inside byte strings and still decode: that is the MAC's job
        } catch (e) {
          return e instanceof ExchangeError && e.code === "malformed";
        }
      }),
      { numRuns: 2000 },
    );
  } finally {
    done(w);
  }
});
