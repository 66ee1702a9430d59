//! The platform side of VFIO's device model ([`crate::vfio::DeviceHw`]): delays for
//! device resets, timed by the legacy PIT's channel 2, and checked MMIO accesses to
//! memory BARs for `DEVICE_REGION_READ` / `WRITE`.
//!
//! # The delay
//!
//! Channel 2 of the 8254 (1.193182 MHz, gated by port 0x61 bit 0, its output readable as
//! port 0x61 bit 5) counts down in mode 0; its output goes high at terminal count. One
//! shot covers at most 65535 ticks (~54.9 ms), so longer waits are made of several
//! shots. It needs no calibration and no interrupt, and its rate is fixed by the
//! platform (under QEMU it runs on virtual time, like the rest of the machine). Each
//! shot's poll is bounded: if the output never rises (no PIT), the wait ends after a
//! generous number of polls instead of hanging.

use sluice_boot::start_info::MemoryRegion;
use x86_64::instructions::port::Port;

use crate::arch::paging::IDENTITY_MAP_LIMIT;
use crate::virt::vfio_memory::bar_range_allowed;

/// PIT input clock, Hz.
const PIT_HZ: u64 = 1_193_182;
/// Polls of the output bit before a shot is given up on (a missing PIT).
const MAX_POLLS: u32 = 50_000_000;

/// Wait at least `us` microseconds on PIT channel 2.
pub fn pit_delay_us(us: u32) {
    let mut ticks = (u64::from(us) * PIT_HZ).div_ceil(1_000_000);
    while ticks > 0 {
        let shot = ticks.min(0xFFFF) as u16;
        pit_shot(shot.max(1));
        ticks -= u64::from(shot);
    }
}

fn pit_shot(count: u16) {
    let mut gate: Port<u8> = Port::new(0x61);
    let mut command: Port<u8> = Port::new(0x43);
    let mut channel2: Port<u8> = Port::new(0x42);
    // SAFETY: ports 0x61 (NMI status/speaker control: only the gate bit 0 is set, the
    // speaker bit 1 cleared) and 0x42/0x43 (PIT channel 2, which nothing else in the
    // hypervisor uses; channel 0 stays masked at the PIC) have no memory effects.
    unsafe {
        let control = gate.read();
        gate.write((control & !0x3) & 0x0F);
        // Channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count), binary.
        command.write(0b1011_0000);
        channel2.write(count as u8);
        channel2.write((count >> 8) as u8);
        // Gate high: counting starts.
        gate.write(((control & !0x2) | 0x1) & 0x0F);
        for _ in 0..MAX_POLLS {
            if gate.read() & 0x20 != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        gate.write(control & 0x0C);
    }
}

/// The kernel's [`crate::vfio::DeviceHw`].
pub struct KernelDeviceHw {
    /// The firmware memory map (no access may touch RAM).
    pub memory_map: alloc::vec::Vec<MemoryRegion>,
    /// Host-physical ranges the hypervisor drives itself (IOMMU registers, ECAM).
    pub forbidden: alloc::vec::Vec<(u64, u64)>,
}

impl KernelDeviceHw {
    /// The pointer for an access, if allowed: aligned, inside the identity map, device
    /// memory clear of RAM, the platform window and the hypervisor's own registers.
    fn ptr(&self, hpa: u64, size: u32) -> Option<u64> {
        let end = hpa.checked_add(u64::from(size))?;
        let ok = matches!(size, 1 | 2 | 4 | 8)
            && hpa % u64::from(size) == 0
            && end <= IDENTITY_MAP_LIMIT
            && bar_range_allowed(hpa, end, &self.memory_map, &self.forbidden);
        ok.then_some(hpa)
    }
}

impl crate::vfio::DeviceHw for KernelDeviceHw {
    fn delay_us(&mut self, us: u32) {
        pit_delay_us(us);
    }

    fn mmio_read(&mut self, hpa: u64, size: u32) -> Option<u64> {
        let p = self.ptr(hpa, size)? as usize;
        // SAFETY: `p` is an aligned address of device memory inside an assigned BAR of a
        // device the caller owns, identity-mapped uncached by the boot tables (non-RAM),
        // never RAM or the hypervisor's registers (checked above). Volatile: one access
        // of exactly `size` bytes.
        unsafe {
            Some(match size {
                1 => u64::from(core::ptr::read_volatile(p as *const u8)),
                2 => u64::from(core::ptr::read_volatile(p as *const u16)),
                4 => u64::from(core::ptr::read_volatile(p as *const u32)),
                _ => core::ptr::read_volatile(p as *const u64),
            })
        }
    }

    fn mmio_write(&mut self, hpa: u64, size: u32, value: u64) -> bool {
        let Some(p) = self.ptr(hpa, size) else {
            return false;
        };
        let p = p as usize;
        // SAFETY: as in `mmio_read`.
        unsafe {
            match size {
                1 => core::ptr::write_volatile(p as *mut u8, value as u8),
                2 => core::ptr::write_volatile(p as *mut u16, value as u16),
                4 => core::ptr::write_volatile(p as *mut u32, value as u32),
                _ => core::ptr::write_volatile(p as *mut u64, value),
            }
        }
        true
    }
}
