use super::child::{Funnel, FunnelLayer, Limits};
use super::parent::{has_callsite_for, Forwarder, Stream, MAX_CALLSITES};
use super::{Entry, Record, Value};
use crate::sys;
use crate::wire::{self, kind, Reader, Writer};
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
        self.0.lock().unwrap().push(Seen {
            level: *event.metadata().level(),
            target: event.metadata().target().into(),
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
    (c.clone(), Dispatch::new(tracing_subscriber::registry().with(c)))
}

fn channel() -> (Writer, Reader) {
    let (a, b) = sys::sock::socketpair().unwrap();
    let (_, w) = wire::split(a).unwrap();
    (w, Reader::new(b))
}

fn read_frame(r: &mut Reader) -> Vec<u8> {
    let f = r.read(Some(Instant::now() + Duration::from_secs(10))).unwrap().expect("a frame");
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

/// Limits under which the funnel sends only when told to.
fn manual(cap: usize) -> Limits {
    Limits { batch: usize::MAX, latency: Duration::from_secs(3600), cap }
}

#[test]
fn an_event_crosses_with_level_target_fields_and_spans() {
    let (w, mut r) = channel();
    let funnel = Arc::new(Funnel::new(w, manual(1 << 20)));
    let sub = tracing_subscriber::registry().with(FunnelLayer::new(funnel.clone(), LevelFilter::TRACE));
    tracing::subscriber::with_default(sub, || {
        let outer = tracing::info_span!("outer");
        let _o = outer.enter();
        tracing::info_span!("inner").in_scope(|| {
            tracing::warn!(a = -1i64, b = 2u64, c = 0.5, d = true, e = "text", f = ?vec![1, 2], g = %"shown", "hello {}", 5);
        });
        tracing::error!("plain");
    });
    funnel.flush();
    let payload = read_frame(&mut r);
    let got = entries(&payload);
    assert_eq!(got.len(), 2);
    let Entry::Event(e) = &got[0] else { panic!("{got:?}") };
    assert_eq!(e.level, 3);
    assert_eq!(e.target, module_path!());
    assert_eq!(e.module_path, Some(module_path!()));
    assert!(e.file.unwrap().ends_with("test.rs"));
    assert!(e.line.is_some());
    assert_eq!(e.spans, vec!["outer", "inner"]);
    assert_eq!(
        e.fields,
        vec![
            ("message", Value::Debug("hello 5")),
            ("a", Value::I64(-1)),
            ("b", Value::U64(2)),
            ("c", Value::F64(0.5)),
            ("d", Value::Bool(true)),
            ("e", Value::Str("text")),
            ("f", Value::Debug("[1, 2]")),
            ("g", Value::Debug("shown")),
        ]
    );
    let Entry::Event(e) = &got[1] else { panic!("{got:?}") };
    assert_eq!((e.level, e.spans.len()), (4, 1));
}

#[test]
fn levels_above_the_filter_are_not_sent() {
    let (w, mut r) = channel();
    let funnel = Arc::new(Funnel::new(w, manual(1 << 20)));
    let sub = tracing_subscriber::registry().with(FunnelLayer::new(funnel.clone(), LevelFilter::WARN));
    tracing::subscriber::with_default(sub, || {
        tracing::info!("no");
        tracing::debug!("no");
        tracing::warn!("yes");
    });
    funnel.flush();
    let payload = read_frame(&mut r);
    assert_eq!(entries(&payload).len(), 1);
}

#[test]
fn a_full_buffer_drops_and_counts_then_resumes() {
    let (w, mut r) = channel();
    let funnel = Arc::new(Funnel::new(w, manual(2000)));
    let sub = tracing_subscriber::registry().with(FunnelLayer::new(funnel.clone(), LevelFilter::TRACE));
    tracing::subscriber::with_default(sub, || {
        for i in 0..100 {
            tracing::info!(i, "{}", "x".repeat(100));
        }
        funnel.flush();
        tracing::info!(i = 100, "after");
    });
    funnel.flush();
    let first = read_frame(&mut r);
    let first = entries(&first);
    let kept = first.iter().filter(|e| matches!(e, Entry::Event(_))).count();
    assert!((5..100).contains(&kept), "kept {kept}");
    assert_eq!(first.last(), Some(&Entry::Dropped(100 - kept as u64)));
    // Order is kept: the first events, then the notice.
    for (i, e) in first[..kept].iter().enumerate() {
        let Entry::Event(e) = e else { panic!() };
        assert_eq!(e.fields[1], ("i", Value::I64(i as i64)));
    }
    let second = read_frame(&mut r);
    assert!(matches!(&entries(&second)[..], [Entry::Event(e)] if e.fields[1] == ("i", Value::I64(100))));
}

#[test]
fn the_flusher_sends_within_the_latency_and_when_full() {
    let (w, mut r) = channel();
    let limits = Limits { batch: 4096, latency: Duration::from_millis(20), cap: 1 << 20 };
    let funnel = Arc::new(Funnel::new(w, limits));
    let sub = tracing_subscriber::registry().with(FunnelLayer::new(funnel.clone(), LevelFilter::TRACE));
    let d = Dispatch::new(sub);
    tracing::dispatcher::with_default(&d, || tracing::info!("one"));
    // No flush: the flusher thread sends it on its own.
    let one = read_frame(&mut r);
    assert_eq!(entries(&one).len(), 1);
    tracing::dispatcher::with_default(&d, || {
        for i in 0..2000 {
            tracing::info!(i, "{}", "y".repeat(50));
        }
    });
    let mut seen = 0;
    while seen < 2000 {
        let p = read_frame(&mut r);
        for e in entries(&p) {
            let Entry::Event(e) = e else { panic!("{e:?}") };
            assert_eq!(e.fields[1], ("i", Value::I64(seen)));
            seen += 1;
        }
    }
}

#[test]
fn the_forwarder_re_emits_with_process_pid_and_parent_span() {
    let (cap, d) = capturing();
    let span = tracing::dispatcher::with_default(&d, || tracing::info_span!("started_here"));
    let fwd = Forwarder::new("app::Job[2]".into(), 4242, d.clone(), span);
    let rec = Record {
        level: 3,
        target: "app::work",
        module_path: Some("app::work"),
        file: Some("src/work.rs"),
        line: Some(12),
        time: 0,
        spans: vec!["a", "b"],
        fields: vec![
            ("message", Value::Debug("hello")),
            ("n", Value::I64(-3)),
            ("u", Value::U64(3)),
            ("r", Value::F64(1.5)),
            ("ok", Value::Bool(false)),
            ("s", Value::Str("str")),
        ],
    };
    let mut payload = postcard::to_allocvec(&Entry::Event(rec)).unwrap();
    payload.extend(postcard::to_allocvec(&Entry::Dropped(7)).unwrap());
    fwd.emit(&payload);
    fwd.emit_line(Stream::Stderr, "oops");
    let seen = cap.take();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let e = &seen[0];
    assert_eq!((e.level, e.target.as_str(), e.parent.as_deref()), (tracing::Level::WARN, "app::work", Some("started_here")));
    assert_eq!(e.get("message"), Some(&Got::D("hello".into())));
    assert_eq!(e.get("n"), Some(&Got::I(-3)));
    assert_eq!(e.get("u"), Some(&Got::U(3)));
    assert_eq!(e.get("r"), Some(&Got::F(1.5)));
    assert_eq!(e.get("ok"), Some(&Got::B(false)));
    assert_eq!(e.get("s"), Some(&Got::S("str".into())));
    assert_eq!(e.get("spans"), Some(&Got::S("a:b".into())));
    assert_eq!(e.get("process"), Some(&Got::S("app::Job[2]".into())));
    assert_eq!(e.get("pid"), Some(&Got::U(4242)));
    let n = &seen[1];
    assert_eq!((n.level, n.target.as_str()), (tracing::Level::WARN, "skprocess::log"));
    assert!(matches!(n.get("message"), Some(Got::D(m)) if m.starts_with("7 log events")), "{n:?}");
    let l = &seen[2];
    assert_eq!((l.level, l.target.as_str()), (tracing::Level::WARN, "skprocess::output"));
    assert_eq!(l.get("stream"), Some(&Got::S("stderr".into())));
    assert_eq!(l.get("message"), Some(&Got::D("oops".into())));
    assert_eq!(l.get("pid"), Some(&Got::U(4242)));
}

#[test]
fn garbage_is_reported_not_panicked_on() {
    let (cap, d) = capturing();
    let fwd = Forwarder::new("p".into(), 1, d, Span::none());
    let good = postcard::to_allocvec(&Entry::Dropped(1)).unwrap();
    for bad in [
        vec![0xff; 3],
        vec![0],
        vec![0, 9, 1, b'x'],
        [good.clone(), vec![7, 7, 7]].concat(),
        // An event with level 200.
        postcard::to_allocvec(&Entry::Event(Record {
            level: 200,
            target: "t",
            module_path: None,
            file: None,
            line: None,
            time: 0,
            spans: vec![],
            fields: vec![],
        }))
        .unwrap(),
    ] {
        fwd.emit(&bad);
    }
    let seen = cap.take();
    let notices: Vec<_> = seen.iter().filter(|s| s.target == "skprocess::log").collect();
    assert_eq!(notices.len(), seen.len());
    assert!(seen.len() >= 5, "{seen:?}");
    assert!(seen.iter().any(|s| matches!(s.get("message"), Some(Got::D(m)) if m.contains("unknown level 200"))));
    assert!(seen.iter().any(|s| matches!(s.get("message"), Some(Got::D(m)) if m.contains("unreadable log frame"))));
}

#[test]
fn endless_new_shapes_are_folded_not_leaked() {
    let (cap, d) = capturing();
    let fwd = Forwarder::new("p".into(), 1, d, Span::none());
    let long_target = "t".repeat(10_000);
    let rec = Record {
        level: 2,
        target: &long_target,
        module_path: None,
        file: None,
        line: None,
        time: 0,
        spans: vec![],
        fields: vec![("message", Value::Debug("m")), ("k", Value::U64(1))],
    };
    fwd.emit(&postcard::to_allocvec(&Entry::Event(rec)).unwrap());
    assert!(!has_callsite_for(&long_target));
    assert!(has_callsite_for("skprocess::child"));
    let seen = cap.take();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "skprocess::child");
    assert_eq!(seen[0].get("child_target"), Some(&Got::S(long_target.clone())));
    assert_eq!(seen[0].get("fields"), Some(&Got::D("k=1".into())));
    assert_eq!(seen[0].get("message"), Some(&Got::D("m".into())));
    assert!(MAX_CALLSITES >= 1024);
}
