//! Small helpers for `share.rs`: bounded waits and leftovers checks.
#![allow(dead_code)]

use skprocess::Handle;
use std::sync::Once;
use std::time::Duration;

/// Every wait in these tests is bounded by this.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Ends the test binary if it runs for more than four minutes: a hang
/// becomes a fast failure.
pub fn watchdog() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_secs(240));
            eprintln!("test binary ran for more than 240 s: a test hangs");
            std::process::exit(101);
        });
    });
}

/// `wait` with a deadline: panics if the process is not done in time.
pub fn finish<P: skprocess::Process>(h: &mut Handle<P>) -> skprocess::Result<P> {
    watchdog();
    match h.wait_timeout(DEADLINE) {
        Ok(Some(p)) => Ok(p),
        Ok(None) => panic!("process {} did not finish within {:?}", h.name(), DEADLINE),
        Err(e) => Err(e),
    }
}

/// Asserts nothing of skprocess's is in /dev/shm.
pub fn assert_no_shm_files() {
    let Ok(dir) = std::fs::read_dir("/dev/shm") else { return };
    let ours: Vec<_> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.to_lowercase().contains("skp") || n.to_lowercase().contains("share"))
        .collect();
    assert!(ours.is_empty(), "files left in /dev/shm: {ours:?}");
}

/// Descriptors open in this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Descriptors of this process that are share segments.
pub fn share_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().contains("skprocess-share"))
        .count()
}

/// Mappings of share segments in this process.
pub fn share_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("skprocess-share"))
        .count()
}
