// The web fleet view's server (gateway/web/fleet-server.ts) at its edges, where Stryker's first run
// over it found no test looking: every security header's exact value, the loopback names and Host
// headers to the character, the token's least length, where a token is read from (an Authorization
// that is not Bearer, a cookie among others, a token with "="), what a redirect sets, and the
// answers' types and words. test/web-view.test.ts has the view's main cases.

import { after, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import net from "node:net";
import { connectAsync } from "mqtt";
import { startBroker } from "../gateway/monitor/embedded-broker.ts";
import { FleetModel } from "../gateway/monitor/fleet-model.ts";
import { topics } from "../gateway/monitor/monitor.ts";
import { BrokerFleetSource, snapshotOf, type FleetSnapshot } from "../gateway/web/fleet-feed.ts";
import {
  checkToken, CONTENT_SECURITY_POLICY, FleetViewAddressInUse, FleetViewConfigError, isLoopback, MIN_TOKEN_LENGTH, serveBrokerFleetView, serveFleetView,
} from "../gateway/web/fleet-server.ts";
import { until } from "./support/harness.ts";
import { closeServers, events, modelSource, request, serve, type Answer } from "./support/web-view.ts";

after(closeServers);

function assertAllSecurityHeaders(a: Answer, what: string): void {
  assert.deepEqual(
    {
      csp: a.headers["content-security-policy"], nosniff: a.headers["x-content-type-options"], frame: a.headers["x-frame-options"],
      referrer: a.headers["referrer-policy"], corp: a.headers["cross-origin-resource-policy"], cache: a.headers["cache-control"],
    },
    { csp: CONTENT_SECURITY_POLICY, nosniff: "nosniff", frame: "DENY", referrer: "no-referrer", corp: "same-origin", cache: "no-store" },
    what,
  );
}

test("the Content-Security-Policy, directive by directive", () => {
  assert.equal(
    CONTENT_SECURITY_POLICY,
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; require-trusted-types-for 'script'",
  );
});

test("every answer carries every security header, and plain text where it is not the page, the snapshot or the stream", async () => {
  const { port } = await serve({ maxClients: 1 });
  const stream = await events(port);
  await stream.next();
  const answers: [string, Answer][] = [
    ["the page", await request(port, "/")],
    ["the snapshot", await request(port, "/fleet.json")],
    ["a 404", await request(port, "/nothing")],
    ["a 405", await request(port, "/", { method: "DELETE" })],
    ["a 403", await request(port, "/", { headers: { host: "fleet.example" } })],
    ["a 503", await request(port, "/events")],
    ["the favicon", await request(port, "/favicon.ico")],
  ];
  for (const [what, a] of answers) assertAllSecurityHeaders(a, what);
  const byName = Object.fromEntries(answers);
  for (const what of ["a 404", "a 405", "a 403", "a 503"]) assert.equal(byName[what].headers["content-type"], "text/plain; charset=utf-8", what);
  assert.equal(byName["a 404"].body, "not found: the fleet view is at /\n");
  assert.equal(byName["a 405"].body, "the fleet view is read-only: GET only\n");
  assert.equal(byName["a 503"].body, "too many viewers (at most 1 at once)\n");
  assert.equal(byName["a 503"].headers["retry-after"], "10");
  assert.equal(byName["the favicon"].status, 204, "browsers ask for it: nothing, not a 404");
  assert.equal(byName["the favicon"].body, "");
  assert.equal(stream.res.headers["content-type"], "text/event-stream; charset=utf-8");
  assert.equal(stream.res.headers.connection, "keep-alive");
  assertAllSecurityHeaders({ status: 200, headers: stream.res.headers, body: "" }, "the event stream");
  stream.close();
});

test("the event stream: the reconnect delay and a snapshot at once; changes close together go as one snapshot", async () => {
  const { port, source } = await serve();
  const stream = await events(port);
  await stream.next();
  assert.equal(stream.raw.length, 1);
  for (let i = 0; i < 5; i++) source.feed(topics.status(`gw${i}.test`), { state: "online", since: new Date().toISOString(), version: "0.1.0", listen: "127.0.0.1:7447", run: "r" });
  const snap = await stream.next();
  assert.equal(snap.gateways.length, 5, "the five changes in one snapshot");
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(stream.raw.length, 2, "and no other");
  stream.close();
});

test("the loopback names, to the character: brackets only in pairs and only around an IPv6 address", () => {
  for (const h of ["127.0.0.1", "127.255.255.254", "localhost", "LOCALHOST", "::1", "[::1]", "::ffff:127.0.0.1", "::FFFF:127.1.2.3", "0:0:0:0:0:0:0:1", "[0:0:0:0:0:0:0:1]"]) assert.equal(isLoopback(h), true, h);
  for (const h of ["", "[127.0.0.1", "127.0.0.1]", "[127.0.0.1]", "[localhost]", "[localhost]x", "::1]", "[::1", "::2", "1::1", "::ffff:128.0.0.1", "::ffff:10.127.0.1", "1:0:0:0:0:0:0:1", "0:0:0:0:0:0:1:1", "0:0:0:0:0:0:0:10", "[::1]]", "[[::1]", "x[::1]", "1::ffff:127.0.0.1"]) assert.equal(isLoopback(h), false, h);
});

test("without a token, the Host header must name loopback exactly: with or without a port, nothing before or after", async () => {
  const { port } = await serve();
  for (const host of ["localhost", `localhost:${port}`, "127.0.0.1", `127.0.0.1:${port}`, "[::1]", `[::1]:${port}`]) assert.equal((await request(port, "/fleet.json", { headers: { host } })).status, 200, host);
  for (const host of [`localhost:${port}x`, "evil.example:127.0.0.1", `x[::1]:${port}`, "localhost.evil.example", "[::1", `localhost:${port}:${port}`]) {
    const a = await request(port, "/fleet.json", { headers: { host } });
    assert.equal(a.status, 403, host);
    assert.equal(a.body, "this fleet view answers only requests to a loopback address (127.0.0.1, [::1], localhost); give it a token to serve other names\n");
  }
});

test("a token of exactly the least length is taken; one character less is not; the message names where it came from", () => {
  assert.equal(MIN_TOKEN_LENGTH, 16);
  assert.equal(checkToken("a".repeat(16), "the test"), "a".repeat(16));
  assert.throws(() => checkToken("a".repeat(15), "KEYPROXY_HTTP_TOKEN"), (e: unknown) => e instanceof FleetViewConfigError && (e as Error).message === "the fleet view's token from KEYPROXY_HTTP_TOKEN is too short: at least 16 characters (make one with: openssl rand -hex 16)");
  assert.throws(() => serveFleetView({ listen: { host: "127.0.0.1", port: 0 }, token: "short" }, modelSource()), (e: unknown) => e instanceof FleetViewConfigError && (e as Error).message.startsWith("the fleet view's token from the options is too short"));
  assert.throws(() => serveFleetView({ listen: { host: "127.0.0.1", port: 0 }, token: "short", flag: "--http-token-file t" }, modelSource()), (e: unknown) => (e as Error).message.startsWith("the fleet view's token from --http-token-file t is too short"));
  assert.throws(() => serveFleetView({ listen: { host: "192.0.2.7", port: 8080 } }, modelSource()), (e: unknown) => (e as Error).message.startsWith("--http 192.0.2.7:8080 is not a loopback address, so the fleet view needs a token"));
  assert.throws(() => serveFleetView({ listen: { host: "192.0.2.7", port: 8080 }, flag: "--console-http" }, modelSource()), (e: unknown) => (e as Error).message.startsWith("--console-http 192.0.2.7:8080 is not a loopback address"));
});

test("where a token is read: a Bearer header only, a cookie among others and with its spaces, a token with '='; a header does not redirect", async () => {
  const withEquals = "abcdefghijklmnop==";
  const { port } = await serve({ host: "0.0.0.0", token: withEquals });
  const cookie = `keyproxy_token=${withEquals}`;
  // An Authorization that is not Bearer is no token: the cookie beside it counts.
  assert.equal((await request(port, "/fleet.json", { headers: { authorization: "Basic dXNlcjpwYXNz", cookie } })).status, 200);
  assert.equal((await request(port, "/fleet.json", { headers: { authorization: `bearer ${withEquals}` } })).status, 401, "Bearer, as written");
  assert.equal((await request(port, "/fleet.json", { headers: { cookie: `theme=dark;   ${cookie}; other=1` } })).status, 200, "among other cookies");
  assert.equal((await request(port, "/fleet.json", { headers: { cookie: `theme=dark; keyproxy_token2=${withEquals}` } })).status, 401, "only its own name");
  assert.equal((await request(port, "/fleet.json", { headers: { cookie: `theme=${withEquals}; keyproxy_token=wrong` } })).status, 401, "its own value, not the first cookie's");
  const unauthorized = await request(port, "/fleet.json");
  assert.equal(unauthorized.body, "a token is needed: open /?token=<token>, or send Authorization: Bearer <token>\n");
  assert.equal(unauthorized.headers["www-authenticate"], 'Bearer realm="keyproxy fleet view"');
  // With a header, the page is the page: only ?token= is moved into a cookie.
  const byHeader = await request(port, "/", { headers: { authorization: `Bearer ${withEquals}` } });
  assert.equal(byHeader.status, 200);
  assert.equal(byHeader.headers["set-cookie"], undefined);
  const opened = await request(port, `/?token=${encodeURIComponent(withEquals)}`);
  assert.equal(opened.status, 303);
  assert.deepEqual(opened.headers["set-cookie"], [`keyproxy_token=${withEquals}; Path=/; HttpOnly; SameSite=Strict`]);
  assert.equal(opened.body, "");
  // ?token= on another path answers it, without a redirect.
  assert.equal((await request(port, `/fleet.json?token=${encodeURIComponent(withEquals)}`)).status, 200);
});

// ---- the snapshot and its source ---------------------------------------------------------------

const GW = "gw.test";
const NOW = Date.parse("2026-12-07T12:00:00.000Z");
const status = (state: unknown, more: Record<string, unknown> = {}) => Buffer.from(JSON.stringify({ state, since: "2026-12-01T00:00:00.000Z", version: "0.1.0", listen: "127.0.0.1:7447", run: "r1", ...more }));
const device = (id: string, more: Record<string, unknown> = {}) => Buffer.from(JSON.stringify({
  device: id, board: "puckjs", online: true, registered: true, registeredUntil: "2026-12-08T00:00:00.000Z", revoked: false, joinCounter: 4, lastJoin: null, joinRejects: 0, framesDropped: 0, firmware: "0.1.0", memoryUsed: 900, memoryTotal: 2630, ...more,
}));

test("the snapshot: every value of its type or null, sorted by id; linked counts only while the gateway is online; memory as used/total", () => {
  const m = new FleetModel(5);
  // Inserted out of order: the snapshot sorts gateways and handsets by id.
  m.apply(topics.deviceState(GW, "t1"), device("t1"));
  m.apply(topics.status(GW), status(7, { since: 5, listen: ["x"], version: { v: 1 }, run: null, reason: 3 }));
  m.apply(topics.status("b.test"), status("online", { reason: "restarted" }));
  m.apply(topics.metrics("b.test"), Buffer.from(JSON.stringify({ joins: 2, name: "n", flag: true, list: [1] })));
  m.apply(topics.deviceState("b.test", "s2"), device("s2", { memoryUsed: 900, memoryTotal: 2630, joinCounter: "4", board: 5, firmware: ["x"] }));
  m.apply(topics.deviceState("b.test", "s1"), device("s1", { online: false, memoryUsed: 0, memoryTotal: 2630 }));
  m.apply(topics.deviceState("b.test", "s3"), device("s3", { memoryUsed: 1200, memoryTotal: null, joinCounter: Infinity, radio: { name: "kp-1", address: "c0ffee", via: "ble", connected: true, rssi: -61, lastSeen: "2026-12-07T11:59:00.000Z" } }));
  m.apply(topics.deviceState("c.test", "u1"), device("u1", { radio: null }));
  const s = snapshotOf(m, "the fleet", { url: "mqtt://h", connected: true }, NOW);
  assert.equal(s.now, "2026-12-07T12:00:00.000Z");
  assert.deepEqual(s.gateways.map((g) => g.id), ["b.test", "c.test", GW]);
  const [b, c, gw] = s.gateways;
  assert.deepEqual([c.state, c.linked], ["?", 0], "a gateway known only from its handsets");
  assert.deepEqual({ ...b }, { id: "b.test", state: "online", since: "2026-12-01T00:00:00.000Z", listen: "127.0.0.1:7447", version: "0.1.0", instance: "r1", reason: "restarted", linked: 2, metrics: { joins: 2, name: "n" }, revocation: null });
  assert.deepEqual({ ...gw }, { id: GW, state: "?", since: null, listen: null, version: null, instance: null, reason: null, linked: 0, metrics: null, revocation: null }, "a gateway whose status is of the wrong types, and not online: no handset counts as linked");
  assert.deepEqual(s.handsets.map((h) => `${h.gateway}/${h.id}`), ["b.test/s1", "b.test/s2", "b.test/s3", "c.test/u1", `${GW}/t1`]);
  const [s1, s2, s3, u1, t1] = s.handsets;
  assert.deepEqual([u1.link, u1.radio], ["unknown", null], "no status from its gateway; a radio of null is no radio");
  assert.deepEqual([s1.link, s1.memory], ["not linked", null], "no memory figure when none was used");
  assert.deepEqual([s2.memory, s2.joinCounter, s2.board, s2.firmware, s2.radio], ["900/2630", null, null, null, null]);
  assert.deepEqual([s3.memory, s3.joinCounter, s3.radio], ["1200", null, "ble -61dBm"]);
  assert.equal(t1.link, "unknown", "a handset of a gateway not known online");
});

test("the snapshot's events: oldest first, their words as the monitor says them, '?' for an event without a name", () => {
  const m = new FleetModel(5);
  m.apply(topics.events(GW), Buffer.from(JSON.stringify({ ts: "2026-12-07T11:00:00.000Z", level: "info", event: "device-joined", device: "s1" })));
  m.apply(topics.events(GW), Buffer.from(JSON.stringify({ ts: 5, level: ["warn"], device: "s2" })));
  const s = snapshotOf(m, "t", { url: "mqtt://h", connected: true }, NOW);
  assert.equal(s.events.length, 2);
  assert.deepEqual({ ...s.events[0], text: "" }, { gateway: GW, ts: "2026-12-07T11:00:00.000Z", level: "info", event: "device-joined", text: "" });
  assert.match(s.events[0].text, /device-joined/);
  assert.deepEqual({ ...s.events[1], text: "" }, { gateway: GW, ts: null, level: null, event: "?", text: "" });
});

test("the broker source: follows the monitoring topics, tells its listeners, never shows the broker's password; a broker away is said", async () => {
  const broker = await startBroker({ host: "127.0.0.1", port: 0 });
  const url = broker.url.replace("mqtt://", "mqtt://watcher:hunter2secret@");
  const source = new BrokerFleetSource(url, "keyproxy/v1/#", "the fleet");
  const publisher = await connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0 });
  try {
    let told = 0;
    const off = source.subscribe(() => told++);
    await until(() => source.snapshot().broker.connected, "the source to connect");
    const snap = source.snapshot();
    assert.equal(snap.title, "the fleet");
    assert.deepEqual(snap.broker, { url: broker.url, connected: true, error: undefined });
    assert.ok(!JSON.stringify(snap).includes("hunter2secret"));
    await publisher.publishAsync(topics.status(GW), status("online"), { qos: 1, retain: true });
    await until(() => source.snapshot().gateways.length === 1, "the status to arrive");
    assert.equal(source.snapshot().gateways[0].state, "online");
    assert.ok(told >= 1, "its listeners were told");
    off();
    const before = told;
    await publisher.publishAsync(topics.deviceState(GW, "s1"), device("s1"), { qos: 1 });
    await until(() => source.snapshot().handsets.length === 1, "the device to arrive");
    assert.equal(told, before, "an unsubscribed listener is not told");
    await publisher.publishAsync(topics.status(GW), "", { qos: 1, retain: true });
    // The broker goes: the source says so.
    await publisher.endAsync();
    await broker.close();
    await until(() => !source.snapshot().broker.connected, "the source to see its broker gone");
  } finally {
    // Each on its own: one that fails (under a mutant) must not leave the others open.
    await publisher.endAsync().catch(() => undefined);
    await Promise.resolve().then(() => source.close()).catch(() => undefined);
    await broker.close().catch(() => undefined);
  }

  const away = new BrokerFleetSource(`mqtt://127.0.0.1:${await freePort()}`, "keyproxy/v1/#", "nobody");
  try {
    assert.equal(away.snapshot().broker.connected, false, "not connected before it connected");
    let told = 0;
    away.subscribe(() => told++);
    await until(() => away.snapshot().broker.error !== undefined, "the source to say the broker is away");
    assert.equal(away.snapshot().broker.connected, false);
    assert.match(String(away.snapshot().broker.error), /ECONNREFUSED/);
    assert.ok(told >= 1);
    // Closed, it stops trying (every 2 s until now) and tells no one any more.
    await away.close();
    const afterClose = told;
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal(told, afterClose);
  } finally {
    await Promise.resolve().then(() => away.close()).catch(() => undefined);
  }
});

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

