//! Shedding load with a retry hint, the gRPC way: a busy server answers
//! `RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms` metadata, and a client that sees
//! it waits about that long (jittered, so a shed herd does not come back as one) and
//! tries again. `RESOURCE_EXHAUSTED` without the hint means "too large": retrying the
//! same request cannot succeed.

use std::time::{Duration, Instant};

use tonic::{Code, Status};

/// The metadata key of the retry hint, in milliseconds (gRPC's server pushback).
pub const PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

/// When a request reached the server: the connection stamps it before the service
/// runs, so a service can tell how long the request waited for a worker.
#[derive(Clone, Copy, Debug)]
pub struct Received(pub Instant);

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
