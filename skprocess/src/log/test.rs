use super::child::{Funnel, FunnelLayer, Limits, MAX_LIVE_SPANS};
use super::parent::{has_callsite_for, Forwarder, Stream, MAX_CALLSITES};
use super::{Entry, Opened, ShapeDef, Short, SpanDef, Value};
use crate::proto::kind;
use crate::sys;
use crate::wire::{self, Reader, Writer};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Span;
use tracing_core::{Dispatch, Event, LevelFilter, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// What a capturing layer saw of one event.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    level: tracing::Level,
    target: String,
    /// Module path, file and line of the event's callsite.
    place: (Option<String>, Option<String>, Option<u32>),
    fields: Vec<(String, Got)>,
    parent: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Got {
    I(i64),
    U(u64),
    F(f64),
    B(bool),
    S(String),
    D(String),
}

impl Seen {
    fn get(&self, name: &str) -> Option<&Got> {
        self.fields.iter().find(|f| f.0 == name).map(|f| &f.1)
    }
}

struct Visitor<'a>(&'a mut Vec<(String, Got)>);

impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        self.0.push((f.name().into(), Got::D(format!("{v:?}"))));
    }
    fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
        self.0.push((f.name().into(), Got::S(v.into())));
    }
    fn record_i64(&mut self, f: &tracing::field::Field, v: i64) {
        self.0.push((f.name().into(), Got::I(v)));
    }
    fn record_u64(&mut self, f: &tracing::field::Field, v: u64) {
        self.0.push((f.name().into(), Got::U(v)));
    }
    fn record_f64(&mut self, f: &tracing::field::Field, v: f64) {
        self.0.push((f.name().into(), Got::F(v)));
    }
    fn record_bool(&mut self, f: &tracing::field::Field, v: bool) {
        self.0.push((f.name().into(), Got::B(v)));
    }
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Seen>>>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Vec::new();
        event.record(&mut Visitor(&mut fields));
        let parent = ctx.event_span(event).map(|s| s.name().to_string());
        let m = event.metadata();
        self.0.lock().unwrap().push(Seen {
            level: *m.level(),
            target: m.target().into(),
            place: (
                m.module_path().map(Into::into),
                m.file().map(Into::into),
                m.line(),
            ),
            fields,
            parent,
        });
    }
}

impl Capture {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn capturing() -> (Capture, Dispatch) {
    let c = Capture::default();
    (
        c.clone(),
        Dispatch::new(tracing_subscriber::registry().with(c)),
    )
}

fn channel() -> (Writer, Reader) {
    let (a, b) = sys::sock::socketpair().unwrap();
    let (_, w) = wire::split(a).unwrap();
    (w, Reader::new(b))
}

fn read_frame(r: &mut Reader) -> Vec<u8> {
    let f = r
        .read(Some(Instant::now() + Duration::from_secs(10)))
        .unwrap()
        .expect("a frame");
    assert_eq!(f.kind, kind::LOG);
    f.payload
}

fn entries(payload: &[u8]) -> Vec<Entry<'_>> {
    let mut rest = payload;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (e, tail) = postcard::take_from_bytes::<Entry<'_>>(rest).unwrap();
        out.push(e);
        rest = tail;
    }
    out
}

/// Limits under which the funnel sends only when told to (or full).
fn manual(cap: usize) -> Limits {
    Limits {
        batch: usize::MAX,
        latency: Duration::from_secs(3600),
        cap,
    }
}

fn funnel_dispatch(funnel: &Arc<Funnel>, level: LevelFilter) -> Dispatch {
    Dispatch::new(tracing_subscriber::registry().with(FunnelLayer::new(funnel.clone(), level)))
}

/// The events of a stream of entries, shapes resolved: (shape, values).
fn events<'a>(all: &'a [Entry<'a>]) -> Vec<(&'a ShapeDef<'a>, &'a Short<'a>)> {
    let mut shapes = Vec::new();
    let mut out = Vec::new();
    for e in all {
        match e {
            Entry::Shape(id, def) => {
                assert_eq!(*id as usize, shapes.len(), "shapes are numbered in order");
                shapes.push(def);
            }
            Entry::Short(id, short) => out.push((shapes[*id as usize], short)),
            Entry::Event(def, short) => out.push((def, short)),
            Entry::SpanShape(id, def) => {
                assert_eq!(*id as usize, shapes.len(), "shapes are numbered in order");
                shapes.push(&def.shape);
            }
            _ => {}
        }
    }
    out
}

