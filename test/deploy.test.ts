// Running the gateway for real (issue 13, scope 5): the systemd unit and the container image in
// deploy/. What is checked here: the unit's sandboxing is all there and systemd accepts the unit;
// the image runs as a non-root user from a pinned Node 20 base, keeps its data in a 0700 volume,
// exposes the CLI's device port, stops on SIGTERM, and its build context (.dockerignore) lets no key
// or data directory in while keeping every file a running gateway loads. A real `docker build` runs
// only where a Docker daemon answers; the static checks run everywhere.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { DEFAULT_LISTEN } from "../gateway/gateway.ts";
import { tempDir } from "./support/harness.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const UNIT_FILE = join(ROOT, "deploy/systemd/keyproxy-gateway.service");
const SYSUSERS_FILE = join(ROOT, "deploy/systemd/keyproxy.sysusers");
const CONTAINERFILE = join(ROOT, "deploy/container/Containerfile");
const DOCKERIGNORE = join(ROOT, ".dockerignore");
const DATA_DIR = "/var/lib/keyproxy";
const HEALTHCHECK_SCRIPT = "deploy/container/healthcheck.mjs";

// ---------------------------------------------------------------------------------------------
// systemd unit

/** A unit file as systemd reads it: section -> key -> every assignment in order (an empty one
 *  resets a list setting). Comments (# ;) and backslash continuations handled. */
type Unit = Map<string, Map<string, string[]>>;

function parseUnit(text: string): Unit {
  const unit: Unit = new Map();
  let section: Map<string, string[]> | undefined;
  const lines = text.replace(/\\\n/g, " ").split("\n");
  for (const raw of lines) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      section = unit.get(header[1]) ?? new Map();
      unit.set(header[1], section);
      continue;
    }
    const eq = line.indexOf("=");
    assert.ok(section && eq > 0, `not a unit file line: ${line}`);
    const key = line.slice(0, eq).trim();
    section.set(key, [...(section.get(key) ?? []), line.slice(eq + 1).trim()]);
  }
  return unit;
}

/** What a setting comes to: the assignments after the last empty one, joined (list settings), or
 *  the empty string when the last assignment is empty. */
function effective(unit: Unit, section: string, key: string): string | undefined {
  const values = unit.get(section)?.get(key);
  if (values === undefined) return undefined;
  const afterReset = values.slice(values.lastIndexOf("") + 1);
  return afterReset.join(" ");
}

const unitText = readFileSync(UNIT_FILE, "utf8");
const unit = parseUnit(unitText);
const service = (key: string) => effective(unit, "Service", key);

/** The unit with ExecStart's program replaced by this Node running the repository's CLI: systemd
 *  checks that ExecStart's binary exists and is executable, and /usr/local/bin/keyproxy is where an
 *  installation puts it, not where a test machine has it. Everything else stays as shipped. */
function unitWithRunnableExecStart(): string {
  const dir = tempDir("kp-deploy-unit-");
  const path = join(dir, "keyproxy-gateway.service");
  const rewritten = unitText.replace(/^ExecStart=\/usr\/local\/bin\/keyproxy /m, `ExecStart=${process.execPath} ${join(ROOT, "bin/keyproxy.js")} `);
  assert.notEqual(rewritten, unitText, "ExecStart=/usr/local/bin/keyproxy ... not found to rewrite");
  writeFileSync(path, rewritten);
  return path;
}

const systemdAnalyze = spawnSync("systemd-analyze", ["--version"], { encoding: "utf8" });
const NO_SYSTEMD_ANALYZE = systemdAnalyze.error || systemdAnalyze.status !== 0
  ? "systemd-analyze is not installed here (Debian: apt-get install systemd): the unit's static checks still ran"
  : undefined;

