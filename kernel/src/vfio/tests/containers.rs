//! Container calls: MAP_DMA, UNMAP_DMA, IOMMU_GET_INFO, CONTAINER_DEBUG.

use alloc::vec;
use alloc::vec::Vec;

use sluice_abi::Errno;
use sluice_abi::vfio::{
    CAP_DMA_AVAIL, CAP_IOVA_RANGE, DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE, DMA_MAPPINGS_MAX,
    DMA_UNMAP_FLAG_ALL, DmaAvailCap, DmaMap, DmaUnmap, IOMMU_INFO_CAPS, IOMMU_INFO_PGSIZES,
    IommuType1Info, IovaRangeCap, IovaRangeEntry, VfioCall,
};
use sluice_iommu::{Access, IovaRange};

use super::fakes::DEFAULT_PAGE_SIZES;
use super::*;

const MB: u64 = 1 << 20;

/// Run a call expected to fail and check it changed nothing: the argument structure,
/// the IOMMU's view, the mapping count.
fn fails(rig: &mut Rig, call: VfioCall, errno: Errno) {
    let args_before = rig.a.get(ARGS, 64).to_vec();
    let iommu_before = rig.attached();
    let commits_before = rig.iommu.borrow().commits();
    let count_before = rig.vfio.mapping_count();
    assert_eq!(rig.call(A, call), Err(errno), "{call:?}");
    assert_eq!(
        rig.a.get(ARGS, 64),
        &args_before[..],
        "{call:?} wrote memory"
    );
    assert_eq!(rig.attached(), iommu_before, "{call:?} changed the IOMMU");
    assert_eq!(
        rig.iommu.borrow().commits(),
        commits_before,
        "{call:?} committed"
    );
    assert_eq!(rig.vfio.mapping_count(), count_before);
}

fn map_call(rig: &mut Rig, c: u64, m: DmaMap) -> VfioCall {
    rig.a.put(ARGS, &m.to_bytes());
    VfioCall::MapDma {
        container: c,
        map: ARGS,
    }
}

fn dma_map(flags: u32, vaddr: u64, iova: u64, size: u64) -> DmaMap {
    DmaMap {
        argsz: 32,
        flags,
        vaddr,
        iova,
        size,
    }
}

#[test]
fn map_dma_maps_in_every_domain_with_one_commit_each() {
    let mut rig = Rig::new();
    let (c, _) = rig.active(A, &[1, 3]);
    let before = rig.iommu.borrow().commits();
    assert_eq!(rig.map(A, c, 0x20_0000, 0x1_0000_0000, 2 * MB), Ok(0));
    let after = rig.iommu.borrow().commits();
    assert_eq!(after.len(), 2);
    for (d, n) in &after {
        assert_eq!(*n, before[d] + 1);
    }
    let m = vec![(0x1_0000_0000, 2 * MB, 0x4020_0000)];
    assert_eq!(rig.attached(), vec![(DEV_EDU, m.clone()), (DEV_UNIT1, m)]);
    rig.map_flags(A, c, 0x40_0000 - 0x1000, 0, 0x1000, DMA_MAP_FLAG_READ)
        .unwrap();
    rig.map_flags(A, c, 0, 0x1000, 0x1000, DMA_MAP_FLAG_WRITE)
        .unwrap();
    let s = rig.iommu.borrow();
    for d in s.domains.values() {
        assert_eq!(d.mappings[&0].2, Access::READ);
        assert_eq!(d.mappings[&0x1000].2, Access::WRITE);
        assert_eq!(d.mappings[&0x1_0000_0000].2, Access::READ | Access::WRITE);
    }
    drop(s);
    assert_eq!(rig.vfio.mapping_count(), 3);
}

