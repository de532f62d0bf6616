//! `bpgate audit`: the questions operators ask of the trail, answered from the files.
//!
//! `tail` prints (and with `-f` follows) lines, pretty or raw; `summary` counts a time window.
//! Both stream: a line is parsed where it lies in a reused buffer and forgotten, so memory stays
//! flat however large the trail (see [`summary`] for the bounded counters). Lines that are not
//! audit records (torn by a crash, edited, too long) are counted and reported, never fatal.
//!
//! Exit codes: 0 done, 1 a file or directory could not be read, 2 a usage or configuration error.

mod entry;
mod files;
mod filter;
mod summary;
mod tail;

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub use filter::FilterArgs;
pub use summary::SummaryArgs;
pub use tail::TailArgs;

use files::{Input, Item, LineReader, Src};

#[derive(clap::Args, Debug, Clone)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum AuditCommand {
    /// Print the last lines of the trail (all of them from --since on) and with -f follow it
    /// across rotations.
    Tail(TailArgs),
    /// Count a time window: status classes, top users and IPs, refusals by reason, per node,
    /// tunnels.
    Summary(SummaryArgs),
}

/// Output format.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Aligned, for people.
    #[default]
    Pretty,
    /// JSON: the trail's own lines (`tail`), one object (`summary`).
    Json,
}

impl AuditArgs {
    /// Files and directories named on the command line; when empty the configured `audit.dir`
    /// is read.
    pub fn files(&self) -> &[PathBuf] {
        match &self.command {
            AuditCommand::Tail(a) => &a.files,
            AuditCommand::Summary(a) => &a.files,
        }
    }
}

/// The configured trail: `audit.dir` and where that value came from (for messages).
pub struct Trail<'a> {
    pub dir: &'a Path,
    pub origin: &'a str,
}

/// Runs `bpgate audit …`. `trail` is the configured directory, used when no files are named.
pub fn run(args: &AuditArgs, trail: Option<Trail<'_>>) -> ExitCode {
    let r = match &args.command {
        AuditCommand::Tail(a) => tail::run(a, trail.as_ref()),
        AuditCommand::Summary(a) => summary::run(a, trail.as_ref()),
    };
    match r {
        Ok(code) => code,
        Err(Failure::Usage(m)) => {
            eprintln!("bpgate audit: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Unreadable(m)) => {
            eprintln!("bpgate audit: {m}");
            ExitCode::FAILURE
        }
    }
}

/// `bpgate audit tail -f --format pretty -n 0 DIR` until `stop` is set: every line written to
/// the trail in `dir` from now on, for people, then the last ones once `stop` is set (`bpgate
/// demo` follows its gateway's trail with it).
pub fn follow_pretty(dir: &Path, stop: &std::sync::atomic::AtomicBool) -> ExitCode {
    let args = TailArgs {
        follow: true,
        lines: Some(tail::Lines::Last(0)),
        format: Format::Pretty,
        color: tail::Color::Auto,
        filter: FilterArgs::default(),
        files: vec![dir.to_path_buf()],
    };
    match tail::run_until(&args, None, Some(stop)) {
        Ok(code) => code,
        Err(Failure::Usage(m) | Failure::Unreadable(m)) => {
            eprintln!("bpgate audit: {m}");
            ExitCode::FAILURE
        }
    }
}

/// Why a command stopped before its end.
pub(crate) enum Failure {
    /// Exit 2.
    Usage(String),
    /// Exit 1.
    Unreadable(String),
}

/// The inputs for `files` or the configured trail.
fn inputs(
    files: &[PathBuf],
    trail: Option<&Trail<'_>>,
    follow: bool,
) -> Result<Vec<Input>, Failure> {
    files::inputs(files, trail.map(|t| t.dir), follow).map_err(|e| {
        Failure::Unreadable(match (files.is_empty(), trail) {
            (true, Some(t)) => format!(
                "cannot read the audit directory {} (audit.dir, from {}): {}; run with the configuration bpgate uses (--config, BPGATE_AUDIT_DIR) or name the files",
                e.dir.display(),
                t.origin,
                e.error
            ),
            _ => e.to_string(),
        })
    })
}

/// Where a line is, for messages: its number, or its byte offset when read backwards.
#[derive(Debug, Clone, Copy)]
pub(crate) enum At {
    Line(u64),
    Byte(u64),
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Line(n) => write!(f, "line {n}"),
            At::Byte(n) => write!(f, "byte {n}"),
        }
    }
}

