//! The `Process` trait: a struct with lifecycle hooks that runs in a child.

use crate::config::Config;
use crate::error::{HookResult, Result};
use crate::handle::Handle;
use crate::runtime::Ctx;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A value that runs in its own OS process.
///
/// Derive it with `#[derive(Process)]` (which registers the type so a child
/// can rebuild it, and turns `#[process(...)]` into [`Process::config`]),
/// then implement the hooks. Only [`run`](Process::run) is required.
///
/// In the child, for each iteration: `prerun`, `run`, `postrun`; then, once,
/// `onfinish`. The loop ends when `runs` is reached, when the process calls
/// [`Ctx::stop`], or when the parent calls [`Handle::stop`]; the current
/// iteration always finishes first. The final value of the struct comes
/// back from [`Handle::wait`].
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use skprocess::prelude::*;
///
/// #[derive(Process, Serialize, Deserialize)]
/// #[process(runs = 5)]
/// struct Squarer { x: u64, total: u64 }
///
/// impl Process for Squarer {
///     fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
///         self.total += self.x * self.x;
///         Ok(())
///     }
/// }
///
/// # fn main() -> skprocess::Result<()> {
/// let done = Squarer { x: 3, total: 0 }.start()?.wait()?;
/// assert_eq!(done.total, 45);
/// # Ok(())
/// # }
/// ```
///
/// A process must be `Serialize + Deserialize`: it crosses to the child and
/// back. Without them it does not compile:
///
/// ```compile_fail
/// use skprocess::prelude::*;
///
/// #[derive(Process)]
/// struct NotSerde { x: u64 }
///
/// impl Process for NotSerde {
///     fn run(&mut self, _ctx: &mut Ctx) -> HookResult { Ok(()) }
/// }
/// ```
///
/// And a type without `#[derive(Process)]` is not registered, so it cannot
/// be started:
///
/// ```compile_fail
/// use serde::{Deserialize, Serialize};
/// use skprocess::prelude::*;
///
/// #[derive(Serialize, Deserialize)]
/// struct Unregistered;
///
/// impl Process for Unregistered {
///     fn run(&mut self, _ctx: &mut Ctx) -> HookResult { Ok(()) }
/// }
/// ```
pub trait Process:
    Serialize + DeserializeOwned + Send + 'static + crate::registry::Described
{
    /// Before each `run`.
    fn prerun(&mut self, ctx: &mut Ctx) -> HookResult {
        let _ = ctx;
        Ok(())
    }

    /// One iteration of work.
    fn run(&mut self, ctx: &mut Ctx) -> HookResult;

    /// After each `run`.
    fn postrun(&mut self, ctx: &mut Ctx) -> HookResult {
        let _ = ctx;
        Ok(())
    }

    /// Once, after the last iteration.
    fn onfinish(&mut self, ctx: &mut Ctx) -> HookResult {
        let _ = ctx;
        Ok(())
    }

    /// The configuration from `#[process(...)]` (defaults for keys not given).
    fn config() -> Config
    where
        Self: Sized,
    {
        <Self as crate::registry::Described>::config()
    }

    /// Starts the process in a new child with [`Process::config`].
    ///
    /// # Errors
    ///
    /// If the value cannot be encoded or the child cannot be spawned.
    fn start(self) -> Result<Handle<Self>>
    where
        Self: Sized,
    {
        Handle::start(self, <Self as Process>::config())
    }

    /// Starts the process in a new child with `config`.
    ///
    /// # Errors
    ///
    /// If the value cannot be encoded or the child cannot be spawned.
    fn start_with(self, config: Config) -> Result<Handle<Self>>
    where
        Self: Sized,
    {
        Handle::start(self, config)
    }
}