#[test]
fn map_dma_errors() {
    let mut rig = Rig::new();
    let c = rig.create(A);
    let call = map_call(&mut rig, c, dma_map(3, 0, 0, 4096));
    fails(&mut rig, call, Errno::EINVAL); // no model (no group even)
    let g = rig.open(A, 1).unwrap();
    rig.set(A, g, c).unwrap();
    fails(&mut rig, call, Errno::EINVAL); // no model yet
    rig.set_iommu(A, c).unwrap();
    rig.map(A, c, 0x10_0000, 0x100_0000, 0x10_0000).unwrap();

    let cases: Vec<(DmaMap, Errno, &str)> = vec![
        (dma_map(0, 0, 0, 4096), Errno::EINVAL, "no access"),
        (dma_map(4, 0, 0, 4096), Errno::EINVAL, "unknown flag"),
        (
            dma_map(3 | 1 << 31, 0, 0, 4096),
            Errno::EINVAL,
            "unknown flag",
        ),
        (dma_map(3, 0, 0, 0), Errno::EINVAL, "size 0"),
        (
            dma_map(3, 0x800, 0, 4096),
            Errno::EINVAL,
            "vaddr misaligned",
        ),
        (dma_map(3, 0, 0x800, 4096), Errno::EINVAL, "iova misaligned"),
        (dma_map(3, 0, 0, 0x1800), Errno::EINVAL, "size misaligned"),
        (
            dma_map(3, 0, u64::MAX - 0xfff, 0x2000),
            Errno::EINVAL,
            "iova wraps",
        ),
        (
            dma_map(3, 0, u64::MAX - 0xfff, 0x1000),
            Errno::EINVAL,
            "iova ends at 2^64",
        ),
        (
            dma_map(3, u64::MAX - 0xfff, 0, 0x2000),
            Errno::EINVAL,
            "vaddr wraps",
        ),
        (
            dma_map(3, 0, 0xfee0_0000, 0x1000),
            Errno::EINVAL,
            "interrupt window",
        ),
        (
            dma_map(3, 0, 0xfed0_0000, 0x20_0000),
            Errno::EINVAL,
            "straddles two ranges",
        ),
        (
            dma_map(3, 0, 1 << 39, 0x1000),
            Errno::EINVAL,
            "beyond the aperture",
        ),
        (
            dma_map(3, RAM_SIZE, 0, 0x1000),
            Errno::EFAULT,
            "vaddr beyond RAM",
        ),
        (
            dma_map(3, RAM_SIZE - 0x1000, 0, 0x2000),
            Errno::EFAULT,
            "vaddr runs past RAM",
        ),
        (dma_map(3, 1 << 40, 0, 0x1000), Errno::EFAULT, "far away"),
        (
            dma_map(3, 0, 0x100_0000, 0x1000),
            Errno::EEXIST,
            "same start",
        ),
        (
            dma_map(3, 0, 0xff_f000, 0x2000),
            Errno::EEXIST,
            "overlaps the start",
        ),
        (
            dma_map(3, 0, 0x10f_f000, 0x2000),
            Errno::EEXIST,
            "overlaps the end",
        ),
        (
            dma_map(3, 0, 0xf0_0000, 0x20_0000),
            Errno::EEXIST,
            "covers it",
        ),
        (
            dma_map(3, 0, 0x108_0000, 0x1000),
            Errno::EEXIST,
            "inside it",
        ),
    ];
    for (m, errno, what) in cases {
        let call = map_call(&mut rig, c, m);
        assert_eq!(rig.call(A, call), Err(errno), "{what}");
        fails(&mut rig, call, errno);
    }
    // argsz and structure placement.
    let mut short = dma_map(3, 0, 0, 4096);
    short.argsz = 31;
    let call = map_call(&mut rig, c, short);
    fails(&mut rig, call, Errno::EINVAL);
    rig.a.put(RAM_SIZE - 16, &32u32.to_le_bytes());
    fails(
        &mut rig,
        VfioCall::MapDma {
            container: c,
            map: RAM_SIZE - 16,
        },
        Errno::EFAULT,
    );
    fails(
        &mut rig,
        VfioCall::MapDma {
            container: c,
            map: RAM_SIZE - 2,
        },
        Errno::EFAULT,
    );
    fails(
        &mut rig,
        VfioCall::MapDma {
            container: g,
            map: ARGS,
        },
        Errno::ENOTTY,
    );
    fails(
        &mut rig,
        VfioCall::MapDma {
            container: 77,
            map: ARGS,
        },
        Errno::EBADF,
    );
    // Adjacent mappings are fine; a bigger argsz is fine.
    let mut big = dma_map(3, 0, 0x110_0000, 0x1000);
    big.argsz = 4096;
    let call = map_call(&mut rig, c, big);
    assert_eq!(rig.call(A, call), Ok(0));
    assert_eq!(rig.map(A, c, 0, 0xff_f000, 0x1000), Ok(0));
    assert_eq!(rig.vfio.mapping_count(), 3);
}

