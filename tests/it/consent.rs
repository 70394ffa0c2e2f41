//! Consent as Learnybox means it, per connector, against the vendor stand-ins: a
//! `contact.unsubscribed` ("unsubscribed from a list") acts on one list where the vendor has lists
//! and is recorded without a global opt-out where it has none; `contact.marked_as_spam` is a
//! global opt-out everywhere; `UNSUBSCRIBE_SCOPE=global` makes unsubscribes global; buyers are not
//! put on marketing lists unless asked; a refund changes only the stage of the sale's deal; and a
//! Google Sheets row is delivered only when the script says it wrote it.

use serde_json::{json, Value};

use crate::helpers::*;
use crate::multistep::{contact_event, sale_event, Relay, PD_FIELD, PD_UNSUBSCRIBED};
use crate::vendors::Vendor;

fn unsubscribe(id: &str, email: &str) -> Value {
    let mut e = contact_event(id, email);
    e["event"] = "contact.unsubscribed".into();
    e
}

fn spam(id: &str, email: &str) -> Value {
    let mut e = contact_event(id, email);
    e["event"] = "contact.marked_as_spam".into();
    e
}

fn refund(id: &str, email: &str, tx: &str) -> Value {
    let mut e = sale_event(id, email, tx);
    e["event"] = "transaction.refunded".into();
    e["data"]["transaction"]["amount"] = json!(0);
    e["data"]["transaction"]["products"] = json!([{"name": "Remboursement"}]);
    e
}

/// Sends `events` in order, each delivered before the next.
/// Ann signs up then leaves the list; Bob signs up then marks a message as spam.
fn ann_unsubscribes_bob_complains() -> Vec<Value> {
    vec![
        contact_event("c1", "ann@example.com"),
        unsubscribe("u1", "ann@example.com"),
        contact_event("c2", "bob@example.com"),
        spam("s1", "bob@example.com"),
    ]
}

async fn send_all(relay: &Relay, events: &[Value]) {
    for (n, e) in events.iter().enumerate() {
        relay.send(e).await;
        relay.wait_for("delivered", n + 1).await;
    }
}

async fn hubspot(api: &Vendor, scope: Option<&str>) -> Relay {
    let url = api.serve();
    let mut env = vec![("HUBSPOT_BASE_URL", url.as_str()), ("HUBSPOT_ACCESS_TOKEN", "hs-token")];
    env.push(("HUBSPOT_SUBSCRIPTION_ID", "7898721"));
    if let Some(scope) = scope {
        env.push(("UNSUBSCRIBE_SCOPE", scope));
    }
    Relay::start("hubspot", &env).await
}

#[tokio::test]
async fn hubspot_an_unsubscribe_leaves_one_subscription_type_and_spam_leaves_all() {
    let api = Vendor::new("hubspot");
    let relay = hubspot(&api, None).await;
    send_all(&relay, &[unsubscribe("u1", "ann@example.com"), spam("s1", "bob@example.com")]).await;
    let world = api.world.lock().unwrap();
    let ann = &world.contacts["ann@example.com"];
    assert_eq!(ann["subscriptions"], json!({"7898721": "UNSUBSCRIBED"}), "{ann}");
    assert!(ann.get("unsubscribed_from_all").is_none(), "a list unsubscribe is not a global opt-out: {ann}");
    assert_eq!(world.contacts["bob@example.com"]["unsubscribed_from_all"], true);
    assert!(world.contacts["bob@example.com"].get("subscriptions").is_none());
    assert!(world.violations.is_empty(), "{:?}", world.violations);
}

#[tokio::test]
async fn hubspot_with_a_global_scope_an_unsubscribe_leaves_all() {
    let api = Vendor::new("hubspot");
    let relay = hubspot(&api, Some("global")).await;
    send_all(&relay, &[unsubscribe("u1", "ann@example.com")]).await;
    let world = api.world.lock().unwrap();
    assert_eq!(world.contacts["ann@example.com"]["unsubscribed_from_all"], true);
    assert!(world.contacts["ann@example.com"].get("subscriptions").is_none());
}

