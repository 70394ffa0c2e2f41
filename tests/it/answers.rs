//! "Delivered" means the CRM did it: `success` checks the answer (status, body, redirect
//! target), `throttle_on` answers pause the route without using up the schedule, `accept` entries
//! match a body text, and a URL placeholder that renders empty is never sent.

use lbx_relay::store::roles::*;
use lbx_relay::store::DeliveryFilter;

use crate::helpers::*;

async fn only_delivery(r: &DrivenRelay) -> lbx_relay::store::DeliveryRow {
    let rows = r.relay.store.list_deliveries(DeliveryFilter { limit: 10, ..DeliveryFilter::default() }).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows.into_iter().next().unwrap()
}

const SHEETS_SUCCESS: &str =
    r#"success = { status = [200, 302], body = '"ok":true', location = "script.googleusercontent.com" }"#;

fn sheets() -> TestConfig {
    TestConfig { schedule: vec!["1m"], route_extra: SHEETS_SUCCESS.into(), ..TestConfig::default() }
}

#[tokio::test]
async fn a_redirect_to_the_login_page_is_a_failed_attempt_naming_the_location() {
    let r = driven_relay(sheets()).await;
    r.crm.respond_full(302, &[("Location", "https://accounts.google.com/ServiceLogin?continue=x")], "");
    r.accept(&sample_events()[0]).await;
    assert_eq!(r.round().await, 1);
    let d = only_delivery(&r).await;
    assert_eq!(d.status, "failed", "not 'delivered': the row was never written");
    let error = d.last_error.unwrap();
    assert!(error.contains("success.location") && error.contains("accounts.google.com"), "{error}");
    assert!(error.contains("script.googleusercontent.com"), "{error}");
}

#[tokio::test]
async fn a_redirect_to_the_script_host_is_delivered() {
    let r = driven_relay(sheets()).await;
    let echo = "https://script.googleusercontent.com/macros/echo?user_content_key=abc";
    r.crm.respond_full(302, &[("Location", echo)], "");
    r.accept(&sample_events()[0]).await;
    r.round().await;
    assert_eq!(only_delivery(&r).await.status, "delivered");
}

