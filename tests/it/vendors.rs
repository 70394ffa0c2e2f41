//! Stand-ins for the vendor APIs the connector pack calls, driven by the vendors' request contracts
//! (`tests/vendor-contracts/`, copied from the shared contracts): every request is checked against
//! the contract (method and path, query, auth header, content type, body schema) and refused with
//! the vendor's error when it does not match, and the stateful vendors (HubSpot, Salesforce,
//! Pipedrive, Systeme.io, ActiveCampaign) keep contacts and deals so searches, upserts and replays
//! answer as the real API would. The same fake answers in-process (contract tests) and over
//! loopback HTTP (end-to-end tests of the built binary).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

/// One vendor's contract file.
pub struct Contract {
    pub vendor: String,
    doc: Value,
    endpoints: Vec<Endpoint>,
}

struct Endpoint {
    id: String,
    method: String,
    paths: Vec<PathTemplate>,
    content_type: Option<String>,
    body: Option<jsonschema::Validator>,
    /// The body schema without `required` (Salesforce `?updateOnly=true`: create-only fields).
    body_update_only: Option<jsonschema::Validator>,
    query: Option<jsonschema::Validator>,
    query_params: Vec<String>,
    must_not_contain: Vec<String>,
}

/// A contract path template: each `{param}` (alone or after a literal prefix, as in
/// `v{version}`) matches one non-empty, percent-encoded segment.
struct PathTemplate(Vec<String>);

impl PathTemplate {
    fn new(template: &str) -> PathTemplate {
        PathTemplate(template.split('/').map(str::to_string).collect())
    }

    fn is_match(&self, path: &str) -> bool {
        let segments: Vec<&str> = path.split('/').collect();
        segments.len() == self.0.len()
            && self.0.iter().zip(&segments).all(|(t, s)| match t.find('{') {
                Some(i) => s.len() > i && s.starts_with(&t[..i]),
                None => t == s,
            })
    }
}

impl Contract {
    pub fn load(vendor: &str) -> Arc<Contract> {
        let path = format!("{}/tests/vendor-contracts/{vendor}.json", env!("CARGO_MANIFEST_DIR"));
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let endpoints = doc["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let mut paths = vec![PathTemplate::new(e["path"].as_str().unwrap())];
                for alias in e["path_aliases"].as_array().into_iter().flatten() {
                    paths.push(PathTemplate::new(alias.as_str().unwrap()));
                }
                let schema = |v: &Value| (!v.is_null()).then(|| jsonschema::validator_for(v).unwrap());
                let mut relaxed = e["request_schema"].clone();
                if let Some(o) = relaxed.as_object_mut() {
                    o.remove("required");
                }
                Endpoint {
                    id: e["id"].as_str().unwrap().to_string(),
                    method: e["method"].as_str().unwrap().to_string(),
                    paths,
                    content_type: e["content_type"].as_str().map(str::to_string),
                    body: schema(&e["request_schema"]),
                    body_update_only: schema(&relaxed),
                    query: schema(&e["query_schema"]),
                    query_params: e["query_params"]
                        .as_object()
                        .map(|q| q.keys().cloned().collect())
                        .unwrap_or_default(),
                    must_not_contain: e["body_must_not_contain"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                        .unwrap_or_default(),
                }
            })
            .collect();
        Arc::new(Contract { vendor: vendor.to_string(), doc, endpoints })
    }

    /// The request schema of endpoint `id`, as the contract file has it.
    pub fn request_schema(&self, id: &str) -> Value {
        self.doc["endpoints"].as_array().unwrap().iter().find(|e| e["id"] == id).unwrap()["request_schema"].clone()
    }

