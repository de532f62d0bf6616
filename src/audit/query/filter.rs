//! The filters `tail` and `summary` share. Within one flag the values are alternatives (comma
//! separated or the flag repeated); different flags must all match.

use std::net::IpAddr;

use ipnet::IpNet;

use super::entry::{parse_ts, Parsed};
use crate::exchange::Outcome;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Verified user (the `user` field), case-insensitive; `-` for lines without one.
    #[arg(long, value_delimiter = ',', value_name = "EMAIL")]
    pub user: Vec<String>,
    /// Client IP (`client_ip`): an address or a CIDR such as 10.0.0.0/8.
    #[arg(long, value_delimiter = ',', value_name = "ADDR|CIDR", value_parser = parse_net)]
    pub ip: Vec<IpNet>,
    /// Status: a code (`403`) or a class (`5xx`), e.g. `4xx,5xx`.
    #[arg(long, value_delimiter = ',', value_name = "CODE|Nxx", value_parser = parse_status)]
    pub status: Vec<StatusSpec>,
    /// Path prefix (as the client sent it, base path included), e.g. `/api/v1/bots`.
    #[arg(long, value_name = "PREFIX")]
    pub path: Vec<String>,
    /// Outcome, e.g. `rejected`, `upstream_error,upstream_timeout` (the README's audit field
    /// list has them all; a value this bpgate does not write is matched with a warning).
    #[arg(long, value_delimiter = ',', value_name = "OUTCOME")]
    pub outcome: Vec<String>,
    /// Lines at or after this time: RFC 3339 (`2026-11-24T08:00:00Z`) or an age (`90m`, `1h`, `2d`).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<i64>,
    /// Lines before this time: RFC 3339 or an age, as `--since`.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<i64>,
}

/// A status code or a class of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusSpec {
    Code(u16),
    /// `5xx` is `Class(5)`.
    Class(u16),
}

impl StatusSpec {
    fn matches(self, status: u16) -> bool {
        match self {
            StatusSpec::Code(c) => status == c,
            StatusSpec::Class(c) => status / 100 == c,
        }
    }
}

fn parse_status(s: &str) -> Result<StatusSpec, String> {
    let t = s.trim().to_ascii_lowercase();
    let bad = || format!("`{s}` is not a status: give a code like 403 or a class like 5xx");
    if let Some(d) = t.strip_suffix("xx") {
        return match d.parse::<u16>() {
            Ok(c) if (1..=5).contains(&c) && d.len() == 1 => Ok(StatusSpec::Class(c)),
            _ => Err(bad()),
        };
    }
    match t.parse::<u16>() {
        Ok(c) if (100..=599).contains(&c) || c == 0 => Ok(StatusSpec::Code(c)),
        _ => Err(bad()),
    }
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("`{s}` is not an IP address or a CIDR (10.0.0.7, 10.0.0.0/8, fd00::/8)")
        })
}

/// RFC 3339, or an age (`1h` = one hour ago), as Unix milliseconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Some(ms) = parse_ts(s) {
        return Ok(ms);
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok(crate::audit::now_ms() - d.as_millis().min(i64::MAX as u128) as i64),
        Err(_) => Err(format!(
            "`{s}` is neither an RFC 3339 time (2026-11-24T08:00:00Z, 2026-11-24T09:00:00+01:00) nor an age (30s, 15m, 1h, 2d)"
        )),
    }
}

/// The compiled filters.
#[derive(Debug, Clone)]
pub struct Filter {
    users: Vec<String>,
    anonymous: bool,
    nets: Vec<IpNet>,
    status: Vec<StatusSpec>,
    paths: Vec<String>,
    outcomes: Vec<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

impl Filter {
    pub fn new(a: &FilterArgs) -> Result<Filter, String> {
        if let (Some(s), Some(u)) = (a.since, a.until) {
            if u <= s {
                return Err("--until is not after --since: the window is empty".into());
            }
        }
        let users: Vec<String> = a.user.iter().map(|u| u.trim().to_string()).collect();
        for o in &a.outcome {
            if !Outcome::ALL.iter().any(|k| k.as_str() == o.trim()) {
                // Another version's trail may hold it: a warning, not an error.
                let known: Vec<&str> = Outcome::ALL.iter().map(|k| k.as_str()).collect();
                eprintln!(
                    "bpgate audit: --outcome `{o}` is not an outcome this bpgate writes ({}); matching it anyway",
                    known.join(", ")
                );
            }
        }
        Ok(Filter {
            anonymous: users.iter().any(|u| u == "-"),
            users: users.into_iter().filter(|u| u != "-").collect(),
            nets: a.ip.clone(),
            status: a.status.clone(),
            paths: a.path.clone(),
            outcomes: a.outcome.iter().map(|o| o.trim().to_string()).collect(),
            since: a.since,
            until: a.until,
        })
    }

