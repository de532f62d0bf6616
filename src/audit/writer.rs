//! The audit writer: a bounded queue to one thread that owns the files.
//!
//! Nothing is dropped. A full queue makes the sender wait (back-pressure on the proxy, like a
//! synchronous write), a write error keeps the batch in memory and retries it, and shutdown
//! drains the queue and flushes before the process exits. The thread sleeps `flush_interval`
//! between batches, so under load one wake-up and one `write` carry hundreds of lines.
//!
//! Files: the current file is always `<dir>/audit.jsonl` (what `tail -F` follows). Rotation closes
//! it, renames it to `audit-YYYYMMDDTHHMMSSZ.jsonl` and opens a new `audit.jsonl`; it happens only
//! between lines, so no line is ever split across files.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::record::{encode, Record};
use crate::config::{OnFailure, Rotation};

pub const CURRENT_FILE: &str = "audit.jsonl";

/// Settings the writer thread needs.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub dir: PathBuf,
    pub rotation: Rotation,
    pub max_size: u64,
    pub max_files: usize,
    pub stdout: bool,
    pub queue: usize,
    pub flush_interval: Duration,
    pub on_failure: OnFailure,
}

enum Msg {
    /// An encoded line and its timestamp (Unix ms, for time-based rotation).
    Line(Vec<u8>, i64),
    Flush(SyncSender<()>),
    Rotate(SyncSender<()>),
    Reopen(SyncSender<()>),
    Stop,
}

/// Counters shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct AuditStats {
    pub lines: AtomicU64,
    pub write_errors: AtomicU64,
    pub rotations: AtomicU64,
    pub queue_depth: AtomicI64,
}

/// The sending side, cloned into the request path.
#[derive(Clone)]
pub struct AuditSink {
    tx: SyncSender<Msg>,
    pub stats: Arc<AuditStats>,
    /// False while the files cannot be written.
    healthy: Arc<AtomicBool>,
    on_failure: OnFailure,
    /// `audit.redact_query` of the generation this handle belongs to.
    redact: Arc<[String]>,
}

/// Joins the writer thread at shutdown, after a final flush.
pub struct AuditGuard {
    sink: AuditSink,
    thread: Option<JoinHandle<()>>,
}

/// Why the audit trail cannot start.
#[derive(Debug)]
pub struct AuditError(pub String);

impl std::fmt::Display for AuditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuditError {}

impl AuditSink {
    /// Creates the directory, checks it is writable, and starts the writer thread.
    pub fn start(
        s: WriterSettings,
        redact: &[String],
    ) -> Result<(AuditSink, AuditGuard), AuditError> {
        let not_writable = |e: &dyn std::fmt::Display| {
            AuditError(format!(
                "audit.dir {} is not writable: {e}; create it with write permission for bpgate's user or set BPGATE_AUDIT_DIR to a writable directory",
                s.dir.display()
            ))
        };
        std::fs::create_dir_all(&s.dir).map_err(|e| not_writable(&e))?;
        let files = Files::open(&s).map_err(|e| not_writable(&e))?;
        // A file we can append to might sit in a directory we cannot rename in; check that too.
        let probe = s.dir.join(".bpgate-write-test");
        std::fs::write(&probe, b"")
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|e| not_writable(&e))?;

        let (tx, rx) = mpsc::sync_channel(s.queue);
        let stats = Arc::new(AuditStats::default());
        let healthy = Arc::new(AtomicBool::new(true));
        let sink = AuditSink {
            tx,
            stats: stats.clone(),
            healthy: healthy.clone(),
            on_failure: s.on_failure,
            redact: redact.into(),
        };
        let thread = std::thread::Builder::new()
            .name("bpgate-audit".into())
            .spawn(move || {
                Writer {
                    s,
                    files,
                    rx,
                    stats,
                    healthy,
                    buf: Vec::with_capacity(1 << 16),
                }
                .run()
            })
            .map_err(|e| AuditError(format!("cannot start the audit writer thread: {e}")))?;
        Ok((
            sink.clone(),
            AuditGuard {
                sink,
                thread: Some(thread),
            },
        ))
    }

    /// The same writer with another redaction list (each configuration generation has its own).
    pub fn with_redaction(&self, redact: &[String]) -> AuditSink {
        AuditSink {
            redact: redact.into(),
            ..self.clone()
        }
    }

    /// Queues a line. Waits when the queue is full rather than drop it.
    pub fn write(&self, r: Record) {
        // Encoded here, on the request path, so the cost is spread evenly instead of stalling the
        // core for a whole batch when the writer wakes up.
        let mut line = Vec::with_capacity(768);
        encode(&r, &self.redact, &mut line);
        self.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
        let msg = Msg::Line(line, r.ts_ms);
        let msg = match self.tx.try_send(msg) {
            Ok(()) => return,
            Err(TrySendError::Full(m)) => m,
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!("audit line written after the writer stopped");
                return;
            }
        };
        // Back-pressure: this blocks the worker thread until the writer catches up.
        if self.tx.send(msg).is_err() {
            tracing::error!("audit line written after the writer stopped");
        }
    }

    /// Whether requests must be refused: the files cannot be written and `on_failure = block`.
    pub fn refusing(&self) -> bool {
        self.on_failure == OnFailure::Block && !self.healthy.load(Ordering::Relaxed)
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Waits until every line queued so far is written (or retried into memory).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(30));
        }
    }

    /// Reopens `audit.jsonl` by name, for external rotation (logrotate moving the file away):
    /// the next lines go to the file now at that path (admin `POST /audit/reopen`).
    pub fn reopen(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Reopen(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(30));
        }
    }

    /// Rotates now (admin `POST /audit/rotate`, tests).
    pub fn rotate(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Rotate(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(30));
        }
    }
}

