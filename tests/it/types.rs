//! Event types as they really arrive: `GET /api/types` and `lbx-relay types` list every type
//! seen per source, its count, first and last arrival, the routes it met (or none), and one recent
//! payload with personal values masked — so a course event's real shape can be read and routed.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn types_show_what_arrived_where_it_went_and_its_shape_masked() {
    let app = spawn_app_with(TestConfig { events: r#"["contact.*"]"#, ..TestConfig::default() }).await;
    let course = json!({"event": "formation.terminee", "id": "c-1", "data": {
        "membre": {"email": "Camille.Durand@example.fr", "first_name": "Camille", "telephone": "0612345678"},
        "formation": {"id": 7, "name": "Vendre en ligne"}}});
    app.post_event(&course).await;
    let mut second = course.clone();
    second["id"] = "c-2".into();
    app.post_event(&second).await;
    app.post_event(
        &json!({"event": "contact.subscribed", "id": "s-1", "data": {"contact": {"email": "a@example.org"}}}),
    )
    .await;
    wait_until(std::time::Duration::from_secs(10), "three events", || async {
        app.count("SELECT COUNT(*) FROM events") == 3
    })
    .await;

    let v: serde_json::Value = app.admin_get("/api/types").await.json().await.unwrap();
    let types = v["types"].as_array().unwrap();
    assert_eq!(types.len(), 2, "{v}");
    let course = types.iter().find(|t| t["event"] == "formation.terminee").unwrap();
    assert_eq!((course["source"].as_str(), course["count"].as_u64()), (Some("learnybox"), Some(2)));
    assert_eq!(course["routes_matched"], json!([]), "stored unrouted");
    assert_eq!(course["routes_now"], json!([]));
    let payload = &course["recent_payload"];
    assert_eq!(payload["data"]["membre"]["email"], "Ca***@example.fr");
    assert_eq!(payload["data"]["membre"]["first_name"], "C***");
    assert_eq!(payload["data"]["membre"]["telephone"], "0***");
    assert_eq!(payload["data"]["formation"], json!({"id": 7, "name": "Vendre en ligne"}), "the shape stays readable");
    assert!(!v.to_string().contains("Camille"), "no personal value in clear: {v}");
    let contact = types.iter().find(|t| t["event"] == "contact.subscribed").unwrap();
    assert_eq!(contact["routes_matched"], json!(["crm"]));

    let config = app.dir.path().join("routes.toml");
    let (code, out, err) = run_cli(&["types", "-c", config.to_str().unwrap()], None, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("learnybox formation.terminee: 2 event(s)") && out.contains("no route (stored unrouted)"),
        "{out}"
    );
    assert!(out.contains("learnybox contact.subscribed: 1 event(s)") && out.contains("routes crm"), "{out}");
    assert!(out.contains("\"formation\"") && !out.contains("Camille"), "{out}");
    let (code, out, _) = run_cli(&["types", "-c", config.to_str().unwrap(), "--json"], None, &[]);
    assert_eq!(code, 0);
    let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(printed["types"].as_array().unwrap().len(), 2);
}