#[test]
fn map_dma_failing_in_a_later_domain_is_undone() {
    let mut rig = Rig::new();
    let (c, _) = rig.active(A, &[1, 3]);
    rig.map(A, c, 0, 0x10_0000, 0x1000).unwrap();
    let clean = rig.attached();
    rig.iommu.borrow_mut().map_budget = Some(1);
    assert_eq!(rig.map(A, c, 0x1000, 0x20_0000, 0x1000), Err(Errno::ENOMEM));
    assert_eq!(rig.attached(), clean);
    assert_eq!(rig.vfio.mapping_count(), 1);
    rig.iommu.borrow_mut().map_budget = None;
    // A commit that times out: nothing stays mapped either.
    rig.iommu.borrow_mut().fail_commit = true;
    assert_eq!(rig.map(A, c, 0x1000, 0x20_0000, 0x1000), Err(Errno::EBUSY));
    assert_eq!(rig.attached(), clean);
    rig.iommu.borrow_mut().fail_commit = false;
    assert_eq!(rig.map(A, c, 0x1000, 0x20_0000, 0x1000), Ok(0));
}

#[test]
fn the_mapping_limit() {
    let mut rig = Rig::new();
    // Enough RAM that the pinned-memory limit (RAM size) is not reached first.
    rig.a = super::fakes::FakeRam::new(256 << 20, 0x4000_0000);
    let (c, _) = rig.active(A, &[1]);
    // Straight to Vfio::call: checking every invariant after each of 65535 calls
    // would be quadratic.
    for i in 0..u64::from(DMA_MAPPINGS_MAX) {
        rig.a
            .put(ARGS, &dma_map(1, 0x10_0000, i * 0x1000, 0x1000).to_bytes());
        let call = VfioCall::MapDma {
            container: c,
            map: ARGS,
        };
        rig.vfio.call(A, &mut rig.a, call).unwrap();
    }
    rig.vfio.check_invariants().unwrap();
    assert_eq!(rig.vfio.mapping_count(), DMA_MAPPINGS_MAX as usize);
    let next = u64::from(DMA_MAPPINGS_MAX) * 0x1000;
    assert_eq!(rig.map(A, c, 0x10_0000, next, 0x1000), Err(Errno::ENOSPC));
    let (_, caps) = get_info(&mut rig, c, 1024).unwrap();
    assert_eq!(caps.avail, 0, "no mapping available");
    assert_eq!(rig.unmap(A, c, 0, 0x1000, 0), Ok(0x1000));
    assert_eq!(rig.map(A, c, 0x10_0000, next, 0x1000), Ok(0));
    assert_eq!(
        rig.unmap(A, c, 0, 0, DMA_UNMAP_FLAG_ALL),
        Ok(u64::from(DMA_MAPPINGS_MAX) * 0x1000)
    );
    assert_eq!(rig.vfio.mapping_count(), 0);
}

#[test]
fn the_pinned_memory_limit_is_the_guests_ram() {
    let mut rig = Rig::new();
    let (c, _) = rig.active(A, &[1]);
    // RAM_SIZE bytes may be mapped in all (aliases count each time), not one page more.
    let half = RAM_SIZE / 2;
    assert_eq!(rig.map(A, c, 0, 0x100_0000, half), Ok(0));
    assert_eq!(
        rig.map(A, c, 0, 0x200_0000, half),
        Ok(0),
        "an alias of the same RAM"
    );
    assert_eq!(rig.map(A, c, 0, 0x300_0000, 0x1000), Err(Errno::ENOMEM));
    assert_eq!(rig.unmap(A, c, 0x200_0000, half, 0), Ok(half));
    assert_eq!(rig.map(A, c, 0, 0x300_0000, 0x1000), Ok(0));
    rig.vfio.check_invariants().unwrap();
}

