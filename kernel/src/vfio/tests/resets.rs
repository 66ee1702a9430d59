//! DEVICE_RESET, the reset of a released group, and DEVICE_REGION_READ/WRITE: config
//! space mediation (BARs, ROM, MSI, command, FLR), memory BARs, I/O BARs and the
//! expansion ROM, on a machine of its own whose fake config space and fake platform
//! (MMIO, ports, a ROM that decodes only while enabled) the tests inspect.

use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use sluice_abi::Errno;
use sluice_abi::vfio::{
    DEVICE_FLAGS_RESET, DeviceInfo, REGION_CONFIG, REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_READ,
    REGION_INFO_FLAG_WRITE, REGION_ROM, RegionAccess, RegionInfo, VfioCall,
};
use sluice_pci::fake::{FakeConfigSpace, FakeFunction, FakeReset};
use sluice_pci::{ConfigSpace, EXPANSION_ROM, PciAddress, PciePortType, ResetMethod, reg};

use super::fakes::{FakeIommu, FakeRam, FakeState};
use super::*;
use crate::vfio::DeviceHw;

const NVME: PciAddress = PciAddress::new(0, 0, 5, 0);
const PLAIN: PciAddress = PciAddress::new(0, 0, 6, 0);
/// I/O BARs the hypervisor must not reach: BAR0 at 0x600 (where firmware might put a
/// legacy device; q35's ACPI PM block), BAR1 a 32-bit I/O BAR above 0xFFFF.
const LOW_IO: PciAddress = PciAddress::new(0, 0, 7, 0);
/// An I/O BAR firmware left unassigned (address 0).
const NO_IO: PciAddress = PciAddress::new(0, 0, 8, 0);
const PORT: PciAddress = PciAddress::new(0, 0, 0x1c, 0);
const BEHIND0: PciAddress = PciAddress::new(0, 1, 0, 0);
const BEHIND1: PciAddress = PciAddress::new(0, 1, 0, 1);
const NVME_BAR0: u64 = 0xfe00_0000;
const SCRATCH: u16 = 0xF0;
/// MSI is the second capability of the NVMe-like function (PCIe: 0x40..0x7C).
const NVME_MSI: u16 = 0x7C;
/// The NVMe-like function's I/O BAR (BAR3).
const NVME_IO: u16 = 0xc000;
/// Its expansion ROM: 256 KiB at this address (the ROM BAR's writable bits).
const NVME_ROM: u32 = 0xfe20_0000;
const NVME_ROM_SIZE: u64 = 0x4_0000;

/// What a port access did: `(write, port, size, value)`.
type PortAccess = (bool, u16, u32, u32);

/// The fake platform: delays recorded, BAR memory and ports as byte maps, and the
/// NVMe-like function's ROM, which (as hardware) answers at its ROM BAR's address only
/// while the ROM BAR's enable bit and COMMAND's memory space bit are set — all-ones
/// otherwise.
#[derive(Default)]
struct HwState {
    delays: Vec<u32>,
    memory: BTreeMap<u64, u8>,
    ports: BTreeMap<u16, u8>,
    /// Every port access that reached the "hardware".
    port_log: Vec<PortAccess>,
    rom: Vec<u8>,
    /// `(ROM BAR, COMMAND)` as the hardware held them at each read of the ROM window.
    rom_reads: Vec<(u32, u16)>,
    /// Windows `[start, end)` `mmio_window_allowed` refuses (as the kernel refuses RAM).
    refused: Vec<(u64, u64)>,
}

struct FakeHw {
    state: Rc<RefCell<HwState>>,
    cfg: Rc<FakeConfigSpace>,
}

impl FakeHw {
    /// The ROM's bytes at `hpa` if the read falls in its window (all-ones while it does
    /// not decode); `None` for other addresses.
    fn rom_read(&self, hpa: u64, size: u32) -> Option<u64> {
        let window = u64::from(NVME_ROM)..u64::from(NVME_ROM) + NVME_ROM_SIZE;
        if !window.contains(&hpa) {
            return None;
        }
        let rom_bar = self.cfg.read32(NVME, EXPANSION_ROM);
        let command = self.cfg.read16(NVME, reg::COMMAND);
        let mut s = self.state.borrow_mut();
        s.rom_reads.push((rom_bar, command));
        let decoding = rom_bar & 1 != 0
            && rom_bar & 0xFFFF_F800 == NVME_ROM
            && command & reg::COMMAND_MEMORY_SPACE != 0;
        let at = (hpa - window.start) as usize;
        Some((0..size as usize).fold(0u64, |v, i| {
            let byte = if decoding {
                s.rom.get(at + i).copied().unwrap_or(0)
            } else {
                0xFF
            };
            v | u64::from(byte) << (8 * i)
        }))
    }
}

