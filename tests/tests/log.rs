//! Logging (API.md §7): `tracing` events emitted in children arrive in the
//! parent's subscriber, whatever it is, with `process` and `pid` added, in
//! each child's order, none lost; levels, messages and fields kept; under
//! the span current at `start()`. Also: captured stdout/stderr and
//! per-process log files.

mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use support::{finish, DEADLINE};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

// ---------------------------------------------------------------------------
// A capturing subscriber for the parent.

/// A field value as the subscriber received it, type included.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    I(i64),
    U(u64),
    F(f64),
    B(bool),
    S(String),
    /// Recorded through `Debug`: the text.
    D(String),
}

/// One event as the parent's subscriber saw it.
#[derive(Debug, Clone)]
struct Seen {
    level: Level,
    target: String,
    fields: Vec<(String, Got)>,
    /// The name of the span the event is in, if any.
    span: Option<String>,
    /// The names of the spans it is in, outermost first.
    scope: Vec<String>,
    /// Where it was emitted, as its metadata says.
    module_path: Option<String>,
    file: Option<String>,
    line: Option<u32>,
}

impl Seen {
    fn get(&self, name: &str) -> Option<&Got> {
        self.fields.iter().find(|f| f.0 == name).map(|f| &f.1)
    }
    fn message(&self) -> String {
        match self.get("message") {
            Some(Got::D(s) | Got::S(s)) => s.clone(),
            other => panic!("no message in {self:?}: {other:?}"),
        }
    }
    fn pid(&self) -> u32 {
        match self.get("pid") {
            Some(Got::U(p)) => *p as u32,
            other => panic!("no pid in {self:?}: {other:?}"),
        }
    }
    fn int(&self, name: &str) -> i64 {
        match self.get(name) {
            Some(Got::I(v)) => *v,
            Some(Got::U(v)) => *v as i64,
            other => panic!("no integer {name} in {self:?}: {other:?}"),
        }
    }
}

struct Fields<'a>(&'a mut Vec<(String, Got)>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.0.push((f.name().into(), Got::D(format!("{v:?}"))));
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.push((f.name().into(), Got::S(v.into())));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.0.push((f.name().into(), Got::I(v)));
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.0.push((f.name().into(), Got::U(v)));
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.0.push((f.name().into(), Got::F(v)));
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.0.push((f.name().into(), Got::B(v)));
    }
}

#[derive(Clone, Default)]
struct Captured(Arc<(Mutex<Vec<Seen>>, Condvar)>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Captured {
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Vec::new();
        event.record(&mut Fields(&mut fields));
        let seen = Seen {
            level: *event.metadata().level(),
            target: event.metadata().target().into(),
            fields,
            span: ctx.event_span(event).map(|s| s.name().to_string()),
            scope: ctx
                .event_scope(event)
                .map(|s| s.from_root().map(|s| s.name().to_string()).collect())
                .unwrap_or_default(),
            module_path: event.metadata().module_path().map(String::from),
            file: event.metadata().file().map(String::from),
            line: event.metadata().line(),
        };
        self.0 .0.lock().unwrap().push(seen);
        self.0 .1.notify_all();
    }
}

impl Captured {
    /// Installs a capturing subscriber as this thread's default (until the
    /// guard drops).
    fn install() -> (Captured, tracing::subscriber::DefaultGuard) {
        let c = Captured::default();
        let guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(c.clone()));
        (c, guard)
    }

    fn all(&self) -> Vec<Seen> {
        self.0 .0.lock().unwrap().clone()
    }

    /// Events from the child `pid`, skprocess's own output lines excluded.
    fn of(&self, pid: u32) -> Vec<Seen> {
        self.all()
            .into_iter()
            .filter(|s| s.get("pid").is_some() && s.pid() == pid)
            .collect()
    }

    /// Waits (bounded) until `pred` holds for the events seen so far.
    fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Seen]) -> bool) -> bool {
        let end = Instant::now() + timeout;
        let mut g = self.0 .0.lock().unwrap();
        loop {
            if pred(&g) {
                return true;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            g = self.0 .1.wait_timeout(g, end - now).unwrap().0;
        }
    }
}

fn no_leftovers(pids: &[u32]) {
    for &p in pids {
        support::assert_gone(p);
    }
    support::assert_no_shm_files();
}

// ---------------------------------------------------------------------------
// Many children, many events, long lines.

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Chatty {
    id: u64,
    n: u64,
    width: usize,
}

impl Process for Chatty {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let pad: String = (0..self.width)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        for i in 0..self.n {
            tracing::info!(
                child = self.id,
                seq = i,
                "event {i} of child {} {pad}",
                self.id
            );
        }
        Ok(())
    }
}

