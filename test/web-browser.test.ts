// The web fleet view in a real browser: Debian's Chromium (/usr/bin/chromium), headless, driven by
// playwright-core (never a downloaded browser). A gateway process serves the view of itself
// (`keyproxy gateway --http`), two emulated Puck.js handsets run the real firmware bundle against it;
// when one calls the other, the session must appear as an edge of the SVG graph, and when the caller
// says bye, the edge must go. Then hostile names, published on the broker as anyone there can, must
// show as text and run nothing. The screenshots in docs/images/ (docs/MONITORING.md) are made here.
//
// Where /usr/bin/chromium is missing the test is reported as skipped, with how to get it; with
// CI=true it fails instead (CI must run it: .ci/run installs Chromium from Debian).
import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { connect } from "mqtt";
import { chromium, type BrowserContext } from "playwright-core";
import { buildFirmware } from "../flash/build.ts";
import { echoApp, startSim, whenRegistered } from "../emulator/sim.ts";
import { topics } from "../gateway/monitor/monitor.ts";
import { tempDir } from "./support/harness.ts";
import { startGatewayProcess } from "./support/process.ts";
import { runCli } from "./support/run-cli.ts";

const CHROMIUM = "/usr/bin/chromium";
/** Chromium as the test runs it: headless, no sandbox (containers), nothing that phones home. The
 *  fresh --user-data-dir is launchPersistentContext's first argument. */
const CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const IMAGES = fileURLToPath(new URL("../docs/images/", import.meta.url));
const GW = "web.example";
const NAME = "a session between two handsets shows as an edge of the graph, and goes on bye; hostile names show as text";

/** The page's document, as the functions below run in the page use it (this test is compiled without
 *  the DOM's types). Functions, not strings: the view's Content-Security-Policy refuses eval, so
 *  playwright cannot evaluate a string there. They are sent as source: they name nothing of this module. */
type Doc = { getElementById(id: string): { textContent: string }; querySelectorAll(sel: string): ArrayLike<{ textContent: string }> };

const missing = existsSync(CHROMIUM) ? null : `${CHROMIUM} is missing: apt-get install -y chromium (Debian's package; this test never downloads a browser)`;

