//! Who may call what on a hub node, with each call's message limit and deadline —
//! decided before a request body is read. The admin API authenticates here too: its
//! bearer token (or admin certificate, or a forwarding hub's stamp) becomes the
//! [`Caller`] the operation reads.
//!
//! | service | methods | who | largest message |
//! |---|---|---|---|
//! | Enrollment | Enroll | anyone | 64 KiB |
//! | HubLocate | Locate | envoy (its own; the request is signed) | 4 KiB |
//! | HubSpokes | RegisterSpoke, Heartbeat, GetConfig, GetRevocations | spoke, hub | 64 KiB |
//! | HubRaft | Vote | hub | 64 KiB |
//! | HubRaft | AppendEntries, InstallSnapshot | hub | 32 MiB |
//! | HubAdmin | PublishConfig | API caller | the largest policy (16 MiB) + 64 KiB |
//! | HubAdmin | SetOverrides | API caller | 1 MiB |
//! | HubAdmin | ListEnvoys, TraitCount, Push | API caller | 256 KiB |
//! | HubAdmin | every other | API caller | 64 KiB |
//!
//! Deadlines are 30 s but for PublishConfig (120 s), moves (600 s), key changes and
//! RunTask (60 s); WatchTask's deadline covers its answer's start, not the stream.

use std::sync::Arc;
use std::time::Duration;

use tonic::Status;
use vigo_common::limits::MAX_CONFIG_MESSAGE;
use vigo_common::net::{Admit, Call, Limits, require_role};
use vigo_common::pki::Role;

use crate::admin::authenticate;
use crate::node::Node;

/// Raft messages between hub nodes (log batches, snapshot chunks of 4 MiB).
pub const MAX_RAFT_MESSAGE: usize = 32 << 20;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

fn limits(max_message: usize, seconds: u64) -> Limits {
    Limits::new(max_message, Duration::from_secs(seconds))
}

fn unknown(method: &str) -> Status {
    Status::unimplemented(format!("no method {method}"))
}

/// `vigo.v1.Enrollment`: anyone; the token is checked by the service.
pub struct Enrollment;

impl Admit for Enrollment {
    fn admit(&self, call: &mut Call<'_>) -> Result<Limits, Status> {
        match call.method {
            // Registration on the spoke and a raft commit: not instant.
            "Enroll" => Ok(limits(64 * KIB, 30)),
            other => Err(unknown(other)),
        }
    }
}

/// `vigo.v1.HubLocate`: envoys, with their own certificate (the service checks it is
/// the envoy the signed body names).
pub struct Locate;

impl Admit for Locate {
    fn admit(&self, call: &mut Call<'_>) -> Result<Limits, Status> {
        match call.method {
            "Locate" => {
                require_role(call.peer(), &[Role::Envoy], call.method)?;
                Ok(limits(4 * KIB, 10))
            }
            other => Err(unknown(other)),
        }
    }
}

/// `vigo.v1.HubSpokes`: spokes, and hubs forwarding a spoke's call to the leader.
pub struct Spokes;

impl Admit for Spokes {
    fn admit(&self, call: &mut Call<'_>) -> Result<Limits, Status> {
        match call.method {
            "RegisterSpoke" | "Heartbeat" | "GetConfig" | "GetRevocations" => {
                require_role(call.peer(), &[Role::Spoke, Role::Hub], call.method)?;
                Ok(limits(64 * KIB, 30))
            }
            other => Err(unknown(other)),
        }
    }
}

/// `vigo.v1.HubRaft`: hub nodes only.
pub struct Raft;

impl Admit for Raft {
    fn admit(&self, call: &mut Call<'_>) -> Result<Limits, Status> {
        let max = match call.method {
            "Vote" | "ReadIndex" => 64 * KIB,
            "AppendEntries" | "InstallSnapshot" => MAX_RAFT_MESSAGE,
            other => return Err(unknown(other)),
        };
        require_role(call.peer(), &[Role::Hub], call.method)?;
        Ok(limits(max, 60))
    }
}

/// `vigo.admin.v1.HubAdmin`: a bearer token, an admin certificate, or a hub forwarding
/// a call it authenticated; what the caller may do is each operation's check.
pub struct HubAdmin(pub Arc<Node>);

impl Admit for HubAdmin {
    fn admit(&self, call: &mut Call<'_>) -> Result<Limits, Status> {
        let admitted = match call.method {
            "PublishConfig" => limits(MAX_CONFIG_MESSAGE, 120),
            "SetOverrides" => limits(MIB, 30),
            "ListEnvoys" | "TraitCount" | "Push" => limits(256 * KIB, 30),
            // Moves take as long as the envoys they move.
            "DrainSpoke" | "ReassignEnvoy" | "RemoveSpoke" => limits(64 * KIB, 600),
            "Status" | "ShowEnvoy" | "EnvoyRuns" | "Compliance" | "ComplianceHistory"
            | "ConfigHistory" | "ListSpokes" | "ShowSpoke" | "Members" | "RevokeEnvoy"
            | "RollbackConfig" | "AddSpoke" | "CreateToken" | "ListTokens" | "RevokeToken"
            | "AddHub" | "RemoveHub" | "ListRevocations" | "RevokeCertificate"
            | "ListBundleKeys" => limits(64 * KIB, 30),
            // A trace parses and compiles the config it reads.
            "TraceConfig" => limits(64 * KIB, 60),
            // A key change compiles and re-signs the current config version.
            "AddBundleKey" | "UseBundleKey" | "RetireBundleKey" => limits(64 * KIB, 60),
            "ListTasks" | "ShowTask" | "TaskResults" | "CancelTask" | "WatchTask" => {
                limits(64 * KIB, 30)
            }
            // Targets are resolved from every spoke before the task is recorded.
            "RunTask" => limits(64 * KIB, 60),
            other => return Err(unknown(other)),
        };
        let serial = call.serial().to_string();
        let caller =
            authenticate(&self.0, call.headers, call.peer(), &serial).map_err(Status::from)?;
        call.vouch();
        call.extensions.insert(caller);
        Ok(admitted)
    }
}
