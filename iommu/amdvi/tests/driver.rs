//! Host tests of the AMD-Vi driver (`sluice_amdvi::driver`) against fake IOMMUs
//! (`driver_support.rs`): bring-up order, default deny for every requester id, the
//! device table entries written (decoded here, bit by bit) and the order they are written
//! in, the exact commands of each operation, domain-id lifetime, dead units, events, IVMD
//! identity maps.

mod driver_support;

use driver_support::*;
use sluice_amdvi::driver::{DriverConfig, UnitFailure, WalkFault};
use sluice_iommu::{Access, DeviceDma, Iommu, IommuError, IovaRange, UnitId, Vendor};
use sluice_pci::PciAddress;

const RW: Access = Access::READ.union(Access::WRITE);
const U0: UnitId = UnitId(0);
const U1: UnitId = UnitId(1);
const EDU: u16 = 0x0010;
const MODE4: u64 = 4 << 9;

fn reg_writes(rig: &Rig, unit: usize) -> Vec<(usize, u64)> {
    rig.mem
        .borrow()
        .log
        .iter()
        .filter_map(|e| match *e {
            Event::Reg {
                unit: u,
                offset,
                value,
            } if u == unit => Some((offset, value)),
            _ => None,
        })
        .collect()
}

fn small_budget() -> DriverConfig {
    DriverConfig {
        invalidation_spin_budget: 1000,
        register_spin_budget: 1000,
        ..DriverConfig::default()
    }
}

/// The zeroed page every blocked entry of `unit` points at, checked to be all zero.
fn blocking_root(rig: &Rig, driver: &Driver, unit: UnitId) -> u64 {
    let root = driver.unit_info(unit).unwrap().blocking_root;
    let mem = rig.mem.borrow();
    assert!(
        (0..512).all(|i| mem.read(root + i * 8) == 0),
        "blocking root written"
    );
    root
}

/// Decodes a blocked entry: V, TV, Mode 4, the blocking root, no read permission, no
/// domain, nothing in quadword 3.
fn assert_blocked(dte: [u64; 4], root: u64) {
    assert_eq!(dte[0] & 3, 3, "V and TV: {dte:#x?}");
    assert_eq!(dte[0] & (7 << 9), MODE4);
    assert_eq!(dte[0] & ADDR, root, "blocking root: {dte:#x?}");
    assert_eq!(dte[0] & IR, 0);
    assert_eq!(dte[1] & 0xffff, 0, "domain id 0");
    assert_eq!(dte[3], 0);
    assert!(qemu72_accepts(&dte));
}

// ---------------------------------------------------------------------------------------
// Bring-up.
// ---------------------------------------------------------------------------------------

#[test]
fn bring_up_order_on_qemu_defaults() {
    let (rig, driver) = qemu72();
    let info = driver.unit_info(U0).unwrap();
    assert_eq!(info.efr.raw, QEMU_EFR);
    assert_eq!(info.max_levels, 6);
    assert!(!info.coherent, "QEMU's IVHD flags 0xd1 lack Coherent");
    assert!(!info.was_enabled);
    let writes = reg_writes(&rig, 0);
    let control = [
        HT_TUN_EN | COHERENT_EN,
        HT_TUN_EN | COHERENT_EN | CMD_BUF_EN,
        HT_TUN_EN | COHERENT_EN | CMD_BUF_EN | EVENT_LOG_EN,
        HT_TUN_EN | COHERENT_EN | CMD_BUF_EN | EVENT_LOG_EN | IOMMU_EN,
    ];
    assert_eq!(
        writes,
        [
            (reg::STATUS, 7),
            (reg::EXCL_BASE, 0),
            (reg::EXCL_LIMIT, 0),
            (reg::DEVTAB, info.device_table | 511),
            (reg::CMD_BASE, info.command_buffer | 8 << 56),
            (reg::CMD_HEAD, 0),
            (reg::CMD_TAIL, 0),
            (reg::EVT_BASE, info.event_log | 8 << 56),
            (reg::EVT_HEAD, 0),
            (reg::EVT_TAIL, 0),
            (reg::CONTROL, control[0]),
            (reg::CONTROL, control[1]),
            (reg::CONTROL, control[2]),
            (reg::CONTROL, control[3]),
            (reg::CMD_TAIL, 0x20),
        ]
    );
    assert_eq!(info.device_table % 4096, 0);
    let commands = rig.commands(0);
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert_eq!(commands[0], Cmd::All);
    let Cmd::Wait {
        store: true,
        interrupt: false,
        addr,
        data: 1,
    } = commands[1]
    else {
        panic!("{commands:?}")
    };
    assert_eq!(rig.mem.borrow().read(addr), 1, "the store arrived");
    let unit = rig.unit(0);
    assert_eq!(unit.status & (CMD_RUN | EVT_RUN), CMD_RUN | EVT_RUN);
    assert_eq!(unit.control, control[3]);
    assert_eq!(info.control, control[3]);
    assert_eq!(info.completion_waits, 1);
    assert_eq!(info.commands_issued, 2);
    drop(unit);
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
    assert_eq!(driver.vendor(), Vendor::AmdVi);
    let format = driver.format();
    assert_eq!((format.levels, format.address_width), (4, 48));
    assert!(!format.coherent);
}

