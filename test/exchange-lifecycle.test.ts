// The life of one exchange between gateways (gateway/crossgw/exchange.ts), in-process and fast: the
// deadlines at their exact edge on both sides, aborts (which must wipe the keys and end the run),
// messages that cross during a verifier round trip, the memory of seen session ids, the defaults a
// gateway runs with when its configuration says nothing, and the errors an operator or a peer reads.
// docs/PROTOCOL.md §8 is the reference. Written for the survivors of `npm run mutation --
// gateway/crossgw/exchange.ts` (docs/MUTATION.md) that only test/crossgw.test.ts's gateways reached.
import assert from "node:assert/strict";
import { test } from "node:test";
import { ml_kem768 } from "@noble/post-quantum/ml-kem.js";
import { decode, encode } from "../gateway/encoding/cbor.ts";
import {
  decodeMsg1,
  encodeMsg1,
  ExchangeError,
  Initiator,
  KEY_AGREEMENT_POLICIES,
  Responder,
  SeenSessions,
  type ExchangeResult,
} from "../gateway/crossgw/exchange.ts";
import { AES, deps, done, refused, start, T0, world, XS } from "./support/exchange-world.ts";

const zeros = (b: Uint8Array): boolean => b.every((x) => x === 0);
const sid = (n: number): Uint8Array => new Uint8Array(16).fill(n);

// Key material an exchange holds between messages is private to it: these read it only to see it wiped.
const initiatorSeed = (i: Initiator): Uint8Array => (i as unknown as { state: { result: ExchangeResult } }).state.result.seed;
const responderPrk = (r: Responder): Uint8Array => (r as unknown as { state: { prk: Uint8Array } }).state.prk;

test("errors are ExchangeErrors by name, and the key-agreement policies are the three docs/FLEET.md names", async () => {
  const e = await refused(() => decodeMsg1(Uint8Array.of(0xff)), "malformed");
  assert.equal(e.name, "ExchangeError");
  assert.ok(e instanceof Error);
  assert.deepEqual([...KEY_AGREEMENT_POLICIES], ["x25519", "hybrid", "hybrid-only"]);
});

test("a refusal caused by a lower layer says which message, and keeps that layer's error as its cause", async () => {
  const notCbor = await refused(() => decodeMsg1(Uint8Array.of(0xff)), "malformed", /^exchange message 1 is not valid CBOR$/);
  assert.ok(notCbor.cause instanceof Error);
  // 1 as a two-byte integer (0x18 0x01): valid CBOR, not deterministic.
  const loose = new Uint8Array([0x88, 0x18, 0x01, ...encode(sid(1)), ...encode("a@x"), ...encode("b@y"), ...encode("c"), 0x80, ...encode(new Uint8Array(32)), 0x00]);
  await refused(() => decodeMsg1(loose), "malformed", /^exchange message 1 is not deterministically encoded CBOR/);

  const w = world();
  try {
    const init = start(w);
    const resp = new Responder(deps(w), init.msg1, w.bob);
    const c = new Uint8Array(resp.msg2.ciphertext);
    c[0] ^= 1;
    const altered = await refused(init.onMsg2({ ...resp.msg2, ciphertext: c }), "decrypt-failed", /^message 2 does not decrypt/);
    assert.ok(altered.cause instanceof Error);
    const lowOrder = await refused(() => new Responder(deps(w), { ...init.msg1, eA: new Uint8Array(32) }, w.bob), "malformed", /low order/);
    assert.ok(lowOrder.cause instanceof Error);
    const hybrid = start(w, {}, deps(w, { keyAgreement: "hybrid" }));
    const badKem = await refused(() => new Responder(deps(w, { keyAgreement: "hybrid" }), { ...hybrid.msg1, kemKey: new Uint8Array(1184).fill(0xff) }, w.bob), "malformed", /^message 1: the ML-KEM-768 key is not a valid encapsulation key$/);
    assert.ok(badKem.cause instanceof Error);
  } finally {
    done(w);
  }
});

test("the initiator refuses bad parameters before sending anything: each of from, to, app and suites on its own", async () => {
  const w = world();
  try {
    const d = deps(w);
    const names = /^from and to must be device names \(name@domain\)$/;
    await refused(() => new Initiator(d, { ...w.alice, name: "alice" }, "bob@b.example", "chat", [[AES, 1]]), "malformed", names);
    await refused(() => new Initiator(d, w.alice, "bob", "chat", [[AES, 1]]), "malformed", names);
    const params = /^app must be a short string and suites \[suite, priority\] pairs$/;
    await refused(() => new Initiator(d, w.alice, "bob@b.example", "", [[AES, 1]]), "malformed", params);
    await refused(() => new Initiator(d, w.alice, "bob@b.example", "chat", [[AES, 1, 2]]), "malformed", params);
    await refused(() => new Initiator(d, w.alice, "bob@b.example", "chat", [[AES, 1]], { replaces: -1 }), "malformed", /^replaces must be an SPI/);
  } finally {
    done(w);
  }
});

