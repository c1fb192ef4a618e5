//! Pools whose workers run under a cluster engine (API.md §14): Open MPI's
//! `mpirun` and a single-node Slurm, both real (`.ci/cluster` installs and
//! starts them for `.ci/run`). Without an engine its tests print a
//! `skipped:` line and pass, unless `SKPROCESS_REQUIRE_SERVERS=1` makes a
//! missing engine a failure.
//!
//! The tests of this file run one at a time: the single-node Slurm has two
//! cores, and `squeue` must show the queue of one test only.

mod support;

use skprocess::{Error, Launcher, Pool, Share};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use support::{assert_gone_within, send_signal, watchdog, DEADLINE};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    watchdog();
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `program args` runs and succeeds (bounded: `timeout`).
fn runs(program: &str, args: &[&str]) -> bool {
    Command::new("timeout")
        .arg("20")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The engine `name`'s launcher if it is here (for Slurm: its controller
/// answers); otherwise `None` after a `skipped:` line, or a failure under
/// `SKPROCESS_REQUIRE_SERVERS=1`.
fn engine(name: &str, test: &str) -> Option<Launcher> {
    let (present, launcher) = match name {
        "mpirun" => (runs("mpirun", &["--version"]), Launcher::mpirun()),
        "slurm" => (runs("sinfo", &["-h"]), Launcher::slurm()),
        other => panic!("no engine {other}"),
    };
    if present {
        return Some(launcher.connect_timeout(DEADLINE));
    }
    assert!(
        std::env::var("SKPROCESS_REQUIRE_SERVERS").as_deref() != Ok("1"),
        "SKPROCESS_REQUIRE_SERVERS=1 but {name} is not available (.ci/cluster starts it)"
    );
    let _ = writeln!(
        std::io::stderr(),
        "skipped: cluster::{test}: no {name} here (.ci/run installs and starts it)"
    );
    None
}

/// The engine's rank variable for this task, if it runs under one.
fn rank() -> Option<u32> {
    ["OMPI_COMM_WORLD_RANK", "SLURM_PROCID"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
}

fn double_with_rank(x: u64) -> (u64, Option<u32>) {
    (x * 2, rank())
}

fn ordered_results_under(name: &str) {
    let _one = serial();
    let Some(launcher) = engine(name, &format!("ordered_results_{name}")) else {
        return;
    };
    let pool = Pool::builder()
        .workers(3)
        .launcher(launcher)
        .build()
        .expect("pool");
    assert_eq!(pool.workers(), 3);
    assert_eq!(pool.pids().len(), 3);
    let out: Vec<(u64, Option<u32>)> = pool.map_fn(double_with_rank, 0..20_000u64).expect("map_fn");
    assert_eq!(out.len(), 20_000);
    for (i, (v, _)) in out.iter().enumerate() {
        assert_eq!(*v, 2 * i as u64);
    }
    let mut ranks: Vec<u32> = out
        .iter()
        .map(|(_, r)| r.expect("every item ran under the engine"))
        .collect();
    ranks.sort_unstable();
    ranks.dedup();
    assert!(ranks.iter().all(|&r| r < 3), "{ranks:?}");
    // A process item too: its whole lifecycle in a remote worker.
    let squares: Vec<u64> = pool.map_fn(|x: u64| x * x, [3, 4]).expect("again");
    assert_eq!(squares, [9, 16]);
}

#[test]
fn ordered_results_mpirun() {
    ordered_results_under("mpirun");
}

#[test]
fn ordered_results_slurm() {
    ordered_results_under("slurm");
}

fn slow_double(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(2));
    x * 2
}

fn killed_worker_is_replaced_under(name: &str) {
    let _one = serial();
    let Some(launcher) = engine(name, &format!("killed_worker_is_replaced_{name}")) else {
        return;
    };
    let pool = Pool::builder()
        .workers(2)
        .launcher(launcher)
        .build()
        .expect("pool");
    let before = pool.pids();
    let call = pool.background().map_fn(slow_double, 0..1500u64);
    let end = Instant::now() + DEADLINE;
    while call.progress().0 == 0 {
        assert!(Instant::now() < end, "no item ended within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    send_signal(before[0], rustix::process::Signal::KILL);
    let out = call.wait().expect("the map survives a killed worker");
    assert_eq!(out, (0..1500u64).map(|x| x * 2).collect::<Vec<_>>());
    let after = pool.pids();
    assert_eq!(after.len(), 2);
    assert!(!after.contains(&before[0]), "{before:?} -> {after:?}");
    assert_gone_within(before[0], DEADLINE);
}

#[test]
fn killed_worker_is_replaced_mpirun() {
    killed_worker_is_replaced_under("mpirun");
}

#[test]
fn killed_worker_is_replaced_slurm() {
    killed_worker_is_replaced_under("slurm");
}

#[test]
fn a_share_is_refused_with_its_type() {
    let _one = serial();
    let Some(launcher) = engine("mpirun", "a_share_is_refused_with_its_type") else {
        return;
    };
    let pool = Pool::builder()
        .workers(1)
        .launcher(launcher)
        .build()
        .expect("pool");
    let share = Share::new(5u32).expect("share");
    let err = pool
        .map_fn(|s: Share<u32>| *s.lock().unwrap(), [share])
        .expect_err("a Share cannot reach another machine");
    let text = err.to_string();
    assert!(text.contains("Share"), "{text}");
    assert!(text.contains("another machine"), "{text}");
    // The pool is unharmed.
    assert_eq!(pool.map_fn(|x: u8| x + 1, [1, 2]).expect("after"), [2, 3]);
}

/// Where a test client reaches the pool's port.
fn pool_port(pool: &Pool) -> std::net::SocketAddr {
    let mut a = pool.cluster_address().expect("a cluster pool listens");
    a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    a
}

#[test]
fn strangers_and_garbage_are_dropped() {
    let _one = serial();
    let Some(launcher) = engine("mpirun", "strangers_and_garbage_are_dropped") else {
        return;
    };
    let pool = Pool::builder()
        .workers(2)
        .launcher(launcher)
        .build()
        .expect("pool");
    let port = pool_port(&pool);
    // Reproducible garbage: random lengths, random bytes, some cut short.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut held = Vec::new();
    for i in 0..200 {
        let mut c = std::net::TcpStream::connect(port).expect("connect");
        let len = (next() % 80) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = c.write_all(&bytes);
        if i % 10 == 0 {
            // Some stay open, silent after a few bytes.
            held.push(c);
        }
    }
    assert_eq!(
        pool.map_fn(|x: u32| x * 3, 0..1000u32)
            .expect("still works"),
        (0..1000u32).map(|x| x * 3).collect::<Vec<_>>()
    );
    assert_eq!(pool.pids().len(), 2);
    drop(held);
}

#[test]
fn an_engine_that_fails_is_a_clear_error() {
    let _one = serial();
    let Some(launcher) = engine("mpirun", "an_engine_that_fails_is_a_clear_error") else {
        return;
    };
    let err = Pool::builder()
        .workers(2)
        .launcher(launcher.arg("--no-such-option-for-mpirun"))
        .build()
        .expect_err("mpirun refuses the option");
    let text = err.to_string();
    assert!(matches!(err, Error::Spawn(_)), "{text}");
    assert!(text.contains("started 0 of 2"), "{text}");
    assert!(text.contains("ended (exit status"), "{text}");
    assert!(text.contains("no-such-option"), "{text}");
    // A launcher option the engine does not have.
    let err = Pool::builder()
        .workers(1)
        .launcher(Launcher::mpirun().partition("debug"))
        .build()
        .expect_err("mpirun has no partition");
    assert!(err.to_string().contains("partition"), "{err}");
}

fn call_time_limit_under(name: &str) {
    let _one = serial();
    let Some(launcher) = engine(name, &format!("call_time_limit_{name}")) else {
        return;
    };
    let pool = Pool::builder()
        .workers(1)
        .launcher(launcher)
        .build()
        .expect("pool");
    let err = pool
        .with_timeout(Duration::from_millis(300))
        .map_fn(
            |x: u64| {
                std::thread::sleep(Duration::from_secs(30));
                x
            },
            [1u64],
        )
        .expect_err("past its limit");
    assert!(matches!(err, Error::CallTimeout { .. }), "{err}");
    // The stuck worker was replaced through the engine.
    assert_eq!(pool.map_fn(|x: u64| x + 1, [1u64]).expect("after"), [2]);
}

#[test]
fn call_time_limit_mpirun() {
    call_time_limit_under("mpirun");
}

#[test]
fn call_time_limit_slurm() {
    call_time_limit_under("slurm");
}

#[test]
fn worker_events_reach_the_log_dir() {
    let _one = serial();
    let Some(launcher) = engine("mpirun", "worker_events_reach_the_log_dir") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("skp-cluster-logs-{}", std::process::id()));
    let pool = Pool::builder()
        .workers(1)
        .launcher(launcher)
        .log_dir(&dir)
        .build()
        .expect("pool");
    let pid = pool.pids()[0];
    let out: Vec<u32> = pool
        .map_fn(
            |x: u32| {
                tracing::warn!(x, "remote event");
                x
            },
            [7u32],
        )
        .expect("map");
    assert_eq!(out, [7]);
    drop(pool);
    let text = std::fs::read_to_string(dir.join(format!("pool-worker-0-{pid}.log")))
        .expect("the worker's log file");
    assert!(text.contains("remote event"), "{text}");
    std::fs::remove_dir_all(&dir).expect("remove the log dir");
}

/// The jobs in Slurm's queue.
fn queue() -> String {
    let out = Command::new("timeout")
        .args(["20", "squeue", "-h", "-o", "%i %j %T"])
        .stdin(Stdio::null())
        .output()
        .expect("squeue");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_dropped_pool_leaves_no_job() {
    let _one = serial();
    let Some(launcher) = engine("slurm", "a_dropped_pool_leaves_no_job") else {
        return;
    };
    let pool = Pool::builder()
        .workers(2)
        .launcher(launcher)
        .build()
        .expect("pool");
    let pids = pool.pids();
    assert_eq!(pool.map_fn(|x: u8| x * 2, [4]).expect("map"), [8]);
    assert!(!queue().is_empty(), "the workers' job is queued");
    drop(pool);
    let end = Instant::now() + DEADLINE;
    loop {
        let q = queue();
        if q.is_empty() {
            break;
        }
        assert!(Instant::now() < end, "jobs left after the pool: {q}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in pids {
        assert_gone_within(pid, DEADLINE);
    }
}

#[test]
fn a_dropped_mpirun_pool_leaves_no_process() {
    let _one = serial();
    let Some(launcher) = engine("mpirun", "a_dropped_mpirun_pool_leaves_no_process") else {
        return;
    };
    let pool = Pool::builder()
        .workers(2)
        .launcher(launcher)
        .build()
        .expect("pool");
    let pids = pool.pids();
    drop(pool);
    for pid in pids {
        assert_gone_within(pid, DEADLINE);
    }
}
