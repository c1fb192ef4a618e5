//! tell/listen between parent and child (API.md §3): both directions, any
//! serde type, ordered, none lost, any size; wrong types and dead peers are
//! errors, never panics or hangs.

mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::time::{Duration, Instant};
use support::finish;

// API.md §3, verbatim.
#[derive(Process, Serialize, Deserialize)]
struct Echo;
impl Process for Echo {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        match ctx.listen::<String>(Duration::from_secs(5))? {
            Some(s) if s == "bye" => ctx.stop(),
            Some(s) => ctx.tell(&s.to_uppercase())?,
            None => {}
        }
        Ok(())
    }
}

#[test]
fn api_example_echo() -> skprocess::Result<()> {
    support::watchdog();
    let h = Echo.start()?;
    h.tell(&"hi".to_string())?;
    assert_eq!(
        h.listen::<String>(Duration::from_secs(5))?,
        Some("HI".into())
    );
    h.tell(&"bye".to_string())?;
    drop(h);
    Ok(())
}

/// Echoes numbers back, doubled; `bulk` messages are answered with their length.
#[derive(Process, Serialize, Deserialize, Default)]
struct Doubler {
    seen: u64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Msg {
    Num(u64),
    Bulk(Vec<u8>),
    Stop,
}

impl Process for Doubler {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        match ctx.listen::<Msg>(Duration::from_secs(30))? {
            Some(Msg::Num(n)) => ctx.tell(&Msg::Num(n * 2))?,
            Some(Msg::Bulk(v)) => ctx.tell(&Msg::Bulk(v.into_iter().rev().collect()))?,
            Some(Msg::Stop) => ctx.stop(),
            None => return Err("parent went quiet".into()),
        }
        self.seen += 1;
        Ok(())
    }
}

#[test]
fn thousands_of_round_trips_in_order() -> skprocess::Result<()> {
    let mut h = Doubler::default().start()?;
    for i in 0..3000u64 {
        h.tell(&Msg::Num(i))?;
        assert_eq!(h.listen::<Msg>(support::DEADLINE)?, Some(Msg::Num(i * 2)));
    }
    h.tell(&Msg::Stop)?;
    assert_eq!(finish(&mut h)?.seen, 3001);
    Ok(())
}

#[test]
fn pipelined_bursts_arrive_in_order() -> skprocess::Result<()> {
    let mut h = Doubler::default().start()?;
    for burst in 0..5u64 {
        for i in 0..2000 {
            h.tell(&Msg::Num(burst * 10_000 + i))?;
        }
        for i in 0..2000 {
            assert_eq!(
                h.listen::<Msg>(support::DEADLINE)?,
                Some(Msg::Num(2 * (burst * 10_000 + i)))
            );
        }
    }
    h.tell(&Msg::Stop)?;
    finish(&mut h)?;
    Ok(())
}

#[test]
fn large_messages_both_ways() -> skprocess::Result<()> {
    let mut h = Doubler::default().start()?;
    for size in [0usize, 1, 65_535, 1 << 20, 64 << 20] {
        let blob: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        h.tell(&Msg::Bulk(blob.clone()))?;
        let back = h.listen::<Msg>(support::DEADLINE)?.expect("echo");
        let expect: Vec<u8> = blob.into_iter().rev().collect();
        assert!(back == Msg::Bulk(expect), "size {size} came back different");
    }
    h.tell(&Msg::Stop)?;
    finish(&mut h)?;
    Ok(())
}

#[test]
fn listen_times_out_with_none() -> skprocess::Result<()> {
    let mut h = Doubler::default().start()?;
    let t0 = Instant::now();
    assert_eq!(h.listen::<Msg>(Duration::from_millis(50))?, None);
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(50), "{took:?}");
    assert_eq!(h.try_listen::<Msg>()?, None);
    h.tell(&Msg::Stop)?;
    finish(&mut h)?;
    Ok(())
}

