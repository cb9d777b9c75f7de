//! The spoke's YAML configuration. Every key is optional except where noted; defaults
//! are the ones documented in `deploy/spoke.example.yaml`. Unknown keys are refused
//! with their name, and relative paths are taken from the config file's directory.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use vigo_common::config::{ByteSize, Percent, load_yaml, resolve};
pub use vigo_common::net::ConnectionsConfig;

use crate::error::SpokeError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpokeConfig {
    /// This spoke's name in logs, metrics and certificates.
    #[serde(default = "default_name")]
    pub name: String,
    /// Where envoys connect (check-in, report, enrollment) and admins call.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The address handed to envoys at enrollment; defaults to `listen`.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Prometheus metrics; `null` turns them off.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: Option<SocketAddr>,
    /// Holds `spoke.redb`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "default_policy_dir")]
    pub policy_dir: PathBuf,
    pub tls: TlsConfig,
    /// Ed25519 key (PKCS#8 PEM) that signs policy bundles: a standalone spoke's only.
    /// A spoke under a hub holds no signing key and serves the bundles its hub signed;
    /// the key is refused there, so that it is not left lying on a spoke.
    #[serde(default)]
    pub bundle_signing_key: Option<PathBuf>,
    #[serde(default)]
    pub checkin: CheckinConfig,
    #[serde(default)]
    pub flush: FlushConfig,
    #[serde(default)]
    pub reports: ReportsConfig,
    #[serde(default)]
    pub verify: VerifyConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub connections: ConnectionsConfig,
    /// Admission control under herds: when to shed envoy requests with a retry hint.
    #[serde(default)]
    pub shedding: SheddingConfig,
    #[serde(default)]
    pub enrollment: EnrollmentConfig,
    /// Join a hub: envoys then enroll through the hub, and policy comes from the hub's
    /// published versions instead of `policy_dir`.
    #[serde(default)]
    pub hub: Option<HubLink>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubLink {
    /// Hub nodes (host:port); any of them answers.
    pub addresses: Vec<String>,
    /// This spoke's id in the cluster: the name in its certificate (role spoke).
    pub spoke_id: String,
    /// Share of new envoys the ring gives this spoke, relative to the others.
    #[serde(default = "one_u32")]
    pub weight: u32,
    /// How often the spoke tells the hub it is alive (default 2 s). The hub shows a
    /// spoke it has not heard from for 8 s as unhealthy; the raft log is written only
    /// when what the spoke serves changes.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat: Duration,
}

fn one_u32() -> u32 {
    1
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(2)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_cert: PathBuf,
    /// The CA key signs envoy certificates at enrollment (standalone spokes; with a hub,
    /// the hub signs them).
    #[serde(default)]
    pub ca_key: Option<PathBuf>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Accept relay certificates (one connection carrying many envoys' signed
    /// check-ins, as the simulator's `--connections` does). Off in production.
    #[serde(default)]
    pub allow_relay_certificates: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckinConfig {
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_jitter")]
    pub jitter: Percent,
    /// Requests whose timestamp is further than this from the spoke's clock are refused.
    #[serde(default = "default_timestamp_window", with = "humantime_serde")]
    pub timestamp_window: Duration,
    /// Largest signed check-in body (traits included).
    #[serde(default = "default_max_checkin_body")]
    pub max_body: ByteSize,
    #[serde(default = "default_max_traits")]
    pub max_traits: usize,
    /// An envoy silent for longer is `offline`; default 2 intervals.
    #[serde(default, with = "humantime_serde")]
    pub offline_after: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlushConfig {
    /// How often dirty envoy state (last seen, sequence, traits) goes to disk: a crash
    /// loses at most this much of it.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Flushers, each owning a slice of the fleet, started staggered over the interval.
    #[serde(default = "default_flushers")]
    pub flushers: usize,
    /// Rows per redb transaction (written in key order). Measured: 50,000 dirty envoys
    /// flush in 54 ms at 10,000 rows a transaction, 61–69 ms at 2,000; a transaction of
    /// 10,000 holds the store's writer ~10 ms (reports and enrollments wait behind it).
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportsConfig {
    /// Runs kept per envoy.
    #[serde(default = "default_keep_runs")]
    pub keep_runs: usize,
    #[serde(default = "default_max_report_body")]
    pub max_body: ByteSize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// Concurrent check-ins are verified together, up to this many signatures at once.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
}

/// The threads that serve envoys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads of the async runtime. One by default: at a fleet's real rate a
    /// check-in arrives every few milliseconds, and a second worker turns each into
    /// wake-ups of both threads (measured at 83 check-ins/s: 309 µs of CPU per
    /// check-in with two workers, 180 µs with one; BENCHMARKS.md). One worker answers
    /// ~7,000 check-ins/s; a box with more cores runs more spokes, or raises this.
    #[serde(default = "default_workers")]
    pub workers: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            workers: default_workers(),
        }
    }
}

fn default_workers() -> usize {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SheddingConfig {
    /// Envoy requests (check-ins, reports, stream opens) in progress at once; beyond
    /// it they are shed before any signature work.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// A request that waited longer than this for a worker to start it is shed: the
    /// spoke is behind, and answering it late helps no one.
    #[serde(default = "default_max_queue_wait", with = "humantime_serde")]
    pub max_queue_wait: Duration,
    /// The retry hint shed requests carry while few are shed; envoys wait half to one
    /// and a half of it.
    #[serde(default = "default_retry_after", with = "humantime_serde")]
    pub retry_after: Duration,
    /// The hint grows with the share shed (`retry_after / (1 - share)`) up to this: in a
    /// lasting overload, envoys check in less often rather than all failing.
    #[serde(default = "default_max_retry_after", with = "humantime_serde")]
    pub max_retry_after: Duration,
}

fn default_max_in_flight() -> usize {
    2048
}
fn default_max_queue_wait() -> Duration {
    Duration::from_millis(250)
}
fn default_retry_after() -> Duration {
    Duration::from_secs(2)
}
fn default_max_retry_after() -> Duration {
    Duration::from_secs(300)
}

impl Default for SheddingConfig {
    fn default() -> Self {
        Self {
            max_in_flight: default_max_in_flight(),
            max_queue_wait: default_max_queue_wait(),
            retry_after: default_retry_after(),
            max_retry_after: default_max_retry_after(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentConfig {
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    /// Hex SHA-256 of the token secret (`vigo-spoke token new` prints both).
    pub sha256: String,
    /// Enrollments the token allows; 1 when absent (one-shot).
    #[serde(default = "one")]
    pub uses: u64,
    /// RFC 3339 time after which the token is refused.
    #[serde(default, with = "humantime_serde")]
    pub expires: Option<SystemTime>,
    /// Allow re-enrolling an already enrolled hostname with a new key (machine rebuilt).
    #[serde(default)]
    pub allow_rekey: bool,
    /// Only hostnames matching one of these patterns enroll with the token (globs, as
    /// hostcrates match; at most 32); none: any hostname.
    #[serde(default)]
    pub hostnames: Vec<String>,
}

fn default_name() -> String {
    "spoke".into()
}
fn default_listen() -> SocketAddr {
    "127.0.0.1:7443".parse().expect("valid literal")
}
fn default_metrics_listen() -> Option<SocketAddr> {
    Some("127.0.0.1:9464".parse().expect("valid literal"))
}
fn default_data_dir() -> PathBuf {
    "data".into()
}
fn default_policy_dir() -> PathBuf {
    "policy".into()
}
fn default_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_jitter() -> Percent {
    Percent(10.0)
}
fn default_timestamp_window() -> Duration {
    Duration::from_secs(300)
}
fn default_max_checkin_body() -> ByteSize {
    ByteSize(64 << 10)
}
fn default_max_traits() -> usize {
    256
}
fn default_flush_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_flushers() -> usize {
    3
}
fn default_batch_rows() -> usize {
    10_000
}
fn default_keep_runs() -> usize {
    10
}
fn default_max_report_body() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_max_batch() -> usize {
    64
}
fn one() -> u64 {
    1
}

impl Default for CheckinConfig {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            jitter: default_jitter(),
            timestamp_window: default_timestamp_window(),
            max_body: default_max_checkin_body(),
            max_traits: default_max_traits(),
            offline_after: None,
        }
    }
}

impl Default for FlushConfig {
    fn default() -> Self {
        Self {
            interval: default_flush_interval(),
            flushers: default_flushers(),
            batch_rows: default_batch_rows(),
        }
    }
}

impl Default for ReportsConfig {
    fn default() -> Self {
        Self {
            keep_runs: default_keep_runs(),
            max_body: default_max_report_body(),
        }
    }
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            max_batch: default_max_batch(),
        }
    }
}

impl SpokeConfig {
    /// Loads, resolves relative paths and checks values that types alone cannot.
    pub fn load(path: &Path) -> Result<Self, SpokeError> {
        let mut config: SpokeConfig = load_yaml(path)?;
        config.resolve_paths(path);
        config.validate(path)?;
        Ok(config)
    }

    fn resolve_paths(&mut self, file: &Path) {
        for p in [
            &mut self.data_dir,
            &mut self.policy_dir,
            &mut self.tls.ca_cert,
            &mut self.tls.cert,
            &mut self.tls.key,
        ] {
            *p = resolve(file, p);
        }
        if let Some(k) = &mut self.tls.ca_key {
            *k = resolve(file, k);
        }
        if let Some(k) = &mut self.bundle_signing_key {
            *k = resolve(file, k);
        }
    }

    fn validate(&self, file: &Path) -> Result<(), SpokeError> {
        let bad = |key: &str, why: String| {
            SpokeError::Common(vigo_common::Error::Config {
                file: file.to_path_buf(),
                key: key.to_string(),
                why,
            })
        };
        match (&self.hub, &self.bundle_signing_key) {
            (None, None) => {
                return Err(bad(
                    "bundle_signing_key",
                    "is required without a hub: a standalone spoke signs its bundles".into(),
                ));
            }
            (Some(_), Some(_)) => {
                return Err(bad(
                    "bundle_signing_key",
                    "must not be set on a spoke under a hub: the hub signs bundles; \
                     remove the setting and delete the key file from this machine"
                        .into(),
                ));
            }
            _ => {}
        }
        if self.checkin.interval < Duration::from_secs(1)
            || self.checkin.interval > Duration::from_secs(86_400)
        {
            return Err(bad("checkin.interval", "must be between 1s and 24h".into()));
        }
        if self.checkin.timestamp_window < Duration::from_secs(1)
            || self.checkin.timestamp_window > Duration::from_secs(86_400)
        {
            return Err(bad(
                "checkin.timestamp_window",
                "must be between 1s and 24h".into(),
            ));
        }
        if self.flush.interval < Duration::from_millis(100) {
            return Err(bad("flush.interval", "must be at least 100ms".into()));
        }
        if self.flush.flushers == 0 || self.flush.flushers > 64 {
            return Err(bad("flush.flushers", "must be between 1 and 64".into()));
        }
        if self.flush.batch_rows == 0 {
            return Err(bad("flush.batch_rows", "must be at least 1".into()));
        }
        if self.reports.keep_runs == 0 {
            return Err(bad("reports.keep_runs", "must be at least 1".into()));
        }
        if self.runtime.workers == 0 || self.runtime.workers > 256 {
            return Err(bad("runtime.workers", "must be between 1 and 256".into()));
        }
        if self.verify.max_batch == 0 || self.verify.max_batch > 1024 {
            return Err(bad("verify.max_batch", "must be between 1 and 1024".into()));
        }
        let shed = &self.shedding;
        if shed.max_in_flight == 0
            || shed.retry_after.is_zero()
            || shed.max_retry_after < shed.retry_after
            || shed.max_retry_after > Duration::from_secs(3600)
        {
            return Err(bad(
                "shedding",
                "max_in_flight must be at least 1, retry_after more than 0s, and \
                 max_retry_after between retry_after and 1h"
                    .into(),
            ));
        }
        if let Err((key, why)) = self.connections.check() {
            return Err(bad(key, why));
        }
        match &self.hub {
            None if self.tls.ca_key.is_none() => {
                return Err(bad(
                    "tls.ca_key",
                    "a standalone spoke signs envoy certificates: set tls.ca_key (or join a hub)"
                        .into(),
                ));
            }
            Some(hub) => {
                if hub.addresses.is_empty() {
                    return Err(bad("hub.addresses", "name at least one hub node".into()));
                }
                if !(1..=vigo_common::limits::MAX_SPOKE_WEIGHT).contains(&hub.weight) {
                    return Err(bad(
                        "hub.weight",
                        format!(
                            "must be between 1 and {}",
                            vigo_common::limits::MAX_SPOKE_WEIGHT
                        ),
                    ));
                }
                if !self.enrollment.tokens.is_empty() {
                    return Err(bad(
                        "enrollment.tokens",
                        "a spoke joined to a hub takes enrollments from the hub only; define tokens on the hub"
                            .into(),
                    ));
                }
            }
            None => {}
        }
        let mut names = BTreeSet::new();
        for (i, t) in self.enrollment.tokens.iter().enumerate() {
            let key = format!("enrollment.tokens[{i}]");
            if !names.insert(&t.name) {
                return Err(bad(&key, format!("token name {:?} used twice", t.name)));
            }
            if t.sha256.len() != 64 || hex::decode(&t.sha256).is_err() {
                return Err(bad(
                    &format!("{key}.sha256"),
                    "must be 64 hex digits (the SHA-256 of the token secret)".into(),
                ));
            }
            if t.uses == 0 {
                return Err(bad(&format!("{key}.uses"), "must be at least 1".into()));
            }
            if let Err(why) = vigo_common::hostname::Scope::new(&t.hostnames) {
                return Err(bad(&format!("{key}.hostnames"), why));
            }
        }
        Ok(())
    }

    pub fn advertise_address(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    pub fn offline_after(&self) -> Duration {
        self.checkin
            .offline_after
            .unwrap_or(self.checkin.interval * 2)
    }

    /// How the envoy port keeps connections: idle ones closed after two check-in
    /// intervals and 30s unless configured; 64 KiB windows unless configured.
    pub fn http2_limits(&self) -> vigo_common::net::Http2Limits {
        self.connections.http2_limits(
            self.checkin.interval * 2 + Duration::from_secs(30),
            64 << 10,
        )
    }

    pub fn jitter(&self) -> Duration {
        self.checkin.jitter.of(self.checkin.interval)
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("spoke.redb")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example states every default it shows: keep them in step.
    #[test]
    fn the_documented_example_loads_with_its_stated_defaults() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/spoke.example.yaml");
        let c = SpokeConfig::load(&example).expect("deploy/spoke.example.yaml loads");
        let defaults = SpokeConfig {
            connections: ConnectionsConfig::default(),
            ..c.clone()
        };
        assert_eq!(c.http2_limits(), defaults.http2_limits());
        assert_eq!(
            c.connections.accept_limits(),
            defaults.connections.accept_limits()
        );
        assert_eq!(
            c.connections.request_timeout,
            defaults.connections.request_timeout
        );
        assert_eq!(c.runtime.workers, RuntimeConfig::default().workers);
        let s = SheddingConfig::default();
        assert_eq!(
            (
                c.shedding.max_in_flight,
                c.shedding.max_queue_wait,
                c.shedding.retry_after,
                c.shedding.max_retry_after
            ),
            (
                s.max_in_flight,
                s.max_queue_wait,
                s.retry_after,
                s.max_retry_after
            )
        );
    }

    /// Loads `text` as a spoke.yaml in `dir`.
    fn load_text(dir: &Path, text: &str) -> Result<SpokeConfig, String> {
        let path = dir.join("spoke.yaml");
        std::fs::write(&path, text).unwrap();
        SpokeConfig::load(&path).map_err(|e| e.to_string())
    }

    /// A standalone spoke signs its bundles; a spoke under a hub must not hold the key.
    #[test]
    fn the_signing_key_belongs_to_standalone_spokes_only() {
        let dir = tempfile::tempdir().unwrap();
        let load = |text: &str| load_text(dir.path(), text);
        let tls = "tls: {ca_cert: ca.pem, ca_key: ca.key, cert: s.pem, key: s.key}\n";
        let hub = "hub: {addresses: ['127.0.0.1:7400'], spoke_id: a}\n";
        let key = "bundle_signing_key: bundle.key\n";
        let err = load(tls).unwrap_err();
        assert!(
            err.contains("bundle_signing_key") && err.contains("required without a hub"),
            "{err}"
        );
        let err = load(&format!("{tls}{hub}{key}")).unwrap_err();
        assert!(
            err.contains("must not be set on a spoke under a hub"),
            "{err}"
        );
        let standalone = load(&format!("{tls}{key}")).unwrap();
        assert_eq!(
            standalone.bundle_signing_key,
            Some(dir.path().join("bundle.key"))
        );
        assert!(
            load(&format!("{tls}{hub}"))
                .unwrap()
                .bundle_signing_key
                .is_none()
        );
    }

    #[test]
    fn a_spoke_runs_on_one_worker_unless_told_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let load = |text: &str| load_text(dir.path(), text);
        let base = "tls: {ca_cert: ca.pem, ca_key: ca.key, cert: s.pem, key: s.key}\nbundle_signing_key: b.key\n";
        assert_eq!(load(base).unwrap().runtime.workers, 1);
        assert_eq!(
            load(&format!("{base}runtime: {{workers: 4}}\n"))
                .unwrap()
                .runtime
                .workers,
            4
        );
        let err = load(&format!("{base}runtime: {{workers: 0}}\n")).unwrap_err();
        assert!(err.contains("runtime.workers"), "{err}");
    }
}
