//! Logging: `tracing` events emitted in a child arrive in the parent's
//! subscriber, complete and in the order the child emitted them.
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
//!   lock per process keep the child's order across its threads.
//! - **Parent** ([`parent`]): `start()` captures the dispatcher and the span
//!   current on the calling thread. The supervisor hands each `LOG` frame to
//!   a [`Forwarder`], which re-emits every event into that dispatcher, as a
//!   child of that span, with the fields `process` and `pid` added. Events
//!   need callsites, which are made at run time, one per shape of event
//!   (level, target, location, field names), cached and never freed.
//! - **Standard streams** ([`capture`]): inherited by default. With
//!   [`Config::capture_output`](crate::Config::capture_output) the child's
//!   descriptors 1 and 2 are pipes, read line by line in the parent by one
//!   thread per child and re-emitted as `info` (stdout) and `warn` (stderr)
//!   events with target `skprocess::output` and a `stream` field. Since the
//!   parent reads them, a child that crashes still gets its last lines out.
//! - **Files**: with [`Config::log_dir`](crate::Config::log_dir) the parent
//!   also writes each child's events and captured lines to
//!   `<dir>/<process>-<pid>.log` (one file per life: each has its own pid).
//!   It is written by the parent, so it holds what the parent received.
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
//! Hooks never wait for the parent to read logs: the funnel holds up to
//! 8 MiB of encoded events per child. Past that, new events are dropped
//! and counted, and the parent emits one `warn` event (target
//! `skprocess::log`) saying how many were lost, in the place they were lost.
//! Nothing is dropped while the parent keeps up. `tell` and the final
//! result wait for the logs before them, so they do wait.
//!
//! A child that is killed (timeout, `kill`, a crash) loses the events of
//! its last 20 ms at most (or of its last 16 KiB); a child that returns or
//! fails normally loses none.
//!
//! # For a pool
//!
//! A pool worker is wired as a process is: send [`setup_payload`] as a
//! `LOG_SETUP` frame before `INIT`, make one [`Forwarder`] per worker life
//! (label: the type name plus the worker index, such as `app::Job[3]`) from
//! an [`Origin`] captured where the pool was made, hand each `LOG` frame to
//! [`Forwarder::emit`], and, for captured output, [`Capture::start`] /
//! [`Capture::finish`] around the worker's life.

#![allow(dead_code)]

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
    let setup = Setup { level: origin.level_for_child(to_file) };
    postcard::to_allocvec(&setup).expect("a struct of one byte always encodes")
}

/// One entry of a `LOG` frame; the payload is a sequence of entries.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Entry<'a> {
    /// An event.
    #[serde(borrow)]
    Event(Record<'a>),
    /// This many events were dropped here, the parent not keeping up.
    Dropped(u64),
}

/// One event as it crosses from the child.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record<'a> {
    /// [`level_code`].
    pub(crate) level: u8,
    pub(crate) target: &'a str,
    pub(crate) module_path: Option<&'a str>,
    pub(crate) file: Option<&'a str>,
    pub(crate) line: Option<u32>,
    /// When the child emitted it: nanoseconds since the Unix epoch.
    pub(crate) time: u64,
    /// Names of the spans the event is in, outermost first.
    #[serde(borrow)]
    pub(crate) spans: Vec<&'a str>,
    /// The fields in the order of the event, `message` included.
    #[serde(borrow)]
    pub(crate) fields: Vec<(&'a str, Value<'a>)>,
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
