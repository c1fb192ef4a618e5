//! Read-only shared memory: a memfd written once, then sealed against any
//! write and any change of size, and mapped read-only (but shared) by every
//! process that holds its descriptor.
//!
//! Because the kernel refuses every further write to a file sealed with
//! `F_SEAL_WRITE` (and the seals themselves are sealed), its bytes can be
//! handed out as a plain `&[u8]`: nobody, in any process, can change them
//! while they are borrowed. A descriptor that arrives without those seals is
//! refused.

use rustix::fs::{MemfdFlags, SealFlags};
use std::ffi::CStr;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};

/// The seals a frozen file must carry.
const SEALS: SealFlags = SealFlags::WRITE
    .union(SealFlags::SHRINK)
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// A sealed, read-only shared mapping of a whole memfd.
#[derive(Debug)]
pub(crate) struct Frozen {
    /// `None` for an empty file (nothing to map).
    map: Option<memmap2::Mmap>,
    fd: OwnedFd,
}

impl Frozen {
    /// A new file holding `parts` one after the other (written with
    /// `write`, one copy), then sealed and mapped.
    pub(crate) fn new(name: &CStr, parts: &[&[u8]]) -> io::Result<Frozen> {
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        let total = parts.iter().map(|p| p.len() as u64).sum::<u64>();
        rustix::fs::ftruncate(&fd, total)?;
        let mut file = std::fs::File::from(fd);
        for p in parts {
            file.write_all(p)?;
        }
        let fd = OwnedFd::from(file);
        rustix::fs::fcntl_add_seals(&fd, SEALS)?;
        Frozen::from_fd(fd)
    }

    /// Maps a file received from another process; it must be a memfd
    /// sealed against writes and size changes.
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<Frozen> {
        let seals = rustix::fs::fcntl_get_seals(&fd)
            .map_err(|_| invalid("the descriptor is not shared memory"))?;
        if !seals.contains(SEALS) {
            return Err(invalid(
                "shared memory that is not sealed read-only is refused",
            ));
        }
        let len = super::mem::file_len(&fd)?;
        let len = usize::try_from(len).map_err(|_| invalid("the shared memory is too large"))?;
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the file is sealed against writes, shrinking and
            // growing, and the seals are sealed (checked above), so its
            // `len` bytes can never change or vanish while mapped: handing
            // them out as `&[u8]` is sound. The mapping is read-only.
            Some(unsafe { memmap2::MmapOptions::new().len(len).map(fd.as_raw_fd())? })
        };
        Ok(Frozen { map, fd })
    }

    /// The descriptor, to send to another process.
    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The file's bytes, in place.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn a_frozen_file_cannot_be_written_and_unsealed_ones_are_refused() {
        let f = Frozen::new(c"f", &[b"abc", b"de"]).unwrap();
        assert_eq!(f.bytes(), b"abcde");
        let mut file = std::fs::File::from(f.fd().try_clone().unwrap());
        assert!(file.write_all(b"x").is_err());
        assert!(file.set_len(1).is_err());
        let again = Frozen::from_fd(f.fd().try_clone().unwrap()).unwrap();
        assert_eq!(again.bytes(), b"abcde");
        let unsealed = super::super::mem::memfd(c"u", 64).unwrap();
        assert!(Frozen::from_fd(unsealed).is_err());
        let writable = super::super::region::Region::new(c"w", 64).unwrap();
        assert!(Frozen::from_fd(writable.fd().try_clone().unwrap()).is_err());
        assert_eq!(Frozen::new(c"e", &[]).unwrap().bytes(), b"");
    }
}
