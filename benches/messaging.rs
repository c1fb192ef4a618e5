//! Messaging between a parent and a child process, each figure beside its
//! raw baseline measured in the same run:
//!
//! - `Pipe` round trip of an 8-byte message, beside a bare futex ping-pong
//!   over shared memory (both processes; also with the pipe's adaptive spin
//!   policy) and a bare socketpair ping-pong;
//! - `tell`/`listen` round trip of an 8-byte message, beside the bare
//!   socketpair ping-pong;
//! - `Pipe` throughput with 1 MiB messages, beside a bare socketpair moving
//!   1 MiB buffers and `memcpy` of 1 MiB;
//! - `Pipe` one-way rate of 8-byte messages, beside a bare socketpair
//!   written 8 bytes at a time (and read through a buffer);
//! - the Rust peers a user would pick instead, with the same workloads:
//!   ipc-channel (an 8-byte round trip, 1 MiB throughput) and iceoryx2 (an
//!   8-byte round trip over two publish-subscribe services, both sides
//!   polling, as iceoryx2's own benchmark does). Each peer's set-up (channel
//!   exchange, service creation) is measured once and reported too.
//!
//! Every peer is a real child process started with skprocess; the raw
//! baselines use the same descriptors and shared memory, driven without any
//! framing or encoding. `SUMMARY` lines at the end give medians and ratios.

use criterion::{Criterion, Throughput};
use serde::{Deserialize, Serialize};
use skprocess::__bench::{socket_pipe_pair, Fd, FutexPingPong, ShmStream};
use skprocess::prelude::*;
use skprocess_benches::{median, median_per_call, report, report_rate};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

const END: u64 = u64::MAX;
/// Asks an echo which processor it runs on.
const WHERE: u64 = u64::MAX - 2;
const MIB: usize = 1 << 20;
/// Messages per throughput sample.
const BURST: usize = 16;

/// A byte buffer that serde writes as one byte string (postcard copies it
/// in one go), where `Vec<u8>` is written element by element.
#[derive(Debug, Clone)]
struct Bytes(Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// Echoes `u64`s on a pipe until `END`.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct PipeEcho {
    pipe: Pipe,
}

impl Process for PipeEcho {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        loop {
            let x: u64 = self.pipe.recv()?;
            match x {
                END => return Ok(()),
                WHERE => self.pipe.send(&(rustix::thread::sched_getcpu() as u64))?,
                _ => self.pipe.send(&x)?,
            }
        }
    }
}

/// Echoes `u64`s on a pipe until `END`, polling with `try_recv` as the
/// iceoryx2 echo polls: it spins while messages came within [`IOX_SPIN`],
/// then naps between polls.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct PipePollEcho {
    pipe: Pipe,
}

impl Process for PipePollEcho {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let mut last = Instant::now();
        loop {
            match self.pipe.try_recv::<u64>()? {
                Some(END) => return Ok(()),
                Some(x) => {
                    self.pipe.send(&x)?;
                    last = Instant::now();
                }
                None if last.elapsed() < IOX_SPIN => std::hint::spin_loop(),
                None => std::thread::sleep(Duration::from_micros(100)),
            }
        }
    }
}

/// Echoes `u64`s with `tell`/`listen` until `END`.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct TellEcho;

impl Process for TellEcho {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        loop {
            match ctx.listen::<u64>(Duration::from_secs(3600))? {
                Some(END) => return Ok(()),
                Some(x) => ctx.tell(&x)?,
                None => {}
            }
        }
    }
}

/// Echoes raw 8-byte buffers on a socket until `END`.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct SocketEcho {
    sock: Fd,
}

impl Process for SocketEcho {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let mut s = UnixStream::from(self.sock.0.try_clone()?);
        let mut b = [0u8; 8];
        loop {
            s.read_exact(&mut b)?;
            if u64::from_le_bytes(b) == END {
                return Ok(());
            }
            s.write_all(&b)?;
        }
    }
}

/// Answers futex pings until stopped.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct FutexEcho {
    pp: FutexPingPong,
}

impl Process for FutexEcho {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.pp.serve();
        Ok(())
    }
}

/// Receives bursts of 1 MiB messages, acknowledging each burst.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct PipeSink {
    pipe: Pipe,
    typed_bytes: bool,
}

impl Process for PipeSink {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        loop {
            for _ in 0..BURST {
                let len = if self.typed_bytes {
                    self.pipe.recv::<Bytes>()?.0.len()
                } else {
                    self.pipe.recv::<Vec<u8>>()?.len()
                };
                if len == 0 {
                    return Ok(());
                }
            }
            self.pipe.send(&1u8)?;
        }
    }
}

