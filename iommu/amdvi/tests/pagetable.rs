//! The page-table engine (`sluice_iommu::pagetable`) through the AMD-Vi v1 host format
//! (`sluice_amdvi::pagetable::IoPageTableV1`), checked from outside.
//!
//! Three independent pieces of test code say what "right" means (the vendor-neutral two
//! live in `sluice_iommu::pagetable::testing`, shared with the VT-d tests):
//! - `spec`: a walker written from the AMD IOMMU specification ("I/O Page Tables for
//!   Host Translations": PR, NextLevel, IR/IW ANDed down the walk, default page sizes)
//!   that reads the tables in memory the way the hardware does. It never calls the
//!   engine's own walk or the format's decoding.
//! - `Model`: what should be mapped, as extents, with the leaf size each page should
//!   sit in.
//! - `Recorder`: a `DmaMemory` checking the flush and barrier discipline a unit walking
//!   the tables concurrently needs.
//!
//! Unit tests cover the encodings at every level, each depth from 1 to 6, splitting,
//! rollback and freeing; property tests run random map/unmap sequences on 3- and 4-level
//! tables with and without large pages.

use std::collections::BTreeMap;

use proptest::prelude::*;
use sluice_amdvi::pagetable::{AmdV1, FlushRange, IoPageTableV1, PageSizes, Unmapped};
use sluice_iommu::hw::DmaMemory;
use sluice_iommu::hw::fake::FakeDmaMemory;
use sluice_iommu::pagetable::testing::{
    self, ALL, G1, K4, LAST_PAGE, M2, Model, NO_1G, ONLY_4K, Op, PBASE, RW, RawOp, Recorder, check,
    config, leaf_sizes, leaves,
};
use sluice_iommu::{Access, IommuError};

// =======================================================================================
// The reference walker, from the specification.
// =======================================================================================

mod spec {
    use std::collections::BTreeMap;

    use sluice_amdvi::pagetable::AmdV1;
    use sluice_iommu::hw::DmaMemory;
    use sluice_iommu::hw::fake::FakeDmaMemory;
    use sluice_iommu::pagetable::testing::Reference;
    pub use sluice_iommu::pagetable::testing::{Dump, Fault, Leaf, Walk};

    /// PR (bit 0): the entry is present.
    pub const PR: u64 = 1 << 0;
    /// NextLevel (bits 11:9): in a PDE the level of the table it points to; 0 makes the
    /// entry a PTE of its level's default page size; 7 a PTE of a size spelled in the
    /// address bits.
    pub const NEXT_LEVEL: u64 = 0b111 << 9;
    /// Address of the next table or of the page: bits 51:12.
    pub const ADDR: u64 = ((1 << 52) - 1) & !0xfff;
    /// U (bit 59), FC (bit 60): attributes this driver leaves clear.
    pub const U: u64 = 1 << 59;
    pub const FC: u64 = 1 << 60;
    /// IR (bit 61), IW (bit 62): reads, writes allowed; ANDed over the walk.
    pub const IR: u64 = 1 << 61;
    pub const IW: u64 = 1 << 62;

    pub fn next_level(entry: u64) -> u8 {
        ((entry & NEXT_LEVEL) >> 9) as u8
    }

    /// The IOVA bits a level's index starts at (level 6 uses bits 63:57).
    pub fn shift(level: u8) -> u32 {
        12 + 9 * (u32::from(level) - 1)
    }

    /// The entry a walk reads at `level` in `table` for `iova`.
    pub fn entry_at(mem: &FakeDmaMemory, table: u64, level: u8, iova: u64) -> u64 {
        let index = (iova >> shift(level)) & 0x1ff;
        mem.read_u64(table + index * 8)
    }

