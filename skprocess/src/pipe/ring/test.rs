use super::layout::H_CAPACITY;
use super::wait::notify;
use super::*;
use crate::proto::kind;
use crate::wire;
use std::io::IoSlice;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn one_way() -> (End, End) {
    End::pair(Role::Send, Role::Recv, CAPACITY).unwrap()
}

fn ms(n: u64) -> Option<Instant> {
    Some(Instant::now() + Duration::from_millis(n))
}

/// Receives one message as raw bytes.
fn recv_raw(rx: &End, deadline: Option<Instant>) -> Result<Option<Vec<u8>>> {
    rx.recv(deadline, |b, _| b.to_vec())
}

/// Plays the producer by hand: writes `bytes` at the head of ring 0 as seen
/// from `end`'s shared memory, and publishes them.
fn raw_write(end: &End, bytes: &[u8]) {
    let r = Ring::new(&end.region, end.cap, 0);
    let head = r.head().load(Ordering::Acquire);
    r.put(head, bytes);
    r.head().store(head + bytes.len() as u64, Ordering::Release);
    notify(r.data_seq(), r.consumer_waiting());
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&[kind::PIPE, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

#[test]
fn messages_wrap_around_the_ring_intact() {
    let (tx, rx) = one_way();
    let sizes: Vec<usize> = (0..2000).map(|i| (i * 7919) % 3001).collect();
    let expect = sizes.clone();
    std::thread::scope(|s| {
        s.spawn(|| {
            for (i, n) in sizes.iter().enumerate() {
                let m: Vec<u8> = (0..*n).map(|j| (i + j) as u8).collect();
                tx.send(&m, &[], None).unwrap();
            }
        });
        for (i, n) in expect.iter().enumerate() {
            let m = recv_raw(&rx, ms(10_000)).unwrap().unwrap();
            assert_eq!(m.len(), *n);
            assert!(
                m.iter().enumerate().all(|(j, b)| *b == (i + j) as u8),
                "message {i}"
            );
        }
    });
}

#[test]
fn a_message_larger_than_the_ring_streams_through_it() {
    let (tx, rx) = one_way();
    let big: Vec<u8> = (0..CAPACITY * 5 + 123).map(|i| (i * 31) as u8).collect();
    std::thread::scope(|s| {
        s.spawn(|| tx.send(&big, &[], None).unwrap());
        assert_eq!(recv_raw(&rx, ms(10_000)).unwrap().unwrap(), big);
    });
}

#[test]
fn a_half_written_message_times_out_then_completes() {
    let (_tx, rx) = one_way();
    let f = frame(b"0123456789");
    raw_write(&rx, &f[..3]);
    assert_eq!(recv_raw(&rx, ms(10)).unwrap(), None);
    raw_write(&rx, &f[3..13]);
    assert_eq!(recv_raw(&rx, ms(10)).unwrap(), None);
    // Half received: the end refuses to move, as the rest would be lost.
    assert!(rx.to_move().unwrap_err().contains("middle of receiving"));
    raw_write(&rx, &f[13..]);
    assert_eq!(recv_raw(&rx, ms(1000)).unwrap().unwrap(), b"0123456789");
    assert!(rx.to_move().is_ok());
}

#[test]
fn a_writer_position_past_the_capacity_is_an_error_every_time() {
    let (_tx, rx) = one_way();
    let r = Ring::new(&rx.region, rx.cap, 0);
    r.head().store(CAPACITY as u64 + 1, Ordering::Release);
    for _ in 0..3 {
        let e = recv_raw(&rx, ms(100)).unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
    }
}

#[test]
fn a_bad_frame_header_is_an_error_not_a_panic() {
    for bad in [
        vec![1, 0, 0, 0, kind::PIPE, 0, 1, 0, 9],
        vec![1, 0, 0, 0, 99, 0, 0, 0, 9],
        vec![0xff, 0xff, 0xff, 0xff, kind::PIPE, 0, 0, 0],
    ] {
        let (_tx, rx) = one_way();
        raw_write(&rx, &bad);
        let e = recv_raw(&rx, ms(1000)).unwrap_err();
        assert!(matches!(e, Error::Wire(_)), "{e}");
    }
}

#[test]
fn missing_descriptors_are_an_error() {
    let (_tx, rx) = one_way();
    let mut f = frame(b"x");
    f[5] = 2;
    raw_write(&rx, &f);
    let e = recv_raw(&rx, ms(5000)).unwrap_err();
    assert!(e.to_string().contains("descriptors"), "{e}");
}

#[test]
fn a_reader_position_out_of_range_fails_a_send() {
    let (tx, _rx) = one_way();
    let big = vec![0u8; CAPACITY];
    tx.send(&big[..CAPACITY - 100], &[], None).unwrap();
    let r = Ring::new(&tx.region, tx.cap, 0);
    r.tail().store(u64::MAX / 2, Ordering::Release);
    let e = tx.send(&big, &[], None).unwrap_err();
    assert!(e.to_string().contains("corrupt"), "{e}");
}

#[test]
fn a_sender_blocked_on_a_full_ring_fails_when_the_receiver_goes() {
    let (tx, rx) = one_way();
    let big = vec![0u8; CAPACITY * 2];
    std::thread::scope(|s| {
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(rx);
        });
        let e = tx.send(&big, &[], None).unwrap_err();
        assert!(matches!(e, Error::Disconnected), "{e}");
    });
}

