//! Services: what a supervisor costs.
//!
//! - Restart latency: a Permanent child (zero backoff) fails in `run`; the
//!   time from its last act to its replacement's first hook, beside a bare
//!   `start()` of the same type (from the call to the child's first hook).
//!   Both ends are read from the system-wide monotonic clock, in the child
//!   and in the parent, and sent back over a `Pipe`.
//! - Status read: `h.report()` of a 100-byte struct, beside decoding the
//!   same bytes in-process with postcard (what no shared page can avoid).
//! - Parent memory per supervised child: resident memory before and after
//!   100 idle children, beside the same for 100 plain handles.

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use skprocess::supervise::{Backoff, Child, Supervisor};
use skprocess_benches::{median_per_call, report};
use std::time::Duration;

/// Nanoseconds of the system-wide monotonic clock, the same in every
/// process of the machine.
fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Tells the parent when its first hook began, then (if `crash`) when it
/// fails, and fails: a supervisor restarts it.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Flapper {
    tx: PipeSender,
    crash: bool,
}

/// A mark sent back by a `Flapper`.
#[derive(Serialize, Deserialize, Debug)]
enum Mark {
    Began(u64),
    Failing(u64),
}

impl Process for Flapper {
    fn prerun(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.tx.send(&Mark::Began(now_ns()))?;
        Ok(())
    }
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        if self.crash {
            self.tx.send(&Mark::Failing(now_ns()))?;
            return Err("crash".into());
        }
        Ok(())
    }
}

/// A status of 100 bytes once encoded.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Status100 {
    done: u64,
    name: String,
    rate: f64,
}

impl Status100 {
    fn new() -> Status100 {
        Status100 {
            done: 42,
            name: "x".repeat(90),
            rate: 1.5,
        }
    }
}

/// Reports once, then waits to be stopped.
#[derive(Process, Serialize, Deserialize, Clone, Default)]
struct Reporter;

impl Process for Reporter {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        ctx.report(&Status100::new())?;
        ctx.tell(&())?;
        while !ctx.should_stop() {
            ctx.listen::<()>(Duration::from_millis(200))?;
        }
        ctx.stop();
        Ok(())
    }
}

/// Waits to be stopped.
#[derive(Process, Serialize, Deserialize, Clone, Default)]
struct Idle;

impl Process for Idle {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        ctx.listen::<()>(Duration::from_millis(500))?;
        Ok(())
    }
}

fn median_ns(mut v: Vec<u64>) -> Duration {
    v.sort_unstable();
    Duration::from_nanos(v[v.len() / 2])
}

fn restart_latency() {
    // Bare start(): from the call to the child's first hook.
    let (mut tx, rx) = Pipe::one_way().expect("pipe");
    let mut bare = Vec::new();
    for _ in 0..40 {
        let t0 = now_ns();
        let mut h = Flapper { tx, crash: false }.start().expect("start");
        let began = match rx.recv::<Mark>().expect("mark") {
            Mark::Began(t) => t,
            m => panic!("unexpected {m:?}"),
        };
        tx = h.wait().expect("wait").tx;
        bare.push(began.saturating_sub(t0));
    }
    drop(tx);

    // Restart: from the failing child's last act to the replacement's first hook.
    let (tx, rx) = Pipe::one_way().expect("pipe");
    let sup = Supervisor::builder()
        .intensity(1_000_000, Duration::from_secs(1))
        .build();
    sup.add_with(
        "flapper",
        Flapper { tx, crash: true },
        Child::new().backoff(Backoff::none()),
    )
    .expect("add");
    let mut failing = None;
    let mut restarts = Vec::new();
    while restarts.len() < 41 {
        match rx.recv::<Mark>().expect("mark") {
            Mark::Failing(t) => failing = Some(t),
            Mark::Began(t) => {
                if let Some(f) = failing.take() {
                    restarts.push(t.saturating_sub(f));
                }
            }
        }
    }
    sup.stop_all().expect("stop");
    report(
        "supervisor restart: failure -> first hook",
        median_ns(restarts),
        "bare start() -> first hook",
        median_ns(bare),
    );
    println!(
        "SUMMARY {:<40} {:>12} | {:<34} {:>12} | (reference)",
        "systemd's default RestartSec", "100 ms", "", ""
    );
}

fn status_read() {
    let mut h = Reporter.start().expect("start");
    h.listen::<()>(Duration::from_secs(60))
        .expect("listen")
        .expect("reported");
    let read = median_per_call(21, 100_000, || {
        let s: Option<Status100> = h.report().expect("report");
        assert!(s.is_some());
    });
    let bytes = postcard::to_stdvec(&Status100::new()).expect("encode");
    assert_eq!(bytes.len(), 100);
    let decode = median_per_call(21, 100_000, || {
        let s: Status100 = postcard::from_bytes(std::hint::black_box(&bytes)).expect("decode");
        std::hint::black_box(s);
    });
    h.stop();
    h.wait().expect("wait");
    report(
        "status read: h.report() of 100 B",
        read,
        "postcard decode of the same 100 B",
        decode,
    );
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

const N: usize = 100;

/// Parent memory per plain handle: resident memory before and after
/// starting `N` idle children.
fn per_handle() -> Result<u64> {
    let before = rss();
    let handles = (0..N).map(|_| Idle.start()).collect::<Result<Vec<_>>>()?;
    let per = rss().saturating_sub(before) / N as u64;
    for h in &handles {
        h.stop();
    }
    for mut h in handles {
        h.wait()?;
    }
    Ok(per)
}

/// Parent memory per supervised child: the same for a group of `N`.
fn per_supervised() -> Result<u64> {
    let before = rss();
    let sup = Supervisor::new();
    sup.add_group("idle", N, |_| Idle)?;
    // Children start on the supervisor's thread: count them once all run.
    for name in sup.names() {
        while sup.status(&name)?.pid.is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let per = rss().saturating_sub(before) / N as u64;
    sup.stop_all()?;
    Ok(per)
}

/// Measures one of the two in a fresh process of its own, so that neither
/// reuses memory the other freed.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct MemProbe {
    supervised: bool,
    per_child: u64,
}

impl Process for MemProbe {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.per_child = if self.supervised {
            per_supervised()?
        } else {
            per_handle()?
        };
        Ok(())
    }
}

fn memory_per_child() {
    let probe = |supervised| {
        MemProbe {
            supervised,
            per_child: 0,
        }
        .start()
        .and_then(|mut h| h.wait())
        .expect("probe")
        .per_child
    };
    let per_handle = probe(false);
    let per_child = probe(true);
    println!(
        "SUMMARY {:<40} {:>12} | {:<34} {:>12} | ratio {:>6.2}x",
        "parent memory per supervised child",
        format!("{:.1} KiB", per_child as f64 / 1024.0),
        "per plain Handle",
        format!("{:.1} KiB", per_handle as f64 / 1024.0),
        per_child as f64 / per_handle.max(1) as f64
    );
}

fn main() {
    restart_latency();
    status_read();
    memory_per_child();
}
