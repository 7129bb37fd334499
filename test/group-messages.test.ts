// The interlink messages of group SAs across gateways (gateway/crossgw/group-messages.ts), on their own:
// each body built by one side is read back by the other as it was, and every field a peer could get
// wrong is refused as "malformed" in words that name the message type and the field. Until now these
// decoders were reached only through test/groups-crossgw.test.ts, with well-formed bodies.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Msg, type InnerMessage } from "../firmware/proto/messages.ts";
import * as cbor from "../gateway/encoding/cbor.ts";
import {
  frameBody,
  messageBody,
  readCarried,
  readStatus,
  readWatch,
  readWatchAnswer,
  statusBody,
  watchAnswerBody,
  watchBody,
  XGW_GROUP_FROM,
  XGW_GROUP_STATUS,
  XGW_GROUP_TO,
  XGW_GROUP_WATCH,
} from "../gateway/crossgw/group-messages.ts";
import { assertReadersRefuseCleanly, refusal, withField, without } from "./support/interlink-bodies.ts";

const member = "alice@b.example";
const group = "team@a.example";


test("the type names, as docs/PROTOCOL.md §5d gives them", () => {
  assert.deepEqual([XGW_GROUP_WATCH, XGW_GROUP_STATUS, XGW_GROUP_TO, XGW_GROUP_FROM], ["kp.g.watch", "kp.g.status", "kp.g.to", "kp.g.from"]);
});

test("kp.g.watch: read back as built; the member, the group and the application each refused in their own words", () => {
  const body = watchBody(member, group, "chat.v1-x_");
  assert.deepEqual([...body.keys()], ["member", "group", "app"]);
  assert.deepEqual(readWatch(body), { member, group, app: "chat.v1-x_" });
  assert.deepEqual(refusal(() => readWatch([member, group, "chat"])), ["malformed", "kp.g.watch: body must be a map"]);
  const memberWrong = "kp.g.watch: member must be a device name (name@domain)";
  for (const m of ["alice", "alice@", "@b.example", 7, undefined]) assert.deepEqual(refusal(() => readWatch(withField(body, "member", m))), ["malformed", memberWrong], String(m));
  for (const g of ["team", "team@", 1]) assert.deepEqual(refusal(() => readWatch(withField(body, "group", g))), ["malformed", "kp.g.watch: group must be name@domain"], String(g));
  const appWrong = "kp.g.watch: app must be an application name";
  for (const a of ["", "a".repeat(33), "chat app", "chat/1", "ch\nat", 5, undefined]) assert.deepEqual(refusal(() => readWatch(withField(body, "app", a))), ["malformed", appWrong], JSON.stringify(a));
  assert.equal(readWatch(withField(body, "app", "a".repeat(32))).app, "a".repeat(32), "32 characters is the longest");
  assert.deepEqual(refusal(() => readWatch(without(body, "app"))), ["malformed", appWrong]);
});

test("the watch's answer and kp.g.status: read back as built; up, revoked and suites refused in their own words", () => {
  const status = { up: true, suites: [[1, 0], [2, 5]] };
  assert.deepEqual(readWatchAnswer(watchAnswerBody(status)), status);
  assert.deepEqual(readWatchAnswer(watchAnswerBody({ up: false, suites: [] })), { up: false, suites: [] });
  const body = statusBody(member, status, false);
  assert.deepEqual([...body.keys()], ["member", "up", "suites", "revoked"]);
  assert.deepEqual(readStatus(body), { member, ...status, revoked: false });
  assert.equal(readStatus(statusBody(member, status, true)).revoked, true);

  assert.deepEqual(refusal(() => readWatchAnswer(0)), ["malformed", "kp.g.watch: body must be a map"]);
  assert.deepEqual(refusal(() => readStatus(new Set())), ["malformed", "kp.g.status: body must be a map"]);
  for (const v of [1, 0, "true", null, undefined]) {
    assert.deepEqual(refusal(() => readWatchAnswer(withField(watchAnswerBody(status), "up", v))), ["malformed", "kp.g.watch: up must be true or false"]);
    assert.deepEqual(refusal(() => readStatus(withField(body, "up", v))), ["malformed", "kp.g.status: up must be true or false"]);
    assert.deepEqual(refusal(() => readStatus(withField(body, "revoked", v))), ["malformed", "kp.g.status: revoked must be true or false"]);
  }
  const suitesWrong = (type: string) => ["malformed", `${type}: suites must be at most 8 [suite, priority] pairs`];
  const badSuites: unknown[] = [
    undefined,
    "1,0",
    [[1, 0], 2],
    [[1]],
    [[1, 0, 0]],
    [[1.5, 0]],
    [[1, -1]],
    [[1, "0"]],
    [["1", 0]],
    [[2 ** 53, 0]],
    Array.from({ length: 9 }, (_, i) => [i, 0]),
  ];
  for (const s of badSuites) {
    assert.deepEqual(refusal(() => readWatchAnswer(withField(watchAnswerBody(status), "suites", s))), suitesWrong("kp.g.watch"), JSON.stringify(s));
    assert.deepEqual(refusal(() => readStatus(withField(body, "suites", s))), suitesWrong("kp.g.status"), JSON.stringify(s));
  }
  const eight = Array.from({ length: 8 }, (_, i) => [i, i]);
  assert.deepEqual(readStatus(withField(body, "suites", eight)).suites, eight, "eight pairs is the most");
  assert.deepEqual(readStatus(withField(body, "suites", [[-3, 0]])).suites, [[-3, 0]], "a suite is any integer (COSE algorithm ids are negative); a priority is not negative");
  assert.deepEqual(refusal(() => readStatus(withField(body, "member", "bob"))), ["malformed", "kp.g.status: member must be a device name (name@domain)"]);
});

