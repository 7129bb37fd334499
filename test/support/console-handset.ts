// An emulated handset whose Espruino console is reached the way `keyproxy flash` and `keyproxy
// provision` reach a real one: behind a real pseudo-terminal ("pty"), or over Bluetooth LE ("ble"),
// where the radio is the only double, at @stoprocent/noble's API (test/support/ble-double.ts), and the
// console behind it is the same one the pty serves (emulator/serial.ts). One shape for both, so that a
// test of the serial guarantees runs unchanged over Bluetooth.

import { EmulatedDevice } from "../../emulator/device.ts";
import { attachPty, SerialConsole, type PtyHandset } from "../../emulator/serial.ts";
import { BleDouble, DoublePeripheral, type BackingPipe, type PeripheralBacking } from "./ble-double.ts";
import { tempDir } from "./harness.ts";

export type Transport = "pty" | "ble";
export const TRANSPORTS: Transport[] = ["pty", "ble"];

export interface ConsoleHandset {
  dev: EmulatedDevice;
  /** What --port takes: the pty's path, or ble:<the name it advertises>. */
  port: string;
  /** The BLE adapter double (undefined over a pty): what flash and provision take as `noble`. */
  noble: BleDouble | undefined;
  /** The peripheral (undefined over a pty). */
  peripheral: DoublePeripheral | undefined;
  /** Everything the console wrote to the line. */
  output: string[];
  /** Cuts the line: the cable is pulled, or the handset walks out of radio range. */
  cut(): void;
  /** A line again after a cut (a new pty, or the handset back in range). */
  reconnect(): Promise<void>;
  stop(): Promise<void>;
}

/** The console behind a radio connection: a new SerialConsole for each connection, as Espruino gives
 *  its console to each central that connects. */
function consoleBacking(dev: EmulatedDevice, output: string[]): PeripheralBacking {
  return {
    open: async (): Promise<BackingPipe> => {
      const readers: ((b: Buffer) => void)[] = [];
      const closers: (() => void)[] = [];
      let open = true;
      const console = new SerialConsole(dev, (s) => {
        output.push(s);
        if (open) for (const r of readers) r(Buffer.from(s, "latin1"));
      });
      return {
        write: (b) => console.input(b.toString("latin1")),
        onData: (cb) => void readers.push(cb),
        onClose: (cb) => void closers.push(cb),
        close: () => {
          if (!open) return;
          open = false;
          console.close();
        },
      };
    },
    cancel: () => {},
  };
}

export async function consoleHandset(transport: Transport, name = "h"): Promise<ConsoleHandset> {
  const dev = new EmulatedDevice({ board: "emulator", storageDir: tempDir(`kp-${name}-`), name });
  const output: string[] = [];
  if (transport === "ble") {
    const noble = new BleDouble(20);
    const advertised = `Puck.js ${name.slice(0, 4)}`;
    const peripheral = noble.add(new DoublePeripheral("c0ffee000001", { localName: advertised }, -60, consoleBacking(dev, output)));
    await dev.boot();
    return {
      dev, port: `ble:${advertised}`, noble, peripheral, output,
      cut: () => peripheral.walkAway(),
      reconnect: async () => peripheral.comeBack(),
      stop: async () => {
        await peripheral.disconnectAsync();
        dev.powerOff();
      },
    };
  }
  let pty: PtyHandset = await attachPty(dev);
  const tap = (p: PtyHandset) => {
    const write = (p.console as unknown as { write: (s: string) => void }).write;
    (p.console as unknown as { write: (s: string) => void }).write = (s: string) => {
      output.push(s);
      write(s);
    };
  };
  tap(pty);
  const h: ConsoleHandset = {
    dev, port: pty.path, noble: undefined, peripheral: undefined, output,
    cut: () => pty.cut(),
    reconnect: async () => {
      await pty.close();
      pty = await attachPty(dev);
      tap(pty);
      h.port = pty.path;
    },
    stop: async () => {
      await pty.close();
      dev.powerOff();
    },
  };
  return h;
}
