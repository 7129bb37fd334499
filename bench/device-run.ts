// The device half of the benchmark: the bench bundle (bench/device-entry.ts) and tweetnacl in one
// emulated device, every operation checked against the gateway (or against Node's tweetnacl) once,
// then all of them timed in interleaved rounds.

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import nacl from "tweetnacl";
import { EmulatedDevice } from "../emulator/device.ts";
import { buildFirmware } from "../flash/build.ts";
import * as gatewayCbor from "../gateway/encoding/cbor.ts";
import { nodeCrypto } from "../gateway/crypto/symmetric.ts";
import type { Bytes } from "../firmware/bytes.ts";
import { answerJoinAndRegister, checkProtected, checkRegisterRequest } from "./gateway-side.ts";
import { DEFAULT_TIMING, deviceTask, runInterleaved, type Task, type Timing } from "./timing.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

export const DEVICE_BOARD = "emulator";
/** A device id of a realistic length: it is in every join MAC input and in the certificate. */
export const DEVICE_ID = "puck-7f3a9c21";
export const MESSAGE_BYTES = 64;

export interface NativeCalls {
  sha256: number;
  aes: number;
}

export interface SuiteTimings {
  suite: number;
  joinRequest: Timing;
  joinAccept: Timing;
  register: Timing;
  protect: Timing;
  natives: { joinRequest: NativeCalls; joinAccept: NativeCalls; register: NativeCalls; protect: NativeCalls };
  certificateBytes: number;
}

export interface DeviceResults {
  board: string;
  bundleBytes: number;
  storageOnTmpfs: boolean;
  suites: SuiteTimings[];
  /** Writing and reading back the join counter in Storage (part of every join request). */
  persistCounter: Timing;
  x25519: { naclFast: Timing; nacl: Timing };
  /** tweetnacl's own secretbox of 64 bytes: the other JS operation design.md measured on Espruino. */
  secretbox64: { naclFast: Timing; nacl: Timing };
  /** One bridged native call: SHA-256 of 64 bytes, AES-ECB of one block. */
  sha256Of64: Timing;
  aesEcbBlock: Timing;
}

/** A Uint8Array literal for code evaluated in the device. */
export function bytesLiteral(b: Bytes): string {
  return `new Uint8Array([${Array.from(b).join(",")}])`;
}

export async function buildBenchBundle(): Promise<{ code: string; bytes: number }> {
  const outDir = fs.mkdtempSync(path.join(os.tmpdir(), "kp-bench-build-"));
  try {
    const r = await buildFirmware({ board: DEVICE_BOARD, entry: path.join(ROOT, "bench", "device-entry.ts"), outDir });
    if (r.problems.length > 0) throw new Error(`the bench bundle fails the Espruino gate:\n  ${r.problems.join("\n  ")}`);
    return { code: r.code, bytes: r.bytes };
  } finally {
    fs.rmSync(outDir, { recursive: true, force: true });
  }
}

/** tmpfs when the host has one: Storage writes are fsynced files, and a disk's sync time models
 *  nothing about a microcontroller's flash. */
export function storageParent(): { dir: string; tmpfs: boolean } {
  return fs.existsSync("/dev/shm") ? { dir: "/dev/shm", tmpfs: true } : { dir: os.tmpdir(), tmpfs: false };
}

/** Loads a tweetnacl file into the device as global `name` (the file exports through `module`). */
export function loadTweetnacl(dev: EmulatedDevice, file: string, name: string): void {
  dev.eval("var module = { exports: {} };");
  dev.eval(fs.readFileSync(path.join(ROOT, "node_modules", "tweetnacl", file), "utf8"));
  dev.eval(`var ${name} = module.exports; module = undefined;`);
  if (dev.eval(`typeof ${name}.scalarMult`) !== "function") throw new Error(`${file} did not load in the device`);
}

/** Counts the natives an operation calls by wrapping require("crypto") for one untimed run (the
 *  firmware looks SHA256 and AES.encrypt up on that object at every call). */
