// keyproxy monitor in an 80-column terminal (issue 13): through the real CLI, against the in-process
// broker with a real gateway publishing a registry of handsets whose names (and the gateway's) are
// as long as the CLI allows, plus an event someone else publishes in double-width characters. Every
// line printed, as plain lines (stdout not a terminal: 80 columns) and as the redrawn table on
// terminals of 60 and 120 columns, fits; what does not fit is cut with an ellipsis, never wrapped.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { connect } from "mqtt";
import { startBroker } from "../gateway/monitor/embedded-broker.ts";
import { topics } from "../gateway/monitor/monitor.ts";
import { runCli } from "./support/run-cli.ts";
import { startGatewayProcess, type GatewayProcess } from "./support/process.ts";
import { watchCli } from "./support/watch-cli.ts";
import { onTerminal, screens } from "./support/terminal-cli.ts";
import { tempDir } from "./support/harness.ts";

/** Columns on a terminal, for this test's text: ASCII, and CJK at two columns each. Written apart
 *  from the monitor's own measure, so that a mistake there is not repeated here. */
function columns(line: string): number {
  return [...line].reduce((w, c) => w + (/[\u3000-\u9fff\uff00-\uff60]/.test(c) ? 2 : 1), 0);
}

function tooWide(lines: string[], width: number): string[] {
  return lines.filter((l) => columns(l) > width).map((l) => `${columns(l)}: ${l}`);
}

const GATEWAY = "a-gateway-whose-name-is-longer-than-any-column-could-hold.example";
const HANDSETS = ["sim-1", `handset-${"x".repeat(56)}`, `kitchen-${"y".repeat(30)}`];
const WIDE_NOTE = "端末".repeat(30);

test("monitor fits its lines into the terminal: 80 columns when not a terminal, the terminal's width when it is one", { timeout: 180_000 }, async () => {
  const broker = await startBroker({ host: "127.0.0.1", port: 0 });
  const dataDir = tempDir("kp-width-");
  for (const id of HANDSETS) {
    const r = await runCli(["device", "add", "--id", id, "--out", join(tempDir("kp-width-out-"), "p.json"), "--data-dir", dataDir]);
    assert.equal(r.code, 0, r.stderr);
  }
  const follow = watchCli(["monitor", "--mqtt", broker.url]);
  const other = connect(broker.url, { protocolVersion: 4 });
  let gw: GatewayProcess | undefined;
  try {
    gw = await startGatewayProcess(dataDir, 0, ["--mqtt", broker.url, "--id", GATEWAY, "--no-fleet"]);
    // Plain lines, one per change: the gateway's status and every handset's state, all cut.
    for (const id of HANDSETS) await follow.waitFor(new RegExp(`^handset ${id.slice(0, 20)}`, "m"));
    if (!other.connected) await new Promise<void>((resolve) => other.once("connect", () => resolve()));
    // Under a short gateway id: after the long one, nothing of the note would be left on the line.
    await other.publishAsync(topics.events("g2"), JSON.stringify({ ts: new Date().toISOString(), level: "info", event: "note", device: WIDE_NOTE }));
    await follow.waitFor(/^event g2 .*端末/m);
    assert.equal(await follow.stop(), 0, follow.stderr);
    const plain = follow.stdout.trimEnd().split("\n");
    assert.deepEqual(tooWide(plain, 80), [], "every plain line within 80 columns");
    assert.ok(plain.some((l) => l.startsWith(`gateway ${GATEWAY.slice(0, 40)}`) && l.endsWith("\u2026")), "a long line is cut, with an ellipsis");
    assert.ok(plain.some((l) => /^event .*端末.*\u2026$/.test(l)), "double-width characters are counted as two columns");
    assert.ok(plain.some((l) => l.startsWith("GATEWAY")), "and the table at the end");

    // --once: the table alone.
    const once = await runCli(["monitor", "--mqtt", broker.url, "--once"]);
    assert.equal(once.code, 0, once.stderr);
    const table = once.stdout.trimEnd().split("\n");
    assert.deepEqual(tooWide(table, 80), [], once.stdout);
    assert.ok(table.some((l) => l.startsWith(`HANDSETS @ ${GATEWAY.slice(0, 40)}`)), once.stdout);
    for (const id of HANDSETS) assert.ok(table.some((l) => l.startsWith(id.slice(0, 4))), `${id} has its row:\n${once.stdout}`);
    assert.ok(table.some((l) => /^sim-1 +linked +\d+s left +puckjs\b/.test(l) || /^sim-1 +not linked +no +puckjs\b/.test(l)), once.stdout);

    // On a terminal: its width, narrower or wider than 80.
    for (const width of [60, 120]) {
      const r = await onTerminal(width, ["monitor", "--mqtt", broker.url, "--for", "2"]);
      assert.equal(r.code, 0, r.output);
      const frames = screens(r.output);
      assert.ok(frames.length >= 2, r.output);
      const last = frames[frames.length - 1];
      assert.deepEqual(tooWide(frames.flat(), width), [], `every line of every screen within ${width} columns`);
      // Every handset keeps its row (how far a name is cut depends on the other columns' values,
      // "linked" or "not linked" by the time of the last screen, so rows are counted, not names read).
      const header = last.findIndex((l) => /^HAND\S* +LINK /.test(l));
      const rows = header < 0 ? [] : last.slice(header + 1, last.indexOf("", header + 1) < 0 ? undefined : last.indexOf("", header + 1));
      assert.equal(rows.length, HANDSETS.length, last.join("\n"));
      assert.ok(rows.some((l) => l.startsWith("h") && l.split(" ")[0].endsWith("\u2026")), `the long name is cut with an ellipsis:\n${last.join("\n")}`);
      if (width > 80) assert.ok(last.some((l) => columns(l) > 80), "a wider terminal is used");
    }
  } finally {
    other.end(true);
    await follow.stop();
    await gw?.stop();
    await broker.close();
  }
});
