// lbx-relay dashboard: reads and acts through the admin API with the token typed in (kept in this
// tab's sessionStorage only). Every value from the API is written with textContent, never as HTML.
// Every view has a URL (#/events/ID, #/deliveries?status=failed&route=…, #/quarantine/ID): reload,
// back and a pasted link land on the same view. A refresh changes only what changed, so an open
// attempt, a text selection and the scroll stay; it pauses while text is selected.
// French and English: the browser's language, or the switch (remembered).
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 5000;
let token = sessionStorage.getItem("lbx-admin-token") || "";

// ---- language ----------------------------------------------------------------------------------

const MESSAGES = {
  en: {
    token_placeholder: "admin token", open: "Open", nav_dead: "Dead letters", nav_events: "Events",
    nav_quarantine: "Quarantine", nav_reconcile: "Reconciliation", switch_language: "Passer en français",
    card_pending: "pending deliveries", card_oldest: "oldest pending", card_failed: "failed (dead letters)",
    card_quarantined: "quarantined bodies", routes_title: "Routes",
    routes_hint: "Per delivery: what reached the CRM in the end. Retries are not failures; a route held by a 429 says until when.",
    col_route: "route", col_state: "state", col_delivered_24h: "delivered, 24 h", col_deliveries_24h: "deliveries, 24 h",
    col_attempts_24h: "attempts, 24 h", col_queue: "queue", col_last_success: "last success", col_last_failure: "last failure",
    drift_title: "Fields the samples have but real events lack",
    drift_hint: "the payload Learnybox sends differs from what a template reads; fix the template (the types below show a real payload), reload, replay.",
    chart_range: "Period", range_24h: "last 24 h", range_7d: "last 7 days", legend_delivered: "delivered",
    legend_retried: "retried (not yet a failure)", legend_failed: "failed for good", legend_latency: "p95 arrival → delivery (right scale)",
    dead_title: "Dead letters", col_status: "status", st_failed: "failed", st_pending: "pending", st_delivered: "delivered",
    st_unrouted: "no route", any_route: "any route", any_status: "any status", any_time: "any time", last_1h: "last hour",
    type_placeholder: "type, e.g. contact", error_placeholder: "error text, e.g. 422", col_type: "type", col_error: "error",
    filter: "Filter", clear: "Clear", select_all_matching: "Select all matching", select_none: "Select none",
    preview_replay: "Preview the replay", cancel: "Cancel", select: "select", col_contact: "contact",
    col_last_error: "last error", col_attempts: "attempts", col_last_attempt: "last attempt", more: "More",
    events_title: "Events", search_placeholder: "e-mail, name, type or Learnybox id", newer: "‹ Newer", older: "Older ›",
    col_received: "received", col_lb_id: "Learnybox id", event: "Event", close: "Close", payload: "Payload",
    types_title: "Event types received",
    types_hint: "Every type Learnybox really sent, and where it went. A type with no route is stored but sent nowhere: add it to a route's events, reload, and replay it.",
    col_source: "source", col_count: "count", col_last_seen: "last seen", col_routes: "routes",
    reconcile_title: "Reconciliation with Learnybox",
    reconcile_hint: "Learnybox's own API, compared with the events received: sales the webhook never brought are recovered and delivered. A day with recovered items means webhooks were lost (relay down, webhook switched off in Learnybox).",
    col_day: "day (UTC)", col_in_lb: "in Learnybox", col_by_webhook: "received by webhook", col_recovered: "recovered",
    col_missing: "still missing", quarantine_title: "Quarantine", reprocess_all: "Reprocess all with the current keys",
    drop_all: "Drop all", quarantine_hint: "Bodies that did not decrypt. Each was answered 200 so Learnybox keeps the webhook on.",
    col_size: "size", col_why: "why", quarantined_body: "Quarantined body", reprocess_one: "Reprocess this one",
    drop_one: "Drop this one", headers: "Headers", body: "Body", config_title: "Configuration", reload: "Reload routes.toml",
    dismiss: "Dismiss",
    // dynamic
    need_token: "Type the relay's admin token (LBX_ADMIN_TOKEN) to open the console.",
    wrong_token: "Wrong admin token: type the relay's LBX_ADMIN_TOKEN.",
    api_disabled: "The admin API is disabled on this relay: set LBX_ADMIN_TOKEN (16+ characters) and admin_token = \"${LBX_ADMIN_TOKEN}\" in routes.toml, then restart it.",
    relay_down: "The relay does not answer at this address: is it running? ({0})",
    updated: "updated {0}", paused: "⏸ paused while you read — click to resume", resume: "resume",
    empty_routes: "No route is configured.", empty_dead: "No delivery matches: nothing to triage.",
    empty_events: "No event matches.", empty_types: "No event received yet.", empty_reconcile: "No reconciliation run yet.",
    empty_quarantine: "The quarantine is empty: every body decrypted.",
    search_hint: "Nothing matches “{0}”. The search looks at contact e-mails (prefix), names and types (contact finds contact.*), any case; a whole address finds the contact even with store encryption, names do not.",
    count: "{0}–{1} of {2}", count_at_least: "{0}–{1} of at least {2}",
    unknown_hooks: "{0} webhook request(s) to an unknown source were answered 404 and not stored — latest: /hooks/{1}{2} at {3}. Check the webhook URL in Learnybox.",
    did_you_mean: " (did you mean {0}?)",
    state_ok: "sending", state_paused: "paused until {0}", state_idle: "no traffic",
    deliveries_counts: "{0} delivered · {1} failed · {2} in retry · {3} waiting",
    attempts_counts: "{0} ({1} retried, {2} failed)",
    chart_empty: "No delivery in this period.", chart_note: "{0} delivered, {1} retried, {2} failed in the period",
    chart_label: "deliveries per {0} over the period", attempts_axis: "attempts", hour: "hour", six_hours: "6 hours",
    received_from: "{0} from {1}, received ", recovered_from: "{0} from {1}, recovered from Learnybox's API ",
    no_route: "No route takes this event type: nothing was sent.", attempts_n: ", {0} attempt(s)",
    send_now: "Send now", send_again: "Send again", retry: "Retry", queued: "{0}: {1} queued",
    next_attempt: "next attempt {0}", next_was: "next attempt made {0}", no_more: "no further attempt",
    no_answer: "no answer", req_headers: "Request headers", req_body: "Request body", ans_headers: "Answer headers",
    ans_body: "Answer body (first 8 KiB)", selected_n: "{0} selected", all_matching_capped: "(the first {0})",
    confirm_replay: "These {0} deliveries will be sent again:", replay_n: "Replay {0}", replaying: "Replaying {0}…",
    replayed: "Replayed {0}; {1} in flight (left to their attempt); {2} gone.", nothing_selected: "Select rows first (or all matching).",
    no_route_type: "no route", routes_now: "now: {0}",
    rc_off: "Off: no source has [sources.NAME.api] in routes.toml (see docs/reconcile.md).",
    rc_none: "{0}: no run yet (every {1}, over {2}).", rc_last: "{0}: last run ", rc_summary: " — {0}, {1} item(s), {2} recovered",
    rc_next: "; next ", reprocessed: "Reprocessed: {0} became events, {1} duplicates, {2} still quarantined.",
    reprocessed_one: "It opened and became an event.", duplicate_one: "It opened into an event already stored.",
    still_one: "Still does not open: {0}", dropped: "Dropped.", dropped_n: "Dropped {0}.", confirm_drop_all: "Drop every quarantined body? They cannot be replayed afterwards.",
    reload_ok: "Configuration reloaded: {0} route(s).", reload_restart: " Takes effect at the next restart: {0}.",
    reload_refused: "The new configuration was refused; the running one is kept. Fix these, then reload:",
    q_meta: "{0} from source {1}, {2} bytes", why_empty: "The request had no body.",
    why_no_envelope: "The body is not an encrypted Learnybox message in any format the relay knows (is this URL given to the right sender?).",
    why_bad_mac: "The message's signature does not match the secret key: the key in routes.toml is not the one Learnybox uses (rotated?).",
    why_no_key: "None of the source's secret keys decrypts it: the key is wrong or was changed in Learnybox. Put the new key in secret_keys, reload, then reprocess.",
    why_other: "{0}",
    out_delivered: "delivered", out_retry: "will be retried", out_failed: "failed for good", out_throttled: "held back (429)",
    out_lease_lost: "taken over", out_other: "other",
    drift_line: "route {0}: {1} — empty in {2}, absent in {3} of {4} real event(s)", drift_streak: " (absent in the last {0})",
  },
  fr: {
    token_placeholder: "jeton d'administration", open: "Ouvrir", nav_dead: "Échecs", nav_events: "Événements",
    nav_quarantine: "Quarantaine", nav_reconcile: "Réconciliation", switch_language: "Switch to English",
    card_pending: "livraisons en attente", card_oldest: "plus ancienne en attente", card_failed: "échecs définitifs",
    card_quarantined: "corps en quarantaine", routes_title: "Routes",
    routes_hint: "Par livraison : ce qui est finalement arrivé au CRM. Une nouvelle tentative n'est pas un échec ; une route retenue par un 429 dit jusqu'à quand.",
    col_route: "route", col_state: "état", col_delivered_24h: "livrées, 24 h", col_deliveries_24h: "livraisons, 24 h",
    col_attempts_24h: "tentatives, 24 h", col_queue: "file", col_last_success: "dernier succès", col_last_failure: "dernier échec",
    drift_title: "Champs présents dans les exemples mais absents des vrais événements",
    drift_hint: "ce que Learnybox envoie diffère de ce que lit un modèle ; corrigez le modèle (les types ci-dessous montrent un vrai événement), rechargez, rejouez.",
    chart_range: "Période", range_24h: "dernières 24 h", range_7d: "7 derniers jours", legend_delivered: "livrées",
    legend_retried: "réessayées (pas encore un échec)", legend_failed: "échec définitif", legend_latency: "p95 arrivée → livraison (échelle de droite)",
    dead_title: "Échecs à traiter", col_status: "statut", st_failed: "en échec", st_pending: "en attente", st_delivered: "livrée",
    st_unrouted: "sans route", any_route: "toutes les routes", any_status: "tous les statuts", any_time: "toute période", last_1h: "dernière heure",
    type_placeholder: "type, p. ex. contact", error_placeholder: "texte de l'erreur, p. ex. 422", col_type: "type", col_error: "erreur",
    filter: "Filtrer", clear: "Effacer", select_all_matching: "Tout sélectionner (filtre)", select_none: "Tout désélectionner",
    preview_replay: "Aperçu du rejeu", cancel: "Annuler", select: "sélection", col_contact: "contact",
    col_last_error: "dernière erreur", col_attempts: "tentatives", col_last_attempt: "dernière tentative", more: "Plus",
    events_title: "Événements", search_placeholder: "e-mail, nom, type ou identifiant Learnybox", newer: "‹ Plus récents", older: "Plus anciens ›",
    col_received: "reçu", col_lb_id: "identifiant Learnybox", event: "Événement", close: "Fermer", payload: "Contenu",
    types_title: "Types d'événements reçus",
    types_hint: "Chaque type vraiment envoyé par Learnybox, et où il est allé. Un type sans route est conservé mais envoyé nulle part : ajoutez-le aux events d'une route, rechargez, rejouez.",
    col_source: "source", col_count: "nombre", col_last_seen: "dernier reçu", col_routes: "routes",
    reconcile_title: "Réconciliation avec Learnybox",
    reconcile_hint: "L'API de Learnybox, comparée aux événements reçus : les ventes que le webhook n'a jamais apportées sont récupérées et livrées. Un jour avec des éléments récupérés signifie des webhooks perdus (relais arrêté, webhook désactivé dans Learnybox).",
    col_day: "jour (UTC)", col_in_lb: "dans Learnybox", col_by_webhook: "reçus par webhook", col_recovered: "récupérés",
    col_missing: "toujours manquants", quarantine_title: "Quarantaine", reprocess_all: "Tout retraiter avec les clés actuelles",
    drop_all: "Tout supprimer", quarantine_hint: "Les corps qui n'ont pas pu être déchiffrés. Chacun a reçu 200, pour que Learnybox garde le webhook actif.",
    col_size: "taille", col_why: "pourquoi", quarantined_body: "Corps en quarantaine", reprocess_one: "Retraiter celui-ci",
    drop_one: "Supprimer celui-ci", headers: "En-têtes", body: "Corps", config_title: "Configuration", reload: "Recharger routes.toml",
    dismiss: "Fermer",
    need_token: "Saisissez le jeton d'administration du relais (LBX_ADMIN_TOKEN) pour ouvrir la console.",
    wrong_token: "Jeton d'administration incorrect : saisissez le LBX_ADMIN_TOKEN du relais.",
    api_disabled: "L'API d'administration est désactivée sur ce relais : définissez LBX_ADMIN_TOKEN (16 caractères ou plus) et admin_token = \"${LBX_ADMIN_TOKEN}\" dans routes.toml, puis redémarrez-le.",
    relay_down: "Le relais ne répond pas à cette adresse : est-il démarré ? ({0})",
    updated: "mis à jour {0}", paused: "⏸ en pause pendant votre lecture — cliquez pour reprendre", resume: "reprendre",
    empty_routes: "Aucune route n'est configurée.", empty_dead: "Aucune livraison ne correspond : rien à traiter.",
    empty_events: "Aucun événement ne correspond.", empty_types: "Aucun événement reçu pour l'instant.", empty_reconcile: "Aucune réconciliation pour l'instant.",
    empty_quarantine: "La quarantaine est vide : tout a été déchiffré.",
    search_hint: "Rien ne correspond à « {0} ». La recherche porte sur les e-mails (début), les noms et les types (contact trouve contact.*), sans tenir compte de la casse ; une adresse complète trouve le contact même avec le chiffrement du stockage, les noms non.",
    count: "{0}–{1} sur {2}", count_at_least: "{0}–{1} sur au moins {2}",
    unknown_hooks: "{0} requête(s) webhook vers une source inconnue ont reçu 404 et n'ont pas été conservées — dernière : /hooks/{1}{2} à {3}. Vérifiez l'URL du webhook dans Learnybox.",
    did_you_mean: " (vouliez-vous dire {0} ?)",
    state_ok: "envoie", state_paused: "en pause jusqu'à {0}", state_idle: "aucun trafic",
    deliveries_counts: "{0} livrées · {1} en échec · {2} en nouvelle tentative · {3} en attente",
    attempts_counts: "{0} ({1} réessayées, {2} en échec)",
    chart_empty: "Aucune livraison sur cette période.", chart_note: "{0} livrées, {1} réessayées, {2} en échec sur la période",
    chart_label: "livraisons par {0} sur la période", attempts_axis: "tentatives", hour: "heure", six_hours: "6 heures",
    received_from: "{0} de {1}, reçu ", recovered_from: "{0} de {1}, récupéré par l'API de Learnybox ",
    no_route: "Aucune route ne prend ce type d'événement : rien n'a été envoyé.", attempts_n: ", {0} tentative(s)",
    send_now: "Envoyer maintenant", send_again: "Renvoyer", retry: "Réessayer", queued: "{0} : {1} mis en file",
    next_attempt: "prochaine tentative {0}", next_was: "tentative suivante faite {0}", no_more: "pas d'autre tentative",
    no_answer: "pas de réponse", req_headers: "En-têtes de la requête", req_body: "Corps de la requête", ans_headers: "En-têtes de la réponse",
    ans_body: "Corps de la réponse (8 premiers Kio)", selected_n: "{0} sélectionnée(s)", all_matching_capped: "(les {0} premières)",
    confirm_replay: "Ces {0} livraisons seront renvoyées :", replay_n: "Rejouer {0}", replaying: "Rejeu de {0}…",
    replayed: "{0} rejouées ; {1} en cours (laissées à leur tentative) ; {2} disparues.", nothing_selected: "Sélectionnez d'abord des lignes (ou tout le filtre).",
    no_route_type: "aucune route", routes_now: "maintenant : {0}",
    rc_off: "Désactivée : aucune source n'a [sources.NOM.api] dans routes.toml (voir docs/reconcile.md).",
    rc_none: "{0} : aucun passage pour l'instant (toutes les {1}, sur {2}).", rc_last: "{0} : dernier passage ", rc_summary: " — {0}, {1} élément(s), {2} récupéré(s)",
    rc_next: " ; prochain ", reprocessed: "Retraitement : {0} devenus des événements, {1} doublons, {2} toujours en quarantaine.",
    reprocessed_one: "Il s'est ouvert et est devenu un événement.", duplicate_one: "Il s'est ouvert sur un événement déjà conservé.",
    still_one: "Ne s'ouvre toujours pas : {0}", dropped: "Supprimé.", dropped_n: "{0} supprimé(s).", confirm_drop_all: "Supprimer tous les corps en quarantaine ? Ils ne pourront plus être rejoués.",
    reload_ok: "Configuration rechargée : {0} route(s).", reload_restart: " Prend effet au prochain redémarrage : {0}.",
    reload_refused: "La nouvelle configuration est refusée ; celle en cours est conservée. Corrigez ceci, puis rechargez :",
    q_meta: "{0} de la source {1}, {2} octets", why_empty: "La requête n'avait pas de corps.",
    why_no_envelope: "Le corps n'est pas un message Learnybox chiffré dans un format connu du relais (cette URL est-elle donnée au bon expéditeur ?).",
    why_bad_mac: "La signature du message ne correspond pas à la clé secrète : la clé de routes.toml n'est pas celle qu'utilise Learnybox (changée ?).",
    why_no_key: "Aucune clé secrète de la source ne le déchiffre : la clé est fausse ou a été changée dans Learnybox. Mettez la nouvelle clé dans secret_keys, rechargez, puis retraitez.",
    why_other: "{0}",
    out_delivered: "livrée", out_retry: "sera réessayée", out_failed: "échec définitif", out_throttled: "retenue (429)",
    out_lease_lost: "reprise", out_other: "autre",
    drift_line: "route {0} : {1} — vide dans {2}, absent dans {3} sur {4} vrai(s) événement(s)", drift_streak: " (absent des {0} derniers)",
  },
};

