//! Raw config → typed [`Config`](super::Config): durations, sizes, paths resolved against the
//! config file's directory, and every cross-check that can be made before a port is bound; every
//! problem is collected and reported at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;

use super::interpolate::has_var;
use super::raw::*;
use super::*;

pub(super) fn validate(
    raw: RawConfig,
    uninterpolated: &RawConfig,
    path: PathBuf,
    dir: PathBuf,
) -> Result<Config, ConfigError> {
    let shown = path.display().to_string();
    let mut problems = Vec::new();
    let mut problem = |at: &str, msg: String| problems.push(format!("{shown}: {at}: {msg}"));

    let server = server(raw.server, &dir, &mut problem);
    let store = store(raw.store, &dir, &mut problem);
    let sources = sources(raw.sources, &dir, store.retention, &mut problem);
    let quarantine = quarantine(&raw.quarantine, &mut problem);
    let alerts = alerts(raw.alerts, &mut problem);
    let retry = retry_policy(&raw.retry, None, "retry", &mut problem);
    let delivery = delivery(&raw.delivery, &store.backend, &mut problem);
    let routes = routes(raw.routes, uninterpolated, &retry, &dir, &mut problem);

    if !problems.is_empty() {
        return Err(ConfigError::Invalid { problems });
    }
    Ok(Config {
        path,
        dir,
        server,
        store,
        sources,
        retry,
        delivery,
        quarantine,
        alerts,
        routes,
        secrets: crate::secrets::Masker::default(),
    })
}

/// `[server]`: addresses, limits, timeouts, the admin token.
fn server(raw: RawServer, dir: &Path, problem: &mut dyn FnMut(&str, String)) -> ServerConfig {
    let max_body = match raw.max_body.parse::<bytesize::ByteSize>() {
        Ok(b) if b.as_u64() > 0 => usize::try_from(b.as_u64()).unwrap_or(usize::MAX),
        _ => {
            problem("server.max_body", format!("{:?} is not a size like \"1MiB\"", raw.max_body));
            1 << 20
        }
    };
    for (key, addr) in [("server.listen", &raw.listen), ("server.admin_listen", &raw.admin_listen)] {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            problem(key, format!("{addr:?} is not an address like \"0.0.0.0:8080\""));
        }
    }
    if same_listener(&raw.listen, &raw.admin_listen) {
        problem(
            "server.admin_listen",
            format!("{:?} is also server.listen: the two listeners need different addresses", raw.admin_listen),
        );
    }
    let body_timeout = duration(&raw.body_timeout, "server.body_timeout", problem);
    let header_timeout = duration(&raw.header_timeout, "server.header_timeout", problem);
    let per_ip_exempt: Vec<std::net::IpAddr> = raw
        .per_ip_exempt
        .iter()
        .filter_map(|a| {
            a.trim()
                .parse()
                .inspect_err(|_| {
                    problem("server.per_ip_exempt", format!("{a:?} is not an IP address like \"10.0.0.5\""))
                })
                .ok()
        })
        .collect();
    let min_body_rate = match raw.min_body_rate.trim().trim_end_matches("/s").parse::<bytesize::ByteSize>() {
        Ok(b) => b.as_u64(),
        Err(_) => {
            problem(
                "server.min_body_rate",
                format!("{:?} is not a size per second like \"1KiB\" (0: off)", raw.min_body_rate),
            );
            0
        }
    };
    if raw.max_connections == 0 {
        problem("server.max_connections", "is 0: nothing could connect; use 1 or more".into());
    }
    let admin_token = raw.admin_token.filter(|t| !t.is_empty()).map(SecretString::from);
    if admin_token.as_ref().is_some_and(|t| t.expose_secret().chars().count() < MIN_ADMIN_TOKEN) {
        problem(
            "server.admin_token",
            format!("is shorter than {MIN_ADMIN_TOKEN} characters; use a long random value (openssl rand -hex 24)"),
        );
    }

    let env_file = raw.env_file.as_deref().filter(|f| !f.trim().is_empty()).map(|f| {
        let f = PathBuf::from(f);
        if f.is_absolute() {
            f
        } else {
            dir.join(f)
        }
    });
    ServerConfig {
        listen: raw.listen,
        admin_listen: raw.admin_listen,
        admin_token,
        max_body,
        log_pii: raw.log_pii,
        body_timeout,
        header_timeout,
        max_connections: raw.max_connections,
        max_connections_per_ip: raw.max_connections_per_ip,
        per_ip_exempt,
        min_body_rate,
        env_file,
    }
}

