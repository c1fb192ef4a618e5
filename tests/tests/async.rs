//! Async: the parent's futures (`wait_async`, `listen_async`, the pipes'
//! `recv_async`) under tokio's two schedulers and under futures' own
//! executor, never blocking the runtime; `listen_async` is cancel-safe;
//! `AsyncProcess` hooks with timeouts, lives, tell/listen and `stopped()`.

mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{assert_gone, send_signal, watchdog, DEADLINE};

/// The runtimes every parent-side test runs under.
fn runtimes() -> [(&'static str, tokio::runtime::Runtime); 2] {
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    [("current-thread", current), ("multi-thread", multi)]
}

/// Runs `body` on each runtime, bounded by [`DEADLINE`].
fn on_each_runtime<F: Future<Output = ()>>(body: impl Fn() -> F) {
    watchdog();
    for (name, rt) in runtimes() {
        rt.block_on(async {
            tokio::time::timeout(DEADLINE, body())
                .await
                .unwrap_or_else(|_| panic!("{name}: not done within {DEADLINE:?}"));
        });
    }
}

/// A task that counts the ticks of a 2 ms interval, and runs `then` at the
/// third: what the awaited thing needs to complete. So the awaited thing
/// completes only if the runtime kept running the ticker while it was
/// pending (on a current-thread runtime, only if the awaiting future never
/// blocked the thread).
fn ticker(then: impl FnOnce() + Send + 'static) -> Arc<AtomicU64> {
    let ticks = Arc::new(AtomicU64::new(0));
    let t = ticks.clone();
    tokio::spawn(async move {
        let mut then = Some(then);
        let mut every = tokio::time::interval(Duration::from_millis(2));
        every.tick().await; // the first tick is immediate
        loop {
            every.tick().await;
            let n = t.fetch_add(1, Ordering::SeqCst) + 1;
            if n == 3 {
                if let Some(f) = then.take() {
                    f();
                }
            }
        }
    });
    ticks
}

/// Tells "ready", then waits, in a plain hook, for a stop (with the
/// runtime-free `Ctx::stopped` future).
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Idle {
    stopped: bool,
}

impl Process for Idle {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        ctx.tell("ready")?;
        futures::executor::block_on(ctx.stopped());
        self.stopped = true;
        Ok(())
    }
}

/// Forwards each `u64` it receives on `rx` to `tx` and to the parent
/// (`tell`), until `rx`'s sender is gone.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Relay {
    rx: PipeReceiver,
    tx: PipeSender,
    n: u64,
}

impl Process for Relay {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        loop {
            match self.rx.recv::<u64>() {
                Ok(x) => {
                    self.tx.send(&x)?;
                    ctx.tell(&x)?;
                    self.n += 1;
                }
                Err(e) if e.is_disconnected() => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Doubles what comes on its duplex pipe until `None`.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Doubler {
    pipe: Pipe,
}

impl Process for Doubler {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        while let Some(x) = self.pipe.recv::<Option<u64>>()? {
            self.pipe.send(&(x * 2))?;
        }
        Ok(())
    }
}

/// Waits for a go from the parent, then tells `0..n`.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Teller {
    n: u64,
}

impl Process for Teller {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let _: Option<()> = ctx.listen(DEADLINE)?;
        for i in 0..self.n {
            ctx.tell(&i)?;
        }
        Ok(())
    }
}

#[test]
fn the_runtime_keeps_ticking_while_wait_async_is_pending() {
    on_each_runtime(|| async {
        let mut h = Idle { stopped: false }.start().unwrap();
        let ready: String = h.listen_async().await.unwrap();
        assert_eq!(ready, "ready");
        let pid = h.pid();
        // The stop comes from the ticker: the wait ends only if it ran.
        let ticks = ticker(move || send_signal(pid, rustix::process::Signal::TERM));
        let done = h.wait_async().await.unwrap();
        assert!(done.stopped);
        assert!(ticks.load(Ordering::SeqCst) >= 3);
        assert_gone(pid);
        // Waited: a second wait is refused, as for `wait`.
        assert!(h.wait_async().await.is_err());
    });
}

