//! ECAM: configuration space as memory-mapped I/O.
//!
//! PCI Express maps every function's 4 KiB config space into physical memory at
//! `base + (bus << 20 | device << 15 | function << 12)` (the "Enhanced Configuration
//! Access Mechanism"). ACPI's MCFG table lists one such window per segment and bus
//! range; on QEMU q35 it is one window at 0xB000_0000 covering buses 0..=255.
//!
//! MCFG's base address is that of bus 0 of the segment even when the window starts at
//! a higher bus (ACPI PCI Firmware spec, table 4-3), so the bus number is never
//! rebased here.
//!
//! [`Ecam`] trusts its windows (that is the `unsafe` contract of [`Ecam::new`]) but
//! nothing else: addresses outside every window, bad device/function numbers and
//! bad offsets read all-ones and ignore writes, so enumeration code can probe freely.

use alloc::vec::Vec;
use core::ptr;

use crate::config::{ALL_ONES, CONFIG_SPACE_SIZE};
use crate::{ConfigSpace, PciAddress};

/// One ECAM window, as an MCFG allocation entry describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EcamRegion {
    /// PCI segment the window belongs to.
    pub segment: u16,
    /// First bus decoded by the window (the root bus of its hierarchy).
    pub bus_start: u8,
    /// Last bus decoded by the window (inclusive).
    pub bus_end: u8,
    /// Physical address of bus 0 of the segment (even if `bus_start > 0`).
    pub base: u64,
}

impl EcamRegion {
    /// Whether this window decodes `bus` of `segment`. A window with
    /// `bus_start > bus_end` (broken firmware) decodes nothing.
    pub fn contains(&self, segment: u16, bus: u8) -> bool {
        self.segment == segment && self.bus_start <= bus && bus <= self.bus_end
    }

    /// Physical address of the dword at `offset` of `addr`'s config space, or `None`
    /// if this window does not decode it, the offset is bad or the sum overflows.
    pub fn dword_address(&self, addr: PciAddress, offset: u16) -> Option<u64> {
        if !self.contains(addr.segment, addr.bus)
            || !addr.is_valid()
            || offset >= CONFIG_SPACE_SIZE
            || offset % 4 != 0
        {
            return None;
        }
        let within_segment = (u64::from(addr.bus) << 20)
            | (u64::from(addr.device) << 15)
            | (u64::from(addr.function) << 12)
            | u64::from(offset);
        self.base.checked_add(within_segment)
    }
}

/// Config space access through ECAM windows in identity-mapped physical memory.
#[derive(Debug)]
pub struct Ecam {
    regions: Vec<EcamRegion>,
}

impl Ecam {
    /// Wraps the given ECAM windows.
    ///
    /// # Safety
    ///
    /// For the lifetime of the returned value, every byte of every window (from
    /// `base + (bus_start << 20)` to `base + ((bus_end + 1) << 20) - 1`) must be
    /// mapped at the virtual address equal to its physical address, uncached (or
    /// otherwise suitable for MMIO), and must really be ECAM space: nothing else may
    /// live there. Overlapping windows are allowed (the first one listed wins).
    pub unsafe fn new(regions: Vec<EcamRegion>) -> Ecam {
        Ecam { regions }
    }

    /// The windows this accessor decodes.
    pub fn regions(&self) -> &[EcamRegion] {
        &self.regions
    }

    /// Pointer to the config dword, if some window decodes it.
    fn dword_pointer(&self, addr: PciAddress, offset: u16) -> Option<usize> {
        let physical = self
            .regions
            .iter()
            .find_map(|region| region.dword_address(addr, offset))?;
        usize::try_from(physical).ok()
    }
}

impl ConfigSpace for Ecam {
    fn read32(&self, addr: PciAddress, offset: u16) -> u32 {
        match self.dword_pointer(addr, offset) {
            // SAFETY: `dword_pointer` only returns dword-aligned addresses inside a
            // window, which the contract of `Ecam::new` guarantees is mapped ECAM MMIO
            // at an identical virtual address. Volatile, because every access is a
            // device transaction that must neither be elided nor merged.
            Some(address) => unsafe {
                ptr::read_volatile(ptr::with_exposed_provenance::<u32>(address))
            },
            None => ALL_ONES,
        }
    }