#[test]
fn a_receiver_sees_the_messages_sent_before_the_sender_went() {
    let (tx, rx) = one_way();
    tx.send(b"one", &[], None).unwrap();
    tx.send(b"two", &[], None).unwrap();
    drop(tx);
    assert_eq!(recv_raw(&rx, None).unwrap().unwrap(), b"one");
    assert_eq!(recv_raw(&rx, None).unwrap().unwrap(), b"two");
    assert!(matches!(recv_raw(&rx, None), Err(Error::Disconnected)));
}

#[test]
fn a_sender_that_goes_mid_message_is_disconnected_for_the_receiver() {
    let (tx, rx) = one_way();
    let f = frame(b"0123456789");
    raw_write(&rx, &f[..12]);
    drop(tx);
    let e = recv_raw(&rx, ms(5000)).unwrap_err();
    assert!(e.is_disconnected(), "{e}");
}

#[test]
fn attach_checks_the_shared_memory() {
    let (tx, _rx) = one_way();
    let sock = || sys::sock::socketpair().unwrap().0;
    let recv = Layout {
        tx: None,
        rx: Some(0),
    };
    // Wrong kind of end for this layout.
    let region = Region::from_fd(tx.region.fd().try_clone().unwrap()).unwrap();
    let e = End::attach(region, sock(), &recv, Role::Send).unwrap_err();
    assert!(e.to_string().contains("another kind of pipe end"), "{e}");
    // A ring that does not exist.
    let region = Region::from_fd(tx.region.fd().try_clone().unwrap()).unwrap();
    let e = End::attach(
        region,
        sock(),
        &Layout {
            tx: None,
            rx: Some(1),
        },
        Role::Recv,
    )
    .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    // Memory that is not a pipe.
    let region = Region::new(c"not-a-pipe", HEADER_BYTES + CAPACITY).unwrap();
    let e = End::attach(region, sock(), &recv, Role::Recv).unwrap_err();
    assert!(e.to_string().contains("no pipe header"), "{e}");
    // A header that lies about the size.
    let region = Region::new(c"lying-pipe", HEADER_BYTES + 4096).unwrap();
    region.u64_at(H_RINGS).store(2, Ordering::Relaxed);
    region.u64_at(H_CAPACITY).store(1 << 20, Ordering::Relaxed);
    region.u64_at(H_MAGIC).store(MAGIC, Ordering::Relaxed);
    let e = End::attach(region, sock(), &recv, Role::Recv).unwrap_err();
    assert!(e.to_string().contains("does not match"), "{e}");
    // Memory its sender could shrink under this process's feet.
    let e = Region::from_fd(sys::mem::memfd(c"unsealed", HEADER_BYTES + CAPACITY).unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("could shrink"), "{e}");
    // Not shared memory at all.
    assert!(Region::from_fd(sock()).is_err());
    // Too small to hold a header at all.
    let region = Region::new(c"tiny", 64).unwrap();
    let e = End::attach(region, sock(), &recv, Role::Recv).unwrap_err();
    assert!(e.to_string().contains("too small"), "{e}");
}

