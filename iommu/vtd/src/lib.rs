//! Intel VT-d for Sluice: what the firmware says about the remapping hardware, and what
//! the hardware says about itself.
//!
//! An Intel platform has one or more DMA remapping units, each translating the DMA of
//! some PCI devices (and remapping interrupts of some interrupt sources). Safe
//! passthrough needs to know, for every device, which unit's tables its DMA goes
//! through; get that wrong and a "protected" device DMAs through a unit nobody
//! programmed. The firmware says it in the ACPI DMAR table; this crate reads it:
//!
//! - [`dmar`]: a bounds-checked parser of the whole table into typed structures
//!   ([`Dmar`], [`Drhd`], [`Rmrr`], [`DeviceScope`], ...). Malformed tables are rejected
//!   with a [`DmarError`] naming the offset; nothing panics or loops on hostile input.
//! - [`scope`]: device scopes are paths through bridges, not bus numbers; they are
//!   resolved against the live PCI topology ([`sluice_pci::DeviceTable`]).
//! - [`topology`]: [`DmarTopology`] implements [`sluice_iommu::IommuTopology`]: units
//!   (`dmar0`, `dmar1`, ...), Intel's device-to-unit rule, RMRRs resolved to devices
//!   (for identity maps), IOAPIC/HPET scopes (for interrupt remapping), warnings.
//! - [`regs`]: the VER, CAP and ECAP registers decoded into named fields (pure
//!   decoding; reading the MMIO registers is the kernel's job).
//!
//! `no_std` + `alloc`; under `cargo test` it runs on the host against DMAR tables
//! captured from QEMU (`tests/fixtures/`) and fake PCI topologies.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod dmar;
pub mod driver;
pub mod hw;
pub mod pagetable;
pub mod regs;
pub mod scope;
pub mod topology;

pub use dmar::{
    Andd, Atsr, AtsrFlags, DeviceScope, Dmar, DmarError, DmarErrorKind, DmarFlags, Drhd, DrhdFlags,
    PathEntry, Rhsa, Rmrr, Satc, SatcFlags, ScopeType, StructureType,
};
pub use regs::{Capability, ExtendedCapability, Version};
pub use scope::{HopProblem, PathError, ResolvedScope};
pub use topology::{
    DmarTopology, InterruptSource, InterruptSourceKind, ResolvedAtsr, ResolvedRmrr, ResolvedSatc,
    VtdUnit, Warning, WarningKind,
};
