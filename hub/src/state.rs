//! The cluster's replicated state and the commands that change it.
//!
//! Applying a command is deterministic: everything that depends on time or chance (the
//! envoy id, the chosen spoke, "now") is decided by the leader and carried in the
//! command, so every hub node reaches the same state from the same log.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ring::{Ring, RingCache};

pub mod bundle_keys;
mod enroll;
pub mod history;
mod moves;
mod rejection;
pub mod requests;
mod revocations;
pub mod tasks;
pub use bundle_keys::{BundleKey, BundleKeys, ConfigSeal, KeyChange, Resign, Secret};
pub use history::{ComplianceHistory, ComplianceSample};
pub use moves::{MovePhase, OpenMove};
pub use rejection::Rejection;
pub use requests::{RequestTag, Requests};
pub use revocations::{Revocation, Revocations, Revoked};
pub use tasks::{Counts, TaskId, TaskRecord, TaskState, Tasks};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpokeState {
    Active,
    Draining,
    Removed,
}

impl SpokeState {
    pub fn as_str(self) -> &'static str {
        match self {
            SpokeState::Active => "active",
            SpokeState::Draining => "draining",
            SpokeState::Removed => "removed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spoke {
    pub id: String,
    pub address: String,
    pub weight: u32,
    pub state: SpokeState,
    pub last_heartbeat_ms: u64,
    /// The policy version the spoke said it serves at its last heartbeat.
    pub config_version: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub spoke: String,
    pub hostname: String,
    pub key: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub name: String,
    pub uses: u64,
    pub used: u64,
    /// Unix ms; 0 = never.
    pub expires_ms: u64,
    pub allow_rekey: bool,
    pub revoked: bool,
    /// Hostname patterns a hostname must match one of to enroll; empty = any.
    #[serde(default)]
    pub hostnames: Vec<String>,
}

impl Token {
    /// Whether this token may enroll `hostname`. Patterns were checked when the token
    /// was created; one that no longer compiles matches nothing.
    pub fn admits(&self, hostname: &str) -> bool {
        vigo_common::hostname::Scope::new(&self.hostnames).is_ok_and(|s| s.admits(hostname))
    }
}

/// What an admin API token may do; each role includes the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ApiRole {
    Viewer,
    Operator,
    Admin,
}

impl ApiRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiRole::Viewer => "viewer",
            ApiRole::Operator => "operator",
            ApiRole::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(ApiRole::Viewer),
            "operator" => Some(ApiRole::Operator),
            "admin" => Some(ApiRole::Admin),
            _ => None,
        }
    }
}

/// A bearer token of the admin API (stored by the SHA-256 of its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub name: String,
    pub role: ApiRole,
    /// Unix ms; 0 = never.
    pub expires_ms: u64,
    pub revoked: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    pub pattern: String,
    pub spoke: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigEntry {
    /// Hex SHA-256 of the policy tree.
    pub version: String,
    pub author: String,
    pub published_ms: u64,
    pub message: String,
    pub files: BTreeMap<String, String>,
    /// The bundle generation this version was last made current with (by its publish
    /// or a rollback to it): envoys refuse bundles of a lower one.
    pub generation: u64,
    /// Its bundles' signatures, made under the keys in force when it became current.
    #[serde(default)]
    pub seal: ConfigSeal,
}