impl DeviceHw for FakeHw {
    fn delay_us(&mut self, us: u32) {
        self.state.borrow_mut().delays.push(us);
    }
    fn mmio_read(&mut self, hpa: u64, size: u32) -> Option<u64> {
        if let Some(v) = self.rom_read(hpa, size) {
            return Some(v);
        }
        let s = self.state.borrow();
        Some((0..u64::from(size)).fold(0u64, |v, i| {
            v | u64::from(s.memory.get(&(hpa + i)).copied().unwrap_or(0)) << (8 * i)
        }))
    }
    fn mmio_write(&mut self, hpa: u64, size: u32, value: u64) -> bool {
        let mut s = self.state.borrow_mut();
        for i in 0..u64::from(size) {
            s.memory.insert(hpa + i, (value >> (8 * i)) as u8);
        }
        true
    }
    fn mmio_window_allowed(&self, hpa: u64, len: u64) -> bool {
        let end = hpa + len;
        !self
            .state
            .borrow()
            .refused
            .iter()
            .any(|&(s, e)| s < end && hpa < e)
    }
    /// The kernel's own port policy ([`crate::devhw::port_access_allowed`]) decides.
    fn io_read(&mut self, port: u16, size: u32) -> Option<u32> {
        if !crate::devhw::port_access_allowed(port, size) {
            return None;
        }
        let mut s = self.state.borrow_mut();
        let value = (0..size).fold(0u32, |v, i| {
            v | u32::from(s.ports.get(&(port + i as u16)).copied().unwrap_or(0)) << (8 * i)
        });
        s.port_log.push((false, port, size, value));
        Some(value)
    }
    fn io_write(&mut self, port: u16, size: u32, value: u32) -> bool {
        if !crate::devhw::port_access_allowed(port, size) {
            return false;
        }
        let mut s = self.state.borrow_mut();
        for i in 0..size {
            s.ports.insert(port + i as u16, (value >> (8 * i)) as u8);
        }
        s.port_log.push((true, port, size, value));
        true
    }
}

/// Config space shared with the test, every write logged `(function, offset, value)`
/// (to see exactly what a ROM read did to the ROM BAR and COMMAND).
struct Logged {
    cfg: Rc<FakeConfigSpace>,
    writes: Rc<RefCell<Vec<(PciAddress, u16, u32)>>>,
}

impl ConfigSpace for Logged {
    fn read32(&self, addr: PciAddress, offset: u16) -> u32 {
        self.cfg.read32(addr, offset)
    }
    fn write32(&self, addr: PciAddress, offset: u16, value: u32) {
        self.writes.borrow_mut().push((addr, offset, value));
        self.cfg.write32(addr, offset, value)
    }
}

fn device(address: PciAddress, bars: Vec<Bar>, reset: Option<ResetMethod>) -> GroupDevice {
    GroupDevice {
        address,
        vendor_id: 0x1b36,
        device_id: 0x10,
        class: 0x01_08_02,
        bridge: false,
        host_owned: false,
        dma: DeviceDma {
            device: address,
            unit: UnitId(0),
            requester_ids: vec![address.bdf()],
        },
        bars,
        interrupt_pin: 1,
        intx_line: None,
        reset,
    }
}

struct ResetRig {
    rig: Rig,
    cfg: Rc<FakeConfigSpace>,
    hw: Rc<RefCell<HwState>>,
    /// Config writes made by the VFIO layer.
    writes: Rc<RefCell<Vec<(PciAddress, u16, u32)>>>,
}

fn rig() -> ResetRig {
    let nvme = FakeFunction::endpoint(0x1b36, 0x10, 0x01_08_02)
        .with_pcie_flags(PciePortType::Endpoint, true, false)
        .with_msi(0, true, false)
        .with_mem64_bar(0, NVME_BAR0, 0x4000, false)
        .with_mem32_bar(2, 0xfe10_0000, 0x100, false)
        .with_io_bar(3, NVME_IO, 0x40)
        .with_u32(EXPANSION_ROM, NVME_ROM)
        .with_writable_mask(EXPANSION_ROM, 0xFFFC_0001)
        .with_u32(SCRATCH, 0x1111_1111);
    let plain = FakeFunction::pcie_endpoint(0x1234, 0x11e8).with_mem32_bar(
        0,
        0xfea0_0000,
        0x10_0000,
        false,
    );
    let behind = || {
        FakeFunction::pcie_endpoint(0x8086, 0x10d3)
            .multifunction()
            .with_u32(SCRATCH, 0x1111_1111)
    };
    let cfg = Rc::new(
        FakeConfigSpace::new()
            .with(NVME, nvme)
            .with(PLAIN, plain)
            .with(PORT, FakeFunction::root_port(0, 1, 1))
            .with(BEHIND0, behind())
            .with(BEHIND1, behind())
            .with(
                LOW_IO,
                FakeFunction::conventional_endpoint(0x1234, 0x0007).with_io_bar(0, 0x600, 0x20),
            )
            .with(
                NO_IO,
                FakeFunction::conventional_endpoint(0x1234, 0x0008).with_io_bar(0, 0, 0x20),
            ),
    );
    assert_eq!(cfg.read8(NVME, NVME_MSI), sluice_pci::cap_id::MSI, "layout");
    let mem64 = |index, address, size| Bar {
        index,
        kind: BarKind::Mem64,
        prefetchable: false,
        address,
        size,
    };
    let groups = vec![
        GroupDesc {
            id: 1,
            devices: vec![device(
                NVME,
                vec![
                    mem64(0, NVME_BAR0, 0x4000),
                    Bar {
                        kind: BarKind::Mem32,
                        ..mem64(2, 0xfe10_0000, 0x100)
                    },
                    Bar {
                        kind: BarKind::Io,
                        ..mem64(3, u64::from(NVME_IO), 0x40)
                    },
                ],
                Some(ResetMethod::Flr),
            )],
        },
        GroupDesc {
            id: 2,
            devices: vec![device(PLAIN, vec![], None)],
        },
        GroupDesc {
            id: 3,
            devices: vec![
                GroupDevice {
                    bridge: true,
                    ..device(PORT, vec![], None)
                },
                device(
                    BEHIND0,
                    vec![],
                    Some(ResetMethod::BusReset { bridge: PORT }),
                ),
                device(
                    BEHIND1,
                    vec![],
                    Some(ResetMethod::BusReset { bridge: PORT }),
                ),
            ],
        },
        GroupDesc {
            id: 4,
            devices: vec![device(
                LOW_IO,
                vec![
                    Bar {
                        kind: BarKind::Io,
                        ..mem64(0, 0x600, 0x20)
                    },
                    Bar {
                        kind: BarKind::Io,
                        ..mem64(1, 0x1_0000, 0x20)
                    },
                ],
                None,
            )],
        },
        GroupDesc {
            id: 5,
            devices: vec![device(
                NO_IO,
                vec![Bar {
                    kind: BarKind::Io,
                    ..mem64(0, 0, 0x20)
                }],
                None,
            )],
        },
    ];
    let state = Rc::new(RefCell::new(FakeState::new()));
    let writes = Rc::new(RefCell::new(Vec::new()));
    let mut vfio = Vfio::new(
        Box::new(FakeIommu(state.clone())),
        Box::new(Logged {
            cfg: cfg.clone(),
            writes: writes.clone(),
        }),
        groups,
    );
    let hw = Rc::new(RefCell::new(HwState::default()));
    vfio.set_device_hw(Box::new(FakeHw {
        state: hw.clone(),
        cfg: cfg.clone(),
    }));
    vfio.add_guest(A, &[1, 2, 3, 4, 5]);
    vfio.add_guest(B, &[1, 2, 3]);
    ResetRig {
        rig: Rig {
            vfio,
            iommu: state,
            a: FakeRam::new(RAM_SIZE, 0x4000_0000),
            b: FakeRam::new(RAM_SIZE, 0x8000_0000),
        },
        cfg,
        hw,
        writes,
    }
}

