//! Live resources: a connection cannot cross a process boundary, but the
//! recipe for it can.
//!
//! A [`Connect`] type is a recipe: plain data (a path, connection
//! parameters, a [`Secret`] password) that knows how to open a connection.
//! [`Live<C>`](Live) holds a recipe and, once used, the connection it
//! opened. Only the recipe is encoded when a process starts, so each
//! process connects on first use ([`Live::get`], [`Live::with`]) and keeps
//! the connection across its runs.
//!
//! In every process, a connection whose `Live` is dropped waits in a cache
//! keyed by the recipe (its type and encoded bytes) for the next `Live`
//! with an equal recipe: the items of a [`Pool`](crate::Pool) that follow
//! one another in a worker share that worker's one connection instead of
//! opening one each. Two `Live`s in use at the same time hold two
//! connections; [`Live::reset`] closes a connection instead of keeping it.
//!
//! Ready recipes, behind cargo features: `Sqlite` (feature `sqlite`) and
//! `Postgres` (feature `postgres`).
//!
//! # Examples
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use skprocess::live::{Connect, Live};
//! use skprocess::prelude::*;
//! use std::collections::HashMap;
//!
//! /// A stand-in for a database client.
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Store { name: String }
//!
//! impl Connect for Store {
//!     type Conn = HashMap<String, u64>;
//!     fn connect(&self) -> Result<Self::Conn, BoxError> {
//!         Ok(HashMap::from([(self.name.clone(), 0)]))
//!     }
//! }
//!
//! #[derive(Process, Serialize, Deserialize)]
//! #[process(runs = 3)]
//! struct Counter { store: Live<Store>, seen: u64 }
//!
//! impl Process for Counter {
//!     fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
//!         // The same connection in every run of this child.
//!         let n = self.store.get()?.entry("hits".into()).or_default();
//!         *n += 1;
//!         self.seen = *n;
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> skprocess::Result<()> {
//! let store = Live::new(Store { name: "db".into() });
//! let mut h = Counter { store, seen: 0 }.start()?;
//! let done = h.wait()?;
//! assert_eq!(done.seen, 3);
//! assert!(!done.store.is_connected()); // the connection stayed in the child
//! # Ok(())
//! # }
//! ```

mod secret;

#[cfg(feature = "postgres")]
mod pg;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "postgres")]
pub use pg::Postgres;
pub use secret::Secret;
#[cfg(feature = "sqlite")]
pub use sqlite::Sqlite;

/// The `postgres` crate [`Postgres`] connects with (feature `postgres`),
/// so that its types are at hand in the same version.
#[cfg(feature = "postgres")]
#[doc(no_inline)]
pub use postgres;
/// The `rusqlite` crate [`Sqlite`] connects with (feature `sqlite`), so
/// that its types are at hand in the same version.
#[cfg(feature = "sqlite")]
#[doc(no_inline)]
pub use rusqlite;

use crate::error::{chain, BoxError, Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::any::{Any, TypeId};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zeroize::Zeroizing;

/// A recipe for a live resource: plain data that travels to a child and
/// opens the connection there.
///
/// `is_valid` tells [`Live::with`] whether a connection is still usable
/// after the closure failed. Its default says it always is, so `with` does
/// not retry unless the recipe can tell a broken connection (the ready
/// recipes can).
pub trait Connect: Serialize + DeserializeOwned + 'static {
    /// The connection this recipe opens.
    type Conn: Send + 'static;

    /// Opens a connection. Its error becomes an [`Error::Connect`] that
    /// keeps the error's text (the server's own message).
    fn connect(&self) -> std::result::Result<Self::Conn, BoxError>;

    /// Whether `conn` still works. Called by [`Live::with`] after its
    /// closure failed; `false` makes it reconnect and run the closure once
    /// more.
    fn is_valid(&self, conn: &mut Self::Conn) -> bool {
        let _ = conn;
        true
    }
}

/// Waits before each reconnection attempt of [`Live::with`]: the first at
/// once (a session the server ended is back in one connect), then two more
/// after 50 ms and 250 ms (a server that is restarting).
const BACKOFF: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(50),
    Duration::from_millis(250),
];

/// A live resource: a [`Connect`] recipe, and the connection it opened in
/// this process once it was used.
///
/// Encoding a `Live` encodes the recipe alone: the connection stays where
/// it was opened. Cloning a `Live` clones the recipe, never the
/// connection. See the [module docs](self) for how connections are reused.
pub struct Live<C: Connect> {
    recipe: C,
    conn: Option<C::Conn>,
    /// The encoded recipe (the cache key), once computed; `None` also
    /// when the recipe cannot be encoded (its connections are not kept).
    key: Option<Arc<Zeroizing<Vec<u8>>>>,
}

impl<C: Connect> Live<C> {
    /// A live resource made from `recipe`, not connected yet.
    pub fn new(recipe: C) -> Live<C> {
        Live {
            recipe,
            conn: None,
            key: None,
        }
    }

    /// The recipe.
    pub fn recipe(&self) -> &C {
        &self.recipe
    }

