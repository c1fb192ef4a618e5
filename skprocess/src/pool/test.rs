use super::batch::{self, ItemsHead, Parts};
use crate::proto::Plan;
use crate::sys;
use std::os::fd::{AsRawFd, OwnedFd};

fn memfd(len: usize) -> OwnedFd {
    sys::mem::memfd(c"skprocess-test", len).unwrap()
}

fn file_len(fd: &OwnedFd) -> u64 {
    sys::mem::file_len(fd).unwrap()
}

#[test]
fn parts_round_trip_with_their_descriptors() {
    let mut bytes = b"prefix".to_vec();
    batch::push_part(&mut bytes, 7, b"first", 1);
    batch::push_part(&mut bytes, 0, b"", 0);
    batch::push_part(&mut bytes, 2, b"third", 2);
    let fds = vec![memfd(8), memfd(16), memfd(24)];
    let parts: Vec<_> = Parts::new(&bytes[6..], fds)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(parts.len(), 3);
    assert_eq!((parts[0].tag, parts[0].bytes), (7, &b"first"[..]));
    assert_eq!(parts[0].fds.iter().map(file_len).collect::<Vec<_>>(), [8]);
    assert_eq!(
        (parts[1].tag, parts[1].bytes, parts[1].fds.len()),
        (0, &b""[..], 0)
    );
    assert_eq!(
        parts[2].fds.iter().map(file_len).collect::<Vec<_>>(),
        [16, 24]
    );
}

#[test]
fn malformed_parts_are_errors() {
    let mut good = Vec::new();
    batch::push_part(&mut good, 0, b"hello", 1);
    // Missing descriptor.
    let r: Vec<_> = Parts::new(&good, vec![]).collect();
    assert!(
        matches!(&r[..], [Err(crate::Error::Wire(m))] if m.contains("descriptors")),
        "{r:?}"
    );
    // Every truncation.
    for cut in 1..good.len() {
        let r: Vec<_> = Parts::new(&good[..cut], vec![memfd(8)]).collect();
        assert_eq!(r.len(), 1, "stops at the first bad part");
        assert!(r[0].is_err(), "cut at {cut}");
    }
    // Every single-byte corruption of a valid batch is handled: no panic,
    // and the reader always ends.
    let head = ItemsHead {
        type_id: "t".into(),
        plan: Plan {
            runs: None,
            timed: [true; 4],
            attempt: 1,
            lives: 1,
            stop: false,
        },
        attempts: vec![1, 1],
    };
    let mut valid = batch::items_prefix(&head).unwrap();
    batch::push_part(&mut valid, 0, b"one", 0);
    batch::push_part(&mut valid, 0, b"two", 1);
    for at in 0..valid.len() {
        for v in [0u8, 1, 2, 0x7f, 0x80, 0xff] {
            let mut bad = valid.clone();
            bad[at] = v;
            if let Ok((_, parts)) = batch::read_items(&bad) {
                assert!(Parts::new(parts, vec![memfd(8)]).count() <= parts.len() / 6 + 1);
            }
            let _ = batch::split_u64(&bad);
        }
    }
}

#[test]
fn items_head_round_trips() {
    let head = ItemsHead {
        type_id: "app::Job@src/main.rs:3:10".into(),
        plan: Plan {
            runs: Some(3),
            timed: [false, true, false, false],
            attempt: 1,
            lives: 2,
            stop: false,
        },
        attempts: vec![1, 2, 1],
    };
    let mut payload = batch::items_prefix(&head).unwrap();
    batch::push_part(&mut payload, 0, b"abc", 0);
    let (back, rest) = batch::read_items(&payload).unwrap();
    assert_eq!(back.type_id, head.type_id);
    assert_eq!(back.attempts, [1, 2, 1]);
    assert_eq!(back.plan.runs, Some(3));
    assert_eq!(
        Parts::new(rest, vec![]).next().unwrap().unwrap().bytes,
        b"abc"
    );
    assert!(batch::read_items(&payload[..3]).is_err());
    assert!(batch::read_items(&[200, 0, 0, 0, 1]).is_err());
}

fn encode_args<T: serde::Serialize>(args: &[T]) -> (Vec<u8>, Vec<OwnedFd>) {
    let mut input = Vec::new();
    let mut fds = Vec::new();
    let mut scratch = Vec::new();
    for a in args {
        let f = batch::encode_reusing(&mut scratch, a).unwrap();
        batch::push_part(&mut input, 0, &scratch, f.len());
        fds.extend(f);
    }
    (input, fds)
}

