//! Delivery behaviour against a CRM that fails: retries spaced by the schedule, permanent
//! failures listed as dead letters and replayed, exhausted schedules, request headers.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;
use lbx_relay::store::roles::*;

/// The stored time of the one delivery's next attempt, in ms since the driven clock started.
fn next_attempt_ms(r: &DrivenRelay) -> i64 {
    r.count("SELECT next_attempt_at FROM deliveries") - DRIVEN_START_MS
}

#[tokio::test]
async fn a_crm_failing_500_then_503_gets_three_attempts_spaced_by_the_schedule() {
    // The relay's clock moves only when the test moves it: each retry is checked to the
    // millisecond, without waiting for it.
    let r = driven_relay(TestConfig { schedule: vec!["1m", "5m", "1h"], ..TestConfig::default() }).await;
    r.crm.respond_with(&[500, 503]);
    assert!(matches!(r.accept(&sample_events()[0]).await, lbx_relay::ingest::Outcome::Stored { deliveries: 1, .. }));
    assert_eq!(r.round().await, 1, "the first attempt is due at once");

    // The schedule with ±10 % jitter, counted from the failed attempt: 1 min, then 5 min.
    let mut gaps = Vec::new();
    for (n, (low, high)) in [(54_000, 66_000), (270_000, 330_000)].into_iter().enumerate() {
        let failed_at = r.elapsed_ms();
        let due = next_attempt_ms(&r);
        let gap = due - failed_at;
        assert!((low..=high).contains(&gap), "retry {} is due {gap} ms after the failure", n + 1);
        r.advance_ms(gap - 1);
        assert_eq!(r.round().await, 0, "retry {} is not sent a millisecond early", n + 1);
        assert_eq!(r.crm.count(), n + 1);
        r.advance_ms(1);
        assert_eq!(r.round().await, 1, "retry {} is sent when due", n + 1);
        gaps.push(gap);
    }
    assert!(gaps[1] > gaps[0]);
    assert_eq!(r.count("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'"), 1);
    assert_eq!(r.count("SELECT COUNT(*) FROM deliveries WHERE next_attempt_at IS NOT NULL"), 0, "nothing more is due");

    let got = r.crm.received();
    assert_eq!(got.len(), 3);
    // One idempotency key for every attempt of the delivery, and our user agent.
    let key = got[0].header("idempotency-key").unwrap().to_string();
    assert!(got.iter().all(|r| r.header("idempotency-key") == Some(key.as_str())));
    assert!(got[0].header("user-agent").unwrap().starts_with("lbx-relay/"));
    assert_eq!(got[0].header("api-key"), Some("crm-secret-key"));
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].path, "/contacts");
    let rows = r
        .relay
        .store
        .list_deliveries(lbx_relay::store::DeliveryFilter {
            status: Some("delivered".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rows[0].id, key);
    assert_eq!(rows[0].attempts, 3);
    assert_eq!(rows[0].last_status, Some(200));
    assert_eq!(r.count("SELECT COUNT(*) FROM attempt_log"), 3);
    // Each attempt's start is recorded on the relay's clock.
    assert_eq!(r.count("SELECT MIN(started_at) FROM attempt_log"), DRIVEN_START_MS);
}

#[tokio::test]
async fn a_429_with_retry_after_pauses_the_route_to_the_millisecond_and_uses_no_retry() {
    let r = driven_relay(TestConfig { schedule: vec!["1m"], ..TestConfig::default() }).await;
    r.crm.respond_with(&[429]);
    r.crm.retry_after("120");
    r.accept(&sample_events()[0]).await;
    assert_eq!(r.round().await, 1);
    // The route is paused: an event that arrives meanwhile waits with the throttled one.
    r.accept(&sample_events()[1]).await;
    r.advance_ms(119_999);
    assert_eq!(r.round().await, 0, "the route stays paused until Retry-After has passed");
    assert_eq!(r.crm.count(), 1);
    r.advance_ms(1);
    assert_eq!(r.round().await, 2, "both are sent when the pause ends");
    assert_eq!(r.count("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'"), 2);
    // Throttling used no step of the one-step schedule: the delivery was not failed.
    assert_eq!(r.count("SELECT COUNT(*) FROM deliveries WHERE status = 'failed'"), 0);
}

#[tokio::test]
async fn a_422_is_not_retried_is_listed_as_failed_and_can_be_replayed() {
    // On a relay clock far from the system's: a replay is due at the relay's "now", not the
    // store's wall clock, or it would wait years.
    let clock = lbx_relay::clock::Clock::manual(DRIVEN_START_MS);
    let app = spawn_app_with(TestConfig { clock: Some(clock), ..TestConfig::default() }).await;
    app.crm.respond_with(&[422]);
    app.post_event(&sample_events()[2]).await;
    wait_until(Duration::from_secs(5), "a failed delivery", || async {
        !app.deliveries("status=failed").await.is_empty()
    })
    .await;
    // Nothing is left to send: the delivery is failed for good, with no next attempt scheduled.
    assert_eq!(app.count("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'"), 0);
    assert_eq!(app.crm.count(), 1, "a 422 is not retried");
    let failed = app.deliveries("status=failed&route=crm").await;
    assert_eq!(failed.len(), 1);
    let d = &failed[0];
    for key in ["id", "event_id", "route", "status", "attempts", "last_status", "last_error", "next_attempt_at"] {
        assert!(d.get(key).is_some(), "{key} missing from {d}");
    }
    assert_eq!(d["last_status"], 422);
    assert!(d["last_error"].as_str().unwrap().contains("422"));

    let id = d["id"].as_str().unwrap();
    let resp = app.admin_post(&format!("/api/deliveries/{id}/retry")).await;
    assert_eq!(resp.status(), 200);
    wait_until(Duration::from_secs(5), "replayed delivery", || async { app.crm.count() == 2 }).await;
    wait_until(Duration::from_secs(5), "delivered", || async { app.deliveries("status=delivered").await.len() == 1 })
        .await;
    assert_eq!(app.crm.received()[1].header("idempotency-key"), Some(id));
    assert!(app.deliveries("status=failed").await.is_empty());
    assert_eq!(app.admin_post("/api/deliveries/does-not-exist/retry").await.status(), 404);
}

#[tokio::test]
async fn an_exhausted_schedule_leaves_the_delivery_failed_and_bulk_retry_revives_it() {
    let app = spawn_app().await; // schedule: 50ms, 100ms → three attempts in all
    app.crm.always(500);
    app.post_event(&sample_events()[4]).await;
    app.post_event(&sample_events()[6]).await;
    wait_until(Duration::from_secs(5), "two failed deliveries", || async {
        app.deliveries("status=failed").await.len() == 2
    })
    .await;
    assert_eq!(app.crm.count(), 6);
    let d = &app.deliveries("status=failed").await[0];
    assert_eq!(d["attempts"], 3);
    assert_eq!(d["last_status"], 500);
    assert_eq!(d["next_attempt_at"], Value::Null);

    app.crm.always(200);
    let resp: Value = app.admin_post("/api/deliveries/retry?status=failed&route=crm").await.json().await.unwrap();
    assert_eq!(resp["retried"], 2);
    wait_until(Duration::from_secs(5), "both delivered", || async {
        app.deliveries("status=delivered").await.len() == 2
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_crm_is_retried_like_a_5xx() {
    let app = spawn_app_with(TestConfig { schedule: vec!["50ms"], ..TestConfig::default() }).await;
    // Point the route at a closed port by reloading a config whose URL has nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let text =
        TestConfig { schedule: vec!["50ms"], ..TestConfig::default() }.toml(&dead_url, "127.0.0.1:0", "127.0.0.1:0");
    let path = app.dir.path().join("routes.toml");
    std::fs::write(&path, text).unwrap();
    app.relay.replace_runtime(lbx_relay::compiled::Compiled::load(&path).unwrap());
    app.post_event(&sample_events()[7]).await;
    wait_until(Duration::from_secs(5), "failed after retries", || async {
        app.deliveries("status=failed").await.len() == 1
    })
    .await;
    let d = &app.deliveries("status=failed").await[0];
    assert_eq!(d["attempts"], 2);
    assert_eq!(d["last_status"], Value::Null);
    assert!(d["last_error"].as_str().unwrap().contains("connection failed"), "{d}");
    assert!(!d["last_error"].as_str().unwrap().contains(&dead_url), "no URL in errors");
}

#[tokio::test]
async fn a_template_that_renders_invalid_json_fails_at_once_and_a_fixed_template_repairs_it() {
    let app = spawn_app_with(TestConfig {
        template: r#"{"amount": {{data.data.transaction.amount}} }"#,
        ..TestConfig::default()
    })
    .await;
    // A contact event has no transaction: the body is `{"amount":  }`.
    app.post_event(&sample_events()[12]).await;
    wait_until(Duration::from_secs(5), "failed", || async { app.deliveries("status=failed").await.len() == 1 }).await;
    assert_eq!(app.crm.count(), 0, "nothing invalid was sent");
    let d = &app.deliveries("status=failed").await[0];
    assert!(d["last_error"].as_str().unwrap().contains("not valid JSON"), "{d}");
    // Fix the template, reload, replay: the template is rendered at send time.
    std::fs::write(app.dir.path().join("crm.json.hbs"), r#"{"amount": {{default data.data.transaction.amount 0}} }"#)
        .unwrap();
    app.relay.replace_runtime(lbx_relay::compiled::Compiled::load(&app.dir.path().join("routes.toml")).unwrap());
    app.admin_post("/api/deliveries/retry?status=failed").await;
    wait_until(Duration::from_secs(5), "delivered after the fix", || async { app.crm.count() == 1 }).await;
    assert_eq!(app.crm.received()[0].json()["amount"], 0);
}

#[tokio::test]
async fn deliveries_are_paged_with_a_cursor() {
    let app = spawn_app().await;
    app.crm.always(422);
    for e in sample_events().iter().take(5) {
        app.post_event(e).await;
    }
    wait_until(Duration::from_secs(5), "five failed", || async { app.deliveries("status=failed").await.len() == 5 })
        .await;
    let page1: Value = app.admin_get("/api/deliveries?status=failed&limit=2").await.json().await.unwrap();
    assert_eq!(page1["items"].as_array().unwrap().len(), 2);
    let next = page1["next"].as_str().unwrap();
    let page2: Value =
        app.admin_get(&format!("/api/deliveries?status=failed&limit=2&after={next}")).await.json().await.unwrap();
    assert_eq!(page2["items"].as_array().unwrap().len(), 2);
    assert_ne!(page1["items"][0]["id"], page2["items"][0]["id"]);
    let page3: Value = app
        .admin_get(&format!("/api/deliveries?status=failed&limit=2&after={}", page2["next"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page3["items"].as_array().unwrap().len(), 1);
    assert_eq!(page3["next"], Value::Null);
}

#[tokio::test]
async fn a_body_that_breaks_its_schema_fails_before_the_crm_is_called_naming_the_field() {
    let schema = format!("{}/contracts/hubspot/contacts.batch_upsert.json", env!("CARGO_MANIFEST_DIR"));
    let app = spawn_app_with(TestConfig { route_extra: format!("schema = {schema:?}"), ..TestConfig::default() }).await;
    app.post_event(&sample_events()[0]).await;
    wait_until(Duration::from_secs(5), "a failed delivery", || async {
        !app.deliveries("status=failed").await.is_empty()
    })
    .await;
    let d = &app.deliveries("status=failed").await[0];
    let error = d["last_error"].as_str().unwrap();
    assert!(
        error.contains("does not match the schema") && error.contains("\"inputs\" is a required property"),
        "{error}"
    );
    assert_eq!(d["attempts"], 1);
    assert_eq!(app.crm.count(), 0, "the failure is decided before sending: the CRM never saw the body");
}

#[tokio::test]
async fn retry_on_keeps_an_answer_the_route_names_on_the_retry_schedule() {
    let app = spawn_app_with(TestConfig {
        schedule: vec!["100ms", "100ms"],
        route_extra: "retry_on = [403]".into(),
        ..TestConfig::default()
    })
    .await;
    app.crm.respond_with(&[403, 403]);
    app.post_event(&sample_events()[0]).await;
    wait_until(Duration::from_secs(5), "delivered after two 403s", || async {
        !app.deliveries("status=delivered").await.is_empty()
    })
    .await;
    assert_eq!(app.crm.received().iter().map(|r| r.status).collect::<Vec<_>>(), vec![403, 403, 200]);
}

/// The name and nice value of each thread of process `pid` (Linux: /proc), its main thread first.
fn threads_nice(pid: u32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let (Ok(comm), Ok(stat)) =
            (std::fs::read_to_string(dir.join("comm")), std::fs::read_to_string(dir.join("stat")))
        else {
            continue; // the thread ended meanwhile
        };
        // After "pid (comm) ", the fields start at the state (field 3); nice is field 19.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let nice: i32 = rest.split(' ').nth(16).unwrap().parse().unwrap();
        let main = dir.file_name().is_some_and(|t| t.to_string_lossy() == pid.to_string());
        out.insert(if main { 0 } else { out.len() }, (comm.trim().to_string(), nice));
    }
    out
}

/// `[delivery] nice`: the threads that ran deliveries sit that many steps below the relay's own
/// CPU priority; the public and admin listeners' threads and the SQLite writer keep it, so a
/// burst is acknowledged before it is forwarded. `nice = 0` leaves every thread where it was.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn deliveries_run_below_the_listeners_and_the_writer_in_cpu_priority() {
    for nice in [7, 0] {
        let dir = tempfile::tempdir().unwrap();
        let crm = FakeCrm::start().await;
        let cfg = TestConfig { delivery_extra: format!("nice = {nice}"), ..TestConfig::default() };
        let (public, admin) = write_process_config(dir.path(), &cfg, &crm.url);
        let mut relay = start_process(dir.path(), &[], std::process::Stdio::null());
        wait_ready(&admin).await;
        let client = client();
        for i in 0..40 {
            let e = serde_json::json!({"event": "contact.subscribed", "id": format!("nice-{i}"), "data": {"n": i}});
            let resp = client
                .post(format!("http://{public}/hooks/learnybox"))
                .body(seal(&e, SECRET).body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
        wait_until(Duration::from_secs(20), "40 deliveries", || async { crm.count() >= 40 }).await;

        let threads = threads_nice(relay.id());
        let own = threads.first().map(|(_, n)| *n).unwrap();
        let lowered = (own + nice).min(19);
        let of =
            |prefix: &str| threads.iter().filter(|(c, _)| c.starts_with(prefix)).map(|(_, n)| *n).collect::<Vec<_>>();
        let (workers, writer) = (of("actix-server w"), of("lbx-sqlite-writ"));
        assert!(workers.len() >= 2, "the public and admin listeners' workers: {threads:?}");
        assert!(workers.iter().all(|n| *n == own), "listener threads at {own}: {threads:?}");
        assert_eq!(writer, vec![own], "the SQLite writer at {own}: {threads:?}");
        let runtime = of("tokio-r");
        assert!(runtime.contains(&lowered), "a thread that ran deliveries is at {lowered}: {threads:?}");
        assert!(threads.iter().all(|(_, n)| *n == own || *n == lowered), "{threads:?}");
        relay.kill().unwrap();
        relay.wait().unwrap();
    }
}
