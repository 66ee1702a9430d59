//! The page-table engine (`sluice_iommu::pagetable`) through the VT-d second-level
//! format (`sluice_vtd::pagetable::SecondLevelTable`), checked from outside.
//!
//! Three independent pieces of test code say what "right" means (the vendor-neutral two
//! live in `sluice_iommu::pagetable::testing`, shared with the AMD-Vi tests):
//! - `spec`: a walker written from the VT-d specification (§9.8 second-level paging
//!   entries, §3.7 second-level translation) that reads the tables in memory the way the
//!   hardware does. It never calls the engine's own walk or the format's decoding.
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

use std::collections::BTreeMap;

use proptest::prelude::*;
use sluice_iommu::pagetable::testing::{
    self, ALL, G1, K4, LAST_PAGE, M2, Model, NO_1G, ONLY_4K, Op, PBASE, RW, RawOp, Recorder, check,
    config, leaf_sizes, leaves,
};
use sluice_iommu::{Access, IommuError};
use sluice_vtd::hw::fake::FakeDmaMemory;
use sluice_vtd::pagetable::{FlushRange, PageSizes, SecondLevelTable, Translation, Unmapped};
use sluice_vtd::regs::LargePages;

// =======================================================================================
// The reference walker, from the specification.
// =======================================================================================

mod spec {
    use std::collections::BTreeMap;

    use sluice_iommu::pagetable::testing::Reference;
    pub use sluice_iommu::pagetable::testing::{Dump, Fault, Leaf, Walk};
    use sluice_vtd::hw::DmaMemory;
    use sluice_vtd::hw::fake::FakeDmaMemory;
    use sluice_vtd::pagetable::VtdSecondLevel;

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
                // PS in a PML4E/PML5E is reserved.
                return Err(Fault::Reserved { level });
            }
            if leaf {
                let page = 1u64 << shift(level);
                let base = entry & ADDR;
                if base & (page - 1) != 0 {
                    // An unaligned superpage address sets reserved bits.
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

    /// The walker as the shared checks see it.
    pub struct Vtd;

    impl Reference for Vtd {
        type Format = VtdSecondLevel;

        fn translate(mem: &FakeDmaMemory, root: u64, levels: u8, iova: u64) -> Result<Walk, Fault> {
            translate(mem, root, levels, iova)
        }

        fn dump(mem: &FakeDmaMemory, root: u64, levels: u8) -> Dump {
            dump(mem, root, levels)
        }

        /// R or W without PS: a table link, or a 4 KiB leaf (the bits don't tell).
        fn link_target(raw: u64) -> Option<u64> {
            (raw & (R | W) != 0 && raw & PS == 0).then_some(raw & ADDR)
        }
    }
}

fn new_table(
    levels: u8,
    sizes: PageSizes,
    coherent: bool,
) -> (Recorder<spec::Vtd>, SecondLevelTable) {
    testing::new_table(levels, sizes, coherent)
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
    assert_eq!(PageSizes::from(LargePages::empty()), ONLY_4K);
    assert_eq!(PageSizes::from(LargePages::SIZE_2M), NO_1G);
    assert_eq!(PageSizes::from(LargePages::all()), ALL);
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

/// Random operations (see `testing::Op::draw` for what they are and how often).
fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(any::<RawOp>().prop_map(|raw| Op::draw(&raw)), 1..40)
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
                fn $name(coherent in any::<bool>(), ops in ops()) {
                    testing::run::<spec::Vtd>($levels, $sizes, coherent, &ops);
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
