// The key-material scan the end-to-end tests run over everything a gateway lets out (MQTT payloads
// and topics, log lines, command output): no secret may appear in any encoding.
import assert from "node:assert/strict";

/** Every encoding in which a secret could leak into text or bytes. */
export function forms(secret: Uint8Array): Buffer[] {
  const b = Buffer.from(secret);
  return [b, b.toString("hex"), b.toString("hex").toUpperCase(), b.toString("base64"), b.toString("base64url"), JSON.stringify([...b])].map((s) => (typeof s === "string" ? Buffer.from(s) : s));
}

/** Names of the secrets found in any haystack (empty: none). */
export function leaks(secrets: Map<string, Uint8Array>, haystacks: Buffer[]): string[] {
  const found: string[] = [];
  for (const [name, secret] of secrets) {
    assert.ok(secret.length >= 16, `${name} is a real secret`);
    if (forms(secret).some((f) => haystacks.some((h) => h.includes(f)))) found.push(name);
  }
  return found;
}