#[test]
fn concurrent_children_arrive_complete_and_in_order() -> skprocess::Result<()> {
    support::watchdog();
    let (cap, _g) = Captured::install();
    let (n, width) = (400u64, 700usize);
    let mut handles = Vec::new();
    for id in 0..4 {
        handles.push(Chatty { id, n, width }.start()?);
    }
    let mut pids = Vec::new();
    for (id, h) in handles.iter_mut().enumerate() {
        finish(h)?;
        let pid = h.pid();
        pids.push(pid);
        let events = cap.of(pid);
        assert_eq!(
            events.len() as u64,
            n,
            "child {id} (pid {pid}) sent {} of {n} events",
            events.len()
        );
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.int("seq"), i as i64, "child {id}: out of order at {i}");
            assert_eq!(e.int("child"), id as i64);
            assert_eq!(e.level, Level::INFO);
            assert_eq!(e.target, "log");
            assert_eq!(e.get("process"), Some(&Got::S(h.name().to_string())));
            let m = e.message();
            assert!(
                m.starts_with(&format!("event {i} of child {id} abc")),
                "{m:.60}"
            );
            assert_eq!(
                m.len(),
                format!("event {i} of child {id} ").len() + width,
                "a line was cut or merged"
            );
        }
    }
    assert_eq!(handles[0].name(), "log::Chatty");
    drop(handles);
    no_leftovers(&pids);
    Ok(())
}

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Threads {
    threads: u64,
    n: u64,
}

impl Process for Threads {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        std::thread::scope(|s| {
            for t in 0..self.threads {
                let n = self.n;
                s.spawn(move || {
                    for i in 0..n {
                        tracing::info!(thread = t, seq = i, "from a thread");
                    }
                });
            }
        });
        Ok(())
    }
}

#[test]
fn events_from_threads_of_one_child_keep_each_thread_s_order() -> skprocess::Result<()> {
    support::watchdog();
    let (cap, _g) = Captured::install();
    let mut h = Threads { threads: 4, n: 500 }.start()?;
    finish(&mut h)?;
    let events = cap.of(h.pid());
    assert_eq!(events.len(), 2000);
    let mut next = [0i64; 4];
    for e in &events {
        let t = e.int("thread") as usize;
        assert_eq!(e.int("seq"), next[t], "thread {t} out of order");
        next[t] += 1;
    }
    assert_eq!(next, [500; 4]);
    no_leftovers(&[h.pid()]);
    Ok(())
}

// ---------------------------------------------------------------------------
// Levels, fields, spans.

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Fielded;

impl Process for Fielded {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let err = std::io::Error::other("disk full");
        tracing::warn!(
            count = -3i64,
            big = u64::MAX,
            ratio = 0.25,
            ok = true,
            name = "bob",
            list = ?vec![1, 2],
            shown = %"as display",
            "careful {}",
            "now"
        );
        tracing::error!(
            code = 7u64,
            error = &err as &dyn std::error::Error,
            "it failed"
        );
        tracing::info!("plain info");
        tracing::debug!(x = 1u64, "a debug event");
        tracing::trace!("a trace event");
        Ok(())
    }
}

#[test]
fn levels_and_fields_keep_their_names_types_and_values() -> skprocess::Result<()> {
    support::watchdog();
    let (cap, _g) = Captured::install();
    let mut h = Fielded.start()?;
    finish(&mut h)?;
    let ev = cap.of(h.pid());
    let levels: Vec<Level> = ev.iter().map(|e| e.level).collect();
    assert_eq!(
        levels,
        [
            Level::WARN,
            Level::ERROR,
            Level::INFO,
            Level::DEBUG,
            Level::TRACE
        ]
    );
    let w = &ev[0];
    assert_eq!(w.message(), "careful now");
    assert_eq!(w.get("count"), Some(&Got::I(-3)));
    assert_eq!(w.get("big"), Some(&Got::U(u64::MAX)));
    assert_eq!(w.get("ratio"), Some(&Got::F(0.25)));
    assert_eq!(w.get("ok"), Some(&Got::B(true)));
    assert_eq!(w.get("name"), Some(&Got::S("bob".into())));
    assert_eq!(w.get("list"), Some(&Got::D("[1, 2]".into())));
    assert_eq!(w.get("shown"), Some(&Got::D("as display".into())));
    assert_eq!(w.get("pid"), Some(&Got::U(h.pid() as u64)));
    assert_eq!(w.get("process"), Some(&Got::S("log::Fielded".into())));
    // The child's fields first, in their order, then the added ones.
    let names: Vec<&str> = w.fields.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        names,
        ["message", "count", "big", "ratio", "ok", "name", "list", "shown", "process", "pid"]
    );
    let e = &ev[1];
    assert_eq!(e.message(), "it failed");
    assert_eq!(e.get("code"), Some(&Got::U(7)));
    assert_eq!(e.get("error"), Some(&Got::D("disk full".into())));
    assert_eq!(ev[3].get("x"), Some(&Got::U(1)));
    assert_eq!(ev[4].message(), "a trace event");
    no_leftovers(&[h.pid()]);
    Ok(())
}

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct InSpans;

impl Process for InSpans {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let outer = tracing::info_span!("child_outer");
        let _o = outer.enter();
        tracing::info_span!("child_inner", k = 1).in_scope(|| tracing::info!("inside"));
        drop(_o);
        tracing::info!("outside");
        Ok(())
    }
}

