//! Second-level page tables: the IOVA → physical-address map a VT-d unit walks for every
//! DMA of a domain.
//!
//! A device's DMA address (IOVA) is translated like a CPU's virtual address: a radix tree
//! of 4 KiB tables of 512 entries, 9 IOVA bits per level, 12 bits of page offset. The
//! depth is not fixed: a unit walks 3 levels (39-bit IOVA), 4 (48-bit) or 5 (57-bit), and
//! which it supports is in CAP.SAGAW — so [`PageTableConfig::levels`] is always taken from
//! the hardware, never assumed (assuming 4 levels on a 3-level unit is a classic bug).
//! A walk may also stop early at a 2 MiB or 1 GiB *superpage* leaf when CAP.SLLPS says the
//! unit knows them ([`PageSizes`]); [`SecondLevelTable::map`] uses the largest leaf that
//! fits, which saves table memory and IOTLB entries.
//!
//! What makes this different from an ordinary page-table library is that a device may
//! walk these tables *while* we change them, and may not share the CPU's caches:
//!
//! - every entry is written with one 64-bit store (the permission bits double as the
//!   present bit, see `pagetable/entry.rs`), so the hardware sees the old entry or the
//!   new one;
//! - a new table is filled completely, flushed, and ordered with [`DmaMemory::barrier`]
//!   before the store that links it, so the hardware never walks into a half-built table;
//! - on a non-coherent unit (ECAP.C = 0) every written entry is flushed from the CPU
//!   caches ([`DmaMemory::flush`]), otherwise the unit reads stale memory;
//! - a map that fails (overlap, out of memory) leaves the tables exactly as they were:
//!   it checks and allocates everything first and only then writes, so a device can never
//!   see a mapping the caller was told does not exist;
//! - an unmap that cuts a superpage replaces it by a complete table of smaller leaves in
//!   one store, so the part that stays mapped never disappears, not even for a moment;
//! - tables that become empty are unlinked but **not** freed: the unit may still hold the
//!   old link in its paging-structure cache until the caller's invalidation completes, and
//!   a freed page reused as another domain's table would let the device walk into it.
//!   [`SecondLevelTable::reclaim`] frees them once the invalidation is done (Linux does
//!   the same with its "freelist").
//!
//! Nothing here touches registers or invalidates caches: [`SecondLevelTable::unmap`]
//! returns the IOVA range the driver must invalidate ([`FlushRange`]). The work of every
//! operation is bounded by the part of the tree it covers: walks visit only the indices
//! inside the requested range, never the whole address space.

mod entry;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use bitflags::bitflags;
use sluice_iommu::{Access, IommuError};

use self::entry::Entry;
use crate::hw::DmaMemory;
use crate::regs::LargePages;

const PAGE: u64 = 4096;
/// Physical addresses the entry format can hold (ADDR is bits 51:12).
const PHYS_LIMIT: u64 = 1 << 52;

bitflags! {
    /// Leaf sizes a table may use. 4 KiB is always available; the others only when the
    /// unit's CAP.SLLPS lists them.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct PageSizes: u8 {
        const SIZE_4K = 1 << 0;
        const SIZE_2M = 1 << 1;
        const SIZE_1G = 1 << 2;
    }
}

impl PageSizes {
    /// The sizes a unit with this CAP.SLLPS offers (512 GiB / 1 TiB are not used).
    pub fn from_sllps(sllps: LargePages) -> Self {
        let mut sizes = Self::SIZE_4K;
        if sllps.contains(LargePages::SIZE_2M) {
            sizes |= Self::SIZE_2M;
        }
        if sllps.contains(LargePages::SIZE_1G) {
            sizes |= Self::SIZE_1G;
        }
        sizes
    }

    /// As a page-size bitmap (bit n set: 2^n bytes), 4 KiB always included.
    pub fn bitmap(&self) -> u64 {
        let mut bitmap = 1 << 12;
        if self.contains(Self::SIZE_2M) {
            bitmap |= 1 << 21;
        }
        if self.contains(Self::SIZE_1G) {
            bitmap |= 1 << 30;
        }
        bitmap
    }
}

