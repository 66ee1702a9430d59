//! Group calls: open, status, set/unset container, list; several groups and units.

use alloc::vec;
use alloc::vec::Vec;

use sluice_abi::Errno;
use sluice_abi::vfio::{
    DEVICE_LIST_BRIDGE, DEVICE_LIST_HOST, GROUP_FLAGS_CONTAINER_SET, GROUP_FLAGS_VIABLE,
    GROUP_LIST_BUSY, GROUP_LIST_OPEN, GROUP_LIST_OWNABLE, GROUP_LIST_VIABLE, GroupList,
    GroupListEntry, GroupStatus, MAX_ARGSZ, VfioCall,
};
use sluice_iommu::IommuError;

use super::*;

const VIABLE_SET: u32 = GROUP_FLAGS_VIABLE | GROUP_FLAGS_CONTAINER_SET;

#[test]
fn group_open_errors() {
    let mut rig = Rig::new();
    assert_eq!(rig.open(A, 0), Err(Errno::ENOENT));
    assert_eq!(
        rig.open(A, 99),
        Err(Errno::ENOENT),
        "granted on the command line, but no such group"
    );
    assert_eq!(rig.open(A, 1 << 32 | 1), Err(Errno::ENOENT), "beyond u32");
    assert_eq!(rig.open(A, 5), Err(Errno::EPERM), "B's only");
    assert_eq!(
        rig.open(GuestId(9), 1),
        Err(Errno::EPERM),
        "unregistered guest"
    );
    let g = rig.open(A, 2).unwrap();
    assert_eq!(rig.open(A, 2), Err(Errno::EBUSY), "open by the caller");
    assert_eq!(rig.open(B, 2), Err(Errno::EBUSY), "open by another guest");
    assert_eq!(rig.vfio.group_owner(2), Some(A));
    rig.close(A, g).unwrap();
    assert!(rig.open(B, 2).is_ok(), "released: free for the next owner");
    assert_eq!(rig.open(A, 2), Err(Errno::EBUSY));
    // A non-viable group can be opened (to look at it), just not used.
    let g4 = rig.open(A, 4).unwrap();
    assert_eq!(rig.status(A, g4), Ok(0));
}

#[test]
fn group_status_and_its_argument_errors() {
    let mut rig = Rig::new();
    let g = rig.open(A, 1).unwrap();
    let c = rig.create(A);
    assert_eq!(rig.status(A, g), Ok(GROUP_FLAGS_VIABLE));
    rig.set(A, g, c).unwrap();
    assert_eq!(rig.status(A, g), Ok(VIABLE_SET));
    assert_eq!(rig.status(A, c), Err(Errno::ENOTTY), "a container handle");
    assert_eq!(
        rig.status(A, g + (1 << 16)),
        Err(Errno::EBADF),
        "another generation"
    );
    // A bridge that the host uses does not make its group unviable.
    let g6 = rig.open(A, 6).unwrap();
    assert_eq!(rig.status(A, g6), Ok(GROUP_FLAGS_VIABLE));

    let try_with = |rig: &mut Rig, argsz: u32, flags: u32, gpa: u64| {
        let s = GroupStatus { argsz, flags };
        rig.a.put(ARGS, &s.to_bytes());
        if gpa <= RAM_SIZE - 4 {
            rig.a.put(gpa, &argsz.to_le_bytes());
        }
        let before = rig.a.get(ARGS, 8).to_vec();
        let r = rig.call(
            A,
            VfioCall::GroupGetStatus {
                group: g,
                status: gpa,
            },
        );
        if r.is_err() {
            assert_eq!(rig.a.get(ARGS, 8), &before[..], "failing call wrote memory");
        }
        r
    };
    assert_eq!(try_with(&mut rig, 7, 0, ARGS), Err(Errno::EINVAL));
    assert_eq!(
        try_with(&mut rig, 8, 1, ARGS),
        Err(Errno::EINVAL),
        "flags in"
    );
    assert_eq!(
        try_with(&mut rig, MAX_ARGSZ + 1, 0, ARGS),
        Err(Errno::E2BIG)
    );
    assert_eq!(
        try_with(&mut rig, 8, 0, RAM_SIZE - 4),
        Err(Errno::EFAULT),
        "argsz read, struct not"
    );
    assert_eq!(try_with(&mut rig, 8, 0, RAM_SIZE), Err(Errno::EFAULT));
    assert_eq!(try_with(&mut rig, 8, 0, u64::MAX - 2), Err(Errno::EFAULT));
    // argsz may be larger than the structure (up to the RAM's end): only 8 bytes written.
    rig.a.put(ARGS + 8, &[0xaa; 8]);
    assert_eq!(try_with(&mut rig, 64, 0, ARGS), Ok(0));
    assert_eq!(
        rig.a.get(ARGS, 8),
        &GroupStatus {
            argsz: 64,
            flags: VIABLE_SET
        }
        .to_bytes()[..]
    );
    assert_eq!(rig.a.get(ARGS + 8, 8), &[0xaa; 8]);
    // argsz reaching past RAM's end is EFAULT even though 8 bytes would fit.
    let near_end = RAM_SIZE - 8;
    rig.a.put(
        near_end,
        &GroupStatus {
            argsz: 16,
            flags: 0,
        }
        .to_bytes(),
    );
    assert_eq!(
        rig.call(
            A,
            VfioCall::GroupGetStatus {
                group: g,
                status: near_end
            }
        ),
        Err(Errno::EFAULT)
    );
}