    /// Walk from `root` for `iova` with the DTE's Mode = `levels`, as the IOMMU does.
    pub fn translate(mem: &FakeDmaMemory, root: u64, levels: u8, iova: u64) -> Result<Walk, Fault> {
        // The address bits above what the top level covers must be zero.
        if levels < 6 && iova >> shift(levels + 1) != 0 {
            return Err(Fault::BeyondWidth);
        }
        let (mut table, mut level) = (root, levels);
        let (mut read, mut write) = (true, true);
        loop {
            let entry = entry_at(mem, table, level, iova);
            if entry & PR == 0 {
                return Err(Fault::NotPresent { level });
            }
            read &= entry & IR != 0;
            write &= entry & IW != 0;
            match next_level(entry) {
                0 => {
                    // A PTE of the default size of its level; the top level of a
                    // 6-level table has none.
                    let page = 1u64 << shift(level);
                    let base = entry & ADDR;
                    if level == 6 || base & (page - 1) != 0 {
                        return Err(Fault::Reserved { level });
                    }
                    return Ok(Walk {
                        paddr: base | (iova & (page - 1)),
                        read,
                        write,
                        level,
                    });
                }
                // NextLevel 7 (sizes in the address) and links that skip levels are
                // valid encodings this driver never writes; a link must point down.
                next if next == 7 || next != level - 1 => {
                    return Err(Fault::Reserved { level });
                }
                next => {
                    table = entry & ADDR;
                    level = next;
                }
            }
        }
    }

    /// Walk the whole tree. Also checks the rules the engine promises beyond what the
    /// hardware requires: no bits but PR, NextLevel, the address, IR and IW; not-present
    /// entries all zero; links allow IR and IW and point one level down; pages only at
    /// levels 1 to 3, with NextLevel 0; every link points at an allocated page.
    pub fn dump(mem: &FakeDmaMemory, root: u64, levels: u8) -> Dump {
        let mut dump = Dump::default();
        walk(&mem.pages, root, levels, 0, &mut dump);
        dump
    }

    fn walk(pages: &BTreeMap<u64, [u64; 512]>, table: u64, level: u8, base: u64, dump: &mut Dump) {
        let words = pages
            .get(&table)
            .unwrap_or_else(|| panic!("table {table:#x} (level {level}) is not allocated memory"));
        // A 6-level table's top level indexes IOVA bits 63:57 only.
        let used = if level == 6 { 128 } else { 512 };
        assert!(words[used..].iter().all(|&word| word == 0));
        let mut present = 0;
        for (index, &entry) in words[..used].iter().enumerate() {
            if entry & PR == 0 {
                assert_eq!(entry, 0, "not-present entry with other bits set");
                continue;
            }
            present += 1;
            assert_eq!(
                entry & !(PR | NEXT_LEVEL | ADDR | IR | IW),
                0,
                "stray bits in {entry:#x}"
            );
            let iova = base + ((index as u64) << shift(level));
            if level == 1 || next_level(entry) == 0 {
                assert!(level <= 3, "a page at level {level}");
                assert_eq!(next_level(entry), 0, "a level-1 PTE with NextLevel set");
                assert_ne!(entry & (IR | IW), 0, "a page nobody may access");
                assert_eq!(
                    entry & ADDR & ((1 << shift(level)) - 1),
                    0,
                    "unaligned page"
                );
                dump.leaves.push(Leaf {
                    iova,
                    size: 1 << shift(level),
                    paddr: entry & ADDR,
                    read: entry & IR != 0,
                    write: entry & IW != 0,
                });
            } else {
                assert_eq!(
                    next_level(entry),
                    level - 1,
                    "a link must point one level down"
                );
                assert_eq!(
                    entry & (IR | IW),
                    IR | IW,
                    "a table link must allow IR and IW"
                );
                walk(pages, entry & ADDR, level - 1, iova, dump);
            }
        }
        dump.tables.push((table, level, present));
    }

    /// The walker as the shared checks see it.
    pub struct Amd;

    impl Reference for Amd {
        type Format = AmdV1;

        fn translate(mem: &FakeDmaMemory, root: u64, levels: u8, iova: u64) -> Result<Walk, Fault> {
            translate(mem, root, levels, iova)
        }

        fn dump(mem: &FakeDmaMemory, root: u64, levels: u8) -> Dump {
            dump(mem, root, levels)
        }

