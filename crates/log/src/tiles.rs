//! C2SP tlog-tiles (<https://c2sp.org/tlog-tiles>): the names of hash tiles
//! and entry bundles, and their contents.
//!
//! A tile at level `L`, index `N` lists up to 256 consecutive Merkle Tree
//! Hashes at height `8·L` of the tree, starting at node `N·256`; a full one
//! is 256 hashes (8,192 bytes), a partial one (the tree's right edge)
//! `W` < 256 of them and is named with `.p/<W>`. Level 0 holds leaf hashes;
//! the entry bundle of the same index holds the entries themselves, each
//! prefixed with its length as a big-endian `u16`.
//!
//! `N` is written as zero-padded 3-digit path elements, all but the last
//! prefixed with `x`: index 1234067 is `x001/x234/067`.

use crate::merkle::{self, Hash};

/// Hashes in a full tile.
pub const WIDTH: u64 = 256;
/// Tile levels the spec allows (0 to 63).
pub const MAX_LEVEL: u8 = 63;
/// The largest entry a bundle can hold (its length prefix is a `u16`).
pub const MAX_ENTRY: usize = u16::MAX as usize;

/// One tile or entry bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    /// `None`: the entry bundle; `Some(l)`: the hash tile at level `l`.
    pub level: Option<u8>,
    pub index: u64,
    /// Hashes (or entries) in it: 256 for a full tile, 1–255 for a partial.
    pub width: u16,
}

impl Tile {
    /// The path under the log's prefix, e.g. `tile/0/x001/x234/067.p/8`
    /// or `tile/entries/000`.
    pub fn path(&self) -> String {
        let mut out = String::from("tile/");
        match self.level {
            Some(l) => out.push_str(&l.to_string()),
            None => out.push_str("entries"),
        }
        let digits = self.index.to_string();
        // Groups of three digits, the first one zero-padded.
        let pad = (3 - digits.len() % 3) % 3;
        let padded = format!("{}{digits}", "0".repeat(pad));
        let groups: Vec<&str> = padded
            .as_bytes()
            .chunks(3)
            .map(|c| std::str::from_utf8(c).unwrap_or("000"))
            .collect();
        for (i, g) in groups.iter().enumerate() {
            out.push('/');
            if i + 1 < groups.len() {
                out.push('x');
            }
            out.push_str(g);
        }
        if u64::from(self.width) < WIDTH {
            out.push_str(&format!(".p/{}", self.width));
        }
        out
    }

    /// Parses a path as the spec writes it (after the prefix, without a
    /// leading `/`); `None` for anything else (leading zeros, a bad group,
    /// a width of 0 or 256+).
    pub fn parse(path: &str) -> Option<Tile> {
        let rest = path.strip_prefix("tile/")?;
        let (level_part, rest) = rest.split_once('/')?;
        let level = if level_part == "entries" {
            None
        } else {
            Some(decimal(level_part).filter(|l| *l <= u64::from(MAX_LEVEL))? as u8)
        };
        let (index_part, width) = match rest.split_once(".p/") {
            Some((index, w)) => {
                let w = decimal(w).filter(|w| (1..WIDTH).contains(w))?;
                (index, w as u16)
            }
            None => (rest, WIDTH as u16),
        };
        let groups: Vec<&str> = index_part.split('/').collect();
        let mut index: u64 = 0;
        for (i, g) in groups.iter().enumerate() {
            let last = i + 1 == groups.len();
            let digits = if last { *g } else { g.strip_prefix('x')? };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            index = index
                .checked_mul(1000)?
                .checked_add(digits.parse::<u64>().ok()?)?;
        }
        // One canonical name per index: no leading all-zero groups.
        if groups.len() > 1 && groups[0] == "x000" {
            return None;
        }
        Some(Tile {
            level,
            index,
            width,
        })
    }

    /// The hash level of the tile (`0` for an entry bundle, whose entries
    /// hash to the level-0 tile).
    pub fn hash_level(&self) -> u8 {
        self.level.unwrap_or(0)
    }

    /// The tree size this tile needs: it exists once the tree has this many
    /// leaves (`None` on overflow, i.e. never).
    pub fn needs_size(&self) -> Option<u64> {
        let span = 1u64.checked_shl(8 * u32::from(self.hash_level()))?;
        self.index
            .checked_mul(WIDTH)?
            .checked_add(u64::from(self.width))?
            .checked_mul(span)
    }

