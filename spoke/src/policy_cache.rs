//! Compiled, signed bundles: one per hostcrate, built when the policy loads.
//!
//! A check-in reads the current snapshot without locking (`ArcSwap`) and compares
//! fingerprints; nothing is built per envoy. A new policy is compiled aside (by the
//! caller, off the async workers), signed here and swapped in only if it is valid, so a
//! bad policy never replaces a good one.
//!
//! Bundles carry a generation that grows with every policy served (DESIGN §9): the
//! hub assigns it at publish; a standalone spoke assigns it at load and keeps it in its
//! store, so a restart serving the same policy signs the same bundles.
//!
//! Who signs (DESIGN §9): a standalone spoke signs with its own key; a spoke under a hub
//! holds no signing key and serves the hub's signatures, which must verify over the
//! manifests it builds — it cannot mint a bundle. Until its hub sends a signed version
//! it serves no bundle at all (check-ins answer "no change").

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use bytes::Bytes;
use ed25519_dalek::{SigningKey, VerifyingKey};
use tracing::{info, warn};
use vigo_common::policy::bundle::{BundleError, Seal, SignedBundle};
use vigo_common::policy::{CompiledPolicy, PolicyErrors, read_files, validate};

/// Reads and validates a policy directory (a standalone spoke's policy).
pub fn compile_dir(dir: &Path) -> Result<CompiledPolicy, PolicyErrors> {
    validate(&read_files(dir)?)
}

/// Validates a published tree (path → YAML).
pub fn compile_files(files: &BTreeMap<PathBuf, String>) -> Result<CompiledPolicy, PolicyErrors> {
    validate(files)
}

/// Bundles of this many past policy generations stay known, so an envoy a few
/// versions behind still receives the modules it holds as stubs.
const KNOWN_GENERATIONS: usize = 8;

pub struct PolicySnapshot {
    /// Counts snapshots of this process (per-policy tallies follow it).
    pub generation: u32,
    /// The generation signed into every bundle of this policy.
    pub bundle_generation: u64,
    pub compiled: CompiledPolicy,
    /// Indexed like `compiled.hostcrates` (the fallback bundle last); empty while a
    /// spoke under a hub has no signed version.
    pub bundles: Vec<SignedBundle>,
    /// Bundle fingerprint → hashes of its modules, for this and recent generations.
    known: HashMap<[u8; 32], Arc<[[u8; 32]]>>,
}

impl PolicySnapshot {
    /// The bundle of a hostcrate (an index past the end is the fallback); `None` while
    /// nothing signed is served.
    pub fn bundle(&self, hostcrate: u32) -> Option<&SignedBundle> {
        let last = self.bundles.len().checked_sub(1)?;
        self.bundles.get((hostcrate as usize).min(last))
    }

    /// The name of a hostcrate ("" for the fallback).
    pub fn hostcrate_name(&self, hostcrate: u32) -> &str {
        let hostcrates = &self.compiled.hostcrates;
        let last = hostcrates.len() - 1;
        &hostcrates[(hostcrate as usize).min(last)].name
    }

    /// Hostcrates with patterns (the fallback not counted).
    pub fn hostcrate_count(&self) -> usize {
        self.compiled.hostcrates.len() - 1
    }

    pub fn hostcrate_of(&self, hostname: &str) -> u32 {
        self.compiled.match_hostname(hostname) as u32
    }

    /// Module hashes of a bundle an envoy says it holds, if we know that bundle.
    pub fn modules_of(&self, fingerprint: &[u8]) -> Option<&[[u8; 32]]> {
        let fp: &[u8; 32] = fingerprint.try_into().ok()?;
        self.known.get(fp).map(|m| &m[..])
    }

    pub fn version_hex(&self) -> String {
        hex::encode(self.compiled.version)
    }
}

/// Where policy comes from.
#[derive(Clone, Debug)]
pub enum PolicySource {
    /// A directory, re-read on reload (standalone spokes).
    Directory(PathBuf),
    /// Versions the hub publishes, pushed or pulled.
    Hub,
}

/// The policy of a spoke that has not received one from its hub yet: no hostcrate, so
/// every envoy gets the empty bundle.
pub fn empty_policy() -> BTreeMap<PathBuf, String> {
    BTreeMap::from([(
        PathBuf::from("hostcrates.yaml"),
        "hostcrates: []\n".to_string(),
    )])
}

