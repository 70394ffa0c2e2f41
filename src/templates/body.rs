//! What is done to a rendered body before it is sent: `omit_empty` pruning and validation against
//! a step's `schema` file.

use serde_json::Value;

use super::RenderError;
use crate::config::RouteConfig;

/// Why a step's `schema` file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read the schema")]
    Read(#[source] std::io::Error),
    #[error("the schema is not JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("not a valid JSON Schema: {0}")]
    Invalid(String),
}

/// Reads and compiles a JSON Schema file (its `$schema`, else draft 2020-12; formats are
/// annotations, as the draft says). References to other files or URLs are not fetched.
pub(super) fn load_schema(path: &std::path::Path) -> Result<jsonschema::Validator, SchemaError> {
    let text = std::fs::read_to_string(path).map_err(SchemaError::Read)?;
    let value: Value = serde_json::from_str(&text).map_err(SchemaError::NotJson)?;
    // The validator's error borrows the schema: its text is what can be kept.
    jsonschema::validator_for(&value).map_err(|e| SchemaError::Invalid(e.to_string()))
}

/// At most this many violations are named in one message.
const SCHEMA_PROBLEMS_SHOWN: usize = 3;

pub(super) fn check_schema(
    route: &RouteConfig,
    step: &crate::config::StepConfig,
    validator: &jsonschema::Validator,
    file: &str,
    body: &Value,
) -> Result<(), RenderError> {
    let mut problems: Vec<String> = validator
        .iter_errors(body)
        .take(SCHEMA_PROBLEMS_SHOWN + 1)
        .map(|e| {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "the body".to_string() } else { at };
            format!("{at}: {e}")
        })
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    if problems.len() > SCHEMA_PROBLEMS_SHOWN {
        problems.truncate(SCHEMA_PROBLEMS_SHOWN);
        problems.push("…".into());
    }
    let route = if route.is_multi_step() { format!("{} step {}", route.name, step.name) } else { route.name.clone() };
    Err(RenderError::Schema { route, file: file.to_string(), problems: problems.join("; ") })
}

/// `omit_empty`: removes every object member whose value is null or a blank string, and every such
/// array element, at any depth, so a sparse event never sends a value that would clear the CRM's.
/// An array left empty by that is removed too; arrays and objects empty as rendered stay (they can
/// be required, e.g. HubSpot's `associations: []`).
pub fn prune_empty(value: &mut Value) {
    /// Prunes below `v`; true when `v` itself is to go.
    fn prune(v: &mut Value) -> bool {
        match v {
            Value::Null => true,
            Value::String(s) => s.trim().is_empty(),
            Value::Array(items) => {
                let before = items.len();
                items.retain_mut(|i| !prune(i));
                before > 0 && items.is_empty()
            }
            Value::Object(map) => {
                map.retain(|_, v| !prune(v));
                false
            }
            _ => false,
        }
    }
    prune(value);
}
