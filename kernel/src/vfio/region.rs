//! `DEVICE_REGION_READ` / `DEVICE_REGION_WRITE`: config space, mediated; memory BARs
//! through checked MMIO accesses; I/O BARs through port I/O the hypervisor does; the
//! expansion ROM, read with its decoding switched on for the one access.
//!
//! BARs and the ROM go through [`super::DeviceHw`]: this layer checks the access lies
//! inside the BAR (or ROM) as the host enumerated it, the platform side refuses what
//! the hypervisor or the platform owns (RAM, its registers, legacy ports). A refusal is
//! `EINVAL`, like every other bad access (no partial transfers: one access per call).
//! A write that touches the MSI-X table or PBA succeeds and writes nothing, a read of
//! the table reads all-ones (the table is the hypervisor's, see `msix`; Linux's
//! vfio-pci does the same).
//!
//! The ROM (region 6, read only) is what vfio-pci gives user space through
//! `pci_map_rom`: the hypervisor sets the enable bit of the function's *real* ROM BAR
//! (the address firmware assigned, never the guest's virtual register) and, if the
//! guest turned it off, memory decoding, reads, and restores both at once. A device
//! may share one address decoder between its ROM and its BARs, so the ROM never
//! stays enabled behind the guest's back.
//!
//! Config space (region 7) is the device's real config space except where the host
//! relies on it (see "Config space" in [`sluice_abi::vfio`]):
//!
//! - BARs and the expansion ROM BAR are *virtual registers* of the open device
//!   ([`VirtualConfig`]): sizing works (all-ones reads back the size mask with the
//!   read-only flag bits), other values are kept and read back, nothing reaches the
//!   hardware;
//! - MSI address and data are virtual too (the hypervisor owns them), and so are MSI's
//!   Enable / Multiple Message Enable and MSI-X's Enable / Function Mask (writes keep
//!   the hardware's bits), and Device Control's Max Payload Size and Phantom Functions;
//! - a bridge header's bus numbers never reach the hardware;
//! - COMMAND passes only memory space and bus master (INTx disable is the hypervisor's:
//!   it masks the device's INTx, see `intx`; I/O space is the hypervisor's too: it is
//!   on while the device is open if the function has I/O BARs, see `device`);
//! - Device Control's "Initiate FLR" becomes the hypervisor's own reset (with the
//!   header saved and restored), and PMCSR's power state is kept (a D3hot round trip
//!   would reset the function behind the host's back);
//! - everything else is read-modify-written as a dword, with the write-1-to-clear bits
//!   of the bytes the guest did not write kept at zero.

use alloc::vec::Vec;

use sluice_abi::Errno;
use sluice_abi::vfio::{REGION_BAR5, REGION_CONFIG, REGION_ROM, RegionAccess, min_size};
use sluice_pci::{
    BRIDGE_EXPANSION_ROM, BarKind, ConfigSpace, EXPANSION_ROM, PciAddress, probe_rom,
    read_function_capabilities, reg,
};

use super::args::read_args;
use super::handles::DeviceId;
use super::state::set_command;
use super::{GroupDevice, GuestId, GuestRam, Vfio};

/// The size of region 7 (config space): PCIe's 4096 bytes for every function (reads
/// beyond 256 of a conventional function return all-ones).
pub const CONFIG_REGION_SIZE: u64 = 4096;

/// Command bits a guest may change.
const COMMAND_PASS: u16 = reg::COMMAND_MEMORY_SPACE | reg::COMMAND_BUS_MASTER;

/// Expansion ROM BAR: bit 0 turns the ROM's decoding on.
const ROM_ENABLE: u32 = 1;
/// MSI capability dword 0: Message Control's Enable (bit 0) and Multiple Message Enable
/// (6:4), in the upper half.
const HOST_MSI_CONTROL: u32 = (0x1 | 0x70) << 16;
/// MSI-X capability dword 0: Message Control's Enable (15) and Function Mask (14).
const HOST_MSIX_CONTROL: u32 = 0xC000_0000;
/// PCIe Device Control (low half of its dword): Max Payload Size (7:5) and Phantom
/// Functions Enable (9).
const HOST_DEVICE_CONTROL: u32 = 0x0000_02E0;

