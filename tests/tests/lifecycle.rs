//! The lifecycle in the child: hook order, runs, stops, the final state,
//! timers, Config, nesting, many processes at once (API.md §1–§2).

mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::time::Duration;
use support::{assert_gone, finish};

// API.md §2, verbatim.
#[derive(Process, Serialize, Deserialize)]
#[process(
    runs = 5,
    lives = 3,
    timeout(run = "30s", prerun = "500ms"),
    join_in = "10m"
)]
struct Squarer {
    x: u64,
    total: u64,
    seen: Vec<String>,
}

impl Process for Squarer {
    fn prerun(&mut self, ctx: &mut Ctx) -> HookResult {
        self.seen.push(format!("prerun {}", ctx.run_index()));
        Ok(())
    }
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.total += self.x * self.x;
        Ok(())
    }
    fn postrun(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
    fn onfinish(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.seen.push("onfinish".into());
        Ok(())
    }
}

#[test]
fn api_example_squarer() -> skprocess::Result<()> {
    support::watchdog();
    let mut h: Handle<Squarer> = Squarer {
        x: 3,
        total: 0,
        seen: vec![],
    }
    .start()?;
    let done: Squarer = h.wait()?;
    assert_eq!(done.total, 45);
    assert_eq!(
        done.seen,
        ["prerun 0", "prerun 1", "prerun 2", "prerun 3", "prerun 4", "onfinish"]
    );
    let table = h.timers().to_string();
    assert!(
        table.contains("prerun") && table.contains("onfinish"),
        "{table}"
    );
    assert_eq!(h.timers().run.count(), 5);
    assert_eq!(h.timers().onfinish.count(), 1);
    assert!(h.timers().run.mean() <= h.timers().run.max());
    assert_gone(h.pid());
    Ok(())
}

#[test]
fn attribute_becomes_config() {
    let cfg = Squarer::config();
    assert_eq!(cfg.get_runs(), Some(5));
    assert_eq!(cfg.get_lives(), 3);
    assert_eq!(cfg.get_timeout(Hook::Run), Some(Duration::from_secs(30)));
    assert_eq!(
        cfg.get_timeout(Hook::Prerun),
        Some(Duration::from_millis(500))
    );
    assert_eq!(cfg.get_timeout(Hook::Postrun), None);
    assert_eq!(cfg.get_join_in(), Some(Duration::from_secs(600)));
    let d = Config::default();
    assert_eq!(
        (d.get_runs(), d.get_lives(), d.get_join_in()),
        (None, 1, None)
    );
    assert_eq!(Config::default().runs(3).runs_unlimited().get_runs(), None);
}

#[test]
fn start_with_overrides_the_attribute() -> skprocess::Result<()> {
    let cfg = Squarer::config()
        .runs(10)
        .lives(2)
        .timeout(Hook::Run, Duration::from_secs(1));
    let mut h = Squarer {
        x: 2,
        total: 0,
        seen: vec![],
    }
    .start_with(cfg)?;
    let done = finish(&mut h)?;
    assert_eq!(done.total, 40);
    assert_eq!(h.timers().run.count(), 10);
    Ok(())
}

/// Records every hook call, to check the order.
#[derive(Process, Serialize, Deserialize, Default)]
struct Recorder {
    calls: Vec<String>,
    stop_at: Option<u64>,
    child: bool,
    pid: u32,
}

impl Process for Recorder {
    fn prerun(&mut self, ctx: &mut Ctx) -> HookResult {
        self.calls.push(format!("prerun {}", ctx.run_index()));
        Ok(())
    }
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        self.calls.push(format!("run {}", ctx.run_index()));
        if self.stop_at == Some(ctx.run_index()) {
            ctx.stop();
        }
        Ok(())
    }
    fn postrun(&mut self, ctx: &mut Ctx) -> HookResult {
        self.calls.push(format!("postrun {}", ctx.run_index()));
        Ok(())
    }
    fn onfinish(&mut self, ctx: &mut Ctx) -> HookResult {
        self.calls.push(format!("onfinish {}", ctx.run_index()));
        self.child = skprocess::is_child();
        self.pid = ctx.pid();
        Ok(())
    }
}

#[test]
fn hooks_run_in_order_and_onfinish_once() -> skprocess::Result<()> {
    let mut h = Recorder::default().start_with(Config::default().runs(2))?;
    let done = finish(&mut h)?;
    assert_eq!(
        done.calls,
        [
            "prerun 0",
            "run 0",
            "postrun 0",
            "prerun 1",
            "run 1",
            "postrun 1",
            "onfinish 2"
        ]
    );
    assert!(done.child, "is_child() is true in the child");
    assert!(!skprocess::is_child(), "and false in the parent");
    assert_eq!(done.pid, h.pid());
    assert_ne!(done.pid, std::process::id());
    Ok(())
}

#[test]
fn zero_runs_still_runs_onfinish() -> skprocess::Result<()> {
    let mut h = Recorder::default().start_with(Config::default().runs(0))?;
    assert_eq!(finish(&mut h)?.calls, ["onfinish 0"]);
    Ok(())
}