impl ResetRig {
    fn open_device(&mut self, guest: GuestId, group: u64, name: &str) -> (u64, u64) {
        let (c, gs) = self.rig.active(guest, &[group]);
        let d = self.rig.get_device(guest, gs[0], name).unwrap();
        (c, d)
    }

    fn info_flags(&mut self, d: u64) -> u32 {
        let info = DeviceInfo {
            argsz: DeviceInfo::SIZE as u32,
            ..DeviceInfo::default()
        };
        self.rig.a.put(ARGS, &info.to_bytes());
        self.rig
            .call(
                A,
                VfioCall::DeviceGetInfo {
                    device: d,
                    info: ARGS,
                },
            )
            .unwrap();
        let mut b = [0u8; DeviceInfo::SIZE];
        b.copy_from_slice(self.rig.a.get(ARGS, DeviceInfo::SIZE));
        DeviceInfo::from_bytes(&b).flags
    }

    fn region_flags(&mut self, d: u64, index: u32) -> u32 {
        self.region_info(d, index).flags
    }

    fn region_info(&mut self, d: u64, index: u32) -> RegionInfo {
        let info = RegionInfo {
            argsz: RegionInfo::SIZE as u32,
            index,
            ..RegionInfo::default()
        };
        self.rig.a.put(ARGS, &info.to_bytes());
        self.rig
            .call(
                A,
                VfioCall::DeviceGetRegionInfo {
                    device: d,
                    info: ARGS,
                },
            )
            .unwrap();
        let mut b = [0u8; RegionInfo::SIZE];
        b.copy_from_slice(self.rig.a.get(ARGS, RegionInfo::SIZE));
        RegionInfo::from_bytes(&b)
    }

    fn access(
        &mut self,
        d: u64,
        index: u32,
        offset: u64,
        size: u32,
        data: u64,
        write: bool,
    ) -> Result<u64, Errno> {
        let access = RegionAccess {
            argsz: RegionAccess::SIZE as u32,
            flags: 0,
            index,
            size,
            offset,
            data,
        };
        self.rig.a.put(ARGS, &access.to_bytes());
        let call = if write {
            VfioCall::DeviceRegionWrite {
                device: d,
                access: ARGS,
            }
        } else {
            VfioCall::DeviceRegionRead {
                device: d,
                access: ARGS,
            }
        };
        self.rig.call(A, call)?;
        let mut b = [0u8; RegionAccess::SIZE];
        b.copy_from_slice(self.rig.a.get(ARGS, RegionAccess::SIZE));
        Ok(RegionAccess::from_bytes(&b).data)
    }

    fn read(&mut self, d: u64, index: u32, offset: u64, size: u32) -> Result<u64, Errno> {
        self.access(d, index, offset, size, 0, false)
    }

    fn write(
        &mut self,
        d: u64,
        index: u32,
        offset: u64,
        size: u32,
        value: u64,
    ) -> Result<u64, Errno> {
        self.access(d, index, offset, size, value, true)
    }
}

