//! Host tests of the VT-d driver (`sluice_vtd::driver`) against fake remapping units
//! (`driver_support.rs`): bring-up order, default deny, the entries written (decoded
//! here, bit by bit), the exact invalidation descriptors of each operation, domain-id
//! lifetime, dead units, faults and RMRR identity maps.

mod driver_support;

use driver_support::*;
use sluice_iommu::{Access, DeviceDma, Iommu, IommuError, IovaRange, UnitId, Vendor};
use sluice_pci::{DeviceTable, PciAddress};
use sluice_vtd::DmarTopology;
use sluice_vtd::driver::{
    DriverConfig, IdentityRegion, UnitFailure, VtdIommu, WalkFault, translation_type,
};

const ADDR: u64 = 0x000f_ffff_ffff_f000;
const RW: Access = Access::READ.union(Access::WRITE);
const U0: UnitId = UnitId(0);

fn reg_writes(rig: &Rig, unit: usize) -> Vec<Event> {
    rig.mem
        .borrow()
        .log
        .iter()
        .filter(|e| match e {
            Event::Reg32 { unit: u, .. } | Event::Reg64 { unit: u, .. } => *u == unit,
            Event::Descriptor { unit: u, .. } => *u == unit,
            _ => false,
        })
        .cloned()
        .collect()
}

fn small_budget() -> DriverConfig {
    DriverConfig {
        invalidation_spin_budget: 1000,
        register_spin_budget: 1000,
        ..DriverConfig::default()
    }
}

/// The context entry of `rid` as (lo, hi), read from memory by the test's own decoding.
fn context(rig: &Rig, driver: &Driver, rid: u16) -> Option<(u64, u64)> {
    let root = driver.unit_info(U0).unwrap().root_table;
    context_of(&rig.mem.borrow(), root, rid)
}

// ---------------------------------------------------------------------------------------
// Bring-up.
// ---------------------------------------------------------------------------------------

#[test]
fn bring_up_order_on_qemu_defaults() {
    let (rig, driver) = qemu();
    let info = driver.unit_info(U0).unwrap();
    assert!(info.queued_invalidation);
    let iro = 0xf0;
    let events = reg_writes(&rig, 0);
    let mut expected_prefix = vec![Event::Reg64 {
        unit: 0,
        offset: reg::IQT,
        value: 0,
    }];
    let Event::Reg64 {
        offset: reg::IQA,
        value: iqa,
        ..
    } = events[1]
    else {
        panic!("IQA second: {events:#?}")
    };
    assert_eq!(iqa & 0xfff, 0, "DW = 0, QS = 0");
    expected_prefix.push(events[1].clone());
    expected_prefix.push(Event::Reg32 {
        unit: 0,
        offset: reg::GCMD,
        value: QIE,
    });
    expected_prefix.push(Event::Reg64 {
        unit: 0,
        offset: reg::RTADDR,
        value: info.root_table,
    });
    expected_prefix.push(Event::Reg32 {
        unit: 0,
        offset: reg::GCMD,
        value: QIE | SRTP,
    });
    assert_eq!(events[..5], expected_prefix[..]);
    assert!(matches!(
        events[5],
        Event::Reg64 {
            offset: reg::IQT,
            value: 0x30,
            ..
        }
    ));
    let descriptors: Vec<Desc> = rig.descriptors(0);
    assert_eq!(descriptors.len(), 3);
    assert_eq!(
        descriptors[0],
        Desc::Context {
            g: 1,
            did: 0,
            sid: 0,
            fm: 0
        }
    );
    assert_eq!(
        descriptors[1],
        Desc::Iotlb {
            g: 1,
            did: 0,
            dr: true,
            dw: true,
            addr: 0,
            ih: false,
            am: 0
        }
    );
    assert!(matches!(
        descriptors[2],
        Desc::Wait {
            sw: true,
            iflag: false,
            ..
        }
    ));
    // TE last, carrying QIE, not echoing RTPS.
    assert_eq!(
        events.last().unwrap(),
        &Event::Reg32 {
            unit: 0,
            offset: reg::GCMD,
            value: QIE | TE,
        }
    );
    let unit = rig.unit(0);
    assert_eq!(unit.gsts & (TE | QIE | SRTP), TE | QIE | SRTP);
    assert_eq!(unit.srtp_count, 1);
    assert_eq!(unit.root, Some(info.root_table));
    assert_eq!(unit.wbf_count, 0);
    assert_eq!(iro, unit.iro());
    drop(unit);
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
    assert_eq!(driver.vendor(), Vendor::IntelVtd);
}

#[test]
fn persistent_enables_survive_every_command() {
    // Interrupt remapping already on (someone else's): every GCMD write keeps IRE.
    let (rig, setups) = Rig::new(&[(QEMU_CAP, QEMU_ECAP)]);
    rig.unit(0).gsts |= IRE;
    let driver = VtdIommu::with_units(
        setups,
        Vec::new(),
        SharedMem(rig.mem.clone()),
        Default::default(),
    )
    .unwrap();
    let unit = rig.unit(0);
    assert!(
        unit.gcmd_writes.iter().all(|w| w & IRE != 0),
        "{:x?}",
        unit.gcmd_writes
    );
    assert!(
        unit.gcmd_writes
            .iter()
            .all(|w| w & (SRTP | SIRTP) == 0 || *w & SRTP != 0)
    );
    assert_eq!(unit.gsts & IRE, IRE);
    assert_eq!(unit.srtp_count, 1);
    drop(unit);
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
    drop(driver);
}

