//! The admin API as an operator uses it: inspecting events, fixing a key and reprocessing the
//! quarantine, reloading routes (and surviving a bad reload), purging, and the silence alert.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn an_event_is_shown_with_its_deliveries_and_every_attempt() {
    let app = spawn_app().await;
    app.crm.respond_with(&[503]);
    app.post_event(&sample_events()[0]).await;
    wait_until(Duration::from_secs(5), "delivered", || async { app.deliveries("status=delivered").await.len() == 1 })
        .await;
    let list: Value = app.admin_get("/api/events").await.json().await.unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["event"], "transaction.created");
    assert_eq!(items[0]["event_key"], "evt_00424242");
    let id = items[0]["id"].as_str().unwrap();
    let detail: Value = app.admin_get(&format!("/api/events/{id}")).await.json().await.unwrap();
    assert_eq!(detail["data"], sample_events()[0]);
    let d = &detail["deliveries"][0];
    assert_eq!(d["status"], "delivered");
    let log = d["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["status"], 503);
    assert_eq!(log[0]["outcome"], "retry");
    assert_eq!(log[1]["status"], 200);
    assert_eq!(log[1]["outcome"], "delivered");
    assert!(log[1]["duration_ms"].is_number());
    assert_eq!(app.admin_get("/api/events/nope").await.status(), 404);
}

