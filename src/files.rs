//! The files a configuration names, and a fingerprint of their content, so
//! that a reload can tell when any of them changed without reading them.

use std::path::PathBuf;
use std::time::SystemTime;

use crate::config::Config;

/// What identifies the current content of every file the state was built
/// from: resolved path, modification time, length, inode.
pub type Fingerprint = Vec<(PathBuf, Option<(SystemTime, u64, u64)>)>;

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
    }
    files.extend(config.upstream.ca.iter().cloned());
    files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok().map(|m| {
                #[cfg(unix)]
                let ino = std::os::unix::fs::MetadataExt::ino(&m);
                #[cfg(not(unix))]
                let ino = 0;
                (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), ino)
            });
            (std::fs::canonicalize(&f).unwrap_or(f), meta)
        })
        .collect()
}
