// The JavaScript half of the emulated device: runs inside QuickJS before the firmware and builds the
// world the firmware sees (Espruino 2v29's globals, design.md §5). It removes what Espruino lacks and
// talks to the host through one function, `host.call(name, json)`, so no host callback handle has to
// outlive a call and a killed device can be cut off in one place (emulator/device.ts).
//
// Values cross the boundary as JSON; bytes travel beside it as ArrayBuffers, referred to by
// {"\u0001b": kind, "i": index}, so a Uint8Array stays a Uint8Array and an ArrayBuffer an ArrayBuffer
// on either side; `undefined` travels as {"\u0001u": 1}.

/** Globals and members QuickJS has and Espruino 2v29 does not. BigInt64Array/BigUint64Array and
 *  FinalizationRegistry go too: they need BigInt/WeakRef, which Espruino does not have either. */
export const REMOVED_GLOBALS = [
  "Map", "Set", "WeakMap", "WeakSet", "WeakRef", "FinalizationRegistry", "Symbol", "Proxy", "Reflect",
  "BigInt", "BigInt64Array", "BigUint64Array", "TextEncoder", "TextDecoder",
] as const;
export const REMOVED_MEMBERS = [
  "Math.imul", "Math.clz32", "Math.trunc", "Array.from", "Array.of", "TypedArray.from", "TypedArray.of",
  "Object.freeze", "Promise.prototype.finally", "Promise.race", "Promise.any", "Promise.allSettled",
  "Number.isInteger",
] as const;

export interface WorldConfig {
  board: string;
  espruinoBoard: string;
  version: string;
  hasNet: boolean;
  hasBle: boolean;
  hasAesEcbCbc: boolean;
  hasAesGlobal: boolean;
}