export const COUNTER_SOURCE = `
(function () {
  var cm = require("crypto");
  var sha = cm.SHA256, enc = cm.AES.encrypt, dec = cm.AES.decrypt;
  global.kpCountNatives = function (run) {
    var n = { sha256: 0, aes: 0 };
    cm.SHA256 = function (d) { n.sha256++; return sha(d); };
    cm.AES.encrypt = function (a, b, c) { n.aes++; return enc(a, b, c); };
    cm.AES.decrypt = function (a, b, c) { n.aes++; return dec(a, b, c); };
    try { run(); } finally { cm.SHA256 = sha; cm.AES.encrypt = enc; cm.AES.decrypt = dec; }
    return n;
  };
})();`;

function countNatives(dev: EmulatedDevice, statement: string): NativeCalls {
  return dev.eval(`kpCountNatives(function () { ${statement}; })`) as NativeCalls;
}

interface PreparedSuite {
  suite: number;
  certificateBytes: number;
  tasks: Task[];
  natives: SuiteTimings["natives"];
}

/** Sets up one suite's operations in the device and checks each against the gateway once. Globals
 *  in the device, per suite s: REQ_s (operations used only for timing join requests, which start a
 *  new join each time), OPS_s (joined with the gateway's answer, for accept, register and protect),
 *  the gateway's frames ACCEPT_s and REGISTER_OK_s, and the plaintext MESSAGE_s. */
function prepareSuite(dev: EmulatedDevice, suite: number, suites: number[][]): PreparedSuite {
  const c = nodeCrypto();
  const rootKey = c.random(16);
  const pt = c.random(MESSAGE_BYTES);
  const v = (name: string) => `${name}_${suite < 0 ? "m" + -suite : suite}`;
  const configure = `(${JSON.stringify(DEVICE_ID)}, ${bytesLiteral(rootKey)}, ${suite}, ${JSON.stringify(suites)})`;
  dev.eval(`var ${v("REQ")} = kpBench.make(); ${v("REQ")}.configure${configure}; var ${v("OPS")} = kpBench.make(); ${v("OPS")}.configure${configure};`);

  const requestFrame = dev.eval(`${v("OPS")}.joinRequest()`) as Bytes;
  const answers = answerJoinAndRegister(c, gatewayCbor, rootKey, requestFrame, Math.floor(Date.now() / 1000));
  dev.eval(`var ${v("ACCEPT")} = ${bytesLiteral(answers.acceptFrame)}; var ${v("REGISTER_OK")} = ${bytesLiteral(answers.registerOkFrame)}; var ${v("MESSAGE")} = ${bytesLiteral(pt)};`);
  const joinAccept = `${v("OPS")}.joinAccept(${v("ACCEPT")})`;
  const register = `${v("OPS")}.register(${v("REGISTER_OK")})`;
  const protect = `${v("OPS")}.protect(${v("MESSAGE")})`;
  const joinRequest = `${v("REQ")}.joinRequest()`;
  if (dev.eval(joinAccept) !== true) throw new Error("the device refused the gateway's accept");
  checkRegisterRequest(c, gatewayCbor, answers.keys, dev.eval(register) as Bytes);
  checkProtected(c, gatewayCbor, answers.keys, dev.eval(protect) as Bytes, pt);

  dev.eval(COUNTER_SOURCE);
  const natives = {
    joinRequest: countNatives(dev, joinRequest),
    joinAccept: countNatives(dev, joinAccept),
    register: countNatives(dev, register),
    protect: countNatives(dev, protect),
  };
  const tasks = [
    deviceTask(dev, `${suite} joinRequest`, joinRequest),
    deviceTask(dev, `${suite} joinAccept`, joinAccept),
    deviceTask(dev, `${suite} register`, register),
    deviceTask(dev, `${suite} protect`, protect),
  ];
  return { suite, certificateBytes: answers.certificateBytes, tasks, natives };
}

