//! `${VAR}`, `${VAR:-default}` and `${file:/path}` in every string value of routes.toml, with
//! the substituted secrets collected so every later message can mask them.

pub(super) fn toml_message(e: &toml::de::Error) -> String {
    // toml's Display already carries "TOML parse error at line L, column C" and a caret excerpt.
    e.to_string().trim_end().to_string()
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string below `value`.
pub(super) fn interpolate_value(
    value: &mut toml::Value,
    at: &str,
    env: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<(String, String)>,
    bad: &mut Vec<String>,
    substituted: &mut Vec<String>,
) {
    match value {
        toml::Value::String(s) => match interpolate(s, env, substituted) {
            Ok(out) => *s = out,
            Err(Interp::Unset(vars)) => {
                unset.extend(vars.into_iter().map(|v| (v, at.to_string())));
            }
            Err(Interp::Malformed) => bad.push(format!("{at}: unterminated ${{ in a string value")),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &format!("{at}[{i}]"), env, unset, bad, substituted);
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                interpolate_value(v, &format!("{at}.{k}"), env, unset, bad, substituted);
            }
        }
        _ => {}
    }
}

pub(super) enum Interp {
    Unset(Vec<String>),
    Malformed,
}

pub(super) fn interpolate(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
    substituted: &mut Vec<String>,
) -> Result<String, Interp> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut unset = Vec::new();
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(Interp::Malformed)?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if let Some(file) = name.strip_prefix("file:") {
            // A secret mounted as a file (Docker, Kubernetes), read again at every reload.
            match std::fs::read_to_string(file) {
                Ok(v) => {
                    let v = v.trim_end_matches(['\n', '\r']).to_string();
                    out.push_str(&v);
                    substituted.push(v);
                }
                Err(e) => unset.push(format!("file:{file} ({e})")),
            }
            rest = &after[end + 1..];
            continue;
        }
        match (env(name), default) {
            (Some(v), _) => {
                out.push_str(&v);
                if crate::secrets::is_secret_name(name) {
                    substituted.push(v);
                }
            }
            (None, Some(d)) => {
                out.push_str(d);
                if crate::secrets::is_secret_name(name) {
                    substituted.push(d.to_string());
                }
            }
            (None, None) => unset.push(name.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if unset.is_empty() {
        Ok(out)
    } else {
        Err(Interp::Unset(unset))
    }
}

pub(super) fn has_var(s: &str) -> bool {
    s.contains("${")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("crm.example".into()),
            "API_KEY" => Some("k-123".into()),
            _ => None,
        }
    }

    #[test]
    fn variables_defaults_and_files_are_substituted_and_secrets_collected() {
        let mut secrets = Vec::new();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "from-a-file\n").unwrap();
        let text =
            format!("https://${{HOST}}/x?key=${{API_KEY}}&p=${{PORT:-443}}&f=${{file:{}}}", file.path().display());
        let out = interpolate(&text, &env, &mut secrets).ok().unwrap();
        assert_eq!(out, "https://crm.example/x?key=k-123&p=443&f=from-a-file");
        // HOST is not a secret's name; API_KEY is, and a file's content always is.
        assert_eq!(secrets, vec!["k-123".to_string(), "from-a-file".to_string()]);
    }

    #[test]
    fn every_unset_variable_is_named_and_an_unterminated_one_is_malformed() {
        let mut secrets = Vec::new();
        match interpolate("${A}-${HOST}-${B}", &env, &mut secrets) {
            Err(Interp::Unset(vars)) => assert_eq!(vars, vec!["A".to_string(), "B".to_string()]),
            _ => panic!("A and B are unset"),
        }
        assert!(matches!(interpolate("${HOST", &env, &mut secrets), Err(Interp::Malformed)));
        assert!(has_var("a ${B} c") && !has_var("$B"));
    }
}
