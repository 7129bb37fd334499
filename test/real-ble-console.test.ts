// The real-interpreter tier: a BLE handset shares its Nordic UART with the developer's tools
// (issue 10, scope 2; docs/INTERPRETER.md, "The BLE console is shared"). On the unmodified bundle, with
// the BLE stand-ins behaving as a board's do, three centrals take turns on the same handset:
// - one that sends a keyproxy frame whose bytes also hold REPL text: the frame goes to the link
//   (dropped there), the REPL never runs it;
// - one that talks like the Espruino IDE: it gets a REPL and nothing of it reaches the link;
// - the gateway, through a plain pipe: the handset joins and registers again.
// Each TCP connection to `centrals` below is one BLE connection of the stand-ins (interpreter/device.ts).
import assert from "node:assert/strict";
import net from "node:net";
import { crc32 } from "../emulator/espruino-crypto.ts";
import { encodeFrame } from "../firmware/proto/frame.ts";
import { realRig, realTest } from "./support/real.ts";

type Central = (device: net.Socket) => void;

interface Centrals {
  address: string;
  /** Who answers the next connection. */
  next: Central;
  /** The connection open now, if any. */
  current?: net.Socket;
  close(): Promise<void>;
}

async function startCentrals(first: Central): Promise<Centrals> {
  const c: Centrals = {
    address: "",
    next: first,
    close: () => new Promise((r) => { c.current?.destroy(); server.close(() => r()); }),
  };
  const server = net.createServer((device) => {
    device.setNoDelay(true);
    device.on("error", () => {});
    c.current = device;
    c.next(device);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  c.address = `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  return c;
}

/** What the device sent on this connection, as text, and a way to wait for some of it. */
function reader(device: net.Socket): { text: () => string; until: (re: RegExp, what: string) => Promise<RegExpExecArray> } {
  let got = "";
  const waiters: (() => void)[] = [];
  device.on("data", (b: Buffer) => {
    got += b.toString("latin1");
    for (const w of waiters.splice(0)) w();
  });
  const until = (re: RegExp, what: string) => new Promise<RegExpExecArray>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the central got no ${what}; it got ${JSON.stringify(got.slice(-300))}`)), 30_000);
    const check = () => {
      const m = re.exec(got);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      } else waiters.push(check);
    };
    check();
  });
  return { text: () => got, until };
}

/** The gateway's central: the BLE connection piped to the gateway's link port, as a bridge carries it. */
const viaGateway = (port: number): Central => (device) => {
  const gw = net.connect(port, "127.0.0.1");
  gw.on("error", () => device.destroy());
  device.on("close", () => gw.destroy());
  gw.on("close", () => device.destroy());
  device.pipe(gw);
  gw.pipe(device);
};

/** A keyproxy frame with a valid CRC whose payload is REPL text: typed into the REPL, the line in it
 *  would set PWNED. */
const CRAFTED = encodeFrame(new TextEncoder().encode("\nglobal.PWNED=1;\n"), crc32);

for (const board of ["puckjs", "banglejs2"]) {
  realTest(`${board}: provisioned with --ble-repl, a developer's central gets the REPL, a keyproxy frame never reaches it, and the link comes back`, [board], async () => {
    const rig = await realRig();
    const centrals = await startCentrals(() => {});
    try {
      // 1. A central whose first write is a frame carrying REPL text, after the handset's join.
      let crafted: ReturnType<typeof reader> | undefined;
      centrals.next = (device) => {
        crafted = reader(device);
        void crafted.until(/\xa5/, "join frame").then(() => device.write(CRAFTED), () => {});
      };
      const id = `ide-${board}`;
      const dev = await rig.handset(board, id, { gateway: centrals.address, bleRepl: true });
      await dev.waitFor(/^KP drop: /, 30_000);
      assert.equal(await dev.eval("typeof PWNED"), "undefined", "the frame's text was not run by the REPL");
      assert.equal(await dev.eval("E.getConsole()"), "USB", "the console stayed off Bluetooth for a keyproxy central");
      const sock1 = centrals.current!;

      const dropsBefore = (await dev.eval<{ dropped: number }>("KP.status()")).dropped;

      // 2. A central that talks like the Espruino IDE: a newline for a prompt, an expression with echo
      // off (\x10) and markers around the answer, then a line typed by hand.
      const ideCame = new Promise<[net.Socket, ReturnType<typeof reader>]>((resolve) => {
        centrals.next = (device) => {
          const r = reader(device);
          // After the handset's join: a newline that came before the firmware's connect handler ran
          // would be typed into the REPL by the board itself (the console is on Bluetooth until the
          // handler moves it), which the stand-ins do not order as a board does (docs/INTERPRETER.md).
          void r.until(/\xa5/, "join frame").then(() => device.write("\n"), () => {});
          resolve([device, r]);
        };
      });
      sock1.destroy();
      const [sock2, repl] = await ideCame;
      await repl.until(/>$/, "prompt");
      sock2.write(`\x10print("<","<<",JSON.stringify(KP.status()),">>",">")\n`);
      const status = JSON.parse((await repl.until(/< <<(.*?)>> >/, "answer to the IDE's expression"))[1]) as { state: string; dropped: number; joins: number };
      assert.equal(status.state, "down", "the handset let go of the link for a developer's central");
      assert.equal(status.dropped, dropsBefore, "nothing the developer typed reached the link");
      sock2.write("1+1\n");
      await repl.until(/=2\r?\n/, "=2");

      // 3. The developer leaves; the gateway's central comes: the link works again.
      centrals.next = viaGateway(rig.gw.port);
      const since = dev.lines.length;
      sock2.destroy();
      await dev.waitFor(/^KP registered for 3600s$/, 60_000, since);
      const st = await dev.eval<{ state: string; registered: boolean }>("KP.status()");
      assert.equal(st.state, "linked");
      assert.equal(st.registered, true);
      assert.equal(await dev.eval("typeof PWNED"), "undefined");
      assert.ok(rig.gw.events("registered").some((e) => e.device === id), "the gateway registered the handset");
    } finally {
      await centrals.close();
      await rig.stop();
    }
  });
}

realTest("puckjs: provisioned without --ble-repl (the default), a developer's central gets no REPL and the link stays keyproxy's", ["puckjs"], async () => {
  const rig = await realRig();
  let ide: ReturnType<typeof reader> | undefined;
  // A central that talks like the Espruino IDE, then asks for 1+1 and for the root key.
  const centrals = await startCentrals((device) => {
    ide = reader(device);
    void ide.until(/\xa5/, "join frame").then(() => {
      device.write("\n");
      device.write(`\x10print("<<" + require("Storage").read("kp.cfg") + ">>")\n1+1\n`);
      // Then a frame: once the link has dropped it, everything before it went where the frame went.
      device.write(CRAFTED);
    }, () => {});
  });
  try {
    const dev = await rig.handset("puckjs", "ide-default", { gateway: centrals.address });
    await dev.waitFor(/^KP drop: /, 30_000);
    const first = centrals.current!;
    centrals.next = viaGateway(rig.gw.port);
    const since = dev.lines.length;
    first.destroy();
    await dev.waitFor(/^KP registered for 3600s$/, 60_000, since);
    assert.equal(await dev.eval("E.getConsole()"), "USB", "the console never went to Bluetooth");
    assert.doesNotMatch(ide!.text(), /=2|<<|"key"|>\s*$/, "the developer's central got no REPL: no prompt, no answer, no key");
    assert.equal((await dev.eval<{ state: string }>("KP.status()")).state, "linked");
  } finally {
    await centrals.close();
    await rig.stop();
  }
});
