// The embedded MQTT broker (aedes, in memory): what a gateway publishes its monitoring to when no
// real broker is given, so that a first run needs nothing installed. It holds retained messages in
// memory only, and it dies with the gateway process: a last-will can only reach subscribers of a
// broker that outlives the gateway (Mosquitto, or this broker run by another process).

import net from "node:net";
import { Aedes } from "aedes";
import { tuneSocket } from "../mqtt/socket.ts";

export const DEFAULT_BROKER_LISTEN = { host: "127.0.0.1", port: 1883 };

/** The broker's address is taken (by another broker, most likely). */
export class BrokerAddressInUse extends Error {}

export interface EmbeddedBroker {
  /** mqtt://host:port, for clients (the gateway's own publisher among them). */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  close(): Promise<void>;
}

/** Starts an aedes broker on host:port (port 0: any free port). Fails with a sentence if the port is taken. */
export async function startBroker(listen: { host: string; port: number } = DEFAULT_BROKER_LISTEN): Promise<EmbeddedBroker> {
  const aedes = await Aedes.createBroker();
  // No Nagle (the interlink's request/response over this broker would otherwise wait for delayed
  // ACKs), and each client's packets gathered per batch of input (gateway/mqtt/socket.ts).
  const server = net.createServer((sock) => {
    tuneSocket(sock);
    aedes.handle(sock);
  });
  // A client that misbehaves is aedes's problem, not the process's: never let its errors escape.
  aedes.on("clientError", () => {});
  aedes.on("connectionError", () => {});
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(listen.port, listen.host, () => resolve());
    });
  } catch (e) {
    await new Promise<void>((r) => aedes.close(() => r()));
    const err = e as NodeJS.ErrnoException;
    if (err.code === "EADDRINUSE") {
      throw new BrokerAddressInUse(`the embedded MQTT broker cannot listen on ${listen.host}:${listen.port}: the port is in use (another broker? publish to it with --mqtt mqtt://${listen.host}:${listen.port})`);
    }
    throw new Error(`the embedded MQTT broker cannot listen on ${listen.host}:${listen.port}: ${err.message}`);
  }
  const a = server.address() as net.AddressInfo;
  const host = a.address;
  const sockets = new Set<net.Socket>();
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  return {
    url: `mqtt://${host.includes(":") ? `[${host}]` : host}:${a.port}`,
    host,
    port: a.port,
    close: async () => {
      await new Promise<void>((r) => aedes.close(() => r()));
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
