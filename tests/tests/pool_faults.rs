//! Pool faults: items that cannot be encoded, and items that hold
//! descriptors under the usual limit of 1024 open files.
//!
//! This binary lowers its own soft `RLIMIT_NOFILE` to 1024 (the default on
//! most systems) before each test: the workers inherit it. A test that needs
//! the limit lower still takes [`LIMIT`] for writing, so no other test runs
//! meanwhile.

mod support;

use serde::de::Deserializer;
use serde::ser::{Error as _, Serializer};
use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::os::fd::AsRawFd;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{RwLock, RwLockReadGuard};
use support::{watchdog, DEADLINE};

/// The soft limit most systems start a process with.
const USUAL_LIMIT: u64 = 1024;

/// Held for reading by every test; for writing by one that lowers the
/// limit below [`USUAL_LIMIT`].
static LIMIT: RwLock<()> = RwLock::new(());

fn set_soft_limit(soft: u64) {
    let (_, hard) = rlimit::Resource::NOFILE.get().unwrap();
    rlimit::Resource::NOFILE.set(soft, hard).unwrap();
}

/// Sets the usual limit and keeps other tests from changing it.
fn usual_limit() -> RwLockReadGuard<'static, ()> {
    watchdog();
    let guard = LIMIT.read().unwrap_or_else(|p| p.into_inner());
    set_soft_limit(USUAL_LIMIT);
    guard
}

/// Runs `f` on a thread of its own and returns what it returns; fails the
/// test if it has not returned within [`DEADLINE`], so a spin or a hang is
/// a failure rather than a stuck test.
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(v) => {
            let _ = thread.join();
            v
        }
        Err(RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread sends before it ends"),
        },
        Err(RecvTimeoutError::Timeout) => {
            panic!("{what} did not return within {DEADLINE:?}: it spins or hangs")
        }
    }
}

// ---------------------------------------------------------------------------
// Items that cannot be encoded.

const REFUSAL: &str = "this value refuses to be encoded";

/// Encodes as `(x, false)`, or fails to when `refuse` is set.
#[derive(Debug, Clone, PartialEq)]
struct Picky {
    x: u64,
    refuse: bool,
}

impl Serialize for Picky {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.refuse {
            return Err(S::Error::custom(REFUSAL));
        }
        (self.x, false).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Picky {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (x, refuse) = <(u64, bool)>::deserialize(d)?;
        Ok(Picky { x, refuse })
    }
}

#[derive(Process, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[process(runs = 1)]
struct PickyItem {
    value: Picky,
    doubled: u64,
}

impl Process for PickyItem {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.doubled = 2 * self.value.x;
        Ok(())
    }
}

/// `n` items; those at `refused` cannot be encoded.
fn picky_items(n: u64, refused: &[u64]) -> Vec<PickyItem> {
    (0..n)
        .map(|x| PickyItem {
            value: Picky {
                x,
                refuse: refused.contains(&x),
            },
            doubled: 0,
        })
        .collect()
}

fn assert_refused(e: &skprocess::Error) {
    assert!(e.to_string().contains(REFUSAL), "{e}");
}

/// The shapes in which the failing item is the last one the input gives.
const LAST_REFUSED: [(u64, &[u64]); 4] = [(1, &[0]), (3, &[2]), (5, &[1, 4]), (4, &[0, 1, 2, 3])];

#[test]
fn map_returns_the_error_of_an_item_that_cannot_be_encoded() {
    let _limit = usual_limit();
    let pool = Pool::new(2).unwrap();
    let e = bounded("map", move || {
        let mut errors = vec![];
        for (n, refused) in LAST_REFUSED {
            errors.push(pool.map(picky_items(n, refused)).unwrap_err());
        }
        // The pool still works.
        let done = pool.map(picky_items(3, &[])).unwrap();
        assert_eq!(
            done.iter().map(|p| p.doubled).collect::<Vec<_>>(),
            [0, 2, 4]
        );
        errors
    });
    e.iter().for_each(assert_refused);
}

#[test]
fn unordered_map_returns_the_error_of_an_item_that_cannot_be_encoded() {
    let _limit = usual_limit();
    let pool = Pool::new(2).unwrap();
    let errors = bounded("unordered_map", move || {
        LAST_REFUSED
            .iter()
            .map(|&(n, refused)| pool.unordered_map(picky_items(n, refused)).unwrap_err())
            .collect::<Vec<_>>()
    });
    errors.iter().for_each(assert_refused);
}

#[test]
fn map_fn_returns_the_error_of_an_argument_that_cannot_be_encoded() {
    let _limit = usual_limit();
    let pool = Pool::new(2).unwrap();
    let errors = bounded("map_fn", move || {
        let args = |n: u64, refused: &[u64]| -> Vec<Picky> {
            (0..n)
                .map(|x| Picky {
                    x,
                    refuse: refused.contains(&x),
                })
                .collect()
        };
        let mut errors = vec![];
        for (n, refused) in LAST_REFUSED {
            errors.push(
                pool.map_fn(|p: Picky| p.x + 1, args(n, refused))
                    .unwrap_err(),
            );
        }
        assert_eq!(
            pool.map_fn(|p: Picky| p.x + 1, args(3, &[])).unwrap(),
            [1, 2, 3]
        );
        errors
    });
    errors.iter().for_each(assert_refused);
}

