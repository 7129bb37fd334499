// The exchange between two gateways with X25519 alone and with X25519 + ML-KEM-768 (docs/FLEET.md,
// "Post-quantum key agreement"), side by side in one run: setups per second of the exchange itself
// (both gateways' work, in one process: Initiator and Responder, certificates judged by a verifier),
// the CPU of its public-key operations, and the bytes of each message on the wire. The interlink
// (MQTT, envelope signatures) is bench/crossgw.ts's business and is the same for both.
//
//   node --import tsx bench/key-agreement.ts [--write]
//
// prints the section; --write puts it into docs/BENCHMARKS.md between its markers. `npm run bench`
// runs it too.
import { diffieHellman, generateKeyPairSync, createPublicKey } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { ml_kem768 } from "@noble/post-quantum/ml-kem.js";
import { SUITE_AES_CCM_16_64_128 } from "../firmware/crypto/types.ts";
import { encodeMsg1, encodeMsg2, encodeMsg3, encodeMsg4, Initiator, Responder, SeenSessions, type KeyAgreementPolicy, type LocalCallee, type LocalParty } from "../gateway/crossgw/exchange.ts";
import { generateEd25519, type Ed25519KeyPair } from "../gateway/crypto/ed25519.ts";
import { issueCertificate } from "../gateway/encoding/cwt.ts";
import { Fleet, generateX25519 } from "../gateway/fleet/fleet.ts";
import { CertificateChecker, localSource, Verifier } from "../gateway/fleet/verifier.ts";

const THIS_FILE = fileURLToPath(import.meta.url);
const POLICIES: KeyAgreementPolicy[] = ["x25519", "hybrid"];

export interface KeyAgreementRow {
  policy: KeyAgreementPolicy;
  agreed: string;
  setupsPerSecond: number;
  msPerSetup: number;
  bytes: { msg1: number; msg2: number; msg3: number; msg4: number };
}

export interface KeyAgreementResults {
  date: string;
  /** The 1-minute load average when the run started (other work shares the machine). */
  load: number;
  setups: number;
  rows: KeyAgreementRow[];
  /** Milliseconds per operation, medians of the rounds. */
  ops: { mlkemKeygen: number; mlkemEncaps: number; mlkemDecaps: number; x25519KeyPair: number; x25519Shared: number };
}

interface Parties {
  dir: string;
  checker: () => CertificateChecker;
  alice: LocalParty;
  bob: LocalCallee;
}

/** A fleet with two gateways and one device each, as the exchange's tests set them up. */
function parties(now: number): Parties {
  const dir = mkdtempSync(join(tmpdir(), "kp-bench-ka-"));
  const fleet = Fleet.create(dir, "kp-bench-ka", now);
  const verifierKey = generateEd25519();
  const verifier = new Verifier({ anchor: fleet.anchor, key: verifierKey, verifierId: "verifier.kp" });
  verifier.updateRevocationList(fleet.signedList());
  const gateway = (id: string) => {
    const signing = generateEd25519();
    return { id, signing, cert: fleet.issueGateway(id, { signingKey: signing.publicKey, encryptionKey: generateX25519().publicKey }, now, 86_400) };
  };
  const device = (gw: { id: string; signing: Ed25519KeyPair; cert: Uint8Array }, name: string): LocalParty => {
    const identity = generateEd25519();
    const cert = issueCertificate({ iss: gw.id, sub: name, iat: now, nbf: now, exp: now + 3600, cti: new Uint8Array(16).fill(name.length), publicKey: identity.publicKey }, gw.signing.seed);
    return { name: `${name}@${gw.id}`, identitySeed: identity.seed, cert, gatewayCert: gw.cert };
  };
  const a = gateway("a.example");
  const b = gateway("b.example");
  return {
    dir,
    // One checker per side, kept across setups: a gateway caches the verifier's good answers.
    checker: () => new CertificateChecker({ source: localSource(verifier), verifierPublicKey: verifierKey.publicKey }),
    alice: device(a, "alice"),
    bob: { ...device(b, "bob"), suites: [[SUITE_AES_CCM_16_64_128, 1]] },
  };
}

