// raftshop console: polls the admin portal's JSON API every second and
// redraws the page. Everything shown is set with textContent, never parsed
// as HTML, so stored data cannot inject markup.
"use strict";

const REFRESH_MS = 1000;
const REQUEST_TIMEOUT_MS = 4000;
const CHART_WINDOW_MS = 60000;
const STALE_AFTER_MS = 5000;
const PALETTE = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7ea4", "#6e7781",
  "#fb8500", "#2da44e", "#cf222e", "#3a506b"];

const SHARDS = ["even", "odd"];

const $ = (id) => document.getElementById(id);

/** An element with a class and text. */
function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

/** GET `path` as JSON: { status, body }, or throws when the console is unreachable. */
async function getJson(path) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
  try {
    const response = await fetch(path, { signal: abort.signal, cache: "no-store" });
    let body = null;
    try { body = await response.json(); } catch (_) { body = { error: `unreadable answer (${response.status})` }; }
    return { status: response.status, body };
  } finally {
    clearTimeout(timer);
  }
}

const show = (value) => (value === null || value === undefined ? "–" : String(value));

function clockTime(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

function duration(ms) {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  if (ms < 120000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.round(ms / 60000)} min`;
}

// ---- connection state ------------------------------------------------------

// observedAt: the cluster snapshot's time (the console's clock); advanced:
// when it last changed (this browser's clock), so clocks need not agree.
const connection = { lastOk: 0, observedAt: 0, advanced: 0 };

function setConnection(state, text) {
  const node = $("connection");
  node.dataset.state = state;
  node.textContent = text;
}

function updateConnection(reachable) {
  const now = Date.now();
  if (reachable) connection.lastOk = now;
  if (!reachable) {
    const since = connection.lastOk ? ` since ${clockTime(connection.lastOk)}` : "";
    setConnection("down", `console unreachable${since}; retrying`);
  } else if (connection.advanced && now - connection.advanced > STALE_AFTER_MS) {
    setConnection("stale", `cluster last observed at ${clockTime(connection.observedAt)}`);
  } else {
    setConnection("live", `live · ${clockTime(now)}`);
  }
}

// ---- shards ----------------------------------------------------------------

function memberRow(shard, member) {
  const role = member.answered ? member.role : "unreachable";
  const row = document.createElement("tr");
  row.dataset.shard = shard;
  row.dataset.node = member.id;
  row.dataset.role = role;
  row.dataset.answered = String(member.answered);
  row.append(el("td", member.id), el("td", member.address, "mono"));
  const badge = el("span", role, "role");
  badge.dataset.role = role;
  const roleCell = el("td");
  roleCell.append(badge);
  if (!member.answered && member.error) roleCell.title = member.error;
  row.append(roleCell);
  for (const value of [member.term, member.leader_id, member.last_log_index, member.committed_index,
    member.applied_index, member.snapshot_index, member.lag]) {
    row.append(el("td", show(value), "num"));
  }
  return row;
}

/** The shards' cards, one per shard from the page's template, with the
 * ids the rest of this file finds them by (`leader-even`, `members-odd`). */
function shardCards() {
  const template = $("shard-card");
  for (const shard of SHARDS) {
    const card = template.content.firstElementChild.cloneNode(true);
    card.id = `shard-${shard}`;
    card.dataset.shard = shard;
    card.querySelector(".title").textContent = `shard ${shard}`;
    const leader = card.querySelector(".leader");
    leader.id = `leader-${shard}`;
    leader.dataset.shard = shard;
    card.querySelector("tbody").id = `members-${shard}`;
    $("shard-cards").append(card);
  }
}

function renderShards(view) {
  if (view.observed_at_ms !== connection.observedAt) {
    connection.observedAt = view.observed_at_ms;
    connection.advanced = Date.now();
  }
  for (const shard of view.shards) {
    const leader = $(`leader-${shard.shard}`);
    const body = $(`members-${shard.shard}`);
    if (!leader || !body) continue;
    leader.dataset.leader = shard.leader === null ? "" : String(shard.leader);
    leader.dataset.term = shard.term === null ? "" : String(shard.term);
    const reachable = shard.members.filter((m) => m.answered).length;
    leader.textContent = shard.leader === null
      ? `no leader (${reachable} of ${shard.members.length} nodes answer)`
      : `leader node ${shard.leader} · term ${shard.term}`;
    body.replaceChildren(...shard.members.map((member) => memberRow(shard.shard, member)));
  }
}

async function refreshShards() {
  const { status, body } = await getJson("/api/cluster");
  if (status === 200) {
    renderShards(body);
  } else {
    for (const shard of SHARDS) {
      $(`leader-${shard}`).textContent = body.error || `error ${status}`;
    }
  }
}

// ---- calls: throughput and latency -----------------------------------------

const calls = {
  previous: new Map(), // series key -> { at, calls, failed, sum, count }
  history: new Map(), // series key -> [{ t, rate, failed, latency }]
  colors: new Map(),
  totals: new Map(), // series key -> calls since the portal started
};

function colorOf(key) {
  if (!calls.colors.has(key)) calls.colors.set(key, PALETTE[calls.colors.size % PALETTE.length]);
  return calls.colors.get(key);
}

function recordCalls(answer) {
  const at = answer.at_ms;
  const notes = [];
  for (const portal of answer.portals) {
    if (!portal.answered) {
      notes.push(`${portal.portal}: ${portal.error}`);
      continue;
    }
    for (const m of portal.methods) {
      const key = `${portal.portal} ${m.service}/${m.method}`;
      const before = calls.previous.get(key);
      calls.previous.set(key, { at, calls: m.calls, failed: m.failed, sum: m.latency_sum_seconds, count: m.latency_count });
      calls.totals.set(key, m.calls);
      // A counter that went down means the portal restarted: start over.
      if (!before || at <= before.at || m.calls < before.calls || m.latency_count < before.count) continue;
      const seconds = (at - before.at) / 1000;
      const timed = m.latency_count - before.count;
      const point = {
        t: at,
        rate: (m.calls - before.calls) / seconds,
        failed: (m.failed - before.failed) / seconds,
        latency: timed > 0 ? ((m.latency_sum_seconds - before.sum) / timed) * 1000 : null,
      };
      if (!calls.history.has(key)) calls.history.set(key, []);
      calls.history.get(key).push(point);
    }
  }
  for (const [key, points] of calls.history) {
    while (points.length && points[0].t < at - CHART_WINDOW_MS) points.shift();
    if (!points.length) calls.history.delete(key);
  }
  const status = $("portals-status");
  status.textContent = notes.join(" · ");
  status.className = notes.length ? "note problem" : "note";
  return at;
}

/** The active series: methods called within the chart's window. */
function activeSeries() {
  const series = [];
  for (const [key, points] of calls.history) {
    if (points.some((p) => p.rate > 0)) series.push({ key, color: colorOf(key), points });
  }
  return series.sort((a, b) => a.key.localeCompare(b.key));
}

function renderMethodRows(series) {
  const rows = series.map(({ key, color, points }) => {
    const last = points[points.length - 1];
    const [portal, method] = key.split(" ");
    const row = document.createElement("tr");
    row.dataset.method = method;
    row.dataset.portal = portal;
    const swatch = el("span", null, "swatch");
    swatch.style.background = color;
    const swatchCell = el("td");
    swatchCell.append(swatch);
    row.append(swatchCell, el("td", portal), el("td", method, "mono"),
      el("td", last.rate.toFixed(1), "num"), el("td", last.failed.toFixed(1), "num"),
      el("td", last.latency === null ? "–" : `${last.latency.toFixed(2)} ms`, "num"),
      el("td", show(calls.totals.get(key)), "num"));
    return row;
  });
  if (!rows.length) {
    const row = document.createElement("tr");
    const cell = el("td", "No calls in the last minute.", "note");
    cell.colSpan = 7;
    row.append(cell);
    rows.push(row);
  }
  $("method-rows").replaceChildren(...rows);
}

/** A round number at or above `value`, for the top of an axis. */
function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  const step = [1, 2, 2.5, 5, 10].find((s) => s * magnitude >= value);
  return step * magnitude;
}

function formatTick(value) {
  if (value >= 100) return value.toFixed(0);
  if (value >= 10) return value.toFixed(1).replace(/\.0$/, "");
  return value.toFixed(2).replace(/\.?0+$/, "") || "0";
}

/** Draws `series` (pick(point) per point, null for a gap) over the last minute up to `now`. */
function drawChart(canvas, series, pick, now) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const box = { left: 46, right: width - 10, top: 10, bottom: height - 22 };
  const values = series.flatMap((s) => s.points.map(pick)).filter((v) => v !== null && isFinite(v));
  const top = niceCeiling(Math.max(0, ...values));
  const x = (t) => box.left + ((t - (now - CHART_WINDOW_MS)) / CHART_WINDOW_MS) * (box.right - box.left);
  const y = (v) => box.bottom - (v / top) * (box.bottom - box.top);

  ctx.font = "11px system-ui, sans-serif";
  ctx.lineWidth = 1;
  ctx.strokeStyle = "#dde2ea";
  ctx.fillStyle = "#5d6878";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i <= 4; i += 1) {
    const value = (top * i) / 4;
    ctx.beginPath();
    ctx.moveTo(box.left, Math.round(y(value)) + 0.5);
    ctx.lineTo(box.right, Math.round(y(value)) + 0.5);
    ctx.stroke();
    ctx.fillText(formatTick(value), box.left - 6, y(value));
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (const [offset, label] of [[60000, "−60 s"], [30000, "−30 s"], [0, "now"]]) {
    ctx.fillText(label, Math.min(Math.max(x(now - offset), box.left + 14), box.right - 12), box.bottom + 6);
  }
  if (!series.length) {
    ctx.textBaseline = "middle";
    ctx.fillText("no calls in the last minute", (box.left + box.right) / 2, (box.top + box.bottom) / 2);
    return;
  }
  ctx.lineWidth = 2;
  ctx.lineJoin = "round";
  for (const { color, points } of series) {
    ctx.strokeStyle = color;
    ctx.beginPath();
    let drawing = false;
    for (const point of points) {
      const value = pick(point);
      if (value === null || !isFinite(value)) {
        drawing = false;
        continue;
      }
      if (drawing) ctx.lineTo(x(point.t), y(value));
      else ctx.moveTo(x(point.t), y(value));
      drawing = true;
    }
    ctx.stroke();
  }
}

let lastCallsAt = Date.now();

function drawCalls() {
  const series = activeSeries();
  drawChart($("chart-throughput"), series, (p) => p.rate, lastCallsAt);
  drawChart($("chart-latency"), series, (p) => p.latency, lastCallsAt);
  renderMethodRows(series);
}

async function refreshCalls() {
  const { status, body } = await getJson("/api/metrics");
  if (status !== 200) {
    $("portals-status").textContent = body.error || `error ${status}`;
    return;
  }
  lastCallsAt = recordCalls(body);
  drawCalls();
}

// ---- transactions ----------------------------------------------------------

function renderTransactions(answer) {
  const parts = answer.shards.map((s) => {
    if (s.error) return `shard ${s.shard}: cannot read (${s.error})`;
    return `${s.complete ? "" : "at least "}${s.total} in shard ${s.shard}`;
  });
  const total = answer.shards.reduce((sum, s) => sum + s.total, 0);
  const problems = answer.shards.some((s) => s.error);
  const summary = $("transactions-summary");
  summary.className = problems ? "note problem" : "note";
  summary.dataset.intents = String(total);
  summary.textContent = total === 0 && !problems
    ? "No open transactions: no row is locked."
    : `Intents: ${parts.join(", ")}${answer.intents.length < total ? ` (showing ${answer.intents.length})` : ""}.`;
  const now = Date.now();
  const rows = answer.transactions.map((txn) => {
    const row = document.createElement("tr");
    row.dataset.txn = txn.txn;
    const id = el("td", txn.txn.slice(0, 12), "mono");
    id.title = txn.txn;
    const open = txn.prepared_at_ms === null ? "–" : duration(now - txn.prepared_at_ms);
    row.append(id, el("td", show(txn.decision_shard)), el("td", open, "num"), el("td", txn.locks.join(", "), "mono"));
    return row;
  });
  $("transaction-rows").replaceChildren(...rows);
  $("transactions-table").hidden = rows.length === 0;
}

async function refreshTransactions() {
  const { status, body } = await getJson("/api/transactions");
  if (status === 200) renderTransactions(body);
  else $("transactions-summary").textContent = body.error || `error ${status}`;
}

// ---- events ----------------------------------------------------------------

let newestEvent = -1;

function renderEvents(events) {
  const newest = events.length ? events[0].seq : 0;
  if (newest === newestEvent) return;
  newestEvent = newest;
  $("events-empty").hidden = events.length > 0;
  $("event-list").replaceChildren(...events.map((event) => {
    const item = document.createElement("li");
    item.dataset.seq = event.seq;
    item.dataset.kind = event.kind;
    item.dataset.shard = event.shard;
    if (event.kind === "leader") item.dataset.to = event.to === null ? "" : String(event.to);
    if (event.kind !== "leader") item.dataset.node = event.node;
    const time = el("time", clockTime(event.at_ms));
    time.dateTime = new Date(event.at_ms).toISOString();
    item.append(time, el("span", event.text));
    return item;
  }));
}

async function refreshEvents() {
  const { status, body } = await getJson("/api/events");
  if (status === 200) renderEvents(body.events);
}

// ---- search ----------------------------------------------------------------

function showSearchResult(status, title, detail) {
  const result = $("search-result");
  result.dataset.status = status;
  const parts = [el("h4", title)];
  if (detail !== undefined) parts.push(el("pre", detail));
  result.replaceChildren(...parts);
}

async function search(event) {
  event.preventDefault();
  const kind = $("search-kind").value;
  const id = $("search-id").value.trim();
  const button = $("search-button");
  button.disabled = true;
  showSearchResult("pending", `looking up ${kind} ${id}…`);
  try {
    const query = new URLSearchParams({ kind, id });
    const { status, body } = await getJson(`/api/search?${query}`);
    if (status === 200) showSearchResult("found", `${body.kind} ${body.id}`, JSON.stringify(body.data, null, 2));
    else if (status === 404) showSearchResult("not-found", body.error);
    else if (status === 400) showSearchResult("invalid", body.error);
    else showSearchResult("error", body.error || `error ${status}`);
  } catch (error) {
    showSearchResult("error", `the console did not answer: ${error.message || error}`);
  } finally {
    button.disabled = false;
  }
}

// ---- the loops -------------------------------------------------------------

/** Runs `refresher` every REFRESH_MS, each part on its own loop so a slow
 * answer (a shard without a leader) does not hold up the others; `done`
 * hears whether the console answered. */
function every(refresher, done) {
  const run = async () => {
    const started = Date.now();
    let answered = true;
    try {
      await refresher();
    } catch (_) {
      answered = false;
    }
    if (done) done(answered);
    setTimeout(run, Math.max(100, REFRESH_MS - (Date.now() - started)));
  };
  run();
}

document.addEventListener("DOMContentLoaded", () => {
  shardCards();
  $("search-form").addEventListener("submit", search);
  window.addEventListener("resize", drawCalls);
  every(refreshShards, updateConnection);
  every(refreshCalls);
  every(refreshTransactions);
  every(refreshEvents);
});
