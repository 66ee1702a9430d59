//! The platform side of VFIO's device model ([`crate::vfio::DeviceHw`]): delays for
//! device resets, timed by the legacy PIT's channel 2, and checked MMIO and port I/O
//! accesses to BARs (and the expansion ROM) for `DEVICE_REGION_READ` / `WRITE`.
//!
//! # Ports
//!
//! The VFIO layer has checked that an access lies inside an I/O BAR of a device the
//! caller owns; this layer refuses the ports the platform itself owns, whatever a BAR
//! claims: everything below [`FIRST_DEVICE_PORT`] (the legacy ISA range: COM1 at
//! 0x3F8, the PIT, the PICs, the PS/2 controller, PCI configuration at 0xCF8/0xCFC,
//! and on QEMU's q35 the ACPI PM block at 0x600, fw_cfg at 0x510 and the debug-exit
//! port), and any access running past port 0xFFFF. Firmware places device I/O BARs
//! above 0x1000 (SeaBIOS on q35: from 0xC000), so nothing a device needs is lost.
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

/// The lowest port a device's I/O BAR may be reached at through the hypervisor: below
/// it is the platform's (see "Ports" above).
pub const FIRST_DEVICE_PORT: u16 = 0x1000;

/// Whether a `size`-byte access at `port` is one the hypervisor makes for a guest: 1, 2
/// or 4 bytes, naturally aligned, at or above [`FIRST_DEVICE_PORT`], not past 0xFFFF.
pub fn port_access_allowed(port: u16, size: u32) -> bool {
    matches!(size, 1 | 2 | 4)
        && u32::from(port) % size == 0
        && port >= FIRST_DEVICE_PORT
        && u32::from(port) + size <= 0x1_0000
}

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

/// Whether `[hpa, hpa + len)` is device memory a device may decode for a guest: inside
/// the identity map, clear of RAM, the platform window and the hypervisor's registers.
fn window_allowed(hw: &KernelDeviceHw, hpa: u64, len: u64) -> bool {
    hpa.checked_add(len).is_some_and(|end| {
        len != 0
            && end <= IDENTITY_MAP_LIMIT
            && bar_range_allowed(hpa, end, &hw.memory_map, &hw.forbidden)
    })
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

    fn mmio_window_allowed(&self, hpa: u64, len: u64) -> bool {
        window_allowed(self, hpa, len)
    }

    fn io_read(&mut self, port: u16, size: u32) -> Option<u32> {
        if !port_access_allowed(port, size) {
            return None;
        }
        // SAFETY: `port` lies inside an assigned I/O BAR of a device the caller owns (the
        // VFIO layer checked) and outside the platform's ports (checked above), so the
        // `in` reaches only that device; port I/O has no memory effects.
        unsafe {
            Some(match size {
                1 => u32::from(Port::<u8>::new(port).read()),
                2 => u32::from(Port::<u16>::new(port).read()),
                _ => Port::<u32>::new(port).read(),
            })
        }
    }

    fn io_write(&mut self, port: u16, size: u32, value: u32) -> bool {
        if !port_access_allowed(port, size) {
            return false;
        }
        // SAFETY: as in `io_read`: an `out` to the device's own I/O BAR only.
        unsafe {
            match size {
                1 => Port::<u8>::new(port).write(value as u8),
                2 => Port::<u16>::new(port).write(value as u16),
                _ => Port::<u32>::new(port).write(value),
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_ports_are_refused() {
        for (port, size) in [
            (0x3F8, 1), // COM1: the hypervisor's log
            (0x40, 1),  // PIT
            (0x20, 1),  // PIC
            (0x60, 1),  // PS/2
            (0xCF8, 4), // PCI configuration address
            (0xCFC, 4), // PCI configuration data
            (0x600, 4), // q35's ACPI PM block
            (0xF4, 4),  // isa-debug-exit (the harness's)
            (0xFFC, 4), // the last dword below the boundary
        ] {
            assert!(!port_access_allowed(port, size), "{port:#x}/{size}");
        }
    }

    #[test]
    fn device_ports_are_allowed_aligned_and_in_range() {
        assert!(port_access_allowed(0x1000, 4));
        assert!(port_access_allowed(0xC000, 1));
        assert!(port_access_allowed(0xC002, 2));
        assert!(port_access_allowed(0xFFFC, 4), "ends exactly at 0x10000");
        assert!(port_access_allowed(0xFFFF, 1));
        assert!(!port_access_allowed(0xC001, 2), "misaligned");
        assert!(!port_access_allowed(0xC002, 4), "misaligned");
        assert!(!port_access_allowed(0xC000, 8), "no 8-byte port I/O");
        assert!(!port_access_allowed(0xC000, 3));
        assert!(!port_access_allowed(0xC000, 0));
    }

    #[test]
    fn rom_windows_only_in_device_memory() {
        use sluice_boot::start_info::MemoryType;
        let hw = KernelDeviceHw {
            memory_map: alloc::vec![MemoryRegion {
                base: 0,
                size: 0x2000_0000,
                kind: MemoryType::Ram,
            }],
            forbidden: alloc::vec![(0xfed9_0000, 0xfed9_1000), (0xb000_0000, 0xc000_0000)],
        };
        assert!(
            window_allowed(&hw, 0xfeb8_0000, 0x1000),
            "a ROM in the PCI window"
        );
        assert!(
            !window_allowed(&hw, 0x1fff_f000, 0x2000),
            "reaches into RAM"
        );
        assert!(!window_allowed(&hw, 0xbfff_f000, 0x1000), "ECAM");
        assert!(!window_allowed(&hw, 0xfec0_0000, 0x1000), "the I/O APIC");
        assert!(!window_allowed(&hw, 0, 0x800), "address 0");
        assert!(!window_allowed(&hw, 0xfeb8_0000, 0), "empty");
        assert!(!window_allowed(&hw, u64::MAX - 0x7ff, 0x800), "wraps");
        assert!(
            !window_allowed(&hw, IDENTITY_MAP_LIMIT, 0x800),
            "not mapped"
        );
    }
}
