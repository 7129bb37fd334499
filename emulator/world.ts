// The JavaScript half of the emulated device: runs inside QuickJS before the firmware and builds the
// world the firmware sees (Espruino 2v29's globals, design.md §5). It removes what Espruino lacks and
// talks to the host through one function, `host.call(name, json)`, so no host callback handle has to
// outlive a call and a killed device can be cut off in one place (emulator/device.ts).
//
// Values cross the boundary as JSON; bytes travel beside it as ArrayBuffers, referred to by
// {"\u0001b": kind, "i": index}, so a Uint8Array stays a Uint8Array and an ArrayBuffer an ArrayBuffer
// on either side; `undefined` travels as {"\u0001u": 1}.

/** Globals and members QuickJS has and Espruino 2v29 does not. BigInt64Array/BigUint64Array and
 *  FinalizationRegistry go too: they need BigInt/WeakRef, which Espruino does not have either. The rest
 *  were found by asking the real interpreter for each name QuickJS has (docs/EMULATOR.md, "Differences
 *  from the real interpreter"). */
export const REMOVED_GLOBALS = [
  "Map", "Set", "WeakMap", "WeakSet", "WeakRef", "FinalizationRegistry", "Symbol", "Proxy", "Reflect",
  "BigInt", "BigInt64Array", "BigUint64Array", "TextEncoder", "TextDecoder",
  "EvalError", "RangeError", "URIError", "AggregateError", "Iterator", "decodeURI", "encodeURI", "escape",
  "unescape", "SharedArrayBuffer", "Float16Array",
] as const;

const TYPED_ARRAYS = ["Int8Array", "Uint8Array", "Uint8ClampedArray", "Int16Array", "Uint16Array", "Int32Array",
  "Uint32Array", "Float32Array", "Float64Array"];
const members = (owner: string, names: string): string[] => names.split(" ").map((n) => `${owner}.${n}`);

export const REMOVED_MEMBERS = [
  "Math.imul", "Math.clz32", "Math.trunc", "Array.from", "Array.of", "TypedArray.from", "TypedArray.of",
  "Object.freeze", "Promise.prototype.finally", "Promise.race", "Promise.any", "Promise.allSettled",
  "Number.isInteger",
  ...members("Math", "cosh sinh tanh acosh asinh atanh expm1 log1p log2 log10 cbrt hypot f16round fround sumPrecise"),
  ...members("Number", "parseInt parseFloat isNaN isFinite isSafeInteger"),
  ...members("Number.prototype", "toExponential toPrecision toLocaleString"),
  ...members("Object", "getOwnPropertySymbols groupBy isExtensible preventExtensions is seal isSealed isFrozen hasOwn"),
  ...members("Object.prototype", "toLocaleString isPrototypeOf propertyIsEnumerable __defineGetter__ __defineSetter__ __lookupGetter__ __lookupSetter__"),
  ...members("Array.prototype", "at with reduceRight findLast findLastIndex lastIndexOf toLocaleString toReversed toSorted toSpliced copyWithin flatMap flat values keys entries"),
  ...members("TypedArray.prototype", "at with values keys entries copyWithin reduceRight findLast findLastIndex toReversed toSorted toLocaleString lastIndexOf"),
  ...members("String", "fromCodePoint raw"),
  ...members("String.prototype", "at codePointAt isWellFormed toWellFormed matchAll search trimEnd trimRight trimStart trimLeft toLocaleLowerCase toLocaleUpperCase anchor big blink bold fixed fontcolor fontsize italics link small strike sub sup normalize localeCompare"),
  ...members("ArrayBuffer", "isView"),
  ...members("ArrayBuffer.prototype", "maxByteLength resizable detached resize slice transfer transferToFixedLength"),
  ...members("DataView.prototype", "getBigInt64 getBigUint64 getFloat16 setBigInt64 setBigUint64 setFloat16"),
  ...members("Promise", "try withResolvers"),
  ...members("Function.prototype", "fileName lineNumber columnNumber"),
  "Error.prototype.name",
];