        /// Present with NextLevel 1 to 6: a PDE.
        fn link_target(raw: u64) -> Option<u64> {
            (raw & PR != 0 && (1..=6).contains(&next_level(raw))).then_some(raw & ADDR)
        }
    }
}

fn new_table(levels: u8, sizes: PageSizes, coherent: bool) -> (Recorder<spec::Amd>, IoPageTableV1) {
    testing::new_table(levels, sizes, coherent)
}

/// The raw entries a walk for `iova` reads, from the root down, as far as present links go.
fn entries_on_walk(rec: &Recorder<spec::Amd>, table: &IoPageTableV1, iova: u64) -> Vec<u64> {
    let mut entries = Vec::new();
    let (mut at, mut level) = (table.root(), table.levels());
    loop {
        let entry = spec::entry_at(&rec.mem, at, level, iova);
        entries.push(entry);
        let next = spec::next_level(entry);
        if entry & spec::PR == 0 || next == 0 || level == 1 {
            return entries;
        }
        (at, level) = (entry & spec::ADDR, next);
    }
}

// =======================================================================================
// Unit tests.
// =======================================================================================

#[test]
fn every_depth_from_1_to_6_levels() {
    for (levels, width) in [(1, 21), (2, 30), (3, 39), (4, 48), (5, 57), (6, 64)] {
        let (mut rec, mut table) = new_table(levels, AmdV1::page_sizes(levels), false);
        assert_eq!((table.levels(), table.address_width()), (levels, width));
        assert_eq!(AmdV1::levels_for_width(width), Some(levels));
        rec.assert_clean();
        // The highest page mappable (in a 64-bit space, `iova + size` must not wrap, so
        // the last page is out of reach).
        let last = if width == 64 {
            LAST_PAGE - K4
        } else {
            (1 << width) - K4
        };
        table.map(&mut rec, last, PBASE, K4, RW).unwrap();
        table
            .map(&mut rec, 0, PBASE + M2, K4, Access::READ)
            .unwrap();
        let mut model = Model::default();
        model.map(last, PBASE, K4, RW);
        model.map(0, PBASE + M2, K4, Access::READ);
        check(
            &table,
            &rec,
            &model,
            AmdV1::page_sizes(levels),
            &[last + K4, K4],
        );
        // One table per level on each side (they share the root).
        assert_eq!(table.table_pages(), 1 + 2 * (usize::from(levels) - 1));
        let unmapped = table.unmap(&mut rec, last, K4).unwrap();
        assert_eq!(unmapped.freed_tables, usize::from(levels) - 1);
        table.unmap(&mut rec, 0, K4).unwrap();
        table.reclaim(&mut rec);
        assert_eq!(rec.mem.allocated, 1);
        rec.assert_clean();
    }
}

#[test]
fn depths_the_format_lacks_are_refused() {
    for levels in [0, 7] {
        let mut mem = FakeDmaMemory::new();
        let result = IoPageTableV1::new(&mut mem, config(levels, ALL, true));
        assert_eq!(result.unwrap_err(), IommuError::OutOfRange);
        assert_eq!(mem.allocated, 0);
    }
}

#[test]
fn levels_and_config_from_the_address_width() {
    let widths = [
        (0, None),
        (12, Some(1)),
        (21, Some(1)),
        (22, Some(2)),
        (39, Some(3)),
    ];
    for (width, levels) in widths {
        assert_eq!(AmdV1::levels_for_width(width), levels, "{width} bits");
    }
    let widths = [
        (40, Some(4)),
        (48, Some(4)),
        (49, Some(5)),
        (58, Some(6)),
        (65, None),
    ];
    for (width, levels) in widths {
        assert_eq!(AmdV1::levels_for_width(width), levels, "{width} bits");
    }
    assert_eq!(AmdV1::page_sizes(1), ONLY_4K);
    assert_eq!(AmdV1::page_sizes(2), NO_1G);
    assert_eq!(AmdV1::page_sizes(3), ALL);
    let config = AmdV1::config(48, 4, true).unwrap();
    assert_eq!(
        (config.levels, config.superpages, config.coherent),
        (4, ALL, true)
    );
    // HATS = 0 means 4 levels at most: a 57-bit domain does not fit.
    assert_eq!(AmdV1::config(57, 4, true), None);
    assert_eq!(AmdV1::config(57, 5, false).unwrap().levels, 5);
}

