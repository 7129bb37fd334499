// Terminal injection (issue 11, finding 1): strings that devices, unauthenticated peers or anyone on
// the MQTT broker choose must never reach an operator's terminal raw. gateway/log/terminal.ts escapes them
// for every human-readable sink; the JSON log and MQTT events stay JSON, with the same characters as
// \u escapes. End to end: a join naming a hostile device id, sent to a gateway process started
// through the CLI, then the gateway's log and `keyproxy monitor`'s output searched for raw control
// characters; against the in-process broker, and Mosquitto when KEYPROXY_TEST_MQTT_URL names one.
import { onEachBroker } from "./support/brokers.ts";
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import { randomBytes } from "node:crypto";
import { crc32 } from "node:zlib";
import * as gcbor from "../gateway/encoding/cbor.ts";
import { Logger } from "../gateway/log/logger.ts";
import { topics } from "../gateway/monitor/monitor.ts";
import { forTerminal, jsonForTerminal, linesForTerminal } from "../gateway/log/terminal.ts";
import { describeEvent, FleetView } from "../cli/monitor-cmd.ts";
import { encodeFrame } from "../firmware/proto/frame.ts";
import { encodeMessage, Msg } from "../firmware/proto/messages.ts";
import { SUITE_AES_CCM_16_64_128 } from "../firmware/crypto/types.ts";
import { CLI, startGatewayProcess } from "./support/process.ts";
import { tempDir, until } from "./support/harness.ts";

/** What a terminal would act on: C0 but newline, DEL, C1, and the bidi and line-breaking format characters. */
const RAW_CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/u;

/** Clears the screen, sets the window title, CSI by its C1 byte, DEL, a newline, a right-to-left
 *  override and an isolate: within the 64 characters a join's id may have. */
const HOSTILE = "\u001b[2J\u001b]0;pwned\u0007x\u009b31m\u007f\n\u202eevil\u2066";

function rawControlIn(s: string): string | undefined {
  const m = RAW_CONTROL.exec(s);
  return m ? `U+${m[0].codePointAt(0)!.toString(16).padStart(4, "0")} at ${m.index} in ${JSON.stringify(s.slice(Math.max(0, m.index - 40), m.index + 40))}` : undefined;
}

test("forTerminal shows every control, C1 and bidi character as an escape; JSON stays JSON and parses back", () => {
  assert.equal(forTerminal("sim-1 ok"), "sim-1 ok");
  assert.equal(forTerminal("a\u001b[2Jb"), "a\\x1b[2Jb");
  assert.equal(forTerminal("\u009b\u007f\u0000\t\n"), "\\x9b\\x7f\\x00\\x09\\x0a");
  assert.equal(forTerminal("\u202eabc\u2066\u200f\u2028"), "\\u202eabc\\u2066\\u200f\\u2028");
  assert.equal(forTerminal("caf\u00e9 \u65e5\u672c"), "caf\u00e9 \u65e5\u672c", "printable non-ASCII is left alone");
  assert.equal(forTerminal(forTerminal(HOSTILE)), forTerminal(HOSTILE), "idempotent");
  assert.equal(rawControlIn(forTerminal(HOSTILE)), undefined);
  const oneLine = HOSTILE.replace("\n", "");
  assert.equal(linesForTerminal(`one ${oneLine}\ntwo`), `one ${forTerminal(oneLine)}\ntwo`, "several lines: each escaped, the newlines kept");
  const rec = { device: HOSTILE, reason: `bad ${HOSTILE}` };
  const line = jsonForTerminal(rec);
  assert.equal(rawControlIn(line), undefined);
  assert.ok(!line.includes("\n"));
  assert.deepEqual(JSON.parse(line), rec, "the same value after parsing");
});

test("the logger writes JSON lines with no raw control character, whatever a caller passes", () => {
  const lines: string[] = [];
  new Logger((l) => lines.push(l)).warn("join-rejected", { device: HOSTILE, reason: HOSTILE });
  assert.equal(rawControlIn(lines[0]), undefined);
  assert.equal(JSON.parse(lines[0]).device, HOSTILE);
});

