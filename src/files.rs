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
    Fingerprint::of(named(config))
}

/// The config's source file and every file it names.
pub fn named(config: &Config) -> Vec<PathBuf> {
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
    files
}

impl Fingerprint {
    fn of(named: impl IntoIterator<Item = PathBuf>) -> Fingerprint {
        Fingerprint(named.into_iter().map(File::now).collect())
    }

    /// The same files as they are now.
    /// These files, and those of `more` not among them as they are now.
    pub fn and(mut self, more: Vec<PathBuf>) -> Fingerprint {
        for named in more {
            if !self.0.iter().any(|f| f.named == named) {
                self.0.push(File::now(named));
            }
        }
        self
    }

    pub fn again(&self) -> Fingerprint {
        Fingerprint::of(self.0.iter().map(|f| f.named.clone()))
    }

    /// These files (a new state's, some of them read before this was
    /// taken), each that `before` — taken before any was read — saw
    /// otherwise put back as `before` saw it: a file changed while the
    /// state was being built may not be in it, and stays a change for the
    /// next poll. (A file `before` did not watch is taken as it is here.)
    pub fn no_newer_than(self, before: &Fingerprint) -> Fingerprint {
        let files =
            self.0.into_iter().map(
                |file| match before.0.iter().find(|b| b.named == file.named) {
                    Some(earlier) if *earlier != file => earlier.clone(),
                    _ => file,
                },
            );
        Fingerprint(files.collect())
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

#[cfg(test)]
mod tests {
    use super::Fingerprint;

    /// A file that changed between the fingerprint taken before a reload
    /// read it and the new state's own keeps the earlier stamp: the next
    /// poll sees it changed and reloads again. Unchanged files, and files
    /// only the new state watches, keep the new state's.
    #[test]
    fn a_file_changed_while_the_state_was_built_stays_a_change() {
        let dir = std::env::temp_dir().join(format!("rp-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (config, cert, added) = (dir.join("c.toml"), dir.join("c.pem"), dir.join("t.toml"));
        std::fs::write(&config, "one").unwrap();
        std::fs::write(&cert, "cert").unwrap();
        let before = Fingerprint::of([config.clone(), cert.clone()]);
        // Rewritten (another length) while the reload was reading.
        std::fs::write(&config, "three").unwrap();
        std::fs::write(&added, "tenants").unwrap();
        let built = Fingerprint::of([config.clone(), cert.clone(), added.clone()]);
        let seen = built.clone().no_newer_than(&before);
        assert_eq!(
            seen.0[0], before.0[0],
            "the changed file keeps its earlier stamp"
        );
        assert_eq!(seen.0[1], built.0[1]);
        assert_eq!(
            seen.0[2], built.0[2],
            "a newly watched file is taken as built"
        );
        assert_ne!(seen.again(), seen, "the next poll reloads");
        assert_eq!(built.again(), built);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
