//! A tour of skprocess, one chapter per capability.
//!
//! Run it with `cargo run --release --example tour`.

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Chapter 1: a process with hooks, lives, a timeout and timers.

/// Sums the squares of `x` over five runs. Its first attempt fails in run
/// #2 (as if a disk filled up); the second attempt starts again from the
/// initial state, in a fresh child, and succeeds.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 5, lives = 2, timeout(run = "2s"))]
struct Squarer {
    x: u64,
    total: u64,
    log: Vec<String>,
}

impl Process for Squarer {
    fn prerun(&mut self, ctx: &mut Ctx) -> HookResult {
        self.log
            .push(format!("attempt {} run {}", ctx.attempt(), ctx.run_index()));
        Ok(())
    }

    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if ctx.attempt() == 1 && ctx.run_index() == 2 {
            return Err("disk full".into());
        }
        std::thread::sleep(Duration::from_millis(2));
        self.total += self.x * self.x;
        Ok(())
    }

    fn onfinish(&mut self, ctx: &mut Ctx) -> HookResult {
        self.log.push(format!("onfinish in pid {}", ctx.pid()));
        Ok(())
    }
}

/// Always fails: shows what the error says once every life is used.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 3, lives = 2)]
struct Doomed;

impl Process for Doomed {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if ctx.run_index() == 1 {
            return Err(format!("no luck on attempt {}", ctx.attempt()).into());
        }
        Ok(())
    }
}

fn chapter_1() -> skprocess::Result<()> {
    println!("== 1. a process with hooks, lives and timers");
    let mut h = Squarer {
        x: 3,
        total: 0,
        log: vec![],
    }
    .start()?;
    println!("started pid {}", h.pid());
    let done = h.wait()?;
    println!("total = {} (5 runs of 3*3)", done.total);
    println!("what the successful attempt saw: {:?}", done.log);
    println!("{}", h.timers());
    println!("mean run: {:?}", h.timers().run.mean());

    match Doomed.start()?.wait() {
        Ok(_) => unreachable!("every life fails"),
        Err(e) => println!("a process that always fails: {e}"),
    }
    println!();
    Ok(())
}

// ---------------------------------------------------------------------------
// Chapter 2: messaging. tell/listen between a handle and its process, and a
// Pipe, the fast path between two processes.

/// An echo server: answers every line in upper case until told "bye".
#[derive(Process, Serialize, Deserialize)]
struct EchoServer {
    served: u64,
}

impl Process for EchoServer {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        match ctx.listen::<String>(Duration::from_secs(5))? {
            Some(s) if s == "bye" => ctx.stop(),
            Some(s) => {
                ctx.tell(&s.to_uppercase())?;
                self.served += 1;
            }
            None => {}
        }
        Ok(())
    }
}

/// Streams `n` numbers into a pipe, then a final `None`.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Streamer {
    n: u64,
    out: PipeSender,
}

impl Process for Streamer {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        for i in 0..self.n {
            self.out.send(&Some(i))?;
        }
        self.out.send(&None::<u64>)?;
        Ok(())
    }
}

fn chapter_2() -> skprocess::Result<()> {
    println!("== 2. messaging: tell/listen and a pipe");
    let mut echo = EchoServer { served: 0 }.start()?;
    for line in ["hello", "from", "the parent"] {
        echo.tell(line)?;
        let reply: Option<String> = echo.listen(Duration::from_secs(5))?;
        println!("  {line:?} -> {reply:?}");
    }
    let t = Instant::now();
    for i in 0..1000u32 {
        echo.tell(&i.to_string())?;
        echo.listen::<String>(Duration::from_secs(5))?;
    }
    println!("1000 tell/listen round trips in {:?}", t.elapsed());
    echo.tell("bye")?;
    println!(
        "the server answered {} lines; {:?}",
        echo.wait()?.served,
        echo.stats()
    );

    let (tx, rx) = Pipe::one_way()?;
    let t = Instant::now();
    let mut streamer = Streamer {
        n: 100_000,
        out: tx,
    }
    .start()?;
    let (mut count, mut sum) = (0u64, 0u64);
    while let Some(i) = rx.recv::<Option<u64>>()? {
        count += 1;
        sum += i;
    }
    streamer.wait()?;
    println!(
        "a pipe streamed {count} numbers (sum {sum}) in {:?}; {:?}",
        t.elapsed(),
        rx.stats()
    );
    println!();
    Ok(())
}

// ---------------------------------------------------------------------------
// Chapter 3: Share, one value seen and changed by every process.

