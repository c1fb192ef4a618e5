//! Logging cost in a child: events per second emitted inside a hook, timed
//! in the child, with the funnel to the parent's subscriber, with tracing
//! disabled (no subscriber in the parent, so none in the child), and, for
//! scale, with the child formatting its own events (`tracing-subscriber`'s
//! `fmt` writing to a sink, no skprocess involved).
//!
//! `cargo bench -p skprocess-benches --bench log` prints a summary (medians
//! of several children, and the ratios), then criterion's per-event times.

use criterion::Criterion;
use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Mode {
    /// The parent has a subscriber: events go through the funnel.
    Funnel,
    /// The parent has none: the child installs none.
    Disabled,
    /// The child formats its events itself, into a sink.
    LocalFmt,
}

/// Emits `n` events in its run hook and reports how long that took.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Emitter {
    mode: Mode,
    n: u64,
    /// Filled in by the child: nanoseconds spent emitting.
    nanos: u64,
}

impl Process for Emitter {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let emit = |n: u64| {
            let t0 = Instant::now();
            for i in 0..n {
                tracing::info!(i, worker = "bench", "processed item {i} of the batch");
            }
            t0.elapsed()
        };
        let took = if self.mode == Mode::LocalFmt {
            let local = tracing_subscriber::fmt()
                .with_writer(std::io::sink)
                .with_ansi(false)
                .finish();
            tracing::subscriber::with_default(local, || emit(self.n))
        } else {
            emit(self.n)
        };
        self.nanos = took.as_nanos() as u64;
        Ok(())
    }
}

/// The parent's subscriber in funnel mode: counts what arrives.
#[derive(Clone, Default)]
struct Count(Arc<AtomicU64>);

impl<S: tracing::Subscriber> Layer<S> for Count {
    fn on_event(&self, _event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs one child emitting `n` events; returns (time in the hook, time
/// from start to wait's return).
fn run(mode: Mode, n: u64) -> (Duration, Duration) {
    let count = Count::default();
    let _guard = (mode == Mode::Funnel).then(|| {
        tracing::subscriber::set_default(tracing_subscriber::registry().with(count.clone()))
    });
    let t0 = Instant::now();
    let done = Emitter { mode, n, nanos: 0 }
        .start()
        .and_then(|mut h| h.wait())
        .expect("the emitter runs");
    let whole = t0.elapsed();
    if mode == Mode::Funnel {
        assert_eq!(count.0.load(Ordering::Relaxed), n, "events were lost");
    }
    (Duration::from_nanos(done.nanos), whole)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn summary() {
    const REPS: usize = 7;
    // 10 000 events (about 600 KiB encoded) fit the child's buffer: the hook
    // never waits for the parent. 200 000 do not: past the buffer, the
    // child runs at the pace the parent takes them (back-pressure).
    let cases = [
        ("funnel, burst of 10k", Mode::Funnel, 10_000u64),
        ("funnel, 200k (paced by the parent)", Mode::Funnel, 200_000),
        ("disabled (no subscriber)", Mode::Disabled, 200_000),
        ("child's own fmt to a sink", Mode::LocalFmt, 200_000),
    ];
    let mut rates = Vec::new();
    for (name, mode, n) in cases {
        let mut hook = Vec::new();
        let mut whole = Vec::new();
        run(mode, 1000); // warm-up
        for _ in 0..REPS {
            let (h, w) = run(mode, n);
            hook.push(n as f64 / h.as_secs_f64());
            whole.push(n as f64 / w.as_secs_f64());
        }
        let (h, w) = (median(hook), median(whole));
        println!(
            "log/{name:<36} {:>13.0} events/s in the hook ({:>7.1} ns/event); start to wait: {:>11.0} events/s",
            h,
            1e9 / h,
            w
        );
        rates.push(h);
    }
    use skprocess_benches::report_rate;
    report_rate(
        "log: events in a child, funnel, burst",
        rates[0],
        "tracing disabled (no subscriber)",
        rates[2],
        "ev/s",
    );
    report_rate(
        "log: events in a child, funnel, paced",
        rates[1],
        "tracing disabled (no subscriber)",
        rates[2],
        "ev/s",
    );
    report_rate(
        "log: events in a child, funnel, burst",
        rates[0],
        "child formats its own (fmt to sink)",
        rates[3],
        "ev/s",
    );
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("log");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for mode in [Mode::Funnel, Mode::Disabled, Mode::LocalFmt] {
        g.bench_function(format!("{mode:?}").to_lowercase(), |b| {
            b.iter_custom(|iters| run(mode, iters).0);
        });
    }
    g.finish();
}

fn main() {
    summary();
    if skprocess_benches::summary_only() {
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
