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