let lang = localStorage.getItem("lbx-lang") || ((navigator.language || "en").toLowerCase().startsWith("fr") ? "fr" : "en");

function t(key, ...args) {
  const s = (MESSAGES[lang] && MESSAGES[lang][key]) || MESSAGES.en[key] || key;
  return s.replace(/\{(\d+)\}/g, (_, i) => (args[i] === undefined || args[i] === null ? "" : String(args[i])));
}

function applyLanguage() {
  document.documentElement.lang = lang;
  for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
  for (const e of document.querySelectorAll("[data-i18n-placeholder]")) e.placeholder = t(e.dataset.i18nPlaceholder);
  for (const e of document.querySelectorAll("[data-i18n-aria]")) e.setAttribute("aria-label", t(e.dataset.i18nAria));
  $("lang").textContent = lang === "fr" ? "EN" : "FR";
  $("chart").setAttribute("aria-label", t("chart_label", t("hour")));
  last.clear(); // everything is drawn again in the new language
}

// ---- plumbing ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, kind, body) { super(message); this.kind = kind; this.body = body; }
}

async function api(path, method = "GET", body) {
  let resp;
  try {
    const headers = { Authorization: "Bearer " + token };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(t("relay_down", e.message), "down");
  }
  if (resp.status === 401) throw new ApiError(t("wrong_token"), "token");
  if (resp.status === 403) throw new ApiError(t("api_disabled"), "disabled");
  const answer = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new ApiError(answer.error || "HTTP " + resp.status, "api", answer);
  return answer;
}

