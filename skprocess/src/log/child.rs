//! The child's side: a `tracing` layer that encodes each event, and what
//! happens to each span (opened, values recorded, entered, exited,
//! closed), into one per-process buffer (the funnel), sent to the parent as
//! `LOG` frames. Records of the `log` crate become `tracing` events first
//! (`tracing-log`), so they take the same way.
//!
//! A hook that logs only formats and copies: one thread-local scratch
//! buffer per thread holds the event's text while it is encoded, then a
//! short lock appends the bytes to the shared buffer. The socket is written
//! by a flusher thread (started on the first event) when the buffer passes
//! [`Limits::batch`] or [`Limits::latency`] after its first event, and by
//! [`flush`] where order with other frames matters (before `tell`, before
//! the result, at exit). The flush lock is taken before the buffer is
//! swapped out and held until the frame is written, so frames leave in the
//! order their events were buffered, whichever thread sends them. Past
//! [`Limits::cap`] buffered bytes, appenders wait for room.
//!
//! An event's shape (its callsite and which of its fields are present; for
//! a `log` record, its level, target and location) and a span's (its
//! callsite) are numbered under the buffer lock the first time they are
//! appended, the definition written just before, so every use of a number
//! follows its definition in the stream.
//!
//! A span is sent with a number of its own (kept in its extensions), the
//! number of the nearest sent span it is in, and its values. At most
//! [`MAX_LIVE_SPANS`] are open at once per child: a span opened past that
//! is not sent, and what happens in it goes to the nearest sent span it is
//! in.

use super::{level_code, Setup, Value};
use crate::proto::kind;
use crate::wire::Writer;
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::subscriber::Interest;
use tracing_core::{Event, LevelFilter, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// When the funnel sends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Send once this many bytes are buffered.
    pub(crate) batch: usize,
    /// Send at most this long after the first buffered event.
    pub(crate) latency: Duration,
    /// Past this many buffered bytes (the parent not reading as fast),
    /// appenders wait for room.
    pub(crate) cap: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            batch: 16 * 1024,
            latency: Duration::from_millis(20),
            cap: 1 << 20,
        }
    }
}

static FUNNEL: OnceLock<Arc<Funnel>> = OnceLock::new();

/// In a child, before the first hook: installs the funnel as the global
/// default subscriber, unless the parent asked for nothing (`setup` level
/// 0). Without a setup frame every level is sent.
pub(crate) fn install_child(setup: Option<&[u8]>, writer: Writer) {
    let level = match setup.map(postcard::from_bytes::<Setup>) {
        Some(Ok(s)) => level_filter(s.level),
        _ => LevelFilter::TRACE,
    };
    if level == LevelFilter::OFF {
        return;
    }
    let funnel = Arc::new(Funnel::new(writer, Limits::default()));
    if FUNNEL.set(funnel.clone()).is_err() {
        return;
    }
    let subscriber = tracing_subscriber::registry().with(FunnelLayer::new(funnel, level));
    // Fails only if something before `main` set one: then that one wins.
    if tracing_core::dispatcher::set_global_default(tracing_core::Dispatch::new(subscriber))
        .is_err()
    {
        return;
    }
    // Records of the `log` crate become events of the funnel. The `log`
    // facade takes one logger per process: if one is already set, it stays
    // (and a hook that sets its own later gets an `Err` from `log`).
    let _ = tracing_log::LogTracer::builder()
        .with_max_level(log_filter(level))
        .init();
}

