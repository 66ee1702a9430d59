//! The vendor-neutral IOMMU interface.
//!
//! Nothing above this crate names a vendor. Intel VT-d (`iommu/vtd`, from the ACPI DMAR)
//! and AMD-Vi (`iommu/amdvi`, from the ACPI IVRS) each implement [`IommuTopology`]: which
//! remapping units exist, and which unit translates a given PCI function's DMA. Requester
//! ids that come from the PCI topology (DMA aliases through bridges) are the PCI crate's
//! business; firmware-declared aliases (AMD's IVRS alias entries) come through here.
//!
//! Later issues add the translation interface proper (domains, map/unmap, commit).
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod domains;
pub mod hw;
pub mod pagetable;
pub mod range;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use sluice_pci::{DeviceTable, PciAddress};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Vendor {
    /// Intel VT-d, described by the ACPI DMAR table.
    IntelVtd,
    /// AMD-Vi, described by the ACPI IVRS table.
    AmdVi,
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Vendor::IntelVtd => "Intel VT-d",
            Vendor::AmdVi => "AMD-Vi",
        })
    }
}

/// A remapping unit, numbered in firmware-table order (DRHD or IVHD order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitId(pub u16);

/// A remapping hardware unit as firmware describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitDescription {
    pub id: UnitId,
    pub vendor: Vendor,
    /// PCI segment whose devices it translates.
    pub segment: u16,
    /// Physical address of its register block.
    pub register_base: u64,
    /// Size of the register block in bytes (as firmware states it, or the
    /// architectural minimum when it doesn't).
    pub register_size: u64,
    /// Linux's name for it: `dmar0`, `ivhd0`, ...
    pub name: String,
}

/// What firmware says about one PCI function's DMA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirmwareBinding {
    /// The unit that translates it.
    pub unit: UnitId,
    /// Requester ids (`bus << 8 | devfn`) firmware says its DMA carries besides its own
    /// (AMD IVRS alias entries). Empty for VT-d.
    pub firmware_aliases: Vec<u16>,
}

/// Firmware's description of the IOMMUs, resolved against the live PCI topology.
pub trait IommuTopology {
    fn vendor(&self) -> Vendor;

    /// Every remapping unit, in table order (`units()[i].id == UnitId(i)`).
    fn units(&self) -> &[UnitDescription];

    /// The unit that translates `device`'s DMA, or `None` when no unit covers it (its
    /// DMA is then not translated at all, and it can belong to no IOMMU group).
    fn binding(&self, table: &DeviceTable, device: PciAddress) -> Option<FirmwareBinding>;

    /// Is `device` a remapping unit's own PCI function (AMD-Vi's IOMMU appears on the
    /// bus)? Such a function is never translated and must never be assigned.
    fn is_remapping_unit(&self, device: PciAddress) -> bool {
        let _ = device;
        false
    }

    /// Host memory firmware says `device` must keep reaching at its own address, as
    /// inclusive `(first, last)` byte ranges: VT-d RMRRs, AMD-Vi IVMD unity and exclusion
    /// ranges. Such a device cannot be given to a guest safely — its domain would have to
    /// identity-map host memory that every device in the same container could reach —
    /// so, as Linux does, Sluice never makes its group viable.
    fn reserved_regions(&self, table: &DeviceTable, device: PciAddress) -> Vec<(u64, u64)> {
        let _ = (table, device);
        Vec::new()
    }
}

// ---------------------------------------------------------------------------------------
// Translation: domains, mappings, attach/detach, commit, faults.
// ---------------------------------------------------------------------------------------

bitflags::bitflags! {
    /// What a device may do through a mapping.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Access: u8 {
        /// Device reads of memory (DMA from RAM to the device).
        const READ = 1 << 0;
        /// Device writes to memory.
        const WRITE = 1 << 1;
        /// Device memory (a BAR), to be accessed uncached. Only formats with cache
        /// controls use it (the CPU's nested page tables); IOMMU formats ignore it.
        const UNCACHED = 1 << 2;
    }
}

