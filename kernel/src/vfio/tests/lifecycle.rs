//! Handles, reference counts, closing in every order, guests ending.

use alloc::vec;
use alloc::vec::Vec;

use sluice_abi::Errno;
use sluice_abi::vfio::{GROUP_FLAGS_CONTAINER_SET, GROUP_FLAGS_VIABLE, VfioCall, extension};
use sluice_iommu::IommuError;
use sluice_pci::reg;

use super::*;
use crate::vfio::{MAX_HANDLES, iommu_errno};

#[test]
fn version_and_extensions() {
    let mut rig = Rig::new();
    assert_eq!(rig.call(A, VfioCall::GetApiVersion), Ok(0));
    for (ext, expected) in [
        (extension::TYPE1_IOMMU, 0),
        (extension::TYPE1V2_IOMMU, 1),
        (extension::UNMAP_ALL, 1),
        (0, 0),
        (u64::MAX, 0),
    ] {
        assert_eq!(
            rig.call(A, VfioCall::CheckExtension { extension: ext }),
            Ok(expected)
        );
    }
    // An unregistered guest can ask too.
    assert_eq!(rig.call(GuestId(9), VfioCall::GetApiVersion), Ok(0));
}

#[test]
fn handles_are_positive_distinct_and_die_on_close() {
    let mut rig = Rig::new();
    let c1 = rig.create(A);
    let c2 = rig.create(A);
    let g = rig.open(A, 1).unwrap();
    for h in [c1, c2, g] {
        assert!(h > 0 && h <= i64::MAX as u64);
    }
    assert!(c1 != c2 && c2 != g && c1 != g);
    assert_eq!(rig.vfio.container_count(), 2);
    assert_eq!(rig.close(A, c1), Ok(0));
    assert_eq!(rig.close(A, c1), Err(Errno::EBADF));
    assert_eq!(rig.vfio.container_count(), 1);
    // The slot is reused, the old handle stays dead.
    let c3 = rig.create(A);
    assert_ne!(c3, c1);
    assert_eq!(rig.set_iommu(A, c1), Err(Errno::EBADF));
    assert_eq!(rig.set_iommu(A, c3), Err(Errno::EINVAL), "no group yet");
    for forged in [0, 1, u64::MAX, c3 + 1, c3 ^ (1 << 20), i64::MAX as u64] {
        assert_eq!(rig.close(A, forged), Err(Errno::EBADF), "{forged:#x}");
    }
    assert_eq!(rig.vfio.handle_count(A), 3);
}

#[test]
fn handles_never_cross_guests() {
    let mut rig = Rig::new();
    let (c, gs) = rig.active(A, &[1]);
    rig.map(A, c, 0x10_0000, 0x10_0000, 0x1000).unwrap();
    let d = rig.get_device(A, gs[0], "0000:00:02.0").unwrap();
    // B has no handles: all of A's are EBADF for B.
    for h in [c, gs[0], d] {
        assert_eq!(rig.close(B, h), Err(Errno::EBADF));
        assert_eq!(rig.status(B, h), Err(Errno::EBADF));
        assert_eq!(rig.set_iommu(B, h), Err(Errno::EBADF));
    }
    assert_eq!(
        rig.map(B, c, 0x10_0000, 0x20_0000, 0x1000),
        Err(Errno::EBADF)
    );
    assert_eq!(
        rig.unmap(B, c, 0, 0, sluice_abi::vfio::DMA_UNMAP_FLAG_ALL),
        Err(Errno::EBADF)
    );
    // B's first handle is in the same slot of B's table as A's first in A's, but has
    // another value: handle values are never issued twice, in any guest.
    let cb = rig.create(B);
    assert_eq!(cb & 0xffff, c & 0xffff);
    assert_ne!(cb, c);
    assert_eq!(rig.set_iommu(B, c), Err(Errno::EBADF));
    assert_eq!(rig.set_iommu(A, cb), Err(Errno::EBADF));
    assert_eq!(
        rig.set_iommu(B, cb),
        Err(Errno::EINVAL),
        "B's empty container"
    );
    assert_eq!(rig.vfio.mapping_count(), 1, "A's mapping untouched");
    let mappings = rig.vfio.mappings(A);
    assert_eq!(mappings.len(), 1);
    assert_eq!(
        (
            mappings[0].1.iova,
            mappings[0].1.size,
            mappings[0].1.vaddr,
            mappings[0].1.hpa
        ),
        (0x10_0000, 0x1000, 0x10_0000, 0x4010_0000)
    );
    assert!(rig.vfio.mappings(B).is_empty());
    assert_eq!(rig.close(B, cb), Ok(0));
    assert_eq!(rig.vfio.container_count(), 1, "A's container lives");
    assert_eq!(rig.attached().len(), 1);
}

