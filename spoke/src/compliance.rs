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

/// The status a run report earns. `previous_bundle` is the bundle the envoy's previous
/// run applied (first 8 bytes of its fingerprint), if any: changes under the same
/// bundle are repaired drift (`relapsed`), changes under a new bundle are the bundle
/// taking effect (`converged`).
pub fn from_report(report: &pb::RunReportBody, previous_bundle: Option<u64>) -> Compliance {
    if !report.error.is_empty() {
        return Compliance::Failed;
    }
    let (mut failed, mut applied, mut changed, mut would_change) = (0usize, 0usize, 0, 0);
    for o in &report.outcomes {
        match pb::Outcome::try_from(o.outcome).unwrap_or(pb::Outcome::Unspecified) {
            pb::Outcome::Failed => failed += 1,
            pb::Outcome::Changed => {
                changed += 1;
                applied += 1;
            }
            pb::Outcome::Ok => applied += 1,
            pb::Outcome::WouldChange => would_change += 1,
            pb::Outcome::Skipped | pb::Outcome::Unspecified => {}
        }
    }
    if failed > 0 {
        return if applied == 0 {
            Compliance::Failed
        } else {
            Compliance::Degraded
        };
    }
    if report.dry_run {
        return if would_change > 0 {
            Compliance::Diverged
        } else {
            Compliance::Converged
        };
    }
    if changed > 0 && previous_bundle == Some(bundle_prefix(&report.bundle_fingerprint)) {
        return Compliance::Relapsed;
    }
    Compliance::Converged
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
        let same = Some(bundle_prefix(&[7; 32]));
        let other = Some(bundle_prefix(&[8; 32]));
        assert_eq!(
            from_report(&report(&[Ok, Ok], false, ""), same),
            Compliance::Converged
        );
        assert_eq!(
            from_report(&report(&[Ok, Changed], false, ""), same),
            Compliance::Relapsed
        );
        assert_eq!(
            from_report(&report(&[Ok, Changed], false, ""), other),
            Compliance::Converged
        );
        assert_eq!(
            from_report(&report(&[Ok, Changed], false, ""), None),
            Compliance::Converged
        );
        assert_eq!(
            from_report(&report(&[Ok, WouldChange], true, ""), same),
            Compliance::Diverged
        );
        assert_eq!(
            from_report(&report(&[Ok, Ok], true, ""), same),
            Compliance::Converged
        );
        assert_eq!(
            from_report(&report(&[Ok, Failed, Skipped], false, ""), same),
            Compliance::Degraded
        );
        assert_eq!(
            from_report(&report(&[Failed, Skipped], false, ""), same),
            Compliance::Failed
        );
        assert_eq!(
            from_report(&report(&[Ok], false, "bundle refused"), same),
            Compliance::Failed
        );
    }
}
