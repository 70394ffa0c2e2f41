//! `[server] env_file`: KEY=VALUE lines consulted for `${VAR}` after the environment and read again
//! on every reload, so "fix the key, reload, reprocess" works without a restart; a reload that
//! needs a variable found in neither says that the env file or a restart is needed.

use std::time::Duration;

use crate::helpers::*;

const VAR: &str = "LBX_TEST_ENV_FILE_CRM_TOKEN";

#[tokio::test]
async fn a_secret_added_to_the_env_file_is_seen_by_a_reload() {
    assert!(std::env::var(VAR).is_err(), "the test's variable must not be exported");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("relay.env"), "# secrets for the relay\nOTHER=1\n").unwrap();
    let crm = FakeCrm::start().await;
    let cfg = TestConfig { server_extra: "env_file = \"relay.env\"".into(), ..TestConfig::default() };
    let app = start_in(dir, crm, &cfg).await;

    // The config now needs a variable that nothing provides: refused, saying what to do.
    let path = app.dir.path().join("routes.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let needs = text.replace("${TEST_CRM_KEY:-crm-secret-key}", &format!("${{{VAR}}}"));
    std::fs::write(&path, &needs).unwrap();
    let refused = app.admin_post("/api/reload").await;
    assert_eq!(refused.status(), 422);
    let body = refused.text().await.unwrap();
    assert!(body.contains(VAR) && body.contains("env_file") && body.contains("restart"), "{body}");
    assert!(body.contains("nor in the env_file"), "{body}");

    // Put in the env file: the reload takes it, and the next delivery carries it.
    std::fs::write(app.dir.path().join("relay.env"), format!("OTHER=1\nexport {VAR}=\"tok-from-file-123\"\n")).unwrap();
    assert_eq!(app.admin_post("/api/reload").await.status(), 200);
    app.post_event(&sample_events()[0]).await;
    wait_until(Duration::from_secs(10), "delivered", || async { app.crm.count() == 1 }).await;
    assert_eq!(app.crm.received()[0].header("api-key"), Some("tok-from-file-123"));
}

#[test]
fn a_broken_env_file_is_a_clear_error_that_never_shows_a_value() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TestConfig { server_extra: "env_file = \"relay.env\"".into(), ..TestConfig::default() };
    write_process_config(dir.path(), &cfg, "http://127.0.0.1:9");
    let path = dir.path().join("routes.toml");
    let (code, out, _) = run_cli(&["check", "-c", path.to_str().unwrap()], None, &[]);
    assert_eq!(code, 1);
    assert!(out.contains("server.env_file: cannot read") && out.contains("relay.env"), "{out}");
    std::fs::write(dir.path().join("relay.env"), "GOOD=1\nthis line has secret-value-xyz and no equals\n").unwrap();
    let (code, out, _) = run_cli(&["check", "-c", path.to_str().unwrap()], None, &[]);
    assert_eq!(code, 1);
    assert!(out.contains("line 2 is not KEY=VALUE") && !out.contains("secret-value-xyz"), "{out}");
    std::fs::write(dir.path().join("relay.env"), "GOOD=1\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path().join("relay.env"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, _) = run_cli(&["check", "-c", path.to_str().unwrap()], None, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("can be read by other users") && out.contains("chmod 600"), "{out}");
}
