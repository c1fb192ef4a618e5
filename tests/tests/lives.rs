//! Lives: every way of losing one, restarting from the initial state, and
//! the error once all are used.

mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use skprocess::Cause;
use support::{assert_gone, finish};

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Debug)]
enum Fail {
    Err,
    Panic,
    Abort,
    Exit,
    Segv,
}

/// Fails in `hook` at `at_run` on every attempt below `until_attempt`.
#[derive(Process, Serialize, Deserialize, Clone)]
#[process(runs = 4)]
struct Flaky {
    how: Fail,
    hook: Hook,
    at_run: u64,
    until_attempt: u32,
    runs_done: u64,
    attempts_seen: Vec<u32>,
}

impl Flaky {
    fn new(how: Fail, hook: Hook, until_attempt: u32) -> Self {
        Flaky {
            how,
            hook,
            at_run: 2,
            until_attempt,
            runs_done: 0,
            attempts_seen: vec![],
        }
    }

    fn maybe_fail(&self, hook: Hook, ctx: &Ctx) -> HookResult {
        let at = if hook == Hook::Onfinish {
            true
        } else {
            ctx.run_index() == self.at_run
        };
        if hook != self.hook || !at || ctx.attempt() >= self.until_attempt {
            return Ok(());
        }
        match self.how {
            Fail::Err => Err(format!("disk full on attempt {}", ctx.attempt()).into()),
            Fail::Panic => panic!("boom on attempt {}", ctx.attempt()),
            Fail::Abort => std::process::abort(),
            Fail::Exit => std::process::exit(3),
            Fail::Segv => {
                // Raise the signal the way a crash would.
                let _ = std::process::Command::new("kill")
                    .args(["-SEGV", &ctx.pid().to_string()])
                    .status();
                std::thread::sleep(std::time::Duration::from_secs(30));
                Ok(())
            }
        }
    }
}

impl Process for Flaky {
    fn prerun(&mut self, ctx: &mut Ctx) -> HookResult {
        if ctx.run_index() == 0 {
            self.attempts_seen.push(ctx.attempt());
        }
        self.maybe_fail(Hook::Prerun, ctx)
    }
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        self.runs_done += 1;
        self.maybe_fail(Hook::Run, ctx)
    }
    fn postrun(&mut self, ctx: &mut Ctx) -> HookResult {
        self.maybe_fail(Hook::Postrun, ctx)
    }
    fn onfinish(&mut self, ctx: &mut Ctx) -> HookResult {
        self.maybe_fail(Hook::Onfinish, ctx)
    }
}

fn name() -> String {
    format!("{}::Flaky", module_path!())
}

#[test]
fn a_failing_first_attempt_is_retried_from_the_initial_state() -> skprocess::Result<()> {
    for how in [Fail::Err, Fail::Panic, Fail::Abort, Fail::Exit] {
        let cfg = Flaky::config().lives(2);
        let mut h = Flaky::new(how, Hook::Run, 2).start_with(cfg)?;
        let done = finish(&mut h).unwrap_or_else(|e| panic!("{how:?}: {e}"));
        // The second attempt started from the initial value: attempt 1's
        // progress (runs_done = 3, attempts_seen = [1]) is not in it.
        assert_eq!(done.attempts_seen, [2], "{how:?}");
        assert_eq!(done.runs_done, 4, "{how:?}");
        assert_gone(h.pid());
    }
    Ok(())
}

#[test]
fn every_hook_can_cost_a_life() -> skprocess::Result<()> {
    for hook in Hook::ALL {
        let mut h = Flaky::new(Fail::Err, hook, 3).start_with(Flaky::config().lives(3))?;
        let done = finish(&mut h)?;
        assert_eq!(done.attempts_seen, [3], "{hook}");
    }
    Ok(())
}

