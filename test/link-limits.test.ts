// What anyone who can reach the link port is held to (gateway/link/limits.ts), unit by unit: the join
// throttle's backoff (per device id and source, doubling to its ceiling, forgotten after a quiet
// while, bounded in memory), the per-source key an IPv6 /64 shares whatever way it is written, the
// limits' own checks, and the connection limit held under the process's descriptors.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fc from "fast-check";
import { DEFAULT_LINK_LIMITS, descriptorLimit, fitToDescriptors, isLoopback, JoinThrottle, linkLimits, RESERVED_DESCRIPTORS, sourceKey, type LinkLimits } from "../gateway/link/limits.ts";

function throttle(l: Partial<LinkLimits>) {
  const clock = { ms: 1_000_000 };
  return { t: new JoinThrottle(linkLimits(l), () => clock.ms), clock };
}

test("a source failing joins as one device waits after a few, the wait doubling up to the ceiling; its wait runs down with the clock", () => {
  const { t, clock } = throttle({ joinFailuresBeforeBackoff: 3, joinBackoffBaseMs: 1000, joinBackoffMaxMs: 8000 });
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7].map(() => t.failed("dev-1", "10.0.0.9")), [0, 0, 1000, 2000, 4000, 8000, 8000]);
  assert.equal(t.waitFor("dev-1", "10.0.0.9"), 8000);
  clock.ms += 4999;
  assert.equal(t.waitFor("dev-1", "10.0.0.9"), 3001);
  clock.ms += 3001;
  assert.equal(t.waitFor("dev-1", "10.0.0.9"), 0);
  clock.ms += 1;
  assert.equal(t.waitFor("dev-1", "10.0.0.9"), 0, "never negative");
  // Per (id, source): the device from its own address, and another id from this source, are not held.
  assert.equal(t.waitFor("dev-1", "10.0.0.1"), 0);
  assert.equal(t.waitFor("dev-2", "10.0.0.9"), 0);
  assert.equal(t.failed("dev-1", "10.0.0.1"), 0);
});

test("the doubling stops at 2^30 times the base, so a very long attack never makes a wait that is not a number", () => {
  const { t } = throttle({ joinFailuresBeforeBackoff: 1, joinBackoffBaseMs: 1, joinBackoffMaxMs: 2 ** 50 });
  let wait = 0;
  for (let i = 0; i < 1200; i++) wait = t.failed("dev-1", "10.0.0.9");
  assert.equal(wait, 2 ** 30);
});

test("a success forgets the source's failures for that id; a pair quiet for 10 minutes after its wait is forgotten too", () => {
  const { t, clock } = throttle({ joinFailuresBeforeBackoff: 2, joinBackoffBaseMs: 1000, joinBackoffMaxMs: 60_000 });
  t.failed("dev-1", "s");
  t.failed("dev-1", "s");
  t.succeeded("dev-1", "s");
  assert.equal(t.waitFor("dev-1", "s"), 0);
  assert.equal(t.failed("dev-1", "s"), 0, "counting starts again");
  assert.equal(t.failed("dev-1", "s"), 1000);
  // 10 minutes after the wait ended, less a millisecond: still remembered (the next failure doubles).
  clock.ms += 1000 + 10 * 60_000 - 1;
  assert.equal(t.failed("dev-1", "s"), 2000);
  // Exactly 10 minutes after that wait ended: forgotten, the count starts again.
  clock.ms += 2000 + 10 * 60_000;
  assert.equal(t.failed("dev-1", "s"), 0);
});

test("at most 10,000 pairs are remembered: a new one pushes out the one used least recently", () => {
  const { t } = throttle({ joinFailuresBeforeBackoff: 1, joinBackoffBaseMs: 1000, joinBackoffMaxMs: 60_000 });
  t.failed("dev-a", "s");
  t.failed("dev-b", "s");
  for (let i = 0; i < 9_998; i++) t.failed(`made-up-${i}`, "s");
  t.failed("dev-a", "s"); // used again: the newest now, dev-b the oldest
  assert.ok(t.waitFor("dev-b", "s") > 0, "10,000 remembered, none pushed out yet");
  t.failed("made-up-last", "s");
  assert.equal(t.waitFor("dev-b", "s"), 0, "the least recently used is forgotten");
  assert.equal(t.waitFor("dev-a", "s"), 2000);
  assert.equal(t.waitFor("made-up-0", "s"), 1000);
});

// Zero groups often, so that the shortest form compresses runs of them ("::") anywhere, also first.
const group = fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffff }));

