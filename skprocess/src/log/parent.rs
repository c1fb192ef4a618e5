//! The parent's side: re-emitting a child's events into the dispatcher that
//! was current where the process was started.
//!
//! `tracing` events need a callsite: static metadata (level, target,
//! location, field names) registered with `tracing-core`, so that
//! subscribers can decide once whether they care. A child's events are only
//! known at run time, so callsites are made then: one per shape of event,
//! leaked (they must be `'static`), registered, and cached in a global map.
//! The child is this binary, so shapes are bounded by the binary's own
//! callsites; a peer sending endless new shapes is bounded by
//! [`MAX_CALLSITES`], past which events are folded into a few fixed shapes
//! (target `skprocess::child`, the original target and fields as text).

use super::child::filter_code;
use super::{level_code, level_of, Entry, ShapeDef, Short, Value};
use crate::error::{Error, Result};
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::field::DisplayValue;
use tracing::Span;
use tracing_core::callsite::{Callsite, Identifier};
use tracing_core::field::FieldSet;
use tracing_core::metadata::Kind;
use tracing_core::subscriber::{Interest, NoSubscriber};
use tracing_core::{dispatcher, Dispatch, Event, Level, LevelFilter, Metadata};

/// Most callsites made for children's events, over the life of the program.
pub(crate) const MAX_CALLSITES: usize = 4096;
const MAX_TARGET: usize = 256;
const MAX_NAME: usize = 128;
const MAX_FIELDS: usize = 64;

/// Target of the events skprocess itself emits about logging.
pub(crate) const NOTICE_TARGET: &str = "skprocess::log";
/// Target of captured standard output and error lines.
pub(crate) const OUTPUT_TARGET: &str = "skprocess::output";
/// Target of events whose shape could not get a callsite of its own.
pub(crate) const FOLDED_TARGET: &str = "skprocess::child";

