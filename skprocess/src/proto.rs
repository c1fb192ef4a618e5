//! What a parent and its child agree on: the kinds of frame on the control
//! socket, the first frame a child reads ([`Init`] with its [`Plan`]), the
//! layout of the status page a child writes and its parent reads, and the
//! exit codes a child uses when it cannot even report a failure.
//!
//! Both sides import this module and nothing else of each other, so the
//! protocol can be read in one place. It holds plain data only: no OS calls.

use crate::config::Hook;
use crate::timers::{Timer, Timers, TIMER_WORDS};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Frame kinds. Parent-to-child kinds are below 16, child-to-parent kinds
/// from 16, pool kinds from 32, pipe kinds from 48, log kinds from 64.
pub(crate) mod kind {
    /// Parent → child: what to run (`Init`), with descriptors.
    pub(crate) const INIT: u8 = 1;
    /// Either way: a user message (`tell`).
    pub(crate) const TELL: u8 = 2;
    /// Parent → child: finish the current iteration, then `onfinish`.
    pub(crate) const STOP: u8 = 3;
    /// Child → parent: a timed hook started (`HookMark`).
    pub(crate) const HOOK_START: u8 = 16;
    /// Child → parent: a timed hook ended (`HookMark`).
    pub(crate) const HOOK_END: u8 = 17;
    /// Child → parent: the final state (raw encoded process).
    pub(crate) const DONE: u8 = 18;
    /// Child → parent: a hook failed (`Failure`).
    pub(crate) const FAILED: u8 = 19;
    /// Parent → pool worker: process items to run, each answered with
    /// `DONE` or `FAILED` (layout in `pool::batch`).
    pub(crate) const POOL_ITEMS: u8 = 32;
    /// Parent → pool worker: a batch of `map_fn` calls.
    pub(crate) const POOL_CALLS: u8 = 33;
    /// Pool worker → parent: the results of one `POOL_CALLS` batch.
    pub(crate) const POOL_RESULTS: u8 = 34;
    /// Either way on a `Pipe`: a user message.
    pub(crate) const PIPE: u8 = 48;
    /// Child → parent: a batch of `tracing` events (`log::Entry` after
    /// `log::Entry`).
    pub(crate) const LOG: u8 = 64;
    /// Parent → child, before `INIT`: how to log (`log::Setup`).
    pub(crate) const LOG_SETUP: u8 = 65;
}

/// How one attempt runs, sent with the value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Plan {
    pub(crate) runs: Option<u64>,
    pub(crate) timed: [bool; 4],
    pub(crate) attempt: u32,
    pub(crate) lives: u32,
    /// A stop was asked for before this attempt started.
    pub(crate) stop: bool,
}

/// The first frame a child reads. Descriptors: the status page, for a
/// process its report page, then those of the value.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Init {
    /// Run one process value to its end, then exit.
    Process {
        type_id: String,
        plan: Plan,
        /// The largest frame either side accepts (`Config::max_message`).
        max_message: u64,
        /// How long a stop may take once the parent is gone.
        stop_grace: Duration,
        state: Vec<u8>,
    },
    /// Serve a pool: run the items and calls that arrive, until end of file.
    Worker {
        /// How long a stop may take once the parent is gone.
        stop_grace: Duration,
    },
}

/// A timed hook starting or ending: `(hook index, run index)`.
pub(crate) type HookMark = (u8, u64);

// ---------------------------------------------------------------------------
// The status page: 64-bit words in shared memory, written by the child,
// read by the parent at any moment (also after the child died).

/// Words of the status page: header, then one timer per hook.
pub(crate) const STATUS_WORDS: usize = STATUS_HEADER + 4 * TIMER_WORDS;
const STATUS_HEADER: usize = 8;
/// `hook index + 1` while a hook runs, 0 between hooks.
pub(crate) const STATUS_HOOK: usize = 1;
/// The current iteration.
pub(crate) const STATUS_RUN: usize = 2;
/// In a pool worker: the items and batches begun so far.
pub(crate) const STATUS_BEGUN: usize = 3;
/// Signs of life: bumped when a hook starts or ends, on `ctx.heartbeat()`
/// and on `ctx.report()`.
pub(crate) const STATUS_BEAT: usize = 4;
/// Non-zero once a process child's stop came from a signal (SIGTERM or
/// SIGINT): written before its final frame, so its parent, reading the page
/// after that frame, treats the end as a stop.
pub(crate) const STATUS_SIGNALLED: usize = 5;

/// Records in a status page that the child's stop came from a signal.
pub(crate) fn mark_signalled(words: &[AtomicU64]) {
    words[STATUS_SIGNALLED].store(1, Ordering::Release);
}

/// Whether the child recorded that its stop came from a signal.
pub(crate) fn was_signalled(words: &[AtomicU64]) -> bool {
    words[STATUS_SIGNALLED].load(Ordering::Acquire) != 0
}

