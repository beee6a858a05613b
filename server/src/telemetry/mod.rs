//! Traces: a span per request, compile, run and host call with outside
//! effects, with W3C trace context in and out, exported over OTLP when
//! `otlp_endpoint` is set ([`export`]).
//!
//! `tracing` spans become OpenTelemetry spans through
//! `tracing-opentelemetry` ([`start`] builds the layer). Every span gets a
//! trace id and a span id whether or not anything is exported, so log lines
//! name them ([`current_ids`]) and responses carry a `traceparent`. The
//! request middleware continues a client's trace ([`continue_trace`]);
//! `RequestGet`/`RequestPost` send the host call's context upstream
//! ([`outbound_headers`]). The secrets filter ([`redact`]) sits in front of
//! the exporter, so no span attribute leaves the process unfiltered.
//!
//! Span conventions (`tracing-opentelemetry`'s): `otel.name` (the span's
//! name, else the `tracing` name), `otel.kind` (`server`, `client`, else
//! internal), `otel.status_code` (`ok` or `error`); other fields are
//! attributes.

pub mod export;
pub mod redact;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::{Metadata, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

pub use export::{OtlpEndpoint, OtlpProtocol};

/// What the `otlp_*` keys say.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// `None`: nothing is exported (ids are still made, for the logs).
    pub endpoint: Option<OtlpEndpoint>,
    /// `service.name` of the exported resource.
    pub service_name: String,
}

/// Keeps the tracer provider; dropping it sends the spans still queued
/// (within five seconds) and stops the exporter.
#[derive(Debug)]
pub struct TracesGuard {
    provider: SdkTracerProvider,
}

impl Drop for TracesGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("the trace exporter did not stop cleanly: {e}");
        }
    }
}

/// The trace layer for the process subscriber (it sees spans only: events
/// are the log layer's business) and the guard to keep until exit. With an
/// endpoint, call this inside the Tokio runtime that is to carry the gRPC
/// connection. The error says what is wrong with the exporter's settings.
pub fn start<S>(config: &TelemetryConfig) -> Result<(impl Layer<S> + use<S>, TracesGuard), String>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    // A client's sampling decision is kept; a new trace is sampled.
    let mut builder = SdkTracerProvider::builder().with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
    if let Some(endpoint) = &config.endpoint {
        builder = builder
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .with_span_processor(export::processor(endpoint)?);
    }
    let provider = builder.build();
    let tracer = provider.tracer("avap");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta: &Metadata<'_>| {
            meta.is_span()
        }));
    Ok((layer, TracesGuard { provider }))
}

/// Make `span` continue the trace named by a valid W3C `traceparent` in
/// `headers` (an invalid one is ignored, as the recommendation says: the
/// span starts a new trace).
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        // Fails only when the span is disabled or already started.
        let _ = span.set_parent(parent);
    }
}

/// The `traceparent` header naming `span`, for a response: what
/// `TraceContextPropagator` writes (version 00, the sampled flag only),
/// formatted here without the header map and the `tracestate` it would
/// also build for every response.
pub fn traceparent(span: &tracing::Span) -> Option<(HeaderName, HeaderValue)> {
    let context = span.context();
    let span = context.span();
    let ids = span.span_context();
    if !ids.is_valid() {
        return None;
    }
    let flags = ids.trace_flags() & opentelemetry::trace::TraceFlags::SAMPLED;
    let value = format!("00-{}-{}-{:02x}", ids.trace_id(), ids.span_id(), flags.to_u8());
    Some((
        HeaderName::from_static("traceparent"),
        HeaderValue::from_str(&value).ok()?,
    ))
}

/// The W3C trace-context headers for a call made from the current span
/// (a host call's span: the upstream's spans become its children).
pub fn outbound_headers() -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = HeaderMap::new();
    TraceContextPropagator::new()
        .inject_context(&tracing::Span::current().context(), &mut HeaderInjector(&mut headers));
    headers
        .into_iter()
        .filter_map(|(name, value)| Some((name?, value)))
        .collect()
}

/// Trace id (32 hex digits) and span id (16) of span `id` of `dispatch`,
/// if it has any, for log lines. Do not hold the span's extensions.
pub fn ids(id: &tracing::span::Id, dispatch: &tracing::Dispatch) -> Option<(String, String)> {
    let context = tracing_opentelemetry::get_otel_context(id, dispatch)?;
    let span = context.span();
    let ids = span.span_context();
    ids.is_valid()
        .then(|| (ids.trace_id().to_string(), ids.span_id().to_string()))
}

