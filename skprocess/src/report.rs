//! Status reports: the newest value a child reported, in a page of shared
//! memory its parent reads at any moment.
//!
//! [`Ctx::report`](crate::Ctx::report) encodes the value (with its type's
//! name, like a message) and writes it into the page: the writer never waits
//! for the reader and never queues, so a child can report a million times a
//! second and its parent's memory stays flat. The page belongs to the
//! process, not to one life: the last report stays readable after a restart
//! and after the end.
//!
//! The page holds two slots. A write goes into the slot that does not hold
//! the newest complete report, under that slot's sequence lock (odd while
//! the write is under way), and only then names its slot as the newest. A
//! child killed in the middle of a write (a grace kill, a memory limit,
//! `Handle::kill`) leaves a torn slot that nothing points at: the reader
//! still finds the last complete report, so it never waits for a writer
//! that will never finish. The reader copies the newest slot and checks that
//! its sequence did not move while it copied; it retries a bounded number of
//! times (only a live writer overtaking it twice per copy, on every try,
//! could exhaust them) and then says so instead of spinning.
//!
//! Layout: word 0 is the generation of the newest complete report (0 before
//! the first; generation `g` lives in slot `g % 2`); slot `i` has its
//! sequence at word `1 + 2i` and its length at word `2 + 2i`; its bytes
//! start at `DATA + i * MAX_REPORT`.

use crate::error::{Error, Result};
use crate::sys::region::Region;
use crate::wire;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Where the first slot's bytes start.
const DATA: usize = 64;

/// The largest report, encoded.
pub(crate) const MAX_REPORT: usize = 64 * 1024;

/// The size of a report page.
const PAGE: usize = DATA + 2 * MAX_REPORT;

/// How many times a reader tries before giving up on a writer that keeps
/// overtaking it.
const TRIES: u32 = 10_000;

/// One process's report page.
#[derive(Debug)]
pub(crate) struct ReportPage {
    region: Region,
    /// Reports from several threads of one child take turns.
    writing: Mutex<()>,
}

impl ReportPage {
    /// A new, empty page.
    pub(crate) fn new() -> std::io::Result<ReportPage> {
        Self::wrap(Region::new(c"skprocess-report", PAGE)?)
    }

    /// The page behind a descriptor a parent sent.
    pub(crate) fn from_fd(fd: OwnedFd) -> std::io::Result<ReportPage> {
        Self::wrap(Region::from_fd(fd)?)
    }

