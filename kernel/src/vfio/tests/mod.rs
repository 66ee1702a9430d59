//! Host tests of the VFIO layer, against fakes of the IOMMU, guest memory and config
//! space. Tests assert on state (the fakes', the guest's memory, the accessors), never on
//! log output. After every call the rig checks [`Vfio::check_invariants`].

mod containers;
mod devices;
mod external;
mod fakes;
mod groups;
mod intx;
mod irq;
mod lifecycle;
mod msix;
mod prop;
mod resets;

use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use sluice_abi::Errno;
use sluice_abi::vfio::{
    DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE, DmaMap, DmaUnmap, GroupStatus, GroupVmInfo, VfioCall,
    extension,
};
use sluice_iommu::{DeviceDma, UnitId};
use sluice_pci::fake::{FakeConfigSpace, FakeFunction};
use sluice_pci::{Bar, BarKind, PciAddress, reg};

use self::fakes::{AttachedView, FakeIommu, FakeRam, FakeState};
use super::{GroupDesc, GroupDevice, GuestId, Vfio};

pub const A: GuestId = GuestId(1);
pub const B: GuestId = GuestId(2);
/// Where the rig puts argument structures in guest RAM.
pub const ARGS: u64 = 0x1000;
/// Where the rig puts device names.
pub const NAME: u64 = 0x2000;
pub const RAM_SIZE: u64 = 4 << 20;
pub const RW: u32 = DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE;

pub const DEV_EDU: PciAddress = PciAddress::new(0, 0, 2, 0);
pub const DEV_PORT: PciAddress = PciAddress::new(0, 0, 0x1c, 0);
pub const DEV_NIC: PciAddress = PciAddress::new(0, 1, 0, 0);
pub const DEV_UNIT1: PciAddress = PciAddress::new(0, 0, 3, 0);
pub const DEV_LPC: PciAddress = PciAddress::new(0, 0, 0x1f, 0);
pub const DEV_SATA: PciAddress = PciAddress::new(0, 0, 0x1f, 2);
pub const DEV_B_ONLY: PciAddress = PciAddress::new(0, 0, 4, 0);
pub const DEV_PCI_BRIDGE: PciAddress = PciAddress::new(0, 0, 0x1e, 0);
pub const DEV_BEHIND: PciAddress = PciAddress::new(0, 2, 1, 0);

fn mem_bar(index: u8, address: u64, size: u64) -> Bar {
    Bar {
        index,
        kind: if address > u64::from(u32::MAX) {
            BarKind::Mem64
        } else {
            BarKind::Mem32
        },
        prefetchable: false,
        address,
        size,
    }
}

fn function(address: PciAddress, unit: u16, bridge: bool, host_owned: bool) -> GroupDevice {
    GroupDevice {
        address,
        vendor_id: 0x1234,
        device_id: 0x1000 + u16::from(address.device),
        class: if bridge { 0x06_04_00 } else { 0x00_ff_00 },
        bridge,
        host_owned,
        dma: DeviceDma {
            device: address,
            unit: UnitId(unit),
            requester_ids: vec![address.bdf()],
        },
        bars: Vec::new(),
        interrupt_pin: 1,
        intx_line: None,
        reset: None,
    }
}

/// Offset of capability `id` of `address` (the test's fakes always have it).
pub fn cap_offset(cfg: &dyn sluice_pci::ConfigSpace, address: PciAddress, id: u8) -> u16 {
    let mut at = u16::from(cfg.read8(address, reg::CAPABILITY_POINTER));
    while at != 0 {
        if cfg.read8(address, at) == id {
            return at;
        }
        at = u16::from(cfg.read8(address, at + 1));
    }
    panic!("{address}: no capability {id:#x}");
}

/// A fake config space the test keeps a handle on (to play the device's side).
pub struct Shared(pub Rc<FakeConfigSpace>);

