//! What the parent enforces on a running child: the deadline of the timed
//! hook that is running, and `join_in`.
//!
//! A child reports the start and end of each hook that has a timeout
//! (`HOOK_START` / `HOOK_END` marks); [`Deadlines`] turns those marks into
//! the next instant the parent must wake up at, and tells, once it has, which
//! limit was overrun. The parent then kills the child: this works even when
//! the hook is stuck in C code.

use crate::config::{Config, Hook};
use crate::proto::{kind, HookMark};
use crate::wire::Frame;
use std::time::{Duration, Instant};

/// A limit that has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overrun {
    /// The whole process ran past `join_in` (no retry).
    Join(Duration),
    /// A call of `hook` in iteration `run` ran past `limit`; it had run for
    /// `ran` when noticed.
    Hook {
        hook: Hook,
        run: u64,
        limit: Duration,
        ran: Duration,
    },
}

/// The deadlines of one attempt: `join_in`, fixed from the start of the
/// first attempt, and the timeout of the timed hook that runs now.
#[derive(Debug, Clone)]
pub(crate) struct Deadlines {
    timeouts: [Option<Duration>; 4],
    join: Option<(Instant, Duration)>,
    /// `(deadline, hook, run, limit)` while a timed hook runs.
    hook: Option<(Instant, Hook, u64, Duration)>,
}

impl Deadlines {
    /// The limits of `config` for a process that started at `started`.
    pub(crate) fn new(config: &Config, started: Instant) -> Self {
        Deadlines {
            timeouts: config.timeouts,
            join: config
                .join_in
                .and_then(|d| started.checked_add(d).map(|at| (at, d))),
            hook: None,
        }
    }

    /// Takes a hook mark (`HOOK_START` arms the hook's deadline, `HOOK_END`
    /// disarms it); returns `false`, doing nothing, for any other frame.
    pub(crate) fn on_frame(&mut self, frame: &Frame) -> bool {
        match frame.kind {
            kind::HOOK_START => {
                if let Ok((h, run)) = frame.decode::<HookMark>() {
                    if let Some(hook) = Hook::from_index(h as u64) {
                        if let Some(limit) = self.timeouts[hook.index()] {
                            let at = Instant::now().checked_add(limit);
                            self.hook = at.map(|at| (at, hook, run, limit));
                        }
                    }
                }
                true
            }
            kind::HOOK_END => {
                self.hook = None;
                true
            }
            _ => false,
        }
    }

    /// The next instant a limit passes, if any is armed.
    pub(crate) fn next(&self) -> Option<Instant> {
        match (self.hook.map(|h| h.0), self.join.map(|j| j.0)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The limit that has passed at `now`, `join_in` first.
    pub(crate) fn overrun(&self, now: Instant) -> Option<Overrun> {
        if let Some((at, limit)) = self.join {
            if now >= at {
                return Some(Overrun::Join(limit));
            }
        }
        let (at, hook, run, limit) = self.hook?;
        if now < at {
            return None;
        }
        let ran = now.saturating_duration_since(at.checked_sub(limit).unwrap_or(at));
        Some(Overrun::Hook {
            hook,
            run,
            limit,
            ran,
        })
    }
}