/// An inclusive IOVA range `[start, last]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IovaRange {
    pub start: u64,
    pub last: u64,
}

/// The checks every driver's `Iommu::map_msi` makes on its block of vectors: `count` a
/// power of two in `1..=32` (an MSI capability's Multiple Message Enable), the vectors
/// `first_vector..first_vector + count` within 0..=255, and `dest_apic_id` an 8-bit
/// xAPIC id. Returns the APIC id; `Unsupported { unit }` otherwise.
pub fn check_msi_block(
    unit: UnitId,
    first_vector: u8,
    count: u32,
    dest_apic_id: u32,
) -> Result<u8, IommuError> {
    let unsupported = IommuError::Unsupported { unit };
    if !count.is_power_of_two() || count > 32 || u32::from(first_vector) + count > 256 {
        return Err(unsupported);
    }
    u8::try_from(dest_apic_id).map_err(|_| unsupported)
}

/// A vendor-neutral handle for one IO address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainHandle(pub u32);

/// Why an IOMMU operation failed. Nothing partial is left behind by `map`: a failed map
/// leaves the domain as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuError {
    /// Address or size not aligned to the smallest page size, or size zero.
    Misaligned,
    /// `iova + size` or `paddr + size` wraps.
    Wraps,
    /// Outside every usable IOVA range (aperture minus reserved windows).
    OutOfRange,
    /// Part of the range is already mapped.
    Overlap {
        iova: u64,
    },
    /// The range would cut an existing mapping or superpage it cannot split.
    PartialUnmap {
        iova: u64,
    },
    /// Neither READ nor WRITE.
    NoAccess,
    /// No memory for page tables (or no free block of interrupt-remapping entries).
    NoMemory,
    NoDomainId,
    UnknownDomain,
    /// The device is not described by firmware or not in this domain.
    UnknownDevice,
    /// Domain still has devices attached.
    Busy,
    /// The hardware did not complete an invalidation in time: the caller must stop
    /// trusting this unit (a late completion must never be taken for a later one).
    InvalidationTimeout {
        unit: UnitId,
    },
    /// The unit did not acknowledge a command (e.g. translation enable) in time.
    HardwareTimeout {
        unit: UnitId,
    },
    /// The unit lacks something the driver needs (e.g. no usable page-table depth).
    Unsupported {
        unit: UnitId,
    },
}

impl fmt::Display for IommuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Misaligned => f.write_str("address or size not page aligned (or size 0)"),
            Self::Wraps => f.write_str("range wraps the address space"),
            Self::OutOfRange => f.write_str("range outside the usable IOVA ranges"),
            Self::Overlap { iova } => write!(f, "IOVA {iova:#x} is already mapped"),
            Self::PartialUnmap { iova } => write!(f, "unmap would cut the mapping at {iova:#x}"),
            Self::NoAccess => f.write_str("neither read nor write access requested"),
            Self::NoMemory => f.write_str("out of memory for IOMMU tables"),
            Self::NoDomainId => f.write_str("no free domain id"),
            Self::UnknownDomain => f.write_str("no such domain"),
            Self::UnknownDevice => f.write_str("device not behind this IOMMU or not attached"),
            Self::Busy => f.write_str("domain still has devices attached"),
            Self::InvalidationTimeout { unit } => {
                write!(f, "unit {} invalidation timed out", unit.0)
            }
            Self::HardwareTimeout { unit } => {
                write!(f, "unit {} did not acknowledge a command", unit.0)
            }
            Self::Unsupported { unit } => write!(f, "unit {} lacks a required feature", unit.0),
        }
    }
}

/// A translation fault a unit recorded, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    pub unit: UnitId,
    /// Requester id (`bus << 8 | devfn`) of the faulting DMA.
    pub requester_id: u16,
    /// The page address the device used (IOVA), as the unit reports it.
    pub address: u64,
    /// True for a write (device → memory), false for a read.
    pub write: bool,
    /// The architecture's fault reason code and its meaning.
    pub reason: u8,
    pub reason_text: &'static str,
}

