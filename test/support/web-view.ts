// The web fleet view on node:http, for its tests (test/web-view.test.ts, test/web-view-edges.test.ts):
// a fleet model the test feeds as the page's source, a server on a free port, one request with the
// Host and method given, an event stream's snapshots as they come.
import assert from "node:assert/strict";
import http from "node:http";
import { FleetModel } from "../../gateway/monitor/fleet-model.ts";
import { snapshotOf, type FleetSnapshot, type FleetSource } from "../../gateway/web/fleet-feed.ts";
import { CONTENT_SECURITY_POLICY, serveFleetView, type FleetViewServer } from "../../gateway/web/fleet-server.ts";

/** A model fed by the test, as the page's source. */
export function modelSource(keepEvents = 50): FleetSource & { model: FleetModel; feed(topic: string, body: unknown): void } {
  const model = new FleetModel(keepEvents);
  const listeners = new Set<() => void>();
  return {
    model,
    snapshot: () => snapshotOf(model, "test fleet", { url: "mqtt://127.0.0.1:1883", connected: true }),
    subscribe: (fn) => {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
    feed(topic, body) {
      model.apply(topic, Buffer.from(body === "" ? "" : JSON.stringify(body)));
      for (const fn of listeners) fn();
    },
  };
}

const servers: FleetViewServer[] = [];

/** Closes every server `serve` started (in the test file's `after`). */
export async function closeServers(): Promise<void> {
  for (const s of servers.splice(0)) await s.close();
}

export async function serve(o: { host?: string; token?: string; maxClients?: number } = {}, source = modelSource()) {
  const server = await serveFleetView({ listen: { host: o.host ?? "127.0.0.1", port: 0 }, token: o.token, maxClients: o.maxClients }, source);
  servers.push(server);
  return { server, source, port: server.address.port };
}

export interface Answer { status: number; headers: http.IncomingHttpHeaders; body: string }

/** One request with node:http, Host and method as given. */
export function request(port: number, path: string, o: { method?: string; headers?: Record<string, string> } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, path, method: o.method ?? "GET", headers: o.headers }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on("error", reject);
    req.end(o.method === "POST" || o.method === "PUT" ? "state=changed" : undefined);
  });
}

/** An event stream: its snapshots as they come. */
export function events(port: number, headers: Record<string, string> = {}): Promise<{ res: http.IncomingMessage; raw: string[]; next(): Promise<FleetSnapshot>; close(): void }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port, path: "/events", headers }, (res) => {
      const raw: string[] = [];
      const waiting: ((s: FleetSnapshot) => void)[] = [];
      const queued: FleetSnapshot[] = [];
      let buf = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => {
        buf += c;
        let i: number;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6));
          if (!data.length) continue;
          raw.push(data.join("\n"));
          const snap = JSON.parse(data.join("\n")) as FleetSnapshot;
          const w = waiting.shift();
          if (w) w(snap);
          else queued.push(snap);
        }
      });
      resolve({
        res,
        raw,
        next: () => (queued.length ? Promise.resolve(queued.shift()!) : new Promise((r) => waiting.push(r))),
        close: () => req.destroy(),
      });
    });
    req.on("error", reject);
  });
}

export function assertSecurityHeaders(a: Answer, what: string): void {
  assert.equal(a.headers["content-security-policy"], CONTENT_SECURITY_POLICY, `CSP on ${what}`);
  assert.equal(a.headers["x-content-type-options"], "nosniff", `nosniff on ${what}`);
}
