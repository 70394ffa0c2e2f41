//! How rendered values are escaped: inside a JSON string literal, in a URL (and the dot segments
//! a URL parser would resolve away).

/// Escapes a value for the inside of a JSON string literal.
pub fn json_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or_default().to_string()
}

/// Escapes a value for a URL path segment or query value.
pub fn url_escape(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%2D", "-")
        .replace("%2E", ".")
        .replace("%5F", "_")
        .replace("%7E", "~")
}

/// Whether the path of `url` has a `.` or `..` segment, written plainly or percent-encoded: URL
/// parsers (WHATWG, reqwest's) resolve both away, so `/contacts/{{email}}/sub` with an e-mail of
/// `..` would go out as `/sub`.
pub fn has_dot_segment(url: &str) -> bool {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let Some((_, path)) = after_scheme.split_once('/') else { return false };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}