/** What Espruino lacks but QuickJS will not let go (non-configurable): the lint and the bundle gate
 *  refuse them instead (flash/eslint-espruino.js). */
export const UNDELETABLE_MEMBERS = [
  "Number.EPSILON", "Number.MAX_SAFE_INTEGER", "Number.MIN_SAFE_INTEGER",
  ...TYPED_ARRAYS.flatMap((t) => [`${t}.BYTES_PER_ELEMENT`, `${t}.prototype.BYTES_PER_ELEMENT`]),
];

export interface WorldConfig {
  board: string;
  espruinoBoard: string;
  version: string;
  hasNet: boolean;
  /** require("Wifi"), as interpreter/device.ts's WIFI_STAND_IN has it (docs/EMULATOR.md). */
  hasWifi: boolean;
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
  // The world keeps what it needs itself before it goes.
  var isView = ArrayBuffer.isView;
  var abSlice = ArrayBuffer.prototype.slice;
  var unescapeFn = unescape;
  var utf8 = function (s) { return unescapeFn(encodeURIComponent(s)); };
  var TypedArray = Object.getPrototypeOf(Uint8Array);
  var TA = TypedArray.prototype;
  var taSet = TA.set, taSubarray = TA.subarray;
  var arraySlice = Array.prototype.slice, arrayFilter = Array.prototype.filter;
  var removedGlobals = ${JSON.stringify(REMOVED_GLOBALS)};
  removedGlobals.forEach(function (n) { delete G[n]; });
  ${JSON.stringify(REMOVED_MEMBERS)}.forEach(function (path) {
    var parts = path.split(".");
    var owner = parts[0] === "TypedArray" ? TypedArray : G[parts[0]];
    for (var i = 1; i < parts.length - 1; i++) owner = owner[parts[i]];
    delete owner[parts[parts.length - 1]];
  });

