//! The payloads of the pool's frames: many values in one frame.
//!
//! A batch is a prefix that depends on the frame kind, then parts, each
//! `[u32 length][u8 tag][u8 descriptor count]` and its bytes. The frame's
//! descriptors are those of the parts, in order, so a value that holds a
//! `Share` or a pipe end travels in a batch like any other.
//!
//! | kind | prefix | parts |
//! |---|---|---|
//! | `POOL_ITEMS` | `[u32 n]` + postcard [`ItemsHead`] | the encoded process values |
//! | `POOL_CALLS` | `[u64 entry offset]` | the encoded arguments |
//! | `POOL_RESULTS` | `[u64 nanoseconds of work]` | one result per argument, tagged |
//!
//! Everything read here came from another process: a length past the end, a
//! missing descriptor or a count that does not match is an `Err`, never a
//! panic.

use super::fixed;
use crate::error::{Error, Result};
use crate::proto::Plan;
use crate::runtime;
use crate::sys;
use crate::wire;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Bytes before each part.
const PART_HEADER: usize = 6;

/// A result part: the encoded return value.
pub(crate) const TAG_OK: u8 = 0;
/// A result part: the function panicked; the bytes are the message.
pub(crate) const TAG_PANICKED: u8 = 1;
/// A result part: the argument or the result could not be (de)coded; the
/// bytes are the message.
pub(crate) const TAG_CODEC: u8 = 2;
/// Every argument (or result) of the batch in one part, in the fixed
/// layout (see `fixed`): the batch's only part.
pub(crate) const TAG_FIXED: u8 = 3;

/// What a `POOL_ITEMS` frame says about its items.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ItemsHead {
    pub(crate) type_id: String,
    /// The plan of every item; `attempt` is replaced by each item's own.
    pub(crate) plan: Plan,
    /// One per part.
    pub(crate) attempts: Vec<u32>,
}

/// Appends one part to a batch.
pub(crate) fn push_part(out: &mut Vec<u8>, tag: u8, bytes: &[u8], nfds: usize) {
    out.extend_from_slice(&part_header(tag, bytes.len(), nfds));
    out.extend_from_slice(bytes);
}

fn part_header(tag: u8, len: usize, nfds: usize) -> [u8; PART_HEADER] {
    debug_assert!(nfds <= sys::sock::MAX_FDS);
    let mut head = [0u8; PART_HEADER];
    head[..4].copy_from_slice(&(len as u32).to_le_bytes());
    head[4] = tag;
    head[5] = nfds as u8;
    head
}

/// Starts a fixed-layout part at the end of `out`, to be closed by
/// [`end_fixed`] once its values are appended.
pub(crate) fn begin_fixed(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; PART_HEADER + fixed::HEAD]);
    start
}

/// Closes the fixed-layout part begun at `start`: `count` values of `size`
/// bytes follow its head.
pub(crate) fn end_fixed(out: &mut [u8], start: usize, count: usize, size: usize) {
    let len = out.len() - start - PART_HEADER;
    out[start..start + PART_HEADER].copy_from_slice(&part_header(TAG_FIXED, len, 0));
    out[start + PART_HEADER..start + PART_HEADER + fixed::HEAD]
        .copy_from_slice(&fixed::head(count, size));
}

/// Encodes `value` into `scratch` (reusing its allocation) and returns the
/// descriptors it refers to.
pub(crate) fn encode_reusing<T: Serialize + ?Sized>(
    scratch: &mut Vec<u8>,
    value: &T,
) -> Result<Vec<OwnedFd>> {
    let mut buf = std::mem::take(scratch);
    buf.clear();
    let enc = wire::encode_into(value, buf)?;
    *scratch = enc.bytes;
    Ok(enc.fds)
}

/// One part read from a batch.
#[derive(Debug)]
pub(crate) struct Part<'a> {
    pub(crate) tag: u8,
    pub(crate) bytes: &'a [u8],
    pub(crate) fds: Vec<OwnedFd>,
}

/// Reads the parts of a batch, handing each its descriptors.
#[derive(Debug)]
pub(crate) struct Parts<'a> {
    bytes: &'a [u8],
    fds: std::vec::IntoIter<OwnedFd>,
}

impl<'a> Parts<'a> {
    /// The parts in `bytes` (the batch after its prefix) with the frame's
    /// descriptors.
    pub(crate) fn new(bytes: &'a [u8], fds: Vec<OwnedFd>) -> Self {
        Parts {
            bytes,
            fds: fds.into_iter(),
        }
    }

    /// Descriptors not claimed by any part (a well-formed batch has none).
    pub(crate) fn leftover_fds(&self) -> usize {
        self.fds.len()
    }

    /// Whether the next part is a fixed-layout one.
    pub(crate) fn next_is_fixed(&self) -> bool {
        self.bytes.get(4) == Some(&TAG_FIXED)
    }
}

impl<'a> Iterator for Parts<'a> {
    type Item = Result<Part<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.bytes.is_empty() {
            return None;
        }
        let r = self.read_part();
        if r.is_err() {
            // Stop at the first malformed part.
            self.bytes = &[];
        }
        Some(r)
    }
}

impl<'a> Parts<'a> {
    fn read_part(&mut self) -> Result<Part<'a>> {
        let Some(head) = self.bytes.first_chunk::<PART_HEADER>() else {
            return Err(Error::Wire(
                "a batch ends in the middle of a part header".into(),
            ));
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let (tag, nfds) = (head[4], head[5] as usize);
        let Some(bytes) = self.bytes.get(PART_HEADER..PART_HEADER + len) else {
            return Err(Error::Wire(format!(
                "a batch part of {len} bytes runs past the end of its frame"
            )));
        };
        let fds = match nfds {
            0 => Vec::new(),
            n if n <= self.fds.len() => self.fds.by_ref().take(n).collect(),
            n => {
                return Err(Error::Wire(format!(
                    "a batch part needs {n} descriptors but only {} are left",
                    self.fds.len()
                )))
            }
        };
        self.bytes = &self.bytes[PART_HEADER + len..];
        Ok(Part { tag, bytes, fds })
    }
}

