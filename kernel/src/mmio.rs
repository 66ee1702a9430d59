//! Memory-mapped device registers.
//!
//! A [`MmioRegion`] is a register block whose physical address came from firmware (an
//! IOMMU's register base from the DMAR or IVRS). Firmware is not trusted: the region is
//! only created when it lies inside the identity map and holds no RAM (so the boot
//! page tables map it uncached), and every access is bounds- and alignment-checked.
//! Accesses go through `volatile::VolatilePtr`, so the compiler never merges, reorders
//! or elides them.

use core::ptr::NonNull;

use sluice_boot::start_info::MemoryRegion;
use volatile::VolatilePtr;

use crate::arch::paging::{IDENTITY_MAP_LIMIT, LARGE_PAGE, page_has_ram};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioError {
    /// Base or size is zero, unaligned, or the range wraps.
    BadRange { base: u64, size: u64 },
    /// Beyond the identity map: not reachable yet.
    NotMapped { base: u64, size: u64 },
    /// Overlaps RAM: firmware points a register block at memory, refuse it.
    OverlapsRam { base: u64, size: u64 },
}

impl core::fmt::Display for MmioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::BadRange { base, size } => {
                write!(f, "register range {base:#x}+{size:#x} is malformed")
            }
            Self::NotMapped { base, size } => {
                write!(
                    f,
                    "register range {base:#x}+{size:#x} is above the identity map"
                )
            }
            Self::OverlapsRam { base, size } => {
                write!(f, "register range {base:#x}+{size:#x} overlaps RAM")
            }
        }
    }
}

/// Check a firmware-supplied register range (pure, host tested).
pub fn check_range(base: u64, size: u64, map: &[MemoryRegion]) -> Result<(), MmioError> {
    let end = base
        .checked_add(size)
        .ok_or(MmioError::BadRange { base, size })?;
    if base == 0 || size == 0 || base % 4096 != 0 {
        return Err(MmioError::BadRange { base, size });
    }
    if end > IDENTITY_MAP_LIMIT {
        return Err(MmioError::NotMapped { base, size });
    }
    let mut page = base & !(LARGE_PAGE - 1);
    while page < end {
        if page_has_ram(map, page) {
            return Err(MmioError::OverlapsRam { base, size });
        }
        page += LARGE_PAGE;
    }
    Ok(())
}

/// A checked, uncached register block.
pub struct MmioRegion {
    base: NonNull<u8>,
    size: u64,
}

// SAFETY: the region is plain device memory; register-level exclusion is the owning
// driver's business (it holds the region behind its own lock).
unsafe impl Send for MmioRegion {}

impl MmioRegion {
    /// # Safety
    /// Nothing else may program this register block while the region is alive, and the
    /// boot page tables must still identity-map it uncached (true for non-RAM pages).
    pub unsafe fn new(base: u64, size: u64, map: &[MemoryRegion]) -> Result<Self, MmioError> {
        check_range(base, size, map)?;
        let ptr =
            NonNull::new(base as usize as *mut u8).ok_or(MmioError::BadRange { base, size })?;
        Ok(MmioRegion { base: ptr, size })
    }

    pub fn base(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    fn ptr<T>(&self, offset: u64) -> Option<NonNull<T>> {
        let width = core::mem::size_of::<T>() as u64;
        (offset % width == 0 && offset.checked_add(width)? <= self.size)
            // SAFETY: offset + width <= size, so the pointer stays inside the region.
            .then(|| unsafe { self.base.add(offset as usize) }.cast::<T>())
    }

    /// Read a 32-bit register; `None` if `offset` is outside the block or unaligned.
    pub fn read32(&self, offset: u64) -> Option<u32> {
        let p = self.ptr::<u32>(offset)?;
        // SAFETY: in-bounds, aligned, uncached device memory (constructor contract).
        Some(unsafe { VolatilePtr::new_read_only(p) }.read())
    }

    /// Read a 64-bit register; `None` if `offset` is outside the block or unaligned.
    pub fn read64(&self, offset: u64) -> Option<u64> {
        let p = self.ptr::<u64>(offset)?;
        // SAFETY: in-bounds, aligned, uncached device memory (constructor contract).
        Some(unsafe { VolatilePtr::new_read_only(p) }.read())
    }

    /// Write a 32-bit register; `false` if `offset` is outside the block or unaligned.
    pub fn write32(&self, offset: u64, value: u32) -> bool {
        let Some(p) = self.ptr::<u32>(offset) else {
            return false;
        };
        // SAFETY: in-bounds, aligned, uncached device memory (constructor contract).
        unsafe { VolatilePtr::new(p) }.write(value);
        true
    }

    /// Write a 64-bit register; `false` if `offset` is outside the block or unaligned.
    pub fn write64(&self, offset: u64, value: u64) -> bool {
        let Some(p) = self.ptr::<u64>(offset) else {
            return false;
        };
        // SAFETY: in-bounds, aligned, uncached device memory (constructor contract).
        unsafe { VolatilePtr::new(p) }.write(value);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_boot::start_info::MemoryType;

    fn q35_map() -> [MemoryRegion; 2] {
        [
            MemoryRegion {
                base: 0x10_0000,
                size: 0x1fee_0000,
                kind: MemoryType::Ram,
            },
            MemoryRegion {
                base: 0xfed1_c000,
                size: 0x4000,
                kind: MemoryType::Reserved,
            },
        ]
    }

    #[test]
    fn firmware_register_ranges_are_checked() {
        let map = q35_map();
        assert_eq!(check_range(0xfed9_0000, 0x1000, &map), Ok(()));
        assert_eq!(check_range(0xfed8_0000, 0x4000, &map), Ok(()));
        assert!(matches!(
            check_range(0, 0x1000, &map),
            Err(MmioError::BadRange { .. })
        ));
        assert!(matches!(
            check_range(0xfed9_0010, 0x1000, &map),
            Err(MmioError::BadRange { .. })
        ));
        assert!(matches!(
            check_range(!0xfff, 0x2000, &map),
            Err(MmioError::BadRange { .. })
        ));
        assert!(matches!(
            check_range(0x1_0000_0000, 0x1000, &map),
            Err(MmioError::NotMapped { .. })
        ));
        assert!(matches!(
            check_range(0x20_0000, 0x1000, &map),
            Err(MmioError::OverlapsRam { .. })
        ));
    }

    #[test]
    fn accesses_are_bounds_and_alignment_checked() {
        // A heap buffer stands in for device memory: only the checks are under test.
        let mut buf = vec![0u64; 8];
        buf[1] = 0x1122_3344_5566_7788;
        let region = MmioRegion {
            base: NonNull::new(buf.as_mut_ptr().cast()).unwrap(),
            size: 64,
        };
        assert_eq!(region.read64(8), Some(0x1122_3344_5566_7788));
        assert_eq!(region.read32(12), Some(0x1122_3344));
        assert_eq!(region.read32(2), None);
        assert_eq!(region.read64(60), None);
        assert_eq!(region.read64(64), None);
        assert!(region.write32(0, 7));
        assert!(!region.write64(4, 7));
        assert_eq!(region.read32(0), Some(7));
    }
}
