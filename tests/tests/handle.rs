//! The parent's handle: wait, wait_timeout, kill, drop, is_alive, pid.

mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::time::{Duration, Instant};
use support::{assert_gone, assert_gone_within, finish};

/// Tells its pid, then runs until stopped; `stubborn` makes one hook call
/// last `stubborn` (it never checks for a stop inside).
#[derive(Process, Serialize, Deserialize, Default)]
struct Worker {
    stubborn: Option<Duration>,
    iterations: u64,
}

impl Process for Worker {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if self.iterations == 0 {
            ctx.tell(&ctx.pid())?;
        }
        self.iterations += 1;
        std::thread::sleep(self.stubborn.unwrap_or(Duration::from_millis(1)));
        Ok(())
    }
}

fn started(w: Worker, cfg: Config) -> (Handle<Worker>, u32) {
    let h = w.start_with(cfg).unwrap();
    let pid: u32 = h
        .listen(support::DEADLINE)
        .unwrap()
        .expect("the child reports its pid");
    assert_eq!(pid, h.pid());
    (h, pid)
}

#[test]
fn second_wait_is_an_error() -> skprocess::Result<()> {
    let (mut h, _) = started(Worker::default(), Config::default());
    h.stop();
    finish(&mut h)?;
    let e = h.wait().err().expect("second wait");
    assert!(matches!(e, Error::AlreadyWaited { .. }), "{e}");
    assert!(e.to_string().contains("already waited"), "{e}");
    assert!(h.wait_timeout(Duration::from_millis(1)).is_err());
    Ok(())
}

#[test]
fn wait_timeout_gives_none_then_the_result() -> skprocess::Result<()> {
    let (mut h, _) = started(Worker::default(), Config::default());
    assert!(h.wait_timeout(Duration::from_millis(20))?.is_none());
    assert!(h.is_alive());
    h.stop();
    assert!(finish(&mut h)?.iterations >= 1);
    Ok(())
}

#[test]
fn kill_ends_it_now_and_wait_says_killed() {
    let cfg = Config::default().lives(5);
    let (mut h, pid) = started(
        Worker {
            stubborn: Some(Duration::from_secs(60)),
            iterations: 0,
        },
        cfg,
    );
    h.kill().unwrap();
    let e = finish(&mut h).err().expect("killed");
    assert!(e.is_killed(), "{e}");
    assert!(
        e.to_string().contains("was killed through its handle"),
        "{e}"
    );
    assert_eq!(h.attempt(), 1, "no further life was started");
    assert_eq!(h.pid(), pid);
    assert!(!h.is_alive());
    assert_gone(pid);
    h.kill().unwrap(); // killing an ended process does nothing
}

/// Runs until stopped; marks a share in `onfinish`.
#[derive(Process, Serialize, Deserialize)]
struct Marks {
    finished: Share<bool>,
}

impl Process for Marks {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if ctx.run_index() == 0 {
            ctx.tell(&ctx.pid())?;
        }
        std::thread::sleep(Duration::from_millis(1));
        Ok(())
    }
    fn onfinish(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.finished.set(true)?;
        Ok(())
    }
}

#[test]
fn dropping_a_handle_stops_the_child() {
    let finished = Share::new(false).unwrap();
    // A grace far beyond the test's deadline: only a graceful stop can
    // end the child before drop returns.
    let cfg = Config::default().stop_grace(Duration::from_secs(3600));
    let h = Marks {
        finished: finished.clone(),
    }
    .start_with(cfg)
    .unwrap();
    let pid: u32 = h.listen(support::DEADLINE).unwrap().expect("pid");
    support::watchdog();
    drop(h);
    assert!(
        finished.get().unwrap(),
        "a cooperative child stops gracefully"
    );
    assert_gone(pid);
}

#[test]
fn dropping_a_handle_kills_a_stubborn_child_after_the_grace_period() {
    let grace = Duration::from_millis(200);
    let cfg = Config::default().stop_grace(grace);
    let (h, pid) = started(
        Worker {
            stubborn: Some(Duration::from_secs(60)),
            iterations: 0,
        },
        cfg,
    );
    let t0 = Instant::now();
    drop(h);
    let took = t0.elapsed();
    assert!(took >= grace, "killed before its grace: {took:?}");
    assert_gone(pid);
}

#[test]
fn dropping_mid_run_from_another_thread_leaves_nothing() {
    let pids: Vec<u32> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                let (h, pid) = started(Worker::default(), Config::default());
                drop(h);
                pid
            })
            .join()
            .unwrap()
        })
        .collect();
    for pid in pids {
        assert_gone(pid);
    }
}

#[test]
fn a_handle_outlives_the_thread_that_started_it() -> skprocess::Result<()> {
    // The parent-death signal is per thread on Linux; the child must not
    // die when the starting thread ends.
    let (mut h, pid) = std::thread::spawn(|| started(Worker::default(), Config::default()))
        .join()
        .unwrap();
    assert!(h.wait_timeout(Duration::from_millis(50))?.is_none());
    assert!(
        h.is_alive(),
        "child {pid} died with the thread that started it"
    );
    h.stop();
    finish(&mut h)?;
    Ok(())
}

#[test]
fn debug_shows_the_process() {
    let (h, pid) = started(Worker::default(), Config::default());
    let text = format!("{h:?}");
    assert!(
        text.contains("Worker") && text.contains(&pid.to_string()),
        "{text}"
    );
    drop(h);
    assert_gone_within(pid, Duration::from_secs(5));
}