/// `[store]`: the backend, retention, durability and the keys at rest.
fn store(raw: RawStore, dir: &Path, problem: &mut dyn FnMut(&str, String)) -> StoreConfig {
    let backend = if let Some(rest) = raw.url.strip_prefix("sqlite://") {
        let rel = PathBuf::from(rest);
        StoreBackend::Sqlite { path: if rel.is_absolute() { rel } else { dir.join(rel) } }
    } else if raw.url.starts_with("postgres://") || raw.url.starts_with("postgresql://") {
        StoreBackend::Postgres { url: SecretString::from(raw.url.clone()) }
    } else {
        problem("store.url", "must start with sqlite:// or postgres://".into());
        StoreBackend::Sqlite { path: dir.join("relay.db") }
    };
    let sync = match raw.sync.as_str() {
        "full" => SyncMode::Full,
        "normal" => SyncMode::Normal,
        other => {
            problem("store.sync", format!("{other:?}: use \"full\" (fsync before every 200) or \"normal\""));
            SyncMode::Full
        }
    };
    let store = StoreConfig {
        sync,
        backend,
        retention: duration(&raw.retention, "store.retention", problem),
        pool_size: raw.pool_size.max(2),
        connect_timeout: duration(&raw.connect_timeout, "store.connect_timeout", problem),
        statement_timeout: duration(&raw.statement_timeout, "store.statement_timeout", problem),
        encryption_key: raw.encryption_key.filter(|k| !k.trim().is_empty()).map(SecretString::from),
        previous_encryption_keys: raw
            .previous_encryption_keys
            .into_iter()
            .filter(|k| !k.trim().is_empty())
            .map(SecretString::from)
            .collect(),
    };
    for (i, key) in store.encryption_key.iter().chain(&store.previous_encryption_keys).enumerate() {
        if let Err(e) = crate::secrets::parse_key(key.expose_secret()) {
            let at = if i == 0 && store.encryption_key.is_some() {
                "store.encryption_key".to_string()
            } else {
                "store.previous_encryption_keys".to_string()
            };
            problem(&at, e.to_string());
        }
    }
    if store.encryption_key.is_none() && !store.previous_encryption_keys.is_empty() {
        problem("store.previous_encryption_keys", "needs store.encryption_key (the key new values use)".into());
    }

    store
}

