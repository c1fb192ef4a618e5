//! One error type for everything skprocess does.
//!
//! A failure of a process names the process type, the hook, the run index
//! and the attempt, and keeps the child's own message, so the text alone
//! tells what happened and where:
//! `process app::Squarer failed in run (run #3, attempt 2 of 3): disk full`.

use crate::config::Hook;
use std::fmt;
use std::time::Duration;

/// `std::result::Result<T, skprocess::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Any error, boxed: what a hook returns, so `?` works on every error type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What every hook returns.
pub type HookResult = std::result::Result<(), BoxError>;

/// Everything that can go wrong in skprocess.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A process failed: a hook returned `Err` or panicked, a limit was
    /// exceeded, or the child died. Every life had been used.
    #[error("{0}")]
    Process(Box<Failure>),
    /// The handle killed the process (`Handle::kill`).
    #[error("process {process} was killed through its handle")]
    Killed {
        /// The process type.
        process: &'static str,
    },
    /// `wait` was called again after it had returned the result.
    #[error("process {process} was already waited on; its result was returned by the first wait")]
    AlreadyWaited {
        /// The process type.
        process: &'static str,
    },
    /// The peer has ended and every message it sent has been read.
    #[error("the other side has ended: no further messages can be sent or received")]
    Disconnected,
    /// A value could not be encoded.
    #[error("cannot encode {type_name}: {reason}")]
    Encode {
        /// The type being encoded.
        type_name: &'static str,
        /// Why.
        reason: String,
    },
    /// Bytes could not be decoded as the expected type.
    #[error("cannot decode {type_name}: {reason}")]
    Decode {
        /// The type being decoded.
        type_name: &'static str,
        /// Why.
        reason: String,
    },
    /// A message was received as another type than it was sent as. The
    /// message is consumed; the channel stays usable.
    #[error("received a message of type {got} but asked for {expected}")]
    WrongType {
        /// The type the receiver asked for.
        expected: String,
        /// The type the sender used.
        got: String,
    },
    /// The peer sent bytes that are not a valid frame.
    #[error("malformed data from the other process: {0}")]
    Wire(String),
    /// Starting a child process failed.
    #[error("could not start a child process: {0}")]
    Spawn(std::io::Error),
    /// An operating-system call failed.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    /// A misuse of the API, described in the message.
    #[error("{0}")]
    Usage(String),
    /// A supervisor's children restarted more often than its intensity
    /// allows: it stopped them all.
    #[error("the supervisor gave up: {0}")]
    GaveUp(String),
    /// A pool call ran past the time limit it was given
    /// ([`Pool::with_timeout`](crate::Pool::with_timeout)): its items still
    /// running were killed, those not started never ran.
    #[error("the pool call {call} ran past its time limit of {limit:?}: the items still running were killed and the rest skipped")]
    CallTimeout {
        /// The call: the process type, or `map_fn(<function>)`.
        call: String,
        /// The time limit.
        limit: Duration,
    },
    /// A background pool call was cancelled
    /// ([`Background::cancel`](crate::Background::cancel), or its
    /// `Background` dropped): its items still running were killed, those
    /// not started never ran.
    #[error("the pool call {call} was cancelled: the items still running were killed and the rest skipped")]
    Cancelled {
        /// The call: the process type, or `map_fn(<function>)`.
        call: String,
    },
    /// A live resource could not connect ([`Live`](crate::live::Live)).
    #[error("cannot connect {resource}: {reason}")]
    Connect {
        /// The recipe type.
        resource: &'static str,
        /// The recipe's error, with its sources (a server's own message).
        reason: String,
        /// The recipe's error itself.
        #[source]
        source: std::sync::Arc<dyn std::error::Error + Send + Sync>,
    },
}

/// What went wrong in a failed process, with where and when.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Failure {
    /// The process type (`module::Name`).
    pub process: String,
    /// The hook that was running, if one was.
    pub hook: Option<Hook>,
    /// The 0-based iteration it was in.
    pub run: Option<u64>,
    /// The 1-based attempt.
    pub attempt: u32,
    /// The number of lives (attempts allowed).
    pub lives: u32,
    /// What happened.
    pub cause: Cause,
    /// The error was [`fatal`](crate::fatal): no further life was tried.
    pub fatal: bool,
    /// In a pool, the item's index in the input.
    pub item: Option<usize>,
}

/// The cause of a [`Failure`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Cause {
    /// The hook returned `Err`; the error's text (with its sources).
    Returned(String),
    /// The hook panicked; the panic message and location.
    Panicked(String),
    /// The hook ran past its timeout.
    HookTimeout(Duration),
    /// The whole process ran past `join_in`.
    JoinTimeout(Duration),
    /// The child died: the exit status, and what the child last said.
    Crashed(String),
    /// The child could not rebuild or send back the process value.
    Codec(String),
    /// The child showed no sign of life for its heartbeat period.
    Hung(Duration),
    /// The child's resident memory went past its limit.
    OutOfMemory {
        /// The limit, in bytes.
        limit: u64,
        /// What it was seen using, in bytes.
        used: u64,
    },
}