/// The table format, all of it read from the unit's capability registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageTableConfig {
    /// 3 (39-bit IOVA), 4 (48-bit) or 5 (57-bit): a depth CAP.SAGAW lists.
    pub levels: u8,
    /// Leaf sizes allowed (from CAP.SLLPS).
    pub superpages: PageSizes,
    /// ECAP.C. When false, every entry written is flushed from the CPU caches before
    /// the hardware may read it.
    pub coherent: bool,
}

/// What one IOVA translates to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The physical address of the IOVA itself (page base plus offset).
    pub paddr: u64,
    pub access: Access,
    /// Size of the leaf that maps it: 4 KiB, 2 MiB or 1 GiB.
    pub page_size: u64,
}

/// An IOVA range whose cached translations must be invalidated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushRange {
    pub iova: u64,
    pub size: u64,
}

/// The outcome of [`SecondLevelTable::unmap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unmapped {
    /// Bytes that were mapped in the range and no longer are (0: nothing was mapped).
    pub bytes: u64,
    /// Tables unlinked because they became empty. Their pages are retired, not yet
    /// freed: call [`SecondLevelTable::reclaim`] once the invalidation has completed.
    /// When non-zero, the invalidation must include the paging-structure caches
    /// (page-selective invalidation with IH = 0).
    pub freed_tables: usize,
    /// The IOTLB range to invalidate: every leaf removed or split, whole (a split
    /// superpage counts with its full size, which the IOTLB may hold as one entry).
    /// `None` when nothing was mapped.
    pub flush: Option<FlushRange>,
}

/// One domain's second-level page tables.
///
/// The tables live in [`DmaMemory`]; this struct only remembers where the root is and,
/// per table, how many entries are present (so an unmap knows when a table has become
/// empty without rereading 512 entries). It owns the table pages: give them back with
/// [`destroy`](Self::destroy) once no context entry points at the root any more.
#[derive(Debug)]
pub struct SecondLevelTable {
    config: PageTableConfig,
    root: u64,
    /// Present entries of every linked table, root included, by physical address.
    live: BTreeMap<u64, u16>,
    /// Unlinked tables waiting for the caller's invalidation (see [`Self::reclaim`]).
    retired: Vec<u64>,
}

impl SecondLevelTable {
    /// An empty address space: one zeroed root table, flushed when the unit is not
    /// coherent. `OutOfRange` when `config.levels` is not 3, 4 or 5 (no IOVA can be
    /// translated by such a table); `NoMemory` when the root cannot be allocated.
    pub fn new(mem: &mut dyn DmaMemory, config: PageTableConfig) -> Result<Self, IommuError> {
        if !(3..=5).contains(&config.levels) {
            return Err(IommuError::OutOfRange);
        }
        let root = mem.alloc_zeroed(1, PAGE).ok_or(IommuError::NoMemory)?;
        let mut table = Self {
            config,
            root,
            live: BTreeMap::new(),
            retired: Vec::new(),
        };
        table.live.insert(root, 0);
        table.publish_new_table(mem, root);
        Ok(table)
    }

    /// Physical address of the top table: the context entry's SLPTPTR.
    pub fn root(&self) -> u64 {
        self.root
    }

    pub fn levels(&self) -> u8 {
        self.config.levels
    }

    /// IOVA bits translated: 39, 48 or 57 (the context entry's AW is `levels - 2`).
    pub fn address_width(&self) -> u8 {
        12 + 9 * self.config.levels
    }

    pub fn config(&self) -> PageTableConfig {
        self.config
    }

    /// Table pages currently held, root and retired tables included.
    pub fn table_pages(&self) -> usize {
        self.live.len() + self.retired.len()
    }

    /// Tables unlinked by unmaps and not yet given back by [`Self::reclaim`].
    pub fn retired_tables(&self) -> usize {
        self.retired.len()
    }

