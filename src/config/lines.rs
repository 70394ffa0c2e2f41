//! Where a key that validation names (`routes[0] (r).steps[1] (search).success.status`) stands
//! in routes.toml: its line, so every problem reads `routes.toml:12: …`.

/// The 1-based line of the deepest part of `at` found in `text` (the key itself, or the table
/// that should hold it), or `None` when not even its first part is in the file.
pub fn line_of(text: &str, at: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = doc.as_item();
    let mut found = None;
    for part in parts(at) {
        let (name, index) = part;
        let Some(next) = item.get(name.as_str()) else { break };
        item = next;
        if let Some(i) = index {
            let Some(next) = item.get(i) else { break };
            item = next;
        }
        found = item.span().or(found);
    }
    found.map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
}

/// `a[0] (name).b.c` → `[("a", Some(0)), ("b", None), ("c", None)]`; a ` (…)` label may hold dots.
fn parts(at: &str) -> Vec<(String, Option<usize>)> {
    let mut out = Vec::new();
    let mut rest = at.trim();
    while !rest.is_empty() {
        let end = rest.find(['.', '[', ' ']).unwrap_or(rest.len());
        let name = rest[..end].to_string();
        rest = &rest[end..];
        let mut index = None;
        if let Some(after) = rest.strip_prefix('[') {
            let Some(close) = after.find(']') else { break };
            index = after[..close].parse().ok();
            rest = &after[close + 1..];
        }
        if let Some(after) = rest.strip_prefix(" (") {
            let Some(close) = after.find(')') else { break };
            rest = &after[close + 1..];
        }
        out.push((name, index));
        match rest.strip_prefix('.') {
            Some(after) => rest = after,
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[server]\nmax_body = \"x\"\n\n[[routes]]\nname = \"a.b\"\nevents = []\n\n[[routes]]\nname = \"r\"\nsuccess = { status = [500] }\n\n[[routes.steps]]\nname = \"s\"\n\n[[routes.steps]]\nname = \"t\"\nthrottle_on = [200]\n";

    #[test]
    fn keys_are_found_at_their_line() {
        assert_eq!(line_of(TEXT, "server.max_body"), Some(2));
        assert_eq!(line_of(TEXT, "routes[1] (r).success.status"), Some(10));
        assert_eq!(line_of(TEXT, "routes[1] (r).steps[1] (t).throttle_on"), Some(17));
        assert_eq!(line_of(TEXT, "routes[0] (a.b).events"), Some(6));
        // A missing key points at the table that should hold it.
        assert_eq!(line_of(TEXT, "routes[1] (r).steps[0] (s).url"), Some(12));
        assert_eq!(line_of(TEXT, "store.url"), None);
        assert_eq!(line_of("not = [toml", "not"), None);
    }
}