#[test]
fn the_handle_table_is_bounded() {
    let mut rig = Rig::new();
    let handles: Vec<u64> = (0..MAX_HANDLES).map(|_| rig.create(A)).collect();
    assert_eq!(rig.call(A, VfioCall::ContainerCreate), Err(Errno::ENOSPC));
    assert_eq!(rig.open(A, 1), Err(Errno::ENOSPC));
    assert_eq!(rig.vfio.group_owner(1), None, "ENOSPC changed nothing");
    assert_eq!(rig.vfio.container_count(), MAX_HANDLES);
    // Free two slots, build an active container, fill the table, then GET_DEVICE.
    rig.close(A, handles[0]).unwrap();
    rig.close(A, handles[1]).unwrap();
    let g = rig.open(A, 1).unwrap();
    rig.set(A, g, handles[2]).unwrap();
    rig.set_iommu(A, handles[2]).unwrap();
    rig.create(A);
    assert_eq!(rig.get_device(A, g, "0000:00:02.0"), Err(Errno::ENOSPC));
    assert_eq!(rig.vfio.open_device_count(), 0);
    assert_eq!(rig.command(DEV_EDU), INITIAL_COMMAND, "not enabled");
    // B is not affected by A's full table.
    assert!(rig.call(B, VfioCall::ContainerCreate).is_ok());
}

/// Build: container with group 1 (model set), one mapping, device open, region mapped
/// (while the group was bound to the VM; unbound again: the mapping stays).
fn full_setup(rig: &mut Rig) -> (u64, u64, u64) {
    let (c, gs) = rig.active(A, &[1]);
    rig.map(A, c, 0x10_0000, 0x100_0000, 0x2000).unwrap();
    let d = rig.get_device(A, gs[0], "0000:00:02.0").unwrap();
    rig.bind(A, gs[0]).unwrap();
    map_region(rig, d, 0, 0, 0x1000, 0x1_0000_0000).unwrap();
    rig.unbind(A, gs[0]).unwrap();
    (c, gs[0], d)
}

pub fn map_region(
    rig: &mut Rig,
    device: u64,
    index: u32,
    offset: u64,
    size: u64,
    gpa: u64,
) -> Result<u64, Errno> {
    map_region_as(rig, A, device, index, offset, size, gpa)
}

pub fn map_region_as(
    rig: &mut Rig,
    guest: GuestId,
    device: u64,
    index: u32,
    offset: u64,
    size: u64,
    gpa: u64,
) -> Result<u64, Errno> {
    let map = sluice_abi::vfio::RegionMap {
        argsz: sluice_abi::vfio::RegionMap::SIZE as u32,
        flags: 0,
        index,
        _pad: 0,
        offset,
        size,
        gpa,
    };
    rig.ram(guest).put(ARGS, &map.to_bytes());
    rig.call(guest, VfioCall::DeviceMapRegion { device, map: ARGS })
}

