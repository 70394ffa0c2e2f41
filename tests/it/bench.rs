//! The load tool: its generator counts every answer exactly (200s, errors, closed connections)
//! against a loopback server, and `bench --rate --duration` reports a steady run end to end.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use actix_web::{web, HttpResponse};
use lbx_relay::bench::generator::{self, Load, Progress};
use serde_json::Value;

use crate::helpers::*;

#[derive(Default)]
struct Seen {
    bodies: Mutex<Vec<String>>,
}

/// 200 to even numbers, 500 to odd ones; every seventh answer closes the connection.
async fn picky(state: web::Data<Seen>, body: web::Bytes) -> HttpResponse {
    let text = String::from_utf8_lossy(&body).into_owned();
    let n: usize = text.parse().unwrap_or(1);
    state.bodies.lock().unwrap().push(text);
    let mut answer = if n % 2 == 0 { HttpResponse::Ok() } else { HttpResponse::InternalServerError() };
    if n % 7 == 0 {
        answer.insert_header(("Connection", "close"));
    }
    answer.body(format!("answer to {n}"))
}

#[tokio::test]
async fn the_generator_sends_each_request_once_and_counts_every_answer() {
    let seen = Arc::new(Seen::default());
    let url = serve_loopback(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), seen.clone(), picky);
    let addr = url.trim_start_matches("http://").parse().unwrap();
    let n = 500;
    let requests: Vec<Vec<u8>> =
        (0..n).map(|i| generator::post("/hooks/x", "127.0.0.1", i.to_string().as_bytes())).collect();
    let progress = Arc::new(Progress::new(n));
    let load = Load {
        addrs: vec![addr],
        requests: Arc::new(requests),
        connections: 8,
        threads: 2,
        rate: None,
        duration: None,
    };
    let watched = progress.clone();
    let outcome = tokio::task::spawn_blocking(move || generator::run(load, watched)).await.unwrap().unwrap();
    assert_eq!(outcome.sent, n);
    assert_eq!(outcome.ack.len(), n as u64, "one ack latency per request");
    assert_eq!(progress.accepted.load(Ordering::Relaxed), n / 2, "the 200s");
    assert_eq!(progress.errors.load(Ordering::Relaxed), n / 2, "the 500s");
    assert!(progress.sent_at.iter().all(|t| t.load(Ordering::Relaxed) > 0), "every request's send time recorded");
    let mut bodies: Vec<usize> = seen.bodies.lock().unwrap().iter().map(|b| b.parse().unwrap()).collect();
    bodies.sort_unstable();
    assert_eq!(bodies, (0..n).collect::<Vec<_>>(), "each request arrived exactly once, closed connections too");
}

#[tokio::test]
async fn the_generator_counts_a_server_that_is_not_there_as_errors() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let requests: Vec<Vec<u8>> = (0..20).map(|i| generator::post("/", "x", i.to_string().as_bytes())).collect();
    let progress = Arc::new(Progress::new(20));
    let load = Load {
        addrs: vec![addr],
        requests: Arc::new(requests),
        connections: 4,
        threads: 1,
        rate: None,
        duration: None,
    };
    let watched = progress.clone();
    tokio::task::spawn_blocking(move || generator::run(load, watched)).await.unwrap().unwrap();
    assert_eq!(progress.accepted.load(Ordering::Relaxed), 0);
    assert_eq!(progress.errors.load(Ordering::Relaxed), 20);
}

#[tokio::test]
async fn bench_at_a_steady_rate_reports_deliveries_and_the_backlog_each_second() {
    let (code, out, err) = tokio::task::spawn_blocking(|| {
        run_cli(&["bench", "--rate", "300", "--duration", "2s", "-c", "8", "--json"], None, &[])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["events"], 600, "rate × duration: {report}");
    assert_eq!(report["sent"], 600);
    assert_eq!(report["accepted"], 600);
    assert_eq!(report["delivered"], 600);
    assert_eq!(report["rate"], 300);
    assert!(report["generator"].as_str().unwrap().contains("HTTP/1.1"));
    let series = report["series"].as_array().unwrap();
    assert!(series.len() >= 2, "a sample each second: {report}");
    let last = series.last().unwrap();
    assert!(last["accepted"].as_u64().unwrap() <= 600);
    assert!(report["delivery_latency"]["p99_ms"].as_f64().unwrap() > 0.0);
    assert!(report["delivered_during_ingest_per_second"].as_f64().unwrap() > 0.0);
    let slowest = series.iter().map(|s| s["ack_max_ms"].as_f64().unwrap()).fold(0.0, f64::max);
    assert!(slowest > 0.0, "each second says its slowest ack: {report}");
    assert!(slowest <= report["ack_latency"]["max_ms"].as_f64().unwrap() + 0.01, "{report}");
    assert!(report["bench_cpu_seconds"].as_f64().unwrap() > 0.0, "the generator's own CPU: {report}");
    let machine = &report["machine_cpu"];
    assert!(machine["cores"].as_u64().unwrap() >= 1, "{machine}");
    let shares = ["busy_share", "iowait_share", "steal_share"].map(|k| machine[k].as_f64().unwrap());
    assert!(shares[0] > 0.0, "the relay and the generator ran: {machine}");
    assert!(shares.iter().all(|s| (0.0..=1.0).contains(s)) && shares.iter().sum::<f64>() <= 1.0 + 1e-9, "{machine}");
    let writer = &report["relay_writer"];
    let operations = writer["operations"].as_u64().unwrap();
    assert!(operations >= 1200, "at least an ingest and a settle per event: {writer}");
    assert!(writer["batches"].as_u64().unwrap() <= operations, "{writer}");
    assert!(writer["batch_max_le_ms"].as_f64().unwrap() >= writer["batch_p99_le_ms"].as_f64().unwrap());
}
