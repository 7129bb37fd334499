// The one text format of every 32-byte secret keyproxy keeps in a file of its own (gateway.key,
// gateway.x25519, the fleet CA's ca.key, the registry's KEK, the BLE bridge key, a peer's identity):
// 64 hex digits and a newline, as keyproxy writes them. Read back in either case, around any
// whitespace, because a copy restored or pasted by hand may be in capitals or lose its newline; anything
// else is not such a key, and the caller says which file and what it should hold (never its content).

/** The 32-byte key text holds, or undefined when it is not exactly 64 hex digits (after trimming whitespace). */
export function parseHexKey(text: string): Uint8Array | undefined {
  const hex = text.trim();
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) return undefined;
  const key = new Uint8Array(32);
  // Decoded straight into the key's own memory: Buffer.from(hex, "hex") would leave a copy of the
  // secret in Node's shared pool of small buffers, out of reach of whoever zeroes the key.
  Buffer.from(key.buffer).write(hex, "hex");
  return key;
}
