//! The vendor-neutral half of the page-table tests, shared by every format's test suite
//! (`iommu/vtd/tests/pagetable.rs`, `iommu/amdvi/tests/pagetable.rs`). Only with the
//! `fake` feature, like [`FakeDmaMemory`].
//!
//! Three independent pieces of test code say what "right" means:
//! - a [`Reference`]: a walker written from the vendor's specification, in the vendor's
//!   test file, that reads the tables in memory the way the hardware does. It never
//!   calls the engine or the format's own decoding.
//! - [`Model`]: what should be mapped, as extents (one per surviving piece of a map
//!   call), with the superpage each page should sit in.
//! - [`Recorder`]: a [`DmaMemory`] that checks the discipline a device walking the tables
//!   concurrently needs: on a non-coherent unit every written (or freshly zeroed) cache
//!   line is flushed before the operation returns, and a new table is flushed and fenced
//!   before the store that links it.
//!
//! [`check`] compares all three after every operation; [`run`] plays a sequence of
//! random operations ([`Op`], drawn by [`Op::draw`] from numbers a property test
//! generates) against a table and the model.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;
use core::marker::PhantomData;

use super::{EntryFormat, IoPageTable, PageSizes, PageTableConfig};
use crate::hw::DmaMemory;
use crate::hw::fake::FakeDmaMemory;
use crate::{Access, IommuError};

pub const K4: u64 = 4096;
pub const M2: u64 = 2 << 20;
pub const G1: u64 = 1 << 30;
pub const RW: Access = Access::READ.union(Access::WRITE);
/// Physical addresses the tests map start here: far above the pages the fake allocator
/// hands out, so a leaf never looks like a link to a table.
pub const PBASE: u64 = 1 << 40;
/// The last page of the 64-bit space: a range starting there wraps.
pub const LAST_PAGE: u64 = !0xfff;

pub const ALL: PageSizes = PageSizes::all();
pub const NO_1G: PageSizes = PageSizes::SIZE_4K.union(PageSizes::SIZE_2M);
pub const ONLY_4K: PageSizes = PageSizes::SIZE_4K;

/// IOVA span of one entry at `level` (1: 4 KiB, 2: 2 MiB, 3: 1 GiB, ...).
pub fn span(level: u8) -> u64 {
    1 << (12 + 9 * (u32::from(level) - 1))
}

// =======================================================================================
// What a reference walker reports.
// =======================================================================================

/// A vendor's specification, as a walker over the tables in memory.
pub trait Reference {
    /// The engine format it checks.
    type Format: EntryFormat;

    /// Walk from `root` (a `levels`-deep table) for `iova`, as the unit does.
    fn translate(mem: &FakeDmaMemory, root: u64, levels: u8, iova: u64) -> Result<Walk, Fault>;

    /// Every table reachable from the root and every leaf, in IOVA order, asserting the
    /// format rules the engine promises beyond what the hardware requires.
    fn dump(mem: &FakeDmaMemory, root: u64, levels: u8) -> Dump;

    /// The table `raw` links to, if it is a link. It may also answer for a 4 KiB leaf
    /// (its bits may not tell): the recorder ignores targets at or above [`PBASE`].
    fn link_target(raw: u64) -> Option<u64>;
}

/// A successful walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    pub paddr: u64,
    pub read: bool,
    pub write: bool,
    /// Level of the leaf: 1 for a 4 KiB page, 2: 2 MiB, 3: 1 GiB.
    pub level: u8,
}

/// Why a walk failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The IOVA has bits set above the table's address width.
    BeyondWidth,
    NotPresent {
        level: u8,
    },
    /// A reserved bit or encoding (never written by a correct engine).
    Reserved {
        level: u8,
    },
}

/// One leaf of a [`Dump`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub iova: u64,
    pub size: u64,
    pub paddr: u64,
    pub read: bool,
    pub write: bool,
}

impl Leaf {
    pub fn access(&self) -> Access {
        let mut access = Access::empty();
        access.set(Access::READ, self.read);
        access.set(Access::WRITE, self.write);
        access
    }
}

