//! Which outbound requests go through the proxy the environment names: every client the relay
//! builds honours `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (either case), except
//! that loopback destinations (`localhost`, `127.0.0.0/8`, `::1`) are always reached directly —
//! a corporate egress proxy cannot reach the relay's own admin API or an n8n on the same host.

use reqwest::{ClientBuilder, NoProxy, Proxy};

/// Always reached directly, whatever `NO_PROXY` says.
const LOOPBACK: &str = "localhost,127.0.0.0/8,::1";

/// Builds the proxy one variable names, for the schemes that variable covers.
type MakeProxy = fn(String) -> reqwest::Result<Proxy>;

/// A reqwest builder whose proxies are those of the process environment, loopback excepted.
pub fn client_builder() -> ClientBuilder {
    with_proxies(reqwest::Client::builder(), |name| std::env::var(name).ok())
}

/// `builder` with the proxies that `var` names (read as the environment would be).
pub fn with_proxies(builder: ClientBuilder, var: impl Fn(&str) -> Option<String>) -> ClientBuilder {
    let set = |upper: &str| var(upper).or_else(|| var(&upper.to_ascii_lowercase())).filter(|v| !v.trim().is_empty());
    let bypass = match set("NO_PROXY") {
        Some(list) => format!("{LOOPBACK},{list}"),
        None => LOOPBACK.to_string(),
    };
    let kinds: [(&str, MakeProxy); 3] =
        [("HTTPS_PROXY", Proxy::https), ("HTTP_PROXY", Proxy::http), ("ALL_PROXY", Proxy::all)];
    let mut builder = builder.no_proxy();
    for (name, make) in kinds {
        let Some(url) = set(name) else { continue };
        match make(url) {
            Ok(proxy) => builder = builder.proxy(proxy.no_proxy(NoProxy::from_string(&bypass))),
            // The value may hold credentials: name the variable, never its value.
            Err(_) => tracing::warn!(variable = name, "ignored: not a proxy URL"),
        }
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A loopback HTTP server answering 200 to each request; returns its port and the request
    /// lines it saw.
    fn server() -> (u16, std::sync::mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                let _ = tx.send(head.lines().next().unwrap_or_default().to_string());
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        });
        (port, rx)
    }

    fn client(vars: &[(&str, String)]) -> reqwest::Client {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        with_proxies(reqwest::Client::builder(), |name| vars.get(name).cloned()).build().unwrap()
    }

    #[tokio::test]
    async fn loopback_is_reached_directly_and_other_hosts_through_the_proxy() {
        let (proxy, seen_by_proxy) = server();
        let (target, seen_by_target) = server();
        let client = client(&[("http_proxy", format!("http://127.0.0.1:{proxy}"))]);
        for host in ["127.0.0.1", "localhost"] {
            let resp = client.get(format!("http://{host}:{target}/direct")).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{host}");
            assert_eq!(seen_by_target.recv().unwrap(), "GET /direct HTTP/1.1");
        }
        let resp = client.get("http://crm.example.invalid/api").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(seen_by_proxy.recv().unwrap(), "GET http://crm.example.invalid/api HTTP/1.1");
        assert!(seen_by_proxy.try_recv().is_err(), "loopback requests never went to the proxy");
    }

    #[tokio::test]
    async fn no_proxy_still_applies_and_a_near_miss_host_is_proxied() {
        let (proxy, seen_by_proxy) = server();
        let client = client(&[
            ("HTTP_PROXY", format!("http://127.0.0.1:{proxy}")),
            ("NO_PROXY", "internal.invalid".to_string()),
        ]);
        // A direct request to a host that does not resolve fails; a proxied one reaches the proxy.
        assert!(client.get("http://api.internal.invalid/").send().await.is_err(), "bypassed");
        let resp = client.get("http://notinternal.invalid/").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(seen_by_proxy.recv().unwrap(), "GET http://notinternal.invalid/ HTTP/1.1");
        assert!(seen_by_proxy.try_recv().is_err());
    }

    #[tokio::test]
    async fn without_proxy_variables_or_with_a_broken_one_requests_go_direct() {
        let (target, seen) = server();
        for vars in [vec![], vec![("HTTP_PROXY", "not a url ::".to_string())], vec![("HTTP_PROXY", " ".to_string())]] {
            let client = client(&vars);
            let resp = client.get(format!("http://127.0.0.1:{target}/x")).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(seen.recv().unwrap(), "GET /x HTTP/1.1");
        }
    }
}
