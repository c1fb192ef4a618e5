//! Pool: order guarantees, every item once, worker reuse, map_fn, crashes,
//! failures and timeouts of single items, and reaping on drop.

mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use skprocess::{Cause, ImapNext};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{proc_state, send_signal, watchdog};

/// A file-system gate: an item waits (bounded) until the test creates the
/// file, so a test can prove an item was yielded while another still ran.
struct Gate(PathBuf);

impl Gate {
    fn new(name: &str) -> Gate {
        let p = std::env::temp_dir().join(format!("skprocess-pool-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        Gate(p)
    }
    fn path(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
    fn open(&self) {
        std::fs::write(&self.0, b"open").unwrap();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
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

/// An item that records where it ran, and can wait, crash or fail.
#[derive(Process, Serialize, Deserialize, Clone, Debug, Default)]
#[process(runs = 2)]
struct Item {
    id: u64,
    /// Wait for this file in `run`.
    gate: Option<String>,
    /// Sleep this long in `run`.
    sleep_ms: u64,
    /// Abort the worker on this attempt.
    abort_on: Option<u32>,
    /// Create this file when `run` returns.
    done_file: Option<String>,
    /// Filled in by the run.
    total: u64,
    pids: Vec<u32>,
    attempts: Vec<u32>,
}

impl Item {
    fn new(id: u64) -> Item {
        Item {
            id,
            ..Item::default()
        }
    }
}

impl Process for Item {
    fn prerun(&mut self, ctx: &mut Ctx) -> HookResult {
        if ctx.run_index() == 0 {
            self.attempts.push(ctx.attempt());
            self.pids.push(ctx.pid());
        }
        Ok(())
    }
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if self.abort_on == Some(ctx.attempt()) {
            std::process::abort();
        }
        if let Some(g) = &self.gate {
            wait_for(g)?;
        }
        std::thread::sleep(Duration::from_millis(self.sleep_ms));
        self.total += self.id * self.id;
        if let Some(f) = &self.done_file {
            std::fs::write(f, b"done")?;
        }
        Ok(())
    }
}

fn ids<'a>(items: impl IntoIterator<Item = &'a Item>) -> Vec<u64> {
    items.into_iter().map(|i| i.id).collect()
}

/// Asserts every process in `pids` has been reaped: it no longer exists
/// (or its pid now belongs to a process that is not our child).
fn assert_reaped(pids: &[u32]) {
    let me = std::process::id();
    for &pid in pids {
        match proc_state(pid) {
            None => {}
            Some((state, ppid)) => {
                assert!(ppid != me, "worker {pid} is still our child, state {state}")
            }
        }
    }
}

#[test]
fn map_returns_input_order_and_unordered_map_completion_order() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    // Item 0 is slow: every other item ends before it.
    let items: Vec<Item> = (0..12)
        .map(|id| Item {
            sleep_ms: if id == 0 { 1500 } else { 0 },
            ..Item::new(id)
        })
        .collect();

    let done = pool.map(items.clone()).unwrap();
    assert_eq!(ids(&done), (0..12).collect::<Vec<_>>());
    for d in &done {
        assert_eq!(d.total, 2 * d.id * d.id, "both runs of item {} ran", d.id);
    }

    let done = pool.unordered_map(items).unwrap();
    let order = ids(&done);
    assert_eq!(
        order.iter().copied().collect::<BTreeSet<_>>(),
        (0..12).collect()
    );
    assert_ne!(order[0], 0, "the slow item came first: {order:?}");
}

#[test]
fn imap_yields_each_item_as_soon_as_it_and_those_before_it_are_done() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    let gate = Gate::new("imap");
    // Item 1 waits until the test has received item 0: if imap held item 0
    // back until everything was done, item 1 would fail on its gate.
    let items = (0..6).map(|id| Item {
        gate: (id == 1).then(|| gate.path()),
        ..Item::new(id)
    });
    let mut seen = vec![];
    for r in pool.imap(items) {
        let item = r.unwrap();
        if item.id == 0 {
            gate.open();
        }
        seen.push(item.id);
    }
    assert_eq!(seen, (0..6).collect::<Vec<_>>());
}

#[test]
fn unordered_imap_yields_in_completion_order() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    let gate = Gate::new("unordered");
    // Item 0 waits until the test has received some other item: an
    // iterator in input order would wait for item 0 first and never get
    // there.
    let items = (0..6).map(|id| Item {
        gate: (id == 0).then(|| gate.path()),
        ..Item::new(id)
    });
    let mut seen = vec![];
    for r in pool.unordered_imap(items) {
        let item = r.unwrap();
        if seen.is_empty() {
            gate.open();
        }
        seen.push(item.id);
    }
    assert_ne!(seen[0], 0);
    assert_eq!(
        seen.iter().copied().collect::<BTreeSet<_>>(),
        (0..6).collect()
    );
    assert_eq!(seen.len(), 6);
}

