//! Adopting a rustls-acme `DirCache` directory
//! ([`AutoTls::import_rustls_acme_cache`](crate::AutoTls::import_rustls_acme_cache)).
//!
//! rustls-acme's `DirCache` keeps two kinds of files side by side, named by a hash so that one
//! directory can serve several configurations:
//! ```text
//! cached_account_<b64url(SHA-256(contact₁ 0x00 contact₂ 0x00 … directory_url))>   PKCS#8 DER
//! cached_cert_<b64url(SHA-256(domain₁ 0x00 domain₂ 0x00 … directory_url))>        key PEM, chain PEM
//! ```
//! (base64url without padding). The hashes cannot be inverted, so they are recomputed: the
//! account from the configured contacts, a certificate from the DNS names it holds, in every
//! order (rustls-acme hashes the domain list as given; the CA may sort it). A match proves the
//! file was written for this ACME directory. Imported files are written through the crate's
//! cache (atomic, 0600); nothing already in that cache is replaced.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls::crypto::hash::{Hash, HashAlgorithm};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::store::Deployed;
use crate::cache::{Cache, ACCOUNT_KEY};
use crate::config::Config;

/// rustls-acme's files are small: anything bigger is not one of them.
const MAX_FILE_LEN: u64 = 1024 * 1024;
/// Up to this many names, every order of a certificate's names is tried (7! = 5040 hashes).
const MAX_PERMUTED_NAMES: usize = 7;

const ACCOUNT_PREFIX: &str = "cached_account_";
const CERT_PREFIX: &str = "cached_cert_";

/// Imports what `dir` holds for this configuration's directory URL into `cache`, logging
/// each imported or skipped item. Never fails: a problem is logged and the start goes on.
pub(crate) fn import_rustls_acme(dir: &Path, config: &Config, cache: &Cache, names: &[String]) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            tracing::warn!(dir = %dir.display(), %err, "rustls-acme cache directory cannot be read; nothing imported");
            return;
        }
    };
    let Some(sha256) = sha256() else {
        tracing::error!("no SHA-256 in the crypto provider; the rustls-acme cache is not imported");
        return;
    };
    let mut accounts: HashMap<String, PathBuf> = HashMap::new();
    let mut certs: Vec<PathBuf> = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with(ACCOUNT_PREFIX) {
            accounts.insert(file, entry.path());
        } else if file.starts_with(CERT_PREFIX) {
            certs.push(entry.path());
        }
    }
    certs.sort();
    let directory = &config.directory;
    import_account(sha256, &accounts, &config.contact, directory, cache);
    import_certificates(sha256, &certs, directory, cache, names);
}

/// The account key written for the configured contacts (or for none) at this directory.
fn import_account(
    sha256: &dyn Hash,
    files: &HashMap<String, PathBuf>,
    contact: &[String],
    directory: &str,
    cache: &Cache,
) {
    if files.is_empty() {
        return;
    }
    let mut candidates = vec![contact];
    if !contact.is_empty() {
        candidates.push(&[]);
    }
    let Some(path) = candidates
        .iter()
        .find_map(|c| files.get(&file_name(sha256, ACCOUNT_PREFIX, c, directory)))
    else {
        tracing::warn!(
            found = files.len(),
            ?contact,
            directory,
            "no rustls-acme account key for these contacts at this ACME directory; not imported — give `.contact(..)` the contacts rustls-acme had, in the same order"
        );
        return;
    };
    match cache.read(ACCOUNT_KEY) {
        Ok(Some(_)) => {
            tracing::debug!(from = %path.display(), "the cache already has an account key; the rustls-acme one is not imported");
            return;
        }
        Ok(None) => {}
        Err(err) => {
            tracing::warn!(%err, "reading the cached account key failed; the rustls-acme one is not imported");
            return;
        }
    }
    let pem = match read_small(path).and_then(|bytes| account_pem(&bytes)) {
        Ok(pem) => pem,
        Err(err) => {
            tracing::warn!(from = %path.display(), %err, "rustls-acme account key not imported");
            return;
        }
    };
    match cache.write(ACCOUNT_KEY, pem.as_bytes()) {
        Ok(()) => tracing::info!(
            from = %path.display(),
            to = %cache.dir().join(ACCOUNT_KEY).display(),
            "imported the rustls-acme account key"
        ),
        Err(err) => {
            tracing::error!(from = %path.display(), %err, "writing the imported account key failed")
        }
    }
}