/// Counts of what was read, and the lines that were not records.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub files: u64,
    pub lines: u64,
    pub malformed: u64,
    /// Whole records recovered from behind a torn line.
    pub recovered: u64,
    /// Files that could not be read (exit 1).
    pub unreadable: u64,
    warned: u64,
}

/// Malformed lines reported one by one on stderr before only counting.
const WARN_LINES: u64 = 10;

impl Tally {
    fn malformed(&mut self, src: &Src, at: At, why: &str) {
        self.malformed += 1;
        if self.warned < WARN_LINES {
            self.warned += 1;
            eprintln!("bpgate audit: {src}: {at}: {why}");
            if self.warned == WARN_LINES {
                eprintln!("bpgate audit: further malformed lines are counted, not shown");
            }
        }
    }

    /// The closing line on stderr when anything was skipped.
    fn report(&self) {
        if self.malformed > 0 {
            let glued = match self.recovered {
                0 => String::new(),
                n => format!(" ({n} of them torn and glued to a record, which was kept)"),
            };
            eprintln!(
                "bpgate audit: {} malformed line(s) of {} read{glued}",
                self.malformed, self.lines
            );
        }
    }

    /// Parses a line, counting it; `None` for a line that is not a record. With the record
    /// comes its text (the line without a torn part glued in front).
    fn parse<'l>(
        &mut self,
        item: Item<'l>,
        src: &Src,
        at: At,
    ) -> Option<(entry::Parsed<'l>, &'l [u8])> {
        self.lines += 1;
        match item {
            Item::Line(l) if l.iter().all(u8::is_ascii_whitespace) => {
                self.lines -= 1;
                None
            }
            Item::Line(l) => match entry::parse(l) {
                Ok((p, start)) => {
                    if start > 0 {
                        self.recovered += 1;
                        self.malformed(
                            src,
                            at,
                            "torn line glued to the next record; the record is kept",
                        );
                    }
                    let rec = l.strip_suffix(b"\r").unwrap_or(l);
                    Some((p, &rec[start..]))
                }
                Err(()) => {
                    self.malformed(src, at, "not an audit record (torn or malformed); skipped");
                    None
                }
            },
            Item::Broken(why) => {
                self.malformed(src, at, &format!("{why}; skipped"));
                None
            }
        }
    }
}

/// Reads one finished input (not followed) from its start, handing items to `f`. A listed file
/// that vanished (pruned by `max_files` meanwhile) is skipped; any other open or read error is
/// counted as unreadable and reported.
fn read_input(
    input: &Input,
    tally: &mut Tally,
    f: &mut dyn FnMut(Item<'_>, u64, &mut Tally) -> bool,
) -> bool {
    let mut go = |i: Item<'_>, n: u64| f(i, n, &mut *tally);
    let r = match &input.src {
        Src::Stdin => {
            let stdin = io::stdin();
            let mut r = LineReader::new(stdin.lock());
            files::drain(&mut r, true, &mut go)
        }
        Src::Path(p) => match std::fs::File::open(p) {
            Ok(file) => {
                let mut r = LineReader::new(file);
                files::drain(&mut r, true, &mut go)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && input.listed => {
                eprintln!("bpgate audit: {} went away while reading (pruned by audit.max_files?); skipped", p.display());
                return true;
            }
            Err(e) => Err(e),
        },
    };
    match r {
        Ok(go) => {
            tally.files += 1;
            go
        }
        Err(e) => {
            tally.unreadable += 1;
            eprintln!("bpgate audit: cannot read {}: {e}", input.src);
            true
        }
    }
}

/// Exit code after a run that read `tally`.
fn exit_code(tally: &Tally) -> ExitCode {
    tally.report();
    if tally.unreadable > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
