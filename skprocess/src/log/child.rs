//! The child's side: a `tracing` layer that encodes each event into one
//! per-process buffer (the funnel), sent to the parent as `LOG` frames.
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
//! An event's shape (its callsite and which of its fields are present) is
//! numbered under the buffer lock the first time it is appended, its
//! definition written just before it, so every use of a number follows its
//! definition in the stream.

use super::{level_code, Setup, Value};
use crate::proto::kind;
use crate::wire::Writer;
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing_core::field::{Field, Visit};
use tracing_core::subscriber::Interest;
use tracing_core::{Event, LevelFilter, Metadata, Subscriber};
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
    let _ = tracing_core::dispatcher::set_global_default(tracing_core::Dispatch::new(subscriber));
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

/// Entry tags, as postcard writes the variants of `super::Entry`.
const TAG_EVENT: u8 = 0;
const TAG_SHAPE: u8 = 1;
const TAG_SHORT: u8 = 2;

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

/// A callsite and which of its fields are present.
type ShapeKey = (usize, u64);

#[derive(Debug)]
struct Pending {
    buf: Vec<u8>,
    flusher: Flusher,
    /// Appenders waiting for room.
    waiting: usize,
    /// Shapes numbered so far; each number's definition is in an earlier
    /// entry of the stream than any use of it.
    shapes: HashMap<ShapeKey, u32, BuildHasherDefault<KeyHasher>>,
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
}

impl Funnel {
    pub(crate) fn new(writer: Writer, limits: Limits) -> Funnel {
        Funnel {
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                flusher: Flusher::Absent,
                waiting: 0,
                shapes: HashMap::default(),
            }),
            wake: Condvar::new(),
            room: Condvar::new(),
            out: Mutex::new(Outbox {
                writer,
                spare: Vec::new(),
                broken: false,
            }),
            limits,
        }
    }

    /// Appends one event of shape `key`: `body` is its encoded [`super::Short`],
    /// `def` encodes its [`super::ShapeDef`] (called only when the shape is
    /// new or cannot be numbered).
    pub(crate) fn push(
        self: &Arc<Self>,
        key: Option<ShapeKey>,
        def: impl Fn(&mut Vec<u8>),
        body: &[u8],
    ) {
        let mut p = self.room_for(lock(&self.pending), body.len() + 8);
        let id = match key {
            Some(key) => match p.shapes.get(&key) {
                Some(&id) => Some(id),
                None if p.shapes.len() < MAX_SHAPES => {
                    let id = p.shapes.len() as u32;
                    p.shapes.insert(key, id);
                    p.buf.push(TAG_SHAPE);
                    push_varint(&mut p.buf, id);
                    def(&mut p.buf);
                    Some(id)
                }
                None => None,
            },
            None => None,
        };
        match id {
            Some(id) => {
                p.buf.push(TAG_SHORT);
                push_varint(&mut p.buf, id);
            }
            None => {
                p.buf.push(TAG_EVENT);
                def(&mut p.buf);
            }
        }
        p.buf.extend_from_slice(body);
        self.appended(p);
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

/// Appends `v` as postcard writes a `u32` (LEB128).
fn push_varint(buf: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Hashes a [`ShapeKey`] (a callsite address and a bit mask) cheaply.
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
// Encoding one event, with the layout of `super::ShapeDef` and `super::Short`.

#[derive(Serialize)]
struct ShapeDefOut<'a> {
    level: u8,
    target: &'a str,
    module_path: Option<&'a str>,
    file: Option<&'a str>,
    line: Option<u32>,
    names: NamesOut<'a>,
}

#[derive(Serialize)]
struct ShortOut<'a> {
    time: u64,
    spans: &'a [&'static str],
    values: ValuesOut<'a>,
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

struct NamesOut<'a>(&'a [(&'static str, Slot)]);

impl Serialize for NamesOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for (name, _) in self.0 {
            seq.serialize_element(name)?;
        }
        seq.end()
    }
}

struct ValuesOut<'a> {
    list: &'a [(&'static str, Slot)],
    text: &'a str,
}