impl AuditGuard {
    pub fn sink(&self) -> &AuditSink {
        &self.sink
    }

    /// Writes everything queued, then stops the writer thread and waits for it.
    pub fn shutdown(mut self) {
        self.sink.flush();
        let _ = self.sink.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Writer {
    s: WriterSettings,
    files: Files,
    rx: Receiver<Msg>,
    stats: Arc<AuditStats>,
    healthy: Arc<AtomicBool>,
    buf: Vec<u8>,
}

impl Writer {
    fn run(mut self) {
        loop {
            let first = match self.rx.recv() {
                Ok(m) => m,
                Err(_) => break,
            };
            let mut acks = Vec::new();
            let mut stop = self.handle(first, &mut acks);
            while !stop {
                let Ok(m) = self.rx.try_recv() else { break };
                stop = self.handle(m, &mut acks);
                if self.buf.len() >= 256 << 10 {
                    self.write_out();
                }
            }
            self.write_out();
            for a in acks {
                let _ = a.send(());
            }
            if stop {
                return;
            }
            // Let lines accumulate: senders only wake us when we wait in recv().
            std::thread::sleep(self.s.flush_interval);
        }
        self.write_out();
    }

    /// Returns true on `Stop`.
    fn handle(&mut self, m: Msg, acks: &mut Vec<SyncSender<()>>) -> bool {
        match m {
            Msg::Line(line, now) => {
                self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                let line_len = line.len() as u64;
                // Rotate between lines when this one would pass the size cap or the period changed.
                if self.files.due(&self.s, line_len, now) {
                    self.write_out();
                    self.rotate_now();
                }
                self.buf.extend_from_slice(&line);
                self.files.pending += line_len;
                self.stats.lines.fetch_add(1, Ordering::Relaxed);
            }
            Msg::Flush(ack) => acks.push(ack),
            Msg::Rotate(ack) => {
                self.write_out();
                self.rotate_now();
                acks.push(ack);
            }
            Msg::Reopen(ack) => {
                self.write_out();
                if let Err(e) = self.files.reopen() {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "cannot reopen the audit file; keeping the current one");
                }
                acks.push(ack);
            }
            Msg::Stop => return true,
        }
        false
    }

    /// Writes the buffer; on failure keeps it and retries until it succeeds.
    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut delay = Duration::from_millis(100);
        loop {
            match self.files.append(&self.buf) {
                Ok(()) => break,
                Err(e) => {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    if self.healthy.swap(false, Ordering::Relaxed) {
                        tracing::error!(error = %e, dir = %self.s.dir.display(), lines_waiting = self.buf.iter().filter(|b| **b == b'\n').count(), "cannot write the audit trail; retrying (on_failure = {:?})", self.s.on_failure);
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                    // A deleted or replaced file: reopen before retrying.
                    let _ = self.files.reopen();
                }
            }
        }
        if self.s.stdout {
            let mut out = io::stdout().lock();
            let _ = out.write_all(&self.buf).and_then(|_| out.flush());
        }
        self.files.size += self.buf.len() as u64;
        self.files.pending = 0;
        self.buf.clear();
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!("audit trail writable again");
        }
    }

    fn rotate_now(&mut self) {
        match self.files.rotate(&self.s) {
            Ok(()) => {
                self.stats.rotations.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "audit rotation failed; continuing in the current file");
            }
        }
    }
}

/// The current file and its bookkeeping.
struct Files {
    dir: PathBuf,
    file: File,
    /// Bytes in the current file (written) and encoded but not yet written.
    size: u64,
    pending: u64,
    /// The rotation period (Unix ms of its start) the current file belongs to.
    period: i64,
}

impl Files {
    fn open(s: &WriterSettings) -> io::Result<Files> {
        let path = s.dir.join(CURRENT_FILE);
        let file = open_append(&path)?;
        let meta = file.metadata()?;
        let mtime_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            .unwrap_or_else(super::record::now_ms);
        let period = if meta.len() == 0 {
            period_start(s.rotation, super::record::now_ms())
        } else {
            period_start(s.rotation, mtime_ms)
        };
        Ok(Files {
            dir: s.dir.clone(),
            file,
            size: meta.len(),
            pending: 0,
            period,
        })
    }

