//! `bpgate audit summary`: one pass over a time window, in memory that does not grow with the
//! trail.
//!
//! Memory bounds: users and client IPs are counted exactly up to [`TOP_CAP`] distinct values
//! each; past that, Misra-Gries keeps the [`TOP_CAP`] heaviest, so any value with more than
//! 1/[`TOP_CAP`] of the lines is still listed and its count is low by at most the printed bound.
//! Durations go into log-linear histograms (2,304 counters, values under 128 µs exact, others
//! within 0.8 %), one per node (at most [`KEY_CAP`] nodes) and one for tunnels. Outcomes,
//! reasons and `closed_by` values are few by construction and capped at [`KEY_CAP`] as well;
//! anything past a cap is counted under `(other)`.

use std::collections::HashMap;
use std::hash::Hash;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{json, Value};

use super::entry::{format_ms, Parsed};
use super::filter::{Filter, FilterArgs};
use super::{Failure, Format, Tally, Trail};
use crate::exchange::Outcome;

/// Distinct users (and distinct IPs) counted exactly.
pub const TOP_CAP: usize = 20_000;
/// Distinct nodes, reasons, outcomes, closers.
pub const KEY_CAP: usize = 256;

#[derive(clap::Args, Debug, Clone)]
pub struct SummaryArgs {
    /// How many users and client IPs to list.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
    /// `pretty`: a report for people; `json`: one object with the same numbers.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Files or audit directories to read (`-` is stdin) instead of the configured audit.dir.
    #[arg(value_name = "FILE|DIR")]
    pub files: Vec<PathBuf>,
}

pub(super) fn run(a: &SummaryArgs, trail: Option<&Trail<'_>>) -> Result<ExitCode, Failure> {
    let filter = Filter::new(&a.filter).map_err(Failure::Usage)?;
    let inputs = super::inputs(&a.files, trail, false)?;
    let mut s = Summary::default();
    let mut tally = Tally::default();
    let mut skipped_files = 0u64;
    for input in &inputs {
        if !input.may_hold(&filter) {
            skipped_files += 1;
            continue;
        }
        super::read_input(input, &mut tally, &mut |item, no, t| {
            if let Some((p, _)) = t.parse(item, &input.src, super::At::Line(no)) {
                if filter.matches(&p) {
                    s.add(&p);
                }
            }
            true
        });
    }
    let report = s.report(&filter, &tally, skipped_files, a.top);
    let text = match a.format {
        Format::Json => serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
        Format::Pretty => render(&report),
    };
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("bpgate audit: cannot write to stdout: {e}");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(super::exit_code(&tally))
}

/// Counts per value, exact up to `cap` distinct values, then Misra-Gries: when a new value
/// finds the table full, every count drops by one and zeros leave. Counts are then lower
/// bounds, each at most `decrements` below the truth; the work stays O(1) amortised per line
/// (every decrement undoes an earlier increment).
#[derive(Debug)]
pub struct TopCounter {
    cap: usize,
    map: HashMap<Box<str>, u64>,
    decrements: u64,
}

impl TopCounter {
    pub fn new(cap: usize) -> Self {
        TopCounter {
            cap,
            map: HashMap::new(),
            decrements: 0,
        }
    }

    pub fn add(&mut self, key: &str) {
        if let Some(c) = self.map.get_mut(key) {
            *c += 1;
        } else if self.map.len() < self.cap {
            self.map.insert(key.into(), 1);
        } else {
            self.decrements += 1;
            self.map.retain(|_, c| {
                *c -= 1;
                *c > 0
            });
        }
    }

