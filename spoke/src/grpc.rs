//! Helpers shared by the spoke's gRPC services.

use std::future::Future;

use tonic::Extensions;
use vigo_common::net::PeerInfo;
use vigo_common::pki::Peer;

use crate::error::SpokeError;

static ANONYMOUS: Peer = Peer::Anonymous;

/// Who is calling, as the TLS handshake established (anonymous without a certificate).
pub fn peer(extensions: &Extensions) -> &Peer {
    extensions
        .get::<PeerInfo>()
        .map(|p| &p.peer)
        .unwrap_or(&ANONYMOUS)
}

/// Runs `work` to completion on its own task even if the caller goes away: work that
/// writes durably and then updates memory must never stop between the two.
pub async fn detach<T: Send + 'static>(
    work: impl Future<Output = Result<T, SpokeError>> + Send + 'static,
) -> Result<T, SpokeError> {
    tokio::spawn(work)
        .await
        .map_err(|_| SpokeError::ShuttingDown)?
}

/// Set when the request that started some blocking work is gone — its deadline passed
/// or its caller left — so the work stops at its next check instead of running on.
#[derive(Clone, Default)]
pub struct Cancel(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    pub fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Sets its [`Cancel`] when dropped; the request's future holds it.
struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        (self.0).0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs a walk over the fleet off the async workers; dropping the returned future (the
/// request's deadline) cancels the walk.
pub async fn walk<T: Send + 'static>(
    work: impl FnOnce(&Cancel) -> Result<T, SpokeError> + Send + 'static,
) -> Result<T, SpokeError> {
    let cancel = Cancel::default();
    let _armed = CancelOnDrop(cancel.clone());
    tokio::task::spawn_blocking(move || work(&cancel))
        .await
        .map_err(|_| SpokeError::ShuttingDown)?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query whose caller is gone stops: dropping the request's future (what the
    /// deadline does) sets the flag the blocking walk checks.
    #[tokio::test]
    async fn a_walk_stops_when_its_request_is_dropped() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let query = walk(move |cancel| {
            while !cancel.is_set() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let _ = done_tx.send(());
            Ok(())
        });
        let deadline = tokio::time::timeout(std::time::Duration::from_millis(20), query).await;
        assert!(deadline.is_err(), "the walk runs until cancelled");
        done_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the walk saw its request go and stopped");
    }
}
