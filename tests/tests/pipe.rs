//! `Pipe`: typed messages between processes, in order, none lost; timeouts;
//! wrong types; ends moved into children as fields; peer death; hostile
//! peers.

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use skprocess::Stats;
use std::time::{Duration, Instant};

/// Upper bound for any single wait in these tests: a hang fails here.
const LIMIT: Duration = Duration::from_secs(20);

/// The transports a pipe can use: the default shared-memory ring, and the
/// socket pair it is measured against (reachable through a hidden helper).
#[derive(Debug, Clone, Copy)]
enum Transport {
    Ring,
    Socket,
}

const TRANSPORTS: [Transport; 2] = [Transport::Ring, Transport::Socket];

fn pair(t: Transport) -> skprocess::Result<(Pipe, Pipe)> {
    match t {
        Transport::Ring => Pipe::pair(),
        Transport::Socket => skprocess::__bench::socket_pipe_pair(),
    }
}

fn one_way(t: Transport) -> skprocess::Result<(PipeSender, PipeReceiver)> {
    match t {
        Transport::Ring => Pipe::one_way(),
        Transport::Socket => skprocess::__bench::socket_one_way(),
    }
}

fn recv<T: serde::de::DeserializeOwned>(p: &Pipe) -> T {
    p.recv_timeout(LIMIT)
        .expect("recv failed")
        .expect("timed out waiting for a message")
}

fn recv_one<T: serde::de::DeserializeOwned>(p: &PipeReceiver) -> T {
    p.recv_timeout(LIMIT)
        .expect("recv failed")
        .expect("timed out waiting for a message")
}

fn wait<P: Process>(h: &mut Handle<P>) -> P {
    h.wait_timeout(LIMIT)
        .expect("the process failed")
        .expect("the process did not end in time")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Msg {
    Num(u64),
    Blob(Vec<u8>),
    Text(String),
    Quit,
}

/// Sends back every message it gets until `Quit`; counts them.
#[derive(Debug, Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Echo {
    pipe: Pipe,
    seen: u64,
}

impl Process for Echo {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        loop {
            let m: Msg = self.pipe.recv()?;
            if m == Msg::Quit {
                return Ok(());
            }
            self.seen += 1;
            self.pipe.send(&m)?;
        }
    }
}

fn echo(t: Transport) -> (Pipe, Handle<Echo>) {
    let (mine, theirs) = pair(t).unwrap();
    let h = Echo {
        pipe: theirs,
        seen: 0,
    }
    .start()
    .unwrap();
    (mine, h)
}

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn round_trips_arrive_in_order() {
    for t in TRANSPORTS {
        let (p, mut h) = echo(t);
        for i in 0..5000u64 {
            p.send(&Msg::Num(i)).unwrap();
            assert_eq!(recv::<Msg>(&p), Msg::Num(i));
        }
        p.send(&Msg::Quit).unwrap();
        let done = wait(&mut h);
        assert_eq!(done.seen, 5000);
    }
}

#[test]
fn pipelined_bursts_arrive_in_order() {
    for t in TRANSPORTS {
        let (p, mut h) = echo(t);
        let mut next = 0u64;
        for burst in [1usize, 10, 100, 1000, 3000] {
            let first = next;
            for _ in 0..burst {
                p.send(&Msg::Num(next)).unwrap();
                next += 1;
            }
            for i in first..next {
                assert_eq!(recv::<Msg>(&p), Msg::Num(i));
            }
        }
        p.send(&Msg::Quit).unwrap();
        assert_eq!(wait(&mut h).seen, next);
    }
}

#[test]
fn large_blobs_cross_intact() {
    for t in TRANSPORTS {
        let (p, mut h) = echo(t);
        for (i, len) in [0usize, 1, 7, 4095, 4096, 65_537, 1 << 20, (3 << 20) + 5]
            .into_iter()
            .enumerate()
        {
            let b = blob(len, i as u8);
            p.send(&Msg::Blob(b.clone())).unwrap();
            assert_eq!(recv::<Msg>(&p), Msg::Blob(b), "blob of {len} bytes");
        }
        p.send(&Msg::Quit).unwrap();
        wait(&mut h);
    }
}

