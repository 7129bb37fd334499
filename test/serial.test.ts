// Flashing and provisioning over serial, through a real pseudo-terminal and the real `serialport`
// package, into an emulated handset whose console answers the Espruino REPL subset; then the handset
// boots what was flashed, joins and registers. Provisioning is cut at each step, and afterwards no
// half-provisioned state remains: the device's kp.cfg and the registry agree, and a failure before the
// commit leaves both exactly as they were.
import { before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import fc from "fast-check";
import Database from "better-sqlite3";
import { buildFirmware } from "../flash/build.ts";
import { crc32, jsByteString, EspruinoSerial, SerialError } from "../flash/serial.ts";
import { flashDevice, FlashError, STAGING_FILE, type FlashStep } from "../flash/flash.ts";
import { CONFIG_NEW, CONFIG_OLD, JOURNAL_FILE, provisionDevice, ProvisionError, type ProvisionStep } from "../flash/provision.ts";
import { EmulatedDevice } from "../emulator/device.ts";
import { attachPty, openPty } from "../emulator/serial.ts";
import { consoleHandset, TRANSPORTS } from "./support/console-handset.ts";
import { openStore, DB_FILE } from "../gateway/gateway.ts";
import { startGateway, tempDir, until } from "./support/harness.ts";

const text = (b: Uint8Array | undefined) => (b ? Buffer.from(b).toString("latin1") : undefined);

/** A powered emulated handset (board "emulator": TCP to the gateway in kp.cfg) behind a pty. */
async function handset(name = "pty") {
  const dev = new EmulatedDevice({ board: "emulator", storageDir: tempDir(`kp-${name}-`), name });
  const pty = await attachPty(dev);
  const output: string[] = [];
  const write = (pty.console as unknown as { write: (s: string) => void }).write;
  (pty.console as unknown as { write: (s: string) => void }).write = (s: string) => {
    output.push(s);
    write(s);
  };
  return { dev, pty, output, stop: async () => { await pty.close(); dev.powerOff(); } };
}

describe("serial protocol pieces", () => {
  test("crc32 matches the published check value and E.CRC32 on the emulated device", async () => {
    assert.equal(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
    const dev = new EmulatedDevice({ board: "emulator", storageDir: tempDir() });
    await dev.boot();
    try {
      fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        const lit = jsByteString(bytes);
        return (dev.eval(`E.CRC32(${lit})>>>0`) as number) === crc32(bytes);
      }), { numRuns: 60 });
    } finally {
      dev.powerOff();
    }
  });

  test("jsByteString is a JavaScript literal of exactly those bytes, with no control byte on the wire", async () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 600 }), (bytes) => {
      const lit = jsByteString(bytes);
      if (/[\x00-\x1f\x7f-\xff]/.test(lit)) return false;
      const back = (0, eval)(lit) as string;
      return back.length === bytes.length && [...back].every((c, i) => c.charCodeAt(0) === bytes[i]);
    }));
  });

  test("a pty with no device behind it: a clear error within the first-answer time", async () => {
    const pty = await openPty();
    pty.onData(() => {});
    try {
      const t0 = Date.now();
      await assert.rejects(EspruinoSerial.open({ path: pty.path, baudRate: 115200, firstAnswerMs: 800 }), (e: Error) =>
        e instanceof SerialError && e.message.startsWith(`no device answered on ${pty.path} within`));
      assert.ok(Date.now() - t0 < 3000);
    } finally {
      await pty.close();
    }
  });

  test("the console: echo, =result and prompt for typed lines; silence for \\x10 lines; Ctrl-C drops a line", async () => {
    const h = await handset("repl");
    try {
      h.pty.console.input("1+1\r");
      await h.pty.console.idle();
      assert.equal(h.output.join(""), "1+1\r\n=2\r\n>");
      h.output.length = 0;
      h.pty.console.input("\x10var secret=\"abc\"\n");
      h.pty.console.input("garbage(\x03\x10print(secret)\n");
      await h.pty.console.idle();
      assert.equal(h.output.join(""), "garbage(abc\r\n", "echo of the typed part, then only what the code printed");
    } finally {
      await h.stop();
    }
  });
});