#[test]
fn events_sit_under_the_span_current_at_start() -> skprocess::Result<()> {
    support::watchdog();
    let (cap, _g) = Captured::install();
    let parent = tracing::info_span!("parent_op", job = 7);
    let mut h = {
        let _e = parent.enter();
        InSpans.start()?
    };
    // The span is no longer entered here: the events still go under it.
    finish(&mut h)?;
    let ev = cap.of(h.pid());
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(ev[1].span.as_deref(), Some("parent_op"), "{ev:?}");
    assert_eq!(ev[0].message(), "inside");
    assert_eq!(ev[0].scope, ["parent_op", "child_outer", "child_inner"]);
    assert_eq!(ev[1].message(), "outside");
    assert_eq!(ev[1].scope, ["parent_op"]);

    // Started outside any span: the events are at the root.
    let mut h2 = InSpans.start()?;
    finish(&mut h2)?;
    let ev = cap.of(h2.pid());
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0].scope, ["child_outer", "child_inner"]);
    assert!(ev[1].span.is_none(), "{ev:?}");
    no_leftovers(&[h.pid(), h2.pid()]);
    Ok(())
}

// ---------------------------------------------------------------------------
// When events arrive.

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Teller;

impl Process for Teller {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        for i in 0..50u64 {
            tracing::info!(i, "before the tell");
        }
        ctx.tell(&50u64)?;
        ctx.listen::<u64>(Duration::from_secs(60))?
            .ok_or("the parent never answered")?;
        Ok(())
    }
}

#[test]
fn events_logged_before_a_tell_arrive_before_it() -> skprocess::Result<()> {
    support::watchdog();
    let (cap, _g) = Captured::install();
    let mut h = Teller.start()?;
    assert_eq!(h.listen::<u64>(DEADLINE)?, Some(50));
    // No waiting: they were delivered before the message was.
    assert_eq!(cap.of(h.pid()).len(), 50);
    h.tell(&0u64)?;
    finish(&mut h)?;
    no_leftovers(&[h.pid()]);
    Ok(())
}

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Slow;

impl Process for Slow {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        tracing::info!("early");
        // Block without sending anything until the parent says so.
        ctx.listen::<u64>(Duration::from_secs(60))?
            .ok_or("the parent never answered")?;
        Ok(())
    }
}

#[test]
fn a_long_hook_s_events_arrive_while_it_runs() -> skprocess::Result<()> {
    support::watchdog();
    let (cap, _g) = Captured::install();
    let mut h = Slow.start()?;
    let pid = h.pid();
    let arrived = cap.wait_for(DEADLINE, |ev| {
        ev.iter().any(|e| e.get("pid") == Some(&Got::U(pid as u64)))
    });
    assert!(arrived, "the event was held back while the hook ran");
    assert!(h.is_alive());
    h.tell(&1u64)?;
    finish(&mut h)?;
    no_leftovers(&[pid]);
    Ok(())
}

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Probe;

impl Process for Probe {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let stdout = std::fs::read_link("/proc/self/fd/1")
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        ctx.tell(&(tracing::dispatcher::has_been_set(), stdout))?;
        Ok(())
    }
}

fn probe(config: Config) -> skprocess::Result<(bool, String)> {
    let mut h = Probe.start_with(config)?;
    let r = h
        .listen::<(bool, String)>(DEADLINE)?
        .expect("the probe answers");
    finish(&mut h)?;
    no_leftovers(&[h.pid()]);
    Ok(r)
}

#[test]
fn a_parent_without_subscriber_costs_the_child_nothing() -> skprocess::Result<()> {
    support::watchdog();
    let (installed, _) = probe(Probe::config())?;
    assert!(
        !installed,
        "no subscriber in the parent, yet one was installed in the child"
    );
    let (_cap, _g) = Captured::install();
    let (installed, _) = probe(Probe::config())?;
    assert!(installed);
    Ok(())
}

// ---------------------------------------------------------------------------
// Standard output and error.

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Printer {
    lines: u64,
    crash: bool,
}

impl Process for Printer {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        use std::io::Write;
        for i in 0..self.lines {
            println!("out {i}");
            eprintln!("err {i}");
        }
        if self.crash {
            std::process::abort();
        }
        print!("no newline at the end");
        std::io::stdout().flush()?;
        Ok(())
    }
}

fn lines(ev: &[Seen], stream: &str) -> Vec<String> {
    ev.iter()
        .filter(|e| e.get("stream") == Some(&Got::S(stream.into())))
        .map(Seen::message)
        .collect()
}

