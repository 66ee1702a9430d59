//! MSI-X through DEVICE_GET_IRQ_INFO / DEVICE_SET_IRQS (index 2): the table as the
//! hypervisor programs it (messages, masks, the Function Mask order), remapped and
//! compatibility messages, masking with the held interrupt, loopback, disable on count
//! 0 / close / unbind / release, one type at a time, argument checks, failures that
//! leave nothing behind, and DEVICE_REGION_WRITE into the table and PBA.
//!
//! The machine is `Rig`'s, except that the NIC (01:00.0, group 2) has MSI (1 vector)
//! next to MSI-X with 64 entries (table at BAR0 + 0x1000, PBA at BAR0 + 0x1800), and a
//! fake platform gives BAR0 memory and logs every table write with the MSI-X Message
//! Control the device held at that moment.

use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;

use sluice_abi::Errno;
use sluice_abi::vfio::{
    IRQ_INDEX_INTX, IRQ_INDEX_MSI, IRQ_INDEX_MSIX, IRQ_INFO_EVENTFD, IRQ_INFO_MASKABLE,
    IRQ_INFO_NORESIZE, IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_TRIGGER, IRQ_SET_ACTION_UNMASK,
    IRQ_SET_DATA_BOOL, IRQ_SET_DATA_EVENTFD, IRQ_SET_DATA_NONE, IrqInfo, IrqSet, RegionAccess,
    VfioCall,
};
use sluice_iommu::IommuError;
use sluice_pci::fake::{FakeConfigSpace, FakeFunction};
use sluice_pci::{ConfigSpace, cap_id, reg};

use super::fakes::{FakeIommu, FakeRam, FakeState};
use super::{A, ARGS, B, DEV_EDU, DEV_NIC, DEV_UNIT1, INITIAL_COMMAND, INITIAL_STATUS, RAM_SIZE};
use super::{Rig, Shared, groups};
use crate::vfio::{DeviceHw, GuestId, HOST_VECTOR_FIRST, MSI_ADDRESS_BASE, Vfio};

const TRIGGER_EVENTFD: u32 = IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER;
const TRIGGER_NONE: u32 = IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER;
const NIC_BAR0: u64 = 0xfeb0_0000;
const TABLE: u64 = NIC_BAR0 + 0x1000;
const PBA: u64 = NIC_BAR0 + 0x1800;
const ENTRIES: u32 = 64;
const ENABLE: u16 = 1 << 15;
const FUNCTION_MASK: u16 = 1 << 14;

/// The fake platform: BAR memory as bytes; every write `(hpa, size, value, MSI-X
/// control then)`; `refuse` makes every access fail (as the kernel refuses RAM).
#[derive(Default)]
struct HwState {
    memory: BTreeMap<u64, u8>,
    writes: Vec<(u64, u32, u64, u16)>,
    /// The NIC's COMMAND register at each table write.
    commands: Vec<u16>,
    refuse: bool,
    /// `mmio_window_allowed` says no (a table the platform would not let us write).
    refuse_windows: bool,
}

struct FakeHw {
    state: Rc<RefCell<HwState>>,
    cfg: Rc<FakeConfigSpace>,
}

impl DeviceHw for FakeHw {
    fn delay_us(&mut self, _: u32) {}
    fn mmio_read(&mut self, hpa: u64, size: u32) -> Option<u64> {
        let s = self.state.borrow();
        if s.refuse {
            return None;
        }
        Some((0..u64::from(size)).fold(0, |v, i| {
            v | u64::from(s.memory.get(&(hpa + i)).copied().unwrap_or(0)) << (8 * i)
        }))
    }
    fn mmio_write(&mut self, hpa: u64, size: u32, value: u64) -> bool {
        let control = msix_control_of(&*self.cfg);
        let mut s = self.state.borrow_mut();
        if s.refuse {
            return false;
        }
        for i in 0..u64::from(size) {
            s.memory.insert(hpa + i, (value >> (8 * i)) as u8);
        }
        s.writes.push((hpa, size, value, control));
        s.commands.push(self.cfg.read16(DEV_NIC, reg::COMMAND));
        true
    }
    fn mmio_window_allowed(&self, _: u64, _: u64) -> bool {
        !self.state.borrow().refuse_windows
    }
    fn io_read(&mut self, _: u16, _: u32) -> Option<u32> {
        None
    }
    fn io_write(&mut self, _: u16, _: u32, _: u32) -> bool {
        false
    }
}

