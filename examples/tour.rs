//! A tour of skprocess, one chapter per capability.
//!
//! Run it with `cargo run --release --example tour`.

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::time::Duration;

// ---------------------------------------------------------------------------
// Chapter 1: a process with hooks, lives, a timeout and timers.

/// Sums the squares of `x` over five runs. Its first attempt fails in run
/// #2 (as if a disk filled up); the second attempt starts again from the
/// initial state, in a fresh child, and succeeds.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 5, lives = 2, timeout(run = "2s"))]
struct Squarer {
    x: u64,
    total: u64,
    log: Vec<String>,
}

impl Process for Squarer {
    fn prerun(&mut self, ctx: &mut Ctx) -> HookResult {
        self.log
            .push(format!("attempt {} run {}", ctx.attempt(), ctx.run_index()));
        Ok(())
    }

    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if ctx.attempt() == 1 && ctx.run_index() == 2 {
            return Err("disk full".into());
        }
        std::thread::sleep(Duration::from_millis(2));
        self.total += self.x * self.x;
        Ok(())
    }

    fn onfinish(&mut self, ctx: &mut Ctx) -> HookResult {
        self.log.push(format!("onfinish in pid {}", ctx.pid()));
        Ok(())
    }
}

/// Always fails: shows what the error says once every life is used.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 3, lives = 2)]
struct Doomed;

impl Process for Doomed {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if ctx.run_index() == 1 {
            return Err(format!("no luck on attempt {}", ctx.attempt()).into());
        }
        Ok(())
    }
}

fn chapter_1() -> skprocess::Result<()> {
    println!("== 1. a process with hooks, lives and timers");
    let mut h = Squarer {
        x: 3,
        total: 0,
        log: vec![],
    }
    .start()?;
    println!("started pid {}", h.pid());
    let done = h.wait()?;
    println!("total = {} (5 runs of 3*3)", done.total);
    println!("what the successful attempt saw: {:?}", done.log);
    println!("{}", h.timers());
    println!("mean run: {:?}", h.timers().run.mean());

    match Doomed.start()?.wait() {
        Ok(_) => unreachable!("every life fails"),
        Err(e) => println!("a process that always fails: {e}"),
    }
    println!();
    Ok(())
}

// ---------------------------------------------------------------------------
// Chapter 3: Share, one value seen and changed by every process.

#[derive(Serialize, Deserialize, Default)]
struct Stats {
    counter: u64,
    log: Vec<String>,
}

/// Bumps the shared counter ten times, appending each value to the log.
#[derive(Process, Serialize, Deserialize, Clone)]
#[process(runs = 10)]
struct ShareCounter {
    share: Share<Stats>,
}

impl Process for ShareCounter {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let mut s = self.share.lock()?; // atomic across processes
        s.counter += 1;
        let n = s.counter;
        s.log.push(n.to_string());
        Ok(()) // written back when `s` drops
    }
}

fn chapter_3() -> skprocess::Result<()> {
    println!("== 3. Share: one value, every process");
    let share = Share::new(Stats::default())?;
    let mut handles = (0..4)
        .map(|_| {
            ShareCounter {
                share: share.clone(),
            }
            .start()
        })
        .collect::<skprocess::Result<Vec<_>>>()?;
    for h in &mut handles {
        h.wait()?;
    }
    let s = share.get()?;
    println!("4 processes x 10 runs: counter = {}", s.counter);
    let in_order = s
        .log
        .iter()
        .enumerate()
        .all(|(i, n)| *n == (i + 1).to_string());
    println!("every increment saw the one before it: {in_order}");
    let n = share.update(|s| {
        s.counter += 1;
        s.counter
    })?;
    println!("one more from the parent: {n}");
    println!();
    Ok(())
}

fn main() -> skprocess::Result<()> {
    chapter_1()?;
    chapter_3()?;
    Ok(())
}
