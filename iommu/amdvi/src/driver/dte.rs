//! Device table entries (spec §2.2.2.1) and a walk of what a unit reads for one DMA
//! request: device table entry, then the host (v1) page tables.
//!
//! The device table has one 256-bit entry per requester id ("DeviceID"). The fields this
//! driver writes:
//!
//! | bits    | field          | value                                                   |
//! |---------|----------------|---------------------------------------------------------|
//! | 0       | V              | 1: the entry is valid (V = 0 would pass DMA untranslated) |
//! | 1       | TV             | 1: the translation fields are valid                    |
//! | 11:9    | Mode           | page-table levels (4 here)                               |
//! | 51:12   | Page Table Root | the domain's root table, or the unit's empty root       |
//! | 61, 62  | IR, IW         | read / write permission, ANDed with every table entry   |
//! | 79:64   | DomainID       | tag of cached translations; 0 for blocked entries       |
//! | 105:104 | SysMgt         | from the IVRS DTE setting                               |
//! | 184..186, 190, 191 | INITPass, EIntPass, NMIPass, Lint0Pass, Lint1Pass | from the IVRS |
//!
//! Everything else stays zero: no interrupt remapping (IV = 0, IntCtl = 0, so interrupts
//! pass unremapped), no IOTLB/ATS (I = 0), no guest tables (GV = 0), no event
//! suppression (SE = SA = 0), and the fourth quadword entirely zero (QEMU up to 10.0
//! rejects a DTE with any bit of it set).
//!
//! # Blocked
//!
//! A requester id no domain owns gets V = 1, TV = 1, Mode = the domain depth, the unit's
//! *blocking root* (a zeroed page the driver never writes) and IR = IW = 0: translation
//! on, nothing mapped. Every walk fails at the root (no present entry) and the DTE's own
//! permissions deny both directions before that; nothing can be cached from it, so its
//! DomainID 0 (never given to a domain) tags nothing. See the module docs of
//! [`crate::driver`] for why this and not Linux's Mode = 0 encoding.

use sluice_iommu::Access;
use sluice_iommu::hw::DmaMemory;

use crate::ivrs::DteSetting;

/// Bytes per device table entry.
pub const DTE_BYTES: u64 = 32;

/// V: the entry is valid.
pub const V: u64 = 1 << 0;
/// TV: the translation information is valid.
pub const TV: u64 = 1 << 1;
/// Mode (bits 11:9) shift.
pub const MODE_SHIFT: u32 = 9;
/// Page Table Root Pointer (bits 51:12).
pub const ROOT_MASK: u64 = 0x000f_ffff_ffff_f000;
/// IR: DMA reads allowed.
pub const IR: u64 = 1 << 61;
/// IW: DMA writes allowed.
pub const IW: u64 = 1 << 62;
/// SysMgt (quadword 1, bits 41:40) shift.
pub const SYS_MGT_SHIFT: u32 = 40;
/// INITPass (quadword 2, bit 56).
pub const INIT_PASS: u64 = 1 << 56;
/// EIntPass (quadword 2, bit 57).
pub const EINT_PASS: u64 = 1 << 57;
/// NMIPass (quadword 2, bit 58).
pub const NMI_PASS: u64 = 1 << 58;
/// Lint0Pass (quadword 2, bit 62).
pub const LINT0_PASS: u64 = 1 << 62;
/// Lint1Pass (quadword 2, bit 63).
pub const LINT1_PASS: u64 = 1 << 63;

/// IV (quadword 2, bit 0): the interrupt fields are valid.
pub const IV: u64 = 1 << 0;
/// IntTabLen (quadword 2, bits 4:1) shift.
pub const INT_TAB_LEN_SHIFT: u32 = 1;
/// IntTabRootPtr (quadword 2, bits 51:6).
pub const INT_TAB_ROOT_MASK: u64 = 0x000f_ffff_ffff_ffc0;
/// IntCtl (quadword 2, bits 61:60) shift.
pub const INT_CTL_SHIFT: u32 = 60;
/// IntCtl = 10b: fixed and arbitrated interrupts remapped through the table.
pub const INT_CTL_REMAPPED: u64 = 2 << INT_CTL_SHIFT;
/// The quadword-2 bits the interrupt remapping fields occupy.
pub const INTERRUPT_FIELDS: u64 =
    IV | 0xf << INT_TAB_LEN_SHIFT | INT_TAB_ROOT_MASK | 3 << INT_CTL_SHIFT;

