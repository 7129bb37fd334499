// The device emulator: the real firmware bundle inside QuickJS, in an Espruino-shaped world.
//
// Each boot gets a fresh QuickJS WebAssembly instance, runtime and context. The JavaScript half of the
// world (emulator/world.ts) runs first; it reaches the host through one function, so every side effect
// (Storage, sockets, timers, logs) passes through `hostCall` below, which refuses to do anything once
// the device is killed. A kill (reboot/powerOff) may come from inside an event handler while the VM is
// mid-call: the host answers that call with "killed", the VM spins until the interrupt handler (which
// now answers "stop") ends it uncatchably, and the context is disposed once the outermost VM entry has
// unwound. See docs/EMULATOR.md.

import { EventEmitter } from "node:events";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import { newQuickJSWASMModule } from "quickjs-emscripten";
import type { QuickJSContext, QuickJSHandle, QuickJSRuntime } from "quickjs-emscripten";
import { getBoard, type BoardProfile } from "../boards/index.ts";
import { createEspruinoCrypto, crc32, type AesObservation } from "./espruino-crypto.ts";
import {
  classCounts, estimateEspruinoVars, heapDelta, memoryLimitBytes, snapshotFrom, type HeapSnapshot,
} from "./memory.ts";
import { rewriteForEspruino } from "./rewrite.ts";
import { HostStorage } from "./storage.ts";
import { WORLD_SOURCE, type WorldConfig } from "./world.ts";

export type { AesObservation };

export interface EmulatorOptions {
  board: string;
  storageDir: string;
  gateway?: { host: string; port: number };
  name?: string;
}

/** The Espruino version whose APIs the world models. */
export const ESPRUINO_VERSION = "2v29";
/** Longest one entry into the VM (a timer, an event, a boot file, an eval) may run before it is
 *  interrupted, as Ctrl-C would on the device. Keeps a runaway loop from hanging the host. */
export const MAX_ENTRY_MS = 10_000;
/** The BLE double delivers incoming bytes in pieces of at most this many (a 23-byte ATT MTU). */
export const BLE_CHUNK_BYTES = 20;
export const BLE_RECONNECT_MS = 500;
/** Storage files Espruino runs at boot, in order. */
const BOOT_FILES = [".boot0", ".boot1", ".boot2", ".boot3", ".bootcde"];

const ESPRUINO_BOARD_NAMES: Record<string, string> = {
  puckjs: "PUCKJS",
  banglejs2: "BANGLEJS2",
  esp32: "ESP32",
  emulator: "LINUX",
};

// ---- values across the boundary (see the wire format in emulator/world.ts) ----------------------

const BYTES = "\u0001b";
const UNDEF = "\u0001u";

function latin1(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("latin1");
}

/** JSON for the VM; every byte array in `value` is appended to `bufs` and referred to by index. */
function encodeWire(value: unknown, bufs: Uint8Array[]): string {
  const keep = (kind: string, bytes: Uint8Array) => {
    bufs.push(new Uint8Array(bytes));
    return { [BYTES]: kind, i: bufs.length - 1 };
  };
  return JSON.stringify(value === undefined ? { [UNDEF]: 1 } : value, (_k, x: unknown) => {
    if (x === undefined) return { [UNDEF]: 1 };
    if (x instanceof ArrayBuffer) return keep("ArrayBuffer", new Uint8Array(x));
    if (ArrayBuffer.isView(x)) {
      const kind = Buffer.isBuffer(x) ? "Uint8Array" : x.constructor.name;
      return keep(kind, new Uint8Array(x.buffer, x.byteOffset, x.byteLength));
    }
    return x;
  });
}

const TYPED_ARRAYS: Record<string, new (b: ArrayBuffer) => ArrayBufferView> = {
  Uint8Array, Int8Array, Uint8ClampedArray, Uint16Array, Int16Array, Uint32Array, Int32Array, Float32Array, Float64Array,
};

