//! SIGTERM, SIGINT and the parent's death reach a child as a stop, not a
//! death: the iteration finishes, `onfinish` runs, no life is lost; and
//! what its hooks started goes with it.

mod support;

use rustix::process::Signal;
use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::time::{Duration, Instant};
use support::{assert_gone, assert_gone_within, finish, send_signal, watchdog};

/// Runs until stopped; says when it is running; records `onfinish`.
#[derive(Process, Serialize, Deserialize)]
#[process(lives = 3)]
struct Service {
    runs: u64,
    finished: bool,
}

impl Process for Service {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if self.runs == 0 {
            ctx.tell("running")?;
        }
        self.runs += 1;
        std::thread::sleep(Duration::from_millis(1));
        Ok(())
    }
    fn onfinish(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.finished = true;
        Ok(())
    }
}

fn stopped_by(sig: Signal) {
    watchdog();
    let mut h = Service {
        runs: 0,
        finished: false,
    }
    .start()
    .unwrap();
    let up: String = h.listen(support::DEADLINE).unwrap().expect("running");
    assert_eq!(up, "running");
    send_signal(h.pid(), sig);
    let done = finish(&mut h).unwrap();
    assert!(done.finished, "onfinish ran");
    assert!(done.runs >= 1);
    assert_eq!(h.attempt(), 1, "a signal costs no life");
    assert_gone(h.pid());
}

#[test]
fn sigterm_is_a_graceful_stop() {
    stopped_by(Signal::TERM);
}

#[test]
fn sigint_is_a_graceful_stop() {
    stopped_by(Signal::INT);
}

/// Runs until stopped, with a `sleep` subprocess; `onfinish` marks a share.
#[derive(Process, Serialize, Deserialize)]
struct Orphaned {
    finished: Share<bool>,
    stuck: bool,
}

impl Process for Orphaned {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if ctx.run_index() == 0 {
            let sub = std::process::Command::new("sleep").arg("1000").spawn()?;
            ctx.tell(&(ctx.pid(), sub.id()))?;
        }
        if self.stuck {
            // Deaf to stops: only the bound ends it.
            std::thread::sleep(Duration::from_secs(1000));
        }
        std::thread::sleep(Duration::from_millis(1));
        Ok(())
    }
    fn onfinish(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.finished.set(true)?;
        Ok(())
    }
}

/// Starts an `Orphaned`, passes its pids up, then waits to be killed.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Parent {
    finished: Share<bool>,
    stuck: bool,
}

impl Process for Parent {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let h = Orphaned {
            finished: self.finished.clone(),
            stuck: self.stuck,
        }
        .start()?;
        let pids: (u32, u32) = h.listen(Duration::from_secs(30))?.ok_or("no pids")?;
        ctx.tell(&pids)?;
        std::thread::sleep(Duration::from_secs(1000));
        drop(h);
        Ok(())
    }
}

/// Starts a `Parent`; its handle, the share its child's `onfinish` marks,
/// and the pids of its child and of that child's subprocess.
fn family(stuck: bool) -> (Handle<Parent>, Share<bool>, u32, u32) {
    watchdog();
    let finished = Share::new(false).unwrap();
    let h = Parent {
        finished: finished.clone(),
        stuck,
    }
    .start()
    .unwrap();
    let (child, sub): (u32, u32) = h.listen(support::DEADLINE).unwrap().expect("pids");
    (h, finished, child, sub)
}

fn orphan(stuck: bool) -> (Share<bool>, u32, u32) {
    let (mut h, finished, child, sub) = family(stuck);
    // SIGKILL: the parent gets no chance to stop its child itself.
    h.kill().unwrap();
    assert!(finish(&mut h).err().unwrap().is_killed());
    (finished, child, sub)
}

/// Waits (within the deadline) until `onfinish` of the orphaned child ran,
/// then until the child and its subprocess are gone.
fn stopped_gracefully_with_its_subprocess(finished: &Share<bool>, child: u32, sub: u32) {
    let until = Instant::now() + support::DEADLINE;
    while !finished.get().unwrap() {
        assert!(Instant::now() < until, "onfinish never ran");
        std::thread::yield_now();
    }
    assert_gone_within(child, support::DEADLINE);
    assert_gone_within(sub, support::DEADLINE);
}

#[test]
fn a_parents_death_is_a_graceful_stop_that_takes_subprocesses_along() {
    let (finished, child, sub) = orphan(false);
    stopped_gracefully_with_its_subprocess(&finished, child, sub);
}

/// The kernel sends the parent-death signal when the parent's spawning
/// thread ends, while the rest of the parent is still there (a SIGKILL ends
/// a process's threads one by one): the child may stop, run `onfinish` and
/// write its result before `getppid` changes, to a parent that will never
/// read it nor end the child's subprocesses. The signal alone must say
/// that the parent is gone. Here the parent is frozen (it can neither read
/// nor reap nor kill) and the signal comes while it is still the parent.
#[test]
fn the_parent_death_signal_before_the_parent_is_gone_takes_subprocesses_along() {
    let (mut h, finished, child, sub) = family(false);
    send_signal(h.pid(), Signal::STOP);
    let death = Signal::from_named_raw(skprocess::__bench::PARENT_DEATH_SIGNAL).unwrap();
    send_signal(child, death);
    stopped_gracefully_with_its_subprocess(&finished, child, sub);
    h.kill().unwrap();
    assert!(finish(&mut h).err().unwrap().is_killed());
}

#[test]
fn a_child_stuck_after_its_parents_death_is_ended_with_its_subprocesses() {
    let (finished, child, sub) = orphan(true);
    assert_gone_within(child, support::DEADLINE);
    assert_gone_within(sub, support::DEADLINE);
    assert!(
        !finished.get().unwrap(),
        "a stuck hook never reached onfinish"
    );
}