/// Note a run's outcome on its `run` span: `outcome` (`ok`, the error
/// kind of the run, or the request error's kind), `fuel` used, the status.
pub fn record_run(span: &tracing::Span, result: &Result<avap_runtime::RunReport, super::ApiError>) {
    match result {
        Ok(report) => {
            let outcome = if report.envelope.is_ok() {
                "ok"
            } else {
                report.envelope.error_kind().unwrap_or("error")
            };
            span.record("outcome", outcome);
            // As i64: OpenTelemetry has no unsigned integers (a u64 would be exported as text).
            span.record("fuel", i64::try_from(report.usage.fuel).unwrap_or(i64::MAX));
            span.record("http.response.status_code", i64::from(report.http_status));
            if outcome != "ok" {
                span.record("otel.status_code", "error");
            }
        }
        Err(e) => {
            span.record("outcome", e.kind());
            span.record("otel.status_code", "error");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{SpanKind, Status};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Keeps what it is given.
    #[derive(Debug, Clone, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collect {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    /// Spans finished by `work`, through the same filtering exporter as production.
    fn collect(work: impl FnOnce()) -> Vec<SpanData> {
        let sink = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .with_simple_exporter(export::Scrubbed::new(sink.clone(), "test".into()))
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), work);
        let _ = provider.shutdown();
        sink.0.lock().unwrap().clone()
    }

    fn attr(span: &SpanData, key: &str) -> Option<opentelemetry::Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.clone())
    }

    #[test]
    fn children_inherit_the_remote_trace_and_secrets_stay_out() {
        let mut headers = HeaderMap::new();
        let remote = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        headers.insert("traceparent", HeaderValue::from_static(remote));
        let mut upstream = Vec::new();
        let mut answered = None;
        let spans = collect(|| {
            let request = tracing::error_span!(
                "request",
                otel.name = "GET /x",
                otel.kind = "server",
                authorization = "Bearer abc",
                path = "/x?token=T0PSECRET",
                status = tracing::field::Empty,
            );
            continue_trace(&request, &headers);
            request.in_scope(|| {
                let run = tracing::info_span!("run", script.name = "inline", otel.status_code = tracing::field::Empty);
                run.in_scope(|| {
                    tracing::info_span!("host_call", otel.name = "RequestGet", otel.kind = "client")
                        .in_scope(|| upstream = outbound_headers());
                });
                run.record("otel.status_code", "error");
            });
            request.record("status", 200i64);
            answered = traceparent(&request);
        });
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["RequestGet", "run", "GET /x"], "closed innermost first");
        let [host, run, request] = &spans[..] else {
            unreachable!()
        };
        let trace = "0af7651916cd43dd8448eb211c80319c";
        assert!(spans.iter().all(|s| s.span_context.trace_id().to_string() == trace));
        assert_eq!(request.parent_span_id.to_string(), "b7ad6b7169203331");
        assert!(request.parent_span_is_remote);
        assert_eq!(run.parent_span_id, request.span_context.span_id());
        assert_eq!(host.parent_span_id, run.span_context.span_id());
        assert_eq!(
            (&request.span_kind, &host.span_kind, &run.span_kind),
            (&SpanKind::Server, &SpanKind::Client, &SpanKind::Internal)
        );
        assert!(matches!(run.status, Status::Error { .. }));
        assert_eq!(attr(request, "authorization"), Some(redact::REDACTED.into()));
        assert_eq!(attr(request, "path"), Some("/x?token=[redacted]".into()));
        assert_eq!(attr(request, "status"), Some(200i64.into()));
        assert_eq!(attr(run, "script.name"), Some("inline".into()));
        // The upstream is told the host call's span; the client the request's.
        let sent = upstream
            .iter()
            .find(|(k, _)| k == "traceparent")
            .expect("a traceparent upstream");
        assert_eq!(
            sent.1.to_str().unwrap(),
            format!("00-{trace}-{}-01", host.span_context.span_id())
        );
        let (_, answered) = answered.expect("a traceparent for the response");
        assert_eq!(
            answered.to_str().unwrap(),
            format!("00-{trace}-{}-01", request.span_context.span_id())
        );
    }

    #[test]
    fn a_span_without_parent_starts_a_trace_and_unsampled_traces_are_not_exported() {
        let mut unsampled = HeaderMap::new();
        unsampled.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
        );
        let mut invalid = HeaderMap::new();
        invalid.insert("traceparent", HeaderValue::from_static("00-zz-b7ad6b7169203331-01"));
        let spans = collect(|| {
            tracing::info_span!("a").in_scope(|| {});
            let b = tracing::info_span!("b");
            continue_trace(&b, &invalid);
            b.in_scope(|| {});
            let c = tracing::info_span!("c");
            continue_trace(&c, &unsampled);
            c.in_scope(|| tracing::info_span!("d").in_scope(|| {}));
            // The response says what the propagator would: not sampled.
            let (_, answered) = traceparent(&c).expect("a traceparent for the response");
            let mut injected = HeaderMap::new();
            TraceContextPropagator::new().inject_context(&c.context(), &mut HeaderInjector(&mut injected));
            assert_eq!(Some(&answered), injected.get("traceparent"));
            assert!(answered.to_str().unwrap().ends_with("-00"), "{answered:?}");
        });
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["a", "b"], "{spans:?}");
        assert_ne!(spans[0].span_context.trace_id(), spans[1].span_context.trace_id());
        assert_eq!(spans[1].parent_span_id, opentelemetry::trace::SpanId::INVALID);
    }

    #[test]
    fn log_lines_find_the_ids_of_the_current_span() {
        let mut seen = None;
        let (layer, _guard) = start(&TelemetryConfig::default()).unwrap();
        let current = || {
            let id = tracing::Span::current().id()?;
            tracing::dispatcher::get_default(|dispatch| ids(&id, dispatch))
        };
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            assert_eq!(current(), None, "no span, no ids");
            let outer = tracing::info_span!("outer");
            outer.in_scope(|| tracing::info_span!("inner").in_scope(|| seen = current()));
        });
        let (trace_id, span_id) = seen.expect("ids inside a span");
        assert_eq!((trace_id.len(), span_id.len()), (32, 16));
    }
}