#[test]
fn descriptors_travel_with_their_message() {
    let (tx, rx) = one_way();
    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    tx.send(b"with fd", &[a.as_raw_fd()], None).unwrap();
    tx.send(b"without", &[], None).unwrap();
    drop(a);
    let (bytes, fds) = rx
        .recv(ms(1000), |b, fds| (b.to_vec(), fds))
        .unwrap()
        .unwrap();
    assert_eq!(bytes, b"with fd");
    assert_eq!(fds.len(), 1);
    let mut a2 = std::os::unix::net::UnixStream::from(fds.into_iter().next().unwrap());
    a2.write_all(b"!").unwrap();
    let mut got = [0u8];
    b.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"!");
    assert_eq!(recv_raw(&rx, ms(1000)).unwrap().unwrap(), b"without");
}

/// Another end on the same shared memory and socket, as a later life of a
/// process gets when the end is sent to it again.
fn reattach(end: &End, layout: Layout, role: Role) -> End {
    let region = Region::from_fd(end.region.fd().try_clone().unwrap()).unwrap();
    End::attach(region, end.sock.try_clone().unwrap(), &layout, role).unwrap()
}

#[test]
fn a_frame_cut_short_by_a_dead_sender_is_dropped() {
    let (tx, rx) = one_way();
    tx.send(b"before", &[], None).unwrap();
    // The sender starts a 100-byte frame and dies after 30 bytes.
    let f = frame(&[7u8; 100]);
    let r = Ring::new(&tx.region, tx.cap, 0);
    let head = r.head().load(Ordering::Acquire);
    r.tx_frame_end()
        .store(head + f.len() as u64, Ordering::Relaxed);
    raw_write(&rx, &f[..30]);
    let later = reattach(
        &tx,
        Layout {
            tx: Some(0),
            rx: None,
        },
        Role::Send,
    );
    drop(tx);
    assert_eq!(recv_raw(&rx, ms(1000)).unwrap().unwrap(), b"before");
    // Half a frame, and nobody finishing it yet.
    assert_eq!(recv_raw(&rx, ms(20)).unwrap(), None);
    // The next life of the sender sends on; the torn frame is dropped.
    later.send(b"after", &[], None).unwrap();
    later.send(b"and more", &[], None).unwrap();
    assert_eq!(recv_raw(&rx, ms(1000)).unwrap().unwrap(), b"after");
    assert_eq!(recv_raw(&rx, ms(1000)).unwrap().unwrap(), b"and more");
}

#[test]
fn a_header_cut_short_by_a_dead_sender_is_dropped() {
    let (tx, rx) = one_way();
    let f = frame(b"lost");
    let r = Ring::new(&tx.region, tx.cap, 0);
    r.tx_frame_end().store(f.len() as u64, Ordering::Relaxed);
    raw_write(&rx, &f[..3]);
    let later = reattach(
        &tx,
        Layout {
            tx: Some(0),
            rx: None,
        },
        Role::Send,
    );
    drop(tx);
    later.send(b"kept", &[], None).unwrap();
    assert_eq!(recv_raw(&rx, ms(1000)).unwrap().unwrap(), b"kept");
}

