// lockbroker status page: polls the admin JSON API and /metrics — every second on a small
// table, backing off on a large or slow one (see nextDelay) and while the tab is hidden.
"use strict";

const POLL_MS = 1000;
const MAX_POLL_MS = 30000;
// Above this many live keys each poll waits 5 s (a page of 200 keys is cheap, the /metrics
// count of the whole table is not).
const LARGE_TABLE_KEYS = 100000;
let previous = null; // { at, counters }

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

// Prometheus text → { name: [{ labels: {..}, value }] }.
function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      for (const part of m[3].match(/[a-zA-Z_]+="(?:[^"\\]|\\.)*"/g) || []) {
        const i = part.indexOf("=");
        labels[part.slice(0, i)] = part.slice(i + 2, -1);
      }
    }
    (out[m[1]] = out[m[1]] || []).push({ labels, value: Number(m[4]) });
  }
  return out;
}

function sum(metrics, name) {
  return (metrics[name] || []).reduce((a, s) => a + s.value, 0);
}

// Cumulative buckets → [{ le, count }] per bucket.
function buckets(metrics, name) {
  const rows = (metrics[name + "_bucket"] || [])
    .map((s) => ({ le: s.labels.le === "+Inf" ? Infinity : Number(s.labels.le), cum: s.value }))
    .sort((a, b) => a.le - b.le);
  let prev = 0;
  return rows.map((r) => { const c = r.cum - prev; prev = r.cum; return { le: r.le, count: c }; });
}

function fmtSeconds(s) {
  if (!isFinite(s)) return "+Inf";
  if (s < 1e-3) return (s * 1e6).toFixed(0) + "µs";
  if (s < 1) return (s * 1e3).toFixed(s < 0.01 ? 2 : 0) + "ms";
  return s.toFixed(s < 10 ? 1 : 0) + "s";
}

function fmtMs(ms) {
  if (ms < 1000) return ms + " ms";
  return (ms / 1000).toFixed(1) + " s";
}

function drawHistogram(hold, wait) {
  const canvas = document.getElementById("histogram");
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, padL = 40, padB = 28, padT = 10;
  ctx.clearRect(0, 0, W, H);
  const n = Math.max(hold.length, wait.length);
  if (n === 0) { ctx.fillStyle = "#6b7280"; ctx.fillText("no data (metrics off?)", padL, H / 2); return; }
  const max = Math.max(1, ...hold.map((b) => b.count), ...wait.map((b) => b.count));
  const slot = (W - padL - 10) / n, bar = Math.max(2, slot / 2 - 3);
  ctx.strokeStyle = "#e5e7eb"; ctx.fillStyle = "#6b7280"; ctx.font = "11px system-ui";
  for (let i = 0; i <= 4; i++) {
    const y = padT + (H - padT - padB) * (1 - i / 4);
    ctx.beginPath(); ctx.moveTo(padL, y); ctx.lineTo(W - 10, y); ctx.stroke();
    const tick = (max * i) / 4;
    ctx.fillText(max < 4 ? tick.toFixed(2).replace(/\.?0+$/, "") : String(Math.round(tick)), 4, y + 4);
  }
  for (let i = 0; i < n; i++) {
    const x = padL + i * slot + 2;
    for (const [series, color, dx] of [[hold, "#2563eb", 0], [wait, "#f59e0b", bar + 2]]) {
      const b = series[i]; if (!b) continue;
      const h = ((H - padT - padB) * b.count) / max;
      ctx.fillStyle = color; ctx.fillRect(x + dx, H - padB - h, bar, h);
    }
    const le = (hold[i] || wait[i]).le;
    ctx.fillStyle = "#6b7280"; ctx.fillText("≤" + fmtSeconds(le), x, H - 10);
  }
}

function prefixOf(key) {
  const i = key.indexOf("/");
  return i < 0 ? "(no prefix)" : key.slice(0, i + 1);
}

function renderLocks(data) {
  const root = document.getElementById("locks");
  root.replaceChildren();
  if (data.locks.length === 0) { root.append(el("p", { class: "muted", id: "no-locks" }, "no key is held")); return; }
  const groups = new Map();
  for (const l of data.locks) {
    const p = prefixOf(l.key);
    if (!groups.has(p)) groups.set(p, []);
    groups.get(p).push(l);
  }
  for (const [prefix, locks] of groups) {
    root.append(el("h3", {}, prefix + " (" + locks.length + ")"));
    const body = el("tbody");
    for (const l of locks) {
      const holders = l.holders.length ? l.holders : [null];
      holders.forEach((h, i) => {
        const row = el("tr", { "data-key": l.key });
        row.append(
          el("td", { class: "key" }, i === 0 ? l.key : ""),
          el("td", { class: "principal" }, h ? (h.principal || "(disconnected)") + (h.owner ? " · " + h.owner : "") : "—"),
          el("td", {}, h ? h.mode + (h.cached ? " · cached" : "") : ""),
          el("td", {}, h ? h.fence : ""),
          el("td", {}, h ? fmtMs(h.ttl_remaining_ms) : ""),
          el("td", {}, i === 0 ? l.waiters : ""),
          el("td", {}, i === 0 ? l.watchers : ""),
        );
        body.append(row);
      });
    }
    const head = el("thead", {}, el("tr", {}, ...["key", "holder", "mode", "fence", "TTL left", "waiters", "watchers"].map((t) => el("th", {}, t))));
    root.append(el("table", { class: "locks" }, head, body));
  }
  if (data.next) root.append(el("p", { class: "muted" }, "more keys follow (showing the first " + data.locks.length + ")"));
}

