//! Where lines come from: the files of an audit directory in time order, files named on the
//! command line, standard input; reading them line by line in bounded memory; and following the
//! current file across rotations the way `tail -F` does.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::entry::stamp_ms;
use super::filter::Filter;
use crate::audit::writer::{rotated_key, CURRENT_FILE};

/// Longest line read; a longer one is skipped and counted as malformed, so a file without
/// newlines cannot make the reader's memory grow without bound.
pub const MAX_LINE: usize = 4 << 20;

/// Slack when a rotated file's name is used to skip it for a time window. A line's `ts` is when
/// its exchange ended; it reaches the file a few milliseconds later, so a file can hold lines a
/// little older than the previous rotation.
pub const SKEW_MS: i64 = 60_000;

/// How long a file that was rotated away is still read after the name moved on: when something
/// else than bpgate moved it (logrotate), bpgate writes there until `POST /audit/reopen`.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Src {
    Path(PathBuf),
    Stdin,
}

impl std::fmt::Display for Src {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Src::Path(p) => write!(f, "{}", p.display()),
            Src::Stdin => f.write_str("(stdin)"),
        }
    }
}

/// One file (or stdin) to read, with what its name says about its times.
#[derive(Debug, Clone)]
pub struct Input {
    pub src: Src,
    /// A rotated file holds lines from before its rotation stamp (+1 s: the stamp has seconds).
    pub before_ms: Option<i64>,
    /// A file in a trail holds lines from after the previous rotation.
    pub after_ms: Option<i64>,
    /// May still grow: a trail's `audit.jsonl`, any file not named as a rotation, stdin.
    pub live: bool,
    /// Found in a directory rather than named: it may be pruned (`max_files`) while we read.
    pub listed: bool,
    key: (u8, String, u32, usize),
}

impl Input {
    /// Whether the file can hold lines in the filter's window (by its name alone).
    pub fn may_hold(&self, f: &Filter) -> bool {
        let ends_too_early =
            matches!((self.before_ms, f.since), (Some(b), Some(s)) if b + SKEW_MS < s);
        let starts_too_late =
            matches!((self.after_ms, f.until), (Some(a), Some(u)) if a - SKEW_MS >= u);
        !(ends_too_early || starts_too_late)
    }
}

/// A directory that cannot be listed.
#[derive(Debug)]
pub struct ListError {
    pub dir: PathBuf,
    pub error: io::Error,
}

impl std::fmt::Display for ListError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot read the audit directory {}: {}",
            self.dir.display(),
            self.error
        )
    }
}

/// A rotated file: its name's stamp and sequence, path, and identity.
type Rotated = (String, u32, PathBuf, Option<(u64, u64)>);

/// The trail in `dir`: rotated files oldest first, then `audit.jsonl`. With `want_current`, the
/// current file is listed even when it does not exist yet (to be followed).
pub fn list_dir(dir: &Path, want_current: bool, idx: usize) -> Result<Vec<Input>, ListError> {
    let rd = std::fs::read_dir(dir).map_err(|error| ListError {
        dir: dir.to_path_buf(),
        error,
    })?;
    let mut rotated: Vec<(String, u32, PathBuf)> = Vec::new();
    let mut current = false;
    for ent in rd.flatten() {
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == CURRENT_FILE {
            current = true;
        } else if let Some((stamp, n)) = rotated_key(name) {
            rotated.push((stamp.to_string(), n, ent.path()));
        }
    }
    rotated.sort();
    let mut out = Vec::with_capacity(rotated.len() + 1);
    let mut prev: Option<i64> = None;
    for (stamp, n, path) in rotated {
        let at = stamp_ms(&stamp);
        out.push(Input {
            src: Src::Path(path),
            before_ms: at.map(|t| t + 1000),
            after_ms: prev,
            live: false,
            listed: true,
            key: (0, stamp, n, idx),
        });
        prev = at.or(prev);
    }
    if current || want_current {
        out.push(Input {
            src: Src::Path(dir.join(CURRENT_FILE)),
            before_ms: None,
            after_ms: prev,
            live: true,
            listed: true,
            key: (1, String::new(), 0, idx),
        });
    }
    Ok(out)
}