#[test]
fn the_runtime_keeps_ticking_while_listen_and_recv_async_are_pending() {
    on_each_runtime(|| async {
        let (to_child, rx) = Pipe::one_way().unwrap();
        let (tx, from_child) = Pipe::one_way().unwrap();
        let mut h = Relay { rx, tx, n: 0 }.start().unwrap();
        let to_child = Arc::new(to_child);
        let t = to_child.clone();
        let ticks = ticker(move || t.send(&7u64).unwrap());
        // Both wait on the ticker's message, sent from the child.
        let told: u64 = h.listen_async().await.unwrap();
        assert_eq!(told, 7);
        assert!(ticks.load(Ordering::SeqCst) >= 3);
        let piped: u64 = from_child.recv_async().await.unwrap();
        assert_eq!(piped, 7);

        // Pending again: the next message comes from the ticker too.
        let seen = ticks.load(Ordering::SeqCst);
        let t = to_child.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(2));
            every.tick().await;
            every.tick().await;
            t.send(&8u64).unwrap();
        });
        let piped: u64 = from_child.recv_async().await.unwrap();
        assert_eq!(piped, 8);
        assert!(ticks.load(Ordering::SeqCst) > seen);

        // The sender gone, the child ends; then both report the end.
        drop(to_child);
        let done = h.wait_async().await.unwrap();
        assert_eq!(done.n, 2);
        // Its final state holds the child's sender: gone with it.
        drop(done);
        assert_eq!(h.listen_async::<u64>().await.unwrap(), 8);
        assert!(h.listen_async::<u64>().await.unwrap_err().is_disconnected());
        assert!(from_child
            .recv_async::<u64>()
            .await
            .unwrap_err()
            .is_disconnected());
        assert_gone(h.pid());
    });
}

#[test]
fn pipe_recv_async_on_a_duplex_end() {
    on_each_runtime(|| async {
        let (mine, theirs) = Pipe::pair().unwrap();
        let mut h = Doubler { pipe: theirs }.start().unwrap();
        for x in 0..20u64 {
            mine.send(&Some(x)).unwrap();
            assert_eq!(mine.recv_async::<u64>().await.unwrap(), x * 2);
        }
        mine.send(&None::<u64>).unwrap();
        h.wait_async().await.unwrap();
        assert!(mine
            .recv_async::<u64>()
            .await
            .unwrap_err()
            .is_disconnected());
        assert_gone(h.pid());
    });
}

#[test]
fn a_dropped_listen_async_never_eats_a_message() {
    const N: u64 = 200;
    on_each_runtime(|| async {
        let mut h = Teller { n: N }.start().unwrap();
        // Nothing is sent before the go: this listen is surely dropped
        // while pending.
        let mut dropped = 0u32;
        tokio::select! {
            biased;
            _ = h.listen_async::<u64>() => panic!("a message before the go"),
            _ = tokio::task::yield_now() => dropped += 1,
        }
        h.tell(&()).unwrap();
        let mut got = Vec::new();
        while got.len() < N as usize {
            // Alternately give up after a yield and after a timer.
            if got.len() % 2 == 0 {
                tokio::select! {
                    biased;
                    r = h.listen_async::<u64>() => got.push(r.unwrap()),
                    _ = tokio::task::yield_now() => dropped += 1,
                }
            } else {
                match tokio::time::timeout(Duration::from_micros(50), h.listen_async::<u64>()).await
                {
                    Ok(r) => got.push(r.unwrap()),
                    Err(_) => dropped += 1,
                }
            }
        }
        assert!(dropped >= 1);
        assert_eq!(got, (0..N).collect::<Vec<_>>());
        assert!(h.listen_async::<u64>().await.unwrap_err().is_disconnected());
        h.wait_async().await.unwrap();
        assert_gone(h.pid());
    });
}

#[test]
fn the_futures_run_under_futures_executor_without_tokio() {
    watchdog();
    let (to_child, rx) = Pipe::one_way().unwrap();
    let (tx, from_child) = Pipe::one_way().unwrap();
    let mut h = Relay { rx, tx, n: 0 }.start().unwrap();
    let sender = std::thread::spawn(move || {
        for x in 0..5u64 {
            to_child.send(&x).unwrap();
        }
    });
    futures::executor::block_on(async {
        for x in 0..5u64 {
            assert_eq!(from_child.recv_async::<u64>().await.unwrap(), x);
            assert_eq!(h.listen_async::<u64>().await.unwrap(), x);
        }
        assert_eq!(h.wait_async().await.unwrap().n, 5);
        assert!(h.listen_async::<u64>().await.unwrap_err().is_disconnected());
    });
    sender.join().unwrap();
    assert_gone(h.pid());
}

#[test]
fn a_dropped_wait_async_leaves_the_handle_waitable() {
    on_each_runtime(|| async {
        let mut h = Idle { stopped: false }.start().unwrap();
        let _: String = h.listen_async().await.unwrap();
        tokio::select! {
            biased;
            _ = h.wait_async() => panic!("ended before the stop"),
            _ = tokio::task::yield_now() => {}
        }
        h.stop();
        assert!(h.wait_async().await.unwrap().stopped);
        assert_gone(h.pid());
    });
}