/// rustls-acme stores the account key as PKCS#8 DER; the crate keeps PEM.
fn account_pem(bytes: &[u8]) -> io::Result<String> {
    let der = match rustls_pemfile::private_key(&mut &bytes[..]) {
        Ok(Some(PrivateKeyDer::Pkcs8(der))) => der,
        _ => PrivatePkcs8KeyDer::from(bytes.to_vec()),
    };
    let key = rcgen::KeyPair::try_from(&der).map_err(|e| invalid(e.to_string()))?;
    if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(invalid("not an ECDSA P-256 key".to_owned()));
    }
    Ok(key.serialize_pem())
}

/// Each managed name gets the latest valid certificate written for this directory that
/// covers it.
fn import_certificates(
    sha256: &dyn Hash,
    files: &[PathBuf],
    directory: &str,
    cache: &Cache,
    names: &[String],
) {
    let mut best: HashMap<&str, (SystemTime, String, &Path)> = HashMap::new();
    for path in files {
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pem = match read_small(path)
            .and_then(|b| String::from_utf8(b).map_err(|e| invalid(e.to_string())))
        {
            Ok(pem) => pem,
            Err(err) => {
                tracing::warn!(from = %path.display(), %err, "rustls-acme certificate file not imported");
                continue;
            }
        };
        let dns_names = match leaf_dns_names(&pem) {
            Ok(n) => n,
            Err(err) => {
                tracing::warn!(from = %path.display(), %err, "rustls-acme certificate file not imported");
                continue;
            }
        };
        if !orders_of(&dns_names, names)
            .iter()
            .any(|domains| file_name(sha256, CERT_PREFIX, domains, directory) == file)
        {
            tracing::debug!(from = %path.display(), ?dns_names, directory, "rustls-acme certificate written for another ACME directory; skipped");
            continue;
        }
        // rustls-acme writes the key, a blank line, the chain; the crate's files have no blank line.
        let pem: String = pem
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        for name in names.iter().filter(|n| dns_names.contains(n)) {
            match Deployed::from_pem(pem.as_bytes(), Some(name)) {
                Ok(deployed) if deployed.is_current() => {
                    let newer = best
                        .get(name.as_str())
                        .is_none_or(|(not_after, _, _)| deployed.not_after > *not_after);
                    if newer {
                        best.insert(name, (deployed.not_after, pem.clone(), path));
                    }
                }
                Ok(_) => {
                    tracing::info!(name, from = %path.display(), "rustls-acme certificate expired or not yet valid; not imported")
                }
                Err(err) => {
                    tracing::warn!(name, from = %path.display(), %err, "rustls-acme certificate not imported")
                }
            }
        }
    }
    let mut chosen: Vec<_> = best.into_iter().collect();
    chosen.sort_by(|a, b| a.0.cmp(b.0));
    for (name, (not_after, pem, from)) in chosen {
        let file = Cache::cert_file(name);
        match cache.read(&file) {
            Ok(Some(_)) => {
                tracing::debug!(name, from = %from.display(), "the cache already has a certificate for this name; the rustls-acme one is not imported");
                continue;
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(name, %err, "reading the cached certificate failed; the rustls-acme one is not imported");
                continue;
            }
        }
        match cache.write(&file, pem.as_bytes()) {
            Ok(()) => tracing::info!(
                name,
                from = %from.display(),
                to = %cache.dir().join(&file).display(),
                not_after = %httpdate::fmt_http_date(not_after),
                "imported the rustls-acme certificate"
            ),
            Err(err) => {
                tracing::error!(name, from = %from.display(), %err, "writing the imported certificate failed")
            }
        }
    }
}

