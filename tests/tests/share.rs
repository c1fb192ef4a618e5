//! Share<T> (API.md §5): one value shared by every process holding a clone,
//! changed atomically under a cross-process lock; exact under contention,
//! growing from any process, surviving a holder killed with the lock, and
//! leaving no descriptor, mapping or /dev/shm file behind.

mod support;
#[path = "support/share.rs"]
mod support_share;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use skprocess::{Json, ShareGuard};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::{assert_no_shm_files, finish, DEADLINE};

#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
struct Stats {
    counter: u64,
    log: Vec<String>,
}

// ---------------------------------------------------------------------------
// Processes used below.

/// API.md §5's seed example, with processes started one by one.
#[derive(Process, Serialize, Deserialize, Clone)]
#[process(runs = 10)]
struct ShareCounter {
    share: Share<Stats>,
}

impl Process for ShareCounter {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let mut s = self.share.lock()?;
        s.counter += 1;
        let n = s.counter;
        s.log.push(n.to_string());
        Ok(())
    }
}

/// Adds 1 to the counter `times` times, one lock each.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Incrementer {
    share: Share<Stats>,
    times: u64,
}

impl Process for Incrementer {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        for _ in 0..self.times {
            self.share.lock()?.counter += 1;
        }
        Ok(())
    }
}

/// Takes the lock, changes the value, tells the parent "holding", then
/// keeps the lock until the parent tells "release" (or is killed first).
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Holder {
    share: Share<Stats>,
}

impl Process for Holder {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let mut g = self.share.lock()?;
        g.counter = 999_999;
        g.log.push("unfinished".into());
        ctx.tell("holding")?;
        match ctx.listen::<String>(Duration::from_secs(120))? {
            Some(s) if s == "release" => Ok(()),
            other => Err(format!("expected release, got {other:?}").into()),
        }
    }
}

/// Grows a shared list of 1 MiB strings by `chunks` strings, one lock each.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Grower {
    share: Share<Vec<String>>,
    chunks: usize,
}

const MIB: usize = 1 << 20;

fn chunk(i: usize) -> String {
    char::from(b'a' + (i % 26) as u8).to_string().repeat(MIB)
}

impl Process for Grower {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        for _ in 0..self.chunks {
            let mut v = self.share.lock()?;
            let i = v.len();
            v.push(chunk(i));
        }
        Ok(())
    }
}

/// Reads the shared list and keeps what it saw.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Reader {
    share: Share<Vec<String>>,
    seen: Vec<(usize, u8)>,
}

impl Process for Reader {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let v = self.share.lock()?;
        self.seen = v.iter().map(|s| (s.len(), s.as_bytes()[0])).collect();
        Ok(())
    }
}

/// Overwrites the value with big, self-checking strings (one letter
/// repeated) as fast as it can; tells the parent after a few writes so it
/// can kill it at an arbitrary point, mostly while copying into the segment.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Scribbler {
    share: Share<String>,
    seed: u64,
}

fn scribble(n: u64) -> String {
    let letter = char::from(b'a' + (n % 26) as u8);
    letter.to_string().repeat(1 + (n % 5) as usize * 2 * MIB)
}

impl Process for Scribbler {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let mut n = self.seed;
        loop {
            n += 1;
            self.share.set(scribble(n))?;
            if n == self.seed + 3 {
                ctx.tell(&n)?;
            }
        }
    }
}

/// Counts this process's descriptors and mappings, then creates, uses,
/// grows, clones, sends and drops many shares, and counts again.
#[derive(Process, Serialize, Deserialize, Default)]
#[process(runs = 1)]
struct LeakCheck {
    before: (usize, usize, usize),
    after: (usize, usize, usize),
}

fn counts() -> (usize, usize, usize) {
    (
        support::open_fds(),
        support_share::share_fds(),
        support_share::share_mappings(),
    )
}

