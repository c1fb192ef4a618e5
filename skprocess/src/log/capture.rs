//! Captured standard output and error: the child's descriptors 1 and 2 are
//! pipes whose read ends the parent holds; one thread per child reads both,
//! splits lines and re-emits each through the child's [`Forwarder`].
//!
//! The thread also watches the child's pidfd. Once the child has exited,
//! everything it wrote is in the pipes: the thread reads what is there
//! without waiting further (a grandchild that inherited the pipes and goes
//! on writing is not waited for), emits the last partial lines, and ends.
//! [`Capture::finish`] therefore returns promptly once the child is gone,
//! and every line the child wrote has been emitted by then.
//!
//! With a log file, the forwarder holds each line back from the file until
//! the events emitted before it are in; the thread wakes up to write the
//! lines held too long ([`Forwarder::release_held`]).

use super::parent::{Forwarder, Stream};
use crate::sys;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// Longest line emitted as one event; a longer one is cut into pieces.
pub(crate) const MAX_LINE: usize = 64 * 1024;
/// Most bytes read after the child exited (a grandchild may keep writing).
const MAX_DRAIN: usize = 4 << 20;

/// The thread reading one child's standard streams.
#[derive(Debug)]
pub(crate) struct Capture {
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    /// Starts reading `stdout` and `stderr` (either may be absent; `None`
    /// if both are). `pidfd` tells when the child has exited.
    pub(crate) fn start(
        forwarder: Arc<Forwarder>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
        pidfd: Arc<OwnedFd>,
    ) -> Option<Capture> {
        let mut streams = Vec::new();
        if let Some(fd) = stdout {
            streams.push(Reader::new(fd, Stream::Stdout));
        }
        if let Some(fd) = stderr {
            streams.push(Reader::new(fd, Stream::Stderr));
        }
        if streams.is_empty() {
            return None;
        }
        let thread = std::thread::Builder::new()
            .name("skprocess-output".into())
            .stack_size(128 * 1024)
            .spawn(move || pump(&forwarder, streams, &pidfd))
            .ok()?;
        Some(Capture {
            thread: Some(thread),
        })
    }

    /// Waits for the reader to end: call once the child has exited.
    pub(crate) fn finish(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Reader {
    file: File,
    stream: Stream,
    partial: Vec<u8>,
    open: bool,
}

impl Reader {
    fn new(fd: OwnedFd, stream: Stream) -> Reader {
        Reader {
            file: File::from(fd),
            stream,
            partial: Vec::new(),
            open: true,
        }
    }

    /// Reads once; emits every complete line. Returns the bytes read.
    fn read(&mut self, fwd: &Forwarder, chunk: &mut [u8]) -> usize {
        let n = match self.file.read(chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return 0,
            Err(_) => 0,
        };
        if n == 0 {
            self.open = false;
            self.finish(fwd);
            return 0;
        }
        let mut data = &chunk[..n];
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&data[..i]);
            self.emit(fwd);
            data = &data[i + 1..];
        }
        self.partial.extend_from_slice(data);
        while self.partial.len() >= MAX_LINE {
            let rest = self.partial.split_off(MAX_LINE);
            self.emit(fwd);
            self.partial = rest;
        }
        n
    }

    fn emit(&mut self, fwd: &Forwarder) {
        let line = self.partial.strip_suffix(b"\r").unwrap_or(&self.partial);
        fwd.emit_line(self.stream, &String::from_utf8_lossy(line));
        self.partial.clear();
    }

    /// Emits a last line that had no newline.
    fn finish(&mut self, fwd: &Forwarder) {
        if !self.partial.is_empty() {
            self.emit(fwd);
        }
    }
}

fn pump(fwd: &Forwarder, mut streams: Vec<Reader>, pidfd: &OwnedFd) {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut exited = false;
    let mut drained = 0usize;
    loop {
        let open: Vec<usize> = (0..streams.len()).filter(|&i| streams[i].open).collect();
        if open.is_empty() {
            break;
        }
        let mut fds: Vec<BorrowedFd<'_>> = open.iter().map(|&i| streams[i].file.as_fd()).collect();
        if !exited {
            fds.push(pidfd.as_fd());
        }
        // After the exit, only look at what is there now.
        let deadline = match exited {
            true => Some(Instant::now()),
            false => fwd.held_until(),
        };
        let Ok(ready) = sys::sock::poll(&fds, deadline) else {
            break;
        };
        fwd.release_held();
        if !exited && ready[open.len()].readable {
            exited = true;
        }
        let mut got = 0;
        for (k, &i) in open.iter().enumerate() {
            if ready[k].readable {
                got += streams[i].read(fwd, &mut chunk);
            }
        }
        if exited {
            drained += got;
            let all_closed = streams.iter().all(|s| !s.open);
            if all_closed
                || drained > MAX_DRAIN
                || (got == 0 && !ready[..open.len()].iter().any(|r| r.readable))
            {
                break;
            }
        }
    }
    for s in &mut streams {
        s.finish(fwd);
    }
}
