//! I/O page tables: the IOVA → physical-address map a remapping unit walks for every DMA
//! of a domain. One engine for every vendor ([`IoPageTable`]), one small entry format per
//! vendor ([`EntryFormat`]: VT-d second-level tables in `sluice-vtd`, AMD-Vi host tables
//! in `sluice-amdvi`).
//!
//! A device's DMA address (IOVA) is translated like a CPU's virtual address: a radix tree
//! of 4 KiB tables of 512 entries, 9 IOVA bits per level, 12 bits of page offset. The
//! depth is not fixed: a VT-d unit walks 3 levels (39-bit IOVA), 4 (48-bit) or 5
//! (57-bit) as its CAP.SAGAW says; an AMD-Vi domain has 1 to 6 levels (its device-table
//! Mode), up to what the unit's EFR.HATS allows. So [`PageTableConfig::levels`] is always
//! chosen from what the hardware says, never assumed (assuming 4 levels on a 3-level unit
//! is a classic bug). A walk may also stop early at a 2 MiB or 1 GiB *superpage* leaf when
//! the unit knows them ([`PageSizes`]); [`IoPageTable::map`] uses the largest leaf that
//! fits, which saves table memory and IOTLB entries.
//!
//! The two vendors' tables are the same tree and differ only in how one entry is encoded
//! (see [`format`]), which is why the hard part lives here, once. What makes it hard is
//! that a device may walk these tables *while* we change them, and may not share the
//! CPU's caches:
//!
//! - every entry is written with one 64-bit store, so the hardware sees the old entry or
//!   the new one, never a present bit (or, on VT-d, a permission bit) without its address;
//! - a new table is filled completely, flushed, and ordered with [`DmaMemory::barrier`]
//!   before the store that links it, so the hardware never walks into a half-built table;
//! - on a non-coherent unit every written entry is flushed from the CPU caches
//!   ([`DmaMemory::flush`]), otherwise the unit reads stale memory;
//! - a map that fails (overlap, out of memory) leaves the tables exactly as they were:
//!   it checks and allocates everything first and only then writes, so a device can never
//!   see a mapping the caller was told does not exist;
//! - an unmap that cuts a superpage replaces it by a complete table of smaller leaves in
//!   one store, so the part that stays mapped never disappears, not even for a moment;
//! - tables that become empty are unlinked but **not** freed: the unit may still hold the
//!   old link in its paging-structure cache until the caller's invalidation completes, and
//!   a freed page reused as another domain's table would let the device walk into it.
//!   [`IoPageTable::reclaim`] frees them once the invalidation is done (Linux does the
//!   same with its "freelist").
//!
//! Nothing here touches registers or invalidates caches: [`IoPageTable::unmap`] returns
//! the IOVA range the driver must invalidate ([`FlushRange`]). The work of every
//! operation is bounded by the part of the tree it covers: walks visit only the indices
//! inside the requested range, never the whole address space.

pub mod format;
#[cfg(any(test, feature = "fake"))]
pub mod testing;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;

use bitflags::bitflags;

pub use self::format::{Decoded, EntryFormat};
use crate::hw::DmaMemory;
use crate::{Access, IommuError};

const PAGE: u64 = 4096;
/// Physical addresses an entry can hold (every format keeps them in bits 51:12).
const PHYS_LIMIT: u64 = 1 << 52;
/// The deepest tree any format has (AMD-Vi: 6 levels, the top one using 7 IOVA bits).
const MAX_LEVELS: u8 = 6;

bitflags! {
    /// Leaf sizes a table may use. 4 KiB is always available; the others only when the
    /// unit offers them (VT-d: CAP.SLLPS; AMD-Vi v1: always, at the levels the table has).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct PageSizes: u8 {
        const SIZE_4K = 1 << 0;
        const SIZE_2M = 1 << 1;
        const SIZE_1G = 1 << 2;
    }
}

