// The device's SymCrypto: SHA-256, HMAC and HKDF on the native SHA-256, AES-CCM-16-64-128 on the
// native AES (ECB/CBC, or Bangle.js 2's native CCM), and whatever extra AEAD suites the board
// entry passes in (secretbox only on boards that carry it, so the Puck.js bundle has none of it).
// Espruino subset only (design.md §5).

import type { Bytes } from "../bytes.ts";
import type { SymCrypto } from "./types.ts";
import { SUITE_AES_CCM_16_64_128 } from "./types.ts";
import type { Natives } from "./natives.ts";
import { hmacSha256, hkdfSha256 } from "./hmac.ts";
import { ccmSeal, ccmOpen } from "./ccm.ts";

/** One AEAD suite: seal returns the sealed bytes; open returns undefined for anything it cannot
 *  authenticate (bad lengths included) and never throws. */
export interface AeadImpl {
  suite: number;
  seal(key: Bytes, nonce: Bytes, pt: Bytes): Bytes;
  open(key: Bytes, nonce: Bytes, sealed: Bytes): Bytes | undefined;
}

const CCM_KEY_LEN = 16;
const CCM_NONCE_LEN = 13;
const CCM_TAG_LEN = 8;

/** AES-CCM-16-64-128 on whichever AES the board has natively, or undefined when it has none. */
function aesCcmSuite(n: Natives): AeadImpl | undefined {
  let seal: ((key: Bytes, nonce: Bytes, pt: Bytes) => Bytes) | undefined;
  let open: ((key: Bytes, nonce: Bytes, sealed: Bytes) => Bytes | undefined) | undefined;
  const ecb = n.aesEcb;
  const cbc = n.aesCbc;
  const nativeSeal = n.ccmSeal;
  const nativeOpen = n.ccmOpen;
  if (ecb && cbc) {
    const blocks = { aesEcb: ecb, aesCbc: cbc };
    seal = (key, nonce, pt) => ccmSeal(blocks, key, nonce, pt, CCM_TAG_LEN);
    open = (key, nonce, sealed) => ccmOpen(blocks, key, nonce, sealed, CCM_TAG_LEN);
  } else if (nativeSeal && nativeOpen) {
    seal = (key, nonce, pt) => nativeSeal(key, nonce, pt, CCM_TAG_LEN);
    open = (key, nonce, sealed) => nativeOpen(key, nonce, sealed, CCM_TAG_LEN);
  }
  if (!seal || !open) return undefined;
  const sealWith = seal;
  const openWith = open;
  return {
    suite: SUITE_AES_CCM_16_64_128,
    seal: (key, nonce, pt) => {
      if (key.length !== CCM_KEY_LEN || nonce.length !== CCM_NONCE_LEN) {
        throw new Error("aes-ccm: bad key or nonce length");
      }
      return sealWith(key, nonce, pt);
    },
    open: (key, nonce, sealed) => {
      if (key.length !== CCM_KEY_LEN || nonce.length !== CCM_NONCE_LEN || sealed.length < CCM_TAG_LEN) return undefined;
      return openWith(key, nonce, sealed);
    },
  };
}

export function deviceCrypto(n: Natives, extra: AeadImpl[]): SymCrypto {
  const aeads: AeadImpl[] = [];
  const ccm = aesCcmSuite(n);
  if (ccm) aeads.push(ccm);
  for (const a of extra) aeads.push(a);

  function find(suite: number): AeadImpl | undefined {
    for (const a of aeads) if (a.suite === suite) return a;
    return undefined;
  }

  return {
    sha256: (data) => n.sha256(data),
    hmacSha256: (key, data) => hmacSha256(n.sha256, key, data),
    hkdf: (salt, ikm, info, length) => hkdfSha256(n.sha256, salt, ikm, info, length),
    suites: () => {
      const out: number[] = [];
      for (const a of aeads) out.push(a.suite);
      return out;
    },
    seal: (suite, key, nonce, pt) => {
      const a = find(suite);
      if (!a) throw new Error("unsupported suite " + suite);
      return a.seal(key, nonce, pt);
    },
    open: (suite, key, nonce, sealed) => {
      const a = find(suite);
      return a ? a.open(key, nonce, sealed) : undefined;
    },
    random: (len) => n.random(len),
  };
}