/// A device table entry as its four quadwords (quadword 0 holds V).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DeviceTableEntry(pub [u64; 4]);

impl DeviceTableEntry {
    /// The entry of a requester id no domain owns: translation on, the empty `root`,
    /// no permissions (see the module docs), DomainID 0, plus the IVRS settings.
    pub fn blocked(root: u64, levels: u8, settings: DteSetting) -> Self {
        Self::with_settings(
            [V | TV | mode_bits(levels) | (root & ROOT_MASK), 0, 0, 0],
            settings,
        )
    }

    /// The entry of a requester id attached to a domain: translation through the table
    /// at `root` with `levels` levels, reads and writes allowed (the leaves restrict),
    /// tagged `domain_id`, plus the IVRS settings.
    pub fn translated(root: u64, levels: u8, domain_id: u16, settings: DteSetting) -> Self {
        Self::with_settings(
            [
                V | TV | mode_bits(levels) | (root & ROOT_MASK) | IR | IW,
                u64::from(domain_id),
                0,
                0,
            ],
            settings,
        )
    }

    /// Applies the IVRS DTE setting as Linux does (`set_dev_entry_from_acpi`): SysMgt,
    /// the interrupt pass-through bits, and erratum 63 (SysMgt = 01b needs IW = 1; on a
    /// blocked entry that opens nothing, its root table being empty).
    fn with_settings(mut quads: [u64; 4], settings: DteSetting) -> Self {
        let sys_mgt = u64::from(settings.sys_mgt());
        quads[1] |= sys_mgt << SYS_MGT_SHIFT;
        for (flag, bit) in [
            (DteSetting::INIT_PASS, INIT_PASS),
            (DteSetting::EINT_PASS, EINT_PASS),
            (DteSetting::NMI_PASS, NMI_PASS),
            (DteSetting::LINT0_PASS, LINT0_PASS),
            (DteSetting::LINT1_PASS, LINT1_PASS),
        ] {
            if settings.contains(flag) {
                quads[2] |= bit;
            }
        }
        if sys_mgt == 1 {
            quads[0] |= IW;
        }
        Self(quads)
    }

    /// The entry with interrupts remapped through the table at `table` (2^`log2_entries`
    /// entries): IV = 1, IntCtl = 10b, IntTabLen, IntTabRootPtr (the pass-through bits
    /// the IVRS set are kept).
    pub fn with_interrupt_table(mut self, table: u64, log2_entries: u64) -> Self {
        self.0[2] = (self.0[2] & !INTERRUPT_FIELDS)
            | IV
            | (log2_entries & 0xf) << INT_TAB_LEN_SHIFT
            | (table & INT_TAB_ROOT_MASK)
            | INT_CTL_REMAPPED;
        self
    }

    /// IV: the interrupt fields are valid.
    pub const fn interrupt_valid(&self) -> bool {
        self.0[2] & IV != 0
    }

    /// IntCtl (2 bits).
    pub const fn int_ctl(&self) -> u8 {
        ((self.0[2] >> INT_CTL_SHIFT) & 3) as u8
    }

    /// IntTabLen (4 bits).
    pub const fn int_tab_len(&self) -> u8 {
        ((self.0[2] >> INT_TAB_LEN_SHIFT) & 0xf) as u8
    }

    /// IntTabRootPtr.
    pub const fn interrupt_table(&self) -> u64 {
        self.0[2] & INT_TAB_ROOT_MASK
    }

    /// Reads the entry of `requester_id` from the device table at `table`.
    pub fn read(mem: &dyn DmaMemory, table: u64, requester_id: u16) -> Self {
        let at = table + u64::from(requester_id) * DTE_BYTES;
        Self([
            mem.read_u64(at),
            mem.read_u64(at + 8),
            mem.read_u64(at + 16),
            mem.read_u64(at + 24),
        ])
    }

    /// V.
    pub const fn valid(&self) -> bool {
        self.0[0] & V != 0
    }

