//! SharedSlice<T> and SharedSliceMut<T> (API.md §13): read in place by
//! other processes through a shared mapping, exact under concurrent
//! increments from many processes, a lock that survives a holder killed with
//! it, forged descriptors refused, nothing left behind.

#[path = "support/forge.rs"]
mod forge;
mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::time::Duration;
use support::{assert_no_shm_files, finish, watchdog, DEADLINE};

// ---------------------------------------------------------------------------
// Processes used below.

/// Sums its part of the shared data where it lies, and records the
/// mapping the data is read from.
#[derive(Process, Serialize, Deserialize, Clone)]
#[process(runs = 1)]
struct PartSum {
    data: SharedSlice<f64>,
    part: usize,
    parts: usize,
    sum: f64,
    mapping: String,
}

impl Process for PartSum {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let s: &[f64] = &self.data;
        let n = s.len().div_ceil(self.parts);
        let lo = (self.part * n).min(s.len());
        let hi = (lo + n).min(s.len());
        self.sum = s[lo..hi].iter().sum();
        self.mapping = forge::mapping_of(s.as_ptr() as usize).unwrap_or_default();
        Ok(())
    }
}

/// Adds one to every element `times` times, one lock each, and one to its
/// own element each time.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Incrementer {
    out: SharedSliceMut<u64>,
    me: usize,
    times: u64,
}

impl Process for Incrementer {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        for _ in 0..self.times {
            let mut g = self.out.lock()?;
            for e in g.iter_mut().skip(4) {
                *e += 1;
            }
            g[self.me] += 1;
        }
        Ok(())
    }
}

/// Takes the slice's lock, writes, tells "holding", and keeps the lock until
/// it is killed.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Holder {
    out: SharedSliceMut<u64>,
}

impl Process for Holder {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let mut g = self.out.lock()?;
        g[0] = 42;
        ctx.tell("holding")?;
        let _: Option<String> = ctx.listen(Duration::from_secs(120))?;
        Ok(())
    }
}

/// Counts descriptors and slice mappings, makes, sends and drops many
/// slices, and counts again.
#[derive(Process, Serialize, Deserialize, Default)]
#[process(runs = 1)]
struct LeakCheck {
    before: (usize, usize, usize),
    after: (usize, usize, usize),
}

fn counts() -> (usize, usize, usize) {
    (
        support::open_fds(),
        forge::fds_named("skprocess-slice"),
        forge::mappings_named("skprocess-slice"),
    )
}

