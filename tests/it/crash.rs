//! Durability: a relay killed with SIGKILL right after acknowledging events loses none of them.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_relay(dir: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lbx-relay"))
        .args(["serve", "-c"])
        .arg(dir.join("routes.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_ready(client: &reqwest::Client, url: &str) {
    wait_until(Duration::from_secs(10), "relay ready", || async {
        client.get(url).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test]
async fn a_relay_killed_after_acknowledging_events_delivers_all_of_them_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    // The CRM is down while events arrive: its port is reserved but nothing answers yet.
    let crm_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let crm_url = format!("http://{}", crm_listener.local_addr().unwrap());
    let crm_addr = crm_listener.local_addr().unwrap();
    drop(crm_listener);
    let (public, admin) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let cfg =
        TestConfig { schedule: vec!["300ms", "300ms", "300ms", "300ms", "300ms", "300ms"], ..TestConfig::default() };
    std::fs::write(dir.path().join("crm.json.hbs"), cfg.template).unwrap();
    std::fs::write(dir.path().join("routes.toml"), cfg.toml(&crm_url, &public, &admin)).unwrap();

    let client = reqwest::Client::new();
    let mut relay = start_relay(dir.path());
    wait_ready(&client, &format!("http://{admin}/readyz")).await;
    let events: Vec<serde_json::Value> = (0..60)
        .map(|i| serde_json::json!({"event": "contact.subscribed", "id": format!("crash-{i}"), "data": {"n": i}}))
        .collect();
    for e in &events {
        let sealed = seal(e, SECRET);
        let resp = client.post(format!("http://{public}/hooks/learnybox")).body(sealed.body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    relay.kill().unwrap(); // SIGKILL: no shutdown, no flush
    relay.wait().unwrap();

    let crm = FakeCrm::start_on(std::net::TcpListener::bind(crm_addr).unwrap()).await;
    let mut relay = start_relay(dir.path());
    wait_until(Duration::from_secs(30), "all 60 events delivered", || async {
        let ids: std::collections::HashSet<String> =
            crm.received().iter().map(|r| r.json()["id"].as_str().unwrap_or_default().to_string()).collect();
        ids.len() == 60
    })
    .await;
    relay.kill().unwrap();
    relay.wait().unwrap();
    assert_eq!(count_in(&dir.path().join("relay.db"), "SELECT COUNT(*) FROM events"), 60);
}
