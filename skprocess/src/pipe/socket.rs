//! The socket flavor: frames on an `AF_UNIX` stream socket pair.
//!
//! Every message is one [`wire`](crate::wire) frame of kind
//! [`PIPE`](crate::proto::kind::PIPE); descriptors inside a message ride along
//! as `SCM_RIGHTS`. The peer's death is end of file on the socket, which the
//! kernel signals the moment the last copy of the other end is closed.

use super::{Message, Role};
use crate::error::{Error, Result};
use crate::proto::kind;
use crate::sys;
use crate::wire::{Reader, Writer};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::Instant;

/// Kernel socket buffer asked for (the kernel may cap it).
const BUFFER: usize = 1 << 20;

/// One end of a socket pipe.
#[derive(Debug)]
pub(crate) struct End {
    sock: OwnedFd,
    reader: Option<Mutex<Reader>>,
    writer: Option<Writer>,
}

impl End {
    /// A connected pair of ends; `a` and `b` say what each end may do.
    pub(crate) fn pair(a: Role, b: Role) -> Result<(End, End)> {
        let (x, y) = sys::sock::socketpair().map_err(Error::Io)?;
        sys::sock::set_buffer_sizes(x.as_fd(), BUFFER);
        sys::sock::set_buffer_sizes(y.as_fd(), BUFFER);
        Ok((End::from_fd(x, a)?, End::from_fd(y, b)?))
    }

    /// An end over an existing socket (one that arrived in a message).
    pub(crate) fn from_fd(sock: OwnedFd, role: Role) -> Result<End> {
        let reader = match role.receives() {
            true => {
                let mut reader = Reader::new(sock.try_clone().map_err(Error::Io)?);
                reader.set_max_frame(crate::config::DEFAULT_MAX_MESSAGE);
                Some(Mutex::new(reader))
            }
            false => None,
        };
        let writer = match role.sends() {
            true => Some(Writer::new(sock.try_clone().map_err(Error::Io)?)),
            false => None,
        };
        Ok(End {
            sock,
            reader,
            writer,
        })
    }

    /// The socket.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// The socket, to serialize. Fails if messages were read ahead into
    /// this end's buffer, since they would not travel with it.
    pub(crate) fn fd_to_move(&self) -> std::result::Result<BorrowedFd<'_>, String> {
        if let Some(r) = &self.reader {
            if r.lock().unwrap_or_else(|p| p.into_inner()).has_frame() {
                return Err(
                    "this pipe end holds messages it has received but not yet returned; \
                            receive them before moving the end into another process"
                        .into(),
                );
            }
        }
        Ok(self.sock.as_fd())
    }

    pub(crate) fn send(&self, bytes: &[u8], fds: &[RawFd]) -> Result<()> {
        let w = self
            .writer
            .as_ref()
            .ok_or_else(|| Error::usage("this pipe end cannot send"))?;
        w.send(kind::PIPE, bytes, fds)
    }

    pub(crate) fn recv(&self, deadline: Option<Instant>) -> Result<Option<Message>> {
        let r = self
            .reader
            .as_ref()
            .ok_or_else(|| Error::usage("this pipe end cannot receive"))?;
        let mut r = r.lock().unwrap_or_else(|p| p.into_inner());
        match r.read(deadline)? {
            None => Ok(None),
            Some(f) if f.kind == kind::PIPE => Ok(Some(Message {
                bytes: f.payload,
                fds: f.fds,
            })),
            Some(f) => Err(Error::Wire(format!(
                "unexpected frame of kind {} on a pipe",
                f.kind
            ))),
        }
    }
}
