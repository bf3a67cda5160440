//! The caller's address for rate limits: the socket peer, unless the peer is a
//! trusted proxy, in which case the nearest untrusted hop of X-Forwarded-For.
//! A client cannot spoof its way past a limit by sending the header itself.

use std::net::{IpAddr, Ipv6Addr};

use axum::http::HeaderMap;
use ipnet::IpNet;

#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn parse(entries: &[String]) -> anyhow::Result<Self> {
        let mut nets = Vec::new();
        for e in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let net = match e.parse::<IpNet>() {
                Ok(n) => n,
                Err(_) => IpNet::from(e.parse::<IpAddr>().map_err(|_| anyhow::anyhow!("bad trusted proxy {e:?}"))?),
            };
            nets.push(net);
        }
        Ok(Self(nets))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// Walks X-Forwarded-For from the right while hops are trusted proxies.
    ///
    /// Every `X-Forwarded-For` line counts, in order: a proxy may append its
    /// own line (HAProxy does) rather than extend the client's, and reading
    /// only the first line let the client choose its address. Addresses are
    /// canonical: `::ffff:10.0.0.1` (an IPv4 peer of a socket bound to `::`)
    /// is `10.0.0.1`, which is what the trusted list and the limits name.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let mut lines = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            match value.to_str() {
                Ok(v) => lines.push(v),
                // A line we cannot read ends the walk there: nothing left of it is believed.
                Err(_) => lines.clear(),
            }
        }
        let forwarded = lines.join(",");
        let mut client = peer;
        for hop in forwarded.rsplit(',').map(str::trim) {
            match hop.parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip.to_canonical();
                    if !self.trusts(client) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }
}

/// The rate-limit bucket of an address: IPv4 addresses alone, IPv6 by their
/// /64, since one subscriber usually holds a whole /64 and could otherwise
/// take a fresh address (and a fresh bucket) for every request.
pub fn limit_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            format!("{}/64", Ipv6Addr::from(prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append("x-forwarded-for", HeaderValue::from_str(l).unwrap());
        }
        h
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap();
        assert_eq!(t.client_ip(ip("1.2.3.4"), &xff(&["9.9.9.9"])), ip("1.2.3.4"));
    }

    #[test]
    fn trusted_peer_forwards_the_nearest_untrusted_hop() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.168.1.1".into()]).unwrap();
        assert_eq!(t.client_ip(ip("10.1.1.1"), &xff(&["6.6.6.6, 5.5.5.5, 192.168.1.1"])), ip("5.5.5.5"));
        assert_eq!(t.client_ip(ip("10.1.1.1"), &xff(&[])), ip("10.1.1.1"));
        assert_eq!(t.client_ip(ip("10.1.1.1"), &xff(&["garbage"])), ip("10.1.1.1"));
    }

    /// The client sends its own line; the proxy appends the address it saw as
    /// a second line. The second line is the truth.
    #[test]
    fn every_forwarded_for_line_counts_and_the_last_one_is_nearest() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap();
        let spoofed = xff(&["1.1.1.1", "203.0.113.9"]);
        assert_eq!(t.client_ip(ip("10.0.0.2"), &spoofed), ip("203.0.113.9"));
        // Two trusted hops, each with its own line.
        let chained = xff(&["7.7.7.7, 203.0.113.9", "10.0.0.5"]);
        assert_eq!(t.client_ip(ip("10.0.0.2"), &chained), ip("203.0.113.9"));
    }

    /// A socket bound to `::` sees IPv4 peers as `::ffff:a.b.c.d`.
    #[test]
    fn ipv4_mapped_peers_and_hops_are_plain_ipv4() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap();
        let peer = ip("::ffff:10.0.0.2");
        assert_eq!(t.client_ip(peer, &xff(&["203.0.113.9"])), ip("203.0.113.9"), "trusted though mapped");
        assert_eq!(t.client_ip(ip("::ffff:1.2.3.4"), &xff(&["9.9.9.9"])), ip("1.2.3.4"));
        assert_eq!(t.client_ip(peer, &xff(&["::ffff:203.0.113.9, ::ffff:10.0.0.7"])), ip("203.0.113.9"));
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64_and_ipv4_per_address() {
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_eq!(limit_key(ip("2001:db8:1:2:ffff:1:2:3")), limit_key(ip("2001:db8:1:2::9")));
        assert_ne!(limit_key(ip("2001:db8:1:2::1")), limit_key(ip("2001:db8:1:3::1")));
        assert_eq!(limit_key(ip("203.0.113.9")), "203.0.113.9");
        assert_eq!(limit_key(ip("::ffff:203.0.113.9")), "203.0.113.9");
    }
}
