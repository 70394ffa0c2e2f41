//! The command line, run as the built binary: decrypt/encrypt on the shared vectors, check,
//! render and send-test against the example configuration.

use serde_json::Value;

use crate::helpers::*;

fn vectors() -> Value {
    serde_json::from_str(include_str!("../vectors/envelopes.json")).unwrap()
}

fn repo(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn decrypt_prints_each_vectors_plaintext_and_variant_and_never_the_secret() {
    let all = vectors();
    for v in all["vectors"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let secret = v["secret"].as_str().unwrap();
        let mut args = vec!["decrypt", "--secret-env", "VECTOR_SECRET"];
        let iv = v["headers"].as_object().and_then(|h| h.values().next()).and_then(Value::as_str).map(str::to_string);
        if let Some(iv) = iv.as_deref() {
            args.extend(["--iv", iv]);
        }
        args.push("-");
        let (code, out, err) = run_cli(&args, Some(v["body"].as_str().unwrap()), &[("VECTOR_SECRET", secret)]);
        assert_eq!(code, 0, "{name}: {err}");
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), v["plaintext"], "{name}");
        assert!(err.contains(v["envelope"].as_str().unwrap()), "{name}: {err}");
        assert!(!out.contains(secret) && !err.contains(secret), "{name}: the secret was printed");
    }
}

#[test]
fn decrypt_fails_clearly_when_nothing_decrypts() {
    let all = vectors();
    let n = &all["negatives"][0];
    let (code, out, err) =
        run_cli(&["decrypt", "--secret", "not-the-key", "-"], Some(n["body"].as_str().unwrap()), &[]);
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert!(err.contains("could not decrypt"), "{err}");
    assert!(!err.contains("not-the-key"));
}

#[test]
fn encrypt_then_decrypt_round_trips_every_envelope() {
    let event = r#"{"event":"contact.subscribed","id":"rt-1","data":{"contact":{"prenom":"Zoë \"Z\""}}}"#;
    for envelope in ["json-data-iv", "json-data-iv-hex", "iv-prefixed", "php-double-colon", "laravel", "body-string"] {
        let (code, body, err) =
            run_cli(&["encrypt", "--secret", SECRET, "--envelope", envelope, "-"], Some(event), &[]);
        assert_eq!(code, 0, "{envelope}: {err}");
        let (code, out, err) = run_cli(&["decrypt", "--secret", SECRET, "-"], Some(body.trim()), &[]);
        assert_eq!(code, 0, "{envelope}: {err}");
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), serde_json::from_str::<Value>(event).unwrap());
        assert!(err.contains(envelope), "{err}");
    }
}

#[test]
fn check_accepts_the_example_config_and_names_unset_variables() {
    let config = repo("routes.toml");
    let (code, out, err) = run_cli(&["check", "-c", &config], None, &[("LEARNYBOX_SECRET_KEY", SECRET)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK"), "{out}");
    let (code, out, _) = run_cli(&["check", "-c", &config], None, &[]);
    assert_eq!(code, 1);
    assert!(out.contains("LEARNYBOX_SECRET_KEY"), "{out}");
}

#[test]
fn check_reports_template_problems_with_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TestConfig {
        template: "{\n  \"email\": \"{{data.data.contact.email}}\",\n  \"bad\": {{data.id}}\n}",
        ..TestConfig::default()
    };
    std::fs::write(dir.path().join("crm.json.hbs"), cfg.template).unwrap();
    std::fs::write(dir.path().join("routes.toml"), cfg.toml("http://127.0.0.1:1", "127.0.0.1:0", "127.0.0.1:0"))
        .unwrap();
    let (code, out, _) = run_cli(&["check", "-c", dir.path().join("routes.toml").to_str().unwrap()], None, &[]);
    assert_eq!(code, 1);
    assert!(out.contains("crm.json.hbs") && out.contains("line 3"), "{out}");

    std::fs::write(dir.path().join("crm.json.hbs"), "{{#each data}}").unwrap();
    let (code, out, _) = run_cli(&["check", "-c", dir.path().join("routes.toml").to_str().unwrap()], None, &[]);
    assert_eq!(code, 1);
    assert!(out.contains("crm.json.hbs"), "{out}");

    std::fs::write(dir.path().join("routes.toml"), "[server]\nlisten = 8080\n").unwrap();
    let (code, out, _) = run_cli(&["check", "-c", dir.path().join("routes.toml").to_str().unwrap()], None, &[]);
    assert_eq!(code, 1);
    assert!(out.contains("line 2"), "{out}");
}

#[test]
fn render_shows_the_request_with_env_secrets_masked() {
    let config = repo("routes.toml");
    let envs = [("LEARNYBOX_SECRET_KEY", SECRET), ("BREVO_API_KEY", "xkeysib-very-secret")];
    let (code, out, err) = run_cli(
        &["render", "-c", &config, "--route", "brevo-contacts", "--json", &repo("assets/contact-event.json")],
        None,
        &envs,
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("xkeysib-very-secret"));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["url"], "https://api.brevo.com/v3/contacts");
    assert_eq!(v["headers"]["api-key"], "***");
    assert_eq!(v["headers"]["accept"], "application/json");
    assert_eq!(v["body"]["email"], "jj.oconnor@example.org");
    assert_eq!(v["body"]["attributes"]["FIRSTNAME"], "Jean \"JJ\"");
    assert_eq!(v["body"]["updateEnabled"], true);
    let (code, _, err) =
        run_cli(&["render", "-c", &config, "--route", "nope", &repo("assets/event.json")], None, &envs);
    assert_eq!(code, 1);
    assert!(err.contains("automation-hook"), "lists the routes: {err}");
}

#[tokio::test]
async fn send_test_posts_like_learnybox_and_prints_the_answer() {
    let app = spawn_app().await;
    let url = format!("{}/hooks/learnybox", app.public);
    // Its routes send to this machine only: no --yes needed.
    let config = app.dir.path().join("routes.toml").display().to_string();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run_cli(&["send-test", "--secret", SECRET, "--url", &url, "--samples", "-c", &config], None, &[])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let samples = sample_events().len();
    assert_eq!(out.lines().filter(|l| l.contains("200 OK")).count(), samples, "{out}");
    assert_eq!(app.count("SELECT COUNT(*) FROM events"), samples as i64);
    assert_eq!(app.count("SELECT COUNT(*) FROM quarantine"), 0);
}

#[cfg(feature = "bench")]
#[tokio::test]
async fn bench_starts_its_relay_and_reports_every_event_delivered() {
    // Off the test's runtime: the bench is a process of its own.
    let (code, out, err) =
        tokio::task::spawn_blocking(|| run_cli(&["bench", "-n", "200", "-c", "4", "--json"], None, &[])).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["accepted"], 200, "{report}");
    assert_eq!(report["delivered"], 200, "{report}");
}

#[cfg(not(feature = "bench"))]
#[test]
fn bench_in_a_build_without_the_load_tool_says_how_to_get_it() {
    let (code, out, err) = run_cli(&["bench", "-n", "10"], None, &[]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("--features bench"), "{err}");
}
