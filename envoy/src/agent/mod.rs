//! The agent on a managed machine: check in, take a new bundle when there is one (only
//! if its signature verifies), converge the machine to the bundle in force, and report.
//!
//! Without its spoke the agent keeps converging from the last good bundle and queues its
//! reports (durably); once the spoke answers again they go out, oldest first, with
//! exponential backoff and jitter between failed attempts.

mod backoff;
pub mod executors;
pub mod plan;
pub mod promotion;
pub mod state;
pub mod tasks;
pub mod traits;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::Code;
use tracing::{debug, error, info, warn};
use vigo_common::policy::bundle::{VerifiedBundle, check_applicable, verify_delivery};
use vigo_common::time::now_ms;
use vigo_proto::v1 as pb;

use crate::client::{self, Identity, Sequencer};
use backoff::Backoff;
use plan::{Facts, Tally, tally};
use state::{LocalState, RunStatus, StateDir, StateError};

type Gateway =
    pb::envoy_gateway_client::EnvoyGatewayClient<vigo_common::tls::direct::DirectChannel>;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Client(#[from] client::ClientError),
}

/// What one run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// The spoke answered the check-in.
    pub checked_in: bool,
    /// A new bundle was verified and is now in force.
    pub new_bundle: bool,
    /// A bundle arrived and was refused (signature, hashes, decoding).
    pub refused_bundle: Option<String>,
    /// No bundle has ever been received: nothing to converge to.
    pub no_bundle: bool,
    pub tally: Tally,
    /// The run failed as a whole.
    pub error: Option<String>,
    pub reports_sent: usize,
    pub reports_pending: u64,
}

impl RunSummary {
    /// Exit status of `vigo-envoy once`: 0 in policy, 2 changed (or would change),
    /// 4 failures, 6 both.
    pub fn exit_code(&self) -> u8 {
        let changed = self.tally.changed + self.tally.would_change > 0;
        let failed = self.tally.failed + self.tally.skipped > 0 || self.error.is_some();
        match (changed, failed) {
            (false, false) => 0,
            (true, false) => 2,
            (false, true) => 4,
            (true, true) => 6,
        }
    }
}

pub struct Agent {
    dir: StateDir,
    identity: Identity,
    local: Arc<LocalState>,
    gateway: Gateway,
    sequence: Sequencer,
    interval: Duration,
    jitter: Duration,
    traits_known: bool,
    backoff: Backoff,
    promotion: promotion::Promotion,
    tasks: tasks::handle::TaskLoop,
}

/// Runs blocking work (redb commits, resource executors) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

impl Agent {
    /// Loads the identity and local state from `dir`.
    pub fn load(dir: StateDir) -> Result<Self, AgentError> {
        let identity = dir.load_identity()?;
        let local = Arc::new(LocalState::open(&dir.db_path())?);
        let gateway = client::gateway(&identity.spoke_address, identity.tls_config()?)?;
        let sequence = Sequencer::starting_after(local.sequence()?);
        let tasks = tasks::handle::TaskLoop::new();
        Ok(Self {
            dir,
            identity,
            local,
            gateway,
            sequence,
            interval: Duration::from_secs(60),
            jitter: Duration::from_secs(6),
            traits_known: false,
            backoff: Backoff::new(),
            promotion: promotion::Promotion::new(promotion::DEFAULT_LINGER, tasks.sender()),
            tasks,
        })
    }

    /// How long a stream is held after the spoke last said work is flowing (zero:
    /// never open one).
    pub fn set_stream_linger(&mut self, linger: Duration) {
        self.promotion = promotion::Promotion::new(linger, self.tasks.sender());
    }

