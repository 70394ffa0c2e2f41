//! `[sources.NAME.api]`: reconciliation with Learnybox's REST API v2 — where the API is, its key,
//! how often and how far back to look, and per list (`transactions`, `contacts`) how an API item
//! maps to an event. Learnybox does not publish the fields of its items: every pointer here is a
//! setting, with defaults that are readings of public client code (see docs/reconcile.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use serde_json::Value;

use super::RateLimit;

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    pub(super) url: String,
    pub(super) key: String,
    #[serde(default = "default_every")]
    pub(super) every: String,
    #[serde(default = "default_lookback")]
    pub(super) lookback: String,
    #[serde(default = "default_grace")]
    pub(super) grace: String,
    #[serde(default = "default_rate_limit")]
    pub(super) rate_limit: String,
    #[serde(default = "default_page_size")]
    pub(super) page_size: u32,
    #[serde(default = "default_max_pages")]
    pub(super) max_pages: u32,
    #[serde(default = "default_timeout")]
    pub(super) timeout: String,
    #[serde(default)]
    pub(super) transactions: Option<RawApiList>,
    #[serde(default)]
    pub(super) contacts: Option<RawApiList>,
}

#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApiList {
    pub(super) path: Option<String>,
    pub(super) id: Option<String>,
    pub(super) date: Option<String>,
    pub(super) utc_offset: Option<String>,
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) template: Option<String>,
    #[serde(rename = "match")]
    pub(super) matches: Option<Vec<String>>,
    #[serde(default)]
    pub(super) params: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) newest_first: bool,
}

fn default_every() -> String {
    "15m".into()
}
fn default_lookback() -> String {
    "48h".into()
}
fn default_grace() -> String {
    "2m".into()
}
fn default_rate_limit() -> String {
    "60/1m".into()
}
fn default_page_size() -> u32 {
    500
}
fn default_max_pages() -> u32 {
    20
}
fn default_timeout() -> String {
    "30s".into()
}

/// Reconciliation settings of one source.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The API's base, ending with `/` (`https://acme.learnybox.com/api/v2/`).
    pub url: String,
    pub key: SecretString,
    /// How often a run starts.
    pub every: Duration,
    /// How far back item dates are checked.
    pub lookback: Duration,
    /// Items younger than this are left for the next run (their webhook may be on its way).
    pub grace: Duration,
    /// Requests to Learnybox at most, over every list of the source.
    pub rate_limit: RateLimit,
    /// `limit` of each page.
    pub page_size: u32,
    /// Pages read per list and run at most.
    pub max_pages: u32,
    /// One request's whole time.
    pub timeout: Duration,
    /// The lists configured, `transactions` first.
    pub lists: Vec<ApiList>,
}

/// How one of the API's lists maps to events.
#[derive(Debug, Clone)]
pub struct ApiList {
    /// `transactions` or `contacts`.
    pub name: String,
    /// Below the base URL (`transactions/`).
    pub path: String,
    /// JSON pointer of the item's id.
    pub id: String,
    /// JSON pointer of the item's date.
    pub date: String,
    /// Offset of dates written without one (`2026-12-05 21:04:00`).
    pub utc_offset: time::UtcOffset,
    /// The event type a missing item becomes.
    pub kind: String,
    /// `.json.hbs` turning one item into an event body; `None`: the bundled one.
    pub template: Option<PathBuf>,
    /// Where a received event of type `kind` carries the item's id.
    pub matches: Vec<String>,
    /// Extra query parameters (`{since}`, `{until}`, `{since_date}`, `{until_date}`, `{since_unix}`,
    /// `{until_unix}` replaced).
    pub params: BTreeMap<String, String>,
    /// The list comes newest first: paging stops after a page older than the lookback.
    pub newest_first: bool,
}

/// Defaults per list: what public client code and our samples suggest (see docs/reconcile.md).
struct ListDefaults {
    path: &'static str,
    id: &'static str,
    date: &'static str,
    kind: &'static str,
    matches: &'static [&'static str],
}

const TRANSACTIONS: ListDefaults = ListDefaults {
    path: "transactions/",
    id: "/id_transaction",
    date: "/date",
    kind: "transaction.created",
    matches: &["/data/transaction/id", "/data/transaction/id_transaction", "/transaction/id", "/id_transaction"],
};

const CONTACTS: ListDefaults = ListDefaults {
    path: "mail/contacts/",
    id: "/id",
    date: "/date",
    kind: "contact.subscribed",
    matches: &["/data/contact/id", "/contact/id", "/user_id"],
};

/// The bundled template of a list (used when `template` is not set).
pub fn bundled_template(list: &str) -> &'static str {
    match list {
        "contacts" => include_str!("../../templates/learnybox/contact-from-api.json.hbs"),
        _ => include_str!("../../templates/learnybox/transaction-from-api.json.hbs"),
    }
}