function renderSessions(data) {
  const body = document.querySelector("#sessions tbody");
  body.replaceChildren();
  for (const s of data.sessions) {
    const since = new Date(s.connected_since_ms);
    body.append(el("tr", {},
      el("td", {}, s.id), el("td", {}, s.principal), el("td", {}, s.peer || ""),
      el("td", {}, since.toLocaleTimeString()), el("td", {}, s.leases), el("td", {}, s.waiting)));
  }
}

function renderRates(metrics) {
  const now = performance.now();
  const counters = {
    grants: sum(metrics, "lockbroker_grants_total"),
    releases: sum(metrics, "lockbroker_releases_total"),
    expiries: sum(metrics, "lockbroker_expiries_total"),
    denials: sum(metrics, "lockbroker_denials_total"),
  };
  if (previous) {
    const dt = (now - previous.at) / 1000;
    for (const k of Object.keys(counters)) {
      const r = Math.max(0, counters[k] - previous.counters[k]) / dt;
      document.getElementById("rate-" + k).textContent = r < 10 ? r.toFixed(1) : Math.round(r);
    }
  }
  previous = { at: now, counters };
  document.getElementById("held").textContent = sum(metrics, "lockbroker_held_leases");
  document.getElementById("waiters").textContent = sum(metrics, "lockbroker_waiters");
  document.getElementById("sessions-count").textContent = sum(metrics, "lockbroker_sessions");
  drawHistogram(buckets(metrics, "lockbroker_hold_seconds"), buckets(metrics, "lockbroker_acquire_wait_seconds"));
}

// The admin token, when the broker asks for one: kept in this tab's session storage (which
// other origins cannot read) and sent as a bearer token; never in a URL or a cookie.
const TOKEN_KEY = "lockbroker-admin-token";

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: "Bearer " + token } : {};
}

async function getJson(url) {
  const r = await fetch(url, { cache: "no-store", headers: authHeaders() });
  return { status: r.status, body: await r.json() };
}

// Shows the token form (after a 401), with the broker's reason if a token was refused.
function askForToken(answer) {
  const form = document.getElementById("token-form");
  const hadToken = sessionStorage.getItem(TOKEN_KEY) !== null;
  sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById("token-error").textContent = hadToken ? (answer.body.error || "refused") : "";
  form.hidden = false;
  document.getElementById("locks").replaceChildren(el("p", { class: "muted" }, "an admin token is needed"));
  document.querySelector("#sessions tbody").replaceChildren();
}

document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = document.getElementById("token");
  const token = input.value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  input.value = "";
  document.getElementById("token-form").hidden = true;
  refresh();
});

// The wait before the next poll: at least POLL_MS, 5× what the last poll took (a slow broker
// is asked less often), 5 s on a large table, 30 s while the tab is hidden.
function nextDelay(tookMs, keys) {
  let delay = Math.max(POLL_MS, 5 * tookMs);
  if (keys > LARGE_TABLE_KEYS) delay = Math.max(delay, 5000);
  if (document.hidden) delay = MAX_POLL_MS;
  return Math.min(delay, MAX_POLL_MS);
}

let timer = null;
let pollMs = POLL_MS;
let running = false; // one poll at a time: a refresh asked for meanwhile waits for the next

async function refresh() {
  if (running) return;
  running = true;
  clearTimeout(timer);
  const started = performance.now();
  let keys = 0;
  try {
    const prefix = document.getElementById("prefix").value;
    const [locks, sessions, metrics, ready] = await Promise.all([
      getJson("/api/locks?limit=200&prefix=" + encodeURIComponent(prefix)),
      getJson("/api/sessions?limit=200"),
      fetch("/metrics", { cache: "no-store", headers: authHeaders() }).then((r) => r.text()),
      getJson("/readyz"),
    ]);
    if (locks.status === 401 || sessions.status === 401) {
      askForToken(locks.status === 401 ? locks : sessions);
    } else {
      renderLocks(locks.body);
      renderSessions(sessions.body);
    }
    const parsed = parseMetrics(metrics);
    keys = sum(parsed, "lockbroker_keys");
    renderRates(parsed);
    const badge = document.getElementById("ready");
    badge.textContent = ready.body.ok ? "ready" : "not ready: " + ready.body.reason;
    badge.className = "badge " + (ready.body.ok ? "ok" : "bad");
    pollMs = nextDelay(performance.now() - started, keys);
    document.getElementById("updated").textContent =
      "updated " + new Date().toLocaleTimeString() + " · every " + (pollMs / 1000).toFixed(0) + " s";
  } catch (e) {
    pollMs = Math.min(MAX_POLL_MS, pollMs * 2);
    document.getElementById("updated").textContent = "cannot reach the broker: " + e;
  }
  running = false;
  timer = setTimeout(refresh, pollMs);
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) refresh();
});
refresh();