#[test]
fn stdout_and_stderr_lines_become_events() -> skprocess::Result<()> {
    support::watchdog();
    let (cap, _g) = Captured::install();
    let mut h = Printer {
        lines: 300,
        crash: false,
    }
    .start_with(Printer::config().capture_output(true))?;
    finish(&mut h)?;
    let ev = cap.of(h.pid());
    let mut want: Vec<String> = (0..300).map(|i| format!("out {i}")).collect();
    want.push("no newline at the end".into());
    assert_eq!(lines(&ev, "stdout"), want);
    assert_eq!(
        lines(&ev, "stderr"),
        (0..300).map(|i| format!("err {i}")).collect::<Vec<_>>()
    );
    for e in &ev {
        assert_eq!(e.target, "skprocess::output");
        let level = if e.get("stream") == Some(&Got::S("stdout".into())) {
            Level::INFO
        } else {
            Level::WARN
        };
        assert_eq!(e.level, level);
        assert_eq!(e.get("process"), Some(&Got::S("log::Printer".into())));
    }
    no_leftovers(&[h.pid()]);
    Ok(())
}

#[test]
fn a_crashing_child_still_gets_its_last_lines_out() -> skprocess::Result<()> {
    support::watchdog();
    let (cap, _g) = Captured::install();
    let mut h = Printer {
        lines: 20,
        crash: true,
    }
    .start_with(Printer::config().capture_output(true))?;
    let err = finish(&mut h).err().expect("the child aborts");
    assert!(err.is_crash(), "{err}");
    let ev = cap.of(h.pid());
    assert_eq!(
        lines(&ev, "stdout"),
        (0..20).map(|i| format!("out {i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        lines(&ev, "stderr"),
        (0..20).map(|i| format!("err {i}")).collect::<Vec<_>>()
    );
    no_leftovers(&[h.pid()]);
    Ok(())
}

#[test]
fn output_is_inherited_unless_captured() -> skprocess::Result<()> {
    support::watchdog();
    let mine = std::fs::read_link("/proc/self/fd/1")
        .unwrap()
        .display()
        .to_string();
    let (_, theirs) = probe(Probe::config())?;
    assert_eq!(theirs, mine);
    let (_, captured) = probe(Probe::config().capture_output(true))?;
    assert!(captured.starts_with("pipe:"), "{captured}");
    assert_ne!(captured, mine);
    Ok(())
}

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct LongLines {
    id: u64,
    n: u64,
    width: usize,
}

impl Process for LongLines {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let pad = "x".repeat(self.width);
        for i in 0..self.n {
            println!("child {} line {i} {pad}", self.id);
        }
        Ok(())
    }
}

const HELPER: &str = "SKPROCESS_LOG_TEST_HELPER";

/// Run by the next test in a fresh copy of this binary: children with
/// captured output and no subscriber anywhere.
#[test]
#[ignore = "a helper: run by captured_lines_go_to_the_parent_s_streams_without_a_subscriber"]
fn helper_children_print_without_subscriber() -> skprocess::Result<()> {
    if std::env::var_os(HELPER).is_none() {
        return Ok(());
    }
    let config = LongLines::config().capture_output(true);
    let mut hs: Vec<_> = (0..3)
        .map(|id| {
            LongLines {
                id,
                n: 50,
                width: 20_000,
            }
            .start_with(config.clone())
        })
        .collect::<Result<_, _>>()?;
    for h in &mut hs {
        finish(h)?;
    }
    Ok(())
}

#[test]
fn captured_lines_go_to_the_parent_s_streams_without_a_subscriber() {
    support::watchdog();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_children_print_without_subscriber",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER, "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let pad = "x".repeat(20_000);
    for id in 0..3 {
        for i in 0..50 {
            // Whole, up to its newline (the harness's own text may precede
            // the first one on its line).
            let want = format!("child {id} line {i} {pad}\n");
            assert!(
                text.contains(&want),
                "line {i} of child {id} is missing or was mixed with another"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Per-process log files.

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1, lives = 2)]
struct Flaky;

impl Process for Flaky {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        println!("printed in attempt {}", ctx.attempt());
        if ctx.attempt() == 1 {
            tracing::warn!(attempt = 1u64, "first try");
            return Err("try again".into());
        }
        tracing::debug!(attempt = 2u64, "second try");
        Ok(())
    }
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        TempDir(
            std::env::temp_dir().join(format!("skprocess-{tag}-{}-{nanos}", std::process::id())),
        )
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn each_child_writes_its_own_log_file() -> skprocess::Result<()> {
    support::watchdog();
    let (_cap, _g) = Captured::install();
    let dir = TempDir::new("logs");
    let mut h = Flaky.start_with(
        Flaky::config()
            .capture_output(true)
            .log_dir(dir.0.join("nested")),
    )?;
    finish(&mut h)?;
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir.0.join("nested"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort_by_key(|f| !f.1.contains("first try"));
    assert_eq!(files.len(), 2, "one file per life: {files:?}");
    let (first, second) = (&files[0], &files[1]);
    assert!(
        first.0.starts_with("log.Flaky-") && first.0.ends_with(".log"),
        "{}",
        first.0
    );
    assert_eq!(second.0, format!("log.Flaky-{}.log", h.pid()));
    assert!(
        first.1.contains(" WARN log: first try attempt=1\n"),
        "{}",
        first.1
    );
    assert!(
        first
            .1
            .contains("skprocess::output: printed in attempt 1 stream=\"stdout\"\n"),
        "{}",
        first.1
    );
    assert!(!first.1.contains("second try"));
    assert!(
        second.1.contains("DEBUG log: second try attempt=2\n"),
        "{}",
        second.1
    );
    assert!(second.1.contains("printed in attempt 2"), "{}", second.1);
    // Each line starts with the time the child logged it.
    let year = &second.1[..4];
    assert!(year.parse::<u32>().is_ok_and(|y| y >= 2024), "{}", second.1);
    no_leftovers(&[h.pid()]);
    Ok(())
}

#[test]
fn an_unusable_log_dir_is_an_error_at_start() {
    support::watchdog();
    let dir = TempDir::new("notadir");
    std::fs::write(&dir.0, b"a file, not a directory").unwrap();
    let err = Flaky
        .start_with(Flaky::config().log_dir(&dir.0))
        .expect_err("start fails");
    let text = err.to_string();
    assert!(text.contains("log file"), "{text}");
    let _ = std::fs::remove_file(&dir.0);
    support::assert_no_shm_files();
}

// ---------------------------------------------------------------------------
// Logging does not get in the way of timeouts.

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1, timeout(run = "300ms"))]
struct Babbler;

impl Process for Babbler {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let mut i = 0u64;
        loop {
            tracing::info!(i, "still going");
            i += 1;
        }
    }
}

#[test]
fn a_hook_that_logs_without_pause_still_times_out() -> skprocess::Result<()> {
    support::watchdog();
    let (cap, _g) = Captured::install();
    let mut h = Babbler.start()?;
    let err = finish(&mut h).err().expect("the hook times out");
    assert!(err.is_timeout(), "{err}");
    // What arrived is in order, with no gap.
    let ev = cap.of(h.pid());
    assert!(!ev.is_empty());
    for (i, e) in ev.iter().enumerate() {
        assert_eq!(e.int("i"), i as i64);
    }
    no_leftovers(&[h.pid()]);
    Ok(())
}

#[test]
fn the_log_file_gets_every_level_even_without_a_subscriber() -> skprocess::Result<()> {
    support::watchdog();
    let dir = TempDir::new("nosub");
    let mut h = Fielded.start_with(Fielded::config().log_dir(&dir.0))?;
    finish(&mut h)?;
    let text = std::fs::read_to_string(dir.0.join(format!("log.Fielded-{}.log", h.pid()))).unwrap();
    let levels: Vec<&str> = text
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(
        levels,
        ["WARN", "ERROR", "INFO", "DEBUG", "TRACE"],
        "{text}"
    );
    assert!(text.contains(
        "WARN log: careful now count=-3 big=18446744073709551615 ratio=0.25 ok=true name=\"bob\" list=[1, 2] shown=as display\n"
    ), "{text}");
    no_leftovers(&[h.pid()]);
    Ok(())
}

// ---------------------------------------------------------------------------
// Pool workers forward their items' events as single processes do.

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 2)]
struct PoolChatty {
    id: u64,
    n: u64,
}

