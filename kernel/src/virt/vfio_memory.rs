//! A running guest's memory as the VFIO layer sees it ([`crate::vfio::GuestRam`]): its
//! RAM (one contiguous host run) for DMA mappings and argument structures, and its
//! nested page tables for mapping device BARs.

use sluice_abi::Errno;
use sluice_boot::start_info::MemoryRegion;

use super::guest_memory::MmioMapError;
use super::{Guest, VirtualCpu};
use crate::vfio::GuestRam;

/// The host-physical window of the local APIC, I/O APIC and HPET (and the interrupt
/// window): never handed to a guest, whatever a BAR claims.
pub const PLATFORM_WINDOW: (u64, u64) = (0xFEC0_0000, 0xFF00_0000);

/// `guest`'s memory for one VFIO call. `memory_map` is the host's firmware memory map and
/// `forbidden` the host-physical ranges `[start, end)` the hypervisor itself drives (IOMMU
/// registers, ECAM): a BAR is mapped into the guest only if it is device memory clear of
/// all of them and of [`PLATFORM_WINDOW`] — a stale or hostile BAR address must not hand a
/// guest the IOMMU's registers.
pub struct VfioGuestMemory<'a, V: VirtualCpu> {
    pub guest: &'a mut Guest<V>,
    pub memory_map: &'a [MemoryRegion],
    pub forbidden: &'a [(u64, u64)],
}

/// May `[hpa, end)` be given to a guest as device memory?
pub fn bar_range_allowed(
    hpa: u64,
    end: u64,
    memory_map: &[MemoryRegion],
    forbidden: &[(u64, u64)],
) -> bool {
    use sluice_boot::start_info::MemoryType;
    let overlaps = |(s, e): (u64, u64)| s < end && hpa < e;
    let memory = memory_map.iter().any(|r| {
        matches!(
            r.kind,
            MemoryType::Ram
                | MemoryType::AcpiReclaimable
                | MemoryType::AcpiNvs
                | MemoryType::Persistent
        ) && overlaps((r.base, r.end()))
    });
    hpa != 0
        && hpa < end
        && !memory
        && !overlaps(PLATFORM_WINDOW)
        && !forbidden.iter().any(|&f| overlaps(f))
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
        if !bar_range_allowed(hpa, end, self.memory_map, self.forbidden) {
            log::warn!(target: "vfio", "{}: BAR range {hpa:#x}+{size:#x} is not plain device memory (RAM, firmware tables, APIC/IOMMU registers or ECAM); not mapped", self.guest.name);
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

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_boot::start_info::MemoryType;

    #[test]
    fn bars_clear_of_ram_platform_and_iommu_only() {
        let map = [
            MemoryRegion {
                base: 0,
                size: 0x8000_0000,
                kind: MemoryType::Ram,
            },
            MemoryRegion {
                base: 0xfeff_c000,
                size: 0x4000,
                kind: MemoryType::Reserved,
            },
        ];
        let forbidden = [(0xfed9_0000, 0xfed9_1000), (0xb000_0000, 0xc000_0000)];
        let ok = |hpa: u64, size: u64| bar_range_allowed(hpa, hpa + size, &map, &forbidden);
        assert!(ok(0xfea0_0000, 0x10_0000), "an edu BAR");
        assert!(!ok(0x7fff_f000, 0x2000), "reaches into RAM");
        assert!(!ok(0xfed9_0000, 0x1000), "the IOMMU's registers");
        assert!(!ok(0xbfff_0000, 0x1000), "ECAM");
        assert!(!ok(0xfee0_0000, 0x1000), "the local APIC");
        assert!(!ok(0xfec0_0000, 0x1000), "the I/O APIC");
        assert!(!ok(0, 0x1000), "address 0: an unassigned BAR");
    }
}
