//! engine.io session ids (`sid`) learned from handshake answers, so clients that keep no cookie
//! (a webchat iframe in a browser that blocks third-party cookies, server-side and mobile
//! socket.io clients) still reach the node that holds their session.
//!
//! A polling handshake (`GET …/socket.io/?EIO=4&transport=polling`, no `sid`) is answered by the
//! node with an open packet naming the session: `0{"sid":"…",…}` (EIO 4), `96:0{"sid":…}2:40`
//! (EIO 3 text), the same with binary length framing (EIO 3, XHR2), or wrapped in
//! `___eio[N]("…");` (JSONP). The route layer lets the first bytes of that answer stream past a
//! [`Learner`] (nothing is held back) and records `sid → node`; later requests carrying
//! `sid=` go to that node. A websocket-first handshake needs nothing: its session lives on the
//! one tunnel that carries it.
//!
//! The map is bounded: entries not seen for `sticky.sid_map_idle_timeout` are dropped (on lookup
//! and by a sweep that runs from handshakes), and when `sticky.sid_map_max_entries` is reached
//! the least recently seen eighth goes. It is per process: another bpgate replica does not know
//! the sids this one learned (the cookie, or `fallback = "client-ip"`, covers replicas).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use serde::Deserialize;

use crate::exchange::BodyObserver;

/// The most of a handshake answer looked at: an open packet is ~120 bytes.
const PEEK_LIMIT: usize = 512;
/// Longer ids are not learned (engine.io's are 20 characters).
const MAX_SID_LEN: usize = 128;

/// Counters for `/metrics` (`bpgate_sticky_sid_*`).
#[derive(Debug, Default)]
pub struct SidStats {
    /// Requests carrying a `sid` whose node was found (and is up).
    pub hits: AtomicU64,
    /// Requests carrying a `sid` the map does not know (or whose node is down or gone).
    pub misses: AtomicU64,
    pub learned: AtomicU64,
    /// Handshake answers whose session id could not be read (unknown framing, compressed).
    pub unparsed: AtomicU64,
    pub evicted_idle: AtomicU64,
    pub evicted_capacity: AtomicU64,
    /// The node answered 400 to a session it was routed to: the session is gone there.
    pub evicted_unknown: AtomicU64,
}

struct Entry {
    node: Arc<str>,
    /// Unix seconds.
    last_seen: AtomicU64,
}

/// `sid → node`, bounded in size and idle age.
pub struct SidMap {
    map: DashMap<Box<str>, Entry>,
    max_entries: usize,
    idle_secs: u64,
    /// When the next sweep of idle entries is due (Unix seconds).
    next_sweep: AtomicU64,
    pub stats: SidStats,
}