/// `level` as the `log` crate spells it.
fn log_filter(level: LevelFilter) -> log::LevelFilter {
    match level {
        LevelFilter::OFF => log::LevelFilter::Off,
        LevelFilter::ERROR => log::LevelFilter::Error,
        LevelFilter::WARN => log::LevelFilter::Warn,
        LevelFilter::INFO => log::LevelFilter::Info,
        LevelFilter::DEBUG => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

/// Sends every buffered event now (no-op outside a child, or if nothing is
/// buffered). Returns once they are written to the socket.
pub(crate) fn flush() {
    if let Some(f) = FUNNEL.get() {
        f.flush();
    }
}

fn level_filter(code: u8) -> LevelFilter {
    match code {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// The code [`level_filter`] reads.
pub(crate) fn filter_code(f: LevelFilter) -> u8 {
    match f {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => 1,
        LevelFilter::WARN => 2,
        LevelFilter::INFO => 3,
        LevelFilter::DEBUG => 4,
        _ => 5,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------
// The funnel.

/// Most shapes a child numbers; more are sent inline.
pub(crate) const MAX_SHAPES: usize = 16 * 1024;

/// Most spans of one child sent and not closed yet; a span opened past
/// that is not sent.
pub(crate) const MAX_LIVE_SPANS: usize = 1024;

/// Entry tags, as postcard writes the variants of `super::Entry`.
struct Tags {
    /// Defines a shape.
    define: u8,
    /// Uses a numbered shape.
    numbered: u8,
    /// Has its shape inline.
    inline: u8,
}
const EVENT_TAGS: Tags = Tags {
    define: 1,
    numbered: 2,
    inline: 0,
};
const SPAN_TAGS: Tags = Tags {
    define: 3,
    numbered: 4,
    inline: 5,
};
const TAG_RECORD: u8 = 6;
const TAG_ENTER: u8 = 7;
const TAG_EXIT: u8 = 8;
const TAG_CLOSE: u8 = 9;
const TAG_MARK: u8 = 10;

/// What the flusher thread is doing, so that appenders wake it only when
/// it waits for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flusher {
    /// Not started yet.
    Absent,
    /// Could not be started: appenders send full batches themselves.
    Failed,
    /// Waiting for a first event.
    Idle,
    /// Holding a non-empty buffer until it fills or its time is up.
    Gathering,
    /// Told to go on; or sending.
    Busy,
}

/// What tells one shape from another.
#[derive(Debug)]
pub(crate) enum Key<'a> {
    /// Not to be numbered: the shape goes inline.
    Inline,
    /// A callsite (the address of its metadata) and which of its fields
    /// are present.
    Site(usize, u64),
    /// A `log` record's level, target and location.
    Log(LogShape<'a>),
}

/// The shape of a `log` record: what it has in common with the other
/// records of its place (all records share one `tracing` callsite per
/// level, so the callsite cannot tell them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct LogShape<'a> {
    level: u8,
    target: &'a str,
    module_path: Option<&'a str>,
    file: Option<&'a str>,
    line: Option<u32>,
    /// Which fields are present (of the `message` alone, in practice).
    mask: u64,
}

impl LogShape<'_> {
    fn hash_key(&self) -> u64 {
        let mut h = KeyHasher::default();
        self.hash(&mut h);
        h.finish()
    }

    fn keep(self) -> OwnedLogShape {
        OwnedLogShape {
            level: self.level,
            target: self.target.into(),
            module_path: self.module_path.map(Into::into),
            file: self.file.map(Into::into),
            line: self.line,
            mask: self.mask,
        }
    }
}

#[derive(Debug)]
struct OwnedLogShape {
    level: u8,
    target: Box<str>,
    module_path: Option<Box<str>>,
    file: Option<Box<str>>,
    line: Option<u32>,
    mask: u64,
}

impl OwnedLogShape {
    fn is(&self, s: &LogShape<'_>) -> bool {
        self.level == s.level
            && *self.target == *s.target
            && self.module_path.as_deref() == s.module_path
            && self.file.as_deref() == s.file
            && self.line == s.line
            && self.mask == s.mask
    }
}

/// How a shape is to be written.
enum Numbered {
    /// Defined earlier under this number.
    Known(u32),
    /// Numbered now: define it first.
    New(u32),
    /// Sent inline.
    Inline,
}

#[derive(Debug)]
struct Pending {
    buf: Vec<u8>,
    flusher: Flusher,
    /// Appenders waiting for room.
    waiting: usize,
    /// Shapes numbered so far; each number's definition is in an earlier
    /// entry of the stream than any use of it.
    shapes: HashMap<(usize, u64), u32, BuildHasherDefault<KeyHasher>>,
    /// The shapes of `log` records, by the hash of their [`LogShape`].
    log_shapes: HashMap<u64, Vec<(OwnedLogShape, u32)>, BuildHasherDefault<KeyHasher>>,
    /// The next shape number.
    next_shape: u32,
}

impl Pending {
    fn number(&mut self, key: &Key<'_>) -> Numbered {
        let next = self.next_shape;
        let room = (next as usize) < MAX_SHAPES;
        let id = match key {
            Key::Inline => return Numbered::Inline,
            Key::Site(site, mask) => match self.shapes.get(&(*site, *mask)) {
                Some(&id) => return Numbered::Known(id),
                None if room => {
                    self.shapes.insert((*site, *mask), next);
                    next
                }
                None => return Numbered::Inline,
            },
            Key::Log(shape) => {
                let h = shape.hash_key();
                let bucket = self.log_shapes.get(&h);
                if let Some(&(_, id)) = bucket.and_then(|b| b.iter().find(|(o, _)| o.is(shape))) {
                    return Numbered::Known(id);
                }
                if !room {
                    return Numbered::Inline;
                }
                self.log_shapes
                    .entry(h)
                    .or_default()
                    .push((shape.keep(), next));
                next
            }
        };
        self.next_shape += 1;
        Numbered::New(id)
    }
}

#[derive(Debug)]
struct Outbox {
    writer: Writer,
    /// The buffer being sent; swapped with the pending one.
    spare: Vec<u8>,
    /// The parent is gone: drop everything.
    broken: bool,
}

/// One process's buffer of encoded events and the means to send it.
#[derive(Debug)]
pub(crate) struct Funnel {
    pending: Mutex<Pending>,
    /// Wakes the flusher thread.
    wake: Condvar,
    /// Wakes appenders waiting for room.
    room: Condvar,
    out: Mutex<Outbox>,
    limits: Limits,
    /// The last span number given.
    span_numbers: AtomicU64,
    /// Spans sent and not closed yet.
    live_spans: AtomicUsize,
}

impl Funnel {
    pub(crate) fn new(writer: Writer, limits: Limits) -> Funnel {
        Funnel {
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                flusher: Flusher::Absent,
                waiting: 0,
                shapes: HashMap::default(),
                log_shapes: HashMap::default(),
                next_shape: 0,
            }),
            wake: Condvar::new(),
            room: Condvar::new(),
            out: Mutex::new(Outbox {
                writer,
                spare: Vec::new(),
                broken: false,
            }),
            limits,
            span_numbers: AtomicU64::new(0),
            live_spans: AtomicUsize::new(0),
        }
    }

    /// Appends one event of shape `key`: `body` is its encoded [`super::Short`],
    /// `def` encodes its [`super::ShapeDef`] (called only when the shape is
    /// new or cannot be numbered).
    pub(crate) fn push(self: &Arc<Self>, key: &Key<'_>, def: impl Fn(&mut Vec<u8>), body: &[u8]) {
        self.push_shaped(key, &EVENT_TAGS, def, body);
    }

    /// Appends an entry of shape `key` (an event's or a span's, as `tags`
    /// say).
    fn push_shaped(
        self: &Arc<Self>,
        key: &Key<'_>,
        tags: &Tags,
        def: impl Fn(&mut Vec<u8>),
        body: &[u8],
    ) {
        let mut p = self.room_for(lock(&self.pending), body.len() + 8);
        match p.number(key) {
            Numbered::Known(id) => {
                p.buf.push(tags.numbered);
                push_varint(&mut p.buf, u64::from(id));
            }
            Numbered::New(id) => {
                p.buf.push(tags.define);
                push_varint(&mut p.buf, u64::from(id));
                def(&mut p.buf);
                p.buf.push(tags.numbered);
                push_varint(&mut p.buf, u64::from(id));
            }
            Numbered::Inline => {
                p.buf.push(tags.inline);
                def(&mut p.buf);
            }
        }
        p.buf.extend_from_slice(body);
        self.appended(p);
    }

    /// Appends an entry about span `span`: `tag`, the number, then `rest`.
    fn push_span_op(self: &Arc<Self>, tag: u8, span: u64, rest: &[u8]) {
        let mut p = self.room_for(lock(&self.pending), rest.len() + 11);
        p.buf.push(tag);
        push_varint(&mut p.buf, span);
        p.buf.extend_from_slice(rest);
        self.appended(p);
    }

    /// A number for a span about to be sent, unless [`MAX_LIVE_SPANS`] are
    /// open.
    fn open_span(&self) -> Option<u64> {
        let live = self.live_spans.fetch_add(1, Ordering::Relaxed);
        if live >= MAX_LIVE_SPANS {
            self.live_spans.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(self.span_numbers.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Waits while the buffer is over its cap (back-pressure).
    fn room_for<'a>(
        &'a self,
        mut p: MutexGuard<'a, Pending>,
        need: usize,
    ) -> MutexGuard<'a, Pending> {
        while !p.buf.is_empty() && p.buf.len() + need > self.limits.cap {
            match p.flusher {
                Flusher::Failed | Flusher::Absent => {
                    drop(p);
                    self.flush();
                    p = lock(&self.pending);
                    continue;
                }
                Flusher::Idle | Flusher::Gathering => {
                    p.flusher = Flusher::Busy;
                    self.wake.notify_one();
                }
                Flusher::Busy => {}
            }
            p.waiting += 1;
            p = self.room.wait(p).unwrap_or_else(|e| e.into_inner());
            p.waiting -= 1;
        }
        p
    }

    /// After an append: wakes or starts the flusher as needed.
    fn appended(self: &Arc<Self>, mut p: MutexGuard<'_, Pending>) {
        let full = p.buf.len() >= self.limits.batch;
        match p.flusher {
            Flusher::Absent => {
                p.flusher = Flusher::Busy;
                drop(p);
                self.start_flusher();
            }
            Flusher::Idle => {
                p.flusher = Flusher::Busy;
                drop(p);
                self.wake.notify_one();
            }
            Flusher::Gathering if full => {
                p.flusher = Flusher::Busy;
                drop(p);
                self.wake.notify_one();
            }
            Flusher::Failed if full => {
                drop(p);
                self.flush();
            }
            _ => {}
        }
    }

    fn start_flusher(self: &Arc<Self>) {
        let me = self.clone();
        let started = std::thread::Builder::new()
            .name("skprocess-log".into())
            .stack_size(64 * 1024)
            .spawn(move || me.flusher_loop());
        if started.is_err() {
            lock(&self.pending).flusher = Flusher::Failed;
        }
    }

    fn flusher_loop(&self) {
        let mut p = lock(&self.pending);
        loop {
            while p.buf.is_empty() {
                p.flusher = Flusher::Idle;
                p = self.wake.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            // Gather until the batch is full, the latency is up, or an
            // appender needs room (it sets `Busy`).
            p.flusher = Flusher::Gathering;
            let deadline = Instant::now() + self.limits.latency;
            while p.buf.len() < self.limits.batch
                && p.waiting == 0
                && p.flusher == Flusher::Gathering
            {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                p = self
                    .wake
                    .wait_timeout(p, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            p.flusher = Flusher::Busy;
            drop(p);
            self.flush();
            p = lock(&self.pending);
        }
    }

    /// Sends what is buffered, after any frame being sent now.
    pub(crate) fn flush(&self) {
        let mut out = lock(&self.out);
        let mut p = lock(&self.pending);
        if p.buf.is_empty() {
            return;
        }
        let out = &mut *out;
        std::mem::swap(&mut p.buf, &mut out.spare);
        let waiting = p.waiting > 0;
        drop(p);
        out.spare.push(TAG_MARK);
        push_varint(&mut out.spare, now_nanos());
        if waiting {
            self.room.notify_all();
        }
        if !out.broken && out.writer.send(kind::LOG, &out.spare, &[]).is_err() {
            out.broken = true;
        }
        out.spare.clear();
        if out.spare.capacity() > self.limits.batch.saturating_mul(4) {
            out.spare = Vec::new();
        }
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Appends `v` as postcard writes a `u32` or a `u64` (LEB128).
fn push_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Hashes a shape's key (a callsite address and a bit mask, or a few
/// short strings) cheaply.
#[derive(Debug, Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

// ---------------------------------------------------------------------------
// Encoding, with the layout of `super::ShapeDef`, `super::Short`,
// `super::SpanDef` and `super::Opened`.

#[derive(Serialize)]
struct ShapeDefOut<'a, N: Serialize> {
    level: u8,
    target: &'a str,
    module_path: Option<&'a str>,
    file: Option<&'a str>,
    line: Option<u32>,
    names: N,
}

impl<'a, N: Serialize> ShapeDefOut<'a, N> {
    fn of(meta: &'a Metadata<'a>, names: N) -> Self {
        ShapeDefOut {
            level: level_code(meta.level()),
            target: meta.target(),
            module_path: meta.module_path(),
            file: meta.file(),
            line: meta.line(),
            names,
        }
    }
}

#[derive(Serialize)]
struct SpanDefOut<'a> {
    name: &'a str,
    shape: ShapeDefOut<'a, AllNames<'a>>,
}

#[derive(Serialize)]
struct ShortOut<'a> {
    time: u64,
    span: Option<u64>,
    values: ValuesOut<'a>,
}

#[derive(Serialize)]
struct OpenedOut<'a> {
    id: u64,
    parent: Option<u64>,
    values: IndexedOut<'a>,
}

/// A field as visited: text values are ranges of [`Scratch::text`].
#[derive(Debug, Clone, Copy)]
enum Slot {
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
    Str(usize, usize),
    Debug(usize, usize),
}

/// A visited field: its name, its index in its callsite, its value.
type Visited = (&'static str, u32, Slot);

/// The names of the visited fields.
struct NamesOut<'a>(&'a [Visited]);

impl Serialize for NamesOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for (name, _, _) in self.0 {
            seq.serialize_element(name)?;
        }
        seq.end()
    }
}

/// Every field name of a callsite.
struct AllNames<'a>(&'a tracing_core::field::FieldSet);

