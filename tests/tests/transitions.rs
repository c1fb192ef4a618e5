//! Commands that reach a process at every point of its life (between
//! lives, before a life's start frame, while its inbox is full), and what
//! a child's final value does when its own encoding fails.

mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::time::{Duration, Instant};
use support::{assert_gone, assert_gone_within, finish, watchdog};

/// Attempt 1 fails at once; attempt 2 runs until stopped or killed.
#[derive(Process, Serialize, Deserialize)]
#[process(lives = 2)]
struct SecondLifeForever;

impl Process for SecondLifeForever {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if ctx.attempt() == 1 {
            return Err("the first life fails".into());
        }
        std::thread::sleep(Duration::from_millis(5));
        Ok(())
    }
}

#[test]
fn a_kill_between_lives_ends_the_process() {
    watchdog();
    for round in 0..20 {
        let mut h = SecondLifeForever.start().unwrap();
        // Kill as soon as the first life is over: between the two lives.
        let until = Instant::now() + Duration::from_secs(2);
        while h.is_alive() && Instant::now() < until {
            std::hint::spin_loop();
        }
        h.kill().unwrap();
        match h.wait_timeout(Duration::from_secs(20)) {
            Ok(None) => panic!("round {round}: a kill was lost: the next life went on after it"),
            Ok(Some(_)) => panic!("round {round}: cannot succeed"),
            Err(e) => assert!(e.is_killed(), "round {round}: {e}"),
        }
        assert!(!h.is_alive());
        assert_gone(h.pid());
    }
}

/// Attempt 1 fails at once; attempt 2 collects 20 messages and reports
/// them.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1, lives = 2)]
struct Collector {
    got: Vec<u64>,
}

impl Process for Collector {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if ctx.attempt() == 1 {
            return Err("first life fails".into());
        }
        while self.got.len() < 20 {
            if let Some(n) = ctx.listen::<u64>(Duration::from_secs(30))? {
                self.got.push(n);
            }
        }
        ctx.tell(&"collected".to_string())?;
        Ok(())
    }
}

#[test]
fn tells_racing_a_new_life_are_kept_in_order_and_cost_no_life() {
    watchdog();
    for _ in 0..5 {
        let mut h = Collector { got: vec![] }.start().unwrap();
        let mut n = 0u64;
        let deadline = Instant::now() + support::DEADLINE;
        // Tell as fast as possible across the change of life, until the
        // second life says it has what it wanted.
        loop {
            assert!(Instant::now() < deadline, "no answer from the second life");
            match h.tell(&n) {
                Ok(()) => n += 1,
                // The second life had its 20 and ended.
                Err(Error::Disconnected) => break,
                Err(e) => panic!("{e}"),
            }
            if h.try_listen::<String>().unwrap().is_some() {
                break;
            }
        }
        let done = finish(&mut h).unwrap();
        assert_eq!(h.attempt(), 2);
        assert_eq!(done.got.len(), 20);
        assert!(
            done.got.windows(2).all(|w| w[0] < w[1]),
            "out of order: {:?}",
            done.got
        );
        assert!(h.tell(&0u64).unwrap_err().to_string().contains("ended"));
    }
}

/// Attempt 1 says so and fails; later attempts run until stopped, and
/// `onfinish` records which attempt finished.
#[derive(Process, Serialize, Deserialize)]
#[process(lives = 3)]
struct StopsInSecondLife {
    finished_in: Option<u32>,
}

impl Process for StopsInSecondLife {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if ctx.attempt() == 1 {
            ctx.tell(&"dying".to_string())?;
            return Err("the first life fails".into());
        }
        std::thread::sleep(Duration::from_millis(1));
        Ok(())
    }

    fn onfinish(&mut self, ctx: &mut Ctx) -> HookResult {
        self.finished_in = Some(ctx.attempt());
        Ok(())
    }
}

/// The children of this process now, from /proc.
fn children() -> Vec<u32> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        pids.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    pids
}

