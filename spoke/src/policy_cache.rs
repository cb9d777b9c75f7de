//! Compiled, signed bundles: one per hostcrate, built when the policy loads.
//!
//! A check-in reads the current snapshot without locking (`ArcSwap`) and compares
//! fingerprints; nothing is built per envoy. A reload compiles and signs a whole new
//! snapshot aside and swaps it in only if the policy is valid, so a bad policy never
//! replaces a good one.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use ed25519_dalek::SigningKey;
use tracing::{info, warn};
use vigo_common::policy::bundle::SignedBundle;
use vigo_common::policy::{CompiledPolicy, PolicyErrors, compile, load_dir};

/// Bundles of this many past policy generations stay known, so an envoy a few
/// versions behind still receives the modules it holds as stubs.
const KNOWN_GENERATIONS: usize = 8;

pub struct PolicySnapshot {
    pub generation: u32,
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

pub struct PolicyCache {
    dir: PathBuf,
    key: SigningKey,
    current: ArcSwap<PolicySnapshot>,
    /// Known bundles of recent generations; also serialises reloads.
    history: Mutex<VecDeque<Known>>,
}

impl PolicyCache {
    /// Loads the policy at start-up; an invalid policy is an error.
    pub fn load(dir: &Path, key: SigningKey) -> Result<Self, PolicyErrors> {
        let (snapshot, known) = build(dir, &key, 0, &VecDeque::new())?;
        let mut history = VecDeque::new();
        history.push_back(known);
        Ok(Self {
            dir: dir.to_path_buf(),
            key,
            current: ArcSwap::from_pointee(snapshot),
            history: Mutex::new(history),
        })
    }

    /// The snapshot check-ins read: a lock-free load.
    #[inline]
    pub fn current(&self) -> Guard<Arc<PolicySnapshot>> {
        self.current.load()
    }

    /// Recompiles from disk. On error the serving snapshot stays as it was.
    pub fn reload(&self) -> Result<Arc<PolicySnapshot>, PolicyErrors> {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.current.load().generation.wrapping_add(1);
        let (snapshot, known) = match build(&self.dir, &self.key, generation, &history) {
            Ok(built) => built,
            Err(e) => {
                metrics::counter!("vigo_policy_reloads_total", "result" => "rejected").increment(1);
                warn!(dir = %self.dir.display(), errors = %e, "policy reload rejected; previous policy keeps serving");
                return Err(e);
            }
        };
        history.push_back(known);
        while history.len() > KNOWN_GENERATIONS {
            history.pop_front();
        }
        let snapshot = Arc::new(snapshot);
        self.current.store(snapshot.clone());
        metrics::counter!("vigo_policy_reloads_total", "result" => "applied").increment(1);
        info!(
            version = %snapshot.version_hex(),
            generation,
            bundles = snapshot.bundles.len(),
            "policy reloaded"
        );
        Ok(snapshot)
    }
}

type Known = Vec<([u8; 32], Arc<[[u8; 32]]>)>;

fn build(
    dir: &Path,
    key: &SigningKey,
    generation: u32,
    history: &VecDeque<Known>,
) -> Result<(PolicySnapshot, Known), PolicyErrors> {
    let tree = load_dir(dir)?;
    let compiled = compile(&tree);
    let bundles: Vec<SignedBundle> = compiled
        .hostcrates
        .iter()
        .map(|h| SignedBundle::sign(h, &compiled.version, key))
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
    Ok((
        PolicySnapshot {
            generation,
            compiled,
            bundles,
            known,
        },
        this,
    ))
}
