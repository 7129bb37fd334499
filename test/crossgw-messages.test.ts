// The interlink messages of sessions across gateways (gateway/crossgw/messages.ts), on their own: each
// body built by one side is read back by the other as it was, and every field a peer gateway could get
// wrong is refused as "malformed" in words that name the message type and the field. The peer is
// authenticated, but it belongs to another domain: nothing it sends is trusted to be well formed.
// test/crossgw.test.ts runs these messages end to end; fuzz/targets feed the readers random bodies.

import { test } from "node:test";
import assert from "node:assert/strict";
import { CloseReason } from "../firmware/proto/messages.ts";
import {
  acceptBody, byeBody, certAnswerBody, certQueryBody, confirmedBody, connectBody, finishBody, finishedBody, frameBody, movedBody, readBye, readCertAnswer, readCertQuery,
  readConfirmed, readConnect, readConnectAnswer, readFinish, readFinished, readFrame, readMoved, readRekey, refusalBody, rekeyBody,
  XGW_BYE, XGW_CERT, XGW_CONFIRMED, XGW_MOVED, XGW_MSG1, XGW_MSG3, XGW_REKEY, XGW_SA,
} from "../gateway/crossgw/messages.ts";
import { assertReadersRefuseCleanly, refusal, withField, without } from "./support/interlink-bodies.ts";

const bytesOf = (n: number, fill = 7) => new Uint8Array(n).fill(fill);
const terms = { lifetime: 3600, limit: 1000 };
const NOT_MAPS: unknown[] = [[1, 2], "body", 0, null, undefined, new Set(), { spi: 1 }];

test("the type names, as docs/PROTOCOL.md §5c gives them", () => {
  assert.deepEqual([XGW_MSG1, XGW_MSG3, XGW_CONFIRMED, XGW_SA, XGW_BYE, XGW_REKEY, XGW_MOVED, XGW_CERT], ["kp.x.1", "kp.x.3", "kp.x.confirmed", "kp.x.sa", "kp.x.bye", "kp.x.rekey", "kp.x.moved", "kp.x.cert"]);
});

test("every body is not a map: refused in its type's words", () => {
  const readers: [string, (b: unknown) => unknown][] = [
    [XGW_MSG1, readConnect], [XGW_MSG1, readConnectAnswer], [XGW_MSG3, readFinish], [XGW_MSG3, readFinished], [XGW_CONFIRMED, readConfirmed],
    [XGW_SA, readFrame], [XGW_BYE, readBye], [XGW_REKEY, readRekey], [XGW_MOVED, readMoved], [XGW_CERT, readCertQuery], [XGW_CERT, readCertAnswer],
  ];
  for (const [type, read] of readers) {
    for (const b of NOT_MAPS) assert.deepEqual(refusal(() => read(b)), ["malformed", `${type}: body must be a map`], `${type} ${String(b)}`);
  }
});

test("kp.x.1: the exchange's first message and the SA terms, read back as built; each field refused in its own words", () => {
  const msg1 = bytesOf(120);
  const body = connectBody(msg1, terms);
  assert.deepEqual([...body.keys()], ["msg1", "lifetime", "limit"]);
  assert.deepEqual(readConnect(body), { msg1, ...terms });
  const bytesWrong = ["malformed", "kp.x.1: msg1 must be 1 to 16384 bytes"];
  for (const v of [bytesOf(0), bytesOf(16385), "msg1", [1, 2], undefined]) assert.deepEqual(refusal(() => readConnect(withField(body, "msg1", v))), bytesWrong, String(v));
  assert.equal(readConnect(withField(body, "msg1", bytesOf(16384))).msg1.length, 16384, "16 KiB is the longest");
  assert.equal(readConnect(withField(body, "msg1", bytesOf(1))).msg1.length, 1);
  for (const key of ["lifetime", "limit"] as const) {
    const wrong = ["malformed", `kp.x.1: ${key} must be a whole number from 1 to 2147483647`];
    for (const v of [0, -1, 1.5, 2 ** 31, 2 ** 53, "3600", undefined, NaN, Infinity]) assert.deepEqual(refusal(() => readConnect(withField(body, key, v))), wrong, `${key} ${String(v)}`);
    assert.equal(readConnect(withField(body, key, 1))[key], 1, `${key} 1 is the least`);
    assert.equal(readConnect(withField(body, key, 2 ** 31 - 1))[key], 2 ** 31 - 1, `${key} 2^31-1 is the most`);
  }
  assert.deepEqual(refusal(() => readConnect(without(body, "limit"))), ["malformed", "kp.x.1: limit must be a whole number from 1 to 2147483647"]);
});

