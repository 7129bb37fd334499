// The serial side of the CLI as an operator meets it (issue 13, scope 2), through the real command in
// a child process: `keyproxy ports`; a --port that does not exist or that another program holds; a
// gateway whose --listen address is taken; and Ctrl-C in the middle of `flash` and `provision`, which
// must say what the device and the registry hold and leave nothing half-written.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { EmulatedDevice } from "../emulator/device.ts";
import { attachPty } from "../emulator/serial.ts";
import { STAGING_FILE } from "../flash/flash.ts";
import { portHolders } from "../flash/ports.ts";
import { CONFIG_NEW, CONFIG_OLD, JOURNAL_FILE } from "../flash/provision.ts";
import { openStore } from "../gateway/gateway.ts";
import { CLI } from "./support/process.ts";
import { tempDir } from "./support/harness.ts";

interface Cli {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  /** Resolves once stderr matches. */
  stderrMatches(re: RegExp): Promise<void>;
  done: Promise<{ code: number | null; stdout: string; stderr: string }>;
}

function startCli(args: string[], env: Record<string, string> = {}, ms = 60000): Cli {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
  let stdout = "";
  let stderr = "";
  const waiters: { re: RegExp; resolve: () => void }[] = [];
  child.stdout!.on("data", (b) => (stdout += b));
  child.stderr!.on("data", (b) => {
    stderr += b;
    for (const w of waiters.splice(0)) (w.re.test(stderr) ? w.resolve() : waiters.push(w));
  });
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    const t = setTimeout(() => { child.kill("SIGKILL"); reject(new Error(`keyproxy ${args.join(" ")} did not finish:\n${stdout}\n${stderr}`)); }, ms);
    child.once("close", (code) => { clearTimeout(t); resolve({ code, stdout, stderr }); });
  });
  return {
    child,
    stdout: () => stdout,
    stderr: () => stderr,
    stderrMatches: (re) => (re.test(stderr) ? Promise.resolve() : new Promise((resolve) => waiters.push({ re, resolve }))),
    done,
  };
}

const runCli = (args: string[], env: Record<string, string> = {}) => startCli(args, env).done;

/** A fake device directory: a by-id link to ttyUSB0, ttyUSB2, ttyUSB10, ttyACM0, and things that are
 *  not handset ports (ttyS0, null). */
function fakeDev(): string {
  const dir = tempDir("kp-dev-");
  for (const f of ["ttyUSB0", "ttyUSB2", "ttyUSB10", "ttyACM0", "ttyS0", "null"]) writeFileSync(join(dir, f), "");
  mkdirSync(join(dir, "serial", "by-id"), { recursive: true });
  symlinkSync("../../ttyUSB0", join(dir, "serial", "by-id", "usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"));
  return dir;
}

/** An emulated handset behind a pty whose answers the test can hold back, so that a signal sent to
 *  the CLI is known to have arrived before the device's next answer does. */
async function handset(name: string) {
  const dev = new EmulatedDevice({ board: "emulator", storageDir: tempDir(`kp-${name}-`), name });
  const pty = await attachPty(dev);
  const c = pty.console as unknown as { write: (s: string) => void };
  const write = c.write;
  let held: string[] | undefined;
  c.write = (s: string) => (held ? held.push(s) : write(s));
  const text = (f: string) => {
    const b = dev.storage.read(f);
    return b ? Buffer.from(b).toString("latin1") : undefined;
  };
  return {
    dev, pty, text,
    hold: () => void (held ??= []),
    release: () => {
      const h = held ?? [];
      held = undefined;
      for (const s of h) write(s);
    },
    stop: async () => { await pty.close(); dev.powerOff(); },
  };
}

// ---- keyproxy ports ---------------------------------------------------------------------------

test("keyproxy ports lists the by-id names with their tty, then the other ttyUSB/ttyACM, one per line or as JSON", async () => {
  const dir = fakeDev();
  const env = { KEYPROXY_SERIAL_DIRS: dir };
  const r = await runCli(["ports"], env);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.stdout.trimEnd().split("\n"), [
    `${dir}/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0 -> ${dir}/ttyUSB0`,
    `${dir}/ttyACM0`,
    `${dir}/ttyUSB2`,
    `${dir}/ttyUSB10`,
  ]);
  const j = await runCli(["ports", "--json"], env);
  assert.equal(j.code, 0, j.stderr);
  assert.deepEqual(JSON.parse(j.stdout), [
    { path: `${dir}/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0`, target: `${dir}/ttyUSB0` },
    { path: `${dir}/ttyACM0` },
    { path: `${dir}/ttyUSB2` },
    { path: `${dir}/ttyUSB10` },
  ]);
});

