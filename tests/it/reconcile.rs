//! Reconciliation with Learnybox's API, against a stand-in API on loopback that implements the
//! token flow (X-API-Key, 498 and the refresh grant), paging (`limit`/`offset` until `data` is
//! empty) and 429: sales no webhook brought are delivered once; webhooks and second runs that
//! follow are duplicates; the API key and tokens never show.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;
use lbx_relay::event::rfc3339;
use lbx_relay::reconcile::{self, Clients, RunOptions};
use lbx_relay::store::reconcile::RunState;
use lbx_relay::store::roles::*;

const API_KEY: &str = "lbx-api-key-7f3e9a1c55";

/// One request to the stand-in: method, path and query, headers, body.
type Logged = (String, String, Vec<(String, String)>, String);

/// What the stand-in Learnybox API holds and what it was asked.
#[derive(Default)]
struct Learnybox {
    transactions: Mutex<Vec<Value>>,
    /// `(method, path and query, headers, body)` of every request.
    log: Mutex<Vec<Logged>>,
    /// Statuses to answer list requests with first (498, 429, …), before serving the page.
    list_script: Mutex<VecDeque<u16>>,
    issued: Mutex<u32>,
    /// Cancelled when a page at this offset has been served.
    cancel_at: Mutex<Option<(u64, CancellationToken)>>,
    /// Echo the request's headers in an error (a hostile or debugging API).
    echo_error: Mutex<bool>,
    /// How long a list page takes.
    delay: Mutex<Duration>,
}

impl Learnybox {
    fn token(&self) -> String {
        format!("access-token-{:04}", *self.issued.lock().unwrap())
    }

    fn offsets(&self) -> Vec<u64> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, p, ..)| m == "GET" && p.contains("transactions/"))
            .filter_map(|(_, p, ..)| query(p, "offset")?.parse().ok())
            .collect()
    }

    fn requests(&self, what: &str) -> Vec<Logged> {
        self.log.lock().unwrap().iter().filter(|(_, p, ..)| p.contains(what)).cloned().collect()
    }
}

fn query(path_and_query: &str, key: &str) -> Option<String> {
    let q = path_and_query.split_once('?')?.1;
    q.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v.to_string()))
}

