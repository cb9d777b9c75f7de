//! The cluster's certificate authority: Ed25519 keys throughout.
//!
//! Who a TLS peer is comes from one URI subject-alternative name, `urn:vigo:<role>:<name>`,
//! in a certificate our CA signed. Envoy certificates name the envoy id; the issuing side
//! chooses every name, never the requester.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519, PublicKeyData,
    SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::ids::EnvoyId;
use crate::{Error, fsutil};

const URI_PREFIX: &str = "urn:vigo:";
const ED25519_OID: &str = "1.3.101.112";

/// How long an envoy certificate is valid.
pub const ENVOY_CERT_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
/// How long node (spoke, hub, admin, relay) certificates are valid.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

/// The roles a certificate can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Envoy,
    /// Operators and tools administering a spoke directly.
    Admin,
    /// A process that carries check-ins for many envoys over shared connections (the
    /// fleet simulator); each request is still signed by its envoy's own key.
    Relay,
    Spoke,
    Hub,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Envoy => "envoy",
            Role::Admin => "admin",
            Role::Relay => "relay",
            Role::Spoke => "spoke",
            Role::Hub => "hub",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "envoy" => Role::Envoy,
            "admin" => Role::Admin,
            "relay" => Role::Relay,
            "spoke" => Role::Spoke,
            "hub" => Role::Hub,
            _ => return None,
        })
    }
}

/// Who is on the other end of a TLS connection, as proven by its client certificate.
/// Parsed once per connection; cloned into every request, so it stays small.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// No client certificate (allowed for enrollment only).
    Anonymous,
    Envoy {
        id: EnvoyId,
        /// The Ed25519 key the certificate was issued for.
        key: [u8; 32],
    },
    Node {
        role: Role,
        name: Arc<str>,
    },
}

/// A certificate serial number as the product spells it: lowercase hex without leading
/// zeros. Accepts what operators paste: `openssl x509 -serial` output
/// (`serial=0A1B...`), colon-separated bytes, either case.
pub fn serial_hex(raw: &str) -> Result<String, Error> {
    let bad = |why: &str| Error::Malformed {
        what: "certificate serial",
        why: format!("{raw:?} {why}"),
    };
    let trimmed = raw.trim();
    let trimmed = trimmed.strip_prefix("serial=").unwrap_or(trimmed);
    let digits: String = trimmed
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if digits.is_empty() || digits.len() > 64 {
        return Err(bad("must be 1..64 hex digits"));
    }
    if !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad("is not hexadecimal"));
    }
    let serial = digits.trim_start_matches('0');
    Ok(if serial.is_empty() { "0" } else { serial }.to_string())
}

/// The serial of a PEM certificate (`vigocli cert revoke --file`).
pub fn serial_of_pem(pem: &str) -> Result<String, Error> {
    let certs = crate::pem::parse_certs(pem)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&certs[0]).map_err(|e| Error::Malformed {
            what: "certificate",
            why: e.to_string(),
        })?;
    Ok(cert.tbs_certificate.serial.to_str_radix(16))
}

/// "an admin certificate", "a hub certificate": a role's certificate with its article.
pub fn a_certificate(role: &str) -> String {
    let vowel = role.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {role} certificate", if vowel { "an" } else { "a" })
}

impl Peer {
    /// Reads the identity out of a leaf certificate that TLS already verified against
    /// our CA.
    pub fn from_certificate(der: &[u8]) -> Result<Peer, Error> {
        Self::identify(der).map(|(peer, _)| peer)
    }

    /// The identity and the serial number (as [`serial_hex`] spells it) of a verified
    /// leaf certificate: what a server checks revocations against.
    pub fn identify(der: &[u8]) -> Result<(Peer, String), Error> {
        let bad = |why: String| Error::Malformed {
            what: "peer certificate",
            why,
        };
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
        let uri = cert
            .subject_alternative_name()
            .map_err(|e| bad(e.to_string()))?
            .and_then(|ext| {
                ext.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) if u.starts_with(URI_PREFIX) => {
                        Some(*u)
                    }
                    _ => None,
                })
            })
            .ok_or_else(|| bad(format!("no {URI_PREFIX}<role>:<name> name")))?;
        let (role, name) = uri[URI_PREFIX.len()..]
            .split_once(':')
            .ok_or_else(|| bad(format!("malformed identity {uri:?}")))?;
        let role = Role::parse(role).ok_or_else(|| bad(format!("unknown role in {uri:?}")))?;
        let serial = cert.tbs_certificate.serial.to_str_radix(16);
        if role != Role::Envoy {
            let peer = Peer::Node {
                role,
                name: name.into(),
            };
            return Ok((peer, serial));
        }
        let id: EnvoyId = name.parse().map_err(|e| bad(format!("{e}")))?;
        let spki = cert.public_key();
        if spki.algorithm.algorithm.to_id_string() != ED25519_OID {
            return Err(bad("envoy certificate key is not Ed25519".into()));
        }
        let key: [u8; 32] = spki
            .subject_public_key
            .data
            .as_ref()
            .try_into()
            .map_err(|_| bad("Ed25519 key is not 32 bytes".into()))?;
        Ok((Peer::Envoy { id, key }, serial))
    }

    pub fn role(&self) -> Option<Role> {
        match self {
            Peer::Anonymous => None,
            Peer::Envoy { .. } => Some(Role::Envoy),
            Peer::Node { role, .. } => Some(*role),
        }
    }
}

