//! Share<T>: `share.lock()?.counter += 1` from two processes at once (the
//! DESIGN.md figure: >= 1 M increments/s in all, exact count), beside a bare
//! atomic increment from two processes on one `AtomicU64` in a memfd,
//! measured in the same run. Also the uncontended cost of one lock+write in
//! a single process, beside an uncontended `fetch_add`.
//!
//! `cargo bench -p skprocess-benches --bench share`

use criterion::{criterion_group, Criterion};
use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use skprocess_benches::report_rate;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize, Default)]
struct Stats {
    counter: u64,
    log: Vec<String>,
}

/// Waits for "go", then increments `n` times and reports how long it took.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Incrementer {
    share: Share<Stats>,
    n: u64,
    elapsed: Duration,
}

impl Process for Incrementer {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        pin_to_cpu(1);
        ctx.tell("ready")?;
        ctx.listen::<String>(Duration::from_secs(60))?
            .ok_or("no go")?;
        let t = Instant::now();
        for _ in 0..self.n {
            self.share.lock()?.counter += 1;
        }
        self.elapsed = t.elapsed();
        Ok(())
    }
}

/// Pins the calling thread to `cpu` (modulo the CPUs there are), so the two
/// sides of a run contend from two cores rather than taking turns on one.
/// Returns the previous mask.
fn pin_to_cpu(cpu: usize) -> Option<libc::cpu_set_t> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return None;
    }
    // SAFETY: cpu_set_t is a plain bit mask; all-zero is a valid value, and
    // the calls get valid pointers to it with its size.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old);
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % cpus, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        Some(old)
    }
}

fn unpin(old: Option<libc::cpu_set_t>) {
    if let Some(old) = old {
        // SAFETY: as in `pin_to_cpu`.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &old) };
    }
}

/// One two-process run: increments per second in all, and how often the
/// counter had moved under the parent between two of its increments (how
/// often the lock changed hands), per million of the parent's increments.
struct Run {
    rate: f64,
    handovers_per_m: f64,
}

/// Increments per second from this process and one child, `n` each.
fn share_two_processes(n: u64) -> Run {
    let share = Share::new(Stats::default()).expect("share");
    let mut h = Incrementer {
        share: share.clone(),
        n,
        elapsed: Duration::ZERO,
    }
    .start()
    .expect("start");
    let ready: Option<String> = h.listen(Duration::from_secs(60)).expect("listen");
    assert_eq!(ready.as_deref(), Some("ready"));
    let restore = pin_to_cpu(0);
    let t = Instant::now();
    h.tell("go").expect("tell");
    let (mut last, mut handovers) = (0, 0u64);
    for _ in 0..n {
        let mut g = share.lock().expect("lock");
        handovers += u64::from(g.counter != last);
        g.counter += 1;
        last = g.counter;
    }
    h.wait().expect("wait");
    let wall = t.elapsed();
    unpin(restore);
    assert_eq!(share.get().expect("get").counter, 2 * n, "exact count");
    Run {
        rate: (2 * n) as f64 / wall.as_secs_f64(),
        handovers_per_m: handovers as f64 * 1e6 / n as f64,
    }
}

/// An `AtomicU64` in a shared memfd mapping, and a forked child.
struct SharedAtomics {
    ptr: *mut AtomicU64,
}

impl SharedAtomics {
    fn new() -> Self {
        // SAFETY: plain syscalls; the mapping is checked, zero-filled,
        // page-aligned and large enough for three AtomicU64s, and is never
        // unmapped (the bench ends with the process).
        unsafe {
            let fd = libc::memfd_create(c"bench-atomic".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, 4096), 0);
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            libc::close(fd);
            SharedAtomics { ptr: p.cast() }
        }
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < 3);
        // SAFETY: the mapping holds at least three aligned words, lives for
        // the rest of the process, and is accessed only through atomics.
        unsafe { &*self.ptr.add(i) }
    }
}

