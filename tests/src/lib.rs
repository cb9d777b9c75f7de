//! End-to-end harness: spokes with a real PKI, real redb files and real TLS on loopback,
//! run in-process or as child processes of the real binaries, and test envoys that
//! speak the real protocol.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::transport::Channel;
use vigo_common::pki::{PkiLayout, Role};
use vigo_common::policy::bundle::{VerifiedBundle, verify_delivery};
use vigo_common::signing::generate_key;
use vigo_common::traits::TraitMap;
use vigo_common::{EnvoyId, tls};
use vigo_envoy::client::{self, Identity, Sequencer};
use vigo_proto::v1 as pb;
use vigo_spoke::{Spoke, SpokeConfig};

pub mod cluster;
pub mod https;
pub mod raw;
pub mod webdriver;

pub use vigo_proto::v1;

/// Server roles a test client accepts when it talks to hubs and spokes alike (product
/// clients each name the one role they expect).
pub const ANY_SERVER: &[vigo_common::pki::Role] =
    &[vigo_common::pki::Role::Hub, vigo_common::pki::Role::Spoke];

/// A built binary of this workspace (`vigo-spoke`, `vigo-sim`, `vigo-hub`). `cargo test`
/// builds only the binaries of crates with integration tests; the others, and any a
/// narrower run left stale, are built here.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    // Missing, or older than a source file: a narrower `cargo test` left it stale.
    if built.is_none() || built < newest_source() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--workspace", "--bins"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the workspace binaries failed");
    }
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The newest modification time among the workspace's Rust sources and manifests.
fn newest_source() -> Option<std::time::SystemTime> {
    fn walk(dir: &Path, newest: &mut Option<std::time::SystemTime>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, newest);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("rs" | "toml" | "proto")
            ) && let Ok(t) = entry.metadata().and_then(|m| m.modified())
            {
                *newest = (*newest).max(Some(t));
            }
        }
    }
    let mut newest = None;
    for krate in ["proto", "common", "spoke", "envoy", "hub", "cli"] {
        walk(&repo_root().join(krate), &mut newest);
    }
    newest
}

/// A port free right now on loopback (for processes that must keep their port across
/// restarts). Taken below the kernel's ephemeral range (32768 up on Linux): a port from
/// that range can be handed to another test's outgoing connection between this check
/// and the server's bind. Each test process walks its own stretch of ports.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 211) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on loopback between {LOW} and {}", LOW + SPAN)
}

/// Token secrets the harness configures.
pub struct Tokens {
    /// 10,000 uses.
    pub fleet: String,
    /// One use.
    pub one_shot: String,
    /// May re-enroll known hostnames with new keys.
    pub rekey: String,
}

/// Everything a spoke needs on disk, in a temporary directory.
pub struct SpokeHome {
    pub dir: tempfile::TempDir,
    pub tokens: Tokens,
    pub port: u16,
}

pub struct HomeOptions {
    pub flush_interval: Duration,
    pub interval: Duration,
    pub allow_relay: bool,
    /// Top-level sections appended to the config as they are (YAML).
    pub extra: String,
    /// Lines added to the `connections:` section (each indented by two spaces).
    pub connections: String,
}

impl Default for HomeOptions {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_secs(1),
            interval: Duration::from_secs(60),
            allow_relay: false,
            extra: String::new(),
            connections: String::new(),
        }
    }
}

impl SpokeHome {
    pub fn new() -> Self {
        Self::with(HomeOptions::default())
    }

    pub fn with(options: HomeOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let layout = PkiLayout::new(dir.path().join("pki"));
        layout
            .init_standalone("spoke-test", &["localhost".into(), "127.0.0.1".into()])
            .expect("pki init");
        let ca = layout.load_ca().expect("load CA");
        layout
            .write_issued(
                "relay",
                &ca.issue_node(Role::Relay, "sim", &[]).expect("relay cert"),
            )
            .expect("write relay cert");
        copy_dir(
            &repo_root().join("deploy/policy"),
            &dir.path().join("policy"),
        );
        let tokens = Tokens {
            fleet: vigo_spoke::tokens::new_secret(),
            one_shot: vigo_spoke::tokens::new_secret(),
            rekey: vigo_spoke::tokens::new_secret(),
        };
        let entry = |name: &str, secret: &str, uses: u64, rekey: bool| {
            format!(
                "    - name: {name}\n      sha256: {}\n      uses: {uses}\n      allow_rekey: {rekey}\n",
                hex::encode(vigo_spoke::tokens::hash_secret(secret))
            )
        };
        let port = free_port();
        let config = format!(
            "name: spoke-test\nlisten: 127.0.0.1:{port}\nmetrics_listen: null\ndata_dir: data\npolicy_dir: policy\n\
             tls:\n  ca_cert: pki/ca.pem\n  ca_key: pki/ca.key\n  cert: pki/spoke.pem\n  key: pki/spoke.key\n  allow_relay_certificates: {}\n\
             bundle_signing_key: pki/bundle-signing.key\n\
             checkin:\n  interval: {}ms\n  timestamp_window: 30s\n\
             flush:\n  interval: {}ms\n  flushers: 2\n\
             connections:\n  first_request_timeout: 2s\n{}\
             reports:\n  keep_runs: 3\n\
             enrollment:\n  tokens:\n{}{}{}{}",
            options.allow_relay,
            options.interval.as_millis(),
            options.flush_interval.as_millis(),
            options.connections,
            entry("fleet", &tokens.fleet, 10_000, false),
            entry("one-shot", &tokens.one_shot, 1, false),
            entry("rekey", &tokens.rekey, 100, true),
            options.extra,
        );
        std::fs::write(dir.path().join("spoke.yaml"), config).expect("write config");
        Self { dir, tokens, port }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("spoke.yaml")
    }

