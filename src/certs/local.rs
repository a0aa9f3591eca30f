//! Local mode: a self-signed certificate for this machine, made at start.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

use super::store::Deployed;

/// A fresh self-signed certificate for `localhost`, `127.0.0.1` and `::1`.
pub(crate) fn self_signed() -> Result<Deployed, String> {
    let mut params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])
    .map_err(|e| e.to_string())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "autotls local certificate");
    params.distinguished_name = dn;
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let pem = format!("{}{}", key.serialize_pem(), cert.pem());
    Deployed::from_pem(pem.as_bytes(), Some("localhost"))
}
