//! Frames on a socket: `[u32 length][u8 kind][u8 fd count][u16 zero]` then
//! `length` payload bytes; descriptors ride along with the header's bytes
//! (`SCM_RIGHTS`).
//!
//! Everything a peer sends is checked before use: an oversize length, a
//! reserved field that is not zero, a descriptor count that does not match
//! what arrived, or a payload that does not decode is an [`Error`], never a
//! panic. The set of frame kinds is open: a reader that meets a kind it does
//! not know reports it as an error its caller can surface.
//!
//! The codec holds no limit of its own beyond what a header can state:
//! callers pass theirs (`Reader::set_max_frame`, [`check_size`]).
//!
//! Values are encoded with postcard. Types postcard cannot describe
//! (`#[serde(flatten)]`, untagged enums) fail with an error that names the
//! type and points to [`Json`].

use crate::error::{Error, Result};
use crate::proto::kind;
use crate::sys;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes in a frame header.
pub(crate) const HEADER: usize = 8;

/// One frame read off a socket.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) kind: u8,
    pub(crate) payload: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
    /// The descriptors sent with it could not be received (this process
    /// ran out of them): `fds` is empty, the payload is whole, the stream
    /// is in step. Whoever reads the frame answers it with an error.
    pub(crate) fds_lost: bool,
}

impl Frame {
    /// The payload and descriptors as an encoded value; `Err` if its
    /// descriptors were lost on the way in.
    pub(crate) fn into_encoded(self) -> Result<Encoded> {
        self.check_fds()?;
        Ok(Encoded {
            bytes: self.payload,
            fds: self.fds,
        })
    }

    /// `Err` if the frame's descriptors were lost on the way in.
    pub(crate) fn check_fds(&self) -> Result<()> {
        if self.fds_lost {
            return Err(Error::Io(sys::sock::fds_lost_error()));
        }
        Ok(())
    }

    /// Decodes the payload as `T` (a control message, not a user value).
    pub(crate) fn decode<'a, T: Deserialize<'a>>(&'a self) -> Result<T> {
        postcard::from_bytes(&self.payload)
            .map_err(|e| Error::Wire(format!("bad frame of kind {}: {e}", self.kind)))
    }
}

/// The sending half of a framed socket; cheap to clone, safe to share.
/// Each frame is written whole under a lock, so frames from several threads
/// never interleave.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    sock: Arc<Mutex<OwnedFd>>,
    /// The socket reaches another machine (TCP): no descriptor can travel.
    remote: bool,
}

impl Writer {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Writer {
            sock: Arc::new(Mutex::new(fd)),
            remote: false,
        }
    }

    /// Marks the socket as reaching another machine: a frame that carries
    /// descriptors is refused instead of sent.
    pub(crate) fn set_remote(&mut self) {
        self.remote = true;
    }

    /// Writes one frame. Blocks while the peer's buffer is full; a peer that
    /// is gone gives `Err` (never SIGPIPE).
    pub(crate) fn send(&self, kind: u8, payload: &[u8], fds: &[RawFd]) -> Result<()> {
        let len = frame_limits(payload.len(), fds.len())?;
        if self.remote && !fds.is_empty() {
            return Err(Error::usage(REMOTE_REFUSAL));
        }
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4] = kind;
        header[5] = fds.len() as u8;
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        let total = HEADER + payload.len();
        let mut sent = 0usize;
        while sent < total {
            let n = if sent < HEADER {
                let bufs = [IoSlice::new(&header[sent..]), IoSlice::new(payload)];
                sys::sock::send(sock.as_fd(), &bufs, if sent == 0 { fds } else { &[] })
            } else {
                sys::sock::send(
                    sock.as_fd(),
                    &[IoSlice::new(&payload[sent - HEADER..])],
                    &[],
                )
            }
            .map_err(gone_or_io)?;
            sent += n;
        }
        Ok(())
    }
}

/// A peer that is gone (`EPIPE`, `ECONNRESET`) is `Disconnected`; anything
/// else stays an I/O error.
pub(crate) fn gone_or_io(e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => Error::Disconnected,
        _ => Error::Io(e),
    }
}

