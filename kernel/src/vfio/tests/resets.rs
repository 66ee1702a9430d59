//! DEVICE_RESET, the reset of a released group, and DEVICE_REGION_READ/WRITE: config
//! space mediation (BARs, ROM, MSI, command, FLR) and memory BARs, on a machine of its
//! own whose fake config space the tests inspect.

use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use sluice_abi::Errno;
use sluice_abi::vfio::{
    DEVICE_FLAGS_RESET, DeviceInfo, REGION_CONFIG, REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_READ,
    REGION_INFO_FLAG_WRITE, RegionAccess, RegionInfo, VfioCall,
};
use sluice_pci::fake::{FakeConfigSpace, FakeFunction, FakeReset};
use sluice_pci::{ConfigSpace, EXPANSION_ROM, PciAddress, PciePortType, ResetMethod, reg};

use super::fakes::{FakeIommu, FakeRam, FakeState};
use super::*;
use crate::vfio::DeviceHw;

const NVME: PciAddress = PciAddress::new(0, 0, 5, 0);
const PLAIN: PciAddress = PciAddress::new(0, 0, 6, 0);
const PORT: PciAddress = PciAddress::new(0, 0, 0x1c, 0);
const BEHIND0: PciAddress = PciAddress::new(0, 1, 0, 0);
const BEHIND1: PciAddress = PciAddress::new(0, 1, 0, 1);
const NVME_BAR0: u64 = 0xfe00_0000;
const SCRATCH: u16 = 0xF0;
/// MSI is the second capability of the NVMe-like function (PCIe: 0x40..0x7C).
const NVME_MSI: u16 = 0x7C;

/// Config space shared between the VFIO layer and the test.
/// Delays recorded, BAR memory as a byte map.
#[derive(Default)]
struct HwState {
    delays: Vec<u32>,
    memory: BTreeMap<u64, u8>,
}

struct FakeHw(Rc<RefCell<HwState>>);

impl DeviceHw for FakeHw {
    fn delay_us(&mut self, us: u32) {
        self.0.borrow_mut().delays.push(us);
    }
    fn mmio_read(&mut self, hpa: u64, size: u32) -> Option<u64> {
        let s = self.0.borrow();
        Some((0..u64::from(size)).fold(0u64, |v, i| {
            v | u64::from(s.memory.get(&(hpa + i)).copied().unwrap_or(0)) << (8 * i)
        }))
    }
    fn mmio_write(&mut self, hpa: u64, size: u32, value: u64) -> bool {
        let mut s = self.0.borrow_mut();
        for i in 0..u64::from(size) {
            s.memory.insert(hpa + i, (value >> (8 * i)) as u8);
        }
        true
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
}

fn rig() -> ResetRig {
    let nvme = FakeFunction::endpoint(0x1b36, 0x10, 0x01_08_02)
        .with_pcie_flags(PciePortType::Endpoint, true, false)
        .with_msi(0, true, false)
        .with_mem64_bar(0, NVME_BAR0, 0x4000, false)
        .with_mem32_bar(2, 0xfe10_0000, 0x100, false)
        .with_io_bar(3, 0xc000, 0x40)
        .with_u32(EXPANSION_ROM, 0xfe20_0000)
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
            .with(BEHIND1, behind()),
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
                        ..mem64(3, 0xc000, 0x40)
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
    ];
    let state = Rc::new(RefCell::new(FakeState::new()));
    let mut vfio = Vfio::new(
        Box::new(FakeIommu(state.clone())),
        Box::new(Shared(cfg.clone())),
        groups,
    );
    let hw = Rc::new(RefCell::new(HwState::default()));
    vfio.set_device_hw(Box::new(FakeHw(hw.clone())));
    vfio.add_guest(A, &[1, 2, 3]);
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
        RegionInfo::from_bytes(&b).flags
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
    assert_eq!(r.region_flags(d, 3), 0, "I/O BAR");
    assert_eq!(r.region_flags(d, REGION_CONFIG), rw);
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
    assert_eq!(r.read(d, 6, 0, 4), Err(Errno::EINVAL), "ROM region");
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
    // Open: decoding and bus mastering on, INTx disabled (the hypervisor's bit).
    let on = reg::COMMAND_MEMORY_SPACE | reg::COMMAND_BUS_MASTER;
    assert_eq!(
        r.cfg.read16(NVME, reg::COMMAND),
        on | reg::COMMAND_INTX_DISABLE
    );
    r.write(
        d,
        REGION_CONFIG,
        4,
        2,
        u64::from(reg::COMMAND_IO_SPACE | 0x40),
    )
    .unwrap();
    assert_eq!(
        r.cfg.read16(NVME, reg::COMMAND),
        reg::COMMAND_INTX_DISABLE,
        "I/O and parity bits dropped, INTx disable kept"
    );
    r.write(d, REGION_CONFIG, 4, 4, u64::from(on)).unwrap();
    assert_eq!(
        r.cfg.read16(NVME, reg::COMMAND),
        on | reg::COMMAND_INTX_DISABLE
    );
    assert_eq!(
        r.read(d, REGION_CONFIG, 4, 2),
        Ok(u64::from(on | reg::COMMAND_INTX_DISABLE))
    );
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
    assert_eq!(
        r.cfg.read16(NVME, reg::COMMAND),
        on | reg::COMMAND_INTX_DISABLE
    );
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
    for (index, offset, size) in [
        (2, 0x100, 1),
        (2, 0xfc, 8),
        (2, 1, 2),
        (0, 0x4000, 4),
        (3, 0, 4),
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
