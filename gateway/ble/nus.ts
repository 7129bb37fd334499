// The Nordic UART service as Espruino offers it (a Puck.js's and a Bangle.js 2's console and, for
// keyproxy, the device link), and the piecing of the bytes a central writes to it.

/** UUIDs as @stoprocent/noble writes them: lower case, no dashes. */
export const NUS_SERVICE = "6e400001b5a3f393e0a9e50e24dcca9e";
/** The handset's RX: the central writes here. */
export const NUS_RX = "6e400002b5a3f393e0a9e50e24dcca9e";
/** The handset's TX: it notifies the central here. */
export const NUS_TX = "6e400003b5a3f393e0a9e50e24dcca9e";

/** The ATT MTU every link starts with (Bluetooth Core, Vol 3 Part F 3.2.8): 20 bytes of payload. */
export const DEFAULT_ATT_MTU = 23;
/** An ATT write carries MTU - 3 bytes (one opcode, two of handle). */
const ATT_WRITE_HEADER = 3;

/** bytes cut into writes that fit one ATT write each at this MTU (null: not negotiated, the default).
 *  The handset's frame layer puts them together again: a frame may span writes, a write may hold the
 *  end of one frame and the start of the next. */
export function pieces(bytes: Uint8Array, mtu: number | null | undefined): Uint8Array[] {
  const m = mtu && Number.isInteger(mtu) && mtu >= DEFAULT_ATT_MTU ? mtu : DEFAULT_ATT_MTU;
  const size = m - ATT_WRITE_HEADER;
  const out: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += size) out.push(bytes.subarray(i, Math.min(i + size, bytes.length)));
  return out;
}
