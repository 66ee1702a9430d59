//! AMD-Vi host page tables, v1 format ("I/O Page Tables for Host Translations" in the AMD
//! I/O Virtualization Technology (IOMMU) Specification): the IOVA → physical-address
//! map an AMD IOMMU walks for every DMA of a domain.
//!
//! The engine is the vendor-neutral one ([`sluice_iommu::pagetable`]: all-or-nothing
//! maps, superpages where aligned, splitting, retire-then-reclaim of emptied tables,
//! flush and barrier rules; its docs say why each matters). VT-d's second-level tables
//! are the same tree, so this module only adds the entry encoding ([`AmdV1`]) and names
//! the result [`IoPageTableV1`]. What the driver takes from it and puts where:
//!
//! - the device-table entry's Mode (bits 11:9) is [`IoPageTable::levels`] and its page
//!   table root pointer (bits 51:12) is [`IoPageTable::root`];
//! - the depth comes from the domain's IOVA width ([`AmdV1::levels_for_width`]: 3 levels
//!   translate 39 bits, 4 levels 48), never assumed, and must not exceed what every unit
//!   walks (EFR.HATS: [`host_page_table_levels`]); [`AmdV1::config`] does both;
//! - [`Unmapped::flush`] becomes INVALIDATE_IOMMU_PAGES for the domain, with PDE = 1
//!   whenever [`Unmapped::freed_tables`] is non-zero (cached directory entries point at
//!   the retired tables), and [`IoPageTable::reclaim`] follows its completion.
//!
//! # The entry (same layout at every level)
//!
//! | bits  | field     | here                                                         |
//! |-------|-----------|--------------------------------------------------------------|
//! | 0     | PR        | present                                                      |
//! | 11:9  | NextLevel | a link (PDE): its table's level; a page (PTE): 0             |
//! | 51:12 | Address   | the next table, or the page's physical address               |
//! | 59    | U         | 0 (set, ATS would tell the device: untranslated access only) |
//! | 60    | FC        | 0 (set, it would force the request snooped: see below)      |
//! | 61    | IR        | reads allowed (PDE: always set)                              |
//! | 62    | IW        | writes allowed (PDE: always set)                             |
//!
//! Everything else (accessed/dirty, ignored bits) stays zero. FC stays clear, so a
//! device's no-snoop requests stay no-snoop, as on VT-d where Sluice leaves SNP clear
//! (Linux sets FC in its leaves; a driver wanting that would add it to
//! [`AmdV1::leaf_entry`](EntryFormat::leaf_entry)).
//!
//! # Where it differs from VT-d's second-level format
//!
//! - **Present**: AMD-Vi has a present bit (PR); VT-d has none, an entry with neither R
//!   nor W is not present. Here a present leaf could even allow nothing (the engine never
//!   writes one: a map without access is refused).
//! - **Table or page**: AMD-Vi says it with NextLevel, which a PDE sets to its child's
//!   level (the hardware may skip levels that way; this engine never does). NextLevel = 0
//!   at level 2 or 3 is a 2 MiB or 1 GiB page: the default page size of that level. VT-d
//!   says it with PS (bit 7). The other large-page encoding, NextLevel = 7 with the size
//!   spelled in the low address bits and the entry repeated over the size, is not used.
//! - **Depth**: AMD-Vi tables have 1 to 6 levels (the DTE's Mode; 6 levels translate
//!   all 64 bits, the top table using only 128 entries), VT-d 3 to 5 (CAP.SAGAW).
//! - **Large pages**: the v1 format always has them, at the levels a table has; VT-d
//!   needs CAP.SLLPS.
//! - **Permissions**: IR/IW in bits 61/62 instead of R/W in bits 1:0, ANDed along the
//!   walk on both, so table links allow both and leaves restrict.
//!
//! [`host_page_table_levels`]: crate::ExtendedFeatures::host_page_table_levels

use core::ops::RangeInclusive;

use sluice_iommu::Access;
pub use sluice_iommu::pagetable::{
    Decoded, EntryFormat, FlushRange, IoPageTable, PageSizes, PageTableConfig, Translation,
    Unmapped,
};

