//! Multi-step routes end to end: the shipped Pipedrive and Systeme.io examples, run as the built
//! binary against loopback fakes of those APIs — both branches of each, and a retry that resumes
//! at the failed step without repeating the ones that succeeded.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::helpers::*;

/// One request the fake API received: (method, path with query, body).
type Seen = (String, String, Value);

#[derive(Default)]
struct FakeState {
    /// Contacts by e-mail → id.
    people: Mutex<HashMap<String, u64>>,
    seen: Mutex<Vec<Seen>>,
    /// Statuses to answer for a "METHOD /path-prefix", once each, before the normal answer.
    fail: Mutex<HashMap<String, VecDeque<u16>>>,
    /// Content-Type of every PATCH.
    patch_types: Mutex<Vec<String>>,
}

/// A loopback stand-in for Pipedrive and Systeme.io (their contact endpoints).
#[derive(Clone)]
struct FakeApi {
    url: String,
    state: Arc<FakeState>,
}

impl FakeApi {
    async fn start() -> FakeApi {
        let state = Arc::new(FakeState::default());
        let url = serve_loopback(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), state.clone(), fake_api);
        FakeApi { url, state }
    }

    fn add_person(&self, email: &str, id: u64) {
        self.state.people.lock().unwrap().insert(email.into(), id);
    }

    fn fail_once(&self, what: &str, status: u16) {
        self.state.fail.lock().unwrap().entry(what.into()).or_default().push_back(status);
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn calls(&self) -> Vec<String> {
        self.seen().into_iter().map(|(m, p, _)| format!("{m} {}", p.split('?').next().unwrap())).collect()
    }
}

async fn fake_api(state: web::Data<FakeState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let method = req.method().to_string();
    let path = req.uri().to_string();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.seen.lock().unwrap().push((method.clone(), path.clone(), body.clone()));
    let plain = path.split('?').next().unwrap().to_string();
    let key = format!("{method} {plain}");
    let scripted = {
        let mut fail = state.fail.lock().unwrap();
        fail.iter_mut().find(|(k, _)| key.starts_with(k.as_str())).and_then(|(_, q)| q.pop_front())
    };
    if let Some(status) = scripted {
        return HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
            .json(json!({"error": "scripted"}));
    }
    if method == "PATCH" {
        let ct = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        state.patch_types.lock().unwrap().push(ct);
    }
    let query: HashMap<String, String> = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    let mut people = state.people.lock().unwrap();
    let next_id = 100 + people.len() as u64;
    match (method.as_str(), plain.as_str()) {
        // Pipedrive
        ("GET", "/v1/persons/search") => {
            let items: Vec<Value> = people
                .get(query.get("term").map(String::as_str).unwrap_or(""))
                .map(|id| json!({"result_score": 1.0, "item": {"id": id}}))
                .into_iter()
                .collect();
            HttpResponse::Ok().json(json!({"success": true, "data": {"items": items}}))
        }
        ("POST", "/v1/persons") => {
            let email = body["email"][0]["value"].as_str().unwrap_or_default().to_string();
            people.insert(email, next_id);
            HttpResponse::Created().json(json!({"success": true, "data": {"id": next_id}}))
        }
        ("PUT", p) if p.starts_with("/v1/persons/") => HttpResponse::Ok().json(json!({"success": true})),
        ("POST", "/v1/deals") => HttpResponse::Created().json(json!({"success": true, "data": {"id": 9}})),
        // Systeme.io
        ("POST", "/api/contacts") => {
            let email = body["email"].as_str().unwrap_or_default().to_string();
            if people.contains_key(&email) {
                return HttpResponse::UnprocessableEntity().json(
                    json!({"violations": [{"propertyPath": "email", "message": "This value is already used."}]}),
                );
            }
            people.insert(email, next_id);
            HttpResponse::Created().json(json!({"id": next_id}))
        }
        ("GET", "/api/contacts") => {
            let items: Vec<Value> = people
                .get(query.get("email").map(String::as_str).unwrap_or(""))
                .map(|id| json!({"id": id}))
                .into_iter()
                .collect();
            HttpResponse::Ok().json(json!({"items": items, "hasMore": false}))
        }
        ("PATCH", p) if p.starts_with("/api/contacts/") => HttpResponse::Ok().json(json!({"id": 1})),
        _ => HttpResponse::NotFound().finish(),
    }
}

