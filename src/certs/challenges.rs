//! Pending challenge answers, published by the engine and read by the layer and listener.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::sign::CertifiedKey;

/// Tokens are base64url (RFC 8555 §8.1); anything longer than this is not a CA's token.
pub(crate) const MAX_TOKEN_LEN: usize = 256;

#[derive(Debug)]
struct HttpAnswer {
    host: String,
    key_authorization: String,
}

/// Answers for one host that an engine keeps itself and hands out when asked (rustls-acme's
/// resolver): consulted at validation time, after the answers published one by one.
pub(crate) trait AnswerSource: Send + Sync + fmt::Debug {
    /// The key authorization for this HTTP-01 `token`, if it is pending.
    fn http_answer(&self, token: &str) -> Option<String>;
    /// The TLS-ALPN-01 validation certificate, if one is pending.
    fn tls_alpn_cert(&self) -> Option<Arc<CertifiedKey>>;
}

/// The answers the CA may ask for right now. Written only while an order is pending.
#[derive(Debug, Default)]
pub(crate) struct Challenges {
    http: RwLock<HashMap<String, HttpAnswer>>,
    tls_alpn: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    sources: RwLock<HashMap<String, Arc<dyn AnswerSource>>>,
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
            .or_else(|| self.source(host)?.http_answer(token))
    }

    pub(crate) fn publish_tls_alpn(&self, host: &str, cert: Arc<CertifiedKey>) {
        write(&self.tls_alpn).insert(host.to_owned(), cert);
    }

    pub(crate) fn clear_tls_alpn(&self, host: &str) {
        write(&self.tls_alpn).remove(host);
    }

    pub(crate) fn tls_alpn_cert(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let map = self.tls_alpn.read().unwrap_or_else(|p| p.into_inner());
        map.get(host)
            .cloned()
            .or_else(|| self.source(host)?.tls_alpn_cert())
    }

    /// Makes `source` answer for `host` until [`clear_source`](Self::clear_source).
    #[cfg_attr(not(feature = "rustls-acme"), allow(dead_code))]
    pub(crate) fn publish_source(&self, host: &str, source: Arc<dyn AnswerSource>) {
        write(&self.sources).insert(host.to_owned(), source);
    }

    #[cfg_attr(not(feature = "rustls-acme"), allow(dead_code))]
    pub(crate) fn clear_source(&self, host: &str) {
        write(&self.sources).remove(host);
    }

    /// The source for `host`, cloned out so it is asked without holding the lock.
    fn source(&self, host: &str) -> Option<Arc<dyn AnswerSource>> {
        let map = self.sources.read().unwrap_or_else(|p| p.into_inner());
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

    #[derive(Debug)]
    struct OneToken;

    impl AnswerSource for OneToken {
        fn http_answer(&self, token: &str) -> Option<String> {
            (token == "live").then(|| "live.thumb".to_owned())
        }

        fn tls_alpn_cert(&self) -> Option<Arc<CertifiedKey>> {
            None
        }
    }

    #[test]
    fn a_source_answers_only_for_its_host_and_only_while_published() {
        let c = Challenges::default();
        c.publish_source("a.test", Arc::new(OneToken));
        assert_eq!(
            c.http_answer("a.test", "live").as_deref(),
            Some("live.thumb")
        );
        assert_eq!(c.http_answer("a.test", "other"), None);
        assert_eq!(c.http_answer("b.test", "live"), None);
        assert!(c.tls_alpn_cert("a.test").is_none());
        c.clear_source("a.test");
        assert_eq!(c.http_answer("a.test", "live"), None);
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