#[test]
fn leaf_and_table_encodings_at_every_level() {
    let (mut rec, mut table) = new_table(4, ALL, false);
    table
        .map(&mut rec, G1 + 5 * K4, PBASE + 7 * K4, K4, RW)
        .unwrap();
    table
        .map(&mut rec, 2 * G1 + M2, PBASE + M2, M2, Access::READ)
        .unwrap();
    table
        .map(&mut rec, 5 * G1, PBASE + G1, G1, Access::WRITE)
        .unwrap();
    let (pr, ir, iw) = (spec::PR, spec::IR, spec::IW);
    let link = |walk: &[u64], depth: usize| walk[depth] & !spec::ADDR;

    // 4 KiB: PML4E → PDPE → PDE → PTE, NextLevel 3, 2, 1, then 0.
    let walk = entries_on_walk(&rec, &table, G1 + 5 * K4);
    assert_eq!(walk.len(), 4);
    for (depth, child_level) in [(0, 3u64), (1, 2), (2, 1)] {
        assert_eq!(link(&walk, depth), pr | (child_level << 9) | ir | iw);
    }
    assert_eq!(walk[3], (PBASE + 7 * K4) | pr | ir | iw);

    // 2 MiB: a PTE at level 2 (NextLevel 0), read only.
    let walk = entries_on_walk(&rec, &table, 2 * G1 + M2 + 0x1234);
    assert_eq!(walk.len(), 3);
    assert_eq!(walk[2], (PBASE + M2) | pr | ir);

    // 1 GiB: a PTE at level 3, write only.
    let walk = entries_on_walk(&rec, &table, 5 * G1 + 0x12_3456);
    assert_eq!(walk.len(), 2);
    assert_eq!(walk[1], (PBASE + G1) | pr | iw);
    assert_eq!(walk[1] & (spec::U | spec::FC), 0);

    for (iova, paddr, level, read, write) in [
        (G1 + 5 * K4 + 0x10, PBASE + 7 * K4 + 0x10, 1, true, true),
        (2 * G1 + M2 + 0x1234, PBASE + M2 + 0x1234, 2, true, false),
        (5 * G1 + 0x12_3456, PBASE + G1 + 0x12_3456, 3, false, true),
    ] {
        let walk = spec::translate(&rec.mem, table.root(), 4, iova).unwrap();
        assert_eq!(
            (walk.paddr, walk.level, walk.read, walk.write),
            (paddr, level, read, write)
        );
        let engine = table.translate(&rec, iova).unwrap();
        assert_eq!(
            (engine.paddr, engine.page_size),
            (paddr, testing::span(level))
        );
    }
    rec.assert_clean();
}

#[test]
fn permissions_are_anded_down_the_walk() {
    // The reference walker ANDs IR/IW over every entry; a link without IW forbids writes
    // to everything below it. The engine's links allow both, so the leaves decide alone.
    let (mut rec, mut table) = new_table(3, ONLY_4K, true);
    table.map(&mut rec, 0, PBASE, K4, RW).unwrap();
    let root_entry = table.root();
    let link = rec.mem.read_u64(root_entry);
    rec.mem.write_u64(root_entry, link & !spec::IW);
    let walk = spec::translate(&rec.mem, table.root(), 3, 0).unwrap();
    assert_eq!((walk.read, walk.write), (true, false));
    rec.mem.write_u64(root_entry, link);
    let walk = spec::translate(&rec.mem, table.root(), 3, 0).unwrap();
    assert_eq!((walk.read, walk.write), (true, true));
}

