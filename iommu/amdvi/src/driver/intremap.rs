//! Interrupt remapping (AMD IOMMU specification §2.2.5): per-device interrupt remapping
//! tables of 32-bit (legacy format) entries, named by the device table entry.
//!
//! A device whose DTE has IV = 1 and IntCtl = 10b (remapped) has every fixed or
//! arbitrated MSI it sends looked up in its own table: the MSI data's bits 10:0 are the
//! index, the entry gives vector and destination. An entry with RemapEn = 0 is a target
//! abort (IO_PAGE_FAULT), so a device whose table is empty has every MSI blocked. A DTE
//! with IV = 0 forwards the device's interrupts unremapped; only the devices given to
//! guests get a table here, everything else (the IOAPIC and HPET sources included) keeps
//! the entry bring-up wrote. I/O APIC pins are routed in compatibility format
//! (`Iommu::map_ioapic_pin`; the driver's module docs say why).
//!
//! When the unit offers it: AMD IOMMUs have no enable bit and no EFR bit for the legacy
//! format (EFR.GASup/XTSup are the 128-bit and x2APIC extensions, not used); firmware
//! says interrupt remapping is in use by naming the IOAPIC in an IVHD (special device
//! entry 48h, variety IOAPIC), which is also what Linux requires before it enables it
//! (`check_ioapic_information`). QEMU's `amd-iommu` writes that entry exactly when
//! `intremap=on`, and with `intremap=off` treats IV = 1 as an error (the MSI is
//! dropped), so without the entry nothing here is used.
//!
//! Layout of a legacy IRTE (32 bits), as written here:
//!
//! | bits | field | value |
//! |---|---|---|
//! | 0 | RemapEn | 1 |
//! | 1 | SupIOPF | 0: faults are logged |
//! | 4:2 | IntType | 000: fixed |
//! | 5 | RqEoi | 0 |
//! | 6 | DM | 0: physical |
//! | 7 | GuestMode | 0 |
//! | 15:8 | Destination | the APIC id |
//! | 23:16 | Vector | the host vector |
//!
//! Each table holds 256 entries (IntTabLen = 8; 1 KiB, in a page of its own): indices
//! stay below 256 because QEMU also decodes MSI data bits 10:8 as the delivery mode.

/// Entries of a device's interrupt remapping table.
pub const TABLE_ENTRIES: u32 = 256;
/// DTE IntTabLen: the table holds 2^IntTabLen entries.
pub const INT_TAB_LEN: u64 = 8;
/// Bytes per legacy IRTE.
pub const IRTE_BYTES: u64 = 4;
/// The MSI address of a remapped interrupt: the interrupt window, destination ignored.
pub const MSI_ADDRESS: u64 = 0xFEE0_0000;

/// A legacy-format interrupt remapping table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Irte(pub u32);

impl Irte {
    /// RemapEn.
    pub const REMAP_EN: u32 = 1 << 0;
    /// SupIOPF.
    pub const SUP_IOPF: u32 = 1 << 1;
    /// DM (destination mode: logical).
    pub const DM: u32 = 1 << 6;
    /// GuestMode.
    pub const GUEST_MODE: u32 = 1 << 7;

    /// A remapped entry: fixed delivery of `vector` to the local APIC `apic_id`
    /// (physical destination).
    pub const fn remapped(vector: u8, apic_id: u8) -> Self {
        Self(Self::REMAP_EN | (apic_id as u32) << 8 | (vector as u32) << 16)
    }

    /// RemapEn: the entry is in use.
    pub const fn remap_enabled(&self) -> bool {
        self.0 & Self::REMAP_EN != 0
    }

    /// IntType (bits 4:2).
    pub const fn int_type(&self) -> u8 {
        ((self.0 >> 2) & 7) as u8
    }

    /// DM: true for logical destination.
    pub const fn logical(&self) -> bool {
        self.0 & Self::DM != 0
    }

    /// Destination (the APIC id).
    pub const fn destination(&self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// Vector.
    pub const fn vector(&self) -> u8 {
        (self.0 >> 16) as u8
    }
}

/// One device's table: where it is, which requester ids' DTEs name it, which entries
/// are taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterruptTable {
    /// Physical address (page aligned).
    pub base: u64,
    /// The requester ids whose DTE points here.
    pub requester_ids: alloc::vec::Vec<u16>,
    /// Entries in use (bit i of word i / 64).
    used: [u64; (TABLE_ENTRIES / 64) as usize],
}

impl InterruptTable {
    /// An empty table at `base`, named by no requester id yet.
    pub fn new(base: u64) -> Self {
        Self {
            base,
            requester_ids: alloc::vec::Vec::new(),
            used: [0; (TABLE_ENTRIES / 64) as usize],
        }
    }

    fn is_used(&self, index: u32) -> bool {
        self.used[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    fn set(&mut self, first: u32, count: u32, used: bool) {
        for index in first..first + count {
            let (word, bit) = ((index / 64) as usize, index % 64);
            if used {
                self.used[word] |= 1 << bit;
            } else {
                self.used[word] &= !(1 << bit);
            }
        }
    }

    /// Takes `count` free entries (a power of two) starting at a multiple of `count`.
    pub fn alloc(&mut self, count: u32) -> Option<u32> {
        if count == 0 || !count.is_power_of_two() || count > TABLE_ENTRIES {
            return None;
        }
        let first = (0..TABLE_ENTRIES)
            .step_by(count as usize)
            .find(|&first| (first..first + count).all(|i| !self.is_used(i)))?;
        self.set(first, count, true);
        Some(first)
    }

    /// Gives entries back.
    pub fn free(&mut self, first: u32, count: u32) {
        self.set(first, count.min(TABLE_ENTRIES.saturating_sub(first)), false);
    }

    /// Whether `first..first + count` are all taken.
    pub fn holds(&self, first: u32, count: u32) -> bool {
        count > 0
            && first
                .checked_add(count)
                .is_some_and(|end| end <= TABLE_ENTRIES)
            && (first..first + count).all(|i| self.is_used(i))
    }

    /// Address of entry `index`.
    pub const fn entry_address(&self, index: u32) -> u64 {
        self.base + index as u64 * IRTE_BYTES
    }
}

/// Reads entry `index` of the table at `base` (memory is read 64 bits at a time).
pub fn read_irte(mem: &dyn sluice_iommu::hw::DmaMemory, base: u64, index: u32) -> Irte {
    let at = base + u64::from(index) * IRTE_BYTES;
    let quad = mem.read_u64(at & !7);
    Irte((quad >> ((at & 4) * 8)) as u32)
}

/// Writes entry `index` of the table at `base`: one 64-bit store of the quadword holding
/// it (the other entry in it, of the same table, is written back unchanged; only the
/// driver writes these tables), flushed unless `coherent`, then a barrier.
pub fn write_irte(
    mem: &mut dyn sluice_iommu::hw::DmaMemory,
    base: u64,
    index: u32,
    entry: Irte,
    coherent: bool,
) {
    let at = base + u64::from(index) * IRTE_BYTES;
    let quad_at = at & !7;
    let shift = (at & 4) * 8;
    let quad = mem.read_u64(quad_at);
    let value = (quad & !(0xffff_ffffu64 << shift)) | u64::from(entry.0) << shift;
    mem.write_u64(quad_at, value);
    if !coherent {
        mem.flush(quad_at, 8);
    }
    mem.barrier();
}
