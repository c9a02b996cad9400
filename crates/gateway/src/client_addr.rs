//! Who is on the other end: the client address behind trusted proxies, and
//! the key the per-address limits count it under.
//!
//! Behind a load balancer every TCP connection comes from the balancer, so
//! the peer address alone would put every anonymous shopper in one bucket.
//! `X-Forwarded-For` and `Forwarded` (RFC 7239) name the client, but anyone
//! can send them: they are read only when the TCP peer is one of the
//! trusted proxies (`DISCOVERY_TRUSTED_PROXIES`, CIDRs), and then from the
//! right, skipping trusted hops, so a client cannot prepend an address of
//! its choice. An IPv6 client counts per /64 (one subscriber's network:
//! addresses within it are free to rotate).

use std::net::IpAddr;

use discovery_kit::config::{ConfigError, Env};
use http::HeaderMap;
use ipnet::IpNet;

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Reads `DISCOVERY_TRUSTED_PROXIES` (comma-separated CIDRs or
    /// addresses; empty: none, forwarding headers are ignored).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut nets = Vec::new();
        for item in env.list("DISCOVERY_TRUSTED_PROXIES", &[]) {
            let net = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    ConfigError::new(
                        "DISCOVERY_TRUSTED_PROXIES",
                        format!("{item:?} is not a CIDR (10.0.0.0/8) or an address"),
                    )
                })?;
            nets.push(net);
        }
        Ok(Self(nets))
    }

    /// From CIDRs (tests).
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self(nets.into_iter().collect())
    }

    /// Is `ip` a trusted proxy?
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Most forwarding hops read (a header of thousands is an attack).
const MAX_HOPS: usize = 32;

/// One `for=` value of RFC 7239: `192.0.2.1`, `"[2001:db8::1]:4711"`.
fn forwarded_for(v: &str) -> Option<IpAddr> {
    let v = v.trim().trim_matches('"');
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    v.parse()
        .ok()
        .or_else(|| v.rsplit_once(':').and_then(|(h, _)| h.parse().ok()))
}

/// The hops a request names, client first: `X-Forwarded-For`, else the
/// `for=` of `Forwarded`. Unparsable entries end the list (nothing left of
/// them is believed).
fn hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let xff: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !xff.is_empty() {
        return xff
            .iter()
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().parse::<IpAddr>().ok())
            .collect();
    }
    headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|element| {
            element
                .split(';')
                .find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then_some(v)
                })
                .and_then(forwarded_for)
        })
        .collect()
}

/// The client's address: the TCP peer, or, when the peer is a trusted
/// proxy, the right-most forwarded address that is not itself a trusted
/// proxy.
pub fn client_ip(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
) -> Option<IpAddr> {
    let peer = canonical(peer?);
    if !trusted.contains(peer) {
        return Some(peer);
    }
    let hops = hops(headers);
    let mut client = peer;
    for hop in hops.iter().rev().take(MAX_HOPS) {
        match hop {
            Some(ip) => {
                client = canonical(*ip);
                if !trusted.contains(client) {
                    break;
                }
            }
            // Garbage from here leftwards was written by someone we do
            // not trust: stop at the last hop we could read.
            None => break,
        }
    }
    Some(client)
}

/// The per-address limit key of `ip`: the address for IPv4, its /64 for
/// IPv6.
pub fn requester_of(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("ip6:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let trusted = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7")]);
        // From the balancer: the right-most untrusted hop.
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("203.0.113.7"));
        // From anyone else: the peer, whatever it claims.
        assert_eq!(
            client_ip(ip("198.51.100.9"), &h, &trusted),
            ip("198.51.100.9")
        );
        // Trusted hops are skipped; a prepended address is not believed.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.9.9.9")]);
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("203.0.113.7"));
        // Garbage stops the walk.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, not-an-ip, 10.9.9.9")]);
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("10.9.9.9"));
        // No trusted proxies configured: headers ignored.
        let h = headers(&[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(
            client_ip(ip("10.1.2.3"), &h, &TrustedProxies::default()),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn rfc_7239_forwarded_is_read_too() {
        let trusted = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
        let h = headers(&[(
            "forwarded",
            r#"for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711""#,
        )]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted),
            ip("2001:db8:cafe::17")
        );
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a = requester_of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = requester_of("2001:db8:1:2:ffff:1:2:3".parse().unwrap());
        let c = requester_of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b, "one /64, one bucket");
        assert_ne!(a, c);
        assert_eq!(
            requester_of("::ffff:192.0.2.1".parse().unwrap()),
            "ip:192.0.2.1"
        );
        let trusted = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
        assert!(trusted.contains("::ffff:10.1.1.1".parse().unwrap()));
    }
}
