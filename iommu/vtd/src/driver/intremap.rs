//! Interrupt remapping (VT-d specification chapter 5): the interrupt remapping table, its
//! entries (IRTEs), and the remappable MSI format that names them.
//!
//! With interrupt remapping enabled (GSTS.IRES) and compatibility format off (GSTS.CFIS
//! clear), a write to the interrupt window 0xFEExxxxx is an interrupt *request*: in
//! remappable format (address bit 4) it carries a handle, the unit looks the handle up in
//! the table, checks the requester id against the entry's source-id validation and
//! delivers the vector and destination the entry names; in compatibility format it is
//! blocked. A device can therefore only raise the interrupts the hypervisor wrote entries
//! for, and only its own.
//!
//! Layout of an IRTE (128 bits, §9.10), as written here:
//!
//! | bits | field | value |
//! |---|---|---|
//! | 0 | P (present) | 1, written last |
//! | 1 | FPD | 0: faults are recorded |
//! | 2 | DM (destination mode) | 0: physical |
//! | 3 | RH (redirection hint) | 0 |
//! | 4 | TM (trigger mode) | 0: edge |
//! | 7:5 | DLM (delivery mode) | 000: fixed |
//! | 15 | IM (IRTE mode) | 0: remapped (not posted) |
//! | 23:16 | V (vector) | the host vector |
//! | 63:32 | DST | xAPIC mode: the APIC id in bits 47:40 |
//! | 79:64 | SID | the requester id (or the bus range) |
//! | 81:80 | SQ | 00: all 16 bits compared |
//! | 83:82 | SVT | 01: verify SID/SQ, 10: verify the bus range |
//!
//! The table is one 4 KiB page of 256 entries (IRTA.S = 7), xAPIC mode (IRTA.EIME = 0):
//! the host has fewer device vectors than that, and an 8-bit APIC id is what xAPIC mode
//! can name (QEMU's TCG model refuses EIM).
//!
//! # I/O APIC pins (§5.1.5.1)
//!
//! An I/O APIC pin gets one entry too, with source-id validation naming the I/O APIC
//! (its DMAR device scope gives the requester id its messages carry; QEMU: `ff:00.0`) and
//! the pin's trigger mode in TM. The pin's redirection entry is then programmed in
//! remappable format ([`ioapic_rte`]): interrupt format (bit 48) set, the handle in bits
//! 63:49 and 11, delivery mode 000, polarity and trigger as the pin signals, and in the
//! vector field the entry's own vector. The I/O APIC turns that into a remappable MSI
//! (SHV = 0), the unit delivers the entry's vector with the entry's trigger mode, and
//! since the entry says level the local APIC broadcasts its EOI for that vector, which
//! the I/O APIC matches against the redirection entry's vector field to clear Remote IRR:
//! hence the two vectors must agree (the specification requires it; QEMU traces a
//! warning when they differ). Linux does otherwise: it puts the pin number in the vector
//! field, marks the entry edge and EOIs the I/O APIC explicitly.

use alloc::collections::BTreeMap;

use sluice_pci::PciAddress;

use crate::hw::DmaMemory;

/// Entries in a unit's interrupt remapping table.
pub const IRT_ENTRIES: u32 = 256;
/// IRTA.S: the table holds 2^(S + 1) entries.
pub const IRTA_SIZE: u64 = 7;
/// IRTA.EIME (bit 11): extended interrupt mode (x2APIC ids). Never set here.
pub const IRTA_EIME: u64 = 1 << 11;
/// Bytes per IRTE.
pub const IRTE_BYTES: u64 = 16;
/// The interrupt window's base: remappable-format addresses start with 0xFEE.
pub const MSI_WINDOW: u32 = 0xFEE0_0000;

/// Remappable-format MSI address bits (§5.1.5.2).
pub mod msi {
    /// Interrupt Format: 1 = remappable.
    pub const REMAPPABLE: u32 = 1 << 4;
    /// SHV: the data's low 16 bits are a subhandle added to the handle.
    pub const SHV: u32 = 1 << 3;
    /// Handle bit 15.
    pub const HANDLE_15: u32 = 1 << 2;
    /// Handle bits 14:0 sit at address bits 19:5.
    pub const HANDLE_SHIFT: u32 = 5;
}

/// The remappable-format MSI address for `handle`, with SHV set (the device's data is the
/// subhandle: 0 for its first vector, the MSI subindex for the others).
pub const fn msi_address(handle: u16) -> u32 {
    MSI_WINDOW
        | ((handle as u32) & 0x7fff) << msi::HANDLE_SHIFT
        | msi::REMAPPABLE
        | msi::SHV
        | if handle & 0x8000 != 0 {
            msi::HANDLE_15
        } else {
            0
        }
}