/// The whole tree as a reference walker sees it.
#[derive(Debug, Default)]
pub struct Dump {
    pub leaves: Vec<Leaf>,
    /// (table, level, present entries)
    pub tables: Vec<(u64, u8, usize)>,
}

// =======================================================================================
// The memory recorder: flush and barrier discipline.
// =======================================================================================

/// A [`FakeDmaMemory`] that records what the CPU caches would hold (see the module docs).
pub struct Recorder<R> {
    pub mem: FakeDmaMemory,
    coherent: bool,
    /// Cache lines written (or zeroed by an allocation) and not flushed since.
    dirty: BTreeSet<u64>,
    /// Page → clock of its last write or flush.
    touched: BTreeMap<u64, u64>,
    clock: Cell<u64>,
    last_barrier: Cell<u64>,
    problems: Vec<String>,
    reference: PhantomData<R>,
}

impl<R: Reference> Recorder<R> {
    pub fn new(coherent: bool) -> Self {
        Self {
            mem: FakeDmaMemory::new(),
            coherent,
            dirty: BTreeSet::new(),
            touched: BTreeMap::new(),
            clock: Cell::new(0),
            last_barrier: Cell::new(0),
            problems: Vec::new(),
            reference: PhantomData,
        }
    }

    fn tick(&self) -> u64 {
        self.clock.set(self.clock.get() + 1);
        self.clock.get()
    }

    /// After an operation: nothing written is still only in the CPU caches (when the
    /// unit is not coherent), every link came after its table was complete.
    pub fn assert_clean(&self) {
        assert!(self.problems.is_empty(), "{:#?}", self.problems);
        if self.coherent {
            assert_eq!(self.mem.flushed_lines, 0, "coherent tables need no flush");
        } else {
            assert!(
                self.dirty.is_empty(),
                "lines written but never flushed: {:x?}",
                self.dirty.iter().map(|line| line * 64).collect::<Vec<_>>()
            );
        }
    }

    /// Everything a failed operation must leave as it was: the pages and their count.
    pub fn snapshot(&self) -> (BTreeMap<u64, [u64; 512]>, usize) {
        (self.mem.pages.clone(), self.mem.allocated)
    }
}

impl<R: Reference> DmaMemory for Recorder<R> {
    fn alloc_zeroed(&mut self, pages: usize, align: u64) -> Option<u64> {
        let base = self.mem.alloc_zeroed(pages, align)?;
        let now = self.tick();
        for page in 0..pages as u64 {
            let page = base + page * K4;
            // The CPU wrote those zeroes: they sit in its caches until flushed.
            self.dirty.extend(page / 64..(page + K4) / 64);
            self.touched.insert(page, now);
        }
        Some(base)
    }

    fn free(&mut self, paddr: u64, pages: usize) {
        for page in 0..pages as u64 {
            let page = paddr + page * K4;
            self.dirty.retain(|&line| (line * 64) & !0xfff != page);
            self.touched.remove(&page);
        }
        self.mem.free(paddr, pages);
    }

    fn read_u64(&self, paddr: u64) -> u64 {
        self.mem.read_u64(paddr)
    }

    fn write_u64(&mut self, paddr: u64, value: u64) {
        let now = self.tick();
        if let Some(target) = R::link_target(value).filter(|&target| target < PBASE) {
            if !self.mem.pages.contains_key(&target) {
                self.problems
                    .push(format!("{paddr:#x} links unallocated {target:#x}"));
            }
            if !self.coherent
                && self
                    .dirty
                    .range(target / 64..(target + K4) / 64)
                    .next()
                    .is_some()
            {
                self.problems.push(format!(
                    "{paddr:#x} links {target:#x} before it was flushed"
                ));
            }
            if self
                .touched
                .get(&target)
                .is_some_and(|&last| self.last_barrier.get() < last)
            {
                self.problems.push(format!(
                    "{paddr:#x} links {target:#x} with no barrier after its last write"
                ));
            }
        }
        self.mem.write_u64(paddr, value);
        self.dirty.insert(paddr / 64);
        self.touched.insert(paddr & !0xfff, now);
    }