    /// Whether this `Live` holds a connection now.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// The connection: the one this `Live` holds, else one an equal recipe
    /// left in this process, else a new one.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when the recipe could not connect; its text is
    /// the recipe's own error (for a server, the server's message).
    pub fn get(&mut self) -> Result<&mut C::Conn> {
        match self.conn {
            Some(ref mut conn) => Ok(conn),
            None => {
                let conn = self.open()?;
                Ok(self.conn.insert(conn))
            }
        }
    }

    /// Runs `f` on the connection. If `f` fails and the recipe's
    /// [`is_valid`](Connect::is_valid) says the connection is gone, drops
    /// it, reconnects (up to three tries: at once, then after 50 ms and
    /// 250 ms) and runs
    /// `f` once more on the new connection.
    ///
    /// `with` is not a transaction manager: `f` may run twice, and what the
    /// first run did before the connection broke is whatever the server
    /// made of it (a transaction it had not committed is rolled back, a
    /// statement it had acknowledged is kept). Make `f` one transaction, or
    /// idempotent. An error with the connection still valid (a constraint
    /// violation, a syntax error, a locked database) is returned as is,
    /// without a retry.
    ///
    /// # Errors
    ///
    /// The error of `f` (of its second run, after a reconnection), or an
    /// [`Error::Connect`] when connecting failed.
    pub fn with<T, E>(
        &mut self,
        mut f: impl FnMut(&mut C::Conn) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, BoxError>
    where
        E: Into<BoxError>,
    {
        let broken = match f(self.get()?) {
            Ok(v) => return Ok(v),
            Err(e) => e.into(),
        };
        let valid = match self.conn.as_mut() {
            Some(conn) => self.recipe.is_valid(conn),
            None => false,
        };
        if valid {
            return Err(broken);
        }
        self.conn = None;
        tracing::warn!(
            resource = std::any::type_name::<C>(),
            error = %chain(&*broken),
            "live connection broke; reconnecting"
        );
        let conn = self.reconnect()?;
        f(self.conn.insert(conn)).map_err(Into::into)
    }

    /// Drops the connection (closing it rather than keeping it for
    /// another `Live`); the next use connects anew.
    pub fn reset(&mut self) {
        self.conn = None;
    }

    /// A connection from the cache, or a new one.
    fn open(&mut self) -> Result<C::Conn> {
        if self.key.is_none() {
            // A recipe that cannot be encoded still connects; its
            // connections are just not kept for others.
            self.key = crate::wire::encode(&self.recipe)
                .ok()
                .map(|e| Arc::new(Zeroizing::new(e.bytes)));
        }
        if let Some(conn) = self.key.as_ref().and_then(|k| cache::take::<C>(k)) {
            return Ok(conn);
        }
        connect(&self.recipe)
    }

    /// A new connection after one broke, trying a few times.
    fn reconnect(&self) -> Result<C::Conn> {
        let mut last = None;
        for pause in BACKOFF {
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
            match connect(&self.recipe) {
                Ok(conn) => return Ok(conn),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::usage("no reconnection was tried")))
    }
}

/// Opens a connection with `recipe`, naming it in the error.
fn connect<C: Connect>(recipe: &C) -> Result<C::Conn> {
    recipe.connect().map_err(|e| Error::Connect {
        resource: std::any::type_name::<C>(),
        reason: chain(&*e),
        source: Arc::from(e),
    })
}

impl<C: Connect> Drop for Live<C> {
    fn drop(&mut self) {
        if let (Some(conn), Some(key)) = (self.conn.take(), self.key.take()) {
            cache::put::<C>(key, conn);
        }
    }
}

impl<C: Connect + Clone> Clone for Live<C> {
    fn clone(&self) -> Live<C> {
        Live {
            recipe: self.recipe.clone(),
            conn: None,
            key: self.key.clone(),
        }
    }
}

impl<C: Connect + fmt::Debug> fmt::Debug for Live<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Live")
            .field("recipe", &self.recipe)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl<C: Connect> Serialize for Live<C> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.recipe.serialize(s)
    }
}

impl<'de, C: Connect> Deserialize<'de> for Live<C> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Live<C>, D::Error> {
        C::deserialize(d).map(Live::new)
    }
}

/// The connections of this process that no `Live` holds, one per recipe.
mod cache {
    use super::*;

    struct Idle {
        recipe: TypeId,
        key: Arc<Zeroizing<Vec<u8>>>,
        conn: Box<dyn Any + Send>,
    }

    static IDLE: Mutex<Vec<Idle>> = Mutex::new(Vec::new());

    fn idle() -> std::sync::MutexGuard<'static, Vec<Idle>> {
        // The list stays consistent whatever panicked while it was held.
        IDLE.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The idle connection of recipe `key`, if there is one.
    pub(super) fn take<C: Connect>(key: &[u8]) -> Option<C::Conn> {
        let mut idle = idle();
        let at = idle
            .iter()
            .position(|i| i.recipe == TypeId::of::<C>() && i.key.as_slice() == key)?;
        let conn = idle.swap_remove(at).conn;
        drop(idle);
        conn.downcast::<C::Conn>().ok().map(|c| *c)
    }

