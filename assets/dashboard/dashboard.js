// lbx-relay dashboard: reads and acts through the admin API with the token typed in (kept in this
// tab's sessionStorage only). Every value from the API is written with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let token = sessionStorage.getItem("lbx-admin-token") || "";
// What the operator is looking at, kept across refreshes.
const view = { filter: {}, cursors: [null], page: 0, selected: null, bulk: null };

class ApiError extends Error {
  constructor(message, kind) { super(message); this.kind = kind; }
}

async function api(path, method = "GET", body) {
  let resp;
  try {
    const headers = { Authorization: "Bearer " + token };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError("The relay does not answer at this address: is it running? (" + e.message + ")", "down");
  }
  if (resp.status === 401) throw new ApiError("Wrong admin token: type the relay's LBX_ADMIN_TOKEN.", "token");
  if (resp.status === 403) {
    throw new ApiError("The admin API is disabled on this relay: set LBX_ADMIN_TOKEN (16+ characters) and " +
      "admin_token = \"${LBX_ADMIN_TOKEN}\" in routes.toml, then restart it.", "disabled");
  }
  const answer = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new ApiError(answer.error || "HTTP " + resp.status, "api");
  return answer;
}

function text(el, value) { el.textContent = value === null || value === undefined ? "" : String(value); return el; }
function el(tag, value, cls) { const e = document.createElement(tag); if (cls) e.className = cls; return text(e, value); }

/// A time as the operator reads it (local), with UTC on hover.
function when(iso, cell) {
  if (!iso) return text(cell, "–");
  const d = new Date(iso);
  cell.title = d.toISOString();
  return text(cell, d.toLocaleString());
}

function age(iso) {
  if (!iso) return "–";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 120 ? s + " s" : s < 7200 ? Math.round(s / 60) + " min" : Math.round(s / 3600) + " h";
}

function pct(x) { return x === null || x === undefined ? "–" : Math.round(x * 100) + " %"; }

function showState(message, kind) {
  const s = $("state");
  s.hidden = !message;
  s.className = kind === "ok" ? "" : "error";
  text(s, message);
}

function emptyRow(tbody, span) { const td = tbody.insertRow().insertCell(); td.colSpan = span; text(td, "none"); }

async function refreshStats() {
  const s = await api("/api/stats");
  text($("queue_depth"), s.queue_depth);
  text($("failed_count"), s.failed);
  text($("quarantined"), s.quarantined);
  text($("oldest"), age(s.oldest_pending_at));
  const unknown = s.unknown_hooks || { count: 0 };
  const notice = $("unknown_hooks");
  notice.hidden = !unknown.count;
  if (unknown.count && unknown.last) {
    const hint = unknown.last.did_you_mean ? " (did you mean " + unknown.last.did_you_mean + "?)" : "";
    text(notice, unknown.count + " webhook request(s) to an unknown source were answered 404 and not stored — latest: /hooks/" +
      unknown.last.source + hint + " at " + unknown.last.at + ". Check the webhook URL in Learnybox.");
  }
  for (const id of ["f_route", "b_route"]) {
    const select = $(id);
    if (select.options.length === 1) for (const r of s.routes) select.add(new Option(r, r));
  }
}

function showDrift(routes) {
  const list = $("drift_list");
  list.replaceChildren();
  for (const r of routes) {
    for (const f of r.fields || []) {
      const real = f.present + f.empty + f.absent;
      if (!f.in_samples || real === 0 || f.empty + f.absent === 0) continue;
      const li = el("li", "route " + r.route + ": " + f.path + " — empty in " + f.empty + ", absent in " + f.absent +
        " of " + real + " real event(s)" + (f.absent_streak ? " (absent in the last " + f.absent_streak + ")" : ""));
      if (f.absent_streak >= 20) li.className = "error-text";
      list.append(li);
    }
  }
  $("drift").hidden = list.children.length === 0;
}

async function refreshRoutes() {
  const { routes } = await api("/api/routes");
  showDrift(routes);
  const tbody = $("routes");
  tbody.replaceChildren();
  for (const r of routes) {
    const row = tbody.insertRow();
    text(row.insertCell(), r.route);
    text(row.insertCell(), pct(r.success_rate_1h));
    text(row.insertCell(), pct(r.success_rate_24h));
    text(row.insertCell(), r.attempts_24h);
    text(row.insertCell(), r.queue_depth);
    when(r.last_success, row.insertCell());
    const fail = row.insertCell();
    fail.className = "error";
    if (r.last_failure) { when(r.last_failure, fail); fail.append(el("div", r.last_failure_error)); } else text(fail, "–");
  }
  if (routes.length === 0) emptyRow(tbody, 7);
  const series = await api("/api/stats/series?since=24h&step=1h");
  drawChart(series.routes);
}

