//! TLS for every Vigo connection: rustls with the ring provider only, TLS 1.3, ALPN h2.
//! Server and client configs, and client channels. Servers do the handshake themselves
//! (`crate::net::listen`) so the peer's identity is read from its certificate once per
//! connection, not per request.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::Error;

/// The one crypto provider of every Vigo binary.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide rustls provider. Binaries call this first thing in
/// `main`; a second call is harmless.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn parse_pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Malformed {
            what: "PEM certificates",
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Malformed {
            what: "PEM certificates",
            why: "no certificate found".into(),
        });
    }
    Ok(certs)
}

pub fn parse_pem_key(pem: &str) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| Error::Malformed {
        what: "PEM private key",
        why: e.to_string(),
    })
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, Error> {
    let mut roots = RootCertStore::empty();
    for cert in parse_pem_certs(ca_pem)? {
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
        .with_single_cert(parse_pem_certs(cert_pem)?, parse_pem_key(key_pem)?)
        .map_err(tls_err("server certificate"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    // Stateless resumption: a reconnecting envoy skips the certificate exchange and the
    // signature checks, and the server keeps no per-session memory.
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(tls_err("ticketer"))?;
    config.send_tls13_tickets = 1;
    Ok(config)
}

/// A TLS 1.3 client config trusting our CA, with an optional client identity.
pub fn client_config(ca_pem: &str, identity: Option<(&str, &str)>) -> Result<ClientConfig, Error> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("client protocol versions"))?
        .with_root_certificates(roots(ca_pem)?);
    let mut config = match identity {
        Some((cert_pem, key_pem)) => builder
            .with_client_auth_cert(parse_pem_certs(cert_pem)?, parse_pem_key(key_pem)?)
            .map_err(tls_err("client certificate"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Whether a server accepts connections on `addr` (an unspecified address means this
/// host): the health check of containers, which have no shell or curl.
pub fn probe(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    std::net::TcpStream::connect_timeout(&target, timeout).map(|_| ())
}

/// Splits `host:port` and checks the host can be a TLS server name.
pub fn split_address(address: &str) -> Result<(ServerName<'static>, &str), Error> {
    let bad = |why: &str| Error::Malformed {
        what: "server address",
        why: format!("{address:?}: {why}"),
    };
    let (host, _port) = address
        .rsplit_once(':')
        .ok_or_else(|| bad("expected host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).map_err(|_| bad("bad host name"))?;
    Ok((name, address))
}

/// A lazily connecting gRPC channel to `address` (host:port) over our TLS. The host is
/// the name checked against the server certificate.
pub fn channel(
    address: &str,
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
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
