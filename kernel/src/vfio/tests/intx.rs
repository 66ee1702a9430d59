//! INTx: GET_IRQ_INFO on the INTx index, SET_IRQS (enable, bind, automask on each
//! interrupt, unmask, mask, loopback, disable), the I/O APIC line shared by devices on
//! one GSI, one interrupt type at a time, and teardown on close and release. The test
//! plays the device (STATUS's Interrupt Status) and the host's interrupt handler (it
//! masks the pin, then hands the vector to `take_interrupts`).

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use sluice_abi::Errno;
use sluice_abi::vfio::{
    IRQ_INDEX_INTX, IRQ_INDEX_MSI, IRQ_INFO_AUTOMASKED, IRQ_INFO_EVENTFD, IRQ_INFO_MASKABLE,
    IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_TRIGGER, IRQ_SET_ACTION_UNMASK, IRQ_SET_DATA_BOOL,
    IRQ_SET_DATA_EVENTFD, IRQ_SET_DATA_NONE, IrqInfo, IrqSet, REGION_CONFIG, RegionAccess,
    VfioCall,
};
use sluice_iommu::IommuError;
use sluice_pci::fake::{FakeConfigSpace, FakeFunction};
use sluice_pci::{ConfigSpace, PciAddress, reg};

use super::fakes::{FakeIommu, FakeRam, FakeState};
use super::{A, ARGS, B, DEV_B_ONLY, DEV_EDU, DEV_UNIT1, RAM_SIZE, Rig, Shared, config, groups};
use crate::vfio::intx::{STATUS_INTERRUPT, UNCLAIMED_LIMIT};
use crate::vfio::{GuestId, InterruptLines, IntxLine, Vfio};

/// edu (group 1, guest A) and the second unit's device (group 3, A or B) share GSI 20;
/// group 5's device (B only) is alone on GSI 21.
const GSI_SHARED: u32 = 20;
const GSI_ALONE: u32 = 21;
const VIRT: u8 = 0x70;

/// The fake I/O APIC: one unit, pins 0..24 = GSIs 0..24.
#[derive(Debug, Default)]
struct LinesState {
    /// gsi → (vector, rte) while routed.
    routed: BTreeMap<u32, (u8, u64)>,
    masked: BTreeMap<u32, bool>,
    released: Vec<(u32, u8)>,
    fail_route: bool,
}

struct FakeLines(Rc<RefCell<LinesState>>);

impl InterruptLines for FakeLines {
    fn locate(&self, gsi: u32) -> Option<(u8, u8)> {
        (gsi < 24).then_some((0, gsi as u8))
    }

    fn route(&self, gsi: u32, vector: u8, rte: u64) -> Result<(), String> {
        let mut s = self.0.borrow_mut();
        if s.fail_route {
            return Err("fake: refused".into());
        }
        assert!(!s.routed.contains_key(&gsi), "GSI {gsi} routed twice");
        s.routed.insert(gsi, (vector, rte));
        s.masked.insert(gsi, true);
        Ok(())
    }

    fn set_masked(&self, gsi: u32, masked: bool) {
        let mut s = self.0.borrow_mut();
        assert!(s.routed.contains_key(&gsi), "GSI {gsi} (un)masked unrouted");
        s.masked.insert(gsi, masked);
    }

    fn release(&self, gsi: u32, vector: u8) {
        let mut s = self.0.borrow_mut();
        assert_eq!(s.routed.remove(&gsi).map(|r| r.0), Some(vector));
        s.masked.insert(gsi, true);
        s.released.push((gsi, vector));
    }
}

struct IntxRig {
    rig: Rig,
    cfg: Rc<FakeConfigSpace>,
    lines: Rc<RefCell<LinesState>>,
}

fn rig_with(lines: bool, remapping: bool) -> IntxRig {
    rig_with_config(lines, remapping, |_| {})
}