function decodeWire(json: string, bufs: Uint8Array[]): unknown {
  return JSON.parse(json, (_k, x: unknown) => {
    if (x && typeof x === "object") {
      const o = x as Record<string, unknown>;
      if (o[UNDEF] === 1) return undefined;
      if (typeof o[BYTES] === "string") {
        const bytes = bufs[Number(o.i)] ?? new Uint8Array(0);
        const ab = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
        if (o[BYTES] === "ArrayBuffer") return ab;
        const Kind = TYPED_ARRAYS[o[BYTES] as string] ?? Uint8Array;
        return new Kind(ab);
      }
    }
    return x;
  });
}

// ---- one boot's worth of state -------------------------------------------------------------------

interface VmError {
  name: string;
  message: string;
  stack?: string;
}

type VmOutcome = { ok: true; value: unknown } | { ok: false; error: VmError } | { ok: false; killed: true };

/** Everything that belongs to one boot; `dead` is the killed flag every host entry point checks. */
class Life {
  dead = false;
  depth = 0;
  deadline = Infinity;
  rt!: QuickJSRuntime;
  ctx!: QuickJSContext;
  dispatch!: QuickJSHandle;
  encode!: QuickJSHandle;
  world!: QuickJSHandle;
  baseline!: HeapSnapshot;
  functionClassKey = "";
  limitBytes = 0;
  outOfMemory = false;
  /** Byte arrays of the last answer to the VM, fetched by host.take(i) while it decodes. */
  outbox: Uint8Array[] = [];
  crypto!: ReturnType<typeof createEspruinoCrypto>;
  /** The device's timers, due in (due, seq) order; one host timer waits for the earliest. */
  timers = new Map<number, DeviceTimer>();
  timerHead: NodeJS.Timeout | undefined;
  timerSeq = 0;
  /** When the outermost running VM entry began: the time a timer set during it counts from. */
  entryStart = 0;
  sockets = new Map<number, net.Socket>();
  ble: net.Socket | undefined;
  bleConnected = false;
  bleReconnect: NodeJS.Timeout | undefined;
}

type HostFn = (life: Life, args: unknown[]) => unknown;

interface DeviceTimer {
  due: number;
  seq: number;
  ms: number;
  repeat: boolean;
}

export class EmulatedDevice extends EventEmitter {
  readonly board: BoardProfile;
  readonly storage: {
    read(name: string): Uint8Array | undefined;
    write(name: string, data: Uint8Array | string): void;
    erase(name: string): void;
    list(): string[];
  };
  private readonly store: HostStorage;
  private life: Life | undefined;
  /** Bumped by every boot and kill, so a boot that was overtaken while loading stops. */
  private generation = 0;
  private readonly host: Record<string, HostFn>;

  constructor(readonly opts: EmulatorOptions) {
    super();
    this.board = getBoard(opts.board);
    this.store = new HostStorage(opts.storageDir, this.board.storageBytes);
    const store = this.store;
    this.storage = {
      read: (name) => store.read(name),
      write: (name, data) => store.write(name, typeof data === "string" ? new Uint8Array(Buffer.from(data, "latin1")) : data),
      erase: (name) => store.erase(name),
      list: () => store.list(),
    };
    this.host = this.hostFunctions();
  }

  /** A file packet from the console (Espruino 2v25+, src/jsinteractive.c packet_file_write): written
   *  as Storage.write(name, data, offset, size) would, the first creating the file at its full size,
   *  with the same "storage-write" event. Throws StorageError as that write does. */
  writeFilePacket(name: string, data: Uint8Array, offset: number, size: number): void {
    this.store.writeAt(name, data, offset, offset === 0 ? size : undefined);
    this.emit("storage-write", { name, bytes: this.store.read(name) ?? new Uint8Array(0) });
  }

  get running(): boolean {
    return this.life !== undefined;
  }

  // ---- lifecycle ----------------------------------------------------------------------------------