#[test]
fn a_wrong_type_is_an_error_and_the_channel_stays_usable() -> skprocess::Result<()> {
    let mut h = Doubler::default().start()?;
    h.tell(&Msg::Num(21))?;
    let e = h
        .listen::<String>(support::DEADLINE)
        .expect_err("wrong type");
    assert!(matches!(e, Error::WrongType { .. }), "{e}");
    assert!(
        e.to_string().contains("Msg") && e.to_string().contains("String"),
        "{e}"
    );
    h.tell(&Msg::Num(4))?;
    assert_eq!(h.listen::<Msg>(support::DEADLINE)?, Some(Msg::Num(8)));
    // The child gets a wrong type too: its hook fails with that error.
    h.tell(&"not a Msg")?;
    let e = finish(&mut h).err().expect("the child's listen failed");
    assert!(
        e.to_string()
            .contains("received a message of type alloc::string::String but asked for"),
        "{e}"
    );
    Ok(())
}

/// Tells `n` numbers, then ends.
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
fn messages_sent_before_the_end_can_still_be_read_then_err() -> skprocess::Result<()> {
    let mut h = Teller { n: 500 }.start()?;
    finish(&mut h)?;
    for i in 0..500u64 {
        assert_eq!(h.listen::<u64>(support::DEADLINE)?, Some(i));
    }
    // An hour: only the end being known (not the timeout) can return it
    // within the test's watchdog.
    support::watchdog();
    assert!(matches!(
        h.listen::<u64>(Duration::from_secs(3600)),
        Err(Error::Disconnected)
    ));
    assert!(matches!(h.tell(&1u8), Err(Error::Disconnected)));
    Ok(())
}

#[test]
fn listen_on_a_killed_child_is_an_error_promptly() -> skprocess::Result<()> {
    let h = Doubler::default().start()?;
    h.tell(&Msg::Num(1))?;
    assert_eq!(h.listen::<Msg>(support::DEADLINE)?, Some(Msg::Num(2)));
    h.kill()?;
    support::watchdog();
    assert!(matches!(
        h.listen::<Msg>(Duration::from_secs(3600)),
        Err(Error::Disconnected)
    ));
    // The process has ended: tell fails at once.
    assert!(matches!(h.tell(&Msg::Num(1)), Err(Error::Disconnected)));
    Ok(())
}

#[test]
fn child_listen_sees_a_dead_parent_channel_as_the_end() -> skprocess::Result<()> {
    // A child whose parent handle is dropped while it listens is stopped,
    // not left blocked: the drop completes promptly.
    let h = Doubler::default().start()?;
    let pid = h.pid();
    support::watchdog();
    drop(h);
    support::assert_gone(pid);
    Ok(())
}

#[test]
fn types_postcard_cannot_encode_name_the_way_out() -> skprocess::Result<()> {
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Inner {
        a: u32,
    }
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Flat {
        #[serde(flatten)]
        inner: Inner,
        b: u32,
    }
    let h = Echo.start()?;
    let e = h
        .tell(&Flat {
            inner: Inner { a: 1 },
            b: 2,
        })
        .expect_err("flatten cannot be encoded");
    let text = e.to_string();
    assert!(
        text.contains("Flat") && text.contains("skprocess::Json"),
        "{text}"
    );
    // The escape hatch works.
    h.tell(&skprocess::Json(Flat {
        inner: Inner { a: 1 },
        b: 2,
    }))?;
    drop(h);
    Ok(())
}

#[test]
fn json_values_round_trip_through_a_process() -> skprocess::Result<()> {
    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    #[serde(untagged)]
    enum Loose {
        N(i64),
        S(String),
    }
    #[derive(Process, Serialize, Deserialize)]
    #[process(runs = 1)]
    struct Carrier {
        v: skprocess::Json<Vec<Loose>>,
    }
    impl Process for Carrier {
        fn run(&mut self, ctx: &mut Ctx) -> HookResult {
            self.v.push(Loose::S("from child".into()));
            ctx.tell(&self.v)?;
            Ok(())
        }
    }
    let mut h = Carrier {
        v: skprocess::Json(vec![Loose::N(1)]),
    }
    .start()?;
    let told: skprocess::Json<Vec<Loose>> = h.listen(support::DEADLINE)?.expect("told");
    let done = finish(&mut h)?;
    assert_eq!(done.v.0, vec![Loose::N(1), Loose::S("from child".into())]);
    assert_eq!(told.0, done.v.0);
    Ok(())
}

