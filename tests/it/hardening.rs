//! Hostile senders, hostile CRMs, failing disks and leaked secrets: each test reproduces an attack
//! or a fault on the real relay and asserts what an operator would observe.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;
use serde_json::{json, Value};

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

/// Writes the default test config (CRM on a closed port) into a fresh directory, edited by `edit`.
fn config_dir(edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (_public, _admin) = write_process_config(dir.path(), &TestConfig::default(), "http://127.0.0.1:9");
    let path = dir.path().join("routes.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(text)).unwrap();
    dir
}

fn check_in(dir: &tempfile::TempDir) -> (i32, String) {
    let path = dir.path().join("routes.toml");
    let (code, out, err) = run_cli(&["check", "-c", path.to_str().unwrap()], None, &[]);
    (code, format!("{out}{err}"))
}

#[test]
fn check_refuses_a_nice_outside_0_to_19_and_says_what_it_is() {
    for bad in ["-1", "20", "255", "9223372036854775807"] {
        let dir = config_dir(|t| t.replace("workers = 8", &format!("workers = 8\nnice = {bad}")));
        let (code, out) = check_in(&dir);
        assert_eq!(code, 1, "nice = {bad}: {out}");
        assert!(out.contains(&format!("delivery.nice: is {bad}")), "nice = {bad}: {out}");
        assert!(out.contains("from 0 (the same) to 19 (the lowest)"), "{out}");
    }
    // A typo of the key is refused, not ignored.
    let dir = config_dir(|t| t.replace("workers = 8", "workers = 8\nnicee = 5"));
    let (code, out) = check_in(&dir);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nicee"), "{out}");
    for good in ["0", "19"] {
        let dir = config_dir(|t| t.replace("workers = 8", &format!("workers = 8\nnice = {good}")));
        let (code, out) = check_in(&dir);
        assert!(!out.contains("delivery.nice"), "nice = {good}: {out}");
        assert_ne!(code, 1, "nice = {good}: {out}");
    }
}

#[test]
fn check_refuses_zero_workers_one_address_for_both_listeners_and_a_short_admin_token() {
    let dir = config_dir(|t| t.replace("workers = 8", "workers = 0"));
    let (code, out) = check_in(&dir);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("delivery.workers: is 0"), "{out}");

    let dir = config_dir(|t| {
        let public =
            t.lines().find(|l| l.starts_with("listen = ")).unwrap().trim_start_matches("listen = ").to_string();
        let port = public.trim_matches('"').rsplit(':').next().unwrap().to_string();
        t.lines()
            .map(
                |l| if l.starts_with("admin_listen") { format!("admin_listen = \"0.0.0.0:{port}\"") } else { l.into() },
            )
            .collect::<Vec<_>>()
            .join("\n")
    });
    let (code, out) = check_in(&dir);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("the two listeners need different addresses"), "{out}");

    let dir = config_dir(|t| t.replace(ADMIN_TOKEN, "short-token"));
    let (code, out) = check_in(&dir);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("server.admin_token: is shorter than 16 characters"), "{out}");
    assert!(!out.contains("short-token"), "the token itself is never printed: {out}");
}