impl ApiConfig {
    /// The dedup key reconciliation gives the event it recovers for `item_id` of `list`.
    pub fn recovered_key(list: &str, item_id: &str) -> String {
        format!("reconcile:{list}:{item_id}")
    }

    /// For a received event: the key of the recovered event that would stand for the same item
    /// (its type is a list's `type` and it carries an id where the list's `match` says).
    pub fn alias_of(&self, kind: &str, data: &Value) -> Option<String> {
        self.lists.iter().find(|l| l.kind == kind).and_then(|l| {
            let id = l.matched_id(data)?;
            Some(ApiConfig::recovered_key(&l.name, &id))
        })
    }
}

impl ApiList {
    /// The item id a received event carries, by the list's `match` pointers.
    pub fn matched_id(&self, data: &Value) -> Option<String> {
        self.matches.iter().find_map(|p| crate::event::scalar(data.pointer(p)?))
    }
}

/// Checks `[sources.NAME.api]`; every problem goes to `problem`.
pub(super) fn validate_api(
    raw: RawApi,
    at: &str,
    dir: &Path,
    retention: Duration,
    problem: &mut dyn FnMut(&str, String),
) -> ApiConfig {
    let mut duration = |text: &str, key: &str| match humantime::parse_duration(text) {
        Ok(d) => d,
        Err(e) => {
            problem(&format!("{at}.{key}"), format!("{text:?} is not a duration like \"15m\" or \"48h\": {e}"));
            Duration::from_secs(60)
        }
    };
    let every = duration(&raw.every, "every");
    let lookback = duration(&raw.lookback, "lookback");
    let grace = duration(&raw.grace, "grace");
    let timeout = duration(&raw.timeout, "timeout");
    let mut url = raw.url.trim().to_string();
    if !url.ends_with('/') {
        url.push('/');
    }
    match reqwest::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
        _ => problem(
            &format!("{at}.url"),
            format!("{:?} is not an http(s) URL like \"https://acme.learnybox.com/api/v2/\"", raw.url),
        ),
    }
    if raw.key.trim().is_empty() {
        problem(&format!("{at}.key"), "is empty: create an API key in Learnybox (see docs/reconcile.md)".into());
    }
    if every < Duration::from_secs(60) {
        problem(&format!("{at}.every"), "must be at least 1m (each run lists the API's items again)".into());
    }
    if lookback.is_zero() {
        problem(&format!("{at}.lookback"), "must be greater than zero".into());
    }
    // Items are matched against stored events: those must still be there.
    if lookback + Duration::from_secs(3600) > retention {
        problem(
            &format!("{at}.lookback"),
            format!(
                "{} reaches past store.retention ({}) less one hour: delivered events older than the retention \
                 are purged and their items would be recovered again",
                humantime::format_duration(lookback),
                humantime::format_duration(retention)
            ),
        );
    }
    if grace >= lookback {
        problem(&format!("{at}.grace"), "must be shorter than lookback".into());
    }
    let rate_limit = RateLimit::parse(&raw.rate_limit).unwrap_or_else(|e| {
        problem(&format!("{at}.rate_limit"), e.to_string());
        RateLimit { count: 1, window: Duration::from_secs(1) }
    });
    if !(1..=1000).contains(&raw.page_size) {
        problem(&format!("{at}.page_size"), "must be between 1 and 1000".into());
    }
    if raw.max_pages == 0 {
        problem(&format!("{at}.max_pages"), "must be 1 or more".into());
    }
    if timeout.is_zero() {
        problem(&format!("{at}.timeout"), "must be greater than zero".into());
    }
    let mut lists = Vec::new();
    for (name, given, defaults) in
        [("transactions", raw.transactions, &TRANSACTIONS), ("contacts", raw.contacts, &CONTACTS)]
    {
        let Some(l) = given else { continue };
        let at = format!("{at}.{name}");
        let pointer = |given: Option<String>, default: &str, key: &str, problem: &mut dyn FnMut(&str, String)| {
            let p = given.unwrap_or_else(|| default.to_string());
            if !p.starts_with('/') {
                problem(&format!("{at}.{key}"), format!("{p:?} is not a JSON pointer (it must start with '/')"));
            }
            p
        };
        let id = pointer(l.id, defaults.id, "id", problem);
        let date = pointer(l.date, defaults.date, "date", problem);
        let matches: Vec<String> =
            l.matches.unwrap_or_else(|| defaults.matches.iter().map(|s| s.to_string()).collect());
        if matches.is_empty() {
            problem(&format!("{at}.match"), "needs at least one JSON pointer".into());
        }
        for p in &matches {
            if !p.starts_with('/') {
                problem(&format!("{at}.match"), format!("{p:?} is not a JSON pointer (it must start with '/')"));
            }
        }
        let path = l.path.unwrap_or_else(|| defaults.path.to_string());
        if path.starts_with('/') || path.contains("..") || path.contains('?') || path.trim().is_empty() {
            problem(
                &format!("{at}.path"),
                format!("{path:?}: a path below the API's url like \"transactions/\" (no leading '/', no query)"),
            );
        }
        let utc_offset = match l.utc_offset.as_deref() {
            None => time::UtcOffset::UTC,
            Some(text) => parse_offset(text).unwrap_or_else(|| {
                problem(&format!("{at}.utc_offset"), format!("{text:?} is not an offset like \"+01:00\""));
                time::UtcOffset::UTC
            }),
        };
        let kind = l.kind.unwrap_or_else(|| defaults.kind.to_string());
        if kind.trim().is_empty() {
            problem(&format!("{at}.type"), "is empty: the event type a missing item becomes".into());
        }
        let template = l.template.map(|t| {
            if !t.ends_with(".json.hbs") {
                problem(&format!("{at}.template"), format!("{t:?}: the template must be a .json.hbs file"));
            }
            let p = PathBuf::from(t);
            if p.is_absolute() {
                p
            } else {
                dir.join(p)
            }
        });
        for (k, v) in &l.params {
            if k.trim().is_empty() || v.contains(['&', '#']) {
                problem(&format!("{at}.params.{k}"), "names and values are written plainly (no '&' or '#')".into());
            }
        }
        lists.push(ApiList {
            name: name.to_string(),
            path,
            id,
            date,
            utc_offset,
            kind,
            template,
            matches,
            params: l.params,
            newest_first: l.newest_first,
        });
    }
    if lists.is_empty() {
        problem(
            at,
            "no list to reconcile: add [..api.transactions] (and [..api.contacts] if wanted), even empty to take the \
             defaults"
                .into(),
        );
    }
    ApiConfig {
        url,
        key: SecretString::from(raw.key),
        every,
        lookback,
        grace,
        rate_limit,
        page_size: raw.page_size.clamp(1, 1000),
        max_pages: raw.max_pages.max(1),
        timeout,
        lists,
    }
}

