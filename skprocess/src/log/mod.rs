//! Logging: `tracing` events and spans, and `log` records, emitted in a
//! child arrive in the parent's subscriber, complete and in the order the
//! child emitted them.
//!
//! # How it works
//!
//! - **Child** ([`child`]): before the first hook runs, the child installs a
//!   global default subscriber (a `tracing-subscriber` registry plus the
//!   funnel layer). Each event is encoded (postcard) into one per-process
//!   buffer, which is sent to the parent as a `LOG` frame on the control
//!   socket when it passes 16 KiB, at most 20 ms after its first event
//!   (a small flusher thread, started on the first event), before every
//!   `tell`, before `DONE`/`FAILED` and at exit. One buffer and one flush
//!   lock per process keep the child's order across its threads. Each
//!   event's static part (its *shape*: level, target, location, field
//!   names) is sent once per child; then only a number and the values.
//!   Spans travel the same way: opened (shape, number, parent, values),
//!   recorded, entered, exited, closed. `log` records become events
//!   through `tracing-log`'s bridge, installed as the `log` facade's
//!   logger in the child only (a parent's own logger is its own business).
//! - **Parent** ([`parent`]): `start()` captures the dispatcher and the span
//!   current on the calling thread. The supervisor hands each `LOG` frame to
//!   a [`Forwarder`], which re-emits every event into that dispatcher, as a
//!   child of that span, with the fields `process` and `pid` added. Events
//!   need callsites, which are made at run time, one per shape of event
//!   (level, target, location, field names), cached and never freed. The
//!   child's spans are made again as spans, from callsites made the same
//!   way, under that span.
//! - **Standard streams** ([`capture`]): inherited by default. With
//!   [`Config::capture_output`](crate::Config::capture_output) the child's
//!   descriptors 1 and 2 are pipes, read line by line in the parent by one
//!   thread per child and re-emitted as `info` (stdout) and `warn` (stderr)
//!   events with target `skprocess::output` and a `stream` field. Since the
//!   parent reads them, a child that crashes still gets its last lines out.
//! - **Files**: with [`Config::log_dir`](crate::Config::log_dir) the parent
//!   also writes each child's events and captured lines to
//!   `<dir>/<process>-<pid>.log` (one file per life: each has its own pid).
//!   It is written by the parent, so it holds what the parent received:
//!   events with the child's time, in the child's order; a captured line,
//!   stamped when the parent read it, after the events emitted before. A
//!   pool worker's file is `<dir>/pool-worker-<index>-<pid>.log`: its
//!   label changes with its items, the file's name does not.
//!
//! # Levels
//!
//! The parent tells the child, before anything runs, the most verbose level
//! worth sending: none at all if the parent has no subscriber (the child
//! then installs none, and logging costs what it costs without skprocess),
//! every level if a log directory is set, else the global maximum level of
//! the parent's subscribers (`LevelFilter::current()`). The parent's own
//! subscriber still filters what arrives, as it does for its own events.
//!
//! # When the parent does not keep up
//!
//! Nothing is dropped for being slow. A child buffers up to 1 MiB of
//! encoded events while a previous batch is being sent; past that, the
//! thread that logs waits for room (back-pressure), so a child that logs
//! faster than the parent's subscriber takes events slows down to the
//! parent's pace instead of losing lines. The parent reads `LOG` frames on
//! the thread that watches the child and checks the hook deadline between
//! frames, so a hook timeout still fires while a child logs or waits.
//!
//! A child that returns or fails normally loses no event. One that is
//! killed (timeout, `kill`, a crash) loses what it had not sent yet: while
//! the parent keeps up, the events of its last 20 ms at most.
//!
//! # For a pool
//!
//! A pool worker is wired as a process is (see `pool::manager`): the pool
//! captures an [`Origin`] where it is made; each worker life gets
//! [`setup_payload`] as a `LOG_SETUP` frame before `INIT` and one
//! [`Forwarder`], which gets each `LOG` frame. Its `process` label follows
//! the item running ([`Forwarder::set_label`]): the type name plus the
//! worker index, such as `app::Job[worker 3]`. The worker flushes before
//! each result, so an item's events come before it. Output capture and
//! the log file are set for the whole pool (`PoolBuilder`) and wired as a
//! process's are, once per worker life.

mod callsite;
pub(crate) mod capture;
pub(crate) mod child;
pub(crate) mod parent;
#[cfg(test)]
mod test;

pub(crate) use capture::Capture;
pub(crate) use child::{flush, install_child};
pub(crate) use parent::{Forwarder, Origin};

use serde::{Deserialize, Serialize};
use tracing_core::Level;

