// How much of an Espruino board's variable pool the code in an emulated device would hold.
//
// This is a MODEL of the real interpreter, not a measurement of it, and no budget is checked against
// it: the budgets are measured on the real interpreter (test/real-memory.test.ts). Against it the model
// reads the Puck.js bundle's own variables about 60% high, and moved the wrong way when the firmware's
// real usage fell (docs/EMULATOR.md "Memory"). It remains the emulated process.memory()'s number. QuickJS reports what its heap holds
// (objects, properties, strings, functions, array elements, bytes); Espruino stores everything in
// fixed-size JsVars (13-16 bytes). We turn the first into the second, category by category, against a
// baseline taken after the emulator's own world is installed and before the firmware runs:
//
//   objects            1 var each (the object's own JsVar)
//   properties         1 var each (Espruino's name var; small ints and short strings live inside it)
//   array elements     1 var each (an index name var holding the value)
//   strings            1 var + one extension var per further (bytesPerVar - 3) characters
//   function objects   FUNCTION_VARS more each (code reference, scope link, parameter names, the name
//                      binding in the enclosing scope); their QuickJS properties are counted above.
//                      Code itself costs nothing: Espruino runs code loaded from Storage in place in
//                      flash, and a nested function that has not been created yet costs nothing either,
//                      so QuickJS's bytecode and source text are not charged.
//   other heap bytes   what remains of QuickJS's heap growth once everything above and an allowance
//                      for bytecode bookkeeping (the bytecode size again) are taken off: mostly
//                      ArrayBuffer contents. Charged at bytesPerVar bytes per var.
//
// Calibration (docs/EMULATOR.md): design.md §5 measured tweetnacl alone at 1,461-2,082 of Puck.js's
// variables. FUNCTION_VARS is chosen so that both nacl.js and nacl-fast.js, loaded into a fresh
// emulated Puck.js, land inside that range (test/emulator.test.ts checks it).

export const FUNCTION_VARS = 13;
/** QuickJS's own string header (JSString + malloc overhead), measured on the wasm32 build. */
const QJS_STRING_HEADER_BYTES = 17;
/** QuickJS's JSValue in a fast array, wasm32 NaN-boxed. */
const QJS_VALUE_BYTES = 8;

/** The fields of QuickJS's JSMemoryUsage we use (runtime.computeMemoryUsage()). */
export interface QuickJSMemoryCounters {
  memory_used_size: number;
  obj_count: number;
  obj_size: number;
  prop_count: number;
  prop_size: number;
  shape_size: number;
  atom_size: number;
  str_count: number;
  str_size: number;
  js_func_size: number;
  js_func_pc2line_size: number;
  fast_array_elements: number;
}

/** Counters plus the number of bytecode function objects (closures), from the class table. */
export interface HeapSnapshot extends QuickJSMemoryCounters {
  function_objects: number;
}

const FIELDS: (keyof HeapSnapshot)[] = [
  "memory_used_size", "obj_count", "obj_size", "prop_count", "prop_size", "shape_size", "atom_size",
  "str_count", "str_size", "js_func_size", "js_func_pc2line_size", "fast_array_elements", "function_objects",
];

export function snapshotFrom(counters: Record<string, number>, functionObjects: number): HeapSnapshot {
  const s = { function_objects: functionObjects } as HeapSnapshot;
  for (const f of FIELDS) if (f !== "function_objects") s[f] = Number(counters[f]) || 0;
  return s;
}

export function heapDelta(now: HeapSnapshot, base: HeapSnapshot): HeapSnapshot {
  const d = {} as HeapSnapshot;
  for (const f of FIELDS) d[f] = now[f] - base[f];
  return d;
}

/** Espruino variables a string of `chars` characters takes, for a board with `bytesPerVar`. */
export function stringVars(chars: number, bytesPerVar: number): number {
  const perExtension = bytesPerVar - 3;
  return 1 + Math.max(0, Math.ceil((chars - perExtension) / perExtension));
}

/** The model above, applied to a heap delta. Never negative. */
export function estimateEspruinoVars(d: HeapSnapshot, bytesPerVar: number): number {
  const chars = Math.max(0, d.str_size - d.str_count * QJS_STRING_HEADER_BYTES);
  const avgChars = d.str_count > 0 ? chars / d.str_count : 0;
  const strings = d.str_count > 0 ? d.str_count * stringVars(avgChars, bytesPerVar) : 0;
  const explainedBytes =
    d.obj_size + d.prop_size + d.shape_size + d.atom_size + d.str_size + d.js_func_size +
    d.js_func_pc2line_size + d.fast_array_elements * QJS_VALUE_BYTES;
  const codeAllowance = Math.max(0, d.js_func_size);
  const otherBytes = Math.max(0, d.memory_used_size - explainedBytes - codeAllowance);
  const vars =
    d.obj_count + d.prop_count + d.fast_array_elements + strings +
    d.function_objects * FUNCTION_VARS + otherBytes / bytesPerVar;
  return Math.max(0, Math.round(vars));
}

/** Heap bytes QuickJS may use per byte of the board's variable pool. QuickJS keeps bytecode and source
 *  text in RAM where Espruino keeps code in flash; tweetnacl takes about 44-88 QuickJS bytes per
 *  estimated variable (nacl.js / nacl-fast.js), data structures 15-25. A factor of 8 on 13-byte vars
 *  (104 bytes per var) keeps code-heavy firmware that fits the real board inside the limit; the byte
 *  limit is a backstop against runaway allocation, the variable estimate is the budget to check. */
export const QUICKJS_BYTES_FACTOR = 8;

export function memoryLimitBytes(baselineBytes: number, vars: number, bytesPerVar: number): number {
  return Math.ceil(baselineBytes + vars * bytesPerVar * QUICKJS_BYTES_FACTOR);
}

/** Reads "JSObject classes" rows ("  count  classId  Name") out of runtime.dumpMemoryUsage(). */
export function classCounts(dump: string): Map<string, number> {
  const counts = new Map<string, number>();
  const start = dump.indexOf("JSObject classes");
  if (start < 0) return counts;
  for (const line of dump.slice(start).split("\n").slice(1)) {
    const m = /^\s+(\d+)\s+(\d+)\s+(\S+)\s*$/.exec(line);
    if (!m) {
      if (line.trim() === "") continue;
      break;
    }
    counts.set(`${m[2]} ${m[3]}`, Number(m[1]));
  }
  return counts;
}
