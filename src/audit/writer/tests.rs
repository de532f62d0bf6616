use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::exchange::Outcome;

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
    assert_eq!(
        names(dir.path()),
        [
            "audit-20261124T100000Z-1.jsonl",
            "audit-20261124T100000Z-2.jsonl",
            "audit.jsonl"
        ]
    );
}

// === the writer with an injected clock ===

/// 2026-11-24T10:00:00Z.
const T0: i64 = 1_795_514_400_000;
const HOUR: i64 = 3_600_000;

struct Trail {
    dir: tempfile::TempDir,
    clock: Arc<AtomicI64>,
    sink: AuditSink,
    guard: Option<AuditGuard>,
}

impl Trail {
    fn start(rotation: Rotation, max_files: usize, queue: usize) -> Trail {
        Trail::start_in(tempfile::tempdir().unwrap(), rotation, max_files, queue)
    }

    /// The writer on `dir` as it is (a trail already there is taken over).
    fn start_in(
        dir: tempfile::TempDir,
        rotation: Rotation,
        max_files: usize,
        queue: usize,
    ) -> Trail {
        let clock = Arc::new(AtomicI64::new(T0));
        let c = clock.clone();
        let (sink, guard) = AuditSink::start(
            WriterSettings {
                dir: dir.path().to_path_buf(),
                rotation,
                max_size: 0,
                max_files,
                stdout: false,
                queue,
                flush_interval: Duration::from_millis(1),
                on_failure: OnFailure::Block,
                durability: Durability::Written,
                clock: Arc::new(move || c.load(Ordering::SeqCst)),
            },
            &[],
        )
        .unwrap();
        Trail {
            dir,
            clock,
            sink,
            guard: Some(guard),
        }
    }

    fn set_clock(&self, ms: i64) {
        self.clock.store(ms, Ordering::SeqCst);
    }

    fn line(&self, path: &str) -> u64 {
        let mut r = Record::unparsed([127, 0, 0, 1].into(), None, 200, Outcome::Ok, "test");
        r.uri = Some(path.parse().unwrap());
        self.sink.write(r)
    }

    /// Paths in each file, keyed by file name.
    fn files(&self) -> Vec<(String, Vec<String>)> {
        names(self.dir.path())
            .into_iter()
            .map(|n| {
                let text = std::fs::read_to_string(self.dir.path().join(&n)).unwrap();
                let paths = text
                    .lines()
                    .map(|l| {
                        let v: serde_json::Value = serde_json::from_str(l).unwrap();
                        v["path"].as_str().unwrap().to_string()
                    })
                    .collect();
                (n, paths)
            })
            .collect()
    }
}

