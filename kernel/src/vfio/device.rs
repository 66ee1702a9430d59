//! Devices: one function of an open group, opened by name.
//!
//! Opening turns on memory decoding and bus mastering (the IOMMU still confines the
//! DMA to the container's mappings: the group is attached before a device can be
//! opened), and I/O decoding for a function with I/O BARs, all of them assigned (as
//! vfio-pci's `pci_enable_device` does; the guest cannot turn it off or on: COMMAND's
//! I/O bit is the hypervisor's). Regions follow vfio-pci's layout; memory BARs can be
//! mapped into the guest (when page-sized and aligned) and read and written through
//! `DEVICE_REGION_READ` / `WRITE`, I/O BARs read and written through them (port I/O
//! by the hypervisor), the ROM read, config space read and written, mediated
//! (`region`). VGA reports no size and no access flags.

/// The most regions one open device may have mapped at once (`ENOSPC` beyond).
pub const MAX_REGION_MAPPINGS: usize = 16;

use alloc::vec::Vec;

use sluice_abi::Errno;
use sluice_abi::vfio::{
    DEVICE_FLAGS_PCI, DEVICE_FLAGS_RESET, DEVICE_NAME_MAX, DeviceInfo, NUM_IRQS, NUM_REGIONS,
    REGION_BAR5, REGION_CONFIG, REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_READ,
    REGION_INFO_FLAG_WRITE, REGION_OFFSET_SHIFT, REGION_ROM, RegionInfo, RegionMap, min_size,
    parse_device_name,
};
use sluice_pci::{Bar, BarKind, reg};

use super::args::{out_len, read_args};
use super::handles::{DeviceId, Object};
use super::state::{Device, RegionMapping, Vfio, set_command};
use super::{GroupDevice, GuestId, GuestRam};

/// The page size of region mappings (the guest's nested tables map 4 KiB pages).
const PAGE: u64 = 4096;

use super::region::CONFIG_REGION_SIZE;

/// The BAR behind region `index` (0..=5), if implemented (the upper half of a 64-bit
/// BAR is not: it is part of the BAR below it).
fn bar(function: &GroupDevice, index: u32) -> Option<&Bar> {
    if index > REGION_BAR5 {
        return None;
    }
    function.bars.iter().find(|b| u32::from(b.index) == index)
}

/// Whether a BAR can be mapped into a guest: memory, at least a page, page aligned
/// and assigned (an unassigned BAR at address 0 would map host RAM), not wrapping.
fn mappable(bar: &Bar) -> bool {
    bar.kind != BarKind::Io
        && bar.size >= PAGE
        && bar.size % PAGE == 0
        && bar.address != 0
        && bar.address % PAGE == 0
        && bar.address.checked_add(bar.size).is_some()
}

/// Whether opening `function` turns its I/O decoding on: it has I/O BARs and firmware
/// placed every one of them wholly in the ports the platform gives devices
/// (`FIRST_DEVICE_PORT..0x10000`). An I/O BAR left at 0 would decode ports 0.. (the
/// legacy DMA controller's) the moment the bit is set, Linux refuses to enable such a
/// device; one placed below 0x1000 would claim legacy ports (COM1, the ACPI PM block)
/// from the platform. Otherwise I/O decoding stays off and no I/O BAR is offered.
pub(super) fn decodes_io(function: &GroupDevice) -> bool {
    let first = u64::from(crate::devhw::FIRST_DEVICE_PORT);
    let mut io = function.bars.iter().filter(|b| b.kind == BarKind::Io);
    io.clone().next().is_some()
        && io.all(|b| {
            b.address >= first && b.address.checked_add(b.size).is_some_and(|e| e <= 0x1_0000)
        })
}

/// `(size, flags)` of region `index` of `function`; `rom` is the hardware ROM window
/// `(address, size)` if the function has an assigned ROM BAR.
fn region(function: &GroupDevice, index: u32, rom: Option<(u64, u64)>) -> (u64, u32) {
    match index {
        0..=REGION_BAR5 => match bar(function, index) {
            Some(b) if mappable(b) => (
                b.size,
                REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE | REGION_INFO_FLAG_MMAP,
            ),
            // I/O BARs: through DEVICE_REGION_READ/WRITE while the function decodes I/O.
            Some(b) if b.kind == BarKind::Io => match decodes_io(function) {
                true => (b.size, REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE),
                false => (b.size, 0),
            },
            // Not mappable (small memory BARs), still readable and writable through
            // DEVICE_REGION_READ/WRITE when assigned.
            Some(b) if b.address != 0 => (b.size, REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE),
            Some(b) => (b.size, 0),
            None => (0, 0),
        },
        // As vfio-pci: the ROM BAR's size (not the image's), read only, when assigned.
        REGION_ROM => rom.map_or((0, 0), |(_, size)| (size, REGION_INFO_FLAG_READ)),
        REGION_CONFIG => (
            CONFIG_REGION_SIZE,
            REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE,
        ),
        // VGA: not offered.
        _ => (0, 0),
    }
}