/// How a policy's bundles are signed.
#[derive(Clone, Debug)]
pub enum Sealing {
    /// With this spoke's own key at this generation (a standalone spoke).
    Own { generation: u64 },
    /// With the signatures its hub made (a spoke under a hub).
    Hub(Box<HubSeal>),
    /// Not at all: a spoke under a hub that has no signed version yet.
    Unsigned,
}

/// The hub's seal of one config version (`ConfigVersion.bundle_*`).
#[derive(Clone, Debug)]
pub struct HubSeal {
    pub generation: u64,
    pub key: VerifyingKey,
    pub trusted: Vec<[u8; 32]>,
    /// In compiled hostcrate order, the fallback last.
    pub signatures: Vec<Bytes>,
}

impl HubSeal {
    /// The seal a config version carries; `None` for a version without one.
    pub fn of(version: &vigo_proto::v1::ConfigVersion) -> Result<Option<Self>, String> {
        if version.bundle_key.is_empty() {
            return Ok(None);
        }
        let key = vigo_common::signing::parse_public_key(&version.bundle_key)
            .map_err(|e| format!("bundle_key: {e}"))?;
        let trusted = version
            .trusted_bundle_keys
            .iter()
            .map(|k| {
                <[u8; 32]>::try_from(k.as_ref())
                    .map_err(|_| "trusted_bundle_keys: a key is not 32 bytes".to_string())
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(HubSeal {
            generation: version.generation,
            key,
            trusted,
            signatures: version.bundle_signatures.clone(),
        }))
    }
}

impl Sealing {
    fn generation(&self) -> u64 {
        match self {
            Sealing::Own { generation } => *generation,
            Sealing::Hub(seal) => seal.generation,
            Sealing::Unsigned => 0,
        }
    }
}

/// Why a policy could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "this spoke has no bundle-signing key (a spoke under a hub serves the hub's signatures)"
    )]
    NoKey,
    #[error("the hub signed {signed} bundles; this spoke compiled {compiled}")]
    Count { signed: usize, compiled: usize },
    #[error(
        "the hub's signature of hostcrate {hostcrate:?} does not verify over the manifest this spoke built ({why}): hub and spoke compile this policy differently"
    )]
    Signature { hostcrate: String, why: BundleError },
}

/// Told about each new generation: just before it starts serving (so per-policy
/// tallies can reset before any check-in classifies an envoy under it) and just after.
pub trait SwapObserver: Send + Sync {
    fn before_swap(&self, generation: u32);
    fn after_swap(&self, generation: u32);
}

pub struct PolicyCache {
    observer: std::sync::OnceLock<Box<dyn SwapObserver>>,
    source: PolicySource,
    /// A standalone spoke's own signing key; `None` under a hub.
    key: Option<SigningKey>,
    current: ArcSwap<PolicySnapshot>,
    /// Known bundles of recent generations; also serialises reloads.
    history: Mutex<VecDeque<Known>>,
}

impl PolicyCache {
    /// Starts serving `compiled`, sealed as `sealing` says.
    pub fn new(
        source: PolicySource,
        compiled: CompiledPolicy,
        key: Option<SigningKey>,
        sealing: &Sealing,
    ) -> Result<Self, SealError> {
        let sealed = seal(compiled, key.as_ref(), sealing)?;
        let (snapshot, known) = build(sealed, 0, &VecDeque::new());
        let mut history = VecDeque::new();
        history.push_back(known);
        Ok(Self {
            observer: std::sync::OnceLock::new(),
            source,
            key,
            current: ArcSwap::from_pointee(snapshot),
            history: Mutex::new(history),
        })
    }

    /// Installs the observer of generation changes (once).
    pub fn observe(&self, observer: Box<dyn SwapObserver>) {
        let _ = self.observer.set(observer);
    }

    pub fn source(&self) -> &PolicySource {
        &self.source
    }

    /// The snapshot check-ins read: a lock-free load.
    #[inline]
    pub fn current(&self) -> Guard<Arc<PolicySnapshot>> {
        self.current.load()
    }

    /// The generation to sign a newly served policy with: above the serving one, and
    /// the clock in milliseconds when that is larger (so it also grows across a lost
    /// store).
    pub fn next_generation(&self) -> u64 {
        let current = self.current.load().bundle_generation;
        current.saturating_add(1).max(vigo_common::time::now_ms())
    }

