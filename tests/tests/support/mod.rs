//! Helpers shared by the integration tests: deadlines, and checks that a
//! test left nothing behind (no process, no file in /dev/shm).
#![allow(dead_code)]

use skprocess::Handle;
use std::sync::Once;
use std::time::{Duration, Instant};

/// Every wait in these tests is bounded by this.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Starts, once per test binary, a thread that ends the binary if it runs
/// for more than `limit`: a hang becomes a fast failure.
pub fn watchdog() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_secs(240));
            eprintln!("test binary ran for more than 240 s: a test hangs");
            std::process::exit(101);
        });
    });
}

/// Says that `test` cannot run here because `missing` is absent: a
/// visible `skipped:` line on a plain machine (straight to the terminal:
/// the harness keeps what `println!` prints in a passing test), a failure
/// when `SKPROCESS_REQUIRE_SERVERS=1` (as `.ci/run` sets) requires it.
pub fn skip_without(test: &str, missing: &str) {
    assert!(
        std::env::var("SKPROCESS_REQUIRE_SERVERS").as_deref() != Ok("1"),
        "SKPROCESS_REQUIRE_SERVERS=1 but {test} finds {missing}"
    );
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {missing}");
}

/// `wait` with a deadline: panics if the process is not done in time.
pub fn finish<P: skprocess::Process>(h: &mut Handle<P>) -> skprocess::Result<P> {
    watchdog();
    match h.wait_timeout(DEADLINE) {
        Ok(Some(p)) => Ok(p),
        Ok(None) => panic!("process {} did not finish within {:?}", h.name(), DEADLINE),
        Err(e) => Err(e),
    }
}

/// The state letter and parent pid of a process, from /proc; `None` if it
/// does not exist.
pub fn proc_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether a process is gone: absent, or a zombie nobody reaped (which
/// runs nothing and holds nothing).
pub fn is_gone(pid: u32) -> bool {
    match proc_state(pid) {
        None => true,
        Some((state, _)) => state == 'Z' || state == 'X',
    }
}

/// Waits (bounded) until `pid` is gone; panics if it is still running after
/// `limit`. Polls /proc, since the process may not be our child.
pub fn assert_gone_within(pid: u32, limit: Duration) {
    let end = Instant::now() + limit;
    while !is_gone(pid) {
        assert!(
            Instant::now() < end,
            "process {pid} is still running after {limit:?}: {:?}",
            proc_state(pid)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Asserts a process this test started is gone now (it was waited on).
pub fn assert_gone(pid: u32) {
    assert!(pid != 0, "no pid");
    assert!(
        is_gone(pid),
        "process {pid} is still there: {:?}",
        proc_state(pid)
    );
}

/// Asserts nothing of skprocess's is in /dev/shm (shared memory is memfd,
/// which never appears there).
pub fn assert_no_shm_files() {
    let Ok(dir) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    let ours: Vec<_> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.to_lowercase().contains("skp"))
        .collect();
    assert!(ours.is_empty(), "files left in /dev/shm: {ours:?}");
}

/// Descriptors open in this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Sends `signal` to process `pid`; a process already gone is not an
/// error (it may have ended on its own).
pub fn send_signal(pid: u32, signal: rustix::process::Signal) {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        panic!("no process has pid {pid}");
    };
    match rustix::process::kill_process(pid, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(e) => panic!("kill({pid:?}, {signal:?}): {e}"),
    }
}

/// Does nothing, once: [`open_spawn_resources`] starts it.
#[derive(skprocess::Process, serde::Serialize, serde::Deserialize)]
#[process(runs = 1)]
pub struct WarmUp;

impl skprocess::Process for WarmUp {
    fn run(&mut self, _ctx: &mut skprocess::Ctx) -> skprocess::HookResult {
        Ok(())
    }
}

/// Starts one child and waits for it, so that what a process opens once
/// for all its starts (the fork server and its socket) is open before a
/// test counts descriptors.
pub fn open_spawn_resources() {
    use skprocess::Process;
    let mut h = WarmUp.start().expect("start");
    finish(&mut h).expect("the warm-up child");
}
