//! `Queue` throughput, one producer (this process) and one consumer (a
//! child process), 8-byte items, beside a `Pipe` moving the same items
//! between the same two processes in the same run. `SUMMARY` lines at the
//! end give items per second and the ratio (target: the queue at least
//! half the pipe's rate).

use criterion::{criterion_group, Criterion, Throughput};
use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use skprocess_benches::{median, report_rate};
use std::time::Duration;

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
}

criterion_group!(benches, throughput);

fn main() {
    if !skprocess_benches::summary_only() {
        benches();
    }
    summary();
    Criterion::default().configure_from_args().final_summary();
}