/// Expansion ROM BAR: the address bits (31:11; a ROM is at least 2 KiB).
const ROM_ADDRESS_MASK: u32 = 0xFFFF_F800;

/// The expansion ROM BAR of the hardware, as probed when the device was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostRom {
    /// Its config offset: 0x30 (type 0 header) or 0x38 (type 1).
    pub offset: u16,
    /// Bytes it decodes (a power of two, from the size probe).
    pub size: u64,
}

/// The virtual registers of an open device's config space.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VirtualConfig {
    /// `(offset, value, writable mask)`: BARs, the ROM BAR, MSI address and data. A
    /// write keeps `value & !mask | new & mask`.
    regs: Vec<(u16, u32, u32)>,
    /// A type 1 header (bus numbers are not the guest's).
    bridge: bool,
    /// Device Control's offset (Initiate FLR is intercepted).
    device_control: Option<u16>,
    /// PMCSR's offset (the power state is kept).
    pmcsr: Option<u16>,
    /// `(offset, mask)` of write-1-to-clear bits, by dword.
    rw1c: Vec<(u16, u32)>,
    /// `(offset, mask)` of bits that stay as the hardware has them, by dword: the
    /// hypervisor's (MSI Enable and Multiple Message Enable, MSI-X Enable and Function
    /// Mask: a guest that set them behind the host would leave its messages live for the
    /// next owner; Device Control's Max Payload Size and Phantom Functions Enable: the
    /// fabric's, not the function's).
    host_bits: Vec<(u16, u32)>,
    /// The real ROM BAR, if the function implements one (region 6 reads go there; the
    /// guest's view of the register is the virtual one in `regs`).
    host_rom: Option<HostRom>,
}

