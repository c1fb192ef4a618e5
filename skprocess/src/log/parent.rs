//! The parent's side: re-emitting a child's events into the dispatcher that
//! was current where the process was started.
//!
//! A child's events need callsites, made at run time and cached
//! ([`super::callsite`]); a shape refused one (overlong strings, too many
//! fields, the cache full) is folded into a few fixed shapes (target
//! `skprocess::child`, the original target and fields as text).
//!
//! A child's spans are made again in the dispatcher, from callsites made
//! the same way (their own name, fields, `process` and `pid`), under the
//! span the child had them in, or under the origin span for those the
//! child opened at its top. Their ids live in a table of the child's open
//! spans, at most [`MAX_LIVE_SPANS`] of them; past that a span is not made
//! and what happens in it goes to the origin span. Enter and exit are
//! replayed in the child's order; since a span entered is the current span
//! of the thread that entered it, the spans still entered at the end of a
//! frame are exited then and entered again at the start of the next, so
//! the thread that forwards never keeps a child's span current between
//! frames. When the forwarder goes (the child has ended), the spans the
//! child left open, a killed child's, are closed.
//!
//! The log file gets events as they come, stamped with the child's time.
//! A captured line has no time from the child: it is stamped when the
//! parent reads it, and held until the event stream has passed that time
//! (an event after it, or the mark that ends each frame), or [`HOLD`] at
//! most, so that it follows the events the child emitted before writing it.

use super::callsite::{callsite, DynCallsite, Shape, MAX_FIELDS, MAX_NAME, MAX_TARGET};
use super::child::{filter_code, MAX_LIVE_SPANS};
use super::{level_of, Entry, Opened, ShapeDef, Short, Value};
use crate::error::{Error, Result};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::field::DisplayValue;
use tracing::Span;
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::subscriber::NoSubscriber;
use tracing_core::{dispatcher, Dispatch, Event, Level, LevelFilter, Metadata};

/// Target of the events skprocess itself emits about logging.
pub(crate) const NOTICE_TARGET: &str = "skprocess::log";
/// Target of captured standard output and error lines.
pub(crate) const OUTPUT_TARGET: &str = "skprocess::output";
/// Target of events whose shape could not get a callsite of its own.
pub(crate) const FOLDED_TARGET: &str = "skprocess::child";

/// Longest a captured line waits for the events emitted before it.
const HOLD: Duration = Duration::from_millis(250);
/// Most spans a child may be in on all its threads at once.
const MAX_ENTERED: usize = 4 * MAX_LIVE_SPANS;
/// Most spans a file line names, innermost last.
const MAX_PATH: usize = 64;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------
// Where events go: captured by `start()`.

/// The dispatcher and the span current where a process (or pool) was
/// started.
#[derive(Clone)]
pub(crate) struct Origin {
    pub(crate) dispatch: Dispatch,
    pub(crate) span: Span,
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Origin")
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}

impl Origin {
    /// The current thread's dispatcher and span.
    pub(crate) fn capture() -> Origin {
        Origin {
            dispatch: dispatcher::get_default(|d| d.clone()),
            span: Span::current(),
        }
    }

    /// Whether events sent here go nowhere.
    pub(crate) fn is_silent(&self) -> bool {
        self.dispatch.is::<NoSubscriber>()
    }

    /// The most verbose level worth sending from a child (setup code).
    pub(crate) fn level_for_child(&self, to_file: bool) -> u8 {
        if to_file {
            filter_code(LevelFilter::TRACE)
        } else if self.is_silent() {
            filter_code(LevelFilter::OFF)
        } else {
            filter_code(LevelFilter::current())
        }
    }

    /// A forwarder for one child, writing to `<dir>/<name>-<pid>.log` as
    /// well if `log_dir` is given as `(dir, name)`.
    pub(crate) fn forwarder(
        &self,
        label: &str,
        pid: u32,
        log_dir: Option<(&Path, &str)>,
    ) -> Result<Arc<Forwarder>> {
        let f = Forwarder::new(
            label.to_string(),
            pid,
            self.dispatch.clone(),
            self.span.clone(),
        );
        Ok(Arc::new(match log_dir {
            Some((dir, name)) => f.with_log_dir(dir, name)?,
            None => f,
        }))
    }
}

