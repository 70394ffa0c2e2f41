//! The dashboard in a real headless Chromium (Debian's `chromium`), driven over the DevTools
//! protocol against a live relay: load, log in, filter by e-mail, open an event and its attempts,
//! retry, bulk replay with its confirmation, and the wrong-token, API-disabled and relay-down
//! states. Screenshots (wide and 400 px) are written to the test's temporary directory.
//! Without Chromium the test says it was skipped — unless LBX_REQUIRE_BROWSER=1 (set by .ci/run).

use std::io::BufRead;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A page of a headless Chromium, over the DevTools protocol.
pub(crate) struct Page {
    ws: Ws,
    next_id: u64,
    browser: std::process::Child,
    _profile: tempfile::TempDir,
}

impl Drop for Page {
    fn drop(&mut self) {
        let _ = self.browser.kill();
        let _ = self.browser.wait();
    }
}

fn chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
        std::process::Command::new("which")
            .arg(name)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    })
}

impl Page {
    pub(crate) async fn launch() -> Option<Page> {
        let Some(binary) = chromium() else {
            assert!(
                std::env::var("LBX_REQUIRE_BROWSER").is_err(),
                "LBX_REQUIRE_BROWSER is set but no chromium is installed"
            );
            eprintln!("skipped the dashboard test: no chromium on this machine (apt-get install chromium)");
            return None;
        };
        let profile = tempfile::tempdir().unwrap();
        let mut browser = std::process::Command::new(binary)
            .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--window-size=1280,1000")
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let stderr = browser.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let browser_ws = rx.recv_timeout(Duration::from_secs(30)).expect("chromium starts");
        let port = browser_ws.split(':').nth(2).unwrap().split('/').next().unwrap().to_string();
        let targets: Value = client()
            .put(format!("http://127.0.0.1:{port}/json/new?about:blank"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page_ws = targets["webSocketDebuggerUrl"].as_str().unwrap().to_string();
        let (ws, _) = tokio_tungstenite::connect_async(page_ws).await.unwrap();
        let mut page = Page { ws, next_id: 0, browser, _profile: profile };
        page.call("Page.enable", json!({})).await;
        page.call("Runtime.enable", json!({})).await;
        Some(page)
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.ws.send(Message::text(json!({"id": id, "method": method, "params": params}).to_string())).await.unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), self.ws.next()).await.unwrap().unwrap().unwrap();
            let Message::Text(t) = msg else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    pub(crate) async fn eval(&mut self, js: &str) -> Value {
        let r =
            self.call("Runtime.evaluate", json!({"expression": js, "returnByValue": true, "awaitPromise": true})).await;
        assert!(r.get("exceptionDetails").is_none(), "{js}: {r}");
        r["result"]["value"].clone()
    }

    pub(crate) async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
        self.wait_for("document.readyState === 'complete' && !!document.getElementById('token')").await;
    }