fn msix_offset(cfg: &dyn ConfigSpace) -> u16 {
    super::cap_offset(cfg, DEV_NIC, cap_id::MSIX)
}

fn msix_control_of(cfg: &dyn ConfigSpace) -> u16 {
    cfg.read16(DEV_NIC, msix_offset(cfg) + 2)
}

struct MsixRig {
    rig: Rig,
    cfg: Rc<FakeConfigSpace>,
    hw: Rc<RefCell<HwState>>,
    /// Guest A's NIC device handle and its group handle.
    d: u64,
    g: u64,
}

/// `Rig`'s machine with the NIC given MSI and a 64-entry MSI-X table, the platform
/// fake set, guest A holding the NIC open with its group bound to the VM.
fn rig() -> MsixRig {
    rig_with(false)
}

/// As [`rig`]; `flr`: the NIC is a PCIe function with FLR (its reset method).
fn rig_with(flr: bool) -> MsixRig {
    let mut cfg = FakeConfigSpace::new();
    for group in groups() {
        for f in group.devices {
            let function = FakeFunction::conventional_endpoint(f.vendor_id, f.device_id);
            let function = match f.address {
                DEV_EDU => function.with_msi(2, true, false),
                DEV_UNIT1 => function.with_msi(0, false, true),
                DEV_NIC if flr => FakeFunction::endpoint(f.vendor_id, f.device_id, f.class)
                    .with_pcie_flags(sluice_pci::PciePortType::Endpoint, true, false)
                    .with_msix(ENTRIES as u16, 0, 0x1000, 0, 0x1800),
                DEV_NIC => function.with_msi(0, true, false).with_msix(
                    ENTRIES as u16,
                    0,
                    0x1000,
                    0,
                    0x1800,
                ),
                _ => function,
            };
            let function = function
                .with_command(INITIAL_COMMAND)
                .with_u16(reg::STATUS, INITIAL_STATUS);
            cfg.insert(f.address, function);
        }
    }
    let cfg = Rc::new(cfg);
    let state = Rc::new(RefCell::new(FakeState::new()));
    let mut groups = groups();
    for f in groups.iter_mut().flat_map(|g| g.devices.iter_mut()) {
        if flr && f.address == DEV_NIC {
            f.reset = Some(sluice_pci::ResetMethod::Flr);
        }
    }
    let mut vfio = Vfio::new(
        alloc::boxed::Box::new(FakeIommu(state.clone())),
        alloc::boxed::Box::new(Shared(cfg.clone())),
        groups,
    );
    vfio.add_guest(A, &[1, 2, 3]);
    vfio.add_guest(B, &[2, 3, 5]);
    let hw = Rc::new(RefCell::new(HwState::default()));
    vfio.set_device_hw(alloc::boxed::Box::new(FakeHw {
        state: hw.clone(),
        cfg: cfg.clone(),
    }));
    let mut rig = Rig {
        vfio,
        iommu: state,
        a: FakeRam::new(RAM_SIZE, 0x4000_0000),
        b: FakeRam::new(RAM_SIZE, 0x8000_0000),
    };
    let (_, gs) = rig.active(A, &[2]);
    rig.bind(A, gs[0]).unwrap();
    let d = rig.get_device(A, gs[0], "0000:01:00.0").unwrap();
    MsixRig {
        rig,
        cfg,
        hw,
        d,
        g: gs[0],
    }
}

impl MsixRig {
    fn set_irqs(
        &mut self,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        data: &[u8],
    ) -> Result<u64, Errno> {
        self.set_irqs_argsz(flags, index, start, count, data, None)
    }

    fn set_irqs_argsz(
        &mut self,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        data: &[u8],
        argsz: Option<u32>,
    ) -> Result<u64, Errno> {
        let set = IrqSet {
            argsz: argsz.unwrap_or((IrqSet::SIZE + data.len()) as u32),
            flags,
            index,
            start,
            count,
            _pad: 0,
        };
        self.rig.a.put(ARGS, &set.to_bytes());
        self.rig.a.put(ARGS + IrqSet::SIZE as u64, data);
        self.rig.call(
            A,
            VfioCall::DeviceSetIrqs {
                device: self.d,
                set: ARGS,
            },
        )
    }

