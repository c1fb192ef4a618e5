//! `Pipe` under faults: a writer killed in the middle of a message in two
//! lives in a row, an end used by two processes at once, a receiver that is
//! stuck or gone.

mod support;

use serde::{Deserialize, Serialize};
use skprocess::__bench::pipe_backlog;
use skprocess::prelude::*;
use std::time::{Duration, Instant};
use support::{assert_gone_within, finish, watchdog, DEADLINE};

/// One message: its origin, its position, and bytes whose content both
/// follow from those and are summed, so a garbled message cannot pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    attempt: u32,
    seq: u32,
    data: Vec<u8>,
    sum: u64,
}

fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100000001b3)
    })
}

fn item(attempt: u32, seq: u32, len: usize) -> Item {
    let data: Vec<u8> = (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(7)
                .wrapping_add(attempt * 31 + seq * 13) as u8
        })
        .collect();
    Item {
        attempt,
        seq,
        sum: checksum(&data),
        data,
    }
}

/// Receives the next item and checks it is exactly `(attempt, seq, len)`.
fn expect(rx: &PipeReceiver, attempt: u32, seq: u32, len: usize) {
    let got: Item = rx
        .recv_timeout(DEADLINE)
        .unwrap_or_else(|e| panic!("expected item {attempt}/{seq}, got error: {e}"))
        .unwrap_or_else(|| panic!("expected item {attempt}/{seq}, got nothing"));
    assert!(
        (got.attempt, got.seq, got.data.len()) == (attempt, seq, len)
            && got == item(attempt, seq, len),
        "expected item {attempt}/{seq} of {len} bytes, got item {}/{} of {} bytes{}",
        got.attempt,
        got.seq,
        got.data.len(),
        if got.sum == checksum(&got.data) {
            ""
        } else {
            " with a wrong checksum"
        }
    );
}

/// Asserts that no whole message is waiting (reading what part of one
/// there is).
fn assert_nothing(rx: &PipeReceiver) {
    if let Some(got) = rx.try_recv::<Item>().unwrap() {
        panic!(
            "got item {}/{} of {} bytes where none was whole",
            got.attempt,
            got.seq,
            got.data.len()
        );
    }
}

