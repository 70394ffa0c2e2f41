//! Durability: a relay killed with SIGKILL right after acknowledging events loses none of them.

use std::process::Stdio;
use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn a_relay_killed_after_acknowledging_events_delivers_all_of_them_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    // The CRM is down while events arrive: its port is reserved but nothing answers yet.
    let crm_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let crm_url = format!("http://{}", crm_listener.local_addr().unwrap());
    let crm_addr = crm_listener.local_addr().unwrap();
    drop(crm_listener);
    let cfg =
        TestConfig { schedule: vec!["300ms", "300ms", "300ms", "300ms", "300ms", "300ms"], ..TestConfig::default() };
    let (public, admin) = write_process_config(dir.path(), &cfg, &crm_url);

    let client = client();
    let mut relay = start_process(dir.path(), &[], Stdio::null());
    wait_ready(&admin).await;
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
    let mut relay = start_process(dir.path(), &[], Stdio::null());
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