impl Serialize for AllNames<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for f in self.0.iter() {
            seq.serialize_element(f.name())?;
        }
        seq.end()
    }
}

impl Slot {
    fn value<'a>(self, text: &'a str) -> Value<'a> {
        match self {
            Slot::I64(v) => Value::I64(v),
            Slot::U64(v) => Value::U64(v),
            Slot::F64(v) => Value::F64(v),
            Slot::Bool(v) => Value::Bool(v),
            Slot::Str(a, b) => Value::Str(&text[a..b]),
            Slot::Debug(a, b) => Value::Debug(&text[a..b]),
        }
    }
}

/// The values of the visited fields.
struct ValuesOut<'a> {
    list: &'a [Visited],
    text: &'a str,
}

impl Serialize for ValuesOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.list.len()))?;
        for &(_, _, slot) in self.list {
            seq.serialize_element(&slot.value(self.text))?;
        }
        seq.end()
    }
}

/// The visited fields as (index, value) pairs.
struct IndexedOut<'a>(ValuesOut<'a>);

impl Serialize for IndexedOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.list.len()))?;
        for &(_, index, slot) in self.0.list {
            seq.serialize_element(&(index, slot.value(self.0.text)))?;
        }
        seq.end()
    }
}

/// Per-thread buffers, reused from event to event.
#[derive(Default)]
struct Scratch {
    text: String,
    fields: Vec<Visited>,
    /// Bit `i` set: field `i` of the callsite is present (indices < 64).
    mask: u64,
    /// A field index past 63 was seen: the shape cannot be keyed by a mask.
    wide: bool,
    /// A `log` record: the `log.*` fields that carry its place are left
    /// out (its shape has them).
    log: bool,
    bytes: Vec<u8>,
}