/// The receiving half of a framed socket, with its own buffer.
#[derive(Debug)]
pub(crate) struct Reader {
    sock: Arc<OwnedFd>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    fds: VecDeque<OwnedFd>,
    max_frame: usize,
    eof: bool,
    /// Descriptors were lost since the last frame that carried some.
    fds_lost: bool,
    /// The socket has a receive timeout (see [`Reader::read_step`]).
    stepped: bool,
}

/// How a read may wait for bytes.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// Poll until then (`None`: block in the receive).
    Until(Option<Instant>),
    /// A poll just said the socket is readable: receive at once, and from
    /// then on take only what is there.
    Ready,
    /// Take only what is there.
    Present,
    /// Block in the receive for at most the socket's receive timeout.
    Step,
}

/// The largest payload a header can state: the limit of a reader nobody
/// gave one (see [`Reader::set_max_frame`]).
const MAX_LENGTH: usize = u32::MAX as usize;

const READ_CHUNK: usize = 256 * 1024;
/// A reader starts small (a live handle should cost little memory) and grows
/// to fit the frames it meets.
const INITIAL_BUFFER: usize = 16 * 1024;

impl Reader {
    /// A reader of `fd` that accepts any length a header can state; a
    /// caller with a configured limit sets it with
    /// [`set_max_frame`](Reader::set_max_frame).
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Reader {
            sock: Arc::new(fd),
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
            fds: VecDeque::new(),
            max_frame: MAX_LENGTH,
            eof: false,
            fds_lost: false,
            stepped: false,
        }
    }

    /// The socket, to poll on.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Sets the largest payload this reader accepts.
    pub(crate) fn set_max_frame(&mut self, max: usize) {
        self.max_frame = max;
    }

    /// Whether a whole frame is already buffered (so reading one will not
    /// block).
    pub(crate) fn has_frame(&self) -> bool {
        let avail = self.end - self.start;
        if avail < HEADER {
            return false;
        }
        let len =
            u32::from_le_bytes(self.buf[self.start..self.start + 4].try_into().unwrap()) as usize;
        avail >= HEADER + len
    }

    /// Reads more bytes into the buffer; `false` on timeout.
    fn fill(&mut self, wait: &mut Wait) -> Result<bool> {
        if self.eof {
            return Err(Error::Disconnected);
        }
        let poll_until = match *wait {
            Wait::Until(deadline) => deadline,
            Wait::Ready => {
                *wait = Wait::Present;
                None
            }
            Wait::Present => Some(Instant::now()),
            Wait::Step => None,
        };
        if poll_until.is_some()
            && !sys::sock::wait_readable(self.sock.as_fd(), poll_until).map_err(Error::Io)?
        {
            return Ok(false);
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < READ_CHUNK / 4 && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < 4096 {
            let grow = (self.buf.len()).max(READ_CHUNK);
            self.buf.resize(self.buf.len() + grow, 0);
        }
        let mut fds = Vec::new();
        let n = match sys::sock::recv(self.sock.as_fd(), &mut self.buf[self.end..], &mut fds) {
            Ok(r) => {
                // The lost descriptors belong to the frame that starts in
                // these bytes, or to the one under way.
                self.fds_lost |= r.fds_lost;
                r.bytes
            }
            // The peer closed with data of ours unread: it is gone, like
            // at end of file.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            // The socket's receive timeout passed (a stepped socket).
            Err(e) if self.stepped && e.kind() == std::io::ErrorKind::WouldBlock => {
                return Ok(false)
            }
            Err(e) => return Err(Error::Io(e)),
        };
        self.fds.extend(fds);
        if n == 0 {
            self.eof = true;
            return Err(Error::Disconnected);
        }
        self.end += n;
        Ok(true)
    }

    /// Reads the next frame, if whole, once a poll said the socket is
    /// readable (or a frame is buffered): does not wait.
    pub(crate) fn read_ready(&mut self) -> Result<Option<Frame>> {
        self.read_with(Wait::Ready)
    }

    /// Gives the socket a receive timeout of `step`, once, so that
    /// [`read_step`](Reader::read_step) can block in the receive itself (no
    /// poll first) and still come back. Readers that poll are not affected.
    pub(crate) fn set_step(&mut self, step: Duration) -> std::io::Result<()> {
        if !self.stepped {
            sys::sock::set_receive_timeout(self.sock.as_fd(), step)?;
            self.stepped = true;
        }
        Ok(())
    }

    /// Whether [`read_step`](Reader::read_step) may be used.
    pub(crate) fn is_stepped(&self) -> bool {
        self.stepped
    }

    /// Reads the next frame, blocking in the receive for at most the
    /// socket's receive timeout (see [`set_step`](Reader::set_step));
    /// `Ok(None)` if none came whole.
    pub(crate) fn read_step(&mut self) -> Result<Option<Frame>> {
        debug_assert!(self.stepped);
        self.read_with(Wait::Step)
    }

    /// Reads the next frame. `Ok(None)` when `deadline` passes first;
    /// `Err(Error::Disconnected)` once the peer has closed and every frame it
    /// sent has been read.
    pub(crate) fn read(&mut self, deadline: Option<Instant>) -> Result<Option<Frame>> {
        // A stepped socket's receive comes back at each step: keep at it.
        loop {
            match self.read_with(Wait::Until(deadline)) {
                Ok(None) if deadline.is_none() && self.stepped => {}
                other => return other,
            }
        }
    }

    fn read_with(&mut self, mut wait: Wait) -> Result<Option<Frame>> {
        while self.end - self.start < HEADER {
            if self.eof && self.end > self.start {
                return Err(Error::Wire(
                    "connection closed in the middle of a frame header".into(),
                ));
            }
            if !self.fill(&mut wait)? {
                return Ok(None);
            }
        }
        let h = &self.buf[self.start..self.start + HEADER];
        let len = u32::from_le_bytes(h[..4].try_into().unwrap()) as usize;
        let kind = h[4];
        let nfds = h[5] as usize;
        if h[6] != 0 || h[7] != 0 {
            return Err(Error::Wire(format!(
                "corrupt frame header {h:02x?}: reserved bytes are not zero"
            )));
        }
        if len > self.max_frame {
            return Err(Error::Wire(format!(
                "frame of {len} bytes is over the {} byte limit",
                self.max_frame
            )));
        }
        let need = HEADER + len;
        if self.buf.len() - self.start < need {
            // Make room for the whole frame in one go.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() < need {
                self.buf.resize(need, 0);
            }
        }
        while self.end - self.start < need {
            match self.fill(&mut wait) {
                Ok(true) => {}
                // The partial frame stays buffered; the next call resumes it.
                Ok(false) => return Ok(None),
                Err(Error::Disconnected) => {
                    return Err(Error::Wire(format!(
                        "connection closed in the middle of a {len} byte frame"
                    )))
                }
                Err(e) => return Err(e),
            }
        }
        let payload = self.buf[self.start + HEADER..self.start + need].to_vec();
        self.start += need;
        if self.start == self.end && self.buf.len() > 4 * READ_CHUNK {
            self.buf = vec![0; INITIAL_BUFFER];
            self.start = 0;
            self.end = 0;
        }
        if self.fds.len() < nfds {
            if self.fds_lost {
                // This process could not take them: the frame is whole
                // without them, and its reader says so to whoever waits.
                self.fds_lost = false;
                self.fds.clear();
                return Ok(Some(Frame {
                    kind,
                    payload,
                    fds: Vec::new(),
                    fds_lost: true,
                }));
            }
            return Err(Error::Wire(format!(
                "frame announced {nfds} descriptors but {} arrived",
                self.fds.len()
            )));
        }
        let fds = self.fds.drain(..nfds).collect();
        if nfds > 0 {
            self.fds_lost = false;
        }
        Ok(Some(Frame {
            kind,
            payload,
            fds,
            fds_lost: false,
        }))
    }
}

