//! Memory: what a child costs beyond a bare re-exec of the same binary, and
//! what each live handle costs its parent.
//!
//! Child: its peak resident set (VmHWM, read in `onfinish`) beside the peak
//! of a bare re-exec that exits before `main`. Parent: resident memory
//! before and after starting 200 idle processes, per handle.

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::time::Duration;

/// Reads a `kB` field of /proc/self/status, in bytes.
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[derive(Process, Serialize, Deserialize, Default)]
#[process(runs = 1)]
struct Measure {
    peak: u64,
}

impl Process for Measure {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
    fn onfinish(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.peak = status_kb("VmHWM:");
        Ok(())
    }
}

/// Waits for its parent to let it go.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Idle;

impl Process for Idle {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        ctx.tell(&())?;
        ctx.listen::<()>(Duration::from_secs(120))?;
        Ok(())
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    let bare = median(
        (0..9)
            .map(|_| skprocess::__bench::bare_child_peak_rss().expect("bare child"))
            .collect(),
    );
    let ours = median(
        (0..9)
            .map(|_| {
                Measure::default()
                    .start()
                    .and_then(|mut h| h.wait())
                    .expect("child")
                    .peak
            })
            .collect(),
    );
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "SUMMARY {:<40} {:>12} | {:<34} {:>12} | overhead {:.2} MiB (target <= 4 MiB)",
        "child peak RSS",
        format!("{:.2} MiB", mib(ours)),
        "bare re-exec of the same binary",
        format!("{:.2} MiB", mib(bare)),
        mib(ours.saturating_sub(bare))
    );

    let n = 200;
    let before = status_kb("VmRSS:");
    let handles: Vec<Handle<Idle>> = (0..n).map(|_| Idle.start().expect("start")).collect();
    for h in &handles {
        h.listen::<()>(Duration::from_secs(60))
            .expect("listen")
            .expect("ready");
    }
    let after = status_kb("VmRSS:");
    let per = after.saturating_sub(before) / n;
    println!(
        "SUMMARY {:<40} {:>12} | {:<34} {:>12} | target <= 64 KiB",
        "parent RSS per live handle",
        format!("{:.1} KiB", per as f64 / 1024.0),
        format!("({n} idle processes)"),
        ""
    );
    for h in &handles {
        let _ = h.tell(&());
    }
    drop(handles);
}
