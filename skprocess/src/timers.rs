//! Per-hook timing: count, total, mean, min, max and percentiles.
//!
//! The child records each hook call into a shared-memory page (a few relaxed
//! stores, no system call), so the parent can read live figures at any time
//! without a message round trip. Percentiles come from a log-linear
//! histogram (8 buckets per power of two, so within about 6 %), clamped to
//! the exact min and max.

use crate::config::Hook;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets in one histogram.
pub(crate) const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;
/// Words of one timer in shared memory: count, total, min, max, buckets.
pub(crate) const TIMER_WORDS: usize = 4 + BUCKETS;

fn bucket_of(ns: u64) -> usize {
    if ns < SUB {
        return ns as usize;
    }
    let e = 63 - ns.leading_zeros();
    let sub = (ns >> (e - SUB_BITS)) & (SUB - 1);
    ((e - SUB_BITS + 1) as u64 * SUB + sub) as usize
}

/// The smallest and largest value that fall in bucket `i`.
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, i);
    }
    let e = i / SUB + SUB_BITS as u64 - 1;
    let sub = i % SUB;
    let lo = (1u64 << e) | (sub << (e - SUB_BITS as u64));
    let width = 1u64 << (e - SUB_BITS as u64);
    (lo, lo.saturating_add(width - 1))
}

/// Records into a timer that lives in shared memory. Only one thread of
/// one process writes a given timer, so plain loads and stores suffice.
pub(crate) fn record(words: &[AtomicU64], d: Duration) {
    let ns = d.as_nanos().min(u64::MAX as u128) as u64;
    let count = words[0].load(Relaxed);
    words[1].store(words[1].load(Relaxed).saturating_add(ns), Relaxed);
    if count == 0 || ns < words[2].load(Relaxed) {
        words[2].store(ns, Relaxed);
    }
    if ns > words[3].load(Relaxed) {
        words[3].store(ns, Relaxed);
    }
    let b = &words[4 + bucket_of(ns)];
    b.store(b.load(Relaxed) + 1, Relaxed);
    // Count last: a reader that sees the count sees the rest.
    words[0].store(count + 1, std::sync::atomic::Ordering::Release);
}

/// Timing of one hook: how many calls, and how long they took.
///
/// # Examples
///
/// ```
/// use skprocess::Timer;
/// use std::time::Duration;
///
/// let mut t = Timer::default();
/// for ms in [10, 20, 30] {
///     t.record(Duration::from_millis(ms));
/// }
/// assert_eq!(t.count(), 3);
/// assert_eq!(t.total(), Duration::from_millis(60));
/// assert_eq!(t.mean(), Duration::from_millis(20));
/// assert_eq!(t.min(), Duration::from_millis(10));
/// assert_eq!(t.max(), Duration::from_millis(30));
/// assert_eq!(t.percentile(100.0), Duration::from_millis(30));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Timer {
    count: u64,
    total_ns: u64,
    min_ns: u64,
    max_ns: u64,
    buckets: Vec<u64>,
}

impl Default for Timer {
    fn default() -> Self {
        Timer {
            count: 0,
            total_ns: 0,
            min_ns: 0,
            max_ns: 0,
            buckets: vec![0; BUCKETS],
        }
    }
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("count", &self.count)
            .field("total", &self.total())
            .field("min", &self.min())
            .field("max", &self.max())
            .finish()
    }
}

impl Timer {
    /// Adds one measurement.
    pub fn record(&mut self, d: Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        if self.count == 0 || ns < self.min_ns {
            self.min_ns = ns;
        }
        self.max_ns = self.max_ns.max(ns);
        self.count = self.count.saturating_add(1);
        self.total_ns = self.total_ns.saturating_add(ns);
        let b = &mut self.buckets[bucket_of(ns)];
        *b = b.saturating_add(1);
    }

    /// Reads a timer from shared memory.
    pub(crate) fn load(words: &[AtomicU64]) -> Timer {
        let count = words[0].load(std::sync::atomic::Ordering::Acquire);
        let mut t = Timer {
            count,
            total_ns: words[1].load(Relaxed),
            min_ns: words[2].load(Relaxed),
            max_ns: words[3].load(Relaxed),
            buckets: words[4..4 + BUCKETS]
                .iter()
                .map(|w| w.load(Relaxed))
                .collect(),
        };
        if t.count == 0 {
            t = Timer::default();
        }
        t
    }

