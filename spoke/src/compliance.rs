//! Compliance of one envoy, derived from its last run report and its check-in age.

use vigo_proto::v1 as pb;

/// DESIGN §6. Revoked envoys have no status: they are counted apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Compliance {
    Converged = 0,
    Relapsed = 1,
    Diverged = 2,
    Degraded = 3,
    Failed = 4,
    Offline = 5,
    NoData = 6,
}

impl Compliance {
    pub const ALL: [Compliance; 7] = [
        Compliance::Converged,
        Compliance::Relapsed,
        Compliance::Diverged,
        Compliance::Degraded,
        Compliance::Failed,
        Compliance::Offline,
        Compliance::NoData,
    ];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: u8) -> Option<Self> {
        Self::ALL.get(i as usize).copied()
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Compliance::Converged => "converged",
            Compliance::Relapsed => "relapsed",
            Compliance::Diverged => "diverged",
            Compliance::Degraded => "degraded",
            Compliance::Failed => "failed",
            Compliance::Offline => "offline",
            Compliance::NoData => "no_data",
        }
    }

    pub fn to_proto(self) -> pb::ComplianceStatus {
        match self {
            Compliance::Converged => pb::ComplianceStatus::Converged,
            Compliance::Relapsed => pb::ComplianceStatus::Relapsed,
            Compliance::Diverged => pb::ComplianceStatus::Diverged,
            Compliance::Degraded => pb::ComplianceStatus::Degraded,
            Compliance::Failed => pb::ComplianceStatus::Failed,
            Compliance::Offline => pb::ComplianceStatus::Offline,
            Compliance::NoData => pb::ComplianceStatus::NoData,
        }
    }
}

/// What an envoy's earlier runs leave for the next one's status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// The bundle the last run applied (first 8 bytes of its fingerprint).
    pub bundle: Option<u64>,
    /// How many consecutive runs, up to the last, made changes.
    pub streak: u32,
}

/// The status a run report earns, and the change streak after it (README "Statuses"):
///
/// 1. the run failed as a whole, or every resource it tried failed: `failed`;
/// 2. some resources failed: `degraded`;
/// 3. otherwise by the consecutive runs that made changes, this one included: 3 or
///    more `diverged`, 2 `relapsed`, fewer `converged`. A run under a bundle the last
///    run did not apply starts the count afresh (its changes are the new bundle taking
///    effect); a run without changes ends it.
///
/// A dry run changes nothing, so it neither extends nor ends the count: what it found
/// out of policy shows in the run (`would_change`), not as a status of its own.
pub fn from_report(report: &pb::RunReportBody, previous: History) -> (Compliance, u32) {
    let (mut failed, mut applied, mut changed) = (0usize, 0usize, 0usize);
    for o in &report.outcomes {
        match pb::Outcome::try_from(o.outcome).unwrap_or(pb::Outcome::Unspecified) {
            pb::Outcome::Failed => failed += 1,
            pb::Outcome::Changed => {
                changed += 1;
                applied += 1;
            }
            pb::Outcome::Ok => applied += 1,
            pb::Outcome::WouldChange | pb::Outcome::Skipped | pb::Outcome::Unspecified => {}
        }
    }
    let bundle = bundle_prefix(&report.bundle_fingerprint);
    let streak = if report.dry_run || !report.error.is_empty() {
        previous.streak
    } else if changed == 0 {
        0
    } else if previous.bundle == Some(bundle) {
        previous.streak.saturating_add(1)
    } else {
        1
    };
    let status = if !report.error.is_empty() || (failed > 0 && applied == 0) {
        Compliance::Failed
    } else if failed > 0 {
        Compliance::Degraded
    } else {
        match streak {
            0 | 1 => Compliance::Converged,
            2 => Compliance::Relapsed,
            _ => Compliance::Diverged,
        }
    };
    (status, streak)
}

/// The first 8 bytes of a fingerprint: enough to tell two bundles of one envoy apart.
pub fn bundle_prefix(fingerprint: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = fingerprint.len().min(8);
    b[..n].copy_from_slice(&fingerprint[..n]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(outcomes: &[pb::Outcome], dry_run: bool, error: &str) -> pb::RunReportBody {
        pb::RunReportBody {
            bundle_fingerprint: bytes::Bytes::from_static(&[7; 32]),
            dry_run,
            error: error.into(),
            outcomes: outcomes
                .iter()
                .map(|o| pb::ResourceOutcome {
                    outcome: *o as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn statuses_follow_the_rules() {
        use pb::Outcome::*;
        let same = |streak| History {
            bundle: Some(bundle_prefix(&[7; 32])),
            streak,
        };
        let other = History {
            bundle: Some(bundle_prefix(&[8; 32])),
            streak: 5,
        };
        let status = |outcomes: &[pb::Outcome], dry: bool, previous| {
            from_report(&report(outcomes, dry, ""), previous)
        };
        assert_eq!(
            status(&[Ok, Ok], false, same(4)),
            (Compliance::Converged, 0)
        );
        // Consecutive runs with changes: 1 converged, 2 relapsed, 3 and more diverged.
        assert_eq!(
            status(&[Ok, Changed], false, same(0)),
            (Compliance::Converged, 1)
        );
        assert_eq!(
            status(&[Ok, Changed], false, same(1)),
            (Compliance::Relapsed, 2)
        );
        assert_eq!(
            status(&[Changed], false, same(2)),
            (Compliance::Diverged, 3)
        );
        assert_eq!(
            status(&[Changed], false, same(9)),
            (Compliance::Diverged, 10)
        );
        // A new bundle taking effect starts the count afresh.
        assert_eq!(
            status(&[Ok, Changed], false, other),
            (Compliance::Converged, 1)
        );
        assert_eq!(
            status(&[Ok, Changed], false, History::default()),
            (Compliance::Converged, 1)
        );
        // A dry run neither extends nor ends the count; what it found is in the run.
        assert_eq!(
            status(&[Ok, WouldChange], true, same(0)),
            (Compliance::Converged, 0)
        );
        assert_eq!(
            status(&[WouldChange], true, same(2)),
            (Compliance::Relapsed, 2)
        );
        assert_eq!(
            status(&[Ok, Failed, Skipped], false, same(0)),
            (Compliance::Degraded, 0)
        );
        assert_eq!(
            status(&[Changed, Failed], false, same(2)),
            (Compliance::Degraded, 3)
        );
        assert_eq!(
            status(&[Failed, Skipped], false, same(0)),
            (Compliance::Failed, 0)
        );
        assert_eq!(
            from_report(&report(&[Ok], false, "bundle refused"), same(1)),
            (Compliance::Failed, 1)
        );
    }
}