/// Receives one blob and answers with its length and a checksum.
#[derive(Debug, Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Digest {
    pipe: Pipe,
}

fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100000001b3)
    })
}

impl Process for Digest {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let b: Vec<u8> = self.pipe.recv()?;
        self.pipe.send(&(b.len() as u64, checksum(&b)))?;
        // And one back the other way, a quarter of the size.
        self.pipe.send(&b[..b.len() / 4])?;
        Ok(())
    }
}

#[test]
fn a_64_mib_blob_crosses_and_16_mib_come_back() {
    let (p, theirs) = Pipe::pair().unwrap();
    let mut h = Digest { pipe: theirs }.start().unwrap();
    let b = blob(64 << 20, 3);
    p.send(&b).unwrap();
    assert_eq!(recv::<(u64, u64)>(&p), (b.len() as u64, checksum(&b)));
    let back: Vec<u8> = recv(&p);
    assert!(
        back == b[..b.len() / 4],
        "the 16 MiB blob came back changed"
    );
    wait(&mut h);
}

#[test]
fn recv_timeout_returns_none_in_time() {
    for t in TRANSPORTS {
        let (a, b) = pair(t).unwrap();
        for ms in [0u64, 10, 100, 300] {
            let d = Duration::from_millis(ms);
            let t0 = Instant::now();
            assert_eq!(b.recv_timeout::<u64>(d).unwrap(), None);
            let took = t0.elapsed();
            assert!(
                took >= d,
                "returned after {took:?}, before its {d:?} timeout"
            );
        }
        assert_eq!(b.try_recv::<u64>().unwrap(), None);
        // Still usable afterwards.
        a.send(&9u64).unwrap();
        assert_eq!(b.recv_timeout::<u64>(LIMIT).unwrap(), Some(9));
        let deadline = Instant::now() + Duration::from_millis(20);
        assert_eq!(b.recv_deadline::<u64>(deadline).unwrap(), None);
        assert!(Instant::now() >= deadline);
    }
}

#[test]
fn a_timed_out_receive_across_processes_is_none_then_the_message_comes() {
    for t in TRANSPORTS {
        let (p, mut h) = echo(t);
        assert_eq!(
            p.recv_timeout::<Msg>(Duration::from_millis(50)).unwrap(),
            None
        );
        p.send(&Msg::Text("late".into())).unwrap();
        assert_eq!(recv::<Msg>(&p), Msg::Text("late".into()));
        p.send(&Msg::Quit).unwrap();
        wait(&mut h);
    }
}

#[test]
fn a_wrong_type_is_an_error_and_the_next_message_is_fine() {
    for t in TRANSPORTS {
        let (a, b) = pair(t).unwrap();
        a.send(&1u64).unwrap();
        a.send(&"two").unwrap();
        a.send(&Msg::Num(3)).unwrap();
        let e = b.recv_timeout::<String>(LIMIT).unwrap_err();
        assert!(matches!(e, Error::WrongType { .. }), "{e}");
        assert!(e.to_string().contains("u64"), "{e}");
        assert_eq!(
            b.recv_timeout::<String>(LIMIT).unwrap().as_deref(),
            Some("two")
        );
        let e = b.recv_timeout::<u64>(LIMIT).unwrap_err();
        assert!(e.to_string().contains("Msg"), "{e}");
        a.send(&4u64).unwrap();
        assert_eq!(b.recv_timeout::<u64>(LIMIT).unwrap(), Some(4));
    }
}

#[test]
fn a_wrong_type_from_a_child_is_an_error_and_the_pipe_stays_usable() {
    for t in TRANSPORTS {
        let (p, mut h) = echo(t);
        p.send(&Msg::Num(1)).unwrap();
        let e = p.recv_timeout::<u64>(LIMIT).unwrap_err();
        assert!(matches!(e, Error::WrongType { .. }), "{e}");
        p.send(&Msg::Num(2)).unwrap();
        assert_eq!(recv::<Msg>(&p), Msg::Num(2));
        // The child gets a wrong type too: its hook fails, and that is the end of it.
        p.send(&5u8).unwrap();
        let e = h.wait_timeout(LIMIT).unwrap_err();
        assert!(e.to_string().contains("u8"), "{e}");
    }
}

