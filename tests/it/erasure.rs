//! Erasure through the API and the CLI erases only its contact: whole addresses, never a
//! substring or a domain, with a dry run that lists what would go; on SQLite and PostgreSQL.

use std::time::Duration;

use crate::helpers::*;

fn contact(id: &str, email: &str) -> serde_json::Value {
    serde_json::json!({"event": "contact.created", "id": id, "data": {"contact": {"email": email, "prenom": "X"}}})
}

async fn events_left(app: &TestApp) -> Vec<String> {
    let v: serde_json::Value = app.admin_get("/api/events?limit=100").await.json().await.unwrap();
    let mut ids: Vec<String> =
        v["items"].as_array().unwrap().iter().map(|e| e["learnybox_id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

async fn erasing_ann_leaves_joann_and_marie_ann(store_url: Option<String>) {
    let app = spawn_app_with(TestConfig { schedule: vec!["1h"], store_url, ..TestConfig::default() }).await;
    app.crm.always(500);
    app.post_event(&contact("e-ann", "Ann@Example.org")).await;
    app.post_event(&contact("e-joann", "joann@example.org")).await;
    app.post_event(&contact("e-marie-ann", "marie-ann@example.org")).await;
    app.post_event(&contact("e-net", "ann@example.net")).await;
    let buyer = serde_json::json!({"event": "transaction.created", "id": "e-buyer",
        "data": {"buyer": {"email": "ann@example.org"}}});
    app.post_event(&buyer).await;
    wait_until(Duration::from_secs(10), "five events stored", || async { events_left(&app).await.len() == 5 }).await;

    // Anything that is not local@domain is refused, and nothing is removed.
    for bad in ["@example.net", "ann", "example.org", "ann@", "a@b@c", "%25", "ann%20x@example.org"] {
        let resp = app.client.delete(format!("{}/api/contacts/{bad}", app.admin)).bearer_auth(ADMIN_TOKEN).send().await;
        let resp = resp.unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        let text = resp.text().await.unwrap();
        assert!(text.contains("e-mail address"), "{bad}: {text}");
    }
    let typo = app
        .client
        .delete(format!("{}/api/contacts/ann@example.org?dry-run=true", app.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(typo.status(), 400, "a misspelt dry_run is refused, not taken as an erasure");
    assert_eq!(events_left(&app).await.len(), 5);

    // The dry run lists exactly her two events and removes nothing.
    let dry = app
        .client
        .delete(format!("{}/api/contacts/ANN@example.org?dry_run=true", app.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(dry.status(), 200);
    let dry: serde_json::Value = dry.json().await.unwrap();
    assert_eq!(dry["status"], "dry_run");
    let mut listed: Vec<&str> =
        dry["events"].as_array().unwrap().iter().map(|e| e["learnybox_id"].as_str().unwrap()).collect();
    listed.sort();
    assert_eq!(listed, ["e-ann", "e-buyer"], "{dry}");
    assert_eq!(dry["would_remove"]["events"], 2);
    assert_eq!(events_left(&app).await.len(), 5, "a dry run removes nothing");

    let resp = app.client.delete(format!("{}/api/contacts/ann@example.org", app.admin)).bearer_auth(ADMIN_TOKEN).send();
    let body: serde_json::Value = resp.await.unwrap().json().await.unwrap();
    assert_eq!(body["removed"]["events"], 2, "{body}");
    assert_eq!(events_left(&app).await, ["e-joann", "e-marie-ann", "e-net"]);
    // Their deliveries are still there to be delivered.
    assert_eq!(app.deliveries("status=pending&limit=100").await.len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn erasing_ann_leaves_joann_and_marie_ann_on_sqlite() {
    erasing_ann_leaves_joann_and_marie_ann(None).await;
}

#[tokio::test]
async fn erasing_ann_leaves_joann_and_marie_ann_on_postgres() {
    let Some(schema) = pg_schema("erasing_ann_leaves_joann_and_marie_ann_on_postgres").await else { return };
    erasing_ann_leaves_joann_and_marie_ann(Some(schema.url())).await;
    schema.drop().await;
}

#[tokio::test]
async fn forget_dry_run_on_the_command_line_lists_and_keeps() {
    let app = spawn_app_with(TestConfig { schedule: vec!["1h"], ..TestConfig::default() }).await;
    app.crm.always(500);
    app.post_event(&contact("e-ann", "ann@example.org")).await;
    app.post_event(&contact("e-joann", "joann@example.org")).await;
    app.post_hook("quarantined: a note naming ann@example.org", &[]).await;
    app.post_hook("quarantined: a note naming joann@example.org", &[]).await;
    let path = app.dir.path().join("routes.toml");
    let path = path.to_str().unwrap();
    let (code, out, err) = run_cli(&["forget", "-c", path, "--dry-run", "Ann@Example.org"], None, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("would erase ann@example.org: 1 event(s)"), "{out}");
    assert!(out.contains("(Learnybox id e-ann) contact.created"), "{out}");
    assert!(out.contains("1 quarantined body(ies)"), "{out}");
    assert!(!out.contains("e-joann"), "{out}");
    assert_eq!(app.count("SELECT COUNT(*) FROM events"), 2);
    assert_eq!(app.count("SELECT COUNT(*) FROM quarantine"), 2);

    let (code, _, err) = run_cli(&["forget", "-c", path, "@example.org"], None, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("not an e-mail address") && err.contains("empty"), "{err}");

    let (code, out, err) = run_cli(&["forget", "-c", path, "ann@example.org"], None, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("erased ann@example.org: 1 event(s)") && out.contains("1 quarantined"), "{out}");
    assert_eq!(app.count("SELECT COUNT(*) FROM events"), 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM quarantine"), 1, "joann's note stays");
}
