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

    pub(crate) async fn call(&mut self, method: &str, params: Value) -> Value {
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
            // While a page (re)loads its elements are not there yet: that is "not yet", not an error.
            let check = format!("(() => {{ try {{ return Boolean({condition}); }} catch (e) {{ return false; }} }})()");
            if self.eval(&check).await == json!(true) {
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
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        self.screenshot_to(&path, width).await;
    }

    /// A full-page PNG at `width` px into `path`.
    pub(crate) async fn screenshot_to(&mut self, path: &std::path::Path, width: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": 1000, "deviceScaleFactor": 1, "mobile": width < 600}),
        )
        .await;
        let shot = self.call("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true})).await;
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
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
    // (This one waits for the page's own timer; later ones call what the timer calls.)
    page.eval("window.scrollTo(0, 300); window.__before = document.getElementById('updated').dataset.n; true").await;
    page.wait_for("document.getElementById('updated').dataset.n !== window.__before").await;
    assert_eq!(page.eval("Math.round(window.scrollY)").await, json!(300));
    assert!(!page.eval("document.getElementById('detail').hidden").await.as_bool().unwrap());

    // The dead letters, by a link as an alert gives it: route and error per row; select all
    // matching, preview the replay, replay; the result stays.
    app.crm.always(200);
    page.goto(&format!("{}/#/deliveries?status=failed&route=crm", app.admin)).await;
    page.wait_for("document.querySelectorAll('#dead tr.clickable').length === 1").await;
    let row = page.text_of("#dead tr.clickable").await;
    assert!(row.contains("crm") && row.contains("HTTP 422") && row.contains("ada@example.org"), "{row}");
    page.eval("document.getElementById('dl_all').click(); true").await;
    page.wait_for("document.getElementById('dl_selected').textContent.startsWith('1 selected')").await;
    page.eval("document.getElementById('dl_preview').click(); true").await;
    page.wait_for("!document.getElementById('dl_confirm').hidden").await;
    assert!(page.text_of("#dl_preview_list").await.contains("crm · contact.created · ada@example.org"));
    assert_eq!(page.text_of("#dl_go").await, "Replay 1");
    page.eval("document.getElementById('dl_go').click(); true").await;
    page.wait_for("document.getElementById('dl_result').textContent.startsWith('Replayed 1')").await;
    wait_until(Duration::from_secs(10), "replayed and delivered", || async { app.crm.count() == 3 }).await;
    page.wait_for("document.getElementById('dead').textContent.includes('No delivery matches')").await;
    assert!(page.text_of("#dl_result").await.starts_with("Replayed 1"), "the result stays visible");
    // The event, delivered now.
    page.eval("location.hash = '#/events'; true").await;
    page.wait_for("document.querySelectorAll('#events tr.clickable').length === 2").await;
    page.eval("[...document.querySelectorAll('#events tr.clickable')].find(r => r.textContent.includes('lb-failed')).click(); true").await;
    page.wait_for("document.getElementById('d_deliveries').textContent.includes('delivered')").await;

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

/// Writes the console's screenshots into docs/ when LBX_WRITE_DOCS_SCREENSHOTS=1 (how the images
/// in the README were made); otherwise into the test's temporary directory.
fn shot_path(name: &str) -> std::path::PathBuf {
    if std::env::var("LBX_WRITE_DOCS_SCREENSHOTS").as_deref() == Ok("1") {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join(name)
    } else {
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
    }
}

#[tokio::test]
async fn the_console_on_a_bad_morning_keeps_the_trace_triages_and_tells_the_truth() {
    let Some(mut page) = Page::launch().await else { return };
    let app = spawn_app_with(TestConfig { schedule: vec!["50ms", "50ms"], ..TestConfig::default() }).await;
    let contact = |id: &str, email: &str, nom: &str, kind: &str| json!({"event": kind, "id": id, "data": {"contact": {"email": email, "prenom": "Ada", "nom": nom}}});
    // A CRM outage: every event needs a retry, and every one ends delivered.
    app.crm.respond_with(&[503, 503, 503]);
    app.post_event(&contact("lb-1", "ada@example.org", "Dupont", "contact.created")).await;
    app.post_event(&contact("lb-2", "bob@example.org", "Martin", "contact.updated")).await;
    app.post_event(&contact("lb-3", "cyd@example.org", "Durand", "user.created")).await;
    wait_until(Duration::from_secs(10), "all delivered after retries", || async {
        app.deliveries("status=delivered").await.len() == 3
    })
    .await;

    page.goto(&format!("{}/#/routes", app.admin)).await;
    page.login(ADMIN_TOKEN).await;
    // Health per delivery: 100 % delivered, the retries shown apart.
    page.wait_for("document.querySelector('#routes td.rate')?.textContent === '100 %'").await;
    let counts = page.text_of("#routes td.counts").await;
    assert!(counts.starts_with("3 delivered · 0 failed"), "{counts}");
    // The chart has a time axis, a count scale and a readable latency scale.
    page.wait_for("document.querySelectorAll('#chart text.tick.x').length >= 3").await;
    assert!(page.eval("document.querySelectorAll('#chart text.tick.y').length").await.as_u64().unwrap() >= 3);
    let latency =
        page.eval("[...document.querySelectorAll('#chart text.tick.y2')].map(t => t.textContent).join(' ')").await;
    assert!(latency.as_str().unwrap().contains(" ms") || latency.as_str().unwrap().contains(" s"), "{latency}");

    // Search that helps: a name, a type prefix, and a hint when nothing matches.
    page.eval("location.hash = '#/events?q=dupont'; true").await;
    page.wait_for("document.querySelectorAll('#events tr.clickable').length === 1").await;
    assert!(page.text_of("#events").await.contains("ada@example.org"));
    page.eval("location.hash = '#/events?q=contact'; true").await;
    page.wait_for("document.querySelectorAll('#events tr.clickable').length === 2").await;
    page.eval("location.hash = '#/events?q=zorglub'; true").await;
    page.wait_for("!document.getElementById('search_hint').hidden").await;
    assert!(page.text_of("#search_hint").await.contains("Nothing matches “zorglub”"));

    // A stable trace: open an event, expand an attempt, scroll; two refreshes later, all stays.
    let lb1 = app.admin_get("/api/events?id=lb-1").await.json::<Value>().await.unwrap()["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    page.eval(&format!("location.hash = '#/events/{lb1}'; true")).await;
    page.wait_for("document.querySelectorAll('#d_deliveries details').length >= 2").await;
    let trace = page.text_of("#d_deliveries").await;
    assert!(
        trace.contains("HTTP 503") && trace.contains("will be retried") && trace.contains("next attempt made"),
        "{trace}"
    );
    page.eval("document.querySelector('#d_deliveries details').open = true; window.scrollTo(0, 420); true").await;
    let y = page.eval("Math.round(window.scrollY)").await;
    for _ in 0..2 {
        page.eval("window.__before = document.getElementById('updated').dataset.n; tick(); true").await;
        page.wait_for("document.getElementById('updated').dataset.n !== window.__before").await;
    }
    assert_eq!(page.eval("document.querySelector('#d_deliveries details').open").await, json!(true));
    assert_eq!(page.eval("Math.round(window.scrollY)").await, y);
    // Text selected: the refresh waits, and says so.
    page.eval("window.getSelection().selectAllChildren(document.getElementById('d_summary')); window.__before = document.getElementById('updated').dataset.n; tick(); true").await;
    page.wait_for("!document.getElementById('pause').hidden").await;
    assert_eq!(page.eval("document.getElementById('updated').dataset.n === window.__before").await, json!(true));
    assert!(page.text_of("#pause").await.contains("paused while you read"));
    page.eval("document.getElementById('pause').click(); true").await;
    page.wait_for(
        "document.getElementById('pause').hidden && document.getElementById('updated').dataset.n !== window.__before",
    )
    .await;
    // Reload lands on the same view.
    page.call("Page.reload", json!({})).await;
    page.wait_for("!document.getElementById('detail').hidden && document.getElementById('d_deliveries').textContent.includes('HTTP 503')").await;

    // A deep link to a failed delivery opens it.
    app.crm.always(422);
    app.post_event(&contact("lb-4", "dan@example.org", "Petit", "contact.created")).await;
    wait_until(Duration::from_secs(10), "failed", || async { app.deliveries("status=failed").await.len() == 1 }).await;
    let failed = app.deliveries("status=failed").await[0]["id"].as_str().unwrap().to_string();
    page.goto(&format!("{}/#/deliveries/{failed}", app.admin)).await;
    page.wait_for(&format!("!!document.querySelector('#delivery-{failed}.highlight')")).await;
    assert!(page.text_of("#d_deliveries").await.contains("HTTP 422"));

    // A refused reload stays next to the button, with the file and the line, until dismissed.
    let path = app.dir.path().join("routes.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("[retry]", "[retry]\nschedul = [\"1s\"]")).unwrap();
    page.eval("document.getElementById('reload').click(); true").await;
    page.wait_for("!document.getElementById('reload_result').hidden").await;
    let problems = page.text_of("#reload_problems").await;
    assert!(problems.contains("routes.toml:") && problems.contains("schedul"), "{problems}");
    page.eval("window.__before = document.getElementById('updated').dataset.n; tick(); true").await;
    page.wait_for("document.getElementById('updated').dataset.n !== window.__before").await;
    assert_eq!(page.eval("document.getElementById('reload_result').hidden").await, json!(false));
    page.eval("document.getElementById('reload_dismiss').click(); true").await;
    assert_eq!(page.eval("document.getElementById('reload_result').hidden").await, json!(true));
    std::fs::write(&path, good).unwrap();

    // Quarantine: one item, in plain words; dropped on its own.
    let bad = app
        .client
        .post(format!("{}/hooks/learnybox", app.public))
        .body("{\"iv\":\"x\",\"value\":\"y\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 200);
    page.eval("location.hash = '#/quarantine'; true").await;
    page.wait_for("document.querySelectorAll('#quarantine tr.clickable').length === 1").await;
    page.eval("document.querySelector('#quarantine tr.clickable').click(); true").await;
    page.wait_for("!document.getElementById('q_detail').hidden").await;
    assert!(!page.text_of("#q_why").await.is_empty());
    page.eval("document.getElementById('q_drop').click(); true").await;
    page.wait_for("document.getElementById('quarantine').textContent.includes('The quarantine is empty')").await;

    // English screenshots at 1400 and 400 px (the routes and a trace).
    page.eval(&format!("location.hash = '#/events/{lb1}'; true")).await;
    page.wait_for("document.getElementById('d_deliveries').textContent.includes('HTTP 503')").await;
    page.eval("window.scrollTo(0, 0); true").await;
    page.screenshot_to(&shot_path("dashboard.png"), 1400).await;
    page.screenshot_to(&shot_path("dashboard-400px.png"), 400).await;
    let widest = page.eval("document.documentElement.scrollWidth").await.as_u64().unwrap();
    assert!(widest <= 400, "the page is {widest} px wide at 400 px");
    // At 400 px the status is the events' second column.
    let second = page.eval("getComputedStyle(document.querySelector('#s_events th:nth-child(2)')).display").await;
    assert_ne!(second, json!("none"));
    page.call("Emulation.clearDeviceMetricsOverride", json!({})).await;

    // In French: the browser's language decides; the switch is remembered.
    page.call(
        "Emulation.setUserAgentOverride",
        json!({"userAgent": "Mozilla/5.0 lbx-test", "acceptLanguage": "fr-FR"}),
    )
    .await;
    page.eval("localStorage.removeItem('lbx-lang'); true").await;
    page.call("Page.reload", json!({})).await;
    page.wait_for(
        "document.documentElement.lang === 'fr' && document.getElementById('routes').textContent.includes('livrées')",
    )
    .await;
    assert_eq!(page.eval("navigator.language").await, json!("fr-FR"));
    assert!(page.text_of("#s_dead h2").await.contains("Échecs à traiter"));
    page.wait_for("document.getElementById('d_deliveries').textContent.includes('sera réessayée')").await;
    page.wait_for("document.getElementById('types').textContent.includes('contact.created')").await;
    page.screenshot_to(&shot_path("dashboard-fr.png"), 1400).await;
    page.screenshot_to(&shot_path("dashboard-fr-400px.png"), 400).await;
    page.call("Emulation.clearDeviceMetricsOverride", json!({})).await;
    page.eval("document.getElementById('lang').click(); true").await;
    page.wait_for("document.documentElement.lang === 'en'").await;
    page.call("Page.reload", json!({})).await;
    page.wait_for("document.documentElement.lang === 'en' && !document.getElementById('main').hidden").await;
    assert_eq!(page.eval("localStorage.getItem('lbx-lang')").await, json!("en"), "the switch is remembered");
    app.stop().await;
}
