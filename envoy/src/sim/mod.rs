//! The fleet simulator: thousands of envoys speaking the real protocol from one process.
//!
//! Every envoy has its own key and certificate, signs every request, checks in on its
//! interval with jitter, verifies the bundles it receives and reports a run after each.
//! By default each envoy has its own TLS connection, as real agents do.

mod identities;
mod stats;
mod tasks;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use vigo_common::config::Percent;
use vigo_common::policy::bundle::verify_delivery;
use vigo_common::procfs;
use vigo_common::time::now_ms;
use vigo_common::tls::direct::DirectChannel;
use vigo_common::traits::TraitMap;
use vigo_common::{fsutil, tls};
use vigo_proto::v1 as pb;

use crate::client::{self, ClientError, Identity};
pub use identities::IdentityFile;
pub use stats::{Stats, Summary};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "vigo-sim",
    version,
    about = "Drive N simulated envoys against a spoke through the real protocol",
    long_about = "Drive N simulated envoys against a spoke through the real protocol: \
enrollment, Ed25519-signed check-ins over mutual TLS, bundle verification and run reports.\n\n\
Identities are kept in --identities so later runs skip enrollment. The run ramps envoys up \
over --ramp, then measures the steady state until --duration: check-ins/s, latency \
percentiles and, with --spoke-pid, the spoke's CPU per check-in and memory."
)]
pub struct SimArgs {
    /// The spoke, host:port (without --hub: every envoy checks in here).
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub target: String,
    /// Enroll through this hub node instead; each envoy then checks in at the spoke the
    /// hub pinned it to.
    #[arg(long)]
    pub hub: Option<String>,
    /// CA certificate of the cluster (PEM).
    #[arg(long, value_name = "FILE")]
    pub ca: PathBuf,
    /// Enrollment token for envoys not yet enrolled.
    #[arg(long, env = "VIGO_TOKEN", default_value = "")]
    pub token: String,
    /// File holding the enrollment token (instead of --token).
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    pub envoys: usize,
    /// Check-in interval of every envoy.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub interval: Duration,
    /// Random spread around the interval.
    #[arg(long, value_parser = parse_percent, default_value = "10%")]
    pub jitter: Percent,
    /// Total run time, ramp included.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub duration: Duration,
    /// Envoys start spread over this time; measurement starts after it (and --settle).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub ramp: Duration,
    /// Measurement starts this long after the ramp (time for the last connections to
    /// finish their handshakes, or for a bench to change the spoke's conditions).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub settle: Duration,
    /// HTTP/2 connections the envoys share (default: one per envoy). Fewer connections
    /// than envoys needs --relay-cert/--relay-key and a spoke that allows relays.
    #[arg(long)]
    pub connections: Option<usize>,
    #[arg(long, value_name = "FILE", requires = "relay_key")]
    pub relay_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "relay_cert")]
    pub relay_key: Option<PathBuf>,
    /// Sample this process's CPU and memory (the spoke) from /proc.
    #[arg(long)]
    pub spoke_pid: Option<u32>,
    #[arg(long, value_name = "FILE", default_value = "vigo-sim-identities.json")]
    pub identities: PathBuf,
    /// Ignore stored identities and enroll every envoy anew.
    #[arg(long)]
    pub fresh: bool,
    #[arg(long, default_value = "sim-")]
    pub hostname_prefix: String,
    /// Connect each envoy from its own loopback address (127.1.0.0 and up; the spoke
    /// must listen on loopback): the spoke then sees a source per envoy, as from a real
    /// fleet, instead of one source holding every connection (its per-source handshake
    /// limit would apply to the whole simulated fleet).
    #[arg(long)]
    pub loopback_sources: bool,
    /// Worker threads. One drives ~50,000 envoys on a 60 s interval; more only pay off
    /// at saturation (each check-in then wakes several threads at low rates).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 32)]
    pub enroll_concurrency: usize,
    /// Seconds between progress lines (0: none).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub progress: Duration,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Append one JSON line per --timeline-every to FILE: check-ins answered, bundles,
    /// reports, shed, retried and failed attempts by status, and latency buckets — the
    /// lines of several simulators add up (deploy/bench/fleet.sh cuts them into phases).
    #[arg(long, value_name = "FILE")]
    pub timeline: Option<PathBuf>,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub timeline_every: Duration,
    /// How long a simulated envoy takes to run a task it is sent (it runs nothing).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    pub task_run_time: Duration,
    /// Share of tasks a simulated envoy answers "failed", 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    pub task_fail: f64,
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: a share from 0 to 1")),
    }
}