// ---------------------------------------------------------------------------
// The forwarder.

/// Which standard stream a captured line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Re-emits one child's events (and captured lines) into a dispatcher, as
/// children of a span, with `process` and `pid` added, and its spans as
/// spans; optionally writes the events to a file too. Safe to share
/// between the thread reading the control socket and the one reading the
/// standard streams.
pub(crate) struct Forwarder {
    /// The `process` field; a pool worker's changes with the item it runs.
    label: Mutex<Arc<str>>,
    pid: u32,
    dispatch: Dispatch,
    span: Span,
    file: Option<(PathBuf, Mutex<LogFile>)>,
    /// What the child has defined: shapes and open spans.
    state: Mutex<State>,
    /// The shapes of skprocess's own events: stdout, stderr, notices.
    fixed: Mutex<[Known; 3]>,
}

impl fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarder")
            .field("process", &self.label())
            .field("pid", &self.pid)
            .field("file", &self.file.as_ref().map(|f| &f.0))
            .finish_non_exhaustive()
    }
}

/// Most shapes one child may define.
const MAX_SHAPES_PER_CHILD: usize = 16 * 1024;
/// Most fields of one shape the parent keeps at all.
const MAX_STORED_FIELDS: usize = 1024;

/// One child's log file, and the captured lines waiting to be written.
struct LogFile {
    out: BufWriter<File>,
    held: VecDeque<HeldLine>,
}

/// A captured line, stamped when the parent read it.
struct HeldLine {
    time: u64,
    stream: Stream,
    text: String,
}

impl LogFile {
    /// Writes the held lines stamped before `time` (or at it, if
    /// `inclusive`).
    fn release(&mut self, time: u64, inclusive: bool) {
        while let Some(h) = self.held.front() {
            if h.time > time || (h.time == time && !inclusive) {
                break;
            }
            let h = self.held.pop_front().expect("a front line");
            let (level, names) = match h.stream {
                Stream::Stdout => (Level::INFO, OUTPUT_NAMES),
                Stream::Stderr => (Level::WARN, OUTPUT_NAMES),
            };
            let values = [Value::Debug(&h.text), Value::Str(h.stream.name())];
            let _ = write_line(
                &mut self.out,
                h.time,
                level,
                OUTPUT_TARGET,
                &[],
                &names,
                &values,
            );
        }
    }

    /// Writes an event stamped `time` (after the lines held before it).
    fn event(&mut self, time: u64, known: &Known, path: &[&str], values: &[Value<'_>]) {
        self.release(time, false);
        let _ = write_line(
            &mut self.out,
            time,
            known.level,
            &known.target,
            path,
            &known.names,
            values,
        );
    }
}

const OUTPUT_NAMES: [&str; 2] = ["message", "stream"];

/// What the forwarder knows of the child's stream.
#[derive(Default)]
struct State {
    /// The shapes the child has defined, by number (`None`: unusable).
    shapes: Vec<Option<Known>>,
    /// The child's open spans, by the child's number.
    spans: HashMap<u64, Live>,
    /// The spans the child's threads are in, in the order entered (one
    /// per enter not exited yet).
    entered: Vec<u64>,
    /// The child has been told of the cap on its open spans.
    capped: bool,
}

/// A child's open span.
struct Live {
    /// The span made for it, if one was.
    own: Option<Id>,
    /// The callsite of that span.
    meta: Option<&'static Metadata<'static>>,
    /// Where what happens in it goes: its own span, or the one it is in.
    scope: Option<Id>,
    /// Its name (for the log file).
    name: Arc<str>,
    /// The child's number of the span it is in.
    parent: Option<u64>,
}

/// The names of span `n` and those it is in, outermost first.
fn path(spans: &HashMap<u64, Live>, n: Option<u64>) -> Vec<&str> {
    let mut path = Vec::new();
    let mut at = n;
    while let Some(live) = at.and_then(|n| spans.get(&n)) {
        if path.len() == MAX_PATH {
            break;
        }
        path.push(&*live.name);
        at = live.parent;
    }
    path.reverse();
    path
}

impl Forwarder {
    /// `process_label` becomes the `process` field (the type name, plus the
    /// worker index in a pool), `pid` the `pid` field; events go to
    /// `dispatch`, under `span`.
    pub(crate) fn new(
        process_label: String,
        pid: u32,
        dispatch: Dispatch,
        span: Span,
    ) -> Forwarder {
        let fixed = [
            Known::fixed(Level::INFO, OUTPUT_TARGET, &OUTPUT_NAMES),
            Known::fixed(Level::WARN, OUTPUT_TARGET, &OUTPUT_NAMES),
            Known::fixed(Level::WARN, NOTICE_TARGET, &["message"]),
        ];
        Forwarder {
            label: Mutex::new(process_label.into()),
            pid,
            dispatch,
            span,
            file: None,
            state: Mutex::new(State::default()),
            fixed: Mutex::new(fixed),
        }
    }

