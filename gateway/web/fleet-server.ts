// The web fleet view (docs/MONITORING.md, "Web fleet view"): a read-only page that draws the fleet
// live, over plain node:http. `keyproxy gateway --http <addr>` serves its own gateway's view,
// `keyproxy console --mqtt <url> --http <addr>` a whole fleet's.
//
//   GET /             the page (static/index.html), with static/app.js and static/style.css
//   GET /events       Server-Sent Events: the fleet's snapshot (JSON) at once and after every change
//   GET /fleet.json   the same snapshot, once
//   anything else     404; a method other than GET: 405
//
// Read-only by construction: nothing here writes anywhere, and every request but a GET is refused
// before it is looked at. The strings it sends (device ids, reasons, event fields) are anyone's: the
// page sets them as text, never as markup, and the Content-Security-Policy allows no inline script, no
// other origin and (require-trusted-types-for) no HTML from strings at all. Off loopback a token is
// required, compared in constant time; on loopback, without a token, only requests naming a loopback
// host are answered (a web page elsewhere cannot reach the view through DNS rebinding).

import { createHash, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import http from "node:http";
import { isIP } from "node:net";
import { fileURLToPath } from "node:url";
import { jsonForTerminal } from "../log/terminal.ts";
import { BrokerFleetSource, type FleetSource } from "./fleet-feed.ts";

/** The page's files, next to this module in a checkout and in the package's dist/ alike. */
const STATIC_DIR = new URL("./static/", import.meta.url);
const PAGES: Record<string, { file: string; type: string }> = {
  "/": { file: "index.html", type: "text/html; charset=utf-8" },
  "/app.js": { file: "app.js", type: "text/javascript; charset=utf-8" },
  "/style.css": { file: "style.css", type: "text/css; charset=utf-8" },
};

export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
  "require-trusted-types-for 'script'",
].join("; ");

/** Sent with every answer. */
const SECURITY_HEADERS: Record<string, string> = {
  "content-security-policy": CONTENT_SECURITY_POLICY,
  "x-content-type-options": "nosniff",
  "x-frame-options": "DENY",
  "referrer-policy": "no-referrer",
  "cross-origin-resource-policy": "same-origin",
  "cache-control": "no-store",
};

/** SSE viewers at once by default; one more is told 503. */
export const DEFAULT_MAX_CLIENTS = 16;
/** The least a token may be: a guessable one is no lock. */
export const MIN_TOKEN_LENGTH = 16;
/** The cookie a browser keeps the token in after opening /?token=... once. */
const COOKIE = "keyproxy_token";
/** Changes closer together than this are sent as one snapshot. */
const SEND_EVERY_MS = 200;
/** A comment line this often keeps proxies from closing an idle event stream. */
const KEEPALIVE_MS = 15_000;

/** Refused to start: the message says what to change. */
export class FleetViewConfigError extends Error {}

/** The fleet view's port was taken. */
export class FleetViewAddressInUse extends Error {}

export interface FleetViewOptions {
  listen: { host: string; port: number };
  /** Required when listen.host is not loopback. */
  token?: string;
  /** The flag that set listen and the ways to give a token, for error messages. */
  flag?: string;
  maxClients?: number;
}

export interface FleetViewServer {
  readonly address: { host: string; port: number };
  /** SSE viewers connected now. */
  readonly clients: number;
  close(): Promise<void>;
}

/** Whether host names this machine only: localhost, 127.0.0.0/8, ::1 (and IPv4-mapped loopback).
 *  Brackets go in pairs and around an IPv6 address only ("[::1]", as in a Host header). */
export function isLoopback(host: string): boolean {
  const bracketed = /^\[([^\]]*)\]$/.exec(host);
  const h = (bracketed ? bracketed[1] : host).toLowerCase();
  if (isIP(h) === 6) return h === "::1" || /^::ffff:127\./.test(h) || /^(0:){7}1$/.test(h);
  if (bracketed) return false;
  if (h === "localhost") return true;
  return isIP(h) === 4 && h.startsWith("127.");
}

/** A token as given (file or environment): one line, no spaces or separators a header or cookie would
 *  split at, long enough not to be guessed. */
