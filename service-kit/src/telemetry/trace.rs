//! One send, one trace: each step of the message path joins the W3C trace its input names (an
//! HTTP request's `traceparent` header, a Kafka record's `traceparent` field) and passes its
//! own [`TraceParent`] on, so the lines of every process a message crosses carry one
//! `trace_id` (docs/architecture.md, "Tracing").
//!
//! Without the `otlp` feature a step's id is random and lives only in what it sends on; with
//! it, the step is an exported span and its ids are the span's.

use switchboard_protocol::trace_context::{SpanId, TraceId, TraceParent, SAMPLED};
use tracing::Span;

/// Makes `span` a step of the trace `incoming` names, or the first step of a new trace, and
/// answers the step's own traceparent: what it sends onward (same trace, this step as the
/// parent). Records the trace id in `span`'s `trace_id` field, which the span must declare
/// (`trace_id = tracing::field::Empty`). A disabled span costs two random ids, no more.
pub fn join(span: &Span, incoming: Option<TraceParent>) -> TraceParent {
    let step = exported(span, incoming).unwrap_or_else(|| match incoming {
        Some(parent) => parent.child(new_span_id()),
        None => new_root(),
    });
    span.record("trace_id", tracing::field::display(step.trace_id));
    step
}

/// The exported span's own ids, when spans are exported.
#[cfg(feature = "otlp")]
fn exported(span: &Span, incoming: Option<TraceParent>) -> Option<TraceParent> {
    super::otlp::join(span, incoming)
}

#[cfg(not(feature = "otlp"))]
fn exported(_: &Span, _: Option<TraceParent>) -> Option<TraceParent> {
    None
}

/// A new trace's first step, sampled.
pub fn new_root() -> TraceParent {
    loop {
        // Ids are random and never all zero (the spec's invalid value): a zero draw is
        // drawn again.
        if let Some(root) =
            TraceParent::new(TraceId(rand::random()), SpanId(rand::random()), SAMPLED)
        {
            return root;
        }
    }
}

/// A new step id (never all zeros).
pub fn new_span_id() -> SpanId {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return SpanId(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_continues_the_incoming_trace_under_an_id_of_its_own() {
        let incoming =
            TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap();
        let span = tracing::info_span!("step", trace_id = tracing::field::Empty);
        let step = join(&span, Some(incoming));
        assert_eq!(step.trace_id, incoming.trace_id);
        assert_eq!(
            step.flags, incoming.flags,
            "the caller's sampling decision holds"
        );
        assert_ne!(step.parent_id, incoming.parent_id);
        let root = join(&span, None);
        assert_ne!(root.trace_id, incoming.trace_id);
        assert!(root.sampled());
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
    }
}
