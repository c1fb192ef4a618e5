//! The fork server's primitives: receiving a request, forking a *sibling*
//! (a process whose parent is the server's parent), and handing the new
//! process its descriptors.
//!
//! # Why `clone3(CLONE_PARENT)`
//!
//! The server is a child of the parent process, started by re-exec and held
//! before `main`. It forks with `CLONE_PARENT`, so each new process is a
//! child of the *parent process*, not of the server: the parent reaps it
//! with `waitpid`, watches it through a pidfd and signals its group exactly
//! as it does a re-executed child, and killing the server takes nothing
//! along. The kernel copies the new process's parent link from the server
//! (`real_parent` is the parent's spawner thread), so the parent-death
//! signal the new process asks for fires when that thread ends, as for a
//! re-executed child.
//!
//! # Why forking here is sound
//!
//! glibc's `fork` has no `CLONE_PARENT`, so the server makes the system call
//! itself and repeats, in the new process, what glibc's `fork` does for a
//! single-threaded process:
//!
//! - the thread's id in glibc's thread descriptor: the kernel writes it
//!   (`CLONE_CHILD_SETTID`) at the address glibc registered as the main
//!   thread's clear-on-exit address (read back with `PR_GET_TID_ADDRESS`,
//!   checked to hold the server's id), and clears it on exit
//!   (`CLONE_CHILD_CLEARTID`), as glibc's own `fork` asks;
//! - the robust-mutex list head, which the kernel drops on fork, is
//!   registered again (`set_robust_list`) with the server's head (read back
//!   with `get_robust_list`; the server holds no robust mutex);
//! - locks (malloc's, stdio's, the environment's): the server has one
//!   thread, which holds none of them while it forks, so every lock is free
//!   in the copy; no lock or other thread can be mid-operation, which is
//!   what makes "only async-signal-safe calls after fork" necessary in a
//!   multi-threaded parent. The new process may therefore allocate and run
//!   ordinary code, as any process started before `main` does.
//! - `pthread_atfork` handlers do not run: before `main`, nothing has
//!   registered one that a fork of this single thread would need.
//!
//! This is glibc-specific (musl keeps other state at the clear-on-exit
//! address): other C libraries get [`FORK_SUPPORTED`] false, and the caller
//! re-executes instead.

use super::boot::PreMain;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
use std::io::{self, IoSliceMut};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// Whether this build can run a fork server (see the module docs).
pub(crate) const FORK_SUPPORTED: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// The most descriptors one request carries.
const MAX_REQUEST_FDS: usize = 8;

/// A connected pair of `AF_UNIX` sequenced-packet sockets (each send is one
/// message, with its descriptors), both close-on-exec.
pub(crate) fn packet_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// `clone3`'s argument (`struct clone_args`, as of Linux 5.7).
#[repr(C, align(8))]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// The server's end of its socket, and what it read of its own thread to
/// repeat glibc's fork bookkeeping in each new process. Only made from a
/// [`PreMain`] token, so it lives on the one thread before `main`.
#[derive(Debug)]
pub(crate) struct ForkServer {
    socket: OwnedFd,
    /// glibc's `&THREAD_SELF->tid` for this (the main) thread.
    tid_address: u64,
    /// The robust-mutex list head and its size.
    robust_head: u64,
    robust_len: u64,
    buf: Vec<u8>,
    _one_thread: PhantomData<*mut ()>,
}

/// One request: its bytes and the descriptors that came with them.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

/// What [`ForkServer::fork`] returns on each side.
#[derive(Debug)]
pub(crate) enum Forked {
    /// In the server: the new process's pid, or why there is none.
    Server(ForkServer, io::Result<u32>),
    /// In the new process.
    Sibling(Sibling),
}

