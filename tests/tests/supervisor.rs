//! The supervisor: restart policies, strategies, intensity, graceful stop
//! then kill, groups, names, events, reports, and a supervising program
//! that receives SIGTERM.

mod support;

use crossbeam_channel::Receiver;
use rustix::process::Signal;
use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use skprocess::supervise::{Backoff, Child, Event, Restart, State, Strategy, Supervisor};
use std::time::{Duration, Instant};
use support::{assert_gone_within, send_signal, watchdog};

/// Runs until stopped (or for `runs` iterations), then fails if `fail`;
/// counts its `onfinish` in a share; reports its iterations.
#[derive(Process, Serialize, Deserialize, Clone)]
struct Svc {
    runs: Option<u64>,
    fail: bool,
    finished: Share<u64>,
    stubborn: bool,
}

impl Svc {
    fn forever(finished: &Share<u64>) -> Svc {
        Svc {
            runs: None,
            fail: false,
            finished: finished.clone(),
            stubborn: false,
        }
    }
}

impl Process for Svc {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        ctx.report(&ctx.run_index())?;
        if self.stubborn {
            // Never looks at a stop: only the grace's kill ends it.
            std::thread::sleep(Duration::from_secs(3600));
        }
        if self.runs.is_some_and(|n| ctx.run_index() + 1 >= n) {
            if self.fail {
                return Err("failed on purpose".into());
            }
            ctx.stop();
        }
        std::thread::sleep(Duration::from_millis(1));
        Ok(())
    }
    fn onfinish(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.finished.update(|n| *n += 1)?;
        Ok(())
    }
}

fn quick() -> Child {
    Child::new().backoff(Backoff::none())
}

/// A supervisor with `strategy` whose intensity leaves room for every
/// restart a test makes, and its events.
fn roomy(strategy: Strategy) -> (Supervisor, Receiver<Event>) {
    let sup = Supervisor::builder()
        .strategy(strategy)
        .intensity(100, Duration::from_secs(60))
        .build();
    let events = sup.events();
    (sup, events)
}

/// The next event about `name` that `keep` accepts, within the deadline.
fn next_event(events: &Receiver<Event>, keep: impl Fn(&Event) -> bool) -> Event {
    let end = Instant::now() + support::DEADLINE;
    loop {
        let e = events
            .recv_deadline(end)
            .expect("the awaited event did not come");
        if keep(&e) {
            return e;
        }
    }
}

fn started(events: &Receiver<Event>, name: &str) -> u32 {
    match next_event(
        events,
        |e| matches!(e, Event::Started { name: n, .. } if n == name),
    ) {
        Event::Started { pid, .. } => pid,
        _ => unreachable!(),
    }
}

fn exited(events: &Receiver<Event>, name: &str) -> Option<String> {
    match next_event(
        events,
        |e| matches!(e, Event::Exited { name: n, .. } if n == name),
    ) {
        Event::Exited { error, .. } => error,
        _ => unreachable!(),
    }
}

#[test]
fn a_permanent_child_restarts_after_a_failure_and_after_a_clean_end() {
    watchdog();
    let done = Share::new(0u64).unwrap();
    let (sup, events) = roomy(Strategy::default());
    let svc = Svc {
        runs: Some(3),
        fail: true,
        ..Svc::forever(&done)
    };
    sup.add_with("a", svc, quick()).unwrap();
    let first = started(&events, "a");
    assert!(exited(&events, "a").unwrap().contains("failed on purpose"));
    let second = started(&events, "a");
    assert_ne!(first, second);
    assert!(sup.status("a").unwrap().restarts >= 1);
    assert!(sup
        .status("a")
        .unwrap()
        .last_error
        .unwrap()
        .contains("failed on purpose"));

    let ok = Svc {
        runs: Some(2),
        ..Svc::forever(&done)
    };
    sup.add_with("b", ok, quick()).unwrap();
    started(&events, "b");
    assert_eq!(exited(&events, "b"), None, "ended well");
    started(&events, "b");
    sup.stop_all().unwrap();
    sup.wait().unwrap();
    assert_eq!(sup.status("a").unwrap().state, State::Stopped);
    assert_gone_within(second, support::DEADLINE);
}

