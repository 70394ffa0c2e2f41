//! What one attempt gave: the [`AttemptResult`] of a request (or of a failure before any), the
//! record of each request it sent ([`Exchange`]), and the [`Verdict`] that says what it means for
//! the delivery. `send` makes them, `retry` judges them, `steps` and `worker` act on them.

use std::time::Duration;

/// What one attempt's result means for its delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Worth trying again; `retry_after` is the server's request, if any.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Trying again cannot help (a 4xx other than 408/425/429, a render error, an unknown route).
    Fail {
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub status: Option<u16>,
    pub verdict: Verdict,
    pub duration: Duration,
    /// What went wrong, for `last_error` (the URL is never included: it may hold a token).
    pub error: Option<String>,
    /// The CRM said its quota is used up: nothing more on this route for this long.
    pub pause: Option<Duration>,
    /// The answer's body, when it was asked for (multi-step routes branch on it), and the first
    /// [`FAILED_BODY_KEPT`](super::send::FAILED_BODY_KEPT) bytes of any answer that is not a success (`retry_on` matches on it).
    pub body: Option<String>,
    /// Each request as sent and its answer, for the attempt's record.
    pub exchanges: Vec<Recorded>,
    /// How long the answer's headers ask us to wait (`Retry-After`, reset headers), capped.
    pub requested_wait: Option<Duration>,
    /// The `Location` header of the answer, when it has one.
    pub location: Option<String>,
    /// The answer says "slow down" (a 429, or a `throttle_on` match): the route pauses and the
    /// attempt uses up no step of the schedule.
    pub throttled: bool,
}

impl AttemptResult {
    /// A result with no answer from the CRM (network error, render error, token failure, …): the
    /// verdict's reason is the error.
    pub fn without_answer(verdict: Verdict, duration: Duration) -> AttemptResult {
        let error = match &verdict {
            Verdict::Delivered => None,
            Verdict::Retry { reason, .. } | Verdict::Fail { reason } => Some(reason.clone()),
        };
        AttemptResult {
            status: None,
            verdict,
            duration,
            error,
            pause: None,
            body: None,
            exchanges: Vec::new(),
            requested_wait: None,
            location: None,
            throttled: false,
        }
    }
}

/// One request as sent (credentials masked, body cut at
/// [`RECORDED_BODY`](super::send::RECORDED_BODY)), when it was sent by the relay's clock, and its
/// answer: an entry of an attempt's record, whose JSON the console shows. Typed rather than built
/// as a `serde_json::Value`: one is made for every request, and a tree of `Value`s cost a map and a
/// string per key (about 3 % of the relay's instructions per event). Fields are listed in the
/// order the JSON has always had them (sorted, as `Value` objects are).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Exchange {
    pub error: Option<String>,
    pub request: SentRequest,
    pub response: Option<Answer>,
    pub sent_at: String,
    /// The step of a multi-step route that sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

/// A request as sent: its headers with credentials shown as `***`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SentRequest {
    pub body: String,
    pub headers: std::collections::BTreeMap<String, String>,
    pub method: String,
    pub url: String,
}

/// The answer to a request: its headers without credential-looking ones, its body cut.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Answer {
    pub body: String,
    pub headers: std::collections::BTreeMap<String, String>,
    pub status: u16,
}

/// An entry of an attempt's record: an exchange of this attempt, or one kept as JSON in the
/// delivery's steps state by an attempt handed back before it settled.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum Recorded {
    Sent(Exchange),
    Kept(serde_json::Value),
}

impl Recorded {
    /// Names the step that sent it (entries kept from earlier attempts already name theirs).
    pub fn set_step(&mut self, step: &str) {
        match self {
            Recorded::Sent(x) => x.step = Some(step.to_string()),
            Recorded::Kept(serde_json::Value::Object(map)) => {
                map.insert("step".into(), step.into());
            }
            Recorded::Kept(_) => {}
        }
    }
}