    fn flush(&mut self, paddr: u64, len: usize) {
        let now = self.tick();
        let end = paddr + len as u64;
        let lines: Vec<u64> = self
            .dirty
            .range(paddr / 64..end.div_ceil(64))
            .copied()
            .collect();
        for line in lines {
            self.dirty.remove(&line);
        }
        let mut page = paddr & !0xfff;
        while page < end {
            self.touched.insert(page, now);
            page += K4;
        }
        self.mem.flush(paddr, len);
    }

    fn barrier(&self) {
        let now = self.tick();
        self.last_barrier.set(now);
        self.mem.barrier();
    }
}

// =======================================================================================
// The model.
// =======================================================================================

/// What one map call put at `[start, end)` and still is there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub end: u64,
    pub paddr: u64,
    pub access: Access,
}

/// What should be mapped. Extents instead of one entry per 4 KiB page: a 1 GiB
/// superpage would be 262144 pages per map.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// By start IOVA.
    pub extents: BTreeMap<u64, Extent>,
}

impl Model {
    /// Extents intersecting `[start, end)`, in order.
    pub fn overlapping(&self, start: u64, end: u64) -> Vec<(u64, Extent)> {
        let before = self
            .extents
            .range(..start)
            .next_back()
            .filter(|(_, extent)| extent.end > start);
        before
            .into_iter()
            .chain(self.extents.range(start..end))
            .map(|(&at, &extent)| (at, extent))
            .collect()
    }

    pub fn first_mapped(&self, start: u64, end: u64) -> Option<u64> {
        self.overlapping(start, end)
            .first()
            .map(|&(at, _)| at.max(start))
    }

    pub fn map(&mut self, iova: u64, paddr: u64, size: u64, access: Access) {
        let extent = Extent {
            end: iova + size,
            paddr,
            access,
        };
        assert!(self.extents.insert(iova, extent).is_none());
    }

    /// Unmap `[start, end)`; returns the bytes that were mapped there.
    pub fn unmap(&mut self, start: u64, end: u64) -> u64 {
        let mut bytes = 0;
        for (at, extent) in self.overlapping(start, end) {
            self.extents.remove(&at);
            bytes += extent.end.min(end) - at.max(start);
            if at < start {
                self.extents.insert(
                    at,
                    Extent {
                        end: start,
                        ..extent
                    },
                );
            }
            if extent.end > end {
                let paddr = extent.paddr + (end - at);
                self.extents.insert(end, Extent { paddr, ..extent });
            }
        }
        bytes
    }

    pub fn lookup(&self, iova: u64) -> Option<(u64, Access)> {
        let (&at, extent) = self.extents.range(..=iova).next_back()?;
        (iova < extent.end).then(|| (extent.paddr + (iova - at), extent.access))
    }

    pub fn total(&self) -> u64 {
        self.extents
            .iter()
            .map(|(&at, extent)| extent.end - at)
            .sum()
    }

    /// Maximal runs of IOVAs mapped linearly with one access: (start, end, paddr, access).
    pub fn runs(&self) -> Vec<(u64, u64, u64, Access)> {
        coalesce(
            self.extents
                .iter()
                .map(|(&at, extent)| (at, extent.end, extent.paddr, extent.access)),
        )
    }

    /// The leaf size the page at `iova` should sit in: the largest allowed size whose
    /// aligned block lies within what one map call mapped (and still maps) there, with
    /// a physical address aligned to it.
    pub fn expected_leaf(&self, iova: u64, sizes: PageSizes) -> u64 {
        for (size, allowed) in [
            (G1, sizes.contains(PageSizes::SIZE_1G)),
            (M2, sizes.contains(PageSizes::SIZE_2M)),
        ] {
            let block = iova & !(size - 1);
            if !allowed {
                continue;
            }
            let fits = self
                .extents
                .range(..=block)
                .next_back()
                .is_some_and(|(&at, extent)| {
                    extent
                        .end
                        .checked_sub(block)
                        .is_some_and(|rest| rest >= size)
                        && (extent.paddr + (block - at)) % size == 0
                });
            if fits {
                return size;
            }
        }
        K4
    }
}