impl Failure {
    pub(crate) fn new(
        process: String,
        hook: Option<Hook>,
        run: Option<u64>,
        attempt: u32,
        lives: u32,
        cause: Cause,
    ) -> Failure {
        Failure {
            process,
            hook,
            run,
            attempt,
            lives,
            cause,
            fatal: false,
            item: None,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match self.cause {
            Cause::Returned(_) | Cause::Codec(_) => "failed",
            Cause::Panicked(_) => "panicked",
            Cause::HookTimeout(_) => "timed out",
            Cause::JoinTimeout(_) => "ran past join_in",
            Cause::Crashed(_) => "crashed",
            Cause::Hung(_) => "hung",
            Cause::OutOfMemory { .. } => "ran out of memory",
        };
        write!(f, "process {} {verb} ", self.process)?;
        let fatal = if self.fatal { ", fatal" } else { "" };
        match (self.hook, self.run) {
            (Some(h), Some(r)) if h != Hook::Onfinish => write!(
                f,
                "in {h} (run #{r}, attempt {} of {}{fatal})",
                self.attempt, self.lives
            )?,
            (Some(h), Some(r)) => write!(
                f,
                "in {h} (after {r} runs, attempt {} of {}{fatal})",
                self.attempt, self.lives
            )?,
            (Some(h), None) => write!(
                f,
                "in {h} (attempt {} of {}{fatal})",
                self.attempt, self.lives
            )?,
            (None, _) => write!(
                f,
                "outside any hook (attempt {} of {}{fatal})",
                self.attempt, self.lives
            )?,
        }
        match &self.cause {
            Cause::Returned(m) | Cause::Panicked(m) | Cause::Crashed(m) | Cause::Codec(m) => {
                write!(f, ": {m}")
            }
            Cause::HookTimeout(d) => write!(
                f,
                ": exceeded its {} timeout",
                humantime::format_duration(*d)
            ),
            Cause::JoinTimeout(d) => write!(
                f,
                ": exceeded join_in of {}",
                humantime::format_duration(*d)
            ),
            Cause::Hung(d) => write!(
                f,
                ": showed no sign of life for its heartbeat period of {}",
                humantime::format_duration(*d)
            ),
            Cause::OutOfMemory { limit, used } => write!(
                f,
                ": its resident memory reached {} MiB, past its memory_limit of {} MiB ({limit} bytes)",
                used >> 20,
                limit >> 20
            ),
        }
    }
}

impl Error {
    /// The failure details, for a failed process.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Error::Process(f) => Some(f),
            _ => None,
        }
    }

    /// The hook that was running when the process failed.
    pub fn hook(&self) -> Option<Hook> {
        self.failure().and_then(|f| f.hook)
    }

    /// Whether a hook timeout or `join_in` was exceeded, or a pool call
    /// ran past its time limit ([`Error::CallTimeout`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::CallTimeout { .. })
            || matches!(
                self.failure().map(|f| &f.cause),
                Some(Cause::HookTimeout(_) | Cause::JoinTimeout(_))
            )
    }

    /// Whether a background pool call was cancelled ([`Error::Cancelled`]).
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Cancelled { .. })
    }

    /// Whether the child died (signal, abort, exit) rather than returning
    /// `Err` or panicking.
    pub fn is_crash(&self) -> bool {
        matches!(self.failure().map(|f| &f.cause), Some(Cause::Crashed(_)))
    }

    /// Whether a hook panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self.failure().map(|f| &f.cause), Some(Cause::Panicked(_)))
    }

    /// Whether the child was killed for showing no sign of life for its
    /// [heartbeat](crate::Config::heartbeat) period.
    pub fn is_hung(&self) -> bool {
        matches!(self.failure().map(|f| &f.cause), Some(Cause::Hung(_)))
    }

    /// Whether the child was killed for going past its
    /// [memory limit](crate::Config::memory_limit).
    pub fn is_out_of_memory(&self) -> bool {
        matches!(
            self.failure().map(|f| &f.cause),
            Some(Cause::OutOfMemory { .. })
        )
    }

    /// Whether the process ended on a [`fatal`](crate::fatal) error, with no
    /// further life tried.
    pub fn is_fatal(&self) -> bool {
        self.failure().is_some_and(|f| f.fatal)
    }

    /// For an error of a pool item, the item's index in the input.
    pub fn item(&self) -> Option<usize> {
        self.failure().and_then(|f| f.item)
    }

    /// Whether the process was killed through its handle.
    pub fn is_killed(&self) -> bool {
        matches!(self, Error::Killed { .. })
    }

    /// Whether the other side has ended ([`Error::Disconnected`]).
    pub fn is_disconnected(&self) -> bool {
        matches!(self, Error::Disconnected)
    }

    /// The same error again, for a second receiver of one failure (every
    /// item of a batch that could not be sent, say). An I/O error keeps its
    /// kind, its OS code and its text.
    pub(crate) fn duplicate(&self) -> Error {
        let io = |e: &std::io::Error| match e.raw_os_error() {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(e.kind(), e.to_string()),
        };
        match self {
            Error::Process(f) => Error::Process(f.clone()),
            Error::Killed { process } => Error::Killed { process },
            Error::AlreadyWaited { process } => Error::AlreadyWaited { process },
            Error::Disconnected => Error::Disconnected,
            Error::Encode { type_name, reason } => Error::Encode {
                type_name,
                reason: reason.clone(),
            },
            Error::Decode { type_name, reason } => Error::Decode {
                type_name,
                reason: reason.clone(),
            },
            Error::WrongType { expected, got } => Error::WrongType {
                expected: expected.clone(),
                got: got.clone(),
            },
            Error::Wire(m) => Error::Wire(m.clone()),
            Error::Spawn(e) => Error::Spawn(io(e)),
            Error::Io(e) => Error::Io(io(e)),
            Error::Usage(m) => Error::Usage(m.clone()),
            Error::GaveUp(m) => Error::GaveUp(m.clone()),
            Error::CallTimeout { call, limit } => Error::CallTimeout {
                call: call.clone(),
                limit: *limit,
            },
            Error::Cancelled { call } => Error::Cancelled { call: call.clone() },
            Error::Connect {
                resource,
                reason,
                source,
            } => Error::Connect {
                resource,
                reason: reason.clone(),
                source: source.clone(),
            },
        }
    }

    /// The attempt (1-based) the failure happened in.
    pub fn attempt(&self) -> Option<u32> {
        self.failure().map(|f| f.attempt)
    }

    /// The run index the failure happened in.
    pub fn run_index(&self) -> Option<u64> {
        self.failure().and_then(|f| f.run)
    }

    pub(crate) fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