    fn write32(&self, addr: PciAddress, offset: u16, value: u32) {
        if let Some(address) = self.dword_pointer(addr, offset) {
            // SAFETY: as in `read32`: an aligned dword of mapped ECAM MMIO (contract
            // of `Ecam::new`), written with one volatile access.
            unsafe { ptr::write_volatile(ptr::with_exposed_provenance_mut::<u32>(address), value) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const BUS_BYTES: usize = 1 << 20;

    /// A heap buffer standing in for the MMIO of one bus, plus an `Ecam` over it
    /// whose window is bus `bus` of segment 1, so that `base` points `bus` MiB
    /// *before* the buffer, as MCFG's base does.
    struct FakeMmio {
        memory: Vec<u32>,
        ecam: Ecam,
    }

    fn one_bus_ecam(bus: u8) -> FakeMmio {
        let mut memory = vec![0u32; BUS_BYTES / 4];
        let buffer_start = memory.as_mut_ptr().expose_provenance() as u64;
        let region = EcamRegion {
            segment: 1,
            bus_start: bus,
            bus_end: bus,
            base: buffer_start - ((bus as u64) << 20),
        };
        // SAFETY: the window covers exactly `memory` (bus `bus` only), which lives
        // as long as the Ecam inside the same struct and is never moved (the Vec's
        // heap buffer stays put). Plain RAM is fine for volatile accesses.
        let ecam = unsafe { Ecam::new(vec![region]) };
        FakeMmio { memory, ecam }
    }

    #[test]
    fn reads_and_writes_land_at_the_ecam_offset_relative_to_bus_zero() {
        let mut mmio = one_bus_ecam(2);
        let dev = PciAddress::new(1, 2, 3, 4);
        // device 3, function 4, offset 0x10 within bus 2's megabyte.
        let index = ((3 << 15) | (4 << 12) | 0x10) / 4;
        mmio.memory[index] = 0xFEA0_0000;
        assert_eq!(mmio.ecam.read32(dev, 0x10), 0xFEA0_0000);
        mmio.ecam.write32(dev, 0x14, 0x1234_5678);
        assert_eq!(mmio.ecam.read32(dev, 0x14), 0x1234_5678);
        assert_eq!(mmio.memory[index + 1], 0x1234_5678);
        // The last dword of the last function is in range too.
        let last = PciAddress::new(1, 2, 31, 7);
        mmio.ecam.write32(last, 0xFFC, 7);
        assert_eq!(mmio.memory[mmio.memory.len() - 1], 7);
    }

    #[test]
    fn accesses_outside_the_windows_read_all_ones_and_write_nothing() {
        let mmio = one_bus_ecam(2);
        let before = mmio.memory.clone();
        let bad = [
            (PciAddress::new(1, 1, 0, 0), 0),  // bus below the window
            (PciAddress::new(1, 3, 0, 0), 0),  // bus above the window
            (PciAddress::new(0, 2, 0, 0), 0),  // other segment
            (PciAddress::new(1, 2, 32, 0), 0), // device out of range
            (PciAddress::new(1, 2, 0, 8), 0),  // function out of range
            (PciAddress::new(1, 2, 0, 0), 2),  // unaligned
            (PciAddress::new(1, 2, 0, 0), 4096),
            (PciAddress::new(1, 2, 0, 0), 0xFFFF),
        ];
        for (addr, offset) in bad {
            assert_eq!(
                mmio.ecam.read32(addr, offset),
                ALL_ONES,
                "{addr} {offset:#x}"
            );
            mmio.ecam.write32(addr, offset, 0xDEAD_BEEF);
        }
        assert!(mmio.memory == before, "a rejected write reached memory");
    }

    #[test]
    fn window_arithmetic_rejects_overflow_and_empty_ranges() {
        let near_top = EcamRegion {
            segment: 0,
            bus_start: 0,
            bus_end: 255,
            base: u64::MAX - 0x1000,
        };
        assert_eq!(near_top.dword_address(PciAddress::new(0, 1, 0, 0), 0), None);
        assert_eq!(
            near_top.dword_address(PciAddress::new(0, 0, 0, 0), 0x10),
            Some(u64::MAX - 0x1000 + 0x10)
        );
        let inverted = EcamRegion {
            segment: 0,
            bus_start: 5,
            bus_end: 4,
            base: 0xB000_0000,
        };
        assert!(!inverted.contains(0, 4) && !inverted.contains(0, 5));
        let q35 = EcamRegion {
            segment: 0,
            bus_start: 0,
            bus_end: 255,
            base: 0xB000_0000,
        };
        assert_eq!(
            q35.dword_address(PciAddress::new(0, 0xff, 0x1f, 7), 0xffc),
            Some(0xB000_0000 + 0x0fff_fffc)
        );
    }
}
