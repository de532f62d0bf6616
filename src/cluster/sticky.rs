//! The sticky cookie: which node a browser is pinned to, sealed so it can be neither forged nor
//! replayed forever, and readable by any bpgate replica that shares the secret.
//!
//! Value (base64url, no padding) of 29 bytes:
//! `version (1) ‖ node id (8) ‖ issued-at, Unix seconds (4) ‖ tag (16)`.
//! The node id is `HMAC-SHA256(secret, "node:" ‖ name)[..8]`: derived from the node's *name*, so
//! reordering or adding nodes moves no session, and keyed, so it reveals nothing. The tag is
//! `HMAC-SHA256(secret, "bpgate-sticky-v1" ‖ cookie name ‖ path ‖ first 13 bytes)[..16]`, which
//! binds the value to this cookie and path; the issue time inside the tag bounds its life
//! whatever `Max-Age` the browser honours.

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

const VERSION: u8 = 1;
const RAW_LEN: usize = 29;

pub type NodeId = [u8; 8];

/// One HMAC key with its derived values.
pub struct StickyKey {
    key: hmac::Key,
}

impl StickyKey {
    pub fn new(secret: &[u8]) -> Self {
        StickyKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    pub fn node_id(&self, name: &str) -> NodeId {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"node:");
        ctx.update(name.as_bytes());
        let tag = ctx.sign();
        let mut id = [0u8; 8];
        id.copy_from_slice(&tag.as_ref()[..8]);
        id
    }

    fn tag(&self, binding: &[u8], body: &[u8]) -> [u8; 16] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"bpgate-sticky-v1");
        ctx.update(binding);
        ctx.update(body);
        let t = ctx.sign();
        let mut out = [0u8; 16];
        out.copy_from_slice(&t.as_ref()[..16]);
        out
    }
}

/// Seals and opens cookie values. `binding` is the cookie name and path.
pub struct StickyCodec {
    current: StickyKey,
    previous: Option<StickyKey>,
    binding: Vec<u8>,
    max_age_secs: u64,
}

/// A cookie that opened: which key, which node, how old.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub node: NodeId,
    /// Sealed with the previous secret (re-issue it under the current one).
    pub previous_key: bool,
    pub age_secs: u64,
}

/// Why a cookie value did not open. All are treated as "no cookie".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    Garbled,
    Forged,
    Expired,
}

impl StickyCodec {
    pub fn new(
        current: &[u8],
        previous: Option<&[u8]>,
        cookie_name: &str,
        path: &str,
        max_age_secs: u64,
    ) -> Self {
        let mut binding = Vec::with_capacity(cookie_name.len() + path.len() + 1);
        binding.extend_from_slice(cookie_name.as_bytes());
        binding.push(0);
        binding.extend_from_slice(path.as_bytes());
        StickyCodec {
            current: StickyKey::new(current),
            previous: previous.map(StickyKey::new),
            binding,
            max_age_secs,
        }
    }

    pub fn current(&self) -> &StickyKey {
        &self.current
    }

    pub fn previous(&self) -> Option<&StickyKey> {
        self.previous.as_ref()
    }

    pub fn max_age_secs(&self) -> u64 {
        self.max_age_secs
    }

