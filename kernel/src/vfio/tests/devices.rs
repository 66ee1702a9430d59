//! Device calls: GROUP_GET_DEVICE, DEVICE_GET_INFO, DEVICE_GET_REGION_INFO,
//! DEVICE_MAP_REGION, and what opening and closing do to the function.

use alloc::vec::Vec;

use sluice_abi::Errno;
use sluice_abi::vfio::{
    DEVICE_FLAGS_PCI, DeviceInfo, REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_READ,
    REGION_INFO_FLAG_WRITE, RegionInfo, VfioCall,
};
use sluice_pci::reg;

use super::lifecycle::{map_region, map_region_as};
use super::*;

const RWM: u32 = REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE | REGION_INFO_FLAG_MMAP;
const RW: u32 = REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE;
const ENABLED: u16 = INITIAL_COMMAND | reg::COMMAND_MEMORY_SPACE | reg::COMMAND_BUS_MASTER;

#[test]
fn get_device_enables_the_function_and_close_stops_its_dma() {
    let mut rig = Rig::new();
    let (_, gs) = rig.active(A, &[2]);
    assert_eq!(rig.command(DEV_NIC), INITIAL_COMMAND);
    let d = rig.get_device(A, gs[0], "0000:01:00.0").unwrap();
    assert_eq!(rig.command(DEV_NIC), ENABLED);
    assert_eq!(
        rig.status_register(DEV_NIC),
        INITIAL_STATUS,
        "RW1C bits kept"
    );
    assert_eq!(
        rig.command(DEV_PORT),
        INITIAL_COMMAND,
        "the port is not touched"
    );
    assert_eq!(rig.vfio.open_device_count(), 1);
    rig.close(A, d).unwrap();
    assert_eq!(rig.command(DEV_NIC), ENABLED & !reg::COMMAND_BUS_MASTER);
    assert_eq!(rig.status_register(DEV_NIC), INITIAL_STATUS);
    assert_eq!(rig.vfio.open_device_count(), 0);
    // It can be opened again, by its short name too.
    let d = rig.get_device(A, gs[0], "01:00.0").unwrap();
    assert_eq!(rig.command(DEV_NIC), ENABLED);
    rig.close(A, d).unwrap();
}

#[test]
fn get_device_errors() {
    let mut rig = Rig::new();
    let c = rig.create(A);
    let g2 = rig.open(A, 2).unwrap();
    assert_eq!(
        rig.get_device(A, g2, "0000:01:00.0"),
        Err(Errno::EINVAL),
        "no container"
    );
    rig.set(A, g2, c).unwrap();
    assert_eq!(
        rig.get_device(A, g2, "0000:01:00.0"),
        Err(Errno::EINVAL),
        "no model"
    );
    rig.set_iommu(A, c).unwrap();
    for name in [
        "0000:00:1c.0", // the port: a bridge is never a device
        "0000:00:02.0", // another group's
        "0000:05:00.0", // nobody
        "0001:01:00.0", // another segment
        "0000:01:00.0 ",
        "0000:01:00",
        "hello",
        "0000:01:00.8",
        "\u{0}",
    ] {
        assert_eq!(rig.get_device(A, g2, name), Err(Errno::ENODEV), "{name:?}");
    }
    assert_eq!(rig.get_device(A, c, "0000:01:00.0"), Err(Errno::ENOTTY));
    assert_eq!(rig.get_device(A, 999, "0000:01:00.0"), Err(Errno::EBADF));
    let call = |group, name, name_len| VfioCall::GroupGetDevice {
        group,
        name,
        name_len,
    };
    assert_eq!(rig.call(A, call(g2, NAME, 0)), Err(Errno::EINVAL));
    assert_eq!(rig.call(A, call(g2, NAME, 65)), Err(Errno::EINVAL));
    assert_eq!(rig.call(A, call(g2, RAM_SIZE - 4, 12)), Err(Errno::EFAULT));
    assert_eq!(rig.call(A, call(g2, u64::MAX - 3, 12)), Err(Errno::EFAULT));
    assert_eq!(
        rig.command(DEV_NIC),
        INITIAL_COMMAND,
        "no failure touched the function"
    );
    let d = rig.get_device(A, g2, "0000:01:00.0").unwrap();
    assert_eq!(rig.get_device(A, g2, "0000:01:00.0"), Err(Errno::EBUSY));
    assert_eq!(rig.unset(A, g2), Err(Errno::EBUSY));
    rig.close(A, d).unwrap();
    assert_eq!(rig.unset(A, g2), Ok(0));
}

