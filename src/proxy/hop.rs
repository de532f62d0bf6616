//! Hop-by-hop headers: meaningful for one connection only, so never forwarded; and request
//! headers a client could use to lie to Botpress or its modules about who it is or what it asked.

use http::header::{HeaderMap, HeaderValue, CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
use http::HeaderName;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Removes `Connection` and every header it names, `Keep-Alive`, `Proxy-*`, `TE`,
/// `Transfer-Encoding` and `Upgrade`. For an upgrade, `Upgrade` survives and `Connection`
/// becomes `upgrade`.
///
/// `Trailer` is kept on purpose: RFC 9110 made it end-to-end, and hyper only emits trailers on a
/// chunked HTTP/1.1 message that declares them in `Trailer`, so removing it would drop them.
pub fn strip(h: &mut HeaderMap, upgrade: bool) {
    strip_inner(h, upgrade, false);
}

/// Headers that claim a client address or a rewritten URL. bpgate states the client's address in
/// `X-Forwarded-For`, `X-Real-IP` and `Forwarded` (from its own view, or a trusted proxy's);
/// these others are what frameworks and modules look at when those are absent or in their own
/// order of preference (Express `request-ip`, IIS/Symfony URL rewriting), so a client could pose
/// as another address or reach a path the base-path and CORS checks never saw. No peer sets them
/// legitimately for Botpress, trusted or not: removed from every request.
pub const SPOOFABLE: [&str; 8] = [
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "fastly-client-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-forwarded-server",
];

fn spoofable(name: &str) -> bool {
    SPOOFABLE.contains(&name)
}

/// [`strip`] for a request on its way to a node: also removes the [`SPOOFABLE`] headers, in the
/// same pass over the names.
pub fn strip_request(h: &mut HeaderMap, upgrade: bool) {
    strip_inner(h, upgrade, true);
}

fn strip_inner(h: &mut HeaderMap, upgrade: bool, request: bool) {
    // One pass over the names finds what is present; most messages carry only `Connection`
    // (often just `keep-alive`), so most of the removals below never run.
    let (mut conn, mut fixed, mut proxy, mut spoof) = (false, false, false, false);
    for k in h.keys() {
        if k == CONNECTION {
            conn = true;
        } else if k == TE || k == TRANSFER_ENCODING || k == UPGRADE || k == KEEP_ALIVE {
            fixed = true;
        } else if k.as_str().starts_with("proxy-") {
            proxy = true;
        } else if request && spoofable(k.as_str()) {
            spoof = true;
        }
    }
    if spoof {
        for n in SPOOFABLE {
            h.remove(n);
        }
    }
    if conn {
        let named: Vec<HeaderName> = h
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .map(str::trim)
            // `close` and `keep-alive` name no header worth a lookup (`Keep-Alive` goes below).
            .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| !(upgrade && n == UPGRADE) && n != CONNECTION)
            .collect();
        for n in named {
            h.remove(&n);
        }
        h.remove(CONNECTION);
    }
    if fixed {
        h.remove(&KEEP_ALIVE);
        h.remove(TE);
        h.remove(TRANSFER_ENCODING);
        if !upgrade {
            h.remove(UPGRADE);
        }
    }
    if upgrade {
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if proxy {
        let names: Vec<HeaderName> = h
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for n in names {
            h.remove(&n);
        }
    }
}

/// Whether a request asks to switch protocols (HTTP/1.1 `Connection: upgrade` + `Upgrade`).
pub fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(UPGRADE)
        && h.get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_named_and_fixed_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn requests_lose_spoofable_headers_responses_keep_them() {
        let mut h = HeaderMap::new();
        for n in SPOOFABLE {
            h.insert(
                HeaderName::from_static(n),
                HeaderValue::from_static("6.6.6.6"),
            );
            assert!(spoofable(n));
        }
        h.insert("x-keep", HeaderValue::from_static("1"));
        let mut resp = h.clone();
        strip_request(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        strip(&mut resp, false);
        assert_eq!(resp.len(), SPOOFABLE.len() + 1);
    }

    #[test]
    fn upgrade_keeps_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
        strip(&mut h, true);
        assert_eq!(h.get(UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(CONNECTION).unwrap(), "upgrade");
    }
}
