//! Served certificates: SNI name → current certificate, read lock-free on every handshake.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::Notify;

use super::events::{CertState, CertStatus};

/// A certificate that can be served, with its validity.
#[derive(Debug)]
pub(crate) struct Deployed {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

impl Deployed {
    /// Parses a cache file or an engine's result: a private key and a chain, leaf first.
    ///
    /// The leaf must name `name` (when given) and match the key.
    pub(crate) fn from_pem(pem: &[u8], name: Option<&str>) -> Result<Self, String> {
        let mut certs: Vec<CertificateDer<'static>> = Vec::new();
        let mut key: Option<PrivateKeyDer<'static>> = None;
        for item in rustls_pemfile::read_all(&mut &pem[..]) {
            match item.map_err(|e| format!("malformed PEM: {e}"))? {
                rustls_pemfile::Item::X509Certificate(c) => certs.push(c),
                rustls_pemfile::Item::Pkcs8Key(k) => key = key.or(Some(k.into())),
                rustls_pemfile::Item::Sec1Key(k) => key = key.or(Some(k.into())),
                rustls_pemfile::Item::Pkcs1Key(k) => key = key.or(Some(k.into())),
                _ => {}
            }
        }
        let key = key.ok_or("no private key")?;
        let leaf = certs.first().ok_or("no certificate")?;
        let (not_before, not_after) = validity(leaf, name)?;
        let certified = CertifiedKey::from_der(certs, key, &super::provider())
            .map_err(|e| format!("the key does not fit the certificate: {e}"))?;
        Ok(Self {
            key: Arc::new(certified),
            not_before,
            not_after,
        })
    }

    /// Is the certificate valid now?
    pub(crate) fn is_current(&self) -> bool {
        let now = SystemTime::now();
        self.not_before <= now && now < self.not_after
    }

    /// When to start renewing: a third of the lifetime before expiry, minus up to 5 % of the
    /// lifetime of jitter so that many names issued together do not renew together.
    pub(crate) fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        let jitter = lifetime.mul_f64(rand::random::<f64>() * 0.05);
        self.not_after - lifetime / 3 - jitter
    }
}

/// The DNS names in a certificate's subject alternative names, as written there.
pub(crate) fn dns_names<'a>(
    cert: &'a x509_parser::certificate::X509Certificate<'_>,
) -> Vec<&'a str> {
    use x509_parser::extensions::GeneralName;
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(*d),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The leaf's validity; checks it names `name`.
fn validity(
    leaf: &CertificateDer<'_>,
    name: Option<&str>,
) -> Result<(SystemTime, SystemTime), String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    if let Some(name) = name {
        let names = dns_names(&cert);
        if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return Err(format!("the certificate is for {names:?}, not {name}"));
        }
    }
    let to_system = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    let v = cert.validity();
    Ok((
        to_system(v.not_before.timestamp()),
        to_system(v.not_after.timestamp()),
    ))
}

/// One managed name.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) current: ArcSwapOption<Deployed>,
    /// Woken when a certificate is deployed.
    pub(crate) deployed: Notify,
    pub(crate) status: Mutex<CertStatus>,
    /// The store's count of slots with no certificate yet.
    missing: Arc<AtomicUsize>,
}

impl Slot {
    fn new(name: &str, state: CertState, missing: &Arc<AtomicUsize>) -> Self {
        missing.fetch_add(1, Ordering::AcqRel);
        Self {
            missing: missing.clone(),
            current: ArcSwapOption::empty(),
            deployed: Notify::new(),
            status: Mutex::new(CertStatus {
                name: name.to_owned(),
                state,
                not_after: None,
                last_error: None,
                next_attempt: None,
            }),
        }
    }

    pub(crate) fn deploy(&self, deployed: Deployed) {
        let not_after = deployed.not_after;
        if self.current.swap(Some(Arc::new(deployed))).is_none() {
            // Released after the certificate is in place: whoever sees the count reach zero
            // finds every certificate.
            self.missing.fetch_sub(1, Ordering::AcqRel);
        }
        self.deployed.notify_waiters();
        self.update(|s| {
            s.state = CertState::Valid;
            s.not_after = Some(not_after);
            s.last_error = None;
        });
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut CertStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub(crate) fn status(&self) -> CertStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The served certificate, if any.
    pub(crate) fn key(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref().map(|d| d.key.clone())
    }
}

/// All managed names. The set of names is fixed at construction, so the map itself is never
/// written: only each slot's `ArcSwapOption` changes.
#[derive(Debug)]
pub(crate) struct CertStore {
    slots: HashMap<String, Slot>,
    /// Local mode: one self-signed certificate for every connection.
    local: Option<Slot>,
    /// Slots with no certificate yet; never grows once the store is built.
    missing: Arc<AtomicUsize>,
}

impl CertStore {
    pub(crate) fn new(names: &[String], local: bool) -> Self {
        let missing = Arc::new(AtomicUsize::new(0));
        if local {
            return Self {
                slots: HashMap::new(),
                local: Some(Slot::new("localhost", CertState::Local, &missing)),
                missing,
            };
        }
        let slots = names
            .iter()
            .map(|n| (n.clone(), Slot::new(n, CertState::Pending, &missing)))
            .collect();
        Self {
            slots,
            local: None,
            missing,
        }
    }