test("keyproxy ports with none: says so, where it looked, and the dialout hint; exit 1; --json is still an array", async () => {
  const env = { KEYPROXY_SERIAL_DIRS: tempDir("kp-nodev-") };
  const r = await runCli(["ports"], env);
  assert.equal(r.code, 1);
  assert.equal(r.stdout, "");
  assert.match(r.stderr, /no serial ports found \(looked at .*ttyUSB\*.*\).*dialout group/);
  const j = await runCli(["ports", "--json"], env);
  assert.equal(j.code, 1);
  assert.deepEqual(JSON.parse(j.stdout), []);
});

test("keyproxy ports shows a by-id name with control characters escaped, as text and as JSON", async () => {
  // by-id names come from a USB device's own descriptors: whoever built the device chose them.
  const dir = tempDir("kp-dev-hostile-");
  writeFileSync(join(dir, "ttyUSB0"), "");
  mkdirSync(join(dir, "serial", "by-id"), { recursive: true });
  const hostile = "usb-evil\x1b]0;pwned\x07\u202e-if00";
  symlinkSync("../../ttyUSB0", join(dir, "serial", "by-id", hostile));
  const env = { KEYPROXY_SERIAL_DIRS: dir };
  for (const args of [["ports"], ["ports", "--json"]]) {
    const r = await runCli(args, env);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e]/, `keyproxy ${args.join(" ")} wrote a raw control character`);
  }
  assert.ok((await runCli(["ports"], env)).stdout.includes("usb-evil\\x1b]0;pwned\\x07\\u202e-if00 -> "), "shown as escapes");
  const j = await runCli(["ports", "--json"], env);
  assert.equal(JSON.parse(j.stdout)[0].path, `${dir}/serial/by-id/${hostile}`, "the JSON still parses back to the real name");
});

// ---- a --port that is not there, or busy ---------------------------------------------------------

test("a --port that does not exist: flash and provision say so and list the ports there are; exit 1", async () => {
  const dir = fakeDev();
  const env = { KEYPROXY_SERIAL_DIRS: dir };
  const missing = join(dir, "ttyUSB9");
  for (const args of [
    ["flash", "--port", missing, "--board", "emulator", "--bundle", "package.json"],
    ["provision", "--port", missing, "--board", "emulator", "--id", "dev-1", "--data-dir", tempDir("kp-reg-")],
  ]) {
    const r = await runCli(args, env);
    assert.equal(r.code, 1, `${args[0]}: ${r.stderr}`);
    assert.ok(r.stderr.includes(`${missing} does not exist; the serial ports here: ${dir}/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0 -> ${dir}/ttyUSB0, ${dir}/ttyACM0`), r.stderr);
  }
});

test("a busy port: flash names the process that holds it (pid and command), not the pty's own helper; the device is untouched", async () => {
  const h = await handset("busy");
  h.dev.storage.write(".bootcde", "print('old firmware')");
  // Another program with the port open as serialport opens it (an exclusive flock): a second flasher.
  const holder = spawn(process.execPath, ["-e", `
    const { SerialPort } = require("serialport");
    const p = new SerialPort({ path: ${JSON.stringify(h.pty.path)}, baudRate: 115200, lock: true }, (e) => {
      if (e) { console.error(e.message); process.exit(1); }
      console.log("holding");
    });
    process.stdin.on("end", () => p.close(() => process.exit(0)));
    process.stdin.resume();`], { stdio: ["pipe", "pipe", "inherit"], cwd: fileURLToPath(new URL("..", import.meta.url)) });
  try {
    await new Promise<void>((resolve, reject) => {
      holder.stdout!.on("data", (b) => { if (String(b).includes("holding")) resolve(); });
      holder.once("exit", (code) => reject(new Error(`the holder exited (${code})`)));
    });
    const command = readFileSync(`/proc/${holder.pid}/comm`, "utf8").trim();
    const r = await runCli(["flash", "--port", h.pty.path, "--board", "emulator", "--bundle", "package.json"]);
    assert.equal(r.code, 1, r.stderr);
    assert.ok(r.stderr.includes(`${h.pty.path} is busy: held by pid ${holder.pid} (${command}); a serial console serves one program at a time`), r.stderr);
    assert.ok(!/python/.test(r.stderr), "the pty helper holds the other end open but no lock: not named");
    assert.equal(h.text(".bootcde"), "print('old firmware')");
    assert.deepEqual(h.dev.storage.list(), [".bootcde"]);
  } finally {
    holder.stdin!.end();
    await new Promise((r) => (holder.exitCode !== null ? r(null) : holder.once("exit", r)));
    await h.stop();
  }
});

