//! Messaging between a parent and a child process, each figure beside its
//! raw baseline measured in the same run:
//!
//! - `Pipe` round trip of an 8-byte message, beside a bare futex ping-pong
//!   over shared memory (both processes; also with the pipe's adaptive spin
//!   policy) and a bare socketpair ping-pong;
//! - `tell`/`listen` round trip of an 8-byte message, beside the bare
//!   socketpair ping-pong;
//! - `Pipe` throughput with 1 MiB messages, beside a bare socketpair moving
//!   1 MiB buffers and `memcpy` of 1 MiB.
//!
//! Every peer is a real child process started with skprocess; the raw
//! baselines use the same descriptors and shared memory, driven without any
//! framing or encoding. `SUMMARY` lines at the end give medians and ratios.

use criterion::{Criterion, Throughput};
use serde::{Deserialize, Serialize};
use skprocess::__bench::{socket_pipe_pair, Fd, FutexPingPong};
use skprocess::prelude::*;
use skprocess_benches::{median_per_call, report, report_rate};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

const END: u64 = u64::MAX;
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
            if x == END {
                return Ok(());
            }
            self.pipe.send(&x)?;
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

/// The parent's side of every peer.
struct Peers {
    pipe: Pipe,
    pipe_h: Handle<PipeEcho>,
    sock_pipe: Pipe,
    sock_pipe_h: Handle<PipeEcho>,
    tell_h: Handle<TellEcho>,
    sock: UnixStream,
    sock_h: Handle<SocketEcho>,
    futex: FutexPingPong,
    futex_h: Handle<FutexEcho>,
    futex_spin: FutexPingPong,
    futex_spin_h: Handle<FutexEcho>,
}

fn socket_peer() -> (UnixStream, Fd) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    (a, Fd(b.into()))
}

impl Peers {
    fn start() -> Peers {
        let (pipe, theirs) = Pipe::pair().expect("pipe");
        let pipe_h = PipeEcho { pipe: theirs }.start().expect("start");
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
        Peers {
            pipe,
            pipe_h,
            sock_pipe,
            sock_pipe_h,
            tell_h,
            sock,
            sock_h,
            futex,
            futex_h,
            futex_spin,
            futex_spin_h,
        }
    }

    fn pipe_rt(&self) {
        self.pipe.send(&7u64).unwrap();
        assert_eq!(self.pipe.recv::<u64>().unwrap(), 7);
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

    fn stop(mut self) {
        self.pipe.send(&END).unwrap();
        self.sock_pipe.send(&END).unwrap();
        self.tell_h.tell(&END).unwrap();
        self.sock.write_all(&END.to_le_bytes()).unwrap();
        self.futex.stop();
        self.futex_spin.stop();
        self.pipe_h.wait().unwrap();
        self.sock_pipe_h.wait().unwrap();
        self.tell_h.wait().unwrap();
        self.sock_h.wait().unwrap();
        self.futex_h.wait().unwrap();
        self.futex_spin_h.wait().unwrap();
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
            data,
        }
    }

    fn pipe_burst(&self) {
        for _ in 0..BURST {
            self.pipe.send(&self.data).unwrap();
        }
        assert_eq!(self.pipe.recv::<u8>().unwrap(), 1);
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

    fn stop(mut self) {
        self.pipe.send(&Bytes(Vec::new())).unwrap();
        self.vec_pipe.send(&Vec::<u8>::new()).unwrap();
        self.sock_pipe.send(&Bytes(Vec::new())).unwrap();
        self.sock.write_all(&0u64.to_le_bytes()).unwrap();
        self.pipe_h.wait().unwrap();
        self.vec_pipe_h.wait().unwrap();
        self.sock_pipe_h.wait().unwrap();
        self.sock_h.wait().unwrap();
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
    g.bench_function("Pipe over a socket pair", |b| b.iter(|| p.sock_pipe_rt()));
    g.bench_function("tell/listen", |b| b.iter(|| p.tell_rt()));
    g.bench_function("bare socketpair ping-pong", |b| b.iter(|| p.sock_rt()));
    g.bench_function("bare futex ping-pong", |b| b.iter(|| p.futex_rt()));
    g.bench_function("futex ping-pong, pipe's spin policy", |b| {
        b.iter(|| p.futex_spin_rt())
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

fn summary(p: &mut Peers, s: &mut Sinks) {
    let p = std::cell::RefCell::new(p);
    let (n, k) = (30, 200);
    let t = interleaved(
        7,
        &mut [
            &mut || median_per_call(n, k, || p.borrow().pipe_rt()),
            &mut || median_per_call(n, k, || p.borrow().sock_pipe_rt()),
            &mut || median_per_call(n, k, || p.borrow().tell_rt()),
            &mut || median_per_call(n, k, || p.borrow_mut().sock_rt()),
            &mut || median_per_call(n, k, || p.borrow().futex_rt()),
            &mut || median_per_call(n, k, || p.borrow().futex_spin_rt()),
        ],
    );
    let [pipe, sock_pipe, tell, sock, futex, futex_spin] = t[..] else {
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
            &mut || {
                median_per_call(5, 1, || {
                    (0..BURST).for_each(|_| memcpy_1mib(&src, &mut dst))
                })
            },
        ],
    );
    let rate = |d: Duration| (BURST * MIB) as f64 / d.as_secs_f64();
    let [pipe, vec_pipe, sock_pipe, sock, memcpy] = t[..] else {
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
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut peers = Peers::start();
    let mut sinks = Sinks::start();
    if !skprocess_benches::summary_only() {
        round_trips(&mut c, &mut peers);
        throughput(&mut c, &mut sinks);
    }
    summary(&mut peers, &mut sinks);
    peers.stop();
    sinks.stop();
    c.final_summary();
}