/// One enrollment to commit, decided by the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollEntry {
    pub envoy_id: u64,
    pub hostname: String,
    pub key: [u8; 32],
    pub spoke: String,
    pub token: [u8; 32],
    pub at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set once, when the cluster is founded.
    Found {
        ca_cert_pem: String,
        bundle_keys: BundleKeys,
    },
    RegisterSpoke {
        id: String,
        address: String,
        weight: u32,
        at_ms: u64,
    },
    Heartbeat {
        id: String,
        config_version: String,
        at_ms: u64,
    },
    CreateToken {
        hash: [u8; 32],
        token: Token,
    },
    SetOverrides(Vec<Override>),
    /// Enrollments proposed together (one raft entry for many envoys).
    Enroll(Vec<EnrollEntry>),
    /// Makes `entry` current; then only the `keep` most recently current versions stay.
    PublishConfig {
        entry: ConfigEntry,
        keep: u32,
    },
    /// Makes a published version current again, with a new (higher) generation.
    Rollback {
        version: String,
        generation: u64,
        seal: ConfigSeal,
    },
    /// Changes the bundle-signing keys; `resign` is the current version signed under
    /// the new set (required when there is a current version).
    ChangeBundleKeys {
        change: KeyChange,
        resign: Option<Resign>,
    },
    CreateApiToken {
        hash: [u8; 32],
        token: ApiToken,
    },
    /// Revokes the enrollment or API token of that name.
    RevokeToken {
        name: String,
    },
    /// Opens a move of envoys pinned to `from` to spoke `to` (`state::moves`).
    BeginMove {
        envoys: Vec<u64>,
        from: String,
        to: String,
        at_ms: u64,
    },
    /// Envoys re-pinned (reassign, drain): envoy id -> spoke. All or nothing; an envoy
    /// with an open move goes only where that move goes.
    MovePins(Vec<(u64, String)>),
    /// Closes the moves of these envoys (handed off by the old spoke).
    EndMove {
        envoys: Vec<u64>,
    },
    SetSpokeState {
        id: String,
        state: SpokeState,
    },
    /// `command`, applied once for this request id (a retry gets the first outcome).
    Once {
        request: String,
        by: String,
        digest: [u8; 32],
        command: Box<Command>,
    },
    /// Revokes an envoy or a certificate for good; revoking again changes nothing.
    Revoke {
        target: Revoked,
        at_ms: u64,
        reason: String,
        /// Who revoked (an API token's name, or what did it).
        by: String,
    },
    /// A task or live query begins (`state::tasks`); the leader resolved its targets.
    CreateTask(Box<TaskRecord>),
    /// Releases a running task's targets, in order, up to `upto` to their spokes.
    ReleaseTask {
        id: TaskId,
        upto: u32,
        at_ms: u64,
    },
    /// A spoke silent past its targets' windows: they count unreachable.
    WriteOffTask {
        id: TaskId,
        spoke: String,
        at_ms: u64,
    },
    /// A spoke's counts for a task (cumulative: a field never goes down).
    CountTask {
        id: TaskId,
        spoke: String,
        counts: Counts,
        at_ms: u64,
    },
    CancelTask {
        id: TaskId,
        by: String,
        at_ms: u64,
    },
    /// Ends the running tasks whose window closed before `at_ms`.
    ExpireTasks {
        at_ms: u64,
    },
    /// One sample of the fleet's compliance for the history (`state::history`).
    SampleCompliance(ComplianceSample),
}

impl Command {
    /// Whether applying it may change the set of spokes the ring is built from.
    fn changes_spokes(&self) -> bool {
        match self {
            Command::RegisterSpoke { .. } | Command::SetSpokeState { .. } => true,
            Command::Once { command, .. } => command.changes_spokes(),
            _ => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    Done,
    Refused(Rejection),
    /// Per entry of an `Enroll`: the envoy id pinned (an earlier one for a retry), or why not.
    Enrolled(Vec<Result<u64, Rejection>>),
}

/// Everything the hub replicates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub ca_cert_pem: String,
    pub bundle_keys: BundleKeys,
    pub spokes: BTreeMap<String, Spoke>,
    pub overrides: Vec<Override>,
    pub pins: HashMap<u64, Pin>,
    pub hostnames: HashMap<String, u64>,
    pub tokens: BTreeMap<[u8; 32], Token>,
    pub api_tokens: BTreeMap<[u8; 32], ApiToken>,
    /// Published versions, oldest first.
    pub configs: Vec<ConfigEntry>,
    pub current_config: String,
    /// Envoys and certificates revoked, in the order they were.
    #[serde(default)]
    pub revocations: Revocations,
    /// Outcomes of the latest admin writes, by request id.
    #[serde(default)]
    pub requests: Requests,
    /// Moves under way, by envoy.
    #[serde(default)]
    pub moves: BTreeMap<u64, OpenMove>,
    /// Tasks and live queries: the running ones and the latest ended.
    #[serde(default)]
    pub tasks: Tasks,
    /// Counts per status over time, bounded.
    #[serde(default)]
    pub compliance_history: ComplianceHistory,
    /// Derived from `spokes`, rebuilt after they change.
    #[serde(skip)]
    ring: RingCache,
}

/// `Done`, or the refusal.
fn done(outcome: Result<(), Rejection>) -> Applied {
    outcome.map_or_else(Applied::Refused, |()| Applied::Done)
}

impl ClusterState {
    pub fn apply(&mut self, command: Command) -> Applied {
        if command.changes_spokes() {
            self.ring.clear();
        }
        self.apply_command(command)
    }

