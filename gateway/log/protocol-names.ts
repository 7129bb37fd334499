// How the protocol's numbers are printed for people (docs/PROTOCOL.md): an SPI always as 0x and eight
// hex digits, an error code or a close reason always by its name. Every human-readable output (logs,
// the audit trail, the monitor, the demo, sim, the SDK's errors) goes through these, so that one SA
// looks the same wherever an operator meets it. Host-side only: a handset prints nothing of this.
import { CloseReason, ErrorCode } from "../../firmware/proto/messages.ts";

/** An SPI as people see it everywhere: "0x" and eight lower-case hex digits. */
export function spiText(spi: number): string {
  return "0x" + (spi >>> 0).toString(16).padStart(8, "0");
}

/** The names of ErrorCode, as in docs/PROTOCOL.md (a missing entry is a type error). */
export const ERROR_NAMES: Readonly<Record<ErrorCode, string>> = {
  [ErrorCode.Malformed]: "malformed",
  [ErrorCode.NotFound]: "not-found",
  [ErrorCode.NotRegistered]: "not-registered",
  [ErrorCode.Unsupported]: "unsupported",
  [ErrorCode.Internal]: "internal",
  [ErrorCode.NoCommonSuite]: "no-common-suite",
  [ErrorCode.Rejected]: "rejected",
  [ErrorCode.Spoofed]: "spoofed",
};

/** The names of CloseReason (a missing entry is a type error). */
export const CLOSE_REASON_NAMES: Readonly<Record<CloseReason, string>> = {
  [CloseReason.Bye]: "bye",
  [CloseReason.PeerGone]: "peer-gone",
  [CloseReason.Deregistered]: "deregistered",
  [CloseReason.Replaced]: "replaced",
  [CloseReason.Expired]: "expired",
  [CloseReason.Revoked]: "revoked",
  [CloseReason.Removed]: "removed",
};

/** An error code's name; a code this version does not know is printed as such, not guessed. */
export function errorName(code: number): string {
  return (ERROR_NAMES as Record<number, string>)[code] ?? `unknown error ${code}`;
}

/** A close reason's name; one this version does not know is printed as such. */
export function closeReasonName(reason: number): string {
  return (CLOSE_REASON_NAMES as Record<number, string>)[reason] ?? `unknown reason ${reason}`;
}