/// Checks what every transport can carry in one message: a length that
/// fits the `u32` header, and at most [`sys::sock::MAX_FDS`] descriptors.
/// Returns the length as the header writes it.
pub(crate) fn frame_limits(len: usize, fds: usize) -> Result<u32> {
    let len: u32 = len.try_into().map_err(|_| {
        Error::Wire(format!(
            "a message of {len} bytes is over the 4 GiB frame limit"
        ))
    })?;
    if fds > sys::sock::MAX_FDS {
        return Err(Error::Wire(format!(
            "a message can carry at most {} descriptors (shares, pipes), not {fds}",
            sys::sock::MAX_FDS
        )));
    }
    Ok(len)
}

/// Refuses a message of `len` encoded bytes if it is over `max`.
pub(crate) fn check_size(len: usize, max: usize) -> Result<()> {
    if len > max {
        return Err(Error::Usage(format!(
            "a message of {len} bytes is over the {max} byte limit; raise it with Config::max_message"
        )));
    }
    Ok(())
}

/// A connected socket, split into a [`Reader`] and a [`Writer`].
pub(crate) fn split(fd: OwnedFd) -> Result<(Reader, Writer)> {
    let w = fd.try_clone().map_err(Error::Io)?;
    Ok((Reader::new(fd), Writer::new(w)))
}