// ---- the server's life ---------------------------------------------------------------------------

/** A request written by hand, for a target node:http's client would not send. */
function rawRequest(port: number, line: string, withHost = true): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, "127.0.0.1", () => sock.write(`${line}\r\n${withHost ? "Host: localhost\r\n" : ""}Connection: close\r\n\r\n`));
    let got = "";
    sock.setEncoding("utf8");
    sock.on("data", (c: string) => (got += c));
    sock.on("end", () => resolve(got));
    sock.on("error", reject);
  });
}

test("the page and its files are served as they are on disk; a request target that is no URL is a 400", async () => {
  const { port } = await serve();
  const noHost = await rawRequest(port, "GET /fleet.json HTTP/1.0", false);
  assert.match(noHost, /^HTTP\/1\.1 403 /, "a request without a Host header names no loopback host");
  for (const [path, file] of [["/", "index.html"], ["/app.js", "app.js"], ["/style.css", "style.css"]]) {
    assert.equal((await request(port, path)).body, readFileSync(new URL(`../gateway/web/static/${file}`, import.meta.url), "utf8"), path);
  }
  const answer = await rawRequest(port, "GET http://[ HTTP/1.1");
  assert.match(answer, /^HTTP\/1\.1 400 /);
  assert.ok(answer.includes("\r\n\r\n13\r\nbad request target\n\r\n0\r\n"), JSON.stringify(answer));
});