#[test]
fn descriptors_of_a_frame_cut_short_are_dropped() {
    let (tx, rx) = one_way();
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    use std::os::fd::AsRawFd;
    // A sender that sent its descriptor, then died inside the frame.
    let r = Ring::new(&tx.region, tx.cap, 0);
    let f = frame(&[1u8; 64]);
    sys::sock::send(
        tx.sock.as_fd(),
        &[IoSlice::new(&0u64.to_le_bytes())],
        &[a.as_raw_fd()],
    )
    .unwrap();
    r.tx_frame_end().store(f.len() as u64, Ordering::Relaxed);
    raw_write(&rx, &f[..20]);
    let later = reattach(
        &tx,
        Layout {
            tx: Some(0),
            rx: None,
        },
        Role::Send,
    );
    drop(tx);
    let (c, _d) = std::os::unix::net::UnixStream::pair().unwrap();
    later.send(b"mine", &[c.as_raw_fd()], None).unwrap();
    let (bytes, fds) = rx
        .recv(ms(1000), |b, fds| (b.to_vec(), fds))
        .unwrap()
        .unwrap();
    assert_eq!(bytes, b"mine");
    assert_eq!(fds.len(), 1);
    let got = std::os::unix::net::UnixStream::from(fds.into_iter().next().unwrap());
    assert_eq!(got.local_addr().unwrap().as_pathname(), None);
    // It is `c`'s socket, not `a`'s: their peers differ.
    use std::os::unix::fs::MetadataExt;
    let ino = |fd: BorrowedFd<'_>| {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .ino()
    };
    assert_eq!(ino(got.as_fd()), ino(c.as_fd()));
}

#[test]
fn a_receiver_that_died_mid_frame_is_followed_by_one_that_skips_it() {
    let (_tx, rx) = one_way();
    let f = frame(&[9u8; 1000]);
    raw_write(&rx, &f[..400]);
    // The first receiver reads part of the frame, then dies.
    assert_eq!(recv_raw(&rx, ms(10)).unwrap(), None);
    let later = reattach(
        &rx,
        Layout {
            tx: None,
            rx: Some(0),
        },
        Role::Recv,
    );
    drop(rx);
    raw_write(&later, &f[400..]);
    raw_write(&later, &frame(b"next"));
    assert_eq!(recv_raw(&later, ms(1000)).unwrap().unwrap(), b"next");
}

#[test]
fn a_timed_send_that_gives_up_mid_frame_is_never_delivered() {
    let (tx, rx) = one_way();
    // Longer than the ring, and nobody reads: the send gives up once the
    // ring is full, in the middle of the frame.
    let big = vec![3u8; CAPACITY * 2];
    assert!(!tx.send(&big, &[], ms(20)).unwrap());
    // The reader reads what was published and finds the frame cut short.
    assert_eq!(recv_raw(&rx, ms(20)).unwrap(), None);
    assert!(tx.send(b"after", &[], ms(5000)).unwrap());
    assert_eq!(recv_raw(&rx, ms(5000)).unwrap().unwrap(), b"after");
}

/// Waits (bounded) until `n` bytes are published and unread in ring 0.
fn wait_backlog(end: &End, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while end.backlog().0 != n {
        assert!(Instant::now() < deadline, "the backlog never reached {n}");
        std::thread::yield_now();
    }
}

#[test]
fn a_frame_whose_header_does_not_fit_in_a_full_ring_streams_intact() {
    let (tx, rx) = End::pair(Role::Send, Role::Recv, MIN_CAPACITY).unwrap();
    // Leave three bytes free: the next frame's header goes in part there,
    // in part after the wrap once the reader makes room.
    let first: Vec<u8> = (0..MIN_CAPACITY - wire::HEADER - 3)
        .map(|i| i as u8)
        .collect();
    assert!(tx.send(&first, &[], None).unwrap());
    let second: Vec<u8> = (0..100).map(|i| (i * 3) as u8).collect();
    std::thread::scope(|s| {
        s.spawn(|| assert!(tx.send(&second, &[], None).unwrap()));
        // The sender publishes the start of its frame (the ring is full),
        // then waits for room for the rest.
        wait_backlog(&rx, MIN_CAPACITY as u64);
        assert_eq!(recv_raw(&rx, ms(10_000)).unwrap().unwrap(), first);
        assert_eq!(recv_raw(&rx, ms(10_000)).unwrap().unwrap(), second);
    });
}

