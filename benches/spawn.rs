//! Spawn latency: `start()` → `wait()` of a one-run no-op process, beside a
//! bare re-exec of the same binary that exits before `main` (std's
//! `Command`, which uses `posix_spawn`), and beside the Rust peer
//! procspawn (spawn of a no-op function, then join), in the same run.
//! `start()` goes through the fork server unless `SKPROCESS_FORK_SERVER=0`;
//! the summary measures both ways. Also the lifecycle overhead per
//! iteration with empty hooks, timed inside the child.

use criterion::{criterion_group, Criterion};
use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use skprocess_benches::{median, report};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Noop;

impl Process for Noop {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

/// Runs `n` iterations of empty hooks and times the loop from inside.
#[derive(Process, Serialize, Deserialize)]
struct Empty {
    n: u64,
    elapsed_ns: u64,
    #[serde(skip)]
    t0: Option<Instant>,
}

impl Process for Empty {
    fn prerun(&mut self, _ctx: &mut Ctx) -> HookResult {
        if self.t0.is_none() {
            self.t0 = Some(Instant::now());
        }
        Ok(())
    }
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
    fn onfinish(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.elapsed_ns = self.t0.map(|t| t.elapsed().as_nanos() as u64).unwrap_or(0);
        Ok(())
    }
}

fn bare_reexec() {
    let (k, v) = skprocess::__private::BARE_CHILD_ENV;
    let st = Command::new("/proc/self/exe")
        .env(k, v)
        .status()
        .expect("spawn");
    assert!(st.success());
}

fn start_wait() {
    Noop.start().expect("start").wait().expect("wait");
}

/// `start()` → `wait()` with the fork server switched off: every child is
/// re-executed (the figure before the fork server).
fn start_wait_reexec() {
    skprocess::__private::set_fork_server_off(true);
    start_wait();
    skprocess::__private::set_fork_server_off(false);
}

fn nothing(_: ()) {}

fn procspawn_join() {
    procspawn::spawn((), nothing).join().expect("procspawn");
}

fn spawn(c: &mut Criterion) {
    let mut g = c.benchmark_group("spawn");
    g.sample_size(30).measurement_time(Duration::from_secs(5));
    g.bench_function("bare re-exec (posix_spawn + exit before main)", |b| {
        b.iter(bare_reexec)
    });
    g.bench_function("start() -> wait(), one-run no-op", |b| b.iter(start_wait));
    g.bench_function("procspawn spawn() -> join(), no-op", |b| {
        b.iter(procspawn_join)
    });
    g.finish();
}

fn summary(procspawn_init: Duration) {
    // Interleave the variants so machine noise hits all alike.
    let mut bare = Vec::new();
    let mut ours = Vec::new();
    let mut reexec = Vec::new();
    let mut peer = Vec::new();
    for _ in 0..5 {
        bare.push(median(20, bare_reexec));
        ours.push(median(20, start_wait));
        reexec.push(median(20, start_wait_reexec));
        peer.push(median(20, procspawn_join));
    }
    for v in [&mut bare, &mut ours, &mut reexec, &mut peer] {
        v.sort();
    }
    report(
        "spawn: start() -> wait() of a no-op",
        ours[2],
        "bare re-exec of the same binary",
        bare[2],
    );
    report(
        "spawn: start() -> wait(), re-exec (no server)",
        reexec[2],
        "bare re-exec of the same binary",
        bare[2],
    );
    report(
        "spawn: start() -> wait() of a no-op",
        ours[2],
        "procspawn spawn() -> join()",
        peer[2],
    );
    report(
        "spawn: procspawn spawn() -> join()",
        peer[2],
        "bare re-exec of the same binary",
        bare[2],
    );
    println!(
        "SUMMARY {:<40} {:>12} | {:<34} {:>12} | (once, at the start of main)",
        "procspawn::init() in the parent",
        format!("{procspawn_init:.2?}"),
        "",
        ""
    );

    let n = 1_000_000;
    let mut per_iter: Vec<f64> = (0..5)
        .map(|_| {
            let done = Empty {
                n,
                elapsed_ns: 0,
                t0: None,
            }
            .start_with(Empty::config().runs(n))
            .and_then(|mut h| h.wait())
            .expect("empty hooks");
            done.elapsed_ns as f64 / n as f64
        })
        .collect();
    per_iter.sort_by(f64::total_cmp);
    println!(
        "SUMMARY {:<40} {:>12} | {:<34} {:>12} | target <= 1 µs",
        "lifecycle overhead per iteration",
        format!("{:.0} ns", per_iter[2]),
        "(empty prerun/run/postrun)",
        ""
    );
}

criterion_group!(benches, spawn);

fn main() {
    // procspawn's children are re-executions of this binary that serve from
    // here; its set-up cost in the parent is reported with the figures.
    let t = Instant::now();
    procspawn::init();
    let procspawn_init = t.elapsed();
    if !skprocess_benches::summary_only() {
        benches();
    }
    summary(procspawn_init);
    Criterion::default().configure_from_args().final_summary();
}
