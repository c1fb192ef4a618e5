//! A pool whose workers run under a cluster engine: `map_fn` over a million
//! items through `mpirun` (Open MPI or MPICH) or Slurm's `srun`, and where
//! the items ran (each worker's rank and host, as the engine set them).
//!
//! ```sh
//! cargo run --release --example cluster -- mpirun      # or: srun, local
//! cargo run --release --example cluster -- srun 8      # 8 workers
//! ```
//!
//! On a real cluster, the binary must be at the same path on every node
//! (a shared filesystem, or a copy), and the nodes must reach this machine:
//! set `SKPROCESS_ADVERTISE` to the address they should dial if this
//! machine's host name is not it.

use skprocess::{Launcher, Pool};
use std::collections::BTreeMap;
use std::time::Instant;

/// Where this worker runs: `rank N on HOST` (the engine's rank variable).
fn place() -> String {
    let rank = ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"]
        .iter()
        .find_map(|k| std::env::var(k).ok())
        .unwrap_or_else(|| "-".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    format!("rank {rank} on {host}, pid {}", std::process::id())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let engine = args.next().unwrap_or_else(|| "mpirun".into());
    let workers: usize = args.next().map_or(Ok(2), |n| n.parse())?;
    let launcher = match engine.as_str() {
        "mpirun" => Launcher::mpirun(),
        "srun" | "slurm" => Launcher::slurm(),
        "local" => Launcher::local(),
        other => anyhow::bail!("unknown engine {other:?}: mpirun, srun or local"),
    };

    let t0 = Instant::now();
    let pool = Pool::builder()
        .workers(workers)
        .launcher(launcher)
        .build()?;
    println!(
        "{workers} workers started through {engine} in {:.2?}",
        t0.elapsed()
    );

    // A million items, doubled remotely, in order.
    let t0 = Instant::now();
    let doubled: Vec<u64> = pool.map_fn(|x: u64| x * 2, 0..1_000_000u64)?;
    let took = t0.elapsed();
    assert!(doubled.iter().enumerate().all(|(i, &v)| v == 2 * i as u64));
    println!(
        "map_fn(x * 2) over {} items: {took:.2?} ({:.1} M items/s)",
        doubled.len(),
        doubled.len() as f64 / took.as_secs_f64() / 1e6
    );

    // Where they ran: each item reports its worker's place.
    let places: Vec<String> = pool.map_fn(|_: u64| place(), 0..1_000_000u64)?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &places {
        *counts.entry(p).or_default() += 1;
    }
    println!("items per worker:");
    for (p, n) in counts {
        println!("  {p}: {n}");
    }
    drop(pool);
    if engine != "local" {
        println!("pool dropped: the {engine} job has ended");
    }
    Ok(())
}
