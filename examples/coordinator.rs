//! A coordinator and its workers: a task queue, a result queue, typed
//! messages with a shutdown message, progress every 10%, each worker's
//! statistics at the end, and a large read-only input shared by every
//! worker without a copy.
//!
//! Run with `cargo run -p skprocess-examples --example coordinator`.

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::time::Instant;

/// Elements of the input each task reads.
const ROW: usize = 8192;
/// Tasks (rows of the input).
const ROWS: usize = 1024;
/// Worker processes.
const WORKERS: usize = 4;

/// What the coordinator sends to the workers.
#[derive(Serialize, Deserialize, Debug)]
enum Task {
    /// Sum the squares of one row of the input.
    Row(usize),
    /// No more work: report and stop.
    Shutdown,
}

/// What the workers send back.
#[derive(Serialize, Deserialize, Debug)]
enum Report {
    /// A row's result.
    Done { row: usize, value: f64 },
    /// A worker's statistics, its last message.
    Stats {
        worker: usize,
        pid: u32,
        rows: u64,
        busy_us: u64,
    },
}

/// A worker: pops tasks until it pops a shutdown message.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Worker {
    id: usize,
    tasks: Queue<Task>,
    results: Queue<Report>,
    /// The whole input, read in place: the descriptor travelled, not the
    /// bytes.
    input: SharedSlice<f64>,
}

impl Process for Worker {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let (mut rows, mut busy) = (0u64, std::time::Duration::ZERO);
        ctx.tell("ready")?;
        // Until the shutdown message.
        while let Task::Row(row) = self.tasks.pop()? {
            let t0 = Instant::now();
            let value = self.input[row * ROW..(row + 1) * ROW]
                .iter()
                .map(|x| x * x)
                .sum();
            busy += t0.elapsed();
            rows += 1;
            self.results.push(&Report::Done { row, value })?;
        }
        self.results.push(&Report::Stats {
            worker: self.id,
            pid: ctx.pid(),
            rows,
            busy_us: busy.as_micros() as u64,
        })?;
        Ok(())
    }
}

fn main() -> skprocess::Result<()> {
    let data: Vec<f64> = (0..ROWS * ROW)
        .map(|i| (i % 1000) as f64 / 1000.0)
        .collect();
    let started = Instant::now();
    let input = SharedSlice::from_slice(&data)?;
    println!(
        "input: {} MiB shared with {WORKERS} workers (copied once, in {:?})",
        std::mem::size_of_val(&data[..]) >> 20,
        started.elapsed()
    );
    let tasks: Queue<Task> = Queue::new()?;
    let results: Queue<Report> = Queue::new()?;
    let mut workers = (0..WORKERS)
        .map(|id| {
            Worker {
                id,
                tasks: tasks.clone(),
                results: results.clone(),
                input: input.clone(),
            }
            .start()
        })
        .collect::<skprocess::Result<Vec<_>>>()?;

    // Every worker is up before the first task, so they share the work.
    for w in &workers {
        w.listen::<String>(std::time::Duration::from_secs(60))?
            .ok_or("a worker did not start")
            .map_err(|e| skprocess::Error::Usage(e.into()))?;
    }

    // The tasks, then one shutdown message per worker: each worker stops
    // after the shutdown it pops, which comes after every task.
    let feeder = {
        let tasks = tasks.clone();
        std::thread::spawn(move || -> skprocess::Result<()> {
            for row in 0..ROWS {
                tasks.push(&Task::Row(row))?;
            }
            for _ in 0..WORKERS {
                tasks.push(&Task::Shutdown)?;
            }
            Ok(())
        })
    };

    let mut values = vec![f64::NAN; ROWS];
    let mut stats = Vec::new();
    let (mut done, mut next_report) = (0, 10);
    while done < ROWS || stats.len() < WORKERS {
        match results.pop()? {
            Report::Done { row, value } => {
                values[row] = value;
                done += 1;
                if done * 100 / ROWS >= next_report {
                    println!("progress: {next_report:3}%");
                    next_report += 10;
                }
            }
            Report::Stats {
                worker,
                pid,
                rows,
                busy_us,
            } => stats.push((worker, pid, rows, busy_us)),
        }
    }
    feeder.join().expect("the feeder thread")?;
    for w in &mut workers {
        w.wait()?;
    }

    stats.sort();
    for (worker, pid, rows, busy_us) in stats {
        println!("worker {worker} (pid {pid}): {rows} rows, busy {busy_us} µs");
    }
    let total: f64 = values.iter().sum();
    let expected: f64 = data.iter().map(|x| x * x).sum();
    assert!((total - expected).abs() <= 1e-6 * expected);
    println!(
        "sum of squares: {total:.3} in {:?} (checks out)",
        started.elapsed()
    );
    Ok(())
}
