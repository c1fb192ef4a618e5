//! A fixed-size shared-memory region guarded by a fair, robust
//! cross-process lock: the storage of a queue or of a mutable shared slice.
//!
//! # Layout
//!
//! ```text
//! [ header: HEADER bytes                          ][ data: the rest of the file ]
//!   magic, tag, WORDS control words (u64),
//!   FUTEXES futex words (u32), lock (SharedMutex)
//! ```
//!
//! The memfd is sealed against shrinking and growing when it is made, and a
//! descriptor that is not sealed so is refused, so the one mapping a process
//! makes of it stays fully backed for its whole life and never moves (the
//! lock keeps one address, which glibc's robust list and the kernel's
//! clean-up at thread death refer to).
//!
//! Control words are atomics, valid for any bits. The data bytes are
//! reached as slices only through a [`LockedGuard`], that is while this
//! thread holds the lock; every user of a region touches the data only
//! under the lock, so no other process writes them meanwhile. A peer that
//! breaks that rule can garble bytes (which callers validate) but cannot
//! make this process touch memory outside the mapping.

use super::mutex::{MutexGuard, SharedMutex};
use super::region::Region;
use rustix::fs::SealFlags;
use std::ffi::CStr;
use std::io;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// Bytes before the data: one small page, which also keeps the data
/// aligned for any element type.
pub(crate) const HEADER: usize = 4096;

/// Control words a user of the region may use ([`LockedRegion::word`]).
pub(crate) const WORDS: usize = 14;

/// Futex words a user of the region may use ([`LockedRegion::futex`]).
pub(crate) const FUTEXES: usize = 8;

const MAGIC_AT: usize = 0;
const TAG_AT: usize = 8;
const WORDS_AT: usize = 16;
const FUTEXES_AT: usize = WORDS_AT + 8 * WORDS;
const LOCK_AT: usize = (FUTEXES_AT + 4 * FUTEXES).next_multiple_of(64);

const _: () = assert!(LOCK_AT + SharedMutex::SIZE <= HEADER);
const _: () = assert!(LOCK_AT.is_multiple_of(std::mem::align_of::<SharedMutex>()));

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// A mapped, sealed memfd with a lock in its header (see the module docs).
pub(crate) struct LockedRegion {
    /// Unmapped on drop unless a thread of this process still holds the
    /// lock (see the `Drop` impl).
    region: ManuallyDrop<Region>,
}

impl std::fmt::Debug for LockedRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedRegion")
            .field("data_len", &self.data_len())
            .finish()
    }
}

impl Drop for LockedRegion {
    fn drop(&mut self) {
        // As in `shm::Segment`: a guard leaked with `mem::forget` leaves the
        // lock in this thread's robust list, which must keep pointing at
        // mapped memory, so then the mapping stays for the process's life.
        if !self.mutex().held_in_this_process() {
            // SAFETY: `region` is not used after this, and no guard exists
            // (it would borrow `self`).
            unsafe { ManuallyDrop::drop(&mut self.region) };
        }
    }
}

impl LockedRegion {
    /// A new zero-filled region with `data_len` bytes of data, marked with
    /// `magic` (what kind of structure it holds) and `tag` (for what type).
    /// `setup` fills the control words before the region is published.
    pub(crate) fn create(
        name: &CStr,
        magic: u64,
        tag: u64,
        data_len: usize,
        setup: impl FnOnce(&LockedRegion),
    ) -> io::Result<LockedRegion> {
        let len = data_len
            .checked_add(HEADER)
            .ok_or_else(|| io::Error::new(io::ErrorKind::FileTooLarge, "region too large"))?;
        let region = Region::new(name, len)?;
        let this = LockedRegion {
            region: ManuallyDrop::new(region),
        };
        // SAFETY: the file is fresh and zero-filled and no other process
        // has its descriptor yet, so nobody uses the lock.
        unsafe { this.mutex().init()? };
        this.region.u64_at(TAG_AT).store(tag, Ordering::Relaxed);
        setup(&this);
        // Published last: a region without the magic is refused.
        this.region.u64_at(MAGIC_AT).store(magic, Ordering::Release);
        Ok(this)
    }

