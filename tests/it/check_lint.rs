//! `check` catches what would lose data quietly, before go-live: warnings with the file's line and
//! a suggestion (an error where the value cannot be right), against the samples and the events the
//! store has received.

use crate::helpers::*;

/// Writes the test config with `cfg`, then runs `check` on it with `envs`: (exit code, output).
fn check(cfg: &TestConfig, envs: &[(&str, &str)]) -> (i32, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    write_process_config(dir.path(), cfg, "http://127.0.0.1:9");
    let path = dir.path().join("routes.toml");
    let (code, out, err) = run_cli(&["check", "-c", path.to_str().unwrap()], None, envs);
    (code, format!("{out}{err}"), dir)
}

fn warnings(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("warning:") && !l.contains("admin_token")).collect()
}

#[test]
fn a_clean_config_has_no_warning() {
    let (code, out, _) = check(&TestConfig::default(), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(warnings(&out).is_empty(), "{out}");
}

#[test]
fn a_misspelt_event_type_is_named_with_the_one_meant() {
    let cfg = TestConfig { events: r#"["contact.subscibed", "transaction.*", "course.*"]"#, ..TestConfig::default() };
    let (code, out, _) = check(&cfg, &[]);
    assert_eq!(code, 0, "a warning, not an error: {out}");
    let w = warnings(&out);
    assert_eq!(w.len(), 2, "{out}");
    assert!(
        w[0].contains("routes.toml:") && w[0].contains("\"contact.subscibed\" matches no known event type"),
        "{out}"
    );
    assert!(w[0].contains("did you mean `contact.subscribed`?"), "{out}");
    assert!(w[1].contains("\"course.*\" matches no known event type"), "{out}");
}

#[test]
fn template_paths_no_event_has_are_named_with_the_closest_one() {
    let cfg = TestConfig {
        template: r#"{"a": "{{data.data.contact.prenon}}", "b": "{{contact.prenom}}",
                      "c": "{{coalesce data.data.contact.first_name data.data.contact.prenom}}", "d": "{{data.data.nope.x}}"}"#,
        ..TestConfig::default()
    };
    let (_, out, _) = check(&cfg, &[]);
    let w = warnings(&out);
    assert!(
        w.iter().any(|l| l.contains("`data.data.contact.prenon` is in no sample")
            && l.contains("did you mean `data.data.contact.prenom`?")),
        "{out}"
    );
    assert!(
        w.iter().any(|l| l.contains("`contact.prenom` is not in the template context")
            && l.contains("did you mean `data.data.contact.prenom`?")),
        "{out}"
    );
    assert!(w.iter().any(|l| l.contains("`data.data.nope.x`")), "{out}");
    assert!(!out.contains("first_name"), "an alternative that another sample has is fine: {out}");
    assert_eq!(w.len(), 3, "{out}");
}

#[test]
fn a_method_that_is_not_http_is_an_error() {
    let cfg = TestConfig { route_extra: "method = \"PSOT\"".into(), ..TestConfig::default() };
    let (code, out, _) = check(&cfg, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("routes.toml:") && out.contains("\"PSOT\" is not an HTTP method (did you mean `POST`?)"),
        "{out}"
    );
}

#[test]
fn an_exported_variable_one_edit_from_one_the_config_reads_is_named() {
    let cfg = TestConfig {
        route_extra: "vars = { base = \"${BREVO_BASE_URL:-https://api.brevo.com}\" }".into(),
        ..TestConfig::default()
    };
    let (_, out, _) =
        check(&cfg, &[("TEST_CRM_KYE", "x"), ("BREVO_BASEURL", "http://127.0.0.1:1"), ("UNRELATED_THING", "1")]);
    let w = warnings(&out);
    assert!(
        w.iter().any(|l| l.contains("exports TEST_CRM_KYE, which the config does not read; it reads TEST_CRM_KEY")
            && l.contains("default \"crm-secret-key\"")),
        "{out}"
    );
    assert!(
        w.iter().any(|l| l.contains("exports BREVO_BASEURL")
            && l.contains("reads BREVO_BASE_URL")
            && l.contains("default \"https://api.brevo.com\"")),
        "{out}"
    );
    assert!(!out.contains("UNRELATED_THING"), "{out}");
}

#[test]
fn a_condition_no_sample_satisfies_or_that_reads_an_unset_variable_is_named() {
    let cfg = TestConfig {
        route_extra: "when = \"{{#if data.data.contact.emial}}true{{/if}}\"".into(),
        ..TestConfig::default()
    };
    let (_, out, _) = check(&cfg, &[]);
    assert!(warnings(&out).iter().any(|l| l.contains(".when: no sample or received event")), "{out}");
    let cfg = TestConfig {
        route_extra: "when = \"{{vars.list}}\"\nvars = { list = \"${LIST_ID:-}\" }".into(),
        ..TestConfig::default()
    };
    let (_, out, _) = check(&cfg, &[]);
    assert!(warnings(&out).iter().any(|l| l.contains("reads vars.list, which is empty")), "{out}");
}

#[tokio::test]
async fn types_and_fields_the_store_has_received_are_known() {
    let cfg = TestConfig {
        events: r#"["formation.terminee"]"#,
        template: r#"{"who": "{{data.data.membre.first_name}}"}"#,
        ..TestConfig::default()
    };
    let app = spawn_app_with(cfg.clone()).await;
    let before = {
        let path = app.dir.path().join("routes.toml");
        run_cli(&["check", "-c", path.to_str().unwrap()], None, &[]).1
    };
    assert!(before.contains("\"formation.terminee\" matches no known event type"), "{before}");
    let course =
        serde_json::json!({"event": "formation.terminee", "id": "f1", "data": {"membre": {"first_name": "Zoé"}}});
    app.post_event(&course).await;
    let path = app.dir.path().join("routes.toml");
    let (code, out, err) = run_cli(&["check", "-c", path.to_str().unwrap()], None, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(warnings(&out).is_empty(), "the received event makes the type and its fields known: {out}");
}
