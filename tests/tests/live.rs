//! Live resources (API.md §12) against real databases: SQLite files, and a
//! PostgreSQL server when `SKPROCESS_TEST_POSTGRES` names one (`.ci/run`
//! starts a throw-away cluster and sets it). Without it the PostgreSQL
//! tests print a `skipped:` line and pass, unless
//! `SKPROCESS_REQUIRE_SERVERS=1` makes a missing server a failure.
//!
//! Secrets are checked where they could leak: the child's
//! `/proc/<pid>/cmdline` and `environ`, errors, and log events.

mod support;

use serde::{Deserialize, Serialize};
use skprocess::live::rusqlite;
use skprocess::live::{Connect, Live, Secret, Sqlite};
use skprocess::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{finish, DEADLINE};

// ---------------------------------------------------------------------------
// Helpers.

/// A random token of 32 letters and digits: a secret that appears nowhere
/// else (not in the binary, not in the environment).
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// A fresh directory for one test's database files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "skprocess-live-{name}-{}-{}",
            std::process::id(),
            random_token()
        ));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }

    fn db(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a child's `/proc/<pid>/cmdline` and `environ` hold.
fn proc_text(pid: u32) -> String {
    let mut text = String::new();
    for file in ["cmdline", "environ"] {
        let bytes = std::fs::read(format!("/proc/{pid}/{file}")).expect("read /proc");
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    assert!(!text.is_empty());
    text
}

/// Log lines written by a `fmt` subscriber, collected in memory.
#[derive(Clone, Default)]
struct LogText(Arc<Mutex<Vec<u8>>>);

impl Write for LogText {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogText {
    /// Installs a `fmt` subscriber writing here, for this thread.
    fn install() -> (LogText, tracing::subscriber::DefaultGuard) {
        let log = LogText::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (log, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A connection's identity: SQLite temporary tables belong to one
/// connection, so a random number stored in one names it.
fn sqlite_conn_id(conn: &rusqlite::Connection) -> rusqlite::Result<i64> {
    conn.execute_batch("CREATE TEMP TABLE IF NOT EXISTS conn_id AS SELECT random() AS id")?;
    conn.query_row("SELECT id FROM conn_id", [], |r| r.get(0))
}

fn sqlite_count(path: &PathBuf, sql: &str) -> i64 {
    rusqlite::Connection::open(path)
        .and_then(|c| c.query_row(sql, [], |r| r.get(0)))
        .expect("count rows")
}

fn create_sqlite(path: &PathBuf, sql: &str) {
    rusqlite::Connection::open(path)
        .and_then(|c| c.execute_batch(sql))
        .expect("create the schema");
}

// ---------------------------------------------------------------------------
// SQLite.

/// Inserts a row per run, noting which connection did it.
#[derive(Process, Serialize, Deserialize, Clone)]
#[process(runs = 10)]
struct SqliteWriter {
    db: Live<Sqlite>,
    item: i64,
    /// (worker pid, connection id) per run.
    seen: Vec<(u32, i64)>,
}

impl Process for SqliteWriter {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let item = self.item;
        let id = self.db.with(|c| {
            c.execute("INSERT INTO t (item) VALUES (?1)", [item])?;
            sqlite_conn_id(c)
        })?;
        self.seen.push((ctx.pid(), id));
        Ok(())
    }
}

#[test]
fn a_child_connects_on_first_use_and_keeps_the_connection_across_runs() -> skprocess::Result<()> {
    let dir = TempDir::new("keep");
    let path = dir.db("keep.db");
    create_sqlite(&path, "CREATE TABLE t (item INTEGER)");
    let w = SqliteWriter {
        db: Live::new(Sqlite::new(&path)),
        item: 1,
        seen: vec![],
    };
    let mut h = w.start()?;
    let done = finish(&mut h)?;
    assert_eq!(done.seen.len(), 10);
    let ids: BTreeSet<_> = done.seen.iter().collect();
    assert_eq!(
        ids.len(),
        1,
        "one connection for every run: {:?}",
        done.seen
    );
    assert!(
        !done.db.is_connected(),
        "the connection stayed in the child"
    );
    assert_eq!(sqlite_count(&path, "SELECT count(*) FROM t"), 10);
    Ok(())
}

#[test]
fn pool_writers_count_exactly_and_share_one_connection_per_worker_and_recipe(
) -> skprocess::Result<()> {
    let dir = TempDir::new("pool");
    let (a, b) = (dir.db("a.db"), dir.db("b.db"));
    for p in [&a, &b] {
        create_sqlite(
            p,
            "PRAGMA journal_mode = WAL; CREATE TABLE t (item INTEGER)",
        );
    }
    let items: Vec<SqliteWriter> = (0..12)
        .map(|i| SqliteWriter {
            db: Live::new(Sqlite::new(if i % 2 == 0 { &a } else { &b })),
            item: i,
            seen: vec![],
        })
        .collect();
    let pool = Pool::new(3)?;
    let done = pool.map(items)?;
    // Exact counts: every run of every item wrote its row, once.
    assert_eq!(sqlite_count(&a, "SELECT count(*) FROM t"), 60);
    assert_eq!(sqlite_count(&b, "SELECT count(*) FROM t"), 60);
    for i in 0..12 {
        let path = if i % 2 == 0 { &a } else { &b };
        let n = sqlite_count(path, &format!("SELECT count(*) FROM t WHERE item = {i}"));
        assert_eq!(n, 10, "item {i}");
    }
    // One connection per worker and recipe, kept from item to item.
    let mut per_worker: BTreeMap<(u32, bool), BTreeSet<i64>> = BTreeMap::new();
    for (i, w) in done.iter().enumerate() {
        for &(pid, id) in &w.seen {
            per_worker.entry((pid, i % 2 == 0)).or_default().insert(id);
        }
    }
    for ((pid, on_a), ids) in &per_worker {
        assert_eq!(ids.len(), 1, "worker {pid} ({on_a}) used {ids:?}");
    }
    // Different recipes never share a connection.
    let on_a: BTreeSet<i64> = per_worker
        .iter()
        .filter(|(k, _)| k.1)
        .flat_map(|(_, v)| v.iter().copied())
        .collect();
    assert!(per_worker
        .iter()
        .filter(|(k, _)| !k.1)
        .all(|(_, v)| v.is_disjoint(&on_a)));
    Ok(())
}

/// Adds 1 to a counter row, `runs` times, each a read-modify-write in its
/// own transaction.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 40)]
struct SqliteCounter {
    db: Live<Sqlite>,
}

impl Process for SqliteCounter {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.db.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let n: i64 = tx.query_row("SELECT n FROM counter", [], |r| r.get(0))?;
            tx.execute("UPDATE counter SET n = ?1", [n + 1])?;
            tx.commit()
        })?;
        Ok(())
    }
}

#[test]
fn several_sqlite_writers_wait_for_the_lock_and_lose_no_update() -> skprocess::Result<()> {
    let dir = TempDir::new("busy");
    let path = dir.db("busy.db");
    create_sqlite(
        &path,
        "CREATE TABLE counter (n INTEGER); INSERT INTO counter VALUES (0)",
    );
    let mut handles = (0..4)
        .map(|_| {
            SqliteCounter {
                db: Live::new(Sqlite::new(&path).busy_timeout(DEADLINE)),
            }
            .start()
        })
        .collect::<skprocess::Result<Vec<_>>>()?;
    for h in &mut handles {
        finish(h)?;
    }
    assert_eq!(sqlite_count(&path, "SELECT n FROM counter"), 160);
    Ok(())
}

/// Tells before each try, then inserts one row.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct SqliteInsertOnce {
    db: Live<Sqlite>,
}

impl Process for SqliteInsertOnce {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        self.db.with(|c| {
            ctx.tell(&"trying")?;
            c.execute("INSERT INTO t (item) VALUES (2)", [])?;
            Ok::<_, BoxError>(())
        })
    }
}