/// Reads bursts of 1 MiB buffers from a bare shared-memory stream (each
/// after its length, 0 to end), acknowledging each burst.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct ShmSink {
    stream: ShmStream,
}

impl Process for ShmSink {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let mut buf = Vec::new();
        loop {
            for _ in 0..BURST {
                self.stream.read(&mut buf, 8);
                let len = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
                if len == 0 {
                    return Ok(());
                }
                self.stream.read(&mut buf, len as usize);
            }
            self.stream.ack();
        }
    }
}

/// Reads bursts of raw 1 MiB buffers from a socket, acknowledging each burst.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct SocketSink {
    sock: Fd,
}

impl Process for SocketSink {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let mut s = UnixStream::from(self.sock.0.try_clone()?);
        let mut buf = vec![0u8; MIB];
        loop {
            for _ in 0..BURST {
                let mut len = [0u8; 8];
                s.read_exact(&mut len)?;
                if u64::from_le_bytes(len) == 0 {
                    return Ok(());
                }
                s.read_exact(&mut buf)?;
            }
            s.write_all(&[1])?;
        }
    }
}

/// 8-byte messages per one-way rate sample.
const RATE_BURST: usize = 20_000;
/// Asks a counting peer to acknowledge what it received so far.
const ACK: u64 = u64::MAX - 1;

/// Receives `u64`s on a pipe until `END`, acknowledging each `ACK`.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct PipeCount {
    pipe: Pipe,
}

impl Process for PipeCount {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let mut n = 0u64;
        loop {
            match self.pipe.recv::<u64>()? {
                END => return Ok(()),
                ACK => self.pipe.send(&n)?,
                _ => n += 1,
            }
        }
    }
}

/// Reads raw 8-byte messages from a socket until `END`, acknowledging
/// each `ACK` with one byte.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct SocketCount {
    sock: Fd,
}

impl Process for SocketCount {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let s = UnixStream::from(self.sock.0.try_clone()?);
        let mut r = std::io::BufReader::with_capacity(64 << 10, &s);
        let mut b = [0u8; 8];
        loop {
            r.read_exact(&mut b)?;
            match u64::from_le_bytes(b) {
                END => return Ok(()),
                ACK => (&s).write_all(&[1])?,
                _ => {}
            }
        }
    }
}

/// How long a peer waits for its counterpart before giving up.
const PEER_DEADLINE: Duration = Duration::from_secs(10);

/// What an ipc-channel echo child hands its parent: the sender of its pings
/// and the receiver of its pongs.
type IpcEchoEnds = (
    ipc_channel::ipc::IpcSender<u64>,
    ipc_channel::ipc::IpcReceiver<u64>,
);

/// Echoes `u64`s over ipc-channel until `END`; connects to the parent's
/// one-shot server `name` first.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct IpcEcho {
    name: String,
}

impl Process for IpcEcho {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        use ipc_channel::ipc;
        let boot = ipc::IpcSender::<IpcEchoEnds>::connect(self.name.clone())?;
        let (ping_tx, ping_rx) = ipc::channel::<u64>()?;
        let (pong_tx, pong_rx) = ipc::channel::<u64>()?;
        boot.send((ping_tx, pong_rx))?;
        loop {
            let x = ping_rx.recv()?;
            if x == END {
                return Ok(());
            }
            pong_tx.send(x)?;
        }
    }
}

/// What an ipc-channel sink child hands its parent: the sender of the
/// data, the receiver of the acknowledgements.
type IpcSinkEnds = (
    ipc_channel::ipc::IpcBytesSender,
    ipc_channel::ipc::IpcReceiver<u8>,
);

/// Receives bursts of 1 MiB byte messages over ipc-channel, acknowledging
/// each burst.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct IpcSink {
    name: String,
}

impl Process for IpcSink {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        use ipc_channel::ipc;
        let boot = ipc::IpcSender::<IpcSinkEnds>::connect(self.name.clone())?;
        let (data_tx, data_rx) = ipc::bytes_channel()?;
        let (ack_tx, ack_rx) = ipc::channel::<u8>()?;
        boot.send((data_tx, ack_rx))?;
        loop {
            for _ in 0..BURST {
                if data_rx.recv()?.is_empty() {
                    return Ok(());
                }
            }
            ack_tx.send(1)?;
        }
    }
}

/// Starts `child` (given the one-shot server's name) and takes the ends it
/// sends back.
fn ipc_connect<T, P>(child: impl FnOnce(String) -> P) -> (T, Handle<P>)
where
    T: for<'de> Deserialize<'de> + Serialize,
    P: Process,
{
    let (server, name) = ipc_channel::ipc::IpcOneShotServer::<T>::new().expect("ipc server");
    let h = child(name).start().expect("start");
    let (_, ends) = server.accept().expect("ipc accept");
    (ends, h)
}