impl Scratch {
    fn reset(&mut self, log: bool) {
        self.text.clear();
        self.fields.clear();
        self.mask = 0;
        self.wide = false;
        self.log = log;
    }

    fn field(&mut self, field: &Field, slot: Slot) {
        match 1u64.checked_shl(field.index() as u32) {
            Some(bit) => self.mask |= bit,
            None => self.wide = true,
        }
        self.fields.push((field.name(), field.index() as u32, slot));
    }

    /// Whether `field` is one of those `tracing-log` adds to a record.
    fn skip(&self, field: &Field) -> bool {
        self.log && field.name().starts_with("log.")
    }

    fn text_slot(&mut self, write: impl FnOnce(&mut String)) -> (usize, usize) {
        let a = self.text.len();
        write(&mut self.text);
        (a, self.text.len())
    }
}

impl Visit for Scratch {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.skip(field) {
            return;
        }
        let (a, b) = self.text_slot(|t| {
            let _ = write!(t, "{value:?}");
        });
        self.field(field, Slot::Debug(a, b));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.skip(field) {
            return;
        }
        let (a, b) = self.text_slot(|t| t.push_str(value));
        self.field(field, Slot::Str(a, b));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let (a, b) = self.text_slot(|t| {
            let _ = write!(t, "{value}");
        });
        self.field(field, Slot::Debug(a, b));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, Slot::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.skip(field) {
            return;
        }
        self.field(field, Slot::U64(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.field(field, Slot::F64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, Slot::Bool(value));
    }
}

impl Scratch {
    fn values(&self) -> ValuesOut<'_> {
        ValuesOut {
            list: &self.fields,
            text: &self.text,
        }
    }