#[derive(Serialize, Deserialize, Default)]
struct Stats {
    counter: u64,
    log: Vec<String>,
}

/// Bumps the shared counter ten times, appending each value to the log.
#[derive(Process, Serialize, Deserialize, Clone)]
#[process(runs = 10)]
struct ShareCounter {
    share: Share<Stats>,
}

impl Process for ShareCounter {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let mut s = self.share.lock()?; // atomic across processes
        s.counter += 1;
        let n = s.counter;
        s.log.push(n.to_string());
        Ok(()) // written back when `s` drops
    }
}

fn chapter_3() -> skprocess::Result<()> {
    println!("== 3. Share: one value, every process");
    let share = Share::new(Stats::default())?;
    let mut handles = (0..4)
        .map(|_| {
            ShareCounter {
                share: share.clone(),
            }
            .start()
        })
        .collect::<skprocess::Result<Vec<_>>>()?;
    for h in &mut handles {
        h.wait()?;
    }
    let s = share.get()?;
    println!("4 processes x 10 runs: counter = {}", s.counter);
    let in_order = s
        .log
        .iter()
        .enumerate()
        .all(|(i, n)| *n == (i + 1).to_string());
    println!("every increment saw the one before it: {in_order}");
    let n = share.update(|s| {
        s.counter += 1;
        s.counter
    })?;
    println!("one more from the parent: {n}");
    println!();
    Ok(())
}

// ---------------------------------------------------------------------------
// Chapter 4: a pool of workers.

/// Counts the primes below `n`: a CPU-bound item. An item with
/// `crash_once` set crashes its worker on its first attempt; the pool
/// replaces the worker and the item's second life succeeds.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1, lives = 2, timeout(run = "10s"))]
struct PrimeCount {
    n: u64,
    crash_once: bool,
    count: usize,
    attempt: u32,
}

impl Process for PrimeCount {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if self.crash_once && ctx.attempt() == 1 {
            std::process::abort();
        }
        self.count = (0..self.n).filter(|&k| is_prime(k)).count();
        self.attempt = ctx.attempt();
        Ok(())
    }
}

fn is_prime(k: u64) -> bool {
    k >= 2
        && !(2..)
            .take_while(|d| d * d <= k)
            .any(|d| k.is_multiple_of(d))
}

fn chapter_4() -> skprocess::Result<()> {
    println!("== 4. a pool of workers");
    let pool = Pool::new(4)?; // Pool::default(): one worker per core
    println!("workers: {:?}", pool.pids());

    // map: every item runs its lifecycle in a worker; final states come
    // back in input order.
    let items = (1..=20).map(|i| PrimeCount {
        n: i * 5_000,
        crash_once: [5, 10, 15, 20].contains(&i),
        count: 0,
        attempt: 0,
    });
    let done = pool.map(items)?;
    let retried = done.iter().filter(|p| p.attempt == 2).count();
    println!("primes below {}: {}", done[19].n, done[19].count);
    println!("{retried} items crashed their worker once; the pool replaced it and retried them");
    println!("workers now: {:?}", pool.pids());

    // The speed-up over one process, on the same CPU-bound items.
    let work = || {
        (0..8).map(|_| PrimeCount {
            n: 300_000,
            crash_once: false,
            count: 0,
            attempt: 0,
        })
    };
    let t = Instant::now();
    let serial_counts: Vec<usize> = work()
        .map(|p| (0..p.n).filter(|&k| is_prime(k)).count())
        .collect();
    let serial = t.elapsed();
    let t = Instant::now();
    let pooled_counts: Vec<usize> = pool.map(work())?.into_iter().map(|p| p.count).collect();
    let pooled = t.elapsed();
    assert_eq!(serial_counts, pooled_counts);
    println!(
        "8 CPU-bound items: {serial:.0?} in this process, {pooled:.0?} on the pool ({:.1}x on {} cores)",
        serial.as_secs_f64() / pooled.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // unordered_imap: each result as soon as it is done.
    let items = [400_000, 10_000, 200_000].map(|n| PrimeCount {
        n,
        crash_once: false,
        count: 0,
        attempt: 0,
    });
    for r in pool.unordered_imap(items) {
        let p = r?;
        println!("  finished: {} primes below {}", p.count, p.n);
    }

    // map_fn: a plain function; tiny items are batched so IPC stays cheap.
    let t = Instant::now();
    let flags = pool.map_fn(is_prime, 0..1_000_000u64)?;
    let n = flags.iter().filter(|&&b| b).count();
    println!(
        "{n} primes below a million through map_fn in {:?}",
        t.elapsed()
    );

    // A closure that captures state is refused: state goes in the items.
    let limit = 10;
    if let Err(e) = pool.map_fn(move |x: u64| x < limit, 0..3u64) {
        println!("refused: {e}");
    }
    println!();
    Ok(())
}

// ---------------------------------------------------------------------------
// Chapter 5: logging. Children's `tracing` events arrive in the parent's
// subscriber (installed in `main`), in order, with `process` and `pid`.

/// Crawls a pretend site, logging as it goes.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 3)]
struct Crawler {
    site: String,
}

impl Process for Crawler {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        tracing::info!(site = %self.site, page = ctx.run_index(), "fetched");
        if ctx.run_index() == 2 {
            tracing::warn!(site = %self.site, "slow response");
        }
        // Plain output becomes an event too, with capture_output.
        println!("raw output from {}", self.site);
        Ok(())
    }
}