impl Process for PoolChatty {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let half = self.n / 2;
        let from = ctx.run_index() * half;
        for i in from..from + half {
            tracing::info!(
                item = self.id,
                seq = i,
                "pool event {i} of item {}",
                self.id
            );
        }
        Ok(())
    }
}

/// The worker index in a label `...[worker k]`.
fn worker_of(label: &str) -> usize {
    let rest = label
        .rsplit_once("[worker ")
        .unwrap_or_else(|| panic!("no worker index in {label:?}"))
        .1;
    rest.strip_suffix(']')
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("bad worker index in {label:?}"))
}

fn label_of(e: &Seen) -> String {
    match e.get("process") {
        Some(Got::S(s)) => s.clone(),
        other => panic!("no process in {e:?}: {other:?}"),
    }
}

/// `map_fn` functions log too.
fn logged_double(x: u64) -> u64 {
    tracing::info!(x, "doubling");
    x * 2
}

#[test]
fn pool_items_events_arrive_complete_in_order_and_labelled() -> skprocess::Result<()> {
    support::watchdog();
    let (cap, _g) = Captured::install();
    let span = tracing::info_span!("pool_origin");
    let pool = span.in_scope(|| Pool::new(3))?;
    let pids = pool.pids();
    assert_eq!(pids.len(), 3);
    let (items, n) = (12u64, 400u64);
    let done = pool.map((0..items).map(|id| PoolChatty { id, n }))?;
    assert_eq!(done.len(), items as usize);
    // No waiting: each item's events were delivered before its result.
    let all = cap.all();
    let mut workers_used = BTreeSet::new();
    for id in 0..items {
        let events: Vec<&Seen> = all
            .iter()
            .filter(|e| e.get("item") == Some(&Got::U(id)))
            .collect();
        assert_eq!(
            events.len() as u64,
            n,
            "item {id}: {} of {n} events",
            events.len()
        );
        let pid = events[0].pid();
        let label = label_of(events[0]);
        let k = worker_of(&label);
        assert_eq!(label, format!("log::PoolChatty[worker {k}]"));
        assert_eq!(pids.get(k), Some(&pid), "item {id}: pid of another worker");
        workers_used.insert(k);
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.int("seq"), i as i64, "item {id}: out of order at {i}");
            assert_eq!(e.pid(), pid, "item {id} moved between workers");
            assert_eq!(label_of(e), label);
            assert_eq!(e.span.as_deref(), Some("pool_origin"));
            assert_eq!(e.target, "log");
            assert_eq!(e.message(), format!("pool event {i} of item {id}"));
        }
    }
    assert!(!workers_used.is_empty());

    // The same workers, another job: the label follows the job.
    let doubled = pool.map_fn(logged_double, 0..2000u64)?;
    assert_eq!(doubled[1999], 3998);
    let all = cap.all();
    let calls: Vec<&Seen> = all.iter().filter(|e| e.get("x").is_some()).collect();
    assert_eq!(calls.len(), 2000, "map_fn events lost");
    let mut seen = vec![false; 2000];
    let mut last = std::collections::HashMap::new();
    for e in &calls {
        let x = e.int("x") as usize;
        assert!(!seen[x], "x = {x} logged twice");
        seen[x] = true;
        let label = label_of(e);
        let k = worker_of(&label);
        assert_eq!(label, format!("map_fn(log::logged_double)[worker {k}]"));
        assert_eq!(pids.get(k), Some(&e.pid()));
        // Each worker takes batches in input order.
        if let Some(prev) = last.insert(k, x) {
            assert!(prev < x, "worker {k}: {x} after {prev}");
        }
    }
    assert_eq!(pool.pids(), pids, "no worker was replaced");
    drop(pool);
    no_leftovers(&pids);
    Ok(())
}

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1, lives = 2)]
struct CrashOnce;