#[test]
fn a_locked_database_is_returned_without_a_retry_or_waited_for() -> skprocess::Result<()> {
    let dir = TempDir::new("locked");
    let path = dir.db("locked.db");
    create_sqlite(&path, "CREATE TABLE t (item INTEGER)");
    let mut holder = rusqlite::Connection::open(&path).unwrap();
    let tx = holder
        .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
        .unwrap();
    tx.execute("INSERT INTO t (item) VALUES (1)", []).unwrap();

    // No busy timeout: the writer fails at once, and `with` does not
    // retry (the connection is fine; the database is busy).
    let mut h = SqliteInsertOnce {
        db: Live::new(Sqlite::new(&path).busy_timeout(Duration::ZERO)),
    }
    .start()?;
    let e = finish(&mut h).err().expect("the insert failed");
    assert!(e.to_string().contains("database is locked"), "{e}");
    assert_eq!(e.hook(), Some(Hook::Run));
    assert_eq!(h.listen::<String>(DEADLINE)?.as_deref(), Some("trying"));
    let after = h.listen::<String>(DEADLINE);
    assert!(
        matches!(after, Err(Error::Disconnected)),
        "the closure ran once: {after:?}"
    );

    // With a busy timeout, the writer waits for the lock to go.
    let mut h = SqliteInsertOnce {
        db: Live::new(Sqlite::new(&path).busy_timeout(DEADLINE)),
    }
    .start()?;
    assert_eq!(h.listen::<String>(DEADLINE)?.as_deref(), Some("trying"));
    tx.commit().unwrap();
    finish(&mut h)?;
    let order: Vec<i64> = {
        let c = rusqlite::Connection::open(&path).unwrap();
        let mut s = c.prepare("SELECT item FROM t ORDER BY rowid").unwrap();
        let rows = s.query_map([], |r| r.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    };
    assert_eq!(
        order,
        vec![1, 2],
        "the child wrote after the holder committed"
    );
    Ok(())
}

/// A recipe that cannot open its database: a path under a file.
#[test]
fn a_recipe_that_cannot_connect_fails_the_hook_with_its_reason() -> skprocess::Result<()> {
    let dir = TempDir::new("refuse");
    let file = dir.db("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let mut h = SqliteInsertOnce {
        db: Live::new(Sqlite::new(file.join("x.db"))),
    }
    .start_with(SqliteInsertOnce::config().lives(2))?;
    let e = finish(&mut h).err().expect("cannot connect");
    let text = e.to_string();
    assert!(text.contains("cannot connect"), "{text}");
    assert!(text.contains("unable to open database file"), "{text}");
    assert_eq!(e.attempt(), Some(2), "each failed connection costs a life");
    Ok(())
}

// ---------------------------------------------------------------------------
// Secrets.

/// Holds a secret; checks its own /proc files, logs it, waits for a word
/// from the parent, then fails with it in its error text.
#[derive(Process, Serialize, Deserialize, Debug)]
#[process(runs = 1)]
struct Keeper {
    token: Secret<String>,
}

impl Process for Keeper {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let token = self.token.expose();
        let own = format!(
            "{}{}",
            String::from_utf8_lossy(&std::fs::read("/proc/self/cmdline")?),
            String::from_utf8_lossy(&std::fs::read("/proc/self/environ")?)
        );
        // The value arrived whole; the parent compares length and sum.
        let sum: u64 = token.bytes().map(u64::from).sum();
        ctx.tell(&(own.contains(token.as_str()), token.len(), sum))?;
        tracing::info!(token = ?self.token, "keeping {} for {:?}", self.token, self);
        tracing::warn!(secret = %self.token, "still keeping it");
        let _go: Option<String> = ctx.listen(DEADLINE)?;
        Err(format!("gave up on {} (state {self:?})", self.token).into())
    }
}