#[test]
fn every_requester_id_is_blocked_after_enable() {
    let (rig, driver) = qemu72();
    let root = blocking_root(&rig, &driver, U0);
    for id in 0..=u16::MAX {
        let dte = rig.dte(0, id);
        assert_blocked(dte, root);
        assert_eq!(dte[0] & IW, 0, "QEMU's IVRS has no DTE settings");
        assert_eq!(dte[1], 0);
        assert_eq!(dte[2], 0);
    }
    for id in [0x0000, EDU, 0x00fb, 0x0100, 0xffff] {
        for write in [false, true] {
            assert_eq!(rig.fakes[0].dma(id, 0x1000, write), Err(Blocked::PageFault));
        }
        assert_eq!(
            driver.walk(U0, id, 0x1000),
            Some(Err(WalkFault::NotPresent { level: 4 }))
        );
        assert_eq!(driver.dte(U0, id), Some(rig.dte(0, id)));
    }
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

#[test]
fn ivrs_settings_are_applied_and_still_block() {
    let (rig, driver) = two_units();
    for unit in [U0, U1] {
        let root = blocking_root(&rig, &driver, unit);
        for id in [0x0000, rid(0, 3, 0), rid(1, 7, 3), 0x00a0, 0xfff8] {
            assert_blocked(rig.dte(unit.0 as usize, id), root);
        }
    }
    // 00:05.0 on unit 1: setting 0x14 = NMIPass, SysMgt 01b; erratum 63 adds IW.
    let dte = rig.dte(1, rid(0, 5, 0));
    assert_eq!(dte[1], 1 << 40, "SysMgt = 01b");
    assert_eq!(dte[2], 1 << 58, "NMIPass");
    assert_eq!(dte[0] & (IR | IW), IW, "erratum 63");
    for write in [false, true] {
        assert!(rig.fakes[1].dma(rid(0, 5, 0), 0x2000, write).is_err());
    }
    assert_eq!(
        driver.walk(U1, rid(0, 5, 0), 0x2000),
        Some(Err(WalkFault::NotPresent { level: 4 }))
    );
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

#[test]
fn a_previous_owners_enables_are_cleared_first_and_other_bits_kept() {
    let pci = qemu_default_machine(AMD_IOMMU_72);
    let (rig, fakes) = make_rig(QEMU72_DEFAULT, &pci, &[QEMU_EFR]);
    let unknown = 1 << 40;
    rig.unit(0).control = IOMMU_EN | CMD_BUF_EN | EVENT_LOG_EN | unknown;
    rig.unit(0).status = CMD_RUN | EVT_RUN;
    let driver = start(&rig, fakes, DriverConfig::default()).unwrap();
    let writes = reg_writes(&rig, 0);
    assert_eq!(
        writes[0],
        (reg::CONTROL, unknown),
        "everything else stays off"
    );
    assert!(driver.unit_info(U0).unwrap().was_enabled);
    let control = rig.unit(0).control;
    assert_eq!(
        control,
        unknown | HT_TUN_EN | COHERENT_EN | CMD_BUF_EN | EVENT_LOG_EN | IOMMU_EN
    );
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

#[test]
fn units_that_cannot_walk_are_refused_untouched() {
    let pci = qemu_default_machine(AMD_IOMMU_72);
    let (rig, fakes) = make_rig(QEMU72_DEFAULT, &pci, &[QEMU_EFR | 3 << 10]);
    assert_eq!(
        start(&rig, fakes, DriverConfig::default()).err(),
        Some(IommuError::Unsupported { unit: U0 })
    );
    assert!(reg_writes(&rig, 0).is_empty());
    assert_eq!(rig.mem.borrow().allocated, 0);
}

#[test]
fn without_memory_nothing_is_touched_or_leaked() {
    let pci = qemu_default_machine(AMD_IOMMU_72);
    for limit in [10, 515] {
        let (rig, fakes) = make_rig(QEMU72_DEFAULT, &pci, &[QEMU_EFR]);
        rig.unit(0).control = IOMMU_EN | CMD_BUF_EN;
        rig.mem.borrow_mut().limit = Some(limit);
        assert_eq!(
            start(&rig, fakes, DriverConfig::default()).err(),
            Some(IommuError::NoMemory)
        );
        assert_eq!(rig.mem.borrow().allocated, 0);
        assert!(
            reg_writes(&rig, 0).is_empty(),
            "a firmware-enabled unit stays on"
        );
    }
}

#[test]
fn an_enable_that_is_not_acknowledged_times_out() {
    let pci = qemu_default_machine(AMD_IOMMU_72);
    let (rig, fakes) = make_rig(QEMU72_DEFAULT, &pci, &[QEMU_EFR]);
    rig.unit(0).withheld_status = EVT_RUN;
    assert_eq!(
        start(&rig, fakes, small_budget()).err(),
        Some(IommuError::HardwareTimeout { unit: U0 })
    );
}

#[test]
fn without_invalidate_all_every_entry_and_domain_is_invalidated() {
    let pci = qemu_default_machine(AMD_IOMMU_72);
    let (rig, fakes) = make_rig(QEMU72_DEFAULT, &pci, &[QEMU_EFR & !IA_SUP]);
    let driver = start(&rig, fakes, DriverConfig::default()).unwrap();
    let commands = rig.commands(0);
    let devtab: Vec<u16> = commands
        .iter()
        .filter_map(|c| match *c {
            Cmd::DevTab { devid } => Some(devid),
            _ => None,
        })
        .collect();
    assert_eq!(devtab, (0..=u16::MAX).collect::<Vec<_>>());
    let domains: Vec<u16> = commands
        .iter()
        .filter_map(|c| match *c {
            Cmd::Pages {
                domid,
                block: None,
                pde: true,
                ..
            } => Some(domid),
            _ => None,
        })
        .collect();
    assert_eq!(domains, (0..=u16::MAX).collect::<Vec<_>>());
    assert!(!commands.contains(&Cmd::All));
    // The 256-entry ring wrapped hundreds of times; every batch was confirmed.
    assert_eq!(
        driver.unit_info(U0).unwrap().completion_waits,
        commands.iter().filter(|c| c.is_wait()).count() as u64
    );
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

#[test]
fn coherent_units_are_not_flushed_and_others_are() {
    let (rig, mut driver) = qemu72();
    assert_eq!(
        driver.dma_coherent(U0),
        Some(false),
        "QEMU's IVHD lacks Coherent"
    );
    assert_eq!(driver.dma_coherent(UnitId(1)), None);
    rig.clear_log();
    let domain = driver.create_domain().unwrap();
    driver.attach(domain, &edu()).unwrap();
    let flushes = |rig: &Rig| {
        rig.mem
            .borrow()
            .log
            .iter()
            .filter(|e| matches!(e, Event::Flush { .. }))
            .count()
    };
    assert!(
        flushes(&rig) > 0,
        "QEMU's unit is not coherent: entries are flushed"
    );

    // The same IVRS with the IVHD's Coherent flag (bit 5 of byte 1) set.
    let coherent = edited(QEMU72_DEFAULT, |bytes| bytes[0x30 + 1] |= 1 << 5);
    let pci = qemu_default_machine(AMD_IOMMU_72);
    let (rig, fakes) = make_rig(&coherent, &pci, &[QEMU_EFR]);
    let mut driver = start(&rig, fakes, DriverConfig::default()).unwrap();
    assert!(driver.format().coherent);
    assert_eq!(driver.dma_coherent(U0), Some(true));
    assert_eq!(driver.dma_coherent(UnitId(1)), None);
    rig.clear_log();
    let domain = driver.create_domain().unwrap();
    driver.attach(domain, &edu()).unwrap();
    driver.map(domain, 0x1000, 0x2000, 0x1000, RW).unwrap();
    driver.unmap(domain, 0x1000, 0x1000).unwrap();
    driver.commit(domain).unwrap();
    assert_eq!(flushes(&rig), 0);
}

// ---------------------------------------------------------------------------------------
// Device table entries.
// ---------------------------------------------------------------------------------------

/// The writes and barriers touching `[at, at + 32)`, as ("q<n>", value) or ("|", 0).
fn entry_writes(rig: &Rig, at: u64) -> Vec<(String, u64)> {
    rig.mem
        .borrow()
        .log
        .iter()
        .filter_map(|e| match *e {
            Event::Write { addr, value } if addr >= at && addr < at + 32 => {
                Some((format!("q{}", (addr - at) / 8), value))
            }
            Event::Barrier => Some(("|".to_string(), 0)),
            _ => None,
        })
        .collect()
}

/// Replays `writes` on `entry`: every state in between must grant nothing (the blocking
/// root) or be the old or new entry whole.
fn assert_safe_transition(
    mut entry: [u64; 4],
    writes: &[(String, u64)],
    states: &[[u64; 4]],
    root: u64,
) {
    for (name, value) in writes {
        if let Some(quad) = name.strip_prefix('q') {
            entry[quad.parse::<usize>().unwrap()] = *value;
            let blocking = entry[0] & ADDR == root && entry[0] & IR == 0;
            assert!(
                blocking || states.contains(&entry),
                "unsafe intermediate entry {entry:#x?}"
            );
        }
    }
}

#[test]
fn attach_writes_the_entry_valid_last_and_invalidates_it() {
    let (rig, mut driver) = qemu72();
    let info = driver.unit_info(U0).unwrap();
    let root = blocking_root(&rig, &driver, U0);
    let domain = driver.create_domain().unwrap();
    let table = driver.table_root(domain).unwrap();
    rig.clear_log();
    driver.attach(domain, &edu()).unwrap();
    let did = driver.domain_id(domain, U0).unwrap();
    assert_eq!(did, 1);
    let dte = rig.dte(0, EDU);
    assert_eq!(dte, [3 | MODE4 | table | IR | IW, u64::from(did), 0, 0]);
    assert!(qemu72_accepts(&dte));
    let at = info.device_table + u64::from(EDU) * 32;
    let writes = entry_writes(&rig, at);
    let first_q1 = writes.iter().position(|(n, _)| n == "q1").unwrap();
    let first_q0 = writes.iter().position(|(n, _)| n == "q0").unwrap();
    assert!(first_q1 < first_q0, "{writes:?}");
    assert!(writes[first_q1..first_q0].iter().any(|(n, _)| n == "|"));
    assert_eq!(writes.iter().filter(|(n, _)| n == "q0").count(), 1);
    let blocked = [3 | MODE4 | root, 0, 0, 0];
    assert_safe_transition(blocked, &writes, &[blocked, dte], root);

    let commands = rig.commands(0);
    assert_eq!(commands.len(), 3, "{commands:?}");
    assert_eq!(commands[0], Cmd::DevTab { devid: EDU });
    assert_eq!(
        commands[1],
        Cmd::Pages {
            domid: did,
            block: None,
            pde: true,
            pasid: 0,
            gn: false
        }
    );
    assert!(commands[2].is_wait());
    // The domain's mappings reach the device; nothing else does.
    driver
        .map(domain, 0x10_0000, 0x5000_0000, 0x1000, RW)
        .unwrap();
    driver.commit(domain).unwrap();
    assert_eq!(rig.fakes[0].dma(EDU, 0x10_0008, true), Ok(0x5000_0008));
    assert_eq!(
        rig.fakes[0].dma(EDU, 0x20_0000, false),
        Err(Blocked::PageFault)
    );
    assert_eq!(
        rig.fakes[0].dma(0x0018, 0x10_0000, false),
        Err(Blocked::PageFault)
    );
    let walked = driver.walk(U0, EDU, 0x10_0008).unwrap().unwrap();
    assert_eq!(
        (walked.paddr, walked.access, walked.level, walked.domain_id),
        (0x5000_0008, RW, 1, did)
    );
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

#[test]
fn detach_blocks_through_an_interim_entry_and_flushes_the_domain() {
    let (rig, mut driver) = qemu72();
    let info = driver.unit_info(U0).unwrap();
    let root = blocking_root(&rig, &driver, U0);
    let domain = driver.create_domain().unwrap();
    driver.attach(domain, &edu()).unwrap();
    let did = driver.domain_id(domain, U0).unwrap();
    driver
        .map(domain, 0x10_0000, 0x5000_0000, 0x2000, RW)
        .unwrap();
    driver.commit(domain).unwrap();
    // Fill the fake's caches.
    assert!(rig.fakes[0].dma(EDU, 0x10_0000, true).is_ok());
    assert!(rig.fakes[0].dma(EDU, 0x10_1000, false).is_ok());
    let attached = rig.dte(0, EDU);
    rig.clear_log();
    driver.detach(domain, &edu()).unwrap();
    let blocked = [3 | MODE4 | root, 0, 0, 0];
    assert_eq!(rig.dte(0, EDU), blocked);
    let writes = entry_writes(&rig, info.device_table + u64::from(EDU) * 32);
    // Quadword 0 goes to the blocking value before the domain id changes.
    let names: Vec<&str> = writes
        .iter()
        .filter(|(n, _)| n != "|")
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(names, ["q0", "q1", "q0"], "{writes:?}");
    assert_safe_transition(attached, &writes, &[attached, blocked], root);
    let commands = rig.commands(0);
    assert_eq!(commands[0], Cmd::DevTab { devid: EDU });
    assert!(commands.contains(&Cmd::Pages {
        domid: did,
        block: None,
        pde: true,
        pasid: 0,
        gn: false
    }));
    // The cached translations are gone with the domain flush.
    assert!(rig.fakes[0].dma(EDU, 0x10_0000, true).is_err());
    assert!(rig.fakes[0].dma(EDU, 0x10_1000, false).is_err());
    assert_eq!(
        driver.detach(domain, &edu()),
        Err(IommuError::UnknownDevice)
    );
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

#[test]
fn ivrs_aliases_mirror_the_device() {
    let (rig, mut driver) = two_units();
    let alias = rid(3, 0, 0);
    let first = device(1, 2, 1, 0, &[]);
    let second = device(1, 2, 2, 0, &[]);
    let domain = driver.create_domain().unwrap();
    let other = driver.create_domain().unwrap();
    rig.clear_log();
    driver.attach(domain, &first).unwrap();
    let did = driver.domain_id(domain, U1).unwrap();
    let table = driver.table_root(domain).unwrap();
    let expected = [3 | MODE4 | table | IR | IW, u64::from(did), 0, 0];
    assert_eq!(rig.dte(1, rid(2, 1, 0)), expected);
    assert_eq!(rig.dte(1, alias), expected, "the alias mirrors the device");
    let commands = rig.commands(1);
    assert!(commands.contains(&Cmd::DevTab {
        devid: rid(2, 1, 0)
    }));
    assert!(commands.contains(&Cmd::DevTab { devid: alias }));
    assert!(rig.commands(0).is_empty(), "unit 0 is not involved");
    driver.map(domain, 0x3000, 0x9000, 0x1000, RW).unwrap();
    driver.commit(domain).unwrap();
    assert_eq!(rig.fakes[1].dma(alias, 0x3000, false), Ok(0x9000));

    // The second device shares the alias: same domain fine, another domain Busy.
    assert_eq!(driver.attach(other, &second), Err(IommuError::Busy));
    driver.attach(domain, &second).unwrap();
    assert_eq!(driver.domain_of(U1, alias), Some(domain));
    driver.detach(domain, &first).unwrap();
    assert_eq!(
        rig.dte(1, alias),
        expected,
        "still used by the second device"
    );
    assert!(rig.dte(1, rid(2, 1, 0))[0] & IR == 0);
    driver.detach(domain, &second).unwrap();
    let root = blocking_root(&rig, &driver, U1);
    assert_blocked(rig.dte(1, alias), root);
    assert!(rig.fakes[1].dma(alias, 0x3000, false).is_err());
    assert_eq!(driver.domain_of(U1, alias), None);
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

#[test]
fn requester_ids_belong_to_one_domain() {
    let (rig, mut driver) = two_units();
    let a = driver.create_domain().unwrap();
    let b = driver.create_domain().unwrap();
    let dev = device(0, 0, 3, 0, &[]);
    driver.attach(a, &dev).unwrap();
    // Re-attaching to its own domain is a no-op.
    driver.attach(a, &dev).unwrap();
    assert_eq!(driver.attach(b, &dev), Err(IommuError::Busy));
    // Another function claiming the same requester id as an alias.
    let thief = device(0, 1, 0, 0, &[rid(0, 3, 0)]);
    assert_eq!(driver.attach(b, &thief), Err(IommuError::Busy));
    assert_eq!(driver.destroy_domain(a), Err(IommuError::Busy));
    // Errors: unknown unit, other segment, no requester ids, unknown domain.
    let mut stray = device(7, 0, 3, 0, &[]);
    assert_eq!(driver.attach(b, &stray), Err(IommuError::UnknownDevice));
    stray.unit = U0;
    stray.device = PciAddress::new(1, 0, 3, 0);
    assert_eq!(driver.attach(b, &stray), Err(IommuError::UnknownDevice));
    let empty = DeviceDma {
        device: PciAddress::new(0, 1, 1, 0),
        unit: U0,
        requester_ids: Vec::new(),
    };
    assert_eq!(driver.attach(b, &empty), Err(IommuError::UnknownDevice));
    assert_eq!(
        driver.attach(sluice_iommu::DomainHandle(99), &dev),
        Err(IommuError::UnknownDomain)
    );
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

// ---------------------------------------------------------------------------------------
// Map, unmap, commit.
// ---------------------------------------------------------------------------------------

fn attached() -> (Rig, Driver, sluice_iommu::DomainHandle, u16) {
    let (rig, mut driver) = qemu72();
    let domain = driver.create_domain().unwrap();
    driver.attach(domain, &edu()).unwrap();
    let did = driver.domain_id(domain, U0).unwrap();
    rig.clear_log();
    (rig, driver, domain, did)
}

fn pages(did: u16, first: u64, bytes: u64, pde: bool) -> Cmd {
    Cmd::Pages {
        domid: did,
        block: Some((first, bytes)),
        pde,
        pasid: 0,
        gn: false,
    }
}

#[test]
fn maps_need_no_invalidation() {
    let (rig, mut driver, domain, _) = attached();
    driver
        .map(domain, 0x10_0000, 0x5000_0000, 0x2000, RW)
        .unwrap();
    driver.commit(domain).unwrap();
    assert!(rig.commands(0).is_empty());
    assert_eq!(rig.fakes[0].dma(EDU, 0x10_1000, true), Ok(0x5000_1000));
}

#[test]
fn unmap_and_commit_invalidate_exactly_the_range() {
    let (rig, mut driver, domain, did) = attached();
    driver
        .map(domain, 0x10_0000, 0x5000_0000, 0x2000, RW)
        .unwrap();
    driver.commit(domain).unwrap();
    assert!(rig.fakes[0].dma(EDU, 0x10_0000, false).is_ok());
    assert_eq!(driver.unmap(domain, 0x10_0000, 0x1000), Ok(0x1000));
    // Not committed yet: the cached translation still works (that is what commit fixes).
    assert!(rig.fakes[0].dma(EDU, 0x10_0000, false).is_ok());
    driver.commit(domain).unwrap();
    let commands = rig.commands(0);
    assert_eq!(commands.len(), 2);
    assert_eq!(commands[0], pages(did, 0x10_0000, 0x1000, false));
    assert!(commands[1].is_wait());
    assert_eq!(
        rig.fakes[0].dma(EDU, 0x10_0000, false),
        Err(Blocked::PageFault)
    );
    // The last page of a table: the table goes, PDE is set, the table is freed after.
    let before = driver.table_pages(domain).unwrap();
    rig.clear_log();
    assert_eq!(driver.unmap(domain, 0x10_1000, 0x1000), Ok(0x1000));
    assert_eq!(
        driver.table_pages(domain),
        Some(before),
        "retired, not freed"
    );
    driver.commit(domain).unwrap();
    assert_eq!(rig.commands(0)[0], pages(did, 0x10_1000, 0x1000, true));
    assert!(driver.table_pages(domain).unwrap() < before);
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

#[test]
fn superpages_are_used_and_invalidated_whole() {
    let (rig, mut driver, domain, did) = attached();
    let two_mb = 0x20_0000;
    driver
        .map(domain, 0x4000_0000, 0x8000_0000, two_mb, RW)
        .unwrap();
    driver
        .map(domain, 0x8000_0000, 0xc000_0000, 1 << 30, Access::READ)
        .unwrap();
    let leaf = driver.leaf(domain, 0x4000_1234).unwrap().unwrap();
    assert_eq!((leaf.level, leaf.page_size), (2, two_mb));
    assert_eq!(leaf.entry & 1, 1);
    assert_eq!((leaf.entry >> 9) & 7, 0, "NextLevel 0: a 2 MiB page");
    let giant = driver.leaf(domain, 0x8000_0000).unwrap().unwrap();
    assert_eq!((giant.level, giant.page_size), (3, 1 << 30));
    assert_eq!(rig.fakes[0].dma(EDU, 0x4000_1234, true), Ok(0x8000_1234));
    assert_eq!(rig.fakes[0].dma(EDU, 0x8123_4000, false), Ok(0xc123_4000));
    assert!(rig.fakes[0].dma(EDU, 0x8123_4000, true).is_err());
    driver.unmap(domain, 0x4000_0000, two_mb).unwrap();
    driver.commit(domain).unwrap();
    let commands = rig.commands(0);
    let Cmd::Pages {
        block: Some((first, bytes)),
        ..
    } = commands[0]
    else {
        panic!("{commands:?}")
    };
    assert_eq!((first, bytes), (0x4000_0000, two_mb));
    assert!(matches!(commands[0], Cmd::Pages { domid, .. } if domid == did));
    assert!(rig.fakes[0].dma(EDU, 0x4000_1234, true).is_err());
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

#[test]
fn unmaps_of_one_batch_are_merged_or_become_one_domain_flush() {
    let (rig, mut driver, domain, did) = attached();
    driver.map(domain, 0, 0x10_0000, 0x40_0000, RW).unwrap();
    for page in [1u64, 2, 3] {
        driver.unmap(domain, page * 0x1000, 0x1000).unwrap();
    }
    driver.commit(domain).unwrap();
    let commands = rig.commands(0);
    assert_eq!(commands.len(), 2, "one range: {commands:?}");
    let Cmd::Pages {
        block: Some((first, bytes)),
        ..
    } = commands[0]
    else {
        panic!()
    };
    assert!(first <= 0x1000 && first + bytes >= 0x4000);
    rig.clear_log();
    for page in 0..20u64 {
        driver
            .unmap(domain, 0x10_0000 + page * 0x2000, 0x1000)
            .unwrap();
    }
    driver.commit(domain).unwrap();
    assert_eq!(
        rig.commands(0)[0],
        Cmd::Pages {
            domid: did,
            block: None,
            pde: true,
            pasid: 0,
            gn: false
        },
        "past max_page_selective: every page of the domain"
    );
    assert_eq!(rig.commands(0).len(), 2);
}

#[test]
fn not_present_caching_units_get_maps_invalidated() {
    let (rig, mut driver) = qemu72_with(DriverConfig {
        not_present_cached: true,
        ..DriverConfig::default()
    });
    let domain = driver.create_domain().unwrap();
    driver.attach(domain, &edu()).unwrap();
    let did = driver.domain_id(domain, U0).unwrap();
    rig.clear_log();
    driver.map(domain, 0x7000, 0x1_0000, 0x1000, RW).unwrap();
    driver.commit(domain).unwrap();
    assert_eq!(rig.commands(0)[0], pages(did, 0x7000, 0x1000, false));
}

#[test]
fn map_argument_errors_and_ranges() {
    let (_rig, mut driver, domain, _) = attached();
    assert_eq!(driver.page_sizes(domain), Ok(1 << 12 | 1 << 21 | 1 << 30));
    assert_eq!(
        driver.iova_ranges(domain).unwrap(),
        [
            IovaRange {
                start: 0,
                last: 0xfedf_ffff
            },
            IovaRange {
                start: 0xfef0_0000,
                last: 0xfc_ffff_ffff
            },
            IovaRange {
                start: 0x100_0000_0000,
                last: (1 << 48) - 1
            },
        ]
    );
    let cases = [
        (0x1001, 0x1000, 0x1000, RW, IommuError::Misaligned),
        (0x1000, 0x1000, 0, RW, IommuError::Misaligned),
        (u64::MAX - 0xfff, 0, 0x2000, RW, IommuError::Wraps),
        (0xfee0_0000, 0x1000, 0x1000, RW, IommuError::OutOfRange),
        (0xfedf_f000, 0x1000, 0x2000, RW, IommuError::OutOfRange),
        (0xfd_0000_0000, 0x1000, 0x1000, RW, IommuError::OutOfRange),
        (1 << 48, 0x1000, 0x1000, RW, IommuError::OutOfRange),
        (
            0x1000,
            0x1000,
            0x1000,
            Access::empty(),
            IommuError::NoAccess,
        ),
    ];
    for (iova, paddr, size, access, error) in cases {
        assert_eq!(driver.map(domain, iova, paddr, size, access), Err(error));
    }
    driver.map(domain, 0x1000, 0x1000, 0x1000, RW).unwrap();
    assert_eq!(
        driver.map(domain, 0, 0x8000, 0x4000, RW),
        Err(IommuError::Overlap { iova: 0x1000 })
    );
    assert_eq!(
        driver.map(sluice_iommu::DomainHandle(77), 0, 0, 0x1000, RW),
        Err(IommuError::UnknownDomain)
    );
    // Unmapping nothing is fine; the whole space at once too.
    assert_eq!(driver.unmap(domain, 0x10_0000, 0x1000), Ok(0));
    assert_eq!(driver.unmap(domain, 0, !0xfff), Ok(0x1000));
}

#[test]
fn ivmd_devices_get_an_identity_map_while_attached() {
    let (rig, mut driver) = two_units();
    assert_eq!(driver.identity_regions().len(), 1);
    let domain = driver.create_domain().unwrap();
    let ranges = driver.iova_ranges(domain).unwrap();
    assert!(ranges.iter().any(|r| r.last == IVMD_BASE - 1));
    assert!(ranges.iter().any(|r| r.start == IVMD_BASE + IVMD_SIZE));
    assert_eq!(
        driver.map(domain, IVMD_BASE, 0x1000, 0x1000, RW),
        Err(IommuError::OutOfRange)
    );
    let ivmd_device = device(0, 0, 4, 0, &[]);
    driver.attach(domain, &ivmd_device).unwrap();
    let t = driver
        .translate(domain, IVMD_BASE + 0x3008)
        .unwrap()
        .unwrap();
    assert_eq!((t.paddr, t.access), (IVMD_BASE + 0x3008, RW));
    assert_eq!(
        rig.fakes[0].dma(rid(0, 4, 0), IVMD_BASE + 0x10, true),
        Ok(IVMD_BASE + 0x10)
    );
    // The user's unmap-all leaves it.
    driver.unmap(domain, 0, 1 << 47).unwrap();
    driver.commit(domain).unwrap();
    assert!(driver.translate(domain, IVMD_BASE).unwrap().is_some());
    // A device without the IVMD adds nothing; the last user's detach removes it.
    let plain = device(0, 0, 3, 0, &[]);
    driver.attach(domain, &plain).unwrap();
    driver.detach(domain, &ivmd_device).unwrap();
    assert_eq!(driver.translate(domain, IVMD_BASE).unwrap(), None);
    assert!(rig.fakes[0].dma(rid(0, 3, 0), IVMD_BASE, false).is_err());
    driver.detach(domain, &plain).unwrap();
    driver.destroy_domain(domain).unwrap();
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

#[test]
fn a_domain_spans_units() {
    let (rig, mut driver) = two_units();
    let domain = driver.create_domain().unwrap();
    let a = device(0, 0, 3, 0, &[]);
    let b = device(1, 0, 5, 0, &[]);
    driver.attach(domain, &a).unwrap();
    driver.attach(domain, &b).unwrap();
    let (d0, d1) = (
        driver.domain_id(domain, U0).unwrap(),
        driver.domain_id(domain, U1).unwrap(),
    );
    driver.map(domain, 0x5000, 0x6000, 0x1000, RW).unwrap();
    driver.commit(domain).unwrap();
    assert_eq!(rig.fakes[0].dma(rid(0, 3, 0), 0x5000, true), Ok(0x6000));
    assert_eq!(rig.fakes[1].dma(rid(0, 5, 0), 0x5000, false), Ok(0x6000));
    rig.clear_log();
    driver.unmap(domain, 0x5000, 0x1000).unwrap();
    driver.commit(domain).unwrap();
    assert_eq!(rig.commands(0)[0], pages(d0, 0x5000, 0x1000, true));
    assert_eq!(rig.commands(1)[0], pages(d1, 0x5000, 0x1000, true));
    assert!(rig.fakes[0].dma(rid(0, 3, 0), 0x5000, true).is_err());
    assert!(rig.fakes[1].dma(rid(0, 5, 0), 0x5000, false).is_err());
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

// ---------------------------------------------------------------------------------------
// Domain ids.
// ---------------------------------------------------------------------------------------

#[test]
fn destroyed_domain_ids_return_only_after_invalidation() {
    let (rig, mut driver) = qemu72_with(small_budget());
    let first = driver.create_domain().unwrap();
    driver.attach(first, &edu()).unwrap();
    assert_eq!(driver.domain_id(first, U0), Some(1));
    driver.detach(first, &edu()).unwrap();
    rig.clear_log();
    driver.destroy_domain(first).unwrap();
    assert_eq!(
        rig.commands(0)[0],
        Cmd::Pages {
            domid: 1,
            block: None,
            pde: true,
            pasid: 0,
            gn: false
        }
    );
    assert_eq!(driver.unit_info(U0).unwrap().domain_ids_in_use, 0);
    // Round robin: the next domain gets 2, not the id just freed.
    let second = driver.create_domain().unwrap();
    driver.attach(second, &edu()).unwrap();
    assert_eq!(driver.domain_id(second, U0), Some(2));
    driver.detach(second, &edu()).unwrap();
    // A destroy the unit never confirms keeps the id (and leaks the tables).
    rig.unit(0).ignore_commands = true;
    assert_eq!(
        driver.destroy_domain(second),
        Err(IommuError::InvalidationTimeout { unit: U0 })
    );
    assert_eq!(driver.unit_info(U0).unwrap().domain_ids_in_use, 1);
}

#[test]
fn domain_ids_skip_bit_8_for_qemu() {
    let (rig, mut driver) = qemu72();
    let mut ids = Vec::new();
    let mut last = None;
    for _ in 0..258 {
        let domain = driver.create_domain().unwrap();
        driver.attach(domain, &edu()).unwrap();
        ids.push(driver.domain_id(domain, U0).unwrap());
        last = Some(domain);
        driver.detach(domain, &edu()).unwrap();
    }
    assert!(ids.iter().all(|&id| id != 0 && id & 0x100 == 0));
    assert_eq!(ids[255], 0x200);
    let domain = last.unwrap();
    driver.attach(domain, &edu()).unwrap();
    driver.map(domain, 0x1000, 0x2000, 0x1000, RW).unwrap();
    driver.commit(domain).unwrap();
    assert_eq!(rig.fakes[0].dma(EDU, 0x1000, false), Ok(0x2000));
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());

    // Without the workaround, id 0x100 makes QEMU reject the entry.
    let (rig, mut driver) = qemu72_with(DriverConfig {
        skip_domain_id_bit8: false,
        ..DriverConfig::default()
    });
    for _ in 0..0xff {
        let domain = driver.create_domain().unwrap();
        driver.attach(domain, &edu()).unwrap();
        driver.detach(domain, &edu()).unwrap();
    }
    let domain = driver.create_domain().unwrap();
    driver.attach(domain, &edu()).unwrap();
    assert_eq!(driver.domain_id(domain, U0), Some(0x100));
    driver.map(domain, 0x1000, 0x2000, 0x1000, RW).unwrap();
    assert_eq!(
        rig.fakes[0].dma(EDU, 0x1000, false),
        Err(Blocked::IllegalDte)
    );
}

// ---------------------------------------------------------------------------------------
// Dead units.
// ---------------------------------------------------------------------------------------

#[test]
fn a_completion_that_never_arrives_fails_the_unit_for_good() {
    let (rig, mut driver) = qemu72_with(small_budget());
    let domain = driver.create_domain().unwrap();
    rig.unit(0).ignore_commands = true;
    assert_eq!(
        driver.attach(domain, &edu()),
        Err(IommuError::InvalidationTimeout { unit: U0 })
    );
    assert!(driver.unit_failed(U0));
    assert!(matches!(
        driver.unit_info(U0).unwrap().failure,
        Some(UnitFailure::CompletionTimeout { sequence: 2 })
    ));
    // Even once the unit comes back, nothing is trusted again.
    rig.unit(0).ignore_commands = false;
    driver.map(domain, 0x1000, 0x1000, 0x1000, RW).unwrap();
    driver.unmap(domain, 0x1000, 0x1000).unwrap();
    let (allocated, pages) = (
        rig.mem.borrow().allocated,
        driver.table_pages(domain).unwrap(),
    );
    assert_eq!(
        driver.commit(domain),
        Err(IommuError::InvalidationTimeout { unit: U0 })
    );
    assert_eq!(
        (
            rig.mem.borrow().allocated,
            driver.table_pages(domain).unwrap()
        ),
        (allocated, pages),
        "tables the unit may still walk are not freed"
    );
    assert_eq!(
        driver.commit(domain),
        Err(IommuError::InvalidationTimeout { unit: U0 }),
        "nothing pending: still an error"
    );
    let other = driver.create_domain().unwrap();
    assert_eq!(
        driver.attach(other, &device(0, 0, 0x1f, 2, &[])),
        Err(IommuError::InvalidationTimeout { unit: U0 })
    );
}

#[test]
fn a_lost_completion_store_fails_the_unit() {
    let (rig, mut driver) = qemu72_with(small_budget());
    let wait_word = rig
        .commands(0)
        .iter()
        .find_map(|c| match *c {
            Cmd::Wait { addr, .. } => Some(addr),
            _ => None,
        })
        .unwrap();
    rig.mem.borrow_mut().frozen.push(wait_word);
    let domain = driver.create_domain().unwrap();
    assert_eq!(
        driver.attach(domain, &edu()),
        Err(IommuError::InvalidationTimeout { unit: U0 })
    );
    assert!(driver.unit_failed(U0));
}

#[test]
fn a_stopped_command_buffer_fails_the_unit() {
    let (rig, mut driver) = qemu72_with(small_budget());
    {
        let mut unit = rig.unit(0);
        unit.ignore_commands = true;
        unit.withheld_status |= CMD_RUN;
        unit.status &= !CMD_RUN;
    }
    let domain = driver.create_domain().unwrap();
    assert!(driver.attach(domain, &edu()).is_err());
    assert_eq!(
        driver.unit_info(U0).unwrap().failure,
        Some(UnitFailure::CommandBufferStopped)
    );
}

#[test]
fn a_full_ring_waits_for_the_head_and_gives_up() {
    // 300 requester ids: 300 INVALIDATE_DEVTAB_ENTRY in one batch, more than the ring
    // holds. A live unit drains it as it goes...
    let aliases: Vec<u16> = (0x0400..0x0400 + 299).collect();
    let many = device(0, 0, 2, 0, &aliases);
    let (rig, mut driver) = qemu72_with(small_budget());
    let domain = driver.create_domain().unwrap();
    rig.clear_log();
    driver.attach(domain, &many).unwrap();
    let devtab = rig
        .commands(0)
        .iter()
        .filter(|c| matches!(c, Cmd::DevTab { .. }))
        .count();
    assert_eq!(devtab, 300);
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
    // ...a hung one leaves it full.
    let (rig, mut driver) = qemu72_with(small_budget());
    let domain = driver.create_domain().unwrap();
    rig.unit(0).ignore_commands = true;
    assert_eq!(
        driver.attach(domain, &many),
        Err(IommuError::InvalidationTimeout { unit: U0 })
    );
    assert_eq!(
        driver.unit_info(U0).unwrap().failure,
        Some(UnitFailure::CommandBufferFull)
    );
}

// ---------------------------------------------------------------------------------------
// Events.
// ---------------------------------------------------------------------------------------

/// An event in the specification's layout.
fn raw_event(code: u64, devid: u16, domid: u16, flags: u64, address: u64) -> [u64; 2] {
    [
        u64::from(devid) | u64::from(domid) << 32 | flags << 48 | code << 60,
        address,
    ]
}

#[test]
fn blocked_dma_is_reported_as_a_fault() {
    let (rig, mut driver) = two_units();
    // A covered device nobody attached writes.
    let id = rid(1, 2, 3);
    assert!(rig.fakes[0].dma(id, 0x1234_5678, true).is_err());
    let faults = driver.take_faults();
    assert_eq!(faults.len(), 1, "{faults:?}");
    let fault = faults[0];
    assert_eq!(fault.unit, U0);
    assert_eq!(fault.requester_id, id);
    assert_eq!(fault.address, 0x1234_5678);
    assert!(fault.write);
    assert_eq!(fault.reason, 2);
    assert_eq!(
        fault.reason_text,
        "I/O page fault: write to a page without write permission"
    );
    assert!(driver.take_faults().is_empty(), "the head moved");
    let info = driver.unit_info(U0).unwrap();
    assert_eq!(info.events.total, 1);
    assert_eq!(info.events.faults(), 1);
    assert_eq!(rig.unit(0).evt_head, 16);
}

#[test]
fn events_are_decoded_cleared_and_kept() {
    let (rig, mut driver) = qemu72();
    let info = driver.unit_info(U0).unwrap();
    rig.fakes[0].inject_event(raw_event(2, 0x0110, 3, 0x010, 0xdead_b000));
    rig.fakes[0].inject_event(raw_event(6, 0, 0, 0, 0x4_2000));
    rig.fakes[0].inject_event(raw_event(1, EDU, 0, 0x080, 0x12_3400));
    let events = driver.take_events();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0].code(), 2);
    assert_eq!(events[0].device_id(), 0x0110);
    assert_eq!(events[0].domain_or_pasid(), 3);
    assert_eq!(events[0].address(), 0xdead_b000);
    assert!(!events[0].write());
    assert_eq!(
        events[0].reason_text(),
        "I/O page fault: read of a page without read permission"
    );
    assert_eq!(events[1].name(), "COMMAND_HARDWARE_ERROR");
    assert!(events[1].to_fault().is_none());
    let illegal = events[2].to_fault().unwrap();
    assert_eq!(illegal.reason, 1);
    assert_eq!(
        illegal.reason_text,
        "illegal device table entry: reserved bit set"
    );
    assert_eq!(
        events[0].to_string(),
        "ivhd0: IO_PAGE_FAULT device 01:02.0 domain/pasid 0x0003 address 0xdeadb000 \
         flags 0x010: I/O page fault: read of a page without read permission"
    );
    // Raw facts for the DMA proofs.
    let (hi, lo) = events[1].quads();
    assert_eq!([lo, hi], raw_event(6, 0, 0, 0, 0x4_2000));
    // Cleared from the log, head advanced, counted, remembered.
    let mem = rig.mem.borrow();
    assert!((0..6).all(|i| mem.read(info.event_log + i * 8) == 0));
    drop(mem);
    assert_eq!(rig.unit(0).evt_head, 48);
    let stats = driver.unit_info(U0).unwrap().events;
    assert_eq!((stats.total, stats.by_code[2], stats.by_code[6]), (3, 1, 1));
    assert_eq!(driver.recent_events(U0).unwrap(), &events[..]);
    assert_eq!(driver.last_event(U0), Some(events[2]));
}

#[test]
fn qemu_events_lose_the_bus_number() {
    let (rig, mut driver) = two_units();
    rig.unit(0).qemu_events = true;
    let domain = driver.create_domain().unwrap();
    let behind_port = device(0, 1, 0, 0, &[]);
    driver.attach(domain, &behind_port).unwrap();
    // An unmapped write by 01:00.0 is logged as QEMU logs it: devfn only, `I | 2`.
    assert!(rig.fakes[0].dma(rid(1, 0, 0), 0x7000, true).is_err());
    let faults = driver.take_faults();
    assert_eq!(faults.len(), 1);
    assert_eq!(faults[0].requester_id, 0x0000, "bus lost");
    assert!(faults[0].write, "QEMU's access bits decoded");
    assert_eq!(
        faults[0].reason_text,
        "I/O page fault on a write (QEMU: no present/permission detail)"
    );
    assert_eq!(
        driver.event_requester_candidates(U0, faults[0].requester_id),
        [0x0000, rid(1, 0, 0)]
    );
    // A full id is its own only candidate.
    assert_eq!(driver.event_requester_candidates(U0, 0x0118), [0x0118]);
}

#[test]
fn event_log_overflow_is_counted_and_logging_restarts() {
    let (rig, mut driver) = qemu72_with(DriverConfig {
        max_events_per_call: 100,
        ..DriverConfig::default()
    });
    for i in 0..300u64 {
        rig.fakes[0].inject_event(raw_event(2, EDU, 1, 0, i << 12));
    }
    assert_ne!(rig.unit(0).status & EVT_OVERFLOW, 0);
    assert_eq!(rig.unit(0).events_logged, 255, "one slot stays free");
    rig.clear_log();
    // Bounded per call.
    assert_eq!(driver.take_events().len(), 100);
    let stats = driver.unit_info(U0).unwrap().events;
    assert_eq!((stats.truncated_reads, stats.overflows), (1, 1));
    // Logging was restarted: overflow cleared, EventLogEn toggled, the log runs again.
    let controls: Vec<u64> = reg_writes(&rig, 0)
        .into_iter()
        .filter(|&(o, _)| o == reg::CONTROL)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(controls.len(), 2);
    assert_eq!(controls[0] & EVENT_LOG_EN, 0);
    assert_eq!(
        controls[1] & (EVENT_LOG_EN | IOMMU_EN | CMD_BUF_EN),
        EVENT_LOG_EN | IOMMU_EN | CMD_BUF_EN
    );
    assert_eq!(rig.unit(0).status & (EVT_OVERFLOW | EVT_RUN), EVT_RUN);
    assert_eq!(driver.take_events().len(), 100);
    assert_eq!(driver.take_events().len(), 55);
    rig.fakes[0].inject_event(raw_event(2, EDU, 1, 0, 0x1000));
    assert_eq!(
        driver.take_faults().len(),
        1,
        "logged again after the restart"
    );
    assert_eq!(driver.unit_info(U0).unwrap().events.overflows, 1);
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

// ---------------------------------------------------------------------------------------
// Other topologies.
// ---------------------------------------------------------------------------------------

#[test]
fn builds_from_the_qemu10_ivrs_and_reports_efr_mismatches() {
    let pci = qemu_default_machine(AMD_IOMMU_10);
    let (rig, fakes) = make_rig(QEMU10_DEFAULT, &pci, &[QEMU_EFR]);
    let driver = start(&rig, fakes, DriverConfig::default()).unwrap();
    assert_eq!(driver.unit_info(U0).unwrap().efr_image_mismatch, None);
    let (rig, fakes) = make_rig(QEMU10_DEFAULT, &pci, &[QEMU_EFR | 1 << 2]);
    let driver = start(&rig, fakes, DriverConfig::default()).unwrap();
    let info = driver.unit_info(U0).unwrap();
    assert_eq!(info.efr.raw, QEMU_EFR | 1 << 2, "the register wins");
    assert_eq!(info.efr_image_mismatch.map(|e| e.raw), Some(QEMU_EFR));
    // Register blocks must match the units.
    let (rig, _) = make_rig(QEMU10_DEFAULT, &pci, &[QEMU_EFR]);
    assert_eq!(
        start(&rig, Vec::new(), DriverConfig::default()).err(),
        Some(IommuError::Unsupported { unit: U0 })
    );
}

#[test]
fn walk_agrees_with_the_independent_walker() {
    let (rig, mut driver, domain, did) = attached();
    let maps = [
        (0x0, 0x10_0000, 0x1000, RW),
        (0x20_0000, 0x4000_0000, 0x20_0000, Access::READ),
        (0x4000_0000, 0x8000_0000, 0x4000_0000, Access::WRITE),
        (0x1_0000_3000, 0x7_0000_0000, 0x5000, RW),
    ];
    for (iova, paddr, size, access) in maps {
        driver.map(domain, iova, paddr, size, access).unwrap();
    }
    let root = driver.table_root(domain).unwrap();
    let mem = rig.mem.borrow();
    for iova in [
        0x0,
        0x800,
        0x1000,
        0x20_0000,
        0x3f_f008,
        0x40_0000,
        0x4000_0000,
        0x7fff_f000,
        0x1_0000_3000,
        0x1_0000_7ff8,
        0x1_0000_8000,
        0xffff_ffff_f000,
    ] {
        let ours = walk_v1(&mem, root, 4, iova);
        let theirs = driver.walk(U0, EDU, iova).unwrap();
        match (ours, theirs) {
            (None, Err(_)) => {}
            (Some((paddr, r, w)), Ok(t)) => {
                assert_eq!(t.paddr, paddr, "{iova:#x}");
                assert_eq!(t.access.contains(Access::READ), r);
                assert_eq!(t.access.contains(Access::WRITE), w);
                assert_eq!(t.domain_id, did);
            }
            other => panic!("{iova:#x}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Explain.
// ---------------------------------------------------------------------------------------

/// The raw entry the test's own walk of the `levels`-deep v1 table at `root` reads at
/// `level` for `iova` (links followed by NextLevel).
fn v1_entry_at(mem: &TestMem, root: u64, levels: u8, level: u8, iova: u64) -> u64 {
    let (mut table, mut current) = (root, levels);
    loop {
        let shift = 12 + 9 * (u32::from(current) - 1);
        let entry = mem.read(table + ((iova >> shift) & 0x1ff) * 8);
        if current == level {
            return entry;
        }
        table = entry & ADDR;
        current = ((entry >> 9) & 7) as u8;
    }
}

#[test]
fn explain_names_the_leaf_entry_and_the_host_address() {
    let (rig, mut driver, domain, did) = attached();
    driver
        .map(domain, 0x1000_3000, 0x5_6789_a000, 0x1000, Access::READ)
        .unwrap();
    driver
        .map(domain, 0x4000_0000, 0x8000_0000, 0x20_0000, RW)
        .unwrap();
    driver
        .map(
            domain,
            0x80_0000_0000,
            0x1_4000_0000,
            0x4000_0000,
            Access::WRITE,
        )
        .unwrap();
    driver.commit(domain).unwrap();
    let root = driver.table_root(domain).unwrap();
    let dte = rig.dte(0, EDU);

    // A 4 KiB page: DTE (raw, decoded), four levels, the result.
    let lines = driver.explain(domain, &edu(), 0x1000_3abc);
    for line in &lines {
        println!("{line}");
    }
    assert_eq!(lines.len(), 1 + 2 + 4 + 1, "{lines:#?}");
    assert!(lines[0].starts_with("ivhd0 (unit 0"), "{}", lines[0]);
    assert!(lines[0].contains(&format!("domain {}", domain.0)));
    assert!(lines[0].contains(&format!("DomainID {did:#x} on ivhd0")));
    assert!(lines[0].contains("4-level") && lines[0].contains("48-bit"));
    assert!(lines[1].starts_with("ivhd0 DeviceID 00:02.0 (own): DTE [0x0010]"));
    assert!(
        lines[1].contains(&format!(
            "0x{:016x}_{:016x}_{:016x}_{:016x}",
            dte[3], dte[2], dte[1], dte[0]
        )),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains(&format!(
        "V=1 TV=1 Mode=4 (4-level, 48-bit) Page Table Root Pointer={root:#x} IR=1 IW=1 \
         DomainID={did:#x}"
    )));
    {
        let mem = rig.mem.borrow();
        for (line, level) in lines[3..7].iter().zip([4u8, 3, 2, 1]) {
            let raw = v1_entry_at(&mem, root, 4, level, 0x1000_3abc);
            assert!(
                line.contains(&format!("level {level} ")) && line.contains(&format!("{raw:#018x}")),
                "{line} should show {raw:#x}"
            );
        }
    }
    assert!(lines[3].contains("PDE") && lines[3].contains("NextLevel=3"));
    assert!(lines[6].contains("level 1 PTE") && lines[6].contains("IR=1 IW=0"));
    assert!(lines[6].contains("leaf: 4 KiB page at 0x56789a000"));
    assert!(
        lines[7].contains("→ host-physical 0x56789aabc"),
        "{}",
        lines[7]
    );
    assert!(lines[7].contains("writes fault (IO_PAGE_FAULT event, PE=1"));

    // A 2 MiB page: the walk ends at level 2 with NextLevel 0.
    let lines = driver.explain(domain, &edu(), 0x4012_3456);
    for line in &lines {
        println!("{line}");
    }
    assert_eq!(lines.len(), 1 + 2 + 3 + 1, "{lines:#?}");
    let raw = v1_entry_at(&rig.mem.borrow(), root, 4, 2, 0x4012_3456);
    assert!(lines[5].contains(&format!("{raw:#018x}")), "{}", lines[5]);
    assert!(lines[5].contains("level 2 PTE") && lines[5].contains("NextLevel=0"));
    assert!(lines[5].contains("leaf: 2 MiB page at 0x80000000"));
    assert!(
        lines[6].contains("→ host-physical 0x80123456"),
        "{}",
        lines[6]
    );
    assert!(lines[6].contains("reads and writes allowed"));

    // A 1 GiB page, write-only.
    let lines = driver.explain(domain, &edu(), 0x80_0abc_d123);
    assert_eq!(lines.len(), 1 + 2 + 2 + 1, "{lines:#?}");
    assert!(lines[4].contains("level 3 PTE") && lines[4].contains("1 GiB page"));
    assert!(
        lines[5].contains("→ host-physical 0x14abcd123"),
        "{}",
        lines[5]
    );
    assert!(lines[5].contains("writes allowed; reads fault"));
}

#[test]
fn explain_unmapped_iova_says_not_present() {
    let (_rig, mut driver, domain, _did) = attached();
    driver.map(domain, 0x1000, 0x9000, 0x1000, RW).unwrap();
    driver.commit(domain).unwrap();
    let lines = driver.explain(domain, &edu(), 0x2000);
    assert!(lines[6].contains("level 1 entry") && lines[6].contains("not present"));
    assert_eq!(
        lines.last().unwrap(),
        "ivhd0 DeviceID 00:02.0: not present at level 1: DMA here faults (IO_PAGE_FAULT \
         event, PR=0)"
    );
    let lines = driver.explain(domain, &edu(), 0x7f00_0000_0000);
    assert!(
        lines.last().unwrap().contains("not present at level 4"),
        "{lines:#?}"
    );
    // Beyond the 48 bits of a 4-level table.
    let lines = driver.explain(domain, &edu(), 1 << 48);
    assert!(
        lines.last().unwrap().contains("bits above bit 47"),
        "{lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.contains("host-physical")));
}

#[test]
fn explain_unknown_domain_or_unit_is_one_line() {
    let (_rig, mut driver, domain, _did) = attached();
    let lines = driver.explain(sluice_iommu::DomainHandle(77), &edu(), 0);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("no domain 77"));
    let lines = driver.explain(domain, &device(9, 0, 2, 0, &[]), 0);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("unit 9"));
    let empty = driver.create_domain().unwrap();
    driver.destroy_domain(empty).unwrap();
    assert_eq!(driver.explain(empty, &edu(), 0).len(), 1);
}

#[test]
fn explain_blocked_devices_and_ivrs_aliases() {
    let (rig, mut driver) = two_units();
    let domain = driver.create_domain().unwrap();
    // Never attached: the blocked entry, walked into the empty blocking root.
    let lonely = device(0, 0, 3, 0, &[]);
    let lines = driver.explain(domain, &lonely, 0x1000);
    for line in &lines {
        println!("{line}");
    }
    assert_eq!(lines.len(), 1 + 2 + 1 + 2, "{lines:#?}");
    let root = blocking_root(&rig, &driver, U0);
    assert!(lines[0].contains("no DomainID on ivhd0 yet"));
    assert!(lines[2].contains(&format!(
        "Page Table Root Pointer={root:#x} (the unit's blocking root: an empty table) IR=0 IW=0 \
         DomainID=0x0"
    )));
    assert!(lines[3].contains("attached to no domain: blocked"));
    assert!(lines[5].contains("not present at level 4 (the blocking root maps nothing)"));

    // Attached on unit 1: the IVRS alias is explained too, after the device.
    let first = device(1, 2, 1, 0, &[]);
    driver.attach(domain, &first).unwrap();
    driver.map(domain, 0x3000, 0x9000, 0x1000, RW).unwrap();
    driver.commit(domain).unwrap();
    let lines = driver.explain(domain, &first, 0x3008);
    for line in &lines {
        println!("{line}");
    }
    assert_eq!(lines.len(), 1 + 2 * 7, "{lines:#?}");
    assert!(lines[1].contains("DeviceID 02:01.0 (own)"));
    assert!(lines[8].contains("DeviceID 03:00.0 (IVRS alias of 02:01.0)"));
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("→ host-physical 0x9008"))
            .count(),
        2
    );
    // Many aliases: bounded.
    let mut many = device(0, 1, 0, 0, &[]);
    many.requester_ids.extend(0x0400..0x0440);
    let lines = driver.explain(domain, &many, 0);
    assert!(lines.len() <= 1 + 8 * 20 + 1, "{}", lines.len());
    assert!(lines.last().unwrap().contains("more DeviceID"));
}

#[test]
fn explain_follows_a_pde_that_skips_levels() {
    let (rig, mut driver, domain, _did) = attached();
    driver.map(domain, 0x1000, 0x9000, 0x1000, RW).unwrap();
    driver.commit(domain).unwrap();
    let root = driver.table_root(domain).unwrap();
    // Level 4 entry 0 → level 2 table directly (NextLevel 2), as hardware allows.
    {
        let mut mem = rig.mem.borrow_mut();
        let level3 = mem.read(root) & ADDR;
        let level2 = mem.read(level3) & ADDR;
        mem.write(root, 1 | 2 << 9 | level2 | IR | IW);
    }
    let lines = driver.explain(domain, &edu(), 0x1234);
    assert!(lines[3].contains("NextLevel=2") && lines[3].contains("skips level(s) 3..=3"));
    assert!(
        lines.last().unwrap().contains("→ host-physical 0x9234"),
        "{lines:#?}"
    );
    // IOVA bits of the skipped level set: the unit faults.
    let lines = driver.explain(domain, &edu(), 0x4000_1234);
    assert!(
        lines
            .last()
            .unwrap()
            .contains("IOVA bits 38:30 of the skipped levels"),
        "{lines:#?}"
    );
}

#[test]
fn explain_never_panics_and_stays_bounded() {
    let (rig, mut driver, domain, _did) = attached();
    driver.map(domain, 0x1000, 0x9000, 0x1000, RW).unwrap();
    driver
        .map(domain, 0x20_0000, 0x4000_0000, 0x20_0000, Access::WRITE)
        .unwrap();
    driver.commit(domain).unwrap();
    let strangers = DeviceDma {
        device: PciAddress::new(0, 0xff, 0x1f, 7),
        unit: U0,
        requester_ids: vec![0xffff, 0x0000, EDU, 0xffff, 0x0100],
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
        for device in [&edu(), &strangers, &nobody] {
            let lines = driver.explain(domain, device, iova);
            let rids = device.requester_ids.len().max(1);
            assert!(lines.len() <= 2 + 20 * rids, "{lines:#?}");
            assert!(lines.iter().all(|l| !l.is_empty() && !l.contains('\n')));
        }
    }
    // Entries this driver never writes: Mode 7, then V = 0.
    let at = driver.unit_info(U0).unwrap().device_table + u64::from(EDU) * 32;
    let q0 = rig.mem.borrow().read(at);
    rig.mem.borrow_mut().write(at, q0 | 7 << 9);
    let lines = driver.explain(domain, &edu(), 0x1000);
    assert!(lines[2].contains("Mode=7 (reserved)"), "{lines:#?}");
    assert!(lines.last().unwrap().contains("ILLEGAL_DEV_TABLE_ENTRY"));
    rig.mem.borrow_mut().write(at, 0);
    let lines = driver.explain(domain, &edu(), 0x1000);
    assert!(
        lines
            .last()
            .unwrap()
            .contains("V=0: the unit does not translate this DeviceID"),
        "{lines:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Interrupt remapping.
// ---------------------------------------------------------------------------------------

#[test]
fn interrupt_remapping_gives_attached_devices_a_blocking_table_and_maps_msis() {
    // two_units: unit 0's IVHD names the IOAPIC.
    let (rig, mut driver) = two_units();
    assert!(!driver.interrupt_remapping());
    let dev = device(0, 0, 3, 0, &[]);
    let id = rid(0, 3, 0);
    assert_eq!(
        driver.map_msi(&dev, 0x60, 1, 0).unwrap_err(),
        IommuError::Unsupported { unit: U0 }
    );
    assert!(driver.interrupt_remapping_offered());
    assert!(driver.enable_interrupt_remapping().unwrap());
    assert!(driver.interrupt_remapping());
    let domain = driver.create_domain().unwrap();
    rig.clear_log();
    driver.attach(domain, &dev).unwrap();
    let dte = rig.dte(0, id);
    assert_eq!(dte[2] & 1, 1, "IV: {dte:#x?}");
    assert_eq!((dte[2] >> 60) & 3, 2, "IntCtl remapped");
    assert_eq!((dte[2] >> 1) & 0xf, 8, "IntTabLen");
    let table = dte[2] & 0x000f_ffff_ffff_ffc0;
    assert_ne!(table, 0);
    assert!(qemu72_accepts(&dte));
    // Empty: every MSI blocked.
    assert!(!driver.interrupt_entry(U0, id, 0).unwrap().remap_enabled());
    let commands = rig.commands(0);
    assert!(commands.contains(&Cmd::Other {
        lo: 5 << 60 | u64::from(id),
        hi: 0
    }));
    // Other ids keep IV = 0.
    assert_eq!(rig.dte(0, rid(0, 4, 0))[2] & 1, 0);

    rig.clear_log();
    let msi = driver.map_msi(&dev, 0x60, 2, 3).unwrap();
    assert_eq!((msi.unit, msi.count, msi.address), (U0, 2, 0xfee0_0000));
    assert_eq!(msi.data, msi.first);
    assert_eq!(msi.first % 2, 0);
    for sub in 0..2 {
        let irte = driver.interrupt_entry(U0, id, msi.first + sub).unwrap();
        assert!(irte.remap_enabled());
        assert_eq!(irte.int_type(), 0);
        assert!(!irte.logical());
        assert_eq!(irte.destination(), 3);
        assert_eq!(irte.vector(), 0x60 + sub as u8);
    }
    let commands = rig.commands(0);
    assert_eq!(
        commands[0],
        Cmd::Other {
            lo: 5 << 60 | u64::from(id),
            hi: 0
        }
    );
    assert!(commands.last().unwrap().is_wait());
    // A second block does not overlap.
    let other = driver.map_msi(&dev, 0x70, 1, 0).unwrap();
    assert!(other.first >= msi.first + 2 || other.first < msi.first);
    assert_eq!(
        driver.map_msi(&dev, 0x60, 1, 256).unwrap_err(),
        IommuError::Unsupported { unit: U0 }
    );

    rig.clear_log();
    driver.unmap_msi(&dev, &msi).unwrap();
    assert!(
        !driver
            .interrupt_entry(U0, id, msi.first)
            .unwrap()
            .remap_enabled()
    );
    assert!(rig.commands(0).last().unwrap().is_wait());
    assert_eq!(
        driver.unmap_msi(&dev, &msi).unwrap_err(),
        IommuError::UnknownDevice
    );
    // Detached: blocked DMA, the (emptied) table kept.
    driver.unmap_msi(&dev, &other).unwrap();
    driver.detach(domain, &dev).unwrap();
    let dte = rig.dte(0, id);
    assert_eq!(dte[0] & IR, 0);
    assert_eq!(dte[2] & 0x000f_ffff_ffff_ffc0, table);
    assert_eq!(dte[2] & 1, 1);
    assert!(rig.violations().is_empty(), "{:?}", rig.violations());
}

#[test]
fn without_an_ioapic_in_the_ivrs_interrupt_remapping_is_not_offered() {
    let pci = qemu_default_machine(AMD_IOMMU_72);
    let (rig, fakes) = make_rig(QEMU72_INTREMAP_OFF, &pci, &[QEMU_EFR]);
    let mut driver = start(&rig, fakes, DriverConfig::default()).expect("driver init");
    assert!(!driver.interrupt_remapping_offered());
    assert!(!driver.enable_interrupt_remapping().unwrap());
    assert!(!driver.interrupt_remapping());
}

#[test]
fn ioapic_pins_stay_in_compatibility_format() {
    // two_units: unit 0's IVHD names the IOAPIC (00:14.0), so remapping is offered.
    let (rig, mut driver) = two_units();
    let ioapic = rid(0, 0x14, 0);
    for enable in [false, true] {
        if enable {
            assert!(driver.enable_interrupt_remapping().unwrap());
        }
        rig.clear_log();
        // GSI 23: I/O APIC 0 pin 23, host vector 0x41, APIC 0, level, active high.
        let route = driver.map_ioapic_pin(0, 23, 0x41, 0, true, false).unwrap();
        assert_eq!((route.unit, route.index), (None, None));
        assert_eq!(
            route.rte, 0x8041,
            "fixed, physical, APIC 0, level, unmasked"
        );
        let route = driver.map_ioapic_pin(0, 16, 0x42, 3, true, true).unwrap();
        assert_eq!(
            route.rte, 0x0300_0000_0000_a042,
            "APIC 3 in 63:56, active low"
        );
        assert_eq!(driver.unmap_ioapic_pin(&route), Ok(()));
        // Nothing is written for it, and the I/O APIC's DTE keeps IV = 0: its messages
        // pass unremapped.
        assert!(reg_writes(&rig, 0).is_empty());
        assert!(rig.commands(0).is_empty());
        assert_eq!(rig.dte(0, ioapic)[2] & 1, 0);
        assert_eq!(driver.interrupt_entry(U0, ioapic, 0), None);
        assert_eq!(
            driver.map_ioapic_pin(0, 23, 0x41, 256, true, false),
            Err(IommuError::Unsupported { unit: U0 })
        );
    }
    let forged = sluice_iommu::IoApicPinRoute {
        unit: Some(U0),
        index: Some(1),
        rte: 0,
    };
    assert_eq!(
        driver.unmap_ioapic_pin(&forged),
        Err(IommuError::UnknownDevice)
    );
}
