//! A shared-memory arena for one value: an anonymous memfd holding a header
//! with a fair, robust cross-process lock ([`super::mutex`]) and two data
//! slots.
//!
//! # Layout
//!
//! ```text
//! [ header page                       ][ data region ...                    ]
//!   magic, tag, data_off               slot regions, each (off, cap) from
//!   generation (active slot = gen & 1)  the start of the data region
//!   size (bytes of the file in use)
//!   slot[0] = (off, cap, len)
//!   slot[1] = (off, cap, len)
//!   lock (a SharedMutex)
//! ```
//!
//! The header page is mapped once per process and never moves, so the lock
//! keeps one address for as long as the process can hold it (glibc's robust
//! list and the kernel's clean-up at thread death refer to that address).
//! The data region is a second mapping, remapped when the file grows.
//!
//! # Crash safety
//!
//! Everything below is done under the lock:
//!
//! - A writer copies the new bytes into the *inactive* slot, sets that
//!   slot's length, and only then stores `generation + 1`, which flips the
//!   active slot in one atomic store. A writer killed at any earlier point
//!   leaves the active slot and the generation untouched.
//! - Growth extends the same memfd (`ftruncate`, never a new segment, so
//!   every process's descriptor stays valid), records the new size, then
//!   points the inactive slot at a fresh region at the end of the file,
//!   moving `off` before `cap` so a torn update never lets a slot's capacity
//!   reach past its region. The old region of that slot is released with
//!   `FALLOC_FL_PUNCH_HOLE`.
//! - The memfd is sealed against shrinking, so a mapping that was valid once
//!   can never turn into `SIGBUS`.
//! - A holder that dies leaves the lock to the kernel's robust-futex
//!   clean-up: the next locker gets it marked recovered and carries on with
//!   the last complete value.
//!
//! Every number read from the header is checked against the file's real
//! size before use, so a corrupt header is an error, never an access out of
//! bounds.

use super::mutex::{MutexGuard, SharedMutex};
use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};
use std::cell::UnsafeCell;
use std::ffi::CStr;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// `b"SKSHARE1"` as a little-endian word.
const MAGIC: u64 = u64::from_le_bytes(*b"SKSHARE1");

/// The smallest page size the layout supports; the header must fit in it.
const MIN_PAGE: usize = 4096;

/// One data slot: where its region is, how big, how much of it is in use.
#[repr(C)]
struct Slot {
    /// Start of the region, from the start of the data region.
    off: AtomicU64,
    /// Bytes in the region.
    cap: AtomicU64,
    /// Bytes of the encoded value.
    len: AtomicU64,
}

/// The header at the start of the memfd.
#[repr(C)]
struct Header {
    magic: AtomicU64,
    /// A fingerprint of the value's type, checked when a process attaches.
    tag: AtomicU64,
    /// Bytes before the data region (the creator's page size).
    data_off: AtomicU64,
    /// Bumped by every write; the active slot is `generation & 1`.
    generation: AtomicU64,
    /// Bytes of the file in use (header included).
    size: AtomicU64,
    slots: [Slot; 2],
}

/// Where the segment's lock (a [`SharedMutex`]) lives: after the header,
/// in the same page.
const LOCK_OFFSET: usize = std::mem::size_of::<Header>().next_multiple_of(64);

const _: () = assert!(LOCK_OFFSET + SharedMutex::SIZE <= MIN_PAGE);
const _: () = assert!(LOCK_OFFSET.is_multiple_of(std::mem::align_of::<SharedMutex>()));

fn page_size() -> usize {
    rustix::param::page_size().max(MIN_PAGE)
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("shared value's memory segment is corrupt: {what}"),
    )
}

fn round_up(n: u64, to: u64) -> Option<u64> {
    n.checked_add(to - 1).map(|v| v / to * to)
}

fn fstat_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(rustix::fs::fstat(fd)?.st_size as u64)
}

/// The identity of the file behind `fd` (device, inode): equal for every
/// descriptor of one memfd, and unique among files that are open.
pub(crate) fn file_id(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

fn set_size(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    loop {
        match rustix::fs::ftruncate(fd, size) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::FBIG | rustix::io::Errno::INVAL) => return Err(too_large()),
            other => return Ok(other?),
        }
    }
}