/// PR: present.
const PRESENT: u64 = 1 << 0;
/// NextLevel, bits 11:9.
const NEXT_LEVEL_SHIFT: u32 = 9;
const NEXT_LEVEL: u64 = 0b111 << NEXT_LEVEL_SHIFT;
/// Address, bits 51:12.
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;
/// IR: reads allowed.
const READ: u64 = 1 << 61;
/// IW: writes allowed.
const WRITE: u64 = 1 << 62;

/// The AMD-Vi v1 host page-table entry format for [`sluice_iommu::pagetable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmdV1 {}

/// One domain's AMD-Vi host page tables: the shared engine with v1 entries.
pub type IoPageTableV1 = IoPageTable<AmdV1>;

impl AmdV1 {
    /// The depth (DTE Mode) whose tables translate `address_width` IOVA bits: the fewest
    /// levels with `12 + 9 × levels ≥ address_width` (1 level: 21 bits, 2: 30, 3: 39,
    /// 4: 48, 5: 57, 6: 64). `None` for a width of 0 or above 64.
    pub const fn levels_for_width(address_width: u8) -> Option<u8> {
        match address_width {
            0 | 65.. => None,
            1..=21 => Some(1),
            width => Some((width - 12).div_ceil(9)),
        }
    }

    /// Leaf sizes a `levels`-deep table can use: 2 MiB pages need a level 2, 1 GiB pages
    /// a level 3. (The v1 format has them on every unit.)
    pub fn page_sizes(levels: u8) -> PageSizes {
        let mut sizes = PageSizes::SIZE_4K;
        sizes.set(PageSizes::SIZE_2M, levels >= 2);
        sizes.set(PageSizes::SIZE_1G, levels >= 3);
        sizes
    }

    /// The table format of a domain with `address_width` IOVA bits on units that walk
    /// at most `max_levels` (EFR.HATS, [`host_page_table_levels`]; the smallest over the
    /// units the domain may be attached on), with every large page its depth allows.
    /// `coherent`: the IVHD's Coherent flag (when clear, every entry written is flushed
    /// from the CPU caches). `None` when the width needs more levels than the units walk
    /// (or is 0 or above 64).
    ///
    /// [`host_page_table_levels`]: crate::ExtendedFeatures::host_page_table_levels
    pub fn config(address_width: u8, max_levels: u8, coherent: bool) -> Option<PageTableConfig> {
        let levels = Self::levels_for_width(address_width)?;
        (levels <= max_levels).then(|| PageTableConfig {
            levels,
            superpages: Self::page_sizes(levels),
            coherent,
        })
    }
}

impl EntryFormat for AmdV1 {
    const NAME: &'static str = "AMD-Vi v1";

    /// PR, NextLevel = the child's level, IR and IW (the leaves restrict).
    #[inline]
    fn table_entry(child_table: u64, child_level: u8) -> u64 {
        PRESENT
            | ((u64::from(child_level) << NEXT_LEVEL_SHIFT) & NEXT_LEVEL)
            | (child_table & ADDRESS)
            | READ
            | WRITE
    }

    /// PR and NextLevel = 0 (the page size of `level` itself: 4 KiB, 2 MiB, 1 GiB).
    #[inline]
    fn leaf_entry(paddr: u64, _level: u8, access: Access) -> u64 {
        let mut raw = PRESENT | (paddr & ADDRESS);
        if access.contains(Access::READ) {
            raw |= READ;
        }
        if access.contains(Access::WRITE) {
            raw |= WRITE;
        }
        raw
    }

    /// A present entry is a page at level 1 or when NextLevel is 0, else a table link
    /// (always to the next level down: the engine never skips levels).
    #[inline]
    fn decode(raw: u64, level: u8) -> Decoded {
        if raw & PRESENT == 0 {
            return Decoded::NotPresent;
        }
        let addr = raw & ADDRESS;
        let next_level = (raw & NEXT_LEVEL) >> NEXT_LEVEL_SHIFT;
        if level == 1 || next_level == 0 {
            let mut access = Access::empty();
            access.set(Access::READ, raw & READ != 0);
            access.set(Access::WRITE, raw & WRITE != 0);
            return Decoded::Leaf { addr, access };
        }
        debug_assert_eq!(
            next_level,
            u64::from(level - 1),
            "a level-{level} table link this engine did not write"
        );
        Decoded::Table { addr }
    }

    /// The DTE's Mode: 1 to 6 levels.
    fn supported_levels() -> RangeInclusive<u8> {
        1..=6
    }
}
