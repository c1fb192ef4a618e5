//! The worker's side: a child that runs items and calls until its pool
//! closes the socket.
//!
//! The control thread (see `link`) forwards the pool's frames to the
//! worker loop, one batch per frame. Each process item runs its full
//! lifecycle with a fresh [`Ctx`], exactly as in a child of its own, and is
//! answered at once with `DONE` or `FAILED`: a crash later in the batch
//! never loses a finished item. A batch of `map_fn` calls is answered with
//! one `POOL_RESULTS` frame. End of file on the socket ends the process
//! (the control thread exits), whatever it is doing.

use crate::link::Link;
use crate::pool::batch::{self, Parts};
use crate::proto::{kind, Exit, Plan, STATUS_BEGUN, STATUS_HOOK, STATUS_RUN};
use crate::registry;
use crate::runtime::{self, Ctx, RunArgs};
use crate::sys::{self, mem::SharedWords};
use crate::wire::Frame;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Serves the pool until it closes the socket; returns how to exit.
pub(crate) fn serve(link: &Arc<Link>, status: &Arc<SharedWords>) -> Exit {
    while let Ok(frame) = link.others.recv() {
        let done = match frame.kind {
            kind::POOL_ITEMS => run_items(link, status, frame),
            kind::POOL_CALLS => run_calls(link, status, frame),
            other => Err(format!("unknown frame kind {other}")),
        };
        if let Err(msg) = done {
            // The parent spoke nonsense: it sees this exit and its message.
            eprintln!("skprocess pool worker {}: {msg}", sys::proc::getpid());
            return Exit::WorkerProtocol;
        }
        if link.signalled.load(Ordering::Relaxed) {
            // SIGTERM or SIGINT: the item running then was stopped; the
            // worker ends, and its pool starts another in its place.
            return Exit::Clean;
        }
    }
    Exit::Clean
}

fn run_items(link: &Arc<Link>, status: &Arc<SharedWords>, frame: Frame) -> Result<(), String> {
    let (head, parts) = batch::read_items(&frame.payload).map_err(|e| e.to_string())?;
    let entry = registry::find(&head.type_id);
    let mut attempts = head.attempts.iter();
    let parts = Parts::new(parts, frame.fds);
    for part in parts {
        let part = part.map_err(|e| e.to_string())?;
        let attempt = *attempts
            .next()
            .ok_or("a POOL_ITEMS frame has more items than attempts")?;
        let plan = Plan {
            attempt,
            ..head.plan.clone()
        };
        let words = status.words();
        words[STATUS_HOOK].store(0, Ordering::Relaxed);
        words[STATUS_RUN].store(0, Ordering::Relaxed);
        begin(status);
        let outcome = match entry {
            Some(entry) => {
                let mut ctx = Ctx::new(link.clone(), &plan, status.clone(), None);
                (entry.run)(RunArgs {
                    ctx: &mut ctx,
                    plan: &plan,
                    status,
                    state: part.bytes,
                    fds: part.fds,
                })
            }
            None => Err(runtime::unregistered(&head.type_id, &plan)),
        };
        flush_output();
        // Flushes the item's events first, so they arrive before its result.
        runtime::send_outcome(link, outcome);
    }
    Ok(())
}

/// Writes out what the item printed: the worker may be ended at any moment
/// after it answers (the pool closing), without running `exit` handlers.
fn flush_output() {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
}

/// Counts one more item or batch begun: if this worker dies, the parent
/// knows whether the one it was waiting for had started.
fn begin(status: &SharedWords) {
    status.words()[STATUS_BEGUN].fetch_add(1, Ordering::Relaxed);
}

fn run_calls(link: &Arc<Link>, status: &SharedWords, frame: Frame) -> Result<(), String> {
    let (offset, input) = batch::split_u64(&frame.payload).map_err(|e| e.to_string())?;
    begin(status);
    let call = sys::code::entry_at(offset).ok_or_else(|| {
        format!("the batch names no map_fn function of this program (offset {offset:#x})")
    })?;
    // The first 8 bytes become the time the batch took.
    let mut out = Vec::with_capacity(8 + input.len() + input.len() / 2);
    out.extend_from_slice(&[0u8; 8]);
    let mut out_fds = Vec::new();
    let t0 = Instant::now();
    call(input, frame.fds, &mut out, &mut out_fds);
    let ns = t0.elapsed().as_nanos().min(u64::MAX as u128) as u64;
    out[..8].copy_from_slice(&ns.to_le_bytes());
    let raw: Vec<_> = out_fds.iter().map(|f| f.as_raw_fd()).collect();
    flush_output();
    // The batch's events reach the parent before its results.
    crate::log::flush();
    // A parent that is gone ends this process through the control thread.
    let _ = link.writer.send(kind::POOL_RESULTS, &out, &raw);
    Ok(())
}
