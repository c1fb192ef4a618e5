//! Turns at the control socket (skprocess's `inbox` module): a thread that
//! listens reads the socket itself when nobody else does, and hands it
//! back when the process needs it read for something else. Every frame is
//! still read by someone, in order, whoever holds the socket: a stop after
//! a listen, several listening threads, sync and async listeners, a life
//! killed while its parent listens.

mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::{finish, DEADLINE};

/// Answers messages until told 0, then keeps busy (never listening again)
/// until it is asked to stop.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct BusyAfterListen;

impl Process for BusyAfterListen {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        loop {
            match ctx.listen::<u64>(DEADLINE)? {
                Some(0) => break,
                Some(n) => ctx.tell(&(n + 1))?,
                None => return Err("the parent never told".into()),
            }
        }
        let end = Instant::now() + DEADLINE;
        while !ctx.should_stop() {
            if Instant::now() > end {
                return Err("the stop never arrived".into());
            }
            // A hook at work: it polls its flag, it does not listen.
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
}

#[test]
fn a_stop_reaches_a_hook_that_listened_once_and_listens_no_more() -> skprocess::Result<()> {
    support::watchdog();
    let mut h = BusyAfterListen.start()?;
    // In a conversation the hook reads the socket itself (it is waiting
    // when each message comes).
    for i in 1..=100u64 {
        h.tell(&i)?;
        assert_eq!(h.listen::<u64>(DEADLINE)?, Some(i + 1));
    }
    h.tell(&0u64)?;
    // The stop comes while the hook no longer listens: its control thread
    // must take the socket back to read it.
    h.stop();
    finish(&mut h)?;
    assert!(support::is_gone(h.pid()));
    Ok(())
}

/// Tells `count` numbers in a row, then waits for the parent's go to end.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Counter {
    count: u64,
}

impl Process for Counter {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        for i in 0..self.count {
            ctx.tell(&i)?;
        }
        ctx.listen::<()>(DEADLINE)?.ok_or("no go from the parent")?;
        Ok(())
    }
}

#[test]
fn several_threads_listening_get_every_message_once_each_in_order() -> skprocess::Result<()> {
    support::watchdog();
    const N: u64 = 3000;
    let mut h = Counter { count: N }.start()?;
    let got = AtomicUsize::new(0);
    let all = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut mine = Vec::new();
                let end = Instant::now() + DEADLINE;
                while got.load(Ordering::SeqCst) < N as usize {
                    assert!(Instant::now() < end, "messages went missing");
                    // Short waits: each thread takes the socket in turn.
                    if let Some(x) = h.listen::<u64>(Duration::from_millis(5)).unwrap() {
                        mine.push(x);
                        got.fetch_add(1, Ordering::SeqCst);
                    }
                }
                // What one thread received came in the order it was sent.
                assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
                all.lock().unwrap().extend(mine);
            });
        }
    });
    let all = all.into_inner().unwrap();
    assert_eq!(all.len(), N as usize, "a message was received twice");
    assert_eq!(all.into_iter().collect::<BTreeSet<_>>(), (0..N).collect());
    h.tell(&())?;
    finish(&mut h)?;
    Ok(())
}

#[test]
fn try_listen_in_a_loop_gets_every_message_in_order() -> skprocess::Result<()> {
    support::watchdog();
    const N: u64 = 2000;
    let mut h = Counter { count: N }.start()?;
    let end = Instant::now() + DEADLINE;
    let mut next = 0;
    while next < N {
        assert!(Instant::now() < end, "stuck after {next} messages");
        if let Some(x) = h.try_listen::<u64>()? {
            assert_eq!(x, next);
            next += 1;
        }
    }
    h.tell(&())?;
    finish(&mut h)?;
    Ok(())
}

/// Doubles what it is told until told 0.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Doubler;

impl Process for Doubler {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        loop {
            match ctx.listen::<u64>(DEADLINE)? {
                Some(0) | None => return Ok(()),
                Some(x) => ctx.tell(&(2 * x))?,
            }
        }
    }
}

#[test]
fn blocking_and_async_listens_alternate_without_losing_a_message() -> skprocess::Result<()> {
    support::watchdog();
    let mut h = Doubler.start()?;
    for i in 1..=300u64 {
        h.tell(&i)?;
        let got = match i % 3 {
            0 => futures::executor::block_on(h.listen_async::<u64>())?,
            1 => h.listen::<u64>(DEADLINE)?.expect("an answer"),
            _ => {
                // A short look first, then the wait.
                match h.try_listen::<u64>()? {
                    Some(x) => x,
                    None => h.listen::<u64>(DEADLINE)?.expect("an answer"),
                }
            }
        };
        assert_eq!(got, 2 * i);
    }
    h.tell(&0u64)?;
    finish(&mut h)?;
    Ok(())
}

/// Its first life hangs past its run timeout; its second tells 42.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1, lives = 2, timeout(run = "300ms"))]
struct HangsThenTells;

impl Process for HangsThenTells {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if ctx.attempt() == 1 {
            // Killed by its parent at the timeout.
            let _ = ctx.listen::<u64>(DEADLINE)?;
            return Err("the first life should have been killed".into());
        }
        ctx.tell(&42u64)?;
        Ok(())
    }
}

#[test]
fn a_life_killed_while_its_parent_listens_hands_the_socket_to_the_next() -> skprocess::Result<()> {
    support::watchdog();
    let mut h = HangsThenTells.start()?;
    let first = h.pid();
    // This thread reads the first life's socket when its timeout passes;
    // the runner kills that life, takes the socket back, and starts the
    // second, whose message this same listen returns.
    assert_eq!(h.listen::<u64>(DEADLINE)?, Some(42));
    finish(&mut h)?;
    assert_ne!(h.pid(), first);
    assert_eq!(h.attempt(), 2);
    assert!(support::is_gone(first));
    Ok(())
}