impl VirtualConfig {
    /// The initial virtual registers of `function`: BARs as the host assigned them
    /// (with their sizes from enumeration), the ROM BAR sized now, MSI as the hardware
    /// holds it.
    pub fn new(cfg: &dyn ConfigSpace, function: &GroupDevice) -> Self {
        let addr = function.address;
        let bridge = cfg.read8(addr, reg::HEADER_TYPE) & 0x7F == reg::HEADER_TYPE_BRIDGE;
        let slots: u8 = if bridge { 2 } else { 6 };
        let mut regs = Vec::new();
        for slot in 0..slots {
            let offset = reg::BAR0 + 4 * u16::from(slot);
            let hw = cfg.read32(addr, offset);
            let (value, mask) = match function.bars.iter().find(|b| b.index == slot) {
                Some(b) if b.kind == BarKind::Io => (hw, !(b.size as u32).wrapping_sub(1) & !0x3),
                Some(b) => (hw, !(b.size.wrapping_sub(1)) as u32 & !0xF),
                None => match function
                    .bars
                    .iter()
                    .find(|b| b.kind == BarKind::Mem64 && b.index + 1 == slot)
                {
                    Some(b) => (hw, (!(b.size.wrapping_sub(1)) >> 32) as u32),
                    None => (0, 0),
                },
            };
            regs.push((offset, value, mask));
        }
        let rom = if bridge {
            BRIDGE_EXPANSION_ROM
        } else {
            EXPANSION_ROM
        };
        let rom_mask = probe_rom(cfg, addr, rom);
        let rom_value = if rom_mask == 0 {
            0
        } else {
            cfg.read32(addr, rom)
        };
        regs.push((rom, rom_value, if rom_mask == 0 { 0 } else { rom_mask | 1 }));
        // The lowest writable address bit is the size.
        let host_rom = (rom_mask != 0).then(|| HostRom {
            offset: rom,
            size: u64::from(rom_mask & rom_mask.wrapping_neg()),
        });
        let caps = read_function_capabilities(cfg, addr);
        if let Some(msi) = caps.msi {
            let at = u16::from(msi.offset);
            let data = if msi.is_64bit { at + 12 } else { at + 8 };
            regs.push((at + 4, cfg.read32(addr, at + 4), 0xFFFF_FFFC));
            if msi.is_64bit {
                regs.push((at + 8, cfg.read32(addr, at + 8), 0xFFFF_FFFF));
            }
            regs.push((data, cfg.read32(addr, data) & 0xFFFF, 0xFFFF));
        }
        let mut host_bits = Vec::new();
        if let Some(msi) = caps.msi {
            host_bits.push((u16::from(msi.offset), HOST_MSI_CONTROL));
        }
        if let Some(msix) = caps.msix {
            host_bits.push((u16::from(msix.offset), HOST_MSIX_CONTROL));
        }
        if let Some(p) = caps.pcie {
            host_bits.push((u16::from(p.offset) + 8, HOST_DEVICE_CONTROL));
        }
        let mut rw1c = alloc::vec![(reg::COMMAND, 0xF900_0000 | (1 << 24))];
        if bridge {
            rw1c.push((0x1C, 0xF900_0000 | (1 << 24)));
        }
        let device_control = caps.pcie.map(|p| u16::from(p.offset) + 8);
        if let Some(p) = caps.pcie {
            let at = u16::from(p.offset);
            // Device Status, Link Status, Slot Status: upper halves.
            rw1c.extend([
                (at + 8, 0x000F_0000),
                (at + 0x10, 0xC000_0000),
                (at + 0x18, 0x011F_0000),
            ]);
        }
        let pmcsr = caps.power_management.map(|pm| u16::from(pm.offset) + 4);
        if let Some(at) = pmcsr {
            rw1c.push((at, 1 << 15));
        }
        Self {
            regs,
            bridge,
            device_control,
            pmcsr,
            rw1c,
            host_bits,
            host_rom,
        }
    }

    /// The hardware ROM window `(address, size)`: the address firmware assigned to the
    /// real ROM BAR (read from the hardware now; the guest cannot change it, its writes
    /// are virtual). `None` without a ROM BAR or when none was assigned (address 0).
    pub fn rom_window(&self, cfg: &dyn ConfigSpace, addr: PciAddress) -> Option<(u64, u64)> {
        let rom = self.host_rom?;
        let base = cfg.read32(addr, rom.offset) & ROM_ADDRESS_MASK;
        (base != 0).then_some((u64::from(base), rom.size))
    }

    fn virtual_reg(&self, dword: u16) -> Option<&(u16, u32, u32)> {
        self.regs.iter().find(|r| r.0 == dword)
    }

    /// The dword at `dword` as the guest sees it.
    fn read_dword(&self, cfg: &dyn ConfigSpace, addr: PciAddress, dword: u16) -> u32 {
        match self.virtual_reg(dword) {
            Some(&(_, value, _)) => value,
            None => cfg.read32(addr, dword),
        }
    }
}

/// What a mediated config write asks the caller to do besides the write itself.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ConfigEffect {
    None,
    /// The guest set Initiate FLR: reset the function (the hypervisor's way).
    Reset,
}

/// A guest's config read: `size` 1, 2 or 4 bytes at `offset` (aligned, in range).
pub(crate) fn config_read(
    vc: &VirtualConfig,
    cfg: &dyn ConfigSpace,
    addr: PciAddress,
    offset: u64,
    size: u32,
) -> Result<u64, Errno> {
    check_config_access(offset, size)?;
    let dword = (offset & !3) as u16;
    let shift = (offset & 3) * 8;
    let value = u64::from(vc.read_dword(cfg, addr, dword)) >> shift;
    Ok(value & size_mask(size))
}

