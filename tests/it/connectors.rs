//! The connector pack, as a user runs it: every `examples/*.toml` passes `check` once its env vars
//! are set, and `render` yields the request each vendor documents, asserted field by field.

use serde_json::{json, Value};

use crate::helpers::*;

/// Every variable the examples name, with a plausible value.
pub const ENV: &[(&str, &str)] = &[
    ("LEARNYBOX_SECRET_KEY", SECRET),
    ("HUBSPOT_ACCESS_TOKEN", "pat-eu1-hubspot-secret"),
    ("BREVO_API_KEY", "xkeysib-brevo-secret"),
    ("ACTIVECAMPAIGN_BASE_URL", "https://acme.api-us1.com"),
    ("ACTIVECAMPAIGN_API_TOKEN", "ac-secret"),
    ("ACTIVECAMPAIGN_LIST_ID", "3"),
    ("MAILCHIMP_BASE_URL", "https://us21.api.mailchimp.com"),
    ("MAILCHIMP_API_KEY", "mc-secret-us21"),
    ("MAILCHIMP_LIST_ID", "a1b2c3"),
    ("SALESFORCE_INSTANCE_URL", "https://acme.my.salesforce.com"),
    ("SALESFORCE_CLIENT_ID", "sf-client"),
    ("SALESFORCE_CLIENT_SECRET", "sf-secret"),
    ("PIPEDRIVE_API_TOKEN", "pd-secret"),
    ("PIPEDRIVE_TRANSACTION_FIELD", "8f4e1c2b9a7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f"),
    ("SYSTEMEIO_API_KEY", "sy-secret"),
    ("SYSTEMEIO_UNSUBSCRIBED_TAG_ID", "99"),
    ("ZAPIER_WEBHOOK_URL", "https://hooks.zapier.com/hooks/catch/123/abc/"),
    ("MAKE_WEBHOOK_URL", "https://hook.eu1.make.com/xyz"),
    ("N8N_WEBHOOK_URL", "https://n8n.example.com/webhook/learnybox"),
    ("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T0/B0/secret"),
    ("GOOGLE_SHEETS_WEBAPP_URL", "https://script.google.com/macros/s/abc/exec"),
];

const CONNECTORS: &[&str] = &[
    "hubspot",
    "brevo",
    "activecampaign",
    "mailchimp",
    "salesforce",
    "pipedrive",
    "systemeio",
    "zapier",
    "make",
    "n8n",
    "slack",
    "google-sheets",
];

pub fn example(name: &str) -> String {
    format!("{}/examples/{name}.toml", env!("CARGO_MANIFEST_DIR"))
}

/// A sale by a contact with French field names, quotes and accents, and Learnybox tags.
fn sale() -> Value {
    json!({
        "event": "transaction.created", "id": "evt-sale-1",
        "data": {
            "contact": {"email": " Zoe.Lefevre@Example.COM ", "prenom": "Zoë \"Z\"", "nom": "Lefèvre",
                        "telephone": "+33 6 12 34 56 78", "tags": ["client", "webinar"]},
            "transaction": {"id": "TX-1", "amount": 97.5, "currency": "eur",
                            "products": [{"name": "Formation « Vendre »", "price": 97.5}]}
        }
    })
}

/// A new contact with English field names and no phone.
fn contact() -> Value {
    json!({
        "event": "contact.subscribed", "id": "evt-contact-1",
        "data": {"contact": {"email": "jj@example.org", "fname": "Jean", "lname": "O'Connor", "tags": []}}
    })
}

/// `render --json` of `route` in `connector` for `event` (and earlier answers, for steps).
fn render(connector: &str, route: &str, event: &Value, answers: Option<Value>) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let event_file = dir.path().join("event.json");
    std::fs::write(&event_file, event.to_string()).unwrap();
    let mut args =
        vec!["render".to_string(), "-c".into(), example(connector), "--route".into(), route.into(), "--json".into()];
    if let Some(a) = answers {
        let f = dir.path().join("answers.json");
        std::fs::write(&f, a.to_string()).unwrap();
        args.extend(["--answers".into(), f.display().to_string()]);
    }
    args.push(event_file.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run_cli(&args, None, ENV);
    assert_eq!(code, 0, "{connector} {route}: {err}");
    for (_, secret) in ENV.iter().filter(|(k, _)| k.ends_with("KEY") || k.ends_with("TOKEN") || k.ends_with("SECRET")) {
        if *secret != SECRET {
            assert!(!out.contains(secret), "{connector}: a secret was printed: {out}");
        }
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{connector}: {e}: {out}"))
}

/// The step named `name` of a multi-step render.
fn step<'a>(rendered: &'a Value, name: &str) -> &'a Value {
    rendered["steps"].as_array().unwrap().iter().find(|s| s["step"] == name).unwrap_or_else(|| panic!("no step {name}"))
}

