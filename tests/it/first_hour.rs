//! The operator's first hour: a hook URL opened in a browser, secrets mounted as files, `render`
//! on an event its route does not take, `decrypt … | head`.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn a_hook_url_opened_in_a_browser_answers_405_with_what_to_do() {
    let app = spawn_app().await;
    let resp = app.client.get(format!("{}/hooks/learnybox", app.public)).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("send-test"), "{body}");
    assert_eq!(app.count("SELECT COUNT(*) FROM quarantine"), 0, "nothing is stored");
}

#[tokio::test]
async fn a_secret_read_from_a_file_is_read_again_on_reload() {
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("learnybox_key");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let app = spawn_app_with(TestConfig {
        secret: Box::leak(format!("${{file:{}}}", file.display()).into_boxed_str()),
        ..TestConfig::default()
    })
    .await;
    assert_eq!(app.post_event(&sample_events()[0]).await.status(), 200);
    assert_eq!(app.count("SELECT COUNT(*) FROM events"), 1, "the key from the file decrypts");

    // The secret is rotated where it is mounted: a reload picks it up, no restart.
    let rotated = "RotatedKeyRotatedKeyRotatedKey12";
    std::fs::write(&file, rotated).unwrap();
    assert_eq!(app.admin_post("/api/reload").await.status(), 200);
    let event = serde_json::json!({"event": "contact.created", "id": "after-rotation"});
    let sealed = seal(&event, rotated);
    assert_eq!(app.post_hook(sealed.body, &sealed.headers).await.status(), 200);
    wait_until(Duration::from_secs(5), "stored with the rotated key", || async {
        app.count("SELECT COUNT(*) FROM events") == 2
    })
    .await;

    std::fs::remove_file(&file).unwrap();
    let resp = app.admin_post("/api/reload").await;
    let body = resp.text().await.unwrap();
    assert!(body.contains("cannot read the secret file") && !body.contains(rotated), "{body}");
}