fn region_info(rig: &mut Rig, device: u64, index: u32) -> Result<RegionInfo, Errno> {
    let info = RegionInfo {
        argsz: 32,
        index,
        ..Default::default()
    };
    rig.a.put(ARGS, &info.to_bytes());
    rig.call(A, VfioCall::DeviceGetRegionInfo { device, info: ARGS })?;
    let mut b = [0u8; 32];
    b.copy_from_slice(rig.a.get(ARGS, 32));
    Ok(RegionInfo::from_bytes(&b))
}

/// The open edu of guest A (group 1), its group bound to the VM (BAR mappings need it).
fn open_edu(rig: &mut Rig) -> (u64, u64, u64) {
    let (c, gs) = rig.active(A, &[1]);
    let d = rig.get_device(A, gs[0], "0000:00:02.0").unwrap();
    rig.bind(A, gs[0]).unwrap();
    (c, gs[0], d)
}

#[test]
fn map_region_needs_the_vm_binding_and_unbinding_keeps_what_is_mapped() {
    let mut rig = Rig::new();
    let (_, gs) = rig.active(A, &[1]);
    let g = gs[0];
    let d = rig.get_device(A, g, "0000:00:02.0").unwrap();
    let gpa = 0x1_0000_0000;
    assert_eq!(
        map_region(&mut rig, d, 0, 0, 0x1000, gpa),
        Err(Errno::EPERM),
        "not bound"
    );
    // The request's own EINVALs come first.
    assert_eq!(
        map_region(&mut rig, d, 0, 0x800, 0x1000, gpa),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        map_region(&mut rig, d, 1, 0, 0x1000, gpa),
        Err(Errno::EINVAL)
    );
    assert!(rig.a.mmio.is_empty());
    rig.bind(A, g).unwrap();
    assert_eq!(map_region(&mut rig, d, 0, 0, 0x1000, gpa), Ok(0));
    // Unbinding (kvm-vfio group delete) leaves the mapping; new ones are refused.
    rig.unbind(A, g).unwrap();
    assert_eq!(rig.a.mmio.get(&gpa), Some(&(0xfea0_0000, 0x1000)));
    assert_eq!(rig.vfio.region_mapping_count(A), 1);
    assert_eq!(
        map_region(&mut rig, d, 0, 0x1000, 0x1000, gpa + 0x1000),
        Err(Errno::EPERM)
    );
    // Bound again: allowed again; closing the device removes both.
    rig.bind(A, g).unwrap();
    assert_eq!(
        map_region(&mut rig, d, 0, 0x1000, 0x1000, gpa + 0x1000),
        Ok(0)
    );
    rig.close(A, d).unwrap();
    assert!(rig.a.mmio.is_empty());
    assert_eq!(rig.vfio.region_mapping_count(A), 0);
}