    fn wrap(region: Region) -> std::io::Result<ReportPage> {
        if region.len() < PAGE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the report page is too small",
            ));
        }
        Ok(ReportPage {
            region,
            writing: Mutex::new(()),
        })
    }

    /// The page's descriptor, to send to a child.
    pub(crate) fn fd(&self) -> &OwnedFd {
        self.region.fd()
    }

    /// The generation of the newest complete report (0: none yet).
    fn newest(&self) -> &AtomicU64 {
        self.region.u64_at(0)
    }

    /// Slot `i`'s sequence word (odd while a write is under way).
    fn seq(&self, i: usize) -> &AtomicU64 {
        self.region.u64_at(8 + 16 * i)
    }

    /// Slot `i`'s length word.
    fn len(&self, i: usize) -> &AtomicU64 {
        self.region.u64_at(16 + 16 * i)
    }

    /// Publishes `value` as the newest report.
    pub(crate) fn publish<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let enc = wire::encode_message(value)?;
        if !enc.fds.is_empty() {
            return Err(Error::Usage(
                "a report cannot carry shares, pipes or other handles; tell them instead".into(),
            ));
        }
        if enc.bytes.len() > MAX_REPORT {
            return Err(Error::Usage(format!(
                "a report of {} bytes is over the {MAX_REPORT} byte limit of reports",
                enc.bytes.len()
            )));
        }
        let _turn = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        // Only writers store the generation, and they take turns (an
        // earlier life of this process has ended before this one writes).
        let generation = self.newest().load(Ordering::Relaxed).wrapping_add(1);
        let slot = (generation % 2) as usize;
        let seq = self.seq(slot);
        // Odd, and different from any value a reader may have seen (an
        // earlier life killed mid-write may have left it odd). The fence
        // keeps the data writes after this store, as a reader sees them.
        let odd = (seq.load(Ordering::Relaxed) | 1).wrapping_add(2);
        seq.store(odd, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        self.len(slot)
            .store(enc.bytes.len() as u64, Ordering::Relaxed);
        self.region.copy_in(DATA + slot * MAX_REPORT, &enc.bytes);
        seq.store(odd.wrapping_add(1), Ordering::Release);
        self.newest().store(generation, Ordering::Release);
        Ok(())
    }

    /// A copy of the newest complete report's bytes, or `None` before the
    /// first. Bounded: never waits for a writer.
    fn snapshot(&self) -> Result<Option<Vec<u8>>> {
        for tries in 1..=TRIES {
            let generation = self.newest().load(Ordering::Acquire);
            if generation == 0 {
                return Ok(None);
            }
            let slot = (generation % 2) as usize;
            let seq = self.seq(slot);
            let before = seq.load(Ordering::Acquire);
            // Odd: the writer has since finished the other slot and is
            // rewriting this one; the newest generation has moved on.
            if before.is_multiple_of(2) {
                let len = self.len(slot).load(Ordering::Relaxed);
                let len = usize::try_from(len).unwrap_or(usize::MAX).min(MAX_REPORT);
                let mut bytes = Vec::new();
                self.region
                    .append_to(DATA + slot * MAX_REPORT, len, &mut bytes);
                std::sync::atomic::fence(Ordering::Acquire);
                if seq.load(Ordering::Relaxed) == before {
                    return Ok(Some(bytes));
                }
            }
            if tries.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "the report changed during every read; read it again",
        )))
    }

    /// The newest report as `T`, or `None` before the first.
    pub(crate) fn read<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        match self.snapshot()? {
            Some(bytes) => wire::decode_message(&bytes, Vec::new()).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn the_newest_report_wins_and_types_are_checked() {
        let page = ReportPage::new().unwrap();
        assert_eq!(page.read::<u64>().unwrap(), None);
        page.publish(&1u64).unwrap();
        page.publish(&2u64).unwrap();
        assert_eq!(page.read::<u64>().unwrap(), Some(2));
        assert!(matches!(
            page.read::<String>(),
            Err(Error::WrongType { .. })
        ));
        let other = ReportPage::from_fd(page.fd().try_clone().unwrap()).unwrap();
        assert_eq!(other.read::<u64>().unwrap(), Some(2));
    }

    #[test]
    fn an_oversize_report_is_an_error() {
        let page = ReportPage::new().unwrap();
        let big = vec![0u8; MAX_REPORT + 1];
        assert!(matches!(page.publish(&big), Err(Error::Usage(_))));
        assert_eq!(page.read::<Vec<u8>>().unwrap(), None);
    }

    /// A writer killed in the middle of a write leaves its slot's sequence
    /// odd: the reader returns the last complete report at once, and the
    /// next life's writes go on.
    #[test]
    fn a_write_torn_by_a_death_leaves_the_last_report_readable() {
        let page = ReportPage::new().unwrap();
        page.publish(&7u64).unwrap();
        // What a writer killed after marking its write leaves behind: the
        // slot the next generation goes to is odd and half written.
        let torn = ((page.newest().load(Ordering::Relaxed) + 1) % 2) as usize;
        let seq = page.seq(torn);
        seq.store(seq.load(Ordering::Relaxed) | 1, Ordering::Relaxed);
        page.region.copy_in(DATA + torn * MAX_REPORT, &[0xff; 16]);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let first = page.read::<u64>().unwrap();
            // The next life of the process writes over the torn slot.
            page.publish(&8u64).unwrap();
            let _ = tx.send((first, page.read::<u64>().unwrap()));
        });
        let read = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("reading a report hung on a torn write");
        assert_eq!(read, (Some(7), Some(8)));
    }

    #[test]
    fn a_reader_racing_a_writer_sees_whole_reports() {
        let page = std::sync::Arc::new(ReportPage::new().unwrap());
        let w = page.clone();
        let writer = std::thread::spawn(move || {
            for i in 0..20_000u64 {
                w.publish(&vec![i; 1 + (i % 50) as usize]).unwrap();
            }
        });
        let mut seen = 0;
        while !writer.is_finished() || seen == 0 {
            if let Some(v) = page.read::<Vec<u64>>().unwrap() {
                let i = v[0];
                assert_eq!(v.len(), 1 + (i % 50) as usize);
                assert!(v.iter().all(|&x| x == i), "a torn report");
                seen += 1;
            }
        }
        writer.join().unwrap();
    }
}