#[test]
fn reset_flag_and_flr() {
    let mut r = rig();
    let (_, d) = r.open_device(A, 1, "0000:00:05.0");
    assert_ne!(r.info_flags(d) & DEVICE_FLAGS_RESET, 0);
    r.cfg.write32(NVME, SCRATCH, 0xdead_beef);
    let command = r.cfg.read16(NVME, reg::COMMAND);
    r.rig.call(A, VfioCall::DeviceReset { device: d }).unwrap();
    assert_eq!(r.cfg.resets(), [(NVME, FakeReset::Flr)]);
    assert_eq!(
        r.cfg.read32(NVME, SCRATCH),
        0x1111_1111,
        "device state gone"
    );
    assert_eq!(
        r.cfg.read32(NVME, reg::BAR0),
        NVME_BAR0 as u32 | 4,
        "BAR restored"
    );
    assert_eq!(
        r.cfg.read16(NVME, reg::COMMAND),
        command,
        "command restored"
    );
    let waited: u64 = r.hw.borrow().delays.iter().map(|&u| u64::from(u)).sum();
    assert!(waited >= 100_000, "waited {waited} us");
    // A wrong handle kind, a forged one.
    assert_eq!(
        r.rig.call(A, VfioCall::DeviceReset { device: 0x7777 }),
        Err(Errno::EBADF)
    );
}

#[test]
fn no_method_is_einval() {
    let mut r = rig();
    let (c, d) = r.open_device(A, 2, "0000:00:06.0");
    assert_eq!(r.info_flags(d) & DEVICE_FLAGS_RESET, 0);
    assert_eq!(
        r.rig.call(A, VfioCall::DeviceReset { device: d }),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        r.rig.call(A, VfioCall::DeviceReset { device: c }),
        Err(Errno::ENOTTY)
    );
    assert!(r.cfg.resets().is_empty());
}

#[test]
fn release_resets_the_group_once_per_bus() {
    let mut r = rig();
    let (_, d) = r.open_device(A, 3, "0000:01:00.1");
    r.cfg.write32(BEHIND1, SCRATCH, 0xdead_beef);
    assert!(r.cfg.resets().is_empty());
    r.rig.release(A);
    // One bus reset, which reset both functions on bus 1.
    assert_eq!(
        r.cfg.resets(),
        [(BEHIND0, FakeReset::Bus), (BEHIND1, FakeReset::Bus)]
    );
    assert_eq!(r.cfg.read32(BEHIND1, SCRATCH), 0x1111_1111);
    let _ = d;
    // The NVMe group released by close: FLR after its DMA is blocked.
    let (c, d) = r.open_device(B, 1, "0000:00:05.0");
    r.rig.call(B, VfioCall::Close { handle: d }).unwrap();
    assert_eq!(r.cfg.resets().len(), 2, "not on device close");
    let g = 1;
    let _ = (c, g);
    r.rig.release(B);
    assert_eq!(r.cfg.resets().last(), Some(&(NVME, FakeReset::Flr)));
    assert!(r.rig.attached().is_empty(), "blocked");
}

#[test]
fn region_info_flags() {
    let mut r = rig();
    let (_, d) = r.open_device(A, 1, "0000:00:05.0");
    let rw = REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE;
    assert_eq!(r.region_flags(d, 0), rw | REGION_INFO_FLAG_MMAP);
    assert_eq!(
        r.region_flags(d, 2),
        rw,
        "small memory BAR: read/write, no mmap"
    );
    assert_eq!(r.region_flags(d, 3), rw, "I/O BAR: read/write, never mmap");
    assert_eq!(r.region_info(d, 3).size, 0x40);
    assert_eq!(
        r.region_flags(d, REGION_ROM),
        REGION_INFO_FLAG_READ,
        "ROM: read only"
    );
    assert_eq!(
        r.region_info(d, REGION_ROM).size,
        NVME_ROM_SIZE,
        "the ROM BAR's size"
    );
    assert_eq!(r.region_flags(d, REGION_CONFIG), rw);
    assert_eq!(r.region_flags(d, 8), 0, "VGA");
    // An I/O BAR firmware left unassigned: size, no access.
    let (_, d) = r.open_device(A, 5, "0000:00:08.0");
    assert_eq!(r.region_flags(d, 0), 0);
    // No ROM BAR at all.
    let (_, d) = r.open_device(A, 2, "0000:00:06.0");
    assert_eq!(r.region_flags(d, REGION_ROM), 0);
    assert_eq!(r.region_info(d, REGION_ROM).size, 0);
}

#[test]
fn config_reads_show_the_device() {
    let mut r = rig();
    let (_, d) = r.open_device(A, 1, "0000:00:05.0");
    assert_eq!(r.read(d, REGION_CONFIG, 0, 4), Ok(0x0010_1b36));
    assert_eq!(r.read(d, REGION_CONFIG, 2, 2), Ok(0x0010));
    assert_eq!(r.read(d, REGION_CONFIG, 0x0b, 1), Ok(0x01));
    assert_eq!(
        r.read(d, REGION_CONFIG, u64::from(SCRATCH), 4),
        Ok(0x1111_1111)
    );
    for (offset, size) in [
        (1, 2),
        (2, 4),
        (0, 3),
        (0, 8),
        (4096, 1),
        (4094, 4),
        (u64::MAX, 1),
    ] {
        assert_eq!(
            r.read(d, REGION_CONFIG, offset, size),
            Err(Errno::EINVAL),
            "{offset} {size}"
        );
        assert_eq!(
            r.write(d, REGION_CONFIG, offset, size, 0),
            Err(Errno::EINVAL)
        );
    }
    assert_eq!(r.read(d, 8, 0, 4), Err(Errno::EINVAL), "VGA");
}

