//! Shedding load with a retry hint, the gRPC way: a busy server answers
//! `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms` metadata, and a client that sees
//! it waits about that long (jittered, so a shed herd does not come back as one) and
//! tries again. `RESOURCE_EXHAUSTED` without the hint means "too large": retrying the
//! same request cannot succeed.
//!
//! A [`Shedder`] decides in the admission table, before the request body is read and
//! before the service runs: a shed request costs the server its headers and a
//! trailers-only answer, nothing more.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tonic::{Code, Status};

/// The metadata key of the retry hint, in milliseconds (gRPC's server pushback).
pub const PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

/// When a request reached the server: the connection stamps it before the service
/// runs, so a service can tell how long the request waited for a worker.
#[derive(Clone, Copy, Debug)]
pub struct Received(pub Instant);

/// When a server sheds requests of one kind: more than `max_in_flight` in progress, or
/// one that waited longer than `max_queue_wait` between reaching the server and being
/// admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SheddingLimits {
    pub max_in_flight: usize,
    pub max_queue_wait: Duration,
    pub retry_after: Duration,
}

/// Counts requests in progress and sheds beyond the limits.
pub struct Shedder {
    in_flight: Arc<AtomicUsize>,
    limits: SheddingLimits,
    shed: metrics::Counter,
}

/// One admitted request in progress; it leaves the count when dropped.
#[derive(Debug)]
pub struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shedder {
    /// `what` names the requests in the `vigo_requests_shed_total` metric.
    pub fn new(limits: SheddingLimits, what: &'static str) -> Self {
        metrics::describe_counter!(
            "vigo_requests_shed_total",
            "Requests a saturated server refused with a retry hint before reading their body, by kind"
        );
        Self {
            in_flight: Arc::new(AtomicUsize::new(0)),
            limits,
            shed: metrics::counter!("vigo_requests_shed_total", "requests" => what),
        }
    }

    /// Admits a request that reached the server at `received`, or refuses it with the
    /// retry hint.
    pub fn admit(&self, received: Option<Instant>) -> Result<Ticket, Status> {
        let busy = self.in_flight.fetch_add(1, Ordering::Relaxed) >= self.limits.max_in_flight;
        let ticket = Ticket(self.in_flight.clone());
        let waited = received.map_or(Duration::ZERO, |r| r.elapsed());
        if busy || waited > self.limits.max_queue_wait {
            self.shed.increment(1);
            return Err(busy_status(self.limits.retry_after));
        }
        Ok(ticket)
    }

    /// Requests in progress now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

fn busy_status(retry_after: Duration) -> Status {
    busy(
        format!("the server is saturated; retry in about {retry_after:?}"),
        retry_after,
    )
}

/// A refusal that asks the client to come back after `retry_after`.
pub fn busy(message: impl Into<String>, retry_after: Duration) -> Status {
    let mut status = Status::resource_exhausted(message);
    status.metadata_mut().insert(
        PUSHBACK_HEADER,
        tonic::metadata::MetadataValue::from(retry_after.as_millis() as u64),
    );
    status
}

/// The retry hint of a shed request; `None` for every other status.
pub fn retry_after(status: &Status) -> Option<Duration> {
    if status.code() != Code::ResourceExhausted {
        return None;
    }
    let ms: u64 = status
        .metadata()
        .get(PUSHBACK_HEADER)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    // A hint beyond an hour is not one a client should obey blindly.
    Some(Duration::from_millis(ms.min(3_600_000)))
}

/// `hint` spread over half to one and a half of itself.
pub fn jittered(hint: Duration) -> Duration {
    hint.mul_f64(0.5 + rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shedder_counts_in_flight_and_sheds_beyond_its_limits() {
        let shedder = Shedder::new(
            SheddingLimits {
                max_in_flight: 2,
                max_queue_wait: Duration::from_millis(100),
                retry_after: Duration::from_secs(2),
            },
            "test",
        );
        let now = Some(Instant::now());
        let a = shedder.admit(now).unwrap();
        let _b = shedder.admit(now).unwrap();
        let shed = shedder.admit(now).err().expect("a third is shed");
        assert_eq!(retry_after(&shed), Some(Duration::from_secs(2)));
        drop(a);
        assert_eq!(shedder.in_flight(), 1);
        let c = shedder.admit(now).unwrap();
        let old = Some(Instant::now() - Duration::from_secs(1));
        drop(c);
        assert!(shedder.admit(old).is_err(), "waited too long: shed");
        assert_eq!(shedder.in_flight(), 1, "a shed request leaves the count");
    }

    #[test]
    fn the_hint_travels_with_resource_exhausted_only() {
        let shed = busy("busy", Duration::from_millis(1500));
        assert_eq!(retry_after(&shed), Some(Duration::from_millis(1500)));
        assert_eq!(retry_after(&Status::resource_exhausted("too large")), None);
        let mut other = Status::unavailable("down");
        other
            .metadata_mut()
            .insert(PUSHBACK_HEADER, "10".parse().unwrap());
        assert_eq!(retry_after(&other), None);
        for _ in 0..100 {
            let j = jittered(Duration::from_secs(2));
            assert!(j >= Duration::from_secs(1) && j <= Duration::from_secs(3));
        }
    }
}
