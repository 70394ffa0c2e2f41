//! The step runner on its own: `steps::run` needs only a store, an HTTP sender and the token cache
//! (its `SendContext`), not a running relay. A two-step route against a loopback CRM: the second
//! step sees the first one's answer, and a retry resumes after the step that was done.

use crate::helpers::now_ms;
use lbx_relay::config::{Config, RouteConfig};
use lbx_relay::delivery::attempt::Verdict;
use lbx_relay::delivery::oauth::Tokens;
use lbx_relay::delivery::send::HttpSender;
use lbx_relay::delivery::steps::{self, AttemptInput, SendContext};
use lbx_relay::event::Event;
use lbx_relay::store::{sqlite::SqliteStore, Backend, Store};
use lbx_relay::templates::Templates;
use serde_json::json;

use crate::helpers::*;

/// One attempt of delivery `d1` (no pacing gate).
fn input<'a>(route: &'a RouteConfig, event: &'a mut Event, state: Option<&'a str>) -> AttemptInput<'a> {
    AttemptInput {
        route,
        event,
        delivery_id: "d1",
        lease_token: "t1",
        state,
        gate: None,
        mask: &|t: &str| t.to_string(),
    }
}

#[tokio::test]
async fn two_steps_run_in_order_and_a_retry_resumes_after_the_step_that_was_done() {
    let crm = FakeCrm::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.json.hbs"), r#"{"email": "{{data.email}}"}"#).unwrap();
    let toml = format!(
        r#"
[sources.lbx]
secret_keys = ["{SECRET}"]
[[routes]]
name = "two"
events = ["*"]
[[routes.steps]]
name = "first"
url = "{crm}/first"
template = "b.json.hbs"
[[routes.steps]]
name = "second"
url = "{crm}/second/{{{{steps.first.status}}}}"
template = "b.json.hbs"
"#,
        crm = crm.url
    );
    let config = Config::from_toml(&toml, &dir.path().join("routes.toml"), &|_| None).unwrap();
    let templates = Templates::compile(&config).unwrap();
    let store = Store::from_backend(Backend::Sqlite(SqliteStore::open(&dir.path().join("t.db")).unwrap()));
    let (sender, tokens) =
        (HttpSender::new(lbx_relay::clock::Clock::system()), Tokens::new(lbx_relay::clock::Clock::system()));
    let cx = SendContext { store: &store, sender: &sender, tokens: &tokens };
    let mut event = Event {
        id: "relay-1".into(),
        source: "lbx".into(),
        kind: "contact.created".into(),
        key: "lb-1".into(),
        received_at: now_ms(),
        data: json!({"email": "a@example.org"}),
    };
    let route = &config.routes[0];

    // The second step fails: the first one's answer is kept for the next attempt.
    crm.respond_with(&[200, 503]);
    let out = steps::run(cx, &templates, input(route, &mut event, None)).await;
    assert!(matches!(out.result.verdict, Verdict::Retry { .. }), "{:?}", out.result.verdict);
    let state = out.state.expect("multi-step progress");
    assert!(state.contains("\"first\"") && !state.contains("\"second\""), "{state}");

    // The next attempt starts at the second step, which sees the first one's status.
    let out = steps::run(cx, &templates, input(route, &mut event, Some(&state))).await;
    assert!(matches!(out.result.verdict, Verdict::Delivered), "{:?}", out.result.verdict);
    let paths: Vec<String> = crm.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/first", "/second/200", "/second/200"], "the first step was not sent again");
}
