//! The spoke's metrics. Hot-path handles are registered once, so recording is an atomic
//! add, not a registry lookup.

use std::time::Duration;

use metrics::{Counter, Histogram, counter, gauge, histogram};

use crate::compliance::Compliance;
use vigo_common::refusal::{Kind, Refusal};

use crate::error::SpokeError;
use crate::fleet::FleetCounts;

/// Outcomes of a check-in, as the `result` label of `vigo_checkins_total`: the two
/// answers, then every refusal kind's label.
fn checkin_results() -> impl Iterator<Item = &'static str> {
    ["no_change", "bundle"]
        .into_iter()
        .chain(Kind::ALL.iter().map(|k| k.label()))
}

pub struct CheckinMetrics {
    results: Vec<Counter>,
    latency: Histogram,
}

pub enum CheckinResult<'a> {
    NoChange,
    Bundle,
    Rejected(&'a SpokeError),
}

impl Default for CheckinMetrics {
    fn default() -> Self {
        Self {
            results: checkin_results()
                .map(|r| counter!("vigo_checkins_total", "result" => r))
                .collect(),
            latency: histogram!("vigo_checkin_duration_seconds"),
        }
    }
}

impl CheckinMetrics {
    #[inline]
    pub fn record(&self, result: CheckinResult<'_>, elapsed: Duration) {
        let slot = match result {
            CheckinResult::NoChange => 0,
            CheckinResult::Bundle => 1,
            CheckinResult::Rejected(e) => {
                2 + Kind::ALL
                    .iter()
                    .position(|k| *k == e.kind())
                    .unwrap_or(Kind::ALL.len() - 1)
            }
        };
        self.results[slot].increment(1);
        self.latency.record(elapsed.as_secs_f64());
    }
}

/// Counts one outcome of a less frequent call (enroll, report, revoke).
pub fn count_call(name: &'static str, result: Result<(), &SpokeError>) {
    let result = match result {
        Ok(()) => "ok",
        Err(e) => e.label(),
    };
    counter!(name, "result" => result).increment(1);
}

/// Gauges derived from the FleetIndex counters, refreshed before each scrape.
pub fn publish_fleet(counts: &FleetCounts, dirty: usize, trait_sets: usize) {
    gauge!("vigo_envoys").set(counts.total as f64);
    gauge!("vigo_envoys_revoked").set(counts.revoked as f64);
    for s in Compliance::ALL {
        gauge!("vigo_envoys_by_status", "status" => s.as_str()).set(counts.status(s) as f64);
    }
    gauge!("vigo_envoys_dirty").set(dirty as f64);
    gauge!("vigo_trait_sets").set(trait_sets as f64);
}

/// Every metric family of the spoke, with its HELP text, registered at start so each is
/// scraped from the first scrape on (a family that appeared only after its first event
/// would read as absent, not zero, to alerts and dashboards).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    vigo_common::net::describe_metrics();
    crate::fairness::describe_metrics();
    vigo_common::telemetry::describe_metrics();
    describe_counter!(
        "vigo_checkins_total",
        "Check-ins answered, by result: no_change, bundle, or the refusal kind"
    );
    describe_histogram!(
        "vigo_checkin_duration_seconds",
        "Time to answer a check-in, from its body read to its answer"
    );
    for (name, what) in [
        (
            "vigo_enrollments_total",
            "Enrollments, by result: ok or the refusal kind",
        ),
        (
            "vigo_reports_total",
            "Run reports taken, by result: ok or the refusal kind",
        ),
        (
            "vigo_streams_opened_total",
            "Streams envoys opened, by result: ok or the refusal kind",
        ),
        (
            "vigo_revocations_total",
            "Envoy revocations applied here, by result: ok or the refusal kind",
        ),
        (
            "vigo_task_reports_total",
            "Task results envoys sent, by result: ok or the refusal kind",
        ),
        (
            "vigo_task_syncs_total",
            "Task syncs from the hub's leader, by result: ok or the refusal kind",
        ),
    ] {
        describe_counter!(name, what);
        counter!(name, "result" => "ok").increment(0);
    }
    describe_gauge!(
        "vigo_envoys",
        "Envoys this spoke holds, revoked ones included"
    );
    describe_gauge!("vigo_envoys_revoked", "Revoked envoys this spoke holds");
    describe_gauge!(
        "vigo_envoys_by_status",
        "Envoys by compliance status (converged, relapsed, diverged, degraded, failed, offline, no_data, revoked)"
    );
    describe_gauge!(
        "vigo_envoys_dirty",
        "Envoys whose state changed since the last flush to the store"
    );
    describe_gauge!(
        "vigo_trait_sets",
        "Distinct trait sets held (envoys with equal traits share one)"
    );
    describe_histogram!(
        "vigo_flush_duration_seconds",
        "Time of one flush of changed envoy state to the store, fsync included"
    );
    describe_counter!(
        "vigo_flush_rows_total",
        "Envoy rows written to the store by flushes"
    );
    describe_histogram!(
        "vigo_store_commit_size",
        "Writes (reports, enrollments, flush chunks, imports) sharing one store commit and its fsync"
    );
    describe_histogram!(
        "vigo_store_commit_duration_seconds",
        "Time of one store commit, fsync included"
    );
    describe_counter!(
        "vigo_policy_reloads_total",
        "Policies offered to this spoke, by result: applied, or rejected (the previous one kept serving)"
    );
    describe_counter!(
        "vigo_bundle_builds_total",
        "Bundles built and signed (or sealed with the hub's signatures)"
    );
    describe_histogram!(
        "vigo_verify_batch_size",
        "Check-in signatures verified in one batch"
    );
    describe_gauge!("vigo_open_streams", "Streams envoys hold open now");
    describe_gauge!(
        "vigo_tasks_waiting_envoys",
        "Envoys with task copies not yet answered (told to open a stream at check-in)"
    );
    describe_counter!(
        "vigo_tasks_sent_on_stream_total",
        "Task copies sent on an envoy's stream as they arrived from the hub"
    );
    describe_counter!(
        "vigo_task_results_total",
        "Task results stored, by outcome: ok, failed, timed_out or refused"
    );
    gauge!("vigo_tasks_waiting_envoys").set(0.0);
    counter!("vigo_tasks_sent_on_stream_total").increment(0);
    for outcome in ["ok", "failed", "timed_out", "refused"] {
        counter!("vigo_task_results_total", "outcome" => outcome).increment(0);
    }
    for result in ["applied", "rejected"] {
        counter!("vigo_policy_reloads_total", "result" => result).increment(0);
    }
    counter!("vigo_flush_rows_total").increment(0);
    counter!("vigo_bundle_builds_total").increment(0);
    gauge!("vigo_open_streams").set(0.0);
    for name in [
        "vigo_envoys",
        "vigo_envoys_revoked",
        "vigo_envoys_dirty",
        "vigo_trait_sets",
    ] {
        gauge!(name).set(0.0);
    }
    for name in [
        "vigo_flush_duration_seconds",
        "vigo_verify_batch_size",
        "vigo_store_commit_size",
        "vigo_store_commit_duration_seconds",
    ] {
        let _ = histogram!(name);
    }
    let _ = CheckinMetrics::default();
}
