//! Putting a spoke together: rehydrate, serve, sweep, flush, and shut down cleanly.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use vigo_common::net::health::Health;
use vigo_common::net::{Guarded, Serving, SheddingLimits, serve_grpc};
use vigo_common::pki::CertAuthority;
use vigo_common::tls::{self, ClientAuth};
use vigo_common::{EnvoyId, fsutil, signing};
use vigo_proto::v1 as pb;

use crate::admin::{Admin, AdminService};
use crate::admission;
use crate::compliance::Compliance;
use crate::config::SpokeConfig;
use crate::enroll::{Enroller, EnrollmentService, Registry};
use crate::error::SpokeError;
use crate::fleet::{EnvoyKey, EnvoyRecord, EnvoyState, FleetIndex};
use crate::flusher::{Flusher, Flushers};
use crate::forwards::Forwards;
use crate::gateway::{Gateway, GatewayService, GatewaySettings, Reach};
use crate::hub_link::Link;
use crate::policy_cache::{PolicyCache, SwapObserver};
use crate::policy_feed;
use crate::revocations::Revocations;
use crate::store::{Loaded, Store};
use crate::streams::Streams;
use crate::tokens::TokenBook;
use crate::traits_store::{self, TraitsStore};
use crate::verifier::BatchVerifier;

/// How long shutdown waits for in-flight requests before closing connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A running spoke.
pub struct Spoke {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub fleet: Arc<FleetIndex>,
    pub policy: Arc<PolicyCache>,
    streams: Arc<Streams>,
    serving: Option<Serving>,
    sweeper: JoinHandle<()>,
    hub_link: Option<JoinHandle<()>>,
    flusher: Arc<Flusher>,
    flushers: Option<Flushers>,
    store: Option<Store>,
    writer: Option<thread::JoinHandle<()>>,
    health: Health,
}

/// The gRPC services of the spoke port, as the health service names them.
const SPOKE_SERVICES: &[&str] = &[
    pb::envoy_gateway_server::SERVICE_NAME,
    pb::enrollment_server::SERVICE_NAME,
    pb::spoke_admin_server::SERVICE_NAME,
];

/// Ready (SERVING) once the store is open and the policy in force, which is at start
/// for a standalone spoke; a spoke under a hub is ready once its first heartbeat has
/// brought the hub's revocations (and the version the hub wants served).
async fn report_ready(health: Health, under_hub: Option<tokio::sync::watch::Receiver<bool>>) {
    if let Some(mut synced) = under_hub
        && synced.wait_for(|s| *s).await.is_err()
    {
        return;
    }
    health.set(true).await;
    info!("ready");
}

/// How long a spoke that holds envoys waits at start-up for the hub's revocations.
const REVOCATION_SYNC: Duration = Duration::from_secs(10);

/// A spoke with envoys serves only once it holds the cluster's revocations (its data may
/// be an old copy that predates some): it waits for its first catch-up with the hub, up
/// to [`REVOCATION_SYNC`], then serves with what it has.
async fn wait_for_revocations(mut synced: tokio::sync::watch::Receiver<bool>) {
    let started = std::time::Instant::now();
    match tokio::time::timeout(REVOCATION_SYNC, synced.wait_for(|s| *s)).await {
        Ok(Ok(_)) => info!(elapsed = ?started.elapsed(), "revocations caught up with the hub"),
        _ => tracing::warn!(
            waited = ?REVOCATION_SYNC,
            "no hub answered with its revocations; serving with the ones stored here"
        ),
    }
}

/// What rebuilding the FleetIndex found.
#[derive(Debug, Clone, Copy)]
pub struct RehydrateStats {
    pub envoys: usize,
    pub trait_sets: usize,
    pub elapsed: Duration,
}