fn chapter_5() -> skprocess::Result<()> {
    println!("== 5. four workers logging into the parent's subscriber");
    let _crawl = tracing::info_span!("crawl").entered();
    let cfg = Crawler::config().capture_output(true);
    let mut handles = ["a.example", "b.example", "c.example", "d.example"]
        .into_iter()
        .map(|site| Crawler { site: site.into() }.start_with(cfg.clone()))
        .collect::<skprocess::Result<Vec<_>>>()?;
    for h in &mut handles {
        h.wait()?;
    }
    println!();
    Ok(())
}

// ---------------------------------------------------------------------------
// Chapter 6: services under a supervisor.

/// A long-running worker that reports its progress. With `crash` set, its
/// first start dies at item 10 (a SIGABRT from a bad library, say); the
/// share counts the starts, across restarts.
#[derive(Process, Serialize, Deserialize)]
struct Ingest {
    crash: Option<Share<u32>>,
    items: u64,
}

impl Process for Ingest {
    fn prerun(&mut self, ctx: &mut Ctx) -> HookResult {
        if ctx.run_index() == 0 {
            if let Some(starts) = &self.crash {
                starts.update(|n| *n += 1)?;
            }
        }
        Ok(())
    }

    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        self.items += 1;
        if let Some(starts) = &self.crash {
            if self.items == 10 && starts.get()? == 1 {
                std::process::abort();
            }
        }
        ctx.report(&self.items)?;
        std::thread::sleep(Duration::from_millis(5));
        Ok(())
    }

    fn onfinish(&mut self, _ctx: &mut Ctx) -> HookResult {
        tracing::info!(items = self.items, "ingest stopped cleanly");
        Ok(())
    }
}

fn chapter_6() -> skprocess::Result<()> {
    use skprocess::supervise::{Backoff, Child, Event, Supervisor};
    println!("== 6. services: named workers, restarts, status, graceful stop");
    let sup = Supervisor::new();
    let events = sup.events();
    sup.add_with(
        "flaky",
        Ingest {
            crash: Some(Share::new(0)?),
            items: 0,
        },
        Child::new().backoff(Backoff::fixed(Duration::from_millis(50))),
    )?;
    sup.add_group("steady", 2, |_| Ingest {
        crash: None,
        items: 0,
    })?;
    // The flaky one crashes once and is started again from its value.
    loop {
        match events.recv_timeout(Duration::from_secs(30)) {
            Ok(Event::Restarting { name, delay }) => {
                println!(
                    "{name} crashed: {}",
                    sup.status(&name)?.last_error.unwrap_or_default()
                );
                println!("{name} restarts in {delay:?}");
                break;
            }
            Ok(_) => {}
            Err(_) => return Err(skprocess::Error::Usage("no restart seen".into())),
        }
    }
    // Its second start gets well past where the first one died.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sup.report::<u64>("flaky")?.unwrap_or(0) < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    for name in sup.names() {
        let st = sup.status(&name)?;
        let items: u64 = sup.report(&name)?.unwrap_or(0);
        println!(
            "{name:<10} {:?} restarts={} items={items}",
            st.state, st.restarts
        );
    }
    // Graceful: every onfinish runs, in reverse start order.
    sup.stop_all()?;
    sup.wait()?;
    println!();
    Ok(())
}

// ---------------------------------------------------------------------------
// Chapter 7: a task queue and a result queue shared by workers, with a large
// read-only input every worker reads in place.

/// Pops row numbers until the task queue is closed and empty, and pushes
/// each row's maximum to the result queue.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct RowMax {
    tasks: Queue<usize>,
    results: Queue<(usize, u32)>,
    grid: SharedSlice<u32>,
}