#[test]
fn closing_in_every_order_releases_everything() {
    let orders: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for order in orders {
        let mut rig = Rig::new();
        let (c, g, d) = full_setup(&mut rig);
        assert_eq!(
            rig.command(DEV_EDU),
            INITIAL_COMMAND | reg::COMMAND_MEMORY_SPACE | reg::COMMAND_BUS_MASTER
        );
        let handles = [c, g, d];
        for (step, &i) in order.iter().enumerate() {
            assert_eq!(rig.close(A, handles[i]), Ok(0), "{order:?}");
            let device_closed = order[..=step].contains(&2);
            if device_closed {
                assert_eq!(rig.command(DEV_EDU) & reg::COMMAND_BUS_MASTER, 0);
                assert!(rig.a.mmio.is_empty(), "region unmapped on close");
            }
            let group_released = device_closed && order[..=step].contains(&1);
            assert_eq!(
                rig.vfio.group_owner(1).is_none(),
                group_released,
                "{order:?}"
            );
            assert_eq!(rig.attached().is_empty(), group_released, "{order:?}");
            if !group_released {
                // The container and its mappings live while the group is in it.
                assert_eq!(rig.vfio.mapping_count(), 1, "{order:?} step {step}");
                assert_eq!(rig.attached()[0].1, vec![(0x100_0000, 0x2000, 0x4010_0000)]);
            }
        }
        assert!(rig.iommu_is_clean(), "{order:?}");
        assert_eq!(rig.vfio.container_count(), 0);
        assert_eq!(rig.vfio.open_group_count(), 0);
        assert_eq!(rig.vfio.open_device_count(), 0);
        assert_eq!(rig.vfio.handle_count(A), 0);
        assert_eq!(rig.a.mmio_unmaps, 1);
        // The status register's error bit survived every command write.
        assert_eq!(rig.status_register(DEV_EDU), INITIAL_STATUS);
        assert_eq!(
            rig.command(DEV_EDU),
            INITIAL_COMMAND | reg::COMMAND_MEMORY_SPACE
        );
        // And the group can be opened again, by B's neighbour A or anyone granted.
        assert!(rig.open(A, 1).is_ok());
    }
}

/// One step of a setup sequence.
type Step<'a> = &'a dyn Fn(&mut Rig) -> Result<u64, Errno>;

#[test]
fn setup_in_every_order() {
    // Open group / create container / set container / set iommu, closing the group
    // handle at every point: the group always ends released and the IOMMU clean.
    for close_after in 0..4 {
        let mut rig = Rig::new();
        let g = rig.open(A, 1).unwrap();
        let c = rig.create(A);
        let steps: [Step; 2] = [&|r| r.set(A, g, c), &|r| r.set_iommu(A, c)];
        for (i, step) in steps.iter().enumerate() {
            if close_after == i {
                rig.close(A, g).unwrap();
                assert_eq!(
                    step(&mut rig),
                    Err(if i == 0 { Errno::EBADF } else { Errno::EINVAL })
                );
            } else if close_after < i {
                assert!(step(&mut rig).is_err());
            } else {
                step(&mut rig).unwrap();
            }
        }
        if close_after >= 2 {
            assert_eq!(rig.attached().len(), 1);
            rig.close(A, g).unwrap();
        }
        assert!(rig.iommu_is_clean(), "close_after {close_after}");
        assert_eq!(rig.vfio.open_group_count(), 0);
        assert_eq!(
            rig.vfio.container_count(),
            1,
            "the container handle is open"
        );
        // The container went back to empty: it can take a group and a model again.
        let g = rig.open(A, 2).unwrap();
        rig.set(A, g, c).unwrap();
        rig.set_iommu(A, c).unwrap();
        assert_eq!(rig.attached().len(), 2, "port and NIC");
    }
}