/** Source of a function expression `(host, config) => dispatch`, evaluated once per boot. */
export const WORLD_SOURCE = String.raw`(function (host, config) {
  "use strict";
  var G = globalThis;
  // Espruino names its root scope "global" (it has no globalThis of its own to rely on).
  G.global = G;

  // ---- what Espruino does not have -------------------------------------------------------------
  var removedGlobals = ${JSON.stringify(REMOVED_GLOBALS)};
  removedGlobals.forEach(function (n) { delete G[n]; });
  var TypedArray = Object.getPrototypeOf(Uint8Array);
  var removedMembers = { Math: Math, Array: Array, TypedArray: TypedArray, Object: Object,
    "Promise.prototype": Promise.prototype, Promise: Promise, Number: Number };
  ${JSON.stringify(REMOVED_MEMBERS)}.forEach(function (path) {
    var dot = path.lastIndexOf(".");
    delete removedMembers[path.slice(0, dot)][path.slice(dot + 1)];
  });

  // ---- the host bridge -------------------------------------------------------------------------
  var BYTES = "\u0001b", UNDEF = "\u0001u";
  function bytesToString(u8) {
    var s = "";
    for (var i = 0; i < u8.length; i += 4096) s += String.fromCharCode.apply(null, u8.subarray(i, i + 4096));
    return s;
  }
  function stringToBytes(s) {
    var u8 = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) u8[i] = s.charCodeAt(i);
    return u8;
  }
  // Bytes travel out of band: encode() lists ArrayBuffer copies in \`bufs\` and leaves
  // {"\u0001b": kind, i: index} in the JSON; the host hands result buffers back one by one
  // through host.take(index), so binary data is never escaped into a string.
  function encode(v, bufs) {
    function keep(kind, u8) {
      bufs.push(u8.buffer.slice(u8.byteOffset, u8.byteOffset + u8.byteLength));
      return { [BYTES]: kind, i: bufs.length - 1 };
    }
    return JSON.stringify(v === undefined ? { [UNDEF]: 1 } : v, function (k, x) {
      if (x === undefined) return { [UNDEF]: 1 };
      if (x instanceof ArrayBuffer) return keep("ArrayBuffer", new Uint8Array(x));
      if (ArrayBuffer.isView(x)) return keep(x.constructor.name, new Uint8Array(x.buffer, x.byteOffset, x.byteLength));
      return x;
    });
  }
  function decode(json) {
    return JSON.parse(json, function (k, x) {
      if (x && typeof x === "object") {
        if (x[UNDEF] === 1) return undefined;
        if (typeof x[BYTES] === "string") {
          var ab = host.take(x.i);
          if (x[BYTES] === "ArrayBuffer") return ab;
          var Kind = G[x[BYTES]] || Uint8Array;
          return new Kind(ab);
        }
      }
      return x;
    });
  }
  function encodeForHost(v) {
    var bufs = [];
    return [encode(v, bufs), bufs];
  }
  function call(name, args) {
    // The answer is one tag character and a payload: "v" + JSON value, "e" + error message, or "k":
    // the device was killed during this call. Then we spin until the interrupt handler, which now
    // answers "stop" for good, ends this context uncatchably, so no further line runs.
    var bufs = [];
    var json = encode(args, bufs);
    var r = host.call(name, json, bufs);
    var tag = r.charAt(0);
    if (tag === "k") for (;;) {}
    if (tag === "e") throw new Error(r.slice(1));
    return decode(r.slice(1));
  }

  // ---- formatting, like Espruino's console -----------------------------------------------------
  function inspect(v, depth) {
    if (typeof v === "string") return depth ? JSON.stringify(v) : v;
    if (typeof v === "function") return "function " + (v.name || "") + "() {...}";
    if (v === undefined) return "undefined";
    if (v === null || typeof v !== "object") return String(v);
    if (v instanceof Error) return v.name + ": " + v.message;
    if (v instanceof ArrayBuffer) return "new ArrayBuffer([" + Array.prototype.join.call(new Uint8Array(v), ", ") + "])";
    if (ArrayBuffer.isView(v)) return "new " + v.constructor.name + "([" + Array.prototype.join.call(v, ", ") + "])";
    if ((depth || 0) > 4) return "...";
    if (Array.isArray(v)) return "[" + v.map(function (x) { return inspect(x, (depth || 0) + 1); }).join(", ") + "]";
    var keys = Object.keys(v);
    if (!keys.length) return "{  }";
    return "{ " + keys.map(function (k) { return JSON.stringify(k) + ": " + inspect(v[k], (depth || 0) + 1); }).join(", ") + " }";
  }
  function print() {
    call("log", [Array.prototype.map.call(arguments, function (a) { return inspect(a, 0); }).join(" ")]);
  }
  G.print = print;
  G.console = { log: print, info: print, warn: print, error: print, debug: print };

  // ---- events, the way Espruino objects have them ------------------------------------------------
  function makeEmitter(obj) {
    var listeners = {};
    obj.on = function (ev, cb) { (listeners[ev] = listeners[ev] || []).push(cb); return obj; };
    obj.removeAllListeners = function (ev) { if (ev === undefined) listeners = {}; else delete listeners[ev]; };
    obj.removeListener = function (ev, cb) {
      var l = listeners[ev];
      if (l) listeners[ev] = l.filter(function (f) { return f !== cb; });
    };
    obj.emit = function (ev) {
      var args = Array.prototype.slice.call(arguments, 1);
      (listeners[ev] || []).slice().forEach(function (cb) { cb.apply(obj, args); });
    };
    return obj;
  }

  // ---- timers ----------------------------------------------------------------------------------
  var timers = {};
  var nextTimer = 1;
  function addTimer(fn, ms, args, repeat) {
    if (typeof fn !== "function") throw new Error("Function or String not supplied!");
    var id = nextTimer++;
    timers[id] = { fn: fn, args: args, repeat: repeat };
    call("timer.set", [id, Math.max(0, +ms || 0), repeat]);
    return id;
  }
  function clearTimer(args) {
    // Espruino: no argument clears every timer; an argument that is undefined is an error.
    if (args.length === 0) {
      Object.keys(timers).forEach(function (id) { call("timer.clear", [+id]); });
      timers = {};
      return;
    }
    var id = args[0];
    if (id === undefined) throw new Error("clearTimeout/clearInterval(undefined) not allowed; use clearTimeout() to clear all");
    if (timers[id]) {
      delete timers[id];
      call("timer.clear", [id]);
    }
  }
  G.setTimeout = function (fn, ms) { return addTimer(fn, ms, Array.prototype.slice.call(arguments, 2), false); };
  G.setInterval = function (fn, ms) { return addTimer(fn, ms, Array.prototype.slice.call(arguments, 2), true); };
  G.clearTimeout = function () { clearTimer(arguments); };
  G.clearInterval = function () { clearTimer(arguments); };

  // ---- E, getTime, process ---------------------------------------------------------------------
  // E.toUint8Array's flattening: numbers are bytes, strings their char codes, arrays and typed arrays
  // their elements, {data, count} repeats. Sized first, so large inputs never become number arrays.
  // No closures are made per call: a function created and dropped here would sit in a reference
  // cycle until QuickJS's next collection, and be counted as the firmware's memory until then.
  function byteCount(v) {
    if (typeof v === "number") return 1;
    if (typeof v === "string") return v.length;
    if (v instanceof ArrayBuffer) return v.byteLength;
    var n = 0;
    if (v && (Array.isArray(v) || ArrayBuffer.isView(v))) {
      if (v instanceof Uint8Array) return v.length;
      for (var j = 0; j < v.length; j++) n += byteCount(v[j]);
    } else if (v && typeof v === "object" && v.data !== undefined) {
      n = byteCount(v.data) * (v.count === undefined ? 1 : v.count);
    }
    return n;
  }
  function putBytes(v, out, o) {
    if (typeof v === "number") { out[o] = v & 255; return o + 1; }
    if (typeof v === "string") { for (var i = 0; i < v.length; i++) out[o + i] = v.charCodeAt(i) & 255; return o + v.length; }
    if (v instanceof ArrayBuffer) v = new Uint8Array(v);
    if (v instanceof Uint8Array) { out.set(v, o); return o + v.length; }
    if (v && (Array.isArray(v) || ArrayBuffer.isView(v))) { for (var j = 0; j < v.length; j++) o = putBytes(v[j], out, o); return o; }
    if (v && typeof v === "object" && v.data !== undefined) {
      for (var c = 0; c < (v.count === undefined ? 1 : v.count); c++) o = putBytes(v.data, out, o);
    }
    return o;
  }
  function toBytes(args) {
    if (args.length === 1 && args[0] instanceof Uint8Array) return args[0];
    var n = 0;
    for (var a = 0; a < args.length; a++) n += byteCount(args[a]);
    var out = new Uint8Array(n);
    var o = 0;
    for (var b = 0; b < args.length; b++) o = putBytes(args[b], out, o);
    return out;
  }
  // The console (REPL) device, as Espruino moves it: to Bluetooth when a central connects, back to
  // the default when it leaves (only if it was still on Bluetooth), wherever E.setConsole puts it.
  var consoleDevice = "USB";
  G.E = {
    getConsole: function () { return consoleDevice; },
    setConsole: function (d) { consoleDevice = d === null ? undefined : String(d); },
    hwRand: function () { return call("hwRand", []); },
    CRC32: function (data) { return call("crc32", [toBytes([data])]); },
    toUint8Array: function () {
      var r = toBytes(arguments);
      return r === arguments[0] ? new Uint8Array(r) : r;
    },
    toString: function () {
      if (arguments.length === 1 && typeof arguments[0] === "string") return arguments[0];
      return bytesToString(toBytes(arguments));
    },
  };
  G.getTime = function () { return call("getTime", []); };
  G.process = {
    memory: function () { return call("memory", []); },
    env: { VERSION: config.version, BOARD: config.espruinoBoard },
    version: config.version,
  };

  // ---- require ---------------------------------------------------------------------------------
  // Espruino strings are bytes; a string with characters above 255 is stored as UTF-8, as Espruino's
  // unicode builds do.
  function dataToBytes(data) {
    if (typeof data === "string") {
      for (var i = 0; i < data.length; i++) if (data.charCodeAt(i) > 255) return stringToBytes(unescape(encodeURIComponent(data)));
      return stringToBytes(data);
    }
    return toBytes([data]);
  }
  var Storage = {
    read: function (name, offset, length) {
      var b = call("storage.read", [name]);
      if (b === undefined) return undefined;
      var s = bytesToString(b);
      return offset === undefined && length === undefined ? s : s.substr(offset || 0, length === undefined ? s.length : length);
    },
    readArrayBuffer: function (name) {
      var b = call("storage.read", [name]);
      return b === undefined ? undefined : b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
    },
    readJSON: function (name, noExceptions) {
      var s = Storage.read(name);
      if (s === undefined) return undefined;
      try { return JSON.parse(s); } catch (e) { if (noExceptions) return undefined; throw e; }
    },
    write: function (name, data, offset, size) {
      return call("storage.write", [name, dataToBytes(data), offset, size]);
    },
    writeJSON: function (name, data) { return Storage.write(name, JSON.stringify(data)); },
    erase: function (name) { call("storage.erase", [name]); },
    list: function (regex, filter) {
      var names = call("storage.list", []);
      if (regex !== undefined) {
        var re = regex instanceof RegExp ? regex : new RegExp(regex);
        names = names.filter(function (n) { return re.test(n); });
      }
      return names;
    },
    getFree: function () { return call("storage.getFree", []); },
    compact: function () {},
  };

  var crypto = { SHA256: function (msg) { return call("crypto.SHA256", [msg]); } };
  if (config.hasAesEcbCbc) {
    crypto.AES = {
      encrypt: function (msg, key, options) { return call("crypto.AES.encrypt", [msg, key, options]); },
      decrypt: function (msg, key, options) { return call("crypto.AES.decrypt", [msg, key, options]); },
    };
  }

  var sockets = {};
  var nextSocket = 1;
  var net = {
    connect: function (options, onConnect) {
      var id = nextSocket++;
      var socket = makeEmitter({});
      socket.write = function (data) { call("net.write", [id, toBytes([data])]); return true; };
      socket.end = function (data) {
        if (data !== undefined) socket.write(data);
        call("net.end", [id]);
      };
      sockets[id] = { socket: socket, onConnect: onConnect };
      call("net.connect", [id, options && options.host, options && options.port]);
      return socket;
    },
  };

  var modules = { Storage: Storage, crypto: crypto };
  if (config.hasNet) modules.net = net;
  G.require = function (name) {
    if (Object.prototype.hasOwnProperty.call(modules, name)) return modules[name];
    throw new Error("Module " + name + " not found");
  };

  if (config.hasAesGlobal) {
    G.AES = {
      ccmEncrypt: function (msg, key, nonce, tagLen) { return call("AES.ccmEncrypt", [msg, key, nonce, tagLen]); },
      ccmDecrypt: function (msg, key, nonce, tag) { return call("AES.ccmDecrypt", [msg, key, nonce, tag]); },
    };
  }

  // ---- BLE UART (a test double for the radio: see docs/EMULATOR.md) -----------------------------
  if (config.hasBle) {
    var Bluetooth = makeEmitter({});
    Bluetooth.write = function () { call("ble.write", [toBytes(arguments)]); };
    Bluetooth.print = function (s) { Bluetooth.write(String(s)); };
    Bluetooth.println = function (s) { Bluetooth.write(String(s) + "\r\n"); };
    G.Bluetooth = Bluetooth;
    G.NRF = makeEmitter({});
  }

  // ---- from the host into the device ------------------------------------------------------------
  function dispatch(kind, json) {
    var m = decode(json);
    if (kind === "timer") {
      var t = timers[m.id];
      if (!t) return;
      if (!t.repeat) delete timers[m.id];
      t.fn.apply(undefined, t.args);
    } else if (kind === "net") {
      var s = sockets[m.id];
      if (!s) return;
      if (m.ev === "connect" && typeof s.onConnect === "function") s.onConnect(s.socket);
      if (m.ev === "close") delete sockets[m.id];
      s.socket.emit(m.ev, m.data);
    } else if (kind === "ble") {
      // Bytes that arrive while the console is on Bluetooth are typed into the REPL, not delivered.
      if (m.ev === "data") { if (consoleDevice === "Bluetooth") call("ble.repl", [m.data.length]); else G.Bluetooth.emit("data", m.data); }
      else {
        if (m.ev === "connect") consoleDevice = "Bluetooth";
        else if (consoleDevice === "Bluetooth") consoleDevice = "USB";
        G.NRF.emit(m.ev, m.data);
      }
    }
  }
  return { dispatch: dispatch, encode: encodeForHost };
})`;