#[test]
fn a_transient_child_restarts_only_after_a_failure_and_a_temporary_one_never() {
    watchdog();
    let done = Share::new(0u64).unwrap();
    let (sup, events) = roomy(Strategy::default());
    let ok = Svc {
        runs: Some(2),
        ..Svc::forever(&done)
    };
    sup.add_with("ok", ok, quick().restart(Restart::Transient))
        .unwrap();
    started(&events, "ok");
    assert_eq!(exited(&events, "ok"), None);
    let bad = Svc {
        runs: Some(2),
        fail: true,
        ..Svc::forever(&done)
    };
    sup.add_with("bad", bad.clone(), quick().restart(Restart::Transient))
        .unwrap();
    started(&events, "bad");
    assert!(exited(&events, "bad").is_some());
    started(&events, "bad");
    sup.add_with("temp", bad, quick().restart(Restart::Temporary))
        .unwrap();
    started(&events, "temp");
    assert!(exited(&events, "temp").is_some());
    sup.stop("bad").unwrap();
    sup.wait().unwrap();
    assert_eq!(sup.status("ok").unwrap().state, State::Exited);
    assert_eq!(sup.status("temp").unwrap().state, State::Failed);
    assert_eq!(sup.status("temp").unwrap().restarts, 0);
    assert_eq!(sup.status("ok").unwrap().restarts, 0);
    assert_eq!(sup.status("bad").unwrap().state, State::Stopped);
}

/// Fails in its first start only, as soon as `armed` is set. Its
/// `ballast` makes it slow to start: its parent sends it all first.
#[derive(Process, Serialize, Deserialize)]
struct FailsOnce {
    starts: Share<u64>,
    armed: Share<bool>,
    ballast: Vec<u8>,
}

impl Process for FailsOnce {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if ctx.run_index() == 0 {
            self.starts.update(|n| *n += 1)?;
        }
        if self.starts.get()? == 1 && self.armed.get()? {
            self.starts.update(|n| *n += 1)?;
            return Err("the first start fails".into());
        }
        std::thread::sleep(Duration::from_millis(1));
        Ok(())
    }
}

/// Restarts of `first`, `middle` and `last` once `middle` failed once.
fn strategy_restarts(strategy: Strategy, expect: [u32; 3]) {
    watchdog();
    let done = Share::new(0u64).unwrap();
    let starts = Share::new(0u64).unwrap();
    let armed = Share::new(false).unwrap();
    let (sup, events) = roomy(strategy);
    sup.add_with("first", Svc::forever(&done), quick()).unwrap();
    sup.add_with(
        "middle",
        FailsOnce {
            starts,
            armed: armed.clone(),
            ballast: Vec::new(),
        },
        quick(),
    )
    .unwrap();
    sup.add_with("last", Svc::forever(&done), quick()).unwrap();
    // Every child is there before the failure.
    armed.set(true).unwrap();
    assert!(exited(&events, "middle").is_some());
    // Every child that is to restart has restarted.
    let names = ["first", "middle", "last"];
    let end = Instant::now() + support::DEADLINE;
    loop {
        let restarts: Vec<u32> = names
            .iter()
            .map(|n| sup.status(n).unwrap().restarts)
            .collect();
        let running = names
            .iter()
            .all(|n| sup.status(n).unwrap().state == State::Running);
        if running && restarts == expect {
            break;
        }
        assert!(Instant::now() < end, "{strategy:?}: restarts {restarts:?}");
        std::thread::yield_now();
    }
    sup.stop_all().unwrap();
    let after: Vec<u32> = names
        .iter()
        .map(|n| sup.status(n).unwrap().restarts)
        .collect();
    assert_eq!(after, expect, "{strategy:?}: nothing more restarted");
}

#[test]
fn one_for_one_restarts_only_the_failed_child() {
    strategy_restarts(Strategy::OneForOne, [0, 1, 0]);
}

#[test]
fn one_for_all_restarts_every_child() {
    strategy_restarts(Strategy::OneForAll, [1, 1, 1]);
}

#[test]
fn rest_for_one_restarts_the_failed_child_and_those_after_it() {
    strategy_restarts(Strategy::RestForOne, [0, 1, 1]);
}