#[test]
fn translation_left_on_is_never_turned_off() {
    // Firmware (or an earlier kernel) left TE and QI on with its own root table.
    let (rig, setups) = Rig::new(&[(QEMU_CAP, QEMU_ECAP)]);
    {
        let mut unit = rig.unit(0);
        unit.gsts = TE | QIE | SRTP;
        unit.root = Some(0xdead_0000);
        unit.qi_enabled = true;
    }
    let driver = VtdIommu::with_units(
        setups,
        Vec::new(),
        SharedMem(rig.mem.clone()),
        Default::default(),
    )
    .unwrap();
    let unit = rig.unit(0);
    // QI turned off (TE kept) to reprogram the queue, then on again.
    assert_eq!(unit.gcmd_writes[0], TE);
    assert!(unit.gcmd_writes.iter().all(|w| w & TE != 0));
    assert_eq!(unit.root, Some(driver.unit_info(U0).unwrap().root_table));
    drop(unit);
    assert_eq!(rig.descriptors(0).len(), 3);
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

#[test]
fn refused_units_are_left_untouched() {
    // SAGAW 2-level only (reserved): no usable depth.
    let two_level = (QEMU_CAP & !(0x1f << 8)) | 1 << 8;
    let (rig, setups) = Rig::new(&[(QEMU_CAP, QEMU_ECAP), (two_level, QEMU_ECAP)]);
    let result = VtdIommu::with_units(
        setups,
        Vec::new(),
        SharedMem(rig.mem.clone()),
        Default::default(),
    );
    assert_eq!(
        result.err(),
        Some(IommuError::Unsupported { unit: UnitId(1) })
    );
    // Checked before anything was written, on either unit.
    assert!(rig.unit(0).gcmd_writes.is_empty() && rig.unit(1).gcmd_writes.is_empty());
    assert_eq!(rig.mem.borrow().allocated, 0);

    let (rig, setups) = Rig::new(&[(nd(QEMU_CAP, 7), QEMU_ECAP)]);
    let result = VtdIommu::with_units(
        setups,
        Vec::new(),
        SharedMem(rig.mem.clone()),
        Default::default(),
    );
    assert_eq!(result.err(), Some(IommuError::Unsupported { unit: U0 }));
}

#[test]
fn unacknowledged_commands_time_out() {
    for bit in [TE, QIE, SRTP] {
        let (rig, setups) = Rig::new(&[(QEMU_CAP, QEMU_ECAP)]);
        rig.unit(0).ignore_gcmd = bit;
        let result = VtdIommu::with_units(
            setups,
            Vec::new(),
            SharedMem(rig.mem.clone()),
            small_budget(),
        );
        assert_eq!(
            result.err(),
            Some(IommuError::HardwareTimeout { unit: U0 }),
            "{bit:#x}"
        );
    }
}

#[test]
fn format_page_sizes_and_ranges() {
    let (_rig, mut driver) = qemu();
    let format = driver.format();
    assert_eq!(
        (format.levels, format.address_width, format.coherent),
        (3, 39, false)
    );
    let domain = driver.create_domain().unwrap();
    assert_eq!(
        driver.page_sizes(domain).unwrap(),
        1 << 12 | 1 << 21 | 1 << 30
    );
    assert_eq!(
        driver.iova_ranges(domain).unwrap(),
        [
            IovaRange {
                start: 0,
                last: 0xFEDF_FFFF
            },
            IovaRange {
                start: 0xFEF0_0000,
                last: (1 << 39) - 1
            }
        ]
    );

    let (_rig, mut driver) = setup(&[(aw48(QEMU_CAP), coherent(QEMU_ECAP))]);
    let format = driver.format();
    assert_eq!(
        (format.levels, format.address_width, format.coherent),
        (4, 48, true)
    );
    let domain = driver.create_domain().unwrap();
    assert_eq!(driver.iova_ranges(domain).unwrap()[1].last, (1 << 48) - 1);

    // Two units: the common depth (3) and the common superpages (2M only).
    let only_2m = QEMU_CAP & !(1 << 35);
    let (_rig, mut driver) = setup(&[(aw48(QEMU_CAP), QEMU_ECAP), (only_2m, QEMU_ECAP)]);
    assert_eq!(driver.format().levels, 3);
    assert_eq!(driver.unit_info(U0).unwrap().format.levels, 4);
    let domain = driver.create_domain().unwrap();
    assert_eq!(driver.page_sizes(domain).unwrap(), 1 << 12 | 1 << 21);
}

#[test]
fn dma_coherent_is_ecap_c() {
    // QEMU's unit: ECAP.C clear.
    let (_rig, driver) = qemu();
    assert_eq!(driver.dma_coherent(U0), Some(false));
    assert_eq!(driver.dma_coherent(UnitId(1)), None);
    // Per unit: one coherent, one not.
    let (_rig, driver) = setup(&[(QEMU_CAP, coherent(QEMU_ECAP)), (QEMU_CAP, QEMU_ECAP)]);
    assert_eq!(driver.dma_coherent(U0), Some(true));
    assert_eq!(driver.dma_coherent(UnitId(1)), Some(false));
    assert_eq!(driver.dma_coherent(UnitId(2)), None);
    // Snoop control (ECAP.SC, bit 7) alone does not make a unit coherent.
    let (_rig, driver) = setup(&[(QEMU_CAP, QEMU_ECAP | 1 << 7)]);
    assert_eq!(driver.dma_coherent(U0), Some(false));
}

#[test]
fn builds_from_the_qemu_dmar() {
    let table = DeviceTable::new(Vec::new());
    let topology =
        DmarTopology::parse(include_bytes!("fixtures/qemu72-aw48.dmar"), &table).unwrap();
    let (rig, setups) = Rig::new(&[(aw48(QEMU_CAP), QEMU_ECAP)]);
    let registers = setups.into_iter().map(|s| s.registers).collect();
    let driver = VtdIommu::new(
        &topology,
        registers,
        SharedMem(rig.mem.clone()),
        Default::default(),
    )
    .unwrap();
    assert_eq!(driver.unit_ids().collect::<Vec<_>>(), [U0]);
    assert_eq!(driver.format().levels, 4);
    // Wrong number of register blocks.
    let result = VtdIommu::<FakeVtdUnit, SharedMem>::new(
        &topology,
        Vec::new(),
        SharedMem(rig.mem.clone()),
        Default::default(),
    );
    assert!(matches!(result, Err(IommuError::Unsupported { .. })));
}

// ---------------------------------------------------------------------------------------
// Default deny, attach, detach.
// ---------------------------------------------------------------------------------------

#[test]
fn everything_is_blocked_after_enable() {
    let (rig, mut driver) = qemu();
    let root = driver.unit_info(U0).unwrap().root_table;
    {
        let mem = rig.mem.borrow();
        for bus in 0..256u64 {
            assert_eq!(
                (mem.read(root + bus * 16), mem.read(root + bus * 16 + 8)),
                (0, 0)
            );
        }
    }
    for rid in [0x0000, 0x0018, 0x0100, 0xffff] {
        assert_eq!(rig.fakes[0].dma(rid, 0x1000, false), Err(1));
        assert_eq!(
            driver.walk(U0, rid, 0x1000),
            Some(Err(WalkFault::RootNotPresent))
        );
        assert!(!driver.context_entry(U0, rid).unwrap().present());
    }
    let faults = driver.take_faults();
    assert_eq!(
        faults.len(),
        1,
        "one record (QEMU has one register), rest overflowed"
    );
    assert_eq!(faults[0].reason, 1);
    assert_eq!(driver.unit_info(U0).unwrap().faults.overflows, 1);
}

fn check_attach(cap: u64, ecap: u64, aw_code: u64) {
    let (rig, mut driver) = setup(&[(cap, ecap)]);
    let domain = driver.create_domain().unwrap();
    let dev = device(0, 0, 3, 0, &[]);
    rig.clear_log();
    driver.attach(domain, &dev).unwrap();
    let did = driver.domain_id(domain, U0).unwrap();
    assert_ne!(did, 0);
    let root = driver.unit_info(U0).unwrap().root_table;
    let mem = rig.mem.borrow();
    let (root_lo, root_hi) = (mem.read(root), mem.read(root + 8));
    assert_eq!(root_lo & 0xfff, 1, "root entry: P, nothing else");
    assert_eq!(root_hi, 0);
    let slot = (root_lo & ADDR) + 0x18 * 16;
    let (lo, hi) = (mem.read(slot), mem.read(slot + 8));
    assert_eq!(lo & 0xfff, 1, "P = 1, FPD = 0, TT = 0, reserved 0");
    assert_eq!(lo & ADDR, driver.table_root(domain).unwrap());
    assert_eq!(hi & 7, aw_code);
    assert_eq!((hi >> 8) & 0xffff, u64::from(did));
    assert_eq!(hi & !0xff_ff07, 0, "reserved bits of the high quadword");
    // Every other entry of the context table is empty.
    for devfn in (0..256u64).filter(|&d| d != 0x18) {
        let at = (root_lo & ADDR) + devfn * 16;
        assert_eq!((mem.read(at), mem.read(at + 8)), (0, 0));
    }
    // Write order: root hi, root lo; context hi, barrier, context lo.
    let writes: Vec<(usize, &Event)> = mem
        .log
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Event::Write { addr, .. } if *addr == slot || *addr == slot + 8 || *addr == root || *addr == root + 8))
        .collect();
    let addrs: Vec<u64> = writes
        .iter()
        .map(|(_, e)| match e {
            Event::Write { addr, .. } => *addr,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(addrs, [root + 8, root, slot + 8, slot]);
    let (hi_at, lo_at) = (writes[2].0, writes[3].0);
    assert!(mem.log[hi_at..lo_at].contains(&Event::Barrier));
    let flushed = |addr: u64| {
        mem.log.iter().any(
            |e| matches!(e, Event::Flush { addr: a, len } if *a <= addr && addr < a + *len as u64),
        )
    };
    let coherent = ecap & 1 != 0;
    assert_eq!(
        flushed(slot) && flushed(slot + 8) && flushed(root),
        !coherent
    );
    assert_eq!(
        mem.log.iter().any(|e| matches!(e, Event::Flush { .. })),
        !coherent
    );
    drop(mem);
    let cm = cap & (1 << 7) != 0;
    assert_eq!(
        rig.descriptors(0),
        [
            Desc::Context {
                g: 3,
                did: if cm { 0 } else { did },
                sid: 0x18,
                fm: 0
            },
            Desc::Iotlb {
                g: 2,
                did,
                dr: true,
                dw: true,
                addr: 0,
                ih: false,
                am: 0
            },
            rig.descriptors(0)[2],
        ]
    );
    assert!(matches!(
        rig.descriptors(0)[2],
        Desc::Wait {
            sw: true,
            iflag: false,
            ..
        }
    ));
    let entry = driver.context_entry(U0, 0x18).unwrap();
    assert!(entry.present());
    assert_eq!(entry.domain_id(), did);
    assert_eq!(
        entry.translation_type(),
        translation_type::UNTRANSLATED_ONLY
    );
    assert_eq!(u64::from(entry.address_width_code()), aw_code);
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

#[test]
fn attach_writes_root_and_context_entries_aw39() {
    check_attach(QEMU_CAP, QEMU_ECAP, 1);
}

#[test]
fn attach_writes_root_and_context_entries_aw48() {
    check_attach(aw48(QEMU_CAP), QEMU_ECAP, 2);
}

#[test]
fn attach_on_coherent_caching_mode_unit() {
    check_attach(caching_mode(QEMU_CAP), coherent(QEMU_ECAP), 1);
}

#[test]
fn caching_mode_drops_cached_not_present_entries() {
    let (rig, mut driver) = setup(&[(caching_mode(QEMU_CAP), QEMU_ECAP)]);
    let domain = driver.create_domain().unwrap();
    // Someone else on bus 0, so the bus has a context table.
    let other = driver.create_domain().unwrap();
    driver.attach(other, &device(0, 0, 2, 0, &[])).unwrap();
    let dev = device(0, 0, 4, 0, &[]);
    let rid = rid_of(&dev);
    // The unit caches the not-present context entry (under domain id 0).
    assert_eq!(rig.fakes[0].dma(rid, 0x5000, false), Err(2));
    assert!(rig.unit(0).context_cache.contains_key(&rid));
    driver.attach(domain, &dev).unwrap();
    // ... and the not-present translation once attached.
    assert_eq!(rig.fakes[0].dma(rid, 0x5000, false), Err(6));
    driver
        .map(domain, 0x5000, 0x9_9000, 0x1000, Access::READ)
        .unwrap();
    assert_eq!(
        rig.fakes[0].dma(rid, 0x5000, false),
        Err(6),
        "stale until commit"
    );
    rig.clear_log();
    driver.commit(domain).unwrap();
    let did = driver.domain_id(domain, U0).unwrap();
    assert_eq!(
        rig.descriptors(0)[0],
        Desc::Iotlb {
            g: 3,
            did,
            dr: true,
            dw: true,
            addr: 0x5000,
            ih: false,
            am: 0
        }
    );
    assert_eq!(rig.fakes[0].dma(rid, 0x5010, false), Ok(0x9_9010));
    assert_eq!(rig.fakes[0].dma(rid, 0x5010, true), Err(5));
    let _ = driver.take_faults();
}

#[test]
fn detach_clears_p_first_and_invalidates() {
    let (rig, mut driver) = qemu();
    let domain = driver.create_domain().unwrap();
    let dev = device(0, 1, 0, 0, &[]);
    let rid = rid_of(&dev);
    driver.attach(domain, &dev).unwrap();
    driver
        .map(domain, 0x10_0000, 0x20_0000, 0x1000, RW)
        .unwrap();
    driver.commit(domain).unwrap();
    assert_eq!(rig.fakes[0].dma(rid, 0x10_0008, true), Ok(0x20_0008));
    let did = driver.domain_id(domain, U0).unwrap();
    let root = driver.unit_info(U0).unwrap().root_table;
    let slot = (rig.mem.borrow().read(root + 16) & ADDR) + u64::from(rid & 0xff) * 16;
    rig.clear_log();
    driver.detach(domain, &dev).unwrap();
    assert_eq!(context(&rig, &driver, rid), Some((0, 0)));
    let mem = rig.mem.borrow();
    let order: Vec<&Event> = mem
        .log
        .iter()
        .filter(|e| {
            matches!(e, Event::Write { addr, .. } if *addr == slot || *addr == slot + 8)
                || **e == Event::Barrier
        })
        .collect();
    assert_eq!(
        order[0],
        &Event::Write {
            addr: slot,
            value: 0
        },
        "P cleared first"
    );
    assert_eq!(order[1], &Event::Barrier);
    assert_eq!(
        order[2],
        &Event::Write {
            addr: slot + 8,
            value: 0
        }
    );
    drop(mem);
    let descriptors = rig.descriptors(0);
    assert_eq!(
        descriptors[..2],
        [
            Desc::Context {
                g: 3,
                did,
                sid: rid,
                fm: 0
            },
            Desc::Iotlb {
                g: 2,
                did,
                dr: true,
                dw: true,
                addr: 0,
                ih: false,
                am: 0
            }
        ]
    );
    assert!(matches!(
        descriptors[2],
        Desc::Wait {
            sw: true,
            iflag: false,
            ..
        }
    ));
    assert_eq!(descriptors.len(), 3);
    // The cached context entry is gone with it: the device is blocked again.
    assert_eq!(rig.fakes[0].dma(rid, 0x10_0008, true), Err(2));
    assert_eq!(driver.detach(domain, &dev), Err(IommuError::UnknownDevice));
    let _ = driver.take_faults();
}

#[test]
fn requester_ids_belong_to_one_domain() {
    let (rig, mut driver) = qemu();
    let first = driver.create_domain().unwrap();
    let second = driver.create_domain().unwrap();
    // Two devices behind a PCIe-to-PCI bridge share the alias 02:00.0.
    let alias = 0x0200;
    let a = device(0, 2, 1, 0, &[alias]);
    let b = device(0, 2, 2, 0, &[alias]);
    driver.attach(first, &a).unwrap();
    assert_eq!(
        driver.attach(second, &b),
        Err(IommuError::Busy),
        "alias in another domain"
    );
    assert_eq!(
        driver.attach(second, &a),
        Err(IommuError::Busy),
        "device in another domain"
    );
    driver.attach(first, &a).unwrap(); // again: no-op
    driver.attach(first, &b).unwrap();
    assert_eq!(driver.domain_of(U0, alias), Some(first));
    driver.detach(first, &a).unwrap();
    assert!(
        driver.context_entry(U0, alias).unwrap().present(),
        "b still uses the alias"
    );
    assert!(!driver.context_entry(U0, rid_of(&a)).unwrap().present());
    driver.detach(first, &b).unwrap();
    assert!(!driver.context_entry(U0, alias).unwrap().present());
    assert_eq!(driver.domain_of(U0, alias), None);
    driver.attach(second, &b).unwrap();
    assert_eq!(driver.domain_of(U0, alias), Some(second));
    assert!(rig.violations().is_empty());
}

#[test]
fn attach_and_detach_commit_pending_edits() {
    // Found by the property test: re-attaching an attached device (a no-op) must still
    // commit, like every attach.
    let (rig, mut driver, domain, dev) = attached(&[(QEMU_CAP, QEMU_ECAP)]);
    let rid = rid_of(&dev);
    driver
        .map(domain, 0x10_0000, 0x5000_0000, 0x1000, Access::READ)
        .unwrap();
    driver.commit(domain).unwrap();
    assert_eq!(rig.fakes[0].dma(rid, 0x10_0000, false), Ok(0x5000_0000));
    driver.unmap(domain, 0, 1 << 39).unwrap();
    driver.attach(domain, &dev).unwrap();
    assert_eq!(rig.fakes[0].dma(rid, 0x10_0000, false), Err(6));
    // Attaching another device commits the domain's pending unmaps as well.
    driver
        .map(domain, 0x10_0000, 0x5000_0000, 0x1000, Access::READ)
        .unwrap();
    driver.commit(domain).unwrap();
    assert_eq!(rig.fakes[0].dma(rid, 0x10_0000, false), Ok(0x5000_0000));
    driver.unmap(domain, 0x10_0000, 0x1000).unwrap();
    driver.attach(domain, &device(0, 0, 9, 0, &[])).unwrap();
    assert_eq!(rig.fakes[0].dma(rid, 0x10_0000, false), Err(6));
    let _ = driver.take_faults();
}

#[test]
fn attach_errors() {
    let (_rig, mut driver) = qemu();
    let domain = driver.create_domain().unwrap();
    let mut nobody = device(0, 0, 5, 0, &[]);
    nobody.requester_ids.clear();
    assert_eq!(
        driver.attach(domain, &nobody),
        Err(IommuError::UnknownDevice)
    );
    let elsewhere = device(7, 0, 5, 0, &[]);
    assert_eq!(
        driver.attach(domain, &elsewhere),
        Err(IommuError::UnknownDevice)
    );
    let dev = device(0, 0, 5, 0, &[]);
    assert_eq!(
        driver.attach(sluice_iommu::DomainHandle(99), &dev),
        Err(IommuError::UnknownDomain)
    );
    driver.attach(domain, &dev).unwrap();
    assert_eq!(driver.destroy_domain(domain), Err(IommuError::Busy));
    driver.detach(domain, &dev).unwrap();
    driver.destroy_domain(domain).unwrap();
    assert_eq!(
        driver.destroy_domain(domain),
        Err(IommuError::UnknownDomain)
    );
    assert_eq!(driver.page_sizes(domain), Err(IommuError::UnknownDomain));
    assert_eq!(driver.commit(domain), Err(IommuError::UnknownDomain));
}

// ---------------------------------------------------------------------------------------
// Map, unmap, commit.
// ---------------------------------------------------------------------------------------

fn attached(variants: &[(u64, u64)]) -> (Rig, Driver, sluice_iommu::DomainHandle, DeviceDma) {
    let (rig, mut driver) = setup(variants);
    let domain = driver.create_domain().unwrap();
    let dev = device(0, 0, 3, 0, &[]);
    driver.attach(domain, &dev).unwrap();
    rig.clear_log();
    (rig, driver, domain, dev)
}

#[test]
fn map_needs_no_invalidation_without_caching_mode() {
    let (rig, mut driver, domain, dev) = attached(&[(QEMU_CAP, QEMU_ECAP)]);
    driver
        .map(domain, 0x4000_0000, 0x8000_0000, 0x20_0000, RW)
        .unwrap();
    driver.commit(domain).unwrap();
    assert!(rig.descriptors(0).is_empty());
    assert!(!rig.mem.borrow().log.iter().any(|e| matches!(
        e,
        Event::Reg64 {
            offset: reg::IQT,
            ..
        }
    )));
    assert_eq!(
        rig.fakes[0].dma(rid_of(&dev), 0x4000_1234, true),
        Ok(0x8000_1234)
    );
}

#[test]
fn unmap_of_2m_is_one_page_selective_invalidation() {
    let (rig, mut driver, domain, dev) = attached(&[(QEMU_CAP, QEMU_ECAP)]);
    let rid = rid_of(&dev);
    driver
        .map(domain, 0x4000_0000, 0x8000_0000, 0x20_0000, RW)
        .unwrap();
    driver.commit(domain).unwrap();
    let walked = driver.walk(U0, rid, 0x4000_0000).unwrap().unwrap();
    assert_eq!(walked.page_size, 0x20_0000, "a 2 MiB superpage");
    assert_eq!(rig.fakes[0].dma(rid, 0x4010_0000, true), Ok(0x8010_0000));
    assert_eq!(driver.unmap(domain, 0x4000_0000, 0x20_0000), Ok(0x20_0000));
    // Not committed: the unit still has the translation cached.
    assert_eq!(rig.fakes[0].dma(rid, 0x4010_0000, true), Ok(0x8010_0000));
    driver.commit(domain).unwrap();
    let did = driver.domain_id(domain, U0).unwrap();
    let descriptors = rig.descriptors(0);
    assert_eq!(
        descriptors[0],
        Desc::Iotlb {
            g: 3,
            did,
            dr: true,
            dw: true,
            addr: 0x4000_0000,
            ih: false,
            am: 9
        }
    );
    assert!(matches!(
        descriptors[1],
        Desc::Wait {
            sw: true,
            iflag: false,
            ..
        }
    ));
    assert_eq!(descriptors.len(), 2);
    assert_eq!(rig.fakes[0].dma(rid, 0x4010_0000, true), Err(5));
    let _ = driver.take_faults();
}

#[test]
fn unmaps_of_one_batch_are_merged() {
    let (rig, mut driver, domain, _dev) = attached(&[(QEMU_CAP, QEMU_ECAP)]);
    driver
        .map(domain, 0x10_0000, 0x10_0000, 0x10_0000, RW)
        .unwrap();
    // Four adjacent pages unmapped one by one: one block of 4 pages.
    for page in 0..4 {
        driver
            .unmap(domain, 0x10_4000 + page * 0x1000, 0x1000)
            .unwrap();
    }
    driver.commit(domain).unwrap();
    let did = driver.domain_id(domain, U0).unwrap();
    assert_eq!(
        rig.descriptors(0)[0],
        Desc::Iotlb {
            g: 3,
            did,
            dr: true,
            dw: true,
            addr: 0x10_4000,
            ih: false,
            am: 2
        }
    );
    assert_eq!(rig.descriptors(0).len(), 2);
}

#[test]
fn domain_selective_fallbacks() {
    // More ranges than max_page_selective.
    let (rig, mut driver, domain, _dev) = attached(&[(QEMU_CAP, QEMU_ECAP)]);
    let did = driver.domain_id(domain, U0).unwrap();
    // 4 KiB leaves (the physical address is not 2 MiB aligned): each unmap is one page.
    driver.map(domain, 0, 0x1000, 0x100_0000, RW).unwrap();
    for i in 0..17 {
        driver.unmap(domain, i * 0x2_0000, 0x1000).unwrap();
    }
    driver.commit(domain).unwrap();
    let dsi = Desc::Iotlb {
        g: 2,
        did,
        dr: true,
        dw: true,
        addr: 0,
        ih: false,
        am: 0,
    };
    assert_eq!(rig.descriptors(0)[0], dsi);
    assert_eq!(rig.descriptors(0).len(), 2);

    // A block beyond MAMV (18 on QEMU: 1 GiB): 4 GiB needs AM 20.
    rig.clear_log();
    driver
        .map(domain, 0x1_0000_0000, 0, 0x1_0000_0000, RW)
        .unwrap();
    driver.unmap(domain, 0x1_0000_0000, 0x1_0000_0000).unwrap();
    driver.commit(domain).unwrap();
    assert_eq!(rig.descriptors(0)[0], dsi);

    // No PSI at all.
    let (rig, mut driver, domain, _dev) = attached(&[(no_psi(QEMU_CAP), QEMU_ECAP)]);
    let did = driver.domain_id(domain, U0).unwrap();
    driver.map(domain, 0, 0, 0x1000, RW).unwrap();
    driver.unmap(domain, 0, 0x1000).unwrap();
    driver.commit(domain).unwrap();
    assert!(matches!(rig.descriptors(0)[0], Desc::Iotlb { g: 2, did: d, .. } if d == did));
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

#[test]
fn retired_tables_are_freed_only_after_the_invalidation() {
    let (rig, mut driver, domain, _dev) = attached(&[(QEMU_CAP, QEMU_ECAP)]);
    driver
        .map(domain, 0x40_0000_0000 >> 2, 0x1000, 0x1000, RW)
        .unwrap();
    driver
        .map(domain, 0x20_0000_0000 >> 2, 0x1000, 0x1000, RW)
        .unwrap();
    let pages = rig.mem.borrow().allocated;
    let tables = driver.table_pages(domain).unwrap();
    driver.unmap(domain, 0x40_0000_0000 >> 2, 0x1000).unwrap();
    assert_eq!(rig.mem.borrow().allocated, pages, "retired, not freed");
    // Nor by a later edit of the same batch.
    driver.unmap(domain, 0x20_0000_0000 >> 2, 0x1000).unwrap();
    assert_eq!(rig.mem.borrow().allocated, pages);
    assert_eq!(driver.table_pages(domain).unwrap(), tables);
    let log_len = rig.mem.borrow().log.len();
    driver.commit(domain).unwrap();
    let mem = rig.mem.borrow();
    assert!(mem.allocated < pages);
    // Freed after the wait completed (the status write precedes the frees).
    let log = &mem.log[log_len..];
    let wait = log
        .iter()
        .position(|e| matches!(e, Event::Descriptor { lo, .. } if lo & 0xf == 5))
        .unwrap();
    let free = log
        .iter()
        .position(|e| matches!(e, Event::Free { .. }))
        .unwrap();
    assert!(wait < free);
}

#[test]
fn map_argument_errors() {
    let (_rig, mut driver) = qemu();
    let domain = driver.create_domain().unwrap();
    assert_eq!(
        driver.map(domain, 0x1000, 0x1000, 0, RW),
        Err(IommuError::Misaligned)
    );
    assert_eq!(
        driver.map(domain, 0x1001, 0x1000, 0x1000, RW),
        Err(IommuError::Misaligned)
    );
    assert_eq!(
        driver.map(domain, !0xfff, 0, 0x2000, RW),
        Err(IommuError::Wraps)
    );
    assert_eq!(
        driver.map(domain, 0, 0, 0x1000, Access::empty()),
        Err(IommuError::NoAccess)
    );
    assert_eq!(
        driver.map(domain, 1 << 39, 0, 0x1000, RW),
        Err(IommuError::OutOfRange)
    );
    assert_eq!(
        driver.map(domain, (1 << 39) - 0x1000, 0, 0x2000, RW),
        Err(IommuError::OutOfRange)
    );
    assert_eq!(
        driver.map(domain, 0xFEE0_0000, 0, 0x1000, RW),
        Err(IommuError::OutOfRange),
        "interrupt window"
    );
    assert_eq!(
        driver.map(domain, 0xFED0_0000, 0, 0x20_0000, RW),
        Err(IommuError::OutOfRange),
        "straddles the interrupt window"
    );
    driver.map(domain, 0x2000, 0x3000, 0x1000, RW).unwrap();
    assert_eq!(
        driver.map(domain, 0x1000, 0x3000, 0x2000, RW),
        Err(IommuError::Overlap { iova: 0x2000 })
    );
    assert_eq!(driver.unmap(domain, 0, 0), Err(IommuError::Misaligned));
    assert_eq!(
        driver.unmap(domain, 1 << 40, 0x1000),
        Ok(0),
        "beyond the aperture"
    );
    assert_eq!(driver.unmap(domain, 0, 1 << 39), Ok(0x1000));
    let translate = driver.translate(domain, 0x2000).unwrap();
    assert_eq!(translate, None);
}

// ---------------------------------------------------------------------------------------
// Domain ids.
// ---------------------------------------------------------------------------------------

#[test]
fn domain_ids_stay_in_range_and_skip_zero() {
    // ND = 0: 16 ids, 0 excluded: 15 domains can be attached.
    let (rig, mut driver) = setup(&[(nd(caching_mode(QEMU_CAP), 0), QEMU_ECAP)]);
    assert_eq!(driver.unit_info(U0).unwrap().domain_ids_capacity, 15);
    let mut dids = Vec::new();
    for i in 0..15u8 {
        let domain = driver.create_domain().unwrap();
        driver.attach(domain, &device(0, 1, i, 0, &[])).unwrap();
        dids.push(driver.domain_id(domain, U0).unwrap());
    }
    dids.sort_unstable();
    assert_eq!(dids, (1..16).collect::<Vec<u16>>());
    let domain = driver.create_domain().unwrap();
    assert_eq!(
        driver.attach(domain, &device(0, 1, 20, 0, &[])),
        Err(IommuError::NoDomainId)
    );
    // Nothing left behind by the failed attach.
    assert!(!driver.context_entry(U0, 0x1a0).unwrap().present());
    assert!(rig.violations().is_empty());
}

#[test]
fn destroyed_domain_ids_return_only_after_invalidation() {
    let (rig, mut driver) = setup(&[(nd(QEMU_CAP, 0), QEMU_ECAP)]);
    let mut domains = Vec::new();
    for i in 0..15u8 {
        let domain = driver.create_domain().unwrap();
        let dev = device(0, 1, i, 0, &[]);
        driver.attach(domain, &dev).unwrap();
        domains.push((domain, dev));
    }
    let (victim, dev) = domains[6].clone();
    let did = driver.domain_id(victim, U0).unwrap();
    driver.detach(victim, &dev).unwrap();
    // Detached but not destroyed: the id stays taken.
    let spare = driver.create_domain().unwrap();
    assert_eq!(
        driver.attach(spare, &device(0, 2, 0, 0, &[])),
        Err(IommuError::NoDomainId)
    );
    rig.clear_log();
    driver.destroy_domain(victim).unwrap();
    let descriptors = rig.descriptors(0);
    assert_eq!(
        descriptors[..2],
        [
            Desc::Context {
                g: 2,
                did,
                sid: 0,
                fm: 0
            },
            Desc::Iotlb {
                g: 2,
                did,
                dr: true,
                dw: true,
                addr: 0,
                ih: false,
                am: 0
            }
        ]
    );
    assert!(descriptors[2].is_wait());
    driver.attach(spare, &device(0, 2, 0, 0, &[])).unwrap();
    assert_eq!(
        driver.domain_id(spare, U0),
        Some(did),
        "the only free id, now clean"
    );

    // A destroy whose invalidation never completes keeps the id out of the pool.
    let (last, last_dev) = domains[7].clone();
    driver.detach(last, &last_dev).unwrap();
    let in_use = driver.unit_info(U0).unwrap().domain_ids_in_use;
    rig.unit(0).ignore_iqt = true;
    let result = driver.destroy_domain(last);
    assert_eq!(result, Err(IommuError::InvalidationTimeout { unit: U0 }));
    assert_eq!(driver.unit_info(U0).unwrap().domain_ids_in_use, in_use);
}

// ---------------------------------------------------------------------------------------
// Dead units.
// ---------------------------------------------------------------------------------------

#[test]
fn a_wait_that_never_completes_fails_the_unit() {
    let (rig, mut driver) = driver_with(&[(QEMU_CAP, QEMU_ECAP)], Vec::new(), small_budget());
    let domain = driver.create_domain().unwrap();
    let dev = device(0, 0, 3, 0, &[]);
    driver.attach(domain, &dev).unwrap();
    driver.map(domain, 0, 0, 0x1000, RW).unwrap();
    rig.unit(0).ignore_iqt = true;
    driver.unmap(domain, 0, 0x1000).unwrap();
    let reads = rig.mem.borrow().reads;
    assert_eq!(
        driver.commit(domain),
        Err(IommuError::InvalidationTimeout { unit: U0 })
    );
    let polled = rig.mem.borrow().reads - reads;
    assert!(polled <= 1000 + 10, "bounded by the budget: {polled}");
    assert!(driver.unit_failed(U0));
    assert!(matches!(
        driver.unit_info(U0).unwrap().failure,
        Some(UnitFailure::WaitTimeout { .. })
    ));
    // The unit refuses further work, even if it comes back to life.
    rig.unit(0).ignore_iqt = false;
    let iqt_writes = |rig: &Rig| {
        rig.mem
            .borrow()
            .log
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Event::Reg64 {
                        offset: reg::IQT,
                        ..
                    }
                )
            })
            .count()
    };
    let before = iqt_writes(&rig);
    assert_eq!(
        driver.commit(domain),
        Err(IommuError::InvalidationTimeout { unit: U0 })
    );
    let other = driver.create_domain().unwrap();
    assert_eq!(
        driver.attach(other, &device(0, 0, 4, 0, &[])),
        Err(IommuError::InvalidationTimeout { unit: U0 })
    );
    assert_eq!(
        driver.detach(domain, &dev),
        Err(IommuError::InvalidationTimeout { unit: U0 })
    );
    assert_eq!(
        iqt_writes(&rig),
        before,
        "nothing submitted to a failed unit"
    );
    // Detach still cleared the entry in memory (blocking is best effort).
    assert!(!driver.context_entry(U0, rid_of(&dev)).unwrap().present());
    // Faults can still be read.
    let _ = driver.take_faults();
}