impl Process for CrashOnce {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        tracing::info!(attempt = ctx.attempt(), "running");
        if ctx.attempt() == 1 {
            std::process::abort();
        }
        Ok(())
    }
}

#[test]
fn a_replaced_worker_s_events_carry_its_own_pid() -> skprocess::Result<()> {
    support::watchdog();
    let (cap, _g) = Captured::install();
    let pool = Pool::new(1)?;
    let first = pool.pids();
    pool.map([CrashOnce])?;
    let now = pool.pids();
    assert_eq!(now.len(), 1);
    assert_ne!(now, first, "the worker was not replaced");
    let second: Vec<Seen> = cap
        .all()
        .into_iter()
        .filter(|e| e.get("attempt") == Some(&Got::I(2)) || e.get("attempt") == Some(&Got::U(2)))
        .collect();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(second[0].pid(), now[0]);
    assert_eq!(label_of(&second[0]), "log::CrashOnce[worker 0]");
    drop(pool);
    no_leftovers(&[first[0], now[0]]);
    Ok(())
}

/// Whether the worker installed a subscriber (the funnel).
fn worker_has_subscriber(_: u8) -> bool {
    tracing::dispatcher::has_been_set()
}

#[test]
fn a_pool_made_without_subscriber_costs_its_workers_nothing() -> skprocess::Result<()> {
    support::watchdog();
    let pool = Pool::new(1)?;
    let pids = pool.pids();
    assert_eq!(pool.map_fn(worker_has_subscriber, [0u8])?, [false]);
    drop(pool);
    let (_cap, _g) = Captured::install();
    let pool = Pool::new(1)?;
    assert_eq!(pool.map_fn(worker_has_subscriber, [0u8])?, [true]);
    let more = pool.pids();
    drop(pool);
    no_leftovers(&[pids[0], more[0]]);
    Ok(())
}

// ---------------------------------------------------------------------------
// Pool workers' log files.

const PER_ITEM: u64 = 20;

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct PoolPrinter {
    id: u64,
}

impl Process for PoolPrinter {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        for k in 0..PER_ITEM {
            tracing::info!(item = self.id, k, "numbered event");
            println!("printed {} {k}", self.id);
        }
        Ok(())
    }
}

