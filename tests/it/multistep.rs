//! Multi-step connectors end to end: the shipped examples run as the built binary against loopback
//! fakes of the vendor APIs that check every request against the vendor's contract (Pipedrive
//! API v2, Systeme.io, HubSpot, Salesforce). Both branches of each, a retry that resumes at the
//! failed step, an answer lost after the CRM committed, and a sale sent twice: one deal.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;
use crate::vendors::Vendor;

/// `lbx-relay serve -c examples/NAME.toml` with exactly these variables; killed on drop.
pub(crate) struct Relay {
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
    pub(crate) async fn start(example: &str, env: &[(&str, &str)]) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let (p, a) = two_free_ports();
        let (public, admin) = (format!("127.0.0.1:{p}"), format!("127.0.0.1:{a}"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_lbx-relay"))
            .args(["serve", "-c", &format!("{}/examples/{example}.toml", env!("CARGO_MANIFEST_DIR"))])
            .env_clear()
            .env("LEARNYBOX_SECRET_KEY", SECRET)
            .env("LBX_LISTEN", &public)
            .env("LBX_ADMIN_LISTEN", &admin)
            .env("LBX_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("LBX_STORE_URL", format!("sqlite://{}", dir.path().join("relay.db").display()))
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut relay = Relay { child, public, admin, _dir: dir };
        wait_ready(&relay.admin).await;
        // A relay that could not bind has exited: the one answering is not ours.
        let exited = relay.child.try_wait().unwrap();
        assert!(exited.is_none(), "the relay exited on start: {exited:?}");
        relay
    }

    pub(crate) async fn send(&self, event: &Value) {
        let sealed = seal(event, SECRET);
        let resp = client()
            .post(format!("http://{}/hooks/learnybox", self.public))
            .header("Content-Type", "application/json")
            .body(sealed.body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    pub(crate) async fn deliveries(&self, status: &str) -> Vec<Value> {
        let v: Value = client()
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

    pub(crate) async fn wait_for(&self, status: &str, n: usize) -> Vec<Value> {
        wait_until(Duration::from_secs(15), &format!("{n} {status} deliveries"), || async {
            self.deliveries(status).await.len() >= n
        })
        .await;
        self.deliveries(status).await
    }

    /// Waits until a delivery has failed one attempt and waits for its retry; the pending ones.
    async fn failed_once(&self) -> Vec<Value> {
        wait_until(Duration::from_secs(15), "a delivery to fail once", || async {
            self.deliveries("pending").await.first().is_some_and(|d| d["attempts"] == 1)
        })
        .await;
        self.deliveries("pending").await
    }

    async fn retry(&self, id: &str) {
        let resp = client()
            .post(format!("http://{}/api/deliveries/{id}/retry", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }
}

pub(crate) fn contact_event(id: &str, email: &str) -> Value {
    json!({"event": "contact.subscribed", "id": id,
           "data": {"contact": {"email": email, "prenom": "Zoë", "nom": "Lefèvre", "telephone": "0612345678"}}})
}

pub(crate) fn sale_event(id: &str, email: &str, tx: &str) -> Value {
    let mut sale = contact_event(id, email);
    sale["event"] = "transaction.created".into();
    sale["data"]["transaction"] = json!({"id": tx, "amount": 49, "currency": "EUR", "products": [{"name": "Cours"}]});
    sale
}

pub(crate) const PD_UNSUBSCRIBED: &str = "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b";
pub(crate) const PD_FIELD: &str = "8f4e1c2b9a7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f";

async fn pipedrive(api: &Vendor) -> Relay {
    let url = api.serve();
    Relay::start(
        "pipedrive",
        &[
            ("PIPEDRIVE_BASE_URL", &url),
            ("PIPEDRIVE_API_TOKEN", "pd-token"),
            ("PIPEDRIVE_TRANSACTION_FIELD", PD_FIELD),
            ("PIPEDRIVE_UNSUBSCRIBED_FIELD", PD_UNSUBSCRIBED),
        ],
    )
    .await
}

#[tokio::test]
async fn pipedrive_v2_creates_a_new_person_and_updates_a_known_one() {
    let api = Vendor::new("pipedrive");
    let relay = pipedrive(&api).await;
    relay.send(&contact_event("p1", "new@example.com")).await;
    relay.wait_for("delivered", 1).await;
    relay.send(&contact_event("p2", "New@Example.com")).await;
    relay.wait_for("delivered", 2).await;
    assert_eq!(
        api.calls(),
        vec!["persons.search", "persons.create", "persons.search", "persons.update"],
        "new → search, create; known → search, update; no deal for a contact event"
    );
    let world = api.world.lock().unwrap();
    let person = &world.contacts["new@example.com"];
    assert_eq!(
        (person["name"].as_str(), person["marketing_status"].as_str()),
        (Some("Zoë Lefèvre"), Some("subscribed"))
    );
    assert!(world.violations.is_empty(), "{:?}", world.violations);
}

#[tokio::test]
async fn pipedrive_sale_sent_twice_and_retried_after_a_lost_answer_leaves_one_deal() {
    let api = Vendor::new("pipedrive");
    api.lose_answers("deals.create", 502, 1);
    let relay = pipedrive(&api).await;
    relay.send(&sale_event("s1", "buyer@example.com", "TX-9")).await;
    // The deal was created, but its answer was lost: the delivery waits for its retry…
    let pending = relay.failed_once().await;
    assert!(pending[0]["last_error"].as_str().unwrap().contains("step deal_create"), "{}", pending[0]);
    // …and, retried, resumes at the deal: found by its transaction field and updated.
    relay.retry(pending[0]["id"].as_str().unwrap()).await;
    relay.wait_for("delivered", 1).await;
    // Learnybox sends the same transaction again (a new notification): still the same deal.
    relay.send(&sale_event("s1-again", "buyer@example.com", "TX-9")).await;
    relay.wait_for("delivered", 2).await;
    assert_eq!(
        api.calls(),
        vec![
            "persons.search",
            "persons.create",
            "deals.search",
            "deals.create",
            "deals.search",
            "deals.update",
            "persons.search",
            "persons.update",
            "deals.search",
            "deals.update",
        ]
    );
    let world = api.world.lock().unwrap();
    assert_eq!(world.deals.len(), 1, "{:?}", world.deals);
    let deal = &world.deals["TX-9"];
    assert_eq!((deal["status"].as_str(), deal["person_id"].as_u64()), (Some("won"), Some(1001)));
    assert!(world.violations.is_empty(), "{:?}", world.violations);
}

#[tokio::test]
async fn retired_pipedrive_v1_paths_are_refused_by_the_fake_as_by_the_vendor() {
    let api = Vendor::new("pipedrive");
    let url = api.serve();
    let resp = client()
        .get(format!("{url}/v1/persons/search?term=x&fields=email"))
        .header("x-api-token", "t")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 410);
    let resp = client()
        .post(format!("{url}/api/v2/persons"))
        .header("x-api-token", "t")
        .header("content-type", "application/json")
        .body(r#"{"name": "x", "emails": "x@y.z"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "a body that breaks the contract");
}

async fn systemeio(api: &Vendor) -> Relay {
    let url = api.serve();
    Relay::start(
        "systemeio",
        &[("SYSTEMEIO_BASE_URL", &url), ("SYSTEMEIO_API_KEY", "sy-key"), ("SYSTEMEIO_UNSUBSCRIBED_TAG_ID", "99")],
    )
    .await
}

#[tokio::test]
async fn systemeio_creates_or_on_422_finds_and_merge_patches() {
    let api = Vendor::new("systemeio");
    let relay = systemeio(&api).await;
    relay.send(&contact_event("y1", "fresh@example.com")).await;
    relay.wait_for("delivered", 1).await;
    assert_eq!(api.calls(), vec!["contacts.create"]);
    relay.send(&contact_event("y2", "fresh@example.com")).await;
    relay.wait_for("delivered", 2).await;
    assert_eq!(api.calls(), vec!["contacts.create", "contacts.create", "contacts.find_by_email", "contacts.update"]);
    let world = api.world.lock().unwrap();
    assert_eq!(world.contacts["fresh@example.com"]["fields"][0], json!({"slug": "first_name", "value": "Zoë"}));
    // The 422 of the second create is the vendor's answer, not a violation.
    assert!(world.violations.is_empty(), "{:?}", world.violations);
}

#[tokio::test]
async fn systemeio_update_failing_is_retried_from_the_update_alone() {
    let api = Vendor::new("systemeio");
    let relay = systemeio(&api).await;
    relay.send(&contact_event("y3", "taken@example.com")).await;
    relay.wait_for("delivered", 1).await;
    api.lose_answers("contacts.update", 503, 1);
    relay.send(&contact_event("y4", "taken@example.com")).await;
    relay.retry(relay.failed_once().await[0]["id"].as_str().unwrap()).await;
    relay.wait_for("delivered", 2).await;
    assert_eq!(
        api.calls(),
        vec!["contacts.create", "contacts.create", "contacts.find_by_email", "contacts.update", "contacts.update"],
        "the create (422) and the search are not repeated"
    );
}

#[tokio::test]
async fn hubspot_sale_sent_twice_is_one_deal_associated_with_its_contact() {
    let api = Vendor::new("hubspot");
    let url = api.serve();
    let relay = Relay::start(
        "hubspot",
        &[("HUBSPOT_BASE_URL", &url), ("HUBSPOT_ACCESS_TOKEN", "hs-token"), ("HUBSPOT_SUBSCRIPTION_ID", "7898721")],
    )
    .await;
    relay.send(&sale_event("h1", "buyer@example.com", "TX-1")).await;
    relay.wait_for("delivered", 1).await;
    relay.send(&sale_event("h2", "buyer@example.com", "TX-1")).await;
    relay.wait_for("delivered", 2).await;
    let mut refund = sale_event("h3", "buyer@example.com", "TX-1");
    refund["event"] = "transaction.refunded".into();
    relay.send(&refund).await;
    relay.wait_for("delivered", 3).await;
    let world = api.world.lock().unwrap();
    assert_eq!(world.deals.len(), 1, "{:?}", world.deals);
    let deal = &world.deals["TX-1"];
    assert_eq!(deal["properties"]["dealstage"], "closedlost", "the refund moved the one deal");
    assert_eq!(deal["contacts"], json!([world.contacts["buyer@example.com"]["id"]]));
    assert!(world.violations.is_empty(), "{:?}", world.violations);
}

#[tokio::test]
async fn salesforce_sale_sent_twice_is_one_opportunity_and_a_new_contact_is_created_once() {
    let api = Vendor::new("salesforce");
    let url = api.serve();
    let relay = Relay::start(
        "salesforce",
        &[
            ("SALESFORCE_INSTANCE_URL", &url),
            ("SALESFORCE_CLIENT_ID", "sf-id"),
            ("SALESFORCE_CLIENT_SECRET", "sf-secret"),
            ("SALESFORCE_ACCOUNT_ID", "001000000000001AAA"),
        ],
    )
    .await;
    relay.send(&sale_event("f1", "buyer@example.com", "TX-5")).await;
    relay.wait_for("delivered", 1).await;
    relay.send(&sale_event("f2", "buyer@example.com", "TX-5")).await;
    relay.wait_for("delivered", 2).await;
    assert_eq!(
        api.calls(),
        vec![
            "contact.upsert",
            "contact.upsert",
            "opportunity.upsert",
            "opportunity.upsert",
            "contact.upsert",
            "opportunity.upsert",
        ],
        "first: update-only misses, create; again: updates only"
    );
    let world = api.world.lock().unwrap();
    assert_eq!((world.deals.len(), world.contacts.len()), (1, 1));
    let opp = &world.deals["TX-5"];
    assert_eq!(
        (opp["StageName"].as_str(), opp["ContactId"].as_str()),
        (Some("Closed Won"), world.contacts["buyer@example_com"]["Id"].as_str())
    );
    assert_eq!(world.contacts["buyer@example_com"]["LastName"], "Lefèvre");
    assert!(world.violations.is_empty(), "{:?}", world.violations);
}