test("the monitor's lines and table, and the demo's event lines, escape what the broker carries", () => {
  const ev = { ts: new Date().toISOString(), level: "warn", event: `join-rejected${HOSTILE}`, device: HOSTILE, peer: "127.0.0.1", [`k${HOSTILE}`]: HOSTILE };
  const described = describeEvent(ev);
  assert.equal(rawControlIn(described), undefined, "describeEvent (the monitor's events, the demo narration)");
  assert.ok(described.includes("\\x1b[2J"), described);
  const v = new FleetView(4);
  const gw = `gw${HOSTILE}`;
  const lines = [
    v.apply(topics.status(gw), Buffer.from(JSON.stringify({ state: `online${HOSTILE}`, since: HOSTILE, version: HOSTILE, listen: HOSTILE, run: "r", reason: HOSTILE }))),
    v.apply(topics.deviceState(gw, HOSTILE), Buffer.from(JSON.stringify({ device: HOSTILE, board: HOSTILE, online: true, registered: true, registeredUntil: null, revoked: false, joinCounter: HOSTILE, lastJoin: null, joinRejects: 0, framesDropped: 0, firmware: HOSTILE, memoryUsed: null, memoryTotal: null }))),
    v.apply(topics.events(gw), Buffer.from(JSON.stringify(ev))),
    v.apply(topics.metrics(gw), Buffer.from(JSON.stringify({ joins: HOSTILE }))),
  ];
  for (const l of lines) assert.equal(rawControlIn(l ?? ""), undefined, String(l));
  const table = v.render(`title ${HOSTILE}`);
  assert.equal(rawControlIn(table), undefined);
  assert.ok(table.includes("\\u202eevil"), table);
  assert.ok(!table.includes(`\n\u202e`) && !table.split("\n").some((l) => l.startsWith("evil")), "a newline in a value does not start a line");
});

// ---- end to end ----------------------------------------------------------------------------------

/** A JoinRequest for id with a tag that cannot verify, as a frame on the wire. */
function hostileJoin(id: string): Uint8Array {
  const m = { t: Msg.JoinRequest, id, ctr: 1, nonce: new Uint8Array(randomBytes(16)), suite: SUITE_AES_CCM_16_64_128, tag: new Uint8Array(randomBytes(16)) } as const;
  return encodeFrame(gcbor.encode(encodeMessage(m)), (b) => crc32(b) >>> 0);
}

async function endToEnd(url: string): Promise<void> {
  const gatewayId = `term-${randomBytes(3).toString("hex")}.example`;
  const gw = await startGatewayProcess(tempDir("kp-term-"), 0, ["--mqtt", url, "--id", gatewayId, "--no-fleet", "--metrics", "60"]);
  const monitor = spawn(process.execPath, [CLI, "monitor", "--mqtt", url, "--for", "60"], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  monitor.stdout.on("data", (b: Buffer) => (out += b.toString("utf8")));
  monitor.stderr.on("data", (b: Buffer) => (out += b.toString("utf8")));
  const monitorExit = new Promise<number | null>((res) => monitor.once("exit", res));
  try {
    // The retained status reaches the monitor once it has subscribed: only then is an event sure to reach it.
    await until(() => out.includes(`gateway ${gatewayId} online`), `the monitor sees the gateway:\n${out}`, 20_000);
    const sock = net.connect(gw.port, "127.0.0.1");
    await new Promise<void>((res, rej) => { sock.once("connect", res); sock.once("error", rej); });
    sock.on("error", () => {});
    sock.write(hostileJoin(HOSTILE));
    await until(() => gw.events("join-rejected").length === 1, "the gateway refuses the join", 10_000);
    await until(() => out.includes("join-rejected \\x1b[2J"), `the monitor shows the event:\n${out}`, 10_000);
    sock.destroy();
    monitor.kill("SIGTERM");
    assert.equal(await monitorExit, 0, out);
    assert.ok(out.includes("RECENT EVENTS"), "and its final table");

    // The gateway's log: JSON lines, the id intact after parsing, no raw control character.
    assert.equal(gw.events("join-rejected")[0].device, HOSTILE);
    const log = gw.lines.join("\n");
    assert.equal(rawControlIn(log), undefined);
    assert.equal(rawControlIn(out), undefined);
    // Each line is cut at 80 columns (stdout is a pipe): the id's bidi override lies beyond the cut
    // here; the view's own test above shows it escaped.
    assert.ok(out.includes("\\x9b31m"), `shown escaped:\n${out}`);
  } finally {
    if (monitor.exitCode === null) monitor.kill("SIGKILL");
    await gw.stop();
  }
}

onEachBroker("end to end (in-process broker): a hostile device id in a rejected join reaches the gateway's log and keyproxy monitor escaped", "end to end over Mosquitto (KEYPROXY_TEST_MQTT_URL): the same", endToEnd);