export function checkToken(token: string, from: string): string {
  const t = token.trim();
  if (t.length < MIN_TOKEN_LENGTH) throw new FleetViewConfigError(`the fleet view's token from ${from} is too short: at least ${MIN_TOKEN_LENGTH} characters (make one with: openssl rand -hex 16)`);
  if (!/^[A-Za-z0-9._~+/=-]+$/.test(t)) throw new FleetViewConfigError(`the fleet view's token from ${from} has characters other than letters, digits and . _ ~ + / = - (make one with: openssl rand -hex 16)`);
  return t;
}

/** Refuses a listen address off loopback without a token: anyone who reaches it would see the fleet. */
export function requireTokenOffLoopback(o: FleetViewOptions): void {
  if (o.token !== undefined || isLoopback(o.listen.host)) return;
  const flag = o.flag ?? "--http";
  throw new FleetViewConfigError(
    `${flag} ${o.listen.host}:${o.listen.port} is not a loopback address, so the fleet view needs a token: ` +
    `put one in a file and pass --http-token-file <path>, or set KEYPROXY_HTTP_TOKEN (or listen on 127.0.0.1)`,
  );
}

const digest = (s: string) => createHash("sha256").update(s, "utf8").digest();

/** Constant time whatever the two lengths: the digests are always 32 bytes. */
export function tokenMatches(given: string | undefined, token: string): boolean {
  return given !== undefined && timingSafeEqual(digest(given), digest(token));
}

/** The token a request carries: an Authorization: Bearer header, the cookie, or ?token=. */
function tokenOf(req: http.IncomingMessage, query: URLSearchParams): { token?: string; fromQuery: boolean } {
  const auth = req.headers.authorization;
  if (auth?.startsWith("Bearer ")) return { token: auth.slice(7), fromQuery: false };
  const q = query.get("token");
  if (q !== null) return { token: q, fromQuery: true };
  for (const part of (req.headers.cookie ?? "").split(";")) {
    const [k, ...v] = part.trim().split("=");
    if (k === COOKIE) return { token: v.join("="), fromQuery: false };
  }
  return { fromQuery: false };
}

/** Without a token, only a Host naming loopback (an IP literal or localhost) is served. */
function hostIsLoopback(req: http.IncomingMessage): boolean {
  const host = req.headers.host;
  if (!host) return false;
  const m = /^(\[[^\]]+\]|[^:]+)(?::\d+)?$/.exec(host);
  return m !== null && isLoopback(m[1]);
}

function loadPages(): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const p of Object.values(PAGES)) {
    try {
      out.set(p.file, readFileSync(fileURLToPath(new URL(p.file, STATIC_DIR))));
    } catch {
      throw new Error(`the fleet view's ${p.file} is missing from ${fileURLToPath(STATIC_DIR)}: the installation is incomplete`);
    }
  }
  return out;
}