impl Process for LeakCheck {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        support::open_spawn_resources();
        self.before = counts();
        for i in 0..300u64 {
            let s = Share::new(Stats {
                counter: i,
                log: vec![],
            })?;
            let c = s.clone();
            c.lock()?.counter += 1;
            if i % 3 == 0 {
                // Growth: several pages, twice.
                s.update(|v| v.log.push("x".repeat(50_000)))?;
                s.update(|v| v.log.push("y".repeat(200_000)))?;
            }
            assert_eq!(c.get()?.counter, i + 1);
            if i % 100 == 0 {
                let mut h = Incrementer {
                    share: s.clone(),
                    times: 10,
                }
                .start()?;
                finish(&mut h)?;
                assert_eq!(s.get()?.counter, i + 11);
            }
        }
        self.after = counts();
        Ok(())
    }
}

/// Sends a share to a grandchild and gets it back in the grandchild's final
/// state: the returning handle must reuse this process's mapping.
#[derive(Process, Serialize, Deserialize, Default)]
#[process(runs = 1)]
struct MapsOnce {
    before: (usize, usize),
    after: (usize, usize),
    counter: u64,
}

impl Process for MapsOnce {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let s = Share::new(Stats::default())?;
        s.lock()?.counter += 1;
        self.before = (support_share::share_fds(), support_share::share_mappings());
        let mut h = Incrementer {
            share: s.clone(),
            times: 5,
        }
        .start()?;
        let back = finish(&mut h)?.share;
        back.lock()?.counter += 1;
        self.after = (support_share::share_fds(), support_share::share_mappings());
        self.counter = s.get()?.counter;
        Ok(())
    }
}

/// On its first attempt takes the lock, changes the value and hangs until
/// its hook timeout kills it; the second attempt adds one.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1, lives = 2, timeout(run = "300ms"))]
struct HangsOnce {
    share: Share<Stats>,
    recovered: bool,
}

impl Process for HangsOnce {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let mut s = self.share.lock()?;
        if ctx.attempt() == 1 {
            s.counter = 999_999;
            std::thread::sleep(Duration::from_secs(60));
        }
        self.recovered = s.recovered();
        s.counter += 1;
        Ok(())
    }
}

/// Receives a share as a message, bumps it, and says so.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Receiver;

impl Process for Receiver {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let share: Share<Stats> = ctx
            .listen(Duration::from_secs(60))?
            .ok_or("no share arrived")?;
        share.update(|s| s.counter += 100)?;
        ctx.tell("done")?;
        Ok(())
    }
}

/// Creates a share in the child and hands it back in its final state.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 3)]
struct Maker {
    made: Option<Share<Stats>>,
}

impl Process for Maker {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        match &self.made {
            None => {
                self.made = Some(Share::new(Stats {
                    counter: 1,
                    log: vec![format!("made by {}", ctx.pid())],
                })?)
            }
            Some(s) => s.lock()?.counter += 1,
        }
        Ok(())
    }
}

/// The value the fairness test shares: every acquisition adds one to
/// `turns`, so the value's version and `turns` move together.
#[derive(Serialize, Deserialize, Default, Debug, Clone)]
struct Turns {
    turns: u64,
    stop: bool,
}

/// Re-locks the share in a loop, holding it about a millisecond each time,
/// until the value says stop (or a bounded number of turns).
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Hammerer {
    share: Share<Turns>,
}

impl Process for Hammerer {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        for i in 0..100_000u32 {
            let mut g = self.share.lock()?;
            if g.stop {
                break;
            }
            g.turns += 1;
            // Work done while holding the lock, not a synchronisation.
            std::thread::sleep(Duration::from_millis(1));
            drop(g);
            if i == 0 {
                ctx.tell("hammering")?;
            }
        }
        Ok(())
    }
}

/// Asks for the lock `rounds` times while the hammerers hold it in turn,
/// and records how many other acquisitions happened between each request
/// and its grant; then tells the hammerers to stop.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct TurnCounter {
    share: Share<Turns>,
    rounds: u32,
    waited: Vec<u64>,
}

/// The share's version as `Debug` shows it (read without the lock).
fn version<T>(share: &Share<T>) -> u64 {
    let text = format!("{share:?}");
    let at = text.find("version: ").expect("Debug shows the version") + "version: ".len();
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a version number")
}

