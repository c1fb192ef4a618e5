//! Pools whose workers run under a cluster engine (API.md §14): Open MPI's
//! `mpirun` and a single-node Slurm, both real (`.ci/cluster` installs and
//! starts them for `.ci/run`). Without an engine its tests print a
//! `skipped:` line and pass, unless `SKPROCESS_REQUIRE_SERVERS=1` makes a
//! missing engine a failure.
//!
//! The tests of this file run one at a time: the single-node Slurm has two
//! cores, and `squeue` must show the queue of one test only.

mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
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
    support::skip_without(
        &format!("cluster::{test}"),
        &format!("no {name} here (.ci/run installs and starts it)"),
    );
    None
}

/// A pool of `workers` started by `launcher`.
fn pool_on(launcher: Launcher, workers: usize) -> Pool {
    Pool::builder()
        .workers(workers)
        .launcher(launcher)
        .build()
        .expect("pool")
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
    let pool = pool_on(launcher, 3);
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
    let pool = pool_on(launcher, 2);
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
    let pool = pool_on(launcher, 1);
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
    let pool = pool_on(launcher, 2);
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
    let pool = pool_on(launcher, 1);
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
    let pool = pool_on(launcher, 2);
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
    let pool = pool_on(launcher, 2);
    let pids = pool.pids();
    drop(pool);
    for pid in pids {
        assert_gone_within(pid, DEADLINE);
    }
}

/// A process item that fails its first attempt with an error, or (with
/// `hang`) overruns its run timeout on its first attempt.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 2, lives = 2, timeout(run = "500ms"))]
struct Flaky {
    x: u64,
    hang: bool,
    total: u64,
    ranks: Vec<u32>,
}

impl Process for Flaky {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if ctx.attempt() == 1 && ctx.run_index() == 1 {
            if self.hang {
                std::thread::sleep(Duration::from_secs(30));
            }
            return Err("first attempt fails".into());
        }
        self.total += self.x;
        self.ranks.extend(rank());
        Ok(())
    }
}

fn process_items_under(name: &str) {
    let _one = serial();
    let Some(launcher) = engine(name, &format!("process_items_{name}")) else {
        return;
    };
    let pool = pool_on(launcher, 2);
    let items = (0..6).map(|x| Flaky {
        x,
        hang: x == 4,
        total: 0,
        ranks: Vec::new(),
    });
    let done = pool.map(items).expect("every item has a second life");
    for (x, item) in done.iter().enumerate() {
        assert_eq!(item.total, 2 * x as u64, "item {x}");
        assert_eq!(item.ranks.len(), 2, "item {x} ran under the engine");
    }
}

#[test]
fn process_items_mpirun() {
    process_items_under("mpirun");
}

#[test]
fn process_items_slurm() {
    process_items_under("slurm");
}

/// A worker running another build of the program (this binary with bytes
/// appended, started by a stand-in engine) is refused with a clear error.
#[test]
fn another_build_is_refused() {
    let _one = serial();
    /// Removed however the test ends.
    struct TempDir(std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let tmp =
        TempDir(std::env::temp_dir().join(format!("skp-cluster-build-{}", std::process::id())));
    let dir = tmp.0.clone();
    std::fs::create_dir_all(&dir).expect("temp dir");
    let other = dir.join("other-build");
    std::fs::copy(std::env::current_exe().expect("exe"), &other).expect("copy");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&other)
        .and_then(|mut f| f.write_all(b"another build"))
        .expect("append");
    let engine = dir.join("engine");
    std::fs::write(
        &engine,
        format!(
            "#!/bin/sh\n[ -n \"$SKPROCESS_REMOTE\" ] || exit 0\nexec {}\n",
            other.display()
        ),
    )
    .expect("script");
    use std::os::unix::fs::PermissionsExt;
    for f in [&other, &engine] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let err = Pool::builder()
        .workers(1)
        .launcher(
            Launcher::mpirun()
                .program(&engine)
                .connect_timeout(DEADLINE),
        )
        .build()
        .expect_err("another build is refused");
    let text = err.to_string();
    assert!(text.contains("another build of this program"), "{text}");
    assert!(text.contains("same binary at the same path"), "{text}");
    drop(tmp);
    assert!(!dir.exists());
}

/// Run by [`a_killed_parent_leaves_no_job`] in a process of its own: makes
/// a pool through the engine named by `SKP_CLUSTER_PARENT`, prints its
/// workers' pids, and waits to be killed.
#[test]
#[ignore = "run by a_killed_parent_leaves_no_job"]
fn helper_parent_of_a_cluster_pool() {
    let Ok(name) = std::env::var("SKP_CLUSTER_PARENT") else {
        return;
    };
    let launcher = match name.as_str() {
        "slurm" => Launcher::slurm(),
        _ => Launcher::mpirun(),
    };
    let pool = pool_on(launcher, 2);
    let pids: Vec<String> = pool.pids().iter().map(u32::to_string).collect();
    println!("PIDS {}", pids.join(" "));
    std::io::stdout().flush().expect("flush");
    // Killed long before this.
    std::thread::sleep(DEADLINE);
}

fn killed_parent_under(name: &str) {
    let _one = serial();
    let Some(_) = engine(name, &format!("a_killed_parent_leaves_no_job_{name}")) else {
        return;
    };
    let mut parent = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "helper_parent_of_a_cluster_pool",
            "--ignored",
            "--nocapture",
        ])
        .env("SKP_CLUSTER_PARENT", name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the parent");
    let out = parent.stdout.take().expect("stdout");
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(p) = line.strip_prefix("PIDS ") {
                let pids: Vec<u32> = p.split(' ').filter_map(|x| x.parse().ok()).collect();
                let _ = tx.send(pids);
            }
        }
    });
    let pids = rx
        .recv_timeout(DEADLINE)
        .expect("the parent's pool started");
    assert_eq!(pids.len(), 2);
    parent.kill().expect("SIGKILL the parent");
    parent.wait().expect("reap the parent");
    for pid in pids {
        assert_gone_within(pid, DEADLINE);
    }
    if name == "slurm" {
        let end = Instant::now() + DEADLINE;
        loop {
            let q = queue();
            if q.is_empty() {
                break;
            }
            assert!(Instant::now() < end, "jobs left after the parent died: {q}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn a_killed_parent_leaves_no_job_mpirun() {
    killed_parent_under("mpirun");
}

#[test]
fn a_killed_parent_leaves_no_job_slurm() {
    killed_parent_under("slurm");
}

/// `SKPROCESS_ADVERTISE` names the address workers dial; a malformed one
/// is a clear error.
#[test]
fn advertise_names_the_address() {
    let _one = serial();
    let Some(launcher) = engine("mpirun", "advertise_names_the_address") else {
        return;
    };
    // The tests of this file run one at a time: nothing else reads it now.
    std::env::set_var("SKPROCESS_ADVERTISE", "127.0.0.1:not-a-port");
    let err = Pool::builder()
        .workers(1)
        .launcher(launcher.clone())
        .build()
        .expect_err("a malformed address");
    assert!(err.to_string().contains("SKPROCESS_ADVERTISE"), "{err}");
    std::env::set_var("SKPROCESS_ADVERTISE", "127.0.0.1");
    let pool = Pool::builder().workers(1).launcher(launcher).build();
    std::env::remove_var("SKPROCESS_ADVERTISE");
    let pool = pool.expect("workers dial 127.0.0.1");
    assert_eq!(pool.map_fn(|x: u8| x * 2, [21]).expect("map"), [42]);
}