#[test]
fn a_queue_error_fails_the_unit() {
    let (rig, mut driver, domain, _dev) = attached(&[(QEMU_CAP, QEMU_ECAP)]);
    driver.map(domain, 0, 0, 0x1000, RW).unwrap();
    driver.unmap(domain, 0, 0x1000).unwrap();
    rig.unit(0).reject_type = Some(2);
    assert_eq!(
        driver.commit(domain),
        Err(IommuError::InvalidationTimeout { unit: U0 })
    );
    match driver.unit_info(U0).unwrap().failure {
        Some(UnitFailure::QueueError { fsts, .. }) => assert_ne!(fsts & (1 << 4), 0),
        other => panic!("{other:?}"),
    }
}

#[test]
fn wait_descriptors_never_carry_both_status_write_and_interrupt() {
    let (rig, mut driver, domain, dev) = attached(&[(caching_mode(QEMU_CAP), QEMU_ECAP)]);
    driver.map(domain, 0, 0, 0x40_0000, RW).unwrap();
    driver.commit(domain).unwrap();
    driver.unmap(domain, 0x20_0000, 0x20_0000).unwrap();
    driver.commit(domain).unwrap();
    driver.detach(domain, &dev).unwrap();
    driver.destroy_domain(domain).unwrap();
    driver.invalidate_interrupt_entries(U0, None).unwrap();
    driver
        .invalidate_interrupt_entries(U0, Some((16, 2)))
        .unwrap();
    let descriptors = rig.descriptors(0);
    let waits: Vec<&Desc> = descriptors.iter().filter(|d| d.is_wait()).collect();
    assert!(waits.len() >= 6);
    let status = match waits[0] {
        Desc::Wait { addr, .. } => *addr,
        _ => unreachable!(),
    };
    let mut last = 0;
    for wait in waits {
        let Desc::Wait {
            sw,
            iflag,
            data,
            addr,
            ..
        } = *wait
        else {
            unreachable!()
        };
        assert!(sw && !iflag);
        assert_eq!(addr, status, "one status word per unit");
        assert!(data > last, "a fresh sequence number every time");
        last = data;
    }
    assert!(descriptors.contains(&Desc::InterruptEntry {
        global: false,
        index: 16,
        mask: 2
    }));
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

// ---------------------------------------------------------------------------------------
// Register-based invalidation and write-buffer flushing.
// ---------------------------------------------------------------------------------------

#[test]
fn register_based_invalidation_without_qi() {
    let (rig, mut driver) = setup(&[(QEMU_CAP, no_qi(QEMU_ECAP))]);
    assert!(!driver.unit_info(U0).unwrap().queued_invalidation);
    let iotlb = 0xf8;
    let drain = 1 << 49 | 1 << 48;
    assert_eq!(
        rig.unit(0).register_invalidations,
        [
            (reg::CCMD, 1 << 63 | 1 << 61),
            (iotlb, 1 << 63 | 1 << 60 | drain)
        ]
    );
    let domain = driver.create_domain().unwrap();
    driver.attach(domain, &device(0, 0, 3, 0, &[])).unwrap();
    let did = u64::from(driver.domain_id(domain, U0).unwrap());
    driver.map(domain, 0x20_0000, 0, 0x20_0000, RW).unwrap();
    driver.unmap(domain, 0x20_0000, 0x20_0000).unwrap();
    driver.commit(domain).unwrap();
    let unit = rig.unit(0);
    assert_eq!(
        unit.register_invalidations[2..],
        [
            (reg::CCMD, 1 << 63 | 3 << 61 | 0x18 << 16 | did),
            (iotlb, 1 << 63 | 2 << 60 | drain | did << 32),
            (iotlb, 1 << 63 | 3 << 60 | drain | did << 32),
        ]
    );
    assert_eq!(unit.iva, 0x20_0000 | 9);
    drop(unit);
    assert_eq!(
        driver.invalidate_interrupt_entries(U0, None),
        Err(IommuError::Unsupported { unit: U0 })
    );
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

#[test]
fn stuck_register_invalidation_fails_the_unit() {
    let (rig, mut driver) =
        driver_with(&[(QEMU_CAP, no_qi(QEMU_ECAP))], Vec::new(), small_budget());
    let domain = driver.create_domain().unwrap();
    rig.unit(0).stuck_registers = true;
    assert_eq!(
        driver.attach(domain, &device(0, 0, 3, 0, &[])),
        Err(IommuError::InvalidationTimeout { unit: U0 })
    );
    assert!(matches!(
        driver.unit_info(U0).unwrap().failure,
        Some(UnitFailure::RegisterInvalidation { offset: 0x28, .. })
    ));
}

#[test]
fn write_buffer_flushed_when_required() {
    let (rig, mut driver) = setup(&[(rwbf(QEMU_CAP), QEMU_ECAP)]);
    assert_eq!(
        rig.unit(0).wbf_count,
        1,
        "before the bring-up invalidations"
    );
    let domain = driver.create_domain().unwrap();
    driver.attach(domain, &device(0, 0, 3, 0, &[])).unwrap();
    let count = rig.unit(0).wbf_count;
    driver.map(domain, 0, 0, 0x1000, RW).unwrap();
    driver.commit(domain).unwrap();
    assert_eq!(rig.unit(0).wbf_count, count + 1, "even a map-only batch");
    assert!(
        rig.descriptors(0)
            .iter()
            .all(|d| !matches!(d, Desc::Iotlb { g: 3, .. }))
    );
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
    // The WBF command carried the persistent enables.
    let unit = rig.unit(0);
    let flushes: Vec<u32> = unit
        .gcmd_writes
        .iter()
        .copied()
        .filter(|w| w & WBF != 0)
        .collect();
    assert!(flushes.iter().all(|w| w & QIE != 0));
    assert!(flushes[1..].iter().all(|w| w & TE != 0));
}

// ---------------------------------------------------------------------------------------
// Faults.
// ---------------------------------------------------------------------------------------

#[test]
fn faults_are_decoded_and_cleared() {
    let (rig, mut driver, domain, dev) = attached(&[(QEMU_CAP, QEMU_ECAP)]);
    let rid = rid_of(&dev);
    driver
        .map(domain, 0x3000, 0x7000, 0x1000, Access::READ)
        .unwrap();
    driver.commit(domain).unwrap();
    // Not attached: reason 2, a write.
    assert_eq!(rig.fakes[0].dma(0x0028, 0x123_4567, true), Err(2));
    let faults = driver.take_faults();
    assert_eq!(faults.len(), 1);
    let fault = faults[0];
    assert_eq!(fault.unit, U0);
    assert_eq!(fault.requester_id, 0x0028);
    assert_eq!(fault.address, 0x123_4000);
    assert!(fault.write);
    assert_eq!(fault.reason, 2);
    assert!(fault.reason_text.contains("context entry not present"));
    assert_eq!(rig.unit(0).frcd[0][1] >> 63, 0, "F cleared");
    assert_eq!(rig.unit(0).fsts & 3, 0, "PPF and PFO clear");
    // Write to a read-only page: reason 5; read of an unmapped page: reason 6, T = 1.
    assert_eq!(rig.fakes[0].dma(rid, 0x3000, true), Err(5));
    let fault = driver.take_faults()[0];
    assert_eq!((fault.reason, fault.write), (5, true));
    assert!(fault.reason_text.contains("write"));
    assert_eq!(rig.fakes[0].dma(rid, 0x9000, false), Err(6));
    let fault = driver.take_faults()[0];
    assert_eq!(
        (fault.reason, fault.write, fault.requester_id),
        (6, false, rid)
    );
    assert_eq!(fault.address, 0x9000);
    assert!(driver.take_faults().is_empty());
    assert_eq!(driver.unit_info(U0).unwrap().faults.records, 3);
    // Overflow: a second fault while the only record is full is dropped, PFO set.
    let _ = rig.fakes[0].dma(0x30, 0x1000, false);
    let _ = rig.fakes[0].dma(0x31, 0x1000, false);
    assert_ne!(rig.unit(0).fsts & 1, 0);
    let faults = driver.take_faults();
    assert_eq!(faults.len(), 1);
    assert_eq!(faults[0].requester_id, 0x30);
    assert_eq!(rig.unit(0).fsts & 1, 0, "PFO cleared");
    assert_eq!(driver.unit_info(U0).unwrap().faults.overflows, 1);
    // Recording works again.
    let _ = rig.fakes[0].dma(0x32, 0x1000, false);
    assert_eq!(driver.take_faults()[0].requester_id, 0x32);
}

#[test]
fn fault_records_are_read_round_the_ring() {
    let (rig, mut driver) = setup(&[(nfr(QEMU_CAP, 4), QEMU_ECAP)]);
    for rid in [0x10, 0x11, 0x12] {
        let _ = rig.fakes[0].dma(rid, 0x1000, false);
    }
    let faults = driver.take_faults();
    assert_eq!(
        faults.iter().map(|f| f.requester_id).collect::<Vec<_>>(),
        [0x10, 0x11, 0x12]
    );
    // Next faults start at record 3 and wrap to 0 and 1.
    for rid in [0x20, 0x21, 0x22] {
        let _ = rig.fakes[0].dma(rid, 0x1000, false);
    }
    assert_eq!(rig.unit(0).fsts >> 8 & 0xff, 3, "FRI");
    let faults = driver.take_faults();
    assert_eq!(
        faults.iter().map(|f| f.requester_id).collect::<Vec<_>>(),
        [0x20, 0x21, 0x22]
    );
    assert!(rig.unit(0).frcd.iter().all(|r| r[1] >> 63 == 0));
}

#[test]
fn a_fault_storm_does_not_stall() {
    let (rig, mut driver) = setup(&[(nfr(QEMU_CAP, 4), QEMU_ECAP)]);
    for rid in 0..8 {
        let _ = rig.fakes[0].dma(rid, 0x1000, false);
    }
    rig.unit(0).storm = true;
    for _ in 0..100 {
        let faults = driver.take_faults();
        assert!(!faults.is_empty() && faults.len() <= 4, "{}", faults.len());
    }
    assert!(driver.unit_info(U0).unwrap().faults.records <= 400);
}

// ---------------------------------------------------------------------------------------
// RMRR identity maps.
// ---------------------------------------------------------------------------------------

fn rmrr(devices: &[(u8, u8, u8)]) -> IdentityRegion {
    IdentityRegion {
        segment: 0,
        base: 0x7f00_0000,
        limit: 0x7f1f_ffff,
        devices: devices
            .iter()
            .map(|&(b, d, f)| PciAddress::new(0, b, d, f))
            .collect(),
    }
}

#[test]
fn rmrr_devices_get_an_identity_map_while_attached() {
    let (rig, mut driver) = driver_with(
        &[(QEMU_CAP, QEMU_ECAP)],
        vec![rmrr(&[(0, 0x1d, 0), (0, 0x1d, 1)])],
        DriverConfig::default(),
    );
    let domain = driver.create_domain().unwrap();
    let plain = device(0, 0, 3, 0, &[]);
    driver.attach(domain, &plain).unwrap();
    assert_eq!(driver.translate(domain, 0x7f00_0000).unwrap(), None);
    let usb = device(0, 0, 0x1d, 0, &[]);
    driver.attach(domain, &usb).unwrap();
    let t = driver.translate(domain, 0x7f00_1000).unwrap().unwrap();
    assert_eq!(
        (t.paddr, t.access, t.page_size),
        (0x7f00_1000, RW, 0x20_0000)
    );
    assert_eq!(
        rig.fakes[0].dma(rid_of(&usb), 0x7f1f_fff8, true),
        Ok(0x7f1f_fff8)
    );
    let ranges = driver.iova_ranges(domain).unwrap();
    assert_eq!(
        ranges[0],
        IovaRange {
            start: 0,
            last: 0x7eff_ffff
        }
    );
    assert_eq!(ranges[1].start, 0x7f20_0000);
    assert_eq!(
        driver.map(domain, 0x7f10_0000, 0, 0x1000, RW),
        Err(IommuError::OutOfRange)
    );
    // Unmapping everything leaves the RMRR alone.
    driver.map(domain, 0x1000, 0x1000, 0x1000, RW).unwrap();
    assert_eq!(driver.unmap(domain, 0, 1 << 39), Ok(0x1000));
    assert!(driver.translate(domain, 0x7f00_0000).unwrap().is_some());
    // A second function named by the RMRR shares the mapping; it stays until the last
    // one leaves.
    let usb1 = device(0, 0, 0x1d, 1, &[]);
    driver.attach(domain, &usb1).unwrap();
    driver.detach(domain, &usb).unwrap();
    assert!(driver.translate(domain, 0x7f00_0000).unwrap().is_some());
    driver.detach(domain, &usb1).unwrap();
    assert_eq!(driver.translate(domain, 0x7f00_0000).unwrap(), None);
    assert_eq!(driver.iova_ranges(domain).unwrap()[0].last, 0xFEDF_FFFF);
    // And its translations were invalidated: the remaining device cannot use it.
    assert_eq!(rig.fakes[0].dma(rid_of(&plain), 0x7f00_0000, true), Err(5));
    let _ = driver.take_faults();
}

#[test]
fn rmrr_overlapping_a_user_mapping_refuses_the_attach() {
    let (_rig, mut driver) = driver_with(
        &[(QEMU_CAP, QEMU_ECAP)],
        vec![rmrr(&[(0, 0x1d, 0)])],
        DriverConfig::default(),
    );
    let domain = driver.create_domain().unwrap();
    driver.map(domain, 0x7f10_0000, 0, 0x1000, RW).unwrap();
    let usb = device(0, 0, 0x1d, 0, &[]);
    assert_eq!(
        driver.attach(domain, &usb),
        Err(IommuError::Overlap { iova: 0x7f10_0000 })
    );
    assert!(!driver.context_entry(U0, rid_of(&usb)).unwrap().present());
    assert_eq!(driver.domain_id(domain, U0), None);
    // The user mapping is intact.
    assert!(driver.translate(domain, 0x7f10_0000).unwrap().is_some());
    assert_eq!(driver.translate(domain, 0x7f00_0000).unwrap(), None);
}

// ---------------------------------------------------------------------------------------
// Several units.
// ---------------------------------------------------------------------------------------

#[test]
fn a_domain_spans_units() {
    let (rig, mut driver) = setup(&[(QEMU_CAP, QEMU_ECAP), (aw48(QEMU_CAP), QEMU_ECAP)]);
    let domain = driver.create_domain().unwrap();
    let a = device(0, 0, 3, 0, &[]);
    let b = device(1, 0x80, 0, 0, &[]);
    driver.attach(domain, &a).unwrap();
    driver.attach(domain, &b).unwrap();
    let (d0, d1) = (
        driver.domain_id(domain, U0).unwrap(),
        driver.domain_id(domain, UnitId(1)).unwrap(),
    );
    // Both units walk the same 3-level table.
    let e1 = driver.context_entry(UnitId(1), rid_of(&b)).unwrap();
    assert_eq!(e1.levels(), 3);
    assert_eq!(e1.table(), driver.table_root(domain).unwrap());
    driver
        .map(domain, 0x20_0000, 0x40_0000, 0x20_0000, RW)
        .unwrap();
    driver.commit(domain).unwrap();
    assert_eq!(
        rig.fakes[1].dma(rid_of(&b), 0x20_0010, false),
        Ok(0x40_0010)
    );
    rig.clear_log();
    driver.unmap(domain, 0x20_0000, 0x20_0000).unwrap();
    driver.commit(domain).unwrap();
    for (unit, did) in [(0, d0), (1, d1)] {
        assert_eq!(
            rig.descriptors(unit)[0],
            Desc::Iotlb {
                g: 3,
                did,
                dr: true,
                dw: true,
                addr: 0x20_0000,
                ih: false,
                am: 9
            }
        );
    }
    assert_eq!(rig.fakes[1].dma(rid_of(&b), 0x20_0010, false), Err(6));
    // The device's unit is the one in DeviceDma: unit 0 knows nothing of b.
    assert!(!driver.context_entry(U0, rid_of(&b)).unwrap().present());
    let _ = driver.take_faults();
}

#[test]
fn walk_agrees_with_the_reference_walker() {
    let (rig, mut driver, domain, dev) = attached(&[(aw48(QEMU_CAP), QEMU_ECAP)]);
    let rid = rid_of(&dev);
    driver
        .map(
            domain,
            0x4000_0000,
            0x1_4000_0000,
            0x4000_0000,
            Access::READ,
        )
        .unwrap();
    driver
        .map(domain, 0x8000_0000, 0x2000_0000, 0x20_3000, RW)
        .unwrap();
    driver.commit(domain).unwrap();
    let entry = driver.context_entry(U0, rid).unwrap();
    for iova in [
        0x4000_0000,
        0x4123_4567,
        0x8000_0000,
        0x801f_f000,
        0x8020_2fff,
        0x8020_3000,
        0x10,
    ] {
        let reference = walk_table(&rig.mem.borrow(), entry.table(), 4, iova);
        let walked = driver.walk(U0, rid, iova).unwrap();
        match (reference, walked) {
            (Some((paddr, read, write)), Ok(t)) => {
                assert_eq!(t.paddr, paddr);
                assert_eq!(t.access.contains(Access::READ), read);
                assert_eq!(t.access.contains(Access::WRITE), write);
                let translate = driver.translate(domain, iova).unwrap().unwrap();
                assert_eq!(translate.paddr, paddr);
                assert_eq!(translate.page_size, t.page_size);
            }
            (None, Err(WalkFault::NotPresent { .. })) => {}
            other => panic!("{iova:#x}: {other:?}"),
        }
    }
    assert_eq!(
        driver
            .walk(U0, rid, 0x4000_0000)
            .unwrap()
            .unwrap()
            .page_size,
        1 << 30
    );
    assert_eq!(
        driver.walk(U0, rid, 1 << 48),
        Some(Err(WalkFault::BeyondAddressWidth))
    );
    assert_eq!(
        driver.walk(U0, 0x19, 0),
        Some(Err(WalkFault::ContextNotPresent))
    );
    assert_eq!(driver.walk(UnitId(5), 0x19, 0), None);
}

// ---------------------------------------------------------------------------------------
// Explain.
// ---------------------------------------------------------------------------------------

/// The raw second-level entry the test's own walk finds at `level` for `iova` (levels
/// counted from the top of a `levels`-deep table at `table`).
fn entry_at(mem: &TestMem, table: u64, levels: u8, level: u8, iova: u64) -> u64 {
    let mut table = table;
    for current in (level..=levels).rev() {
        let shift = 12 + 9 * (u32::from(current) - 1);
        let entry = mem.read(table + ((iova >> shift) & 0x1ff) * 8);
        if current == level {
            return entry;
        }
        table = entry & ADDR;
    }
    unreachable!()
}

#[test]
fn explain_names_the_leaf_entry_and_the_host_address() {
    let (rig, mut driver, domain, dev) = attached(&[(QEMU_CAP, QEMU_ECAP)]);
    let rid = rid_of(&dev);
    driver
        .map(domain, 0x1000_3000, 0x5_6789_a000, 0x1000, Access::READ)
        .unwrap();
    driver
        .map(domain, 0x4000_0000, 0x8000_0000, 0x20_0000, RW)
        .unwrap();
    driver.commit(domain).unwrap();
    let did = driver.domain_id(domain, U0).unwrap();
    let root = driver.table_root(domain).unwrap();

    // A 4 KiB page: root entry, context entry, three levels, the result.
    let lines = driver.explain(domain, &dev, 0x1000_3abc);
    for line in &lines {
        println!("{line}");
    }
    assert_eq!(lines.len(), 1 + 2 + 3 + 1, "{lines:#?}");
    assert!(lines[0].starts_with("dmar0 (unit 0"), "{}", lines[0]);
    assert!(lines[0].contains(&format!("domain {}", domain.0)));
    assert!(lines[0].contains(&format!("DID {did:#x} on dmar0")));
    assert!(lines[0].contains("3-level"));
    assert!(lines[0].contains("39-bit"));
    let (lo, hi) = context(&rig, &driver, rid).unwrap();
    assert!(lines[1].starts_with("dmar0 rid 00:03.0 (own): root entry [bus 0x00]"));
    assert!(lines[1].contains("P=1"));
    assert!(
        lines[2].contains(&format!("0x{hi:016x}_{lo:016x}")),
        "{}",
        lines[2]
    );
    assert!(lines[2].contains(&format!("DID={did:#x} SLPTPTR={root:#x}")));
    assert!(lines[2].contains("AW=1 (3-level, 39-bit)"));
    assert!(lines[2].contains("T=0 (untranslated requests only)"));
    let mem = rig.mem.borrow();
    for (line, level) in lines[3..6].iter().zip([3u8, 2, 1]) {
        let raw = entry_at(&mem, root, 3, level, 0x1000_3abc);
        assert!(
            line.contains(&format!("level {level} ")) && line.contains(&format!("{raw:#018x}")),
            "{line} should show {raw:#x}"
        );
    }
    assert!(lines[5].contains("SL-PTE"));
    assert!(lines[5].contains("R=1 W=0"));
    assert!(lines[5].contains("leaf: 4 KiB page at 0x56789a000"));
    assert!(
        lines[6].contains("→ host-physical 0x56789aabc"),
        "{}",
        lines[6]
    );
    assert!(lines[6].contains("writes fault (reason 0x5"));
    drop(mem);

    // A 2 MiB superpage: the walk ends in the SL-PDE with PS = 1.
    let lines = driver.explain(domain, &dev, 0x4012_3456);
    for line in &lines {
        println!("{line}");
    }
    assert_eq!(lines.len(), 1 + 2 + 2 + 1, "{lines:#?}");
    let raw = entry_at(&rig.mem.borrow(), root, 3, 2, 0x4012_3456);
    assert_eq!(raw & (1 << 7), 1 << 7);
    assert!(lines[4].contains(&format!("{raw:#018x}")));
    assert!(lines[4].contains("SL-PDE"));
    assert!(lines[4].contains("PS=1 → leaf: 2 MiB page at 0x80000000"));
    assert!(
        lines[5].contains("→ host-physical 0x80123456"),
        "{}",
        lines[5]
    );
    assert!(lines[5].contains("reads and writes allowed"));
}

#[test]
fn explain_a_1g_page_on_a_4_level_table() {
    let (_rig, mut driver, domain, dev) = attached(&[(aw48(QEMU_CAP), QEMU_ECAP)]);
    driver
        .map(domain, 0x40_0000_0000, 0x1_4000_0000, 0x4000_0000, RW)
        .unwrap();
    driver.commit(domain).unwrap();
    let lines = driver.explain(domain, &dev, 0x40_0abc_d123);
    assert_eq!(lines.len(), 1 + 2 + 2 + 1, "{lines:#?}");
    assert!(lines[0].contains("4-level"));
    assert!(lines[2].contains("AW=2 (4-level, 48-bit)"));
    assert!(lines[3].contains("level 4 SL-PML4E") && lines[3].contains("IOVA bits 47:39"));
    assert!(lines[4].contains("level 3 SL-PDPE") && lines[4].contains("1 GiB page"));
    assert!(
        lines[5].contains("→ host-physical 0x14abcd123"),
        "{}",
        lines[5]
    );
    // Beyond the 48-bit width.
    let lines = driver.explain(domain, &dev, 1 << 48);
    assert!(lines.last().unwrap().contains("reason 0x4"), "{lines:#?}");
}

#[test]
fn explain_unmapped_iova_says_not_present() {
    let (_rig, mut driver, domain, dev) = attached(&[(QEMU_CAP, QEMU_ECAP)]);
    driver.map(domain, 0x1000, 0x9000, 0x1000, RW).unwrap();
    driver.commit(domain).unwrap();
    // Same level-1 table, empty slot.
    let lines = driver.explain(domain, &dev, 0x2000);
    assert!(lines[5].contains("level 1 SL-PTE") && lines[5].contains("not present"));
    assert_eq!(
        lines.last().unwrap(),
        "dmar0 rid 00:03.0: not present at level 1: DMA here faults (reason 0x6 for a read, \
         0x5 for a write: the SL-PTE has neither R nor W)"
    );
    // Nothing at the top level.
    let lines = driver.explain(domain, &dev, 0x40_0000_0000 - 0x1000);
    assert!(
        lines.last().unwrap().contains("not present at level 3"),
        "{lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.contains("host-physical")));
}

#[test]
fn explain_unknown_domain_or_unit_is_one_line() {
    let (_rig, mut driver, domain, dev) = attached(&[(QEMU_CAP, QEMU_ECAP)]);
    let lines = driver.explain(sluice_iommu::DomainHandle(77), &dev, 0);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("no domain 77"));
    let stray = device(9, 0, 3, 0, &[]);
    let lines = driver.explain(domain, &stray, 0);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("unit 9"));
    // A destroyed domain is unknown too.
    let empty = driver.create_domain().unwrap();
    driver.destroy_domain(empty).unwrap();
    assert_eq!(driver.explain(empty, &dev, 0).len(), 1);
}

#[test]
fn explain_blocked_devices_and_aliases() {
    let (_rig, mut driver, domain, _dev) = attached(&[(QEMU_CAP, QEMU_ECAP)]);
    driver.map(domain, 0x1000, 0x9000, 0x1000, RW).unwrap();
    driver.commit(domain).unwrap();
    // Never attached, on a bus with no context table: the root entry stops it.
    let other_bus = device(0, 5, 0, 0, &[]);
    let lines = driver.explain(domain, &other_bus, 0x1000);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines[1].contains("P=0"));
    assert!(lines[2].contains("reason 0x1"));
    // Never attached, bus 0 (the context table exists): the context entry stops it.
    let neighbour = device(0, 0, 4, 0, &[]);
    let lines = driver.explain(domain, &neighbour, 0x1000);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(lines[3].contains("reason 0x2"));
    // Attached with an alias: both requester ids walked, each bounded.
    let bridged = device(0, 2, 0, 0, &[0x0100]);
    driver.attach(domain, &bridged).unwrap();
    let lines = driver.explain(domain, &bridged, 0x1010);
    for line in &lines {
        println!("{line}");
    }
    assert_eq!(lines.len(), 1 + 2 * 6, "{lines:#?}");
    assert!(lines[1].contains("rid 02:00.0 (own)"));
    assert!(lines[7].contains("rid 01:00.0 (DMA alias)"));
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("→ host-physical 0x9010"))
            .count(),
        2
    );
    // A device of another domain, explained against this one: annotated, walked as the
    // unit walks it (through its own domain's table).
    let other = driver.create_domain().unwrap();
    let elsewhere = device(0, 0, 5, 0, &[]);
    driver.attach(other, &elsewhere).unwrap();
    driver.map(other, 0x1000, 0xa000, 0x1000, RW).unwrap();
    driver.commit(other).unwrap();
    let lines = driver.explain(domain, &elsewhere, 0x1000);
    for line in &lines {
        println!("{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("attached to domain {}", other.0))),
        "{lines:#?}"
    );
    assert!(lines.last().unwrap().contains("host-physical 0xa000"));
    // Many aliases: bounded.
    let mut many = device(0, 3, 0, 0, &[]);
    many.requester_ids.extend(0x0400..0x0440);
    let lines = driver.explain(domain, &many, 0);
    assert!(lines.len() <= 1 + 8 * 20 + 1, "{}", lines.len());
    assert!(lines.last().unwrap().contains("more requester id"));
}