/// A guest's config write, mediated (see the module docs).
pub(crate) fn config_write(
    vc: &mut VirtualConfig,
    cfg: &dyn ConfigSpace,
    addr: PciAddress,
    offset: u64,
    size: u32,
    data: u64,
) -> Result<ConfigEffect, Errno> {
    check_config_access(offset, size)?;
    let dword = (offset & !3) as u16;
    let shift = ((offset & 3) * 8) as u32;
    // The bytes the guest writes, as a mask and value within the dword.
    let lanes = (size_mask(size) as u32).wrapping_shl(shift);
    let lanes = if size == 4 { 0xFFFF_FFFF } else { lanes };
    let new = ((data & size_mask(size)) as u32).wrapping_shl(shift) & lanes;
    if let Some(r) = vc.regs.iter_mut().find(|r| r.0 == dword) {
        let (_, value, mask) = *r;
        let merged = (value & !lanes) | new;
        r.1 = (value & !mask) | (merged & mask);
        return Ok(ConfigEffect::None);
    }
    if vc.bridge && dword == reg::BRIDGE_BUS_NUMBERS {
        // Primary, secondary, subordinate bus numbers and the secondary latency timer:
        // the host's topology, never the guest's.
        return Ok(ConfigEffect::None);
    }
    let hw = cfg.read32(addr, dword);
    let rw1c = vc
        .rw1c
        .iter()
        .filter(|r| r.0 == dword)
        .fold(0u32, |m, r| m | r.1);
    // Other lanes: as read, except write-1-to-clear bits, written as 0.
    let mut value = (hw & !lanes & !rw1c) | new;
    let mut effect = ConfigEffect::None;
    if dword == reg::COMMAND {
        let command = value as u16;
        let hw_command = hw as u16;
        let command = (hw_command & !COMMAND_PASS) | (command & COMMAND_PASS);
        // Status: only the guest's own write-1-to-clear bits.
        value = (value & 0xFFFF_0000 & lanes) | u32::from(command);
    }
    if Some(dword) == vc.device_control && value & (1 << 15) != 0 {
        value &= !(1 << 15);
        effect = ConfigEffect::Reset;
    }
    if Some(dword) == vc.pmcsr {
        value = (value & !0x3) | (hw & 0x3);
    }
    let keep = vc
        .host_bits
        .iter()
        .filter(|r| r.0 == dword)
        .fold(0u32, |m, r| m | r.1);
    value = (value & !keep) | (hw & keep);
    cfg.write32(addr, dword, value);
    Ok(effect)
}

fn size_mask(size: u32) -> u64 {
    match size {
        8 => u64::MAX,
        s => (1u64 << (8 * s)) - 1,
    }
}

fn check_config_access(offset: u64, size: u32) -> Result<(), Errno> {
    if !matches!(size, 1 | 2 | 4) || offset % u64::from(size) != 0 {
        return Err(Errno::EINVAL);
    }
    match offset.checked_add(u64::from(size)) {
        Some(end) if end <= CONFIG_REGION_SIZE => Ok(()),
        _ => Err(Errno::EINVAL),
    }
}

/// Where a BAR access goes, after [`bar_access`]'s checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BarTarget {
    /// A host-physical address inside a memory BAR.
    Memory(u64),
    /// A port inside an I/O BAR.
    Port(u16),
}