impl sluice_pci::ConfigSpace for Shared {
    fn read32(&self, addr: PciAddress, offset: u16) -> u32 {
        self.0.read32(addr, offset)
    }
    fn write32(&self, addr: PciAddress, offset: u16, value: u32) {
        self.0.write32(addr, offset, value)
    }
}

/// The machine every test uses:
///
/// | group | unit | functions | notes |
/// |-------|------|-----------|-------|
/// | 1 | 0 | 00:02.0 | BAR0 mem32 1 MiB, BAR1 I/O, BAR2 mem64 16 KiB, BAR4 mem32 unassigned, BAR5 mem32 256 B |
/// | 2 | 0 | 00:1c.0 (port), 01:00.0 | |
/// | 3 | 1 | 00:03.0 | the second unit |
/// | 4 | 0 | 00:1f.0 (host's LPC), 00:1f.2 | not viable |
/// | 5 | 1 | 00:04.0 | granted to B only |
/// | 6 | 0 | 00:1e.0 (bridge, host-owned), 02:01.0 | viable: bridges don't count |
///
/// A is granted 1, 2, 3, 4, 6; B is granted 2, 3, 5.
pub fn groups() -> Vec<GroupDesc> {
    let mut edu = function(DEV_EDU, 0, false, false);
    edu.bars = vec![
        mem_bar(0, 0xfea0_0000, 0x10_0000),
        Bar {
            index: 1,
            kind: BarKind::Io,
            prefetchable: false,
            address: 0xc000,
            size: 0x40,
        },
        mem_bar(2, 0x8_0000_0000, 0x4000),
        mem_bar(4, 0, 0x1000),
        mem_bar(5, 0xfeb8_0000, 0x100),
    ];
    let mut nic = function(DEV_NIC, 0, false, false);
    nic.bars = vec![mem_bar(0, 0xfeb0_0000, 0x2_0000)];
    let mut unit1 = function(DEV_UNIT1, 1, false, false);
    unit1.bars = vec![mem_bar(0, 0xfec0_0000, 0x1000)];
    // Listed out of order on purpose: Vfio sorts.
    vec![
        GroupDesc {
            id: 6,
            devices: vec![
                function(DEV_BEHIND, 0, false, false),
                function(DEV_PCI_BRIDGE, 0, true, true),
            ],
        },
        GroupDesc {
            id: 1,
            devices: vec![edu],
        },
        GroupDesc {
            id: 2,
            devices: vec![function(DEV_PORT, 0, true, false), nic],
        },
        GroupDesc {
            id: 3,
            devices: vec![unit1],
        },
        GroupDesc {
            id: 4,
            devices: vec![
                function(DEV_LPC, 0, false, true),
                function(DEV_SATA, 0, false, false),
            ],
        },
        GroupDesc {
            id: 5,
            devices: vec![function(DEV_B_ONLY, 1, false, false)],
        },
    ]
}

/// Initial command register of every function: I/O decoding and INTx disable on, to
/// check that opening and closing keep unrelated bits. Status has RW1C error bits set.
pub const INITIAL_COMMAND: u16 = reg::COMMAND_IO_SPACE | reg::COMMAND_INTX_DISABLE;
pub const INITIAL_STATUS: u16 = reg::STATUS_CAPABILITY_LIST | (1 << 13);

fn config() -> FakeConfigSpace {
    let mut cfg = FakeConfigSpace::new();
    for group in groups() {
        for f in group.devices {
            let mut function = FakeFunction::conventional_endpoint(f.vendor_id, f.device_id);
            // Interrupt capabilities (tests/irq.rs): edu 4 MSI vectors, 64-bit; the
            // second unit's device 1 vector, 32-bit, per-vector masking; the NIC MSI-X.
            function = match f.address {
                DEV_EDU => function.with_msi(2, true, false),
                DEV_UNIT1 => function.with_msi(0, false, true),
                DEV_NIC => function.with_msix(8, 0, 0x1000, 0, 0x1800),
                _ => function,
            };
            let function = function
                .with_command(INITIAL_COMMAND)
                .with_u16(reg::STATUS, INITIAL_STATUS);
            cfg.insert(f.address, function);
        }
    }
    cfg
}