    /// Also writes every event to `<dir>/<name>-<pid>.log`, creating the
    /// directory if needed. In the file name, `::` becomes `.` and any
    /// character but letters, digits, `.`, `_` and `-` becomes `_`.
    pub(crate) fn with_log_dir(mut self, dir: &Path, name: &str) -> Result<Forwarder> {
        let path = dir.join(format!("{}-{}.log", file_stem(name), self.pid));
        let opened = std::fs::create_dir_all(dir)
            .and_then(|()| File::options().create(true).append(true).open(&path));
        let file = opened.map_err(|e| {
            let text = format!(
                "cannot open the log file {}: {e} (Config::log_dir must name a writable directory)",
                path.display()
            );
            Error::Io(std::io::Error::new(e.kind(), text))
        })?;
        let file = LogFile {
            out: BufWriter::new(file),
            held: VecDeque::new(),
        };
        self.file = Some((path, Mutex::new(file)));
        Ok(self)
    }

    /// The `process` field of the events re-emitted from now on.
    pub(crate) fn label(&self) -> Arc<str> {
        lock(&self.label).clone()
    }

    /// Changes the `process` field of the events re-emitted from now on (a
    /// pool worker moving on to another item type). The log file, if any,
    /// keeps its name.
    pub(crate) fn set_label(&self, label: &str) {
        let mut l = lock(&self.label);
        if **l != *label {
            *l = label.into();
        }
    }

    /// Re-emits every entry of one `LOG` frame, in order. Anything wrong
    /// in the payload is reported as a `warn` event (target
    /// `skprocess::log`); the entries before the bad bytes are kept.
    pub(crate) fn emit(&self, payload: &[u8]) {
        dispatcher::with_default(&self.dispatch, || {
            let mut file = self.file.as_ref().map(|f| lock(&f.1));
            let mut st = lock(&self.state);
            // The spans the child's threads were in at the end of the last
            // frame, entered again on this thread.
            for n in &st.entered {
                if let Some(id) = st.spans.get(n).and_then(|l| l.own.as_ref()) {
                    self.dispatch.enter(id);
                }
            }
            let mut rest = payload;
            while !rest.is_empty() {
                let entry = match postcard::take_from_bytes::<Entry<'_>>(rest) {
                    Ok((entry, tail)) => {
                        rest = tail;
                        entry
                    }
                    Err(e) => {
                        let text = format!(
                            "unreadable log frame from the child ({e}): its last {} bytes are lost",
                            rest.len()
                        );
                        self.notice(&text, file.as_deref_mut());
                        break;
                    }
                };
                if let Err(text) = self.entry(&mut st, entry, file.as_deref_mut()) {
                    self.notice(&text, file.as_deref_mut());
                }
            }
            for n in st.entered.iter().rev() {
                if let Some(id) = st.spans.get(n).and_then(|l| l.own.as_ref()) {
                    self.dispatch.exit(id);
                }
            }
            if let Some(f) = file.as_mut() {
                let _ = f.out.flush();
            }
        });
    }