const EXTRA: &[&str] = &["process", "pid"];
const EXTRA_SPANS: &[&str] = &["spans", "process", "pid"];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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

    /// A forwarder for one child, writing to `<log_dir>/<label>-<pid>.log`
    /// as well if `log_dir` is given.
    pub(crate) fn forwarder(
        &self,
        label: &str,
        pid: u32,
        log_dir: Option<&Path>,
    ) -> Result<Arc<Forwarder>> {
        let f = Forwarder::new(
            label.to_string(),
            pid,
            self.dispatch.clone(),
            self.span.clone(),
        );
        Ok(Arc::new(match log_dir {
            Some(dir) => f.with_log_dir(dir)?,
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
/// children of a span, with `process` and `pid` added; optionally writes
/// them to a file too. Safe to share between the thread reading the
/// control socket and the one reading the standard streams.
pub(crate) struct Forwarder {
    /// The `process` field; a pool worker's changes with the item it runs.
    label: Mutex<Arc<str>>,
    pid: u32,
    dispatch: Dispatch,
    span: Span,
    file: Option<(PathBuf, Mutex<BufWriter<File>>)>,
    /// The shapes the child has defined, by number (`None`: unusable).
    shapes: Mutex<Vec<Option<Known>>>,
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
            Known::fixed(Level::INFO, OUTPUT_TARGET, &["message", "stream"]),
            Known::fixed(Level::WARN, OUTPUT_TARGET, &["message", "stream"]),
            Known::fixed(Level::WARN, NOTICE_TARGET, &["message"]),
        ];
        Forwarder {
            label: Mutex::new(process_label.into()),
            pid,
            dispatch,
            span,
            file: None,
            shapes: Mutex::new(Vec::new()),
            fixed: Mutex::new(fixed),
        }
    }

    /// Also writes every event to `<dir>/<process>-<pid>.log`, creating the
    /// directory if needed. In the file name, `::` becomes `.` and any
    /// character but letters, digits, `.`, `_` and `-` becomes `_`.
    pub(crate) fn with_log_dir(mut self, dir: &Path) -> Result<Forwarder> {
        let path = dir.join(format!("{}-{}.log", file_stem(&self.label()), self.pid));
        let opened = std::fs::create_dir_all(dir)
            .and_then(|()| File::options().create(true).append(true).open(&path));
        let file = opened.map_err(|e| {
            let text = format!(
                "cannot open the log file {}: {e} (Config::log_dir must name a writable directory)",
                path.display()
            );
            Error::Io(std::io::Error::new(e.kind(), text))
        })?;
        self.file = Some((path, Mutex::new(BufWriter::new(file))));
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

    /// Re-emits every event of one `LOG` frame, in order. Anything wrong
    /// in the payload is reported as a `warn` event (target
    /// `skprocess::log`); the events before the bad bytes are kept.
    pub(crate) fn emit(&self, payload: &[u8]) {
        dispatcher::with_default(&self.dispatch, || {
            let mut file = self.file.as_ref().map(|f| lock(&f.1));
            let mut shapes = lock(&self.shapes);
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
                match entry {
                    Entry::Shape(id, def) => {
                        if id as usize != shapes.len() || shapes.len() >= MAX_SHAPES_PER_CHILD {
                            let text =
                                format!("the child defined log shape #{id} out of order; ignored");
                            self.notice(&text, file.as_deref_mut());
                            continue;
                        }
                        let known = Known::of(&def);
                        if known.is_none() {
                            let text = format!(
                                "a log event from the child had an unknown level {}",
                                def.level
                            );
                            self.notice(&text, file.as_deref_mut());
                        }
                        shapes.push(known);
                    }
                    Entry::Short(id, short) => match shapes.get_mut(id as usize) {
                        Some(Some(known)) => self.show(known, &short, file.as_deref_mut()),
                        Some(None) => {}
                        None => {
                            let text = format!(
                                "a log event from the child refers to an unknown shape #{id}"
                            );
                            self.notice(&text, file.as_deref_mut());
                        }
                    },
                    Entry::Event(def, short) => match Known::of(&def) {
                        Some(mut known) => self.show(&mut known, &short, file.as_deref_mut()),
                        None => {
                            let text = format!(
                                "a log event from the child had an unknown level {}",
                                def.level
                            );
                            self.notice(&text, file.as_deref_mut());
                        }
                    },
                }
            }
            if let Some(f) = file.as_mut() {
                let _ = f.flush();
            }
        });
    }

    /// Re-emits a line the child wrote to `stream`: `info` for stdout,
    /// `warn` for stderr, target `skprocess::output`, field `stream`. With
    /// no subscriber to take it, the line goes to the parent's own stream
    /// instead, whole (lines of several children never mix mid-line).
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
        let short = Short {
            time: now_nanos(),
            spans: Vec::new(),
            values: vec![Value::Debug(line), Value::Str(stream.name())],
        };
        dispatcher::with_default(&self.dispatch, || {
            let mut file = self.file.as_ref().map(|f| lock(&f.1));
            let mut fixed = lock(&self.fixed);
            let known = match stream {
                Stream::Stdout => &mut fixed[0],
                Stream::Stderr => &mut fixed[1],
            };
            self.show(known, &short, file.as_deref_mut());
            if let Some(f) = file.as_mut() {
                let _ = f.flush();
            }
        });
    }

    /// An event of skprocess's own about this child's logs.
    fn notice(&self, text: &str, file: Option<&mut BufWriter<File>>) {
        let short = Short {
            time: now_nanos(),
            spans: Vec::new(),
            values: vec![Value::Debug(text)],
        };
        let mut fixed = lock(&self.fixed);
        self.show(&mut fixed[2], &short, file);
    }

    /// Writes one event to the file and the dispatcher.
    fn show(&self, known: &mut Known, short: &Short<'_>, file: Option<&mut BufWriter<File>>) {
        if short.values.len() != known.names.len() {
            let text = format!(
                "a log event from the child has {} values for its {} fields; dropped",
                short.values.len(),
                known.names.len()
            );
            // (Never one of the fixed shapes, which `notice` locks.)
            self.notice(&text, file);
            return;
        }
        if let Some(f) = file {
            let _ = write_line(f, known, short);
        }
        let spans = (!short.spans.is_empty()).then(|| short.spans.join(":"));
        match known.site(spans.is_some()) {
            Site::Direct(cs) => self.dispatch_event(cs, &short.values, spans.as_deref()),
            Site::Folded(cs) => {
                let (message, rest) = fold_fields(&known.names, &short.values, spans.as_deref());
                let values = [
                    Value::Debug(&message),
                    Value::Str(&known.target),
                    Value::Debug(&rest),
                ];
                self.dispatch_event(cs, &values, None);
            }
        }
    }

    fn dispatch_event(&self, cs: &'static DynCallsite, values: &[Value<'_>], spans: Option<&str>) {
        let interest = cs.interest.load(Ordering::Relaxed);
        if interest == NEVER {
            return;
        }
        let meta = cs.meta();
        if interest != ALWAYS && !self.dispatch.enabled(meta) {
            return;
        }
        let n = values.len() + 2 + usize::from(spans.is_some());
        let label = self.label();
        let mut held: Vec<Held<'_>> = Vec::with_capacity(n);
        held.extend(values.iter().map(|v| Held::of(*v)));
        if let Some(s) = spans {
            held.push(Held::S(s));
        }
        held.push(Held::S(&label));
        held.push(Held::U(u64::from(self.pid)));
        const INLINE: usize = 24;
        if n <= INLINE {
            let mut refs: [Option<&dyn tracing::Value>; INLINE] = [None; INLINE];
            for (r, h) in refs.iter_mut().zip(&held) {
                *r = Some(h.as_value());
            }
            self.dispatch_values(meta, &refs[..n]);
        } else {
            let refs: Vec<Option<&dyn tracing::Value>> =
                held.iter().map(|h| Some(h.as_value())).collect();
            self.dispatch_values(meta, &refs);
        }
    }

    fn dispatch_values(
        &self,
        meta: &'static Metadata<'static>,
        values: &[Option<&dyn tracing::Value>],
    ) {
        let set = meta.fields().value_set_all(values);
        let event = Event::new_child_of(self.span.id(), meta, &set);
        self.dispatch.event(&event);
    }
}

