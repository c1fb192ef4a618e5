//! Queue<T> (API.md §13): many producers and consumers in many processes,
//! each item delivered once and never torn, bounded waits on full and empty
//! queues, close waking waiters in other processes, consumers killed at
//! random moments, forged descriptors refused, nothing left behind.

#[path = "support/forge.rs"]
mod forge;
mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::collections::HashSet;
use std::time::Duration;
use support::{assert_no_shm_files, finish, watchdog, DEADLINE};

// ---------------------------------------------------------------------------
// Processes used below.

/// Pushes `from..from + n`.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Producer {
    q: Queue<u64>,
    from: u64,
    n: u64,
}

impl Process for Producer {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        for i in self.from..self.from + self.n {
            self.q.push(&i)?;
        }
        Ok(())
    }
}

/// Tells "ready", then pops until the queue is closed and empty.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Consumer {
    q: Queue<u64>,
    got: Vec<u64>,
}

impl Process for Consumer {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        ctx.tell("ready")?;
        loop {
            match self.q.pop() {
                Ok(i) => self.got.push(i),
                Err(e) if e.is_disconnected() => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Pops `n` items (waiting for each), in order.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Popper {
    q: Queue<u64>,
    n: usize,
    got: Vec<u64>,
}

impl Process for Popper {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        for _ in 0..self.n {
            let item = self.q.pop_timeout(DEADLINE)?.ok_or("nothing to pop")?;
            self.got.push(item);
        }
        Ok(())
    }
}

/// Tells "waiting", then blocks in `pop` and records how it ended.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Blocked {
    q: Queue<u64>,
    ended: String,
}

impl Process for Blocked {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        ctx.tell("waiting")?;
        self.ended = match self.q.pop() {
            Ok(i) => format!("got {i}"),
            Err(e) if e.is_disconnected() => "disconnected".into(),
            Err(e) => format!("error: {e}"),
        };
        Ok(())
    }
}

/// A self-checking item: every word of `payload` is `id`, and its length
/// follows from `id`, so a torn item shows.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Item {
    id: u64,
    payload: Vec<u64>,
}

fn item(id: u64) -> Item {
    Item {
        id,
        payload: vec![id; 1 + (id % 40) as usize],
    }
}

/// Pushes items `from, from + 1, ...` into `tasks` until it is closed;
/// counts those that went in. Tells "pushing" after its first item.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct ItemProducer {
    tasks: Queue<Item>,
    from: u64,
    pushed: u64,
}