#[test]
fn every_example_passes_check_once_its_variables_are_set() {
    for name in CONNECTORS {
        let (code, out, err) = run_cli(&["check", "-c", &example(name)], None, ENV);
        assert_eq!(code, 0, "{name}: {out}{err}");
        assert!(out.contains("OK"), "{name}: {out}");
        assert!(std::path::Path::new(&format!("{}/docs/connectors/{name}.md", env!("CARGO_MANIFEST_DIR"))).exists());
    }
    // Unset, the vendor's credentials are named (whatever the calling shell exports).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lbx-relay"))
        .args(["check", "-c", &example("hubspot")])
        .env_clear()
        .env("LEARNYBOX_SECRET_KEY", SECRET)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("HUBSPOT_ACCESS_TOKEN"), "{out}");
}

#[test]
fn hubspot_upserts_contacts_by_email_and_records_sales_as_deals() {
    let r = render("hubspot", "hubspot-contacts", &contact(), None);
    assert_eq!(r["method"], "POST");
    assert_eq!(r["url"], "https://api.hubapi.com/crm/v3/objects/contacts/batch/upsert");
    assert_eq!(r["headers"]["Authorization"], "***");
    let input = &r["body"]["inputs"][0];
    assert_eq!(input["idProperty"], "email");
    assert_eq!(input["id"], "jj@example.org");
    assert_eq!(input["properties"]["firstname"], "Jean");
    assert_eq!(input["properties"]["lastname"], "O'Connor");
    let answers = json!({"contact": {"status": 200, "body": {"results": [{"id": "901"}]}}});
    let sale = render("hubspot", "hubspot-sales", &sale(), Some(answers));
    let deal = step(&sale, "deal");
    assert_eq!(deal["url"], "https://api.hubapi.com/crm/v3/objects/deals");
    assert_eq!(deal["body"]["properties"]["amount"], "97.5");
    assert_eq!(deal["body"]["properties"]["deal_currency_code"], "EUR");
    assert_eq!(deal["body"]["properties"]["dealstage"], "closedwon");
    assert_eq!(deal["body"]["properties"]["dealname"], "Formation « Vendre » (TX-1)");
    assert_eq!(deal["body"]["associations"][0]["to"]["id"], "901");
    assert_eq!(deal["body"]["associations"][0]["types"][0]["associationTypeId"], 3);
}

#[test]
fn brevo_creates_or_updates_the_contact_in_a_list() {
    let r = render("brevo", "brevo-contacts", &sale(), None);
    assert_eq!((r["method"].as_str(), r["url"].as_str()), (Some("POST"), Some("https://api.brevo.com/v3/contacts")));
    assert_eq!(r["headers"]["api-key"], "***");
    assert_eq!(r["body"]["email"], "zoe.lefevre@example.com");
    assert_eq!(r["body"]["attributes"]["FIRSTNAME"], "Zoë \"Z\"");
    assert_eq!(r["body"]["attributes"]["LASTNAME"], "Lefèvre");
    assert_eq!(r["body"]["updateEnabled"], true);
    assert_eq!(r["body"]["listIds"], json!([2]));
}

#[test]
fn activecampaign_syncs_the_contact() {
    let r = render("activecampaign", "activecampaign-contacts", &sale(), None);
    assert_eq!(r["method"], "POST");
    assert_eq!(r["url"], "https://acme.api-us1.com/api/3/contact/sync");
    assert_eq!(r["headers"]["Api-Token"], "***");
    let c = &r["body"]["contact"];
    assert_eq!((c["email"].as_str(), c["firstName"].as_str()), (Some("zoe.lefevre@example.com"), Some("Zoë \"Z\"")));
    assert_eq!((c["lastName"].as_str(), c["phone"].as_str()), (Some("Lefèvre"), Some("+33 6 12 34 56 78")));
}

