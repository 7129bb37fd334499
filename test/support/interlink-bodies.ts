// Reading interlink bodies in tests of their decoders (test/crossgw-messages.test.ts,
// test/group-messages.test.ts): the refusal a reader gives, and a body with one field changed.
import assert from "node:assert/strict";
import fc from "fast-check";
import { InterlinkError } from "../../gateway/fleet/interlink.ts";

/** The refusal `read` gives, as [code, message]; fails the test when it gives none. */
export function refusal(read: () => unknown): [string, string] {
  try {
    read();
  } catch (e) {
    assert.ok(e instanceof InterlinkError, `an InterlinkError, not ${String(e)}`);
    return [e.code, e.message];
  }
  assert.fail("accepted");
}

/** body with key set to value (added when it was not there). */
export const withField = (body: Map<string, unknown>, key: string, value: unknown): Map<string, unknown> => new Map([...body, [key, value]]);
/** body without key. */
export const without = (body: Map<string, unknown>, key: string): Map<string, unknown> => new Map([...body].filter(([k]) => k !== key));

/** Property: every reader refuses a body it does not read with InterlinkError "malformed", and throws
 *  nothing else, for any value or any map of the given keys (and one more) to any values. */
export function assertReadersRefuseCleanly(readers: ((body: unknown) => unknown)[], keys: string[]): void {
  const value = fc.letrec((tie) => ({
    v: fc.oneof({ depthSize: "small" }, fc.boolean(), fc.integer(), fc.double(), fc.string({ maxLength: 12 }), fc.uint8Array({ maxLength: 40 }), fc.constant(undefined), fc.constant(null), fc.array(tie("v"), { maxLength: 3 })),
  })).v;
  const key = fc.constantFrom(...keys, "x");
  const body = fc.oneof(value, fc.array(fc.tuple(key, value), { maxLength: 6 }).map((e) => new Map(e)));
  fc.assert(
    fc.property(body, (b) => {
      for (const read of readers) {
        try {
          read(b);
        } catch (e) {
          if (!(e instanceof InterlinkError && e.code === "malformed")) throw e;
        }
      }
    }),
    { numRuns: 2000 },
  );
}
