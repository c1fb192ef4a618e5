//! Status reports: the newest value a child reported, in a page of shared
//! memory its parent reads at any moment.
//!
//! [`Ctx::report`](crate::Ctx::report) encodes the value (with its type's
//! name, like a message) and writes it into the page under a sequence lock:
//! the writer never waits for the reader and never queues, so a child can
//! report a million times a second and its parent's memory stays flat. The
//! reader copies the bytes and checks that the sequence did not move while
//! it copied. The page belongs to the process, not to one life: the last
//! report stays readable after a restart and after the end.
//!
//! Layout: word 0 is the sequence (odd while a write is under way), word 1
//! the length of the report; the report's bytes start at [`DATA`].

use crate::error::{Error, Result};
use crate::sys::region::Region;
use crate::wire;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

/// Where the report's bytes start.
const DATA: usize = 64;

/// The largest report, encoded.
pub(crate) const MAX_REPORT: usize = 64 * 1024;

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
        Self::wrap(Region::new(c"skprocess-report", DATA + MAX_REPORT)?)
    }

    /// The page behind a descriptor a parent sent.
    pub(crate) fn from_fd(fd: OwnedFd) -> std::io::Result<ReportPage> {
        Self::wrap(Region::from_fd(fd)?)
    }

    fn wrap(region: Region) -> std::io::Result<ReportPage> {
        if region.len() < DATA + MAX_REPORT {
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
        let seq = self.region.u64_at(0);
        let s = seq.load(Ordering::Relaxed);
        // Odd: a write is under way. The fence keeps the data writes after
        // this store, as a reader sees them.
        seq.store(s.wrapping_add(1) | 1, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        self.region
            .u64_at(8)
            .store(enc.bytes.len() as u64, Ordering::Relaxed);
        self.region.copy_in(DATA, &enc.bytes);
        seq.store((s | 1).wrapping_add(1), Ordering::Release);
        Ok(())
    }

    /// A copy of the newest report's bytes, or `None` before the first.
    fn snapshot(&self) -> Option<Vec<u8>> {
        let seq = self.region.u64_at(0);
        let mut spins = 0u32;
        loop {
            let before = seq.load(Ordering::Acquire);
            if before == 0 {
                return None;
            }
            if before.is_multiple_of(2) {
                let len = self.region.u64_at(8).load(Ordering::Relaxed);
                let len = usize::try_from(len).unwrap_or(usize::MAX).min(MAX_REPORT);
                let mut bytes = Vec::new();
                self.region.append_to(DATA, len, &mut bytes);
                std::sync::atomic::fence(Ordering::Acquire);
                if seq.load(Ordering::Relaxed) == before {
                    return Some(bytes);
                }
            }
            // A write is under way (or ended while this copied): its
            // writer never waits, so it is done in a moment.
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// The newest report as `T`, or `None` before the first.
    pub(crate) fn read<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        match self.snapshot() {
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