    /// Encodes `out` into `self.bytes`.
    fn encode_with(&mut self, out: impl FnOnce(&Self) -> Option<Vec<u8>>) -> bool {
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.clear();
        match out(self) {
            Some(b) => {
                self.bytes = b;
                true
            }
            None => {
                self.bytes = bytes;
                false
            }
        }
    }

    /// Visits `event` (in the sent span `span`) and encodes what changes
    /// from event to event into `self.bytes`.
    fn encode(&mut self, event: &Event<'_>, span: Option<u64>, log: bool) -> bool {
        self.reset(log);
        event.record(self);
        let time = now_nanos();
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.clear();
        let short = ShortOut {
            time,
            span,
            values: self.values(),
        };
        match postcard::to_extend(&short, bytes) {
            Ok(b) => {
                self.bytes = b;
                true
            }
            Err(_) => false,
        }
    }

    /// Encodes the span `id`, in the sent span `parent`, opened with
    /// `attrs`, into `self.bytes`.
    fn encode_opened(&mut self, attrs: &Attributes<'_>, id: u64, parent: Option<u64>) -> bool {
        self.reset(false);
        attrs.record(self);
        self.encode_with(|s| {
            let opened = OpenedOut {
                id,
                parent,
                values: IndexedOut(s.values()),
            };
            postcard::to_allocvec(&opened).ok()
        })
    }