#[test]
fn the_group_handle_closed_with_a_device_open_keeps_the_group() {
    let mut rig = Rig::new();
    let (c, g, d) = full_setup(&mut rig);
    rig.close(A, g).unwrap();
    assert_eq!(rig.vfio.group_owner(1), Some(A));
    assert_eq!(
        rig.open(A, 1),
        Err(Errno::EBUSY),
        "still open through the device"
    );
    assert_eq!(rig.attached().len(), 1);
    // The device still works.
    let mut info = [0u8; 24];
    info[0..4].copy_from_slice(&24u32.to_le_bytes());
    rig.a.put(ARGS, &info);
    assert_eq!(
        rig.call(
            A,
            VfioCall::DeviceGetInfo {
                device: d,
                info: ARGS
            }
        ),
        Ok(0)
    );
    // And mapping more still works: the container is active.
    rig.map(A, c, 0x20_0000, 0x200_0000, 0x1000).unwrap();
    rig.close(A, d).unwrap();
    assert_eq!(rig.vfio.group_owner(1), None);
    assert!(rig.attached().is_empty());
    assert_eq!(
        rig.vfio.mapping_count(),
        0,
        "last group out: model released"
    );
    assert_eq!(rig.vfio.container_count(), 1);
    assert_eq!(
        rig.map(A, c, 0x20_0000, 0x200_0000, 0x1000),
        Err(Errno::EINVAL)
    );
}

#[test]
fn the_container_handle_closed_with_groups_in_it_keeps_the_mappings() {
    let mut rig = Rig::new();
    let (c, gs) = rig.active(A, &[1, 3]);
    rig.map(A, c, 0x10_0000, 0x100_0000, 0x4000).unwrap();
    rig.close(A, c).unwrap();
    assert_eq!(rig.vfio.container_count(), 1);
    assert_eq!(rig.vfio.mapping_count(), 1);
    assert_eq!(rig.attached().len(), 2);
    assert_eq!(
        rig.status(A, gs[0]),
        Ok(GROUP_FLAGS_VIABLE | GROUP_FLAGS_CONTAINER_SET)
    );
    // Devices can still be opened: the group's container is active.
    let d = rig.get_device(A, gs[1], "0000:00:03.0").unwrap();
    rig.close(A, gs[0]).unwrap();
    assert_eq!(rig.attached().len(), 1, "group 1 detached, group 3 stays");
    assert_eq!(rig.vfio.domain_count(), 1, "unit 0's domain destroyed");
    assert_eq!(rig.vfio.mapping_count(), 1);
    rig.close(A, gs[1]).unwrap();
    assert_eq!(
        rig.vfio.container_count(),
        1,
        "device holds group 3, which holds it"
    );
    rig.close(A, d).unwrap();
    assert_eq!(rig.vfio.container_count(), 0);
    assert!(rig.iommu_is_clean());
}

#[test]
fn refcounts_are_explicit() {
    let mut rig = Rig::new();
    let (c, gs) = rig.active(A, &[2]);
    let refs = |rig: &Rig| {
        let group = rig.vfio.groups.iter().find(|g| g.desc.id == 2).unwrap();
        let container = rig.vfio.containers.values().next().map(|c| c.refs);
        (group.owner.as_ref().map(|o| o.refs), container)
    };
    assert_eq!(refs(&rig), (Some(1), Some(2)));
    let d = rig.get_device(A, gs[0], "0000:01:00.0").unwrap();
    assert_eq!(refs(&rig), (Some(2), Some(2)));
    rig.close(A, c).unwrap();
    assert_eq!(refs(&rig), (Some(2), Some(1)));
    rig.close(A, gs[0]).unwrap();
    assert_eq!(refs(&rig), (Some(1), Some(1)));
    rig.close(A, d).unwrap();
    assert_eq!(refs(&rig), (None, None));
}

