use super::*;
use std::io::Write as _;
use std::os::unix::net::UnixStream;

fn pair() -> (Reader, Writer, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    let raw = b.try_clone().unwrap();
    let (r, w) = split(OwnedFd::from(a)).unwrap();
    let _ = w;
    let (_, w2) = split(OwnedFd::from(b)).unwrap();
    (r, w2, raw)
}

fn soon() -> Option<Instant> {
    Some(Instant::now() + std::time::Duration::from_secs(2))
}

#[test]
fn frames_round_trip_in_order() {
    let (mut r, w, _raw) = pair();
    for i in 0..100u32 {
        w.send(kind::TELL, &i.to_le_bytes(), &[]).unwrap();
    }
    for i in 0..100u32 {
        let f = r.read(soon()).unwrap().unwrap();
        assert_eq!(f.kind, kind::TELL);
        assert_eq!(f.payload, i.to_le_bytes());
    }
}

#[test]
fn large_frame_round_trips() {
    let (mut r, w, _raw) = pair();
    let big: Vec<u8> = (0..8 << 20).map(|i| i as u8).collect();
    let big2 = big.clone();
    let t = std::thread::spawn(move || w.send(kind::TELL, &big2, &[]).unwrap());
    let f = r.read(soon()).unwrap().unwrap();
    t.join().unwrap();
    assert_eq!(f.payload, big);
}

#[test]
fn timeout_is_none_and_partial_frames_resume() {
    let (mut r, _w, mut raw) = pair();
    assert!(r
        .read(Some(Instant::now() + std::time::Duration::from_millis(10)))
        .unwrap()
        .is_none());
    // Header and half a payload, then the rest.
    raw.write_all(&[4, 0, 0, 0, kind::TELL, 0, 0, 0, 1, 2])
        .unwrap();
    assert!(r
        .read(Some(Instant::now() + std::time::Duration::from_millis(10)))
        .unwrap()
        .is_none());
    raw.write_all(&[3, 4]).unwrap();
    assert_eq!(r.read(soon()).unwrap().unwrap().payload, [1, 2, 3, 4]);
}

#[test]
fn oversize_frame_is_an_error() {
    let (mut r, _w, mut raw) = pair();
    r.set_max_frame(1024);
    raw.write_all(&[0, 0, 1, 0, kind::TELL, 0, 0, 0]).unwrap();
    let e = r.read(soon()).unwrap_err();
    assert!(e.to_string().contains("over the 1024 byte limit"), "{e}");
}

#[test]
fn garbage_header_is_an_error() {
    let (mut r, _w, mut raw) = pair();
    raw.write_all(&[1, 0, 0, 0, 9, 0, 0xff, 0xee, 0]).unwrap();
    let e = r.read(soon()).unwrap_err();
    assert!(e.to_string().contains("reserved bytes"), "{e}");
}

#[test]
fn truncated_frame_is_an_error_not_a_hang() {
    let (mut r, w, mut raw) = pair();
    raw.write_all(&[100, 0, 0, 0, kind::TELL, 0, 0, 0, 1, 2, 3])
        .unwrap();
    drop(raw);
    drop(w);
    let e = r.read(soon()).unwrap_err();
    assert!(
        e.to_string().contains("in the middle of a 100 byte frame"),
        "{e}"
    );
}

#[test]
fn missing_descriptors_are_an_error() {
    let (mut r, _w, mut raw) = pair();
    raw.write_all(&[0, 0, 0, 0, kind::TELL, 2, 0, 0]).unwrap();
    let e = r.read(soon()).unwrap_err();
    assert!(e.to_string().contains("announced 2 descriptors"), "{e}");
}

#[test]
fn descriptors_travel_with_their_frame() {
    let (mut r, w, _raw) = pair();
    let (x, _y) = UnixStream::pair().unwrap();
    w.send(kind::TELL, b"a", &[x.as_raw_fd()]).unwrap();
    w.send(kind::TELL, b"b", &[]).unwrap();
    let f = r.read(soon()).unwrap().unwrap();
    assert_eq!(f.fds.len(), 1);
    let f = r.read(soon()).unwrap().unwrap();
    assert_eq!(f.fds.len(), 0);
}

#[test]
fn end_of_file_is_disconnected() {
    let (mut r, w, raw) = pair();
    w.send(kind::TELL, b"last", &[]).unwrap();
    drop(w);
    drop(raw);
    assert_eq!(r.read(soon()).unwrap().unwrap().payload, b"last");
    assert!(matches!(r.read(soon()), Err(Error::Disconnected)));
}

#[test]
fn messages_check_their_type() {
    let enc = encode_message("hi").unwrap();
    assert_eq!(decode_message::<String>(&enc.bytes, vec![]).unwrap(), "hi");
    let e = decode_message::<u64>(&enc.bytes, vec![]).unwrap_err();
    assert!(matches!(e, Error::WrongType { .. }), "{e}");
    assert!(e.to_string().contains("String"), "{e}");
    let enc = encode_message(&[1u8, 2, 3][..]).unwrap();
    assert_eq!(
        decode_message::<Vec<u8>>(&enc.bytes, vec![]).unwrap(),
        [1, 2, 3]
    );
}

#[test]
fn arbitrary_bytes_never_panic_the_decoders() {
    // A small deterministic generator stands in for a fuzzer here; the
    // fuzz target in skprocess/fuzz covers this more widely.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in 0..400usize {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = decode::<crate::error::Failure>(&bytes, vec![]);
        fuzz_frames(&bytes);
    }
}

#[test]
fn flatten_names_the_way_out() {
    #[derive(Serialize)]
    struct Inner {
        a: u8,
    }
    #[derive(Serialize)]
    struct Outer {
        #[serde(flatten)]
        inner: Inner,
    }
    let e = encode(&Outer {
        inner: Inner { a: 1 },
    })
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("Outer") && text.contains("skprocess::Json"),
        "{text}"
    );
}

#[test]
fn a_stepped_read_comes_back_empty_then_reads_whole_frames() {
    let (mut r, w, mut raw) = pair();
    r.set_step(std::time::Duration::from_millis(5)).unwrap();
    assert!(r.is_stepped());
    // Nothing sent: the receive's own timeout brings it back.
    assert!(r.read_step().unwrap().is_none());
    // Half a frame: kept, and finished by the next read.
    let mut bytes = vec![4, 0, 0, 0, kind::TELL, 0, 0, 0];
    bytes.extend(7u32.to_le_bytes());
    raw.write_all(&bytes[..10]).unwrap();
    assert!(r.read_step().unwrap().is_none());
    raw.write_all(&bytes[10..]).unwrap();
    assert_eq!(r.read_step().unwrap().unwrap().payload, 7u32.to_le_bytes());
    // Blocking and deadline reads still work on a stepped socket.
    w.send(kind::TELL, b"x", &[]).unwrap();
    assert_eq!(r.read(None).unwrap().unwrap().payload, b"x");
    assert!(r.read(Some(Instant::now())).unwrap().is_none());
    drop((w, raw));
    assert!(matches!(r.read_step(), Err(Error::Disconnected)));
}
