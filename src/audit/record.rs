//! One audit line and its JSON encoding.
//!
//! Request fields are captured as cheap clones (`HeaderValue`, `Uri` share their bytes) and
//! encoded on the writer thread, straight into its batch buffer. Every string goes through
//! serde_json's escaper after a lossy UTF-8 conversion, so whatever bytes a client sends, a line
//! stays one valid JSON object: a newline or a quote cannot forge a second line.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderValue, Method, Uri, Version};

use super::user::{EndUser, UserInfo};
use crate::exchange::{Outcome, Refusal};

/// What a line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Request,
    TunnelClose,
}

/// An audit line before encoding.
#[derive(Debug, Clone)]
pub struct Record {
    pub event: Event,
    /// Unix milliseconds when the exchange ended (tunnel: when it closed).
    pub ts_ms: i64,
    pub request_id: Option<HeaderValue>,
    pub client_ip: IpAddr,
    pub peer_ip: IpAddr,
    /// The `X-Forwarded-For` chain as received (the node only gets `client_ip`).
    pub forwarded_for: Option<HeaderValue>,
    pub user: UserInfo,
    /// The webchat or API end user, where the request carries one.
    pub end_user: Option<EndUser>,
    pub visitor_id: Option<String>,
    pub method: Option<Method>,
    pub host: Option<HeaderValue>,
    pub uri: Option<Uri>,
    /// 0 (written as `null`) when no response head was sent.
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_us: u64,
    pub upstream: Option<Arc<str>>,
    pub sticky: Option<&'static str>,
    pub http_version: Option<Version>,
    pub tls_version: Option<&'static str>,
    pub user_agent: Option<HeaderValue>,
    pub origin: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
    pub outcome: Outcome,
    pub reason: Option<&'static str>,
    /// Tunnels: `client`, `upstream`, `idle_timeout`, `shutdown`, `error`.
    pub closed_by: Option<&'static str>,
}

impl Record {
    /// A line for a request hyper refused before bpgate saw it (malformed, head too large).
    pub fn refused(peer: IpAddr, tls: Option<&'static str>, why: Refusal) -> Record {
        let (status, reason, outcome) = why.row();
        Record::unparsed(peer, tls, status.as_u16(), outcome, reason)
    }