#[test]
fn release_guest_closes_everything_and_forgets_grants() {
    let mut rig = Rig::new();
    let (c, g, _d) = full_setup(&mut rig);
    let g3 = rig.open(A, 3).unwrap();
    rig.set(A, g3, c).unwrap();
    let _d3 = rig.get_device(A, g3, "0000:00:03.0").unwrap();
    // A second, empty container and a group left outside containers.
    rig.create(A);
    rig.open(A, 6).unwrap();
    // B's state, which must survive.
    let (cb, gb) = rig.active(B, &[5]);
    rig.map(B, cb, 0, 0x100_0000, 0x1000).unwrap();
    let b_before: Vec<_> = rig
        .attached()
        .into_iter()
        .filter(|(dev, _)| *dev == DEV_B_ONLY)
        .collect();
    let _ = g;

    rig.release(A);
    assert_eq!(rig.vfio.handle_count(A), 0);
    for id in [1, 3, 6] {
        assert_eq!(rig.vfio.group_owner(id), None);
    }
    for dev in [DEV_EDU, DEV_UNIT1] {
        assert_eq!(rig.command(dev) & reg::COMMAND_BUS_MASTER, 0);
    }
    assert_eq!(rig.attached(), b_before, "only B's device is attached");
    assert_eq!(rig.vfio.container_count(), 1, "B's");
    assert_eq!(rig.vfio.domain_count(), 1, "B's");
    assert_eq!(rig.iommu.borrow().domains.len(), 1, "no domain of A alive");
    assert_eq!(
        rig.a.mmio_unmaps, 0,
        "A's memory is gone: mappings forgotten"
    );
    // Grants are gone: A (say, restarted) must be registered again.
    assert_eq!(rig.open(A, 1), Err(Errno::EPERM));
    rig.vfio.add_guest(A, &[1]);
    assert!(rig.open(A, 1).is_ok());
    // B is unaffected.
    assert_eq!(
        rig.status(B, gb[0]),
        Ok(GROUP_FLAGS_VIABLE | GROUP_FLAGS_CONTAINER_SET)
    );
    rig.release(B);
    rig.release(A);
    assert!(rig.iommu_is_clean());
    assert_eq!(rig.vfio.container_count(), 0);
    // Releasing an unknown guest is harmless.
    rig.release(GuestId(77));
}

#[test]
fn a_failed_detach_leaks_the_domain_rather_than_freeing_it() {
    let mut rig = Rig::new();
    let (c, gs) = rig.active(A, &[1]);
    rig.map(A, c, 0x10_0000, 0x100_0000, 0x1000).unwrap();
    rig.iommu.borrow_mut().fail_detach = true;
    rig.close(A, gs[0]).unwrap();
    // The bookkeeping let go, the domain was not destroyed under the device.
    assert_eq!(rig.vfio.domain_count(), 0);
    assert_eq!(rig.iommu.borrow().domains.len(), 1);
    assert_eq!(rig.iommu.borrow().destroyed, 0);
}

#[test]
fn iommu_errors_map_to_abi_errnos() {
    use sluice_iommu::UnitId;
    let cases = [
        (IommuError::NoMemory, Errno::ENOMEM),
        (IommuError::NoDomainId, Errno::ENOSPC),
        (IommuError::Misaligned, Errno::EINVAL),
        (IommuError::Wraps, Errno::EINVAL),
        (IommuError::OutOfRange, Errno::EINVAL),
        (IommuError::Overlap { iova: 0 }, Errno::EINVAL),
        (IommuError::PartialUnmap { iova: 0 }, Errno::EINVAL),
        (IommuError::NoAccess, Errno::EINVAL),
        (IommuError::Busy, Errno::EBUSY),
        (IommuError::UnknownDomain, Errno::ENODEV),
        (IommuError::UnknownDevice, Errno::ENODEV),
        (IommuError::Unsupported { unit: UnitId(0) }, Errno::ENODEV),
        (
            IommuError::InvalidationTimeout { unit: UnitId(0) },
            Errno::EBUSY,
        ),
        (
            IommuError::HardwareTimeout { unit: UnitId(0) },
            Errno::EBUSY,
        ),
    ];
    for (error, errno) in cases {
        assert_eq!(iommu_errno(error), errno, "{error:?}");
    }
}