/// `[sources.NAME]`: each source's keys, envelope, dedup window, event fields and API.
fn sources(
    raw: BTreeMap<String, RawSource>,
    dir: &Path,
    retention: Duration,
    problem: &mut dyn FnMut(&str, String),
) -> BTreeMap<String, SourceConfig> {
    let mut sources = BTreeMap::new();
    if raw.is_empty() {
        problem("sources", "no [sources.NAME] table: nothing could be received".into());
    }
    for (name, s) in raw {
        let at = format!("sources.{name}");
        if !valid_name(&name) {
            problem(&at, "source names may use letters, digits, '-' and '_' only".into());
        }
        let envelope = match s.envelope.as_str() {
            "auto" => EnvelopeMode::Auto,
            other => match Variant::from_name(other) {
                Some(v) => EnvelopeMode::Fixed(v),
                None => {
                    problem(
                        &format!("{at}.envelope"),
                        format!("unknown envelope {other:?}; use \"auto\" or one of {}", Variant::names().join(", ")),
                    );
                    EnvelopeMode::Auto
                }
            },
        };
        if s.secret_keys.iter().all(|k| k.is_empty()) && !s.allow_plaintext {
            problem(
                &format!("{at}.secret_keys"),
                "at least one non-empty secret key is needed (or allow_plaintext = true)".into(),
            );
        }
        let dedup_window = duration(&s.dedup_window, &format!("{at}.dedup_window"), problem);
        let pointers = |given: Option<Vec<String>>,
                        defaults: &[&str],
                        key: &str,
                        problem: &mut dyn FnMut(&str, String)| {
            let list = given.unwrap_or_else(|| defaults.iter().map(|s| s.to_string()).collect());
            for p in &list {
                if !p.starts_with('/') {
                    problem(&format!("{at}.{key}"), format!("{p:?} is not a JSON pointer (it must start with '/')"));
                }
            }
            list
        };
        let alert_after = s.alert_after.as_deref().map(|a| duration(a, &format!("{at}.alert_after"), problem));
        let event_field = pointers(s.event_field, DEFAULT_EVENT_FIELDS, "event_field", problem);
        let id_field = pointers(s.id_field, DEFAULT_ID_FIELDS, "id_field", problem);
        let timestamp_field = pointers(s.timestamp_field, DEFAULT_TIMESTAMP_FIELDS, "timestamp_field", problem);
        let max_age = s.max_age.as_deref().map(|a| duration(a, &format!("{at}.max_age"), problem));
        let accept_undated = match s.undated.as_deref() {
            None | Some("refuse") => false,
            Some("accept") => true,
            Some(other) => {
                problem(&format!("{at}.undated"), format!("{other:?}: use \"refuse\" or \"accept\""));
                false
            }
        };
        if s.undated.is_some() && max_age.is_none() {
            problem(&format!("{at}.undated"), "only means something with max_age".into());
        }
        let api = s.api.map(|a| super::api::validate_api(a, &format!("{at}.api"), dir, retention, problem));
        sources.insert(
            name.clone(),
            SourceConfig {
                name,
                secret_keys: s.secret_keys.into_iter().filter(|k| !k.is_empty()).map(SecretString::from).collect(),
                envelope,
                allow_plaintext: s.allow_plaintext,
                dedup_window,
                event_field,
                id_field,
                path_token: s.path_token.filter(|t| !t.is_empty()).map(SecretString::from),
                alert_after,
                max_age,
                timestamp_field,
                accept_undated,
                api,
            },
        );
    }

    sources
}

/// `[quarantine]`: how much undecryptable input is kept.
fn quarantine(raw: &RawQuarantine, problem: &mut dyn FnMut(&str, String)) -> QuarantineConfig {
    QuarantineConfig {
        max_items: raw.max_items,
        max_bytes: match raw.max_bytes.parse::<bytesize::ByteSize>() {
            Ok(b) => b.as_u64(),
            Err(_) => {
                problem("quarantine.max_bytes", format!("{:?} is not a size like \"100MiB\"", raw.max_bytes));
                0
            }
        },
    }
}

/// `[alerts]`: where and how notices are sent, and when.
fn alerts(raw: Option<RawAlerts>, problem: &mut dyn FnMut(&str, String)) -> Option<AlertsConfig> {
    raw.map(|a| {
        if !(a.url.starts_with("https://") || a.url.starts_with("http://")) {
            problem("alerts.url", "must be an http(s) URL (a Slack incoming webhook, or any JSON endpoint)".into());
        }
        let format = match a.format.as_str() {
            "slack" => AlertFormat::Slack,
            "json" => AlertFormat::Json,
            other => {
                problem("alerts.format", format!("{other:?}: use \"slack\" or \"json\""));
                AlertFormat::Slack
            }
        };
        if a.failure_rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
            problem("alerts.failure_rate", "must be a share between 0 (off) and 1, like 0.5".into());
        }
        let lang = match a.lang.as_deref() {
            None | Some("en") => Lang::En,
            Some("fr") => Lang::Fr,
            Some(other) => {
                problem("alerts.lang", format!("{other:?}: use \"en\" or \"fr\""));
                Lang::En
            }
        };
        let dashboard_url = a.dashboard_url.filter(|u| !u.trim().is_empty()).map(|u| {
            match reqwest::Url::parse(u.trim()) {
                Ok(p) if matches!(p.scheme(), "http" | "https") && p.fragment().is_none() => {}
                _ => problem(
                    "alerts.dashboard_url",
                    format!(
                        "{u:?} is not an http(s) URL without a #fragment, like \"https://relay.example.com:9090/\""
                    ),
                ),
            }
            u.trim().to_string()
        });
        AlertsConfig {
            lang,
            dashboard_url,
            url: SecretString::from(a.url),
            format,
            failure_rate: a.failure_rate.filter(|r| *r > 0.0),
            window: duration(&a.window, "alerts.window", problem),
            min_attempts: a.min_attempts.max(1),
            repeat_after: duration(&a.repeat_after, "alerts.repeat_after", problem),
            check_every: duration(&a.check_every, "alerts.check_every", problem),
            field_absent_after: a.field_absent_after,
        }
    })
}