    /// Every name has a certificate (a certificate is replaced, never removed, so this stays
    /// true once it is).
    pub(crate) fn all_deployed(&self) -> bool {
        self.missing.load(Ordering::Acquire) == 0
    }

    pub(crate) fn is_local(&self) -> bool {
        self.local.is_some()
    }

    pub(crate) fn local(&self) -> Option<&Slot> {
        self.local.as_ref()
    }

    /// The slot for a normalized name.
    pub(crate) fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.get(name)
    }

    /// The slot that serves a handshake with this SNI (`None`: no SNI).
    pub(crate) fn slot_for_sni(&self, sni: Option<&str>) -> Option<&Slot> {
        if let Some(local) = &self.local {
            return Some(local);
        }
        let sni = sni?;
        let sni = sni.strip_suffix('.').unwrap_or(sni);
        if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            self.slots.get(&sni.to_ascii_lowercase())
        } else {
            self.slots.get(sni)
        }
    }

    pub(crate) fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.values().chain(self.local.iter())
    }
}

/// The ALPN protocol of TLS-ALPN-01 validation connections (RFC 8737).
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A TLS-ALPN-01 validation connection: the client offers `acme-tls/1`, whatever else it
/// offers.
pub(crate) fn is_validation(hello: &ClientHello<'_>) -> bool {
    hello
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN))
}

/// rustls's view of the store: the managed name's certificate, or for a client that offers
/// `acme-tls/1` (a TLS-ALPN-01 validation connection) the pending validation certificate.
#[derive(Debug)]
pub(crate) struct StoreResolver(pub(crate) Arc<crate::state::State>);

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if is_validation(&hello) {
            let sni = hello.server_name()?;
            let name = sni.strip_suffix('.').unwrap_or(sni).to_ascii_lowercase();
            return self.0.challenges.tls_alpn_cert(&name);
        }
        self.0.store.slot_for_sni(hello.server_name())?.key()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployed(not_before: SystemTime, not_after: SystemTime) -> Deployed {
        let local = super::super::local::self_signed().expect("local certificate");
        Deployed {
            key: local.key,
            not_before,
            not_after,
        }
    }

    #[test]
    fn renewal_starts_when_a_third_of_the_lifetime_is_left_minus_jitter() {
        let day = Duration::from_secs(86_400);
        let start = UNIX_EPOCH + 20_000 * day;
        let d = deployed(start, start + 90 * day);
        let latest = start + 60 * day;
        let earliest = latest - day.mul_f64(4.5);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let at = d.renew_at();
            assert!(at <= latest && at >= earliest, "{at:?}");
            seen.insert(at);
        }
        assert!(seen.len() > 1, "jitter spreads renewals");
    }

    #[test]
    fn a_cached_file_for_another_name_or_with_a_foreign_key_is_refused() {
        let a = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).expect("cert");
        let b = rcgen::generate_simple_self_signed(vec!["b.test".to_owned()]).expect("cert");
        let good = format!("{}{}", a.signing_key.serialize_pem(), a.cert.pem());
        assert!(Deployed::from_pem(good.as_bytes(), Some("a.test")).is_ok());
        let err = Deployed::from_pem(good.as_bytes(), Some("b.test")).unwrap_err();
        assert!(err.contains("not b.test"), "{err}");
        let mixed = format!("{}{}", b.signing_key.serialize_pem(), a.cert.pem());
        let err = Deployed::from_pem(mixed.as_bytes(), Some("a.test")).unwrap_err();
        assert!(err.contains("does not fit"), "{err}");
        for broken in ["", "garbage", &good[..good.len() / 2]] {
            assert!(Deployed::from_pem(broken.as_bytes(), Some("a.test")).is_err());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Arbitrary bytes, and a valid file with bytes flipped or cut: never a panic, and
        /// whatever parses is for the right name with a key that fits.
        #[test]
        fn any_cache_file_content_parses_or_is_refused(
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            cut in 0usize..2000,
            flip in 0usize..2000,
        ) {
            let _ = Deployed::from_pem(&garbage, Some("a.test"));
            let a = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).expect("cert");
            let mut good = format!("{}{}", a.signing_key.serialize_pem(), a.cert.pem()).into_bytes();
            let at = flip % good.len();
            good[at] ^= 0x20;
            if let Ok(d) = Deployed::from_pem(&good, Some("a.test")) {
                proptest::prop_assert!(d.not_before < d.not_after);
            }
            good.truncate(cut.min(good.len()));
            let _ = Deployed::from_pem(&good, Some("a.test"));
        }
    }
}
