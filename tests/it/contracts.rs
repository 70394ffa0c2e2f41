//! Contract tests of the connector pack: every example's every route and step, rendered for every
//! bundled sample event — as sent, with a hostile contact, and with sparse contacts (no phone, no
//! names, empty strings, no tags) — is sent to a fake of the vendor that checks it against the
//! vendor's request contract (method, path, query, auth header, content type, body schema) and
//! answers as the vendor would; then the same event again (a replay), which must leave one deal.
//! No example may send an empty value.

use crate::helpers::now_ms;
use lbx_relay::compiled::Compiled;
use lbx_relay::config::{Config, RouteConfig};
use lbx_relay::event::Event;
use lbx_relay::templates::TemplateContext;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::connectors::{example, ENV};
use crate::helpers::sample_events;
use crate::vendors::{Request, Vendor};

/// Each example with the vendor whose contract its requests must meet (`None`: a free-form webhook).
const PACK: &[(&str, Option<&str>)] = &[
    ("hubspot", Some("hubspot")),
    ("brevo", Some("brevo")),
    ("activecampaign", Some("activecampaign")),
    ("mailchimp", Some("mailchimp")),
    ("salesforce", Some("salesforce")),
    ("pipedrive", Some("pipedrive")),
    ("systemeio", Some("systemeio")),
    ("slack", Some("slack")),
    ("zapier", None),
    ("make", None),
    ("n8n", None),
    ("google-sheets", None),
];

/// Tag maps as a user fills them in (the examples ship them empty).
const TAG_IDS: &str = "tag_ids = { VIP = 7, client = 8, \"webinar-2026\" = 9 }";

fn runtime(name: &str, extra_env: &[(&str, &str)]) -> Compiled {
    let path = std::path::PathBuf::from(example(name));
    let text = std::fs::read_to_string(&path).unwrap().replace("tag_ids = { }", TAG_IDS);
    let env = |var: &str| extra_env.iter().chain(ENV).find(|(k, _)| *k == var).map(|(_, v)| v.to_string());
    let config = Config::from_toml(&text, &path, &env).unwrap_or_else(|e| panic!("{name}: {e}"));
    Compiled::build(config).unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

/// The sample events, each with its contact as sent, hostile, and sparse in two ways.
fn events() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for sample in sample_events() {
        let kind = sample["event"].as_str().unwrap().to_string();
        out.push((format!("{kind} as sent"), sample.clone()));
        let mut hostile = sample.clone();
        let c = &mut hostile["data"]["contact"];
        c["email"] = json!(" Zoé.O'Brien+vip@Example.FR ");
        c["prenom"] = json!("Jean \"JJ\" <b>&</b>");
        c["nom"] = json!("=O'Connor\\ 李 🎉");
        c["telephone"] = json!("+33 6 12 34 56 78");
        c["tags"] = json!(["a&b", "<VIP>", "VIP"]);
        if hostile["data"].get("tag").is_some() {
            hostile["data"]["tag"]["name"] = json!("VIP");
        }
        if let Some(products) = hostile["data"]["transaction"]["products"].as_array_mut() {
            products[0]["name"] = json!("=HYPERLINK(\"x\") <Vendre> & co");
        }
        out.push((format!("{kind} hostile"), hostile));
        let mut missing = sample.clone();
        for k in ["telephone", "phone", "prenom", "fname", "nom", "lname", "tags"] {
            missing["data"]["contact"].as_object_mut().unwrap().remove(k);
        }
        out.push((format!("{kind} sparse (absent)"), missing));
        let mut empty = sample.clone();
        for k in ["telephone", "prenom", "fname", "lname"] {
            empty["data"]["contact"][k] = json!("");
        }
        empty["data"]["contact"]["nom"] = json!("  ");
        empty["data"]["contact"]["tags"] = json!([]);
        out.push((format!("{kind} sparse (empty strings)"), empty));
    }
    out
}

fn event(rt: &Compiled, value: &Value) -> Event {
    let (name, src) = rt.config.sources.iter().next().unwrap();
    Event::from_plaintext(name, value.as_object().unwrap().clone(), None, &src.event_field, &src.id_field, now_ms())
}

