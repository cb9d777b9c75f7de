//! The FleetIndex: every envoy of this spoke, in memory, behind O(1) lookups.
//!
//! Records live in 64 shards, each a read-mostly `RwLock<HashMap>`: a check-in takes a
//! shard read lock for a moment to clone the record's `Arc`, then works on that record's
//! own small mutex. Writers (enrollment, revocation) are rare, so readers on different
//! cores never wait on each other.
//!
//! Every mutation goes through [`FleetIndex::update`], which keeps the per-status counters
//! and the per-shard dirty lists right: queries read counters instead of scanning the
//! fleet, and flushers visit only what changed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use ed25519_dalek::VerifyingKey;
use foldhash::fast::RandomState;
use vigo_common::EnvoyId;

use crate::compliance::Compliance;

const SHARDS: usize = 64;

/// An envoy's Ed25519 public key: the 32 bytes it enrolled with, decompressed into a
/// curve point once, on first use. Decompressing is the costly step of a restart
/// (~17 µs a key: 100,000 envoys spent most of their rehydration there); an envoy pays
/// it at its first check-in instead, and never again.
pub struct EnvoyKey {
    bytes: [u8; 32],
    point: OnceLock<Option<VerifyingKey>>,
}

impl EnvoyKey {
    /// A key already parsed (at enrollment).
    pub fn parsed(key: VerifyingKey) -> Self {
        Self {
            bytes: key.to_bytes(),
            point: OnceLock::from(Some(key)),
        }
    }

    /// A key as stored, parsed when first needed.
    pub fn stored(bytes: [u8; 32]) -> Self {
        Self {
            bytes,
            point: OnceLock::new(),
        }
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// The key to verify with; `None` if the stored bytes are no valid key (enrollment
    /// refuses those, so only a damaged database holds one).
    pub fn verifying(&self) -> Option<VerifyingKey> {
        *self
            .point
            .get_or_init(|| VerifyingKey::from_bytes(&self.bytes).ok())
    }
}

impl PartialEq<VerifyingKey> for EnvoyKey {
    fn eq(&self, other: &VerifyingKey) -> bool {
        self.bytes == *other.as_bytes()
    }
}

impl std::fmt::Debug for EnvoyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EnvoyKey({})", hex::encode(self.bytes))
    }
}

/// An envoy's identity: fixed at enrollment (a re-key replaces the whole record).
pub struct EnvoyRecord {
    pub id: EnvoyId,
    pub key: EnvoyKey,
    pub hostname: Box<str>,
    pub enrolled_at_ms: u64,
    state: Mutex<EnvoyState>,
}

/// What changes as an envoy lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvoyState {
    pub sequence: u64,
    pub last_seen_ms: u64,
    pub traits_hash: [u8; 32],
    /// The bundle the envoy last said it holds.
    pub bundle_fingerprint: [u8; 32],
    /// Status from the last run report (`NoData` before the first).
    pub run_status: Compliance,
    /// First 8 bytes of the fingerprint of the bundle the last run applied.
    pub last_run_bundle: Option<u64>,
    pub last_run_id: u64,
    /// Consecutive runs, up to the last, that made changes.
    pub change_streak: u32,
    pub offline: bool,
    pub revoked: bool,
    /// Send the bundle on the next check-in whatever fingerprint the envoy holds.
    pub force_push: bool,
    /// Which policy generation `hostcrate` was computed against.
    pub policy_generation: u32,
    pub hostcrate: u32,
    dirty: bool,
    /// The record left the index (replaced by a re-key, or removed): changes made
    /// through a reference taken before no longer count anywhere.
    detached: bool,
}

impl EnvoyState {
    pub fn new(last_seen_ms: u64) -> Self {
        Self {
            sequence: 0,
            last_seen_ms,
            traits_hash: [0; 32],
            bundle_fingerprint: [0; 32],
            run_status: Compliance::NoData,
            last_run_bundle: None,
            last_run_id: 0,
            change_streak: 0,
            offline: false,
            revoked: false,
            force_push: false,
            policy_generation: u32::MAX,
            hostcrate: 0,
            dirty: false,
            detached: false,
        }
    }

    /// The status counted for this envoy; revoked envoys count nowhere.
    pub fn effective_status(&self) -> Option<Compliance> {
        if self.revoked {
            None
        } else if self.offline {
            Some(Compliance::Offline)
        } else {
            Some(self.run_status)
        }
    }