describe("flash and provision through a pty", () => {
  let bundle: string;
  before(async () => {
    const b = await buildFirmware({ board: "emulator", outDir: tempDir("kp-build-") });
    assert.ok(b.ok, b.problems.join("\n"));
    bundle = b.code;
  });

  for (const transport of TRANSPORTS) test(`flash, provision, then the handset boots the flashed firmware, joins and registers (over ${transport})`, async () => {
    const t = await startGateway();
    const h = await consoleHandset(transport, "e2e");
    try {
      const steps: FlashStep[] = [];
      const progress: number[] = [];
      const r = await flashDevice({ port: h.port, noble: h.noble, board: "emulator", bundle, onStep: (s) => void steps.push(s), onProgress: (n) => void progress.push(n) });
      assert.equal(r.bytes, Buffer.byteLength(bundle));
      assert.equal(r.espruinoVersion, "2v29");
      assert.deepEqual(steps, ["connect", "check", "stop", "transfer", "verify", "switch", "reboot"]);
      assert.equal(progress.at(-1), r.bytes);
      assert.equal(text(h.dev.storage.read(".bootcde")), bundle);
      assert.equal(h.dev.storage.read(STAGING_FILE), undefined, "no staging file left");
      // No kp.cfg yet: the flashed firmware booted and says so.
      await until(() => h.output.join("").includes("KP not provisioned"), "the flashed firmware ran", 5000);

      const gw = `127.0.0.1:${t.gw.address.port}`;
      if (transport === "ble") {
        // The key would cross the air unencrypted: refused without the operator's consent, unchanged.
        await assert.rejects(provisionDevice({ port: h.port, noble: h.noble, board: "emulator", id: "pty-1", gateway: gw, dataDir: t.dataDir }), (e: Error) =>
          e instanceof ProvisionError && e.state === "unchanged" && /BLE sniffer.*--key-over-ble.*nothing was changed/.test(e.message));
        assert.equal(h.dev.storage.read("kp.cfg"), undefined);
        assert.equal((await t.gw.store.getDevice("pty-1")), undefined);
      }
      const p = await provisionDevice({ port: h.port, noble: h.noble, keyOverBle: true, board: "emulator", id: "pty-1", gateway: gw, dataDir: t.dataDir, lifetime: 600 });
      assert.deepEqual(p, { id: "pty-1", board: "emulator", replaced: false, recovered: undefined });
      const cfg = JSON.parse(text(h.dev.storage.read("kp.cfg"))!);
      const row = (await t.gw.store.getDevice("pty-1"))!;
      assert.equal(cfg.key, Buffer.from(row.rootKey).toString("hex"));
      assert.equal(cfg.gw, gw);
      assert.ok(!h.output.join("").includes(cfg.key), "the key never comes back across the line");
      if (transport === "ble") {
        // Over Bluetooth files went as packets (the emulator says Espruino 2v29), never as lines of
        // JavaScript: a FILE_SEND packet for the staging file and for kp.cfg.new went out.
        const sent = Buffer.concat(h.peripheral!.writes).toString("latin1");
        assert.match(sent, /\x10\x01[\x60-\x7f][\s\S]\{"fn":"kp\.fw\.new"/);
        assert.match(sent, /\x10\x01[\x60-\x7f][\s\S]\{"fn":"kp\.cfg\.new"/);
        assert.ok(!sent.includes("require(\"Storage\").write(\"kp.fw.new\""), "no Storage.write line for the firmware");
      }
      for (const f of [CONFIG_NEW, CONFIG_OLD, JOURNAL_FILE]) assert.equal(h.dev.storage.read(f), undefined);

      // provision rebooted the device: the flashed .bootcde now joins and registers with the key.
      const registered = () => {
        try {
          return (h.dev.eval("KP.status()") as { registered: boolean }).registered;
        } catch {
          return false; // KP is not defined until the firmware has booted
        }
      };
      await until(registered, "registered", 15000);
      assert.equal(t.events("joined")[0].device, "pty-1");
      assert.ok((await t.gw.store.getRegistration("pty-1")));

      // The id is taken now: a second provisioning needs --replace, and changes nothing without it.
      await assert.rejects(provisionDevice({ port: h.port, noble: h.noble, keyOverBle: true, board: "emulator", id: "pty-1", gateway: gw, dataDir: t.dataDir }), (e: Error) =>
        e instanceof ProvisionError && e.state === "unchanged" && /--replace/.test(e.message));
      assert.equal(JSON.parse(text(h.dev.storage.read("kp.cfg"))!).key, cfg.key);
    } finally {
      await h.stop();
      await t.gw.stop();
    }
  });

  test("flash refuses a different board and an over-budget bundle, and changes nothing", async () => {
    const h = await handset("board");
    h.dev.storage.write(".bootcde", "print('old firmware')");
    try {
      await assert.rejects(flashDevice({ port: h.pty.path, board: "esp32", bundle, baudRate: 115200 }), (e: Error) =>
        e instanceof FlashError && /is a LINUX, not a ESP32/.test(e.message));
      await assert.rejects(flashDevice({ port: "/dev/nonexistent-never-opened", board: "emulator", bundle, budgetBytes: 100 }), (e: Error) =>
        e instanceof FlashError && /over .* budget of 100 bytes; nothing was written/.test(e.message));
      assert.equal(text(h.dev.storage.read(".bootcde")), "print('old firmware')");
      assert.deepEqual(h.dev.storage.list(), [".bootcde"]);
    } finally {
      await h.stop();
    }
  });

  for (const transport of TRANSPORTS) test(`a failed verification or a cut line during the transfer leaves the old firmware whole (over ${transport})`, async () => {
    const h = await consoleHandset(transport, "verify");
    h.dev.storage.write(".bootcde", "print('old firmware')");
    try {
      await assert.rejects(flashDevice({
        port: h.port, noble: h.noble, board: "emulator", bundle,
        onStep: (s) => { if (s === "verify") h.dev.storage.write(STAGING_FILE, "damaged in flash"); },
      }), (e: Error) => e instanceof FlashError && /verification failed: .*\.bootcde was not touched/.test(e.message));
      assert.equal(text(h.dev.storage.read(".bootcde")), "print('old firmware')");
      assert.equal(h.dev.storage.read(STAGING_FILE), undefined);

      let chunks = 0;
      const onWrite = ({ name }: { name: string }) => { if (name === STAGING_FILE && ++chunks === 2) h.cut(); };
      h.dev.on("storage-write", onWrite);
      await assert.rejects(flashDevice({ port: h.port, noble: h.noble, board: "emulator", bundle }), (e: Error) => e instanceof SerialError && /closed|did not answer|was lost/.test(e.message));
      h.dev.off("storage-write", onWrite);
      assert.equal(text(h.dev.storage.read(".bootcde")), "print('old firmware')");
    } finally {
      await h.stop();
    }
  });

  // ---- provisioning cut at each step ----------------------------------------------------------

  type Cut = { name: string; at?: ProvisionStep; how: "line" | "registry-fails" | "registry-locked" | "tamper" | "line-after-switch" };
  const CUTS: Cut[] = [
    { name: "line dies before prepare", at: "prepare", how: "line" },
    { name: "line dies before the key is staged", at: "stage", how: "line" },
    { name: "line dies before verification", at: "verify", how: "line" },
    { name: "staged copy fails verification", at: "verify", how: "tamper" },
    { name: "line dies before the registry decides", at: "decide", how: "line" },
    { name: "registry refuses the entry", at: "decide", how: "registry-fails" },
    { name: "registry is locked", at: "decide", how: "registry-locked" },
    { name: "line dies before the switch", at: "switch", how: "line" },
    { name: "line dies right after the switch landed, before its answer", how: "line-after-switch" },
    // COMMIT needs no line: it lands, and the clean-up after it finds the line dead (rolled forward).
    { name: "line dies at the commit", at: "commit", how: "line" },
    { name: "line dies before clean-up", at: "cleanup", how: "line" },
  ];

  for (const transport of TRANSPORTS) for (const withOld of [false, true]) {
    for (const cut of CUTS) {
      test(`provisioning cut over ${transport}: ${cut.name} (${withOld ? "re-provisioning a device" : "a new device"})`, async () => {
        const dataDir = tempDir("kp-reg-");
        const h = await consoleHandset(transport, "cut");
        const id = "cut-1";
        const oldCfg = JSON.stringify({ id, key: "00112233445566778899aabbccddeeff", gw: "127.0.0.1:1", life: 60 });
        if (withOld) {
          h.dev.storage.write("kp.cfg", oldCfg);
          h.dev.storage.write("kp.ctr", "41");
          const s = await openStore(dataDir);
          await s.addDevice(id, Buffer.from("00112233445566778899aabbccddeeff", "hex"), "emulator", 1);
          await s.advanceJoinCounter(id, 41);
          await s.close();
        }
        const registryBefore = await registrySnapshot(dataDir, id);
        let lock: Database.Database | undefined;
        const onWrite = ({ name }: { name: string }) => { if (name === "kp.cfg") h.cut(); };
        if (cut.how === "line-after-switch") h.dev.on("storage-write", onWrite);
        let err: unknown;
        try {
          await provisionDevice({
            port: h.port, noble: h.noble, keyOverBle: true, board: "emulator", id, gateway: "127.0.0.1:7447", dataDir, replace: withOld, reboot: false, registryBusyMs: 200,
            onStep: (s) => {
              if (s !== cut.at) return;
              if (cut.how === "line") h.cut();
              if (cut.how === "tamper") h.dev.storage.write(CONFIG_NEW, "{\"id\":\"cut-1\",\"key\":\"not the one sent\"}");
              if (cut.how === "registry-fails") {
                const db = new Database(join(dataDir, DB_FILE));
                db.exec("CREATE TRIGGER refuse BEFORE INSERT ON devices BEGIN SELECT RAISE(ABORT, 'registry refuses'); END");
                db.close();
              }
              if (cut.how === "registry-locked") {
                lock = new Database(join(dataDir, DB_FILE));
                lock.exec("BEGIN EXCLUSIVE");
              }
            },
          });
        } catch (e) {
          err = e;
        } finally {
          h.dev.off("storage-write", onWrite);
          if (lock) { lock.exec("ROLLBACK"); lock.close(); }
        }
        assert.ok(err instanceof ProvisionError, `provisioning fails with a ProvisionError, got ${err}`);
        assert.ok(!(err as Error).message.match(/[0-9a-f]{32}/), "no key in the message");
        const committed = cut.at === "commit" || cut.at === "cleanup";
        if (!committed) assert.deepEqual(await registrySnapshot(dataDir, id), registryBefore, "the registry is as it was");

        if (err.state === "needs-recovery") {
          // The line was cut: reconnect the device (a new pty, or back in range) and settle it, as the
          // message says.
          assert.match(err.message, /--recover/);
          await h.reconnect();
          const r = await provisionDevice({ port: h.port, noble: h.noble, keyOverBle: true, board: "emulator", id: "", gateway: "127.0.0.1:7447", dataDir, recoverOnly: true, reboot: false });
          if (cut.at === "prepare") assert.equal(r.recovered, undefined, "nothing had reached the device");
          else assert.equal(r.recovered?.outcome, committed ? "rolled-forward" : "rolled-back");
        } else {
          assert.equal(err.state, "rolled-back");
          assert.match(err.message, /Rolled back: the registry and the device are as they were/);
        }
        try {
          // Settled: no staging files, the join counter untouched, and device and registry agree.
          for (const f of [CONFIG_NEW, CONFIG_OLD, JOURNAL_FILE]) assert.equal(h.dev.storage.read(f), undefined, `${f} is gone`);
          assert.equal(text(h.dev.storage.read("kp.ctr")), withOld ? "41" : undefined);
          const cfg = text(h.dev.storage.read("kp.cfg"));
          const reader = await openStore(dataDir);
          const row = await reader.getDevice(id);
          await reader.close();
          if (committed) {
            assert.equal(JSON.parse(cfg!).key, Buffer.from(row!.rootKey).toString("hex"), "rolled forward: both have the new key");
            assert.notEqual(JSON.parse(cfg!).key, "00112233445566778899aabbccddeeff");
          } else {
            assert.equal(cfg, withOld ? oldCfg : undefined, "the device has its old kp.cfg, or none");
            assert.deepEqual(await registrySnapshot(dataDir, id), registryBefore, "the registry has its old entry, or none");
          }
        } finally {
          await h.stop();
        }
      });
    }
  }
});

describe("the CLI", () => {
  test("--help, usage errors and exit codes; provisioning prints no key", async () => {
    const help = await run(["flash", "--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--port <tty>/);
    assert.equal((await run(["provision", "--help"])).code, 0);
    assert.equal((await run(["flash", "--board", "emulator"])).code, 2, "no --port");
    assert.equal((await run(["provision", "--port", "/dev/null", "--id", "bad id!"])).code, 2);

    const h = await handset("cli");
    const dataDir = tempDir("kp-cli-");
    try {
      const r = await run(["provision", "--port", h.pty.path, "--board", "emulator", "--id", "cli-1", "--data-dir", dataDir, "--gateway", "127.0.0.1:7447", "--no-reboot"]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^provisioned cli-1 \(emulator\)/);
      const key = JSON.parse(text(h.dev.storage.read("kp.cfg"))!).key as string;
      assert.match(key, /^[0-9a-f]{32}$/);
      assert.ok(!(r.stdout + r.stderr).includes(key), "the key is not on the terminal");
      const again = await run(["provision", "--port", h.pty.path, "--board", "emulator", "--id", "cli-1", "--data-dir", dataDir, "--no-reboot"]);
      assert.equal(again.code, 1);
      assert.match(again.stderr, /--replace/);
      const wrong = await run(["flash", "--port", h.pty.path, "--board", "puckjs", "--bundle", "package.json"]);
      assert.equal(wrong.code, 1);
      assert.match(wrong.stderr, /not a PUCKJS/);

      // Bluetooth ports: usage errors (2) before anything is opened.
      const bare = await run(["flash", "--port", "ble:", "--board", "puckjs", "--bundle", "package.json"]);
      assert.equal(bare.code, 2, bare.stderr);
      assert.match(bare.stderr, /ble:<name it advertises>/);
      const noRadio = await run(["flash", "--port", "ble:kp-x", "--board", "esp32", "--bundle", "package.json"]);
      assert.equal(noRadio.code, 2, noRadio.stderr);
      assert.match(noRadio.stderr, /esp32 has none/);
      const stray = await run(["provision", "--port", h.pty.path, "--board", "emulator", "--id", "cli-2", "--data-dir", dataDir, "--key-over-ble"]);
      assert.equal(stray.code, 2, stray.stderr);
      // Provisioning over Bluetooth without consent to the key crossing the air: refused, nothing changed.
      const before = await registrySnapshot(dataDir, "ble-1");
      const refused = await run(["provision", "--port", "ble:kp-ble-1", "--id", "ble-1", "--data-dir", dataDir]);
      assert.equal(refused.code, 1, refused.stderr);
      assert.match(refused.stderr, /BLE sniffer.*--key-over-ble/);
      assert.equal(await registrySnapshot(dataDir, "ble-1"), before);
      // With consent, on this machine (no Bluetooth adapter, or the optional library missing): a clear
      // error naming the fix, exit 1, nothing changed.
      const noAdapter = await run(["provision", "--port", "ble:kp-ble-1", "--id", "ble-1", "--data-dir", dataDir, "--key-over-ble"]);
      assert.equal(noAdapter.code, 1, noAdapter.stderr);
      assert.match(noAdapter.stderr, /cannot use Bluetooth for ble:kp-ble-1: .*(adapter|optional package)/);
      assert.equal(await registrySnapshot(dataDir, "ble-1"), before);
    } finally {
      await h.stop();
    }
  });
});

/** The device's row and registration, as comparable text. */
async function registrySnapshot(dataDir: string, id: string): Promise<string> {
  const s = await openStore(dataDir);
  try {
    return JSON.stringify({ d: await s.getDevice(id), r: await s.getRegistration(id) }, (_k, v) => (v instanceof Uint8Array ? Buffer.from(v).toString("hex") : v));
  } finally {
    await s.close();
  }
}

function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, ["bin/keyproxy.js", ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d) => (stdout += d));
    p.stderr.on("data", (d) => (stderr += d));
    p.on("close", (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}
