//! Where `demo` and `drill` keep their files: the `--dir` given (kept), or
//! a fresh private temporary directory (0700, an unguessable name, removed
//! when the run ends). Secrets in it are written 0600.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// A run's directory; a temporary one is removed on drop.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    /// `dir` if given (created 0700 if missing, kept), else a new
    /// `<temp>/<prefix>-<pid>-<random>` (created 0700, removed on drop).
    pub fn new(dir: Option<&Path>, prefix: &str) -> std::io::Result<WorkDir> {
        match dir {
            Some(dir) => {
                private_dir().recursive(true).create(dir)?;
                Ok(WorkDir {
                    path: dir.to_path_buf(),
                    keep: true,
                })
            }
            None => {
                let mut random = [0u8; 6];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
                    .map_err(|_| std::io::Error::other("no system randomness"))?;
                let name = format!(
                    "{prefix}-{}-{}",
                    std::process::id(),
                    residency_core::hex::encode(&random)
                );
                let path = std::env::temp_dir().join(name);
                // Not recursive: fails rather than reuse anything there.
                private_dir().create(&path)?;
                Ok(WorkDir { path, keep: false })
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the directory stays after the run (`--dir`).
    pub fn kept(&self) -> bool {
        self.keep
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn private_dir() -> std::fs::DirBuilder {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
}

/// Writes a secret (a private key) readable by its owner only.
pub fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    // An existing file keeps its mode: make sure.
    #[cfg(unix)]
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)
}

/// The log signing key at `path` for `origin`, made there first if there is
/// none: a log is tied to its key, so a rerun in the same directory must
/// sign with the key it started with.
pub fn log_key(path: &Path, origin: &str) -> anyhow::Result<residency_log::note::Signer> {
    if !path.exists() {
        write_secret(path, &residency_log::note::Signer::generate_pkcs8()?)?;
    }
    let pkcs8 = std::fs::read(path)?;
    Ok(residency_log::note::Signer::from_pkcs8(origin, &pkcs8)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_temporary_directory_is_private_and_removed() {
        let work = WorkDir::new(None, "rp-workdir-test").unwrap();
        let path = work.path().to_path_buf();
        assert_eq!(mode(&path), 0o700);
        assert!(!work.kept());
        write_secret(&path.join("k"), b"secret").unwrap();
        assert_eq!(mode(&path.join("k")), 0o600);
        // A second one never reuses the name.
        let other = WorkDir::new(None, "rp-workdir-test").unwrap();
        assert_ne!(other.path(), path);
        drop(work);
        assert!(!path.exists(), "removed on drop");
    }

    #[test]
    fn a_given_directory_is_kept_and_secrets_are_tightened() {
        let base = WorkDir::new(None, "rp-workdir-given").unwrap();
        let given = base.path().join("runs/one");
        let work = WorkDir::new(Some(&given), "unused").unwrap();
        assert!(work.kept());
        assert_eq!(mode(&given), 0o700);
        std::fs::write(given.join("k"), b"old").unwrap();
        std::fs::set_permissions(given.join("k"), std::fs::Permissions::from_mode(0o644)).unwrap();
        write_secret(&given.join("k"), b"new").unwrap();
        assert_eq!(
            mode(&given.join("k")),
            0o600,
            "an existing file is tightened"
        );
        assert_eq!(std::fs::read(given.join("k")).unwrap(), b"new");
        drop(work);
        assert!(given.exists(), "--dir is kept");
    }
}