/// Waits (bounded) for the next item of `it` with `next_timeout`.
fn next_within<I: Iterator<Item = Item>>(it: &mut skprocess::Imap<'_, Item, I>) -> Item {
    let end = Instant::now() + support::DEADLINE;
    loop {
        match it.next_timeout(Duration::from_millis(20)) {
            ImapNext::Item(r) => return r.unwrap(),
            ImapNext::Timeout => assert!(Instant::now() < end, "no item came"),
            ImapNext::Exhausted => panic!("exhausted early"),
        }
    }
}

#[test]
fn next_timeout_tells_a_time_out_from_the_end() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    let gate = Gate::new("next-timeout");
    // Item 0 waits for the gate; the others do not.
    let items = || {
        (0..4).map(|id| Item {
            gate: (id == 0).then(|| gate.path()),
            ..Item::new(id)
        })
    };

    // In completion order, another item comes while item 0 still waits.
    let mut it = pool.unordered_imap(items());
    let first = next_within(&mut it).id;
    assert_ne!(first, 0);
    gate.open();
    let mut seen: BTreeSet<u64> = (0..3).map(|_| next_within(&mut it).id).collect();
    seen.insert(first);
    assert_eq!(seen, (0..4).collect());
    assert!(matches!(
        it.next_timeout(Duration::from_millis(1)),
        ImapNext::Exhausted
    ));

    // In input order, nothing can be yielded while item 0 waits, even once
    // the others are done; they are kept, and yielded after item 0.
    std::fs::remove_file(gate.path()).unwrap();
    let mut it = pool.imap(items());
    assert!(matches!(it.next_timeout(Duration::ZERO), ImapNext::Timeout));
    assert!(matches!(
        it.next_deadline(Instant::now() + Duration::from_millis(50)),
        ImapNext::Timeout
    ));
    gate.open();
    for id in 0..4 {
        assert_eq!(next_within(&mut it).id, id);
    }
    assert!(matches!(
        it.next_timeout(Duration::ZERO),
        ImapNext::Exhausted
    ));
    assert!(matches!(
        it.next_timeout(Duration::MAX),
        ImapNext::Exhausted
    ));
    assert!(it.next().is_none());
    drop(it);

    // An empty input is exhausted at once.
    let mut it = pool.imap(std::iter::empty::<Item>());
    assert!(matches!(
        it.next_timeout(Duration::ZERO),
        ImapNext::Exhausted
    ));
}

#[test]
fn every_item_comes_back_exactly_once() {
    watchdog();
    let pool = Pool::new(3).unwrap();
    let n = 500;
    let mut got = ids(&pool.unordered_map((0..n).map(Item::new)).unwrap());
    got.sort();
    assert_eq!(got, (0..n).collect::<Vec<_>>());

    let got: Vec<u64> = pool
        .imap((0..n).map(Item::new))
        .map(|r| r.unwrap().id)
        .collect();
    assert_eq!(got, (0..n).collect::<Vec<_>>());

    let mut got: Vec<u64> = pool
        .unordered_imap((0..n).map(Item::new))
        .map(|r| r.unwrap().id)
        .collect();
    got.sort();
    assert_eq!(got, (0..n).collect::<Vec<_>>());
}

