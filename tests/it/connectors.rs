//! The connector pack, as a user runs it: every `examples/*.toml` passes `check` once its env vars
//! are set, and `render` yields the request each vendor documents, asserted field by field.

use serde_json::{json, Value};

use crate::helpers::*;

/// Every variable the examples name, with a plausible value.
pub const ENV: &[(&str, &str)] = &[
    ("LEARNYBOX_SECRET_KEY", SECRET),
    ("HUBSPOT_ACCESS_TOKEN", "pat-eu1-hubspot-secret"),
    ("BREVO_API_KEY", "xkeysib-brevo-secret"),
    ("BREVO_LIST_ID", "7"),
    ("HUBSPOT_SUBSCRIPTION_ID", "7898721"),
    ("SALESFORCE_ACCOUNT_ID", "001000000000001AAA"),
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
    ("PIPEDRIVE_UNSUBSCRIBED_FIELD", "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b"),
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
fn hubspot_upserts_contacts_by_email_and_sales_as_deals_keyed_on_the_transaction() {
    let r = render("hubspot", "hubspot-contacts", &contact(), None);
    assert_eq!(r["method"], "POST");
    assert_eq!(r["url"], "https://api.hubapi.com/crm/objects/2026-09/contacts/batch/upsert");
    assert_eq!(r["headers"]["Authorization"], "***");
    let input = &r["body"]["inputs"][0];
    assert_eq!((input["idProperty"].as_str(), input["id"].as_str()), (Some("email"), Some("jj@example.org")));
    assert_eq!(input["properties"]["lastname"], "O'Connor");
    assert!(input["properties"].get("phone").is_none(), "no phone in the event: none sent, HubSpot's kept");
    let answers = json!({"contact": {"status": 200, "body": {"results": [{"id": "901"}]}},
                         "deal": {"status": 200, "body": {"results": [{"id": "77"}]}}});
    let sale = render("hubspot", "hubspot-sales", &sale(), Some(answers));
    let deal = step(&sale, "deal");
    assert_eq!(deal["url"], "https://api.hubapi.com/crm/objects/2026-09/deals/batch/upsert");
    let input = &deal["body"]["inputs"][0];
    assert_eq!((input["idProperty"].as_str(), input["id"].as_str()), (Some("lbx_transaction_id"), Some("TX-1")));
    assert_eq!(input["properties"]["amount"], "97.5");
    assert_eq!(input["properties"]["dealstage"], "closedwon");
    assert_eq!(
        step(&sale, "associate")["url"],
        "https://api.hubapi.com/crm/objects/2026-09/deals/77/associations/default/contacts/901"
    );
    // A list unsubscribe leaves one subscription type; spam leaves all e-mail.
    let mut unsub = contact();
    unsub["event"] = "contact.unsubscribed".into();
    let u = render("hubspot", "hubspot-unsubscribes", &unsub, None);
    let one = step(&u, "unsubscribe_one");
    assert_eq!(one["url"], "https://api.hubapi.com/communication-preferences/2026-09/statuses/jj%40example.org");
    assert_eq!(one["body"], json!({"channel": "EMAIL", "statusState": "UNSUBSCRIBED", "subscriptionId": 7898721}));
    assert_eq!((one["sent"].as_bool(), step(&u, "unsubscribe_all")["sent"].as_bool()), (Some(true), Some(false)));
    unsub["event"] = "contact.marked_as_spam".into();
    let all = render("hubspot", "hubspot-unsubscribes", &unsub, None);
    let all = step(&all, "unsubscribe_all");
    assert_eq!(
        all["url"],
        "https://api.hubapi.com/communication-preferences/2026-09/statuses/jj%40example.org/unsubscribe-all?channel=EMAIL"
    );
    assert_eq!((all["sent"].as_bool(), &all["body"]), (Some(true), &Value::Null));
}

#[test]
fn brevo_creates_or_updates_the_contact_in_a_list_and_blocklists_unsubscribes() {
    let r = render("brevo", "brevo-contacts", &sale(), None);
    assert_eq!((r["method"].as_str(), r["url"].as_str()), (Some("POST"), Some("https://api.brevo.com/v3/contacts")));
    assert_eq!(r["headers"]["api-key"], "***");
    assert_eq!(r["body"]["email"], "zoe.lefevre@example.com");
    assert_eq!(r["body"]["attributes"]["FIRSTNAME"], "Zoë \"Z\"");
    assert_eq!(r["body"]["updateEnabled"].as_bool(), Some(true));
    assert!(r["body"].get("listIds").is_none(), "a buyer is not put on the marketing list: {}", r["body"]);
    let c = render("brevo", "brevo-contacts", &contact(), None);
    assert_eq!(c["body"]["listIds"], json!([7]), "a subscriber joins BREVO_LIST_ID");
    let mut unsub = contact();
    unsub["event"] = "contact.unsubscribed".into();
    let u = render("brevo", "brevo-unsubscribes", &unsub, None);
    let leave = step(&u, "leave_list");
    assert_eq!(leave["url"], "https://api.brevo.com/v3/contacts/jj%40example.org?identifierType=email_id");
    assert_eq!((leave["method"].as_str(), &leave["body"]), (Some("PUT"), &json!({"unlinkListIds": [7]})));
    assert_eq!(step(&u, "blocklist")["sent"], false, "a list unsubscribe is not a blocklisting");
    unsub["event"] = "contact.marked_as_spam".into();
    let u = render("brevo", "brevo-unsubscribes", &unsub, None);
    assert_eq!(step(&u, "leave_list")["sent"], false);
    let block = step(&u, "blocklist");
    assert_eq!(block["body"], json!({"email": "jj@example.org", "emailBlacklisted": true, "updateEnabled": true}));
}

#[test]
fn render_without_answers_shows_the_first_step_and_later_ones_as_waiting() {
    let r = render("activecampaign", "activecampaign-contacts", &contact(), None);
    let sync = step(&r, "sync");
    assert!(sync.get("waits_for_answers").is_none(), "the first step is whole: {sync}");
    assert_eq!(sync["body"]["contact"]["email"], "jj@example.org");
    let list = step(&r, "list");
    assert_eq!(list["waits_for_answers"], true, "its contact id comes from the sync's answer: {list}");
}

#[test]
fn activecampaign_syncs_the_contact_then_its_list_status() {
    let answers = json!({"sync": {"status": 201, "body": {"contact": {"id": "55"}}}});
    let r = render("activecampaign", "activecampaign-contacts", &contact(), Some(answers.clone()));
    let sync = step(&r, "sync");
    assert_eq!(sync["url"], "https://acme.api-us1.com/api/3/contact/sync");
    assert_eq!(sync["headers"]["Api-Token"], "***");
    assert_eq!(sync["body"]["contact"]["lastName"], "O'Connor");
    let list = step(&r, "list");
    assert_eq!(list["sent"], true);
    assert_eq!(list["body"], json!({"contactList": {"list": "3", "contact": "55", "status": 1}}));
    let mut unsub = contact();
    unsub["event"] = "contact.unsubscribed".into();
    let u = render("activecampaign", "activecampaign-unsubscribes", &unsub, Some(answers));
    assert_eq!(step(&u, "list")["body"]["contactList"]["status"], 2);
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
    assert_eq!(
        member["url"],
        format!("https://us21.api.mailchimp.com/3.0/lists/a1b2c3/members/{expected_hash}?skip_merge_validation=true")
    );
    assert!(member["headers"]["Authorization"] == "***", "basic auth, masked");
    assert_eq!(member["body"]["status_if_new"], "transactional", "a new buyer gets no marketing");
    let sub = step(&render("mailchimp", "mailchimp-members", &contact(), None), "member").clone();
    assert_eq!(sub["body"]["status_if_new"], "subscribed");
    let tags = step(&r, "tags");
    assert_eq!(
        tags["body"]["tags"],
        json!([{"name": "client", "status": "active"}, {"name": "webinar", "status": "active"}])
    );
    let mut removed = contact();
    removed["event"] = "contact.tag_removed".into();
    removed["data"]["tag"] = json!({"name": "VIP"});
    let t = step(&render("mailchimp", "mailchimp-members", &removed, None), "tags").clone();
    assert_eq!(t["body"]["tags"], json!([{"name": "VIP", "status": "inactive"}]));
    let mut unsub = contact();
    unsub["event"] = "contact.unsubscribed".into();
    let u = render("mailchimp", "mailchimp-unsubscribes", &unsub, None);
    assert_eq!(
        (u["method"].as_str(), &u["body"]),
        (
            Some("PUT"),
            &json!({"email_address": "jj@example.org", "status_if_new": "unsubscribed", "status": "unsubscribed"})
        )
    );
}

#[test]
fn salesforce_updates_without_placeholders_and_creates_only_what_it_did_not_find() {
    let found = json!({"contact_update": {"status": 200, "body": {"id": "003A", "created": false}}});
    let r = render("salesforce", "salesforce-contacts", &contact(), Some(found));
    let update = step(&r, "contact_update");
    assert_eq!(update["method"], "PATCH");
    assert_eq!(
        update["url"],
        "https://acme.my.salesforce.com/services/data/v68.0/sobjects/Contact/Learnybox_Email__c/jj@example_org?updateOnly=true",
        "the key's domain has '_' for '.', Salesforce's workaround for TLDs read as formats"
    );
    assert_eq!(update["headers"]["Authorization"], "***");
    assert_eq!(update["body"], json!({"FirstName": "Jean", "LastName": "O'Connor", "Email": "jj@example.org"}));
    assert_eq!(step(&r, "contact_create")["sent"], false);
    let mut nameless = contact();
    nameless["data"]["contact"] = json!({"email": "new@example.org"});
    let missing = json!({"contact_update": {"status": 404, "body": [{"errorCode": "NOT_FOUND"}]}});
    let r = render("salesforce", "salesforce-contacts", &nameless, Some(missing));
    assert_eq!(step(&r, "contact_update")["body"], json!({"Email": "new@example.org"}), "no placeholder on update");
    let create = step(&r, "contact_create");
    assert_eq!(create["sent"], true);
    assert_eq!(create["body"]["LastName"], "(Learnybox)", "the placeholder only where Salesforce requires it");
    assert_eq!(create["body"]["LeadSource"], "Learnybox");
    assert_eq!(create["body"]["AccountId"], "001000000000001AAA");
    let answers = json!({"contact_update": {"status": 200, "body": {"id": "003A"}},
                         "opportunity_update": {"status": 404, "body": [{"errorCode": "NOT_FOUND"}]}});
    let s = render("salesforce", "salesforce-sales", &sale(), Some(answers));
    let opp = step(&s, "opportunity_create");
    assert_eq!(
        opp["url"],
        "https://acme.my.salesforce.com/services/data/v68.0/sobjects/Opportunity/Learnybox_Transaction_Id__c/TX-1"
    );
    assert_eq!(
        (opp["body"]["StageName"].as_str(), opp["body"]["ContactId"].as_str()),
        (Some("Closed Won"), Some("003A"))
    );
}

#[test]
fn pipedrive_uses_api_v2_and_keys_deals_on_the_transaction_field() {
    let none = json!({"search": {"status": 200, "body": {"data": {"items": []}}},
                      "create": {"status": 201, "body": {"data": {"id": 42}}},
                      "deal_search": {"status": 200, "body": {"data": {"items": []}}}});
    let r = render("pipedrive", "pipedrive", &sale(), Some(none));
    let search = step(&r, "search");
    assert_eq!(
        search["url"],
        "https://api.pipedrive.com/api/v2/persons/search?term=zoe.lefevre%40example.com&fields=email&exact_match=true&limit=1"
    );
    assert_eq!(search["headers"]["x-api-token"], "***");
    let create = step(&r, "create");
    assert_eq!(create["body"]["name"], "Zoë \"Z\" Lefèvre");
    assert_eq!(create["body"]["emails"][0]["value"], "zoe.lefevre@example.com");
    let deal = step(&r, "deal_create");
    assert_eq!(deal["url"], "https://api.pipedrive.com/api/v2/deals");
    assert_eq!((deal["body"]["person_id"].as_i64(), deal["body"]["status"].as_str()), (Some(42), Some("won")));
    assert_eq!(deal["body"]["custom_fields"]["8f4e1c2b9a7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f"], "TX-1");
    let found = json!({"search": {"status": 200, "body": {"data": {"items": [{"item": {"id": 42}}]}}},
                       "deal_search": {"status": 200, "body": {"data": {"items": [{"item": {"id": 9}}]}}}});
    let mut refund = sale();
    refund["event"] = "transaction.refunded".into();
    let r = render("pipedrive", "pipedrive", &refund, Some(found));
    assert_eq!(
        (step(&r, "update")["method"].as_str(), step(&r, "create")["sent"].as_bool()),
        (Some("PATCH"), Some(false))
    );
    let update = step(&r, "deal_update");
    assert_eq!(update["url"], "https://api.pipedrive.com/api/v2/deals/9");
    assert_eq!(update["body"]["status"], "lost");
    assert!(update["body"].get("value").is_none(), "a refund keeps the sale's value: {}", update["body"]);
    let mut unsub = contact();
    unsub["event"] = "contact.unsubscribed".into();
    let u = render(
        "pipedrive",
        "pipedrive",
        &unsub,
        Some(json!({"search": {"status": 200, "body": {"data": {"items": [{"item": {"id": 42}}]}}}})),
    );
    let body = &step(&u, "update")["body"];
    assert!(body.get("marketing_status").is_none(), "a list unsubscribe leaves the account-wide status: {body}");
    let recorded = body["custom_fields"]["1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b"].as_str().unwrap();
    assert!(recorded.starts_with("Learnybox: unsubscribed from a list on "), "{body}");
    unsub["event"] = "contact.marked_as_spam".into();
    let u = render(
        "pipedrive",
        "pipedrive",
        &unsub,
        Some(json!({"search": {"status": 200, "body": {"data": {"items": [{"item": {"id": 42}}]}}}})),
    );
    assert_eq!(step(&u, "update")["body"]["marketing_status"], "unsubscribed");
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
    assert_eq!(
        create["body"]["fields"],
        json!([{"slug": "first_name", "value": "Jean"}, {"slug": "surname", "value": "O'Connor"}])
    );
    assert_eq!(step(&fresh, "search")["sent"], false);
    let taken =
        json!({"create": {"status": 422, "body": {}}, "search": {"status": 200, "body": {"items": [{"id": 77}]}}});
    let taken = render("systemeio", "systemeio-contacts", &contact(), Some(taken));
    assert_eq!(step(&taken, "search")["url"], "https://api.systeme.io/api/contacts?email=jj%40example.org");
    let update = step(&taken, "update");
    assert_eq!(update["url"], "https://api.systeme.io/api/contacts/77");
    assert_eq!(update["headers"]["Content-Type"], "application/merge-patch+json");
}

#[test]
fn automation_hooks_get_the_contact_and_the_sale_without_empty_values() {
    let z = render("zapier", "zapier", &sale(), None);
    // The catch-hook URL is the credential (ZAPIER_WEBHOOK_URL): render never prints it.
    assert_eq!(z["url"], "***");
    assert_eq!(
        (z["body"]["email"].as_str(), z["body"]["tags"].as_str()),
        (Some("zoe.lefevre@example.com"), Some("client, webinar"))
    );
    assert_eq!(z["body"]["amount"], 97.5);
    let zc = render("zapier", "zapier", &contact(), None);
    assert!(zc["body"].get("phone").is_none() && zc["body"].get("amount").is_none(), "{}", zc["body"]);
    let m = render("make", "make", &sale(), None);
    assert_eq!(m["body"]["sale"]["amount"], 97.5);
    assert_eq!(m["body"]["raw"], sale());
    assert!(render("make", "make", &contact(), None)["body"].get("sale").is_none());
    let n = render("n8n", "n8n", &contact(), None);
    assert_eq!(n["body"]["contact"]["last_name"], "O'Connor");
}

#[test]
fn slack_text_shows_contact_data_as_typed_never_as_markup() {
    let mut hostile = sale();
    hostile["data"]["contact"]["prenom"] = json!("<!channel> & co");
    let s = render("slack", "slack", &hostile, None);
    assert_eq!(s["body"].as_object().unwrap().len(), 1, "only text");
    let text = s["body"]["text"].as_str().unwrap();
    assert!(text.contains("&lt;!channel&gt; &amp; co"), "{text}");
    assert!(text.contains("(zoe.lefevre@example.com)") && !text.contains("<zoe"), "{text}");
}

#[test]
fn google_sheets_rows_never_carry_a_formula() {
    let mut hostile = sale();
    hostile["data"]["contact"]["prenom"] = json!("=IMPORTXML(\"https://evil\")");
    hostile["data"]["contact"]["telephone"] = json!("+33 6 12 34 56 78");
    let rendered = render("google-sheets", "google-sheets", &hostile, None);
    let g = step(&rendered, "row");
    assert_eq!(g["url"], "https://script.google.com/macros/s/abc/exec");
    let confirm = step(&rendered, "confirm");
    assert_eq!((confirm["method"].as_str(), confirm["waits_for_answers"].as_bool()), (Some("GET"), Some(true)));
    let redirected =
        json!({"row": {"status": 302, "body": "", "location_path": "macros/echo?user_content_key=k1&lib=L"}});
    let rendered = render("google-sheets", "google-sheets", &hostile, Some(redirected));
    assert_eq!(
        step(&rendered, "confirm")["url"],
        "https://script.googleusercontent.com/macros/echo?user_content_key=k1&lib=L"
    );
    let row = &g["body"]["row"];
    assert_eq!(row["first_name"], "'=IMPORTXML(\"https://evil\")");
    assert_eq!(row["phone"], "'+33 6 12 34 56 78");
    assert_eq!((row["email"].as_str(), row["amount"].as_f64()), (Some("zoe.lefevre@example.com"), Some(97.5)));
    assert_eq!(row["products"], "Formation « Vendre »");
}