/// One DMA route of a device: which unit, which requester ids (own first, then aliases).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceDma {
    pub device: PciAddress,
    pub unit: UnitId,
    pub requester_ids: Vec<u16>,
}

/// A device's MSI routed through the IOMMU's interrupt remapping
/// ([`Iommu::map_msi`]): `count` consecutive remapping entries from `first` on `unit`,
/// and the message the device must be programmed with to use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemappedMsi {
    pub unit: UnitId,
    /// First remapping-table index (VT-d: IRTE handle).
    pub first: u32,
    /// Entries (a power of two: MSI's Multiple Message Enable adds the subindex to the
    /// data, which selects `first + subindex`).
    pub count: u32,
    /// The MSI address the device writes (VT-d: remappable format, handle in it).
    pub address: u64,
    /// The MSI data for subindex 0 (the device puts the subindex in its low bits).
    pub data: u32,
}

/// I/O APIC redirection entries (82093AA, ICH9 IOxAPIC): the 64-bit entry that routes one
/// interrupt pin. Both the kernel (which programs the I/O APIC) and the IOMMU drivers
/// (which decide what the entry must say when interrupt remapping is on) build them here,
/// so the bit layout is written down once.
///
/// Compatibility format (what every I/O APIC understands):
///
/// | bits | field | here |
/// |---|---|---|
/// | 7:0 | vector | the host vector |
/// | 10:8 | delivery mode | 000: fixed |
/// | 11 | destination mode | 0: physical |
/// | 12 | delivery status | read-only |
/// | 13 | polarity | 1: active low |
/// | 14 | remote IRR | read-only: a level interrupt was delivered and not yet EOIed |
/// | 15 | trigger mode | 1: level |
/// | 16 | mask | 1: masked |
/// | 63:56 | destination | the local APIC id (xAPIC: 8 bits) |
///
/// VT-d's remappable format (VT-d specification §5.1.5.1) keeps bits 7:0 and 16:12, sets
/// bit 48 (interrupt format), and replaces the destination by the handle of an interrupt
/// remapping entry: handle bits 14:0 in 63:49, bit 15 in bit 11, delivery mode 000. The
/// I/O APIC itself does not interpret those bits: it copies 63:48 into the MSI address
/// bits 19:4 and bit 11 into address bit 2 of the message it sends, which is exactly the
/// remappable MSI address (SHV = 0) the remapping unit decodes.
pub mod ioapic {
    use core::fmt;

    /// Bits of a redirection entry.
    pub mod rte {
        pub const VECTOR_MASK: u64 = 0xff;
        pub const DELIVERY_MODE_SHIFT: u32 = 8;
        /// Destination mode (compatibility format): logical.
        pub const DEST_LOGICAL: u64 = 1 << 11;
        /// Delivery status (read-only): the interrupt is waiting to be delivered.
        pub const DELIVERY_PENDING: u64 = 1 << 12;
        /// Polarity: the pin is active low.
        pub const ACTIVE_LOW: u64 = 1 << 13;
        /// Remote IRR (read-only, level only): delivered, EOI not yet received. While it
        /// is set the pin is not delivered again.
        pub const REMOTE_IRR: u64 = 1 << 14;
        /// Trigger mode: level.
        pub const LEVEL: u64 = 1 << 15;
        pub const MASKED: u64 = 1 << 16;
        /// Destination (compatibility format): the APIC id in bits 63:56.
        pub const DEST_SHIFT: u32 = 56;
        /// Interrupt format (VT-d remappable format): 1 = remappable.
        pub const REMAPPABLE: u64 = 1 << 48;
        /// Remappable format: handle bits 14:0 sit at bits 63:49.
        pub const HANDLE_SHIFT: u32 = 49;
        /// Remappable format: handle bit 15.
        pub const HANDLE_15: u64 = 1 << 11;
        /// The bits a write ignores.
        pub const READ_ONLY: u64 = DELIVERY_PENDING | REMOTE_IRR;
    }