#[test]
fn set_container_errors() {
    let mut rig = Rig::new();
    let c = rig.create(A);
    let g1 = rig.open(A, 1).unwrap();
    let g4 = rig.open(A, 4).unwrap();
    let g6 = rig.open(A, 6).unwrap();
    assert_eq!(
        rig.set(A, c, c),
        Err(Errno::ENOTTY),
        "group argument is a container"
    );
    assert_eq!(
        rig.set(A, g1, g6),
        Err(Errno::EINVAL),
        "container argument is a group"
    );
    assert_eq!(rig.set(A, g1, 12345), Err(Errno::EBADF), "forged container");
    assert_eq!(rig.set(A, 12345, c), Err(Errno::EBADF), "forged group");
    assert_eq!(rig.set(A, g4, c), Err(Errno::EPERM), "not viable");
    assert_eq!(rig.set(A, g6, c), Ok(0), "host-owned bridge doesn't count");
    assert_eq!(
        rig.set(A, g6, c),
        Err(Errno::EINVAL),
        "already in a container"
    );
    let c2 = rig.create(A);
    assert_eq!(
        rig.set(A, g6, c2),
        Err(Errno::EINVAL),
        "already in another one"
    );
    // B cannot put its group in A's container: A's handle is nothing to B, not even
    // the one in the slot where B keeps its group.
    let gb = rig.open(B, 5).unwrap();
    assert_eq!(gb & 0xffff, c & 0xffff);
    assert_eq!(rig.set(B, gb, c), Err(Errno::EBADF));
    assert_eq!(rig.set(B, gb, c2), Err(Errno::EBADF));
    assert_eq!(rig.set(A, gb, c), Err(Errno::EBADF));
    assert_eq!(rig.unset(A, g1), Err(Errno::EINVAL), "not in a container");
    assert_eq!(rig.unset(A, c), Err(Errno::ENOTTY));
    assert_eq!(rig.vfio.container_count(), 2);
}

#[test]
fn set_iommu_errors() {
    let mut rig = Rig::new();
    let c = rig.create(A);
    let call = |c, ty| VfioCall::SetIommu {
        container: c,
        iommu_type: ty,
    };
    assert_eq!(rig.call(A, call(c, 3)), Err(Errno::EINVAL), "no group");
    let g = rig.open(A, 1).unwrap();
    assert_eq!(rig.call(A, call(g, 3)), Err(Errno::ENOTTY));
    rig.set(A, g, c).unwrap();
    assert_eq!(rig.call(A, call(c, 1)), Err(Errno::ENODEV), "type1 v1");
    assert_eq!(rig.call(A, call(c, 0)), Err(Errno::ENODEV));
    assert_eq!(rig.call(A, call(c, u64::MAX)), Err(Errno::ENODEV));
    assert!(rig.iommu_is_clean());
    rig.iommu.borrow_mut().create_budget = Some(0);
    assert_eq!(rig.call(A, call(c, 3)), Err(Errno::ENOSPC), "no domain id");
    rig.iommu.borrow_mut().create_error = IommuError::NoMemory;
    assert_eq!(rig.call(A, call(c, 3)), Err(Errno::ENOMEM));
    assert!(rig.iommu_is_clean());
    rig.iommu.borrow_mut().create_budget = None;
    assert_eq!(rig.call(A, call(c, 3)), Ok(0));
    assert_eq!(rig.call(A, call(c, 3)), Err(Errno::EINVAL), "already set");
    assert_eq!(rig.vfio.domain_count(), 1);
}