test("a snapshot that fails is a 500 that says nothing of why, and the view stays up; on the event stream, the stream ends", async () => {
  let failing = false;
  const source = modelSource();
  const snapshot = source.snapshot;
  source.snapshot = () => {
    if (failing) throw new Error("payload quoted: secret-looking-text");
    return snapshot();
  };
  const { port } = await serve({}, source);
  failing = true;
  const a = await request(port, "/fleet.json");
  assert.equal(a.status, 500);
  assert.equal(a.body, "the fleet view failed to answer\n");
  const stream = await request(port, "/events");
  assert.equal(stream.status, 200, "the stream had begun");
  assert.equal(stream.body, "", "and ended without a word");
  failing = false;
  assert.equal((await request(port, "/fleet.json")).status, 200);
});

test("closing the view: its viewers' streams end, the source is let go, and nothing answers any more", async () => {
  const source = modelSource();
  let subscribed = 0;
  const subscribe = source.subscribe;
  source.subscribe = (fn) => {
    subscribed++;
    const off = subscribe(fn);
    return () => {
      subscribed--;
      return off();
    };
  };
  const server = await serveFleetView({ listen: { host: "127.0.0.1", port: 0 } }, source);
  const port = server.address.port;
  const stream = await events(port);
  await stream.next();
  const ended = new Promise<void>((r) => stream.res.once("end", r));
  assert.equal(subscribed, 1);
  await server.close();
  await ended;
  assert.equal(subscribed, 0);
  await assert.rejects(request(port, "/"), "nothing answers");
});