#[test]
fn hubspot_without_a_subscription_id_check_says_what_to_set() {
    let env = [
        ("LEARNYBOX_SECRET_KEY", SECRET),
        ("HUBSPOT_ACCESS_TOKEN", "hs-token"),
        ("LBX_ADMIN_TOKEN", "an-admin-token-of-some-length"),
    ];
    let config = format!("{}/examples/hubspot.toml", env!("CARGO_MANIFEST_DIR"));
    let (code, out, err) = run_cli(&["check", "-c", &config], None, &env);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("environment variable HUBSPOT_SUBSCRIPTION_ID is not set"), "{out}");
    // Set but empty: the list unsubscribe names it instead of sending a request without it.
    let mut empty = env.to_vec();
    empty.push(("HUBSPOT_SUBSCRIPTION_ID", ""));
    let (code, out, err) = run_cli(&["check", "-c", &config], None, &empty);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("vars.subscription_id is required: set HUBSPOT_SUBSCRIPTION_ID"), "{out}");
    empty.push(("UNSUBSCRIBE_SCOPE", "global"));
    let (code, out, err) = run_cli(&["check", "-c", &config], None, &empty);
    assert_eq!(code, 0, "with a global scope it is not needed: {out}{err}");
}

#[tokio::test]
async fn hubspot_sale_then_refund_is_one_deal_with_its_stage_changed_and_its_amount_kept() {
    let api = Vendor::new("hubspot");
    let relay = hubspot(&api, None).await;
    send_all(&relay, &[sale_event("h1", "buyer@example.com", "TX-1"), refund("h2", "buyer@example.com", "TX-1")]).await;
    let world = api.world.lock().unwrap();
    assert_eq!(world.deals.len(), 1, "{:?}", world.deals);
    let deal = &world.deals["TX-1"]["properties"];
    assert_eq!(deal["dealstage"], "closedlost");
    assert_eq!(deal["amount"], "49", "the sale's amount stays: {deal}");
    assert_eq!(deal["dealname"], "Cours (TX-1)", "the sale's name stays: {deal}");
    assert!(world.violations.is_empty(), "{:?}", world.violations);
    let calls: Vec<&str> = world.calls.iter().map(|(id, _)| id.split('@').next().unwrap()).collect();
    assert_eq!(
        calls,
        [
            "contacts.batch_upsert",
            "deals.batch_upsert",
            "associations.default",
            "contacts.batch_upsert",
            "deals.batch_update"
        ]
    );
}

#[tokio::test]
async fn hubspot_a_refund_of_a_sale_hubspot_never_had_is_a_failure_not_a_silent_success() {
    let api = Vendor::new("hubspot");
    let relay = hubspot(&api, None).await;
    relay.send(&refund("h9", "buyer@example.com", "TX-404")).await;
    let failed = relay.wait_for("failed", 1).await;
    assert!(failed[0]["last_error"].as_str().unwrap().contains("success.status: HTTP 207"), "{}", failed[0]);
    assert!(api.world.lock().unwrap().deals.is_empty(), "no deal is created by a refund");
}

async fn brevo(api: &Vendor, extra: &[(&str, &str)]) -> Relay {
    let url = api.serve();
    let mut env = vec![("BREVO_BASE_URL", url.as_str()), ("BREVO_API_KEY", "xkeysib-k"), ("BREVO_LIST_ID", "7")];
    env.extend_from_slice(extra);
    Relay::start("brevo", &env).await
}

#[tokio::test]
async fn brevo_an_unsubscribe_leaves_the_list_and_spam_blocklists() {
    let api = Vendor::new("brevo");
    let relay = brevo(&api, &[]).await;
    let mut events = ann_unsubscribes_bob_complains();
    events.push(unsubscribe("u2", "nobody@example.com"));
    send_all(&relay, &events).await;
    let world = api.world.lock().unwrap();
    let ann = &world.contacts["ann@example.com"];
    assert_eq!((&ann["lists"], &ann["emailBlacklisted"]), (&json!([]), &json!(false)), "{ann}");
    assert_eq!(world.contacts["bob@example.com"]["emailBlacklisted"], true);
    assert!(!world.contacts.contains_key("nobody@example.com"), "not created just to leave a list");
    assert!(world.violations.is_empty(), "{:?}", world.violations);
}