#[test]
fn unmap_dma_whole_mappings_only() {
    let mut rig = Rig::new();
    let (c, _) = rig.active(A, &[1, 3]);
    for (vaddr, iova, size) in [
        (0, 0x10_0000, 0x2000),
        (0x2000, 0x10_2000, 0x1000),
        (0x10_0000, 0x20_0000, 0x4000),
    ] {
        rig.map(A, c, vaddr, iova, size).unwrap();
    }
    let unmap = |rig: &mut Rig, iova, size, flags| {
        let u = DmaUnmap {
            argsz: 24,
            flags,
            iova,
            size,
        };
        rig.a.put(ARGS, &u.to_bytes());
        VfioCall::UnmapDma {
            container: c,
            unmap: ARGS,
        }
    };
    for (iova, size, flags, what) in [
        (0x10_1000, 0x2000, 0, "cuts the first at its start"),
        (0x10_0000, 0x1000, 0, "cuts the first at its end"),
        (0x20_1000, 0x1000, 0, "inside one"),
        (0x10_0000, 0x10_2000, 0, "cuts the third at its end"),
        (0x10_0000, 0, 0, "size 0"),
        (0x10_0800, 0x1000, 0, "misaligned iova"),
        (0x10_0000, 0x1800, 0, "misaligned size"),
        (u64::MAX - 0xfff, 0x2000, 0, "wraps"),
        (0x10_0000, 0x3000, 1, "unknown flag (bit 0)"),
        (0x10_0000, 0x3000, 4, "unknown flag"),
        (0x10_0000, 0, DMA_UNMAP_FLAG_ALL, "ALL with an iova"),
        (0, 0x1000, DMA_UNMAP_FLAG_ALL, "ALL with a size"),
    ] {
        let call = unmap(&mut rig, iova, size, flags);
        assert_eq!(rig.call(A, call), Err(Errno::EINVAL), "{what}");
        fails(&mut rig, call, Errno::EINVAL);
    }
    let short = DmaUnmap {
        argsz: 23,
        flags: 0,
        iova: 0,
        size: 0x1000,
    };
    rig.a.put(ARGS, &short.to_bytes());
    fails(
        &mut rig,
        VfioCall::UnmapDma {
            container: c,
            unmap: ARGS,
        },
        Errno::EINVAL,
    );
    // Nothing mapped there: success, 0 bytes, no commit needed.
    let commits = rig.iommu.borrow().commits();
    assert_eq!(rig.unmap(A, c, 0x30_0000, 0x1000, 0), Ok(0));
    assert_eq!(rig.iommu.borrow().commits(), commits);
    // The first two in one call, one commit per domain.
    assert_eq!(rig.unmap(A, c, 0xf_0000, 0x1_3000, 0), Ok(0x3000));
    for (d, n) in rig.iommu.borrow().commits() {
        assert_eq!(n, commits[&d] + 1);
    }
    let left = vec![(0x20_0000, 0x4000, 0x4010_0000)];
    assert_eq!(
        rig.attached(),
        vec![(DEV_EDU, left.clone()), (DEV_UNIT1, left)]
    );
    // The written-back structure: only size changed.
    let mut out = [0u8; 24];
    rig.map(A, c, 0, 0x10_0000, 0x1000).unwrap();
    assert_eq!(rig.unmap(A, c, 0, 0, DMA_UNMAP_FLAG_ALL), Ok(0x5000));
    out.copy_from_slice(rig.a.get(ARGS, 24));
    assert_eq!(
        DmaUnmap::from_bytes(&out),
        DmaUnmap {
            argsz: 24,
            flags: DMA_UNMAP_FLAG_ALL,
            iova: 0,
            size: 0x5000
        }
    );
    assert_eq!(rig.attached(), vec![(DEV_EDU, vec![]), (DEV_UNIT1, vec![])]);
    assert_eq!(rig.unmap(A, c, 0, 0, DMA_UNMAP_FLAG_ALL), Ok(0));
    // Without a model.
    let c2 = rig.create(A);
    let u = DmaUnmap {
        argsz: 24,
        flags: DMA_UNMAP_FLAG_ALL,
        iova: 0,
        size: 0,
    };
    rig.a.put(ARGS, &u.to_bytes());
    fails(
        &mut rig,
        VfioCall::UnmapDma {
            container: c2,
            unmap: ARGS,
        },
        Errno::EINVAL,
    );
}

/// The capability chain of IOMMU_GET_INFO, decoded (empty when not written).
#[derive(Debug, Default)]
struct Caps {
    ranges: Vec<IovaRange>,
    avail: u32,
}