#[test]
fn both_directions_at_once() -> skprocess::Result<()> {
    /// Sends a stream up while reading one down.
    #[derive(Process, Serialize, Deserialize, Default)]
    #[process(runs = 1)]
    struct Both {
        got: u64,
    }
    impl Process for Both {
        fn run(&mut self, ctx: &mut Ctx) -> HookResult {
            for i in 0..20_000u64 {
                ctx.tell(&i)?;
                while let Some(x) = ctx.try_listen::<u64>()? {
                    assert_eq!(x, self.got);
                    self.got += 1;
                }
            }
            while self.got < 20_000 {
                let x = ctx
                    .listen::<u64>(Duration::from_secs(30))?
                    .ok_or("parent stopped sending")?;
                assert_eq!(x, self.got);
                self.got += 1;
            }
            Ok(())
        }
    }
    let mut h = Both::default().start()?;
    for i in 0..20_000u64 {
        h.tell(&i)?;
    }
    for i in 0..20_000u64 {
        assert_eq!(h.listen::<u64>(support::DEADLINE)?, Some(i));
    }
    assert_eq!(finish(&mut h)?.got, 20_000);
    Ok(())
}

#[test]
fn stats_count_messages_and_bytes_both_sides() -> skprocess::Result<()> {
    /// Answers each number, then reports its own counts.
    #[derive(Process, Serialize, Deserialize, Default)]
    #[process(runs = 1)]
    struct Counted {
        seen: skprocess::Stats,
    }
    impl Process for Counted {
        fn run(&mut self, ctx: &mut Ctx) -> HookResult {
            for _ in 0..10 {
                let n: u64 = ctx.listen(Duration::from_secs(30))?.ok_or("no number")?;
                ctx.tell(&n)?;
            }
            self.seen = ctx.stats();
            Ok(())
        }
    }
    let mut h = Counted::default().start()?;
    for i in 0..10u64 {
        h.tell(&i)?;
        assert_eq!(h.listen::<u64>(support::DEADLINE)?, Some(i));
    }
    let done = finish(&mut h)?;
    let ours = h.stats();
    assert_eq!((ours.messages_sent, ours.messages_received), (10, 10));
    assert_eq!(
        ours.bytes_sent, ours.bytes_received,
        "same values both ways"
    );
    assert!(ours.bytes_sent >= 10);
    assert_eq!(done.seen.messages_received, 10);
    assert_eq!(done.seen.messages_sent, 10);
    assert_eq!(done.seen.bytes_received, ours.bytes_sent);
    Ok(())
}

#[test]
fn max_message_is_enforced_for_the_sender_with_a_clear_error() -> skprocess::Result<()> {
    let cfg = Doubler::config().max_message(4096);
    let mut h = Doubler::default().start_with(cfg)?;
    let e = h
        .tell(&Msg::Bulk(vec![7; 10_000]))
        .expect_err("over the limit");
    assert!(
        e.to_string().contains("over the 4096 byte limit")
            && e.to_string().contains("Config::max_message"),
        "{e}"
    );
    // Nothing was sent; the channel is fine.
    h.tell(&Msg::Num(5))?;
    assert_eq!(h.listen::<Msg>(support::DEADLINE)?, Some(Msg::Num(10)));
    // The child is held to the same limit: its reply to a 3000-byte message
    // fits, and so does the message itself.
    h.tell(&Msg::Bulk(vec![1; 3000]))?;
    assert!(matches!(h.listen::<Msg>(support::DEADLINE)?, Some(Msg::Bulk(v)) if v.len() == 3000));
    h.tell(&Msg::Stop)?;
    finish(&mut h)?;
    Ok(())
}
