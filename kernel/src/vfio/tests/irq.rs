//! Device interrupts: DEVICE_GET_IRQ_INFO, DEVICE_SET_IRQS (argument checks, the MSI
//! state machine, masking, loopback), the MSI capability as programmed, the routes from
//! host vectors to guests' vectors, and their teardown on disable, unbind, close and
//! release.

use alloc::vec::Vec;

use sluice_abi::Errno;
use sluice_abi::vfio::{
    IRQ_INDEX_ERR, IRQ_INDEX_INTX, IRQ_INDEX_MSI, IRQ_INDEX_MSIX, IRQ_INDEX_REQ, IRQ_INFO_EVENTFD,
    IRQ_INFO_MASKABLE, IRQ_INFO_NORESIZE, IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_TRIGGER,
    IRQ_SET_ACTION_UNMASK, IRQ_SET_DATA_BOOL, IRQ_SET_DATA_EVENTFD, IRQ_SET_DATA_NONE, IrqInfo,
    IrqSet, VfioCall,
};
use sluice_pci::{PciAddress, cap_id, reg};

use super::{A, ARGS, B, DEV_EDU, DEV_NIC, DEV_UNIT1, Rig};
use crate::vfio::{GuestId, HOST_VECTOR_FIRST, MSI_ADDRESS_BASE};

const TRIGGER_EVENTFD: u32 = IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER;
const TRIGGER_NONE: u32 = IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER;

/// The open edu device of guest A (group 1), its group bound to the VM when `bind`.
fn edu(rig: &mut Rig, bind: bool) -> (u64, u64) {
    let (_, gs) = rig.active(A, &[1]);
    if bind {
        rig.bind(A, gs[0]).unwrap();
    }
    let d = rig.get_device(A, gs[0], "0000:00:02.0").unwrap();
    (gs[0], d)
}

fn irq_info(rig: &mut Rig, guest: GuestId, device: u64, index: u32) -> Result<IrqInfo, Errno> {
    let info = IrqInfo {
        argsz: IrqInfo::SIZE as u32,
        index,
        ..IrqInfo::default()
    };
    rig.ram(guest).put(ARGS, &info.to_bytes());
    rig.call(guest, VfioCall::DeviceGetIrqInfo { device, info: ARGS })?;
    let mut out = [0u8; IrqInfo::SIZE];
    out.copy_from_slice(rig.ram(guest).get(ARGS, IrqInfo::SIZE));
    Ok(IrqInfo::from_bytes(&out))
}

/// DEVICE_SET_IRQS with the header and `data` (argsz = 24 + data, unless `argsz` given).
fn set_irqs_argsz(
    rig: &mut Rig,
    guest: GuestId,
    device: u64,
    header: (u32, u32, u32, u32),
    data: &[u8],
    argsz: Option<u32>,
) -> Result<u64, Errno> {
    let (flags, index, start, count) = header;
    let set = IrqSet {
        argsz: argsz.unwrap_or((IrqSet::SIZE + data.len()) as u32),
        flags,
        index,
        start,
        count,
        _pad: 0,
    };
    rig.ram(guest).put(ARGS, &set.to_bytes());
    rig.ram(guest).put(ARGS + IrqSet::SIZE as u64, data);
    rig.call(guest, VfioCall::DeviceSetIrqs { device, set: ARGS })
}

fn set_irqs(
    rig: &mut Rig,
    device: u64,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
    data: &[u8],
) -> Result<u64, Errno> {
    set_irqs_argsz(rig, A, device, (flags, index, start, count), data, None)
}