/// Sends `n` numbers one way.
#[derive(Debug, Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Producer {
    tx: PipeSender,
    n: u64,
}

impl Process for Producer {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        for i in 0..self.n {
            self.tx.send(&i)?;
        }
        Ok(())
    }
}

/// Receives numbers until `None`, summing them.
#[derive(Debug, Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Consumer {
    rx: PipeReceiver,
    count: u64,
    sum: u64,
    in_order: bool,
}

impl Process for Consumer {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.in_order = true;
        while let Some(i) = self.rx.recv::<Option<u64>>()? {
            self.in_order &= i == self.count;
            self.count += 1;
            self.sum += i;
        }
        Ok(())
    }
}

#[test]
fn a_one_way_stream_from_a_child_loses_nothing() {
    for t in TRANSPORTS {
        let (tx, rx) = one_way(t).unwrap();
        let n = 100_000u64;
        let mut h = Producer { tx, n }.start().unwrap();
        for i in 0..n {
            assert_eq!(recv_one::<u64>(&rx), i);
        }
        wait(&mut h);
        // The child has ended and the sender it returned is dropped: end of stream.
        assert!(rx.recv_timeout::<u64>(LIMIT).is_err());
        assert_eq!(rx.stats().messages_received, n);
    }
}

#[test]
fn a_one_way_stream_into_a_child_loses_nothing() {
    for t in TRANSPORTS {
        let (tx, rx) = one_way(t).unwrap();
        let n = 100_000u64;
        let mut h = Consumer {
            rx,
            count: 0,
            sum: 0,
            in_order: false,
        }
        .start()
        .unwrap();
        for i in 0..n {
            tx.send(&Some(i)).unwrap();
        }
        tx.send(&None::<u64>).unwrap();
        let done = wait(&mut h);
        assert_eq!(done.count, n);
        assert_eq!(done.sum, n * (n - 1) / 2);
        assert!(done.in_order);
        let s = tx.stats();
        assert_eq!(s.messages_sent, n + 1);
        assert_eq!(s.messages_received, 0);
    }
}

#[test]
fn two_children_talk_through_a_pipe_made_by_their_parent() {
    let (tx, rx) = Pipe::one_way().unwrap();
    let mut c = Consumer {
        rx,
        count: 0,
        sum: 0,
        in_order: false,
    }
    .start()
    .unwrap();
    let mut p = OptionProducer { tx, n: 10_000 }.start().unwrap();
    wait(&mut p);
    let done = wait(&mut c);
    assert_eq!(done.count, 10_000);
    assert!(done.in_order);
}

/// Like `Producer`, but sends `Some(i)` and a final `None`.
#[derive(Debug, Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct OptionProducer {
    tx: PipeSender,
    n: u64,
}

impl Process for OptionProducer {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        for i in 0..self.n {
            self.tx.send(&Some(i))?;
        }
        self.tx.send(&None::<u64>)?;
        Ok(())
    }
}

/// Says it is ready, then sleeps until killed.
#[derive(Debug, Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Sleeper {
    tx: PipeSender,
}

impl Process for Sleeper {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.tx.send("ready")?;
        loop {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn killed_while_receiving(t: Transport, lives: u32) {
    let (tx, rx) = one_way(t).unwrap();
    let mut h = Sleeper { tx }
        .start_with(Sleeper::config().lives(lives))
        .unwrap();
    assert_eq!(recv_one::<String>(&rx), "ready");
    let r = std::thread::scope(|s| {
        s.spawn(|| h.kill().unwrap());
        rx.recv_timeout::<String>(LIMIT)
    });
    // Not a timeout (`Ok(None)`): the receiver learns that the sender died.
    assert!(
        r.is_err(),
        "recv returned {r:?} after the sender was killed"
    );
    let e = h.wait_timeout(LIMIT).unwrap_err();
    assert!(e.is_killed(), "{e}");
}

#[test]
fn a_killed_sender_makes_a_blocked_recv_fail_promptly() {
    for t in TRANSPORTS {
        killed_while_receiving(t, 1);
    }
}

#[test]
fn a_killed_sender_with_lives_left_makes_a_blocked_recv_fail_promptly() {
    for t in TRANSPORTS {
        killed_while_receiving(t, 3);
    }
}

/// Blocks in `recv` on its end until the parent's end goes away.
#[derive(Debug, Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Orphan {
    pipe: Pipe,
    error: String,
}

impl Process for Orphan {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.pipe.send("ready")?;
        match self.pipe.recv_timeout::<u64>(LIMIT) {
            Err(e) => self.error = e.to_string(),
            other => self.error = format!("unexpected: {other:?}"),
        }
        Ok(())
    }
}