    /// Marks the state for the next flush.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }
}

impl EnvoyRecord {
    pub fn new(id: EnvoyId, key: EnvoyKey, hostname: &str, enrolled_at_ms: u64) -> Self {
        Self {
            id,
            key,
            hostname: hostname.into(),
            enrolled_at_ms,
            state: Mutex::new(EnvoyState::new(enrolled_at_ms)),
        }
    }

    /// Reads the state under its lock.
    #[inline]
    pub fn read<R>(&self, f: impl FnOnce(&EnvoyState) -> R) -> R {
        f(&self.lock())
    }

    /// A copy of the state, for reads that need several fields consistently.
    pub fn state(&self) -> EnvoyState {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EnvoyState> {
        // A panic while holding the lock cannot leave the plain-data state half-valid
        // in a way later readers could not handle, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Shard {
    records: RwLock<HashMap<u64, Arc<EnvoyRecord>, RandomState>>,
    dirty: Mutex<Vec<EnvoyId>>,
}

/// Envoys per effective status, kept incrementally.
#[derive(Default)]
struct Counters {
    by_status: [AtomicI64; 7],
    revoked: AtomicI64,
}

/// Where an envoy is counted in the per-hostcrate tally: the policy generation its
/// hostcrate was computed under, the hostcrate, and its status slot.
type TallyPlace = (u32, u32, usize);

/// Slot of revoked envoys in a tally row (after the seven statuses).
pub const REVOKED_SLOT: usize = 7;

/// Envoys per hostcrate and status under one policy generation, kept incrementally.
/// An envoy is counted iff its `policy_generation` is the tally's: a policy change
/// resets the tally and the reclassifying sweep (or the envoy's next check-in, whichever
/// comes first) counts each envoy again exactly once.
#[derive(Default)]
struct HostcrateTally {
    generation: u32,
    rows: HashMap<u32, [i64; 8]>,
}

impl HostcrateTally {
    fn add(&mut self, place: TallyPlace, delta: i64) {
        let (generation, hostcrate, slot) = place;
        if generation == self.generation {
            self.rows.entry(hostcrate).or_default()[slot] += delta;
        }
    }
}

fn tally_place(st: &EnvoyState) -> TallyPlace {
    place_of(st, st.effective_status())
}

/// The tally place of `st` given its already computed effective status.
#[inline]
fn place_of(st: &EnvoyState, status: Option<Compliance>) -> TallyPlace {
    let slot = status.map_or(REVOKED_SLOT, Compliance::index);
    (st.policy_generation, st.hostcrate, slot)
}

/// A point-in-time copy of the counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetCounts {
    pub total: u64,
    pub revoked: u64,
    pub by_status: [u64; 7],
}

impl FleetCounts {
    pub fn status(&self, s: Compliance) -> u64 {
        self.by_status[s.index()]
    }
}

/// Lock order, everywhere: `hostnames` → a shard's `records` → an envoy's state →
/// `tally` → a shard's `dirty` list. A path may skip any of them but never take one
/// while holding a later one (a re-key replacing a record while a check-in updates it
/// must not deadlock).
pub struct FleetIndex {
    shards: Box<[Shard]>,
    /// Hostname → envoy, keyed by a 64-bit hash of the hostname so the index costs
    /// 16 bytes an envoy; the rare colliding hostname goes to `hostname_overflow`.
    hostnames: RwLock<HostnameIndex>,
    counters: Counters,
    tally: Mutex<HostcrateTally>,
    total: AtomicU64,
    hasher: RandomState,
}

#[derive(Default)]
struct HostnameIndex {
    primary: HashMap<u64, EnvoyId, RandomState>,
    overflow: HashMap<Box<str>, EnvoyId, RandomState>,
}

impl Default for FleetIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl FleetIndex {
    pub fn new() -> Self {
        let shards = (0..SHARDS)
            .map(|_| Shard {
                records: RwLock::new(HashMap::default()),
                dirty: Mutex::new(Vec::new()),
            })
            .collect();
        Self {
            shards,
            hostnames: RwLock::new(HostnameIndex::default()),
            counters: Counters::default(),
            tally: Mutex::new(HostcrateTally {
                generation: u32::MAX - 1,
                rows: HashMap::new(),
            }),
            total: AtomicU64::new(0),
            hasher: RandomState::default(),
        }
    }

    pub const fn shard_count() -> usize {
        SHARDS
    }

