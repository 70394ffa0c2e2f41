//! A webhook URL that is slightly wrong loses nothing quietly: a trailing slash is the same
//! endpoint; an unknown source is answered 404, counted in `lbx_hooks_unknown_total`, logged at
//! warn once a minute with the closest configured source, and shown by `/api/stats`.

use std::io::Read;

use crate::helpers::*;

#[tokio::test]
async fn a_trailing_slash_is_the_same_endpoint() {
    let app = spawn_app().await;
    let sealed = seal(&sample_events()[0], SECRET);
    let mut req = app.client.post(format!("{}/hooks/learnybox/", app.public)).body(sealed.body);
    for (k, v) in &sealed.headers {
        req = req.header(k, v);
    }
    assert_eq!(req.send().await.unwrap().status(), 200);
    assert_eq!(app.count("SELECT COUNT(*) FROM events"), 1, "stored");
    // GET on it explains the endpoint, as without the slash.
    let get = app.client.get(format!("{}/hooks/learnybox/", app.public)).send().await.unwrap();
    assert_eq!(get.status(), 405);
}

#[tokio::test]
async fn an_unknown_source_is_a_404_counted_and_shown_with_the_closest_source() {
    let app = spawn_app().await;
    for path in ["/hooks/Learnybox", "/hooks/learnybx", "/hooks/wordpress"] {
        let resp = app.client.post(format!("{}{path}", app.public)).body("{}").send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM events") + app.count("SELECT COUNT(*) FROM quarantine"), 0);
    let metrics = app.client.get(format!("{}/metrics", app.admin)).send().await.unwrap().text().await.unwrap();
    // One series, no per-path label (the recorder is shared by the tests of this binary: at least 3).
    let series: Vec<&str> = metrics.lines().filter(|l| l.starts_with("lbx_hooks_unknown_total")).collect();
    assert_eq!(series.len(), 1, "{metrics}");
    let n: u64 = series[0].strip_prefix("lbx_hooks_unknown_total ").expect("no labels").parse().unwrap();
    assert!(n >= 3, "{metrics}");
    let stats: serde_json::Value = app.admin_get("/api/stats").await.json().await.unwrap();
    assert_eq!(stats["unknown_hooks"]["count"], 3);
    assert_eq!(stats["unknown_hooks"]["last"]["source"], "wordpress");
    assert_eq!(stats["unknown_hooks"]["last"]["did_you_mean"], serde_json::Value::Null);
    let resp = app.client.post(format!("{}/hooks/lernybox", app.public)).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let stats: serde_json::Value = app.admin_get("/api/stats").await.json().await.unwrap();
    assert_eq!(stats["unknown_hooks"]["last"]["did_you_mean"], "learnybox");
}

#[tokio::test]
async fn the_warning_names_the_closest_source_once_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let crm = FakeCrm::start().await;
    let (public, admin) = write_process_config(dir.path(), &TestConfig::default(), &crm.url);
    let mut child = start_process(dir.path(), &[], std::process::Stdio::piped());
    wait_ready(&admin).await;
    let client = client();
    for _ in 0..5 {
        let resp = client.post(format!("http://{public}/hooks/Learnybox")).body("{}").send().await.unwrap();
        assert_eq!(resp.status(), 404);
    }
    // A request that is logged per request comes after, so the log is flushed past the warnings.
    client.get(format!("http://{admin}/readyz")).send().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("not configured")).collect();
    assert_eq!(warnings.len(), 1, "rate-limited: {log}");
    assert!(warnings[0].contains("WARN") && warnings[0].contains("did_you_mean=learnybox"), "{}", warnings[0]);
}
