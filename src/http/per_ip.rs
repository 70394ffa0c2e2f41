//! The public listener's per-address cap: how many requests one client address may have in
//! progress (`server.max_connections_per_ip`). More are answered 429 at once and their
//! connection closed, so one address trickling slow bodies cannot hold every connection while a
//! real sender waits. Addresses in `server.per_ip_exempt` (a reverse proxy or load tool on this
//! host: every request through it has its address) are not counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;

use super::Edge;
use crate::ingest::IngestContext;

/// Requests in progress per client address.
#[derive(Debug, Default)]
pub struct InFlight(Mutex<HashMap<IpAddr, usize>>);

/// One request counted; uncounted when dropped (answered, failed or cut off).
struct Slot {
    table: Arc<InFlight>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl InFlight {
    /// Counts one more request from `ip`, unless it already has `cap` in progress.
    fn enter(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<Slot> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Slot { table: self.clone(), ip })
    }
}

/// The middleware: counts the request for its address while it runs, or answers 429.
pub async fn cap(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let (Some(ingest), Some(edge)) =
        (req.app_data::<web::Data<IngestContext>>().cloned(), req.app_data::<web::Data<Edge>>().cloned())
    else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let (cap, exempt) = {
        let rt = ingest.runtime.load();
        (rt.config.server.max_connections_per_ip, rt.config.server.per_ip_exempt.clone())
    };
    let ip = req.peer_addr().map(|a| a.ip());
    let counted = match ip {
        Some(ip) if cap > 0 && !exempt.contains(&ip) => match edge.per_ip.enter(ip, cap) {
            Some(slot) => Some(slot),
            None => {
                metrics::counter!(crate::telemetry::PER_IP_REFUSED).increment(1);
                if edge.per_ip_log.should_log(ingest.clock.now_ms()) {
                    tracing::warn!(%ip, cap, "a client address has too many requests in progress; answered 429");
                }
                let resp = actix_web::HttpResponse::TooManyRequests()
                    .insert_header(("Retry-After", "5"))
                    .insert_header(("Connection", "close"))
                    .json(serde_json::json!({"error": "too many requests in progress from this address"}));
                return Ok(req.into_response(resp).map_into_right_body());
            }
        },
        _ => None,
    };
    let resp = next.call(req).await?;
    drop(counted);
    Ok(resp.map_into_left_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_cap_and_a_slot_is_given_back_when_dropped() {
        let t = Arc::new(InFlight::default());
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "203.0.113.8".parse().unwrap();
        let s1 = t.enter(a, 2).unwrap();
        let _s2 = t.enter(a, 2).unwrap();
        assert!(t.enter(a, 2).is_none(), "the third is refused");
        assert!(t.enter(b, 2).is_some(), "another address is not held back");
        drop(s1);
        assert!(t.enter(a, 2).is_some(), "a slot comes back");
    }
}