#[test]
fn set_iommu_failing_midway_is_undone() {
    let mut rig = Rig::new();
    let c = rig.create(A);
    for id in [1, 2, 3] {
        let g = rig.open(A, id).unwrap();
        rig.set(A, g, c).unwrap();
    }
    // The second domain (unit 1) cannot be created.
    rig.iommu.borrow_mut().create_budget = Some(1);
    assert_eq!(rig.set_iommu(A, c), Err(Errno::ENOSPC));
    assert!(rig.iommu_is_clean());
    // The third function's attach fails: the first two are detached again.
    rig.iommu.borrow_mut().create_budget = None;
    rig.iommu.borrow_mut().fail_attach = Some(DEV_NIC);
    assert_eq!(rig.set_iommu(A, c), Err(Errno::ENOMEM));
    assert!(rig.iommu_is_clean());
    rig.iommu.borrow_mut().fail_attach = None;
    assert_eq!(rig.set_iommu(A, c), Ok(0));
    let attached: Vec<PciAddress> = rig.attached().into_iter().map(|(d, _)| d).collect();
    assert_eq!(attached, vec![DEV_EDU, DEV_UNIT1, DEV_PORT, DEV_NIC]);
}

#[test]
fn several_groups_on_one_unit_share_a_domain() {
    let mut rig = Rig::new();
    let (c, gs) = rig.active(A, &[1, 2]);
    assert_eq!(rig.vfio.domain_count(), 1);
    rig.map(A, c, 0x10_0000, 0x100_0000, 0x3000).unwrap();
    let m = vec![(0x100_0000, 0x3000, 0x4010_0000)];
    assert_eq!(
        rig.attached(),
        vec![
            (DEV_EDU, m.clone()),
            (DEV_PORT, m.clone()),
            (DEV_NIC, m.clone())
        ],
        "bridges are attached too"
    );
    // A third group on the same unit joins the existing domain.
    let g6 = rig.open(A, 6).unwrap();
    rig.set(A, g6, c).unwrap();
    assert_eq!(rig.vfio.domain_count(), 1);
    assert_eq!(rig.iommu.borrow().created, 1);
    assert_eq!(rig.attached().len(), 5);
    // Leaving keeps the domain while another group needs it.
    rig.unset(A, gs[0]).unwrap();
    assert_eq!(rig.vfio.domain_count(), 1);
    assert_eq!(rig.vfio.mapping_count(), 1);
    assert_eq!(rig.attached().len(), 4);
    assert_eq!(rig.status(A, gs[0]), Ok(GROUP_FLAGS_VIABLE));
}

#[test]
fn a_group_on_a_new_unit_gets_the_mappings_replayed() {
    let mut rig = Rig::new();
    let (c, _) = rig.active(A, &[1]);
    rig.map(A, c, 0x10_0000, 0x100_0000, 0x2000).unwrap();
    rig.map_flags(
        A,
        c,
        0x20_0000,
        0x200_0000,
        0x1000,
        sluice_abi::vfio::DMA_MAP_FLAG_READ,
    )
    .unwrap();
    let g3 = rig.open(A, 3).unwrap();
    rig.set(A, g3, c).unwrap();
    assert_eq!(rig.vfio.domain_count(), 2);
    let expected = vec![
        (0x100_0000, 0x2000, 0x4010_0000),
        (0x200_0000, 0x1000, 0x4020_0000),
    ];
    assert_eq!(
        rig.attached(),
        vec![(DEV_EDU, expected.clone()), (DEV_UNIT1, expected)]
    );
    // The replay was committed once, before the attach.
    let s = rig.iommu.borrow();
    let unit1 = s.attached[&DEV_UNIT1];
    assert_eq!(s.domains[&unit1].commits, 1);
    assert_eq!(
        s.domains[&unit1].mappings[&0x200_0000].2,
        sluice_iommu::Access::READ
    );
    drop(s);
    // New mappings go to both; unmap from both, one commit each.
    let before = rig.iommu.borrow().commits();
    rig.map(A, c, 0x30_0000, 0x300_0000, 0x1000).unwrap();
    assert_eq!(rig.unmap(A, c, 0x100_0000, 0x300_0000, 0), Ok(0x4000));
    let after = rig.iommu.borrow().commits();
    for (domain, n) in after {
        assert_eq!(n, before[&domain] + 2, "one commit per call per domain");
    }
    assert_eq!(rig.attached(), vec![(DEV_EDU, vec![]), (DEV_UNIT1, vec![])]);
}