    /// Bind MSI-X subindexes `start..` to `vectors`.
    fn bind(&mut self, start: u32, vectors: &[i32]) -> Result<u64, Errno> {
        let data: Vec<u8> = vectors.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.set_irqs(
            TRIGGER_EVENTFD,
            IRQ_INDEX_MSIX,
            start,
            vectors.len() as u32,
            &data,
        )
    }

    fn info(&mut self, index: u32) -> IrqInfo {
        let info = IrqInfo {
            argsz: IrqInfo::SIZE as u32,
            index,
            ..IrqInfo::default()
        };
        self.rig.a.put(ARGS, &info.to_bytes());
        self.rig
            .call(
                A,
                VfioCall::DeviceGetIrqInfo {
                    device: self.d,
                    info: ARGS,
                },
            )
            .unwrap();
        let mut out = [0u8; IrqInfo::SIZE];
        out.copy_from_slice(self.rig.a.get(ARGS, IrqInfo::SIZE));
        IrqInfo::from_bytes(&out)
    }

    fn read(&self, hpa: u64) -> u32 {
        let s = self.hw.borrow();
        (0..4).fold(0, |v, i| {
            v | u32::from(s.memory.get(&(hpa + i)).copied().unwrap_or(0)) << (8 * i)
        })
    }

    /// Table entry `i`: (address, data, vector control).
    fn entry(&self, i: u32) -> (u64, u32, u32) {
        let at = TABLE + 16 * u64::from(i);
        (
            u64::from(self.read(at)) | u64::from(self.read(at + 4)) << 32,
            self.read(at + 8),
            self.read(at + 12),
        )
    }

    fn control(&self) -> u16 {
        msix_control_of(&*self.cfg)
    }

    /// The host vector of subindex 0 (from the route table).
    fn base(&self) -> u8 {
        (HOST_VECTOR_FIRST..=crate::vfio::HOST_VECTOR_LAST)
            .find(|&v| self.rig.vfio.interrupt_route(v).is_some_and(|r| r.1 == 0))
            .expect("subindex 0 routed")
    }

    fn take(&mut self, host: &[u8]) -> Vec<(GuestId, u8)> {
        let mut bits = [0u64; 4];
        for &v in host {
            bits[usize::from(v / 64)] |= 1 << (v % 64);
        }
        self.rig.vfio.take_interrupts(bits)
    }

    /// Disabled and clean: Enable and Function Mask clear, every entry masked and
    /// zeroed, no host vector, route or remapping entry left.
    fn assert_off(&self) {
        assert_eq!(self.control() & (ENABLE | FUNCTION_MASK), 0);
        for i in 0..ENTRIES {
            assert_eq!(self.entry(i), (0, 0, 1), "entry {i}");
        }
        assert_eq!(self.rig.vfio.interrupt_routes(), (0, 0));
        assert!(self.rig.iommu.borrow().irtes.is_empty());
        assert!(!self.rig.vfio.interrupts_armed());
    }
}

fn data_bool(v: &[u8]) -> Vec<u8> {
    v.to_vec()
}

#[test]
fn a_table_the_platform_refuses_is_not_offered() {
    let mut r = rig();
    r.hw.borrow_mut().refuse_windows = true;
    let info = r.info(IRQ_INDEX_MSIX);
    assert_eq!((info.count, info.flags), (0, 0));
}

#[test]
fn info_offers_msix_with_the_table_size() {
    let mut r = rig();
    let info = r.info(IRQ_INDEX_MSIX);
    assert_eq!(info.count, ENTRIES);
    assert_eq!(
        info.flags,
        IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_NORESIZE
    );
    assert_eq!(r.info(IRQ_INDEX_MSI).count, 1);
}