fn rig_with_config(
    lines: bool,
    remapping: bool,
    tweak: impl FnOnce(&mut FakeConfigSpace),
) -> IntxRig {
    let line = |gsi| {
        Some(IntxLine {
            gsi,
            level_triggered: true,
            active_low: false,
        })
    };
    let mut groups = groups();
    for g in &mut groups {
        for f in &mut g.devices {
            f.intx_line = match f.address {
                DEV_EDU | DEV_UNIT1 => line(GSI_SHARED),
                DEV_B_ONLY => line(GSI_ALONE),
                _ => None,
            };
        }
    }
    let mut cfg = config();
    tweak(&mut cfg);
    let cfg = Rc::new(cfg);
    let state = Rc::new(RefCell::new(FakeState::new()));
    state.borrow_mut().remapping = remapping;
    let mut vfio = Vfio::new(
        Box::new(FakeIommu(state.clone())),
        Box::new(Shared(cfg.clone())),
        groups,
    );
    let lines_state = Rc::new(RefCell::new(LinesState::default()));
    if lines {
        vfio.set_interrupt_lines(Box::new(FakeLines(lines_state.clone())));
    }
    vfio.add_guest(A, &[1, 2, 3, 4, 6]);
    vfio.add_guest(B, &[2, 3, 5]);
    IntxRig {
        rig: Rig {
            vfio,
            iommu: state,
            a: FakeRam::new(RAM_SIZE, 0x4000_0000),
            b: FakeRam::new(RAM_SIZE, 0x8000_0000),
        },
        cfg,
        lines: lines_state,
    }
}

fn rig() -> IntxRig {
    rig_with(true, false)
}

impl IntxRig {
    /// Guest `guest` opens group `group` in an active container, binds it to the VM and
    /// gets device `name`.
    fn device(&mut self, guest: GuestId, group: u64, name: &str) -> u64 {
        let (_, gs) = self.rig.active(guest, &[group]);
        self.rig.bind(guest, gs[0]).unwrap();
        self.rig.get_device(guest, gs[0], name).unwrap()
    }

    fn info(&mut self, guest: GuestId, device: u64, index: u32) -> IrqInfo {
        let info = IrqInfo {
            argsz: IrqInfo::SIZE as u32,
            index,
            ..IrqInfo::default()
        };
        self.rig.ram(guest).put(ARGS, &info.to_bytes());
        self.rig
            .call(guest, VfioCall::DeviceGetIrqInfo { device, info: ARGS })
            .unwrap();
        let mut out = [0u8; IrqInfo::SIZE];
        out.copy_from_slice(self.rig.ram(guest).get(ARGS, IrqInfo::SIZE));
        IrqInfo::from_bytes(&out)
    }

    fn set(
        &mut self,
        guest: GuestId,
        device: u64,
        flags: u32,
        (index, start, count): (u32, u32, u32),
        data: &[u8],
    ) -> Result<u64, Errno> {
        let set = IrqSet {
            argsz: (IrqSet::SIZE + data.len()) as u32,
            flags,
            index,
            start,
            count,
            _pad: 0,
        };
        self.rig.ram(guest).put(ARGS, &set.to_bytes());
        self.rig.ram(guest).put(ARGS + IrqSet::SIZE as u64, data);
        self.rig
            .call(guest, VfioCall::DeviceSetIrqs { device, set: ARGS })
    }

    fn bind_intx(&mut self, guest: GuestId, device: u64, virt: i32) -> Result<u64, Errno> {
        self.set(
            guest,
            device,
            IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
            (IRQ_INDEX_INTX, 0, 1),
            &virt.to_le_bytes(),
        )
    }

    fn action(&mut self, guest: GuestId, device: u64, action: u32) -> Result<u64, Errno> {
        self.set(
            guest,
            device,
            IRQ_SET_DATA_NONE | action,
            (IRQ_INDEX_INTX, 0, 1),
            &[],
        )
    }

    fn disable(&mut self, guest: GuestId, device: u64) -> Result<u64, Errno> {
        self.set(
            guest,
            device,
            IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER,
            (IRQ_INDEX_INTX, 0, 0),
            &[],
        )
    }

