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
