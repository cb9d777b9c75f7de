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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use ed25519_dalek::SigningKey;
use tracing::{info, warn};
use vigo_common::policy::bundle::SignedBundle;
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
    /// Indexed like `compiled.hostcrates` (the fallback bundle last).
    pub bundles: Vec<SignedBundle>,
    /// Bundle fingerprint → hashes of its modules, for this and recent generations.
    known: HashMap<[u8; 32], Arc<[[u8; 32]]>>,
}

impl PolicySnapshot {
    pub fn bundle(&self, hostcrate: u32) -> &SignedBundle {
        let last = self.bundles.len() - 1;
        &self.bundles[(hostcrate as usize).min(last)]
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

/// Told about each new generation: just before it starts serving (so per-policy
/// tallies can reset before any check-in classifies an envoy under it) and just after.
pub trait SwapObserver: Send + Sync {
    fn before_swap(&self, generation: u32);
    fn after_swap(&self, generation: u32);
}

pub struct PolicyCache {
    observer: std::sync::OnceLock<Box<dyn SwapObserver>>,
    source: PolicySource,
    key: SigningKey,
    current: ArcSwap<PolicySnapshot>,
    /// Known bundles of recent generations; also serialises reloads.
    history: Mutex<VecDeque<Known>>,
}

impl PolicyCache {
    /// Starts serving `compiled`, its bundles signed with `bundle_generation`.
    pub fn new(
        source: PolicySource,
        compiled: CompiledPolicy,
        key: SigningKey,
        bundle_generation: u64,
    ) -> Self {
        let (snapshot, known) = build(compiled, &key, 0, bundle_generation, &VecDeque::new());
        let mut history = VecDeque::new();
        history.push_back(known);
        Self {
            observer: std::sync::OnceLock::new(),
            source,
            key,
            current: ArcSwap::from_pointee(snapshot),
            history: Mutex::new(history),
        }
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

    /// Serves a compiled policy from now on; an invalid one (`Err`) is counted and
    /// logged, and the serving policy stays.
    pub fn install(
        &self,
        compiled: Result<CompiledPolicy, PolicyErrors>,
        origin: &str,
        bundle_generation: u64,
    ) -> Result<Arc<PolicySnapshot>, PolicyErrors> {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.current.load().generation.wrapping_add(1);
        let compiled = match compiled {
            Ok(c) => c,
            Err(e) => {
                metrics::counter!("vigo_policy_reloads_total", "result" => "rejected").increment(1);
                warn!(%origin, errors = %e, "policy rejected; previous policy keeps serving");
                return Err(e);
            }
        };
        let (snapshot, known) = build(compiled, &self.key, generation, bundle_generation, &history);
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
        Ok(snapshot)
    }
}

type Known = Vec<([u8; 32], Arc<[[u8; 32]]>)>;

fn build(
    compiled: CompiledPolicy,
    key: &SigningKey,
    generation: u32,
    bundle_generation: u64,
    history: &VecDeque<Known>,
) -> (PolicySnapshot, Known) {
    let bundles: Vec<SignedBundle> = compiled
        .hostcrates
        .iter()
        .map(|h| SignedBundle::sign(h, &compiled.version, bundle_generation, key))
        .collect();
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