fn parse_percent(s: &str) -> Result<Percent, String> {
    let v: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage"))?;
    if (0.0..=100.0).contains(&v) {
        Ok(Percent(v))
    } else {
        Err(format!("{v}% is outside 0..100%"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Common(#[from] vigo_common::Error),
    #[error("{0}")]
    Usage(String),
}

/// Modules the simulated envoys hold, shared (real envoys each keep their own).
type ModuleCache = Arc<Mutex<HashMap<[u8; 32], Bytes>>>;

/// Runs the simulation and returns its summary.
pub async fn run(args: SimArgs) -> Result<Summary, SimError> {
    procfs::raise_fd_limit();
    let ca_pem = fsutil::read_to_string(&args.ca)?;
    let connections = args
        .connections
        .unwrap_or(args.envoys)
        .clamp(1, args.envoys.max(1));
    let shared = connections < args.envoys;
    if shared && args.relay_cert.is_none() {
        return Err(SimError::Usage(
            "--connections below --envoys needs --relay-cert and --relay-key".into(),
        ));
    }

    let enroll_started = Instant::now();
    let (identities, enrolled_now) = ensure_enrolled(&args, &ca_pem).await?;
    let enroll_seconds = enroll_started.elapsed().as_secs_f64();
    if enrolled_now > 0 {
        eprintln!("enrolled {enrolled_now} envoys in {enroll_seconds:.1}s");
    }

    let clients = build_clients(&args, &ca_pem, &identities, connections)?;
    let stats = Arc::new(Stats::default());
    let task_stats = Arc::new(tasks::TaskStats::default());
    let behaviour = tasks::TaskBehaviour {
        run_time: args.task_run_time,
        fail: args.task_fail,
    };
    let modules: ModuleCache = Arc::default();
    let started = Instant::now();
    let stop_at = started + args.duration;
    let measure_from = started + (args.ramp + args.settle).min(args.duration);
    let mut tasks = JoinSet::new();
    for (i, identity) in identities.into_iter().enumerate() {
        let client = clients[i % clients.len()].clone();
        let offset = args.ramp.mul_f64(i as f64 / args.envoys.max(1) as f64);
        let plan = Plan {
            start: started + offset,
            stop_at,
            interval: args.interval,
            jitter: args.jitter.of(args.interval),
        };
        tasks.spawn(envoy(
            identity,
            client,
            plan,
            Shared {
                stats: stats.clone(),
                modules: modules.clone(),
                tasks: task_stats.clone(),
                behaviour,
            },
        ));
    }

    let progress = spawn_progress(stats.clone(), args.progress, started, args.spoke_pid);
    let timeline = match &args.timeline {
        Some(path) => Some(spawn_timeline(stats.clone(), path, args.timeline_every)?),
        None => None,
    };
    tokio::time::sleep_until(measure_from.into()).await;
    let window_start = Instant::now();
    let spoke_cpu_start = args.spoke_pid.and_then(procfs::cpu_micros);
    let sim_cpu_start = procfs::cpu_micros(std::process::id());
    stats.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep_until(stop_at.into()).await;
    stats.measuring.store(false, Ordering::Relaxed);
    let window = window_start.elapsed().as_secs_f64();
    let spoke_cpu_end = args.spoke_pid.and_then(procfs::cpu_micros);
    let sim_cpu_end = procfs::cpu_micros(std::process::id());
    let spoke_rss = args.spoke_pid.and_then(procfs::rss_kib);
    let sim_rss = procfs::rss_kib(std::process::id());
    if let Some(p) = progress {
        p.abort();
    }
    tasks.shutdown().await;
    if let Some(t) = timeline {
        t.abort();
        let _ = t.await;
    }

    let window_checkins = stats.window_ok.load(Ordering::Relaxed);
    let per_checkin = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if window_checkins > 0 => {
            Some(b.saturating_sub(a) as f64 / window_checkins as f64)
        }
        _ => None,
    };
    let (p50, p99, p999) = stats.percentiles();
    Ok(Summary {
        envoys: args.envoys,
        connections,
        interval_s: args.interval.as_secs_f64(),
        enrolled_now,
        enroll_seconds,
        checkins_sent: stats.sent.load(Ordering::Relaxed),
        checkins_ok: stats.ok(),
        no_change: stats.no_change.load(Ordering::Relaxed),
        bundles: stats.bundles.load(Ordering::Relaxed),
        reports: stats.reports.load(Ordering::Relaxed),
        failed_reports: stats.failed_reports.load(Ordering::Relaxed),
        failed: stats.failures(),
        shed: stats.shed.load(Ordering::Relaxed),
        recovered_after_shed: stats.recovered.load(Ordering::Relaxed),
        retried: stats.retried.load(Ordering::Relaxed),
        window_seconds: window,
        window_checkins,
        checkins_per_second: window_checkins as f64 / window.max(1e-9),
        latency_p50_us: p50,
        latency_p99_us: p99,
        latency_p999_us: p999,
        spoke_cpu_us_per_checkin: per_checkin(spoke_cpu_start, spoke_cpu_end),
        spoke_cpu_percent: match (spoke_cpu_start, spoke_cpu_end) {
            (Some(a), Some(b)) => Some((b - a) as f64 / (window * 1e6) * 100.0),
            _ => None,
        },
        spoke_rss_kib: spoke_rss,
        spoke_rss_per_envoy_bytes: spoke_rss
            .map(|kib| kib as f64 * 1024.0 / args.envoys.max(1) as f64),
        sim_cpu_us_per_checkin: per_checkin(sim_cpu_start, sim_cpu_end),
        sim_rss_per_envoy_bytes: sim_rss.map(|kib| kib as f64 * 1024.0 / args.envoys.max(1) as f64),
        streams_opened: task_stats.streams_opened.load(Ordering::Relaxed),
        tasks_received: task_stats.received.load(Ordering::Relaxed),
        task_results_sent: task_stats.results_sent.load(Ordering::Relaxed),
        task_results_failed: task_stats.results_failed.load(Ordering::Relaxed),
    })
}

/// Loads stored identities and enrolls whatever is missing up to `--envoys`.
async fn ensure_enrolled(args: &SimArgs, ca_pem: &str) -> Result<(Vec<Identity>, usize), SimError> {
    let mut file = if args.fresh {
        IdentityFile::default()
    } else {
        IdentityFile::load(&args.identities, ca_pem)
    };
    file.ca_sha256 = identities::ca_fingerprint(ca_pem);
    let mut have = file.identities(ca_pem);
    have.truncate(args.envoys);
    if !file.envoys.is_empty() && have.len() == args.envoys {
        return Ok((have, 0));
    }
    let token = match &args.token_file {
        Some(path) => std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(|e| SimError::Usage(format!("--token-file {}: {e}", path.display())))?,
        None => args.token.clone(),
    };
    if token.is_empty() {
        return Err(SimError::Usage(format!(
            "{} envoys need enrolling: pass --token or --token-file",
            args.envoys - have.len()
        )));
    }
    // A few shared connections carry the enrollments (they need no client certificate).
    let tls_config = Arc::new(tls::client_config(ca_pem, None, client::ENROLL_AT)?);
    let enroll_at = args.hub.as_deref().unwrap_or(&args.target);
    let channels: Vec<Channel> = (0..4)
        .map(|_| tls::channel(enroll_at, tls_config.clone(), client::CONNECT_TIMEOUT))
        .collect::<Result<_, _>>()?;
    let suffix_base = file.envoys.len();
    let missing = args.envoys - have.len();
    let mut tasks = JoinSet::new();
    let mut next = 0;
    let mut enrolled = Vec::with_capacity(missing);
    let stamp = format!("{:x}", now_ms() % 0xfffff);
    while enrolled.len() < missing {
        while next < missing && tasks.len() < args.enroll_concurrency.max(1) {
            let channel = channels[next % channels.len()].clone();
            let hostname = format!("{}{stamp}-{:06}", args.hostname_prefix, suffix_base + next);
            let (ca, token) = (ca_pem.to_string(), token.clone());
            tasks.spawn(async move {
                let key = vigo_common::signing::generate_key();
                client::enroll_over(channel, &ca, &token, &hostname, key).await
            });
            next += 1;
        }
        match tasks.join_next().await {
            Some(Ok(Ok((identity, _)))) => enrolled.push(identity),
            Some(Ok(Err(e))) => {
                // Keep what did enroll for the next run.
                for id in &enrolled {
                    file.push(id);
                }
                let _ = file.save(&args.identities);
                return Err(e.into());
            }
            Some(Err(join)) => return Err(SimError::Usage(format!("enrollment task: {join}"))),
            None => break,
        }
    }
    for id in &enrolled {
        file.push(id);
    }
    file.save(&args.identities)?;
    let count = enrolled.len();
    have.extend(enrolled);
    Ok((have, count))
}

type Gateway = pb::envoy_gateway_client::EnvoyGatewayClient<DirectChannel>;

/// One client per connection: each envoy's own, or `connections` relay connections.
fn build_clients(
    args: &SimArgs,
    ca_pem: &str,
    identities: &[Identity],
    connections: usize,
) -> Result<Vec<Gateway>, SimError> {
    if connections < identities.len() {
        let cert =
            fsutil::read_to_string(args.relay_cert.as_deref().unwrap_or_else(|| "".as_ref()))?;
        let key = fsutil::read_to_string(args.relay_key.as_deref().unwrap_or_else(|| "".as_ref()))?;
        let config = Arc::new(tls::client_config(
            ca_pem,
            Some((&cert, &key)),
            &[vigo_common::pki::Role::Spoke],
        )?);
        return (0..connections)
            .map(|_| Ok(client::gateway_direct(&args.target, config.clone(), None)?))
            .collect();
    }
    // One server check for all: the envoys trust the same CA (each still presents its
    // own certificate and keeps its own sessions).
    let verifier = tls::server_verifier(ca_pem, &[vigo_common::pki::Role::Spoke])?;
    identities
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let spoke = if args.hub.is_some() {
                &id.spoke_address
            } else {
                &args.target
            };
            let tls = id.tls_config_verified_by(verifier.clone())?;
            let source = args.loopback_sources.then(|| loopback_source(i));
            Ok(client::gateway_direct(spoke, tls, source)?)
        })
        .collect()
}

/// The loopback address envoy `i` connects from: 127.1.0.0, 127.1.0.1, … (a /8 of
/// loopback gives 16 million).
fn loopback_source(i: usize) -> std::net::IpAddr {
    let n = 0x0001_0000 + i as u32;
    std::net::Ipv4Addr::new(127, (n >> 16) as u8, (n >> 8) as u8, n as u8).into()
}

#[derive(Clone, Copy)]
struct Plan {
    start: Instant,
    stop_at: Instant,
    interval: Duration,
    jitter: Duration,
}

impl Plan {
    fn next_after(&self, at: Instant) -> Instant {
        let spread = self.jitter.as_secs_f64();
        let offset = if spread > 0.0 {
            (rand::random::<f64>() * 2.0 - 1.0) * spread
        } else {
            0.0
        };
        at + Duration::from_secs_f64((self.interval.as_secs_f64() + offset).max(0.001))
    }
}

fn sim_traits(identity: &Identity) -> TraitMap {
    let n = identity.envoy_id.get();
    TraitMap::from([
        ("hostname".into(), identity.hostname.clone()),
        ("os".into(), "debian".into()),
        ("os_version".into(), "12".into()),
        ("kernel".into(), "6.1.0-sim".into()),
        ("arch".into(), "x86_64".into()),
        ("cpus".into(), (2 + n % 7).to_string()),
        ("memory_mb".into(), (2048 * (1 + n % 8)).to_string()),
        (
            "ipv4".into(),
            format!("10.{}.{}.{}", (n >> 16) as u8, (n >> 8) as u8, n as u8),
        ),
    ])
}

/// One simulated envoy: check in on the plan, apply (verify) bundles, report runs.
/// What every simulated envoy shares.
struct Shared {
    stats: Arc<Stats>,
    modules: ModuleCache,
    tasks: Arc<tasks::TaskStats>,
    behaviour: tasks::TaskBehaviour,
}

async fn envoy(identity: Identity, mut gateway: Gateway, plan: Plan, shared: Shared) {
    let Shared {
        stats,
        modules,
        tasks: task_stats,
        behaviour,
    } = shared;
    let identity = Arc::new(identity);
    let traits = sim_traits(&identity);
    let seq: tasks::SharedSequence = Arc::default();
    let mut stream = tasks::Stream::default();
    let mut fingerprint: Option<[u8; 32]> = None;
    let mut traits_known = false;
    let mut connected = false;
    let mut was_shed = false;
    let mut next = plan.start;
    // Retries of the check-in under way: one that fails for a passing reason is tried
    // again until the next one is due. (Latencies are of answered attempts.)
    let mut retries = 0u32;
    loop {
        if next >= plan.stop_at {
            return;
        }
        tokio::time::sleep_until(next.into()).await;
        let request = client::check_in_request(
            identity.envoy_id,
            &identity.key,
            tasks::next(&seq),
            fingerprint.as_ref(),
            &traits,
            !traits_known,
        );
        stats.sent.fetch_add(1, Ordering::Relaxed);
        let sent_at = Instant::now();
        match client::send_check_in(&mut gateway, request).await {
            Ok(response) => {
                if !connected {
                    connected = true;
                    stats.connected.fetch_add(1, Ordering::Relaxed);
                }
                if std::mem::take(&mut was_shed) {
                    stats.recovered.fetch_add(1, Ordering::Relaxed);
                }
                retries = 0;
                traits_known = !response.send_traits;
                if response.open_stream {
                    stream
                        .open(&identity, &gateway, &seq, behaviour, &task_stats)
                        .await;
                }
                let bundle = matches!(
                    response.answer,
                    Some(pb::check_in_response::Answer::Bundle(_))
                );
                stats.answered(sent_at.elapsed(), bundle);
                if let Some(pb::check_in_response::Answer::Bundle(delivery)) = response.answer {
                    match apply(&identity, &delivery, &modules, fingerprint) {
                        Ok((fp, report)) => {
                            fingerprint = Some(fp);
                            // Signed anew for every attempt: a shed report is sent again.
                            let mut patience = client::Patience::default();
                            let sent = loop {
                                let request = client::report_request(
                                    identity.envoy_id,
                                    &identity.key,
                                    tasks::next(&seq),
                                    report.clone(),
                                );
                                match client::send_report(&mut gateway, request).await {
                                    Err(s) => match patience.wait_after(&s) {
                                        Some(wait) => tokio::time::sleep(wait).await,
                                        None => break Err(s),
                                    },
                                    done => break done,
                                }
                            };
                            match sent {
                                Ok(_) => stats.reported(),
                                Err(_) => {
                                    stats.failed_reports.fetch_add(1, Ordering::Relaxed);
                                }
                            };
                        }
                        Err(e) => stats.failed(&format!("bundle refused: {e}")),
                    }
                }
            }
            Err(status) => {
                if let Some(hint) = vigo_common::net::shedding::retry_after(&status) {
                    // Shed before any work: come back after the hint, not a whole
                    // interval later.
                    stats.shed();
                    was_shed = true;
                    next = Instant::now() + vigo_common::net::shedding::jittered(hint);
                    continue;
                }
                let due = plan.next_after(next);
                let retry_at = Instant::now() + retry_wait(retries);
                if passing(&status) && retry_at < due {
                    stats.retried(&failure(&status));
                    retries += 1;
                    next = retry_at;
                    continue;
                }
                stats.failed(&failure(&status));
                retries = 0;
            }
        }
        next = plan.next_after(next).max(Instant::now());
    }
}

/// Failures a real envoy rides out by trying again: the spoke restarting or unreachable,
/// a connection reset, a deadline missed. Refusals (bad request, revoked, unknown envoy)
/// are not retried.
fn passing(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Cancelled
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Aborted
    )
}

