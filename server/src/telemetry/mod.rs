//! Traces: a span per request, compile, run and host call with outside
//! effects, with W3C trace context in and out, exported over OTLP when
//! `otlp_endpoint` is set ([`export`]).
//!
//! With an exporter, `tracing` spans become OpenTelemetry spans through
//! `tracing-opentelemetry`; without one, [`ids::IdsLayer`] only gives them
//! ids ([`start`] builds one layer or the other). Either way every span has
//! a trace id and a span id, so log lines name them ([`ids()`]) and
//! responses carry a `traceparent`. The request middleware continues a
//! client's trace ([`continue_trace`]);
//! `RequestGet`/`RequestPost` send the host call's context upstream
//! ([`outbound_headers`]). The secrets filter ([`redact`]) sits in front of
//! the exporter, so no span attribute leaves the process unfiltered.
//!
//! Span conventions (`tracing-opentelemetry`'s): `otel.name` (the span's
//! name, else the `tracing` name), `otel.kind` (`server`, `client`, else
//! internal), `otel.status_code` (`ok` or `error`); other fields are
//! attributes.

pub mod export;
mod ids;
pub mod redact;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{SpanContext, TraceContextExt as _, TracerProvider as _};
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

/// What [`start`] gives the process subscriber: OpenTelemetry's layer when
/// spans are exported, [`ids::IdsLayer`] otherwise.
pub type TraceLayer<S> = Box<dyn Layer<S> + Send + Sync>;

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
pub fn start<S>(config: &TelemetryConfig) -> Result<(TraceLayer<S>, TracesGuard), String>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
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
    if config.endpoint.is_none() {
        // Nothing to export: ids only (see `ids`).
        return Ok((Box::new(ids::IdsLayer::default()), TracesGuard { provider }));
    }
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("avap"))
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta: &Metadata<'_>| {
            meta.is_span()
        }));
    Ok((Box::new(spans), TracesGuard { provider }))
}

/// Make `span` continue the trace named by a valid W3C `traceparent` in
/// `headers` (an invalid one is ignored, as the recommendation says: the
/// span starts a new trace). Call it before the span has children: they
/// took its ids when they were created.
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let remote = parent.span().span_context().clone();
    if !remote.is_valid() {
        return;
    }
    let adopted = span.with_subscriber(|(id, dispatch)| {
        ids::with_ids(id, dispatch, |ids| {
            ids.trace_id = remote.trace_id();
            ids.sampled = remote.is_sampled();
            ids.trace_state = remote.trace_state().clone();
        })
    });
    if adopted.flatten().is_none() {
        // Fails only when the span is disabled or already started.
        let _ = span.set_parent(parent);
    }
}

/// The ids of `span`, from whichever layer made them.
fn span_context(span: &tracing::Span) -> SpanContext {
    let own = span.with_subscriber(|(id, dispatch)| ids::with_ids(id, dispatch, |ids| ids.context()));
    own.flatten()
        .unwrap_or_else(|| span.context().span().span_context().clone())
}

/// The `traceparent` header naming `span`, for a response: what
/// `TraceContextPropagator` writes (version 00, the sampled flag only),
/// formatted here without the header map and the `tracestate` it would
/// also build for every response.
pub fn traceparent(span: &tracing::Span) -> Option<(HeaderName, HeaderValue)> {
    let ids = span_context(span);
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
    let context = opentelemetry::Context::new().with_remote_span_context(span_context(&tracing::Span::current()));
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(&mut headers));
    headers
        .into_iter()
        .filter_map(|(name, value)| Some((name?, value)))
        .collect()
}

