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

    /// The id is all 128 random bits, in order, as lower-case hex: none lost to a shift or mask
    /// (an id with fewer bits collides in the audit trail and can be guessed). fastrand's
    /// generator is per thread, so reseeding it here replays the two draws the id was made from.
    #[test]
    fn request_ids_carry_all_128_random_bits() {
        for seed in [1, 42, 0xdead_beef, u64::MAX] {
            fastrand::seed(seed);
            let id = new_request_id();
            fastrand::seed(seed);
            let (a, b) = (fastrand::u64(..), fastrand::u64(..));
            assert_eq!(id, format!("{a:016x}{b:016x}").as_str(), "seed {seed}");
        }
    }

    #[test]
    fn request_ids_from_a_trusted_peer_must_look_like_one() {
        let ok = |s: &str| acceptable_request_id(&HeaderValue::from_str(s).unwrap());
        assert!(ok("a"));
        assert!(ok("req-1f3a_9/ok:=~"));
        assert!(ok(&"x".repeat(128)));
        assert!(!ok(""));
        assert!(!ok(&"x".repeat(129)));
        assert!(!ok("two words"));
        assert!(!ok("a\tb"));
        assert!(!acceptable_request_id(
            &HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()
        ));
    }

    #[test]
    fn hops_with_ports_and_brackets_are_read() {
        let t = trusted(&["10.0.0.0/8"]);
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        for (chain, want) in [
            ("198.51.100.7:5555", "198.51.100.7"),
            ("[2001:db8::7]:443", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            (" 2001:db8::7 ", "2001:db8::7"),
            ("::ffff:198.51.100.7", "198.51.100.7"),
            ("6.6.6.6, 198.51.100.7:1, 10.0.0.9:2", "198.51.100.7"),
        ] {
            assert_eq!(
                client_ip(peer, &xff(chain), &t).to_string(),
                want,
                "{chain}"
            );
        }
    }

    /// Several `X-Forwarded-For` lines are one list, walked from the last line's last hop.
    #[test]
    fn the_walk_crosses_header_lines_right_to_left() {
        let t = trusted(&["10.0.0.0/8"]);
        let mut h = xff("6.6.6.6, 198.51.100.7");
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.8"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.9"));
        let ip = client_ip("10.0.0.2".parse().unwrap(), &h, &t);
        assert_eq!(ip.to_string(), "198.51.100.7");
        // Every hop trusted: the leftmost one is the best there is.
        let ip = client_ip("10.0.0.2".parse().unwrap(), &xff("10.0.0.7, 10.0.0.8"), &t);
        assert_eq!(ip.to_string(), "10.0.0.7");
        // No header at all: the trusted peer itself.
        let ip = client_ip("10.0.0.2".parse().unwrap(), &HeaderMap::new(), &t);
        assert_eq!(ip.to_string(), "10.0.0.2");
    }

    #[test]
    fn received_chain_is_every_line_joined() {
        assert_eq!(received_chain(&HeaderMap::new()), None);
        assert_eq!(
            received_chain(&xff("1.1.1.1, 2.2.2.2")).unwrap(),
            "1.1.1.1, 2.2.2.2"
        );
        let mut h = xff("1.1.1.1");
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        h.append(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("3.3.3.3, 4.4.4.4"),
        );
        assert_eq!(
            received_chain(&h).unwrap(),
            "1.1.1.1, 2.2.2.2, 3.3.3.3, 4.4.4.4"
        );
    }

    /// Headers as a client sent them, with every forwarding header forged.
    fn forged(host: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(host) = host {
            h.insert(HOST, HeaderValue::from_str(host).unwrap());
        }
        for (k, v) in [
            (&X_FORWARDED_FOR, "6.6.6.6"),
            (&X_REAL_IP, "6.6.6.6"),
            (&X_FORWARDED_PROTO, "http"),
            (&X_FORWARDED_HOST, "evil.example"),
            (&X_FORWARDED_PORT, "80"),
            (&X_FORWARDED_PREFIX, "/evil"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        h.insert(
            FORWARDED,
            HeaderValue::from_static("for=6.6.6.6;proto=http"),
        );
        h
    }

    fn set(h: &mut HeaderMap, trusted: bool, client: &str, cache: Option<&ForwardedCache>) {
        set_with_prefix(h, trusted, client, None, cache)
    }

    fn set_with_prefix(
        h: &mut HeaderMap,
        trusted: bool,
        client: &str,
        prefix: Option<&HeaderValue>,
        cache: Option<&ForwardedCache>,
    ) {
        let port = HeaderValue::from_static("8443");
        set_forwarding_headers(
            h,
            &ForwardingContext {
                peer_trusted: trusted,
                client: client.parse().unwrap(),
                port: &port,
                prefix,
                cache,
            },
        );
    }

    fn get<'h>(h: &'h HeaderMap, n: &HeaderName) -> Option<&'h str> {
        h.get(n).map(|v| v.to_str().unwrap())
    }

    /// What Botpress is told about a client that is not a trusted proxy: bpgate's view only,
    /// whatever the client wrote in the forwarding headers.
    #[test]
    fn an_untrusted_peer_cannot_forge_any_forwarding_header() {
        let prefix = HeaderValue::from_static("/botpress");
        for cache in [None, Some(&ForwardedCache::default())] {
            let mut h = forged(Some("bot.example.com"));
            set_with_prefix(&mut h, false, "203.0.113.9", Some(&prefix), cache);
            assert_eq!(get(&h, &X_FORWARDED_FOR), Some("203.0.113.9"));
            assert_eq!(get(&h, &X_REAL_IP), Some("203.0.113.9"));
            assert_eq!(get(&h, &X_FORWARDED_PROTO), Some("https"));
            assert_eq!(get(&h, &X_FORWARDED_HOST), Some("bot.example.com"));
            assert_eq!(get(&h, &X_FORWARDED_PORT), Some("8443"));
            assert_eq!(get(&h, &X_FORWARDED_PREFIX), Some("/botpress"));
            assert_eq!(
                get(&h, &FORWARDED),
                Some("for=203.0.113.9;host=\"bot.example.com\";proto=https")
            );
            for n in [&X_FORWARDED_FOR, &X_FORWARDED_HOST, &FORWARDED] {
                assert_eq!(h.get_all(n).iter().count(), 1, "{n}");
            }
            // No base path: a forged prefix is removed, not passed on. Without a `Host` (an
            // HTTP/2 request with `:authority` only), a forged `X-Forwarded-Host` is removed too.
            let mut h = forged(None);
            set(&mut h, false, "203.0.113.9", cache);
            assert_eq!(get(&h, &X_FORWARDED_PREFIX), None);
            assert_eq!(get(&h, &X_FORWARDED_HOST), None);
            assert_eq!(get(&h, &FORWARDED), Some("for=203.0.113.9;proto=https"));
        }
    }

    /// A trusted proxy's scheme, host and port are what the client used, so they are kept, and
    /// `Forwarded` says the same; the client is the one `client_ip` settled on.
    #[test]
    fn a_trusted_peer_keeps_its_scheme_host_and_port() {
        let mut h = forged(Some("internal:8443"));
        set(&mut h, true, "198.51.100.7", None);
        assert_eq!(get(&h, &X_FORWARDED_FOR), Some("198.51.100.7"));
        assert_eq!(get(&h, &X_REAL_IP), Some("198.51.100.7"));
        assert_eq!(get(&h, &X_FORWARDED_PROTO), Some("http"));
        assert_eq!(get(&h, &X_FORWARDED_HOST), Some("evil.example"));
        assert_eq!(get(&h, &X_FORWARDED_PORT), Some("80"));
        assert_eq!(get(&h, &X_FORWARDED_PREFIX), None);
        assert_eq!(
            get(&h, &FORWARDED),
            Some("for=198.51.100.7;host=\"evil.example\";proto=http")
        );
        // A trusted proxy that sent none of them: bpgate's own view.
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("bot.example.com"));
        set(&mut h, true, "198.51.100.7", None);
        assert_eq!(get(&h, &X_FORWARDED_PROTO), Some("https"));
        assert_eq!(get(&h, &X_FORWARDED_HOST), Some("bot.example.com"));
        assert_eq!(get(&h, &X_FORWARDED_PORT), Some("8443"));
    }

    #[test]
    fn an_ipv6_client_is_quoted_in_forwarded() {
        let mut h = forged(Some("bot.example.com"));
        set(&mut h, false, "2001:db8::9", None);
        assert_eq!(get(&h, &X_FORWARDED_FOR), Some("2001:db8::9"));
        assert_eq!(
            get(&h, &FORWARDED),
            Some("for=\"[2001:db8::9]\";host=\"bot.example.com\";proto=https")
        );
    }

    /// `Forwarded` is a structured header: a host a trusted proxy passed on that cannot be a
    /// quoted-string is left out rather than written broken, and a proto that is not a URI
    /// scheme is written as `https`.
    #[test]
    fn forwarded_host_and_proto_are_only_written_when_well_formed() {
        let forwarded_for = |xfh: &[u8], xfp: &str| {
            let mut h = HeaderMap::new();
            h.insert(&X_FORWARDED_HOST, HeaderValue::from_bytes(xfh).unwrap());
            h.insert(&X_FORWARDED_PROTO, HeaderValue::from_str(xfp).unwrap());
            set(&mut h, true, "198.51.100.7", None);
            get(&h, &FORWARDED).unwrap().to_string()
        };
        for bad in [&b"a\"b"[..], b"a\\b", b"a b", b"", b"caf\xc3\xa9"] {
            assert_eq!(
                forwarded_for(bad, "http"),
                "for=198.51.100.7;proto=http",
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            forwarded_for(b"bot.example.com:8443", "http"),
            "for=198.51.100.7;host=\"bot.example.com:8443\";proto=http"
        );
        for (proto, want) in [
            ("https", "https"),
            ("http", "http"),
            (" wss ", "wss"),
            ("coap+tcp", "coap+tcp"),
            ("1http", "https"),
            ("ht tp", "https"),
            ("http;x", "https"),
            ("", "https"),
        ] {
            assert_eq!(
                forwarded_for(b"h", proto),
                format!("for=198.51.100.7;host=\"h\";proto={want}"),
                "{proto:?}"
            );
        }
    }

    /// The per-connection memo is only used for the values it was computed for: a keep-alive
    /// connection may change `Host` between requests, and a reload of
    /// `forwarding.trusted_proxies` may make its peer trusted (or not) between two requests.
    #[test]
    fn the_connection_memo_never_answers_for_another_host_client_or_trust() {
        let cache = ForwardedCache::default();
        let mut h = forged(Some("a.example.com"));
        set(&mut h, false, "203.0.113.9", Some(&cache));
        assert_eq!(
            get(&h, &FORWARDED),
            Some("for=203.0.113.9;host=\"a.example.com\";proto=https")
        );
        // Same connection, same values: the memo answers, identically.
        let mut h = forged(Some("a.example.com"));
        set(&mut h, false, "203.0.113.9", Some(&cache));
        assert_eq!(
            get(&h, &FORWARDED),
            Some("for=203.0.113.9;host=\"a.example.com\";proto=https")
        );
        // Another Host on the same connection.
        let mut h = forged(Some("b.example.com"));
        set(&mut h, false, "203.0.113.9", Some(&cache));
        assert_eq!(get(&h, &X_FORWARDED_HOST), Some("b.example.com"));
        assert_eq!(
            get(&h, &FORWARDED),
            Some("for=203.0.113.9;host=\"b.example.com\";proto=https")
        );
        // Another client.
        let mut h = forged(Some("b.example.com"));
        set(&mut h, false, "203.0.113.10", Some(&cache));
        assert_eq!(get(&h, &X_FORWARDED_FOR), Some("203.0.113.10"));
        assert_eq!(get(&h, &X_REAL_IP), Some("203.0.113.10"));
        assert_eq!(
            get(&h, &FORWARDED),
            Some("for=203.0.113.10;host=\"b.example.com\";proto=https")
        );
        // The peer became a trusted proxy (reload): its own scheme is believed now, not the
        // memo of what bpgate said while it was untrusted.
        let mut h = forged(Some("b.example.com"));
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.10"));
        set(&mut h, true, "203.0.113.10", Some(&cache));
        assert_eq!(get(&h, &X_FORWARDED_PROTO), Some("http"));
        assert_eq!(
            get(&h, &FORWARDED),
            Some("for=203.0.113.10;host=\"evil.example\";proto=http")
        );
    }
}