    /// Keeps `conn` for the next `Live` of recipe `key`, or closes it when
    /// one is kept already.
    pub(super) fn put<C: Connect>(key: Arc<Zeroizing<Vec<u8>>>, conn: C::Conn) {
        let mut idle = idle();
        let taken = idle
            .iter()
            .any(|i| i.recipe == TypeId::of::<C>() && i.key == key);
        if !taken {
            idle.push(Idle {
                recipe: TypeId::of::<C>(),
                key,
                conn: Box::new(conn),
            });
        } else {
            drop(idle);
            drop(conn);
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    static OPENED: AtomicU64 = AtomicU64::new(0);

    /// Numbers its connections; a connection marked `broken` is invalid.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    struct Counting {
        name: String,
        /// Every connection attempt fails.
        refuse: bool,
    }

    #[derive(Debug)]
    struct Conn {
        serial: u64,
        broken: bool,
    }

    impl Connect for Counting {
        type Conn = Conn;
        fn connect(&self) -> std::result::Result<Conn, BoxError> {
            if self.refuse {
                return Err(format!("server {} refused", self.name).into());
            }
            Ok(Conn {
                serial: OPENED.fetch_add(1, Ordering::SeqCst),
                broken: false,
            })
        }
        fn is_valid(&self, conn: &mut Conn) -> bool {
            !conn.broken
        }
    }

    fn live(name: &str) -> Live<Counting> {
        Live::new(Counting {
            name: name.into(),
            refuse: false,
        })
    }

    #[test]
    fn equal_recipes_reuse_a_dropped_connection() {
        let mut a = live("reuse-a");
        let first = a.get().unwrap().serial;
        assert_eq!(a.get().unwrap().serial, first, "kept across uses");
        // Held by `a`: a second Live opens its own.
        let mut b = live("reuse-a");
        let second = b.get().unwrap().serial;
        assert_ne!(first, second);
        drop(a);
        drop(b); // the cache keeps one; this one is closed
        let mut c = live("reuse-a");
        assert_eq!(c.get().unwrap().serial, first);
        let mut d = live("reuse-a");
        assert_ne!(d.get().unwrap().serial, second, "only one was kept");
        // Another recipe never gets it.
        let mut e = live("reuse-b");
        let other = e.get().unwrap().serial;
        assert!(other != first && other != second);
    }

    #[test]
    fn reset_closes_and_clone_copies_the_recipe_only() {
        let mut a = live("reset");
        let first = a.get().unwrap().serial;
        let mut b = a.clone();
        assert!(!b.is_connected());
        assert_ne!(b.get().unwrap().serial, first);
        a.reset();
        assert!(!a.is_connected());
        drop(a);
        drop(b);
        let mut c = live("reset");
        // `a`'s connection was closed by reset; `b`'s was kept.
        assert_ne!(c.get().unwrap().serial, first);
    }

    #[test]
    fn with_reconnects_once_when_the_connection_broke() {
        let mut a = live("with");
        let first = a.get().unwrap().serial;
        let mut calls = Vec::new();
        let out = a.with(|c| {
            calls.push(c.serial);
            if calls.len() == 1 {
                c.broken = true;
                Err("connection reset by peer")
            } else {
                Ok(c.serial)
            }
        });
        let second = out.unwrap();
        assert_ne!(second, first);
        assert_eq!(calls, vec![first, second]);
        // A failure on a valid connection is returned, not retried.
        let mut runs = 0;
        let err = a
            .with(|_| {
                runs += 1;
                Err::<(), _>("syntax error")
            })
            .unwrap_err();
        assert_eq!((runs, err.to_string().as_str()), (1, "syntax error"));
        assert_eq!(a.get().unwrap().serial, second);
    }

    #[test]
    fn a_refused_connection_is_a_connect_error_with_the_reason() {
        let mut a = Live::new(Counting {
            name: "db7".into(),
            refuse: true,
        });
        let e = a.get().unwrap_err();
        assert!(matches!(e, Error::Connect { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("server db7 refused"), "{text}");
        assert!(text.contains("Counting"), "{text}");
        assert_eq!(e.duplicate().to_string(), text);
        // Every error of `with` is the same error.
        let e = a.with(|_| Ok::<_, BoxError>(())).unwrap_err();
        assert!(e.to_string().contains("server db7 refused"), "{e}");
    }

    #[test]
    fn only_the_recipe_is_encoded() {
        let mut a = live("encode");
        a.get().unwrap();
        let bytes = crate::wire::encode(&a).unwrap().bytes;
        assert_eq!(bytes, crate::wire::encode(a.recipe()).unwrap().bytes);
        let back: Live<Counting> = crate::wire::decode(&bytes, Vec::new()).unwrap();
        assert!(!back.is_connected());
        assert_eq!(back.recipe().name, "encode");
        assert_eq!(
            format!("{back:?}"),
            "Live { recipe: Counting { name: \"encode\", refuse: false }, connected: false }"
        );
    }
}