#[tokio::test]
async fn a_200_without_the_expected_text_fails_and_one_with_it_is_delivered() {
    let r = driven_relay(sheets()).await;
    r.crm.respond_full(200, &[("Content-Type", "application/json")], r#"{"ok":false,"error":"no sheet"}"#);
    r.accept(&sample_events()[0]).await;
    r.round().await;
    let d = only_delivery(&r).await;
    assert_eq!(d.status, "failed");
    let error = d.last_error.unwrap();
    assert!(error.contains("success.body") && error.contains("no sheet"), "{error}");

    let r = driven_relay(sheets()).await;
    r.crm.respond_full(200, &[("Content-Type", "application/json")], r#"{"ok":true}"#);
    r.accept(&sample_events()[0]).await;
    r.round().await;
    assert_eq!(only_delivery(&r).await.status, "delivered");
}

#[tokio::test]
async fn a_2xx_outside_the_listed_statuses_is_a_failure_naming_the_status() {
    let r = driven_relay(sheets()).await;
    r.crm.respond_full(202, &[], r#"{"ok":true}"#);
    r.accept(&sample_events()[0]).await;
    r.round().await;
    let d = only_delivery(&r).await;
    assert_eq!(d.status, "failed");
    assert!(d.last_error.unwrap().contains("success.status: HTTP 202 is not one of [200, 302]"));
}

#[tokio::test]
async fn retry_on_still_applies_to_a_failed_success_check() {
    let cfg = TestConfig { route_extra: format!("{SHEETS_SUCCESS}\nretry_on = [302]"), ..sheets() };
    let r = driven_relay(cfg).await;
    r.crm.respond_full(302, &[("Location", "https://accounts.google.com/")], "");
    r.accept(&sample_events()[0]).await;
    r.round().await;
    let d = only_delivery(&r).await;
    assert_eq!(d.status, "pending", "retried on the schedule");
    r.advance_ms(70_000);
    r.round().await;
    assert_eq!(only_delivery(&r).await.status, "failed", "the next answer (a 200 without the text) fails the check");
}

const SALESFORCE_LIMIT: &str = r#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#;

/// The `throttle_on` line of the shipped Salesforce example, as the user runs it.
fn salesforce_throttle_on() -> String {
    let example = std::fs::read_to_string(format!("{}/examples/salesforce.toml", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let line = example.lines().find(|l| l.starts_with("throttle_on")).expect("the example sets throttle_on");
    line.split('#').next().unwrap().trim().to_string()
}

#[tokio::test]
async fn a_throttle_answer_pauses_the_route_for_an_hour_without_a_dead_letter() {
    let cfg = TestConfig { schedule: vec!["1m"], route_extra: salesforce_throttle_on(), ..TestConfig::default() };
    let r = driven_relay(cfg).await;
    // The 24-hour allocation stays used up for an hour: four answers 15 min apart, then it works.
    for _ in 0..4 {
        r.crm.respond_full(403, &[("Content-Type", "application/json")], SALESFORCE_LIMIT);
    }
    r.accept(&sample_events()[0]).await;
    const PAUSE: i64 = 15 * 60 * 1000;
    assert_eq!(r.round().await, 1);
    for n in 1..=4 {
        let d = only_delivery(&r).await;
        assert_eq!(d.status, "pending", "after {n} throttle answer(s): never failed");
        assert!(d.last_error.as_deref().unwrap_or_default().contains("throttle_on"), "{d:?}");
        r.advance_ms(PAUSE - 1);
        assert_eq!(r.round().await, 0, "paused for throttle_pause (15 min by default)");
        r.advance_ms(1);
        assert_eq!(r.round().await, 1, "tried again when the pause ends");
    }
    assert_eq!(r.elapsed_ms(), 4 * PAUSE);
    let d = only_delivery(&r).await;
    assert_eq!(d.status, "delivered", "an hour of throttling on a one-step schedule, no dead letter");
    assert_eq!(d.attempts, 5);
}

#[tokio::test]
async fn another_403_is_not_a_throttle_and_fails_at_once() {
    let cfg = TestConfig {
        schedule: vec!["1m"],
        route_extra: r#"throttle_on = [{ status = 403, body = "REQUEST_LIMIT_EXCEEDED" }]"#.into(),
        ..TestConfig::default()
    };
    let r = driven_relay(cfg).await;
    r.crm.respond_full(403, &[], r#"[{"errorCode":"INSUFFICIENT_ACCESS_OR_READONLY"}]"#);
    r.accept(&sample_events()[0]).await;
    r.round().await;
    assert_eq!(only_delivery(&r).await.status, "failed");
}

#[tokio::test]
async fn a_throttled_route_shows_paused_until_in_the_api() {
    let app = spawn_app_with(TestConfig {
        schedule: vec!["1m"],
        route_extra: "throttle_on = [{ status = 403, body = \"REQUEST_LIMIT_EXCEEDED\" }]\nthrottle_pause = \"2h\""
            .into(),
        ..TestConfig::default()
    })
    .await;
    app.crm.respond_full(403, &[], SALESFORCE_LIMIT);
    app.post_event(&sample_events()[0]).await;
    wait_until(std::time::Duration::from_secs(10), "one throttled attempt", || async {
        app.crm.count() == 1 && !app.deliveries("status=pending").await.is_empty()
    })
    .await;
    wait_until(std::time::Duration::from_secs(10), "the route listed as paused", || async {
        let v: serde_json::Value = app.admin_get("/api/routes").await.json().await.unwrap();
        v["routes"][0]["paused_until"].is_string()
    })
    .await;
    let v: serde_json::Value = app.admin_get("/api/routes").await.json().await.unwrap();
    let until = humantime::parse_rfc3339(v["routes"][0]["paused_until"].as_str().unwrap()).unwrap();
    let left = until.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(left > std::time::Duration::from_secs(7000) && left <= std::time::Duration::from_secs(7200), "{left:?}");
}

#[tokio::test]
async fn accept_takes_only_the_422_whose_body_says_the_email_is_taken() {
    let steps = r#"
[[routes.steps]]
name = "create"
url = "{crm}/api/contacts"
template = "crm.json.hbs"
accept = [{ status = 422, body = "This value is already used" }]

[[routes.steps]]
name = "search"
when = "{{#if (eq steps.create.status 422)}}true{{/if}}"
method = "GET"
url = "{crm}/api/contacts?email=x"

[[routes.steps]]
name = "update"
when = "{{#if (eq steps.create.status 422)}}true{{/if}}"
method = "PATCH"
url = "{crm}/api/contacts/{{steps.search.body.items.[0].id}}"
template = "crm.json.hbs"
"#;
    let cfg = TestConfig { schedule: vec!["1m"], steps: Some(steps.into()), ..TestConfig::default() };
    // Another 422 (an invalid field) is the real error: failed at once, shown as it is.
    let r = driven_relay(cfg.clone()).await;
    r.crm.respond_full(422, &[], r#"{"violations":[{"propertyPath":"locale","message":"This value is not valid."}]}"#);
    r.accept(&sample_events()[0]).await;
    r.round().await;
    let d = only_delivery(&r).await;
    assert_eq!(d.status, "failed");
    assert!(d.last_error.unwrap().contains("locale"));
    assert_eq!(r.crm.count(), 1, "no search, no update");

    // The e-mail is taken but the search finds nothing: no PATCH /api/contacts/ with an empty id.
    let r = driven_relay(cfg).await;
    r.crm.respond_full(
        422,
        &[],
        r#"{"violations":[{"propertyPath":"email","message":"This value is already used."}]}"#,
    );
    r.crm.respond_full(200, &[("Content-Type", "application/json")], r#"{"items":[]}"#);
    r.accept(&sample_events()[0]).await;
    r.round().await;
    let d = only_delivery(&r).await;
    assert_eq!(d.status, "failed");
    let error = d.last_error.unwrap();
    assert!(error.contains("step update") && error.contains("{{steps.search.body.items.[0].id}}"), "{error}");
    assert!(error.contains("rendered empty"), "{error}");
    let paths: Vec<String> = r.crm.received().iter().map(|x| format!("{} {}", x.method, x.path)).collect();
    assert_eq!(paths, ["POST /api/contacts", "GET /api/contacts?email=x"], "nothing sent with a hole in it");
}

/// `check` on the test config with `extra` added to the route: (exit code, output).
fn check_with(extra: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TestConfig { route_extra: extra.into(), ..TestConfig::default() };
    write_process_config(dir.path(), &cfg, "http://127.0.0.1:9");
    let path = dir.path().join("routes.toml");
    let (code, out, err) = run_cli(&["check", "-c", path.to_str().unwrap()], None, &[]);
    (code, format!("{out}{err}"))
}

#[test]
fn check_names_each_mistake_in_the_new_keys_with_its_line() {
    let ok = format!(
        "{SHEETS_SUCCESS}\nthrottle_on = [429, {{ status = 403, body = \"LIMIT\" }}]\nthrottle_pause = \"20m\""
    );
    let (code, out) = check_with(&ok);
    assert_eq!(code, 0, "{out}");
    for (extra, says) in [
        ("success = { statuss = [200] }", "unknown field `statuss`"),
        ("success = { status = [500] }", "500 is an error status"),
        ("success = { status = [200], body = \"\" }", "success.body"),
        ("success = { status = [200], location = \"x.test\" }", "location checks redirects"),
        ("success = { status = [302], location = \"https://x.test/\" }", "is not a host name"),
        ("throttle_on = [{ status = 403, bdy = \"LIMIT\" }]", "unknown field `bdy`"),
        ("throttle_on = [200]", "200 is not an error answer"),
        ("throttle_on = [70000]", "70000 is not an HTTP status"),
        ("accept = [{ status = 422, body = \"taken\", extra = 1 }]", "unknown field `extra`"),
        ("throttle_pause = \"soon\"", "throttle_pause"),
    ] {
        let (code, out) = check_with(extra);
        assert_eq!(code, 1, "{extra}: {out}");
        assert!(out.contains(says), "{extra}: {out}");
        assert!(out.contains("routes.toml:"), "{extra}: the file is named: {out}");
    }
    // Each problem names its line: the route's `success` is on the line after `headers`.
    let (_, out) = check_with("success = { status = [500] }");
    let line = out.lines().find(|l| l.contains("500 is an error status")).unwrap();
    let (_, after_file) = line.split_once("routes.toml:").unwrap();
    let n: usize = after_file.split(':').next().unwrap().parse().unwrap_or_else(|_| panic!("no line in {line}"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = TestConfig { route_extra: "success = { status = [500] }".into(), ..TestConfig::default() };
    write_process_config(dir.path(), &cfg, "http://127.0.0.1:9");
    let text = std::fs::read_to_string(dir.path().join("routes.toml")).unwrap();
    assert!(text.lines().nth(n - 1).unwrap().starts_with("success = "), "line {n} of\n{text}");
}
