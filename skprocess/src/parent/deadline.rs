//! What the parent enforces on a running child: the deadline of the timed
//! hook that is running, `join_in`, the heartbeat, and the memory limit.
//!
//! A child reports the start and end of each hook that has a timeout
//! (`HOOK_START` / `HOOK_END` marks); [`Deadlines`] turns those marks into
//! the next instant the parent must wake up at, and tells, once it has, which
//! limit was overrun. The parent then kills the child: this works even when
//! the hook is stuck in C code.
//!
//! The heartbeat and the memory limit are read from the child's
//! [`Vitals`]: a counter the child bumps at every sign of life (a hook
//! starting or ending, `ctx.heartbeat()`, `ctx.report()`), and its resident
//! memory, looked at every [`MEMORY_CHECK`].

use crate::config::{Config, Hook};
use crate::error::Cause;
use crate::proto::{kind, HookMark};
use crate::wire::Frame;
use std::time::{Duration, Instant};

/// How often a child with a memory limit has its resident memory looked at.
pub(crate) const MEMORY_CHECK: Duration = Duration::from_millis(10);

/// What a parent can read of a running child at any moment.
pub(crate) trait Vitals {
    /// The child's sign-of-life counter.
    fn beat(&self) -> u64;
    /// Its resident memory in bytes, if it can be read.
    fn resident(&self) -> Option<u64>;
}

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
    /// No sign of life for the heartbeat period.
    Hung(Duration),
    /// Resident memory `used` past `limit` bytes.
    Memory { limit: u64, used: u64 },
}

/// What an overrun means for the life it ended.
#[derive(Debug)]
pub(crate) struct Verdict {
    /// Where the child was: the overrun's own hook and run if it has them,
    /// else the child's position.
    pub(crate) hook: Option<Hook>,
    pub(crate) run: Option<u64>,
    pub(crate) cause: Cause,
    /// No further life (`join_in` is for the whole process).
    pub(crate) last: bool,
    /// The hook call the kill cut short, and how long it had run (it never
    /// returned to be timed).
    pub(crate) killed_in: Option<(Hook, Duration)>,
}

impl Overrun {
    /// What this overrun means for a child that was at `position`.
    pub(crate) fn verdict(self, position: (Option<Hook>, Option<u64>)) -> Verdict {
        let (hook, run) = position;
        let plain = |cause, last| Verdict {
            hook,
            run,
            cause,
            last,
            killed_in: None,
        };
        match self {
            Overrun::Join(limit) => plain(Cause::JoinTimeout(limit), true),
            Overrun::Hung(period) => plain(Cause::Hung(period), false),
            Overrun::Memory { limit, used } => plain(Cause::OutOfMemory { limit, used }, false),
            Overrun::Hook {
                hook,
                run,
                limit,
                ran,
            } => Verdict {
                hook: Some(hook),
                run: Some(run),
                cause: Cause::HookTimeout(limit),
                last: false,
                killed_in: Some((hook, ran)),
            },
        }
    }
}

/// The deadlines of one attempt: `join_in`, fixed from the start of the
/// first attempt, and the timeout of the timed hook that runs now.
#[derive(Debug, Clone)]
pub(crate) struct Deadlines {
    timeouts: [Option<Duration>; 4],
    join: Option<(Instant, Duration)>,
    /// `(deadline, hook, run, limit)` while a timed hook runs.
    hook: Option<(Instant, Hook, u64, Duration)>,
    /// `(period, last count seen, when it last moved)`.
    heartbeat: Option<(Duration, u64, Instant)>,
    /// `(limit, next check)`.
    memory: Option<(u64, Instant)>,
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
            heartbeat: config.heartbeat.map(|d| (d, 0, Instant::now())),
            memory: config.memory_limit.map(|l| (l, Instant::now())),
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

    /// The next instant a limit passes (or a check is due), if any.
    pub(crate) fn next(&self) -> Option<Instant> {
        let beat = self
            .heartbeat
            .and_then(|(d, _, since)| since.checked_add(d));
        [
            self.hook.map(|h| h.0),
            self.join.map(|j| j.0),
            beat,
            self.memory.map(|m| m.1),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The limit that has passed at `now`, `join_in` first.
    pub(crate) fn overrun(&mut self, now: Instant, vitals: &impl Vitals) -> Option<Overrun> {
        if let Some((at, limit)) = self.join {
            if now >= at {
                return Some(Overrun::Join(limit));
            }
        }
        if let Some((limit, next)) = &mut self.memory {
            if now >= *next {
                *next = now + MEMORY_CHECK;
                if let Some(used) = vitals.resident().filter(|&u| u > *limit) {
                    return Some(Overrun::Memory {
                        limit: *limit,
                        used,
                    });
                }
            }
        }
        if let Some((period, seen, since)) = &mut self.heartbeat {
            let beat = vitals.beat();
            if beat != *seen {
                (*seen, *since) = (beat, now);
            } else if now.saturating_duration_since(*since) >= *period {
                return Some(Overrun::Hung(*period));
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
