//! Nested page tables: the guest-physical → host-physical map the CPU walks (after the
//! guest's own page tables) for every guest memory access when NP_ENABLE is set.
//!
//! They are ordinary x86-64 long-mode page tables, so the IOMMU crate's generic engine
//! ([`sluice_iommu::pagetable::IoPageTable`]: all-or-nothing maps, 2 MiB / 1 GiB leaves
//! where aligned, splitting on unmap) builds them; [`NptFormat`] is the third entry format
//! next to VT-d's and AMD-Vi's.
//!
//! # The entry
//!
//! | bits  | field | here                                                           |
//! |-------|-------|----------------------------------------------------------------|
//! | 0     | P     | present                                                        |
//! | 1     | R/W   | writes allowed (tables: always)                                |
//! | 2     | U/S   | **always set**: nested walks are user accesses (APM 15.25.5); |
//! |       |       | without it the guest's first page-table walk faults            |
//! | 7     | PS    | levels 2 and 3: a 2 MiB / 1 GiB page                           |
//! | 51:12 | addr  | next table or page                                             |
//! | 63    | NX    | 0 (guest code may run from any of its RAM)                     |
//!
//! PWT/PCD/PAT stay 0: write-back, combined with the guest's own PAT choice.
//! The format cannot express write-only: every present entry is readable, so a mapping
//! asked for with `WRITE` alone decodes as `READ | WRITE` (Sluice only maps `READ` or
//! `READ | WRITE`).

use core::ops::RangeInclusive;

use sluice_iommu::Access;
use sluice_iommu::pagetable::{Decoded, EntryFormat, IoPageTable, PageSizes, PageTableConfig};

use crate::virt::NestedFormat;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
/// Page-level write-through and cache disable: with the guest's PAT this makes the
/// combined memory type UC, as device registers need.
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const PAGE_SIZE: u64 = 1 << 7;
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// x86-64 long-mode entries as nested paging wants them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NptFormat {}

/// A guest's nested page tables (4 levels: 48-bit guest-physical addresses).
pub type NestedPageTable = IoPageTable<NptFormat>;

/// NPT depth: 4 levels, like the host's paging (N_CR3 is walked in the host's mode).
pub const NPT_LEVELS: u8 = 4;

impl NestedFormat for NptFormat {
    /// The configuration Sluice uses: 4 levels, 2 MiB and 1 GiB leaves, coherent (the
    /// CPU walks its own caches, nothing to flush).
    fn config() -> PageTableConfig {
        PageTableConfig {
            levels: NPT_LEVELS,
            superpages: PageSizes::all(),
            coherent: true,
        }
    }
}

impl EntryFormat for NptFormat {
    const NAME: &'static str = "x86-64 nested (NPT)";

    #[inline]
    fn table_entry(child_table: u64, _child_level: u8) -> u64 {
        (child_table & ADDRESS) | PRESENT | WRITABLE | USER
    }

    #[inline]
    fn leaf_entry(paddr: u64, level: u8, access: Access) -> u64 {
        let mut raw = (paddr & ADDRESS) | PRESENT | USER;
        if access.contains(Access::WRITE) {
            raw |= WRITABLE;
        }
        if access.contains(Access::UNCACHED) {
            raw |= WRITE_THROUGH | CACHE_DISABLE;
        }
        if level > 1 {
            raw |= PAGE_SIZE;
        }
        raw
    }

    #[inline]
    fn decode(raw: u64, level: u8) -> Decoded {
        if raw & PRESENT == 0 {
            return Decoded::NotPresent;
        }
        let addr = raw & ADDRESS;
        if level == 1 || (raw & PAGE_SIZE != 0 && level <= 3) {
            let mut access = Access::READ;
            if raw & WRITABLE != 0 {
                access |= Access::WRITE;
            }
            Decoded::Leaf { addr, access }
        } else {
            Decoded::Table { addr }
        }
    }

    fn supported_levels() -> RangeInclusive<u8> {
        4..=4
    }
}

#[cfg(test)]
mod tests {
    use sluice_iommu::hw::DmaMemory;
    use sluice_iommu::hw::fake::FakeDmaMemory;

    use super::*;