    /// The device side: assert (or deassert) INTx.
    fn assert(&self, address: PciAddress, on: bool) {
        self.cfg
            .device_set_bits16(address, reg::STATUS, STATUS_INTERRUPT, on);
    }

    fn intx_disabled(&self, address: PciAddress) -> bool {
        self.cfg.read16(address, reg::COMMAND) & reg::COMMAND_INTX_DISABLE != 0
    }

    /// `gsi`'s host vector, while routed.
    fn vector(&self, gsi: u32) -> Option<u8> {
        self.lines.borrow().routed.get(&gsi).map(|r| r.0)
    }

    fn pin_masked(&self, gsi: u32) -> bool {
        self.lines
            .borrow()
            .masked
            .get(&gsi)
            .copied()
            .unwrap_or(true)
    }

    /// The host's handler for `gsi`'s vector (pin masked, vector recorded), then the
    /// kernel's delivery: what is injected.
    fn fire(&mut self, gsi: u32) -> Vec<(GuestId, u8)> {
        let vector = self.vector(gsi).expect("GSI routed");
        self.lines.borrow_mut().masked.insert(gsi, true);
        let mut host = [0u64; 4];
        host[usize::from(vector / 64)] |= 1 << (vector % 64);
        let out = self.rig.vfio.take_interrupts(host);
        self.rig.vfio.check_invariants().unwrap();
        out
    }
}

#[test]
fn irq_info_offers_intx_only_with_a_routable_line() {
    let mut r = rig();
    let d = r.device(A, 1, "0000:00:02.0");
    let info = r.info(A, d, IRQ_INDEX_INTX);
    assert_eq!(info.count, 1);
    assert_eq!(
        info.flags,
        IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED
    );
    // A function the firmware gives no line: count 0, SET_IRQS EINVAL.
    let nic = r.device(A, 2, "0000:01:00.0");
    assert_eq!(r.info(A, nic, IRQ_INDEX_INTX).count, 0);
    assert_eq!(r.bind_intx(A, nic, 0x70), Err(Errno::EINVAL));

    // Without I/O APICs handed to the VFIO layer: not offered.
    let mut r = rig_with(false, false);
    let d = r.device(A, 1, "0000:00:02.0");
    let info = r.info(A, d, IRQ_INDEX_INTX);
    assert_eq!((info.count, info.flags), (0, 0));
    assert_eq!(r.bind_intx(A, d, 0x70), Err(Errno::EINVAL));
}

#[test]
fn open_device_keeps_intx_disabled_until_routed() {
    let mut r = rig();
    let d = r.device(A, 1, "0000:00:02.0");
    assert!(r.intx_disabled(DEV_EDU), "open: INTx off");
    // The guest cannot clear Interrupt Disable through config space.
    let on = reg::COMMAND_MEMORY_SPACE | reg::COMMAND_BUS_MASTER;
    let access = RegionAccess {
        argsz: RegionAccess::SIZE as u32,
        index: REGION_CONFIG,
        offset: u64::from(reg::COMMAND),
        size: 2,
        data: u64::from(on),
        ..RegionAccess::default()
    };
    r.rig.a.put(ARGS, &access.to_bytes());
    r.rig
        .call(
            A,
            VfioCall::DeviceRegionWrite {
                device: d,
                access: ARGS,
            },
        )
        .unwrap();
    assert!(r.intx_disabled(DEV_EDU));
    assert!(r.lines.borrow().routed.is_empty(), "nothing routed yet");
}

