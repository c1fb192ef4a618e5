//! Helpers for `share.rs` beyond `support`: share descriptors and mappings
//! of this process.
#![allow(dead_code)]

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