fn results(out: &[u8]) -> Vec<(u8, Vec<u8>)> {
    Parts::new(out, vec![])
        .map(|p| p.unwrap())
        .map(|p| (p.tag, p.bytes.to_vec()))
        .collect()
}

#[test]
fn the_trampoline_calls_the_function_on_each_argument() {
    let (input, fds) = encode_args(&[1u64, 2, 300]);
    let mut out = Vec::new();
    let mut out_fds = Vec::new();
    let double = |x: u64| x * 2;
    fn call<F: Fn(u64) -> u64 + Copy>(
        _: F,
        input: &[u8],
        fds: Vec<OwnedFd>,
        out: &mut Vec<u8>,
        out_fds: &mut Vec<OwnedFd>,
    ) {
        batch::call_batch::<u64, u64, F>(input, fds, out, out_fds)
    }
    call(double, &input, fds, &mut out, &mut out_fds);
    let r = results(&out);
    let values: Vec<u64> = r
        .iter()
        .map(|(tag, b)| {
            assert_eq!(*tag, batch::TAG_OK);
            crate::wire::decode(b, vec![]).unwrap()
        })
        .collect();
    assert_eq!(values, [2, 4, 600]);
    assert!(out_fds.is_empty());
}

#[test]
fn the_trampoline_isolates_panics_and_bad_arguments() {
    let mut input = Vec::new();
    let mut scratch = Vec::new();
    batch::encode_reusing(&mut scratch, &5u64).unwrap();
    batch::push_part(&mut input, 0, &scratch, 0);
    // Not a u64: a varint that never ends.
    batch::push_part(&mut input, 0, &[0xff; 12], 0);
    batch::encode_reusing(&mut scratch, &0u64).unwrap();
    batch::push_part(&mut input, 0, &scratch, 0);
    let mut out = Vec::new();
    let inverse = |x: u64| 100 / x;
    fn call<F: Fn(u64) -> u64 + Copy>(_: F, input: &[u8], out: &mut Vec<u8>) {
        batch::call_batch::<u64, u64, F>(input, vec![], out, &mut Vec::new())
    }
    call(inverse, &input, &mut out);
    let r = results(&out);
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].0, batch::TAG_OK);
    assert_eq!(r[1].0, batch::TAG_CODEC);
    assert_eq!(r[2].0, batch::TAG_PANICKED);
    assert!(
        String::from_utf8_lossy(&r[2].1).contains("divide by zero"),
        "{:?}",
        r[2]
    );
}

/// A value that owns a descriptor, serialized the way `Share` is.
struct Fd(OwnedFd);

impl serde::Serialize for Fd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use std::os::fd::AsFd;
        let i = crate::wire::push_fd(self.0.as_fd(), "Fd").map_err(serde::ser::Error::custom)?;
        s.serialize_u32(i)
    }
}

impl<'de> serde::Deserialize<'de> for Fd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let i = u32::deserialize(d)?;
        crate::wire::take_fd(i)
            .map(Fd)
            .map_err(serde::de::Error::custom)
    }
}

#[test]
fn items_and_results_carry_descriptors_through_the_pool() {
    let pool = super::Pool::new(2).unwrap();
    // More descriptors than one frame can carry, so batches split on them.
    let items: Vec<Fd> = (1..=300).map(|i| Fd(memfd(i))).collect();
    let out = pool
        .map_fn(|f: Fd| (sys::mem::file_len(&f.0).unwrap(), f), items)
        .unwrap();
    assert_eq!(out.len(), 300);
    for (i, (len, fd)) in out.iter().enumerate() {
        assert_eq!(*len, i as u64 + 1);
        assert_eq!(file_len(&fd.0), i as u64 + 1);
    }
}

#[test]
fn results_with_descriptors_carry_them() {
    let (input, fds) = encode_args(&[Fd(memfd(40)), Fd(memfd(80))]);
    assert_eq!(fds.len(), 2);
    let parts: Vec<_> = Parts::new(&input, fds).map(|p| p.unwrap()).collect();
    assert_eq!(
        parts.iter().map(|p| p.fds.len()).collect::<Vec<_>>(),
        [1, 1]
    );
    assert_eq!(file_len(&parts[1].fds[0]), 80);
    assert!(parts[0].fds[0].as_raw_fd() >= 0);
}

