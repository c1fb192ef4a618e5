//! No orphans: when a parent dies, even by SIGKILL, its children and their
//! children exit promptly.

mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::time::Duration;
use support::{assert_gone, assert_gone_within, finish};

/// Runs until its parent is gone.
#[derive(Process, Serialize, Deserialize)]
struct Leaf;

impl Process for Leaf {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        std::thread::sleep(Duration::from_millis(20));
        Ok(())
    }
}

/// Starts `depth` levels of descendants below itself, tells the parent all
/// their pids, then hangs until killed.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Middle {
    depth: u32,
}

impl Process for Middle {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let mut pids = vec![ctx.pid()];
        // Keep the handles alive while hanging.
        let mut _leaf = None;
        let mut _mid = None;
        if self.depth <= 1 {
            let h = Leaf.start()?;
            pids.push(h.pid());
            _leaf = Some(h);
        } else {
            let h = Middle {
                depth: self.depth - 1,
            }
            .start()?;
            let below: Vec<u32> = h
                .listen(Duration::from_secs(30))?
                .ok_or("no pids from below")?;
            pids.extend(below);
            _mid = Some(h);
        }
        ctx.tell(&pids)?;
        std::thread::sleep(Duration::from_secs(120));
        Ok(())
    }
}

#[test]
fn a_parent_killed_by_sigkill_takes_its_descendants_along() {
    let mut h = Middle { depth: 3 }.start().unwrap();
    let pids: Vec<u32> = h.listen(support::DEADLINE).unwrap().expect("pids");
    assert_eq!(pids.len(), 4, "middle, middle, middle, leaf: {pids:?}");
    for &p in &pids {
        assert!(!support::is_gone(p), "{p} should be running");
    }
    h.kill().unwrap();
    assert!(finish(&mut h).err().expect("killed").is_killed());
    assert_gone(pids[0]);
    for &p in &pids[1..] {
        // Each level stops gracefully, bounded by its stop_grace plus a second.
        assert_gone_within(p, Duration::from_secs(20));
    }
}

#[test]
fn a_killed_middle_process_is_reported_by_its_parent() {
    /// Starts a Middle, hands its pid up, waits on it.
    #[derive(Process, Serialize, Deserialize)]
    #[process(runs = 1)]
    struct Top {
        message: String,
    }
    impl Process for Top {
        fn run(&mut self, ctx: &mut Ctx) -> HookResult {
            let mut h = Middle { depth: 1 }.start()?;
            let pids: Vec<u32> = h.listen(Duration::from_secs(30))?.ok_or("no pids")?;
            ctx.tell(&pids)?;
            self.message = h.wait().err().map(|e| e.to_string()).unwrap_or_default();
            Ok(())
        }
    }
    let mut h = Top {
        message: String::new(),
    }
    .start()
    .unwrap();
    let pids: Vec<u32> = h.listen(support::DEADLINE).unwrap().expect("pids");
    // Kill the middle process from outside; its parent (Top) sees a crash.
    std::process::Command::new("kill")
        .args(["-KILL", &pids[0].to_string()])
        .status()
        .unwrap();
    let top = finish(&mut h).unwrap();
    assert!(
        top.message.contains(
            "crashed in run (run #0, attempt 1 of 1): the child was killed by signal 9 (SIGKILL)"
        ),
        "{}",
        top.message
    );
    assert_gone_within(pids[1], Duration::from_secs(20));
    support::assert_no_shm_files();
}

/// Starts two leaves (through its fork server, unless switched off), tells
/// the parent its own pid, the server's, the leaves' and their parents',
/// then hangs until killed.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Forker;

impl Process for Forker {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let leaves = [Leaf.start()?, Leaf.start()?];
        let server = skprocess::__private::fork_server_pid().unwrap_or(0);
        let mut report = vec![ctx.pid(), server];
        for h in &leaves {
            let ppid = support::proc_state(h.pid()).map_or(0, |(_, ppid)| ppid);
            report.extend([h.pid(), ppid]);
        }
        ctx.tell(&report)?;
        std::thread::sleep(Duration::from_secs(120));
        Ok(())
    }
}

#[test]
fn a_parent_killed_by_sigkill_takes_its_fork_server_and_forked_children_along() {
    let mut h = Forker.start().unwrap();
    let r: Vec<u32> = h.listen(support::DEADLINE).unwrap().expect("pids");
    let (me, server, leaves) = (r[0], r[1], [(r[2], r[3]), (r[4], r[5])]);
    let switched_off =
        std::env::var_os(skprocess::__private::FORK_SERVER_ENV).is_some_and(|v| v == "0");
    if !switched_off {
        assert!(server != 0, "the leaves came from a fork server");
        assert!(!support::is_gone(server), "the server runs");
    }
    for (leaf, ppid) in leaves {
        assert_eq!(
            ppid, me,
            "leaf {leaf} is a child of the process, not of the server"
        );
    }
    h.kill().unwrap();
    assert!(finish(&mut h).err().expect("killed").is_killed());
    if server != 0 {
        assert_gone_within(server, Duration::from_secs(20));
    }
    for (leaf, _) in leaves {
        assert_gone_within(leaf, Duration::from_secs(20));
    }
}
