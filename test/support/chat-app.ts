// The application the real tier's session tests type at a handset's console, as a user would: it
// accepts calls for "chat", echoes each message back prefixed with "re:", records what it sees, and
// can hold a conversation by itself.
//
// Why the handset drives the conversation: every line typed at the Linux build's console is a
// chance for its console thread to race the main loop and crash the interpreter (docs/INTERPRETER.md,
// "A byte lost, or a crash"), and the risk grows with what is typed while the firmware is busy. A
// test that typed each send and polled for each echo typed some 9 KB per session; converse() types
// three lines for the whole exchange (start, wait, read back), and the handset sends each message when the echo of the one
// before arrives, from its own timers, as an application on a board would.
import assert from "node:assert/strict";
import type { RealDevice } from "../../interpreter/device.ts";

/** Typed once per handset (chatApp). T.next() sends the next of T.n messages ("m0", "m1", ...)
 *  T.gap ms after it is called; a send KP.send refused is recorded in T.unsent. T.spi follows a
 *  rekey (onConnect gives the new SPI; the old one still works during the overlap). */
const CHAT_APP = `(function(){
global.T = { spi: 0, ups: 0, got: [], closed: [], peer: "", n: 0, sent: 0, gap: 0, unsent: [] };
T.next = function () { if (T.sent >= T.n) return; var i = T.sent++; setTimeout(function () { if (!KP.send(T.spi, E.toUint8Array("m" + i))) T.unsent.push(i); }, T.gap); };
KP.onRequest = function (from, app) { return app === "chat"; };
KP.onConnect = function (spi, peer, app, replaces) { T.spi = spi; T.ups++; T.peer = peer; };
KP.onMessage = function (d, spi) { var s = E.toString(d); T.got.push(s); if (s.substr(0, 3) !== "re:") KP.send(spi, E.toUint8Array("re:" + s)); else T.next(); };
KP.onClose = function (spi, reason) { T.closed.push(reason); T.spi = 0; };
return 1; })()`;

export type ChatState = { spi: number; ups: number; got: string[]; closed: number[]; peer: string; n: number; sent: number; unsent: number[] };

/** The messages converse(n) sends, in order, and the echoes that come back. */
export const messages = (n: number): string[] => Array.from({ length: n }, (_, i) => `m${i}`);
export const echoes = (n: number): string[] => messages(n).map((m) => `re:${m}`);

/** Types the application at the handset's console. */
export async function chatApp(d: RealDevice): Promise<void> {
  assert.equal(await d.eval(CHAT_APP), 1, `${d.name}: the chat application started`);
}

/** What the application has seen. */
export function chatState(d: RealDevice): Promise<ChatState> {
  return d.eval<ChatState>("T");
}

/** Clears what the application has seen, for the next session (its handlers stay). */
export async function chatReset(d: RealDevice): Promise<void> {
  assert.equal(await d.eval("(function(){T.spi=0;T.ups=0;T.got=[];T.closed=[];T.peer=\"\";T.n=0;T.sent=0;T.unsent=[];return 1;})()"), 1);
}

/** Waits until the handset's application holds an SA. */
export function chatUp(d: RealDevice, what: string, timeoutMs = 30_000): Promise<void> {
  return d.when("T.spi!==0", `${what} at ${d.name}`, timeoutMs);
}

/** The caller sends messages m<first> to m<first+count-1> over its SA, each gapMs after the echo of
 *  the one before, and waits for the last echo; every send must have been taken. The caller's
 *  T.got holds the echoes of m0 to m<first-1> already (chatReset before a first of 0). */
export async function converse(caller: RealDevice, count: number, o: { timeoutMs: number; gapMs?: number; first?: number }): Promise<void> {
  const first = o.first ?? 0;
  assert.equal(await caller.eval(`(function(){T.n=${first + count};T.sent=${first};T.gap=${o.gapMs ?? 0};T.next();return 1;})()`), 1);
  await caller.when(`T.got.length>=${first + count}||T.unsent.length>0`, `the echo of m${first + count - 1} at ${caller.name}`, o.timeoutMs);
  assert.deepEqual((await chatState(caller)).unsent, [], `${caller.name}: KP.send took every message`);
}