    /// Adds every measurement of `other` to this timer.
    pub fn merge(&mut self, other: &Timer) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 || other.min_ns < self.min_ns {
            self.min_ns = other.min_ns;
        }
        self.max_ns = self.max_ns.max(other.max_ns);
        // Counts come from a child's shared memory: whatever it wrote, adding
        // them must not overflow.
        self.count = self.count.saturating_add(other.count);
        self.total_ns = self.total_ns.saturating_add(other.total_ns);
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a = a.saturating_add(*b);
        }
    }

    /// Number of calls timed.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Time spent in all calls.
    pub fn total(&self) -> Duration {
        Duration::from_nanos(self.total_ns)
    }

    /// Mean time per call (zero if there was none).
    pub fn mean(&self) -> Duration {
        Duration::from_nanos(self.total_ns.checked_div(self.count).unwrap_or(0))
    }

    /// Shortest call (zero if there was none).
    pub fn min(&self) -> Duration {
        Duration::from_nanos(self.min_ns)
    }

    /// Longest call (zero if there was none).
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns)
    }

    /// The `p`-th percentile (`p` in 0..=100, clamped), within about 6 %.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let p = if p.is_nan() {
            50.0
        } else {
            p.clamp(0.0, 100.0)
        };
        if p <= 0.0 {
            return self.min();
        }
        if p >= 100.0 {
            return self.max();
        }
        let rank = ((p / 100.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen = seen.saturating_add(n);
            if seen >= rank {
                let (lo, hi) = bucket_range(i);
                let mid = lo + (hi - lo) / 2;
                return Duration::from_nanos(mid.clamp(self.min_ns, self.max_ns));
            }
        }
        self.max()
    }
}

/// The timers of a process, one per hook. Live while it runs, final after
/// `wait`; `Display` prints a table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timers {
    /// `prerun` calls.
    pub prerun: Timer,
    /// `run` calls.
    pub run: Timer,
    /// `postrun` calls.
    pub postrun: Timer,
    /// `onfinish` calls.
    pub onfinish: Timer,
}

impl Timers {
    /// The timer of one hook.
    pub fn get(&self, hook: Hook) -> &Timer {
        match hook {
            Hook::Prerun => &self.prerun,
            Hook::Run => &self.run,
            Hook::Postrun => &self.postrun,
            Hook::Onfinish => &self.onfinish,
        }
    }

    pub(crate) fn get_mut(&mut self, hook: Hook) -> &mut Timer {
        match hook {
            Hook::Prerun => &mut self.prerun,
            Hook::Run => &mut self.run,
            Hook::Postrun => &mut self.postrun,
            Hook::Onfinish => &mut self.onfinish,
        }
    }

    /// Adds every measurement of `other`.
    pub fn merge(&mut self, other: &Timers) {
        for h in Hook::ALL {
            self.get_mut(h).merge(other.get(h));
        }
    }
}

struct Short(Duration);

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos() as f64;
        let s = if ns < 1e3 {
            format!("{ns:.0}ns")
        } else if ns < 1e6 {
            format!("{:.1}µs", ns / 1e3)
        } else if ns < 1e9 {
            format!("{:.2}ms", ns / 1e6)
        } else {
            format!("{:.3}s", ns / 1e9)
        };
        f.pad(&s)
    }
}

impl fmt::Display for Timers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<9} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "hook", "count", "mean", "min", "p50", "p99", "max"
        )?;
        for h in Hook::ALL {
            let t = self.get(h);
            write!(
                f,
                "{:<9} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
                h.name(),
                t.count(),
                Short(t.mean()),
                Short(t.min()),
                Short(t.percentile(50.0)),
                Short(t.percentile(99.0)),
                Short(t.max())
            )?;
            if h != Hook::Onfinish {
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn buckets_cover_their_values() {
        for ns in [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            17,
            1000,
            123_456_789,
            u64::MAX / 3,
            u64::MAX,
        ] {
            let (lo, hi) = bucket_range(bucket_of(ns));
            assert!(lo <= ns && ns <= hi, "{ns} not in [{lo}, {hi}]");
            assert!(bucket_of(ns) < BUCKETS);
        }
    }

    #[test]
    fn percentiles_are_close() {
        let mut t = Timer::default();
        for i in 1..=1000u64 {
            t.record(Duration::from_micros(i));
        }
        let p50 = t.percentile(50.0).as_micros() as f64;
        assert!((p50 - 500.0).abs() / 500.0 < 0.07, "p50 = {p50}");
        let p99 = t.percentile(99.0).as_micros() as f64;
        assert!((p99 - 990.0).abs() / 990.0 < 0.07, "p99 = {p99}");
        assert_eq!(t.percentile(0.0), Duration::from_micros(1));
        assert_eq!(t.percentile(100.0), Duration::from_micros(1000));
    }

    #[test]
    fn garbage_from_a_child_never_panics() {
        let words: Vec<AtomicU64> = (0..TIMER_WORDS).map(|_| AtomicU64::new(u64::MAX)).collect();
        let t = Timer::load(&words);
        let mut sum = Timer::default();
        sum.merge(&t);
        sum.merge(&t);
        sum.record(Duration::from_secs(1));
        for p in [0.0, 1.0, 50.0, 99.9, 100.0, f64::NAN] {
            let _ = sum.percentile(p);
        }
        let _ = (sum.mean(), sum.total(), Timers::default().to_string());
    }

    #[test]
    fn shared_and_local_agree() {
        let words: Vec<AtomicU64> = (0..TIMER_WORDS).map(|_| AtomicU64::new(0)).collect();
        let mut local = Timer::default();
        for ms in [5u64, 1, 9] {
            record(&words, Duration::from_millis(ms));
            local.record(Duration::from_millis(ms));
        }
        assert_eq!(Timer::load(&words), local);
    }
}