#[test]
fn the_futures_are_send_and_run_in_spawned_tasks() {
    on_each_runtime(|| async {
        let (tx, rx) = Pipe::one_way().unwrap();
        let (tx2, rx2) = Pipe::one_way().unwrap();
        let h = Relay { rx, tx: tx2, n: 0 }.start().unwrap();
        let h = tokio::spawn(async move {
            let first: u64 = h.listen_async().await.unwrap();
            (h, first)
        });
        let r = tokio::spawn(async move { rx2.recv_async::<u64>().await.map(|v| (v, rx2)) });
        tx.send(&5u64).unwrap();
        let (mut h, first) = h.await.unwrap();
        let (piped, _rx2) = r.await.unwrap().unwrap();
        assert_eq!((first, piped), (5, 5));
        drop(tx);
        let done = tokio::spawn(async move { h.wait_async().await.map(|d| (d.n, h.pid())) });
        let (n, pid) = done.await.unwrap().unwrap();
        assert_eq!(n, 1);
        assert_gone(pid);
    });
}

#[test]
fn several_tasks_receive_from_one_pipe_end_each_message_once() {
    const N: u64 = 300;
    on_each_runtime(|| async {
        let (tx, rx) = Pipe::one_way().unwrap();
        let rx = Arc::new(rx);
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let rx = rx.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    loop {
                        match rx.recv_async::<Option<u64>>().await.unwrap() {
                            Some(x) => got.push(x),
                            None => return got,
                        }
                    }
                })
            })
            .collect();
        let sender = std::thread::spawn(move || {
            for x in 0..N {
                tx.send(&Some(x)).unwrap();
            }
            for _ in 0..3 {
                tx.send(&None::<u64>).unwrap();
            }
        });
        let mut all = Vec::new();
        for t in tasks {
            let got = t.await.unwrap();
            // Each task sees its messages in the order they were sent.
            assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
            all.extend(got);
        }
        sender.join().unwrap();
        all.sort_unstable();
        assert_eq!(all, (0..N).collect::<Vec<_>>());
    });
}

#[test]
fn a_dropped_recv_async_leaves_the_message_for_the_next_receive() {
    on_each_runtime(|| async {
        let (tx, rx) = Pipe::one_way().unwrap();
        tokio::select! {
            biased;
            _ = rx.recv_async::<u64>() => panic!("nothing was sent"),
            _ = tokio::task::yield_now() => {}
        }
        tx.send(&1u64).unwrap();
        tx.send(&2u64).unwrap();
        assert_eq!(rx.recv_timeout::<u64>(DEADLINE).unwrap(), Some(1));
        assert_eq!(rx.recv_async::<u64>().await.unwrap(), 2);
        // Dropped with its watcher thread running: the drop ends and joins
        // it (a hang here would be caught by the watchdog).
        drop(rx);
        drop(tx);
    });
}

// ---------------------------------------------------------------------------
// AsyncProcess

/// The example of API.md §10.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 3)]
struct Fetch {
    got: u32,
}

impl AsyncProcess for Fetch {
    async fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        tokio::time::sleep(Duration::from_millis(10)).await;
        self.got += 1;
        Ok(())
    }
}

#[test]
fn async_hooks_run_in_the_child() {
    watchdog();
    let mut h = Fetch { got: 0 }.start().unwrap();
    assert_eq!(support::finish(&mut h).unwrap().got, 3);
    assert_eq!(h.timers().run.count(), 3);
    assert_gone(h.pid());
}

/// Every hook async; a task spawned in `prerun` keeps running across hooks
/// (one runtime for the child's life); tell and listen from async hooks.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 2)]
struct Hooks {
    calls: Vec<String>,
}

impl AsyncProcess for Hooks {
    async fn prerun(&mut self, ctx: &mut Ctx) -> HookResult {
        self.calls.push(format!("prerun {}", ctx.run_index()));
        Ok(())
    }

    async fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let x: Option<u64> = ctx.listen(DEADLINE)?;
        let x = x.ok_or("no message")?;
        tokio::task::yield_now().await;
        ctx.tell(&(x + 1))?;
        self.calls.push(format!("run {}", ctx.run_index()));
        Ok(())
    }

    async fn postrun(&mut self, ctx: &mut Ctx) -> HookResult {
        self.calls.push(format!("postrun {}", ctx.run_index()));
        Ok(())
    }

    async fn onfinish(&mut self, ctx: &mut Ctx) -> HookResult {
        let spawned = tokio::spawn(async { 40 + 2 }).await?;
        self.calls
            .push(format!("onfinish {} {spawned}", ctx.run_index()));
        Ok(())
    }
}

#[test]
fn every_async_hook_runs_in_order_and_talks_to_the_parent() {
    watchdog();
    let mut h = Hooks { calls: vec![] }.start().unwrap();
    for x in [10u64, 20] {
        h.tell(&x).unwrap();
        let r: Option<u64> = h.listen(DEADLINE).unwrap();
        assert_eq!(r, Some(x + 1));
    }
    let done = support::finish(&mut h).unwrap();
    assert_eq!(
        done.calls,
        [
            "prerun 0",
            "run 0",
            "postrun 0",
            "prerun 1",
            "run 1",
            "postrun 1",
            "onfinish 2 42"
        ]
    );
}

