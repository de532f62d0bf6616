//! Who the client is, and what bpgate tells Botpress about it.
//!
//! Botpress believes `X-Forwarded-*` once its `REVERSE_PROXY` is set, so these headers are a
//! security boundary: a client-supplied `X-Forwarded-For` is only kept when the TCP peer is a
//! trusted proxy; otherwise bpgate replaces every forwarding header with its own view.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, FORWARDED, HOST};

use crate::config::Cidr;
use crate::exchange::{ForwardedCache, ForwardedValues};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The trusted-proxy list, checked for every request.
#[derive(Debug, Clone, Default)]
pub struct Trusted(pub Vec<Cidr>);

impl Trusted {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        let ip = canonical(*ip);
        self.0.iter().any(|c| c.contains(&ip))
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, from dual-stack sockets) compare as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The client's IP. When the peer is trusted, walk `X-Forwarded-For` from the right and take the
/// first hop that is not itself a trusted proxy (the rightmost untrusted hop: everything left of
/// it may be forged). Otherwise, and for anything unparsable, the peer's address.
///
/// This is the one function that decides; forwarding and the audit trail both call it.
///
/// ```
/// use bpgate::proxy::{client_ip, Trusted};
/// let mut h = http::HeaderMap::new();
/// h.insert("x-forwarded-for", "6.6.6.6, 198.51.100.7".parse().unwrap());
/// let lb = Trusted(vec!["10.0.0.0/8".parse().unwrap()]);
/// // A trusted load balancer: the rightmost untrusted hop.
/// assert_eq!(client_ip("10.0.0.2".parse().unwrap(), &h, &lb).to_string(), "198.51.100.7");
/// // Anyone else: their own address, whatever they claim.
/// assert_eq!(client_ip("203.0.113.9".parse().unwrap(), &h, &lb).to_string(), "203.0.113.9");
/// ```
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &Trusted) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.contains(&peer) {
        return peer;
    }
    let mut last = peer;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(s) = value.to_str() else { return last };
        for hop in s.rsplit(',') {
            let Some(ip) = parse_hop(hop) else {
                return last;
            };
            if !trusted.contains(&ip) {
                return ip;
            }
            last = ip;
        }
    }
    last
}

/// One `X-Forwarded-For` entry: an IP, possibly with a port or in brackets.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let h = hop.trim();
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = h.parse::<std::net::SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    let inner = h.strip_prefix('[').and_then(|r| r.split(']').next())?;
    inner.parse().ok().map(canonical)
}

/// Values bpgate's forwarding headers need besides the request itself.
#[derive(Debug, Clone)]
pub struct ForwardingContext<'a> {
    /// Whether the TCP peer is a trusted proxy (its `X-Forwarded-Proto`, `-Host` and `-Port`
    /// are kept).
    pub peer_trusted: bool,
    /// The client, as [`client_ip`] computed it.
    pub client: IpAddr,
    /// The public port, as the client reached it.
    pub port: &'a HeaderValue,
    /// The base path for `X-Forwarded-Prefix`, if any.
    pub prefix: Option<&'a HeaderValue>,
    /// The connection's values from its previous request, reused when they still apply.
    pub cache: Option<&'a ForwardedCache>,
}

/// Writes `X-Forwarded-For`, `-Proto`, `-Host`, `-Port`, `-Prefix`, `X-Real-IP` and `Forwarded`.
///
/// The node is told one client, the one [`client_ip`] settled on, and never a chain: Botpress
/// (Express with `REVERSE_PROXY=loopback`) takes the rightmost untrusted `X-Forwarded-For` hop,
/// which in `<chain>, <load balancer>` would be the load balancer, and with `REVERSE_PROXY=true`
/// the leftmost, which the client writes. So `X-Forwarded-For`, `X-Real-IP` and the one
/// `Forwarded` element (RFC 7239 `for`, with the `host` and `proto` bpgate also sends as
/// `X-Forwarded-Host` and `-Proto`) all say the same thing. The chain as received stays in the
/// audit record (`forwarded_for`).
pub fn set_forwarding_headers(h: &mut HeaderMap, cx: &ForwardingContext<'_>) {
    let host = h.get(HOST).cloned();
    let cached = cx
        .cache
        .filter(|_| !cx.peer_trusted)
        .and_then(|c| c.0.load_full())
        .filter(|c| c.client == cx.client && c.host == host);

    let client_text = match &cached {
        Some(c) => c.client_text.clone(),
        None => ip_header(cx.client),
    };
    h.insert(X_FORWARDED_FOR.clone(), client_text.clone());
    h.insert(X_REAL_IP.clone(), client_text.clone());

    // A trusted proxy's view of the original scheme and host is kept; anyone else's replaced.
    let keep = |h: &HeaderMap, n: &HeaderName| cx.peer_trusted && h.get(n).is_some();
    if !keep(h, &X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
    }
    if !keep(h, &X_FORWARDED_HOST) {
        match &host {
            Some(v) => h.insert(X_FORWARDED_HOST.clone(), v.clone()),
            None => h.remove(&X_FORWARDED_HOST),
        };
    }
    if !keep(h, &X_FORWARDED_PORT) {
        h.insert(X_FORWARDED_PORT.clone(), cx.port.clone());
    }
    match cx.prefix {
        Some(p) => {
            h.insert(X_FORWARDED_PREFIX.clone(), p.clone());
        }
        None => {
            h.remove(&X_FORWARDED_PREFIX);
        }
    }

    if let Some(c) = &cached {
        match &c.forwarded {
            Some(v) => h.insert(FORWARDED, v.clone()),
            None => h.remove(FORWARDED),
        };
        return;
    }
    let mut fwd = String::with_capacity(64);
    fwd.push_str("for=");
    push_node(&mut fwd, cx.client);
    fn quotable(v: &HeaderValue) -> Option<&str> {
        v.to_str().ok().filter(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        })
    }
    if let Some(hv) = h.get(&X_FORWARDED_HOST).and_then(quotable) {
        fwd.push_str(";host=\"");
        fwd.push_str(hv);
        fwd.push('"');
    }
    // `proto` is a URI scheme (RFC 7239 5.4): letters, digits, `+`, `-`, `.`.
    let proto = h
        .get(&X_FORWARDED_PROTO)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|p| {
            p.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        })
        .unwrap_or("https");
    fwd.push_str(";proto=");
    fwd.push_str(proto);
    let forwarded = HeaderValue::from_str(&fwd).ok();
    match &forwarded {
        Some(v) => h.insert(FORWARDED, v.clone()),
        None => h.remove(FORWARDED),
    };
    if let (Some(cache), false) = (cx.cache, cx.peer_trusted) {
        cache.0.store(Some(std::sync::Arc::new(ForwardedValues {
            client: cx.client,
            // A copy: the request's value is a slice of the connection's read buffer, which the
            // cache would otherwise keep alive (8 KiB) for as long as the connection is open.
            host: host.and_then(|h| HeaderValue::from_bytes(h.as_bytes()).ok()),
            client_text,
            forwarded,
        })));
    }
}

