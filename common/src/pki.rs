//! The cluster's certificate authority. TLS keys are ECDSA P-256 (what every TLS stack
//! reads, gRPC's C core and OpenSSL included), written as PKCS#8 PEM; Ed25519 stays for
//! signatures: requests, bundles, the envoy's identity key. A PKI made with Ed25519 TLS
//! keys by an earlier release keeps working: both kinds are read and verified.
//!
//! Who a TLS peer is comes from one URI subject-alternative name, `urn:vigo:<role>:<name>`,
//! in a certificate our CA signed. Envoy certificates name the envoy id and, in a second
//! URI `urn:vigo-key:ed25519:<hex>`, the envoy's Ed25519 identity key (an envoy
//! certificate of an earlier release is issued on that key itself). The issuing side
//! chooses every name, never the requester.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    PKCS_ED25519, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::ids::EnvoyId;
use crate::{Error, fsutil};

const URI_PREFIX: &str = "urn:vigo:";
const KEY_URI_PREFIX: &str = "urn:vigo-key:ed25519:";
const ED25519_OID: &str = "1.3.101.112";

pub use rcgen::SignatureAlgorithm;

/// The key algorithm of new TLS keys.
pub static TLS_KEY_ALGORITHM: &SignatureAlgorithm = &PKCS_ECDSA_P256_SHA256;
/// The TLS key algorithm of earlier releases, still read and verified.
pub static LEGACY_TLS_KEY_ALGORITHM: &SignatureAlgorithm = &PKCS_ED25519;

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

    /// True while the certificate's validity window holds now. A resumed TLS session
    /// does not verify the client's chain again; its leaf may have expired since.
    pub fn still_valid(der: &[u8]) -> bool {
        x509_parser::parse_x509_certificate(der).is_ok_and(|(_, c)| c.validity().is_valid())
    }

    /// The identity and the serial number (as [`serial_hex`] spells it) of a verified
    /// leaf certificate: what a server checks revocations against.
    pub fn identify(der: &[u8]) -> Result<(Peer, String), Error> {
        let bad = |why: String| Error::Malformed {
            what: "peer certificate",
            why,
        };
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
        let uris: Vec<&str> = cert
            .subject_alternative_name()
            .map_err(|e| bad(e.to_string()))?
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::URI(u) => Some(*u),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let uri = uris
            .iter()
            .find(|u| u.starts_with(URI_PREFIX))
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
        let key: [u8; 32] = if spki.algorithm.algorithm.to_id_string() == ED25519_OID {
            // Issued on the identity key itself (an earlier release).
            spki.subject_public_key.data.as_ref().try_into()
        } else {
            let named = uris
                .iter()
                .find_map(|u| u.strip_prefix(KEY_URI_PREFIX))
                .ok_or_else(|| bad(format!("no {KEY_URI_PREFIX}<hex> name")))?;
            hex::decode(named)
                .map_err(|e| bad(format!("identity key: {e}")))?
                .as_slice()
                .try_into()
        }
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

    /// A new self-signed CA on a P-256 key.
    pub fn create(common_name: &str) -> Result<(Self, String), Error> {
        Self::create_with(common_name, TLS_KEY_ALGORITHM)
    }

    /// A new self-signed CA on a key of `algorithm` (every key it issues is of the same
    /// kind): P-256, or Ed25519 as earlier releases made them (to test that such a PKI
    /// keeps working, and to measure one against the other).
    pub fn create_with(
        common_name: &str,
        algorithm: &'static SignatureAlgorithm,
    ) -> Result<(Self, String), Error> {
        let key = KeyPair::generate_for(algorithm).map_err(rcgen_err("CA key"))?;
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

    /// The key kind of this CA, which its new node keys share.
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.issuer.key().algorithm()
    }

    /// A node certificate with a fresh key (P-256; Ed25519 under a CA of an earlier
    /// release): usable as TLS server (for `dns_names`) and as TLS client.
    pub fn issue_node(
        &self,
        role: Role,
        name: &str,
        dns_names: &[String],
    ) -> Result<IssuedCert, Error> {
        let key = KeyPair::generate_for(self.algorithm()).map_err(rcgen_err("node key"))?;
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

    /// An envoy's client certificate from its CSR, which is validly self-signed by its
    /// TLS key; nothing but that key is taken from it. A P-256 TLS key is bound to the
    /// envoy's Ed25519 identity key by `key_proof` (the identity key's signature over
    /// the CSR, [`crate::signing::Domain::EnrollKey`]) and the certificate names the
    /// identity key. An Ed25519 CSR (an earlier release's envoy) must be on the identity
    /// key itself.
    pub fn issue_envoy(
        &self,
        id: EnvoyId,
        public_key: &[u8; 32],
        csr_der: &[u8],
        key_proof: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let refuse = |why: &str| Error::Malformed {
            what: "certificate signing request",
            why: why.to_string(),
        };
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| refuse(&e.to_string()))?;
        let mut names = vec![identity_uri(Role::Envoy, &id.to_string())?];
        if csr.public_key.algorithm() == &PKCS_ED25519 {
            if csr.public_key.der_bytes() != public_key.as_slice() {
                return Err(refuse("its key differs from the enrollment public key"));
            }
        } else if csr.public_key.algorithm() == TLS_KEY_ALGORITHM {
            // The algorithm rcgen reports is the CSR's signature's (ECDSA with SHA-256),
            // which a P-384 key can make too: the key's own curve is checked.
            if !on_p256(csr_der) {
                return Err(refuse("its key is not on the P-256 curve"));
            }
            let identity = crate::signing::parse_public_key(public_key)?;
            let proof = crate::signing::parse_signature(key_proof)
                .map_err(|_| Error::BadKeyProof("is not an Ed25519 signature"))?;
            crate::signing::verify(
                &identity,
                crate::signing::Domain::EnrollKey,
                csr_der,
                &proof,
            )
            .map_err(|_| {
                Error::BadKeyProof("is not the enrollment key's signature over the CSR")
            })?;
            let uri = format!("{KEY_URI_PREFIX}{}", hex::encode(public_key));
            names.push(SanType::URI(
                uri.as_str().try_into().map_err(rcgen_err("key name"))?,
            ));
        } else {
            return Err(refuse("its key is neither ECDSA P-256 nor Ed25519"));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("envoy {id}"));
        params.subject_alt_names = names;
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

impl CertAuthority {
    /// Enrollment's certificate step in one call, for tools and tests that make envoy
    /// identities without the network: a P-256 TLS key for `identity`, certified as
    /// envoy `id`. Returns the certificate (DER) and the TLS key (PEM).
    pub fn certify_envoy(
        &self,
        id: EnvoyId,
        identity: &ed25519_dalek::SigningKey,
    ) -> Result<(Vec<u8>, String), Error> {
        let request = envoy_tls_request(identity)?;
        let cert = self.issue_envoy(
            id,
            identity.verifying_key().as_bytes(),
            &request.csr_der,
            &request.key_proof,
        )?;
        Ok((cert, request.tls_key_pem))
    }
}

/// Whether the CSR's key is an EC key on P-256 (the curve named in its key info).
fn on_p256(csr_der: &[u8]) -> bool {
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
    use x509_parser::prelude::FromDer;
    let Ok((_, csr)) =
        x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
    else {
        return false;
    };
    let spki = &csr.certification_request_info.subject_pki;
    let point = &spki.subject_public_key.data;
    let key = &spki.algorithm;
    // An uncompressed point: 0x04, then 32 bytes each of x and y.
    point.len() == 65
        && point[0] == 4
        && key.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
        && key
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|curve| curve == OID_EC_P256)
}

/// What an envoy sends to be certified: a CSR on a fresh P-256 TLS key, the identity
/// key's signature over it, and the TLS key (PKCS#8 PEM) for the envoy to keep.
pub struct EnvoyTlsRequest {
    pub csr_der: Vec<u8>,
    pub key_proof: Vec<u8>,
    pub tls_key_pem: String,
}

/// The envoy side of enrollment: a P-256 TLS key and its CSR, bound to `identity`.
pub fn envoy_tls_request(identity: &ed25519_dalek::SigningKey) -> Result<EnvoyTlsRequest, Error> {
    let pair = KeyPair::generate_for(TLS_KEY_ALGORITHM).map_err(rcgen_err("envoy TLS key"))?;
    let csr_der = csr(&pair)?;
    let key_proof = crate::signing::sign(identity, crate::signing::Domain::EnrollKey, &csr_der);
    Ok(EnvoyTlsRequest {
        key_proof: key_proof.to_bytes().to_vec(),
        csr_der,
        tls_key_pem: pair.serialize_pem(),
    })
}

/// A CSR on the identity key itself, as an earlier release's envoy sends it.
pub fn legacy_envoy_csr(key: &ed25519_dalek::SigningKey) -> Result<Vec<u8>, Error> {
    let der = crate::signing::key_to_pkcs8_der(key);
    let pair = KeyPair::try_from(&PrivatePkcs8KeyDer::from(der)).map_err(rcgen_err("envoy key"))?;
    csr(&pair)
}

fn csr(pair: &KeyPair) -> Result<Vec<u8>, Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(pair)
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

    /// What a resumed TLS session is checked with: a leaf out of its validity window is
    /// no longer valid, whatever verified it before.
    #[test]
    fn an_expired_certificate_is_no_longer_valid() {
        let cert = |from: i64, to: i64| {
            let mut params = CertificateParams::new(vec!["x".to_string()]).unwrap();
            let now = OffsetDateTime::now_utc();
            params.not_before = now + time::Duration::hours(from);
            params.not_after = now + time::Duration::hours(to);
            let key = KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        assert!(Peer::still_valid(&cert(-1, 1)));
        assert!(!Peer::still_valid(&cert(-48, -24)), "expired");
        assert!(!Peer::still_valid(&cert(24, 48)), "not yet valid");
        assert!(!Peer::still_valid(b"not a certificate"));
    }

    #[test]
    fn envoy_certificate_names_the_envoy_and_its_key() {
        for algorithm in [TLS_KEY_ALGORITHM, LEGACY_TLS_KEY_ALGORITHM] {
            let (ca, _) = CertAuthority::create_with("test CA", algorithm).unwrap();
            let key = crate::signing::generate_key();
            let public = key.verifying_key().to_bytes();
            let id = EnvoyId::new(42).unwrap();
            // A new envoy's P-256 TLS key, and an earlier release's identity-key CSR.
            let (p256, _) = ca.certify_envoy(id, &key).unwrap();
            let legacy = ca
                .issue_envoy(id, &public, &legacy_envoy_csr(&key).unwrap(), &[])
                .unwrap();
            for der in [p256, legacy] {
                assert_eq!(
                    Peer::from_certificate(&der).unwrap(),
                    Peer::Envoy { id, key: public }
                );
            }
        }
    }

    /// A CSR's signature algorithm does not name the key's curve: the curve is read
    /// from the key itself (a P-384 key was once certified as if it were P-256).
    #[test]
    fn only_a_p256_key_passes_the_curve_check() {
        let csr = |alg: &'static SignatureAlgorithm| {
            let key = KeyPair::generate_for(alg).unwrap();
            let params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.serialize_request(&key).unwrap().der().to_vec()
        };
        assert!(on_p256(&csr(&PKCS_ECDSA_P256_SHA256)));
        assert!(!on_p256(&csr(&rcgen::PKCS_ECDSA_P384_SHA384)));
        assert!(!on_p256(&csr(&PKCS_ED25519)));
        assert!(!on_p256(b"not a request"));
    }

    #[test]
    fn a_tls_key_is_certified_only_with_the_identity_key_s_proof() {
        let (ca, _) = CertAuthority::create("test CA").unwrap();
        let key = crate::signing::generate_key();
        let other = crate::signing::generate_key().verifying_key().to_bytes();
        let id = EnvoyId::new(1).unwrap();
        let request = envoy_tls_request(&key).unwrap();
        for (public, proof) in [
            (&other, request.key_proof.as_slice()),
            (&key.verifying_key().to_bytes(), &[]),
            (&key.verifying_key().to_bytes(), &[0u8; 64]),
        ] {
            let err = ca
                .issue_envoy(id, public, &request.csr_der, proof)
                .unwrap_err();
            assert!(err.to_string().contains("key_proof"), "{err}");
        }
        let err = ca
            .issue_envoy(id, &other, &legacy_envoy_csr(&key).unwrap(), &[])
            .unwrap_err();
        assert!(err.to_string().contains("differs"), "{err}");
        assert!(ca.issue_envoy(id, &other, b"not a csr", &[]).is_err());
    }

    /// Every key `pki init` writes is PKCS#8 that OpenSSL reads: P-256 for TLS, and the
    /// Ed25519 identity and bundle keys as PKCS#8 v1 (OpenSSL 3.0 cannot read v2).
    #[test]
    fn keys_are_pkcs8_of_the_expected_kind() {
        let (ca, ca_key) = CertAuthority::create("test CA").unwrap();
        let node = ca.issue_node(Role::Spoke, "s", &[]).unwrap();
        for pem in [&ca_key, &node.key_pem] {
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
            let pair = KeyPair::from_pem(pem).unwrap();
            assert_eq!(pair.algorithm(), TLS_KEY_ALGORITHM);
        }
        let ed = crate::signing::key_to_pkcs8_der(&crate::signing::generate_key());
        // RFC 8410 v1: SEQUENCE { INTEGER 0, AlgorithmIdentifier, OCTET STRING }.
        assert_eq!(ed.len(), 48);
        assert_eq!(&ed[..5], &[0x30, 0x2e, 0x02, 0x01, 0x00]);
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
