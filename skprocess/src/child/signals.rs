//! SIGTERM and SIGINT in a child are a stop, not a death.
//!
//! A child that receives either behaves as after `Handle::stop`: the
//! current iteration finishes, `onfinish` runs and the final state goes back
//! to the parent; no life is lost and nothing restarts. The parent-death
//! signal is SIGTERM too, so a child whose parent died (even by SIGKILL)
//! stops the same way, bounded by `stop_grace` plus a second (see
//! [`Link::parent_lost`]).

use crate::link::Link;
use crate::sys;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Starts turning SIGTERM and SIGINT into stops. `ppid` is the parent the
/// child started with: a signal that finds another parent means it died.
pub(crate) fn install(link: &Arc<Link>, ppid: u32) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let link = link.clone();
    std::thread::Builder::new()
        .name("skprocess-signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            for _ in signals.forever() {
                link.signalled.store(true, Ordering::Relaxed);
                link.request_stop();
                if sys::proc::getppid() != ppid {
                    link.parent_lost();
                }
            }
        })?;
    Ok(())
}