/// Process-local state of a [`Segment`]: the data mapping and the caller's
/// own state `L`, both only touched while the segment's mutex is held.
struct Local<L> {
    data: Option<memmap2::MmapRaw>,
    user: L,
}

/// One shared value's memory, as seen by this process.
///
/// `L` is process-local state the caller keeps beside the mapping (a decoded
/// copy, a scratch buffer); it is reachable only through a [`Held`] lock.
pub(crate) struct Segment<L> {
    /// Unmapped on drop unless a thread of this process still holds the
    /// mutex (see the `Drop` impl).
    header: ManuallyDrop<memmap2::MmapRaw>,
    data_off: u64,
    /// Reached only through a [`Held`], that is by the one thread that
    /// holds the segment's mutex.
    local: UnsafeCell<Local<L>>,
    fd: OwnedFd,
}

// SAFETY: the header is shared memory accessed through atomics and pthread
// calls, which are thread-safe; `local` is reached only through `Held`,
// which exists only while its thread holds the process-shared mutex, so at
// most one thread at a time touches it (moving `L` between threads needs
// `L: Send`).
unsafe impl<L: Send> Sync for Segment<L> {}
// SAFETY: as above; nothing in a Segment is tied to the thread that made it.
unsafe impl<L: Send> Send for Segment<L> {}

impl<L> std::fmt::Debug for Segment<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("fd", &self.fd.as_raw_fd())
            .field("generation", &self.generation())
            .field("len", &self.len())
            .finish()
    }
}

impl<L> Drop for Segment<L> {
    fn drop(&mut self) {
        // A guard leaked with `mem::forget` leaves the mutex locked by a
        // thread of this process, and that thread's robust list (which
        // glibc edits on every robust lock and unlock, and the kernel walks
        // when the thread ends) still links through the mutex. Unmapping
        // the header would leave the list pointing at nothing, so in that
        // case the page stays mapped for the life of the process.
        if !self.mutex().held_in_this_process() {
            // SAFETY: `header` is not used after this; no Held exists (it
            // would borrow `self`), and no thread of this process holds the
            // mutex, so nothing refers to the mapping any more.
            unsafe { ManuallyDrop::drop(&mut self.header) };
        }
    }
}

