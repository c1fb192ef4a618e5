//! An async worker driven from an async parent.
//!
//! The worker's hooks are `async fn` (`AsyncProcess`, feature `tokio`):
//! `run` handles jobs one after another while a status reporter publishes
//! its progress every 100 ms (`ctx.report`) and a shutdown monitor
//! (`ctx.stopped()`) ends the loop as soon as a stop is asked for, all in
//! one `tokio::select!`. The parent is a `#[tokio::main]` program: it
//! prints the worker's messages and reports as they come, without ever
//! blocking its runtime, asks for a stop once enough work is done, and
//! awaits the final state with `wait_async`.
//!
//! Run with `cargo run --release --example async_worker`.

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::time::Duration;

/// The worker's status, as reported.
#[derive(Serialize, Deserialize, Debug)]
struct Status {
    jobs_done: u64,
    busy: bool,
}

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Worker {
    jobs_done: u64,
    reports: u64,
    shut_down_cleanly: bool,
}

impl Worker {
    /// One job: here a simulated request of 40 ms.
    async fn job(n: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        n * n
    }
}

impl AsyncProcess for Worker {
    async fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        // The shutdown monitor: resolves at the stop (from the parent, a
        // SIGTERM, or the parent's death).
        let stopped = ctx.stopped();
        tokio::pin!(stopped);
        // The status reporter.
        let mut every = tokio::time::interval(Duration::from_millis(100));
        let mut job = Box::pin(Self::job(self.jobs_done));
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = every.tick() => {
                    self.reports += 1;
                    ctx.report(&Status { jobs_done: self.jobs_done, busy: true })?;
                }
                out = &mut job => {
                    self.jobs_done += 1;
                    ctx.tell(&format!("job {} done: {out}", self.jobs_done))?;
                    job = Box::pin(Self::job(self.jobs_done));
                }
            }
        }
        Ok(())
    }

    async fn onfinish(&mut self, ctx: &mut Ctx) -> HookResult {
        // The stop arrived: say so one last time, then hand the state back.
        ctx.report(&Status {
            jobs_done: self.jobs_done,
            busy: false,
        })?;
        self.shut_down_cleanly = true;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut h = Worker {
        jobs_done: 0,
        reports: 0,
        shut_down_cleanly: false,
    }
    .start()?;
    println!("worker started (pid {})", h.pid());

    // The parent's own ticker: it keeps running while the futures wait.
    let mut print_every = tokio::time::interval(Duration::from_millis(100));
    let mut stop_asked = false;
    loop {
        tokio::select! {
            msg = h.listen_async::<String>() => match msg {
                Ok(m) => println!("  worker says: {m}"),
                // The worker has ended and every message was read.
                Err(e) if e.is_disconnected() => break,
                Err(e) => return Err(e.into()),
            },
            _ = print_every.tick() => {
                if let Some(s) = h.report::<Status>()? {
                    println!("status: {} jobs done, busy: {}", s.jobs_done, s.busy);
                    if s.jobs_done >= 15 && !stop_asked {
                        println!("asking the worker to stop");
                        h.stop();
                        stop_asked = true;
                    }
                }
            }
        }
    }

    let done = h.wait_async().await?;
    let last: Option<Status> = h.report()?;
    println!(
        "worker finished: {} jobs, {} reports, clean shutdown: {}; last status: {last:?}",
        done.jobs_done, done.reports, done.shut_down_cleanly
    );
    assert!(done.shut_down_cleanly);
    Ok(())
}