#[tokio::test]
async fn a_quarantined_event_is_reprocessed_after_the_key_is_fixed_and_reloaded() {
    // The relay starts with the wrong key: the event is quarantined, answered 200.
    let app = spawn_app_with(TestConfig { secret: "the-wrong-key-the-wrong-key-1234", ..TestConfig::default() }).await;
    let sealed = seal(&sample_events()[11], SECRET);
    assert_eq!(app.post_hook(sealed.body, &[]).await.status(), 200);
    let q: Value = app.admin_get("/api/quarantine").await.json().await.unwrap();
    assert_eq!(q["items"].as_array().unwrap().len(), 1);
    assert!(q["items"][0]["reason"].as_str().unwrap().contains("no key"), "{q}");
    assert!(q["items"][0]["body_base64"].is_string());

    // Reprocessing with the same wrong key changes nothing.
    let r: Value = app.admin_post("/api/quarantine/reprocess").await.json().await.unwrap();
    assert_eq!(r["still_quarantined"], 1);

    // The operator fixes the key and reloads.
    let path = app.dir.path().join("routes.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace("the-wrong-key-the-wrong-key-1234", SECRET);
    std::fs::write(&path, text).unwrap();
    let resp = app.admin_post("/api/reload").await;
    assert_eq!(resp.status(), 200);
    let r: Value = app.admin_post("/api/quarantine/reprocess").await.json().await.unwrap();
    assert_eq!(r["reprocessed"], 1, "{r}");
    assert_eq!(r["still_quarantined"], 0);
    wait_until(Duration::from_secs(5), "delivered", || async { app.crm.count() == 1 }).await;
    assert_eq!(app.crm.received()[0].json()["data"], sample_events()[11]);
    let q: Value = app.admin_get("/api/quarantine").await.json().await.unwrap();
    assert!(q["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_refused_reload_keeps_the_running_routes_working() {
    let app = spawn_app().await;
    let path = app.dir.path().join("routes.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("events = [\"*\"]", "events = [\"*\"]\nurl_typo = 1")).unwrap();
    let resp = app.admin_post("/api/reload").await;
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert!(body["problems"][0].as_str().unwrap().contains("url_typo"), "{body}");
    std::fs::write(&path, good.replace("${TEST_CRM_KEY:-crm-secret-key}", "${UNSET_RELOAD_VAR}")).unwrap();
    let body: Value = app.admin_post("/api/reload").await.json().await.unwrap();
    assert!(body["problems"][0].as_str().unwrap().contains("UNSET_RELOAD_VAR"), "{body}");
    // The old routes still deliver.
    app.post_event(&sample_events()[2]).await;
    wait_until(Duration::from_secs(5), "delivered with the old config", || async { app.crm.count() == 1 }).await;
    assert_eq!(app.crm.received()[0].header("api-key"), Some("crm-secret-key"));
}

#[tokio::test]
async fn a_reload_changes_routes_without_a_restart() {
    let app = spawn_app().await;
    let path = app.dir.path().join("routes.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace("events = [\"*\"]", "events = [\"transaction.*\"]");
    std::fs::write(&path, text).unwrap();
    assert_eq!(app.admin_post("/api/reload").await.status(), 200);
    app.post_event(&sample_events()[12]).await; // contact.subscribed: no longer routed
    assert_eq!(app.count("SELECT COUNT(*) FROM events WHERE status = 'unrouted'"), 1);
}

#[tokio::test]
async fn purge_removes_delivered_events_past_retention_and_keeps_the_rest() {
    // The relay's clock moves only when told: retention passes without waiting for it.
    let clock = lbx_relay::clock::Clock::manual(DRIVEN_START_MS);
    let app = spawn_app_with(TestConfig { retention: "1h", clock: Some(clock.clone()), ..TestConfig::default() }).await;
    app.crm.respond_with(&[422]);
    app.post_event(&sample_events()[0]).await; // will fail: kept
    wait_until(Duration::from_secs(5), "failed", || async { app.deliveries("status=failed").await.len() == 1 }).await;
    app.post_event(&sample_events()[1]).await; // delivered: purged
    wait_until(Duration::from_secs(5), "delivered", || async { app.deliveries("status=delivered").await.len() == 1 })
        .await;
    let r: Value = app.admin_post("/api/purge").await.json().await.unwrap();
    assert_eq!(r["purged"], 0, "nothing is past its retention yet");
    clock.advance(Duration::from_secs(3600));
    let r: Value = app.admin_post("/api/purge").await.json().await.unwrap();
    assert_eq!(r["purged"], 0, "an event exactly as old as the retention is kept");
    clock.advance(Duration::from_millis(1));
    let r: Value = app.admin_post("/api/purge").await.json().await.unwrap();
    assert_eq!(r["purged"], 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM events"), 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM deliveries WHERE status = 'failed'"), 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM attempt_log WHERE outcome = 'delivered'"), 0);
}

#[tokio::test]
async fn a_silent_source_flips_its_metric_until_an_event_arrives() {
    // On a manual clock: once the event arrives the source stays heard until the test moves time,
    // so a late housekeeping tick cannot find it silent again before the metric shows 0.
    let clock = lbx_relay::clock::Clock::manual(DRIVEN_START_MS);
    let cfg =
        TestConfig { source_extra: "alert_after = \"150ms\"", clock: Some(clock.clone()), ..TestConfig::default() };
    let app = spawn_app_with(cfg).await;
    clock.advance(Duration::from_millis(151));
    let metrics =
        || async { app.client.get(format!("{}/metrics", app.admin)).send().await.unwrap().text().await.unwrap() };
    wait_until(Duration::from_secs(5), "silence alert", || async {
        metrics().await.contains("lbx_source_silent{source=\"learnybox\"} 1")
    })
    .await;
    app.post_event(&sample_events()[0]).await;
    wait_until(Duration::from_secs(5), "alert cleared", || async {
        metrics().await.contains("lbx_source_silent{source=\"learnybox\"} 0")
    })
    .await;
    let text = metrics().await;
    for series in [
        "lbx_quarantine_size",
        "lbx_oldest_pending_age_seconds",
        "lbx_delivery_attempts_total",
        "lbx_source_last_event_timestamp_seconds",
    ] {
        assert!(text.contains(series), "missing {series}");
    }
}

#[tokio::test]
async fn the_dashboard_is_a_static_page_and_its_data_needs_the_token() {
    let app = spawn_app().await;
    app.crm.respond_with(&[422]);
    app.post_event(&sample_events()[0]).await;
    wait_until(Duration::from_secs(5), "a dead letter", || async { app.deliveries("status=failed").await.len() == 1 })
        .await;
    let client = client();
    // The page and its assets carry no data and no token: they are served to anyone who can reach
    // the admin listener, locked to this origin by their CSP.
    for (path, kind) in [("/", "text/html"), ("/dashboard.js", "text/javascript"), ("/dashboard.css", "text/css")] {
        let resp = client.get(format!("{}{path}", app.admin)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with(kind), "{path}");
        let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_string();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        let body = resp.text().await.unwrap();
        assert!(!body.contains(ADMIN_TOKEN));
        if path == "/dashboard.js" {
            assert!(!body.contains("innerHTML"), "API values are written as text, never as HTML");
            for used in [
                "/api/stats",
                "/api/events?",
                "/api/routes",
                "/api/deliveries/retry",
                "/api/quarantine/reprocess",
                "/api/reload",
            ] {
                assert!(body.contains(used), "{used}");
            }
        }
    }
    let anonymous = client.get(format!("{}/api/stats", app.admin)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let stats: Value = app.admin_get("/api/stats").await.json().await.unwrap();
    assert_eq!(stats["failed"], 1);
    assert_eq!(stats["queue_depth"], 0);
    assert_eq!(stats["quarantined"], 0);
    assert_eq!(stats["routes"], serde_json::json!(["crm"]));
    // The gauges live in the process's one metrics recorder, which the other tests' relays in
    // this process set too: each /metrics refreshes them from this relay's store, and another
    // relay may write between that refresh and the rendering, so the answer is read again.
    wait_until(Duration::from_secs(10), "/metrics to show the dead letter", || async {
        app.admin_get("/metrics").await.text().await.unwrap().contains("lbx_dead_letters 1")
    })
    .await;
}

#[tokio::test]
async fn events_list_newest_first_on_request() {
    let app = spawn_app().await;
    for e in &sample_events()[..3] {
        assert_eq!(app.post_event(e).await.status(), 200);
    }
    let keys = |v: Value| -> Vec<String> {
        v["items"].as_array().unwrap().iter().map(|e| e["event_key"].as_str().unwrap().to_string()).collect()
    };
    let oldest = keys(app.admin_get("/api/events").await.json().await.unwrap());
    let newest = keys(app.admin_get("/api/events?order=desc").await.json().await.unwrap());
    assert_eq!(oldest, vec!["evt_00424242", "evt_00424243", "evt_00424244"]);
    assert_eq!(newest, vec!["evt_00424244", "evt_00424243", "evt_00424242"]);
    let page: Value = app.admin_get("/api/events?order=desc&limit=2").await.json().await.unwrap();
    let next = page["next"].as_str().unwrap().to_string();
    let rest = keys(app.admin_get(&format!("/api/events?order=desc&after={next}")).await.json().await.unwrap());
    assert_eq!(rest, vec!["evt_00424242"]);
    assert_eq!(app.admin_get("/api/events?order=sideways").await.status(), 400);
}

#[tokio::test]
async fn a_misspelt_bulk_retry_body_or_route_is_refused_and_replays_nothing() {
    let app = spawn_app_with(TestConfig { schedule: vec![], ..TestConfig::default() }).await;
    app.crm.always(422);
    app.post_event(&sample_events()[0]).await;
    wait_until(Duration::from_secs(10), "a dead letter", || async { app.deliveries("status=failed").await.len() == 1 })
        .await;
    let post = |body: &'static str| {
        app.client
            .post(format!("{}/api/deliveries/retry", app.admin))
            .bearer_auth(ADMIN_TOKEN)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    let resp = post(r#"{"dry-run": true}"#).await.unwrap();
    assert_eq!(resp.status(), 400);
    let text = resp.text().await.unwrap();
    assert!(text.contains("dry-run") && text.contains("nothing was retried"), "{text}");
    let resp = post(r#"{"route": "cmr", "dry_run": true}"#).await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("did you mean `crm`?"));
    assert_eq!(app.crm.count(), 1, "nothing was replayed");
    assert_eq!(app.deliveries("status=failed").await.len(), 1);
    let ok: serde_json::Value = post(r#"{"route": "crm", "dry_run": true}"#).await.unwrap().json().await.unwrap();
    assert_eq!(ok["would_retry"], 1);
}

#[tokio::test]
async fn out_of_range_admin_parameters_are_400_and_answers_are_not_cached() {
    let app = spawn_app().await;
    for q in [
        "since=9223372036854775807",
        "since=-9223372036854775808",
        "since=99999999999h",
        "step=9999999999999999s",
        "since=1h&step=1s",
    ] {
        let resp = app.admin_get(&format!("/api/stats/series?{q}")).await;
        assert_eq!(resp.status(), 400, "{q}");
    }
    assert_eq!(app.admin_get("/api/events?since=99999999999999999").await.status(), 400);
    let resp = app.admin_get("/api/stats").await;
    assert_eq!(resp.headers().get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));
    // Still serving: no admin worker died.
    assert_eq!(app.admin_get("/api/stats/series?since=2h&step=1h").await.status(), 200);
}

#[tokio::test]
async fn the_database_files_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app().await;
    app.post_event(&sample_events()[0]).await;
    for suffix in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", app.db_path().display()));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}: {mode:o}", file.display());
    }
}