/// `+01:00`, `-05:30`, `Z`.
fn parse_offset(text: &str) -> Option<time::UtcOffset> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("z") {
        return Some(time::UtcOffset::UTC);
    }
    let format = time::macros::format_description!("[offset_hour sign:mandatory]:[offset_minute]");
    time::UtcOffset::parse(t, &format).ok().filter(|o| o.whole_hours().abs() <= 14)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_read_as_written_and_anything_else_is_refused() {
        assert_eq!(parse_offset("+01:00"), time::UtcOffset::from_hms(1, 0, 0).ok());
        assert_eq!(parse_offset("-05:30"), time::UtcOffset::from_hms(-5, -30, 0).ok());
        assert_eq!(parse_offset("Z"), Some(time::UtcOffset::UTC));
        for bad in ["1", "+1", "+25:00", "+01:60", "Europe/Paris", "", "+-1:00", "+99999999999:00"] {
            assert_eq!(parse_offset(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_received_event_names_the_recovered_key_of_its_item_only_for_the_list_type() {
        let list = ApiList {
            name: "transactions".into(),
            path: "transactions/".into(),
            id: "/id_transaction".into(),
            date: "/date".into(),
            utc_offset: time::UtcOffset::UTC,
            kind: "transaction.created".into(),
            template: None,
            matches: TRANSACTIONS.matches.iter().map(|s| s.to_string()).collect(),
            params: BTreeMap::new(),
            newest_first: false,
        };
        let api = ApiConfig {
            url: "https://a.learnybox.com/api/v2/".into(),
            key: SecretString::from("k".to_string()),
            every: Duration::from_secs(900),
            lookback: Duration::from_secs(3600),
            grace: Duration::ZERO,
            rate_limit: RateLimit { count: 1, window: Duration::from_secs(1) },
            page_size: 500,
            max_pages: 1,
            timeout: Duration::from_secs(1),
            lists: vec![list],
        };
        let data = serde_json::json!({"data": {"transaction": {"id": "TX-1"}}});
        assert_eq!(api.alias_of("transaction.created", &data).as_deref(), Some("reconcile:transactions:TX-1"));
        assert_eq!(api.alias_of("transaction.refunded", &data), None, "another type is another event");
        assert_eq!(
            api.alias_of("transaction.created", &serde_json::json!({"data": {"transaction": {"id": " "}}})),
            None
        );
        assert_eq!(
            api.alias_of("transaction.created", &serde_json::json!({"id_transaction": 42})).as_deref(),
            Some("reconcile:transactions:42")
        );
    }
}