#[tokio::test]
async fn brevo_buyers_join_the_list_only_when_asked_and_attribute_names_are_settings() {
    let api = Vendor::new("brevo");
    let relay = brevo(&api, &[("BREVO_FIRSTNAME_ATTRIBUTE", "PRENOM"), ("BREVO_LASTNAME_ATTRIBUTE", "NOM")]).await;
    send_all(&relay, &[sale_event("b1", "buyer@example.com", "TX-1"), contact_event("c1", "sub@example.com")]).await;
    {
        let world = api.world.lock().unwrap();
        assert_eq!(world.contacts["buyer@example.com"]["lists"], json!([]), "a sale is not consent to marketing");
        assert_eq!(world.contacts["sub@example.com"]["lists"], json!([7]));
        assert_eq!(world.contacts["sub@example.com"]["attributes"], json!({"PRENOM": "Zoë", "NOM": "Lefèvre"}));
    }
    let api = Vendor::new("brevo");
    let relay = brevo(&api, &[("BUYERS_TO_MARKETING", "true")]).await;
    send_all(&relay, &[sale_event("b1", "buyer@example.com", "TX-1")]).await;
    assert_eq!(api.world.lock().unwrap().contacts["buyer@example.com"]["lists"], json!([7]));
}

#[tokio::test]
async fn brevo_with_a_global_scope_an_unsubscribe_blocklists() {
    let api = Vendor::new("brevo");
    let relay = brevo(&api, &[("UNSUBSCRIBE_SCOPE", "global")]).await;
    send_all(&relay, &[contact_event("c1", "ann@example.com"), unsubscribe("u1", "ann@example.com")]).await;
    assert_eq!(api.world.lock().unwrap().contacts["ann@example.com"]["emailBlacklisted"], true);
}

#[tokio::test]
async fn mailchimp_an_unknown_contact_is_recorded_unsubscribed_and_a_new_buyer_is_transactional() {
    let api = Vendor::new("mailchimp");
    let url = api.serve();
    let relay = Relay::start(
        "mailchimp",
        &[("MAILCHIMP_BASE_URL", &url), ("MAILCHIMP_API_KEY", "mc-us21"), ("MAILCHIMP_LIST_ID", "a1b2c3")],
    )
    .await;
    send_all(
        &relay,
        &[
            unsubscribe("u1", "ann@example.com"),
            sale_event("b1", "ann@example.com", "TX-1"),
            sale_event("b2", "buyer@example.com", "TX-2"),
            contact_event("c1", "sub@example.com"),
        ],
    )
    .await;
    let world = api.world.lock().unwrap();
    let status = |email: &str| {
        let hash = format!("{:x}", <md5::Md5 as md5::Digest>::digest(email.as_bytes()));
        world.contacts[&hash]["status"].clone()
    };
    assert_eq!(status("ann@example.com"), "unsubscribed", "a later sale does not subscribe her");
    assert_eq!(status("buyer@example.com"), "transactional");
    assert_eq!(status("sub@example.com"), "subscribed");
    assert!(world.violations.is_empty(), "{:?}", world.violations);
    let paths: Vec<&str> = world.calls.iter().map(|(_, p)| p.as_str()).collect();
    assert!(world.calls.iter().all(|(id, _)| id.starts_with("members.upsert")), "{paths:?}");
}

async fn salesforce(api: &Vendor, scope: Option<&str>) -> Relay {
    let url = api.serve();
    let mut env = vec![
        ("SALESFORCE_INSTANCE_URL", url.as_str()),
        ("SALESFORCE_CLIENT_ID", "sf-id"),
        ("SALESFORCE_CLIENT_SECRET", "sf-secret"),
        ("SALESFORCE_ACCOUNT_ID", "001000000000001AAA"),
    ];
    if let Some(scope) = scope {
        env.push(("UNSUBSCRIBE_SCOPE", scope));
    }
    Relay::start("salesforce", &env).await
}