/// ipc-channel's set-up, both ends in one process (no process start): the
/// one-shot server, the connection to it, the two channels and their
/// exchange, as `IpcEcho` and its parent do.
fn ipc_setup() {
    use ipc_channel::ipc;
    let (server, name) = ipc::IpcOneShotServer::<IpcEchoEnds>::new().expect("ipc server");
    let boot = ipc::IpcSender::<IpcEchoEnds>::connect(name).expect("connect");
    let (ping_tx, ping_rx) = ipc::channel::<u64>().expect("channel");
    let (pong_tx, pong_rx) = ipc::channel::<u64>().expect("channel");
    boot.send((ping_tx, pong_rx)).expect("send");
    let (_, ends) = server.accept().expect("accept");
    std::hint::black_box((ends, ping_rx, pong_tx));
}

/// iceoryx2's set-up, both ends in one process (no process start): a node
/// each, the two services and the four ports, as `IoxEcho` and its parent
/// do; each time under new service names.
fn iox_setup(round: usize) {
    let tag = iox_tag(&format!("setup-{round}"));
    let (a, _) = Iox::ends(&tag, false);
    let (b, _) = Iox::ends(&tag, true);
    std::hint::black_box((a, b));
}

/// iceoryx2's service names for the echo pair `tag` (made by
/// [`iox_tag`]): pings, pongs.
fn iox_names(tag: &str) -> (String, String) {
    (format!("{tag}/ping"), format!("{tag}/pong"))
}

/// A name for an echo pair that no other run uses.
fn iox_tag(what: &str) -> String {
    format!("skprocess-bench/{}/{what}", std::process::id())
}

/// How long an iceoryx2 echo polls without a message before it naps
/// between polls (so it does not take a core from the other rows while
/// they are measured).
const IOX_SPIN: Duration = Duration::from_micros(500);

/// Echoes `u64`s over two iceoryx2 publish-subscribe services until `END`,
/// polling; sends one `0` first to say it is connected.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct IoxEcho {
    tag: String,
}

impl Process for IoxEcho {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let (iox, mut last) = Iox::ends(&self.tag, true);
        loop {
            match iox.pongs.receive()? {
                Some(x) if *x == END => return Ok(()),
                Some(x) => {
                    iox.pings.send_copy(*x)?;
                    last = Instant::now();
                }
                None if last.elapsed() < IOX_SPIN => std::hint::spin_loop(),
                None => std::thread::sleep(Duration::from_micros(100)),
            }
        }
    }
}

/// The parent's end of an iceoryx2 echo pair.
struct Iox {
    _node: iceoryx2::node::Node<iceoryx2::service::ipc::Service>,
    pings: iceoryx2::port::publisher::Publisher<iceoryx2::service::ipc::Service, u64, ()>,
    pongs: iceoryx2::port::subscriber::Subscriber<iceoryx2::service::ipc::Service, u64, ()>,
}

impl Iox {
    /// A node, and the publisher and subscriber of one side of the echo
    /// pair `tag` (the echo's side if `echo`, which then says it is there).
    fn ends(tag: &str, echo: bool) -> (Iox, Instant) {
        use iceoryx2::prelude::*;
        // Its one warning says that no config file exists (the defaults
        // are used), which is what this bench wants.
        set_log_level(LogLevel::Error);
        let (mut ping, mut pong) = iox_names(tag);
        if echo {
            std::mem::swap(&mut ping, &mut pong);
        }
        let node = NodeBuilder::new()
            .create::<ipc::Service>()
            .expect("iceoryx2 node");
        let pings = node
            .service_builder(&ping.as_str().try_into().expect("name"))
            .publish_subscribe::<u64>()
            .open_or_create()
            .expect("service")
            .publisher_builder()
            .create()
            .expect("publisher");
        let pongs = node
            .service_builder(&pong.as_str().try_into().expect("name"))
            .publish_subscribe::<u64>()
            .open_or_create()
            .expect("service")
            .subscriber_builder()
            .create()
            .expect("subscriber");
        if echo {
            pings.send_copy(0).expect("send");
        }
        let iox = Iox {
            _node: node,
            pings,
            pongs,
        };
        (iox, Instant::now())
    }

    /// Creates the parent's side and starts the echo child.
    fn start() -> (Iox, Handle<IoxEcho>) {
        let tag = iox_tag("echo");
        let (iox, _) = Iox::ends(&tag, false);
        let mut h = IoxEcho { tag }.start().expect("start");
        match iox.recv() {
            Some(0) => (iox, h),
            other => {
                let _ = h.kill();
                panic!("iceoryx2 echo: {other:?}, {:?}", h.wait().err())
            }
        }
    }

