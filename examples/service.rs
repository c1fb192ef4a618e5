//! A service: named workers under a supervisor, a status table from their
//! reports, and a graceful shutdown on Ctrl-C (SIGINT) or SIGTERM in which
//! every worker's `onfinish` runs.
//!
//! ```sh
//! cargo run --release --example service            # until Ctrl-C
//! cargo run --release --example service -- --for 3 # sends itself SIGTERM after 3 s
//! ```
//!
//! Three kinds of worker: a ticker, a flaky parser that crashes now and then
//! (and is restarted after a backoff), and a group of two shards.

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use skprocess::supervise::{Backoff, Child, Event, Restart, Supervisor};
use std::time::{Duration, Instant};

/// What every worker reports.
#[derive(Serialize, Deserialize, Debug, Default)]
struct Progress {
    done: u64,
    note: String,
}

/// Ticks every 100 ms.
#[derive(Process, Serialize, Deserialize)]
struct Ticker {
    ticks: u64,
}

impl Process for Ticker {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        self.ticks += 1;
        ctx.report(&Progress {
            done: self.ticks,
            note: "tick".into(),
        })?;
        std::thread::sleep(Duration::from_millis(100));
        Ok(())
    }

    fn onfinish(&mut self, ctx: &mut Ctx) -> HookResult {
        println!("  ticker {} finished after {} ticks", ctx.pid(), self.ticks);
        Ok(())
    }
}

/// Parses "documents"; every 100th one makes it crash (a bad library).
#[derive(Process, Serialize, Deserialize)]
struct Parser {
    parsed: u64,
}

impl Process for Parser {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        self.parsed += 1;
        if self.parsed.is_multiple_of(100) {
            std::process::abort();
        }
        ctx.report(&Progress {
            done: self.parsed,
            note: format!("attempt {}", ctx.attempt()),
        })?;
        std::thread::sleep(Duration::from_millis(20));
        Ok(())
    }

    fn onfinish(&mut self, ctx: &mut Ctx) -> HookResult {
        println!(
            "  parser {} finished after {} documents",
            ctx.pid(),
            self.parsed
        );
        Ok(())
    }
}

/// One shard of a partitioned job.
#[derive(Process, Serialize, Deserialize)]
struct Shard {
    index: usize,
    rows: u64,
}

impl Process for Shard {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        self.rows += 100 * (self.index as u64 + 1);
        ctx.report(&Progress {
            done: self.rows,
            note: format!("shard {}", self.index),
        })?;
        std::thread::sleep(Duration::from_millis(50));
        Ok(())
    }

    fn onfinish(&mut self, _ctx: &mut Ctx) -> HookResult {
        println!("  shard {} finished with {} rows", self.index, self.rows);
        Ok(())
    }
}

fn table(sup: &Supervisor) -> skprocess::Result<()> {
    println!(
        "{:<10} {:<9} {:>8} {:>9} {:>10}  note",
        "name", "state", "pid", "restarts", "done"
    );
    for name in sup.names() {
        let st = sup.status(&name)?;
        let p: Progress = sup.report(&name)?.unwrap_or_default();
        let pid = st.pid.map_or("-".to_string(), |p| p.to_string());
        println!(
            "{name:<10} {:<9} {pid:>8} {:>9} {:>10}  {}",
            format!("{:?}", st.state),
            st.restarts,
            p.done,
            p.note
        );
    }
    Ok(())
}

fn main() -> skprocess::Result<()> {
    let run_for = std::env::args()
        .skip_while(|a| a != "--for")
        .nth(1)
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);

    let sup = Supervisor::new();
    sup.shutdown_on_signals()?;
    let events = sup.events();
    sup.add("ticker", Ticker { ticks: 0 })?;
    sup.add_with(
        "parser",
        Parser { parsed: 0 },
        Child::new()
            .restart(Restart::Permanent)
            .backoff(Backoff::exponential(
                Duration::from_millis(100),
                Duration::from_secs(5),
            ))
            .grace(Duration::from_secs(2))
            // A parser silent for 2 s is hung: killed and restarted.
            .config(Parser::config().heartbeat(Duration::from_secs(2))),
    )?;
    sup.add_group("shard", 2, |index| Shard { index, rows: 0 })?;
    println!(
        "supervising {:?}; Ctrl-C stops them all gracefully",
        sup.names()
    );

    let started = Instant::now();
    let mut crashes = 0;
    let mut next_table = Instant::now() + Duration::from_secs(1);
    loop {
        // Events as they come; the table once a second.
        match events.recv_deadline(next_table) {
            Ok(Event::Exited {
                name,
                error: Some(e),
            }) => {
                crashes += 1;
                println!("! {name}: {e}");
            }
            Ok(Event::Restarting { name, delay }) => println!("~ {name} restarts in {delay:?}"),
            Ok(_) => {}
            Err(_) => {
                table(&sup)?;
                next_table += Duration::from_secs(1);
            }
        }
        if run_for.is_some_and(|d| started.elapsed() >= d) {
            // As if Ctrl-C had been pressed.
            println!("-- sending SIGTERM to this process");
            std::process::Command::new("kill")
                .args(["-TERM", &std::process::id().to_string()])
                .status()?;
            break;
        }
        if sup
            .names()
            .iter()
            .all(|n| sup.status(n).map(|s| s.pid.is_none()).unwrap_or(true))
        {
            break;
        }
    }
    sup.wait()?;
    println!("all workers ended gracefully; {crashes} crashes were restarted on the way");
    table(&sup)?;
    Ok(())
}
