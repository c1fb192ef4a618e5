//! The fork server: children forked from it see the environment, working
//! directory and resource limits as of `start()`, are children of this process in a
//! group of their own, and starting goes on when the server is killed or
//! switched off. The tests change this process's environment and
//! directory, so they take turns.

mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::path::PathBuf;
use std::sync::Mutex;
use support::{assert_gone_within, assert_no_shm_files, finish, watchdog};

static TURN: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    watchdog();
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reports what it started with.
#[derive(Process, Serialize, Deserialize, Default, Debug)]
#[process(runs = 1)]
struct Probe {
    var: Option<String>,
    gone: Option<String>,
    cwd: PathBuf,
    pid: u32,
    ppid: u32,
    pgid: u32,
    nofile: Option<u64>,
}

impl Process for Probe {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        self.var = std::env::var("SKP_FORK_TEST_VAR").ok();
        self.gone = std::env::var("SKP_FORK_TEST_GONE").ok();
        self.cwd = std::env::current_dir()?;
        self.pid = ctx.pid();
        self.ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
        self.pgid = rustix::process::getpgrp().as_raw_nonzero().get() as u32;
        self.nofile = nofile().current;
        Ok(())
    }
}

fn nofile() -> rustix::process::Rlimit {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
}

fn probe() -> Probe {
    let mut h = Probe::default().start().unwrap();
    finish(&mut h).unwrap()
}

/// Children of this process that nobody has reaped.
fn zombie_children() -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| support::proc_state(pid).is_some_and(|(s, ppid)| ppid == me && s == 'Z'))
        .collect()
}

/// Kills the running server, if any, and waits until it is gone.
fn kill_server() -> Option<u32> {
    let pid = skprocess::__private::fork_server_pid()?;
    support::send_signal(pid, rustix::process::Signal::KILL);
    assert_gone_within(pid, support::DEADLINE);
    Some(pid)
}

fn switched_off() -> bool {
    std::env::var_os(skprocess::__private::FORK_SERVER_ENV).is_some_and(|v| v == "0")
}

#[test]
fn children_are_forked_children_of_this_process_in_their_own_group() {
    if switched_off() {
        return;
    }
    let _turn = turn();
    let p = probe();
    let server = skprocess::__private::fork_server_pid().expect("a fork server runs");
    assert_ne!(p.pid, server);
    assert_eq!(p.ppid, std::process::id(), "the parent is this process");
    assert_eq!(p.pgid, p.pid, "the child leads its own group");
    assert!(zombie_children().is_empty(), "{:?}", zombie_children());
    assert_no_shm_files();
}

#[test]
fn children_see_the_environment_directory_and_limits_as_of_start() {
    if switched_off() {
        return;
    }
    let _turn = turn();
    // A server that starts with SKP_FORK_TEST_GONE set: the first start
    // after the kill finds it dead, the next starts a new one.
    std::env::set_var("SKP_FORK_TEST_GONE", "at server start");
    kill_server();
    probe();
    let before = probe();
    assert_eq!(before.gone.as_deref(), Some("at server start"));
    assert!(skprocess::__private::fork_server_pid().is_some());

    let home = std::env::current_dir().unwrap();
    let dir = std::env::temp_dir().join(format!("skp-fork-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    std::env::set_var("SKP_FORK_TEST_VAR", "set after the server started");
    std::env::remove_var("SKP_FORK_TEST_GONE");
    std::env::set_current_dir(&dir).unwrap();
    let limit = nofile();
    let lowered = limit.current.expect("a finite descriptor limit") - 1;
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(lowered),
            ..limit
        },
    )
    .unwrap();
    let after = probe();
    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).unwrap();
    std::env::set_current_dir(&home).unwrap();
    std::env::remove_var("SKP_FORK_TEST_VAR");
    let back = probe();
    std::fs::remove_dir(&dir).unwrap();

    assert_eq!(after.var.as_deref(), Some("set after the server started"));
    assert_eq!(after.gone, None, "a variable removed since is gone");
    assert_eq!(after.cwd, dir);
    assert_eq!(after.nofile, Some(lowered), "the limit as of start()");
    assert_eq!(back.nofile, limit.current);
    assert_eq!(back.var, None);
    assert_eq!(back.cwd, home);
    assert!(zombie_children().is_empty(), "{:?}", zombie_children());
}

#[test]
fn a_killed_fork_server_is_replaced_and_reaped() {
    if switched_off() {
        return;
    }
    let _turn = turn();
    probe();
    let first = kill_server().expect("a fork server runs");
    // The start that finds it dead re-executes; the next starts another.
    let p = probe();
    assert_eq!(p.ppid, std::process::id());
    probe();
    let second = skprocess::__private::fork_server_pid().expect("a new server");
    assert_ne!(first, second);
    assert!(
        support::proc_state(first).is_none(),
        "the dead server was reaped"
    );
    assert!(zombie_children().is_empty(), "{:?}", zombie_children());
    assert_no_shm_files();
}

#[test]
fn switched_off_every_child_is_re_executed() {
    if !switched_off() {
        // Run this very test again in a process started with the switch.
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "switched_off_every_child_is_re_executed",
                "--test-threads=1",
            ])
            .env(skprocess::__private::FORK_SERVER_ENV, "0")
            .status()
            .unwrap();
        assert!(status.success(), "{status}");
        return;
    }
    let _turn = turn();
    std::env::set_var("SKP_FORK_TEST_VAR", "re-exec");
    let p = probe();
    assert_eq!(p.var.as_deref(), Some("re-exec"));
    assert_eq!(p.ppid, std::process::id());
    assert_eq!(p.pgid, p.pid);
    assert_eq!(skprocess::__private::fork_server_pid(), None);
    assert!(zombie_children().is_empty(), "{:?}", zombie_children());
}