/// The VFIO layer over fakes, with guests A and B registered.
pub struct Rig {
    pub vfio: Vfio,
    pub iommu: Rc<RefCell<FakeState>>,
    pub a: FakeRam,
    pub b: FakeRam,
}

impl Rig {
    pub fn new() -> Self {
        let state = Rc::new(RefCell::new(FakeState::new()));
        let mut vfio = Vfio::new(
            Box::new(FakeIommu(state.clone())),
            Box::new(config()),
            groups(),
        );
        vfio.add_guest(A, &[1, 2, 3, 4, 6, 99]);
        vfio.add_guest(B, &[2, 3, 5]);
        Self {
            vfio,
            iommu: state,
            a: FakeRam::new(RAM_SIZE, 0x4000_0000),
            b: FakeRam::new(RAM_SIZE, 0x8000_0000),
        }
    }

    pub fn ram(&mut self, guest: GuestId) -> &mut FakeRam {
        if guest == A { &mut self.a } else { &mut self.b }
    }

    /// Make a call and check every invariant after it.
    pub fn call(&mut self, guest: GuestId, call: VfioCall) -> Result<u64, Errno> {
        let mem: &mut FakeRam = if guest == A { &mut self.a } else { &mut self.b };
        let r = self.vfio.call(guest, mem, call);
        if let Err(e) = self.vfio.check_invariants() {
            panic!("after {call:?} -> {r:?}: {e}");
        }
        r
    }

    pub fn release(&mut self, guest: GuestId) {
        self.vfio.release_guest(guest);
        self.vfio.check_invariants().unwrap();
    }

    pub fn create(&mut self, guest: GuestId) -> u64 {
        self.call(guest, VfioCall::ContainerCreate).unwrap()
    }

    pub fn open(&mut self, guest: GuestId, group_id: u64) -> Result<u64, Errno> {
        self.call(guest, VfioCall::GroupOpen { group_id })
    }

    pub fn set(&mut self, guest: GuestId, group: u64, container: u64) -> Result<u64, Errno> {
        self.call(guest, VfioCall::GroupSetContainer { group, container })
    }

    pub fn unset(&mut self, guest: GuestId, group: u64) -> Result<u64, Errno> {
        self.call(guest, VfioCall::GroupUnsetContainer { group })
    }

    pub fn set_iommu(&mut self, guest: GuestId, container: u64) -> Result<u64, Errno> {
        self.call(
            guest,
            VfioCall::SetIommu {
                container,
                iommu_type: extension::TYPE1V2_IOMMU,
            },
        )
    }

    pub fn close(&mut self, guest: GuestId, handle: u64) -> Result<u64, Errno> {
        self.call(guest, VfioCall::Close { handle })
    }

    /// A container with `groups` in it and the model set: `(container, group handles)`.
    pub fn active(&mut self, guest: GuestId, groups: &[u64]) -> (u64, Vec<u64>) {
        let c = self.create(guest);
        let gs: Vec<u64> = groups
            .iter()
            .map(|&id| {
                let g = self.open(guest, id).unwrap();
                self.set(guest, g, c).unwrap();
                g
            })
            .collect();
        self.set_iommu(guest, c).unwrap();
        (c, gs)
    }

    pub fn map(
        &mut self,
        guest: GuestId,
        container: u64,
        vaddr: u64,
        iova: u64,
        size: u64,
    ) -> Result<u64, Errno> {
        self.map_flags(guest, container, vaddr, iova, size, RW)
    }