/// The target of a BAR access, after the checks: region a BAR that is assigned
/// (address ≠ 0); `size` 1, 2, 4 or 8 for memory, 1, 2 or 4 for I/O (x86 has no 8-byte
/// port access); `offset` a multiple of `size`; the access inside the BAR as
/// enumerated; for I/O, every port of it below 0x10000 (a 32-bit I/O BAR placed
/// higher is unreachable on x86). Anything else is `EINVAL`.
pub(super) fn bar_access(
    function: &GroupDevice,
    index: u32,
    offset: u64,
    size: u32,
) -> Result<BarTarget, Errno> {
    if index > REGION_BAR5 || !matches!(size, 1 | 2 | 4 | 8) || offset % u64::from(size) != 0 {
        return Err(Errno::EINVAL);
    }
    let bar = function
        .bars
        .iter()
        .find(|b| u32::from(b.index) == index)
        .ok_or(Errno::EINVAL)?;
    if bar.address == 0 {
        return Err(Errno::EINVAL);
    }
    let end = offset.checked_add(u64::from(size)).ok_or(Errno::EINVAL)?;
    if end > bar.size {
        return Err(Errno::EINVAL);
    }
    let at = bar.address.checked_add(offset).ok_or(Errno::EINVAL)?;
    if bar.kind != BarKind::Io {
        return Ok(BarTarget::Memory(at));
    }
    if size == 8
        || at.saturating_add(u64::from(size)) > 0x1_0000
        || !super::device::decodes_io(function)
    {
        return Err(Errno::EINVAL);
    }
    u16::try_from(at)
        .map(BarTarget::Port)
        .map_err(|_| Errno::EINVAL)
}

impl Vfio {
    /// `DEVICE_REGION_READ` and `DEVICE_REGION_WRITE`.
    pub(super) fn device_region_access(
        &mut self,
        guest: GuestId,
        mem: &mut dyn GuestRam,
        handle: u64,
        gpa: u64,
        write: bool,
    ) -> Result<u64, Errno> {
        let d = self.device_handle(guest, handle)?;
        let function = self.function(d)?.clone();
        let (_, bytes) = read_args::<{ RegionAccess::SIZE }>(&*mem, gpa, min_size::REGION_ACCESS)?;
        let mut access = RegionAccess::from_bytes(&bytes);
        if access.flags != 0 {
            return Err(Errno::EINVAL);
        }
        let (index, offset, size) = (access.index, access.offset, access.size);
        if index == REGION_CONFIG {
            let vc = &mut self.devices.get_mut(&d).ok_or(Errno::EBADF)?.vconfig;
            if write {
                let effect = config_write(
                    vc,
                    &*self.config,
                    function.address,
                    offset,
                    size,
                    access.data,
                )?;
                if effect == ConfigEffect::Reset {
                    log::info!(target: "vfio", "guest {}: device {}: Initiate FLR written: resetting it", guest.0, function.address);
                    self.reset_device(d)?;
                }
                return Ok(0);
            }
            access.data = config_read(vc, &*self.config, function.address, offset, size)?;
        } else if index == REGION_ROM {
            if write {
                return Err(Errno::EINVAL);
            }
            access.data = self.rom_read(d, function.address, offset, size)?;
        } else {
            let target = bar_access(&function, index, offset, size)?;
            let (table, pba) =
                super::msix::msix_overlap(&*self.config, &function, index, offset, u64::from(size));
            if !write && table {
                // The table's messages are the hypervisor's: all-ones, as vfio-pci.
                mem.write(gpa + 24, &size_mask(size).to_le_bytes())?;
                return Ok(0);
            }
            if write && (table || pba) {
                // The MSI-X table and PBA are the hypervisor's: dropped, as Linux's
                // vfio-pci drops them (see `msix`).
                log::debug!(target: "vfio", "guest {}: device {}: write to the MSI-X table/PBA (BAR{index} {offset:#x}) dropped", guest.0, function.address);
                return Ok(0);
            }
            // A memory access while the guest has memory decoding off would be an
            // Unsupported Request on real hardware (fatal on some platforms; Linux's
            // vfio-pci answers EIO): refused.
            if matches!(target, BarTarget::Memory(_))
                && self.config.read16(function.address, reg::COMMAND) & reg::COMMAND_MEMORY_SPACE
                    == 0
            {
                return Err(Errno::EINVAL);
            }
            let hw = self.device_hw.as_mut().ok_or(Errno::EINVAL)?;
            let value = access.data & size_mask(size);
            access.data = match (target, write) {
                (BarTarget::Memory(hpa), true) => {
                    if !hw.mmio_write(hpa, size, value) {
                        return Err(Errno::EINVAL);
                    }
                    return Ok(0);
                }
                (BarTarget::Memory(hpa), false) => hw.mmio_read(hpa, size).ok_or(Errno::EINVAL)?,
                (BarTarget::Port(port), true) => {
                    // `bar_access` refused size 8: the value fits in 32 bits.
                    if !hw.io_write(port, size, value as u32) {
                        return Err(Errno::EINVAL);
                    }
                    return Ok(0);
                }
                (BarTarget::Port(port), false) => {
                    u64::from(hw.io_read(port, size).ok_or(Errno::EINVAL)?) & size_mask(size)
                }
            };
        }
        mem.write(gpa + 24, &access.data.to_le_bytes())?;
        Ok(0)
    }

