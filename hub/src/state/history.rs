//! The fleet's compliance over time: counts per status as the leader's roll-up found
//! them, one sample every `compliance.sample_every`, replicated so every hub node
//! answers the same and a new leader carries on. Bounded: the newest
//! [`MAX_SAMPLES`] are kept (a week at the default 5 minutes).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

pub const MAX_SAMPLES: usize = 2016;
/// Missing spokes named in one sample.
pub const MAX_MISSING: usize = 256;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComplianceSample {
    pub at_ms: u64,
    /// Status word -> envoys, every status present.
    pub by_status: BTreeMap<String, u64>,
    pub total: u64,
    /// Spokes that did not answer this roll-up: their envoys are not counted.
    pub missing: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComplianceHistory {
    samples: VecDeque<ComplianceSample>,
}

impl ComplianceHistory {
    /// Keeps `sample` if it is newer than the newest kept (a retried proposal, or one
    /// from a deposed leader, changes nothing).
    pub fn record(&mut self, mut sample: ComplianceSample) {
        if self.last_at().is_some_and(|at| sample.at_ms <= at) {
            return;
        }
        // Bounded whatever a proposal carries: only the defined statuses, and as many
        // missing spokes as a cluster may have.
        let known = vigo_common::fleet_query::STATUSES;
        sample.by_status.retain(|s, _| known.contains(&s.as_str()));
        sample.missing.truncate(MAX_MISSING);
        self.samples.push_back(sample);
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    pub fn last_at(&self) -> Option<u64> {
        self.samples.back().map(|s| s.at_ms)
    }

    /// The samples taken at `from_ms` or later, oldest first.
    pub fn since(&self, from_ms: u64) -> impl Iterator<Item = &ComplianceSample> {
        let start = self.samples.partition_point(|s| s.at_ms < from_ms);
        self.samples.range(start..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> ComplianceSample {
        ComplianceSample {
            at_ms: ms,
            ..Default::default()
        }
    }

    #[test]
    fn bounded_ordered_and_deaf_to_replays() {
        let mut h = ComplianceHistory::default();
        for ms in 1..=(MAX_SAMPLES as u64 + 10) {
            h.record(at(ms * 1000));
        }
        h.record(at(5_000));
        assert_eq!(h.samples.len(), MAX_SAMPLES);
        assert_eq!(h.samples.front().unwrap().at_ms, 11_000);
        let window: Vec<u64> = h
            .since((MAX_SAMPLES as u64 + 8) * 1000)
            .map(|s| s.at_ms)
            .collect();
        assert_eq!(
            window,
            [
                (MAX_SAMPLES as u64 + 8) * 1000,
                (MAX_SAMPLES as u64 + 9) * 1000,
                (MAX_SAMPLES as u64 + 10) * 1000
            ]
        );
    }

    /// A full history, as the raft snapshot holds it (postcard), stays small: every
    /// status counted in the millions and two spokes missing in every sample.
    #[test]
    fn a_full_history_is_small_in_the_snapshot() {
        let mut h = ComplianceHistory::default();
        for i in 0..MAX_SAMPLES as u64 + 100 {
            let by_status = vigo_common::fleet_query::STATUSES
                .iter()
                .map(|s| (s.to_string(), 1_000_000 + i))
                .collect();
            h.record(ComplianceSample {
                at_ms: 1_800_000_000_000 + i * 300_000,
                by_status,
                total: 8_000_000,
                missing: vec!["spoke-a".into(), "spoke-b".into()],
            });
        }
        let bytes = postcard::to_allocvec(&h).unwrap().len();
        println!(
            "full compliance history: {} samples, {bytes} bytes",
            h.samples.len()
        );
        assert!(bytes < 512 << 10, "{bytes} bytes");
    }

    /// A sample proposed with a hostile spoke's answer in it keeps only the statuses
    /// the product defines and a bounded list of missing spokes.
    #[test]
    fn invented_statuses_and_endless_missing_lists_are_not_kept() {
        let mut h = ComplianceHistory::default();
        let mut by_status: BTreeMap<String, u64> =
            (0..10_000).map(|i| (format!("status-{i}"), 1)).collect();
        by_status.insert("converged".into(), 7);
        h.record(ComplianceSample {
            at_ms: 1,
            by_status,
            total: 7,
            missing: (0..10_000).map(|i| format!("spoke-{i}")).collect(),
        });
        let kept = h.since(0).next().unwrap();
        assert_eq!(kept.by_status.len(), 1);
        assert_eq!(kept.by_status["converged"], 7);
        assert_eq!(kept.missing.len(), MAX_MISSING);
    }
}