test("a port in use is said with the flag (--http unless told); any other failure to listen is passed on as it is", async () => {
  const { port } = await serve();
  await assert.rejects(serveFleetView({ listen: { host: "127.0.0.1", port } }, modelSource()), (e: unknown) =>
    e instanceof FleetViewAddressInUse && (e as Error).message.endsWith("(another gateway or console? use --http <host:port>)"));
  // 192.0.2.1 (TEST-NET-1) is no address of this machine.
  await assert.rejects(serveFleetView({ listen: { host: "192.0.2.1", port: 0 }, token: "a".repeat(16) }, modelSource()), (e: unknown) =>
    !(e instanceof FleetViewAddressInUse) && (e as NodeJS.ErrnoException).code === "EADDRNOTAVAIL");
});

test("the view of a broker: its snapshot from the monitoring topics, its broker's password never shown, and closing it closes both", async () => {
  const broker = await startBroker({ host: "127.0.0.1", port: 0 });
  try {
    const view = await serveBrokerFleetView({ listen: { host: "127.0.0.1", port: 0 }, url: broker.url.replace("mqtt://", "mqtt://u:pw-not-shown@"), topic: "keyproxy/v1/#", title: "console" });
    const port = view.address.port;
    await until(async () => (JSON.parse((await request(port, "/fleet.json")).body) as FleetSnapshot).broker.connected, "the view to reach its broker");
    const snap = JSON.parse((await request(port, "/fleet.json")).body) as FleetSnapshot;
    assert.deepEqual([snap.title, snap.broker.url], ["console", broker.url]);
    const stream = await events(port);
    await stream.next();
    assert.equal(view.clients, 1);
    stream.close();
    await view.close();
    await assert.rejects(request(port, "/"), "nothing answers");
  } finally {
    await broker.close();
  }
  await assert.rejects(serveBrokerFleetView({ listen: { host: "192.0.2.1", port: 0 }, url: "mqtt://127.0.0.1:1", topic: "#", title: "t" }), FleetViewConfigError, "off loopback without a token: refused before anything connects");
});
