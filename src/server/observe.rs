//! What operators see of the calls: a span per call named by its method, one
//! "call finished" event per call with its code and latency, and Prometheus metrics (calls by method and code, latency
//! histograms, calls in flight, store size, revision, watchers) served on a
//! listener of their own. The call layer also carries the caller's deadline to
//! the services and answers in gRPC's terms where the stack would not: a shed
//! call or an oversized request is RESOURCE_EXHAUSTED with a message naming the
//! limit.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tonic::codegen::http;

use crate::registry::Registry;
use crate::store::MetricKind;

/// When the caller stops waiting (from the `grpc-timeout` header); services
/// find it in the request extensions and stop long work once it has passed.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// The deadline of a tonic request, if its caller set one.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<Instant> {
        request.extensions().get::<Deadline>().map(|d| d.0)
    }
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

const HANDLED: &str = "grpc_server_handled_total";
const HANDLING_SECONDS: &str = "grpc_server_handling_seconds";
const IN_FLIGHT: &str = "grpc_server_calls_in_flight";
const REVISION: &str = "cooperation_registry_revision";
const WATCHERS: &str = "cooperation_registry_watchers";

/// Latency buckets, in seconds: from a cached read to a slow scan.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

static RECORDER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The process's metrics recorder, installed on first use (metrics are
/// process-wide, as Prometheus expects; until then recording costs nothing).
fn recorder() -> Result<&'static PrometheusHandle, String> {
    RECORDER
        .get_or_init(|| {
            let describe = || {
                metrics::describe_counter!(HANDLED, "gRPC calls finished, by service, method and status code.");
                metrics::describe_histogram!(
                    HANDLING_SECONDS,
                    metrics::Unit::Seconds,
                    "Time from a call's arrival to its status, by service and method."
                );
                metrics::describe_gauge!(IN_FLIGHT, "gRPC calls being served now (streams included).");
                metrics::describe_gauge!(REVISION, "The store's current revision.");
                metrics::describe_gauge!(WATCHERS, "WatchChanges streams open now.");
            };
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HANDLING_SECONDS.into()), LATENCY_BUCKETS)
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())?;
            describe();
            Ok(handle)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Serves `GET /metrics` in the Prometheus text format on `listener` until the
/// process ends (or the returned task is aborted). The gauges read from the
/// registry are taken at each scrape.
pub fn serve_metrics(listener: TcpListener, registry: Arc<Registry>) -> Result<tokio::task::JoinHandle<()>, String> {
    let handle = recorder()?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(target: "cooperation_registry::server", address = %local, "serving Prometheus metrics at /metrics");
    Ok(tokio::spawn(accept_scrapes(listener, registry, handle)))
}

async fn accept_scrapes(listener: TcpListener, registry: Arc<Registry>, handle: &'static PrometheusHandle) {
    let upkeep = tokio::spawn(async move {
        // Keeps the histograms' storage from growing between scrapes.
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
    // Upkeep ends with the listener (when this task is aborted).
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _upkeep = AbortOnDrop(upkeep);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(scrape(&registry, handle, &request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
            }
        });
    }
}

async fn scrape<B>(
    registry: &Registry,
    handle: &PrometheusHandle,
    request: &http::Request<B>,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let reply = |status: u16, content_type: &str, body: String| {
        http::Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .expect("a valid response")
    };
    if request.uri().path() != "/metrics" {
        return reply(404, "text/plain", "metrics are at /metrics\n".into());
    }
    if request.method() != http::Method::GET && request.method() != http::Method::HEAD {
        return reply(405, "text/plain", "use GET\n".into());
    }
    match registry.revision().await {
        Ok(revision) => metrics::gauge!(REVISION).set(revision as f64),
        Err(e) => tracing::warn!(error = %e, "cannot read the store's revision"),
    }
    metrics::gauge!(WATCHERS).set(registry.watchers() as f64);
    for metric in registry.engine_metrics() {
        let name = format!("cooperation_registry_{}", metric.name);
        match metric.kind {
            MetricKind::Counter => {
                metrics::describe_counter!(name.clone(), metric.help);
                metrics::counter!(name).absolute(metric.value as u64);
            }
            MetricKind::Gauge => {
                metrics::describe_gauge!(name.clone(), metric.help);
                metrics::gauge!(name).set(metric.value);
            }
        }
    }
    reply(200, "text/plain; version=0.0.4", handle.render())
}

/// The limits the call layer names in its answers.
#[derive(Clone, Copy, Debug)]
pub struct CallLimits {
    pub max_concurrent_calls: usize,
    pub max_request_bytes: usize,
}