/// Doubling waits from 1 s, jittered ±50 %, so the envoys of a restarted spoke do not
/// come back as one herd.
fn retry_wait(retries: u32) -> Duration {
    let base = Duration::from_secs(1 << retries.min(6));
    base.mul_f64(0.5 + rand::random::<f64>())
}

/// A failure as the summary counts it: the code and the start of the message (which
/// tells a timeout from a reset connection).
fn failure(status: &tonic::Status) -> String {
    let message: String = vigo_common::net::status_chain(status)
        .chars()
        .take(96)
        .collect();
    format!("{:?}: {message}", status.code())
}

/// Verifies a bundle as an envoy would and builds the report of its (simulated) run,
/// as a converged machine would run it: a bundle new to the envoy changes its
/// resources; the bundle it already holds (sent again by a force-push) changes nothing.
fn apply(
    identity: &Identity,
    delivery: &pb::BundleDelivery,
    modules: &ModuleCache,
    held: Option<[u8; 32]>,
) -> Result<([u8; 32], pb::RunReportBody), vigo_common::policy::bundle::BundleError> {
    let verified = {
        let cache = modules.lock().unwrap_or_else(|p| p.into_inner());
        verify_delivery(delivery, &identity.bundle_keys, |h| cache.get(h).cloned())?
    };
    {
        let mut cache = modules.lock().unwrap_or_else(|p| p.into_inner());
        for (hash, body) in &verified.modules {
            cache.entry(*hash).or_insert_with(|| body.clone());
        }
    }
    let started_at_ms = now_ms();
    let outcome = if held == Some(verified.fingerprint) {
        pb::Outcome::Ok
    } else {
        pb::Outcome::Changed
    };
    let outcomes = verified
        .decode_modules()?
        .into_iter()
        .flat_map(|m| m.resources)
        .map(|r| pb::ResourceOutcome {
            resource_id: r.id,
            outcome: outcome as i32,
            message: "simulated".into(),
            duration_ms: 1,
        })
        .collect();
    Ok((
        verified.fingerprint,
        pb::RunReportBody {
            run_id: started_at_ms.max(1),
            bundle_fingerprint: Bytes::copy_from_slice(&verified.fingerprint),
            dry_run: false,
            started_at_ms,
            duration_ms: 1,
            outcomes,
            ..Default::default()
        },
    ))
}