    /// Polls for the next pong; `None` if none comes in time.
    fn recv(&self) -> Option<u64> {
        let start = Instant::now();
        loop {
            if let Some(x) = self.pongs.receive().expect("receive") {
                return Some(*x);
            }
            if start.elapsed() > PEER_DEADLINE {
                return None;
            }
            std::hint::spin_loop();
        }
    }

    fn round_trip(&self) {
        self.pings.send_copy(7).expect("send");
        assert_eq!(self.recv(), Some(7));
    }
}

/// The parent's side of every peer.
struct Peers {
    pipe: Pipe,
    pipe_h: Handle<PipeEcho>,
    poll_pipe: Pipe,
    poll_pipe_h: Handle<PipePollEcho>,
    sock_pipe: Pipe,
    sock_pipe_h: Handle<PipeEcho>,
    tell_h: Handle<TellEcho>,
    sock: UnixStream,
    sock_h: Handle<SocketEcho>,
    futex: FutexPingPong,
    futex_h: Handle<FutexEcho>,
    futex_spin: FutexPingPong,
    futex_spin_h: Handle<FutexEcho>,
    ipc: IpcEchoEnds,
    ipc_h: Handle<IpcEcho>,
    iox: Iox,
    iox_h: Handle<IoxEcho>,
}

fn socket_peer() -> (UnixStream, Fd) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    (a, Fd(b.into()))
}

impl Peers {
    fn start() -> Peers {
        let (pipe, theirs) = Pipe::pair().expect("pipe");
        let pipe_h = PipeEcho { pipe: theirs }.start().expect("start");
        let (poll_pipe, theirs) = Pipe::pair().expect("pipe");
        let poll_pipe_h = PipePollEcho { pipe: theirs }.start().expect("start");
        let (sock_pipe, theirs) = socket_pipe_pair().expect("pipe");
        let sock_pipe_h = PipeEcho { pipe: theirs }.start().expect("start");
        let tell_h = TellEcho.start().expect("start");
        let (sock, theirs) = socket_peer();
        let sock_h = SocketEcho { sock: theirs }.start().expect("start");
        let futex = FutexPingPong::new(false).expect("futex");
        let futex_h = FutexEcho { pp: copy(&futex) }.start().expect("start");
        // The same adaptive spin-then-sleep policy as the pipe's ring.
        let futex_spin = FutexPingPong::new(true).expect("futex");
        let futex_spin_h = FutexEcho {
            pp: copy(&futex_spin),
        }
        .start()
        .expect("start");
        let (ipc, ipc_h) = ipc_connect(|name| IpcEcho { name });
        let (iox, iox_h) = Iox::start();
        Peers {
            pipe,
            pipe_h,
            poll_pipe,
            poll_pipe_h,
            sock_pipe,
            sock_pipe_h,
            tell_h,
            sock,
            sock_h,
            futex,
            futex_h,
            futex_spin,
            futex_spin_h,
            ipc,
            ipc_h,
            iox,
            iox_h,
        }
    }

    fn pipe_rt(&self) {
        self.pipe.send(&7u64).unwrap();
        assert_eq!(self.pipe.recv::<u64>().unwrap(), 7);
    }

    /// A round trip whose both sides poll (`try_recv`), as iceoryx2's do.
    fn poll_pipe_rt(&self) {
        self.poll_pipe.send(&7u64).unwrap();
        let start = Instant::now();
        loop {
            if let Some(x) = self.poll_pipe.try_recv::<u64>().unwrap() {
                assert_eq!(x, 7);
                return;
            }
            assert!(start.elapsed() < PEER_DEADLINE, "polling echo silent");
            std::hint::spin_loop();
        }
    }

    /// Whether this thread and the pipe's echo run on the same processor
    /// now (right after a measurement of their round trip).
    fn pipe_same_cpu(&self) -> bool {
        self.pipe.send(&WHERE).unwrap();
        let theirs: u64 = self.pipe.recv().unwrap();
        theirs == rustix::thread::sched_getcpu() as u64
    }

    fn sock_pipe_rt(&self) {
        self.sock_pipe.send(&7u64).unwrap();
        assert_eq!(self.sock_pipe.recv::<u64>().unwrap(), 7);
    }

    fn tell_rt(&self) {
        self.tell_h.tell(&7u64).unwrap();
        assert_eq!(
            self.tell_h.listen::<u64>(Duration::from_secs(60)).unwrap(),
            Some(7)
        );
    }

    fn sock_rt(&mut self) {
        let mut b = 7u64.to_le_bytes();
        self.sock.write_all(&b).unwrap();
        self.sock.read_exact(&mut b).unwrap();
    }