    /// Handles one entry; `Err` says what was wrong with it.
    fn entry(
        &self,
        st: &mut State,
        entry: Entry<'_>,
        mut file: Option<&mut LogFile>,
    ) -> std::result::Result<(), String> {
        match entry {
            Entry::Shape(id, def) => {
                let known = Known::of(&def, None);
                self.define(st, id, known, def.level)
            }
            Entry::SpanShape(id, def) => {
                let known = Known::of(&def.shape, Some(def.name));
                self.define(st, id, known, def.shape.level)
            }
            Entry::Short(id, short) => {
                let State { shapes, spans, .. } = st;
                match shapes.get_mut(id as usize) {
                    Some(Some(known)) if known.span_name.is_none() => {
                        self.show(spans, known, &short, file)
                    }
                    Some(None) => Ok(()),
                    _ => Err(format!(
                        "a log event from the child refers to an unknown shape #{id}"
                    )),
                }
            }
            Entry::Event(def, short) => match Known::of(&def, None) {
                Some(mut known) => self.show(&st.spans, &mut known, &short, file),
                None => Err(unknown_level(def.level)),
            },
            Entry::Span(id, opened) => {
                let State {
                    shapes,
                    spans,
                    capped,
                    ..
                } = st;
                match shapes.get_mut(id as usize) {
                    Some(Some(known)) if known.span_name.is_some() => {
                        self.open(spans, capped, known, &opened)
                    }
                    Some(None) => Ok(()),
                    _ => Err(format!(
                        "a span from the child refers to an unknown shape #{id}"
                    )),
                }
            }
            Entry::SpanInline(def, opened) => match Known::of(&def.shape, Some(def.name)) {
                Some(mut known) => self.open(&mut st.spans, &mut st.capped, &mut known, &opened),
                None => Err(unknown_level(def.shape.level)),
            },
            Entry::Record(n, values) => {
                let Some(live) = st.spans.get(&n) else {
                    return Ok(());
                };
                if let (Some(id), Some(meta)) = (&live.own, live.meta) {
                    self.record(id, meta, &values)?;
                }
                Ok(())
            }
            Entry::Enter(n) => {
                if st.spans.contains_key(&n) && st.entered.len() < MAX_ENTERED {
                    st.entered.push(n);
                    if let Some(id) = &st.spans[&n].own {
                        self.dispatch.enter(id);
                    }
                }
                Ok(())
            }
            Entry::Exit(n) => {
                if let Some(i) = st.entered.iter().rposition(|&e| e == n) {
                    st.entered.remove(i);
                    if let Some(id) = &st.spans[&n].own {
                        self.dispatch.exit(id);
                    }
                }
                Ok(())
            }
            Entry::Close(n) => {
                let Some(live) = st.spans.remove(&n) else {
                    return Ok(());
                };
                if let Some(id) = live.own {
                    // A thread of the child that ended inside it: leave it.
                    while let Some(i) = st.entered.iter().rposition(|&e| e == n) {
                        st.entered.remove(i);
                        self.dispatch.exit(&id);
                    }
                    self.dispatch.try_close(id);
                } else {
                    st.entered.retain(|&e| e != n);
                }
                Ok(())
            }
            Entry::Mark(time) => {
                if let Some(f) = file.as_mut() {
                    f.release(time, true);
                }
                Ok(())
            }
        }
    }

    /// Records the definition of shape number `id`.
    fn define(
        &self,
        st: &mut State,
        id: u32,
        known: Option<Known>,
        level: u8,
    ) -> std::result::Result<(), String> {
        if id as usize != st.shapes.len() || st.shapes.len() >= MAX_SHAPES_PER_CHILD {
            return Err(format!(
                "the child defined log shape #{id} out of order; ignored"
            ));
        }
        let missing = known.is_none();
        st.shapes.push(known);
        match missing {
            true => Err(unknown_level(level)),
            false => Ok(()),
        }
    }

