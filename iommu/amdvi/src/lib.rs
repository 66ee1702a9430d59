//! AMD-Vi: the AMD IOMMU as ACPI's IVRS table describes it.
//!
//! Passing a PCI device through safely needs to know which IOMMU translates its DMA
//! and with which requester id that DMA arrives. On AMD systems firmware says so in
//! the IVRS table; this crate turns those bytes into that answer, in three layers:
//!
//! - [`ivrs`]: a bounds-checked parser of the whole table (header, IVinfo, IVHD
//!   blocks of types 10h/11h/40h with their device entries, IVMD blocks). Hostile
//!   input gives a named error with the table offset, never a panic or a hang.
//! - [`devmap`]: one IVHD's entries expanded into the requester ids it covers, as
//!   sorted ranges (not Linux's 64K-slot arrays: the kernel heap is small).
//! - [`IvrsTopology`]: the units (one per IOMMU), resolved against the PCI
//!   [`DeviceTable`](sluice_pci::DeviceTable), implementing
//!   [`sluice_iommu::IommuTopology`]; plus the IOAPIC/HPET sources, the unity-map
//!   ranges, and a boot-log summary.
//!
//! [`regs`] decodes the feature words (EFR, IVHD flags and feature reporting) once,
//! into named fields, so no other code repeats the bit layouts. Nothing here touches
//! MMIO: programming the IOMMU is the driver's business.
//!
//! Typical use in the kernel:
//!
//! ```
//! # use sluice_amdvi::{Ivrs, IvrsTopology};
//! # use sluice_iommu::IommuTopology;
//! # fn demo(table_bytes: &[u8], pci: &sluice_pci::DeviceTable) {
//! let ivrs = match Ivrs::parse(table_bytes) {
//!     Ok(ivrs) => ivrs,
//!     Err(error) => return log::error!("amd-vi: {error}"),
//! };
//! let topology = match IvrsTopology::new(&ivrs, pci) {
//!     Ok(topology) => topology,
//!     Err(error) => return log::error!("amd-vi: {error}"),
//! };
//! log::info!("{topology}");
//! for device in pci {
//!     let _binding = topology.binding(pci, device.address);
//! }
//! # }
//! ```
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;

pub mod devmap;
pub mod driver;
pub mod ivrs;
pub mod pagetable;
pub mod regs;
mod topology;

pub use devmap::{Coverage, DeviceIdMap, DeviceIdRange, DeviceSettings};
pub use ivrs::{
    AcpiHeader, DeviceEntry, DeviceEntryKind, DteSetting, ExtendedDteSetting, IvInfo, Ivhd,
    IvhdFeatures, IvhdType, Ivmd, IvmdFlags, IvmdType, Ivrs, IvrsError, IvrsErrorKind,
    SkippedBlock, SpecialVariety,
};
pub use regs::{ExtendedFeatures, FeatureReporting, IommuInfo, IvhdAttributes, IvhdFlags};
pub use topology::{
    AcpiHidDevice, AmdViUnit, IvmdDevice, IvrsTopology, MemoryDefinition, SpecialDevice,
    TopologyError, TopologyWarning,
};
