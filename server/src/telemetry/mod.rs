//! Traces: a span per request, compile, run and host call with outside
//! effects, with W3C trace context in and out, exported over OTLP/HTTP JSON
//! when `otlp_endpoint` is set ([`export`]).
//!
//! [`TraceLayer`] is a `tracing` layer. It gives every span a trace id and
//! a span id — inherited from its parent span, taken from the fields
//! `otel.trace_id`/`otel.span_id`/`otel.parent_span_id`/`otel.sampled`
//! (set by the request middleware from the client's `traceparent`), or new —
//! so the log lines written inside a span carry them ([`ids`]), exporting or
//! not. When exporting, it also keeps each span's fields (through the
//! secrets filter, [`redact`]) and queues the finished span.
//!
//! Span conventions (fields with these names steer the export and are not
//! attributes): `otel.name` (the span's name, else the `tracing` name),
//! `otel.kind` (`server`, `client`, else internal), `otel.status_code`
//! (`ok` or `error`).

pub mod context;
pub mod export;
pub mod redact;

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

pub use context::{RemoteParent, SpanId, TRACEPARENT, TraceId, traceparent};
use export::{AttrValue, Exporter, ExporterGuard, OtlpEndpoint, SpanKind, SpanRecord, StatusCode};

/// What the `otlp_*` keys say.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// `None`: nothing is exported (ids are still made, for the logs).
    pub endpoint: Option<OtlpEndpoint>,
    /// `service.name` of the exported resource.
    pub service_name: String,
}

/// The trace layer for the process subscriber, and the exporter's guard
/// (keep it until exit: dropping it sends the last spans).
pub fn start(config: &TelemetryConfig) -> std::io::Result<(TraceLayer, Option<ExporterGuard>)> {
    match &config.endpoint {
        None => Ok((TraceLayer { exporter: None }, None)),
        Some(endpoint) => {
            let (exporter, guard) = export::start(endpoint.clone(), config.service_name.clone())?;
            Ok((
                TraceLayer {
                    exporter: Some(exporter),
                },
                Some(guard),
            ))
        }
    }
}

/// The ids of a span, kept in its registry extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanIds {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub sampled: bool,
}

/// The ids of `span`, or of its nearest ancestor that has them (spans
/// the trace layer did not see have none).
pub fn ids<'a, R: LookupSpan<'a>>(span: &SpanRef<'a, R>) -> Option<SpanIds> {
    span.scope().find_map(|s| s.extensions().get::<SpanIds>().copied())
}