    /// Makes the span the child opened.
    fn open(
        &self,
        spans: &mut HashMap<u64, Live>,
        capped: &mut bool,
        known: &mut Known,
        opened: &Opened<'_>,
    ) -> std::result::Result<(), String> {
        if spans.contains_key(&opened.id) {
            return Err(format!(
                "the child opened span #{} twice; ignored",
                opened.id
            ));
        }
        if spans.len() >= MAX_LIVE_SPANS {
            if std::mem::replace(capped, true) {
                return Ok(());
            }
            return Err(format!(
                "the child has {MAX_LIVE_SPANS} spans open: the spans it opens past that are not \
                 made, what happens in them goes under the span current at start"
            ));
        }
        let parent = match opened.parent.and_then(|p| spans.get(&p)) {
            Some(live) => live.scope.clone(),
            None => self.span.id(),
        };
        let mut site = None;
        let own = match known.span_site() {
            Some(cs) if self.wanted(cs) => {
                site = Some(cs.meta());
                let meta = cs.meta();
                let n = known.names.len();
                let label = self.label();
                let mut held: Vec<Option<Held<'_>>> = (0..n).map(|_| None).collect();
                for &(i, v) in &opened.values {
                    if let Some(slot) = held.get_mut(i as usize) {
                        *slot = Some(Held::of(v));
                    }
                }
                held.push(Some(Held::S(&label)));
                held.push(Some(Held::U(u64::from(self.pid))));
                let refs: Vec<Option<&dyn tracing::Value>> = held
                    .iter()
                    .map(|h| h.as_ref().map(Held::as_value))
                    .collect();
                let set = meta.fields().value_set_all(&refs);
                let attrs = match &parent {
                    Some(p) => Attributes::child_of(p.clone(), meta, &set),
                    None => Attributes::new_root(meta, &set),
                };
                Some(self.dispatch.new_span(&attrs))
            }
            _ => None,
        };
        let name = known.span_name.clone().unwrap_or_else(|| "span".into());
        spans.insert(
            opened.id,
            Live {
                scope: own.clone().or(parent),
                own,
                meta: site,
                name,
                parent: opened.parent,
            },
        );
        Ok(())
    }

