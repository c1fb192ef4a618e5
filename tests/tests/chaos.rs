//! Fault injection: children, pool workers and parents are SIGKILLed at
//! pseudo-random moments (a fixed seed, so a failure can be replayed) while
//! they run pools, hold shares, stream through pipes and restart. Whatever
//! is killed when, the survivors see exactly one result per item, no torn
//! value, no orphan, no zombie, no descriptor left open, nothing in
//! /dev/shm.

mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{assert_gone_within, assert_no_shm_files, finish, open_fds, watchdog};

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn sigkill(pid: u32) {
    if pid > 1 {
        support::send_signal(pid, rustix::process::Signal::KILL);
    }
}

/// Children of this process that nobody has reaped.
fn zombie_children() -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((state, ppid)) = support::proc_state(pid) {
            if ppid == me && state == 'Z' {
                found.push(pid);
            }
        }
    }
    found
}

/// Runs `f` in a thread that kills what `victims` names at random moments
/// until `f` returns; returns `f`'s result and the number of kills.
fn with_killer<R>(
    seed: u64,
    victims: impl Fn() -> Vec<u32> + Send + 'static,
    f: impl FnOnce() -> R,
) -> (R, u32) {
    let done = Arc::new(AtomicBool::new(false));
    let killer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut rng = Rng::new(seed);
            let mut kills = 0;
            while !done.load(Ordering::Relaxed) && kills < 40 {
                // Pacing only: how far apart the kills land.
                std::thread::sleep(Duration::from_micros(500 + rng.below(20_000)));
                let v = victims();
                if v.is_empty() {
                    continue;
                }
                sigkill(v[rng.below(v.len() as u64) as usize]);
                kills += 1;
            }
            kills
        })
    };
    let r = f();
    done.store(true, Ordering::Relaxed);
    let kills = killer.join().unwrap();
    (r, kills)
}

/// An item that takes a moment, so workers die mid-item.
#[derive(Process, Serialize, Deserialize, Clone)]
#[process(runs = 1, lives = 1000)]
struct Square {
    x: u64,
    out: u64,
}

impl Process for Square {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let until = Instant::now() + Duration::from_micros(300);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        self.out = self.x * self.x;
        Ok(())
    }
}

/// Runs the pool scenario in a process of its own, where no other test
/// opens or closes descriptors meanwhile, and reports what it saw.
#[derive(Process, Serialize, Deserialize, Default)]
#[process(runs = 1)]
struct PoolChaos {
    kills: u32,
    /// Before the pool existed, after its warm-up, after the rounds (pool
    /// alive, its workers replaced), and after the pool was dropped.
    fds: [usize; 4],
    worker_pids: Vec<u32>,
    zombies: Vec<u32>,
}

impl Process for PoolChaos {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        // A first pool warms up what is opened once for good.
        drop(Pool::new(1)?.map((0..2).map(|x| Square { x, out: 0 }))?);
        self.fds[0] = open_fds();
        let pool = Arc::new(Pool::new(2)?);
        pool.map((0..4).map(|x| Square { x, out: 0 }))?;
        self.fds[1] = open_fds();
        for round in 0..3u64 {
            let p = pool.clone();
            let (out, kills) = with_killer(
                round + 1,
                move || p.pids(),
                || pool.map((0..400).map(|x| Square { x, out: 0 })),
            );
            self.kills += kills;
            let out = out.map_err(|e| format!("round {round} ({kills} kills): {e}"))?;
            assert_eq!(out.len(), 400);
            for (i, sq) in out.iter().enumerate() {
                assert_eq!(sq.x, i as u64, "input order");
                assert_eq!(sq.out, sq.x * sq.x);
            }
            // The pool kept its size.
            assert_eq!(pool.pids().iter().filter(|&&p| p != 0).count(), 2);
            self.worker_pids.extend(pool.pids());
        }
        self.fds[2] = open_fds();
        drop(pool);
        self.zombies = zombie_children();
        self.fds[3] = open_fds();
        Ok(())
    }
}

#[test]
fn pool_workers_killed_mid_map_give_each_result_exactly_once() {
    watchdog();
    let mut h = PoolChaos::default().start().unwrap();
    let r = finish(&mut h).unwrap();
    assert!(r.kills > 0, "the killer never struck");
    assert!(r.zombies.is_empty(), "zombies: {:?}", r.zombies);
    assert_eq!(r.fds[2], r.fds[1], "replaced workers left descriptors open");
    assert_eq!(r.fds[3], r.fds[0], "the dropped pool left descriptors open");
    for p in r.worker_pids {
        assert_gone_within(p, support::DEADLINE);
    }
    assert_no_shm_files();
}

