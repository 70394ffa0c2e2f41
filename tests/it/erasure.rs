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

/// Whether `needle` stands anywhere in the database file or its WAL, as a disk image would show.
fn on_disk(db: &std::path::Path, needle: &str) -> bool {
    ["", "-wal"].iter().any(|suffix| {
        let bytes = std::fs::read(format!("{}{suffix}", db.display())).unwrap_or_default();
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    })
}

#[tokio::test]
async fn an_erased_address_is_gone_from_the_sqlite_file_and_its_wal() {
    let app = spawn_app().await;
    app.post_event(&contact("e-zed", "zed.quill@example.org")).await;
    app.post_event(&contact("e-kept", "kept.person@example.net")).await;
    wait_until(Duration::from_secs(10), "delivered", || async { app.crm.count() == 2 }).await;
    assert!(on_disk(&app.db_path(), "zed.quill@example.org"), "the test must see the address before");
    let resp = app.client.delete(format!("{}/api/contacts/zed.quill@example.org", app.admin)).bearer_auth(ADMIN_TOKEN);
    assert_eq!(resp.send().await.unwrap().status(), 200);
    assert!(!on_disk(&app.db_path(), "zed.quill@example.org"), "no copy in free pages or WAL frames");
    assert!(on_disk(&app.db_path(), "kept.person@example.net"), "the other contact stays");
    app.stop().await;
}

async fn encrypted_store_hashes_order_keys_and_indexes_every_address(store_url: Option<String>) {
    let app = spawn_app_with(TestConfig {
        schedule: vec!["1h"],
        store_url: store_url.clone(),
        store_extra: "encryption_key = \"QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=\"".into(),
        route_extra: "order_by = \"{{data.data.contact.email}}\"".into(),
        ..TestConfig::default()
    })
    .await;
    app.crm.always(500);
    let sale = serde_json::json!({"event": "transaction.created", "id": "e-sale",
        "data": {"contact": {"email": "main.person@example.org"},
                 "buyer": {"email": "Buyer Only <buyer.only@example.org>"}}});
    app.post_event(&sale).await;
    app.post_event(&contact("e-other", "someone@example.org")).await;
    wait_until(Duration::from_secs(10), "two stored", || async { events_left(&app).await.len() == 2 }).await;
    // The ordering key is an address: kept as a keyed hash, never in clear.
    let order_keys: Vec<String> = match &store_url {
        None => {
            let conn = rusqlite::Connection::open(app.db_path()).unwrap();
            let mut stmt = conn.prepare("SELECT order_key FROM deliveries").unwrap();
            stmt.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
        }
        Some(url) => {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client.query("SELECT order_key FROM deliveries", &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
        }
    };
    assert_eq!(order_keys.len(), 2);
    assert!(order_keys.iter().all(|k| k.starts_with("o:") && !k.contains('@')), "{order_keys:?}");
    // An address outside the contact's place is found by erasure although payloads are sealed.
    let resp = app.client.delete(format!("{}/api/contacts/BUYER.ONLY@example.org", app.admin)).bearer_auth(ADMIN_TOKEN);
    let answer: serde_json::Value = resp.send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["removed"]["events"], 1, "{answer}");
    assert_eq!(events_left(&app).await, ["e-other"]);
    app.stop().await;
}

#[tokio::test]
async fn an_encrypted_store_hashes_order_keys_and_indexes_every_address() {
    encrypted_store_hashes_order_keys_and_indexes_every_address(None).await;
}

#[tokio::test]
async fn an_encrypted_store_hashes_order_keys_and_indexes_every_address_on_postgres() {
    let Some(schema) = pg_schema("an_encrypted_store_hashes_order_keys_and_indexes_every_address_on_postgres").await
    else {
        return;
    };
    encrypted_store_hashes_order_keys_and_indexes_every_address(Some(schema.url())).await;
    schema.drop().await;
}
