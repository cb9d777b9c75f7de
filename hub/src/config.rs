//! The hub's YAML configuration (see `deploy/hub.example.yaml`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vigo_common::config::{load_yaml, resolve};

use crate::error::HubError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// This node's raft id: unique in the cluster, never reused.
    pub node_id: u64,
    /// Hub nodes, spokes, envoys (enrollment, locate) and admins all connect here.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The address other hub nodes and spokes reach this node at (default: `listen`).
    #[serde(default)]
    pub advertise: Option<String>,
    #[serde(default = "default_metrics")]
    pub metrics_listen: Option<SocketAddr>,
    /// The REST/JSON admin API (HTTPS, this node's certificate); null turns it off. The
    /// same operations are served as gRPC on `listen`.
    #[serde(default = "default_admin")]
    pub admin_listen: Option<SocketAddr>,
    /// Holds raft-log.redb and raft-snapshot.redb.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    pub tls: TlsConfig,
    /// The key a new cluster starts signing bundles with (read once, when this node
    /// founds the cluster); absent: the founding node generates one. From then on the
    /// keys live in the replicated state (`vigocli bundle-key`).
    #[serde(default)]
    pub bundle_signing_key: Option<PathBuf>,
    #[serde(default)]
    pub raft: RaftConfig,
    /// How the hub port and the REST port admit and keep connections (see
    /// `deploy/hub.example.yaml`).
    #[serde(default)]
    pub connections: vigo_common::net::ConnectionsConfig,
    /// Published config versions the cluster keeps, with their files, for listing and
    /// rollback: the ones made current most recently (1..=10000). Every snapshot holds
    /// them all.
    #[serde(default = "default_keep_config_versions")]
    pub keep_config_versions: u32,
    #[serde(default)]
    pub compliance: ComplianceConfig,
}

fn default_keep_config_versions() -> u32 {
    100
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_cert: PathBuf,
    /// The hub signs envoy certificates at enrollment.
    pub ca_key: PathBuf,
    /// This node's certificate (role hub).
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftConfig {
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat: Duration,
    /// A follower that hears no leader for a random time in this range stands for election.
    #[serde(default = "default_election_min", with = "humantime_serde")]
    pub election_timeout_min: Duration,
    #[serde(default = "default_election_max", with = "humantime_serde")]
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many log entries; older entries are then purged.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot, so a briefly lagging follower needs no snapshot.
    #[serde(default = "default_keep_logs")]
    pub keep_logs: u64,
    /// Enrollments committed together in one raft entry at most.
    #[serde(default = "default_enroll_batch")]
    pub enroll_batch: usize,
    /// A write not committed within this time fails with UNAVAILABLE (a leader cut off
    /// from its quorum cannot commit; the caller retries and reaches the new leader).
    #[serde(default = "default_commit_timeout", with = "humantime_serde")]
    pub commit_timeout: Duration,
}

/// The leader's compliance roll-up over the spokes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComplianceConfig {
    /// How often the fleet gauges are refreshed from the spokes' counters.
    #[serde(default = "default_roll_up_every", with = "humantime_serde")]
    pub roll_up_every: Duration,
    /// How often a roll-up is kept in the history (`vigocli compliance --history`).
    #[serde(default = "default_sample_every", with = "humantime_serde")]
    pub sample_every: Duration,
}

fn default_roll_up_every() -> Duration {
    Duration::from_secs(15)
}
fn default_sample_every() -> Duration {
    Duration::from_secs(300)
}

impl Default for ComplianceConfig {
    fn default() -> Self {
        Self {
            roll_up_every: default_roll_up_every(),
            sample_every: default_sample_every(),
        }
    }
}