/// What to read: the configured trail when `args` is empty, else each argument (`-` is stdin,
/// a directory its trail). Files named as rotation names them come first in time order, then
/// the others in the order given: so `dir/*.jsonl` reads in time order too.
pub fn inputs(args: &[PathBuf], dir: Option<&Path>, follow: bool) -> Result<Vec<Input>, ListError> {
    let mut out = Vec::new();
    if args.is_empty() {
        return match dir {
            Some(dir) => list_dir(dir, follow, 0),
            None => Ok(Vec::new()),
        };
    }
    for (i, a) in args.iter().enumerate() {
        if a.as_os_str() == "-" {
            out.push(Input {
                src: Src::Stdin,
                before_ms: None,
                after_ms: None,
                live: true,
                listed: false,
                key: (1, String::new(), 0, i),
            });
        } else if a.is_dir() {
            out.extend(list_dir(a, follow, i)?);
        } else {
            let rot = a
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(rotated_key)
                .map(|(s, n)| (s.to_string(), n));
            out.push(match rot {
                Some((stamp, n)) => Input {
                    src: Src::Path(a.clone()),
                    before_ms: stamp_ms(&stamp).map(|t| t + 1000),
                    after_ms: None,
                    live: false,
                    listed: false,
                    key: (0, stamp, n, i),
                },
                None => Input {
                    src: Src::Path(a.clone()),
                    before_ms: None,
                    after_ms: None,
                    live: true,
                    listed: false,
                    key: (1, String::new(), 0, i),
                },
            });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// One step of reading.
pub enum Next<'a> {
    Line(&'a [u8]),
    /// A line longer than [`MAX_LINE`] was skipped.
    TooLong,
    /// No more data for now (a partial last line stays buffered).
    Eof,
}

/// Lines from a reader, in a buffer reused across lines (grown only for a long line, up to
/// [`MAX_LINE`]).
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    skipping: bool,
    /// Bytes taken from `inner` so far (the file position, for truncation checks).
    pub offset: u64,
    /// Lines returned so far (for messages).
    pub line_no: u64,
}

impl<R: Read> LineReader<R> {
    pub fn new(inner: R) -> Self {
        LineReader {
            inner,
            buf: vec![0; 256 << 10],
            pos: 0,
            len: 0,
            skipping: false,
            offset: 0,
            line_no: 0,
        }
    }

    pub fn next_line(&mut self) -> io::Result<Next<'_>> {
        enum Found {
            Line(usize, usize),
            TooLong,
            Eof,
        }
        let found = loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.pos..self.len]) {
                let (s, e) = (self.pos, self.pos + i);
                self.pos = e + 1;
                self.line_no += 1;
                if self.skipping {
                    self.skipping = false;
                    break Found::TooLong;
                }
                break Found::Line(s, e);
            }
            if self.skipping {
                self.pos = self.len;
            }
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.len, 0);
                self.len -= self.pos;
                self.pos = 0;
            }
            if self.len == self.buf.len() {
                if self.buf.len() >= MAX_LINE {
                    self.skipping = true;
                    self.len = 0;
                } else {
                    let n = (self.buf.len() * 2).min(MAX_LINE);
                    self.buf.resize(n, 0);
                }
            }
            let n = match self.inner.read(&mut self.buf[self.len..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                break Found::Eof;
            }
            self.len += n;
            self.offset += n as u64;
        };
        Ok(match found {
            Found::Line(s, e) => Next::Line(&self.buf[s..e]),
            Found::TooLong => Next::TooLong,
            Found::Eof => Next::Eof,
        })
    }

    /// The unterminated rest at EOF, taken out of the buffer. `Err(())` when that rest was the
    /// tail of an over-long line.
    pub fn take_partial(&mut self) -> Result<Option<&[u8]>, ()> {
        if self.skipping {
            self.skipping = false;
            self.pos = self.len;
            return Err(());
        }
        if self.pos == self.len {
            return Ok(None);
        }
        let (s, e) = (self.pos, self.len);
        self.pos = self.len;
        self.line_no += 1;
        Ok(Some(&self.buf[s..e]))
    }

    fn clear(&mut self) {
        self.pos = 0;
        self.len = 0;
        self.skipping = false;
    }

    /// The buffer shrinks back after a long line.
    fn shrink(&mut self) {
        if self.buf.len() > 256 << 10 && self.len - self.pos <= 256 << 10 {
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
            self.buf.truncate(256 << 10);
            self.buf.shrink_to_fit();
        }
    }
}

