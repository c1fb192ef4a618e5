//! `live::Sqlite`: a ready recipe for an SQLite database file.

use super::Connect;
use crate::error::BoxError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A recipe for an SQLite database (feature `sqlite`):
/// `Conn = rusqlite::Connection`, with SQLite built from its bundled
/// sources, so no system library is needed.
///
/// Each connection waits up to its [busy timeout](Sqlite::busy_timeout)
/// (5 s unless set) for a lock another writer holds, instead of failing at
/// once with `database is locked`: several processes can write to one file.
/// A connection to a file does not break, so
/// [`Live::with`](super::Live::with) never reconnects an SQLite connection:
/// it returns every error as is.
///
/// # Examples
///
/// ```
/// use skprocess::live::{Live, Sqlite};
///
/// # fn main() -> Result<(), skprocess::BoxError> {
/// let dir = std::env::temp_dir().join(format!("skprocess-doc-sqlite-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let mut db = Live::new(Sqlite::new(dir.join("app.db")).init("PRAGMA journal_mode = WAL"));
/// db.with(|c| c.execute_batch("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))?;
/// db.with(|c| c.execute("INSERT INTO t VALUES (?1)", [42]))?;
/// let x: i64 = db.get()?.query_row("SELECT x FROM t", [], |r| r.get(0))?;
/// assert_eq!(x, 42);
/// # drop(db);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sqlite {
    path: PathBuf,
    busy_timeout: Duration,
    init: Option<String>,
}

impl Sqlite {
    /// The database file at `path` (created when missing).
    pub fn new(path: impl Into<PathBuf>) -> Sqlite {
        Sqlite {
            path: path.into(),
            busy_timeout: Duration::from_secs(5),
            init: None,
        }
    }

    /// How long a statement waits for a lock held by another connection
    /// before it fails with `database is locked` (`Duration::ZERO`: fail at
    /// once).
    pub fn busy_timeout(mut self, timeout: Duration) -> Sqlite {
        self.busy_timeout = timeout;
        self
    }

    /// SQL run on every new connection, pragmas say
    /// (`PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON`).
    pub fn init(mut self, sql: impl Into<String>) -> Sqlite {
        self.init = Some(sql.into());
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Connect for Sqlite {
    type Conn = rusqlite::Connection;

    fn connect(&self) -> Result<rusqlite::Connection, BoxError> {
        let conn = rusqlite::Connection::open(&self.path)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        conn.busy_timeout(self.busy_timeout)?;
        if let Some(sql) = &self.init {
            conn.execute_batch(sql)?;
        }
        Ok(conn)
    }

    // `is_valid` keeps its default: a connection to a local file does not
    // break, so `with` returns every error as is. A probe query would be
    // wrong here: even `SELECT 1` fails with `database is locked` while
    // another connection holds the lock and the schema is not loaded yet,
    // and a busy database is no reason to reconnect and run twice.
}