    /// A compatibility-format entry: fixed delivery of `vector` to the local APIC
    /// `dest_apic_id` (physical destination), edge or level, active high or low, masked
    /// or not.
    pub const fn compat_rte(
        vector: u8,
        dest_apic_id: u8,
        level_triggered: bool,
        active_low: bool,
        masked: bool,
    ) -> u64 {
        vector as u64
            | (dest_apic_id as u64) << rte::DEST_SHIFT
            | shared_bits(level_triggered, active_low, masked)
    }

    /// The trigger, polarity and mask bits, the same in both formats.
    pub const fn shared_bits(level_triggered: bool, active_low: bool, masked: bool) -> u64 {
        (if level_triggered { rte::LEVEL } else { 0 })
            | (if active_low { rte::ACTIVE_LOW } else { 0 })
            | (if masked { rte::MASKED } else { 0 })
    }

    /// A redirection entry, decoded field by field (for logs and tests).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct RedirectionEntry(pub u64);

    impl RedirectionEntry {
        pub const fn vector(&self) -> u8 {
            (self.0 & rte::VECTOR_MASK) as u8
        }

        /// Delivery mode (bits 10:8): 0 fixed, 1 lowest priority, 2 SMI, 4 NMI, 5 INIT,
        /// 7 ExtINT.
        pub const fn delivery_mode(&self) -> u8 {
            ((self.0 >> rte::DELIVERY_MODE_SHIFT) & 7) as u8
        }

        pub const fn delivery_pending(&self) -> bool {
            self.0 & rte::DELIVERY_PENDING != 0
        }

        pub const fn active_low(&self) -> bool {
            self.0 & rte::ACTIVE_LOW != 0
        }

        pub const fn remote_irr(&self) -> bool {
            self.0 & rte::REMOTE_IRR != 0
        }

        pub const fn level_triggered(&self) -> bool {
            self.0 & rte::LEVEL != 0
        }

        pub const fn masked(&self) -> bool {
            self.0 & rte::MASKED != 0
        }

        /// VT-d remappable format (bit 48)?
        pub const fn remappable(&self) -> bool {
            self.0 & rte::REMAPPABLE != 0
        }

        /// Compatibility format: logical destination mode.
        pub const fn logical(&self) -> bool {
            !self.remappable() && self.0 & rte::DEST_LOGICAL != 0
        }

        /// Compatibility format: the destination APIC id; `None` in remappable format.
        pub const fn destination(&self) -> Option<u8> {
            if self.remappable() {
                None
            } else {
                Some((self.0 >> rte::DEST_SHIFT) as u8)
            }
        }

        /// Remappable format: the interrupt remapping entry's handle; `None` in
        /// compatibility format.
        pub const fn handle(&self) -> Option<u16> {
            if !self.remappable() {
                return None;
            }
            let low = ((self.0 >> rte::HANDLE_SHIFT) & 0x7fff) as u16;
            let high = if self.0 & rte::HANDLE_15 != 0 {
                0x8000
            } else {
                0
            };
            Some(high | low)
        }
    }

    /// `vector 0x41 level active-high masked, remapped handle 0x1` or
    /// `vector 0x41 edge active-low unmasked, fixed physical to APIC 0` — what an
    /// operator reads in the log.
    impl fmt::Display for RedirectionEntry {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "vector {:#04x} {} active-{} {}",
                self.vector(),
                if self.level_triggered() {
                    "level"
                } else {
                    "edge"
                },
                if self.active_low() { "low" } else { "high" },
                if self.masked() { "masked" } else { "unmasked" },
            )?;
            if self.remote_irr() {
                f.write_str(" remote-IRR")?;
            }
            match (self.handle(), self.destination()) {
                (Some(handle), _) => write!(f, ", remapped handle {handle:#x}"),
                (None, Some(dest)) => write!(
                    f,
                    ", delivery mode {} {} to APIC {dest}",
                    self.delivery_mode(),
                    if self.logical() {
                        "logical"
                    } else {
                        "physical"
                    }
                ),
                (None, None) => Ok(()),
            }
        }
    }
}