    fn shard(&self, id: EnvoyId) -> &Shard {
        &self.shards[(id.get() % SHARDS as u64) as usize]
    }

    /// The hot-path lookup: a shard read lock held for one hash probe and an `Arc` clone.
    #[inline]
    pub fn get(&self, id: EnvoyId) -> Option<Arc<EnvoyRecord>> {
        self.shard(id)
            .records
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id.get())
            .cloned()
    }

    pub fn len(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies `f` to an envoy's state under its lock, then brings the status counters
    /// and the dirty list up to date with what `f` changed.
    #[inline]
    pub fn update<R>(&self, record: &EnvoyRecord, f: impl FnOnce(&mut EnvoyState) -> R) -> R {
        let mut st = record.lock();
        let before = st.effective_status();
        let placed = place_of(&st, before);
        let was_dirty = st.dirty;
        let out = f(&mut st);
        if st.detached {
            return out;
        }
        let after = st.effective_status();
        if before != after {
            self.count(before, -1);
            self.count(after, 1);
        }
        let replaced = place_of(&st, after);
        if placed != replaced {
            let mut tally = self.lock_tally();
            tally.add(placed, -1);
            tally.add(replaced, 1);
        }
        if st.dirty && !was_dirty {
            self.shard(record.id)
                .dirty
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(record.id);
        }
        out
    }

    fn lock_tally(&self) -> std::sync::MutexGuard<'_, HostcrateTally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a new per-hostcrate tally for policy `generation`; call before that
    /// generation serves, then [`FleetIndex::reclassify`] once it does.
    pub fn reset_tally(&self, generation: u32) {
        let mut tally = self.lock_tally();
        tally.generation = generation;
        tally.rows.clear();
    }

    /// Puts every envoy not yet classified under `generation` into its hostcrate (a
    /// sweep at policy change, never per request).
    pub fn reclassify(&self, generation: u32, hostcrate_of: impl Fn(&str) -> u32) {
        self.for_each(|r| {
            self.update(r, |st| {
                if st.policy_generation != generation {
                    st.hostcrate = hostcrate_of(&r.hostname);
                    st.policy_generation = generation;
                }
            })
        });
    }

    /// Envoys per hostcrate index and status slot (`REVOKED_SLOT` last) under the
    /// tally's generation.
    pub fn hostcrate_counts(&self) -> (u32, Vec<(u32, [u64; 8])>) {
        let tally = self.lock_tally();
        let mut rows: Vec<(u32, [u64; 8])> = tally
            .rows
            .iter()
            .map(|(h, row)| (*h, row.map(|v| v.max(0) as u64)))
            .filter(|(_, row)| row.iter().any(|v| *v > 0))
            .collect();
        rows.sort_by_key(|(h, _)| *h);
        (tally.generation, rows)
    }

    fn count(&self, status: Option<Compliance>, delta: i64) {
        let slot = match status {
            Some(s) => &self.counters.by_status[s.index()],
            None => &self.counters.revoked,
        };
        slot.fetch_add(delta, Ordering::Relaxed);
    }

    /// Adds an envoy (enrollment or start-up), or replaces one with the same id (re-key).
    pub fn insert(&self, record: EnvoyRecord, state: EnvoyState) {
        let id = record.id;
        let status = state.effective_status();
        let place = tally_place(&state);
        *record.lock() = EnvoyState {
            detached: false,
            ..state
        };
        let record = Arc::new(record);
        let hostname_hash = self.hostname_hash(&record.hostname);
        let previous = self
            .shard(id)
            .records
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.get(), record.clone());
        match &previous {
            Some(old) => {
                // The replaced record leaves the counts as it stands, under its lock:
                // an update running on it meanwhile moves it first or after, not between.
                let mut st = old.lock();
                st.detached = true;
                self.lock_tally().add(tally_place(&st), -1);
                self.count(st.effective_status(), -1);
            }
            None => {
                self.total.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.lock_tally().add(place, 1);
        self.count(status, 1);
        let mut names = self.hostnames.write().unwrap_or_else(|p| p.into_inner());
        match names.primary.get(&hostname_hash) {
            Some(other) if *other != id => {
                let same_name = self.get(*other).filter(|o| o.hostname == record.hostname);
                match same_name {
                    // One hostname, one active envoy: a revoked record (loaded after
                    // the envoy that replaced it) never hides the active one.
                    Some(o) if status.is_none() && !o.read(|st| st.revoked) => {}
                    Some(_) => {
                        names.primary.insert(hostname_hash, id);
                    }
                    None => {
                        names.overflow.insert(record.hostname.clone(), id);
                    }
                }
            }
            _ => {
                names.primary.insert(hostname_hash, id);
            }
        }
    }

    /// Forgets an envoy (handed off to another spoke). Its dirty-list entry, if any,
    /// finds nothing at flush time.
    pub fn remove(&self, id: EnvoyId) -> Option<Arc<EnvoyRecord>> {
        let record = self
            .shard(id)
            .records
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id.get())?;
        {
            let mut st = record.lock();
            st.detached = true;
            self.count(st.effective_status(), -1);
            self.lock_tally().add(tally_place(&st), -1);
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
        let hash = self.hostname_hash(&record.hostname);
        let mut names = self.hostnames.write().unwrap_or_else(|p| p.into_inner());
        if names.primary.get(&hash) == Some(&id) {
            names.primary.remove(&hash);
        }
        if names.overflow.get(&record.hostname) == Some(&id) {
            names.overflow.remove(&record.hostname);
        }
        Some(record)
    }

    fn hostname_hash(&self, hostname: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(hostname)
    }

    /// The envoy enrolled under `hostname`, if any.
    pub fn by_hostname(&self, hostname: &str) -> Option<Arc<EnvoyRecord>> {
        let names = self.hostnames.read().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = names.primary.get(&self.hostname_hash(hostname))
            && let Some(r) = self.get(*id)
            && &*r.hostname == hostname
        {
            return Some(r);
        }
        names.overflow.get(hostname).and_then(|id| self.get(*id))
    }

    /// Takes the ids marked dirty in one shard since the last call.
    pub fn take_dirty(&self, shard: usize) -> Vec<EnvoyId> {
        std::mem::take(
            &mut *self.shards[shard]
                .dirty
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    /// Envoys waiting for a flush (for stats; not exact under concurrent check-ins).
    pub fn dirty_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.dirty.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Hands `f` the state of each dirty envoy of `shard`, clearing its dirty bit under
    /// the record's lock so a concurrent check-in re-marks it for the next flush. The
    /// shard's records are looked up under one read of its map, and locked after it is
    /// released (no shard lock is ever held while a record's is taken).
    pub fn take_dirty_states(&self, shard: usize, mut f: impl FnMut(EnvoyId, &EnvoyState)) {
        let ids = self.take_dirty(shard);
        if ids.is_empty() {
            return;
        }
        let records: Vec<Arc<EnvoyRecord>> = {
            let map = self.shards[shard]
                .records
                .read()
                .unwrap_or_else(|p| p.into_inner());
            ids.iter()
                .filter_map(|id| map.get(&id.get()).cloned())
                .collect()
        };
        for record in records {
            let mut st = record.lock();
            if st.dirty {
                st.dirty = false;
                f(record.id, &st);
            }
        }
    }

    pub fn counts(&self) -> FleetCounts {
        let mut c = FleetCounts {
            total: self.len(),
            revoked: self.counters.revoked.load(Ordering::Relaxed).max(0) as u64,
            ..Default::default()
        };
        for (slot, v) in c.by_status.iter_mut().zip(&self.counters.by_status) {
            *slot = v.load(Ordering::Relaxed).max(0) as u64;
        }
        c
    }

    /// Visits every record, one shard at a time (background sweeps only).
    pub fn for_each(&self, mut f: impl FnMut(&Arc<EnvoyRecord>)) {
        self.until(|| false, |r| f(r));
    }

    /// Visits records, one shard at a time, until `stop` says so (it is asked once per
    /// shard): queries stop when their caller's deadline passes. False if stopped.
    pub fn until(&self, stop: impl Fn() -> bool, mut f: impl FnMut(&Arc<EnvoyRecord>)) -> bool {
        for shard in self.shards.iter() {
            if stop() {
                return false;
            }
            let records: Vec<Arc<EnvoyRecord>> = shard
                .records
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect();
            records.iter().for_each(&mut f);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64, host: &str) -> EnvoyRecord {
        let key = vigo_common::signing::generate_key().verifying_key();
        EnvoyRecord::new(EnvoyId::new(n).unwrap(), EnvoyKey::parsed(key), host, 1000)
    }

    #[test]
    fn a_stored_key_is_parsed_on_first_use_and_a_damaged_one_verifies_nothing() {
        let key = vigo_common::signing::generate_key().verifying_key();
        let stored = EnvoyKey::stored(key.to_bytes());
        assert!(stored == key && stored.as_bytes() == key.as_bytes());
        assert_eq!(stored.verifying(), Some(key));
        assert_eq!(EnvoyKey::parsed(key).verifying(), Some(key));
        // 32 bytes that are no point on the curve (a damaged database).
        let bad = (0u8..=255)
            .map(|b| [b; 32])
            .find(|bytes| VerifyingKey::from_bytes(bytes).is_err())
            .expect("some bytes are no key");
        assert_eq!(EnvoyKey::stored(bad).verifying(), None);
    }

    #[test]
    fn counters_follow_status_changes_without_scans() {
        let fleet = FleetIndex::new();
        for n in 1..=10 {
            fleet.insert(record(n, &format!("h{n}")), EnvoyState::new(0));
        }
        assert_eq!(fleet.counts().status(Compliance::NoData), 10);
        let r = fleet.get(EnvoyId::new(3).unwrap()).unwrap();
        fleet.update(&r, |s| s.run_status = Compliance::Converged);
        fleet.update(&r, |s| s.offline = true);
        let r4 = fleet.get(EnvoyId::new(4).unwrap()).unwrap();
        fleet.update(&r4, |s| s.revoked = true);
        let c = fleet.counts();
        assert_eq!(c.status(Compliance::NoData), 8);
        assert_eq!(c.status(Compliance::Offline), 1);
        assert_eq!(c.status(Compliance::Converged), 0);
        assert_eq!(c.revoked, 1);
        assert_eq!(c.total, 10);
        fleet.update(&r, |s| s.offline = false);
        assert_eq!(fleet.counts().status(Compliance::Converged), 1);
    }

    /// A re-key (insert over the same id) racing updates of the record it replaces: no
    /// deadlock (the lock order is one), and the counts add up afterwards (updates
    /// through a reference to the replaced record no longer count).
    #[test]
    fn replacing_a_record_while_it_is_updated_keeps_one_lock_order() {
        let fleet = Arc::new(FleetIndex::new());
        fleet.reset_tally(0);
        let id = EnvoyId::new(7).unwrap();
        fleet.insert(record(7, "h7"), EnvoyState::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let updater = {
            let (fleet, stop) = (fleet.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(r) = fleet.get(id) {
                        fleet.update(&r, |s| {
                            s.run_status = if n.is_multiple_of(2) {
                                Compliance::Failed
                            } else {
                                Compliance::Converged
                            };
                            s.policy_generation = 0;
                        });
                    }
                    n += 1;
                }
            })
        };
        for _ in 0..20_000 {
            fleet.insert(record(7, "h7"), EnvoyState::new(0));
        }
        stop.store(true, Ordering::Relaxed);
        updater.join().unwrap();
        assert_eq!(fleet.len(), 1);
        let c = fleet.counts();
        let by_status: u64 = Compliance::ALL.iter().map(|s| c.status(*s)).sum();
        assert_eq!(by_status + c.revoked, 1, "one envoy, counted once");
        // The tally counts it iff its last update (not a fresh insert) placed it.
        let placed = fleet.get(id).unwrap().read(|s| s.policy_generation == 0);
        let rows = fleet.hostcrate_counts().1;
        let tallied: u64 = rows.iter().map(|r| r.1.iter().sum::<u64>()).sum();
        assert_eq!(tallied, u64::from(placed));
    }

    #[test]
    fn hostcrate_tally_follows_changes_and_policy_generations() {
        let fleet = FleetIndex::new();
        for n in 1..=6 {
            fleet.insert(record(n, &format!("h{n}")), EnvoyState::new(0));
        }
        fleet.reset_tally(1);
        fleet.reclassify(1, |h| if h < "h4" { 0 } else { 1 });
        let (generation, rows) = fleet.hostcrate_counts();
        assert_eq!(generation, 1);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].1[Compliance::NoData.index()], 3);
        let r = fleet.get(EnvoyId::new(2).unwrap()).unwrap();
        fleet.update(&r, |s| s.run_status = Compliance::Failed);
        fleet.update(&fleet.get(EnvoyId::new(5).unwrap()).unwrap(), |s| {
            s.revoked = true
        });
        let rows = fleet.hostcrate_counts().1;
        assert_eq!(rows[0].1[Compliance::Failed.index()], 1);
        assert_eq!(rows[0].1[Compliance::NoData.index()], 2);
        assert_eq!(rows[1].1[REVOKED_SLOT], 1);
        // A new generation: an envoy classified by a check-in before the sweep is
        // counted once, not twice.
        fleet.reset_tally(2);
        fleet.update(&r, |s| {
            s.policy_generation = 2;
            s.hostcrate = 0;
        });
        fleet.reclassify(2, |_| 0);
        let rows = fleet.hostcrate_counts().1;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].1.iter().sum::<u64>(), 6);
        fleet.remove(r.id);
        assert_eq!(fleet.hostcrate_counts().1[0].1.iter().sum::<u64>(), 5);
        assert_eq!(fleet.len(), 5);
        assert_eq!(fleet.counts().status(Compliance::Failed), 0);
        assert!(fleet.by_hostname("h2").is_none());
    }