#[test]
fn render_says_when_the_event_is_not_one_its_route_takes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TestConfig { events: r#"["transaction.*"]"#, ..TestConfig::default() };
    write_process_config(dir.path(), &cfg, "http://127.0.0.1:9");
    let event = dir.path().join("e.json");
    std::fs::write(&event, r#"{"event": "contact.created", "id": "1"}"#).unwrap();
    let path = dir.path().join("routes.toml");
    let (code, _out, err) =
        run_cli(&["render", "-c", path.to_str().unwrap(), "--route", "crm", event.to_str().unwrap()], None, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(r#"takes events ["transaction.*"]; this event is "contact.created""#), "{err}");
}

#[test]
fn decrypt_piped_into_head_ends_quietly() {
    let mut big = serde_json::Map::new();
    for i in 0..20_000 {
        big.insert(format!("field_{i}"), serde_json::json!("x".repeat(20)));
    }
    let sealed = seal(&serde_json::Value::Object(big), SECRET);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lbx-relay"))
        .env_clear()
        .env("K", SECRET)
        .args(["decrypt", "--secret-env", "K", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), sealed.body.as_bytes()).unwrap();
    // Read the first line, then go away like `head -1` does.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "{");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
    assert!(out.status.success(), "{err}");
}

#[tokio::test]
async fn a_delivered_multi_step_delivery_sent_again_repeats_every_step_and_a_pending_one_goes_now() {
    let steps = ["one", "two"]
        .iter()
        .map(|n| format!("[[routes.steps]]\nname = \"{n}\"\nurl = \"{{crm}}/{n}\"\ntemplate = \"crm.json.hbs\"\n"))
        .collect::<String>();
    let app = spawn_app_with(TestConfig { steps: Some(steps), schedule: vec!["1h"], ..TestConfig::default() }).await;
    app.post_event(&sample_events()[0]).await;
    wait_until(Duration::from_secs(10), "delivered", || async { app.deliveries("status=delivered").await.len() == 1 })
        .await;
    assert_eq!(app.crm.count(), 2);
    let id = app.deliveries("status=delivered").await[0]["id"].as_str().unwrap().to_string();
    assert_eq!(app.admin_post(&format!("/api/deliveries/{id}/retry")).await.status(), 200);
    wait_until(Duration::from_secs(10), "both steps sent again", || async { app.crm.count() == 4 }).await;
    let paths: Vec<String> = app.crm.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/one", "/two", "/one", "/two"]);

    // A pending delivery waiting an hour for its retry goes out now.
    app.crm.respond_with(&[500]);
    app.post_event(&sample_events()[1]).await;
    wait_until(Duration::from_secs(10), "the first attempt failed", || async {
        app.deliveries("status=pending").await.iter().any(|d| d["attempts"] == 1)
    })
    .await;
    let pending = app.deliveries("status=pending").await[0]["id"].as_str().unwrap().to_string();
    assert_eq!(app.admin_post(&format!("/api/deliveries/{pending}/retry")).await.status(), 200);
    wait_until(Duration::from_secs(10), "sent now, not in an hour", || async {
        app.deliveries("status=delivered").await.len() == 2
    })
    .await;
}

#[tokio::test]
async fn at_start_one_summary_says_where_events_come_in_and_go_and_what_looks_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (_public, admin) = write_process_config(dir.path(), &TestConfig::default(), "http://crm.example.test:8443");
    let path = dir.path().join("routes.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(&format!("admin_token = \"{ADMIN_TOKEN}\""), "");
    std::fs::write(&path, text).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lbx-relay"))
        .env_clear()
        .env("TEST_CRM_KEY", "changeme")
        .args(["serve", "-c"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = client();
    wait_until(Duration::from_secs(10), "listening", || {
        let client = client.clone();
        let url = format!("http://{admin}/healthz");
        async move { client.get(url).send().await.is_ok() }
    })
    .await;
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("source learnybox: POST /hooks/learnybox"), "{log}");
    assert!(log.contains("route crm: * → crm.example.test"), "{log}");
    assert!(log.contains("server.admin_token is not set") && log.contains("LBX_ADMIN_TOKEN"), "{log}");
    assert!(log.contains("route crm: header api-key looks like a placeholder"), "{log}");
    assert!(!log.contains("changeme"), "the value itself is not logged: {log}");
}

/// Runs `lbx-relay send-test --follow` against `app` off the test's runtime (the relay runs on it).
async fn send_test_follow(app: &TestApp, file: &std::path::Path, key: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args: Vec<String> = ["send-test", "--secret-env", "K", "--url"].iter().map(|s| s.to_string()).collect();
    args.push(format!("{}/hooks/learnybox", app.public));
    args.extend(["--follow", "--timeout", "10s", "--admin-url"].iter().map(|s| s.to_string()));
    args.push(app.admin.clone());
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(file.display().to_string());
    let key = key.to_string();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // An egress proxy in the operator's shell (dead here) must not capture loopback requests.
        let proxy = "http://127.0.0.1:9";
        let envs = [("K", key.as_str()), ("LBX_ADMIN_TOKEN", ADMIN_TOKEN), ("HTTP_PROXY", proxy), ("ALL_PROXY", proxy)];
        run_cli(&args, None, &envs)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn send_test_follow_reports_delivery_failure_duplicates_and_the_quarantine() {
    let app = spawn_app().await;
    let file = app.dir.path().join("event.json");
    std::fs::write(&file, sample_events()[0].to_string()).unwrap();

    let (code, out, err) = send_test_follow(&app, &file, SECRET, &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("200 OK") && out.contains("crm: delivered (HTTP 200) after 1 attempt(s)"), "{out}");

    let (code, out, _) = send_test_follow(&app, &file, SECRET, &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("duplicate") && out.contains("--fresh-id"), "{out}");

    app.crm.always(422);
    let (code, out, err) = send_test_follow(&app, &file, SECRET, &["--fresh-id"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("crm: FAILED after 1 attempt(s): HTTP 422"), "{out}");

    let (code, out, err) = send_test_follow(&app, &file, "ThisIsNotTheRightKeyForTheRelay!", &["--fresh-id"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("200 OK") && out.contains("quarantined:"), "the hook answers 200, --follow tells: {out}");
}

#[tokio::test]
async fn send_test_samples_follow_prints_one_summary_and_judges_only_what_a_route_took() {
    let app = spawn_app_with(TestConfig { events: r#"["contact.*"]"#, ..TestConfig::default() }).await;
    let config = app.dir.path().join("routes.toml").display().to_string();
    let samples = sample_events();
    let contacts = samples.iter().filter(|s| s["event"].as_str().unwrap().starts_with("contact.")).count();
    let run = |extra: Vec<String>| {
        let mut args: Vec<String> = ["send-test", "--secret-env", "K", "--samples", "--follow", "--timeout", "10s"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend([
            "--url".into(),
            format!("{}/hooks/learnybox", app.public),
            "--admin-url".into(),
            app.admin.clone(),
        ]);
        args.extend(["-c".into(), config.clone()]);
        args.extend(extra);
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_cli(&args, None, &[("K", SECRET), ("LBX_ADMIN_TOKEN", ADMIN_TOKEN)])
        })
    };
    let (code, out, err) = run(vec![]).await.unwrap();
    assert_eq!(code, 0, "every sample a route took was delivered: {out}{err}");
    let summary = out.lines().last().unwrap();
    assert_eq!(
        summary,
        format!(
            "samples: {contacts} delivered, 0 failed, 0 still pending, {} no route, 0 duplicate, 0 quarantined, 0 refused by the relay",
            samples.len() - contacts
        )
    );
    // Sent again: duplicates, not failures.
    let (code, out, _) = run(vec![]).await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.lines().last().unwrap().contains(&format!("{} duplicate", samples.len())), "{out}");
    // A CRM that refuses them: the run fails and says how many.
    app.crm.always(422);
    let (code, out, _) = run(vec!["--fresh-id".into()]).await.unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.lines().last().unwrap().starts_with(&format!("samples: 0 delivered, {contacts} failed")), "{out}");
}

#[tokio::test]
async fn send_test_samples_asks_before_writing_test_contacts_into_a_real_crm() {
    let app = spawn_app().await;
    let url = format!("{}/hooks/learnybox", app.public);
    let repo_config = format!("{}/routes.toml", env!("CARGO_MANIFEST_DIR"));
    let (code, out, err) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            let args = ["send-test", "--secret", SECRET, "--url", &url, "--samples", "-c", &repo_config];
            run_cli(&args, None, &[("LEARNYBOX_SECRET_KEY", SECRET)])
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("brevo-contacts (api.brevo.com)") && err.contains("--yes"), "{err}");
    assert!(err.contains("camille.durand@example.fr"), "says which test contacts: {err}");
    assert_eq!(app.count("SELECT COUNT(*) FROM events"), 0, "nothing was sent");
    // A relay elsewhere: the same question.
    let (code, _, err) = run_cli(
        &["send-test", "--secret", SECRET, "--url", "https://relay.example.com/hooks/learnybox", "--samples"],
        None,
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("relay.example.com") && err.contains("--yes"), "{err}");
}

#[test]
fn a_secret_given_to_secret_env_by_value_is_never_printed() {
    let (code, _, err) =
        run_cli(&["send-test", "--secret-env", "fCRUwnAmjwESpfv8YsPwFaCIQe0nXLkY", "assets/event.json"], None, &[]);
    assert_eq!(code, 1);
    assert!(!err.contains("fCRUwnAmjwESpfv8YsPwFaCIQe0nXLkY"), "{err}");
    assert!(err.contains("the NAME of a variable"), "{err}");
    let (code, _, err) =
        run_cli(&["send-test", "--secret-env", "LEARNYBOX_SECRET_KEY", "assets/event.json"], None, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("environment variable LEARNYBOX_SECRET_KEY is not set"), "{err}");
}

#[test]
fn init_writes_a_setup_that_passes_check_where_it_is_written_for_every_connector() {
    let mut connectors: Vec<Option<String>> = vec![None];
    connectors.extend(lbx_relay::init::connectors().into_iter().map(|c| Some(c.to_string())));
    assert!(connectors.len() >= 12, "{connectors:?}");
    for connector in connectors {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("relay-config");
        let mut args = vec!["init".to_string()];
        if let Some(c) = &connector {
            args.extend(["--connector".to_string(), c.clone()]);
        }
        args.push(target.display().to_string());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = run_cli(&argv, None, &[]);
        assert_eq!(code, 0, "{connector:?}: {err}");
        // The variables it says are required, given plausible values.
        let required: Vec<String> = out
            .lines()
            .filter(|l| l.contains("(required"))
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect();
        assert!(required.contains(&"LEARNYBOX_SECRET_KEY".to_string()), "{out}");
        let values: Vec<(String, String)> = required
            .iter()
            .map(|v| {
                let value = match v.as_str() {
                    "LEARNYBOX_SECRET_KEY" => SECRET.to_string(),
                    v if v.ends_with("_URL") => "https://example.test/hook/abc".to_string(),
                    v if v.ends_with("_ID") => "12345".to_string(),
                    _ => "test-value-0123456789".to_string(),
                };
                (v.clone(), value)
            })
            .collect();
        let envs: Vec<(&str, &str)> = values.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        // Checked from another directory: the paths hold where the files were written.
        let config = target.join("routes.toml");
        let (code, out, err) = run_cli(&["check", "-c", config.to_str().unwrap()], None, &envs);
        assert_eq!(code, 0, "{connector:?}: {out}{err}");
        assert!(out.contains("OK"), "{out}");
        let written = std::fs::read_to_string(&config).unwrap();
        assert!(!written.contains("examples/"), "{connector:?}: the comments name the file as written");
        // A second init does not overwrite.
        let (code, _, err) = run_cli(&argv, None, &[]);
        assert_eq!(code, 1);
        assert!(err.contains("exists already"), "{err}");
    }
    let (code, _, err) = run_cli(&["init", "--connector", "nope", "/tmp/never-written"], None, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("brevo") && err.contains("hubspot"), "lists the connectors: {err}");
}

#[test]
fn the_readme_lists_every_variable_the_shipped_configs_read() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut configs = vec![root.join("routes.toml")];
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        configs.push(entry.unwrap().path());
    }
    for config in configs {
        let text = std::fs::read_to_string(&config).unwrap();
        for var in lbx_relay::init::variables(&text).keys() {
            assert!(
                readme.contains(&format!("| `{var}` |")),
                "{var} (read by {}) is not in the README",
                config.display()
            );
        }
    }
}

#[test]
fn check_shows_where_a_template_breaks_with_a_caret_and_says_a_repeated_error_once() {
    let dir = tempfile::tempdir().unwrap();
    write_process_config(dir.path(), &TestConfig::default(), "http://127.0.0.1:9");
    let path = dir.path().join("routes.toml");
    let template = dir.path().join("crm.json.hbs");
    std::fs::write(&template, "{\n  \"id\": \"{{id}}\",\n  \"bad\": {{#each}}\n}\n").unwrap();
    let (code, out, _) = run_cli(&["check", "-c", path.to_str().unwrap()], None, &[]);
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let at = lines.iter().position(|l| l.contains("crm.json.hbs: line")).unwrap_or_else(|| panic!("{out}"));
    assert!(lines[at].contains("invalid handlebars syntax") && !lines[at].contains("expected escape"), "{out}");
    assert!(lines[at + 1].contains(" | ") && lines[at + 2].trim_end().ends_with('^'), "caret on its own line: {out}");

    // Valid Handlebars, invalid JSON for every sample: one problem naming the samples.
    std::fs::write(&template, "{\"email\": {{data.data.contact.email}} }").unwrap();
    let (code, out, _) = run_cli(&["check", "-c", path.to_str().unwrap()], None, &[]);
    assert_eq!(code, 1, "{out}");
    let problems: Vec<&str> = out.lines().filter(|l| l.contains("is not valid JSON")).collect();
    assert_eq!(problems.len(), 1, "said once: {out}");
    assert!(problems[0].contains("(with bundled sample #") && problems[0].contains("more)"), "{out}");
    assert!(out.lines().any(|l| l.trim_end().ends_with('^')), "{out}");
}

#[test]
fn init_writes_a_config_ready_for_production_and_a_missing_config_points_to_init() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("relay");
    let (code, out, err) = run_cli(&["init", "--connector", "hubspot", target.to_str().unwrap()], None, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("LBX_ADMIN_TOKEN   (required; make one: openssl rand -hex 24)"), "{out}");
    assert!(!out.contains("LBX_ALERT_WEBHOOK_URL"), "a commented section asks for nothing: {out}");
    let written = std::fs::read_to_string(target.join("routes.toml")).unwrap();
    assert!(written.contains("admin_token = \"${LBX_ADMIN_TOKEN}\""), "{written}");
    assert!(written.contains("alert_after = \"6h\""), "{written}");
    assert!(written.contains("# [alerts]") && written.contains("lbx-relay alert-test"), "{written}");
    assert!(written.contains("hubspot.md (beside this file)"), "{written}");
    let doc = std::fs::read_to_string(target.join("hubspot.md")).unwrap();
    assert!(doc.starts_with("# HubSpot"), "the connector doc is copied beside it");
    // Without the admin token the config is refused, naming it.
    let config = target.join("routes.toml");
    let env = [("LEARNYBOX_SECRET_KEY", SECRET), ("HUBSPOT_ACCESS_TOKEN", "t"), ("HUBSPOT_SUBSCRIPTION_ID", "1")];
    let (code, out, _) = run_cli(&["check", "-c", config.to_str().unwrap()], None, &env);
    assert_eq!(code, 1);
    assert!(out.contains("LBX_ADMIN_TOKEN is not set"), "{out}");

    // serve and check without a config say how to get one.
    let missing = dir.path().join("nothing-here.toml");
    for command in ["check", "serve"] {
        let (code, out, err) = run_cli(&[command, "-c", missing.to_str().unwrap()], None, &[]);
        assert_eq!(code, 1, "{command}");
        let said = format!("{out}{err}");
        assert!(said.contains("cannot read the config file") && said.contains("lbx-relay init"), "{command}: {said}");
    }
}
