// The container's HEALTHCHECK: asks the gateway's /healthz (keyproxy gateway --metrics-listen,
// gateway/monitor/prometheus.ts) at the address in KEYPROXY_METRICS_LISTEN, which the gateway reads
// too, so both agree on it. Exit 0 when it answers 200, else 1 (Docker's "unhealthy"); the reason goes
// to stdout, where `docker inspect` shows it. Plain JavaScript, no tsx: it runs every 30 s. node:http
// rather than fetch(), which refuses the ports browsers block (6000, 10080, ...) that a metrics port
// may well be.
import http from "node:http";

const TIMEOUT_MS = 4000;

/** The address to ask for a listen address: a wildcard host is reached over loopback. */
function target(listen) {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(listen);
  if (!m) return undefined;
  const host = m[1] ?? m[2];
  const ask = host === "" || host === "0.0.0.0" ? "127.0.0.1" : host === "::" ? "::1" : host;
  return `http://${ask.includes(":") ? `[${ask}]` : ask}:${m[3]}/healthz`;
}

async function check() {
  const listen = process.env.KEYPROXY_METRICS_LISTEN;
  if (!listen) return [1, "KEYPROXY_METRICS_LISTEN is not set: the gateway serves no /healthz to ask (docker run --no-healthcheck turns this check off)"];
  const url = target(listen);
  if (!url) return [1, `KEYPROXY_METRICS_LISTEN is not host:port: ${listen}`];
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: TIMEOUT_MS }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => (body += chunk));
      res.on("end", () => resolve([res.statusCode === 200 ? 0 : 1, `${url}: ${res.statusCode} ${body.trim().replace(/\s*\n\s*/g, "; ")}`]));
    });
    req.on("timeout", () => req.destroy(new Error(`no answer within ${TIMEOUT_MS} ms`)));
    req.on("error", (e) => resolve([1, `${url}: ${e.code ?? e.message}`]));
  });
}

const [code, message] = await check();
console.log(message);
process.exit(code);
