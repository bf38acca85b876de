//! The standard gRPC services that tools expect: `grpc.health.v1.Health`
//! for load balancers and probes (`grpc_health_probe`, Kubernetes' `grpc`
//! probe) and server reflection (`grpc.reflection.v1` and `v1alpha`) for
//! `grpcurl` and `grpcui`.
//!
//! Every replica answers both itself, like `/healthz`, and without a token:
//! a load balancer holds none, and reflection only tells what
//! `worker.proto` (published with the code) already says.
//!
//! **Health** is judged afresh on every call, never cached: a replica is
//! `SERVING` while it leads, its store takes writes and it is not shutting
//! down, `NOT_SERVING` otherwise (a standby, a replica taking over, a
//! leader whose store fails, a server draining). The names known are the
//! whole server (`""`) and `dispatch.v1.WorkerService`, which share one
//! status; any other is `NOT_FOUND` (`SERVICE_UNKNOWN` for `Watch`). A
//! `Watch` stream sends the status at once and again whenever it changes:
//! it wakes on every change of role and looks at the store's health every
//! [`WATCH_POLL`], since the writer's health flags have no notification.
//! It ends, after a last `NOT_SERVING`, when the server stops, so that it
//! does not hold the shutdown.
//!
//! **Reflection** serves the compiled descriptors of `worker.proto` (with
//! its comments) and of the health service.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// How often a `Watch` stream looks at the store's health between
/// changes of role.
pub(crate) const WATCH_POLL: Duration = Duration::from_millis(250);

/// Largest request message the tool services decode: a service name or a
/// symbol, never more than a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The service names whose health is known, besides the whole server
/// (`""`).
const KNOWN_SERVICES: &[&str] = &[dispatch_grpc::SERVICE_NAME];

/// What the health service asks of the server.
pub(crate) trait Readiness: Send + Sync + 'static {
    /// Whether this replica takes work now: it leads, its store takes
    /// writes and it is not shutting down.
    fn serving(&self) -> bool;
    /// Changes with every change of role.
    fn role_changes(&self) -> watch::Receiver<u64>;
    /// Flips to true when the server shuts down.
    fn stopping(&self) -> watch::Receiver<bool>;
}

/// The routes of the health and reflection services, to merge into the
/// router every request goes through.
pub(crate) fn router<S>(readiness: Arc<dyn Readiness>) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let health =
        HealthServer::new(HealthService { readiness }).max_decoding_message_size(MAX_REQUEST_BYTES);
    let mut router = axum::Router::new()
        .route_service(&format!("/{}/{{*method}}", health_service_name()), health);
    match reflection() {
        Ok(reflection) => router = router.merge(reflection),
        // The descriptors are compiled in: a unit test decodes them.
        Err(e) => tracing::error!(error = %e, "server reflection is off: bad descriptors"),
    }
    router.layer(axum::middleware::from_fn(crate::grpc::require_grpc))
}

/// `grpc.health.v1.Health`, from the generated server.
fn health_service_name() -> &'static str {
    <HealthServer<HealthService> as tonic::server::NamedService>::NAME
}

/// The routes of both versions of the reflection service, over the worker
/// protocol's and the health service's descriptors (each version adds its
/// own).
fn reflection<S>() -> Result<axum::Router<S>, tonic_reflection::server::Error>
where
    S: Clone + Send + Sync + 'static,
{
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(dispatch_grpc::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = builder()
        .build_v1()?
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let v1alpha = builder()
        .build_v1alpha()?
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    Ok(axum::Router::new()
        .route_service("/grpc.reflection.v1.ServerReflection/{*method}", v1)
        .route_service(
            "/grpc.reflection.v1alpha.ServerReflection/{*method}",
            v1alpha,
        ))
}

struct HealthService {
    readiness: Arc<dyn Readiness>,
}

impl HealthService {
    /// The status of `service`, or `None` when the name is unknown.
    fn status(&self, service: &str) -> Option<ServingStatus> {
        if !service.is_empty() && !KNOWN_SERVICES.contains(&service) {
            return None;
        }
        Some(if self.readiness.serving() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        })
    }
}

fn answer(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status.into(),
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = &request.get_ref().service;
        match self.status(service) {
            Some(status) => Ok(Response::new(answer(status))),
            None => Err(Status::not_found(format!("unknown service {service:?}"))),
        }
    }

    type WatchStream = ReceiverStream<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let (tx, rx) = mpsc::channel(4);
        let watcher = HealthService {
            readiness: self.readiness.clone(),
        };
        tokio::spawn(async move { watcher.watch_loop(&service, tx).await });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl HealthService {
    /// Sends the status of `service` now and at every change, until the
    /// caller goes away or the server stops.
    async fn watch_loop(
        &self,
        service: &str,
        tx: mpsc::Sender<Result<HealthCheckResponse, Status>>,
    ) {
        let mut roles = self.readiness.role_changes();
        let mut stop = self.readiness.stopping();
        let mut sent = None;
        loop {
            let now = self
                .status(service)
                .unwrap_or(ServingStatus::ServiceUnknown);
            if sent != Some(now) {
                if tx.send(Ok(answer(now))).await.is_err() {
                    return;
                }
                sent = Some(now);
            }
            if *stop.borrow() {
                return;
            }
            tokio::select! {
                changed = roles.changed() => {
                    // The server is gone: nothing will change any more.
                    if changed.is_err() { return; }
                }
                _ = stop.changed() => {}
                _ = tokio::time::sleep(WATCH_POLL) => {}
                _ = tx.closed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_descriptors_serve_reflection() {
        assert!(reflection::<()>().is_ok());
        assert_eq!(health_service_name(), "grpc.health.v1.Health");
    }
}
