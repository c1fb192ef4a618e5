//! OpenTelemetry (API.md §15): with `tracing-opentelemetry` in the parent,
//! a child's spans are exported inside the trace that started it: the same
//! trace id, the starting span as their parent, nested as in the child.

mod support;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use support::finish;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Process, Serialize, Deserialize)]
#[process(runs = 2)]
struct Traced;

impl Process for Traced {
    fn run(&mut self, ctx: &mut Ctx) -> HookResult {
        let step = tracing::info_span!("step", run = ctx.run_index());
        let _s = step.enter();
        tracing::info_span!("inner", ok = tracing::field::Empty).in_scope(|| {
            tracing::info!("working");
            tracing::Span::current().record("ok", true);
        });
        Ok(())
    }
}

/// An attribute's value as text.
fn attr(s: &SpanData, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|a| a.key.as_str() == key)
        .map(|a| a.value.as_str().into_owned())
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[test]
fn a_child_s_spans_are_exported_inside_the_parent_s_trace() -> skprocess::Result<()> {
    support::watchdog();
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("skprocess-tests")));
    let pid = tracing::subscriber::with_default(subscriber, || -> skprocess::Result<u32> {
        let request = tracing::info_span!("request");
        let mut h = request.in_scope(|| Traced.start())?;
        finish(&mut h)?;
        Ok(h.pid())
    })?;
    provider.force_flush().expect("flushed");
    let spans = exporter.get_finished_spans().expect("spans");
    let request = named(&spans, "request");
    assert_eq!(request.len(), 1, "{spans:#?}");
    let request = request[0];
    let trace = request.span_context.trace_id();
    let steps = named(&spans, "step");
    let inners = named(&spans, "inner");
    assert_eq!((steps.len(), inners.len()), (2, 2), "{spans:#?}");
    for s in steps.iter().chain(&inners) {
        assert_eq!(s.span_context.trace_id(), trace, "{s:#?}");
        assert_eq!(attr(s, "pid"), Some(pid.to_string()), "{s:#?}");
        assert_eq!(attr(s, "process").as_deref(), Some("otel::Traced"));
    }
    for s in &steps {
        assert_eq!(s.parent_span_id, request.span_context.span_id());
    }
    let step_ids: Vec<_> = steps.iter().map(|s| s.span_context.span_id()).collect();
    for s in &inners {
        assert!(step_ids.contains(&s.parent_span_id), "{s:#?}");
        // A value recorded after the span was opened.
        assert_eq!(attr(s, "ok").as_deref(), Some("true"), "{s:#?}");
        // The event inside it is one of its span events.
        assert!(s.events.iter().any(|e| e.name == "working"), "{s:#?}");
    }
    let mut runs: Vec<_> = steps.iter().map(|s| attr(s, "run")).collect();
    runs.sort();
    assert_eq!(runs, [Some("0".to_string()), Some("1".to_string())]);
    support::assert_gone(pid);
    Ok(())
}
