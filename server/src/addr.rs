//! Who a request comes from: the client address (the TCP peer, or what a trusted reverse proxy
//! says in `X-Forwarded-For` / `Forwarded: for=`), the scheme the client used (`X-Forwarded-Proto`
//! / `Forwarded: proto=`, again only from a trusted proxy), and the [`key`] that per-address
//! limits count under. Pure functions over header values.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

/// The `--trusted-proxy` networks: peers whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct Proxies(Vec<IpNet>);

impl Proxies {
    /// Parses CIDRs (`10.0.0.0/8`) or bare addresses (`127.0.0.1`, one host); `Err` names the
    /// first entry that is neither.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| {
                let e = e.trim();
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| e.to_string())
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// The forwarding headers of a request (each header's values joined with `,`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Forwarding<'a> {
    pub forwarded: Option<&'a str>,
    pub x_forwarded_for: Option<&'a str>,
    pub x_forwarded_proto: Option<&'a str>,
}

/// Where a request comes from, as far as the server can trust it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    pub ip: IpAddr,
    /// The client spoke https to a trusted proxy.
    pub https: bool,
}

/// The client of a request that arrived from `peer`. Headers count only when `peer` is a trusted
/// proxy; then the client is the rightmost forwarded address that is not itself a trusted proxy
/// (each proxy appends the address it received from, so everything left of that point could be
/// written by the client). `X-Forwarded-For` (and `X-Forwarded-Proto`) win over `Forwarded`
/// when both are present: nearly every proxy writes the former and passes a client's
/// `Forwarded` through untouched, so a proxy that writes only `Forwarded` must drop the others.
pub fn client(proxies: &Proxies, peer: IpAddr, fwd: Forwarding<'_>) -> ClientInfo {
    let peer = peer.to_canonical();
    let mut info = ClientInfo {
        ip: peer,
        https: false,
    };
    if !proxies.trusts(peer) {
        return info;
    }
    let hops: Vec<(Option<IpAddr>, Option<String>)> = match (fwd.x_forwarded_for, fwd.forwarded) {
        (Some(xff), _) => xff
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| (node(s), None))
            .collect(),
        (None, Some(f)) => f.split(',').map(forwarded_element).collect(),
        (None, None) => Vec::new(),
    };
    // The value the nearest proxy set.
    let xfp = fwd
        .x_forwarded_proto
        .and_then(|p| p.rsplit(',').next())
        .map(|p| p.trim().to_ascii_lowercase());
    let mut proto = None;
    for (ip, hop_proto) in hops.iter().rev() {
        // This hop was written by `info.ip`, a trusted proxy.
        if hop_proto.is_some() {
            proto.clone_from(hop_proto);
        }
        // An address a trusted proxy could not name ("unknown", obfuscated): the client stays
        // the proxy that said so, rather than anything further left (which the client wrote).
        let Some(ip) = ip else { break };
        info.ip = ip.to_canonical();
        if !proxies.trusts(info.ip) {
            break;
        }
    }
    info.https = xfp.or(proto).as_deref() == Some("https");
    info
}

/// One `Forwarded` element (`for=...;proto=...;by=...`): its `for` address and `proto`.
fn forwarded_element(element: &str) -> (Option<IpAddr>, Option<String>) {
    let mut ip = None;
    let mut proto = None;
    for pair in element.split(';') {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"');
        match k.trim().to_ascii_lowercase().as_str() {
            "for" => ip = node(v),
            "proto" => proto = Some(v.to_ascii_lowercase()),
            _ => {}
        }
    }
    (ip, proto)
}

/// An address with an optional port: `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`,
/// `[2001:db8::1]:80`.
fn node(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    let (ip, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// What per-address limits count under: IPv4 addresses as they are (IPv4-mapped IPv6 too), IPv6
/// addresses by their /64, since one host is usually given a whole /64 and could otherwise
/// spread itself over 2^64 addresses.
pub fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxies(p: &[&str]) -> Proxies {
        Proxies::parse(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn headers_count_only_from_trusted_peers() {
        let p = proxies(&["10.0.0.0/8"]);
        let xff = Forwarding {
            x_forwarded_for: Some("1.2.3.4"),
            x_forwarded_proto: Some("https"),
            ..Default::default()
        };
        let direct = client(&p, ip("203.0.113.5"), xff);
        assert_eq!(direct.ip, ip("203.0.113.5"));
        assert!(!direct.https);
        let proxied = client(&p, ip("10.1.2.3"), xff);
        assert_eq!(proxied.ip, ip("1.2.3.4"));
        assert!(proxied.https);
    }

    #[test]
    fn rightmost_untrusted_address_wins() {
        let p = proxies(&["10.0.0.0/8", "192.168.1.1"]);
        let f = |xff| Forwarding {
            x_forwarded_for: Some(xff),
            ..Default::default()
        };
        // The client wrote "6.6.6.6"; the outer proxy appended the client's real address.
        assert_eq!(
            client(&p, ip("10.0.0.1"), f("6.6.6.6, 1.2.3.4, 192.168.1.1")).ip,
            ip("1.2.3.4")
        );
        assert_eq!(client(&p, ip("10.0.0.1"), f("10.0.0.9")).ip, ip("10.0.0.9"));
        assert_eq!(client(&p, ip("10.0.0.1"), f("junk")).ip, ip("10.0.0.1"));
        assert_eq!(
            client(&p, ip("10.0.0.1"), f("[2001:db8::1]:443, 1.2.3.4:5678")).ip,
            ip("1.2.3.4")
        );
    }

    #[test]
    fn forwarded_header_gives_address_and_proto() {
        let p = proxies(&["127.0.0.1/32"]);
        let mut fwd = Forwarding {
            forwarded: Some(
                r#"for=6.6.6.6;proto=http, For="[2001:db8:cafe::17]:4711";proto=https"#,
            ),
            ..Default::default()
        };
        let c = client(&p, ip("127.0.0.1"), fwd);
        assert_eq!(c.ip, ip("2001:db8:cafe::17"));
        assert!(c.https);
        // IPv4-mapped peers are IPv4 peers.
        let c = client(&p, ip("::ffff:127.0.0.1"), fwd);
        assert_eq!(c.ip, ip("2001:db8:cafe::17"));
        // The X-Forwarded-* pair wins: a client's own `Forwarded` passes most proxies unchanged.
        fwd.x_forwarded_for = Some("9.9.9.9");
        fwd.x_forwarded_proto = Some("http");
        let c = client(&p, ip("127.0.0.1"), fwd);
        assert_eq!(c.ip, ip("9.9.9.9"));
        assert!(!c.https);
    }

    #[test]
    fn keys_group_ipv6_by_64() {
        assert_eq!(key(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(key(ip("2001:db8:1:2:ffff::9")), key(ip("2001:db8:1:2::5")));
        assert_ne!(key(ip("2001:db8:1:3::1")), key(ip("2001:db8:1:2::1")));
        assert!(Proxies::parse(&["nonsense".into()]).is_err());
    }
}