/// Settings the parent sends before `INIT` (frame `LOG_SETUP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Setup {
    /// The most verbose level to send: 0 = none, 1 = error ... 5 = trace.
    pub(crate) level: u8,
}

/// The payload of a `LOG_SETUP` frame for a child whose events go to `origin`.
pub(crate) fn setup_payload(origin: &Origin, to_file: bool) -> Vec<u8> {
    let setup = Setup {
        level: origin.level_for_child(to_file),
    };
    postcard::to_allocvec(&setup).expect("a struct of one byte always encodes")
}

/// One entry of a `LOG` frame; the payload is a sequence of entries.
///
/// An event's static part (level, target, location, field names) is its
/// *shape*; a span's shape also has its name. A child numbers the shapes it
/// uses (events' and spans' in one sequence), sends each definition once
/// (`Shape`, `SpanShape`), and then only the number and the values; a shape
/// it cannot number travels inline (`Event`, `SpanInline`).
///
/// Spans are numbered by the child (`Opened::id`, never 0): the entries
/// that follow refer to a span by that number until it is closed.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Entry<'a> {
    /// An event with its shape inline.
    Event(#[serde(borrow)] ShapeDef<'a>, #[serde(borrow)] Short<'a>),
    /// Defines shape number `.0` (numbers go 0, 1, 2, ... per child).
    Shape(u32, #[serde(borrow)] ShapeDef<'a>),
    /// An event of shape number `.0`.
    Short(u32, #[serde(borrow)] Short<'a>),
    /// Defines shape number `.0` as a span's.
    SpanShape(u32, #[serde(borrow)] SpanDef<'a>),
    /// A span of shape number `.0` was opened.
    Span(u32, #[serde(borrow)] Opened<'a>),
    /// A span was opened; its shape inline.
    SpanInline(#[serde(borrow)] SpanDef<'a>, #[serde(borrow)] Opened<'a>),
    /// Values recorded into span `.0` after it was opened.
    Record(u64, #[serde(borrow)] Vec<(u32, Value<'a>)>),
    /// A thread of the child entered span `.0`.
    Enter(u64),
    /// A thread of the child left span `.0`.
    Exit(u64),
    /// Span `.0` was closed; its number may not be used any more.
    Close(u64),
    /// Every event the child emitted before this time (nanoseconds since
    /// the Unix epoch) is in this frame or an earlier one. Ends each frame.
    Mark(u64),
}

/// What is the same for every event of one callsite (with the same fields
/// present).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ShapeDef<'a> {
    /// [`level_code`].
    pub(crate) level: u8,
    pub(crate) target: &'a str,
    pub(crate) module_path: Option<&'a str>,
    pub(crate) file: Option<&'a str>,
    pub(crate) line: Option<u32>,
    /// The field names, in the order of the event (`message` included);
    /// for a span, every field it declares, in order.
    #[serde(borrow)]
    pub(crate) names: Vec<&'a str>,
}

/// The shape of a span's callsite.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct SpanDef<'a> {
    pub(crate) name: &'a str,
    #[serde(borrow)]
    pub(crate) shape: ShapeDef<'a>,
}

/// A span as it was opened.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Opened<'a> {
    /// The child's number for it.
    pub(crate) id: u64,
    /// The span it is in (the nearest one sent), if any.
    pub(crate) parent: Option<u64>,
    /// The values it was opened with: (index of the field in the shape,
    /// value).
    #[serde(borrow)]
    pub(crate) values: Vec<(u32, Value<'a>)>,
}

/// What changes from event to event.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Short<'a> {
    /// When the child emitted it: nanoseconds since the Unix epoch.
    pub(crate) time: u64,
    /// The span it is in (the nearest one sent), if any.
    pub(crate) span: Option<u64>,
    /// One value per name of the shape.
    #[serde(borrow)]
    pub(crate) values: Vec<Value<'a>>,
}

/// A field's value, with its type kept where `tracing` records one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) enum Value<'a> {
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
    /// Recorded as a string (`record_str`).
    Str(&'a str),
    /// Recorded by its `Debug` (or `Display`) text; re-emitted as that text.
    Debug(&'a str),
}

/// Levels on the wire: 0 = trace ... 4 = error.
pub(crate) fn level_code(level: &Level) -> u8 {
    match *level {
        Level::TRACE => 0,
        Level::DEBUG => 1,
        Level::INFO => 2,
        Level::WARN => 3,
        Level::ERROR => 4,
    }
}

/// The inverse of [`level_code`].
pub(crate) fn level_of(code: u8) -> Option<Level> {
    Some(match code {
        0 => Level::TRACE,
        1 => Level::DEBUG,
        2 => Level::INFO,
        3 => Level::WARN,
        4 => Level::ERROR,
        _ => return None,
    })
}
