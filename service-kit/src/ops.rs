//! Operational endpoints every service mounts: `/live` (the process answers), `/ready` (its
//! dependencies answer too, so a balancer stops sending it work when they do not) and
//! `/metrics` (Prometheus text). Plus the middleware that times every HTTP request and runs
//! it in a `request` span joined to the W3C trace of its `traceparent` header (or a new one).

use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use futures_util::future::{BoxFuture, LocalBoxFuture};
use prometheus::{Encoder, HistogramOpts, HistogramVec, Registry, TextEncoder};
use switchboard_protocol::trace_context::{TraceParent, TRACEPARENT_HEADER};
use tracing::Instrument;

/// One readiness probe: `Ok` when the dependency answers, `Err(why)` otherwise.
pub type ReadinessCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Shared by `/ready` and `/metrics`; put it in app data with [`Ops::configure`].
#[derive(Clone)]
pub struct Ops {
    pub registry: Registry,
    checks: Vec<(&'static str, ReadinessCheck)>,
    http_seconds: HistogramVec,
}

impl Ops {
    pub fn new(service: &str) -> Self {
        let registry =
            Registry::new_custom(Some("switchboard".into()), None).expect("valid prefix");
        let http_seconds = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency")
                .const_label("service", service)
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            &["method", "route", "status"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(http_seconds.clone()))
            .expect("register http histogram");
        Ops {
            registry,
            checks: Vec::new(),
            http_seconds,
        }
    }

    /// Adds a dependency that `/ready` must see answering.
    pub fn with_check(mut self, name: &'static str, check: ReadinessCheck) -> Self {
        self.checks.push((name, check));
        self
    }

    /// Registers a collector in this service's registry.
    pub fn register<C: prometheus::core::Collector + Clone + 'static>(&self, collector: &C) {
        self.registry
            .register(Box::new(collector.clone()))
            .expect("metric names are unique");
    }

    /// Mounts `/live`, `/ready`, `/metrics`.
    pub fn configure(self) -> impl FnOnce(&mut web::ServiceConfig) {
        move |cfg| {
            cfg.app_data(web::Data::new(self))
                .route("/live", web::get().to(live))
                .route("/ready", web::get().to(ready))
                .route("/metrics", web::get().to(metrics));
        }
    }

    /// Records the latency of one finished request, labelled by route pattern (not raw path,
    /// so ids do not explode the label set).
    pub fn observe(&self, method: &str, route: &str, status: u16, started: Instant) {
        self.http_seconds
            .with_label_values(&[method, route, &status.to_string()])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// `App::wrap_fn` body timing every request into `ops`.
pub fn timed<S, B>(
    ops: Ops,
) -> impl Fn(
    ServiceRequest,
    &S,
) -> LocalBoxFuture<'static, Result<ServiceResponse<B>, actix_web::Error>>
       + Clone
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
    B: 'static,
{
    move |req, srv| {
        let started = Instant::now();
        let method = req.method().as_str().to_owned();
        let span = request_span(&req);
        let fut = span.in_scope(|| srv.call(req));
        let ops = ops.clone();
        let work = async move {
            let res = fut.await?;
            let route = res
                .request()
                .match_pattern()
                .unwrap_or_else(|| "unmatched".into());
            ops.observe(&method, &route, res.status().as_u16(), started);
            Ok(res)
        };
        Box::pin(work.instrument(span))
    }
}

/// The `request` span of one HTTP request (`method`, `path`, `trace_id`), joined to the trace
/// its `traceparent` header names (an invalid one is ignored: a new trace starts). The
/// request's own step goes into its extensions for the handler ([`request_trace`]).
fn request_span(req: &ServiceRequest) -> tracing::Span {
    let incoming = req
        .headers()
        .get(TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = req.path(),
        trace_id = tracing::field::Empty
    );
    let step = crate::telemetry::trace::join(&span, incoming);
    req.extensions_mut().insert(step);
    span
}

/// The request's own step of its trace, as [`timed`] joined it: what a handler passes on to
/// the next hop (`None` for an app without the middleware).
pub fn request_trace(req: &HttpRequest) -> Option<TraceParent> {
    req.extensions().get::<TraceParent>().copied()
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "live"}))
}

async fn ready(ops: web::Data<Ops>) -> HttpResponse {
    let mut failures = Vec::new();
    for (name, check) in &ops.checks {
        if let Err(why) = check().await {
            failures.push(format!("{name}: {why}"));
        }
    }
    if failures.is_empty() {
        HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable().json(switchboard_protocol::error_code::ErrorBody::new(
            switchboard_protocol::ErrorCode::Unavailable,
            failures.join("; "),
        ))
    }
}

async fn metrics(ops: web::Data<Ops>) -> HttpResponse {
    let mut buf = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&ops.registry.gather(), &mut buf) {
        tracing::error!(error = %e, "encoding metrics");
    }
    HttpResponse::Ok()
        .content_type(encoder.format_type())
        .body(buf)
}