/// Whether `[a, a + a_len)` and `[b, b + b_len)` overlap (no overflow: u128).
fn overlaps(a: u64, a_len: u64, b: u64, b_len: u64) -> bool {
    let (a, a_end) = (u128::from(a), u128::from(a) + u128::from(a_len));
    let (b, b_end) = (u128::from(b), u128::from(b) + u128::from(b_len));
    a < b_end && b < a_end
}

impl Vfio {
    /// The function an open device is.
    pub(super) fn function(&self, d: DeviceId) -> Result<&GroupDevice, Errno> {
        let device = self.devices.get(&d).ok_or(Errno::EBADF)?;
        self.groups
            .get(device.group.0)
            .and_then(|g| g.desc.devices.get(device.member))
            .ok_or(Errno::EBADF)
    }

    /// `GROUP_GET_DEVICE`: open a non-bridge function of the group by name.
    pub(super) fn group_get_device(
        &mut self,
        guest: GuestId,
        mem: &mut dyn GuestRam,
        handle: u64,
        name_gpa: u64,
        name_len: u64,
    ) -> Result<u64, Errno> {
        let index = self.group_handle(guest, handle)?;
        if name_len == 0 || name_len > DEVICE_NAME_MAX {
            return Err(Errno::EINVAL);
        }
        let mut name = [0u8; DEVICE_NAME_MAX as usize];
        let name = name.get_mut(..name_len as usize).ok_or(Errno::EINVAL)?;
        mem.read(name_gpa, name)?;
        let (segment, bus, devfn) = parse_device_name(name).ok_or(Errno::ENODEV)?;
        let group = self.groups.get(index.0).ok_or(Errno::EBADF)?;
        let member = group
            .desc
            .devices
            .iter()
            .position(|f| {
                !f.bridge
                    && f.address.segment == segment
                    && f.address.bus == bus
                    && f.address.device == devfn >> 3
                    && f.address.function == devfn & 7
            })
            .ok_or(Errno::ENODEV)?;
        let owner = group.owner.as_ref().ok_or(Errno::EBADF)?;
        let active = owner
            .container
            .and_then(|c| self.containers.get(&c))
            .is_some_and(|c| c.model.is_some());
        if !active {
            return Err(Errno::EINVAL);
        }
        if owner.open.contains_key(&member) {
            return Err(Errno::EBUSY);
        }
        let (address, io) = group
            .desc
            .devices
            .get(member)
            .map(|f| (f.address, decodes_io(f)))
            .ok_or(Errno::ENODEV)?;
        let vconfig = group
            .desc
            .devices
            .get(member)
            .map(|f| super::region::VirtualConfig::new(&*self.config, f))
            .unwrap_or_default();
        let id = DeviceId(self.next_device);
        let handle = self
            .guests
            .get_mut(&guest)
            .ok_or(Errno::EBADF)?
            .handles
            .insert(Object::Device(id), &mut self.generations)?;
        self.next_device = self.next_device.wrapping_add(1);
        self.devices.insert(
            id,
            Device {
                owner: guest,
                group: index,
                member,
                regions: Vec::new(),
                vconfig,
            },
        );
        if let Some(owner) = self.owner_mut(index) {
            owner.open.insert(member, id);
            owner.refs += 1;
        }
        let io_space = if io { reg::COMMAND_IO_SPACE } else { 0 };
        set_command(
            &*self.config,
            address,
            // INTx stays off until the guest routes it (see `intx`).
            reg::COMMAND_MEMORY_SPACE
                | reg::COMMAND_BUS_MASTER
                | reg::COMMAND_INTX_DISABLE
                | io_space,
            0,
        );
        let decoding = if io { "memory and I/O" } else { "memory" };
        log::info!(target: "vfio", "guest {}: device {address} opened ({decoding} decoding and bus mastering on, INTx disabled)", guest.0);
        Ok(handle)
    }

    /// `DEVICE_GET_INFO`.
    pub(super) fn device_get_info(
        &mut self,
        guest: GuestId,
        mem: &mut dyn GuestRam,
        handle: u64,
        gpa: u64,
    ) -> Result<u64, Errno> {
        let d = self.device_handle(guest, handle)?;
        let resettable = self.function(d)?.reset.is_some();
        let (argsz, bytes) = read_args::<{ DeviceInfo::SIZE }>(&*mem, gpa, min_size::DEVICE_INFO)?;
        if DeviceInfo::from_bytes(&bytes).flags != 0 {
            return Err(Errno::EINVAL);
        }
        let info = DeviceInfo {
            argsz,
            flags: DEVICE_FLAGS_PCI | if resettable { DEVICE_FLAGS_RESET } else { 0 },
            num_regions: NUM_REGIONS,
            num_irqs: NUM_IRQS,
            cap_offset: 0,
            _pad: 0,
        };
        let n = out_len(argsz, min_size::DEVICE_INFO, DeviceInfo::SIZE);
        mem.write(gpa, info.to_bytes().get(..n).unwrap_or_default())?;
        Ok(0)
    }