function text(el, value) { el.textContent = value === null || value === undefined ? "" : String(value); return el; }
function el(tag, value, cls) { const e = document.createElement(tag); if (cls) e.className = cls; return text(e, value); }

/// The viewer's locale (the browser's language), for dates and times in their time zone.
const LOCALE = navigator.language || undefined;
function local(iso) { return new Date(iso).toLocaleString(LOCALE); }

/// A time in the viewer's locale and time zone, UTC on hover.
function when(iso, cell) {
  if (!iso) return text(cell, "–");
  const d = new Date(iso);
  cell.title = d.toISOString();
  return text(cell, d.toLocaleString(LOCALE));
}

function age(iso) {
  if (!iso) return "–";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 120 ? s + " s" : s < 7200 ? Math.round(s / 60) + " min" : Math.round(s / 3600) + " h";
}

/// Milliseconds as a person reads them: 850 ms, 4.2 s, 6 min, 2.5 h.
function duration(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return Math.round(ms) + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 1 : 0) + " s";
  if (ms < 3600000) return Math.round(ms / 60000) + " min";
  return (ms / 3600000).toFixed(1) + " h";
}

function pct(x) { return x === null || x === undefined ? "–" : Math.round(x * 100) + " %"; }

function showState(message, kind) {
  const s = $("state");
  s.hidden = !message;
  s.className = kind === "ok" ? "" : "error";
  text(s, message);
}

