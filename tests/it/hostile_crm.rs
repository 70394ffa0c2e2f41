//! A CRM (or its token server) cannot break an attempt or hold a route for ever: absurd reset and
//! `Retry-After` values are capped at 6 h and the request is sent once (SQLite and PostgreSQL), a
//! pause is lifted by a manual retry or a reload, a token answer is read no further than 64 KiB, and
//! a kept-alive connection the CRM closes unanswered costs one resend at once, not a retry, and a
//! connection is reused however many workers opened them (no cap on idle ones to close).

use lbx_relay::store::roles::*;
use lbx_relay::store::DeliveryFilter;

use crate::helpers::*;

/// (pending, delivered, failed) deliveries, read through the store (either backend).
async fn statuses(r: &DrivenRelay) -> (usize, usize, usize) {
    let rows = r.relay.store.list_deliveries(DeliveryFilter { limit: 100, ..DeliveryFilter::default() }).await.unwrap();
    let n = |s: &str| rows.iter().filter(|d| d.status == s).count();
    (n("pending"), n("delivered"), n("failed"))
}

const SIX_HOURS_MS: i64 = 6 * 3600 * 1000;

async fn a_200_with_an_absurd_reset_header_is_delivered_once(store_url: Option<String>) {
    let r = driven_relay(TestConfig { schedule: vec!["1m"], store_url, ..TestConfig::default() }).await;
    r.crm.answer_header("X-RateLimit-Reset", "1e20");
    r.crm.answer_header("X-RateLimit-Remaining", "0");
    r.accept(&sample_events()[0]).await;
    assert_eq!(r.round().await, 1);
    assert_eq!(statuses(&r).await, (0, 1, 0), "delivered, not left pending by a panic");
    // Long past any lease: nothing is sent again.
    r.advance_ms(SIX_HOURS_MS + 60_000);
    assert_eq!(r.round().await, 0);
    assert_eq!(r.crm.count(), 1, "the CRM got the request once");
    let detail = r.relay.store.event_detail(&first_event_id(&r).await).await.unwrap().unwrap();
    assert_eq!(detail.attempts.len(), 1, "one attempt recorded");
    assert_eq!(detail.attempts[0].status, Some(200));
}

async fn first_event_id(r: &DrivenRelay) -> String {
    let rows = r.relay.store.list_deliveries(DeliveryFilter { limit: 1, ..DeliveryFilter::default() }).await.unwrap();
    rows[0].event_id.clone()
}

async fn a_429_asking_for_a_year_pauses_the_route_six_hours(store_url: Option<String>) {
    let r = driven_relay(TestConfig { schedule: vec!["1m"], store_url, ..TestConfig::default() }).await;
    r.crm.respond_with(&[429]);
    r.crm.retry_after("99999999999999999999999");
    r.accept(&sample_events()[0]).await;
    assert_eq!(r.round().await, 1);
    r.advance_ms(SIX_HOURS_MS - 1);
    assert_eq!(r.round().await, 0, "paused for the capped time");
    r.advance_ms(1);
    assert_eq!(r.round().await, 1, "sent again after 6 h, not after a year");
    assert_eq!(statuses(&r).await, (0, 1, 0));
    assert_eq!(r.crm.count(), 2);
}

#[tokio::test]
async fn a_200_with_an_absurd_reset_header_is_delivered_once_on_sqlite() {
    a_200_with_an_absurd_reset_header_is_delivered_once(None).await;
}

#[tokio::test]
async fn a_200_with_an_absurd_reset_header_is_delivered_once_on_postgres() {
    let Some(schema) = pg_schema("a_200_with_an_absurd_reset_header_is_delivered_once_on_postgres").await else {
        return;
    };
    a_200_with_an_absurd_reset_header_is_delivered_once(Some(schema.url())).await;
    schema.drop().await;
}

#[tokio::test]
async fn a_429_asking_for_a_year_pauses_the_route_six_hours_on_sqlite() {
    a_429_asking_for_a_year_pauses_the_route_six_hours(None).await;
}

#[tokio::test]
async fn a_429_asking_for_a_year_pauses_the_route_six_hours_on_postgres() {
    let Some(schema) = pg_schema("a_429_asking_for_a_year_pauses_the_route_six_hours_on_postgres").await else {
        return;
    };
    a_429_asking_for_a_year_pauses_the_route_six_hours(Some(schema.url())).await;
    schema.drop().await;
}