    /// Map `[iova, iova + size)` to `[paddr, paddr + size)` with `access`.
    ///
    /// Errors, checked in this order, leave the tables exactly as they were:
    /// `Misaligned` (an address or the size not 4 KiB aligned, or size 0), `Wraps`
    /// (`iova + size` or `paddr + size` overflows), `OutOfRange` (the IOVA range ends
    /// beyond [`Self::address_width`], or the physical range beyond the 52 bits an entry
    /// can hold), `NoAccess`, `Overlap` (with the lowest IOVA already mapped in the
    /// range), `NoMemory`.
    pub fn map(
        &mut self,
        mem: &mut dyn DmaMemory,
        iova: u64,
        paddr: u64,
        size: u64,
        access: Access,
    ) -> Result<(), IommuError> {
        let end = self.check_range(iova, Some(paddr), size)?;
        let access = access & (Access::READ | Access::WRITE);
        if access.is_empty() {
            return Err(IommuError::NoAccess);
        }
        let source = Source {
            iova,
            paddr,
            access,
            hole: (0, 0),
        };
        // Start at the deepest existing table holding the whole range.
        let (table, level) = self.descend(mem, iova, end).deepest();
        // Phase 1: read only. Find overlaps and count the tables the map needs.
        let needed = self.plan_map(mem, table, level, iova, end, &source)?;
        // Phase 2: allocate them all, or give everything back.
        let mut pool = self.alloc_tables(mem, needed)?;
        // Phase 3: write. Nothing below can fail.
        self.map_into(mem, table, level, iova, end, &source, &mut pool);
        debug_assert!(pool.is_empty(), "map planned more tables than it used");
        self.release_unused(mem, pool);
        Ok(())
    }

    /// Remove every mapped page in `[iova, iova + size)`: leaves inside the range go,
    /// superpages that stick out are split so only the part inside goes, tables that
    /// become empty are unlinked and retired.
    ///
    /// Same argument errors as [`Self::map`] (`Misaligned`, `Wraps`, `OutOfRange`);
    /// `NoMemory` when a split needs tables that cannot be allocated, with the tables
    /// unchanged. Splitting needs at most a few tables (one or two superpages stick out).
    pub fn unmap(
        &mut self,
        mem: &mut dyn DmaMemory,
        iova: u64,
        size: u64,
    ) -> Result<Unmapped, IommuError> {
        let end = self.check_range(iova, None, size)?;
        let path = self.descend(mem, iova, end);
        let (table, level) = path.deepest();
        let needed = self.plan_splits(mem, table, level, iova, end);
        let mut pool = self.alloc_tables(mem, needed)?;
        let mut outcome = Outcome::default();
        let mut left = self.unmap_from(mem, table, level, iova, end, &mut pool, &mut outcome);
        // Tables above the one the walk started in may have become empty too.
        for depth in (1..path.len).rev() {
            if left != 0 {
                break;
            }
            let (parent, parent_level) = path.at(depth - 1);
            let at = slot(parent, parent_level, iova);
            mem.write_u64(at, Entry::EMPTY.0);
            if !self.config.coherent {
                mem.flush(at, 8);
            }
            self.retire(path.tables[depth]);
            outcome.freed_tables += 1;
            left = self.remove_entries(parent, 1);
        }
        debug_assert!(pool.is_empty(), "unmap planned more tables than it used");
        self.release_unused(mem, pool);
        Ok(Unmapped {
            bytes: outcome.bytes,
            freed_tables: outcome.freed_tables,
            flush: (outcome.bytes > 0).then(|| FlushRange {
                iova: outcome.low,
                size: outcome.high - outcome.low,
            }),
        })
    }

    /// What `iova` translates to, read from the tables as the hardware would walk them.
    pub fn translate(&self, mem: &dyn DmaMemory, iova: u64) -> Option<Translation> {
        if iova >> self.address_width() != 0 {
            return None;
        }
        let (level, base, entry) = self.leaf_at(mem, iova)?;
        Some(Translation {
            paddr: entry.address() + (iova - base),
            access: entry.access(),
            page_size: span(level),
        })
    }

    /// Free the tables retired by earlier unmaps. Call only after the invalidation of
    /// every [`Unmapped::flush`] reported with them has completed (IOTLB and
    /// paging-structure caches): until then the unit may still walk them. Returns the
    /// number of pages freed.
    pub fn reclaim(&mut self, mem: &mut dyn DmaMemory) -> usize {
        let count = self.retired.len();
        for table in self.retired.drain(..) {
            mem.free(table, 1);
        }
        count
    }