    /// The tile at `level` (or the entry bundle, `None`) holding node
    /// `node` of that level, as wide as a tree of `size` leaves makes it.
    pub fn containing(level: Option<u8>, node: u64, size: u64) -> Tile {
        let index = node / WIDTH;
        let span_bits = 8 * u32::from(level.unwrap_or(0));
        let nodes = size >> span_bits;
        let width = (nodes - index * WIDTH).min(WIDTH) as u16;
        Tile {
            level,
            index,
            width,
        }
    }
}

/// A decimal ASCII integer without leading zeros.
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

/// Appends `entry` to an entry bundle: its length as a big-endian `u16`,
/// then its bytes. `false` (nothing appended) if it is too long.
pub fn push_entry(bundle: &mut Vec<u8>, entry: &[u8]) -> bool {
    let Ok(len) = u16::try_from(entry.len()) else {
        return false;
    };
    bundle.extend_from_slice(&len.to_be_bytes());
    bundle.extend_from_slice(entry);
    true
}

/// The entries of a bundle; `None` if it is malformed.
pub fn entries(bundle: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = bundle;
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        if tail.len() < len {
            return None;
        }
        let (entry, tail) = tail.split_at(len);
        out.push(entry);
        rest = tail;
    }
    Some(out)
}

/// Runs `f` over the tree of `size` leaves, fetching with `fetch` the
/// tiles it asks for; `None` when a tile cannot be had or the request is
/// out of range.
pub fn prove<T>(
    size: u64,
    mut fetch: impl FnMut(Tile) -> Option<Vec<u8>>,
    mut f: impl FnMut(&Proofs) -> Result<T, Need>,
) -> Option<T> {
    let mut proofs = Proofs::new(size);
    // A proof needs O(log n) tiles; the bound only stops a loop on a tile
    // that keeps being refused.
    for _ in 0..256 {
        match f(&proofs) {
            Ok(v) => return Some(v),
            Err(Need::OutOfRange) => return None,
            Err(Need::Missing(tile)) => {
                let bytes = fetch(tile)?;
                proofs.insert(tile, &bytes).ok()?;
            }
        }
    }
    None
}

/// Computes RFC 6962 proofs for a tree of `size` leaves from its tiles
/// alone, as a tlog client does. It asks for the tiles it lacks: a method
/// returns `Err(Missing(tile))`, the caller fetches that tile, hands it to
/// [`Proofs::insert`] and asks again (a proof needs O(log n) tiles).
#[derive(Debug)]
pub struct Proofs {
    size: u64,
    tiles: std::collections::HashMap<(u8, u64), Vec<Hash>>,
}

/// What a proof still needs, or why it cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Fetch this tile and [`Proofs::insert`] it.
    Missing(Tile),
    /// The request is out of range (index or sizes beyond the tree).
    OutOfRange,
}

impl Proofs {
    /// For the tree of `size` leaves (a signed checkpoint's).
    pub fn new(size: u64) -> Proofs {
        Proofs {
            size,
            tiles: std::collections::HashMap::new(),
        }
    }

    /// Adds a fetched hash tile; refuses bytes of the wrong length.
    pub fn insert(&mut self, tile: Tile, bytes: &[u8]) -> Result<(), String> {
        let level = tile.level.ok_or("an entry bundle is not a hash tile")?;
        if bytes.len() != usize::from(tile.width) * 32 {
            return Err(format!(
                "{} has {} bytes, not {}",
                tile.path(),
                bytes.len(),
                usize::from(tile.width) * 32
            ));
        }
        let hashes = bytes
            .chunks(32)
            .map(|c| c.try_into().unwrap_or([0; 32]))
            .collect();
        self.tiles.insert((level, tile.index), hashes);
        Ok(())
    }

    /// Adds a hash tile's hashes (the tile's width of them).
    pub fn insert_hashes(&mut self, tile: Tile, hashes: Vec<Hash>) {
        if let Some(level) = tile.level {
            self.tiles.insert((level, tile.index), hashes);
        }
    }

    /// The stored hash at tile level `level` (height `8·level`), node `node`.
    fn stored(&self, level: u8, node: u64) -> Result<Hash, Need> {
        let tile = Tile::containing(Some(level), node, self.size);
        let hashes = self
            .tiles
            .get(&(level, tile.index))
            .ok_or(Need::Missing(tile))?;
        hashes
            .get((node % WIDTH) as usize)
            .copied()
            .ok_or(Need::Missing(tile))
    }