    /// A line with only the connection's facts and bpgate's answer; the caller fills in what it
    /// knows of the request.
    pub fn unparsed(
        peer: IpAddr,
        tls: Option<&'static str>,
        status: u16,
        outcome: Outcome,
        reason: &'static str,
    ) -> Record {
        Record {
            event: Event::Request,
            ts_ms: now_ms(),
            request_id: None,
            client_ip: peer,
            peer_ip: peer,
            forwarded_for: None,
            user: UserInfo::default(),
            end_user: None,
            visitor_id: None,
            method: None,
            host: None,
            uri: None,
            status,
            bytes_in: 0,
            bytes_out: 0,
            duration_us: 0,
            upstream: None,
            sticky: None,
            http_version: None,
            tls_version: tls,
            user_agent: None,
            origin: None,
            referer: None,
            outcome,
            reason: Some(reason),
            closed_by: None,
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Writes `r` as one JSON line (with the trailing newline) into `out`.
pub fn encode(r: &Record, redact: &[String], out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"ts\":\"");
    push_ts(out, r.ts_ms);
    out.extend_from_slice(b"\",\"event\":\"");
    out.extend_from_slice(match r.event {
        Event::Request => b"request".as_slice(),
        Event::TunnelClose => b"tunnel_close".as_slice(),
    });
    out.push(b'"');
    field_hv(out, "request_id", r.request_id.as_ref());
    out.extend_from_slice(b",\"client_ip\":\"");
    push_ip(out, r.client_ip);
    out.extend_from_slice(b"\",\"peer_ip\":\"");
    push_ip(out, r.peer_ip);
    out.push(b'"');
    field_hv(out, "forwarded_for", r.forwarded_for.as_ref());
    field_str(out, "user", r.user.user.as_deref());
    field_str(out, "user_source", r.user.source.map(|s| s.as_str()));
    if let Some(c) = &r.user.claimed {
        field_str(out, "claimed_user", Some(c));
    }
    if let Some(k) = r.user.kind {
        field_str(out, "user_kind", Some(k.as_str()));
    }
    if let Some(s) = &r.user.strategy {
        field_str(out, "user_strategy", Some(s));
    }
    if let Some(b) = r.user.super_admin {
        key(out, "user_super_admin");
        out.extend_from_slice(if b { b"true" } else { b"false" });
    }
    if let Some(e) = &r.end_user {
        field_str(out, "end_user", e.id.as_deref());
        field_str(out, "end_user_source", Some(e.source.as_str()));
        if let Some(c) = &e.claimed {
            field_str(out, "claimed_end_user", Some(c));
        }
    }
    if let Some(v) = &r.visitor_id {
        field_str(out, "visitor_id", Some(v));
    }
    field_str(out, "method", r.method.as_ref().map(Method::as_str));
    field_hv(out, "host", r.host.as_ref());
    field_str(out, "path", r.uri.as_ref().map(Uri::path));
    match r.uri.as_ref().and_then(Uri::query) {
        Some(q) => field_string(out, "query", &redact_query(q, redact)),
        None => field_str(out, "query", None),
    }
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(b",\"status\":");
    if r.status == 0 {
        // No response head was sent (the client went away first).
        out.extend_from_slice(b"null");
    } else {
        out.extend_from_slice(n.format(r.status).as_bytes());
    }
    out.extend_from_slice(b",\"bytes_in\":");
    out.extend_from_slice(n.format(r.bytes_in).as_bytes());
    out.extend_from_slice(b",\"bytes_out\":");
    out.extend_from_slice(n.format(r.bytes_out).as_bytes());
    out.extend_from_slice(b",\"duration_ms\":");
    out.extend_from_slice(n.format(r.duration_us / 1000).as_bytes());
    out.push(b'.');
    push_digits(out, (r.duration_us % 1000) as u32, 3);
    field_str(out, "upstream", r.upstream.as_deref());
    field_str(out, "sticky", r.sticky);
    field_str(
        out,
        "http_version",
        r.http_version.map(|v| match v {
            Version::HTTP_2 => "HTTP/2",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_09 => "HTTP/0.9",
            _ => "HTTP/1.1",
        }),
    );
    field_str(out, "tls_version", r.tls_version);
    field_hv(out, "user_agent", r.user_agent.as_ref());
    field_hv(out, "origin", r.origin.as_ref());
    match r.referer.as_ref() {
        // The webchat iframe's URL (and its `options`) comes back as the Referer of every
        // request the iframe makes.
        Some(v) if v.as_bytes().contains(&b'?') => field_string(
            out,
            "referer",
            &redact_url(&String::from_utf8_lossy(v.as_bytes()), redact),
        ),
        v => field_hv(out, "referer", v),
    }
    field_str(out, "outcome", Some(r.outcome.as_str()));
    if let Some(reason) = r.reason {
        field_str(out, "reason", Some(reason));
    }
    if let Some(c) = r.closed_by {
        field_str(out, "closed_by", Some(c));
    }
    out.extend_from_slice(b"}\n");
}

fn key(out: &mut Vec<u8>, k: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(k.as_bytes());
    out.extend_from_slice(b"\":");
}

fn field_str(out: &mut Vec<u8>, k: &str, v: Option<&str>) {
    key(out, k);
    match v {
        Some(s) => push_json_str(out, s.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string. Values are nearly always printable ASCII without quotes or backslashes and
/// are copied as they are; anything else goes through serde_json's escaper.
fn push_json_str(out: &mut Vec<u8>, b: &[u8]) {
    if b.iter()
        .all(|c| (0x20..0x7f).contains(c) && *c != b'"' && *c != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(b);
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, &*String::from_utf8_lossy(b));
    }
}

fn field_string(out: &mut Vec<u8>, k: &str, v: &str) {
    field_str(out, k, Some(v));
}

fn field_hv(out: &mut Vec<u8>, k: &str, v: Option<&HeaderValue>) {
    key(out, k);
    match v {
        Some(v) => push_json_str(out, v.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

/// `2026-11-24T20:56:17.123Z`, from Unix milliseconds. Digits are written directly: this runs
/// once per request, and `fmt` machinery costs several times more.
fn push_ts(out: &mut Vec<u8>, ms: i64) {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000) as u32;
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => {
            push_digits(out, t.year().clamp(0, 9999) as u32, 4);
            out.push(b'-');
            push_digits(out, t.month() as u32, 2);
            out.push(b'-');
            push_digits(out, t.day() as u32, 2);
            out.push(b'T');
            push_digits(out, t.hour() as u32, 2);
            out.push(b':');
            push_digits(out, t.minute() as u32, 2);
            out.push(b':');
            push_digits(out, t.second() as u32, 2);
            out.push(b'.');
            push_digits(out, milli, 3);
            out.push(b'Z');
        }
        Err(_) => out.extend_from_slice(b"1970-01-01T00:00:00.000Z"),
    }
}

/// `n` as exactly `width` decimal digits (zero-padded; higher digits are dropped).
fn push_digits(out: &mut Vec<u8>, mut n: u32, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for i in (0..width).rev() {
        out[start + i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut n = itoa::Buffer::new();
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(n.format(*o).as_bytes());
            }
        }
        v6 => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// The query with the values of sensitive parameters replaced by `REDACTED`. Parameter names
/// compare case-insensitively after percent-decoding, so `%74oken=` is caught too. A value that
/// carries the webchat's `externalAuthToken` (inside `options` of the iframe URL, or anywhere
/// else) is redacted whatever its parameter's name.
pub fn redact_query(q: &str, redact: &[String]) -> String {
    let mut out = String::with_capacity(q.len());
    for (i, pair) in q.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let (k, v) = match pair.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (pair, None),
        };
        let name = percent_encoding::percent_decode_str(k).decode_utf8_lossy();
        let sensitive = redact.iter().any(|r| r.eq_ignore_ascii_case(name.trim()));
        out.push_str(k);
        if let Some(v) = v {
            out.push('=');
            out.push_str(if sensitive || carries_external_token(v) {
                "REDACTED"
            } else {
                v
            });
        }
    }
    out
}

/// `externalAuthToken` in a value, as sent (inject.js's `encodeURIComponent` leaves letters as
/// they are) or with any of its letters percent-encoded.
fn carries_external_token(v: &str) -> bool {
    const NAME: &[u8] = b"externalauthtoken";
    if memchr::memmem::find(v.as_bytes(), b"externalAuthToken").is_some() {
        return true;
    }
    if !v.contains('%') {
        return false;
    }
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(v).collect();
    decoded
        .windows(NAME.len())
        .any(|w| w.eq_ignore_ascii_case(NAME))
}

/// A URL with its query redacted as [`redact_query`] does (the fragment, if any, is dropped:
/// browsers never send one in `Referer`).
fn redact_url(u: &str, redact: &[String]) -> String {
    let u = u.split_once('#').map_or(u, |(a, _)| a);
    match u.split_once('?') {
        Some((base, q)) => format!("{base}?{}", redact_query(q, redact)),
        None => u.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        let mut r = Record::unparsed(
            "10.0.0.1".parse().unwrap(),
            Some("TLSv1.3"),
            200,
            Outcome::Ok,
            "x",
        );
        r.ts_ms = 1_764_017_777_123;
        r.user_agent = Some(HeaderValue::from_bytes(b"evil\"\xffagent\t").unwrap());
        r.uri = Some("/a/b?token=abc&x=1&Password=p&%74oken=t".parse().unwrap());
        r
    }

    #[test]
    fn one_valid_json_line_with_redaction() {
        let mut out = Vec::new();
        encode(&record(), &["token".into(), "password".into()], &mut out);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(s.matches('\n').count(), 1);
        assert!(s.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(s.trim_end()).unwrap();
        assert_eq!(v["ts"], "2025-11-24T20:56:17.123Z");
        assert_eq!(
            v["query"],
            "token=REDACTED&x=1&Password=REDACTED&%74oken=REDACTED"
        );
        assert_eq!(v["user_agent"], "evil\"\u{fffd}agent\t");
        assert_eq!(v["path"], "/a/b");
        assert!(!s.contains("abc"));
    }

    /// The iframe URL inject.js builds: `'/lite/' + botId + '/?m=channel-web&v=' + viewMode +
    /// '&options=' + encodeURIComponent(JSON.stringify({ config }))`.
    fn inject_js_url(token: &str) -> String {
        const URI_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'_')
            .remove(b'.')
            .remove(b'!')
            .remove(b'~')
            .remove(b'*')
            .remove(b'\'')
            .remove(b'(')
            .remove(b')');
        let config = serde_json::json!({"config": {
            "host": "https://bot.example.com", "botId": "welcome-bot",
            "externalAuthToken": token, "showConversationsButton": false
        }});
        format!(
            "/lite/welcome-bot/?m=channel-web&v=Fullscreen&options={}",
            percent_encoding::utf8_percent_encode(&config.to_string(), URI_COMPONENT)
        )
    }

    #[test]
    fn the_webchat_external_token_never_reaches_the_trail() {
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTcifQ.c2lnbmF0dXJl";
        let url = inject_js_url(token);
        let defaults = crate::config::Audit::default().redact_query;
        // With `options` in the list (the default) and without it (the value is still seen to
        // carry the token).
        for redact in [defaults, vec!["token".to_string()]] {
            let mut r = record();
            r.uri = Some(url.parse().unwrap());
            r.referer =
                Some(HeaderValue::from_str(&format!("https://bot.example.com{url}")).unwrap());
            let mut out = Vec::new();
            encode(&r, &redact, &mut out);
            let line = String::from_utf8(out).unwrap();
            assert!(!line.contains(token) && !line.contains("eyJ"), "{line}");
            let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
            assert_eq!(v["query"], "m=channel-web&v=Fullscreen&options=REDACTED");
            assert_eq!(
                v["referer"],
                "https://bot.example.com/lite/welcome-bot/?m=channel-web&v=Fullscreen&options=REDACTED"
            );
        }
        // Encoded letters do not hide it.
        assert_eq!(
            redact_query("o=%7B%22%65xternalAuthToken%22%3A%22x%22%7D&a=1", &[]),
            "o=REDACTED&a=1"
        );
        assert_eq!(redact_query("options=%7B%7D", &[]), "options=%7B%7D");
    }

    #[test]
    fn user_and_end_user_fields() {
        use super::super::user::{EndUserSource, UserKind, UserSource};
        let mut r = record();
        r.user = UserInfo {
            user: None,
            source: Some(UserSource::JwtNoCsrf),
            claimed: Some("a@x.io".into()),
            kind: Some(UserKind::ChatUser),
            strategy: Some("ldap".into()),
            super_admin: Some(false),
        };
        r.end_user = Some(EndUser {
            id: None,
            source: EndUserSource::ExternalAuthExpired,
            claimed: Some("u-7".into()),
        });
        let mut out = Vec::new();
        encode(&r, &[], &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["user"], serde_json::Value::Null);
        assert_eq!(v["user_source"], "jwt_no_csrf");
        assert_eq!(v["claimed_user"], "a@x.io");
        assert_eq!(v["user_kind"], "chat_user");
        assert_eq!(v["user_strategy"], "ldap");
        assert_eq!(v["user_super_admin"], false);
        assert_eq!(v["end_user"], serde_json::Value::Null);
        assert_eq!(v["end_user_source"], "external_auth_expired");
        assert_eq!(v["claimed_end_user"], "u-7");
        // Absent: the optional fields are left out.
        let mut out = Vec::new();
        encode(&record(), &[], &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        for k in [
            "user_kind",
            "user_strategy",
            "user_super_admin",
            "end_user",
            "end_user_source",
        ] {
            assert!(v.get(k).is_none(), "{k}");
        }
        assert!(v["user"].is_null() && v["user_source"].is_null());
    }
}
