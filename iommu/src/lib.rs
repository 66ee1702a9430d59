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
}