#[test]
fn a_dropped_parent_end_makes_the_childs_recv_fail() {
    for t in TRANSPORTS {
        let (mine, theirs) = pair(t).unwrap();
        let mut h = Orphan {
            pipe: theirs,
            error: String::new(),
        }
        .start()
        .unwrap();
        assert_eq!(recv::<String>(&mine), "ready");
        drop(mine);
        let done = wait(&mut h);
        assert!(!done.error.starts_with("unexpected"), "{}", done.error);
        assert!(
            done.error.contains("other side has ended"),
            "{}",
            done.error
        );
    }
}

/// Drops its end while it keeps running.
#[derive(Debug, Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Dropper {
    pipe: Option<Pipe>,
    rx: PipeReceiver,
}

impl Process for Dropper {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        if let Some(p) = self.pipe.take() {
            p.send("bye")?;
        }
        // Stay alive until told to finish.
        let _: Option<()> = self.rx.recv_timeout(LIMIT)?;
        Ok(())
    }
}

#[test]
fn an_end_dropped_in_a_live_child_makes_recv_fail() {
    for t in TRANSPORTS {
        let (mine, theirs) = pair(t).unwrap();
        let (go_tx, go_rx) = one_way(t).unwrap();
        let mut h = Dropper {
            pipe: Some(theirs),
            rx: go_rx,
        }
        .start()
        .unwrap();
        assert_eq!(recv::<String>(&mine), "bye");
        // The child is alive, but no process holds the other end any more.
        let r = mine.recv_timeout::<String>(LIMIT);
        assert!(matches!(r, Err(Error::Disconnected)), "{r:?}");
        assert!(h.is_alive());
        go_tx.send(&()).unwrap();
        wait(&mut h);
    }
}

#[test]
fn dropping_one_end_ends_the_other_after_its_messages() {
    for t in TRANSPORTS {
        let (a, b) = pair(t).unwrap();
        a.send(&1u32).unwrap();
        a.send(&2u32).unwrap();
        drop(a);
        assert_eq!(b.recv_timeout::<u32>(LIMIT).unwrap(), Some(1));
        assert_eq!(b.recv::<u32>().unwrap(), 2);
        assert!(matches!(b.recv::<u32>(), Err(Error::Disconnected)));
        assert!(matches!(
            b.recv_timeout::<u32>(LIMIT),
            Err(Error::Disconnected)
        ));
        assert!(matches!(b.try_recv::<u32>(), Err(Error::Disconnected)));

        let (tx, rx) = one_way(t).unwrap();
        drop(rx);
        // A sender may not notice at once, but never blocks forever: sending more
        // than any buffer holds fails.
        let big = vec![0u8; 1 << 20];
        let r = (0..64).try_for_each(|_| tx.send(&big));
        assert!(matches!(r, Err(Error::Disconnected)), "{r:?}");
    }
}

#[test]
fn an_end_comes_back_with_the_final_state() {
    for t in TRANSPORTS {
        let (mine, theirs) = pair(t).unwrap();
        let mut h = Echo {
            pipe: theirs,
            seen: 0,
        }
        .start()
        .unwrap();
        mine.send(&Msg::Num(1)).unwrap();
        assert_eq!(recv::<Msg>(&mine), Msg::Num(1));
        mine.send(&Msg::Quit).unwrap();
        let done = wait(&mut h);
        // The child's end came back in the final value and still works.
        done.pipe.send(&Msg::Text("again".into())).unwrap();
        assert_eq!(recv::<Msg>(&mine), Msg::Text("again".into()));
    }
}

#[test]
fn an_end_can_travel_inside_a_message() {
    for t in TRANSPORTS {
        let (a, b) = pair(t).unwrap();
        let (tx, rx) = one_way(t).unwrap();
        a.send(&rx).unwrap();
        drop(rx);
        let rx2: PipeReceiver = recv(&b);
        tx.send(&42u64).unwrap();
        assert_eq!(recv_one::<u64>(&rx2), 42);
    }
}