/// A shape the parent knows, and its callsites once made.
struct Known {
    level: Level,
    target: String,
    module_path: Option<String>,
    file: Option<String>,
    line: Option<u32>,
    names: Vec<String>,
    /// Refused a callsite of its own (overlong strings, too many fields).
    folded: bool,
    /// The callsite without and with the `spans` field, once made.
    sites: [Option<Site>; 2],
}

#[derive(Clone, Copy)]
enum Site {
    /// A callsite of this very shape.
    Direct(&'static DynCallsite),
    /// The shape was refused a callsite: folded into a fixed one.
    Folded(&'static DynCallsite),
}

impl Known {
    /// `None` for an unknown level or an absurd number of fields. A shape
    /// with overlong strings is kept clipped, and folded.
    fn of(def: &ShapeDef<'_>) -> Option<Known> {
        if def.names.len() > MAX_STORED_FIELDS {
            return None;
        }
        let folded = def.target.len() > MAX_TARGET
            || def.module_path.is_some_and(|m| m.len() > MAX_TARGET)
            || def.file.is_some_and(|f| f.len() > MAX_TARGET)
            || def.names.len() > MAX_FIELDS
            || def.names.iter().any(|n| n.len() > MAX_NAME);
        Some(Known {
            level: level_of(def.level)?,
            target: clip(def.target, MAX_TARGET),
            module_path: def.module_path.map(|m| clip(m, MAX_TARGET)),
            file: def.file.map(|f| clip(f, MAX_TARGET)),
            line: def.line,
            names: def.names.iter().map(|n| clip(n, MAX_NAME)).collect(),
            folded,
            sites: [None, None],
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
            folded: false,
            sites: [None, None],
        }
    }

    fn site(&mut self, spanned: bool) -> Site {
        if let Some(s) = self.sites[usize::from(spanned)] {
            return s;
        }
        let shape = Shape {
            level: self.level,
            target: &self.target,
            module_path: self.module_path.as_deref(),
            file: self.file.as_deref(),
            line: self.line,
            names: &self.names,
            extra: if spanned { EXTRA_SPANS } else { EXTRA },
        };
        let direct = if self.folded {
            None
        } else {
            callsite(&shape, false)
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
                    extra: EXTRA,
                };
                Site::Folded(callsite(&folded, true).expect("a forced callsite is always made"))
            }
        };
        self.sites[usize::from(spanned)] = Some(site);
        site
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
fn write_line(f: &mut impl Write, known: &Known, short: &Short<'_>) -> std::io::Result<()> {
    let time = UNIX_EPOCH + Duration::from_nanos(short.time);
    write!(
        f,
        "{} {:>5} {}: ",
        humantime::format_rfc3339_micros(time),
        known.level.as_str(),
        known.target
    )?;
    for s in &short.spans {
        write!(f, "{s}:")?;
    }
    if !short.spans.is_empty() {
        write!(f, " ")?;
    }
    let fields = || known.names.iter().zip(&short.values);
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

/// The message, and every other field (and the spans) as `k=v` text.
fn fold_fields(names: &[String], values: &[Value<'_>], spans: Option<&str>) -> (String, String) {
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
    if let Some(s) = spans {
        if !rest.is_empty() {
            rest.push(' ');
        }
        rest.push_str(&format!("spans={s}"));
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

// ---------------------------------------------------------------------------
// Callsites made at run time.

const NEVER: u8 = 0;
const SOMETIMES: u8 = 1;
const ALWAYS: u8 = 2;

/// A callsite for one shape of child event.
pub(crate) struct DynCallsite {
    meta: OnceLock<Metadata<'static>>,
    interest: AtomicU8,
}

impl DynCallsite {
    fn meta(&'static self) -> &'static Metadata<'static> {
        self.meta
            .get()
            .expect("the metadata is set before the callsite is shared")
    }
}

impl Callsite for DynCallsite {
    fn set_interest(&self, interest: Interest) {
        let v = if interest.is_never() {
            NEVER
        } else if interest.is_always() {
            ALWAYS
        } else {
            SOMETIMES
        };
        self.interest.store(v, Ordering::Relaxed);
    }

    fn metadata(&self) -> &Metadata<'_> {
        self.meta
            .get()
            .expect("the metadata is set before the callsite is registered")
    }
}

/// What tells two callsites apart.
struct Shape<'a> {
    level: Level,
    target: &'a str,
    module_path: Option<&'a str>,
    file: Option<&'a str>,
    line: Option<u32>,
    names: &'a [String],
    extra: &'static [&'static str],
}

impl Shape<'_> {
    fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.names
            .iter()
            .map(String::as_str)
            .chain(self.extra.iter().copied())
    }

    fn key(&self) -> u64 {
        let mut h = DefaultHasher::new();
        level_code(&self.level).hash(&mut h);
        self.target.hash(&mut h);
        self.module_path.hash(&mut h);
        self.file.hash(&mut h);
        self.line.hash(&mut h);
        for n in self.names() {
            n.hash(&mut h);
        }
        h.finish()
    }

    fn matches(&self, m: &Metadata<'_>) -> bool {
        *m.level() == self.level
            && m.target() == self.target
            && m.module_path() == self.module_path
            && m.file() == self.file
            && m.line() == self.line
            && m.fields().len() == self.names.len() + self.extra.len()
            && m.fields().iter().map(|f| f.name()).eq(self.names())
    }

    fn reasonable(&self) -> bool {
        self.target.len() <= MAX_TARGET
            && self.module_path.is_none_or(|m| m.len() <= MAX_TARGET)
            && self.file.is_none_or(|f| f.len() <= MAX_TARGET)
            && self.names.len() <= MAX_FIELDS
            && self.names.iter().all(|n| n.len() <= MAX_NAME)
    }
}

#[derive(Default)]
struct Cache {
    by_key: HashMap<u64, Vec<&'static DynCallsite>>,
    count: usize,
    strings: HashSet<&'static str>,
}

impl Cache {
    fn intern(&mut self, s: &str) -> &'static str {
        if let Some(&k) = self.strings.get(s) {
            return k;
        }
        let k: &'static str = Box::leak(s.to_owned().into_boxed_str());
        self.strings.insert(k);
        k
    }
}

static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();

/// The callsite of `shape`, made and registered on first use. `None` if
/// the shape is unreasonable or the cache is full, unless `force`.
fn callsite(shape: &Shape<'_>, force: bool) -> Option<&'static DynCallsite> {
    let key = shape.key();
    let mut cache = lock(CACHE.get_or_init(Default::default));
    if let Some(found) = cache
        .by_key
        .get(&key)
        .and_then(|v| v.iter().find(|cs| shape.matches(cs.meta())))
    {
        return Some(found);
    }
    if !force && (cache.count >= MAX_CALLSITES || !shape.reasonable()) {
        return None;
    }
    let names: Vec<&'static str> = shape.names().map(|n| cache.intern(n)).collect();
    let names: &'static [&'static str] = Box::leak(names.into_boxed_slice());
    let target = cache.intern(shape.target);
    let module_path = shape.module_path.map(|m| cache.intern(m));
    let file = shape.file.map(|f| cache.intern(f));
    let name = match (file, shape.line) {
        (Some(f), Some(l)) => cache.intern(&format!("event {f}:{l}")),
        _ => "event from a child process",
    };
    let cs: &'static DynCallsite = Box::leak(Box::new(DynCallsite {
        meta: OnceLock::new(),
        interest: AtomicU8::new(SOMETIMES),
    }));
    let fields = FieldSet::new(names, Identifier(cs));
    let meta = Metadata::new(
        name,
        target,
        shape.level,
        file,
        shape.line,
        module_path,
        fields,
        Kind::EVENT,
    );
    let _ = cs.meta.set(meta);
    tracing_core::callsite::register(cs);
    cache.by_key.entry(key).or_default().push(cs);
    cache.count += 1;
    Some(cs)
}

/// Whether a callsite was made with this target (for tests).
#[cfg(test)]
pub(crate) fn has_callsite_for(target: &str) -> bool {
    CACHE.get().is_some_and(|c| {
        lock(c)
            .by_key
            .values()
            .flatten()
            .any(|cs| cs.meta().target() == target)
    })
}