#[test]
fn ctx_stop_finishes_the_iteration_then_onfinish() -> skprocess::Result<()> {
    // Unlimited runs: only ctx.stop() ends the loop.
    let mut h = Recorder {
        stop_at: Some(2),
        ..Default::default()
    }
    .start()?;
    let done = finish(&mut h)?;
    assert_eq!(done.calls.len(), 3 * 3 + 1);
    assert_eq!(done.calls[8], "postrun 2");
    assert_eq!(done.calls[9], "onfinish 3");
    Ok(())
}

/// Loops until the parent says stop; tells the parent once it is running.
#[derive(Process, Serialize, Deserialize, Default)]
struct Looper {
    iterations: u64,
    postruns: u64,
    finished: bool,
    saw_stop: bool,
}

impl Process for Looper {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if self.iterations == 0 {
            ctx.tell(&"running")?;
        }
        self.iterations += 1;
        std::thread::sleep(Duration::from_millis(1));
        Ok(())
    }
    fn postrun(&mut self, ctx: &mut Ctx) -> HookResult {
        self.postruns += 1;
        self.saw_stop |= ctx.should_stop();
        Ok(())
    }
    fn onfinish(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.finished = true;
        Ok(())
    }
}

#[test]
fn handle_stop_is_graceful() -> skprocess::Result<()> {
    let mut h = Looper::default().start()?;
    assert_eq!(
        h.listen::<String>(support::DEADLINE)?.as_deref(),
        Some("running")
    );
    assert!(h.is_alive());
    h.stop();
    let done = finish(&mut h)?;
    assert!(done.iterations >= 1);
    assert_eq!(
        done.iterations, done.postruns,
        "the current iteration finished"
    );
    assert!(done.finished, "onfinish ran");
    assert!(done.saw_stop, "should_stop() saw the request");
    assert!(!h.is_alive());
    assert_gone(h.pid());
    Ok(())
}

#[test]
fn timers_are_live_while_running() -> skprocess::Result<()> {
    let mut h = Looper::default().start()?;
    h.listen::<String>(support::DEADLINE)?;
    let deadline = std::time::Instant::now() + support::DEADLINE;
    while h.timers().run.count() < 5 {
        assert!(std::time::Instant::now() < deadline, "timers never moved");
        std::thread::yield_now();
    }
    h.stop();
    let done = finish(&mut h)?;
    assert_eq!(h.timers().run.count(), done.iterations);
    assert!(h.timers().run.min() >= Duration::from_millis(1));
    Ok(())
}

#[test]
fn sixteen_processes_at_once() -> skprocess::Result<()> {
    let mut handles: Vec<_> = (0..16)
        .map(|x| {
            Squarer {
                x,
                total: 0,
                seen: vec![],
            }
            .start()
        })
        .collect::<skprocess::Result<_>>()?;
    let pids: std::collections::HashSet<u32> = handles.iter().map(|h| h.pid()).collect();
    assert_eq!(pids.len(), 16);
    for (x, h) in handles.iter_mut().enumerate() {
        assert_eq!(finish(h)?.total, 5 * (x as u64) * (x as u64));
    }
    for p in pids {
        assert_gone(p);
    }
    Ok(())
}

/// Starts a child of its own and returns what it computed.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Nested {
    depth: u32,
    result: u64,
    pids: Vec<u32>,
}

impl Process for Nested {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        self.pids.push(ctx.pid());
        if self.depth > 0 {
            let mut h = Nested {
                depth: self.depth - 1,
                result: 0,
                pids: vec![],
            }
            .start()?;
            let inner = h.wait()?;
            self.result = inner.result + 1;
            self.pids.extend(inner.pids);
        } else {
            self.result = 100;
        }
        Ok(())
    }
}

#[test]
fn children_start_children() -> skprocess::Result<()> {
    let mut h = Nested {
        depth: 3,
        result: 0,
        pids: vec![],
    }
    .start()?;
    let done = finish(&mut h)?;
    assert_eq!(done.result, 103);
    assert_eq!(done.pids.len(), 4);
    for p in done.pids {
        assert_gone(p);
    }
    Ok(())
}

#[test]
fn types_declared_in_functions_work() -> skprocess::Result<()> {
    #[derive(Process, Serialize, Deserialize)]
    #[process(runs = 2)]
    struct Local(u32);
    impl Process for Local {
        fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
            self.0 += 10;
            Ok(())
        }
    }
    assert_eq!(finish(&mut Local(1).start()?)?.0, 21);
    Ok(())
}

#[test]
fn same_name_in_another_function_is_another_type() -> skprocess::Result<()> {
    #[derive(Process, Serialize, Deserialize)]
    #[process(runs = 2)]
    struct Local(u32);
    impl Process for Local {
        fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
            self.0 *= 3;
            Ok(())
        }
    }
    assert_eq!(finish(&mut Local(1).start()?)?.0, 9);
    Ok(())
}
