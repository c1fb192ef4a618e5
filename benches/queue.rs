//! `Queue` throughput, one producer (this process) and one consumer (a
//! child process), 8-byte items, beside a `Pipe` moving the same items
//! between the same two processes in the same run. `SUMMARY` lines at the
//! end give items per second and the ratio (target: the queue at least
//! half the pipe's rate).
//!
//! Also: 4 producer and 4 consumer processes on one queue, beside the
//! 1P/1C rate; and a `SharedSlice` of 1 GiB of `f64` summed in place by a
//! pool's workers beside rayon over a `Vec` (target >= 0.9x), with what it
//! costs to send that slice to a process beside a 1 KiB one.

use criterion::{criterion_group, Criterion, Throughput};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use skprocess_benches::{median, report, report_rate};
use std::time::{Duration, Instant};

/// Items per sample; the consumer acknowledges each burst.
const BURST: u64 = 20_000;
/// Tells a consumer to stop.
const END: u64 = u64::MAX;

/// Pops bursts of `u64`s, acknowledging each burst, until `END`.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct QueueSink {
    items: Queue<u64>,
    acks: Queue<u8>,
}

impl Process for QueueSink {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        loop {
            for _ in 0..BURST {
                if self.items.pop()? == END {
                    return Ok(());
                }
            }
            self.acks.push(&1)?;
        }
    }
}

/// Receives bursts of `u64`s on a pipe, acknowledging each burst, until
/// `END`.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct PipeSink {
    pipe: Pipe,
}

impl Process for PipeSink {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        loop {
            for _ in 0..BURST {
                if self.pipe.recv::<u64>()? == END {
                    return Ok(());
                }
            }
            self.pipe.send(&1u8)?;
        }
    }
}

/// Both consumers, started once.
struct Sinks {
    items: Queue<u64>,
    acks: Queue<u8>,
    queue_h: Handle<QueueSink>,
    pipe: Pipe,
    pipe_h: Handle<PipeSink>,
}

impl Sinks {
    fn start() -> Sinks {
        let items = Queue::new().expect("queue");
        let acks = Queue::new().expect("queue");
        let queue_h = QueueSink {
            items: items.clone(),
            acks: acks.clone(),
        }
        .start()
        .expect("start");
        let (pipe, theirs) = Pipe::pair().expect("pipe");
        let pipe_h = PipeSink { pipe: theirs }.start().expect("start");
        Sinks {
            items,
            acks,
            queue_h,
            pipe,
            pipe_h,
        }
    }

    fn queue_burst(&self) {
        for i in 0..BURST {
            self.items.push(&i).unwrap();
        }
        assert_eq!(self.acks.pop().unwrap(), 1);
    }

    fn pipe_burst(&self) {
        for i in 0..BURST {
            self.pipe.send(&i).unwrap();
        }
        assert_eq!(self.pipe.recv::<u8>().unwrap(), 1);
    }

    fn stop(mut self) {
        self.items.push(&END).unwrap();
        self.pipe.send(&END).unwrap();
        self.queue_h.wait().unwrap();
        self.pipe_h.wait().unwrap();
    }
}

fn throughput(c: &mut Criterion) {
    let s = Sinks::start();
    let mut g = c.benchmark_group("1 producer / 1 consumer, 8-byte items");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(BURST));
    g.bench_function("Queue", |b| b.iter(|| s.queue_burst()));
    g.bench_function("Pipe", |b| b.iter(|| s.pipe_burst()));
    g.finish();
    s.stop();
}

fn summary() {
    let s = Sinks::start();
    let (mut queue, mut pipe) = (Vec::new(), Vec::new());
    // Interleaved, so machine noise hits both alike.
    for _ in 0..5 {
        queue.push(median(5, || s.queue_burst()));
        pipe.push(median(5, || s.pipe_burst()));
    }
    queue.sort();
    pipe.sort();
    let rate = |d: Duration| BURST as f64 / d.as_secs_f64();
    report_rate(
        "Queue 1P/1C, 8 B items (target >= 0.5x)",
        rate(queue[queue.len() / 2]),
        "Pipe, same items",
        rate(pipe[pipe.len() / 2]),
        "items/s",
    );
    s.stop();

    // Interleaved medians of whole runs (each starts its processes).
    let (mut four, mut one) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        four.push(many(4, 100_000));
        one.push(many(1, 400_000));
    }
    four.sort_by(f64::total_cmp);
    one.sort_by(f64::total_cmp);
    report_rate(
        "Queue 4P/4C processes, 8 B items",
        four[1],
        "Queue 1P/1C processes, same items",
        one[1],
        "items/s",
    );

    shared_slice();
}

