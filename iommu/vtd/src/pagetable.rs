//! Second-level page tables: the IOVA → physical-address map a VT-d unit walks for every
//! DMA of a domain.
//!
//! The engine is the vendor-neutral one ([`sluice_iommu::pagetable`], whose docs explain
//! the rules a table a device may walk at any moment needs: single-store entries, tables
//! published before they are linked, all-or-nothing maps, splits in one store, retired
//! tables freed only after the invalidation). This module adds the VT-d entry format
//! ([`VtdSecondLevel`], see `pagetable/entry.rs`) and names the result
//! [`SecondLevelTable`]. Where its parameters come from on VT-d:
//!
//! - the depth, [`PageTableConfig::levels`], is one CAP.SAGAW lists (3, 4 or 5 levels:
//!   39, 48 or 57 IOVA bits); the context entry's AW is `levels - 2` and its SLPTPTR is
//!   [`SecondLevelTable::root`];
//! - the superpages come from CAP.SLLPS (`PageSizes::from(cap.sllps)`);
//! - whether entries must be flushed from the CPU caches comes from ECAP.C
//!   ([`PageTableConfig::coherent`]).
//!
//! Unlike AMD-Vi's format, VT-d's has no present bit: R or W make an entry present, which
//! is why every table link carries both.

mod entry;

pub use sluice_iommu::pagetable::{
    Decoded, EntryFormat, FlushRange, IoPageTable, PageSizes, PageTableConfig, Translation,
    Unmapped,
};

pub use self::entry::VtdSecondLevel;
use crate::regs::LargePages;

/// One domain's second-level page tables: the shared engine with VT-d entries.
pub type SecondLevelTable = IoPageTable<VtdSecondLevel>;

/// The sizes a unit with this CAP.SLLPS offers besides 4 KiB (512 GiB / 1 TiB are not
/// used). `PageSizes::from(cap.sllps)` adds 4 KiB.
impl From<LargePages> for PageSizes {
    fn from(sllps: LargePages) -> Self {
        // 4 KiB pages are always there; SLLPS lists the larger ones.
        let mut sizes = PageSizes::SIZE_4K;
        sizes.set(PageSizes::SIZE_2M, sllps.contains(LargePages::SIZE_2M));
        sizes.set(PageSizes::SIZE_1G, sllps.contains(LargePages::SIZE_1G));
        sizes
    }
}