#[test]
fn an_event_crosses_with_level_target_fields_and_spans() {
    let (w, mut r) = channel();
    let funnel = Arc::new(Funnel::new(w, manual(1 << 20)));
    tracing::dispatcher::with_default(&funnel_dispatch(&funnel, LevelFilter::TRACE), || {
        let outer = tracing::info_span!("outer");
        let _o = outer.enter();
        for _ in 0..2 {
            tracing::info_span!("inner").in_scope(|| {
                tracing::warn!(a = -1i64, b = 2u64, c = 0.5, d = true, e = "text", f = ?vec![1, 2], g = %"shown", "hello {}", 5);
            });
        }
        tracing::error!("plain");
    });
    funnel.flush();
    let payload = read_frame(&mut r);
    let all = entries(&payload);
    // The warn's shape is sent once for its two events; "inner"'s once for
    // its two spans.
    let kinds: Vec<String> = all
        .iter()
        .map(|e| match e {
            Entry::Shape(n, _) => format!("shape {n}"),
            Entry::Short(n, _) => format!("event {n}"),
            Entry::SpanShape(n, _) => format!("span shape {n}"),
            Entry::Span(n, o) => format!("span {n} #{} in {:?}", o.id, o.parent),
            Entry::Enter(n) => format!("enter {n}"),
            Entry::Exit(n) => format!("exit {n}"),
            Entry::Close(n) => format!("close {n}"),
            Entry::Mark(_) => "mark".into(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "span shape 0",
            "span 0 #1 in None",
            "enter 1",
            "span shape 1",
            "span 1 #2 in Some(1)",
            "enter 2",
            "shape 2",
            "event 2",
            "exit 2",
            "close 2",
            "span 1 #3 in Some(1)",
            "enter 3",
            "event 2",
            "exit 3",
            "close 3",
            "shape 3",
            "event 3",
            "exit 1",
            "close 1",
            "mark"
        ]
    );
    let got = events(&all);
    let (def, e) = got[0];
    assert_eq!(def.level, 3);
    assert_eq!(def.target, module_path!());
    assert_eq!(def.module_path, Some(module_path!()));
    assert!(def.file.unwrap().ends_with("test.rs"));
    assert!(def.line.is_some());
    assert_eq!(def.names, ["message", "a", "b", "c", "d", "e", "f", "g"]);
    assert_eq!(e.span, Some(2));
    assert_eq!(
        e.values,
        [
            Value::Debug("hello 5"),
            Value::I64(-1),
            Value::U64(2),
            Value::F64(0.5),
            Value::Bool(true),
            Value::Str("text"),
            Value::Debug("[1, 2]"),
            Value::Debug("shown"),
        ]
    );
    assert!(got[1].1.time >= e.time);
    assert_eq!(got[1].1.span, Some(3));
    let (def, e) = got[2];
    assert_eq!((def.level, e.span), (4, Some(1)));
}

#[test]
fn absent_fields_make_another_shape() {
    let (w, mut r) = channel();
    let funnel = Arc::new(Funnel::new(w, manual(1 << 20)));
    tracing::dispatcher::with_default(&funnel_dispatch(&funnel, LevelFilter::TRACE), || {
        for x in [Some(1u64), None, Some(3)] {
            tracing::info!(x, y = 2u64, "m");
        }
    });
    funnel.flush();
    let payload = read_frame(&mut r);
    let all = entries(&payload);
    let got = events(&all);
    let names: Vec<&[&str]> = got.iter().map(|(d, _)| &d.names[..]).collect();
    assert_eq!(
        names,
        [
            &["message", "x", "y"][..],
            &["message", "y"],
            &["message", "x", "y"]
        ]
    );
    assert_eq!(got[1].1.values, [Value::Debug("m"), Value::U64(2)]);
    assert_eq!(
        all.iter().filter(|e| matches!(e, Entry::Shape(..))).count(),
        2
    );
}

#[test]
fn levels_above_the_filter_are_not_sent() {
    let (w, mut r) = channel();
    let funnel = Arc::new(Funnel::new(w, manual(1 << 20)));
    tracing::dispatcher::with_default(&funnel_dispatch(&funnel, LevelFilter::WARN), || {
        tracing::info!("no");
        tracing::debug!("no");
        tracing::warn!("yes");
    });
    funnel.flush();
    let payload = read_frame(&mut r);
    assert_eq!(events(&entries(&payload)).len(), 1);
}

#[test]
fn a_full_buffer_makes_the_logger_wait_and_nothing_is_lost() {
    let (w, mut r) = channel();
    let cap = 4000;
    let funnel = Arc::new(Funnel::new(w, manual(cap)));
    let d = funnel_dispatch(&funnel, LevelFilter::TRACE);
    let n = 3000i64;
    // The reader is slow on purpose: the logger has to wait for room.
    let reader = std::thread::spawn(move || {
        let mut frames = Vec::new();
        let mut seen = 0;
        while seen < n {
            std::thread::sleep(Duration::from_millis(1));
            let p = read_frame(&mut r);
            let all = entries(&p);
            let mut next = seen;
            for e in &all {
                if let Entry::Short(_, s) | Entry::Event(_, s) = e {
                    assert_eq!(s.values[1], Value::I64(next), "out of order or lost");
                    next += 1;
                }
            }
            seen = next;
            frames.push(p.len());
        }
        frames
    });
    tracing::dispatcher::with_default(&d, || {
        for i in 0..n {
            tracing::info!(i, "{}", "x".repeat(100));
        }
    });
    funnel.flush();
    let frames = reader.join().unwrap();
    assert!(frames.len() > 10, "{frames:?}");
    assert!(frames.iter().all(|&len| len <= cap + 200), "{frames:?}");
}

#[test]
fn the_flusher_sends_on_its_own() {
    let (w, mut r) = channel();
    let limits = Limits {
        batch: 4096,
        latency: Duration::from_millis(20),
        cap: 1 << 20,
    };
    let funnel = Arc::new(Funnel::new(w, limits));
    let d = funnel_dispatch(&funnel, LevelFilter::TRACE);
    tracing::dispatcher::with_default(&d, || tracing::info!("one"));
    // No flush: the flusher thread sends it on its own.
    let one = read_frame(&mut r);
    assert_eq!(events(&entries(&one)).len(), 1);
    tracing::dispatcher::with_default(&d, || {
        for i in 0..2000 {
            tracing::info!(i, "{}", "y".repeat(50));
        }
    });
    let mut seen = 0;
    while seen < 2000 {
        let p = read_frame(&mut r);
        for e in entries(&p) {
            match e {
                Entry::Short(_, s) => {
                    assert_eq!(s.values[1], Value::I64(seen));
                    seen += 1;
                }
                Entry::Event(..) => panic!("an event was sent with its shape inline"),
                _ => {}
            }
        }
    }
}

fn def<'a>(level: u8, target: &'a str, names: &[&'a str]) -> ShapeDef<'a> {
    ShapeDef {
        level,
        target,
        module_path: Some(target),
        file: Some("src/work.rs"),
        line: Some(12),
        names: names.to_vec(),
    }
}

fn short<'a>(span: Option<u64>, values: &[Value<'a>]) -> Short<'a> {
    Short {
        time: 0,
        span,
        values: values.to_vec(),
    }
}

