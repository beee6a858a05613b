//! Trace and span ids for a process that exports no traces.
//!
//! Log lines, the response's `traceparent` and the headers of outbound
//! calls need every span's trace id, span id and sampled flag whether or
//! not anything is exported. `tracing-opentelemetry` gives them, but also
//! builds an OpenTelemetry span for every `tracing` span (attributes,
//! timings, events, context activation on every enter and exit): about
//! 27,000 of the ~178,000 instructions a stored hello costs the server
//! (BENCHMARKS.md, issue 20 part 10), all thrown away when there is no
//! exporter. [`IdsLayer`] makes only the ids, the way the SDK would: a root
//! span starts a trace (sampled: the sampler is parent-based, always on),
//! a child keeps its parent's trace, sampled flag and trace state, and ids
//! come from the SDK's own generator. With an exporter, the OpenTelemetry
//! layer runs instead and this module is not installed.

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
use tracing::span::{Attributes, Id};
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::Registry;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// What a span's ids are, kept in its extensions.
#[derive(Debug, Clone)]
pub(super) struct SpanIds {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
    /// A remote parent's `tracestate`, passed on unchanged (empty otherwise).
    pub trace_state: TraceState,
}

impl SpanIds {
    /// As the OpenTelemetry API names the same span (for the propagator).
    pub fn context(&self) -> SpanContext {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        SpanContext::new(self.trace_id, self.span_id, flags, false, self.trace_state.clone())
    }
}

/// Gives every new span its [`SpanIds`]; see the module comment.
#[derive(Debug, Default)]
pub struct IdsLayer {
    ids: RandomIdGenerator,
}

impl IdsLayer {
    fn span_id(&self) -> SpanId {
        valid(|| self.ids.new_span_id(), &SpanId::INVALID)
    }

    fn trace_id(&self) -> TraceId {
        valid(|| self.ids.new_trace_id(), &TraceId::INVALID)
    }
}

/// The first id of `make` that is not `invalid` (all zeros, which W3C
/// trace context rejects; the generator gives it once in 2^64 or 2^128).
fn valid<T: PartialEq>(make: impl Fn() -> T, invalid: &T) -> T {
    loop {
        let id = make();
        if id != *invalid {
            return id;
        }
    }
}

impl<S> Layer<S> for IdsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, _attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        // The registry has already resolved the parent (explicit or the current span).
        let parent = span
            .parent()
            .and_then(|parent| parent.extensions().get::<SpanIds>().cloned());
        let ids = match parent {
            Some(parent) => SpanIds {
                span_id: self.span_id(),
                ..parent
            },
            None => SpanIds {
                trace_id: self.trace_id(),
                span_id: self.span_id(),
                sampled: true,
                trace_state: TraceState::NONE,
            },
        };
        span.extensions_mut().insert(ids);
    }
}

/// `f` of span `id`'s ids, when [`IdsLayer`] gave it some (`None` under the
/// OpenTelemetry layer, or with no registry).
pub(super) fn with_ids<R>(id: &Id, dispatch: &Dispatch, f: impl FnOnce(&mut SpanIds) -> R) -> Option<R> {
    let registry = dispatch.downcast_ref::<Registry>()?;
    let span = registry.span(id)?;
    let mut extensions = span.extensions_mut();
    extensions.get_mut::<SpanIds>().map(f)
}