#[tokio::test]
async fn salesforce_an_unsubscribe_is_recorded_without_email_opt_out_and_spam_opts_out() {
    let api = Vendor::new("salesforce");
    let relay = salesforce(&api, None).await;
    send_all(&relay, &ann_unsubscribes_bob_complains()).await;
    let world = api.world.lock().unwrap();
    let ann = &world.contacts["ann@example_com"];
    assert!(ann.get("HasOptedOutOfEmail").is_none(), "{ann}");
    assert!(ann["Learnybox_Unsubscribed_On__c"].as_str().is_some_and(|d| d.len() == 10), "{ann}");
    assert_eq!(ann["AccountId"], "001000000000001AAA", "visible beyond the integration user");
    assert_eq!(world.contacts["bob@example_com"]["HasOptedOutOfEmail"], true);
    assert!(world.violations.is_empty(), "{:?}", world.violations);
}

#[tokio::test]
async fn salesforce_sale_then_refund_moves_the_stage_and_keeps_the_amount() {
    let api = Vendor::new("salesforce");
    let relay = salesforce(&api, Some("global")).await;
    send_all(&relay, &[sale_event("f1", "buyer@example.com", "TX-5"), refund("f2", "buyer@example.com", "TX-5")]).await;
    let world = api.world.lock().unwrap();
    assert_eq!(world.deals.len(), 1);
    let opp = &world.deals["TX-5"];
    assert_eq!((opp["StageName"].as_str(), opp["Amount"].as_i64()), (Some("Closed Lost"), Some(49)), "{opp}");
    assert_eq!(opp["Name"], "Cours (TX-5)");
    assert_eq!(opp["AccountId"], "001000000000001AAA");
}

#[tokio::test]
async fn pipedrive_an_unsubscribe_is_recorded_in_a_field_and_only_spam_changes_marketing_status() {
    let api = Vendor::new("pipedrive");
    let url = api.serve();
    let relay = Relay::start(
        "pipedrive",
        &[
            ("PIPEDRIVE_BASE_URL", &url),
            ("PIPEDRIVE_API_TOKEN", "pd-token"),
            ("PIPEDRIVE_TRANSACTION_FIELD", PD_FIELD),
            ("PIPEDRIVE_UNSUBSCRIBED_FIELD", PD_UNSUBSCRIBED),
        ],
    )
    .await;
    send_all(
        &relay,
        &[
            contact_event("c1", "ann@example.com"),
            unsubscribe("u1", "ann@example.com"),
            spam("s1", "bob@example.com"),
            sale_event("d1", "ann@example.com", "TX-9"),
            refund("d2", "ann@example.com", "TX-9"),
        ],
    )
    .await;
    let world = api.world.lock().unwrap();
    let ann = &world.contacts["ann@example.com"];
    assert_eq!(ann["marketing_status"], "subscribed", "the list unsubscribe did not spend the one change: {ann}");
    let recorded = ann["custom_fields"][PD_UNSUBSCRIBED].as_str().unwrap_or_default();
    assert!(recorded.starts_with("Learnybox: unsubscribed from a list on "), "{ann}");
    assert_eq!(world.contacts["bob@example.com"]["marketing_status"], "unsubscribed");
    let deal = &world.deals["TX-9"];
    assert_eq!((deal["status"].as_str(), deal["value"].as_i64()), (Some("lost"), Some(49)), "{deal}");
    assert!(world.violations.is_empty(), "{:?}", world.violations);
}

