//! A tower layer over both gRPC services that counts every request by method and status code and
//! times it, for `/metrics`. A handler's error is answered "trailers-only", with `grpc-status` in
//! the response head; a head without it is a handler that answered `Ok` (a stream may still end
//! with an error in its trailers: that is not counted here). Streams are timed to their head.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tower_layer::Layer;
use tower_service::Service;

use crate::metrics::Metrics;

#[derive(Clone)]
pub(crate) struct GrpcMetricsLayer(pub Arc<Metrics>);

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> Service<http::Request<B>> for GrpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_string();
        let started = Instant::now();
        let answer = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let response = answer.await;
            let code = match &response {
                Ok(head) => head
                    .headers()
                    .get("grpc-status")
                    .map_or(tonic::Code::Ok, |code| tonic::Code::from_bytes(code.as_bytes())),
                Err(_) => tonic::Code::Internal,
            };
            // Paths no service serves are the client's to choose: one label for all of them
            // keeps the metric's size bounded.
            let method = if code == tonic::Code::Unimplemented {
                "other"
            } else {
                &method
            };
            metrics.observe_grpc(method, code, started.elapsed());
            response
        })
    }
}