/// What an exported span keeps until it closes.
struct Pending {
    name: String,
    kind: SpanKind,
    status: StatusCode,
    start_unix_nanos: u64,
    attributes: Vec<(&'static str, AttrValue)>,
}

/// See the [module docs](self).
#[derive(Debug, Clone)]
pub struct TraceLayer {
    exporter: Option<Exporter>,
}

impl TraceLayer {
    /// Only spans reach this layer: events are the log layer's business.
    pub fn filter<S>() -> impl Filter<S> {
        tracing_subscriber::filter::filter_fn(|meta: &Metadata<'_>| meta.is_span())
    }
}

impl<S> Layer<S> for TraceLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::new(self.exporter.is_some());
        attrs.record(&mut fields);
        let inherited = span.parent().and_then(|parent| ids(&parent));
        let span_ids = match (fields.explicit(), inherited) {
            (Some(explicit), _) => explicit,
            (None, Some(parent)) => SpanIds {
                trace_id: parent.trace_id,
                span_id: SpanId::random(),
                parent_span_id: Some(parent.span_id),
                sampled: parent.sampled,
            },
            (None, None) => SpanIds {
                trace_id: TraceId::random(),
                span_id: SpanId::random(),
                parent_span_id: None,
                sampled: true,
            },
        };
        let mut extensions = span.extensions_mut();
        extensions.insert(span_ids);
        if self.exporter.is_some() && span_ids.sampled {
            extensions.insert(Pending {
                name: fields.name.take().unwrap_or_else(|| attrs.metadata().name().to_owned()),
                kind: fields.kind,
                status: fields.status,
                start_unix_nanos: now_unix_nanos(),
                attributes: fields.attributes,
            });
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if self.exporter.is_none() {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        let Some(pending) = extensions.get_mut::<Pending>() else {
            return;
        };
        let mut fields = Fields::new(true);
        values.record(&mut fields);
        if let Some(name) = fields.name {
            pending.name = name;
        }
        if fields.status != StatusCode::Unset {
            pending.status = fields.status;
        }
        for (key, value) in fields.attributes {
            match pending.attributes.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => pending.attributes.push((key, value)),
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(exporter) = &self.exporter else { return };
        let Some(span) = ctx.span(&id) else { return };
        let Some(ids) = span.extensions().get::<SpanIds>().copied() else {
            return;
        };
        let Some(pending) = span.extensions_mut().remove::<Pending>() else {
            return;
        };
        exporter.export(SpanRecord {
            trace_id: ids.trace_id,
            span_id: ids.span_id,
            parent_span_id: ids.parent_span_id,
            name: pending.name,
            kind: pending.kind,
            start_unix_nanos: pending.start_unix_nanos,
            end_unix_nanos: now_unix_nanos(),
            attributes: pending.attributes,
            status: pending.status,
        });
    }
}

/// Note a run's outcome on its `run` span: `outcome` (`ok`, the error
/// kind of the run, or the request error's kind), `fuel` used, the status.
pub fn record_run(span: &tracing::Span, result: &Result<avap_runtime::RunReport, super::ApiError>) {
    match result {
        Ok(report) => {
            let outcome = if report.envelope["status"] == true {
                "ok"
            } else {
                report.envelope["error"]["kind"].as_str().unwrap_or("error")
            };
            span.record("outcome", outcome);
            span.record("fuel", report.usage.fuel);
            span.record("http.response.status_code", report.http_status);
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

fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A span's fields: the `otel.*` conventions, and (when exporting) the
/// rest as attributes, through the secrets filter.
struct Fields {
    keep_attributes: bool,
    name: Option<String>,
    kind: SpanKind,
    status: StatusCode,
    trace_id: Option<TraceId>,
    span_id: Option<SpanId>,
    parent_span_id: Option<SpanId>,
    sampled: Option<bool>,
    attributes: Vec<(&'static str, AttrValue)>,
}

impl Fields {
    fn new(keep_attributes: bool) -> Fields {
        Fields {
            keep_attributes,
            name: None,
            kind: SpanKind::Internal,
            status: StatusCode::Unset,
            trace_id: None,
            span_id: None,
            parent_span_id: None,
            sampled: None,
            attributes: Vec::new(),
        }
    }

    /// The ids the span was created with, if it names its trace and itself.
    fn explicit(&self) -> Option<SpanIds> {
        Some(SpanIds {
            trace_id: self.trace_id?,
            span_id: self.span_id?,
            parent_span_id: self.parent_span_id,
            sampled: self.sampled.unwrap_or(true),
        })
    }

    /// A text value: the `otel.*` conventions, else an attribute.
    fn text(&mut self, field: &Field, value: &str) {
        match field.name() {
            "otel.name" => self.name = Some(redact::scrub(value).into_owned()),
            "otel.kind" => {
                self.kind = match value {
                    "server" => SpanKind::Server,
                    "client" => SpanKind::Client,
                    _ => SpanKind::Internal,
                };
            }
            "otel.status_code" => {
                self.status = match value {
                    "error" | "ERROR" => StatusCode::Error,
                    "ok" | "OK" => StatusCode::Ok,
                    _ => StatusCode::Unset,
                };
            }
            "otel.trace_id" => self.trace_id = TraceId::parse(value),
            "otel.span_id" => self.span_id = SpanId::parse(value),
            "otel.parent_span_id" => self.parent_span_id = SpanId::parse(value),
            name => {
                if self.keep_attributes {
                    let shown = redact::field_text(name, value).into_owned();
                    self.attributes.push((field.name(), AttrValue::Str(shown)));
                }
            }
        }
    }

    fn value(&mut self, field: &Field, value: AttrValue) {
        if !self.keep_attributes {
            return;
        }
        let value = if redact::is_sensitive(field.name()) {
            AttrValue::Str(redact::REDACTED.to_owned())
        } else {
            value
        };
        self.attributes.push((field.name(), value));
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields arrive here too, formatted with Display. Format
        // only what is used: the conventions, and attributes when exporting.
        if self.keep_attributes || field.name().starts_with("otel.") {
            self.text(field, &format!("{value:?}"));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "otel.sampled" {
            self.sampled = Some(value);
        } else {
            self.value(field, AttrValue::Bool(value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.value(field, AttrValue::Int(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let value = i64::try_from(value).map_or_else(|_| AttrValue::Str(value.to_string()), AttrValue::Int);
        self.value(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.value(field, AttrValue::Double(value));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Spans exported through a real [`TraceLayer`] into a channel.
    fn collect(work: impl FnOnce()) -> Vec<SpanRecord> {
        let (queue, spans) = std::sync::mpsc::sync_channel(64);
        let layer = TraceLayer {
            exporter: Some(Exporter::for_tests(queue)),
        };
        let subscriber = tracing_subscriber::registry().with(layer.with_filter(TraceLayer::filter()));
        tracing::subscriber::with_default(subscriber, work);
        export::drain_for_tests(&spans)
    }

    #[test]
    fn children_inherit_the_trace_and_secrets_stay_out() {
        let remote = TraceId(0xabc);
        let spans = collect(|| {
            let request = tracing::error_span!(
                "request",
                otel.name = "GET /x",
                otel.kind = "server",
                otel.trace_id = %remote,
                otel.span_id = %SpanId(7),
                otel.parent_span_id = %SpanId(5),
                authorization = "Bearer abc",
                path = "/x?token=T0PSECRET",
                status = tracing::field::Empty,
            );
            request.in_scope(|| {
                let run = tracing::info_span!("run", script.name = "inline", otel.status_code = tracing::field::Empty);
                run.in_scope(|| {
                    tracing::info_span!("host_call", otel.name = "RequestGet", otel.kind = "client").in_scope(|| {});
                });
                run.record("otel.status_code", "error");
            });
            request.record("status", 200u64);
        });
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["RequestGet", "run", "GET /x"], "closed innermost first");
        let [host, run, request] = &spans[..] else {
            unreachable!()
        };
        assert!(spans.iter().all(|s| s.trace_id == remote));
        assert_eq!((request.span_id, request.parent_span_id), (SpanId(7), Some(SpanId(5))));
        assert_eq!(run.parent_span_id, Some(request.span_id));
        assert_eq!(host.parent_span_id, Some(run.span_id));
        assert_eq!(
            (request.kind, host.kind, run.kind),
            (SpanKind::Server, SpanKind::Client, SpanKind::Internal)
        );
        assert_eq!(run.status, StatusCode::Error);
        let attr = |s: &SpanRecord, k: &str| s.attributes.iter().find(|(key, _)| *key == k).map(|(_, v)| v.clone());
        assert_eq!(
            attr(request, "authorization"),
            Some(AttrValue::Str(redact::REDACTED.into()))
        );
        assert_eq!(
            attr(request, "path"),
            Some(AttrValue::Str("/x?token=[redacted]".into()))
        );
        assert_eq!(attr(request, "status"), Some(AttrValue::Int(200)));
        assert_eq!(attr(run, "script.name"), Some(AttrValue::Str("inline".into())));
        assert!(
            attr(request, "otel.trace_id").is_none(),
            "conventions are not attributes"
        );
    }

    #[test]
    fn a_span_without_parent_starts_a_trace_and_unsampled_traces_are_not_exported() {
        let spans = collect(|| {
            tracing::info_span!("a").in_scope(|| {});
            tracing::info_span!("b").in_scope(|| {});
            tracing::info_span!("c", otel.trace_id = %TraceId(9), otel.span_id = %SpanId(9), otel.sampled = false)
                .in_scope(|| tracing::info_span!("d").in_scope(|| {}));
        });
        assert_eq!(spans.len(), 2, "{spans:?}");
        assert_ne!(spans[0].trace_id, spans[1].trace_id);
        assert_eq!(spans[0].parent_span_id, None);
    }

    #[test]
    fn ids_are_found_from_a_span_or_its_ancestors() {
        let seen = Arc::new(Mutex::new(None));
        let layer = TraceLayer { exporter: None };
        let subscriber = tracing_subscriber::registry().with(layer.with_filter(TraceLayer::filter()));
        let out = seen.clone();
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("outer", otel.trace_id = %TraceId(3), otel.span_id = %SpanId(4));
            let _in = outer.enter();
            let inner = tracing::info_span!("inner");
            inner.with_subscriber(|(id, dispatch)| {
                let registry = dispatch
                    .downcast_ref::<tracing_subscriber::Registry>()
                    .expect("a registry");
                let span = registry.span(id).expect("the span");
                *out.lock().unwrap() = ids(&span);
            });
        });
        let ids = seen.lock().unwrap().expect("ids");
        assert_eq!((ids.trace_id, ids.parent_span_id), (TraceId(3), Some(SpanId(4))));
    }
}