#[test]
fn workers_are_started_once_and_reused() {
    watchdog();
    let pool = Pool::new(3).unwrap();
    let workers: BTreeSet<u32> = pool.pids().into_iter().collect();
    assert_eq!(workers.len(), 3);
    let mut used = BTreeSet::new();
    for _ in 0..2 {
        let done = pool.map((0..40).map(Item::new)).unwrap();
        used.extend(done.iter().flat_map(|d| d.pids.iter().copied()));
    }
    assert!(
        used.len() <= 3,
        "80 items used {} processes: {used:?}",
        used.len()
    );
    assert!(
        used.is_subset(&workers),
        "items ran outside the workers: {used:?} vs {workers:?}"
    );
    assert_eq!(pool.pids().into_iter().collect::<BTreeSet<_>>(), workers);
    assert!(!workers.contains(&std::process::id()));
}

#[test]
fn map_fn_over_many_items() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    let n = 100_000u64;
    let doubled: Vec<u64> = pool.map_fn(|x: u64| x * 2, 0..n).unwrap();
    assert_eq!(doubled.len(), n as usize);
    assert!(doubled.iter().enumerate().all(|(i, &x)| x == 2 * i as u64));

    fn describe(p: (String, u32)) -> String {
        format!("{}:{}", p.0, p.1)
    }
    let words: Vec<(String, u32)> = (0..1000).map(|i| (format!("w{i}"), i)).collect();
    let out = pool.map_fn(describe, words).unwrap();
    assert_eq!(out[0], "w0:0");
    assert_eq!(out[999], "w999:999");

    // Plain structs and tuples (the fixed layout) both ways, and plain
    // arguments with results that are not plain.
    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone, Copy)]
    struct Point {
        x: f64,
        y: i32,
        on: bool,
    }
    fn flip(p: Point) -> (Point, [u8; 2]) {
        (
            Point {
                x: -p.x,
                y: p.y + 1,
                on: !p.on,
            },
            [p.y as u8, 7],
        )
    }
    let points: Vec<Point> = (0..50_000)
        .map(|i| Point {
            x: i as f64 / 2.0,
            y: i,
            on: i % 3 == 0,
        })
        .collect();
    let flipped = pool.map_fn(flip, points.clone()).unwrap();
    assert_eq!(flipped, points.into_iter().map(flip).collect::<Vec<_>>());
    let texts = pool.map_fn(|x: u32| x.to_string(), 0..3000u32).unwrap();
    assert_eq!(texts[2999], "2999");

    let empty: Vec<u64> = pool.map_fn(|x: u64| x, Vec::new()).unwrap();
    assert!(empty.is_empty());
    assert!(pool.map(Vec::<Item>::new()).unwrap().is_empty());
}