/// Adjacent pieces that continue each other (IOVA, physical address, access) merged.
pub fn coalesce(
    pieces: impl Iterator<Item = (u64, u64, u64, Access)>,
) -> Vec<(u64, u64, u64, Access)> {
    let mut runs: Vec<(u64, u64, u64, Access)> = Vec::new();
    for (start, end, paddr, access) in pieces {
        match runs.last_mut() {
            Some(last)
                if last.1 == start && last.2 + (last.1 - last.0) == paddr && last.3 == access =>
            {
                last.1 = end;
            }
            _ => runs.push((start, end, paddr, access)),
        }
    }
    runs
}

/// Does `[.., end)` reach beyond a `width`-bit space?
fn beyond(end: u64, width: u8) -> bool {
    u128::from(end) > 1u128 << width
}

/// The errors the documented checks give, in their documented order; `Ok` when the map
/// should succeed.
pub fn expected_map(
    model: &Model,
    width: u8,
    iova: u64,
    paddr: u64,
    size: u64,
    access: Access,
) -> Result<(), IommuError> {
    if size == 0 || (iova | paddr | size) % K4 != 0 {
        return Err(IommuError::Misaligned);
    }
    let (Some(end), Some(paddr_end)) = (iova.checked_add(size), paddr.checked_add(size)) else {
        return Err(IommuError::Wraps);
    };
    if beyond(end, width) || paddr_end > 1 << 52 {
        return Err(IommuError::OutOfRange);
    }
    if !access.intersects(RW) {
        return Err(IommuError::NoAccess);
    }
    match model.first_mapped(iova, end) {
        Some(iova) => Err(IommuError::Overlap { iova }),
        None => Ok(()),
    }
}

/// The same for an unmap.
pub fn expected_unmap(width: u8, iova: u64, size: u64) -> Result<(), IommuError> {
    if size == 0 || (iova | size) % K4 != 0 {
        return Err(IommuError::Misaligned);
    }
    match iova.checked_add(size) {
        None => Err(IommuError::Wraps),
        Some(end) if beyond(end, width) => Err(IommuError::OutOfRange),
        Some(_) => Ok(()),
    }
}

// =======================================================================================
// Checking a table against the model.
// =======================================================================================

pub fn config(levels: u8, superpages: PageSizes, coherent: bool) -> PageTableConfig {
    PageTableConfig {
        levels,
        superpages,
        coherent,
    }
}

/// A fresh table in a fresh recorder.
pub fn new_table<R: Reference>(
    levels: u8,
    sizes: PageSizes,
    coherent: bool,
) -> (Recorder<R>, IoPageTable<R::Format>) {
    let mut rec = Recorder::new(coherent);
    let table = IoPageTable::new(&mut rec, config(levels, sizes, coherent)).unwrap();
    (rec, table)
}

/// Every leaf, as the reference walker finds them.
pub fn leaves<R: Reference>(rec: &Recorder<R>, table: &IoPageTable<R::Format>) -> Vec<Leaf> {
    R::dump(&rec.mem, table.root(), table.levels()).leaves
}

/// How many leaves of each size.
pub fn leaf_sizes<R: Reference>(
    rec: &Recorder<R>,
    table: &IoPageTable<R::Format>,
) -> BTreeMap<u64, usize> {
    let mut sizes = BTreeMap::new();
    for leaf in leaves(rec, table) {
        *sizes.entry(leaf.size).or_default() += 1;
    }
    sizes
}