#[test]
fn bar_writes_are_virtual_and_size() {
    let mut r = rig();
    let (_, d) = r.open_device(A, 1, "0000:00:05.0");
    let bar0 = u64::from(reg::BAR0);
    let writes = r.cfg.bar_write_count();
    assert_eq!(r.read(d, REGION_CONFIG, bar0, 4), Ok(NVME_BAR0 | 4));
    r.write(d, REGION_CONFIG, bar0, 4, 0xFFFF_FFFF).unwrap();
    assert_eq!(
        r.read(d, REGION_CONFIG, bar0, 4),
        Ok(0xFFFF_C004),
        "16 KiB, mem64"
    );
    r.write(d, REGION_CONFIG, bar0 + 4, 4, 0xFFFF_FFFF).unwrap();
    assert_eq!(r.read(d, REGION_CONFIG, bar0 + 4, 4), Ok(0xFFFF_FFFF));
    r.write(d, REGION_CONFIG, bar0, 4, 0x1234_5678).unwrap();
    assert_eq!(r.read(d, REGION_CONFIG, bar0, 4), Ok(0x1234_4004));
    // Unimplemented slot, I/O BAR.
    r.write(d, REGION_CONFIG, bar0 + 16, 4, 0xFFFF_FFFF)
        .unwrap();
    assert_eq!(r.read(d, REGION_CONFIG, bar0 + 16, 4), Ok(0));
    r.write(d, REGION_CONFIG, bar0 + 12, 4, 0xFFFF_FFFF)
        .unwrap();
    assert_eq!(r.read(d, REGION_CONFIG, bar0 + 12, 4), Ok(0xFFFF_FFC1));
    // ROM: sized by the probe at open, virtual afterwards.
    r.write(d, REGION_CONFIG, u64::from(EXPANSION_ROM), 4, 0xFFFF_FFFF)
        .unwrap();
    assert_eq!(
        r.read(d, REGION_CONFIG, u64::from(EXPANSION_ROM), 4),
        Ok(0xFFFC_0001)
    );
    // Nothing reached the hardware.
    assert_eq!(r.cfg.bar_write_count(), writes);
    assert_eq!(r.cfg.read32(NVME, reg::BAR0), NVME_BAR0 as u32 | 4);
    assert_eq!(r.cfg.read32(NVME, reg::BAR0 + 4), 0);
    assert_eq!(r.cfg.read32(NVME, EXPANSION_ROM), 0xfe20_0000);
}

#[test]
fn msi_address_and_data_are_virtual() {
    let mut r = rig();
    let (_, d) = r.open_device(A, 1, "0000:00:05.0");
    let msi = u64::from(NVME_MSI);
    r.write(d, REGION_CONFIG, msi + 4, 4, 0xdead_0000).unwrap();
    r.write(d, REGION_CONFIG, msi + 8, 4, 0x1).unwrap();
    r.write(d, REGION_CONFIG, msi + 12, 2, 0x4321).unwrap();
    assert_eq!(r.read(d, REGION_CONFIG, msi + 4, 4), Ok(0xdead_0000));
    assert_eq!(r.read(d, REGION_CONFIG, msi + 8, 4), Ok(1));
    assert_eq!(r.read(d, REGION_CONFIG, msi + 12, 2), Ok(0x4321));
    for offset in [4u16, 8, 12] {
        assert_eq!(
            r.cfg.read32(NVME, NVME_MSI + offset),
            0,
            "hardware untouched"
        );
    }
}

#[test]
fn command_filter_and_flr_through_config() {
    let mut r = rig();
    let (_, d) = r.open_device(A, 1, "0000:00:05.0");
    // Open: memory and (it has an I/O BAR) I/O decoding, bus mastering on, INTx
    // disabled; I/O space and INTx disable are the hypervisor's bits.
    let on = reg::COMMAND_MEMORY_SPACE | reg::COMMAND_BUS_MASTER;
    let host = reg::COMMAND_IO_SPACE | reg::COMMAND_INTX_DISABLE;
    assert_eq!(r.cfg.read16(NVME, reg::COMMAND), on | host);
    r.write(d, REGION_CONFIG, 4, 2, 0x40).unwrap();
    assert_eq!(
        r.cfg.read16(NVME, reg::COMMAND),
        host,
        "parity bit dropped, I/O space and INTx disable kept"
    );
    r.write(d, REGION_CONFIG, 4, 4, u64::from(on)).unwrap();
    assert_eq!(r.cfg.read16(NVME, reg::COMMAND), on | host);
    assert_eq!(r.read(d, REGION_CONFIG, 4, 2), Ok(u64::from(on | host)));
    // The guest cannot clear INTx disable behind the hypervisor.
    r.write(d, REGION_CONFIG, 4, 2, u64::from(on)).unwrap();
    assert_ne!(
        r.cfg.read16(NVME, reg::COMMAND) & reg::COMMAND_INTX_DISABLE,
        0
    );
    // Initiate FLR written by the guest: the hypervisor's reset, header restored.
    r.cfg.write32(NVME, SCRATCH, 0xdead_beef);
    r.write(d, REGION_CONFIG, 0x48, 2, 1 << 15).unwrap();
    assert_eq!(r.cfg.resets(), [(NVME, FakeReset::Flr)]);
    assert_eq!(r.cfg.read32(NVME, SCRATCH), 0x1111_1111);
    assert_eq!(r.cfg.read32(NVME, reg::BAR0), NVME_BAR0 as u32 | 4);
    assert_eq!(r.cfg.read16(NVME, reg::COMMAND), on | host);
}

