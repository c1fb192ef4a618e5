//! A descriptor one thread makes readable to interrupt another's `poll`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// An eventfd: [`kick`](Kick::kick) makes it readable until
/// [`drain`](Kick::drain) is called.
#[derive(Debug)]
pub(crate) struct Kick {
    fd: OwnedFd,
}

impl Kick {
    /// A kick that is not readable yet.
    pub(crate) fn new() -> io::Result<Kick> {
        use rustix::event::{eventfd, EventfdFlags};
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Kick { fd })
    }

    /// Makes it readable.
    pub(crate) fn kick(&self) {
        // Only a counter at its maximum fails, and that is readable anyway.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Makes it not readable again.
    pub(crate) fn drain(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut buf);
    }

    /// The descriptor, to poll on.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use std::time::Instant;

    #[test]
    fn readable_from_kick_to_drain() {
        let k = Kick::new().unwrap();
        let now = Some(Instant::now());
        assert!(!crate::sys::sock::wait_readable(k.fd(), now).unwrap());
        k.kick();
        k.kick();
        assert!(crate::sys::sock::wait_readable(k.fd(), now).unwrap());
        k.drain();
        assert!(!crate::sys::sock::wait_readable(k.fd(), now).unwrap());
    }
}