/// Everything the three references say about `table`, plus `probes` translated through
/// both the reference walker and the engine.
pub fn check<R: Reference>(
    table: &IoPageTable<R::Format>,
    rec: &Recorder<R>,
    model: &Model,
    sizes: PageSizes,
    probes: &[u64],
) {
    rec.assert_clean();
    let levels = table.levels();
    let dump = R::dump(&rec.mem, table.root(), levels);

    // Exactly what the model maps, no more, no less.
    let leaves = coalesce(
        dump.leaves
            .iter()
            .map(|leaf| (leaf.iova, leaf.iova + leaf.size, leaf.paddr, leaf.access())),
    );
    assert_eq!(leaves, model.runs(), "mapped runs differ from the model");

    // Each page in the largest leaf it can be in.
    for leaf in &dump.leaves {
        assert_eq!(
            leaf.size,
            model.expected_leaf(leaf.iova, sizes),
            "leaf at {:#x} has the wrong size",
            leaf.iova
        );
    }

    // Table accounting: every table held is reachable or retired, none linked empty.
    for &(address, level, present) in &dump.tables {
        assert!(
            address == table.root() || present > 0,
            "empty level-{level} table {address:#x} still linked"
        );
    }
    assert_eq!(
        table.table_pages(),
        dump.tables.len() + table.retired_tables()
    );
    assert_eq!(table.table_pages(), rec.mem.allocated);

    // Point translations, reference against model and engine against reference.
    let mut points: Vec<u64> = probes.to_vec();
    for (&at, extent) in &model.extents {
        points.extend([at, extent.end - K4, at.wrapping_sub(K4), extent.end]);
        points.push(at + (extent.end - at) / 2 / K4 * K4 + 0x123);
    }
    for iova in points {
        let reference = R::translate(&rec.mem, table.root(), levels, iova);
        match model.lookup(iova) {
            Some((paddr, access)) => {
                let walk = reference.unwrap_or_else(|fault| panic!("{iova:#x}: {fault:?}"));
                assert_eq!(walk.paddr, paddr, "{iova:#x}");
                assert_eq!(
                    (walk.read, walk.write),
                    (
                        access.contains(Access::READ),
                        access.contains(Access::WRITE)
                    )
                );
                let engine = table.translate(rec, iova).expect("engine agrees");
                assert_eq!(engine.paddr, paddr);
                assert_eq!(engine.access, access);
                assert_eq!(engine.page_size, span(walk.level));
            }
            None => {
                assert!(
                    matches!(
                        reference,
                        Err(Fault::NotPresent { .. } | Fault::BeyondWidth)
                    ),
                    "{iova:#x} should fault, got {reference:?}"
                );
                assert_eq!(table.translate(rec, iova), None);
            }
        }
    }
}

// =======================================================================================
// Random operations.
// =======================================================================================

/// Where an operation starts: in the low 4 GiB of the address space or in its top
/// 4 GiB, at a GiB, a 2 MiB block and a page chosen so that operations often collide.
#[derive(Clone, Debug)]
pub struct Place {
    pub high: bool,
    pub gib: u64,
    pub block: u64,
    pub page: u64,
}

#[derive(Clone, Debug)]
pub enum Len {
    Pages(u64),
    /// n × 2 MiB, plus or minus a page.
    Blocks(u64, i8),
    /// A GiB (8 MiB without superpages) plus or minus a page; when the flag is set,
    /// from the start of the GiB the place is in (so that 1 GiB leaves happen).
    Giant(i8, bool),
}

#[derive(Clone, Debug)]
pub enum Op {
    Map {
        at: Place,
        len: Len,
        /// Which GiB of physical memory; with `skew`, shifted so no superpage fits.
        frame: u64,
        skew: Option<u64>,
        access: u8,
        /// Allow only this many new table pages (a NoMemory injection).
        tight: Option<usize>,
    },
    Unmap {
        at: Place,
        len: Len,
        tight: Option<usize>,
    },
    /// Arguments that must be refused, for map or unmap.
    Invalid { kind: u8, unmap: bool },
    /// An unmap starting in something mapped: the extent of the model at `pick` (a
    /// fraction of 2^16 of the way through), `skip` pages in (clamped to the extent).
    UnmapMapped {
        pick: u16,
        skip: u64,
        len: Len,
        tight: Option<usize>,
    },
    /// The caller's invalidation completed: free retired tables.
    Reclaim,
}

/// Raw numbers per operation (no operation uses more).
pub const DRAWS: usize = 20;

/// The numbers a property test generates for one [`Op`].
pub type RawOp = [u16; DRAWS];

/// Choices made from raw numbers. Scaled rather than taken modulo: a smaller number
/// always means an earlier alternative or a smaller value, so a property test that
/// shrinks the numbers towards 0 shrinks the operations too.
struct Dice<'a> {
    raw: core::slice::Iter<'a, u16>,
}