    /// The cookie value pinning `node`, issued at `now` (Unix seconds).
    pub fn seal(&self, node: NodeId, now: u64) -> String {
        let mut raw = [0u8; RAW_LEN];
        raw[0] = VERSION;
        raw[1..9].copy_from_slice(&node);
        raw[9..13].copy_from_slice(&(now as u32).to_be_bytes());
        let tag = self.current.tag(&self.binding, &raw[..13]);
        raw[13..].copy_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Opens a cookie value; constant-time tag comparison.
    pub fn open(&self, value: &str, now: u64) -> Result<Opened, Rejected> {
        if value.len() != 39 {
            return Err(Rejected::Garbled);
        }
        let mut raw = [0u8; RAW_LEN];
        match URL_SAFE_NO_PAD.decode_slice(value.as_bytes(), &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return Err(Rejected::Garbled),
        }
        if raw[0] != VERSION {
            return Err(Rejected::Garbled);
        }
        let body = &raw[..13];
        let given = &raw[13..];
        let keys =
            std::iter::once((&self.current, false)).chain(self.previous.iter().map(|k| (k, true)));
        for (key, previous_key) in keys {
            let expected = key.tag(&self.binding, body);
            if aws_lc_rs::constant_time::verify_slices_are_equal(&expected, given).is_ok() {
                let issued = u32::from_be_bytes([raw[9], raw[10], raw[11], raw[12]]) as u64;
                // A little tolerance for replicas whose clocks differ.
                if issued > now + 300 || now.saturating_sub(issued) > self.max_age_secs {
                    return Err(Rejected::Expired);
                }
                let mut node = [0u8; 8];
                node.copy_from_slice(&raw[1..9]);
                return Ok(Opened {
                    node,
                    previous_key,
                    age_secs: now.saturating_sub(issued),
                });
            }
        }
        Err(Rejected::Forged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> StickyCodec {
        StickyCodec::new(b"0123456789abcdef0123", None, "bpgate_node", "/", 86_400)
    }

    #[test]
    fn seal_then_open() {
        let c = codec();
        let id = c.current().node_id("node-1");
        let v = c.seal(id, 1_000_000);
        let o = c.open(&v, 1_000_100).unwrap();
        assert_eq!(o.node, id);
        assert_eq!(o.age_secs, 100);
        assert!(!o.previous_key);
    }

    #[test]
    fn tampering_is_forged_and_garbage_is_garbled() {
        let c = codec();
        let v = c.seal(c.current().node_id("n"), 1_000_000);
        let mut raw = URL_SAFE_NO_PAD.decode(&v).unwrap();
        raw[3] ^= 1;
        assert_eq!(
            c.open(&URL_SAFE_NO_PAD.encode(raw), 1_000_000),
            Err(Rejected::Forged)
        );
        assert_eq!(c.open("hello", 1), Err(Rejected::Garbled));
        assert_eq!(c.open(&"!".repeat(39), 1), Err(Rejected::Garbled));
    }

    #[test]
    fn old_cookies_expire_inside_the_value() {
        let c = codec();
        let v = c.seal(c.current().node_id("n"), 1_000_000);
        assert_eq!(c.open(&v, 1_000_000 + 86_401), Err(Rejected::Expired));
    }

    #[test]
    fn foreign_secret_is_forged_previous_secret_opens() {
        let other = StickyCodec::new(b"another secret 1234567", None, "bpgate_node", "/", 86_400);
        let v = other.seal(other.current().node_id("n"), 1_000_000);
        assert_eq!(codec().open(&v, 1_000_000), Err(Rejected::Forged));
        let rotated = StickyCodec::new(
            b"0123456789abcdef0123",
            Some(b"another secret 1234567"),
            "bpgate_node",
            "/",
            86_400,
        );
        let o = rotated.open(&v, 1_000_000).unwrap();
        assert!(o.previous_key);
    }

    const GOLDEN_SECRET: &[u8] = b"bpgate-golden-secret-2024-0123456789";
    const GOLDEN_TIME: u64 = 1_700_000_000;

    /// Golden vectors: cookies already in browsers must keep opening after an upgrade, on every
    /// replica, whatever version issued them. These literals were computed once (and checked
    /// against an independent implementation of the format in the module docs); if this test
    /// fails, the change breaks every live session on a rolling upgrade: bump `VERSION` and keep
    /// opening version 1 instead of editing the literals.
    #[test]
    fn golden_vectors_never_change() {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let c = StickyCodec::new(GOLDEN_SECRET, None, "bpgate_node", "/", 86_400);
        for (name, id, cookie) in [
            (
                "node-1",
                "5a7a6e3cb4e01a36",
                "AVp6bjy04Bo2ZVPxAN0gRlucHvem37UjvqA4wQE",
            ),
            (
                "botpress-1:3000",
                "3a068549178991e1",
                "AToGhUkXiZHhZVPxAMl3IOVLw80GdYUMpqBCznU",
            ),
        ] {
            let node = c.current().node_id(name);
            assert_eq!(hex(&node), id, "node id of {name}");
            assert_eq!(c.seal(node, GOLDEN_TIME), cookie, "cookie for {name}");
            let o = c.open(cookie, GOLDEN_TIME + 60).unwrap();
            assert_eq!((o.node, o.age_secs, o.previous_key), (node, 60, false));
        }
        // Bound to the path (the base path): another value under /botpress.
        let b = StickyCodec::new(GOLDEN_SECRET, None, "bpgate_node", "/botpress", 86_400);
        assert_eq!(
            b.seal(b.current().node_id("node-1"), GOLDEN_TIME),
            "AVp6bjy04Bo2ZVPxAFYctD9fDoFwG-kQDAJjN50"
        );
        // The layout itself: version, node id, issue time, then the tag.
        let raw = URL_SAFE_NO_PAD
            .decode("AVp6bjy04Bo2ZVPxAN0gRlucHvem37UjvqA4wQE")
            .unwrap();
        assert_eq!(raw[0], 1);
        assert_eq!(hex(&raw[1..9]), "5a7a6e3cb4e01a36");
        assert_eq!(
            u32::from_be_bytes(raw[9..13].try_into().unwrap()) as u64,
            GOLDEN_TIME
        );
    }

    /// A rotation: the old secret moves to `previous_secret`; its cookies still open (and are
    /// flagged for re-issue), new cookies are sealed with the new one only.
    #[test]
    fn golden_cookie_opens_under_previous_secret_after_rotation() {
        let rotated = StickyCodec::new(
            b"the-next-secret-0123456789",
            Some(GOLDEN_SECRET),
            "bpgate_node",
            "/",
            86_400,
        );
        let o = rotated
            .open("AVp6bjy04Bo2ZVPxAN0gRlucHvem37UjvqA4wQE", GOLDEN_TIME + 10)
            .unwrap();
        assert!(o.previous_key);
        assert_eq!(o.node, rotated.previous().unwrap().node_id("node-1"));
        let fresh = rotated.seal(rotated.current().node_id("node-1"), GOLDEN_TIME);
        let old_only = StickyCodec::new(GOLDEN_SECRET, None, "bpgate_node", "/", 86_400);
        assert_eq!(old_only.open(&fresh, GOLDEN_TIME), Err(Rejected::Forged));
    }

    /// Replicas' clocks differ: a cookie another replica issued up to 300 s "in the future"
    /// opens; further ahead it is refused as expired (a value minted far ahead would outlive
    /// `max_age`). The last second of `max_age` still opens.
    #[test]
    fn clock_skew_is_tolerated_up_to_300_seconds() {
        let c = codec();
        let id = c.current().node_id("n");
        let o = c.open(&c.seal(id, 1_000_300), 1_000_000).unwrap();
        assert_eq!((o.node, o.age_secs), (id, 0));
        assert_eq!(
            c.open(&c.seal(id, 1_000_301), 1_000_000),
            Err(Rejected::Expired)
        );
        assert_eq!(
            c.open(&c.seal(id, 1_000_000), 1_000_000 + 86_400)
                .unwrap()
                .age_secs,
            86_400
        );
    }

    #[test]
    fn bound_to_path() {
        let a = StickyCodec::new(b"0123456789abcdef0123", None, "bpgate_node", "/a", 86_400);
        let b = StickyCodec::new(b"0123456789abcdef0123", None, "bpgate_node", "/b", 86_400);
        let v = a.seal(a.current().node_id("n"), 5);
        assert_eq!(b.open(&v, 5), Err(Rejected::Forged));
    }
}