    fn futex_rt(&self) {
        self.futex.ping();
    }

    fn futex_spin_rt(&self) {
        self.futex_spin.ping();
    }

    fn ipc_rt(&self) {
        self.ipc.0.send(7).unwrap();
        assert_eq!(self.ipc.1.recv().unwrap(), 7);
    }

    fn iox_rt(&self) {
        self.iox.round_trip();
    }

    fn stop(mut self) {
        self.pipe.send(&END).unwrap();
        self.poll_pipe.send(&END).unwrap();
        self.sock_pipe.send(&END).unwrap();
        self.tell_h.tell(&END).unwrap();
        self.sock.write_all(&END.to_le_bytes()).unwrap();
        self.futex.stop();
        self.futex_spin.stop();
        self.ipc.0.send(END).unwrap();
        self.iox.pings.send_copy(END).unwrap();
        self.pipe_h.wait().unwrap();
        self.poll_pipe_h.wait().unwrap();
        self.sock_pipe_h.wait().unwrap();
        self.tell_h.wait().unwrap();
        self.sock_h.wait().unwrap();
        self.futex_h.wait().unwrap();
        self.futex_spin_h.wait().unwrap();
        self.ipc_h.wait().unwrap();
        self.iox_h.wait().unwrap();
    }
}

/// Another handle on the same shared word, made the way a process field
/// is (through the skprocess encoding, which duplicates the descriptor).
fn copy(pp: &FutexPingPong) -> FutexPingPong {
    let (tx, rx) = Pipe::one_way().expect("pipe");
    tx.send(pp).expect("encode");
    rx.recv().expect("decode")
}

/// Throughput peers: a pipe sink and a raw socket sink.
struct Sinks {
    pipe: Pipe,
    pipe_h: Handle<PipeSink>,
    vec_pipe: Pipe,
    vec_pipe_h: Handle<PipeSink>,
    sock_pipe: Pipe,
    sock_pipe_h: Handle<PipeSink>,
    sock: UnixStream,
    sock_h: Handle<SocketSink>,
    ipc: IpcSinkEnds,
    ipc_h: Handle<IpcSink>,
    count_pipe: Pipe,
    count_pipe_h: Handle<PipeCount>,
    count_sock: UnixStream,
    count_sock_h: Handle<SocketCount>,
    shm: ShmStream,
    shm_h: Handle<ShmSink>,
    shm_acks: u64,
    data: Bytes,
}

impl Sinks {
    fn start() -> Sinks {
        let (pipe, theirs) = Pipe::pair().expect("pipe");
        let pipe_h = PipeSink {
            pipe: theirs,
            typed_bytes: true,
        }
        .start()
        .expect("start");
        let (vec_pipe, theirs) = Pipe::pair().expect("pipe");
        let vec_pipe_h = PipeSink {
            pipe: theirs,
            typed_bytes: false,
        }
        .start()
        .expect("start");
        let (sock_pipe, theirs) = socket_pipe_pair().expect("pipe");
        let sock_pipe_h = PipeSink {
            pipe: theirs,
            typed_bytes: true,
        }
        .start()
        .expect("start");
        let (sock, theirs) = socket_peer();
        let sock_h = SocketSink { sock: theirs }.start().expect("start");
        let (ipc, ipc_h) = ipc_connect(|name| IpcSink { name });
        let (count_pipe, theirs) = Pipe::pair().expect("pipe");
        let count_pipe_h = PipeCount { pipe: theirs }.start().expect("start");
        let (count_sock, theirs) = socket_peer();
        let count_sock_h = SocketCount { sock: theirs }.start().expect("start");
        let shm = ShmStream::new(MIB).expect("stream");
        let shm_h = ShmSink {
            stream: shm.try_clone().expect("stream"),
        }
        .start()
        .expect("start");
        let data = Bytes((0..MIB).map(|i| i as u8).collect());
        Sinks {
            pipe,
            pipe_h,
            vec_pipe,
            vec_pipe_h,
            sock_pipe,
            sock_pipe_h,
            sock,
            sock_h,
            ipc,
            ipc_h,
            count_pipe,
            count_pipe_h,
            count_sock,
            count_sock_h,
            shm,
            shm_h,
            shm_acks: 0,
            data,
        }
    }

    fn pipe_burst(&self) {
        for _ in 0..BURST {
            self.pipe.send(&self.data).unwrap();
        }
        assert_eq!(self.pipe.recv::<u8>().unwrap(), 1);
    }

    fn shm_burst(&mut self) {
        for _ in 0..BURST {
            self.shm.write(&(MIB as u64).to_le_bytes());
            self.shm.write(&self.data.0);
        }
        self.shm_acks += 1;
        self.shm.wait_acks(self.shm_acks);
    }