    /// What tasks may do here (`--no-exec-tasks`).
    pub fn set_task_policy(&mut self, policy: tasks::TaskPolicy) {
        self.tasks.policy = policy;
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The check-in interval the spoke asked for, with jitter applied.
    pub fn next_interval(&self) -> Duration {
        let spread = self.jitter.as_secs_f64();
        let offset = (rand::random::<f64>() * 2.0 - 1.0) * spread;
        Duration::from_secs_f64((self.interval.as_secs_f64() + offset).max(1.0))
    }

    /// One check-in, one convergence run, and a report.
    pub async fn run_once(&mut self, dry_run: bool) -> Result<RunSummary, AgentError> {
        let started_at_ms = now_ms();
        let started = Instant::now();
        let hostname = self.identity.hostname.clone();
        let traits = blocking(move || traits::collect(&hostname)).await;
        let mut summary = RunSummary::default();
        self.check_in(&traits, &mut summary).await;

        let local = self.local.clone();
        let keys = self.identity.bundle_keys.clone();
        let Some(bundle) = blocking(move || load_bundle(&local, &keys)).await? else {
            summary.no_bundle = true;
            summary.reports_pending = self.local.pending_count()?;
            info!("no bundle received yet: nothing to converge");
            return Ok(summary);
        };
        let hostname = self.identity.hostname.clone();
        // A bug in an executor must fail this run, not stop the agent.
        let applied = tokio::task::spawn_blocking(move || {
            let modules = bundle.decode_modules().map_err(|e| e.to_string())?;
            let facts = Facts {
                hostname: &hostname,
                traits: &traits,
            };
            let results = plan::apply(&modules, &bundle.manifest, &facts, dry_run);
            Ok::<_, String>((bundle.fingerprint, results))
        })
        .await
        .unwrap_or_else(|e| Err(format!("the run stopped: {e}")));
        let (fingerprint, results, error) = match applied {
            Ok((fp, results)) => (Some(fp), results, String::new()),
            Err(e) => (None, Vec::new(), e),
        };
        summary.tally = tally(&results);
        if !error.is_empty() {
            summary.error = Some(error.clone());
        }
        log_results(&results, &summary.tally, dry_run);

        let report = pb::RunReportBody {
            run_id: started_at_ms.max(1),
            bundle_fingerprint: fingerprint
                .map(|f| Bytes::copy_from_slice(&f))
                .unwrap_or_default(),
            dry_run,
            started_at_ms,
            duration_ms: started.elapsed().as_millis().min(u32::MAX as u128) as u32,
            outcomes: results.iter().map(|r| r.to_proto()).collect(),
            error,
            ..Default::default()
        };
        let local = self.local.clone();
        let seq = self.sequence.last();
        blocking(move || local.queue_report(&report, seq)).await?;
        summary.reports_sent = self.flush_reports().await?;
        summary.reports_pending = self.local.pending_count()?;
        let previous = self.dir.load_status().ok().flatten().unwrap_or_default();
        self.dir.save_status(&RunStatus {
            finished_at_ms: now_ms(),
            last_check_in_ms: if summary.checked_in {
                started_at_ms
            } else {
                previous.last_check_in_ms
            },
            ok: summary.tally.ok as u32,
            changed: summary.tally.changed as u32,
            would_change: summary.tally.would_change as u32,
            failed: summary.tally.failed as u32,
            skipped: summary.tally.skipped as u32,
            dry_run,
            error: summary.error.clone(),
            bundle_fingerprint: fingerprint.map(hex::encode),
            reports_queued: summary.reports_pending,
        })?;
        Ok(summary)
    }

    /// Checks in, following a redirect once, and takes a new bundle if it verifies.
    async fn check_in(&mut self, traits: &vigo_common::traits::TraitMap, summary: &mut RunSummary) {
        for _ in 0..2 {
            let held = self.held_fingerprint();
            let mut patience = client::Patience::default();
            let answer = loop {
                let request = client::check_in_request(
                    self.identity.envoy_id,
                    &self.identity.key,
                    self.sequence.advance(),
                    held.as_ref(),
                    traits,
                    !self.traits_known,
                );
                match client::send_check_in(&mut self.gateway, request).await {
                    Err(status) => match patience.wait_after(&status) {
                        Some(wait) => {
                            debug!(?wait, "the spoke is busy; checking in again shortly");
                            tokio::time::sleep(wait).await;
                        }
                        None => break Err(status),
                    },
                    answered => break answered,
                }
            };
            let response = match answer {
                Ok(r) => r,
                Err(status) => {
                    warn!(
                        spoke = %self.identity.spoke_address,
                        code = ?status.code(),
                        "check-in failed ({}); converging from the cached bundle",
                        status.message()
                    );
                    return;
                }
            };
            summary.checked_in = true;
            self.traits_known = !response.send_traits;
            if response.open_stream {
                self.promotion.promote();
            }
            if response.interval_ms > 0 {
                self.interval = Duration::from_millis(response.interval_ms.into());
                self.jitter = Duration::from_millis(response.jitter_ms.into());
            }
            match response.answer {
                Some(pb::check_in_response::Answer::Bundle(delivery)) => {
                    match self.accept_bundle(&delivery).await {
                        Ok(fp) => {
                            info!(fingerprint = %hex::encode(&fp[..8]), "new bundle in force");
                            summary.new_bundle = true;
                        }
                        Err(e) => {
                            error!(error = %e, "bundle refused; the previous bundle stays in force");
                            summary.refused_bundle = Some(e);
                        }
                    }
                }
                Some(pb::check_in_response::Answer::Redirect(r)) => {
                    if let Err(e) = self.follow_redirect(&r.spoke_address) {
                        error!(error = %e, to = %r.spoke_address, "cannot follow redirect");
                        return;
                    }
                    continue;
                }
                Some(pb::check_in_response::Answer::NoChange(_)) | None => {
                    debug!("no change");
                }
            }
            return;
        }
    }

    /// Fingerprint of the bundle in force, if any.
    pub fn held_fingerprint(&self) -> Option<[u8; 32]> {
        let delivery = self.local.bundle().ok()??;
        Some(vigo_common::traits::sha256(&delivery.manifest))
    }

    /// Verifies a delivery against the trusted keys, using the modules of the bundle in
    /// force for stubs; checks it is meant for this host and not older than the bundle in
    /// force (a replay); and keeps it.
    pub async fn accept_bundle(
        &mut self,
        delivery: &pb::BundleDelivery,
    ) -> Result<[u8; 32], String> {
        let held = self.local.bundle().map_err(|e| e.to_string())?;
        let cache: std::collections::HashMap<[u8; 32], Bytes> = held
            .iter()
            .flat_map(|d| &d.modules)
            .map(|m| (vigo_common::traits::sha256(&m.body), m.body.clone()))
            .collect();
        let verified = verify_delivery(delivery, &self.identity.bundle_keys, |h| {
            cache.get(h).cloned()
        })
        .map_err(|e| e.to_string())?;
        let held_generation = held.as_ref().and_then(|d| {
            <pb::BundleManifest as prost::Message>::decode(d.manifest.as_ref())
                .ok()
                .map(|m| m.generation)
        });
        check_applicable(&verified.manifest, &self.identity.hostname, held_generation)
            .map_err(|e| e.to_string())?;
        verified.decode_modules().map_err(|e| e.to_string())?;
        self.adopt_keys(&verified).map_err(|e| e.to_string())?;
        let fp = verified.fingerprint;
        let local = self.local.clone();
        blocking(move || local.save_bundle(&verified))
            .await
            .map_err(|e| e.to_string())?;
        Ok(fp)
    }

    /// The trusted key set a bundle carries becomes this envoy's (key rotation). Saved
    /// before the bundle is kept: after a crash in between, the bundle held verifies
    /// under the new set, or is fetched again.
    fn adopt_keys(&mut self, bundle: &VerifiedBundle) -> Result<(), AgentError> {
        let Some(keys) = &bundle.trusted_keys else {
            return Ok(());
        };
        if *keys == self.identity.bundle_keys {
            return Ok(());
        }
        let mut updated = self.identity.clone();
        updated.bundle_keys = keys.clone();
        self.dir.update_identity(&updated)?;
        info!(
            keys = ?updated.bundle_keys.iter().map(|k| hex::encode(&k.as_bytes()[..8])).collect::<Vec<_>>(),
            "trusted bundle-signing keys changed"
        );
        self.identity = updated;
        Ok(())
    }

    fn follow_redirect(&mut self, address: &str) -> Result<(), AgentError> {
        info!(from = %self.identity.spoke_address, to = %address, "reassigned to another spoke");
        let mut moved = self.identity.clone();
        moved.spoke_address = address.to_string();
        let gateway = client::gateway(address, moved.tls_config()?)?;
        self.dir.update_identity(&moved)?;
        self.identity = moved;
        self.gateway = gateway;
        self.traits_known = false;
        Ok(())
    }

    /// Sends queued reports oldest first; stops at the first one the spoke cannot take
    /// now. A report the spoke refuses for good (malformed, revoked) is dropped, logged.
    pub async fn flush_reports(&mut self) -> Result<usize, AgentError> {
        let local = self.local.clone();
        let pending = blocking(move || local.pending_reports()).await?;
        let mut sent = 0;
        for report in pending {
            let run_id = report.run_id;
            let request = client::report_request(
                self.identity.envoy_id,
                &self.identity.key,
                self.sequence.advance(),
                report,
            );
            let outcome = client::send_report(&mut self.gateway, request).await;
            let keep = match &outcome {
                Ok(_) => false,
                Err(s) if !permanent(s) => true,
                Err(s) => {
                    error!(run_id, code = ?s.code(), "report refused for good: {}", s.message());
                    false
                }
            };
            if keep {
                debug!(run_id, "spoke unreachable or busy; report stays queued");
                let hint = outcome
                    .as_ref()
                    .err()
                    .and_then(vigo_common::net::shedding::retry_after);
                self.backoff.failed(hint);
                return Ok(sent);
            }
            let local = self.local.clone();
            let seq = self.sequence.last();
            blocking(move || local.remove_report(run_id, seq)).await?;
            if outcome.is_ok() {
                sent += 1;
            }
        }
        self.backoff.succeeded();
        Ok(sent)
    }

    /// Runs until `shutdown` resolves: a run every interval (with jitter), and queued
    /// reports retried with backoff in between.
    pub async fn run(&mut self, dry_run: bool, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            match self.run_once(dry_run).await {
                Ok(s) => info!(
                    ok = s.tally.ok,
                    changed = s.tally.changed,
                    failed = s.tally.failed,
                    skipped = s.tally.skipped,
                    checked_in = s.checked_in,
                    reports_pending = s.reports_pending,
                    "run finished"
                ),
                Err(e) => error!(error = %e, "run failed"),
            }
            let sequence = self.sequence.advance();
            self.promotion
                .maintain(&mut self.gateway, &self.identity, sequence)
                .await;
            let woken = self.promotion.woken();
            let next_run = Instant::now() + self.next_interval();
            loop {
                self.send_task_results().await;
                let wake = [self.backoff.due, self.promotion.closes_at()]
                    .into_iter()
                    .flatten()
                    .fold(next_run, Instant::min);
                tokio::select! {
                    _ = &mut shutdown => {
                        info!("stopping");
                        return;
                    }
                    _ = woken.notified() => break,
                    event = self.tasks.next_event() => match event {
                        tasks::handle::TaskEvent::Delivered(task) => {
                            if self.take_task(task).await {
                                // Traits are to be sent afresh: check in now.
                                break;
                            }
                        }
                        tasks::handle::TaskEvent::Cancelled(id) => self.tasks.cancel(id),
                        tasks::handle::TaskEvent::Finished(done) => self.tasks.finished(done),
                    },
                    _ = tokio::time::sleep_until(wake.into()) => {}
                }
                if Instant::now() >= next_run {
                    break;
                }
                if self
                    .promotion
                    .closes_at()
                    .is_some_and(|at| at <= Instant::now())
                {
                    let sequence = self.sequence.advance();
                    self.promotion
                        .maintain(&mut self.gateway, &self.identity, sequence)
                        .await;
                }
                if let Err(e) = self.flush_reports().await {
                    error!(error = %e, "report flush failed");
                }
            }
        }
    }
}