impl PageSizes {
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

/// The table format, all of it chosen from what the units report (never assumed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageTableConfig {
    /// The depth: one the format has ([`EntryFormat::supported_levels`]) and the unit
    /// walks (VT-d: 3, 4 or 5 from CAP.SAGAW; AMD-Vi: the DTE Mode, 1 to 6).
    pub levels: u8,
    /// Leaf sizes allowed.
    pub superpages: PageSizes,
    /// Does the unit snoop the CPU caches when it reads tables (VT-d: ECAP.C)? When
    /// false, every entry written is flushed from the CPU caches before the hardware may
    /// read it.
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

/// The outcome of [`IoPageTable::unmap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unmapped {
    /// Bytes that were mapped in the range and no longer are (0: nothing was mapped).
    pub bytes: u64,
    /// Tables unlinked because they became empty. Their pages are retired, not yet
    /// freed: call [`IoPageTable::reclaim`] once the invalidation has completed.
    /// When non-zero, the invalidation must include the cached non-leaf entries
    /// (VT-d: page-selective invalidation with IH = 0; AMD-Vi: INVALIDATE_IOMMU_PAGES
    /// with PDE = 1).
    pub freed_tables: usize,
    /// The IOTLB range to invalidate: every leaf removed or split, whole (a split
    /// superpage counts with its full size, which the IOTLB may hold as one entry).
    /// `None` when nothing was mapped.
    pub flush: Option<FlushRange>,
}

/// One domain's I/O page tables, in the entry format `F`.
///
/// The tables live in [`DmaMemory`]; this struct only remembers where the root is and,
/// per table, how many entries are present (so an unmap knows when a table has become
/// empty without rereading 512 entries). It owns the table pages: give them back with
/// [`destroy`](Self::destroy) once no context or device-table entry points at the root
/// any more.
pub struct IoPageTable<F: EntryFormat> {
    config: PageTableConfig,
    root: u64,
    /// Present entries of every linked table, root included, by physical address.
    live: BTreeMap<u64, u16>,
    /// Unlinked tables waiting for the caller's invalidation (see [`Self::reclaim`]).
    retired: Vec<u64>,
    format: PhantomData<fn() -> F>,
}

impl<F: EntryFormat> fmt::Debug for IoPageTable<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoPageTable")
            .field("format", &F::NAME)
            .field("config", &self.config)
            .field("root", &format_args!("{:#x}", self.root))
            .field("live", &self.live)
            .field("retired", &self.retired)
            .finish()
    }
}

impl<F: EntryFormat> IoPageTable<F> {
    /// An empty address space: one zeroed root table, flushed when the unit is not
    /// coherent. `OutOfRange` when the format has no tables of `config.levels` (no IOVA
    /// could be translated by such a table); `NoMemory` when the root cannot be
    /// allocated.
    pub fn new(mem: &mut dyn DmaMemory, config: PageTableConfig) -> Result<Self, IommuError> {
        if !F::supported_levels().contains(&config.levels)
            || !(1..=MAX_LEVELS).contains(&config.levels)
        {
            return Err(IommuError::OutOfRange);
        }
        let root = mem.alloc_zeroed(1, PAGE).ok_or(IommuError::NoMemory)?;
        let mut table = Self {
            config,
            root,
            live: BTreeMap::new(),
            retired: Vec::new(),
            format: PhantomData,
        };
        table.live.insert(root, 0);
        table.publish_new_table(mem, root);
        Ok(table)
    }

    /// Physical address of the top table (VT-d: the context entry's SLPTPTR; AMD-Vi: the
    /// device-table entry's page-table root pointer).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The depth (AMD-Vi: the device-table entry's Mode).
    pub fn levels(&self) -> u8 {
        self.config.levels
    }

    /// IOVA bits translated: `12 + 9 × levels`, at most 64 (VT-d: 39, 48 or 57, and the
    /// context entry's AW is `levels - 2`).
    pub fn address_width(&self) -> u8 {
        (12 + 9 * self.config.levels).min(64)
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
    /// range), `NoMemory`. (In a 64-bit space, 6 AMD-Vi levels, the very last page is out
    /// of reach: its `iova + size` wraps.)
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
            mem.write_u64(at, EMPTY);
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
        if iova > self.last_iova() {
            return None;
        }
        let leaf = self.leaf_at(mem, iova)?;
        Some(Translation {
            paddr: leaf.paddr + (iova - leaf.base),
            access: leaf.access,
            page_size: span(leaf.level),
        })
    }

