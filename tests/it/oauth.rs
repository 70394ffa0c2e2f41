//! OAuth 2.0 routes against a loopback token server that rotates refresh tokens: the access token
//! is cached, fetched again once it expires and once after a 401, and the rotated refresh token
//! survives a restart of the relay.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::helpers::*;
use lbx_relay::store::roles::*;

#[derive(Default)]
struct TokenServer {
    /// The refresh token that is valid now; each refresh replaces it.
    refresh: Mutex<String>,
    /// Every token request's form, in order.
    requests: Mutex<Vec<Vec<(String, String)>>>,
    issued: Mutex<u32>,
    expires_in: Mutex<u64>,
}

impl TokenServer {
    /// The refresh token each token request presented, in order.
    fn refresh_tokens_used(&self) -> Vec<String> {
        let requests = self.requests.lock().unwrap();
        requests.iter().map(|f| f.iter().find(|(k, _)| k == "refresh_token").unwrap().1.clone()).collect()
    }
}

async fn token(state: web::Data<TokenServer>, form: web::Form<Vec<(String, String)>>) -> HttpResponse {
    let form = form.into_inner();
    state.requests.lock().unwrap().push(form.clone());
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
    if get("client_id") != "relay-app" || get("client_secret") != "app-secret" {
        return HttpResponse::Unauthorized().json(json!({"error": "invalid_client"}));
    }
    let mut valid = state.refresh.lock().unwrap();
    if get("grant_type") != "refresh_token" || get("refresh_token") != *valid {
        return HttpResponse::BadRequest().json(json!({"error": "invalid_grant"}));
    }
    let mut issued = state.issued.lock().unwrap();
    *issued += 1;
    *valid = format!("rt-{}", *issued + 1);
    HttpResponse::Ok().json(json!({
        "access_token": format!("at-{}", *issued),
        "token_type": "Bearer",
        "expires_in": *state.expires_in.lock().unwrap(),
        "refresh_token": *valid,
    }))
}

async fn start_token_server(expires_in: u64) -> (String, Arc<TokenServer>) {
    let state = Arc::new(TokenServer {
        refresh: Mutex::new("rt-1".into()),
        expires_in: Mutex::new(expires_in),
        ..Default::default()
    });
    let base = serve_loopback(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), state.clone(), token);
    (format!("{base}/oauth/token"), state)
}

fn oauth_config(token_url: &str) -> TestConfig {
    TestConfig {
        route_extra: format!(
            r#"auth = {{ type = "oauth2", token_url = "{token_url}", client_id = "relay-app", client_secret = "app-secret", refresh_token = "rt-1" }}"#
        ),
        ..TestConfig::default()
    }
}

fn bearer(r: &Received) -> String {
    r.header("authorization").unwrap_or_default().to_string()
}

#[tokio::test]
async fn the_token_is_cached_refreshed_on_expiry_and_once_after_a_401() {
    // expires_in = 1 h: the relay refreshes a minute early, at 59 min on its clock, which the test
    // moves instead of waiting.
    let (token_url, server) = start_token_server(3600).await;
    let r = driven_relay(oauth_config(&token_url)).await;
    let events = sample_events();
    for e in &events[..3] {
        r.accept(e).await;
    }
    assert_eq!(r.round().await, 3);
    assert!(r.crm.received().iter().all(|r| bearer(r) == "Bearer at-1"), "one token for all three");
    assert_eq!(server.requests.lock().unwrap().len(), 1, "fetched once, then cached");

    r.advance_ms(59 * 60_000 - 1);
    r.accept(&events[3]).await;
    assert_eq!(r.round().await, 1);
    assert_eq!(bearer(&r.crm.received()[3]), "Bearer at-1", "still cached a millisecond before its refresh time");
    r.advance_ms(1);
    r.accept(&events[4]).await;
    assert_eq!(r.round().await, 1);
    assert_eq!(bearer(&r.crm.received()[4]), "Bearer at-2", "expiring → a new token");

    // The CRM refuses the token: one new token, the same request sent again, delivered.
    r.crm.respond_with(&[401]);
    r.accept(&events[5]).await;
    assert_eq!(r.round().await, 1);
    let got = r.crm.received();
    assert_eq!((got[5].status, bearer(&got[5]).as_str()), (401, "Bearer at-2"));
    assert_eq!((got[6].status, bearer(&got[6]).as_str()), (200, "Bearer at-3"));
    assert_eq!(got[5].header("idempotency-key"), got[6].header("idempotency-key"));
    assert_eq!(r.count("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'"), 6);
    assert_eq!(
        server.refresh_tokens_used(),
        vec!["rt-1", "rt-2", "rt-3"],
        "each refresh used the newest rotated token"
    );
    let stored: String = rusqlite::Connection::open(r.dir.path().join("relay.db"))
        .unwrap()
        .query_row("SELECT refresh_token FROM oauth_tokens", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, "rt-4", "the rotated refresh token is in the store");
}