/// Bars of delivered and failed attempts per hour (all routes), and the p95 latency as a line.
function drawChart(routes) {
  const svg = $("chart");
  svg.replaceChildren();
  const names = Object.keys(routes);
  const n = names.length ? routes[names[0]].length : 0;
  const ok = new Array(n).fill(0), ko = new Array(n).fill(0), lat = new Array(n).fill(null);
  for (const name of names) {
    routes[name].forEach((b, i) => {
      ok[i] += b.delivered; ko[i] += b.failed + b.retried;
      if (b.latency_p95_ms !== null) lat[i] = Math.max(lat[i] || 0, b.latency_p95_ms);
    });
  }
  const top = Math.max(1, ...ok.map((v, i) => v + ko[i]));
  const topLat = Math.max(1, ...lat.filter((v) => v !== null));
  const w = 720 / Math.max(1, n), h = 140;
  const rect = (x, y, width, height, fill) => {
    const r = document.createElementNS(SVG, "rect");
    for (const [k, v] of Object.entries({ x, y, width, height, fill })) r.setAttribute(k, v);
    svg.append(r);
  };
  ok.forEach((v, i) => {
    const hOk = (v / top) * h, hKo = (ko[i] / top) * h;
    rect(i * w + 1, h - hOk, Math.max(1, w - 2), hOk, "#4c9f70");
    rect(i * w + 1, h - hOk - hKo, Math.max(1, w - 2), hKo, "#d66");
  });
  const points = lat.map((v, i) => v === null ? null : `${i * w + w / 2},${h - (v / topLat) * h}`).filter(Boolean);
  if (points.length) {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "#3461c1");
    line.setAttribute("stroke-width", "2");
    svg.append(line);
  }
  const axis = document.createElementNS(SVG, "text");
  axis.setAttribute("x", 4); axis.setAttribute("y", 155); axis.setAttribute("font-size", 11);
  axis.textContent = `max ${top} attempts/h · p95 up to ${topLat} ms`;
  svg.append(axis);
  text($("chart_note"), `${ok.reduce((a, b) => a + b, 0)} delivered, ${ko.reduce((a, b) => a + b, 0)} failed or retried in 24 h`);
}

function eventQuery() {
  const p = new URLSearchParams({ order: "desc", limit: "25" });
  for (const [k, v] of Object.entries(view.filter)) if (v) p.set(k, v);
  const cursor = view.cursors[view.page];
  if (cursor) p.set("after", cursor);
  return p.toString();
}

async function refreshEvents() {
  const page = await api("/api/events?" + eventQuery());
  const tbody = $("events");
  tbody.replaceChildren();
  for (const e of page.items) {
    const row = tbody.insertRow();
    row.className = "clickable" + (e.id === view.selected ? " selected" : "");
    row.dataset.id = e.id;
    when(e.received_at, row.insertCell());
    text(row.insertCell(), e.type);
    text(row.insertCell(), e.email || "–");
    text(row.insertCell(), e.status).className = "status-" + e.status;
    text(row.insertCell(), e.learnybox_id);
    row.addEventListener("click", () => select(e.id));
  }
  if (page.items.length === 0) emptyRow(tbody, 5);
  const first = view.page * 25 + (page.items.length ? 1 : 0), last = view.page * 25 + page.items.length;
  text($("count"), `${first}–${last} of ${page.total_exact ? "" : "at least "}${page.total}`);
  view.cursors[view.page + 1] = page.next;
  $("next").disabled = !page.next;
  $("prev").disabled = view.page === 0;
}

async function select(id) {
  view.selected = id;
  for (const row of $("events").rows) row.classList.toggle("selected", row.dataset.id === id);
  await refreshDetail();
  $("detail").scrollIntoView({ block: "nearest" });
}

