//! OS processes as easy as threads and as tidy as objects.
//!
//! Write a struct, derive [`Process`], implement its hooks, and call
//! [`start`](Process::start): the struct is encoded into a fresh child
//! process, runs its lifecycle there with retries ("lives"), per-hook
//! timeouts and per-hook timers, talks to its parent with
//! [`tell`](Handle::tell)/[`listen`](Handle::listen), and comes back as the
//! result of [`wait`](Handle::wait). A child that crashes, hangs or leaks
//! never takes the program down.
//!
//! # A process
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use skprocess::prelude::*;
//!
//! #[derive(Process, Serialize, Deserialize)]
//! #[process(runs = 5, lives = 3, timeout(run = "30s"))]
//! struct Squarer { x: u64, total: u64 }
//!
//! impl Process for Squarer {
//!     fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
//!         self.total += self.x * self.x;
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> skprocess::Result<()> {
//! let mut h = Squarer { x: 3, total: 0 }.start()?;
//! let done = h.wait()?;
//! assert_eq!(done.total, 45);
//! println!("{}", h.timers());
//! # Ok(())
//! # }
//! ```
//!
//! # Zero set-up
//!
//! Children are started by re-executing the current binary; the child takes
//! over before `main` runs, so binaries, examples, tests and benches need no
//! set-up line. [`is_child`] tells whether the current process is a spawned
//! one. A child may start children of its own.
//!
//! The re-exec happens once per parent, for a fork server that waits before
//! `main` and forks each later child, which saves the exec. The children are
//! the same: children of the parent, in the parent's environment, working
//! directory and resource limits as of `start()`, ended when the parent
//! dies. The umask and credentials come from the moment the server started;
//! `SKPROCESS_FORK_SERVER=0` re-executes every child instead.
//!
//! # Lives, timeouts and errors
//!
//! A life is lost when a hook returns `Err`, panics, exceeds its timeout, or
//! the child dies (signal, `abort()`, out of memory, `exit()`). The next
//! attempt starts from the initial state in a fresh child. The parent
//! enforces timeouts by killing the child, so a hook stuck in C code still
//! ends on time. When every life is used, [`Handle::wait`] returns an
//! [`Error`] whose text names the process, the hook, the run and the attempt.
//!
//! # Messaging: tell and listen
//!
//! A handle and its process exchange typed messages in both directions:
//! any `Serialize + DeserializeOwned` value, in order, none lost.
//! [`listen`](Handle::listen) returns `Ok(None)` on timeout; once the
//! process has ended and its messages are read it returns
//! [`Error::Disconnected`] at once. A message read as the wrong type is an
//! [`Error::WrongType`] and the next message can still be read.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use skprocess::prelude::*;
//! use std::time::Duration;
//!
//! #[derive(Process, Serialize, Deserialize)]
//! struct Echo;
//!
//! impl Process for Echo {
//!     fn run(&mut self, ctx: &mut Ctx) -> HookResult {
//!         match ctx.listen::<String>(Duration::from_secs(5))? {
//!             Some(s) if s == "bye" => ctx.stop(),
//!             Some(s) => ctx.tell(&s.to_uppercase())?,
//!             None => {}
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> skprocess::Result<()> {
//! let mut h = Echo.start()?;
//! h.tell("hi")?;
//! assert_eq!(h.listen::<String>(Duration::from_secs(5))?.as_deref(), Some("HI"));
//! h.tell("bye")?;
//! h.wait()?;
//! # Ok(())
//! # }
//! ```
//!
//! # Pipe
//!
//! [`Pipe`] is the fast path between two processes: shared-memory rings
//! with futex wake-ups. Its ends are fields of a process like any other, and
//! a peer that died makes `recv` return an error instead of hanging.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use skprocess::prelude::*;
//!
//! #[derive(Process, Serialize, Deserialize)]
//! #[process(runs = 1)]
//! struct Producer { out: PipeSender }
//!
//! impl Process for Producer {
//!     fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
//!         for i in 0..1000u32 {
//!             self.out.send(&i)?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> skprocess::Result<()> {
//! let (tx, rx) = Pipe::one_way()?;
//! let mut h = Producer { out: tx }.start()?;
//! let sum: u32 = (0..1000).map(|_| rx.recv::<u32>()).sum::<skprocess::Result<u32>>()?;
//! assert_eq!(sum, 499_500);
//! h.wait()?;
//! # Ok(())
//! # }
//! ```
//!
//! # Share
//!
//! [`Share<T>`](Share) holds one value in shared memory, under a robust
//! cross-process lock: `share.lock()?.counter += 1` is exact however many
//! processes do it at once, and a process killed while holding the lock
//! loses only its own unfinished update.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use skprocess::prelude::*;
//!
//! #[derive(Process, Serialize, Deserialize)]
//! #[process(runs = 100)]
//! struct Bump { hits: Share<u64> }
//!
//! impl Process for Bump {
//!     fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
//!         *self.hits.lock()? += 1;
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> skprocess::Result<()> {
//! let hits = Share::new(0u64)?;
//! let mut a = Bump { hits: hits.clone() }.start()?;
//! let mut b = Bump { hits: hits.clone() }.start()?;
//! a.wait()?;
//! b.wait()?;
//! assert_eq!(hits.get()?, 200);
//! # Ok(())
//! # }
//! ```
//!
//! # Queue and shared slices
//!
//! A [`Queue<T>`](Queue) is a bounded queue that any number of processes
//! push to and pop from (a task queue for workers, a result queue back):
//! `push` waits while it is full, `pop` while it is empty, `close` ends it
//! for everyone. Each item goes to exactly one consumer; a process killed
//! inside `push` or `pop` leaves the queue consistent. Delivery is at most
//! once: a consumer that dies after popping loses that item, so work that
//! must be retried belongs in a [`Pool`].
//!
//! A [`SharedSlice<T>`](SharedSlice) copies a slice of plain data
//! ([`bytemuck::Pod`]) once into sealed, read-only shared memory; it
//! travels as a descriptor and every process reads it in place, with no
//! copy. A [`SharedSliceMut<T>`](SharedSliceMut) is changed in place under a
//! robust cross-process lock.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use skprocess::prelude::*;
//!
//! #[derive(Process, Serialize, Deserialize)]
//! #[process(runs = 1)]
//! struct Worker {
//!     tasks: Queue<usize>,
//!     results: Queue<(usize, f64)>,
//!     data: SharedSlice<f64>,
//!     seen: SharedSliceMut<u64>,
//! }
//!
//! impl Process for Worker {
//!     fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
//!         // Pops until the queue is closed and empty.
//!         while let Ok(row) = self.tasks.pop() {
//!             let sum = self.data[row * 10..][..10].iter().sum();
//!             self.results.push(&(row, sum))?;
//!             self.seen.lock()?[row] += 1;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> skprocess::Result<()> {
//! let data: Vec<f64> = (0..100).map(f64::from).collect();
//! let (tasks, results) = (Queue::new()?, Queue::new()?);
//! let data = SharedSlice::from_slice(&data)?;
//! let seen = SharedSliceMut::zeroed(10)?;
//! let mut workers = (0..2)
//!     .map(|_| Worker { tasks: tasks.clone(), results: results.clone(),
//!                       data: data.clone(), seen: seen.clone() }.start())
//!     .collect::<skprocess::Result<Vec<_>>>()?;
//! for row in 0..10 {
//!     tasks.push(&row)?;
//! }
//! tasks.close();
//! let mut total = 0.0;
//! for _ in 0..10 {
//!     let (_row, sum) = results.pop()?;
//!     total += sum;
//! }
//! for w in &mut workers {
//!     w.wait()?;
//! }
//! assert_eq!(total, 4950.0);
//! assert_eq!(seen.to_vec()?, [1; 10]);
//! # Ok(())
//! # }
//! ```
//!
//! # Pool
//!
//! A [`Pool`] keeps worker processes and reuses them: `map` runs each
//! item's whole lifecycle in a worker and returns the final states in input
//! order; `map_fn` maps a plain function over many small items, batched so
//! that the cost of crossing processes stays small. A worker that crashes is
//! replaced and only its item is retried (per the item's `lives`).
//!
//! ```
//! use skprocess::prelude::*;
//!
//! fn double(x: u64) -> u64 { x * 2 }
//!
//! # fn main() -> skprocess::Result<()> {
//! let pool = Pool::new(2)?;
//! let doubled = pool.map_fn(double, 0..1000u64)?;
//! assert_eq!(doubled[999], 1998);
//! # Ok(())
//! # }
//! ```
//!
//! A [`Launcher`] starts the workers elsewhere: `Launcher::mpirun()` or
//! `Launcher::slurm()` runs them as tasks of a cluster engine, on other
//! machines, and they connect back over TCP (`SKPROCESS_ADVERTISE` names
//! the address they dial); the pool behaves the same.
//!
//! # Logging
//!
//! What a child logs arrives in the subscriber that was current where the
//! process was started (whatever the parent installed); the child needs no
//! set-up:
//!
//! - `tracing` events, with their level, target, message and fields, and
//!   the fields `process` (the type name; for a pool item, the type name
//!   and the worker, `app::Job[worker 3]`) and `pid` added;
//! - records of the `log` crate (from any crate that uses the `log`
//!   facade), as events with the record's level, target, message, module
//!   path and line, and `process` and `pid`;
//! - `tracing` spans, made again in the parent's subscriber as spans with
//!   their name, target, level and fields (values recorded later
//!   included), `process` and `pid`, nested under the span current at
//!   `start()` (or `Pool::new`), entered, exited and closed in the child's
//!   order; the events in them have them as their scope. At most 1024 of
//!   a child's spans are open at once: what happens in a span opened past
//!   that goes to the nearest span of the child that has one.
//!
//! Each child's events and spans arrive in the order the child emitted
//! them (one order for all its threads), none lost, none mixed mid-line.
//! [`Config::capture_output`] turns the child's standard output and error
//! into events too (`info` and `warn`, target `skprocess::output`);
//! [`Config::log_dir`] also writes one file per child life,
//! `<process>-<pid>.log` (a supervised child's is named after the child:
//! `shard-0-<pid>.log` for `shard/0`), each event with the time the child emitted it, in
//! the child's order, captured lines placed after the events the child
//! emitted before them. A pool takes both settings from its builder
//! ([`PoolBuilder::capture_output`], [`PoolBuilder::log_dir`]); each worker
//! life writes `pool-worker-<index>-<pid>.log`.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use skprocess::prelude::*;
//!
//! #[derive(Process, Serialize, Deserialize)]
//! #[process(runs = 3)]
//! struct Worker { id: u32 }
//!
//! impl Process for Worker {
//!     fn run(&mut self, ctx: &mut Ctx) -> HookResult {
//!         let _step = tracing::info_span!("step", run = ctx.run_index()).entered();
//!         tracing::info!(worker = self.id, "working");
//!         log::debug!("a record of the log crate");
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> skprocess::Result<()> {
//! tracing_subscriber::fmt().init();
//! let _batch = tracing::info_span!("batch").entered();
//! let mut a = Worker { id: 1 }.start()?;
//! let mut b = Worker { id: 2 }.start_with(Worker::config().capture_output(true))?;
//! a.wait()?;
//! b.wait()?;
//! // Prints lines such as
//! // INFO batch:step{run=0 process="app::Worker" pid=4242}: app: working worker=1 process="app::Worker" pid=4242
//! # Ok(())
//! # }
//! ```
//!
//! **Exporting traces.** Since a child's spans are spans of the parent's
//! subscriber, a parent that exports traces exports them too: with
//! OpenTelemetry (`tracing-opentelemetry` in the parent's subscriber), a
//! child's spans are in the trace that was current at `start()`, with the
//! same trace id and the starting span as their parent
//! (`examples/otel.rs`). Their start and end times are those of the
//! parent receiving them, up to 20 ms after the child (the log file has
//! the child's own times).
//!
//! **When the parent is slow, or the child is killed.** A child that logs
//! faster than the parent's subscriber takes events slows down to its pace
//! once its 1 MiB buffer is full (nothing is dropped). A child that returns
//! or fails normally loses nothing. A child that is killed (a timeout,
//! `kill`, a crash) loses what it had not sent yet, its last 20 ms of
//! events while the parent keeps up; the spans it left open are closed in
//! the parent when it is gone, and its captured output is all there.
//!
//! # Live resources
//!
//! A database connection cannot cross a process boundary; the recipe for
//! it can. A [`live::Connect`] type is that recipe (a path, connection
//! parameters, a [`live::Secret`] password), and a [`live::Live`] field
//! holds it: only the recipe is encoded, each process connects on first
//! use ([`get`](live::Live::get) or [`with`](live::Live::with)) and keeps
//! the connection across runs, and the items of a [`Pool`] with equal
//! recipes share one connection per worker. Ready recipes:
//! `live::Sqlite` (feature `sqlite`) and `live::Postgres` (feature
//! `postgres`).
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use skprocess::live::{Connect, Live, Secret};
//! use skprocess::prelude::*;
//!
//! /// A stand-in for a client that logs in with a token.
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Api { token: Secret<String> }
//!
//! impl Connect for Api {
//!     type Conn = Vec<String>; // the requests sent on this connection
//!     fn connect(&self) -> Result<Self::Conn, BoxError> {
//!         Ok(vec![format!("login {}", self.token.expose().len())])
//!     }
//! }
//!
//! #[derive(Process, Serialize, Deserialize)]
//! #[process(runs = 3)]
//! struct Caller { api: Live<Api>, sent: usize }
//!
//! impl Process for Caller {
//!     fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
//!         self.sent = self.api.with(|conn| {
//!             conn.push("GET /status".into());
//!             Ok::<_, BoxError>(conn.len())
//!         })?;
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> skprocess::Result<()> {
//! let api = Live::new(Api { token: Secret::new("s3cr3t".into()) });
//! assert!(!format!("{:?}", api.recipe().token).contains("s3cr3t"));
//! let mut h = Caller { api, sent: 0 }.start()?;
//! assert_eq!(h.wait()?.sent, 4); // one login, then three requests on it
//! # Ok(())
//! # }
//! ```
//!
//! What [`with`](live::Live::with) retries: when its closure fails and the
//! recipe's [`is_valid`](live::Connect::is_valid) says the connection is
//! gone (the server restarted, ended the session, the network dropped), it
//! drops the connection, reconnects with a short backoff (three tries: at
//! once, then after 50 ms and 250 ms) and runs the closure once more. What
//! it does not: an error on a connection that still works (a constraint violation,
//! a syntax error, a locked database) is returned at once; a failed first
//! connection is returned too (the hook fails, and the process's lives
//! decide what comes next). It is not a transaction manager: the closure
//! may run twice, and what its first run did before the connection broke
//! stands or falls with the server's own rules (uncommitted work is rolled
//! back, acknowledged statements are kept). Make the closure one
//! transaction, or idempotent.
//!
//! A [`live::Secret`] travels inside the process value over the private
//! control channel, never the command line or the environment; it prints
//! as `***` and is wiped when dropped.
//!
//! # Services, signals and shutdown
//!
//! A process that runs for days is stopped far more often than it fails,
//! and a stop is not a failure:
//!
//! - **Signals are stops.** A child that receives SIGTERM or SIGINT
//!   behaves exactly as after [`Handle::stop`]: [`Ctx::should_stop`] turns
//!   true, the current iteration finishes, `onfinish` runs and the final
//!   state comes back to [`wait`](Handle::wait). No life is lost and nothing
//!   restarts it, under a [`Handle`] or a supervisor.
//! - **Ctrl-C at a terminal.** Each child leads a process group of its
//!   own, so the terminal's SIGINT reaches the parent only. A parent that
//!   does not handle it dies, and its children stop as below; a
//!   [`Supervisor`](supervise::Supervisor) with
//!   [`shutdown_on_signals`](supervise::Supervisor::shutdown_on_signals)
//!   stops every child itself, in reverse start order, and its
//!   [`wait`](supervise::Supervisor::wait) returns `Ok`. Either way every
//!   child's `onfinish` runs.
//! - **The parent's death** (even by SIGKILL) is a stop too: each child
//!   finishes its iteration, runs `onfinish` and exits, taking along what
//!   its hooks started (its process group). It is bounded: no child
//!   outlives its parent by more than its [`stop_grace`](Config::stop_grace)
//!   plus one second, even with a hook stuck in C code. What survives is
//!   what `onfinish` wrote somewhere (a file, a database, a [`Share`]); the
//!   final value has nobody left to return to.
//! - **Reports.** [`Ctx::report`] publishes the child's newest status and
//!   [`Handle::report`] reads it: never blocking, never queueing, the last
//!   value readable after a restart, after the end, and after a kill in
//!   the middle of a report.
//! - **Hangs.** With [`Config::heartbeat`], a child that shows no sign of
//!   life for that long (no hook starting or ending, no
//!   [`Ctx::heartbeat`], no report) is killed: it costs a life, and the
//!   error says [`is_hung`](Error::is_hung).
//! - **Memory.** Past [`Config::memory_limit`], a child is killed and fails
//!   with [`is_out_of_memory`](Error::is_out_of_memory), a message naming
//!   the limit, and a life lost; the parent and the other children are
//!   untouched.
//! - **Fatal errors.** An error wrapped in [`fatal`] ends the process at
//!   once, whatever lives it has left: a bad input fails the same way on
//!   every try.
//!
//! **Restarts and lives** are two levels. `lives` apply inside one start:
//! a lost life restarts the child from its initial value at once, which a
//! supervisor does not see. When the last life is lost (or the error is
//! fatal), the start has failed, and the supervisor's
//! [`Restart`](supervise::Restart) policy, [`Strategy`](supervise::Strategy),
//! [`Backoff`](supervise::Backoff) and intensity decide what starts next. A
//! stop (`stop`, `stop_group`, `stop_all`, a signal to the child or to the
//! supervising program) is never followed by a restart.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use skprocess::prelude::*;
//! use std::time::{Duration, Instant};
//!
//! #[derive(Process, Serialize, Deserialize)]
//! struct Ingest { batches: u64, flushed: bool }
//!
//! impl Process for Ingest {
//!     fn run(&mut self, ctx: &mut Ctx) -> HookResult {
//!         self.batches += 1;
//!         ctx.report(&self.batches)?; // also a sign of life
//!         std::thread::sleep(Duration::from_millis(1));
//!         Ok(())
//!     }
//!     fn onfinish(&mut self, _ctx: &mut Ctx) -> HookResult {
//!         self.flushed = true; // runs on a stop, a signal, the parent's death
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> skprocess::Result<()> {
//! let cfg = Ingest::config()
//!     .heartbeat(Duration::from_secs(10))
//!     .memory_limit(512 << 20);
//! let mut h = Ingest { batches: 0, flushed: false }.start_with(cfg)?;
//! let give_up = Instant::now() + Duration::from_secs(30);
//! while h.report::<u64>()?.unwrap_or(0) < 3 && Instant::now() < give_up {
//!     std::thread::yield_now();
//! }
//! h.stop(); // what SIGTERM or SIGINT sent to the child does too
//! let done = h.wait()?;
//! assert!(done.flushed);
//! assert_eq!(h.attempt(), 1); // a stop costs no life
//! assert!(h.report::<u64>()?.is_some()); // still readable after the end
//! # Ok(())
//! # }
//! ```
//!
//! # Async
//!
//! The parent's waits have futures beside them: [`Handle::wait_async`],
//! [`Handle::listen_async`], [`Pipe::recv_async`] and
//! [`PipeReceiver::recv_async`]. They need no particular runtime (tokio,
//! async-std, smol, `futures::executor::block_on`) and never block the
//! thread that polls them: the parent's own threads (the one reading each
//! child's messages, the one running its lives, a watcher per awaited pipe
//! end) wake the task when there is something to take. `listen_async` is
//! cancel-safe: a future dropped while pending (the losing branch of a
//! `select!`, a timeout) takes no message with it.
//! The pool's calls have theirs: [`Pool::map_async`],
//! [`Pool::map_fn_async`], and the streams of [`Pool::imap_async`] and
//! [`Pool::unordered_imap_async`] (see the next section).
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use skprocess::prelude::*;
//!
//! #[derive(Process, Serialize, Deserialize)]
//! #[process(runs = 3)]
//! struct Counter { n: u64 }
//!
//! impl Process for Counter {
//!     fn run(&mut self, ctx: &mut Ctx) -> HookResult {
//!         self.n += 1;
//!         ctx.tell(&self.n)?;
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> skprocess::Result<()> {
//! let mut h = Counter { n: 0 }.start()?;
//! let done = futures::executor::block_on(async {
//!     let mut told = Vec::new();
//!     loop {
//!         match h.listen_async::<u64>().await {
//!             Ok(n) => told.push(n),
//!             Err(e) if e.is_disconnected() => break, // ended, all read
//!             Err(e) => return Err(e),
//!         }
//!     }
//!     assert_eq!(told, [1, 2, 3]);
//!     h.wait_async().await
//! })?;
//! assert_eq!(done.n, 3);
//! # Ok(())
//! # }
//! ```
//!
//! With the cargo feature `tokio`, a process's hooks can be `async fn`:
//! derive `Process` as usual and implement `AsyncProcess` instead of
//! [`Process`]. The child runs the hooks on a tokio runtime of its own,
//! kept for its whole life; [`Ctx::stopped`] resolves when a stop is asked
//! for, to await beside the work in a `select!`. Timeouts, lives, reports,
//! heartbeats and messaging behave as for any process (see
//! `examples/async_worker.rs`).
//!
//! # Cancellation and time limits
//!
//! A pool call can be bounded as a whole, not only hook by hook:
//! `pool.with_timeout(d)` gives `map`, `unordered_map`, `imap`,
//! `unordered_imap` and `map_fn` a time limit, counted from the call's
//! start. Past it, every item still running is killed with its worker, the
//! items not started never run, and the call returns
//! [`Error::CallTimeout`] ([`Error::is_timeout`] is true, the message names
//! the limit); an `imap` yields that error as its last item. A hung item
//! therefore costs one limit, not a hung program.
//!
//! `pool.background()` starts a call and returns a [`Background`] at once:
//! [`wait`](Background::wait), [`wait_timeout`](Background::wait_timeout),
//! [`is_finished`](Background::is_finished),
//! [`progress`](Background::progress), `.await` (no runtime needed), and
//! [`cancel`](Background::cancel), which stops the call at once the same
//! way a time limit does, with [`Error::Cancelled`]. Dropping a
//! `Background` before its result came cancels it too. The two combine:
//! `pool.with_timeout(d).background()`. [`Pool::map_async`] and
//! [`Pool::map_fn_async`] are background calls: dropping the future
//! cancels the call. Dropping the stream of [`Pool::imap_async`] skips the
//! items not started, as dropping an [`Imap`] does.
//!
//! Either way the killed workers are replaced before they take more work,
//! and the pool stays usable: the next call runs as usual, and other calls
//! running on it lose nothing: an item of theirs queued on a killed worker
//! runs in its replacement, without losing a life. A process started on
//! its own is stopped with [`Handle::stop`] (gracefully) or
//! [`Handle::kill`].
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use skprocess::prelude::*;
//! use std::time::Duration;
//!
//! #[derive(Process, Serialize, Deserialize, Debug)]
//! #[process(runs = 1)]
//! struct Nap { ms: u64 }
//! impl Process for Nap {
//!     fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
//!         std::thread::sleep(Duration::from_millis(self.ms));
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> skprocess::Result<()> {
//! let pool = Pool::new(2)?;
//! // A hung item costs the limit, then its worker is killed and replaced.
//! let err = pool
//!     .with_timeout(Duration::from_millis(200))
//!     .map([Nap { ms: 0 }, Nap { ms: 60_000 }])
//!     .unwrap_err();
//! assert!(err.is_timeout());
//!
//! // A call in the background, cancelled; the pool goes on.
//! let bg = pool.background().map([Nap { ms: 60_000 }]);
//! bg.cancel();
//! assert!(bg.wait().unwrap_err().is_cancelled());
//! let naps = pool.map([Nap { ms: 1 }, Nap { ms: 1 }])?;
//! assert_eq!(naps.len(), 2);
//! # Ok(())
//! # }
//! ```
//!
//! # Platform support
//!
//! Linux only: the crate relies on `memfd_create`, `pidfd_open`,
//! `PR_SET_PDEATHSIG`, `SCM_RIGHTS` and `.init_array`.
//!
//! # Pitfalls
//!
//! - **Code before `main` runs in children too.** Constructors of other
//!   crates (`ctor`, `.init_array`) run in every child before skprocess takes
//!   over. Code in `main` never runs in a child.
//! - **The child is this binary.** It is started from `/proc/self/exe`, with
//!   the parent's environment and standard streams; its own arguments are
//!   not the parent's (it never reads them).
//! - **Encoding.** Values cross with postcard, which is not self-describing:
//!   `#[serde(flatten)]` and `#[serde(untagged)]` fail with an error naming
//!   the type; wrap such values in [`Json`].
//! - **SIGPIPE** is ignored in children, as `std` does for `main`.
//! - **A child has a `tracing` subscriber already** (the one that forwards
//!   its events), installed as the global default before the first hook
//!   when the parent has a subscriber: `init()` of another one inside a
//!   hook panics (`try_init()` returns an error). Set subscribers up in
//!   `main`, which only the parent runs.
//! - **Test harness output.** A child of a test binary never reaches the
//!   harness, so it prints nothing of its own.

#![deny(unsafe_code)]

#[cfg(feature = "tokio")]
mod asynced;
#[cfg(feature = "bench-internals")]
mod bench;
mod child;
mod config;
mod error;
mod handle;
mod inbox;
mod link;
pub mod live;
mod log;
mod parent;
mod pipe;
mod pool;
mod process;
mod proto;
mod queue;
mod registry;
mod report;
mod runtime;
mod share;
mod slice;
mod spawn;
mod stats;
pub mod supervise;
#[allow(unsafe_code)]
mod sys;
mod timers;
mod wakers;
mod wire;

#[cfg(feature = "tokio")]
pub use asynced::AsyncProcess;
/// The crate that says which types are plain data ([`bytemuck::Pod`]), the
/// element types of [`SharedSlice`] and [`SharedSliceMut`].
pub use bytemuck;
pub use child::is_child;
pub use config::{Config, Hook};
pub use error::{fatal, BoxError, Cause, Error, Failure, Fatal, HookResult, Result};
pub use handle::Handle;
pub use pipe::{Pipe, PipeReceiver, PipeSender};
pub use pool::{
    Background, BackgroundCall, Imap, ImapNext, ImapStream, Launcher, Pool, PoolBuilder, PoolCall,
};
pub use process::Process;
pub use queue::Queue;
pub use runtime::Ctx;
pub use share::{Share, ShareGuard};
pub use skprocess_derive::Process;
pub use slice::{SharedSlice, SharedSliceGuard, SharedSliceMut};
pub use stats::Stats;
pub use timers::{Timer, Timers};
pub use wire::Json;

/// `use skprocess::prelude::*;` brings in everything a process needs.
pub mod prelude {
    #[cfg(feature = "tokio")]
    pub use crate::AsyncProcess;
    pub use crate::{
        BoxError, Config, Ctx, Error, Handle, Hook, HookResult, Pipe, PipeReceiver, PipeSender,
        Pool, Process, Queue, Result, Share, SharedSlice, SharedSliceMut, Timer, Timers,
    };
}

/// Helpers for skprocess's own benches and tests; not a public API
/// (built with the `bench-internals` feature).
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod __bench {
    pub use crate::bench::*;
}

/// Used by the code `#[derive(Process)]` generates; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::registry::{Described, Entry, REGISTRY};
    pub use linkme;

    /// The environment variable and value that make a re-exec of this
    /// binary exit before `main`: the raw baseline for spawn benchmarks.
    #[cfg(feature = "bench-internals")]
    pub const BARE_CHILD_ENV: (&str, &str) = (crate::spawn::BOOT_ENV, crate::spawn::BARE);

    /// The pid of this process's fork server, if one runs (tests end it to
    /// check that starts go on without it).
    #[cfg(feature = "bench-internals")]
    pub fn fork_server_pid() -> Option<u32> {
        crate::spawn::server::pid()
    }

    /// Turns the fork server off (`true`) or back on in this process, as
    /// `SKPROCESS_FORK_SERVER=0` does, without touching the environment.
    #[cfg(feature = "bench-internals")]
    pub fn set_fork_server_off(off: bool) {
        crate::spawn::server::OFF.store(off, std::sync::atomic::Ordering::Relaxed)
    }

    /// The environment variable that turns the fork server off (`0`).
    pub const FORK_SERVER_ENV: &str = crate::spawn::server::SWITCH_ENV;

    /// Feeds arbitrary bytes to the frame reader and decoders (the fuzz
    /// target's entry point).
    #[cfg(feature = "bench-internals")]
    pub fn fuzz_frames(data: &[u8]) {
        crate::wire::fuzz_frames(data)
    }
}