impl Process for ItemProducer {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        loop {
            match self.tasks.push(&item(self.from + self.pushed)) {
                Ok(()) => {
                    self.pushed += 1;
                    if self.pushed == 1 {
                        ctx.tell("pushing")?;
                    }
                }
                Err(e) if e.is_disconnected() => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Moves items from `tasks` to `results` until `tasks` is closed and empty;
/// tells "moving" after its first item.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Relay {
    tasks: Queue<Item>,
    results: Queue<Item>,
}

impl Process for Relay {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let mut first = true;
        loop {
            match self.tasks.pop() {
                Ok(it) => {
                    self.results.push(&it)?;
                    if first {
                        ctx.tell("moving")?;
                        first = false;
                    }
                }
                Err(e) if e.is_disconnected() => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Counts this process's descriptors and queue mappings, makes, uses,
/// sends and drops many queues, and counts again.
#[derive(Process, Serialize, Deserialize, Default)]
#[process(runs = 1)]
struct LeakCheck {
    before: (usize, usize, usize),
    after: (usize, usize, usize),
}

fn counts() -> (usize, usize, usize) {
    (
        support::open_fds(),
        forge::fds_named("skprocess-queue"),
        forge::mappings_named("skprocess-queue"),
    )
}

impl Process for LeakCheck {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        support::open_spawn_resources();
        self.before = counts();
        for i in 0..200u64 {
            let q = Queue::<u64>::with_capacity(4096)?;
            let c = q.clone();
            c.push(&i)?;
            assert_eq!(q.try_pop()?, Some(i));
            if i % 50 == 0 {
                q.push(&i)?;
                let mut h = Popper {
                    q: q.clone(),
                    n: 1,
                    got: vec![],
                }
                .start()?;
                assert_eq!(finish(&mut h)?.got, [i]);
            }
        }
        self.after = counts();
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The API as written.

#[test]
fn api_example_in_one_process() -> skprocess::Result<()> {
    let tasks: Queue<String> = Queue::new()?;
    assert_eq!(tasks.capacity(), 1 << 20);
    let big: Queue<String> = Queue::with_capacity(64 << 20)?;
    assert_eq!(big.capacity(), 64 << 20);
    tasks.push(&"a".to_string())?;
    assert!(tasks.try_push(&"b".to_string())?);
    assert!(tasks.push_timeout(&"c".to_string(), Duration::from_millis(10))?);
    assert_eq!(tasks.len(), 3);
    assert!(!tasks.is_empty());
    assert_eq!(tasks.pop()?, "a");
    assert_eq!(
        tasks.pop_timeout(Duration::from_millis(10))?.as_deref(),
        Some("b")
    );
    assert_eq!(tasks.try_pop()?.as_deref(), Some("c"));
    assert!(tasks.is_empty());
    let other = tasks.clone();
    other.push(&"d".to_string())?;
    assert_eq!(tasks.try_pop()?.as_deref(), Some("d"));
    assert!(format!("{tasks:?}").contains("Queue<alloc::string::String>"));
    tasks.push(&"left".to_string())?;
    tasks.close();
    assert!(tasks
        .push(&"late".to_string())
        .unwrap_err()
        .is_disconnected());
    assert_eq!(tasks.pop()?, "left", "items left are still delivered");
    assert!(tasks.pop().unwrap_err().is_disconnected());
    assert!(tasks.try_pop().unwrap_err().is_disconnected());
    assert!(tasks
        .pop_timeout(Duration::from_millis(10))
        .unwrap_err()
        .is_disconnected());
    Ok(())
}

#[test]
fn an_item_larger_than_the_queue_is_an_error() -> skprocess::Result<()> {
    let q: Queue<Vec<u8>> = Queue::with_capacity(1024)?;
    let e = q.push(&vec![1; 2000]).unwrap_err();
    assert!(e.to_string().contains("with_capacity"), "{e}");
    assert!(q.try_push(&vec![1; 500])?);
    // A handle (a descriptor) cannot live in shared memory.
    let of_queues: Queue<Queue<u64>> = Queue::new()?;
    let e = of_queues.push(&Queue::new()?).unwrap_err();
    assert!(
        e.to_string().contains("cannot live in shared memory"),
        "{e}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Many processes.

#[test]
fn three_producers_and_three_consumers_deliver_30k_items_exactly_once() -> skprocess::Result<()> {
    watchdog();
    // Small, so producers block on a full queue as well as consumers on an
    // empty one.
    let q: Queue<u64> = Queue::with_capacity(4096)?;
    let mut consumers = Vec::new();
    for _ in 0..3 {
        let h = Consumer {
            q: q.clone(),
            got: vec![],
        }
        .start()?;
        assert_eq!(h.listen::<String>(DEADLINE)?.as_deref(), Some("ready"));
        consumers.push(h);
    }
    let mut producers: Vec<_> = (0..3)
        .map(|p| {
            Producer {
                q: q.clone(),
                from: p * 10_000,
                n: 10_000,
            }
            .start()
        })
        .collect::<skprocess::Result<_>>()?;
    for h in &mut producers {
        finish(h)?;
    }
    q.close();
    let mut all = Vec::new();
    for h in &mut consumers {
        let got = finish(h)?.got;
        assert!(!got.is_empty(), "a consumer starved");
        // Each producer's items arrive in the order it pushed them.
        for p in 0..3 {
            let mine: Vec<u64> = got.iter().copied().filter(|i| i / 10_000 == p).collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "out of order");
        }
        all.extend(got);
    }
    all.sort_unstable();
    assert_eq!(all, (0..30_000).collect::<Vec<_>>());
    assert!(q.is_empty());
    Ok(())
}

#[test]
fn full_and_empty_queues_time_out_and_wake_across_processes() -> skprocess::Result<()> {
    watchdog();
    let q: Queue<u64> = Queue::with_capacity(64)?;
    assert_eq!(q.try_pop()?, None);
    assert_eq!(q.pop_timeout(Duration::from_millis(30))?, None);
    let mut pushed = 0u64;
    while q.try_push(&pushed)? {
        pushed += 1;
    }
    assert!(pushed > 0);
    assert_eq!(q.len() as u64, pushed);
    assert!(!q.push_timeout(&999, Duration::from_millis(30))?);
    // A consumer in another process makes room: the blocked push goes in.
    let mut h = Popper {
        q: q.clone(),
        n: 1,
        got: vec![],
    }
    .start()?;
    assert!(q.push_timeout(&pushed, DEADLINE)?);
    assert_eq!(finish(&mut h)?.got, [0]);
    // An empty queue: a consumer in another process waits, and the push
    // made here reaches it.
    let rest: Vec<u64> = std::iter::from_fn(|| q.try_pop().unwrap()).collect();
    assert_eq!(rest, (1..=pushed).collect::<Vec<_>>());
    let mut h = Popper {
        q: q.clone(),
        n: 2,
        got: vec![],
    }
    .start()?;
    q.push(&7)?;
    q.push(&8)?;
    assert_eq!(finish(&mut h)?.got, [7, 8]);
    Ok(())
}

#[test]
fn close_wakes_a_consumer_blocked_in_another_process() -> skprocess::Result<()> {
    watchdog();
    let q: Queue<u64> = Queue::new()?;
    let mut h = Blocked {
        q: q.clone(),
        ended: String::new(),
    }
    .start()?;
    assert_eq!(h.listen::<String>(DEADLINE)?.as_deref(), Some("waiting"));
    q.close();
    assert_eq!(finish(&mut h)?.ended, "disconnected");
    assert!(q.is_closed());
    Ok(())
}

/// A small deterministic generator (xorshift64*), so a failing run can be
/// replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn consumers_killed_at_random_moments_lose_at_most_their_own_item() -> skprocess::Result<()> {
    watchdog();
    const KILLS: usize = 12;
    let seed = 0x5eed_0014;
    let mut rng = Rng(seed);
    let tasks: Queue<Item> = Queue::with_capacity(8 << 10)?;
    let results: Queue<Item> = Queue::with_capacity(1 << 20)?;
    // Drains the results as they come, checking every item.
    let drain = {
        let results = results.clone();
        std::thread::spawn(move || -> skprocess::Result<HashSet<u64>> {
            let mut seen = HashSet::new();
            loop {
                match results.pop() {
                    Ok(it) => {
                        assert_eq!(it, item(it.id), "torn item (seed {seed:#x})");
                        assert!(seen.insert(it.id), "item {} delivered twice", it.id);
                    }
                    Err(e) if e.is_disconnected() => return Ok(seen),
                    Err(e) => return Err(e),
                }
            }
        })
    };
    let relay = || {
        Relay {
            tasks: tasks.clone(),
            results: results.clone(),
        }
        .start()
    };
    let mut producer = ItemProducer {
        tasks: tasks.clone(),
        from: 0,
        pushed: 0,
    }
    .start()?;
    let mut steady = relay()?;
    for _ in 0..KILLS {
        let mut h = relay()?;
        assert_eq!(h.listen::<String>(DEADLINE)?.as_deref(), Some("moving"));
        // Not a synchronisation: spreads the kill over the phases of a pop
        // and a push (seeded, so the run can be replayed).
        std::thread::sleep(Duration::from_micros(rng.next() % 3_000));
        h.kill()?;
        assert!(
            finish(&mut h).err().expect("killed").is_killed(),
            "seed {seed:#x}"
        );
    }
    // After the kills, the queues still work: a new relay gets items.
    let mut after = relay()?;
    assert_eq!(after.listen::<String>(DEADLINE)?.as_deref(), Some("moving"));
    tasks.close();
    let pushed = finish(&mut producer)?.pushed;
    finish(&mut steady)?;
    finish(&mut after)?;
    results.close();
    let seen = drain.join().expect("the drain thread")?;
    assert!(seen.iter().all(|&id| id < pushed));
    let lost = pushed as usize - seen.len();
    // A killed relay can lose the one item it had popped and not yet
    // pushed on; nothing else.
    assert!(
        lost <= KILLS,
        "{lost} of {pushed} items lost by {KILLS} kills (seed {seed:#x})"
    );
    assert!(pushed > KILLS as u64);
    assert!(tasks.is_empty());
    assert!(tasks.pop().unwrap_err().is_disconnected());
    Ok(())
}

#[test]
fn producers_killed_at_random_moments_never_leave_a_torn_or_repeated_item() -> skprocess::Result<()>
{
    watchdog();
    const KILLS: u64 = 10;
    const SPAN: u64 = 1 << 32;
    let seed = 0x5eed_0015;
    let mut rng = Rng(seed);
    // Small, so producers are often inside a push when they are killed,
    // some of them waiting for room.
    let tasks: Queue<Item> = Queue::with_capacity(4 << 10)?;
    let drain = {
        let tasks = tasks.clone();
        std::thread::spawn(move || -> skprocess::Result<Vec<Vec<u64>>> {
            let mut by_producer = vec![Vec::new(); KILLS as usize + 1];
            loop {
                match tasks.pop() {
                    Ok(it) => {
                        assert_eq!(it, item(it.id), "torn item (seed {seed:#x})");
                        by_producer[(it.id / SPAN) as usize].push(it.id % SPAN);
                    }
                    Err(e) if e.is_disconnected() => return Ok(by_producer),
                    Err(e) => return Err(e),
                }
            }
        })
    };
    for k in 0..KILLS {
        let mut h = ItemProducer {
            tasks: tasks.clone(),
            from: k * SPAN,
            pushed: 0,
        }
        .start()?;
        assert_eq!(h.listen::<String>(DEADLINE)?.as_deref(), Some("pushing"));
        // Not a synchronisation: spreads the kill over the phases of a push
        // (seeded, so the run can be replayed).
        std::thread::sleep(Duration::from_micros(rng.next() % 3_000));
        h.kill()?;
        assert!(finish(&mut h).err().expect("killed").is_killed());
    }
    // The queue still works: a last producer runs to the end.
    let mut last = ItemProducer {
        tasks: tasks.clone(),
        from: KILLS * SPAN,
        pushed: 0,
    }
    .start()?;
    assert_eq!(last.listen::<String>(DEADLINE)?.as_deref(), Some("pushing"));
    tasks.close();
    let pushed = finish(&mut last)?.pushed;
    let by_producer = drain.join().expect("the drain thread")?;
    for (k, ids) in by_producer.iter().enumerate() {
        // Each producer's items arrive once each, in order, with no gap: a
        // push cut short by the kill is simply not there.
        let expected: Vec<u64> = (0..ids.len() as u64).collect();
        assert_eq!(ids, &expected, "producer {k} (seed {seed:#x})");
    }
    assert_eq!(by_producer[KILLS as usize].len() as u64, pushed);
    Ok(())
}

#[test]
fn a_queue_travels_in_a_message_and_back() -> skprocess::Result<()> {
    watchdog();
    let q: Queue<u64> = Queue::new()?;
    q.push(&5)?;
    let mut h = Popper {
        q: q.clone(),
        n: 1,
        got: vec![],
    }
    .start()?;
    let done = finish(&mut h)?;
    assert_eq!(done.got, [5]);
    // The handle that came back is the same queue.
    done.q.push(&6)?;
    assert_eq!(q.try_pop()?, Some(6));
    Ok(())
}

// ---------------------------------------------------------------------------
// Bad input and clean-up.

#[test]
fn forged_or_truncated_queue_descriptors_are_errors() -> skprocess::Result<()> {
    use skprocess::__bench::{handle_fd, queue_from_fd};
    let q: Queue<u64> = Queue::with_capacity(4096)?;
    let good = handle_fd(&q)?;
    // The real thing attaches, and is the same queue.
    let again = queue_from_fd::<u64>(good)?;
    again.push(&3)?;
    assert_eq!(q.try_pop()?, Some(3));

    let mut bytes = vec![0u8; 8192];
    bytes[..8].copy_from_slice(b"SKQUEUE1");
    let cases = [
        (
            "another item type",
            queue_from_fd::<String>(handle_fd(&q)?).err(),
        ),
        (
            "a shared slice",
            queue_from_fd::<u64>(handle_fd(&SharedSliceMut::<u64>::zeroed(600)?)?).err(),
        ),
        (
            "an unsealed memfd",
            queue_from_fd::<u64>(forge::memfd(&bytes, rustix::fs::SealFlags::empty())).err(),
        ),
        (
            "a sealed memfd with a forged header",
            queue_from_fd::<u64>(forge::memfd(&bytes, forge::FIXED_SIZE)).err(),
        ),
        (
            "a truncated memfd",
            queue_from_fd::<u64>(forge::memfd(&bytes[..100], forge::FIXED_SIZE)).err(),
        ),
        (
            "an empty memfd",
            queue_from_fd::<u64>(forge::memfd(&[], forge::FIXED_SIZE)).err(),
        ),
        ("/dev/null", queue_from_fd::<u64>(forge::not_memory()).err()),
    ];
    for (what, err) in cases {
        let e = err.unwrap_or_else(|| panic!("{what} was accepted as a queue"));
        assert!(
            matches!(e, skprocess::Error::Decode { .. }),
            "{what}: {e:?}"
        );
    }
    Ok(())
}

#[test]
fn queues_leave_no_descriptor_mapping_or_file_behind() -> skprocess::Result<()> {
    let mut h = LeakCheck::default().start()?;
    let done = finish(&mut h)?;
    assert_eq!(done.before, done.after, "(fds, queue fds, queue mappings)");
    assert_eq!(done.after.1, 0);
    assert_eq!(done.after.2, 0);
    assert_no_shm_files();
    Ok(())
}