#[test]
fn map_fn_rejects_a_capturing_closure() {
    watchdog();
    let pool = Pool::new(1).unwrap();
    let k = 3u64;
    let err = pool.map_fn(move |x: u64| x * k, 0..10u64).unwrap_err();
    assert!(matches!(err, Error::Usage(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "map_fn takes a fn or a closure that captures nothing; pass the state in the items instead"
    );
    // The pool is untouched.
    assert_eq!(pool.map_fn(|x: u64| x + 1, 0..3u64).unwrap(), [1, 2, 3]);
}

#[test]
fn map_fn_panic_fails_only_its_item() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    let err = pool
        .map_fn(
            |x: u64| {
                if x == 7 {
                    panic!("seven is right out");
                }
                x
            },
            0..100u64,
        )
        .unwrap_err();
    assert!(err.is_panic(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("item #7") && text.contains("seven is right out"),
        "{text}"
    );
    assert_eq!(pool.map_fn(|x: u64| x, 0..5u64).unwrap(), [0, 1, 2, 3, 4]);
}

#[test]
fn map_fn_batch_that_crashes_is_retried_once_then_fails() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    let before = pool.pids();
    let err = pool
        .map_fn(
            |x: u64| {
                if x == 5 {
                    std::process::abort();
                }
                x
            },
            0..10u64,
        )
        .unwrap_err();
    assert!(err.is_crash(), "{err}");
    assert_eq!(err.attempt(), Some(2), "{err}");
    assert!(err.to_string().contains("SIGABRT"), "{err}");
    // The crashed workers were replaced and reaped; the pool still serves.
    assert_eq!(pool.pids().len(), 2);
    assert_ne!(pool.pids(), before);
    let gone: Vec<u32> = before
        .iter()
        .copied()
        .filter(|p| !pool.pids().contains(p))
        .collect();
    assert_reaped(&gone);
    assert_eq!(pool.map_fn(|x: u64| x * 3, 0..4u64).unwrap(), [0, 3, 6, 9]);
}

/// The ids of [`CrashOnce`] items that abort on their first attempt.
const CRASHING: [u64; 4] = [0, 3, 6, 9];

#[derive(Process, Serialize, Deserialize, Clone, Debug)]
#[process(runs = 1, lives = 2)]
struct CrashOnce {
    id: u64,
    attempt: u32,
}

impl Process for CrashOnce {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if CRASHING.contains(&self.id) && ctx.attempt() == 1 {
            std::process::abort();
        }
        self.attempt = ctx.attempt();
        Ok(())
    }
}

#[test]
fn a_crashed_item_is_retried_in_a_fresh_worker_and_the_pool_keeps_serving() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    let done = pool
        .map((0..12).map(|id| CrashOnce { id, attempt: 0 }))
        .unwrap();
    for d in &done {
        let expected = if CRASHING.contains(&d.id) { 2 } else { 1 };
        assert_eq!(d.attempt, expected, "item {}", d.id);
    }
    assert_eq!(pool.pids().len(), 2);
    // Afterwards the pool works as before.
    let done = pool.map((0..20).map(Item::new)).unwrap();
    assert_eq!(ids(&done), (0..20).collect::<Vec<_>>());
}

/// Half the items crash their worker once, on purpose, while later items
/// are already queued for it: sending to a worker that has just died must
/// send those items to the replacement, not fail them (a regression: a
/// send to the dead worker was once taken for an item that cannot be sent).
#[derive(Process, Serialize, Deserialize, Clone, Debug)]
#[process(runs = 1, lives = 2)]
struct CrashEveryOther {
    id: u64,
    attempt: u32,
}

impl Process for CrashEveryOther {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if self.id.is_multiple_of(2) && ctx.attempt() == 1 {
            std::process::abort();
        }
        self.attempt = ctx.attempt();
        Ok(())
    }
}

#[test]
fn items_queued_behind_a_crashing_item_reach_the_replacement_worker() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    for round in 0..5 {
        let done = pool
            .map((0..40).map(|id| CrashEveryOther { id, attempt: 0 }))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        for d in &done {
            assert_eq!(
                d.attempt,
                if d.id % 2 == 0 { 2 } else { 1 },
                "round {round}, item {}",
                d.id
            );
        }
    }
}

#[test]
fn a_crash_with_no_lives_left_fails_that_item_only() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    let items = (0..8).map(|id| Item {
        abort_on: (id == 3).then_some(1),
        ..Item::new(id)
    });
    let results: Vec<Result<Item>> = pool.imap(items).collect();
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(item) => assert_eq!(item.id, i as u64),
            Err(e) => {
                assert_eq!(i, 3, "{e}");
                assert!(e.is_crash(), "{e}");
                assert_eq!(e.hook(), Some(Hook::Run), "{e}");
                assert_eq!(e.run_index(), Some(0), "{e}");
                assert!(e.to_string().contains("item #3"), "{e}");
            }
        }
    }
    assert!(results[3].is_err());
}

