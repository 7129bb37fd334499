// The device's SymCrypto: SHA-256, HMAC and HKDF on the native SHA-256, AES-CCM-16-64-128 on the
// native AES (ECB/CBC, or Bangle.js 2's native CCM), and whatever extra AEAD suites the board entry
// passes in (secretbox only on boards that carry it, so the Puck.js bundle has none of it).
// One class, its methods shared by every instance: the fewest live functions the interface allows.
// Espruino subset only (design.md §5).

import { concat, type Bytes } from "../bytes.ts";
import { ccm } from "./ccm.ts";
import { hkdfSha256, hmacSha256 } from "./hmac.ts";
import type { Natives } from "./natives.ts";
import { SUITE_AES_CCM_16_64_128, type SymCrypto } from "./types.ts";

/** One AEAD suite: seal returns the sealed bytes; open returns undefined for anything it cannot
 *  authenticate (bad lengths included) and never throws. */
export interface AeadImpl {
  suite: number;
  seal(key: Bytes, nonce: Bytes, pt: Bytes): Bytes;
  open(key: Bytes, nonce: Bytes, sealed: Bytes): Bytes | undefined;
}

const CCM_TAG_LEN = 8;

export class DeviceCrypto implements SymCrypto {
  n_: Natives;
  /** Further suites the board carries (secretbox), or none. */
  extra_: AeadImpl[] | undefined;

  constructor(n: Natives, extra?: AeadImpl[]) {
    this.n_ = n;
    this.extra_ = extra && extra.length ? extra : undefined;
  }

  sha256(d: Bytes): Bytes {
    return new Uint8Array(this.n_.crypto.SHA256(d));
  }

  seal(suite: number, key: Bytes, nonce: Bytes, pt: Bytes): Bytes {
    if (suite === SUITE_AES_CCM_16_64_128 && (this.n_.crypto.AES || this.n_.aes)) {
      if (key.length !== 16 || nonce.length !== 13) throw new Error("aes-ccm: bad key or nonce length");
      if (this.n_.crypto.AES) return ccm(this.n_.crypto.AES, key, nonce, pt, CCM_TAG_LEN, false) as Bytes;
      const r = this.n_.aes.ccmEncrypt(pt, key, nonce, CCM_TAG_LEN);
      return concat([new Uint8Array(r.data), new Uint8Array(r.tag)]);
    }
    if (this.extra_) for (const a of this.extra_) if (a.suite === suite) return a.seal(key, nonce, pt);
    throw new Error("unsupported suite " + suite);
  }

  open(suite: number, key: Bytes, nonce: Bytes, sealed: Bytes): Bytes | undefined {
    if (suite === SUITE_AES_CCM_16_64_128 && (this.n_.crypto.AES || this.n_.aes)) {
      if (key.length !== 16 || nonce.length !== 13 || sealed.length < CCM_TAG_LEN) return undefined;
      if (this.n_.crypto.AES) return ccm(this.n_.crypto.AES, key, nonce, sealed, CCM_TAG_LEN, true);
      const split = sealed.length - CCM_TAG_LEN;
      try {
        return new Uint8Array(this.n_.aes.ccmDecrypt(sealed.subarray(0, split), key, nonce, sealed.subarray(split)));
      } catch (e) {
        // Bangle.js 2 throws for a tag that does not verify; to our callers that is "not authentic".
        return undefined;
      }
    }
    if (this.extra_) for (const a of this.extra_) if (a.suite === suite) return a.open(key, nonce, sealed);
    return undefined;
  }

  /** E.hwRand() gives 32 bits of hardware noise per call. */
  random(len: number): Bytes {
    const out = new Uint8Array(len);
    let r = 0;
    for (let i = 0; i < len; i++) {
      if ((i & 3) === 0) r = this.n_.E.hwRand();
      out[i] = (r >>> (8 * (i & 3))) & 255;
    }
    return out;
  }
}

// HMAC and HKDF: the hmac.ts functions themselves are the methods (they use this.sha256).
export interface DeviceCrypto {
  hmacSha256(key: Bytes, data: Bytes): Bytes;
  hkdf(salt: Bytes, ikm: Bytes, info: Bytes, length: number): Bytes;
}
DeviceCrypto.prototype.hmacSha256 = hmacSha256;
DeviceCrypto.prototype.hkdf = hkdfSha256;

/** The suites a device's crypto can run (its board's natives, then its extra suites). A function, not
 *  a method: the firmware itself never asks, so the device does not keep it alive. */
export function deviceSuites(d: DeviceCrypto): number[] {
  const out: number[] = [];
  if (d.n_.crypto.AES || d.n_.aes) out.push(SUITE_AES_CCM_16_64_128);
  if (d.extra_) for (const a of d.extra_) out.push(a.suite);
  return out;
}

export function deviceCrypto(n: Natives, extra: AeadImpl[]): SymCrypto {
  return new DeviceCrypto(n, extra);
}