impl Process for RowMax {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        while let Ok(row) = self.tasks.pop() {
            let max = self.grid[row * 1000..][..1000].iter().max().copied();
            self.results.push(&(row, max.unwrap_or(0)))?;
        }
        Ok(())
    }
}

fn chapter_7() -> skprocess::Result<()> {
    println!("== 7. Queue and SharedSlice: workers pulling tasks");
    let grid: Vec<u32> = (0..1_000_000u32)
        .map(|i| i.wrapping_mul(2_654_435_761) % 1_000_003)
        .collect();
    // Copied once; each worker gets a descriptor, not 4 MB.
    let grid = SharedSlice::from_slice(&grid)?;
    let tasks: Queue<usize> = Queue::new()?;
    let results: Queue<(usize, u32)> = Queue::new()?;
    let mut workers = (0..3)
        .map(|_| {
            RowMax {
                tasks: tasks.clone(),
                results: results.clone(),
                grid: grid.clone(),
            }
            .start()
        })
        .collect::<skprocess::Result<Vec<_>>>()?;
    for row in 0..1000 {
        tasks.push(&row)?;
    }
    tasks.close(); // workers stop once it is empty
    let mut best = (0, 0);
    for _ in 0..1000 {
        let (row, max) = results.pop()?;
        if max > best.1 {
            best = (row, max);
        }
    }
    for w in &mut workers {
        w.wait()?;
    }
    println!(
        "1000 rows by 3 workers: the largest value {} is in row {}",
        best.1, best.0
    );
    println!();
    Ok(())
}

// ---------------------------------------------------------------------------
// Chapter 8: async, call time limits, background calls, recycling.

/// Fetches something slowly, with async hooks on the child's own runtime.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 3)]
struct Fetch {
    got: u32,
}

impl AsyncProcess for Fetch {
    async fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        tokio::time::sleep(Duration::from_millis(10)).await;
        self.got += 1;
        ctx.tell(&format!("fetched #{}", self.got))?;
        Ok(())
    }
}

/// Sleeps for `ms`: a stand-in for an item that may hang.
#[derive(Process, Serialize, Deserialize, Debug)]
#[process(runs = 1)]
struct Nap {
    ms: u64,
}

impl Process for Nap {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        std::thread::sleep(Duration::from_millis(self.ms));
        Ok(())
    }
}

fn square(x: u64) -> u64 {
    x * x
}

fn chapter_8() -> skprocess::Result<()> {
    println!("== 8. async, call time limits, background calls, recycling");
    // The parent's futures need no runtime; here futures' own executor
    // drives them (a #[tokio::main] program would just .await them).
    let mut h = Fetch { got: 0 }.start()?;
    let done = futures::executor::block_on(async {
        loop {
            match h.listen_async::<String>().await {
                Ok(line) => println!("  child says: {line}"),
                Err(e) if e.is_disconnected() => break,
                Err(e) => return Err(e),
            }
        }
        h.wait_async().await
    })?;
    println!("async hooks ran {} times", done.got);

    let pool = Pool::builder()
        .workers(2)
        .max_items_per_worker(50)
        .build()?;
    let sum: u64 = futures::executor::block_on(pool.map_fn_async(square, 0..1000u64))?
        .iter()
        .sum();
    println!("map_fn_async: the sum of squares below 1000 is {sum}");

    // A hung item costs the call's limit, not the program.
    let err = pool
        .with_timeout(Duration::from_millis(300))
        .map([Nap { ms: 1 }, Nap { ms: 60_000 }])
        .unwrap_err();
    println!("with_timeout(300ms): {err}");

    // Started in the background, watched, then cancelled.
    let bg = pool.background().map((0..4).map(|_| Nap { ms: 60_000 }));
    println!(
        "background call: finished? {}, progress {:?}",
        bg.is_finished(),
        bg.progress()
    );
    bg.cancel();
    println!("cancelled: {}", bg.wait().unwrap_err());
    let again = pool.map((0..4).map(|_| Nap { ms: 1 }))?;
    println!("and the pool goes on: {} more items done", again.len());
    println!();
    Ok(())
}

fn main() -> skprocess::Result<()> {
    // Only the parent sets up logging; children need nothing.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_writer(std::io::stdout)
        .with_ansi(colour)
        .init();
    chapter_1()?;
    chapter_2()?;
    chapter_3()?;
    chapter_4()?;
    chapter_5()?;
    chapter_6()?;
    chapter_7()?;
    chapter_8()?;
    Ok(())
}
