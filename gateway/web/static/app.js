// The fleet view's page (gateway/web/fleet-server.ts serves it): it follows the server's event stream
// and draws each snapshot. Every string in a snapshot (ids, reasons, event text) comes from devices,
// peers or whoever publishes on the broker: it is only ever set as text (textContent, SVG text nodes,
// attribute values), never parsed as markup. The server's Content-Security-Policy enforces that
// (require-trusted-types-for 'script': an innerHTML assignment would throw).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
/** How long an ended session stays drawn (dotted, red) so that the end is seen. */
const ENDED_SHOWN_MS = 3000;
/** How long a rekeyed session flashes. */
const REKEY_SHOWN_MS = 1500;

/** The latest snapshot, the offset from the viewer's clock to the server's, and what the graph showed. */
let last = null;
let skewMs = 0;
const ended = new Map(); // edge key -> { edge, until }
let shownEdges = new Map(); // edge key -> edge
const rekeyedAt = new Map(); // edge key -> viewer time of the last rekey seen

function el(tag, text, className) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text === null || text === "" ? "-" : String(text);
  if (className) e.className = className;
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

/** The rows, or one row saying there are none, in the table body `id`. */
function fill(id, rows, columns, none) {
  if (rows.length) return document.getElementById(id).replaceChildren(...rows);
  const td = el("td", none, "none");
  td.colSpan = columns;
  const tr = document.createElement("tr");
  tr.append(td);
  document.getElementById(id).replaceChildren(tr);
}

function row(cells, classes) {
  const tr = document.createElement("tr");
  cells.forEach((c, i) => tr.append(el("td", c === undefined ? null : c, classes && classes[i])));
  return tr;
}

function serverNow() {
  return Date.now() + skewMs;
}

function clock(iso) {
  if (typeof iso !== "string" || Number.isNaN(Date.parse(iso))) return null;
  const t = new Date(iso);
  // As keyproxy monitor shows times: the time of day (24 h) when today, else the date too.
  return new Date(serverNow()).toDateString() === t.toDateString() ? t.toTimeString().slice(0, 8) : t.toISOString().slice(0, 10) + " " + t.toTimeString().slice(0, 8);
}

function age(iso) {
  if (typeof iso !== "string" || Number.isNaN(Date.parse(iso))) return null;
  let s = Math.max(0, Math.round((serverNow() - Date.parse(iso)) / 1000));
  if (s < 120) return s + " s";
  if ((s = Math.round(s / 60)) < 120) return s + " min";
  if ((s = Math.round(s / 60)) < 48) return s + " h";
  return Math.round(s / 24) + " days";
}

function metric(g, name) {
  return g.metrics && g.metrics[name] !== undefined ? g.metrics[name] : null;
}

function drawGateways(snap) {
  fill("gateways", snap.gateways.map((g) => row([
    g.id, g.state + (g.reason ? " (" + g.reason + ")" : ""), clock(g.since), g.instance, g.listen, g.version, g.linked,
    metric(g, "joins"), metric(g, "joinRejects"), metric(g, "framesIn"), metric(g, "framesDropped"),
    metric(g, "sessionsLocal"), metric(g, "sessionsAcross"),
    g.revocation ? "serial " + g.revocation.serial + (g.revocation.issuedAt ? ", issued " + age(g.revocation.issuedAt) + " ago" : "") : null,
  ], [undefined, g.state])), 14, "no gateway has published yet");
}

function drawHandsets(snap) {
  fill("handsets", snap.handsets.map((h) => row([
    h.id, h.gateway, h.link, h.registration, h.board, h.firmware, h.memory, h.radio, h.joinCounter,
  ], [undefined, undefined, h.link.replace(/ /g, "-")])), 9, "no handsets");
}

function drawSessions(snap) {
  fill("sessions", snap.sessions.map((s) => row([
    s.from, s.to, s.app, s.spi, s.scope, clock(s.since), s.rekeys + (s.lastRekey ? " (last " + age(s.lastRekey) + " ago)" : ""),
  ])), 7, "no sessions since the view started");
}

function drawEvents(snap) {
  const items = snap.events.slice().reverse().map((e) => {
    const li = el("li", undefined, e.level || "");
    li.append(el("span", "[" + e.gateway + "] ", "gwtag"), document.createTextNode(e.text));
    return li;
  });
  document.getElementById("events").replaceChildren(...items);
}

function edgeKey(s) {
  return JSON.stringify([s.from, s.to, s.spi]);
}