#[test]
fn mailchimp_puts_the_member_at_the_md5_of_its_lowercase_email_then_tags_it() {
    let r = render("mailchimp", "mailchimp-members", &sale(), None);
    let member = step(&r, "member");
    let expected_hash = {
        use md5::{Digest, Md5};
        hex::encode(Md5::digest(b"zoe.lefevre@example.com"))
    };
    assert_eq!(member["method"], "PUT");
    assert_eq!(member["url"], format!("https://us21.api.mailchimp.com/3.0/lists/a1b2c3/members/{expected_hash}"));
    assert!(member["headers"]["Authorization"] == "***", "basic auth, masked");
    assert_eq!(member["body"]["email_address"], "zoe.lefevre@example.com");
    assert_eq!(member["body"]["status_if_new"], "subscribed");
    assert_eq!(member["body"]["merge_fields"]["FNAME"], "Zoë \"Z\"");
    let tags = step(&r, "tags");
    assert_eq!(tags["sent"], true);
    assert_eq!(tags["url"], format!("https://us21.api.mailchimp.com/3.0/lists/a1b2c3/members/{expected_hash}/tags"));
    assert_eq!(
        tags["body"]["tags"],
        json!([{"name": "client", "status": "active"}, {"name": "webinar", "status": "active"}])
    );
    assert_eq!(step(&render("mailchimp", "mailchimp-members", &contact(), None), "tags")["sent"], false);
    let mut unsub = contact();
    unsub["event"] = "contact.unsubscribed".into();
    let u = render("mailchimp", "mailchimp-unsubscribes", &unsub, None);
    assert_eq!(u["method"], "PATCH");
    assert_eq!(u["body"], json!({"status": "unsubscribed"}));
}

#[test]
fn salesforce_upserts_by_external_id_with_patch_and_an_oauth_token() {
    let r = render("salesforce", "salesforce-contacts", &contact(), None);
    assert_eq!(r["method"], "PATCH");
    assert_eq!(
        r["url"],
        "https://acme.my.salesforce.com/services/data/v60.0/sobjects/Contact/Learnybox_Email__c/jj%40example.org"
    );
    assert_eq!(r["headers"]["Authorization"], "***");
    assert_eq!(r["body"]["LastName"], "O'Connor");
    assert_eq!(r["body"]["Email"], "jj@example.org");
    assert!(r["body"].get("Learnybox_Email__c").is_none(), "the external id travels in the URL only");
}