#[test]
fn a_stop_racing_a_new_life_stops_it_gracefully_and_costs_no_life() {
    watchdog();
    // Rounds where the stop was sent once the second life existed (the
    // new child seen may belong to another test running meanwhile).
    let mut raced = 0;
    for round in 0..100 {
        if raced == 10 {
            break;
        }
        let mut h = StopsInSecondLife { finished_in: None }.start().unwrap();
        let said: Option<String> = h.listen(support::DEADLINE).unwrap();
        assert_eq!(said.as_deref(), Some("dying"));
        let first = h.pid();
        let before = children();
        // Stop as soon as a second life exists as a process: most often
        // before it has read its start frame, or even before the parent
        // has sent it.
        let deadline = Instant::now() + support::DEADLINE;
        let new = loop {
            if let Some(p) = children().into_iter().find(|p| !before.contains(p)) {
                break p;
            }
            assert!(Instant::now() < deadline, "round {round}: no second life");
            std::hint::spin_loop();
        };
        h.stop();
        let outcome = finish(&mut h);
        assert_gone(h.pid());
        if h.pid() == new {
            raced += 1;
            let done = outcome
                .unwrap_or_else(|e| panic!("round {round}: the stop cost the second life: {e}"));
            assert_eq!(done.finished_in, Some(2), "round {round}");
            assert_eq!(h.attempt(), 2, "round {round}");
        } else {
            // Either the stop came before a second life was started (there
            // is none, and the first life's failure is the outcome), or the
            // second life took it as above.
            match outcome {
                Ok(done) => {
                    assert_eq!(done.finished_in, Some(2), "round {round}");
                    assert_eq!(h.attempt(), 2, "round {round}");
                }
                Err(e) => {
                    assert!(e.to_string().contains("the first life fails"), "{e}");
                    assert_eq!((h.attempt(), h.pid()), (1, first), "round {round}");
                }
            }
        }
    }
    assert_eq!(raced, 10, "the stop never met a second life");
}

/// Tells `n` small messages.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Teller {
    n: u64,
}

impl Process for Teller {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        for i in 0..self.n {
            ctx.tell(&i)?;
        }
        Ok(())
    }
}

#[test]
fn waiting_on_a_child_that_tells_more_than_the_inbox_holds_does_not_hang() {
    // Far more than the inbox's bound, nobody listening while it runs.
    let n = 300_000;
    let mut h = Teller { n }.start().unwrap();
    finish(&mut h).unwrap();
    let mut got = 0;
    loop {
        match h.try_listen::<u64>() {
            Ok(Some(i)) => {
                assert_eq!(i, got);
                got += 1;
            }
            Ok(None) => panic!("the process has ended: its messages are all here"),
            Err(Error::Disconnected) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got, n);
}

/// A value whose encoding fails (or panics) once `mode` says so.
#[derive(Deserialize, Default)]
struct Picky {
    mode: u8,
}

impl Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.mode {
            1 => Err(serde::ser::Error::custom("picky refuses: mode 1 is secret")),
            2 => panic!("picky panics while encoding"),
            _ => s.serialize_newtype_struct("Picky", &self.mode),
        }
    }
}

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1, lives = 2)]
struct GoesBadly {
    picky: Picky,
    then: u8,
}

impl Process for GoesBadly {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.picky.mode = self.then;
        Ok(())
    }
}

#[test]
fn a_final_value_that_fails_to_encode_keeps_the_serde_reason() {
    let mut h = GoesBadly {
        picky: Picky::default(),
        then: 1,
    }
    .start()
    .unwrap();
    let e = finish(&mut h).err().expect("cannot succeed");
    let text = e.to_string();
    assert!(text.contains("mode 1 is secret"), "{text}");
    assert!(text.contains("send back the final value"), "{text}");
    assert!(!e.is_crash(), "{text}");
}

#[test]
fn a_panic_in_the_final_encode_is_a_panic_not_an_abort() {
    let mut h = GoesBadly {
        picky: Picky::default(),
        then: 2,
    }
    .start()
    .unwrap();
    let e = finish(&mut h).err().expect("cannot succeed");
    let text = e.to_string();
    assert!(e.is_panic(), "{text}");
    assert!(text.contains("picky panics while encoding"), "{text}");
    assert!(!text.contains("SIGABRT"), "{text}");
}