describe("deploy/systemd/keyproxy-gateway.service", () => {
  test("runs the installed CLI's gateway on the state directory, with the config file from /etc/keyproxy as a credential", () => {
    const exec = service("ExecStart") ?? "";
    assert.match(exec, /^\/usr\/local\/bin\/keyproxy gateway /);
    assert.match(exec, new RegExp(` --data-dir ${DATA_DIR}( |$)`), "the data directory is the StateDirectory");
    assert.equal(service("StateDirectory"), "keyproxy");
    assert.equal(service("StateDirectoryMode"), "0700", "the data directory holds root keys: owner-only");
    assert.equal(service("UMask"), "0077");
    const [name, source] = (service("LoadCredential") ?? "").split(":");
    assert.equal(source, "/etc/keyproxy/keyproxy.json");
    assert.match(exec, new RegExp(` --config %d/${name.replace(/\./g, "\\.")}( |$)`), "--config names the credential");
  });

  test("runs as the dedicated user keyproxy, which keyproxy.sysusers creates", () => {
    const user = service("User");
    assert.equal(user, "keyproxy");
    assert.notEqual(service("DynamicUser"), "yes", "a static user: admin commands run as it on the same directory");
    assert.match(readFileSync(SYSUSERS_FILE, "utf8"), /^u keyproxy - /m);
  });

  test("sandboxing: no privileges, no capabilities, read-only system, only the network families it uses", () => {
    const expected: Record<string, string> = {
      NoNewPrivileges: "yes",
      CapabilityBoundingSet: "",
      AmbientCapabilities: "",
      ProtectSystem: "strict",
      ProtectHome: "yes",
      PrivateTmp: "yes",
      PrivateDevices: "yes",
      ProtectKernelTunables: "yes",
      ProtectKernelModules: "yes",
      ProtectControlGroups: "yes",
      RestrictNamespaces: "yes",
      RestrictSUIDSGID: "yes",
      LockPersonality: "yes",
      SystemCallArchitectures: "native",
    };
    for (const [key, value] of Object.entries(expected)) assert.equal(service(key), value, `${key}=${value}`);
    assert.deepEqual((service("RestrictAddressFamilies") ?? "").split(/\s+/).sort(), ["AF_INET", "AF_INET6", "AF_UNIX"]);
  });

  test("no core dumps: one would hold the keys in the gateway's memory", () => {
    assert.equal(service("LimitCORE"), "0");
  });

  test("MemoryDenyWriteExecute is off, and a comment says why (V8's JIT)", () => {
    assert.notEqual(service("MemoryDenyWriteExecute"), "yes", "V8 writes the code it runs: Node would not start");
    const comment = unitText.split(/\n(?!#)/).find((block) => /^#.*MemoryDenyWriteExecute=/m.test(block)) ?? "";
    assert.match(comment, /V8's JIT/, "the comment about MemoryDenyWriteExecute gives the reason");
  });

  test("restarts on failure, but not on a usage error (exit 2: a bad setting that a restart cannot fix)", () => {
    assert.equal(service("Restart"), "on-failure");
    assert.equal(service("RestartPreventExitStatus"), "2");
    assert.equal(effective(unit, "Install", "WantedBy"), "multi-user.target");
  });

  test("systemd-analyze verify accepts it, without a warning", { skip: NO_SYSTEMD_ANALYZE }, () => {
    const path = unitWithRunnableExecStart();
    const r = spawnSync("systemd-analyze", ["verify", path], { encoding: "utf8" });
    // verify exits 0 on an unknown key ("ProtectSytem=") and only warns: the warnings count too.
    const ours = `${r.stdout}\n${r.stderr}`.split("\n").filter((l) => l.includes("keyproxy-gateway.service"));
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(ours, []);
  });

  test("systemd-analyze security rates its exposure OK (at most 2.0 of 10)", { skip: NO_SYSTEMD_ANALYZE }, (t) => {
    const path = unitWithRunnableExecStart();
    const r = spawnSync("systemd-analyze", ["security", "--offline=yes", "--no-pager", path], { encoding: "utf8" });
    // --offline came with systemd 250; an older one cannot rate a unit that is not loaded.
    if (/unrecognized option|unknown option/i.test(r.stderr)) return t.skip(`this systemd-analyze (${systemdAnalyze.stdout.split("\n")[0]}) has no --offline`);
    const level = /Overall exposure level for [^:]+: ([\d.]+)/.exec(r.stdout);
    assert.ok(level, r.stdout + r.stderr);
    assert.ok(Number(level[1]) <= 2.0, `exposure ${level[1]}:\n${r.stdout.split("\n").filter((l) => l.includes("✗")).join("\n")}`);
  });
});

// ---------------------------------------------------------------------------------------------
// Container image

interface Instruction { op: string; args: string; line: number }

/** The Containerfile's instructions per stage (a stage starts at FROM), as Docker reads them:
 *  comment lines dropped (also inside continuations), backslash continuations joined. */
function parseContainerfile(text: string): Instruction[][] {
  const stages: Instruction[][] = [];
  let pending = "";
  let start = 0;
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (line.startsWith("#") || (line === "" && pending === "")) return;
    if (pending === "") start = i + 1;
    if (line.endsWith("\\")) {
      pending += line.slice(0, -1) + " ";
      return;
    }
    const full = (pending + line).trim();
    pending = "";
    const m = /^(\w+)\s+([\s\S]*)$/.exec(full);
    assert.ok(m, `line ${start}: not an instruction: ${full}`);
    const ins = { op: m[1].toUpperCase(), args: m[2].trim(), line: start };
    if (ins.op === "FROM") stages.push([]);
    assert.ok(stages.length > 0, `line ${start}: ${ins.op} before FROM`);
    stages[stages.length - 1].push(ins);
  });
  return stages;
}

/** An exec-form (JSON array) argument, or undefined for the shell form. */
function execForm(args: string): string[] | undefined {
  try {
    const v: unknown = JSON.parse(args);
    return Array.isArray(v) && v.every((s) => typeof s === "string") ? v : undefined;
  } catch {
    return undefined;
  }
}

const containerText = readFileSync(CONTAINERFILE, "utf8");
const stages = parseContainerfile(containerText);
const final = stages[stages.length - 1];
const all = (op: string, stage = final) => stage.filter((i) => i.op === op);
const last = (op: string, stage = final) => all(op, stage).at(-1);

/** The uid (or name) of the final stage's USER. */
function runtimeUser(): string {
  const user = last("USER");
  assert.ok(user, "the final stage has no USER: it would run as root");
  return user.args.split(":")[0];
}

// .dockerignore as Docker applies it (moby/patternmatcher): each pattern is matched against the
// path relative to the context and against each of its parent directories; * and ? do not cross
// "/", ** crosses any number of directories (also none); a later pattern wins, ! re-includes.
function ignorePatterns(text = readFileSync(DOCKERIGNORE, "utf8")): { re: RegExp; negate: boolean }[] {
  return text.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#")).map((p) => {
    const negate = p.startsWith("!");
    const pattern = (negate ? p.slice(1) : p).replace(/^\/+|\/+$/g, "");
    let re = "";
    for (let i = 0; i < pattern.length; i++) {
      const c = pattern[i];
      if (pattern.startsWith("**/", i)) { re += "(?:.*/)?"; i += 2; }
      else if (pattern.startsWith("**", i)) { re += ".*"; i += 1; }
      else if (c === "*") re += "[^/]*";
      else if (c === "?") re += "[^/]";
      else re += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
    }
    return { re: new RegExp(`^${re}$`), negate };
  });
}