    #[test]
    fn dirty_envoys_are_listed_once_until_flushed() {
        let fleet = FleetIndex::new();
        fleet.insert(record(5, "a"), EnvoyState::new(0));
        let r = fleet.get(EnvoyId::new(5).unwrap()).unwrap();
        fleet.update(&r, |s| s.mark_dirty());
        fleet.update(&r, |s| {
            s.sequence = 3;
            s.mark_dirty()
        });
        let shard = 5 % FleetIndex::shard_count();
        let taken = |fleet: &FleetIndex| {
            let mut seen = Vec::new();
            fleet.take_dirty_states(shard, |id, st| seen.push((id.get(), st.sequence)));
            seen
        };
        assert_eq!(taken(&fleet), vec![(5, 3)], "listed once, latest state");
        assert_eq!(taken(&fleet), vec![], "flushed state is clean");
        fleet.update(&r, |s| s.mark_dirty());
        assert_eq!(taken(&fleet), vec![(5, 3)], "a new change re-lists it");
        // A removed envoy's dirty entry finds nothing.
        fleet.update(&r, |s| s.mark_dirty());
        fleet.remove(r.id);
        assert_eq!(taken(&fleet), vec![]);
    }

    #[test]
    fn hostnames_resolve_and_rekey_replaces() {
        let fleet = FleetIndex::new();
        fleet.insert(record(7, "web-1"), EnvoyState::new(0));
        assert_eq!(fleet.by_hostname("web-1").unwrap().id.get(), 7);
        assert!(fleet.by_hostname("web-2").is_none());
        let old_key = *fleet.get(EnvoyId::new(7).unwrap()).unwrap().key.as_bytes();
        fleet.insert(record(7, "web-1"), EnvoyState::new(0));
        assert_eq!(fleet.len(), 1);
        assert_ne!(
            *fleet.get(EnvoyId::new(7).unwrap()).unwrap().key.as_bytes(),
            old_key
        );
        assert_eq!(fleet.counts().status(Compliance::NoData), 1);
    }

