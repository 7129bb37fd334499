// The npm package as a user gets it (issue 13, scope 1): `npm pack`, installed into an empty project,
// runs without tsx or the sources (compiled dist/), builds the firmware from the firmware sources it
// ships, and its declarations type-check a user's program against the SDK and the device API. Slow
// (an install and a firmware build): minutes on a loaded machine, hence the generous timeout.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { lintFirmware } from "../flash/lint.ts";
import { tempDir } from "./support/harness.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const VERSION: string = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version;
const run = promisify(execFile);

/** Runs a command; on failure the assertion shows what it printed. */
/** Serves the installed package's fleet view on a free loopback port and prints the page's status and text. */
const WEB_PAGE_PROGRAM = `
const { serveFleetView } = await import("./node_modules/keyproxy/dist/gateway/web/fleet-server.js");
const source = { snapshot: () => ({}), subscribe: () => () => {} };
const view = await serveFleetView({ listen: { host: "127.0.0.1", port: 0 } }, source);
const res = await fetch("http://127.0.0.1:" + view.address.port + "/");
console.log(res.status, await res.text());
await view.close();
`;

async function sh(cmd: string, args: string[], cwd: string): Promise<string> {
  try {
    const { stdout } = await run(cmd, args, { cwd, maxBuffer: 64 * 1024 * 1024, env: { ...process.env, npm_config_update_notifier: "false" } });
    return stdout;
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string; message: string };
    assert.fail(`${cmd} ${args.join(" ")} failed in ${cwd}:\n${err.message}\n${err.stdout ?? ""}\n${err.stderr ?? ""}`);
  }
}

/** The README's capable peer ("Sessions across gateways"), as a user copies it: plain JavaScript that
 *  is TypeScript too, so it type-checks here against the installed declarations. */
const README_PEER = `import { CapablePeer } from "keyproxy/sdk";

const peer = await CapablePeer.start({ dataDir: "./carol", domain: "peers.example", name: "carol", mqtt: "mqtt://127.0.0.1:1883" });
const session = await peer.connect("sim-1@south.example", "chat"); // the handset's onRequest decides
const reply = new Promise((resolve) => { session.onMessage = (data) => resolve(Buffer.from(data).toString()); });
await session.send(new TextEncoder().encode("hello"));
console.log(await reply); // "echo: hello": sim --answer echoes
await session.close();
await peer.close();
`;

/** The declarations are real types, not any; and a device application against the device API. */
const TYPED_PROGRAM = `import { CapablePeer } from "keyproxy/sdk";
import type { Device } from "keyproxy/device";

export async function wrong(): Promise<void> {
  // @ts-expect-error: a number is no data directory
  await CapablePeer.start({ dataDir: 1, domain: "d", name: "n", mqtt: "mqtt://x" });
}

export default function main(kp: Device): void {
  kp.onRequest = (_from, app) => app === "chat";
}
`;

const GATEWAY_PROGRAM = `import * as gateway from "keyproxy/gateway";
export const names: string[] = Object.keys(gateway);
`;