/// The DNS names of the first certificate in `pem`.
fn leaf_dns_names(pem: &str) -> io::Result<Vec<String>> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let leaf = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .ok_or_else(|| invalid("no certificate".to_owned()))??;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| invalid(format!("the certificate cannot be parsed: {e}")))?;
    let mut names: Vec<String> = super::store::dns_names(&cert)
        .into_iter()
        .map(str::to_ascii_lowercase)
        .collect();
    names.dedup();
    Ok(names)
}

/// The domain lists rustls-acme may have hashed for a certificate holding `dns_names`: every
/// order of them when there are few, else their order in the certificate, sorted, and the
/// configured order.
fn orders_of(dns_names: &[String], configured: &[String]) -> Vec<Vec<String>> {
    if dns_names.len() <= MAX_PERMUTED_NAMES {
        let mut all = Vec::new();
        permute(&mut dns_names.to_vec(), 0, &mut all);
        return all;
    }
    let mut sorted = dns_names.to_vec();
    sorted.sort();
    let in_config: Vec<String> = configured
        .iter()
        .filter(|n| dns_names.contains(n))
        .cloned()
        .collect();
    vec![dns_names.to_vec(), sorted, in_config]
}

/// Heap's algorithm would do; this is the plain recursive swap.
fn permute(items: &mut Vec<String>, k: usize, out: &mut Vec<Vec<String>>) {
    if k + 1 >= items.len() {
        out.push(items.clone());
        return;
    }
    for i in k..items.len() {
        items.swap(k, i);
        permute(items, k + 1, out);
        items.swap(k, i);
    }
}

/// `<prefix><b64url(SHA-256(item₁ 0x00 item₂ 0x00 … directory_url))>`, as rustls-acme's
/// `DirCache` names its files.
fn file_name(
    sha256: &dyn Hash,
    prefix: &str,
    items: &[impl AsRef<str>],
    directory: &str,
) -> String {
    let mut ctx = sha256.start();
    for item in items {
        ctx.update(item.as_ref().as_bytes());
        ctx.update(&[0]);
    }
    ctx.update(directory.as_bytes());
    format!("{prefix}{}", base64url(ctx.finish().as_ref()))
}

/// SHA-256 from the crypto provider the crate already uses (no hashing crate of its own).
fn sha256() -> Option<&'static dyn Hash> {
    super::provider()
        .cipher_suites
        .iter()
        .filter_map(|suite| suite.tls13())
        .map(|suite| suite.common.hash_provider)
        .find(|hash| hash.algorithm() == HashAlgorithm::SHA256)
}

/// base64url without padding (RFC 4648 §5).
fn base64url(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(TABLE[((v >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// Reads a regular file of at most [`MAX_FILE_LEN`] bytes.
fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    let meta = fs::metadata(path)?;
    if !meta.is_file() || meta.len() > MAX_FILE_LEN {
        return Err(invalid("not a regular file of at most 1 MiB".to_owned()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    fs::File::open(path)?
        .take(MAX_FILE_LEN)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_rustls_acme_dir_cache() {
        // Python: "cached_cert_" + urlsafe_b64encode(sha256(b"a.test\0b.test\0https://x/dir")).rstrip("=")
        let sha = sha256().unwrap();
        assert_eq!(
            file_name(sha, CERT_PREFIX, &["a.test", "b.test"], "https://x/dir"),
            "cached_cert_eVDe1zOqLJcwzzzidEF_AmYS1E5CpW5iMDkbeuJQg00"
        );
        assert_eq!(
            file_name(sha, ACCOUNT_PREFIX, &[] as &[&str], "https://x/dir"),
            "cached_account_kD3IJP5-rjn1IMHXle-agOoLEaGJLEHAI5Fok6Bhkn0"
        );
    }

    #[test]
    fn base64url_has_no_padding() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn every_order_of_a_few_names_is_tried() {
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let orders = orders_of(&names, &[]);
        assert_eq!(orders.len(), 6);
        assert!(orders.contains(&vec!["c".to_owned(), "a".to_owned(), "b".to_owned()]));
        let many: Vec<String> = (0..9).map(|i| format!("n{i}")).collect();
        assert_eq!(orders_of(&many, &[]).len(), 3);
    }
}
