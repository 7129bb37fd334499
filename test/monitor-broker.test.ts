// keyproxy monitor when its broker is away (issue 13): through the real CLI against the in-process
// broker (aedes), stopped and started again on the same port. It says the broker is unreachable and
// since when, once per outage, says when it is back, keeps running, and never prints the password
// the broker URL carries.
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { startBroker, type EmbeddedBroker } from "../gateway/monitor/embedded-broker.ts";
import { watchCli } from "./support/watch-cli.ts";
import { onTerminal, screens } from "./support/terminal-cli.ts";

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

test("monitor: broker unreachable from the start, then up, lost, back: a line for each change, no password", async () => {
  const port = await freePort(); // nothing listens there yet
  const shown = `mqtt://127\\.0\\.0\\.1:${port}`;
  const mon = watchCli(["monitor", "--mqtt", `mqtt://watcher:s3cret-pw@127.0.0.1:${port}`]);
  let broker: EmbeddedBroker | undefined;
  try {
    const unreachable = new RegExp(`^broker ${shown} unreachable since \\d\\d:\\d\\d:\\d\\d; retrying`, "m");
    await mon.waitFor(unreachable);

    broker = await startBroker({ host: "127.0.0.1", port });
    await mon.waitFor(new RegExp(`^broker ${shown} connected at \\d\\d:\\d\\d:\\d\\d$`, "m"));

    await broker.close();
    broker = undefined;
    await mon.waitFor(unreachable, 2);

    broker = await startBroker({ host: "127.0.0.1", port });
    await mon.waitFor(new RegExp(`^broker ${shown} reconnected at \\d\\d:\\d\\d:\\d\\d \\(unreachable for \\d+s\\)$`, "m"));
  } finally {
    assert.equal(await mon.stop(), 0, mon.stderr);
    await broker?.close();
  }
  // Retried every 2 s while away: still one line per outage, not one per attempt.
  assert.equal(mon.stdout.match(/unreachable since/g)?.length, 2, mon.stdout);
  for (const secret of ["s3cret-pw", "watcher"]) assert.ok(!(mon.stdout + mon.stderr).includes(secret), `"${secret}" printed:\n${mon.stdout}\n${mon.stderr}`);
});

test("monitor on a terminal: the broker's state under the title, the password never shown", async () => {
  const port = await freePort(); // nothing listens there
  const r = await onTerminal(100, ["monitor", "--mqtt", `mqtt://watcher:s3cret-pw@127.0.0.1:${port}`, "--for", "3"]);
  assert.equal(r.code, 0, r.output);
  const frames = screens(r.output);
  assert.ok(frames.length >= 2, r.output);
  const last = frames[frames.length - 1];
  assert.match(last[0], new RegExp(`^keyproxy monitor  mqtt://127\\.0\\.0\\.1:${port}  `));
  assert.match(last[1], new RegExp(`^broker mqtt://127\\.0\\.0\\.1:${port} unreachable since \\d\\d:\\d\\d:\\d\\d; retrying`), "the second line says so");
  assert.ok(!r.output.includes("s3cret-pw") && !r.output.includes("watcher"), r.output);
});