test("the npm package installs into an empty project, runs, builds the firmware and type-checks a user's program", { timeout: 20 * 60_000 }, async (t) => {
  const dir = tempDir("kp-package-");
  t.after(() => rmSync(dir, { recursive: true, force: true })); // an installed project is large
  // `npm pack` runs prepack (npm run build:dist): the tarball holds freshly compiled dist/.
  const packed = JSON.parse(await sh("npm", ["pack", "--json", "--pack-destination", dir], ROOT)) as { filename: string; files: { path: string }[] }[];
  const tarball = join(dir, packed[0].filename);
  const files = packed[0].files.map((f) => f.path);

  // Only what a user needs: no tests, benchmarks, fuzzers, scratch, device caches, databases or keys.
  const unwanted = files.filter((f) => /^(test|bench|fuzz|scratch|\.espruino|examples|interpreter|scripts)\//.test(f) || /\.(db|key)$/.test(f) || /(^|\/)\.espruino\//.test(f));
  assert.deepEqual(unwanted, [], "files that do not belong in the package");
  for (const needed of ["dist/cli/main.js", "dist/sdk/peer.d.ts", "dist/gateway/gateway.d.ts", "dist/firmware/api.d.ts", "bin/keyproxy.js", "firmware/targets/puckjs.ts", "firmware/tsconfig.json", "dist/gateway/web/static/index.html", "dist/gateway/web/static/app.js", "dist/gateway/web/static/style.css"]) {
    assert.ok(files.includes(needed), `the package lacks ${needed}`);
  }
  assert.ok(!files.some((f) => /^(cli|gateway|sdk|flash)\/.*\.ts$/.test(f)), "the package ships Node-side TypeScript sources: bin/keyproxy.js would run them through tsx");

  const project = join(dir, "project");
  mkdirSync(project);
  await sh("npm", ["init", "-y"], project);
  const manifest = JSON.parse(readFileSync(join(project, "package.json"), "utf8"));
  writeFileSync(join(project, "package.json"), JSON.stringify({ ...manifest, type: "module" }, null, 2));
  // @types/node: the user's own, as any TypeScript program for Node has it (the SDK's types name Node's).
  await sh("npm", ["install", tarball, "@types/node@20", "--prefer-offline", "--no-audit", "--no-fund"], project);

  assert.equal((await sh("npx", ["--no-install", "keyproxy", "--version"], project)).trim(), `keyproxy ${VERSION}`);

  // The web fleet view finds its page beside its compiled server (npm run build:dist copies it there).
  const page = await sh(process.execPath, ["--input-type=module", "-e", WEB_PAGE_PROGRAM], project);
  assert.match(page, /^200 .*<title>keyproxy fleet view<\/title>/s, page);

  const out = join(dir, "firmware-out");
  const report = await sh("npx", ["--no-install", "keyproxy", "build", "--board", "puckjs", "--out", out], project);
  assert.match(report, /^puckjs \*\s+\d+\s+\d+\s+[\d.]+%\s+ok$/m, report);
  assert.ok(existsSync(join(out, "puckjs.js")), "keyproxy build wrote no puckjs.js");

  writeFileSync(join(project, "peer.ts"), README_PEER);
  writeFileSync(join(project, "typed.ts"), TYPED_PROGRAM);
  writeFileSync(join(project, "embed.ts"), GATEWAY_PROGRAM);
  writeFileSync(join(project, "tsconfig.json"), JSON.stringify({
    compilerOptions: { target: "ES2022", module: "NodeNext", moduleResolution: "NodeNext", strict: true, noEmit: true, types: ["node"] },
    files: ["peer.ts", "typed.ts", "embed.ts"],
  }));
  // typescript comes with keyproxy (keyproxy build lints with it): the user's tsc is the same one.
  await sh(process.execPath, [join(project, "node_modules", "typescript", "bin", "tsc"), "-p", "."], project);
});

test("the README's capable-peer program is the one this file type-checks against the installed package", () => {
  assert.ok(readFileSync(join(ROOT, "README.md"), "utf8").includes(README_PEER), "README.md holds README_PEER word for word");
});

test("the lint sees firmware sources under node_modules/, where an installed package's firmware is", async (t) => {
  const base = tempDir("kp-package-lint-");
  t.after(() => rmSync(base, { recursive: true, force: true }));
  const dir = join(base, "node_modules", "keyproxy", "firmware");
  mkdirSync(dir, { recursive: true });
  const file = join(dir, "bad.ts");
  writeFileSync(file, "export function f(o: { a: number }): number {\n  const { a } = o;\n  return a;\n}\n");
  const findings = await lintFirmware([file]);
  assert.ok(findings.some((f) => /destructuring is not supported by Espruino/.test(f.message)), JSON.stringify(findings));
});