// ---------------------------------------------------------------------------
// Descriptors inside values.

thread_local! {
    /// Set while values are encoded for a worker on another machine.
    static REMOTE_TARGET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static FD_SINK: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    static FD_SOURCE: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
    static REFUSAL: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records why a handle refuses to be encoded or decoded, and returns the
/// text for its `custom` serde error. postcard drops the text of custom
/// errors, so [`encode`] and [`decode`] report it from here.
pub(crate) fn refuse(why: impl Into<String>) -> String {
    let why = why.into();
    REFUSAL.with(|r| *r.borrow_mut() = Some(why.clone()));
    why
}

fn take_refusal() -> Option<String> {
    REFUSAL.with(|r| r.borrow_mut().take())
}

/// Why a descriptor cannot go to a worker on another machine.
const REMOTE_REFUSAL: &str = "a worker started by a cluster launcher runs on another machine: \
     values that hold a descriptor (Share, Pipe, Queue, shared slices) only work on one machine";

/// While the returned guard lives, values encoded on this thread are for a
/// worker on another machine (when `remote`): a handle that holds a
/// descriptor refuses to be encoded, naming its type.
pub(crate) fn remote_target(remote: bool) -> RemoteTarget {
    RemoteTarget(REMOTE_TARGET.with(|r| r.replace(remote)))
}

/// Restores the previous target when dropped (see [`remote_target`]).
#[derive(Debug)]
pub(crate) struct RemoteTarget(bool);

impl Drop for RemoteTarget {
    fn drop(&mut self) {
        REMOTE_TARGET.with(|r| r.set(self.0));
    }
}

/// Called from `Serialize` impls of handles that own a descriptor (`Share`,
/// `Pipe`; `handle` is their type's name): records a duplicate of `fd` to
/// travel with the value and returns its index, which is what gets
/// serialized.
pub(crate) fn push_fd(fd: BorrowedFd<'_>, handle: &str) -> std::result::Result<u32, String> {
    if REMOTE_TARGET.with(|r| r.get()) {
        return Err(refuse(format!("cannot send a {handle}: {REMOTE_REFUSAL}")));
    }
    FD_SINK.with(|s| match s.borrow_mut().as_mut() {
        Some(v) => {
            let dup = fd
                .try_clone_to_owned()
                .map_err(|e| refuse(format!("cannot duplicate descriptor: {e}")))?;
            v.push(dup);
            Ok((v.len() - 1) as u32)
        }
        None => Err(refuse(
            "this handle can only be serialized by skprocess (as a field of a process, a tell \
             message or a pool item), not by another serde format",
        )),
    })
}

/// Called from `Deserialize` impls: takes the descriptor at `index` that
/// arrived with the value.
pub(crate) fn take_fd(index: u32) -> std::result::Result<OwnedFd, String> {
    FD_SOURCE.with(|s| match s.borrow_mut().as_mut() {
        Some(v) => v
            .get_mut(index as usize)
            .and_then(Option::take)
            .ok_or_else(|| refuse(format!("descriptor #{index} is missing or was used twice"))),
        None => Err(refuse("this handle can only be deserialized by skprocess")),
    })
}

/// How a handle that is one descriptor (`Queue`, shared slices) is
/// written inside skprocess's encoding: the index of its descriptor among
/// those travelling with the value.
#[derive(Serialize, Deserialize)]
#[serde(rename = "Descriptor")]
struct FdIndex(u32);

/// Serializes a handle that is the descriptor `fd` (see [`push_fd`]).
pub(crate) fn serialize_fd<S: serde::Serializer>(
    fd: BorrowedFd<'_>,
    handle: &str,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    let index = push_fd(fd, handle).map_err(serde::ser::Error::custom)?;
    FdIndex(index).serialize(s)
}

/// Deserializes the descriptor of a handle written by [`serialize_fd`].
pub(crate) fn deserialize_fd<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<OwnedFd, D::Error> {
    let FdIndex(index) = FdIndex::deserialize(d)?;
    take_fd(index).map_err(serde::de::Error::custom)
}

/// An encoded value: bytes plus the descriptors it refers to.
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

impl Encoded {
    /// Raw descriptor numbers, to attach to a frame.
    pub(crate) fn raw_fds(&self) -> Vec<RawFd> {
        self.fds.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// A copy with duplicated descriptors (for a retry).
    pub(crate) fn try_clone(&self) -> Result<Encoded> {
        Ok(Encoded {
            bytes: self.bytes.clone(),
            fds: self
                .fds
                .iter()
                .map(|f| f.try_clone())
                .collect::<std::io::Result<_>>()
                .map_err(Error::Io)?,
        })
    }
}

fn explain_encode(type_name: &'static str, e: postcard::Error) -> Error {
    let reason = match e {
        postcard::Error::SerializeSeqLengthUnknown => "postcard needs every sequence and map length up front, \
             which #[serde(flatten)], skipped map entries and iterators without a length do not give; \
             wrap the value in skprocess::Json<T> to send it as self-describing JSON"
            .to_string(),
        other => other.to_string(),
    };
    Error::Encode { type_name, reason }
}

fn explain_decode(type_name: &'static str, e: postcard::Error) -> Error {
    let reason = match e {
        postcard::Error::WontImplement => {
            "postcard is not self-describing, so #[serde(untagged)] enums, \
             #[serde(flatten)] and deserialize_any cannot be decoded; wrap the value in \
             skprocess::Json<T>"
                .to_string()
        }
        other => other.to_string(),
    };
    Error::Decode { type_name, reason }
}

/// Encodes `value`, collecting the descriptors of any handles inside it.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Encoded> {
    encode_into(value, Vec::new())
}

/// postcard output into a `Vec`, one `extend_from_slice` per chunk (its own
/// `Extend` flavor goes byte by byte without optimisations).
struct VecFlavor(Vec<u8>);

impl postcard::ser_flavors::Flavor for VecFlavor {
    type Output = Vec<u8>;
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

/// Encodes `value` into `buf` (cleared first) for a copy in shared memory
/// (`holder` names what holds it: "a Share", "a Queue"), where no
/// descriptor can travel with it.
pub(crate) fn encode_plain<T: Serialize>(
    value: &T,
    mut buf: Vec<u8>,
    holder: &str,
) -> Result<Vec<u8>> {
    buf.clear();
    match postcard::serialize_with_flavor(value, VecFlavor(buf)) {
        Ok(bytes) => Ok(bytes),
        Err(first) => {
            // Encode again the way messages are, for its explanation of
            // postcard's limits and to spot handles inside the value.
            let enc = encode(value)?;
            if !enc.fds.is_empty() {
                return Err(Error::usage(format!(
                    "cannot store a {} in {holder}: it holds a Share or a pipe endpoint, which cannot live in \
                     shared memory",
                    std::any::type_name::<T>()
                )));
            }
            Err(Error::Encode {
                type_name: std::any::type_name::<T>(),
                reason: first.to_string(),
            })
        }
    }
}

/// Like [`encode`], appending to `prefix`.
pub(crate) fn encode_into<T: Serialize + ?Sized>(value: &T, prefix: Vec<u8>) -> Result<Encoded> {
    let (bytes, fds) = encode_with(value, VecFlavor(prefix))?;
    Ok(Encoded { bytes, fds })
}

/// Encodes `value` through a postcard flavor (where the bytes go),
/// collecting the descriptors of any handles inside it.
pub(crate) fn encode_with<T, F>(value: &T, flavor: F) -> Result<(F::Output, Vec<OwnedFd>)>
where
    T: Serialize + ?Sized,
    F: postcard::ser_flavors::Flavor,
{
    let prev = FD_SINK.with(|s| s.borrow_mut().replace(Vec::new()));
    take_refusal();
    let r = postcard::serialize_with_flavor(value, flavor);
    let fds = FD_SINK
        .with(|s| std::mem::replace(&mut *s.borrow_mut(), prev))
        .unwrap_or_default();
    let bytes = r.map_err(|e| match take_refusal() {
        // A handle that refused to serialize said why.
        Some(reason) => Error::Encode {
            type_name: std::any::type_name::<T>(),
            reason,
        },
        // postcard keeps no text for an error the value's own `Serialize`
        // raised; a self-describing encoder keeps it, so ask one.
        None if matches!(e, postcard::Error::SerdeSerCustom) => match serde_json::to_vec(value) {
            Err(j) => Error::Encode {
                type_name: std::any::type_name::<T>(),
                reason: j.to_string(),
            },
            Ok(_) => explain_encode(std::any::type_name::<T>(), e),
        },
        None => explain_encode(std::any::type_name::<T>(), e),
    })?;
    Ok((bytes, fds))
}

/// Decodes a `T` from `bytes`, which must be consumed exactly, handing
/// `fds` to any handles inside it.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T> {
    let prev = FD_SOURCE.with(|s| s.borrow_mut().replace(fds.into_iter().map(Some).collect()));
    take_refusal();
    let r = postcard::take_from_bytes::<T>(bytes);
    FD_SOURCE.with(|s| *s.borrow_mut() = prev);
    if r.is_err() {
        if let Some(reason) = take_refusal() {
            return Err(Error::Decode {
                type_name: std::any::type_name::<T>(),
                reason,
            });
        }
    }
    match r {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(Error::Decode {
            type_name: std::any::type_name::<T>(),
            reason: format!("{} bytes were left over", rest.len()),
        }),
        Err(e) => Err(explain_decode(std::any::type_name::<T>(), e)),
    }
}

// ---------------------------------------------------------------------------
// Typed user messages: the sender's type name travels with the value.

/// Normalises a type name so that types with the same encoding compare
/// equal: `&T` and `T`, `str` and `String`, `[T]` and `Vec<T>`.
fn normalise(name: &'static str) -> std::borrow::Cow<'static, str> {
    // Most names need no change: keep them without allocating (this runs
    // for every message sent and received).
    if !name.starts_with(['&', '[', ' ']) && name != "str" {
        return std::borrow::Cow::Borrowed(name);
    }
    std::borrow::Cow::Owned(normalise_owned(name))
}

fn normalise_owned(name: &str) -> String {
    let mut n = name.trim_start_matches('&').trim();
    if let Some(rest) = n.strip_prefix("mut ") {
        n = rest;
    }
    if n == "str" || n == "alloc::string::String" {
        return "alloc::string::String".into();
    }
    if let Some(inner) = n.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if !inner.contains(';') {
            return format!("alloc::vec::Vec<{}>", normalise_owned(inner));
        }
    }
    n.to_string()
}

/// Bytes of the type-name length before a user message.
const NAME_LEN: usize = 4;

/// Encodes a user message: `[u32 name length][type name][postcard value]`.
pub(crate) fn encode_message<T: Serialize + ?Sized>(value: &T) -> Result<Encoded> {
    let (bytes, fds) = encode_message_with(value, VecFlavor(Vec::new()))?;
    Ok(Encoded { bytes, fds })
}

/// Like [`encode_message`], through a postcard flavor.
pub(crate) fn encode_message_with<T, F>(
    value: &T,
    mut flavor: F,
) -> Result<(F::Output, Vec<OwnedFd>)>
where
    T: Serialize + ?Sized,
    F: postcard::ser_flavors::Flavor,
{
    let name = normalise(std::any::type_name::<T>());
    let name = name.as_bytes();
    let len = u32::try_from(name.len()).map_err(|_| Error::Encode {
        type_name: std::any::type_name::<T>(),
        reason: "its type name is over 4 GiB".into(),
    })?;
    let prefix = flavor
        .try_extend(&len.to_le_bytes())
        .and_then(|()| flavor.try_extend(name));
    prefix.map_err(|e| explain_encode(std::any::type_name::<T>(), e))?;
    encode_with(value, flavor)
}

/// Sends an encoded user message as a `TELL` frame and counts it.
pub(crate) fn send_message(
    writer: &Writer,
    enc: &Encoded,
    counters: &crate::stats::Counters,
) -> Result<()> {
    writer.send(kind::TELL, &enc.bytes, &enc.raw_fds())?;
    counters.sent(enc.bytes.len());
    Ok(())
}

/// Counts a received `TELL` frame and decodes it as `T` (see
/// [`decode_message`]).
pub(crate) fn receive_message<T: DeserializeOwned>(
    frame: Frame,
    counters: &crate::stats::Counters,
) -> Result<T> {
    counters.received(frame.payload.len());
    frame.check_fds()?;
    decode_message(&frame.payload, frame.fds)
}

/// Decodes a user message as `T`; a message sent as another type is an
/// `Err` (the message is consumed, the channel stays usable).
pub(crate) fn decode_message<T: DeserializeOwned>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T> {
    let Some(len) = bytes.get(..NAME_LEN) else {
        return Err(Error::Wire(
            "message frame too short for its type tag".into(),
        ));
    };
    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
    let Some(name) = NAME_LEN
        .checked_add(len)
        .and_then(|end| bytes.get(NAME_LEN..end))
    else {
        return Err(Error::Wire(
            "message frame shorter than its type tag".into(),
        ));
    };
    let expected = normalise(std::any::type_name::<T>());
    if name != expected.as_bytes() {
        return Err(Error::WrongType {
            expected: expected.into_owned(),
            got: String::from_utf8_lossy(name).into_owned(),
        });
    }
    decode(&bytes[NAME_LEN + len..], fds)
}

// ---------------------------------------------------------------------------

/// Carries a value as self-describing JSON inside skprocess's binary
/// encoding: the escape hatch for types postcard cannot encode, such as
/// those using `#[serde(flatten)]` or `#[serde(untagged)]`.
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use skprocess::Json;
///
/// #[derive(Serialize, Deserialize, PartialEq, Debug)]
/// #[serde(untagged)]
/// enum Value { Int(i64), Text(String) }
///
/// let v = Json(Value::Text("hi".into()));
/// let bytes = postcard::to_allocvec(&v).unwrap();
/// let back: Json<Value> = postcard::from_bytes(&bytes).unwrap();
/// assert_eq!(back.0, Value::Text("hi".into()));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    /// The wrapped value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Json<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: Serialize> Serialize for Json<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let text = serde_json::to_string(&self.0).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Json<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text)
            .map(Json)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod test;

#[cfg(any(test, feature = "bench-internals"))]
/// Reads frames from `data` as if a peer had sent it, then closed, and
/// decodes every payload as a few message types. Used by the fuzz target;
/// must never panic or hang.
pub(crate) fn fuzz_frames(data: &[u8]) {
    let Ok((a, b)) = sys::sock::socketpair() else {
        return;
    };
    let (mut reader, _) = match split(a) {
        Ok(p) => p,
        Err(_) => return,
    };
    let writer = std::thread::spawn({
        let data = data.to_vec();
        move || {
            let w = Writer::new(b);
            let _ = sys::sock::send(w.sock.lock().unwrap().as_fd(), &[IoSlice::new(&data)], &[]);
        }
    });
    let _ = writer.join();
    while let Ok(Some(frame)) =
        reader.read(Some(Instant::now() + std::time::Duration::from_millis(100)))
    {
        let _ = decode_message::<(String, Vec<u64>, Option<bool>)>(&frame.payload, Vec::new());
        let _ = frame.decode::<crate::proto::Init>();
        let _ = frame.decode::<crate::error::Failure>();
    }
}