/// The tower layer that observes every call (outside load shedding and access
/// control, so shed and refused calls are counted too).
#[derive(Clone)]
pub struct CallLayer {
    limits: CallLimits,
}

impl CallLayer {
    pub fn new(limits: CallLimits) -> CallLayer {
        CallLayer { limits }
    }
}

impl<S> tower::Layer<S> for CallLayer {
    type Service = CallService<S>;
    fn layer(&self, inner: S) -> CallService<S> {
        CallService { inner, limits: self.limits }
    }
}

#[derive(Clone)]
pub struct CallService<S> {
    inner: S,
    limits: CallLimits,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for CallService<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|timeout| Instant::now() + timeout);
        if let Some(deadline) = deadline {
            request.extensions_mut().insert(Deadline(deadline));
        }
        let record = CallRecord::start(request.uri().path(), deadline);
        let request = request.map(|body| {
            tonic::body::Body::new(Tapped { inner: body, watcher: NoteRequestFailure(record.request_failed.clone()) })
        });
        let span = record.span.clone();
        let limits = self.limits;
        let call = span.in_scope(|| self.inner.call(request));
        let call = async move {
            let response = match call.await {
                Ok(response) => in_grpc_terms(response, &limits),
                Err(error) => refusal(error.into(), &limits).into_http(),
            };
            match response.headers().get("grpc-status").map(status_code) {
                // Trailers-only: the call ended with its headers.
                Some(code) => {
                    record.finish(code);
                    Ok(response)
                }
                None => {
                    let watcher = FinishOnTrailers(Some(record));
                    Ok(response.map(|body| tonic::body::Body::new(Tapped { inner: body, watcher })))
                }
            }
        };
        Box::pin(tracing::Instrument::instrument(call, span))
    }
}

fn status_code(value: &http::HeaderValue) -> tonic::Code {
    value.to_str().ok().and_then(|v| v.parse::<i32>().ok()).map(tonic::Code::from).unwrap_or(tonic::Code::Unknown)
}

/// The status of a call the stack refused before any service ran.
fn refusal(error: Box<dyn std::error::Error + Send + Sync>, limits: &CallLimits) -> tonic::Status {
    if error.is::<tower::load_shed::error::Overloaded>() {
        return tonic::Status::resource_exhausted(format!(
            "the server is serving its limit of {} concurrent calls (--max-concurrent-calls); retry with backoff",
            limits.max_concurrent_calls
        ));
    }
    tonic::Status::from_error(error)
}

/// tonic refuses an oversized request with OUT_OF_RANGE; gRPC's code for a
/// message over a limit is RESOURCE_EXHAUSTED, with the limit named.
fn in_grpc_terms(
    response: http::Response<tonic::body::Body>,
    limits: &CallLimits,
) -> http::Response<tonic::body::Body> {
    // Cheap test first: this runs on every response.
    if response.headers().get("grpc-status").map(status_code) != Some(tonic::Code::OutOfRange) {
        return response;
    }
    let Some(found) = tonic::Status::from_header_map(response.headers()).and_then(|status| {
        let rest = status.message().strip_prefix("Error, decoded message length too large: found ")?;
        rest.split(' ').next().map(str::to_string)
    }) else {
        return response;
    };
    tonic::Status::resource_exhausted(format!(
        "the request message is {found} bytes; the limit is {} bytes (--max-request-bytes)",
        limits.max_request_bytes
    ))
    .into_http()
}

/// One call from arrival to its status: counted in flight while it lives, and
/// finished exactly once, by its status or, if dropped first, as cancelled or
/// past its deadline.
struct CallRecord {
    /// The call's span, named by its method: what the services log during
    /// the call, and the "call finished" event, are logged inside it.
    span: tracing::Span,
    path: String,
    start: Instant,
    deadline: Option<Instant>,
    finished: bool,
    /// Set when reading the request body failed.
    request_failed: Arc<std::sync::atomic::AtomicBool>,
    /// Whether the metrics recorder was there to count the call in flight: a
    /// call that began before it was installed must not be taken off at its
    /// end (the gauge would go below the calls really in flight).
    counted_in_flight: bool,
}

impl CallRecord {
    fn start(path: &str, deadline: Option<Instant>) -> CallRecord {
        let counted_in_flight = RECORDER.get().is_some_and(Result::is_ok);
        if counted_in_flight {
            metrics::gauge!(IN_FLIGHT).increment(1.0);
        }
        let span = tracing::info_span!("call", method = %path);
        CallRecord {
            span,
            path: path.to_string(),
            start: Instant::now(),
            deadline,
            finished: false,
            request_failed: Default::default(),
            counted_in_flight,
        }
    }