  async boot(): Promise<void> {
    if (this.life) throw new Error("device is already running; use reboot()");
    const generation = ++this.generation;
    const module = await newQuickJSWASMModule();
    if (generation !== this.generation || this.life) return; // overtaken by powerOff()/another boot

    const life = new Life();
    life.rt = module.newRuntime();
    life.ctx = life.rt.newContext();
    life.rt.setInterruptHandler(() => life.dead || Date.now() > life.deadline || (life.limitBytes > 0 && this.memoryExceeded(life)));
    life.crypto = createEspruinoCrypto({
      aesEcbCbc: this.board.natives.aesEcbCbc,
      aesCcm: this.board.natives.aesCcm,
      observe: (o) => {
        if (!life.dead) this.emit("aes", o);
      },
    });
    life.functionClassKey = this.findFunctionClass(life);
    this.installWorld(life);
    life.baseline = this.snapshot(life);
    life.limitBytes = memoryLimitBytes(life.baseline.memory_used_size, this.board.vars, this.board.bytesPerVar);
    life.rt.setMemoryLimit(life.limitBytes);
    this.life = life;

    if (this.board.transports.includes("ble-uart") && this.opts.gateway) this.connectBle(life);
    for (const file of BOOT_FILES) {
      if (life.dead) break;
      const code = this.store.read(file);
      if (code === undefined) continue;
      this.runCode(life, latin1(code), file, true);
    }
  }

  async reboot(): Promise<void> {
    this.kill();
    await this.boot();
  }

  powerOff(): void {
    this.kill();
  }

  /** Stops the device now: no further JS with side effects, no timers, sockets closed. Safe to call
   *  from inside a handler of an event the device emitted while the VM is mid-call. */
  private kill(): void {
    this.generation++;
    const life = this.life;
    this.life = undefined;
    if (!life || life.dead) return;
    life.dead = true;
    if (life.timerHead) clearTimeout(life.timerHead);
    life.timers.clear();
    for (const s of life.sockets.values()) s.destroy();
    life.sockets.clear();
    if (life.bleReconnect) clearTimeout(life.bleReconnect);
    life.ble?.destroy();
    if (life.depth === 0) this.disposeVm(life);
  }

  private disposeVm(life: Life): void {
    // This WebAssembly instance is never used again, so a failed dispose can only leak it.
    try {
      for (const h of [life.dispatch, life.encode, life.world]) if (h?.alive) h.dispose();
      life.ctx.dispose();
      life.rt.dispose();
    } catch {
      /* leaked with the instance */
    }
  }

  // ---- REPL and memory ------------------------------------------------------------------------------

  eval(code: string): unknown {
    const life = this.life;
    if (!life) throw new Error("device is not running");
    let rewritten: string;
    try {
      rewritten = rewriteForEspruino(code);
    } catch (e) {
      throw new Error(`Uncaught SyntaxError: ${(e as Error).message}`);
    }
    const out = this.enter(life, () => life.ctx.evalCode(rewritten, "REPL", { type: "global" }), true);
    if (out.ok) return out.value;
    if ("killed" in out) return undefined; // the caller's own handler stopped the device
    throw new Error(`Uncaught ${out.error.name}: ${out.error.message}`);
  }

  memory(): { estimatedVars: number; totalVars: number; heapBytes: number } {
    const life = this.life;
    if (!life) return { estimatedVars: 0, totalVars: this.board.vars, heapBytes: 0 };
    const now = this.snapshot(life);
    return {
      estimatedVars: estimateEspruinoVars(heapDelta(now, life.baseline), this.board.bytesPerVar),
      totalVars: this.board.vars,
      heapBytes: now.memory_used_size,
    };
  }

  // ---- inside the VM ----------------------------------------------------------------------------------