/// A value with an invariant a torn write would break.
#[derive(Serialize, Deserialize, Default, Clone, Debug)]
struct Ledger {
    a: u64,
    b: u64,
    entries: Vec<u64>,
}

impl Ledger {
    fn check(&self) {
        assert_eq!(self.a, self.b, "torn: {self:?}");
        assert_eq!(self.entries.len() as u64, self.a, "torn: {self:?}");
        assert!(self.entries.iter().enumerate().all(|(i, &e)| e == i as u64));
    }
}

/// Adds entries to the ledger for ever, holding the lock across a pause.
#[derive(Process, Serialize, Deserialize)]
struct Clerk {
    ledger: Share<Ledger>,
}

impl Process for Clerk {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if ctx.run_index() == 0 {
            ctx.tell(&ctx.pid())?;
        }
        let mut l = self.ledger.lock()?;
        l.check();
        l.a += 1;
        std::hint::black_box(&mut *l);
        let n = l.entries.len() as u64;
        l.entries.push(n);
        l.b += 1;
        Ok(())
    }
}

/// Clerks killed at random while they hold the ledger's lock, for
/// `rounds` rounds.
fn share_rounds(ledger: &Share<Ledger>, rng: &mut Rng, rounds: u32, report: &mut Report) {
    for round in 0..rounds {
        let clerks: Vec<Handle<Clerk>> = (0..3)
            .map(|_| {
                Clerk {
                    ledger: ledger.clone(),
                }
                .start()
                .unwrap()
            })
            .collect();
        let pids: Vec<u32> = clerks
            .iter()
            .map(|h| h.listen(support::DEADLINE).unwrap().expect("pid"))
            .collect();
        // Let them contend a little, then kill them one by one at random.
        for &pid in &pids {
            let until = Instant::now() + Duration::from_micros(rng.below(5_000));
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            sigkill(pid);
            report.kills += 1;
        }
        for mut h in clerks {
            assert!(finish(&mut h).is_err(), "round {round}: killed");
        }
        report.pids.extend(pids);
        let l = ledger
            .lock_timeout(support::DEADLINE)
            .unwrap()
            .expect("the lock is free again");
        l.check();
    }
}

fn share_scenario(report: &mut Report) {
    let ledger = Share::new(Ledger::default()).unwrap();
    let mut rng = Rng::new(7);
    share_rounds(&ledger, &mut rng, 1, report);
    report.fds[0] = open_fds();
    share_rounds(&ledger, &mut rng, 6, report);
    assert!(ledger.get().unwrap().a > 0, "the clerks did some work");
    report.fds[1] = open_fds();
}

#[test]
fn processes_killed_while_holding_a_share_leave_it_whole_and_usable() {
    alone(Scenario::Share);
}

/// A process with a life to spare per kill, that sends numbered messages
/// and a running checksum.
#[derive(Process, Serialize, Deserialize)]
#[process(lives = 1000)]
struct Counter {
    n: u64,
}

impl Process for Counter {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        ctx.tell(&(ctx.attempt(), self.n, self.n.wrapping_mul(31)))?;
        self.n += 1;
        Ok(())
    }
}

/// A `Counter` killed `kills` times at random, then stopped.
fn respawn_run(rng: &mut Rng, kills: u32, report: &mut Report) {
    let mut h = Counter { n: 0 }.start().unwrap();
    let mut last_attempt = 1;
    let mut expect = 0u64;
    let mut killed = 0;
    let deadline = Instant::now() + support::DEADLINE;
    while killed < kills {
        assert!(Instant::now() < deadline, "no progress");
        let (attempt, n, sum): (u32, u64, u64) = match h.listen(support::DEADLINE).unwrap() {
            Some(m) => m,
            None => panic!("no message"),
        };
        assert_eq!(sum, n.wrapping_mul(31), "a message arrived whole");
        assert!(attempt >= last_attempt, "attempts only go up");
        if attempt > last_attempt {
            // A new life starts from the initial value.
            assert_eq!(n, 0, "attempt {attempt} restarted from the start");
            last_attempt = attempt;
            expect = 0;
        }
        assert_eq!(n, expect, "in order within a life");
        expect += 1;
        report.checked += 1;
        if rng.below(50) == 0 {
            report.pids.push(h.pid());
            sigkill(h.pid());
            killed += 1;
        }
    }
    report.kills += killed;
    h.stop();
    // Stopped (or, if the stop met a life being replaced, the next life
    // starts stopped): it ends either way.
    let _ = finish(&mut h);
    report.pids.push(h.pid());
}