    /// Builds every bundle of `compiled` as `sealing` says: signed with this spoke's
    /// own key, or with the hub's signatures, each verified over the manifest built here.
    /// Nothing serves it until [`PolicyCache::install`]; one that cannot be sealed is
    /// rejected (counted and logged).
    pub fn seal(
        &self,
        compiled: CompiledPolicy,
        sealing: &Sealing,
        origin: &str,
    ) -> Result<Sealed, InstallError> {
        seal(compiled, self.key.as_ref(), sealing).map_err(|e| {
            let e = InstallError::Seal(e);
            self.reject(origin, &e);
            e
        })
    }

    /// Counts and logs a policy that will not serve (it does not compile, or cannot be
    /// sealed); the serving policy stays.
    pub fn reject(&self, origin: &str, why: &InstallError) {
        metrics::counter!("vigo_policy_reloads_total", "result" => "rejected").increment(1);
        warn!(%origin, error = %why, "policy rejected; previous policy keeps serving");
    }

    /// Serves a sealed policy from now on.
    pub fn install(&self, sealed: Sealed, origin: &str) -> Arc<PolicySnapshot> {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.current.load().generation.wrapping_add(1);
        let (snapshot, known) = build(sealed, generation, &history);
        history.push_back(known);
        while history.len() > KNOWN_GENERATIONS {
            history.pop_front();
        }
        let snapshot = Arc::new(snapshot);
        let observer = self.observer.get();
        if let Some(o) = observer {
            o.before_swap(generation);
        }
        self.current.store(snapshot.clone());
        if let Some(o) = observer {
            o.after_swap(generation);
        }
        metrics::counter!("vigo_policy_reloads_total", "result" => "applied").increment(1);
        info!(
            version = %snapshot.version_hex(),
            generation,
            bundles = snapshot.bundles.len(),
            %origin,
            "policy reloaded"
        );
        snapshot
    }
}

/// A compiled policy and its bundles, ready to serve.
pub struct Sealed {
    compiled: CompiledPolicy,
    bundles: Vec<SignedBundle>,
    bundle_generation: u64,
}

/// Why a policy did not take over.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Policy(PolicyErrors),
    #[error(transparent)]
    Seal(SealError),
}

type Known = Vec<([u8; 32], Arc<[[u8; 32]]>)>;

/// Every bundle of `compiled`, signed here (own key) or with the hub's signatures.
fn seal(
    compiled: CompiledPolicy,
    key: Option<&SigningKey>,
    sealing: &Sealing,
) -> Result<Sealed, SealError> {
    let bundles = bundles(&compiled, key, sealing)?;
    Ok(Sealed {
        compiled,
        bundles,
        bundle_generation: sealing.generation(),
    })
}

fn bundles(
    compiled: &CompiledPolicy,
    key: Option<&SigningKey>,
    sealing: &Sealing,
) -> Result<Vec<SignedBundle>, SealError> {
    let hostcrates = &compiled.hostcrates;
    match sealing {
        Sealing::Unsigned => Ok(Vec::new()),
        Sealing::Own { generation } => {
            let key = key.ok_or(SealError::NoKey)?;
            let seal = Seal::own(compiled.version, *generation, key);
            Ok(hostcrates
                .iter()
                .map(|h| SignedBundle::sign(h, &seal, key))
                .collect())
        }
        Sealing::Hub(hub) => {
            if hub.signatures.len() != hostcrates.len() {
                return Err(SealError::Count {
                    signed: hub.signatures.len(),
                    compiled: hostcrates.len(),
                });
            }
            let seal = Seal {
                policy_version: compiled.version,
                generation: hub.generation,
                signing_key: hub.key,
                trusted: hub.trusted.clone(),
            };
            hostcrates
                .iter()
                .zip(&hub.signatures)
                .map(|(h, signature)| {
                    SignedBundle::sealed(h, &seal, signature).map_err(|why| SealError::Signature {
                        hostcrate: h.name.clone(),
                        why,
                    })
                })
                .collect()
        }
    }
}

fn build(sealed: Sealed, generation: u32, history: &VecDeque<Known>) -> (PolicySnapshot, Known) {
    let Sealed {
        compiled,
        bundles,
        bundle_generation,
    } = sealed;
    metrics::counter!("vigo_bundle_builds_total").increment(bundles.len() as u64);
    let this: Known = bundles
        .iter()
        .map(|b| {
            let hashes: Arc<[[u8; 32]]> = b.modules.iter().map(|m| m.sha256).collect();
            (b.fingerprint, hashes)
        })
        .collect();
    let known = history
        .iter()
        .flatten()
        .chain(this.iter())
        .cloned()
        .collect();
    (
        PolicySnapshot {
            generation,
            bundle_generation,
            compiled,
            bundles,
            known,
        },
        this,
    )
}