    /// Waits until `condition` (JS) is true in the page.
    pub(crate) async fn wait_for(&mut self, condition: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if self.eval(&format!("Boolean({condition})")).await == json!(true) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "timed out waiting for: {condition}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn text_of(&mut self, selector: &str) -> String {
        self.eval(&format!("document.querySelector({selector:?})?.textContent ?? ''"))
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    pub(crate) async fn login(&mut self, token: &str) {
        self.eval(&format!(
            "document.getElementById('token').value = {token:?}; document.getElementById('login').requestSubmit(); true"
        ))
        .await;
    }

    pub(crate) async fn screenshot(&mut self, name: &str, width: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": 1000, "deviceScaleFactor": 1, "mobile": width < 600}),
        )
        .await;
        let shot = self.call("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true})).await;
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

#[tokio::test]
async fn the_dashboard_finds_an_event_by_contact_shows_its_attempts_and_replays() {
    let Some(mut page) = Page::launch().await else { return };
    let app = spawn_app_with(TestConfig { schedule: vec![], ..TestConfig::default() }).await;
    let contact = |id: &str, email: &str| json!({"event": "contact.created", "id": id, "data": {"contact": {"email": email, "prenom": "Ada"}}});
    app.post_event(&contact("lb-ok", "grace@example.org")).await;
    wait_until(Duration::from_secs(10), "delivered", || async { app.crm.count() == 1 }).await;
    app.crm.respond_with(&[422]);
    app.post_event(&contact("lb-failed", "ada@example.org")).await;
    wait_until(Duration::from_secs(10), "failed", || async { app.deliveries("status=failed").await.len() == 1 }).await;

    // States before a good token: wrong token.
    page.goto(&format!("{}/", app.admin)).await;
    page.login("wrong-token-wrong-token").await;
    page.wait_for("document.getElementById('state').textContent.includes('Wrong admin token')").await;

    // A webhook URL with a typo in its source: the page says so, with the closest source.
    let lost = app.client.post(format!("{}/hooks/Learnybox", app.public)).body("{}").send().await.unwrap();
    assert_eq!(lost.status(), 404);

    // Logged in: two events, N of M, route health.
    page.login(ADMIN_TOKEN).await;
    page.wait_for("!document.getElementById('unknown_hooks').hidden").await;
    let notice = page.text_of("#unknown_hooks").await;
    assert!(notice.contains("/hooks/Learnybox") && notice.contains("did you mean learnybox"), "{notice}");
    page.wait_for("document.querySelectorAll('#events tr.clickable').length === 2").await;
    assert!(page.text_of("#count").await.contains("of 2"), "{}", page.text_of("#count").await);
    page.wait_for("document.getElementById('routes').textContent.includes('crm')").await;
    page.wait_for("document.getElementById('types').textContent.includes('contact.created')").await;
    // The real events carry no `nom` although the samples do: the page says so.
    page.wait_for("!document.getElementById('drift').hidden").await;
    let drift = page.text_of("#drift_list").await;
    assert!(drift.contains("route crm: data.data.contact.nom — empty in 0, absent in 2 of 2 real event(s)"), "{drift}");

    // Filter by e-mail through the search box.
    page.eval("document.getElementById('q').value = 'ADA@example.org'; document.getElementById('filters').requestSubmit(); true").await;
    page.wait_for("document.querySelectorAll('#events tr.clickable').length === 1").await;
    assert!(page.text_of("#events").await.contains("lb-failed"));
    assert!(page.text_of("#events").await.contains("failed"));
    // Times are local, with UTC on hover.
    let title = page.eval("document.querySelector('#events tr.clickable td').title").await;
    assert!(title.as_str().unwrap().ends_with('Z'), "{title}");

    // Open it: the attempt with the request as sent and the CRM's answer.
    page.eval("document.querySelector('#events tr.clickable').click(); true").await;
    page.wait_for("!document.getElementById('detail').hidden && document.getElementById('d_deliveries').textContent.includes('HTTP 422')").await;
    let detail = page.text_of("#d_deliveries").await;
    assert!(detail.contains("POST") && detail.contains("/contacts"), "{detail}");
    assert!(!detail.contains("crm-secret-key"), "credentials are masked: {detail}");
    page.screenshot("dashboard.png", 1280).await;
    page.screenshot("dashboard-400px.png", 400).await;
    // At 400 px nothing but the tables' own scroll areas is wider than the screen.
    let widest = page.eval("document.documentElement.scrollWidth").await.as_u64().unwrap();
    assert!(widest <= 400, "the page is {widest} px wide at 400 px");
    page.call("Emulation.clearDeviceMetricsOverride", json!({})).await;
    // A refresh keeps the scroll position and the open event.
    page.eval("window.scrollTo(0, 300); window.__before = document.getElementById('updated').textContent; true").await;
    page.wait_for("document.getElementById('updated').textContent !== window.__before").await;
    assert_eq!(page.eval("Math.round(window.scrollY)").await, json!(300));
    assert!(!page.eval("document.getElementById('detail').hidden").await.as_bool().unwrap());

    // Bulk replay by filter: the count first, then the result, which stays.
    app.crm.always(200);
    page.eval("document.getElementById('bulk').requestSubmit(); true").await;
    page.wait_for("!document.getElementById('b_confirm').hidden").await;
    assert_eq!(page.text_of("#b_count").await, "1 delivery match.");
    page.eval("document.getElementById('b_go').click(); true").await;
    page.wait_for("document.getElementById('b_result').textContent.startsWith('Replayed 1 delivery')").await;
    wait_until(Duration::from_secs(10), "replayed and delivered", || async { app.crm.count() == 3 }).await;
    // The refresh keeps the selected event open and shows it delivered.
    page.wait_for("document.getElementById('d_deliveries').textContent.includes('delivered')").await;
    assert!(!page.eval("document.getElementById('detail').hidden").await.as_bool().unwrap());
    assert!(page.text_of("#b_result").await.starts_with("Replayed 1 delivery"), "the result stays visible");

    // The one-delivery retry button.
    page.eval("[...document.querySelectorAll('#d_deliveries button')].find(b => b.textContent === 'Send again').click(); true").await;
    page.wait_for("document.getElementById('action').textContent.includes('Send again: crm queued')").await;
    wait_until(Duration::from_secs(10), "sent again", || async { app.crm.count() == 4 }).await;

    // The relay goes down: the page says so.
    app.stop().await;
    page.wait_for("document.getElementById('state').textContent.includes('does not answer')").await;
}

#[tokio::test]
async fn the_dashboard_names_lbx_admin_token_when_the_api_is_disabled() {
    let Some(mut page) = Page::launch().await else { return };
    let app = spawn_app().await;
    let path = app.dir.path().join("routes.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(&format!("admin_token = \"{ADMIN_TOKEN}\""), "");
    std::fs::write(&path, text).unwrap();
    assert_eq!(app.admin_post("/api/reload").await.status(), 200);
    page.goto(&format!("{}/", app.admin)).await;
    page.login("any-token-at-all-here").await;
    page.wait_for("document.getElementById('state').textContent.includes('admin API is disabled')").await;
    assert!(page.text_of("#state").await.contains("LBX_ADMIN_TOKEN"));
}