    pub fn config(&self) -> SpokeConfig {
        SpokeConfig::load(&self.config_path()).expect("valid test config")
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.path("pki/ca.pem")).expect("ca.pem")
    }

    /// A spoke started in this process with one envoy enrolled as `hostname` that has
    /// checked in once (and so holds its bundle).
    pub async fn with_envoy(hostname: &str) -> (SpokeHome, Spoke, String, TestEnvoy) {
        init();
        let home = SpokeHome::new();
        let spoke = home.start().await;
        let addr = spoke.addr.to_string();
        let mut envoy = home.enroll(&addr, hostname).await;
        envoy.check_in().await.expect("first check-in");
        (home, spoke, addr, envoy)
    }

    /// Starts the spoke inside this test process.
    pub async fn start(&self) -> Spoke {
        Spoke::start(self.config(), None)
            .await
            .expect("spoke starts")
    }

    /// Starts the real `vigo-spoke` binary and waits until it serves.
    pub fn spawn(&self) -> SpokeProcess {
        let log = std::fs::File::create(self.path("spoke.log")).expect("log file");
        let child = Command::new(binary("vigo-spoke"))
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn vigo-spoke");
        let process = SpokeProcess {
            child,
            log: self.path("spoke.log"),
        };
        process.wait_for_log("spoke serving", Duration::from_secs(30));
        process
    }

    /// Replaces the whole policy tree with `files` (relative path → YAML).
    pub fn replace_policy(&self, files: &[(&str, String)]) {
        let dir = self.path("policy");
        std::fs::remove_dir_all(&dir).expect("remove policy");
        for (rel, text) in files {
            self.write_policy(rel, text);
        }
    }

    /// Replaces one file of the policy tree.
    pub fn write_policy(&self, rel: &str, text: &str) {
        let path = self.path("policy").join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("policy dir");
        std::fs::write(path, text).expect("write policy file");
    }

    /// An admin client of the spoke at `address`.
    pub fn admin(&self, address: &str) -> pb::spoke_admin_client::SpokeAdminClient<Channel> {
        let cert = std::fs::read_to_string(self.path("pki/admin.pem")).expect("admin.pem");
        let key = std::fs::read_to_string(self.path("pki/admin.key")).expect("admin.key");
        let config = tls::client_config(
            &self.ca_pem(),
            Some((&cert, &key)),
            &[vigo_common::pki::Role::Spoke],
        )
        .expect("admin tls");
        pb::spoke_admin_client::SpokeAdminClient::new(
            tls::channel(address, Arc::new(config), Duration::from_secs(5)).expect("channel"),
        )
    }

    /// Enrolls `hostname` with the fleet token.
    pub async fn enroll(&self, address: &str, hostname: &str) -> TestEnvoy {
        let (identity, _) = client::enroll(
            address,
            &self.ca_pem(),
            &self.tokens.fleet,
            hostname,
            generate_key(),
        )
        .await
        .expect("enrollment succeeds");
        TestEnvoy::new(identity, address)
    }

    /// A client certificate for an envoy id this spoke never enrolled.
    pub fn stranger(&self, address: &str) -> TestEnvoy {
        let layout = PkiLayout::new(self.path("pki"));
        let ca = layout.load_ca().expect("CA");
        let key = generate_key();
        let id = EnvoyId::random();
        let (der, tls_key_pem) = ca.certify_envoy(id, &key).expect("issue");
        TestEnvoy::new(
            Identity {
                envoy_id: id,
                hostname: "stranger".into(),
                key,
                tls_key_pem,
                cert_pem: vigo_common::pki::cert_der_to_pem(&der),
                ca_pem: self.ca_pem(),
                spoke_address: address.into(),
                bundle_keys: vec![],
            },
            address,
        )
    }
}

impl Default for SpokeHome {
    fn default() -> Self {
        Self::new()
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// Copies the files under `from` to `to`, directories included.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy file");
        }
    }
}