/// `[delivery]`: workers, lease, poll interval, nice.
fn delivery(raw: &RawDelivery, backend: &StoreBackend, problem: &mut dyn FnMut(&str, String)) -> DeliveryConfig {
    DeliveryConfig {
        workers: if raw.workers == 0 {
            problem("delivery.workers", "is 0: nothing would ever be delivered; use 1 or more".into());
            1
        } else {
            raw.workers
        },
        lease: duration(&raw.lease, "delivery.lease", problem),
        poll_interval: duration(&raw.poll_interval, "delivery.poll_interval", problem),
        // With PostgreSQL the pool's connections serve ingest and delivery alike, and those a
        // delivery opened run on the delivery threads: lowering them slowed ingest (5-9 %).
        nice: match raw.nice {
            None if matches!(backend, StoreBackend::Postgres { .. }) => 0,
            None => 10,
            Some(n) => match u8::try_from(n) {
                Ok(n) if n <= 19 => n,
                _ => {
                    problem(
                        "delivery.nice",
                        format!(
                            "is {n}: it is how many steps below the listener's the delivery threads' CPU priority \
                             is, from 0 (the same) to 19 (the lowest)"
                        ),
                    );
                    10
                }
            },
        },
    }
}

/// `[[routes]]`: each route's events, steps, auth, pacing and retry policy (the top-level
/// `retry` is each route's default); `uninterpolated` tells which header values came from `${VAR}`.
fn routes(
    raw: Vec<RawRoute>,
    uninterpolated: &RawConfig,
    retry: &RetryPolicy,
    dir: &Path,
    problem: &mut dyn FnMut(&str, String),
) -> Vec<RouteConfig> {
    let mut routes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, r) in raw.into_iter().enumerate() {
        let at = format!("routes[{i}] ({})", r.name);
        if !valid_name(&r.name) {
            problem(&at, "name may use letters, digits, '-', '_' and '.' only".into());
        }
        if !seen.insert(r.name.clone()) {
            problem(&at, "a route with this name already exists".into());
        }
        if r.events.is_empty() {
            problem(&format!("{at}.events"), "list at least one event glob (\"*\" matches every event)".into());
        }
        for g in &r.events {
            if let Err(e) = glob::Pattern::new(g) {
                problem(&format!("{at}.events"), format!("{g:?} is not a valid glob: {e}"));
            }
        }
        let uninterpolated_route = uninterpolated.routes.get(i);
        let raw_headers = uninterpolated_route.map(|u| &u.headers).cloned().unwrap_or_default();
        let mut headers = header_specs(&r.headers, &raw_headers, &at, problem);
        let oauth = r.auth.as_ref().and_then(|a| auth(a, &mut headers, &at, problem));
        let rate_limit = r
            .rate_limit
            .as_deref()
            .and_then(|t| RateLimit::parse(t).map_err(|e| problem(&format!("{at}.rate_limit"), e.to_string())).ok());
        if r.concurrency == Some(0) {
            problem(&format!("{at}.concurrency"), "must be at least 1".into());
        }
        let Some(steps) = steps(&r, uninterpolated_route, &headers, &at, dir, problem) else { continue };
        for step in &steps {
            if templated_authority(&step.url) && !r.allow_templated_host {
                problem(
                    &at,
                    format!(
                        "step {}: the URL takes its host or port from the event ({}), so a sender could aim \
                         requests at any server; template the path or query instead, or set \
                         allow_templated_host = true (private addresses stay refused unless listed in \
                         allow_private_hosts)",
                        step.name, step.url
                    ),
                );
            }
        }
        let route_retry = match &r.retry {
            Some(o) => retry_policy(o, Some(retry), &format!("{at}.retry"), problem),
            None => retry.clone(),
        };
        routes.push(RouteConfig {
            name: r.name,
            events: r.events,
            when: r.when.filter(|w| !w.trim().is_empty()),
            steps,
            vars: r.vars,
            retry: route_retry,
            rate_limit,
            concurrency: r.concurrency,
            order_by: r.order_by.filter(|o| !o.trim().is_empty()),
            oauth,
            allow_templated_host: r.allow_templated_host,
            allow_private_hosts: r.allow_private_hosts,
            throttle_pause: r
                .throttle_pause
                .as_deref()
                .map_or(DEFAULT_THROTTLE_PAUSE, |t| duration(t, &format!("{at}.throttle_pause"), problem)),
        });
    }

    routes
}