    fn apply_command(&mut self, command: Command) -> Applied {
        match command {
            Command::Once {
                request,
                by,
                digest,
                command,
            } => self.apply_once(request, by, digest, *command),
            Command::Found {
                ca_cert_pem,
                bundle_keys,
            } => {
                if self.ca_cert_pem.is_empty() {
                    self.ca_cert_pem = ca_cert_pem;
                    self.bundle_keys = bundle_keys;
                }
                Applied::Done
            }
            Command::RegisterSpoke {
                id,
                address,
                weight,
                at_ms,
            } => {
                let spoke = self.spokes.entry(id.clone()).or_insert(Spoke {
                    id,
                    address: String::new(),
                    weight,
                    state: SpokeState::Active,
                    last_heartbeat_ms: at_ms,
                    config_version: String::new(),
                });
                spoke.address = address;
                spoke.weight = weight.max(1);
                spoke.last_heartbeat_ms = at_ms;
                // A removed spoke stays removed: only an operator's AddSpoke (which sets
                // the state itself) brings it back.
                Applied::Done
            }
            Command::Heartbeat {
                id,
                config_version,
                at_ms,
            } => match self.spokes.get_mut(&id) {
                Some(s) => {
                    s.last_heartbeat_ms = s.last_heartbeat_ms.max(at_ms);
                    s.config_version = config_version;
                    Applied::Done
                }
                None => Applied::Refused(Rejection::UnknownSpoke(id)),
            },
            Command::CreateToken { hash, token } => {
                if self.token_name_taken(&token.name) {
                    return Applied::Refused(Rejection::TokenNameTaken(token.name));
                }
                self.tokens.insert(hash, token);
                Applied::Done
            }
            Command::CreateApiToken { hash, token } => {
                if self.token_name_taken(&token.name) {
                    return Applied::Refused(Rejection::TokenNameTaken(token.name));
                }
                self.api_tokens.insert(hash, token);
                Applied::Done
            }
            Command::RevokeToken { name } => {
                let enroll = self.tokens.values_mut().find(|t| t.name == name);
                if let Some(t) = enroll {
                    t.revoked = true;
                    return Applied::Done;
                }
                match self.api_tokens.values_mut().find(|t| t.name == name) {
                    Some(t) => {
                        t.revoked = true;
                        Applied::Done
                    }
                    None => Applied::Refused(Rejection::NoSuchToken(name)),
                }
            }
            Command::BeginMove {
                envoys,
                from,
                to,
                at_ms,
            } => self.begin_moves(&envoys, &from, &to, at_ms),
            Command::EndMove { envoys } => self.end_moves(&envoys),
            Command::MovePins(moves) => {
                for (envoy, spoke) in &moves {
                    if !self.pins.contains_key(envoy) {
                        return Applied::Refused(Rejection::NotPinned(*envoy));
                    }
                    if let Some(open) = self.moves.get(envoy)
                        && &open.to != spoke
                    {
                        return Applied::Refused(Rejection::MoveOpen {
                            envoy: *envoy,
                            from: open.from.clone(),
                            to: open.to.clone(),
                        });
                    }
                    if !self
                        .spokes
                        .get(spoke)
                        .is_some_and(|s| s.state == SpokeState::Active)
                    {
                        return Applied::Refused(Rejection::SpokeNotActive(spoke.clone()));
                    }
                }
                self.moves_pinned(moves.iter().map(|(envoy, _)| *envoy));
                for (envoy, spoke) in moves {
                    if let Some(pin) = self.pins.get_mut(&envoy) {
                        pin.spoke = spoke;
                    }
                }
                Applied::Done
            }
            Command::SetSpokeState { id, state } => {
                if state == SpokeState::Removed && self.pins.values().any(|p| p.spoke == id) {
                    return Applied::Refused(Rejection::SpokeHasEnvoys(id));
                }
                if state == SpokeState::Removed {
                    self.overrides.retain(|o| o.spoke != id);
                }
                match self.spokes.get_mut(&id) {
                    Some(s) => {
                        s.state = state;
                        Applied::Done
                    }
                    None => Applied::Refused(Rejection::UnknownSpoke(id)),
                }
            }
            Command::SetOverrides(overrides) => {
                if let Some(o) = overrides
                    .iter()
                    .find(|o| !self.spokes.contains_key(&o.spoke))
                {
                    return Applied::Refused(Rejection::UnknownSpoke(o.spoke.clone()));
                }
                self.overrides = overrides;
                Applied::Done
            }
            Command::Revoke {
                target,
                at_ms,
                reason,
                by,
            } => {
                if let Revoked::Envoy(id) = target
                    && !self.pins.contains_key(&id)
                    && !self.is_envoy_revoked(id)
                {
                    return Applied::Refused(Rejection::NotPinned(id));
                }
                self.revoke(target, at_ms, reason, &by);
                Applied::Done
            }
            Command::CreateTask(task) => done(self.create_task(*task)),
            Command::ReleaseTask { id, upto, at_ms } => done(self.release_task(&id, upto, at_ms)),
            Command::WriteOffTask { id, spoke, at_ms } => {
                done(self.write_off_task(&id, &spoke, at_ms))
            }
            Command::CountTask {
                id,
                spoke,
                counts,
                at_ms,
            } => done(self.count_task(&id, &spoke, counts, at_ms)),
            Command::CancelTask { id, by, at_ms } => done(self.cancel_task(&id, by, at_ms)),
            Command::ExpireTasks { at_ms } => {
                self.expire_tasks(at_ms);
                Applied::Done
            }
            Command::SampleCompliance(sample) => {
                self.compliance_history.record(sample);
                Applied::Done
            }
            Command::Enroll(entries) => {
                Applied::Enrolled(entries.into_iter().map(|e| self.enroll(e)).collect())
            }
            Command::PublishConfig { entry, keep } => {
                if let Err(why) = self.bundle_keys.check(&entry.seal) {
                    return Applied::Refused(why);
                }
                self.current_config = entry.version.clone();
                match self.configs.iter_mut().find(|c| c.version == entry.version) {
                    Some(known) => {
                        known.generation = entry.generation;
                        known.seal = entry.seal;
                    }
                    None => self.configs.push(entry),
                }
                self.prune_configs(keep.max(1) as usize);
                Applied::Done
            }
            Command::Rollback {
                version,
                generation,
                seal,
            } => {
                if let Err(why) = self.bundle_keys.check(&seal) {
                    return Applied::Refused(why);
                }
                match self.configs.iter_mut().find(|c| c.version == version) {
                    Some(entry) => {
                        entry.generation = generation;
                        entry.seal = seal;
                        self.current_config = version;
                        Applied::Done
                    }
                    None => Applied::Refused(Rejection::NoConfigVersion(version)),
                }
            }
            Command::ChangeBundleKeys { change, resign } => {
                match self.change_bundle_keys(change, resign) {
                    Ok(()) => Applied::Done,
                    Err(why) => Applied::Refused(why),
                }
            }
        }
    }

