//! What the futures cost beside the blocking calls they mirror, measured
//! in the same run: `wait_async` beside `wait` (start a one-run no-op and
//! get its result), `map_fn_async` beside `map_fn` (`x * 2` over 100 k
//! items), both driven by `futures::executor::block_on` so that no
//! runtime's own cost is counted. And the time from `cancel()` of a
//! background call whose items hang to the pool having answered its next
//! call, beside that next call alone.

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use skprocess_benches::{median, report};
use std::time::{Duration, Instant};

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Noop;

impl Process for Noop {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

/// Sleeps far longer than anyone waits.
#[derive(Process, Serialize, Deserialize, Debug)]
#[process(runs = 1)]
struct Hang;

impl Process for Hang {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        std::thread::sleep(Duration::from_secs(600));
        Ok(())
    }
}

fn double(x: u64) -> u64 {
    x * 2
}

/// Interleaved medians of `a` and `b`: five rounds of `n` calls each.
fn pair(n: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (Duration, Duration) {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        xs.push(median(n, &mut a));
        ys.push(median(n, &mut b));
    }
    xs.sort();
    ys.sort();
    (xs[2], ys[2])
}

fn main() {
    let (asynced, blocking) = pair(
        20,
        || {
            let mut h = Noop.start().expect("start");
            futures::executor::block_on(h.wait_async()).expect("wait_async");
        },
        || {
            Noop.start().expect("start").wait().expect("wait");
        },
    );
    report(
        "start() -> wait_async() of a no-op",
        asynced,
        "start() -> wait()",
        blocking,
    );

    let pool = Pool::new(2).expect("pool");
    let (asynced, blocking) = pair(
        5,
        || {
            let v = futures::executor::block_on(pool.map_fn_async(double, 0..100_000u64))
                .expect("map_fn_async");
            assert_eq!(v.len(), 100_000);
        },
        || {
            let v = pool.map_fn(double, 0..100_000u64).expect("map_fn");
            assert_eq!(v.len(), 100_000);
        },
    );
    report(
        "map_fn_async, x * 2 over 100 k",
        asynced,
        "map_fn, same items",
        blocking,
    );

    // cancel() -> the next call answered, beside the next call alone.
    let next = || {
        pool.map([Noop, Noop]).expect("next call");
    };
    let (mut after_cancel, mut alone) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let bg = pool.background().map([Hang, Hang]);
        // Pacing, not synchronisation: the items are well under way (a
        // worker takes an item in microseconds) when the cancel comes.
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        bg.cancel();
        next();
        after_cancel.push(t.elapsed());
        assert!(bg.wait().expect_err("cancelled").is_cancelled());
        let t = Instant::now();
        next();
        alone.push(t.elapsed());
    }
    after_cancel.sort();
    alone.sort();
    report(
        "cancel() -> next call done (2 hung)",
        after_cancel[3],
        "the next call alone",
        alone[3],
    );
}