fn default_commit_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:7400".parse().expect("valid literal")
}
fn default_admin() -> Option<SocketAddr> {
    Some("127.0.0.1:7480".parse().expect("valid literal"))
}
fn default_metrics() -> Option<SocketAddr> {
    Some("127.0.0.1:9470".parse().expect("valid literal"))
}
fn default_data_dir() -> PathBuf {
    "data".into()
}
// A stopped leader is replaced in under 2 s with these (deploy/bench/fleet.sh measures
// it with the fleet's load on the box, and counts term changes to show that the timeout
// is not so short that a busy node loses its leadership).
fn default_heartbeat() -> Duration {
    Duration::from_millis(100)
}
fn default_election_min() -> Duration {
    Duration::from_millis(500)
}
fn default_election_max() -> Duration {
    Duration::from_millis(1000)
}
fn default_snapshot_every() -> u64 {
    10_000
}
fn default_keep_logs() -> u64 {
    1_000
}
fn default_enroll_batch() -> usize {
    256
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat: default_heartbeat(),
            election_timeout_min: default_election_min(),
            election_timeout_max: default_election_max(),
            snapshot_every: default_snapshot_every(),
            keep_logs: default_keep_logs(),
            enroll_batch: default_enroll_batch(),
            commit_timeout: default_commit_timeout(),
        }
    }
}

impl HubConfig {
    pub fn load(path: &Path) -> Result<Self, HubError> {
        let mut c: HubConfig = load_yaml(path)?;
        for p in [
            &mut c.data_dir,
            &mut c.tls.ca_cert,
            &mut c.tls.ca_key,
            &mut c.tls.cert,
            &mut c.tls.key,
        ] {
            *p = resolve(path, p);
        }
        if let Some(k) = &mut c.bundle_signing_key {
            *k = resolve(path, k);
        }
        let bad = |key: &str, why: &str| {
            HubError::Common(vigo_common::Error::Config {
                file: path.to_path_buf(),
                key: key.into(),
                why: why.into(),
            })
        };
        if c.node_id == 0 {
            return Err(bad("node_id", "must be at least 1"));
        }
        if c.raft.election_timeout_min <= c.raft.heartbeat * 2
            || c.raft.election_timeout_max <= c.raft.election_timeout_min
        {
            return Err(bad(
                "raft",
                "need heartbeat < election_timeout_min / 2 and election_timeout_min < election_timeout_max",
            ));
        }
        if c.raft.enroll_batch == 0 {
            return Err(bad("raft.enroll_batch", "must be at least 1"));
        }
        if !(1..=10_000).contains(&c.keep_config_versions) {
            return Err(bad("keep_config_versions", "must be between 1 and 10000"));
        }
        if c.compliance.roll_up_every < Duration::from_secs(1)
            || c.compliance.sample_every < c.compliance.roll_up_every
        {
            return Err(bad(
                "compliance",
                "need roll_up_every of at least 1s and sample_every no shorter than roll_up_every",
            ));
        }
        if let Err((key, why)) = c.connections.check() {
            return Err(bad(key, &why));
        }
        Ok(c)
    }

    /// How the hub port keeps connections: idle ones closed after 5 minutes, 1 MiB
    /// windows (raft and policy messages are large), unless configured.
    pub fn http2_limits(&self) -> vigo_common::net::Http2Limits {
        self.connections
            .http2_limits(Duration::from_secs(300), 1 << 20)
    }

    pub fn advertise_address(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_loads_with_its_stated_defaults() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/hub.example.yaml");
        let c = HubConfig::load(&example).expect("deploy/hub.example.yaml loads");
        let d = RaftConfig::default();
        assert_eq!(c.node_id, 1);
        assert_eq!(c.admin_listen, default_admin());
        assert_eq!(c.metrics_listen, default_metrics());
        // The example states the defaults: keep them in step.
        assert_eq!(c.raft.heartbeat, d.heartbeat);
        assert_eq!(c.raft.election_timeout_min, d.election_timeout_min);
        assert_eq!(c.raft.election_timeout_max, d.election_timeout_max);
        assert_eq!(c.raft.snapshot_every, d.snapshot_every);
        assert_eq!(c.raft.keep_logs, d.keep_logs);
        assert_eq!(c.raft.enroll_batch, d.enroll_batch);
        assert_eq!(c.raft.commit_timeout, d.commit_timeout);
        assert_eq!(c.keep_config_versions, default_keep_config_versions());
        assert_eq!(c.compliance, ComplianceConfig::default());
        let defaults = HubConfig {
            connections: Default::default(),
            ..c.clone()
        };
        assert_eq!(c.http2_limits(), defaults.http2_limits());
        assert_eq!(
            c.connections.accept_limits(),
            defaults.connections.accept_limits()
        );
        assert!(
            c.tls.ca_cert.is_absolute(),
            "paths resolve against the file"
        );
    }
}
