// A capable peer (sdk/peer.ts): a Node program with its own keys that runs the key exchange
// itself, calls a handset behind its gateway by name, exchanges messages end to end and hangs up.
//
//   keyproxy fleet issue-gateway --id peers.example --data-dir ./carol     (once, on the CA's machine)
//   node --import tsx examples/capable-peer.ts --data-dir ./carol --domain peers.example --name carol \
//        --mqtt mqtt://127.0.0.1:1883 --call sim-1@gateway.local --app chat --send "hello" --send "bye"
//
// It prints one line per event: "up <spi>", "got <text>", "closed <reason>"; it exits 0 once every
// message sent was answered (--expect, default: as many as were sent), 1 on any failure.

import { parseArgs } from "node:util";
import { CapablePeer } from "../sdk/peer.ts";
import { KEY_AGREEMENT_POLICIES, type KeyAgreementPolicy } from "../gateway/crossgw/exchange.ts";

const { values: o } = parseArgs({
  options: {
    "data-dir": { type: "string" },
    domain: { type: "string" },
    name: { type: "string" },
    mqtt: { type: "string" },
    call: { type: "string" },
    app: { type: "string", default: "chat" },
    send: { type: "string", multiple: true, default: [] },
    expect: { type: "string" },
    "timeout": { type: "string", default: "20" },
    "key-agreement": { type: "string", default: "x25519" },
  },
});

async function main(): Promise<number> {
  if (!o["data-dir"] || !o.domain || !o.name || !o.mqtt || !o.call) {
    console.error("usage: capable-peer --data-dir <dir> --domain <domain> --name <name> --mqtt <url> --call <name@domain> [--app <app>] [--send <text>]... [--expect <n>] [--key-agreement x25519|hybrid|hybrid-only]");
    return 2;
  }
  const keyAgreement = o["key-agreement"] as KeyAgreementPolicy;
  if (!KEY_AGREEMENT_POLICIES.includes(keyAgreement)) {
    console.error(`--key-agreement wants ${KEY_AGREEMENT_POLICIES.join(", ")}, got "${keyAgreement}"`);
    return 2;
  }
  const peer = await CapablePeer.start({ dataDir: o["data-dir"], domain: o.domain, name: o.name, mqtt: o.mqtt, keyAgreement });
  const timer = setTimeout(() => {
    console.error("timed out");
    process.exit(1);
  }, Number(o.timeout) * 1000);
  try {
    const session = await peer.connect(o.call, o.app as string);
    console.log(`up ${session.spi.toString(16)}`);
    const expected = o.expect === undefined ? (o.send as string[]).length : Number(o.expect);
    const done = new Promise<void>((resolve) => {
      let got = 0;
      session.onMessage = (data) => {
        console.log(`got ${Buffer.from(data).toString("utf8")}`);
        if (++got >= expected) resolve();
      };
      if (expected === 0) resolve();
    });
    session.onClose = (reason) => console.log(`closed ${reason}`);
    for (const text of o.send as string[]) await session.send(new Uint8Array(Buffer.from(text, "utf8")));
    await done;
    await session.close();
    console.log("hung up");
    return 0;
  } finally {
    clearTimeout(timer);
    await peer.close();
  }
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(e instanceof Error ? e.message : String(e));
    process.exit(1);
  },
);