impl Dice<'_> {
    fn next(&mut self) -> u64 {
        u64::from(*self.raw.next().expect("DRAWS covers every operation"))
    }

    /// The index of one of the alternatives, with these weights.
    fn pick(&mut self, weights: &[u64]) -> usize {
        let mut point = (self.next() * weights.iter().sum::<u64>()) >> 16;
        for (index, &weight) in weights.iter().enumerate() {
            if point < weight {
                return index;
            }
            point -= weight;
        }
        unreachable!("the point is below the total weight")
    }

    /// Uniform in `range`.
    fn range(&mut self, range: core::ops::Range<u64>) -> u64 {
        range.start + ((self.next() * (range.end - range.start)) >> 16)
    }

    /// One of `ranges` (chosen with their weights), then a value in it.
    fn weighted(&mut self, ranges: &[(u64, core::ops::Range<u64>)]) -> u64 {
        let weights: Vec<u64> = ranges.iter().map(|(weight, _)| *weight).collect();
        let range = ranges[self.pick(&weights)].1.clone();
        self.range(range)
    }

    fn jitter(&mut self) -> i8 {
        self.range(0..3) as i8 - 1
    }

    fn place(&mut self) -> Place {
        Place {
            high: self.pick(&[2, 1]) == 1,
            gib: self.weighted(&[(3, 0..2), (1, 2..4)]),
            block: self.weighted(&[(4, 0..4), (1, 508..512)]),
            page: self.weighted(&[(4, 0..1), (3, 1..4), (1, 508..512), (2, 0..512)]),
        }
    }

    fn len(&mut self) -> Len {
        match self.pick(&[4, 4, 2]) {
            0 => Len::Pages(self.range(1..8)),
            1 => Len::Blocks(self.range(1..4), self.jitter()),
            _ => Len::Giant(self.jitter(), self.pick(&[1, 3]) == 1),
        }
    }

    fn tight(&mut self) -> Option<usize> {
        (self.pick(&[6, 1]) == 1).then(|| self.range(0..4) as usize)
    }
}

impl Op {
    /// The operation `raw` stands for. Weights: 10 maps, 3 unmaps anywhere, 4 unmaps
    /// starting in something mapped, 1 invalid argument set, 1 reclaim; one map or unmap
    /// in 7 runs short of memory.
    pub fn draw(raw: &RawOp) -> Op {
        let mut dice = Dice { raw: raw.iter() };
        match dice.pick(&[10, 3, 4, 1, 1]) {
            0 => Op::Map {
                at: dice.place(),
                len: dice.len(),
                frame: dice.range(0..8),
                skew: (dice.pick(&[3, 1]) == 1).then(|| dice.range(1..512)),
                access: [3, 1, 2][dice.pick(&[6, 1, 1])],
                tight: dice.tight(),
            },
            1 => Op::Unmap {
                at: dice.place(),
                len: dice.len(),
                tight: dice.tight(),
            },
            2 => Op::UnmapMapped {
                pick: dice.next() as u16,
                skip: dice.weighted(&[(2, 0..1), (1, 1..4), (1, 0..1024)]),
                len: dice.len(),
                tight: dice.tight(),
            },
            3 => Op::Invalid {
                kind: dice.range(0..10) as u8,
                unmap: dice.pick(&[1, 1]) == 1,
            },
            _ => Op::Reclaim,
        }
    }
}

/// One random sequence in progress.
pub struct Run<R: Reference> {
    pub rec: Recorder<R>,
    pub table: IoPageTable<R::Format>,
    pub model: Model,
    pub sizes: PageSizes,
    pub width: u8,
}

impl<R: Reference> Run<R> {
    fn window(&self, high: bool) -> u64 {
        if high {
            (1u64 << self.width) - 4 * G1
        } else {
            0
        }
    }