/// What a reader hands the consumer.
pub enum Item<'a> {
    Line(&'a [u8]),
    /// Not a line: too long, or the unterminated end of a file that will not grow any more.
    Broken(&'static str),
}

/// Feeds every complete line, then (with `finished`) the unterminated rest, to `f`.
pub fn drain<R: Read>(
    r: &mut LineReader<R>,
    finished: bool,
    f: &mut dyn FnMut(Item<'_>, u64) -> bool,
) -> io::Result<bool> {
    loop {
        let no = r.line_no + 1;
        match r.next_line()? {
            Next::Line(l) => {
                if !f(Item::Line(l), no) {
                    return Ok(false);
                }
            }
            Next::TooLong => {
                if !f(Item::Broken("longer than 4 MiB"), no) {
                    return Ok(false);
                }
            }
            Next::Eof => break,
        }
    }
    r.shrink();
    if finished {
        let no = r.line_no + 1;
        let go = match r.take_partial() {
            Ok(Some(l)) => f(Item::Line(l), no),
            Ok(None) => true,
            Err(()) => f(Item::Broken("longer than 4 MiB"), no),
        };
        return Ok(go);
    }
    Ok(true)
}

/// Reads `file`'s lines backwards from byte `end`, newest first, handing each with its start
/// offset to `f` until it returns false: the last lines of a large file cost what they weigh,
/// not the file. The bytes after the last newline are an unterminated line: handed over only
/// with `partial` (a file nobody writes any more). Returns the offset just after the last
/// newline, where a follower resumes.
pub fn scan_back(
    file: &mut File,
    end: u64,
    partial: bool,
    f: &mut dyn FnMut(Item<'_>, u64) -> bool,
) -> io::Result<u64> {
    const CHUNK: u64 = 256 << 10;
    let mut pos = end;
    // Bytes at [pos, pos + buf.len()): the start of a line whose beginning is not read yet.
    let mut buf: Vec<u8> = Vec::new();
    let mut resume: Option<u64> = None;
    let mut skipping = false;
    let mut go = true;
    while go && pos > 0 {
        let from = pos.saturating_sub(CHUNK);
        let mut chunk = vec![0; (pos - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut chunk)?;
        if skipping {
            // The rest of an over-long line ends at this chunk's last newline.
            match memchr::memrchr(b'\n', &chunk) {
                Some(nl) => {
                    // That newline ends the line before: the loop below yields it as the
                    // segment after the newline before it.
                    chunk.truncate(nl);
                    skipping = false;
                }
                None => chunk.clear(),
            }
            buf.clear();
        }
        chunk.extend_from_slice(&buf);
        buf = chunk;
        pos = from;
        let mut stop = buf.len();
        while let Some(nl) = memchr::memrchr(b'\n', &buf[..stop]) {
            let line = &buf[nl + 1..stop];
            let start = pos + nl as u64 + 1;
            if resume.is_none() {
                resume = Some(start);
                if partial && !line.is_empty() && !f(Item::Line(line), start) {
                    go = false;
                    break;
                }
            } else if !f(Item::Line(line), start) {
                go = false;
                break;
            }
            stop = nl;
        }
        buf.truncate(stop);
        if go && buf.len() > MAX_LINE {
            go = f(Item::Broken("longer than 4 MiB"), pos);
            buf.clear();
            skipping = pos > 0;
        }
    }
    if go && pos == 0 && !skipping {
        // The file's first line (or, without any newline, its only and unterminated one).
        match resume {
            Some(_) => {
                if !buf.is_empty() {
                    f(Item::Line(&buf), 0);
                }
            }
            None => {
                resume = Some(0);
                if partial && !buf.is_empty() {
                    f(Item::Line(&buf), 0);
                }
            }
        }
    }
    Ok(resume.unwrap_or(0))
}

/// Identity of an open file, to see that a name now points at another file.
#[cfg(unix)]
fn file_id(m: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(_: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

pub fn path_id(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().as_ref().and_then(file_id)
}

struct Open {
    r: LineReader<File>,
    id: Option<(u64, u64)>,
}

impl Open {
    fn at(path: &Path) -> io::Result<Open> {
        let f = File::open(path)?;
        let id = f.metadata().ok().as_ref().and_then(file_id);
        Ok(Open {
            r: LineReader::new(f),
            id,
        })
    }
}

/// Follows a path by name across rotations, renames and replacements, like `tail -F`.
pub struct Follower {
    pub path: PathBuf,
    cur: Option<Open>,
    /// Files the name moved away from, read for a while in case they are still written.
    old: Vec<(Open, Instant, u64)>,
    missing_noted: bool,
}

/// Something worth telling the operator on stderr while following.
pub type Notes<'a> = &'a mut dyn FnMut(String);

impl Follower {
    /// Opens the file now (if it exists), so that nothing written from here on is missed.
    pub fn open(path: &Path) -> io::Result<Follower> {
        let cur = match Open::at(path) {
            Ok(o) => Some(o),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(Follower {
            path: path.to_path_buf(),
            cur,
            old: Vec::new(),
            missing_noted: false,
        })
    }

    /// The identity of the file being read.
    pub fn id(&self) -> Option<(u64, u64)> {
        self.cur.as_ref().and_then(|o| o.id)
    }

    /// The file being read (a second handle) and its length now, for reading its end
    /// backwards before following.
    pub fn snapshot(&self) -> io::Result<Option<(File, u64)>> {
        match self.cur.as_ref() {
            Some(o) => {
                let f = o.r.inner.try_clone()?;
                let len = f.metadata()?.len();
                Ok(Some((f, len)))
            }
            None => Ok(None),
        }
    }

    /// Continues the current file from byte `offset`.
    pub fn start_at(&mut self, offset: u64) -> io::Result<()> {
        if let Some(o) = self.cur.as_mut() {
            o.r.inner.seek(SeekFrom::Start(offset))?;
            o.r.clear();
            o.r.offset = offset;
        }
        Ok(())
    }

    /// Reads what the current file holds now (the history before following).
    pub fn drain_current(&mut self, f: &mut dyn FnMut(Item<'_>, u64) -> bool) -> io::Result<bool> {
        match self.cur.as_mut() {
            Some(o) => drain(&mut o.r, false, f),
            None => Ok(true),
        }
    }

    /// One round: new lines of the current file, a rotation or replacement of the name,
    /// truncation, and lines still arriving in files rotated away.
    pub fn poll(
        &mut self,
        f: &mut dyn FnMut(Item<'_>, u64) -> bool,
        note: Notes,
    ) -> io::Result<bool> {
        if let Some(o) = self.cur.as_mut() {
            if !drain(&mut o.r, false, f)? {
                return Ok(false);
            }
        }
        match std::fs::metadata(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Between a rename and the new file, or not created yet.
                if self.cur.is_none() && !self.missing_noted {
                    note(format!(
                        "{} does not exist yet; waiting for it",
                        self.path.display()
                    ));
                    self.missing_noted = true;
                }
            }
            Err(e) => return Err(e),
            Ok(meta) => {
                let id = file_id(&meta);
                let replaced = match &self.cur {
                    None => true,
                    Some(o) => o.id.is_some() && o.id != id,
                };
                if replaced {
                    match Open::at(&self.path) {
                        Ok(new) => {
                            if let Some(mut old) = self.cur.take() {
                                // What was written before the rename comes first.
                                if !drain(&mut old.r, false, f)? {
                                    return Ok(false);
                                }
                                if !self.catch_up(old.id, new.id, f) {
                                    return Ok(false);
                                }
                                let off = old.r.offset;
                                self.old.push((old, Instant::now(), off));
                            } else if self.missing_noted {
                                note(format!(
                                    "{} has appeared; following it",
                                    self.path.display()
                                ));
                            }
                            self.missing_noted = false;
                            self.cur = Some(new);
                            if let Some(o) = self.cur.as_mut() {
                                if !drain(&mut o.r, false, f)? {
                                    return Ok(false);
                                }
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                } else if let Some(o) = self.cur.as_mut() {
                    if meta.len() < o.r.offset {
                        note(format!(
                            "{} was truncated; reading it from the start",
                            self.path.display()
                        ));
                        o.r.get_mut().seek(SeekFrom::Start(0))?;
                        o.r.clear();
                        o.r.offset = 0;
                        if !drain(&mut o.r, false, f)? {
                            return Ok(false);
                        }
                    }
                }
            }
        }
        let mut keep = Vec::with_capacity(self.old.len());
        for (mut o, mut since, seen) in std::mem::take(&mut self.old) {
            if !drain(&mut o.r, false, f)? {
                return Ok(false);
            }
            if o.r.offset != seen {
                since = Instant::now();
            }
            if since.elapsed() < GRACE {
                let off = o.r.offset;
                keep.push((o, since, off));
            } else if !drain(&mut o.r, true, f)? {
                // The unterminated end of a file nobody writes any more is a torn line.
                return Ok(false);
            }
        }
        self.old = keep;
        Ok(true)
    }
}

impl Follower {
    /// After the name moved on from the file `held`: bpgate may have rotated more than once
    /// since the last poll (a size cap under load), leaving files we never held. When `held`
    /// now has a rotated name, every rotated file named later (other than `new`) is such a file:
    /// read them whole, in time order, before the new current file.
    fn catch_up(
        &self,
        held: Option<(u64, u64)>,
        new: Option<(u64, u64)>,
        f: &mut dyn FnMut(Item<'_>, u64) -> bool,
    ) -> bool {
        if self.path.file_name().is_none_or(|n| n != CURRENT_FILE) || held.is_none() {
            return true;
        }
        let Some(dir) = self.path.parent() else {
            return true;
        };
        let Ok(rd) = std::fs::read_dir(dir) else {
            return true;
        };
        let mut rotated: Vec<Rotated> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let (stamp, n) = rotated_key(name.to_str()?)?;
                let id = e.metadata().ok().as_ref().and_then(file_id);
                Some((stamp.to_string(), n, e.path(), id))
            })
            .collect();
        rotated.sort();
        let Some(at) = rotated.iter().position(|r| r.3 == held) else {
            // Moved to a name of someone else's choosing (logrotate): nothing to infer.
            return true;
        };
        for (_, _, path, id) in &rotated[at + 1..] {
            if *id == new {
                continue;
            }
            let Ok(file) = File::open(path) else { continue };
            let mut r = LineReader::new(file);
            match drain(&mut r, true, f) {
                Ok(true) => {}
                Ok(false) => return false,
                Err(_) => {}
            }
        }
        true
    }
}

impl<R> LineReader<R> {
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect<R: Read>(r: &mut LineReader<R>, finished: bool) -> Vec<String> {
        let mut v = Vec::new();
        drain(r, finished, &mut |i, _| {
            v.push(match i {
                Item::Line(l) => String::from_utf8_lossy(l).into_owned(),
                Item::Broken(why) => format!("<{why}>"),
            });
            true
        })
        .unwrap();
        v
    }

    #[test]
    fn lines_partial_and_too_long() {
        let mut data = b"a\nbb\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        data.extend(b"\nccc\ntail");
        let mut r = LineReader::new(&data[..]);
        assert_eq!(
            collect(&mut r, false),
            ["a", "bb", "<longer than 4 MiB>", "ccc"]
        );
        assert_eq!(r.buf.len(), 256 << 10, "the buffer shrinks back");
        assert_eq!(collect(&mut r, true), ["tail"]);
        assert_eq!(r.line_no, 5);
    }

    fn back(data: &[u8], partial: bool, limit: usize) -> (Vec<String>, u64) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, data).unwrap();
        let mut f = File::open(&p).unwrap();
        let mut v = Vec::new();
        let resume = scan_back(&mut f, data.len() as u64, partial, &mut |i, at| {
            v.push(match i {
                Item::Line(l) => format!("{}@{at}", String::from_utf8_lossy(l)),
                Item::Broken(why) => format!("<{why}>@{at}"),
            });
            v.len() < limit
        })
        .unwrap();
        (v, resume)
    }

    #[test]
    fn backwards_newest_first() {
        assert_eq!(
            back(b"a\nbb\nccc\n", false, 9),
            (vec!["ccc@5".into(), "bb@2".into(), "a@0".into()], 9)
        );
        assert_eq!(
            back(b"a\nbb\ncc", false, 9),
            (vec!["bb@2".into(), "a@0".into()], 5)
        );
        assert_eq!(back(b"a\nbb\ncc", true, 9).0, ["cc@5", "bb@2", "a@0"]);
        assert_eq!(back(b"a\nbb\ncc", true, 2).0, ["cc@5", "bb@2"]);
        assert_eq!(back(b"only", false, 9), (vec![], 0));
        assert_eq!(back(b"", true, 9), (vec![], 0));
        // Lines across chunk boundaries, and an over-long one skipped whole.
        let mut data = Vec::new();
        for i in 0..50_000 {
            data.extend(format!("line{i}\n").bytes());
        }
        data.extend(std::iter::repeat_n(b'x', MAX_LINE + 300_000));
        data.extend(b"\nlast\n");
        let (v, _) = back(&data, false, 100_000);
        assert_eq!(v.len(), 50_002);
        assert_eq!(v[0], format!("last@{}", data.len() - 5));
        assert!(v[1].starts_with("<longer than 4 MiB>"), "{}", v[1]);
        assert_eq!(v[2], "line49999@488880");
        assert_eq!(v[50_001], "line0@0");
    }

    #[test]
    fn list_orders_rotations_by_time() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "audit-20261124T100000Z-1.jsonl",
            "audit-20261124T100000Z.jsonl",
            "audit-20261124T090000Z.jsonl",
            "audit.jsonl",
            "notes.txt",
            "audit-20261124T080000Z.jsonl.gz",
        ] {
            std::fs::write(d.path().join(n), b"").unwrap();
        }
        let l = list_dir(d.path(), false, 0).unwrap();
        let names: Vec<String> = l
            .iter()
            .map(|i| match &i.src {
                Src::Path(p) => p.file_name().unwrap().to_string_lossy().into_owned(),
                Src::Stdin => "-".into(),
            })
            .collect();
        assert_eq!(
            names,
            [
                "audit-20261124T090000Z.jsonl",
                "audit-20261124T100000Z.jsonl",
                "audit-20261124T100000Z-1.jsonl",
                "audit.jsonl"
            ]
        );
        assert_eq!(l[0].after_ms, None);
        assert_eq!(l[1].after_ms, l[0].before_ms.map(|b| b - 1000));
        assert!(l[3].live && !l[0].live);
    }
}