impl Spoke {
    /// Opens the store, rebuilds the FleetIndex, loads the policy and starts serving.
    /// `metrics` is the process's Prometheus handle, when it exports metrics.
    pub async fn start(
        mut config: SpokeConfig,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Spoke, SpokeError> {
        // One connection per envoy: the open-file limit must hold the connection cap.
        // The data dir holds the envoys' records and ticket keys: the spoke's alone.
        config.connections.fit_descriptors(1)?;
        fsutil::create_private_dir(&config.data_dir)?;
        let (store, writer) = Store::open(&config.db_path())?;
        let fleet = Arc::new(FleetIndex::new());
        let traits = Arc::new(TraitsStore::default());
        let mut loaded = store.load()?;
        let token_uses = loaded.token_uses.clone();
        let published = loaded.config.take();
        let forwards = Arc::new(Forwards::default());
        forwards.restore(std::mem::take(&mut loaded.forwards));
        let revocation_list = std::mem::take(&mut loaded.revocations);
        let stats = rehydrate(loaded, &fleet, &traits, &store, config.offline_after())?;
        let revocations = Arc::new(Revocations::load(
            fleet.clone(),
            store.clone(),
            &revocation_list,
        ));
        info!(
            envoys = stats.envoys,
            trait_sets = stats.trait_sets,
            elapsed = ?stats.elapsed,
            "FleetIndex rehydrated"
        );

        let bundle_key = match &config.bundle_signing_key {
            Some(path) => Some(signing::read_key_file(path)?),
            None => None,
        };
        let bundle_public: Vec<Bytes> = bundle_key
            .iter()
            .map(|k| Bytes::copy_from_slice(k.verifying_key().as_bytes()))
            .collect();
        let policy_dir = config.hub.is_none().then_some(config.policy_dir.as_path());
        let policy = Arc::new(
            policy_feed::starting_policy(policy_dir, published, bundle_key, &store).await?,
        );
        info!(
            version = %policy.current().version_hex(),
            hostcrates = policy.current().hostcrate_count(),
            "policy loaded"
        );
        classify_fleet(&fleet, &policy);
        let streams = Arc::new(Streams::default());
        let mut server_tls = tls::server_config(
            &fsutil::read_to_string(&config.tls.ca_cert)?,
            &fsutil::read_to_string(&config.tls.cert)?,
            &fsutil::read_to_string(&config.tls.key)?,
            ClientAuth::Optional,
        )?;
        // Tickets survive a restart: a restarted spoke's envoys resume their sessions.
        server_tls.ticketer = tls::tickets::TicketKeys::load_or_create(&config.data_dir)?;

        let interval_ms = config.checkin.interval.as_millis() as u32;
        let jitter_ms = config.jitter().as_millis() as u32;
        let verifier = BatchVerifier::new(config.verify.max_batch);
        let shares = Arc::new(crate::fairness::Shares::default());
        let gateway = Arc::new(Gateway::new(
            fleet.clone(),
            traits.clone(),
            policy.clone(),
            crate::gateway::Checking {
                verifier,
                shares: shares.clone(),
            },
            store.clone(),
            GatewaySettings {
                interval_ms,
                jitter_ms,
                timestamp_window_ms: config.checkin.timestamp_window.as_millis() as u64,
                max_checkin_body: config.checkin.max_body.0,
                max_report_body: config.reports.max_body.0,
                max_traits: config.checkin.max_traits,
                allow_relay: config.tls.allow_relay_certificates,
                keep_runs: config.reports.keep_runs,
            },
            Reach {
                streams: streams.clone(),
                forwards: forwards.clone(),
            },
        ));
        let registry = Registry::new(fleet.clone(), store.clone());
        let enrollment = match (&config.hub, &config.tls.ca_key) {
            (Some(hub), _) => EnrollmentService::ThroughHub(hub.addresses.clone()),
            (None, Some(ca_key)) => EnrollmentService::Standalone(Arc::new(Enroller {
                registry: registry.clone(),
                tokens: TokenBook::new(&config.enrollment.tokens, token_uses),
                ca: CertAuthority::load(&config.tls.ca_cert, ca_key)?,
                advertise: config.advertise_address(),
                interval_ms,
                jitter_ms,
                bundle_keys: bundle_public,
            })),
            (None, None) => unreachable!("config validation requires tls.ca_key without a hub"),
        };
        let admin = Arc::new(Admin {
            fleet: fleet.clone(),
            traits: traits.clone(),
            store: store.clone(),
            policy: policy.clone(),
            registry,
            streams: streams.clone(),
            forwards,
            revocations: revocations.clone(),
            tasks: gateway.tasks.clone(),
            through_hub: config.hub.is_some(),
        });
        let (synced_tx, synced) = tokio::sync::watch::channel(false);
        let hub_link = match &config.hub {
            Some(hub) => {
                let client_tls = tls::client_config_refusing(
                    &fsutil::read_to_string(&config.tls.ca_cert)?,
                    Some((
                        &fsutil::read_to_string(&config.tls.cert)?,
                        &fsutil::read_to_string(&config.tls.key)?,
                    )),
                    &[vigo_common::pki::Role::Hub],
                    revocations.certs.clone(),
                )?;
                let link = Link {
                    hub: hub.clone(),
                    advertise: config.advertise_address(),
                    tls: Arc::new(client_tls),
                    admin: admin.clone(),
                    synced: synced_tx,
                };
                Some(tokio::spawn(link.run()))
            }
            None => None,
        };
        let flusher = Arc::new(Flusher {
            fleet: fleet.clone(),
            traits: traits.clone(),
            store: store.clone(),
            batch_rows: config.flush.batch_rows,
        });
        let flushers = Flushers::start(
            flusher.clone(),
            config.flush.flushers,
            config.flush.interval,
        );
        gateway.tasks.restore()?;
        let sweeper = tokio::spawn({
            let (fleet, tasks) = (fleet.clone(), gateway.tasks.clone());
            let offline_after = config.offline_after();
            async move {
                tokio::join!(sweep_offline(fleet, offline_after), expire_tasks(tasks));
            }
        });

        let metrics_addr = match (metrics, config.metrics_listen) {
            (Some(handle), Some(addr)) => {
                let (fleet, traits) = (fleet.clone(), traits.clone());
                let refresh = Arc::new(move || {
                    crate::metrics::publish_fleet(
                        &fleet.counts(),
                        fleet.dirty_count(),
                        traits.len(),
                    )
                });
                Some(vigo_common::telemetry::serve_metrics(addr, handle, refresh).await?)
            }
            _ => None,
        };

        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            SpokeError::Common(vigo_common::Error::Bind {
                what: "envoys",
                addr: config.listen,
                why: e.to_string(),
            })
        })?;
        let addr = listener.local_addr().map_err(|e| {
            SpokeError::Common(vigo_common::Error::Bind {
                what: "envoys",
                addr: config.listen,
                why: e.to_string(),
            })
        })?;
        let conns = &config.connections;
        let accept = conns.accept_limits();
        let http2 = config.http2_limits();
        let (enroll_table, gateway_table, admin_table) = admission::tables(
            admission::Settings {
                request_timeout: conns.request_timeout,
                max_checkin_body: config.checkin.max_body.0,
                max_report_body: config.reports.max_body.0,
                allow_relay: config.tls.allow_relay_certificates,
            },
            SheddingLimits {
                max_in_flight: config.shedding.max_in_flight,
                max_queue_wait: config.shedding.max_queue_wait,
                retry_after: config.shedding.retry_after,
                max_retry_after: config.shedding.max_retry_after,
            },
            shares,
            fleet.clone(),
        );
        // Each service decodes up to its largest method's limit; admission holds each
        // method to its own and refuses wrong peers before the body is read.
        let gateway_limit = config.checkin.max_body.0.max(config.reports.max_body.0) + (1 << 10);
        let refused = revocations.certs.clone();
        let (health, health_service) =
            vigo_common::net::health::service(SPOKE_SERVICES, refused.clone()).await;
        let under_hub = config.hub.is_some().then(|| synced.clone());
        let routes = tonic::service::Routes::builder()
            .add_service(health_service)
            .add_service(
                Guarded::new(
                    pb::enrollment_server::EnrollmentServer::new(enrollment)
                        .max_decoding_message_size(64 << 10),
                    enroll_table,
                )
                .refusing(refused.clone()),
            )
            .add_service(
                Guarded::new(
                    pb::envoy_gateway_server::EnvoyGatewayServer::new(GatewayService(gateway))
                        .max_decoding_message_size(gateway_limit),
                    gateway_table,
                )
                .refusing(refused.clone()),
            )
            .add_service(
                Guarded::new(
                    pb::spoke_admin_server::SpokeAdminServer::new(AdminService(admin))
                        .max_decoding_message_size(admission::MAX_ADMIN_MESSAGE),
                    admin_table,
                )
                .refusing(refused),
            )
            .clone()
            .routes();
        if config.hub.is_some() && stats.envoys > 0 {
            wait_for_revocations(synced).await;
        }
        let serving = serve_grpc(
            listener,
            Arc::new(server_tls),
            accept,
            http2,
            routes,
            "spoke",
        )
        .map_err(|e| {
            SpokeError::Common(vigo_common::Error::Bind {
                what: "envoys",
                addr: config.listen,
                why: e.to_string(),
            })
        })?;
        info!(%addr, name = %config.name, advertise = %config.advertise_address(), "spoke serving");
        tokio::spawn(report_ready(health.clone(), under_hub));
        Ok(Spoke {
            addr,
            metrics_addr,
            fleet,
            policy,
            streams,
            serving: Some(serving),
            sweeper,
            hub_link,
            flusher,
            flushers: Some(flushers),
            store: Some(store),
            health,
            writer: Some(writer),
        })
    }

    /// Recompiles a standalone spoke's policy directory; the serving policy stays if the
    /// new one is invalid.
    pub async fn reload_policy(&self) -> Result<(), SpokeError> {
        let store = self.store.as_ref().ok_or(SpokeError::ShuttingDown)?;
        policy_feed::reload(&self.policy, store).await
    }

    /// Stops accepting, lets in-flight requests finish, flushes every dirty envoy and
    /// closes the database.
    pub async fn shutdown(mut self) -> Result<(), SpokeError> {
        info!("spoke shutting down");
        self.health.set(false).await;
        // Open streams would hold their connections through the drain: end them, the
        // envoys fall back to polling.
        self.streams.close_all();
        // In-flight requests get a bounded time to finish; the final flush must not wait
        // on a client that never closes its connection.
        if let Some(serving) = self.serving.take() {
            serving.stop(DRAIN_TIMEOUT).await;
        }
        self.sweeper.abort();
        if let Some(link) = &self.hub_link {
            link.abort();
        }
        let flushers = self.flushers.take();
        let flusher = self.flusher.clone();
        let store = self.store.take();
        let writer = self.writer.take();
        let stats = tokio::task::spawn_blocking(move || {
            if let Some(f) = flushers {
                f.stop();
            }
            let stats = flusher.flush_all();
            drop(flusher);
            drop(store);
            stats
        })
        .await
        .map_err(|_| SpokeError::ShuttingDown)?;
        info!(rows = stats.rows, "final flush done");
        // The writer thread ends once the last store handle is gone.
        drop(self);
        // The writer has committed the final flush already; it exits when the last store
        // handle is dropped, which a connection task still being torn down may delay.
        if let Some(w) = writer {
            let joined = tokio::task::spawn_blocking(move || w.join());
            if tokio::time::timeout(DRAIN_TIMEOUT, joined).await.is_err() {
                warn!("redb writer still busy at exit");
            }
        }
        info!("spoke stopped");
        Ok(())
    }

    /// Waits until the server stops on its own (its accept loop ended: a bug).
    pub async fn serving(&mut self) -> Result<(), SpokeError> {
        match &mut self.serving {
            Some(serving) => {
                serving.ended().await;
                Err(SpokeError::ShuttingDown)
            }
            None => Ok(()),
        }
    }
}

