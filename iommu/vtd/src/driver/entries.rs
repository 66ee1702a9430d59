//! Root and context entries (legacy mode, VT-d specification §9.1–9.3), and a walk of
//! the structures a unit reads for one DMA request.
//!
//! The root table (one 4 KiB page, 256 entries of 128 bits) is indexed by bus; a present
//! root entry points to that bus's context table (256 entries of 128 bits, indexed by
//! devfn). A present context entry names the domain id, the second-level table and its
//! depth. Requester ids without a present context entry are blocked: that is the default
//! for every device this driver was not told to attach.
//!
//! The walk ([`walk`]) reads memory the way the unit does, not the driver's bookkeeping:
//! it is what the kernel's "a device never attached cannot DMA" and superpage checks use.

use sluice_iommu::Access;

use crate::hw::DmaMemory;

/// Entries in a root or context table.
pub const TABLE_ENTRIES: u64 = 256;
/// Bytes per root or context entry.
pub const ENTRY_BYTES: u64 = 16;

const PRESENT: u64 = 1;
const POINTER: u64 = 0x000f_ffff_ffff_f000;

/// A root entry as two quadwords.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RootEntry {
    pub lo: u64,
    pub hi: u64,
}

impl RootEntry {
    pub const fn present(&self) -> bool {
        self.lo & PRESENT != 0
    }

    /// Context-table pointer (CTP, bits 63:12).
    pub const fn context_table(&self) -> u64 {
        self.lo & POINTER
    }

    /// Reads the entry for `bus` of the root table at `root`.
    pub fn read(mem: &dyn DmaMemory, root: u64, bus: u8) -> Self {
        let at = root + u64::from(bus) * ENTRY_BYTES;
        Self {
            lo: mem.read_u64(at),
            hi: mem.read_u64(at + 8),
        }
    }
}

/// A context entry as two quadwords.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ContextEntry {
    pub lo: u64,
    pub hi: u64,
}

/// Translation types (TT, bits 3:2 of the low quadword).
pub mod translation_type {
    /// Untranslated requests go through the second-level table; translated requests
    /// and translation requests (ATS) are blocked. The only type this driver writes.
    pub const UNTRANSLATED_ONLY: u8 = 0;
    pub const DEVICE_TLB: u8 = 1;
    pub const PASS_THROUGH: u8 = 2;
}

impl ContextEntry {
    /// The entry this driver writes: present, TT = 0, the second-level table at
    /// `table` with `levels` levels (AW = levels - 2), domain `did`.
    pub const fn new(table: u64, levels: u8, did: u16) -> Self {
        Self {
            lo: (table & POINTER) | PRESENT,
            hi: (levels.saturating_sub(2) as u64 & 7) | (did as u64) << 8,
        }
    }

    pub const fn present(&self) -> bool {
        self.lo & PRESENT != 0
    }

    /// FPD (bit 1): fault processing disabled.
    pub const fn fault_processing_disabled(&self) -> bool {
        self.lo & 2 != 0
    }

    pub const fn translation_type(&self) -> u8 {
        ((self.lo >> 2) & 3) as u8
    }

    /// SLPTPTR (bits 63:12): the second-level table.
    pub const fn table(&self) -> u64 {
        self.lo & POINTER
    }

    /// AW (bits 66:64), raw.
    pub const fn address_width_code(&self) -> u8 {
        (self.hi & 7) as u8
    }

    /// Table depth from AW: 1 → 3 levels (39-bit), 2 → 4 (48-bit), 3 → 5 (57-bit).
    pub const fn levels(&self) -> u8 {
        self.address_width_code() + 2
    }

    /// DID (bits 87:72).
    pub const fn domain_id(&self) -> u16 {
        (self.hi >> 8) as u16
    }

    /// Reads the entry for `requester_id` under the root table at `root`: the
    /// all-zero (not present) entry when the bus's root entry is not present.
    pub fn read(mem: &dyn DmaMemory, root: u64, requester_id: u16) -> Self {
        let root_entry = RootEntry::read(mem, root, (requester_id >> 8) as u8);
        if !root_entry.present() {
            return Self::default();
        }
        let at = root_entry.context_table() + u64::from(requester_id & 0xff) * ENTRY_BYTES;
        Self {
            lo: mem.read_u64(at),
            hi: mem.read_u64(at + 8),
        }
    }
}

/// What a DMA request resolved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceTranslation {
    pub domain_id: u16,
    pub paddr: u64,
    /// The AND of R/W along the walk.
    pub access: Access,
    /// Bytes the leaf maps (4 KiB, 2 MiB or 1 GiB).
    pub page_size: u64,
    /// Level of the leaf (1 = 4 KiB page table).
    pub level: u8,
}

/// Where a walk stopped, named after the fault the unit would record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkFault {
    /// Fault reason 1.
    RootNotPresent,
    /// Fault reason 2.
    ContextNotPresent,
    /// Fault reason 3: a type or depth this walk (and this driver) never writes.
    InvalidContext,
    /// Fault reason 4: above the aperture.
    BeyondAddressWidth,
    /// A second-level entry without R and W, at `level`.
    NotPresent { level: u8 },
}

const SL_READ: u64 = 1;
const SL_WRITE: u64 = 2;
const SL_PAGE_SIZE: u64 = 1 << 7;

/// Walks root → context → second-level tables in `mem` for `requester_id` at `iova`,
/// as the unit with root table `root` and guest address width `mgaw` would.
pub fn walk(
    mem: &dyn DmaMemory,
    root: u64,
    mgaw: u8,
    requester_id: u16,
    iova: u64,
) -> Result<DeviceTranslation, WalkFault> {
    if !RootEntry::read(mem, root, (requester_id >> 8) as u8).present() {
        return Err(WalkFault::RootNotPresent);
    }
    let context = ContextEntry::read(mem, root, requester_id);
    if !context.present() {
        return Err(WalkFault::ContextNotPresent);
    }
    let levels = context.levels();
    if context.translation_type() != translation_type::UNTRANSLATED_ONLY
        || !(3..=5).contains(&levels)
    {
        return Err(WalkFault::InvalidContext);
    }
    let width = u32::from((12 + 9 * levels).min(mgaw));
    if width < 64 && iova >> width != 0 {
        return Err(WalkFault::BeyondAddressWidth);
    }
    let mut table = context.table();
    let mut rights = SL_READ | SL_WRITE;
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * u32::from(level - 1);
        let index = (iova >> shift) & 0x1ff;
        let entry = mem.read_u64(table + index * 8);
        if entry & (SL_READ | SL_WRITE) == 0 {
            return Err(WalkFault::NotPresent { level });
        }
        rights &= entry;
        if level == 1 || (entry & SL_PAGE_SIZE != 0 && level <= 3) {
            let page_size = 1u64 << shift;
            let base = entry & POINTER & !(page_size - 1);
            let mut access = Access::empty();
            if rights & SL_READ != 0 {
                access |= Access::READ;
            }
            if rights & SL_WRITE != 0 {
                access |= Access::WRITE;
            }
            return Ok(DeviceTranslation {
                domain_id: context.domain_id(),
                paddr: base | (iova & (page_size - 1)),
                access,
                page_size,
                level,
            });
        }
        table = entry & POINTER;
    }
    Err(WalkFault::NotPresent { level: 1 })
}