#[test]
fn explain_never_panics_and_stays_bounded() {
    let (rig, mut driver, domain, dev) = attached(&[(aw48(QEMU_CAP), QEMU_ECAP)]);
    driver.map(domain, 0x1000, 0x9000, 0x1000, RW).unwrap();
    driver
        .map(domain, 0x20_0000, 0x4000_0000, 0x20_0000, Access::WRITE)
        .unwrap();
    driver.commit(domain).unwrap();
    let strangers = DeviceDma {
        device: PciAddress::new(0, 0xff, 0x1f, 7),
        unit: U0,
        requester_ids: vec![0xffff, 0x0000, 0x0018, 0xffff, 0x0100],
    };
    let nobody = DeviceDma {
        requester_ids: Vec::new(),
        ..strangers.clone()
    };
    for iova in [
        0,
        0xfff,
        0x1000,
        0x20_0000,
        0x3f_ffff,
        0xfee0_0000,
        (1 << 39) - 1,
        1 << 39,
        (1 << 48) - 1,
        1 << 48,
        1 << 57,
        1 << 63,
        u64::MAX,
    ] {
        for device in [&dev, &strangers, &nobody] {
            let lines = driver.explain(domain, device, iova);
            let rids = device.requester_ids.len().max(1);
            assert!(lines.len() <= 2 + 20 * rids, "{lines:#?}");
            assert!(lines.iter().all(|l| !l.is_empty() && !l.contains('\n')));
        }
    }
    // An entry this driver never writes: a reserved translation type.
    let root = driver.unit_info(U0).unwrap().root_table;
    let ctx = {
        let mem = rig.mem.borrow();
        (mem.read(root) & ADDR) + u64::from(rid_of(&dev) & 0xff) * 16
    };
    let lo = rig.mem.borrow().read(ctx);
    rig.mem.borrow_mut().write(ctx, lo | 3 << 2);
    let lines = driver.explain(domain, &dev, 0x1000);
    assert!(lines[2].contains("T=3 (reserved)"), "{lines:#?}");
    assert!(lines.last().unwrap().contains("reason 0x3"), "{lines:#?}");
}