impl<L> Segment<L> {
    /// Creates a segment holding `bytes`, with room for `capacity` bytes per
    /// slot, tagged with the value type's fingerprint `tag`.
    pub(crate) fn create(
        name: &CStr,
        tag: u64,
        bytes: &[u8],
        capacity: usize,
        user: L,
    ) -> io::Result<Self> {
        let page = page_size() as u64;
        let cap =
            round_up((capacity.max(bytes.len()).max(1)) as u64, page).ok_or_else(too_large)?;
        let size = page
            .checked_add(cap.checked_mul(2).ok_or_else(too_large)?)
            .ok_or_else(too_large)?;
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        set_size(fd.as_fd(), size)?;
        // Nobody may shrink the file under another process's mapping.
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK)?;
        let header = memmap2::MmapOptions::new()
            .len(page as usize)
            .map_raw(fd.as_raw_fd())?;
        let mut seg = Segment {
            header: ManuallyDrop::new(header),
            data_off: page,
            local: UnsafeCell::new(Local { data: None, user }),
            fd,
        };
        let data = map_data(seg.fd.as_fd(), page, size)?;
        // SAFETY: slot 0's region [0, cap) lies inside the new mapping and no
        // other process has the descriptor yet.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), data.as_mut_ptr(), bytes.len()) };
        seg.local.get_mut().data = Some(data);
        let h = seg.header();
        // SAFETY: the file is fresh and zero-filled, and no other process
        // has it yet, so nobody uses the lock.
        unsafe { seg.mutex().init()? };
        h.tag.store(tag, Ordering::Relaxed);
        h.data_off.store(page, Ordering::Relaxed);
        h.size.store(size, Ordering::Relaxed);
        for (i, s) in h.slots.iter().enumerate() {
            s.off.store(i as u64 * cap, Ordering::Relaxed);
            s.cap.store(cap, Ordering::Relaxed);
        }
        h.generation.store(0, Ordering::Relaxed);
        h.slots[0].len.store(bytes.len() as u64, Ordering::Relaxed);
        // Published last: a segment without the magic is refused.
        h.magic.store(MAGIC, Ordering::Release);
        Ok(seg)
    }

    /// Attaches to a segment received from another process, checking that it
    /// is one and that it holds a value of the type fingerprinted by `tag`.
    pub(crate) fn open(fd: OwnedFd, tag: u64, user: L) -> io::Result<Self> {
        let file = fstat_size(fd.as_fd())?;
        if file < MIN_PAGE as u64 {
            return Err(corrupt("the descriptor is not a shared value (too small)"));
        }
        // Only a segment sealed against shrinking is safe to map: otherwise
        // another process could cut the file under this one's mapping.
        // Fails on anything but a memfd.
        let sealed = rustix::fs::fcntl_get_seals(&fd).is_ok_and(|s| s.contains(SealFlags::SHRINK));
        if !sealed {
            return Err(corrupt("the descriptor is not a sealed shared-memory file"));
        }
        let h_peek = memmap2::MmapOptions::new()
            .len(MIN_PAGE)
            .map_raw(fd.as_raw_fd())?;
        // SAFETY: the mapping is page-aligned and MIN_PAGE bytes long, which
        // holds a Header (checked at compile time); the fields read here are
        // atomics, valid for any bit pattern.
        let peek = unsafe { &*h_peek.as_ptr().cast::<Header>() };
        if peek.magic.load(Ordering::Acquire) != MAGIC {
            return Err(corrupt("the descriptor is not a shared value"));
        }
        if peek.tag.load(Ordering::Relaxed) != tag {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the shared value was created for another type",
            ));
        }
        let data_off = peek.data_off.load(Ordering::Relaxed);
        drop(h_peek);
        if data_off % page_size() as u64 != 0 || data_off < MIN_PAGE as u64 || data_off > file {
            return Err(corrupt("bad header size"));
        }
        let header = memmap2::MmapOptions::new()
            .len(data_off as usize)
            .map_raw(fd.as_raw_fd())?;
        Ok(Segment {
            header: ManuallyDrop::new(header),
            data_off,
            local: UnsafeCell::new(Local { data: None, user }),
            fd,
        })
    }

    fn header(&self) -> &Header {
        // SAFETY: the header mapping is page-aligned, at least MIN_PAGE bytes
        // and lives as long as `self`. Every field is an atomic, valid for
        // any bits.
        unsafe { &*self.header.as_ptr().cast::<Header>() }
    }

    fn mutex(&self) -> &SharedMutex {
        // SAFETY: the header mapping is page-aligned and at least MIN_PAGE
        // bytes, which hold the lock at LOCK_OFFSET with its alignment
        // (checked at compile time), and lives as long as `self`. The
        // creator made the lock ready before publishing the magic, which
        // `open` checks (and `create` calls `init` before any other use).
        unsafe { SharedMutex::at(self.header.as_ptr().add(LOCK_OFFSET)) }
    }

    /// The descriptor, to hand to another process.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The generation, read without the lock (for display only).
    pub(crate) fn generation(&self) -> u64 {
        self.header().generation.load(Ordering::Relaxed)
    }

    /// The active value's encoded length, read without the lock (for display
    /// only).
    pub(crate) fn len(&self) -> u64 {
        let h = self.header();
        h.slots[(h.generation.load(Ordering::Relaxed) & 1) as usize]
            .len
            .load(Ordering::Relaxed)
    }

    /// Total bytes of the file in use, read without the lock.
    pub(crate) fn size(&self) -> u64 {
        self.header().size.load(Ordering::Relaxed)
    }

    /// Takes the lock, waiting until `deadline` (`None`: no limit).
    /// `Ok(None)` when the deadline passes first. A lock whose previous
    /// holder died is recovered ([`Held::recovered`]). Locking again from the
    /// thread that holds it is an error (`ErrorKind::Deadlock`), not a
    /// deadlock. Waiters are served in turn (see `super::mutex`).
    pub(crate) fn lock(&self, deadline: Option<Instant>) -> io::Result<Option<Held<'_, L>>> {
        Ok(self
            .mutex()
            .lock(deadline)?
            .map(|guard| Held { seg: self, guard }))
    }
}