/** Party names of a session ("id@gateway") and the handsets, each a node on one circle. */
function graphNodes(snap, edges) {
  const nodes = new Map();
  for (const h of snap.handsets) nodes.set(h.id + "@" + h.gateway, { name: h.id, gateway: h.gateway, local: true, linked: h.link === "linked" });
  for (const s of edges) {
    for (const party of [s.from, s.to]) {
      if (nodes.has(party)) continue;
      const at = party.lastIndexOf("@");
      nodes.set(party, { name: at > 0 ? party.slice(0, at) : party, gateway: at > 0 ? party.slice(at + 1) : "", local: false, linked: true });
    }
  }
  return [...nodes.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

function drawGraph(snap) {
  const now = Date.now();
  const current = new Map(snap.sessions.map((s) => [edgeKey(s), s]));
  // Ends and rekeys as they happen: an edge that went is shown ended for a moment; a rekey flashes.
  for (const [k, s] of shownEdges) if (!current.has(k) && !ended.has(k) && !snap.sessions.some((n) => n.from === s.from && n.to === s.to && n.rekeys > s.rekeys)) ended.set(k, { edge: s, until: now + ENDED_SHOWN_MS });
  for (const [k, e] of ended) if (e.until <= now || current.has(k)) ended.delete(k);
  for (const [k, s] of current) {
    const before = [...shownEdges.values()].find((o) => o.from === s.from && o.to === s.to && o.spi !== s.spi);
    if (s.rekeys > 0 && before && !shownEdges.has(k)) rekeyedAt.set(k, now);
  }
  for (const [k, t] of rekeyedAt) if (t + REKEY_SHOWN_MS <= now || !current.has(k)) rekeyedAt.delete(k);
  shownEdges = current;

  const edges = [...snap.sessions, ...[...ended.values()].map((e) => e.edge)];
  const nodes = graphNodes(snap, edges);
  const W = 640, H = 420, cx = W / 2, cy = H / 2, r = Math.min(W, H) / 2 - 60;
  const at = new Map();
  nodes.forEach(([key], i) => {
    const a = (2 * Math.PI * i) / Math.max(1, nodes.length) - Math.PI / 2;
    at.set(key, { x: cx + r * Math.cos(a), y: cy + r * Math.sin(a) });
  });
  const g = document.getElementById("graph");
  const parts = [];
  for (const s of edges) {
    const p = at.get(s.from), q = at.get(s.to);
    if (!p || !q) continue;
    const k = edgeKey(s);
    const cls = ["session", s.scope, ended.has(k) && !current.has(k) ? "ended" : "", rekeyedAt.has(k) ? "rekeyed" : ""].filter(Boolean).join(" ");
    const line = svg("line", { x1: p.x, y1: p.y, x2: q.x, y2: q.y, class: cls, "data-from": s.from, "data-to": s.to, "data-spi": s.spi });
    const title = svg("title");
    title.textContent = s.from + " \u2192 " + s.to + " (" + (s.app || "-") + ", " + s.spi + ", " + s.scope + ", rekeys " + s.rekeys + ")";
    line.append(title);
    parts.push(line);
  }
  for (const [key, n] of nodes) {
    const p = at.get(key);
    const circle = svg("circle", { cx: p.x, cy: p.y, r: 9, class: "node" + (n.local ? "" : " remote") + (n.linked ? "" : " offline"), "data-party": key });
    const title = svg("title");
    title.textContent = key;
    circle.append(title);
    const below = p.y >= cy;
    const label = svg("text", { x: p.x, y: p.y + (below ? 24 : -22), "text-anchor": "middle" });
    label.textContent = n.name;
    const gw = svg("text", { x: p.x, y: p.y + (below ? 36 : -10), "text-anchor": "middle", class: "gw" });
    gw.textContent = n.gateway ? "@" + n.gateway : "";
    parts.push(circle, label, gw);
  }
  if (!nodes.length) {
    const empty = svg("text", { x: cx, y: cy, "text-anchor": "middle" });
    empty.textContent = "no handsets yet";
    parts.push(empty);
  }
  g.replaceChildren(...parts);
}

function drawHeader(snap) {
  document.getElementById("title").textContent = snap.title;
  const b = document.getElementById("broker");
  b.textContent = "broker " + snap.broker.url + (snap.broker.connected ? " connected" : " unreachable" + (snap.broker.error ? " (" + snap.broker.error + ")" : "") + "; retrying");
  b.className = "broker" + (snap.broker.connected ? "" : " down");
}

function draw() {
  if (!last) return;
  document.getElementById("clock").textContent = new Date(serverNow()).toTimeString().slice(0, 8);
  drawHeader(last);
  drawGateways(last);
  drawGraph(last);
  drawSessions(last);
  drawHandsets(last);
  drawEvents(last);
}

function start() {
  const stream = new EventSource("events");
  stream.onmessage = (m) => {
    let snap;
    try {
      snap = JSON.parse(m.data);
    } catch {
      return;
    }
    skewMs = Date.parse(snap.now) - Date.now();
    last = snap;
    draw();
  };
  stream.onerror = () => {
    document.getElementById("broker").textContent = "connection to the fleet view lost; reconnecting";
    document.getElementById("broker").className = "broker down";
  };
  // Ages and ended edges move on between snapshots.
  setInterval(draw, 1000);
}

start();