fn vectors(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Offset of `address`'s MSI capability in the fake.
fn msi_offset(rig: &Rig, address: PciAddress) -> u16 {
    super::cap_offset(rig.vfio.config(), address, cap_id::MSI)
}

fn msi_control(rig: &Rig, address: PciAddress) -> u16 {
    let at = msi_offset(rig, address);
    rig.vfio.config().read16(address, at + 2)
}

fn host_bit(v: u8) -> [u64; 4] {
    let mut bits = [0u64; 4];
    bits[usize::from(v / 64)] |= 1 << (v % 64);
    bits
}

#[test]
fn irq_info_per_index() {
    let mut rig = Rig::new();
    let (_, d) = edu(&mut rig, false);
    let msi = irq_info(&mut rig, A, d, IRQ_INDEX_MSI).unwrap();
    assert_eq!(msi.count, 4);
    assert_eq!(
        msi.flags,
        IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_NORESIZE
    );
    assert_eq!(msi.index, IRQ_INDEX_MSI);
    let intx = irq_info(&mut rig, A, d, IRQ_INDEX_INTX).unwrap();
    assert_eq!(
        (intx.count, intx.flags),
        (0, 0),
        "pin set, but no I/O APIC line known: not offered (tests/intx.rs: offered)"
    );
    let msix = irq_info(&mut rig, A, d, IRQ_INDEX_MSIX).unwrap();
    assert_eq!(msix.count, 0, "edu has no MSI-X");
    for index in [IRQ_INDEX_ERR, IRQ_INDEX_REQ] {
        assert_eq!(irq_info(&mut rig, A, d, index).unwrap().count, 0);
    }
    assert_eq!(irq_info(&mut rig, A, d, 5), Err(Errno::EINVAL));
    // Flags in: EINVAL; short argsz: EINVAL.
    let bad = IrqInfo {
        argsz: 16,
        flags: 1,
        index: 1,
        count: 0,
    };
    rig.ram(A).put(ARGS, &bad.to_bytes());
    assert_eq!(
        rig.call(
            A,
            VfioCall::DeviceGetIrqInfo {
                device: d,
                info: ARGS
            }
        ),
        Err(Errno::EINVAL)
    );
    rig.ram(A).put(ARGS, &12u32.to_le_bytes());
    assert_eq!(
        rig.call(
            A,
            VfioCall::DeviceGetIrqInfo {
                device: d,
                info: ARGS
            }
        ),
        Err(Errno::EINVAL)
    );
    // Handles: another guest's, a group handle.
    assert_eq!(irq_info(&mut rig, B, d, IRQ_INDEX_MSI), Err(Errno::EBADF));
    let (_, gs) = (0, rig.open(A, 2).unwrap());
    assert_eq!(irq_info(&mut rig, A, gs, IRQ_INDEX_MSI), Err(Errno::ENOTTY));
}

#[test]
fn msix_count_from_its_capability() {
    let mut rig = Rig::new();
    let (_, gs) = rig.active(A, &[2]);
    let d = rig.get_device(A, gs[0], "0000:01:00.0").unwrap();
    let info = irq_info(&mut rig, A, d, IRQ_INDEX_MSIX).unwrap();
    assert_eq!(
        (info.count, info.flags),
        (0, 0),
        "the table (BAR0 + 0x1000) lies in an assigned memory BAR, but this rig has no platform MMIO to write it with: not offered (tests/msix.rs: offered)"
    );
    assert_eq!(irq_info(&mut rig, A, d, IRQ_INDEX_MSI).unwrap().count, 0);
    // Not offered: EINVAL even when bound.
    rig.bind(A, gs[0]).unwrap();
    assert_eq!(
        set_irqs(
            &mut rig,
            d,
            TRIGGER_EVENTFD,
            IRQ_INDEX_MSIX,
            0,
            1,
            &vectors(&[0x50])
        ),
        Err(Errno::EINVAL)
    );
    let _ = DEV_NIC;
}

#[test]
fn set_irqs_argument_checks() {
    let mut rig = Rig::new();
    let (_, d) = edu(&mut rig, true);
    let v = vectors(&[0x60]);
    let einval = |rig: &mut Rig, flags, index, start, count, data: &[u8]| {
        assert_eq!(
            set_irqs(rig, d, flags, index, start, count, data),
            Err(Errno::EINVAL),
            "flags {flags:#x} index {index} start {start} count {count}"
        );
    };
    // Flags: none, two data types, two actions, unknown bits.
    einval(&mut rig, 0, IRQ_INDEX_MSI, 0, 1, &v);
    einval(&mut rig, IRQ_SET_DATA_EVENTFD, IRQ_INDEX_MSI, 0, 1, &v);
    einval(&mut rig, IRQ_SET_ACTION_TRIGGER, IRQ_INDEX_MSI, 0, 1, &v);
    einval(
        &mut rig,
        TRIGGER_EVENTFD | IRQ_SET_DATA_BOOL,
        IRQ_INDEX_MSI,
        0,
        1,
        &v,
    );
    einval(
        &mut rig,
        TRIGGER_EVENTFD | IRQ_SET_ACTION_MASK,
        IRQ_INDEX_MSI,
        0,
        1,
        &v,
    );
    einval(&mut rig, TRIGGER_EVENTFD | 1 << 6, IRQ_INDEX_MSI, 0, 1, &v);
    // Index and range.
    einval(&mut rig, TRIGGER_EVENTFD, 5, 0, 1, &v);
    einval(&mut rig, TRIGGER_EVENTFD, IRQ_INDEX_MSI, 4, 1, &v);
    einval(
        &mut rig,
        TRIGGER_EVENTFD,
        IRQ_INDEX_MSI,
        3,
        2,
        &vectors(&[0x60, 0x61]),
    );
    einval(&mut rig, TRIGGER_EVENTFD, IRQ_INDEX_MSI, 1, u32::MAX, &v);
    einval(&mut rig, TRIGGER_EVENTFD, IRQ_INDEX_ERR, 0, 1, &v);
    // INTx: counted, not offered.
    einval(&mut rig, TRIGGER_EVENTFD, IRQ_INDEX_INTX, 0, 1, &v);
    // Short data.
    einval(&mut rig, TRIGGER_EVENTFD, IRQ_INDEX_MSI, 0, 2, &v);
    assert_eq!(
        set_irqs_argsz(
            &mut rig,
            A,
            d,
            (TRIGGER_EVENTFD, IRQ_INDEX_MSI, 0, 1),
            &v,
            Some(27)
        ),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        set_irqs_argsz(
            &mut rig,
            A,
            d,
            (TRIGGER_EVENTFD, IRQ_INDEX_MSI, 0, 1),
            &v,
            Some(20)
        ),
        Err(Errno::EINVAL)
    );
    // Vector values: below 32, above 255, below -1.
    for bad in [0, 31, 256, -2, i32::MIN] {
        einval(
            &mut rig,
            TRIGGER_EVENTFD,
            IRQ_INDEX_MSI,
            0,
            1,
            &vectors(&[bad]),
        );
    }
    // Disable, loopback, mask while MSI is off.
    einval(&mut rig, TRIGGER_NONE, IRQ_INDEX_MSI, 0, 0, &[]);
    einval(&mut rig, TRIGGER_NONE, IRQ_INDEX_MSI, 0, 1, &[]);
    einval(
        &mut rig,
        IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK,
        IRQ_INDEX_MSI,
        0,
        1,
        &[],
    );
    // Nothing happened.
    assert_eq!(rig.vfio.interrupt_routes(), (0, 0));
    assert_eq!(msi_control(&rig, DEV_EDU) & 1, 0);
    // Another guest's handle.
    assert_eq!(
        set_irqs_argsz(
            &mut rig,
            B,
            d,
            (TRIGGER_EVENTFD, IRQ_INDEX_MSI, 0, 1),
            &v,
            None
        ),
        Err(Errno::EBADF)
    );
}

#[test]
fn binding_needs_the_vm_binding() {
    let mut rig = Rig::new();
    let (g, d) = edu(&mut rig, false);
    let v = vectors(&[0x60]);
    assert_eq!(
        set_irqs(&mut rig, d, TRIGGER_EVENTFD, IRQ_INDEX_MSI, 0, 1, &v),
        Err(Errno::EPERM)
    );
    assert_eq!(
        set_irqs(&mut rig, d, TRIGGER_NONE, IRQ_INDEX_MSI, 0, 1, &[]),
        Err(Errno::EPERM)
    );
    rig.bind(A, g).unwrap();
    set_irqs(&mut rig, d, TRIGGER_EVENTFD, IRQ_INDEX_MSI, 0, 1, &v).unwrap();
    assert!(rig.vfio.interrupts_armed());
    // Unbinding the VM disables the interrupts.
    rig.unbind(A, g).unwrap();
    assert_eq!(rig.vfio.interrupt_routes(), (0, 0));
    assert!(!rig.vfio.interrupts_armed());
    assert_eq!(msi_control(&rig, DEV_EDU) & 1, 0);
}

#[test]
fn msi_programmed_routed_and_disabled() {
    let mut rig = Rig::new();
    rig.vfio.set_interrupt_target(3);
    let (_, d) = edu(&mut rig, true);
    // Three vectors: the device gets a block of 4 (MME 2).
    set_irqs(
        &mut rig,
        d,
        TRIGGER_EVENTFD,
        IRQ_INDEX_MSI,
        0,
        3,
        &vectors(&[0x60, -1, 0x62]),
    )
    .unwrap();
    let at = msi_offset(&rig, DEV_EDU);
    let cfg = rig.vfio.config();
    let control = cfg.read16(DEV_EDU, at + 2);
    assert_eq!(control & 1, 1, "MSI enabled");
    assert_eq!((control >> 4) & 7, 2, "MME: 4 vectors");
    assert_eq!((control >> 1) & 7, 2, "MMC kept");
    assert_eq!(cfg.read32(DEV_EDU, at + 4), MSI_ADDRESS_BASE | 3 << 12);
    assert_eq!(cfg.read32(DEV_EDU, at + 8), 0, "address high");
    let base = cfg.read32(DEV_EDU, at + 12) as u8;
    assert!(base >= HOST_VECTOR_FIRST && base % 4 == 0, "{base:#x}");
    assert_ne!(rig.command(DEV_EDU) & reg::COMMAND_INTX_DISABLE, 0);
    assert_eq!(rig.vfio.interrupt_routes(), (4, 3));
    assert_eq!(rig.vfio.interrupt_route(base), Some((A, 0, Some(0x60))));
    assert_eq!(rig.vfio.interrupt_route(base + 1), Some((A, 1, None)));
    // Device interrupts: bound → injected; unbound → dropped; unrouted → dropped.
    let mut host = host_bit(base);
    host[usize::from((base + 1) / 64)] |= 1 << ((base + 1) % 64);
    host[usize::from((base + 2) / 64)] |= 1 << ((base + 2) % 64);
    host[usize::from((base + 3) / 64)] |= 1 << ((base + 3) % 64);
    assert_eq!(rig.vfio.take_interrupts(host), [(A, 0x60), (A, 0x62)]);
    assert_eq!(rig.vfio.interrupt_counts(), (2, 2));
    // Rebinding inside the enabled count; beyond it: EINVAL.
    set_irqs(
        &mut rig,
        d,
        TRIGGER_EVENTFD,
        IRQ_INDEX_MSI,
        1,
        1,
        &vectors(&[0x61]),
    )
    .unwrap();
    assert_eq!(rig.vfio.take_interrupts(host_bit(base + 1)), [(A, 0x61)]);
    assert_eq!(
        set_irqs(
            &mut rig,
            d,
            TRIGGER_EVENTFD,
            IRQ_INDEX_MSI,
            3,
            1,
            &vectors(&[0x63])
        ),
        Err(Errno::EINVAL)
    );
    // Loopback: NONE fires the range, BOOL the chosen ones.
    set_irqs(&mut rig, d, TRIGGER_NONE, IRQ_INDEX_MSI, 0, 2, &[]).unwrap();
    set_irqs(
        &mut rig,
        d,
        IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER,
        IRQ_INDEX_MSI,
        0,
        3,
        &[0, 0, 1],
    )
    .unwrap();
    assert_eq!(
        rig.vfio.take_interrupts([0; 4]),
        [(A, 0x60), (A, 0x61), (A, 0x62)]
    );
    // Disable: capability off and cleared, vectors freed, routes gone.
    set_irqs(&mut rig, d, TRIGGER_NONE, IRQ_INDEX_MSI, 0, 0, &[]).unwrap();
    let cfg = rig.vfio.config();
    assert_eq!(cfg.read16(DEV_EDU, at + 2) & 0x71, 0);
    assert_eq!(cfg.read32(DEV_EDU, at + 4), 0);
    assert_eq!(cfg.read32(DEV_EDU, at + 12), 0);
    assert_eq!(rig.vfio.interrupt_routes(), (0, 0));
    assert!(rig.vfio.take_interrupts(host_bit(base)).is_empty());
    // Enable again with 1 vector: MME 0.
    set_irqs(
        &mut rig,
        d,
        TRIGGER_EVENTFD,
        IRQ_INDEX_MSI,
        0,
        1,
        &vectors(&[0x70]),
    )
    .unwrap();
    assert_eq!((msi_control(&rig, DEV_EDU) >> 4) & 7, 0);
    assert_eq!(rig.vfio.interrupt_routes(), (1, 1));
}

#[test]
fn masking_holds_and_releases() {
    let mut rig = Rig::new();
    let (_, d) = edu(&mut rig, true);
    set_irqs(
        &mut rig,
        d,
        TRIGGER_EVENTFD,
        IRQ_INDEX_MSI,
        0,
        2,
        &vectors(&[0x60, 0x61]),
    )
    .unwrap();
    let base = rig
        .vfio
        .config()
        .read32(DEV_EDU, msi_offset(&rig, DEV_EDU) + 12) as u8;
    let mask = IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_MASK;
    set_irqs(&mut rig, d, mask, IRQ_INDEX_MSI, 0, 2, &[1, 0]).unwrap();
    let mut both = host_bit(base);
    both[usize::from((base + 1) / 64)] |= 1 << ((base + 1) % 64);
    assert_eq!(rig.vfio.take_interrupts(both), [(A, 0x61)], "0x60 held");
    assert_eq!(
        rig.vfio.take_interrupts(both),
        [(A, 0x61)],
        "still held, once"
    );
    // A loopback on a masked vector is held too.
    set_irqs(&mut rig, d, TRIGGER_NONE, IRQ_INDEX_MSI, 0, 1, &[]).unwrap();
    assert!(rig.vfio.take_interrupts([0; 4]).is_empty());
    set_irqs(
        &mut rig,
        d,
        IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK,
        IRQ_INDEX_MSI,
        0,
        2,
        &[],
    )
    .unwrap();
    assert_eq!(
        rig.vfio.take_interrupts([0; 4]),
        [(A, 0x60)],
        "released once"
    );
    assert!(rig.vfio.take_interrupts([0; 4]).is_empty());
    // DATA_EVENTFD with MASK: EINVAL; range beyond the enabled count: EINVAL.
    assert_eq!(
        set_irqs(
            &mut rig,
            d,
            IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_MASK,
            IRQ_INDEX_MSI,
            0,
            1,
            &vectors(&[0x60])
        ),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        set_irqs(&mut rig, d, mask, IRQ_INDEX_MSI, 1, 2, &[1, 1]),
        Err(Errno::EINVAL)
    );
}

#[test]
fn per_vector_mask_bits_are_programmed() {
    let mut rig = Rig::new();
    let (_, gs) = rig.active(A, &[3]);
    rig.bind(A, gs[0]).unwrap();
    let d = rig.get_device(A, gs[0], "0000:00:03.0").unwrap();
    assert_eq!(irq_info(&mut rig, A, d, IRQ_INDEX_MSI).unwrap().count, 1);
    set_irqs(
        &mut rig,
        d,
        TRIGGER_EVENTFD,
        IRQ_INDEX_MSI,
        0,
        1,
        &vectors(&[0x40]),
    )
    .unwrap();
    let at = msi_offset(&rig, DEV_UNIT1);
    // 32-bit capability: data at +8, mask at +12.
    let base = rig.vfio.config().read32(DEV_UNIT1, at + 8);
    assert!(base >= u32::from(HOST_VECTOR_FIRST));
    set_irqs(
        &mut rig,
        d,
        IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK,
        IRQ_INDEX_MSI,
        0,
        1,
        &[],
    )
    .unwrap();
    assert_eq!(rig.vfio.config().read32(DEV_UNIT1, at + 12), 1);
    set_irqs(
        &mut rig,
        d,
        IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK,
        IRQ_INDEX_MSI,
        0,
        1,
        &[],
    )
    .unwrap();
    assert_eq!(rig.vfio.config().read32(DEV_UNIT1, at + 12), 0);
}

#[test]
fn host_vectors_are_shared_out_and_exhausted() {
    let mut rig = Rig::new();
    // Guest A: edu (4 vectors) and unit1 (1); guest B: nothing it can reach of A's.
    let (_, d) = edu(&mut rig, true);
    let (_, gs) = rig.active(A, &[3]);
    rig.bind(A, gs[0]).unwrap();
    let d3 = rig.get_device(A, gs[0], "0000:00:03.0").unwrap();
    set_irqs(
        &mut rig,
        d,
        TRIGGER_EVENTFD,
        IRQ_INDEX_MSI,
        0,
        4,
        &vectors(&[0x60; 4]),
    )
    .unwrap();
    set_irqs(
        &mut rig,
        d3,
        TRIGGER_EVENTFD,
        IRQ_INDEX_MSI,
        0,
        1,
        &vectors(&[0x70]),
    )
    .unwrap();
    assert_eq!(rig.vfio.interrupt_routes(), (5, 5));
    let edu_base = rig
        .vfio
        .config()
        .read32(DEV_EDU, msi_offset(&rig, DEV_EDU) + 12) as u8;
    let unit_base = rig
        .vfio
        .config()
        .read32(DEV_UNIT1, msi_offset(&rig, DEV_UNIT1) + 8) as u8;
    assert!(unit_base < edu_base || unit_base >= edu_base + 4);
    // Closing one device frees only its vectors.
    rig.close(A, d).unwrap();
    assert_eq!(rig.vfio.interrupt_routes(), (1, 1));
    assert_eq!(
        rig.vfio.interrupt_route(unit_base),
        Some((A, 0, Some(0x70)))
    );
    assert_eq!(msi_control(&rig, DEV_EDU) & 1, 0, "closed: MSI off");
}

#[test]
fn routes_end_with_close_and_release() {
    let mut rig = Rig::new();
    let (_, d) = edu(&mut rig, true);
    set_irqs(
        &mut rig,
        d,
        TRIGGER_EVENTFD,
        IRQ_INDEX_MSI,
        0,
        1,
        &vectors(&[0x60]),
    )
    .unwrap();
    // A loopback queued but not yet taken dies with the device.
    set_irqs(&mut rig, d, TRIGGER_NONE, IRQ_INDEX_MSI, 0, 1, &[]).unwrap();
    rig.close(A, d).unwrap();
    assert!(rig.vfio.take_interrupts([0; 4]).is_empty());
    assert_eq!(rig.vfio.interrupt_routes(), (0, 0));
    // Reopen, enable, and end the guest: everything goes.
    let (_, gs) = rig.active(A, &[3]);
    rig.bind(A, gs[0]).unwrap();
    let d3 = rig.get_device(A, gs[0], "0000:00:03.0").unwrap();
    set_irqs(
        &mut rig,
        d3,
        TRIGGER_EVENTFD,
        IRQ_INDEX_MSI,
        0,
        1,
        &vectors(&[0x61]),
    )
    .unwrap();
    let base = rig
        .vfio
        .config()
        .read32(DEV_UNIT1, msi_offset(&rig, DEV_UNIT1) + 8) as u8;
    rig.release(A);
    assert_eq!(rig.vfio.interrupt_routes(), (0, 0));
    assert!(!rig.vfio.interrupts_armed());
    assert!(rig.vfio.take_interrupts(host_bit(base)).is_empty());
    assert_eq!(msi_control(&rig, DEV_UNIT1) & 1, 0);
    rig.vfio.check_invariants().unwrap();
    // B gets the group next, and starts with MSI off and no routes.
    let (_, gs) = rig.active(B, &[3]);
    rig.bind(B, gs[0]).unwrap();
    let d = rig.get_device(B, gs[0], "0000:00:03.0").unwrap();
    assert_eq!(
        set_irqs_argsz(
            &mut rig,
            B,
            d,
            (TRIGGER_NONE, IRQ_INDEX_MSI, 0, 1),
            &[],
            None
        ),
        Err(Errno::EINVAL),
        "MSI is off for the next owner"
    );
}

/// The host vector routed to subindex 0 of a device of `guest` (the block's base).
fn base_vector(rig: &Rig, guest: GuestId) -> u8 {
    (HOST_VECTOR_FIRST..=crate::vfio::HOST_VECTOR_LAST)
        .find(|&v| matches!(rig.vfio.interrupt_route(v), Some((g, 0, _)) if g == guest))
        .expect("a routed block")
}

#[test]
fn msi_through_interrupt_remapping() {
    let mut rig = Rig::new();
    rig.iommu.borrow_mut().remapping = true;
    assert!(rig.vfio.interrupt_remapping());
    rig.vfio.set_interrupt_target(3);
    let (_, d) = edu(&mut rig, true);
    set_irqs(
        &mut rig,
        d,
        TRIGGER_EVENTFD,
        IRQ_INDEX_MSI,
        0,
        3,
        &vectors(&[0x60, 0x61, 0x62]),
    )
    .unwrap();
    let base = base_vector(&rig, A);
    // The device is programmed with the IOMMU's message, not a compatibility one.
    let at = msi_offset(&rig, DEV_EDU);
    let cfg = rig.vfio.config();
    let first = {
        let s = rig.iommu.borrow();
        let (&first, &entry) = s.irtes.iter().next().expect("entries written");
        assert_eq!(
            entry,
            (DEV_EDU, base, 4, 3),
            "block of 4 for MME 2, to APIC 3"
        );
        first
    };
    assert_eq!(
        u64::from(cfg.read32(DEV_EDU, at + 4)),
        super::fakes::FakeState::msi_address(first)
    );
    assert_eq!(cfg.read32(DEV_EDU, at + 8), 0, "address high");
    assert_eq!(cfg.read32(DEV_EDU, at + 12), 0, "data: subhandle 0");
    assert_eq!((msi_control(&rig, DEV_EDU) >> 4) & 7, 2);
    // Delivery through the host vectors is unchanged.
    assert_eq!(rig.vfio.take_interrupts(host_bit(base + 2)), [(A, 0x62)]);
    rig.vfio.check_invariants().unwrap();
    // Disable: the entries go.
    set_irqs(&mut rig, d, TRIGGER_NONE, IRQ_INDEX_MSI, 0, 0, &[]).unwrap();
    assert!(rig.iommu.borrow().irtes.is_empty());
    assert_eq!(rig.iommu.borrow().msi_unmaps, 1);
    // Close: the entries go.
    set_irqs(
        &mut rig,
        d,
        TRIGGER_EVENTFD,
        IRQ_INDEX_MSI,
        0,
        1,
        &vectors(&[0x60]),
    )
    .unwrap();
    assert_eq!(rig.iommu.borrow().irtes.len(), 1);
    rig.close(A, d).unwrap();
    assert!(rig.iommu.borrow().irtes.is_empty());
    // The guest's end: the entries go.
    let (_, gs) = rig.active(A, &[3]);
    rig.bind(A, gs[0]).unwrap();
    let d3 = rig.get_device(A, gs[0], "0000:00:03.0").unwrap();
    set_irqs(
        &mut rig,
        d3,
        TRIGGER_EVENTFD,
        IRQ_INDEX_MSI,
        0,
        1,
        &vectors(&[0x61]),
    )
    .unwrap();
    assert_eq!(
        rig.iommu.borrow().irtes.values().next().map(|e| e.0),
        Some(DEV_UNIT1)
    );
    rig.release(A);
    assert!(rig.iommu.borrow().irtes.is_empty());
    assert_eq!(rig.iommu.borrow().msi_unmaps, 3);
    assert_eq!(rig.vfio.interrupt_routes(), (0, 0));
    rig.vfio.check_invariants().unwrap();
}

#[test]
fn remapping_failures_leave_msi_off() {
    let mut rig = Rig::new();
    rig.iommu.borrow_mut().remapping = true;
    let (_, d) = edu(&mut rig, true);
    for (error, errno) in [
        (sluice_iommu::IommuError::NoMemory, Errno::ENOSPC),
        (
            sluice_iommu::IommuError::InvalidationTimeout {
                unit: sluice_iommu::UnitId(0),
            },
            Errno::EBUSY,
        ),
    ] {
        rig.iommu.borrow_mut().fail_map_msi = Some(error);
        assert_eq!(
            set_irqs(
                &mut rig,
                d,
                TRIGGER_EVENTFD,
                IRQ_INDEX_MSI,
                0,
                1,
                &vectors(&[0x60])
            ),
            Err(errno)
        );
        assert_eq!(rig.vfio.interrupt_routes(), (0, 0));
        assert_eq!(msi_control(&rig, DEV_EDU) & 1, 0, "MSI stays off");
        rig.vfio.check_invariants().unwrap();
    }
    // Once the IOMMU recovers, MSI works.
    rig.iommu.borrow_mut().fail_map_msi = None;
    set_irqs(
        &mut rig,
        d,
        TRIGGER_EVENTFD,
        IRQ_INDEX_MSI,
        0,
        1,
        &vectors(&[0x60]),
    )
    .unwrap();
    assert_eq!(rig.vfio.interrupt_routes(), (1, 1));
}
