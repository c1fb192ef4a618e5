//! The parent's inbox of told messages is bounded: a child that tells
//! faster than its parent listens is slowed down, not buffered without end.
//! (Alone in its test binary, so that no other test's memory is counted.)

mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::time::{Duration, Instant};
use support::{finish, watchdog};

/// Tells a million small messages, counting them in a share.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Flood {
    sent: Share<u64>,
}

const FLOOD: u64 = 1_000_000;

impl Process for Flood {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        for i in 0..FLOOD {
            ctx.tell(&i)?;
            if i % 1024 == 0 {
                self.sent.set(i)?;
            }
        }
        self.sent.set(FLOOD)?;
        Ok(())
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn a_child_telling_faster_than_its_parent_listens_is_slowed_not_buffered() {
    watchdog();
    let sent = Share::new(0u64).unwrap();
    let before = rss_bytes();
    let mut h = Flood { sent: sent.clone() }.start().unwrap();
    // Give the child the chance to send everything it can without a
    // listener (at most until it has sent all of it).
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until && sent.get().unwrap() < FLOOD {
        std::thread::yield_now();
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        sent.get().unwrap() < FLOOD,
        "a million messages were sent with nobody listening (the parent grew by {} MiB)",
        grown >> 20
    );
    assert!(grown < 48 << 20, "the parent grew by {} MiB", grown >> 20);
    // Then every message arrives, in order, and the process ends.
    for i in 0..FLOOD {
        assert_eq!(h.listen::<u64>(support::DEADLINE).unwrap(), Some(i));
    }
    finish(&mut h).unwrap();
    assert!(matches!(
        h.listen::<u64>(Duration::from_secs(1)),
        Err(Error::Disconnected)
    ));
}