/// An error that ends its process at once, whatever lives it has left: for
/// a deterministic failure (bad input, say) that another attempt would only
/// repeat. Made by [`fatal`]; a hook returns it like any error.
#[derive(Debug)]
pub struct Fatal(BoxError);

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Fatal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Wraps `e` so that returning it from a hook ends the process now, with
/// no further life ([`Error::is_fatal`] then says so).
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use skprocess::prelude::*;
///
/// #[derive(Process, Serialize, Deserialize)]
/// #[process(lives = 5)]
/// struct Parse { input: String }
///
/// impl Process for Parse {
///     fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
///         let _n: u64 = self.input.parse().map_err(skprocess::fatal)?;
///         Ok(())
///     }
/// }
///
/// # fn main() -> skprocess::Result<()> {
/// let mut h = Parse { input: "not a number".into() }.start()?;
/// let e = h.wait().err().expect("a fatal error");
/// assert!(e.is_fatal());
/// assert_eq!(e.attempt(), Some(1)); // no retry
/// # Ok(())
/// # }
/// ```
pub fn fatal(e: impl Into<BoxError>) -> Fatal {
    Fatal(e.into())
}

/// Formats an error with its chain of sources, `a: b: c`.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let t = src.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = src.source();
    }
    s
}

/// Turns an error from the shared-memory layer (`sys`) about a value of
/// type `type_name` held by a `handle` (`Share`, `Queue`, ...) into the
/// crate's error: memory that does not hold a valid value (corrupt, forged,
/// or made for another type) cannot be decoded; a value too large for its
/// memory cannot be encoded into it; locking twice from one thread is a
/// misuse; anything else is the system's error.
pub(crate) fn shared_memory_error(
    e: std::io::Error,
    type_name: &'static str,
    handle: &str,
) -> Error {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidData => Error::Decode {
            type_name,
            reason: e.to_string(),
        },
        ErrorKind::FileTooLarge => Error::Encode {
            type_name,
            reason: e.to_string(),
        },
        ErrorKind::Deadlock => Error::usage(format!("{handle}<{type_name}>: {e}")),
        _ => Error::Io(e),
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn io_errors_print_their_text_once() {
        let e = Error::Io(std::io::Error::from_raw_os_error(libc::EMFILE));
        let text = chain(&e);
        assert_eq!(text.matches("Too many open files").count(), 1, "{text}");
        let e = Error::Spawn(std::io::Error::other("no fork"));
        assert_eq!(chain(&e).matches("no fork").count(), 1);
    }

    #[test]
    fn a_duplicate_keeps_variant_and_text() {
        let all = [
            Error::Encode {
                type_name: "T",
                reason: "r".into(),
            },
            Error::Decode {
                type_name: "T",
                reason: "r".into(),
            },
            Error::WrongType {
                expected: "a".into(),
                got: "b".into(),
            },
            Error::Io(std::io::Error::from_raw_os_error(libc::EMFILE)),
            Error::Disconnected,
            Error::Killed { process: "p" },
        ];
        for e in all {
            let d = e.duplicate();
            assert_eq!(d.to_string(), e.to_string());
            assert_eq!(std::mem::discriminant(&d), std::mem::discriminant(&e));
        }
        let d = Error::Io(std::io::Error::from_raw_os_error(libc::EMFILE)).duplicate();
        assert!(matches!(d, Error::Io(ref io) if io.raw_os_error() == Some(libc::EMFILE)));
        assert!(Error::Disconnected.is_disconnected());
    }
}