/// A route's `auth`: a Basic or Bearer `Authorization` header added to `headers`, or the OAuth 2.0
/// settings (the token is fetched at send time).
fn auth(
    auth: &RawAuth,
    headers: &mut Vec<HeaderSpec>,
    at: &str,
    problem: &mut dyn FnMut(&str, String),
) -> Option<OAuthConfig> {
    let mut oauth = None;
    if headers.iter().any(|h| h.name.eq_ignore_ascii_case("authorization")) {
        problem(&format!("{at}.auth"), "set either auth or an Authorization header, not both".into());
    }
    let value = match auth {
        RawAuth::Basic { username, password } => {
            use base64::Engine;
            let pair = zeroize::Zeroizing::new(format!("{username}:{password}"));
            Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())))
        }
        RawAuth::Bearer { token } => Some(format!("Bearer {token}")),
        RawAuth::Oauth2 { token_url, client_id, client_secret, refresh_token, scope } => {
            if reqwest::Url::parse(token_url).map(|u| u.scheme().starts_with("http")) != Ok(true) {
                problem(&format!("{at}.auth.token_url"), format!("{token_url:?} is not an http(s) URL"));
            }
            oauth = Some(OAuthConfig {
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                client_secret: SecretString::from(client_secret.clone()),
                refresh_token: refresh_token.clone().filter(|t| !t.is_empty()).map(SecretString::from),
                scope: scope.clone().filter(|s| !s.is_empty()),
            });
            None
        }
    };
    if let Some(value) = value {
        if reqwest::header::HeaderValue::from_str(&value).is_err() {
            problem(&format!("{at}.auth"), "the credentials do not make a valid header value".into());
        }
        headers.push(HeaderSpec { name: "Authorization".into(), value: SecretString::from(value), from_env: true });
    }
    oauth
}