    /// Maps a region received from another process, checking that it is a
    /// sealed memfd holding a `magic` structure made for `tag`.
    pub(crate) fn open(fd: OwnedFd, magic: u64, tag: u64) -> io::Result<LockedRegion> {
        let seals = rustix::fs::fcntl_get_seals(&fd)
            .map_err(|_| invalid("the descriptor is not shared memory"))?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(invalid("shared memory whose size is not sealed is refused"));
        }
        if super::mem::file_len(&fd)? < HEADER as u64 {
            return Err(invalid("the shared memory is too small"));
        }
        let region = Region::from_fd(fd)?;
        // Checked before the lock is looked at: only a region with the magic
        // has one.
        if region.u64_at(MAGIC_AT).load(Ordering::Acquire) != magic {
            return Err(invalid("the shared memory holds something else"));
        }
        if region.u64_at(TAG_AT).load(Ordering::Relaxed) != tag {
            return Err(invalid("the shared memory was made for another type"));
        }
        Ok(LockedRegion {
            region: ManuallyDrop::new(region),
        })
    }

    fn mutex(&self) -> &SharedMutex {
        let at = self.region.base().cast_const();
        // SAFETY: the mapping is page-aligned and at least HEADER bytes long
        // (checked in `create`/`open`), so the lock lies inside it at
        // LOCK_AT with its alignment (checked at compile time); it lives as
        // long as `self`. The creator made the lock ready before publishing
        // the magic, which `open` checks (and `create` calls `init` first).
        unsafe { SharedMutex::at(at.add(LOCK_AT)) }
    }

    /// The descriptor, to send to another process.
    pub(crate) fn fd(&self) -> &OwnedFd {
        self.region.fd()
    }

    /// Bytes of data after the header.
    pub(crate) fn data_len(&self) -> usize {
        self.region.len() - HEADER
    }

    /// Control word `i` (below [`WORDS`]).
    pub(crate) fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < WORDS, "no control word {i}");
        self.region.u64_at(WORDS_AT + 8 * i)
    }

    /// Futex word `i` (below [`FUTEXES`]).
    pub(crate) fn futex(&self, i: usize) -> &AtomicU32 {
        assert!(i < FUTEXES, "no futex word {i}");
        self.region.u32_at(FUTEXES_AT + 4 * i)
    }

    /// Takes the lock, waiting until `deadline` (`None`: no limit; passed:
    /// one try). `Ok(None)` when the deadline passes first. Locking again
    /// from the holding thread is an error (`ErrorKind::Deadlock`).
    pub(crate) fn lock(&self, deadline: Option<Instant>) -> io::Result<Option<LockedGuard<'_>>> {
        Ok(self.mutex().lock(deadline)?.map(|guard| LockedGuard {
            region: self,
            guard,
            _not_send: PhantomData,
        }))
    }
}

/// The region's lock, held by this thread; released on drop. Not `Send`.
pub(crate) struct LockedGuard<'a> {
    region: &'a LockedRegion,
    guard: MutexGuard<'a>,
    _not_send: PhantomData<*mut ()>,
}

impl std::fmt::Debug for LockedGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedGuard")
            .field("recovered", &self.guard.recovered())
            .finish()
    }
}

impl LockedGuard<'_> {
    /// Whether the previous holder died holding the lock.
    pub(crate) fn recovered(&self) -> bool {
        self.guard.recovered()
    }

    /// Copies `src` into the data at `offset`.
    ///
    /// # Panics
    ///
    /// If the range is not inside the data.
    pub(crate) fn copy_in(&self, offset: usize, src: &[u8]) {
        assert!(offset <= self.region.data_len(), "copy out of the data");
        self.region.region.copy_in(HEADER + offset, src);
    }

    /// Copies the data at `offset` into `dst`.
    ///
    /// # Panics
    ///
    /// If the range is not inside the data.
    pub(crate) fn copy_out(&self, offset: usize, dst: &mut [u8]) {
        assert!(offset <= self.region.data_len(), "copy out of the data");
        self.region.region.copy_out(HEADER + offset, dst);
    }

    /// Appends `len` bytes of the data at `offset` to `dst`.
    ///
    /// # Panics
    ///
    /// If the range is not inside the data.
    pub(crate) fn append_to(&self, offset: usize, len: usize, dst: &mut Vec<u8>) {
        assert!(offset <= self.region.data_len(), "copy out of the data");
        self.region.region.append_to(HEADER + offset, len, dst);
    }

    /// The data, to read in place.
    pub(crate) fn bytes(&self) -> &[u8] {
        let base = self.region.region.base().cast_const();
        // SAFETY: the data lies inside the live mapping (HEADER plus
        // data_len bytes from its start), which outlives the borrow of the
        // guard. Every user of the region writes the data only while holding
        // the lock, which this thread holds for as long as `self` lives, so
        // the bytes do not change under the shared borrow.
        unsafe { std::slice::from_raw_parts(base.add(HEADER), self.region.data_len()) }
    }

    /// The data, to change in place.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        let base = self.region.region.base();
        // SAFETY: as in `bytes`; the lock held by this thread makes this the
        // only access to the data in any process, and the borrow of `self`
        // (exclusive) keeps this the only reference in this thread.
        unsafe { std::slice::from_raw_parts_mut(base.add(HEADER), self.region.data_len()) }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn open_checks_magic_tag_and_seals() {
        let r = LockedRegion::create(c"t", 1, 2, 100, |r| r.word(0).store(5, Ordering::Relaxed))
            .unwrap();
        let fd = || r.fd().try_clone().unwrap();
        let o = LockedRegion::open(fd(), 1, 2).unwrap();
        assert_eq!(o.word(0).load(Ordering::Relaxed), 5);
        assert_eq!(o.data_len(), 100);
        assert!(LockedRegion::open(fd(), 9, 2).is_err());
        assert!(LockedRegion::open(fd(), 1, 9).is_err());
        let unsealed = super::super::mem::memfd(c"u", 8192).unwrap();
        assert!(LockedRegion::open(unsealed, 1, 2).is_err());
        let small = Region::new(c"s", 64).unwrap();
        assert!(LockedRegion::open(small.fd().try_clone().unwrap(), 1, 2).is_err());
    }

    #[test]
    fn data_written_under_the_lock_is_seen_by_another_mapping() {
        let r = LockedRegion::create(c"t", 1, 2, 16, |_| {}).unwrap();
        let o = LockedRegion::open(r.fd().try_clone().unwrap(), 1, 2).unwrap();
        r.lock(None).unwrap().unwrap().bytes_mut()[3] = 7;
        let g = o.lock(None).unwrap().unwrap();
        assert_eq!(g.bytes()[3], 7);
        assert!(!g.recovered());
    }
}