/// The remappable-format I/O APIC redirection entry (§5.1.5.1) for entry `handle`:
/// interrupt format 1 (bit 48), handle bits 14:0 in 63:49 and bit 15 in bit 11, delivery
/// mode 000, `vector` (the IRTE's: see the module docs), trigger mode and polarity as the
/// pin signals, unmasked.
pub const fn ioapic_rte(handle: u16, vector: u8, level_triggered: bool, active_low: bool) -> u64 {
    use sluice_iommu::ioapic::{rte, shared_bits};
    vector as u64
        | shared_bits(level_triggered, active_low, false)
        | rte::REMAPPABLE
        | ((handle & 0x7fff) as u64) << rte::HANDLE_SHIFT
        | if handle & 0x8000 != 0 {
            rte::HANDLE_15
        } else {
            0
        }
}

/// The MSI an I/O APIC sends for redirection entry `rte` (address, data), as the 82093AA
/// family builds it and QEMU's `ioapic_entry_parse` models it: address bits 19:4 from
/// entry bits 63:48, bit 2 from bit 11; data = vector, delivery mode, trigger mode (15).
pub const fn ioapic_message(rte: u64) -> (u32, u32) {
    let address =
        MSI_WINDOW | (((rte >> 48) & 0xffff) as u32) << 4 | (((rte >> 11) & 1) as u32) << 2;
    let data =
        (rte & 0xff) as u32 | (((rte >> 8) & 7) as u32) << 8 | (((rte >> 15) & 1) as u32) << 15;
    (address, data)
}

/// Decodes a remappable-format MSI (address, data) into the entry index it selects, as the
/// unit does; `None` for a compatibility-format address.
pub const fn msi_index(address: u32, data: u32) -> Option<u32> {
    if address & msi::REMAPPABLE == 0 {
        return None;
    }
    let mut handle = (address >> msi::HANDLE_SHIFT) & 0x7fff;
    if address & msi::HANDLE_15 != 0 {
        handle |= 0x8000;
    }
    if address & msi::SHV != 0 {
        handle += data & 0xffff;
    }
    Some(handle)
}

/// Which requests may use an entry (IRTE SVT/SQ/SID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceValidation {
    /// SVT = 01, SQ = 00: the request's requester id must equal this one.
    RequesterId(u16),
    /// SVT = 10: the request's bus must lie in `first..=last` (SID = first << 8 | last,
    /// as the specification states it). Used for a device whose requests may carry
    /// aliases on other buses (behind a bridge).
    Buses { first: u8, last: u8 },
}

impl SourceValidation {
    /// The strictest validation that still admits every requester id in `rids`: the id
    /// itself when there is one, else the range of their buses (as Linux does for
    /// devices behind PCIe-to-PCI bridges). `None` for an empty list.
    pub fn for_requester_ids(rids: &[u16]) -> Option<Self> {
        let first = *rids.first()?;
        if rids.iter().all(|&rid| rid == first) {
            return Some(Self::RequesterId(first));
        }
        let buses = rids.iter().map(|&rid| (rid >> 8) as u8);
        Some(Self::Buses {
            first: buses.clone().min()?,
            last: buses.max()?,
        })
    }
}

/// An interrupt remapping table entry as two quadwords.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Irte {
    pub lo: u64,
    pub hi: u64,
}

impl Irte {
    /// A present, remapped-mode entry: fixed delivery of `vector` to the local APIC
    /// `apic_id` (physical, edge; xAPIC destination format), for the requests `source`
    /// admits.
    pub const fn remapped(vector: u8, apic_id: u8, source: SourceValidation) -> Self {
        let (svt, sid) = match source {
            SourceValidation::RequesterId(rid) => (1u64, rid as u64),
            SourceValidation::Buses { first, last } => (2u64, (first as u64) << 8 | last as u64),
        };
        Self {
            lo: 1 | (vector as u64) << 16 | (apic_id as u64) << 40,
            // SQ = 00 (bits 81:80).
            hi: sid | svt << 18,
        }
    }

    /// The same entry with trigger mode TM = `level_triggered` (an I/O APIC pin's entry
    /// must carry the pin's trigger mode, §5.1.5.1).
    pub const fn with_trigger(self, level_triggered: bool) -> Self {
        Self {
            lo: if level_triggered {
                self.lo | 0x10
            } else {
                self.lo & !0x10
            },
            hi: self.hi,
        }
    }

    pub const fn present(&self) -> bool {
        self.lo & 1 != 0
    }

    pub const fn fault_processing_disabled(&self) -> bool {
        self.lo & 2 != 0
    }

    /// DM: true for logical destination.
    pub const fn logical(&self) -> bool {
        self.lo & 4 != 0
    }