#[tokio::test]
async fn a_rotated_refresh_token_survives_a_restart() {
    let (token_url, server) = start_token_server(3600).await;
    let cfg = oauth_config(&token_url);
    let app = spawn_app_with(cfg.clone()).await;
    app.post_event(&sample_events()[0]).await;
    wait_until(Duration::from_secs(10), "delivered", || async { app.crm.count() == 1 }).await;
    let (dir, crm) = app.stop().await;
    // rt-1 (still in routes.toml) is now revoked by the server; only rt-2 works.
    let app = start_in(dir, crm, &cfg).await;
    app.post_event(&sample_events()[1]).await;
    wait_until(Duration::from_secs(10), "delivered after the restart", || async {
        app.deliveries("status=delivered").await.len() == 2
    })
    .await;
    let last = server.requests.lock().unwrap().last().cloned().unwrap();
    assert!(last.contains(&("refresh_token".into(), "rt-2".into())), "{last:?}");
    assert_eq!(bearer(&app.crm.received()[1]), "Bearer at-2");
}

#[tokio::test]
async fn a_refused_token_request_is_retried_with_its_reason_and_no_secret() {
    let (token_url, _server) = start_token_server(3600).await;
    let mut cfg = oauth_config(&token_url);
    cfg.route_extra = cfg.route_extra.replace("app-secret", "wrong-secret");
    let app = spawn_app_with(cfg).await;
    app.post_event(&sample_events()[0]).await;
    wait_until(Duration::from_secs(10), "failed after the schedule", || async {
        !app.deliveries("status=failed").await.is_empty()
    })
    .await;
    assert_eq!(app.crm.count(), 0, "nothing sent without a token");
    let d = &app.deliveries("status=failed").await[0];
    assert_eq!(d["attempts"], 3, "retried on the schedule like a CRM outage");
    let error = d["last_error"].as_str().unwrap();
    assert!(error.contains("token endpoint answered 401"), "{error}");
    assert!(!error.contains("wrong-secret"));
}

/// Two replicas on one PostgreSQL database: when one rotates the refresh token, the other refreshes
/// with the new one (the old one is revoked by the server).
#[tokio::test]
async fn replicas_follow_each_others_rotations_on_postgres() {
    let Some(schema) = pg_schema("replicas_follow_each_others_rotations_on_postgres").await else { return };
    let (token_url, server) = start_token_server(3600).await;
    let store_cfg = store_config(lbx_relay::config::StoreBackend::Postgres { url: schema.url().into() });
    let (store_a, store_b) = (
        lbx_relay::store::Store::open(&store_cfg).await.unwrap(),
        lbx_relay::store::Store::open(&store_cfg).await.unwrap(),
    );
    let app = lbx_relay::config::OAuthConfig {
        token_url,
        client_id: "relay-app".into(),
        client_secret: "app-secret".to_string().into(),
        refresh_token: Some("rt-1".to_string().into()),
        scope: None,
    };
    let client = client();
    let (a, b) = (
        lbx_relay::delivery::oauth::Tokens::new(lbx_relay::clock::Clock::system()),
        lbx_relay::delivery::oauth::Tokens::new(lbx_relay::clock::Clock::system()),
    );
    use secrecy::ExposeSecret;
    assert_eq!(a.bearer(&app, &store_a, &client, None).await.unwrap().expose_secret(), "at-1");
    // Replica B starts later with rt-1 in its config; the server only accepts rt-2 now.
    assert_eq!(b.bearer(&app, &store_b, &client, None).await.unwrap().expose_secret(), "at-2");
    // And A, refused by the CRM, follows B's rotation in turn.
    let stale = a.bearer(&app, &store_a, &client, None).await.unwrap();
    assert_eq!(a.bearer(&app, &store_a, &client, Some(&stale)).await.unwrap().expose_secret(), "at-3");
    assert_eq!(server.refresh_tokens_used(), vec!["rt-1", "rt-2", "rt-3"]);
    schema.drop().await;
}

