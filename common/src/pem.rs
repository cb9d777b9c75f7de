//! PEM decoding of certificates and keys, shared by the PKI (which issues them) and TLS
//! (which presents and checks them).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
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

pub fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| Error::Malformed {
        what: "PEM private key",
        why: e.to_string(),
    })
}