    /// TV.
    pub const fn translation_valid(&self) -> bool {
        self.0[0] & TV != 0
    }

    /// Mode: the number of page-table levels (0: no translation, 7: reserved).
    pub const fn mode(&self) -> u8 {
        ((self.0[0] >> MODE_SHIFT) & 7) as u8
    }

    /// The page-table root pointer.
    pub const fn table_root(&self) -> u64 {
        self.0[0] & ROOT_MASK
    }

    /// IR and IW as [`Access`].
    pub fn access(&self) -> Access {
        let mut access = Access::empty();
        access.set(Access::READ, self.0[0] & IR != 0);
        access.set(Access::WRITE, self.0[0] & IW != 0);
        access
    }

    /// DomainID.
    pub const fn domain_id(&self) -> u16 {
        self.0[1] as u16
    }

    /// SysMgt.
    pub const fn sys_mgt(&self) -> u8 {
        ((self.0[1] >> SYS_MGT_SHIFT) & 3) as u8
    }
}

const fn mode_bits(levels: u8) -> u64 {
    (levels as u64 & 7) << MODE_SHIFT
}

/// What a DMA request resolved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceTranslation {
    /// The DomainID the entry carries.
    pub domain_id: u16,
    /// Where the access lands.
    pub paddr: u64,
    /// The AND of the DTE's and every table entry's IR/IW. Empty: both directions are
    /// denied.
    pub access: Access,
    /// Bytes the leaf maps (4 KiB, 2 MiB, 1 GiB, ...).
    pub page_size: u64,
    /// Level of the leaf (1: 4 KiB table); 0 when the request is not translated at all
    /// (V = 0, or Mode = 0: the address passes as it is).
    pub level: u8,
    /// The raw leaf entry (0 when untranslated).
    pub entry: u64,
}

/// Where a walk stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkFault {
    /// V = 1, TV = 0: the entry has no translation information; requests are aborted.
    TranslationInvalid,
    /// Mode 7 (reserved): an illegal device table entry.
    ReservedMode,
    /// The IOVA has bits above the table's width.
    BeyondAddressWidth,
    /// No present entry at `level`.
    NotPresent {
        /// Level of the table the entry is in.
        level: u8,
    },
    /// A present entry at `level` whose NextLevel is not below it.
    InvalidNextLevel {
        /// Level of the table the entry is in.
        level: u8,
    },
}

/// PR: the entry is present.
pub const PTE_PRESENT: u64 = 1 << 0;
/// NextLevel (bits 11:9) shift.
pub const NEXT_LEVEL_SHIFT: u32 = 9;
/// Address field of a table entry (bits 51:12).
pub const PTE_ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// Walks device table → host page tables in `mem` for a DMA by `requester_id` at
/// `iova`, as the unit with the device table at `device_table` would. Reads memory, not
/// the driver's bookkeeping.
pub fn walk(
    mem: &dyn DmaMemory,
    device_table: u64,
    requester_id: u16,
    iova: u64,
) -> Result<DeviceTranslation, WalkFault> {
    let dte = DeviceTableEntry::read(mem, device_table, requester_id);
    let untranslated = |access| DeviceTranslation {
        domain_id: dte.domain_id(),
        paddr: iova,
        access,
        page_size: 4096,
        level: 0,
        entry: 0,
    };
    if !dte.valid() {
        return Ok(untranslated(Access::READ | Access::WRITE));
    }
    if !dte.translation_valid() {
        return Err(WalkFault::TranslationInvalid);
    }
    match dte.mode() {
        0 => Ok(untranslated(dte.access())),
        7 => Err(WalkFault::ReservedMode),
        levels => {
            let leaf = walk_table(mem, dte.table_root(), levels, iova)?;
            Ok(DeviceTranslation {
                domain_id: dte.domain_id(),
                paddr: leaf.paddr,
                access: leaf.access & dte.access(),
                page_size: leaf.page_size,
                level: leaf.level,
                entry: leaf.entry,
            })
        }
    }
}

/// A leaf found by [`walk_table`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Where `iova` lands.
    pub paddr: u64,
    /// The AND of IR/IW of every entry on the walk.
    pub access: Access,
    /// Bytes the leaf maps.
    pub page_size: u64,
    /// Level of the table holding the leaf.
    pub level: u8,
    /// The raw leaf entry.
    pub entry: u64,
}

