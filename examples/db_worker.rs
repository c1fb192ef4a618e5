//! A database worker: a long-running process that owns a database
//! connection, receives queries from its parent with `listen`, runs each
//! under a time limit, and `tell`s the rows back; it closes the connection
//! when it is stopped.
//!
//! ```sh
//! cargo run --release --example db_worker                       # SQLite, in a temp file
//! cargo run --release --example db_worker -- --postgres "host=/run/postgresql user=me dbname=test"
//! ```
//!
//! With `--postgres`, a password in the `PGPASSWORD` environment variable
//! is taken out of the environment (so the worker does not inherit it) and
//! travels to the worker as a `Secret` (never printed, wiped on drop).
//!
//! The hand-written Python original of this worker takes about 90 lines:
//! a queue pair, a connect-on-start, a reconnect-and-retry loop around each
//! query, a timeout thread, a restart loop counting attempts, a stop flag,
//! and a close in a `finally`. Here the worker itself (`DbWorker` and its
//! hooks) is 26 lines of code; with `Database`, which turns the rows of
//! two different databases into text, 80. Connecting in the worker,
//! reconnecting once when the connection broke (`Live::with`), the 30 s
//! limit per query, the three lives, the stop request and the per-query
//! timers are skprocess's.

use serde::{Deserialize, Serialize};
use skprocess::live::{postgres, rusqlite, Live, Postgres, Secret, Sqlite};
use skprocess::prelude::*;
use std::time::{Duration, Instant};

/// A query for the worker.
#[derive(Serialize, Deserialize, Debug)]
struct Query {
    id: u64,
    sql: String,
}

/// What came back: rows as text, or the database's error.
#[derive(Serialize, Deserialize, Debug)]
struct Reply {
    id: u64,
    rows: Result<Vec<Vec<String>>, String>,
}

/// Either database; only its recipe travels to the worker.
#[derive(Serialize, Deserialize)]
enum Database {
    Sqlite(Live<Sqlite>),
    Postgres(Live<Postgres>),
}

impl Database {
    /// Runs `sql`, reconnecting once if the connection broke.
    fn query(&mut self, sql: &str) -> Result<Vec<Vec<String>>, BoxError> {
        match self {
            Database::Sqlite(db) => db.with(|c| {
                let mut stmt = c.prepare(sql)?;
                let n = stmt.column_count();
                let rows =
                    stmt.query_map([], |row| (0..n).map(|i| row.get_ref(i).map(text)).collect())?;
                rows.collect::<rusqlite::Result<Vec<Vec<String>>>>()
            }),
            Database::Postgres(db) => db.with(|c| {
                let rows = c.simple_query(sql)?.into_iter().filter_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(r) => Some(
                        (0..r.len())
                            .map(|i| r.get(i).unwrap_or("NULL").to_string())
                            .collect(),
                    ),
                    _ => None,
                });
                Ok::<_, postgres::Error>(rows.collect())
            }),
        }
    }

    fn close(&mut self) {
        match self {
            Database::Sqlite(db) => db.reset(),
            Database::Postgres(db) => db.reset(),
        }
    }
}

/// An error's text followed by its sources' (the `postgres` crate keeps
/// the server's message in the source).
fn with_sources(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// An SQLite value as text.
fn text(v: rusqlite::types::ValueRef<'_>) -> String {
    use rusqlite::types::ValueRef::*;
    match v {
        Null => "NULL".into(),
        Integer(i) => i.to_string(),
        Real(f) => f.to_string(),
        Text(t) => String::from_utf8_lossy(t).into_owned(),
        Blob(b) => format!("<{} bytes>", b.len()),
    }
}

/// The worker: runs until stopped; three lives; 30 s per query.
#[derive(Process, Serialize, Deserialize)]
#[process(lives = 3, timeout(run = "30s"))]
struct DbWorker {
    db: Database,
    #[serde(skip)]
    pending: Option<Query>,
}

impl Process for DbWorker {
    /// Waits for the next query (or a stop request).
    fn prerun(&mut self, ctx: &mut Ctx) -> HookResult {
        while self.pending.is_none() && !ctx.should_stop() {
            self.pending = ctx.listen(Duration::from_millis(100))?;
        }
        Ok(())
    }

    /// Runs it: this hook's timer is the query time.
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        if let Some(q) = self.pending.take() {
            let rows = self.db.query(&q.sql).map_err(|e| with_sources(&*e));
            ctx.tell(&Reply { id: q.id, rows })?;
        }
        Ok(())
    }

    fn onfinish(&mut self, _ctx: &mut Ctx) -> HookResult {
        self.db.close();
        Ok(())
    }
}

/// Sends `sql` and waits for its reply.
fn ask(h: &Handle<DbWorker>, id: u64, sql: &str) -> skprocess::Result<Reply> {
    h.tell(&Query {
        id,
        sql: sql.into(),
    })?;
    match h.listen::<Reply>(Duration::from_secs(60))? {
        Some(r) if r.id == id => Ok(r),
        other => Err(Error::Usage(format!("no reply to query {id}: {other:?}"))),
    }
}

fn main() -> Result<(), BoxError> {
    // Before any thread starts: the worker must not inherit it.
    let password = std::env::var("PGPASSWORD").ok().map(Secret::new);
    std::env::remove_var("PGPASSWORD");
    tracing_subscriber::fmt().with_target(false).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::env::temp_dir().join(format!("skprocess-db-worker-{}", std::process::id()));
    let (db, table) = match args.as_slice() {
        [flag, url] if flag == "--postgres" => {
            let mut recipe = Postgres::new(url.as_str());
            if let Some(pw) = password {
                recipe = recipe.password(pw);
            }
            let table = format!("skprocess_db_worker_{}", std::process::id());
            (Database::Postgres(Live::new(recipe)), table)
        }
        [] => {
            std::fs::create_dir_all(&dir)?;
            let path = dir.join("worker.db");
            (
                Database::Sqlite(Live::new(Sqlite::new(path))),
                "fruit".into(),
            )
        }
        _ => return Err("usage: db_worker [--postgres PARAMS]".into()),
    };

    let mut h = DbWorker { db, pending: None }.start()?;
    let setup = [
        format!("CREATE TABLE {table} (name TEXT, price INTEGER)"),
        format!("INSERT INTO {table} VALUES ('apple', 3), ('pear', 4), ('fig', 9)"),
    ];
    for (i, sql) in setup.iter().enumerate() {
        ask(&h, i as u64, sql)?.rows?;
    }
    let r = ask(
        &h,
        10,
        &format!("SELECT name, price FROM {table} ORDER BY price"),
    )?;
    println!("rows: {:?}", r.rows?);
    let r = ask(&h, 11, "SELECT * FROM no_such_table")?;
    println!("a bad query is an answer, not a crash: {:?}", r.rows);

    let n = 500;
    let t = Instant::now();
    for id in 100..100 + n {
        let sql = format!(
            "SELECT count(*), sum(price) FROM {table} WHERE price > {}",
            id % 5
        );
        ask(&h, id, &sql)?.rows?;
    }
    let elapsed = t.elapsed();
    println!(
        "{n} queries through tell/listen in {elapsed:.2?}: {:.0} queries/s",
        n as f64 / elapsed.as_secs_f64()
    );

    ask(&h, 1000, &format!("DROP TABLE {table}"))?.rows?;
    h.stop();
    h.wait()?;
    let run = &h.timers().run;
    println!(
        "query time in the worker: mean {:?}, median {:?}, over {} queries",
        run.mean(),
        run.percentile(50.0),
        run.count()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
