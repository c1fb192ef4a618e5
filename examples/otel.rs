//! A child's spans inside the parent's OpenTelemetry trace.
//!
//! The parent exports its traces through `tracing-opentelemetry`; each
//! child's spans are made again in the parent, under the span current at
//! `start()`, so they join the trace that started them. The spans go to
//! the SDK's in-memory exporter (no collector needed), and are printed as
//! one tree per trace.
//!
//! Run it with `cargo run --release --example otel`.

use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use skprocess::prelude::*;
use tracing_subscriber::layer::SubscriberExt;

/// Resizes a few images, one span per image, with the steps inside.
#[derive(Process, Serialize, Deserialize)]
#[process(runs = 1)]
struct Resizer {
    images: Vec<String>,
}

impl Process for Resizer {
    fn run(&mut self, _ctx: &mut Ctx) -> HookResult {
        for name in &self.images {
            let image = tracing::info_span!("image", name = %name, bytes = tracing::field::Empty);
            let _in = image.enter();
            let data = tracing::info_span!("decode").in_scope(|| vec![0u8; 1024 * name.len()]);
            tracing::info_span!("resize", width = 640u64).in_scope(|| {
                tracing::info!(size = data.len() as u64, "resized");
            });
            image.record("bytes", data.len() as u64);
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("otel-example")));
    tracing::subscriber::with_default(subscriber, || -> anyhow::Result<()> {
        let request = tracing::info_span!("request", user = "ada");
        let _in = request.enter();
        let mut a = Resizer {
            images: vec!["cat.png".into(), "dog.png".into()],
        }
        .start()?;
        let mut b = Resizer {
            images: vec!["owl.png".into()],
        }
        .start()?;
        a.wait()?;
        b.wait()?;
        Ok(())
    })?;
    provider.force_flush()?;
    let spans = exporter.get_finished_spans()?;
    let roots: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.parent_span_id == SpanId::INVALID)
        .collect();
    for root in roots {
        println!("trace {}", root.span_context.trace_id());
        print_tree(&spans, root, 1);
    }
    provider.shutdown()?;
    Ok(())
}

/// Prints `span` and the spans under it, indented.
fn print_tree(spans: &[SpanData], span: &SpanData, depth: usize) {
    let fields: Vec<String> = span
        .attributes
        .iter()
        .filter(|a| {
            !a.key.as_str().contains('.')
                && !["busy_ns", "idle_ns", "target"].contains(&a.key.as_str())
        })
        .map(|a| format!("{}={}", a.key, a.value))
        .collect();
    println!(
        "{:indent$}{} (span {}) {}",
        "",
        span.name,
        span.span_context.span_id(),
        fields.join(" "),
        indent = depth * 2
    );
    let mut children: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.parent_span_id == span.span_context.span_id())
        .collect();
    children.sort_by_key(|s| s.start_time);
    for child in children {
        print_tree(spans, child, depth + 1);
    }
}