#[tokio::test]
async fn a_pause_is_lifted_by_a_manual_retry_of_its_route_and_by_a_reload() {
    let app = spawn_app_with(TestConfig { schedule: vec!["1m"], ..TestConfig::default() }).await;
    app.crm.respond_with(&[429, 429]);
    app.crm.retry_after("21600");
    app.post_event(&sample_events()[0]).await;
    let paused = || async {
        let v: serde_json::Value = app.admin_get("/api/routes").await.json().await.unwrap();
        v["routes"][0]["paused_until"].is_string()
    };
    crate::helpers::wait_until(std::time::Duration::from_secs(10), "the route paused", &paused).await;
    // The operator retries its delivery: it goes now, the pause does not hold it.
    let id = app.deliveries("status=pending").await[0]["id"].as_str().unwrap().to_string();
    assert_eq!(app.admin_post(&format!("/api/deliveries/{id}/retry")).await.status(), 200);
    crate::helpers::wait_until(std::time::Duration::from_secs(10), "sent again at once", || async {
        app.crm.count() == 2
    })
    .await;
    // Paused again by the second 429; a reload lifts it.
    crate::helpers::wait_until(std::time::Duration::from_secs(10), "paused again", &paused).await;
    assert_eq!(app.admin_post("/api/reload").await.status(), 200);
    assert!(!paused().await, "a reload lifts the pause");
}

