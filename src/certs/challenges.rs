//! Pending challenge answers, published by the engine and read by the layer and listener.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::sign::CertifiedKey;

/// Tokens are base64url (RFC 8555 §8.1); anything longer than this is not a CA's token.
pub(crate) const MAX_TOKEN_LEN: usize = 256;

#[derive(Debug)]
struct HttpAnswer {
    host: String,
    key_authorization: String,
}

/// The answers the CA may ask for right now. Written only while an order is pending.
#[derive(Debug, Default)]
pub(crate) struct Challenges {
    http: RwLock<HashMap<String, HttpAnswer>>,
    tls_alpn: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    pub(crate) fn publish_http(&self, host: &str, token: &str, key_authorization: &str) {
        let answer = HttpAnswer {
            host: host.to_owned(),
            key_authorization: key_authorization.to_owned(),
        };
        write(&self.http).insert(token.to_owned(), answer);
    }

    pub(crate) fn clear_http(&self, token: &str) {
        write(&self.http).remove(token);
    }

    /// The key authorization for `token`, only when it was published for `host`.
    pub(crate) fn http_answer(&self, host: &str, token: &str) -> Option<String> {
        let map = self.http.read().unwrap_or_else(|p| p.into_inner());
        map.get(token)
            .filter(|a| a.host == host)
            .map(|a| a.key_authorization.clone())
    }

    pub(crate) fn publish_tls_alpn(&self, host: &str, cert: Arc<CertifiedKey>) {
        write(&self.tls_alpn).insert(host.to_owned(), cert);
    }

    pub(crate) fn clear_tls_alpn(&self, host: &str) {
        write(&self.tls_alpn).remove(host);
    }

    pub(crate) fn tls_alpn_cert(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let map = self.tls_alpn.read().unwrap_or_else(|p| p.into_inner());
        map.get(host).cloned()
    }
}

/// A panic elsewhere never poisons the answers for good: the maps stay consistent per call.
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// Is `token` a plausible ACME token: 1..=256 base64url characters?
pub(crate) fn is_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_only_for_the_host_they_were_published_for() {
        let c = Challenges::default();
        c.publish_http("a.test", "tok", "tok.thumb");
        assert_eq!(c.http_answer("a.test", "tok").as_deref(), Some("tok.thumb"));
        assert_eq!(c.http_answer("b.test", "tok"), None);
        c.clear_http("tok");
        assert_eq!(c.http_answer("a.test", "tok"), None);
    }

    #[test]
    fn tokens_are_base64url_and_bounded() {
        assert!(is_token("aB-_09"));
        for bad in ["", "..", "a/b", "a%2e", "a.b", "a b"] {
            assert!(!is_token(bad), "{bad:?}");
        }
        assert!(is_token(&"a".repeat(256)));
        assert!(!is_token(&"a".repeat(257)));
    }
}