fn respawn_scenario(report: &mut Report) {
    let mut rng = Rng::new(11);
    respawn_run(&mut rng, 2, report);
    report.fds[0] = open_fds();
    respawn_run(&mut rng, 30, report);
    report.fds[1] = open_fds();
}

#[test]
fn a_process_killed_between_and_during_lives_restarts_cleanly() {
    alone(Scenario::Respawn);
}

/// One message through the pipe: its life, its place in that life, and
/// bytes that follow from both, with their checksum.
#[derive(Serialize, Deserialize, Debug)]
struct Numbered {
    attempt: u32,
    seq: u64,
    data: Vec<u8>,
    sum: u64,
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The bytes of message `seq` of life `attempt`: sizes from a few bytes
/// to more than twice the ring, so many are streamed through it in pieces
/// and a kill often lands in the middle of one.
fn numbered_data(attempt: u32, seq: u64) -> Vec<u8> {
    let len = (seq.wrapping_mul(7919) % (2 * PIPE_RING as u64 + 1000)) as usize;
    (0..len)
        .map(|i| (i as u64 ^ seq.wrapping_mul(131) ^ u64::from(attempt)) as u8)
        .collect()
}

impl Numbered {
    fn new(attempt: u32, seq: u64) -> Numbered {
        let data = numbered_data(attempt, seq);
        Numbered {
            attempt,
            seq,
            sum: fnv(&data),
            data,
        }
    }

    /// Whether this is exactly the message its header names.
    fn is_whole(&self) -> bool {
        self.sum == fnv(&self.data) && self.data == numbered_data(self.attempt, self.seq)
    }
}

const PIPE_RING: usize = 16 << 10;

/// Streams numbered messages through its pipe, each life from 0.
#[derive(Process, Serialize, Deserialize)]
#[process(lives = 1000)]
struct Streamer {
    tx: PipeSender,
    seq: u64,
}

impl Process for Streamer {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        self.tx.send(&Numbered::new(ctx.attempt(), self.seq))?;
        self.seq += 1;
        Ok(())
    }
}

/// Checks the stream one message at a time: whole, and in order within a
/// life (only a life's last message can be lost, cut by its death).
#[derive(Default)]
struct StreamCheck {
    attempt: u32,
    next: u64,
    received: u64,
}

impl StreamCheck {
    fn take(&mut self, m: &Numbered) {
        assert!(
            m.is_whole(),
            "a garbled message: life {} #{} of {} bytes",
            m.attempt,
            m.seq,
            m.data.len()
        );
        assert!(m.attempt >= self.attempt, "lives only go up");
        if m.attempt > self.attempt {
            self.attempt = m.attempt;
            self.next = 0;
        }
        assert_eq!(m.seq, self.next, "in order within life {}", m.attempt);
        self.next += 1;
        self.received += 1;
    }
}

/// A `Streamer` SIGKILLed at random moments until the parent has read
/// from `lives` lives, then stopped; the parent reads until the pipe says
/// the sender is gone.
fn pipe_run(seed: u64, lives: u32, report: &mut Report) {
    let (tx, rx) = Pipe::one_way_with_capacity(PIPE_RING).unwrap();
    let h = Arc::new(Streamer { tx, seq: 0 }.start().unwrap());
    let victims = {
        let h = h.clone();
        move || match h.is_alive() {
            true => vec![h.pid()],
            false => vec![],
        }
    };
    let mut check = StreamCheck::default();
    let deadline = Instant::now() + support::DEADLINE;
    let ((), kills) = with_killer(seed, victims, || {
        while check.attempt < lives {
            assert!(Instant::now() < deadline, "no progress");
            let m: Numbered = rx
                .recv_timeout(support::DEADLINE)
                .unwrap()
                .expect("a message");
            check.take(&m);
        }
    });
    report.kills += kills;
    let Ok(mut h) = Arc::try_unwrap(h) else {
        panic!("the killer still holds the handle")
    };
    h.stop();
    // The life running now may be blocked sending into a full ring: read
    // on while it finishes its iteration. Whatever the last lives sent
    // arrives whole, then the end.
    let reader = std::thread::spawn(move || loop {
        match rx.recv_timeout::<Numbered>(support::DEADLINE) {
            Ok(Some(m)) => check.take(&m),
            Ok(None) => panic!("the pipe neither delivers nor ends"),
            Err(e) => break (check, e),
        }
    });
    // Stopped, or (if the stop met a life being replaced) its next life
    // starts stopped; the value comes back with the sender in it.
    let done = finish(&mut h);
    report.pids.push(h.pid());
    drop((done, h));
    let (check, end) = reader.join().expect("the reader");
    // The end: the sender is gone, even when the last life's death cut a
    // message that no later life took over from (never received as one).
    assert!(end.is_disconnected(), "{end}");
    assert!(check.received > 0);
    report.checked += check.received;
}