#[tokio::test]
async fn an_attempt_longer_than_its_lease_is_never_sent_twice() {
    // The lease is 4 s (timeout) + 1 s (pacing) + 500 ms. The attempt: a 401 after 3 s, a token
    // fetch, then the re-send answered after 3 s more. Without renewal the lease runs out at
    // 5.5 s and a second worker sends the delivery again (at 5.5 s, before the first ends).
    let (token_url, server) = start_token_server(3600).await;
    let mut cfg = oauth_config(&token_url);
    cfg.route_extra.push_str("\nretry = { schedule = [\"1h\"], timeout = \"4s\" }");
    let app = spawn_app_with(cfg).await;
    app.crm.delay(Duration::from_millis(3000));
    app.crm.respond_with(&[401]);
    app.post_event(&sample_events()[0]).await;
    wait_until(Duration::from_secs(20), "delivered", || async { !app.deliveries("status=delivered").await.is_empty() })
        .await;
    assert_eq!(app.crm.count(), 2, "the 401 and its re-send, nothing more");
    assert_eq!(server.requests.lock().unwrap().len(), 2, "the first token and the one after the 401");
}

#[tokio::test]
async fn fetched_tokens_never_reach_the_record_when_a_crm_echoes_its_request() {
    async fn issue() -> HttpResponse {
        HttpResponse::Ok().json(json!({"access_token": "access-token-very-secret-123", "expires_in": 3600,
                                        "refresh_token": "refresh-token-very-secret-456"}))
    }
    async fn echo(req: actix_web::HttpRequest) -> HttpResponse {
        let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        HttpResponse::UnprocessableEntity().json(json!({"error": "bad request", "you sent": auth}))
    }
    let token_url = serve_loopback(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), Arc::new(()), issue);
    let crm = serve_loopback(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), Arc::new(()), echo);
    let r = driven_relay(TestConfig {
        schedule: vec![],
        route_extra: format!(
            r#"auth = {{ type = "oauth2", token_url = "{token_url}/t", client_id = "c", client_secret = "app-secret", refresh_token = "rt-initial-value" }}"#
        ),
        ..TestConfig::default()
    })
    .await;
    // Point the route at the echoing CRM.
    let path = r.dir.path().join("routes.toml");
    let text =
        std::fs::read_to_string(&path).unwrap().replace(&format!("{}/contacts", r.crm.url), &format!("{crm}/contacts"));
    std::fs::write(&path, text).unwrap();
    r.relay.reload().unwrap();
    r.accept(&sample_events()[0]).await;
    r.round().await;
    let rows = r
        .relay
        .store
        .list_deliveries(lbx_relay::store::DeliveryFilter { limit: 1, ..Default::default() })
        .await
        .unwrap();
    let d = &rows[0];
    assert_eq!(d.status, "failed");
    let detail = r.relay.store.event_detail(&d.event_id).await.unwrap().unwrap();
    let all = format!("{d:?} {:?}", detail.attempts);
    assert!(all.contains("you sent"), "the echo is recorded: {all}");
    assert!(!all.contains("access-token-very-secret-123"), "{all}");
    assert!(!all.contains("refresh-token-very-secret-456"), "{all}");
}