function emptyRow(tbody, span, key) { const td = tbody.insertRow().insertCell(); td.colSpan = span; td.className = "empty"; text(td, t(key)); }

// What was drawn last, per part: a refresh that brings the same data leaves the DOM alone.
const last = new Map();
function changed(part, data) {
  const key = JSON.stringify(data);
  if (last.get(part) === key) return false;
  last.set(part, key);
  return true;
}

/// Redraws `box` keeping its open <details> (by data-key) and the page's scroll.
function redrawKeeping(box, draw) {
  const open = new Set([...box.querySelectorAll("details[data-key]")].filter((d) => d.open).map((d) => d.dataset.key));
  const y = window.scrollY;
  draw();
  for (const d of box.querySelectorAll("details[data-key]")) if (open.has(d.dataset.key)) d.open = true;
  window.scrollTo(window.scrollX, y);
}

// ---- the view, from the URL ----------------------------------------------------------------------

const view = {
  events: { filter: {}, cursors: [null], page: 0 },
  selected: null,
  dead: { filter: { status: "failed" }, after: null, rows: [], next: null },
  selection: new Set(),
  quarantine: null,
  range: "24h",
  paused: false,
};

function parseHash() {
  const h = location.hash.replace(/^#\/?/, "");
  const [path, query] = h.split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(query || "") };
}

function go(hash) { if (location.hash !== hash) location.hash = hash; else route(); }

async function route() {
  const { parts, params } = parseHash();
  const [top, id] = parts;
  let target = null;
  if (top === "events" && id) {
    view.selected = id; target = "detail";
  } else if (top === "events") {
    view.selected = null;
    view.events.filter = Object.fromEntries(["q", "type", "status", "route"].map((k) => [k, params.get(k) || ""]));
    view.events.cursors = [null]; view.events.page = 0;
    $("q").value = view.events.filter.q; $("f_type").value = view.events.filter.type;
    $("f_status").value = view.events.filter.status; $("f_route").value = view.events.filter.route;
    target = "s_events";
  } else if (top === "deliveries" && id) {
    try {
      const d = await api("/api/deliveries/" + encodeURIComponent(id));
      view.selected = d.event_id; view.highlight = id; target = "detail";
    } catch (e) { showState(e.message, "error"); }
  } else if (top === "deliveries") {
    const f = Object.fromEntries(["status", "route", "type", "error", "since"].map((k) => [k, params.get(k) || ""]));
    f.status = f.status || "failed";
    view.dead.filter = f;
    $("dl_status").value = f.status; $("dl_route").value = f.route; $("dl_type").value = f.type;
    $("dl_error").value = f.error; $("dl_since").value = f.since;
    view.selection.clear();
    target = "s_dead";
  } else if (top === "quarantine") {
    view.quarantine = id ? Number(id) : null; target = id ? "q_detail" : "s_quarantine";
  } else if (top === "reconcile") {
    target = "s_reconcile";
  } else if (top === "routes") {
    target = "s_routes";
  }
  last.delete("detail"); last.delete("dead"); last.delete("events"); last.delete("qdetail");
  await refresh();
  if (target && $(target)) $(target).scrollIntoView({ block: "start" });
}

// ---- parts -------------------------------------------------------------------------------------

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
    const hint = unknown.last.did_you_mean ? t("did_you_mean", unknown.last.did_you_mean) : "";
    text(notice, t("unknown_hooks", unknown.count, unknown.last.source, hint, local(unknown.last.at)));
  }
  for (const id of ["f_route", "dl_route"]) {
    const select = $(id);
    if (select.options.length === 1) {
      for (const r of s.routes) select.add(new Option(r, r));
      if (id === "dl_route") select.value = view.dead.filter.route || "";
      if (id === "f_route") select.value = view.events.filter.route || "";
    }
  }
}

function showDrift(routes) {
  const list = $("drift_list");
  list.replaceChildren();
  for (const r of routes) {
    for (const f of r.fields || []) {
      const real = f.present + f.empty + f.absent;
      if (!f.in_samples || real === 0 || f.empty + f.absent === 0) continue;
      const li = el("li", t("drift_line", r.route, f.path, f.empty, f.absent, real) +
        (f.absent_streak ? t("drift_streak", f.absent_streak) : ""));
      if (f.absent_streak >= 20) li.className = "error-text";
      list.append(li);
    }
  }
  $("drift").hidden = list.children.length === 0;
}