test("portHolders: the lock holder alone when /proc/locks names one that is alive, else every process with the port open (a TIOCEXCL port)", async () => {
  const dev = fakeDev();
  const tty = join(dev, "ttyUSB0");
  const proc = tempDir("kp-proc-");
  const task = (pid: number, command: string, fds: string[]) => {
    mkdirSync(join(proc, String(pid), "fd"), { recursive: true });
    writeFileSync(join(proc, String(pid), "comm"), `${command}\n`);
    fds.forEach((target, i) => symlinkSync(target, join(proc, String(pid), "fd", String(i + 3))));
  };
  task(101, "minicom", [tty]);
  task(102, "ModemManager", ["/dev/null", tty]);
  task(103, "bash", ["/dev/null"]);
  writeFileSync(join(proc, "locks"), "");
  assert.deepEqual(portHolders(join(dev, "serial", "by-id", "usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0"), proc), [
    { pid: 101, command: "minicom" },
    { pid: 102, command: "ModemManager" },
  ], "no lock: every opener, found through the by-id link too");

  const st = statSync(tty);
  const hex = (n: number) => n.toString(16).padStart(2, "0");
  const id = `${hex(Math.floor(st.dev / 256) & 0xfff)}:${hex((st.dev & 0xff) | (Math.floor(st.dev / 4096) & 0xfff00))}:${st.ino}`;
  writeFileSync(join(proc, "locks"), `1: FLOCK  ADVISORY  WRITE 999 ${id} 0 EOF\n`);
  assert.equal(portHolders(tty, proc).length, 2, "a lock whose holder is gone is no holder");
  writeFileSync(join(proc, "locks"), `1: FLOCK  ADVISORY  WRITE 102 ${id} 0 EOF\n2: -> FLOCK  ADVISORY  WRITE 101 ${id} 0 EOF\n`);
  assert.deepEqual(portHolders(tty, proc), [{ pid: 102, command: "ModemManager" }], "the lock's holder, not its waiter");
});

// ---- a gateway on a taken address ----------------------------------------------------------------

test("keyproxy gateway --listen on an address in use: names it and the fix, exit 1, no stack trace", async () => {
  const taken = net.createServer();
  await new Promise<void>((r) => taken.listen(0, "127.0.0.1", () => r()));
  const port = (taken.address() as net.AddressInfo).port;
  try {
    const r = await runCli(["gateway", "--data-dir", tempDir("kp-gw-"), "--listen", `127.0.0.1:${port}`, "--no-mqtt", "--no-fleet"]);
    assert.equal(r.code, 1, r.stderr);
    assert.ok(r.stderr.includes(`cannot listen on 127.0.0.1:${port}: the address is in use (another gateway? use --listen <host:port>)`), r.stderr);
    assert.ok(!/^\s+at /m.test(r.stderr), `no stack trace:\n${r.stderr}`);
  } finally {
    taken.close();
  }
});

// ---- Ctrl-C in the middle ------------------------------------------------------------------------

/** Sends SIGINT to the CLI when the device writes `file` for the `nth` time, with the device's answer
 *  held back until the CLI has said it heard the signal. */
function interruptAt(h: Awaited<ReturnType<typeof handset>>, cli: () => Cli | undefined, file: string, nth = 1): void {
  let n = 0;
  h.dev.on("storage-write", ({ name }: { name: string }) => {
    if (name === file && ++n === nth) interrupt(h, cli()!);
  });
}

/** The same, when the line the device is sent contains `text`. */
function interruptAtLine(h: Awaited<ReturnType<typeof handset>>, cli: () => Cli | undefined, text: string): void {
  const con = h.pty.console as unknown as { input: (s: string) => void };
  const input = con.input.bind(con);
  let seen = false;
  con.input = (s: string) => {
    if (!seen && s.includes(text)) {
      seen = true;
      interrupt(h, cli()!);
    }
    input(s);
  };
}

function interrupt(h: Awaited<ReturnType<typeof handset>>, c: Cli): void {
  h.hold();
  c.child.kill("SIGINT");
  void c.stderrMatches(/interrupted; stopping after the current line/).then(() => h.release());
}

