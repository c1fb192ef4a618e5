//! Running out of descriptors is a clear error for what needed them, never
//! a killed child, a hang or a stream out of step.

mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::time::Duration;
use support::{finish, watchdog};

/// Waits for a go, tells twenty shares in one message, then a plain one.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Sender;

impl Process for Sender {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let _go: Option<String> = ctx.listen(Duration::from_secs(60))?;
        let share = Share::new(7u64)?;
        let many: Vec<Share<u64>> = (0..20).map(|_| share.clone()).collect();
        ctx.tell(&many)?;
        ctx.tell("after")?;
        Ok(())
    }
}

/// Starts a `Sender`, then lowers its own open-file limit so that twenty
/// more descriptors cannot arrive, and records what it receives.
#[derive(Process, Serialize, Deserialize, Default)]
#[process(runs = 1)]
struct Starved {
    first: String,
    second: Option<String>,
    sender_ok: bool,
}

fn highest_fd() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

impl Process for Starved {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let mut h = Sender.start()?;
        let (_, hard) = rlimit::Resource::NOFILE.get()?;
        rlimit::Resource::NOFILE.set(highest_fd() + 6, hard)?;
        h.tell("go")?;
        self.first = match h.listen::<Vec<Share<u64>>>(Duration::from_secs(60)) {
            Ok(v) => format!("received {:?}", v.map(|v| v.len())),
            Err(e) => e.to_string(),
        };
        self.second = h.listen::<String>(Duration::from_secs(60))?;
        self.sender_ok = h.wait().is_ok();
        Ok(())
    }
}

#[test]
fn descriptors_that_do_not_fit_fail_their_message_and_nothing_else() {
    watchdog();
    let mut h = Starved::default().start().unwrap();
    let r = finish(&mut h).unwrap();
    assert!(
        r.first
            .contains("descriptors sent with this message were lost"),
        "{}",
        r.first
    );
    assert_eq!(r.second.as_deref(), Some("after"), "the stream is in step");
    assert!(r.sender_ok, "the sender was not blamed");
}

/// Lowers its open-file limit so that starting a process runs out of
/// descriptors at some step, for each step in turn.
#[derive(Process, Serialize, Deserialize, Default)]
#[process(runs = 1)]
struct Exhausted {
    errors: Vec<String>,
    zombies: usize,
    started_after: bool,
}

fn zombie_children() -> usize {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| support::proc_state(pid).is_some_and(|(s, ppid)| ppid == me && s == 'Z'))
        .count()
}

impl Process for Exhausted {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let (soft, hard) = rlimit::Resource::NOFILE.get()?;
        for spare in 0..12 {
            rlimit::Resource::NOFILE.set(highest_fd() + 1 + spare, hard)?;
            match Sender.start() {
                Ok(h) => drop(h),
                Err(e) => self.errors.push(e.to_string()),
            }
            rlimit::Resource::NOFILE.set(soft, hard)?;
        }
        self.zombies = zombie_children();
        let mut h = Sender.start()?;
        h.tell("go")?;
        self.started_after = h.wait().is_ok();
        Ok(())
    }
}

#[test]
fn running_out_of_descriptors_while_starting_a_process_is_a_clear_error() {
    watchdog();
    let mut h = Exhausted::default().start().unwrap();
    let r = finish(&mut h).unwrap();
    assert!(!r.errors.is_empty(), "some start ran out of descriptors");
    for e in &r.errors {
        assert!(
            e.contains("Too many open files") || e.contains("EMFILE"),
            "{e}"
        );
    }
    assert_eq!(r.zombies, 0, "no failed start left a zombie");
    assert!(
        r.started_after,
        "processes start again once descriptors are back"
    );
}
