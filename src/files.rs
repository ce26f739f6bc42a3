//! The files a configuration names, and a fingerprint of their content, so
//! that a reload can tell when any of them changed without reading them —
//! the configuration file included: polling costs one `stat` per file and
//! never parses anything.

use std::path::PathBuf;
use std::time::SystemTime;

use crate::config::Config;

/// What identifies the current content of every file a state was built
/// from: per file as named, its resolved path (symlinks followed again on
/// every poll, so Kubernetes' `..data` swaps count as changes), modification
/// time, length and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<File>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct File {
    named: PathBuf,
    resolved: PathBuf,
    meta: Option<(SystemTime, u64, u64)>,
}

/// Fingerprints the config's source file and every file it names.
pub fn fingerprint(config: &Config) -> Fingerprint {
    let mut files: Vec<PathBuf> = config.source.iter().cloned().collect();
    files.push(config.geoip.database.clone());
    for l in &config.listeners {
        for c in &l.certificates {
            files.push(c.cert.clone());
            files.push(c.key.clone());
        }
        files.extend(l.client_ca.iter().cloned());
        files.extend(l.client_crl.iter().cloned());
    }
    for pair in config.transparency.iter().flat_map(|t| &t.tls) {
        files.push(pair.cert.clone());
        files.push(pair.key.clone());
    }
    files.extend(config.upstream.ca.iter().cloned());
    files.extend(config.tenancy.files.iter().cloned());
    Fingerprint::of(files)
}

impl Fingerprint {
    fn of(named: impl IntoIterator<Item = PathBuf>) -> Fingerprint {
        Fingerprint(named.into_iter().map(File::now).collect())
    }

    /// The same files as they are now.
    pub fn again(&self) -> Fingerprint {
        Fingerprint::of(self.0.iter().map(|f| f.named.clone()))
    }
}

impl File {
    fn now(named: PathBuf) -> File {
        let meta = std::fs::metadata(&named).ok().map(|m| {
            #[cfg(unix)]
            let ino = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let ino = 0;
            (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), ino)
        });
        let resolved = std::fs::canonicalize(&named).unwrap_or_else(|_| named.clone());
        File {
            named,
            resolved,
            meta,
        }
    }
}
