// The message table (firmware/proto/messages.ts) against docs/PROTOCOL.md's table of types: every
// type's wire array in the document's field order (proto.test.ts round-trips the join, link and
// registry messages; the session messages are here), and the field kinds at their edges (text of 1
// and 64 characters, integers up to 2^53 - 1, signed suites, at most 8 suite pairs, null only where
// allowed). The device and the gateway share this table, so only a test written from the document
// notices a field out of order. For `npm run mutation -- firmware/proto/messages.ts` (docs/MUTATION.md).
import { test } from "node:test";
import assert from "node:assert/strict";
import { decodeMessage, encodeMessage, Msg, type Message } from "../firmware/proto/messages.ts";

const b = (n: number) => new Uint8Array(n).fill(n);

test("session messages: the wire arrays of docs/PROTOCOL.md, in its field order, both ways", () => {
  const cases: [Message, unknown[]][] = [
    [{ t: Msg.ConnectRequest, rid: 1, peer: "bob", app: "chat", from: "alice" }, [32, 1, "bob", "chat", "alice"]],
    [{ t: Msg.Incoming, rid: 2, from: "alice", app: "chat", suite: -65537 }, [33, 2, "alice", "chat", -65537]],
    [{ t: Msg.Answer, rid: 3, accept: true }, [34, 3, true]],
    [{ t: Msg.SaInstall, rid: 4, spi: 0xdeadbeef, peer: "bob", app: "chat", suite: 10, seed: b(32), role: 1, lifetime: 3600, limit: 100000, replaces: 7 }, [35, 4, 0xdeadbeef, "bob", "chat", 10, b(32), 1, 3600, 100000, 7]],
    [{ t: Msg.SaConfirm, rid: 5, spi: 9, tag: b(16) }, [36, 5, 9, b(16)]],
    [{ t: Msg.Connected, spi: 9, replaces: 0 }, [37, 9, 0]],
    [{ t: Msg.Rekey, rid: 0, spi: 9 }, [38, 0, 9]],
    [{ t: Msg.Bye, spi: 0 }, [39, 0]],
    [{ t: Msg.SaClosed, spi: 9, reason: 2 }, [40, 9, 2]],
    [{ t: Msg.Error, rid: 6, code: 8 }, [31, 6, 8]],
    [{ t: Msg.SaData, spi: 9, seq: 1, sealed: b(9) }, [5, 9, 1, b(9)]],
    [{ t: Msg.JoinRequest, id: "d", ctr: 1, nonce: b(16), suite: 10, tag: b(16) }, [1, "d", 1, b(16), 10, b(16)]],
    [{ t: Msg.RegisterOk, rid: 1, granted: 600, certId: b(16), cert: b(20) }, [17, 1, 600, b(16), b(20)]],
  ];
  for (const [m, wire] of cases) {
    assert.deepEqual(encodeMessage(m), wire, `type ${m.t} encodes`);
    assert.deepEqual(decodeMessage(wire), m, `type ${m.t} decodes`);
  }
});

test("field kinds at their edges are taken", () => {
  const ok: unknown[][] = [
    [Msg.CertQuery, 1, "x"],
    [Msg.CertQuery, 1, "x".repeat(64)],
    [Msg.CertQuery, 0, "x"],
    [Msg.CertQuery, 2 ** 53 - 1, "x"],
    [Msg.Incoming, 1, "a", "b", -(2 ** 53 - 1)],
    [Msg.RegisterRequest, 1, 60, [[10, 1], [10, 2], [10, 3], [10, 4], [10, 5], [10, 6], [10, 7], [-65537, 0]], false, "f", 0],
    [Msg.RegisterOk, 1, 60, b(1), null],
    [Msg.RegisterOk, 1, 60, new Uint8Array(0), null],
  ];
  for (const w of ok) assert.ok(!(decodeMessage(w) instanceof Error), JSON.stringify(w));
});

