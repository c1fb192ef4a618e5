//! Pools whose workers run under a cluster engine, beside local workers, in
//! the same run:
//!
//! - `map_fn` of `x * 2` over 1 M `u64`s through `mpirun` workers (TCP
//!   over loopback) beside local workers (a socket pair), same worker
//!   count (target >= 0.5x);
//! - pool start-up, `build()` to a first answer: through each engine
//!   (local, `mpirun`, Slurm's `srun`).
//!
//! An engine that is absent (no `mpirun`, no Slurm controller answering
//! `sinfo`) is skipped with a printed line.

use criterion::{criterion_group, Criterion};
use skprocess::{Launcher, Pool};
use skprocess_benches::{median, report, report_rate};
use std::hint::black_box;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const ITEMS: u64 = 1_000_000;

fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn runs(program: &str, arg: &str) -> bool {
    Command::new("timeout")
        .args(["20", program, arg])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The engines here, by name, with their launchers.
fn engines() -> Vec<(&'static str, Launcher)> {
    let mut out = vec![("local", Launcher::local())];
    if runs("mpirun", "--version") {
        out.push(("mpirun", Launcher::mpirun()));
    } else {
        println!("skipped: mpirun (not installed)");
    }
    if runs("sinfo", "-h") {
        out.push(("slurm", Launcher::slurm()));
    } else {
        println!("skipped: slurm (no controller answers sinfo)");
    }
    out
}

fn local_pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(workers()).expect("local pool"))
}

fn mpi_pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        if !runs("mpirun", "--version") {
            println!("skipped: map_fn through mpirun (not installed)");
            return None;
        }
        Some(
            Pool::builder()
                .workers(workers())
                .launcher(Launcher::mpirun())
                .build()
                .expect("mpirun pool"),
        )
    })
    .as_ref()
}

fn double(pool: &Pool) -> u64 {
    let v: Vec<u64> = pool.map_fn(|x: u64| x * 2, 0..ITEMS).expect("map_fn");
    v[v.len() - 1]
}

/// `build()` to the first answer.
fn start_up(launcher: &Launcher) -> Duration {
    let t = Instant::now();
    let pool = Pool::builder()
        .workers(workers())
        .launcher(launcher.clone())
        .build()
        .expect("pool");
    black_box(pool.map_fn(|x: u8| x, [1]).expect("first call"));
    let took = t.elapsed();
    drop(pool);
    took
}

fn benches_cluster(c: &mut Criterion) {
    let mut g = c.benchmark_group("cluster");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    g.bench_function("map_fn x*2, 1M items, local workers", |b| {
        b.iter(|| double(local_pool()))
    });
    if let Some(p) = mpi_pool() {
        g.bench_function("map_fn x*2, 1M items, mpirun workers", |b| {
            b.iter(|| double(p))
        });
    }
    g.finish();
}

fn summary() {
    println!("{} workers per pool", workers());
    if let Some(mpi) = mpi_pool() {
        // Interleaved rounds: the machine's noise hits both alike.
        let (mut local, mut remote) = (Vec::new(), Vec::new());
        black_box(double(local_pool()));
        black_box(double(mpi));
        for _ in 0..7 {
            let t = Instant::now();
            black_box(double(local_pool()));
            local.push(t.elapsed());
            let t = Instant::now();
            black_box(double(mpi));
            remote.push(t.elapsed());
        }
        local.sort();
        remote.sort();
        report_rate(
            "map_fn x*2, 1M u64, mpirun workers (target >= 0.5x)",
            ITEMS as f64 / remote[3].as_secs_f64(),
            "local workers",
            ITEMS as f64 / local[3].as_secs_f64(),
            "items/s",
        );
    }
    let engines = engines();
    let local = median(5, || {
        black_box(start_up(&Launcher::local()));
    });
    for (name, launcher) in &engines[1..] {
        let t = median(5, || {
            black_box(start_up(launcher));
        });
        report(
            &format!("pool start-up through {name}, build() to first answer"),
            t,
            "local start-up",
            local,
        );
    }
    println!("local pool start-up, build() to first answer: {local:.2?}");
}

criterion_group!(benches, benches_cluster);

fn main() {
    if !skprocess_benches::summary_only() {
        benches();
    }
    summary();
    Criterion::default().configure_from_args().final_summary();
}