function excludedFromContext(path: string, patterns = ignorePatterns()): boolean {
  const parts = path.split("/");
  const prefixes = parts.map((_, i) => parts.slice(0, i + 1).join("/"));
  let excluded = false;
  for (const { re, negate } of patterns) if (prefixes.some((p) => re.test(p))) excluded = !negate;
  return excluded;
}

/** Every repository file a running keyproxy loads (esbuild follows the imports from bin/keyproxy.js,
 *  the dynamic ones of the commands too), and the packages it imports. */
async function runtimeGraph(): Promise<{ files: string[]; packages: string[] }> {
  const r = await build({ entryPoints: [join(ROOT, "bin/keyproxy.js")], absWorkingDir: ROOT, bundle: true, write: false, metafile: true, platform: "node", format: "esm", packages: "external", logLevel: "silent" });
  const packages = new Set<string>();
  for (const input of Object.values(r.metafile.inputs)) {
    for (const imp of input.imports) if (imp.external && !imp.path.startsWith("node:")) packages.add(imp.path.startsWith("@") ? imp.path.split("/").slice(0, 2).join("/") : imp.path.split("/")[0]);
  }
  return { files: Object.keys(r.metafile.inputs), packages: [...packages] };
}

describe("deploy/container/Containerfile", () => {
  test("every stage starts from Node 20 on Debian bookworm, the same image (the native addon is built for it)", () => {
    const bases = stages.map((s) => s[0].args.split(/\s+/)[0]);
    assert.ok(stages.length >= 1);
    for (const base of bases) assert.match(base, /^node:20-bookworm-slim(@sha256:[0-9a-f]{64})?$/, "pinned to Node 20's major");
    assert.equal(new Set(bases).size, 1);
  });

  test("installs the production dependencies with npm ci --omit=dev", () => {
    assert.ok(stages.flat().some((i) => i.op === "RUN" && /\bnpm ci --omit=dev\b/.test(i.args)));
  });

  test("runs as a non-root USER set before ENTRYPOINT", () => {
    const user = runtimeUser();
    assert.ok(!["root", "0", ""].includes(user), `USER ${user} is root`);
    const entrypoint = last("ENTRYPOINT");
    assert.ok(entrypoint, "no ENTRYPOINT");
    assert.ok(last("USER")!.line < entrypoint.line, "USER comes before ENTRYPOINT");
  });

  test("ENTRYPOINT is the CLI in exec form (node gets docker stop's SIGTERM), CMD the gateway on the device port and the volume", () => {
    const entrypoint = execForm(last("ENTRYPOINT")?.args ?? "");
    assert.ok(entrypoint, "shell-form ENTRYPOINT: /bin/sh would be PID 1 and keep SIGTERM from the gateway");
    assert.deepEqual(entrypoint, ["/usr/local/bin/keyproxy"]);
    assert.ok(all("RUN").some((i) => /ln -s \/opt\/keyproxy\/bin\/keyproxy\.js \/usr\/local\/bin\/keyproxy\b/.test(i.args)));
    assert.deepEqual(execForm(last("CMD")?.args ?? ""), ["gateway", "--listen", `0.0.0.0:${DEFAULT_LISTEN.port}`, "--data-dir", DATA_DIR]);
  });

  test("exposes the CLI's default device port, and not the embedded broker's (loopback-only, no authentication)", () => {
    const ports = all("EXPOSE").flatMap((i) => i.args.split(/\s+/)).map((p) => p.replace(/\/tcp$/, ""));
    assert.deepEqual(ports, [String(DEFAULT_LISTEN.port)]);
  });

  test("the data directory is a volume, created owner-only (0700) for the runtime user", () => {
    const volumes = all("VOLUME").flatMap((i) => execForm(i.args) ?? i.args.split(/\s+/));
    assert.ok(volumes.includes(DATA_DIR), `VOLUME ${DATA_DIR}`);
    const made = all("RUN").find((i) => new RegExp(`install -d [^&]*${DATA_DIR}\\b`).test(i.args));
    assert.ok(made, `${DATA_DIR} is made with install -d`);
    const cmd = new RegExp(`install -d ([^&]*)${DATA_DIR}`).exec(made.args)![1];
    assert.equal(/-m (\S+)/.exec(cmd)?.[1], "0700");
    assert.equal(/-o (\S+)/.exec(cmd)?.[1], runtimeUser());
    assert.ok(made.line < all("VOLUME")[0].line, "made before VOLUME: later changes to a volume path are lost");
  });

  test("copies nothing from outside the context's filter, and bakes in no secret", () => {
    for (const i of stages.flat().filter((i) => i.op === "COPY" || i.op === "ADD")) {
      assert.notEqual(i.op, "ADD", `line ${i.line}: ADD fetches URLs and unpacks archives; COPY says what it does`);
      if (/--from=/.test(i.args)) continue;
      const sources = i.args.split(/\s+/).filter((a) => !a.startsWith("--")).slice(0, -1);
      for (const s of sources) assert.doesNotMatch(s, /keyproxy-data|keyproxy-fleet|\.key$|\.pem$|\.db$|\.env$/, `line ${i.line}`);
    }
    for (const i of stages.flat().filter((i) => i.op === "ENV" || i.op === "ARG")) {
      assert.doesNotMatch(i.args, /PASS|SECRET|TOKEN|KEYPROXY_MQTT|mqtts?:\/\//i, `line ${i.line}: a broker URL or secret in the image`);
    }
  });

  test("HEALTHCHECK asks /healthz at the loopback address the gateway gets from KEYPROXY_METRICS_LISTEN (not a TCP probe of the device port)", () => {
    const checks = all("HEALTHCHECK");
    assert.equal(checks.length, 1);
    const cmd = /^(?:--\S+\s+)*CMD\s+(.*)$/.exec(checks[0].args);
    assert.ok(cmd, "HEALTHCHECK ... CMD");
    assert.deepEqual(execForm(cmd[1]), ["node", `/opt/keyproxy/${HEALTHCHECK_SCRIPT}`]);
    const env = all("ENV").map((i) => /^KEYPROXY_METRICS_LISTEN=(\S+)$/.exec(i.args)?.[1]).filter(Boolean);
    assert.deepEqual(env, ["127.0.0.1:9464"], "metrics served on the container's loopback only unless asked for");
  });
});

/** Runs the health check script with KEYPROXY_METRICS_LISTEN (undefined: unset) and returns its exit
 *  code and message. Asynchronous: the server it asks may live in this process. */
function runHealthcheck(listen: string | undefined): Promise<{ code: number | null; out: string }> {
  const env = { ...process.env };
  delete env.KEYPROXY_METRICS_LISTEN;
  if (listen !== undefined) env.KEYPROXY_METRICS_LISTEN = listen;
  const child = spawn(process.execPath, [join(ROOT, HEALTHCHECK_SCRIPT)], { env, stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  child.stdout.setEncoding("utf8").on("data", (c: string) => (out += c));
  return new Promise((resolve) => child.on("close", (code) => resolve({ code, out: out.trim() })));
}

/** An HTTP server on a free loopback port answering /healthz with status and body. */
async function fakeHealth(status: number, body: string): Promise<{ port: number; paths: string[]; close: () => Promise<void> }> {
  const paths: string[] = [];
  const server = createServer((req, res) => {
    paths.push(req.url ?? "");
    res.writeHead(status, { "content-type": "text/plain" }).end(body);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  return { port, paths, close: () => new Promise((r) => server.close(() => r())) };
}

describe("deploy/container/healthcheck.mjs", () => {
  test("healthy (exit 0) when /healthz answers 200; a wildcard listen address is asked over loopback", async () => {
    const s = await fakeHealth(200, "ok\nmqtt broker: connected\n");
    try {
      const r = await runHealthcheck(`0.0.0.0:${s.port}`);
      assert.equal(r.code, 0, r.out);
      assert.equal(r.out, `http://127.0.0.1:${s.port}/healthz: 200 ok; mqtt broker: connected`);
      assert.deepEqual(s.paths, ["/healthz"]);
    } finally {
      await s.close();
    }
  });

  test("unhealthy (exit 1) with the gateway's reason when /healthz answers 503", async () => {
    const s = await fakeHealth(503, "unavailable: the link server is not listening\n");
    try {
      const r = await runHealthcheck(`127.0.0.1:${s.port}`);
      assert.equal(r.code, 1);
      assert.match(r.out, /: 503 unavailable: the link server is not listening$/);
    } finally {
      await s.close();
    }
  });

  test("unhealthy (exit 1), saying why, when nothing answers or there is no address to ask", async () => {
    const s = await fakeHealth(200, "ok");
    await s.close(); // a port that was free a moment ago and is closed now: refused
    const refused = await runHealthcheck(`127.0.0.1:${s.port}`);
    assert.equal(refused.code, 1);
    assert.match(refused.out, /ECONNREFUSED/);
    const unset = await runHealthcheck(undefined);
    assert.equal(unset.code, 1);
    assert.match(unset.out, /KEYPROXY_METRICS_LISTEN is not set/);
    const empty = await runHealthcheck("");
    assert.equal(empty.code, 1, "an empty variable counts as unset, as for the gateway");
    const bad = await runHealthcheck("localhost");
    assert.equal(bad.code, 1);
    assert.match(bad.out, /not host:port/);
  });
});

describe(".dockerignore", () => {
  test("keeps data directories, keys, databases, .git and node_modules out of the build context", () => {
    const secret = [
      "keyproxy-data/keyproxy.db", "keyproxy-data/gateway.key", "keyproxy-fleet/ca.key", "examples/keyproxy-data/x",
      "gateway.key", "deploy/a/b.key", "tls.pem", "keyproxy.db", "keyproxy.db-wal", "sub/keyproxy.db-shm", ".env",
      ".git/config", "node_modules/aedes/package.json", "firmware/node_modules/x", "scratch/notes.txt",
    ];
    const patterns = ignorePatterns();
    assert.deepEqual(secret.filter((p) => !excludedFromContext(p, patterns)), [], "let in");
  });

  test("keeps every file a running keyproxy loads, and it needs no devDependency", async () => {
    const { files, packages } = await runtimeGraph();
    const needed = [...files, "package.json", "package-lock.json", "tsconfig.json", "bin/keyproxy.js", "eslint.config.js", HEALTHCHECK_SCRIPT];
    assert.ok(files.some((f) => f.startsWith("gateway/")) && files.some((f) => f.startsWith("cli/")), "the graph reached the commands");
    const patterns = ignorePatterns();
    assert.deepEqual(needed.filter((p) => excludedFromContext(p, patterns)), [], "left out of the image");
    const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { dependencies: Record<string, string>; devDependencies: Record<string, string> };
    assert.deepEqual(packages.filter((p) => !(p in pkg.dependencies)), [], "imported at run time but not in dependencies: npm ci --omit=dev leaves them out");
  });

  test("the matcher reads patterns as Docker does (a root-only pattern does not reach subdirectories)", () => {
    const patterns = ignorePatterns("*.key\ntest\n!test/keep.ts\n");
    assert.equal(excludedFromContext("a.key", patterns), true);
    assert.equal(excludedFromContext("sub/a.key", patterns), false, "Docker's *.key is the context's top level only");
    assert.equal(excludedFromContext("test/x.ts", patterns), true);
    assert.equal(excludedFromContext("test/keep.ts", patterns), false);
  });
});

const dockerInfo = spawnSync("docker", ["info", "--format", "{{.ServerVersion}}"], { encoding: "utf8", timeout: 20_000 });
const NO_DOCKER = dockerInfo.error
  ? `no docker client here (${dockerInfo.error.message}): the Containerfile's static checks still ran`
  : dockerInfo.status !== 0
    ? `no Docker daemon answers here (${(dockerInfo.stderr.trim().split("\n").at(-1) ?? "").slice(0, 160)}): the Containerfile's static checks still ran`
    : undefined;

test("docker build of deploy/container/Containerfile, and the image runs keyproxy as a non-root user", { skip: NO_DOCKER, timeout: 20 * 60_000 }, () => {
  const tag = `keyproxy-deploy-test:${process.pid}`;
  try {
    const b = spawnSync("docker", ["build", "-f", CONTAINERFILE, "-t", tag, ROOT], { encoding: "utf8", maxBuffer: 64 << 20 });
    assert.equal(b.status, 0, b.stderr.slice(-4000));
    const version = spawnSync("docker", ["run", "--rm", tag, "--version"], { encoding: "utf8" });
    assert.equal(version.status, 0, version.stderr);
    assert.match(version.stdout, /^keyproxy \d/);
    const uid = spawnSync("docker", ["run", "--rm", "--entrypoint", "id", tag, "-u"], { encoding: "utf8" });
    assert.equal(uid.stdout.trim(), runtimeUser());
    const mode = spawnSync("docker", ["run", "--rm", "--entrypoint", "stat", tag, "-c", "%a %u", DATA_DIR], { encoding: "utf8" });
    assert.equal(mode.stdout.trim(), `700 ${runtimeUser()}`);
  } finally {
    spawnSync("docker", ["rmi", "-f", tag], { stdio: "ignore" });
  }
});
