// The sockets under keyproxy's MQTT clients and its embedded broker, set for small messages that
// answer each other: the interlink's requests and answers, the instance bus's frames, monitoring.
//
// Two settings. No Nagle delay: a small answer written right after the PUBACK of its request would
// wait for the other end's delayed ACK, up to 40 ms per hop on Linux (docs/BENCHMARKS.md, "Sessions
// across gateways"). And writes gathered: MQTT.js and aedes write each packet on its own, in its own
// tick, so a batch of requests read in one go was answered in one system call per packet (its PUBACK,
// then its answer, each a write). Gathered, what the event loop writes while it handles one batch of
// input leaves in one system call once that batch is done (setImmediate runs right after the loop's
// I/O callbacks): no timer, no wait beyond the batch, and one wake-up for the peer instead of many.

import type { MqttClient } from "mqtt";

/** What gathering needs of a socket: net.Socket has it; any other stream is left as it is. */
interface Gatherable {
  setNoDelay?: (on: boolean) => unknown;
  cork?: () => void;
  uncork?: () => void;
  write?: (...args: never[]) => boolean;
}

const GATHERED = Symbol("keyproxy.gathered");

/** Tunes the client's socket now and the new socket of every reconnect (MQTT.js makes one each time). */
export function tuneMqttSocket(client: MqttClient): void {
  const tune = (): void => tuneSocket(client.stream as Gatherable | undefined);
  tune();
  client.on("connect", tune);
}

/** No Nagle delay, and writes gathered per batch of input. Safe to call again on the same socket. */
export function tuneSocket(sock: Gatherable | undefined): void {
  if (!sock) return;
  sock.setNoDelay?.(true);
  gatherWrites(sock);
}

function gatherWrites(sock: Gatherable & { [GATHERED]?: true }): void {
  const { cork, uncork, write } = sock;
  if (sock[GATHERED] || !cork || !uncork || !write) return;
  sock[GATHERED] = true;
  let held = false;
  const release = (): void => {
    held = false;
    // Harmless after end() or destroy(): uncorking a stream that is not corked does nothing.
    uncork.call(sock);
  };
  sock.write = function (this: unknown, ...args: never[]): boolean {
    if (!held) {
      held = true;
      cork.call(sock);
      setImmediate(release);
    }
    return write.apply(this, args);
  };
}