fn encode(entries: &[Entry<'_>]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|e| postcard::to_allocvec(e).unwrap())
        .collect()
}

#[test]
fn the_forwarder_re_emits_with_process_pid_and_parent_span() {
    let (cap, d) = capturing();
    let span = tracing::dispatcher::with_default(&d, || tracing::info_span!("started_here"));
    let fwd = Forwarder::new("app::Job[2]".into(), 4242, d.clone(), span);
    let names = ["message", "n", "u", "r", "ok", "s"];
    let values = [
        Value::Debug("hello"),
        Value::I64(-3),
        Value::U64(3),
        Value::F64(1.5),
        Value::Bool(false),
        Value::Str("str"),
    ];
    fwd.emit(&encode(&[
        Entry::Shape(0, def(3, "app::work", &names)),
        Entry::Short(0, short(None, &values)),
    ]));
    // Shapes live as long as the child: a later frame uses shape 0 again.
    fwd.emit(&encode(&[
        Entry::Short(0, short(None, &values)),
        Entry::Event(
            def(4, "app::inline", &["message"]),
            short(None, &[Value::Str("inline")]),
        ),
    ]));
    fwd.emit_line(Stream::Stderr, "oops");
    let seen = cap.take();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let e = &seen[0];
    assert_eq!(
        (e.level, e.target.as_str(), e.parent.as_deref()),
        (tracing::Level::WARN, "app::work", Some("started_here"))
    );
    assert_eq!(
        e.place,
        (
            Some("app::work".into()),
            Some("src/work.rs".into()),
            Some(12)
        )
    );
    assert_eq!(e.get("message"), Some(&Got::D("hello".into())));
    assert_eq!(e.get("n"), Some(&Got::I(-3)));
    assert_eq!(e.get("u"), Some(&Got::U(3)));
    assert_eq!(e.get("r"), Some(&Got::F(1.5)));
    assert_eq!(e.get("ok"), Some(&Got::B(false)));
    assert_eq!(e.get("s"), Some(&Got::S("str".into())));
    assert_eq!(e.get("process"), Some(&Got::S("app::Job[2]".into())));
    assert_eq!(e.get("pid"), Some(&Got::U(4242)));
    assert_eq!(seen[1].get("n"), Some(&Got::I(-3)));
    assert_eq!(
        (seen[2].level, seen[2].target.as_str()),
        (tracing::Level::ERROR, "app::inline")
    );
    let l = &seen[3];
    assert_eq!(
        (l.level, l.target.as_str()),
        (tracing::Level::WARN, "skprocess::output")
    );
    assert_eq!(l.get("stream"), Some(&Got::S("stderr".into())));
    assert_eq!(l.get("message"), Some(&Got::D("oops".into())));
    assert_eq!(l.get("pid"), Some(&Got::U(4242)));
}

#[test]
fn garbage_is_reported_not_panicked_on() {
    let (cap, d) = capturing();
    let fwd = Forwarder::new("p".into(), 1, d, Span::none());
    let good = encode(&[Entry::Shape(0, def(2, "t", &["message"]))]);
    for bad in [
        vec![0xff; 3],
        vec![0],
        vec![2, 9, 1, b'x'],
        [good.clone(), vec![7, 7, 7]].concat(),
        encode(&[Entry::Event(def(200, "t", &[]), short(None, &[]))]),
        encode(&[Entry::Shape(5, def(2, "t", &[]))]),
        encode(&[Entry::Short(99, short(None, &[]))]),
        encode(&[Entry::Short(
            0,
            short(None, &[Value::U64(1), Value::U64(2)]),
        )]),
    ] {
        fwd.emit(&bad);
    }
    let seen = cap.take();
    assert!(
        seen.iter().all(|s| s.target == "skprocess::log"),
        "{seen:?}"
    );
    let said = |what: &str| {
        seen.iter()
            .any(|s| matches!(s.get("message"), Some(Got::D(m)) if m.contains(what)))
    };
    assert!(said("unreadable log frame"), "{seen:?}");
    assert!(said("unknown level 200"), "{seen:?}");
    assert!(said("shape #5 out of order"), "{seen:?}");
    assert!(said("unknown shape #99"), "{seen:?}");
    assert!(said("2 values for its 1 fields"), "{seen:?}");
    assert!(seen.iter().all(|s| s.get("pid") == Some(&Got::U(1))));
}

#[test]
fn unreasonable_shapes_are_folded_not_leaked() {
    let (cap, d) = capturing();
    let fwd = Forwarder::new("p".into(), 1, d, Span::none());
    let long_target = "t".repeat(10_000);
    fwd.emit(&encode(&[Entry::Event(
        def(2, &long_target, &["message", "k"]),
        short(None, &[Value::Debug("m"), Value::U64(1)]),
    )]));
    assert!(!has_callsite_for(&long_target));
    assert!(has_callsite_for("skprocess::child"));
    let seen = cap.take();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "skprocess::child");
    assert_eq!(
        seen[0].get("child_target"),
        Some(&Got::S(long_target[..256].to_string()))
    );
    assert_eq!(seen[0].get("fields"), Some(&Got::D("k=1".into())));
    assert_eq!(seen[0].get("message"), Some(&Got::D("m".into())));
}