#[test]
fn one_for_all_restarts_a_sibling_that_is_still_starting() {
    watchdog();
    let armed = Share::new(true).unwrap();
    let (sup, events) = roomy(Strategy::OneForAll);
    // Member 0 fails at once, while member 1 is still starting: the
    // group's members start one after the other, and member 1's start
    // takes as long as its child needs to read its ballast.
    let starts: Vec<Share<u64>> = (0..2).map(|i| Share::new(i).unwrap()).collect();
    sup.add_group_with(
        "g",
        2,
        |i| FailsOnce {
            starts: starts[i].clone(),
            armed: armed.clone(),
            ballast: vec![1; i * (32 << 20)],
        },
        quick(),
    )
    .unwrap();
    let names = ["g/0", "g/1"];
    let end = Instant::now() + support::DEADLINE;
    loop {
        let restarts: Vec<u32> = names
            .iter()
            .map(|n| sup.status(n).unwrap().restarts)
            .collect();
        let running = names
            .iter()
            .all(|n| sup.status(n).unwrap().state == State::Running);
        if running && restarts == [1, 1] {
            break;
        }
        assert!(Instant::now() < end, "restarts {restarts:?}");
        std::thread::yield_now();
    }
    sup.stop_all().unwrap();
    let after: Vec<u32> = names
        .iter()
        .map(|n| sup.status(n).unwrap().restarts)
        .collect();
    assert_eq!(after, [1, 1]);
    let member_1_starts = events
        .try_iter()
        .filter(|e| matches!(e, Event::Started { name, .. } if name == "g/1"))
        .count();
    assert_eq!(member_1_starts, 2, "member 1 started again");
}

#[test]
fn past_its_intensity_the_supervisor_gives_up_and_stops_everything() {
    watchdog();
    let done = Share::new(0u64).unwrap();
    let sup = Supervisor::builder()
        .intensity(3, Duration::from_secs(3600))
        .build();
    let events = sup.events();
    sup.add_with("steady", Svc::forever(&done), quick())
        .unwrap();
    let steady = started(&events, "steady");
    let crashy = Svc {
        runs: Some(1),
        fail: true,
        ..Svc::forever(&done)
    };
    sup.add_with("crashy", crashy, quick()).unwrap();
    let e = sup.wait().expect_err("gave up");
    assert!(matches!(e, Error::GaveUp(_)), "{e}");
    assert!(e.to_string().contains("crashy"), "{e}");
    assert!(e.to_string().contains("failed on purpose"), "{e}");
    next_event(
        &events,
        |e| matches!(e, Event::GaveUp { name } if name == "crashy"),
    );
    assert_eq!(sup.status("crashy").unwrap().restarts, 3);
    assert_eq!(sup.status("steady").unwrap().state, State::Stopped);
    assert_gone_within(steady, support::DEADLINE);
    assert!(sup.add("more", Svc::forever(&done)).is_err());
    assert!(sup.restart("steady").is_err());
}

#[test]
fn a_stop_is_graceful_first_then_a_kill_after_the_grace() {
    watchdog();
    let done = Share::new(0u64).unwrap();
    let sup = Supervisor::new();
    let events = sup.events();
    sup.add("polite", Svc::forever(&done)).unwrap();
    let polite = started(&events, "polite");
    let stubborn = Svc {
        stubborn: true,
        ..Svc::forever(&done)
    };
    sup.add_with(
        "stubborn",
        stubborn,
        Child::new().grace(Duration::from_millis(200)),
    )
    .unwrap();
    let stubborn_pid = started(&events, "stubborn");
    // Make sure it is inside its endless hook.
    while sup.report::<u64>("stubborn").unwrap().is_none() {
        std::thread::yield_now();
    }
    sup.stop("polite").unwrap();
    assert_eq!(done.get().unwrap(), 1, "onfinish ran: a graceful stop");
    assert_eq!(sup.status("polite").unwrap().state, State::Stopped);
    assert_eq!(sup.status("polite").unwrap().pid, None);
    support::assert_gone(polite);
    sup.stop("stubborn").unwrap();
    assert_eq!(
        done.get().unwrap(),
        1,
        "the stubborn one never got to onfinish"
    );
    assert!(exited(&events, "stubborn")
        .unwrap()
        .contains("killed through its handle"));
    assert_eq!(sup.status("stubborn").unwrap().state, State::Stopped);
    support::assert_gone(stubborn_pid);
    sup.wait().unwrap();
}

#[test]
fn a_child_killed_from_outside_is_restarted() {
    watchdog();
    let done = Share::new(0u64).unwrap();
    let sup = Supervisor::new();
    let events = sup.events();
    sup.add_with("victim", Svc::forever(&done), quick())
        .unwrap();
    let pid = started(&events, "victim");
    send_signal(pid, Signal::KILL);
    let error = exited(&events, "victim").expect("a crash");
    assert!(error.contains("SIGKILL"), "{error}");
    let again = started(&events, "victim");
    assert_ne!(again, pid);
    let st = sup.status("victim").unwrap();
    assert_eq!(st.restarts, 1);
    assert_eq!(st.pid, Some(again));
    drop(sup);
    support::assert_gone(again);
}