/// Trace id (32 hex digits) and span id (16) of span `id` of `dispatch`,
/// if it has any, for log lines. Do not hold the span's extensions.
pub fn ids(id: &tracing::span::Id, dispatch: &tracing::Dispatch) -> Option<(String, String)> {
    // `IdsLayer` never makes an invalid id.
    if let Some(own) = ids::with_ids(id, dispatch, |ids| (ids.trace_id.to_string(), ids.span_id.to_string())) {
        return Some(own);
    }
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

    /// A request's headers with this `traceparent`.
    fn trace_headers(traceparent: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static(traceparent));
        headers
    }

    fn attr(span: &SpanData, key: &str) -> Option<opentelemetry::Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.clone())
    }

    #[test]
    fn children_inherit_the_remote_trace_and_secrets_stay_out() {
        let headers = trace_headers("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
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
        let unsampled = trace_headers("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00");
        let invalid = trace_headers("00-zz-b7ad6b7169203331-01");
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

    /// Runs `work` under the layer `start` builds when nothing is exported.
    fn without_exporter(work: impl FnOnce()) {
        let (layer, _guard) = start(&TelemetryConfig::default()).unwrap();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), work);
    }

    fn ids_of(span: &tracing::Span) -> (String, String) {
        span.with_subscriber(|(id, dispatch)| ids(id, dispatch))
            .flatten()
            .expect("the span has ids")
    }

    #[test]
    fn without_an_exporter_spans_still_carry_the_remote_trace() {
        let mut headers = trace_headers("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        headers.insert("tracestate", HeaderValue::from_static("vendor=abc"));
        without_exporter(|| {
            let request = tracing::error_span!("request");
            continue_trace(&request, &headers);
            let (host, sent) = request.in_scope(|| {
                let run = tracing::info_span!("run");
                run.in_scope(|| {
                    let host = tracing::info_span!("host_call");
                    let sent = host.in_scope(outbound_headers);
                    (host, sent)
                })
            });
            let trace = "0af7651916cd43dd8448eb211c80319c";
            let (request_trace, request_span) = ids_of(&request);
            let (host_trace, host_span) = ids_of(&host);
            assert_eq!((request_trace.as_str(), host_trace.as_str()), (trace, trace));
            assert_ne!(
                request_span, "b7ad6b7169203331",
                "the request is a new span of the remote trace"
            );
            assert_ne!(request_span, host_span);
            let header = |name: &str| {
                sent.iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.to_str().unwrap().to_owned())
            };
            assert_eq!(header("traceparent"), Some(format!("00-{trace}-{host_span}-01")));
            assert_eq!(header("tracestate").as_deref(), Some("vendor=abc"));
            let (_, answered) = traceparent(&request).expect("a traceparent for the response");
            assert_eq!(answered.to_str().unwrap(), format!("00-{trace}-{request_span}-01"));
        });
    }

    #[test]
    fn without_an_exporter_roots_start_traces_and_the_sampled_flag_is_kept() {
        let unsampled = trace_headers("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00");
        let invalid = trace_headers("00-zz-b7ad6b7169203331-01");
        without_exporter(|| {
            let a = tracing::info_span!("a");
            let b = tracing::info_span!("b");
            continue_trace(&b, &invalid);
            let (a_trace, _) = ids_of(&a);
            let (b_trace, b_span) = ids_of(&b);
            assert_ne!(a_trace, b_trace, "two roots, two traces");
            assert_ne!(b_trace, "0af7651916cd43dd8448eb211c80319c");
            let (_, answered) = traceparent(&b).unwrap();
            assert_eq!(
                answered.to_str().unwrap(),
                format!("00-{b_trace}-{b_span}-01"),
                "a new trace is sampled"
            );

            let c = tracing::info_span!("c");
            continue_trace(&c, &unsampled);
            let d = c.in_scope(|| tracing::info_span!("d"));
            let (_, answered) = traceparent(&c).unwrap();
            assert!(answered.to_str().unwrap().ends_with("-00"), "{answered:?}");
            let sent = d.in_scope(outbound_headers);
            let (_, d_span) = ids_of(&d);
            let parent = sent.iter().find(|(k, _)| k == "traceparent").unwrap();
            assert_eq!(
                parent.1.to_str().unwrap(),
                format!("00-0af7651916cd43dd8448eb211c80319c-{d_span}-00"),
                "a child of an unsampled trace is unsampled"
            );
        });
    }

    #[test]
    fn without_an_exporter_nothing_outside_a_span_has_ids() {
        without_exporter(|| {
            assert!(outbound_headers().is_empty());
            assert!(traceparent(&tracing::Span::none()).is_none());
        });
    }
}