/// The files in `dir`: name and text, sorted by name.
fn files_in(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// `(item, k)` of every line of `text` that `parse` reads.
fn numbered(text: &str, parse: impl Fn(&str) -> Option<(u64, u64)>) -> Vec<(u64, u64)> {
    text.lines().filter_map(parse).collect()
}

fn event_numbers(line: &str) -> Option<(u64, u64)> {
    let rest = line.split_once(" INFO log: numbered event item=")?.1;
    let (item, k) = rest.split_once(" k=")?;
    Some((item.parse().ok()?, k.parse().ok()?))
}

fn printed_numbers(line: &str) -> Option<(u64, u64)> {
    let rest = line.split_once(" INFO skprocess::output: printed ")?.1;
    let rest = rest.strip_suffix(" stream=\"stdout\"")?;
    let (item, k) = rest.split_once(' ')?;
    Some((item.parse().ok()?, k.parse().ok()?))
}

#[test]
fn each_pool_worker_writes_its_own_log_file_in_its_order() -> skprocess::Result<()> {
    support::watchdog();
    let (cap, _g) = Captured::install();
    let dir = TempDir::new("pool-logs");
    let pool = Pool::builder()
        .workers(2)
        .log_dir(dir.0.join("workers"))
        .capture_output(true)
        .build()?;
    let pids = pool.pids();
    assert_eq!(pids.len(), 2);
    let items = 6u64;
    let done = pool.map((0..items).map(|id| PoolPrinter { id }))?;
    assert_eq!(done.len(), items as usize);
    assert_eq!(pool.pids(), pids, "no worker was replaced");
    // Ending the workers writes what their files still held.
    drop(pool);

    let files = files_in(&dir.0.join("workers"));
    let mut expected: Vec<String> = pids
        .iter()
        .enumerate()
        .map(|(k, pid)| format!("pool-worker-{k}-{pid}.log"))
        .collect();
    expected.sort();
    let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(names, expected, "one file per worker, named after its pid");

    let mut all_events = Vec::new();
    for (name, text) in &files {
        // Each line starts with the time the worker emitted it (the time
        // the parent read it, for a captured line); it never goes back.
        let stamps: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
        assert!(
            stamps.windows(2).all(|w| w[0] <= w[1]),
            "{name}: time goes back\n{text}"
        );
        let events = numbered(text, event_numbers);
        let printed = numbered(text, printed_numbers);
        // Every line of the file is one or the other.
        assert_eq!(
            events.len() + printed.len(),
            text.lines().count(),
            "{name}\n{text}"
        );
        // The worker ran its items one after the other, each emitting its
        // events and lines in turn: both in that order, item after item.
        let mut sorted = events.clone();
        sorted.sort_by_key(|&(item, k)| (events.iter().position(|e| e.0 == item), k));
        assert_eq!(events, sorted, "{name}: events out of order\n{text}");
        assert_eq!(printed, events, "{name}: lines out of order\n{text}");
        all_events.extend(events);
    }
    all_events.sort();
    let every: Vec<(u64, u64)> = (0..items)
        .flat_map(|i| (0..PER_ITEM).map(move |k| (i, k)))
        .collect();
    assert_eq!(all_events, every, "every event, once");

    // The captured lines reach the subscriber too, labelled like the
    // item's events.
    let lines: Vec<Seen> = cap
        .all()
        .into_iter()
        .filter(|e| e.get("stream").is_some())
        .collect();
    assert_eq!(lines.len() as u64, items * PER_ITEM);
    for e in &lines {
        let label = label_of(e);
        let k = worker_of(&label);
        assert_eq!(label, format!("log::PoolPrinter[worker {k}]"));
        assert_eq!(pids.get(k), Some(&e.pid()));
    }
    no_leftovers(&pids);
    Ok(())
}

#[test]
fn a_replaced_pool_worker_writes_a_new_log_file() -> skprocess::Result<()> {
    support::watchdog();
    let dir = TempDir::new("pool-replaced");
    let pool = Pool::builder().workers(1).log_dir(&dir.0).build()?;
    let first = pool.pids();
    pool.map([CrashOnce])?;
    let now = pool.pids();
    assert_ne!(now, first, "the worker was not replaced");
    drop(pool);
    let files = files_in(&dir.0);
    let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
    let mut expected = [
        format!("pool-worker-0-{}.log", first[0]),
        format!("pool-worker-0-{}.log", now[0]),
    ];
    expected.sort();
    assert_eq!(names, expected);
    let second = &files
        .iter()
        .find(|f| f.0 == format!("pool-worker-0-{}.log", now[0]))
        .unwrap()
        .1;
    assert!(
        second.contains(" INFO log: running attempt=2\n"),
        "{second}"
    );
    assert!(!second.contains("attempt=1"), "{second}");
    no_leftovers(&[first[0], now[0]]);
    Ok(())
}

#[test]
fn an_unusable_pool_log_dir_is_an_error_at_build() {
    support::watchdog();
    let dir = TempDir::new("pool-notadir");
    std::fs::write(&dir.0, b"a file, not a directory").unwrap();
    let err = Pool::builder()
        .workers(2)
        .log_dir(&dir.0)
        .build()
        .expect_err("build fails");
    let text = err.to_string();
    assert!(text.contains("log file"), "{text}");
    let _ = std::fs::remove_file(&dir.0);
    support::assert_no_shm_files();
}

// ---------------------------------------------------------------------------
// Records of the `log` crate.

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct LogUser;

impl Process for LogUser {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        log::error!(target: "app::db", "connection lost {}", 1);
        log::warn!(target: "app::db", "retrying");
        log::info!("an info record");
        log::debug!(target: "app::cache", "a debug record");
        log::trace!("a trace record");
        let span = tracing::info_span!("in_a_span");
        span.in_scope(|| log::info!("inside a span"));
        // A hook may try to set its own logger: `log` refuses, nothing breaks.
        struct Mine;
        impl log::Log for Mine {
            fn enabled(&self, _: &log::Metadata<'_>) -> bool {
                true
            }
            fn log(&self, _: &log::Record<'_>) {}
            fn flush(&self) {}
        }
        static MINE: Mine = Mine;
        let refused = log::set_logger(&MINE).is_err();
        log::info!("after set_logger");
        log::info!("refused: {refused}");
        Ok(())
    }
}

#[test]
fn log_records_arrive_like_tracing_events() -> skprocess::Result<()> {
    support::watchdog();
    let (cap, _g) = Captured::install();
    let mut h = tracing::info_span!("origin").in_scope(|| LogUser.start())?;
    finish(&mut h)?;
    let ev = cap.of(h.pid());
    let got: Vec<(Level, &str, String)> = ev
        .iter()
        .map(|e| (e.level, e.target.as_str(), e.message()))
        .collect();
    assert_eq!(
        got,
        [
            (Level::ERROR, "app::db", "connection lost 1".to_string()),
            (Level::WARN, "app::db", "retrying".into()),
            (Level::INFO, "log", "an info record".into()),
            (Level::DEBUG, "app::cache", "a debug record".into()),
            (Level::TRACE, "log", "a trace record".into()),
            (Level::INFO, "log", "inside a span".into()),
            (Level::INFO, "log", "after set_logger".into()),
            (Level::INFO, "log", "refused: true".into()),
        ]
    );
    for e in &ev {
        assert_eq!(e.get("process"), Some(&Got::S("log::LogUser".into())));
        assert_eq!(e.pid(), h.pid());
        // Only the message: the bridge's own `log.*` fields are not shown.
        assert!(e.fields.iter().all(|f| !f.0.starts_with("log.")), "{e:?}");
    }
    assert_eq!(ev[0].scope, ["origin"]);
    assert_eq!(ev[5].scope, ["origin", "in_a_span"]);
    no_leftovers(&[h.pid()]);
    Ok(())
}

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct LogWhere;

impl Process for LogWhere {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        log::info!("logged at {} line {}", module_path!(), line!());
        log::warn!(target: "app::elsewhere", "logged at {} line {}", module_path!(), line!());
        Ok(())
    }
}