#[test]
fn a_child_stopped_by_sigterm_is_stopped_and_not_restarted() {
    watchdog();
    let done = Share::new(0u64).unwrap();
    let sup = Supervisor::new();
    let events = sup.events();
    sup.add_with("calm", Svc::forever(&done), quick()).unwrap();
    let pid = started(&events, "calm");
    // Its first hook runs: its signal handling is in place.
    let end = Instant::now() + support::DEADLINE;
    while sup.report::<u64>("calm").unwrap().is_none() {
        assert!(Instant::now() < end, "no report");
        std::thread::yield_now();
    }
    assert_eq!(sup.status("calm").unwrap().pid, Some(pid));
    send_signal(pid, Signal::TERM);
    assert_eq!(exited(&events, "calm"), None, "a graceful stop");
    let st = sup.status("calm").unwrap();
    assert_eq!(st.state, State::Stopped);
    assert_eq!(st.restarts, 0);
    assert_eq!(st.pid, None);
    assert_eq!(done.get().unwrap(), 1, "onfinish ran");
    sup.wait().unwrap();
    assert!(
        !events
            .try_iter()
            .any(|e| matches!(e, Event::Started { .. } | Event::Restarting { .. })),
        "a signal's stop is never followed by a restart"
    );
    assert_eq!(sup.status("calm").unwrap().restarts, 0);
    assert_gone_within(pid, support::DEADLINE);
    // Stopped, not gone: it can be started again on request.
    sup.restart("calm").unwrap();
    started(&events, "calm");
    sup.stop_all().unwrap();
}

#[test]
fn a_silent_child_with_a_heartbeat_is_hung() {
    watchdog();
    let done = Share::new(0u64).unwrap();
    let sup = Supervisor::new();
    let events = sup.events();
    // Reports (a sign of life) once, then sleeps without a heartbeat.
    let silent = Svc {
        stubborn: true,
        ..Svc::forever(&done)
    };
    let config = Svc::config().heartbeat(Duration::from_millis(200));
    let child = quick().restart(Restart::Temporary).config(config);
    sup.add_with("quiet", silent, child).unwrap();
    let pid = started(&events, "quiet");
    next_event(
        &events,
        |e| matches!(e, Event::Hung { name } if name == "quiet"),
    );
    let error = exited(&events, "quiet").expect("hung is a failure");
    assert!(error.contains("heartbeat"), "{error}");
    sup.wait().unwrap();
    let st = sup.status("quiet").unwrap();
    assert_eq!(st.state, State::Failed);
    assert!(st.last_error.unwrap().contains("heartbeat"));
    assert_gone_within(pid, support::DEADLINE);
}

#[test]
fn unknown_names_are_errors() {
    watchdog();
    let done = Share::new(0u64).unwrap();
    let sup = Supervisor::new();
    sup.add("known", Svc::forever(&done)).unwrap();
    assert!(sup.restart("unknown").is_err());
    assert!(sup.stop("unknown").is_err());
    assert!(sup.status("unknown").is_err());
    assert!(sup.report::<u64>("unknown").is_err());
    assert!(sup.stop_group("unknown").is_err());
    assert_eq!(sup.status("known").unwrap().restarts, 0);
    sup.stop_all().unwrap();
    sup.wait().unwrap();
}

