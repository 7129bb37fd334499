// The Node half of the benchmark, for context: the same device operations (bench/device-ops.ts) on the
// gateway's SymCrypto (node:crypto) and codec (cbor-x), and one X25519 with node:crypto and with
// tweetnacl. The join counter lives in memory here: there is no Storage to persist it in.

import { createPrivateKey, createPublicKey, diffieHellman } from "node:crypto";
import nacl from "tweetnacl";
import * as gatewayCbor from "../gateway/encoding/cbor.ts";
import { nodeCrypto } from "../gateway/crypto/symmetric.ts";
import { zlib } from "../gateway/link/crc32.ts";
import { deviceOps } from "./device-ops.ts";
import { DEVICE_ID, MESSAGE_BYTES } from "./device-run.ts";
import { answerJoinAndRegister, checkProtected, checkRegisterRequest } from "./gateway-side.ts";
import { DEFAULT_TIMING, nodeTask, runInterleaved, type Task, type Timing } from "./timing.ts";

export interface NodeSuiteTimings {
  suite: number;
  joinRequest: Timing;
  joinAccept: Timing;
  register: Timing;
  protect: Timing;
}

export interface NodeResults {
  suites: NodeSuiteTimings[];
  x25519: { nodeCrypto: Timing; tweetnacl: Timing };
}

// RFC 8410 DER around a raw X25519 key: fixed for this curve.
const X25519_PKCS8_PREFIX = Buffer.from("302e020100300506032b656e04220420", "hex");
const X25519_SPKI_PREFIX = Buffer.from("302a300506032b656e032100", "hex");

/** One suite's operations, checked against the gateway side once, as timing tasks. Two sets of
 *  operations: one only for join requests (each starts a new join), one joined for the rest. */
function suiteTasks(suite: number, suites: number[][]): Task[] {
  const c = nodeCrypto();
  let counter = 0;
  const platform = {
    crypto: c,
    cbor: gatewayCbor,
    crc32: zlib.crc32,
    counter: (n?: number) => {
      if (n !== undefined) counter = n;
      return counter;
    },
  };
  const rootKey = c.random(16);
  const pt = c.random(MESSAGE_BYTES);
  const requests = deviceOps(platform);
  const ops = deviceOps(platform);
  requests.configure(DEVICE_ID, rootKey, suite, suites);
  ops.configure(DEVICE_ID, rootKey, suite, suites);
  const answers = answerJoinAndRegister(c, gatewayCbor, rootKey, ops.joinRequest(), Math.floor(Date.now() / 1000));
  ops.joinAccept(answers.acceptFrame);
  checkRegisterRequest(c, gatewayCbor, answers.keys, ops.register(answers.registerOkFrame));
  checkProtected(c, gatewayCbor, answers.keys, ops.protect(pt), pt);
  return [
    nodeTask(`${suite} joinRequest`, () => requests.joinRequest()),
    nodeTask(`${suite} joinAccept`, () => ops.joinAccept(answers.acceptFrame)),
    nodeTask(`${suite} register`, () => ops.register(answers.registerOkFrame)),
    nodeTask(`${suite} protect`, () => ops.protect(pt)),
  ];
}

function x25519Tasks(): Task[] {
  const sk = nacl.randomBytes(32);
  const pk = nacl.scalarMult.base(nacl.randomBytes(32));
  const privateKey = createPrivateKey({ key: Buffer.concat([X25519_PKCS8_PREFIX, sk]), format: "der", type: "pkcs8" });
  const publicKey = createPublicKey({ key: Buffer.concat([X25519_SPKI_PREFIX, pk]), format: "der", type: "spki" });
  if (!diffieHellman({ privateKey, publicKey }).equals(Buffer.from(nacl.scalarMult(sk, pk)))) {
    throw new Error("node:crypto X25519 disagrees with tweetnacl");
  }
  return [
    nodeTask("x25519 nodeCrypto", () => diffieHellman({ privateKey, publicKey })),
    nodeTask("x25519 tweetnacl", () => nacl.scalarMult(sk, pk)),
  ];
}

export function runNode(suites: number[], log: (s: string) => void): NodeResults {
  const pairs = suites.map((s, i) => [s, suites.length - i]);
  const tasks = [...suites.flatMap((s) => suiteTasks(s, pairs)), ...x25519Tasks()];
  log(`gateway machine (Node, node:crypto): timing ${tasks.length} operations, ${DEFAULT_TIMING.repetitions} interleaved rounds`);
  const t = runInterleaved(tasks);
  return {
    suites: suites.map((s) => ({ suite: s, joinRequest: t[`${s} joinRequest`], joinAccept: t[`${s} joinAccept`], register: t[`${s} register`], protect: t[`${s} protect`] })),
    x25519: { nodeCrypto: t["x25519 nodeCrypto"], tweetnacl: t["x25519 tweetnacl"] },
  };
}
