//! The audit writer: a queue to one thread that owns the files.
//!
//! Nothing is dropped, and nothing on the request path ever waits on a lock held across I/O or
//! on a full channel: the request path appends an encoded line to a queue under a short lock and
//! goes on. Memory stays bounded another way: while `audit.queue` lines are held (queued or being
//! written), new requests wait for room *asynchronously*, before they start ([`AuditSink::poll_room`]),
//! so a stalled disk slows admission without stalling the runtime's threads, the admin API, TLS
//! handshakes or the exchanges already running (their lines are always taken).
//!
//! Every line has a sequence number; the writer publishes how many are written (with
//! `durability = "synced"`: written and synced), so an answer can wait until its own line is in
//! the file ([`AuditSink::poll_committed`]). That is a group commit: a relay task on the runtime
//! hands the writer the lines of a few scheduler passes at once and wakes the answers whose lines
//! are written, so a batch costs one wake-up each way instead of one per line ([`relay`]).
//! A write error keeps the unwritten bytes and retries
//! from exactly the byte where the failed write stopped, so a write that fails part-way (a full
//! disk, a file size limit) never leaves a torn line. A write that fails or has been stuck for
//! [`STALL`] marks the trail unwritable: `on_failure = "block"` then refuses new requests, and
//! answers waiting for their lines are released (their lines stay queued).
//!
//! Files: the current file is always `<dir>/audit.jsonl` (what `tail -F` follows). Rotation closes
//! it, renames it to `audit-YYYYMMDDTHHMMSSZ.jsonl` and opens a new `audit.jsonl`; it happens only
//! between lines, so no line is ever split across files. Time-based rotation follows the
//! writer's [`Clock`] (injectable for tests) and happens at the period boundary even when no line
//! arrives.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::record::{encode, now_ms, Record};
use crate::config::{Durability, OnFailure, Rotation};

pub const CURRENT_FILE: &str = "audit.jsonl";

/// Scheduler passes the relay lets run before handing queued lines to the writer (see
/// [`relay`]). Measured with `benches/paired` (small answers, one worker, CPU per request
/// against the build before write-ahead, which was 1.02 with `durability = "batched"`): 1 pass
/// 1.07-1.08, 2 passes 1.05, 3 passes 1.02-1.035, 6 passes 1.025. The latency it adds is that
/// many passes of the scheduler (microseconds when idle).
const GROUP_PASSES: usize = 3;

/// A write that has not returned for this long marks the trail unwritable (a hung network
/// filesystem, a FIFO nobody reads), exactly like a write error.
pub const STALL: Duration = Duration::from_secs(2);

/// The writer's time source, Unix milliseconds (UTC). Tests inject their own to cross rotation
/// boundaries.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(now_ms)
}

/// Settings the writer thread needs.
#[derive(Clone)]
pub struct WriterSettings {
    pub dir: PathBuf,
    pub rotation: Rotation,
    pub max_size: u64,
    pub max_files: usize,
    pub stdout: bool,
    pub queue: usize,
    pub flush_interval: Duration,
    pub on_failure: OnFailure,
    pub durability: Durability,
    pub clock: Clock,
}

impl std::fmt::Debug for WriterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterSettings")
            .field("dir", &self.dir)
            .field("rotation", &self.rotation)
            .field("max_size", &self.max_size)
            .field("max_files", &self.max_files)
            .field("queue", &self.queue)
            .field("flush_interval", &self.flush_interval)
            .field("on_failure", &self.on_failure)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

/// What the writer is asked besides writing lines.
enum Item {
    Flush(SyncSender<()>),
    Rotate(SyncSender<()>),
    Reopen(SyncSender<()>),
    Stop,
}

/// Counters shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Lines written to the file.
    pub lines: AtomicU64,
    pub write_errors: AtomicU64,
    pub rotations: AtomicU64,
    /// Lines accepted and not yet written.
    pub queue_depth: AtomicI64,
}

