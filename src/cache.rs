//! The certificate cache: plain files in one directory per ACME directory URL.
//!
//! Layout (readable on purpose, so an operator can see what is there):
//! ```text
//! <cache_dir>/                      0700
//!   <directory-url-slug>/           0700, e.g. acme-v02.api.letsencrypt.org_directory
//!     account-key.pem               0600, the ACME account's PKCS#8 key
//!     example.com.pem               0600, the certificate's private key, then its chain
//! ```
//! Every write goes to a temporary file in the same directory, is fsync'd, given mode 0600
//! whatever the umask, and renamed over the old file; the directory is fsync'd after. A crash
//! leaves either the complete old file or the complete new one. A file that cannot be parsed is
//! renamed to `<file>.corrupt-<unix seconds>` and treated as absent.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, ErrorKind};

/// Cache files are small PEM or JSON files: anything bigger is not ours.
const MAX_FILE_LEN: u64 = 1024 * 1024;

/// A temporary file this old was left by a writer that died.
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// The account key's file name.
pub(crate) const ACCOUNT_KEY: &str = "account-key.pem";

/// One ACME directory's part of the cache.
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// Creates (0700) and checks the cache directory for `directory_url`.
    pub(crate) fn open(root: &Path, directory_url: &str) -> Result<Self, Error> {
        let dir = root.join(slug(directory_url));
        let fail = |what: &str, err: io::Error| {
            let hint = match err.kind() {
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                    " — make it writable by this user (a Docker volume, or set the cache directory elsewhere)"
                }
                _ => "",
            };
            Error::new(
                ErrorKind::Cache,
                format!("cache directory {}: {what}: {err}{hint}", dir.display()),
                err,
            )
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| fail("cannot create it", e))?;
        let meta = fs::symlink_metadata(&dir).map_err(|e| fail("cannot read it", e))?;
        if !meta.is_dir() {
            return Err(fail(
                "is not a directory",
                io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
            ));
        }
        // Our own subdirectory holds private keys: others get no access, whatever the umask.
        if meta.mode() & 0o077 != 0 {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| fail("cannot restrict it to mode 0700", e))?;
        }
        if let Ok(root_meta) = fs::metadata(root) {
            if root_meta.mode() & 0o022 != 0 {
                tracing::warn!(
                    cache_dir = %root.display(),
                    "the cache directory is writable by other users; they could replace certificates — chmod 700 it"
                );
            }
        }
        let cache = Self { dir: dir.clone() };
        cache.remove_stale_temp_files();
        // Prove now, not at the first issuance, that we can write here.
        let probe = ".write-probe";
        cache
            .write(probe, b"probe")
            .map_err(|e| fail("is not writable", e))?;
        let _ = fs::remove_file(cache.dir.join(probe));
        Ok(cache)
    }

    /// A crash mid-write leaves a temporary file behind (never the real one half-written).
    /// Those older than an hour belong to no live writer: remove them.
    fn remove_stale_temp_files(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let stale = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMP_AGE);
            if name.to_string_lossy().starts_with('.')
                && name.to_string_lossy().contains(".tmp-")
                && stale
            {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// The directory this cache writes to.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The certificate file for `name`.
    pub(crate) fn cert_file(name: &str) -> String {
        format!("{name}.pem")
    }

    /// Reads `file`; `Ok(None)` when absent. Symlinks, directories and oversized files are
    /// moved aside and reported as absent.
    pub(crate) fn read(&self, file: &str) -> io::Result<Option<Vec<u8>>> {
        let path = self.dir.join(file);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if !meta.file_type().is_file() {
            self.quarantine(file, "not a regular file (a symlink or a directory)");
            return Ok(None);
        }
        if meta.len() > MAX_FILE_LEN {
            self.quarantine(file, "larger than any certificate file");
            return Ok(None);
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        File::open(&path)?
            .take(MAX_FILE_LEN)
            .read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    }

    /// Writes `file` atomically with mode 0600.
    pub(crate) fn write(&self, file: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!(
            ".{file}.tmp-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            // The mode above is filtered by the umask; set it explicitly.
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.write_all(bytes)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, self.dir.join(file))?;
            File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Moves a file that cannot be used out of the way, keeping it for inspection.
    pub(crate) fn quarantine(&self, file: &str, reason: &str) {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let from = self.dir.join(file);
        // Never overwrite an earlier file moved aside in the same second: each is evidence.
        let to = (0..1000)
            .map(|n| match n {
                0 => self.dir.join(format!("{file}.corrupt-{secs}")),
                n => self.dir.join(format!("{file}.corrupt-{secs}-{n}")),
            })
            .find(|p| fs::symlink_metadata(p).is_err())
            .unwrap_or_else(|| self.dir.join(format!("{file}.corrupt-{secs}-last")));
        match fs::rename(&from, &to) {
            Ok(()) => tracing::warn!(
                file = %from.display(),
                moved_to = %to.display(),
                reason,
                "unusable cache file moved aside; it will be replaced"
            ),
            Err(err) => tracing::error!(
                file = %from.display(),
                reason,
                %err,
                "unusable cache file could not be moved aside"
            ),
        }
    }
}

/// A file-system-safe, readable name for a directory URL.
fn slug(directory_url: &str) -> String {
    let rest = directory_url
        .strip_prefix("https://")
        .unwrap_or(directory_url);
    let slug: String = rest
        .trim_end_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if slug.is_empty() || slug.starts_with('.') {
        format!("_{slug}")
    } else {
        slug
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_readable_and_safe() {
        assert_eq!(
            slug("https://acme-v02.api.letsencrypt.org/directory"),
            "acme-v02.api.letsencrypt.org_directory"
        );
        assert_eq!(slug("https://127.0.0.1:14000/dir"), "127.0.0.1_14000_dir");
        assert_eq!(slug("https://../x"), "_.._x");
    }
}
