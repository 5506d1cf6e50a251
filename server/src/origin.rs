//! Which requests are served: the Host allowlist (`--allowed-host`, checked on every HTTP
//! request, against DNS rebinding), and which may open a websocket: the Origin allowlist
//! (`--allowed-origin`) and the same-origin rule (scheme, host and port). Pure functions over
//! header values and a small [`HostPolicy`], so the config can parse with them.

use std::net::SocketAddr;

use tide::http::Url;

/// Hosts a request's `Host` header may name. Under DNS rebinding a hostile page's own name
/// resolves to this server, so the browser sends that name as Host (and as Origin): only a list
/// of names the server is really called by tells the two apart.
#[derive(Debug, Clone, Default)]
pub struct HostPolicy {
    /// `*` was given: a proxy in front checks Host.
    any: bool,
    /// Lower-case hosts (IPv6 in brackets) and the port they must come with, `None` for any.
    hosts: Vec<(String, Option<u16>)>,
}

impl HostPolicy {
    /// The policy from `--allowed-host` entries (`host`, `host:port` or `*`) and the normalized
    /// `--allowed-origin`s, plus `localhost` on any port. The address each connection arrived on
    /// is allowed too, in [`HostPolicy::allows`]. `Err` gives the first entry that is no host.
    pub fn new(allowed_hosts: &[String], allowed_origins: &[String]) -> Result<Self, String> {
        let mut policy = Self {
            any: false,
            hosts: vec![("localhost".into(), None)],
        };
        for entry in allowed_hosts {
            if entry.trim() == "*" {
                policy.any = true;
                continue;
            }
            let (host, port) = split_host(entry).ok_or_else(|| entry.clone())?;
            policy.hosts.push((host, port));
        }
        for origin in allowed_origins {
            if let Some((_, rest)) = origin.split_once("://") {
                if let Some((host, port)) = split_host(rest) {
                    policy.hosts.push((host, port));
                }
            }
        }
        Ok(policy)
    }

    /// Whether a request with this `Host` header, arriving on `local` (the listener's address
    /// the connection came in on), over https or not, is for this server.
    pub fn allows(&self, host_header: &str, local: Option<SocketAddr>, https: bool) -> bool {
        if self.any {
            return true;
        }
        let Some((host, port)) = split_host(host_header) else {
            return false;
        };
        let port = port.unwrap_or(if https { 443 } else { 80 });
        if let Some(local) = local {
            let ip = match local.ip().to_canonical() {
                std::net::IpAddr::V4(v4) => v4.to_string(),
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            };
            if host == ip && port == local.port() {
                return true;
            }
        }
        self.hosts
            .iter()
            .any(|(h, p)| *h == host && p.is_none_or(|p| p == port))
    }
}

/// `host[:port]` in lower case, without a trailing dot; IPv6 stays in brackets. `None` for
/// anything else (empty, a path, a scheme, spaces).
fn split_host(s: &str) -> Option<(String, Option<u16>)> {
    let s = s.trim().to_ascii_lowercase();
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']')?;
        let (host, rest) = s.split_at(end + 1);
        let host = format!("[{}]", host[1..end].parse::<std::net::Ipv6Addr>().ok()?);
        match rest {
            "" => (host, None),
            r => (host, Some(r.strip_prefix(':')?.parse().ok()?)),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.parse().ok()?)),
            None => (s.clone(), None),
        }
    };
    let host = host.strip_suffix('.').unwrap_or(&host).to_string();
    let ok = host.starts_with('[')
        || (!host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')));
    ok.then_some((host, port))
}

/// Browsers always send Origin on websocket requests; a request without one comes from a
/// non-browser client, which could forge any Origin anyway, so it is allowed. `https` is the
/// scheme the request came in with (see [`crate::addr::client`]): an `http://` page is not the
/// same origin as an https deployment.
pub fn allowed(
    allowed: &[String],
    any: bool,
    origin: Option<&str>,
    host: Option<&str>,
    https: bool,
) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    if any {
        return true;
    }
    let Some(origin) = normalize_origin(origin) else {
        return false;
    };
    if allowed.contains(&origin) {
        return true;
    }
    host.is_some_and(|h| same_origin(&origin, h, https))
}

