//! [`Launcher`]: what starts a pool's workers, this machine or a cluster
//! engine (Open MPI's or MPICH's `mpirun`, Slurm's `srun`).
//!
//! A launcher other than [`Launcher::local`] runs this same binary as the
//! engine's tasks; each task takes over before `main` (as a local child
//! does), dials the pool back over TCP (see `remote`) and serves as a
//! worker. What differs between engines is only how a job of `n` tasks is
//! started and how it is ended: the [`Engine`] trait. Another engine is one
//! more implementation of it and one more constructor here; the pool does
//! not change.

use crate::error::{Error, Result};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// How long workers started by an engine may take to connect back, by
/// default.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `mpirun --version` may take to say which MPI it is.
const PROBE_TIME: Duration = Duration::from_secs(10);

/// Starts a pool's workers: on this machine (the default), or through a
/// cluster engine, whose tasks connect back to the pool over TCP.
///
/// ```text
/// Pool::builder().workers(8).launcher(Launcher::local())    // the default: this machine
/// Pool::builder().workers(8).launcher(Launcher::mpirun())   // Open MPI / MPICH
/// Pool::builder().workers(8).launcher(Launcher::slurm())    // srun, in or out of an allocation
/// ```
///
/// With `mpirun` or `srun`, each worker is this same program started as a
/// task of the engine's job: the binary must be at the same path on every
/// node (a shared filesystem, or a copy). A worker connects back to the
/// address in `SKPROCESS_ADVERTISE` (`host` or `host:port`; by default this
/// machine's host name), presents the pool's random token and the build
/// identity of the binary, and then serves items exactly as a local worker
/// does: results in order, `map_fn`, `tracing` events, lives, timeouts and
/// call time limits. A worker that dies is replaced by a new task of the
/// engine. Values that only make sense on one machine (a
/// [`Share`](crate::Share), a [`Pipe`](crate::Pipe) end, a
/// [`Queue`](crate::Queue), a [`SharedSlice`](crate::SharedSlice)) are
/// refused with an error that names their type. Dropping the pool ends the
/// engine's jobs (`scancel`, or the end of `mpirun`); a worker whose
/// connection to the pool is lost (its parent was killed) exits.
///
/// Differences from local workers: their standard output goes through the
/// engine ([`PoolBuilder::capture_output`](crate::PoolBuilder::capture_output)
/// does not apply); [`Pool::timers`](crate::Pool::timers) does not count
/// their hooks, heartbeats and memory limits are not watched, and a worker
/// lost while running an item always charges that item a life.
///
/// # Examples
///
/// ```
/// use skprocess::{Launcher, Pool};
///
/// # fn main() -> skprocess::Result<()> {
/// let pool = Pool::builder().workers(2).launcher(Launcher::local()).build()?;
/// let doubled: Vec<u32> = pool.map_fn(|x: u32| x * 2, [1, 2, 3])?;
/// assert_eq!(doubled, [2, 4, 6]);
///
/// // Options of the engines (used only when such a pool is built):
/// let mpi = Launcher::mpirun().arg("--bind-to").arg("none");
/// let slurm = Launcher::slurm().partition("debug").time_limit(std::time::Duration::from_secs(600));
/// assert_eq!(mpi.engine(), Some("mpirun"));
/// assert_eq!(slurm.engine(), Some("slurm"));
/// assert_eq!(Launcher::local().engine(), None);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a launcher does nothing until given to a pool builder"]
pub struct Launcher {
    /// `None`: this machine.
    engine: Option<Arc<dyn Engine>>,
    options: Options,
}

/// The options of a cluster launcher; each engine reads those it knows and
/// refuses the others.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// The engine's program, instead of its usual name.
    pub(crate) program: Option<PathBuf>,
    /// Arguments for the engine, before the program to run.
    pub(crate) args: Vec<OsString>,
    pub(crate) hostfile: Option<PathBuf>,
    pub(crate) partition: Option<String>,
    pub(crate) time_limit: Option<Duration>,
    /// How long the tasks of one start may take to connect back.
    pub(crate) connect_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            program: None,
            args: Vec::new(),
            hostfile: None,
            partition: None,
            time_limit: None,
            connect_timeout: CONNECT_TIMEOUT,
        }
    }
}

/// A cluster engine: how a job of tasks is started and ended.
pub(crate) trait Engine: fmt::Debug + Send + Sync {
    /// The engine's name in messages: `mpirun`, `slurm`.
    fn name(&self) -> &'static str;

    /// The engine's program when the launcher names none: `mpirun`, `srun`.
    fn program(&self) -> &'static str;

