// A TCP relay between handsets and a gateway, standing where an attacker on the link would: it sees
// every frame each way, and a test can drop, change, replay or inject frames towards the handset.
import net from "node:net";
import { FrameDecoder, encodeFrame } from "../../firmware/proto/frame.ts";
import { crc32 } from "../../emulator/espruino-crypto.ts";

export interface RelayedFrame {
  /** "up": handset to gateway; "down": gateway to handset. */
  dir: "up" | "down";
  payload: Uint8Array;
}

export interface Relay {
  port: number;
  address: string;
  /** Every whole frame relayed, in order. */
  frames: RelayedFrame[];
  /** Called for each frame going down; return the payload to send, or null to drop it. */
  onDown?: (payload: Uint8Array) => Uint8Array | null;
  /** Sends bytes to the handset(s) as if from the gateway (raw: no framing added). */
  injectDown(bytes: Uint8Array): void;
  /** A payload framed with a valid CRC, as the gateway would frame it. */
  frame(payload: Uint8Array): Uint8Array;
  /** Cuts every relayed connection (the handset sees its link drop). */
  cut(): void;
  close(): Promise<void>;
}

export async function startRelay(gatewayPort: number): Promise<Relay> {
  const pairs: { device: net.Socket; gw: net.Socket }[] = [];
  const relay: Relay = {
    port: 0,
    address: "",
    frames: [],
    injectDown(bytes) {
      for (const p of pairs) p.device.write(bytes);
    },
    frame: (payload) => encodeFrame(payload, crc32),
    cut() {
      for (const p of pairs.splice(0)) {
        p.device.destroy();
        p.gw.destroy();
      }
    },
    close: () => new Promise((r) => { relay.cut(); server.close(() => r()); }),
  };
  const server = net.createServer((device) => {
    device.setNoDelay(true);
    const gw = net.connect(gatewayPort, "127.0.0.1");
    gw.setNoDelay(true);
    const pair = { device, gw };
    pairs.push(pair);
    const up = new FrameDecoder(crc32);
    const down = new FrameDecoder(crc32);
    device.on("data", (b) => {
      for (const f of up.push(new Uint8Array(b))) relay.frames.push({ dir: "up", payload: f });
      gw.write(b);
    });
    gw.on("data", (b) => {
      for (const f of down.push(new Uint8Array(b))) {
        relay.frames.push({ dir: "down", payload: f });
        const out = relay.onDown ? relay.onDown(f) : f;
        if (out) device.write(encodeFrame(out, crc32));
      }
    });
    const end = () => {
      device.destroy();
      gw.destroy();
      const i = pairs.indexOf(pair);
      if (i >= 0) pairs.splice(i, 1);
    };
    device.on("close", end);
    gw.on("close", end);
    device.on("error", end);
    gw.on("error", end);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  relay.port = (server.address() as net.AddressInfo).port;
  relay.address = `127.0.0.1:${relay.port}`;
  return relay;
}