impl Serialize for ValuesOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.list.len()))?;
        for &(_, slot) in self.list {
            let v = match slot {
                Slot::I64(v) => Value::I64(v),
                Slot::U64(v) => Value::U64(v),
                Slot::F64(v) => Value::F64(v),
                Slot::Bool(v) => Value::Bool(v),
                Slot::Str(a, b) => Value::Str(&self.text[a..b]),
                Slot::Debug(a, b) => Value::Debug(&self.text[a..b]),
            };
            seq.serialize_element(&v)?;
        }
        seq.end()
    }
}

/// Per-thread buffers, reused from event to event.
#[derive(Default)]
struct Scratch {
    text: String,
    fields: Vec<(&'static str, Slot)>,
    /// Bit `i` set: field `i` of the callsite is present (indices < 64).
    mask: u64,
    /// A field index past 63 was seen: the shape cannot be keyed by a mask.
    wide: bool,
    spans: Vec<&'static str>,
    bytes: Vec<u8>,
}

impl Scratch {
    fn field(&mut self, field: &Field, slot: Slot) {
        match 1u64.checked_shl(field.index() as u32) {
            Some(bit) => self.mask |= bit,
            None => self.wide = true,
        }
        self.fields.push((field.name(), slot));
    }

    fn text_slot(&mut self, write: impl FnOnce(&mut String)) -> (usize, usize) {
        let a = self.text.len();
        write(&mut self.text);
        (a, self.text.len())
    }
}

impl Visit for Scratch {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let (a, b) = self.text_slot(|t| {
            let _ = write!(t, "{value:?}");
        });
        self.field(field, Slot::Debug(a, b));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
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
    /// Visits `event` (in `spans`, outermost first) and encodes what
    /// changes from event to event into `self.bytes`.
    fn encode(&mut self, event: &Event<'_>, spans: impl Iterator<Item = &'static str>) -> bool {
        self.text.clear();
        self.fields.clear();
        self.mask = 0;
        self.wide = false;
        self.spans.clear();
        self.spans.extend(spans);
        self.spans.reverse();
        event.record(self);
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let short = ShortOut {
            time,
            spans: &self.spans,
            values: ValuesOut {
                list: &self.fields,
                text: &self.text,
            },
        };
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.clear();
        match postcard::to_extend(&short, bytes) {
            Ok(b) => {
                self.bytes = b;
                true
            }
            Err(_) => false,
        }
    }

    /// Appends the encoded shape of `meta` with the fields just visited.
    fn encode_def(&self, meta: &Metadata<'_>, out: &mut Vec<u8>) {
        let def = ShapeDefOut {
            level: level_code(meta.level()),
            target: meta.target(),
            module_path: meta.module_path(),
            file: meta.file(),
            line: meta.line(),
            names: NamesOut(&self.fields),
        };
        if let Ok(b) = postcard::to_allocvec(&def) {
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

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The layer installed in every child.
pub(crate) struct FunnelLayer {
    funnel: Arc<Funnel>,
    level: LevelFilter,
}

impl FunnelLayer {
    /// Sends the events at `level` or less verbose into `funnel`.
    pub(crate) fn new(funnel: Arc<Funnel>, level: LevelFilter) -> FunnelLayer {
        FunnelLayer { funnel, level }
    }

    fn send<S>(&self, s: &mut Scratch, event: &Event<'_>, ctx: &Context<'_, S>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let ok = match ctx.event_scope(event) {
            Some(scope) => s.encode(event, scope.map(|span| span.name())),
            None => s.encode(event, std::iter::empty()),
        };
        if ok {
            let meta = event.metadata();
            let key = (!s.wide).then_some((meta as *const Metadata<'_> as usize, s.mask));
            self.funnel
                .push(key, |out| s.encode_def(meta, out), &s.bytes);
        }
        s.trim();
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
        // An event logged while formatting another (a field's `Debug` that
        // logs) finds the scratch busy and uses a fresh one.
        let done = SCRATCH.try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut s) => self.send(&mut s, event, &ctx),
            Err(_) => self.send(&mut Scratch::default(), event, &ctx),
        });
        if done.is_err() {
            // The thread is exiting and its scratch is gone.
            self.send(&mut Scratch::default(), event, &ctx);
        }
    }
}