/// An I/O APIC pin's route as programmed through the IOMMU ([`Iommu::map_ioapic_pin`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApicPinRoute {
    /// The unit holding the pin's interrupt remapping entry; `None` in compatibility
    /// format (no entry: the I/O APIC's message reaches the local APICs as written).
    pub unit: Option<UnitId>,
    /// That entry's index (VT-d: its handle); `None` in compatibility format.
    pub index: Option<u32>,
    /// The redirection entry to program (masked bit clear).
    pub rte: u64,
}

impl IoApicPinRoute {
    /// The compatibility-format route: fixed delivery of `vector` to the local APIC
    /// `dest_apic_id`, physical destination, unmasked, no remapping entry. `None` when
    /// the id does not fit the entry's 8-bit destination (an x2APIC id).
    pub fn compatibility(
        vector: u8,
        dest_apic_id: u32,
        level_triggered: bool,
        active_low: bool,
    ) -> Option<Self> {
        let dest = u8::try_from(dest_apic_id).ok()?;
        Some(Self {
            unit: None,
            index: None,
            rte: ioapic::compat_rte(vector, dest, level_triggered, active_low, false),
        })
    }

    /// No remapping entry is held (compatibility format).
    pub fn is_compatibility(&self) -> bool {
        self.unit.is_none() && self.index.is_none()
    }
}

/// The translation interface the kernel programs against. Edits (`map`, `unmap`,
/// `attach`, `detach`) change tables only; `commit` makes the hardware see them, with as
/// few invalidations as the batch allows. Every device not attached to a domain has its
/// DMA blocked.
pub trait Iommu {
    fn vendor(&self) -> Vendor;

    /// Create an empty IO address space.
    fn create_domain(&mut self) -> Result<DomainHandle, IommuError>;

    /// Destroy an empty domain (no device attached), freeing its tables.
    fn destroy_domain(&mut self, domain: DomainHandle) -> Result<(), IommuError>;

    /// Supported page sizes as a bitmap (bit n set: 2^n bytes), intersected over units.
    fn page_sizes(&self, domain: DomainHandle) -> Result<u64, IommuError>;

    /// Usable IOVA ranges: the aperture minus reserved windows (the interrupt window
    /// 0xFEE00000..=0xFEEFFFFF is never translated as DMA).
    fn iova_ranges(&self, domain: DomainHandle) -> Result<Vec<IovaRange>, IommuError>;

    /// Map `[iova, iova + size)` to `[paddr, paddr + size)`. Superpages where aligned.
    fn map(
        &mut self,
        domain: DomainHandle,
        iova: u64,
        paddr: u64,
        size: u64,
        access: Access,
    ) -> Result<(), IommuError>;

    /// Unmap whole mappings within `[iova, iova + size)`; returns the bytes unmapped.
    fn unmap(&mut self, domain: DomainHandle, iova: u64, size: u64) -> Result<u64, IommuError>;

    /// Make all edits since the last commit visible to the hardware (one batch of
    /// invalidations). Returns an error, never a silent success, if the hardware does
    /// not confirm.
    fn commit(&mut self, domain: DomainHandle) -> Result<(), IommuError>;

    /// Route every requester id of `device` through `domain` (committed on return).
    fn attach(&mut self, domain: DomainHandle, device: &DeviceDma) -> Result<(), IommuError>;

    /// Block `device`'s DMA again (committed on return).
    fn detach(&mut self, domain: DomainHandle, device: &DeviceDma) -> Result<(), IommuError>;

