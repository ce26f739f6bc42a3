//! The right edge of a tiled Merkle tree: everything a log needs in memory
//! to append leaves, complete tiles and sign checkpoints.
//!
//! For each tile level `L`, the edge holds the hashes of the level's tile
//! that is not full yet (at most 255 hashes at height `8·L`). Full tiles
//! are handed out to be written once and are not kept. So memory is at
//! most 255 × 32 bytes per level — under 64 KiB for any tree a `u64` can
//! count — however many leaves the log holds.
//!
//! The root of the tree needs only these hashes: the perfect subtrees of a
//! tree of `n` leaves (one per set bit of `n`) are all made of nodes in
//! the partial tiles (see [`Edge::root`]).

use crate::merkle::{self, Hash};
use crate::tiles::{Proofs, Tile, WIDTH};

/// A tile the edge just filled: 256 hashes at `level`, tile `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full {
    pub level: u8,
    pub index: u64,
    pub hashes: Vec<Hash>,
}

impl Full {
    pub fn tile(&self) -> Tile {
        Tile {
            level: Some(self.level),
            index: self.index,
            width: WIDTH as u16,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.hashes.concat()
    }
}

/// The partial tiles of a tree, level by level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edge {
    size: u64,
    /// `levels[l]`: the hashes of level `l`'s partial tile.
    levels: Vec<Vec<Hash>>,
}

impl Edge {
    /// The edge of the empty tree.
    pub fn new() -> Edge {
        Edge::default()
    }

    /// An edge for a tree of `size` leaves from its partial tiles' hashes,
    /// lowest level first (`partials[l]` must hold `(size >> 8l) % 256`
    /// hashes; missing levels are empty).
    pub fn from_partials(size: u64, mut partials: Vec<Vec<Hash>>) -> Result<Edge, String> {
        for (level, hashes) in partials.iter().enumerate() {
            let want = Edge::width_at(size, level as u8);
            if hashes.len() as u64 != want {
                return Err(format!(
                    "level {level} of a tree of {size} has {want} hashes in its partial tile, not {}",
                    hashes.len()
                ));
            }
        }
        while partials.last().is_some_and(Vec::is_empty) {
            partials.pop();
        }
        let top = Edge::levels_of(size);
        if partials.len() < top {
            for level in partials.len()..top {
                if Edge::width_at(size, level as u8) != 0 {
                    return Err(format!("level {level} of a tree of {size} is missing"));
                }
            }
        }
        Ok(Edge {
            size,
            levels: partials,
        })
    }

    /// Hashes in level `level`'s partial tile for a tree of `size` leaves.
    pub fn width_at(size: u64, level: u8) -> u64 {
        size.checked_shr(8 * u32::from(level)).unwrap_or(0) % WIDTH
    }

    /// The index of level `level`'s partial tile for a tree of `size`.
    pub fn index_at(size: u64, level: u8) -> u64 {
        size.checked_shr(8 * u32::from(level) + 8).unwrap_or(0)
    }

    /// Levels that have nodes in a tree of `size` leaves.
    fn levels_of(size: u64) -> usize {
        let mut levels = 0;
        while size.checked_shr(8 * levels as u32).unwrap_or(0) > 0 {
            levels += 1;
        }
        levels
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The partial tile at `level` (empty when the level has none).
    pub fn partial(&self, level: u8) -> &[Hash] {
        self.levels
            .get(usize::from(level))
            .map_or(&[], Vec::as_slice)
    }

    /// The partial tiles of every level that has one, as tiles and hashes.
    pub fn partials(&self) -> impl Iterator<Item = (Tile, &[Hash])> {
        self.levels
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.is_empty())
            .map(|(level, hashes)| {
                let level = level as u8;
                (
                    Tile {
                        level: Some(level),
                        index: Edge::index_at(self.size, level),
                        width: hashes.len() as u16,
                    },
                    hashes.as_slice(),
                )
            })
    }

