//! Anonymous shared memory (`memfd_create`) seen as a slice of atomics.
//!
//! A memfd has no name in any file system: nothing appears in `/dev/shm`, and
//! the memory is freed when the last descriptor and mapping are gone, however
//! the processes holding them ended. It travels to other processes as a
//! descriptor (`SCM_RIGHTS`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::AtomicU64;

/// Creates an anonymous, zero-filled shared-memory file of `len` bytes.
pub(crate) fn memfd(name: &std::ffi::CStr, len: usize) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    let fd = super::cvt(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    std::fs::File::from(fd.try_clone()?).set_len(len as u64)?;
    Ok(fd)
}

/// The size of the file behind `fd`.
pub(crate) fn file_len(fd: &OwnedFd) -> io::Result<u64> {
    Ok(std::fs::File::from(fd.try_clone()?).metadata()?.len())
}

/// A shared mapping of a memfd, usable as `[AtomicU64]`.
///
/// Any bit pattern is a valid `AtomicU64`, and every access to the memory
/// goes through atomics, so another process writing concurrently (or dying
/// mid-write) can never cause undefined behaviour here: at worst a reader
/// sees a value it has to validate.
#[derive(Debug)]
pub(crate) struct SharedWords {
    map: memmap2::MmapRaw,
    fd: OwnedFd,
}

impl SharedWords {
    /// A new zero-filled region of `words` 64-bit words.
    pub(crate) fn new(name: &std::ffi::CStr, words: usize) -> io::Result<Self> {
        let fd = memfd(name, words * 8)?;
        Self::from_fd(fd)
    }

    /// Maps an existing memfd (its whole length, rounded down to words).
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let len = file_len(&fd)? as usize;
        if len < 8 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared memory segment is too small",
            ));
        }
        let map = memmap2::MmapOptions::new()
            .len(len)
            .map_raw(fd.as_raw_fd())?;
        Ok(SharedWords { map, fd })
    }

    /// The descriptor, to send to another process.
    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The mapped memory as atomics.
    pub(crate) fn words(&self) -> &[AtomicU64] {
        let len = self.map.len() / 8;
        // SAFETY: the mapping is page-aligned (so 8-aligned), at least
        // `len * 8` bytes long and lives as long as `self`; AtomicU64 has the
        // size and alignment of u64 and every bit pattern is valid, and all
        // access through the slice is atomic, so concurrent writers in other
        // processes are data-race free.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU64>(), len) }
    }
}