    /// Checks one request; `Ok(endpoint id)` or what is wrong with it.
    pub fn check(&self, req: &Request) -> Result<String, String> {
        let by_path: Vec<&Endpoint> =
            self.endpoints.iter().filter(|e| e.paths.iter().any(|p| p.is_match(&req.path))).collect();
        if by_path.is_empty() {
            return Err(format!("no {} endpoint has the path {}", self.vendor, req.path));
        }
        let candidates: Vec<&Endpoint> = by_path.into_iter().filter(|e| e.method == req.method).collect();
        if candidates.is_empty() {
            return Err(format!("{} {} is not a {} endpoint's method", req.method, req.path, self.vendor));
        }
        let auth = &self.doc["auth"];
        if let Some(header) = auth["header"].as_str() {
            let given = req.header(header).unwrap_or_default();
            let scheme = auth["scheme"].as_str().unwrap_or_default();
            let ok = match scheme {
                "bearer" => given.starts_with("Bearer ") && given.len() > 7,
                "basic" => given.starts_with("Basic ") && given.len() > 6,
                _ => !given.is_empty(),
            };
            if !ok {
                return Err(format!(
                    "{} {}: the auth header {header} ({scheme}) is missing or wrong",
                    req.method, req.path
                ));
            }
        }
        let mut problems = Vec::new();
        for ep in candidates {
            match self.check_endpoint(ep, req) {
                Ok(()) => return Ok(ep.id.clone()),
                Err(p) => problems.push(format!("{}: {p}", ep.id)),
            }
        }
        Err(format!("{} {}: {}", req.method, req.path, problems.join(" | ")))
    }