    /// TM: true for level-triggered.
    pub const fn level(&self) -> bool {
        self.lo & 0x10 != 0
    }

    /// DLM (bits 7:5).
    pub const fn delivery_mode(&self) -> u8 {
        ((self.lo >> 5) & 7) as u8
    }

    /// IM (bit 15): true for a posted-interrupt entry.
    pub const fn posted(&self) -> bool {
        self.lo & (1 << 15) != 0
    }

    pub const fn vector(&self) -> u8 {
        (self.lo >> 16) as u8
    }

    /// DST (bits 63:32), raw.
    pub const fn destination(&self) -> u32 {
        (self.lo >> 32) as u32
    }

    /// The APIC id in xAPIC mode (DST bits 15:8).
    pub const fn xapic_destination(&self) -> u8 {
        (self.lo >> 40) as u8
    }

    /// SID (bits 79:64).
    pub const fn source_id(&self) -> u16 {
        self.hi as u16
    }

    /// SQ (bits 81:80).
    pub const fn source_qualifier(&self) -> u8 {
        ((self.hi >> 16) & 3) as u8
    }

    /// SVT (bits 83:82).
    pub const fn source_validation_type(&self) -> u8 {
        ((self.hi >> 18) & 3) as u8
    }

    /// Whether a request from `rid` passes the entry's source-id validation.
    pub const fn admits(&self, rid: u16) -> bool {
        const SQ_MASK: [u16; 4] = [0xffff, 0xfffb, 0xfff9, 0xfff8];
        let sid = self.source_id();
        match self.source_validation_type() {
            0 => true,
            1 => {
                let mask = SQ_MASK[self.source_qualifier() as usize];
                rid & mask == sid & mask
            }
            2 => {
                let bus = (rid >> 8) as u8;
                bus >= (sid >> 8) as u8 && bus <= sid as u8
            }
            _ => false,
        }
    }

    /// Reads entry `index` of the table at `table`.
    pub fn read(mem: &dyn DmaMemory, table: u64, index: u32) -> Self {
        let at = table + u64::from(index) * IRTE_BYTES;
        Self {
            lo: mem.read_u64(at),
            hi: mem.read_u64(at + 8),
        }
    }
}

/// Who uses a block of entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    /// A device's MSI block.
    Device(PciAddress),
    /// One I/O APIC pin.
    IoApicPin { ioapic_id: u8, pin: u8 },
}

impl From<PciAddress> for Owner {
    fn from(device: PciAddress) -> Self {
        Self::Device(device)
    }
}

/// One unit's interrupt remapping table and which entries are in use.
#[derive(Debug)]
pub(crate) struct InterruptTable {
    /// Physical address of the table (one page).
    pub(crate) base: u64,
    /// Blocks in use: first index → (entries, owner).
    blocks: BTreeMap<u32, (u32, Owner)>,
    /// Entries never reused: cleared while the unit failed to confirm.
    leaked: BTreeMap<u32, u32>,
}

impl InterruptTable {
    pub(crate) fn new(base: u64) -> Self {
        Self {
            base,
            blocks: BTreeMap::new(),
            leaked: BTreeMap::new(),
        }
    }

    fn taken(&self, index: u32) -> bool {
        let inside = |map: &BTreeMap<u32, u32>| {
            map.range(..=index)
                .next_back()
                .is_some_and(|(&first, &count)| index < first + count)
        };
        let block = self
            .blocks
            .range(..=index)
            .next_back()
            .is_some_and(|(&first, &(count, _))| index < first + count);
        block || inside(&self.leaked)
    }

    /// A free block of `count` entries (a power of two), aligned to `count` so one
    /// index-selective invalidation covers it. Entry 0 is never handed out (a zeroed
    /// MSI address in remappable format would name it).
    pub(crate) fn alloc(&mut self, count: u32, owner: impl Into<Owner>) -> Option<u32> {
        let owner = owner.into();
        let mut first = count.max(1);
        while first + count <= IRT_ENTRIES {
            if (first..first + count).all(|i| !self.taken(i)) {
                self.blocks.insert(first, (count, owner));
                return Some(first);
            }
            first += count;
        }
        None
    }

    /// The block starting at `first`, if it is `count` entries of `owner`.
    pub(crate) fn owns(&self, first: u32, count: u32, owner: impl Into<Owner>) -> bool {
        self.blocks.get(&first) == Some(&(count, owner.into()))
    }

    /// The block starting at `first`: (entries, owner).
    pub(crate) fn block(&self, first: u32) -> Option<(u32, Owner)> {
        self.blocks.get(&first).copied()
    }

    /// The first index of `owner`'s block, if it has one.
    pub(crate) fn block_of(&self, owner: Owner) -> Option<u32> {
        self.blocks
            .iter()
            .find(|(_, (_, o))| *o == owner)
            .map(|(&first, _)| first)
    }