/// What the request path and the writer thread share.
struct Core {
    state: Mutex<State>,
    /// Wakes the writer when it waits for lines.
    wake: Condvar,
    /// Lines accepted so far; a line's sequence number is this count once it includes the line
    /// (1 for the first).
    accepted: AtomicU64,
    /// Lines written so far (with `durability = "synced"`: written and synced). Lines are
    /// written in sequence order, so every line up to this number is in the file.
    committed: AtomicU64,
    /// A write or sync failed and has not succeeded since.
    failing: AtomicBool,
    /// The write in progress has been stuck for [`STALL`].
    stalled: AtomicBool,
    relay_spawned: AtomicBool,
    /// Lines were queued since the relay last handed them to the writer.
    kick: AtomicBool,
    /// Milliseconds since `epoch` when the write in progress started (0: none in progress).
    busy_since: AtomicU64,
    epoch: Instant,
    capacity: u64,
    on_failure: OnFailure,
    durability: Durability,
    stats: Arc<AuditStats>,
}

/// What the request path hands the writer: encoded lines, one after another in one buffer (no
/// allocation per line, no per-line free on the writer thread), and requests, each with the
/// number of lines queued before it (a flush or a rotation applies to exactly those).
#[derive(Default)]
struct Batch {
    lines: Vec<u8>,
    /// Where each line ends in `lines`.
    ends: Vec<usize>,
    items: Vec<(usize, Item)>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.ends.is_empty() && self.items.is_empty()
    }

    fn clear(&mut self) {
        self.lines.clear();
        self.ends.clear();
        self.items.clear();
    }
}

#[derive(Default)]
struct State {
    queued: Batch,
    /// The writer waits on `wake` for new items: a sender must notify it.
    idle: bool,
    stopped: bool,
    /// Answers waiting for a line to be committed: (sequence number, waker).
    commits: Vec<(u64, Waker)>,
    /// Requests waiting for room in the queue.
    room: Vec<Waker>,
    /// The relay task's waker, while one runs (see [`relay`]).
    relay: Option<Waker>,
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn healthy(&self) -> bool {
        !self.failing.load(Ordering::Acquire) && !self.stalled.load(Ordering::Acquire)
    }

    fn backlog(&self) -> u64 {
        self.accepted
            .load(Ordering::Acquire)
            .saturating_sub(self.committed.load(Ordering::Acquire))
    }

    /// Queues an encoded line (with its newline); returns its sequence number.
    fn push_line(&self, line: &[u8]) -> u64 {
        let mut st = self.lock();
        let seq = self.accepted.fetch_add(1, Ordering::AcqRel) + 1;
        let q = &mut st.queued;
        q.lines.extend_from_slice(line);
        let end = q.lines.len();
        q.ends.push(end);
        self.queued(st, true);
        seq
    }

    fn push(&self, item: Item) {
        let mut st = self.lock();
        let at = st.queued.ends.len();
        st.queued.items.push((at, item));
        self.queued(st, false);
    }

    /// After queueing: wakes whoever hands the queue to the writer.
    fn queued(&self, mut st: MutexGuard<'_, State>, line: bool) {
        // A line is the relay's to hand over (once per round of the runtime); anything else,
        // or a line with no relay running, wakes the writer now.
        let relay = match &st.relay {
            Some(r) if line => (!self.kick.swap(true, Ordering::AcqRel)).then(|| r.clone()),
            _ => None,
        };
        let wake = (!line || st.relay.is_none()) && std::mem::take(&mut st.idle);
        drop(st);
        if let Some(r) = relay {
            r.wake();
        } else if wake {
            self.wake.notify_one();
        }
    }

    /// Wakes the writer if it waits for lines.
    fn kick_writer(&self) {
        let wake = std::mem::take(&mut self.lock().idle);
        if wake {
            self.wake.notify_one();
        }
    }

