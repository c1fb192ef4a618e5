//! Live resources (`skprocess::live`), each figure beside its baseline:
//!
//! - `Live::get()` on an open connection, beside a plain `&mut` to the
//!   same connection;
//! - a reconnection against a real PostgreSQL: `reset()` then `get()`,
//!   beside `postgres::Client::connect`; and `with()` rebuilding a
//!   connection the server terminated (`pg_terminate_backend`), beside a
//!   fresh connect and the same query;
//! - the db_worker loop (a query told to a worker process, its row told
//!   back), beside the same queries run in this process, for SQLite and
//!   PostgreSQL.
//!
//! The PostgreSQL figures need `SKPROCESS_TEST_POSTGRES` (the parameters
//! of a server, as `.ci/postgres start` exports them); without it they
//! print a `skipped:` line.

use criterion::{black_box, criterion_group, Criterion};
use serde::{Deserialize, Serialize};
use skprocess::live::postgres::{Client, NoTls};
use skprocess::live::{rusqlite, Live, Postgres, Sqlite};
use skprocess::prelude::*;
use skprocess_benches::{report, report_rate};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Tells the worker to end.
const END: i64 = i64::MIN;
/// Queries per throughput sample.
const QUERIES: usize = 2000;
const SQL_SQLITE: &str = "SELECT count(*), sum(price) FROM fruit WHERE price > ?1";

fn postgres_params() -> Option<String> {
    let url = std::env::var("SKPROCESS_TEST_POSTGRES").ok();
    if url.is_none() {
        println!("skipped: PostgreSQL figures (set SKPROCESS_TEST_POSTGRES, see BENCHMARKS.md)");
    }
    url
}

/// The database the worker queries.
#[derive(Serialize, Deserialize)]
enum Db {
    Sqlite(Live<Sqlite>),
    Postgres { db: Live<Postgres>, table: String },
}

impl Db {
    fn query(&mut self, x: i64) -> Result<(i64, i64), BoxError> {
        match self {
            Db::Sqlite(db) => db.with(|c| sqlite_query(c, x)),
            Db::Postgres { db, table } => db.with(|c| postgres_query(c, table, x)),
        }
    }
}

fn sqlite_query(c: &rusqlite::Connection, x: i64) -> rusqlite::Result<(i64, i64)> {
    c.prepare_cached(SQL_SQLITE)?
        .query_row([x], |r| Ok((r.get(0)?, r.get(1)?)))
}

fn postgres_query(
    c: &mut Client,
    table: &str,
    x: i64,
) -> Result<(i64, i64), skprocess::live::postgres::Error> {
    let sql = format!("SELECT count(*), sum(price)::bigint FROM {table} WHERE price > $1::bigint");
    let row = c.query_one(&sql, &[&x])?;
    Ok((row.get(0), row.get(1)))
}

/// The db_worker loop: a number in, a row out, until `END`.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct QueryWorker {
    db: Db,
}

impl Process for QueryWorker {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        loop {
            match ctx.listen::<i64>(Duration::from_secs(3600))? {
                Some(END) => return Ok(()),
                Some(x) => ctx.tell(&self.db.query(x)?)?,
                None => {}
            }
        }
    }
}

/// An SQLite file with the table the queries read, removed on drop.
struct SqliteFile(PathBuf);