    fn resolve(&self, at: &Place, len: &Len) -> (u64, u64) {
        let window = self.window(at.high);
        let mut iova = window + at.gib * G1 + at.block * M2 + at.page * K4;
        if let Len::Giant(_, true) = len {
            iova &= !(G1 - 1);
        }
        let giant = if self.sizes != ONLY_4K { G1 } else { 8 << 20 };
        let pages = |jitter: i8| i64::from(jitter) * K4 as i64;
        let size = match *len {
            Len::Pages(n) => n * K4,
            Len::Blocks(n, jitter) => (n * M2).saturating_add_signed(pages(jitter)),
            Len::Giant(jitter, _) => giant.saturating_add_signed(pages(jitter)),
        };
        (iova, size.min(window + 4 * G1 - iova))
    }

    /// Run `attempt` with at most `tight` more pages. When it may fail (`may_fail`, or
    /// memory is tight) and does, the memory must be exactly as before.
    fn guarded<T>(
        &mut self,
        may_fail: bool,
        tight: Option<usize>,
        attempt: impl FnOnce(&mut IoPageTable<R::Format>, &mut Recorder<R>) -> Result<T, IommuError>,
    ) -> Result<T, IommuError> {
        let before = (may_fail || tight.is_some()).then(|| self.rec.snapshot());
        self.rec.mem.limit = tight.map(|spare| self.rec.mem.allocated + spare);
        let result = attempt(&mut self.table, &mut self.rec);
        self.rec.mem.limit = None;
        if let (Err(_), Some(before)) = (&result, before) {
            assert_eq!(
                self.rec.snapshot(),
                before,
                "a failed operation changed memory"
            );
        }
        result
    }

    /// Play `op`; returns IOVAs worth probing afterwards.
    pub fn step(&mut self, op: &Op) -> Vec<u64> {
        match op {
            Op::Map {
                at,
                len,
                frame,
                skew,
                access,
                tight,
            } => {
                let (iova, size) = self.resolve(at, len);
                let skew = skew.filter(|_| size <= 16 << 20).unwrap_or(0);
                let paddr = PBASE + frame * G1 + iova % G1 + skew * K4;
                let access = Access::from_bits_truncate(*access);
                self.map(iova, paddr, size, access, *tight);
                vec![iova, iova + size - K4]
            }
            Op::UnmapMapped {
                pick,
                skip,
                len,
                tight,
            } => {
                if self.model.extents.is_empty() {
                    return vec![];
                }
                let index = (usize::from(*pick) * self.model.extents.len()) >> 16;
                let (&start, extent) = self
                    .model
                    .extents
                    .iter()
                    .nth(index)
                    .expect("index in range");
                let iova = (start + skip * K4).min(extent.end - K4);
                let window = self.window(iova >= 1 << 32);
                let (_, size) = self.resolve(
                    &Place {
                        high: false,
                        gib: 0,
                        block: 0,
                        page: 0,
                    },
                    len,
                );
                let size = size.min(window + 4 * G1 - iova);
                self.unmap(iova, size, *tight);
                vec![iova, iova + size - K4, iova.wrapping_sub(K4), iova + size]
            }
            Op::Unmap { at, len, tight } => {
                let (iova, size) = self.resolve(at, len);
                self.unmap(iova, size, *tight);
                vec![iova, iova + size - K4, iova.wrapping_sub(K4), iova + size]
            }
            Op::Invalid { kind, unmap } => {
                let top = 1u64 << self.width;
                let (iova, paddr, size, access) = match kind {
                    0 => (0x800, PBASE, K4, RW),
                    1 => (0, PBASE, K4 + 0x10, RW),
                    2 => (0, PBASE, 0, RW),
                    3 => (0, PBASE + 0x10, K4, RW),
                    4 => (LAST_PAGE, PBASE, 2 * K4, RW),
                    5 => (0, LAST_PAGE, 2 * K4, RW),
                    6 => (top - K4, PBASE, 2 * K4, RW),
                    7 => (top, PBASE, K4, RW),
                    8 => (0, (1 << 52) - K4, 2 * K4, RW),
                    _ => (G1, PBASE, K4, Access::empty()),
                };
                if *unmap {
                    self.unmap(iova, size, None);
                } else {
                    self.map(iova, paddr, size, access, None);
                }
                vec![]
            }
            Op::Reclaim => {
                let retired = self.table.retired_tables();
                assert_eq!(self.table.reclaim(&mut self.rec), retired);
                assert_eq!(self.table.retired_tables(), 0);
                vec![]
            }
        }
    }