    fn vec_pipe_burst(&self) {
        for _ in 0..BURST {
            self.vec_pipe.send(&self.data.0).unwrap();
        }
        assert_eq!(self.vec_pipe.recv::<u8>().unwrap(), 1);
    }

    fn sock_pipe_burst(&self) {
        for _ in 0..BURST {
            self.sock_pipe.send(&self.data).unwrap();
        }
        assert_eq!(self.sock_pipe.recv::<u8>().unwrap(), 1);
    }

    fn sock_burst(&mut self) {
        for _ in 0..BURST {
            self.sock.write_all(&(MIB as u64).to_le_bytes()).unwrap();
            self.sock.write_all(&self.data.0).unwrap();
        }
        let mut ack = [0u8];
        self.sock.read_exact(&mut ack).unwrap();
    }

    fn ipc_burst(&self) {
        for _ in 0..BURST {
            self.ipc.0.send(&self.data.0).unwrap();
        }
        assert_eq!(self.ipc.1.recv().unwrap(), 1);
    }

    fn pipe_rate(&mut self) {
        for i in 0..RATE_BURST as u64 {
            self.count_pipe.send(&i).unwrap();
        }
        self.count_pipe.send(&ACK).unwrap();
        let _: u64 = self.count_pipe.recv().unwrap();
    }

    fn sock_rate(&mut self) {
        for i in 0..RATE_BURST as u64 {
            self.count_sock.write_all(&i.to_le_bytes()).unwrap();
        }
        self.count_sock.write_all(&ACK.to_le_bytes()).unwrap();
        let mut ack = [0u8];
        self.count_sock.read_exact(&mut ack).unwrap();
    }

    fn stop(mut self) {
        self.count_pipe.send(&END).unwrap();
        self.count_sock.write_all(&END.to_le_bytes()).unwrap();
        self.ipc.0.send(&[]).unwrap();
        self.pipe.send(&Bytes(Vec::new())).unwrap();
        self.vec_pipe.send(&Vec::<u8>::new()).unwrap();
        self.sock_pipe.send(&Bytes(Vec::new())).unwrap();
        self.sock.write_all(&0u64.to_le_bytes()).unwrap();
        self.shm.write(&0u64.to_le_bytes());
        self.shm_h.wait().unwrap();
        self.pipe_h.wait().unwrap();
        self.vec_pipe_h.wait().unwrap();
        self.sock_pipe_h.wait().unwrap();
        self.sock_h.wait().unwrap();
        self.ipc_h.wait().unwrap();
        self.count_pipe_h.wait().unwrap();
        self.count_sock_h.wait().unwrap();
    }
}

fn memcpy_1mib(src: &[u8], dst: &mut [u8]) {
    dst.copy_from_slice(std::hint::black_box(src));
    std::hint::black_box(dst);
}

fn round_trips(c: &mut Criterion, p: &mut Peers) {
    let mut g = c.benchmark_group("round trip, 8-byte message");
    g.sample_size(30)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("Pipe (shared-memory ring)", |b| b.iter(|| p.pipe_rt()));
    g.bench_function("Pipe, both sides polling (try_recv)", |b| {
        b.iter(|| p.poll_pipe_rt())
    });
    g.bench_function("Pipe over a socket pair", |b| b.iter(|| p.sock_pipe_rt()));
    g.bench_function("tell/listen", |b| b.iter(|| p.tell_rt()));
    g.bench_function("bare socketpair ping-pong", |b| b.iter(|| p.sock_rt()));
    g.bench_function("bare futex ping-pong", |b| b.iter(|| p.futex_rt()));
    g.bench_function("futex ping-pong, pipe's spin policy", |b| {
        b.iter(|| p.futex_spin_rt())
    });
    g.bench_function("ipc-channel", |b| b.iter(|| p.ipc_rt()));
    g.bench_function("iceoryx2 publish-subscribe, polling", |b| {
        b.iter(|| p.iox_rt())
    });
    g.finish();
}

fn throughput(c: &mut Criterion, s: &mut Sinks) {
    let mut g = c.benchmark_group("throughput, 1 MiB messages");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes((BURST * MIB) as u64));
    g.bench_function("Pipe, byte-string message", |b| b.iter(|| s.pipe_burst()));
    g.bench_function("Pipe, Vec<u8> message", |b| b.iter(|| s.vec_pipe_burst()));
    g.bench_function("Pipe over a socket pair, byte-string message", |b| {
        b.iter(|| s.sock_pipe_burst())
    });
    g.bench_function("bare socketpair", |b| b.iter(|| s.sock_burst()));
    g.bench_function("bare shared-memory stream", |b| b.iter(|| s.shm_burst()));
    g.bench_function("ipc-channel bytes", |b| b.iter(|| s.ipc_burst()));
    g.finish();
    let mut g = c.benchmark_group("one-way rate, 8-byte messages");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(RATE_BURST as u64));
    g.bench_function("Pipe", |b| b.iter(|| s.pipe_rate()));
    g.bench_function("bare socketpair, 8-byte writes", |b| {
        b.iter(|| s.sock_rate())
    });
    let src = s.data.0.clone();
    let mut dst = vec![0u8; MIB];
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            for _ in 0..BURST {
                memcpy_1mib(&src, &mut dst)
            }
        })
    });
    g.finish();
}