#[test]
fn bridge_bus_numbers_never_reach_the_hardware() {
    let cfg = FakeConfigSpace::new().with(PORT, FakeFunction::root_port(0, 1, 1));
    let port = device(PORT, vec![], None);
    let mut vc = crate::vfio::region::VirtualConfig::new(&cfg, &port);
    let before = cfg.read32(PORT, reg::BRIDGE_BUS_NUMBERS);
    crate::vfio::region::config_write(&mut vc, &cfg, PORT, 0x19, 1, 7).unwrap();
    crate::vfio::region::config_write(&mut vc, &cfg, PORT, 0x18, 4, 0x00ff_0700).unwrap();
    assert_eq!(cfg.read32(PORT, reg::BRIDGE_BUS_NUMBERS), before);
    assert_eq!(
        crate::vfio::region::config_read(&vc, &cfg, PORT, 0x19, 1),
        Ok(1)
    );
}

#[test]
fn memory_bars_through_the_call() {
    let mut r = rig();
    let (_, d) = r.open_device(A, 1, "0000:00:05.0");
    r.write(d, 2, 0x10, 4, 0xcafe_f00d).unwrap();
    assert_eq!(r.hw.borrow().memory.get(&0xfe10_0010), Some(&0x0d));
    assert_eq!(r.read(d, 2, 0x10, 4), Ok(0xcafe_f00d));
    assert_eq!(r.read(d, 2, 0x12, 2), Ok(0xcafe));
    r.write(d, 0, 0x3ff8, 8, u64::MAX).unwrap();
    assert_eq!(r.read(d, 0, 0x3ff8, 8), Ok(u64::MAX));
    // Memory decoding turned off by the guest: no BAR access reaches the device (an
    // Unsupported Request on hardware); back on, it works again.
    r.write(d, REGION_CONFIG, 4, 2, u64::from(reg::COMMAND_BUS_MASTER))
        .unwrap();
    assert_eq!(r.read(d, 2, 0x10, 4), Err(Errno::EINVAL));
    assert_eq!(r.write(d, 2, 0x10, 4, 0), Err(Errno::EINVAL));
    assert_eq!(r.hw.borrow().memory.get(&0xfe10_0010), Some(&0x0d));
    r.write(
        d,
        REGION_CONFIG,
        4,
        2,
        u64::from(reg::COMMAND_MEMORY_SPACE | reg::COMMAND_BUS_MASTER),
    )
    .unwrap();
    assert_eq!(r.read(d, 2, 0x10, 4), Ok(0xcafe_f00d));
    for (index, offset, size) in [
        (2, 0x100, 1),
        (2, 0xfc, 8),
        (2, 1, 2),
        (0, 0x4000, 4),
        (4, 0, 4),
        (2, 0, 3),
    ] {
        assert_eq!(
            r.read(d, index, offset, size),
            Err(Errno::EINVAL),
            "{index} {offset:#x} {size}"
        );
        assert_eq!(r.write(d, index, offset, size, 0), Err(Errno::EINVAL));
    }
}

#[test]
fn io_bars_through_the_call() {
    let mut r = rig();
    let (_, d) = r.open_device(A, 1, "0000:00:05.0");
    r.write(d, 3, 0x10, 4, 0xcafe_f00d).unwrap();
    r.write(d, 3, 0x3f, 1, 0x1a5).unwrap();
    assert_eq!(r.read(d, 3, 0x12, 2), Ok(0xcafe));
    assert_eq!(r.read(d, 3, 0x10, 4), Ok(0xcafe_f00d));
    assert_eq!(r.read(d, 3, 0x3f, 1), Ok(0xa5));
    // Exactly the BAR's port plus the offset, with the access's width; only the
    // low `size` bytes of a write's data.
    assert_eq!(
        r.hw.borrow().port_log,
        [
            (true, NVME_IO + 0x10, 4, 0xcafe_f00d),
            (true, NVME_IO + 0x3f, 1, 0xa5),
            (false, NVME_IO + 0x12, 2, 0xcafe),
            (false, NVME_IO + 0x10, 4, 0xcafe_f00d),
            (false, NVME_IO + 0x3f, 1, 0xa5),
        ]
    );
    assert!(r.hw.borrow().memory.is_empty(), "no MMIO for an I/O BAR");
}