test("kp.x.1's answer: the second message and the terms, or a refusal the caller's device may hear; any other refusal reads as not-found", () => {
  const msg2 = bytesOf(200, 3);
  const body = acceptBody(msg2, { lifetime: 60, limit: 5 });
  assert.deepEqual([...body.keys()], ["msg2", "lifetime", "limit"]);
  assert.deepEqual(readConnectAnswer(body), { msg2, lifetime: 60, limit: 5 });
  for (const why of ["not-found", "rejected", "no-common-suite"] as const) assert.deepEqual(readConnectAnswer(refusalBody(why)), { refused: why });
  // A peer cannot tell the caller's device anything but these three: its own words become not-found.
  for (const other of ["internal", "revoked", "\u001b[2J", 5, true]) assert.deepEqual(readConnectAnswer(new Map([["refused", other]])), { refused: "not-found" }, String(other));
  assert.deepEqual(readConnectAnswer(withField(body, "refused", "rejected")), { refused: "rejected" }, "a refusal wins over the rest of the body");
  assert.deepEqual(refusal(() => readConnectAnswer(without(body, "msg2"))), ["malformed", "kp.x.1: msg2 must be 1 to 16384 bytes"]);
  assert.deepEqual(refusal(() => readConnectAnswer(withField(body, "lifetime", 0))), ["malformed", "kp.x.1: lifetime must be a whole number from 1 to 2147483647"]);
  assert.deepEqual(refusal(() => readConnectAnswer(withField(body, "limit", -5))), ["malformed", "kp.x.1: limit must be a whole number from 1 to 2147483647"]);
  assert.deepEqual(refusal(() => readConnectAnswer(new Map())), ["malformed", "kp.x.1: msg2 must be 1 to 16384 bytes"], "an empty answer is no refusal");
});

test("kp.x.3 and its answer: the third and fourth messages, 1 to 16 KiB", () => {
  const msg3 = bytesOf(300, 1);
  const msg4 = bytesOf(40, 2);
  assert.deepEqual([...finishBody(msg3).keys()], ["msg3"]);
  assert.deepEqual([...finishedBody(msg4).keys()], ["msg4"]);
  assert.deepEqual(readFinish(finishBody(msg3)), msg3);
  assert.deepEqual(readFinished(finishedBody(msg4)), msg4);
  for (const v of [bytesOf(0), bytesOf(16385), "x", undefined]) {
    assert.deepEqual(refusal(() => readFinish(new Map([["msg3", v]]))), ["malformed", "kp.x.3: msg3 must be 1 to 16384 bytes"]);
    assert.deepEqual(refusal(() => readFinished(new Map([["msg4", v]]))), ["malformed", "kp.x.3: msg4 must be 1 to 16384 bytes"]);
  }
  assert.deepEqual(refusal(() => readFinished(finishBody(msg3))), ["malformed", "kp.x.3: msg4 must be 1 to 16384 bytes"], "one message is not the other");
  assert.equal(readFinish(finishBody(bytesOf(16384))).length, 16384);
});

test("the SA notices: an SPI from 1 to 2^32-1 in each, read back as built", () => {
  const notices: [string, (spi: number) => Map<string, unknown>, (b: unknown) => number][] = [
    [XGW_CONFIRMED, confirmedBody, readConfirmed], [XGW_REKEY, rekeyBody, readRekey], [XGW_MOVED, movedBody, readMoved],
  ];
  for (const [type, build, read] of notices) {
    assert.deepEqual([...build(5).keys()], ["spi"]);
    for (const spi of [1, 0x1234, 0xffffffff]) assert.equal(read(build(spi)), spi, `${type} ${spi}`);
    for (const spi of [0, -1, 0x100000000, 1.5, "5", undefined, null]) assert.deepEqual(refusal(() => read(new Map([["spi", spi]]))), ["malformed", `${type}: spi must be a whole number from 1 to 4294967295`], `${type} ${String(spi)}`);
  }
});