if (missing && process.env.CI !== "true") {
  console.log(`web fleet view browser test NOT RUN: ${missing}`);
  test(`[browser] ${NAME}`, { skip: `not run: ${missing}` }, () => {});
} else {
  test(`[browser] ${NAME}`, { timeout: 300_000 }, async (t) => {
    if (missing) throw new Error(`CI=true and the browser test cannot run: ${missing}`);
    const dataDir = tempDir("kp-web-browser-");
    const build = await buildFirmware({ board: "puckjs", outDir: join(dataDir, "build") });
    assert.ok(build.ok, "the puckjs firmware builds");

    const gw = await startGatewayProcess(dataDir, 0, ["--id", GW, "--mqtt-listen", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
    t.after(() => gw.stop());
    const web = String(gw.events("web-serving")[0]?.listen);
    const brokerUrl = String(gw.events("mqtt-broker-started")[0]?.url);
    const base = `http://${web}/`;

    const allow = await runCli(["policy", "allow", "--data-dir", dataDir, "--from", "sim-1", "--to", "sim-2", "--app", "web"]);
    assert.equal(allow.code, 0, allow.stderr);
    const sim = await startSim({ dataDir, gateway: { host: "127.0.0.1", port: gw.port }, count: 2, board: "puckjs", bundle: build.code, lifetime: 3600 });
    t.after(() => sim.stop());
    const [caller, callee] = sim.devices;
    assert.ok(await whenRegistered(caller) && await whenRegistered(callee), "both handsets register");

    const context: BrowserContext = await chromium.launchPersistentContext(tempDir("kp-chromium-profile-"), {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1280, height: 900 },
    });
    t.after(() => context.close());
    const page = context.pages()[0] ?? (await context.newPage());
    const problems: string[] = [];
    const foreign: string[] = [];
    page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") problems.push(`console ${m.type()}: ${m.text()}`); });
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    page.on("request", (r) => { if (!r.url().startsWith(base)) foreign.push(r.url()); });
    page.on("response", (r) => { if (r.status() >= 400) problems.push(`${r.status()} for ${r.url()}`); });

    await page.goto(base);
    const party = (id: string) => `#graph circle[data-party="${id}@${GW}"]`;
    await page.waitForSelector(party("sim-1"), { state: "attached", timeout: 60_000 });
    await page.waitForSelector(party("sim-2"), { state: "attached", timeout: 60_000 });

    // sim-2 takes calls for "web"; sim-1 calls it and keeps the session until the test hangs up.
    callee.eval(echoApp("web"));
    assert.equal(caller.eval(`var webSpi = 0; KP.onConnect = function (spi) { webSpi = spi; }; KP.connect("sim-2", "web") ? 1 : 0`), 1, "the call is placed");
    const edge = `#graph line.session[data-from="sim-1@${GW}"][data-to="sim-2@${GW}"]`;
    // "attached", not "visible": a vertical line has a box of width 0, which playwright calls hidden.
    await page.waitForSelector(`${edge}:not(.ended)`, { state: "attached", timeout: 60_000 });
    const spi = await page.getAttribute(edge, "data-spi");
    assert.match(String(spi), /^0x[0-9a-f]{8}$/, "the edge names its SA by the one SPI form");
    await page.waitForFunction(([s]) => (globalThis as unknown as { document: Doc }).document.getElementById("sessions").textContent.includes(s), [String(spi)]);
    mkdirSync(IMAGES, { recursive: true });
    await page.screenshot({ path: join(IMAGES, "fleet-view.png"), fullPage: true });

    // Bye from the caller: the edge goes (shown ended for a moment first, then not at all).
    assert.equal(caller.eval("KP.close(webSpi); 1"), 1);
    await page.waitForSelector(`${edge}:not(.ended)`, { state: "detached", timeout: 60_000 });
    await page.waitForSelector(edge, { state: "detached", timeout: 60_000 });
    await page.waitForFunction(() => (globalThis as unknown as { document: Doc }).document.getElementById("events").textContent.includes("session-down"));
    await page.screenshot({ path: join(IMAGES, "fleet-view-after-bye.png"), fullPage: true });

    // Anyone who can publish on the broker chooses names: they must show as text and run nothing.
    const hostile = `<img src=x onerror="window.__pwned=1">`;
    const hostilePeer = `<svg onload="window.__pwned=2"></svg>@evil`;
    const client = connect(brokerUrl, { protocolVersion: 4 });
    t.after(() => client.end(true));
    await new Promise<void>((r) => client.once("connect", () => r()));
    await client.publishAsync(topics.events(GW), JSON.stringify({ ts: new Date().toISOString(), level: "warn", event: "session-up", device: hostile, peer: hostilePeer, app: hostile, spi: "0x0000beef" }));
    await page.waitForFunction(([h]) => (globalThis as unknown as { document: Doc }).document.getElementById("events").textContent.includes(h), [hostile]);
    await page.waitForSelector(`#graph line.session[data-spi="0x0000beef"]`, { state: "attached" });
    const seen = await page.evaluate(() => ({
      pwned: (globalThis as unknown as { __pwned?: number }).__pwned,
      elements: (globalThis as unknown as { document: Doc }).document.querySelectorAll("img, iframe, object, embed, #graph svg, #graph foreignObject, #events *:not(li):not(span)").length,
      labels: Array.prototype.map.call((globalThis as unknown as { document: Doc }).document.querySelectorAll("#graph text"), (e: { textContent: string }) => e.textContent) as string[],
    }));
    assert.equal(seen.pwned, undefined, "no hostile handler ran");
    assert.equal(seen.elements, 0, "no element made from a hostile name");
    assert.ok(seen.labels.includes(hostile), "the hostile name is a label, as text");
    assert.deepEqual(foreign, [], "the page fetched nothing from elsewhere");
    assert.deepEqual(problems, [], "no CSP violation, Trusted Types refusal or script error");
  });
}