test("kp.g.to and kp.g.from: an inner message or a frame, read back as built; anything else refused in its type's words", () => {
  const install: InnerMessage = { t: Msg.SaInstall, rid: 7, spi: 0x1234, peer: group, app: "chat", suite: 1, seed: new Uint8Array(32).fill(9), role: 2, lifetime: 3600, limit: 1000, replaces: 0 };
  for (const type of [XGW_GROUP_TO, XGW_GROUP_FROM]) {
    const carried = readCarried(type, messageBody(member, install));
    assert.equal(carried.member, member);
    assert.deepEqual(carried.msg, install);
    assert.equal(carried.frame, undefined);
    const frame = Uint8Array.of(1, 2, 3);
    assert.deepEqual(readCarried(type, frameBody(member, frame)), { member, frame });
    assert.equal(readCarried(type, frameBody(member, new Uint8Array(4096))).frame?.length, 4096, "4,096 bytes is the longest frame");

    const oneOf = ["malformed", `${type}: one of msg (at most 1024 bytes) or frame is required`];
    const msgBytes = (messageBody(member, install).get("msg") as Uint8Array);
    assert.deepEqual(refusal(() => readCarried(type, "body")), ["malformed", `${type}: body must be a map`]);
    assert.deepEqual(refusal(() => readCarried(type, new Map<string, unknown>([["member", "x"], ["frame", frame]]))), ["malformed", `${type}: member must be a device name (name@domain)`]);
    assert.deepEqual(refusal(() => readCarried(type, new Map([["member", member]]))), oneOf, "neither");
    assert.deepEqual(refusal(() => readCarried(type, new Map<string, unknown>([["member", member], ["msg", msgBytes], ["frame", frame]]))), oneOf, "both");
    assert.deepEqual(refusal(() => readCarried(type, new Map<string, unknown>([["member", member], ["msg", "text"]]))), oneOf, "msg not bytes");
    assert.deepEqual(refusal(() => readCarried(type, new Map<string, unknown>([["member", member], ["msg", new Uint8Array(1025)]]))), oneOf, "msg too long");
    assert.notDeepEqual(refusal(() => readCarried(type, new Map<string, unknown>([["member", member], ["msg", new Uint8Array(1024)]]))), oneOf, "1,024 bytes is not too long: it is read (and is no message)");
    assert.deepEqual(refusal(() => readCarried(type, new Map<string, unknown>([["member", member], ["frame", "text"]]))), oneOf, "frame not bytes");
    for (const f of [new Uint8Array(0), new Uint8Array(4097)]) {
      assert.deepEqual(refusal(() => readCarried(type, frameBody(member, f))), ["malformed", `${type}: frame must be 1 to 4096 bytes`], `${f.length} bytes`);
    }
    const [code, why] = refusal(() => readCarried(type, new Map<string, unknown>([["member", member], ["msg", Uint8Array.of(0xff)]])));
    assert.equal(code, "malformed");
    assert.match(why, new RegExp(`^${type.replace(/\./g, "\\.")}: msg is not CBOR: .+`));
    const [code2, why2] = refusal(() => readCarried(type, new Map<string, unknown>([["member", member], ["msg", cbor.encode([Msg.SaInstall, 1])]])));
    assert.equal(code2, "malformed");
    assert.ok(why2.startsWith(`${type}: `) && why2.length > type.length + 2, "a message that does not decode says why, after its type");
  }
});

test("property: the readers refuse anything they do not read with InterlinkError malformed, and never throw otherwise", () => {
  const readers = [readWatch, readWatchAnswer, readStatus, (b: unknown) => readCarried(XGW_GROUP_TO, b), (b: unknown) => readCarried(XGW_GROUP_FROM, b)];
  assertReadersRefuseCleanly(readers, ["member", "group", "app", "up", "suites", "revoked", "msg", "frame"]);
});
