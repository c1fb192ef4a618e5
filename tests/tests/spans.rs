//! Spans (API.md §15): a child's spans become spans in the parent's
//! subscriber, with their names, targets, levels and fields (values
//! recorded later included), nested under the span current at `start()` or
//! `Pool::new`, entered, exited and closed in the child's order; the events
//! in them carry that scope.

mod support;

use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use std::sync::{Arc, Mutex};
use support::finish;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// Writes down what the parent's subscriber is told, as text.
#[derive(Clone, Default)]
struct Journal(Arc<Mutex<Vec<String>>>);

struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        // The pid changes from run to run.
        if f.name() != "pid" {
            self.0.push_str(&format!(" {}={v:?}", f.name()));
        }
    }
}

fn text(record: impl FnOnce(&mut Text)) -> String {
    let mut t = Text(String::new());
    record(&mut t);
    t.0
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Journal {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let span = ctx.span(id).unwrap();
        let parent = span
            .parent()
            .map_or("root".into(), |p| p.name().to_string());
        let m = attrs.metadata();
        let f = text(|t| attrs.record(t));
        self.push(format!(
            "new {} {} {} in {parent}:{f}",
            m.name(),
            m.level(),
            m.target()
        ));
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let f = text(|t| values.record(t));
        self.push(format!("record {}:{f}", ctx.span(id).unwrap().name()));
    }
    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        self.push(format!("enter {}", ctx.span(id).unwrap().name()));
    }
    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        self.push(format!("exit {}", ctx.span(id).unwrap().name()));
    }
    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        self.push(format!("close {}", ctx.span(&id).unwrap().name()));
    }
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let scope: Vec<String> = ctx
            .event_scope(event)
            .map(|s| s.from_root().map(|s| s.name().to_string()).collect())
            .unwrap_or_default();
        let f = text(|t| event.record(t));
        self.push(format!("event in {}:{f}", scope.join("/")));
    }
}

impl Journal {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// `lines` without the exits and enters that frames add: the parent exits
/// the spans a child's thread is in at the end of each `LOG` frame and
/// enters them again at the start of the next, so where a frame ends
/// (every 20 ms, at each tell, at each 16 KiB) is seen as "exit x" straight
/// followed by "enter x" (innermost exited first, entered last). Those
/// pairs, nested ones included, are dropped; the child's own order stays.
fn without_frame_breaks(lines: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    for line in lines {
        let reentered = line
            .strip_prefix("enter ")
            .is_some_and(|span| out.last().and_then(|l| l.strip_prefix("exit ")) == Some(span));
        if reentered {
            out.pop();
        } else {
            out.push(line);
        }
    }
    out
}

#[test]
fn frame_breaks_are_dropped_and_nothing_else() {
    let lines = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let got = without_frame_breaks(lines(&[
        "enter a", "enter b", "exit b", "exit a", "enter a", "enter b", "exit b", "close b",
        "exit a", "enter a", "exit a", "enter b",
    ]));
    assert_eq!(
        got,
        lines(&["enter a", "enter b", "exit b", "close b", "exit a", "enter b"])
    );
}

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Nested;

impl Process for Nested {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let outer = tracing::info_span!("outer", job = 7u64, done = tracing::field::Empty);
        let _o = outer.enter();
        tracing::debug_span!(target: "app::io", "inner", path = "a.txt").in_scope(|| {
            tracing::warn!(bytes = 3u64, "read");
        });
        // A tell sends what was logged before it: the rest comes in another
        // frame, while "outer" is still entered.
        ctx.tell(&1u32)?;
        outer.record("done", true);
        Ok(())
    }
}

#[test]
fn a_child_s_nested_spans_are_made_again_in_its_order() -> skprocess::Result<()> {
    support::watchdog();
    let journal = Journal::default();
    let _g = tracing::subscriber::set_default(tracing_subscriber::registry().with(journal.clone()));
    let mut h = tracing::info_span!("started_here").in_scope(|| Nested.start())?;
    finish(&mut h)?;
    let got: Vec<String> = journal
        .take()
        .into_iter()
        .filter(|l| !l.starts_with("new started_here") && !l.ends_with(" started_here"))
        .collect();
    let got = without_frame_breaks(got);
    let p = r#"process="spans::Nested""#;
    assert_eq!(
        got,
        [
            format!("new outer INFO spans in started_here: job=7 {p}"),
            "enter outer".into(),
            format!("new inner DEBUG app::io in outer: path=\"a.txt\" {p}"),
            "enter inner".into(),
            format!("event in started_here/outer/inner: message=read bytes=3 {p}"),
            "exit inner".into(),
            "close inner".into(),
            "record outer: done=true".into(),
            "exit outer".into(),
            "close outer".into(),
        ]
    );
    support::assert_gone(h.pid());
    Ok(())
}

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Item {
    id: u64,
}

impl Process for Item {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        tracing::info_span!("item", id = self.id).in_scope(|| {
            tracing::info_span!("step").in_scope(|| tracing::info!(id = self.id, "done"));
        });
        Ok(())
    }
}

#[test]
fn pool_items_spans_sit_under_the_span_current_at_pool_new() -> skprocess::Result<()> {
    support::watchdog();
    let journal = Journal::default();
    let _g = tracing::subscriber::set_default(tracing_subscriber::registry().with(journal.clone()));
    let pool = tracing::info_span!("pool_origin").in_scope(|| Pool::new(2))?;
    let pids = pool.pids();
    let done = pool.map((0..6).map(|id| Item { id }))?;
    assert_eq!(done.len(), 6);
    drop(pool);
    let got = journal.take();
    for id in 0..6 {
        let new_item = got
            .iter()
            .filter(|l| {
                l.starts_with("new item INFO spans in pool_origin: id=")
                    && l.contains(&format!("id={id} "))
            })
            .count();
        assert_eq!(new_item, 1, "item {id}: {got:#?}");
        let event = got
            .iter()
            .filter(|l| {
                l.starts_with("event in pool_origin/item/step: message=done")
                    && l.contains(&format!(" id={id} "))
            })
            .count();
        assert_eq!(event, 1, "item {id}: {got:#?}");
    }
    assert!(
        got.iter()
            .any(|l| l.contains(r#"process="spans::Item[worker "#)),
        "{got:#?}"
    );
    assert_eq!(got.iter().filter(|l| *l == "close item").count(), 6);
    assert_eq!(got.iter().filter(|l| *l == "close step").count(), 6);
    for pid in pids {
        support::assert_gone(pid);
    }
    Ok(())
}
