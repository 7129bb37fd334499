// A ledger of every AES-CCM keystream use, for proving that no (key, nonce) pair is ever used twice.
//
// CCM (RFC 3610) encrypts with a keystream S_i = AES(K, A_i), where each counter block A_i is
// flags | nonce | i. The device builds CCM from two native AES calls (firmware/crypto/ccm.ts):
//   - "cbc-encrypt" with a zero IV over B0 || AAD || padded message: the CBC-MAC. B0 is
//     flags | nonce | message length, so it names the message-level (key, nonce) pair;
//   - "ecb-encrypt" over A0 .. An: every 16-byte input block is one counter block.
// The emulator reports both as "aes" events (emulator/espruino-crypto.ts). The gateway seals on
// node:crypto, so for it we record (key, nonce, plaintext) and derive the counter blocks CCM uses.
//
// Two uses of one (key, counter block) XOR two messages with the same keystream, and two CBC-MACs
// over one B0 let a forger splice tags. So the rules are strict: each party computes each (key,
// counter block) and each (key, B0 nonce) at most once, and no (key, nonce) is sealed by both
// parties. Re-sealing identical plaintext under an old nonce is a violation too: nothing here
// compares plaintexts.
//
// Keys never leave this module: they are named key#1, key#2 ... in order of first appearance, so a
// report (or an assertion message) carries no key material.

import type { AesObservation } from "../../emulator/device.ts";
import { decode } from "../../gateway/encoding/cbor.ts";
import { toHex } from "../../firmware/bytes.ts";
import { SUITE_AES_CCM_16_64_128 } from "../../firmware/crypto/types.ts";
import { Msg } from "../../firmware/proto/messages.ts";

export type Party = "device" | "gateway";
export type Role = "seal" | "open";

/** One CCM (or other AEAD) message: a message-level (key, nonce) use. */
export interface AeadMessage {
  /** Position in the ledger, from 1. */
  n: number;
  party: Party;
  role: Role;
  keyId: number;
  /** Hex. Nonces are public (they follow from the sequence number). */
  nonce: string;
  /** Plaintext bytes. */
  length: number;
  /** The inner message's name, or "?" when the plaintext is not one. */
  what: string;
  /** Where in the run it happened, as the test named it (e.g. "boot 2"). */
  context: string;
}

/** One counter block encrypted for a keystream. */
export interface CounterBlockUse {
  party: Party;
  keyId: number;
  /** The whole 16-byte block, hex. */
  block: string;
  context: string;
}

export interface Reuse {
  kind: "counter block" | "nonce";
  /** "both": the device and the gateway each sealed under it. */
  party: Party | "both";
  keyId: number;
  /** The repeated block or nonce, hex. */
  value: string;
  first: string;
  second: string;
}

/** Inner messages a device sends; it only ever opens the others. */
const DEVICE_REQUESTS: number[] = [
  Msg.RegisterRequest, Msg.DeregisterRequest, Msg.CertQuery,
  // Sessions: what a device sends over its link.
  Msg.ConnectRequest, Msg.Answer, Msg.SaConfirm, Msg.Rekey, Msg.Bye,
];

const MESSAGE_NAMES: Record<number, string> = {
  [Msg.RegisterRequest]: "RegisterRequest",
  [Msg.RegisterOk]: "RegisterOk",
  [Msg.DeregisterRequest]: "DeregisterRequest",
  [Msg.DeregisterOk]: "DeregisterOk",
  [Msg.CertQuery]: "CertQuery",
  [Msg.CertAnswer]: "CertAnswer",
  [Msg.Error]: "Error",
};

const ZERO_BLOCK = new Uint8Array(16);

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** The inner message type in a plaintext, or undefined when it is not a CBOR array led by a number. */
function innerType(plaintext: Uint8Array): number | undefined {
  try {
    const v = decode(plaintext);
    return Array.isArray(v) && typeof v[0] === "number" ? v[0] : undefined;
  } catch {
    return undefined;
  }
}

/** CCM counter blocks A0..An for a message of `length` bytes (RFC 3610 §2.3). */
export function ccmCounterBlocks(nonce: Uint8Array, length: number): Uint8Array[] {
  const lBytes = 15 - nonce.length;
  const out: Uint8Array[] = [];
  for (let i = 0; i <= Math.ceil(length / 16); i++) {
    const a = new Uint8Array(16);
    a[0] = lBytes - 1;
    a.set(nonce, 1);
    for (let j = 0, c = i; j < lBytes; j++, c = Math.floor(c / 256)) a[15 - j] = c & 255;
    out.push(a);
  }
  return out;
}

export class AesLedger {
  /** Set by the test as the run goes on ("boot 1", "boot 2", ...); stamped on every record. */
  context = "";
  readonly messages: AeadMessage[] = [];
  readonly blocks: CounterBlockUse[] = [];
  /** Device AES calls that are not CCM's two (described without key material). */
  readonly unexpected: string[] = [];
  private readonly keyIds = new Map<string, number>();

  /** Feed every "aes" event of an emulated device. */
  observeDevice(o: AesObservation): void {
    if (o.op === "ecb-encrypt" && o.input.length % 16 === 0) {
      const keyId = this.keyId(o.key);
      for (let off = 0; off < o.input.length; off += 16) {
        this.blocks.push({ party: "device", keyId, block: toHex(o.input.subarray(off, off + 16)), context: this.context });
      }
    } else if (o.op === "cbc-encrypt" && o.iv && sameBytes(o.iv, ZERO_BLOCK) && o.input.length >= 16) {
      this.recordCbcMac(o.key, o.input);
    } else {
      this.unexpected.push(`${this.context}: device AES ${o.op} over ${o.input.length} bytes`);
    }
  }