    fn millis(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// The answers to wake now: those whose lines are committed, or all of them while the trail
    /// cannot be written (they are released).
    fn ready_commits(&self, st: &mut State) -> Vec<Waker> {
        let mut wake = Vec::new();
        if !self.healthy() || st.stopped {
            wake.extend(st.commits.drain(..).map(|(_, w)| w));
        } else if !st.commits.is_empty() {
            let committed = self.committed.load(Ordering::Acquire);
            st.commits.retain(|(seq, w)| {
                if *seq <= committed {
                    wake.push(w.clone());
                    false
                } else {
                    true
                }
            });
        }
        wake
    }

    /// Wakes the answers whose lines are committed (see [`Core::ready_commits`]) and the
    /// requests waiting for room when there is some. Answers are woken through the relay task
    /// when one runs: one cross-thread wake-up per batch instead of one per answer.
    fn wake_waiters(&self) {
        let room = self.backlog() < self.capacity;
        let mut wake = Vec::new();
        {
            let mut st = self.lock();
            match &st.relay {
                Some(r) if !st.commits.is_empty() => wake.push(r.clone()),
                Some(_) => {}
                None => wake = self.ready_commits(&mut st),
            }
            if room {
                wake.append(&mut st.room);
            }
        }
        for w in wake {
            w.wake();
        }
    }

    /// Starts the relay on the caller's runtime, if there is one and no relay runs.
    fn ensure_relay(self: &Arc<Self>) {
        if self.relay_spawned.load(Ordering::Acquire)
            || self.relay_spawned.swap(true, Ordering::AcqRel)
        {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(relay(self.clone()));
            }
            Err(_) => self.relay_spawned.store(false, Ordering::Release),
        }
    }
}