    /// Free every table. The caller guarantees the unit can no longer walk them (no
    /// context entry points at [`Self::root`], and that change has been invalidated).
    pub fn destroy(mut self, mem: &mut dyn DmaMemory) {
        self.reclaim(mem);
        for &table in self.live.keys() {
            mem.free(table, 1);
        }
    }

    // -----------------------------------------------------------------------------------
    // Argument checks and allocation.
    // -----------------------------------------------------------------------------------

    /// Checks the arguments of a map (with `paddr`) or unmap; returns the IOVA range end.
    fn check_range(&self, iova: u64, paddr: Option<u64>, size: u64) -> Result<u64, IommuError> {
        let paddr_bits = paddr.unwrap_or(0);
        if size == 0 || (iova | paddr_bits | size) % PAGE != 0 {
            return Err(IommuError::Misaligned);
        }
        let end = iova.checked_add(size).ok_or(IommuError::Wraps)?;
        let paddr_end = paddr_bits.checked_add(size).ok_or(IommuError::Wraps)?;
        if end > 1 << self.address_width() || (paddr.is_some() && paddr_end > PHYS_LIMIT) {
            return Err(IommuError::OutOfRange);
        }
        Ok(end)
    }

    /// `count` zeroed table pages, or none at all.
    fn alloc_tables(&self, mem: &mut dyn DmaMemory, count: usize) -> Result<Vec<u64>, IommuError> {
        let mut pool = Vec::with_capacity(count);
        for _ in 0..count {
            match mem.alloc_zeroed(1, PAGE) {
                Some(page) => pool.push(page),
                None => {
                    self.release_unused(mem, pool);
                    return Err(IommuError::NoMemory);
                }
            }
        }
        Ok(pool)
    }

    /// Give back pool pages a write phase did not use (none, if planning was right).
    fn release_unused(&self, mem: &mut dyn DmaMemory, pool: Vec<u64>) {
        for page in pool {
            mem.free(page, 1);
        }
    }

    fn leaf_allowed(&self, level: u8) -> bool {
        match level {
            1 => true,
            2 => self.config.superpages.contains(PageSizes::SIZE_2M),
            3 => self.config.superpages.contains(PageSizes::SIZE_1G),
            _ => false,
        }
    }

    /// Can the piece `[start, end)` of one entry at `level` be a single leaf? Only if it
    /// is the entry's whole span, `source` maps all of it, the physical address is
    /// aligned to the span, and the unit allows leaves of that size.
    fn fits_leaf(&self, level: u8, start: u64, end: u64, source: &Source) -> bool {
        let size = span(level);
        self.leaf_allowed(level)
            && end - start == size
            && start % size == 0
            && source.paddr_at(start) % size == 0
            && source.coverage(start, end) == Coverage::Full
    }

    /// Make a freshly built table visible to the hardware before anything links it:
    /// write back all of it (its zeroes too), then order that before the link.
    fn publish_new_table(&self, mem: &mut dyn DmaMemory, table: u64) {
        if !self.config.coherent {
            mem.flush(table, PAGE as usize);
        }
        mem.barrier();
    }

    // -----------------------------------------------------------------------------------
    // Walks. Each one takes a table, its level and the part `[start, end)` of the IOVA
    // range inside that table's span, and visits only the entries covering it.
    // -----------------------------------------------------------------------------------

    /// The leaf translating `iova`: its level, the IOVA it starts at, the entry.
    fn leaf_at(&self, mem: &dyn DmaMemory, iova: u64) -> Option<(u8, u64, Entry)> {
        self.leaf_below(mem, self.root, self.config.levels, iova)
    }

    /// The same, starting from `table` at `level` (which covers `iova`).
    fn leaf_below(
        &self,
        mem: &dyn DmaMemory,
        mut table: u64,
        level: u8,
        iova: u64,
    ) -> Option<(u8, u64, Entry)> {
        for level in (1..=level).rev() {
            let entry = Entry(mem.read_u64(slot(table, level, iova)));
            if !entry.is_present() {
                return None;
            }
            if entry.is_leaf(level) {
                return Some((level, iova & !(span(level) - 1), entry));
            }
            table = entry.address();
        }
        None
    }

