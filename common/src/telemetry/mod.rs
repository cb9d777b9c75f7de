//! Logs (tracing) and metrics (Prometheus text on a port of its own); live heap bytes
//! for benchmarks.

pub mod heap;
pub mod process;
pub mod sampled;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tracing::info;

use crate::Error;

/// Logs to stderr; `RUST_LOG` overrides `default_filter` (e.g. "info,vigo_spoke=debug").
pub fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Latency buckets in seconds, from 50 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// Buckets for counts of things (batch sizes), powers of two.
pub const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Installs the process-wide Prometheus recorder. Metrics named `*_seconds` and
/// `*_size` get real histogram buckets (the exporter would render summaries otherwise).
pub fn install_metrics() -> Result<PrometheusHandle, Error> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| Error::Telemetry(e.to_string()))?
        .set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS)
        .map_err(|e| Error::Telemetry(e.to_string()))?
        .install_recorder()
        .map_err(|e| Error::Telemetry(e.to_string()))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Describes the families this module exports.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "vigo_heap_allocated_bytes",
        "Bytes the allocator has handed out to the program (binaries with a reporting allocator)"
    );
    metrics::describe_gauge!(
        "vigo_heap_held_bytes",
        "Bytes the allocator holds from the operating system (binaries with a reporting allocator)"
    );
}

/// Heap figures from the process's allocator, when the binary's allocator reports them.
#[derive(Clone, Copy, Debug)]
pub struct HeapStats {
    /// Bytes handed out to the program.
    pub allocated: u64,
    /// Bytes the allocator holds from the operating system.
    pub held: u64,
}

static HEAP_PROBE: std::sync::OnceLock<fn() -> Option<HeapStats>> = std::sync::OnceLock::new();

/// Registers the binary's allocator statistics; they are exported with every scrape.
pub fn set_heap_probe(probe: fn() -> Option<HeapStats>) {
    let _ = HEAP_PROBE.set(probe);
}

/// The allocator's current figures, if a probe is registered.
pub fn heap_stats() -> Option<HeapStats> {
    HEAP_PROBE.get().and_then(|probe| probe())
}

/// Serves `GET /metrics`. `refresh` runs before each render so gauges derived from
/// in-memory state (envoy counts, ...) are current without a timer.
pub async fn serve_metrics(
    addr: SocketAddr,
    handle: PrometheusHandle,
    refresh: Arc<dyn Fn() + Send + Sync>,
) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind(addr).await.map_err(|e| Error::Bind {
        what: "metrics",
        addr,
        why: e.to_string(),
    })?;
    let local = listener.local_addr().map_err(|e| Error::Bind {
        what: "metrics",
        addr,
        why: e.to_string(),
    })?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (handle, refresh) = (handle.clone(), refresh.clone());
            async move {
                refresh();
                if let Some(heap) = heap_stats() {
                    metrics::gauge!("vigo_heap_allocated_bytes").set(heap.allocated as f64);
                    metrics::gauge!("vigo_heap_held_bytes").set(heap.held as f64);
                }
                let mut text = handle.render();
                text.push_str(&process::render());
                ([("content-type", "text/plain; version=0.0.4")], text)
            }
        }),
    );
    info!(%local, "metrics at http://{local}/metrics");
    // Scrapers are few: a small connection cap, and the same header and idle timeouts
    // as every other listener. The server runs for the life of the process.
    let limits = crate::net::AcceptLimits {
        max_connections: 64,
        max_handshakes: 64,
        max_handshakes_per_source: 64,
        max_per_source: 64,
        max_anonymous_per_source: 64,
        max_anonymous: 64,
        ..Default::default()
    };
    drop(
        crate::net::serve_http1(listener, None, limits, Default::default(), app, "metrics")
            .map_err(|e| Error::Bind {
                what: "metrics",
                addr,
                why: e.to_string(),
            })?,
    );
    Ok(local)
}