#[test]
fn device_info() {
    let mut rig = Rig::new();
    let (c, g, d) = open_edu(&mut rig);
    let put = |rig: &mut Rig, argsz: u32, flags: u32| {
        rig.a.put(ARGS, &[0xee; 32]);
        rig.a.put(ARGS, &argsz.to_le_bytes());
        rig.a.put(ARGS + 4, &flags.to_le_bytes());
    };
    put(&mut rig, 24, 0);
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
    let mut b = [0u8; 24];
    b.copy_from_slice(rig.a.get(ARGS, 24));
    assert_eq!(
        DeviceInfo::from_bytes(&b),
        DeviceInfo {
            argsz: 24,
            flags: DEVICE_FLAGS_PCI,
            num_regions: 9,
            num_irqs: 5,
            cap_offset: 0,
            _pad: 0
        }
    );
    assert_eq!(rig.a.get(ARGS + 24, 8), &[0xee; 8]);
    // 16 bytes: cap_offset not written.
    put(&mut rig, 16, 0);
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
    assert_eq!(rig.a.get(ARGS + 16, 8), &[0xee; 8]);
    assert_eq!(rig.a.get(ARGS + 8, 4), &9u32.to_le_bytes());
    put(&mut rig, 15, 0);
    assert_eq!(
        rig.call(
            A,
            VfioCall::DeviceGetInfo {
                device: d,
                info: ARGS
            }
        ),
        Err(Errno::EINVAL)
    );
    put(&mut rig, 24, 2);
    assert_eq!(
        rig.call(
            A,
            VfioCall::DeviceGetInfo {
                device: d,
                info: ARGS
            }
        ),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        rig.a.get(ARGS + 8, 8),
        &[0xee; 8],
        "failing calls write nothing"
    );
    for h in [c, g] {
        assert_eq!(
            rig.call(
                A,
                VfioCall::DeviceGetInfo {
                    device: h,
                    info: ARGS
                }
            ),
            Err(Errno::ENOTTY)
        );
    }
    assert_eq!(
        rig.call(
            A,
            VfioCall::DeviceGetInfo {
                device: d,
                info: RAM_SIZE
            }
        ),
        Err(Errno::EFAULT)
    );
}

#[test]
fn region_info_follows_vfio_pci() {
    let mut rig = Rig::new();
    let (_, _, d) = open_edu(&mut rig);
    let expected: [(u64, u32); 9] = [
        (0x10_0000, RWM), // BAR0 mem32 1 MiB
        (0x40, RW),       // BAR1 I/O: DEVICE_REGION_READ/WRITE (port I/O), never mmap
        (0x4000, RWM),    // BAR2 mem64
        (0, 0),           // BAR3: upper half of BAR2
        (0x1000, 0),      // BAR4: unassigned (address 0): never mappable
        (0x100, RW),      // BAR5: smaller than a page: DEVICE_REGION_READ/WRITE only
        (0, 0),           // ROM
        (4096, RW),       // config: mediated, read/write through the calls
        (0, 0),           // VGA
    ];
    for (index, &(size, flags)) in expected.iter().enumerate() {
        let info = region_info(&mut rig, d, index as u32).unwrap();
        assert_eq!((info.size, info.flags), (size, flags), "region {index}");
        assert_eq!(info.offset, (index as u64) << 40);
        assert_eq!(
            (info.index, info.argsz, info.cap_offset),
            (index as u32, 32, 0)
        );
    }
    assert_eq!(region_info(&mut rig, d, 9), Err(Errno::EINVAL));
    assert_eq!(region_info(&mut rig, d, u32::MAX), Err(Errno::EINVAL));
    let mut bad = RegionInfo {
        argsz: 31,
        ..Default::default()
    };
    rig.a.put(ARGS, &bad.to_bytes());
    assert_eq!(
        rig.call(
            A,
            VfioCall::DeviceGetRegionInfo {
                device: d,
                info: ARGS
            }
        ),
        Err(Errno::EINVAL)
    );
    bad.argsz = 32;
    bad.flags = 1;
    rig.a.put(ARGS, &bad.to_bytes());
    assert_eq!(
        rig.call(
            A,
            VfioCall::DeviceGetRegionInfo {
                device: d,
                info: ARGS
            }
        ),
        Err(Errno::EINVAL)
    );
}