  /** Runs one entry into the VM, then its pending promise jobs. Reports what escapes when `report`
   *  is set; converts the result to a host value when asked. Disposes the VM if it was killed. */
  private enter(
    life: Life,
    run: () => ReturnType<QuickJSContext["evalCode"]>,
    convert: boolean,
    report = false,
  ): VmOutcome {
    if (life.dead) return { ok: false, killed: true };
    life.depth++;
    if (life.depth === 1) {
      life.entryStart = Date.now();
      life.deadline = life.entryStart + MAX_ENTRY_MS;
    }
    let outcome: VmOutcome;
    try {
      const result = run();
      if (result.error) {
        outcome = { ok: false, error: this.describe(life, result.error) };
        result.error.dispose();
        if (life.outOfMemory && outcome.error.message === "interrupted") outcome.error.message = "out of memory";
        life.outOfMemory = false;
      } else {
        outcome = { ok: true, value: convert && !life.dead ? this.toHost(life, result.value) : undefined };
        result.value.dispose();
      }
      if (report && !outcome.ok && !life.dead) this.reportUncaught(outcome.error);
      this.runPendingJobs(life);
    } finally {
      life.depth--;
      if (life.depth === 0) life.deadline = Infinity;
    }
    if (life.dead) {
      if (life.depth === 0) this.disposeVm(life);
      return { ok: false, killed: true };
    }
    return outcome;
  }

  private runPendingJobs(life: Life): void {
    while (!life.dead) {
      const r = life.rt.executePendingJobs();
      if (r.error) {
        const err = this.describe(life, r.error);
        r.error.dispose();
        if (!life.dead) this.reportUncaught(err);
        continue;
      }
      if (r.value === 0) return;
    }
  }

  private runCode(life: Life, source: string, filename: string, report: boolean): void {
    let rewritten: string;
    try {
      rewritten = rewriteForEspruino(source);
    } catch (e) {
      // Espruino reports a syntax error only when it reaches it; QuickJS (and acorn) parse the whole
      // file first. Either way the file does not run.
      this.reportUncaught({ name: "SyntaxError", message: `${(e as Error).message} in ${filename}` });
      return;
    }
    this.enter(life, () => life.ctx.evalCode(rewritten, filename, { type: "global" }), false, report);
  }

  private describe(life: Life, error: QuickJSHandle): VmError {
    try {
      const d = life.ctx.dump(error) as unknown;
      if (d && typeof d === "object") {
        const o = d as Record<string, unknown>;
        return { name: String(o.name ?? "Error"), message: String(o.message ?? ""), stack: o.stack ? String(o.stack) : undefined };
      }
      return { name: "Error", message: String(d) };
    } catch {
      return { name: "InternalError", message: "out of memory" };
    }
  }

  private reportUncaught(err: VmError): void {
    if (err.name === "InternalError" && err.message === "out of memory") this.log("ERROR: Out of Memory!");
    if (err.name === "InternalError" && err.message === "interrupted") this.log("Execution Interrupted");
    this.log(`Uncaught ${err.name}: ${err.message}`);
    for (const line of (err.stack ?? "").split("\n")) if (line.trim()) this.log(` ${line.trim()}`);
    this.emit("uncaught", `${err.name}: ${err.message}`);
  }

  private log(line: string): void {
    if (process.env.KEYPROXY_EMULATOR_LOG) process.stderr.write(`[${this.opts.name ?? this.board.id}] ${line}\n`);
    this.emit("log", line);
  }

  private toHost(life: Life, value: QuickJSHandle): unknown {
    const { ctx } = life;
    const r = ctx.callFunction(life.encode, ctx.undefined, value);
    if (r.error) {
      r.error.dispose();
      return undefined;
    }
    const json = ctx.getProp(r.value, 0).consume((h) => ctx.getString(h));
    const bufs = ctx.getProp(r.value, 1).consume((h) => this.readBuffers(life, h));
    r.value.dispose();
    return decodeWire(json, bufs);
  }

  /** Copies out an array of ArrayBuffers the VM handed over. */
  private readBuffers(life: Life, array: QuickJSHandle): Uint8Array[] {
    const { ctx } = life;
    const n = ctx.getLength(array) ?? 0;
    const out: Uint8Array[] = [];
    for (let i = 0; i < n; i++) {
      out.push(ctx.getProp(array, i).consume((h) => ctx.getArrayBuffer(h).consume((view) => new Uint8Array(view.value))));
    }
    return out;
  }