    /// Appends a leaf; returns the tiles it filled (level 0 first).
    pub fn push(&mut self, leaf: Hash) -> Vec<Full> {
        let mut filled = Vec::new();
        let mut node = leaf;
        let mut level = 0usize;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::with_capacity(WIDTH as usize));
            }
            let hashes = &mut self.levels[level];
            hashes.push(node);
            if hashes.len() as u64 != WIDTH {
                break;
            }
            let hashes = std::mem::replace(hashes, Vec::with_capacity(WIDTH as usize));
            node = perfect_root(&hashes);
            let index = (self.size >> (8 * level as u32)) / WIDTH;
            filled.push(Full {
                level: level as u8,
                index,
                hashes,
            });
            level += 1;
        }
        self.size += 1;
        filled
    }

    /// The root of the tree (RFC 6962 MTH), from the partial tiles alone.
    pub fn root(&self) -> Hash {
        if self.size == 0 {
            return merkle::empty_root();
        }
        let mut proofs = Proofs::new(self.size);
        for (tile, hashes) in self.partials() {
            proofs.insert_hashes(tile, hashes.to_vec());
        }
        // Every node the root needs is in a partial tile.
        proofs.root().unwrap_or_default()
    }

    /// Approximate bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.levels.iter().map(|l| l.capacity() * 32).sum()
    }
}

/// The root of a perfect tree over `hashes` (a power of two of them).
pub fn perfect_root(hashes: &[Hash]) -> Hash {
    let mut nodes = hashes.to_vec();
    while nodes.len() > 1 {
        nodes = nodes
            .chunks(2)
            .map(|pair| merkle::node_hash(&pair[0], &pair[1]))
            .collect();
    }
    nodes[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{leaf_hash, Tree};

    #[test]
    fn the_root_matches_the_full_tree_at_every_size_and_tiles_fill_in_order() {
        let mut edge = Edge::new();
        let mut tree = Tree::new();
        assert_eq!(edge.root(), tree.root());
        let mut filled = Vec::new();
        for i in 0u64..70_000 {
            let leaf = leaf_hash(&i.to_be_bytes());
            tree.push(leaf);
            filled.extend(edge.push(leaf));
            let n = i + 1;
            if n < 600 || n % 997 == 0 || n == 65_536 || n == 70_000 {
                assert_eq!(edge.root(), tree.root(), "size {n}");
            }
        }
        // The spec's example: 70,000 leaves make 273 full level-0 tiles,
        // one full level-1 tile and partials of width 112, 17 and 1.
        let level0 = filled.iter().filter(|f| f.level == 0).count();
        let level1 = filled.iter().filter(|f| f.level == 1).count();
        assert_eq!((level0, level1), (273, 1));
        assert_eq!(
            edge.partials()
                .map(|(t, _)| (t.level.unwrap(), t.index, t.width))
                .collect::<Vec<_>>(),
            vec![(0, 273, 112), (1, 1, 17), (2, 0, 1)]
        );
        for f in &filled {
            let height = 8 * u32::from(f.level);
            for (i, h) in f.hashes.iter().enumerate() {
                assert_eq!(Some(*h), tree.node(height, f.index * 256 + i as u64));
            }
        }
        assert!(edge.memory_bytes() <= 3 * 256 * 32);
    }

    #[test]
    fn an_edge_rebuilt_from_partials_continues_the_same_tree() {
        let mut edge = Edge::new();
        let mut tree = Tree::new();
        for i in 0u64..66_000 {
            let leaf = leaf_hash(&i.to_be_bytes());
            tree.push(leaf);
            edge.push(leaf);
        }
        let partials: Vec<Vec<Hash>> = (0..3).map(|l| edge.partial(l).to_vec()).collect();
        let mut again = Edge::from_partials(66_000, partials).unwrap();
        assert_eq!(again, edge);
        for i in 66_000u64..66_600 {
            let leaf = leaf_hash(&i.to_be_bytes());
            tree.push(leaf);
            again.push(leaf);
        }
        assert_eq!(again.root(), tree.root());
        let e = Edge::from_partials(66_000, vec![vec![[0; 32]; 3]]).unwrap_err();
        assert!(e.contains("level 0"), "{e}");
    }
}