/// Pushes `n` items once it is let go.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Producer {
    go: Queue<u8>,
    items: Queue<u64>,
    n: u64,
}

impl Process for Producer {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.go.pop()?;
        for i in 0..self.n {
            self.items.push(&i)?;
        }
        Ok(())
    }
}

/// Pops until `END`, counting.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Consumer {
    items: Queue<u64>,
    got: u64,
}

impl Process for Consumer {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        while self.items.pop()? != END {
            self.got += 1;
        }
        Ok(())
    }
}

/// Items per second through one queue with `k` producer and `k` consumer
/// processes, from the moment the producers are let go until every
/// consumer has counted its share.
fn many(k: usize, per_producer: u64) -> f64 {
    let go = Queue::new().expect("queue");
    let items = Queue::new().expect("queue");
    let mut consumers: Vec<_> = (0..k)
        .map(|_| {
            Consumer {
                items: items.clone(),
                got: 0,
            }
            .start()
            .expect("start")
        })
        .collect();
    let mut producers: Vec<_> = (0..k)
        .map(|_| {
            Producer {
                go: go.clone(),
                items: items.clone(),
                n: per_producer,
            }
            .start()
            .expect("start")
        })
        .collect();
    let t = Instant::now();
    for _ in 0..k {
        go.push(&1).expect("go");
    }
    for p in &mut producers {
        p.wait().expect("producer");
    }
    for _ in 0..k {
        items.push(&END).expect("end");
    }
    let got: u64 = consumers
        .iter_mut()
        .map(|c| c.wait().expect("consumer").got)
        .sum();
    let elapsed = t.elapsed();
    assert_eq!(got, k as u64 * per_producer);
    got as f64 / elapsed.as_secs_f64()
}

/// Sums `data[lo..hi]` in place.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct PartSum {
    data: SharedSlice<f64>,
    lo: usize,
    hi: usize,
    sum: f64,
}

impl Process for PartSum {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.sum = self.data[self.lo..self.hi].iter().sum();
        Ok(())
    }
}

/// Carries a slice and does nothing with it.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Carry {
    data: SharedSlice<f64>,
}

impl Process for Carry {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        std::hint::black_box(self.data.len());
        Ok(())
    }
}

fn shared_slice() {
    const LEN: usize = (1 << 30) / 8;
    let v: Vec<f64> = (0..LEN).map(|i| (i % 1000) as f64).collect();
    let data = SharedSlice::from_slice(&v).expect("slice");
    let pool = Pool::default();
    let parts = 4 * pool.workers();
    let chunk = LEN.div_ceil(parts);
    let expected: f64 = v.par_iter().sum();
    let pool_sum = || {
        let items = (0..parts).map(|i| PartSum {
            data: data.clone(),
            lo: i * chunk,
            hi: ((i + 1) * chunk).min(LEN),
            sum: 0.0,
        });
        let total: f64 = pool.map(items).expect("map").iter().map(|p| p.sum).sum();
        assert!((total - expected).abs() <= expected * 1e-9);
    };
    let rayon_sum = || {
        let total: f64 = v.par_iter().sum();
        assert!((total - expected).abs() <= expected * 1e-9);
    };
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        ours.push(median(3, pool_sum));
        base.push(median(3, rayon_sum));
    }
    ours.sort();
    base.sort();
    let gib = |d: Duration| 1.0 / d.as_secs_f64();
    report_rate(
        "SharedSlice 1 GiB f64 sum over the pool",
        gib(ours[2]),
        "rayon over a Vec",
        gib(base[2]),
        "GiB/s",
    );

    let small = SharedSlice::from_slice(&v[..128]).expect("slice");
    let send = |s: &SharedSlice<f64>| {
        Carry { data: s.clone() }
            .start()
            .and_then(|mut h| h.wait())
            .expect("carry");
    };
    let (mut big_t, mut small_t) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        big_t.push(median(10, || send(&data)));
        small_t.push(median(10, || send(&small)));
    }
    big_t.sort();
    small_t.sort();
    report(
        "start -> wait carrying a 1 GiB SharedSlice",
        big_t[2],
        "the same carrying 1 KiB",
        small_t[2],
    );
}

criterion_group!(benches, throughput);

fn main() {
    if !skprocess_benches::summary_only() {
        benches();
    }
    summary();
    Criterion::default().configure_from_args().final_summary();
}