#[test]
fn intx_end_to_end_automask_unmask() {
    let mut r = rig();
    let d = r.device(A, 1, "0000:00:02.0");
    r.bind_intx(A, d, i32::from(VIRT)).unwrap();
    let vector = r.vector(GSI_SHARED).expect("routed on enable");
    assert!((0x40..=0xEF).contains(&vector));
    let rte = r.lines.borrow().routed[&GSI_SHARED].1;
    assert_eq!(
        rte & 0xFF,
        u64::from(vector),
        "compat entry names the vector"
    );
    assert_ne!(rte & (1 << 15), 0, "level-triggered");
    assert!(!r.pin_masked(GSI_SHARED), "pin unmasked once routed");
    assert!(!r.intx_disabled(DEV_EDU), "device may assert");

    // MSI while INTx is enabled: one type at a time.
    assert_eq!(
        r.set(
            A,
            d,
            IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
            (IRQ_INDEX_MSI, 0, 1),
            &0x71i32.to_le_bytes()
        ),
        Err(Errno::EINVAL)
    );

    // The device asserts: injected, masked at the device, pin unmasked again.
    r.assert(DEV_EDU, true);
    assert_eq!(r.fire(GSI_SHARED), [(A, VIRT)]);
    assert!(r.intx_disabled(DEV_EDU), "automasked");
    assert!(!r.pin_masked(GSI_SHARED));
    // Still asserting but masked: nothing more (the line would not even fire).
    assert_eq!(r.fire(GSI_SHARED), []);
    // The guest acknowledges the device, then unmasks.
    r.assert(DEV_EDU, false);
    r.action(A, d, IRQ_SET_ACTION_UNMASK).unwrap();
    assert!(!r.intx_disabled(DEV_EDU));
    // Asserting again: delivered again.
    r.assert(DEV_EDU, true);
    assert_eq!(r.fire(GSI_SHARED), [(A, VIRT)]);
    r.assert(DEV_EDU, false);

    // Guest mask / unmask by hand; DATA_BOOL zero does nothing.
    r.action(A, d, IRQ_SET_ACTION_UNMASK).unwrap();
    r.action(A, d, IRQ_SET_ACTION_MASK).unwrap();
    assert!(r.intx_disabled(DEV_EDU));
    r.set(
        A,
        d,
        IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_UNMASK,
        (IRQ_INDEX_INTX, 0, 1),
        &[0],
    )
    .unwrap();
    assert!(r.intx_disabled(DEV_EDU), "BOOL 0: no unmask");
    r.set(
        A,
        d,
        IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_UNMASK,
        (IRQ_INDEX_INTX, 0, 1),
        &[1],
    )
    .unwrap();
    assert!(!r.intx_disabled(DEV_EDU));

    // Loopback.
    r.action(A, d, IRQ_SET_ACTION_TRIGGER).unwrap();
    assert_eq!(r.rig.vfio.take_interrupts([0; 4]), [(A, VIRT)]);

    // Unbind (-1): enabled, interrupts dropped (device still automasked).
    r.bind_intx(A, d, -1).unwrap();
    r.assert(DEV_EDU, true);
    assert_eq!(r.fire(GSI_SHARED), []);
    assert!(r.intx_disabled(DEV_EDU));
    r.assert(DEV_EDU, false);

    // Disable: line released, vector back in the pool, MSI now allowed.
    r.disable(A, d).unwrap();
    assert!(r.intx_disabled(DEV_EDU));
    assert_eq!(r.lines.borrow().released, [(GSI_SHARED, vector)]);
    assert_eq!(r.rig.vfio.interrupt_routes().0, 0);
    assert_eq!(r.disable(A, d), Err(Errno::EINVAL), "not enabled");
    assert_eq!(r.action(A, d, IRQ_SET_ACTION_UNMASK), Err(Errno::EINVAL));
    r.set(
        A,
        d,
        IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
        (IRQ_INDEX_MSI, 0, 1),
        &0x71i32.to_le_bytes(),
    )
    .unwrap();
    // ... and INTx is refused while MSI is on.
    assert_eq!(r.bind_intx(A, d, 0x70), Err(Errno::EINVAL));
}