#[tokio::test]
async fn systemeio_an_unsubscribe_is_the_configured_tag() {
    let api = Vendor::new("systemeio");
    let url = api.serve();
    let relay = Relay::start(
        "systemeio",
        &[("SYSTEMEIO_BASE_URL", &url), ("SYSTEMEIO_API_KEY", "sy-key"), ("SYSTEMEIO_UNSUBSCRIBED_TAG_ID", "99")],
    )
    .await;
    send_all(&relay, &[contact_event("c1", "ann@example.com"), unsubscribe("u1", "ann@example.com")]).await;
    let world = api.world.lock().unwrap();
    assert_eq!(world.contacts["ann@example.com"]["tags"], json!([99]));
    assert!(world.violations.is_empty(), "{:?}", world.violations);
}

/// A stand-in for an Apps Script web app and its echo host, on one loopback server: `POST /exec`
/// answers 302 to `redirect_to` (with the echo path); `GET /macros/echo` answers `echo_body`.
struct AppsScript {
    url: String,
    rows: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

#[derive(Default)]
struct ScriptState {
    redirect_host: std::sync::Mutex<String>,
    echo_body: std::sync::Mutex<String>,
    rows: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

async fn script_handler(
    state: actix_web::web::Data<ScriptState>,
    req: actix_web::HttpRequest,
    body: actix_web::web::Bytes,
) -> actix_web::HttpResponse {
    if req.method() == actix_web::http::Method::POST {
        let host = state.redirect_host.lock().unwrap().clone();
        let writes = host.starts_with("127.0.0.1");
        if writes {
            state.rows.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or(Value::Null));
        }
        let location = format!("http://{host}/macros/echo?user_content_key=k1&lib=L");
        return actix_web::HttpResponse::Found().insert_header(("Location", location)).finish();
    }
    assert_eq!(req.uri().to_string(), "/macros/echo?user_content_key=k1&lib=L");
    actix_web::HttpResponse::Ok().content_type("application/json").body(state.echo_body.lock().unwrap().clone())
}

impl AppsScript {
    fn start(redirect_to_login: bool, echo_body: &str) -> AppsScript {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = std::sync::Arc::new(ScriptState::default());
        *state.redirect_host.lock().unwrap() =
            if redirect_to_login { "accounts.google.com".to_string() } else { addr.clone() };
        *state.echo_body.lock().unwrap() = echo_body.to_string();
        let rows = state.rows.clone();
        let url = serve_loopback(listener, state, script_handler);
        AppsScript { url, rows }
    }

    async fn relay(&self) -> Relay {
        Relay::start(
            "google-sheets",
            &[
                ("GOOGLE_SHEETS_WEBAPP_URL", &format!("{}/exec", self.url)),
                ("GOOGLE_SHEETS_ECHO_HOST", "127.0.0.1"),
                ("GOOGLE_SHEETS_ECHO_BASE_URL", &self.url),
            ],
        )
        .await
    }
}

#[tokio::test]
async fn google_sheets_is_delivered_only_when_the_script_says_ok() {
    let script = AppsScript::start(false, r#"{"ok":true}"#);
    let relay = script.relay().await;
    send_all(&relay, &[contact_event("g1", "ann@example.com")]).await;
    assert_eq!(script.rows.lock().unwrap().len(), 1);

    // Deployed for "Only myself": a 302 to the login page, nothing written — a dead letter.
    let login = AppsScript::start(true, "");
    let relay = login.relay().await;
    relay.send(&contact_event("g2", "ann@example.com")).await;
    let failed = relay.wait_for("failed", 1).await;
    let error = failed[0]["last_error"].as_str().unwrap();
    assert!(error.contains("redirects to accounts.google.com"), "{error}");
    assert!(login.rows.lock().unwrap().is_empty());

    // The script ran but could not write (a tab that does not exist): its own answer says so.
    let broken = AppsScript::start(false, r#"{"ok":false,"error":"no tab Learnybox"}"#);
    let relay = broken.relay().await;
    relay.send(&contact_event("g3", "ann@example.com")).await;
    let failed = relay.wait_for("failed", 1).await;
    let error = failed[0]["last_error"].as_str().unwrap();
    assert!(error.contains("step confirm") && error.contains("no tab Learnybox"), "{error}");
}
