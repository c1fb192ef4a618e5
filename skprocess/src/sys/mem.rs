//! Anonymous shared memory (`memfd_create`) seen as a slice of atomics.
//!
//! A memfd has no name in any file system: nothing appears in `/dev/shm`, and
//! the memory is freed when the last descriptor and mapping are gone, however
//! the processes holding them ended. It travels to other processes as a
//! descriptor (`SCM_RIGHTS`).

use super::region::Region;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicU64;

/// Creates an anonymous, zero-filled, unsealed shared-memory file of `len`
/// bytes: what a misbehaving peer could send, for tests that it is refused.
#[cfg(test)]
pub(crate) fn memfd(name: &std::ffi::CStr, len: usize) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
    rustix::fs::ftruncate(&fd, len as u64)?;
    Ok(fd)
}

/// The size of the file behind `fd`.
pub(crate) fn file_len(fd: &OwnedFd) -> io::Result<u64> {
    Ok(rustix::fs::fstat(fd)?.st_size as u64)
}

/// A shared mapping of a memfd, usable as `[AtomicU64]`: a view on a
/// sealed [`Region`].
///
/// Any bit pattern is a valid `AtomicU64`, and every access to the memory
/// goes through atomics, so another process writing concurrently (or dying
/// mid-write) can never cause undefined behaviour here: at worst a reader
/// sees a value it has to validate. The memfd is sealed against resizing,
/// and one that is not is refused, so the process at the other end cannot
/// shrink it under this mapping (which would kill this process with
/// `SIGBUS` on its next read).
#[derive(Debug)]
pub(crate) struct SharedWords {
    region: Region,
}

impl SharedWords {
    /// A new zero-filled, sealed region of `words` 64-bit words.
    pub(crate) fn new(name: &std::ffi::CStr, words: usize) -> io::Result<Self> {
        Self::checked(Region::new(name, words * 8)?)
    }

    /// Maps an existing memfd (its whole length, rounded down to words); it
    /// must be sealed against shrinking.
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        Self::checked(Region::from_fd(fd)?)
    }

    fn checked(region: Region) -> io::Result<Self> {
        if region.len() < 8 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared memory segment is too small",
            ));
        }
        Ok(SharedWords { region })
    }

    /// The descriptor, to send to another process.
    pub(crate) fn fd(&self) -> &OwnedFd {
        self.region.fd()
    }

    /// The mapped memory as atomics.
    pub(crate) fn words(&self) -> &[AtomicU64] {
        self.region.words()
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn an_unsealed_memfd_is_refused() {
        let e = SharedWords::from_fd(memfd(c"unsealed", 64).unwrap()).unwrap_err();
        assert!(e.to_string().contains("could shrink"), "{e}");
    }

    #[test]
    fn words_cannot_be_shrunk_under_a_mapping() {
        let w = SharedWords::new(c"sealed", 16).unwrap();
        w.words()[15].store(7, std::sync::atomic::Ordering::Relaxed);
        let file = std::fs::File::from(w.fd().try_clone().unwrap());
        assert!(file.set_len(8).is_err(), "a sealed memfd cannot shrink");
        let other = SharedWords::from_fd(w.fd().try_clone().unwrap()).unwrap();
        assert_eq!(other.words().len(), 16);
        assert_eq!(
            other.words()[15].load(std::sync::atomic::Ordering::Relaxed),
            7
        );
    }
}