#[test]
fn an_admin_listener_open_to_the_network_without_a_token_is_warned_about() {
    let dir = config_dir(|t| {
        t.lines()
            .map(|l| match l {
                l if l.starts_with("admin_listen") => format!("admin_listen = \"0.0.0.0:{}\"", free_port()),
                l if l.starts_with("admin_token") => String::new(),
                l => l.into(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    let (code, out) = check_in(&dir);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning: server.admin_listen 0.0.0.0:") && out.contains("LBX_ADMIN_TOKEN"), "{out}");
}

#[tokio::test]
async fn serve_refuses_a_config_whose_templates_check_rejects() {
    let dir = config_dir(|t| t);
    std::fs::write(dir.path().join("crm.json.hbs"), r#"{"email": {{data.data.contact.email}}}"#).unwrap();
    let mut child = start_process(dir.path(), &[], std::process::Stdio::piped());
    let status = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("serve exits instead of serving");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("crm.json.hbs") && err.contains("not valid JSON") && err.contains("refused"), "{err}");
}

#[tokio::test]
async fn a_reload_that_changes_the_store_or_the_delivery_workers_or_priority_says_it_needs_a_restart() {
    let app = spawn_app().await;
    let path = app.dir.path().join("routes.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace("sqlite://relay.db", "sqlite://other.db");
    std::fs::write(&path, text).unwrap();
    let resp = app.admin_post("/api/reload").await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["needs_restart"], serde_json::json!(["store.url"]), "{body}");

    // `[delivery] nice` is set on threads as they start delivering: a restart applies a change.
    // (The file in force now names other.db: only `nice` changes.)
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("workers = 8", "workers = 8\nnice = 3")).unwrap();
    let body: serde_json::Value = app.admin_post("/api/reload").await.json().await.unwrap();
    assert_eq!(body["needs_restart"], serde_json::json!(["delivery.nice"]), "{body}");

    // So is `workers`, which sizes the delivery loop's permits when it starts.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("workers = 8", "workers = 9")).unwrap();
    let body: serde_json::Value = app.admin_post("/api/reload").await.json().await.unwrap();
    assert_eq!(body["needs_restart"], serde_json::json!(["delivery.workers"]), "{body}");
}

#[tokio::test]
async fn repeated_wrong_admin_tokens_are_answered_slowly_and_a_right_one_is_not() {
    let app = spawn_app().await;
    let wrong = |n: u32| {
        let client = app.client.clone();
        let url = format!("{}/api/stats", app.admin);
        async move {
            let started = std::time::Instant::now();
            let resp = client.get(url).bearer_auth(format!("wrong-token-{n}")).send().await.unwrap();
            assert_eq!(resp.status(), 401);
            started.elapsed()
        }
    };
    for n in 0..3 {
        wrong(n).await;
    }
    assert!(wrong(3).await >= Duration::from_millis(250));
    assert!(wrong(4).await >= Duration::from_millis(500));
    assert_eq!(app.admin_get("/api/stats").await.status(), 200);
}

#[tokio::test]
async fn the_quarantine_is_bounded_by_bytes_and_answers_every_body_alike_once_full() {
    let app = spawn_app_with(TestConfig { max_body: "2MiB", ..TestConfig::default() }).await;
    let path = app.dir.path().join("routes.toml");
    let text =
        std::fs::read_to_string(&path).unwrap().replace("max_items = 1000", "max_items = 1000\nmax_bytes = \"2MiB\"");
    std::fs::write(&path, text).unwrap();
    assert_eq!(app.admin_post("/api/reload").await.status(), 200);
    let junk = "j".repeat(900 * 1024);
    for _ in 0..4 {
        assert_eq!(app.post_hook(junk.clone(), &[]).await.status(), 200);
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM quarantine"), 2, "two bodies of 900 KiB fit in 2 MiB, not three");
    let held = app.count("SELECT SUM(length(body)) FROM quarantine");
    assert!(held <= 2 * 1024 * 1024, "{held}");
    // A valid event is answered the same way and still goes through; a small junk body too.
    assert_eq!(app.post_event(&sample_events()[0]).await.status(), 200);
    assert_eq!(app.post_hook("small junk", &[]).await.status(), 200);
    wait_until(Duration::from_secs(5), "delivered", || async { app.crm.count() == 1 }).await;
    let stats: serde_json::Value = app.admin_get("/api/stats").await.json().await.unwrap();
    assert_eq!(stats["quarantined"], 3, "{stats}");
    assert_eq!(
        stats["quarantined_bytes"].as_i64(),
        Some(app.count("SELECT SUM(length(body) + length(headers)) FROM quarantine"))
    );
}

#[tokio::test]
async fn a_database_file_deleted_under_the_relay_stops_acknowledging_and_readyz_says_why() {
    let app = spawn_app().await;
    assert_eq!(app.post_event(&sample_events()[0]).await.status(), 200);
    assert_eq!(app.client.get(format!("{}/readyz", app.admin)).send().await.unwrap().status(), 200);
    std::fs::remove_file(app.db_path()).unwrap();
    for event in &sample_events()[1..4] {
        assert_eq!(app.post_event(event).await.status(), 503, "never 200 for an event that cannot be kept");
    }
    let resp = app.client.get(format!("{}/readyz", app.admin)).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("was deleted while the relay ran"), "{body}");
}

#[tokio::test]
async fn a_damaged_database_is_refused_at_start_with_a_clear_error() {
    let app = spawn_app().await;
    for event in sample_events() {
        app.post_event(&event).await;
    }
    wait_until(Duration::from_secs(10), "deliveries", || async { app.crm.count() >= 10 }).await;
    let (dir, crm) = app.stop().await;
    let db = dir.path().join("relay.db");
    // A self-contained copy (WAL included), cut in half, put where the store's file was.
    let snapshot = dir.path().join("snapshot.db");
    rusqlite::Connection::open(&db).unwrap().execute("VACUUM INTO ?1", [snapshot.to_str().unwrap()]).unwrap();
    for f in ["relay.db", "relay.db-wal", "relay.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    std::fs::rename(&snapshot, &db).unwrap();
    let len = std::fs::metadata(&db).unwrap().len();
    assert!(len > 8192, "{len}");
    std::fs::OpenOptions::new().write(true).open(&db).unwrap().set_len(len / 2).unwrap();
    let config = lbx_relay::config::Config::load(&dir.path().join("routes.toml")).unwrap();
    let runtime = lbx_relay::compiled::Compiled::build(config).unwrap();
    let err = match lbx_relay::app::Application::build(runtime).await {
        Ok(_) => panic!("a damaged database must not be served"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("relay.db is damaged") && err.contains("backup"), "{err}");
    drop(crm);
}

/// Runs `lbx-relay serve` in its own mount namespace where `data/` (the store's directory) is a
/// tmpfs of `size`; `None` when this machine does not allow unprivileged mount namespaces.
fn serve_on_small_disk(dir: &std::path::Path, size: &str) -> Option<std::process::Child> {
    let probe = std::process::Command::new("unshare").args(["-rm", "true"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: unshare -rm is not available here");
        return None;
    }
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let script = format!(
        "mount -t tmpfs -o size={size} tmpfs '{data}' && exec '{bin}' serve -c '{config}'",
        data = dir.join("data").display(),
        bin = env!("CARGO_BIN_EXE_lbx-relay"),
        config = dir.join("routes.toml").display(),
    );
    Some(
        std::process::Command::new("unshare")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .args(["-rm", "sh", "-c", &script])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test]
async fn a_full_disk_answers_503_and_makes_readyz_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TestConfig { store_url: Some("sqlite://data/relay.db".into()), ..TestConfig::default() };
    let (public, admin) = write_process_config(dir.path(), &cfg, "http://127.0.0.1:9");
    let Some(mut child) = serve_on_small_disk(dir.path(), "400k") else { return };
    wait_ready(&admin).await;
    let client = client();
    let padding = "p".repeat(8 * 1024);
    let mut statuses = Vec::new();
    for i in 0..200 {
        let event = serde_json::json!({"event": "contact.created", "id": format!("disk-{i}"), "padding": padding});
        let sealed = seal(&event, SECRET);
        let mut req = client.post(format!("http://{public}/hooks/learnybox")).body(sealed.body);
        for (k, v) in &sealed.headers {
            req = req.header(k, v);
        }
        let status = req.send().await.unwrap().status().as_u16();
        statuses.push(status);
        if status == 503 {
            break;
        }
    }
    let ready = client.get(format!("http://{admin}/readyz")).send().await.unwrap();
    let ready_status = ready.status().as_u16();
    let body = ready.text().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(statuses.last(), Some(&503), "the disk filled up: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 503), "{statuses:?}");
    assert_eq!(ready_status, 503, "{body}");
    assert!(body.contains("full"), "{body}");
}

/// A CRM that accepts connections and never answers; returns its base URL.
async fn hanging_crm() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    url
}

#[tokio::test]
async fn a_crm_that_never_answers_slows_only_its_own_route() {
    let hung = hanging_crm().await;
    let app = spawn_app_with(TestConfig {
        route_extra: format!(
            "\n[[routes]]\nname = \"hung\"\nevents = [\"*\"]\ntemplate = \"crm.json.hbs\"\nurl = \"{hung}/never\"\n\
             retry = {{ schedule = [\"1h\"], timeout = \"60s\" }}\n"
        ),
        ..TestConfig::default()
    })
    .await;
    for i in 0..40 {
        let event = serde_json::json!({"event": "contact.created", "id": format!("iso-{i}"), "data": {}});
        assert_eq!(app.post_event(&event).await.status(), 200);
    }
    // With 8 workers all held by the hanging route, nothing more would go out for 60 s.
    wait_until(Duration::from_secs(20), "the healthy route delivered all forty", || async {
        app.deliveries("status=delivered&route=crm&limit=100").await.len() == 40
    })
    .await;
    let hung_pending = app.deliveries("status=pending&route=hung&limit=100").await;
    assert_eq!(hung_pending.len(), 40, "the hanging route's deliveries are all still waiting");
}

/// Opens a connection that sends request headers promising `length` bytes, then one byte.
async fn slow_sender(public: &str, length: usize) -> tokio::net::TcpStream {
    let mut sock = tokio::net::TcpStream::connect(public.trim_start_matches("http://")).await.unwrap();
    let head = format!(
        "POST /hooks/learnybox HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock
}

#[tokio::test]
async fn slow_bodies_are_cut_off_after_body_timeout_and_real_senders_still_get_through() {
    let app = spawn_app_with(TestConfig {
        server_extra: "body_timeout = \"1s\"\nmax_connections = 64".into(),
        ..TestConfig::default()
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..40 {
        slow.push(slow_sender(&app.public, 100_000).await);
    }
    // A real sender is answered while the slow ones hold their connections.
    assert_eq!(app.post_event(&sample_events()[0]).await.status(), 200);
    // Each slow connection is answered 408 and closed, instead of being held open for ever.
    for mut sock in slow {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(read.is_ok(), "the connection is still open: {text}");
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM events"), 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM quarantine"), 0, "nothing half-received is kept");
}

#[test]
fn the_systemd_unit_raises_the_file_descriptor_limit_above_the_connection_cap() {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/systemd/lbx-relay.service")).unwrap();
    let limit: usize =
        unit.lines().find_map(|l| l.strip_prefix("LimitNOFILE=")).expect("LimitNOFILE is set").trim().parse().unwrap();
    assert!(limit >= 4 * 512, "LimitNOFILE={limit} leaves too little room beyond 512 connections");
}

#[tokio::test]
async fn logs_escape_forged_lines_and_keep_contacts_out_even_at_debug() {
    let crm = FakeCrm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (public, admin) = write_process_config(dir.path(), &TestConfig::default(), &crm.url);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lbx-relay"))
        .env_clear()
        .env("RUST_LOG", "debug")
        .args(["serve", "-c"])
        .arg(dir.path().join("routes.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(&admin).await;
    let client = client();
    let post = |event: serde_json::Value| {
        let sealed = seal(&event, SECRET);
        let mut req = client.post(format!("http://{public}/hooks/learnybox")).body(sealed.body);
        for (k, v) in &sealed.headers {
            req = req.header(k, v);
        }
        req.send()
    };
    let forged = "contact.created\n2026-11-29T00:00:00Z  INFO lbx_relay: FORGED admin token accepted\u{1b}[2J";
    assert_eq!(post(serde_json::json!({"event": forged, "id": "forge-1"})).await.unwrap().status(), 200);
    let contact = serde_json::json!({"event": "contact.created", "id": "pii-1",
        "data": {"contact": {"email": "zebulon.secret@example.org", "prenom": "Zébulonnette", "nom": "Confidentielle"}}});
    assert_eq!(post(contact).await.unwrap().status(), 200);
    wait_until(Duration::from_secs(10), "both delivered", || async { crm.count() == 2 }).await;
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("DEBUG"), "RUST_LOG=debug was in force: {log}");
    assert!(!log.lines().any(|l| l.contains("FORGED") && !l.contains("contact.created")), "a forged line: {log}");
    assert!(log.contains(r"contact.created\n2026"), "the newline is shown escaped: {log}");
    assert!(!log.contains('\u{1b}'), "no terminal escape code reaches the log");
    for pii in ["zebulon.secret@example.org", "Zébulonnette", "Confidentielle"] {
        assert!(!log.contains(pii), "{pii} in the log: {log}");
    }
}

/// A token endpoint that refuses every request and echoes the form it was sent.
async fn echoing_token_server() -> String {
    async fn echo(form: actix_web::web::Form<Vec<(String, String)>>) -> actix_web::HttpResponse {
        actix_web::HttpResponse::BadRequest().json(serde_json::json!({"error": "invalid_client", "you_sent": form.0}))
    }
    let base = serve_loopback(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), std::sync::Arc::new(()), echo);
    format!("{base}/oauth/token")
}

#[tokio::test]
async fn a_secret_echoed_by_a_token_endpoint_is_masked_in_the_api_and_the_stored_attempts() {
    let token_url = echoing_token_server().await;
    let app = spawn_app_with(TestConfig {
        route_extra: format!(
            r#"auth = {{ type = "oauth2", token_url = "{token_url}", client_id = "relay-app", client_secret = "super-secret-client-value", refresh_token = "refresh-secret-value" }}"#
        ),
        ..TestConfig::default()
    })
    .await;
    app.post_event(&sample_events()[0]).await;
    wait_until(Duration::from_secs(10), "an attempt recorded", || async {
        app.deliveries("").await.iter().any(|d| d["attempts"].as_u64() >= Some(1))
    })
    .await;
    let listed = app.admin_get("/api/deliveries").await.text().await.unwrap();
    assert!(listed.contains("invalid_client"), "the error is kept: {listed}");
    let conn = rusqlite::Connection::open(app.db_path()).unwrap();
    let stored: String =
        conn.query_row("SELECT group_concat(coalesce(error, ''), ' | ') FROM attempt_log", [], |r| r.get(0)).unwrap();
    let detail_id = app.deliveries("").await[0]["event_id"].as_str().unwrap().to_string();
    let detail = app.admin_get(&format!("/api/events/{detail_id}")).await.text().await.unwrap();
    for place in [&listed, &stored, &detail] {
        assert!(!place.contains("super-secret-client-value"), "{place}");
        assert!(!place.contains("refresh-secret-value"), "{place}");
        assert!(place.contains("***") || place.is_empty(), "{place}");
    }
}

#[test]
fn an_api_key_in_a_url_is_masked_in_render_output_and_render_errors() {
    let dir = config_dir(|t| {
        t.replace(
            "url = \"http://127.0.0.1:9/contacts\"",
            "url = \"http://127.0.0.1:9/contacts?api_key=${CRM_API_KEY}\"",
        )
    });
    let path = dir.path().join("routes.toml");
    let event = dir.path().join("event.json");
    std::fs::write(&event, r#"{"event": "contact.created", "id": "1"}"#).unwrap();
    let envs = [("CRM_API_KEY", "url-embedded-key-123")];
    let args = ["render", "-c", path.to_str().unwrap(), "--route", "crm", event.to_str().unwrap()];
    let (code, out, err) = run_cli(&args, None, &envs);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("api_key=***") && !out.contains("url-embedded-key-123"), "{out}");
    // The same key in a URL that fails to render: the error names the route, not the key.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("http://127.0.0.1:9/contacts?", "http://{{{data.host}}}/x?")
        .replace("name = \"crm\"", "name = \"crm\"\nallow_templated_host = true");
    std::fs::write(&path, text).unwrap();
    std::fs::write(&event, r#"{"event": "contact.created", "id": "1", "host": "not a host"}"#).unwrap();
    let (code, out, err) = run_cli(&args, None, &envs);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("not a valid http(s) URL") && !err.contains("url-embedded-key-123"), "{err}");
    // And a config error quoting that URL does not print the key either.
    let text = std::fs::read_to_string(&path).unwrap().replace("allow_templated_host = true", "");
    std::fs::write(&path, text).unwrap();
    let (code, out, err) = run_cli(&args, None, &envs);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("allow_templated_host") && !err.contains("url-embedded-key-123"), "{err}");
}

#[test]
fn check_refuses_a_url_whose_host_comes_from_the_event_unless_the_route_allows_it() {
    let dir =
        config_dir(|t| t.replace("url = \"http://127.0.0.1:9/contacts\"", "url = \"http://{{data.host}}/contacts\""));
    let (code, out) = check_in(&dir);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("takes its host or port from the event") && out.contains("allow_templated_host"), "{out}");
    let dir = config_dir(|t| {
        t.replace("url = \"http://127.0.0.1:9/contacts\"", "url = \"http://127.0.0.1:{{data.port}}/contacts\"")
    });
    assert_eq!(check_in(&dir).0, 1, "a templated port is a templated host too");
    let dir = config_dir(|t| {
        t.replace("url = \"http://127.0.0.1:9/contacts\"", "url = \"http://127.0.0.1:9/{{event}}?q={{id}}\"")
    });
    assert_eq!(check_in(&dir).0, 0, "paths and queries may be templated freely");
}

#[tokio::test]
async fn a_templated_host_never_reaches_a_private_address_unless_listed() {
    let crm_port = reqwest::Url::parse(&FakeCrm::start().await.url).unwrap().port().unwrap();
    let app = spawn_app_with(TestConfig {
        steps: Some(
            "[[routes.steps]]\nname = \"send\"\nurl = \"http://{{{data.host}}}/contacts\"\ntemplate = \"crm.json.hbs\"\n"
                .into(),
        ),
        route_extra: "allow_templated_host = true\nretry = { schedule = [\"1h\"] }".into(),
        ..TestConfig::default()
    })
    .await;
    let crm_host = reqwest::Url::parse(&app.crm.url).unwrap();
    let own = format!("127.0.0.1:{}", crm_host.port().unwrap());
    for (i, host) in [
        own.clone(),
        format!("localhost:{}", crm_host.port().unwrap()),
        "169.254.169.254".into(),
        format!("127.0.0.1:{crm_port}"),
    ]
    .iter()
    .enumerate()
    {
        let event = serde_json::json!({"event": "contact.created", "id": format!("ssrf-{i}"), "host": host});
        assert_eq!(app.post_event(&event).await.status(), 200);
    }
    wait_until(Duration::from_secs(10), "all four failed", || async {
        app.deliveries("status=failed").await.len() == 4
    })
    .await;
    assert_eq!(app.crm.count(), 0, "nothing reached the loopback CRM");
    for d in app.deliveries("status=failed").await {
        assert!(d["last_error"].as_str().unwrap().contains("refused"), "{d}");
    }
    // Listed, the same host is reached.
    let path = app.dir.path().join("routes.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "allow_templated_host = true",
        &format!("allow_templated_host = true\nallow_private_hosts = [\"{own}\"]"),
    );
    std::fs::write(&path, text).unwrap();
    assert_eq!(app.admin_post("/api/reload").await.status(), 200);
    let event = serde_json::json!({"event": "contact.created", "id": "ssrf-listed", "host": own});
    app.post_event(&event).await;
    wait_until(Duration::from_secs(10), "the listed host reached", || async { app.crm.count() == 1 }).await;
}

#[tokio::test]
async fn a_contact_is_erased_from_events_attempts_and_the_quarantine_through_the_api_and_the_cli() {
    let app = spawn_app_with(TestConfig { schedule: vec!["1h"], ..TestConfig::default() }).await;
    app.crm.always(500);
    let contact = |id: &str, email: &str| serde_json::json!({"event": "contact.created", "id": id, "data": {"contact": {"email": email, "prenom": "Ada"}}});
    app.post_event(&contact("e1", "Ada.Lovelace@example.org")).await;
    app.post_event(&contact("e2", "someone.else@example.org")).await;
    // A body sealed with another key lands in the quarantine; so does a plaintext one naming her.
    let sealed = seal(&contact("e3", "ada.lovelace@example.org"), "ThisIsNotTheSecretKeyOfTheRelay!");
    app.post_hook(sealed.body, &sealed.headers).await;
    app.post_hook(r#"{"note": "ada.lovelace@example.org", "broken": "#, &[]).await;
    app.post_hook("unrelated junk", &[]).await;
    wait_until(Duration::from_secs(10), "two failed attempts", || async {
        app.count("SELECT COUNT(*) FROM attempt_log") >= 2
    })
    .await;

    let resp = app
        .client
        .delete(format!("{}/api/contacts/ada.lovelace@example.org", app.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["removed"]["events"], 1, "{body}");
    assert_eq!(body["removed"]["quarantined"], 1, "the plaintext one; the other cannot be read: {body}");
    let conn = rusqlite::Connection::open(app.db_path()).unwrap();
    let left: i64 = conn
        .query_row("SELECT COUNT(*) FROM events WHERE instr(lower(payload), 'ada.lovelace') > 0", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM events"), 1, "the other contact stays");
    assert_eq!(app.count("SELECT COUNT(*) FROM deliveries"), 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM quarantine"), 2);

    // Once the right key is added, the CLI finds her in the body it can now open.
    let path = app.dir.path().join("routes.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!("secret_keys = [\"{SECRET}\"]"),
        &format!("secret_keys = [\"{SECRET}\", \"ThisIsNotTheSecretKeyOfTheRelay!\"]"),
    );
    std::fs::write(&path, text).unwrap();
    let (code, out, err) = run_cli(&["forget", "-c", path.to_str().unwrap(), "ada.lovelace@example.org"], None, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0 event(s)") && out.contains("1 quarantined body(ies)"), "{out}");
    assert_eq!(app.count("SELECT COUNT(*) FROM quarantine"), 1, "only the unrelated junk is left");
    let bad = app.client.delete(format!("{}/api/contacts/nobody", app.admin)).bearer_auth(ADMIN_TOKEN).send().await;
    assert_eq!(bad.unwrap().status(), 400);
}

#[tokio::test]
async fn with_max_age_a_captured_body_replayed_later_is_dropped_yet_answered_alike() {
    let at = |minutes_ago: i64| {
        let t = std::time::SystemTime::now() - Duration::from_secs(60 * minutes_ago as u64);
        humantime::format_rfc3339_seconds(t).to_string()
    };
    let fresh = serde_json::json!({"event": "contact.created", "created_at": at(1), "data": {"n": 1}});
    let replayed = serde_json::json!({"event": "contact.created", "created_at": at(90), "data": {"n": 2}});
    let undated = serde_json::json!({"event": "contact.created", "data": {"n": 3}});
    let garbled = serde_json::json!({"event": "contact.created", "created_at": "yesterday-ish", "data": {"n": 4}});
    // max_age set: an event without a readable timestamp is refused too (it could be a replay).
    let app = spawn_app_with(TestConfig { source_extra: "max_age = \"10m\"", ..TestConfig::default() }).await;
    for e in [&fresh, &replayed, &undated, &garbled] {
        assert_eq!(app.post_event(e).await.status(), 200, "every body is answered alike");
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM events"), 1, "only the fresh one");
    let metrics = app.client.get(format!("{}/metrics", app.admin)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l.contains(r#"outcome="stale""#)), "{metrics}");
    assert!(metrics.lines().any(|l| l.contains(r#"outcome="undated""#)), "{metrics}");
    // `undated = "accept"`: events without one are taken in; a stale one still is not.
    let app =
        spawn_app_with(TestConfig { source_extra: "max_age = \"10m\"\nundated = \"accept\"", ..TestConfig::default() })
            .await;
    for e in [&fresh, &replayed, &undated, &garbled] {
        assert_eq!(app.post_event(e).await.status(), 200);
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM events"), 3, "the fresh, the undated and the garbled one");
    let stored: i64 = app.count("SELECT COUNT(*) FROM events WHERE instr(payload, '\"n\":2') > 0");
    assert_eq!(stored, 0, "the replayed capture is not stored");
}

#[tokio::test]
async fn with_an_encryption_key_the_relay_delivers_while_the_database_file_holds_no_contact_data() {
    let app = spawn_app_with(TestConfig {
        store_extra: "encryption_key = \"QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=\"".into(),
        ..TestConfig::default()
    })
    .await;
    app.crm.respond_with(&[500]);
    let event = serde_json::json!({"event": "contact.created", "id": "enc-1",
        "data": {"contact": {"email": "margaret.hamilton@example.org", "prenom": "Margaret"}}});
    assert_eq!(app.post_event(&event).await.status(), 200);
    wait_until(Duration::from_secs(10), "delivered after one retry", || async { app.crm.count() == 2 }).await;
    let sent = app.crm.received()[1].json();
    assert_eq!(sent["data"]["data"]["contact"]["email"], "margaret.hamilton@example.org", "the CRM gets clear data");
    let (dir, _crm) = app.stop().await;
    let db = std::fs::read(dir.path().join("relay.db")).unwrap();
    let wal = std::fs::read(dir.path().join("relay.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(!bytes.windows(9).any(|w| w == b"margaret."), "the address is in the database file in clear");
    }
}

#[tokio::test]
async fn an_address_past_its_budget_of_wrong_tokens_is_refused_without_a_comparison() {
    let app = spawn_app().await;
    // Many connections at once: each wrong token counts for the address, whatever the connection.
    let tries: Vec<_> = (0..24)
        .map(|n| {
            let client = client();
            let url = format!("{}/api/stats", app.admin);
            tokio::spawn(
                async move { client.get(url).bearer_auth(format!("guess-{n}")).send().await.unwrap().status() },
            )
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tries {
        statuses.push(t.await.unwrap().as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 401 || *s == 429), "{statuses:?}");
    // Past the budget, even the right token waits for the window: nothing is compared.
    let resp = app.admin_get("/api/stats").await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_some());
}

#[tokio::test]
async fn a_loopback_admin_listener_answers_only_requests_addressed_to_loopback() {
    let app = spawn_app().await;
    for host in ["evil.example", "evil.example:9090", "127.0.0.1.evil.example", "localhost.evil.example"] {
        let resp = app.client.get(format!("{}/metrics", app.admin)).header("Host", host).send().await.unwrap();
        assert_eq!(resp.status(), 421, "{host}");
        let resp = app.client.get(format!("{}/api/stats", app.admin)).bearer_auth(ADMIN_TOKEN).header("Host", host);
        assert_eq!(resp.send().await.unwrap().status(), 421, "{host}");
    }
    let port = app.admin.rsplit(':').next().unwrap().to_string();
    for host in
        [format!("127.0.0.1:{port}"), format!("localhost:{port}"), "localhost".to_string(), format!("[::1]:{port}")]
    {
        let resp = app.client.get(format!("{}/metrics", app.admin)).header("Host", &host).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{host}");
    }
}

const KEY_A: &str = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
const KEY_B: &str = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=";

async fn rows_sealed_with_a_removed_key_are_listed_as_unreadable(store_url: Option<String>) {
    let keyed = |extra: &str| TestConfig {
        schedule: vec!["1h"],
        store_url: store_url.clone(),
        store_extra: extra.to_string(),
        ..TestConfig::default()
    };
    // A body planted before encryption was on: it looks sealed, and is not.
    let app = spawn_app_with(keyed("")).await;
    let planted =
        app.client.post(format!("{}/hooks/learnybox", app.public)).body("lbxenc1:deadbeef:AAAA").send().await.unwrap();
    assert_eq!(planted.status(), 200);
    let (dir, crm) = app.stop().await;
    // Under key A: one event waits for the CRM (down), one is delivered.
    let app = start_in(dir, crm, &keyed(&format!("encryption_key = \"{KEY_A}\""))).await;
    app.crm.respond_with(&[200]);
    app.post_event(
        &json!({"event": "contact.created", "id": "sealed-ok", "data": {"contact": {"email": "a@example.org"}}}),
    )
    .await;
    wait_until(Duration::from_secs(10), "delivered", || async { app.crm.count() == 1 }).await;
    app.crm.always(503);
    app.post_event(
        &json!({"event": "contact.created", "id": "sealed-waiting", "data": {"contact": {"email": "b@example.org"}}}),
    )
    .await;
    wait_until(Duration::from_secs(10), "tried once", || async { app.crm.count() == 2 }).await;
    let (dir, crm) = app.stop().await;

    // Key A removed: the relay starts, says what is wrong, and serves what it can.
    let app = start_in(dir, crm, &keyed(&format!("encryption_key = \"{KEY_B}\""))).await;
    let ready = app.client.get(format!("{}/readyz", app.admin)).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let why = ready.text().await.unwrap();
    assert!(why.contains("previous_encryption_keys") && why.contains("events.payload"), "{why}");
    let events: Value = app.admin_get("/api/events").await.json().await.unwrap();
    let items = events["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{events}");
    assert!(items.iter().all(|e| e["unreadable"] == json!(true)), "{events}");
    assert_eq!(app.admin_get("/api/deliveries").await.status(), 200);
    assert_eq!(app.admin_get("/api/deliveries/triage").await.status(), 200);
    assert_eq!(app.admin_get("/api/types").await.status(), 200);
    let erase =
        app.client.delete(format!("{}/api/contacts/b@example.org?dry_run=true", app.admin)).bearer_auth(ADMIN_TOKEN);
    assert_eq!(erase.send().await.unwrap().status(), 200, "erasure answers, not 503");
    let q: Value = app.admin_get("/api/quarantine").await.json().await.unwrap();
    let body = q["items"][0]["body_base64"].as_str().unwrap();
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD.decode(body).unwrap(),
        b"lbxenc1:deadbeef:AAAA",
        "kept as sent"
    );
    let id = items[0]["id"].as_str().unwrap();
    let detail: Value = app.admin_get(&format!("/api/events/{id}")).await.json().await.unwrap();
    assert!(detail["data"]["lbx_unreadable"].as_str().unwrap().contains("not configured"), "{detail}");
    // The waiting delivery cannot be sent: it becomes a dead letter that says why, and a new
    // event is delivered meanwhile.
    app.crm.always(200);
    assert_eq!(app.admin_post("/api/deliveries/retry?status=pending").await.status(), 200);
    wait_until(Duration::from_secs(10), "the unreadable one failed", || async {
        app.deliveries("status=failed").await.len() == 1
    })
    .await;
    let failed = &app.deliveries("status=failed").await[0];
    assert!(failed["last_error"].as_str().unwrap().contains("cannot be opened with the configured keys"), "{failed}");
    app.post_event(&json!({"event": "contact.created", "id": "new", "data": {"contact": {"email": "c@example.org"}}}))
        .await;
    wait_until(Duration::from_secs(10), "a new event delivered", || async { app.crm.count() == 3 }).await;
    let (dir, crm) = app.stop().await;

    // The key put back: ready, readable, and the dead letter replays.
    let both = format!("encryption_key = \"{KEY_B}\"\nprevious_encryption_keys = [\"{KEY_A}\"]");
    let app = start_in(dir, crm, &keyed(&both)).await;
    assert_eq!(app.client.get(format!("{}/readyz", app.admin)).send().await.unwrap().status(), 200);
    let events: Value = app.admin_get("/api/events").await.json().await.unwrap();
    assert!(events["items"].as_array().unwrap().iter().all(|e| e["unreadable"] == json!(false)));
    assert_eq!(app.admin_post("/api/deliveries/retry?status=failed").await.status(), 200);
    wait_until(Duration::from_secs(10), "replayed", || async { app.crm.count() == 4 }).await;
    assert!(app.crm.received().last().unwrap().body.contains("b@example.org"));
    app.stop().await;
}

#[tokio::test]
async fn rows_sealed_with_a_removed_key_are_listed_as_unreadable_not_a_503() {
    rows_sealed_with_a_removed_key_are_listed_as_unreadable(None).await;
}

#[tokio::test]
async fn rows_sealed_with_a_removed_key_are_listed_as_unreadable_on_postgres() {
    let Some(schema) = pg_schema("rows_sealed_with_a_removed_key_are_listed_as_unreadable_on_postgres").await else {
        return;
    };
    rows_sealed_with_a_removed_key_are_listed_as_unreadable(Some(schema.url())).await;
    schema.drop().await;
}

/// A connection from `source` (another loopback address: another client) that sends a request
/// head and one byte of a body it never finishes.
async fn slow_sender_from(source: &str, public: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut sock = socket.connect(public.trim_start_matches("http://").parse().unwrap()).await.unwrap();
    let head = "POST /hooks/learnybox HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{";
    sock.write_all(head.as_bytes()).await.unwrap();
    sock
}

#[tokio::test]
async fn one_address_trickling_hundreds_of_bodies_cannot_keep_a_real_sender_out() {
    let app = spawn_app_with(TestConfig {
        // At 1 B/s a one-byte body is cut after 3 s.
        server_extra: "max_connections_per_ip = 16\nper_ip_exempt = []\nbody_timeout = \"30s\"\nmin_body_rate = \"1B\""
            .into(),
        ..TestConfig::default()
    })
    .await;
    let opening = std::time::Instant::now();
    let mut slow = Vec::new();
    for _ in 0..300 {
        slow.push(slow_sender_from("127.0.0.2", &app.public).await);
    }
    // Each trickle let in holds its place at least 3 s: while they were being opened, at most
    // the cap's worth per 3 s can have been let in (one cap's worth when opening was quick).
    let cap_windows = 1 + opening.elapsed().as_secs() as usize / 3;
    // The real sender, from another address, is answered at once.
    let started = std::time::Instant::now();
    assert_eq!(app.post_event(&sample_events()[0]).await.status(), 200);
    let waited = started.elapsed();
    // Beyond its cap the trickling address is answered 429 and closed; within it, the minimum
    // body rate cuts each one off (408) long before body_timeout.
    let (mut refused, mut cut) = (0, 0);
    for mut sock in slow {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(15), sock.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(read.is_ok(), "still held open: {text}");
        if text.starts_with("HTTP/1.1 429") {
            refused += 1;
        } else if text.starts_with("HTTP/1.1 408") {
            cut += 1;
        } else {
            panic!("unexpected answer: {text}");
        }
    }
    assert!(cut <= 16 * cap_windows, "{cut} held from one address over {cap_windows} cut-off windows");
    assert_eq!(refused + cut, 300);
    let metrics = app.admin_get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("lbx_hooks_refused_per_ip_total"), "counted");
    assert_eq!(app.count("SELECT COUNT(*) FROM events"), 1);
    // Said with its cause; measured, not asserted as a timing: the real sender did not wait for
    // the trickle (body_timeout is 30 s here).
    eprintln!("the real sender waited {waited:?}");
    assert!(waited < Duration::from_secs(30));
}

#[test]
fn per_address_settings_are_checked() {
    for (extra, expected) in [
        ("per_ip_exempt = [\"localhost\"]", "server.per_ip_exempt"),
        ("min_body_rate = \"fast\"", "server.min_body_rate"),
        ("max_connections_per_ip = -1", "max_connections_per_ip"),
    ] {
        let text = format!("[server]\n{extra}\n[sources.s]\nsecret_keys = [\"k\"]\n");
        let err = lbx_relay::config::Config::from_toml(&text, std::path::Path::new("routes.toml"), &|_| None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(expected), "{extra} → {err}");
    }
}