#[test]
fn a_secret_stays_out_of_the_child_s_argv_environ_errors_and_logs() -> skprocess::Result<()> {
    let (log, _guard) = LogText::install();
    let token = random_token();
    let mut h = Keeper {
        token: Secret::new(token.clone()),
    }
    .start()?;
    let (seen_in_own_proc, len, sum): (bool, usize, u64) =
        h.listen(DEADLINE)?.expect("the child reports");
    assert!(
        !seen_in_own_proc,
        "the child found the secret in its cmdline or environ"
    );
    assert_eq!(len, token.len());
    assert_eq!(sum, token.bytes().map(u64::from).sum::<u64>());
    // Seen from outside while the child holds it.
    assert!(!proc_text(h.pid()).contains(&token));
    h.tell(&"go")?;
    let e = finish(&mut h).expect_err("the child fails");
    for text in [e.to_string(), format!("{e:?}")] {
        assert!(!text.contains(&token), "the error shows the secret: {text}");
        assert!(text.contains("gave up on ***"), "{text}");
    }
    let logs = log.text();
    assert!(
        logs.contains("keeping *** for Keeper { token: ***"),
        "{logs}"
    );
    assert!(logs.contains("secret=***"), "{logs}");
    assert!(!logs.contains(&token), "the logs show the secret: {logs}");
    Ok(())
}

// ---------------------------------------------------------------------------
// A recipe of the user's own, as in API.md §12.

/// An SQLite file through a recipe written by hand.
#[derive(Clone, Serialize, Deserialize)]
struct Db {
    path: PathBuf,
}

