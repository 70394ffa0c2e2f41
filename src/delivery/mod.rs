//! Getting stored deliveries to the CRMs: `worker` claims and settles, `send` performs one HTTP
//! request, `retry` decides what an answer means for the delivery, `limits` paces each route.

pub mod limits;
pub mod retry;
pub mod send;
pub mod worker;