#[test]
fn io_bar_bad_accesses_are_einval_and_reach_no_port() {
    let mut r = rig();
    let (_, d) = r.open_device(A, 1, "0000:00:05.0");
    for (offset, size) in [
        (0x40, 1),     // past the 64-byte BAR
        (0x3e, 4),     // misaligned
        (0x3c, 8),     // no 8-byte port I/O
        (0x38, 8),     // aligned and in bounds, still 8 bytes
        (1, 2),        // misaligned
        (2, 4),        // misaligned
        (0, 3),        // not a size
        (0, 0),        // not a size
        (u64::MAX, 1), // wraps
    ] {
        assert_eq!(
            r.read(d, 3, offset, size),
            Err(Errno::EINVAL),
            "{offset:#x}/{size}"
        );
        assert_eq!(
            r.write(d, 3, offset, size, 0),
            Err(Errno::EINVAL),
            "{offset:#x}/{size}"
        );
    }
    assert!(r.hw.borrow().port_log.is_empty());
}

#[test]
fn platform_ports_are_refused_whatever_the_bar_says() {
    let mut r = rig();
    // Firmware put BAR0 at 0x600 (q35's ACPI PM block) and BAR1 above 0xFFFF.
    let (_, d) = r.open_device(A, 4, "0000:00:07.0");
    for index in [0, 1] {
        assert_eq!(r.read(d, index, 0, 4), Err(Errno::EINVAL), "BAR{index}");
        assert_eq!(r.read(d, index, 0x1f, 1), Err(Errno::EINVAL), "BAR{index}");
        assert_eq!(
            r.write(d, index, 0, 2, 0xffff),
            Err(Errno::EINVAL),
            "BAR{index}"
        );
    }
    assert!(r.hw.borrow().port_log.is_empty(), "no port was touched");
}

#[test]
fn io_decoding_at_open_only_with_every_io_bar_assigned() {
    let mut r = rig();
    r.open_device(A, 1, "0000:00:05.0");
    assert_ne!(r.cfg.read16(NVME, reg::COMMAND) & reg::COMMAND_IO_SPACE, 0);
    // An I/O BAR at 0 would decode ports 0.. (the legacy DMA controller's).
    let (_, d) = r.open_device(A, 5, "0000:00:08.0");
    assert_eq!(r.cfg.read16(NO_IO, reg::COMMAND) & reg::COMMAND_IO_SPACE, 0);
    assert_eq!(r.read(d, 0, 0, 1), Err(Errno::EINVAL), "unassigned");
    // The guest cannot turn it on either.
    r.write(d, REGION_CONFIG, 4, 2, u64::from(reg::COMMAND_IO_SPACE))
        .unwrap();
    assert_eq!(r.cfg.read16(NO_IO, reg::COMMAND) & reg::COMMAND_IO_SPACE, 0);
    // I/O BARs outside the devices' ports (0x600: q35's ACPI PM block; past 0xFFFF):
    // decoding stays off, so the function never claims the platform's ports, and the
    // regions are not offered.
    let (_, low) = r.open_device(A, 4, "0000:00:07.0");
    assert_eq!(
        r.cfg.read16(LOW_IO, reg::COMMAND) & reg::COMMAND_IO_SPACE,
        0
    );
    assert_eq!(r.region_flags(low, 0), 0);
    // No I/O BAR: no I/O decoding.
    r.open_device(A, 2, "0000:00:06.0");
    assert_eq!(r.cfg.read16(PLAIN, reg::COMMAND) & reg::COMMAND_IO_SPACE, 0);
    assert!(r.hw.borrow().port_log.is_empty());
}

/// A ROM image: the option ROM signature, then a pattern no other source produces.
fn rom_image() -> Vec<u8> {
    let mut rom: Vec<u8> = (0..0x1000u32).map(|i| (i * 7 + 3) as u8).collect();
    rom[0] = 0x55;
    rom[1] = 0xAA;
    rom
}

#[test]
fn rom_reads_enable_decoding_for_the_access_only() {
    let mut r = rig();
    r.hw.borrow_mut().rom = rom_image();
    let (_, d) = r.open_device(A, 1, "0000:00:05.0");
    let rom = u64::from(EXPANSION_ROM);
    // The guest moves and sizes its virtual ROM BAR and turns memory decoding off.
    r.write(d, REGION_CONFIG, rom, 4, 0x1234_0000).unwrap();
    r.write(d, REGION_CONFIG, 4, 2, u64::from(reg::COMMAND_BUS_MASTER))
        .unwrap();
    let command = r.cfg.read16(NVME, reg::COMMAND);
    assert_eq!(command & reg::COMMAND_MEMORY_SPACE, 0);
    r.writes.borrow_mut().clear();

    assert_eq!(r.read(d, REGION_ROM, 0, 2), Ok(0xAA55), "signature");
    let image = rom_image();
    let dword = |at: usize| u64::from(u32::from_le_bytes(image[at..at + 4].try_into().unwrap()));
    assert_eq!(r.read(d, REGION_ROM, 0x100, 4), Ok(dword(0x100)));
    assert_eq!(r.read(d, REGION_ROM, 0xfff, 1), Ok(u64::from(image[0xfff])));
    assert_eq!(
        r.read(d, REGION_ROM, NVME_ROM_SIZE - 4, 4),
        Ok(0),
        "past the image"
    );

    // Each read saw the firmware's address with the enable bit and memory decoding on.
    let on = command | reg::COMMAND_MEMORY_SPACE;
    assert_eq!(r.hw.borrow().rom_reads, [(NVME_ROM | 1, on); 4]);
    // ...set just for it, and restored right after, in that order.
    let one_read = [
        (NVME, reg::COMMAND, u32::from(on)),
        (NVME, EXPANSION_ROM, NVME_ROM | 1),
        (NVME, EXPANSION_ROM, NVME_ROM),
        (NVME, reg::COMMAND, u32::from(command)),
    ];
    assert_eq!(*r.writes.borrow(), one_read.repeat(4));
    assert_eq!(r.cfg.read32(NVME, EXPANSION_ROM), NVME_ROM);
    assert_eq!(r.cfg.read16(NVME, reg::COMMAND), command);
    // The guest's virtual register is untouched.
    assert_eq!(r.read(d, REGION_CONFIG, rom, 4), Ok(0x1234_0000));
}