/// Decodes only even numbers.
#[derive(Serialize, Default)]
struct EvenOnly(u8);

impl<'de> Deserialize<'de> for EvenOnly {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u8::deserialize(d)?;
        if n % 2 == 1 {
            return Err(serde::de::Error::custom("odd numbers are refused"));
        }
        Ok(EvenOnly(n))
    }
}

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct MakesOdd {
    n: EvenOnly,
}

impl Process for MakesOdd {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.n.0 = 3;
        Ok(())
    }
}

#[test]
fn a_final_value_the_parent_cannot_decode_does_not_blame_another_type() {
    let mut h = MakesOdd { n: EvenOnly(0) }.start().unwrap();
    let text = finish(&mut h).err().expect("undecodable").to_string();
    assert!(text.contains("MakesOdd"), "{text}");
    assert!(!text.contains("another type"), "{text}");
}

/// Starts `sleep` as a subprocess, tells its pid, then misbehaves as told.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1, timeout(run = "300ms"))]
struct Spawner {
    how: u8,
}

impl Process for Spawner {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let child = std::process::Command::new("sleep").arg("1000").spawn()?;
        ctx.tell(&child.id())?;
        match self.how {
            // Overrun the timeout.
            0 => std::thread::sleep(Duration::from_secs(1000)),
            // Wait to be killed.
            1 => std::thread::sleep(Duration::from_secs(1000)),
            // Lose the life.
            _ => return Err("lost".into()),
        }
        Ok(())
    }
}

fn grandchild_of(h: &Handle<Spawner>) -> u32 {
    h.listen::<u32>(support::DEADLINE)
        .unwrap()
        .expect("the grandchild's pid")
}

#[test]
fn a_timed_out_child_takes_its_subprocesses_along() {
    let mut h = Spawner { how: 0 }.start().unwrap();
    let grandchild = grandchild_of(&h);
    assert!(finish(&mut h).err().unwrap().is_timeout());
    assert_gone_within(grandchild, Duration::from_secs(10));
}

#[test]
fn a_killed_child_takes_its_subprocesses_along() {
    let mut h = Spawner { how: 1 }.start().unwrap();
    let grandchild = grandchild_of(&h);
    h.kill().unwrap();
    assert!(finish(&mut h).err().unwrap().is_killed());
    assert_gone_within(grandchild, Duration::from_secs(10));
}

#[test]
fn a_child_that_lost_its_life_takes_its_subprocesses_along() {
    let mut h = Spawner { how: 2 }.start().unwrap();
    let grandchild = grandchild_of(&h);
    assert!(finish(&mut h).is_err());
    assert_gone_within(grandchild, Duration::from_secs(10));
}

/// Tells a message whose type name is longer than 64 KiB.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Named<T>(u8, std::marker::PhantomData<T>);

type Long1 = (u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8);
type Long2 = (Long1, Long1, Long1, Long1, Long1, Long1, Long1, Long1);
type Long3 = (Long2, Long2, Long2, Long2, Long2, Long2, Long2, Long2);
type Long4 = (Long3, Long3, Long3, Long3, Long3, Long3, Long3, Long3);
type Long5 = (Long4, Long4, Long4, Long4, Long4, Long4, Long4, Long4);
type LongName = Named<Long5>;

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct LongTeller;

impl Process for LongTeller {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        ctx.tell(&Named::<Long5>(7, std::marker::PhantomData))?;
        Ok(())
    }
}

#[test]
fn a_message_type_name_longer_than_64_kib_is_received() {
    assert!(std::any::type_name::<LongName>().len() > 64 * 1024);
    let mut h = LongTeller.start().unwrap();
    let m: LongName = h.listen(support::DEADLINE).unwrap().expect("a message");
    assert_eq!(m.0, 7);
    finish(&mut h).unwrap();
}
