//! The parent's side of a child, written once and used by every owner of
//! children: [`Handle`](crate::Handle) (one process and its lives), the
//! pool's worker managers, and the supervisor.
//!
//! - [`child`]: one child from spawn to reap: start it, send it its role,
//!   read its frames with deadlines, kill it, reap it. No path leaves a
//!   zombie or an orphan.
//! - [`deadline`]: the limits a parent enforces on a running child (the
//!   timed hook's timeout, `join_in`).
//! - [`lives`]: a process run to its end over its lives, with the commands
//!   other threads may send it (`tell`, `stop`, `kill`) at any moment, each
//!   with one defined outcome whatever state the process is in.
//!
//! What a child tells waits in an [`Inbox`](crate::inbox::Inbox), shared
//! with the child's own side of the channel.
//! - [`outcome`]: a process's end result, for a blocking or an async wait.

pub(crate) mod child;
pub(crate) mod deadline;
pub(crate) mod lives;
pub(crate) mod outcome;