impl Drop for Trail {
    fn drop(&mut self) {
        if let Some(g) = self.guard.take() {
            g.shutdown();
        }
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Polls `f` until it holds or `limit` passes.
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

#[test]
fn hourly_rotation_follows_the_clock_with_or_without_traffic() {
    let t = Trail::start(Rotation::Hourly, 0, 1024);
    t.line("/a");
    t.set_clock(T0 + HOUR / 2);
    t.line("/b");
    t.sink.flush();
    assert_eq!(
        t.files(),
        [("audit.jsonl".into(), vec!["/a".into(), "/b".into()])]
    );
    // The next hour: the first line of it goes to a new file.
    t.set_clock(T0 + HOUR + 5_000);
    t.line("/c");
    t.sink.flush();
    assert_eq!(
        t.files(),
        [
            (
                "audit-20261124T110005Z.jsonl".into(),
                vec!["/a".into(), "/b".into()]
            ),
            ("audit.jsonl".into(), vec!["/c".into()]),
        ]
    );
    // No traffic: the file is still rotated when its hour ends.
    t.set_clock(T0 + 2 * HOUR + 1_000);
    assert!(
        wait_for(Duration::from_secs(5), || t.files().len() == 3),
        "no rotation at the hour without traffic: {:?}",
        t.files()
    );
    assert_eq!(
        t.files()[1],
        ("audit-20261124T120001Z.jsonl".into(), vec!["/c".into()])
    );
    // An empty file is not rotated: another hour with nothing written adds no file.
    t.set_clock(T0 + 3 * HOUR + 1_000);
    t.sink.flush();
    std::thread::sleep(Duration::from_millis(1_200));
    assert_eq!(t.files().len(), 3, "{:?}", t.files());
    assert_eq!(t.sink.stats.rotations.load(Ordering::Relaxed), 2);
}

#[test]
fn daily_rotation_at_midnight_utc() {
    let t = Trail::start(Rotation::Daily, 0, 1024);
    t.line("/day1");
    t.set_clock(T0 + 13 * HOUR + 59 * 60_000); // 23:59 UTC
    t.line("/day1-late");
    t.sink.flush();
    assert_eq!(t.files().len(), 1);
    t.set_clock(T0 + 14 * HOUR); // 00:00 the next day
    t.line("/day2");
    t.sink.flush();
    assert_eq!(
        t.files(),
        [
            (
                "audit-20261125T000000Z.jsonl".into(),
                vec!["/day1".into(), "/day1-late".into()]
            ),
            ("audit.jsonl".into(), vec!["/day2".into()]),
        ]
    );
}

#[test]
fn a_clock_stepping_back_never_makes_pruning_delete_the_newest_file() {
    let t = Trail::start(Rotation::Never, 2, 1024);
    for (at, path) in [(T0, "/first"), (T0 + HOUR, "/second")] {
        t.line(path);
        t.set_clock(at);
        t.sink.rotate();
    }
    // NTP steps the clock back an hour and a half; the next rotation is still the newest file.
    t.set_clock(T0 - HOUR / 2);
    t.line("/third");
    t.sink.rotate();
    let mut files = t.files();
    files.retain(|(n, _)| n != "audit.jsonl");
    files.sort_by(|a, b| rotated_key(&a.0).cmp(&rotated_key(&b.0)));
    let kept: Vec<&str> = files.iter().map(|(_, p)| p[0].as_str()).collect();
    assert_eq!(
        kept,
        ["/second", "/third"],
        "max_files = 2 keeps the two newest rotations: {files:?}"
    );
    assert_eq!(files[1].0, "audit-20261124T110000Z-1.jsonl");
}

#[test]
fn a_stalled_file_never_makes_a_sender_wait_and_room_returns_when_it_drains() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    // A FIFO nobody reads (yet): the writer's first large write blocks in the kernel.
    let fifo = dir.path().join(CURRENT_FILE);
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    // Held open for reading (without reading) so the writer can open its end.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let (sink, guard) = AuditSink::start(
        WriterSettings {
            dir: dir.path().to_path_buf(),
            rotation: Rotation::Never,
            max_size: 0,
            max_files: 0,
            stdout: false,
            queue: 16,
            flush_interval: Duration::from_millis(1),
            on_failure: OnFailure::Block,
            durability: Durability::Written,
            clock: system_clock(),
        },
        &[],
    )
    .unwrap();
    let long = format!("/{}", "x".repeat(4000));
    let started = Instant::now();
    // Far more than the pipe (64 KiB) and the queue hold; each call returns at once.
    let mut last = 0;
    for _ in 0..200 {
        let mut r = Record::unparsed([127, 0, 0, 1].into(), None, 200, Outcome::Ok, "t");
        r.uri = Some(long.parse().unwrap());
        last = sink.write(r);
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!sink.has_room(), "a full queue is reported");
    assert!(sink.blocked());
    // The writer is stuck in write(2): after STALL the trail counts as unwritable.
    assert!(
        wait_for(STALL + Duration::from_secs(3), || !sink.healthy()),
        "a stuck write is noticed"
    );
    assert!(sink.refusing());
    // Someone reads: everything lands, in order, whole.
    let drain = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = vec![0; 1 << 16];
        while all.iter().filter(|b| **b == b'\n').count() < 200 {
            let n = reader.read(&mut buf).unwrap();
            all.extend_from_slice(&buf[..n]);
        }
        all
    });
    let all = drain.join().unwrap();
    assert!(wait_for(Duration::from_secs(5), || sink.healthy() && sink.has_room()));
    assert_eq!(last, 200);
    for l in all.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        serde_json::from_slice::<serde_json::Value>(l).unwrap();
    }
    guard.shutdown();
}

#[test]
fn a_line_torn_by_a_killed_process_is_cut_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(CURRENT_FILE);
    let whole = "{\"ts\":\"2026-11-24T10:00:00.000Z\",\"path\":\"/whole\"}\n";
    std::fs::write(&path, format!("{whole}{{\"ts\":\"2026-11-24T10:00:0")).unwrap();
    let t = Trail::start_in(dir, Rotation::Never, 0, 64);
    t.line("/next");
    t.sink.flush();
    assert_eq!(
        t.files(),
        [("audit.jsonl".into(), vec!["/whole".into(), "/next".into()])]
    );
    // A file that ends in a newline is left alone.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(t.dir.path().join(CURRENT_FILE))
        .unwrap();
    assert_eq!(trim_torn_tail(&f).unwrap(), 0);
}