#[test]
fn rom_reads_keep_memory_decoding_the_guest_left_on() {
    let mut r = rig();
    r.hw.borrow_mut().rom = rom_image();
    let (_, d) = r.open_device(A, 1, "0000:00:05.0");
    let command = r.cfg.read16(NVME, reg::COMMAND);
    assert_ne!(command & reg::COMMAND_MEMORY_SPACE, 0);
    r.writes.borrow_mut().clear();
    assert_eq!(r.read(d, REGION_ROM, 0, 4), Ok(0x1811_AA55));
    assert_eq!(
        *r.writes.borrow(),
        [
            (NVME, EXPANSION_ROM, NVME_ROM | 1),
            (NVME, EXPANSION_ROM, NVME_ROM)
        ]
    );
    assert_eq!(r.cfg.read16(NVME, reg::COMMAND), command);
}

#[test]
fn rom_bad_accesses_and_writes_are_einval() {
    let mut r = rig();
    r.hw.borrow_mut().rom = rom_image();
    let (_, d) = r.open_device(A, 1, "0000:00:05.0");
    r.writes.borrow_mut().clear();
    for (offset, size) in [
        (NVME_ROM_SIZE, 1),
        (NVME_ROM_SIZE - 2, 4),
        (0, 8),
        (1, 2),
        (2, 4),
        (0, 3),
        (u64::MAX, 1),
    ] {
        assert_eq!(
            r.read(d, REGION_ROM, offset, size),
            Err(Errno::EINVAL),
            "{offset:#x}/{size}"
        );
    }
    for (offset, size) in [(0, 1), (0, 4), (0x100, 2)] {
        assert_eq!(
            r.write(d, REGION_ROM, offset, size, 0),
            Err(Errno::EINVAL),
            "read only"
        );
    }
    assert!(r.hw.borrow().rom_reads.is_empty());
    assert!(
        r.writes.borrow().is_empty(),
        "the ROM BAR was never touched"
    );
    assert!(r.hw.borrow().memory.is_empty(), "nothing written anywhere");
}

#[test]
fn rom_without_an_address_or_outside_device_memory_is_einval() {
    // Firmware gave the ROM BAR no address.
    let mut r = rig();
    r.cfg.write32(NVME, EXPANSION_ROM, 0);
    let (_, d) = r.open_device(A, 1, "0000:00:05.0");
    assert_eq!(r.region_info(d, REGION_ROM).size, 0);
    assert_eq!(r.region_flags(d, REGION_ROM), 0);
    r.writes.borrow_mut().clear();
    assert_eq!(r.read(d, REGION_ROM, 0, 2), Err(Errno::EINVAL));
    assert!(r.writes.borrow().is_empty());
    // The guest's virtual ROM BAR gives it none either.
    r.write(
        d,
        REGION_CONFIG,
        u64::from(EXPANSION_ROM),
        4,
        u64::from(NVME_ROM | 1),
    )
    .unwrap();
    assert_eq!(r.read(d, REGION_ROM, 0, 2), Err(Errno::EINVAL));
    assert_eq!(r.cfg.read32(NVME, EXPANSION_ROM), 0);
    // No ROM BAR at all.
    let (_, d) = r.open_device(A, 2, "0000:00:06.0");
    assert_eq!(r.read(d, REGION_ROM, 0, 2), Err(Errno::EINVAL));

    // A window the platform refuses (say it overlaps RAM) is never switched on.
    let mut r = rig();
    r.hw.borrow_mut().refused = vec![(
        u64::from(NVME_ROM) + 0x3_f000,
        u64::from(NVME_ROM) + 0x4_0000,
    )];
    let (_, d) = r.open_device(A, 1, "0000:00:05.0");
    r.writes.borrow_mut().clear();
    assert_eq!(r.read(d, REGION_ROM, 0, 2), Err(Errno::EINVAL));
    assert!(r.writes.borrow().is_empty(), "ROM BAR never enabled");
    assert!(r.hw.borrow().rom_reads.is_empty());

    // A (stale) firmware address over a BAR — here its own BAR0 — is never switched on
    // either: two decoders would claim one window.
    let mut r = rig();
    r.cfg.write32(NVME, EXPANSION_ROM, NVME_BAR0 as u32);
    let (_, d) = r.open_device(A, 1, "0000:00:05.0");
    r.writes.borrow_mut().clear();
    assert_eq!(r.read(d, REGION_ROM, 0, 2), Err(Errno::EINVAL));
    assert!(r.writes.borrow().is_empty(), "ROM BAR never enabled");
}