#[test]
fn the_largest_fitting_page_is_used() {
    let (mut rec, mut table) = new_table(4, ALL, false);
    // 4 KiB, then a 2 MiB, a 1 GiB, a 2 MiB and a 4 KiB page.
    let iova = G1 - M2 - K4;
    let size = K4 + M2 + G1 + M2 + K4;
    let paddr = PBASE + 7 * G1 + (iova % G1);
    table.map(&mut rec, iova, paddr, size, RW).unwrap();
    let got: Vec<(u64, u64)> = leaves(&rec, &table)
        .iter()
        .map(|leaf| (leaf.iova, leaf.size))
        .collect();
    assert_eq!(
        got,
        [
            (iova, K4),
            (G1 - M2, M2),
            (G1, G1),
            (2 * G1, M2),
            (2 * G1 + M2, K4)
        ]
    );
    let mut model = Model::default();
    model.map(iova, paddr, size, RW);
    check(&table, &rec, &model, ALL, &[]);

    // Without large pages, the same range takes 4 KiB pages only.
    let (mut rec, mut table) = new_table(4, ONLY_4K, false);
    table.map(&mut rec, 0, PBASE, 2 * M2, RW).unwrap();
    assert_eq!(leaf_sizes(&rec, &table), BTreeMap::from([(K4, 1024)]));
}

#[test]
fn unmap_splits_a_2m_page() {
    let (mut rec, mut table) = new_table(3, ALL, false);
    table
        .map(&mut rec, 3 * M2, PBASE + M2, M2, Access::READ)
        .unwrap();
    assert_eq!(leaf_sizes(&rec, &table), BTreeMap::from([(M2, 1)]));
    assert_eq!(table.table_pages(), 2);
    let cut = 3 * M2 + 100 * K4;
    let unmapped = table.unmap(&mut rec, cut, 2 * K4).unwrap();
    assert_eq!(
        unmapped,
        Unmapped {
            bytes: 2 * K4,
            freed_tables: 0,
            // The whole page: the IOTLB may hold it as one entry.
            flush: Some(FlushRange {
                iova: 3 * M2,
                size: M2
            }),
        }
    );
    // The PTE became a PDE (NextLevel 1) to a table of the other 510 pages.
    assert_eq!(leaf_sizes(&rec, &table), BTreeMap::from([(K4, 510)]));
    assert_eq!(table.table_pages(), 3);
    let walk = entries_on_walk(&rec, &table, 3 * M2);
    assert_eq!(spec::next_level(walk[1]), 1);
    assert_eq!(walk[1] & (spec::IR | spec::IW), spec::IR | spec::IW);
    assert_eq!(walk[2], (PBASE + M2) | spec::PR | spec::IR);
    assert_eq!(
        spec::translate(&rec.mem, table.root(), 3, cut + K4),
        Err(spec::Fault::NotPresent { level: 1 })
    );
    let mut model = Model::default();
    model.map(3 * M2, PBASE + M2, M2, Access::READ);
    model.unmap(cut, cut + 2 * K4);
    check(&table, &rec, &model, ALL, &[cut, cut + 2 * K4]);

    // Unmapping the rest retires the table the split made.
    let unmapped = table.unmap(&mut rec, 3 * M2, M2).unwrap();
    assert_eq!((unmapped.bytes, unmapped.freed_tables), (M2 - 2 * K4, 2));
    assert_eq!(table.reclaim(&mut rec), 2);
    assert_eq!(rec.mem.allocated, 1);
    rec.assert_clean();
}

#[test]
fn unmap_splits_a_1g_page_into_2m_and_4k_pages() {
    let (mut rec, mut table) = new_table(4, ALL, true);
    table.map(&mut rec, G1, PBASE, G1, RW).unwrap();
    let cut = G1 + 5 * M2 + 7 * K4;
    let unmapped = table.unmap(&mut rec, cut, K4).unwrap();
    assert_eq!(unmapped.flush, Some(FlushRange { iova: G1, size: G1 }));
    assert_eq!(
        leaf_sizes(&rec, &table),
        BTreeMap::from([(K4, 511), (M2, 511)])
    );
    let mut model = Model::default();
    model.map(G1, PBASE, G1, RW);
    model.unmap(cut, cut + K4);
    check(&table, &rec, &model, ALL, &[cut]);
}