    /// Encodes the values of `values` as (index, value) pairs into
    /// `self.bytes`; false if there are none.
    fn encode_record(&mut self, values: &Record<'_>) -> bool {
        self.reset(false);
        values.record(self);
        !self.fields.is_empty()
            && self.encode_with(|s| postcard::to_allocvec(&IndexedOut(s.values())).ok())
    }

    /// Appends the encoded shape of `meta` with the fields just visited.
    fn encode_def(&self, meta: &Metadata<'_>, out: &mut Vec<u8>) {
        if let Ok(b) = postcard::to_allocvec(&ShapeDefOut::of(meta, NamesOut(&self.fields))) {
            out.extend_from_slice(&b);
        }
    }

    /// Lets go of buffers grown by a huge event.
    fn trim(&mut self) {
        if self.text.capacity() > 1 << 20 {
            self.text = String::new();
        }
        if self.bytes.capacity() > 1 << 20 {
            self.bytes = Vec::new();
        }
    }
}

/// Appends the encoded shape of the span callsite `meta`.
fn encode_span_def(meta: &Metadata<'_>, out: &mut Vec<u8>) {
    let def = SpanDefOut {
        name: meta.name(),
        shape: ShapeDefOut::of(meta, AllNames(meta.fields())),
    };
    if let Ok(b) = postcard::to_allocvec(&def) {
        out.extend_from_slice(&b);
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch buffers; with fresh ones if they
/// are busy (an event logged while a field of another is formatted) or
/// gone (the thread is exiting).
fn with_scratch(f: impl FnOnce(&mut Scratch)) {
    let mut f = Some(f);
    let done = SCRATCH.try_with(|cell| {
        let f = f.take().expect("called once");
        match cell.try_borrow_mut() {
            Ok(mut s) => {
                f(&mut s);
                s.trim();
            }
            Err(_) => f(&mut Scratch::default()),
        }
    });
    if done.is_err() {
        if let Some(f) = f.take() {
            f(&mut Scratch::default());
        }
    }
}

/// The number a span was sent under (in its extensions).
struct Sent(u64);

/// The number of the nearest sent span among `span` and those it is in.
fn nearest_sent<S>(span: Option<tracing_subscriber::registry::SpanRef<'_, S>>) -> Option<u64>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    span?
        .scope()
        .find_map(|s| s.extensions().get::<Sent>().map(|n| n.0))
}

/// The number `id` was sent under, if it was.
fn sent<S>(id: &Id, ctx: &Context<'_, S>) -> Option<u64>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    ctx.span(id)?.extensions().get::<Sent>().map(|n| n.0)
}

/// The layer installed in every child.
pub(crate) struct FunnelLayer {
    funnel: Arc<Funnel>,
    level: LevelFilter,
}

impl FunnelLayer {
    /// Sends the events and spans at `level` or less verbose into `funnel`.
    pub(crate) fn new(funnel: Arc<Funnel>, level: LevelFilter) -> FunnelLayer {
        FunnelLayer { funnel, level }
    }

    fn send<S>(&self, s: &mut Scratch, event: &Event<'_>, ctx: &Context<'_, S>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let span = nearest_sent(ctx.event_span(event));
        // A `log` record: its level, target and place, as `tracing-log`
        // passed them.
        let normalized = event.normalized_metadata();
        if !s.encode(event, span, normalized.is_some()) {
            return;
        }
        match &normalized {
            Some(meta) => {
                let key = Key::Log(LogShape {
                    level: level_code(meta.level()),
                    target: meta.target(),
                    module_path: meta.module_path(),
                    file: meta.file(),
                    line: meta.line(),
                    mask: s.mask,
                });
                self.funnel
                    .push(&key, |out| s.encode_def(meta, out), &s.bytes);
            }
            None => {
                let meta = event.metadata();
                let key = match s.wide {
                    true => Key::Inline,
                    false => Key::Site(meta as *const Metadata<'_> as usize, s.mask),
                };
                self.funnel
                    .push(&key, |out| s.encode_def(meta, out), &s.bytes);
            }
        }
    }
}

impl<S> Layer<S> for FunnelLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.level >= *meta.level() {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        self.level >= *meta.level()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.level)
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        with_scratch(|s| self.send(s, event, &ctx));
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let Some(number) = self.funnel.open_span() else {
            return;
        };
        let parent = nearest_sent(span.parent());
        span.extensions_mut().insert(Sent(number));
        let meta = attrs.metadata();
        with_scratch(|s| {
            if s.encode_opened(attrs, number, parent) {
                let key = Key::Site(meta as *const Metadata<'_> as usize, 0);
                self.funnel.push_shaped(
                    &key,
                    &SPAN_TAGS,
                    |out| encode_span_def(meta, out),
                    &s.bytes,
                );
            }
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(n) = sent(id, &ctx) {
            with_scratch(|s| {
                if s.encode_record(values) {
                    self.funnel.push_span_op(TAG_RECORD, n, &s.bytes);
                }
            });
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(n) = sent(id, &ctx) {
            self.funnel.push_span_op(TAG_ENTER, n, &[]);
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(n) = sent(id, &ctx) {
            self.funnel.push_span_op(TAG_EXIT, n, &[]);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(n) = sent(&id, &ctx) {
            self.funnel.push_span_op(TAG_CLOSE, n, &[]);
            self.funnel.live_spans.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
