// A private Mosquitto for one test: on a free loopback port, without persistence (Mosquitto's
// default), which the test can kill and start again on the same port, empty. Found as
// KEYPROXY_MOSQUITTO, else /usr/sbin/mosquitto (Debian's package), else `mosquitto` on the PATH
// (.ci/run installs it).
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { tempDir, until } from "./harness.ts";
import { freePort } from "./postgres-cluster.ts";

/** The Mosquitto binary, or undefined when there is none here. */
export function findMosquitto(): string | undefined {
  const named = process.env.KEYPROXY_MOSQUITTO;
  if (named) return named;
  if (existsSync("/usr/sbin/mosquitto")) return "/usr/sbin/mosquitto";
  const which = spawnSync("sh", ["-c", "command -v mosquitto"], { encoding: "utf8" });
  return which.status === 0 && which.stdout.trim() ? which.stdout.trim() : undefined;
}

/** Whether something accepts TCP connections on this loopback port now. */
export function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1", () => {
      s.destroy();
      resolve(true);
    });
    s.on("error", () => resolve(false));
  });
}

export interface PrivateMosquitto {
  url: string;
  /** Everything the broker logged (connections, subscriptions), across restarts. */
  lines: string[];
  /** Kills the broker (SIGKILL: nothing is saved, as in a crash) and waits for it to exit. */
  kill(): Promise<void>;
  /** Starts it again on the same port, empty, and waits until it accepts connections. */
  start(): Promise<void>;
}

export async function startMosquitto(binary: string): Promise<PrivateMosquitto> {
  const port = await freePort();
  const conf = join(tempDir("kp-mosquitto-"), "mosquitto.conf");
  writeFileSync(conf, `listener ${port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type all\nset_tcp_nodelay true\n`);
  const lines: string[] = [];
  let child: ChildProcess | undefined;
  const m: PrivateMosquitto = {
    url: `mqtt://127.0.0.1:${port}`,
    lines,
    async start() {
      const c = spawn(binary, ["-c", conf], { stdio: ["ignore", "pipe", "pipe"] });
      child = c;
      let buf = "";
      const take = (b: Buffer) => {
        buf += b.toString();
        for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
          lines.push(buf.slice(0, i));
          buf = buf.slice(i + 1);
        }
      };
      c.stdout!.on("data", take);
      c.stderr!.on("data", take);
      let up = false;
      const poll = async () => {
        while (!up && c.exitCode === null) {
          up = await accepts(port);
          if (!up) await new Promise((r) => setTimeout(r, 50));
        }
      };
      void poll();
      await until(() => up || c.exitCode !== null, `mosquitto on port ${port}`, 10_000);
      if (!up) throw new Error(`mosquitto exited with ${c.exitCode}:\n${lines.join("\n")}`);
    },
    async kill() {
      const c = child;
      if (!c || c.exitCode !== null || c.signalCode !== null) return;
      await new Promise<void>((resolve) => {
        c.once("exit", () => resolve());
        c.kill("SIGKILL");
      });
    },
  };
  await m.start();
  return m;
}

/** Why a test of a domain of instances is skipped where no broker has shared subscriptions. */
export const NO_SHARED_SUBSCRIPTIONS = "no Mosquitto here (.ci/run installs it): a domain of instances needs shared subscriptions";

/** A broker with MQTT shared subscriptions, as a domain of instances needs (aedes has none): CI's
 *  Mosquitto (KEYPROXY_TEST_MQTT_URL), else a private one; undefined where there is none, which
 *  CI=true makes an error. `kill` stops a private one and leaves CI's alone. */
export async function sharedSubscriptionBroker(): Promise<{ url: string; kill(): Promise<void> } | undefined> {
  const named = process.env.KEYPROXY_TEST_MQTT_URL;
  if (named) return { url: named, kill: async () => {} };
  const bin = findMosquitto();
  if (!bin) {
    if (process.env.CI === "true") throw new Error("CI=true and no Mosquitto: .ci/run installs it and sets KEYPROXY_TEST_MQTT_URL");
    return undefined;
  }
  return startMosquitto(bin);
}

/** Skips test `t` unless both the broker (its url) and the database are there; true when skipped. */
export function skipWithoutBrokerOrDatabase(t: { skip(m: string): void }, url: string | undefined, db: unknown): boolean {
  if (db && url) return false;
  t.skip(url ? "no PostgreSQL" : NO_SHARED_SUBSCRIPTIONS);
  return true;
}
