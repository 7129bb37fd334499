// Espruino's packet protocol for files (2v25 and later; src/jsinteractive.c, and EspruinoTools'
// core/serial.js espruinoSendFile, which the Espruino IDE uses). A packet is DLE SOH, two bytes of
// type and length (type in the top 3 bits, length in the low 13), then the payload, raw: no escaping,
// no echo, no JavaScript parsed on the device. A FILE_SEND packet names the file and its size
// ({"fn":..., "s":...}); DATA packets then fill it in order, the first creating the file at its full
// size, as our Storage.write lines do. The device answers each packet with ACK (0x06) or NAK (0x15).
//
// What a NAK does not cover: Espruino ACKs a DATA packet even when Storage could not take it
// (`data->ok |= jsfWriteFile(...)`, where ok starts true), so a full Storage shows only in the file's
// CRC. Every caller checks the CRC of what the device stored before using it (flash's "verify",
// provisioning's "verify"), over packets as over lines.

import { SerialError } from "./port-errors.ts";

export const DLE = 0x10;
export const SOH = 0x01;
export const ACK = 0x06;
export const NAK = 0x15;
export const PT_FILE_SEND = 0x6000;
export const PT_DATA = 0x8000;
/** The largest payload a packet's 13-bit length can say. */
export const MAX_PAYLOAD = 0x1fff;

/** One packet: DLE SOH, type|length big-endian, payload. */
export function packet(type: number, payload: Uint8Array): Uint8Array {
  if (payload.length > MAX_PAYLOAD) throw new RangeError(`a packet carries at most ${MAX_PAYLOAD} bytes, not ${payload.length}`);
  const flags = type | payload.length;
  const out = new Uint8Array(4 + payload.length);
  out.set([DLE, SOH, flags >> 8, flags & 0xff]);
  out.set(payload, 4);
  return out;
}

/** What sending packets needs of the line to the device. */
export interface PacketLine {
  /** For messages. */
  name: string;
  send(bytes: Uint8Array): Promise<void>;
  /** Resolves with true for ACK, false for NAK; rejects when the line fails or nothing comes within
   *  timeoutMs. Called before the packet is sent, so that a quick answer is not missed. */
  reply(timeoutMs: number): Promise<boolean>;
  /** How long the answer to a packet of this many bytes may take. */
  replyMs(bytes: number): number;
}

/** Sends one packet and resolves with the device's answer: true for ACK, false for NAK. */
export async function exchangePacket(line: PacketLine, type: number, payload: Uint8Array): Promise<boolean> {
  const bytes = packet(type, payload);
  const answer = line.reply(line.replyMs(bytes.length));
  answer.catch(() => {}); // observed below, after the send; a failed send must not leave it unhandled
  await line.send(bytes);
  return answer;
}

/** Sends a whole file as packets of at most chunkBytes; onChunk(bytesSoFar) after each. */
export async function sendFilePackets(line: PacketLine, name: string, data: Uint8Array, chunkBytes: number, onChunk?: (written: number) => void): Promise<void> {
  if (data.length === 0) throw new RangeError("Espruino refuses an empty file as packets (its size must not be 0): write it as a line");
  const size = Math.min(chunkBytes, MAX_PAYLOAD);
  const head = new TextEncoder().encode(JSON.stringify({ fn: name, s: data.length }));
  if (!(await exchangePacket(line, PT_FILE_SEND, head))) {
    throw new PacketRefused(`the device on ${line.name} refused to take ${name} as packets`);
  }
  for (let off = 0; off < data.length; off += size) {
    const chunk = data.subarray(off, Math.min(off + size, data.length));
    if (!(await exchangePacket(line, PT_DATA, chunk))) {
      throw new PacketRefused(`the device on ${line.name} refused ${name}'s bytes at offset ${off} (the upload timed out on the device, or it lost the file)`);
    }
    onChunk?.(off + chunk.length);
  }
}

export class PacketRefused extends SerialError {}
