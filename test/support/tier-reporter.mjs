// A second test reporter for `npm test`: at the end, one line on stderr counting the real-interpreter
// tier's tests (their names start with "[real interpreter]"), so a run shows whether the tier ran.
// The TAP reporter on stdout stays the record of every test.
export default async function* tierReporter(source) {
  const count = { ok: 0, failed: 0, skipped: 0 };
  for await (const event of source) {
    if (event.type !== "test:pass" && event.type !== "test:fail") continue;
    if (!String(event.data.name).startsWith("[real interpreter]")) continue;
    if (event.data.skip) count.skipped++;
    else if (event.type === "test:pass") count.ok++;
    else count.failed++;
  }
  const ran = count.ok + count.failed;
  yield `\nreal-interpreter tier: ${ran} tests ran on the real Espruino interpreter (${count.ok} ok, ${count.failed} not ok), ${count.skipped} not run\n`;
}