#[test]
fn overlap_changes_nothing() {
    let (mut rec, mut table) = new_table(3, ALL, false);
    table.map(&mut rec, M2, PBASE, M2, RW).unwrap();
    table.map(&mut rec, G1 + 3 * K4, PBASE, K4, RW).unwrap();
    let before = rec.snapshot();
    assert_eq!(
        table.map(&mut rec, G1, PBASE, 8 * K4, RW),
        Err(IommuError::Overlap { iova: G1 + 3 * K4 })
    );
    assert_eq!(
        table.map(&mut rec, M2 - K4, PBASE, 2 * K4, RW),
        Err(IommuError::Overlap { iova: M2 })
    );
    // A map that would first need tables for most of [0, 1 GiB) allocates none.
    assert_eq!(
        table.map(&mut rec, 0, PBASE, 2 * G1, RW),
        Err(IommuError::Overlap { iova: M2 })
    );
    assert_eq!(rec.snapshot(), before);
}

#[test]
fn no_memory_leaves_nothing_behind() {
    let (mut rec, mut table) = new_table(4, ALL, false);
    let iova = (1 << 48) - 4 * K4;
    let before = rec.snapshot();
    // The map needs 3 tables (one per level below the root).
    for spare in 0..3 {
        rec.mem.limit = Some(rec.mem.allocated + spare);
        assert_eq!(
            table.map(&mut rec, iova, PBASE, K4, RW),
            Err(IommuError::NoMemory)
        );
        assert_eq!(rec.snapshot(), before);
        assert_eq!(table.table_pages(), 1);
    }
    rec.mem.limit = None;
    table.map(&mut rec, iova, PBASE, K4, RW).unwrap();

    // A split short of memory: the 2 MiB page stays whole.
    table.map(&mut rec, M2, PBASE, M2, RW).unwrap();
    let before = rec.snapshot();
    rec.mem.limit = Some(rec.mem.allocated);
    assert_eq!(
        table.unmap(&mut rec, M2 + K4, K4),
        Err(IommuError::NoMemory)
    );
    assert_eq!(rec.snapshot(), before);
    rec.mem.limit = None;
    assert_eq!(table.unmap(&mut rec, M2 + K4, K4).unwrap().bytes, K4);
    rec.assert_clean();
}

#[test]
fn emptied_tables_are_retired_then_reclaimed() {
    let (mut rec, mut table) = new_table(4, ONLY_4K, false);
    let iova = (1 << 48) - K4;
    table.map(&mut rec, iova, PBASE, K4, RW).unwrap();
    assert_eq!(table.table_pages(), 4);
    let unmapped = table.unmap(&mut rec, iova, K4).unwrap();
    assert_eq!(
        unmapped,
        Unmapped {
            bytes: K4,
            freed_tables: 3,
            flush: Some(FlushRange { iova, size: K4 }),
        }
    );
    // Unlinked at once, freed only after the caller's invalidation.
    assert!(rec.mem.pages[&table.root()].iter().all(|&word| word == 0));
    assert_eq!((table.retired_tables(), rec.mem.allocated), (3, 4));
    table.map(&mut rec, 0, PBASE, K4, RW).unwrap();
    assert_eq!(rec.mem.allocated, 7);
    assert_eq!(table.reclaim(&mut rec), 3);
    assert_eq!(rec.mem.allocated, 4);
    table.destroy(&mut rec);
    assert_eq!(rec.mem.allocated, 0);
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
                cases: 128,
                // Failures print the shrunk case; no regression file for this test crate.
                failure_persistence: None,
                ..ProptestConfig::default()
            })]
            $(
                #[test]
                fn $name(coherent in any::<bool>(), ops in ops()) {
                    testing::run::<spec::Amd>($levels, $sizes, coherent, &ops);
                }
            )*
        }
    };
}

random_sequences! {
    random_3_levels_4k: 3, ONLY_4K;
    random_3_levels_large: 3, ALL;
    random_4_levels_4k: 4, ONLY_4K;
    random_4_levels_large: 4, ALL;
}
