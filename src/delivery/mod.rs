//! Getting stored deliveries to the CRMs: `context` is what the delivery side shares (and the
//! producer ingest holds), `attempt` what one attempt gave, `worker`
//! claims and settles, `handoff` passes new deliveries to the workers without a claim, `steps`
//! runs a route's requests in order, `send` performs one HTTP request, `retry` decides what an
//! answer means for the delivery, `limits` paces each route, `oauth` holds the routes' OAuth
//! tokens, `guard` keeps templated hosts off private addresses, `priority` runs deliveries below the
//! listener in CPU priority.

pub mod attempt;
pub mod context;
pub mod guard;
pub mod handoff;
pub mod limits;
pub mod oauth;
pub mod priority;
pub mod retry;
pub mod send;
pub mod steps;
pub mod worker;

pub use context::{DeliveryContext, Producer};
