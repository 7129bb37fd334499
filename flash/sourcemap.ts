// Just enough of Source Map v3 to turn a position in a bundle back into file:line of the TypeScript it
// came from, so the build can say "firmware/x.ts:12" instead of "build/puckjs.js:1:8812". The map is
// made in memory and never written: the device gets no sourcemap.

export interface RawSourceMap {
  sources: string[];
  mappings: string;
}

export interface OriginalPosition {
  /** As listed in the map (relative to the map's own folder). */
  source: string;
  /** 1-based. */
  line: number;
  /** 0-based. */
  column: number;
}

/** One mapped segment: generated column, then source index, original line and column (all 0-based). */
type Segment = [number, number, number, number];

const BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const BASE64_VALUE = new Map<string, number>([...BASE64].map((c, i) => [c, i]));

/** Decodes one line's base64 VLQ fields, continuing the running values in `state`. */
function decodeLine(text: string, state: number[]): Segment[] {
  const segments: Segment[] = [];
  state[0] = 0; // the generated column restarts on every line; the rest carry over
  for (const part of text.split(",")) {
    if (part === "") continue;
    const fields: number[] = [];
    let value = 0;
    let shift = 0;
    for (const ch of part) {
      const digit = BASE64_VALUE.get(ch);
      if (digit === undefined) throw new Error(`sourcemap: bad VLQ character ${JSON.stringify(ch)}`);
      value += (digit & 31) << shift;
      if (digit & 32) {
        shift += 5;
      } else {
        fields.push(value & 1 ? -(value >>> 1) : value >>> 1);
        value = 0;
        shift = 0;
      }
    }
    for (let i = 0; i < fields.length && i < 4; i++) state[i] += fields[i];
    if (fields.length >= 4) segments.push([state[0], state[1], state[2], state[3]]);
  }
  return segments;
}

export class SourceMapLookup {
  private readonly lines: Segment[][];

  constructor(private readonly map: RawSourceMap) {
    const state = [0, 0, 0, 0];
    this.lines = map.mappings.split(";").map((text) => decodeLine(text, state));
  }

  /** The source position of the last mapped segment at or before (line, column) on that line. */
  originalPosition(line: number, column: number): OriginalPosition | undefined {
    const segments = this.lines[line - 1];
    if (!segments) return undefined;
    let best: Segment | undefined;
    for (const s of segments) {
      if (s[0] > column) break;
      best = s;
    }
    if (!best) return undefined;
    return { source: this.map.sources[best[1]], line: best[2] + 1, column: best[3] };
  }
}

/** Line (1-based) and column (0-based) of a character offset. */
export function lineColumnAt(code: string, offset: number): { line: number; column: number } {
  let line = 1;
  let lineStart = 0;
  for (let i = code.indexOf("\n"); i !== -1 && i < offset; i = code.indexOf("\n", i + 1)) {
    line++;
    lineStart = i + 1;
  }
  return { line, column: offset - lineStart };
}