/// Splits `[u64 value][rest]`.
pub(crate) fn split_u64(payload: &[u8]) -> Result<(u64, &[u8])> {
    let head = payload.get(..8).ok_or_else(|| {
        Error::Wire(format!(
            "a pool frame of {} bytes is too short",
            payload.len()
        ))
    })?;
    Ok((
        u64::from_le_bytes(head.try_into().expect("eight bytes")),
        &payload[8..],
    ))
}

/// Builds the prefix of a `POOL_ITEMS` payload.
pub(crate) fn items_prefix(head: &ItemsHead) -> Result<Vec<u8>> {
    let head = postcard::to_allocvec(head).map_err(|e| Error::Wire(e.to_string()))?;
    let mut out = Vec::with_capacity(4 + head.len());
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    Ok(out)
}

/// Splits a `POOL_ITEMS` payload into its head and its parts' bytes.
pub(crate) fn read_items(payload: &[u8]) -> Result<(ItemsHead, &[u8])> {
    let short = || Error::Wire("a POOL_ITEMS frame is shorter than its head".into());
    let len = u32::from_le_bytes(
        payload
            .get(..4)
            .ok_or_else(short)?
            .try_into()
            .expect("four bytes"),
    ) as usize;
    let head = payload.get(4..4 + len).ok_or_else(short)?;
    let head: ItemsHead =
        postcard::from_bytes(head).map_err(|e| Error::Wire(format!("bad POOL_ITEMS head: {e}")))?;
    Ok((head, &payload[4 + len..]))
}

/// What one call of a batch gave: its result, or the tag and message of
/// why not.
type CallResult<R> = std::result::Result<R, (u8, String)>;

/// The `map_fn` trampoline, one per `(A, R, F)`: runs in a worker, reads
/// the arguments in `input`, calls `F` on each and appends the results to
/// `out`: one fixed-layout part if the arguments came so and every result
/// has that layout too, otherwise one tagged result part per argument. A
/// panic in `F` is caught and becomes that argument's result; the other
/// arguments are not affected.
pub(crate) fn call_batch<A, R, F>(
    input: &[u8],
    fds: Vec<OwnedFd>,
    out: &mut Vec<u8>,
    out_fds: &mut Vec<OwnedFd>,
) where
    A: DeserializeOwned,
    R: Serialize,
    F: Fn(A) -> R + Copy,
{
    // The parent checked that `F` is zero-sized before it sent the batch.
    let f = sys::zst::conjure::<F>();
    let call = |arg: std::result::Result<A, String>| -> CallResult<R> {
        let Some(f) = f else {
            return Err((TAG_CODEC, "the function captures state".into()));
        };
        let arg = arg.map_err(|e| {
            (
                TAG_CODEC,
                format!("the worker could not decode the argument: {e}"),
            )
        })?;
        catch_unwind(AssertUnwindSafe(|| f(arg)))
            .map_err(|p| (TAG_PANICKED, runtime::panic_message(&*p)))
    };
    let was_in_hook = runtime::IN_HOOK.with(|c| c.replace(true));
    let mut parts = Parts::new(input, fds);
    if parts.next_is_fixed() {
        let values = parts
            .next()
            .and_then(|p| p.ok())
            .map(|p| fixed::values(p.bytes));
        // Malformed: no results, which the parent reports.
        if let Some(Ok(values)) = values {
            let mut results = Vec::with_capacity(values.len());
            let start = begin_fixed(out);
            let mut size = None;
            let mut fixed_out = true;
            for v in values {
                let r = call(fixed::decode::<A>(v).map_err(|e| e.to_string()));
                if fixed_out {
                    let before = out.len();
                    fixed_out = r.as_ref().is_ok_and(|r| fixed::encode(r, out).is_ok())
                        && *size.get_or_insert(out.len() - before) == out.len() - before;
                }
                results.push(r);
            }
            if fixed_out {
                end_fixed(out, start, results.len(), size.unwrap_or(0));
            } else {
                out.truncate(start);
                let mut scratch = Vec::new();
                for r in results {
                    push_result(out, out_fds, &mut scratch, r);
                }
            }
        }
    } else {
        let mut scratch = Vec::new();
        for part in parts {
            let Ok(part) = part else { break };
            let arg = wire::decode::<A>(part.bytes, part.fds).map_err(|e| e.to_string());
            push_result(out, out_fds, &mut scratch, call(arg));
        }
    }
    runtime::IN_HOOK.with(|c| c.set(was_in_hook));
}

/// Appends one call's result as a tagged part.
fn push_result<R: Serialize>(
    out: &mut Vec<u8>,
    out_fds: &mut Vec<OwnedFd>,
    scratch: &mut Vec<u8>,
    result: CallResult<R>,
) {
    match result {
        Ok(r) => match encode_reusing(scratch, &r) {
            Ok(fds) if out_fds.len() + fds.len() <= sys::sock::MAX_FDS => {
                push_part(out, TAG_OK, scratch, fds.len());
                out_fds.extend(fds);
            }
            Ok(_) => push_part(
                out,
                TAG_CODEC,
                b"the results of one batch hold too many descriptors",
                0,
            ),
            Err(e) => push_part(
                out,
                TAG_CODEC,
                format!("the worker could not encode the result: {e}").as_bytes(),
                0,
            ),
        },
        Err((tag, msg)) => push_part(out, tag, msg.as_bytes(), 0),
    }
}