function exchangeBlock(x) {
  const box = el("details", null);
  const req = x.request || {};
  const res = x.response;
  box.append(el("summary", `${x.step ? x.step + ": " : ""}${req.method} ${req.url} → ${res ? "HTTP " + res.status : x.error || "no answer"}`));
  box.append(el("div", "Request headers"), el("pre", JSON.stringify(req.headers || {}, null, 2)));
  if (req.body) box.append(el("div", "Request body"), el("pre", req.body));
  if (res) {
    box.append(el("div", "Answer headers"), el("pre", JSON.stringify(res.headers || {}, null, 2)));
    box.append(el("div", "Answer body (first 8 KiB)"), el("pre", res.body || ""));
  }
  return box;
}

async function refreshDetail() {
  if (!view.selected) { $("detail").hidden = true; return; }
  const d = await api("/api/events/" + encodeURIComponent(view.selected));
  $("detail").hidden = false;
  text($("d_id"), d.event_key);
  const summary = $("d_summary");
  summary.replaceChildren(el("span", `${d.event} from ${d.source}, ${d.origin === "reconcile" ? "recovered from Learnybox's API" : "received"} `), when(d.received_at, el("span")));
  text($("d_payload"), JSON.stringify(d.data, null, 2));
  const box = $("d_deliveries");
  box.replaceChildren();
  if (d.deliveries.length === 0) box.append(el("p", "No route takes this event type: nothing was sent."));
  for (const del of d.deliveries) {
    const card = el("div", null, "delivery");
    const head = el("div", null);
    head.append(el("b", del.route), el("span", " — " + del.status + `, ${del.attempts} attempt(s)`, "status-" + del.status));
    const label = del.status === "pending" ? "Send now" : del.status === "delivered" ? "Send again" : "Retry";
    const button = el("button", label);
    button.type = "button";
    button.addEventListener("click", async () => {
      try {
        await api(`/api/deliveries/${encodeURIComponent(del.id)}/retry`, "POST");
        text($("action"), `${label}: ${del.route} queued`);
        await refresh();
      } catch (e) { showState(e.message, "error"); }
    });
    head.append(" ", button);
    if (del.next_attempt_at) head.append(el("span", " next attempt "), when(del.next_attempt_at, el("span")));
    card.append(head);
    for (const a of del.attempt_log) {
      const item = el("div", null, "attempt " + (a.outcome === "delivered" ? "ok" : "ko"));
      item.append(el("span", `#${a.attempt} `), when(a.started_at, el("span")),
        el("span", ` · ${a.duration_ms} ms · ${a.outcome}${a.status ? " · HTTP " + a.status : ""}`));
      if (a.error) item.append(el("div", a.error, "error-text"));
      for (const x of a.exchanges || []) item.append(exchangeBlock(x));
      card.append(item);
    }
    box.append(card);
  }
}

async function refreshQuarantine() {
  const q = await api("/api/quarantine?limit=50");
  const tbody = $("quarantine");
  tbody.replaceChildren();
  for (const item of q.items) {
    const row = tbody.insertRow();
    text(row.insertCell(), item.id);
    text(row.insertCell(), item.source);
    when(item.received_at, row.insertCell());
    text(row.insertCell(), item.size + " B");
    text(row.insertCell(), item.reason).className = "error";
  }
  if (q.items.length === 0) emptyRow(tbody, 5);
}

async function refreshTypes() {
  const { types } = await api("/api/types");
  const tbody = $("types");
  tbody.replaceChildren();
  for (const t of types) {
    const row = tbody.insertRow();
    text(row.insertCell(), t.event);
    text(row.insertCell(), t.source);
    text(row.insertCell(), t.count);
    when(t.last_seen, row.insertCell());
    const routes = row.insertCell();
    if (t.routes_now.length === 0) {
      routes.className = "error";
      text(routes, "no route");
      row.className = "unrouted";
    } else {
      text(routes, t.routes_now.join(", "));
    }
  }
  if (types.length === 0) emptyRow(tbody, 5);
}