#[test]
fn pipedrive_searches_then_creates_or_updates_then_adds_the_deal() {
    let none = render(
        "pipedrive",
        "pipedrive-persons",
        &sale(),
        Some(json!({"search": {"status": 200, "body": {"data": {"items": []}}}})),
    );
    let search = step(&none, "search");
    assert_eq!(search["method"], "GET");
    assert_eq!(
        search["url"],
        "https://api.pipedrive.com/v1/persons/search?term=zoe.lefevre%40example.com&fields=email&exact_match=true&limit=1"
    );
    assert_eq!(search["headers"]["x-api-token"], "***");
    assert_eq!(
        (step(&none, "create")["sent"].as_bool(), step(&none, "update")["sent"].as_bool()),
        (Some(true), Some(false))
    );
    let create = step(&none, "create");
    assert_eq!(create["body"]["name"], "Zoë \"Z\" Lefèvre");
    assert_eq!(create["body"]["email"][0]["value"], "zoe.lefevre@example.com");
    assert_eq!(create["body"]["phone"][0]["value"], "+33 6 12 34 56 78");

    let found = json!({"search": {"status": 200, "body": {"data": {"items": [{"item": {"id": 42}}]}}}});
    let found = render("pipedrive", "pipedrive-persons", &sale(), Some(found));
    assert_eq!(
        (step(&found, "create")["sent"].as_bool(), step(&found, "update")["sent"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(step(&found, "update")["method"], "PUT");
    assert_eq!(step(&found, "update")["url"], "https://api.pipedrive.com/v1/persons/42");
    let deal = step(&found, "deal");
    assert_eq!(deal["body"]["person_id"], 42);
    assert_eq!(deal["body"]["value"], 97.5);
    assert_eq!(deal["body"]["currency"], "EUR");
    assert_eq!(step(&render("pipedrive", "pipedrive-persons", &contact(), None), "deal")["sent"], false);
}

#[test]
fn systemeio_creates_and_on_422_finds_and_merge_patches() {
    let fresh = render(
        "systemeio",
        "systemeio-contacts",
        &contact(),
        Some(json!({"create": {"status": 201, "body": {"id": 5}}})),
    );
    let create = step(&fresh, "create");
    assert_eq!(
        (create["method"].as_str(), create["url"].as_str()),
        (Some("POST"), Some("https://api.systeme.io/api/contacts"))
    );
    assert_eq!(create["headers"]["X-API-Key"], "***");
    assert_eq!(create["body"]["email"], "jj@example.org");
    assert_eq!(create["body"]["fields"][0], json!({"slug": "first_name", "value": "Jean"}));
    assert_eq!(step(&fresh, "search")["sent"], false);
    let taken =
        json!({"create": {"status": 422, "body": {}}, "search": {"status": 200, "body": {"items": [{"id": 77}]}}});
    let taken = render("systemeio", "systemeio-contacts", &contact(), Some(taken));
    assert_eq!(step(&taken, "search")["url"], "https://api.systeme.io/api/contacts?email=jj%40example.org");
    let update = step(&taken, "update");
    assert_eq!((update["method"].as_str(), update["sent"].as_bool()), (Some("PATCH"), Some(true)));
    assert_eq!(update["url"], "https://api.systeme.io/api/contacts/77");
    assert_eq!(update["headers"]["Content-Type"], "application/merge-patch+json");
    assert_eq!(update["body"]["fields"][1], json!({"slug": "surname", "value": "O'Connor"}));
}

#[test]
fn automation_hooks_get_the_contact_and_the_sale() {
    let z = render("zapier", "zapier", &sale(), None);
    assert_eq!(
        (z["method"].as_str(), z["url"].as_str()),
        (Some("POST"), Some("https://hooks.zapier.com/hooks/catch/123/abc/"))
    );
    assert_eq!(z["body"]["email"], "zoe.lefevre@example.com");
    assert_eq!(z["body"]["first_name"], "Zoë \"Z\"");
    assert_eq!(z["body"]["tags"], "client, webinar");
    assert_eq!(z["body"]["amount"], 97.5);
    assert_eq!(z["body"]["product"], "Formation « Vendre »");
    let m = render("make", "make", &sale(), None);
    assert_eq!(m["url"], "https://hook.eu1.make.com/xyz");
    assert_eq!(m["body"]["contact"]["tags"], json!(["client", "webinar"]));
    assert_eq!(m["body"]["sale"]["amount"], 97.5);
    assert_eq!(m["body"]["raw"], sale());
    assert_eq!(render("make", "make", &contact(), None)["body"]["sale"], Value::Null);
    let n = render("n8n", "n8n", &contact(), None);
    assert_eq!(n["url"], "https://n8n.example.com/webhook/learnybox");
    assert_eq!(n["body"]["contact"]["last_name"], "O'Connor");
    assert_eq!(n["body"]["data"], contact());
}

#[test]
fn slack_gets_one_line_of_text() {
    let s = render("slack", "slack", &sale(), None);
    assert_eq!(s["url"], "https://hooks.slack.com/services/T0/B0/secret");
    assert_eq!(s["body"].as_object().unwrap().len(), 1, "only text");
    let text = s["body"]["text"].as_str().unwrap();
    assert!(text.contains("97.5 eur") && text.contains("Formation « Vendre »"), "{text}");
    assert!(text.contains("zoe.lefevre@example.com"), "{text}");
}

#[test]
fn google_sheets_appends_a_row() {
    let g = render("google-sheets", "google-sheets", &sale(), None);
    assert_eq!(g["url"], "https://script.google.com/macros/s/abc/exec");
    assert_eq!(g["body"]["sheet"], "Learnybox");
    let row = g["body"]["row"].as_array().unwrap();
    assert_eq!(row[1], "transaction.created");
    assert_eq!(row[3], "zoe.lefevre@example.com");
    assert_eq!(row[7], 97.5);
    assert_eq!(row[9], "Formation « Vendre »");
}
