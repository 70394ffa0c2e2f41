//! The console's API for a bad morning: the dead-letter list and its filters, replay by ids with
//! its refusals, search by name and type prefix (and what store encryption leaves of it), one
//! quarantined body at a time, health per delivery, the next attempt of each attempt.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

fn contact(id: &str, kind: &str, email: &str, nom: &str) -> Value {
    json!({"event": kind, "id": id, "data": {"contact": {"email": email, "prenom": "Ada", "nom": nom}}})
}

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let r = app.admin_get(path).await;
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn post_json(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let r = app.client.post(format!("{}{path}", app.admin)).bearer_auth(ADMIN_TOKEN).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn failed_app(store_extra: &str) -> TestApp {
    let app =
        spawn_app_with(TestConfig { schedule: vec![], store_extra: store_extra.into(), ..TestConfig::default() }).await;
    app.crm.respond_full(422, &[], r#"{"message": "invalid email for Dupont"}"#);
    app.crm.respond_full(500, &[], "upstream timeout");
    app.crm.always(200);
    app.post_event(&contact("lb-1", "contact.created", "ada@example.org", "Dupont")).await;
    app.post_event(&contact("lb-2", "user.created", "bob@example.org", "Martin")).await;
    app.post_event(&contact("lb-3", "contact.updated", "cyd@example.org", "Durand")).await;
    wait_until(Duration::from_secs(10), "two failed, one delivered", || async {
        app.deliveries("status=failed").await.len() == 2 && app.deliveries("status=delivered").await.len() == 1
    })
    .await;
    app
}

#[tokio::test]
async fn dead_letters_are_listed_with_route_contact_type_and_error_and_filtered() {
    let app = failed_app("").await;
    let (status, page) = get(&app, "/api/deliveries/triage").await;
    assert_eq!(status, 200);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    for i in items {
        assert_eq!(i["route"], "crm");
        assert!(i["contact"].as_str().unwrap().ends_with("@example.org"));
        assert!(i["last_attempt_at"].as_str().unwrap().ends_with('Z'));
        assert!(i["learnybox_id"].as_str().unwrap().starts_with("lb-"));
    }
    // Error text, any case; type prefix; glob; a time window; a route that matches nothing.
    let (_, p) = get(&app, "/api/deliveries/triage?error=DUPONT").await;
    assert_eq!(p["items"].as_array().unwrap().len(), 1);
    assert_eq!(p["items"][0]["learnybox_id"], "lb-1");
    let (_, p) = get(&app, "/api/deliveries/triage?type=user").await;
    assert_eq!(p["items"][0]["type"], "user.created");
    assert_eq!(p["items"].as_array().unwrap().len(), 1);
    let (_, p) = get(&app, "/api/deliveries/triage?type=contact.*").await;
    assert_eq!(p["items"].as_array().unwrap().len(), 1);
    let (_, p) = get(&app, "/api/deliveries/triage?since=1h").await;
    assert_eq!(p["items"].as_array().unwrap().len(), 2);
    let (_, p) = get(&app, "/api/deliveries/triage?until=2000-01-01T00:00:00Z").await;
    assert_eq!(p["items"].as_array().unwrap().len(), 0);
    let (_, p) = get(&app, "/api/deliveries/triage?status=delivered").await;
    assert_eq!(p["items"][0]["learnybox_id"], "lb-3");
    // Paging by cursor.
    let (_, p1) = get(&app, "/api/deliveries/triage?limit=1").await;
    let next = p1["next"].as_str().unwrap().to_string();
    let (_, p2) = get(&app, &format!("/api/deliveries/triage?limit=1&after={next}")).await;
    assert_ne!(p1["items"][0]["id"], p2["items"][0]["id"]);
    assert!(p2["next"].is_null());
    // Hostile values: refused by name, never a 500.
    for bad in ["status=lost", "since=yesterday", "since=99999999999999999999", "limit=-1", "eror=x"] {
        let (status, body) = get(&app, &format!("/api/deliveries/triage?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // A dry run shows which deliveries a bulk replay would send, not only how many.
    let (_, dry) = post_json(&app, "/api/deliveries/retry", json!({"status": "failed", "dry_run": true})).await;
    assert_eq!(dry["would_retry"], 2);
    assert_eq!(dry["preview"].as_array().unwrap().len(), 2);
    assert!(dry["preview"][0]["last_error"].is_string());
    app.stop().await;
}

#[tokio::test]
async fn a_replay_by_ids_sends_exactly_those_and_refuses_what_is_ambiguous() {
    let app = failed_app("").await;
    let ids: Vec<String> =
        app.deliveries("status=failed").await.iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
    for (body, why) in [
        (json!({"ids": [ids[0]], "route": "crm"}), "cannot be combined"),
        (json!({"ids": []}), "give 1 to 1000"),
        (json!({"ids": vec!["x"; 1001]}), "give 1 to 1000"),
        (json!({"id": [ids[0]]}), "unknown field `id`"),
    ] {
        let (status, answer) = post_json(&app, "/api/deliveries/retry", body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert!(answer.to_string().contains(why), "{answer}");
    }
    assert_eq!(app.deliveries("status=failed").await.len(), 2, "nothing was retried");
    let (_, dry) = post_json(&app, "/api/deliveries/retry", json!({"ids": [ids[0], "nope"], "dry_run": true})).await;
    assert_eq!(dry["would_retry"], 1);
    assert_eq!(dry["missing"], json!(["nope"]));
    let (status, done) = post_json(&app, "/api/deliveries/retry", json!({"ids": [ids[0]]})).await;
    assert_eq!(status, 200);
    assert_eq!(done["retried"], 1);
    wait_until(Duration::from_secs(10), "replayed", || async { app.deliveries("status=failed").await.len() == 1 })
        .await;
    assert_eq!(app.deliveries("status=failed").await[0]["id"].as_str().unwrap(), ids[1], "the other one stays");
    // A delivery opens its event.
    let (_, d) = get(&app, &format!("/api/deliveries/{}", ids[1])).await;
    assert!(d["event_id"].is_string());
    assert_eq!(get(&app, "/api/deliveries/nope").await.0, 404);
    app.stop().await;
}

async fn search(app: &TestApp, q: &str) -> Vec<String> {
    let (_, p) = get(app, &format!("/api/events?q={q}")).await;
    p["items"].as_array().unwrap().iter().map(|e| e["learnybox_id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn search_finds_a_name_an_address_or_a_type_by_prefix_in_any_case() {
    let app = failed_app("").await;
    assert_eq!(search(&app, "dupont").await, ["lb-1"]);
    assert_eq!(search(&app, "DUR").await, ["lb-3"], "a prefix, any case");
    assert_eq!(search(&app, "bob%40").await, ["lb-2"], "an e-mail prefix");
    assert_eq!(search(&app, "contact").await, ["lb-1", "lb-3"], "a type prefix");
    assert!(search(&app, "upont").await.is_empty(), "a prefix, not a substring");
    assert!(search(&app, "%25").await.is_empty(), "LIKE wildcards are taken literally");
    assert!(search(&app, "_").await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn with_store_encryption_search_finds_types_only_and_says_nothing_wrong() {
    let app = failed_app("encryption_key = \"QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=\"").await;
    assert_eq!(search(&app, "contact").await, ["lb-1", "lb-3"]);
    assert!(search(&app, "dupont").await.is_empty(), "names are sealed");
    app.stop().await;
}

#[tokio::test]
async fn search_by_name_works_on_postgres_too() {
    let Some(schema) = pg_schema("search_by_name_works_on_postgres_too").await else { return };
    let app = spawn_app_with(TestConfig { store_url: Some(schema.url()), ..TestConfig::default() }).await;
    app.post_event(&contact("lb-1", "contact.created", "ada@example.org", "Dupont")).await;
    app.post_event(&contact("lb-2", "user.created", "bob@example.org", "Martin")).await;
    assert_eq!(search(&app, "DUPONT").await, ["lb-1"]);
    assert_eq!(search(&app, "user").await, ["lb-2"]);
    assert_eq!(search(&app, "bob").await, ["lb-2"]);
    app.stop().await;
    schema.drop().await;
}

#[tokio::test]
async fn health_counts_deliveries_and_each_attempt_says_when_the_next_one_is() {
    let app = spawn_app_with(TestConfig { schedule: vec!["50ms", "50ms"], ..TestConfig::default() }).await;
    app.crm.respond_with(&[503]);
    app.post_event(&contact("lb-1", "contact.created", "ada@example.org", "Dupont")).await;
    wait_until(Duration::from_secs(10), "delivered", || async { app.deliveries("status=delivered").await.len() == 1 })
        .await;
    let (_, routes) = get(&app, "/api/routes").await;
    let crm = &routes["routes"][0];
    assert_eq!(crm["delivered_rate_24h"], 1.0, "a retry that then succeeded is a delivery: {crm}");
    assert_eq!(crm["deliveries_24h"], json!({"delivered": 1, "failed": 0, "pending": 0, "retrying": 0}));
    assert!(crm["success_rate_24h"].as_f64().unwrap() < 1.0, "per attempt, the retry shows");
    let (_, list) = get(&app, "/api/events?id=lb-1").await;
    let (_, detail) = get(&app, &format!("/api/events/{}", list["items"][0]["id"].as_str().unwrap())).await;
    assert_eq!(detail["status"], "delivered", "the same status as the list");
    assert_eq!(detail["origin"], "webhook");
    let log = detail["deliveries"][0]["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["next_attempt_at"], log[1]["started_at"]);
    assert!(log[1]["next_attempt_at"].is_null(), "delivered: no next attempt");
    app.stop().await;
}

#[tokio::test]
async fn one_quarantined_body_is_viewed_reprocessed_or_dropped() {
    let app = spawn_app().await;
    for body in ["{\"iv\":\"x\",\"value\":\"y\"}", "not even json", "{\"data\":\"zz\"}"] {
        let r = app.client.post(format!("{}/hooks/learnybox", app.public)).body(body).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let (_, list) = get(&app, "/api/quarantine").await;
    let ids: Vec<i64> = list["items"].as_array().unwrap().iter().map(|i| i["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    let (status, one) = get(&app, &format!("/api/quarantine/{}", ids[1])).await;
    assert_eq!(status, 200);
    assert_eq!(one["body_text"], "not even json");
    assert!(one["reason"].is_string());
    let (_, again) = post_json(&app, &format!("/api/quarantine/{}/reprocess", ids[1]), json!(null)).await;
    assert_eq!(again["outcome"], "still_quarantined");
    let r = app
        .client
        .delete(format!("{}/api/quarantine/{}", app.admin, ids[1]))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(get(&app, &format!("/api/quarantine/{}", ids[1])).await.0, 404);
    assert_eq!(get(&app, "/api/quarantine/abc").await.0, 404);
    assert_eq!(get(&app, "/api/quarantine").await.1["items"].as_array().unwrap().len(), 2, "the others stay");
    let r = app.client.delete(format!("{}/api/quarantine", app.admin)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["dropped"], 2);
    assert_eq!(get(&app, "/api/quarantine").await.1["items"].as_array().unwrap().len(), 0);
    // The admin token is needed for each of them.
    let r = app.client.delete(format!("{}/api/quarantine", app.admin)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    app.stop().await;
}