/// Medians over `rounds` interleaved batches, so that machine noise hits
/// every figure alike.
fn interleaved(rounds: usize, fs: &mut [&mut dyn FnMut() -> Duration]) -> Vec<Duration> {
    let mut all: Vec<Vec<Duration>> = vec![Vec::new(); fs.len()];
    for _ in 0..rounds {
        for (i, f) in fs.iter_mut().enumerate() {
            all[i].push(f());
        }
    }
    all.into_iter()
        .map(|mut v| {
            v.sort();
            v[v.len() / 2]
        })
        .collect()
}

/// The summary of the round trips, each beside its baselines and peers.
fn summary_round_trips(p: &mut Peers) {
    let p = std::cell::RefCell::new(p);
    let (n, k) = (30, 200);
    // Where the blocking round trip ran, sample by sample: the scheduler
    // may keep two processes that wake each other on one processor.
    let mut placement = Vec::new();
    let t = interleaved(
        7,
        &mut [
            &mut || {
                let t = median_per_call(n, k, || p.borrow().pipe_rt());
                placement.push((t, p.borrow().pipe_same_cpu()));
                t
            },
            &mut || median_per_call(n, k, || p.borrow().sock_pipe_rt()),
            &mut || median_per_call(n, k, || p.borrow().tell_rt()),
            &mut || median_per_call(n, k, || p.borrow_mut().sock_rt()),
            &mut || median_per_call(n, k, || p.borrow().futex_rt()),
            &mut || median_per_call(n, k, || p.borrow().futex_spin_rt()),
            &mut || median_per_call(n, k, || p.borrow().ipc_rt()),
            &mut || median_per_call(n, k, || p.borrow().iox_rt()),
            &mut || median_per_call(n, k, || p.borrow().poll_pipe_rt()),
        ],
    );
    let [pipe, sock_pipe, tell, sock, futex, futex_spin, ipc, iox, poll_pipe] = t[..] else {
        unreachable!()
    };
    report(
        "Pipe round trip, 8 B (target <= 1.5x)",
        pipe,
        "bare futex ping-pong",
        futex,
    );
    report(
        "Pipe round trip, 8 B",
        pipe,
        "futex ping-pong, pipe's spin policy",
        futex_spin,
    );
    report(
        "Pipe round trip, 8 B",
        pipe,
        "bare socketpair ping-pong",
        sock,
    );
    report(
        "Pipe over a socket pair, round trip",
        sock_pipe,
        "bare socketpair ping-pong",
        sock,
    );
    report(
        "tell/listen round trip, 8 B (target <= 2x)",
        tell,
        "bare socketpair ping-pong",
        sock,
    );
    report(
        "tell/listen round trip, 8 B (target <= 1x)",
        tell,
        "ipc-channel round trip",
        ipc,
    );
    report(
        "Pipe round trip, 8 B (target < 1x)",
        pipe,
        "ipc-channel round trip",
        ipc,
    );
    report(
        "Pipe round trip, 8 B (target <= 1x)",
        pipe,
        "iceoryx2 round trip, polling",
        iox,
    );
    placement.sort();
    let shown: Vec<String> = placement
        .iter()
        .map(|(t, same)| format!("{t:.2?} {}", if *same { "one" } else { "two" }))
        .collect();
    println!(
        "SUMMARY Pipe round trip samples, with the processors the two sides were on: {}",
        shown.join(", ")
    );
    report(
        "Pipe round trip, both polling (target <= 1x)",
        poll_pipe,
        "iceoryx2 round trip, polling",
        iox,
    );
    let ipc_setup = median(20, ipc_setup);
    let mut round = 0;
    let iox_setup = median(10, || {
        round += 1;
        iox_setup(round)
    });
    report(
        "ipc-channel set-up (once per child)",
        ipc_setup,
        "ipc-channel round trip",
        ipc,
    );
    report(
        "iceoryx2 set-up (once per child)",
        iox_setup,
        "iceoryx2 round trip, polling",
        iox,
    );
}