    /// Whether the window `[since, until)` can contain `ms`.
    pub fn in_window(&self, ms: i64) -> bool {
        self.since.is_none_or(|s| ms >= s) && self.until.is_none_or(|u| ms < u)
    }

    pub fn matches(&self, p: &Parsed) -> bool {
        let e = &p.e;
        if !self.in_window(p.ts_ms) {
            return false;
        }
        if !self.status.is_empty() {
            let Some(st) = e.status else { return false };
            if !self.status.iter().any(|s| s.matches(st)) {
                return false;
            }
        }
        if !self.users.is_empty() || self.anonymous {
            let ok = match e.user.as_ref() {
                Some(u) => self
                    .users
                    .iter()
                    .any(|x| x.eq_ignore_ascii_case(u.as_str())),
                None => self.anonymous,
            };
            if !ok {
                return false;
            }
        }
        if !self.paths.is_empty() {
            let Some(path) = e.path.as_ref() else {
                return false;
            };
            if !self
                .paths
                .iter()
                .any(|pre| path.as_str().starts_with(pre.as_str()))
            {
                return false;
            }
        }
        if !self.outcomes.is_empty() {
            let Some(o) = e.outcome.as_ref() else {
                return false;
            };
            if !self.outcomes.iter().any(|x| x == o.as_str()) {
                return false;
            }
        }
        if !self.nets.is_empty() {
            let ip = e
                .client_ip
                .as_ref()
                .and_then(|s| s.as_str().parse::<IpAddr>().ok());
            let Some(ip) = ip else { return false };
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
                v4 => v4,
            };
            if !self.nets.iter().any(|n| n.contains(&ip)) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::query::entry::parse;

    fn f(args: &[&str]) -> Filter {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            f: FilterArgs,
        }
        let t = T::try_parse_from(std::iter::once("t").chain(args.iter().copied())).unwrap();
        Filter::new(&t.f).unwrap()
    }

    const L: &[u8] = br#"{"ts":"2026-11-24T10:00:00.000Z","client_ip":"10.1.2.3","user":"Alice@X.io","path":"/api/v1/bots/b1","status":503,"outcome":"upstream_timeout"}"#;

    #[test]
    fn each_filter() {
        let (p, _) = parse(L).unwrap();
        for yes in [
            &[][..],
            &["--user", "alice@x.io"],
            &["--user", "bob@x.io,alice@x.io"],
            &["--ip", "10.0.0.0/8"],
            &["--ip", "10.1.2.3"],
            &["--status", "5xx"],
            &["--status", "4xx,503"],
            &["--path", "/api/v1"],
            &["--path", "/x", "--path", "/api"],
            &["--outcome", "upstream_timeout,ok"],
            &[
                "--since",
                "2026-11-24T10:00:00Z",
                "--until",
                "2026-11-24T10:00:00.001Z",
            ],
            &["--since", "2026-11-24T11:00:00+01:00"],
        ] {
            assert!(f(yes).matches(&p), "{yes:?}");
        }
        for no in [
            &["--user", "-"][..],
            &["--user", "bob@x.io"],
            &["--ip", "10.1.2.4"],
            &["--ip", "192.168.0.0/16"],
            &["--status", "4xx"],
            &["--status", "500"],
            &["--path", "/studio"],
            &["--outcome", "ok"],
            &["--since", "2026-11-24T10:00:00.001Z"],
            &["--until", "2026-11-24T10:00:00Z"],
            &["--user", "alice@x.io", "--status", "2xx"],
        ] {
            assert!(!f(no).matches(&p), "{no:?}");
        }
        let (anon, _) = parse(br#"{"ts":"2026-11-24T10:00:00.000Z","user":null}"#).unwrap();
        assert!(f(&["--user", "-"]).matches(&anon));
        assert!(!f(&["--status", "5xx"]).matches(&anon));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for s in ["6xx", "20x", "abc", "99", "xx"] {
            assert!(parse_status(s).is_err(), "{s}");
        }
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_time("last tuesday").is_err());
        let hour_ago = parse_time("1h").unwrap();
        let now = crate::audit::now_ms();
        assert!((now - hour_ago - 3_600_000).abs() < 5_000);
    }
}
