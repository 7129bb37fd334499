// Byte helpers for the device and the gateway alike. Espruino subset only (docs: design.md §5):
// no TextEncoder, no Uint8Array.from, no spread, and every function is declared before use.
// (UTF-8 lives inside the device CBOR codec, its only user on the device.)

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