    /// Map, phase 1: `Overlap` at the lowest mapped IOVA of the range, else the number of
    /// tables the map will create.
    fn plan_map(
        &self,
        mem: &dyn DmaMemory,
        table: u64,
        level: u8,
        start: u64,
        end: u64,
        source: &Source,
    ) -> Result<usize, IommuError> {
        let mut needed = 0;
        for (piece_start, piece_end) in pieces(level, start, end) {
            let entry = Entry(mem.read_u64(slot(table, level, piece_start)));
            if !entry.is_present() {
                if !self.fits_leaf(level, piece_start, piece_end, source) {
                    needed += 1 + self.plan_new(level - 1, piece_start, piece_end, source);
                }
            } else if entry.is_leaf(level) {
                return Err(IommuError::Overlap { iova: piece_start });
            } else {
                needed += self.plan_map(
                    mem,
                    entry.address(),
                    level - 1,
                    piece_start,
                    piece_end,
                    source,
                )?;
            }
        }
        Ok(needed)
    }

    /// Tables needed below a new table at `level` that holds `source` over
    /// `[start, end)` (the table itself not counted).
    fn plan_new(&self, level: u8, start: u64, end: u64, source: &Source) -> usize {
        if level == 1 {
            return 0;
        }
        pieces(level, start, end)
            .map(
                |(piece_start, piece_end)| match source.coverage(piece_start, piece_end) {
                    Coverage::Empty => 0,
                    Coverage::Full if self.fits_leaf(level, piece_start, piece_end, source) => 0,
                    _ => 1 + self.plan_new(level - 1, piece_start, piece_end, source),
                },
            )
            .sum()
    }

    /// Map, phase 3: write `source` over `[start, end)` into the linked `table`. Only
    /// not-present entries are written (planning found no overlap).
    #[allow(clippy::too_many_arguments)]
    fn map_into(
        &mut self,
        mem: &mut dyn DmaMemory,
        table: u64,
        level: u8,
        start: u64,
        end: u64,
        source: &Source,
        pool: &mut Vec<u64>,
    ) {
        let mut written = WriteBack::new(self.config.coherent);
        let mut added = 0;
        for (piece_start, piece_end) in pieces(level, start, end) {
            let at = slot(table, level, piece_start);
            let entry = Entry(mem.read_u64(at));
            if entry.is_present() {
                self.map_into(
                    mem,
                    entry.address(),
                    level - 1,
                    piece_start,
                    piece_end,
                    source,
                    pool,
                );
                continue;
            }
            let new = if self.fits_leaf(level, piece_start, piece_end, source) {
                Entry::leaf(source.paddr_at(piece_start), source.access, level)
            } else {
                let child = pool.pop().expect("map planned every table it creates");
                self.build(mem, child, level - 1, piece_start, piece_end, source, pool);
                Entry::table(child)
            };
            mem.write_u64(at, new.0);
            written.note(mem, at);
            added += 1;
        }
        written.finish(mem);
        *self
            .live
            .get_mut(&table)
            .expect("a linked table is counted") += added;
    }

    /// Fill the new, still unlinked, zeroed `table` at `level` with `source` over
    /// `[start, end)` (building new tables below it as needed), then publish it. The
    /// caller links it next.
    #[allow(clippy::too_many_arguments)]
    fn build(
        &mut self,
        mem: &mut dyn DmaMemory,
        table: u64,
        level: u8,
        start: u64,
        end: u64,
        source: &Source,
        pool: &mut Vec<u64>,
    ) {
        let mut present = 0;
        for (piece_start, piece_end) in pieces(level, start, end) {
            let new = match source.coverage(piece_start, piece_end) {
                Coverage::Empty => continue,
                Coverage::Full if self.fits_leaf(level, piece_start, piece_end, source) => {
                    Entry::leaf(source.paddr_at(piece_start), source.access, level)
                }
                _ => {
                    debug_assert!(level > 1, "a 4 KiB piece is never partly covered");
                    let child = pool.pop().expect("planned every table it builds");
                    self.build(mem, child, level - 1, piece_start, piece_end, source, pool);
                    Entry::table(child)
                }
            };
            mem.write_u64(slot(table, level, piece_start), new.0);
            present += 1;
        }
        self.live.insert(table, present);
        self.publish_new_table(mem, table);
    }

