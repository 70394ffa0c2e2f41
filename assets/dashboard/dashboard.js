// lbx-relay dashboard: reads and acts through the admin API with the token typed in (kept in this
// tab's sessionStorage only). Every value from the API is written with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("lbx-admin-token") || "";

async function api(path, method = "GET") {
  const resp = await fetch(path, { method, headers: { Authorization: "Bearer " + token } });
  if (resp.status === 401 || resp.status === 403) {
    throw new Error(resp.status === 401 ? "wrong admin token" : "the admin API is disabled (no admin_token)");
  }
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.error || "HTTP " + resp.status);
  return body;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  return td;
}

function fill(tbody, items, columns, extra) {
  tbody.replaceChildren();
  for (const item of items) {
    const row = tbody.insertRow();
    for (const [key, cls] of columns) cell(row, item[key], cls);
    if (extra) extra(row, item);
  }
  if (items.length === 0) cell(tbody.insertRow(), "none").colSpan = columns.length + (extra ? 1 : 0);
}

function age(iso) {
  if (!iso) return "–";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 120 ? s + " s" : s < 7200 ? Math.round(s / 60) + " min" : Math.round(s / 3600) + " h";
}

async function refresh() {
  try {
    const [stats, failed, pending, quarantine, events] = await Promise.all([
      api("/api/stats"),
      api("/api/deliveries?status=failed&limit=100"),
      api("/api/deliveries?status=pending&limit=100"),
      api("/api/quarantine?limit=50"),
      api("/api/events?order=desc&limit=50"),
    ]);
    $("main").hidden = false;
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
    $("queue_depth").textContent = stats.queue_depth;
    $("oldest").textContent = age(stats.oldest_pending_at);
    $("quarantined").textContent = stats.quarantined;
    $("failed_count").textContent = stats.failed;
    fill($("failed"), failed.items, [["id"], ["route"], ["attempts"], ["last_status"], ["last_error", "error"]], (row, d) => {
      const b = document.createElement("button");
      b.textContent = "Retry";
      b.onclick = () => act("/api/deliveries/" + encodeURIComponent(d.id) + "/retry");
      row.insertCell().append(b);
    });
    fill($("pending"), pending.items, [["id"], ["route"], ["attempts"], ["last_status"], ["last_error", "error"], ["next_attempt_at"]]);
    fill($("quarantine"), quarantine.items, [["id"], ["source"], ["received_at"], ["size"], ["reason", "error"]]);
    fill($("events"), events.items, [["received_at"], ["source"], ["event"], ["status"], ["id"]]);
  } catch (e) {
    $("status").textContent = e.message;
  }
}

async function act(path) {
  try {
    const r = await api(path, "POST");
    $("status").textContent = JSON.stringify(r);
  } catch (e) {
    $("status").textContent = e.message;
  }
  refresh();
}

$("login").onsubmit = (ev) => {
  ev.preventDefault();
  token = $("token").value;
  sessionStorage.setItem("lbx-admin-token", token);
  refresh();
};
$("retry_failed").onclick = () => act("/api/deliveries/retry?status=failed");
$("reprocess").onclick = () => act("/api/quarantine/reprocess");
$("reload").onclick = () => act("/api/reload");
if (token) refresh();
setInterval(() => token && refresh(), 5000);
