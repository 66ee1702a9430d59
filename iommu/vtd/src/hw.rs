//! The hardware-access traits, shared by every vendor: see [`sluice_iommu::hw`].
pub use sluice_iommu::hw::*;