#[test]
fn enable_programs_the_table_in_compatibility_format() {
    let mut r = rig();
    r.bind(0, &[0x50, 0x51, 0x52]).unwrap();
    let base = r.base();
    assert_eq!(base % 4, 0, "a block of 4 for 3 vectors");
    for i in 0..3 {
        assert_eq!(
            r.entry(i),
            (u64::from(MSI_ADDRESS_BASE), u32::from(base) + i, 0),
            "entry {i}: host APIC 0, vector base + i, unmasked"
        );
    }
    for i in 3..ENTRIES {
        assert_eq!(r.entry(i), (0, 0, 1), "unused entry {i} masked and zeroed");
    }
    assert_eq!(r.control() & (ENABLE | FUNCTION_MASK), ENABLE);
    assert_ne!(r.rig.command(DEV_NIC) & reg::COMMAND_INTX_DISABLE, 0);
    // Every table write happened with MSI-X Enable and the Function Mask set.
    let writes = r.hw.borrow().writes.clone();
    assert_eq!(writes.len(), ENTRIES as usize * 4);
    assert!(
        writes
            .iter()
            .all(|&(_, _, _, c)| c & (ENABLE | FUNCTION_MASK) == ENABLE | FUNCTION_MASK)
    );
    // Routes: host vector base + i → (A, i, vector); an interrupt reaches A.
    assert_eq!(
        r.rig.vfio.interrupt_route(base + 1),
        Some((A, 1, Some(0x51)))
    );
    assert_eq!(r.rig.vfio.interrupt_routes(), (4, 3));
    assert_eq!(r.take(&[base + 1, base]), [(A, 0x50), (A, 0x51)]);
    assert!(r.rig.iommu.borrow().irtes.is_empty(), "no remapping");
}

#[test]
fn enable_with_remapping_names_the_entries_per_subindex() {
    let mut r = rig();
    r.rig.iommu.borrow_mut().remapping = true;
    r.bind(0, &[0x50, 0x51]).unwrap();
    let base = r.base();
    let irtes = r.rig.iommu.borrow().irtes.clone();
    assert_eq!(irtes.len(), 1);
    let (&first, &(device, vector, count, _)) = irtes.iter().next().unwrap();
    assert_eq!((device, vector, count), (DEV_NIC, base, 2));
    for i in 0..2 {
        assert_eq!(
            r.entry(i),
            (FakeState::msi_address(first), i, 0),
            "data = subindex"
        );
    }
    assert_eq!(r.take(&[base + 1]), [(A, 0x51)]);
    r.set_irqs(TRIGGER_NONE, IRQ_INDEX_MSIX, 0, 0, &[]).unwrap();
    assert_eq!(r.rig.iommu.borrow().msi_unmaps, 1);
    r.assert_off();
}

#[test]
fn rebind_unbind_and_noresize() {
    let mut r = rig();
    r.bind(0, &[0x50]).unwrap();
    let base = r.base();
    assert_eq!(r.rig.vfio.interrupt_routes(), (1, 1));
    // NORESIZE: the first binding fixed one vector.
    assert_eq!(r.bind(1, &[0x51]), Err(Errno::EINVAL));
    assert_eq!(r.bind(0, &[0x50, 0x51]), Err(Errno::EINVAL));
    r.bind(0, &[0x60]).unwrap();
    assert_eq!(r.take(&[base]), [(A, 0x60)]);
    r.bind(0, &[-1]).unwrap();
    assert!(r.take(&[base]).is_empty(), "unbound: dropped");
    assert_eq!(r.rig.vfio.interrupt_counts().1, 1);
    assert_eq!(r.control() & ENABLE, ENABLE, "still enabled, unbound");
    assert_eq!(r.bind(0, &[31]), Err(Errno::EINVAL), "vector below 32");
}

#[test]
fn mask_holds_the_interrupt_and_unmask_delivers_it_once() {
    let mut r = rig();
    r.bind(0, &[0x50, 0x51]).unwrap();
    let base = r.base();
    r.set_irqs(
        IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK,
        IRQ_INDEX_MSIX,
        0,
        1,
        &[],
    )
    .unwrap();
    assert_eq!(r.entry(0).2 & 1, 1, "entry 0's mask bit set");
    assert_eq!(r.entry(1).2 & 1, 0);
    assert!(r.take(&[base]).is_empty());
    assert!(r.take(&[base]).is_empty(), "held once, not counted twice");
    assert_eq!(
        r.take(&[base + 1]),
        [(A, 0x51)],
        "the other one is not masked"
    );
    r.set_irqs(
        IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK,
        IRQ_INDEX_MSIX,
        0,
        1,
        &[],
    )
    .unwrap();
    assert_eq!(r.entry(0).2 & 1, 0);
    assert_eq!(r.take(&[]), [(A, 0x50)]);
    assert!(r.take(&[]).is_empty());
    // DATA_BOOL picks vectors; the message itself is untouched by masking.
    r.set_irqs(
        IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_MASK,
        IRQ_INDEX_MSIX,
        0,
        2,
        &data_bool(&[0, 1]),
    )
    .unwrap();
    assert_eq!(
        r.entry(1),
        (u64::from(MSI_ADDRESS_BASE), u32::from(base) + 1, 1)
    );
    assert_eq!(r.entry(0).2 & 1, 0);
    assert_eq!(
        r.set_irqs(
            IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_MASK,
            IRQ_INDEX_MSIX,
            0,
            1,
            &[0; 4]
        ),
        Err(Errno::EINVAL)
    );
}