#[test]
fn an_entry_offset_names_the_same_function() {
    let offset = sys::code::calls_entry_offset(batch::call_batch::<u64, u64, fn(u64) -> u64>);
    assert_eq!(
        sys::code::calls_entry_offset(batch::call_batch::<u64, u64, fn(u64) -> u64>),
        offset
    );
    assert_ne!(
        sys::code::calls_entry_offset(batch::call_batch::<u32, u64, fn(u32) -> u64>),
        offset
    );
    assert!(sys::code::entry_at(offset).is_some());
}

#[test]
fn a_task_never_holds_more_descriptors_than_a_frame_can_carry() {
    use super::source::{Args, Budget, Items, Source, Step};
    use super::task::Task;
    use std::collections::VecDeque;

    let job = calls_job("test");
    let mut early = VecDeque::new();
    let budget = Budget {
        items: 1000,
        fds_per_task: usize::MAX,
        fds_room: usize::MAX,
        force: false,
    };
    let mut counts = vec![];
    let mut args = Args::new((0..300).map(|_| Fd(memfd(8))), 0);
    while let Step::Task(task, n) = args.next_task(&job, budget, &mut early) {
        let Task::Calls(c) = &task else {
            panic!("calls")
        };
        assert_eq!(c.payload.fds.len(), n);
        counts.push((c.start, n));
    }
    assert_eq!(
        counts,
        [
            (0, sys::sock::MAX_FDS),
            (sys::sock::MAX_FDS, 300 - sys::sock::MAX_FDS)
        ]
    );

    let mut counts = vec![];
    let mut items = Items::new((0..300).map(|_| Fd(memfd(8))));
    while let Step::Task(task, n) = items.next_task(&job, budget, &mut early) {
        let Task::Items { units, .. } = &task else {
            panic!("items")
        };
        counts.push((units[0].index, n));
    }
    assert_eq!(
        counts,
        [
            (0, sys::sock::MAX_FDS),
            (sys::sock::MAX_FDS, 300 - sys::sock::MAX_FDS)
        ]
    );
    assert!(early.is_empty());
}

#[test]
fn a_worker_answering_the_wrong_number_of_results_is_an_error() {
    use super::decode::results;
    let job = calls_job("map_fn(test)");
    let mut payload = 0u64.to_le_bytes().to_vec();
    let mut scratch = Vec::new();
    batch::encode_reusing(&mut scratch, &7u32).unwrap();
    batch::push_part(&mut payload, batch::TAG_OK, &scratch, 0);
    batch::push_part(&mut payload, batch::TAG_PANICKED, b"boom", 0);
    let enc = |bytes: &[u8]| crate::wire::Encoded {
        bytes: bytes.to_vec(),
        fds: vec![],
    };

    let r = results::<u32>(&job, 10, 2, enc(&payload)).unwrap();
    assert_eq!(*r[0].as_ref().unwrap(), 7);
    let e = r[1].as_ref().unwrap_err();
    assert!(e.is_panic() && e.to_string().contains("item #11"), "{e}");

    for (count, bytes) in [
        (3, &payload[..]),
        (1, &payload[..]),
        (2, &payload[..payload.len() - 1]),
        (2, &payload[..4]),
    ] {
        assert!(
            results::<u32>(&job, 0, count, enc(bytes)).is_err(),
            "{count} {}",
            bytes.len()
        );
    }
    // A result that does not decode as the asked type fails that item only.
    let r = results::<String>(&job, 0, 2, enc(&payload)).unwrap();
    assert!(r[0].is_err());
}

/// Serializes as a `u64` below 5 and as a string from 5 on: the arguments
/// go in the fixed layout until the first that has none.
struct SmallOrText(u64);

impl serde::Serialize for SmallOrText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 < 5 {
            s.serialize_u64(self.0)
        } else {
            s.serialize_str(&self.0.to_string())
        }
    }
}

/// A job of calls named `name`, whose replies nobody reads.
fn calls_job(name: &str) -> std::sync::Arc<super::task::Job> {
    use super::task::{Job, JobKind};
    let (replies, _rx) = crossbeam_channel::unbounded();
    std::sync::Arc::new(Job {
        name: name.into(),
        kind: JobKind::Calls,
        replies,
        cancelled: Default::default(),
        aborted: Default::default(),
        remote: false,
    })
}

