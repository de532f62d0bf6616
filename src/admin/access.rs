//! Who may change state through the admin listener.
//!
//! Reads (`GET`, `HEAD`) are open to whoever reaches the listener: probes, Prometheus and the
//! status page use them, and they change nothing. Every other method changes state (drain,
//! reload, audit rotation), and a browser must never be able to send one on a page's behalf:
//!
//! - **Host** must be the listener's own: `localhost` or an IP literal that is loopback or the
//!   address the connection arrived on (any port, so `kubectl port-forward` and SSH tunnels
//!   work). A DNS name is refused: that is what a DNS-rebinding page sends.
//! - **Origin**, when present (browsers send it on every cross-origin `POST`, `text/plain` and
//!   forms included), must be `http://` + that Host; `null` and foreign origins are refused.
//!   `Sec-Fetch-Site`, when present, must be `same-origin` or `none`.
//! - **`admin.token`**, when set, must come as `Authorization: Bearer <token>`; it is compared
//!   in constant time (SHA-256 of both, then a constant-time comparison).
//!
//! The admin API answers no CORS preflight, so a page cannot add the `Authorization` header.

use std::net::{IpAddr, SocketAddr};

use aws_lc_rs::digest::{digest, SHA256};
use http::header::{AUTHORIZATION, HOST, ORIGIN};
use http::{HeaderMap, Method, StatusCode};

/// Why a state-changing request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    pub reason: String,
    /// The token is missing or wrong (the answer carries `WWW-Authenticate`).
    pub token: bool,
}

impl Refused {
    fn forbidden(reason: String) -> Self {
        Refused {
            status: StatusCode::FORBIDDEN,
            reason,
            token: false,
        }
    }
    fn unauthorized(reason: &str) -> Self {
        Refused {
            status: StatusCode::UNAUTHORIZED,
            reason: reason.to_string(),
            token: true,
        }
    }
}

/// Methods that change nothing here.
pub fn is_read(m: &Method) -> bool {
    m == Method::GET || m == Method::HEAD
}

/// Decides a request. `local`: the address the connection arrived on; `token`: `admin.token`
/// (empty: none required).
pub fn check(
    method: &Method,
    headers: &HeaderMap,
    local: SocketAddr,
    token: &str,
) -> Result<(), Refused> {
    if is_read(method) {
        return Ok(());
    }
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !own_host(host, local.ip()) {
        return Err(Refused::forbidden(format!(
            "Host `{}` is not this listener's: state changes need Host localhost or an IP address of this listener (a DNS name is what a DNS-rebinding page sends)",
            host.escape_default()
        )));
    }
    for origin in headers.get_all(ORIGIN) {
        let o = origin.to_str().unwrap_or("");
        let own = o
            .strip_prefix("http://")
            .is_some_and(|rest| rest.eq_ignore_ascii_case(host));
        if !own {
            return Err(Refused::forbidden(format!(
                "Origin `{}` is not this listener's: the admin API takes no requests from web pages",
                o.escape_default()
            )));
        }
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return Err(Refused::forbidden(
                "Sec-Fetch-Site is not same-origin: the admin API takes no requests from web pages"
                    .into(),
            ));
        }
    }
    if token.is_empty() {
        return Ok(());
    }
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    match presented {
        None => Err(Refused::unauthorized(
            "this admin listener requires `Authorization: Bearer <admin.token>` for state changes",
        )),
        Some(p) if token_matches(p, token) => Ok(()),
        Some(_) => Err(Refused::unauthorized("the admin token is wrong")),
    }
}

/// Constant time whatever the lengths: both sides are hashed first.
fn token_matches(presented: &str, token: &str) -> bool {
    let a = digest(&SHA256, presented.as_bytes());
    let b = digest(&SHA256, token.as_bytes());
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_ref(), b.as_ref()).is_ok()
}