/// A route's requests: its one `url` + `template`, or its `[[routes.steps]]` (each with the
/// route's headers under its own); `None` when it has neither.
fn steps(
    r: &RawRoute,
    uninterpolated_route: Option<&RawRoute>,
    headers: &[HeaderSpec],
    at: &str,
    dir: &Path,
    problem: &mut dyn FnMut(&str, String),
) -> Option<Vec<StepConfig>> {
    let resolve = |p: &str| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            dir.join(p)
        }
    };
    let mut steps = Vec::new();
    if r.steps.is_empty() {
        let (Some(url), Some(template)) = (&r.url, &r.template) else {
            problem(at, "a route needs `url` and `template`, or `[[routes.steps]]`".into());
            return None;
        };
        steps.push(StepConfig {
            name: "request".into(),
            when: None,
            template: Some(resolve(template)),
            url: check_url(url, &format!("{at}.url"), problem),
            method: method(r.method.as_deref(), &format!("{at}.method"), problem),
            headers: headers.to_vec(),
            accept: accept(&r.accept, &format!("{at}.accept"), problem),
            retry_on: retry_on(&r.retry_on, &[], &format!("{at}.retry_on"), problem),
            success: success(r.success.as_ref(), &format!("{at}.success"), problem),
            throttle_on: throttle_on(&r.throttle_on, &[], &format!("{at}.throttle_on"), problem),
            omit_empty: r.omit_empty.unwrap_or(false),
            schema: r.schema.as_deref().map(resolve),
            retry_from: None,
        });
    } else {
        for key in [
            ("url", r.url.is_some()),
            ("template", r.template.is_some()),
            ("method", r.method.is_some()),
            ("accept", !r.accept.is_empty()),
            ("success", r.success.is_some()),
            ("schema", r.schema.is_some()),
        ] {
            if key.1 {
                problem(&format!("{at}.{}", key.0), "set it on each of the route's steps instead".into());
            }
        }
        let mut names = std::collections::HashSet::new();
        for (j, st) in r.steps.iter().enumerate() {
            let sat = format!("{at}.steps[{j}] ({})", st.name);
            if !valid_name(&st.name) || st.name.contains('.') || st.name.contains('-') {
                problem(&sat, "step names may use letters, digits and '_' only (they are used as steps.NAME)".into());
            }
            if !names.insert(st.name.clone()) {
                problem(&sat, "a step with this name already exists in the route".into());
            }
            let raw_step_headers =
                uninterpolated_route.and_then(|u| u.steps.get(j)).map(|u| u.headers.clone()).unwrap_or_default();
            let own = header_specs(&st.headers, &raw_step_headers, &sat, problem);
            let mut merged: Vec<HeaderSpec> =
                headers.iter().filter(|h| !own.iter().any(|o| o.name.eq_ignore_ascii_case(&h.name))).cloned().collect();
            merged.extend(own);
            steps.push(StepConfig {
                name: st.name.clone(),
                when: st.when.clone().filter(|w| !w.trim().is_empty()),
                template: st.template.as_deref().map(resolve),
                url: check_url(&st.url, &format!("{sat}.url"), problem),
                method: method(st.method.as_deref(), &format!("{sat}.method"), problem),
                headers: merged,
                accept: accept(&st.accept, &format!("{sat}.accept"), problem),
                retry_on: retry_on(&r.retry_on, &st.retry_on, &format!("{sat}.retry_on"), problem),
                success: success(st.success.as_ref(), &format!("{sat}.success"), problem),
                throttle_on: throttle_on(&r.throttle_on, &st.throttle_on, &format!("{sat}.throttle_on"), problem),
                omit_empty: st.omit_empty.or(r.omit_empty).unwrap_or(false),
                schema: st.schema.as_deref().map(resolve),
                retry_from: st.retry_from.clone(),
            });
            if let Some(from) = &st.retry_from {
                if !r.steps[..j].iter().any(|earlier| &earlier.name == from) {
                    problem(&format!("{sat}.retry_from"), format!("{from:?} is not an earlier step of this route"));
                }
            }
            if st.schema.is_some() && st.template.is_none() {
                problem(&format!("{sat}.schema"), "a schema checks the body: the step needs a `template`".into());
            }
        }
    }
    Some(steps)
}

/// The shortest admin token accepted.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// Whether two listen addresses take the same port on a shared interface (`0.0.0.0:8080` and
/// `127.0.0.1:8080` cannot both be bound). Port 0 (any free port) never clashes.
fn same_listener(a: &str, b: &str) -> bool {
    match (a.parse::<std::net::SocketAddr>(), b.parse::<std::net::SocketAddr>()) {
        (Ok(a), Ok(b)) => {
            a.port() != 0
                && a.port() == b.port()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        }
        _ => false,
    }
}

/// The methods a route may send with.
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

fn method(text: Option<&str>, at: &str, problem: &mut dyn FnMut(&str, String)) -> reqwest::Method {
    let text = text.unwrap_or("POST");
    let upper = text.to_ascii_uppercase();
    if !METHODS.contains(&upper.as_str()) {
        let hint = crate::suggest::hint(&upper, METHODS.iter().copied());
        problem(at, format!("{text:?} is not an HTTP method{hint}; one of {}", METHODS.join(", ")));
        return reqwest::Method::POST;
    }
    reqwest::Method::from_bytes(upper.as_bytes()).unwrap_or(reqwest::Method::POST)
}

/// The route's `retry_on` entries followed by the step's own.
fn retry_on(
    route: &[RawRetryOn],
    step: &[RawRetryOn],
    at: &str,
    problem: &mut dyn FnMut(&str, String),
) -> Vec<RetryOn> {
    error_answers(route, step, at, problem, 200..300, "is a success: only failing answers can be retried")
}

