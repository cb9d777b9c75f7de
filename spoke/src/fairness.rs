//! Each envoy's fair share of its spoke (DESIGN §9: one compromised machine must not
//! get its spoke to shed the others).
//!
//! Before the spoke-wide shedder counts a request, the envoy its certificate names gets
//! a place among at most [`MAX_IN_FLIGHT`] of its own requests; beyond, it is refused
//! with a retry hint, so one envoy opening connections and streams by the dozen is
//! turned away first and costs the others nothing. An envoy whose signature failed to
//! verify is a suspect for [`SUSPECT_FOR`]: its requests are verified alone (never in a
//! batch with honest envoys', whose batch one bad signature would spoil); from its
//! [`THROTTLE_AFTER`]th bad signature on, at most one per [`SUSPECT_EVERY`] is looked
//! at — the rest refused before any work, with a long retry hint. (One failure alone
//! still gets every later refusal's own precise status.)
//! A revoked envoy is refused here too, before its body is read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Status;
use vigo_common::net::shedding::busy;

/// Requests one envoy may have in progress at once: an honest agent has at most a
/// check-in, a report, a task result and its stream.
pub const MAX_IN_FLIGHT: u32 = 8;
/// How long an envoy stays a suspect after a bad signature.
pub const SUSPECT_FOR: Duration = Duration::from_secs(600);
/// A suspect's requests are verified at most this often once it has failed this often.
pub const SUSPECT_EVERY: Duration = Duration::from_secs(1);
pub const THROTTLE_AFTER: u32 = 3;
/// What a refused suspect is told to wait.
const SUSPECT_RETRY: Duration = Duration::from_secs(60);
const SHARDS: usize = 16;

#[derive(Default)]
struct Entry {
    in_flight: u32,
    /// Until when its requests are verified alone, and when one last was.
    suspect_until: Option<Instant>,
    last_checked: Option<Instant>,
    /// Bad signatures while a suspect.
    bad: u32,
}

impl Entry {
    fn idle(&self, now: Instant) -> bool {
        self.in_flight == 0 && self.suspect_until.is_none_or(|until| until <= now)
    }
}

/// Every connected envoy's share, sharded by envoy id.
pub struct Shares {
    shards: [Mutex<HashMap<u64, Entry>>; SHARDS],
    refused: metrics::Counter,
    suspects: metrics::Counter,
}

impl Default for Shares {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            refused: metrics::counter!("vigo_envoy_share_refusals_total", "reason" => "in_flight"),
            suspects: metrics::counter!("vigo_envoy_share_refusals_total", "reason" => "suspect"),
        }
    }
}

/// An admitted request's place in its envoy's share; given back on drop.
pub struct Place {
    shares: Arc<Shares>,
    envoy: u64,
}

impl Drop for Place {
    fn drop(&mut self) {
        let now = Instant::now();
        self.shares.with(self.envoy, |shard| {
            if let Some(e) = shard.get_mut(&self.envoy) {
                e.in_flight = e.in_flight.saturating_sub(1);
                if e.idle(now) {
                    shard.remove(&self.envoy);
                }
            }
        });
    }
}

impl Shares {
    fn with<T>(&self, envoy: u64, f: impl FnOnce(&mut HashMap<u64, Entry>) -> T) -> T {
        let shard = &self.shards[(envoy as usize) % SHARDS];
        f(&mut shard.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A place for one more request of `envoy`, or the refusal to answer.
    pub fn admit(self: &Arc<Self>, envoy: u64) -> Result<Place, Status> {
        let now = Instant::now();
        self.with(envoy, |shard| {
            let e = shard.entry(envoy).or_default();
            if e.in_flight >= MAX_IN_FLIGHT {
                self.refused.increment(1);
                return Err(busy(
                    format!("this envoy has {MAX_IN_FLIGHT} requests in progress already"),
                    Duration::from_secs(5),
                ));
            }
            if e.suspect_until.is_some_and(|until| until > now) && e.bad >= THROTTLE_AFTER {
                if e.last_checked
                    .is_some_and(|at| now.duration_since(at) < SUSPECT_EVERY)
                {
                    self.suspects.increment(1);
                    return Err(busy(
                        "this envoy's requests failed verification lately: one a second",
                        SUSPECT_RETRY,
                    ));
                }
                e.last_checked = Some(now);
            }
            e.in_flight += 1;
            Ok(Place {
                shares: self.clone(),
                envoy,
            })
        })
    }

    /// Whether `envoy`'s signatures are to be verified alone.
    pub fn suspect(&self, envoy: u64) -> bool {
        let now = Instant::now();
        self.with(envoy, |shard| {
            shard
                .get(&envoy)
                .and_then(|e| e.suspect_until)
                .is_some_and(|until| until > now)
        })
    }

    /// A signature of `envoy`'s failed to verify.
    pub fn bad_signature(&self, envoy: u64) {
        let now = Instant::now();
        self.with(envoy, |shard| {
            let e = shard.entry(envoy).or_default();
            if e.suspect_until.is_none_or(|until| until <= now) {
                e.bad = 0;
            }
            e.bad = e.bad.saturating_add(1);
            e.suspect_until = Some(now + SUSPECT_FOR);
            e.last_checked = Some(now);
        });
    }

    /// Envoys with a place or a suspicion now (the table's size).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

pub fn describe_metrics() {
    metrics::describe_counter!(
        "vigo_envoy_share_refusals_total",
        "Envoy requests refused before any work for their envoy's share: more than 8 of its own in progress (reason in_flight), or a suspect's beyond one a second after a bad signature (reason suspect)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envoy_holds_at_most_its_share_and_it_comes_back() {
        let shares = Arc::new(Shares::default());
        let held: Vec<Place> = (0..MAX_IN_FLIGHT)
            .map(|_| shares.admit(7).unwrap())
            .collect();
        let refused = shares.admit(7).err().expect("beyond its share");
        assert!(vigo_common::net::shedding::retry_after(&refused).is_some());
        assert!(shares.admit(8).is_ok(), "another envoy is not affected");
        drop(held);
        assert!(shares.admit(7).is_ok());
        assert_eq!(
            shares.tracked(),
            0,
            "nothing kept for envoys with nothing in progress"
        );
    }

    #[test]
    fn a_suspect_is_verified_alone_and_at_most_once_a_second() {
        let shares = Arc::new(Shares::default());
        assert!(!shares.suspect(7));
        shares.bad_signature(7);
        assert!(shares.suspect(7));
        drop(
            shares
                .admit(7)
                .expect("one failure: still looked at, alone"),
        );
        for _ in 1..THROTTLE_AFTER {
            shares.bad_signature(7);
        }
        let refused = shares
            .admit(7)
            .err()
            .expect("a second request within the second");
        assert_eq!(
            vigo_common::net::shedding::retry_after(&refused),
            Some(SUSPECT_RETRY)
        );
        assert!(!shares.suspect(8), "others are batched as before");
        assert_eq!(
            shares.tracked(),
            1,
            "the suspicion is kept with nothing in progress"
        );
    }
}
