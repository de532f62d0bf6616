//! `bpgate audit tail [-f]`: the last matching lines, then (with `-f`) every new one, across
//! rotations; pretty or the trail's own JSON lines.

use std::collections::VecDeque;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::entry::Parsed;
use super::files::{self, Follower, Input, Item, Src};
use super::filter::{Filter, FilterArgs};
use super::{At, Failure, Format, Tally, Trail};

/// How often a followed file is checked for new lines and for a rotation.
const POLL: Duration = Duration::from_millis(200);

#[derive(clap::Args, Debug, Clone)]
pub struct TailArgs {
    /// Keep following `audit.jsonl` across rotations, renames and replacements (like `tail -F`).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How many of the last matching lines to print first: a number or `all`. Default 10, or
    /// `all` when --since is given.
    #[arg(short = 'n', long, value_name = "N|all", value_parser = parse_lines)]
    pub lines: Option<Lines>,
    /// `pretty`: one aligned line per request; `json`: the trail's lines as written.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Colour the status: `auto` (when stdout is a terminal and NO_COLOR is unset), `always`, `never`.
    #[arg(long, value_enum, default_value_t)]
    pub color: Color,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Files or audit directories to read (`-` is stdin) instead of the configured audit.dir.
    #[arg(value_name = "FILE|DIR")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    Last(usize),
    All,
}

fn parse_lines(s: &str) -> Result<Lines, String> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(Lines::All);
    }
    s.parse()
        .map(Lines::Last)
        .map_err(|_| format!("`{s}` is not a number of lines or `all`"))
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Color {
    #[default]
    Auto,
    Always,
    Never,
}

/// Where matching lines go.
struct Out {
    w: io::BufWriter<io::Stdout>,
    format: Format,
    color: bool,
    line: Vec<u8>,
    /// Flush after every line (following stdin, which blocks between lines).
    eager: bool,
    /// Stdout went away (`| head`): stop quietly.
    closed: bool,
    error: Option<io::Error>,
}

impl Out {
    fn emit(&mut self, raw: &[u8], p: &Parsed) -> bool {
        self.line.clear();
        match self.format {
            Format::Json => {
                self.line
                    .extend_from_slice(raw.strip_suffix(b"\r").unwrap_or(raw));
                self.line.push(b'\n');
            }
            Format::Pretty => pretty(p, self.color, &mut self.line),
        }
        let r = self.w.write_all(&self.line);
        let r = if self.eager {
            r.and_then(|_| self.w.flush())
        } else {
            r
        };
        self.check(r)
    }

    fn flush(&mut self) -> bool {
        let r = self.w.flush();
        self.check(r)
    }

    fn check(&mut self, r: io::Result<()>) -> bool {
        match r {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                false
            }
            Err(e) => {
                self.error = Some(e);
                false
            }
        }
    }
}

pub(super) fn run(a: &TailArgs, trail: Option<&Trail<'_>>) -> Result<ExitCode, Failure> {
    run_until(a, trail, None)
}