/// `lbx-relay serve -c examples/NAME.toml` pointed at `api`; killed on drop.
struct Relay {
    child: std::process::Child,
    public: String,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Relay {
    async fn start(example: &str, base_var: &str, api: &FakeApi, credential: (&str, &str)) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let (public, admin) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_lbx-relay"))
            .args(["serve", "-c", &format!("{}/examples/{example}.toml", env!("CARGO_MANIFEST_DIR"))])
            .env("LEARNYBOX_SECRET_KEY", SECRET)
            .env("LBX_LISTEN", &public)
            .env("LBX_ADMIN_LISTEN", &admin)
            .env("LBX_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("LBX_STORE_URL", format!("sqlite://{}", dir.path().join("relay.db").display()))
            .env(base_var, &api.url)
            .env(credential.0, credential.1)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_ready(&admin).await;
        Relay { child, public, admin, _dir: dir }
    }

    async fn send(&self, event: &Value) {
        let sealed = seal(event, SECRET);
        let resp = reqwest::Client::new()
            .post(format!("http://{}/hooks/learnybox", self.public))
            .header("Content-Type", "application/json")
            .body(sealed.body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    async fn deliveries(&self, status: &str) -> Vec<Value> {
        let v: Value = reqwest::Client::new()
            .get(format!("http://{}/api/deliveries?status={status}", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["items"].as_array().cloned().unwrap_or_default()
    }

    async fn wait_for(&self, status: &str, n: usize) -> Vec<Value> {
        wait_until(Duration::from_secs(15), &format!("{n} {status} deliveries"), || async {
            self.deliveries(status).await.len() >= n
        })
        .await;
        self.deliveries(status).await
    }

    async fn retry(&self, id: &str) {
        let resp = reqwest::Client::new()
            .post(format!("http://{}/api/deliveries/{id}/retry", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }
}

fn contact_event(id: &str, email: &str) -> Value {
    json!({"event": "contact.subscribed", "id": id,
           "data": {"contact": {"email": email, "prenom": "Zoë", "nom": "Lefèvre", "telephone": "0612345678"}}})
}

#[tokio::test]
async fn pipedrive_creates_a_new_person_and_updates_a_known_one() {
    let api = FakeApi::start().await;
    api.add_person("known@example.com", 42);
    let relay = Relay::start("pipedrive", "PIPEDRIVE_BASE_URL", &api, ("PIPEDRIVE_API_TOKEN", "pd-token")).await;
    relay.send(&contact_event("p1", "new@example.com")).await;
    relay.wait_for("delivered", 1).await;
    relay.send(&contact_event("p2", "Known@Example.com")).await;
    relay.wait_for("delivered", 2).await;
    assert_eq!(
        api.calls(),
        vec!["GET /v1/persons/search", "POST /v1/persons", "GET /v1/persons/search", "PUT /v1/persons/42"],
        "new → search, create; known → search, update; no deal for a contact event"
    );
    let seen = api.seen();
    assert!(seen[0].1.contains("term=new%40example.com"), "{}", seen[0].1);
    assert_eq!(seen[1].2["email"][0]["value"], "new@example.com");
    assert_eq!(seen[3].2["name"], "Zoë Lefèvre");
}

#[tokio::test]
async fn pipedrive_sale_links_the_deal_and_a_retry_resumes_at_the_failed_step() {
    let api = FakeApi::start().await;
    api.fail_once("POST /v1/deals", 422);
    let relay = Relay::start("pipedrive", "PIPEDRIVE_BASE_URL", &api, ("PIPEDRIVE_API_TOKEN", "pd-token")).await;
    let mut sale = contact_event("s1", "buyer@example.com");
    sale["event"] = "transaction.created".into();
    sale["data"]["transaction"] =
        json!({"id": "TX-9", "amount": 49, "currency": "EUR", "products": [{"name": "Cours"}]});
    relay.send(&sale).await;
    let failed = relay.wait_for("failed", 1).await;
    assert!(failed[0]["last_error"].as_str().unwrap().contains("step deal"), "{}", failed[0]);
    assert_eq!(api.calls(), vec!["GET /v1/persons/search", "POST /v1/persons", "POST /v1/deals"]);
    // Replayed: the person is not searched or created again; only the deal is sent.
    relay.retry(failed[0]["id"].as_str().unwrap()).await;
    relay.wait_for("delivered", 1).await;
    assert_eq!(api.calls(), vec!["GET /v1/persons/search", "POST /v1/persons", "POST /v1/deals", "POST /v1/deals"]);
    let deal = &api.seen()[3].2;
    assert_eq!(deal["person_id"], 100, "the person created by the first attempt");
    assert_eq!(deal["value"], 49);
}

#[tokio::test]
async fn systemeio_creates_or_on_422_finds_and_merge_patches() {
    let api = FakeApi::start().await;
    api.add_person("taken@example.com", 77);
    let relay = Relay::start("systemeio", "SYSTEMEIO_BASE_URL", &api, ("SYSTEMEIO_API_KEY", "sy-key")).await;
    relay.send(&contact_event("y1", "fresh@example.com")).await;
    relay.wait_for("delivered", 1).await;
    assert_eq!(api.calls(), vec!["POST /api/contacts"]);
    relay.send(&contact_event("y2", "taken@example.com")).await;
    relay.wait_for("delivered", 2).await;
    assert_eq!(
        api.calls(),
        vec!["POST /api/contacts", "POST /api/contacts", "GET /api/contacts", "PATCH /api/contacts/77"]
    );
    assert_eq!(api.state.patch_types.lock().unwrap().clone(), vec!["application/merge-patch+json".to_string()]);
    let patch = &api.seen()[3].2;
    assert_eq!(patch["fields"][0], json!({"slug": "first_name", "value": "Zoë"}));
}

#[tokio::test]
async fn systemeio_update_failing_is_retried_from_the_update_alone() {
    let api = FakeApi::start().await;
    api.add_person("taken@example.com", 77);
    api.fail_once("PATCH /api/contacts/", 400);
    let relay = Relay::start("systemeio", "SYSTEMEIO_BASE_URL", &api, ("SYSTEMEIO_API_KEY", "sy-key")).await;
    relay.send(&contact_event("y3", "taken@example.com")).await;
    let failed = relay.wait_for("failed", 1).await;
    relay.retry(failed[0]["id"].as_str().unwrap()).await;
    relay.wait_for("delivered", 1).await;
    assert_eq!(
        api.calls(),
        vec!["POST /api/contacts", "GET /api/contacts", "PATCH /api/contacts/77", "PATCH /api/contacts/77"],
        "the create (422) and the search are not repeated"
    );
}