#[test]
fn loopback_fires_bound_vectors() {
    let mut r = rig();
    assert_eq!(
        r.set_irqs(TRIGGER_NONE, IRQ_INDEX_MSIX, 0, 1, &[]),
        Err(Errno::EINVAL),
        "loopback while MSI-X is off"
    );
    r.bind(0, &[0x50, 0x51, -1]).unwrap();
    r.set_irqs(TRIGGER_NONE, IRQ_INDEX_MSIX, 0, 3, &[]).unwrap();
    assert_eq!(
        r.take(&[]),
        [(A, 0x50), (A, 0x51)],
        "the unbound one is dropped"
    );
    r.set_irqs(
        IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER,
        IRQ_INDEX_MSIX,
        0,
        2,
        &data_bool(&[0, 7]),
    )
    .unwrap();
    assert_eq!(r.take(&[]), [(A, 0x51)]);
    // A loopback into a masked vector is held like a device interrupt.
    r.set_irqs(
        IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK,
        IRQ_INDEX_MSIX,
        1,
        1,
        &[],
    )
    .unwrap();
    r.set_irqs(TRIGGER_NONE, IRQ_INDEX_MSIX, 1, 1, &[]).unwrap();
    assert!(r.take(&[]).is_empty());
    r.set_irqs(
        IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK,
        IRQ_INDEX_MSIX,
        1,
        1,
        &[],
    )
    .unwrap();
    assert_eq!(r.take(&[]), [(A, 0x51)]);
}

#[test]
fn count_zero_disables_in_order_and_drops_queued() {
    let mut r = rig();
    r.bind(0, &[0x50, 0x51]).unwrap();
    r.set_irqs(TRIGGER_NONE, IRQ_INDEX_MSIX, 0, 1, &[]).unwrap();
    r.hw.borrow_mut().writes.clear();
    r.set_irqs(TRIGGER_NONE, IRQ_INDEX_MSIX, 0, 0, &[]).unwrap();
    r.assert_off();
    assert!(r.take(&[]).is_empty(), "the queued loopback went with it");
    // Function Mask set (Enable still on) before the first entry was touched.
    let writes = r.hw.borrow().writes.clone();
    assert!(
        writes
            .iter()
            .all(|&(_, _, _, c)| c & (ENABLE | FUNCTION_MASK) == ENABLE | FUNCTION_MASK)
    );
    assert_eq!(
        r.set_irqs(TRIGGER_NONE, IRQ_INDEX_MSIX, 0, 0, &[]),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        r.set_irqs(
            IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK,
            IRQ_INDEX_MSIX,
            0,
            1,
            &[]
        ),
        Err(Errno::EINVAL)
    );
    // Enabled again, with another count.
    r.bind(0, &[0x50, 0x51, 0x52, 0x53, 0x54]).unwrap();
    assert_eq!(r.rig.vfio.interrupt_routes(), (8, 5));
}

#[test]
fn close_unbind_and_release_disable_it() {
    let mut r = rig();
    r.bind(0, &[0x50]).unwrap();
    r.rig.close(A, r.d).unwrap();
    r.assert_off();

    let mut r = rig();
    r.rig.iommu.borrow_mut().remapping = true;
    r.bind(0, &[0x50]).unwrap();
    r.rig.unbind(A, r.g).unwrap();
    r.assert_off();
    assert_eq!(r.rig.iommu.borrow().msi_unmaps, 1);
    assert_eq!(
        r.bind(0, &[0x50]),
        Err(Errno::EPERM),
        "binding needs the VM binding"
    );

    let mut r = rig();
    r.bind(0, &[0x50]).unwrap();
    r.set_irqs(TRIGGER_NONE, IRQ_INDEX_MSIX, 0, 1, &[]).unwrap();
    r.rig.release(A);
    r.assert_off();
}