impl SidMap {
    pub fn new(max_entries: usize, idle_secs: u64) -> Self {
        SidMap {
            map: DashMap::new(),
            max_entries,
            idle_secs: idle_secs.max(1),
            next_sweep: AtomicU64::new(0),
            stats: SidStats::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.max_entries > 0
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The node holding session `sid`, refreshing its age. Counts no hit or miss: the caller
    /// knows whether the node is usable.
    pub fn lookup(&self, sid: &str, now: u64) -> Option<Arc<str>> {
        let expired = {
            let e = self.map.get(sid)?;
            if now.saturating_sub(e.last_seen.load(Ordering::Relaxed)) > self.idle_secs {
                true
            } else {
                e.last_seen.store(now, Ordering::Relaxed);
                return Some(e.node.clone());
            }
        };
        if expired
            && self
                .map
                .remove_if(sid, |_, e| {
                    now.saturating_sub(e.last_seen.load(Ordering::Relaxed)) > self.idle_secs
                })
                .is_some()
        {
            self.stats.evicted_idle.fetch_add(1, Ordering::Relaxed);
        }
        None
    }

    /// Records that `node` holds session `sid`.
    pub fn learn(&self, sid: &str, node: Arc<str>, now: u64) {
        if !self.enabled() {
            return;
        }
        let due = self.next_sweep.load(Ordering::Relaxed);
        if now >= due
            && self
                .next_sweep
                .compare_exchange(
                    due,
                    now + (self.idle_secs / 4).max(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.sweep(now);
        }
        if self.map.len() >= self.max_entries && !self.map.contains_key(sid) {
            self.sweep(now);
            if self.map.len() >= self.max_entries {
                self.evict_oldest();
            }
        }
        self.map.insert(
            sid.into(),
            Entry {
                node,
                last_seen: AtomicU64::new(now),
            },
        );
        self.stats.learned.fetch_add(1, Ordering::Relaxed);
    }

    /// `node` said it does not know `sid` (anymore).
    pub fn forget(&self, sid: &str, node: &str) {
        if self.map.remove_if(sid, |_, e| &*e.node == node).is_some() {
            self.stats.evicted_unknown.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops entries idle longer than the timeout.
    fn sweep(&self, now: u64) {
        let before = self.map.len();
        self.map.retain(|_, e| {
            now.saturating_sub(e.last_seen.load(Ordering::Relaxed)) <= self.idle_secs
        });
        let gone = before.saturating_sub(self.map.len());
        self.stats
            .evicted_idle
            .fetch_add(gone as u64, Ordering::Relaxed);
    }

    /// The map is full of live sessions: drop the least recently seen eighth (at least one), so
    /// this cost is paid once per `max_entries / 8` handshakes, not on each.
    fn evict_oldest(&self) {
        let mut ages: Vec<u64> = self
            .map
            .iter()
            .map(|e| e.last_seen.load(Ordering::Relaxed))
            .collect();
        if ages.is_empty() {
            return;
        }
        let k = (ages.len() / 8).max(1) - 1;
        let (_, cut, _) = ages.select_nth_unstable(k);
        let cut = *cut;
        let before = self.map.len();
        self.map
            .retain(|_, e| e.last_seen.load(Ordering::Relaxed) > cut);
        let gone = before.saturating_sub(self.map.len());
        self.stats
            .evicted_capacity
            .fetch_add(gone as u64, Ordering::Relaxed);
    }
}

/// What a request is to engine.io, by its path and query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineIo<'a> {
    /// Not a socket.io request.
    No,
    /// A polling handshake: its answer names the new session.
    Handshake,
    /// A request of session `sid`.
    Session(&'a str),
}

/// Classifies a request. Botpress serves socket.io at `<base path>/socket.io/`.
pub fn classify<'a>(path: &str, query: Option<&'a str>) -> EngineIo<'a> {
    let p = path.strip_suffix('/').unwrap_or(path);
    if !p.ends_with("/socket.io") {
        return EngineIo::No;
    }
    let Some(q) = query else {
        return EngineIo::No;
    };
    let mut polling = false;
    for kv in q.split('&') {
        match kv.split_once('=') {
            Some(("sid", v)) if !v.is_empty() => return EngineIo::Session(v),
            Some(("transport", "polling")) => polling = true,
            _ => {}
        }
    }
    if polling {
        EngineIo::Handshake
    } else {
        EngineIo::No
    }
}

/// Watches the first bytes of a handshake answer and records the session it opens.
pub struct Learner {
    map: Arc<SidMap>,
    node: Arc<str>,
    /// The bytes seen so far, when the first chunk did not hold the whole open packet.
    buf: Vec<u8>,
    seen: bool,
    concluded: bool,
}

impl Learner {
    pub fn new(map: Arc<SidMap>, node: Arc<str>) -> Self {
        Learner {
            map,
            node,
            buf: Vec::new(),
            seen: false,
            concluded: false,
        }
    }

    fn done(&mut self, r: Handshake) -> bool {
        match r {
            Handshake::Sid(sid) => {
                self.map.learn(&sid, self.node.clone(), super::unix_now());
            }
            Handshake::More => return false,
            Handshake::Invalid => {
                self.map.stats.unparsed.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.concluded = true;
        self.buf = Vec::new();
        true
    }
}

impl BodyObserver for Learner {
    fn data(&mut self, chunk: &[u8]) -> bool {
        if self.concluded {
            return true;
        }
        self.seen |= !chunk.is_empty();
        // Usually the whole open packet is in the first chunk: parse it in place.
        if self.buf.is_empty() {
            match parse_handshake(chunk) {
                Handshake::More if chunk.len() < PEEK_LIMIT => {}
                Handshake::More => return self.done(Handshake::Invalid),
                r => return self.done(r),
            }
        }
        let take = chunk.len().min(PEEK_LIMIT - self.buf.len());
        self.buf.extend_from_slice(&chunk[..take]);
        match parse_handshake(&self.buf) {
            Handshake::More if self.buf.len() >= PEEK_LIMIT => self.done(Handshake::Invalid),
            r => self.done(r),
        }
    }
}

impl Drop for Learner {
    fn drop(&mut self) {
        // The answer ended (or was dropped) before a whole open packet passed.
        if self.seen && !self.concluded {
            self.map.stats.unparsed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the first bytes of a handshake answer say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    Sid(String),
    /// Not enough bytes yet.
    More,
    Invalid,
}

/// Reads the session id from the start of an engine.io polling payload, in every framing
/// engine.io's server writes (see the module docs).
pub fn parse_handshake(b: &[u8]) -> Handshake {
    const JSONP: &[u8] = b"___eio[";
    match b {
        [] => Handshake::More,
        // EIO 4: packets separated by 0x1e; the open packet is `0` + JSON.
        [b'0', rest @ ..] => open_packet_json(rest),
        // EIO 3 text: `<length>:<packet>`.
        [b'1'..=b'9', ..] => {
            let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
            match &b[digits..] {
                [] if digits < 8 => Handshake::More,
                [b':', rest @ ..] => open_packet(rest),
                _ => Handshake::Invalid,
            }
        }
        // EIO 3 binary: 0x00 (a string packet), the length as one byte per decimal digit, 0xff.
        [0, rest @ ..] => {
            let digits = rest.iter().take_while(|c| **c <= 9).count();
            match &rest[digits..] {
                [] if digits < 8 => Handshake::More,
                [0xff, packet @ ..] if digits > 0 => open_packet(packet),
                _ => Handshake::Invalid,
            }
        }
        _ if b.starts_with(JSONP) || JSONP.starts_with(b) => jsonp(b),
        _ => Handshake::Invalid,
    }
}

fn open_packet(p: &[u8]) -> Handshake {
    match p {
        [] => Handshake::More,
        [b'0', json @ ..] => open_packet_json(json),
        _ => Handshake::Invalid,
    }
}

/// The open packet's JSON object, which delimits itself: what follows it does not matter.
fn open_packet_json(json: &[u8]) -> Handshake {
    #[derive(Deserialize)]
    struct Open {
        sid: String,
    }
    if json.is_empty() {
        return Handshake::More;
    }
    if json[0] != b'{' {
        return Handshake::Invalid;
    }
    match serde_json::Deserializer::from_slice(json)
        .into_iter::<Open>()
        .next()
    {
        Some(Ok(o)) if valid_sid(&o.sid) => Handshake::Sid(o.sid),
        Some(Err(e)) if e.is_eof() => Handshake::More,
        _ => Handshake::Invalid,
    }
}

/// `___eio[N]("<payload as a JSON string>");`
fn jsonp(b: &[u8]) -> Handshake {
    let Some(open) = b.windows(2).position(|w| w == b"](") else {
        return if b.len() < 32 {
            Handshake::More
        } else {
            Handshake::Invalid
        };
    };
    let s = &b[open + 2..];
    match s.first() {
        None => return Handshake::More,
        Some(b'"') => {}
        Some(_) => return Handshake::Invalid,
    }
    // The closing quote: the first `"` not escaped by a backslash.
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'"' => {
                return match serde_json::from_slice::<String>(&s[..=i]) {
                    // The payload inside is EIO 3 or 4 text framing; it is complete.
                    Ok(text) => match parse_handshake(text.as_bytes()) {
                        Handshake::More => Handshake::Invalid,
                        r => r,
                    },
                    Err(_) => Handshake::Invalid,
                };
            }
            _ => i += 1,
        }
    }
    Handshake::More
}

/// A session id a client can send back in the query as it is: URL-unreserved characters.
fn valid_sid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: &str = r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;

    fn sid() -> Handshake {
        Handshake::Sid("lv_VI97HAXpY6yYWAAAC".into())
    }

    /// EIO 3's binary framing: 0x00, the length one decimal digit per byte, 0xff, the packet.
    fn binary_frame(packet: &str) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend(packet.len().to_string().bytes().map(|d| d - b'0'));
        v.push(0xff);
        v.extend_from_slice(packet.as_bytes());
        v
    }

    #[test]
    fn every_framing_engine_io_writes() {
        // EIO 4, alone and followed by another packet.
        assert_eq!(parse_handshake(OPEN.as_bytes()), sid());
        assert_eq!(parse_handshake(format!("{OPEN}\x1e40").as_bytes()), sid());
        // EIO 3 text, with socket.io's CONNECT packet after it.
        let v3 = format!("{}:{OPEN}2:40", OPEN.len());
        assert_eq!(parse_handshake(v3.as_bytes()), sid());
        // EIO 3 binary (XHR2 without b64).
        let mut bin = binary_frame(OPEN);
        bin.extend(binary_frame("40"));
        assert_eq!(parse_handshake(&bin), sid());
        // JSONP, EIO 3 and 4 inside.
        for inner in [OPEN.to_string(), v3.clone()] {
            let js = format!("___eio[3]({});", serde_json::to_string(&inner).unwrap());
            assert_eq!(parse_handshake(js.as_bytes()), sid(), "{js}");
        }
    }

    #[test]
    fn every_prefix_asks_for_more_and_every_split_learns() {
        let v3 = format!("{}:{OPEN}2:40", OPEN.len());
        let js = format!("___eio[0]({});", serde_json::to_string(OPEN).unwrap());
        for whole in [
            OPEN.as_bytes().to_vec(),
            v3.into_bytes(),
            binary_frame(OPEN),
            js.into_bytes(),
        ] {
            let end = whole
                .windows(b"AAAC".len())
                .position(|w| w == b"AAAC")
                .unwrap();
            for cut in 0..end {
                assert_eq!(
                    parse_handshake(&whole[..cut]),
                    Handshake::More,
                    "{:?}",
                    String::from_utf8_lossy(&whole[..cut])
                );
            }
            // Whatever the chunking, the learner sees the sid once it has passed.
            for cut in 1..whole.len() {
                let map = Arc::new(SidMap::new(10, 300));
                let mut l = Learner::new(map.clone(), Arc::from("n1"));
                let done = l.data(&whole[..cut]) || l.data(&whole[cut..]);
                assert!(done);
                assert_eq!(
                    map.lookup("lv_VI97HAXpY6yYWAAAC", super::super::unix_now())
                        .as_deref(),
                    Some("n1")
                );
            }
        }
    }

    #[test]
    fn what_is_not_a_handshake_is_refused() {
        for bad in [
            &b"{\"sid\":\"x\"}"[..],
            b"0[1,2]",
            b"0{\"nosid\":1}",
            b"0{\"sid\":\"a&b\"}",
            b"0{\"sid\":\"\"}",
            b"12x",
            b"3:401:6",
            b"<html>",
            b"\x00\x01\x02\xfe",
            b"ok",
            b"___eio[0](42);",
        ] {
            assert_eq!(
                parse_handshake(bad),
                Handshake::Invalid,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("0{{\"sid\":\"{}\"}}", "a".repeat(MAX_SID_LEN + 1));
        assert_eq!(parse_handshake(long.as_bytes()), Handshake::Invalid);
        // A body that never completes is given up on at the peek limit and counted.
        let map = Arc::new(SidMap::new(10, 300));
        let mut l = Learner::new(map.clone(), Arc::from("n1"));
        let pad = format!("0{{\"pad\":\"{}", "x".repeat(100));
        assert!(!l.data(pad.as_bytes()));
        let mut done = false;
        for _ in 0..10 {
            done |= l.data(&[b'x'; 100]);
            if done {
                break;
            }
        }
        assert!(done);
        assert_eq!(map.stats.unparsed.load(Ordering::Relaxed), 1);
        assert!(map.is_empty());
    }

    #[test]
    fn requests_are_classified_by_path_and_query() {
        use EngineIo::*;
        let c = classify;
        assert_eq!(
            c("/socket.io/", Some("EIO=4&transport=polling&t=NzX1")),
            Handshake
        );
        assert_eq!(
            c(
                "/botpress/socket.io/",
                Some("visitorId=v&EIO=3&transport=polling")
            ),
            Handshake
        );
        assert_eq!(
            c("/socket.io/", Some("EIO=4&transport=polling&sid=abc")),
            Session("abc")
        );
        assert_eq!(
            c("/socket.io/", Some("EIO=4&transport=websocket&sid=abc")),
            Session("abc")
        );
        assert_eq!(c("/socket.io/", Some("EIO=4&transport=websocket")), No);
        assert_eq!(c("/socket.io/", None), No);
        assert_eq!(c("/api/v1/x", Some("transport=polling")), No);
        assert_eq!(c("/not-socket.io/", Some("transport=polling")), No);
        assert_eq!(c("/socket.io/", Some("sid=&transport=polling")), Handshake);
    }

    #[test]
    fn idle_entries_expire_on_lookup_and_by_sweep() {
        let m = SidMap::new(100, 60);
        m.learn("a", Arc::from("n1"), 1000);
        m.learn("b", Arc::from("n2"), 1000);
        // Seen again within the timeout: it lives on from there.
        assert_eq!(m.lookup("a", 1050).as_deref(), Some("n1"));
        assert_eq!(m.lookup("a", 1100).as_deref(), Some("n1"));
        assert_eq!(m.lookup("b", 1061), None);
        assert_eq!(m.stats.evicted_idle.load(Ordering::Relaxed), 1);
        // A later handshake sweeps what nobody looks up anymore.
        m.learn("c", Arc::from("n1"), 1161);
        assert_eq!(m.len(), 1, "a (seen at 1100) is idle past 1160");
        assert_eq!(m.stats.evicted_idle.load(Ordering::Relaxed), 2);
        assert_eq!(m.stats.learned.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_full_map_drops_the_least_recently_seen() {
        let m = SidMap::new(16, 3600);
        for i in 0..16u64 {
            m.learn(&format!("s{i}"), Arc::from("n1"), 1000 + i);
        }
        // s0 and s1 are used again: they are the newest now.
        m.lookup("s0", 2000);
        m.lookup("s1", 2000);
        m.learn("new", Arc::from("n2"), 2001);
        assert!(m.len() <= 16);
        assert_eq!(m.stats.evicted_capacity.load(Ordering::Relaxed), 2);
        assert!(m.lookup("s2", 2002).is_none() && m.lookup("s3", 2002).is_none());
        for k in ["s0", "s1", "s4", "s15", "new"] {
            assert!(m.lookup(k, 2002).is_some(), "{k}");
        }
        // Never above the bound, however many handshakes.
        for i in 0..1000u64 {
            m.learn(&format!("x{i}"), Arc::from("n1"), 3000 + i);
            assert!(m.len() <= 16);
        }
        // 0 entries: off.
        let off = SidMap::new(0, 60);
        off.learn("a", Arc::from("n1"), 1);
        assert!(off.is_empty() && !off.enabled());
    }

    #[test]
    fn forgetting_counts() {
        let m = SidMap::new(4, 60);
        m.learn("a", Arc::from("n1"), 1);
        m.forget("a", "n2");
        assert_eq!(
            m.len(),
            1,
            "another node's 400 says nothing about n1's session"
        );
        m.forget("a", "n1");
        m.forget("a", "n1");
        assert!(m.is_empty());
        assert_eq!(m.stats.evicted_unknown.load(Ordering::Relaxed), 1);
    }
}
