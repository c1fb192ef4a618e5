//! `AsyncProcess`: a process whose hooks are `async fn`, run on a tokio
//! runtime inside the child (feature `tokio`).
//!
//! It is a [`Process`] like any other: a blanket impl runs each async hook
//! to completion on a current-thread runtime that the child creates at its
//! first hook and keeps for its whole life. Everything the parent does to
//! a process (timeouts, lives, heartbeats, stop, kill) is unchanged, as is
//! everything a hook does with its [`Ctx`].

use crate::error::HookResult;
use crate::registry::Described;
use crate::runtime::Ctx;
use crate::Process;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::OnceLock;

/// A process whose hooks are `async fn`, run on a tokio runtime in the
/// child (feature `tokio`).
///
/// Derive it with `#[derive(Process)]` as a [`Process`], then implement
/// this trait instead of `Process` (it implements `Process` for you, so
/// `start`, `config`, pools and supervisors work as for any process).
/// Only [`run`](AsyncProcess::run) is required. Each hook runs to the end
/// on a current-thread runtime that the child keeps for its whole life:
/// tasks spawned in one hook keep running whenever a later hook awaits,
/// and timers, I/O and `tokio::select!` work as usual. Await
/// [`Ctx::stopped`] to learn of a stop while the hook waits on something
/// else.
///
/// The parent's limits are unchanged: a hook past its timeout is killed,
/// and a lost life is retried, as for `Process`.
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use skprocess::prelude::*;
/// use std::time::Duration;
///
/// #[derive(Process, Serialize, Deserialize)]
/// #[process(runs = 3)]
/// struct Fetch { got: u32 }
///
/// impl AsyncProcess for Fetch {
///     async fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
///         tokio::time::sleep(Duration::from_millis(10)).await;
///         self.got += 1;
///         Ok(())
///     }
/// }
///
/// # fn main() -> skprocess::Result<()> {
/// assert_eq!(Fetch { got: 0 }.start()?.wait()?.got, 3);
/// # Ok(())
/// # }
/// ```
// The hooks' futures are run by this crate on a current-thread runtime:
// they need not be `Send`, which is what the lint asks implementers to know.
#[allow(async_fn_in_trait)]
pub trait AsyncProcess: Serialize + DeserializeOwned + Send + 'static + Described {
    /// Before each `run`.
    async fn prerun(&mut self, ctx: &mut Ctx) -> HookResult {
        let _ = ctx;
        Ok(())
    }

    /// One iteration of work.
    async fn run(&mut self, ctx: &mut Ctx) -> HookResult;

    /// After each `run`.
    async fn postrun(&mut self, ctx: &mut Ctx) -> HookResult {
        let _ = ctx;
        Ok(())
    }

    /// Once, after the last iteration.
    async fn onfinish(&mut self, ctx: &mut Ctx) -> HookResult {
        let _ = ctx;
        Ok(())
    }
}

/// Runs `f` to completion on the child's runtime, made at the first call.
fn block_on(f: impl Future<Output = HookResult>) -> HookResult {
    static RUNTIME: OnceLock<std::io::Result<tokio::runtime::Runtime>> = OnceLock::new();
    let rt = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .thread_name("skprocess-async")
            .build()
    });
    match rt {
        Ok(rt) => rt.block_on(f),
        Err(e) => Err(format!("cannot start the tokio runtime for async hooks: {e}").into()),
    }
}

impl<T: AsyncProcess> Process for T {
    fn prerun(&mut self, ctx: &mut Ctx) -> HookResult {
        block_on(AsyncProcess::prerun(self, ctx))
    }

    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        block_on(AsyncProcess::run(self, ctx))
    }

    fn postrun(&mut self, ctx: &mut Ctx) -> HookResult {
        block_on(AsyncProcess::postrun(self, ctx))
    }

    fn onfinish(&mut self, ctx: &mut Ctx) -> HookResult {
        block_on(AsyncProcess::onfinish(self, ctx))
    }
}