#[test]
fn plain_arguments_travel_in_the_fixed_layout_until_one_does_not_fit() {
    use super::source::{Args, Budget, Source, Step};
    use super::task::Task;
    use std::collections::VecDeque;

    let job = calls_job("test");
    let mut early = VecDeque::new();
    let budget = Budget {
        items: 1000,
        fds_per_task: usize::MAX,
        fds_room: usize::MAX,
        force: false,
    };
    let mut args = Args::new((0..8).map(SmallOrText), 0);
    let mut tasks = vec![];
    while let Step::Task(task, n) = args.next_task(&job, budget, &mut early) {
        let Task::Calls(c) = &task else {
            panic!("calls")
        };
        let parts = Parts::new(&c.payload.bytes[8..], Vec::new());
        tasks.push((c.start, n, parts.next_is_fixed(), parts.count()));
    }
    // One fixed part for 0..5, then one postcard part per argument.
    assert_eq!(tasks, [(0, 5, true, 1), (5, 3, false, 3)]);
    assert!(early.is_empty());
}

/// Runs `f` in a batch the way a worker does and decodes the results the
/// way the parent does.
fn run_batch<F: Fn(u64) -> R + Copy, R: serde::Serialize + serde::de::DeserializeOwned>(
    _: F,
    payload: Vec<u8>,
    count: usize,
) -> (bool, Vec<crate::Result<R>>) {
    let mut out = vec![0u8; 8];
    let mut fds = Vec::new();
    batch::call_batch::<u64, R, F>(&payload, Vec::new(), &mut out, &mut fds);
    let fixed = Parts::new(&out[8..], Vec::new()).next_is_fixed();
    let enc = crate::wire::Encoded {
        bytes: out,
        fds: Vec::new(),
    };
    let results = super::decode::results::<R>(&calls_job("test"), 10, count, enc).unwrap();
    (fixed, results)
}

fn fixed_payload(values: &[u64]) -> Vec<u8> {
    let mut p = Vec::new();
    let start = batch::begin_fixed(&mut p);
    for v in values {
        p.extend_from_slice(&v.to_le_bytes());
    }
    batch::end_fixed(&mut p, start, values.len(), 8);
    p
}

#[test]
fn results_come_back_fixed_when_they_can_and_one_by_one_otherwise() {
    let args = fixed_payload(&[1, 2, 3]);
    let (fixed, r) = run_batch(|x: u64| (x * 2, x as u8), args.clone(), 3);
    assert!(fixed);
    let r: Vec<_> = r.into_iter().map(Result::unwrap).collect();
    assert_eq!(r, [(2, 1), (4, 2), (6, 3)]);

    let (fixed, r) = run_batch(|x: u64| x.to_string(), args.clone(), 3);
    assert!(!fixed);
    let r: Vec<_> = r.into_iter().map(Result::unwrap).collect();
    assert_eq!(r, ["1", "2", "3"]);

    let (fixed, r) = run_batch(
        |x: u64| {
            assert_ne!(x, 2, "two is out");
            x
        },
        args,
        3,
    );
    assert!(!fixed);
    assert_eq!(*r[0].as_ref().unwrap(), 1);
    let e = r[1].as_ref().unwrap_err();
    assert!(e.is_panic() && e.to_string().contains("item #11"), "{e}");
    assert_eq!(*r[2].as_ref().unwrap(), 3);

    // Fixed bytes that do not decode as the argument are that call's
    // error, and a part that does not hold what its head says is the
    // batch's.
    let mut bad = Vec::new();
    let start = batch::begin_fixed(&mut bad);
    bad.extend_from_slice(&[1, 2]);
    batch::end_fixed(&mut bad, start, 1, 2);
    let (_, r) = run_batch(|x: u64| x, bad, 1);
    assert!(r[0].as_ref().unwrap_err().to_string().contains("decode"));
    let mut out = vec![0u8; 8];
    let start = batch::begin_fixed(&mut out);
    batch::end_fixed(&mut out, start, 3, 8);
    let enc = crate::wire::Encoded {
        bytes: out,
        fds: Vec::new(),
    };
    assert!(super::decode::results::<u64>(&calls_job("test"), 0, 3, enc).is_err());
}