impl Connect for Db {
    type Conn = rusqlite::Connection;
    fn connect(&self) -> Result<Self::Conn, BoxError> {
        Ok(rusqlite::Connection::open(&self.path)?)
    }
}

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 10)]
struct Writer {
    db: Live<Db>,
    written: u64,
}

impl Process for Writer {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.db
            .with(|conn| conn.execute("INSERT INTO t VALUES (1)", []))?;
        self.written += 1;
        Ok(())
    }
}

#[test]
fn the_api_example_writes_ten_rows() -> skprocess::Result<()> {
    let dir = TempDir::new("api");
    let path = dir.db("api.db");
    let mut w = Writer {
        db: Live::new(Db { path: path.clone() }),
        written: 0,
    };
    let conn: &mut rusqlite::Connection = w.db.get()?;
    conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
    let mut h = w.start()?;
    assert_eq!(finish(&mut h)?.written, 10);
    assert_eq!(sqlite_count(&path, "SELECT count(*) FROM t"), 10);
    Ok(())
}

// ---------------------------------------------------------------------------
// PostgreSQL.

mod pg {
    use super::*;
    use skprocess::live::postgres::config::Host;
    use skprocess::live::postgres::{Client, Config, NoTls};
    use skprocess::live::Postgres;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    /// The test server's parameters, or `None` (with a visible line) when
    /// there is none; a failure instead when servers are required.
    fn server(test: &str) -> Option<String> {
        match std::env::var("SKPROCESS_TEST_POSTGRES") {
            Ok(url) if !url.trim().is_empty() => Some(url),
            _ => {
                support::skip_without(
                    &format!("live::pg::{test}"),
                    "no PostgreSQL server (set SKPROCESS_TEST_POSTGRES, as .ci/run does)",
                );
                None
            }
        }
    }

    fn admin(url: &str) -> Client {
        Client::connect(url, NoTls).expect("connect to the test server")
    }

