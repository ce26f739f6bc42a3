//! The log's files: C2SP tlog-tiles laid out under the log directory
//! exactly as the spec names them (`tile/<L>/<N>[.p/<W>]`,
//! `tile/entries/<N>[.p/<W>]`, `checkpoint`), so the directory can also be
//! served by any static file server. The entry bundle being filled lives in
//! `staging.<N>` until its 256th entry, then is renamed to its tile name.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::tiles::{self, Tile, WIDTH};

/// The log directory.
#[derive(Debug, Clone)]
pub struct Disk {
    dir: PathBuf,
    /// The directory's device and inode when the log opened it (after
    /// taking its lock): [`Disk::replaced`] compares.
    identity: Option<(u64, u64)>,
}

/// A directory's device and inode, `None` when it cannot be read.
fn identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

impl Disk {
    pub fn new(dir: PathBuf) -> Disk {
        let identity = identity(&dir);
        Disk { dir, identity }
    }

    /// Whether the path of the log's directory no longer names the
    /// directory the log opened — a volume mounted over it, the directory
    /// moved or removed — and why. Every file but the open staging bundle
    /// and index is written by path: the rest of the log would go to
    /// another directory, whose own checkpoint it overwrites (disk audit,
    /// stop 69: a volume mounted over a running log's directory; the
    /// volume's receipts all became INVALID). One `stat(2)`.
    pub fn replaced(&self) -> Option<String> {
        let now = identity(&self.dir);
        (now != self.identity).then(|| {
            format!(
                "{}: the log's directory is no longer the one it opened (a volume mounted over it, or the directory moved or removed): nothing more is written; restart the proxy on the right directory",
                self.dir.display()
            )
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `tile` is stored.
    pub fn path(&self, tile: Tile) -> PathBuf {
        self.dir.join(tile.path())
    }

    /// The bundle of entry tile `index` while it is being filled.
    pub fn staging(&self, index: u64) -> PathBuf {
        self.dir.join(format!("staging.{index}"))
    }

    /// The whole file, or `None` if it does not exist.
    pub fn read(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>> {
        match File::open(path) {
            Ok(mut f) => {
                let mut out = Vec::new();
                f.read_to_end(&mut out)?;
                Ok(Some(out))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A full tile as stored, or a partial one as the first `width` hashes
    /// (entries) of the full tile of the same index. Stored partial files
    /// are never read: they are written without an fsync (for static file
    /// servers), so after a power loss one may be short or zeroed; the log
    /// serves the right edge's partials from memory instead.
    pub fn read_tile(&self, tile: Tile) -> std::io::Result<Option<Vec<u8>>> {
        if u64::from(tile.width) == WIDTH {
            return Ok(self
                .read(&self.path(tile))?
                .filter(|b| b.len() == 32 * WIDTH as usize));
        }
        let full = Tile {
            width: WIDTH as u16,
            ..tile
        };
        let Some(bytes) = self.read(&self.path(full))? else {
            return Ok(None);
        };
        Ok(prefix(tile, &bytes).map(<[u8]>::to_vec))
    }

    /// Writes `bytes` to `path` through a temporary file and a rename, so a
    /// reader never sees half of it. With `sync`, the file and its
    /// directory are fsynced; otherwise the caller must sync the returned
    /// paths (the file and every directory created or changed) before
    /// relying on it.
    pub fn write(&self, path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<Vec<PathBuf>> {
        let mut touched = Vec::new();
        let parent = path.parent().unwrap_or(&self.dir);
        self.create_dirs(parent, &mut touched)?;
        replace(path, bytes, sync)?;
        if !sync {
            touched.push(path.to_path_buf());
            touched.push(path.parent().unwrap_or(&self.dir).to_path_buf());
        }
        Ok(touched)
    }

    /// Creates `dir` and its missing parents inside the log directory,
    /// noting each directory whose entries changed.
    pub fn create_dirs(&self, dir: &Path, touched: &mut Vec<PathBuf>) -> std::io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            if parent != self.dir && parent.starts_with(&self.dir) {
                self.create_dirs(parent, touched)?;
            }
            touched.push(parent.to_path_buf());
        }
        match std::fs::DirBuilder::new().mode(0o755).create(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Replaces `path` with `bytes` so that a crash leaves the old or the new
/// content, never a mix: a temporary file beside it, fsynced, renamed over
/// it, and the directory fsynced.
pub fn replace_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, true)
}

/// Writes a temporary file beside `path` and renames it over `path`; with
/// `sync`, fsyncs the file before and the directory after the rename.
fn replace(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = parent.join(format!(".{name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if sync {
        sync_path(parent)?;
    }
    Ok(())
}

/// fsyncs a file or directory by path.
pub fn sync_path(path: &Path) -> std::io::Result<()> {
    sync_path_said(path).map_err(|(e, _)| e)
}

/// [`sync_path`], its error saying whether the fsync itself failed
/// (`true`: what it was to make durable may be lost) or the open before it
/// (out of file descriptors, say: nothing lost, to be tried again; it was
/// taken for a failed fsync, and no checkpoint was signed until a restart:
/// exhaustion audit, stop 65).
pub fn sync_path_said(path: &Path) -> Result<(), (std::io::Error, bool)> {
    #[cfg(test)]
    if failing::take(path) {
        return Err((std::io::Error::other("injected fsync failure"), true));
    }
    let file = File::open(path).map_err(|e| (e, false))?;
    file.sync_all().map_err(|e| (e, true))
}

/// Fsyncs each of `paths` once — the files and directories that a run of
/// writes without a sync touched ([`Disk::write`]) — files before the
/// directories naming them. On a journalling file system the first fsync
/// commits what the others would, so a run of writes costs about one
/// commit, not one per file. The error names the path and says whether
/// the fsync itself failed (see [`sync_path_said`]).
pub fn sync_each<'a>(
    paths: impl IntoIterator<Item = &'a PathBuf>,
) -> Result<(), (&'a Path, std::io::Error, bool)> {
    let mut paths: Vec<&PathBuf> = paths.into_iter().collect();
    paths.sort();
    paths.dedup();
    // (Stable: the sorted order kept within files and directories.)
    paths.sort_by_cached_key(|p| p.is_dir());
    for path in paths {
        sync_path_said(path).map_err(|(e, synced)| (path.as_path(), e, synced))?;
    }
    Ok(())
}

/// The first `tile.width` hashes or entries of a full tile's bytes.
pub fn prefix(tile: Tile, full: &[u8]) -> Option<&[u8]> {
    match tile.level {
        Some(_) => full.get(..usize::from(tile.width) * 32),
        None => bundle_prefix(full, usize::from(tile.width)),
    }
}

/// The bytes of the first `count` entries of a bundle (`None` if it holds
/// fewer or is malformed before them).
pub fn bundle_prefix(bundle: &[u8], count: usize) -> Option<&[u8]> {
    let mut at = 0usize;
    for _ in 0..count {
        let len = bundle.get(at..at + 2)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        at += 2 + len;
        if at > bundle.len() {
            return None;
        }
    }
    Some(&bundle[..at])
}

/// The complete entries at the start of a staging bundle that may end
/// torn, and the bytes they take. A zero length ends them: the log never
/// writes an empty entry, and a staging bundle's unused tail is zeros.
pub fn complete_entries(bundle: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(len) = bundle.get(at..at + 2) {
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len == 0 {
            break;
        }
        let Some(entry) = bundle.get(at + 2..at + 2 + len) else {
            break;
        };
        out.push(entry);
        at += 2 + len;
    }
    (out, at)
}

/// Entries of a full or partial bundle as read from disk.
pub fn entries(bundle: &[u8]) -> Option<Vec<&[u8]>> {
    tiles::entries(bundle)
}

/// Tests make the next `sync_path` of a given path fail.
#[cfg(test)]
pub mod failing {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    /// The next [`super::sync_path`] of `path` fails (once).
    pub fn once(path: &Path) {
        PATHS.lock().unwrap().push(path.to_path_buf());
    }

    pub(super) fn take(path: &Path) -> bool {
        let mut paths = PATHS.lock().unwrap();
        match paths.iter().position(|p| p == path) {
            Some(i) => {
                paths.remove(i);
                true
            }
            None => false,
        }
    }
}