#[test]
fn supervised_log_files_are_named_after_each_member() {
    watchdog();
    let dir = std::env::temp_dir().join(format!("skprocess-sup-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sup = Supervisor::new();
    let events = sup.events();
    let child = quick().config(Greeter::config().log_dir(&dir));
    sup.add_group_with("shard", 2, |i| Greeter { member: i }, child)
        .unwrap();
    let pids = [started(&events, "shard/0"), started(&events, "shard/1")];
    let end = Instant::now() + support::DEADLINE;
    for name in ["shard/0", "shard/1"] {
        while sup.report::<u64>(name).unwrap().is_none() {
            assert!(Instant::now() < end, "no report from {name}");
            std::thread::yield_now();
        }
    }
    sup.stop_all().unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let expected: Vec<String> = (0..2)
        .map(|i| format!("shard-{i}-{}.log", pids[i]))
        .collect();
    assert_eq!(files, expected);
    for (i, file) in expected.iter().enumerate() {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(text.contains(&format!("member {i} says hello")), "{text}");
        let other = format!("member {} says hello", 1 - i);
        assert!(!text.contains(&other), "{text}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Logs a greeting once, reports, then runs until stopped.
#[derive(Process, Serialize, Deserialize)]
struct Greeter {
    member: usize,
}

impl Process for Greeter {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if ctx.run_index() == 0 {
            tracing::info!("member {} says hello", self.member);
            ctx.report(&1u64)?;
        }
        std::thread::sleep(Duration::from_millis(1));
        Ok(())
    }
}

#[test]
fn groups_names_and_reports() {
    watchdog();
    let done = Share::new(0u64).unwrap();
    let sup = Supervisor::new();
    let events = sup.events();
    sup.add("solo", Svc::forever(&done)).unwrap();
    sup.add_group("shard", 3, |_| Svc::forever(&done)).unwrap();
    assert_eq!(sup.names(), ["solo", "shard/0", "shard/1", "shard/2"]);
    for name in sup.names() {
        started(&events, &name);
    }
    assert!(sup.add("solo", Svc::forever(&done)).is_err(), "taken");
    assert!(sup.add_group("shard", 1, |_| Svc::forever(&done)).is_err());
    assert!(sup.add("", Svc::forever(&done)).is_err());
    assert!(sup.status("nobody").is_err());
    assert!(sup.stop("nobody").is_err());
    assert!(sup.stop_group("nobody").is_err());
    assert!(sup.report::<u64>("nobody").is_err());
    while sup.report::<u64>("shard/1").unwrap().unwrap_or(0) < 2 {
        std::thread::yield_now();
    }
    sup.stop_group("shard").unwrap();
    for i in 0..3 {
        assert_eq!(
            sup.status(&format!("shard/{i}")).unwrap().state,
            State::Stopped
        );
    }
    assert_eq!(sup.status("solo").unwrap().state, State::Running);
    assert!(
        sup.report::<u64>("shard/1").unwrap().unwrap() >= 2,
        "kept after the end"
    );
    assert_eq!(done.get().unwrap(), 3);
    sup.restart("shard/0").unwrap();
    started(&events, "shard/0");
    sup.stop_all().unwrap();
    assert_eq!(done.get().unwrap(), 5, "every stop was graceful");
    sup.wait().unwrap();
}

#[test]
fn each_restart_comes_after_the_end_of_the_life_it_replaces() {
    // A restart without backoff is decided and started on the thread that
    // saw the child end: still Exited, Restarting, Started, in that order,
    // and the replacement starts only once the child it replaces is reaped.
    watchdog();
    let done = Share::new(0u64).unwrap();
    let (sup, events) = roomy(Strategy::default());
    let crashy = Svc {
        runs: Some(1),
        fail: true,
        ..Svc::forever(&done)
    };
    sup.add_with("r", crashy, quick()).unwrap();
    let about_r = |e: &Event| e.name() == "r";
    let mut pid = started(&events, "r");
    for _ in 0..5 {
        let ended = next_event(&events, about_r);
        assert!(
            matches!(ended, Event::Exited { error: Some(_), .. }),
            "{ended:?}"
        );
        let restarting = next_event(&events, about_r);
        assert!(
            matches!(restarting, Event::Restarting { delay, .. } if delay.is_zero()),
            "{restarting:?}"
        );
        let next = match next_event(&events, about_r) {
            Event::Started { pid, .. } => pid,
            other => panic!("expected the replacement's start, got {other:?}"),
        };
        assert_ne!(next, pid);
        assert_eq!(
            support::proc_state(pid),
            None,
            "process {pid} is not reaped when its replacement starts"
        );
        pid = next;
    }
    sup.stop_all().unwrap();
    assert_gone_within(pid, support::DEADLINE);
}

#[test]
fn backoff_delays_double_between_restarts() {
    watchdog();
    let done = Share::new(0u64).unwrap();
    let (sup, events) = roomy(Strategy::default());
    let crashy = Svc {
        runs: Some(1),
        fail: true,
        ..Svc::forever(&done)
    };
    let backoff = Backoff::exponential(Duration::from_millis(10), Duration::from_millis(40));
    sup.add_with("c", crashy, Child::new().backoff(backoff))
        .unwrap();
    let mut delays = Vec::new();
    while delays.len() < 4 {
        if let Event::Restarting { delay, .. } =
            next_event(&events, |e| matches!(e, Event::Restarting { .. }))
        {
            delays.push(delay.as_millis());
        }
    }
    assert_eq!(delays, [10, 20, 40, 40]);
    sup.stop_all().unwrap();
}

#[test]
fn backoff_goes_back_to_its_first_delay_after_a_healthy_run() {
    watchdog();
    let done = Share::new(0u64).unwrap();
    let (sup, events) = roomy(Strategy::default());
    let crashy = Svc {
        runs: Some(1),
        fail: true,
        ..Svc::forever(&done)
    };
    // Every run counts as healthy: the delay never grows.
    let backoff = Backoff::exponential(Duration::from_millis(10), Duration::from_millis(40))
        .reset_after(Duration::ZERO);
    sup.add_with("c", crashy, Child::new().backoff(backoff))
        .unwrap();
    let mut delays = Vec::new();
    while delays.len() < 3 {
        if let Event::Restarting { delay, .. } =
            next_event(&events, |e| matches!(e, Event::Restarting { .. }))
        {
            delays.push(delay.as_millis());
        }
    }
    assert_eq!(delays, [10, 10, 10]);
    sup.stop_all().unwrap();
}

#[test]
fn dropping_a_supervisor_stops_every_child_gracefully() {
    watchdog();
    let done = Share::new(0u64).unwrap();
    let sup = Supervisor::new();
    let events = sup.events();
    sup.add_group("w", 3, |_| Svc::forever(&done)).unwrap();
    let pids: Vec<u32> = (0..3)
        .map(|i| started(&events, &format!("w/{i}")))
        .collect();
    drop(sup);
    assert_eq!(done.get().unwrap(), 3);
    for p in pids {
        support::assert_gone(p);
    }
}

// ---------------------------------------------------------------------------
// A supervising program of its own, run from this test binary.

const PROGRAM: &str = "SKPROCESS_TEST_SUPERVISOR_PROGRAM";

/// Writes a file in `dir` when its `onfinish` runs.
#[derive(Process, Serialize, Deserialize)]
struct Marker {
    dir: std::path::PathBuf,
    name: String,
}

impl Process for Marker {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        std::thread::sleep(Duration::from_millis(2));
        Ok(())
    }
    fn onfinish(&mut self, _ctx: &mut Ctx) -> HookResult {
        std::fs::write(self.dir.join(&self.name), b"finished")?;
        Ok(())
    }
}

/// The program: supervises three markers until SIGTERM.
#[test]
#[ignore = "run as a program of its own by the test below"]
fn supervising_program() {
    let Some(dir) = std::env::var_os(PROGRAM) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let sup = Supervisor::new();
    let events = sup.events();
    sup.shutdown_on_signals().unwrap();
    for name in ["a", "b", "c"] {
        sup.add(
            name,
            Marker {
                dir: dir.clone(),
                name: name.into(),
            },
        )
        .unwrap();
    }
    let mut pids = Vec::new();
    for name in ["a", "b", "c"] {
        pids.push(started(&events, name).to_string());
    }
    std::fs::write(dir.join("pids"), pids.join(" ")).unwrap();
    std::fs::write(dir.join("ready"), b"").unwrap();
    sup.wait().unwrap();
    std::fs::write(dir.join("clean"), b"").unwrap();
}

#[test]
fn a_supervising_program_that_receives_sigterm_stops_every_child_gracefully() {
    watchdog();
    let dir = std::env::temp_dir().join(format!("skprocess-sup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut program = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "supervising_program", "--ignored", "--nocapture"])
        .env(PROGRAM, &dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + support::DEADLINE;
    while !dir.join("ready").exists() {
        assert!(Instant::now() < end, "the program never got ready");
        if let Some(status) = program.try_wait().unwrap() {
            panic!("the program ended early: {status}");
        }
        std::thread::yield_now();
    }
    send_signal(program.id(), Signal::TERM);
    let status = loop {
        if let Some(s) = program.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "the program did not end");
        std::thread::yield_now();
    };
    assert!(status.success(), "{status}");
    assert!(
        dir.join("clean").exists(),
        "wait returned Ok after the signal"
    );
    for name in ["a", "b", "c"] {
        assert!(dir.join(name).exists(), "{name}'s onfinish ran");
    }
    let pids = std::fs::read_to_string(dir.join("pids")).unwrap();
    for p in pids.split_whitespace() {
        assert_gone_within(p.parse().unwrap(), support::DEADLINE);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