    /// The linked tables a walk for `[start, end)` passes through while the whole range
    /// is still under one entry: the root, and below it as far as present table entries
    /// go. Map and unmap start at the deepest (for a 4 KiB page, usually its leaf table)
    /// instead of walking from the root in every phase.
    fn descend(&self, mem: &dyn DmaMemory, start: u64, end: u64) -> Path {
        let mut path = Path {
            tables: [self.root; 5],
            len: 1,
            top: self.config.levels,
        };
        let (mut table, mut level) = (self.root, self.config.levels);
        while level > 1 && start >> shift(level) == (end - 1) >> shift(level) {
            let entry = Entry(mem.read_u64(slot(table, level, start)));
            if !entry.is_present() || entry.is_leaf(level) {
                break;
            }
            table = entry.address();
            level -= 1;
            path.tables[path.len] = table;
            path.len += 1;
        }
        path
    }

    /// Unmap, phase 1: tables needed to split the (at most two) superpages that stick
    /// out of `[start, end)`, which `table` at `level` covers.
    fn plan_splits(
        &self,
        mem: &dyn DmaMemory,
        table: u64,
        level: u8,
        start: u64,
        end: u64,
    ) -> usize {
        let first = self.leaf_below(mem, table, level, start);
        let last = match first {
            Some((level, base, _)) if end - 1 < base + span(level) => first,
            _ => self.leaf_below(mem, table, level, end - 1),
        };
        let mut needed = 0;
        let mut counted = None;
        for (level, base, entry) in [first, last].into_iter().flatten() {
            let size = span(level);
            if (base >= start && base + size <= end) || counted == Some(base) {
                continue;
            }
            counted = Some(base);
            let source = Source::rest_of(entry, base, start, end);
            needed += 1 + self.plan_new(level - 1, base, base + size, &source);
        }
        needed
    }

    /// Unmap, phase 2: clear `[start, end)` in the linked `table`. Returns how many
    /// entries of `table` are still present.
    #[allow(clippy::too_many_arguments)]
    fn unmap_from(
        &mut self,
        mem: &mut dyn DmaMemory,
        table: u64,
        level: u8,
        start: u64,
        end: u64,
        pool: &mut Vec<u64>,
        outcome: &mut Outcome,
    ) -> u16 {
        let mut written = WriteBack::new(self.config.coherent);
        let mut removed = 0;
        let size = span(level);
        for (piece_start, piece_end) in pieces(level, start, end) {
            let at = slot(table, level, piece_start);
            let entry = Entry(mem.read_u64(at));
            if !entry.is_present() {
                continue;
            }
            let new = if entry.is_leaf(level) && piece_end - piece_start == size {
                // A leaf entirely inside the range.
                outcome.removed(piece_start, piece_end, size);
                removed += 1;
                Entry::EMPTY
            } else if entry.is_leaf(level) {
                // A superpage sticking out: replace it by a table holding the rest.
                let base = piece_start & !(size - 1);
                let source = Source::rest_of(entry, base, piece_start, piece_end);
                let child = pool.pop().expect("unmap planned every split");
                self.build(mem, child, level - 1, base, base + size, &source, pool);
                outcome.removed(base, base + size, piece_end - piece_start);
                Entry::table(child)
            } else {
                let child = entry.address();
                let left =
                    self.unmap_from(mem, child, level - 1, piece_start, piece_end, pool, outcome);
                if left != 0 {
                    continue;
                }
                // Empty now: unlink it (below), keep the page until the caller has
                // invalidated the unit's cached copy of this entry.
                self.retire(child);
                outcome.freed_tables += 1;
                removed += 1;
                Entry::EMPTY
            };
            mem.write_u64(at, new.0);
            written.note(mem, at);
        }
        written.finish(mem);
        self.remove_entries(table, removed)
    }

    /// `count` entries of the linked `table` were cleared; returns how many are left.
    fn remove_entries(&mut self, table: u64, count: u16) -> u16 {
        let present = self
            .live
            .get_mut(&table)
            .expect("a linked table is counted");
        *present -= count;
        *present
    }

    /// An unlinked table: out of the count, into the retired list.
    fn retire(&mut self, table: u64) {
        self.live.remove(&table);
        self.retired.push(table);
    }
}