impl Process for TurnCounter {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        for _ in 0..self.rounds {
            // Spaces the requests out so each one arrives while a hammerer
            // holds the lock (not a synchronisation).
            std::thread::sleep(Duration::from_millis(2));
            // Every write adds one to both, so the version read before the
            // request is the number of turns taken until then.
            let requested = version(&self.share);
            let mut g = self.share.lock()?;
            self.waited.push(g.turns.saturating_sub(requested));
            g.turns += 1;
        }
        self.share.lock()?.stop = true;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The API as written.

#[test]
fn api_example_in_one_process() -> skprocess::Result<()> {
    let share = Share::new(Stats::default())?;
    share.lock()?.counter += 1;
    {
        let mut s = share.lock()?;
        s.counter += 1;
        let n = s.counter;
        s.log.push(n.to_string());
    }
    let n = share.update(|s| {
        s.counter += 1;
        s.counter
    })?;
    assert_eq!(n, 3);
    let snapshot: Stats = share.get()?;
    assert_eq!(
        snapshot,
        Stats {
            counter: 3,
            log: vec!["2".into()]
        }
    );
    share.set(Stats::default())?;
    let other = share.clone();
    assert_eq!(other.get()?, Stats::default());
    other.lock()?.counter = 5;
    assert_eq!(share.get()?.counter, 5);
    Ok(())
}

#[test]
fn seed_example_counts_to_100_with_the_log_in_order() -> skprocess::Result<()> {
    let share = Share::new(Stats::default())?;
    let mut handles: Vec<_> = (0..10)
        .map(|_| {
            ShareCounter {
                share: share.clone(),
            }
            .start()
        })
        .collect::<skprocess::Result<_>>()?;
    for h in &mut handles {
        finish(h)?;
    }
    let s = share.get()?;
    assert_eq!(s.counter, 100);
    let expected: Vec<String> = (1..=100).map(|n| n.to_string()).collect();
    assert_eq!(s.log, expected);
    Ok(())
}

#[test]
fn counts_are_exact_under_contention_from_several_processes_and_the_parent() -> skprocess::Result<()>
{
    const PER: u64 = 20_000;
    const CHILDREN: u64 = 3;
    let share = Share::new(Stats::default())?;
    let mut handles: Vec<_> = (0..CHILDREN)
        .map(|_| {
            Incrementer {
                share: share.clone(),
                times: PER,
            }
            .start()
        })
        .collect::<skprocess::Result<_>>()?;
    for _ in 0..PER {
        share.lock()?.counter += 1;
    }
    for h in &mut handles {
        finish(h)?;
    }
    assert_eq!(share.get()?.counter, PER * (CHILDREN + 1));
    Ok(())
}

#[test]
fn a_waiter_gets_the_lock_within_a_few_turns_of_busy_holders() -> skprocess::Result<()> {
    const HAMMERERS: u64 = 3;
    let share = Share::new(Turns::default())?;
    let mut hammerers: Vec<_> = (0..HAMMERERS)
        .map(|_| {
            Hammerer {
                share: share.clone(),
            }
            .start()
        })
        .collect::<skprocess::Result<_>>()?;
    for h in &hammerers {
        assert_eq!(h.listen::<String>(DEADLINE)?.as_deref(), Some("hammering"));
    }
    let mut counter = TurnCounter {
        share: share.clone(),
        rounds: 30,
        waited: vec![],
    }
    .start()?;
    let waited = finish(&mut counter)?.waited;
    for h in &mut hammerers {
        finish(h)?;
    }
    assert_eq!(waited.len(), 30);
    // The holder finishes its turn and each other hammerer may already be
    // waiting (HAMMERERS turns); each waiter ahead, once first in line,
    // lets a quick holder cut in for its brief patience (at most one more
    // turn each, since a turn lasts far longer); one more for a hammerer
    // that asked at the same moment. A lock that lets the releasing holder
    // barge in at will lets each hammerer go many times (12 to 15 seen).
    let worst = waited.iter().copied().max().unwrap_or(0);
    assert!(
        worst <= 2 * HAMMERERS + 1,
        "a waiter saw {worst} other acquisitions before its own (all: {waited:?})"
    );
    Ok(())
}

#[test]
fn get_set_update_across_processes() -> skprocess::Result<()> {
    let share = Share::new(Stats {
        counter: 40,
        log: vec!["start".into()],
    })?;
    let mut h = Incrementer {
        share: share.clone(),
        times: 2,
    }
    .start()?;
    finish(&mut h)?;
    // The parent's cached copy is stale now: it must see the child's write.
    assert_eq!(share.get()?.counter, 42);
    assert_eq!(share.lock()?.counter, 42);
    assert_eq!(share.update(|s| std::mem::take(&mut s.log))?, ["start"]);
    share.set(Stats {
        counter: 1,
        log: vec![],
    })?;
    let mut h = Incrementer {
        share: share.clone(),
        times: 1,
    }
    .start()?;
    finish(&mut h)?;
    assert_eq!(
        share.get()?,
        Stats {
            counter: 2,
            log: vec![]
        }
    );
    Ok(())
}

#[test]
fn a_read_only_guard_writes_nothing() -> skprocess::Result<()> {
    let share = Share::new(Stats::default())?;
    let before = format!("{share:?}");
    {
        let g = share.lock()?;
        assert_eq!(g.counter, 0);
    }
    assert_eq!(
        format!("{share:?}"),
        before,
        "a guard that was only read must not bump the version"
    );
    share.lock()?.counter += 1;
    assert_ne!(format!("{share:?}"), before);
    Ok(())
}

// ---------------------------------------------------------------------------
// Handles travelling.

#[test]
fn a_share_travels_in_a_message_and_back_in_a_final_state() -> skprocess::Result<()> {
    let share = Share::new(Stats::default())?;
    let mut h = Receiver.start()?;
    h.tell(&share)?;
    assert_eq!(h.listen::<String>(DEADLINE)?.as_deref(), Some("done"));
    finish(&mut h)?;
    assert_eq!(share.get()?.counter, 100);

    let mut h = Maker { made: None }.start()?;
    let done = finish(&mut h)?;
    // The child that made it is gone; the value lives on in this handle.
    let made = done.made.expect("a share came back");
    let s = made.get()?;
    assert_eq!(s.counter, 3);
    assert!(s.log[0].starts_with("made by"));
    Ok(())
}

// ---------------------------------------------------------------------------
// Growth.

#[test]
fn a_value_grows_to_tens_of_mib_from_a_child_and_every_process_follows() -> skprocess::Result<()> {
    const CHUNKS: usize = 24;
    let share: Share<Vec<String>> = Share::new(vec![])?;
    // This process maps the share while it is small.
    assert!(share.get()?.is_empty());
    let mut h = Grower {
        share: share.clone(),
        chunks: CHUNKS,
    }
    .start()?;
    finish(&mut h)?;
    {
        let v = share.lock()?;
        assert_eq!(v.len(), CHUNKS);
        for (i, s) in v.iter().enumerate() {
            assert_eq!(s.len(), MIB);
            assert_eq!(s.as_bytes()[0], b'a' + (i % 26) as u8);
        }
    }
    // Grow further from the parent; a new child sees it all.
    share.lock()?.push(chunk(CHUNKS));
    let mut h = Reader {
        share: share.clone(),
        seen: vec![],
    }
    .start()?;
    let seen = finish(&mut h)?.seen;
    assert_eq!(seen.len(), CHUNKS + 1);
    assert!(seen
        .iter()
        .enumerate()
        .all(|(i, &(len, b))| len == MIB && b == b'a' + (i % 26) as u8));
    // And it shrinks back without trouble.
    share.set(vec!["small".into()])?;
    assert_eq!(share.get()?, ["small"]);
    Ok(())
}

// ---------------------------------------------------------------------------
// Crashes.

#[test]
fn a_holder_killed_with_the_lock_loses_only_its_own_update() -> skprocess::Result<()> {
    let share = Share::new(Stats {
        counter: 7,
        log: vec!["seven".into()],
    })?;
    let mut h = Holder {
        share: share.clone(),
    }
    .start()?;
    assert_eq!(h.listen::<String>(DEADLINE)?.as_deref(), Some("holding"));
    assert!(share.try_lock()?.is_none(), "the child holds the lock");
    h.kill()?;
    assert!(finish(&mut h).err().expect("killed").is_killed());

    let g = share
        .lock_timeout(DEADLINE)?
        .expect("the lock is recovered after its holder died");
    assert!(
        g.recovered(),
        "the guard reports that the previous holder died"
    );
    assert_eq!(
        *g,
        Stats {
            counter: 7,
            log: vec!["seven".into()]
        }
    );
    drop(g);

    // Fully usable afterwards, from here and from a new child.
    share.lock()?.counter += 1;
    let mut h = Incrementer {
        share: share.clone(),
        times: 10,
    }
    .start()?;
    finish(&mut h)?;
    let g = share.lock()?;
    assert!(!g.recovered());
    assert_eq!(g.counter, 18);
    Ok(())
}

#[test]
fn a_hook_timed_out_with_the_lock_costs_a_life_and_the_retry_sees_the_old_value(
) -> skprocess::Result<()> {
    let share = Share::new(Stats {
        counter: 41,
        log: vec![],
    })?;
    let mut h = HangsOnce {
        share: share.clone(),
        recovered: false,
    }
    .start()?;
    let done = finish(&mut h)?;
    assert!(
        done.recovered,
        "the second attempt took over a lock whose holder died"
    );
    assert_eq!(share.get()?.counter, 42);
    Ok(())
}

#[test]
fn a_writer_killed_mid_write_never_tears_the_value() -> skprocess::Result<()> {
    let share: Share<String> = Share::new(scribble(0))?;
    for round in 0..16u64 {
        let mut h = Scribbler {
            share: share.clone(),
            seed: round * 10,
        }
        .start()?;
        let _: u64 = h
            .listen(DEADLINE)?
            .expect("the scribbler reports its first writes");
        // Not a synchronisation: spreads the kill over the phases of a write.
        std::thread::sleep(Duration::from_micros(round * 2_500));
        h.kill()?;
        assert!(finish(&mut h).err().expect("killed").is_killed());
        let v = share
            .lock_timeout(DEADLINE)?
            .expect("the lock is recovered after its holder died");
        let first = v.as_bytes()[0];
        let whole = v.len() % (2 * MIB) == 1 && v.bytes().all(|b| b == first);
        assert!(
            whole,
            "round {round}: torn value of {} bytes starting with {:?}",
            v.len(),
            first as char
        );
    }
    Ok(())
}

#[test]
fn a_panic_while_holding_a_guard_discards_the_change() -> skprocess::Result<()> {
    let share = Share::new(Stats {
        counter: 1,
        log: vec![],
    })?;
    let other = share.clone();
    let r = std::thread::spawn(move || {
        let mut g = other.lock().unwrap();
        g.counter = 100;
        panic!("deliberate panic while holding the lock");
    })
    .join();
    assert!(r.is_err());
    assert_eq!(share.get()?.counter, 1);
    share.lock()?.counter += 1;
    assert_eq!(share.get()?.counter, 2);
    Ok(())
}

// ---------------------------------------------------------------------------
// Timeouts and misuse.

#[test]
fn lock_timeout_gives_up_on_time_for_sub_second_and_longer_timeouts() -> skprocess::Result<()> {
    let share = Share::new(Stats::default())?;
    let held = share.lock()?;
    let other = share.clone();
    let waited = std::thread::spawn(move || -> skprocess::Result<Vec<(Duration, bool)>> {
        let mut out = vec![];
        for ms in [0u64, 1, 250, 999, 1_300] {
            let d = Duration::from_millis(ms);
            let start = Instant::now();
            let g = other.lock_timeout(d)?;
            out.push((start.elapsed(), g.is_some()));
            assert!(
                start.elapsed() >= d,
                "gave up after {:?}, before {d:?}",
                start.elapsed()
            );
        }
        assert!(other.try_lock()?.is_none());
        Ok(out)
    })
    .join()
    .expect("no panic")?;
    for (_, got) in waited {
        assert!(!got, "the lock is held by the test thread");
    }
    drop(held);
    let other = share.clone();
    let got = std::thread::spawn(move || {
        other
            .lock_timeout(Duration::from_millis(250))
            .map(|g| g.is_some())
    })
    .join()
    .expect("no panic")?;
    assert!(got);
    Ok(())
}

#[test]
fn lock_timeout_against_another_process() -> skprocess::Result<()> {
    let share = Share::new(Stats::default())?;
    let mut h = Holder {
        share: share.clone(),
    }
    .start()?;
    assert_eq!(h.listen::<String>(DEADLINE)?.as_deref(), Some("holding"));
    let start = Instant::now();
    assert!(share.lock_timeout(Duration::from_millis(300))?.is_none());
    assert!(start.elapsed() >= Duration::from_millis(300));
    h.tell("release")?;
    let g = share.lock_timeout(DEADLINE)?.expect("released");
    assert_eq!(
        g.counter, 999_999,
        "the holder's change was written back on release"
    );
    assert!(!g.recovered());
    drop(g);
    finish(&mut h)?;
    Ok(())
}

#[test]
fn locking_twice_from_one_thread_is_an_error_not_a_deadlock() -> skprocess::Result<()> {
    let share = Share::new(Stats::default())?;
    let g = share.lock()?;
    let again = share.clone();
    assert!(matches!(again.lock(), Err(Error::Usage(_))));
    let err = share.get().expect_err("relock");
    assert!(err.to_string().contains("already holds"), "{err}");
    assert!(share.lock_timeout(Duration::from_millis(10)).is_err());
    drop(g);
    assert_eq!(share.get()?.counter, 0);
    Ok(())
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
#[serde(untagged)]
enum Loose {
    Number(u64),
    Text(String),
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Flat {
    a: u64,
    #[serde(flatten)]
    rest: HashMap<String, u64>,
}

#[test]
fn a_type_postcard_cannot_carry_is_refused_with_a_pointer_to_json() -> skprocess::Result<()> {
    let err = Share::new(Loose::Text("x".into())).expect_err("untagged enums cannot be decoded");
    let text = err.to_string();
    assert!(text.contains("Json") && text.contains("Loose"), "{text}");

    let err = Share::new(Flat {
        a: 1,
        rest: HashMap::from([("b".into(), 2)]),
    })
    .expect_err("flatten cannot be encoded");
    let text = err.to_string();
    assert!(text.contains("Json") && text.contains("Flat"), "{text}");

    // The escape hatch works.
    let share = Share::new(Json(Loose::Text("x".into())))?;
    share.lock()?.0 = Loose::Number(3);
    assert_eq!(share.get()?.0, Loose::Number(3));
    Ok(())
}

#[test]
fn a_share_cannot_hold_a_handle() -> skprocess::Result<()> {
    let inner = Share::new(1u64)?;
    let err = Share::new(vec![inner.clone()]).expect_err("a handle cannot live in shared memory");
    assert!(
        err.to_string().contains("cannot live in shared memory"),
        "{err}"
    );
    let outer: Share<Vec<Share<u64>>> = Share::new(vec![])?;
    let err = outer
        .update(|v| v.push(inner.clone()))
        .expect_err("nor be written into one");
    assert!(
        err.to_string().contains("cannot live in shared memory"),
        "{err}"
    );
    assert!(
        outer.get()?.is_empty(),
        "the failed write left the value as it was"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Leftovers.

#[test]
fn no_descriptor_mapping_or_shm_file_is_left_behind() -> skprocess::Result<()> {
    let mut h = LeakCheck::default().start()?;
    let done = finish(&mut h)?;
    assert_eq!(
        done.after, done.before,
        "(open fds, share fds, share mappings) before and after"
    );
    assert_eq!(done.before.1, 0);
    assert_no_shm_files();
    Ok(())
}

#[test]
fn a_share_that_comes_back_reuses_the_mapping_it_already_has() -> skprocess::Result<()> {
    let mut h = MapsOnce::default().start()?;
    let done = finish(&mut h)?;
    assert_eq!(done.counter, 7);
    assert_eq!(
        done.after, done.before,
        "(share fds, share mappings) before and after the round trip"
    );
    assert_eq!(done.before.0, 1);
    Ok(())
}

// ---------------------------------------------------------------------------
// Types.

/// Fails to compile if `T` is `Send` (two impls would apply).
trait AmbiguousIfSend<A> {
    fn check() {}
}
impl<T: ?Sized> AmbiguousIfSend<()> for T {}
impl<T: ?Sized + Send> AmbiguousIfSend<u8> for T {}

#[test]
fn the_guard_is_not_send_and_the_handle_is_send_sync_clone() {
    <ShareGuard<'static, Stats> as AmbiguousIfSend<_>>::check();
    fn handle<
        T: Send + Sync + Clone + std::fmt::Debug + Serialize + serde::de::DeserializeOwned,
    >() {
    }
    handle::<Share<Stats>>();
}
