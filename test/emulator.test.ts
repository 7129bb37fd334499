// The device emulator: Storage durability, the Espruino-shaped world, Espruino's scoping quirks, kills
// from inside event handlers, the memory limit, the transports, and the variable estimate's calibration.

import { test, describe, after } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { EmulatedDevice, type AesObservation, loadBundle } from "../emulator/device.ts";
import { REMOVED_GLOBALS, REMOVED_MEMBERS } from "../emulator/world.ts";
import { rewriteForEspruino } from "../emulator/rewrite.ts";
import { crc32 } from "../emulator/espruino-crypto.ts";
import { buildFirmware } from "../flash/build.ts";
import { encodeFrame } from "../firmware/proto/frame.ts";

const devices: EmulatedDevice[] = [];
after(() => {
  for (const d of devices) d.powerOff();
});

function tempDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), "kp-emu-"));
}

function device(board: string, extra: { storageDir?: string; gateway?: { host: string; port: number } } = {}): EmulatedDevice {
  const d = new EmulatedDevice({ board, storageDir: extra.storageDir ?? tempDir(), gateway: extra.gateway, name: board });
  devices.push(d);
  return d;
}

function until(check: () => boolean, what: string, ms = 3000): Promise<void> {
  const start = Date.now();
  return new Promise((resolve, reject) => {
    const tick = () => {
      if (check()) return resolve();
      if (Date.now() - start > ms) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, 5);
    };
    tick();
  });
}