#[derive(Process, Serialize, Deserialize, Clone, Debug)]
#[process(runs = 3, lives = 2)]
struct Failing {
    id: u64,
    panic: bool,
}

impl Process for Failing {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if self.id == 3 && ctx.run_index() == 1 {
            if self.panic {
                panic!("item {} gave up", self.id);
            }
            return Err(format!("item {} failed on attempt {}", self.id, ctx.attempt()).into());
        }
        Ok(())
    }
}

#[test]
fn a_failing_item_names_its_hook_run_and_attempt() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    let err = pool
        .map((0..6).map(|id| Failing { id, panic: false }))
        .unwrap_err();
    let f = err.failure().expect("a process failure");
    assert_eq!(f.hook, Some(Hook::Run));
    assert_eq!(f.run, Some(1));
    assert_eq!((f.attempt, f.lives), (2, 2));
    assert_eq!(
        f.cause,
        Cause::Returned("item 3 failed on attempt 2".into())
    );
    let text = err.to_string();
    assert!(
        text.contains("Failing item #3") && text.contains("run #1, attempt 2 of 2"),
        "{text}"
    );

    let err = pool
        .unordered_map((0..6).map(|id| Failing { id, panic: true }))
        .unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert!(err.to_string().contains("item 3 gave up"), "{err}");

    // The others were fine.
    let results: Vec<_> = pool
        .imap((0..6).map(|id| Failing { id, panic: false }))
        .collect();
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
    assert!(results[3].is_err());
}

#[derive(Process, Serialize, Deserialize, Clone, Debug)]
#[process(runs = 1, timeout(run = "300ms"))]
struct Slow {
    id: u64,
    sleep_ms: u64,
    /// Sleep only on this attempt (0: every attempt).
    on_attempt: u32,
}

impl Process for Slow {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if self.on_attempt == 0 || self.on_attempt == ctx.attempt() {
            std::thread::sleep(Duration::from_millis(self.sleep_ms));
        }
        Ok(())
    }
}

#[test]
fn a_timed_out_item_does_not_stall_the_others() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    let items = (0..20).map(|id| Slow {
        id,
        sleep_ms: if id == 2 { 60_000 } else { 5 },
        on_attempt: 0,
    });
    // The hung item comes back as a time-out: it was killed, not waited
    // for.
    let results: Vec<Result<Slow>> = pool.imap(items).collect();
    for (i, r) in results.iter().enumerate() {
        if i == 2 {
            let e = r.as_ref().unwrap_err();
            assert!(e.is_timeout(), "{e}");
            assert_eq!(e.hook(), Some(Hook::Run), "{e}");
            assert!(e.to_string().contains("item #2"), "{e}");
        } else {
            assert_eq!(r.as_ref().unwrap().id, i as u64);
        }
    }
    assert_eq!(pool.pids().len(), 2);
    assert_eq!(pool.map_fn(|x: u8| x, [1u8, 2]).unwrap(), [1, 2]);
}

#[test]
fn a_timed_out_item_is_retried_while_it_has_lives() {
    watchdog();
    let pool = Pool::new(1).unwrap();
    let cfg_lives = Slow::config().get_lives();
    assert_eq!(cfg_lives, 1);
    #[derive(Process, Serialize, Deserialize, Clone, Debug)]
    #[process(runs = 1, lives = 2, timeout(run = "200ms"))]
    struct SlowOnce {
        attempt: u32,
    }
    impl Process for SlowOnce {
        fn run(&mut self, ctx: &mut Ctx) -> HookResult {
            if ctx.attempt() == 1 {
                std::thread::sleep(Duration::from_secs(60));
            }
            self.attempt = ctx.attempt();
            Ok(())
        }
    }
    let done = pool
        .map(vec![SlowOnce { attempt: 0 }, SlowOnce { attempt: 0 }])
        .unwrap();
    assert_eq!(done[0].attempt, 2);
    assert_eq!(done[1].attempt, 2);
}