test("field kinds just past their edges are refused, decoding and encoding", () => {
  const bad: [unknown[], RegExp][] = [
    [[Msg.CertQuery, 1, ""], /^msg: type 20 has a bad name$/],
    [[Msg.CertQuery, 1, "x".repeat(65)], /bad name/],
    // Text is a string: other things with a length are not names.
    [[Msg.CertQuery, 1, ["x"]], /bad name/],
    [[Msg.CertQuery, 1, b(3)], /bad name/],
    [[Msg.CertQuery, 2 ** 53, "x"], /bad rid/],
    [[Msg.CertQuery, -1, "x"], /bad rid/],
    [[Msg.CertQuery, "1", "x"], /bad rid/],
    [[Msg.Incoming, 1, "a", "b", -(2 ** 53)], /bad suite/],
    [[Msg.Incoming, 1, "a", "b", 0.5], /bad suite/],
    [[Msg.Incoming, 1, "a", "b", "10"], /bad suite/],
    [[Msg.RegisterRequest, 1, 60, Array.from({ length: 9 }, () => [10, 1]), false, "f", 0], /bad suites/],
    [[Msg.RegisterRequest, 1, 60, [[10, 1, 2]], false, "f", 0], /bad suites/],
    [[Msg.RegisterRequest, 1, 60, [[10, -1]], false, "f", 0], /bad suites/],
    [[Msg.RegisterRequest, 1, 60, [[1.5, 1]], false, "f", 0], /bad suites/],
    [[Msg.RegisterRequest, 1, 60, [10, 1], false, "f", 0], /bad suites/],
    [[Msg.RegisterRequest, 1, 60, "s", false, "f", 0], /bad suites/],
    [[Msg.RegisterOk, 1, 60, null, null], /bad certId/],
    [[Msg.RegisterOk, 1, 60, b(1), "c"], /bad cert/],
    [[Msg.Answer, 1, 1], /bad accept/],
    [[Msg.Answer, 1, null], /bad accept/],
    [[Msg.SaConfirm, 1, 2, [1, 2]], /bad tag/],
    [[Msg.Bye], /^msg: type 39 needs 1 fields, got 0$/],
    [[Msg.Bye, 1, 2], /needs 1 fields, got 2/],
    [[Msg.JoinReject, 1], /needs 0 fields, got 1/],
  ];
  for (const [w, re] of bad) {
    const d = decodeMessage(w);
    assert.ok(d instanceof Error && re.test(d.message), `${JSON.stringify(w)}: ${d instanceof Error ? d.message : "accepted"}`);
  }
  // Encoding refuses what decoding refuses, naming the field.
  assert.throws(() => encodeMessage({ t: Msg.CertQuery, rid: 1, name: "" }), /^Error: msg: bad field name$/);
  assert.throws(() => encodeMessage({ t: Msg.CertQuery, rid: -1, name: "x" }), /^Error: msg: bad field rid$/);
  assert.throws(() => encodeMessage({ t: Msg.CertQuery, rid: 1.5, name: "x" }), /^Error: msg: bad field rid$/);
  assert.throws(() => encodeMessage({ t: Msg.CertQuery, rid: 2 ** 53, name: "x" }), /^Error: msg: bad field rid$/);
  assert.throws(() => encodeMessage({ t: Msg.Answer, rid: 1, accept: 1 as unknown as boolean }), /^Error: msg: bad field accept$/);
  assert.throws(() => encodeMessage({ t: 77 } as unknown as Message), /^Error: msg: unknown type 77$/);
  // ... and takes what decoding takes, up to the largest exact integer.
  assert.deepEqual(encodeMessage({ t: Msg.CertQuery, rid: 2 ** 53 - 1, name: "x" }), [Msg.CertQuery, 2 ** 53 - 1, "x"]);
});

test("types between the groups and type values that are not numbers are unknown", () => {
  for (const t of [0, 6, 15, 22, 30, 41, 1.5, "4", null]) {
    const d = decodeMessage([t]);
    assert.ok(d instanceof Error && /unknown type/.test(d.message), String(t));
  }
  assert.ok(decodeMessage("x") instanceof Error);
});
