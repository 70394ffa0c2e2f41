//! The relay as a process: SIGTERM drains in-flight deliveries and exits 0; logs of a full run
//! carry no secret, token or plaintext e-mail.

use std::process::Stdio;
use std::time::Duration;

use crate::helpers::*;

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test]
async fn sigterm_during_a_slow_crm_call_finishes_the_delivery_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let crm = FakeCrm::start().await;
    crm.delay(Duration::from_millis(1500));
    let (public, admin) = write_process_config(dir.path(), &TestConfig::default(), &crm.url);
    let mut relay = start_process(dir.path(), &[], Stdio::null());
    wait_ready(&admin).await;
    let sealed = seal(&sample_events()[0], SECRET);
    let resp = client().post(format!("http://{public}/hooks/learnybox")).body(sealed.body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    wait_until(Duration::from_secs(5), "the CRM call started", || async { crm.count() == 1 }).await;
    signal(relay.id(), "-TERM");
    let status = tokio::task::spawn_blocking(move || relay.wait().unwrap()).await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    let db = dir.path().join("relay.db");
    assert_eq!(count_in(&db, "SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'"), 1);
    assert_eq!(crm.count(), 1, "not sent twice");
}

#[tokio::test]
async fn logs_of_a_full_run_hold_no_secret_token_or_plaintext_email() {
    let dir = tempfile::tempdir().unwrap();
    let crm = FakeCrm::start().await;
    crm.respond_with(&[500, 422]);
    let (public, admin) = write_process_config(dir.path(), &TestConfig::default(), &crm.url);
    let log_path = dir.path().join("relay.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // At debug, so the per-event lines (which name the contact, masked) are there to check too.
    let mut relay =
        start_process_with(dir.path(), &["--log-format", "json"], Stdio::from(log), &[("RUST_LOG", "debug")]);
    wait_ready(&admin).await;
    let client = client();
    for e in sample_events().iter().take(6) {
        let sealed = seal(e, SECRET);
        client.post(format!("http://{public}/hooks/learnybox")).body(sealed.body).send().await.unwrap();
    }
    client.post(format!("http://{public}/hooks/learnybox")).body("undecryptable").send().await.unwrap();
    wait_until(Duration::from_secs(10), "all attempts made", || async { crm.count() >= 7 }).await;
    let api = |path: &'static str| client.get(format!("http://{admin}{path}")).bearer_auth(ADMIN_TOKEN).send();
    api("/api/deliveries").await.unwrap();
    client.get(format!("http://{admin}/api/deliveries")).bearer_auth("a-wrong-token").send().await.unwrap();
    // A graceful stop writes every log line of the requests answered above.
    signal(relay.id(), "-TERM");
    tokio::task::spawn_blocking(move || relay.wait().unwrap()).await.unwrap();

    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(logs.lines().count() > 5, "{logs}");
    assert!(logs.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "JSON lines");
    // Per-event lines are at debug; at info, a summary says what happened.
    let summary = logs.lines().find(|l| l.contains("summary since the last one")).expect("a summary line");
    assert!(summary.contains("\"events_in\":6") && summary.contains("\"quarantined\":1"), "{summary}");
    assert!(logs.contains("\"accepted\"") && logs.contains("\"level\":\"DEBUG\""), "per-event lines at debug");
    for secret in [SECRET, ADMIN_TOKEN, "a-wrong-token", "crm-secret-key"] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
    }
    for e in sample_events().iter().take(6) {
        let email = e["data"]["contact"]["email"].as_str().unwrap();
        assert!(!logs.contains(email), "{email} in the logs");
        let prenom = e["data"]["contact"]["prenom"].as_str().unwrap();
        assert!(!logs.contains(&format!("\"{prenom}")), "a decrypted name in the logs");
    }
    assert!(logs.contains("ca***@example.fr"), "masked e-mails identify the contact");
}