impl ForkServer {
    /// Takes over the inherited descriptor `fd` as the server's socket (see
    /// [`PreMain::adopt_inherited_fd`]) and reads what forking needs.
    /// Requests up to `max_request` bytes are accepted.
    ///
    /// # Errors
    ///
    /// `fd` is not open, or this C library or kernel does not offer what
    /// the module docs rely on (`PR_GET_TID_ADDRESS` needs
    /// `CONFIG_CHECKPOINT_RESTORE`).
    pub(crate) fn new(pre_main: PreMain, fd: RawFd, max_request: usize) -> io::Result<Self> {
        let socket = pre_main.adopt_inherited_fd(fd)?;
        if !FORK_SUPPORTED {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        let mut tid_address: *mut libc::c_int = std::ptr::null_mut();
        // SAFETY: PR_GET_TID_ADDRESS stores one pointer at the address
        // given, which points at a live local of that type.
        super::cvt(unsafe {
            libc::prctl(
                libc::PR_GET_TID_ADDRESS,
                &mut tid_address as *mut *mut libc::c_int,
                0,
                0,
                0,
            )
        })?;
        if tid_address.is_null() {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        // SAFETY: the kernel reports the address this thread registered to
        // be cleared when it exits; glibc registers its thread descriptor's
        // `tid` field, which is live, aligned memory for the thread's
        // lifetime. The read confirms that it holds this thread's id.
        let found = unsafe { std::ptr::read_volatile(tid_address) };
        if found != rustix::thread::gettid().as_raw_nonzero().get() {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        let mut head: *mut libc::c_void = std::ptr::null_mut();
        let mut len: libc::size_t = 0;
        // SAFETY: get_robust_list(0, ...) stores the calling thread's list
        // head and its size at the two addresses, both live locals.
        super::cvt(unsafe {
            libc::syscall(
                libc::SYS_get_robust_list,
                0,
                &mut head as *mut *mut libc::c_void,
                &mut len as *mut libc::size_t,
            ) as libc::c_int
        })?;
        Ok(ForkServer {
            socket,
            tid_address: tid_address as u64,
            robust_head: head as u64,
            robust_len: len as u64,
            buf: vec![0; max_request],
            _one_thread: PhantomData,
        })
    }

    /// Waits for the next request; `Ok(None)` once the parent closed its end.
    ///
    /// # Errors
    ///
    /// A request larger than the buffer (`EMSGSIZE`), descriptors that did
    /// not fit, or a failed receive.
    pub(crate) fn next(&mut self) -> io::Result<Option<Request>> {
        let mut space =
            vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_REQUEST_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut self.buf)];
        let msg = loop {
            match rustix::net::recvmsg(
                &self.socket,
                &mut iov,
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Err(rustix::io::Errno::INTR) => continue,
                other => break other?,
            }
        };
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if msg.bytes == 0 && fds.is_empty() {
            return Ok(None);
        }
        if msg.flags.contains(ReturnFlags::TRUNC) {
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        Ok(Some(Request {
            bytes: self.buf[..msg.bytes].to_vec(),
            fds,
        }))
    }

    /// Answers the request just read: the new process's pid, or why none.
    pub(crate) fn reply(&self, result: &io::Result<u32>) -> io::Result<()> {
        let word: i64 = match result {
            Ok(pid) => i64::from(*pid),
            Err(e) => -i64::from(e.raw_os_error().unwrap_or(libc::EIO)),
        };
        rustix::net::send(
            &self.socket,
            &word.to_le_bytes(),
            rustix::net::SendFlags::NOSIGNAL,
        )?;
        Ok(())
    }

    /// Forks a sibling (see the module docs) that gets `fds`. The server
    /// closes its copies of `fds`; the sibling closes the server's socket.
    pub(crate) fn fork(self, fds: Vec<OwnedFd>) -> Forked {
        let args = CloneArgs {
            flags: (libc::CLONE_PARENT | libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID)
                as u64,
            child_tid: self.tid_address,
            ..CloneArgs::default()
        };
        // SAFETY: without CLONE_VM the new process runs on a copy of this
        // address space and returns from the call like a `fork` child. The
        // process has one thread (the `PreMain` this was made from), so no
        // lock is held and no other thread's state is lost in the copy;
        // `child_tid` is the thread descriptor's `tid` field (checked in
        // `new`), which the kernel writes in the copy. `args` is a live,
        // initialised `clone_args` of the size given.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        match ret {
            -1 => {
                let e = io::Error::last_os_error();
                Forked::Server(self, Err(e))
            }
            0 => {
                // SAFETY: set_robust_list registers, for this thread, the
                // head read from the same thread descriptor in the server:
                // the same address, holding an empty list, in this copy.
                unsafe {
                    libc::syscall(
                        libc::SYS_set_robust_list,
                        self.robust_head as *mut libc::c_void,
                        self.robust_len as libc::size_t,
                    );
                }
                let ForkServer { socket, buf, .. } = self;
                drop(socket);
                // Unmapping the copy of the request buffer would only cost
                // time: its pages were never touched in this process.
                std::mem::forget(buf);
                Forked::Sibling(Sibling {
                    // SAFETY: this process is a copy of the server's single
                    // thread, still before `main`; the descriptors above
                    // stderr are the server's socket (closed just above) and
                    // `fds`, which `Sibling` owns until `place` gives them
                    // their numbers and closes them.
                    pre_main: unsafe { PreMain::again() },
                    fds,
                })
            }
            pid => Forked::Server(self, Ok(pid as u32)),
        }
    }
}

/// A process just forked by the server, before `main`, holding the
/// descriptors of its request.
#[derive(Debug)]
pub(crate) struct Sibling {
    pre_main: PreMain,
    fds: Vec<OwnedFd>,
}

impl Sibling {
    /// The token, for work on the environment before the descriptors are
    /// placed.
    pub(crate) fn pre_main(&self) -> &PreMain {
        &self.pre_main
    }

    /// The `i`th descriptor of the request.
    pub(crate) fn fd(&self, i: usize) -> Option<BorrowedFd<'_>> {
        self.fds.get(i).map(AsFd::as_fd)
    }

    /// Gives the request's descriptor `plan[k].0` the number `plan[k].1`
    /// (without close-on-exec), for each `k`, and closes every received
    /// descriptor. The targets must be at most `highest`; the token comes
    /// back, with nothing above stderr owned.
    pub(crate) fn place(mut self, plan: &[(usize, RawFd)], highest: RawFd) -> io::Result<PreMain> {
        // A source at a target's number would be overwritten (or, at its
        // own number, keep close-on-exec): move those above every target.
        for fd in &mut self.fds {
            if fd.as_raw_fd() <= highest {
                *fd = rustix::io::fcntl_dupfd_cloexec(&*fd, highest + 1)?;
            }
        }
        for &(index, target) in plan {
            let Some(source) = self.fds.get(index) else {
                return Err(io::Error::from(io::ErrorKind::InvalidInput));
            };
            // SAFETY: dup2 takes descriptor numbers; `source` is open (it is
            // owned), and `target` (at most `highest`) is owned by nothing:
            // every received descriptor sits above `highest` now, and before
            // `main` no code owns a descriptor of its own (the `PreMain`
            // promise). Stdio numbers are replaced atomically.
            super::cvt(unsafe { libc::dup2(source.as_raw_fd(), target) })?;
        }
        drop(self.fds);
        Ok(self.pre_main)
    }
}