#[tokio::test]
async fn a_token_server_answering_megabytes_is_read_no_further_than_64_kib() {
    use actix_web::HttpResponse;
    async fn huge() -> HttpResponse {
        // A valid token answer, padded past 64 KiB: read whole, it would work; bounded, it cannot.
        let pad = "A".repeat(2 * 1024 * 1024);
        HttpResponse::Ok()
            .content_type("application/json")
            .body(format!(r#"{{"pad":"{pad}","access_token":"tok","expires_in":3600}}"#))
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let token_url = serve_loopback(listener, std::sync::Arc::new(()), huge);
    let r = driven_relay(TestConfig {
        schedule: vec!["1m"],
        route_extra: format!(
            "auth = {{ type = \"oauth2\", token_url = \"{token_url}/token\", client_id = \"id\", client_secret = \"s\" }}"
        ),
        ..TestConfig::default()
    })
    .await;
    r.accept(&sample_events()[0]).await;
    r.round().await;
    assert_eq!(r.crm.count(), 0, "no token was taken from a cut answer");
    let rows = r.relay.store.list_deliveries(DeliveryFilter { limit: 1, ..DeliveryFilter::default() }).await.unwrap();
    assert!(rows[0].last_error.as_deref().unwrap_or_default().contains("oauth"), "{rows:?}");
}

/// A loopback CRM speaking plain HTTP/1.1 over TCP: it answers 200 to the first request on its
/// first connection and keeps that connection alive, then closes it when the next request comes
/// on it, unanswered (what a CRM whose keep-alive timer fired does to a request already on its
/// way). Later connections are answered. Each request is logged: "answered" or "closed".
async fn crm_closing_its_kept_alive_connection() -> (String, std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = log.clone();
    tokio::spawn(async move {
        for connection in 0.. {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let log = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for request in 0.. {
                    if !read_http_request(&mut stream, &mut buf).await {
                        return;
                    }
                    if connection == 0 && request == 1 {
                        log.lock().unwrap().push("closed");
                        return; // dropped: the relay reads the end of the connection, no answer
                    }
                    log.lock().unwrap().push("answered");
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"id\":\"c1\"}";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, log)
}

#[tokio::test]
async fn a_request_on_a_connection_the_crm_closes_unanswered_is_sent_again_at_once_on_a_new_one() {
    let (url, log) = crm_closing_its_kept_alive_connection().await;
    let steps = format!("[[routes.steps]]\nname = \"upsert\"\nurl = \"{url}/contacts\"\ntemplate = \"crm.json.hbs\"\n");
    let r = driven_relay(TestConfig { schedule: vec!["1m"], steps: Some(steps), ..TestConfig::default() }).await;
    let events = sample_events();
    r.accept(&events[0]).await;
    assert_eq!(r.round().await, 1);
    assert_eq!(statuses(&r).await, (0, 1, 0));
    assert_eq!(*log.lock().unwrap(), ["answered"]);

    // The second delivery goes out on the kept-alive connection, which the CRM closes unanswered.
    let second = events.iter().find(|e| e["event"] != events[0]["event"]).unwrap_or(&events[1]);
    let lbx_relay::ingest::Outcome::Stored { event_id, .. } = r.accept(second).await else { panic!("stored") };
    assert_eq!(r.round().await, 1);
    assert_eq!(*log.lock().unwrap(), ["answered", "closed", "answered"], "sent again on a new connection");
    assert_eq!(statuses(&r).await, (0, 2, 0), "delivered now, not a minute later by the retry schedule");
    // Not a failed attempt (route health and alerts count those): one attempt, both requests shown.
    r.advance_ms(120_000);
    assert_eq!(r.round().await, 0, "nothing left to send");
    let attempts = r.relay.store.event_detail(&event_id).await.unwrap().unwrap().attempts;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].status, Some(200));
    let exchanges: Vec<serde_json::Value> = serde_json::from_str(attempts[0].detail.as_deref().unwrap()).unwrap();
    assert_eq!(exchanges.len(), 2, "{exchanges:?}");
    let first_error = exchanges[0]["error"].as_str().unwrap();
    assert!(first_error.contains("closed") && first_error.contains("sent again"), "{first_error}");
    assert!(exchanges[0]["response"].is_null());
    assert_eq!(exchanges[1]["response"]["status"], 200);
    assert!(exchanges[1]["error"].is_null());
}

#[tokio::test]
async fn a_crm_closing_every_connection_unanswered_gets_two_requests_then_the_retry_schedule() {
    // Every connection is closed when its request arrives: one resend, then the schedule's retry.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = taken.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    let steps = format!("[[routes.steps]]\nname = \"upsert\"\nurl = \"{url}/contacts\"\ntemplate = \"crm.json.hbs\"\n");
    let r = driven_relay(TestConfig { schedule: vec!["1m"], steps: Some(steps), ..TestConfig::default() }).await;
    r.accept(&sample_events()[0]).await;
    assert_eq!(r.round().await, 1);
    assert_eq!(taken.load(std::sync::atomic::Ordering::SeqCst), 2, "the request and one resend, no more");
    assert_eq!(statuses(&r).await, (1, 0, 0), "left for the retry schedule");
    let rows = r.relay.store.list_deliveries(DeliveryFilter { limit: 1, ..DeliveryFilter::default() }).await.unwrap();
    let error = rows[0].last_error.as_deref().unwrap();
    assert!(error.starts_with("request failed") && !error.contains("sent again"), "{error}");
    // The schedule's minute, with its ±10 % jitter.
    r.advance_ms(53_000);
    assert_eq!(r.round().await, 0, "the schedule's minute, not at once");
    r.advance_ms(14_000);
    assert_eq!(r.round().await, 1);
    assert_eq!(taken.load(std::sync::atomic::Ordering::SeqCst), 4);
}

/// A loopback CRM over plain HTTP/1.1 keep-alive that holds every answer until `wave` requests are
/// waiting, then answers them together; it counts the connections it accepted.
async fn crm_answering_in_waves(wave: usize) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/contacts", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(wave));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while read_http_request(&mut stream, &mut buf).await {
                    barrier.wait().await;
                    if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, accepted)
}

/// More requests in flight than the 64 idle connections per host the HTTP client once kept: the
/// next burst reuses every connection the first one opened, instead of opening (for a CRM over
/// TLS: handshaking) them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_as_wide_as_the_workers_reuses_every_connection_the_last_one_opened() {
    use lbx_relay::delivery::{guard::Reach, send::HttpSender};
    const WIDE: usize = 80;
    let (url, accepted) = crm_answering_in_waves(WIDE).await;
    let sender = std::sync::Arc::new(HttpSender::new(lbx_relay::clock::Clock::system()));
    let target = reqwest::Url::parse(&url).unwrap();
    for burst in 1..=3 {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..WIDE {
            let (sender, target, url) = (sender.clone(), target.clone(), url.clone());
            set.spawn(async move {
                let req = lbx_relay::templates::RenderedRequest {
                    method: reqwest::Method::POST,
                    target,
                    url,
                    headers: Vec::new(),
                    body: format!("{{\"n\":{i}}}"),
                };
                let key = format!("d-{burst}-{i}");
                sender.request(&req, std::time::Duration::from_secs(20), &key, false, Reach::Listed).await
            });
        }
        while let Some(done) = set.join_next().await {
            let r = done.unwrap();
            assert_eq!(r.status, Some(200), "{:?}", r.error);
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            WIDE,
            "burst {burst}: {WIDE} connections in all, each opened once"
        );
    }
}