test("an IPv6 source is its /64 however the address is written: zeros compressed or not, capitals, leading zeros, a zone", () => {
  fc.assert(
    fc.property(fc.array(group, { minLength: 8, maxLength: 8 }), fc.boolean(), (groups, capitals) => {
      const full = groups.map((g) => g.toString(16).padStart(4, "0")).join(":");
      const compressed = new URL(`http://[${full}]/`).hostname.slice(1, -1); // the shortest form (RFC 5952)
      const expected = `${groups.slice(0, 4).map((g) => g.toString(16)).join(":")}::/64`;
      if (!compressed.includes(".")) assert.equal(sourceKey(compressed), expected, compressed);
      assert.equal(sourceKey(capitals ? full.toUpperCase() : full), expected);
      assert.equal(sourceKey(`${full}%eth0`), expected);
    }),
  );
  assert.equal(sourceKey("::"), "0:0:0:0::/64");
  assert.equal(sourceKey("2001:db8::"), "2001:db8:0:0::/64");
  assert.equal(sourceKey("fe80::1%eth0"), "fe80:0:0:0::/64");
  assert.equal(sourceKey("::1:2:3:4:5"), "0:0:0:1::/64", "a long tail after the zeros");
  // An IPv4 address in the last 32 bits is two groups, however the rest is written.
  fc.assert(
    fc.property(fc.array(group, { minLength: 6, maxLength: 6 }), fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 4, maxLength: 4 }), fc.nat(5), (groups, octets, cut) => {
      const hex = groups.map((g) => g.toString(16));
      const dotted = octets.join(".");
      const expected = `${hex.slice(0, 4).join(":")}::/64`;
      assert.equal(sourceKey(`${hex.join(":")}:${dotted}`), expected);
      if (groups[cut] === 0) assert.equal(sourceKey(`${hex.slice(0, cut).join(":")}::${[...hex.slice(cut + 1), dotted].join(":")}`), expected);
      assert.equal(sourceKey(new URL(`http://[${hex.join(":")}:${dotted}]/`).hostname.slice(1, -1)), expected);
    }),
  );
  assert.equal(sourceKey("::1:2:3:4:10.0.0.1"), "0:0:1:2::/64");
  assert.equal(sourceKey("::FFFF:192.0.2.7"), "192.0.2.7", "an IPv4-mapped address in capitals is still IPv4");
  assert.equal(sourceKey("::ffff:192.168.100.200"), "192.168.100.200");
  assert.equal(sourceKey("1::ffff:192.0.2.7"), "1:0:0:0::/64", "an IPv4 address embedded elsewhere is not IPv4-mapped");
  assert.equal(sourceKey(""), "unknown");
});

test("loopback: 127.0.0.0/8 (also IPv4-mapped) and ::1, nothing else", () => {
  for (const a of ["127.0.0.1", "127.255.0.9", "::ffff:127.0.0.1", "::FFFF:127.1.2.3", "::1"]) assert.equal(isLoopback(a), true, a);
  for (const a of [undefined, "", "128.0.0.1", "10.127.0.1", "::ffff:10.0.0.1", "::2", "1::1", "x127.0.0.1"]) assert.equal(isLoopback(a), false, String(a));
});

test("the limits: defaults for what is not given; every count and time a positive whole number; the backoff's base not above its ceiling", () => {
  assert.deepEqual(linkLimits(undefined), DEFAULT_LINK_LIMITS);
  assert.deepEqual(linkLimits({ maxBadFrames: 3, exemptLoopback: false }), { ...DEFAULT_LINK_LIMITS, maxBadFrames: 3, exemptLoopback: false });
  for (const k of Object.keys(DEFAULT_LINK_LIMITS) as (keyof LinkLimits)[]) {
    if (k === "exemptLoopback") continue;
    for (const v of [0, -1, 1.5, Number.NaN]) assert.throws(() => linkLimits({ [k]: v }), { message: `link limit ${k} must be a positive whole number, got ${v}` });
  }
  assert.equal(linkLimits({ joinBackoffBaseMs: 5000, joinBackoffMaxMs: 5000 }).joinBackoffBaseMs, 5000);
  assert.throws(() => linkLimits({ joinBackoffBaseMs: 5001, joinBackoffMaxMs: 5000 }), { message: "link limit joinBackoffBaseMs is above joinBackoffMaxMs" });
});

test("connections are held under what the descriptor limit leaves, never below one; this process's limit is read as the shell sees it", () => {
  const l = linkLimits({ maxConnections: 1000 });
  assert.equal(fitToDescriptors(l, undefined), l);
  assert.equal(fitToDescriptors(l, 1000 + RESERVED_DESCRIPTORS), l, "exactly enough room: unchanged");
  assert.deepEqual(fitToDescriptors(l, 999 + RESERVED_DESCRIPTORS), { ...l, maxConnections: 999 });
  assert.equal(fitToDescriptors(l, 10).maxConnections, 1);
  assert.equal(l.maxConnections, 1000, "the limits given are not changed");
  const shell = spawnSync("sh", ["-c", "ulimit -n"], { encoding: "utf8" }).stdout.trim();
  assert.equal(String(descriptorLimit()), shell === "unlimited" ? "undefined" : shell);
});