/// The summary of the throughputs and rates, each beside its baselines.
fn summary_throughput(s: &mut Sinks) {
    let s = std::cell::RefCell::new(s);
    let src = s.borrow().data.0.clone();
    let mut dst = vec![0u8; MIB];
    let t = interleaved(
        7,
        &mut [
            &mut || median_per_call(5, 1, || s.borrow().pipe_burst()),
            &mut || median_per_call(5, 1, || s.borrow().vec_pipe_burst()),
            &mut || median_per_call(5, 1, || s.borrow().sock_pipe_burst()),
            &mut || median_per_call(5, 1, || s.borrow_mut().sock_burst()),
            &mut || median_per_call(5, 1, || s.borrow().ipc_burst()),
            &mut || median_per_call(5, 1, || s.borrow_mut().shm_burst()),
            &mut || {
                median_per_call(5, 1, || {
                    (0..BURST).for_each(|_| memcpy_1mib(&src, &mut dst))
                })
            },
        ],
    );
    let rate = |d: Duration| (BURST * MIB) as f64 / d.as_secs_f64();
    let [pipe, vec_pipe, sock_pipe, sock, ipc, shm, memcpy] = t[..] else {
        unreachable!()
    };
    report_rate(
        "Pipe 1 MiB byte strings (target >= 1x)",
        rate(pipe),
        "bare socketpair, 1 MiB writes",
        rate(sock),
        "B/s",
    );
    report_rate(
        "Pipe 1 MiB byte strings (aim 0.5x)",
        rate(pipe),
        "memcpy of 1 MiB",
        rate(memcpy),
        "B/s",
    );
    report_rate(
        "Pipe 1 MiB byte strings",
        rate(pipe),
        "bare shared-memory stream, 1 MiB",
        rate(shm),
        "B/s",
    );
    report_rate(
        "bare shared-memory stream, 1 MiB",
        rate(shm),
        "memcpy of 1 MiB",
        rate(memcpy),
        "B/s",
    );
    report_rate(
        "Pipe 1 MiB byte strings (target > 1x)",
        rate(pipe),
        "ipc-channel, 1 MiB byte messages",
        rate(ipc),
        "B/s",
    );
    report_rate(
        "Pipe 1 MiB Vec<u8> (serde per byte)",
        rate(vec_pipe),
        "bare socketpair, 1 MiB writes",
        rate(sock),
        "B/s",
    );
    report_rate(
        "Pipe over a socket pair, 1 MiB",
        rate(sock_pipe),
        "bare socketpair, 1 MiB writes",
        rate(sock),
        "B/s",
    );

    let t = interleaved(
        7,
        &mut [
            &mut || median_per_call(5, 1, || s.borrow_mut().pipe_rate()),
            &mut || median_per_call(5, 1, || s.borrow_mut().sock_rate()),
        ],
    );
    let rate = |d: Duration| RATE_BURST as f64 / d.as_secs_f64();
    report_rate(
        "Pipe one-way, 8 B messages (aim 10 M/s)",
        rate(t[0]),
        "bare socketpair, 8-byte writes",
        rate(t[1]),
        "msg/s",
    );
}

/// iceoryx2's entries in `/dev/shm` (its global management segment) and
/// its folder in the temporary directory, as they are now.
fn iceoryx2_leftovers() -> std::collections::BTreeSet<std::path::PathBuf> {
    let mut found = std::collections::BTreeSet::new();
    if let Ok(dir) = std::fs::read_dir("/dev/shm") {
        for entry in dir.flatten() {
            if entry.file_name().to_string_lossy().starts_with("iox2_") {
                found.insert(entry.path());
            }
        }
    }
    let tmp = std::env::temp_dir().join("iceoryx2");
    if tmp.exists() {
        found.insert(tmp);
    }
    found
}

fn main() {
    let before = iceoryx2_leftovers();
    let mut c = Criterion::default().configure_from_args();
    let mut peers = Peers::start();
    if !skprocess_benches::summary_only() {
        round_trips(&mut c, &mut peers);
    }
    summary_round_trips(&mut peers);
    // The polling echoes wake every 100 µs while idle, which costs the
    // throughputs a third on this machine: they are gone before those run.
    peers.stop();
    let mut sinks = Sinks::start();
    if !skprocess_benches::summary_only() {
        throughput(&mut c, &mut sinks);
    }
    summary_throughput(&mut sinks);
    sinks.stop();
    c.final_summary();
    // iceoryx2 keeps a global segment and a folder after its nodes are
    // gone; remove what this run made, so the bench leaves /dev/shm as it
    // found it.
    for path in iceoryx2_leftovers().difference(&before) {
        let _ = std::fs::remove_file(path).or_else(|_| std::fs::remove_dir_all(path));
    }
}