#[derive(Process, Serialize, Deserialize, Clone, Debug)]
#[process(runs = 1, lives = 3, join_in = "300ms")]
struct Late;

impl Process for Late {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        std::thread::sleep(Duration::from_secs(60));
        Ok(())
    }
}

#[test]
fn join_in_applies_per_item_without_retry() {
    watchdog();
    let pool = Pool::new(1).unwrap();
    let err = pool.map(vec![Late]).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(
        matches!(err.failure().map(|f| &f.cause), Some(Cause::JoinTimeout(_))),
        "{err}"
    );
    assert_eq!(err.attempt(), Some(1), "join_in is never retried: {err}");
}

#[test]
fn dropping_the_pool_reaps_every_worker() {
    watchdog();
    let pool = Pool::new(3).unwrap();
    pool.map((0..10).map(Item::new)).unwrap();
    let pids = pool.pids();
    assert_eq!(pids.len(), 3);
    drop(pool);
    assert_reaped(&pids);
    support::assert_no_shm_files();
}

#[test]
fn dropping_the_pool_during_a_long_item_kills_it() {
    watchdog();
    let pool = Pool::new(1).unwrap();
    let pids = pool.pids();
    // Item 1 would mark its end after a minute: the mark never appears if
    // the drop kills it rather than wait for it.
    let done = Gate::new("long-item-done");
    {
        let mut it = pool.imap((0..3).map(|id| Item {
            sleep_ms: if id == 0 { 0 } else { 60_000 },
            done_file: (id == 1).then(|| done.path()),
            ..Item::new(id)
        }));
        assert_eq!(it.next().unwrap().unwrap().id, 0);
        // Dropped while item 1 runs.
    }
    drop(pool);
    assert_reaped(&pids);
    assert!(!done.0.exists(), "drop waited for the item to end");
}

#[test]
fn a_worker_killed_while_idle_is_replaced() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    let victim = pool.pids()[0];
    send_signal(victim, rustix::process::Signal::KILL);
    let done = pool.map((0..30).map(Item::new)).unwrap();
    assert_eq!(ids(&done), (0..30).collect::<Vec<_>>());
    assert!(
        done.iter().all(|d| d.attempts == [1]),
        "no item lost a life"
    );
    assert!(!pool.pids().contains(&victim));
    assert_eq!(pool.pids().len(), 2);
    assert_reaped(&[victim]);
}

#[test]
fn an_abandoned_imap_leaves_the_pool_usable() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    let mut it = pool.imap((0..1000).map(Item::new));
    assert_eq!(it.next().unwrap().unwrap().id, 0);
    drop(it);
    let done = pool.map((0..10).map(Item::new)).unwrap();
    assert_eq!(ids(&done), (0..10).collect::<Vec<_>>());
}

#[test]
fn maps_can_share_a_pool_across_threads_and_interleave() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    std::thread::scope(|s| {
        let a = s.spawn(|| pool.map_fn(|x: u64| x + 1, 0..20_000u64).unwrap());
        let b = s.spawn(|| pool.map((0..50).map(Item::new)).unwrap());
        assert_eq!(a.join().unwrap()[19_999], 20_000);
        assert_eq!(ids(&b.join().unwrap()), (0..50).collect::<Vec<_>>());
    });
    // Two iterators consumed side by side on one thread.
    let mut a = pool.imap((0..20).map(Item::new));
    let mut b = pool.unordered_imap((100..120).map(Item::new));
    let (mut got_a, mut got_b) = (vec![], vec![]);
    for _ in 0..20 {
        got_a.push(a.next().unwrap().unwrap().id);
        got_b.push(b.next().unwrap().unwrap().id);
    }
    assert!(a.next().is_none() && b.next().is_none());
    assert_eq!(got_a, (0..20).collect::<Vec<_>>());
    got_b.sort();
    assert_eq!(got_b, (100..120).collect::<Vec<_>>());
}