#[test]
fn map_region_checks() {
    let mut rig = Rig::new();
    let (_, _, d) = open_edu(&mut rig);
    let gpa = 0x1_0000_0000;
    assert_eq!(map_region(&mut rig, d, 0, 0x1000, 0x2000, gpa), Ok(0));
    assert_eq!(rig.a.mmio.get(&gpa), Some(&(0xfea0_1000, 0x2000)));
    assert_eq!(
        map_region(&mut rig, d, 2, 0, 0x4000, gpa + 0x10_0000),
        Ok(0)
    );
    assert_eq!(
        rig.a.mmio.get(&(gpa + 0x10_0000)),
        Some(&(0x8_0000_0000, 0x4000))
    );
    let cases: Vec<(u32, u64, u64, u64, Errno, &str)> = vec![
        (1, 0, 0x1000, gpa + 0x20_0000, Errno::EINVAL, "I/O BAR"),
        (3, 0, 0x1000, gpa + 0x20_0000, Errno::EINVAL, "upper half"),
        (
            4,
            0,
            0x1000,
            gpa + 0x20_0000,
            Errno::EINVAL,
            "unassigned BAR",
        ),
        (5, 0, 0x1000, gpa + 0x20_0000, Errno::EINVAL, "small BAR"),
        (6, 0, 0x1000, gpa + 0x20_0000, Errno::EINVAL, "ROM"),
        (7, 0, 0x1000, gpa + 0x20_0000, Errno::EINVAL, "config"),
        (
            9,
            0,
            0x1000,
            gpa + 0x20_0000,
            Errno::EINVAL,
            "no such region",
        ),
        (
            0,
            0x800,
            0x1000,
            gpa + 0x20_0000,
            Errno::EINVAL,
            "offset misaligned",
        ),
        (
            0,
            0,
            0x800,
            gpa + 0x20_0000,
            Errno::EINVAL,
            "size misaligned",
        ),
        (0, 0, 0, gpa + 0x20_0000, Errno::EINVAL, "size 0"),
        (
            0,
            0,
            0x1000,
            gpa + 0x20_0800,
            Errno::EINVAL,
            "gpa misaligned",
        ),
        (
            0,
            0xf_f000,
            0x2000,
            gpa + 0x20_0000,
            Errno::EINVAL,
            "past the BAR's end",
        ),
        (
            0,
            0,
            0x20_0000,
            gpa + 0x20_0000,
            Errno::EINVAL,
            "bigger than the BAR",
        ),
        (
            0,
            u64::MAX - 0xfff,
            0x2000,
            gpa + 0x20_0000,
            Errno::EINVAL,
            "offset wraps",
        ),
        (0, 0, 0x2000, u64::MAX - 0xfff, Errno::EINVAL, "gpa wraps"),
        (0, 0, 0x1000, 0, Errno::EINVAL, "over RAM"),
        (
            0,
            0,
            0x1000,
            RAM_SIZE - 0x1000,
            Errno::EINVAL,
            "over RAM's last page",
        ),
        (
            0,
            0,
            0x2000,
            RAM_SIZE - 0x1000,
            Errno::EINVAL,
            "straddles RAM's end",
        ),
        (
            0,
            0,
            0x1000,
            gpa + 0x1000,
            Errno::EEXIST,
            "inside a mapping",
        ),
        (
            0,
            0,
            0x4000,
            gpa - 0x2000,
            Errno::EEXIST,
            "overlaps a mapping's start",
        ),
    ];
    for (index, offset, size, at, errno, what) in cases {
        assert_eq!(
            map_region(&mut rig, d, index, offset, size, at),
            Err(errno),
            "{what}"
        );
    }
    assert_eq!(rig.a.mmio.len(), 2, "failures mapped nothing");
    // Adjacent is fine; the guest-memory layer's own refusal comes through.
    assert_eq!(map_region(&mut rig, d, 0, 0, 0x1000, gpa + 0x2000), Ok(0));
    rig.a.fail_map_mmio = Some(Errno::ENOMEM);
    assert_eq!(
        map_region(&mut rig, d, 0, 0, 0x1000, gpa + 0x30_0000),
        Err(Errno::ENOMEM)
    );
    assert_eq!(rig.vfio.region_mapping_count(A), 3);
    // argsz and flags.
    let mut m = sluice_abi::vfio::RegionMap {
        argsz: 39,
        flags: 0,
        index: 0,
        _pad: 0,
        offset: 0,
        size: 0x1000,
        gpa: gpa + 0x40_0000,
    };
    rig.a.put(ARGS, &m.to_bytes());
    assert_eq!(
        rig.call(
            A,
            VfioCall::DeviceMapRegion {
                device: d,
                map: ARGS
            }
        ),
        Err(Errno::EINVAL)
    );
    m.argsz = 40;
    m.flags = 1;
    rig.a.put(ARGS, &m.to_bytes());
    assert_eq!(
        rig.call(
            A,
            VfioCall::DeviceMapRegion {
                device: d,
                map: ARGS
            }
        ),
        Err(Errno::EINVAL)
    );
    // Closing the device removes them all from the guest.
    rig.close(A, d).unwrap();
    assert!(rig.a.mmio.is_empty());
    assert_eq!(rig.a.mmio_unmaps, 3);
    assert_eq!(rig.vfio.region_mapping_count(A), 0);
}