  /** Record one seal by the gateway (wrap its SymCrypto.seal with this). */
  recordGatewaySeal(suite: number, key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array): void {
    const keyId = this.keyId(key);
    this.addMessage("gateway", "seal", keyId, nonce, plaintext);
    // Only CCM has counter blocks; for another suite the nonce-level record is the whole story.
    if (suite !== SUITE_AES_CCM_16_64_128) return;
    for (const a of ccmCounterBlocks(nonce, plaintext.length)) {
      this.blocks.push({ party: "gateway", keyId, block: toHex(a), context: this.context });
    }
  }

  /** Every violation of the rules above, in the order they happened. */
  reuses(): Reuse[] {
    const found: Reuse[] = [];
    const firstBlock = new Map<string, CounterBlockUse>();
    for (const u of this.blocks) {
      const k = `${u.party}|${u.keyId}|${u.block}`;
      const prev = firstBlock.get(k);
      if (prev) found.push({ kind: "counter block", party: u.party, keyId: u.keyId, value: u.block, first: this.describeBlock(prev), second: this.describeBlock(u) });
      else firstBlock.set(k, u);
    }
    const firstNonce = new Map<string, AeadMessage>();
    const firstSeal = new Map<string, AeadMessage>();
    for (const m of this.messages) {
      const k = `${m.party}|${m.keyId}|${m.nonce}`;
      const prev = firstNonce.get(k);
      if (prev) found.push({ kind: "nonce", party: m.party, keyId: m.keyId, value: m.nonce, first: describeMessage(prev), second: describeMessage(m) });
      else firstNonce.set(k, m);
      if (m.role !== "seal") continue;
      // A party's own repeats are reported above; here only the other party's seal under the same pair.
      const s = firstSeal.get(`${m.keyId}|${m.nonce}`);
      if (s && s.party !== m.party) found.push({ kind: "nonce", party: "both", keyId: m.keyId, value: m.nonce, first: describeMessage(s), second: describeMessage(m) });
      else if (!s) firstSeal.set(`${m.keyId}|${m.nonce}`, m);
    }
    return found;
  }

  /** Messages of one party (and role), in order. */
  of(party: Party, role?: Role): AeadMessage[] {
    return this.messages.filter((m) => m.party === party && (role === undefined || m.role === role));
  }

  /** B0 || [AAD] || message, as the CBC-MAC sees it (RFC 3610 §2.2). */
  private recordCbcMac(key: Uint8Array, input: Uint8Array): void {
    const flags = input[0];
    const lBytes = (flags & 7) + 1;
    const nonce = input.subarray(1, 16 - lBytes);
    let length = 0;
    for (let i = 16 - lBytes; i < 16; i++) length = length * 256 + input[i];
    const aadLen = flags & 0x40 ? (input[16] << 8) | input[17] : 0;
    const start = 16 + (aadLen ? (aadLen + 2 + 15) & ~15 : 0);
    const plaintext = input.subarray(start, start + length);
    // Which side of the exchange this is follows from what was authenticated: a device seals only its
    // requests and opens only answers. Anything else is counted as sealed (the stricter reading).
    const t = innerType(plaintext);
    const role: Role = t === undefined || DEVICE_REQUESTS.includes(t) ? "seal" : "open";
    this.addMessage("device", role, this.keyId(key), nonce, plaintext);
  }

  private addMessage(party: Party, role: Role, keyId: number, nonce: Uint8Array, plaintext: Uint8Array): void {
    const t = innerType(plaintext);
    this.messages.push({
      n: this.messages.length + 1,
      party,
      role,
      keyId,
      nonce: toHex(nonce),
      length: plaintext.length,
      what: t === undefined ? "?" : (MESSAGE_NAMES[t] ?? `type ${t}`),
      context: this.context,
    });
  }

  private keyId(key: Uint8Array): number {
    const hex = toHex(key);
    let id = this.keyIds.get(hex);
    if (id === undefined) {
      id = this.keyIds.size + 1;
      this.keyIds.set(hex, id);
    }
    return id;
  }

  /** A counter block use, with the message it served when one in the same context shares its nonce. */
  private describeBlock(u: CounterBlockUse): string {
    const nonceLen = 15 - ((parseInt(u.block.slice(0, 2), 16) & 7) + 1);
    const nonce = u.block.slice(2, 2 + 2 * nonceLen);
    const m = this.messages.find((x) => x.party === u.party && x.keyId === u.keyId && x.nonce === nonce && x.context === u.context);
    return `${u.party} ${u.context}: ${m ? `${m.role} of ${m.what} (message #${m.n})` : "keystream with no CBC-MAC beside it"}`;
  }
}

function describeMessage(m: AeadMessage): string {
  return `${m.party} ${m.context}: ${m.role} of ${m.what} (message #${m.n}, ${m.length} bytes)`;
}

/** One line per reuse, readable in an assertion failure; no key material. */
export function describeReuse(r: Reuse): string {
  const who = r.party === "both" ? "device and gateway both sealed" : `${r.party} used`;
  return `${who} ${r.kind} ${r.value} under key#${r.keyId} twice: first ${r.first}; then ${r.second}`;
}
