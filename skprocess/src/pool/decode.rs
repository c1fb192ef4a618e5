//! Turning replies back into values: a process item's final state, the
//! results of a batch of `map_fn` calls, and results gathered into input
//! order.

use super::batch;
use super::fixed;
use super::task::{Job, Reply};
use crate::config::Hook;
use crate::error::{Cause, Error, Result};
use crate::wire::{self, Encoded};
use crate::Process;
use serde::de::DeserializeOwned;

/// The index and decoded final state of a process item.
pub(crate) fn item<P: Process>(reply: Reply) -> (usize, Result<P>) {
    match reply {
        Reply::Item { index, result, .. } => (
            index,
            result.and_then(|enc| wire::decode::<P>(&enc.bytes, enc.fds)),
        ),
        Reply::Calls { start, .. } => (
            start,
            Err(Error::Wire(
                "a process item was answered as a map_fn batch".into(),
            )),
        ),
    }
}

/// Hands `put` the result of each `map_fn` call a reply answers, with its
/// index.
pub(crate) fn calls<R: DeserializeOwned>(
    job: &Job,
    reply: Reply,
    mut put: impl FnMut(usize, Result<R>),
) {
    match reply {
        // Only arguments that could not be encoded come back so.
        Reply::Item { index, result, .. } => {
            let e = result.err().unwrap_or_else(|| {
                Error::Wire("a map_fn item was answered as a process item".into())
            });
            put(index, Err(e));
        }
        Reply::Calls {
            start,
            count,
            result,
        } => match result.and_then(|payload| results::<R>(job, start, count, payload)) {
            Ok(results) => (start..).zip(results).for_each(|(i, r)| put(i, r)),
            Err(e) => put(start, Err(e)),
        },
    }
}

/// Decodes a `POOL_RESULTS` payload: one result per call of the batch.
pub(crate) fn results<R: DeserializeOwned>(
    job: &Job,
    start: usize,
    count: usize,
    payload: Encoded,
) -> Result<Vec<Result<R>>> {
    let (_, rest) = batch::split_u64(&payload.bytes)?;
    let mut out = Vec::with_capacity(count);
    let mut parts = batch::Parts::new(rest, payload.fds);
    if parts.next_is_fixed() {
        let part = parts.next().expect("a part is next")?;
        let values = fixed::values(part.bytes).map_err(|e| Error::Wire(e.to_string()))?;
        if values.len() != count {
            return Err(Error::Wire(format!(
                "a pool worker answered {} of a batch of {count} calls",
                values.len()
            )));
        }
        for v in values {
            let index = start + out.len();
            out.push(fixed::decode::<R>(v).map_err(|e| {
                let cause = Cause::Codec(format!("the result could not be decoded: {e}"));
                let mut f = job.failure(index, 1, Some(Hook::Run), None, cause);
                f.lives = 1;
                Error::Process(Box::new(f))
            }));
        }
    }
    for part in parts.by_ref() {
        let part = part?;
        let index = start + out.len();
        out.push(match part.tag {
            batch::TAG_OK => wire::decode::<R>(part.bytes, part.fds),
            tag => {
                let msg = String::from_utf8_lossy(part.bytes).into_owned();
                let cause = if tag == batch::TAG_PANICKED {
                    Cause::Panicked(msg)
                } else {
                    Cause::Codec(msg)
                };
                let mut f = job.failure(index, 1, Some(Hook::Run), None, cause);
                f.lives = 1;
                Err(Error::Process(Box::new(f)))
            }
        });
    }
    if out.len() != count || parts.leftover_fds() != 0 {
        return Err(Error::Wire(format!(
            "a pool worker answered {} of a batch of {count} calls",
            out.len()
        )));
    }
    Ok(out)
}

/// Results gathered into input order, keeping the error of the first item
/// (in input order) that failed.
pub(crate) struct InOrder<T> {
    out: Vec<Option<T>>,
    first_err: Option<(usize, Error)>,
}

impl<T> InOrder<T> {
    pub(crate) fn with_capacity(n: usize) -> Self {
        InOrder {
            out: Vec::with_capacity(n),
            first_err: None,
        }
    }

    pub(crate) fn put(&mut self, index: usize, result: Result<T>) {
        match result {
            Ok(v) => {
                if self.out.len() <= index {
                    self.out.resize_with(index + 1, || None);
                }
                self.out[index] = Some(v);
            }
            Err(e) => {
                if self.first_err.as_ref().is_none_or(|(i, _)| index < *i) {
                    self.first_err = Some((index, e));
                }
            }
        }
    }

    pub(crate) fn finish(self) -> Result<Vec<T>> {
        if let Some((_, e)) = self.first_err {
            return Err(e);
        }
        self.out
            .into_iter()
            .collect::<Option<Vec<T>>>()
            .ok_or_else(|| Error::Wire("a pool item was never answered".into()))
    }
}