#[test]
fn shared_line_goes_to_the_device_that_asserts() {
    let mut r = rig();
    let edu = r.device(A, 1, "0000:00:02.0");
    let other = r.device(A, 3, "0000:00:03.0");
    r.bind_intx(A, edu, 0x70).unwrap();
    r.bind_intx(A, other, 0x90).unwrap();
    assert_eq!(r.lines.borrow().routed.len(), 1, "one route for the GSI");
    r.assert(DEV_UNIT1, true);
    assert_eq!(r.fire(GSI_SHARED), [(A, 0x90)]);
    assert!(r.intx_disabled(DEV_UNIT1));
    assert!(!r.intx_disabled(DEV_EDU), "the other device untouched");
    r.assert(DEV_EDU, true);
    assert_eq!(r.fire(GSI_SHARED), [(A, 0x70)]);
    // Disabling one keeps the line for the other; releasing the guest frees it.
    r.disable(A, other).unwrap();
    assert!(r.vector(GSI_SHARED).is_some());
    r.rig.release(A);
    assert!(r.intx_disabled(DEV_EDU));
    assert!(r.lines.borrow().routed.is_empty());
    assert_eq!(r.rig.vfio.interrupt_routes(), (0, 0));
}

#[test]
fn a_line_is_never_shared_between_guests() {
    let mut r = rig();
    let edu = r.device(A, 1, "0000:00:02.0");
    let other = r.device(B, 3, "0000:00:03.0");
    r.bind_intx(A, edu, 0x70).unwrap();
    assert_eq!(r.bind_intx(B, other, 0x90), Err(Errno::EBUSY));
    assert!(r.intx_disabled(DEV_UNIT1));
    // Once A lets go, B may have it.
    r.disable(A, edu).unwrap();
    r.bind_intx(B, other, 0x90).unwrap();
    assert_eq!(r.bind_intx(A, edu, 0x70), Err(Errno::EBUSY));
}

#[test]
fn intx_needs_pci23_masking() {
    // A function whose Interrupt Disable does not stick (only I/O, memory and bus
    // master are writable): INTx not offered.
    let mut r = rig_with_config(true, false, |cfg| {
        cfg.insert(
            DEV_B_ONLY,
            FakeFunction::conventional_endpoint(0x1234, 0x1004)
                .with_command(reg::COMMAND_IO_SPACE)
                .with_writable_mask(reg::COMMAND, 0x7),
        )
    });
    let (_, gs) = r.rig.active(B, &[5]);
    r.rig.bind(B, gs[0]).unwrap();
    let d = r.rig.get_device(B, gs[0], "0000:00:04.0").unwrap();
    assert!(!r.intx_disabled(DEV_B_ONLY), "the bit does not stick");
    assert_eq!(r.info(B, d, IRQ_INDEX_INTX).count, 0);
    assert_eq!(r.bind_intx(B, d, 0x70), Err(Errno::EINVAL));
}

#[test]
fn close_and_unbind_disable_intx() {
    let mut r = rig();
    let (_, gs) = r.rig.active(B, &[5]);
    r.rig.bind(B, gs[0]).unwrap();
    let d = r.rig.get_device(B, gs[0], "0000:00:04.0").unwrap();
    r.bind_intx(B, d, 0x70).unwrap();
    assert!(r.vector(GSI_ALONE).is_some());
    r.rig.unbind(B, gs[0]).unwrap();
    assert!(r.lines.borrow().routed.is_empty(), "unbinding drops INTx");
    assert!(r.intx_disabled(DEV_B_ONLY));
    assert_eq!(
        r.bind_intx(B, d, 0x70),
        Err(Errno::EPERM),
        "needs the binding"
    );
    r.rig.bind(B, gs[0]).unwrap();
    r.bind_intx(B, d, 0x70).unwrap();
    r.rig.close(B, d).unwrap();
    assert!(r.lines.borrow().routed.is_empty(), "closing drops INTx");
}