    /// The `n` largest, by count then name.
    pub fn top(&self, n: usize) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self.map.iter().map(|(k, c)| (&**k, *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v.truncate(n);
        v
    }

    fn json(&self, n: usize, name: &str) -> Value {
        let exact = self.decrements == 0;
        json!({
            "distinct": if exact { json!(self.map.len()) } else { Value::Null },
            "distinct_more_than": if exact { Value::Null } else { json!(self.cap) },
            "exact": exact,
            "max_undercount": self.decrements,
            "top": self.top(n).iter().map(|(k, c)| json!({ name: k, "requests": c })).collect::<Vec<_>>(),
        })
    }
}

/// A map with at most `KEY_CAP` keys; the rest is counted under the overflow key.
#[derive(Debug)]
struct Capped<K, V> {
    map: HashMap<K, V>,
}

impl<K: Hash + Eq, V: Default> Default for Capped<K, V> {
    fn default() -> Self {
        Capped {
            map: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Default> Capped<K, V> {
    fn entry(&mut self, key: &K, overflow: &K) -> &mut V {
        let k = if self.map.contains_key(key) || self.map.len() < KEY_CAP - 1 {
            key
        } else {
            overflow
        };
        self.map.entry(k.clone()).or_default()
    }
}

const OTHER: &str = "(other)";

fn count(m: &mut Capped<String, u64>, key: &str) {
    match m.map.get_mut(key) {
        Some(c) => *c += 1,
        None => *m.entry(&key.to_string(), &OTHER.to_string()) += 1,
    }
}

fn sorted_counts(m: &Capped<String, u64>) -> Value {
    let mut v: Vec<(&String, &u64)> = m.map.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    Value::Object(v.into_iter().map(|(k, c)| (k.clone(), json!(c))).collect())
}

/// Log-linear histogram of microseconds: 128 exact buckets, then 64 per power of two.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    n: u64,
    min: u64,
    max: u64,
}

const SUB_BITS: u32 = 6;
const BUCKETS: usize = 36 * 64;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            n: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        let v = v.min((1 << 41) - 1);
        if v < 128 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros();
        let shift = e - SUB_BITS;
        ((shift as usize + 1) << SUB_BITS) + ((v >> shift) as usize - 64)
    }

    /// The middle of a bucket (the value itself below 128 µs). Percentiles are clamped to the
    /// smallest and largest values seen, so a single value or the extremes come out exact.
    fn value(i: usize) -> u64 {
        if i < 128 {
            return i as u64;
        }
        let shift = (i >> SUB_BITS) - 1;
        let lower = ((i & 63) as u64 + 64) << shift;
        lower + (1u64 << shift) / 2
    }

    pub fn add(&mut self, us: u64) {
        self.counts[Self::index(us)] += 1;
        self.n += 1;
        self.min = self.min.min(us);
        self.max = self.max.max(us);
    }

    /// Nearest-rank percentile in µs.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((p / 100.0) * self.n as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::value(i).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    fn json(&self) -> Value {
        let ms = |v: Option<u64>| v.map_or(Value::Null, |v| json!(v as f64 / 1000.0));
        json!({
            "p50_ms": ms(self.percentile(50.0)),
            "p95_ms": ms(self.percentile(95.0)),
            "p99_ms": ms(self.percentile(99.0)),
            "max_ms": ms((self.n > 0).then_some(self.max)),
        })
    }
}

#[derive(Debug, Default)]
struct NodeStats {
    requests: u64,
    s4xx: u64,
    s5xx: u64,
    upstream_errors: u64,
    failover: u64,
    bytes_out: u64,
    durations: Histogram,
}

#[derive(Debug, Default)]
struct Tunnels {
    opened: u64,
    closed: u64,
    errors: u64,
    bytes_up: u64,
    bytes_down: u64,
    closed_by: Capped<String, u64>,
    durations: Histogram,
}

/// Everything counted.
#[derive(Debug)]
struct Summary {
    first: Option<i64>,
    last: Option<i64>,
    requests: u64,
    /// 0: no or odd status, 1..=5: the classes.
    classes: [u64; 6],
    other_events: u64,
    outcomes: Capped<String, u64>,
    users: TopCounter,
    anonymous: u64,
    user_sources: Capped<String, u64>,
    ips: TopCounter,
    reasons: Capped<(u16, String, String), u64>,
    nodes: Capped<String, NodeStats>,
    tunnels: Tunnels,
}

impl Default for Summary {
    fn default() -> Self {
        Summary {
            first: None,
            last: None,
            requests: 0,
            classes: [0; 6],
            other_events: 0,
            outcomes: Capped::default(),
            users: TopCounter::new(TOP_CAP),
            anonymous: 0,
            user_sources: Capped::default(),
            ips: TopCounter::new(TOP_CAP),
            reasons: Capped::default(),
            nodes: Capped::default(),
            tunnels: Tunnels::default(),
        }
    }
}

