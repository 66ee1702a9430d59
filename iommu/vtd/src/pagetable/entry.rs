//! One second-level paging entry (VT-d specification §9.8, legacy mode), as a value.
//!
//! Every level uses the same 64-bit layout; only bit 7 changes meaning with the level:
//!
//! | bits  | field | here                                                               |
//! |-------|-------|--------------------------------------------------------------------|
//! | 0     | R     | read allowed (non-leaf: always set)                                |
//! | 1     | W     | write allowed (non-leaf: always set)                               |
//! | 7     | PS    | page size: a 2 MiB (PDE) or 1 GiB (PDPTE) leaf instead of a table  |
//! | 51:12 | ADDR  | the next table, or the page's physical address                     |
//!
//! There is no separate present bit: an entry with neither R nor W is not present, so
//! the permissions and the address must arrive in one 64-bit store (a reader between
//! two stores would see a half-built entry). The other fields (execute, memory type,
//! accessed/dirty, snoop, transient mapping) stay zero: Sluice uses none of them.
//!
//! Effective permissions are the AND of R/W along the walk, which is why tables carry
//! both bits and only leaves say what the device may do.

use core::ops::RangeInclusive;

use sluice_iommu::Access;
use sluice_iommu::pagetable::{Decoded, EntryFormat};

const READ: u64 = 1 << 0;
const WRITE: u64 = 1 << 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// ADDR, bits 51:12.
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// The VT-d second-level (legacy mode) entry format for [`sluice_iommu::pagetable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VtdSecondLevel {}

impl EntryFormat for VtdSecondLevel {
    const NAME: &'static str = "VT-d second-level";

    #[inline]
    fn table_entry(child_table: u64, _child_level: u8) -> u64 {
        (child_table & ADDRESS) | READ | WRITE
    }

    /// Levels 2 and 3 carry PS (2 MiB, 1 GiB); level 1 leaves never do.
    #[inline]
    fn leaf_entry(paddr: u64, level: u8, access: Access) -> u64 {
        let mut raw = paddr & ADDRESS;
        if access.contains(Access::READ) {
            raw |= READ;
        }
        if access.contains(Access::WRITE) {
            raw |= WRITE;
        }
        if level > 1 {
            raw |= PAGE_SIZE_BIT;
        }
        raw
    }

    /// The walk stops at level 1, and above it only where PS is set (the engine sets PS
    /// only at levels 2 and 3, where the hardware allows it).
    #[inline]
    fn decode(raw: u64, level: u8) -> Decoded {
        if raw & (READ | WRITE) == 0 {
            return Decoded::NotPresent;
        }
        let addr = raw & ADDRESS;
        if level > 1 && raw & PAGE_SIZE_BIT == 0 {
            return Decoded::Table { addr };
        }
        // R and W are bits 0 and 1, like Access::READ and Access::WRITE.
        let access = Access::from_bits_truncate((raw & (READ | WRITE)) as u8);
        Decoded::Leaf { addr, access }
    }

    /// 3 (39-bit IOVA), 4 (48-bit) and 5 (57-bit): the SAGAW depths.
    fn supported_levels() -> RangeInclusive<u8> {
        3..=5
    }
}