async function refreshRoutes() {
  const { routes } = await api("/api/routes");
  if (!changed("routes", routes)) return;
  showDrift(routes);
  const tbody = $("routes");
  tbody.replaceChildren();
  for (const r of routes) {
    const row = tbody.insertRow();
    const name = row.insertCell();
    const link = el("a", r.route);
    link.href = "#/deliveries?status=failed&route=" + encodeURIComponent(r.route);
    name.append(link);
    const state = row.insertCell();
    if (r.paused_until) {
      state.className = "warn";
      text(state, t("state_paused", local(r.paused_until)));
    } else {
      text(state, r.attempts_24h ? t("state_ok") : t("state_idle"));
    }
    const c = r.deliveries_24h || { delivered: 0, failed: 0, retrying: 0, pending: 0 };
    const rate = row.insertCell();
    text(rate, pct(r.delivered_rate_24h));
    rate.className = "rate";
    text(row.insertCell(), t("deliveries_counts", c.delivered, c.failed, c.retrying, c.pending)).className = "counts";
    const a = row.insertCell();
    text(a, r.attempts_24h);
    a.className = "attempts";
    text(row.insertCell(), r.queue_depth);
    when(r.last_success, row.insertCell());
    const fail = row.insertCell();
    fail.className = "error";
    if (r.last_failure) { when(r.last_failure, fail); fail.append(el("div", r.last_failure_error, "oneline")); } else text(fail, "–");
  }
  if (routes.length === 0) emptyRow(tbody, 8, "empty_routes");
}

async function refreshChart() {
  const [since, step] = view.range === "7d" ? ["7d", "6h"] : ["24h", "1h"];
  const series = await api(`/api/stats/series?since=${since}&step=${step}`);
  if (!changed("chart", [series, lang])) return;
  drawChart(series, step);
}

/// Bars of delivered, retried and failed attempts per bucket (all routes), the p95 latency as a
/// line on the right scale, a time axis and a count scale.
function drawChart(series, step) {
  const svg = $("chart");
  svg.replaceChildren();
  const routes = series.routes || {};
  const names = Object.keys(routes);
  const first = names.length ? routes[names[0]] : [];
  const n = first.length;
  const ok = new Array(n).fill(0), retried = new Array(n).fill(0), ko = new Array(n).fill(0), lat = new Array(n).fill(null);
  const starts = first.map((b) => b.start || b.at || null);
  for (const name of names) {
    routes[name].forEach((b, i) => {
      ok[i] += b.delivered; retried[i] += b.retried; ko[i] += b.failed;
      if (b.latency_p95_ms !== null && b.latency_p95_ms !== undefined) lat[i] = Math.max(lat[i] || 0, b.latency_p95_ms);
    });
  }
  const [L, R, T, B, W, H] = [44, 56, 20, 28, 760, 200];
  const plotW = W - L - R, plotH = H - T - B;
  const node = (tag, attrs, content) => {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (content !== undefined) e.textContent = content;
    svg.append(e);
    return e;
  };
  const total = ok.reduce((a, b) => a + b, 0) + retried.reduce((a, b) => a + b, 0) + ko.reduce((a, b) => a + b, 0);
  text($("chart_note"), t("chart_note", ok.reduce((a, b) => a + b, 0), retried.reduce((a, b) => a + b, 0), ko.reduce((a, b) => a + b, 0)));
  $("chart").setAttribute("aria-label", t("chart_label", step === "6h" ? t("six_hours") : t("hour")));
  // Axes.
  node("line", { x1: L, y1: T + plotH, x2: L + plotW, y2: T + plotH, stroke: "#8a93a3", class: "axis x" });
  node("line", { x1: L, y1: T, x2: L, y2: T + plotH, stroke: "#8a93a3", class: "axis y" });
  if (total === 0) {
    node("text", { x: L + plotW / 2, y: T + plotH / 2, "text-anchor": "middle", "font-size": 13, fill: "#5b6475", class: "empty" }, t("chart_empty"));
  }
  const top = Math.max(1, ...ok.map((v, i) => v + retried[i] + ko[i]));
  const niceTop = top <= 4 ? top : Math.ceil(top / 4) * 4;
  for (const f of [0, 0.5, 1]) {
    const y = T + plotH - f * plotH;
    node("text", { x: L - 4, y: y + 4, "text-anchor": "end", "font-size": 10, class: "tick y" }, String(Math.round(niceTop * f)));
    if (f > 0) node("line", { x1: L, y1: y, x2: L + plotW, y2: y, stroke: "#e3e6eb" });
  }
  node("text", { x: L, y: 11, "font-size": 10, fill: "#5b6475", class: "axis-title" }, t("attempts_axis"));
  const w = plotW / Math.max(1, n);
  const bar = (i, bottom, value, fill) => {
    const h = (value / niceTop) * plotH;
    if (h > 0) node("rect", { x: L + i * w + 1, y: T + plotH - bottom - h, width: Math.max(1, w - 2), height: h, fill });
    return bottom + h;
  };
  for (let i = 0; i < n; i++) {
    let b = bar(i, 0, ok[i], "#4c9f70");
    b = bar(i, b, retried[i], "#e0a030");
    bar(i, b, ko[i], "#d66");
  }
  // Time axis: a label every quarter of the period, in the viewer's time zone.
  const every = Math.max(1, Math.round(n / 4));
  for (let i = 0; i < n; i += every) {
    if (!starts[i]) continue;
    const d = new Date(starts[i]);
    const label = step === "6h" ? d.toLocaleDateString(LOCALE, { day: "numeric", month: "short" }) + " " + d.toLocaleTimeString(LOCALE, { hour: "2-digit" })
      : d.toLocaleTimeString(LOCALE, { hour: "2-digit", minute: "2-digit" });
    node("text", { x: L + i * w, y: H - 10, "font-size": 10, class: "tick x" }, label);
  }
  // Latency, right scale, readable units; only where there is data.
  const lats = lat.filter((v) => v !== null);
  // The latency's legend only where there is a latency line and its scale.
  for (const e of document.querySelectorAll(".legend-latency")) e.hidden = lats.length === 0;
  if (lats.length) {
    const topLat = Math.max(...lats);
    const points = lat.map((v, i) => v === null ? null : `${L + i * w + w / 2},${T + plotH - (v / topLat) * plotH}`).filter(Boolean);
    node("polyline", { points: points.join(" "), fill: "none", stroke: "#3461c1", "stroke-width": 2 });
    node("line", { x1: L + plotW, y1: T, x2: L + plotW, y2: T + plotH, stroke: "#3461c1", class: "axis y2" });
    for (const f of [0, 0.5, 1]) {
      node("text", { x: L + plotW + 4, y: T + plotH - f * plotH + 4, "font-size": 10, fill: "#3461c1", class: "tick y2" }, duration(topLat * f));
    }
  }
}

function eventQuery() {
  const p = new URLSearchParams({ order: "desc", limit: "25" });
  const f = view.events.filter;
  if (f.q) { if (f.q.includes("@")) p.set("email", f.q); else p.set("q", f.q); }
  for (const k of ["type", "status", "route"]) if (f[k]) p.set(k, f[k]);
  const cursor = view.events.cursors[view.events.page];
  if (cursor) p.set("after", cursor);
  return p.toString();
}