fn identity_uri(role: Role, name: &str) -> Result<SanType, Error> {
    let uri = format!("{URI_PREFIX}{}:{name}", role.as_str());
    Ok(SanType::URI(uri.as_str().try_into().map_err(|_| {
        Error::Malformed {
            what: "certificate name",
            why: format!("{name:?} is not ASCII"),
        }
    })?))
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    // An hour of slack for clocks that lag ours.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::seconds(lifetime.as_secs() as i64);
    params.serial_number = Some(SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
}

fn rcgen_err(what: &'static str) -> impl Fn(rcgen::Error) -> Error {
    move |e| Error::Pki {
        what,
        why: e.to_string(),
    }
}

/// A certificate and its private key, both PEM.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The cluster CA: signs node certificates and envoy certificates.
pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl CertAuthority {
    /// A secret derived from the CA's private key and `context` (HMAC-SHA256): every
    /// node holding the CA key derives the same one, nobody else can. The hub derives a
    /// token's secret from its request id this way, so a retried creation answers the
    /// secret the first attempt stored the hash of.
    pub fn derive_secret(&self, context: &[u8]) -> [u8; 32] {
        let key_der = self.issuer.key().serialize_der();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &crate::traits::sha256(&key_der));
        let tag = ring::hmac::sign(&key, context);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// A new self-signed Ed25519 CA.
    pub fn create(common_name: &str) -> Result<(Self, String), Error> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(rcgen_err("CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, CA_VALIDITY);
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_err("CA certificate"))?;
        let key_pem = key.serialize_pem();
        let ca = CertAuthority {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        };
        Ok((ca, key_pem))
    }

    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, Error> {
        let cert_pem = fsutil::read_to_string(cert_path)?;
        let key_pem = fsutil::read_to_string(key_path)?;
        let file_err = |path: &Path, why: String| Error::File {
            path: path.to_path_buf(),
            why,
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| file_err(key_path, e.to_string()))?;
        let cert_der = crate::pem::parse_certs(&cert_pem)
            .map_err(|e| file_err(cert_path, e.to_string()))?
            .into_iter()
            .next()
            .ok_or_else(|| file_err(cert_path, "no certificate in file".into()))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| file_err(cert_path, e.to_string()))?;
        Ok(CertAuthority {
            issuer,
            cert_der,
            cert_pem,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// A node certificate with a fresh Ed25519 key: usable as TLS server (for `dns_names`)
    /// and as TLS client.
    pub fn issue_node(
        &self,
        role: Role,
        name: &str,
        dns_names: &[String],
    ) -> Result<IssuedCert, Error> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(rcgen_err("node key"))?;
        let mut params =
            CertificateParams::new(dns_names.to_vec()).map_err(rcgen_err("node names"))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{} {name}", role.as_str()));
        params.subject_alt_names.push(identity_uri(role, name)?);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut params, NODE_CERT_VALIDITY);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_err("node certificate"))?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// An envoy's client certificate from its CSR. The CSR must be validly self-signed
    /// by `public_key`; nothing else is taken from it.
    pub fn issue_envoy(
        &self,
        id: EnvoyId,
        public_key: &[u8; 32],
        csr_der: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| Error::Malformed {
                    what: "certificate signing request",
                    why: e.to_string(),
                })?;
        if csr.public_key.algorithm() != &PKCS_ED25519
            || csr.public_key.der_bytes() != public_key.as_slice()
        {
            return Err(Error::Malformed {
                what: "certificate signing request",
                why: "its key differs from the enrollment public key".into(),
            });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("envoy {id}"));
        params.subject_alt_names = vec![identity_uri(Role::Envoy, &id.to_string())?];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, ENVOY_CERT_VALIDITY);
        let cert = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)
        .map_err(rcgen_err("envoy certificate"))?;
        Ok(cert.der().to_vec())
    }
}

/// A CSR for an envoy key (the envoy side of enrollment).
pub fn envoy_csr(key: &ed25519_dalek::SigningKey) -> Result<Vec<u8>, Error> {
    let der = crate::signing::key_to_pkcs8_der(key);
    let pair = KeyPair::try_from(&PrivatePkcs8KeyDer::from(der)).map_err(rcgen_err("envoy key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&pair)
        .map_err(rcgen_err("certificate signing request"))?;
    Ok(csr.der().to_vec())
}

/// PEM of a DER certificate.
pub fn cert_der_to_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der))
}

/// The files of a standalone spoke's PKI, as `vigo-spoke pki init` lays them out.
pub struct PkiLayout {
    pub dir: PathBuf,
}