impl Summary {
    fn add(&mut self, p: &Parsed) {
        let e = &p.e;
        self.first = Some(self.first.map_or(p.ts_ms, |f| f.min(p.ts_ms)));
        self.last = Some(self.last.map_or(p.ts_ms, |l| l.max(p.ts_ms)));
        let status = e.status.unwrap_or(0);
        let outcome = e.outcome.as_ref().map_or("-", |o| o.as_str());
        if p.is_tunnel_close() {
            let t = &mut self.tunnels;
            t.closed += 1;
            t.bytes_up += e.bytes_in.unwrap_or(0);
            t.bytes_down += e.bytes_out.unwrap_or(0);
            t.durations.add(p.duration_us());
            if outcome != Outcome::Ok.as_str() {
                t.errors += 1;
            }
            count(
                &mut t.closed_by,
                e.closed_by.as_ref().map_or("-", |c| c.as_str()),
            );
            return;
        }
        if !p.is_request() {
            self.other_events += 1;
            return;
        }
        self.requests += 1;
        let class = status / 100;
        self.classes[if (1..=5).contains(&class) {
            class as usize
        } else {
            0
        }] += 1;
        count(&mut self.outcomes, outcome);
        match &e.user {
            Some(u) => self.users.add(u.as_str()),
            None => self.anonymous += 1,
        }
        if let Some(src) = &e.user_source {
            count(&mut self.user_sources, src.as_str());
        }
        self.ips
            .add(e.client_ip.as_ref().map_or("-", |i| i.as_str()));
        if let Some(r) = &e.reason {
            let key = (status, outcome.to_string(), r.as_str().to_string());
            let overflow = (0, OTHER.to_string(), OTHER.to_string());
            *self.reasons.entry(&key, &overflow) += 1;
        }
        if status == 101 {
            self.tunnels.opened += 1;
        }
        let node = e.upstream.as_ref().map_or("", |u| u.as_str());
        let n = match self.nodes.map.get_mut(node) {
            Some(n) => n,
            None => self.nodes.entry(&node.to_string(), &OTHER.to_string()),
        };
        n.requests += 1;
        match class {
            4 => n.s4xx += 1,
            5 => n.s5xx += 1,
            _ => {}
        }
        if outcome == Outcome::UpstreamError.as_str()
            || outcome == Outcome::UpstreamTimeout.as_str()
        {
            n.upstream_errors += 1;
        }
        if e.sticky.as_ref().is_some_and(|s| s.as_str() == "failover") {
            n.failover += 1;
        }
        n.bytes_out += e.bytes_out.unwrap_or(0);
        // A tunnel's 101 line lasts as long as the handshake; its session time is on the close.
        if status != 101 {
            n.durations.add(p.duration_us());
        }
    }

    fn report(&self, f: &Filter, tally: &Tally, skipped_files: u64, top: usize) -> Value {
        let t = |v: Option<i64>| v.map_or(Value::Null, |ms| json!(format_ms(ms)));
        let mut reasons: Vec<_> = self.reasons.map.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let mut nodes: Vec<_> = self.nodes.map.iter().collect();
        nodes.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(b.0)));
        let tun = &self.tunnels;
        let mut tunnels = json!({
            "opened": tun.opened, "closed": tun.closed, "errors": tun.errors,
            "bytes_up": tun.bytes_up, "bytes_down": tun.bytes_down,
            "closed_by": sorted_counts(&tun.closed_by),
        });
        merge(&mut tunnels, tun.durations.json());
        let nodes: Vec<Value> = nodes
            .iter()
            .map(|(name, n)| {
                let mut v = json!({
                    "node": if name.is_empty() { Value::Null } else { json!(name) },
                    "requests": n.requests, "4xx": n.s4xx, "5xx": n.s5xx,
                    "upstream_errors": n.upstream_errors, "failover": n.failover,
                    "bytes_out": n.bytes_out,
                });
                merge(&mut v, n.durations.json());
                v
            })
            .collect();
        json!({
            "window": { "since": t(f.since), "until": t(f.until), "first": t(self.first), "last": t(self.last) },
            "files": tally.files,
            "files_skipped_by_time": skipped_files,
            "unreadable_files": tally.unreadable,
            "lines": tally.lines,
            "malformed": tally.malformed,
            "recovered": tally.recovered,
            "requests": self.requests,
            "status": {
                "1xx": self.classes[1], "2xx": self.classes[2], "3xx": self.classes[3],
                "4xx": self.classes[4], "5xx": self.classes[5], "other": self.classes[0],
            },
            "outcomes": sorted_counts(&self.outcomes),
            "users": {
                "anonymous": self.anonymous,
                "sources": sorted_counts(&self.user_sources),
                "counts": self.users.json(top, "user"),
            },
            "client_ips": self.ips.json(top, "ip"),
            "reasons": reasons.iter().map(|((status, outcome, reason), c)| json!({
                "status": status, "outcome": outcome, "reason": reason, "count": c,
            })).collect::<Vec<_>>(),
            "nodes": nodes,
            "tunnels": tunnels,
            "other_events": self.other_events,
        })
    }
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        a.extend(b);
    }
}

