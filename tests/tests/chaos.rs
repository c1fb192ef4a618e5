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
        // SAFETY: kill takes plain integers; a pid that is gone gives ESRCH.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
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

#[test]
fn processes_killed_while_holding_a_share_leave_it_whole_and_usable() {
    watchdog();
    let ledger = Share::new(Ledger::default()).unwrap();
    let mut rng = Rng::new(7);
    for round in 0..6 {
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
        for (h, &pid) in clerks.iter().zip(&pids) {
            let until = Instant::now() + Duration::from_micros(rng.below(5_000));
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            sigkill(pid);
            let _ = h;
        }
        for mut h in clerks {
            assert!(finish(&mut h).is_err(), "round {round}: killed");
        }
        for p in pids {
            assert_gone_within(p, support::DEADLINE);
        }
        let l = ledger
            .lock_timeout(support::DEADLINE)
            .unwrap()
            .expect("the lock is free again");
        l.check();
    }
    assert!(ledger.get().unwrap().a > 0, "the clerks did some work");
    assert!(zombie_children().is_empty());
    assert_no_shm_files();
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

#[test]
fn a_process_killed_between_and_during_lives_restarts_cleanly() {
    watchdog();
    let mut h = Counter { n: 0 }.start().unwrap();
    let mut rng = Rng::new(11);
    let mut last_attempt = 1;
    let mut expect = 0u64;
    let mut kills = 0;
    let deadline = Instant::now() + support::DEADLINE;
    while kills < 30 {
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
        if rng.below(50) == 0 {
            sigkill(h.pid());
            kills += 1;
        }
    }
    h.stop();
    let pid = h.pid();
    // Stopped (or, if the stop met a life being replaced, the next life
    // starts stopped): it ends either way.
    let _ = finish(&mut h);
    assert_gone_within(pid, support::DEADLINE);
    assert!(zombie_children().is_empty());
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