    /// Read, decode and clear the fault records of every unit.
    fn take_faults(&mut self) -> Vec<FaultRecord>;

    /// Whether `unit`'s memory accesses are cache-coherent, i.e. the unit snoops the CPU
    /// caches: VT-d ECAP.C (page-walk coherency), AMD-Vi the IVHD's Coherent flag. It is
    /// what VFIO reports to an external user as the group's DMA coherency (Linux asks the
    /// same question of the IOMMU, `IOMMU_CAP_CACHE_COHERENCY`).
    ///
    /// It describes the unit, not a promise made per mapping: Sluice's page tables never
    /// force a device's no-snoop requests to snoop (VT-d SNP with ECAP.SC, AMD-Vi FC stay
    /// clear), so a device issuing no-snoop DMA is not made coherent by a `true` here.
    /// `None` when `unit` is not one of this driver's units.
    fn dma_coherent(&self, unit: UnitId) -> Option<bool>;

    /// Whether device interrupts go through interrupt remapping: every unit offered it
    /// and the driver enabled it, with untranslated (compatibility-format) interrupts
    /// blocked. When false, [`Iommu::map_msi`] is refused and a device's MSI reaches the
    /// local APICs as written.
    fn interrupt_remapping(&self) -> bool {
        false
    }

    /// Route `count` MSI vectors of `device` (a power of two, at most 32) to host vectors
    /// `first_vector + i` of the local APIC `dest_apic_id` (fixed delivery, physical
    /// destination, edge), through remapping entries only `device`'s requester ids may
    /// use. The entries are written and the unit's interrupt-entry cache invalidated
    /// before this returns; program the device with the returned address/data.
    ///
    /// Errors: `Unsupported` (remapping not enabled, or a destination the unit's mode
    /// cannot name); `UnknownDevice`; `NoMemory` (no free block of entries);
    /// `InvalidationTimeout` (the unit failed; the entries stay reserved).
    fn map_msi(
        &mut self,
        device: &DeviceDma,
        first_vector: u8,
        count: u32,
        dest_apic_id: u32,
    ) -> Result<RemappedMsi, IommuError> {
        let _ = (first_vector, count, dest_apic_id);
        Err(IommuError::Unsupported { unit: device.unit })
    }

    /// Clear the entries of `msi` (present bit first), invalidate them in the unit's
    /// interrupt-entry cache and free them. After an error the entries are cleared in
    /// memory but never reused (the unit may still hold them).
    fn unmap_msi(&mut self, device: &DeviceDma, msi: &RemappedMsi) -> Result<(), IommuError> {
        let _ = msi;
        Err(IommuError::Unsupported { unit: device.unit })
    }

    /// Route I/O APIC `ioapic_id`'s pin `pin` (a GSI's pin, e.g. a device's INTx line) to
    /// host vector `vector` of the local APIC `dest_apic_id` (fixed delivery, physical
    /// destination), `level_triggered`/`active_low` as the pin signals. Returns the
    /// redirection entry to program into that pin (masked bit clear) and the remapping
    /// entry it names, if any; the entry is written and the unit's interrupt-entry cache
    /// invalidated before this returns.
    ///
    /// The default (a driver without interrupt remapping for I/O APICs) is meant for
    /// [`Iommu::interrupt_remapping`] = false: the I/O APIC's messages then reach the
    /// local APICs as written, so the compatibility-format entry is the route. With
    /// remapping on, the default refuses, because a compatibility-format message may be
    /// blocked there.
    ///
    /// Errors: `Unsupported` (remapping on but not offered for I/O APICs by this driver,
    /// or a destination above 255, which an xAPIC-mode entry cannot name; no unit is
    /// involved, so it names unit 0), and for drivers that remap: `UnknownDevice` (no
    /// unit remaps that I/O APIC), `Busy` (the pin already has a route), `NoMemory` (the
    /// table is full), `InvalidationTimeout`.
    fn map_ioapic_pin(
        &mut self,
        ioapic_id: u8,
        pin: u8,
        vector: u8,
        dest_apic_id: u32,
        level_triggered: bool,
        active_low: bool,
    ) -> Result<IoApicPinRoute, IommuError> {
        let _ = (ioapic_id, pin);
        let unsupported = IommuError::Unsupported { unit: UnitId(0) };
        if self.interrupt_remapping() {
            return Err(unsupported);
        }
        IoApicPinRoute::compatibility(vector, dest_apic_id, level_triggered, active_low)
            .ok_or(unsupported)
    }