/// Keeps the per-hostcrate tally in step with the policy: reset before each new
/// generation serves, then every envoy classified under it by a sweep on its own
/// thread (once per policy change, never per request).
struct Classifier {
    fleet: Weak<FleetIndex>,
    policy: Weak<PolicyCache>,
}

impl Classifier {
    fn sweep(fleet: &FleetIndex, policy: &PolicyCache, generation: u32) {
        let current = policy.current();
        if current.generation == generation {
            fleet.reclassify(generation, |h| current.hostcrate_of(h));
        }
    }
}

impl SwapObserver for Classifier {
    fn before_swap(&self, generation: u32) {
        if let Some(fleet) = self.fleet.upgrade() {
            fleet.reset_tally(generation);
        }
    }

    fn after_swap(&self, generation: u32) {
        let (Some(fleet), Some(policy)) = (self.fleet.upgrade(), self.policy.upgrade()) else {
            return;
        };
        std::thread::spawn(move || Self::sweep(&fleet, &policy, generation));
    }
}

fn classify_fleet(fleet: &Arc<FleetIndex>, policy: &Arc<PolicyCache>) {
    let generation = policy.current().generation;
    fleet.reset_tally(generation);
    Classifier::sweep(fleet, policy, generation);
    policy.observe(Box::new(Classifier {
        fleet: Arc::downgrade(fleet),
        policy: Arc::downgrade(policy),
    }));
}