// ---------------------------------------------------------------------------------------
// Interrupt remapping.
// ---------------------------------------------------------------------------------------

/// ECAP.IR (bit 3).
const fn no_ir(ecap: u64) -> u64 {
    ecap & !(1 << 3)
}

/// A QEMU-default unit with interrupt remapping enabled, and the log cleared.
fn remapping() -> (Rig, Driver) {
    let (rig, mut driver) = qemu();
    rig.clear_log();
    assert_eq!(driver.enable_interrupt_remapping(), Ok(true));
    (rig, driver)
}

/// The test's own decoding of a remappable-format MSI address: (handle, SHV).
fn handle_of(address: u64) -> (u32, bool) {
    assert_eq!(address >> 20, 0xfee);
    assert_ne!(address & (1 << 4), 0, "interrupt format must be remappable");
    let handle = ((address >> 5) & 0x7fff) as u32 | (((address >> 2) & 1) as u32) << 15;
    (handle, address & (1 << 3) != 0)
}

#[test]
fn interrupt_remapping_enable_sequence() {
    let (rig, driver) = remapping();
    assert!(driver.interrupt_remapping());
    let table = driver.unit_info(U0).unwrap().interrupt_table.unwrap();
    let events = reg_writes(&rig, 0);
    // IRTA (table, S = 7: 256 entries, EIME = 0), SIRTP carrying the enables, the global
    // interrupt-entry-cache invalidation and its wait, then IRE; CFI never set.
    assert_eq!(
        events[0],
        Event::Reg64 {
            unit: 0,
            offset: reg::IRTA,
            value: table | 7,
        }
    );
    assert_eq!(
        events[1],
        Event::Reg32 {
            unit: 0,
            offset: reg::GCMD,
            value: QIE | TE | SIRTP,
        }
    );
    assert!(matches!(
        events[2],
        Event::Reg64 {
            offset: reg::IQT,
            ..
        }
    ));
    assert_eq!(
        events.last().unwrap(),
        &Event::Reg32 {
            unit: 0,
            offset: reg::GCMD,
            value: QIE | TE | IRE,
        }
    );
    let descriptors = rig.descriptors(0);
    assert_eq!(
        descriptors[0],
        Desc::InterruptEntry {
            global: true,
            index: 0,
            mask: 0
        }
    );
    assert!(descriptors[1].is_wait());
    assert_eq!(descriptors.len(), 2);
    let unit = rig.unit(0);
    assert_eq!(unit.gsts & (IRE | CFI | TE | QIE), IRE | TE | QIE);
    assert_eq!(unit.ir_table, Some((table, 256, false)));
    assert_eq!(unit.sirtp_count, 1);
    drop(unit);
    // The table is empty: every entry not present.
    let mem = rig.mem.borrow();
    assert!((0..512).all(|i| mem.read(table + 8 * i) == 0));
    drop(mem);
    // Compatibility format is blocked, and so is any remappable handle.
    assert_eq!(rig.fakes[0].interrupt(0x18, 0xfee0_0000, 0x41), Err(0x25));
    assert_eq!(
        rig.fakes[0].interrupt(0x18, 0xfee0_0018 | 1 << 5, 0),
        Err(0x22)
    );
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

#[test]
fn interrupt_remapping_not_offered() {
    for ecap in [no_ir(QEMU_ECAP), no_qi(QEMU_ECAP)] {
        let (rig, mut driver) = setup(&[(QEMU_CAP, ecap)]);
        rig.clear_log();
        assert!(!driver.interrupt_remapping_offered());
        assert_eq!(driver.enable_interrupt_remapping(), Ok(false));
        assert!(reg_writes(&rig, 0).is_empty());
        assert!(!driver.interrupt_remapping());
        let dev = device(0, 0, 3, 0, &[]);
        assert_eq!(
            driver.map_msi(&dev, 0x41, 1, 0),
            Err(IommuError::Unsupported { unit: U0 })
        );
    }
    // One unit without it: none is enabled.
    let (rig, mut driver) = setup(&[(QEMU_CAP, QEMU_ECAP), (QEMU_CAP, no_ir(QEMU_ECAP))]);
    rig.clear_log();
    assert_eq!(driver.enable_interrupt_remapping(), Ok(false));
    assert!(reg_writes(&rig, 0).is_empty());
}

#[test]
fn map_msi_writes_the_entry_present_last_and_invalidates_it() {
    let (rig, mut driver) = remapping();
    rig.clear_log();
    let dev = device(0, 0, 3, 0, &[]);
    let msi = driver.map_msi(&dev, 0x41, 1, 0).unwrap();
    assert_eq!((msi.unit, msi.count, msi.data), (U0, 1, 0));
    let (handle, shv) = handle_of(msi.address);
    assert_eq!(handle, msi.first);
    assert!(shv);
    assert_ne!(handle, 0);
    let table = driver.unit_info(U0).unwrap().interrupt_table.unwrap();
    let slot = table + u64::from(handle) * 16;
    let (lo, hi) = {
        let mem = rig.mem.borrow();
        (mem.read(slot), mem.read(slot + 8))
    };
    // P, fixed, physical, edge, remapped mode, vector 0x41, xAPIC destination 0.
    assert_eq!(lo, 1 | 0x41 << 16);
    // SID = 00:03.0, SQ = 00, SVT = 01.
    assert_eq!(hi, 0x18 | 1 << 18);
    // High quadword, barrier, low quadword (P): present last. Flushed (ECAP.C = 0).
    let log = rig.mem.borrow().log.clone();
    let hi_at = log
        .iter()
        .position(|e| {
            *e == Event::Write {
                addr: slot + 8,
                value: hi,
            }
        })
        .unwrap();
    let lo_at = log
        .iter()
        .position(|e| {
            *e == Event::Write {
                addr: slot,
                value: lo,
            }
        })
        .unwrap();
    assert!(hi_at < lo_at);
    assert!(log[hi_at..lo_at].contains(&Event::Barrier));
    assert!(
        log[lo_at..]
            .iter()
            .any(|e| matches!(e, Event::Flush { addr, .. } if *addr == slot))
    );
    // Then the index-selective invalidation of that entry and a wait.
    let descriptors = rig.descriptors(0);
    assert_eq!(
        descriptors[0],
        Desc::InterruptEntry {
            global: false,
            index: handle as u16,
            mask: 0
        }
    );
    assert!(descriptors[1].is_wait());
    let desc_at = log
        .iter()
        .position(|e| matches!(e, Event::Descriptor { .. }))
        .unwrap();
    assert!(lo_at < desc_at);
    // The unit delivers it for the device, and only for the device.
    let fake = &rig.fakes[0];
    assert_eq!(
        fake.interrupt(0x18, msi.address as u32, msi.data),
        Ok((0x41, 0))
    );
    assert_eq!(
        fake.interrupt(0x20, msi.address as u32, msi.data),
        Err(0x26)
    );
    assert_eq!(fake.interrupt(0x18, 0xfee0_0000, 0x41), Err(0x25));
    let irte = driver.interrupt_entry(U0, handle).unwrap();
    assert!(irte.present() && irte.admits(0x18) && !irte.admits(0x19));
    assert_eq!(driver.unit_info(U0).unwrap().interrupt_entries_in_use, 1);
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

#[test]
fn multiple_message_msi_gets_an_aligned_block() {
    let (rig, mut driver) = remapping();
    let dev = device(0, 0, 3, 0, &[]);
    let one = driver.map_msi(&dev, 0x40, 1, 1).unwrap();
    rig.clear_log();
    let four = driver.map_msi(&dev, 0x44, 4, 2).unwrap();
    assert_eq!(four.first % 4, 0);
    assert_ne!(four.first, one.first);
    let descriptors = rig.descriptors(0);
    assert_eq!(
        descriptors[0],
        Desc::InterruptEntry {
            global: false,
            index: four.first as u16,
            mask: 2
        }
    );
    // MSI's Multiple Message Enable: the device puts the subindex in the data.
    for sub in 0..4u32 {
        assert_eq!(
            rig.fakes[0].interrupt(0x18, four.address as u32, four.data | sub),
            Ok((0x44 + sub as u8, 2))
        );
    }
    assert_eq!(
        rig.fakes[0].interrupt(0x18, one.address as u32, one.data),
        Ok((0x40, 1))
    );
    assert_eq!(driver.unit_info(U0).unwrap().interrupt_entries_in_use, 5);
}

#[test]
fn unmap_msi_clears_and_invalidates_the_cached_entry() {
    let (rig, mut driver) = remapping();
    let dev = device(0, 0, 3, 0, &[]);
    let other = device(0, 0, 4, 0, &[]);
    let msi = driver.map_msi(&dev, 0x41, 2, 0).unwrap();
    let address = msi.address as u32;
    // Delivered once: the fake now caches the entries.
    assert_eq!(rig.fakes[0].interrupt(0x18, address, 1), Ok((0x42, 0)));
    assert_eq!(
        driver.unmap_msi(&other, &msi),
        Err(IommuError::UnknownDevice)
    );
    rig.clear_log();
    driver.unmap_msi(&dev, &msi).unwrap();
    let descriptors = rig.descriptors(0);
    assert_eq!(
        descriptors[0],
        Desc::InterruptEntry {
            global: false,
            index: msi.first as u16,
            mask: 1
        }
    );
    // P cleared first.
    let table = driver.unit_info(U0).unwrap().interrupt_table.unwrap();
    let slot = table + u64::from(msi.first) * 16;
    let log = rig.mem.borrow().log.clone();
    let lo_at = log
        .iter()
        .position(|e| {
            *e == Event::Write {
                addr: slot,
                value: 0,
            }
        })
        .unwrap();
    let hi_at = log
        .iter()
        .position(|e| {
            *e == Event::Write {
                addr: slot + 8,
                value: 0,
            }
        })
        .unwrap();
    assert!(lo_at < hi_at);
    // Without the invalidation the cached entry would still deliver.
    assert_eq!(rig.fakes[0].interrupt(0x18, address, 1), Err(0x22));
    assert_eq!(rig.fakes[0].interrupt(0x18, address, 0), Err(0x22));
    assert_eq!(driver.unit_info(U0).unwrap().interrupt_entries_in_use, 0);
    assert_eq!(driver.unmap_msi(&dev, &msi), Err(IommuError::UnknownDevice));
    // The entries are free again.
    let again = driver.map_msi(&dev, 0x50, 2, 0).unwrap();
    assert_eq!(again.first, msi.first);
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

#[test]
fn aliased_devices_are_validated_by_bus_range() {
    let (rig, mut driver) = remapping();
    // A function behind a conventional PCI bridge on bus 1: its own id and the bridge's.
    let dev = device(0, 2, 0, 0, &[0x0108]);
    let msi = driver.map_msi(&dev, 0x41, 1, 0).unwrap();
    let irte = driver.interrupt_entry(U0, msi.first).unwrap();
    assert_eq!(irte.source_validation_type(), 2);
    assert_eq!(irte.source_id(), 0x0102);
    let fake = &rig.fakes[0];
    assert_eq!(fake.interrupt(0x0108, msi.address as u32, 0), Ok((0x41, 0)));
    assert_eq!(fake.interrupt(0x0200, msi.address as u32, 0), Ok((0x41, 0)));
    assert_eq!(fake.interrupt(0x0300, msi.address as u32, 0), Err(0x26));
}

#[test]
fn map_msi_errors() {
    let (rig, mut driver) = remapping();
    let dev = device(0, 0, 3, 0, &[]);
    let unsupported = Err(IommuError::Unsupported { unit: U0 });
    assert_eq!(driver.map_msi(&dev, 0x41, 3, 0), unsupported);
    assert_eq!(driver.map_msi(&dev, 0x41, 64, 0), unsupported);
    assert_eq!(driver.map_msi(&dev, 0xfe, 4, 0), unsupported);
    assert_eq!(driver.map_msi(&dev, 0x41, 1, 256), unsupported);
    let nowhere = device(7, 0, 3, 0, &[]);
    assert_eq!(
        driver.map_msi(&nowhere, 0x41, 1, 0),
        Err(IommuError::UnknownDevice)
    );
    // The table fills up (entry 0 is never used).
    for _ in 0..7 {
        driver.map_msi(&dev, 0x40, 32, 0).unwrap();
    }
    for _ in 0..31 {
        driver.map_msi(&dev, 0x40, 1, 0).unwrap();
    }
    assert_eq!(driver.map_msi(&dev, 0x40, 1, 0), Err(IommuError::NoMemory));
    // A unit that stops completing invalidations: the error, never a success, and the
    // entries are not reused.
    let (rig2, mut driver2) = driver_with(&[(QEMU_CAP, QEMU_ECAP)], Vec::new(), small_budget());
    driver2.enable_interrupt_remapping().unwrap();
    let msi = driver2.map_msi(&dev, 0x41, 1, 0).unwrap();
    rig2.unit(0).ignore_iqt = true;
    assert_eq!(
        driver2.unmap_msi(&dev, &msi),
        Err(IommuError::InvalidationTimeout { unit: U0 })
    );
    assert_eq!(
        driver2.map_msi(&dev, 0x41, 1, 0),
        Err(IommuError::InvalidationTimeout { unit: U0 })
    );
    drop(rig);
}

#[test]
fn unacknowledged_interrupt_remapping_commands_time_out() {
    for bit in [SIRTP, IRE] {
        let (rig, mut driver) = driver_with(&[(QEMU_CAP, QEMU_ECAP)], Vec::new(), small_budget());
        rig.unit(0).ignore_gcmd = bit;
        assert_eq!(
            driver.enable_interrupt_remapping(),
            Err(IommuError::HardwareTimeout { unit: U0 })
        );
        assert!(!driver.interrupt_remapping());
        assert!(driver.unit_failed(U0));
    }
}

// ---------------------------------------------------------------------------------------
// I/O APIC pins through interrupt remapping.
// ---------------------------------------------------------------------------------------

/// QEMU's I/O APIC: APIC id 0, requester id ff:00.0 (the DMAR's IOAPIC scope).
const IOAPIC_SID: u16 = 0xff00;

/// [`remapping`] with QEMU's I/O APIC named on unit 0.
fn remapping_with_ioapic() -> (Rig, Driver) {
    let (rig, mut driver) = remapping();
    driver.add_io_apic(U0, 0, IOAPIC_SID).unwrap();
    rig.clear_log();
    (rig, driver)
}

#[test]
fn ioapic_pin_gets_a_level_entry_and_a_remappable_rte() {
    let (rig, mut driver) = remapping_with_ioapic();
    // GSI 23 = pin 23 of I/O APIC 0, host vector 0x41, APIC 0, level, active high.
    let route = driver.map_ioapic_pin(0, 23, 0x41, 0, true, false).unwrap();
    assert_eq!((route.unit, route.index), (Some(U0), Some(1)));
    // The redirection entry, by the test's own decoding: vector 0x41 (the IRTE's),
    // delivery mode 000, polarity 0, trigger 1 (bit 15), unmasked, interrupt format 1
    // (bit 48), handle 1 in bits 63:49, handle bit 15 (bit 11) clear.
    assert_eq!(route.rte, 0x0003_0000_0000_8041);
    assert_eq!(route.rte & 0xff, 0x41);
    assert_eq!((route.rte >> 8) & 7, 0);
    assert_eq!((route.rte >> 15) & 1, 1);
    assert_eq!((route.rte >> 16) & 1, 0);
    assert_eq!((route.rte >> 48) & 1, 1);
    assert_eq!(route.rte >> 49, 1);

    // The IRTE: P, TM = level (bit 4), fixed, physical, vector 0x41 (23:16), APIC 0 in
    // 47:40; SID ff:00.0, SQ 00, SVT 01.
    let table = driver.unit_info(U0).unwrap().interrupt_table.unwrap();
    let slot = table + 16;
    let (lo, hi) = {
        let mem = rig.mem.borrow();
        (mem.read(slot), mem.read(slot + 8))
    };
    assert_eq!(lo, 0x0000_0000_0041_0011);
    assert_eq!(hi, 0x0000_0000_0004_ff00);
    // High quadword, barrier, then low (P); flushed; then the index-selective
    // invalidation of entry 1 and a wait.
    let log = rig.mem.borrow().log.clone();
    let write_at = |addr, value| {
        log.iter()
            .position(|e| *e == Event::Write { addr, value })
            .unwrap()
    };
    let (hi_at, lo_at) = (write_at(slot + 8, hi), write_at(slot, lo));
    assert!(hi_at < lo_at && log[hi_at..lo_at].contains(&Event::Barrier));
    assert!(
        log[lo_at..]
            .iter()
            .any(|e| matches!(e, Event::Flush { addr, .. } if *addr == slot))
    );
    let descriptors = rig.descriptors(0);
    assert_eq!(
        descriptors[0],
        Desc::InterruptEntry {
            global: false,
            index: 1,
            mask: 0
        }
    );
    assert!(descriptors[1].is_wait());
    assert_eq!(descriptors.len(), 2);

    // The message the I/O APIC sends for that entry (address 0xfee00030, data 0x8041:
    // SHV = 0) is delivered for the I/O APIC's requester id only.
    let (address, data) = sluice_vtd::driver::intremap::ioapic_message(route.rte);
    assert_eq!((address, data), (0xfee0_0030, 0x8041));
    let fake = &rig.fakes[0];
    assert_eq!(fake.interrupt(IOAPIC_SID, address, data), Ok((0x41, 0)));
    assert_eq!(fake.interrupt(0x0018, address, data), Err(0x26));
    // The same pin in compatibility format is blocked (CFIS clear).
    let compat = sluice_iommu::ioapic::compat_rte(0x41, 0, true, false, false);
    let (address, data) = sluice_vtd::driver::intremap::ioapic_message(compat);
    assert_eq!(fake.interrupt(IOAPIC_SID, address, data), Err(0x25));

    let irte = driver.interrupt_entry(U0, 1).unwrap();
    assert!(irte.present() && irte.level() && irte.admits(IOAPIC_SID));
    assert_eq!(driver.unit_info(U0).unwrap().interrupt_entries_in_use, 1);
    // A second pin gets its own entry (handle 2); active low shows in bit 13.
    let other = driver.map_ioapic_pin(0, 16, 0x42, 0, true, true).unwrap();
    assert_eq!(other.index, Some(2));
    assert_eq!(other.rte, 0x0005_0000_0000_a042);
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

#[test]
fn unmap_ioapic_pin_clears_invalidates_and_frees() {
    let (rig, mut driver) = remapping_with_ioapic();
    let route = driver.map_ioapic_pin(0, 23, 0x41, 0, true, false).unwrap();
    let (address, data) = sluice_vtd::driver::intremap::ioapic_message(route.rte);
    // Delivered once: the fake caches the entry.
    assert_eq!(
        rig.fakes[0].interrupt(IOAPIC_SID, address, data),
        Ok((0x41, 0))
    );
    rig.clear_log();
    driver.unmap_ioapic_pin(&route).unwrap();
    let table = driver.unit_info(U0).unwrap().interrupt_table.unwrap();
    let slot = table + 16;
    let log = rig.mem.borrow().log.clone();
    let write_at = |addr| {
        log.iter()
            .position(|e| *e == Event::Write { addr, value: 0 })
            .unwrap()
    };
    assert!(write_at(slot) < write_at(slot + 8), "P cleared first");
    assert_eq!(
        rig.descriptors(0)[0],
        Desc::InterruptEntry {
            global: false,
            index: 1,
            mask: 0
        }
    );
    // Without the invalidation the cached entry would still deliver.
    assert_eq!(rig.fakes[0].interrupt(IOAPIC_SID, address, data), Err(0x22));
    assert_eq!(driver.unit_info(U0).unwrap().interrupt_entries_in_use, 0);
    assert_eq!(
        driver.unmap_ioapic_pin(&route),
        Err(IommuError::UnknownDevice)
    );
    // An MSI block is no pin route; half a route is nothing.
    let dev = device(0, 0, 3, 0, &[]);
    let msi = driver.map_msi(&dev, 0x50, 1, 0).unwrap();
    let forged = sluice_iommu::IoApicPinRoute {
        unit: Some(U0),
        index: Some(msi.first),
        rte: 0,
    };
    assert_eq!(
        driver.unmap_ioapic_pin(&forged),
        Err(IommuError::UnknownDevice)
    );
    let half = sluice_iommu::IoApicPinRoute {
        unit: Some(U0),
        index: None,
        rte: 0,
    };
    assert_eq!(
        driver.unmap_ioapic_pin(&half),
        Err(IommuError::UnknownDevice)
    );
    // The pin can be routed again; its entry is reused.
    let again = driver.map_ioapic_pin(0, 23, 0x41, 0, true, false).unwrap();
    assert_eq!(again.index, Some(2), "entry 1 is the MSI's now");
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

#[test]
fn ioapic_pin_errors() {
    let (_rig, mut driver) = remapping_with_ioapic();
    // Naming I/O APICs.
    assert_eq!(
        driver.add_io_apic(UnitId(3), 1, 0xff01),
        Err(IommuError::UnknownDevice)
    );
    assert_eq!(driver.add_io_apic(U0, 0, 0xff08), Err(IommuError::Busy));
    // An I/O APIC no unit remaps.
    assert_eq!(
        driver.map_ioapic_pin(9, 0, 0x41, 0, true, false),
        Err(IommuError::UnknownDevice)
    );
    // An x2APIC destination.
    assert_eq!(
        driver.map_ioapic_pin(0, 0, 0x41, 256, true, false),
        Err(IommuError::Unsupported { unit: U0 })
    );
    // One route per pin.
    driver.map_ioapic_pin(0, 5, 0x41, 0, true, false).unwrap();
    assert_eq!(
        driver.map_ioapic_pin(0, 5, 0x42, 0, true, false),
        Err(IommuError::Busy)
    );
    // The table fills up: 255 usable entries (entry 0 is never handed out).
    for pin in 0..=u8::MAX {
        if pin == 5 {
            continue;
        }
        let result = driver.map_ioapic_pin(0, pin, 0x41, 0, true, false);
        if pin == u8::MAX {
            assert_eq!(result, Err(IommuError::NoMemory));
        } else {
            assert!(result.is_ok(), "pin {pin}: {result:?}");
        }
    }
    // A unit that stops completing invalidations: an error, never a success.
    let (rig, mut driver) = driver_with(&[(QEMU_CAP, QEMU_ECAP)], Vec::new(), small_budget());
    driver.enable_interrupt_remapping().unwrap();
    driver.add_io_apic(U0, 0, IOAPIC_SID).unwrap();
    rig.unit(0).ignore_iqt = true;
    assert_eq!(
        driver.map_ioapic_pin(0, 23, 0x41, 0, true, false),
        Err(IommuError::InvalidationTimeout { unit: U0 })
    );
    assert!(driver.unit_failed(U0));
    assert_eq!(
        driver.map_ioapic_pin(0, 22, 0x41, 0, true, false),
        Err(IommuError::InvalidationTimeout { unit: U0 })
    );
}

#[test]
fn ioapic_pin_without_remapping_is_compatibility_format() {
    let (rig, mut driver) = qemu();
    driver.add_io_apic(U0, 0, IOAPIC_SID).unwrap();
    rig.clear_log();
    let route = driver.map_ioapic_pin(0, 23, 0x41, 0, true, false).unwrap();
    assert_eq!((route.unit, route.index), (None, None));
    // Fixed, physical, APIC 0, level, active high, unmasked.
    assert_eq!(route.rte, 0x8041);
    assert_eq!(driver.unmap_ioapic_pin(&route), Ok(()));
    assert!(reg_writes(&rig, 0).is_empty(), "nothing written");
    assert_eq!(
        driver.map_ioapic_pin(0, 23, 0x41, 256, true, false),
        Err(IommuError::Unsupported { unit: U0 })
    );
}

#[test]
fn the_dmar_names_qemus_ioapic() {
    let table = DeviceTable::new(Vec::new());
    let topology =
        DmarTopology::parse(include_bytes!("fixtures/qemu10-intremap-on.dmar"), &table).unwrap();
    let (rig, setups) = Rig::new(&[(QEMU_CAP, QEMU_ECAP)]);
    let registers = setups.into_iter().map(|s| s.registers).collect();
    let mut driver = VtdIommu::new(
        &topology,
        registers,
        SharedMem(rig.mem.clone()),
        Default::default(),
    )
    .unwrap();
    assert_eq!(
        driver.io_apic(0),
        Some(sluice_vtd::driver::IoApicSource {
            id: 0,
            unit: U0,
            source_id: IOAPIC_SID,
        })
    );
    assert_eq!(driver.io_apic(1), None);
    driver.enable_interrupt_remapping().unwrap();
    let route = driver.map_ioapic_pin(0, 23, 0x41, 0, true, false).unwrap();
    let (address, data) = sluice_vtd::driver::intremap::ioapic_message(route.rte);
    assert_eq!(
        rig.fakes[0].interrupt(IOAPIC_SID, address, data),
        Ok((0x41, 0))
    );
}
