//! What an IOMMU driver's failure means to the guest.

use sluice_abi::Errno;
use sluice_iommu::IommuError;

/// The errno a guest sees when the IOMMU driver fails during its call.
///
/// | `IommuError`                                   | errno    | why |
/// |------------------------------------------------|----------|-----|
/// | `NoMemory`                                     | `ENOMEM` | no memory for tables (the ABI's ENOMEM) |
/// | `NoDomainId`                                   | `ENOSPC` | the unit's domain ids are used up: a limit, not memory (ABI: "no IOMMU domain could be created") |
/// | `Misaligned`, `Wraps`, `OutOfRange`, `Overlap`, `PartialUnmap`, `NoAccess` | `EINVAL` | the VFIO layer checks these first, so the driver only sees them when its own view is narrower, e.g. a firmware identity region (RMRR/IVMD) of a joining device that collides with the container's mappings — Linux's reserved-region conflict, also `EINVAL` |
/// | `Busy`                                         | `EBUSY`  | a device or domain is still in use |
/// | `UnknownDomain`, `UnknownDevice`, `Unsupported` | `ENODEV` | the unit cannot translate for this device (the hypervisor's view and the driver's disagree, or the unit lacks a feature) |
/// | `InvalidationTimeout`, `HardwareTimeout`        | `EBUSY`  | the hardware did not answer; `EIO` is not in the ABI and the unit must not be trusted any more (logged as an error) |
pub fn iommu_errno(error: IommuError) -> Errno {
    match error {
        IommuError::NoMemory => Errno::ENOMEM,
        IommuError::NoDomainId => Errno::ENOSPC,
        IommuError::Misaligned
        | IommuError::Wraps
        | IommuError::OutOfRange
        | IommuError::Overlap { .. }
        | IommuError::PartialUnmap { .. }
        | IommuError::NoAccess => Errno::EINVAL,
        IommuError::Busy => Errno::EBUSY,
        IommuError::UnknownDomain | IommuError::UnknownDevice | IommuError::Unsupported { .. } => {
            Errno::ENODEV
        }
        IommuError::InvalidationTimeout { .. } | IommuError::HardwareTimeout { .. } => {
            log::error!(target: "vfio", "IOMMU hardware failure: {error}");
            Errno::EBUSY
        }
    }
}