/// Increments per second of a bare `fetch_add` from this process and a
/// forked child on one shared word, `n` each.
fn atomic_two_processes(n: u64) -> Run {
    let m = SharedAtomics::new();
    let (counter, ready, go) = (m.word(0), m.word(1), m.word(2));
    // SAFETY: the child only touches atomics in the shared mapping and then
    // calls _exit, which is safe after fork in a multi-threaded process.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        pin_to_cpu(1);
        ready.store(1, Ordering::SeqCst);
        while go.load(Ordering::SeqCst) == 0 {
            std::hint::spin_loop();
        }
        for _ in 0..n {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: ends the forked child without running any destructor.
        unsafe { libc::_exit(0) };
    }
    while ready.load(Ordering::SeqCst) == 0 {
        std::hint::spin_loop();
    }
    let restore = pin_to_cpu(0);
    let t = Instant::now();
    go.store(1, Ordering::SeqCst);
    let (mut last, mut handovers) = (0, 0u64);
    for _ in 0..n {
        let before = counter.fetch_add(1, Ordering::SeqCst);
        handovers += u64::from(before != last);
        last = before + 1;
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let wall = t.elapsed();
    unpin(restore);
    assert_eq!(counter.load(Ordering::SeqCst), 2 * n);
    Run {
        rate: (2 * n) as f64 / wall.as_secs_f64(),
        handovers_per_m: handovers as f64 * 1e6 / n as f64,
    }
}

fn uncontended(c: &mut Criterion) {
    let mut g = c.benchmark_group("share");
    g.sample_size(30).measurement_time(Duration::from_secs(3));
    let share = Share::new(Stats::default()).expect("share");
    g.bench_function("lock()+=1, one process, uncontended", |b| {
        b.iter(|| share.lock().expect("lock").counter += 1)
    });
    g.bench_function("lock() read only, one process", |b| {
        b.iter(|| black_box(share.lock().expect("lock").counter))
    });
    let word = AtomicU64::new(0);
    g.bench_function("bare fetch_add, one thread", |b| {
        b.iter(|| black_box(&word).fetch_add(1, Ordering::SeqCst))
    });
    g.finish();
}

fn median_rate(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn summary() {
    let n = 1_000_000;
    let mut ours = Vec::new();
    let mut bare = Vec::new();
    // Interleaved, so machine noise hits both alike.
    for _ in 0..5 {
        ours.push(share_two_processes(n));
        bare.push(atomic_two_processes(20 * n));
    }
    let handovers = |runs: &[Run]| median_rate(runs.iter().map(|r| r.handovers_per_m).collect());
    let (ours_h, bare_h) = (handovers(&ours), handovers(&bare));
    report_rate(
        "share lock()+=1, 2 processes (>= 1M/s)",
        median_rate(ours.iter().map(|r| r.rate).collect()),
        "bare fetch_add, 2 processes",
        median_rate(bare.iter().map(|r| r.rate).collect()),
        "/s",
    );
    println!(
        "NOTE    the lock changed hands {ours_h:.0} times per million parent increments \
         (the bare counter moved under the parent {bare_h:.0} times per million)"
    );

    // Uncontended, one process: calls per second, median of 7 batches.
    let share = Share::new(Stats::default()).expect("share");
    let word = AtomicU64::new(0);
    let write = rate(|| share.lock().expect("lock").counter += 1);
    let read = rate(|| {
        black_box(share.lock().expect("lock").counter);
    });
    let atomic = rate(|| {
        black_box(&word).fetch_add(1, Ordering::SeqCst);
    });
    report_rate(
        "share lock()+=1, 1 process",
        write,
        "bare fetch_add, 1 thread",
        atomic,
        "/s",
    );
    report_rate(
        "share lock() read only, 1 process",
        read,
        "bare fetch_add, 1 thread",
        atomic,
        "/s",
    );
}

/// Calls of `f` per second: the median of 7 batches of 1 M calls.
fn rate(mut f: impl FnMut()) -> f64 {
    const BATCH: u32 = 1_000_000;
    let samples = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..BATCH {
                f();
            }
            f64::from(BATCH) / t.elapsed().as_secs_f64()
        })
        .collect();
    median_rate(samples)
}

criterion_group!(benches, uncontended);

fn main() {
    if !skprocess_benches::summary_only() {
        benches();
    }
    summary();
    Criterion::default().configure_from_args().final_summary();
}