const median = (xs: number[]): number => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];

/** Times fn over n calls, in ms per call. */
function perCall(n: number, fn: () => void): number {
  const t = performance.now();
  for (let i = 0; i < n; i++) fn();
  return (performance.now() - t) / n;
}

function opCosts(rounds: number): KeyAgreementResults["ops"] {
  const kem = ml_kem768.keygen();
  const { cipherText } = ml_kem768.encapsulate(kem.publicKey);
  const peer = generateKeyPairSync("x25519");
  const own = generateKeyPairSync("x25519");
  const peerPublic = createPublicKey(peer.privateKey);
  const samples = { mlkemKeygen: [] as number[], mlkemEncaps: [] as number[], mlkemDecaps: [] as number[], x25519KeyPair: [] as number[], x25519Shared: [] as number[] };
  for (let r = 0; r < rounds; r++) {
    samples.mlkemKeygen.push(perCall(20, () => ml_kem768.keygen()));
    samples.mlkemEncaps.push(perCall(20, () => ml_kem768.encapsulate(kem.publicKey)));
    samples.mlkemDecaps.push(perCall(20, () => ml_kem768.decapsulate(cipherText, kem.secretKey)));
    samples.x25519KeyPair.push(perCall(200, () => generateKeyPairSync("x25519", { publicKeyEncoding: { type: "spki", format: "der" } } as {})));
    samples.x25519Shared.push(perCall(200, () => diffieHellman({ privateKey: own.privateKey, publicKey: peerPublic })));
  }
  return {
    mlkemKeygen: median(samples.mlkemKeygen), mlkemEncaps: median(samples.mlkemEncaps), mlkemDecaps: median(samples.mlkemDecaps),
    x25519KeyPair: median(samples.x25519KeyPair), x25519Shared: median(samples.x25519Shared),
  };
}

/** One setup, both ends in this process; its agreed key agreement and message sizes. */
async function setup(p: Parties, policy: KeyAgreementPolicy, checkers: { i: CertificateChecker; r: CertificateChecker }, now: number) {
  const init = new Initiator({ checker: checkers.i, now: () => now, keyAgreement: policy }, p.alice, p.bob.name, "chat", [[SUITE_AES_CCM_16_64_128, 1]]);
  const resp = new Responder({ checker: checkers.r, now: () => now, seen: new SeenSessions(), keyAgreement: policy }, init.msg1, p.bob);
  const msg3 = await init.onMsg2(resp.msg2);
  const { msg4, result } = await resp.onMsg3(msg3);
  const done = init.onMsg4(msg4);
  done.seed.fill(0);
  result.seed.fill(0);
  return {
    agreed: done.keyAgreement,
    bytes: { msg1: encodeMsg1(init.msg1).length, msg2: encodeMsg2(resp.msg2).length, msg3: encodeMsg3(msg3).length, msg4: encodeMsg4(msg4).length },
  };
}

/** `setups` setups per policy, in interleaved rounds so that the machine's load falls on both alike. */
export async function runKeyAgreementBench(log: (s: string) => void, setups = 200, rounds = 10): Promise<KeyAgreementResults> {
  const now = Math.floor(Date.now() / 1000);
  const load = loadavg()[0];
  const p = parties(now);
  try {
    const checkers = { i: p.checker(), r: p.checker() };
    const times = new Map<KeyAgreementPolicy, number[]>(POLICIES.map((k) => [k, []]));
    const last = new Map<KeyAgreementPolicy, Awaited<ReturnType<typeof setup>>>();
    for (const policy of POLICIES) last.set(policy, await setup(p, policy, checkers, now)); // warm-up, caches
    log(`key agreement: ${setups} exchanges each with ${POLICIES.join(" and ")}, in ${rounds} interleaved rounds`);
    for (let r = 0; r < rounds; r++) {
      for (const policy of POLICIES) {
        const t = performance.now();
        for (let i = 0; i < setups / rounds; i++) last.set(policy, await setup(p, policy, checkers, now));
        times.get(policy)!.push((performance.now() - t) / (setups / rounds));
      }
    }
    const rows = POLICIES.map((policy): KeyAgreementRow => {
      const ms = median(times.get(policy)!);
      return { policy, agreed: last.get(policy)!.agreed, setupsPerSecond: 1000 / ms, msPerSetup: ms, bytes: last.get(policy)!.bytes };
    });
    return { date: new Date().toISOString().replace(/\.\d+Z$/, "Z"), load, setups, rows, ops: opCosts(5) };
  } finally {
    rmSync(p.dir, { recursive: true, force: true });
  }
}