#[test]
fn a_pool_needs_a_worker() {
    let err = Pool::new(0).unwrap_err();
    assert!(matches!(err, Error::Usage(_)), "{err:?}");
}

#[derive(Process, Serialize, Deserialize, Clone, Debug)]
#[process(runs = 1)]
struct Big {
    data: Vec<u8>,
    sum: u64,
}

impl Process for Big {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.sum = self.data.iter().map(|&b| b as u64).sum();
        self.data.reverse();
        Ok(())
    }
}

#[test]
fn large_items_travel_whole() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    let items: Vec<Big> = (0..4u8)
        .map(|i| Big {
            data: (0..12 << 20).map(|j: u32| (j as u8) ^ i).collect(),
            sum: 0,
        })
        .collect();
    let sums: Vec<u64> = items
        .iter()
        .map(|b| b.data.iter().map(|&x| x as u64).sum())
        .collect();
    let done = pool.map(items).unwrap();
    for (i, (d, s)) in done.iter().zip(&sums).enumerate() {
        assert_eq!(d.sum, *s);
        assert_eq!(d.data.len(), 12 << 20);
        // Reversed in the worker: the last byte of the input comes first.
        assert_eq!(d.data[0], ((12u32 << 20) - 1) as u8 ^ i as u8);
    }
    let v: Vec<Vec<u8>> = pool
        .map_fn(
            |v: Vec<u8>| v.into_iter().rev().collect(),
            vec![vec![1u8; 9 << 20], vec![2u8, 3]],
        )
        .unwrap();
    assert_eq!(v[0].len(), 9 << 20);
    assert_eq!(v[1], [3, 2]);
}

#[derive(Process, Serialize, Deserialize, Clone)]
#[process(
    runs = 5,
    lives = 3,
    timeout(run = "30s", prerun = "500ms"),
    join_in = "10m"
)]
struct Squarer {
    x: u64,
    total: u64,
    seen: Vec<String>,
}

impl Process for Squarer {
    fn prerun(&mut self, ctx: &mut Ctx) -> HookResult {
        self.seen.push(format!("prerun {}", ctx.run_index()));
        Ok(())
    }
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.total += self.x * self.x;
        Ok(())
    }
    fn onfinish(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.seen.push("onfinish".into());
        Ok(())
    }
}

/// API.md §6, as written there.
#[test]
fn api_section_6_as_written() -> skprocess::Result<()> {
    watchdog();
    let items = || {
        (0..8).map(|x| Squarer {
            x,
            total: 0,
            seen: vec![],
        })
    };
    let pool = Pool::new(4)?; // Pool::default(): one worker per core
    let done: Vec<Squarer> = pool.map(items())?; // items: IntoIterator<Item = P: Process>; input order
    assert_eq!(
        done.iter().map(|s| s.total).collect::<Vec<_>>(),
        (0..8).map(|x| 5 * x * x).collect::<Vec<_>>()
    );
    assert_eq!(done[0].seen.len(), 6);
    let done: Vec<Squarer> = pool.unordered_map(items())?; // completion order
    assert_eq!(done.len(), 8);
    let mut xs = vec![];
    for r in pool.imap(items()) {
        let p: Squarer = r?;
        xs.push(p.x);
    }
    assert_eq!(xs, (0..8).collect::<Vec<_>>());
    for r in pool.unordered_imap(items()) {
        let p: Squarer = r?;
        assert_eq!(p.total, 5 * p.x * p.x);
    }
    let doubled: Vec<u64> = pool.map_fn(|x: u64| x * 2, 0..10_000u64)?; // fn or non-capturing closure
    assert_eq!(doubled[9_999], 19_998);
    Ok(())
}

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Printer;

