//! Per-hook timeouts and join_in, enforced by the parent (it kills the
//! child, so a hook that never returns still ends on time).

mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::time::{Duration, Instant};
use support::{assert_gone, finish};

/// Sleeps `hang` in `hook` on the attempts listed in `hang_on`.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 3)]
struct Sleepy {
    hook: Hook,
    hang_on: Vec<u32>,
    hang: Duration,
    attempt: u32,
}

impl Sleepy {
    fn maybe_hang(&mut self, hook: Hook, ctx: &Ctx) {
        self.attempt = ctx.attempt();
        if hook == self.hook && self.hang_on.contains(&ctx.attempt()) {
            // Stands for a hook stuck in C code: it never looks at a flag.
            std::thread::sleep(self.hang);
        }
    }
}

impl Process for Sleepy {
    fn prerun(&mut self, ctx: &mut Ctx) -> HookResult {
        self.maybe_hang(Hook::Prerun, ctx);
        Ok(())
    }
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        self.maybe_hang(Hook::Run, ctx);
        Ok(())
    }
    fn postrun(&mut self, ctx: &mut Ctx) -> HookResult {
        self.maybe_hang(Hook::Postrun, ctx);
        Ok(())
    }
    fn onfinish(&mut self, ctx: &mut Ctx) -> HookResult {
        self.maybe_hang(Hook::Onfinish, ctx);
        Ok(())
    }
}

fn sleepy(hook: Hook, hang_on: Vec<u32>) -> Sleepy {
    Sleepy {
        hook,
        hang_on,
        hang: Duration::from_secs(60),
        attempt: 0,
    }
}

#[test]
fn a_hook_past_its_timeout_is_killed_on_time() {
    for hook in Hook::ALL {
        let limit = Duration::from_millis(150);
        let cfg = Sleepy::config().timeout(hook, limit);
        let t0 = Instant::now();
        let mut h = sleepy(hook, vec![1]).start_with(cfg).unwrap();
        let e = finish(&mut h).err().expect("times out");
        let took = t0.elapsed();
        assert!(e.is_timeout(), "{hook}: {e}");
        assert_eq!(e.hook(), Some(hook));
        assert!(!e.is_crash());
        assert!(
            e.to_string().contains(&format!("timed out in {hook}")),
            "{e}"
        );
        assert!(e.to_string().contains("exceeded its 150ms timeout"), "{e}");
        assert!(
            took >= limit,
            "{hook}: ended after {took:?}, before the limit"
        );
        // The killed call is timed with what it had run: at least the limit.
        let timer = h.timers().get(hook).clone();
        assert!(timer.max() >= limit, "{hook}: {timer:?}");
        assert_gone(h.pid());
    }
}

#[test]
fn timeouts_have_millisecond_precision() {
    // A hook that takes 40 ms passes a 200 ms limit; one that hangs fails
    // a 60 ms limit soon after 60 ms.
    let ok = Sleepy {
        hook: Hook::Run,
        hang_on: vec![1],
        hang: Duration::from_millis(40),
        attempt: 0,
    };
    let mut h = ok
        .start_with(Sleepy::config().timeout(Hook::Run, Duration::from_millis(200)))
        .unwrap();
    assert!(finish(&mut h).is_ok());

    let mut h = sleepy(Hook::Run, vec![1])
        .start_with(Sleepy::config().timeout(Hook::Run, Duration::from_millis(60)))
        .unwrap();
    let e = finish(&mut h).err().expect("times out");
    assert!(e.is_timeout());
    assert!(e.to_string().contains("exceeded its 60ms timeout"), "{e}");
    // The hang was 1000 s: the process ended because of the 60 ms limit,
    // and the killed call is counted with at least that long.
    assert!(h.timers().run.max() >= Duration::from_millis(60));
    assert_eq!(h.timers().run.count(), 1);
}

#[test]
fn a_timeout_costs_a_life_and_the_next_attempt_can_succeed() -> skprocess::Result<()> {
    let cfg = Sleepy::config()
        .lives(3)
        .timeout(Hook::Run, Duration::from_millis(100));
    let mut h = sleepy(Hook::Run, vec![1, 2]).start_with(cfg)?;
    assert_eq!(finish(&mut h)?.attempt, 3);
    assert_eq!(
        h.timers().run.count(),
        3 + 2,
        "timers count every attempt's calls (the killed ones too)"
    );
    Ok(())
}

#[test]
fn join_in_limits_the_whole_process_with_no_retry() {
    #[derive(Process, Serialize, Deserialize)]
    struct Forever {
        attempts: u32,
    }
    impl Process for Forever {
        fn run(&mut self, ctx: &mut Ctx) -> HookResult {
            self.attempts = ctx.attempt();
            std::thread::sleep(Duration::from_millis(5));
            Ok(())
        }
    }
    let limit = Duration::from_millis(300);
    let t0 = Instant::now();
    let mut h = Forever { attempts: 0 }
        .start_with(Config::default().lives(3).join_in(limit))
        .unwrap();
    let e = finish(&mut h).err().expect("join_in ends it");
    let took = t0.elapsed();
    assert!(e.is_timeout(), "{e}");
    assert_eq!(e.attempt(), Some(1), "no retry after join_in: {e}");
    assert!(e.to_string().contains("exceeded join_in of 300ms"), "{e}");
    assert!(took >= limit, "{took:?}");
    assert_gone(h.pid());
}

#[test]
fn join_in_counts_every_life() {
    // Each attempt hangs in run until its 200 ms timeout; join_in (500 ms)
    // ends the process during the third attempt.
    let cfg = Sleepy::config()
        .lives(10)
        .timeout(Hook::Run, Duration::from_millis(200))
        .join_in(Duration::from_millis(500));
    let mut h = sleepy(Hook::Run, (1..=10).collect())
        .start_with(cfg)
        .unwrap();
    let e = finish(&mut h).err().expect("join_in");
    assert!(e.to_string().contains("join_in"), "{e}");
    assert!(e.is_timeout());
    // Every attempt hangs in run, so each one before the last ended by its
    // timeout (and its killed call is counted) until join_in ended the
    // last one (whose call is not).
    let attempt = e.attempt().unwrap();
    assert!(attempt < 10, "join_in, not the lives, ended it: {e}");
    assert_eq!(h.timers().run.count(), u64::from(attempt - 1));
}