    fn map(&mut self, iova: u64, paddr: u64, size: u64, access: Access, tight: Option<usize>) {
        let expected = expected_map(&self.model, self.width, iova, paddr, size, access);
        let result = self.guarded(expected.is_err(), tight, |table, rec| {
            table.map(rec, iova, paddr, size, access)
        });
        match (expected, result) {
            (Ok(()), Ok(())) => self.model.map(iova, paddr, size, access),
            (Ok(()), Err(IommuError::NoMemory)) if tight.is_some() => {}
            (expected, result) => {
                assert_eq!(result, expected, "map({iova:#x}, {paddr:#x}, {size:#x})")
            }
        }
    }

    fn unmap(&mut self, iova: u64, size: u64, tight: Option<usize>) {
        let expected = expected_unmap(self.width, iova, size);
        // The mapped IOVAs the unmap must remove, as one span.
        let end = iova.wrapping_add(size);
        let removed = if expected.is_ok() {
            self.model.overlapping(iova, end)
        } else {
            vec![]
        };
        let span = removed
            .first()
            .zip(removed.last())
            .map(|((first, _), (_, last))| ((*first).max(iova), last.end.min(end)));
        let result = self.guarded(expected.is_err(), tight, |table, rec| {
            table.unmap(rec, iova, size)
        });
        match (expected, result) {
            (Ok(()), Ok(unmapped)) => {
                let bytes = self.model.unmap(iova, iova + size);
                assert_eq!(unmapped.bytes, bytes, "unmap({iova:#x}, {size:#x})");
                match (unmapped.flush, span) {
                    (None, None) => assert_eq!(bytes, 0),
                    (Some(flush), Some((low, high))) => {
                        // It covers what went, and stays within the leaves it touched
                        // (a split superpage counts whole).
                        assert!(flush.iova <= low && flush.iova + flush.size >= high);
                        assert!(flush.iova >= iova & !(G1 - 1));
                        assert!(flush.iova + flush.size <= end.next_multiple_of(G1));
                    }
                    (flush, span) => panic!("flush {flush:?} for removed span {span:?}"),
                }
            }
            (Ok(()), Err(IommuError::NoMemory)) if tight.is_some() => {}
            (expected, result) => {
                assert_eq!(result.map(|_| ()), expected, "unmap({iova:#x}, {size:#x})")
            }
        }
    }
}

/// Play `ops` on a fresh `levels`-deep table (3 levels at least: the operations land in
/// the lowest and the highest 4 GiB of the address space), checking everything after
/// every step; then unmap everything and check that only the root is left.
pub fn run<R: Reference>(levels: u8, sizes: PageSizes, coherent: bool, ops: &[Op]) {
    let (rec, table) = new_table::<R>(levels, sizes, coherent);
    let width = table.address_width();
    assert!((39..64).contains(&width), "random runs need 3 to 5 levels");
    let mut run = Run {
        rec,
        table,
        model: Model::default(),
        sizes,
        width,
    };
    for op in ops {
        let probes = run.step(op);
        check(&run.table, &run.rec, &run.model, sizes, &probes);
    }
    // Unmapping everything leaves only the root: no table leaks.
    let total = run.model.total();
    let mut bytes = 0;
    for high in [false, true] {
        let window = run.window(high);
        bytes += run.table.unmap(&mut run.rec, window, 4 * G1).unwrap().bytes;
    }
    assert_eq!(bytes, total);
    run.table.reclaim(&mut run.rec);
    assert_eq!(run.table.table_pages(), 1);
    assert_eq!(run.rec.mem.allocated, 1);
    assert!(
        run.rec.mem.pages[&run.table.root()]
            .iter()
            .all(|&word| word == 0)
    );
    run.rec.assert_clean();
    run.table.destroy(&mut run.rec);
    assert_eq!(run.rec.mem.allocated, 0);
}