    /// MTH of leaves `[start, end)` (`start < end <= size`), from the
    /// stored hashes of its complete aligned parts.
    fn subtree(&self, start: u64, end: u64) -> Result<Hash, Need> {
        let n = end - start;
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let height = n.trailing_zeros();
            let (level, within) = ((height / 8) as u8, height % 8);
            let first = start >> (8 * u32::from(level));
            let mut nodes = (first..first + (1 << within))
                .map(|node| self.stored(level, node))
                .collect::<Result<Vec<_>, _>>()?;
            while nodes.len() > 1 {
                nodes = nodes
                    .chunks(2)
                    .map(|pair| merkle::node_hash(&pair[0], &pair[1]))
                    .collect();
            }
            return Ok(nodes[0]);
        }
        let k = split(n);
        Ok(merkle::node_hash(
            &self.subtree(start, start + k)?,
            &self.subtree(start + k, end)?,
        ))
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Result<Hash, Need> {
        if index >= self.size {
            return Err(Need::OutOfRange);
        }
        self.stored(0, index)
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Result<Hash, Need> {
        if self.size == 0 {
            return Ok(merkle::empty_root());
        }
        self.subtree(0, self.size)
    }

    /// RFC 6962 §2.1.1 `PATH(index, D[size])`, ordered leaf to root.
    pub fn inclusion_proof(&self, index: u64) -> Result<Vec<Hash>, Need> {
        if index >= self.size {
            return Err(Need::OutOfRange);
        }
        let mut path = Vec::new();
        let (mut start, mut end) = (0, self.size);
        // Walked root to leaf, then reversed.
        while end - start > 1 {
            let k = split(end - start);
            if index < start + k {
                path.push(self.subtree(start + k, end)?);
                end = start + k;
            } else {
                path.push(self.subtree(start, start + k)?);
                start += k;
            }
        }
        path.reverse();
        Ok(path)
    }

    /// RFC 6962 §2.1.2 `PROOF(old, D[size])`.
    pub fn consistency_proof(&self, old: u64) -> Result<Vec<Hash>, Need> {
        if old == 0 || old > self.size {
            return Err(Need::OutOfRange);
        }
        let mut proof = Vec::new();
        let (mut start, mut end, mut m, mut whole) = (0, self.size, old, true);
        loop {
            let n = end - start;
            if m == n {
                if !whole {
                    proof.push(self.subtree(start, end)?);
                }
                break;
            }
            let k = split(n);
            if m <= k {
                proof.push(self.subtree(start + k, end)?);
                end = start + k;
            } else {
                proof.push(self.subtree(start, start + k)?);
                start += k;
                m -= k;
                whole = false;
            }
        }
        proof.reverse();
        Ok(proof)
    }
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile(level: Option<u8>, index: u64, width: u16) -> Tile {
        Tile {
            level,
            index,
            width,
        }
    }

    #[test]
    fn paths_follow_the_spec() {
        // The spec's example: index 1234067 is x001/x234/067.
        assert_eq!(tile(Some(0), 1_234_067, 256).path(), "tile/0/x001/x234/067");
        assert_eq!(tile(Some(2), 0, 1).path(), "tile/2/000.p/1");
        assert_eq!(tile(None, 273, 112).path(), "tile/entries/273.p/112");
        assert_eq!(tile(Some(1), 1000, 256).path(), "tile/1/x001/000");
        assert_eq!(tile(Some(63), 5, 255).path(), "tile/63/005.p/255");
        for t in [
            tile(Some(0), 1_234_067, 256),
            tile(Some(2), 0, 1),
            tile(None, 273, 112),
            tile(Some(1), 1000, 256),
            tile(Some(0), u64::MAX / 256, 7),
        ] {
            assert_eq!(Tile::parse(&t.path()), Some(t), "{}", t.path());
        }
    }

    #[test]
    fn non_canonical_paths_are_refused() {
        for bad in [
            "tile/00/000",
            "tile/64/000",
            "tile/0/0",
            "tile/0/0000",
            "tile/0/001/002",
            "tile/0/x000/001",
            "tile/0/000.p/0",
            "tile/0/000.p/256",
            "tile/0/000.p/07",
            "tile/0/000.p/",
            "tile/entries/x1/000",
            "tile/0/",
            "tile/0/00a",
            "tiles/0/000",
            "tile/x/000",
            "tile/0/x999/x999/x999/x999/x999/x999/x999/999",
        ] {
            assert_eq!(Tile::parse(bad), None, "{bad}");
        }
    }

    /// The spec's example: a tree of 70,000 leaves is 273 full level-0
    /// tiles, a partial of width 112, a full level-1 tile, a partial level-1
    /// tile of width 17 and a partial level-2 tile of width 1.
    #[test]
    fn the_70000_example() {
        let size = 70_000;
        assert_eq!(
            Tile::containing(Some(0), size - 1, size),
            tile(Some(0), 273, 112)
        );
        assert_eq!(Tile::containing(Some(0), 0, size), tile(Some(0), 0, 256));
        assert_eq!(Tile::containing(Some(1), 0, size), tile(Some(1), 0, 256));
        let l1_nodes = size >> 8;
        assert_eq!(
            Tile::containing(Some(1), l1_nodes - 1, size),
            tile(Some(1), 1, 17)
        );
        assert_eq!(Tile::containing(Some(2), 0, size), tile(Some(2), 0, 1));
        assert_eq!(tile(Some(0), 273, 112).needs_size(), Some(70_000));
        assert_eq!(tile(Some(1), 1, 17).needs_size(), Some(69_888));
        assert_eq!(tile(Some(2), 0, 1).needs_size(), Some(65_536));
    }

    #[test]
    fn bundles_round_trip() {
        let mut b = Vec::new();
        assert!(push_entry(&mut b, b"one"));
        assert!(push_entry(&mut b, b""));
        assert!(push_entry(&mut b, &[7u8; 300]));
        assert!(!push_entry(&mut b, &vec![0u8; MAX_ENTRY + 1]));
        let got = entries(&b).unwrap();
        assert_eq!(got, [&b"one"[..], b"", &[7u8; 300][..]]);
        assert_eq!(&b[..2], &[0, 3]);
        assert_eq!(entries(&b[..b.len() - 1]), None);
        assert_eq!(entries(&[0]), None);
    }

    /// Proofs built from tiles alone equal the in-memory tree's, for every
    /// index and old size of trees around tile boundaries.
    #[test]
    fn proofs_from_tiles_match_the_tree() {
        use crate::merkle::{leaf_hash, Tree};
        for size in [1u64, 2, 3, 255, 256, 257, 511, 700, 65_537] {
            let mut tree = Tree::new();
            for i in 0..size {
                tree.push(leaf_hash(&i.to_be_bytes()));
            }
            let mut proofs = Proofs::new(size);
            let mut fetched = 0;
            let mut ask = |proofs: &mut Proofs, q: &dyn Fn(&Proofs) -> Result<Vec<Hash>, Need>| loop {
                match q(proofs) {
                    Ok(v) => return v,
                    Err(Need::Missing(t)) => {
                        let mut bytes = Vec::new();
                        let first = t.index * WIDTH;
                        for node in first..first + u64::from(t.width) {
                            let h = tree.node(8 * u32::from(t.hash_level()), node).unwrap();
                            bytes.extend_from_slice(&h);
                        }
                        proofs.insert(t, &bytes).unwrap();
                        fetched += 1;
                    }
                    Err(Need::OutOfRange) => panic!("out of range"),
                }
            };
            assert_eq!(
                ask(&mut proofs, &|p| p.root().map(|r| vec![r])),
                vec![tree.root()]
            );
            let step = (size / 40).max(1);
            for index in (0..size).step_by(step as usize).chain([size - 1]) {
                let got = ask(&mut proofs, &|p| p.inclusion_proof(index));
                assert_eq!(
                    Some(got),
                    tree.inclusion_proof(index, size),
                    "{index} in {size}"
                );
                let got = ask(&mut proofs, &|p| p.leaf(index).map(|l| vec![l]));
                assert_eq!(got, vec![tree.leaf(index).unwrap()]);
            }
            for old in (1..=size).step_by(step as usize).chain([size]) {
                let got = ask(&mut proofs, &|p| p.consistency_proof(old));
                assert_eq!(
                    Some(got),
                    tree.consistency_proof(old, size),
                    "{old} to {size}"
                );
            }
            assert!(fetched < 1000, "{fetched} tiles for size {size}");
        }
        let p = Proofs::new(10);
        assert_eq!(p.inclusion_proof(10), Err(Need::OutOfRange));
        assert_eq!(p.consistency_proof(0), Err(Need::OutOfRange));
        assert_eq!(p.consistency_proof(11), Err(Need::OutOfRange));
    }
}
