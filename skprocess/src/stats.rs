//! Message counters of a channel end.

use std::sync::atomic::{AtomicU64, Ordering};

/// How many messages and bytes went through one end of a channel, as seen
/// by this process.
///
/// Bytes count the encoded messages (the value and its type tag), not the
/// framing around them. The counters belong to one end in one process: an
/// end that travelled into a child starts counting from zero there.
///
/// # Examples
///
/// ```
/// use skprocess::{Pipe, Stats};
///
/// # fn main() -> skprocess::Result<()> {
/// let (a, b) = Pipe::pair()?;
/// a.send(&7u64)?;
/// let _: u64 = b.recv()?;
/// assert_eq!(a.stats().messages_sent, 1);
/// assert_eq!(b.stats().messages_received, 1);
/// assert_eq!(a.stats().bytes_sent, b.stats().bytes_received);
/// assert_eq!(a.stats().messages_received, 0);
/// assert_eq!(Stats::default().bytes_sent, 0);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// Messages sent.
    pub messages_sent: u64,
    /// Bytes of the messages sent.
    pub bytes_sent: u64,
    /// Messages received (including those that failed to decode).
    pub messages_received: u64,
    /// Bytes of the messages received.
    pub bytes_received: u64,
}

/// The live counters behind a [`Stats`] snapshot, updated from any thread.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    messages_sent: AtomicU64,
    bytes_sent: AtomicU64,
    messages_received: AtomicU64,
    bytes_received: AtomicU64,
}

impl Counters {
    /// Counts one message of `bytes` encoded bytes sent.
    pub(crate) fn sent(&self, bytes: usize) {
        self.messages_sent.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts one message of `bytes` encoded bytes received.
    pub(crate) fn received(&self, bytes: usize) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Like [`sent`](Counters::sent), for a caller that is the only one to
    /// count sends on these counters (it holds the end's lock): a load and
    /// a store each, no atomic read-modify-write.
    pub(crate) fn sent_alone(&self, bytes: usize) {
        bump(&self.messages_sent, 1);
        bump(&self.bytes_sent, bytes as u64);
    }

    /// Like [`received`](Counters::received), for the only caller that
    /// counts receives (see [`sent_alone`](Counters::sent_alone)).
    pub(crate) fn received_alone(&self, bytes: usize) {
        bump(&self.messages_received, 1);
        bump(&self.bytes_received, bytes as u64);
    }

    /// The counts now.
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            messages_received: self.messages_received.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
        }
    }
}

/// Adds `n` to a counter that only one thread at a time writes.
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}