impl Process for Printer {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        print!("printed by a pool item, with no newline");
        Ok(())
    }
}

/// Run in a copy of this test binary (so its standard output can be read):
/// what an item printed must be written out even though the worker is
/// ended without running its exit handlers.
#[test]
fn what_an_item_prints_is_written_out() {
    const ENV: &str = "SKPROCESS_TEST_POOL_PRINTER";
    if std::env::var_os(ENV).is_some() {
        let pool = Pool::new(1).unwrap();
        pool.map(vec![Printer]).unwrap();
        return;
    }
    watchdog();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "what_an_item_prints_is_written_out",
            "--test-threads",
            "1",
        ])
        .env(ENV, "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("printed by a pool item, with no newline"),
        "{stdout}"
    );
}

#[derive(Serialize, Deserialize, Default)]
struct Stats {
    counter: u64,
    log: Vec<String>,
}

#[derive(Process, Serialize, Deserialize, Clone)]
#[process(runs = 10)]
struct ShareCounter {
    share: Share<Stats>,
}

impl Process for ShareCounter {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let mut s = self.share.lock()?;
        s.counter += 1;
        let n = s.counter;
        s.log.push(n.to_string());
        Ok(())
    }
}

/// API.md §5's seed example: items that carry a `Share`.
#[test]
fn share_seed_example_through_a_pool() -> skprocess::Result<()> {
    watchdog();
    let share = Share::new(Stats::default())?;
    let pool = Pool::new(4)?;
    pool.map(vec![
        ShareCounter {
            share: share.clone()
        };
        10
    ])?;
    assert_eq!(share.get()?.counter, 100);
    let expected: Vec<String> = (1..=100).map(|i| i.to_string()).collect();
    assert_eq!(share.get()?.log, expected);
    let v: Vec<u64> = pool.map_fn(
        |s: Share<Stats>| s.get().unwrap().counter,
        vec![share.clone(); 300],
    )?;
    assert!(v.iter().all(|&c| c == 100));
    Ok(())
}

#[derive(Process, Serialize, Deserialize, Clone, Debug)]
#[process(runs = 3, timeout(run = "200ms"))]
struct Timed {
    sleep_ms: u64,
}

impl Process for Timed {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        std::thread::sleep(Duration::from_millis(self.sleep_ms));
        Ok(())
    }
}

#[test]
fn timers_sum_every_item_across_calls_and_workers() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.timers(), Timers::default());
    pool.map(vec![Timed { sleep_ms: 1 }; 6]).unwrap();
    pool.map(vec![Timed { sleep_ms: 1 }; 4]).unwrap();
    let t = pool.timers();
    assert_eq!(t.prerun.count(), 30, "{t}");
    assert_eq!(t.run.count(), 30, "{t}");
    assert_eq!(t.postrun.count(), 30, "{t}");
    assert_eq!(t.onfinish.count(), 10, "{t}");
    assert!(t.run.min() >= Duration::from_millis(1), "{t}");
    // map_fn runs no hooks.
    pool.map_fn(|x: u8| x, [1u8, 2]).unwrap();
    assert_eq!(pool.timers(), t);

    // A call killed at its timeout counts with the time it ran, and the
    // replaced worker's timers are kept.
    let before = pool.pids();
    let err = pool.map(vec![Timed { sleep_ms: 60_000 }]).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_ne!(pool.pids(), before, "the worker was not replaced");
    let t = pool.timers();
    assert_eq!(t.prerun.count(), 31, "{t}");
    assert_eq!(t.run.count(), 31, "{t}");
    assert_eq!(t.postrun.count(), 30, "{t}");
    assert_eq!(t.onfinish.count(), 10, "{t}");
    assert!(t.run.max() >= Duration::from_millis(200), "{t}");
    drop(pool);
    assert_reaped(&before);
}