async function refreshReconcile() {
  const r = await api("/api/reconcile?days=14");
  const tbody = $("reconcile");
  tbody.replaceChildren();
  const runs = $("rc_runs");
  runs.replaceChildren();
  if (r.sources.length === 0) {
    runs.append(el("span", "Off: no source has [sources.NAME.api] in routes.toml (see docs/reconcile.md)."));
  }
  for (const s of r.sources) {
    const line = el("div", null);
    const last = s.last_run;
    if (!last) {
      line.append(el("span", `${s.source}: no run yet (every ${s.every}, over ${s.lookback}).`));
    } else {
      line.append(el("span", `${s.source}: last run `), when(last.started_at, el("span")),
        el("span", ` — ${last.state}, ${last.listed} item(s), ${last.recovered} recovered` +
          (s.next_run_at ? "; next " : "")));
      if (s.next_run_at) line.append(when(s.next_run_at, el("span")));
      if (last.error) line.append(el("div", last.error, "error-text"));
    }
    runs.append(line);
    for (const d of s.days) {
      const row = tbody.insertRow();
      text(row.insertCell(), d.day);
      text(row.insertCell(), s.source);
      text(row.insertCell(), d.in_learnybox);
      text(row.insertCell(), d.received);
      const rec = row.insertCell();
      text(rec, d.recovered);
      if (d.recovered > 0) rec.className = "warn";
      const miss = row.insertCell();
      text(miss, d.missing);
      if (d.missing > 0) {
        miss.className = "error";
        miss.title = d.missing_reasons.map((m) => `${m.count}× ${m.reason}`).join("\n");
      }
    }
  }
  if (tbody.rows.length === 0) emptyRow(tbody, 6);
}

async function refresh() {
  if (!token) { showState("Type the relay's admin token (LBX_ADMIN_TOKEN) to open the console.", "ok"); return; }
  try {
    await refreshStats();
    await Promise.all([refreshRoutes(), refreshEvents(), refreshQuarantine(), refreshTypes(), refreshReconcile()]);
    await refreshDetail();
    $("main").hidden = false;
    showState("");
    text($("updated"), "updated " + new Date().toLocaleTimeString());
  } catch (e) {
    showState(e.message, "error");
    if (e.kind !== "down") $("main").hidden = true;
  }
}

function bulkFilter() {
  return { status: $("b_status").value, route: $("b_route").value || undefined, type: $("b_type").value || undefined };
}

function wire() {
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem("lbx-admin-token", token);
    refresh();
  });
  $("filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = $("q").value.trim();
    view.filter = {
      email: q.includes("@") ? q : "", id: q && !q.includes("@") ? q : "",
      type: $("f_type").value.trim(), status: $("f_status").value, route: $("f_route").value,
    };
    view.cursors = [null]; view.page = 0;
    refresh();
  });
  $("clear").addEventListener("click", () => { $("filters").reset(); view.filter = {}; view.cursors = [null]; view.page = 0; refresh(); });
  $("next").addEventListener("click", () => { if (view.cursors[view.page + 1]) { view.page += 1; refresh(); } });
  $("prev").addEventListener("click", () => { if (view.page > 0) { view.page -= 1; refresh(); } });
  $("d_close").addEventListener("click", () => { view.selected = null; refresh(); });
  $("bulk").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      view.bulk = bulkFilter();
      const n = (await api("/api/deliveries/retry", "POST", { ...view.bulk, dry_run: true })).would_retry;
      text($("b_count"), `${n} deliver${n === 1 ? "y" : "ies"} match.`);
      $("b_go").disabled = n === 0;
      $("b_confirm").hidden = false;
    } catch (e) { showState(e.message, "error"); }
  });
  $("b_cancel").addEventListener("click", () => { $("b_confirm").hidden = true; view.bulk = null; });
  $("b_go").addEventListener("click", async () => {
    try {
      const r = await api("/api/deliveries/retry", "POST", view.bulk);
      $("b_confirm").hidden = true;
      text($("b_result"), `Replayed ${r.retried} deliver${r.retried === 1 ? "y" : "ies"} at ${new Date().toLocaleTimeString()}.`);
      refresh();
    } catch (e) { showState(e.message, "error"); }
  });
  $("reprocess").addEventListener("click", async () => {
    try {
      const r = await api("/api/quarantine/reprocess", "POST");
      text($("action"), `Reprocessed ${r.reprocessed}, duplicates ${r.duplicates}, still quarantined ${r.still_quarantined}.`);
      refresh();
    } catch (e) { showState(e.message, "error"); }
  });
  $("reload").addEventListener("click", async () => {
    try {
      const r = await api("/api/reload", "POST");
      text($("action"), `Reloaded: ${r.routes} route(s)` + (r.needs_restart && r.needs_restart.length ? `; restart for ${r.needs_restart.join(", ")}` : ""));
      refresh();
    } catch (e) { showState(e.message, "error"); }
  });
}

wire();
refresh();
setInterval(refresh, 5000);