/** A local TCP server that records every connection's bytes. */
async function recordingServer(onConnection?: (s: net.Socket) => void) {
  const conns: { socket: net.Socket; bytes: Buffer; closed: boolean }[] = [];
  const server = net.createServer((socket) => {
    const c = { socket, bytes: Buffer.alloc(0), closed: false };
    conns.push(c);
    socket.on("data", (b) => (c.bytes = Buffer.concat([c.bytes, b])));
    socket.on("close", () => (c.closed = true));
    socket.on("error", () => {});
    onConnection?.(socket);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    conns,
    close: () => new Promise<void>((r) => {
      for (const c of conns) c.socket.destroy();
      server.close(() => r());
    }),
  };
}

describe("Storage", () => {
  test("survives reboot and a new EmulatedDevice on the same directory, bytes intact", async () => {
    const dir = tempDir();
    const d = device("puckjs", { storageDir: dir });
    await d.boot();
    d.eval(`var S = require("Storage");
      S.write("bin", new Uint8Array([0, 1, 127, 128, 255]));
      S.writeJSON("cfg", { id: "dev-1", n: 7 });
      S.write("chunked", "ab", 0, 6); S.write("chunked", "cd", 2); S.write("chunked", "ef", 4);`);
    await d.reboot();
    assert.deepEqual(d.eval(`Array.prototype.slice.call(new Uint8Array(require("Storage").readArrayBuffer("bin")))`), [0, 1, 127, 128, 255]);
    assert.equal(d.eval(`require("Storage").read("chunked")`), "abcdef");
    d.powerOff();

    const again = device("puckjs", { storageDir: dir });
    await again.boot();
    assert.deepEqual(again.eval(`require("Storage").readJSON("cfg")`), { id: "dev-1", n: 7 });
    assert.deepEqual(again.eval(`require("Storage").list()`), ["bin", "cfg", "chunked"]);
    assert.deepEqual([...again.storage.read("bin")!], [0, 1, 127, 128, 255]);
    again.storage.write("fromHost", "xyz");
    assert.equal(again.eval(`require("Storage").read("fromHost")`), "xyz");
  });

  test("runs .bootcde at boot, as Espruino does", async () => {
    const d = device("puckjs");
    d.storage.write(".bootcde", `require("Storage").write("booted", "" + (Number(require("Storage").read("booted") || 0) + 1));`);
    await d.boot();
    await d.reboot();
    assert.equal(new TextDecoder().decode(d.storage.read("booted")), "2");
  });

  test("refuses long names and writes past capacity, leaving the old content", async () => {
    const d = device("puckjs");
    await d.boot();
    assert.throws(() => d.eval(`require("Storage").write("a".repeat(29), "x")`), /too long/);
    d.eval(`require("Storage").write("big", "old")`);
    assert.throws(() => d.eval(`require("Storage").write("big", new Uint8Array(41 * 1024))`), /Not enough free Storage/);
    assert.equal(d.eval(`require("Storage").read("big")`), "old");
    assert.ok((d.eval(`require("Storage").getFree()`) as number) < 40 * 1024);
  });

  test("a temp file left by a host crash mid-write is ignored and cleaned up", async () => {
    const dir = tempDir();
    fs.writeFileSync(path.join(dir, "kept"), "old");
    fs.writeFileSync(path.join(dir, ".tmp-999-1"), "half-written new content");
    const d = device("puckjs", { storageDir: dir });
    await d.boot();
    assert.deepEqual(d.eval(`require("Storage").list()`), ["kept"]);
    assert.equal(d.eval(`require("Storage").read("kept")`), "old");
    assert.equal(fs.existsSync(path.join(dir, ".tmp-999-1")), false);
  });
});

describe("the world the bundle sees", () => {
  test("every global and member Espruino lacks is absent; what it has still works", async () => {
    const d = device("puckjs");
    await d.boot();
    for (const g of REMOVED_GLOBALS) assert.equal(d.eval(`typeof ${g}`), "undefined", g);
    for (const m of REMOVED_MEMBERS) {
      const expr = m.startsWith("TypedArray.") ? `Object.getPrototypeOf(Uint8Array).${m.slice(11)}` : m;
      assert.equal(d.eval(`typeof ${expr}`), "undefined", m);
    }
    assert.equal(d.eval(`typeof Uint8Array.from`), "undefined");
    // QuickJS's internals still use symbols and iterators: for-of, Promise.all, JSON, classes.
    assert.equal(d.eval(`var t = 0; for (const x of new Uint8Array([1, 2, 3])) t += x; t`), 6);
    assert.deepEqual(d.eval(`class A { get v() { return 2; } } [new A().v, JSON.parse("[1]")[0], 7 ?? 8]`), [2, 1, 7]);
    d.eval(`Promise.all([Promise.resolve(1)]).then(function (v) { globalThis.got = v[0]; })`);
    assert.equal(d.eval(`got`), 1);
    assert.deepEqual(d.eval(`process.env`), { VERSION: "2v29", BOARD: "PUCKJS" });
  });

  test("E, getTime, print and timers behave like Espruino's", async () => {
    const d = device("puckjs");
    const logs: string[] = [];
    d.on("log", (l: string) => logs.push(l));
    await d.boot();
    assert.deepEqual(d.eval(`Array.prototype.slice.call(E.toUint8Array("a\\xff", [1, 2], 3))`), [97, 255, 1, 2, 3]);
    assert.equal(d.eval(`E.toString(new Uint8Array([104, 105, 255]))`), "hi\xff");
    assert.equal(d.eval(`E.CRC32("123456789")`), 0xcbf43926); // the CRC-32 check value
    const r = d.eval(`[E.hwRand(), E.hwRand()]`) as number[];
    assert.ok(r.every((x) => Number.isInteger(x) && x >= -(2 ** 31) && x < 2 ** 31) && r[0] !== r[1]);
    const t = d.eval(`getTime()`) as number;
    assert.ok(Math.abs(t - Date.now() / 1000) < 5);
    d.eval(`print("x", 1, [2], { a: 3 }); console.log(new Uint8Array([4]))`);
    assert.deepEqual(logs.slice(-2), ['x 1 [2] { "a": 3 }', "new Uint8Array([4])"]);
    // clearTimeout(undefined) is an error on Espruino (it would otherwise clear everything).
    assert.throws(() => d.eval(`clearTimeout(undefined)`), /not allowed/);
    d.eval(`var ticks = 0; var iv = setInterval(function () { if (++ticks === 3) clearInterval(iv); }, 5);
      setTimeout(function (a, b) { globalThis.args = a + b; }, 5, 2, 3);`);
    await until(() => d.eval(`ticks`) === 3 && d.eval(`globalThis.args`) === 5, "timers");
  });

  test("an uncaught exception in a callback is printed like Espruino and the device keeps running", async () => {
    const d = device("puckjs");
    const uncaught: string[] = [];
    const logs: string[] = [];
    d.on("uncaught", (m: string) => uncaught.push(m));
    d.on("log", (l: string) => logs.push(l));
    d.storage.write(".bootcde", `setTimeout(function () { throw new Error("boom"); }, 1);
      setTimeout(function () { globalThis.after = true; }, 20);`);
    await d.boot();
    await until(() => d.eval(`globalThis.after`) === true, "the later timer");
    assert.deepEqual(uncaught, ["Error: boom"]);
    assert.ok(logs.includes("Uncaught Error: boom"));
    assert.equal(d.running, true);
  });

  test("crypto quirks reach the VM: AES-CTR ignores the iv; observations come out as 'aes' events", async () => {
    const d = device("puckjs");
    const seen: AesObservation[] = [];
    d.on("aes", (o: AesObservation) => seen.push(o));
    await d.boot();
    const [a, b, c] = d.eval(`var C = require("crypto"), key = new Uint8Array(16), msg = new Uint8Array(32);
      function ctr(iv) { return Array.prototype.slice.call(new Uint8Array(C.AES.encrypt(msg, key, { iv: iv, mode: "CTR" }))); }
      var cbc = Array.prototype.slice.call(new Uint8Array(C.AES.encrypt(msg, key, { iv: E.toUint8Array([1]), mode: "CBC" })));
      [ctr(new Uint8Array(16)), ctr(new Uint8Array(16).fill(7)), cbc]`) as number[][];
    assert.deepEqual(a, b, "CTR output does not depend on the iv");
    assert.notDeepEqual(a, c);
    assert.deepEqual(seen.map((o) => o.op), ["cbc-encrypt", "ctr", "ctr"]);
    assert.equal(d.eval(`typeof AES`), "undefined", "Puck.js has no global AES");
    assert.equal(
      Buffer.from(d.eval(`require("crypto").SHA256("abc")`) as ArrayBuffer).toString("hex"),
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    );
  });

  test("Bangle.js 2 has the global AES-CCM and no require('crypto').AES", async () => {
    const d = device("banglejs2");
    await d.boot();
    assert.equal(d.eval(`typeof require("crypto").AES`), "undefined");
    const out = d.eval(`var k = new Uint8Array(16), n = new Uint8Array(13), m = E.toUint8Array("hello");
      var r = AES.ccmEncrypt(m, k, n, 8);
      [r.data.byteLength, r.tag.byteLength, E.toString(AES.ccmDecrypt(new Uint8Array(r.data), k, n, new Uint8Array(r.tag)))]`);
    assert.deepEqual(out, [5, 8, "hello"]);
  });
});

describe("Espruino's scoping, emulated", () => {
  test("a function called before its declaration fails; declared first, it works", async () => {
    const d = device("puckjs");
    await d.boot();
    assert.throws(() => d.eval(`early(); function early() { return 1; }`), /not a function|not defined/);
    assert.equal(d.eval(`function first() { return 2; } first()`), 2);
    // Inside a function body too, and mutual recursion declared before the call still works.
    assert.throws(() => d.eval(`(function () { inner(); function inner() {} })()`), /not a function|not defined/);
    assert.equal(d.eval(`function isEven(n) { return n === 0 ? true : isOdd(n - 1); }
      function isOdd(n) { return n === 0 ? false : isEven(n - 1); } isEven(10)`), true);
  });

  test("a `for (let ...)` binding is shared by every iteration's closures", async () => {
    const d = device("puckjs");
    await d.boot();
    assert.deepEqual(d.eval(`var fs = []; for (let i = 0; i < 3; i++) fs.push(function () { return i; }); fs.map(function (f) { return f(); })`), [3, 3, 3]);
    assert.deepEqual(d.eval(`var gs = []; for (const x of [1, 2, 3]) gs.push(function () { return x; }); gs.map(function (f) { return f(); })`), [3, 3, 3]);
    // Labels still reach the loop.
    assert.equal(d.eval(`var n = 0; outer: for (let i = 0; i < 3; i++) { for (let j = 0; j < 3; j++) { if (j === 1) continue outer; n++; } } n`), 3);
    // Node (V8) gives [0, 1, 2] for the same loop: the rewrite is what makes the difference.
    const fsV8: (() => number)[] = [];
    for (let i = 0; i < 3; i++) fsV8.push(() => i);
    assert.deepEqual(fsV8.map((f) => f()), [0, 1, 2]);
  });

  test("the rewrite leaves everything else byte for byte", () => {
    const src = `/* c */ const a = 1; x(\`t\${a}\`); class K { m() {} }`;
    assert.equal(rewriteForEspruino(src), src);
    assert.equal(rewriteForEspruino(`function f(a){}`), `var f = function f(a){};`);
  });
});

describe("kills from inside event handlers", () => {
  test("a kill inside a 'storage-write' handler stops the next statement's side effects, even under try/catch", async () => {
    const d = device("puckjs");
    const logs: string[] = [];
    d.on("log", (l: string) => logs.push(l));
    d.on("storage-write", (w: { name: string; bytes: Uint8Array }) => {
      if (w.name === "counter") d.powerOff();
    });
    d.storage.write(".bootcde", `var S = require("Storage");
      try { S.write("counter", "1"); } catch (e) { }
      print("after");
      S.write("next", "2");`);
    await d.boot();
    assert.equal(d.running, false);
    assert.deepEqual(d.storage.list(), [".bootcde", "counter"], "the write before the kill is durable, nothing after it ran");
    assert.deepEqual(logs, []);
  });

  test("a reboot between persisting the join counter and sending the join never reuses the counter", async () => {
    const server = await recordingServer();
    try {
      const d = device("esp32");
      let killedOnce = false;
      d.on("storage-write", (w: { name: string }) => {
        if (w.name === "joinctr" && !killedOnce) {
          killedOnce = true;
          void d.reboot();
        }
      });
      d.storage.write(".bootcde", `var S = require("Storage");
        var n = Number(S.read("joinctr") || 0) + 1;
        S.write("joinctr", "" + n);
        var sock = require("net").connect({ host: "127.0.0.1", port: ${server.port} }, function () { sock.write("join:" + n); });`);
      await d.boot();
      await until(() => server.conns.some((c) => c.bytes.length > 0), "the join");
      const joins = server.conns.map((c) => c.bytes.toString()).filter((s) => s);
      assert.deepEqual(joins, ["join:2"], "counter 1 was persisted, then the device died before sending it");
      assert.equal(new TextDecoder().decode(d.storage.read("joinctr")), "2");
    } finally {
      await server.close();
    }
  });

  test("a kill inside a 'transport-write' handler means the bytes never reach the TCP server", async () => {
    const server = await recordingServer();
    try {
      const d = device("esp32");
      let writes = 0;
      d.on("transport-write", () => {
        if (++writes === 2) d.powerOff();
      });
      d.storage.write(".bootcde", `var sock = require("net").connect({ host: "127.0.0.1", port: ${server.port} }, function () {
          sock.write("first;"); sock.write("second;"); sock.write("third;");
        });`);
      await d.boot();
      await until(() => server.conns.length === 1 && server.conns[0].closed, "the device's socket to close");
      assert.equal(server.conns[0].bytes.toString(), "first;");
      assert.equal(d.running, false);
    } finally {
      await server.close();
    }
  });
});

describe("memory", () => {
  test("a runaway allocation hits the memory limit; the host lives and so does the device", async () => {
    const d = device("puckjs");
    const logs: string[] = [];
    d.on("log", (l: string) => logs.push(l));
    await d.boot();
    assert.throws(() => d.eval(`var hog = []; for (;;) hog.push(new Uint8Array(1024));`), /out of memory/);
    const limitHit = d.memory().heapBytes;
    assert.ok(limitHit > 2630 * 13, "the limit is above the board's raw variable bytes");
    d.eval(`hog = undefined`);
    assert.equal(d.eval(`1 + 1`), 2);
    // The same from a timer: reported as uncaught, printed like Espruino.
    const uncaught: string[] = [];
    d.on("uncaught", (m: string) => uncaught.push(m));
    d.eval(`setTimeout(function () { var h = []; for (;;) h.push("x".repeat(100) + h.length); }, 1)`);
    await until(() => uncaught.length > 0, "the out-of-memory report");
    assert.match(uncaught[0], /out of memory/);
    assert.ok(logs.includes("ERROR: Out of Memory!"));
    assert.equal(d.eval(`2 + 2`), 4);
  });

  test("process.memory() reports Espruino variables, and they grow with what the code holds", async () => {
    const d = device("puckjs");
    await d.boot();
    const before = d.eval(`process.memory()`) as { usage: number; total: number; free: number };
    assert.equal(before.total, 2630);
    assert.equal(before.usage + before.free, 2630);
    d.eval(`var held = []; for (var i = 0; i < 200; i++) held.push({ a: i });`);
    const grown = d.memory().estimatedVars - before.usage;
    // 200 objects, 200 properties, 200 array elements: about 600 variables on Espruino.
    assert.ok(grown > 550 && grown < 700, `grew by ${grown}`);
  });

  test("calibration: tweetnacl lands in design.md's measured 1,461-2,082 Puck.js variables", async () => {
    for (const file of ["nacl.js", "nacl-fast.js"]) {
      const d = device("puckjs");
      await d.boot();
      d.eval(`var module = { exports: {} };`);
      const before = d.memory().estimatedVars;
      d.eval(await loadBundle(path.join("node_modules", "tweetnacl", file)));
      assert.equal(d.eval(`typeof module.exports.secretbox`), "function", `${file} loaded`);
      const cost = d.memory().estimatedVars - before;
      assert.ok(cost >= 1461 && cost <= 2082, `${file}: ${cost} variables`);
      d.powerOff();
    }
  });
});

describe("transports", () => {
  test("net carries bytes both ways to a real local TCP server, binary intact", async () => {
    const server = await recordingServer((s) => s.once("data", () => s.write(Buffer.from([0x70, 0x6f, 0x6e, 0x67, 0x00, 0xff]))));
    try {
      const d = device("esp32");
      await d.boot();
      d.eval(`var got = "", closed = false;
        var sock = require("net").connect({ host: "127.0.0.1", port: ${server.port} }, function () {
          sock.write(new Uint8Array([0x70, 0x69, 0x6e, 0x67, 0x00, 0xff]));
        });
        sock.on("data", function (s) { got += s; if (got.length === 6) sock.end(); });
        sock.on("close", function () { closed = true; });`);
      await until(() => d.eval(`closed`) === true, "the socket to close");
      assert.equal(d.eval(`got`), "pong\x00\xff");
      assert.deepEqual([...server.conns[0].bytes], [0x70, 0x69, 0x6e, 0x67, 0x00, 0xff]);
      assert.equal(d.eval(`typeof Bluetooth`), "undefined", "ESP32 has no BLE UART here");
    } finally {
      await server.close();
    }
  });

  test("while the console is on Bluetooth, the central's bytes go to the REPL, not to Bluetooth.on(\"data\")", async () => {
    const server = await recordingServer((s) => s.write(Buffer.from("hello")));
    try {
      const d = device("puckjs", { gateway: { host: "127.0.0.1", port: server.port } });
      d.storage.write(".bootcde", `var got = 0; Bluetooth.on("data", function (s) { got += s.length; });`);
      const logs: string[] = [];
      d.on("log", (l: string) => logs.push(l));
      await d.boot();
      await until(() => logs.some((l) => l.includes("5 bytes from the BLE central went to the REPL")), "the bytes typed into the REPL");
      assert.equal(d.eval("got"), 0);
    } finally {
      await server.close();
    }
  });

  test("the BLE UART double bridges to the gateway over TCP, in 20-byte pieces, and reconnects; the console moves as on a board", async () => {
    const payload = Buffer.from(Array.from({ length: 50 }, (_, i) => (i * 37) & 255));
    const server = await recordingServer((s) => s.write(payload));
    try {
      const d = device("puckjs", { gateway: { host: "127.0.0.1", port: server.port } });
      d.storage.write(".bootcde", `var pieces = [], connects = 0, disconnects = 0;
        var consoles = [];
        NRF.on("connect", function () { connects++; consoles.push(E.getConsole()); E.setConsole("Serial1"); });
        NRF.on("disconnect", function () { disconnects++; });
        Bluetooth.on("data", function (s) { pieces.push(s.length); Bluetooth.write(s); });`);
      await d.boot();
      await until(() => server.conns.length === 1 && server.conns[0].bytes.length === 50, "the echo");
      assert.deepEqual(server.conns[0].bytes, payload);
      assert.deepEqual(d.eval(`pieces`), [20, 20, 10]);
      server.conns[0].socket.destroy();
      await until(() => server.conns.length === 2, "the reconnect", 3000);
      await until(() => d.eval(`connects`) === 2, "the second connect");
      assert.equal(d.eval(`disconnects`), 1);
      assert.deepEqual(d.eval(`consoles`), ["Bluetooth", "Bluetooth"], "a central's connect moves the console to Bluetooth");
      assert.throws(() => d.eval(`require("net")`), /Module net not found/, "Puck.js has no TCP");
    } finally {
      await server.close();
    }
  });

  test("provisioned with --ble-repl, the firmware shares the BLE UART: a central whose first byte is not a frame's gets the REPL, a frame-first one the link", async () => {
    const build = await buildFirmware({ board: "puckjs", outDir: tempDir() });
    assert.ok(build.ok, build.problems.join("\n"));
    // After the handset's join frame: first a developer's line, then (next connection) a keyproxy frame.
    const server = await recordingServer((s) => {
      const developer = server.conns.length === 1;
      s.once("data", () => s.write(developer ? "1+1\n" : encodeFrame(new Uint8Array([0x0a]), crc32)));
    });
    try {
      const d = device("puckjs", { gateway: { host: "127.0.0.1", port: server.port } });
      d.storage.write("kp.cfg", JSON.stringify({ id: "emu-ble", key: "0123456789abcdef0123456789abcdef", repl: 1 }));
      d.storage.write(".bootcde", build.code);
      const logs: string[] = [];
      d.on("log", (l: string) => logs.push(l));
      const typed = () => logs.filter((l) => l.includes("went to the REPL"));
      await d.boot();
      await until(() => typed().length === 1, "the developer's line typed into the REPL", 10_000);
      assert.match(typed()[0], /\(4 bytes from the BLE central/);
      assert.equal(d.eval(`E.getConsole()`), "Bluetooth", "the console is back on Bluetooth");
      assert.deepEqual(d.eval(`[KP.status().state, KP.status().dropped]`), ["down", 0], "the link let go and got nothing");
      server.conns[0].socket.destroy();
      await until(() => d.eval(`KP.status().dropped`) === 1, "the second central's frame at the link", 10_000);
      assert.equal(d.eval(`KP.status().state`), "joining");
      assert.notEqual(d.eval(`E.getConsole()`), "Bluetooth");
      assert.equal(typed().length, 1, "nothing of the keyproxy central went to the REPL");
    } finally {
      await server.close();
    }
  });

  test("provisioned without --ble-repl (the default), every central is the link's: a developer's line never reaches the REPL", async () => {
    const build = await buildFirmware({ board: "puckjs", outDir: tempDir() });
    assert.ok(build.ok, build.problems.join("\n"));
    // After the handset's join frame: a developer's line, then a frame; the link dropping the frame
    // shows that the line before it went the same way.
    const server = await recordingServer((s) => {
      s.once("data", () => s.write(Buffer.concat([Buffer.from("\n1+1\n"), Buffer.from(encodeFrame(new Uint8Array([0x0a]), crc32))])));
    });
    try {
      const d = device("puckjs", { gateway: { host: "127.0.0.1", port: server.port } });
      d.storage.write("kp.cfg", JSON.stringify({ id: "emu-ble-default", key: "0123456789abcdef0123456789abcdef" }));
      d.storage.write(".bootcde", build.code);
      const logs: string[] = [];
      d.on("log", (l: string) => logs.push(l));
      await d.boot();
      await until(() => d.eval(`KP.status().dropped`) === 1, "the frame at the link", 10_000);
      assert.equal(logs.filter((l) => l.includes("went to the REPL")).length, 0, "nothing was typed into the REPL");
      assert.notEqual(d.eval(`E.getConsole()`), "Bluetooth", "the console stayed off Bluetooth");
      assert.equal(d.eval(`KP.status().state`), "joining", "the link is still the handset's");
    } finally {
      await server.close();
    }
  });
});