/// A route's entries followed by a step's own, none with a status in `refused` (said with `why`).
fn error_answers(
    route: &[RawRetryOn],
    step: &[RawRetryOn],
    at: &str,
    problem: &mut dyn FnMut(&str, String),
    refused: std::ops::Range<u16>,
    why: &str,
) -> Vec<RetryOn> {
    let rules: Vec<RetryOn> = route.iter().chain(step).map(RawRetryOn::resolve).collect();
    check_statuses(&rules.iter().map(|r| r.status).collect::<Vec<_>>(), at, problem);
    if let Some(ok) = rules.iter().find(|r| refused.contains(&r.status)) {
        problem(at, format!("{} {why}", ok.status));
    }
    rules
}

/// How long a `throttle_on` answer without a reset time pauses its route.
pub const DEFAULT_THROTTLE_PAUSE: Duration = Duration::from_secs(15 * 60);

/// `accept`: answers that are not a failure (a step branches on them).
fn accept(entries: &[RawRetryOn], at: &str, problem: &mut dyn FnMut(&str, String)) -> Vec<RetryOn> {
    let rules: Vec<RetryOn> = entries.iter().map(RawRetryOn::resolve).collect();
    check_statuses(&rules.iter().map(|r| r.status).collect::<Vec<_>>(), at, problem);
    rules
}

/// `throttle_on`: the route's entries followed by the step's own; 2xx cannot mean "slow down".
fn throttle_on(
    route: &[RawRetryOn],
    step: &[RawRetryOn],
    at: &str,
    problem: &mut dyn FnMut(&str, String),
) -> Vec<RetryOn> {
    error_answers(route, step, at, problem, 200..400, "is not an error answer: throttle_on takes 4xx and 5xx statuses")
}

/// `success = { status, body, location }`.
fn success(raw: Option<&RawSuccess>, at: &str, problem: &mut dyn FnMut(&str, String)) -> Option<Success> {
    let raw = raw?;
    check_statuses(&raw.status, &format!("{at}.status"), problem);
    if let Some(bad) = raw.status.iter().find(|s| **s >= 400) {
        problem(&format!("{at}.status"), format!("{bad} is an error status; use accept to branch on it"));
    }
    let body = raw.body.clone().filter(|b| !b.is_empty());
    if raw.body.is_some() && body.is_none() {
        problem(
            &format!("{at}.body"),
            "an empty text is in every answer: give the text the answer must contain".into(),
        );
    }
    let location = raw.location.as_deref().map(|l| l.trim().trim_start_matches('.').to_ascii_lowercase());
    if let Some(host) = &location {
        let valid = !host.is_empty()
            && host.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !valid {
            problem(
                &format!("{at}.location"),
                format!("{host:?} is not a host name (write the host only, like \"script.googleusercontent.com\")"),
            );
        }
        if !raw.status.iter().any(|s| (300..400).contains(s)) {
            problem(
                &format!("{at}.location"),
                "location checks redirects: list the 3xx status that counts (status = [200, 302])".into(),
            );
        }
    }
    Some(Success { status: raw.status.clone(), body, location })
}

fn check_statuses(statuses: &[u16], at: &str, problem: &mut dyn FnMut(&str, String)) {
    if let Some(bad) = statuses.iter().find(|s| !(100..=599).contains(*s)) {
        problem(at, format!("{bad} is not an HTTP status"));
    }
}