/// Waits (bounded) until the ring `rx` reads from is full: its sender is
/// then blocked, in the middle of a message larger than the ring.
fn wait_full(rx: &PipeReceiver) {
    let end = Instant::now() + DEADLINE;
    loop {
        let (unread, cap) = pipe_backlog(rx).unwrap();
        if unread == cap {
            return;
        }
        assert!(Instant::now() < end, "the ring never filled up");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Ring capacity of the cut-twice test, and the sizes it sends.
const RING: usize = 64 << 10;
const SMALL: usize = 100;
const SMALLS: u32 = 4;
/// Larger than the ring: streamed through it in pieces.
const BIG: usize = RING * 3 / 2;

/// Sends small items, one larger than its ring, then small ones again. In
/// its first two lives, a thread aborts the process when the parent says
/// so, while the large item is half sent. Its last life first tries to
/// send while the ring is still full of what the second one left, and says
/// when it has.
#[derive(Debug, Process, Serialize, Deserialize)]
#[process(runs = 1, lives = 3)]
struct CutTwice {
    tx: PipeSender,
    orders: PipeReceiver,
    status: PipeSender,
}

impl Process for CutTwice {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let attempt = ctx.attempt();
        let go: String = self.orders.recv()?;
        assert_eq!(go, "go");
        std::thread::scope(|s| {
            if attempt < 3 {
                let orders = &self.orders;
                s.spawn(move || {
                    if orders.recv::<String>().is_ok_and(|o| o == "die") {
                        std::process::abort();
                    }
                });
            } else {
                // This is where the writer finds the cut its previous life
                // left, while the reader has yet to reach the first one.
                if self.tx.try_send(&item(attempt, 0, SMALL))? {
                    return Err("sent into a ring that should be full".into());
                }
                self.status.send("tried")?;
            }
            for seq in 0..SMALLS {
                self.tx.send(&item(attempt, seq, SMALL))?;
            }
            self.tx.send(&item(attempt, SMALLS, BIG))?;
            for seq in SMALLS + 1..2 * SMALLS + 1 {
                self.tx.send(&item(attempt, seq, SMALL))?;
            }
            Ok(())
        })
    }
}

#[test]
fn a_message_cut_in_two_lives_in_a_row_is_never_delivered() {
    watchdog();
    let (tx, rx) = Pipe::one_way_with_capacity(RING).unwrap();
    let (orders, orders_rx) = Pipe::one_way().unwrap();
    let (status_tx, status) = Pipe::one_way().unwrap();
    let mut h = CutTwice {
        tx,
        orders: orders_rx,
        status: status_tx,
    }
    .start()
    .unwrap();

    // Life 1: its small items arrive; its large one fills the ring; then
    // the life dies in the middle of it.
    orders.send("go").unwrap();
    for seq in 0..SMALLS {
        expect(&rx, 1, seq, SMALL);
    }
    wait_full(&rx);
    let first = h.pid();
    orders.send("die").unwrap();
    assert_gone_within(first, DEADLINE);
    // Read what the dead life published: the large item stays incomplete.
    assert_nothing(&rx);
    assert_eq!(pipe_backlog(&rx).unwrap().0, 0);

    // Life 2 writes while this side reads nothing: it fills the ring with
    // its small items and the start of its large one, and dies too. The
    // reader has not reached the place where life 1 was cut.
    orders.send("go").unwrap();
    wait_full(&rx);
    let second = h.pid();
    assert_ne!(second, first);
    orders.send("die").unwrap();
    assert_gone_within(second, DEADLINE);

    // Life 3 sends everything. The reader gets exactly the whole items, in
    // order: none of the two cut ones, nothing garbled, nothing skipped.
    orders.send("go").unwrap();
    let tried: Option<String> = status.recv_timeout(DEADLINE).unwrap();
    assert_eq!(tried.as_deref(), Some("tried"));
    for seq in 0..SMALLS {
        expect(&rx, 2, seq, SMALL);
    }
    for seq in 0..SMALLS {
        expect(&rx, 3, seq, SMALL);
    }
    expect(&rx, 3, SMALLS, BIG);
    for seq in SMALLS + 1..2 * SMALLS + 1 {
        expect(&rx, 3, seq, SMALL);
    }
    finish(&mut h).unwrap();
    assert!(matches!(
        rx.recv_timeout::<Item>(DEADLINE),
        Err(Error::Disconnected)
    ));
}

/// Receives a copy of a pipe end with `listen` and uses it, recording the
/// first error.
#[derive(Debug, Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct CopyUser {
    /// Whether the copy is a sender (else a receiver).
    sends: bool,
    items: u32,
    used: u32,
    error: Option<String>,
}

impl Process for CopyUser {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        enum Copy {
            Tx(PipeSender),
            Rx(PipeReceiver),
        }
        let copy = match self.sends {
            true => Copy::Tx(ctx.listen(DEADLINE)?.ok_or("no end came")?),
            false => Copy::Rx(ctx.listen(DEADLINE)?.ok_or("no end came")?),
        };
        for seq in 0..self.items {
            let r = match &copy {
                Copy::Tx(tx) => tx.send(&item(9, seq, 16)),
                Copy::Rx(rx) => rx.recv_timeout::<Item>(DEADLINE).map(drop),
            };
            match r {
                Ok(()) => self.used += 1,
                Err(e) => {
                    self.error = Some(e.to_string());
                    break;
                }
            }
        }
        Ok(())
    }
}

#[test]
fn a_sender_copied_into_another_process_cannot_send_beside_its_original() {
    watchdog();
    const N: u32 = 60_000;
    let (tx, rx) = Pipe::one_way().unwrap();
    tx.send(&item(1, 0, 16)).unwrap();
    let mut h = CopyUser {
        sends: true,
        items: N,
        used: 0,
        error: None,
    }
    .start()
    .unwrap();
    // The child gets a copy of the sender while this process keeps using it.
    h.tell(&tx).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            for seq in 1..N {
                tx.send(&item(1, seq, 16)).unwrap();
            }
        });
        for seq in 0..N {
            expect(&rx, 1, seq, 16);
        }
    });
    let done = finish(&mut h).unwrap();
    assert_eq!(done.used, 0, "the copy sent {} messages", done.used);
    let e = done.error.expect("the copy sent without an error");
    assert!(e.contains("one process at a time"), "{e}");
    assert_nothing(&rx);
}

