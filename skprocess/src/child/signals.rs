//! SIGTERM and SIGINT in a child are a stop, not a death; so is the
//! parent's.
//!
//! A child that receives SIGTERM or SIGINT behaves as after `Handle::stop`:
//! the current iteration finishes, `onfinish` runs and the final state goes
//! back to the parent; no life is lost and nothing restarts. A child whose
//! parent died (even by SIGKILL) gets the parent-death signal, a signal of
//! its own (see [`sys::proc::PARENT_DEATH_SIGNAL`]): it stops the same way,
//! then ends what its hooks started, bounded by `stop_grace` plus a second
//! (see [`Link::parent_lost`]).

use crate::link::Link;
use crate::sys;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Starts turning SIGTERM and SIGINT into stops, and the parent-death
/// signal into [`Link::parent_lost`]. `ppid` is the parent the child
/// started with: a signal that finds another parent means it died.
pub(crate) fn install(link: &Arc<Link>, ppid: u32) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, sys::proc::PARENT_DEATH_SIGNAL])?;
    let link = link.clone();
    std::thread::Builder::new()
        .name("skprocess-signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            for sig in signals.forever() {
                let death = sig == sys::proc::PARENT_DEATH_SIGNAL;
                if !death {
                    link.signalled.store(true, Ordering::Relaxed);
                }
                // The parent-death signal comes when the parent's spawning
                // thread ends, while `getppid` may still name the parent:
                // the signal itself says it. `parent_lost` marks the parent
                // gone before it asks for the stop, so the lifecycle, which
                // ends the process group only if the parent is gone, never
                // sees the stop without the mark.
                if death || sys::proc::getppid() != ppid {
                    link.parent_lost();
                }
                link.request_stop();
            }
        })?;
    Ok(())
}