#[test]
fn one_interrupt_type_at_a_time() {
    let mut r = rig();
    r.bind(0, &[0x50]).unwrap();
    let msi = 0x60i32.to_le_bytes();
    assert_eq!(
        r.set_irqs(TRIGGER_EVENTFD, IRQ_INDEX_MSI, 0, 1, &msi),
        Err(Errno::EINVAL),
        "MSI while MSI-X is on"
    );
    assert_eq!(
        r.set_irqs(TRIGGER_NONE, IRQ_INDEX_MSI, 0, 0, &[]),
        Err(Errno::EINVAL),
        "MSI is not what is enabled"
    );
    assert_eq!(
        r.set_irqs(
            IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK,
            IRQ_INDEX_MSI,
            0,
            1,
            &[]
        ),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        r.set_irqs(TRIGGER_EVENTFD, IRQ_INDEX_INTX, 0, 1, &msi),
        Err(Errno::EINVAL)
    );
    assert_eq!(r.control() & ENABLE, ENABLE, "MSI-X untouched");
    r.set_irqs(TRIGGER_NONE, IRQ_INDEX_MSIX, 0, 0, &[]).unwrap();
    // The reverse: MSI on, MSI-X refused and the table untouched.
    r.set_irqs(TRIGGER_EVENTFD, IRQ_INDEX_MSI, 0, 1, &msi)
        .unwrap();
    r.hw.borrow_mut().writes.clear();
    assert_eq!(r.bind(0, &[0x50]), Err(Errno::EINVAL));
    assert!(r.hw.borrow().writes.is_empty());
    assert_eq!(r.control() & ENABLE, 0);
    assert_eq!(r.rig.vfio.interrupt_routes(), (1, 1));
}

#[test]
fn argument_checks() {
    let mut r = rig();
    let v = 0x50i32.to_le_bytes();
    // Range: the table has 64 entries; at most 32 can be enabled.
    assert_eq!(
        r.set_irqs(TRIGGER_EVENTFD, IRQ_INDEX_MSIX, 64, 1, &v),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        r.set_irqs(TRIGGER_EVENTFD, IRQ_INDEX_MSIX, u32::MAX, 2, &[0; 8]),
        Err(Errno::EINVAL)
    );
    let many: Vec<i32> = (0..33).map(|i| 0x50 + i).collect();
    assert_eq!(r.bind(0, &many), Err(Errno::EINVAL), "beyond 32 vectors");
    assert_eq!(
        r.bind(32, &[0x50]),
        Err(Errno::EINVAL),
        "start + count = 33"
    );
    // Flags, short data.
    assert_eq!(
        r.set_irqs(
            TRIGGER_EVENTFD | IRQ_SET_DATA_BOOL,
            IRQ_INDEX_MSIX,
            0,
            1,
            &v
        ),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        r.set_irqs(IRQ_SET_DATA_EVENTFD, IRQ_INDEX_MSIX, 0, 1, &v),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        r.set_irqs(TRIGGER_EVENTFD | 1 << 20, IRQ_INDEX_MSIX, 0, 1, &v),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        r.set_irqs_argsz(
            TRIGGER_EVENTFD,
            IRQ_INDEX_MSIX,
            0,
            2,
            &v,
            Some(IrqSet::SIZE as u32 + 7)
        ),
        Err(Errno::EINVAL)
    );
    assert_eq!(r.rig.vfio.interrupt_routes(), (0, 0));
    assert_eq!(r.control() & ENABLE, 0);
    // 32 is fine: a block of 32 host vectors.
    let v32: Vec<i32> = (0..32).map(|i| 0x50 + i).collect();
    r.bind(0, &v32).unwrap();
    assert_eq!(r.rig.vfio.interrupt_routes(), (32, 32));
    assert_eq!(r.entry(31).2, 0);
    assert_eq!(r.entry(32), (0, 0, 1));
}