async function refreshEvents() {
  let page = await api("/api/events?" + eventQuery());
  // A Learnybox id is an exact match: tried when the text search finds nothing.
  const f = view.events.filter;
  if (page.items.length === 0 && f.q && !f.q.includes("@")) {
    const byId = await api("/api/events?order=desc&limit=25&id=" + encodeURIComponent(f.q));
    if (byId.items.length) page = byId;
  }
  if (!changed("events", [page, view.selected, lang])) return;
  const tbody = $("events");
  tbody.replaceChildren();
  for (const e of page.items) {
    const row = tbody.insertRow();
    row.className = "clickable" + (e.id === view.selected ? " selected" : "");
    row.dataset.id = e.id;
    row.tabIndex = 0;
    when(e.received_at, row.insertCell());
    text(row.insertCell(), t("st_" + e.status)).className = "status-" + e.status;
    text(row.insertCell(), e.type);
    text(row.insertCell(), e.email || "–");
    text(row.insertCell(), e.learnybox_id);
    const open = () => go("#/events/" + encodeURIComponent(e.id));
    row.addEventListener("click", open);
    row.addEventListener("keydown", (ev) => { if (ev.key === "Enter") open(); });
  }
  if (page.items.length === 0) emptyRow(tbody, 5, "empty_events");
  const hint = $("search_hint");
  hint.hidden = !(page.items.length === 0 && f.q);
  if (!hint.hidden) text(hint, t("search_hint", f.q));
  const p = view.events.page;
  const firstN = p * 25 + (page.items.length ? 1 : 0), lastN = p * 25 + page.items.length;
  text($("count"), t(page.total_exact ? "count" : "count_at_least", firstN, lastN, page.total));
  view.events.cursors[p + 1] = page.next;
  $("next").disabled = !page.next;
  $("prev").disabled = p === 0;
}

function exchangeBlock(x, key) {
  const box = el("details", null);
  box.dataset.key = key;
  const req = x.request || {};
  const res = x.response;
  box.append(el("summary", `${x.step ? x.step + ": " : ""}${req.method} ${req.url} → ${res ? "HTTP " + res.status : x.error || t("no_answer")}`));
  box.append(el("div", t("req_headers")), el("pre", JSON.stringify(req.headers || {}, null, 2)));
  if (req.body) box.append(el("div", t("req_body")), el("pre", pretty(req.body)));
  if (res) {
    box.append(el("div", t("ans_headers")), el("pre", JSON.stringify(res.headers || {}, null, 2)));
    box.append(el("div", t("ans_body")), el("pre", pretty(res.body || "")));
  }
  return box;
}

/// JSON shown indented; anything else as it is.
function pretty(body) {
  try { return JSON.stringify(JSON.parse(body), null, 2); } catch (_) { return body; }
}

async function refreshDetail() {
  if (!view.selected) { $("detail").hidden = true; last.delete("detail"); return; }
  const d = await api("/api/events/" + encodeURIComponent(view.selected));
  $("detail").hidden = false;
  if (!changed("detail", [d, lang, view.highlight])) return;
  redrawKeeping($("detail"), () => drawDetail(d));
}

function drawDetail(d) {
  text($("d_id"), d.event_key);
  const summary = $("d_summary");
  const from = d.origin === "reconcile" ? "recovered_from" : "received_from";
  summary.replaceChildren(el("span", t(from, d.event, d.source)), when(d.received_at, el("span")),
    el("span", " · "), el("span", t("st_" + d.status), "status-" + d.status));
  text($("d_payload"), JSON.stringify(d.data, null, 2));
  const box = $("d_deliveries");
  box.replaceChildren();
  if (d.deliveries.length === 0) box.append(el("p", t("no_route")));
  for (const del of d.deliveries) {
    const card = el("div", null, "delivery" + (view.highlight === del.id ? " highlight" : ""));
    card.id = "delivery-" + del.id;
    const head = el("div", null);
    head.append(el("b", del.route), el("span", " — " + t("st_" + del.status) + t("attempts_n", del.attempts), "status-" + del.status));
    const label = del.status === "pending" ? t("send_now") : del.status === "delivered" ? t("send_again") : t("retry");
    const button = el("button", label);
    button.type = "button";
    button.dataset.action = del.status === "pending" ? "send_now" : del.status === "delivered" ? "send_again" : "retry";
    button.addEventListener("click", async () => {
      try {
        await api(`/api/deliveries/${encodeURIComponent(del.id)}/retry`, "POST");
        text($("action"), t("queued", label, del.route));
        last.delete("detail");
        await refresh();
      } catch (e) { showState(e.message, "error"); }
    });
    head.append(" ", button);
    if (del.next_attempt_at) head.append(el("span", " " + t("next_attempt", local(del.next_attempt_at))));
    card.append(head);
    del.attempt_log.forEach((a, i) => {
      const item = el("div", null, "attempt " + (a.outcome === "delivered" ? "ok" : "ko"));
      item.append(el("span", `#${a.attempt} `), when(a.started_at, el("span")),
        el("span", ` · ${duration(a.duration_ms)} · ${t("out_" + a.outcome)}${a.status ? " · HTTP " + a.status : ""}`));
      const next = a.next_attempt_at ? local(a.next_attempt_at) : null;
      const isLast = i === del.attempt_log.length - 1;
      item.append(el("span", " · " + (next ? t(isLast ? "next_attempt" : "next_was", next) : t("no_more")), "next"));
      if (a.error) item.append(el("div", a.error, "error-text"));
      (a.exchanges || []).forEach((x, j) => item.append(exchangeBlock(x, `${del.id}:${a.attempt}:${j}`)));
      card.append(item);
    });
    box.append(card);
  }
}

// ---- dead letters ------------------------------------------------------------------------------

function deadQuery(after) {
  const f = view.dead.filter;
  const p = new URLSearchParams({ limit: "50" });
  for (const k of ["status", "route", "type", "error", "since"]) if (f[k]) p.set(k, f[k]);
  if (after) p.set("after", after);
  return p.toString();
}

async function refreshDead() {
  const page = await api("/api/deliveries/triage?" + deadQuery(null));
  if (!changed("dead", [page, lang, [...view.selection]])) return;
  view.dead.rows = page.items; view.dead.next = page.next;
  drawDead();
}