#[test]
fn imap_yields_one_error_per_item_that_cannot_be_encoded() {
    let _limit = usual_limit();
    let pool = Pool::new(2).unwrap();
    let (ordered, unordered) = bounded("imap", move || {
        let ordered: Vec<_> = pool.imap(picky_items(5, &[1, 4])).collect();
        let unordered: Vec<_> = pool.unordered_imap(picky_items(5, &[1, 4])).collect();
        (ordered, unordered)
    });
    assert_eq!(ordered.len(), 5);
    for (i, r) in ordered.iter().enumerate() {
        match r {
            Ok(p) => assert_eq!(p.doubled, 2 * i as u64),
            Err(e) => {
                assert!(i == 1 || i == 4, "item {i}: {e}");
                assert_refused(e);
            }
        }
    }
    assert_eq!(ordered.iter().filter(|r| r.is_err()).count(), 2);
    assert_eq!(unordered.len(), 5);
    assert_eq!(unordered.iter().filter(|r| r.is_err()).count(), 2);
}

/// A process with no descriptor to spare: every item that holds a `Share`
/// fails to encode with an error that says why, and none hangs.
#[test]
fn items_that_cannot_get_a_descriptor_fail_with_a_clear_error() {
    watchdog();
    let _limit = LIMIT.write().unwrap_or_else(|p| p.into_inner());
    set_soft_limit(USUAL_LIMIT);
    let pool = Pool::new(2).unwrap();
    let share = Share::new(7u64).unwrap();
    let items: Vec<Holder> = (0..20).map(|i| Holder::new(&share, i)).collect();
    let args: Vec<(Share<u64>, u64)> = (0..20).map(|i| (share.clone(), i)).collect();
    let (map, map_fn) = bounded("map with no descriptor to spare", move || {
        // Every descriptor number below the limit is taken, so no
        // duplicate can be made.
        let lowest_free = std::fs::File::open("/dev/null").unwrap().as_raw_fd();
        set_soft_limit(lowest_free as u64);
        let map = pool.map(items);
        let map_fn = pool.map_fn(|(s, i): (Share<u64>, u64)| s.get().unwrap() + i, args);
        set_soft_limit(USUAL_LIMIT);
        (map.map(|_| ()), map_fn.map(|_| ()))
    });
    set_soft_limit(USUAL_LIMIT);
    for r in [map, map_fn] {
        let e = r.unwrap_err();
        assert!(
            e.to_string().contains("descriptor") && e.to_string().contains("os error 24"),
            "{e}"
        );
    }
}

// ---------------------------------------------------------------------------
// Items that hold descriptors.

#[derive(Process, Serialize, Deserialize, Debug)]
#[process(runs = 1)]
struct Holder {
    share: Share<u64>,
    i: u64,
    seen: u64,
}

impl Holder {
    fn new(share: &Share<u64>, i: u64) -> Holder {
        Holder {
            share: share.clone(),
            i,
            seen: 0,
        }
    }
}

impl Process for Holder {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.seen = self.share.get()? + self.i;
        Ok(())
    }
}

const HOLDERS: u64 = 2000;

/// Every result is right, and holds a `Share` that still reads the value.
fn check_holders(done: &[Holder]) {
    assert_eq!(done.len() as u64, HOLDERS);
    for (i, h) in done.iter().enumerate() {
        assert_eq!(h.i, i as u64);
        assert_eq!(h.seen, 7 + i as u64);
    }
    assert_eq!(done[0].share.get().unwrap(), 7);
    assert_eq!(done[done.len() - 1].share.get().unwrap(), 7);
}

#[test]
fn two_thousand_items_holding_a_share_under_the_usual_descriptor_limit() {
    let _limit = usual_limit();
    let fds_before = support::open_fds();
    let (map, unordered, imap) = bounded("map of items holding a Share", move || {
        let pool = Pool::new(2).unwrap();
        let share = Share::new(7u64).unwrap();
        let items = || (0..HOLDERS).map(|i| Holder::new(&share, i));
        let map = pool.map(items());
        let mut unordered = pool.unordered_map(items());
        if let Ok(u) = &mut unordered {
            u.sort_by_key(|h| h.i);
        }
        let imap: Vec<_> = pool.imap(items()).collect();
        (map, unordered, imap)
    });
    check_holders(&map.unwrap());
    check_holders(&unordered.unwrap());
    check_holders(
        &imap
            .into_iter()
            .collect::<skprocess::Result<Vec<_>>>()
            .unwrap(),
    );
    assert!(support::open_fds() <= fds_before + 8, "descriptors leaked");
}

#[test]
fn two_thousand_shares_through_map_fn_under_the_usual_descriptor_limit() {
    let _limit = usual_limit();
    let out = bounded("map_fn over Shares", move || {
        // Enough workers that the batches in flight would hold more
        // descriptors than the process may open.
        let pool = Pool::new(8).unwrap();
        let share = Share::new(7u64).unwrap();
        let args = (0..HOLDERS).map(|i| (share.clone(), i));
        // Calls this cheap go hundreds to a batch. Each result holds the
        // Share too.
        pool.map_fn(|(s, i): (Share<u64>, u64)| (7 + i, s), args)
    });
    let out = out.unwrap();
    assert_eq!(out.len() as u64, HOLDERS);
    for (i, (v, s)) in out.iter().enumerate() {
        assert_eq!(*v, 7 + i as u64);
        if i % 500 == 0 {
            assert_eq!(s.get().unwrap(), 7);
        }
    }
}