    fn check_endpoint(&self, ep: &Endpoint, req: &Request) -> Result<(), String> {
        if let Some(q) = &ep.query {
            let query: serde_json::Map<String, Value> =
                req.query.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
            if let Some(e) = q.iter_errors(&Value::Object(query)).next() {
                return Err(format!("query: {e}"));
            }
        } else if let Some((k, _)) = req.query.iter().find(|(k, _)| !ep.query_params.contains(k)) {
            return Err(format!("query parameter {k} is not in the contract"));
        }
        match (&ep.body, &ep.content_type) {
            (None, _) => {
                if !req.body.trim().is_empty() {
                    return Err("this endpoint takes no body".into());
                }
            }
            (Some(schema), ct) => {
                let given = req.header("content-type").unwrap_or_default();
                if let Some(ct) = ct {
                    if given.split(';').next().unwrap_or_default().trim() != ct {
                        return Err(format!("content type {given:?}, the contract says {ct}"));
                    }
                }
                let body: Value = serde_json::from_str(&req.body).map_err(|e| format!("body is not JSON: {e}"))?;
                let update_only = req.query.iter().any(|(k, v)| k == "updateOnly" && v == "true");
                let schema = if update_only { ep.body_update_only.as_ref().unwrap() } else { schema };
                if let Some(e) = schema.iter_errors(&body).next() {
                    return Err(format!("body {}: {e}", e.instance_path()));
                }
                for key in &ep.must_not_contain {
                    let key = if key.starts_with('{') {
                        // The external id field named in the path.
                        req.path.split('/').rev().nth(1).unwrap_or_default().to_string()
                    } else {
                        key.clone()
                    };
                    if body.get(&key).is_some() {
                        return Err(format!("the body must not contain {key}"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A request as a vendor sees it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path, still percent-encoded.
    pub path: String,
    /// Decoded query pairs.
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    pub fn new(method: &str, url: &str, headers: Vec<(String, String)>, body: String) -> Request {
        let (path, query) = match url.split_once('?') {
            Some((p, q)) => (p, q),
            None => (url, ""),
        };
        let path = path.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap_or_else(|| path.to_string());
        let query = serde_urlencoded::from_str::<Vec<(String, String)>>(query).unwrap_or_default();
        Request { method: method.to_string(), path, query, headers, body }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn q(&self, name: &str) -> String {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default()
    }

    fn segment(&self, i: usize) -> String {
        let raw = self.path.split('/').nth(i).unwrap_or_default();
        percent_encoding::percent_decode_str(raw).decode_utf8_lossy().into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// What the fake CRM holds.
#[derive(Default, Debug)]
pub struct World {
    /// Contacts by e-mail (lower case) → their record.
    pub contacts: BTreeMap<String, Value>,
    /// Deals / opportunities by the Learnybox transaction id → their record.
    pub deals: BTreeMap<String, Value>,
    /// Every request and the contract endpoint it matched.
    pub calls: Vec<(String, String)>,
    /// Requests that broke the contract, with the reason.
    pub violations: Vec<String>,
    /// Endpoint id → statuses to answer next, after doing what the request asked (the answer is
    /// lost on its way back, as when a connection drops after the CRM committed).
    pub lose_answers: BTreeMap<String, Vec<u16>>,
    next_id: u64,
}

impl World {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        1000 + self.next_id
    }
}

/// One vendor's fake: its contract and its world.
#[derive(Clone)]
pub struct Vendor {
    pub contract: Arc<Contract>,
    pub world: Arc<Mutex<World>>,
}

impl Vendor {
    pub fn new(vendor: &str) -> Vendor {
        Vendor { contract: Contract::load(vendor), world: Arc::default() }
    }

    /// Answers one request as the vendor would: its error for a request the contract refuses,
    /// else the effect on the world and the answer.
    pub fn handle(&self, req: &Request) -> (u16, Value) {
        let vendor = self.contract.vendor.as_str();
        if vendor == "salesforce" && req.path == "/services/oauth2/token" {
            return (200, json!({"access_token": "sf-access", "token_type": "Bearer", "expires_in": 3600}));
        }
        if vendor == "pipedrive" && req.path.starts_with("/v1/") {
            let mut w = self.world.lock().unwrap();
            w.violations.push(format!("{} {}: Pipedrive API v1 is retired", req.method, req.path));
            return (
                410,
                json!({"success": false, "error": "Gone: this API v1 endpoint is no longer supported; use /api/v2"}),
            );
        }
        let endpoint = match self.contract.check(req) {
            Ok(id) => id,
            Err(reason) => {
                let unknown = reason.starts_with("no ");
                self.world.lock().unwrap().violations.push(reason.clone());
                return if unknown {
                    (404, json!({"error": "Not Found", "message": reason}))
                } else {
                    (400, json!({"error": "Bad Request", "message": reason}))
                };
            }
        };
        let answer = self.apply(&endpoint, req);
        let mut w = self.world.lock().unwrap();
        match w.lose_answers.get_mut(endpoint.split('@').next().unwrap_or_default()).filter(|q| !q.is_empty()) {
            Some(q) => (q.remove(0), json!({"message": "upstream timeout"})),
            None => answer,
        }
    }

    /// The next `n` answers of `endpoint` (an id without `@version`) are lost: the request takes
    /// effect, the relay gets `status`.
    pub fn lose_answers(&self, endpoint: &str, status: u16, n: usize) {
        self.world.lock().unwrap().lose_answers.insert(endpoint.to_string(), vec![status; n]);
    }

    fn apply(&self, endpoint: &str, req: &Request) -> (u16, Value) {
        let vendor = self.contract.vendor.as_str();
        let mut w = self.world.lock().unwrap();
        w.calls.push((endpoint.to_string(), req.path.clone()));
        let body = req.json();
        match (vendor, endpoint.split('@').next().unwrap_or_default()) {
            ("hubspot", "contacts.batch_upsert") => {
                let mut results = Vec::new();
                for input in body["inputs"].as_array().into_iter().flatten() {
                    let email = input["id"].as_str().unwrap_or_default().to_lowercase();
                    let id = match w.contacts.get(&email) {
                        Some(c) => c["id"].clone(),
                        None => json!(w.id().to_string()),
                    };
                    let record = w.contacts.entry(email).or_insert_with(|| json!({"id": id, "properties": {}}));
                    merge(&mut record["properties"], &input["properties"]);
                    results.push(json!({"id": id, "properties": record["properties"]}));
                }
                (200, json!({"status": "COMPLETE", "results": results}))
            }
            ("hubspot", "deals.batch_upsert") => {
                let mut results = Vec::new();
                for input in body["inputs"].as_array().into_iter().flatten() {
                    let key = input["id"].as_str().unwrap_or_default().to_string();
                    let id = match w.deals.get(&key) {
                        Some(d) => d["id"].clone(),
                        None => json!(w.id().to_string()),
                    };
                    let record =
                        w.deals.entry(key).or_insert_with(|| json!({"id": id, "properties": {}, "contacts": []}));
                    merge(&mut record["properties"], &input["properties"]);
                    results.push(json!({"id": id, "properties": record["properties"]}));
                }
                (200, json!({"status": "COMPLETE", "results": results}))
            }
            ("hubspot", "associations.default") => {
                let (deal, contact) =
                    (req.segment(req.path.split('/').count() - 5), req.segment(req.path.split('/').count() - 1));
                let known_contact = w.contacts.values().any(|c| c["id"] == contact.as_str());
                match w.deals.values_mut().find(|d| d["id"] == deal.as_str()) {
                    Some(d) if known_contact => {
                        let list = d["contacts"].as_array_mut().unwrap();
                        if !list.contains(&json!(contact)) {
                            list.push(json!(contact));
                        }
                        (200, json!({"status": "COMPLETE", "results": []}))
                    }
                    _ => (404, json!({"status": "error", "message": "Object not found"})),
                }
            }
            ("hubspot", "deals.batch_update") => {
                let mut results = Vec::new();
                let mut errors = Vec::new();
                for input in body["inputs"].as_array().into_iter().flatten() {
                    let key = input["id"].as_str().unwrap_or_default().to_string();
                    match w.deals.get_mut(&key) {
                        Some(record) => {
                            merge(&mut record["properties"], &input["properties"]);
                            results.push(json!({"id": record["id"], "properties": record["properties"]}));
                        }
                        None => errors.push(json!({"status": "error", "category": "OBJECT_NOT_FOUND", "message": format!("no deal with {key}")})),
                    }
                }
                if errors.is_empty() {
                    (200, json!({"status": "COMPLETE", "results": results}))
                } else {
                    (
                        207,
                        json!({"status": "COMPLETE", "results": results, "errors": errors, "numErrors": errors.len()}),
                    )
                }
            }
            ("hubspot", "subscriptions.set_status") => {
                let email = req.segment(4).to_lowercase();
                let c = w.contacts.entry(email).or_insert_with(|| json!({"properties": {}}));
                c["subscriptions"][body["subscriptionId"].to_string()] = body["statusState"].clone();
                (200, json!({"status": "COMPLETE", "results": [], "errors": []}))
            }
            ("hubspot", "subscriptions.unsubscribe_all") => {
                let email = req.segment(4).to_lowercase();
                let c = w.contacts.entry(email).or_insert_with(|| json!({"properties": {}}));
                c["unsubscribed_from_all"] = json!(true);
                (200, json!({"status": "COMPLETE", "results": [], "errors": []}))
            }
            ("hubspot", _) => (200, json!({"status": "COMPLETE", "results": []})),
            ("salesforce", "contact.upsert" | "contact.email_opt_out" | "opportunity.upsert") => {
                // /services/data/vNN.N/sobjects/{Object}/{ExternalIdField}/{value}
                let object = req.segment(5);
                let value = req.segment(7);
                let update_only = req.q("updateOnly") == "true";
                let (map, key) =
                    if object == "Contact" { (&mut w.contacts, value.to_lowercase()) } else { (&mut w.deals, value) };
                if let Some(record) = map.get_mut(&key) {
                    merge(record, &body);
                    let id = record["Id"].clone();
                    return (200, json!({"id": id, "success": true, "errors": [], "created": false}));
                }
                if update_only {
                    return (
                        404,
                        json!([{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]),
                    );
                }
                let id = format!("{}{:015}", if object == "Contact" { "003" } else { "006" }, w.id());
                let mut record = body.clone();
                record["Id"] = json!(id);
                let map = if object == "Contact" { &mut w.contacts } else { &mut w.deals };
                map.insert(key, record);
                (201, json!({"id": id, "success": true, "errors": [], "created": true}))
            }
            ("salesforce", _) => (201, json!({"id": "00K000000000001", "success": true, "errors": []})),
            ("pipedrive", "persons.search") => {
                let term = req.q("term").to_lowercase();
                let items: Vec<Value> = w
                    .contacts
                    .get(&term)
                    .map(|p| json!({"result_score": 1.0, "item": {"id": p["id"]}}))
                    .into_iter()
                    .collect();
                (200, json!({"success": true, "data": {"items": items}, "additional_data": {"next_cursor": null}}))
            }
            ("pipedrive", "persons.create") => {
                let email = body["emails"][0]["value"].as_str().unwrap_or_default().to_lowercase();
                let id = w.id();
                let mut record = body.clone();
                record["id"] = json!(id);
                let key = unique_key(&w.contacts, email);
                w.contacts.insert(key, record.clone());
                (200, json!({"success": true, "data": record}))
            }
            ("pipedrive", "persons.update") => pipedrive_patch(&mut w.contacts, req, &body, "Person"),
            ("pipedrive", "deals.search") => {
                let term = req.q("term");
                let items: Vec<Value> = w
                    .deals
                    .get(&term)
                    .map(|d| json!({"result_score": 1.0, "item": {"id": d["id"]}}))
                    .into_iter()
                    .collect();
                (200, json!({"success": true, "data": {"items": items}}))
            }
            ("pipedrive", "deals.create") => {
                let tx = body["custom_fields"]
                    .as_object()
                    .and_then(|m| m.values().next())
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let id = w.id();
                let mut record = body.clone();
                record["id"] = json!(id);
                let key = unique_key(&w.deals, tx);
                w.deals.insert(key, record.clone());
                (200, json!({"success": true, "data": record}))
            }
            ("pipedrive", "deals.update") => pipedrive_patch(&mut w.deals, req, &body, "Deal"),
            ("pipedrive", _) => (200, json!({"success": true, "data": {}})),
            ("systemeio", "contacts.create") => {
                let email = body["email"].as_str().unwrap_or_default().to_lowercase();
                if w.contacts.contains_key(&email) {
                    return (
                        422,
                        json!({"type": "https://tools.ietf.org/html/rfc2616#section-10", "title": "An error occurred", "violations": [{"propertyPath": "email", "message": "This value is already used."}]}),
                    );
                }
                let id = w.id();
                w.contacts
                    .insert(email.clone(), json!({"id": id, "email": email, "tags": [], "fields": body["fields"]}));
                (201, json!({"id": id, "email": email}))
            }
            ("systemeio", "contacts.find_by_email") => {
                let items: Vec<Value> = w
                    .contacts
                    .get(&req.q("email").to_lowercase())
                    .map(|c| json!({"id": c["id"], "email": c["email"]}))
                    .into_iter()
                    .collect();
                (200, json!({"items": items, "hasMore": false}))
            }
            ("systemeio", "contacts.update") => {
                let id: u64 = req.segment(3).parse().unwrap_or(0);
                match w.contacts.values_mut().find(|c| c["id"] == id) {
                    Some(c) => {
                        c["fields"] = body["fields"].clone();
                        (200, c.clone())
                    }
                    None => (404, json!({"detail": "Not Found"})),
                }
            }
            ("systemeio", "contacts.add_tag" | "contacts.remove_tag") => {
                let id: u64 = req.segment(3).parse().unwrap_or(0);
                let tag = if endpoint == "contacts.add_tag" {
                    body["tagId"].clone()
                } else {
                    json!(req.segment(5).parse::<u64>().unwrap_or(0))
                };
                match w.contacts.values_mut().find(|c| c["id"] == id) {
                    Some(c) => {
                        let tags = c["tags"].as_array_mut().unwrap();
                        tags.retain(|t| *t != tag);
                        if endpoint == "contacts.add_tag" {
                            tags.push(tag);
                        }
                        (204, Value::Null)
                    }
                    None => (404, json!({"detail": "Not Found"})),
                }
            }
            ("systemeio", _) => (200, json!({"items": [], "hasMore": false})),
            ("activecampaign", "contact.sync") => {
                let email = body["contact"]["email"].as_str().unwrap_or_default().to_lowercase();
                let created = !w.contacts.contains_key(&email);
                let id = match w.contacts.get(&email) {
                    Some(c) => c["id"].clone(),
                    None => json!(w.id().to_string()),
                };
                let record = w.contacts.entry(email).or_insert_with(|| json!({"id": id, "lists": {}, "tags": []}));
                merge(record, &body["contact"]);
                (if created { 201 } else { 200 }, json!({"contact": record.clone()}))
            }
            ("activecampaign", "contactLists.update_status") => {
                let cl = &body["contactList"];
                let contact = cl["contact"].to_string().trim_matches('"').to_string();
                match w.contacts.values_mut().find(|c| c["id"] == contact.as_str()) {
                    Some(c) => {
                        c["lists"][cl["list"].to_string().trim_matches('"')] = cl["status"].clone();
                        (201, json!({"contactList": cl}))
                    }
                    None => (404, json!({"message": "No Result found for Subscriber"})),
                }
            }
            ("activecampaign", _) => (201, json!({"contactTag": body["contactTag"]})),
            ("brevo", "contacts.create_or_update" | "contacts.email_blacklist") => {
                let email = body["email"].as_str().unwrap_or_default().to_lowercase();
                let created = !w.contacts.contains_key(&email);
                let c = w.contacts.entry(email).or_insert_with(|| json!({"lists": [], "emailBlacklisted": false}));
                for id in body["listIds"].as_array().into_iter().flatten() {
                    let lists = c["lists"].as_array_mut().unwrap();
                    if !lists.contains(id) {
                        lists.push(id.clone());
                    }
                }
                if body["emailBlacklisted"] == json!(true) {
                    c["emailBlacklisted"] = json!(true);
                }
                if let Some(attributes) = body.get("attributes") {
                    merge(c, &json!({"attributes": attributes}));
                }
                if created {
                    (201, json!({"id": 1}))
                } else {
                    (204, Value::Null)
                }
            }
            ("brevo", "contacts.update") => {
                let email = req.segment(3).to_lowercase();
                match w.contacts.get_mut(&email) {
                    Some(c) => {
                        for id in body["unlinkListIds"].as_array().into_iter().flatten() {
                            c["lists"].as_array_mut().unwrap().retain(|l| l != id);
                        }
                        (204, Value::Null)
                    }
                    None => (404, json!({"code": "document_not_found", "message": "Contact does not exist"})),
                }
            }
            ("brevo", _) => (201, json!({"id": 1})),
            ("mailchimp", "members.tags" | "members.tags_remove") => (204, Value::Null),
            ("mailchimp", "members.upsert") => {
                let hash = req.segment(5);
                let c = w.contacts.entry(hash).or_insert_with(|| json!({"email_address": body["email_address"]}));
                let status = match (body.get("status"), c.get("status")) {
                    (Some(s), _) => s.clone(),
                    (None, Some(old)) => old.clone(),
                    (None, None) => body["status_if_new"].clone(),
                };
                c["status"] = status.clone();
                (200, json!({"id": "m1", "email_address": c["email_address"], "status": status}))
            }
            ("mailchimp", _) => (200, json!({"id": "m1", "status": "subscribed"})),
            ("slack", _) => (200, Value::String("ok".into())),
            _ => (200, json!({})),
        }
    }

    /// Serves the fake on loopback; returns its base URL.
    pub fn serve(&self) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        crate::helpers::serve_loopback(listener, Arc::new(self.clone()), http_handler)
    }

    pub fn violations(&self) -> Vec<String> {
        self.world.lock().unwrap().violations.clone()
    }

    pub fn calls(&self) -> Vec<String> {
        self.world.lock().unwrap().calls.iter().map(|(id, _)| id.split('@').next().unwrap().to_string()).collect()
    }
}

/// Pipedrive `PATCH /api/v2/{persons|deals}/{id}`: the record with that id updated, or a 404.
fn pipedrive_patch(records: &mut BTreeMap<String, Value>, req: &Request, body: &Value, what: &str) -> (u16, Value) {
    let id: u64 = req.segment(4).parse().unwrap_or(0);
    match records.values_mut().find(|r| r["id"] == id) {
        Some(r) => {
            merge(r, body);
            (200, json!({"success": true, "data": r.clone()}))
        }
        None => (404, json!({"success": false, "error": format!("{what} not found")})),
    }
}

/// Pipedrive has no unique keys: a second person or deal for the same e-mail or transaction is a
/// second record, kept as `KEY#2`, … so a test sees the duplicate.
fn unique_key(map: &BTreeMap<String, Value>, key: String) -> String {
    (1..).map(|n| if n == 1 { key.clone() } else { format!("{key}#{n}") }).find(|k| !map.contains_key(k)).unwrap()
}

/// Sets every member of `patch` on `target` (both objects).
fn merge(target: &mut Value, patch: &Value) {
    if let (Some(t), Some(p)) = (target.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            t.insert(k.clone(), v.clone());
        }
    }
}

async fn http_handler(vendor: web::Data<Vendor>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let headers = req.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
    let url = format!("http://fake{}", req.uri());
    let request = Request::new(req.method().as_str(), &url, headers, String::from_utf8_lossy(&body).into_owned());
    let (status, answer) = vendor.handle(&request);
    let mut out = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
    match answer {
        Value::Null => out.finish(),
        Value::String(s) => out.content_type("text/plain").body(s),
        other => out.json(other),
    }
}