    /// `DEVICE_GET_REGION_INFO`.
    pub(super) fn device_get_region_info(
        &mut self,
        guest: GuestId,
        mem: &mut dyn GuestRam,
        handle: u64,
        gpa: u64,
    ) -> Result<u64, Errno> {
        let d = self.device_handle(guest, handle)?;
        let function = self.function(d)?;
        let (argsz, bytes) = read_args::<{ RegionInfo::SIZE }>(&*mem, gpa, min_size::REGION_INFO)?;
        let input = RegionInfo::from_bytes(&bytes);
        if input.flags != 0 || input.index >= NUM_REGIONS {
            return Err(Errno::EINVAL);
        }
        let rom = self
            .devices
            .get(&d)
            .and_then(|dev| dev.vconfig.rom_window(&*self.config, function.address));
        let (size, flags) = region(function, input.index, rom);
        let info = RegionInfo {
            argsz,
            flags,
            index: input.index,
            cap_offset: 0,
            size,
            offset: u64::from(input.index) << REGION_OFFSET_SHIFT,
        };
        mem.write(gpa, &info.to_bytes())?;
        Ok(0)
    }

    /// `DEVICE_MAP_REGION`: map part of a memory BAR at a guest-physical address
    /// outside the guest's RAM, until the device is closed. The device's group must be
    /// bound to the VM (`EPERM`, checked after the request's own `EINVAL`s).
    pub(super) fn device_map_region(
        &mut self,
        guest: GuestId,
        mem: &mut dyn GuestRam,
        handle: u64,
        gpa: u64,
    ) -> Result<u64, Errno> {
        let d = self.device_handle(guest, handle)?;
        let function = self.function(d)?;
        let (_, bytes) = read_args::<{ RegionMap::SIZE }>(&*mem, gpa, min_size::REGION_MAP)?;
        let map = RegionMap::from_bytes(&bytes);
        if map.flags != 0 || map.index >= NUM_REGIONS {
            return Err(Errno::EINVAL);
        }
        let bar = bar(function, map.index)
            .filter(|b| mappable(b))
            .ok_or(Errno::EINVAL)?;
        if map.size == 0 || (map.offset | map.size | map.gpa) % PAGE != 0 {
            return Err(Errno::EINVAL);
        }
        let end = map.offset.checked_add(map.size).ok_or(Errno::EINVAL)?;
        if end > bar.size {
            return Err(Errno::EINVAL);
        }
        map.gpa.checked_add(map.size).ok_or(Errno::EINVAL)?;
        let (ram_base, ram_size) = mem.ram();
        if overlaps(map.gpa, map.size, ram_base, ram_size) {
            return Err(Errno::EINVAL);
        }
        // BARs go into the VM only for a group bound to it (GROUP_BIND_VM), as KVM
        // needs the kvm-vfio registration. Unbinding later keeps what is mapped (as
        // Linux keeps a process's mmaps when the group leaves kvm-vfio); only new
        // mappings are refused.
        let group = self.devices.get(&d).ok_or(Errno::EBADF)?.group;
        if !self.bound(group) {
            return Err(Errno::EPERM);
        }
        let taken = self
            .devices
            .values()
            .filter(|other| other.owner == guest)
            .flat_map(|other| &other.regions)
            .any(|r| overlaps(map.gpa, map.size, r.gpa, r.size));
        if taken {
            return Err(Errno::EEXIST);
        }
        // Bounded: each region mapping costs heap and nested-table pages.
        if self
            .devices
            .get(&d)
            .is_some_and(|dev| dev.regions.len() >= MAX_REGION_MAPPINGS)
        {
            return Err(Errno::ENOSPC);
        }
        self.check_heap()?;
        // Cannot overflow: mappable() checked address + size, and offset < size.
        let hpa = bar.address + map.offset;
        let address = function.address;
        mem.map_mmio(map.gpa, hpa, map.size)?;
        if let Some(device) = self.devices.get_mut(&d) {
            device.regions.push(RegionMapping {
                gpa: map.gpa,
                size: map.size,
                hpa,
            });
        }
        log::debug!(target: "vfio", "guest {}: device {address} BAR{} {:#x}+{:#x} mapped at gpa {:#x}", guest.0, map.index, map.offset, map.size, map.gpa);
        Ok(0)
    }
}
