// The fuzzer (fuzz/, `npm run fuzz`) in small: every target runs ~2,000 inputs here so the harness
// cannot rot, and planted faults prove each oracle can fail: a parser throwing an undocumented
// error is a crash, a rejected input that changes state is a state change, a slow input is a hang,
// and the same seed gives the same run. The 10^6-per-target run is `npm run fuzz`, not part of
// `npm test` (docs/FUZZING.md).

import { test } from "node:test";
import assert from "node:assert/strict";
import { runTarget, type TargetResult } from "../fuzz/runner.ts";
import { TARGETS } from "../fuzz/targets/index.ts";
import type { Target } from "../fuzz/target.ts";

const SEED = 12345;
/** The smoke runs are not timed: a loaded machine must not turn a slow input into a finding here. */
const NO_HANG_LIMIT = { hangMs: 600_000, watchdogMs: 0 };

function summary(r: TargetResult): string {
  return `${r.target}: ${r.crashes} crashes, ${r.hangs} hangs, ${r.stateChanges} state changes\n${r.findings.map((f) => `${f.kind} ${f.input}\n${f.detail}`).join("\n")}`;
}

for (const target of TARGETS) {
  test(`fuzz target ${target.name}: 2,000 inputs, both outcomes, no findings`, async () => {
    const r = await runTarget(target, { count: 2000, seed: SEED, ...NO_HANG_LIMIT });
    assert.equal(r.inputs, 2000);
    assert.equal(r.rejected + r.accepted, 2000);
    assert.ok(r.rejected > 0 && r.accepted > 0, `${target.name} should see both refused and accepted inputs (rejected ${r.rejected}, accepted ${r.accepted})`);
    assert.equal(r.findings.length, 0, summary(r));
  });
}

for (const target of TARGETS.filter((t) => ["exchange", "interlink", "channel", "link-tcp"].includes(t.name))) {
  test(`fuzz target ${target.name}: its snapshot sees the owner's state (a planted change after a rejected input is found)`, async () => {
    const disturbed: Target = {
      ...target,
      async setup(rng) {
        const inner = await target.setup(rng);
        assert.ok(inner.disturb, `${target.name} has no disturb()`);
        let planted = false;
        return {
          ...inner,
          async run(input) {
            // A rejection is a returned "rejected" or a thrown documented error: plant after the first.
            const plant = async (): Promise<void> => {
              if (planted) return;
              planted = true;
              await inner.disturb!();
            };
            try {
              const outcome = await inner.run(input);
              if (outcome === "rejected") await plant();
              return outcome;
            } catch (e) {
              if (inner.isRejection(e)) await plant();
              throw e;
            }
          },
        };
      },
    };
    const r = await runTarget(disturbed, { count: 200, seed: SEED, ...NO_HANG_LIMIT });
    assert.equal(r.stateChanges, 1, summary(r));
  });
}

/** A planted parser: refuses with its documented error, except where it is told to misbehave. */
function planted(name: string, misbehave: (input: Uint8Array, state: { n: number }) => void): Target {
  class Documented extends Error {}
  return {
    name,
    about: "a planted fault",
    async setup() {
      const state = { n: 0 };
      return {
        seeds: () => [Uint8Array.of(0x82, 0x01, 0x02), Uint8Array.of(0x43, 0xaa, 0xbb, 0xcc)],
        run(input) {
          misbehave(input, state);
          if (input.length % 2 === 0) throw new Documented("refused");
          return "accepted";
        },
        isRejection: (e) => e instanceof Documented,
        snapshot: () => String(state.n),
      };
    },
  };
}

test("a planted crash (an undocumented TypeError) is found, with its input in hex and the seed", async () => {
  const r = await runTarget(
    planted("crashes", (input) => {
      if (input.length === 3) (undefined as unknown as { x: number }).x;
    }),
    { count: 300, seed: SEED, ...NO_HANG_LIMIT },
  );
  assert.ok(r.crashes > 0);
  const f = r.findings.find((x) => x.kind === "crash")!;
  assert.equal(f.seed, SEED);
  assert.equal(f.input.length, 6, "three bytes in hex");
  assert.match(f.detail, /TypeError/);
  assert.equal(r.stateChanges, 0);
});

test("the documented error is a rejection, not a crash", async () => {
  const r = await runTarget(planted("clean", () => undefined), { count: 300, seed: SEED, ...NO_HANG_LIMIT });
  assert.equal(r.crashes + r.hangs + r.stateChanges, 0);
  assert.ok(r.rejected > 0 && r.accepted > 0);
});

test("a planted state change on a rejected input is found; on an accepted one it is allowed", async () => {
  const onRejected = await runTarget(
    planted("leaks", (input, state) => {
      if (input.length === 4) state.n++; // even length: about to be refused
    }),
    { count: 300, seed: SEED, ...NO_HANG_LIMIT },
  );
  assert.ok(onRejected.stateChanges > 0);
  assert.match(onRejected.findings.find((f) => f.kind === "state change")!.detail, /before: \d+\nafter: {2}\d+/);

  const onAccepted = await runTarget(
    planted("learns", (input, state) => {
      if (input.length === 3) state.n++; // odd length: accepted
    }),
    { count: 300, seed: SEED, ...NO_HANG_LIMIT },
  );
  assert.equal(onAccepted.stateChanges, 0);
});

test("a planted slow input is a hang", async () => {
  const r = await runTarget(
    planted("slow", (input) => {
      if (input.length !== 5) return;
      // 20 ms of CPU time at least, against a 1 ms limit (CPU time: what the hang oracle measures).
      const start = process.cpuUsage();
      for (;;) {
        const used = process.cpuUsage(start);
        if (used.user + used.system >= 20_000) break;
      }
    }),
    { count: 300, seed: SEED, hangMs: 1, watchdogMs: 0 },
  );
  assert.ok(r.hangs > 0);
  assert.match(r.findings.find((f) => f.kind === "hang")!.detail, /ms of CPU time \(limit 1 ms\)/);
});

test("the same seed gives the same run", async () => {
  const frame = TARGETS.find((t) => t.name === "messages")!;
  const a = await runTarget(frame, { count: 1000, seed: 7, ...NO_HANG_LIMIT });
  const b = await runTarget(frame, { count: 1000, seed: 7, ...NO_HANG_LIMIT });
  const c = await runTarget(frame, { count: 1000, seed: 8, ...NO_HANG_LIMIT });
  assert.deepEqual([a.rejected, a.accepted], [b.rejected, b.accepted]);
  assert.notDeepEqual([a.rejected, a.accepted], [c.rejected, c.accepted]);
});