    fn due(&self, s: &WriterSettings, line_len: u64, now_ms: i64) -> bool {
        let size = self.size + self.pending;
        let by_size = s.max_size > 0 && size > 0 && size + line_len > s.max_size;
        let by_time =
            s.rotation != Rotation::Never && period_start(s.rotation, now_ms) != self.period;
        by_size || by_time
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)
    }

    fn reopen(&mut self) -> io::Result<()> {
        let file = open_append(&self.dir.join(CURRENT_FILE))?;
        self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.file = file;
        Ok(())
    }

    fn rotate(&mut self, s: &WriterSettings) -> io::Result<()> {
        self.file.flush()?;
        let now = super::record::now_ms();
        let stamp = time::OffsetDateTime::from_unix_timestamp(now / 1000)
            .map(|t| {
                format!(
                    "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
                    t.year(),
                    t.month() as u8,
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second()
                )
            })
            .unwrap_or_else(|_| now.to_string());
        let mut target = self.dir.join(rotated_name(&stamp, 0));
        let mut n = 1;
        while target.exists() {
            target = self.dir.join(rotated_name(&stamp, n));
            n += 1;
        }
        std::fs::rename(self.dir.join(CURRENT_FILE), &target)?;
        self.file = open_append(&self.dir.join(CURRENT_FILE))?;
        self.size = 0;
        self.pending = 0;
        self.period = period_start(s.rotation, now);
        prune(&self.dir, s.max_files);
        Ok(())
    }
}

/// Opens (creating) an audit file for appending. A new file is `0640`: the trail names users and
/// their addresses, so it is readable by bpgate's user and group (a log shipper), not by others.
/// Rotated files keep it, as rotation renames.
fn open_append(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o640);
    }
    o.open(path)
}

/// Start (Unix ms, UTC) of the rotation period containing `ms`.
fn period_start(r: Rotation, ms: i64) -> i64 {
    let len = match r {
        Rotation::Daily => 86_400_000,
        Rotation::Hourly => 3_600_000,
        Rotation::Never => return 0,
    };
    ms - ms.rem_euclid(len)
}

/// The name rotation gives the file it closes: `audit-YYYYMMDDTHHMMSSZ.jsonl`, and
/// `audit-YYYYMMDDTHHMMSSZ-N.jsonl` for the N-th further rotation within the same second.
pub fn rotated_name(stamp: &str, n: u32) -> String {
    if n == 0 {
        format!("audit-{stamp}.jsonl")
    } else {
        format!("audit-{stamp}-{n}.jsonl")
    }
}

/// A rotated file's place in time, from its name: the rotation's UTC stamp
/// (`YYYYMMDDTHHMMSSZ`) and its sequence number within that second. `None` for any other name.
/// Byte order is not time order (`…Z-1.jsonl` sorts before `…Z.jsonl`, `-10` before `-2`), so
/// anything that orders rotated files compares these keys.
pub fn rotated_key(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    let (stamp, n) = match rest.split_once('-') {
        Some((stamp, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (stamp, n.parse().ok()?)
        }
        Some(_) => return None,
        None => (rest, 0),
    };
    let b = stamp.as_bytes();
    let shape = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    shape.then_some((stamp, n))
}

/// Keeps the newest `max` rotated files (ordered by [`rotated_key`]).
fn prune(dir: &Path, max: usize) {
    if max == 0 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut rotated: Vec<(String, u32, PathBuf)> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let (stamp, n) = rotated_key(p.file_name()?.to_str()?)?;
            Some((stamp.to_string(), n, p.clone()))
        })
        .collect();
    if rotated.len() <= max {
        return;
    }
    rotated.sort();
    for (_, _, p) in &rotated[..rotated.len() - max] {
        if let Err(e) = std::fs::remove_file(p) {
            tracing::warn!(file = %p.display(), error = %e, "cannot remove an old audit file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names_order_by_time_not_bytes() {
        let names = [
            "audit-20261124T100000Z-10.jsonl",
            "audit-20261124T100000Z-2.jsonl",
            "audit-20261124T100000Z.jsonl",
            "audit-20261124T095959Z.jsonl",
            "audit.jsonl",
            "audit-2026.jsonl",
            "audit-20261124T100000Z-x.jsonl",
            "audit-20261124T100000Z.jsonl.gz",
        ];
        let mut keys: Vec<_> = names.iter().filter_map(|n| rotated_key(n)).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                ("20261124T095959Z", 0),
                ("20261124T100000Z", 0),
                ("20261124T100000Z", 2),
                ("20261124T100000Z", 10)
            ]
        );
        assert_eq!(
            rotated_key(&rotated_name("20261124T100000Z", 3)),
            Some(("20261124T100000Z", 3))
        );
    }

    #[test]
    fn prune_keeps_the_newest_by_time() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "audit-20261124T100000Z.jsonl",
            "audit-20261124T100000Z-1.jsonl",
            "audit-20261124T100000Z-2.jsonl",
            "audit.jsonl",
        ] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        prune(dir.path(), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "audit-20261124T100000Z-1.jsonl",
                "audit-20261124T100000Z-2.jsonl",
                "audit.jsonl"
            ]
        );
    }
}
