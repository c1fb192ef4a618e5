//! The registry of process types a child can rebuild.
//!
//! `#[derive(Process)]` adds one [`Entry`] per type to a link-time slice
//! (`linkme`), so the registry is complete before any code runs, including
//! the start-up code of a child, which runs before `main`. A type is found by
//! its id: module path, name, and the source location of the derive, which
//! tells apart same-named types declared in different functions.

use crate::config::Config;
use crate::error::Failure;
use crate::runtime::RunArgs;
use crate::wire::Encoded;

/// Implemented by `#[derive(Process)]`: the type's name, id and
/// `#[process(...)]` configuration.
#[doc(hidden)]
pub trait Described {
    /// `module::Name`, for messages.
    const NAME: &'static str;
    /// Unique within a binary and the same in parent and child.
    const ID: &'static str;
    /// The configuration from `#[process(...)]`.
    fn config() -> Config;
}

type RunFn = fn(RunArgs<'_>) -> Result<Encoded, Failure>;

/// One registered process type.
#[doc(hidden)]
#[derive(Debug)]
pub struct Entry {
    pub(crate) id: &'static str,
    pub(crate) run: RunFn,
}

impl Entry {
    /// The entry for `P`.
    pub const fn of<P: crate::Process>() -> Entry {
        Entry {
            id: P::ID,
            run: crate::runtime::run_value::<P>,
        }
    }
}

/// Every registered process type in this binary.
#[doc(hidden)]
#[linkme::distributed_slice]
pub static REGISTRY: [Entry];

/// Looks a type up by id.
pub(crate) fn find(id: &str) -> Option<&'static Entry> {
    REGISTRY.iter().find(|e| e.id == id)
}