/// Refusals after which sending the same report again cannot succeed: it is malformed,
/// too large, or this envoy is revoked. Everything else (unreachable spoke, a restart,
/// a reassignment not yet followed, a busy spoke's retry hint) is worth another try.
fn permanent(status: &tonic::Status) -> bool {
    if vigo_common::net::shedding::retry_after(status).is_some() {
        return false;
    }
    matches!(
        status.code(),
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::ResourceExhausted
    )
}

/// The bundle in force, re-verified: a local file edited by hand is not trusted.
pub(crate) fn load_bundle(
    local: &LocalState,
    keys: &[ed25519_dalek::VerifyingKey],
) -> Result<Option<VerifiedBundle>, StateError> {
    let Some(delivery) = local.bundle()? else {
        return Ok(None);
    };
    match verify_delivery(&delivery, keys, |_| None) {
        Ok(b) => Ok(Some(b)),
        Err(e) => {
            error!(error = %e, "the stored bundle does not verify; ignoring it");
            Ok(None)
        }
    }
}

fn log_results(results: &[plan::ResourceResult], tally: &Tally, dry_run: bool) {
    for r in results {
        match r.outcome {
            pb::Outcome::Changed => info!(resource = %r.id, "{}", r.message),
            pb::Outcome::WouldChange => info!(resource = %r.id, "would change: {}", r.message),
            pb::Outcome::Failed => error!(resource = %r.id, "failed: {}", r.message),
            pb::Outcome::Skipped => warn!(resource = %r.id, "skipped: {}", r.message),
            _ => debug!(resource = %r.id, "in policy"),
        }
    }
    debug!(?tally, dry_run, "run tally");
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigo_common::EnvoyId;
    use vigo_common::pki::{CertAuthority, cert_der_to_pem};

    fn enrolled(dir: &StateDir) {
        let (ca, _) = CertAuthority::create("test CA").unwrap();
        let key = vigo_common::signing::generate_key();
        let id = EnvoyId::new(99).unwrap();
        let (cert, tls_key_pem) = ca.certify_envoy(id, &key).unwrap();
        let identity = Identity {
            envoy_id: id,
            hostname: "h".into(),
            key,
            tls_key_pem,
            cert_pem: cert_der_to_pem(&cert),
            ca_pem: ca.cert_pem().to_string(),
            spoke_address: "127.0.0.1:1".into(),
            bundle_keys: vec![],
        };
        dir.save_identity(&identity, false).unwrap();
    }

    #[tokio::test]
    async fn a_redirect_is_followed_and_remembered() {
        vigo_common::tls::install_default_provider();
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("state"));
        enrolled(&dir);
        let mut agent = Agent::load(dir.clone()).unwrap();
        agent.follow_redirect("127.0.0.1:2").unwrap();
        assert_eq!(agent.identity().spoke_address, "127.0.0.1:2");
        drop(agent);
        let reloaded = Agent::load(dir).unwrap();
        assert_eq!(
            reloaded.identity().spoke_address,
            "127.0.0.1:2",
            "survives a restart"
        );
    }

    #[test]
    fn exit_codes_tell_the_outcome() {
        let with = |changed, failed| RunSummary {
            tally: Tally {
                changed,
                failed,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(with(0, 0).exit_code(), 0);
        assert_eq!(with(1, 0).exit_code(), 2);
        assert_eq!(with(0, 1).exit_code(), 4);
        assert_eq!(with(1, 1).exit_code(), 6);
    }
}
