// The sockets under keyproxy's MQTT clients and its embedded broker, set for small messages that
// answer each other: the interlink's requests and answers, monitoring, the instance bus's frames.
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

export interface SocketTuning {
  /** Gather writes per batch of input (default true). Off where one message's latency matters more
   *  than the system calls: the instance bus, whose frames sit on a setup's path in a domain's
   *  instances; at 20 setups/s there was nothing to gather, and the frames across instances waited
   *  0.4-0.9 ms more at p50 (bench/instances.ts, docs/BENCHMARKS.md). */
  gather?: boolean;
}

/** Tunes the client's socket now and the new socket of every reconnect (MQTT.js makes one each time). */
export function tuneMqttSocket(client: MqttClient, o: SocketTuning = {}): void {
  const tune = (): void => tuneSocket(client.stream as Gatherable | undefined, o);
  tune();
  client.on("connect", tune);
}

/** No Nagle delay, and writes gathered per batch of input unless o.gather is false. Safe to call
 *  again on the same socket. */
export function tuneSocket(sock: Gatherable | undefined, o: SocketTuning = {}): void {
  if (!sock) return;
  sock.setNoDelay?.(true);
  if (o.gather !== false) gatherWrites(sock);
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