    /// A walk written from the AMD64 manual (long-mode 4-level paging), independent of
    /// the engine: the host-physical address of `gpa` and whether it is writable, with
    /// every level required to be P and U/S (nested walks are user accesses).
    fn reference_walk(mem: &FakeDmaMemory, root: u64, gpa: u64) -> Option<(u64, bool)> {
        let mut table = root;
        let mut writable = true;
        for level in (1..=4u32).rev() {
            let shift = 12 + 9 * (level - 1);
            let index = (gpa >> shift) & 0x1ff;
            let e = mem.read_u64(table + index * 8);
            if e & 1 == 0 || e & 4 == 0 {
                return None;
            }
            writable &= e & 2 != 0;
            let large = level > 1 && e & 0x80 != 0;
            if level == 4 {
                assert_eq!(e & 0x80, 0, "PS is reserved in a PML4E");
            }
            if large || level == 1 {
                let size = 1u64 << shift;
                let base = e & ADDRESS & !(size - 1);
                return Some((base + (gpa & (size - 1)), writable));
            }
            table = e & ADDRESS;
        }
        unreachable!()
    }

    #[test]
    fn uncached_leaves_set_pcd_and_pwt() {
        let e = NptFormat::leaf_entry(
            0xfe00_0000,
            1,
            Access::READ | Access::WRITE | Access::UNCACHED,
        );
        assert_eq!(
            e & (WRITE_THROUGH | CACHE_DISABLE),
            WRITE_THROUGH | CACHE_DISABLE
        );
        let e = NptFormat::leaf_entry(0x20_0000, 2, Access::READ | Access::WRITE);
        assert_eq!(e & (WRITE_THROUGH | CACHE_DISABLE), 0);
        assert!(matches!(
            NptFormat::decode(e, 2),
            Decoded::Leaf {
                addr: 0x20_0000,
                ..
            }
        ));
    }

    #[test]
    fn entries_match_platform_facts() {
        assert_eq!(NptFormat::table_entry(0x5000, 3), 0x5007);
        assert_eq!(
            NptFormat::leaf_entry(0x20_0000, 2, Access::READ | Access::WRITE),
            0x20_0087
        );
        assert_eq!(
            NptFormat::leaf_entry(0x3000, 1, Access::READ | Access::WRITE),
            0x3007
        );
        assert_eq!(NptFormat::leaf_entry(0x3000, 1, Access::READ), 0x3005);
        assert_eq!(NptFormat::decode(0, 2), Decoded::NotPresent);
        assert_eq!(
            NptFormat::decode(0x20_0087, 2),
            Decoded::Leaf {
                addr: 0x20_0000,
                access: Access::READ | Access::WRITE
            }
        );
        assert_eq!(
            NptFormat::decode(0x5007, 3),
            Decoded::Table { addr: 0x5000 }
        );
        // At level 1 bit 7 is PAT, not PS: still a 4 KiB leaf.
        assert_eq!(
            NptFormat::decode(0x3085, 1),
            Decoded::Leaf {
                addr: 0x3000,
                access: Access::READ
            }
        );
    }

    #[test]
    fn maps_guest_ram_with_2m_pages_and_nothing_else() {
        let mut mem = FakeDmaMemory::new();
        let mut npt = NestedPageTable::new(&mut mem, NptFormat::config()).unwrap();
        let host = 0x4000_0000 + 0x60_0000; // 2 MiB aligned, not 1 GiB aligned
        let size = 8 << 20;
        npt.map(&mut mem, 0, host, size, Access::READ | Access::WRITE)
            .unwrap();
        for gpa in (0..size).step_by(0x1000) {
            assert_eq!(
                reference_walk(&mem, npt.root(), gpa + 0x123),
                Some((host + gpa + 0x123, true)),
                "gpa {gpa:#x}"
            );
            let t = npt.translate(&mem, gpa).unwrap();
            assert_eq!(t.page_size, 2 << 20);
        }
        for gpa in [
            size,
            size + 0x1000,
            1 << 30,
            0xFEE0_0000,
            (1 << 47) - 0x1000,
        ] {
            assert_eq!(reference_walk(&mem, npt.root(), gpa), None, "gpa {gpa:#x}");
        }
        // PML4, PDPT, PD.
        assert_eq!(npt.table_pages(), 3);
        npt.destroy(&mut mem);
        assert_eq!(mem.allocated, 0);
    }

    #[test]
    fn unaligned_ranges_use_4k_pages_and_read_only_works() {
        let mut mem = FakeDmaMemory::new();
        let mut npt = NestedPageTable::new(&mut mem, NptFormat::config()).unwrap();
        npt.map(&mut mem, 0x1000, 0x80_3000, 0x3000, Access::READ)
            .unwrap();
        assert_eq!(reference_walk(&mem, npt.root(), 0x0), None);
        assert_eq!(
            reference_walk(&mem, npt.root(), 0x2008),
            Some((0x80_4008, false))
        );
        assert_eq!(reference_walk(&mem, npt.root(), 0x4000), None);
        npt.destroy(&mut mem);
        assert_eq!(mem.allocated, 0);
    }
}