/// IOMMU_GET_INFO with `argsz`: the structure, and the chain if written.
fn get_info(rig: &mut Rig, c: u64, argsz: u32) -> Result<(IommuType1Info, Caps), Errno> {
    rig.a.put(ARGS, &[0xee; 256]);
    rig.a.put(
        ARGS,
        &IommuType1Info {
            argsz,
            ..Default::default()
        }
        .to_bytes()[..8],
    );
    rig.call(
        A,
        VfioCall::IommuGetInfo {
            container: c,
            info: ARGS,
        },
    )?;
    let mut b = [0u8; 24];
    b.copy_from_slice(rig.a.get(ARGS, 24));
    let written = if argsz >= 24 { 24 } else { 16 };
    let info = IommuType1Info::from_bytes(&b);
    if written == 16 {
        assert!(rig.a.get(ARGS + 16, 8).iter().all(|&x| x == 0xee));
        return Ok((info, Caps::default()));
    }
    if info.cap_offset == 0 {
        assert!(
            rig.a.get(ARGS + 24, 8).iter().all(|&x| x == 0xee),
            "no chain written"
        );
        return Ok((info, Caps::default()));
    }
    assert_eq!(info.cap_offset, 24);
    let mut h = [0u8; 16];
    h.copy_from_slice(rig.a.get(ARGS + 24, 16));
    let cap = IovaRangeCap::from_bytes(&h);
    assert_eq!((cap.id, cap.version), (CAP_IOVA_RANGE, 1));
    let ranges: Vec<IovaRange> = (0..cap.nr_iovas as u64)
        .map(|i| {
            let mut e = [0u8; 16];
            e.copy_from_slice(rig.a.get(ARGS + 40 + 16 * i, 16));
            let e = IovaRangeEntry::from_bytes(&e);
            IovaRange {
                start: e.start,
                last: e.end,
            }
        })
        .collect();
    assert_eq!(cap.next as u64, 40 + 16 * cap.nr_iovas as u64);
    h.copy_from_slice(rig.a.get(ARGS + cap.next as u64, 16));
    let avail = DmaAvailCap::from_bytes(&h);
    assert_eq!((avail.id, avail.version, avail.next), (CAP_DMA_AVAIL, 1, 0));
    let end = ARGS + cap.next as u64 + 16;
    assert!(
        rig.a.get(end, 8).iter().all(|&x| x == 0xee),
        "nothing past the chain"
    );
    Ok((
        info,
        Caps {
            ranges,
            avail: avail.avail,
        },
    ))
}

#[test]
fn iommu_get_info_reports_the_intersection() {
    let mut rig = Rig::new();
    let (c, _) = rig.active(A, &[1]);
    let (info, Caps { ranges, avail }) = get_info(&mut rig, c, 1024).unwrap();
    assert_eq!(info.flags, IOMMU_INFO_PGSIZES | IOMMU_INFO_CAPS);
    assert_eq!(info.iova_pgsizes, DEFAULT_PAGE_SIZES);
    assert_eq!(info.argsz, 1024, "big enough: left alone");
    assert_eq!(ranges, super::fakes::default_ranges());
    assert_eq!(avail, DMA_MAPPINGS_MAX);
    rig.map(A, c, 0, 0, 0x1000).unwrap();
    assert_eq!(
        get_info(&mut rig, c, 1024).unwrap().1.avail,
        DMA_MAPPINGS_MAX - 1
    );

    // A unit with only 4K pages and a smaller aperture with a hole.
    {
        let mut s = rig.iommu.borrow_mut();
        s.page_sizes = (1 << 12) | (1 << 21) | (1 << 13);
        s.ranges = vec![
            IovaRange {
                start: 0x1000,
                last: 0x7fff_ffff,
            },
            IovaRange {
                start: 0xc000_0000,
                last: (1 << 48) - 1,
            },
        ];
    }
    let g3 = rig.open(A, 3).unwrap();
    rig.map(A, c, 0x1000, 0x1000, 0x1000).unwrap();
    // The mapping at IOVA 0 is outside unit 1's ranges: the replay fails, undone.
    let before = rig.attached();
    assert_eq!(rig.set(A, g3, c), Err(Errno::EINVAL));
    assert_eq!(rig.attached(), before);
    assert_eq!(rig.iommu.borrow().domains.len(), 1);
    assert_eq!(rig.unmap(A, c, 0, 0x1000, 0), Ok(0x1000));
    assert_eq!(rig.set(A, g3, c), Ok(0), "now the mappings fit");
    let (info, Caps { ranges, .. }) = get_info(&mut rig, c, 1024).unwrap();
    assert_eq!(info.iova_pgsizes, (1 << 12) | (1 << 21));
    assert_eq!(
        ranges,
        vec![
            IovaRange {
                start: 0x1000,
                last: 0x7fff_ffff
            },
            IovaRange {
                start: 0xc000_0000,
                last: 0xfedf_ffff
            },
            IovaRange {
                start: 0xfef0_0000,
                last: (1 << 39) - 1
            },
        ]
    );
    // MAP_DMA checks against the intersection.
    assert_eq!(rig.map(A, c, 0, 0x8000_0000, 0x1000), Err(Errno::EINVAL));
    assert_eq!(rig.map(A, c, 0, 0xc000_0000, 0x1000), Ok(0));
}

