//! Logging cost in a child: events per second emitted inside a hook, timed
//! in the child, with the funnel to the parent's subscriber, with tracing
//! disabled (no subscriber in the parent, so none in the child), and, for
//! scale, with the child formatting its own events (`tracing-subscriber`'s
//! `fmt` writing to a sink, no skprocess involved). The same for spans
//! (each opened with a field, entered, exited and closed) and for records
//! of the `log` crate.
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
    /// Spans through the funnel.
    Spans,
    /// Spans in the child's own `fmt` subscriber.
    SpansLocalFmt,
    /// `log` records through the funnel.
    LogRecords,
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
        let mode = self.mode;
        let emit = |n: u64| {
            let t0 = Instant::now();
            match mode {
                Mode::Spans | Mode::SpansLocalFmt => {
                    for i in 0..n {
                        tracing::info_span!("item", i).in_scope(|| {});
                    }
                }
                Mode::LogRecords => {
                    for i in 0..n {
                        log::info!("processed item {i} of the batch");
                    }
                }
                _ => {
                    for i in 0..n {
                        tracing::info!(i, worker = "bench", "processed item {i} of the batch");
                    }
                }
            }
            t0.elapsed()
        };
        let took = if matches!(self.mode, Mode::LocalFmt | Mode::SpansLocalFmt) {
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

/// The parent's subscriber in funnel mode: counts what arrives (events,
/// spans).
#[derive(Clone, Default)]
struct Count(Arc<AtomicU64>);

impl<S: tracing::Subscriber> Layer<S> for Count {
    fn on_event(&self, _event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn on_new_span(
        &self,
        _attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: Context<'_, S>,
    ) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs one child emitting `n` events; returns (time in the hook, time
/// from start to wait's return).
fn run(mode: Mode, n: u64) -> (Duration, Duration) {
    let count = Count::default();
    let funnel = matches!(mode, Mode::Funnel | Mode::Spans | Mode::LogRecords);
    let _guard = funnel.then(|| {
        tracing::subscriber::set_default(tracing_subscriber::registry().with(count.clone()))
    });
    let t0 = Instant::now();
    let done = Emitter { mode, n, nanos: 0 }
        .start()
        .and_then(|mut h| h.wait())
        .expect("the emitter runs");
    let whole = t0.elapsed();
    if funnel {
        assert_eq!(
            count.0.load(Ordering::Relaxed),
            n,
            "events or spans were lost"
        );
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
        ("spans, funnel, burst of 10k", Mode::Spans, 10_000),
        (
            "spans, child's own fmt to a sink",
            Mode::SpansLocalFmt,
            200_000,
        ),
        (
            "log records, funnel, burst of 10k",
            Mode::LogRecords,
            10_000,
        ),
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
            "log/{name:<36} {:>13.0} per s in the hook ({:>7.1} ns each); start to wait: {:>11.0} per s",
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
    report_rate(
        "log: spans in a child, funnel, burst",
        rates[4],
        "child's own fmt subscriber (sink)",
        rates[5],
        "spans/s",
    );
    report_rate(
        "log: log records in a child, funnel, burst",
        rates[6],
        "tracing events, funnel, burst",
        rates[0],
        "rec/s",
    );
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("log");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for mode in [Mode::Funnel, Mode::Disabled, Mode::LocalFmt, Mode::Spans] {
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