/// The tables from the root down to the deepest one holding a whole range.
struct Path {
    /// `tables[0]` is the root, `tables[i]` is at level `top - i`.
    tables: [u64; 5],
    len: usize,
    top: u8,
}

impl Path {
    fn at(&self, depth: usize) -> (u64, u8) {
        (self.tables[depth], self.top - depth as u8)
    }

    fn deepest(&self) -> (u64, u8) {
        self.at(self.len - 1)
    }
}

/// What a write phase puts under an IOVA range: `iova` maps to `paddr` (and so on,
/// linearly) with `access`, except the IOVAs in `hole` (a split leaves the unmapped part
/// of a superpage as the hole; a map has none).
#[derive(Clone, Copy, Debug)]
struct Source {
    iova: u64,
    paddr: u64,
    access: Access,
    hole: (u64, u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coverage {
    Empty,
    Partial,
    Full,
}

impl Source {
    /// The rest of the superpage `entry` at `base` once `[start, end)` is cut out.
    fn rest_of(entry: Entry, base: u64, start: u64, end: u64) -> Self {
        Self {
            iova: base,
            paddr: entry.address(),
            access: entry.access(),
            hole: (start, end),
        }
    }

    fn paddr_at(&self, iova: u64) -> u64 {
        self.paddr + (iova - self.iova)
    }

    /// How much of `[start, end)` (inside the source's range) is mapped.
    fn coverage(&self, start: u64, end: u64) -> Coverage {
        let (hole_start, hole_end) = self.hole;
        if hole_end <= start || hole_start >= end {
            Coverage::Full
        } else if hole_start <= start && hole_end >= end {
            Coverage::Empty
        } else {
            Coverage::Partial
        }
    }
}

/// Running totals of an unmap.
#[derive(Debug)]
struct Outcome {
    bytes: u64,
    freed_tables: usize,
    low: u64,
    high: u64,
}

impl Default for Outcome {
    fn default() -> Self {
        Self {
            bytes: 0,
            freed_tables: 0,
            low: u64::MAX,
            high: 0,
        }
    }
}

impl Outcome {
    /// `bytes` stopped being mapped; the IOTLB may cache them as `[start, end)`.
    fn removed(&mut self, start: u64, end: u64, bytes: u64) {
        self.bytes += bytes;
        self.low = self.low.min(start);
        self.high = self.high.max(end);
    }
}

/// Flushes of entries written in one table, merged into runs of adjacent entries (one
/// flush per run rather than per entry: a cache line holds eight entries). The flush
/// happens before the operation returns, i.e. before the caller's invalidation lets the
/// hardware rely on the new entries.
struct WriteBack {
    coherent: bool,
    start: u64,
    end: u64,
}

impl WriteBack {
    fn new(coherent: bool) -> Self {
        Self {
            coherent,
            start: 0,
            end: 0,
        }
    }

    fn note(&mut self, mem: &mut dyn DmaMemory, entry: u64) {
        if self.coherent {
            return;
        }
        if entry != self.end {
            self.finish(mem);
            self.start = entry;
        }
        self.end = entry + 8;
    }

    fn finish(&mut self, mem: &mut dyn DmaMemory) {
        if self.end > self.start {
            mem.flush(self.start, (self.end - self.start) as usize);
        }
        self.start = self.end;
    }
}

/// log2 of the IOVA span of one entry at `level` (1: 4 KiB, 2: 2 MiB, 3: 1 GiB, ...).
const fn shift(level: u8) -> u32 {
    12 + 9 * (level as u32 - 1)
}

/// IOVA span of one entry at `level`.
const fn span(level: u8) -> u64 {
    1 << shift(level)
}

/// Physical address of the entry translating `iova` in `table` at `level`.
const fn slot(table: u64, level: u8, iova: u64) -> u64 {
    table + ((iova >> shift(level)) & 0x1ff) * 8
}

/// `[start, end)` cut at the boundaries of the entries of `level`: one piece per entry.
fn pieces(level: u8, start: u64, end: u64) -> impl Iterator<Item = (u64, u64)> {
    let size = span(level);
    let mut at = start;
    core::iter::from_fn(move || {
        (at < end).then(|| {
            let piece_end = ((at & !(size - 1)) + size).min(end);
            let piece = (at, piece_end);
            at = piece_end;
            piece
        })
    })
}