test("--answer-timeout: flash and provision wait that long for a device that does not answer, and say so", async () => {
  const h = await handset("slow");
  try {
    h.hold(); // the device hears everything and answers nothing
    for (const args of [["flash", "--board", "emulator", "--bundle", join(tempDir("kp-b-"), "none.js")], ["provision", "--id", "slow-1", "--board", "emulator", "--data-dir", join(tempDir("kp-slow-"), "data")]]) {
      if (args[0] === "flash") writeFileSync(args[4], "print(1)");
      const r = await runCli([...args, "--port", h.pty.path, "--answer-timeout", "2"]);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /answer(ed)? [^\n]*within 2\.0 s/, `keyproxy ${args[0]}: ${r.stderr}`);
    }
  } finally {
    h.release();
    await h.stop();
  }
});

test("Ctrl-C during flash: stops after the chunk being written, says how far it got and what the device holds, exit 130", async () => {
  const h = await handset("sigint-flash");
  h.dev.storage.write(".bootcde", "print('old firmware')");
  const bundle = join(tempDir("kp-bundle-"), "bundle.js");
  writeFileSync(bundle, Array.from({ length: 100 }, (_, i) => `// line ${String(i).padStart(3, "0")} ${"x".repeat(46)}\n`).join(""));
  assert.equal(Math.ceil(readFileSync(bundle).length / 512), 12);
  let cli: Cli | undefined;
  interruptAt(h, () => cli, STAGING_FILE, 3);
  try {
    const args = ["flash", "--port", h.pty.path, "--board", "emulator", "--bundle", bundle, "--no-reboot"];
    cli = startCli(args);
    const r = await cli.done;
    assert.equal(r.code, 130, r.stderr);
    assert.ok(r.stderr.includes(`flash interrupted after 3 of 12 chunks: the device holds a partial bundle (${STAGING_FILE}), which it will not start; its .bootcde is unchanged`), r.stderr);
    assert.ok(r.stderr.includes(`run \`keyproxy ${args.join(" ")}\` again`), r.stderr);
    assert.equal(h.text(".bootcde"), "print('old firmware')");
    assert.equal(h.dev.storage.read(STAGING_FILE)?.length, readFileSync(bundle).length, "made at its full size, three chunks filled in");
  } finally {
    await h.stop();
  }
});

for (const at of [
  { step: "stage", file: CONFIG_NEW, replace: false },
  { step: "switch", file: "kp.cfg", replace: true },
]) {
  test(`Ctrl-C during provision (at "${at.step}"${at.replace ? ", --replace" : ""}): rolled back on both sides, says so and what to run, exit 130`, async () => {
    const h = await handset(`sigint-prov-${at.step}`);
    const dataDir = tempDir("kp-reg-");
    const id = "sig-1";
    const oldKey = "00112233445566778899aabbccddeeff";
    const oldCfg = JSON.stringify({ id, key: oldKey, gw: "127.0.0.1:1", life: 60 });
    if (at.replace) {
      h.dev.storage.write("kp.cfg", oldCfg);
      const s = await openStore(dataDir);
      await s.addDevice(id, Buffer.from(oldKey, "hex"), "emulator", 1);
      await s.close();
    } else {
      await (await openStore(dataDir)).close();
    }
    let cli: Cli | undefined;
    interruptAt(h, () => cli, at.file);
    try {
      const args = ["provision", "--port", h.pty.path, "--board", "emulator", "--id", id, "--data-dir", dataDir, "--gateway", "127.0.0.1:7447", "--no-reboot", ...(at.replace ? ["--replace"] : [])];
      cli = startCli(args);
      const r = await cli.done;
      assert.equal(r.code, 130, r.stderr);
      assert.ok(r.stderr.includes(`provisioning "${id}" interrupted (Ctrl-C) at "${at.step}"`), r.stderr);
      assert.ok(r.stderr.includes(at.replace ? `the registry keeps "${id}"'s old entry and key` : `the registry has no entry for "${id}"`), r.stderr);
      assert.ok(r.stderr.includes("the device did not get the new key"), r.stderr);
      assert.ok(r.stderr.includes(`run \`keyproxy ${args.join(" ")}\` again`), r.stderr);

      // Nothing half-written: the registry has the old entry or none, and no committed provisioning;
      // the device has its old kp.cfg or none, and no staging files or journal.
      const s = await openStore(dataDir);
      try {
        const row = await s.getDevice(id);
        if (at.replace) assert.equal(Buffer.from(row!.rootKey).toString("hex"), oldKey);
        else assert.equal(row, undefined);
        const provisioned = (await s.row("SELECT count(*) AS n FROM audit WHERE device_id = ? AND event = 'device-provisioned'", [id])) as { n: number };
        assert.equal(provisioned.n, 0);
      } finally {
        await s.close();
      }
      assert.equal(h.text("kp.cfg"), at.replace ? oldCfg : undefined);
      for (const f of [CONFIG_NEW, CONFIG_OLD, JOURNAL_FILE]) assert.equal(h.dev.storage.read(f), undefined, `${f} is gone`);
    } finally {
      await h.stop();
    }
  });
}