#[test]
fn region_mappings_overlap_per_guest_across_devices() {
    let mut rig = Rig::new();
    let (_, _, d) = open_edu(&mut rig);
    let (_, gs) = rig.active(A, &[2]);
    let nic = rig.get_device(A, gs[0], "0000:01:00.0").unwrap();
    rig.bind(A, gs[0]).unwrap();
    let gpa = 0x2_0000_0000;
    map_region(&mut rig, d, 0, 0, 0x4000, gpa).unwrap();
    assert_eq!(
        map_region(&mut rig, nic, 0, 0, 0x1000, gpa + 0x3000),
        Err(Errno::EEXIST)
    );
    assert_eq!(map_region(&mut rig, nic, 0, 0, 0x1000, gpa + 0x4000), Ok(0));
    // B's guest-physical space is its own.
    let (_, gb) = rig.active(B, &[3]);
    let db = rig.get_device(B, gb[0], "0000:00:03.0").unwrap();
    rig.bind(B, gb[0]).unwrap();
    assert_eq!(map_region_as(&mut rig, B, db, 0, 0, 0x1000, gpa), Ok(0));
    assert_eq!(rig.b.mmio.get(&gpa), Some(&(0xfec0_0000, 0x1000)));
    // A's device handles mean nothing to B, even where B has a device in that slot.
    assert_eq!(db & 0xffff, d & 0xffff);
    assert_eq!(
        map_region_as(&mut rig, B, d, 0, 0, 0x1000, gpa + 0x10_0000),
        Err(Errno::EBADF)
    );
    assert_eq!(
        map_region_as(&mut rig, B, nic, 0, 0, 0x1000, gpa + 0x10_0000),
        Err(Errno::EBADF)
    );
    assert_eq!(rig.vfio.region_mapping_count(A), 2);
    assert_eq!(rig.vfio.region_mapping_count(B), 1);
}

#[test]
fn region_mappings_are_bounded_per_device() {
    let mut rig = Rig::new();
    let (_, _, d) = open_edu(&mut rig);
    let gpa = 0x2_0000_0000;
    for i in 0..crate::vfio::MAX_REGION_MAPPINGS as u64 {
        assert_eq!(
            map_region(&mut rig, d, 0, 0, 0x1000, gpa + i * 0x1000),
            Ok(0)
        );
    }
    let next = gpa + 0x10_0000;
    assert_eq!(
        map_region(&mut rig, d, 0, 0, 0x1000, next),
        Err(Errno::ENOSPC)
    );
    assert_eq!(
        rig.vfio.region_mapping_count(A),
        crate::vfio::MAX_REGION_MAPPINGS
    );
}

#[test]
fn a_heap_at_its_reserve_refuses_to_grow() {
    let mut rig = Rig::new();
    let (c, _, d) = open_edu(&mut rig);
    rig.vfio.set_heap_guard(|| 0);
    assert_eq!(
        map_region(&mut rig, d, 0, 0, 0x1000, 0x2_0000_0000),
        Err(Errno::ENOMEM)
    );
    assert_eq!(rig.map(A, c, 0, 0x10_0000, 0x1000), Err(Errno::ENOMEM));
    assert_eq!(rig.vfio.mapping_count(), 0);
    rig.vfio.set_heap_guard(|| usize::MAX);
    assert_eq!(map_region(&mut rig, d, 0, 0, 0x1000, 0x2_0000_0000), Ok(0));
    assert_eq!(rig.map(A, c, 0, 0x10_0000, 0x1000), Ok(0));
}
