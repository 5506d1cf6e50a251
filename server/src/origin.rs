//! Which requests may open a websocket: the Origin allowlist (`--allowed-origin`) and the
//! same-origin rule. Pure functions over header values, so the config can parse with them.

use tide::http::Url;

/// Browsers always send Origin on websocket requests; a request without one comes from a
/// non-browser client, which could forge any Origin anyway, so it is allowed.
pub fn allowed(allowed: &[String], any: bool, origin: Option<&str>, host: Option<&str>) -> bool {
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
    host.is_some_and(|h| same_origin(&origin, h))
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

/// Whether a normalized origin names the host (and port) the request was sent to.
fn same_origin(origin: &str, host_header: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
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
        assert!(same_origin("http://localhost:3000", "localhost:3000"));
        assert!(same_origin("http://localhost:3000", "LOCALHOST:3000"));
        assert!(same_origin("http://example.com:80", "example.com"));
        assert!(same_origin("http://[::1]:3000", "[::1]:3000"));
        assert!(!same_origin("http://localhost:3000", "localhost:3001"));
        assert!(!same_origin("http://evil.example:3000", "localhost:3000"));
        assert!(!same_origin("http://127.0.0.1:3000", "localhost:3000"));
    }
}
