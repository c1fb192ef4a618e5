//! How a supervisor treats its children: which ones restart ([`Restart`]),
//! which others go with them ([`Strategy`]), how long to wait first
//! ([`Backoff`]), how long a stop may take, and when to give up.
//!
//! The defaults follow long practice: systemd restarts after 100 ms and
//! gives up after 5 starts in 10 s; Erlang/OTP gives a worker 5 s to shut
//! down; Kubernetes backs off exponentially (up to a cap) and forgets a
//! crash loop once a container has run well for a while.

use crate::config::Config;
use std::time::Duration;

/// Which of a supervisor's children restart when one of them ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Only the child that ended (the default).
    #[default]
    OneForOne,
    /// Every child: the others are stopped and all start again.
    OneForAll,
    /// The child that ended and every child added after it.
    RestForOne,
}

/// When a child restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Restart {
    /// Whenever it ends, well or not (the default): a service.
    #[default]
    Permanent,
    /// Only after a failure (an `Err`, a panic, a crash, a timeout, a hang,
    /// running out of memory): a job that may finish.
    Transient,
    /// Never.
    Temporary,
}

/// How long a child waits before it restarts: from `first`, doubling at
/// each restart up to `cap`, and back to `first` once the child has run
/// for `reset_after` without ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub(crate) first: Duration,
    pub(crate) cap: Duration,
    pub(crate) reset_after: Duration,
}

impl Backoff {
    /// From `first`, doubling up to `cap`; reset after 10 s of health.
    pub fn exponential(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            first,
            cap: cap.max(first),
            reset_after: Duration::from_secs(10),
        }
    }

    /// Always `delay`.
    pub fn fixed(delay: Duration) -> Backoff {
        Backoff::exponential(delay, delay)
    }

    /// No wait at all.
    pub fn none() -> Backoff {
        Backoff::fixed(Duration::ZERO)
    }

    /// How long a child must run without ending for the delay to go back
    /// to the first one.
    pub fn reset_after(mut self, healthy: Duration) -> Backoff {
        self.reset_after = healthy;
        self
    }

    /// The delay after `delay`.
    pub(crate) fn next(&self, delay: Duration) -> Duration {
        delay.saturating_mul(2).clamp(self.first, self.cap)
    }

    /// The delay before restarting a child that ran for `ran`, when the
    /// delay due was `due`; and the one due after it. A child that ran for
    /// `reset_after` or longer starts over from `first`.
    pub(crate) fn delay_after(&self, due: Duration, ran: Duration) -> (Duration, Duration) {
        let delay = if ran >= self.reset_after {
            self.first
        } else {
            due
        };
        (delay, self.next(delay))
    }
}

impl Default for Backoff {
    /// 100 ms doubling up to 30 s, reset after 10 s of health.
    fn default() -> Backoff {
        Backoff::exponential(Duration::from_millis(100), Duration::from_secs(30))
    }
}

/// How one child is supervised; see [`Supervisor::add_with`](super::Supervisor::add_with).
///
/// # Examples
///
/// ```
/// use skprocess::supervise::{Backoff, Child, Restart};
/// use std::time::Duration;
///
/// let child = Child::new()
///     .restart(Restart::Transient)
///     .backoff(Backoff::exponential(Duration::from_millis(100), Duration::from_secs(30)))
///     .grace(Duration::from_secs(2));
/// assert_eq!(child.get_restart(), Restart::Transient);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Child {
    pub(crate) restart: Restart,
    pub(crate) backoff: Backoff,
    pub(crate) grace: Option<Duration>,
    pub(crate) config: Option<Config>,
}

impl Child {
    /// Permanent, with the default backoff and grace, and the process
    /// type's own configuration.
    pub fn new() -> Child {
        Child::default()
    }

    /// When it restarts.
    pub fn restart(mut self, restart: Restart) -> Child {
        self.restart = restart;
        self
    }

    /// How long it waits before a restart.
    pub fn backoff(mut self, backoff: Backoff) -> Child {
        self.backoff = backoff;
        self
    }

    /// How long a stop may take before the child is killed (default 5 s).
    pub fn grace(mut self, grace: Duration) -> Child {
        self.grace = Some(grace);
        self
    }

    /// Its configuration (lives, timeouts, heartbeat, memory limit...),
    /// instead of its type's `#[process(...)]`.
    pub fn config(mut self, config: Config) -> Child {
        self.config = Some(config);
        self
    }

    /// When it restarts.
    pub fn get_restart(&self) -> Restart {
        self.restart
    }
}

/// The default grace of a supervised child's stop.
pub(crate) const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// The default intensity: more than 5 restarts in 10 s and the supervisor
/// gives up.
pub(crate) const DEFAULT_INTENSITY: (u32, Duration) = (5, Duration::from_secs(10));

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_millis(500));
        let mut d = b.first;
        let mut seen = vec![d];
        for _ in 0..4 {
            d = b.next(d);
            seen.push(d);
        }
        let ms: Vec<u128> = seen.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 500, 500]);
        assert_eq!(Backoff::none().next(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn backoff_starts_over_after_a_healthy_stretch() {
        let ms = Duration::from_millis;
        let b = Backoff::exponential(ms(100), ms(800)).reset_after(Duration::from_secs(10));
        // Quick failures: the delay doubles.
        let (d1, due) = b.delay_after(b.first, ms(5));
        let (d2, due) = b.delay_after(due, ms(5));
        let (d3, due) = b.delay_after(due, Duration::from_secs(9));
        assert_eq!([d1, d2, d3], [ms(100), ms(200), ms(400)]);
        // A run as long as `reset_after`: back to the first delay.
        let (d4, due) = b.delay_after(due, Duration::from_secs(10));
        assert_eq!((d4, due), (ms(100), ms(200)));
        let (d5, _) = b.delay_after(ms(800), Duration::from_secs(60));
        assert_eq!(d5, ms(100));
    }
}
