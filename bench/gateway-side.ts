// What the gateway sends the device during the benchmark, computed in Node with the gateway's own
// crypto (gateway/crypto/symmetric.ts) and codec (gateway/encoding/cbor.ts), as gateway/link/server.ts and
// gateway/registry/registrar.ts do; and the checks that the device's frames are what the gateway accepts. The
// benchmark runs these once per suite before timing anything, so every timed operation is one that
// really interoperates.

import { ctEqual, type Bytes } from "../firmware/bytes.ts";
import type { SymCrypto } from "../firmware/crypto/types.ts";
import { encodeFrame, FrameDecoder } from "../firmware/proto/frame.ts";
import { deriveLinkKeys, DIR_UP, frameNonce, joinTag, JOIN_NONCE_BYTES, type Codec, type LinkKeys } from "../firmware/proto/keys.ts";
import { newLink, openMessage, sealMessage, type Link } from "../firmware/proto/link.ts";
import { decodeMessage, encodeMessage, Msg, type InnerMessage, type Message } from "../firmware/proto/messages.ts";
import { issueCertificate } from "../gateway/encoding/cwt.ts";
import { generateEd25519 } from "../gateway/crypto/ed25519.ts";
import { zlib } from "../gateway/link/crc32.ts";

export const CERT_ID_BYTES = 16;
export const GRANTED_SECONDS = 3600;

export interface GatewayAnswers {
  /** The JoinAccept frame for the device's JoinRequest. */
  acceptFrame: Bytes;
  /** The link keys the gateway derived (the device must derive the same). */
  keys: LinkKeys;
  /** A RegisterOk (rid 1) with a freshly issued certificate, sealed at sequence number 1. */
  registerOkFrame: Bytes;
  certificateBytes: number;
}

/** The gateway's side of a join and a register, answering the device's JoinRequest frame. */
export function answerJoinAndRegister(c: SymCrypto, cbor: Codec, rootKey: Bytes, joinRequestFrame: Bytes, now: number): GatewayAnswers {
  const m = onlyMessage(joinRequestFrame, cbor);
  if (m.t !== Msg.JoinRequest) throw new Error("gateway side: not a JoinRequest");
  if (!ctEqual(joinTag(c, cbor, rootKey, m.id, m.ctr, m.nonce, m.suite), m.tag)) throw new Error("gateway side: the device's join tag does not verify");
  const nonceG = c.random(JOIN_NONCE_BYTES);
  const tag = joinTag(c, cbor, rootKey, m.id, m.ctr, m.nonce, m.suite, nonceG);
  const acceptFrame = encodeFrame(cbor.encode(encodeMessage({ t: Msg.JoinAccept, nonce: nonceG, tag })), zlib.crc32);
  const keys = deriveLinkKeys(c, cbor, rootKey, m.id, m.ctr, m.nonce, nonceG, m.suite);

  // As gateway/registry/registrar.ts issues it; "gateway.local" is the gateway's default id (gateway/gateway.ts).
  const gatewayKey = generateEd25519();
  const certId = c.random(CERT_ID_BYTES);
  const cert = issueCertificate(
    { iss: "gateway.local", sub: m.id, iat: now, nbf: now, exp: now + GRANTED_SECONDS, cti: certId, publicKey: generateEd25519().publicKey },
    gatewayKey.seed,
  );
  const registerOk = sealMessage(c, cbor, newLink(keys, false), { t: Msg.RegisterOk, rid: 1, granted: GRANTED_SECONDS, certId, cert });
  return { acceptFrame, keys, registerOkFrame: encodeFrame(registerOk, zlib.crc32), certificateBytes: cert.length };
}

/** Throws unless frame is a RegisterRequest (rid 1) the gateway opens with keys. */
export function checkRegisterRequest(c: SymCrypto, cbor: Codec, keys: LinkKeys, frame: Bytes): void {
  const m = onlyMessage(frame, cbor);
  if (m.t !== Msg.Link) throw new Error("gateway side: the register request is not a Link frame");
  const inner = openMessage(c, cbor, newLink(keys, false), m);
  if (typeof inner === "number") throw new Error(`gateway side: the device's register request was dropped (reason ${inner})`);
  if (inner.t !== Msg.RegisterRequest || inner.rid !== 1) throw new Error("gateway side: not the RegisterRequest for rid 1");
}

/** Throws unless frame is a Link frame whose sealed payload opens to pt under the device's up key. */
export function checkProtected(c: SymCrypto, cbor: Codec, keys: LinkKeys, frame: Bytes, pt: Bytes): void {
  const m = onlyMessage(frame, cbor);
  if (m.t !== Msg.Link) throw new Error("gateway side: the protected message is not a Link frame");
  const opened = c.open(keys.suite, keys.up, frameNonce(keys.suite, DIR_UP, 0, m.seq), m.sealed);
  if (!opened || !ctEqual(opened, pt)) throw new Error("gateway side: the protected message does not open to its plaintext");
}

/** The one message in a frame the device sent. */
export function onlyMessage(frame: Bytes, cbor: Codec): Message {
  const frames = new FrameDecoder(zlib.crc32).push(frame);
  if (frames.length !== 1) throw new Error(`gateway side: expected one frame, got ${frames.length}`);
  const m = decodeMessage(cbor.decode(frames[0]));
  if (m instanceof Error) throw m;
  return m;
}

/** The inner message of a Link frame the device sent, which must be of type t. */
export function openInner(c: SymCrypto, cbor: Codec, link: Link, frame: Bytes, t: Msg): InnerMessage {
  const m = onlyMessage(frame, cbor);
  if (m.t !== Msg.Link) throw new Error("gateway side: not a Link frame");
  const inner = openMessage(c, cbor, link, m);
  if (typeof inner === "number") throw new Error(`gateway side: the device's frame was dropped (reason ${inner})`);
  if (inner.t !== t) throw new Error(`gateway side: expected message ${t}, got ${inner.t}`);
  return inner;
}