/** Loads tweetnacl (both variants) into the device and checks it computes what Node's does. */
function prepareTweetnacl(dev: EmulatedDevice): Task[] {
  loadTweetnacl(dev, "nacl-fast.js", "naclFast");
  loadTweetnacl(dev, "nacl.js", "naclSlow");
  const sk = nacl.randomBytes(32);
  const pk = nacl.scalarMult.base(nacl.randomBytes(32));
  const key = nacl.randomBytes(32);
  const nonce = nacl.randomBytes(24);
  const msg = nacl.randomBytes(MESSAGE_BYTES);
  dev.eval(`var SK = ${bytesLiteral(sk)}, PK = ${bytesLiteral(pk)}, BOX_KEY = ${bytesLiteral(key)}, BOX_NONCE = ${bytesLiteral(nonce)}, BOX_MSG = ${bytesLiteral(msg)};`);
  const expectShared = Buffer.from(nacl.scalarMult(sk, pk));
  const expectBox = Buffer.from(nacl.secretbox(msg, nonce, key));
  for (const name of ["naclFast", "naclSlow"]) {
    if (!expectShared.equals(dev.eval(`${name}.scalarMult(SK, PK)`) as Uint8Array)) throw new Error(`${name}.scalarMult in the device disagrees with Node`);
    if (!expectBox.equals(dev.eval(`${name}.secretbox(BOX_MSG, BOX_NONCE, BOX_KEY)`) as Uint8Array)) throw new Error(`${name}.secretbox in the device disagrees with Node`);
  }
  return [
    deviceTask(dev, "x25519 naclFast", "naclFast.scalarMult(SK, PK)"),
    deviceTask(dev, "x25519 nacl", "naclSlow.scalarMult(SK, PK)"),
    deviceTask(dev, "secretbox naclFast", "naclFast.secretbox(BOX_MSG, BOX_NONCE, BOX_KEY)"),
    deviceTask(dev, "secretbox nacl", "naclSlow.secretbox(BOX_MSG, BOX_NONCE, BOX_KEY)"),
  ];
}

/** Builds the bench bundle, runs everything in one emulated device, powers it off. */
export async function runDevice(suites: number[], log: (s: string) => void): Promise<DeviceResults> {
  log("building bench/device-entry.ts for the emulator (lint + Espruino gate) ...");
  const bundle = await buildBenchBundle();
  const parent = storageParent();
  const storageDir = fs.mkdtempSync(path.join(parent.dir, "kp-bench-"));
  const dev = new EmulatedDevice({ board: DEVICE_BOARD, storageDir, name: "bench" });
  try {
    await dev.boot();
    dev.eval(bundle.code);
    const have = dev.eval("kpBench.suites()") as number[];
    for (const s of suites) if (!have.includes(s)) throw new Error(`the device bundle lacks suite ${s}`);
    log(`device (${DEVICE_BOARD} board, QuickJS): checking every operation against the gateway`);
    const pairs = suites.map((s, i) => [s, suites.length - i]);
    const prepared = suites.map((s) => prepareSuite(dev, s, pairs));
    const tweetnacl = prepareTweetnacl(dev);
    dev.eval(`var PERSIST = kpBench.make(); var CM = require("crypto"); var SHA_IN = new Uint8Array(64); var AES_KEY = new Uint8Array(16); var AES_IN = new Uint8Array(16);`);
    const tasks = [
      ...prepared.flatMap((p) => p.tasks),
      ...tweetnacl,
      deviceTask(dev, "persistCounter", "PERSIST.persistCounter()"),
      deviceTask(dev, "sha256", "CM.SHA256(SHA_IN)"),
      deviceTask(dev, "aes", `CM.AES.encrypt(AES_IN, AES_KEY, { mode: "ECB" })`),
    ];
    log(`device: timing ${tasks.length} operations, ${DEFAULT_TIMING.repetitions} interleaved rounds`);
    const t = runInterleaved(tasks);
    const results: SuiteTimings[] = prepared.map((p) => ({
      suite: p.suite,
      joinRequest: t[`${p.suite} joinRequest`],
      joinAccept: t[`${p.suite} joinAccept`],
      register: t[`${p.suite} register`],
      protect: t[`${p.suite} protect`],
      natives: p.natives,
      certificateBytes: p.certificateBytes,
    }));
    return {
      board: DEVICE_BOARD,
      bundleBytes: bundle.bytes,
      storageOnTmpfs: parent.tmpfs,
      suites: results,
      persistCounter: t.persistCounter,
      x25519: { naclFast: t["x25519 naclFast"], nacl: t["x25519 nacl"] },
      secretbox64: { naclFast: t["secretbox naclFast"], nacl: t["secretbox nacl"] },
      sha256Of64: t.sha256,
      aesEcbBlock: t.aes,
    };
  } finally {
    dev.powerOff();
    fs.rmSync(storageDir, { recursive: true, force: true });
  }
}