#[test]
fn joining_an_active_container_failing_is_undone() {
    let mut rig = Rig::new();
    let (c, _) = rig.active(A, &[1]);
    rig.map(A, c, 0x10_0000, 0x100_0000, 0x2000).unwrap();
    let g3 = rig.open(A, 3).unwrap();
    let clean = rig.attached();
    // No domain for unit 1.
    rig.iommu.borrow_mut().create_budget = Some(0);
    assert_eq!(rig.set(A, g3, c), Err(Errno::ENOSPC));
    rig.iommu.borrow_mut().create_budget = None;
    // The replay fails.
    rig.iommu.borrow_mut().map_budget = Some(0);
    assert_eq!(rig.set(A, g3, c), Err(Errno::ENOMEM));
    rig.iommu.borrow_mut().map_budget = None;
    // The attach fails.
    rig.iommu.borrow_mut().fail_attach = Some(DEV_UNIT1);
    assert_eq!(rig.set(A, g3, c), Err(Errno::ENOMEM));
    rig.iommu.borrow_mut().fail_attach = None;
    for _ in 0..3 {
        assert_eq!(rig.attached(), clean);
        assert_eq!(rig.iommu.borrow().domains.len(), 1, "no domain leaked");
        assert_eq!(rig.status(A, g3), Ok(GROUP_FLAGS_VIABLE));
    }
    assert_eq!(rig.set(A, g3, c), Ok(0));
    assert_eq!(rig.attached().len(), 2);
}

#[test]
fn unset_container() {
    let mut rig = Rig::new();
    let (c, gs) = rig.active(A, &[1, 3]);
    rig.map(A, c, 0x10_0000, 0x100_0000, 0x1000).unwrap();
    let d = rig.get_device(A, gs[1], "0000:00:03.0").unwrap();
    assert_eq!(rig.unset(A, gs[1]), Err(Errno::EBUSY), "a device is open");
    rig.close(A, d).unwrap();
    assert_eq!(rig.unset(A, gs[1]), Ok(0));
    assert_eq!(rig.unset(A, gs[1]), Err(Errno::EINVAL));
    assert_eq!(rig.attached().len(), 1);
    assert_eq!(rig.vfio.domain_count(), 1, "unit 1's domain destroyed");
    assert_eq!(rig.vfio.mapping_count(), 1);
    assert_eq!(rig.unset(A, gs[0]), Ok(0));
    assert!(rig.iommu_is_clean());
    assert_eq!(rig.vfio.mapping_count(), 0, "model released");
    assert_eq!(
        rig.map(A, c, 0x10_0000, 0x100_0000, 0x1000),
        Err(Errno::EINVAL)
    );
    assert_eq!(rig.get_device(A, gs[0], "0000:00:02.0"), Err(Errno::EINVAL));
    // Back in, model again: a fresh, empty address space.
    rig.set(A, gs[0], c).unwrap();
    assert_eq!(
        rig.get_device(A, gs[0], "0000:00:02.0"),
        Err(Errno::EINVAL),
        "no model yet"
    );
    rig.set_iommu(A, c).unwrap();
    assert_eq!(rig.attached(), vec![(DEV_EDU, vec![])]);
}

fn list(
    rig: &mut Rig,
    guest: GuestId,
    argsz: u32,
) -> Result<(GroupList, Vec<GroupListEntry>), Errno> {
    let header = GroupList {
        argsz,
        flags: 0,
        count: 0,
        entry_size: 0,
    };
    rig.ram(guest).put(ARGS, &header.to_bytes());
    rig.ram(guest).put(ARGS + 16, &[0xee; 24 * 20]);
    rig.call(guest, VfioCall::GroupList { list: ARGS })?;
    let mut h = [0u8; 16];
    h.copy_from_slice(rig.ram(guest).get(ARGS, 16));
    let header = GroupList::from_bytes(&h);
    let fit = ((argsz as usize - 16) / 24).min(header.count as usize);
    let entries = (0..fit)
        .map(|i| {
            let mut e = [0u8; 24];
            e.copy_from_slice(rig.ram(guest).get(ARGS + 16 + 24 * i as u64, 24));
            GroupListEntry::from_bytes(&e)
        })
        .collect();
    // Nothing written past the entries that fit.
    let past = ARGS + 16 + 24 * fit as u64;
    assert!(rig.ram(guest).get(past, 24).iter().all(|&b| b == 0xee));
    Ok((header, entries))
}