/// Sleeps in `run` (async) for `sleep_ms`, failing on the first attempt if
/// `fail_first`.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1, lives = 2)]
struct Slow {
    sleep_ms: u64,
    fail_first: bool,
    attempt: u32,
}

impl AsyncProcess for Slow {
    async fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        self.attempt = ctx.attempt();
        if self.fail_first && ctx.attempt() == 1 {
            return Err("first attempt fails".into());
        }
        tokio::time::sleep(Duration::from_millis(self.sleep_ms)).await;
        Ok(())
    }
}

#[test]
fn an_async_hook_past_its_timeout_is_killed() {
    watchdog();
    let cfg = Slow::config()
        .lives(1)
        .timeout(Hook::Run, Duration::from_millis(150));
    let mut h = Slow {
        sleep_ms: 600_000,
        fail_first: false,
        attempt: 0,
    }
    .start_with(cfg)
    .unwrap();
    let e = support::finish(&mut h).err().expect("times out");
    assert!(e.is_timeout(), "{e}");
    assert_eq!(e.hook(), Some(Hook::Run));
    assert_gone(h.pid());
}

#[test]
fn an_async_process_gets_its_lives() {
    watchdog();
    let mut h = Slow {
        sleep_ms: 1,
        fail_first: true,
        attempt: 0,
    }
    .start()
    .unwrap();
    let done = support::finish(&mut h).unwrap();
    assert_eq!(done.attempt, 2);
    assert_eq!(h.attempt(), 2);
}

/// Reports its progress while waiting for a stop, in a `select!`.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Watcher {
    reports: u64,
    stopped: bool,
}

#[derive(Serialize, Deserialize, Debug)]
struct Progress {
    reports: u64,
}

impl AsyncProcess for Watcher {
    async fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let stopped = ctx.stopped();
        tokio::pin!(stopped);
        let mut every = tokio::time::interval(Duration::from_millis(5));
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = every.tick() => {
                    self.reports += 1;
                    ctx.report(&Progress { reports: self.reports })?;
                    if self.reports == 3 {
                        ctx.tell("reporting")?;
                    }
                }
            }
        }
        self.stopped = true;
        Ok(())
    }
}

#[test]
fn stopped_resolves_on_a_stop_from_the_parent_and_on_sigterm() {
    watchdog();
    for by_signal in [false, true] {
        let mut h = Watcher {
            reports: 0,
            stopped: false,
        }
        .start()
        .unwrap();
        let r: Option<String> = h.listen(DEADLINE).unwrap();
        assert_eq!(r.as_deref(), Some("reporting"));
        let p: Option<Progress> = h.report().unwrap();
        assert!(p.unwrap().reports >= 3);
        if by_signal {
            send_signal(h.pid(), rustix::process::Signal::TERM);
        } else {
            h.stop();
        }
        let done = support::finish(&mut h).unwrap();
        assert!(done.stopped);
        assert!(done.reports >= 3);
        assert_eq!(h.attempt(), 1, "a stop costs no life");
        assert_gone(h.pid());
    }
}

/// Awaits a stop beside a very long sleep; `onfinish` marks a share.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Orphan {
    finished: Share<bool>,
}

impl AsyncProcess for Orphan {
    async fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        ctx.tell(&ctx.pid())?;
        tokio::select! {
            _ = ctx.stopped() => Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1000)) => Err("never stopped".into()),
        }
    }

    async fn onfinish(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.finished.set(true)?;
        Ok(())
    }
}

/// Starts an `Orphan`, passes its pid up, then waits to be killed.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Middle {
    finished: Share<bool>,
}

impl Process for Middle {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let h = Orphan {
            finished: self.finished.clone(),
        }
        .start()?;
        let pid: u32 = h.listen(DEADLINE)?.ok_or("no pid")?;
        ctx.tell(&pid)?;
        std::thread::sleep(Duration::from_secs(1000));
        drop(h);
        Ok(())
    }
}

#[test]
fn stopped_resolves_when_the_parent_dies() {
    watchdog();
    let finished = Share::new(false).unwrap();
    let mut h = Middle {
        finished: finished.clone(),
    }
    .start()
    .unwrap();
    let orphan: u32 = h.listen(DEADLINE).unwrap().expect("pid");
    // SIGKILL: the middle process cannot stop its child itself.
    h.kill().unwrap();
    assert!(support::finish(&mut h).err().unwrap().is_killed());
    let until = std::time::Instant::now() + DEADLINE;
    while !finished.get().unwrap() {
        assert!(std::time::Instant::now() < until, "onfinish never ran");
        std::thread::yield_now();
    }
    support::assert_gone_within(orphan, DEADLINE);
}