    fn token_name_taken(&self, name: &str) -> bool {
        self.tokens.values().any(|t| t.name == name)
            || self.api_tokens.values().any(|t| t.name == name)
    }

    /// The API token with this secret hash, if it is valid at `now_ms`.
    pub fn api_token(&self, hash: &[u8; 32], now_ms: u64) -> Option<&ApiToken> {
        self.api_tokens
            .get(hash)
            .filter(|t| !t.revoked && (t.expires_ms == 0 || now_ms < t.expires_ms))
    }

    /// Where an envoy belongs: the first pattern override that matches its hostname, if
    /// that spoke is active, else the ring over active spokes. Enrollment and drain
    /// both place envoys with this.
    pub fn place(&self, hostname: &str, ring: &Ring) -> Option<String> {
        let overridden = self.overrides.iter().find(|o| {
            vigo_common::hostname::Pattern::new(&o.pattern).is_ok_and(|p| p.is_match(hostname))
        });
        match overridden {
            Some(o)
                if self
                    .spokes
                    .get(&o.spoke)
                    .is_some_and(|s| s.state == SpokeState::Active) =>
            {
                Some(o.spoke.clone())
            }
            _ => ring.place(hostname).map(str::to_string),
        }
    }

    /// Drops the versions made current longest ago (lowest generation) until `keep`
    /// remain; the current one has the highest generation and always stays.
    fn prune_configs(&mut self, keep: usize) {
        while self.configs.len() > keep {
            let oldest = self
                .configs
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.generation)
                .map(|(i, _)| i);
            match oldest {
                Some(i) => self.configs.remove(i),
                None => break,
            };
        }
    }

    /// The generation for the next publish or rollback: above every one so far, and
    /// the leader's clock in milliseconds when that is larger.
    pub fn next_config_generation(&self, now_ms: u64) -> u64 {
        let last = self.configs.iter().map(|c| c.generation).max().unwrap_or(0);
        last.saturating_add(1).max(now_ms)
    }

    pub fn config(&self, version: &str) -> Option<&ConfigEntry> {
        let version = if version.is_empty() {
            self.current_config.as_str()
        } else {
            version
        };
        self.configs.iter().rev().find(|c| c.version == version)
    }

    /// The ring over active spokes (built once per change of the spokes).
    pub fn ring(&self) -> Arc<Ring> {
        self.ring.get(|| {
            Ring::new(
                self.spokes
                    .values()
                    .filter(|s| s.state == SpokeState::Active)
                    .map(|s| (s.id.as_str(), s.weight)),
            )
        })
    }

    /// Pins per spoke.
    pub fn pin_counts(&self) -> BTreeMap<&str, u64> {
        let mut counts: BTreeMap<&str, u64> = self.spokes.keys().map(|k| (k.as_str(), 0)).collect();
        for p in self.pins.values() {
            *counts.entry(p.spoke.as_str()).or_default() += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests;