#[test]
fn a_receiver_copied_into_another_process_cannot_receive_beside_its_original() {
    watchdog();
    const N: u32 = 1000;
    let (tx, rx) = Pipe::one_way().unwrap();
    tx.send(&item(1, 0, 16)).unwrap();
    expect(&rx, 1, 0, 16);
    let mut h = CopyUser {
        sends: false,
        items: N,
        used: 0,
        error: None,
    }
    .start()
    .unwrap();
    h.tell(&rx).unwrap();
    for seq in 1..N {
        tx.send(&item(1, seq, 16)).unwrap();
    }
    let done = finish(&mut h).unwrap();
    assert_eq!(done.used, 0, "the copy received {} messages", done.used);
    let e = done.error.expect("the copy received without an error");
    assert!(e.contains("one process at a time"), "{e}");
    // The original still gets every message, in order.
    for seq in 1..N {
        expect(&rx, 1, seq, 16);
    }
}

#[test]
fn an_end_handed_over_after_its_holder_dropped_it_works() {
    watchdog();
    let (tx, rx) = Pipe::one_way().unwrap();
    tx.send(&item(1, 0, 16)).unwrap();
    let mut h = CopyUser {
        sends: true,
        items: 10,
        used: 0,
        error: None,
    }
    .start()
    .unwrap();
    h.tell(&tx).unwrap();
    drop(tx);
    let done = finish(&mut h).unwrap();
    assert_eq!(done.error, None);
    assert_eq!(done.used, 10);
    expect(&rx, 1, 0, 16);
    for seq in 0..10 {
        expect(&rx, 9, seq, 16);
    }
}

/// Reads nothing until told to, then counts `Some` items until `None`.
#[derive(Debug, Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Stuck {
    rx: PipeReceiver,
    orders: PipeReceiver,
    got: Vec<u64>,
}

impl Process for Stuck {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let _: String = self.orders.recv()?;
        while let Some(i) = self.rx.recv::<Option<u64>>()? {
            self.got.push(i);
        }
        Ok(())
    }
}

#[test]
fn try_send_and_send_timeout_give_up_on_a_stuck_receiver_then_proceed() {
    watchdog();
    let (tx, rx) = Pipe::one_way_with_capacity(4096).unwrap();
    let (orders, orders_rx) = Pipe::one_way().unwrap();
    let mut h = Stuck {
        rx,
        orders: orders_rx,
        got: Vec::new(),
    }
    .start()
    .unwrap();
    let mut sent = 0u64;
    while tx.try_send(&Some(sent)).unwrap() {
        sent += 1;
        assert!(sent < 4096, "try_send never found the buffer full");
    }
    assert!(sent > 0);
    assert!(!tx.try_send(&Some(sent)).unwrap());
    let wait = Duration::from_millis(50);
    let t0 = Instant::now();
    assert!(!tx.send_timeout(&Some(sent), wait).unwrap());
    assert!(t0.elapsed() >= wait);
    // Larger than the buffer: it cannot even start.
    assert!(!tx.send_timeout(&vec![5u8; 10_000], wait).unwrap());
    let e = tx.try_send(&vec![5u8; 10_000]).unwrap_err();
    assert!(e.to_string().contains("buffer"), "{e}");
    // The receiver starts reading: sends proceed, and it gets exactly what
    // was sent, none of what was given up.
    orders.send("read").unwrap();
    for i in sent..sent + 1000 {
        assert!(tx.send_timeout(&Some(i), DEADLINE).unwrap());
    }
    tx.send(&None::<u64>).unwrap();
    let done = finish(&mut h).unwrap();
    assert_eq!(done.got, (0..sent + 1000).collect::<Vec<_>>());
}

#[test]
fn a_sender_learns_that_its_receiver_is_gone_before_the_ring_is_full() {
    watchdog();
    let (tx, rx) = Pipe::one_way().unwrap();
    drop(rx);
    // 2048 small messages take a few tens of KiB of the 1 MiB ring.
    let r = (0..2048u64).try_for_each(|i| tx.send(&i));
    assert!(matches!(r, Err(Error::Disconnected)), "{r:?}");
}