#[test]
fn group_list() {
    let mut rig = Rig::new();
    let g2 = rig.open(A, 2).unwrap();
    rig.open(B, 5).unwrap();
    let (h, entries) = list(&mut rig, A, 16 + 24 * 20).unwrap();
    assert_eq!(
        (h.argsz, h.flags, h.count, h.entry_size),
        (16 + 24 * 20, 0, 9, 24)
    );
    let summary: Vec<(u32, u8, u8, u32, u32)> = entries
        .iter()
        .map(|e| (e.group_id, e.bus, e.devfn, e.group_flags, e.device_flags))
        .collect();
    let own = GROUP_LIST_OWNABLE | GROUP_LIST_VIABLE;
    let expected = vec![
        (1, 0, 0x10, own, 0),
        (2, 0, 0xe0, own | GROUP_LIST_OPEN, DEVICE_LIST_BRIDGE),
        (2, 1, 0x00, own | GROUP_LIST_OPEN, 0),
        (3, 0, 0x18, own, 0),
        (4, 0, 0xf8, GROUP_LIST_OWNABLE, DEVICE_LIST_HOST),
        (4, 0, 0xfa, GROUP_LIST_OWNABLE, 0),
        (5, 0, 0x20, GROUP_LIST_BUSY | GROUP_LIST_VIABLE, 0),
        (6, 0, 0xf0, own, DEVICE_LIST_BRIDGE | DEVICE_LIST_HOST),
        (6, 2, 0x08, own, 0),
    ];
    assert_eq!(summary, expected, "{summary:#x?}");
    let _ = g2;
    assert_eq!(entries[0].vendor_id, 0x1234);
    assert_eq!(entries[0].device_id, 0x1002);
    assert_eq!(entries[0].class_code, 0x00ff00);
    // From B's side.
    let (_, entries) = list(&mut rig, B, 16 + 24 * 20).unwrap();
    let flags: Vec<(u32, u32)> = entries
        .iter()
        .map(|e| (e.group_id, e.group_flags))
        .collect();
    assert_eq!(
        flags[1],
        (2, GROUP_LIST_OWNABLE | GROUP_LIST_BUSY | GROUP_LIST_VIABLE)
    );
    assert_eq!(
        flags[6],
        (5, GROUP_LIST_OWNABLE | GROUP_LIST_OPEN | GROUP_LIST_VIABLE)
    );
    assert_eq!(flags[0], (1, GROUP_LIST_VIABLE));
}

#[test]
fn group_list_short_buffers() {
    let mut rig = Rig::new();
    // Room for the header only: count and the size needed come back.
    let (h, entries) = list(&mut rig, A, 16).unwrap();
    assert_eq!((h.argsz, h.count, h.entry_size), (16 + 24 * 9, 9, 24));
    assert!(entries.is_empty());
    // Room for two and a half entries: two written.
    let (h, entries) = list(&mut rig, A, 16 + 24 * 2 + 12).unwrap();
    assert_eq!((h.argsz, h.count), (16 + 24 * 9, 9));
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1].group_id, 2);
    // Exactly enough: argsz stays.
    let (h, entries) = list(&mut rig, A, 16 + 24 * 9).unwrap();
    assert_eq!((h.argsz, entries.len()), (16 + 24 * 9, 9));
    assert_eq!(list(&mut rig, A, 15).unwrap_err(), Errno::EINVAL);
    let header = GroupList {
        argsz: 16,
        flags: 1,
        count: 0,
        entry_size: 0,
    };
    rig.a.put(ARGS, &header.to_bytes());
    assert_eq!(
        rig.call(A, VfioCall::GroupList { list: ARGS }),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        rig.a.get(ARGS, 16),
        &header.to_bytes()[..],
        "nothing written"
    );
    assert_eq!(
        rig.call(A, VfioCall::GroupList { list: RAM_SIZE }),
        Err(Errno::EFAULT)
    );
    // Any guest may list, registered or not (it owns nothing).
    let mut ram = super::fakes::FakeRam::new(1 << 16, 0);
    ram.put(
        ARGS,
        &GroupList {
            argsz: 16,
            ..Default::default()
        }
        .to_bytes(),
    );
    assert_eq!(
        rig.vfio
            .call(GuestId(9), &mut ram, VfioCall::GroupList { list: ARGS }),
        Ok(0)
    );
}
