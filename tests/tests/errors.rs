//! What errors say: a share attached as another type names the type, a
//! peer that has ended is `is_disconnected()`, an I/O error prints its
//! source once.

mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use support::{assert_gone, finish, watchdog, DEADLINE};

/// Sent as a `Share<u64>`, received as a `Share<String>`: the message type
/// is the same on both sides, the share inside it is not.
#[derive(Debug)]
struct Mislabeled(Option<Share<u64>>);

impl Serialize for Mislabeled {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0
            .as_ref()
            .expect("only the sender serializes")
            .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Mislabeled {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Share::<String>::deserialize(d).map(|_| Mislabeled(None))
    }
}

/// Makes a `Share<u64>` and tells it, mislabeled, to its parent.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct SharesOneType;

impl Process for SharesOneType {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        ctx.tell(&Mislabeled(Some(Share::new(7u64)?)))?;
        Ok(())
    }
}

#[test]
fn a_share_attached_as_another_type_is_a_decode_error_naming_the_type() {
    watchdog();
    let mut h = SharesOneType.start().unwrap();
    let e = h.listen::<Mislabeled>(DEADLINE).unwrap_err();
    let text = e.to_string();
    match &e {
        Error::Decode { reason, .. } => {
            assert!(reason.contains("Share<alloc::string::String>"), "{text}");
            assert!(reason.contains("another type"), "{text}");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    assert!(!text.contains("malformed data"), "{text}");
    finish(&mut h).unwrap();
    assert_gone(h.pid());
}

/// Ends at once.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Brief;

impl Process for Brief {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        Ok(())
    }
}

#[test]
fn a_tell_to_an_ended_process_is_disconnected() {
    watchdog();
    let mut h = Brief.start().unwrap();
    finish(&mut h).unwrap();
    let e = h.tell(&1u64).unwrap_err();
    assert!(e.is_disconnected(), "{e:?}");
}

/// Holds one end of each pipe, and ends (without a word) when told.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct PipeHolder {
    tx: PipeSender,
    rx: PipeReceiver,
}

impl Process for PipeHolder {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        ctx.listen::<String>(DEADLINE)?;
        Ok(())
    }
}

#[test]
fn a_pipe_whose_peer_process_ended_is_disconnected() {
    watchdog();
    let (tx, from_child) = Pipe::one_way().unwrap();
    let (to_child, rx) = Pipe::one_way_with_capacity(4096).unwrap();
    let mut h = PipeHolder { tx, rx }.start().unwrap();
    h.tell(&"end".to_string()).unwrap();
    finish(&mut h).unwrap();
    assert_gone(h.pid());
    let e = from_child.recv_timeout::<u64>(DEADLINE).unwrap_err();
    assert!(e.is_disconnected(), "receiving: {e:?}");
    // A sender notices at the latest when the channel is full.
    let mut sent = 0u64;
    let e = loop {
        match to_child.send(&sent) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 100_000, "a channel of 4 KiB took {sent} messages");
    };
    assert!(e.is_disconnected(), "sending: {e:?}");
}

/// The text of `e` and of every source under it, as a report prints it.
fn report(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        text.push_str(": ");
        text.push_str(&s.to_string());
        next = s.source();
    }
    text
}

#[test]
fn an_io_error_prints_its_source_once() {
    let io = || std::io::Error::other("the disk is on fire");
    for e in [Error::Io(io()), Error::Spawn(io())] {
        let text = report(&e);
        assert_eq!(text.matches("the disk is on fire").count(), 1, "{text}");
    }
    // A real one, from the system.
    let e = Error::Io(std::io::Error::from_raw_os_error(libc::EMFILE));
    let text = report(&e);
    assert_eq!(text.matches("Too many open files").count(), 1, "{text}");
}

/// Puts garbage where its control socket was, says so through a share,
/// then waits to be ended: the next frame its parent sends is followed by
/// bytes that are no frame, as from a parent that speaks nonsense.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct CorruptsItsControlSocket {
    done: Share<bool>,
}

impl Process for CorruptsItsControlSocket {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        use std::io::Write;
        use std::os::fd::AsFd;
        // The control socket is the first socket a child has (taken over
        // before `main`): the one of the lowest-numbered socket descriptor.
        // The control thread reads it through one descriptor and writes
        // through another.
        let mut sockets: Vec<(i32, String)> = std::fs::read_dir("/proc/self/fd")?
            .flatten()
            .filter_map(|e| {
                let target = std::fs::read_link(e.path()).ok()?;
                let target = target.to_string_lossy().into_owned();
                let fd = e.file_name().to_str()?.parse().ok()?;
                target.starts_with("socket:").then_some((fd, target))
            })
            .collect();
        sockets.sort();
        let control = sockets.first().ok_or("no socket")?.1.clone();
        let sockets: Vec<i32> = sockets
            .into_iter()
            .filter(|(_, t)| *t == control)
            .map(|(fd, _)| fd)
            .collect();
        let (garbage, mut feed) = std::os::unix::net::UnixStream::pair()?;
        // A frame header whose reserved bytes are not zero.
        feed.write_all(&[8, 0, 0, 0, 2, 0, 0xab, 0xcd])?;
        // The control thread's read in progress keeps the old socket until
        // the next frame arrives; the one after reads the garbage.
        for fd in sockets {
            skprocess::__bench::replace_descriptor(garbage.as_fd(), fd)?;
        }
        self.done.set(true)?;
        // Ended by its control thread, after the next frame.
        loop {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

#[test]
fn a_named_exit_reaches_the_user_in_words() {
    watchdog();
    let done = Share::new(false).unwrap();
    let mut h = CorruptsItsControlSocket { done: done.clone() }
        .start()
        .unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    let e = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never got ready"
        );
        if done.get().unwrap() {
            // Wakes the control thread (if nothing else did), which then
            // reads the garbage.
            let _ = h.tell(&0u64);
            break finish(&mut h).err().expect("cannot succeed");
        }
        match h.wait_timeout(std::time::Duration::from_millis(1)) {
            Ok(None) => {}
            Ok(Some(_)) => panic!("cannot succeed"),
            Err(e) => break e,
        }
    };
    let text = e.to_string();
    assert!(e.is_crash(), "{text}");
    assert!(
        text.contains("its parent sent malformed data on the control socket"),
        "{text}"
    );
    assert!(!text.contains("exited with code"), "{text}");
    assert!(!text.contains("SIGKILL"), "{text}");
    assert_gone(h.pid());
}
