//! A shared-memory region (a mapped memfd) holding control words and bytes:
//! the storage of a ring buffer between processes.
//!
//! Control words are reached as atomics, which any bit pattern a peer
//! writes keeps valid. Bytes are only ever *copied* in and out through raw
//! pointers: no reference to shared bytes is handed out, so a peer that
//! writes where it should not can change the bytes a copy returns (callers
//! treat them as untrusted input and validate them) but cannot break this
//! process's memory safety.

use rustix::fs::{MemfdFlags, SealFlags};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64};

/// A shared mapping of a whole memfd.
#[derive(Debug)]
pub(crate) struct Region {
    map: memmap2::MmapRaw,
    fd: OwnedFd,
}

impl Region {
    /// A new zero-filled region of `len` bytes, sealed so that its size
    /// can never change.
    pub(crate) fn new(name: &std::ffi::CStr, len: usize) -> io::Result<Region> {
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        Region::from_fd(fd)
    }

    /// Maps an existing memfd, whatever its length (check it before use).
    ///
    /// The memfd must be sealed against shrinking: a sender that could
    /// shrink it after this process mapped it would make any access past the
    /// new end kill this process (`SIGBUS`).
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<Region> {
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not shared memory: {e}"),
            )
        })?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared memory that its sender could shrink is refused",
            ));
        }
        let len = super::mem::file_len(&fd)?;
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared memory region is empty",
            ));
        }
        let map = memmap2::MmapOptions::new()
            .len(len)
            .map_raw(fd.as_raw_fd())?;
        Ok(Region { map, fd })
    }

    /// The descriptor, to send to another process.
    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The start of the mapping (valid for [`len`](Region::len) bytes for
    /// as long as `self` lives).
    pub(crate) fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The whole region as 64-bit words (its length rounded down).
    pub(crate) fn words(&self) -> &[AtomicU64] {
        let len = self.len() / 8;
        // SAFETY: the mapping is page-aligned (so 8-aligned), at least
        // `len * 8` bytes long and lives as long as `self`; AtomicU64 has the
        // size and alignment of u64 and every bit pattern is valid, and all
        // access through the slice is atomic, so concurrent writers in other
        // processes are data-race free. The memfd is sealed against
        // shrinking (checked in `from_fd`), so the mapping stays backed.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU64>(), len) }
    }

    /// The 64-bit control word at byte `offset`.
    ///
    /// # Panics
    ///
    /// If `offset` is not 8-aligned or the word is not inside the region.
    pub(crate) fn u64_at(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.len(),
            "bad word offset {offset}"
        );
        // SAFETY: the mapping is page-aligned, so `offset` 8-aligned makes the
        // pointer aligned for AtomicU64, and the word lies inside the mapping,
        // which lives as long as `self`. Every bit pattern is a valid
        // AtomicU64 and all access through it is atomic, so writes by other
        // processes are not data races.
        unsafe { &*self.map.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    /// The 32-bit control word at byte `offset` (a futex word).
    ///
    /// # Panics
    ///
    /// If `offset` is not 4-aligned or the word is not inside the region.
    pub(crate) fn u32_at(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= self.len(),
            "bad word offset {offset}"
        );
        // SAFETY: as in `u64_at`, for a 4-aligned 32-bit word.
        unsafe { &*self.map.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    /// Copies `src` into the region at byte `offset`.
    ///
    /// # Panics
    ///
    /// If the range is not inside the region.
    pub(crate) fn copy_in(&self, offset: usize, src: &[u8]) {
        let end = offset.checked_add(src.len());
        assert!(
            end.is_some_and(|e| e <= self.len()),
            "copy out of the region"
        );
        // SAFETY: the destination range lies inside the live mapping (checked
        // above) and cannot overlap `src`, which is private memory. The ring
        // protocol gives this process the range to itself (the reader does not
        // touch bytes it has not been told are published); a misbehaving peer
        // can only garble bytes the reader then rejects.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                self.map.as_mut_ptr().add(offset),
                src.len(),
            )
        }
    }

    /// Copies bytes from the region at byte `offset` into `dst`.
    ///
    /// # Panics
    ///
    /// If the range is not inside the region.
    pub(crate) fn copy_out(&self, offset: usize, dst: &mut [u8]) {
        let end = offset.checked_add(dst.len());
        assert!(
            end.is_some_and(|e| e <= self.len()),
            "copy out of the region"
        );
        // SAFETY: the source range lies inside the live mapping (checked above)
        // and `dst` is private memory, so they cannot overlap. No reference to
        // the shared bytes is created; what is copied is plain bytes, which
        // the caller validates before use.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        }
    }

    /// Like [`copy_out`](Region::copy_out), appending `len` bytes to `dst`.
    ///
    /// # Panics
    ///
    /// If the range is not inside the region.
    pub(crate) fn append_to(&self, offset: usize, len: usize, dst: &mut Vec<u8>) {
        let end = offset.checked_add(len);
        assert!(
            end.is_some_and(|e| e <= self.len()),
            "copy out of the region"
        );
        dst.reserve(len);
        let at = dst.len();
        // SAFETY: `reserve` made room for `len` more bytes after `at`; the
        // source lies inside the live mapping (checked above) and cannot
        // overlap the private vector; after the copy those `len` bytes are
        // initialised, so extending the length is sound.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add(offset),
                dst.as_mut_ptr().add(at),
                len,
            );
            dst.set_len(at + len);
        }
    }
}
