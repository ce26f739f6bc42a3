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
