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
//! - [`enable_acs()`]: turns on the ACS isolation controls ports support and records
//!   what the hardware really holds; [`acs_enabled()`] and friends say which
//!   functions count as isolated from their peers.
//! - [`dma_aliases()`]: every requester id a function's DMA may carry (bridges that
//!   take ownership of transactions, firmware alias entries).
//! - [`form_groups()`]: the IOMMU groups, Linux's rules: the sets of functions that
//!   can only be handed out together.
//! - [`reset()`]: reset one function (FLR, PM reset, secondary bus reset) with its
//!   config header saved and restored; [`reset_method()`] picks the method.
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

mod acs;
mod address;
mod alias;
mod bar;
mod capability;
mod config;
mod defect;
mod device;
mod ecam;
mod enumerate;
mod group;
mod reset;

#[cfg(any(test, feature = "fake"))]
pub mod fake;

#[cfg(test)]
mod group_tests;
#[cfg(test)]
mod tests;

pub use acs::{
    AcsChange, MAX_PATH_HOPS, acs_enabled, acs_flags_enabled, acs_path_enabled, enable_acs,
    is_multifunction,
};
pub use address::PciAddress;
pub use alias::{AliasKind, DmaAlias, MAX_ALIAS_HOPS, dma_aliases};
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
pub use group::{
    GroupExplanation, GroupId, GroupMember, GroupReason, GroupTable, IommuGroup, form_groups,
};
pub use reset::{
    BRIDGE_EXPANSION_ROM, EXPANSION_ROM, ResetError, ResetMethod, SavedConfig,
    function_reset_method, probe_rom, read_function_capabilities, reset, reset_method, restore,
    save,
};
