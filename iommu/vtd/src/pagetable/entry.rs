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

use sluice_iommu::Access;

const READ: u64 = 1 << 0;
const WRITE: u64 = 1 << 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// ADDR, bits 51:12.
pub(super) const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry(pub(super) u64);

impl Entry {
    pub(super) const EMPTY: Self = Self(0);

    /// A pointer to the next-level table at `paddr`.
    pub(super) const fn table(paddr: u64) -> Self {
        Self((paddr & ADDRESS) | READ | WRITE)
    }

    /// A leaf at `level` (1: 4 KiB; 2 and 3 carry PS: 2 MiB, 1 GiB).
    pub(super) fn leaf(paddr: u64, access: Access, level: u8) -> Self {
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
        Self(raw)
    }

    pub(super) const fn is_present(self) -> bool {
        self.0 & (READ | WRITE) != 0
    }

    /// Does the walk stop here? Always at level 1; above it only when PS is set (this
    /// engine sets PS only at levels 2 and 3, where the hardware allows it).
    pub(super) const fn is_leaf(self, level: u8) -> bool {
        level == 1 || self.0 & PAGE_SIZE_BIT != 0
    }

    pub(super) const fn address(self) -> u64 {
        self.0 & ADDRESS
    }

    pub(super) fn access(self) -> Access {
        let mut access = Access::empty();
        if self.0 & READ != 0 {
            access |= Access::READ;
        }
        if self.0 & WRITE != 0 {
            access |= Access::WRITE;
        }
        access
    }
}