    /// Adds to `cmd` (which runs `program`) the engine's own arguments for
    /// `tasks` tasks in one job named `job`, whose tasks get the variables
    /// `env`. The user's extra arguments, the binary and the variables
    /// follow (see [`command`]). `Err` for an option the engine does not
    /// know.
    fn arguments(
        &self,
        cmd: &mut Command,
        program: &Path,
        options: &Options,
        tasks: usize,
        env: &[(&str, String)],
        job: &str,
    ) -> Result<()>;

    /// Ends the job named `job` that this engine started, beyond ending
    /// its command (which the caller does next): `tasks` holds what each of
    /// its tasks reported of itself (`KEY=value` lines).
    fn cancel(&self, options: &Options, job: &str, tasks: &[String]) {
        let _ = (options, job, tasks);
    }
}

/// The command that starts `tasks` copies of `exe` through `engine`, each
/// with the variables `env` (also set on the command itself), as one job
/// named `job`: the engine's program and arguments, then the user's extra
/// arguments, then the binary.
pub(crate) fn command(
    engine: &dyn Engine,
    options: &Options,
    tasks: usize,
    exe: &Path,
    env: &[(&str, String)],
    job: &str,
) -> Result<Command> {
    let program = options
        .program
        .clone()
        .unwrap_or_else(|| PathBuf::from(engine.program()));
    let mut cmd = Command::new(&program);
    engine.arguments(&mut cmd, &program, options, tasks, env, job)?;
    cmd.args(&options.args).arg(exe);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    Ok(cmd)
}

impl Launcher {
    /// Workers on this machine, children of the pool's process (the
    /// default).
    pub fn local() -> Launcher {
        Launcher::default()
    }

    /// Workers started by `mpirun -n <workers>` (Open MPI or MPICH), on the
    /// hosts the MPI installation (or [`hostfile`](Launcher::hostfile))
    /// gives. With Open MPI, the pool adds `--oversubscribe` (a pool may
    /// have more workers than slots) and, run as root, sets
    /// `OMPI_ALLOW_RUN_AS_ROOT`.
    pub fn mpirun() -> Launcher {
        Launcher {
            engine: Some(Arc::new(Mpirun::default())),
            options: Options::default(),
        }
    }

    /// Workers started by Slurm's `srun --ntasks=<workers>`: inside an
    /// allocation (`salloc`, a batch script) as a job step, otherwise as a
    /// job of their own, queued like any other.
    pub fn slurm() -> Launcher {
        Launcher {
            engine: Some(Arc::new(Slurm)),
            options: Options::default(),
        }
    }

    /// The engine's name (`mpirun`, `slurm`), or `None` for this machine.
    pub fn engine(&self) -> Option<&'static str> {
        self.engine.as_ref().map(|e| e.name())
    }

    /// Runs `program` instead of the engine's usual command (`mpiexec`, a
    /// full path).
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.options.program = Some(program.into());
        self
    }

    /// Adds an argument for the engine, placed before the program it runs.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.options.args.push(arg.into());
        self
    }

    /// Adds arguments for the engine (see [`arg`](Launcher::arg)).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.options.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The MPI hostfile (`mpirun --hostfile`): `mpirun` only.
    pub fn hostfile(mut self, path: impl Into<PathBuf>) -> Self {
        self.options.hostfile = Some(path.into());
        self
    }

    /// The Slurm partition (`srun --partition`): `slurm` only.
    pub fn partition(mut self, partition: impl Into<String>) -> Self {
        self.options.partition = Some(partition.into());
        self
    }

    /// The Slurm time limit of the workers' job (`srun --time`, rounded up
    /// to whole seconds): `slurm` only.
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.options.time_limit = Some(limit);
        self
    }

    /// How long the workers of one start (the pool's, or a replacement)
    /// may take to connect back before the start fails (default 60 s; a
    /// queued Slurm job counts its wait).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// The engine and its options, for a cluster launcher.
    pub(crate) fn remote(&self) -> Option<(Arc<dyn Engine>, Options)> {
        self.engine.clone().map(|e| (e, self.options.clone()))
    }

    /// `Err` if options were set on the local launcher, which takes none.
    pub(crate) fn check_local(&self) -> Result<()> {
        let o = &self.options;
        if self.engine.is_none()
            && (o.program.is_some()
                || !o.args.is_empty()
                || o.hostfile.is_some()
                || o.partition.is_some()
                || o.time_limit.is_some())
        {
            return Err(Error::usage(
                "the local launcher takes no engine options (program, args, hostfile, partition, \
                 time limit)",
            ));
        }
        Ok(())
    }
}

/// `Err` naming an option that `engine` does not have.
fn unknown_option(engine: &str, option: &str) -> Error {
    Error::usage(format!("the {engine} launcher has no {option} option"))
}