/// Null or a blank string anywhere in a body, and for a CRM (`lists`) an empty list too (a CRM
/// replaces a list with it); a webhook's raw event may say "no tags" with `[]`.
fn empty_values(v: &Value, at: &str, lists: bool, out: &mut Vec<String>) {
    match v {
        Value::Null => out.push(format!("{at}: null")),
        Value::String(s) if s.trim().is_empty() => out.push(format!("{at}: {s:?}")),
        Value::Array(a) if a.is_empty() && lists => out.push(format!("{at}: []")),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| empty_values(x, &format!("{at}/{i}"), lists, out)),
        Value::Object(m) => m.iter().for_each(|(k, x)| empty_values(x, &format!("{at}/{k}"), lists, out)),
        _ => {}
    }
}

/// One delivery of `event` by `route`, step by step as the worker runs it, against `vendor` (or
/// just rendered, for free-form webhooks). Returns the steps sent, or what went wrong.
fn deliver(rt: &Compiled, route: &RouteConfig, event: &Event, vendor: Option<&Vendor>) -> Result<Vec<String>, String> {
    let mut done = serde_json::Map::new();
    let mut sent = Vec::new();
    for (i, step) in route.steps.iter().enumerate() {
        let answers = Value::Object(done.clone());
        let ctx = TemplateContext::new(event, &route.vars, "0190-delivery").with_steps(&answers);
        if !rt.templates.step_applies(route, i, &ctx).map_err(|e| e.to_string())? {
            done.insert(step.name.clone(), json!({"skipped": true}));
            continue;
        }
        let req = rt.templates.render_step(route, i, &ctx).map_err(|e| format!("step {}: {e}", step.name))?;
        if !req.body.is_empty() {
            let body: Value =
                serde_json::from_str(&req.body).map_err(|e| format!("step {}: not JSON: {e}", step.name))?;
            let mut empties = Vec::new();
            empty_values(&body, "", vendor.is_some(), &mut empties);
            if !empties.is_empty() {
                return Err(format!("step {} sends empty values {empties:?}: {body}", step.name));
            }
        }
        sent.push(step.name.clone());
        let Some(vendor) = vendor else {
            // A step whose success is a redirect (Google Sheets) gets one, as the web app answers.
            let answer = match step.success.as_ref().and_then(|s| s.location.as_ref()) {
                Some(host) => json!({"status": 302, "body": "", "location": format!("https://{host}/macros/echo?k=1"),
                                     "location_path": "macros/echo?k=1"}),
                None => json!({"status": 200, "body": {}}),
            };
            done.insert(step.name.clone(), answer);
            continue;
        };
        let mut headers: Vec<(String, String)> =
            req.headers.iter().map(|h| (h.name.clone(), h.value.expose_secret().to_string())).collect();
        if route.oauth.is_some() {
            headers.push(("Authorization".into(), "Bearer sf-access".into()));
        }
        let (status, body) = vendor.handle(&Request::new(req.method.as_str(), &req.url, headers, req.body.clone()));
        if !(200..300).contains(&status) && !step.accept.iter().any(|m| m.matches(status, Some(&body.to_string()))) {
            return Err(format!("step {} {} {}: HTTP {status}: {body}", step.name, req.method, req.url));
        }
        done.insert(step.name.clone(), json!({"status": status, "body": body}));
    }
    Ok(sent)
}

/// Runs every sample variant through every matching route of `name` against one fake CRM (so later
/// events meet the contacts and deals earlier ones made), each delivery twice (the second is a
/// replay, which must not add a deal); returns the steps that were sent at least once.
fn exercise(name: &str, vendor_name: Option<&str>, extra_env: &[(&str, &str)]) -> std::collections::BTreeSet<String> {
    let rt = runtime(name, extra_env);
    let vendor = vendor_name.map(Vendor::new);
    let deals = || vendor.as_ref().map(|v| v.world.lock().unwrap().deals.len()).unwrap_or(0);
    let mut failures = Vec::new();
    let mut sent_steps = std::collections::BTreeSet::new();
    for (label, value) in events() {
        let ev = event(&rt, &value);
        let matched = rt.routes.matching(&rt.config, &rt.templates, &ev);
        assert!(matched.skipped.is_empty(), "{name}: {label}: {:?}", matched.skipped);
        for route_name in matched.routes {
            let route = rt.config.route(&route_name).unwrap();
            let before = deals();
            let mut counts = Vec::new();
            for attempt in ["first delivery", "replay"] {
                match deliver(&rt, route, &ev, vendor.as_ref()) {
                    Ok(steps) => sent_steps.extend(steps.into_iter().map(|s| format!("{route_name}.{s}"))),
                    Err(e) => failures.push(format!("{name} {route_name} {label} ({attempt}): {e}")),
                }
                counts.push(deals());
            }
            if counts[0] > before + 1 || counts[1] != counts[0] {
                failures.push(format!("{name} {route_name} {label}: deals {before} → {counts:?} (one sale, replayed)"));
            }
        }
    }
    if let Some(v) = &vendor {
        failures.extend(v.violations().into_iter().map(|p| format!("{name}: {p}")));
    }
    assert!(
        failures.is_empty(),
        "{} problems, first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(12)].join("\n")
    );
    sent_steps
}

