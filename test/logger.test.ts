// The gateway's structured log (gateway/log/logger.ts) and the names it prints for the protocol's
// numbers (gateway/log/protocol-names.ts). The log is where a key would leak by mistake: a caller that
// passes a key, a seed or a nonce as bytes gets "<n bytes withheld>" in the line and in every
// subscriber's record (monitoring over MQTT), never the bytes. test/terminal.test.ts covers the
// escaping of control characters.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { Logger, type LogRecord } from "../gateway/log/logger.ts";
import { CLOSE_REASON_NAMES, closeReasonName, ERROR_NAMES, errorName, spiText } from "../gateway/log/protocol-names.ts";
import { CloseReason, ErrorCode } from "../firmware/proto/messages.ts";

function logged(): { logger: Logger; lines: string[]; records: LogRecord[] } {
  const lines: string[] = [];
  const records: LogRecord[] = [];
  const logger = new Logger((l) => lines.push(l));
  logger.subscribe((r) => records.push(r));
  return { logger, lines, records };
}

test("bytes passed to the log are withheld from the line and from subscribers, whatever their kind", () => {
  const { logger, lines, records } = logged();
  const key = new Uint8Array(32).fill(0xab);
  logger.info("keys-made", { key, seed: Buffer.alloc(16, 0xcd), empty: new Uint8Array(0), id: "dev-1" });
  assert.equal(lines.length, 1);
  const line = JSON.parse(lines[0]) as Record<string, unknown>;
  for (const view of [line, records[0]]) {
    assert.equal(view.key, "<32 bytes withheld>");
    assert.equal(view.seed, "<16 bytes withheld>");
    assert.equal(view.empty, "<0 bytes withheld>");
    assert.equal(view.id, "dev-1");
  }
  assert.ok(!/ab,?ab|abab|171/i.test(lines[0]) && !/cdcd|205/i.test(lines[0]), lines[0]);
});

test("a record is one JSON line: its time, level and event, then the caller's fields, undefined ones left out", () => {
  const { logger, lines, records } = logged();
  const before = Date.now();
  logger.warn("link-dropped", { device: "dev-1", frames: 3, ok: false, none: null, missing: undefined });
  logger.error("store-failed", {});
  logger.info("started");
  const after = Date.now();
  assert.equal(lines.length, 3);
  assert.ok(lines.every((l) => !l.includes("\n")));
  const first = JSON.parse(lines[0]) as Record<string, unknown>;
  assert.deepEqual(Object.keys(first), ["ts", "level", "event", "device", "frames", "ok", "none"]);
  assert.deepEqual({ ...first, ts: 0 }, { ts: 0, level: "warn", event: "link-dropped", device: "dev-1", frames: 3, ok: false, none: null });
  const ts = Date.parse(first.ts as string);
  assert.ok(ts >= before - 1 && ts <= after + 1 && (first.ts as string).endsWith("Z"), String(first.ts));
  assert.deepEqual(records[0], first, "subscribers get the record the line was made from");
  assert.deepEqual(lines.slice(1).map((l) => { const r = JSON.parse(l); return [r.level, r.event, Object.keys(r).length]; }), [["error", "store-failed", 3], ["info", "started", 3]]);
  assert.deepEqual(records.map((r) => r.level), ["warn", "error", "info"]);
});

test("a failing subscriber breaks neither logging, nor the other subscribers, nor the caller; unsubscribing stops the records", () => {
  const lines: string[] = [];
  const logger = new Logger((l) => lines.push(l));
  const seen: string[] = [];
  logger.subscribe(() => { throw new Error("subscriber down"); });
  const off = logger.subscribe((r) => seen.push(r.event));
  logger.info("one");
  assert.equal(off(), true);
  logger.info("two");
  assert.deepEqual(seen, ["one"]);
  assert.equal(lines.length, 2);
});

test("without a sink the log goes to stderr, one line per record", (t) => {
  const written: string[] = [];
  t.mock.method(process.stderr, "write", (chunk: string) => { written.push(chunk); return true; });
  new Logger().info("to-stderr", { n: 1 });
  t.mock.restoreAll();
  assert.equal(written.length, 1);
  assert.ok(written[0].endsWith("}\n"));
  assert.equal(JSON.parse(written[0]).event, "to-stderr");
});

test("an SPI is 0x and eight lower-case hex digits, whatever number holds it", () => {
  assert.equal(spiText(0xa1b2), "0x0000a1b2");
  assert.equal(spiText(0), "0x00000000");
  assert.equal(spiText(0xdeadbeef), "0xdeadbeef");
  assert.equal(spiText(-1), "0xffffffff", "a signed 32-bit reading of the same bits");
  assert.equal(spiText(0x1_0000_0001), "0x00000001", "only the 32 bits an SPI has");
});

test("error codes and close reasons are printed by the names docs/PROTOCOL.md gives them; unknown ones as such", () => {
  const doc = readFileSync(new URL("../docs/PROTOCOL.md", import.meta.url), "utf8");
  const errors = doc.slice(doc.indexOf("Error codes, with the names"), doc.indexOf("SaClosed reasons:"));
  const reasons = doc.slice(doc.indexOf("SaClosed reasons:"), doc.indexOf("An SPI\nis printed"));
  const named = (text: string) => Object.fromEntries([...text.matchAll(/(\d+) `([a-z-]+)`/g)].map((m) => [Number(m[1]), m[2]]));
  assert.deepEqual({ ...ERROR_NAMES }, named(errors));
  assert.deepEqual({ ...CLOSE_REASON_NAMES }, named(reasons));
  assert.equal(errorName(ErrorCode.Spoofed), "spoofed");
  assert.equal(errorName(ErrorCode.Malformed), "malformed");
  assert.equal(errorName(99), "unknown error 99");
  assert.equal(closeReasonName(CloseReason.Removed), "removed");
  assert.equal(closeReasonName(CloseReason.Bye), "bye");
  assert.equal(closeReasonName(0), "unknown reason 0");
});