    /// Release what [`Iommu::map_ioapic_pin`] took: clear the remapping entry (present
    /// bit first), invalidate it and free it. Mask the pin first: once the entry is gone
    /// the pin's interrupts are blocked (and fault). A compatibility-format route holds
    /// nothing (`Ok`); a route this driver did not hand out is `UnknownDevice`.
    fn unmap_ioapic_pin(&mut self, route: &IoApicPinRoute) -> Result<(), IommuError> {
        if route.is_compatibility() {
            Ok(())
        } else {
            Err(IommuError::UnknownDevice)
        }
    }

    /// A teaching aid: describe, one line each, what the hardware reads for a DMA by
    /// `device` at `iova` in `domain` — the root/context entry (VT-d) or the device-table
    /// entry (AMD-Vi) of each requester id, then every page-table entry of the walk down
    /// to the leaf (or the level where it stops), read from memory as the unit reads it.
    fn explain(&self, domain: DomainHandle, device: &DeviceDma, iova: u64) -> Vec<String> {
        let _ = (domain, device, iova);
        alloc::vec![String::from("(this driver cannot explain its tables)")]
    }
}

#[cfg(test)]
mod msi_tests {
    use super::*;

    #[test]
    fn msi_blocks() {
        let u = UnitId(3);
        let no = Err(IommuError::Unsupported { unit: u });
        assert_eq!(check_msi_block(u, 0x40, 1, 0), Ok(0));
        assert_eq!(check_msi_block(u, 0xe0, 32, 255), Ok(255));
        assert_eq!(check_msi_block(u, 0xe1, 32, 0), no, "past vector 255");
        assert_eq!(check_msi_block(u, 0x40, 0, 0), no);
        assert_eq!(check_msi_block(u, 0x40, 3, 0), no);
        assert_eq!(check_msi_block(u, 0x40, 64, 0), no);
        assert_eq!(check_msi_block(u, 0x40, 1, 256), no, "not an xAPIC id");
    }
}

#[cfg(test)]
mod ioapic_tests {
    use super::ioapic::{RedirectionEntry, compat_rte, rte};
    use super::*;

    #[test]
    fn compatibility_entries() {
        // Vector 0x41, APIC 3, level, active low, masked.
        let e = compat_rte(0x41, 3, true, true, true);
        assert_eq!(e, 0x0300_0000_0001_a041);
        let d = RedirectionEntry(e);
        assert_eq!(
            (d.vector(), d.destination(), d.handle()),
            (0x41, Some(3), None)
        );
        assert!(d.level_triggered() && d.active_low() && d.masked() && !d.logical());
        assert_eq!(d.delivery_mode(), 0);
        // Edge, active high, unmasked: nothing but vector and destination.
        assert_eq!(compat_rte(0x30, 0, false, false, false), 0x30);
        assert_eq!(
            compat_rte(0xef, 0xff, false, false, false),
            0xff00_0000_0000_00ef
        );
        assert_eq!(rte::READ_ONLY, 1 << 12 | 1 << 14);
        assert_eq!(
            RedirectionEntry(e | rte::REMOTE_IRR).to_string(),
            "vector 0x41 level active-low masked remote-IRR, delivery mode 0 physical to APIC 3"
        );
    }