    pub fn map_flags(
        &mut self,
        guest: GuestId,
        container: u64,
        vaddr: u64,
        iova: u64,
        size: u64,
        flags: u32,
    ) -> Result<u64, Errno> {
        let map = DmaMap {
            argsz: DmaMap::SIZE as u32,
            flags,
            vaddr,
            iova,
            size,
        };
        self.ram(guest).put(ARGS, &map.to_bytes());
        self.call(
            guest,
            VfioCall::MapDma {
                container,
                map: ARGS,
            },
        )
    }

    /// Unmap; on success the bytes unmapped (as written back).
    pub fn unmap(
        &mut self,
        guest: GuestId,
        container: u64,
        iova: u64,
        size: u64,
        flags: u32,
    ) -> Result<u64, Errno> {
        let unmap = DmaUnmap {
            argsz: DmaUnmap::SIZE as u32,
            flags,
            iova,
            size,
        };
        self.ram(guest).put(ARGS, &unmap.to_bytes());
        self.call(
            guest,
            VfioCall::UnmapDma {
                container,
                unmap: ARGS,
            },
        )?;
        let mut out = [0u8; DmaUnmap::SIZE];
        out.copy_from_slice(self.ram(guest).get(ARGS, DmaUnmap::SIZE));
        Ok(DmaUnmap::from_bytes(&out).size)
    }

    pub fn get_device(&mut self, guest: GuestId, group: u64, name: &str) -> Result<u64, Errno> {
        self.ram(guest).put(NAME, name.as_bytes());
        self.call(
            guest,
            VfioCall::GroupGetDevice {
                group,
                name: NAME,
                name_len: name.len() as u64,
            },
        )
    }

    /// GROUP_GET_STATUS flags.
    pub fn status(&mut self, guest: GuestId, group: u64) -> Result<u32, Errno> {
        let status = GroupStatus {
            argsz: GroupStatus::SIZE as u32,
            flags: 0,
        };
        self.ram(guest).put(ARGS, &status.to_bytes());
        self.call(
            guest,
            VfioCall::GroupGetStatus {
                group,
                status: ARGS,
            },
        )?;
        let mut out = [0u8; GroupStatus::SIZE];
        out.copy_from_slice(self.ram(guest).get(ARGS, GroupStatus::SIZE));
        Ok(GroupStatus::from_bytes(&out).flags)
    }

    pub fn bind(&mut self, guest: GuestId, group: u64) -> Result<u64, Errno> {
        self.call(guest, VfioCall::GroupBindVm { group })
    }

    pub fn unbind(&mut self, guest: GuestId, group: u64) -> Result<u64, Errno> {
        self.call(guest, VfioCall::GroupUnbindVm { group })
    }

    /// GROUP_VM_INFO, the structure as written back.
    pub fn vm_info(&mut self, guest: GuestId, group: u64) -> Result<GroupVmInfo, Errno> {
        let info = GroupVmInfo {
            argsz: GroupVmInfo::SIZE as u32,
            ..GroupVmInfo::default()
        };
        self.ram(guest).put(ARGS, &info.to_bytes());
        self.call(guest, VfioCall::GroupVmInfo { group, info: ARGS })?;
        let mut out = [0u8; GroupVmInfo::SIZE];
        out.copy_from_slice(self.ram(guest).get(ARGS, GroupVmInfo::SIZE));
        Ok(GroupVmInfo::from_bytes(&out))
    }

    pub fn command(&self, address: PciAddress) -> u16 {
        self.vfio.config().read16(address, reg::COMMAND)
    }

    pub fn status_register(&self, address: PciAddress) -> u16 {
        self.vfio.config().read16(address, reg::STATUS)
    }

    /// The IOMMU's view: device → its domain's mappings `(iova, size, paddr)`.
    pub fn attached(&self) -> AttachedView {
        self.iommu.borrow().attached_mappings()
    }

    /// Whether the fake shows no domain and no attached device.
    pub fn iommu_is_clean(&self) -> bool {
        let s = self.iommu.borrow();
        s.domains.is_empty() && s.attached.is_empty()
    }
}