/// The report for people, from the same JSON the `json` format prints (one source of numbers).
fn render(r: &Value) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    };
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    let w = &r["window"];
    let window = match (&w["since"], &w["until"]) {
        (Value::Null, Value::Null) => "the whole trail".to_string(),
        (a, b) => format!("{} .. {}", s(a), s(b)),
    };
    let _ = writeln!(o, "window     {window}");
    let _ = writeln!(o, "lines      {} to {}", s(&w["first"]), s(&w["last"]));
    let _ = writeln!(
        o,
        "read       {} file(s), {} line(s), {} malformed{}",
        u(&r["files"]),
        u(&r["lines"]),
        u(&r["malformed"]),
        match u(&r["files_skipped_by_time"]) {
            0 => String::new(),
            n => format!(", {n} file(s) outside the window skipped"),
        }
    );
    if u(&r["other_events"]) > 0 {
        let _ = writeln!(
            o,
            "           {} line(s) of other event kinds, not counted below",
            u(&r["other_events"])
        );
    }
    let total = u(&r["requests"]);
    let pct = |n: u64| {
        if total == 0 {
            0.0
        } else {
            n as f64 * 100.0 / total as f64
        }
    };
    let _ = writeln!(o, "\nrequests   {total}");
    for class in ["1xx", "2xx", "3xx", "4xx", "5xx", "other"] {
        let n = u(&r["status"][class]);
        if n > 0 || class != "other" {
            let _ = writeln!(o, "  {class:<8} {n:>12}  {:5.1}%", pct(n));
        }
    }
    let _ = writeln!(o, "\noutcomes");
    if let Some(m) = r["outcomes"].as_object() {
        for (k, v) in m {
            let _ = writeln!(o, "  {k:<18} {:>12}", u(v));
        }
    }
    let top_block = |o: &mut String, title: &str, c: &Value, key: &str| {
        let exact = c["exact"].as_bool().unwrap_or(true);
        let distinct = if exact {
            format!("{} distinct", u(&c["distinct"]))
        } else {
            format!(
                "more than {} distinct; counts are lower bounds, at most {} low",
                u(&c["distinct_more_than"]),
                u(&c["max_undercount"])
            )
        };
        let _ = writeln!(o, "\n{title} ({distinct})");
        for e in c["top"].as_array().into_iter().flatten() {
            let _ = writeln!(o, "  {:>12}  {}", u(&e["requests"]), clean(&s(&e[key])));
        }
    };
    top_block(&mut o, "top users", &r["users"]["counts"], "user");
    let _ = writeln!(
        o,
        "  {:>12}  (no verified user)",
        u(&r["users"]["anonymous"])
    );
    if let Some(m) = r["users"]["sources"].as_object() {
        let bad: Vec<String> = m
            .iter()
            .filter(|(k, _)| k.as_str() != "jwt")
            .map(|(k, v)| format!("{k} {}", u(v)))
            .collect();
        if !bad.is_empty() {
            let _ = writeln!(o, "  tokens not verified: {}", bad.join(", "));
        }
    }
    top_block(&mut o, "top client IPs", &r["client_ips"], "ip");
    let _ = writeln!(o, "\nrefusals and bpgate's own answers, by reason");
    let reasons = r["reasons"].as_array().cloned().unwrap_or_default();
    if reasons.is_empty() {
        let _ = writeln!(o, "  none");
    }
    for e in &reasons {
        let _ = writeln!(
            o,
            "  {:>12}  {} {:<18} {}",
            u(&e["count"]),
            s(&e["status"]),
            s(&e["outcome"]),
            s(&e["reason"])
        );
    }
    let _ = writeln!(o, "\nper node");
    let _ = writeln!(
        o,
        "  {:<22} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "node", "requests", "4xx", "5xx", "up_err", "failover", "p50", "p95", "p99", "max"
    );
    let ms = |v: &Value| {
        v.as_f64().map_or("-".into(), |m| {
            super::tail::duration((m * 1000.0).round() as u64)
        })
    };
    for n in r["nodes"].as_array().into_iter().flatten() {
        let name = match &n["node"] {
            Value::Null => "(none: bpgate)".to_string(),
            v => clean(&s(v)),
        };
        let _ = writeln!(
            o,
            "  {name:<22} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}",
            u(&n["requests"]),
            u(&n["4xx"]),
            u(&n["5xx"]),
            u(&n["upstream_errors"]),
            u(&n["failover"]),
            ms(&n["p50_ms"]),
            ms(&n["p95_ms"]),
            ms(&n["p99_ms"]),
            ms(&n["max_ms"]),
        );
    }
    let t = &r["tunnels"];
    let _ = writeln!(
        o,
        "\ntunnels    {} opened, {} closed ({} with errors); {} up, {} down",
        u(&t["opened"]),
        u(&t["closed"]),
        u(&t["errors"]),
        super::tail::bytes(u(&t["bytes_up"])),
        super::tail::bytes(u(&t["bytes_down"]))
    );
    if let Some(m) = t["closed_by"].as_object().filter(|m| !m.is_empty()) {
        let by: Vec<String> = m.iter().map(|(k, v)| format!("{k} {}", u(v))).collect();
        let _ = writeln!(o, "  closed by  {}", by.join(", "));
        let _ = writeln!(
            o,
            "  session    p50 {}  p95 {}  max {}",
            ms(&t["p50_ms"]),
            ms(&t["p95_ms"]),
            ms(&t["max_ms"])
        );
    }
    o
}