impl Process for LeakCheck {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        support::open_spawn_resources();
        self.before = counts();
        for i in 0..200usize {
            let data: Vec<f64> = (0..1000 + i).map(|x| x as f64).collect();
            let s = SharedSlice::from_slice(&data)?;
            let c = s.clone();
            assert_eq!(c.len(), data.len());
            let m = SharedSliceMut::<u32>::zeroed(100 + i)?;
            m.lock()?[i] = 1;
            if i % 50 == 0 {
                let mut h = PartSum {
                    data: s.clone(),
                    part: 0,
                    parts: 1,
                    sum: 0.0,
                    mapping: String::new(),
                }
                .start()?;
                assert_eq!(finish(&mut h)?.sum, data.iter().sum::<f64>());
                let mut h = Incrementer {
                    out: SharedSliceMut::<u64>::zeroed(8)?,
                    me: 0,
                    times: 3,
                }
                .start()?;
                assert_eq!(finish(&mut h)?.out.to_vec()?[0], 3);
            }
        }
        self.after = counts();
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Tests.

#[test]
fn api_example_in_one_process() -> skprocess::Result<()> {
    let v: Vec<f64> = (0..1000).map(f64::from).collect();
    let data: SharedSlice<f64> = SharedSlice::from_slice(&v)?;
    let s: &[f64] = &data;
    assert_eq!(s, &v[..]);
    let out: SharedSliceMut<u64> = SharedSliceMut::zeroed(1 << 20)?;
    out.lock()?[7] = 1;
    let back: Vec<u64> = out.to_vec()?;
    assert_eq!(back.len(), 1 << 20);
    assert_eq!(back.iter().sum::<u64>(), 1);
    assert_eq!(back[7], 1);
    assert_eq!(out.len(), 1 << 20);
    assert!(format!("{data:?}").contains("len: 1000"));
    // A guard is exclusive: a second lock from this thread is an error,
    // from another thread it waits.
    let g = out.lock()?;
    assert!(out.lock().is_err());
    let other = out.clone();
    let waited = std::thread::spawn(move || {
        other
            .lock_timeout(Duration::from_millis(30))
            .map(|g| g.is_none())
    })
    .join()
    .expect("thread");
    assert!(waited?);
    drop(g);
    Ok(())
}

#[test]
fn a_shared_slice_is_read_in_place_by_pool_items() -> skprocess::Result<()> {
    watchdog();
    let v: Vec<f64> = (0..1_000_000).map(|i| (i % 1000) as f64).collect();
    let data = SharedSlice::from_slice(&v)?;
    let pool = Pool::new(2)?;
    let parts = 8;
    let items: Vec<PartSum> = (0..parts)
        .map(|part| PartSum {
            data: data.clone(),
            part,
            parts,
            sum: 0.0,
            mapping: String::new(),
        })
        .collect();
    let done = pool.map(items)?;
    let total: f64 = done.iter().map(|p| p.sum).sum();
    assert_eq!(total, v.iter().sum::<f64>());
    for p in &done {
        // `r--s`: read-only and shared; the file is the slice's memfd.
        let perms = p.mapping.split_whitespace().nth(1).unwrap_or("");
        assert_eq!(perms, "r--s", "{}", p.mapping);
        assert!(
            p.mapping.contains("/memfd:skprocess-slice"),
            "{}",
            p.mapping
        );
    }
    // The parent reads the same memory in place too.
    let here = forge::mapping_of(data.as_ptr() as usize).unwrap_or_default();
    assert!(here.contains("/memfd:skprocess-slice"), "{here}");
    Ok(())
}

#[test]
fn four_processes_incrementing_a_shared_slice_count_exactly() -> skprocess::Result<()> {
    watchdog();
    let out = SharedSliceMut::<u64>::zeroed(64)?;
    let times = 2_000;
    let mut hs: Vec<_> = (0..4)
        .map(|me| {
            Incrementer {
                out: out.clone(),
                me,
                times,
            }
            .start()
        })
        .collect::<skprocess::Result<_>>()?;
    for h in &mut hs {
        finish(h)?;
    }
    let v = out.to_vec()?;
    assert_eq!(&v[..4], &[times; 4]);
    assert!(v[4..].iter().all(|&e| e == 4 * times), "{v:?}");
    Ok(())
}

#[test]
fn a_holder_killed_with_the_lock_hands_it_over() -> skprocess::Result<()> {
    watchdog();
    let out = SharedSliceMut::<u64>::zeroed(4)?;
    let mut h = Holder { out: out.clone() }.start()?;
    assert_eq!(h.listen::<String>(DEADLINE)?.as_deref(), Some("holding"));
    assert!(
        out.lock_timeout(Duration::ZERO)?.is_none(),
        "the child holds it"
    );
    h.kill()?;
    assert!(finish(&mut h).err().expect("killed").is_killed());
    let g = out.lock_timeout(DEADLINE)?.expect("the lock is recovered");
    assert!(g.recovered());
    // Changes are made in place: what the holder wrote stays.
    assert_eq!(g[0], 42);
    drop(g);
    out.lock()?[1] = 1;
    assert_eq!(out.to_vec()?, [42, 1, 0, 0]);
    Ok(())
}

/// A plain-data element type of the user's own.
#[derive(
    Clone, Copy, Debug, PartialEq, skprocess::bytemuck::Pod, skprocess::bytemuck::Zeroable,
)]
#[bytemuck(crate = "skprocess::bytemuck")]
#[repr(C)]
struct Point {
    x: f32,
    y: f32,
    tag: u32,
    weight: u32,
}

/// Reads the points in place and moves each one in the mutable slice.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Mover {
    from: SharedSlice<Point>,
    to: SharedSliceMut<Point>,
}

impl Process for Mover {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        let mut to = self.to.lock()?;
        for (t, p) in to.iter_mut().zip(self.from.iter()) {
            *t = Point { x: p.x + 1.0, ..*p };
        }
        Ok(())
    }
}

#[test]
fn slices_of_a_derived_plain_data_type_cross_processes() -> skprocess::Result<()> {
    let points: Vec<Point> = (0..100u32)
        .map(|i| Point {
            x: i as f32,
            y: -(i as f32),
            tag: i,
            weight: 2 * i,
        })
        .collect();
    let from = SharedSlice::from_slice(&points)?;
    let to = SharedSliceMut::zeroed(points.len())?;
    let mut h = Mover {
        from,
        to: to.clone(),
    }
    .start()?;
    finish(&mut h)?;
    let moved = to.to_vec()?;
    for (m, p) in moved.iter().zip(&points) {
        assert_eq!(*m, Point { x: p.x + 1.0, ..*p });
    }
    Ok(())
}