/// `scheme://host:port` in lower case with the scheme's default port made explicit, or `None`
/// for anything that is not an http(s) origin.
pub fn normalize_origin(origin: &str) -> Option<String> {
    let url = Url::parse(origin).ok()?;
    if !matches!(url.scheme(), "http" | "https") || !matches!(url.path(), "" | "/") {
        return None;
    }
    let host = url.host_str()?;
    let port = url.port_or_known_default()?;
    Some(format!(
        "{}://{}:{}",
        url.scheme(),
        host.to_ascii_lowercase(),
        port
    ))
}

/// Whether a normalized origin names the scheme, host and port the request was sent to.
fn same_origin(origin: &str, host_header: &str, https: bool) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    if scheme != if https { "https" } else { "http" } {
        return false;
    }
    let host_header = host_header.trim().to_ascii_lowercase();
    let (host, port) = match host_header.rsplit_once(':') {
        Some((h, p)) if !host_header.ends_with(']') => (h.to_string(), p.parse::<u16>().ok()),
        _ => (host_header.clone(), None),
    };
    let port = port.unwrap_or(if scheme == "https" { 443 } else { 80 });
    rest == format!("{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_normalize() {
        assert_eq!(
            normalize_origin("http://LocalHost:3000").as_deref(),
            Some("http://localhost:3000")
        );
        assert_eq!(
            normalize_origin("https://a.example").as_deref(),
            Some("https://a.example:443")
        );
        assert_eq!(
            normalize_origin("http://[::1]:8080").as_deref(),
            Some("http://[::1]:8080")
        );
        assert_eq!(normalize_origin("null"), None);
        assert_eq!(normalize_origin("ftp://x"), None);
        assert_eq!(normalize_origin("http://x/path"), None);
    }

    #[test]
    fn same_origin_compares_host_and_port() {
        assert!(same_origin(
            "http://localhost:3000",
            "localhost:3000",
            false
        ));
        assert!(same_origin(
            "http://localhost:3000",
            "LOCALHOST:3000",
            false
        ));
        assert!(same_origin("http://example.com:80", "example.com", false));
        assert!(same_origin("https://example.com:443", "example.com", true));
        assert!(same_origin("http://[::1]:3000", "[::1]:3000", false));
        assert!(!same_origin(
            "http://localhost:3000",
            "localhost:3001",
            false
        ));
        assert!(!same_origin(
            "http://evil.example:3000",
            "localhost:3000",
            false
        ));
        assert!(!same_origin(
            "http://127.0.0.1:3000",
            "localhost:3000",
            false
        ));
        // Scheme counts: an http page is not the https deployment's origin, and back.
        assert!(!same_origin(
            "http://example.com:443",
            "example.com:443",
            true
        ));
        assert!(!same_origin(
            "https://example.com:80",
            "example.com:80",
            false
        ));
    }

    #[test]
    fn host_policy() {
        let local: SocketAddr = "127.0.0.1:3000".parse().unwrap();
        let p = HostPolicy::new(
            &["chat.example.com".into(), "[::1]:8080".into()],
            &["https://app.example:443".into()],
        )
        .unwrap();
        for ok in [
            "localhost:3000",
            "LocalHost:9",
            "localhost.:3000",
            "127.0.0.1:3000",
            "chat.example.com",
            "chat.example.com:8443",
            "[::1]:8080",
            "app.example:443",
        ] {
            assert!(p.allows(ok, Some(local), false), "{ok}");
        }
        assert!(p.allows("app.example", Some(local), true));
        for bad in [
            "evil.example:3000",
            "127.0.0.1:3001",
            "127.0.0.1",
            "[::1]:3000",
            "app.example:8443",
            "app.example",
            "",
            "a b",
            "localhost:x",
        ] {
            assert!(!p.allows(bad, Some(local), false), "{bad}");
        }
        let v6: SocketAddr = "[::1]:3000".parse().unwrap();
        assert!(p.allows("[0:0::1]:3000", Some(v6), false));
        assert!(HostPolicy::new(&["*".into()], &[])
            .unwrap()
            .allows("anything:1", None, false));
        assert!(HostPolicy::new(&["http://x".into()], &[]).is_err());
        assert!(HostPolicy::new(&["x/y".into()], &[]).is_err());
    }
}