impl SqliteFile {
    fn new() -> SqliteFile {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "skprocess-bench-live-{}-{n}.db",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        rusqlite::Connection::open(&path)
            .and_then(|c| {
                c.execute_batch(
                    "CREATE TABLE fruit (name TEXT, price INTEGER);
                     INSERT INTO fruit VALUES ('apple', 3), ('pear', 4), ('fig', 9)",
                )
            })
            .expect("create the SQLite file");
        SqliteFile(path)
    }
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A PostgreSQL table like the SQLite one, dropped on drop.
struct PgTable {
    params: String,
    name: String,
}

impl PgTable {
    fn new(params: &str) -> PgTable {
        let name = format!("skprocess_bench_live_{}", std::process::id());
        Client::connect(params, NoTls)
            .and_then(|mut c| {
                c.batch_execute(&format!(
                    "DROP TABLE IF EXISTS {name};
                     CREATE TABLE {name} (name TEXT, price INTEGER);
                     INSERT INTO {name} VALUES ('apple', 3), ('pear', 4), ('fig', 9)"
                ))
            })
            .expect("create the PostgreSQL table");
        PgTable {
            params: params.into(),
            name,
        }
    }
}

impl Drop for PgTable {
    fn drop(&mut self) {
        if let Ok(mut c) = Client::connect(&self.params, NoTls) {
            let _ = c.batch_execute(&format!("DROP TABLE IF EXISTS {}", self.name));
        }
    }
}

/// Queries per second through a worker process, and in this process:
/// medians of 5 interleaved samples.
fn loop_rates(db: impl Fn() -> Db, mut in_process: impl FnMut(i64)) -> (f64, f64) {
    let mut h = QueryWorker { db: db() }.start().expect("start the worker");
    let ask = |x: i64| {
        h.tell(&x).expect("tell");
        let r: (i64, i64) = h
            .listen(Duration::from_secs(60))
            .expect("listen")
            .expect("a reply");
        black_box(r);
    };
    ask(0); // connected
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        for i in 0..QUERIES {
            ask(i as i64 % 5);
        }
        ours.push(QUERIES as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for i in 0..QUERIES {
            in_process(i as i64 % 5);
        }
        base.push(QUERIES as f64 / t.elapsed().as_secs_f64());
    }
    h.tell(&END).expect("tell");
    h.wait().expect("the worker ends");
    (median(ours), median(base))
}

/// Nanoseconds per call of `f`: the median of 21 batches of 1 M calls.
fn ns_per_call(mut f: impl FnMut()) -> f64 {
    const BATCH: u32 = 1_000_000;
    let samples = (0..21)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..BATCH {
                f();
            }
            t.elapsed().as_secs_f64() * 1e9 / f64::from(BATCH)
        })
        .collect();
    median(samples)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn median_duration(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn summary() {
    // get() on an open connection.
    let file = SqliteFile::new();
    let mut live = Live::new(Sqlite::new(&file.0));
    live.get().expect("connect");
    let get = ns_per_call(|| {
        black_box(live.get().expect("get"));
    });
    let mut plain = Some(rusqlite::Connection::open(&file.0).expect("open"));
    let direct = ns_per_call(|| {
        black_box(black_box(&mut plain).as_mut());
    });
    println!(
        "SUMMARY {:<40} {:>12} | {:<34} {:>12} | ratio {:>6.2}x",
        "Live::get() on an open connection",
        format!("{get:.1} ns"),
        "a plain &mut to the connection",
        format!("{direct:.1} ns"),
        get / direct
    );

    // The db_worker loop, SQLite.
    let conn = rusqlite::Connection::open(&file.0).expect("open");
    let (ours, base) = loop_rates(
        || Db::Sqlite(Live::new(Sqlite::new(&file.0))),
        |x| {
            black_box(sqlite_query(&conn, x).expect("query"));
        },
    );
    report_rate(
        "db_worker loop, SQLite (tell/listen)",
        ours,
        "the same queries in-process",
        base,
        "queries/s",
    );

    let Some(params) = postgres_params() else {
        return;
    };
    let table = PgTable::new(&params);

    // Reconnecting: reset() + get(), beside a bare connect.
    let mut live = Live::new(Postgres::new(params.clone()));
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    let mut bare = None;
    for _ in 0..21 {
        // Each connect follows the close of the one before, alike.
        live.reset();
        let t = Instant::now();
        live.get().expect("connect");
        ours.push(t.elapsed());
        drop(bare.take());
        let t = Instant::now();
        bare = Some(Client::connect(&params, NoTls).expect("connect"));
        base.push(t.elapsed());
    }
    report(
        "Live<Postgres> reset() + get()",
        median_duration(ours),
        "postgres::Client::connect",
        median_duration(base),
    );

    // with() after the server ended the session.
    let mut admin = Client::connect(&params, NoTls).expect("connect");
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..11 {
        let backend: i32 = live
            .get()
            .expect("connect")
            .query_one("SELECT pg_backend_pid()", &[])
            .expect("backend")
            .get(0);
        admin
            .execute("SELECT pg_terminate_backend($1)", &[&backend])
            .expect("terminate");
        while admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&backend],
            )
            .expect("activity")
            .get::<_, i64>(0)
            > 0
        {
            std::thread::yield_now();
        }
        let t = Instant::now();
        live.with(|c| c.query_one("SELECT 1", &[]))
            .expect("with() reconnects");
        ours.push(t.elapsed());
        let t = Instant::now();
        let mut c = Client::connect(&params, NoTls).expect("connect");
        black_box(c.query_one("SELECT 1", &[]).expect("query"));
        base.push(t.elapsed());
    }
    report(
        "with() after pg_terminate_backend",
        median_duration(ours),
        "connect + the same query",
        median_duration(base),
    );

    // The db_worker loop, PostgreSQL.
    let mut client = Client::connect(&params, NoTls).expect("connect");
    let (ours, base) = loop_rates(
        || Db::Postgres {
            db: Live::new(Postgres::new(params.clone())),
            table: table.name.clone(),
        },
        |x| {
            black_box(postgres_query(&mut client, &table.name, x).expect("query"));
        },
    );
    report_rate(
        "db_worker loop, PostgreSQL (tell/listen)",
        ours,
        "the same queries in-process",
        base,
        "queries/s",
    );
}

fn detailed(c: &mut Criterion) {
    let mut g = c.benchmark_group("live");
    g.sample_size(30).measurement_time(Duration::from_secs(3));
    let file = SqliteFile::new();
    let mut live = Live::new(Sqlite::new(&file.0));
    live.get().expect("connect");
    g.bench_function("Live::get() on an open connection", |b| {
        b.iter(|| {
            black_box(live.get().expect("get"));
        })
    });
    g.bench_function("SQLite query in-process", |b| {
        b.iter(|| black_box(live.with(|c| sqlite_query(c, 2)).expect("query")))
    });
    g.finish();
}

criterion_group!(benches, detailed);

fn main() {
    if !skprocess_benches::summary_only() {
        benches();
    }
    summary();
    Criterion::default().configure_from_args().final_summary();
}