#[test]
fn forged_or_truncated_slice_descriptors_are_errors() -> skprocess::Result<()> {
    use skprocess::__bench::{handle_fd, shared_slice_from_fd, shared_slice_mut_from_fd};
    let ro = SharedSlice::from_slice(&[1u32, 2, 3])?;
    let rw = SharedSliceMut::<u32>::zeroed(3)?;
    assert_eq!(&*shared_slice_from_fd::<u32>(handle_fd(&ro)?)?, &[1, 2, 3]);
    assert_eq!(shared_slice_mut_from_fd::<u32>(handle_fd(&rw)?)?.len(), 3);

    // A header as a read-only slice of three u32 has it, then the data.
    let mut header = vec![0u8; 64];
    header[..8].copy_from_slice(b"SKSLICE1");
    header[16..24].copy_from_slice(&4u64.to_le_bytes());
    header[24..32].copy_from_slice(&3u64.to_le_bytes());
    let whole = [header.clone(), vec![0u8; 12]].concat();
    let mut claims_more = header.clone();
    claims_more[24..32].copy_from_slice(&1_000_000u64.to_le_bytes());
    let claims_more = [claims_more, vec![0u8; 12]].concat();
    let read_only = |bytes: &[u8]| forge::memfd(bytes, forge::READ_ONLY);
    let ro_cases = [
        (
            "another element type",
            shared_slice_from_fd::<f32>(handle_fd(&ro)?).err(),
        ),
        (
            "a wider element type",
            shared_slice_from_fd::<u64>(handle_fd(&ro)?).err(),
        ),
        (
            "a mutable slice",
            shared_slice_from_fd::<u32>(handle_fd(&rw)?).err(),
        ),
        (
            "an unsealed memfd",
            shared_slice_from_fd::<u32>(forge::memfd(&whole, rustix::fs::SealFlags::empty())).err(),
        ),
        (
            "a memfd sealed against shrinking only",
            shared_slice_from_fd::<u32>(forge::memfd(&whole, rustix::fs::SealFlags::SHRINK)).err(),
        ),
        (
            "a forged header (no type tag)",
            shared_slice_from_fd::<u32>(read_only(&whole)).err(),
        ),
        (
            "a header claiming more elements than there are",
            shared_slice_from_fd::<u32>(read_only(&claims_more)).err(),
        ),
        (
            "a truncated header",
            shared_slice_from_fd::<u32>(read_only(&header[..20])).err(),
        ),
        (
            "an empty memfd",
            shared_slice_from_fd::<u32>(read_only(&[])).err(),
        ),
        (
            "/dev/null",
            shared_slice_from_fd::<u32>(forge::not_memory()).err(),
        ),
    ];
    for (what, err) in ro_cases {
        let e = err.unwrap_or_else(|| panic!("{what} was accepted as a SharedSlice"));
        assert!(
            matches!(e, skprocess::Error::Decode { .. }),
            "{what}: {e:?}"
        );
    }
    let rw_cases = [
        (
            "another element type",
            shared_slice_mut_from_fd::<i32>(handle_fd(&rw)?).err(),
        ),
        (
            "a read-only slice",
            shared_slice_mut_from_fd::<u32>(handle_fd(&ro)?).err(),
        ),
        (
            "a queue",
            shared_slice_mut_from_fd::<u32>(handle_fd(&Queue::<u32>::new()?)?).err(),
        ),
        (
            "an unsealed memfd",
            shared_slice_mut_from_fd::<u32>(forge::memfd(
                &vec![0u8; 8192],
                rustix::fs::SealFlags::empty(),
            ))
            .err(),
        ),
        (
            "a truncated memfd",
            shared_slice_mut_from_fd::<u32>(forge::memfd(&[0u8; 100], forge::FIXED_SIZE)).err(),
        ),
        (
            "/dev/null",
            shared_slice_mut_from_fd::<u32>(forge::not_memory()).err(),
        ),
    ];
    for (what, err) in rw_cases {
        let e = err.unwrap_or_else(|| panic!("{what} was accepted as a SharedSliceMut"));
        assert!(
            matches!(e, skprocess::Error::Decode { .. }),
            "{what}: {e:?}"
        );
    }
    Ok(())
}

#[test]
fn slices_leave_no_descriptor_mapping_or_file_behind() -> skprocess::Result<()> {
    let mut h = LeakCheck::default().start()?;
    let done = finish(&mut h)?;
    assert_eq!(done.before, done.after, "(fds, slice fds, slice mappings)");
    assert_eq!(done.after.1, 0);
    assert_eq!(done.after.2, 0);
    assert_no_shm_files();
    Ok(())
}