// ---------------------------------------------------------------------------
// Spans, `log` records, the file's order.

/// Writes down what a subscriber is told: spans (with their parent and
/// fields), records, enters, exits, closes, and events (with their span).
#[derive(Clone, Default)]
struct Journal(Arc<Mutex<Vec<String>>>);

fn fields_of(record: impl FnOnce(&mut Visitor<'_>)) -> String {
    let mut fields = Vec::new();
    record(&mut Visitor(&mut fields));
    fields
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Journal {
    fn on_new_span(
        &self,
        attrs: &tracing_core::span::Attributes<'_>,
        id: &tracing_core::span::Id,
        ctx: Context<'_, S>,
    ) {
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map_or("root".to_string(), |p| p.name().to_string());
        let f = fields_of(|v| attrs.record(v));
        let m = attrs.metadata();
        self.0.lock().unwrap().push(format!(
            "new {} ({} {}) in {parent}: {f}",
            m.name(),
            m.level(),
            m.target()
        ));
    }
    fn on_record(
        &self,
        id: &tracing_core::span::Id,
        values: &tracing_core::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        let f = fields_of(|v| values.record(v));
        let name = ctx.span(id).unwrap().name();
        self.0.lock().unwrap().push(format!("record {name}: {f}"));
    }
    fn on_enter(&self, id: &tracing_core::span::Id, ctx: Context<'_, S>) {
        let name = ctx.span(id).unwrap().name();
        self.0.lock().unwrap().push(format!("enter {name}"));
    }
    fn on_exit(&self, id: &tracing_core::span::Id, ctx: Context<'_, S>) {
        let name = ctx.span(id).unwrap().name();
        self.0.lock().unwrap().push(format!("exit {name}"));
    }
    fn on_close(&self, id: tracing_core::span::Id, ctx: Context<'_, S>) {
        let name = ctx.span(&id).unwrap().name();
        self.0.lock().unwrap().push(format!("close {name}"));
    }
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Vec::new();
        event.record(&mut Visitor(&mut fields));
        let message = fields
            .iter()
            .find(|f| f.0 == "message")
            .map_or(String::new(), |f| format!("{:?}", f.1));
        let span = ctx.event_span(event).map_or("root", |s| s.name());
        self.0
            .lock()
            .unwrap()
            .push(format!("event {message} in {span}"));
    }
}

impl Journal {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn journaling() -> (Journal, Dispatch) {
    let j = Journal::default();
    (
        j.clone(),
        Dispatch::new(tracing_subscriber::registry().with(j)),
    )
}

#[test]
fn spans_are_made_again_with_fields_nesting_and_order() {
    let (w, mut r) = channel();
    let funnel = Arc::new(Funnel::new(w, manual(1 << 20)));
    tracing::dispatcher::with_default(&funnel_dispatch(&funnel, LevelFilter::TRACE), || {
        let outer = tracing::info_span!("outer", job = 7u64, late = tracing::field::Empty);
        let _o = outer.enter();
        tracing::debug_span!(target: "app::inner", "inner", k = "v").in_scope(|| {
            tracing::info!("inside");
        });
        outer.record("late", -3i64);
        tracing::info!("in outer");
    });
    funnel.flush();
    let payload = read_frame(&mut r);
    let (j, d) = journaling();
    let start = tracing::dispatcher::with_default(&d, || tracing::info_span!("started_here"));
    j.take();
    let fwd = Forwarder::new("app::Job".into(), 9, d.clone(), start);
    fwd.emit(&payload);
    let here = module_path!();
    assert_eq!(
        j.take(),
        [
            format!("new outer (INFO {here}) in started_here: job=U(7) process=S(\"app::Job\") pid=U(9)"),
            "enter outer".into(),
            "new inner (DEBUG app::inner) in outer: k=S(\"v\") process=S(\"app::Job\") pid=U(9)".into(),
            "enter inner".into(),
            "event D(\"inside\") in inner".into(),
            "exit inner".into(),
            "close inner".into(),
            "record outer: late=I(-3)".into(),
            "event D(\"in outer\") in outer".into(),
            "exit outer".into(),
            "close outer".into(),
        ]
    );
    drop(fwd);
    assert_eq!(j.take(), ["close started_here"]);
}

/// A frame of entries for the forwarder, made by hand.
fn span_def<'a>(name: &'a str, names: &[&'a str]) -> SpanDef<'a> {
    SpanDef {
        name,
        shape: def(2, "app", names),
    }
}

fn opened(id: u64, parent: Option<u64>) -> Opened<'static> {
    Opened {
        id,
        parent,
        values: Vec::new(),
    }
}

#[test]
fn a_span_entered_across_frames_is_not_left_current_and_a_killed_child_s_spans_close() {
    let (j, d) = journaling();
    let fwd = Forwarder::new("p".into(), 1, d.clone(), Span::none());
    fwd.emit(&encode(&[
        Entry::SpanShape(0, span_def("work", &["n"])),
        Entry::Span(0, opened(1, None)),
        Entry::Enter(1),
    ]));
    // Between frames, the forwarding thread is in no span of the child.
    let current = tracing::dispatcher::with_default(&d, || Span::current().id());
    assert_eq!(current, None);
    fwd.emit(&encode(&[
        Entry::Shape(1, def(2, "app", &["message"])),
        Entry::Short(1, short(Some(1), &[Value::Str("hi")])),
        Entry::Span(0, opened(2, Some(1))),
    ]));
    assert_eq!(
        j.take(),
        [
            "new work (INFO app) in root: process=S(\"p\") pid=U(1)",
            "enter work",
            "exit work",
            "enter work",
            "event S(\"hi\") in work",
            "new work (INFO app) in work: process=S(\"p\") pid=U(1)",
            "exit work",
        ]
    );
    // The child dies with both open: they are closed when it is gone.
    drop(fwd);
    assert_eq!(j.take(), ["close work", "close work"]);
}

#[test]
fn a_child_s_open_spans_are_capped_on_both_sides() {
    // The child sends no more than the cap; what happens past it goes to
    // the innermost span sent.
    let (w, mut r) = channel();
    let funnel = Arc::new(Funnel::new(w, manual(1 << 30)));
    tracing::dispatcher::with_default(&funnel_dispatch(&funnel, LevelFilter::TRACE), || {
        let mut guards = Vec::new();
        for _ in 0..MAX_LIVE_SPANS + 5 {
            guards.push(tracing::info_span!("deep").entered());
        }
        tracing::info!("at the bottom");
    });
    funnel.flush();
    let payload = read_frame(&mut r);
    let all = entries(&payload);
    let spans = all
        .iter()
        .filter(|e| matches!(e, Entry::Span(..) | Entry::SpanInline(..)))
        .count();
    assert_eq!(spans, MAX_LIVE_SPANS);
    let ev = events(&all);
    assert_eq!(ev[0].1.span, Some(MAX_LIVE_SPANS as u64));

    // The parent makes no more than the cap either, says so once, and
    // puts what happens past it under the span current at start.
    let (cap, d) = capturing();
    let start = tracing::dispatcher::with_default(&d, || tracing::info_span!("started_here"));
    let fwd = Forwarder::new("p".into(), 1, d, start);
    let mut frame = vec![Entry::SpanShape(0, span_def("flat", &[]))];
    for n in 1..=MAX_LIVE_SPANS as u64 + 3 {
        frame.push(Entry::Span(0, opened(n, None)));
    }
    frame.push(Entry::Shape(1, def(2, "app", &["message"])));
    frame.push(Entry::Short(1, short(Some(1), &[Value::Str("in one")])));
    frame.push(Entry::Short(
        1,
        short(
            Some(MAX_LIVE_SPANS as u64 + 2),
            &[Value::Str("past the cap")],
        ),
    ));
    fwd.emit(&encode(&frame));
    let seen = cap.take();
    let notices: Vec<_> = seen
        .iter()
        .filter(|s| s.target == "skprocess::log")
        .collect();
    assert_eq!(notices.len(), 1, "{notices:?}");
    let ev: Vec<_> = seen.iter().filter(|s| s.target == "app").collect();
    assert_eq!(ev[0].parent.as_deref(), Some("flat"));
    assert_eq!(ev[1].parent.as_deref(), Some("started_here"));
}

#[test]
fn log_records_become_events_with_their_own_target_and_place() {
    // The `log` facade's logger is process-wide: in a child it is set
    // before the first hook; here, once for this test binary.
    let _ = tracing_log::LogTracer::init();
    let (w, mut r) = channel();
    let funnel = Arc::new(Funnel::new(w, manual(1 << 20)));
    tracing::dispatcher::with_default(&funnel_dispatch(&funnel, LevelFilter::DEBUG), || {
        for i in 0..2 {
            ::log::warn!(target: "app::db", "slow query {i}");
        }
        ::log::error!("plain");
        ::log::trace!("filtered out");
        tracing::info_span!("job").in_scope(|| ::log::info!("in a span"));
    });
    funnel.flush();
    let payload = read_frame(&mut r);
    let all = entries(&payload);
    let got = events(&all);
    assert_eq!(got.len(), 4, "{got:?}");
    let (def, e) = got[0];
    assert_eq!((def.level, def.target), (3, "app::db"));
    assert_eq!(def.module_path, Some(module_path!()));
    assert!(def.file.unwrap().ends_with("test.rs"));
    assert!(def.line.is_some());
    assert_eq!(def.names, ["message"]);
    assert_eq!(e.values, [Value::Debug("slow query 0")]);
    assert_eq!(got[1].1.values, [Value::Debug("slow query 1")]);
    assert_eq!((got[2].0.level, got[2].0.target), (4, module_path!()));
    assert_eq!(got[3].1.span, Some(1));
    // One shape for the two warnings of one place.
    let shapes = all.iter().filter(|e| matches!(e, Entry::Shape(..))).count();
    assert_eq!(shapes, 3);
}

#[test]
fn the_log_file_puts_a_captured_line_after_the_events_emitted_before_it() {
    let dir = std::env::temp_dir().join(format!("skprocess-logfile-{}", std::process::id()));
    let fwd = Forwarder::new("app::Job".into(), 77, Dispatch::none(), Span::none())
        .with_log_dir(&dir, "app::Job")
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    // Read now; the event emitted a moment earlier comes later, in a
    // frame (the child sends its events in batches).
    fwd.emit_line(Stream::Stdout, "printed");
    let event = |time: u64, text: &'static str| Short {
        time,
        span: None,
        values: vec![Value::Str(text)],
    };
    fwd.emit(&encode(&[
        Entry::Shape(0, def(2, "app", &["message"])),
        Entry::Short(0, event(now - 1_000_000, "before")),
        Entry::Mark(now - 500_000),
    ]));
    fwd.emit(&encode(&[Entry::Short(
        0,
        event(now + 3_600_000_000_000, "after"),
    )]));
    drop(fwd);
    let path = dir.join("app.Job-77.log");
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].ends_with(" INFO app: before"), "{text}");
    assert!(
        lines[1].ends_with(" INFO skprocess::output: printed stream=\"stdout\""),
        "{text}"
    );
    assert!(lines[2].ends_with(" INFO app: after"), "{text}");
    // Each event keeps its own time.
    let stamp = humantime::format_rfc3339_micros(
        std::time::UNIX_EPOCH + Duration::from_nanos(now - 1_000_000),
    )
    .to_string();
    assert!(lines[0].starts_with(&stamp), "{text}");
}

// The cap above is far from what ordinary programs reach.
const _: () = assert!(MAX_CALLSITES >= 1024);

#[test]
#[ignore = "a measurement, not a test: cargo test --release -p skprocess --lib log_costs -- --ignored --nocapture"]
fn log_costs() {
    let (w, mut r) = channel();
    let funnel = Arc::new(Funnel::new(w, manual(1 << 30)));
    let d = funnel_dispatch(&funnel, LevelFilter::TRACE);
    let n = 200_000u32;
    let t0 = Instant::now();
    tracing::dispatcher::with_default(&d, || {
        for i in 0..n {
            tracing::info!(i, worker = "bench", "processed item {i} of the batch");
        }
    });
    let child = t0.elapsed();
    let reader = std::thread::spawn(move || read_frame(&mut r));
    funnel.flush();
    let payload = reader.join().unwrap();
    let fwd = Forwarder::new(
        "p".into(),
        1,
        Dispatch::new(tracing_subscriber::registry()),
        Span::none(),
    );
    let t0 = Instant::now();
    fwd.emit(&payload);
    let parent = t0.elapsed();
    eprintln!(
        "child {:?}/event, parent {:?}/event, {} bytes/event",
        child / n,
        parent / n,
        payload.len() / n as usize
    );
}