/// A `vigo-spoke` child process; killed (SIGKILL) when dropped.
pub struct SpokeProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl SpokeProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{needle:?} not logged within {timeout:?}:\n{}",
            self.log_text()
        );
    }

    /// Waits until `needle` appears at least `count` times.
    pub fn wait_for_log_count(&self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().matches(needle).count() >= count {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{needle:?} not logged {count} times within {timeout:?}:\n{}",
            self.log_text()
        );
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// SIGKILL: no shutdown, no final flush.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.child.wait().expect("wait for vigo-spoke")
    }
}

impl Drop for SpokeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An enrolled envoy that checks in like the real agent, with knobs for misbehaving.
pub struct TestEnvoy {
    pub identity: Identity,
    pub gateway:
        pb::envoy_gateway_client::EnvoyGatewayClient<vigo_common::tls::direct::DirectChannel>,
    pub sequence: Sequencer,
    pub traits: TraitMap,
    pub bundle: Option<VerifiedBundle>,
    pub modules: HashMap<[u8; 32], Bytes>,
    /// Whether the spoke holds our traits.
    pub traits_known: bool,
}

impl TestEnvoy {
    pub fn new(identity: Identity, address: &str) -> Self {
        let gateway = client::gateway(address, identity.tls_config().expect("envoy tls"))
            .expect("gateway client");
        let traits = BTreeMap::from([
            ("hostname".to_string(), identity.hostname.clone()),
            ("os".to_string(), "debian".to_string()),
        ]);
        Self {
            identity,
            gateway,
            sequence: Sequencer::default(),
            traits,
            bundle: None,
            modules: HashMap::new(),
            traits_known: false,
        }
    }

    pub fn id(&self) -> EnvoyId {
        self.identity.envoy_id
    }

    pub fn fingerprint(&self) -> Option<[u8; 32]> {
        self.bundle.as_ref().map(|b| b.fingerprint)
    }

    /// A check-in body with a fresh header (id, next sequence, now) and our traits hash;
    /// tests change fields to misbehave.
    pub fn body(&mut self) -> pb::CheckInBody {
        pb::CheckInBody {
            envoy_id: self.identity.envoy_id.get(),
            sequence: self.sequence.advance(),
            timestamp_ms: vigo_common::time::now_ms(),
            traits_hash: vigo_common::traits::traits_hash(&self.traits)
                .to_vec()
                .into(),
            ..Default::default()
        }
    }

    /// Signs `body` with this envoy's key for `domain`.
    pub fn seal(
        &self,
        domain: vigo_common::signing::Domain,
        body: &pb::CheckInBody,
    ) -> pb::SignedRequest {
        client::seal(&self.identity.key, domain, body)
    }

    /// A correctly signed check-in request (not sent).
    pub fn check_in_request(&mut self) -> pb::SignedRequest {
        let fp = self.fingerprint();
        client::check_in_request(
            self.identity.envoy_id,
            &self.identity.key,
            self.sequence.advance(),
            fp.as_ref(),
            &self.traits,
            !self.traits_known,
        )
    }

    /// Sends a raw request over this envoy's connection.
    pub async fn send(
        &mut self,
        request: pb::SignedRequest,
    ) -> Result<pb::CheckInResponse, tonic::Status> {
        client::send_check_in(&mut self.gateway, request).await
    }

    /// Checks in; a bundle in the answer is verified and adopted.
    pub async fn check_in(&mut self) -> Result<pb::CheckInResponse, tonic::Status> {
        let request = self.check_in_request();
        let response = self.send(request).await?;
        self.traits_known = !response.send_traits;
        if let Some(pb::check_in_response::Answer::Bundle(delivery)) = &response.answer {
            let verified = verify_delivery(delivery, &self.identity.bundle_keys, |h| {
                self.modules.get(h).cloned()
            })
            .expect("the spoke's bundle verifies");
            if let Some(keys) = &verified.trusted_keys {
                self.identity.bundle_keys = keys.clone();
            }
            for (h, body) in &verified.modules {
                self.modules.insert(*h, body.clone());
            }
            self.bundle = Some(verified);
        }
        Ok(response)
    }

    /// Reports a run of the current bundle with the given outcomes.
    pub async fn report(
        &mut self,
        run_id: u64,
        outcomes: &[pb::Outcome],
    ) -> Result<pb::ReportRunResponse, tonic::Status> {
        let report = pb::RunReportBody {
            run_id,
            bundle_fingerprint: self
                .fingerprint()
                .map(|f| Bytes::copy_from_slice(&f))
                .unwrap_or_default(),
            outcomes: outcomes
                .iter()
                .enumerate()
                .map(|(i, o)| pb::ResourceOutcome {
                    resource_id: format!("r/{i}"),
                    outcome: *o as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let request = client::report_request(
            self.identity.envoy_id,
            &self.identity.key,
            self.sequence.advance(),
            report,
        );
        client::send_report(&mut self.gateway, request).await
    }
}

/// Retries `f` until it succeeds or `timeout` passes (a restarted server coming up).
pub async fn eventually<T, E: std::fmt::Debug, F, Fut>(timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("still failing after {timeout:?}: {e:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Installs the ring provider once per test process.
pub fn init() {
    vigo_common::tls::install_default_provider();
}
