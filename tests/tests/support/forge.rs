//! Forged shared memory for the queue and slice tests: memfds holding
//! chosen bytes, sealed or not, as a hostile or confused peer might send.
#![allow(dead_code)]

use rustix::fs::{MemfdFlags, SealFlags};
use std::io::Write;
use std::os::fd::OwnedFd;

/// Seals a shared slice's memory must carry.
pub const READ_ONLY: SealFlags = SealFlags::WRITE
    .union(SealFlags::SHRINK)
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// Seals a queue's memory must carry.
pub const FIXED_SIZE: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// A memfd holding `bytes`, then sealed with `seals`.
pub fn memfd(bytes: &[u8], seals: SealFlags) -> OwnedFd {
    let fd = rustix::fs::memfd_create(
        "skprocess-forged",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes).unwrap();
    let fd = OwnedFd::from(file);
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

/// A descriptor that is not shared memory at all.
pub fn not_memory() -> OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

/// Descriptors of this process whose target names `what`.
pub fn fds_named(what: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().contains(what))
        .count()
}

/// Mappings of this process whose file names `what`.
pub fn mappings_named(what: &str) -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .count()
}

/// The line of /proc/self/maps whose range holds `addr`.
pub fn mapping_of(addr: usize) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .find(|l| {
            let range = l.split_whitespace().next().unwrap_or("");
            let mut it = range.split('-');
            let lo = usize::from_str_radix(it.next().unwrap_or(""), 16).unwrap_or(usize::MAX);
            let hi = usize::from_str_radix(it.next().unwrap_or(""), 16).unwrap_or(0);
            lo <= addr && addr < hi
        })
        .map(str::to_string)
}