#[test]
fn failures_leave_nothing_behind() {
    // No host vectors.
    let mut r = rig();
    let taken = r.rig.vfio.irq.alloc(128).map(|b| (b, 128));
    let mut blocks: Vec<(u8, u32)> = taken.into_iter().collect();
    while let Some(b) = r.rig.vfio.irq.alloc(1) {
        blocks.push((b, 1));
    }
    // The pool no longer matches any device (the invariants would say so): called
    // without the rig's check.
    let set = IrqSet {
        argsz: IrqSet::SIZE as u32 + 4,
        flags: TRIGGER_EVENTFD,
        index: IRQ_INDEX_MSIX,
        start: 0,
        count: 1,
        _pad: 0,
    };
    r.rig.a.put(ARGS, &set.to_bytes());
    r.rig
        .a
        .put(ARGS + IrqSet::SIZE as u64, &0x50i32.to_le_bytes());
    let call = VfioCall::DeviceSetIrqs {
        device: r.d,
        set: ARGS,
    };
    assert_eq!(r.rig.vfio.call(A, &mut r.rig.a, call), Err(Errno::ENOSPC));
    for (b, n) in blocks {
        r.rig.vfio.irq.free(b, n);
    }
    assert!(r.hw.borrow().writes.is_empty());
    assert_eq!(r.control() & ENABLE, 0);
    assert_eq!(r.rig.vfio.interrupt_routes(), (0, 0));
    // No remapping entries, or the unit failed.
    r.rig.iommu.borrow_mut().remapping = true;
    for (error, errno) in [
        (IommuError::NoMemory, Errno::ENOSPC),
        (
            IommuError::InvalidationTimeout {
                unit: sluice_iommu::UnitId(0),
            },
            crate::vfio::iommu_errno(IommuError::InvalidationTimeout {
                unit: sluice_iommu::UnitId(0),
            }),
        ),
    ] {
        r.rig.iommu.borrow_mut().fail_map_msi = Some(error);
        assert_eq!(r.bind(0, &[0x50]), Err(errno));
        assert_eq!(r.rig.vfio.interrupt_routes(), (0, 0));
        assert!(r.hw.borrow().writes.is_empty());
    }
    r.rig.iommu.borrow_mut().fail_map_msi = None;
    // The platform refuses the table: EINVAL, entries and vectors released.
    r.hw.borrow_mut().refuse = true;
    assert_eq!(r.bind(0, &[0x50]), Err(Errno::EINVAL));
    assert_eq!(r.control() & (ENABLE | FUNCTION_MASK), 0);
    assert_eq!(r.rig.vfio.interrupt_routes(), (0, 0));
    assert!(r.rig.iommu.borrow().irtes.is_empty());
    r.hw.borrow_mut().refuse = false;
    r.bind(0, &[0x50]).unwrap();
}

#[test]
fn memory_decoding_is_on_while_the_table_is_written() {
    let mut r = rig();
    let cfg: &dyn ConfigSpace = &*r.cfg;
    let command = cfg.read16(DEV_NIC, reg::COMMAND);
    cfg.write32(
        DEV_NIC,
        reg::COMMAND,
        u32::from(command & !reg::COMMAND_MEMORY_SPACE),
    );
    r.hw.borrow_mut().commands.clear();
    r.bind(0, &[0x50]).unwrap();
    assert_eq!(r.entry(0).0, u64::from(MSI_ADDRESS_BASE));
    let commands = r.hw.borrow().commands.clone();
    assert!(!commands.is_empty());
    assert!(
        commands.iter().all(|c| c & reg::COMMAND_MEMORY_SPACE != 0),
        "every table write with memory decoding on"
    );
    assert_eq!(
        r.rig.command(DEV_NIC) & reg::COMMAND_MEMORY_SPACE,
        0,
        "restored to what the guest left"
    );
}

