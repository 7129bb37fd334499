// `node --import tsx bench/join-oracle.ts [samples]`: how long a gateway takes to refuse a join naming
// an unknown device id, next to a known id with a wrong MAC (issue 11, finding 5): the two must not be
// told apart by their timing. One in-process gateway on a real SQLite file, one loopback connection,
// the two kinds of join interleaved; each sample is the time from writing the JoinRequest to reading
// the JoinReject. Prints the median and the 10th and 90th percentiles of each, in microseconds.
// Not a test (timing on a shared machine is noisy; test/join-oracle.test.ts counts the work instead).

import net from "node:net";
import { randomBytes } from "node:crypto";
import { crc32 } from "node:zlib";
import * as gcbor from "../gateway/encoding/cbor.ts";
import { Gateway } from "../gateway/gateway.ts";
import { Logger } from "../gateway/log/logger.ts";
import { encodeFrame } from "../firmware/proto/frame.ts";
import { encodeMessage, Msg } from "../firmware/proto/messages.ts";
import { SUITE_AES_CCM_16_64_128 } from "../firmware/crypto/types.ts";
import { tempDir } from "../test/support/harness.ts";

const samples = Number(process.argv[2] ?? 2000);

function joinWithWrongMac(id: string): Uint8Array {
  const m = { t: Msg.JoinRequest, id, ctr: 7, nonce: new Uint8Array(randomBytes(16)), suite: SUITE_AES_CCM_16_64_128, tag: new Uint8Array(randomBytes(16)) } as const;
  return encodeFrame(gcbor.encode(encodeMessage(m)), (b) => crc32(b) >>> 0);
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

// Every join here fails on purpose: no backoff and no bad-input budget, or the cheap throttled path
// and closed connections would be measured instead.
const gw = await Gateway.start({
  dataDir: tempDir("kp-bench-oracle-"),
  listen: { host: "127.0.0.1", port: 0 },
  log: new Logger(() => {}),
  limits: { maxBadFrames: Number.MAX_SAFE_INTEGER, joinFailuresBeforeBackoff: Number.MAX_SAFE_INTEGER },
});
await gw.store.addDevice("dev-known", new Uint8Array(randomBytes(16)), "puckjs", 0);
const sock = net.connect(gw.address.port, gw.address.host);
sock.setNoDelay(true);
await new Promise<void>((res) => sock.once("connect", res));
let waiting: (() => void) | undefined;
sock.on("data", () => waiting?.());

async function once(id: string): Promise<number> {
  const frame = joinWithWrongMac(id);
  const answered = new Promise<void>((res) => (waiting = res));
  const t0 = process.hrtime.bigint();
  sock.write(frame);
  await answered;
  return Number(process.hrtime.bigint() - t0) / 1000;
}

const times: Record<"unknown id" | "known id, wrong MAC", number[]> = { "unknown id": [], "known id, wrong MAC": [] };
for (let i = 0; i < 200; i++) await once(i % 2 ? "dev-known" : "dev-nobody"); // warm-up
for (let i = 0; i < samples; i++) {
  // Interleaved, so that a load change on the machine hits both alike.
  times["unknown id"].push(await once(`dev-nobody-${i % 50}`));
  times["known id, wrong MAC"].push(await once("dev-known"));
}
sock.destroy();
await gw.stop();

console.log(`join refused, ${samples} samples each (us, write to JoinReject over loopback)`);
console.log(`${"".padEnd(22)} ${"p10".padStart(8)} ${"median".padStart(8)} ${"p90".padStart(8)}`);
for (const [name, xs] of Object.entries(times)) {
  console.log(`${name.padEnd(22)} ${percentile(xs, 10).toFixed(0).padStart(8)} ${percentile(xs, 50).toFixed(0).padStart(8)} ${percentile(xs, 90).toFixed(0).padStart(8)}`);
}
