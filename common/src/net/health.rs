//! `grpc.health.v1.Health` on every hub and spoke port, as Kubernetes probes,
//! `grpc-health-probe`, Consul and load balancers expect it.
//!
//! The overall service ("") and each named service answer NOT_SERVING until the node
//! says it is ready (a hub: a member of a cluster with a leader; a spoke: its store open
//! and its policy in force) and again while it shuts down. `Check` is open to anyone
//! (probes carry no client certificate); `Watch` holds a stream, so it takes a node
//! certificate. The containers' health check (`vigo-hub health`, `vigo-spoke health`)
//! is a `Check` over the node's own TLS.

use std::sync::Arc;
use std::time::Duration;

use tonic::Status;
pub use tonic_health::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::pb::{HealthCheckRequest, health_check_response};
use tonic_health::server::HealthReporter;

use super::admission::{Admit, Call, Guarded, Limits, require_role};
use super::revoked::RevokedCerts;
use crate::Error;
use crate::pki::Role;

/// The admission table of `grpc.health.v1.Health`.
struct HealthTable;

impl Admit for HealthTable {
    fn admit(&self, call: &mut Call<'_>) -> Result<Limits, Status> {
        match call.method {
            "Check" => Ok(Limits::new(1 << 10, Duration::from_secs(5))),
            "Watch" => {
                require_role(
                    call.peer(),
                    &[Role::Hub, Role::Spoke, Role::Admin],
                    call.method,
                )?;
                Ok(Limits::new(1 << 10, Duration::from_secs(10)))
            }
            other => Err(Status::unimplemented(format!("no method {other}"))),
        }
    }
}

/// What a node reports its readiness through.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    services: Arc<[&'static str]>,
}

impl Health {
    /// Sets the overall status and that of every named service.
    pub async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        for name in self.services.iter() {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

/// The health service of a node serving `services` (their gRPC names), NOT_SERVING
/// until [`Health::set`] says otherwise.
pub async fn service(
    services: &[&'static str],
    revoked: Arc<RevokedCerts>,
) -> (
    Health,
    Guarded<HealthServer<impl tonic_health::pb::health_server::Health>>,
) {
    let (reporter, server) = tonic_health::server::health_reporter();
    let health = Health {
        reporter,
        services: services.into(),
    };
    health.set(false).await;
    (
        health,
        Guarded::new(server, Arc::new(HealthTable)).refusing(revoked),
    )
}

/// The health check of a node's own port (`vigo-hub health`, `vigo-spoke health`, the
/// containers' health checks): Ok when it answers SERVING. An unspecified listen address
/// is asked as `localhost`, which node certificates name.
pub fn check_own_port(
    listen: std::net::SocketAddr,
    ca_cert: &std::path::Path,
    role: &'static [Role],
) -> Result<(), String> {
    let address = if listen.ip().is_unspecified() {
        format!("localhost:{}", listen.port())
    } else {
        listen.to_string()
    };
    let ca_pem = crate::fsutil::read_to_string(ca_cert).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let status = runtime
        .block_on(check(&address, &ca_pem, role, Duration::from_secs(2)))
        .map_err(|e| format!("{address}: {e}"))?;
    match status {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("{address}: {other}")),
    }
}

/// Asks the node at `address` (host:port, TLS with the cluster CA, checked to be a
/// `role` certificate) whether it serves: the status of the overall service.
pub async fn check(
    address: &str,
    ca_pem: &str,
    role: &'static [Role],
    timeout: Duration,
) -> Result<ServingStatus, Error> {
    let config = crate::tls::client_config(ca_pem, None, role)?;
    let channel = crate::tls::channel(address, Arc::new(config), timeout)?;
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(timeout);
    let answer = HealthClient::new(channel)
        .check(request)
        .await
        .map_err(|s| Error::Unreachable {
            what: "health check",
            why: super::status_chain(&s),
        })?
        .into_inner();
    Ok(
        match health_check_response::ServingStatus::try_from(answer.status) {
            Ok(health_check_response::ServingStatus::Serving) => ServingStatus::Serving,
            Ok(health_check_response::ServingStatus::NotServing) => ServingStatus::NotServing,
            _ => ServingStatus::Unknown,
        },
    )
}