test("kp.x.sa: an SPI and an SaData frame of 1 to 4,096 bytes, byte for byte", () => {
  const frame = Uint8Array.of(1, 2, 3, 4);
  const body = frameBody(0xabc, frame);
  assert.deepEqual([...body.keys()], ["spi", "frame"]);
  assert.deepEqual(readFrame(body), { spi: 0xabc, frame });
  assert.equal(readFrame(frameBody(1, bytesOf(4096))).frame.length, 4096, "4,096 bytes is the longest");
  for (const f of [bytesOf(0), bytesOf(4097), "frame", undefined]) assert.deepEqual(refusal(() => readFrame(withField(body, "frame", f))), ["malformed", "kp.x.sa: frame must be 1 to 4096 bytes"], String(f));
  assert.deepEqual(refusal(() => readFrame(withField(body, "spi", 0))), ["malformed", "kp.x.sa: spi must be a whole number from 1 to 4294967295"]);
});

test("kp.x.bye: a bye stays a bye and a revocation a revocation; any other reason is heard as peer gone", () => {
  assert.deepEqual([...byeBody(9, CloseReason.Bye).keys()], ["spi", "reason"]);
  assert.deepEqual(readBye(byeBody(9, CloseReason.Bye)), { spi: 9, reason: CloseReason.Bye });
  assert.deepEqual(readBye(byeBody(9, CloseReason.Revoked)), { spi: 9, reason: CloseReason.Revoked });
  for (const r of [CloseReason.PeerGone, CloseReason.Expired, CloseReason.Replaced, CloseReason.Removed, CloseReason.Deregistered, 0, 99, "1", undefined]) {
    assert.deepEqual(readBye(new Map<string, unknown>([["spi", 9], ["reason", r]])), { spi: 9, reason: CloseReason.PeerGone }, String(r));
  }
  assert.deepEqual(refusal(() => readBye(new Map([["reason", CloseReason.Bye]]))), ["malformed", "kp.x.bye: spi must be a whole number from 1 to 4294967295"]);
});

test("kp.x.cert: a query names two devices; its answer is two certificates of 1 to 4,096 bytes, or a refusal", () => {
  const query = certQueryBody("alice@a.example", "bob@b.example");
  assert.deepEqual([...query.keys()], ["from", "name"]);
  assert.deepEqual(readCertQuery(query), { from: "alice@a.example", name: "bob@b.example" });
  const nameWrong = ["malformed", "kp.x.cert: from and name must be device names (name@domain)"];
  for (const key of ["from", "name"]) {
    for (const v of ["bob", "bob@", "@b.example", "bob@b.example\u001b[2J", 5, undefined]) assert.deepEqual(refusal(() => readCertQuery(withField(query, key, v))), nameWrong, `${key} ${String(v)}`);
  }

  const cert = bytesOf(300, 4);
  const gatewayCert = bytesOf(280, 5);
  const answer = certAnswerBody(cert, gatewayCert);
  assert.deepEqual([...answer.keys()], ["cert", "gatewayCert"]);
  assert.deepEqual(readCertAnswer(answer), { cert, gatewayCert });
  assert.deepEqual(readCertAnswer(refusalBody("not-found")), { refused: "not-found" });
  assert.deepEqual(readCertAnswer(new Map([["refused", "because"]])), { refused: "not-found" });
  for (const key of ["cert", "gatewayCert"]) {
    for (const v of [bytesOf(0), bytesOf(4097), "cert", undefined]) assert.deepEqual(refusal(() => readCertAnswer(withField(answer, key, v))), ["malformed", `kp.x.cert: ${key} must be 1 to 4096 bytes`], `${key} ${String(v)}`);
    assert.equal((readCertAnswer(withField(answer, key, bytesOf(4096))) as Record<string, Uint8Array>)[key].length, 4096);
  }
});

test("property: the readers refuse anything they do not read with InterlinkError malformed, and never throw otherwise", () => {
  const readers = [readConnect, readConnectAnswer, readFinish, readFinished, readConfirmed, readFrame, readBye, readRekey, readMoved, readCertQuery, readCertAnswer];
  assertReadersRefuseCleanly(readers, ["msg1", "msg2", "msg3", "msg4", "lifetime", "limit", "refused", "spi", "frame", "reason", "from", "name", "cert", "gatewayCert"]);
});