#[test]
fn returned_error_names_process_hook_run_and_attempt() {
    let mut h = Flaky::new(Fail::Err, Hook::Run, 9)
        .start_with(Flaky::config().lives(3))
        .unwrap();
    let e = finish(&mut h).err().expect("every life fails");
    assert_eq!(
        e.to_string(),
        format!(
            "process {} failed in run (run #2, attempt 3 of 3): disk full on attempt 3",
            name()
        )
    );
    assert_eq!(e.hook(), Some(Hook::Run));
    assert_eq!(e.attempt(), Some(3));
    assert_eq!(e.run_index(), Some(2));
    assert!(!e.is_timeout() && !e.is_crash() && !e.is_panic());
}

#[test]
fn panic_text_and_location_are_kept() {
    let mut h = Flaky::new(Fail::Panic, Hook::Postrun, 9).start().unwrap();
    let e = finish(&mut h).err().expect("panics");
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "process {} panicked in postrun (run #2, attempt 1 of 1): panicked at",
            name()
        )),
        "{text}"
    );
    assert!(
        text.contains("lives.rs") && text.ends_with("boom on attempt 1"),
        "{text}"
    );
    assert!(e.is_panic() && !e.is_crash());
    assert_eq!(e.hook(), Some(Hook::Postrun));
}

#[test]
fn crashes_report_signal_or_exit_code() {
    let cases = [
        (Fail::Abort, "killed by signal 6 (SIGABRT)"),
        (Fail::Exit, "exited with code 3"),
        (Fail::Segv, "killed by signal 11 (SIGSEGV)"),
    ];
    for (how, expect) in cases {
        let mut h = Flaky::new(how, Hook::Prerun, 9).start().unwrap();
        let e = finish(&mut h).err().expect("crashes");
        let text = e.to_string();
        assert!(e.is_crash(), "{how:?}: {text}");
        assert!(text.contains(expect), "{how:?}: {text}");
        assert!(
            text.contains("crashed in prerun (run #2, attempt 1 of 1)"),
            "{how:?}: {text}"
        );
        assert_eq!(e.hook(), Some(Hook::Prerun));
        assert_gone(h.pid());
    }
}

#[test]
fn onfinish_failure_says_after_how_many_runs() {
    let mut h = Flaky::new(Fail::Err, Hook::Onfinish, 9).start().unwrap();
    let e = finish(&mut h).err().expect("fails");
    assert!(
        e.to_string()
            .contains("failed in onfinish (after 4 runs, attempt 1 of 1)"),
        "{e}"
    );
}

#[test]
fn killed_from_outside_costs_a_life() -> skprocess::Result<()> {
    /// Waits for the parent's word on the first attempt; the parent kills
    /// it from outside instead.
    #[derive(Process, Serialize, Deserialize)]
    #[process(runs = 1, lives = 2)]
    struct Victim {
        attempt: u32,
    }
    impl Process for Victim {
        fn run(&mut self, ctx: &mut Ctx) -> HookResult {
            self.attempt = ctx.attempt();
            if ctx.attempt() == 1 {
                ctx.tell(&ctx.pid())?;
                ctx.listen::<()>(std::time::Duration::from_secs(60))?;
            }
            Ok(())
        }
    }
    let mut h = Victim { attempt: 0 }.start()?;
    let pid: u32 = h.listen(support::DEADLINE)?.expect("pid");
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    assert!(status.success());
    assert_eq!(finish(&mut h)?.attempt, 2);
    assert_gone(pid);
    Ok(())
}

#[test]
fn error_source_chain_is_kept() {
    #[derive(Process, Serialize, Deserialize)]
    #[process(runs = 1)]
    struct Io;
    impl Process for Io {
        fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
            std::fs::read("/definitely/not/here")?;
            Ok(())
        }
    }
    let e = finish(&mut Io.start().unwrap()).err().unwrap();
    assert!(e.to_string().contains("No such file or directory"), "{e}");
    match e.failure().map(|f| &f.cause) {
        Some(Cause::Returned(m)) => assert!(m.contains("No such file")),
        other => panic!("{other:?}"),
    }
}
