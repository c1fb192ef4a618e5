//! What every process has for running as a service: status reports,
//! heartbeats, a memory limit, fatal errors (signals as stops are in
//! signals.rs).

mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use skprocess::ImapNext;
use std::time::{Duration, Instant};
use support::{finish, watchdog};

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Progress {
    done: u64,
    note: String,
}

/// Reports `n` times, then tells that it is done and waits to be stopped.
#[derive(Process, Serialize, Deserialize)]
struct Reporter {
    n: u64,
}

impl Process for Reporter {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if ctx.run_index() == 0 {
            for done in 1..=self.n {
                ctx.report(&Progress {
                    done,
                    note: "x".repeat((done % 100) as usize),
                })?;
            }
            ctx.tell("reported")?;
        }
        std::thread::sleep(Duration::from_millis(1));
        Ok(())
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn a_report_is_the_newest_value_and_stays_after_the_end() {
    watchdog();
    let mut h = Reporter { n: 1_000 }.start().unwrap();
    let said: String = h.listen(support::DEADLINE).unwrap().expect("reported");
    assert_eq!(said, "reported");
    let p: Progress = h.report().unwrap().expect("a report");
    assert_eq!(p.done, 1_000);
    assert!(matches!(h.report::<u64>(), Err(Error::WrongType { .. })));
    h.stop();
    finish(&mut h).unwrap();
    let p: Option<Progress> = h.report().unwrap();
    assert_eq!(p.map(|p| p.done), Some(1_000), "readable after the end");
}

#[test]
fn no_report_yet_is_none() {
    let mut h = Reporter { n: 0 }.start().unwrap();
    assert_eq!(h.report::<Progress>().unwrap(), None);
    h.stop();
    finish(&mut h).unwrap();
    assert_eq!(h.report::<Progress>().unwrap(), None);
}

#[test]
fn a_million_reports_keep_the_parent_flat_and_every_read_is_whole() {
    watchdog();
    let before = rss_bytes();
    let mut h = Reporter { n: 1_000_000 }.start().unwrap();
    let mut last = 0;
    loop {
        if let Some(p) = h.report::<Progress>().unwrap() {
            assert!(p.done >= last, "reports only move forward");
            assert_eq!(p.note.len() as u64, p.done % 100, "a whole report");
            last = p.done;
        }
        if h.try_listen::<String>().unwrap().is_some() {
            break;
        }
    }
    assert_eq!(h.report::<Progress>().unwrap().unwrap().done, 1_000_000);
    let grown = rss_bytes().saturating_sub(before);
    assert!(grown < 16 << 20, "the parent grew by {} MiB", grown >> 20);
    h.stop();
    finish(&mut h).unwrap();
}

/// Reports large values in a tight loop until it is killed.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Chatterbox;

impl Process for Chatterbox {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        // Large reports: most of the loop is spent copying into the page,
        // so a kill at a random moment often lands inside a write.
        let mut note = "y".repeat(60_000);
        ctx.report(&Progress {
            done: 0,
            note: note.clone(),
        })?;
        ctx.tell("reporting")?;
        for done in 1.. {
            note.replace_range(0..1, if done % 2 == 0 { "a" } else { "b" });
            ctx.report(&Progress {
                done,
                note: note.clone(),
            })?;
        }
        Ok(())
    }
}

#[test]
fn a_child_killed_while_it_reports_leaves_a_report_that_reads_at_once() {
    watchdog();
    for _ in 0..20 {
        let mut h = Chatterbox.start().unwrap();
        let said: String = h.listen(support::DEADLINE).unwrap().expect("reporting");
        assert_eq!(said, "reporting");
        h.kill().unwrap();
        assert!(matches!(finish(&mut h), Err(Error::Killed { .. })));
        // A read that waited for the killed writer would never return.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(h.report::<Progress>().map(|p| p.map(|p| p.note.len())));
        });
        let read = rx
            .recv_timeout(support::DEADLINE)
            .expect("report() blocked after the child was killed");
        assert_eq!(read.unwrap(), Some(60_000), "the last whole report");
    }
}

/// Sleeps in run; with `beat`, says it is alive while it does.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 2, lives = 2)]
struct Sleeper {
    beat_from_attempt: u32,
    attempt: u32,
}

