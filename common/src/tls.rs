//! TLS for every Vigo connection: rustls with the ring provider only, TLS 1.3, ALPN h2.
//! Server and client configs, and client channels. Servers do the handshake themselves
//! (`crate::net::listen`) so the peer's identity is read from its certificate once per
//! connection, not per request.

use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::pki::{Peer, Role};

pub mod direct;
pub mod tickets;
use crate::{Error, pem};

/// The one crypto provider of every Vigo binary, built once and shared by every config.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Installs ring as the process-wide rustls provider. Binaries call this first thing in
/// `main`; a second call is harmless.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, Error> {
    let mut roots = RootCertStore::empty();
    for cert in pem::parse_certs(ca_pem)? {
        roots.add(cert).map_err(|e| Error::Malformed {
            what: "CA certificate",
            why: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

fn tls_err(what: &'static str) -> impl Fn(rustls::Error) -> Error {
    move |e| Error::Tls {
        what,
        why: e.to_string(),
    }
}

/// Whether a server demands client certificates at the TLS layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Certificates are verified when presented; services decide who may do what.
    /// Enrollment needs this: a new envoy has no certificate yet.
    Optional,
    Required,
}

/// A TLS 1.3 server config with ALPN h2 and our CA as the client trust root.
pub fn server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    client_auth: ClientAuth,
) -> Result<ServerConfig, Error> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider.clone());
    let verifier = match client_auth {
        ClientAuth::Optional => verifier.allow_unauthenticated(),
        ClientAuth::Required => verifier,
    }
    .build()
    .map_err(|e| Error::Tls {
        what: "client verifier",
        why: e.to_string(),
    })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("server protocol versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(pem::parse_certs(cert_pem)?, pem::parse_key(key_pem)?)
        .map_err(tls_err("server certificate"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    // Stateless resumption: a reconnecting envoy skips the certificate exchange and the
    // signature checks, and the server keeps no per-session memory.
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(tls_err("ticketer"))?;
    config.send_tls13_tickets = 1;
    Ok(config)
}

/// A TLS 1.3 client config trusting our CA, with an optional client identity, that
/// talks only to servers whose certificate names one of `servers` (a role check after
/// the chain check: an envoy will not send its check-ins to a hub or another envoy's
/// certificate, a spoke takes its policy only from a hub).
pub fn client_config(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
    servers: &'static [Role],
) -> Result<ClientConfig, Error> {
    client_config_verified_by(server_verifier(ca_pem, servers)?, identity)
}

/// The server check of [`client_config`]: the chain to our CA, then the role the
/// server's certificate names. Built once, it can be shared by many client configs (a
/// simulator's thousands of envoys each present their own certificate but trust the
/// same CA).
pub fn server_verifier(
    ca_pem: &str,
    servers: &'static [Role],
) -> Result<Arc<dyn ServerCertVerifier>, Error> {
    Ok(Arc::new(RoleVerifier {
        chain: chain_verifier(ca_pem)?,
        servers,
        revoked: None,
    }))
}

/// The chain check to our CA (names included), under the one crypto provider.
fn chain_verifier(ca_pem: &str) -> Result<Arc<rustls::client::WebPkiServerVerifier>, Error> {
    rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .build()
        .map_err(|e| Error::Tls {
            what: "server verifier",
            why: e.to_string(),
        })
}

/// As [`client_config`], and a server whose certificate is in `revoked` is refused
/// during the handshake: what hubs and spokes use towards each other, so a revoked
/// node's key cannot serve as a node to them (the set is the one their servers check).
pub fn client_config_refusing(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
    servers: &'static [Role],
    revoked: Arc<crate::net::RevokedCerts>,
) -> Result<ClientConfig, Error> {
    let verifier = Arc::new(RoleVerifier {
        chain: chain_verifier(ca_pem)?,
        servers,
        revoked: Some(revoked),
    });
    let mut config = client_config_verified_by(verifier, identity)?;
    // A resumed session is not verified again: between nodes (a few connections, not
    // a fleet's) every handshake checks the certificate, and the revocations with it.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// A TLS 1.3 client config (ALPN h2) checking servers with `verifier` (from
/// [`server_verifier`]), with an optional client identity (certificate and key PEM).
pub fn client_config_verified_by(
    verifier: Arc<dyn ServerCertVerifier>,
    identity: Option<(&str, &str)>,
) -> Result<ClientConfig, Error> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("client protocol versions"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some((cert_pem, key_pem)) => builder
            .with_client_auth_cert(pem::parse_certs(cert_pem)?, pem::parse_key(key_pem)?)
            .map_err(tls_err("client certificate"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The usual chain and name checks, then the role the server's certificate names.
#[derive(Debug)]
struct RoleVerifier {
    chain: Arc<rustls::client::WebPkiServerVerifier>,
    servers: &'static [Role],
    /// Serials refused whatever they name.
    revoked: Option<Arc<crate::net::RevokedCerts>>,
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified = self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let identified = Peer::identify(end_entity.as_ref()).ok();
        if let (Some(revoked), Some((_, serial))) = (&self.revoked, &identified)
            && revoked.contains(serial)
        {
            return Err(rustls::Error::General(format!(
                "the server presented a revoked certificate (serial {serial})"
            )));
        }
        let role = identified.and_then(|(p, _)| p.role());
        match role {
            Some(r) if self.servers.contains(&r) => Ok(verified),
            other => Err(rustls::Error::General(format!(
                "the server presented {} where {} was expected",
                crate::pki::a_certificate(other.map_or("unknown", |r| r.as_str())),
                self.servers
                    .iter()
                    .map(|r| crate::pki::a_certificate(r.as_str()))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Splits `host:port` and checks the host can be a TLS server name (at most 253 bytes)
/// and the port is one.
pub fn split_address(address: &str) -> Result<(ServerName<'static>, &str), Error> {
    let bad = |why: &str| Error::Malformed {
        what: "server address",
        why: format!("{address:?}: {why}"),
    };
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| bad("expected host:port"))?;
    port.parse::<u16>().map_err(|_| bad("bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).map_err(|_| bad("bad host name"))?;
    Ok((name, address))
}

/// Connects to `target` (host:port) from `local`.
async fn connect_from(target: &str, local: std::net::IpAddr) -> io::Result<TcpStream> {
    let addr = tokio::net::lookup_host(target)
        .await?
        .find(|a| a.is_ipv4() == local.is_ipv4())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address of that family"))?;
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.bind(std::net::SocketAddr::new(local, 0))?;
    socket.connect(addr).await
}

/// A lazily connecting gRPC channel to `address` (host:port) over our TLS. The host is
/// the name checked against the server certificate.
pub fn channel(
    address: &str,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> Result<tonic::transport::Channel, Error> {
    channel_with(address, config, connect_timeout, None)
}

/// How often a channel between nodes pings its peer, and how long it waits for the
/// answer before it drops the connection (a peer cut off the network sends no reset).
pub const PEER_KEEPALIVE: Duration = Duration::from_secs(3);

/// A channel between nodes (hub to hub, hub to spoke, spoke to hub): as [`channel`],
/// with HTTP/2 keepalive pings, so a connection to a peer that went silent is dropped
/// within about 2 × [`PEER_KEEPALIVE`] and the next call connects afresh. Envoys do not
/// use it: a fleet's idle connections would ping all day.
pub fn peer_channel(
    address: &str,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
) -> Result<tonic::transport::Channel, Error> {
    channel_with(address, config, connect_timeout, Some(PEER_KEEPALIVE))
}

fn channel_with(
    address: &str,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
    keepalive: Option<Duration>,
) -> Result<tonic::transport::Channel, Error> {
    let (server_name, address) = split_address(address)?;
    let target = address.to_string();
    let connector = TlsConnector::from(config);
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| Error::Malformed {
            what: "server address",
            why: e.to_string(),
        })?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true);
    let endpoint = match keepalive {
        Some(every) => endpoint
            .http2_keep_alive_interval(every)
            .keep_alive_timeout(every)
            .keep_alive_while_idle(true),
        None => endpoint,
    };
    let connect = tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let (connector, server_name, target) =
            (connector.clone(), server_name.clone(), target.clone());
        async move {
            let tcp = TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connect))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_leaves_from_the_address_asked_for() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let local: std::net::IpAddr = "127.3.4.5".parse().unwrap();
        let (client, accepted) = tokio::join!(connect_from(&target, local), listener.accept());
        client.unwrap();
        assert_eq!(accepted.unwrap().1.ip(), local);
    }
}
