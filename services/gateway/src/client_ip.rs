//! The caller's address for rate limits: the socket peer, unless the peer is a
//! trusted proxy, in which case the nearest untrusted hop of X-Forwarded-For.
//! A client cannot spoof its way past a limit by sending the header itself.

use std::net::IpAddr;

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
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        if let Some(xff) = forwarded_for {
            for hop in xff.rsplit(',').map(str::trim) {
                match hop.parse::<IpAddr>() {
                    Ok(ip) => {
                        client = ip;
                        if !self.trusts(ip) {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap();
        assert_eq!(t.client_ip(ip("1.2.3.4"), Some("9.9.9.9")), ip("1.2.3.4"));
    }

    #[test]
    fn trusted_peer_forwards_the_nearest_untrusted_hop() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.168.1.1".into()]).unwrap();
        assert_eq!(t.client_ip(ip("10.1.1.1"), Some("6.6.6.6, 5.5.5.5, 192.168.1.1")), ip("5.5.5.5"));
        assert_eq!(t.client_ip(ip("10.1.1.1"), None), ip("10.1.1.1"));
        assert_eq!(t.client_ip(ip("10.1.1.1"), Some("garbage")), ip("10.1.1.1"));
    }
}
