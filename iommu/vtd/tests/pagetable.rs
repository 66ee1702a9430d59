//! The second-level page-table engine (`sluice_vtd::pagetable`) checked from outside.
//!
//! Three independent pieces of test code say what "right" means:
//! - `spec`: a walker written from the VT-d specification (§9.8 second-level paging
//!   entries, §3.7 second-level translation) that reads the tables in memory the way the
//!   hardware does. It never calls the engine's own walk.
//! - `Model`: what should be mapped, as extents (one per surviving piece of a map call),
//!   with the superpage each page should sit in.
//! - `Recorder`: a `DmaMemory` that checks the discipline a device walking the tables
//!   concurrently needs: on a non-coherent unit every written (or freshly zeroed) cache
//!   line is flushed before the operation returns, and a new table is flushed and fenced
//!   before the store that links it.
//!
//! Unit tests cover each error, rollback, superpages, splitting and freeing; property
//! tests run random map/unmap sequences for 3, 4 and 5 levels with and without
//! superpages against all three.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use sluice_iommu::{Access, IommuError};
use sluice_vtd::hw::DmaMemory;
use sluice_vtd::hw::fake::FakeDmaMemory;
use sluice_vtd::pagetable::{
    FlushRange, PageSizes, PageTableConfig, SecondLevelTable, Translation, Unmapped,
};
use sluice_vtd::regs::LargePages;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
const RW: Access = Access::READ.union(Access::WRITE);
/// Physical addresses the tests map start here: far above the pages the fake allocator
/// hands out, so a leaf never looks like a link to a table.
const PBASE: u64 = 1 << 40;
/// The last page of the 64-bit space: a range starting there wraps.
const LAST_PAGE: u64 = !0xfff;

// =======================================================================================
// The reference walker, from the specification.
// =======================================================================================

mod spec {
    use std::collections::BTreeMap;

    use sluice_vtd::hw::DmaMemory;
    use sluice_vtd::hw::fake::FakeDmaMemory;

    /// Read access (bit 0). An entry with neither R nor W is not present.
    pub const R: u64 = 1 << 0;
    /// Write access (bit 1).
    pub const W: u64 = 1 << 1;
    /// Page size (bit 7): in a PDPTE (1 GiB) or PDE (2 MiB) the entry is a leaf.
    pub const PS: u64 = 1 << 7;
    /// Address of the next table or of the page: bits 51:12.
    pub const ADDR: u64 = ((1 << 52) - 1) & !0xfff;

