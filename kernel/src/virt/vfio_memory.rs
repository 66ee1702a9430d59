//! A running guest's memory as the VFIO layer sees it ([`crate::vfio::GuestRam`]): its
//! RAM (one contiguous host run) for DMA mappings and argument structures, and its
//! nested page tables for mapping device BARs.

use sluice_abi::Errno;
use sluice_boot::start_info::MemoryRegion;

use super::guest_memory::MmioMapError;
use super::{Guest, VirtualCpu};
use crate::vfio::GuestRam;

/// `guest`'s memory for one VFIO call. `memory_map` is the host's firmware memory map:
/// a BAR is mapped into the guest only if it is device memory, never RAM.
pub struct VfioGuestMemory<'a, V: VirtualCpu> {
    pub guest: &'a mut Guest<V>,
    pub memory_map: &'a [MemoryRegion],
}

impl<V: VirtualCpu> GuestRam for VfioGuestMemory<'_, V> {
    fn ram(&self) -> (u64, u64) {
        (self.guest.memory.ram_base(), self.guest.memory.size())
    }

    fn host_address(&self, gpa: u64, len: u64) -> Option<u64> {
        self.guest.memory.translate(gpa, len)
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.guest.memory.read(gpa, buf).map_err(|_| Errno::EFAULT)
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), Errno> {
        self.guest
            .memory
            .write(gpa, data)
            .map_err(|_| Errno::EFAULT)
    }

    fn map_mmio(&mut self, gpa: u64, hpa: u64, size: u64) -> Result<(), Errno> {
        // The BAR address came from config space: make sure it is not RAM (ours or
        // anybody's) before a guest can reach it.
        let end = hpa.checked_add(size).ok_or(Errno::EINVAL)?;
        let overlaps_ram = self.memory_map.iter().any(|r| {
            r.kind == sluice_boot::start_info::MemoryType::Ram && r.base < end && hpa < r.end()
        });
        if hpa == 0 || overlaps_ram {
            log::warn!(target: "vfio", "{}: BAR range {hpa:#x}+{size:#x} is not device memory; not mapped", self.guest.name);
            return Err(Errno::EINVAL);
        }
        self.guest
            .memory
            .map_mmio(gpa, hpa, size)
            .map_err(|e| match e {
                MmioMapError::Invalid => Errno::EINVAL,
                MmioMapError::Exists => Errno::EEXIST,
                MmioMapError::NoMemory => Errno::ENOMEM,
            })
    }

    fn unmap_mmio(&mut self, gpa: u64, size: u64) {
        self.guest.memory.unmap_mmio(gpa, size);
        self.guest.vcpu.flush_tlb();
    }
}