/// The `X-Forwarded-For` chain as received (every field value, in order, joined by `, `), for
/// the audit record; `None` without one. Only the hops right of the rightmost untrusted one were
/// written by trusted proxies; the rest is whatever the client claimed.
pub fn received_chain(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(&X_FORWARDED_FOR).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(first.clone());
    };
    let mut chain = first.as_bytes().to_vec();
    for v in std::iter::once(second).chain(values) {
        chain.extend_from_slice(b", ");
        chain.extend_from_slice(v.as_bytes());
    }
    HeaderValue::from_bytes(&chain).ok()
}

fn push_node(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let _ = write!(out, "{v4}");
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "\"[{v6}]\"");
        }
    }
}

/// An IP as a header value (always valid: digits, dots, colons, hex).
pub fn ip_header(ip: IpAddr) -> HeaderValue {
    let mut buf = String::with_capacity(39);
    let _ = write!(buf, "{ip}");
    HeaderValue::from_str(&buf).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// A request id from a trusted peer is kept if it looks like one: 1-128 visible ASCII bytes.
pub fn acceptable_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

/// A new request id: 128 random bits as 32 hex digits.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    for i in 0..16 {
        out[i] = HEX[((a >> (60 - 4 * i)) & 0xf) as usize];
        out[16 + i] = HEX[((b >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &[&str]) -> Trusted {
        Trusted(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let ip = client_ip(
            "203.0.113.9".parse().unwrap(),
            &xff("1.2.3.4"),
            &trusted(&["10.0.0.0/8"]),
        );
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn trusted_peer_gives_rightmost_untrusted_hop() {
        let t = trusted(&["10.0.0.0/8"]);
        let ip = client_ip(
            "10.0.0.2".parse().unwrap(),
            &xff("6.6.6.6, 198.51.100.7, 10.0.0.9"),
            &t,
        );
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn garbage_in_the_chain_stops_the_walk() {
        let t = trusted(&["10.0.0.0/8"]);
        let ip = client_ip("10.0.0.2".parse().unwrap(), &xff("1.1.1.1, nonsense"), &t);
        assert_eq!(ip, "10.0.0.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn mapped_v6_peer_matches_v4_cidr() {
        let t = trusted(&["127.0.0.0/8"]);
        let ip = client_ip("::ffff:127.0.0.1".parse().unwrap(), &xff("192.0.2.1"), &t);
        assert_eq!(ip, "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn cached_host_does_not_keep_the_read_buffer_alive() {
        // hyper's header values are slices of the connection's read buffer.
        let buffer = bytes::Bytes::from(
            b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0u8, 8192))
                .collect::<Vec<u8>>(),
        );
        let host = HeaderValue::from_maybe_shared(buffer.slice(22..33)).unwrap();
        assert_eq!(host, "example.com");
        let mut h = HeaderMap::new();
        h.insert(HOST, host);
        let cache = ForwardedCache::default();
        let port = HeaderValue::from_static("443");
        let cx = ForwardingContext {
            peer_trusted: false,
            client: "203.0.113.9".parse().unwrap(),
            port: &port,
            prefix: None,
            cache: Some(&cache),
        };
        set_forwarding_headers(&mut h, &cx);
        drop(h);
        let cached = cache.0.load_full().expect("values cached");
        assert_eq!(cached.host.as_ref().unwrap(), "example.com");
        let at = cached.host.as_ref().unwrap().as_bytes().as_ptr() as usize;
        let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        assert!(
            !range.contains(&at),
            "the cached Host points into the read buffer"
        );
        // The buffer is only held by this test now: hyper could reuse or free it.
        assert!(buffer.is_unique());
    }

    #[test]
    fn request_ids_are_hex_and_distinct() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