/// Whether the scheme, host or port of a URL template can vary: any `{{…}}` before the path starts
/// (decided on the template's structure, not on what the expression reads — `{{learnybox_id}}`
/// and `{{default [data].[x] "crm.example.com"}}` come from the event as surely as `{{data.x}}`).
/// The path starts at the first `/` after `scheme://` (or `?`, `#`) outside any `{{…}}`.
pub fn templated_authority(url: &str) -> bool {
    let Some(scheme_end) = url.find("://") else { return url.contains("{{") };
    if url[..scheme_end].contains("{{") {
        return true;
    }
    let rest = &url[scheme_end + 3..];
    match (rest.find("{{"), rest.find(['/', '?', '#'])) {
        (Some(tag), Some(path)) => tag < path,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

fn check_url(url: &str, at: &str, problem: &mut dyn FnMut(&str, String)) -> String {
    if !url.contains("{{") && reqwest::Url::parse(url).is_err() {
        problem(at, format!("{url:?} is not an absolute http(s) URL"));
    } else if !(url.starts_with("http://") || url.starts_with("https://")) {
        problem(at, "must start with http:// or https://".into());
    }
    url.to_string()
}

/// Header specs from a table; values that came from `${VAR}` (per `uninterpolated`) are masked.
fn header_specs(
    given: &BTreeMap<String, String>,
    uninterpolated: &BTreeMap<String, String>,
    at: &str,
    problem: &mut dyn FnMut(&str, String),
) -> Vec<HeaderSpec> {
    let mut out = Vec::new();
    for (name, value) in given {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            problem(&format!("{at}.headers"), format!("{name:?} is not a valid header name"));
        }
        if reqwest::header::HeaderValue::from_str(value).is_err() {
            problem(&format!("{at}.headers.{name}"), "the value is not a valid header value".into());
        }
        let from_env = uninterpolated.get(name).is_some_and(|v| has_var(v));
        out.push(HeaderSpec { name: name.clone(), value: SecretString::from(value.clone()), from_env });
    }
    out
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

fn duration(text: &str, at: &str, problem: &mut dyn FnMut(&str, String)) -> Duration {
    match humantime::parse_duration(text) {
        Ok(d) => d,
        Err(e) => {
            problem(at, format!("{text:?} is not a duration like \"90s\", \"5m\" or \"1h\": {e}"));
            Duration::from_secs(1)
        }
    }
}

fn retry_policy(
    raw: &RawRetry,
    base: Option<&RetryPolicy>,
    at: &str,
    problem: &mut dyn FnMut(&str, String),
) -> RetryPolicy {
    let schedule = match &raw.schedule {
        Some(list) => {
            list.iter().enumerate().map(|(i, d)| duration(d, &format!("{at}.schedule[{i}]"), problem)).collect()
        }
        None => base
            .map(|b| b.schedule.clone())
            .unwrap_or_else(|| [60, 300, 600, 3600].into_iter().map(Duration::from_secs).collect()),
    };
    let timeout = match &raw.timeout {
        Some(t) => duration(t, &format!("{at}.timeout"), problem),
        None => base.map(|b| b.timeout).unwrap_or(Duration::from_secs(15)),
    };
    if timeout.is_zero() {
        problem(&format!("{at}.timeout"), "must be greater than zero".into());
    }
    RetryPolicy { schedule, timeout }
}

impl SourceConfig {
    /// Whether `token` (from the URL) opens this source; constant time.
    pub fn token_matches(&self, token: Option<&str>) -> bool {
        use subtle::ConstantTimeEq;
        match (&self.path_token, token) {
            (None, None) => true,
            (Some(expected), Some(given)) => bool::from(expected.expose_secret().as_bytes().ct_eq(given.as_bytes())),
            _ => false,
        }
    }
}

#[cfg(test)]
mod authority_tests {
    use super::templated_authority;

    #[test]
    fn any_expression_in_scheme_host_or_port_is_a_templated_host() {
        for url in [
            "http://{{learnybox_id}}:8080/x",
            "http://crm.test:{{data.port}}/x",
            "http://{{default [data].[target] \"crm.example.com\"}}/x",
            "https://{{vars.host}}/x",
            "{{vars.base}}/contacts",
            "http{{data.s}}://crm.test/x",
            "https://{{#if data.a}}evil{{/if}}crm.test/x",
            "https://crm.test{{data.x}}",
        ] {
            assert!(templated_authority(url), "{url}");
        }
        for url in [
            "https://crm.test/contacts/{{data.id}}",
            "https://crm.test?q={{data.x}}",
            "https://crm.test#{{data.x}}",
            "https://crm.test/{{#if (eq vars.v \"v3\")}}v3{{/if}}/x",
            "https://crm.test/x",
        ] {
            assert!(!templated_authority(url), "{url}");
        }
    }
}