/// Walks the `levels`-level host page table at `root` for `iova`: PR must be set at
/// every level; NextLevel 0 ends the walk with a page of the entry's level, 7 with a
/// page whose size the address field encodes (spec Table 14), anything from 1 to one
/// below the current level names the next table's level.
pub fn walk_table(
    mem: &dyn DmaMemory,
    root: u64,
    levels: u8,
    iova: u64,
) -> Result<Leaf, WalkFault> {
    let width = 12 + 9 * u32::from(levels);
    if width < 64 && iova >> width != 0 {
        return Err(WalkFault::BeyondAddressWidth);
    }
    let mut table = root;
    let mut level = levels;
    let mut access = Access::READ | Access::WRITE;
    loop {
        let shift = 12 + 9 * u32::from(level - 1);
        let index = (iova >> shift) & 0x1ff;
        let entry = mem.read_u64(table + index * 8);
        if entry & PTE_PRESENT == 0 {
            return Err(WalkFault::NotPresent { level });
        }
        access &= entry_access(entry);
        let next = ((entry >> NEXT_LEVEL_SHIFT) & 7) as u8;
        let page_size = match next {
            0 => Some(1u64 << shift),
            7 => Some(contiguous_page_size(entry)),
            _ => None,
        };
        if let Some(page_size) = page_size {
            let base = entry & PTE_ADDRESS & !(page_size - 1);
            return Ok(Leaf {
                paddr: base | (iova & (page_size - 1)),
                access,
                page_size,
                level,
                entry,
            });
        }
        if next >= level {
            return Err(WalkFault::InvalidNextLevel { level });
        }
        table = entry & PTE_ADDRESS;
        level = next;
    }
}

/// IR/IW of a table entry.
pub fn entry_access(entry: u64) -> Access {
    let mut access = Access::empty();
    access.set(Access::READ, entry & IR != 0);
    access.set(Access::WRITE, entry & IW != 0);
    access
}

/// The page size a NextLevel = 7 entry encodes: the address bits from 12 up are ones up
/// to the first zero at bit `n`, and the page is `2^(n + 1)` bytes.
pub fn contiguous_page_size(entry: u64) -> u64 {
    let ones = ((entry & PTE_ADDRESS) >> 12).trailing_ones();
    1u64 << (ones + 13).min(63)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_sizes_follow_table_14() {
        assert_eq!(contiguous_page_size(0x0000_0000_0000_0e01), 8 << 10);
        assert_eq!(contiguous_page_size(0x0000_0000_0000_1e01), 16 << 10);
        assert_eq!(contiguous_page_size(0x0000_0000_000f_fe01), 2 << 20);
        assert_eq!(contiguous_page_size(0x0000_0000_0ff0_0e01), 8 << 10);
    }

    #[test]
    fn settings_are_placed_as_linux_places_them() {
        let all = DteSetting::all();
        let entry = DeviceTableEntry::blocked(0x5000, 4, all);
        assert_eq!(entry.0[0], V | TV | 4 << 9 | 0x5000);
        assert_eq!(entry.0[1], 3 << 40);
        assert_eq!(
            entry.0[2],
            INIT_PASS | EINT_PASS | NMI_PASS | LINT0_PASS | LINT1_PASS
        );
        assert_eq!(entry.0[3], 0);
        // Erratum 63: SysMgt = 01b sets IW.
        let entry = DeviceTableEntry::blocked(0x5000, 4, DteSetting::SYS_MGT1);
        assert_eq!(entry.0[0] & (IR | IW), IW);
        assert_eq!(entry.sys_mgt(), 1);
        let entry = DeviceTableEntry::translated(0x7000, 4, 0x1234, DteSetting::empty());
        assert_eq!(entry.0, [V | TV | 4 << 9 | 0x7000 | IR | IW, 0x1234, 0, 0]);
        assert_eq!(entry.mode(), 4);
        assert_eq!(entry.domain_id(), 0x1234);
        assert_eq!(entry.access(), Access::READ | Access::WRITE);
    }
}