    /// Records values into a span made for the child.
    fn record(
        &self,
        id: &Id,
        meta: &'static Metadata<'static>,
        values: &[(u32, Value<'_>)],
    ) -> std::result::Result<(), String> {
        let n = meta.fields().len();
        let mut held: Vec<Option<Held<'_>>> = (0..n).map(|_| None).collect();
        for &(i, v) in values {
            // The last two fields are `process` and `pid`.
            match held.get_mut(i as usize).filter(|_| (i as usize) + 2 < n) {
                Some(slot) => *slot = Some(Held::of(v)),
                None => return Err(format!("the child recorded an unknown span field #{i}")),
            }
        }
        let refs: Vec<Option<&dyn tracing::Value>> = held
            .iter()
            .map(|h| h.as_ref().map(Held::as_value))
            .collect();
        let set = meta.fields().value_set_all(&refs);
        self.dispatch.record(id, &Record::new(&set));
        Ok(())
    }

    /// Whether the dispatcher takes what comes from `cs`.
    fn wanted(&self, cs: &'static DynCallsite) -> bool {
        cs.enabled_in(&self.dispatch)
    }

    /// Re-emits a line the child wrote to `stream`: `info` for stdout,
    /// `warn` for stderr, target `skprocess::output`, field `stream`. With
    /// no subscriber to take it, the line goes to the parent's own stream
    /// instead, whole (lines of several children never mix mid-line). The
    /// log file gets it once the events emitted before it are in.
    pub(crate) fn emit_line(&self, stream: Stream, line: &str) {
        if self.dispatch.is::<NoSubscriber>() {
            let mut whole = String::with_capacity(line.len() + 1);
            whole.push_str(line);
            whole.push('\n');
            let _ = match stream {
                Stream::Stdout => std::io::stdout().lock().write_all(whole.as_bytes()),
                Stream::Stderr => std::io::stderr().lock().write_all(whole.as_bytes()),
            };
        }
        let time = now_nanos();
        if let Some((_, f)) = &self.file {
            lock(f).held.push_back(HeldLine {
                time,
                stream,
                text: line.to_string(),
            });
        }
        let values = [Value::Debug(line), Value::Str(stream.name())];
        dispatcher::with_default(&self.dispatch, || {
            let mut fixed = lock(&self.fixed);
            let known = match stream {
                Stream::Stdout => &mut fixed[0],
                Stream::Stderr => &mut fixed[1],
            };
            self.dispatch_event(known, &values, self.span.id());
        });
    }

    /// When the oldest captured line held for the log file is due.
    pub(crate) fn held_until(&self) -> Option<Instant> {
        let (_, f) = self.file.as_ref()?;
        let oldest = lock(f).held.front()?.time;
        let due = UNIX_EPOCH + Duration::from_nanos(oldest) + HOLD;
        let left = due
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        Some(Instant::now() + left)
    }

    /// Writes the captured lines held for [`HOLD`] or longer.
    pub(crate) fn release_held(&self) {
        if let Some((_, f)) = &self.file {
            let mut f = lock(f);
            let upto = now_nanos().saturating_sub(HOLD.as_nanos() as u64);
            if f.held.front().is_some_and(|h| h.time <= upto) {
                f.release(upto, true);
                let _ = f.out.flush();
            }
        }
    }

    /// An event of skprocess's own about this child's logs.
    fn notice(&self, text: &str, file: Option<&mut LogFile>) {
        let values = [Value::Debug(text)];
        let mut fixed = lock(&self.fixed);
        if let Some(f) = file {
            f.event(now_nanos(), &fixed[2], &[], &values);
        }
        self.dispatch_event(&mut fixed[2], &values, self.span.id());
    }

    /// Writes one event to the file and the dispatcher.
    fn show(
        &self,
        spans: &HashMap<u64, Live>,
        known: &mut Known,
        short: &Short<'_>,
        file: Option<&mut LogFile>,
    ) -> std::result::Result<(), String> {
        if short.values.len() != known.names.len() {
            return Err(format!(
                "a log event from the child has {} values for its {} fields; dropped",
                short.values.len(),
                known.names.len()
            ));
        }
        if let Some(f) = file {
            f.event(short.time, known, &path(spans, short.span), &short.values);
        }
        let parent = match short.span.and_then(|n| spans.get(&n)) {
            Some(live) => live.scope.clone(),
            None => self.span.id(),
        };
        self.dispatch_event(known, &short.values, parent);
        Ok(())
    }

    /// Dispatches an event of shape `known`, under `parent`.
    fn dispatch_event(&self, known: &mut Known, values: &[Value<'_>], parent: Option<Id>) {
        match known.site() {
            Site::Direct(cs) => self.dispatch_values(cs, values, parent),
            Site::Folded(cs) => {
                let (message, rest) = fold_fields(&known.names, values);
                let values = [
                    Value::Debug(&message),
                    Value::Str(&known.target),
                    Value::Debug(&rest),
                ];
                self.dispatch_values(cs, &values, parent);
            }
        }
    }

    fn dispatch_values(&self, cs: &'static DynCallsite, values: &[Value<'_>], parent: Option<Id>) {
        if !self.wanted(cs) {
            return;
        }
        let meta = cs.meta();
        let n = values.len() + 2;
        let label = self.label();
        let mut held: Vec<Held<'_>> = Vec::with_capacity(n);
        held.extend(values.iter().map(|v| Held::of(*v)));
        held.push(Held::S(&label));
        held.push(Held::U(u64::from(self.pid)));
        const INLINE: usize = 24;
        if n <= INLINE {
            let mut refs: [Option<&dyn tracing::Value>; INLINE] = [None; INLINE];
            for (r, h) in refs.iter_mut().zip(&held) {
                *r = Some(h.as_value());
            }
            let set = meta.fields().value_set_all(&refs[..n]);
            self.dispatch
                .event(&Event::new_child_of(parent, meta, &set));
        } else {
            let refs: Vec<Option<&dyn tracing::Value>> =
                held.iter().map(|h| Some(h.as_value())).collect();
            let set = meta.fields().value_set_all(&refs);
            self.dispatch
                .event(&Event::new_child_of(parent, meta, &set));
        }
    }
}

impl Drop for Forwarder {
    /// The child has ended: its held lines go to the file, and the spans
    /// it left open (a killed child's) are closed.
    fn drop(&mut self) {
        if let Some((_, f)) = &self.file {
            let mut f = lock(f);
            f.release(u64::MAX, true);
            let _ = f.out.flush();
        }
        let st = std::mem::take(&mut *lock(&self.state));
        let mut open: Vec<(u64, Id)> = st
            .spans
            .into_iter()
            .filter_map(|(n, l)| Some((n, l.own?)))
            .collect();
        if open.is_empty() {
            return;
        }
        // Innermost (latest) first.
        open.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        dispatcher::with_default(&self.dispatch, || {
            for (_, id) in open {
                self.dispatch.try_close(id);
            }
        });
    }
}

fn unknown_level(level: u8) -> String {
    format!("a log event from the child had an unknown level {level}")
}

/// A shape the parent knows, and its callsite once made.
struct Known {
    level: Level,
    target: String,
    module_path: Option<String>,
    file: Option<String>,
    line: Option<u32>,
    names: Vec<String>,
    /// A span's shape: its name.
    span_name: Option<Arc<str>>,
    /// Refused a callsite of its own (overlong strings, too many fields).
    folded: bool,
    /// Its callsite, once made.
    site: Option<Site>,
}

#[derive(Clone, Copy)]
enum Site {
    /// A callsite of this very shape.
    Direct(&'static DynCallsite),
    /// The shape was refused a callsite: folded into a fixed one (events
    /// only; a span refused one is not made).
    Folded(&'static DynCallsite),
}

impl Known {
    /// `None` for an unknown level or an absurd number of fields. A shape
    /// with overlong strings is kept clipped, and folded.
    fn of(def: &ShapeDef<'_>, span_name: Option<&str>) -> Option<Known> {
        if def.names.len() > MAX_STORED_FIELDS {
            return None;
        }
        let folded = def.target.len() > MAX_TARGET
            || def.module_path.is_some_and(|m| m.len() > MAX_TARGET)
            || def.file.is_some_and(|f| f.len() > MAX_TARGET)
            || def.names.len() > MAX_FIELDS
            || def.names.iter().any(|n| n.len() > MAX_NAME)
            || span_name.is_some_and(|n| n.len() > MAX_NAME);
        Some(Known {
            level: level_of(def.level)?,
            target: clip(def.target, MAX_TARGET),
            module_path: def.module_path.map(|m| clip(m, MAX_TARGET)),
            file: def.file.map(|f| clip(f, MAX_TARGET)),
            line: def.line,
            names: def.names.iter().map(|n| clip(n, MAX_NAME)).collect(),
            span_name: span_name.map(|n| clip(n, MAX_NAME).into()),
            folded,
            site: None,
        })
    }

    fn fixed(level: Level, target: &str, names: &[&str]) -> Known {
        Known {
            level,
            target: target.to_string(),
            module_path: None,
            file: None,
            line: None,
            names: names.iter().map(|n| n.to_string()).collect(),
            span_name: None,
            folded: false,
            site: None,
        }
    }

    fn shape(&self) -> Shape<'_> {
        Shape {
            level: self.level,
            target: &self.target,
            module_path: self.module_path.as_deref(),
            file: self.file.as_deref(),
            line: self.line,
            names: &self.names,
            span_name: self.span_name.as_deref(),
        }
    }

    /// An event's callsite.
    fn site(&mut self) -> Site {
        if let Some(s) = self.site {
            return s;
        }
        let direct = if self.folded {
            None
        } else {
            callsite(&self.shape(), false)
        };
        let site = match direct {
            Some(cs) => Site::Direct(cs),
            None => {
                let names = FOLDED_NAMES.map(str::to_string);
                let folded = Shape {
                    level: self.level,
                    target: FOLDED_TARGET,
                    module_path: None,
                    file: None,
                    line: None,
                    names: &names,
                    span_name: None,
                };
                Site::Folded(callsite(&folded, true).expect("a forced callsite is always made"))
            }
        };
        self.site = Some(site);
        site
    }

    /// A span's callsite; `None` if refused one.
    fn span_site(&mut self) -> Option<&'static DynCallsite> {
        if let Some(Site::Direct(cs)) = self.site {
            return Some(cs);
        }
        if self.folded {
            return None;
        }
        let cs = callsite(&self.shape(), false);
        match cs {
            Some(cs) => self.site = Some(Site::Direct(cs)),
            None => self.folded = true,
        }
        cs
    }
}

const FOLDED_NAMES: [&str; 3] = ["message", "child_target", "fields"];

/// `s`, cut to at most `max` bytes (on a character boundary).
fn clip(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A process label as a file name.
fn file_stem(label: &str) -> String {
    label
        .replace("::", ".")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One line of a log file: `time LEVEL target: spans: message k=v ...`.
fn write_line(
    f: &mut impl Write,
    time: u64,
    level: Level,
    target: &str,
    spans: &[&str],
    names: &[impl AsRef<str>],
    values: &[Value<'_>],
) -> std::io::Result<()> {
    let time = UNIX_EPOCH + Duration::from_nanos(time);
    write!(
        f,
        "{} {:>5} {}: ",
        humantime::format_rfc3339_micros(time),
        level.as_str(),
        target
    )?;
    for s in spans {
        write!(f, "{s}:")?;
    }
    if !spans.is_empty() {
        write!(f, " ")?;
    }
    let fields = || names.iter().map(AsRef::as_ref).zip(values);
    let mut first = true;
    for (_, v) in fields().filter(|(n, _)| *n == "message") {
        write!(f, "{}", Shown(v, true))?;
        first = false;
    }
    for (name, v) in fields().filter(|(n, _)| *n != "message") {
        if !first {
            write!(f, " ")?;
        }
        write!(f, "{name}={}", Shown(v, false))?;
        first = false;
    }
    writeln!(f)
}

/// A value as `fmt` shows it: strings quoted, `Debug` text as it is (and a
/// message as plain text).
struct Shown<'a>(&'a Value<'a>, bool);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self.0 {
            Value::I64(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Str(s) if self.1 => f.write_str(s),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Debug(s) => f.write_str(s),
        }
    }
}

/// The message, and every other field as `k=v` text.
fn fold_fields(names: &[String], values: &[Value<'_>]) -> (String, String) {
    let mut message = String::new();
    let mut rest = String::new();
    for (name, v) in names.iter().zip(values) {
        if name == "message" && message.is_empty() {
            message = Shown(v, true).to_string();
        } else {
            if !rest.is_empty() {
                rest.push(' ');
            }
            rest.push_str(&format!("{name}={}", Shown(v, false)));
        }
    }
    (message, rest)
}

/// A field value in a form `tracing` can record.
enum Held<'a> {
    I(i64),
    U(u64),
    F(f64),
    B(bool),
    S(&'a str),
    D(DisplayValue<&'a str>),
}

impl<'a> Held<'a> {
    fn of(v: Value<'a>) -> Held<'a> {
        match v {
            Value::I64(v) => Held::I(v),
            Value::U64(v) => Held::U(v),
            Value::F64(v) => Held::F(v),
            Value::Bool(v) => Held::B(v),
            Value::Str(s) => Held::S(s),
            Value::Debug(s) => Held::D(tracing::field::display(s)),
        }
    }

    fn as_value(&self) -> &dyn tracing::Value {
        match self {
            Held::I(v) => v,
            Held::U(v) => v,
            Held::F(v) => v,
            Held::B(v) => v,
            Held::S(s) => s,
            Held::D(d) => d,
        }
    }
}
