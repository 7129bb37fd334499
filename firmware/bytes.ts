// Byte helpers for the device and the gateway alike. Espruino subset only (docs: design.md §5):
// no TextEncoder, no Uint8Array.from, no spread, and every function is declared before use.

export type Bytes = Uint8Array;

export function concat(parts: Bytes[]): Bytes {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** 4 bytes, big-endian, of an unsigned 32-bit number. */
export function u32be(n: number): Bytes {
  return new Uint8Array([(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
}

export function readU32be(b: Bytes, off: number): number {
  return ((b[off] << 24) | (b[off + 1] << 16) | (b[off + 2] << 8) | b[off + 3]) >>> 0;
}

/** Compares two byte strings in time that depends only on their lengths: for MACs and tags. */
export function ctEqual(a: Bytes, b: Bytes): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

/** Overwrites key material we are done with, so it does not linger in the heap. */
export function wipe(b: Bytes | undefined): void {
  if (b) b.fill(0);
}

export function utf8Encode(s: string): Bytes {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c >= 0xd800 && c < 0xdc00 && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d < 0xe000) {
        c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i++;
      }
    }
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return new Uint8Array(out);
}

/** Strict UTF-8 decoding: returns undefined for malformed input instead of guessing. */
export function utf8Decode(b: Bytes): string | undefined {
  let s = "";
  let i = 0;
  while (i < b.length) {
    const c = b[i++];
    let cp: number;
    let need: number;
    let min: number;
    if (c < 0x80) { s += String.fromCharCode(c); continue; }
    if (c >= 0xc2 && c < 0xe0) { cp = c & 31; need = 1; min = 0x80; }
    else if (c >= 0xe0 && c < 0xf0) { cp = c & 15; need = 2; min = 0x800; }
    else if (c >= 0xf0 && c < 0xf5) { cp = c & 7; need = 3; min = 0x10000; }
    else return undefined;
    if (i + need > b.length) return undefined;
    for (let k = 0; k < need; k++) {
      const d = b[i++];
      if ((d & 0xc0) !== 0x80) return undefined;
      cp = (cp << 6) | (d & 63);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000)) return undefined;
    if (cp >= 0x10000) {
      cp -= 0x10000;
      s += String.fromCharCode(0xd800 + (cp >> 10), 0xdc00 + (cp & 1023));
    } else s += String.fromCharCode(cp);
  }
  return s;
}

export function toHex(b: Bytes): string {
  let s = "";
  for (let i = 0; i < b.length; i++) s += (b[i] < 16 ? "0" : "") + b[i].toString(16);
  return s;
}

export function fromHex(h: string): Bytes | undefined {
  if (h.length % 2 || !/^[0-9a-fA-F]*$/.test(h)) return undefined;
  const out = new Uint8Array(h.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.substr(i * 2, 2), 16);
  return out;
}
