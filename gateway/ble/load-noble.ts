// Loads the BLE library only when Bluetooth is asked for (`keyproxy gateway --ble`, `keyproxy
// ble-bridge`): it is an optional dependency, with a native part, and a gateway on TCP alone must not
// need it, nor an adapter.
//
// Why @stoprocent/noble: it is the maintained fork of noble (the original is unmaintained since
// 2018 and does not build on current Node), it is a central (what we need: the handsets are the
// peripherals), speaks to the adapter through HCI sockets on Linux without BlueZ's D-Bus API in the
// way, and ships prebuilt binaries for Linux x64/arm64 in its npm package, so that a Raspberry Pi
// next to the handsets installs it without a compiler.

import type { AdapterState, Noble } from "./noble-api.ts";

export const NOBLE_PACKAGE = "@stoprocent/noble";

/** How to get a usable adapter on Linux, said in every error about one. */
const ADAPTER_FIX = "check that the machine has a Bluetooth LE adapter and that it is up (`bluetoothctl show`, `rfkill list`, `rfkill unblock bluetooth`), that bluetoothd does not hold it (`sudo systemctl stop bluetooth`, or give noble its own adapter with NOBLE_HCI_DEVICE_ID), and that node may open raw HCI sockets (`sudo setcap cap_net_raw,cap_net_admin+eip $(readlink -f $(which node))`, or run as a service user with those capabilities): docs/HARDWARE.md";

/** The words for an adapter state that is not "poweredOn". */
export function adapterProblem(state: AdapterState | string): string {
  switch (state) {
    case "unsupported": return `no Bluetooth LE adapter that can be used (state "unsupported"): ${ADAPTER_FIX}`;
    case "unauthorized": return `not allowed to use the Bluetooth adapter (state "unauthorized"): ${ADAPTER_FIX}`;
    case "poweredOff": return `the Bluetooth adapter is off (state "poweredOff"): ${ADAPTER_FIX}`;
    default: return `the Bluetooth adapter is not ready (state "${state}"): ${ADAPTER_FIX}`;
  }
}

/** The library, or an error naming the fix when it is not installed. */
async function importNoble(importer: () => Promise<unknown>): Promise<Noble> {
  let mod: { default?: Noble };
  try {
    mod = (await importer()) as { default?: Noble };
  } catch (e) {
    throw new Error(`Bluetooth needs the optional package ${NOBLE_PACKAGE}, which did not load (${(e as Error).message.split("\n")[0]}): install it with \`npm install ${NOBLE_PACKAGE}\` next to keyproxy (it ships prebuilt binaries for Linux x64 and arm64; elsewhere it needs build tools)`);
  }
  if (!mod.default) throw new Error(`${NOBLE_PACKAGE} loaded but has no default export: an unexpected version (keyproxy wants 2.x)`);
  return mod.default;
}

/** Loads the library and waits for its adapter to be powered on; a clear error when it is not within
 *  waitMs (the library says its first state within a moment of loading). */
export async function loadNoble(waitMs = 5000, importer: () => Promise<unknown> = () => import(NOBLE_PACKAGE)): Promise<Noble> {
  const noble = await importNoble(importer);
  try {
    return await poweredOn(noble, waitMs);
  } catch (e) {
    // Its HCI socket would keep the process alive after the error.
    noble.stop?.();
    throw e;
  }
}

/** noble once its adapter is "poweredOn"; an error with the fix when it says otherwise or nothing. */
export function poweredOn(noble: Noble, waitMs: number): Promise<Noble> {
  if (noble.state === "poweredOn") return Promise.resolve(noble);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => finish(adapterProblem(noble.state)), waitMs);
    const onState = (s: AdapterState) => {
      if (s === "poweredOn") finish();
      else if (s !== "unknown" && s !== "resetting") finish(adapterProblem(s));
    };
    const finish = (problem?: string) => {
      clearTimeout(timer);
      noble.removeListener("stateChange", onState);
      if (problem) reject(new Error(problem));
      else resolve(noble);
    };
    noble.on("stateChange", onState);
  });
}