    /// At start-up records load in id order: a revoked envoy with a higher id than the
    /// envoy that replaced it must not take its hostname back.
    #[test]
    fn a_revoked_record_never_hides_the_active_envoy() {
        let fleet = FleetIndex::new();
        fleet.insert(record(7, "web-1"), EnvoyState::new(0));
        let revoked = EnvoyState {
            revoked: true,
            ..EnvoyState::new(0)
        };
        fleet.insert(record(900, "web-1"), revoked.clone());
        assert_eq!(fleet.by_hostname("web-1").unwrap().id.get(), 7);
        // Loaded the other way round, the active one takes the name.
        let fleet = FleetIndex::new();
        fleet.insert(record(900, "web-1"), revoked);
        fleet.insert(record(7, "web-1"), EnvoyState::new(0));
        assert_eq!(fleet.by_hostname("web-1").unwrap().id.get(), 7);
    }

    #[test]
    fn a_walk_stops_between_shards_when_told() {
        let fleet = FleetIndex::new();
        for n in 1..=1000 {
            fleet.insert(record(n, &format!("h{n}")), EnvoyState::new(0));
        }
        let mut seen = 0;
        assert!(fleet.until(|| false, |_| seen += 1));
        assert_eq!(seen, 1000);
        let asked = std::cell::Cell::new(0);
        let mut partial = 0;
        let finished = fleet.until(
            || {
                asked.set(asked.get() + 1);
                asked.get() > 2
            },
            |_| partial += 1,
        );
        assert!(!finished);
        assert!(
            partial > 0 && partial < 1000,
            "stopped after two shards: {partial}"
        );
    }
}