  /** Calls the world's dispatch(kind, message) for an event from the host side. */
  private deliver(life: Life, kind: string, message: unknown): void {
    if (life.dead) return;
    this.enter(
      life,
      () => {
        const k = life.ctx.newString(kind);
        life.outbox = [];
        const m = life.ctx.newString(encodeWire(message, life.outbox));
        try {
          return life.ctx.callFunction(life.dispatch, life.ctx.undefined, k, m);
        } finally {
          k.dispose();
          m.dispose();
        }
      },
      false,
      true,
    );
  }

  // ---- setting up a context ---------------------------------------------------------------------------

  /** QuickJS's class id for bytecode function objects, found by making one (ids vary by version). */
  private findFunctionClass(life: Life): string {
    const before = classCounts(life.rt.dumpMemoryUsage());
    const probe = life.ctx.unwrapResult(life.ctx.evalCode("globalThis.__probe = [function () {}, function () {}]"));
    const after = classCounts(life.rt.dumpMemoryUsage());
    probe.dispose();
    life.ctx.unwrapResult(life.ctx.evalCode("delete globalThis.__probe")).dispose();
    for (const [key, n] of after) if (key.endsWith(" Function") && n - (before.get(key) ?? 0) === 2) return key;
    return "";
  }

  private installWorld(life: Life): void {
    const { ctx } = life;
    const config: WorldConfig = {
      board: this.board.id,
      espruinoBoard: ESPRUINO_BOARD_NAMES[this.board.id] ?? this.board.id.toUpperCase(),
      version: ESPRUINO_VERSION,
      hasNet: this.board.transports.includes("tcp"),
      hasWifi: this.board.transports.includes("wifi"),
      hasBle: this.board.transports.includes("ble-uart"),
      hasAesEcbCbc: this.board.natives.aesEcbCbc,
      hasAesGlobal: this.board.natives.aesCcm,
    };
    const factory = ctx.unwrapResult(ctx.evalCode(WORLD_SOURCE, "world.js", { type: "global" }));
    const hostObj = ctx.newObject();
    const callFn = ctx.newFunction("call", (nameH, jsonH, bufsH) => {
      if (life.dead) return ctx.newString("k");
      return ctx.newString(this.hostCall(life, ctx.getString(nameH), ctx.getString(jsonH), this.readBuffers(life, bufsH)));
    });
    ctx.setProp(hostObj, "call", callFn);
    callFn.dispose();
    const takeFn = ctx.newFunction("take", (iH) => {
      const bytes = life.outbox[ctx.getNumber(iH)] ?? new Uint8Array(0);
      return ctx.newArrayBuffer(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    });
    ctx.setProp(hostObj, "take", takeFn);
    takeFn.dispose();
    const configObj = ctx.unwrapResult(ctx.evalCode(`(${JSON.stringify(config)})`, "config.js", { type: "global" }));
    life.world = ctx.unwrapResult(ctx.callFunction(factory, ctx.undefined, hostObj, configObj));
    factory.dispose();
    hostObj.dispose();
    configObj.dispose();
    life.dispatch = ctx.getProp(life.world, "dispatch");
    life.encode = ctx.getProp(life.world, "encode");
  }

  private snapshot(life: Life): HeapSnapshot {
    // Measuring allocates; at the memory limit that would fail, so lift the limit for the moment.
    life.rt.setMemoryLimit(-1);
    try {
      const h = life.rt.computeMemoryUsage();
      const counters = life.ctx.dump(h) as Record<string, number>;
      h.dispose();
      const classes = classCounts(life.rt.dumpMemoryUsage());
      return snapshotFrom(counters, classes.get(life.functionClassKey) ?? 0);
    } finally {
      if (life.limitBytes) life.rt.setMemoryLimit(life.limitBytes);
    }
  }

  /** QuickJS's memory limit does not count ArrayBuffer contents, so the interrupt handler (QuickJS
   *  polls it every few thousand calls and backward jumps) also measures the heap: above the limit,
   *  the entry is interrupted and reported as out of memory, as Espruino stops on a failed
   *  allocation. The check costs about 1% of run time; between two polls a loop can overshoot by a
   *  few hundred KB, and one huge `new Uint8Array(n)` is not stopped before it is made. */
  private memoryExceeded(life: Life): boolean {
    life.rt.setMemoryLimit(-1);
    let used = 0;
    try {
      const h = life.rt.computeMemoryUsage();
      used = life.ctx.getProp(h, "memory_used_size").consume((n) => life.ctx.getNumber(n));
      h.dispose();
    } finally {
      life.rt.setMemoryLimit(life.limitBytes);
    }
    if (used <= life.limitBytes) return false;
    life.outOfMemory = true;
    return true;
  }

  // ---- the host side of the world ------------------------------------------------------------------

  /** The one door from the VM to the host. Answers "k" once the device is killed, whatever was asked. */
  private hostCall(life: Life, name: string, json: string, bufs: Uint8Array[]): string {
    if (life.dead) return "k";
    const fn = this.host[name];
    if (!fn) return "e" + `no host function ${name}`;
    try {
      const args = decodeWire(json, bufs);
      const value = fn(life, Array.isArray(args) ? args : []);
      if (life.dead) return "k";
      life.outbox = [];
      return "v" + encodeWire(value, life.outbox);
    } catch (e) {
      if (life.dead) return "k";
      return "e" + (e instanceof Error ? e.message : String(e));
    }
  }

  /** The earliest timer (by due time, then by when it was set) fires next, one VM entry per timer. */
  private scheduleTimers(life: Life): void {
    if (life.timerHead) clearTimeout(life.timerHead);
    life.timerHead = undefined;
    if (life.dead) return;
    let first: [number, DeviceTimer] | undefined;
    for (const e of life.timers) if (!first || e[1].due < first[1].due || (e[1].due === first[1].due && e[1].seq < first[1].seq)) first = e;
    if (!first) return;
    const [id, t] = first;
    life.timerHead = setTimeout(() => {
      life.timerHead = undefined;
      if (life.timers.get(id) === t) {
        if (t.repeat) {
          t.due += Math.max(1, t.ms);
          t.seq = ++life.timerSeq;
        } else life.timers.delete(id);
        this.deliver(life, "timer", { id });
      }
      this.scheduleTimers(life);
    }, Math.max(0, t.due - Date.now()));
  }

  private hostFunctions(): Record<string, HostFn> {
    const store = this.store;
    const bytesArg = (v: unknown): Uint8Array => (v instanceof Uint8Array ? v : new Uint8Array(0));
    return {
      log: (_life, [line]) => this.log(String(line)),
      // Time stands still while the VM runs, as it nearly does on Espruino: a timer set during an
      // entry counts from the entry's start, so QuickJS's slower execution cannot reorder timers.
      "timer.set": (life, [id, ms, repeat]) => {
        const t = { due: life.entryStart + Number(ms), seq: ++life.timerSeq, ms: Number(ms), repeat: !!repeat };
        life.timers.set(Number(id), t);
        this.scheduleTimers(life);
      },
      "timer.clear": (life, [id]) => {
        life.timers.delete(Number(id));
        this.scheduleTimers(life);
      },
      hwRand: () => randomBytes(4).readInt32LE(0),
      crc32: (_life, [data]) => crc32(bytesArg(data)),
      getTime: () => (performance.timeOrigin + performance.now()) / 1000,
      memory: () => {
        const m = this.memory();
        return { free: Math.max(0, m.totalVars - m.estimatedVars), usage: m.estimatedVars, total: m.totalVars, blocksize: this.board.bytesPerVar };
      },
      "storage.read": (_life, [name]) => store.read(String(name)),
      "storage.write": (_life, [name, data, offset, size]) => {
        const n = String(name);
        if (offset === undefined && size === undefined) store.write(n, bytesArg(data));
        else store.writeAt(n, bytesArg(data), offset === undefined ? 0 : Number(offset), size === undefined ? undefined : Number(size));
        // Durable now; a handler may kill the device, and hostCall then answers "killed".
        this.emit("storage-write", { name: n, bytes: store.read(n) ?? new Uint8Array(0) });
        return true;
      },
      "storage.erase": (_life, [name]) => store.erase(String(name)),
      "storage.list": () => store.list(),
      "storage.getFree": () => store.getFree(),
      "crypto.SHA256": (life, args) => life.crypto.cryptoModule.SHA256(...args),
      "crypto.AES.encrypt": (life, args) => life.crypto.cryptoModule.AES.encrypt(...args),
      "crypto.AES.decrypt": (life, args) => life.crypto.cryptoModule.AES.decrypt(...args),
      "AES.ccmEncrypt": (life, args) => life.crypto.aesGlobal.ccmEncrypt(...args),
      "AES.ccmDecrypt": (life, args) => life.crypto.aesGlobal.ccmDecrypt(...args),
      "net.connect": (life, [id, host, port]) => this.openSocket(life, Number(id), String(host), Number(port)),
      "net.write": (life, [id, data]) => {
        const socket = life.sockets.get(Number(id));
        if (!socket) throw new Error("Socket is closed");
        this.sendBytes(life, socket, bytesArg(data));
      },
      "net.end": (life, [id]) => life.sockets.get(Number(id))?.end(),
      "ble.write": (life, [data]) => {
        if (life.ble && life.bleConnected) this.sendBytes(life, life.ble, bytesArg(data));
      },
      // Link bytes that Espruino would have typed into the REPL (the console was on Bluetooth).
      "ble.repl": (_life, [n]) => this.emit("log", `(${Number(n)} bytes from the BLE central went to the REPL: the console is on Bluetooth)`),
    };
  }

  /** "transport-write" goes out before the bytes: a handler that kills the device stops them. */
  private sendBytes(life: Life, socket: net.Socket, bytes: Uint8Array): void {
    this.emit("transport-write", { bytes: new Uint8Array(bytes) });
    if (life.dead) return;
    socket.write(bytes);
  }

  private openSocket(life: Life, id: number, host: string, port: number): void {
    if (!Number.isInteger(port) || port <= 0 || port > 65535) throw new Error(`net.connect: bad port ${port}`);
    const socket = net.connect({ host, port });
    life.sockets.set(id, socket);
    socket.on("connect", () => this.deliver(life, "net", { id, ev: "connect" }));
    socket.on("data", (b: Buffer) => this.deliver(life, "net", { id, ev: "data", data: b.toString("latin1") }));
    socket.on("end", () => this.deliver(life, "net", { id, ev: "end" }));
    socket.on("error", (e: NodeJS.ErrnoException) => this.deliver(life, "net", { id, ev: "error", data: { code: e.code ?? "", message: e.message } }));
    socket.on("close", () => {
      life.sockets.delete(id);
      this.deliver(life, "net", { id, ev: "close" });
    });
  }

  /** The BLE UART double: stands in for the gateway-side BLE central over a real TCP connection. */
  private connectBle(life: Life): void {
    if (life.dead || !this.opts.gateway) return;
    const socket = net.connect(this.opts.gateway);
    life.ble = socket;
    socket.on("connect", () => {
      life.bleConnected = true;
      this.deliver(life, "ble", { ev: "connect", data: "gateway-double public" });
    });
    socket.on("data", (b: Buffer) => {
      for (let i = 0; i < b.length && !life.dead; i += BLE_CHUNK_BYTES) {
        this.deliver(life, "ble", { ev: "data", data: b.subarray(i, i + BLE_CHUNK_BYTES).toString("latin1") });
      }
    });
    socket.on("error", () => {
      /* "close" follows; the double reconnects */
    });
    socket.on("close", () => {
      const wasConnected = life.bleConnected;
      life.bleConnected = false;
      if (life.ble === socket) life.ble = undefined;
      if (life.dead) return;
      if (wasConnected) this.deliver(life, "ble", { ev: "disconnect", data: 19 });
      life.bleReconnect = setTimeout(() => this.connectBle(life), BLE_RECONNECT_MS);
    });
  }
}

export async function loadBundle(path: string): Promise<string> {
  return fs.promises.readFile(path, "utf8");
}