function drawDead() {
  const tbody = $("dead");
  tbody.replaceChildren();
  for (const r of view.dead.rows) {
    const row = tbody.insertRow();
    row.className = "clickable";
    row.tabIndex = 0;
    row.dataset.id = r.id;
    const pick = row.insertCell();
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = view.selection.has(r.id);
    box.setAttribute("aria-label", t("select") + " " + r.id);
    box.addEventListener("click", (ev) => { ev.stopPropagation(); toggle(r.id, box.checked); });
    pick.append(box);
    text(row.insertCell(), r.route);
    text(row.insertCell(), r.contact || "–");
    text(row.insertCell(), r.type);
    const err = row.insertCell();
    err.className = "error oneline";
    text(err, r.last_error || (r.last_status ? "HTTP " + r.last_status : "–"));
    err.title = r.last_error || "";
    text(row.insertCell(), r.attempts);
    when(r.last_attempt_at, row.insertCell());
    const open = () => go("#/deliveries/" + encodeURIComponent(r.id));
    row.addEventListener("click", open);
    row.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") open();
      if (ev.key === " ") { ev.preventDefault(); box.checked = !box.checked; toggle(r.id, box.checked); }
    });
  }
  if (view.dead.rows.length === 0) emptyRow(tbody, 7, "empty_dead");
  $("dl_more").hidden = !view.dead.next;
  text($("dl_selected"), t("selected_n", view.selection.size));
}

function toggle(id, on) {
  if (on) view.selection.add(id); else view.selection.delete(id);
  text($("dl_selected"), t("selected_n", view.selection.size));
  last.delete("dead");
}

/// Every delivery the filter matches (the first 1000), selected.
async function selectAllMatching() {
  let after = null;
  do {
    const page = await api("/api/deliveries/triage?" + deadQuery(after).replace("limit=50", "limit=500"));
    for (const r of page.items) if (view.selection.size < 1000) view.selection.add(r.id);
    after = page.next;
  } while (after && view.selection.size < 1000);
  last.delete("dead");
  await refreshDead();
  if (view.selection.size >= 1000) text($("dl_selected"), t("selected_n", view.selection.size) + " " + t("all_matching_capped", 1000));
}

async function previewReplay() {
  const ids = [...view.selection];
  if (ids.length === 0) { text($("dl_result"), t("nothing_selected")); return; }
  const check = await api("/api/deliveries/retry", "POST", { ids, dry_run: true });
  const known = new Map(view.dead.rows.map((r) => [r.id, r]));
  const list = $("dl_preview_list");
  list.replaceChildren();
  for (const id of ids.slice(0, 100)) {
    const r = known.get(id);
    list.append(el("li", r ? `${r.route} · ${r.type} · ${r.contact || "–"} · ${r.last_error || ""}` : id));
  }
  if (ids.length > 100) list.append(el("li", "…"));
  text($("dl_confirm_text"), t("confirm_replay", check.would_retry));
  text($("dl_go"), t("replay_n", check.would_retry));
  $("dl_go").disabled = check.would_retry === 0;
  $("dl_confirm").hidden = false;
}

async function replay() {
  const ids = [...view.selection];
  $("dl_go").disabled = true;
  text($("dl_result"), t("replaying", ids.length));
  try {
    const r = await api("/api/deliveries/retry", "POST", { ids });
    text($("dl_result"), t("replayed", r.retried, r.in_flight.length, r.missing.length));
    view.selection.clear();
    $("dl_confirm").hidden = true;
    last.delete("dead");
    await refresh();
  } catch (e) { text($("dl_result"), e.message); }
}

// ---- other parts -------------------------------------------------------------------------------

function why(reason) {
  if (!reason) return "";
  if (reason.startsWith("empty body")) return t("why_empty");
  if (reason.startsWith("no ciphertext")) return t("why_no_envelope");
  if (reason.includes("MAC did not match")) return t("why_bad_mac");
  if (reason.startsWith("no key opened")) return t("why_no_key");
  return t("why_other", reason);
}

async function refreshQuarantine() {
  const q = await api("/api/quarantine?limit=50");
  if (!changed("quarantine", [q.items.map((i) => [i.id, i.reason]), lang])) return;
  const tbody = $("quarantine");
  tbody.replaceChildren();
  for (const item of q.items) {
    const row = tbody.insertRow();
    row.className = "clickable";
    row.tabIndex = 0;
    text(row.insertCell(), item.id);
    text(row.insertCell(), item.source);
    when(item.received_at, row.insertCell());
    text(row.insertCell(), item.size + " B");
    const w = row.insertCell();
    w.className = "error";
    text(w, why(item.reason));
    w.title = item.reason;
    const open = () => go("#/quarantine/" + item.id);
    row.addEventListener("click", open);
    row.addEventListener("keydown", (ev) => { if (ev.key === "Enter") open(); });
  }
  if (q.items.length === 0) emptyRow(tbody, 5, "empty_quarantine");
}

async function refreshQuarantineItem() {
  if (!view.quarantine) { $("q_detail").hidden = true; return; }
  let item;
  try { item = await api("/api/quarantine/" + view.quarantine); } catch (e) {
    if (e.kind === "api") { $("q_detail").hidden = true; return; }
    throw e;
  }
  $("q_detail").hidden = false;
  if (!changed("qdetail", [item, lang])) return;
  redrawKeeping($("q_detail"), () => {
    text($("q_id"), item.id);
    text($("q_why"), why(item.reason));
    text($("q_meta"), t("q_meta", local(item.received_at), item.source, item.size));
    text($("q_headers"), JSON.stringify(item.headers, null, 2));
    text($("q_body"), item.body_text !== null && item.body_text !== undefined ? pretty(item.body_text) : item.body_base64);
  });
}

async function refreshTypes() {
  const { types } = await api("/api/types");
  if (!changed("types", [types, lang])) return;
  const tbody = $("types");
  tbody.replaceChildren();
  for (const ty of types) {
    const row = tbody.insertRow();
    text(row.insertCell(), ty.event);
    text(row.insertCell(), ty.source);
    text(row.insertCell(), ty.count);
    when(ty.last_seen, row.insertCell());
    const routes = row.insertCell();
    if (ty.routes_now.length === 0) {
      routes.className = "error";
      text(routes, t("no_route_type"));
      row.className = "unrouted";
    } else {
      text(routes, ty.routes_now.join(", "));
    }
  }
  if (types.length === 0) emptyRow(tbody, 5, "empty_types");
}