    /// Free the tables retired by earlier unmaps. Call only after the invalidation of
    /// every [`Unmapped::flush`] reported with them has completed (IOTLB and cached
    /// non-leaf entries): until then the unit may still walk them. Returns the number of
    /// pages freed.
    pub fn reclaim(&mut self, mem: &mut dyn DmaMemory) -> usize {
        let count = self.retired.len();
        for table in self.retired.drain(..) {
            mem.free(table, 1);
        }
        count
    }

    /// Free every table. The caller guarantees the unit can no longer walk them (nothing
    /// points at [`Self::root`] any more, and that change has been invalidated).
    pub fn destroy(mut self, mem: &mut dyn DmaMemory) {
        self.reclaim(mem);
        for &table in self.live.keys() {
            mem.free(table, 1);
        }
    }

    // -----------------------------------------------------------------------------------
    // Argument checks and allocation.
    // -----------------------------------------------------------------------------------

    /// The highest IOVA the table translates.
    fn last_iova(&self) -> u64 {
        u64::MAX >> (64 - u32::from(self.address_width()))
    }

    /// Checks the arguments of a map (with `paddr`) or unmap; returns the IOVA range end.
    fn check_range(&self, iova: u64, paddr: Option<u64>, size: u64) -> Result<u64, IommuError> {
        let paddr_bits = paddr.unwrap_or(0);
        if size == 0 || (iova | paddr_bits | size) % PAGE != 0 {
            return Err(IommuError::Misaligned);
        }
        let end = iova.checked_add(size).ok_or(IommuError::Wraps)?;
        let paddr_end = paddr_bits.checked_add(size).ok_or(IommuError::Wraps)?;
        if end - 1 > self.last_iova() || (paddr.is_some() && paddr_end > PHYS_LIMIT) {
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
        if !self.leaf_allowed(level) {
            return false;
        }
        let size = span(level);
        end - start == size
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

    /// The entry translating `iova` in `table` at `level`, decoded.
    fn entry(&self, mem: &dyn DmaMemory, table: u64, level: u8, iova: u64) -> Decoded {
        let decoded = F::decode(mem.read_u64(slot(table, level, iova)), level);
        debug_assert!(
            level > 1 || !matches!(decoded, Decoded::Table { .. }),
            "{}: a level-1 entry decoded as a table",
            F::NAME
        );
        decoded
    }

    /// The leaf translating `iova`.
    fn leaf_at(&self, mem: &dyn DmaMemory, iova: u64) -> Option<Leaf> {
        self.leaf_below(mem, self.root, self.config.levels, iova)
    }

    /// The same, starting from `table` at `level` (which covers `iova`).
    fn leaf_below(
        &self,
        mem: &dyn DmaMemory,
        mut table: u64,
        level: u8,
        iova: u64,
    ) -> Option<Leaf> {
        for level in (1..=level).rev() {
            match self.entry(mem, table, level, iova) {
                Decoded::NotPresent => return None,
                Decoded::Leaf { addr, access } => {
                    return Some(Leaf {
                        level,
                        base: iova & !(span(level) - 1),
                        paddr: addr,
                        access,
                    });
                }
                Decoded::Table { addr } => table = addr,
            }
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
            match self.entry(mem, table, level, piece_start) {
                Decoded::NotPresent => {
                    if !self.fits_leaf(level, piece_start, piece_end, source) {
                        needed += 1 + self.plan_new(level - 1, piece_start, piece_end, source);
                    }
                }
                Decoded::Leaf { .. } => return Err(IommuError::Overlap { iova: piece_start }),
                Decoded::Table { addr } => {
                    needed +=
                        self.plan_map(mem, addr, level - 1, piece_start, piece_end, source)?;
                }
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
            match self.entry(mem, table, level, piece_start) {
                Decoded::Table { addr } => {
                    self.map_into(mem, addr, level - 1, piece_start, piece_end, source, pool);
                    continue;
                }
                Decoded::Leaf { .. } => unreachable!("map planned no overlap"),
                Decoded::NotPresent => {}
            }
            let new = if self.fits_leaf(level, piece_start, piece_end, source) {
                F::leaf_entry(source.paddr_at(piece_start), level, source.access)
            } else {
                let child = pool.pop().expect("map planned every table it creates");
                self.build(mem, child, level - 1, piece_start, piece_end, source, pool);
                F::table_entry(child, level - 1)
            };
            mem.write_u64(at, new);
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
                    F::leaf_entry(source.paddr_at(piece_start), level, source.access)
                }
                _ => {
                    debug_assert!(level > 1, "a 4 KiB piece is never partly covered");
                    let child = pool.pop().expect("planned every table it builds");
                    self.build(mem, child, level - 1, piece_start, piece_end, source, pool);
                    F::table_entry(child, level - 1)
                }
            };
            mem.write_u64(slot(table, level, piece_start), new);
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
            tables: [self.root; MAX_LEVELS as usize],
            len: 1,
            top: self.config.levels,
        };
        let (mut table, mut level) = (self.root, self.config.levels);
        while level > 1 && start >> shift(level) == (end - 1) >> shift(level) {
            let Decoded::Table { addr } = self.entry(mem, table, level, start) else {
                break;
            };
            table = addr;
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
        if level == 1 {
            // 4 KiB leaves only: none can stick out of a page-aligned range.
            return 0;
        }
        let first = self.leaf_below(mem, table, level, start);
        let mut needed = first.map_or(0, |leaf| self.split_tables(leaf, start, end));
        // The leaf of the last page, unless it is the first one.
        if first.is_none_or(|leaf| end > leaf.base + span(leaf.level)) {
            let last = self.leaf_below(mem, table, level, end - 1);
            needed += last.map_or(0, |leaf| self.split_tables(leaf, start, end));
        }
        needed
    }

    /// Tables needed to split `leaf` when `[start, end)` is unmapped: none when the
    /// range holds it whole.
    fn split_tables(&self, leaf: Leaf, start: u64, end: u64) -> usize {
        let size = span(leaf.level);
        if leaf.base >= start && leaf.base + size <= end {
            return 0;
        }
        let source = Source::rest_of(&leaf, start, end);
        1 + self.plan_new(leaf.level - 1, leaf.base, leaf.base + size, &source)
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
            let new = match self.entry(mem, table, level, piece_start) {
                Decoded::NotPresent => continue,
                Decoded::Leaf { .. } if piece_end - piece_start == size => {
                    // A leaf entirely inside the range.
                    outcome.removed(piece_start, piece_end, size);
                    removed += 1;
                    EMPTY
                }
                Decoded::Leaf { addr, access } => {
                    // A superpage sticking out: replace it by a table holding the rest.
                    let leaf = Leaf {
                        level,
                        base: piece_start & !(size - 1),
                        paddr: addr,
                        access,
                    };
                    let source = Source::rest_of(&leaf, piece_start, piece_end);
                    let child = pool.pop().expect("unmap planned every split");
                    let leaf_end = leaf.base + size;
                    self.build(mem, child, level - 1, leaf.base, leaf_end, &source, pool);
                    outcome.removed(leaf.base, leaf_end, piece_end - piece_start);
                    F::table_entry(child, level - 1)
                }
                Decoded::Table { addr: child } => {
                    let left = self.unmap_from(
                        mem,
                        child,
                        level - 1,
                        piece_start,
                        piece_end,
                        pool,
                        outcome,
                    );
                    if left != 0 {
                        continue;
                    }
                    // Empty now: unlink it (below), keep the page until the caller has
                    // invalidated the unit's cached copy of this entry.
                    self.retire(child);
                    outcome.freed_tables += 1;
                    removed += 1;
                    EMPTY
                }
            };
            mem.write_u64(at, new);
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

/// The not-present entry in every format.
const EMPTY: u64 = 0;

/// A leaf found by a walk: its level, the IOVA it starts at, what it maps.
#[derive(Clone, Copy, Debug)]
struct Leaf {
    level: u8,
    base: u64,
    paddr: u64,
    access: Access,
}

/// The tables from the root down to the deepest one holding a whole range.
struct Path {
    /// `tables[0]` is the root, `tables[i]` is at level `top - i`.
    tables: [u64; MAX_LEVELS as usize],
    len: usize,
    top: u8,
}

impl Path {
    #[inline]
    fn at(&self, depth: usize) -> (u64, u8) {
        (self.tables[depth], self.top - depth as u8)
    }

    #[inline]
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
    /// The rest of the superpage `leaf` once `[start, end)` is cut out.
    #[inline]
    fn rest_of(leaf: &Leaf, start: u64, end: u64) -> Self {
        Self {
            iova: leaf.base,
            paddr: leaf.paddr,
            access: leaf.access,
            hole: (start, end),
        }
    }

    #[inline]
    fn paddr_at(&self, iova: u64) -> u64 {
        self.paddr + (iova - self.iova)
    }

    /// How much of `[start, end)` (inside the source's range) is mapped.
    #[inline]
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
    #[inline]
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
    #[inline]
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
    #[inline]
    fn new(coherent: bool) -> Self {
        Self {
            coherent,
            start: 0,
            end: 0,
        }
    }

    #[inline]
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

    #[inline]
    fn finish(&mut self, mem: &mut dyn DmaMemory) {
        if self.end > self.start {
            mem.flush(self.start, (self.end - self.start) as usize);
        }
        self.start = self.end;
    }
}

/// log2 of the IOVA span of one entry at `level` (1: 4 KiB, 2: 2 MiB, 3: 1 GiB, ...).
#[inline]
const fn shift(level: u8) -> u32 {
    12 + 9 * (level as u32 - 1)
}

/// IOVA span of one entry at `level`.
#[inline]
const fn span(level: u8) -> u64 {
    1 << shift(level)
}

/// Physical address of the entry translating `iova` in `table` at `level`. (A 6-level
/// table's top level has only 128 entries: IOVA bits 63:57.)
#[inline]
const fn slot(table: u64, level: u8, iova: u64) -> u64 {
    table + ((iova >> shift(level)) & 0x1ff) * 8
}

/// `[start, end)` cut at the boundaries of the entries of `level`: one piece per entry.
#[inline]
fn pieces(level: u8, start: u64, end: u64) -> impl Iterator<Item = (u64, u64)> {
    let size = span(level);
    let mut at = start;
    core::iter::from_fn(move || {
        (at < end).then(|| {
            // The next entry's start; saturating: the last entry of a 64-bit space ends
            // at 2^64, past every `end`.
            let piece_end = (at | (size - 1)).saturating_add(1).min(end);
            let piece = (at, piece_end);
            at = piece_end;
            piece
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_follow_entry_boundaries() {
        let pieces: Vec<_> = pieces(2, 0x1f_f000, 0x40_1000).collect();
        assert_eq!(
            pieces,
            [
                (0x1f_f000, 0x20_0000),
                (0x20_0000, 0x40_0000),
                (0x40_0000, 0x40_1000)
            ]
        );
    }

    #[test]
    fn pieces_at_the_top_of_a_64_bit_space() {
        let top = !0xfff_u64;
        let pieces: Vec<_> = pieces(6, top - (1 << 57), top).collect();
        assert_eq!(
            pieces,
            [
                (top - (1 << 57), 0xfe00_0000_0000_0000),
                (0xfe00_0000_0000_0000, top)
            ]
        );
    }

    #[test]
    fn page_size_bitmaps() {
        assert_eq!(PageSizes::SIZE_4K.bitmap(), 1 << 12);
        assert_eq!(PageSizes::SIZE_2M.bitmap(), 1 << 12 | 1 << 21);
        assert_eq!(PageSizes::all().bitmap(), 1 << 12 | 1 << 21 | 1 << 30);
        assert_eq!(
            PageSizes::SIZE_1G | PageSizes::SIZE_4K,
            PageSizes::SIZE_4K | PageSizes::SIZE_1G
        );
    }
}