#[test]
fn bad_arguments() {
    let mut r = rig();
    let d = r.device(A, 1, "0000:00:02.0");
    let trig = IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER;
    let bad = |r: &mut IntxRig, flags, range, data: &[u8]| r.set(A, d, flags, range, data);
    assert_eq!(
        bad(&mut r, trig, (IRQ_INDEX_INTX, 0, 2), &[0; 8]),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        bad(&mut r, trig, (IRQ_INDEX_INTX, 1, 1), &[0; 4]),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        bad(&mut r, trig, (IRQ_INDEX_INTX, 0, 1), &[0; 2]),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        bad(&mut r, trig, (IRQ_INDEX_INTX, 0, 1), &31i32.to_le_bytes()),
        Err(Errno::EINVAL),
        "vectors below 32"
    );
    assert_eq!(
        bad(
            &mut r,
            IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_MASK,
            (IRQ_INDEX_INTX, 0, 1),
            &[0; 4]
        ),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        r.action(A, d, IRQ_SET_ACTION_MASK),
        Err(Errno::EINVAL),
        "not enabled"
    );
    assert!(r.lines.borrow().routed.is_empty());
    // Count 0 names no interrupt: only DATA_NONE | TRIGGER (disable) takes it.
    r.bind_intx(A, d, 0x70).unwrap();
    for flags in [
        IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK,
        IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK,
        IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER,
        IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
    ] {
        assert_eq!(
            bad(&mut r, flags, (IRQ_INDEX_INTX, 0, 0), &[]),
            Err(Errno::EINVAL),
            "flags {flags:#x} count 0"
        );
    }
    assert!(!r.intx_disabled(DEV_EDU), "count 0 mask did nothing");
}

#[test]
fn failures_leave_nothing_behind() {
    // The I/O APIC refuses the entry.
    let mut r = rig();
    let d = r.device(A, 1, "0000:00:02.0");
    r.lines.borrow_mut().fail_route = true;
    assert_eq!(r.bind_intx(A, d, 0x70), Err(Errno::ENODEV));
    assert_eq!(r.rig.vfio.interrupt_routes(), (0, 0));
    assert!(r.intx_disabled(DEV_EDU));
    r.lines.borrow_mut().fail_route = false;
    r.bind_intx(A, d, 0x70).unwrap();

    // The IOMMU has no remapping entry for the pin.
    let mut r = rig_with(true, true);
    let d = r.device(A, 1, "0000:00:02.0");
    r.rig.iommu.borrow_mut().fail_map_ioapic = Some(IommuError::NoMemory);
    assert_eq!(r.bind_intx(A, d, 0x70), Err(Errno::ENOSPC));
    assert_eq!(r.rig.vfio.interrupt_routes(), (0, 0));
    assert!(r.lines.borrow().routed.is_empty());
    r.rig.iommu.borrow_mut().fail_map_ioapic = None;
    r.bind_intx(A, d, 0x70).unwrap();
    let rte = r.lines.borrow().routed[&GSI_SHARED].1;
    assert_ne!(rte & (1 << 48), 0, "remappable format from the IOMMU");
    assert_eq!(r.rig.iommu.borrow().ioapic_pins.len(), 1);
    r.disable(A, d).unwrap();
    assert!(
        r.rig.iommu.borrow().ioapic_pins.is_empty(),
        "entry released"
    );
}

#[test]
fn an_unclaimed_storm_leaves_the_line_masked() {
    let mut r = rig();
    let d = r.device(A, 1, "0000:00:02.0");
    r.bind_intx(A, d, 0x70).unwrap();
    for _ in 0..UNCLAIMED_LIMIT - 1 {
        assert_eq!(r.fire(GSI_SHARED), []);
        assert!(!r.pin_masked(GSI_SHARED));
    }
    assert_eq!(r.fire(GSI_SHARED), []);
    assert!(r.pin_masked(GSI_SHARED), "nobody cared: left masked");
    // The guest unmasks its device: the line is tried again.
    r.action(A, d, IRQ_SET_ACTION_UNMASK).unwrap();
    assert!(!r.pin_masked(GSI_SHARED), "re-armed");
    r.assert(DEV_EDU, true);
    assert_eq!(r.fire(GSI_SHARED), [(A, 0x70)]);
}