/// Appends one line of what the envoys saw to `path` every `every`.
fn spawn_timeline(
    stats: Arc<Stats>,
    path: &std::path::Path,
    every: Duration,
) -> Result<tokio::task::JoinHandle<()>, SimError> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| SimError::Usage(format!("--timeline {}: {e}", path.display())))?;
    let every = every.max(Duration::from_millis(100));
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let line = serde_json::to_string(&stats.take_period()).unwrap_or_default();
            if writeln!(file, "{line}").is_err() {
                return;
            }
        }
    }))
}

fn spawn_progress(
    stats: Arc<Stats>,
    every: Duration,
    started: Instant,
    spoke_pid: Option<u32>,
) -> Option<tokio::task::JoinHandle<()>> {
    if every.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval_at((started + every).into(), every);
        let mut last_ok = 0;
        let mut last_cpu = spoke_pid.and_then(procfs::cpu_micros);
        loop {
            tick.tick().await;
            let ok = stats.ok();
            let cpu = spoke_pid.and_then(procfs::cpu_micros);
            let spoke = match (last_cpu, cpu) {
                (Some(a), Some(b)) => format!(
                    " spoke cpu {:.0}%",
                    (b - a) as f64 / every.as_secs_f64() / 1e4
                ),
                _ => String::new(),
            };
            let (p50, p99, _) = stats.percentiles();
            eprintln!(
                "[{:>5.0}s] connected {} check-ins {} ({:.0}/s) failed {} p50 {} µs p99 {} µs{}",
                started.elapsed().as_secs_f64(),
                stats.connected.load(Ordering::Relaxed),
                ok,
                (ok - last_ok) as f64 / every.as_secs_f64(),
                stats.failed_total(),
                p50,
                p99,
                spoke
            );
            last_ok = ok;
            last_cpu = cpu;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigo_common::policy::bundle::{Seal, SignedBundle};
    use vigo_common::{EnvoyId, signing};

    #[test]
    fn every_envoy_has_its_own_loopback_source() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(loopback_source(0), ip("127.1.0.0"));
        assert_eq!(loopback_source(257), ip("127.1.1.1"));
        assert_eq!(loopback_source(65_536), ip("127.2.0.0"));
        let all: std::collections::HashSet<_> = (0..100_000).map(loopback_source).collect();
        assert_eq!(all.len(), 100_000);
    }

    /// The simulated machine converges: its first run of a bundle changes things, a run
    /// of the same bundle again (a force-push) changes nothing, so it never shows as
    /// relapsed.
    #[test]
    fn a_bundle_sent_again_changes_nothing() {
        let tree = std::collections::BTreeMap::from([
            (
                std::path::PathBuf::from("hostcrates.yaml"),
                "hostcrates:\n  - {name: all, match: '*', roles: [r]}\n".to_string(),
            ),
            ("roles/r.yaml".into(), "configcrates: [c]\n".to_string()),
            (
                "configcrates/c.yaml".into(),
                "resources:\n  - {id: f, type: file, path: /tmp/x, content: x}\n".to_string(),
            ),
        ]);
        let compiled = vigo_common::policy::validate(&tree).unwrap();
        let key = signing::generate_key();
        let seal = Seal::own(compiled.version, 1, &key);
        let delivery = SignedBundle::sign(&compiled.hostcrates[0], &seal, &key).delivery(|_| false);
        let (ca, _) = vigo_common::pki::CertAuthority::create("t").unwrap();
        let id = EnvoyId::new(1).unwrap();
        let envoy_key = signing::generate_key();
        let (cert, tls_key_pem) = ca.certify_envoy(id, &envoy_key).unwrap();
        let identity = Identity {
            envoy_id: id,
            hostname: "h".into(),
            key: envoy_key,
            tls_key_pem,
            cert_pem: vigo_common::pki::cert_der_to_pem(&cert),
            ca_pem: ca.cert_pem().into(),
            spoke_address: "127.0.0.1:1".into(),
            bundle_keys: vec![key.verifying_key()],
        };
        let modules = ModuleCache::default();
        let outcomes = |held| {
            let (fp, report) = apply(&identity, &delivery, &modules, held).unwrap();
            (
                fp,
                report
                    .outcomes
                    .iter()
                    .map(|o| o.outcome)
                    .collect::<Vec<_>>(),
            )
        };
        let (fp, first) = outcomes(None);
        assert_eq!(first, [pb::Outcome::Changed as i32]);
        let (_, again) = outcomes(Some(fp));
        assert_eq!(again, [pb::Outcome::Ok as i32]);
    }
}