test("the error texts a peer or an operator reads: which message, which names, which suite", async () => {
  const w = world();
  try {
    const d = deps(w);
    const init = start(w);
    await refused(() => new Responder(d, init.msg1, { ...w.bob, name: "carol@b.example" }), "wrong-peer", /^message 1 is for "bob@b\.example", not "carol@b\.example"$/);
    await refused(() => new Responder(d, init.msg1, { ...w.bob, suites: [[99, 1]] }), "no-common-suite", /^no cipher suite both devices registered$/);
    const resp = new Responder(d, init.msg1, w.bob);
    await refused(init.onMsg2({ ...resp.msg2, sessionId: new Uint8Array(16) }), "unexpected", /^message 2 belongs to another exchange$/);
    await refused(init.onMsg2({ ...resp.msg2, suite: 99 }), "bad-suite", /^the responder chose suite 99, which was not offered$/);
    const msg3 = await init.onMsg2(resp.msg2);
    await refused(init.onMsg2(resp.msg2), "unexpected", /^message 2 arrived while the exchange is wait-msg4$/);
    await refused(resp.onMsg3({ ...msg3, sessionId: new Uint8Array(16) }), "unexpected", /^message 3 belongs to another exchange$/);
    const { msg4 } = await resp.onMsg3(msg3);
    await refused(resp.onMsg3(msg3), "unexpected", /^message 3 arrived while the exchange is done$/);
    await refused(async () => init.onMsg4({ ...msg4, sessionId: new Uint8Array(16) }), "unexpected", /^message 4 belongs to another exchange$/);
    init.onMsg4(msg4);
    await refused(async () => init.onMsg4(msg4), "unexpected", /^message 4 arrived while the exchange is done$/);

    const strict = start(w, {}, deps(w, { keyAgreement: "hybrid-only" }));
    const classical = new Responder(deps(w, { keyAgreement: "x25519" }), strict.msg1, w.bob);
    await refused(strict.onMsg2(classical.msg2), "downgrade", /^the responder answered with X25519 alone, and this gateway's policy requires X25519 \+ ML-KEM-768$/);
  } finally {
    done(w);
  }
});

test("message 4: a wrong key confirmation is refused (bad-mac) and changes nothing; the genuine one then completes", async () => {
  const w = world();
  try {
    const init = start(w);
    const resp = new Responder(deps(w), init.msg1, w.bob);
    const msg3 = await init.onMsg2(resp.msg2);
    const { msg4, result } = await resp.onMsg3(msg3);
    for (const at of [0, 31]) {
      const mac = new Uint8Array(msg4.mac);
      mac[at] ^= 0x40;
      await refused(async () => init.onMsg4({ ...msg4, mac }), "bad-mac", /^message 4: key confirmation does not verify$/);
    }
    assert.equal(init.status, "wait-msg4");
    assert.equal(init.onMsg4(msg4).spi, result.spi);
  } finally {
    done(w);
  }
});

test("deadlines: a message arriving exactly when the timeout runs out is refused (timeout) and changes nothing, on both sides", async () => {
  const w = world();
  try {
    // Both sides start at T0 + 10 with the default 30 s: the deadline is T0 + 40.
    const init = start(w);
    const resp = new Responder(deps(w), init.msg1, w.bob);
    w.clock.t = T0 + 40;
    await refused(init.onMsg2(resp.msg2), "timeout", /^message 2 arrived after the exchange timed out$/);
    assert.equal(init.status, "wait-msg2");
    w.clock.t = T0 + 39;
    const msg3 = await init.onMsg2(resp.msg2);
    w.clock.t = T0 + 40;
    await refused(resp.onMsg3(msg3), "timeout", /^message 3 arrived after the exchange timed out$/);
    assert.equal(resp.status, "wait-msg3");
    w.clock.t = T0 + 39;
    const { msg4 } = await resp.onMsg3(msg3);
    w.clock.t = T0 + 40;
    await refused(async () => init.onMsg4(msg4), "timeout", /^message 4 arrived after the exchange timed out$/);
    w.clock.t = T0 + 39;
    init.onMsg4(msg4);

    // A configured timeout is the one that counts, at the responder as at the initiator.
    w.clock.t = T0 + 10;
    const quick = deps(w, { timeout: 5 });
    const init2 = start(w, {}, quick);
    const resp2 = new Responder({ ...quick, seen: new SeenSessions() }, init2.msg1, w.bob);
    const msg3b = await init2.onMsg2(resp2.msg2);
    w.clock.t = T0 + 15;
    await refused(resp2.onMsg3(msg3b), "timeout");
    w.clock.t = T0 + 14;
    await resp2.onMsg3(msg3b);
  } finally {
    done(w);
  }
});

test("messages crossing during the verifier round trip: of two copies of msg2 or msg3 only one moves the state, the other is unexpected", async () => {
  const w = world();
  try {
    const init = start(w);
    const resp = new Responder(deps(w), init.msg1, w.bob);
    const twice2 = await Promise.allSettled([init.onMsg2(resp.msg2), init.onMsg2(resp.msg2)]);
    assert.equal(twice2.filter((s) => s.status === "fulfilled").length, 1);
    const lost2 = twice2.find((s) => s.status === "rejected") as PromiseRejectedResult;
    assert.ok(lost2.reason instanceof ExchangeError && lost2.reason.code === "unexpected");
    assert.match(lost2.reason.message, /^message 2 arrived while the exchange is wait-msg4$/);
    const msg3 = (twice2.find((s) => s.status === "fulfilled") as PromiseFulfilledResult<Awaited<ReturnType<Initiator["onMsg2"]>>>).value;
    const twice3 = await Promise.allSettled([resp.onMsg3(msg3), resp.onMsg3(msg3)]);
    const lost3 = twice3.find((s) => s.status === "rejected") as PromiseRejectedResult;
    assert.ok(lost3.reason instanceof ExchangeError && lost3.reason.code === "unexpected");
    assert.match(lost3.reason.message, /^message 3 arrived while the exchange is done$/);
    const won3 = twice3.find((s) => s.status === "fulfilled") as PromiseFulfilledResult<Awaited<ReturnType<Responder["onMsg3"]>>>;
    assert.equal(init.onMsg4(won3.value.msg4).spi, won3.value.result.spi);
  } finally {
    done(w);
  }
});

test("an initiator's abort wipes its keys (the ML-KEM secret, the derived seed) and ends the run, in any state", async () => {
  const w = world();
  try {
    // Classical, waiting for msg2: nothing to wipe, and the genuine msg2 is then refused.
    const init = start(w);
    const resp = new Responder(deps(w), init.msg1, w.bob);
    init.abort("the peer refused");
    assert.equal(init.status, "failed");
    await refused(init.onMsg2(resp.msg2), "unexpected", /^message 2 arrived while the exchange is failed$/);

    // Hybrid, waiting for msg2: the ML-KEM-768 secret key is wiped.
    const kem = ml_kem768.keygen();
    const hybrid = start(w, { kem }, deps(w, { keyAgreement: "hybrid" }));
    hybrid.abort("timeout");
    assert.ok(zeros(kem.secretKey), "the ML-KEM secret key is wiped");

    // Waiting for msg4: the seed already derived is wiped, and msg4 no longer completes the run.
    const init2 = start(w);
    const resp2 = new Responder(deps(w), init2.msg1, w.bob);
    const { msg4 } = await resp2.onMsg3(await init2.onMsg2(resp2.msg2));
    const seed = initiatorSeed(init2);
    assert.ok(!zeros(seed));
    init2.abort("msg4 late");
    assert.ok(zeros(seed), "the seed is wiped");
    assert.equal(init2.status, "failed");
    await refused(async () => init2.onMsg4(msg4), "unexpected", /^message 4 arrived while the exchange is failed$/);
    init2.abort("again"); // aborting an ended exchange is harmless
    assert.equal(init2.status, "failed");

    // An abort during msg2's verifier round trip: no msg3 goes out.
    const init3 = start(w);
    const pending = init3.onMsg2(new Responder(deps(w), init3.msg1, w.bob).msg2);
    init3.abort("gateway stopping");
    await refused(pending, "unexpected", /^message 2 arrived while the exchange is failed$/);
  } finally {
    done(w);
  }
});

test("a responder's abort wipes PRK and ends the run, also during msg3's verifier round trip; after the end it is harmless", async () => {
  const w = world();
  try {
    const init = start(w);
    const resp = new Responder(deps(w), init.msg1, w.bob);
    const msg3 = await init.onMsg2(resp.msg2);
    const prk = responderPrk(resp);
    assert.ok(!zeros(prk));
    resp.abort("link lost");
    assert.ok(zeros(prk), "PRK is wiped");
    assert.equal(resp.status, "failed");
    await refused(resp.onMsg3(msg3), "unexpected", /^message 3 arrived while the exchange is failed$/);

    const init2 = start(w);
    const resp2 = new Responder(deps(w), init2.msg1, w.bob);
    const pending = resp2.onMsg3(await init2.onMsg2(resp2.msg2));
    resp2.abort("gateway stopping");
    await refused(pending, "unexpected", /^message 3 arrived while the exchange is failed$/);

    const init3 = start(w);
    const resp3 = new Responder(deps(w), init3.msg1, w.bob);
    await resp3.onMsg3(await init3.onMsg2(resp3.msg2));
    resp3.abort("after the end");
    assert.equal(resp3.status, "failed");
  } finally {
    done(w);
  }
});

test("seen session ids: a repeat is refused for 300 s (10 exchange timeouts), forgotten at 300 s; at most `max` are kept, the oldest going first", () => {
  const seen = new SeenSessions();
  assert.equal(seen.admit(sid(1), T0), true);
  assert.equal(seen.has(sid(1)), true);
  assert.equal(seen.has(sid(2)), false);
  assert.equal(seen.admit(sid(2), T0), true);
  assert.equal(seen.admit(sid(1), T0), false);
  assert.equal(seen.admit(sid(2), T0 + 299), false);
  assert.equal(seen.admit(sid(1), T0 + 299), false);
  assert.equal(seen.admit(sid(3), T0 + 300), true);
  assert.equal(seen.has(sid(1)), false, "forgotten at T0 + 300");
  assert.equal(seen.admit(sid(1), T0 + 300), true);

  const small = new SeenSessions(300, 2);
  for (const n of [1, 2, 3]) assert.equal(small.admit(sid(n), T0), true);
  assert.deepEqual([1, 2, 3].map((n) => small.has(sid(n))), [false, true, true]);
});

test("the responder's checks run in docs/PROTOCOL.md's order: a repeated session id is a replay, whatever else the msg1 gets wrong", async () => {
  const w = world();
  try {
    const d = deps(w);
    const init = start(w);
    new Responder(d, init.msg1, w.bob);
    const replay = /^message 1 repeats a session id already seen$/;
    await refused(() => new Responder(d, init.msg1, w.bob), "replay", replay);
    await refused(() => new Responder(d, { ...init.msg1, eA: new Uint8Array(32) }, w.bob), "replay", replay);
    await refused(() => new Responder(d, { ...init.msg1, suites: [[99, 1]] }, w.bob), "replay", replay);
  } finally {
    done(w);
  }
});

test("defaults: with no policy set a gateway neither offers nor takes ML-KEM; the callee's priority decides unless matching says otherwise", async () => {
  const w = world();
  try {
    const plain = start(w);
    assert.equal(plain.msg1.kemKey, undefined);
    assert.equal((decode(encodeMsg1(plain.msg1)) as unknown[]).length, 8);
    // A hybrid offer to a responder with no policy: answered classically, and the run completes so.
    const offer = start(w, {}, deps(w, { keyAgreement: "hybrid" }));
    const resp = new Responder(deps(w), offer.msg1, w.bob);
    assert.equal(resp.msg2.kemCiphertext, undefined);
    const { msg4, result } = await resp.onMsg3(await offer.onMsg2(resp.msg2));
    assert.equal(result.keyAgreement, "x25519");
    assert.equal(offer.onMsg4(msg4).keyAgreement, "x25519");

    assert.equal(new Responder(deps(w), start(w).msg1, w.bob).msg2.suite, XS, "Bob's priority");
    const callerFirst = { ...deps(w), matching: { mode: "exact" as const, chooser: { by: "priority" as const, favour: "caller" as const } } };
    assert.equal(new Responder(callerFirst, start(w).msg1, w.bob).msg2.suite, AES, "Alice's priority, as configured");
  } finally {
    done(w);
  }
});

test("a verifier that cannot be asked: the peer is untrusted (untrusted-certificate, with the verifier's error), and the exchange still waits", async () => {
  const w = world();
  try {
    const down = start(w, {}, deps(w, { source: async () => { throw new Error("verifier unreachable"); } }));
    const resp = new Responder(deps(w), down.msg1, w.bob);
    const e = await refused(down.onMsg2(resp.msg2), "untrusted-certificate", /^the verifier could not judge the peer certificate: verifier unreachable$/);
    assert.ok(e.cause instanceof Error);
    assert.equal(down.status, "wait-msg2");
    const odd = start(w, {}, deps(w, { source: async () => { throw "no route"; } }));
    await refused(odd.onMsg2(new Responder(deps(w), odd.msg1, w.bob).msg2), "untrusted-certificate", /: no route$/);
  } finally {
    done(w);
  }
});