/// [`run`], where `-f` ends once `stop` is set, after one last look at the files (`bpgate demo`
/// sets it after the gateway flushed its trail, so the last lines are printed).
pub(super) fn run_until(
    a: &TailArgs,
    trail: Option<&Trail<'_>>,
    stop: Option<&AtomicBool>,
) -> Result<ExitCode, Failure> {
    let filter = Filter::new(&a.filter).map_err(Failure::Usage)?;
    if a.follow && filter.until.is_some() {
        return Err(Failure::Usage(
            "--until cannot be combined with -f (a window that ends is not followed)".into(),
        ));
    }
    let stdin_in = a.files.iter().any(|f| f.as_os_str() == "-");
    if stdin_in && a.files.len() > 1 && a.follow {
        return Err(Failure::Usage(
            "-f reads stdin alone: `-` cannot be followed together with files".into(),
        ));
    }
    let color = match a.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => {
            io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    };
    let mut out = Out {
        w: io::BufWriter::with_capacity(64 << 10, io::stdout()),
        format: a.format,
        color,
        line: Vec::with_capacity(512),
        eager: a.follow && stdin_in,
        closed: false,
        error: None,
    };
    let lines = match (a.lines, filter.since, a.follow && stdin_in) {
        (_, _, true) => Lines::All,
        (Some(l), _, _) => l,
        (None, Some(_), _) => Lines::All,
        (None, None, _) => Lines::Last(10),
    };

    // Open what will be followed before listing the rest, so that a rotation in between loses
    // nothing: the file we hold is read to its end even if it was renamed meanwhile.
    let mut followers = Vec::new();
    if a.follow && !stdin_in {
        let live = super::inputs(&a.files, trail, true)?;
        for i in live.iter().filter(|i| i.live) {
            if let Src::Path(p) = &i.src {
                let f = Follower::open(p).map_err(|e| {
                    Failure::Unreadable(format!("cannot read {}: {e}", p.display()))
                })?;
                followers.push(f);
            }
        }
    }
    let mut inputs = super::inputs(&a.files, trail, a.follow)?;
    if !followers.is_empty() {
        // A file rotated between the two listings is the one a follower already holds.
        let held: Vec<_> = followers.iter().filter_map(Follower::id).collect();
        inputs.retain(|i| match &i.src {
            Src::Path(p) if !i.live => files::path_id(p).is_none_or(|id| !held.contains(&id)),
            _ => true,
        });
    }

    let mut tally = Tally::default();
    match lines {
        Lines::All => stream(&inputs, &mut followers, &filter, &mut tally, &mut out),
        Lines::Last(n) => last(&inputs, &mut followers, &filter, n, &mut tally, &mut out),
    }
    out.flush();

    if a.follow && !stdin_in && !out.closed && out.error.is_none() {
        follow(&mut followers, &filter, &mut tally, &mut out, stop);
    }
    if let Some(e) = out.error {
        eprintln!("bpgate audit: cannot write to stdout: {e}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(super::exit_code(&tally))
}

/// Reads one input from its start: through its follower when it has one.
fn read(
    input: &Input,
    followers: &mut [Follower],
    tally: &mut Tally,
    f: &mut dyn FnMut(Item<'_>, u64, &mut Tally) -> bool,
) -> bool {
    if let Src::Path(p) = &input.src {
        if let Some(fo) = followers.iter_mut().find(|fo| &fo.path == p) {
            let r = fo.drain_current(&mut |i, n| f(i, n, &mut *tally));
            return match r {
                Ok(go) => {
                    tally.files += 1;
                    go
                }
                Err(e) => {
                    tally.unreadable += 1;
                    eprintln!("bpgate audit: cannot read {}: {e}", p.display());
                    true
                }
            };
        }
    }
    super::read_input(input, tally, f)
}

/// Every matching line, oldest first.
fn stream(
    inputs: &[Input],
    followers: &mut [Follower],
    filter: &Filter,
    tally: &mut Tally,
    out: &mut Out,
) {
    for input in inputs.iter().filter(|i| i.may_hold(filter)) {
        let go = read(input, followers, tally, &mut |item, no, t| match t.parse(
            item,
            &input.src,
            At::Line(no),
        ) {
            Some((p, raw)) if filter.matches(&p) => out.emit(raw, &p),
            _ => true,
        });
        if !go {
            return;
        }
    }
}

/// The last `n` matching lines. Files are read newest first and backwards from their end, so
/// the usual question (the last lines) reads only what it prints, and memory is `n` lines
/// whatever the trail's size. A followed file is then continued from where its lines end.
fn last(
    inputs: &[Input],
    followers: &mut [Follower],
    filter: &Filter,
    n: usize,
    tally: &mut Tally,
    out: &mut Out,
) {
    // Newest first.
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for input in inputs.iter().rev() {
        let done = kept.len() >= n || !input.may_hold(filter);
        let follower = match &input.src {
            Src::Path(p) => followers.iter_mut().find(|fo| &fo.path == p),
            Src::Stdin => None,
        };
        if done && follower.is_none() {
            continue;
        }
        let r = match (&input.src, follower) {
            (Src::Stdin, _) => {
                let mut ring = VecDeque::new();
                super::read_input(input, tally, &mut |item, no, t| {
                    if let Some((p, raw)) = t.parse(item, &input.src, At::Line(no)) {
                        if filter.matches(&p) && n > kept.len() {
                            if ring.len() == n - kept.len() {
                                ring.pop_front();
                            }
                            ring.push_back(raw.to_vec());
                        }
                    }
                    true
                });
                kept.extend(ring.into_iter().rev());
                Ok(())
            }
            (Src::Path(_), Some(fo)) => match fo.snapshot() {
                Ok(Some((mut file, len))) => {
                    let want = if done { 0 } else { n - kept.len() };
                    back(&mut file, len, false, want, input, filter, tally, &mut kept)
                        .and_then(|at| fo.start_at(at))
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            },
            (Src::Path(p), None) => match std::fs::File::open(p).and_then(|f| {
                let len = f.metadata()?.len();
                Ok((f, len))
            }) {
                Ok((mut file, len)) => {
                    let want = n - kept.len();
                    back(&mut file, len, true, want, input, filter, tally, &mut kept).map(|_| ())
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && input.listed => Ok(()),
                Err(e) => Err(e),
            },
        };
        if let Err(e) = r {
            tally.unreadable += 1;
            eprintln!("bpgate audit: cannot read {}: {e}", input.src);
        }
    }
    for raw in kept.iter().rev() {
        // Kept lines parsed before; parse again to print (n lines, not the trail).
        if let Ok((p, _)) = super::entry::parse(raw) {
            if !out.emit(raw, &p) {
                return;
            }
        }
    }
}

/// Up to `want` more matching lines of one file, read backwards into `kept`; returns the
/// offset after the file's last newline.
#[allow(clippy::too_many_arguments)]
fn back(
    file: &mut std::fs::File,
    len: u64,
    partial: bool,
    want: usize,
    input: &Input,
    filter: &Filter,
    tally: &mut Tally,
    kept: &mut Vec<Vec<u8>>,
) -> io::Result<u64> {
    tally.files += 1;
    let mut found = 0;
    files::scan_back(file, len, partial, &mut |item, at| {
        if found >= want {
            return false;
        }
        if let Some((p, raw)) = tally.parse(item, &input.src, At::Byte(at)) {
            if filter.matches(&p) {
                kept.push(raw.to_vec());
                found += 1;
            }
        }
        found < want
    })
}

/// Follows until interrupted, stdout closes, or `stop` is set.
fn follow(
    followers: &mut [Follower],
    filter: &Filter,
    tally: &mut Tally,
    out: &mut Out,
    stop: Option<&AtomicBool>,
) {
    loop {
        let last = stop.is_some_and(|s| s.load(Ordering::Acquire));
        for fo in followers.iter_mut() {
            let src = Src::Path(fo.path.clone());
            let r = fo.poll(
                &mut |item, no| match tally.parse(item, &src, At::Line(no)) {
                    Some((p, raw)) if filter.matches(&p) => out.emit(raw, &p),
                    _ => true,
                },
                &mut |note| eprintln!("bpgate audit: {note}"),
            );
            match r {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => eprintln!("bpgate audit: reading {}: {e}; retrying", fo.path.display()),
            }
        }
        if !out.flush() || last {
            return;
        }
        std::thread::sleep(POLL);
    }
}

// === pretty lines ===

const PATH_W: usize = 36;
const USER_W: usize = 22;
const IP_W: usize = 15;
const NODE_W: usize = 16;

/// `2026-11-24T20:56:17.123Z 200 GET     /api/v1/bots/…  alice@x.io  10.0.0.7  node-a  12.3ms  1.2K ok`
pub(super) fn pretty(p: &Parsed, color: bool, out: &mut Vec<u8>) {
    let e = &p.e;
    let s = |v: &Option<super::entry::Str>| v.as_ref().map(|x| x.as_str().to_string());
    push_clean(out, e.ts.as_str(), 24, false);
    out.push(b' ');
    let status = e.status.unwrap_or(0);
    let code = match status / 100 {
        5 => "31",
        4 => "33",
        3 => "36",
        2 => "32",
        _ => "",
    };
    if color && !code.is_empty() {
        out.extend_from_slice(format!("\x1b[{code}m{status:>3}\x1b[0m").as_bytes());
    } else {
        out.extend_from_slice(format!("{status:>3}").as_bytes());
    }
    out.push(b' ');
    push_clean(out, e.method.as_ref().map_or("-", |m| m.as_str()), 7, false);
    out.push(b' ');
    push_clean(
        out,
        e.path.as_ref().map_or("-", |m| m.as_str()),
        PATH_W,
        false,
    );
    out.push(b' ');
    let user = match (&e.user, &e.user_source) {
        (Some(u), _) => u.as_str().to_string(),
        (None, Some(src)) => format!("({})", src.as_str()),
        (None, None) => "-".into(),
    };
    push_clean(out, &user, USER_W, false);
    out.push(b' ');
    push_clean(out, s(&e.client_ip).as_deref().unwrap_or("-"), IP_W, false);
    out.push(b' ');
    push_clean(out, s(&e.upstream).as_deref().unwrap_or("-"), NODE_W, false);
    out.push(b' ');
    push_clean(out, &duration(p.duration_us()), 8, true);
    out.push(b' ');
    push_clean(out, &bytes(e.bytes_out.unwrap_or(0)), 6, true);
    out.push(b' ');
    let outcome = e.outcome.as_ref().map_or("-", |o| o.as_str());
    let mut last = if p.is_tunnel_close() {
        let by = e.closed_by.as_ref().map_or("?", |c| c.as_str());
        if outcome == "ok" {
            format!("tunnel closed by {by}")
        } else {
            format!("{outcome} (tunnel closed by {by})")
        }
    } else {
        outcome.to_string()
    };
    if let Some(r) = &e.reason {
        last.push_str(": ");
        last.push_str(r.as_str());
    }
    push_clean(out, &last, 0, false);
    out.push(b'\n');
}

/// `s` padded to `width` characters, with control characters (a forged value could carry
/// terminal escapes) shown as `?`.
fn push_clean(out: &mut Vec<u8>, s: &str, width: usize, right: bool) {
    let n = s.chars().count();
    let pad = width.saturating_sub(n);
    if right {
        out.resize(out.len() + pad, b' ');
    }
    if s.chars().any(char::is_control) {
        let c: String = s
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        out.extend_from_slice(c.as_bytes());
    } else {
        out.extend_from_slice(s.as_bytes());
    }
    if !right {
        out.resize(out.len() + pad, b' ');
    }
}

/// `0.42ms`, `12.3ms`, `1.52s`, `3m07s`, `2h05m`.
pub(super) fn duration(us: u64) -> String {
    match us {
        0..10_000 => format!("{:.2}ms", us as f64 / 1000.0),
        10_000..1_000_000 => format!("{:.1}ms", us as f64 / 1000.0),
        1_000_000..60_000_000 => format!("{:.2}s", us as f64 / 1e6),
        60_000_000..3_600_000_000 => format!("{}m{:02}s", us / 60_000_000, us / 1_000_000 % 60),
        _ => format!("{}h{:02}m", us / 3_600_000_000, us / 60_000_000 % 60),
    }
}

/// `812B`, `1.2K`, `3.4M`, `1.1G` (binary multiples).
pub(super) fn bytes(n: u64) -> String {
    const K: f64 = 1024.0;
    match n {
        0..1024 => format!("{n}B"),
        1024..1_048_576 => format!("{:.1}K", n as f64 / K),
        1_048_576..1_073_741_824 => format!("{:.1}M", n as f64 / (K * K)),
        _ => format!("{:.1}G", n as f64 / (K * K * K)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::query::entry::parse;

    #[test]
    fn pretty_lines_align_and_neutralise_escapes() {
        let l = br#"{"ts":"2026-11-24T10:00:00.000Z","client_ip":"10.1.2.3","user":"a\u001b[31m@x.io","method":"GET","path":"/p","status":503,"duration_ms":12.345,"bytes_out":2048,"upstream":"n1","outcome":"upstream_timeout","reason":"node timed out"}"#;
        let (p, _) = parse(l).unwrap();
        let mut out = Vec::new();
        pretty(&p, false, &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(!s.contains('\x1b'), "{s:?}");
        assert!(s.contains("a?[31m@x.io"), "{s}");
        assert!(
            s.starts_with("2026-11-24T10:00:00.000Z 503 GET     /p "),
            "{s}"
        );
        assert!(
            s.trim_end()
                .ends_with("12.3ms   2.0K upstream_timeout: node timed out"),
            "{s}"
        );
        let mut coloured = Vec::new();
        pretty(&p, true, &mut coloured);
        assert!(String::from_utf8(coloured)
            .unwrap()
            .contains("\x1b[31m503\x1b[0m"));
        let (t, _) = parse(br#"{"ts":"2026-11-24T10:00:00.000Z","event":"tunnel_close","status":101,"user_source":"jwt_invalid","outcome":"ok","closed_by":"client","duration_ms":3723000.0}"#).unwrap();
        let mut out = Vec::new();
        pretty(&t, false, &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.contains("(jwt_invalid)")
                && s.contains("1h02m")
                && s.contains("tunnel closed by client"),
            "{s}"
        );
    }

    #[test]
    fn units() {
        assert_eq!(duration(420), "0.42ms");
        assert_eq!(duration(12_345), "12.3ms");
        assert_eq!(duration(1_520_000), "1.52s");
        assert_eq!(duration(187_000_000), "3m07s");
        assert_eq!(bytes(812), "812B");
        assert_eq!(bytes(1_258_291), "1.2M");
    }
}