#[test]
fn every_example_sends_contract_valid_requests_without_empty_values_and_replays_keep_one_deal() {
    for (name, vendor) in PACK {
        let sent = exercise(name, *vendor, &[]);
        let rt = runtime(name, &[]);
        // Every step of every route was sent for some sample: nothing is left untested.
        for route in &rt.config.routes {
            for step in &route.steps {
                let key = format!("{}.{}", route.name, step.name);
                assert!(sent.contains(&key), "{name}: no sample exercised {key} (sent: {sent:?})");
            }
        }
    }
}

#[test]
fn hubspot_requests_meet_the_contract_on_every_selectable_api_version() {
    for version in ["2026-03", "v3"] {
        let sent = exercise("hubspot", Some("hubspot"), &[("HUBSPOT_API_VERSION", version)]);
        assert!(sent.contains("hubspot-sales.associate"), "{version}: {sent:?}");
    }
}

#[test]
fn a_sale_then_its_refund_leave_one_deal_in_the_lost_stage() {
    let samples = sample_events();
    let sale = samples.iter().find(|e| e["event"] == "transaction.created").unwrap().clone();
    let mut refund = sale.clone();
    refund["event"] = json!("transaction.refunded");
    refund["id"] = json!("evt-refund");
    for (name, route, stage_of) in [
        ("hubspot", "hubspot-sales", (|d: &Value| d["properties"]["dealstage"].clone()) as fn(&Value) -> Value),
        ("salesforce", "salesforce-sales", |d: &Value| d["StageName"].clone()),
        ("pipedrive", "pipedrive", |d: &Value| d["status"].clone()),
    ] {
        let rt = runtime(name, &[]);
        let vendor = Vendor::new(name);
        let route = rt.config.route(route).unwrap();
        deliver(&rt, route, &event(&rt, &sale), Some(&vendor)).unwrap();
        let won = vendor.world.lock().unwrap().deals.values().map(stage_of).collect::<Vec<_>>();
        deliver(&rt, route, &event(&rt, &refund), Some(&vendor)).unwrap();
        let lost = vendor.world.lock().unwrap().deals.values().map(stage_of).collect::<Vec<_>>();
        let expected = match name {
            "hubspot" => (json!("closedwon"), json!("closedlost")),
            "salesforce" => (json!("Closed Won"), json!("Closed Lost")),
            _ => (json!("won"), json!("lost")),
        };
        assert_eq!((won, lost), (vec![expected.0], vec![expected.1]), "{name}");
        assert!(vendor.violations().is_empty(), "{name}: {:?}", vendor.violations());
    }
}

#[test]
fn the_shipped_schemas_are_the_vendor_contracts() {
    let dir = format!("{}/contracts", env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for vendor_dir in std::fs::read_dir(&dir).unwrap() {
        let vendor_dir = vendor_dir.unwrap().path();
        let vendor = vendor_dir.file_name().unwrap().to_str().unwrap().to_string();
        let contract = crate::vendors::Contract::load(&vendor);
        for file in std::fs::read_dir(&vendor_dir).unwrap() {
            let file = file.unwrap().path();
            let id = file.file_stem().unwrap().to_str().unwrap().trim_end_matches(".json").to_string();
            let mut shipped: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            shipped.as_object_mut().unwrap().remove("title");
            let (source, relax) = match id.strip_suffix(".update_only") {
                Some(object) => (format!("{object}.upsert"), true),
                None => (id.clone(), false),
            };
            let source = if vendor == "hubspot" { format!("{source}@2026-09") } else { source };
            let mut expected = contract.request_schema(&source);
            if relax {
                expected.as_object_mut().unwrap().remove("required");
            }
            assert_eq!(shipped, expected, "{}", file.display());
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked}");
}