/// Group commit, on the runtime: hands the lines the request path queued to the writer once per
/// round of the runtime (after the tasks that were ready have run), and wakes the answers whose
/// lines the writer committed. Waking the writer for every line, or each answer from the writer
/// thread, would cost a cross-thread wake-up each (and, where both share a CPU, context
/// switches).
async fn relay(core: Arc<Core>) {
    struct Gone(Arc<Core>);
    impl Drop for Gone {
        // The runtime it ran on is shutting down: the writer wakes answers itself again.
        fn drop(&mut self) {
            let wake = {
                let mut st = self.0.lock();
                st.relay = None;
                std::mem::take(&mut st.commits)
            };
            self.0.relay_spawned.store(false, Ordering::Release);
            self.0.kick_writer();
            wake.into_iter().for_each(|(_, w)| w.wake());
        }
    }
    let gone = Gone(core);
    let core = &gone.0;
    loop {
        std::future::poll_fn(|cx| {
            let mut st = core.lock();
            if !st.relay.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                st.relay = Some(cx.waker().clone());
            }
            let ready = st.stopped
                || core.kick.load(Ordering::Acquire)
                || (!st.commits.is_empty()
                    && (!core.healthy()
                        || st
                            .commits
                            .iter()
                            .any(|(seq, _)| *seq <= core.committed.load(Ordering::Acquire))));
            if ready {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        if core.kick.load(Ordering::Acquire) {
            // Let the rest of this pass of the scheduler, and a few more passes with the I/O
            // they find, add their lines first: one write, one wake-up of the writer and one of
            // this relay then carry them all.
            for _ in 0..GROUP_PASSES {
                tokio::task::yield_now().await;
            }
            if core.kick.swap(false, Ordering::AcqRel) {
                core.kick_writer();
            }
        }
        let (wake, stopped) = {
            let mut st = core.lock();
            (core.ready_commits(&mut st), st.stopped)
        };
        wake.into_iter().for_each(Waker::wake);
        if stopped {
            return;
        }
    }
}

/// The sending side, cloned into the request path.
#[derive(Clone)]
pub struct AuditSink {
    core: Arc<Core>,
    pub stats: Arc<AuditStats>,
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
    /// Creates the directory, checks it is writable, and starts the writer thread (and its
    /// watchdog).
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

        let stats = Arc::new(AuditStats::default());
        let core = Arc::new(Core {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            accepted: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            relay_spawned: AtomicBool::new(false),
            kick: AtomicBool::new(false),
            busy_since: AtomicU64::new(0),
            epoch: Instant::now(),
            capacity: s.queue.max(1) as u64,
            on_failure: s.on_failure,
            durability: s.durability,
            stats: stats.clone(),
        });
        let sink = AuditSink {
            core: core.clone(),
            stats,
            redact: redact.into(),
        };
        let writer = Writer {
            core: core.clone(),
            s,
            files,
            buf: Vec::with_capacity(1 << 16),
            buf_lines: 0,
            spare: Batch::default(),
        };
        let thread = std::thread::Builder::new()
            .name("bpgate-audit".into())
            .spawn(move || writer.run())
            .map_err(|e| AuditError(format!("cannot start the audit writer thread: {e}")))?;
        let watch = core.clone();
        std::thread::Builder::new()
            .name("bpgate-audit-watch".into())
            .spawn(move || watchdog(&watch))
            .map_err(|e| AuditError(format!("cannot start the audit watchdog thread: {e}")))?;
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

    /// Queues a line and returns its sequence number. Never waits: the line of an exchange that
    /// already ran is always taken (room is made before requests start, see
    /// [`AuditSink::poll_room`]).
    pub fn write(&self, r: Record) -> u64 {
        thread_local! {
            /// Each thread encodes into a buffer it keeps: no allocation per line.
            static LINE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
        }
        // Encoded here, on the request path, so the cost is spread evenly instead of stalling the
        // core for a whole batch when the writer wakes up; outside the queue's lock, which then
        // only covers a copy.
        self.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
        LINE.with(|b| match b.try_borrow_mut() {
            Ok(mut line) => {
                line.clear();
                encode(&r, &self.redact, &mut line);
                let seq = self.core.push_line(&line);
                // A rare huge line (a long URL) does not stay allocated for good.
                if line.capacity() > 16 << 10 {
                    *line = Vec::with_capacity(1024);
                }
                seq
            }
            // Not reachable (nothing in `encode` writes a line), but never worth a panic.
            Err(_) => {
                let mut line = Vec::with_capacity(1024);
                encode(&r, &self.redact, &mut line);
                self.core.push_line(&line)
            }
        })
    }

    /// Whether an answer waits for its line: `audit.durability` is `written` or `synced`.
    pub fn answers_wait(&self) -> bool {
        self.core.durability != Durability::Batched
    }

    /// Ready once line `seq` is committed (written; with `synced`, also synced), or at once while
    /// the trail cannot be written (waiting would hold the answer for as long as the disk is
    /// broken; the line stays queued and is written when it recovers).
    pub fn poll_committed(&self, seq: u64, cx: &mut Context<'_>) -> Poll<()> {
        let c = &self.core;
        if c.committed.load(Ordering::Acquire) >= seq || !c.healthy() {
            return Poll::Ready(());
        }
        let mut st = c.lock();
        // Checked again under the lock: the writer publishes, then takes this lock to wake.
        if c.committed.load(Ordering::Acquire) >= seq || !c.healthy() || st.stopped {
            return Poll::Ready(());
        }
        st.commits.push((seq, cx.waker().clone()));
        drop(st);
        c.ensure_relay();
        Poll::Pending
    }

    /// Waits until line `seq` is committed (see [`AuditSink::poll_committed`]).
    pub async fn committed(&self, seq: u64) {
        std::future::poll_fn(|cx| self.poll_committed(seq, cx)).await
    }

    /// Ready when fewer than `audit.queue` lines are held in memory. A request waits here, before
    /// it starts, while the writer is behind; nothing else does.
    pub fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let c = &self.core;
        if c.backlog() < c.capacity {
            return Poll::Ready(());
        }
        let mut st = c.lock();
        if c.backlog() < c.capacity || st.stopped {
            return Poll::Ready(());
        }
        st.room.push(cx.waker().clone());
        Poll::Pending
    }

    /// Whether a new request can start without waiting for room.
    pub fn has_room(&self) -> bool {
        self.core.backlog() < self.core.capacity
    }

    /// Whether requests must be refused: the files cannot be written (a write fails or is
    /// stuck) and `on_failure = block`.
    pub fn refusing(&self) -> bool {
        self.core.on_failure == OnFailure::Block && !self.core.healthy()
    }

    /// Whether the files can be written (no write failing or stuck).
    pub fn healthy(&self) -> bool {
        self.core.healthy()
    }

    /// Whether the trail holds new work back: refusing (see [`AuditSink::refusing`]) or full
    /// (new requests wait for room). `/readyz` answers 503 meanwhile.
    pub fn blocked(&self) -> bool {
        self.refusing() || !self.has_room()
    }

    /// Waits until every line queued so far is written (or retried into memory).
    pub fn flush(&self) {
        self.control(Item::Flush);
    }

    /// Reopens `audit.jsonl` by name, for external rotation (logrotate moving the file away):
    /// the next lines go to the file now at that path (admin `POST /audit/reopen`).
    pub fn reopen(&self) {
        self.control(Item::Reopen);
    }

    /// Rotates now (admin `POST /audit/rotate`, tests).
    pub fn rotate(&self) {
        self.control(Item::Rotate);
    }

    fn control(&self, item: fn(SyncSender<()>) -> Item) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.core.lock().stopped {
            return;
        }
        self.core.push(item(tx));
        let _ = rx.recv_timeout(Duration::from_secs(30));
    }
}