/// Control characters (a forged value could carry terminal escapes) shown as `?`.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_precision_and_percentiles() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.add(v * 1000);
        }
        for (p, want) in [(50.0, 500_000.0), (95.0, 950_000.0), (99.0, 990_000.0)] {
            let got = h.percentile(p).unwrap() as f64;
            assert!((got - want).abs() / want < 0.008, "p{p}: {got} vs {want}");
        }
        assert_eq!(h.percentile(100.0), Some(1_000_000));
        let mut small = Histogram::default();
        for v in [5, 7, 9, 127] {
            small.add(v);
        }
        assert_eq!(small.percentile(50.0), Some(7), "exact below 128 µs");
        for v in [
            0u64,
            1,
            127,
            128,
            129,
            255,
            256,
            1 << 20,
            (1 << 41) - 1,
            u64::MAX,
        ] {
            let i = Histogram::index(v);
            assert!(i < BUCKETS);
            let mid = Histogram::value(i) as f64;
            let v = v.min((1 << 41) - 1) as f64;
            assert!((mid - v).abs() <= v / 128.0 + 0.5, "{v} -> {mid}");
        }
    }

    #[test]
    fn top_counter_exact_then_bounded() {
        let mut t = TopCounter::new(3);
        for k in ["a", "b", "a", "c", "a", "b"] {
            t.add(k);
        }
        assert_eq!(t.top(2), [("a", 3), ("b", 2)]);
        assert_eq!(t.decrements, 0);
        // A heavy hitter survives a flood of distinct values; its count is low by at most
        // the number of decrements.
        for i in 0..1000 {
            t.add("a");
            t.add(&format!("x{i}"));
        }
        assert!(t.map.len() <= 3);
        let (k, c) = t.top(1)[0];
        assert_eq!(k, "a");
        assert!(
            c <= 1003 && c + t.decrements >= 1003,
            "{c} {}",
            t.decrements
        );
    }
}
