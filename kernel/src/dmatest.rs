//! The IOMMU DMA experiments (`dmatest` on the kernel command line): six proofs that
//! translation, isolation and invalidation really work, made with real device DMA.
//!
//! Each experiment prints one line of raw facts — addresses, the bytes in memory before
//! and after, the unit's raw fault record — and keeps its buffers untouched afterwards.
//! The test harness judges those facts itself (it decodes the fault records, compares
//! the bytes, and re-reads the buffers through QEMU's monitor while the kernel holds):
//! this module states what happened, it does not grade itself.
//!
//! Only the [`Iommu`] trait is used for translation; what the experiments need from the
//! platform beyond it (raw fault registers, a page-table walk) comes in through
//! [`DmaTestPlatform`].

use alloc::string::String;
use core::fmt::Write;

use log::{error, info};
use sluice_iommu::{Access, DeviceDma, DomainHandle, Iommu};

use crate::edu::{Edu, EduRegisters};
use crate::memory::FRAMES;
use crate::memory::frame::PAGE_SIZE;

/// Bytes moved per transfer (well inside edu's 4 KiB buffer and QEMU 7.2's limits).
const LEN: usize = 64;
/// IOVAs used by the experiments: below edu's 28-bit DMA mask, away from the buffers'
/// physical addresses so that a translation is really needed.
const IOVA_A: u64 = 0x0900_0000;
const IOVA_B: u64 = 0x0900_1000;
const IOVA_UNMAP: u64 = 0x0900_2000;
const IOVA_READONLY: u64 = 0x0900_3000;
const IOVA_SUPERPAGE: u64 = 0x0a00_0000;

/// What the experiments need from the platform besides the [`Iommu`] trait.
pub trait DmaTestPlatform {
    fn iommu(&mut self) -> &mut dyn Iommu;
    /// The unit's raw fault evidence for the last experiment, as `key=value`: VT-d's
    /// first fault recording register (`frcd=0x<hi>:0x<lo>`), AMD-Vi's last event-log
    /// entry (`event=0x<hi>:0x<lo>`, or `event=none`).
    fn fault_evidence(&mut self) -> String;
    /// The leaf entry translating `iova`: (raw entry, level: 1 = 4 KiB, 2 = 2 MiB, ...,
    /// page size).
    fn leaf_entry(&mut self, domain: DomainHandle, iova: u64) -> Option<(u64, u8, u64)>;
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn write_phys(paddr: u64, bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        // SAFETY: paddr is a buffer this module allocated from the frame allocator
        // (identity-mapped RAM it owns).
        unsafe { ((paddr as usize + i) as *mut u8).write_volatile(*b) };
    }
}

fn read_phys(paddr: u64) -> [u8; LEN] {
    let mut out = [0u8; LEN];
    for (i, b) in out.iter_mut().enumerate() {
        // SAFETY: as in write_phys.
        *b = unsafe { ((paddr as usize + i) as *const u8).read_volatile() };
    }
    out
}

/// A page (or `pages` pages at `align`) from the frame allocator, below edu's DMA mask
/// so it can also serve as an untranslated target. Never freed: the harness reads the
/// buffers while the kernel holds.
fn buffer(pages: u64, align: u64) -> Option<u64> {
    let p = FRAMES.lock().alloc(pages, align)?;
    (p + pages * PAGE_SIZE <= 1 << 28).then_some(p)
}

fn pattern(seed: u8) -> [u8; LEN] {
    core::array::from_fn(|i| {
        seed.wrapping_mul(31)
            .wrapping_add((i as u8).wrapping_mul(7))
            ^ 0x5a
    })
}

/// Read, clear and log the recorded faults in words.
fn log_faults(iommu: &mut dyn Iommu) {
    for f in iommu.take_faults() {
        info!(
            target: "iommu",
            "fault: unit {} requester {:02x}:{:02x}.{} {} at {:#x}: reason {} ({})",
            f.unit.0,
            f.requester_id >> 8,
            (f.requester_id >> 3) & 0x1f,
            f.requester_id & 7,
            if f.write { "write" } else { "read" },
            f.address,
            f.reason,
            f.reason_text
        );
    }
}