/** Serves the view of source on o.listen (port 0: any free port). */
export function serveFleetView(o: FleetViewOptions, source: FleetSource): Promise<FleetViewServer> {
  requireTokenOffLoopback(o);
  const token = o.token === undefined ? undefined : checkToken(o.token, o.flag ?? "the options");
  const pages = loadPages();
  const maxClients = o.maxClients ?? DEFAULT_MAX_CLIENTS;
  const viewers = new Set<http.ServerResponse>();

  const payload = () => jsonForTerminal(source.snapshot());
  let timer: NodeJS.Timeout | undefined;
  const unsubscribe = source.subscribe(() => {
    if (timer || !viewers.size) return;
    timer = setTimeout(() => {
      timer = undefined;
      const data = `data: ${payload()}\n\n`;
      for (const v of viewers) v.write(data);
    }, SEND_EVERY_MS);
  });
  const keepalive = setInterval(() => {
    for (const v of viewers) v.write(": keepalive\n\n");
  }, KEEPALIVE_MS);
  keepalive.unref();

  const send = (res: http.ServerResponse, status: number, body: string | Buffer, type = "text/plain; charset=utf-8", extra: Record<string, string> = {}) => {
    res.writeHead(status, { ...SECURITY_HEADERS, "content-type": type, ...extra });
    res.end(body);
  };

  const answer = (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (req.method !== "GET") return send(res, 405, "the fleet view is read-only: GET only\n", undefined, { allow: "GET" });
    let url: URL;
    try {
      url = new URL(req.url ?? "/", "http://fleet-view");
    } catch {
      return send(res, 400, "bad request target\n");
    }
    if (token === undefined) {
      if (!hostIsLoopback(req)) return send(res, 403, "this fleet view answers only requests to a loopback address (127.0.0.1, [::1], localhost); give it a token to serve other names\n");
    } else {
      const given = tokenOf(req, url.searchParams);
      if (!tokenMatches(given.token, token)) {
        return send(res, 401, "a token is needed: open /?token=<token>, or send Authorization: Bearer <token>\n", undefined, { "www-authenticate": 'Bearer realm="keyproxy fleet view"' });
      }
      // Opened once with ?token=: kept in a cookie the page's own requests carry, and the token taken
      // out of the address bar and the history.
      if (given.fromQuery && url.pathname === "/") {
        return send(res, 303, "", undefined, { location: "/", "set-cookie": `${COOKIE}=${token}; Path=/; HttpOnly; SameSite=Strict` });
      }
    }
    const page = PAGES[url.pathname];
    if (page) return send(res, 200, pages.get(page.file)!, page.type);
    // Browsers ask for it by themselves: nothing, rather than a 404 in every viewer's console.
    if (url.pathname === "/favicon.ico") return send(res, 204, "");
    if (url.pathname === "/fleet.json") return send(res, 200, payload(), "application/json; charset=utf-8");
    if (url.pathname === "/events") {
      if (viewers.size >= maxClients) return send(res, 503, `too many viewers (at most ${maxClients} at once)\n`, undefined, { "retry-after": "10" });
      res.writeHead(200, { ...SECURITY_HEADERS, "content-type": "text/event-stream; charset=utf-8", connection: "keep-alive" });
      res.write(`retry: 2000\ndata: ${payload()}\n\n`);
      viewers.add(res);
      req.on("close", () => viewers.delete(res));
      return;
    }
    send(res, 404, "not found: the fleet view is at /\n");
  };

  const server = http.createServer((req, res) => {
    try {
      answer(req, res);
    } catch {
      // Nothing of the error reaches the viewer (it may quote a payload); the view stays up.
      if (!res.headersSent) send(res, 500, "the fleet view failed to answer\n");
      else res.end();
    }
  });
  server.keepAliveTimeout = 5000;
  const stop = () => {
    unsubscribe();
    clearTimeout(timer);
    clearInterval(keepalive);
  };
  return new Promise((resolve, reject) => {
    server.once("error", (e: NodeJS.ErrnoException) => {
      stop();
      reject(e.code === "EADDRINUSE"
        ? new FleetViewAddressInUse(`cannot serve the fleet view on ${o.listen.host}:${o.listen.port}: the address is in use (another gateway or console? use ${o.flag ?? "--http"} <host:port>)`)
        : e);
    });
    server.listen(o.listen.port, o.listen.host, () => {
      const a = server.address() as import("node:net").AddressInfo;
      resolve({
        address: { host: a.address, port: a.port },
        get clients() {
          return viewers.size;
        },
        close: () => new Promise<void>((r) => {
          stop();
          for (const v of viewers) v.end();
          viewers.clear();
          server.close(() => r());
          server.closeAllConnections();
        }),
      });
    });
  });
}

/** A fleet view that follows the monitoring topics on a broker: `topic` is keyproxy/v1/# for a whole
 *  fleet (keyproxy console), keyproxy/v1/<id>/# for one gateway's own view. */
export async function serveBrokerFleetView(o: FleetViewOptions & { url: string; topic: string; title: string; keepEvents?: number }): Promise<FleetViewServer> {
  // Checked before anything connects: a refused start leaves nothing behind.
  requireTokenOffLoopback(o);
  const source = new BrokerFleetSource(o.url, o.topic, o.title, o.keepEvents);
  let server: FleetViewServer;
  try {
    server = await serveFleetView(o, source);
  } catch (e) {
    await source.close();
    throw e;
  }
  return {
    address: server.address,
    get clients() {
      return server.clients;
    },
    close: async () => {
      await server.close();
      await source.close();
    },
  };
}