impl PkiLayout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }
    pub fn bundle_signing_key(&self) -> PathBuf {
        self.dir.join("bundle-signing.key")
    }

    /// Writes a node certificate and key under `name`.
    pub fn write_issued(&self, name: &str, issued: &IssuedCert) -> Result<(), Error> {
        fsutil::write_atomic(&self.cert(name), issued.cert_pem.as_bytes(), 0o644)?;
        fsutil::write_atomic(&self.key(name), issued.key_pem.as_bytes(), 0o600)
    }

    /// Creates the CA, a spoke server certificate for `dns_names`, an admin client
    /// certificate and the bundle-signing key (a standalone spoke signs its own
    /// bundles). Refuses to overwrite an existing CA.
    pub fn init_standalone(&self, spoke_name: &str, dns_names: &[String]) -> Result<(), Error> {
        self.init_with(|ca| {
            self.write_issued("spoke", &ca.issue_node(Role::Spoke, spoke_name, dns_names)?)
        })?;
        let bundle_key = crate::signing::generate_key();
        fsutil::write_atomic(
            &self.bundle_signing_key(),
            crate::signing::key_to_pkcs8_pem(&bundle_key).as_bytes(),
            0o600,
        )
    }

    /// Creates the PKI of a whole cluster: the CA, a certificate per hub node
    /// (`hub-<id>`, role hub) and per spoke (`<spoke id>`, role spoke), each valid for
    /// `dns_names` and an admin certificate. No bundle-signing key: the founding hub
    /// node generates the cluster's, and spokes under a hub hold none.
    pub fn init_cluster(
        &self,
        hubs: &[u64],
        spokes: &[String],
        dns_names: &[String],
    ) -> Result<(), Error> {
        self.init_with(|ca| {
            for id in hubs {
                self.write_issued(
                    &format!("hub-{id}"),
                    &ca.issue_node(Role::Hub, &id.to_string(), dns_names)?,
                )?;
            }
            for spoke in spokes {
                self.write_issued(spoke, &ca.issue_node(Role::Spoke, spoke, dns_names)?)?;
            }
            Ok(())
        })
    }

    /// A fresh CA (refusing to overwrite one), the node certificates `nodes` issues from
    /// it and an admin client certificate.
    fn init_with(
        &self,
        nodes: impl FnOnce(&CertAuthority) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if self.ca_cert().exists() {
            return Err(Error::File {
                path: self.ca_cert(),
                why: "a CA already exists here; refusing to overwrite it".into(),
            });
        }
        fsutil::create_private_dir(&self.dir)?;
        let (ca, ca_key_pem) = CertAuthority::create("Vigo Spanner CA")?;
        fsutil::write_atomic(&self.ca_key(), ca_key_pem.as_bytes(), 0o600)?;
        fsutil::write_atomic(&self.ca_cert(), ca.cert_pem().as_bytes(), 0o644)?;
        nodes(&ca)?;
        self.write_issued("admin", &ca.issue_node(Role::Admin, "admin", &[])?)
    }

    pub fn load_ca(&self) -> Result<CertAuthority, Error> {
        CertAuthority::load(&self.ca_cert(), &self.ca_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_certificate_names_the_envoy_and_its_key() {
        let (ca, _) = CertAuthority::create("test CA").unwrap();
        let key = crate::signing::generate_key();
        let public = key.verifying_key().to_bytes();
        let id = EnvoyId::new(42).unwrap();
        let der = ca
            .issue_envoy(id, &public, &envoy_csr(&key).unwrap())
            .unwrap();
        assert_eq!(
            Peer::from_certificate(&der).unwrap(),
            Peer::Envoy { id, key: public }
        );
    }

    #[test]
    fn csr_for_another_key_is_refused() {
        let (ca, _) = CertAuthority::create("test CA").unwrap();
        let key = crate::signing::generate_key();
        let other = crate::signing::generate_key().verifying_key().to_bytes();
        let err = ca
            .issue_envoy(EnvoyId::new(1).unwrap(), &other, &envoy_csr(&key).unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("differs"), "{err}");
        assert!(
            ca.issue_envoy(EnvoyId::new(1).unwrap(), &other, b"not a csr")
                .is_err()
        );
    }

    #[test]
    fn node_certificate_carries_its_role() {
        let (ca, _) = CertAuthority::create("test CA").unwrap();
        let issued = ca.issue_node(Role::Admin, "ops", &[]).unwrap();
        let der = crate::pem::parse_certs(&issued.cert_pem).unwrap();
        assert_eq!(
            Peer::from_certificate(&der[0]).unwrap(),
            Peer::Node {
                role: Role::Admin,
                name: "ops".into()
            }
        );
    }

    #[test]
    fn pem_encoding_round_trips() {
        let (ca, _) = CertAuthority::create("test CA").unwrap();
        let pem = cert_der_to_pem(ca.cert_der());
        assert_eq!(
            crate::pem::parse_certs(&pem).unwrap()[0].as_ref(),
            ca.cert_der()
        );
    }
}