/// Open MPI's or MPICH's `mpirun`.
#[derive(Debug, Default)]
struct Mpirun {
    /// Whether the program is Open MPI's, found out once.
    open_mpi: std::sync::OnceLock<bool>,
}

impl Mpirun {
    fn is_open_mpi(&self, program: &Path) -> bool {
        *self.open_mpi.get_or_init(|| {
            use std::process::Stdio;
            let Ok(mut child) = Command::new(program)
                .arg("--version")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
            else {
                return false;
            };
            let out = child.stdout.take();
            let reader = std::thread::spawn(move || {
                out.and_then(|o| std::io::read_to_string(o).ok())
                    .unwrap_or_default()
            });
            // Bounded: a program that is not an MPI launcher may not answer.
            let deadline = std::time::Instant::now() + PROBE_TIME;
            while !matches!(child.try_wait(), Ok(Some(_))) {
                if std::time::Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let text = reader.join().unwrap_or_default();
            text.contains("Open MPI") || text.contains("OpenRTE")
        })
    }
}

impl Engine for Mpirun {
    fn name(&self) -> &'static str {
        "mpirun"
    }

    fn program(&self) -> &'static str {
        "mpirun"
    }

    fn arguments(
        &self,
        cmd: &mut Command,
        program: &Path,
        options: &Options,
        tasks: usize,
        env: &[(&str, String)],
        _job: &str,
    ) -> Result<()> {
        if options.partition.is_some() {
            return Err(unknown_option("mpirun", "partition"));
        }
        if options.time_limit.is_some() {
            return Err(unknown_option("mpirun", "time limit"));
        }
        cmd.arg("-n").arg(tasks.to_string());
        if self.is_open_mpi(program) {
            // A worker that dies is the pool's business: the job goes on.
            cmd.arg("--oversubscribe").arg("--enable-recovery");
            // Open MPI forwards to remote nodes only the variables named.
            for (k, _) in env {
                cmd.arg("-x").arg(k);
            }
            if rustix::process::getuid().is_root() {
                cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
            }
        }
        if let Some(h) = &options.hostfile {
            cmd.arg("--hostfile").arg(h);
        }
        Ok(())
    }
}

/// Slurm's `srun`.
#[derive(Debug)]
struct Slurm;

impl Slurm {
    fn inside_allocation() -> Option<String> {
        std::env::var("SLURM_JOB_ID").ok().filter(|j| !j.is_empty())
    }
}

impl Engine for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn program(&self) -> &'static str {
        "srun"
    }

    fn arguments(
        &self,
        cmd: &mut Command,
        _program: &Path,
        options: &Options,
        tasks: usize,
        _env: &[(&str, String)],
        job: &str,
    ) -> Result<()> {
        if options.hostfile.is_some() {
            return Err(unknown_option("slurm", "hostfile"));
        }
        cmd.arg(format!("--ntasks={tasks}"))
            .arg(format!("--job-name={job}"))
            // A worker that dies is the pool's business, not the step's end.
            .arg("--kill-on-bad-exit=0")
            // Workers mostly wait on the pool: more tasks than cores is fine.
            .arg("--overcommit")
            .arg("--export=ALL");
        if Slurm::inside_allocation().is_some() {
            // Replacements run beside the steps already running.
            cmd.arg("--overlap");
        }
        if let Some(p) = &options.partition {
            cmd.arg(format!("--partition={p}"));
        }
        if let Some(t) = options.time_limit {
            let secs = t.as_secs() + u64::from(t.subsec_nanos() > 0);
            let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
            cmd.arg(format!("--time={h}:{m:02}:{s:02}"));
        }
        Ok(())
    }

    fn cancel(&self, _options: &Options, job: &str, tasks: &[String]) {
        let mut targets: Vec<String> = Vec::new();
        match Slurm::inside_allocation() {
            // Only the steps this pool started: the allocation is the
            // user's.
            Some(_) => {
                for t in tasks {
                    if let (Some(j), Some(s)) =
                        (field(t, "SLURM_JOB_ID"), field(t, "SLURM_STEP_ID"))
                    {
                        let step = format!("{j}.{s}");
                        if !targets.contains(&step) {
                            targets.push(step);
                        }
                    }
                }
            }
            // The job is the pool's own, named after it (which also finds
            // it while it still waits in the queue).
            None => targets.push(format!("--name={job}")),
        }
        if targets.is_empty() {
            return;
        }
        let _ = Command::new("scancel")
            .args(&targets)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The value of `KEY=value` line `key` in a task's report.
pub(crate) fn field<'a>(report: &'a str, key: &str) -> Option<&'a str> {
    report
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}
