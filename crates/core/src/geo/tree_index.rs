//! Lookups in a few steps: where the search-tree walk stands after the first
//! 16 bits of every address is computed once at load (a 65,536-entry table
//! per family, 256 KiB each), so an IPv4 lookup walks at most the remaining
//! 16 bits — none when the whole /16 is one network, which is most of the
//! address space in a country database — and an IPv6 lookup skips its first
//! 16 steps.
//!
//! The walk follows the MaxMind DB format (search tree of `node_count`
//! nodes, records of 24, 28 or 32 bits; a record equal to `node_count` means
//! "no data", larger is a pointer into the data section) and yields the same
//! data offset `maxminddb` reports, so decoded records are cached under one
//! key. Every read is bounds-checked: a malformed tree makes the index
//! decline ([`TreeIndex::lookup`] returns `None`) and the caller falls back to
//! `maxminddb`'s own walk.

use std::sync::Arc;

/// Where a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    NotFound,
    /// Offset into the data section, as `maxminddb::LookupResult::offset`.
    Data(usize),
}

/// The database bytes, shared between `maxminddb::Reader` and the index.
#[derive(Debug, Clone)]
pub struct SharedBytes(pub Arc<[u8]>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

pub struct TreeIndex {
    buf: Arc<[u8]>,
    node_count: usize,
    record_size: u16,
    /// The node (or terminal record) after the first 16 bits of each
    /// IPv4 /16 …
    table: Box<[u32]>,
    /// … and of each IPv6 /16 (empty for IPv4-only databases).
    table6: Box<[u32]>,
}

const DATA_SECTION_SEPARATOR: usize = 16;

impl TreeIndex {
    /// `None` when the layout is not one this walker knows.
    pub fn build(
        buf: Arc<[u8]>,
        node_count: usize,
        record_size: u16,
        ip_version: u16,
    ) -> Option<TreeIndex> {
        if ![24, 28, 32].contains(&record_size) || u32::try_from(node_count).is_err() {
            return None;
        }
        let mut index = TreeIndex {
            buf,
            node_count,
            record_size,
            table: Box::new([]),
            table6: Box::new([]),
        };
        // In an IPv6 tree, IPv4 lives under ::/96.
        let mut start = 0usize;
        if ip_version == 6 {
            for _ in 0..96 {
                if start >= node_count {
                    break;
                }
                start = index.read(start, 0)?;
            }
        }
        index.table = index.first_steps(start, 96)?;
        if ip_version == 6 {
            index.table6 = index.first_steps(0, 0)?;
        }
        Some(index)
    }

    /// One network for each distinct data record the search tree points
    /// to: the first path that reaches it, as the top `len` bits of a
    /// 128-bit address (32-bit for an IPv4 tree), found by visiting every
    /// node once — a tree whose nodes are shared (a crafted file of 1 KB
    /// can hold 2^128 networks) costs what its node count does. `Err` for
    /// a record past the file or a path longer than an address.
    pub fn records(
        buf: Arc<[u8]>,
        node_count: usize,
        record_size: u16,
        ip_version: u16,
    ) -> Result<Vec<(u128, u32)>, &'static str> {
        if ![24, 28, 32].contains(&record_size) {
            return Err("an unknown record size");
        }
        let tree = TreeIndex {
            buf,
            node_count,
            record_size,
            table: Box::new([]),
            table6: Box::new([]),
        };
        let bits: u32 = if ip_version == 4 { 32 } else { 128 };
        let mut visited = vec![0u64; node_count.div_ceil(64)];
        let mut seen = std::collections::HashSet::new();
        let mut found = Vec::new();
        let mut stack: Vec<(usize, u128, u32)> = Vec::new();
        if node_count > 0 {
            visited[0] |= 1;
            stack.push((0, 0, 0));
        }
        while let Some((node, prefix, depth)) = stack.pop() {
            if depth >= bits {
                return Err("a path longer than an address");
            }
            // Data in side order; children pushed right first, so that the
            // left-most path, the lowest address (IPv4's ::/96 before its
            // aliases), is the one that names a record.
            let mut children = [None, None];
            for side in 0..2u128 {
                let record = tree
                    .read(node, side as usize)
                    .ok_or("a node past the file")?;
                let path = prefix | side << (bits - 1 - depth);
                if record < node_count {
                    children[side as usize] = Some((record, path));
                } else if record > node_count && seen.insert(record) {
                    found.push((path, depth + 1));
                }
            }
            // (Marked in side order: a child both sides share is the
            // left one's.)
            let mut fresh = [None, None];
            for (side, child) in children.into_iter().enumerate() {
                if let Some((record, path)) = child {
                    let (word, bit) = (record / 64, 1u64 << (record % 64));
                    if visited[word] & bit == 0 {
                        visited[word] |= bit;
                        fresh[side] = Some((record, path, depth + 1));
                    }
                }
            }
            stack.extend(fresh.into_iter().rev().flatten());
        }
        Ok(found)
    }

    /// Where the walk from `start` stands after each 16-bit prefix (the
    /// address's bits from `skip` on).
    fn first_steps(&self, start: usize, skip: u32) -> Option<Box<[u32]>> {
        let mut table = Vec::with_capacity(1 << 16);
        for prefix in 0u128..1 << 16 {
            let node = self.walk(start, prefix << (112 - skip), skip, skip + 16)?;
            table.push(u32::try_from(node).ok()?);
        }
        Some(table.into_boxed_slice())
    }

    /// As [`TreeIndex::lookup`] for an IPv6 address.
    pub fn lookup6(&self, ip: u128) -> Option<Walk> {
        let node = *self.table6.get((ip >> 112) as usize)? as usize;
        self.finish(self.walk(node, ip, 16, 128)?)
    }

    /// The data offset for `ip`; `None` if the tree is malformed.
    pub fn lookup(&self, ip: u32) -> Option<Walk> {
        let node = *self.table.get((ip >> 16) as usize)? as usize;
        // Bits 96.. of the IPv4 address as an IPv6 one.
        self.finish(self.walk(node, u128::from(ip), 96 + 16, 128)?)
    }

    fn finish(&self, node: usize) -> Option<Walk> {
        if node == self.node_count {
            return Some(Walk::NotFound);
        }
        let offset = node
            .checked_sub(self.node_count)?
            .checked_sub(DATA_SECTION_SEPARATOR)?;
        Some(Walk::Data(offset))
    }

    /// Follows bits `from..to` (0 = most significant) of the 128-bit `ip`
    /// from `node` until a record is not a node; returns that record.
    fn walk(&self, mut node: usize, ip: u128, from: u32, to: u32) -> Option<usize> {
        let mut depth = from;
        while depth < to && node < self.node_count {
            let bit = ((ip >> (127 - depth)) & 1) as usize;
            node = self.read(node, bit)?;
            depth += 1;
        }
        // Still inside the tree after the last bit: a malformed database.
        (node >= self.node_count || depth < 128).then_some(node)
    }

    fn read(&self, node: usize, side: usize) -> Option<usize> {
        let b = &self.buf;
        Some(match self.record_size {
            24 => {
                let at = node * 6 + side * 3;
                let r = b.get(at..at + 3)?;
                usize::from(r[0]) << 16 | usize::from(r[1]) << 8 | usize::from(r[2])
            }
            28 => {
                let at = node * 7;
                let r = b.get(at..at + 7)?;
                if side == 0 {
                    usize::from(r[3] >> 4) << 24
                        | usize::from(r[0]) << 16
                        | usize::from(r[1]) << 8
                        | usize::from(r[2])
                } else {
                    usize::from(r[3] & 0x0f) << 24
                        | usize::from(r[4]) << 16
                        | usize::from(r[5]) << 8
                        | usize::from(r[6])
                }
            }
            _ => {
                let at = node * 8 + side * 4;
                let r = b.get(at..at + 4)?;
                u32::from_be_bytes([r[0], r[1], r[2], r[3]]) as usize
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree of `depth` nodes, each pointing to the next on both sides, the
    /// last to one data record: 2^depth networks in `depth` nodes.
    fn chain(depth: usize) -> (Arc<[u8]>, usize) {
        let node_count = depth;
        let mut buf = Vec::new();
        for node in 0..node_count {
            let next = if node + 1 < node_count {
                node + 1
            } else {
                node_count + DATA_SECTION_SEPARATOR
            };
            for _ in 0..2 {
                buf.extend_from_slice(&(next as u32).to_be_bytes());
            }
        }
        (buf.into(), node_count)
    }

    /// Shared nodes are visited once: 2^100 networks through 100 nodes name
    /// their one record once, at once (a listing of the networks hung the
    /// load of such a file: verification, stop 64); a path longer than an
    /// address is refused.
    #[test]
    fn records_visit_each_node_once() {
        let (buf, node_count) = chain(100);
        let found = TreeIndex::records(buf, node_count, 32, 6).unwrap();
        assert_eq!(found, vec![(0, 100)]);
        let (buf, node_count) = chain(129);
        assert_eq!(
            TreeIndex::records(buf, node_count, 32, 6),
            Err("a path longer than an address")
        );
        let (buf, node_count) = chain(33);
        assert!(TreeIndex::records(buf, node_count, 32, 4).is_err());
        let (buf, node_count) = chain(32);
        assert_eq!(
            TreeIndex::records(buf, node_count, 32, 4).unwrap(),
            vec![(0, 32)]
        );
    }
}