#[test]
fn iommu_get_info_short_buffers() {
    let mut rig = Rig::new();
    let (c, gs) = rig.active(A, &[1]);
    let needed = 24 + 16 + 2 * 16 + 16;
    // 16: through iova_pgsizes. Flags say CAPS, argsz says how much is needed.
    let (info, _) = get_info(&mut rig, c, 16).unwrap();
    assert_eq!(info.argsz, needed);
    assert_eq!(info.flags, IOMMU_INFO_PGSIZES | IOMMU_INFO_CAPS);
    assert_eq!(info.iova_pgsizes, DEFAULT_PAGE_SIZES);
    // 24 and one byte short of the chain: cap_offset written as 0.
    for argsz in [24, 20, needed - 1] {
        let (info, _) = get_info(&mut rig, c, argsz).unwrap();
        assert_eq!(info.argsz, needed);
        if argsz >= 24 {
            assert_eq!(info.cap_offset, 0);
        }
    }
    let (info, _) = get_info(&mut rig, c, needed).unwrap();
    assert_eq!((info.argsz, info.cap_offset), (needed, 24));
    // Errors.
    assert_eq!(get_info(&mut rig, c, 15).unwrap_err(), Errno::EINVAL);
    assert_eq!(
        get_info(&mut rig, c, MAX_ARGSZ_PLUS).unwrap_err(),
        Errno::E2BIG
    );
    rig.a.put(
        ARGS,
        &IommuType1Info {
            argsz: 24,
            flags: 1,
            ..Default::default()
        }
        .to_bytes(),
    );
    fails(
        &mut rig,
        VfioCall::IommuGetInfo {
            container: c,
            info: ARGS,
        },
        Errno::EINVAL,
    );
    fails(
        &mut rig,
        VfioCall::IommuGetInfo {
            container: gs[0],
            info: ARGS,
        },
        Errno::ENOTTY,
    );
    let c2 = rig.create(A);
    rig.a.put(
        ARGS,
        &IommuType1Info {
            argsz: 24,
            ..Default::default()
        }
        .to_bytes(),
    );
    fails(
        &mut rig,
        VfioCall::IommuGetInfo {
            container: c2,
            info: ARGS,
        },
        Errno::EINVAL,
    );
    // The chain must fit in RAM: argsz counts.
    let at = RAM_SIZE - 32;
    rig.a.put(
        at,
        &IommuType1Info {
            argsz: needed,
            ..Default::default()
        }
        .to_bytes(),
    );
    assert_eq!(
        rig.call(
            A,
            VfioCall::IommuGetInfo {
                container: c,
                info: at
            }
        ),
        Err(Errno::EFAULT)
    );
}

const MAX_ARGSZ_PLUS: u32 = sluice_abi::vfio::MAX_ARGSZ + 1;

#[test]
fn container_debug_counts_its_lines() {
    let mut rig = Rig::new();
    let c = rig.create(A);
    let call = |c, iova| VfioCall::ContainerDebug { container: c, iova };
    assert_eq!(rig.call(A, call(c, 0)), Err(Errno::EINVAL), "no model");
    let g2 = rig.open(A, 2).unwrap();
    let g3 = rig.open(A, 3).unwrap();
    rig.set(A, g2, c).unwrap();
    rig.set(A, g3, c).unwrap();
    assert_eq!(rig.call(A, call(c, 0)), Err(Errno::EINVAL), "no model");
    rig.set_iommu(A, c).unwrap();
    rig.map(A, c, 0, 0x10_0000, 0x1000).unwrap();
    // Two domains (headers), three functions (a line each, plus the fake's two lines).
    assert_eq!(rig.call(A, call(c, 0x10_0000)), Ok(2 + 3 * 3));
    assert_eq!(rig.call(A, call(c, u64::MAX)), Ok(2 + 3 * 3));
    assert_eq!(rig.call(A, call(g2, 0)), Err(Errno::ENOTTY));
    assert_eq!(rig.call(B, call(c, 0)), Err(Errno::EBADF));
}