  // ---- what Espruino does differently (docs/EMULATOR.md, "Differences from the real interpreter") --
  function method(owner, name, fn) {
    Object.defineProperty(owner, name, { value: fn, writable: true, configurable: true, enumerable: false });
  }
  // A view on an ArrayBuffer made with length 0 covers the rest of the buffer: Espruino takes 0 as
  // "no length given" (jswrap_typedarray_constructor in src/jswrap_arraybuffer.c).
  ["Uint8Array", "Int8Array", "Uint16Array", "Int16Array", "Uint32Array", "Int32Array", "Float32Array", "Float64Array", "Uint8ClampedArray"].forEach(function (name) {
    var Real = G[name];
    var View = function (a, offset, length) {
      return new Real(a, offset, a instanceof ArrayBuffer && length === 0 ? undefined : length);
    };
    View.prototype = Real.prototype;
    // Statics and Object.getPrototypeOf(Uint8Array) (TypedArray) stay what they were.
    Object.setPrototypeOf(View, Object.getPrototypeOf(Real));
    G[name] = View;
  });
  // A typed array's slice() and filter() give a plain Array (src/jswrap_arraybuffer.c borrows Array's).
  method(TA, "slice", function slice(start, end) { return arraySlice.call(this, start, end); });
  method(TA, "filter", function filter(fn, thisArg) { return arrayFilter.call(this, fn, thisArg); });
  // set(): a string, an array or an array buffer; what does not fit is left out, a negative offset
  // writes nothing; never a RangeError.
  method(TA, "set", function set(src, offset) {
    if (src instanceof ArrayBuffer) src = new Uint8Array(src);
    if (!(typeof src === "string" || Array.isArray(src) || isView(src))) throw new Error("First argument must be Array, not " + (src === null ? "null" : typeof src));
    offset = offset | 0;
    var n = Math.min(src.length, this.length - offset);
    if (offset < 0 || n <= 0) return;
    if (typeof src === "string") { for (var i = 0; i < n; i++) this[offset + i] = src.charCodeAt(i); return; }
    taSet.call(this, n === src.length ? src : isView(src) ? taSubarray.call(src, 0, n) : arraySlice.call(src, 0, n), offset);
  });
  // subarray(): begin past end gives a new empty array; an end past the array is not clamped on
  // Espruino (the view reads past its buffer), so here it is an error rather than silently different.
  method(TA, "subarray", function subarray(begin, end) {
    var len = this.length;
    begin = begin | 0;
    end = typeof end === "number" ? end | 0 : len;
    if (begin < 0) begin += len;
    if (end < 0) end += len;
    if (end < 0) end = 0;
    if (begin > end) begin = end = 0;
    if (begin === end) return new this.constructor(0);
    if (begin < 0 || end > len) throw new Error("subarray(" + begin + ", " + end + ") of a " + len + "-element array: Espruino does not clamp it and reads past the buffer");
    return taSubarray.call(this, begin, end);
  });
  // JSON writes typed arrays and array buffers as arrays of numbers. (Not with toJSON methods: the
  // host bridge stringifies byte arrays of any size, and must not see them turned into Arrays.)
  var rawStringify = JSON.stringify;
  method(JSON, "stringify", function stringify(v, replacer, space) {
    return rawStringify(v, function (k, x) {
      if (isView(x)) x = arraySlice.call(x);
      else if (x instanceof ArrayBuffer) x = arraySlice.call(new Uint8Array(x));
      return typeof replacer === "function" ? replacer.call(this, k, x) : x;
    }, space);
  });
  // Strings are bytes: a character code keeps its low byte.
  var rawFromCharCode = String.fromCharCode;
  method(String, "fromCharCode", function fromCharCode() {
    var codes = [];
    for (var i = 0; i < arguments.length; i++) codes.push(arguments[i] & 255);
    return rawFromCharCode.apply(String, codes);
  });
  // split() ignores its limit.
  var split = String.prototype.split;
  method(String.prototype, "split", function (sep) { return split.call(this, sep); });
  // match() with the g flag and no match gives [], not null.
  var match = String.prototype.match;
  method(String.prototype, "match", function (re) {
    var m = match.call(this, re);
    return m === null && re instanceof RegExp && re.global ? [] : m;
  });
  // Math.pow multiplies out small integer powers and takes exp(log(x) * y) for the rest, so
  // Math.pow(2, 32) is 4294967295.9999967 and Math.pow(2, -24) is not exactly 2^-24 (jswrap_math.c).
  var exp = Math.exp, log = Math.log;
  method(Math, "pow", function pow(x, y) {
    x = +x;
    y = +y;
    var yi = y | 0;
    if (yi >= 0 && yi < 10 && yi === y) {
      if (yi === 0) return 1;
      var p = x;
      while (yi > 1) { p *= x; yi--; }
      return p;
    }
    if (x < 0 && y % 1 === 0) return y % 2 === 0 ? exp(log(-x) * y) : -exp(log(-x) * y);
    return x !== 0 || 0 >= y ? exp(log(x) * y) : 0;
  });
  // Math.round rounds halves away from zero (-2.5 is -3).
  var floor = Math.floor;
  method(Math, "round", function round(x) {
    x = +x;
    if (!isFinite(x) || x === 0) return x;
    var r = x < 0 ? -floor(-x + 0.5) : floor(x + 0.5);
    return r === 0 && x < 0 ? -0 : r;
  });
  // ---- the host bridge -------------------------------------------------------------------------
  var BYTES = "\u0001b", UNDEF = "\u0001u";
  function bytesToString(u8) {
    var s = "";
    for (var i = 0; i < u8.length; i += 4096) s += rawFromCharCode.apply(null, taSubarray.call(u8, i, Math.min(i + 4096, u8.length)));
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
      bufs.push(abSlice.call(u8.buffer, u8.byteOffset, u8.byteOffset + u8.byteLength));
      return { [BYTES]: kind, i: bufs.length - 1 };
    }
    return rawStringify(v === undefined ? { [UNDEF]: 1 } : v, function (k, x) {
      if (x === undefined) return { [UNDEF]: 1 };
      if (x instanceof ArrayBuffer) return keep("ArrayBuffer", new Uint8Array(x));
      if (isView(x)) return keep(x.constructor.name, new Uint8Array(x.buffer, x.byteOffset, x.byteLength));
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
    if (v instanceof Error) return ((v.constructor && v.constructor.name) || "Error") + ": " + String(v);
    if (v instanceof ArrayBuffer) return "new ArrayBuffer([" + Array.prototype.join.call(new Uint8Array(v), ", ") + "])";
    if (isView(v)) return "new " + v.constructor.name + "([" + Array.prototype.join.call(v, ", ") + "])";
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
  function clearTimer(args, name) {
    // Espruino: no argument clears every timer; an argument that is undefined is an error.
    if (args.length === 0) {
      Object.keys(timers).forEach(function (id) { call("timer.clear", [+id]); });
      timers = {};
      return;
    }
    var id = args[0];
    if (id === undefined) throw new Error(name + "(undefined) not allowed. Use " + name + "() instead");
    if (timers[id]) {
      delete timers[id];
      call("timer.clear", [id]);
    }
  }
  G.setTimeout = function (fn, ms) { return addTimer(fn, ms, Array.prototype.slice.call(arguments, 2), false); };
  G.setInterval = function (fn, ms) { return addTimer(fn, ms, Array.prototype.slice.call(arguments, 2), true); };
  G.clearTimeout = function () { clearTimer(arguments, "clearTimeout"); };
  G.clearInterval = function () { clearTimer(arguments, "clearInterval"); };

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
    if (v && (Array.isArray(v) || isView(v))) {
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
    if (v && (Array.isArray(v) || isView(v))) { for (var j = 0; j < v.length; j++) o = putBytes(v[j], out, o); return o; }
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
    // A single Uint8Array comes back as the same object, as on Espruino.
    toUint8Array: function () { return toBytes(arguments); },
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
      for (var i = 0; i < data.length; i++) if (data.charCodeAt(i) > 255) return stringToBytes(utf8(data));
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
      return b === undefined ? undefined : abSlice.call(b.buffer, b.byteOffset, b.byteOffset + b.byteLength);
    },
    readJSON: function (name, noExceptions) {
      var s = Storage.read(name);
      if (s === undefined) return undefined;
      try { return JSON.parse(s); } catch (e) { if (noExceptions) return undefined; throw e; }
    },
    write: function (name, data, offset, size) {
      var bytes = dataToBytes(data);
      if (!bytes.length && offset === undefined && size === undefined) throw new Error("Can't create zero length file");
      return call("storage.write", [name, bytes, offset, size]);
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
  // The ESP32's Wifi, as the real interpreter's stand-in has it (interpreter/device.ts WIFI_STAND_IN):
  // a join succeeds a moment later; drop() is the network going away.
  if (config.hasWifi) {
    var Wifi = makeEmitter({});
    Wifi.connect = function (ssid, options, cb) {
      G.setTimeout(function () {
        Wifi.ssid = ssid;
        Wifi.password = options && options.password;
        Wifi.joins = (Wifi.joins | 0) + 1;
        Wifi.emit("connected", {});
        if (cb) cb(null);
      }, 20);
    };
    Wifi.drop = function () { Wifi.ssid = undefined; Wifi.emit("disconnected", {}); };
    modules.Wifi = Wifi;
  }
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
    Bluetooth.setConsole = function () { consoleDevice = "Bluetooth"; };
    // As if the central had sent d: typed into the REPL while the console is on Bluetooth, else (after
    // the input queue, as on a board) to Bluetooth.on("data").
    Bluetooth.inject = function (d) {
      var s = G.E.toString(d);
      if (consoleDevice === "Bluetooth") call("ble.repl", [s.length]);
      else G.setTimeout(function () { Bluetooth.emit("data", s); }, 0);
    };
    G.Bluetooth = Bluetooth;
    // The advertised name is kept where a test can read it (a board puts it on the air).
    G.NRF = makeEmitter({ setAdvertising: function (data, o) { G.NRF.advertisedName = o && o.name; } });
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