#[test]
fn stats_count_messages_and_bytes() {
    for t in TRANSPORTS {
        let (a, b) = pair(t).unwrap();
        assert_eq!(a.stats(), Stats::default());
        for i in 0..10u64 {
            a.send(&i).unwrap();
        }
        for _ in 0..10 {
            let _: u64 = recv(&b);
        }
        b.send(&vec![0u8; 1000]).unwrap();
        let _: Vec<u8> = recv(&a);
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!(sa.messages_sent, 10);
        assert_eq!(sa.messages_received, 1);
        assert_eq!(sb.messages_sent, 1);
        assert_eq!(sb.messages_received, 10);
        assert_eq!(sa.bytes_sent, sb.bytes_received);
        assert_eq!(sb.bytes_sent, sa.bytes_received);
        assert!(sb.bytes_sent > 1000);
        assert!(sa.bytes_sent >= 10);
    }
}

#[test]
fn ends_are_debug_and_usable_from_threads() {
    for t in TRANSPORTS {
        let (a, b) = pair(t).unwrap();
        assert!(format!("{a:?}").starts_with("Pipe"));
        let (tx, rx) = one_way(t).unwrap();
        assert!(format!("{tx:?}").starts_with("PipeSender"));
        assert!(format!("{rx:?}").starts_with("PipeReceiver"));
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..1000u32 {
                    a.send(&i).unwrap();
                }
            });
            for i in 0..1000u32 {
                assert_eq!(recv::<u32>(&b), i);
            }
        });
    }
}

// ---------------------------------------------------------------------------
// A hostile peer: bytes written straight into the transport.

#[test]
fn garbage_from_a_hostile_peer_is_an_error_not_a_panic() {
    for t in TRANSPORTS {
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        let patterns: Vec<Vec<u8>> = vec![
            vec![0xff; 64],
            vec![0; 64],
            vec![
                8, 0, 0, 0, 48, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
            vec![3, 0, 0, 0, 48, 0, 0, 0, 1, 2, 3],
            vec![4, 0, 0, 0, 48, 0, 0, 0, 200, 0, 1, 2],
            (0..=255u8).collect(),
        ];
        for (i, garbage) in patterns.iter().enumerate() {
            let (tx, rx) = one_way(t).unwrap();
            for fd in skprocess::__bench::pipe_fds(&tx) {
                let owned = fd.try_clone_to_owned().unwrap();
                let mut s = std::os::unix::net::UnixStream::from(owned.try_clone().unwrap());
                if s.peer_addr().is_ok() {
                    s.write_all(garbage).unwrap();
                    continue;
                }
                // Shared memory: scribble over all of it.
                let f = std::fs::File::from(owned);
                let len = f.metadata().unwrap().len();
                let mut off = 0;
                while off < len {
                    let n = garbage.len().min((len - off) as usize);
                    f.write_all_at(&garbage[..n], off).unwrap();
                    off += n as u64;
                }
            }
            drop(tx);
            // Every receive ends in an error (or, for bytes that happen to form a
            // message, a value); none panics or hangs.
            for _ in 0..4 {
                match rx.recv_timeout::<u64>(Duration::from_secs(2)) {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("pattern {i}: a receive timed out on a closed pipe"),
                    Err(_) => break,
                }
            }
            assert!(
                rx.recv_timeout::<u64>(Duration::from_secs(2)).is_err(),
                "pattern {i}"
            );
        }
    }
}

/// Dies, when told, in the middle of sending a large message on its first
/// life; sends on its second.
#[derive(Debug, Process, Serialize, Deserialize)]
#[process(runs = 1, lives = 2)]
struct DiesMidMessage {
    tx: PipeSender,
    die: PipeReceiver,
}

impl Process for DiesMidMessage {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if ctx.attempt() == 1 {
            self.tx.send("first life")?;
            std::thread::scope(|s| {
                s.spawn(|| {
                    if self.die.recv::<()>().is_ok() {
                        std::process::exit(3);
                    }
                });
                // Nobody reads the big message, so this life ends inside it.
                self.tx.send(&vec![1u8; 4 << 20])?;
                Err("the big message was read while it should not have been".into())
            })
        } else {
            self.tx.send("second life")?;
            Ok(())
        }
    }
}

