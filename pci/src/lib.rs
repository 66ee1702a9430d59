//! PCI and PCI Express discovery for Sluice.
//!
//! A hypervisor that hands devices to guests must first know exactly which devices
//! exist, how they hang together (which bridge is above which function: that decides
//! DMA aliasing and IOMMU groups), which MMIO/I/O windows they decode (their BARs) and
//! what they can do (MSI, MSI-X, FLR, ACS, SR-IOV, ...). This crate answers those
//! questions from configuration space alone and holds no hardware state of its own.
//!
//! The layers, bottom up:
//! - [`PciAddress`]: segment/bus/device/function, the name of one function.
//! - [`ConfigSpace`]: 32-bit reads and writes of a function's 4 KiB config space.
//!   [`Ecam`] implements it over memory-mapped ECAM windows (what ACPI's MCFG table
//!   describes); `fake::FakeConfigSpace` (feature `fake`, and in tests) implements it in memory.
//! - [`enumerate()`]: walks the bus tree the firmware set up and decodes every function
//!   it finds into a [`PciDevice`] (header, [`Bar`]s, [`Capabilities`]), collected
//!   in a [`DeviceTable`].
//!
//! Every value read from config space is treated as hostile: a broken or malicious
//! device can return anything, including pointer loops and nonsense lengths. Nothing
//! here panics or loops without a bound on such input; oddities found on the way are
//! kept as [`ConfigDefect`]s on the device (and logged at `warn` level) rather than
//! silently ignored.
//!
//! The crate is `no_std` + `alloc` so the kernel can use it; under `cargo test` it
//! links `std` and runs on the host against the fake config space.

#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;

mod address;
mod bar;
mod capability;
mod config;
mod defect;
mod device;
mod ecam;
mod enumerate;

#[cfg(any(test, feature = "fake"))]
pub mod fake;

#[cfg(test)]
mod tests;

pub use address::PciAddress;
pub use bar::{Bar, BarKind};
pub use capability::{
    AcsCapability, AcsFlags, AriCapability, Capabilities, ClassicCapability, ExtendedCapability,
    MsiCapability, MsixCapability, PcieCapability, PciePortType, PowerManagementCapability,
    SriovCapability, cap_id, ext_cap_id,
};
pub use config::{ALL_ONES, CONFIG_SPACE_SIZE, ConfigSpace, reg};
pub use defect::ConfigDefect;
pub use device::{DeviceKind, DeviceTable, PciDevice, SubsystemId};
pub use ecam::{Ecam, EcamRegion};
pub use enumerate::{MAX_BRIDGE_DEPTH, enumerate};