    /// Bits an entry's own 9-bit index selects at `level` start here.
    pub fn shift(level: u8) -> u32 {
        12 + 9 * (u32::from(level) - 1)
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Walk {
        pub paddr: u64,
        pub read: bool,
        pub write: bool,
        /// 1: 4 KiB page, 2: 2 MiB, 3: 1 GiB.
        pub level: u8,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Fault {
        /// The IOVA has bits set above the table's address width.
        BeyondWidth,
        NotPresent {
            level: u8,
        },
        /// A reserved bit was set (PS in a PML4E/PML5E, an unaligned superpage address).
        Reserved {
            level: u8,
        },
    }

    /// Walk from `root` (a `levels`-deep table) for `iova`, as the unit does.
    pub fn translate(mem: &FakeDmaMemory, root: u64, levels: u8, iova: u64) -> Result<Walk, Fault> {
        if iova >> shift(levels + 1) != 0 {
            return Err(Fault::BeyondWidth);
        }
        let mut table = root;
        let (mut read, mut write) = (true, true);
        for level in (1..=levels).rev() {
            let index = (iova >> shift(level)) & 0x1ff;
            let entry = mem.read_u64(table + index * 8);
            if entry & (R | W) == 0 {
                return Err(Fault::NotPresent { level });
            }
            // Permissions are the AND over every entry of the walk.
            read &= entry & R != 0;
            write &= entry & W != 0;
            let leaf = level == 1 || entry & PS != 0;
            if entry & PS != 0 && level > 3 {
                return Err(Fault::Reserved { level });
            }
            if leaf {
                let page = 1u64 << shift(level);
                let base = entry & ADDR;
                if base & (page - 1) != 0 {
                    return Err(Fault::Reserved { level });
                }
                return Ok(Walk {
                    paddr: base | (iova & (page - 1)),
                    read,
                    write,
                    level,
                });
            }
            table = entry & ADDR;
        }
        unreachable!("level 1 entries are always leaves")
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Leaf {
        pub iova: u64,
        pub size: u64,
        pub paddr: u64,
        pub read: bool,
        pub write: bool,
    }

    /// Every table reachable from the root and every leaf, in IOVA order.
    #[derive(Debug, Default)]
    pub struct Dump {
        pub leaves: Vec<Leaf>,
        /// (table, level, present entries)
        pub tables: Vec<(u64, u8, usize)>,
    }

    /// Walk the whole tree. Also checks the format rules the engine promises beyond
    /// what the hardware requires: no bits but R, W, PS and ADDR; tables carry R and W;
    /// PS only in PDEs and PDPTEs; every link points at an allocated page.
    pub fn dump(mem: &FakeDmaMemory, root: u64, levels: u8) -> Dump {
        let mut dump = Dump::default();
        walk(&mem.pages, root, levels, 0, &mut dump);
        dump
    }

    fn walk(pages: &BTreeMap<u64, [u64; 512]>, table: u64, level: u8, base: u64, dump: &mut Dump) {
        let words = pages
            .get(&table)
            .unwrap_or_else(|| panic!("table {table:#x} (level {level}) is not allocated memory"));
        let mut present = 0;
        for (index, &entry) in words.iter().enumerate() {
            if entry & (R | W) == 0 {
                assert_eq!(entry, 0, "not-present entry with other bits set");
                continue;
            }
            present += 1;
            assert_eq!(entry & !(R | W | PS | ADDR), 0, "stray bits in {entry:#x}");
            let iova = base + ((index as u64) << shift(level));
            let leaf = level == 1 || entry & PS != 0;
            if leaf {
                assert!(level <= 3, "PS set at level {level}");
                assert!(level == 1 || entry & PS != 0);
                dump.leaves.push(Leaf {
                    iova,
                    size: 1 << shift(level),
                    paddr: entry & ADDR,
                    read: entry & R != 0,
                    write: entry & W != 0,
                });
            } else {
                assert_eq!(entry & (R | W), R | W, "a table link must allow R and W");
                walk(pages, entry & ADDR, level - 1, iova, dump);
            }
        }
        dump.tables.push((table, level, present));
    }
}

// =======================================================================================
// The memory recorder: flush and barrier discipline.
// =======================================================================================

struct Recorder {
    mem: FakeDmaMemory,
    coherent: bool,
    /// Cache lines written (or zeroed by an allocation) and not flushed since.
    dirty: BTreeSet<u64>,
    /// Page → clock of its last write or flush.
    touched: BTreeMap<u64, u64>,
    clock: Cell<u64>,
    last_barrier: Cell<u64>,
    problems: Vec<String>,
}

impl Recorder {
    fn new(coherent: bool) -> Self {
        Self {
            mem: FakeDmaMemory::new(),
            coherent,
            dirty: BTreeSet::new(),
            touched: BTreeMap::new(),
            clock: Cell::new(0),
            last_barrier: Cell::new(0),
            problems: Vec::new(),
        }
    }

    fn tick(&self) -> u64 {
        self.clock.set(self.clock.get() + 1);
        self.clock.get()
    }

    /// After an operation: nothing written is still only in the CPU caches (when the
    /// unit is not coherent), every link came after its table was complete.
    fn assert_clean(&self) {
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

    fn snapshot(&self) -> (BTreeMap<u64, [u64; 512]>, usize) {
        (self.mem.pages.clone(), self.mem.allocated)
    }
}

impl DmaMemory for Recorder {
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
        let target = value & spec::ADDR;
        let link = value & (spec::R | spec::W) != 0 && value & spec::PS == 0 && target < PBASE;
        if link {
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
struct Extent {
    end: u64,
    paddr: u64,
    access: Access,
    call: u32,
}

/// What should be mapped. Extents instead of one entry per 4 KiB page: a 1 GiB
/// superpage would be 262144 pages per map.
#[derive(Clone, Debug, Default)]
struct Model {
    extents: BTreeMap<u64, Extent>,
    calls: u32,
}

impl Model {
    /// Extents intersecting `[start, end)`, in order.
    fn overlapping(&self, start: u64, end: u64) -> Vec<(u64, Extent)> {
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

    fn first_mapped(&self, start: u64, end: u64) -> Option<u64> {
        self.overlapping(start, end)
            .first()
            .map(|&(at, _)| at.max(start))
    }

    fn map(&mut self, iova: u64, paddr: u64, size: u64, access: Access) {
        self.calls += 1;
        let extent = Extent {
            end: iova + size,
            paddr,
            access,
            call: self.calls,
        };
        assert!(self.extents.insert(iova, extent).is_none());
    }

    fn unmap(&mut self, start: u64, end: u64) -> u64 {
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

    fn lookup(&self, iova: u64) -> Option<(u64, Access)> {
        let (&at, extent) = self.extents.range(..=iova).next_back()?;
        (iova < extent.end).then(|| (extent.paddr + (iova - at), extent.access))
    }

    fn total(&self) -> u64 {
        self.extents
            .iter()
            .map(|(&at, extent)| extent.end - at)
            .sum()
    }

    /// Maximal runs of IOVAs mapped linearly with one access: (start, end, paddr, access).
    fn runs(&self) -> Vec<(u64, u64, u64, Access)> {
        coalesce(
            self.extents
                .iter()
                .map(|(&at, extent)| (at, extent.end, extent.paddr, extent.access)),
        )
    }

    /// The leaf size the page at `iova` should sit in: the largest allowed size whose
    /// aligned block lies within what one map call mapped (and still maps) there, with
    /// a physical address aligned to it.
    fn expected_leaf(&self, iova: u64, sizes: PageSizes) -> u64 {
        for (size, allowed) in [
            (G1, sizes.contains(PageSizes::SIZE_1G)),
            (M2, sizes.contains(PageSizes::SIZE_2M)),
        ] {
            let block = iova & !(size - 1);
            if !allowed {
                continue;
            }
            if let Some((&at, extent)) = self.extents.range(..=block).next_back()
                && extent.end >= block + size
                && (extent.paddr + (block - at)) % size == 0
            {
                return size;
            }
        }
        K4
    }
}

fn coalesce(pieces: impl Iterator<Item = (u64, u64, u64, Access)>) -> Vec<(u64, u64, u64, Access)> {
    let mut runs: Vec<(u64, u64, u64, Access)> = Vec::new();
    for (start, end, paddr, access) in pieces {
        if let Some(last) = runs.last_mut()
            && last.1 == start
            && last.2 + (last.1 - last.0) == paddr
            && last.3 == access
        {
            last.1 = end;
            continue;
        }
        runs.push((start, end, paddr, access));
    }
    runs
}

fn leaf_access(leaf: &spec::Leaf) -> Access {
    let mut access = Access::empty();
    access.set(Access::READ, leaf.read);
    access.set(Access::WRITE, leaf.write);
    access
}

/// The errors the documented checks give, in their documented order; `Ok` when the map
/// should succeed.
fn expected_map(
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
    if end > 1 << width || paddr_end > 1 << 52 {
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

fn expected_unmap(width: u8, iova: u64, size: u64) -> Result<(), IommuError> {
    if size == 0 || (iova | size) % K4 != 0 {
        return Err(IommuError::Misaligned);
    }
    match iova.checked_add(size) {
        None => Err(IommuError::Wraps),
        Some(end) if end > 1 << width => Err(IommuError::OutOfRange),
        Some(_) => Ok(()),
    }
}

// =======================================================================================
// Checking a table against the model.
// =======================================================================================

fn config(levels: u8, superpages: PageSizes, coherent: bool) -> PageTableConfig {
    PageTableConfig {
        levels,
        superpages,
        coherent,
    }
}

const ALL: PageSizes = PageSizes::all();
const NO_1G: PageSizes = PageSizes::SIZE_4K.union(PageSizes::SIZE_2M);
const ONLY_4K: PageSizes = PageSizes::SIZE_4K;

/// Everything the three references say about `table`, plus `probes` translated through
/// both the reference walker and the engine.
fn check(
    table: &SecondLevelTable,
    rec: &Recorder,
    model: &Model,
    sizes: PageSizes,
    probes: &[u64],
) {
    rec.assert_clean();
    let levels = table.levels();
    let dump = spec::dump(&rec.mem, table.root(), levels);

    // Exactly what the model maps, no more, no less.
    let leaves = coalesce(dump.leaves.iter().map(|leaf| {
        (
            leaf.iova,
            leaf.iova + leaf.size,
            leaf.paddr,
            leaf_access(leaf),
        )
    }));
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
        let reference = spec::translate(&rec.mem, table.root(), levels, iova);
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
                let engine = table.translate(&rec.mem, iova).expect("engine agrees");
                assert_eq!(engine.paddr, paddr);
                assert_eq!(engine.access, access);
                assert_eq!(engine.page_size, 1 << spec::shift(walk.level));
            }
            None => {
                assert!(
                    matches!(
                        reference,
                        Err(spec::Fault::NotPresent { .. } | spec::Fault::BeyondWidth)
                    ),
                    "{iova:#x} should fault, got {reference:?}"
                );
                assert_eq!(table.translate(&rec.mem, iova), None);
            }
        }
    }
}

fn new_table(levels: u8, sizes: PageSizes, coherent: bool) -> (Recorder, SecondLevelTable) {
    let mut rec = Recorder::new(coherent);
    let table = SecondLevelTable::new(&mut rec, config(levels, sizes, coherent)).unwrap();
    (rec, table)
}

fn leaves(rec: &Recorder, table: &SecondLevelTable) -> Vec<spec::Leaf> {
    spec::dump(&rec.mem, table.root(), table.levels()).leaves
}

fn leaf_sizes(rec: &Recorder, table: &SecondLevelTable) -> BTreeMap<u64, usize> {
    let mut sizes = BTreeMap::new();
    for leaf in leaves(rec, table) {
        *sizes.entry(leaf.size).or_default() += 1;
    }
    sizes
}

// =======================================================================================
// Unit tests.
// =======================================================================================

#[test]
fn depth_sets_the_address_width() {
    for (levels, width) in [(3, 39), (4, 48), (5, 57)] {
        let (rec, table) = new_table(levels, ALL, false);
        assert_eq!(table.levels(), levels);
        assert_eq!(table.address_width(), width);
        assert_eq!(table.table_pages(), 1);
        assert_eq!(rec.mem.allocated, 1);
        assert!(rec.mem.pages[&table.root()].iter().all(|&word| word == 0));
        // A fresh root was written back (its zeroes were in the CPU's caches).
        rec.assert_clean();
    }
}

#[test]
fn unsupported_depths_are_refused() {
    for levels in [0, 1, 2, 6] {
        let mut mem = FakeDmaMemory::new();
        let result = SecondLevelTable::new(&mut mem, config(levels, ALL, true));
        assert_eq!(result.unwrap_err(), IommuError::OutOfRange);
        assert_eq!(mem.allocated, 0);
    }
}

#[test]
fn no_memory_for_the_root() {
    let mut mem = FakeDmaMemory::new();
    mem.limit = Some(0);
    let result = SecondLevelTable::new(&mut mem, config(4, ALL, true));
    assert_eq!(result.unwrap_err(), IommuError::NoMemory);
}

#[test]
fn page_sizes_from_sllps_and_as_bitmap() {
    assert_eq!(ONLY_4K.bitmap(), 1 << 12);
    assert_eq!(NO_1G.bitmap(), 1 << 12 | 1 << 21);
    assert_eq!(ALL.bitmap(), 1 << 12 | 1 << 21 | 1 << 30);
    // 4 KiB is there even when a caller forgets it.
    assert_eq!(PageSizes::SIZE_2M.bitmap(), 1 << 12 | 1 << 21);
    assert_eq!(PageSizes::from_sllps(LargePages::empty()), ONLY_4K);
    assert_eq!(PageSizes::from_sllps(LargePages::SIZE_2M), NO_1G);
    assert_eq!(PageSizes::from_sllps(LargePages::all()), ALL);
}

#[test]
fn argument_errors_change_nothing() {
    for levels in [3, 4, 5] {
        let (mut rec, mut table) = new_table(levels, ALL, false);
        table.map(&mut rec, G1, PBASE, M2, RW).unwrap();
        let top = 1u64 << table.address_width();
        let before = rec.snapshot();
        let map_cases = [
            (0x800, PBASE, K4, RW, IommuError::Misaligned),
            (0, PBASE + 0x10, K4, RW, IommuError::Misaligned),
            (0, PBASE, K4 + 1, RW, IommuError::Misaligned),
            (0, PBASE, 0, RW, IommuError::Misaligned),
            (LAST_PAGE, PBASE, 2 * K4, RW, IommuError::Wraps),
            (0, LAST_PAGE, 2 * K4, RW, IommuError::Wraps),
            (top - K4, PBASE, 2 * K4, RW, IommuError::OutOfRange),
            (top, PBASE, K4, RW, IommuError::OutOfRange),
            (0, (1 << 52) - K4, 2 * K4, RW, IommuError::OutOfRange),
            (0, PBASE, K4, Access::empty(), IommuError::NoAccess),
            (
                G1 + M2 - K4,
                PBASE,
                2 * K4,
                RW,
                IommuError::Overlap { iova: G1 + M2 - K4 },
            ),
        ];
        for (iova, paddr, size, access, error) in map_cases {
            assert_eq!(
                table.map(&mut rec, iova, paddr, size, access),
                Err(error),
                "map({iova:#x}, {paddr:#x}, {size:#x}, {access:?})"
            );
            assert_eq!(rec.snapshot(), before);
        }
        let unmap_cases = [
            (0x800, K4, IommuError::Misaligned),
            (0, K4 + 1, IommuError::Misaligned),
            (0, 0, IommuError::Misaligned),
            (LAST_PAGE, 2 * K4, IommuError::Wraps),
            (top - K4, 2 * K4, IommuError::OutOfRange),
            (top, K4, IommuError::OutOfRange),
        ];
        for (iova, size, error) in unmap_cases {
            assert_eq!(table.unmap(&mut rec, iova, size), Err(error));
            assert_eq!(rec.snapshot(), before);
        }
        // The last page of the address space is usable.
        table.map(&mut rec, top - K4, PBASE, K4, RW).unwrap();
        assert_eq!(table.translate(&rec, top - 1).unwrap().paddr, PBASE + 0xfff);
    }
}

#[test]
fn overlap_names_the_lowest_mapped_iova_and_changes_nothing() {
    let (mut rec, mut table) = new_table(4, ONLY_4K, false);
    table.map(&mut rec, G1 + 2 * K4, PBASE, K4, RW).unwrap();
    table.map(&mut rec, G1 + 5 * K4, PBASE, K4, RW).unwrap();
    let before = rec.snapshot();
    assert_eq!(
        table.map(&mut rec, G1, PBASE, 16 * K4, RW),
        Err(IommuError::Overlap { iova: G1 + 2 * K4 })
    );
    // A map that would first need hundreds of new tables for [0, 1 GiB) allocates none.
    assert_eq!(
        table.map(&mut rec, 0, PBASE, G1 + 8 * K4, RW),
        Err(IommuError::Overlap { iova: G1 + 2 * K4 })
    );
    assert_eq!(rec.snapshot(), before);

    // Inside a superpage: the first page of the range is the one reported.
    let (mut rec, mut table) = new_table(3, ALL, false);
    table.map(&mut rec, M2, PBASE, M2, RW).unwrap();
    table.map(&mut rec, 4 * G1, PBASE, G1, RW).unwrap();
    let before = rec.snapshot();
    assert_eq!(
        table.map(&mut rec, 3 * M2 / 2, PBASE, K4, RW),
        Err(IommuError::Overlap { iova: 3 * M2 / 2 })
    );
    assert_eq!(
        table.map(&mut rec, M2 - K4, PBASE, 2 * K4, RW),
        Err(IommuError::Overlap { iova: M2 })
    );
    assert_eq!(
        table.map(&mut rec, 5 * G1 - K4, PBASE, K4, RW),
        Err(IommuError::Overlap { iova: 5 * G1 - K4 })
    );
    assert_eq!(rec.snapshot(), before);
}

#[test]
fn no_memory_leaves_nothing_behind() {
    let (mut rec, mut table) = new_table(5, ALL, false);
    let iova = (1 << 57) - 4 * K4;
    let before = rec.snapshot();
    // The map needs 4 tables (one per level below the root).
    for spare in 0..4 {
        rec.mem.limit = Some(rec.mem.allocated + spare);
        assert_eq!(
            table.map(&mut rec, iova, PBASE, K4, RW),
            Err(IommuError::NoMemory)
        );
        assert_eq!(rec.snapshot(), before);
        assert_eq!(table.table_pages(), 1);
    }
    rec.mem.limit = Some(rec.mem.allocated + 4);
    table.map(&mut rec, iova, PBASE, K4, RW).unwrap();
    assert_eq!(table.table_pages(), 5);
    rec.assert_clean();
}

#[test]
fn the_largest_fitting_leaf_is_used() {
    let (mut rec, mut table) = new_table(4, ALL, false);
    // 4 KiB, then a 2 MiB, a 1 GiB, a 2 MiB and a 4 KiB leaf.
    let iova = G1 - M2 - K4;
    let size = K4 + M2 + G1 + M2 + K4;
    let paddr = PBASE + 7 * G1 + (iova % G1);
    table
        .map(&mut rec, iova, paddr, size, Access::READ)
        .unwrap();
    let got: Vec<(u64, u64, u64)> = leaves(&rec, &table)
        .iter()
        .map(|leaf| (leaf.iova, leaf.size, leaf.paddr))
        .collect();
    assert_eq!(
        got,
        [
            (G1 - M2 - K4, K4, PBASE + 8 * G1 - M2 - K4),
            (G1 - M2, M2, PBASE + 8 * G1 - M2),
            (G1, G1, PBASE + 8 * G1),
            (2 * G1, M2, PBASE + 9 * G1),
            (2 * G1 + M2, K4, PBASE + 9 * G1 + M2),
        ]
    );
    // root, PDPT, PD for [0, 1G) with a PT, PD for [2G, 3G) with a PT.
    assert_eq!(table.table_pages(), 6);
    let walk = spec::translate(&rec.mem, table.root(), 4, G1 + 0x1234_5678).unwrap();
    assert_eq!(
        (walk.paddr, walk.read, walk.write, walk.level),
        (PBASE + 8 * G1 + 0x1234_5678, true, false, 3)
    );
    rec.assert_clean();
}

#[test]
fn superpages_need_a_matching_physical_alignment() {
    let (mut rec, mut table) = new_table(3, ALL, false);
    // IOVA 2 MiB aligned, physical address only 4 KiB aligned: 512 small leaves.
    table.map(&mut rec, M2, PBASE + K4, M2, RW).unwrap();
    assert_eq!(leaf_sizes(&rec, &table), BTreeMap::from([(K4, 512)]));
    // Both 2 MiB aligned, but not 1 GiB: 512 2 MiB leaves for a GiB.
    table.map(&mut rec, G1, PBASE + M2, G1, RW).unwrap();
    assert_eq!(
        leaf_sizes(&rec, &table),
        BTreeMap::from([(K4, 512), (M2, 512)])
    );
}

#[test]
fn only_the_sizes_the_unit_allows() {
    let (mut rec, mut table) = new_table(3, NO_1G, false);
    table.map(&mut rec, G1, PBASE, G1, RW).unwrap();
    assert_eq!(leaf_sizes(&rec, &table), BTreeMap::from([(M2, 512)]));

    let (mut rec, mut table) = new_table(3, ONLY_4K, true);
    table.map(&mut rec, 0, PBASE, 2 * M2, RW).unwrap();
    assert_eq!(leaf_sizes(&rec, &table), BTreeMap::from([(K4, 1024)]));
    assert_eq!(table.table_pages(), 1 + 1 + 2);
    rec.assert_clean();

    // 1 GiB without 2 MiB (no real unit does this, but SLLPS can say it): splitting a
    // gigabyte then needs 4 KiB leaves for all the rest.
    let (mut rec, mut table) = new_table(3, PageSizes::SIZE_4K | PageSizes::SIZE_1G, false);
    table.map(&mut rec, G1, PBASE, G1, RW).unwrap();
    assert_eq!(leaf_sizes(&rec, &table), BTreeMap::from([(G1, 1)]));
    let unmapped = table.unmap(&mut rec, G1 + 3 * M2, K4).unwrap();
    assert_eq!(unmapped.bytes, K4);
    assert_eq!(
        leaf_sizes(&rec, &table),
        BTreeMap::from([(K4, 512 * 512 - 1)])
    );
    assert_eq!(table.table_pages(), 1 + 1 + 512);
    let mut model = Model::default();
    model.map(G1, PBASE, G1, RW);
    model.unmap(G1 + 3 * M2, G1 + 3 * M2 + K4);
    check(
        &table,
        &rec,
        &model,
        PageSizes::SIZE_4K | PageSizes::SIZE_1G,
        &[],
    );
}

#[test]
fn unmap_splits_a_gigabyte_and_keeps_the_rest() {
    let (mut rec, mut table) = new_table(4, ALL, false);
    table.map(&mut rec, G1, PBASE, G1, Access::READ).unwrap();
    assert_eq!(table.table_pages(), 2);
    let cut = G1 + 5 * M2 + 7 * K4;
    let unmapped = table.unmap(&mut rec, cut, K4).unwrap();
    assert_eq!(
        unmapped,
        Unmapped {
            bytes: K4,
            freed_tables: 0,
            // The whole superpage: the IOTLB may hold it as one entry.
            flush: Some(FlushRange { iova: G1, size: G1 }),
        }
    );
    assert_eq!(table.table_pages(), 4);
    assert_eq!(
        leaf_sizes(&rec, &table),
        BTreeMap::from([(K4, 511), (M2, 511)])
    );
    assert_eq!(
        spec::translate(&rec.mem, table.root(), 4, cut),
        Err(spec::Fault::NotPresent { level: 1 })
    );
    for (iova, level) in [(cut - K4, 1), (cut + K4, 1), (G1, 2), (2 * G1 - K4, 2)] {
        let walk = spec::translate(&rec.mem, table.root(), 4, iova).unwrap();
        assert_eq!(walk.paddr, PBASE + (iova - G1));
        assert_eq!((walk.read, walk.write, walk.level), (true, false, level));
    }
    rec.assert_clean();

    // Unmapping the rest frees the two tables the split made, and nothing else.
    let unmapped = table.unmap(&mut rec, G1, G1).unwrap();
    assert_eq!(unmapped.bytes, G1 - K4);
    assert_eq!(unmapped.freed_tables, 3);
    assert_eq!(table.reclaim(&mut rec), 3);
    assert_eq!(table.table_pages(), 1);
    assert_eq!(rec.mem.allocated, 1);
    rec.assert_clean();
}

#[test]
fn unmap_splits_superpages_at_both_ends() {
    let (mut rec, mut table) = new_table(3, ALL, false);
    table.map(&mut rec, 0, PBASE, 2 * M2, RW).unwrap();
    assert_eq!(leaf_sizes(&rec, &table), BTreeMap::from([(M2, 2)]));
    let unmapped = table.unmap(&mut rec, M2 - K4, 2 * K4).unwrap();
    assert_eq!(unmapped.bytes, 2 * K4);
    assert_eq!(
        unmapped.flush,
        Some(FlushRange {
            iova: 0,
            size: 2 * M2
        })
    );
    assert_eq!(leaf_sizes(&rec, &table), BTreeMap::from([(K4, 1022)]));
    let mut model = Model::default();
    model.map(0, PBASE, 2 * M2, RW);
    model.unmap(M2 - K4, M2 + K4);
    check(&table, &rec, &model, ALL, &[M2 - K4, M2]);
}

#[test]
fn unmap_in_the_middle_of_one_superpage() {
    let (mut rec, mut table) = new_table(3, ALL, true);
    table.map(&mut rec, 0, PBASE, G1, Access::WRITE).unwrap();
    let unmapped = table.unmap(&mut rec, M2 + K4, M2).unwrap();
    assert_eq!(unmapped.bytes, M2);
    // The root (a PDPT here), one PD, two PTs (the blocks the hole starts and ends in).
    assert_eq!(table.table_pages(), 1 + 1 + 2);
    let mut model = Model::default();
    model.map(0, PBASE, G1, Access::WRITE);
    model.unmap(M2 + K4, 2 * M2 + K4);
    check(&table, &rec, &model, ALL, &[]);
}

#[test]
fn a_split_without_memory_changes_nothing() {
    let (mut rec, mut table) = new_table(4, ALL, false);
    table.map(&mut rec, G1, PBASE, G1, RW).unwrap();
    let before = rec.snapshot();
    // Needs a PD and a PT.
    for spare in 0..2 {
        rec.mem.limit = Some(rec.mem.allocated + spare);
        assert_eq!(
            table.unmap(&mut rec, G1 + K4, K4),
            Err(IommuError::NoMemory)
        );
        assert_eq!(rec.snapshot(), before);
    }
    rec.mem.limit = None;
    assert_eq!(table.unmap(&mut rec, G1 + K4, K4).unwrap().bytes, K4);
}

#[test]
fn empty_tables_are_retired_then_reclaimed() {
    let (mut rec, mut table) = new_table(5, ONLY_4K, false);
    let iova = (1 << 57) - K4;
    table.map(&mut rec, iova, PBASE, K4, RW).unwrap();
    assert_eq!(table.table_pages(), 5);
    let unmapped = table.unmap(&mut rec, iova, K4).unwrap();
    assert_eq!(
        unmapped,
        Unmapped {
            bytes: K4,
            freed_tables: 4,
            flush: Some(FlushRange { iova, size: K4 }),
        }
    );
    // Unlinked, but held until the caller has invalidated: a new map gets fresh pages.
    assert_eq!(table.retired_tables(), 4);
    assert_eq!(table.table_pages(), 5);
    assert_eq!(rec.mem.allocated, 5);
    assert!(rec.mem.pages[&table.root()].iter().all(|&word| word == 0));
    table.map(&mut rec, 0, PBASE, K4, RW).unwrap();
    assert_eq!(rec.mem.allocated, 9);
    assert_eq!(table.reclaim(&mut rec), 4);
    assert_eq!(table.reclaim(&mut rec), 0);
    assert_eq!(rec.mem.allocated, 5);
    table.unmap(&mut rec, 0, K4).unwrap();
    table.reclaim(&mut rec);
    assert_eq!(rec.mem.allocated, 1);
    assert_eq!(table.table_pages(), 1);
    rec.assert_clean();
}

#[test]
fn tables_still_holding_mappings_stay() {
    let (mut rec, mut table) = new_table(4, ONLY_4K, false);
    table.map(&mut rec, 0, PBASE, 2 * K4, RW).unwrap();
    table.map(&mut rec, M2, PBASE, K4, RW).unwrap();
    let unmapped = table.unmap(&mut rec, K4, M2).unwrap();
    // Page 1 goes, its PT stays (page 0); the PT of [2M, 4M) empties and goes.
    assert_eq!(unmapped.bytes, 2 * K4);
    assert_eq!(unmapped.freed_tables, 1);
    assert_eq!(unmapped.flush, Some(FlushRange { iova: K4, size: M2 }));
    let mut model = Model::default();
    model.map(0, PBASE, 2 * K4, RW);
    model.map(M2, PBASE, K4, RW);
    model.unmap(K4, M2 + K4);
    table.reclaim(&mut rec);
    check(&table, &rec, &model, ONLY_4K, &[]);
}

#[test]
fn unmap_of_nothing_is_not_an_error() {
    let (mut rec, mut table) = new_table(4, ALL, false);
    let empty = Unmapped {
        bytes: 0,
        freed_tables: 0,
        flush: None,
    };
    assert_eq!(table.unmap(&mut rec, 0, G1).unwrap(), empty);
    table.map(&mut rec, 2 * G1, PBASE, K4, RW).unwrap();
    let before = rec.snapshot();
    assert_eq!(table.unmap(&mut rec, 0, 2 * G1).unwrap(), empty);
    assert_eq!(table.unmap(&mut rec, 2 * G1 + K4, 100 * G1).unwrap(), empty);
    assert_eq!(rec.snapshot(), before);
}

#[test]
fn unmap_across_several_mappings_and_holes() {
    let (mut rec, mut table) = new_table(3, ALL, false);
    table.map(&mut rec, 0, PBASE, 2 * K4, RW).unwrap();
    table
        .map(&mut rec, M2 / 2, PBASE + G1, K4, Access::READ)
        .unwrap();
    table
        .map(&mut rec, 2 * M2, PBASE + 2 * M2, M2, Access::WRITE)
        .unwrap();
    table.map(&mut rec, G1, PBASE, G1, RW).unwrap();
    let unmapped = table.unmap(&mut rec, K4, 3 * M2 - K4).unwrap();
    assert_eq!(unmapped.bytes, K4 + K4 + M2);
    assert_eq!(
        unmapped.flush,
        Some(FlushRange {
            iova: K4,
            size: 3 * M2 - K4
        })
    );
    assert_eq!(unmapped.freed_tables, 0);
    let mut model = Model::default();
    model.map(0, PBASE, 2 * K4, RW);
    model.map(M2 / 2, PBASE + G1, K4, Access::READ);
    model.map(2 * M2, PBASE + 2 * M2, M2, Access::WRITE);
    model.map(G1, PBASE, G1, RW);
    model.unmap(K4, 3 * M2);
    check(&table, &rec, &model, ALL, &[]);
}

#[test]
fn translate_gives_the_address_and_the_leaf_size() {
    let (mut rec, mut table) = new_table(3, ALL, true);
    table.map(&mut rec, G1, PBASE, G1, Access::READ).unwrap();
    table
        .map(&mut rec, 0, PBASE + 5 * K4, K4, Access::WRITE)
        .unwrap();
    assert_eq!(
        table.translate(&rec, G1 + 0x12_3456),
        Some(Translation {
            paddr: PBASE + 0x12_3456,
            access: Access::READ,
            page_size: G1,
        })
    );
    assert_eq!(
        table.translate(&rec, 0x7ff),
        Some(Translation {
            paddr: PBASE + 5 * K4 + 0x7ff,
            access: Access::WRITE,
            page_size: K4,
        })
    );
    assert_eq!(table.translate(&rec, K4), None);
    assert_eq!(table.translate(&rec, 1 << 39), None);
    assert_eq!(table.translate(&rec, u64::MAX), None);
}

#[test]
fn entries_carry_exactly_the_access_asked_for() {
    let (mut rec, mut table) = new_table(4, ALL, false);
    table.map(&mut rec, 0, PBASE, K4, Access::READ).unwrap();
    table.map(&mut rec, K4, PBASE, K4, Access::WRITE).unwrap();
    table.map(&mut rec, M2, PBASE, M2, RW).unwrap();
    let got: Vec<(u64, bool, bool)> = leaves(&rec, &table)
        .iter()
        .map(|leaf| (leaf.iova, leaf.read, leaf.write))
        .collect();
    assert_eq!(got, [(0, true, false), (K4, false, true), (M2, true, true)]);
}

#[test]
fn non_coherent_writes_are_flushed_and_coherent_ones_are_not() {
    for coherent in [false, true] {
        let (mut rec, mut table) = new_table(4, ALL, coherent);
        let flushed = rec.mem.flushed_lines;
        table.map(&mut rec, 0, PBASE, 3 * M2 + K4, RW).unwrap();
        table.unmap(&mut rec, M2 + K4, K4).unwrap();
        table.unmap(&mut rec, 0, 4 * M2).unwrap();
        rec.assert_clean();
        assert_eq!(rec.mem.flushed_lines > flushed, !coherent);
        // Each new table is fenced before it is linked, in both modes.
        assert!(rec.mem.barriers.get() >= 3);
    }
}

#[test]
fn destroy_frees_every_table_retired_ones_too() {
    let (mut rec, mut table) = new_table(4, ALL, false);
    table.map(&mut rec, 0, PBASE, K4, RW).unwrap();
    table.map(&mut rec, 4 * G1, PBASE, G1 + K4, RW).unwrap();
    table.unmap(&mut rec, 0, K4).unwrap();
    assert!(table.retired_tables() > 0);
    table.destroy(&mut rec);
    assert_eq!(rec.mem.allocated, 0);
    assert!(rec.mem.pages.is_empty());
}

#[test]
fn the_top_of_every_address_space() {
    for levels in [3, 4, 5] {
        let (mut rec, mut table) = new_table(levels, ALL, false);
        let top = 1u64 << table.address_width();
        table.map(&mut rec, top - G1, PBASE, G1, RW).unwrap();
        let mut model = Model::default();
        model.map(top - G1, PBASE, G1, RW);
        check(&table, &rec, &model, ALL, &[top - 1, top]);
        assert_eq!(table.unmap(&mut rec, top - M2, M2).unwrap().bytes, M2);
        model.unmap(top - M2, top);
        check(&table, &rec, &model, ALL, &[top - 1]);
        assert_eq!(table.unmap(&mut rec, 0, top).unwrap().bytes, G1 - M2);
        table.reclaim(&mut rec);
        assert_eq!(rec.mem.allocated, 1);
    }
}

// =======================================================================================
// Property tests: random map/unmap sequences against the model.
// =======================================================================================

/// Where an operation starts: in the low 4 GiB of the address space or in its top
/// 4 GiB, at a GiB, a 2 MiB block and a page chosen so that operations often collide.
#[derive(Clone, Debug)]
struct Place {
    high: bool,
    gib: u64,
    block: u64,
    page: u64,
}

#[derive(Clone, Debug)]
enum Len {
    Pages(u64),
    /// n × 2 MiB, plus or minus a page.
    Blocks(u64, i8),
    /// A GiB (8 MiB without superpages) plus or minus a page; when the flag is set,
    /// from the start of the GiB the place is in (so that 1 GiB leaves happen).
    Giant(i8, bool),
}

#[derive(Clone, Debug)]
enum Op {
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
    /// An unmap starting in something mapped: the `pick`-th extent of the model, `skip`
    /// pages in (clamped to the extent).
    UnmapMapped {
        pick: prop::sample::Index,
        skip: u64,
        len: Len,
        tight: Option<usize>,
    },
    /// The caller's invalidation completed: free retired tables.
    Reclaim,
}

fn place() -> impl Strategy<Value = Place> {
    (
        prop_oneof![2 => Just(false), 1 => Just(true)],
        prop_oneof![3 => 0u64..2, 1 => 2u64..4],
        prop_oneof![4 => 0u64..4, 1 => 508u64..512],
        prop_oneof![4 => Just(0u64), 3 => 1u64..4, 1 => 508u64..512, 2 => 0u64..512],
    )
        .prop_map(|(high, gib, block, page)| Place {
            high,
            gib,
            block,
            page,
        })
}

fn len() -> impl Strategy<Value = Len> {
    prop_oneof![
        4 => (1u64..8).prop_map(Len::Pages),
        4 => (1u64..4, -1i8..=1).prop_map(|(n, jitter)| Len::Blocks(n, jitter)),
        2 => (-1i8..=1, prop::bool::weighted(0.75))
            .prop_map(|(jitter, aligned)| Len::Giant(jitter, aligned)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let tight = prop_oneof![6 => Just(None), 1 => (0usize..4).prop_map(Some)];
    let skew = prop_oneof![3 => Just(None), 1 => (1u64..512).prop_map(Some)];
    let access = prop_oneof![6 => Just(3u8), 1 => Just(1u8), 1 => Just(2u8)];
    let map = (place(), len(), 0u64..8, skew, access, tight.clone()).prop_map(
        |(at, len, frame, skew, access, tight)| Op::Map {
            at,
            len,
            frame,
            skew,
            access,
            tight,
        },
    );
    let unmap =
        (place(), len(), tight.clone()).prop_map(|(at, len, tight)| Op::Unmap { at, len, tight });
    let skip = prop_oneof![2 => Just(0u64), 1 => 1u64..4, 1 => 0u64..1024];
    let unmap_mapped =
        (any::<prop::sample::Index>(), skip, len(), tight).prop_map(|(pick, skip, len, tight)| {
            Op::UnmapMapped {
                pick,
                skip,
                len,
                tight,
            }
        });
    prop_oneof![
        10 => map,
        3 => unmap,
        4 => unmap_mapped,
        1 => (0u8..10, any::<bool>()).prop_map(|(kind, unmap)| Op::Invalid { kind, unmap }),
        1 => Just(Op::Reclaim),
    ]
}

struct Run {
    rec: Recorder,
    table: SecondLevelTable,
    model: Model,
    sizes: PageSizes,
    width: u8,
}

impl Run {
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
        attempt: impl FnOnce(&mut SecondLevelTable, &mut Recorder) -> Result<T, IommuError>,
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

    fn step(&mut self, op: &Op) -> Vec<u64> {
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
                let (&start, extent) = self
                    .model
                    .extents
                    .iter()
                    .nth(pick.index(self.model.extents.len()))
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
            .map(|((first, _), (_, last))| (first.max(&iova).to_owned(), last.end.min(end)));
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

fn run(levels: u8, sizes: PageSizes, coherent: bool, ops: &[Op]) {
    let (rec, table) = new_table(levels, sizes, coherent);
    let width = table.address_width();
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

macro_rules! random_sequences {
    ($($name:ident: $levels:expr, $sizes:expr;)*) => {
        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 256,
                // Failures print the shrunk case; no regression file for this test crate.
                failure_persistence: None,
                ..ProptestConfig::default()
            })]
            $(
                #[test]
                fn $name(coherent in any::<bool>(), ops in prop::collection::vec(op(), 1..40)) {
                    run($levels, $sizes, coherent, &ops);
                }
            )*
        }
    };
}

random_sequences! {
    random_3_levels_4k: 3, ONLY_4K;
    random_3_levels_2m: 3, NO_1G;
    random_3_levels_1g: 3, ALL;
    random_4_levels_4k: 4, ONLY_4K;
    random_4_levels_2m: 4, NO_1G;
    random_4_levels_1g: 4, ALL;
    random_5_levels_4k: 5, ONLY_4K;
    random_5_levels_2m: 5, NO_1G;
    random_5_levels_1g: 5, ALL;
}
