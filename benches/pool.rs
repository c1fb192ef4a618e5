//! Pool throughput beside the same work on threads, in the same run:
//!
//! - tiny items: `x * 2` over 1 M `u64`s through `Pool::map_fn`, beside
//!   `std::thread::scope` (one chunk per core) and rayon;
//! - CPU-bound items of about 1 ms each, through `Pool::map` (process items)
//!   and `Pool::map_fn`, beside a `std::thread::scope` work queue and rayon.
//!
//! The pool has one worker per core and is started once, before timing:
//! the figures are steady-state throughput.
//!
//! Beside the Rust peer procspawn: its `Pool` (one process per core, started
//! once) over tiny items and over the same ~1 ms items, one `spawn` per item
//! then every `join`, against `Pool::map` over the same items.

use criterion::{criterion_group, Criterion};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use skprocess_benches::{median, report_rate};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const TINY_ITEMS: u64 = 1_000_000;
const CPU_ITEMS: u64 = 400;
/// Tiny items for the rows beside procspawn, which pays a call per item.
const PEER_TINY_ITEMS: u64 = 2_000;

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(cores()).expect("pool"))
}

/// `k` rounds of xorshift: pure CPU, no memory traffic.
fn burn(k: u64) -> u64 {
    let mut x = black_box(k) | 1;
    for _ in 0..k {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

/// Rounds of [`burn`] that take about 1 ms here.
fn rounds_per_ms() -> u64 {
    static K: OnceLock<u64> = OnceLock::new();
    *K.get_or_init(|| {
        let probe = 1_000_000;
        let t = median(5, || {
            black_box(burn(probe));
        });
        (probe as f64 * 1e-3 / t.as_secs_f64()) as u64
    })
}

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Burn {
    k: u64,
    out: u64,
}

impl Process for Burn {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.out = burn(self.k);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The variants. Each returns a checksum so nothing is optimised away.

fn tiny_pool() -> u64 {
    let v: Vec<u64> = pool()
        .map_fn(|x: u64| x * 2, 0..TINY_ITEMS)
        .expect("map_fn");
    v[v.len() - 1]
}

fn tiny_threads() -> u64 {
    let n = cores() as u64;
    let chunk = TINY_ITEMS.div_ceil(n);
    let parts: Vec<Vec<u64>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                s.spawn(move || {
                    (i * chunk..((i + 1) * chunk).min(TINY_ITEMS))
                        .map(|x| x * 2)
                        .collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let v: Vec<u64> = parts.concat();
    v[v.len() - 1]
}

fn tiny_rayon() -> u64 {
    let v: Vec<u64> = (0..TINY_ITEMS).into_par_iter().map(|x| x * 2).collect();
    v[v.len() - 1]
}

fn cpu_inputs() -> impl Iterator<Item = u64> {
    let k = rounds_per_ms();
    (0..CPU_ITEMS).map(move |i| k + i % 7)
}

fn cpu_pool_map() -> u64 {
    let items = cpu_inputs().map(|k| Burn { k, out: 0 });
    pool()
        .map(items)
        .expect("map")
        .iter()
        .fold(0, |a, b| a ^ b.out)
}

fn cpu_pool_map_fn() -> u64 {
    pool()
        .map_fn(burn, cpu_inputs())
        .expect("map_fn")
        .iter()
        .fold(0, |a, b| a ^ b)
}

fn peer_pool() -> &'static procspawn::Pool {
    static POOL: OnceLock<procspawn::Pool> = OnceLock::new();
    POOL.get_or_init(|| procspawn::Pool::new(cores()).expect("procspawn pool"))
}

/// Every item through `spawn`, then every `join`.
fn peer_map(items: impl Iterator<Item = u64>) -> u64 {
    let pool = peer_pool();
    let handles: Vec<_> = items.map(|k| pool.spawn(k, burn)).collect();
    handles
        .into_iter()
        .fold(0, |a, h| a ^ h.join().expect("procspawn join"))
}

fn tiny_peer_pool_map() -> u64 {
    let items = (0..PEER_TINY_ITEMS).map(|x| Burn { k: x % 3, out: 0 });
    pool()
        .map(items)
        .expect("map")
        .iter()
        .fold(0, |a, b| a ^ b.out)
}

fn tiny_procspawn() -> u64 {
    peer_map((0..PEER_TINY_ITEMS).map(|x| x % 3))
}

fn cpu_procspawn() -> u64 {
    peer_map(cpu_inputs())
}

fn cpu_threads() -> u64 {
    let inputs: Vec<u64> = cpu_inputs().collect();
    let next = AtomicUsize::new(0);
    let outs: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..cores())
            .map(|_| {
                s.spawn(|| {
                    let mut acc = 0;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&k) = inputs.get(i) else { break acc };
                        acc ^= burn(k);
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    outs.iter().fold(0, |a, b| a ^ b)
}

fn cpu_rayon() -> u64 {
    let inputs: Vec<u64> = cpu_inputs().collect();
    inputs
        .par_iter()
        .map(|&k| burn(k))
        .reduce(|| 0, |a, b| a ^ b)
}

// ---------------------------------------------------------------------------

fn benches_pool(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    g.bench_function("map_fn x*2, 1M items", |b| b.iter(tiny_pool));
    g.bench_function("thread::scope x*2, 1M items", |b| b.iter(tiny_threads));
    g.bench_function("rayon x*2, 1M items", |b| b.iter(tiny_rayon));
    g.bench_function("map, 400 items of ~1 ms", |b| b.iter(cpu_pool_map));
    g.bench_function("map_fn, 400 items of ~1 ms", |b| b.iter(cpu_pool_map_fn));
    g.bench_function("thread::scope, 400 items of ~1 ms", |b| b.iter(cpu_threads));
    g.bench_function("rayon, 400 items of ~1 ms", |b| b.iter(cpu_rayon));
    g.finish();
}

/// Median items/s of `f` over rounds interleaved with the other variants.
fn rates<const N: usize>(items: u64, rounds: usize, fs: [fn() -> u64; N]) -> [f64; N] {
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); N];
    for f in fs {
        black_box(f()); // warm up
    }
    for _ in 0..rounds {
        for (i, f) in fs.iter().enumerate() {
            let t = Instant::now();
            black_box(f());
            times[i].push(t.elapsed());
        }
    }
    std::array::from_fn(|i| {
        times[i].sort();
        items as f64 / times[i][rounds / 2].as_secs_f64()
    })
}

fn summary() {
    println!(
        "pool of {} workers; one CPU item = {} xorshift rounds (~1 ms)",
        cores(),
        rounds_per_ms()
    );
    let [pool, threads, rayon] = rates(TINY_ITEMS, 7, [tiny_pool, tiny_threads, tiny_rayon]);
    report_rate(
        "map_fn x*2, 1M u64 (target >= 5M/s)",
        pool,
        "thread::scope",
        threads,
        "items/s",
    );
    report_rate("map_fn x*2, 1M u64", pool, "rayon", rayon, "items/s");

    let [map, map_fn, threads, rayon] = rates(
        CPU_ITEMS,
        5,
        [cpu_pool_map, cpu_pool_map_fn, cpu_threads, cpu_rayon],
    );
    report_rate(
        "map, ~1 ms items (target >= 0.90x)",
        map,
        "thread::scope",
        threads,
        "items/s",
    );
    report_rate("map, ~1 ms items", map, "rayon", rayon, "items/s");
    report_rate(
        "map_fn, ~1 ms items (target >= 0.90x)",
        map_fn,
        "thread::scope",
        threads,
        "items/s",
    );
    report_rate("map_fn, ~1 ms items", map_fn, "rayon", rayon, "items/s");

    let [map, peer] = rates(PEER_TINY_ITEMS, 5, [tiny_peer_pool_map, tiny_procspawn]);
    report_rate(
        "map, 2k tiny items (process items)",
        map,
        "procspawn Pool, spawn + join each",
        peer,
        "items/s",
    );
    let [map, peer] = rates(CPU_ITEMS, 5, [cpu_pool_map, cpu_procspawn]);
    report_rate(
        "map, ~1 ms items",
        map,
        "procspawn Pool, spawn + join each",
        peer,
        "items/s",
    );
}

criterion_group!(benches, benches_pool);

fn main() {
    // procspawn's pool processes are re-executions of this binary that
    // serve from here.
    procspawn::init();
    if !skprocess_benches::summary_only() {
        benches();
    }
    summary();
    Criterion::default().configure_from_args().final_summary();
}