#[test]
fn log_records_keep_their_module_path_and_line() -> skprocess::Result<()> {
    support::watchdog();
    let (cap, _g) = Captured::install();
    let mut h = LogWhere.start()?;
    finish(&mut h)?;
    let ev = cap.of(h.pid());
    assert_eq!(ev.len(), 2, "{ev:?}");
    let mut lines = Vec::new();
    for e in &ev {
        // The child said where it was; the metadata says the same.
        let message = e.message();
        let (module, line) = message
            .strip_prefix("logged at ")
            .and_then(|m| m.split_once(" line "))
            .unwrap_or_else(|| panic!("{message}"));
        assert_eq!(e.module_path.as_deref(), Some(module), "{e:?}");
        assert_eq!(e.module_path.as_deref(), Some(module_path!()), "{e:?}");
        assert_eq!(e.line, Some(line.parse().unwrap()), "{e:?}");
        assert!(
            e.file.as_deref().is_some_and(|f| f.ends_with("log.rs")),
            "{e:?}"
        );
        lines.push(e.line.unwrap());
    }
    assert_eq!(lines[1], lines[0] + 1);
    assert_eq!(ev[1].target, "app::elsewhere");
    no_leftovers(&[h.pid()]);
    Ok(())
}

// ---------------------------------------------------------------------------
// The log file's order.

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct PrintBetween;

impl Process for PrintBetween {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        use std::io::Write;
        tracing::info!("event before the print");
        println!("the printed line");
        std::io::stdout().flush()?;
        // The parent has read the line before the next event is emitted.
        ctx.listen::<u64>(Duration::from_secs(60))?
            .ok_or("the parent never answered")?;
        tracing::info!("event after the print");
        Ok(())
    }
}

#[test]
fn the_log_file_keeps_the_child_s_order_captured_lines_included() -> skprocess::Result<()> {
    support::watchdog();
    let (cap, _g) = Captured::install();
    let dir = TempDir::new("order");
    let mut h =
        PrintBetween.start_with(PrintBetween::config().capture_output(true).log_dir(&dir.0))?;
    let read = cap.wait_for(DEADLINE, |ev| {
        ev.iter()
            .any(|e| e.get("stream").is_some() && e.message() == "the printed line")
    });
    assert!(read, "the line never arrived");
    h.tell(&1u64)?;
    finish(&mut h)?;
    let text =
        std::fs::read_to_string(dir.0.join(format!("log.PrintBetween-{}.log", h.pid()))).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].ends_with("INFO log: event before the print"),
        "{text}"
    );
    assert!(
        lines[1].ends_with("INFO skprocess::output: the printed line stream=\"stdout\""),
        "{text}"
    );
    assert!(
        lines[2].ends_with("INFO log: event after the print"),
        "{text}"
    );
    // Timestamps never go back.
    let stamps: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{text}");
    no_leftovers(&[h.pid()]);
    Ok(())
}