fn pipe_scenario(report: &mut Report) {
    pipe_run(21, 2, report);
    report.fds[0] = open_fds();
    for seed in 22..25 {
        pipe_run(seed, 6, report);
    }
    report.fds[1] = open_fds();
}

#[test]
fn a_pipe_sender_killed_at_random_moments_never_delivers_a_torn_message() {
    alone(Scenario::Pipe);
}

/// What a scenario run in a process of its own saw.
#[derive(Serialize, Deserialize, Default, Debug)]
struct Report {
    kills: u32,
    /// Messages received and checked.
    checked: u64,
    /// Descriptors open after a warm-up run and after the scenario.
    fds: [usize; 2],
    /// Every process it started (or killed).
    pids: Vec<u32>,
    zombies: Vec<u32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
enum Scenario {
    Share,
    Respawn,
    Pipe,
}

/// Runs a scenario in a process of its own, where no other test opens or
/// closes descriptors or starts children meanwhile.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Alone {
    scenario: Scenario,
    report: Report,
}

impl Process for Alone {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let r = &mut self.report;
        match self.scenario {
            Scenario::Share => share_scenario(r),
            Scenario::Respawn => respawn_scenario(r),
            Scenario::Pipe => pipe_scenario(r),
        }
        r.zombies = zombie_children();
        Ok(())
    }
}

/// Runs `scenario` alone and checks what it left behind: no zombie, no
/// process, no descriptor more than after its warm-up, nothing in /dev/shm.
fn alone(scenario: Scenario) {
    watchdog();
    let mut h = Alone {
        scenario,
        report: Report::default(),
    }
    .start()
    .unwrap();
    let r = finish(&mut h)
        .unwrap_or_else(|e| panic!("{scenario:?}: {e}"))
        .report;
    eprintln!(
        "{scenario:?}: {} kills, {} messages checked, descriptors {:?}",
        r.kills, r.checked, r.fds
    );
    assert!(r.kills > 0, "{scenario:?}: the killer never struck");
    assert!(
        r.zombies.is_empty(),
        "{scenario:?}: zombies {:?}",
        r.zombies
    );
    assert_eq!(r.fds[1], r.fds[0], "{scenario:?}: descriptors left open");
    for p in r.pids {
        assert_gone_within(p, support::DEADLINE);
    }
    assert_no_shm_files();
}

/// Starts a pool and a few processes, hands their pids up, then waits.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Owner;

/// Runs until its parent is gone.
#[derive(Process, Serialize, Deserialize)]
struct Idle;

impl Process for Idle {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        std::thread::sleep(Duration::from_millis(2));
        Ok(())
    }
}

impl Process for Owner {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let pool = Pool::new(2)?;
        let handles: Vec<Handle<Idle>> = (0..2).map(|_| Idle.start()).collect::<Result<_>>()?;
        let mut pids = pool.pids();
        pids.extend(handles.iter().map(|h| h.pid()));
        ctx.tell(&pids)?;
        loop {
            // Keep the pool busy while waiting to be killed.
            pool.map_fn(|x: u64| x + 1, 0..10_000u64)?;
        }
    }
}

#[test]
fn owners_killed_at_random_moments_leave_no_descendant() {
    watchdog();
    let mut rng = Rng::new(3);
    for _ in 0..4 {
        let mut h = Owner.start().unwrap();
        let pids: Vec<u32> = h.listen(support::DEADLINE).unwrap().expect("pids");
        assert_eq!(pids.len(), 4);
        let until = Instant::now() + Duration::from_micros(rng.below(20_000));
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        h.kill().unwrap();
        assert!(finish(&mut h).err().unwrap().is_killed());
        for p in pids {
            assert_gone_within(p, support::DEADLINE);
        }
    }
    assert!(zombie_children().is_empty());
    assert_no_shm_files();
}