    /// A read of region 6, the expansion ROM: 1, 2 or 4 bytes, aligned, inside the ROM
    /// BAR's size, which firmware must have given an address. The whole window must be
    /// device memory the platform accepts before its decoding is switched on; then the
    /// real ROM BAR's enable bit (and memory decoding, if the guest turned it off) are
    /// set for the one read and restored right after, whatever the read gave.
    fn rom_read(
        &mut self,
        d: DeviceId,
        addr: PciAddress,
        offset: u64,
        size: u32,
    ) -> Result<u64, Errno> {
        if !matches!(size, 1 | 2 | 4) || offset % u64::from(size) != 0 {
            return Err(Errno::EINVAL);
        }
        let vc = &self.devices.get(&d).ok_or(Errno::EBADF)?.vconfig;
        let rom = vc.host_rom.ok_or(Errno::EINVAL)?;
        let (base, len) = vc.rom_window(&*self.config, addr).ok_or(Errno::EINVAL)?;
        match offset.checked_add(u64::from(size)) {
            Some(end) if end <= len => {}
            _ => return Err(Errno::EINVAL),
        }
        // A stale firmware address could lie over a BAR (another function's, or its
        // own): enabling the ROM there, even for one read, would make two decoders claim
        // one window.
        let end = base.saturating_add(len);
        let clash = self
            .groups
            .iter()
            .flat_map(|g| g.desc.devices.iter())
            .flat_map(|f| f.bars.iter())
            .any(|b| {
                b.kind != BarKind::Io
                    && b.address != 0
                    && b.address < end
                    && base < b.address.saturating_add(b.size)
            });
        let hw = self.device_hw.as_mut().ok_or(Errno::EINVAL)?;
        if clash || !hw.mmio_window_allowed(base, len) {
            log::warn!(target: "vfio", "device {addr}: ROM BAR {base:#x}+{len:#x} is not plain device memory of its own; not enabled");
            return Err(Errno::EINVAL);
        }
        let cfg = &*self.config;
        let original = cfg.read32(addr, rom.offset);
        let memory_off = cfg.read16(addr, reg::COMMAND) & reg::COMMAND_MEMORY_SPACE == 0;
        if memory_off {
            set_command(cfg, addr, reg::COMMAND_MEMORY_SPACE, 0);
        }
        cfg.write32(addr, rom.offset, original | ROM_ENABLE);
        // No overflow: `base` is a 32-bit address and `offset` < `len`.
        let value = hw.mmio_read(base + offset, size);
        cfg.write32(addr, rom.offset, original);
        if memory_off {
            set_command(cfg, addr, 0, reg::COMMAND_MEMORY_SPACE);
        }
        value.ok_or(Errno::EINVAL)
    }

    /// The device's virtual config, re-read from the hardware (after a reset).
    pub(super) fn refresh_vconfig(&mut self, d: DeviceId) {
        let Ok(function) = self.function(d).cloned() else {
            return;
        };
        let vc = VirtualConfig::new(&*self.config, &function);
        if let Some(device) = self.devices.get_mut(&d) {
            device.vconfig = vc;
        }
    }
}
