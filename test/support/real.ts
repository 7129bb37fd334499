// The real-interpreter tier's common parts: whether it can run here, and a gateway process with
// handsets on the real Espruino interpreter (interpreter/), flashed and provisioned as a user does.
//
// Where no interpreter is found the tier does not pretend: each of its tests is reported as skipped
// with the reason and how to get one, and with CI=true it fails instead (CI must run it).
import { test, type TestContext } from "node:test";
import { buildFirmware } from "../../flash/build.ts";
import { consoleFaults, interpreterAvailable, type RealDevice } from "../../interpreter/device.ts";
import { provisionedHandset } from "../../interpreter/handsets.ts";
import { startGatewayProcess, type GatewayProcess } from "./process.ts";
import { tempDir } from "./harness.ts";

export const REAL_BOARDS = ["puckjs", "banglejs2", "esp32"] as const;
export type RealBoard = (typeof REAL_BOARDS)[number];

/** null when the board's interpreter runs here, else why not and how to get one. */
export function missingInterpreter(board: string, bits: 32 | 64 = 32): string | null {
  const r = interpreterAvailable(board, bits);
  return r === true ? null : r;
}

let said = false;

/** A test of the real-interpreter tier: skipped with the reason where no interpreter is found, a
 *  failure instead when CI=true. */
export function realTest(name: string, boards: readonly string[], fn: (t: TestContext) => Promise<void>, timeoutMs = 240_000): void {
  const missing = boards.map((b) => missingInterpreter(b)).find((m) => m !== null) ?? null;
  if (missing && process.env.CI !== "true") {
    if (!said) {
      said = true;
      console.log(`real-interpreter tier NOT RUN: ${missing}`);
    }
    test(`[real interpreter] ${name}`, { skip: `not run: ${missing}` }, () => {});
    return;
  }
  // Time for every run: a run during which the host faulted is run again (below).
  test(`[real interpreter] ${name}`, { timeout: (1 + RERUNS_AFTER_HOST_FAULT) * timeoutMs }, async (t) => {
    if (missing) throw new Error(`CI=true and the real-interpreter tier cannot run: ${missing}`);
    await rerunAfterHostFault(() => fn(t), consoleFaults, (why) => console.log(`# [real interpreter] ${name}: an interpreter crashed or its console damaged an eval's every try (${why}); running the test again`));
  });
}

/** How many times a real-tier test runs again after a run during which the host faulted (consoleFaults). */
export const RERUNS_AFTER_HOST_FAULT = 2;

/**
 * Runs fn; when a run fails and an interpreter crashed during that run, or its console damaged
 * every try at an eval (faults() went up: device.ts consoleFaults), runs it again, up to `reruns`
 * times. The Linux build's console thread races its main loop (docs/INTERPRETER.md): such a fault
 * is the host's, not the firmware's. A failure without one fails at once, and so does the last
 * run's.
 */
export async function rerunAfterHostFault(fn: () => Promise<void>, faults: () => number, say: (why: string) => void, reruns = RERUNS_AFTER_HOST_FAULT): Promise<void> {
  for (let run = 0; ; run++) {
    const before = faults();
    try {
      return await fn();
    } catch (e) {
      if (faults() === before || run >= reruns) throw e;
      say((e as Error).message.split("\n")[0]);
    }
  }
}

const bundles = new Map<string, Promise<string>>();

/** The board's bundle as `keyproxy build` makes it (once per board, application and test file);
 *  with `app`, as `keyproxy build --app <app>` makes it, and with `groups` as `--groups` does. The
 *  byte budget is test/build-app.test.ts's business: here a bundle over it still runs, but one with
 *  any other problem does not. */
export function bundleFor(board: string, app?: string, groups = false): Promise<string> {
  const key = `${board}\0${app ?? ""}\0${groups}`;
  let b = bundles.get(key);
  if (!b) {
    b = buildFirmware({ board, outDir: tempDir("kp-build-"), app, groups }).then((r) => {
      if (app === undefined ? !r.ok : r.problems.length > 0) throw new Error(`build for ${board}${app ? ` with ${app}` : ""} failed:\n${r.problems.join("\n")}`);
      return r.code;
    });
    bundles.set(key, b);
  }
  return b;
}

export interface RealRig {
  gw: GatewayProcess;
  dataDir: string;
  /** host:port of the gateway's device link. */
  address: string;
  handsets: RealDevice[];
  /** A flashed, provisioned, booted handset, entered in this gateway's registry. */
  handset(board: string, id: string, opts?: { lifetime?: number; gateway?: string; app?: string; groups?: boolean; bleRepl?: boolean; wifi?: { ssid: string; password: string } }): Promise<RealDevice>;
  stop(): Promise<void>;
}

/** A gateway process (embedded defaults but no MQTT and a development fleet unless extra says
 *  otherwise) and a way to add handsets on the real interpreter. */
export async function realRig(extra: string[] = ["--no-mqtt", "--no-fleet"], dataDir = tempDir("kp-real-gw-")): Promise<RealRig> {
  const gw = await startGatewayProcess(dataDir, 0, extra);
  const handsets: RealDevice[] = [];
  const address = `127.0.0.1:${gw.port}`;
  return {
    gw,
    dataDir,
    address,
    handsets,
    async handset(board, id, opts = {}) {
      const dev = await provisionedHandset({ board, bundle: await bundleFor(board, opts.app, opts.groups), dataDir, id, gateway: opts.gateway ?? address, lifetime: opts.lifetime, bleRepl: opts.bleRepl, wifi: opts.wifi });
      handsets.push(dev);
      return dev;
    },
    async stop() {
      await Promise.all(handsets.map((h) => h.powerOff()));
      await gw.stop();
    },
  };
}
