// Reading interlink bodies in tests of their decoders (test/crossgw-messages.test.ts,
// test/group-messages.test.ts): the refusal a reader gives, and a body with one field changed.
import assert from "node:assert/strict";
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
