//! Who may call what on a spoke, with each call's message limit and deadline — decided
//! from the peer's certificate before a request body is read.
//!
//! | service | methods | who | largest message |
//! |---|---|---|---|
//! | Enrollment | Enroll | anyone | 64 KiB |
//! | EnvoyGateway | CheckIn, OpenStream | envoy (relay if allowed) | `checkin.max_body` + 1 KiB |
//! | EnvoyGateway | ReportRun | envoy (relay if allowed) | `reports.max_body` + 1 KiB |
//! | EnvoyGateway | ReportTask | envoy (relay if allowed) | 200 KiB + 1 KiB |
//! | SpokeAdmin | GetEnvoy, Stats, Compliance, RevokeEnvoy | admin, hub | 64 KiB |
//! | SpokeAdmin | ListEnvoys, TraitCount, TaskResults | admin, hub | 256 KiB |
//! | SpokeAdmin | SyncTasks | hub | 16 MiB |
//! | SpokeAdmin | ForcePush | admin, hub | 1 MiB |
//! | SpokeAdmin | RegisterEnvoys | hub | 256 KiB |
//! | SpokeAdmin | ExportEnvoys, HandOff, ApplyRevocations | hub | 1 MiB |
//! | SpokeAdmin | ApplyConfig | hub | the largest policy (16 MiB) + 64 KiB |
//! | SpokeAdmin | ImportEnvoys | hub | 64 MiB |
//!
//! Every call is answered within `connections.request_timeout`, but for the hub's bulk
//! calls (ApplyConfig, ExportEnvoys, ImportEnvoys, HandOff): two minutes. A caller's
//! own `grpc-timeout` applies when sooner.
//!
//! Admission control under herds is here too: envoy calls beyond the in-flight limit
//! (adaptive, at most `shedding.max_in_flight`), or arriving while the spoke is behind by
//! more than `shedding.max_queue_wait`, are refused RESOURCE_EXHAUSTED with a retry hint
//! — before their body is read or any signature checked (`vigo_common::net::shedding`).

use std::sync::Arc;
use std::time::Duration;

use tonic::Status;
use vigo_common::limits::MAX_CONFIG_MESSAGE;
use vigo_common::net::{Admit, Call, Limits, Received, Shedder, SheddingLimits, require_role};
use vigo_common::pki::{Peer, Role};

use crate::fairness::Shares;
use crate::fleet::FleetIndex;

/// The largest envoy import the hub sends: a batch of envoys with their run histories.
pub const MAX_IMPORT: usize = 64 << 20;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// Deadline of the hub's bulk calls.
const BULK_DEADLINE: Duration = Duration::from_secs(120);

/// What the tables need from the spoke's configuration.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub request_timeout: Duration,
    pub max_checkin_body: usize,
    pub max_report_body: usize,
    pub allow_relay: bool,
}

impl Settings {
    fn limits(&self, max_message: usize) -> Limits {
        Limits::new(max_message, self.request_timeout)
    }

    fn envoys(&self) -> &'static [Role] {
        if self.allow_relay {
            &[Role::Envoy, Role::Relay]
        } else {
            &[Role::Envoy]
        }
    }
}

fn unknown(method: &str) -> Status {
    Status::unimplemented(format!("no method {method}"))
}

/// `vigo.v1.Enrollment`: the one service anonymous peers reach.
pub struct Enrollment(pub Settings);

impl Admit for Enrollment {
    fn admit(&self, call: &mut Call<'_>) -> Result<Limits, Status> {
        match call.method {
            "Enroll" => Ok(self.0.limits(64 * KIB)),
            other => Err(unknown(other)),
        }
    }
}

/// `vigo.v1.EnvoyGateway`: envoys' own certificates (and relays where allowed); a
/// saturated spoke sheds these calls here, with a retry hint, before their body is read.
pub struct Gateway {
    pub settings: Settings,
    pub shedder: Shedder,
    /// Each envoy's share, taken before the spoke-wide shedder's (`crate::fairness`).
    pub shares: Arc<Shares>,
    /// To refuse a revoked envoy before its body is read.
    pub fleet: Arc<FleetIndex>,
}

impl Admit for Gateway {
    fn admit(&self, call: &mut Call<'_>) -> Result<Limits, Status> {
        let s = &self.settings;
        let max = match call.method {
            "CheckIn" | "OpenStream" => s.max_checkin_body + KIB,
            "ReportRun" => s.max_report_body + KIB,
            "ReportTask" => crate::tasks::MAX_RESULT_BODY + KIB,
            other => return Err(unknown(other)),
        };
        require_role(call.peer(), s.envoys(), call.method)?;
        let mut limits = s.limits(max);
        // An envoy's own certificate names it (a relay's requests are checked per body).
        if let Peer::Envoy { id, .. } = call.peer() {
            let id = *id;
            if self.fleet.get(id).is_some_and(|r| r.read(|st| st.revoked)) {
                return Err(Status::permission_denied(format!("envoy {id} is revoked")));
            }
            limits.hold = Some(Box::new(self.shares.admit(id.get())?));
        }
        let received = call.extensions.get::<Received>().map(|r| r.0);
        limits.ticket = Some(self.shedder.admit(received)?);
        Ok(limits)
    }
}

/// `vigo.v1.SpokeAdmin`: admin and hub certificates; the hub's own calls hub only.
pub struct SpokeAdmin(pub Settings);

impl Admit for SpokeAdmin {
    fn admit(&self, call: &mut Call<'_>) -> Result<Limits, Status> {
        const ADMINS: &[Role] = &[Role::Admin, Role::Hub];
        const HUB: &[Role] = &[Role::Hub];
        let s = &self.0;
        let (who, limits) = match call.method {
            "GetEnvoy" | "EnvoyRuns" | "Stats" | "Compliance" | "RevokeEnvoy" => {
                (ADMINS, s.limits(64 * KIB))
            }
            "ListEnvoys" | "TraitCount" | "TaskResults" => (ADMINS, s.limits(256 * KIB)),
            "SyncTasks" => (HUB, s.limits(16 * MIB)),
            "ForcePush" => (ADMINS, s.limits(MIB)),
            "RegisterEnvoys" => (HUB, s.limits(256 * KIB)),
            "ExportEnvoys" | "HandOff" => (HUB, bulk(MIB)),
            "ApplyRevocations" => (HUB, s.limits(MIB)),
            "ApplyConfig" => (HUB, bulk(MAX_CONFIG_MESSAGE)),
            "ImportEnvoys" => (HUB, bulk(MAX_IMPORT)),
            other => return Err(unknown(other)),
        };
        require_role(call.peer(), who, call.method)?;
        Ok(limits)
    }
}

fn bulk(max_message: usize) -> Limits {
    Limits::new(max_message, BULK_DEADLINE)
}

/// The largest message any method of the admin service takes (the services' own decode
/// limit; the table holds each method to its own).
pub const MAX_ADMIN_MESSAGE: usize = MAX_IMPORT;

/// The three tables, shared.
pub fn tables(
    s: Settings,
    shedding: SheddingLimits,
    shares: Arc<Shares>,
    fleet: Arc<FleetIndex>,
) -> (Arc<dyn Admit>, Arc<dyn Admit>, Arc<dyn Admit>) {
    (
        Arc::new(Enrollment(s)),
        Arc::new(Gateway {
            settings: s,
            shedder: Shedder::new(shedding, "envoy"),
            shares,
            fleet,
        }),
        Arc::new(SpokeAdmin(s)),
    )
}
