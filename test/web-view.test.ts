// The web fleet view's server (gateway/web/fleet-server.ts) over node:http, and its model of the
// sessions (gateway/monitor/fleet-model.ts): read-only (405), a token off loopback (refused without
// one, 401 with a wrong one, 200 with the right one, in constant time), the security headers on every
// answer, hostile ids sent as JSON and set as text by the page, bounded events, sessions and viewers.
// The page in a real browser: test/web-browser.test.ts.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { after, test } from "node:test";
import { FleetModel, MAX_SESSIONS } from "../gateway/monitor/fleet-model.ts";
import { topics } from "../gateway/monitor/monitor.ts";
import { snapshotOf, type FleetSnapshot } from "../gateway/web/fleet-feed.ts";
import { CONTENT_SECURITY_POLICY, FleetViewAddressInUse, FleetViewConfigError, checkToken, isLoopback, serveFleetView, tokenMatches } from "../gateway/web/fleet-server.ts";
import { connect } from "mqtt";
import { startBroker } from "../gateway/monitor/embedded-broker.ts";
import { tempDir } from "./support/harness.ts";
import { CLI } from "./support/process.ts";
import { runCli } from "./support/run-cli.ts";
import { assertSecurityHeaders, closeServers, events, modelSource, request, serve } from "./support/web-view.ts";

after(closeServers);

const TOKEN = "0123456789abcdef0123456789abcdef";
const GW = "gw.test";

test("the Content-Security-Policy allows this origin only, no inline script and no HTML from strings", () => {
  const csp = CONTENT_SECURITY_POLICY;
  assert.match(csp, /default-src 'self'/);
  assert.match(csp, /script-src 'self'(;|$)/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|\*|http:|https:|data:/);
  assert.match(csp, /require-trusted-types-for 'script'/);
  assert.match(csp, /frame-ancestors 'none'/);
});