/// `localhost`, or an IP literal that is loopback or `local`; any port.
fn own_host(host: &str, local: IpAddr) -> bool {
    let name = match host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        Some(rest) => match rest.split_once(']') {
            Some((ip, after)) if after.is_empty() || valid_port(after) => ip,
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((h, port)) if valid_port(&format!(":{port}")) => h,
            Some(_) => return false,
            None => host,
        },
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => {
            let ip = crate::proxy::canonical(ip);
            ip.is_loopback() || ip == crate::proxy::canonical(local)
        }
        Err(_) => false,
    }
}

fn valid_port(s: &str) -> bool {
    s.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    const LOCAL: &str = "127.0.0.1:9901";

    fn post(pairs: &[(&str, &str)], token: &str) -> Result<(), Refused> {
        check(&Method::POST, &h(pairs), LOCAL.parse().unwrap(), token)
    }

    #[test]
    fn own_hosts() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let pod: IpAddr = "10.1.2.3".parse().unwrap();
        for ok in [
            "localhost",
            "LOCALHOST:9901",
            "127.0.0.1",
            "127.0.0.1:19901",
            "127.8.9.1:1",
            "[::1]:9901",
            "[::1]",
            "[::ffff:127.0.0.1]:9901",
        ] {
            assert!(own_host(ok, lo), "{ok}");
        }
        assert!(own_host("10.1.2.3:9901", pod));
        for bad in [
            "",
            "evil.example",
            "evil.example:9901",
            "localhost.evil.example",
            "10.1.2.3:9901",
            "127.0.0.1:99999x",
            "127.0.0.1:",
            "[::1",
            "[::1]x",
            "::1",
            "2130706433",
        ] {
            assert!(!own_host(bad, lo), "{bad}");
        }
    }

    #[test]
    fn reads_are_open_writes_are_checked() {
        assert!(check(
            &Method::GET,
            &h(&[("host", "evil.example")]),
            LOCAL.parse().unwrap(),
            "t"
        )
        .is_ok());
        assert!(post(&[("host", "127.0.0.1:9901")], "").is_ok());
        assert!(post(&[("host", "evil.example:9901")], "").is_err());
        assert!(post(&[], "").is_err(), "no Host");
        let r = post(
            &[
                ("host", "127.0.0.1:9901"),
                ("origin", "https://evil.example"),
            ],
            "",
        )
        .unwrap_err();
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(post(&[("host", "127.0.0.1:9901"), ("origin", "null")], "").is_err());
        assert!(post(
            &[
                ("host", "127.0.0.1:9901"),
                ("origin", "http://localhost:8000")
            ],
            ""
        )
        .is_err());
        assert!(post(
            &[
                ("host", "127.0.0.1:9901"),
                ("origin", "http://127.0.0.1:9901")
            ],
            ""
        )
        .is_ok());
        assert!(post(
            &[("host", "127.0.0.1:9901"), ("sec-fetch-site", "cross-site")],
            ""
        )
        .is_err());
    }

    #[test]
    fn token_required_when_set() {
        let host = ("host", "127.0.0.1:9901");
        let r = post(&[host], "s3cret-token").unwrap_err();
        assert_eq!((r.status, r.token), (StatusCode::UNAUTHORIZED, true));
        assert!(post(&[host, ("authorization", "Bearer wrong")], "s3cret-token").is_err());
        assert!(post(
            &[host, ("authorization", "Bearer s3cret-token")],
            "s3cret-token"
        )
        .is_ok());
        assert!(post(
            &[host, ("authorization", "bearer  s3cret-token")],
            "s3cret-token"
        )
        .is_ok());
        assert!(
            post(
                &[host, ("authorization", "Basic s3cret-token")],
                "s3cret-token"
            )
            .is_err(),
            "only Bearer: browsers replay Basic credentials on their own"
        );
        // The token does not lift the Origin check.
        assert!(post(
            &[
                host,
                ("authorization", "Bearer s3cret-token"),
                ("origin", "https://evil.example")
            ],
            "s3cret-token"
        )
        .is_err());
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abc", "abcd"));
        assert!(!token_matches("", "abcd"));
    }
}
