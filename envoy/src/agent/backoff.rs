//! The wait between attempts to send queued run reports: doubling, with jitter, and at
//! least as long as a busy spoke's retry hint.

use std::time::{Duration, Instant};

/// Doubling waits with jitter between report flush attempts.
pub(super) struct Backoff {
    next: Duration,
    pub(super) due: Option<Instant>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(300);

    pub(super) fn new() -> Self {
        Self {
            next: Self::FIRST,
            due: None,
        }
    }

    /// A failed attempt; a busy spoke's retry hint, if it gave one, is waited at least.
    pub(super) fn failed(&mut self, hint: Option<Duration>) {
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        let wait = self.next.mul_f64(jitter);
        let wait = hint.map_or(wait, |h| wait.max(vigo_common::net::shedding::jittered(h)));
        self.due = Some(Instant::now() + wait);
        self.next = (self.next * 2).min(Self::MAX);
    }

    pub(super) fn succeeded(&mut self) {
        self.next = Self::FIRST;
        self.due = None;
    }
}
