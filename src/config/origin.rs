//! The grammar of a `cors.origins` entry: an exact origin, a `https://*.example.com` pattern or
//! `null`. Parsed (and normalised: lower case, default port dropped) once at load time, so an
//! invalid entry is a configuration error naming its key; the CORS layer only matches.

/// One entry of `cors.origins`, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginSpec {
    /// A serialised origin, lower-case, default port dropped (as browsers send it).
    Exact(String),
    /// `scheme://*` + `suffix`, where `suffix` is `.example.com[:port]`, lower-case.
    Wildcard { scheme_sep: String, suffix: String },
    /// The opaque origin `null` (sandboxed iframes, `file:`), only when listed literally.
    Null,
}

impl OriginSpec {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("null") {
            return Ok(OriginSpec::Null);
        }
        if s == "*" {
            return Err(
                "`*` alone is not allowed: list the origins (with credentials, browsers refuse `*` anyway)"
                    .into(),
            );
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(format!(
                "`{s}` has no scheme: write it like https://app.example.com"
            ));
        };
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "https" && scheme != "http" {
            return Err(format!("`{s}`: scheme must be https or http"));
        }
        if let Some(c) = rest.chars().find(|c| matches!(c, '/' | '?' | '#' | '@')) {
            return Err(format!(
                "`{s}` is not an origin: it has `{c}` (a path, query, fragment or credentials); an origin is scheme://host[:port] only"
            ));
        }
        let rest = rest.to_ascii_lowercase();
        let (host, port) = split_port(&rest).map_err(|p| format!("`{s}`: {p}"))?;
        let default_port = if scheme == "https" { 443 } else { 80 };
        let port_part = match port {
            Some(p) if p != default_port => format!(":{p}"),
            _ => String::new(),
        };
        let (wild, host) = match host.strip_prefix("*.") {
            Some(h) => (true, h),
            None => (false, host),
        };
        if host.contains('*') {
            return Err(format!(
                "`{s}`: a wildcard is only possible as the whole leftmost label, like https://*.example.com"
            ));
        }
        if !valid_host(host) {
            return Err(format!("`{s}`: `{host}` is not a valid host name"));
        }
        if wild {
            if !host.contains('.') || host.starts_with('[') {
                return Err(format!(
                    "`{s}`: the wildcard must be followed by a domain with at least two labels"
                ));
            }
            return Ok(OriginSpec::Wildcard {
                scheme_sep: format!("{scheme}://"),
                suffix: format!(".{host}{port_part}"),
            });
        }
        Ok(OriginSpec::Exact(format!("{scheme}://{host}{port_part}")))
    }
}

/// Splits `host[:port]` (IPv6 in brackets) and checks the port.
fn split_port(a: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if a.starts_with('[') {
        match a.find(']') {
            Some(i) if i + 1 == a.len() => (a, None),
            Some(i) if a.as_bytes().get(i + 1) == Some(&b':') => (&a[..=i], Some(&a[i + 2..])),
            _ => return Err("malformed IPv6 address".into()),
        }
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(format!("port `{p}` is not a number between 1 and 65535")),
        },
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    Ok((host, port))
}

fn valid_host(h: &str) -> bool {
    if let Some(v6) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !h.is_empty()
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
