// The registry's key-encryption key (KEK): the device secrets the registry holds (root keys, the
// identity seeds kept in devices' names) are stored sealed under it, so the database file, a copy or
// a backup of it, reveals no key without the KEK, which lives in a file of its own (owner-only, by
// default beside the database: `keyproxy.kek`; KEYPROXY_KEK_FILE puts it elsewhere, e.g. on other
// storage than the database and its backups). docs/SECURITY.md, "Root keys at rest".
//
// A sealed value: 0x01 (the format), a 12-byte random nonce, the AES-256-GCM ciphertext and its 16-byte
// tag. The associated data names what the value is and whose (`keyproxy/root-key/v1/<device id>`), so
// a value copied into another device's row, or into another column, does not open.

import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { createFileDurably } from "../files/durable.ts";
import { decipherSecret } from "../crypto/secret-bytes.ts";
import { parseHexKey } from "../files/hex-key.ts";

export const KEK_FILE = "keyproxy.kek";
/** Where the KEK is when not beside the database. */
export const KEK_FILE_ENV = "KEYPROXY_KEK_FILE";

const FORMAT = 0x01;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;

/** What a sealed value is: its column. */
export type SealedKind = "root-key" | "identity-seed" | "kek-check";

/** The KEK is missing, unreadable, or not the one the registry's values were sealed under. */
export class KekError extends Error {}

/** The shortest sealed value (nothing sealed): a root key takes 16 bytes more (45), a seed 32 (61). */
const SEALED_OVERHEAD = 1 + NONCE_BYTES + TAG_BYTES;

/** The KEK in file: read, or (create) made with 32 random bytes, owner-only, when there is none. */
export function loadOrCreateKek(file: string, create: boolean): Buffer {
  if (!existsSync(file)) {
    if (!create) throw new KekError(`the registry's key-encryption key ${file} is missing: restore it from where you keep it (without it no device key in the registry can be read), or set ${KEK_FILE_ENV} to where it is`);
    // Never over a KEK another process made in the meantime (theirs is read instead); 0600 from the
    // start; and on the disk, whole, before anything is sealed under it: a KEK lost in a power cut
    // after the registry committed rows sealed under it would leave every device key unreadable.
    try {
      createFileDurably(file, randomBytes(32).toString("hex") + "\n", 0o600);
    } catch (e) {
      throw new KekError(`cannot create the registry's key-encryption key ${file}: ${(e as NodeJS.ErrnoException).code ?? e}`);
    }
  }
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new KekError(`cannot read the registry's key-encryption key ${file}: ${(e as NodeJS.ErrnoException).code ?? e}`);
  }
  const kek = parseHexKey(text);
  if (!kek) throw new KekError(`${file} is not a keyproxy key-encryption key (64 hex digits)`);
  return Buffer.from(kek.buffer);
}

const aad = (kind: SealedKind, owner: string) => Buffer.from(`keyproxy/${kind}/v1/${owner}`, "utf8");

export function seal(kek: Buffer, kind: SealedKind, owner: string, plain: Uint8Array): Buffer {
  const nonce = randomBytes(NONCE_BYTES);
  const c = createCipheriv("aes-256-gcm", kek, nonce, { authTagLength: TAG_BYTES });
  c.setAAD(aad(kind, owner));
  const body = Buffer.concat([c.update(plain), c.final()]);
  return Buffer.concat([Buffer.of(FORMAT), nonce, body, c.getAuthTag()]);
}

/** The value sealed for owner; a KekError, naming neither key nor value, when it does not open. */
export function open(kek: Buffer, kind: SealedKind, owner: string, sealed: Uint8Array): Uint8Array {
  const b = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  if (b.length < SEALED_OVERHEAD || b[0] !== FORMAT) throw new KekError(`the ${kind} of ${owner} in the registry is not a sealed value`);
  const d = createDecipheriv("aes-256-gcm", kek, b.subarray(1, 1 + NONCE_BYTES), { authTagLength: TAG_BYTES });
  d.setAAD(aad(kind, owner));
  d.setAuthTag(b.subarray(b.length - TAG_BYTES));
  try {
    return decipherSecret(d, b.subarray(1 + NONCE_BYTES, b.length - TAG_BYTES));
  } catch {
    throw new KekError(`the ${kind} of ${owner} does not open under this key-encryption key: it is not the KEK this registry was sealed with (is ${KEK_FILE_ENV} right?), or the row was altered`);
  }
}