#[test]
fn messages_encoded_in_place_wrap_the_ring_end_intact() {
    // Frames of every length around the ring's end, encoded in place: the
    // reader keeps up, so each lands in the ring whole and is decoded from
    // a copy that wraps.
    let (tx, rx) = End::pair(Role::Send, Role::Recv, MIN_CAPACITY).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            for n in 0..3 * MIN_CAPACITY / 2 {
                let m: Vec<u8> = (0..n % 700).map(|j| (n + j) as u8).collect();
                tx.send(&m, &[], None).unwrap();
            }
        });
        for n in 0..3 * MIN_CAPACITY / 2 {
            let m = recv_raw(&rx, ms(10_000)).unwrap().unwrap();
            assert_eq!(m.len(), n % 700);
            assert!(m.iter().enumerate().all(|(j, b)| *b == (n + j) as u8));
        }
    });
}

#[test]
fn a_message_larger_than_the_ring_to_an_idle_reader_streams_intact() {
    // The reader waits until the ring is full of the frame's start (the
    // part encoded in place, published once the rest spilled), then reads.
    let (tx, rx) = End::pair(Role::Send, Role::Recv, MIN_CAPACITY).unwrap();
    let big: Vec<u8> = (0..5 * MIN_CAPACITY + 17).map(|i| (i * 7) as u8).collect();
    std::thread::scope(|s| {
        s.spawn(|| assert!(tx.send(&big, &[], None).unwrap()));
        wait_backlog(&rx, MIN_CAPACITY as u64);
        assert_eq!(recv_raw(&rx, ms(10_000)).unwrap().unwrap(), big);
    });
}

#[test]
fn a_try_send_larger_than_the_ring_is_an_error_even_when_full() {
    let (tx, rx) = End::pair(Role::Send, Role::Recv, MIN_CAPACITY).unwrap();
    let fill = vec![1u8; MIN_CAPACITY - wire::HEADER];
    assert!(tx.send(&fill, &[], None).unwrap());
    let try_send = |bytes: &[u8]| {
        let encode = |w: &mut FrameWriter<'_>| {
            w.write(bytes);
            Ok(Vec::new())
        };
        tx.send_with(Some(Instant::now()), true, encode, |_| {})
    };
    // Full: a small one is refused for now, a large one for good.
    assert!(!try_send(&[2; 10]).unwrap());
    assert!(matches!(
        try_send(&vec![3; 2 * MIN_CAPACITY]),
        Err(Error::Usage(_))
    ));
    assert_eq!(recv_raw(&rx, ms(10_000)).unwrap().unwrap(), fill);
    assert!(try_send(&[2; 10]).unwrap());
    assert_eq!(recv_raw(&rx, ms(10_000)).unwrap().unwrap(), vec![2; 10]);
}

#[test]
fn a_receive_that_cannot_wait_raises_no_flag_for_the_sender() {
    let (tx, rx) = one_way();
    let r = Ring::new(&rx.region, rx.cap, 0);
    // Polls that find nothing: none leaves the flag that would make the
    // next send wake a sleeper that is not there.
    for _ in 0..3 {
        assert_eq!(recv_raw(&rx, Some(Instant::now())).unwrap(), None);
        assert_eq!(r.consumer_waiting().load(Ordering::SeqCst), 0);
    }
    // A receive that does wait raises it while it sleeps, and the send
    // that wakes it lowers it.
    let sender = std::thread::spawn(move || {
        let r = Ring::new(&tx.region, tx.cap, 0);
        let until = Instant::now() + Duration::from_secs(60);
        while r.consumer_waiting().load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < until, "the receiver never slept");
            std::thread::yield_now();
        }
        tx.send(b"x", &[], None).unwrap();
        assert_eq!(r.consumer_waiting().load(Ordering::SeqCst), 0);
        tx
    });
    assert_eq!(recv_raw(&rx, ms(60_000)).unwrap().unwrap(), b"x");
    drop(sender.join().unwrap());
}

#[test]
fn a_peer_found_gone_stays_gone_for_every_later_receive() {
    let (tx, rx) = one_way();
    drop(tx);
    assert!(matches!(
        recv_raw(&rx, ms(60_000)),
        Err(Error::Disconnected)
    ));
    // At once after, within the time in which the check is not repeated.
    for _ in 0..3 {
        assert!(matches!(
            recv_raw(&rx, Some(Instant::now())),
            Err(Error::Disconnected)
        ));
    }
}