/// Rebuilds the FleetIndex from the store: identities, flushed state, last runs and the
/// trait sets they use. Keys stay compressed until each envoy's first check-in
/// ([`EnvoyKey`]): decompressing 100,000 of them was most of a restart's time.
pub fn rehydrate(
    loaded: Loaded,
    fleet: &FleetIndex,
    traits: &TraitsStore,
    store: &Store,
    offline_after: Duration,
) -> Result<RehydrateStats, SpokeError> {
    let started = Instant::now();
    let Loaded {
        envoys,
        states,
        last_runs,
        traits: sets,
        ..
    } = loaded;
    let now = vigo_common::time::now_ms();
    let mut referenced = std::collections::HashSet::new();
    let mut count = 0;
    for row in &envoys {
        let key = <[u8; 32]>::try_from(row.public_key.as_slice()).ok();
        let (Some(id), Some(key)) = (EnvoyId::new(row.id), key) else {
            warn!(id = row.id, "skipping stored envoy with a bad id or key");
            continue;
        };
        let mut st = EnvoyState::new(row.enrolled_at_ms);
        st.revoked = row.revoked;
        if let Some(s) = states.get(&row.id) {
            st.sequence = s.sequence;
            st.last_seen_ms = s.last_seen_ms;
            if let Ok(h) = <[u8; 32]>::try_from(s.traits_hash.as_slice())
                && sets.contains_key(&h)
            {
                st.traits_hash = h;
            }
            if let Ok(fp) = <[u8; 32]>::try_from(s.bundle_fingerprint.as_slice()) {
                st.bundle_fingerprint = fp;
            }
        }
        if let Some(run) = last_runs.get(&row.id) {
            st.run_status = Compliance::from_index(run.status as u8).unwrap_or(Compliance::NoData);
            st.last_run_bundle = run.bundle_prefix;
            st.last_run_id = run.run_id;
            st.change_streak = run.change_streak;
            st.sequence = st.sequence.max(run.sequence);
        }
        st.offline = now.saturating_sub(st.last_seen_ms) > offline_after.as_millis() as u64;
        if st.traits_hash != [0; 32] {
            referenced.insert(st.traits_hash);
        }
        fleet.insert(
            EnvoyRecord::new(id, EnvoyKey::stored(key), &row.hostname, row.enrolled_at_ms),
            st,
        );
        count += 1;
    }
    let mut unreferenced = Vec::new();
    for (hash, bytes) in sets {
        match (referenced.contains(&hash), traits_store::decode(&bytes)) {
            (true, Some(map)) => traits.restore(hash, map),
            _ => unreferenced.push(hash),
        }
    }
    fleet.for_each(|r| {
        let h = r.read(|st| st.traits_hash);
        if h != [0; 32] && !traits.adopt(&[0; 32], &h) {
            // The set did not decode: the envoy will be asked for its traits again.
            fleet.update(r, |st| st.traits_hash = [0; 32]);
        }
    });
    store.delete_traits(&unreferenced)?;
    Ok(RehydrateStats {
        envoys: count,
        trait_sets: traits.len(),
        elapsed: started.elapsed(),
    })
}

/// Marks envoys silent for longer than `offline_after` as offline. A background pass
/// over the fleet every few seconds; check-ins clear the mark as they arrive.
/// Ends the task copies whose window closed without a result, every second.
async fn expire_tasks(tasks: Arc<crate::tasks::SpokeTasks>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        tasks.expire(vigo_common::time::now_ms());
    }
}

async fn sweep_offline(fleet: Arc<FleetIndex>, offline_after: Duration) {
    let period = (offline_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let mut tick = tokio::time::interval(period);
    let limit = offline_after.as_millis() as u64;
    loop {
        tick.tick().await;
        let now = vigo_common::time::now_ms();
        fleet.for_each(|r| {
            let stale = r.read(|st| !st.offline && now.saturating_sub(st.last_seen_ms) > limit);
            if stale {
                fleet.update(r, |st| {
                    if now.saturating_sub(st.last_seen_ms) > limit {
                        st.offline = true;
                    }
                });
            }
        });
    }
}
