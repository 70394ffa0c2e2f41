//! Where a templated URL may send: for routes with `allow_templated_host`, a request never goes
//! to a loopback, private, link-local or otherwise non-public address unless the route lists the
//! host in `allow_private_hosts`. Host names are checked by the resolver the request itself uses,
//! so a name that resolves to a public address at check time and a private one at send time
//! (DNS rebinding) is refused too.

use std::net::{IpAddr, SocketAddr};

/// Starts every refusal, so a refused connection is told from a network error.
pub const REFUSED: &str = "refused: ";

/// How a request of a templated-host route may go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The host is listed in `allow_private_hosts`: the usual client.
    Listed,
    /// Any public address: the client whose resolver refuses every other.
    PublicOnly,
}

/// Why a rendered URL may not be sent to (the attempt fails for good with this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("the rendered URL is not valid")]
    InvalidUrl,
    #[error(
        "refused: the URL's host comes from the event and is the non-public address {0}; list it in \
         allow_private_hosts if it is meant"
    )]
    NonPublic(IpAddr),
}

/// Decides for the rendered `url` of a route that allows templated hosts.
pub fn check(url: &str, allowed: &[String]) -> Result<Reach, GuardError> {
    let parsed = reqwest::Url::parse(url).map_err(|_| GuardError::InvalidUrl)?;
    let host = parsed.host_str().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let with_port = parsed.port().map(|p| format!("{host}:{p}"));
    if allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(bare) || Some(a) == with_port.as_ref())
    {
        return Ok(Reach::Listed);
    }
    match bare.parse::<IpAddr>() {
        Ok(ip) if !is_public(ip) => Err(GuardError::NonPublic(ip)),
        _ => Ok(Reach::PublicOnly),
    }
}

/// Whether an address is on the public internet (not loopback, private, link-local, shared,
/// unspecified, multicast or reserved).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80) // link-local
        }
    }
}

/// A resolver that returns only public addresses, failing when a name has none.
#[derive(Debug, Default)]
pub struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                let shown: Vec<String> = found.iter().map(|a| a.ip().to_string()).collect();
                return Err(format!(
                    "refused: {host} resolves only to non-public addresses ({}); list it in allow_private_hosts \
                     if it is meant",
                    shown.join(", ")
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses_are_refused_unless_listed() {
        for url in [
            "http://127.0.0.1:9000/x",
            "http://169.254.169.254/latest/meta-data",
            "http://10.1.2.3/",
            "http://192.168.1.1/",
            "http://[::1]:8080/",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0/",
            "http://100.64.0.1/",
        ] {
            assert!(check(url, &[]).is_err(), "{url}");
        }
        assert_eq!(check("http://127.0.0.1:9000/x", &["127.0.0.1".into()]), Ok(Reach::Listed));
        assert_eq!(check("http://127.0.0.1:9000/x", &["127.0.0.1:9000".into()]), Ok(Reach::Listed));
        assert_eq!(check("https://93.184.216.34/x", &[]), Ok(Reach::PublicOnly));
        assert_eq!(check("https://crm.example.com/x", &[]), Ok(Reach::PublicOnly));
    }
}