    #[test]
    fn remappable_entries_decode() {
        // VT-d remappable: bit 48, handle 0x8005 (bit 15 in bit 11).
        let e = RedirectionEntry(0x41 | rte::LEVEL | rte::REMAPPABLE | 5 << 49 | rte::HANDLE_15);
        assert_eq!(e.handle(), Some(0x8005));
        assert_eq!(e.destination(), None);
        assert!(!e.logical(), "bit 11 is a handle bit here");
        assert_eq!(
            e.to_string(),
            "vector 0x41 level active-high unmasked, remapped handle 0x8005"
        );
    }

    #[test]
    fn compatibility_routes() {
        let r = IoApicPinRoute::compatibility(0x41, 0, true, false).unwrap();
        assert!(r.is_compatibility());
        assert_eq!(r.rte, 0x8041);
        assert_eq!(IoApicPinRoute::compatibility(0x41, 256, true, false), None);
    }

    /// A driver that implements nothing about I/O APICs: the trait's defaults.
    struct Bare {
        remapping: bool,
    }

    impl Iommu for Bare {
        fn vendor(&self) -> Vendor {
            Vendor::IntelVtd
        }
        fn create_domain(&mut self) -> Result<DomainHandle, IommuError> {
            Err(IommuError::NoDomainId)
        }
        fn destroy_domain(&mut self, _: DomainHandle) -> Result<(), IommuError> {
            Err(IommuError::UnknownDomain)
        }
        fn page_sizes(&self, _: DomainHandle) -> Result<u64, IommuError> {
            Err(IommuError::UnknownDomain)
        }
        fn iova_ranges(&self, _: DomainHandle) -> Result<Vec<IovaRange>, IommuError> {
            Err(IommuError::UnknownDomain)
        }
        fn map(
            &mut self,
            _: DomainHandle,
            _: u64,
            _: u64,
            _: u64,
            _: Access,
        ) -> Result<(), IommuError> {
            Err(IommuError::UnknownDomain)
        }
        fn unmap(&mut self, _: DomainHandle, _: u64, _: u64) -> Result<u64, IommuError> {
            Err(IommuError::UnknownDomain)
        }
        fn commit(&mut self, _: DomainHandle) -> Result<(), IommuError> {
            Err(IommuError::UnknownDomain)
        }
        fn attach(&mut self, _: DomainHandle, _: &DeviceDma) -> Result<(), IommuError> {
            Err(IommuError::UnknownDomain)
        }
        fn detach(&mut self, _: DomainHandle, _: &DeviceDma) -> Result<(), IommuError> {
            Err(IommuError::UnknownDomain)
        }
        fn take_faults(&mut self) -> Vec<FaultRecord> {
            Vec::new()
        }
        fn dma_coherent(&self, _: UnitId) -> Option<bool> {
            None
        }
        fn interrupt_remapping(&self) -> bool {
            self.remapping
        }
    }

    #[test]
    fn default_pin_routes() {
        let no = Err(IommuError::Unsupported { unit: UnitId(0) });
        let mut bare = Bare { remapping: false };
        let route = bare.map_ioapic_pin(0, 23, 0x41, 0, true, false).unwrap();
        assert_eq!(
            route,
            IoApicPinRoute::compatibility(0x41, 0, true, false).unwrap()
        );
        assert_eq!(bare.unmap_ioapic_pin(&route), Ok(()));
        assert_eq!(bare.map_ioapic_pin(0, 23, 0x41, 300, true, false), no);
        let foreign = IoApicPinRoute {
            unit: Some(UnitId(0)),
            index: Some(1),
            rte: 0,
        };
        assert_eq!(
            bare.unmap_ioapic_pin(&foreign),
            Err(IommuError::UnknownDevice)
        );
        // Remapping on and the driver does not say how to remap an I/O APIC: refused,
        // since a compatibility-format message may be blocked.
        let mut bare = Bare { remapping: true };
        assert_eq!(bare.map_ioapic_pin(0, 23, 0x41, 0, true, false), no);
    }
}