const START = "<!-- key-agreement:start (bench/key-agreement.ts --write, or npm run bench, replaces this section) -->";
const END = "<!-- key-agreement:end -->";

const f1 = (n: number) => n.toFixed(1);
const f3 = (n: number) => n.toFixed(3);
const int = (n: number) => Math.round(n).toLocaleString("en-US");

export function renderKeyAgreementSection(r: KeyAgreementResults): string {
  const [classical, hybrid] = r.rows;
  const total = (row: KeyAgreementRow) => row.bytes.msg1 + row.bytes.msg2 + row.bytes.msg3 + row.bytes.msg4;
  return `${START}
## Key agreement between gateways: X25519 and X25519 + ML-KEM-768

Made by \`node --import tsx bench/key-agreement.ts --write\` (or \`npm run bench\`) on ${r.date}, load
average ${r.load.toFixed(1)} on ${availableParallelism()} CPUs at the start (compare the rows, not the absolute rates). The
exchange alone, both gateways' sides in one process (docs/PROTOCOL.md §8: ephemerals, ML-KEM,
Ed25519 signatures and verifications, AES-GCM, certificates judged by a verifier whose good answers
are cached, as a gateway's are), ${int(r.setups)} setups per key agreement in interleaved rounds,
medians. The interlink's MQTT and envelope costs (bench/crossgw.ts) come on top of both alike.

| key agreement (policy) | agreed | setups/s | ms per setup | msg1 B | msg2 B | msg3 B | msg4 B | all B |
|---|---|--:|--:|--:|--:|--:|--:|--:|
${r.rows.map((row) => `| ${row.policy} | ${row.agreed} | ${int(row.setupsPerSecond)} | ${f3(row.msPerSetup)} | ${int(row.bytes.msg1)} | ${int(row.bytes.msg2)} | ${int(row.bytes.msg3)} | ${int(row.bytes.msg4)} | ${int(total(row))} |`).join("\n")}

The hybrid costs ${f1(hybrid.msPerSetup / classical.msPerSetup)}× the time per setup of X25519 alone
(${f1(hybrid.msPerSetup - classical.msPerSetup)} ms more, two gateways' work together) and
${int(total(hybrid) - total(classical))} more bytes (ekA ${1184} B in msg1, ctB ${1088} B in msg2, and their CBOR
heads). Per operation, ms (medians of 5 rounds): ML-KEM-768 KeyGen ${f3(r.ops.mlkemKeygen)}, Encaps
${f3(r.ops.mlkemEncaps)}, Decaps ${f3(r.ops.mlkemDecaps)} (@noble/post-quantum, JavaScript); X25519 key pair
${f3(r.ops.x25519KeyPair)}, shared secret ${f3(r.ops.x25519Shared)} (node:crypto). The initiator's gateway pays KeyGen and
Decaps, the responder's Encaps.
${END}`;
}

function writeSection(section: string): void {
  const file = fileURLToPath(new URL("../docs/BENCHMARKS.md", import.meta.url));
  const doc = readFileSync(file, "utf8");
  const i = doc.indexOf(START);
  const j = doc.indexOf(END);
  writeFileSync(file, i >= 0 && j > i ? doc.slice(0, i) + section + doc.slice(j + END.length) : doc.trimEnd() + "\n\n" + section + "\n");
}

if (process.argv[1] === THIS_FILE) {
  runKeyAgreementBench((s) => process.stderr.write(s + "\n")).then(
    (r) => {
      const section = renderKeyAgreementSection(r);
      process.stdout.write(section + "\n");
      if (process.argv.includes("--write")) writeSection(section);
    },
    (e: unknown) => {
      process.stderr.write(`key-agreement bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