#[test]
fn a_message_cut_short_by_a_lost_life_is_dropped_and_the_next_life_is_heard() {
    let (tx, rx) = Pipe::one_way().unwrap();
    let (die, die_rx) = Pipe::one_way().unwrap();
    let mut h = DiesMidMessage { tx, die: die_rx }.start().unwrap();
    assert_eq!(recv_one::<String>(&rx), "first life");
    // The ring fills with the start of the 4 MiB message: its sender is
    // blocked in the middle of it when it is told to die.
    let deadline = Instant::now() + LIMIT;
    loop {
        let (unread, cap) = skprocess::__bench::pipe_backlog(&rx).unwrap();
        if unread == cap {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the big message never filled the ring"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    die.send(&()).unwrap();
    // The half-sent message is dropped, not delivered or garbled.
    assert_eq!(recv_one::<String>(&rx), "second life");
    assert!(rx.stats().bytes_received < 1000);
    wait(&mut h);
    assert!(rx.recv_timeout::<String>(LIMIT).is_err());
}

#[test]
fn a_small_buffer_still_carries_large_blobs_and_bursts() {
    let (p, theirs) = Pipe::pair_with_capacity(4096).unwrap();
    let mut h = Echo {
        pipe: theirs,
        seen: 0,
    }
    .start()
    .unwrap();
    for (i, len) in [0usize, 4000, 4096, 4097, 100_003, 1 << 20]
        .into_iter()
        .enumerate()
    {
        let b = blob(len, i as u8);
        p.send(&Msg::Blob(b.clone())).unwrap();
        assert_eq!(recv::<Msg>(&p), Msg::Blob(b), "blob of {len} bytes");
    }
    // More in flight than the buffer holds: the child's replies wait for
    // this side to read, while this side still sends. Both must progress,
    // so send from a thread.
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..2000u64 {
                p.send(&Msg::Num(i)).unwrap();
            }
        });
        for i in 0..2000u64 {
            assert_eq!(recv::<Msg>(&p), Msg::Num(i));
        }
    });
    p.send(&Msg::Quit).unwrap();
    wait(&mut h);
}

#[test]
fn pipes_leave_nothing_in_dev_shm() {
    let (p, mut h) = echo(Transport::Ring);
    p.send(&Msg::Num(1)).unwrap();
    assert_eq!(recv::<Msg>(&p), Msg::Num(1));
    let names = || -> Vec<String> {
        std::fs::read_dir("/dev/shm")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    // The shared memory is anonymous (memfd): no name anywhere, even while in use.
    assert!(
        !names().iter().any(|n| n.contains("skprocess")),
        "{:?}",
        names()
    );
    p.send(&Msg::Quit).unwrap();
    wait(&mut h);
}

/// A value whose serialization sends on the pipe it is being sent through.
struct SendsWhileEncoded<'a>(&'a Pipe);

impl Serialize for SendsWhileEncoded<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.send(&1u8).map_err(serde::ser::Error::custom)?;
        s.serialize_u8(2)
    }
}

#[test]
fn a_send_from_inside_the_encoding_of_a_send_on_the_same_end_is_an_error() {
    for t in TRANSPORTS {
        let (a, b) = pair(t).unwrap();
        // The ring encodes under its sending side's lock: the inner send
        // must fail, not wait for that lock for ever.
        match a.send(&SendsWhileEncoded(&a)) {
            Err(e) => assert!(e.to_string().contains("inside the encoding"), "{t:?}: {e}"),
            // A socket end encodes before it locks anything: both go.
            Ok(()) => {
                assert!(matches!(t, Transport::Socket));
                assert_eq!(recv::<u8>(&b), 1);
                let e = b.recv_timeout::<u8>(LIMIT).unwrap_err();
                assert!(e.to_string().contains("SendsWhileEncoded"), "{e}");
            }
        }
        // The pipe stays usable, and nothing of the failed message came.
        a.send(&3u8).unwrap();
        assert_eq!(recv::<u8>(&b), 3);
    }
}