test("Ctrl-C during provision after the commit: the clean-up still runs, the reboot is left out, and the message says the device is provisioned; exit 130", async () => {
  const h = await handset("sigint-prov-cleanup");
  const dataDir = tempDir("kp-reg-");
  await (await openStore(dataDir)).close();
  let cli: Cli | undefined;
  // The clean-up's first erase: sent only once the registry has committed.
  interruptAtLine(h, () => cli, `.erase(${JSON.stringify(CONFIG_NEW)})`);
  try {
    cli = startCli(["provision", "--port", h.pty.path, "--board", "emulator", "--id", "sig-2", "--data-dir", dataDir, "--gateway", "127.0.0.1:7447"]);
    const r = await cli.done;
    assert.equal(r.code, 130, r.stderr);
    assert.ok(r.stderr.includes(`provisioning "sig-2" interrupted after its commit: "sig-2" is provisioned (the registry has its new key, and so has the device), but the device was not rebooted: power-cycle it`), r.stderr);
    assert.ok(r.stderr.includes("nothing to run again"), r.stderr);
    const s = await openStore(dataDir);
    try {
      assert.equal(JSON.parse(h.text("kp.cfg")!).key, Buffer.from((await s.getDevice("sig-2"))!.rootKey).toString("hex"), "both sides have the new key");
    } finally {
      await s.close();
    }
    for (const f of [CONFIG_NEW, CONFIG_OLD, JOURNAL_FILE]) assert.equal(h.dev.storage.read(f), undefined, `${f} is gone: the clean-up ran to its end`);
  } finally {
    await h.stop();
  }
});

test("a second Ctrl-C quits at once, even mid-switch: exit 130, the registry keeps nothing uncommitted, and the --recover it names settles the device", async () => {
  const h = await handset("sigint-twice");
  const dataDir = tempDir("kp-reg-");
  await (await openStore(dataDir)).close();
  let cli: Cli | undefined;
  h.dev.on("storage-write", ({ name }: { name: string }) => {
    if (name !== "kp.cfg" || !cli) return;
    // The registry's transaction is open and the device has the new kp.cfg; its answer never comes.
    const c = cli;
    cli = undefined;
    h.hold();
    c.child.kill("SIGINT");
    void c.stderrMatches(/interrupted; stopping after the current line/).then(() => c.child.kill("SIGINT"));
  });
  try {
    cli = startCli(["provision", "--port", h.pty.path, "--board", "emulator", "--id", "sig-3", "--data-dir", dataDir, "--gateway", "127.0.0.1:7447", "--no-reboot"]);
    const r = await cli.done;
    assert.equal(r.code, 130, r.stderr);
    const recover = `keyproxy provision --port ${h.pty.path} --board emulator --data-dir ${dataDir} --recover`;
    assert.ok(r.stderr.includes(`quit at once; the registry holds only what was committed (the database drops the rest); run \`${recover}\``), r.stderr);
    const s = await openStore(dataDir);
    try {
      assert.equal(await s.getDevice("sig-3"), undefined, "the uncommitted entry is gone with the process");
    } finally {
      await s.close();
    }
    assert.ok(h.dev.storage.read(JOURNAL_FILE), "the device keeps its journal");
    h.release();
    const settled = await runCli(recover.split(" ").slice(1));
    assert.equal(settled.code, 0, settled.stderr);
    assert.match(settled.stdout, /an interrupted provisioning of sig-3 .* was undone/);
    assert.equal(h.text("kp.cfg"), undefined);
    for (const f of [CONFIG_NEW, CONFIG_OLD, JOURNAL_FILE]) assert.equal(h.dev.storage.read(f), undefined, `${f} is gone`);
  } finally {
    await h.stop();
  }
});