impl AuditGuard {
    pub fn sink(&self) -> &AuditSink {
        &self.sink
    }

    /// Writes everything queued, then stops the writer thread and waits for it.
    pub fn shutdown(mut self) {
        self.sink.flush();
        self.sink.core.push(Item::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AuditGuard {
    /// Without [`AuditGuard::shutdown`] (an error path): still stop the thread once it has
    /// written what it has.
    fn drop(&mut self) {
        if self.thread.take().is_some() {
            self.sink.core.push(Item::Stop);
        }
    }
}

/// Marks the trail unwritable while a write has been stuck for [`STALL`], and releases the
/// answers waiting for their lines.
fn watchdog(core: &Core) {
    let tick = Duration::from_millis(200);
    loop {
        std::thread::sleep(tick);
        if core.lock().stopped {
            return;
        }
        let since = core.busy_since.load(Ordering::Acquire);
        let stuck = since != 0 && core.millis().saturating_sub(since) >= STALL.as_millis() as u64;
        if stuck && !core.stalled.swap(true, Ordering::AcqRel) {
            core.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                stuck_for = ?STALL,
                "an audit write has not returned; the trail counts as unwritable until it does (on_failure = {:?})",
                core.on_failure
            );
            core.wake_waiters();
        }
    }
}

struct Writer {
    core: Arc<Core>,
    s: WriterSettings,
    files: Files,
    /// Encoded lines not yet written, and how many.
    buf: Vec<u8>,
    buf_lines: u64,
    /// The previous batch's buffers, emptied, to swap in for the next.
    spare: Batch,
}

impl Writer {
    fn run(mut self) {
        loop {
            let mut batch = self.take();
            let mut acks = Vec::new();
            let mut stop = false;
            let mut items = batch.items.drain(..).peekable();
            let mut start = 0;
            for i in 0..=batch.ends.len() {
                // The requests queued before line `i` (after the last line: the rest).
                while let Some((_, item)) = items.next_if(|(at, _)| *at <= i) {
                    self.control(item, &mut acks, &mut stop);
                }
                let Some(&end) = batch.ends.get(i) else {
                    break;
                };
                let line = &batch.lines[start..end];
                start = end;
                // Rotate between lines when this one would pass the size cap or the period
                // changed (an empty file just moves to the current period).
                let now = (self.s.clock)();
                if self.files.size + self.files.pending == 0 {
                    self.files.period = period_start(self.s.rotation, now);
                }
                if self.files.due(&self.s, line.len() as u64, now) {
                    self.write_out();
                    self.rotate_now();
                }
                self.files.pending += line.len() as u64;
                self.buf.extend_from_slice(line);
                self.buf_lines += 1;
                if self.buf.len() >= 256 << 10 {
                    self.write_out();
                }
            }
            drop(items);
            batch.clear();
            self.spare = batch;
            self.write_out();
            for a in acks {
                let _ = a.send(());
            }
            if stop {
                break;
            }
            if self.s.durability == Durability::Batched {
                // Let lines accumulate: one wake-up and one write carry a whole batch.
                std::thread::sleep(self.s.flush_interval);
            }
        }
        self.core.lock().stopped = true;
        self.core.wake_waiters();
        // Anything that raced the stop: stopped senders see `stopped` and do not wait.
        let mut st = self.core.lock();
        let room = std::mem::take(&mut st.room);
        let commits = std::mem::take(&mut st.commits);
        drop(st);
        room.into_iter()
            .chain(commits.into_iter().map(|(_, w)| w))
            .for_each(Waker::wake);
    }

    /// Carries out a request queued between lines.
    fn control(&mut self, item: Item, acks: &mut Vec<SyncSender<()>>, stop: &mut bool) {
        match item {
            Item::Flush(ack) => acks.push(ack),
            Item::Rotate(ack) => {
                self.write_out();
                self.rotate_now();
                acks.push(ack);
            }
            Item::Reopen(ack) => {
                self.write_out();
                if let Err(e) = self.files.reopen() {
                    self.core.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "cannot reopen the audit file; keeping the current one");
                }
                acks.push(ack);
            }
            Item::Stop => *stop = true,
        }
    }

    /// What was queued; waits for something, or until the current rotation period ends (then
    /// rotates a non-empty file even though no line came).
    fn take(&mut self) -> Batch {
        let core = self.core.clone();
        let mut st = core.lock();
        loop {
            if !st.queued.is_empty() {
                let mut out = std::mem::take(&mut self.spare);
                std::mem::swap(&mut out, &mut st.queued);
                return out;
            }
            st.idle = true;
            let now = (self.s.clock)();
            match period_end(self.s.rotation, self.files.period) {
                Some(end) if end <= now => {
                    st.idle = false;
                    drop(st);
                    if self.files.size > 0 {
                        self.rotate_now();
                    } else {
                        self.files.period = period_start(self.s.rotation, now);
                    }
                    st = core.lock();
                }
                Some(end) => {
                    // Capped, so an injected clock that jumps is noticed soon enough.
                    let wait = Duration::from_millis((end - now).clamp(1, 1000) as u64);
                    st = match core.wake.wait_timeout(st, wait) {
                        Ok((g, _)) => g,
                        Err(e) => e.into_inner().0,
                    };
                    st.idle = false;
                }
                None => {
                    st = core.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                    st.idle = false;
                }
            }
        }
    }

    /// Writes the buffer. A failed or partial write keeps the bytes not yet written and retries
    /// from there, so the file only ever receives whole lines, in order.
    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut off = 0;
        let mut delay = Duration::from_millis(100);
        while off < self.buf.len() {
            self.core
                .busy_since
                .store(self.core.millis(), Ordering::Release);
            let r = self.files.file.write(&self.buf[off..]);
            self.core.busy_since.store(0, Ordering::Release);
            let e = match r {
                Ok(0) => io::Error::new(io::ErrorKind::WriteZero, "the file accepted no bytes"),
                Ok(n) => {
                    off += n;
                    self.files.size += n as u64;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            self.failed(&e, "write");
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(5));
            // A deleted or replaced file: reopen before retrying, but only between lines: a line
            // begun in one file is finished in that file.
            if off == 0 || self.buf[off - 1] == b'\n' {
                let _ = self.files.reopen();
            }
        }
        if self.s.durability == Durability::Synced {
            loop {
                self.core
                    .busy_since
                    .store(self.core.millis(), Ordering::Release);
                let r = self.files.file.sync_data();
                self.core.busy_since.store(0, Ordering::Release);
                match r {
                    Ok(()) => break,
                    Err(e) => {
                        self.failed(&e, "sync");
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
        if self.s.stdout {
            let mut out = io::stdout().lock();
            let _ = out.write_all(&self.buf).and_then(|_| out.flush());
        }
        let n = self.buf_lines;
        self.files.pending = 0;
        self.buf.clear();
        self.buf_lines = 0;
        let c = &self.core;
        c.stats.lines.fetch_add(n, Ordering::Relaxed);
        c.stats.queue_depth.fetch_sub(n as i64, Ordering::Relaxed);
        c.committed.fetch_add(n, Ordering::AcqRel);
        let was_failing = c.failing.swap(false, Ordering::AcqRel);
        let was_stalled = c.stalled.swap(false, Ordering::AcqRel);
        if was_failing || was_stalled {
            tracing::info!("audit trail writable again");
        }
        c.wake_waiters();
    }

    fn failed(&self, e: &io::Error, what: &str) {
        let c = &self.core;
        c.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        if !c.failing.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %e, dir = %self.s.dir.display(), lines_waiting = c.backlog(), "cannot {what} the audit trail; retrying (on_failure = {:?})", self.s.on_failure);
            c.wake_waiters();
        }
    }

    fn rotate_now(&mut self) {
        let now = (self.s.clock)();
        match self.files.rotate(&self.s, now) {
            Ok(()) => {
                self.core.stats.rotations.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.core.stats.write_errors.fetch_add(1, Ordering::Relaxed);
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
        // Read access too: a torn last line is found and cut before appending.
        let file = open_append(&path, true)?;
        let torn = trim_torn_tail(&file)?;
        if torn > 0 {
            tracing::warn!(
                file = %path.display(),
                bytes = torn,
                "the audit file ended in part of a line (the process was killed during a write); removed it so every line stays whole. The request it belonged to had not been answered yet unless audit.durability = \"batched\""
            );
        }
        let meta = file.metadata()?;
        let now = (s.clock)();
        // A file left by an earlier run belongs to the period it was last written in.
        let mtime_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            .unwrap_or(now);
        let period = if meta.len() == 0 {
            period_start(s.rotation, now)
        } else {
            period_start(s.rotation, mtime_ms.min(now))
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
        let by_time = s.rotation != Rotation::Never
            && size > 0
            && period_start(s.rotation, now_ms) != self.period;
        by_size || by_time
    }

    fn reopen(&mut self) -> io::Result<()> {
        let file = open_append(&self.dir.join(CURRENT_FILE), false)?;
        self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.file = file;
        Ok(())
    }

    fn rotate(&mut self, s: &WriterSettings, now: i64) -> io::Result<()> {
        self.file.flush()?;
        let (stamp, n) = next_rotated(&self.dir, &utc_stamp(now));
        let target = self.dir.join(rotated_name(&stamp, n));
        std::fs::rename(self.dir.join(CURRENT_FILE), &target)?;
        self.file = open_append(&self.dir.join(CURRENT_FILE), false)?;
        self.size = 0;
        self.pending = 0;
        self.period = period_start(s.rotation, now);
        prune(&self.dir, s.max_files);
        Ok(())
    }
}

/// Cuts a partial last line (a process killed in the middle of a write can leave one) so the
/// next line starts on a line of its own; returns how many bytes were cut. Only regular files.
fn trim_torn_tail(file: &File) -> io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let meta = file.metadata()?;
    let len = meta.len();
    if !meta.is_file() || len == 0 {
        return Ok(0);
    }
    let mut f = file;
    let mut end = len;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut chunk[..n])?;
        if end == len && chunk[n - 1] == b'\n' {
            return Ok(0);
        }
        if let Some(i) = memchr::memrchr(b'\n', &chunk[..n]) {
            let keep = start + i as u64 + 1;
            file.set_len(keep)?;
            return Ok(len - keep);
        }
        if start == 0 {
            file.set_len(0)?;
            return Ok(len);
        }
        end = start;
    }
}

/// `YYYYMMDDTHHMMSSZ` for Unix milliseconds.
fn utc_stamp(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .map(|t| {
            format!(
                "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
                t.year().clamp(0, 9999),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_else(|_| "19700101T000000Z".to_string())
}

/// The name the next rotated file gets: `stamp`, unless a rotated file already present sorts
/// at or after it (two rotations in one second, or a clock that stepped back): then the newest
/// one's stamp with the next sequence number. So a rotated file always sorts after every file
/// rotated before it, and pruning by name never removes a newer file than one it keeps.
fn next_rotated(dir: &Path, stamp: &str) -> (String, u32) {
    let newest = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    rotated_key(&name).map(|(s, n)| (s.to_string(), n))
                })
                .max()
        })
        .unwrap_or(None);
    match newest {
        Some((s, n)) if s.as_str() >= stamp => (s, n + 1),
        _ => (stamp.to_string(), 0),
    }
}

/// Opens (creating) an audit file for appending. A new file is `0640`: the trail names users and
/// their addresses, so it is readable by bpgate's user and group (a log shipper), not by others.
/// Rotated files keep it, as rotation renames.
fn open_append(path: &Path, read: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.create(true).append(true).read(read);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o640);
    }
    o.open(path)
}

/// Start (Unix ms, UTC) of the rotation period containing `ms`.
fn period_start(r: Rotation, ms: i64) -> i64 {
    match period_len(r) {
        Some(len) => ms - ms.rem_euclid(len),
        None => 0,
    }
}

/// End of the period that starts at `start`; `None` without time-based rotation.
fn period_end(r: Rotation, start: i64) -> Option<i64> {
    period_len(r).map(|len| start + len)
}

fn period_len(r: Rotation) -> Option<i64> {
    match r {
        Rotation::Daily => Some(86_400_000),
        Rotation::Hourly => Some(3_600_000),
        Rotation::Never => None,
    }
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
mod tests;