impl Process for Sleeper {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        self.attempt = ctx.attempt();
        let beat = ctx.attempt() >= self.beat_from_attempt;
        let until = Instant::now() + Duration::from_millis(600);
        while Instant::now() < until {
            if beat {
                ctx.heartbeat();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

#[test]
fn a_silent_child_is_hung_and_loses_a_life() {
    let cfg = Sleeper::config().heartbeat(Duration::from_millis(150));
    let mut h = Sleeper {
        beat_from_attempt: 2,
        attempt: 0,
    }
    .start_with(cfg.clone())
    .unwrap();
    // Attempt 1 is silent for 600 ms: hung. Attempt 2 beats: it ends well.
    let done = finish(&mut h).unwrap();
    assert_eq!(done.attempt, 2);

    let mut h = Sleeper {
        beat_from_attempt: 3,
        attempt: 0,
    }
    .start_with(cfg)
    .unwrap();
    let e = finish(&mut h).err().expect("hung twice");
    assert!(e.is_hung(), "{e}");
    assert!(!e.is_timeout() && !e.is_crash(), "{e}");
    assert_eq!(e.hook(), Some(Hook::Run));
    assert!(e.to_string().contains("heartbeat"), "{e}");
    assert_eq!(e.attempt(), Some(2));
}

/// Allocates and touches `mib` MiB in run.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Hog {
    mib: usize,
    sum: u64,
}

impl Process for Hog {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let mut chunks = Vec::new();
        for _ in 0..self.mib {
            chunks.push(vec![1u8; 1 << 20]);
            // Slow enough to be seen growing.
            std::thread::sleep(Duration::from_micros(500));
        }
        self.sum = chunks.iter().map(|c| c[0] as u64).sum();
        // Stay at the peak for a moment.
        std::thread::sleep(Duration::from_millis(100));
        Ok(())
    }
}

#[test]
fn a_child_within_its_memory_limit_runs() {
    let cfg = Hog::config().memory_limit(64 << 20);
    let mut h = Hog { mib: 8, sum: 0 }.start_with(cfg).unwrap();
    assert_eq!(finish(&mut h).unwrap().sum, 8);
}

#[test]
fn a_child_past_its_memory_limit_is_out_of_memory() {
    let cfg = Hog::config().memory_limit(64 << 20).lives(2);
    let mut h = Hog { mib: 512, sum: 0 }.start_with(cfg).unwrap();
    let e = finish(&mut h).err().expect("out of memory");
    assert!(e.is_out_of_memory(), "{e}");
    assert!(e.to_string().contains("memory_limit of 64 MiB"), "{e}");
    assert_eq!(e.attempt(), Some(2), "it costs a life");
}

/// Fails with a fatal error on its first run.
#[derive(Process, Serialize, Deserialize, Clone)]
#[process(runs = 1, lives = 5)]
struct BadInput {
    input: String,
    parsed: u64,
}

impl Process for BadInput {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.parsed = self.input.parse().map_err(skprocess::fatal)?;
        Ok(())
    }
}

#[test]
fn a_fatal_error_ends_the_process_with_no_further_life() {
    let mut h = BadInput {
        input: "seven".into(),
        parsed: 0,
    }
    .start()
    .unwrap();
    let e = finish(&mut h).err().expect("fatal");
    assert!(e.is_fatal(), "{e}");
    assert_eq!(e.attempt(), Some(1));
    assert_eq!(h.attempt(), 1);
    assert!(e.to_string().contains("invalid digit"), "{e}");
    assert!(e.to_string().contains("fatal"), "{e}");
}

#[test]
fn pool_errors_name_their_item_and_fatal_ones_are_not_retried() {
    watchdog();
    let pool = Pool::new(2).unwrap();
    let items = vec![
        BadInput {
            input: "1".into(),
            parsed: 0,
        },
        BadInput {
            input: "two".into(),
            parsed: 0,
        },
        BadInput {
            input: "3".into(),
            parsed: 0,
        },
    ];
    let deadline = Instant::now() + support::DEADLINE;
    let mut imap = pool.imap(items);
    let mut results = Vec::new();
    loop {
        match imap.next_deadline(deadline) {
            ImapNext::Item(r) => results.push(r),
            ImapNext::Exhausted => break,
            ImapNext::Timeout => panic!("the pool's items did not end within the deadline"),
        }
    }
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].as_ref().unwrap().parsed, 1);
    let e = results[1].as_ref().err().expect("item 1 fails");
    assert_eq!(e.item(), Some(1));
    assert!(e.is_fatal(), "{e}");
    assert_eq!(e.attempt(), Some(1), "no retry: {e}");
    assert_eq!(results[2].as_ref().unwrap().parsed, 3);
}
