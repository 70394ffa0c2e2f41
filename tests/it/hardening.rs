//! Hostile senders, hostile CRMs, failing disks and leaked secrets: each test reproduces an attack
//! or a fault on the real relay and asserts what an operator would observe.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// A CRM on loopback that answers `status` and then streams a body that never ends (as fast as the
/// client reads it); returns its base URL.
async fn endless_body_crm(status: u16) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let _ = sock.read(&mut buf).await;
                let head =
                    format!("HTTP/1.1 {status} Oops\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n");
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
                while sock.write_all(chunk.as_bytes()).await.is_ok() {}
            });
        }
    });
    url
}

#[tokio::test]
async fn a_crm_answering_an_endless_body_costs_a_bounded_prefix_and_the_status_is_recorded() {
    let crm = endless_body_crm(500).await;
    let steps = format!("[[routes.steps]]\nname = \"send\"\nurl = \"{crm}/contacts\"\ntemplate = \"crm.json.hbs\"\n");
    let app = spawn_app_with(TestConfig { schedule: vec!["1h"], steps: Some(steps), ..TestConfig::default() }).await;
    app.post_event(&sample_events()[0]).await;
    // Reading the whole body would never finish: the attempt would end on the 2 s timeout instead.
    wait_until(Duration::from_secs(10), "an attempt recorded", || async {
        app.deliveries("status=pending").await.iter().any(|d| d["attempts"] == 1)
    })
    .await;
    let d = &app.deliveries("status=pending").await[0];
    assert_eq!(d["last_status"], 500, "{d}");
    let error = d["last_error"].as_str().unwrap();
    assert!(error.starts_with("HTTP 500: xxx"), "{error}");
    assert!(error.len() < 1000, "the error keeps a short prefix: {} bytes", error.len());
}