#[test]
fn region_writes_to_the_table_and_pba_are_dropped() {
    let mut r = rig();
    let access = |r: &mut MsixRig, offset: u64, write: bool| {
        let a = RegionAccess {
            argsz: RegionAccess::SIZE as u32,
            flags: 0,
            index: 0,
            size: 4,
            offset,
            data: 0x1234_5678,
        };
        r.rig.a.put(ARGS, &a.to_bytes());
        let call = if write {
            VfioCall::DeviceRegionWrite {
                device: r.d,
                access: ARGS,
            }
        } else {
            VfioCall::DeviceRegionRead {
                device: r.d,
                access: ARGS,
            }
        };
        r.rig.call(A, call)
    };
    r.bind(0, &[0x50]).unwrap();
    let entry0 = r.entry(0);
    for offset in [0x1000, 0x1008, 0x13FC, 0x1800, 0x1804] {
        assert_eq!(access(&mut r, offset, true), Ok(0), "{offset:#x}: success");
    }
    assert_eq!(r.entry(0), entry0, "the table is unchanged");
    assert_eq!(r.read(PBA), 0);
    assert_eq!(r.read(TABLE + 0x3FC), 1, "entry 63's vector control");
    // Outside the table and PBA: written.
    for offset in [0xFFC, 0x1400, 0x1808] {
        access(&mut r, offset, true).unwrap();
        assert_eq!(r.read(NIC_BAR0 + offset), 0x1234_5678, "{offset:#x}");
    }
    // Table reads are all-ones (the messages are the hypervisor's); PBA and the rest
    // of the BAR read the device.
    let data = |r: &MsixRig| u64::from_le_bytes(r.rig.a.get(ARGS + 24, 8).try_into().unwrap());
    assert_eq!(access(&mut r, 0x1008, false), Ok(0));
    assert_eq!(data(&r), 0xFFFF_FFFF, "table entry 0's data hidden");
    assert_eq!(access(&mut r, 0x1800, false), Ok(0));
    assert_eq!(data(&r), 0, "PBA read from the device");
    assert_eq!(access(&mut r, 0x1400, false), Ok(0));
    assert_eq!(data(&r), 0x1234_5678);
}

#[test]
fn guests_cannot_enable_msix_behind_the_hypervisor() {
    let mut r = rig();
    let at = u64::from(msix_offset(&*r.cfg));
    let write_config = |r: &mut MsixRig, offset: u64, size: u32, data: u64| {
        let a = RegionAccess {
            argsz: RegionAccess::SIZE as u32,
            flags: 0,
            index: sluice_abi::vfio::REGION_CONFIG,
            size,
            offset,
            data,
        };
        r.rig.a.put(ARGS, &a.to_bytes());
        let d = r.d;
        r.rig.call(
            A,
            VfioCall::DeviceRegionWrite {
                device: d,
                access: ARGS,
            },
        )
    };
    // Enable + Function Mask written by the guest: the hardware keeps them clear.
    write_config(&mut r, at + 2, 2, u64::from(ENABLE | FUNCTION_MASK)).unwrap();
    assert_eq!(r.control() & (ENABLE | FUNCTION_MASK), 0);
    // Once the hypervisor enabled it, the guest cannot turn it off (or mask) either.
    r.bind(0, &[0x50]).unwrap();
    write_config(&mut r, at, 4, 0).unwrap();
    assert_eq!(r.control() & (ENABLE | FUNCTION_MASK), ENABLE);
    // Closing the device leaves MSI-X off in the hardware.
    let d = r.d;
    r.rig.close(A, d).unwrap();
    assert_eq!(r.control() & (ENABLE | FUNCTION_MASK), 0);
}

#[test]
fn a_reset_rewrites_the_table() {
    let mut r = rig_with(true);
    r.bind(0, &[0x50, 0x51]).unwrap();
    r.set_irqs(
        IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK,
        IRQ_INDEX_MSIX,
        1,
        1,
        &[],
    )
    .unwrap();
    let before: Vec<_> = (0..ENTRIES).map(|i| r.entry(i)).collect();
    assert_eq!(before[1].2, 1, "entry 1 masked");
    // The function loses its table in the reset (the fake platform's BAR memory does
    // not model that: clear it by hand).
    r.hw.borrow_mut()
        .memory
        .retain(|&a, _| !(TABLE..TABLE + 16 * u64::from(ENTRIES)).contains(&a));
    let d = r.d;
    r.rig.call(A, VfioCall::DeviceReset { device: d }).unwrap();
    let after: Vec<_> = (0..ENTRIES).map(|i| r.entry(i)).collect();
    assert_eq!(after, before, "same messages, same masks");
    assert_eq!(r.control() & (ENABLE | FUNCTION_MASK), ENABLE);
}