/// The timer words of `hook` in a status page.
pub(crate) fn timer_words(words: &[AtomicU64], hook: Hook) -> &[AtomicU64] {
    let at = STATUS_HEADER + hook.index() * TIMER_WORDS;
    &words[at..at + TIMER_WORDS]
}

/// The timers of every hook, read from a status page.
pub(crate) fn status_timers(words: &[AtomicU64]) -> Timers {
    let mut t = Timers::default();
    for h in Hook::ALL {
        *t.get_mut(h) = Timer::load(timer_words(words, h));
    }
    t
}

/// Where a child was, from its status page: the hook it was in and the
/// iteration, or `(None, None)` between hooks.
pub(crate) fn position(words: &[AtomicU64]) -> (Option<Hook>, Option<u64>) {
    let hook = words[STATUS_HOOK].load(Ordering::Relaxed);
    let run = words[STATUS_RUN].load(Ordering::Relaxed);
    match hook.checked_sub(1).and_then(Hook::from_index) {
        Some(h) => (Some(h), Some(run)),
        None => (None, None),
    }
}

// ---------------------------------------------------------------------------
// Exit codes.

/// How a child ends when it cannot send a `FAILED` frame (or has nothing
/// to say). The parent turns these into words; a user never sees a bare
/// number for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Done: the result (or the failure) was sent.
    Clean = 0,
    /// A failure was reported with a `FAILED` frame.
    Reported = 1,
    /// The parent was already gone when the child started.
    ParentGone = 70,
    /// The inherited control descriptor could not be taken over.
    NoControlFd = 71,
    /// The parent sent something that is not a valid frame.
    ControlBroken = 72,
    /// The thread that reads the control socket could not be started.
    NoControlThread = 73,
    /// The control socket could not be set up.
    NoControlSocket = 74,
    /// The first frame was not a valid `Init`.
    BadInit = 75,
    /// `Init` came without its status page.
    NoStatusPage = 76,
    /// The status page could not be mapped, or is too small.
    BadStatusPage = 77,
    /// A pool worker received a task it could not read.
    WorkerProtocol = 78,
    /// A child forked by the fork server could not take on the parent's
    /// working directory or resource limits.
    NotLikeParent = 79,
}

impl Exit {
    const ALL: [Exit; 12] = [
        Exit::Clean,
        Exit::Reported,
        Exit::ParentGone,
        Exit::NoControlFd,
        Exit::ControlBroken,
        Exit::NoControlThread,
        Exit::NoControlSocket,
        Exit::BadInit,
        Exit::NoStatusPage,
        Exit::BadStatusPage,
        Exit::WorkerProtocol,
        Exit::NotLikeParent,
    ];

    /// The process exit code.
    pub(crate) fn code(self) -> i32 {
        self as i32
    }

    /// The named exit of `code`, if it is one of ours.
    pub(crate) fn from_code(code: i32) -> Option<Exit> {
        Exit::ALL.into_iter().find(|e| e.code() == code)
    }

    /// What it means, in words.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Exit::Clean => "exited normally",
            Exit::Reported => "exited after reporting a failure",
            Exit::ParentGone => "exited at start-up: its parent was already gone",
            Exit::NoControlFd => "exited at start-up: it could not take over its control socket",
            Exit::ControlBroken => "exited: its parent sent malformed data on the control socket",
            Exit::NoControlThread => "exited at start-up: it could not start its control thread",
            Exit::NoControlSocket => "exited at start-up: it could not set up its control socket",
            Exit::BadInit => "exited at start-up: the start frame from its parent was unreadable",
            Exit::NoStatusPage => "exited at start-up: no status page came with the start frame",
            Exit::BadStatusPage => "exited at start-up: its status page could not be mapped",
            Exit::WorkerProtocol => "exited: the pool sent a task the worker could not read",
            Exit::NotLikeParent => {
                "exited at start-up: it could not take on its parent's working directory or resource limits"
            }
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn exit_codes_round_trip_and_are_distinct() {
        for e in Exit::ALL {
            assert_eq!(Exit::from_code(e.code()), Some(e));
            assert!(!e.describe().is_empty());
        }
        let mut codes: Vec<i32> = Exit::ALL.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Exit::ALL.len());
        assert_eq!(Exit::from_code(2), None);
    }

    #[test]
    fn position_reads_hook_and_run() {
        let words: Vec<AtomicU64> = (0..STATUS_WORDS).map(|_| AtomicU64::new(0)).collect();
        assert_eq!(position(&words), (None, None));
        words[STATUS_HOOK].store(Hook::Run.index() as u64 + 1, Ordering::Relaxed);
        words[STATUS_RUN].store(7, Ordering::Relaxed);
        assert_eq!(position(&words), (Some(Hook::Run), Some(7)));
        words[STATUS_HOOK].store(99, Ordering::Relaxed);
        assert_eq!(position(&words), (None, None));
    }
}