test("read-only: every method but GET is 405 and changes nothing; the page, its files and the snapshot answer GET", async () => {
  const { port, source } = await serve();
  source.feed(topics.status(GW), { state: "online", since: new Date().toISOString(), version: "0.1.0", listen: "127.0.0.1:7447", run: "abcd1234" });
  const before = (await request(port, "/fleet.json")).body;
  for (const method of ["POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]) {
    for (const path of ["/", "/events", "/fleet.json"]) {
      const a = await request(port, path, { method });
      assert.equal(a.status, 405, `${method} ${path}`);
      assert.equal(a.headers.allow, "GET");
      assertSecurityHeaders(a, `${method} ${path}`);
    }
  }
  const snap = JSON.parse((await request(port, "/fleet.json")).body) as FleetSnapshot;
  assert.deepEqual({ ...snap, now: "" }, { ...(JSON.parse(before) as FleetSnapshot), now: "" }, "nothing changed");
  for (const [path, type] of [["/", /^text\/html/], ["/app.js", /^text\/javascript/], ["/style.css", /^text\/css/], ["/fleet.json", /^application\/json/]] as const) {
    const a = await request(port, path);
    assert.equal(a.status, 200, path);
    assert.match(String(a.headers["content-type"]), type, path);
    assertSecurityHeaders(a, path);
  }
  const missing = await request(port, "/../../etc/passwd");
  assert.equal(missing.status, 404);
  assertSecurityHeaders(missing, "a 404");
});

test("on loopback without a token: only requests that name a loopback host are answered (no DNS rebinding)", async () => {
  const { port } = await serve();
  assert.equal((await request(port, "/", { headers: { host: `localhost:${port}` } })).status, 200);
  assert.equal((await request(port, "/", { headers: { host: `[::1]:${port}` } })).status, 200);
  const rebound = await request(port, "/fleet.json", { headers: { host: "attacker.example" } });
  assert.equal(rebound.status, 403);
  assert.match(rebound.body, /loopback/);
  assertSecurityHeaders(rebound, "a 403");
});

test("off loopback a token is required: refused to start without one, with the fix named", async () => {
  assert.throws(() => serveFleetView({ listen: { host: "0.0.0.0", port: 0 } }, modelSource()), (e: unknown) => e instanceof FleetViewConfigError && /--http-token-file/.test((e as Error).message) && /KEYPROXY_HTTP_TOKEN/.test((e as Error).message));
  assert.throws(() => serveFleetView({ listen: { host: "192.0.2.7", port: 0 } }, modelSource()), FleetViewConfigError);
  assert.ok(isLoopback("127.0.0.1") && isLoopback("127.8.9.10") && isLoopback("::1") && isLoopback("[::1]") && isLoopback("localhost") && isLoopback("::ffff:127.0.0.1"));
  assert.ok(!isLoopback("0.0.0.0") && !isLoopback("::") && !isLoopback("10.0.0.1") && !isLoopback("localhost.example.com") && !isLoopback("128.0.0.1"));
  assert.throws(() => checkToken("short", "the test"), /too short: at least 16/);
  assert.throws(() => checkToken("0123456789abcdef\n0123456789", "the test"), /characters other than/);
  assert.equal(checkToken(`${TOKEN}\n`, "a file"), TOKEN, "a file's trailing newline is not part of the token");
});

test("keyproxy console and keyproxy gateway refuse --http off loopback without a token, a weak or unreadable token file, and --http with --no-mqtt (exit 2)", async () => {
  const dir = tempDir("kp-web-cli-");
  for (const args of [["console", "--http", "0.0.0.0:0"], ["gateway", "--data-dir", join(dir, "d"), "--listen", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0", "--http", "0.0.0.0:0"]]) {
    const r = await runCli(args);
    assert.equal(r.code, 2, `${args[0]}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, /not a loopback address, so the fleet view needs a token: .*--http-token-file <path>.*KEYPROXY_HTTP_TOKEN/);
  }
  const weak = join(dir, "weak");
  writeFileSync(weak, "secret\n");
  const r = await runCli(["console", "--http", "0.0.0.0:0", "--http-token-file", weak]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /too short/);
  assert.doesNotMatch(r.stderr, /secret/, "the token is never quoted");
  const none = await runCli(["console", "--http", "0.0.0.0:0", "--http-token-file", join(dir, "absent")]);
  assert.equal(none.code, 2);
  assert.match(none.stderr, /cannot read the token file/);
  const noMqtt = await runCli(["gateway", "--data-dir", join(dir, "d2"), "--no-mqtt", "--http", "127.0.0.1:0"]);
  assert.equal(noMqtt.code, 2);
  assert.match(noMqtt.stderr, /--http shows what the gateway publishes over MQTT, which --no-mqtt turns off/);
});

test("keyproxy console serves a fleet from MQTT, off loopback with KEYPROXY_HTTP_TOKEN: 401 without it, 200 and the fleet with it", async (t) => {
  const broker = await startBroker({ host: "127.0.0.1", port: 0 });
  t.after(() => broker.close());
  const pub = connect(broker.url, { protocolVersion: 4 });
  t.after(() => pub.end(true));
  await new Promise<void>((r) => pub.once("connect", () => r()));
  await pub.publishAsync(topics.status("north.example"), JSON.stringify({ state: "online", since: new Date().toISOString(), version: "0.1.0", listen: "10.0.0.1:7447", run: "0badc0de" }), { qos: 1, retain: true });
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("KEYPROXY_")));
  const child = spawn(process.execPath, [CLI, "console", "--mqtt", broker.url, "--http", "0.0.0.0:0"], { stdio: ["ignore", "pipe", "pipe"], env: { ...env, KEYPROXY_HTTP_TOKEN: TOKEN }, cwd: tempDir("kp-console-") });
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  t.after(() => child.kill("SIGKILL"));
  let out = "";
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout.on("data", (b: Buffer) => {
      out += b.toString();
      const m = /the fleet view is on http:\/\/[^:]+:(\d+)\//.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once("exit", (code) => reject(new Error(`keyproxy console exited with ${code}: ${out}`)));
  });
  assert.doesNotMatch(out, new RegExp(TOKEN), "the token is never printed");
  assert.equal((await request(port, "/fleet.json")).status, 401);
  // The retained status arrives once the console has subscribed: wait for it in the snapshots.
  const stream = await events(port, { authorization: `Bearer ${TOKEN}` });
  let snap = await stream.next();
  while (!snap.gateways.length) snap = await stream.next();
  stream.close();
  assert.equal(snap.gateways[0].id, "north.example");
  assert.equal(snap.gateways[0].instance, "0badc0de");
  assert.equal(snap.title, `fleet on ${broker.url}`);
  child.kill("SIGTERM");
  assert.equal(await exited, 0, "Ctrl-C / SIGTERM stops it cleanly");
});

test("with a token: none or a wrong one is 401 on every path; the right one 200, by header, by ?token= once (then a cookie) and by cookie", async () => {
  const { port } = await serve({ host: "0.0.0.0", token: TOKEN });
  const wrong = { authorization: `Bearer ${TOKEN.slice(0, -1)}x` };
  for (const path of ["/", "/app.js", "/events", "/fleet.json", "/nothing"]) {
    const a = await request(port, path);
    assert.equal(a.status, 401, `no token: ${path}`);
    assert.match(String(a.headers["www-authenticate"]), /^Bearer /);
    assertSecurityHeaders(a, "a 401");
    assert.equal((await request(port, path, { headers: wrong })).status, 401, `wrong token: ${path}`);
    assert.equal((await request(port, path, { headers: { cookie: `keyproxy_token=${TOKEN}x` } })).status, 401, `wrong cookie: ${path}`);
    assert.equal((await request(port, `${path}?token=${TOKEN.slice(1)}`)).status, 401, `wrong ?token=: ${path}`);
  }
  assert.equal((await request(port, "/fleet.json", { headers: { authorization: `Bearer ${TOKEN}` } })).status, 200);
  // A request to a name other than loopback is fine with a token: that is what the token is for.
  assert.equal((await request(port, "/fleet.json", { headers: { authorization: `Bearer ${TOKEN}`, host: "fleet.example" } })).status, 200);
  const opened = await request(port, `/?token=${TOKEN}`);
  assert.equal(opened.status, 303, "the token is taken out of the address bar");
  assert.equal(opened.headers.location, "/");
  const cookie = String(opened.headers["set-cookie"]);
  assert.match(cookie, /HttpOnly/);
  assert.match(cookie, /SameSite=Strict/);
  const page = await request(port, "/", { headers: { cookie: cookie.split(";")[0] } });
  assert.equal(page.status, 200);
  assertSecurityHeaders(page, "the page");
  assert.ok(tokenMatches(TOKEN, TOKEN) && !tokenMatches(undefined, TOKEN) && !tokenMatches("", TOKEN) && !tokenMatches(TOKEN + TOKEN, TOKEN));
});

test("a hostile device id reaches the page as JSON on the event stream, exactly, with nothing a terminal or a line break would act on", async () => {
  const { port, source } = await serve();
  const hostile = `<img src=x onerror="alert(1)">\u202e\x1b[2J\n\r\ndata: {"forged":1}\u2028`;
  source.feed(topics.status(GW), { state: "online", since: new Date().toISOString(), version: "0.1.0", listen: "127.0.0.1:7447", run: "abcd1234" });
  const stream = await events(port);
  const first = await stream.next();
  assert.equal(first.gateways[0].id, GW);
  source.feed(topics.deviceState(GW, hostile), { device: hostile, board: `<b>${hostile}`, online: true, registered: true, registeredUntil: null, revoked: false, joinCounter: 1, lastJoin: null, joinRejects: 0, framesDropped: 0, firmware: hostile, memoryUsed: 5, memoryTotal: 10 });
  source.feed(topics.events(GW), { ts: new Date().toISOString(), level: "info", event: "session-up", device: hostile, peer: "sim-2", app: hostile, spi: "0x00000001" });
  let snap = await stream.next();
  while (!snap.sessions.length) snap = await stream.next();
  stream.close();
  assert.equal(snap.handsets[0].id, hostile, "the id as it came: the page sets it as text");
  assert.equal(snap.handsets[0].firmware, hostile);
  assert.equal(snap.sessions[0].from, `${hostile}@${GW}`);
  // The event stream's data lines: JSON each, no raw line break (which would start a forged field),
  // no ESC, bidi override or line separator.
  for (const data of stream.raw) {
    assert.doesNotThrow(() => JSON.parse(data));
    assert.doesNotMatch(data, /[\n\r\u2028\u202e\x1b]/);
  }
  assert.match(stream.raw.at(-1)!, /\\u202e/);
});

test("the page sets every value as text: no markup sinks, no inline script or handlers, no other origin", () => {
  const dir = new URL("../gateway/web/static/", import.meta.url);
  const js = readFileSync(new URL("app.js", dir), "utf8");
  const html = readFileSync(new URL("index.html", dir), "utf8");
  const code = js.replace(/\/\/.*$/gm, "").replace(/\/\*[\s\S]*?\*\//g, "");
  for (const sink of ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "setTimeout(\"", "srcdoc", "DOMParser", "createContextualFragment"]) {
    assert.ok(!code.includes(sink), `app.js uses ${sink}`);
  }
  assert.match(code, /textContent/);
  assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)/, "no inline script");
  assert.doesNotMatch(html, /\son[a-z]+=/i, "no inline event handlers");
  assert.doesNotMatch(html + js, /https?:\/\/(?!www\.w3\.org\/2000\/svg)/, "nothing from another origin (the SVG namespace is a name, not a fetch)");
  assert.doesNotMatch(html, /style=/, "no inline styles (the CSP refuses them)");
});

test("an address in use is refused in one sentence that names the flag", async () => {
  const { port } = await serve();
  await assert.rejects(serveFleetView({ listen: { host: "127.0.0.1", port }, flag: "--http" }, modelSource()), (e: unknown) =>
    e instanceof FleetViewAddressInUse && (e as Error).message === `cannot serve the fleet view on 127.0.0.1:${port}: the address is in use (another gateway or console? use --http <host:port>)`);
});

test("viewers are capped: one more is 503, and a place frees when one leaves", async () => {
  const { port, server } = await serve({ maxClients: 2 });
  const a = await events(port);
  const b = await events(port);
  await a.next();
  await b.next();
  const third = await request(port, "/events");
  assert.equal(third.status, 503);
  assert.match(third.body, /too many viewers/);
  a.close();
  // Wait for the server to see the viewer leave.
  await new Promise<void>((resolve) => {
    const check = () => (server.clients < 2 ? resolve() : setImmediate(check));
    check();
  });
  const c = await events(port);
  assert.equal(c.res.statusCode, 200);
  b.close();
  c.close();
});

test("sessions: up adds an edge, a rekey replaces it (counted), down removes it; across gateways one edge for both reports; an offline gateway's sessions go", () => {
  const m = new FleetModel(5);
  const ev = (gw: string, body: Record<string, unknown>) => m.apply(topics.events(gw), Buffer.from(JSON.stringify({ ts: "2026-12-01T00:00:00.000Z", level: "info", ...body })));
  ev("a", { event: "session-requested", device: "s1", peer: "s2", app: "x" });
  assert.equal(m.sessions.size, 0, "a request is not a session");
  ev("a", { event: "session-up", device: "s1", peer: "s2", app: "x", spi: "0x00000001" });
  assert.deepEqual([...m.sessions.values()].map((s) => [s.from, s.to, s.spi, s.scope, s.rekeys]), [["s1@a", "s2@a", "0x00000001", "local", 0]]);
  ev("a", { event: "session-rekeyed", device: "s1", peer: "s2", app: "x", spi: "0x00000002", replaces: "0x00000001" });
  assert.deepEqual([...m.sessions.values()].map((s) => [s.spi, s.rekeys]), [["0x00000002", 1]]);
  ev("a", { event: "session-down", device: "s1", peer: "s2", app: "x", spi: "0x00000001", reason: "replaced" });
  assert.equal(m.sessions.size, 1, "the replaced SA's end does not end the session");
  ev("a", { event: "session-down", device: "s1", peer: "s2", app: "x", spi: "0x00000002", reason: "bye from s1" });
  assert.equal(m.sessions.size, 0);
  // Across gateways: each gateway reports its own device's side.
  ev("a", { event: "xsession-up", device: "s1", peer: "t1@b", app: "x", spi: "0x00000003", gateway: "b" });
  ev("b", { event: "xsession-up", device: "t1", peer: "s1@a", app: "x", spi: "0x00000003", gateway: "a" });
  assert.equal(m.sessions.size, 1, "one session, reported twice");
  assert.deepEqual([...m.sessions.values()][0].gateways, ["a", "b"]);
  m.apply(topics.status("a"), Buffer.from(JSON.stringify({ state: "offline", version: "0", listen: "x", run: "r", reason: "connection lost" })));
  assert.equal(m.sessions.size, 1, "still reported by b");
  m.apply(topics.status("b"), Buffer.from(JSON.stringify({ state: "offline", version: "0", listen: "x", run: "r", reason: "stopped" })));
  assert.equal(m.sessions.size, 0);
  // Junk is ignored.
  ev("a", { event: "session-up", device: 5, peer: "s2", spi: "0x1" });
  ev("a", { event: "session-up", device: "s1", peer: "s2" });
  assert.equal(m.sessions.size, 0);
});

test("bounded: the events kept and the sessions kept stop growing whatever the broker carries", () => {
  const m = new FleetModel(50);
  for (let i = 0; i < 200; i++) m.apply(topics.events("a"), Buffer.from(JSON.stringify({ event: "session-up", device: `d${i}`, peer: "p", spi: `0x${i.toString(16).padStart(8, "0")}` })));
  assert.equal(m.events.length, 50);
  for (let i = 200; i < MAX_SESSIONS + 300; i++) m.apply(topics.events("a"), Buffer.from(JSON.stringify({ event: "session-up", device: `d${i}`, peer: "p", spi: "0x00000001" })));
  assert.equal(m.sessions.size, MAX_SESSIONS);
  assert.ok(![...m.sessions.values()].some((s) => s.from === "d0@a"), "the oldest went first");
});

test("a snapshot shows what the monitoring carries and null (the page's \"-\") for what it does not", () => {
  const m = new FleetModel(5);
  m.apply(topics.status(GW), Buffer.from(JSON.stringify({ state: "online", since: "2026-12-01T00:00:00.000Z", version: "0.1.0", listen: "127.0.0.1:7447", run: "abcd1234" })));
  m.apply(topics.metrics(GW), Buffer.from(JSON.stringify({ joins: 2, revocationSerial: 3, revocationIssuedAt: "2026-12-01T00:00:00.000Z", junk: { nested: true } })));
  m.apply(topics.deviceState(GW, "s1"), Buffer.from(JSON.stringify({ device: "s1", board: "puckjs", online: true, registered: false, registeredUntil: null, revoked: false, joinCounter: 1, lastJoin: null, joinRejects: 0, framesDropped: 0, firmware: null, memoryUsed: null, memoryTotal: 2630 })));
  const s = snapshotOf(m, "t", { url: "mqtt://x", connected: true });
  assert.deepEqual(s.gateways[0].revocation, { serial: 3, issuedAt: "2026-12-01T00:00:00.000Z" });
  assert.equal(s.gateways[0].instance, "abcd1234");
  assert.equal(s.gateways[0].linked, 1);
  assert.equal(s.gateways[0].metrics?.junk, undefined, "only numbers and strings");
  assert.deepEqual(s.handsets[0], { gateway: GW, id: "s1", link: "linked", registration: "not registered", board: "puckjs", firmware: null, memory: null, radio: null, joinCounter: 1 });
});
