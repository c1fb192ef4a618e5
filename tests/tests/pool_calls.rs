//! Pool calls: time limits on every map method, background calls (wait,
//! wait_timeout, progress, await, cancel, drop), async calls under tokio and
//! without a runtime, and recycling of workers by count and by memory.

mod support;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use skprocess::Background;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{assert_gone_within, watchdog, DEADLINE};

/// A directory of its own for one test: items write files there.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("skp-calls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn path(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
    fn file(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
    /// The pids written by items that started (files `pid-<pid>`).
    fn pids(&self) -> BTreeSet<u32> {
        std::fs::read_dir(&self.0)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_prefix("pid-")
                    .and_then(|p| p.parse().ok())
            })
            .collect()
    }
    /// Waits (bounded) until items have written `n` pids.
    fn wait_pids(&self, n: usize) -> BTreeSet<u32> {
        let end = Instant::now() + DEADLINE;
        loop {
            let pids = self.pids();
            if pids.len() >= n {
                return pids;
            }
            assert!(Instant::now() < end, "only {pids:?} started");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `<dir>/pid-<pid of this worker>`.
fn mark(dir: &str) {
    let p = Path::new(dir).join(format!("pid-{}", std::process::id()));
    std::fs::write(p, b"").unwrap();
}

/// Waits for `path` to exist, at most 20 s.
fn wait_for(path: &str) -> HookResult {
    let end = Instant::now() + Duration::from_secs(20);
    while !Path::new(path).exists() {
        if Instant::now() > end {
            return Err(format!("gate {path} never opened").into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// An item that marks its worker's pid, then sleeps `secs` (a hung item
/// when long), or waits for a gate file; it records the pid it ran in.
#[derive(Process, Serialize, Deserialize, Clone, Debug, Default)]
#[process(runs = 1)]
struct Job {
    id: u64,
    /// Mark the worker's pid in this directory.
    dir: Option<String>,
    secs: u64,
    gate: Option<String>,
    /// Write this file when run (to see whether it ran at all).
    ran: Option<String>,
    /// Leak this many MiB.
    leak_mib: usize,
    pid: u32,
}

impl Job {
    fn quick(id: u64) -> Job {
        Job {
            id,
            ..Job::default()
        }
    }
    fn hung(id: u64, dir: &Dir) -> Job {
        Job {
            id,
            dir: Some(dir.path()),
            secs: 600,
            ..Job::default()
        }
    }
}

impl Process for Job {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.pid = std::process::id();
        if let Some(f) = &self.ran {
            std::fs::write(f, b"")?;
        }
        if let Some(d) = &self.dir {
            mark(d);
        }
        if let Some(g) = &self.gate {
            wait_for(g)?;
        }
        if self.leak_mib > 0 {
            let v = vec![1u8; self.leak_mib << 20];
            std::hint::black_box(&v);
            std::mem::forget(v);
        }
        std::thread::sleep(Duration::from_secs(self.secs));
        Ok(())
    }
}

/// A `map_fn` function: `(x, dir)`; marks its worker in `dir` and hangs
/// when `x` is odd.
fn hang_if_odd((x, dir): (u64, String)) -> u64 {
    if x % 2 == 1 {
        mark(&dir);
        std::thread::sleep(Duration::from_secs(600));
    }
    x
}

fn double(x: u64) -> u64 {
    x * 2
}

/// After a call was stopped: every worker that ran one of its items is
/// gone (already, when the call has returned its error), none is among the
/// pool's workers, and the pool still runs calls.
fn assert_killed_and_usable(pool: &Pool, dir: &Dir) {
    let killed = dir.pids();
    for &pid in &killed {
        support::assert_gone(pid);
    }
    assert_usable(pool, killed);
}

/// As [`assert_killed_and_usable`], for a call that is stopped without
/// being waited for (its `Background` dropped): the kills come soon.
fn assert_killed_soon_and_usable(pool: &Pool, dir: &Dir) {
    let killed = dir.pids();
    for &pid in &killed {
        assert_gone_within(pid, DEADLINE);
    }
    assert_usable(pool, killed);
}

fn assert_usable(pool: &Pool, killed: BTreeSet<u32>) {
    let v: Vec<u64> = pool.map_fn(double, 0..100u64).unwrap();
    assert_eq!(v[99], 198);
    // A killed worker's slot is empty until its replacement has started.
    let end = Instant::now() + DEADLINE;
    let now = loop {
        let now: BTreeSet<u32> = pool.pids().into_iter().collect();
        assert!(now.is_disjoint(&killed), "{now:?} vs killed {killed:?}");
        if now.len() == pool.workers() {
            break now;
        }
        assert!(Instant::now() < end, "workers not replaced: {now:?}");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(now.iter().all(|&p| !support::is_gone(p)));
    let done = pool.map((0..4).map(Job::quick)).unwrap();
    assert_eq!(done.iter().map(|j| j.id).collect::<Vec<_>>(), [0, 1, 2, 3]);
}

const LIMIT: Duration = Duration::from_millis(500);

fn assert_timeout(e: &skprocess::Error) {
    assert!(e.is_timeout(), "{e}");
    assert!(e.to_string().contains("500ms"), "{e}");
}

#[test]
fn map_past_its_time_limit_kills_the_items_running_and_the_pool_goes_on() {
    watchdog();
    let dir = Dir::new("map");
    let pool = Pool::new(2).unwrap();
    let items = vec![Job::quick(0), Job::hung(1, &dir), Job::hung(2, &dir)];
    let e = pool.with_timeout(LIMIT).map(items).unwrap_err();
    assert_timeout(&e);
    assert_killed_and_usable(&pool, &dir);
}

#[test]
fn unordered_map_past_its_time_limit_kills_the_items_running() {
    watchdog();
    let dir = Dir::new("unordered-map");
    let pool = Pool::new(2).unwrap();
    let items = vec![Job::hung(0, &dir), Job::quick(1), Job::hung(2, &dir)];
    let e = pool.with_timeout(LIMIT).unordered_map(items).unwrap_err();
    assert_timeout(&e);
    assert_killed_and_usable(&pool, &dir);
}

#[test]
fn map_fn_past_its_time_limit_kills_the_calls_running() {
    watchdog();
    let dir = Dir::new("map-fn");
    let pool = Pool::new(2).unwrap();
    let args: Vec<(u64, String)> = (0..4).map(|x| (x, dir.path())).collect();
    let e = pool
        .with_timeout(LIMIT)
        .map_fn(hang_if_odd, args)
        .unwrap_err();
    assert_timeout(&e);
    assert!(e.to_string().contains("map_fn("), "{e}");
    assert_killed_and_usable(&pool, &dir);
}

#[test]
fn imap_past_its_time_limit_yields_the_timeout_then_ends() {
    watchdog();
    let dir = Dir::new("imap");
    let pool = Pool::new(2).unwrap();
    let items = vec![Job::quick(0), Job::hung(1, &dir), Job::quick(2)];
    let mut it = pool.with_timeout(LIMIT).imap(items);
    assert_eq!(it.next().unwrap().unwrap().id, 0);
    assert_timeout(&it.next().unwrap().unwrap_err());
    assert!(it.next().is_none());
    assert!(it.next().is_none());
    drop(it);
    assert_killed_and_usable(&pool, &dir);
}

#[test]
fn unordered_imap_past_its_time_limit_yields_the_timeout_then_ends() {
    watchdog();
    let dir = Dir::new("unordered-imap");
    let pool = Pool::new(2).unwrap();
    let items = vec![Job::hung(0, &dir), Job::quick(1)];
    let mut it = pool.with_timeout(LIMIT).unordered_imap(items);
    assert_eq!(it.next().unwrap().unwrap().id, 1);
    assert_timeout(&it.next().unwrap().unwrap_err());
    assert!(it.next().is_none());
    drop(it);
    assert_killed_and_usable(&pool, &dir);
}

#[test]
fn items_not_started_by_the_time_limit_never_run() {
    watchdog();
    let dir = Dir::new("not-started");
    let pool = Pool::new(1).unwrap();
    let mut items = vec![Job::hung(0, &dir)];
    items.extend((1..6).map(|id| Job {
        ran: Some(dir.file(&format!("ran-{id}"))),
        ..Job::quick(id)
    }));
    let e = pool.with_timeout(LIMIT).map(items).unwrap_err();
    assert_timeout(&e);
    // The next call runs after whatever the stopped one left queued.
    assert_killed_and_usable(&pool, &dir);
    for id in 1..6 {
        assert!(
            !Path::new(&dir.file(&format!("ran-{id}"))).exists(),
            "item {id} ran"
        );
    }
}

#[test]
fn a_stopped_call_leaves_the_calls_running_beside_it_whole() {
    watchdog();
    let dir = Dir::new("beside");
    let pool = Pool::new(2).unwrap();
    std::thread::scope(|s| {
        let other = s.spawn(|| {
            let mut all = vec![];
            for round in 0..20u64 {
                let v: Vec<u64> = pool.map_fn(double, round * 100..round * 100 + 100).unwrap();
                all.extend(v);
            }
            let done = pool
                .map((0..10).map(|id| Job {
                    secs: 0,
                    ..Job::quick(id)
                }))
                .unwrap();
            (all, done.len())
        });
        let e = pool
            .with_timeout(LIMIT)
            .map(vec![Job::hung(0, &dir), Job::hung(1, &dir)])
            .unwrap_err();
        assert_timeout(&e);
        let (all, n) = other.join().unwrap();
        assert_eq!(all, (0..2000u64).map(|x| x * 2).collect::<Vec<_>>());
        assert_eq!(n, 10);
    });
    assert_killed_and_usable(&pool, &dir);
}

#[test]
fn a_call_within_its_time_limit_returns_its_results() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    let v: Vec<u64> = pool
        .with_timeout(DEADLINE)
        .map_fn(double, 0..1000u64)
        .unwrap();
    assert_eq!(v[999], 1998);
    let done = pool
        .with_timeout(DEADLINE)
        .map((0..5).map(Job::quick))
        .unwrap();
    assert_eq!(done.len(), 5);
}

#[test]
fn background_wait_progress_and_is_finished() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    let bg: Background<Vec<u64>> = pool.background().map_fn(double, 0..1000u64);
    let v = bg.wait().unwrap();
    assert_eq!(v, (0..1000u64).map(|x| x * 2).collect::<Vec<_>>());

    // An input that does not tell its length: the total grows to its end.
    let bg = pool
        .background()
        .unordered_map((0..20).filter(|x| x % 2 == 0).map(Job::quick));
    let out = bg.wait_timeout(DEADLINE).unwrap().expect("ended in time");
    assert_eq!(out.len(), 10);
    assert!(bg.is_finished());
    assert_eq!(bg.progress(), (10, 10));
    assert!(bg.total_known());
    // The result was taken.
    assert!(bg.wait().is_err());
}

#[test]
fn background_wait_timeout_returns_none_while_items_run() {
    watchdog();
    let dir = Dir::new("bg-wait-timeout");
    let pool = Pool::new(2).unwrap();
    let gate = dir.file("gate");
    let items: Vec<Job> = (0..4)
        .map(|id| Job {
            gate: (id == 3).then(|| gate.clone()),
            ..Job::quick(id)
        })
        .collect();
    let bg = pool.background().map(items);
    assert_eq!(
        bg.wait_timeout(Duration::from_millis(20))
            .unwrap()
            .map(|v| v.len()),
        None
    );
    assert!(!bg.is_finished());
    // Items 0..3 end while item 3 waits.
    let end = Instant::now() + DEADLINE;
    while bg.progress().0 < 3 {
        assert!(Instant::now() < end, "progress {:?}", bg.progress());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(bg.progress(), (3, 4));
    assert!(!bg.is_finished());
    std::fs::write(&gate, b"").unwrap();
    let done = bg.wait_timeout(DEADLINE).unwrap().expect("ended in time");
    assert_eq!(done.iter().map(|j| j.id).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(bg.progress(), (4, 4));
}

#[test]
fn background_cancel_kills_the_items_running_and_the_pool_goes_on() {
    watchdog();
    let dir = Dir::new("bg-cancel");
    let pool = Pool::new(2).unwrap();
    let bg = pool
        .background()
        .map((0..6).map(|id| Job::hung(id, &dir)).collect::<Vec<_>>());
    let running = dir.wait_pids(2);
    bg.cancel();
    let e = bg.wait().unwrap_err();
    assert!(e.is_cancelled(), "{e}");
    assert!(!e.is_timeout());
    assert_eq!(dir.pids(), running, "an item started after the cancel");
    assert_killed_and_usable(&pool, &dir);
}

#[test]
fn dropping_a_background_cancels_it() {
    watchdog();
    let dir = Dir::new("bg-drop");
    let pool = Pool::new(2).unwrap();
    let args: Vec<(u64, String)> = (0..4).map(|x| (2 * x + 1, dir.path())).collect();
    let bg = pool.background().map_fn(hang_if_odd, args);
    dir.wait_pids(2);
    drop(bg);
    assert_killed_soon_and_usable(&pool, &dir);
}

#[test]
fn background_calls_take_a_time_limit_either_way_round() {
    watchdog();
    let dir = Dir::new("bg-limit");
    let pool = Pool::new(2).unwrap();
    let a = pool
        .with_timeout(LIMIT)
        .background()
        .map(vec![Job::hung(0, &dir)]);
    let b = pool
        .background()
        .with_timeout(LIMIT)
        .unordered_map(vec![Job::hung(1, &dir)]);
    for bg in [a, b] {
        match bg.wait_timeout(DEADLINE) {
            Err(e) => assert_timeout(&e),
            Ok(v) => panic!("no time-out: {:?}", v.map(|v| v.len())),
        }
    }
    assert_killed_and_usable(&pool, &dir);
}

#[test]
fn a_background_call_on_a_dropped_pool_ends_with_an_error() {
    watchdog();
    let dir = Dir::new("bg-pool-dropped");
    let pool = Pool::new(1).unwrap();
    let bg = pool
        .background()
        .map(vec![Job::hung(0, &dir), Job::quick(1)]);
    let pids = dir.wait_pids(1);
    drop(pool);
    match bg.wait_timeout(DEADLINE) {
        Err(e) => assert!(e.to_string().contains("closing"), "{e}"),
        Ok(v) => panic!("no error: {:?}", v.map(|v| v.len())),
    }
    for pid in pids {
        assert_gone_within(pid, DEADLINE);
    }
}

#[test]
fn a_background_call_awaits_without_a_runtime() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    let bg = pool.background().map_fn(double, 0..100u64);
    let v = futures::executor::block_on(bg).unwrap();
    assert_eq!(v[99], 198);
    let v = futures::executor::block_on(pool.map_fn_async(double, 0..10u64)).unwrap();
    assert_eq!(v[9], 18);
    let out: Vec<u64> = futures::executor::block_on(
        pool.imap_async((0..5).map(Job::quick))
            .map(|r| r.unwrap().id)
            .collect::<Vec<_>>(),
    );
    assert_eq!(out, [0, 1, 2, 3, 4]);
}

/// Runs a map of gated items with `map_async` on the runtime that runs
/// this future, while a ticker counts: the gate opens once the ticker has
/// ticked, so the map ends only if awaiting it let the runtime run.
async fn ticks_while_a_map_is_pending(pool: Arc<Pool>, name: &'static str) {
    let dir = Dir::new(name);
    let gate = dir.file("gate");
    let ticks = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(10));
            loop {
                every.tick().await;
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let opener = {
        let (ticks, finished, gate) = (ticks.clone(), finished.clone(), gate.clone());
        tokio::spawn(async move {
            let end = Instant::now() + DEADLINE;
            while ticks.load(Ordering::SeqCst) < 3 {
                assert!(Instant::now() < end, "the ticker never ticked");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let seen = ticks.load(Ordering::SeqCst);
            assert!(!finished.load(Ordering::SeqCst));
            std::fs::write(&gate, b"").unwrap();
            seen
        })
    };
    let items = (0..4).map(move |id| Job {
        gate: Some(gate.clone()),
        ..Job::quick(id)
    });
    let done = pool.map_async(items).await.unwrap();
    finished.store(true, Ordering::SeqCst);
    assert_eq!(done.iter().map(|j| j.id).collect::<Vec<_>>(), [0, 1, 2, 3]);
    let seen = opener.await.unwrap();
    assert!(seen > 0);
    ticker.abort();

    // The streams too.
    let mut s = pool.unordered_imap_async((0..6).map(Job::quick));
    let mut ids = BTreeSet::new();
    while let Some(r) = s.next().await {
        ids.insert(r.unwrap().id);
    }
    assert_eq!(ids, (0..6).collect());
    let v = pool.map_fn_async(double, 0..1000u64).await.unwrap();
    assert_eq!(v[999], 1998);
}

#[test]
fn a_current_thread_runtime_keeps_ticking_while_a_map_is_pending() {
    watchdog();
    let pool = Arc::new(Pool::new(2).unwrap());
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(ticks_while_a_map_is_pending(pool, "tokio-current"));
}

#[test]
fn a_multi_thread_runtime_keeps_ticking_while_a_map_is_pending() {
    watchdog();
    let pool = Arc::new(Pool::new(2).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    // On the runtime's only worker thread, which the ticker needs too.
    rt.block_on(async { tokio::spawn(ticks_while_a_map_is_pending(pool, "tokio-multi")).await })
        .unwrap();
}

#[test]
fn an_async_call_with_a_time_limit_ends_on_it() {
    watchdog();
    let dir = Dir::new("async-limit");
    let pool = Pool::new(1).unwrap();
    let r = futures::executor::block_on(
        pool.with_timeout(LIMIT)
            .background()
            .map(vec![Job::hung(0, &dir)]),
    );
    assert_timeout(&r.unwrap_err());
    assert_killed_and_usable(&pool, &dir);
}

#[test]
fn an_imap_stream_with_a_time_limit_yields_the_timeout_then_ends() {
    watchdog();
    let dir = Dir::new("stream-limit");
    let pool = Pool::new(2).unwrap();
    let items = vec![Job::quick(0), Job::hung(1, &dir)];
    let got: Vec<skprocess::Result<Job>> =
        futures::executor::block_on(pool.with_timeout(LIMIT).imap_async(items).collect());
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].as_ref().unwrap().id, 0);
    assert_timeout(got[1].as_ref().unwrap_err());
    assert_killed_and_usable(&pool, &dir);
}

#[test]
fn workers_are_replaced_after_max_items_per_worker() {
    watchdog();
    let pool = Pool::builder()
        .workers(1)
        .max_items_per_worker(3)
        .build()
        .unwrap();
    let done = pool.map((0..9).map(Job::quick)).unwrap();
    assert_eq!(
        done.iter().map(|j| j.id).collect::<Vec<_>>(),
        (0..9).collect::<Vec<_>>()
    );
    let pids: Vec<u32> = done.iter().map(|j| j.pid).collect();
    for chunk in pids.chunks(3) {
        assert!(chunk.iter().all(|&p| p == chunk[0]), "{pids:?}");
    }
    let distinct: BTreeSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "{pids:?}");
    for &pid in &distinct {
        assert_gone_within(pid, DEADLINE);
    }
    // map_fn calls count too.
    let v: Vec<u64> = pool.map_fn(double, [1, 2, 3]).unwrap();
    assert_eq!(v, [2, 4, 6]);
}

#[test]
fn workers_are_replaced_past_max_worker_memory() {
    watchdog();
    let pool = Pool::builder()
        .workers(1)
        .max_worker_memory(128 << 20)
        .build()
        .unwrap();
    let items = (0..6).map(|id| Job {
        leak_mib: 48,
        ..Job::quick(id)
    });
    let done = pool.map(items).unwrap();
    assert_eq!(done.len(), 6);
    let pids: Vec<u32> = done.iter().map(|j| j.pid).collect();
    let distinct: BTreeSet<u32> = pids.iter().copied().collect();
    assert!(distinct.len() >= 2, "never replaced: {pids:?}");
    for &pid in &distinct {
        // Three leaks (144 MiB) pass the ceiling: no worker runs a fourth.
        assert!(pids.iter().filter(|&&p| p == pid).count() <= 3, "{pids:?}");
    }
}