    pub(crate) fn free(&mut self, first: u32) {
        self.blocks.remove(&first);
    }

    /// Keeps the block out of use for good (its invalidation was not confirmed).
    pub(crate) fn leak(&mut self, first: u32) {
        if let Some((count, _)) = self.blocks.remove(&first) {
            self.leaked.insert(first, count);
        }
    }

    pub(crate) fn in_use(&self) -> u32 {
        self.blocks.values().map(|&(count, _)| count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_round_trip() {
        for handle in [1u16, 0x40, 0x7fff, 0x8000, 0xffff] {
            let address = msi_address(handle);
            assert_eq!(address >> 20, 0xfee);
            assert_eq!(msi_index(address, 0), Some(u32::from(handle)));
        }
        assert_eq!(msi_index(msi_address(8), 3), Some(11));
        assert_eq!(msi_index(0xfee0_0000, 0x41), None);
    }

    #[test]
    fn entry_fields() {
        let e = Irte::remapped(0x41, 3, SourceValidation::RequesterId(0x0018));
        assert!(e.present() && !e.posted() && !e.logical() && !e.level());
        assert_eq!((e.vector(), e.xapic_destination()), (0x41, 3));
        assert_eq!(e.destination(), 3 << 8);
        assert_eq!(e.delivery_mode(), 0);
        assert_eq!((e.source_validation_type(), e.source_qualifier()), (1, 0));
        assert!(e.admits(0x0018) && !e.admits(0x0019) && !e.admits(0x0118));
        let b = Irte::remapped(0x41, 0, SourceValidation::Buses { first: 1, last: 2 });
        assert_eq!(b.source_id(), 0x0102);
        assert!(b.admits(0x0100) && b.admits(0x02ff) && !b.admits(0x0300));
    }

    #[test]
    fn ioapic_entries() {
        // IOAPIC pin, handle 1, vector 0x41, level, active high.
        let rte = ioapic_rte(1, 0x41, true, false);
        assert_eq!(rte, 0x0003_0000_0000_8041);
        // What the I/O APIC sends for it, and what the unit makes of that.
        let (address, data) = ioapic_message(rte);
        assert_eq!((address, data), (0xfee0_0030, 0x8041));
        assert_eq!(
            msi_index(address, data),
            Some(1),
            "SHV = 0: data is no subhandle"
        );
        // Handle bit 15 travels in bit 11, into address bit 2.
        let rte = ioapic_rte(0x8002, 0x50, false, true);
        assert_eq!(rte, 1 << 48 | 2 << 49 | 1 << 11 | 1 << 13 | 0x50);
        let (address, data) = ioapic_message(rte);
        assert_eq!(msi_index(address, data), Some(0x8002));
        assert_eq!(data, 0x50, "edge: trigger bit clear");
        // Entry with the pin's trigger mode.
        let e = Irte::remapped(0x41, 0, SourceValidation::RequesterId(0xff00));
        assert!(e.with_trigger(true).level() && !e.with_trigger(true).with_trigger(false).level());
        assert_eq!(e.with_trigger(true).lo, 0x41_0011);
    }

    #[test]
    fn validation_choice() {
        assert_eq!(
            SourceValidation::for_requester_ids(&[0x18, 0x18]),
            Some(SourceValidation::RequesterId(0x18))
        );
        assert_eq!(
            SourceValidation::for_requester_ids(&[0x0200, 0x0108]),
            Some(SourceValidation::Buses { first: 1, last: 2 })
        );
        assert_eq!(SourceValidation::for_requester_ids(&[]), None);
    }

    #[test]
    fn blocks_are_aligned_and_reused_only_when_freed() {
        let dev = PciAddress::new(0, 0, 3, 0);
        let mut t = InterruptTable::new(0x1000);
        assert_eq!(t.alloc(1, dev), Some(1));
        assert_eq!(t.alloc(4, dev), Some(4));
        assert_eq!(t.alloc(1, dev), Some(2));
        assert!(t.owns(4, 4, dev) && !t.owns(4, 2, dev));
        t.leak(2);
        assert_eq!(t.alloc(1, dev), Some(3));
        t.free(1);
        assert_eq!(t.alloc(1, dev), Some(1));
        assert_eq!(t.in_use(), 6);
        assert_eq!(t.alloc(256, dev), None);
        let pin = Owner::IoApicPin {
            ioapic_id: 0,
            pin: 23,
        };
        assert_eq!(t.block_of(pin), None);
        assert_eq!(t.alloc(1, pin), Some(8));
        assert_eq!(t.block_of(pin), Some(8));
        assert!(t.owns(8, 1, pin) && !t.owns(8, 1, dev));
    }
}