async fn learnybox_handler(state: web::Data<Learnybox>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let headers: Vec<(String, String)> =
        req.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
    let path = req.uri().to_string();
    let body = String::from_utf8_lossy(&body).into_owned();
    state.log.lock().unwrap().push((req.method().to_string(), path.clone(), headers.clone(), body.clone()));
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if path.starts_with("/api/v2/oauth/token/") {
        let form: Vec<(String, String)> = serde_urlencoded::from_str(&body).unwrap_or_default();
        let grant = form.iter().find(|(k, _)| k == "grant_type").map(|(_, v)| v.as_str());
        let ok = match grant {
            Some("access_token") => header("x-api-key").as_deref() == Some(API_KEY),
            Some("refresh_token") => form.iter().any(|(k, v)| k == "refresh_token" && v.starts_with("refresh-")),
            _ => false,
        };
        if !ok {
            return HttpResponse::Unauthorized().json(json!({"status": false, "message": "invalid key"}));
        }
        *state.issued.lock().unwrap() += 1;
        let n = *state.issued.lock().unwrap();
        return HttpResponse::Ok().json(json!({"status": true, "data": {
            "access_token": state.token(), "refresh_token": format!("refresh-{n:04}"), "expires_in": 3600}}));
    }
    if header("authorization").as_deref() != Some(&format!("Bearer {}", state.token())) {
        return HttpResponse::build(actix_web::http::StatusCode::from_u16(498).unwrap())
            .json(json!({"status": false, "message": "token expired"}));
    }
    if *state.echo_error.lock().unwrap() {
        return HttpResponse::BadRequest()
            .json(json!({"status": false, "message": format!("bad request {headers:?}")}));
    }
    if let Some(status) = state.list_script.lock().unwrap().pop_front() {
        let mut answer = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
        if status == 429 {
            answer.insert_header(("Retry-After", "0"));
        }
        if status == 498 {
            // Every token issued so far is refused from now on.
            *state.issued.lock().unwrap() += 100;
        }
        return answer.json(json!({"status": false, "message": "scripted"}));
    }
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let limit: usize = query(&path, "limit").and_then(|v| v.parse().ok()).unwrap_or(500);
    let offset: usize = query(&path, "offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let items: Vec<Value> = state.transactions.lock().unwrap().iter().skip(offset).take(limit).cloned().collect();
    if let Some((at, token)) = state.cancel_at.lock().unwrap().as_ref() {
        if *at == offset as u64 {
            token.cancel();
        }
    }
    HttpResponse::Ok().json(json!({"status": true, "message": "", "data": items}))
}

fn start_learnybox() -> (Arc<Learnybox>, String) {
    let state = Arc::new(Learnybox::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = serve_loopback(listener, state.clone(), learnybox_handler);
    (state, format!("{url}/api/v2/"))
}

/// A transaction as the stand-in API lists it, `hours_ago` before the driven clock's start.
fn transaction(id: &str, email: &str, hours_ago: i64) -> Value {
    transaction_at(DRIVEN_START_MS, id, email, hours_ago)
}

fn transaction_at(base: i64, id: &str, email: &str, hours_ago: i64) -> Value {
    json!({
        "id_transaction": id, "date": rfc3339(base - hours_ago * 3_600_000),
        "email": email, "prenom": "Zoë", "nom": "Lefèvre", "montant_ttc": 97.0, "devise": "eur",
        "produit": "Formation « Vendre en ligne »",
    })
}

/// A webhook for the same sale (its own Learnybox event id, the transaction's id inside).
fn webhook(event_id: &str, kind: &str, tx: &str, email: &str) -> Value {
    json!({
        "event": kind, "id": event_id, "created_at": rfc3339(DRIVEN_START_MS - 3_600_000),
        "data": {"contact": {"email": email, "prenom": "Zoë"}, "transaction": {"id": tx, "amount": 97.0}},
    })
}

fn api_table(url: &str, extra: &str) -> &'static str {
    Box::leak(
        format!(
            "[sources.learnybox.api]\nurl = {url:?}\nkey = {API_KEY:?}\nevery = \"15m\"\nlookback = \"48h\"\n\
             grace = \"2m\"\nrate_limit = \"50/1s\"\npage_size = 2\n{extra}\n[sources.learnybox.api.transactions]\n"
        )
        .into_boxed_str(),
    )
}

fn sales() -> Vec<Value> {
    sales_at(DRIVEN_START_MS)
}

/// Five sales in the window before `base`, one older than the lookback, one younger than the grace.
fn sales_at(base: i64) -> Vec<Value> {
    vec![
        transaction_at(base, "TX-1", "ann@example.org", 30),
        transaction_at(base, "TX-2", "bob@example.org", 20),
        transaction_at(base, "TX-3", "cleo@example.org", 10),
        transaction_at(base, "TX-4", "dan@example.org", 5),
        transaction_at(base, "TX-5", "eve@example.org", 1),
        transaction_at(base, "TX-OLD", "old@example.org", 60),
        json!({"id_transaction": "TX-NEW", "date": rfc3339(base - 30_000), "email": "new@example.org"}),
    ]
}

async fn run(d: &DrivenRelay, clients: &Clients, dry_run: bool) -> reconcile::RunReport {
    let opts = RunOptions { since: None, dry_run, trigger: "test" };
    reconcile::run_source(&d.relay.ingest, clients, "learnybox", &opts, &CancellationToken::new()).await.unwrap()
}

async fn deliver_all(d: &DrivenRelay) {
    while d.round().await > 0 {}
}

/// The transaction ids the CRM received, in order.
fn crm_transactions(crm: &FakeCrm) -> Vec<String> {
    crm.received()
        .iter()
        .filter_map(|r| r.json().pointer("/data/data/transaction/id").and_then(Value::as_str).map(str::to_string))
        .collect()
}

async fn missing_sales_are_delivered_once(store_url: Option<String>) {
    let (lb, url) = start_learnybox();
    *lb.transactions.lock().unwrap() = sales();
    let d = driven_relay(TestConfig { source_extra: api_table(&url, ""), store_url, ..Default::default() }).await;
    // The webhooks of TX-1 and TX-3 arrived; TX-2, TX-4 and TX-5 never did.
    for (id, tx, email) in [("evt_1", "TX-1", "ann@example.org"), ("evt_3", "TX-3", "cleo@example.org")] {
        assert!(matches!(
            d.accept(&webhook(id, "transaction.created", tx, email)).await,
            lbx_relay::ingest::Outcome::Stored { .. }
        ));
    }
    // The first list request meets an expired token (498: the refresh grant), a later one a 429.
    lb.list_script.lock().unwrap().extend([498, 429]);
    let clients = Clients::default();
    let report = run(&d, &clients, false).await;
    assert_eq!(report.state, RunState::Done, "{report:?}");
    let mut recovered: Vec<&str> = report.recovered.iter().map(|p| p.item_id.as_str()).collect();
    recovered.sort();
    assert_eq!(recovered, ["TX-2", "TX-4", "TX-5"]);
    assert_eq!((report.listed, report.received), (5, 2), "only the items of the window count");
    deliver_all(&d).await;
    let mut sent = crm_transactions(&d.crm);
    sent.sort();
    assert_eq!(sent, ["TX-1", "TX-2", "TX-3", "TX-4", "TX-5"], "each sale reached the CRM once");

    // The token flow as Learnybox's clients use it.
    let tokens = lb.requests("oauth/token/");
    assert!(tokens[0].3.contains("grant_type=access_token"));
    assert!(tokens[0].2.iter().any(|(k, v)| k == "x-api-key" && v == API_KEY));
    assert!(tokens.iter().any(|t| t.3.contains("grant_type=refresh_token")), "498 renews with the refresh grant");
    assert!(lb.requests("transactions/").iter().all(|r| query(&r.1, "limit").as_deref() == Some("2")));
    let offsets = lb.offsets();
    assert_eq!(offsets.first(), Some(&0));
    assert_eq!(offsets.last(), Some(&7), "paging goes on until data is empty: {offsets:?}");

    // A second run creates nothing; the recovered ones are known as recovered.
    let again = run(&d, &clients, false).await;
    assert!(again.recovered.is_empty(), "{again:?}");
    assert_eq!(again.received, 2);
    assert_eq!(again.run.as_ref().unwrap().recovered, 3);
    deliver_all(&d).await;
    assert_eq!(d.crm.count(), 5);

    // The webhook of a recovered sale, arriving late (Learnybox's retries), is a duplicate; a
    // refund of it is another event.
    assert_eq!(
        d.accept(&webhook("evt_4", "transaction.created", "TX-4", "dan@example.org")).await,
        lbx_relay::ingest::Outcome::Duplicate
    );
    assert!(matches!(
        d.accept(&webhook("evt_4r", "transaction.refunded", "TX-4", "dan@example.org")).await,
        lbx_relay::ingest::Outcome::Stored { .. }
    ));
    deliver_all(&d).await;
    assert_eq!(d.crm.count(), 6);

    // The recovered events are marked, and the proof is there per day.
    let view = reconcile::overview(&d.relay.ingest, 7).await.unwrap();
    let days = &view["sources"][0]["days"];
    let total = |k: &str| days.as_array().unwrap().iter().map(|d| d[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!((total("in_learnybox"), total("received"), total("recovered"), total("missing")), (5, 2, 3, 0));
    assert_eq!(view["sources"][0]["last_run"]["state"], "done");
    let recovered_event = d
        .relay
        .store
        .find_events(lbx_relay::store::EventFilter {
            key: Some("reconcile:transactions:TX-2".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .0;
    let detail = d.relay.store.event_detail(&recovered_event[0].id).await.unwrap().unwrap();
    assert_eq!(detail.origin.as_deref(), Some("reconcile"));
    assert_eq!(detail.event.kind, "transaction.created");
}

#[tokio::test]
async fn one_run_delivers_exactly_the_sales_no_webhook_brought_and_a_second_creates_nothing() {
    missing_sales_are_delivered_once(None).await;
}

#[tokio::test]
async fn one_run_delivers_exactly_the_sales_no_webhook_brought_on_postgres() {
    let Some(schema) = pg_schema("one_run_delivers_exactly_the_sales_no_webhook_brought_on_postgres").await else {
        return;
    };
    missing_sales_are_delivered_once(Some(schema.url())).await;
    schema.drop().await;
}

#[tokio::test]
async fn items_that_cannot_become_events_are_reported_and_never_delivered() {
    let (lb, url) = start_learnybox();
    *lb.transactions.lock().unwrap() = vec![
        json!({"date": rfc3339(DRIVEN_START_MS - 3_600_000), "email": "noid@example.org"}),
        json!({"id_transaction": "TX-9", "date": "someday", "email": "nodate@example.org"}),
        json!("not an object"),
        transaction("TX-10", "ok@example.org", 2),
    ];
    let d = driven_relay(TestConfig { source_extra: api_table(&url, ""), ..Default::default() }).await;
    let report = run(&d, &Clients::default(), false).await;
    let reasons: Vec<&str> = report.missing.iter().map(|m| m.reason.as_str()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("no id at /id_transaction")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("no readable date at /date")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("not a JSON object")), "{reasons:?}");
    assert!(reasons.iter().all(|r| !r.contains("@example.org")), "no personal data in reasons");
    deliver_all(&d).await;
    assert_eq!(crm_transactions(&d.crm), ["TX-10"]);
    // Reported per day with their reasons; a second run counts them once.
    run(&d, &Clients::default(), false).await;
    let view = reconcile::overview(&d.relay.ingest, 7).await.unwrap();
    let missing: u64 =
        view["sources"][0]["days"].as_array().unwrap().iter().map(|d| d["missing"].as_u64().unwrap()).sum();
    assert_eq!(missing, 3);
}

#[tokio::test]
async fn an_item_without_an_id_is_counted_on_the_day_learnybox_dated_it() {
    let (lb, url) = start_learnybox();
    // 30 hours before the run: always another calendar day than the run's, inside the lookback.
    let dated = DRIVEN_START_MS - 30 * 3_600_000;
    *lb.transactions.lock().unwrap() = vec![json!({"date": rfc3339(dated), "email": "noid@example.org"})];
    let d = driven_relay(TestConfig { source_extra: api_table(&url, ""), ..Default::default() }).await;
    run(&d, &Clients::default(), false).await;
    let view = reconcile::overview(&d.relay.ingest, 7).await.unwrap();
    let days: Vec<(String, u64)> = view["sources"][0]["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["day"].as_str().unwrap().to_string(), d["missing"].as_u64().unwrap()))
        .collect();
    assert_eq!(days, [(rfc3339(dated)[..10].to_string(), 1)], "not the run's day");
}

#[tokio::test]
async fn a_template_that_loses_the_id_is_a_mapping_error_not_a_delivery() {
    let (lb, url) = start_learnybox();
    *lb.transactions.lock().unwrap() = vec![transaction("TX-1", "ann@example.org", 2)];
    let d = driven_relay(TestConfig { source_extra: api_table(&url, ""), ..Default::default() }).await;
    std::fs::write(
        d.dir.path().join("tx.json.hbs"),
        r#"{"event": "{{type}}", "data": {"transaction": {"ref": "{{item_id}}"}}}"#,
    )
    .unwrap();
    // The same relay with a template that puts the id where `match` does not look.
    let text = std::fs::read_to_string(d.dir.path().join("routes.toml")).unwrap().replace(
        "[sources.learnybox.api.transactions]\n",
        "[sources.learnybox.api.transactions]\ntemplate = \"tx.json.hbs\"\n",
    );
    std::fs::write(d.dir.path().join("routes.toml"), &text).unwrap();
    let config = lbx_relay::config::Config::from_toml(&text, &d.dir.path().join("routes.toml"), &|_| None).unwrap();
    d.relay.replace_runtime(lbx_relay::compiled::Compiled::build(config).unwrap());
    let report = run(&d, &Clients::default(), false).await;
    assert!(report.recovered.is_empty());
    assert!(report.missing[0].reason.contains("does not carry the item id"), "{:?}", report.missing);
    deliver_all(&d).await;
    assert_eq!(d.crm.count(), 0);
}

#[tokio::test]
async fn a_run_interrupted_by_shutdown_resumes_from_its_page() {
    let (lb, url) = start_learnybox();
    *lb.transactions.lock().unwrap() = sales();
    let d = driven_relay(TestConfig { source_extra: api_table(&url, ""), ..Default::default() }).await;
    let stop = CancellationToken::new();
    *lb.cancel_at.lock().unwrap() = Some((2, stop.clone()));
    let clients = Clients::default();
    let opts = RunOptions { since: None, dry_run: false, trigger: "schedule" };
    let first = reconcile::run_source(&d.relay.ingest, &clients, "learnybox", &opts, &stop).await.unwrap();
    assert_eq!(first.state, RunState::Interrupted);
    assert_eq!(lb.offsets(), [0, 2]);
    // Another run while it is interrupted resumes it (the schedule does so at start).
    let second =
        reconcile::run_source(&d.relay.ingest, &clients, "learnybox", &opts, &CancellationToken::new()).await.unwrap();
    assert_eq!(second.state, RunState::Done);
    assert_eq!(second.run.as_ref().unwrap().id, first.run.as_ref().unwrap().id, "the same run, resumed");
    assert_eq!(lb.offsets(), [0, 2, 2, 4, 6, 7], "resumed at the page the stop cut off");
    assert_eq!(second.run.as_ref().unwrap().recovered, 5);
    deliver_all(&d).await;
    let mut sent = crm_transactions(&d.crm);
    sent.sort();
    assert_eq!(sent, ["TX-1", "TX-2", "TX-3", "TX-4", "TX-5"]);
}

#[tokio::test]
async fn a_run_under_way_is_not_started_twice() {
    let (lb, url) = start_learnybox();
    *lb.transactions.lock().unwrap() = sales();
    let d = driven_relay(TestConfig { source_extra: api_table(&url, ""), ..Default::default() }).await;
    let stop = CancellationToken::new();
    *lb.cancel_at.lock().unwrap() = Some((0, stop.clone()));
    // A run left "running" by a process that died (its heartbeat is recent).
    let opts = RunOptions { since: None, dry_run: false, trigger: "cli" };
    let r = reconcile::run_source(&d.relay.ingest, &Clients::default(), "learnybox", &opts, &stop).await.unwrap();
    assert_eq!(r.state, RunState::Interrupted);
    d.relay
        .store
        .reconcile_progress(&lbx_relay::store::reconcile::Run { state: RunState::Running, ..r.run.clone().unwrap() })
        .await
        .unwrap();
    let busy = run(&d, &Clients::default(), false).await;
    assert!(busy.busy);
    // Ten minutes without a heartbeat: taken over.
    d.advance_ms(11 * 60_000);
    let taken = run(&d, &Clients::default(), false).await;
    assert!(!taken.busy);
    assert_eq!(taken.state, RunState::Done);
}

#[tokio::test]
async fn the_api_key_and_tokens_never_show_in_errors_or_reports() {
    let (lb, url) = start_learnybox();
    *lb.transactions.lock().unwrap() = sales();
    *lb.echo_error.lock().unwrap() = true;
    let d = driven_relay(TestConfig { source_extra: api_table(&url, ""), ..Default::default() }).await;
    let report = run(&d, &Clients::default(), false).await;
    assert_eq!(report.state, RunState::Failed);
    let error = report.error.clone().unwrap();
    assert!(error.contains("answered 400"), "{error}");
    let view = reconcile::overview(&d.relay.ingest, 7).await.unwrap().to_string();
    for text in [error.as_str(), view.as_str(), &format!("{report:?}"), &serde_json::to_string(&report).unwrap()] {
        assert!(!text.contains(API_KEY), "{text}");
        assert!(!text.contains("access-token-"), "{text}");
    }
    let config = format!("{:?}", d.relay.runtime().config);
    assert!(!config.contains(API_KEY));
}

// Multi-threaded: the stand-in API serves while the test waits for the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_lists_what_would_be_created_and_changes_nothing() {
    let (lb, url) = start_learnybox();
    // The command runs on the system clock: items dated before now.
    *lb.transactions.lock().unwrap() = sales_at(crate::helpers::now_ms());
    let crm = FakeCrm::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_process_config(dir.path(), &TestConfig { source_extra: api_table(&url, ""), ..Default::default() }, &crm.url);
    let config = dir.path().join("routes.toml");
    let config = config.to_str().unwrap();
    let db = dir.path().join("relay.db");
    let (code, out, err) = run_cli(&["reconcile", "-c", config, "--dry-run"], None, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("would create transaction.created transactions TX-2"), "{out}");
    assert!(out.contains("5 item(s) in the window: 0 received by webhook, 5 would create"), "{out}");
    assert!(out.contains("fields of a transactions item:") && out.contains("id_transaction"), "{out}");
    assert!(!out.contains("bob@example.org"), "addresses are masked: {out}");
    assert!(!out.contains(API_KEY));
    assert_eq!(count_in(&db, "SELECT COUNT(*) FROM events"), 0);
    assert_eq!(count_in(&db, "SELECT COUNT(*) FROM reconcile_runs"), 0);
    // Then for real: the events wait in the store for the relay's workers.
    let (code, out, err) = run_cli(&["reconcile", "-c", config], None, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("recovered transaction.created transactions TX-5"), "{out}");
    assert_eq!(count_in(&db, "SELECT COUNT(*) FROM events WHERE origin = 'reconcile'"), 5);
    assert_eq!(count_in(&db, "SELECT COUNT(*) FROM deliveries WHERE status = 'pending'"), 5);
    let (code, out, _) = run_cli(&["reconcile", "-c", config], None, &[]);
    assert_eq!(code, 0);
    assert!(out.contains("0 received by webhook, 0 recovered"), "{out}");
    // A look-back past the retention is refused: purged events would be recovered again.
    let (code, _, err) = run_cli(&["reconcile", "-c", config, "--since", "300days"], None, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("store.retention"), "{err}");
    let (code, _, err) = run_cli(&["reconcile", "-c", config, "--since", "soon"], None, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("not a duration"), "{err}");
}

#[tokio::test]
async fn the_relay_reconciles_on_its_schedule_delivers_and_alerts() {
    let (lb, url) = start_learnybox();
    // Dated just before now: the relay runs on the system clock here.
    let now = crate::helpers::now_ms();
    *lb.transactions.lock().unwrap() = (1..=3)
        .map(|i| json!({"id_transaction": format!("TX-{i}"), "date": rfc3339(now - i * 3_600_000), "email": "a@example.org"}))
        .collect();
    let alerts = FakeCrm::start().await;
    let app = spawn_app_with(TestConfig {
        source_extra: api_table(&url, ""),
        server_extra: format!("\n[alerts]\nurl = \"{}/alert\"\ncheck_every = \"100ms\"\n", alerts.url),
        ..Default::default()
    })
    .await;
    wait_until(Duration::from_secs(20), "the run done", || async {
        count_in(&app.db_path(), "SELECT COUNT(*) FROM reconcile_runs WHERE state = 'done'") == 1
    })
    .await;
    wait_until(Duration::from_secs(20), "the three sales delivered", || async { app.crm.count() >= 3 }).await;
    wait_until(Duration::from_secs(20), "the recovery alerted", || async { alerts.count() >= 1 }).await;
    let alert = alerts.received()[0].json()["text"].as_str().unwrap().to_string();
    assert!(alert.contains("3 transaction.created") && alert.contains("never received by webhook"), "{alert}");
    let view: Value = app.admin_get("/api/reconcile").await.json().await.unwrap();
    assert_eq!(view["sources"][0]["last_run"]["recovered"], 3, "{view}");
    assert_eq!(view["sources"][0]["last_run"]["trigger"], "schedule");
    let metrics = app.admin_get("/metrics").await.text().await.unwrap();
    // The registry is the test process's: other tests count too.
    let recovered: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"lbx_reconcile_items_total{source="learnybox",outcome="recovered"} "#))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(recovered >= 3.0, "{metrics}");
    // Asking for a run while none is due works through the API too, and creates nothing new.
    let again: Value = app.admin_post("/api/reconcile").await.json().await.unwrap();
    assert_eq!(again["reports"][0]["recovered"].as_array().unwrap().len(), 0, "{again}");
    let bad = app.admin_post("/api/reconcile?dry-run=true").await;
    assert_eq!(bad.status(), 400, "a misspelt parameter is refused");
    app.stop().await;
}

fn problems_of(api: &str) -> String {
    let text = format!(
        "[store]\nretention = \"7days\"\n[sources.learnybox]\nsecret_keys = [\"k\"]\n{api}\n[[routes]]\nname = \"r\"\n\
         events = [\"*\"]\nurl = \"https://crm.example.com/x\"\ntemplate = \"t.json.hbs\"\n"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.json.hbs"), "{}").unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, &text).unwrap();
    match lbx_relay::compiled::Compiled::load(&path) {
        Ok(_) => String::new(),
        Err(p) => p.join("\n"),
    }
}

#[test]
fn mistakes_in_the_api_table_are_named_with_their_line() {
    let ok = "[sources.learnybox.api]\nurl = \"https://acme.learnybox.com/api/v2/\"\nkey = \"k\"\n\
              [sources.learnybox.api.transactions]\n";
    assert_eq!(problems_of(ok), "");
    for (api, expected) in [
        // A typo in a key is an unknown key, not a silent default.
        (ok.replace("key = ", "kye = "), "unknown field `kye`"),
        (
            ok.replace("[sources.learnybox.api.transactions]\n", "[sources.learnybox.api.transaction]\n"),
            "unknown field `transaction`",
        ),
        (format!("{ok}idd = \"/id\"\n"), "unknown field `idd`"),
        (ok.replace("[sources.learnybox.api.transactions]\n", ""), "no list to reconcile"),
        (ok.replace("https://acme.learnybox.com/api/v2/", "acme.learnybox.com"), "is not an http(s) URL"),
        (ok.replace("key = \"k\"", "key = \"\""), "key: is empty"),
        (format!("{ok}id = \"id_transaction\"\n"), "is not a JSON pointer"),
        (format!("{ok}template = \"tx.hbs\"\n"), "must be a .json.hbs file"),
        (format!("{ok}utc_offset = \"Europe/Paris\"\n"), "is not an offset"),
        (format!("{ok}path = \"/transactions/\"\n"), "a path below the API's url"),
        (ok.replace("key = \"k\"", "key = \"k\"\nlookback = \"30days\""), "reaches past store.retention"),
        (ok.replace("key = \"k\"", "key = \"k\"\nevery = \"10s\""), "must be at least 1m"),
        (ok.replace("key = \"k\"", "key = \"k\"\npage_size = 0"), "between 1 and 1000"),
        (ok.replace("key = \"k\"", "key = \"k\"\nrate_limit = \"fast\""), "is not a rate"),
        (ok.replace("key = \"k\"", "key = \"k\"\npage_size = 99999999999999999999"), "page_size"),
    ] {
        let problems = problems_of(&api);
        assert!(problems.contains(expected), "{api}\n→ {problems}");
        assert!(problems.contains("routes.toml:"), "the file is named: {problems}");
    }
    let problems = problems_of(&format!("{ok}template = \"missing.json.hbs\"\n"));
    assert!(
        problems.contains("missing.json.hbs (sources.learnybox.api.transactions.template): cannot read template"),
        "{problems}"
    );
}

#[test]
fn without_an_api_table_reconciliation_is_off_and_says_so() {
    let crm_url = "http://127.0.0.1:9";
    let dir = tempfile::tempdir().unwrap();
    write_process_config(dir.path(), &TestConfig::default(), crm_url);
    let config = dir.path().join("routes.toml");
    let (code, _, err) = run_cli(&["reconcile", "-c", config.to_str().unwrap()], None, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("no source has [sources.NAME.api]"), "{err}");
    let (code, _, err) = run_cli(&["reconcile", "-c", config.to_str().unwrap(), "--source", "learnybx"], None, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("\"learnybx\" has no [sources.learnybx.api]"), "{err}");
}

#[tokio::test]
async fn the_dashboard_shows_the_proof_per_day_and_marks_recovered_events() {
    let Some(mut page) = crate::dashboard::Page::launch().await else { return };
    let (lb, url) = start_learnybox();
    let now = crate::helpers::now_ms();
    *lb.transactions.lock().unwrap() = vec![
        json!({"id_transaction": "TX-1", "date": rfc3339(now - 3_600_000), "email": "a@example.org"}),
        json!({"date": rfc3339(now - 3_600_000), "email": "b@example.org"}),
    ];
    let app = spawn_app_with(TestConfig { source_extra: api_table(&url, ""), ..Default::default() }).await;
    wait_until(Duration::from_secs(20), "the run done", || async {
        count_in(&app.db_path(), "SELECT COUNT(*) FROM reconcile_runs WHERE state = 'done'") == 1
    })
    .await;
    wait_until(Duration::from_secs(20), "the sale delivered", || async { app.crm.count() == 1 }).await;
    page.goto(&format!("{}/", app.admin)).await;
    page.login(ADMIN_TOKEN).await;
    page.wait_for("document.getElementById('reconcile').rows.length === 1 && document.getElementById('reconcile').rows[0].cells.length === 6").await;
    let row: Vec<String> = serde_json::from_value(
        page.eval("[...document.getElementById('reconcile').rows[0].cells].map(c => c.textContent)").await,
    )
    .unwrap();
    assert_eq!(row[1..], ["learnybox", "2", "0", "1", "1"], "{row:?}");
    let why = page.eval("document.getElementById('reconcile').rows[0].cells[5].title").await;
    assert!(why.as_str().unwrap().contains("no id at /id_transaction"), "{why}");
    assert!(page.text_of("#rc_runs").await.contains("learnybox: last run"), "{}", page.text_of("#rc_runs").await);
    // The recovered event says where it came from.
    page.eval("document.querySelector('#events tr.clickable').click(); true").await;
    page.wait_for("document.getElementById('d_summary').textContent.includes(\"recovered from Learnybox's API\")")
        .await;
    app.stop().await;
}

#[tokio::test]
async fn a_relay_stopped_during_a_slow_page_stops_at_once_and_resumes_the_run_at_its_next_start() {
    let (lb, url) = start_learnybox();
    let now = crate::helpers::now_ms();
    *lb.transactions.lock().unwrap() = sales_at(now);
    *lb.delay.lock().unwrap() = Duration::from_secs(3600);
    let cfg = TestConfig { source_extra: api_table(&url, ""), ..Default::default() };
    let app = spawn_app_with(cfg.clone()).await;
    wait_until(Duration::from_secs(20), "the first page asked", || async { !lb.offsets().is_empty() }).await;
    // The page would take an hour: the stop does not wait for it.
    let (dir, crm) = app.stop().await;
    let db = dir.path().join("relay.db");
    let states: Vec<String> = rusqlite::Connection::open(&db)
        .unwrap()
        .prepare("SELECT state || ' ' || COALESCE(error, '') FROM reconcile_runs")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(states, ["interrupted "]);
    *lb.delay.lock().unwrap() = Duration::ZERO;
    let app = start_in(dir, crm, &cfg).await;
    wait_until(Duration::from_secs(20), "the run done", || async {
        count_in(&app.db_path(), "SELECT COUNT(*) FROM reconcile_runs WHERE state = 'done'") == 1
    })
    .await;
    wait_until(Duration::from_secs(20), "the five sales delivered", || async { app.crm.count() == 5 }).await;
    assert_eq!(count_in(&app.db_path(), "SELECT COUNT(*) FROM reconcile_runs"), 1, "the same run, resumed");
    assert_eq!(lb.offsets()[..2], [0, 0], "the unfinished page is asked again");
    app.stop().await;
}

#[test]
fn check_renders_each_reconciliation_template_and_says_where_a_recovered_sale_goes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TestConfig {
        source_extra: api_table("https://acme.learnybox.com/api/v2/", ""),
        events: r#"["transaction.*"]"#,
        ..Default::default()
    };
    write_process_config(dir.path(), &cfg, "http://127.0.0.1:9");
    let config = dir.path().join("routes.toml");
    let (code, out, err) = run_cli(&["check", "-c", config.to_str().unwrap()], None, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("sources.learnybox.api.transactions: a recovered transaction.created goes to crm"), "{out}");
    // A template that drops the id: refused by check (and by serve and reload).
    std::fs::write(dir.path().join("tx.json.hbs"), r#"{"event": "{{type}}", "data": {"ref": "{{item_id}}"}}"#).unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[sources.learnybox.api.transactions]\n",
        "[sources.learnybox.api.transactions]\ntemplate = \"tx.json.hbs\"\n",
    );
    std::fs::write(&config, text).unwrap();
    let (code, out, _) = run_cli(&["check", "-c", config.to_str().unwrap()], None, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not carry the item id at any of /data/transaction/id"), "{out}");
}

#[tokio::test]
async fn a_run_that_cannot_read_the_api_alerts_without_leaking_the_key() {
    let (lb, url) = start_learnybox();
    *lb.echo_error.lock().unwrap() = true;
    let alerts = FakeCrm::start().await;
    let app = spawn_app_with(TestConfig {
        source_extra: api_table(&url, ""),
        server_extra: format!(
            "\n[alerts]\nurl = \"{}/alert\"\ncheck_every = \"100ms\"\nformat = \"json\"\n",
            alerts.url
        ),
        ..Default::default()
    })
    .await;
    wait_until(Duration::from_secs(20), "the failure alerted", || async { alerts.count() >= 1 }).await;
    let alert = alerts.received()[0].json();
    assert_eq!(alert["kind"], "reconcile_failed", "{alert}");
    let text = alert["text"].as_str().unwrap();
    assert!(text.contains("did not check everything") && text.contains("answered 400"), "{text}");
    assert!(!text.contains(API_KEY) && !text.contains("access-token-"), "{text}");
    let view: Value = app.admin_get("/api/reconcile").await.json().await.unwrap();
    assert_eq!(view["sources"][0]["last_run"]["state"], "failed", "{view}");
    app.stop().await;
}

#[tokio::test]
async fn the_reconcile_endpoints_refuse_hostile_parameters_by_name() {
    let (lb, url) = start_learnybox();
    *lb.transactions.lock().unwrap() = Vec::new();
    let app = spawn_app_with(TestConfig { source_extra: api_table(&url, ""), ..Default::default() }).await;
    for (method, path, why) in [
        ("GET", "/api/reconcile?days=0", "between 1 and 400"),
        ("GET", "/api/reconcile?days=401", "between 1 and 400"),
        ("GET", "/api/reconcile?days=99999999999999", "number too large"),
        ("GET", "/api/reconcile?dayz=3", "unknown field"),
        ("POST", "/api/reconcile?since=soon", "not a duration"),
        ("POST", "/api/reconcile?since=30s", "between 1m and 366days"),
        ("POST", "/api/reconcile?since=300days", "store.retention"),
        ("POST", "/api/reconcile?source=learnybx", "has no [sources.learnybx.api]"),
        ("POST", "/api/reconcile?source=learnybox&dry-run=true", "unknown field"),
    ] {
        let req = if method == "GET" {
            app.client.get(format!("{}{path}", app.admin))
        } else {
            app.client.post(format!("{}{path}", app.admin))
        };
        let resp = req.bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{method} {path}");
        let text = resp.text().await.unwrap();
        assert!(text.contains(why), "{method} {path}: {text}");
    }
    assert_eq!(app.admin_get("/api/reconcile?days=400").await.status(), 200);
    app.stop().await;
}

#[test]
fn a_wrong_store_sync_is_refused() {
    let text = "[store]\nsync = \"fast\"\n[sources.s]\nsecret_keys = [\"k\"]\n";
    let err = lbx_relay::config::Config::from_toml(text, std::path::Path::new("routes.toml"), &|_| None)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("store.sync") && err.contains("\"fast\""), "{err}");
}