    /// A name no other test (or run) uses.
    fn unique(prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "skp_{prefix}_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            random_token()[..6].to_lowercase()
        )
    }

    /// Parameters for `user` on the test server, without a password.
    fn params_for(url: &str, user: &str) -> String {
        let c: Config = url.parse().expect("parse SKPROCESS_TEST_POSTGRES");
        let host = match c.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = c.get_ports().first().copied().unwrap_or(5432);
        let db = c.get_dbname().unwrap_or("postgres");
        format!("host={host} port={port} user={user} dbname={db}")
    }

    /// A login role with a fresh password, dropped with the value.
    struct Role {
        url: String,
        name: String,
        password: String,
    }

    impl Role {
        fn new(url: &str, login: bool) -> Role {
            let name = unique("role");
            let password = random_token();
            let login = if login { "LOGIN" } else { "NOLOGIN" };
            admin(url)
                .batch_execute(&format!("CREATE ROLE {name} {login} PASSWORD '{password}'"))
                .expect("create a role");
            Role {
                url: url.into(),
                name,
                password,
            }
        }

        fn params(&self) -> String {
            params_for(&self.url, &self.name)
        }
    }

    impl Drop for Role {
        fn drop(&mut self) {
            let mut c = admin(&self.url);
            let _ = c.batch_execute(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{0}'; \
                 DROP ROLE IF EXISTS {0}",
                self.name
            ));
        }
    }

    /// A table, dropped with the value.
    struct Table {
        url: String,
        name: String,
    }

    impl Table {
        fn new(url: &str, columns: &str) -> Table {
            let name = unique("t");
            admin(url)
                .batch_execute(&format!("CREATE TABLE {name} ({columns})"))
                .expect("create a table");
            Table {
                url: url.into(),
                name,
            }
        }

        fn count(&self, filter: &str) -> i64 {
            admin(&self.url)
                .query_one(
                    &format!("SELECT count(*) FROM {} WHERE {filter}", self.name),
                    &[],
                )
                .expect("count")
                .get(0)
        }
    }

    impl Drop for Table {
        fn drop(&mut self) {
            let _ = admin(&self.url).batch_execute(&format!("DROP TABLE IF EXISTS {}", self.name));
        }
    }

    /// Inserts one row per run through `with`, noting its backend.
    #[derive(Process, Serialize, Deserialize, Clone)]
    #[process(runs = 20)]
    struct PgWriter {
        db: Live<Postgres>,
        table: String,
        item: i32,
        /// (worker pid, backend pid) per run.
        seen: Vec<(u32, i32)>,
    }

    impl Process for PgWriter {
        fn run(&mut self, ctx: &mut Ctx) -> HookResult {
            let sql = format!(
                "INSERT INTO {} (item, backend) VALUES ($1, pg_backend_pid()) RETURNING backend",
                self.table
            );
            let item = self.item;
            let row = self.db.with(|c| c.query_one(&sql, &[&item]))?;
            self.seen.push((ctx.pid(), row.get(0)));
            Ok(())
        }
    }

    #[test]
    fn pool_writers_count_exactly_and_share_one_connection_per_worker() -> skprocess::Result<()> {
        let Some(url) = server("pool_writers_count_exactly_and_share_one_connection_per_worker")
        else {
            return Ok(());
        };
        let table = Table::new(&url, "item int NOT NULL, backend int NOT NULL");
        let items: Vec<PgWriter> = (0..9)
            .map(|i| PgWriter {
                db: Live::new(Postgres::new(url.clone())),
                table: table.name.clone(),
                item: i,
                seen: vec![],
            })
            .collect();
        let pool = Pool::new(3)?;
        let done = pool.map(items)?;
        assert_eq!(table.count("true"), 180);
        for i in 0..9 {
            assert_eq!(table.count(&format!("item = {i}")), 20, "item {i}");
        }
        let mut per_worker: BTreeMap<u32, BTreeSet<i32>> = BTreeMap::new();
        for w in &done {
            for &(pid, backend) in &w.seen {
                per_worker.entry(pid).or_default().insert(backend);
            }
        }
        for (pid, backends) in &per_worker {
            assert_eq!(backends.len(), 1, "worker {pid} used backends {backends:?}");
        }
        Ok(())
    }

    /// Run 0 tells its backend pid and waits for a word; every run inserts
    /// through `with` and tells the backend that did it.
    #[derive(Process, Serialize, Deserialize)]
    #[process(runs = 3)]
    struct Survivor {
        db: Live<Postgres>,
        table: String,
        attempts: Vec<u32>,
    }

    impl Process for Survivor {
        fn run(&mut self, ctx: &mut Ctx) -> HookResult {
            if ctx.run_index() == 1 {
                let _go: Option<String> = ctx.listen(DEADLINE)?;
            }
            let sql = format!(
                "INSERT INTO {} (item, backend) VALUES (1, pg_backend_pid()) RETURNING backend",
                self.table
            );
            let backend: i32 = self.db.with(|c| c.query_one(&sql, &[]))?.get(0);
            ctx.tell(&backend)?;
            self.attempts.push(ctx.attempt());
            Ok(())
        }
    }

    #[test]
    fn a_connection_killed_by_the_server_is_rebuilt_by_with_without_losing_a_life(
    ) -> skprocess::Result<()> {
        let Some(url) =
            server("a_connection_killed_by_the_server_is_rebuilt_by_with_without_losing_a_life")
        else {
            return Ok(());
        };
        let table = Table::new(&url, "item int NOT NULL, backend int NOT NULL");
        let (log, _guard) = LogText::install();
        let mut h = Survivor {
            db: Live::new(Postgres::new(url.clone())),
            table: table.name.clone(),
            attempts: vec![],
        }
        .start()?;
        let first: i32 = h.listen(DEADLINE)?.expect("run 0's backend");
        let mut c = admin(&url);
        let killed: bool = c
            .query_one("SELECT pg_terminate_backend($1)", &[&first])
            .unwrap()
            .get(0);
        assert!(killed);
        let end = Instant::now() + DEADLINE;
        while c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&first],
            )
            .unwrap()
            .get::<_, i64>(0)
            > 0
        {
            assert!(
                Instant::now() < end,
                "backend {first} outlived its termination"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        h.tell(&"go")?;
        let second: i32 = h.listen(DEADLINE)?.expect("run 1's backend");
        let third: i32 = h.listen(DEADLINE)?.expect("run 2's backend");
        let done = finish(&mut h)?;
        assert_eq!(done.attempts, vec![1, 1, 1], "no life was lost");
        assert_ne!(second, first, "a new connection");
        assert_eq!(third, second, "kept after the reconnection");
        assert_eq!(table.count("true"), 3, "each run's row written once");
        let logs = log.text();
        assert!(
            logs.contains("live connection broke; reconnecting"),
            "{logs}"
        );
        Ok(())
    }

    /// Connects in prerun, telling the attempt first.
    #[derive(Process, Serialize, Deserialize)]
    #[process(runs = 1, lives = 2)]
    struct Connector {
        db: Live<Postgres>,
    }

    impl Process for Connector {
        fn prerun(&mut self, ctx: &mut Ctx) -> HookResult {
            ctx.tell(&ctx.attempt())?;
            self.db.get()?;
            Ok(())
        }
        fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
            Ok(())
        }
    }

    #[test]
    fn a_refusing_server_fails_the_hook_with_its_own_message_and_costs_a_life(
    ) -> skprocess::Result<()> {
        let Some(url) =
            server("a_refusing_server_fails_the_hook_with_its_own_message_and_costs_a_life")
        else {
            return Ok(());
        };
        let role = Role::new(&url, false);
        let db = Postgres::new(role.params()).password(Secret::new(role.password.clone()));
        let mut h = Connector { db: Live::new(db) }.start()?;
        let e = finish(&mut h).err().expect("the server refuses");
        let text = e.to_string();
        assert!(
            text.contains(&format!(
                "role \"{}\" is not permitted to log in",
                role.name
            )),
            "{text}"
        );
        assert_eq!(e.hook(), Some(Hook::Prerun));
        assert_eq!(e.attempt(), Some(2));
        assert_eq!(h.listen::<u32>(DEADLINE)?, Some(1));
        assert_eq!(
            h.listen::<u32>(DEADLINE)?,
            Some(2),
            "a second life was tried"
        );
        assert!(!text.contains(&role.password));
        Ok(())
    }

    #[test]
    fn a_wrong_password_is_a_clear_error_that_does_not_contain_it() -> skprocess::Result<()> {
        let Some(url) = server("a_wrong_password_is_a_clear_error_that_does_not_contain_it") else {
            return Ok(());
        };
        let role = Role::new(&url, true);
        let wrong = random_token();
        let db = Postgres::new(role.params()).password(Secret::new(wrong.clone()));
        // In the parent.
        let e = Live::new(db.clone()).get().err().expect(
            "the server accepted a wrong password: give the test server password authentication",
        );
        // In a child.
        let mut h = Connector { db: Live::new(db) }.start()?;
        let child = finish(&mut h).err().expect("a wrong password fails");
        for text in [e.to_string(), child.to_string()] {
            assert!(
                text.contains(&format!(
                    "password authentication failed for user \"{}\"",
                    role.name
                )),
                "{text}"
            );
        }
        for text in [e.to_string(), format!("{e:?}"), child.to_string()] {
            assert!(
                !text.contains(&wrong),
                "the error shows the password: {text}"
            );
            assert!(!text.contains(&role.password), "{text}");
        }
        Ok(())
    }

    /// Connects, tells its backend pid, and holds the connection until told.
    #[derive(Process, Serialize, Deserialize)]
    #[process(runs = 1)]
    struct Holder {
        db: Live<Postgres>,
    }

    impl Process for Holder {
        fn run(&mut self, ctx: &mut Ctx) -> HookResult {
            let backend: i32 = self
                .db
                .get()?
                .query_one("SELECT pg_backend_pid()", &[])?
                .get(0);
            tracing::info!(db = ?self.db, "connected");
            ctx.tell(&backend)?;
            let _done: Option<String> = ctx.listen(DEADLINE)?;
            Ok(())
        }
    }

    #[test]
    fn a_postgres_password_stays_out_of_the_child_s_argv_environ_and_logs() -> skprocess::Result<()>
    {
        let Some(url) =
            server("a_postgres_password_stays_out_of_the_child_s_argv_environ_and_logs")
        else {
            return Ok(());
        };
        let role = Role::new(&url, true);
        let (log, _guard) = LogText::install();
        let db = Postgres::new(role.params()).password(Secret::new(role.password.clone()));
        let mut h = Holder { db: Live::new(db) }.start()?;
        let backend: i32 = h.listen(DEADLINE)?.expect("connected");
        assert!(backend > 0);
        assert!(!proc_text(h.pid()).contains(&role.password));
        h.tell(&"done")?;
        let done = finish(&mut h)?;
        assert!(!format!("{:?}", done.db).contains(&role.password));
        let logs = log.text();
        assert!(
            logs.contains("connected") && logs.contains("password: Some(***)"),
            "{logs}"
        );
        assert!(!logs.contains(&role.password), "{logs}");
        Ok(())
    }
}