    fn finish(mut self, code: tonic::Code) {
        self.report(code);
    }

    fn report(&mut self, code: tonic::Code) {
        self.finished = true;
        // The request could not be read to its end: the client reset its stream
        // or its connection closed. tonic answers that INTERNAL or UNKNOWN; it is
        // the caller cancelling, not a server fault to alert on.
        let code = if code != tonic::Code::Ok && self.request_failed.load(std::sync::atomic::Ordering::Relaxed) {
            tonic::Code::Cancelled
        } else {
            code
        };
        let latency = self.start.elapsed();
        let (service, method) = match code {
            // Unknown paths are not labelled by name: a client must not be
            // able to invent new time series.
            tonic::Code::Unimplemented => ("unknown".to_string(), "unknown".to_string()),
            _ => {
                let (service, method) =
                    self.path.trim_start_matches('/').split_once('/').unwrap_or(("unknown", "unknown"));
                (service.to_string(), method.to_string())
            }
        };
        let code_name = format!("{code:?}");
        metrics::counter!(HANDLED, "grpc_service" => service.clone(), "grpc_method" => method.clone(), "grpc_code" => code_name.clone())
            .increment(1);
        metrics::histogram!(HANDLING_SECONDS, "grpc_service" => service, "grpc_method" => method)
            .record(latency.as_secs_f64());
        self.span.in_scope(|| {
            tracing::info!(target: super::logs::ACCESS_TARGET, code = %code_name, latency_us = latency.as_micros() as u64, "call finished");
        });
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        if !self.finished {
            let expired = self.deadline.is_some_and(|d| Instant::now() >= d);
            self.report(if expired { tonic::Code::DeadlineExceeded } else { tonic::Code::Cancelled });
        }
        if self.counted_in_flight {
            metrics::gauge!(IN_FLIGHT).decrement(1.0);
        }
    }
}

/// What a [`Tapped`] body shows each poll's result to.
trait FrameWatcher: Unpin + Send + 'static {
    /// A frame, an error, or the end (`None`) came out of the body.
    fn saw(&mut self, polled: &Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>);
}

/// A body that is its inner body, shown frame by frame to a watcher.
struct Tapped<W> {
    inner: tonic::body::Body,
    watcher: W,
}

impl<W: FrameWatcher> http_body::Body for Tapped<W> {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        self.watcher.saw(&polled);
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Finishes its call's record when a response's trailers pass (or it fails or ends).
struct FinishOnTrailers(Option<CallRecord>);

impl FrameWatcher for FinishOnTrailers {
    fn saw(&mut self, polled: &Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>) {
        let code = match polled {
            Some(Ok(frame)) => match frame.trailers_ref() {
                Some(trailers) => trailers.get("grpc-status").map(status_code).unwrap_or(tonic::Code::Ok),
                None => return,
            },
            Some(Err(status)) => status.code(),
            None => tonic::Code::Ok,
        };
        if let Some(record) = self.0.take() {
            record.finish(code);
        }
    }
}

/// Notes whether reading a request body failed.
struct NoteRequestFailure(Arc<std::sync::atomic::AtomicBool>);

impl FrameWatcher for NoteRequestFailure {
    fn saw(&mut self, polled: &Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>) {
        if let Some(Err(_)) = polled {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Binds the metrics listener named by `--metrics-listen`.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(address).await.map_err(|e| format!("cannot listen for metrics on {address}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-flight gauge as the recorder renders it.
    fn in_flight(handle: &PrometheusHandle) -> f64 {
        let text = handle.render();
        let line = text.lines().find(|l| l.starts_with(&format!("{IN_FLIGHT} ")));
        line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    }

    #[test]
    fn a_call_begun_before_the_recorder_is_not_taken_off_the_in_flight_gauge() {
        // (No other unit test records calls; the integration tests run in
        // processes of their own.)
        let early = CallRecord::start("/test.Service/Early", None);
        let handle = recorder().unwrap();
        let counted = early.counted_in_flight;
        let before = in_flight(handle);
        drop(early);
        let taken_off = if counted { 1.0 } else { 0.0 };
        assert_eq!(in_flight(handle), before - taken_off, "counted in flight: {counted}");
        let late = CallRecord::start("/test.Service/Late", None);
        assert!(late.counted_in_flight);
        assert_eq!(in_flight(handle), before - taken_off + 1.0);
        drop(late);
        assert_eq!(in_flight(handle), before - taken_off);
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "S", "123456789S", "10s", "-1S", "1.5S", "10"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