async function refreshReconcile() {
  const r = await api("/api/reconcile?days=14");
  if (!changed("reconcile", [r, lang])) return;
  const tbody = $("reconcile");
  tbody.replaceChildren();
  const runs = $("rc_runs");
  runs.replaceChildren();
  if (r.sources.length === 0) runs.append(el("p", t("rc_off")));
  for (const s of r.sources) {
    const line = el("p", null);
    const lr = s.last_run;
    if (!lr) {
      line.append(el("span", t("rc_none", s.source, s.every, s.lookback)));
    } else {
      line.append(el("span", t("rc_last", s.source)), when(lr.started_at, el("span")),
        el("span", t("rc_summary", lr.state, lr.listed, lr.recovered) + (s.next_run_at ? t("rc_next") : "")));
      if (s.next_run_at) line.append(when(s.next_run_at, el("span")));
      if (lr.error) line.append(el("div", lr.error, "error-text"));
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
  if (tbody.rows.length === 0) emptyRow(tbody, 6, "empty_reconcile");
}

// ---- refresh -----------------------------------------------------------------------------------

/// Text selected in the page: the operator is reading (or copying); refreshes wait.
function reading() { return String(window.getSelection ? window.getSelection() : "").trim() !== ""; }

let busy = false;
async function refresh() {
  if (!token) { showState(t("need_token"), "ok"); return; }
  if (busy) return;
  busy = true;
  try {
    await refreshStats();
    await Promise.all([refreshRoutes(), refreshChart(), refreshEvents(), refreshDead(), refreshQuarantine(),
      refreshQuarantineItem(), refreshTypes(), refreshReconcile()]);
    await refreshDetail();
    $("main").hidden = false;
    showState("");
    text($("updated"), t("updated", new Date().toLocaleTimeString(LOCALE)));
    // How many refreshes have completed (the time shown has only a second's precision).
    $("updated").dataset.n = String(Number($("updated").dataset.n || 0) + 1);
  } catch (e) {
    showState(e.message, "error");
    if (e.kind !== "down") $("main").hidden = true;
  } finally {
    busy = false;
  }
}

function tick() {
  const pause = view.paused || reading();
  $("pause").hidden = !pause;
  text($("pause"), t("paused"));
  if (!pause) refresh();
}

async function reload() {
  const box = $("reload_result");
  const list = $("reload_problems");
  list.replaceChildren();
  try {
    const r = await api("/api/reload", "POST");
    box.className = "notice";
    text($("reload_text"), t("reload_ok", r.routes) + (r.needs_restart && r.needs_restart.length ? t("reload_restart", r.needs_restart.join(", ")) : ""));
    last.clear();
  } catch (e) {
    box.className = "notice error";
    text($("reload_text"), t("reload_refused"));
    for (const p of (e.body && e.body.problems) || [e.message]) list.append(el("li", p, "error-text"));
  }
  box.hidden = false;
  box.scrollIntoView({ block: "nearest" });
}

function wire() {
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem("lbx-admin-token", token);
    last.clear();
    refresh();
  });
  $("lang").addEventListener("click", () => {
    lang = lang === "fr" ? "en" : "fr";
    localStorage.setItem("lbx-lang", lang);
    applyLanguage();
    refresh();
  });
  $("pause").addEventListener("click", () => { view.paused = false; window.getSelection().removeAllRanges(); tick(); });
  $("filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    const q = $("q").value.trim();
    if (q) p.set("q", q);
    for (const [k, id] of [["type", "f_type"], ["status", "f_status"], ["route", "f_route"]]) if ($(id).value.trim()) p.set(k, $(id).value.trim());
    go("#/events" + (p.toString() ? "?" + p : ""));
  });
  $("clear").addEventListener("click", () => { $("filters").reset(); go("#/events"); });
  $("next").addEventListener("click", () => { if (view.events.cursors[view.events.page + 1]) { view.events.page += 1; last.delete("events"); refresh(); } });
  $("prev").addEventListener("click", () => { if (view.events.page > 0) { view.events.page -= 1; last.delete("events"); refresh(); } });
  $("d_close").addEventListener("click", () => { view.selected = null; view.highlight = null; go("#/events"); });
  $("dl_filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const [k, id] of [["status", "dl_status"], ["route", "dl_route"], ["type", "dl_type"], ["error", "dl_error"], ["since", "dl_since"]]) {
      if ($(id).value.trim()) p.set(k, $(id).value.trim());
    }
    go("#/deliveries?" + p);
  });
  $("dl_all").addEventListener("click", () => selectAllMatching().catch((e) => showState(e.message, "error")));
  $("dl_none").addEventListener("click", () => { view.selection.clear(); last.delete("dead"); refreshDead(); });
  $("dl_preview").addEventListener("click", () => previewReplay().catch((e) => text($("dl_result"), e.message)));
  $("dl_go").addEventListener("click", replay);
  $("dl_cancel").addEventListener("click", () => { $("dl_confirm").hidden = true; });
  $("dl_more").addEventListener("click", async () => {
    const page = await api("/api/deliveries/triage?" + deadQuery(view.dead.next));
    view.dead.rows = view.dead.rows.concat(page.items); view.dead.next = page.next;
    drawDead();
  });
  $("range").addEventListener("change", () => { view.range = $("range").value; refresh(); });
  $("reload").addEventListener("click", reload);
  $("reload_dismiss").addEventListener("click", () => { $("reload_result").hidden = true; });
  $("reprocess").addEventListener("click", async () => {
    try {
      const r = await api("/api/quarantine/reprocess", "POST");
      text($("action"), t("reprocessed", r.reprocessed, r.duplicates, r.still_quarantined));
      last.clear();
      refresh();
    } catch (e) { showState(e.message, "error"); }
  });
  $("drop_all").addEventListener("click", async () => {
    if (!window.confirm(t("confirm_drop_all"))) return;
    const r = await api("/api/quarantine", "DELETE");
    text($("action"), t("dropped_n", r.dropped));
    last.clear();
    refresh();
  });
  $("q_close").addEventListener("click", () => go("#/quarantine"));
  $("q_reprocess").addEventListener("click", async () => {
    const r = await api(`/api/quarantine/${view.quarantine}/reprocess`, "POST");
    text($("q_result"), r.outcome === "reprocessed" ? t("reprocessed_one") : r.outcome === "duplicate" ? t("duplicate_one") : t("still_one", why(r.reason)));
    last.clear();
    refresh();
  });
  $("q_drop").addEventListener("click", async () => {
    await api(`/api/quarantine/${view.quarantine}`, "DELETE");
    text($("action"), t("dropped"));
    go("#/quarantine");
  });
  window.addEventListener("hashchange", route);
}

applyLanguage();
wire();
route();
setInterval(tick, REFRESH_MS);