fn too_large() -> io::Error {
    io::Error::new(io::ErrorKind::FileTooLarge, "shared value is too large")
}

fn map_data(fd: BorrowedFd<'_>, data_off: u64, size: u64) -> io::Result<memmap2::MmapRaw> {
    let len = usize::try_from(size - data_off).map_err(|_| too_large())?;
    memmap2::MmapOptions::new()
        .offset(data_off)
        .len(len)
        .map_raw(fd.as_raw_fd())
}

/// The segment's lock, held by this thread; released on drop. Not `Send`.
pub(crate) struct Held<'a, L> {
    seg: &'a Segment<L>,
    guard: MutexGuard<'a>,
}

impl<L> std::fmt::Debug for Held<'_, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("segment", self.seg)
            .field("recovered", &self.guard.recovered())
            .finish()
    }
}

impl<L> Held<'_, L> {
    /// Whether the previous holder died holding the lock.
    pub(crate) fn recovered(&self) -> bool {
        self.guard.recovered()
    }

    /// The generation: bumped by every [`publish`](Self::publish) from any
    /// process.
    pub(crate) fn generation(&self) -> u64 {
        self.seg.header().generation.load(Ordering::Acquire)
    }

    fn state(&mut self) -> &mut Local<L> {
        // SAFETY: this thread holds the segment's mutex for as long as `self`
        // lives, and `local` is reached only through a `Held` (see the Sync
        // impl), so this is the only reference to it; the borrow of `self`
        // bounds the reference's life.
        unsafe { &mut *self.seg.local.get() }
    }

    /// The caller's process-local state.
    pub(crate) fn local(&mut self) -> &mut L {
        &mut self.state().user
    }

    /// Makes the data mapping cover the header's `size`, remapping if the
    /// segment grew in another process. Returns the size.
    fn sync_mapping(&mut self) -> io::Result<u64> {
        let h = self.seg.header();
        let size = h.size.load(Ordering::Acquire);
        let off = self.seg.data_off;
        let mapped = self.state().data.as_ref().map_or(0, |d| d.len() as u64);
        if size < off || size - off != mapped {
            if size < off || size - off < mapped {
                // The size only ever grows.
                return Err(corrupt("its size went backwards"));
            }
            if fstat_size(self.seg.fd())? < size {
                return Err(corrupt("its size is beyond the end of its file"));
            }
            let data = map_data(self.seg.fd(), off, size)?;
            self.state().data = Some(data);
        }
        Ok(size - off)
    }

    /// Checks slot `i` against the mapped data length and returns its
    /// `(off, cap, len)`.
    fn slot(&self, i: usize, mapped: u64) -> io::Result<(u64, u64, u64)> {
        let s = &self.seg.header().slots[i];
        let (off, cap, len) = (
            s.off.load(Ordering::Relaxed),
            s.cap.load(Ordering::Relaxed),
            s.len.load(Ordering::Relaxed),
        );
        match off.checked_add(cap) {
            Some(end) if end <= mapped && len <= cap => Ok((off, cap, len)),
            _ => Err(corrupt("a slot lies outside the file")),
        }
    }

    /// The active value's bytes, and the caller's local state.
    pub(crate) fn read(&mut self) -> io::Result<(&[u8], &mut L)> {
        let mapped = self.sync_mapping()?;
        let active = (self.generation() & 1) as usize;
        let (off, _, len) = self.slot(active, mapped)?;
        let local = self.state();
        let data = local
            .data
            .as_ref()
            .ok_or_else(|| corrupt("no data mapping"))?;
        // SAFETY: [off, off + len) lies inside the data mapping (checked by
        // `slot`), which lives as long as the returned borrow of `self`. The
        // bytes are written only by a process holding the lock, which this
        // thread does until `self` drops, so they do not change under the
        // borrow.
        let bytes =
            unsafe { std::slice::from_raw_parts(data.as_ptr().add(off as usize), len as usize) };
        Ok((bytes, &mut local.user))
    }

    /// Publishes `bytes` as the new value: writes them into the inactive
    /// slot (growing the file if needed) and then flips the active slot.
    /// Returns the new generation. On error the value is unchanged.
    pub(crate) fn publish(&mut self, bytes: &[u8]) -> io::Result<u64> {
        let h = self.seg.header();
        let gen = self.generation();
        let target = ((gen + 1) & 1) as usize;
        let mut mapped = self.sync_mapping()?;
        let (mut off, cap, _) = self.slot(target, mapped)?;
        let need = bytes.len() as u64;
        if need > cap {
            let page = page_size() as u64;
            // Room to grow: the value plus half, and at least twice the old
            // region, so a value that keeps growing moves O(log n) times.
            let want = need.saturating_add(need / 2).max(cap.saturating_mul(2));
            let new_cap = round_up(want, page).ok_or_else(too_large)?;
            // A writer that died mid-growth may have extended the file
            // without recording it; start after whatever is there.
            let end = round_up(
                fstat_size(self.seg.fd())?.max(h.size.load(Ordering::Relaxed)),
                page,
            )
            .ok_or_else(too_large)?;
            let new_size = end.checked_add(new_cap).ok_or_else(too_large)?;
            set_size(self.seg.fd(), new_size)?;
            h.size.store(new_size, Ordering::Release);
            mapped = self.sync_mapping()?;
            let old_off = off;
            off = end - self.seg.data_off;
            // `off` first: with the old, smaller capacity the slot still fits.
            h.slots[target].off.store(off, Ordering::Relaxed);
            h.slots[target].cap.store(new_cap, Ordering::Relaxed);
            // Give the old region's memory back (best effort).
            if cap > 0 {
                // The range is the inactive slot's old region, which nobody
                // reads.
                let _ = rustix::fs::fallocate(
                    &self.seg.fd,
                    FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                    self.seg.data_off + old_off,
                    cap,
                );
            }
        }
        let (off, _, _) = self.slot(target, mapped)?;
        let data = self
            .state()
            .data
            .as_ref()
            .ok_or_else(|| corrupt("no data mapping"))?;
        // SAFETY: [off, off + need) lies inside the data mapping (`slot`
        // checked off + cap <= mapped, and need <= cap after growth); the
        // inactive slot is read and written only under the lock this thread
        // holds; `bytes` is local memory, so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                data.as_mut_ptr().add(off as usize),
                bytes.len(),
            )
        };
        h.slots[target].len.store(need, Ordering::Relaxed);
        // The commit point: one store flips the active slot.
        h.generation.store(gen + 1, Ordering::Release);
        Ok(gen + 1)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    use std::time::Duration;

    #[test]
    fn a_timed_lock_gives_up_only_after_its_timeout() {
        let seg = Segment::create(c"t", 1, b"x", 0, ()).unwrap();
        let held = seg.lock(None).unwrap().unwrap();
        let seg2 = Segment::<()>::open(seg.fd().try_clone_to_owned().unwrap(), 1, ()).unwrap();
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            let r = seg2.lock(Some(start + Duration::from_millis(150))).unwrap();
            (r.is_none(), start.elapsed())
        });
        let (timed_out, took) = t.join().unwrap();
        drop(held);
        assert!(timed_out);
        assert!(took >= Duration::from_millis(150), "{took:?}");
        assert!(seg.lock(Some(Instant::now())).unwrap().is_some());
    }

    #[test]
    fn relock_from_same_thread_is_an_error() {
        let seg = Segment::create(c"t", 1, b"x", 0, ()).unwrap();
        let _held = seg.lock(None).unwrap().unwrap();
        assert!(seg.lock(None).is_err());
    }

    #[test]
    fn publish_grows_and_keeps_both_views_in_step() {
        let seg = Segment::create(c"t", 7, b"abc", 0, ()).unwrap();
        let other = Segment::<()>::open(seg.fd().try_clone_to_owned().unwrap(), 7, ()).unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        {
            let mut h = seg.lock(None).unwrap().unwrap();
            assert_eq!(h.read().unwrap().0, b"abc");
            assert_eq!(h.publish(&big).unwrap(), 1);
            assert_eq!(h.publish(b"small").unwrap(), 2);
            assert_eq!(h.publish(&big[..2_000_000]).unwrap(), 3);
        }
        let mut h = other.lock(None).unwrap().unwrap();
        assert_eq!(h.generation(), 3);
        assert_eq!(h.read().unwrap().0, &big[..2_000_000]);
        assert_eq!(h.publish(&big).unwrap(), 4);
        drop(h);
        let mut h = seg.lock(None).unwrap().unwrap();
        assert_eq!(h.read().unwrap().0, &big[..]);
        drop(h);
        // Two slots of 1.5 times the value, plus the header and the first,
        // small slot regions.
        assert!(
            seg.size() <= 3 * big.len() as u64 + (64 << 10),
            "{}",
            seg.size()
        );
        // Many small growth steps move each slot only a few times; the file
        // (mostly holes) stays within a small multiple of the value.
        let before = seg.size();
        let mut h = seg.lock(None).unwrap().unwrap();
        for n in (3_000_000..12_000_000).step_by(100_000) {
            h.publish(&vec![7u8; n]).unwrap();
        }
        assert!(
            h.seg.size() - before <= 5 * 12_000_000,
            "{}",
            h.seg.size() - before
        );
    }

    #[test]
    fn a_corrupt_header_is_an_error_not_a_crash() {
        let seg = Segment::create(c"t", 7, b"abc", 0, ()).unwrap();
        let h = seg.header();
        let slot = &h.slots[0];
        let good = (
            slot.off.load(Ordering::Relaxed),
            slot.len.load(Ordering::Relaxed),
        );
        for (off, len) in [
            (u64::MAX - 1, 3),
            (good.0, u64::MAX),
            (1 << 40, 3),
            (good.0, 1 << 20),
        ] {
            slot.off.store(off, Ordering::Relaxed);
            slot.len.store(len, Ordering::Relaxed);
            let mut held = seg.lock(None).unwrap().unwrap();
            assert!(held.read().is_err(), "off {off} len {len}");
        }
        slot.off.store(good.0, Ordering::Relaxed);
        slot.len.store(good.1, Ordering::Relaxed);
        assert_eq!(seg.lock(None).unwrap().unwrap().read().unwrap().0, b"abc");
        // A size beyond the end of the file, or going backwards.
        let size = h.size.load(Ordering::Relaxed);
        for bad in [size + (1 << 30), 10] {
            h.size.store(bad, Ordering::Relaxed);
            assert!(
                seg.lock(None).unwrap().unwrap().read().is_err(),
                "size {bad}"
            );
            assert!(
                seg.lock(None).unwrap().unwrap().publish(b"x").is_err(),
                "size {bad}"
            );
        }
        h.size.store(size, Ordering::Relaxed);
        assert_eq!(seg.lock(None).unwrap().unwrap().read().unwrap().0, b"abc");
        // A bad header page size is refused on attach.
        h.data_off.store(12_345, Ordering::Relaxed);
        assert!(Segment::<()>::open(seg.fd().try_clone_to_owned().unwrap(), 7, ()).is_err());
    }

    #[test]
    fn open_refuses_strangers() {
        let seg = Segment::create(c"t", 7, b"abc", 0, ()).unwrap();
        assert!(Segment::<()>::open(seg.fd().try_clone_to_owned().unwrap(), 8, ()).is_err());
        let (a, _b) = super::super::sock::socketpair().unwrap();
        assert!(Segment::<()>::open(a, 7, ()).is_err());
        let words = super::super::mem::SharedWords::new(c"w", 1024).unwrap();
        assert!(Segment::<()>::open(words.fd().try_clone().unwrap(), 7, ()).is_err());
    }

    #[test]
    fn a_leaked_lock_keeps_its_page_so_other_locks_still_work() {
        // The leaked guard stays in this thread's robust list; unmapping
        // its page would make the next robust lock write into nothing.
        let a = Segment::create(c"t", 1, b"a", 0, ()).unwrap();
        std::mem::forget(a.lock(None).unwrap().unwrap());
        drop(a);
        // Map other things where `a` was, so a dangling list entry faults.
        let filler: Vec<_> = (0..8)
            .map(|_| memmap2::MmapMut::map_anon(4096).unwrap())
            .collect();
        let b = Segment::create(c"t", 1, b"b", 0, ()).unwrap();
        drop(filler);
        for _ in 0..3 {
            let h = b.lock(None).unwrap().unwrap();
            drop(h);
        }
    }
}
