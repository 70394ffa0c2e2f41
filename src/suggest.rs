//! "Did you mean …?": the closest of a set of known names to one that matched nothing (a source in
//! a hook URL, an event type in `events`, a field path in a template, an exported variable).

/// The known name closest to `given`, when it is close enough to be a likely typo: equal but for
/// case, or at most two edits away (one for names of four characters or less).
pub fn closest<'a>(given: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = given.to_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for name in known {
        if name == given {
            continue;
        }
        let distance =
            if name.to_lowercase() == lower { 0 } else { strsim::damerau_levenshtein(&lower, &name.to_lowercase()) };
        let allowed = if given.chars().count() <= 4 { 1 } else { 2 };
        if distance <= allowed && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, name));
        }
    }
    best.map(|(_, name)| name)
}

/// `" (did you mean `x`?)"`, or nothing.
pub fn hint<'a>(given: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    closest(given, known).map(|name| format!(" (did you mean `{name}`?)")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_and_case_find_their_name_and_strangers_find_none() {
        let known = ["learnybox", "shop"];
        assert_eq!(closest("Learnybox", known), Some("learnybox"));
        assert_eq!(closest("learnybx", known), Some("learnybox"));
        assert_eq!(closest("lernybox", known), Some("learnybox"));
        assert_eq!(closest("learnybox", known), None, "an exact name is not a suggestion");
        assert_eq!(closest("wordpress", known), None);
        assert_eq!(closest("shp", known), Some("shop"));
        assert_eq!(closest("abc", known), None);
        let events = ["contact.subscribed", "contact.unsubscribed"];
        assert_eq!(closest("contact.subscibed", events), Some("contact.subscribed"));
        assert_eq!(hint("contact.unsubscibed", events), " (did you mean `contact.unsubscribed`?)");
        assert_eq!(hint("order.paid", events), "");
    }
}