fn evidence(p: &mut dyn DmaTestPlatform) -> String {
    p.fault_evidence()
}

/// Run the six experiments: `e1` is attached to a fresh domain, `e2` never is.
/// Returns false when they could not be run at all.
pub fn run<R1: EduRegisters, R2: EduRegisters>(
    platform: &mut dyn DmaTestPlatform,
    e1: &Edu<R1>,
    e1_dma: &DeviceDma,
    e2: &Edu<R2>,
    e2_rid: u16,
) -> bool {
    match run_inner(platform, e1, e1_dma, e2, e2_rid) {
        Ok(()) => true,
        Err(e) => {
            error!(target: "dmatest", "dmatest stopped: {e}");
            false
        }
    }
}

fn run_inner<R1: EduRegisters, R2: EduRegisters>(
    p: &mut dyn DmaTestPlatform,
    e1: &Edu<R1>,
    e1_dma: &DeviceDma,
    e2: &Edu<R2>,
    e2_rid: u16,
) -> Result<(), String> {
    let err = |what: &str, e: &dyn core::fmt::Display| alloc::format!("{what}: {e}");
    let page =
        |n| buffer(n, PAGE_SIZE).ok_or_else(|| String::from("out of low memory for buffers"));
    let rw = Access::READ | Access::WRITE;
    let domain = p
        .iommu()
        .create_domain()
        .map_err(|e| err("create domain", &e))?;
    p.iommu()
        .attach(domain, e1_dma)
        .map_err(|e| err("attach e1", &e))?;
    let rid = e1_dma.requester_ids.first().copied().unwrap_or(0);
    log_faults(p.iommu());

    // 1. map-dma: RAM A -> edu -> RAM B, both through IOVAs.
    let (a, b) = (page(1)?, page(1)?);
    let pat = pattern(1);
    write_phys(a, &pat);
    p.iommu()
        .map(domain, IOVA_A, a, PAGE_SIZE, Access::READ)
        .map_err(|e| err("map A", &e))?;
    p.iommu()
        .map(domain, IOVA_B, b, PAGE_SIZE, Access::WRITE)
        .map_err(|e| err("map B", &e))?;
    p.iommu().commit(domain).map_err(|e| err("commit", &e))?;
    e1.dma_to_device(IOVA_A, 0, LEN as u32)
        .map_err(|e| err("edu A->dev", &e))?;
    e1.dma_from_device(0, IOVA_B, LEN as u32)
        .map_err(|e| err("edu dev->B", &e))?;
    info!(
        target: "dmatest",
        "dmatest 1 map-dma: iova=0x{IOVA_A:x} buf=0x{a:x} iova_b=0x{IOVA_B:x} buf_b=0x{b:x} pattern={} result={}",
        hex(&pat),
        hex(&read_phys(b))
    );

    // 2. unmapped-blocked: the IOVA equals the canary's physical address, so DMA that
    //    bypassed translation would land on the canary.
    let c = page(1)?;
    let canary = pattern(2);
    write_phys(c, &canary);
    e1.dma_from_device(0, c, LEN as u32)
        .map_err(|e| err("edu dev->unmapped", &e))?;
    info!(
        target: "dmatest",
        "dmatest 2 unmapped-blocked: iova=0x{c:x} target=0x{c:x} canary={} after={} {} rid=0x{rid:04x} sent={}",
        hex(&canary),
        hex(&read_phys(c)),
        evidence(p),
        hex(&pat)
    );
    log_faults(p.iommu());

    // 3. unmap-invalidates: DMA works, unmap + commit, the same DMA is then blocked
    //    (QEMU caches translations: only a real invalidation stops it).
    let t = page(1)?;
    p.iommu()
        .map(domain, IOVA_UNMAP, t, PAGE_SIZE, rw)
        .map_err(|e| err("map T", &e))?;
    p.iommu().commit(domain).map_err(|e| err("commit", &e))?;
    e1.dma_from_device(0, IOVA_UNMAP, LEN as u32)
        .map_err(|e| err("edu dev->T", &e))?;
    let first = read_phys(t);
    let unmapped = p
        .iommu()
        .unmap(domain, IOVA_UNMAP, PAGE_SIZE)
        .map_err(|e| err("unmap T", &e))?;
    if unmapped != PAGE_SIZE {
        return Err(alloc::format!("unmap T returned {unmapped:#x} bytes"));
    }
    p.iommu().commit(domain).map_err(|e| err("commit", &e))?;
    let refill = pattern(3);
    write_phys(t, &refill);
    e1.dma_from_device(0, IOVA_UNMAP, LEN as u32)
        .map_err(|e| err("edu dev->T again", &e))?;
    info!(
        target: "dmatest",
        "dmatest 3 unmap-invalidates: iova=0x{IOVA_UNMAP:x} target=0x{t:x} first={} pattern={} second_target_before={} second_target_after={} {} sent={}",
        hex(&first),
        hex(&pat),
        hex(&refill),
        hex(&read_phys(t)),
        evidence(p),
        hex(&pat)
    );
    log_faults(p.iommu());

    // 4. readonly-blocks-write.
    let r = page(1)?;
    let before = pattern(4);
    write_phys(r, &before);
    p.iommu()
        .map(domain, IOVA_READONLY, r, PAGE_SIZE, Access::READ)
        .map_err(|e| err("map R", &e))?;
    p.iommu().commit(domain).map_err(|e| err("commit", &e))?;
    e1.dma_from_device(0, IOVA_READONLY, LEN as u32)
        .map_err(|e| err("edu dev->R", &e))?;
    info!(
        target: "dmatest",
        "dmatest 4 readonly-blocks-write: iova=0x{IOVA_READONLY:x} target=0x{r:x} before={} after={} {} sent={}",
        hex(&before),
        hex(&read_phys(r)),
        evidence(p),
        hex(&pat)
    );
    log_faults(p.iommu());

    // 5. superpage: a 2 MiB-aligned 2 MiB mapping is one leaf at level 2.
    const SUPER: u64 = 2 << 20;
    let s = buffer(SUPER / PAGE_SIZE, SUPER)
        .ok_or_else(|| String::from("no 2 MiB-aligned buffer below 256 MiB"))?;
    p.iommu()
        .map(domain, IOVA_SUPERPAGE, s, SUPER, rw)
        .map_err(|e| err("map superpage", &e))?;
    p.iommu().commit(domain).map_err(|e| err("commit", &e))?;
    let (pte, level, size) = p
        .leaf_entry(domain, IOVA_SUPERPAGE)
        .ok_or_else(|| String::from("superpage IOVA does not translate"))?;
    let offset = 0x1_2340 & !0x3f;
    e1.dma_from_device(0, IOVA_SUPERPAGE + offset, LEN as u32)
        .map_err(|e| err("edu dev->superpage", &e))?;
    info!(
        target: "dmatest",
        "dmatest 5 superpage: iova=0x{IOVA_SUPERPAGE:x} size=0x{SUPER:x} leaf_level={level} page_size=0x{size:x} pte=0x{pte:x} pattern={} result={} buf=0x{:x}",
        hex(&pat),
        hex(&read_phys(s + offset)),
        s + offset
    );

    // 6. never-attached: e2 has no context entry; its untranslated target is a canary.
    let q = page(1)?;
    let canary = pattern(6);
    write_phys(q, &canary);
    // Only a device-to-RAM transfer: a blocked read first would take the unit's single
    // fault record and hide the write fault this experiment is about.
    e2.dma_from_device(0, q, LEN as u32)
        .map_err(|e| err("edu2 dev->Q", &e))?;
    info!(
        target: "dmatest",
        "dmatest 6 never-attached: rid=0x{e2_rid:04x} target=0x{q:x} before={} after={} {}",
        hex(&canary),
        hex(&read_phys(q)),
        evidence(p)
    );
    log_faults(p.iommu());
    info!(target: "dmatest", "dmatest done: 6 experiments");
    Ok(())
}
