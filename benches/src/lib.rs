//! Shared helpers of the skprocess benches: medians measured by hand, so
//! every bench can print its figure beside its raw baseline, and the ratio.

use std::time::{Duration, Instant};

/// Whether to skip the criterion groups and print only the `SUMMARY`
/// table (set `SUMMARY_ONLY=1`): the figures BENCHMARKS.md records.
pub fn summary_only() -> bool {
    std::env::var_os("SUMMARY_ONLY").is_some()
}

/// Runs `f` `n` times (after `n / 10 + 1` warm-up runs) and returns the
/// median duration of one call.
pub fn median(n: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..n / 10 + 1 {
        f();
    }
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

/// Median of `samples` batches of `per_batch` calls, per call.
pub fn median_per_call(samples: usize, per_batch: usize, mut f: impl FnMut()) -> Duration {
    median(samples, || {
        for _ in 0..per_batch {
            f();
        }
    }) / per_batch as u32
}

/// Prints one line of the summary table: figure, baseline, ratio.
pub fn report(name: &str, ours: Duration, baseline_name: &str, baseline: Duration) {
    let ratio = ours.as_secs_f64() / baseline.as_secs_f64();
    println!(
        "SUMMARY {name:<40} {:>12} | {baseline_name:<34} {:>12} | ratio {ratio:>6.2}x",
        format!("{ours:.2?}"),
        format!("{baseline:.2?}")
    );
}

/// Prints a throughput line: items (or bytes) per second, beside a baseline.
pub fn report_rate(
    name: &str,
    ours_per_s: f64,
    baseline_name: &str,
    baseline_per_s: f64,
    unit: &str,
) {
    println!(
        "SUMMARY {name:<40} {:>12} | {baseline_name:<34} {:>12} | ratio {:>6.2}x",
        format!("{} {unit}", human(ours_per_s)),
        format!("{} {unit}", human(baseline_per_s)),
        ours_per_s / baseline_per_s
    );
}

fn human(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.2}k", x / 1e3)
    } else {
        format!("{x:.1}")
    }
}
