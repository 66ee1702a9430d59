//! How fast is the page-table engine (`sluice_iommu::pagetable`, here with VT-d
//! second-level entries), and how much table memory does it use, next to a well-known
//! CPU page-table mapper doing the same work?
//!
//! ```sh
//! cargo run --release -p sluice-vtd --example pagetable_bench
//! ```
//!
//! Both sides build 4-level tables on the host: `sluice_vtd::pagetable::SecondLevelTable`
//! over an arena of 4 KiB pages behind the `DmaMemory` trait (coherent: no cache flushes,
//! which a host cannot observe anyway), and the `x86_64` crate's `OffsetPageTable` over heap pages
//! with a physical offset of 0 (its TLB flushes are ignored). Same IOVAs, same physical
//! addresses, same leaf sizes; each side's table pages come from a preallocated pool, so
//! the global allocator is not what gets measured. The engine's unmap frees tables that
//! become empty; `OffsetPageTable::unmap` does not, so its row includes one
//! `clean_up_addr_range` over the range after the unmaps.
//!
//! "one call per leaf" rows drive both the same way (one map/unmap per page); "one call"
//! rows give the engine the whole range at once, which the CPU mapper has no API for.
//! Times are medians over several runs, per leaf and per 4 KiB of mapped memory.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use sluice_iommu::Access;
use sluice_vtd::hw::DmaMemory;
use sluice_vtd::pagetable::{PageSizes, PageTableConfig, SecondLevelTable};
use x86_64::structures::paging::mapper::CleanUp;
use x86_64::structures::paging::{
    FrameAllocator, FrameDeallocator, Mapper, OffsetPageTable, Page, PageSize, PageTable,
    PageTableFlags, PhysFrame, Size1GiB, Size2MiB, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
/// Where the mappings start (every workload fits in one top-level entry).
const IOVA: u64 = 0;
/// The physical addresses mapped (never touched, only written into entries).
const PADDR: u64 = 1 << 40;
const RUNS: usize = 9;
/// Table pages each side may hold at once (enough for 1 GiB of 4 KiB pages).
const POOL_PAGES: usize = 1024;

// ---------------------------------------------------------------------------------------
// The engine's memory: a pool of pages, "physical" address = BASE + index × 4 KiB.
// ---------------------------------------------------------------------------------------

struct ArenaMemory {
    pages: Vec<[u64; 512]>,
    free: Vec<usize>,
}

impl ArenaMemory {
    const BASE: u64 = 0x10_0000;

    fn new(pages: usize) -> Self {
        Self {
            pages: vec![[0; 512]; pages],
            free: (0..pages).rev().collect(),
        }
    }

    fn held(&self) -> usize {
        self.pages.len() - self.free.len()
    }

    fn index(paddr: u64) -> (usize, usize) {
        (
            ((paddr - Self::BASE) / K4) as usize,
            ((paddr % K4) / 8) as usize,
        )
    }
}

impl DmaMemory for ArenaMemory {
    fn alloc_zeroed(&mut self, pages: usize, _align: u64) -> Option<u64> {
        assert_eq!(pages, 1, "the engine allocates tables one page at a time");
        let index = self.free.pop()?;
        self.pages[index] = [0; 512];
        Some(Self::BASE + index as u64 * K4)
    }

    fn free(&mut self, paddr: u64, pages: usize) {
        for page in 0..pages as u64 {
            self.free.push(Self::index(paddr + page * K4).0);
        }
    }

    fn read_u64(&self, paddr: u64) -> u64 {
        let (page, word) = Self::index(paddr);
        self.pages[page][word]
    }

    fn write_u64(&mut self, paddr: u64, value: u64) {
        let (page, word) = Self::index(paddr);
        self.pages[page][word] = value;
    }

    fn flush(&mut self, _paddr: u64, _len: usize) {}

    fn barrier(&self) {
        fence(Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------
// The CPU mapper's memory: a pool of 4 KiB-aligned heap pages whose addresses serve as
// physical addresses (offset 0).
// ---------------------------------------------------------------------------------------

struct FramePool {
    base: *mut u8,
    free: Vec<usize>,
    pages: usize,
}

impl FramePool {
    fn layout(pages: usize) -> Layout {
        Layout::from_size_align(pages * K4 as usize, K4 as usize).expect("valid layout")
    }

    fn new(pages: usize) -> Self {
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { alloc_zeroed(Self::layout(pages)) };
        assert!(!base.is_null(), "out of memory");
        Self {
            base,
            free: (0..pages).rev().collect(),
            pages,
        }
    }

    fn held(&self) -> usize {
        self.pages - self.free.len()
    }

    fn take(&mut self) -> Option<u64> {
        let index = self.free.pop()?;
        Some(self.base as u64 + index as u64 * K4)
    }
}

impl Drop for FramePool {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { dealloc(self.base, Self::layout(self.pages)) }
    }
}

// SAFETY: every frame handed out is an unused, 4 KiB-aligned page of the pool.
unsafe impl FrameAllocator<Size4KiB> for FramePool {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let address = self.take()?;
        Some(PhysFrame::containing_address(PhysAddr::new(address)))
    }
}

impl FrameDeallocator<Size4KiB> for FramePool {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame<Size4KiB>) {
        let offset = frame.start_address().as_u64() - self.base as u64;
        self.free.push((offset / K4) as usize);
    }
}

// ---------------------------------------------------------------------------------------
// One workload on each side: map `count` leaves of `leaf` bytes, then unmap them.
// ---------------------------------------------------------------------------------------

/// Time taken and table pages held while everything was mapped.
struct Sample {
    map: Duration,
    unmap: Duration,
    tables: usize,
}

/// The engine, one map/unmap call per leaf (`bulk`: one call for the whole range). The
/// physical base is offset by `skew` to forbid larger leaves than `leaf`.
fn sluice(mem: &mut ArenaMemory, leaf: u64, count: u64, bulk: bool, skew: u64) -> Sample {
    let config = PageTableConfig {
        levels: 4,
        superpages: PageSizes::all(),
        coherent: true,
    };
    let mut table = SecondLevelTable::new(mem, config).expect("root");
    let access = Access::READ | Access::WRITE;
    let paddr = PADDR + skew;
    let start = Instant::now();
    if bulk {
        table
            .map(mem, IOVA, paddr, leaf * count, access)
            .expect("map");
    } else {
        for i in 0..count {
            let offset = i * leaf;
            table
                .map(mem, IOVA + offset, paddr + offset, leaf, access)
                .expect("map");
        }
    }
    let map = start.elapsed();
    let tables = table.table_pages();
    let start = Instant::now();
    if bulk {
        table.unmap(mem, IOVA, leaf * count).expect("unmap");
    } else {
        for i in 0..count {
            table.unmap(mem, IOVA + i * leaf, leaf).expect("unmap");
        }
    }
    table.reclaim(mem);
    let unmap = start.elapsed();
    assert_eq!(table.table_pages(), 1, "everything freed");
    table.destroy(mem);
    assert_eq!(mem.held(), 0);
    Sample { map, unmap, tables }
}

/// `OffsetPageTable`, one `map_to`/`unmap` per leaf, then `clean_up_addr_range`.
fn cpu<S: PageSize + std::fmt::Debug>(pool: &mut FramePool, count: u64) -> Sample
where
    for<'a> OffsetPageTable<'a>: Mapper<S>,
{
    let root = pool.take().expect("root frame");
    // SAFETY: `root` is a zeroed (fresh pool, or cleaned up and zeroed below), aligned,
    // otherwise unused page of the pool, which outlives the mapper.
    let level_4 = unsafe { &mut *(root as *mut PageTable) };
    level_4.zero();
    // SAFETY: every frame the mapper will see is a pool page whose address is its
    // virtual address (offset 0); leaf frames are never dereferenced.
    let mut mapper = unsafe { OffsetPageTable::new(level_4, VirtAddr::new(0)) };
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
    let page = |i: u64| Page::<S>::containing_address(VirtAddr::new(IOVA + i * S::SIZE));
    let start = Instant::now();
    for i in 0..count {
        let frame = PhysFrame::<S>::containing_address(PhysAddr::new(PADDR + i * S::SIZE));
        // SAFETY: the mapped frames are never accessed through this table (it is never
        // loaded into CR3); the mapping is new, so nothing aliases.
        unsafe { mapper.map_to(page(i), frame, flags, pool) }
            .expect("map")
            .ignore();
    }
    let map = start.elapsed();
    let tables = pool.held();
    let start = Instant::now();
    for i in 0..count {
        mapper.unmap(page(i)).expect("unmap").1.ignore();
    }
    let first = Page::<Size4KiB>::containing_address(VirtAddr::new(IOVA));
    let last = Page::<Size4KiB>::containing_address(VirtAddr::new(IOVA + count * S::SIZE - 1));
    // SAFETY: the table frames belong to this table alone.
    unsafe { mapper.clean_up_addr_range(Page::range_inclusive(first, last), pool) };
    let unmap = start.elapsed();
    assert_eq!(pool.held(), 1, "everything freed");
    pool.free.push(((root - pool.base as u64) / K4) as usize);
    Sample { map, unmap, tables }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

struct Row {
    workload: String,
    engine: &'static str,
    bulk: bool,
    leaf: u64,
    count: u64,
    map: Duration,
    unmap: Duration,
}

fn measure(
    workload: &str,
    engine: &'static str,
    bulk: bool,
    leaf: u64,
    count: u64,
    mut run: impl FnMut() -> Sample,
) -> Row {
    run(); // warm-up
    let samples: Vec<Sample> = (0..RUNS).map(|_| run()).collect();
    Row {
        workload: workload.to_string(),
        engine,
        bulk,
        leaf,
        count,
        map: median(samples.iter().map(|s| s.map).collect()),
        unmap: median(samples.iter().map(|s| s.unmap).collect()),
    }
}

fn ns_per(duration: Duration, count: u64) -> String {
    // One decimal, or three significant digits below 1 ns.
    let ns = duration.as_nanos() as f64 / count as f64;
    let decimals = if ns >= 1.0 || ns <= 0.0 {
        1
    } else {
        (2 - ns.log10().floor() as i32).clamp(1, 9) as usize
    };
    format!("{ns:.decimals$}")
}

fn size_name(bytes: u64) -> String {
    match bytes {
        b if b >= G1 => format!("{} GiB", b / G1),
        b if b >= M2 / 2 => format!("{} MiB", b >> 20),
        b => format!("{} KiB", b >> 10),
    }
}

fn main() {
    let mut arena = ArenaMemory::new(POOL_PAGES);
    let mut frames = FramePool::new(POOL_PAGES);
    const SLUICE: &str = "Sluice VT-d engine";
    const CPU: &str = "x86_64 OffsetPageTable";

    // (leaf size, leaves per run, physical skew that keeps larger leaves out)
    let workloads = [(K4, 16384, K4), (M2, 4096, M2), (G1, 512, 0)];
    let mut rows = Vec::new();
    for (leaf, count, skew) in workloads {
        let name = format!("{} leaves, {}", size_name(leaf), size_name(leaf * count));
        rows.push(measure(&name, SLUICE, false, leaf, count, || {
            sluice(&mut arena, leaf, count, false, skew)
        }));
        rows.push(measure(&name, CPU, false, leaf, count, || match leaf {
            K4 => cpu::<Size4KiB>(&mut frames, count),
            M2 => cpu::<Size2MiB>(&mut frames, count),
            _ => cpu::<Size1GiB>(&mut frames, count),
        }));
        rows.push(measure(&name, SLUICE, true, leaf, count, || {
            sluice(&mut arena, leaf, count, true, skew)
        }));
    }

    // Table memory for exactly 1 GiB mapped with each leaf size.
    let mut memory = Vec::new();
    for (leaf, skew) in [(K4, K4), (M2, M2), (G1, 0)] {
        let count = G1 / leaf;
        let ours = sluice(&mut arena, leaf, count, true, skew).tables;
        let theirs = match leaf {
            K4 => cpu::<Size4KiB>(&mut frames, count),
            M2 => cpu::<Size2MiB>(&mut frames, count),
            _ => cpu::<Size1GiB>(&mut frames, count),
        }
        .tables;
        memory.push((leaf, ours, theirs));
    }

    let cpu_name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    println!("Page-table map/unmap, 4-level tables, median of {RUNS} runs ({cpu_name})");
    println!();
    println!(
        "| workload | engine | calls | map ns/leaf | map ns/4 KiB | unmap ns/leaf | unmap ns/4 KiB |"
    );
    println!("|---|---|---|---:|---:|---:|---:|");
    for row in &rows {
        let calls = if row.bulk {
            "one for the range"
        } else {
            "one per leaf"
        };
        let small_pages = row.count * row.leaf / K4;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.workload,
            row.engine,
            calls,
            ns_per(row.map, row.count),
            ns_per(row.map, small_pages),
            ns_per(row.unmap, row.count),
            ns_per(row.unmap, small_pages),
        );
    }
    println!();
    println!(
        "| leaf size | {SLUICE}: table KiB per GiB mapped | {CPU}: table KiB per GiB mapped |"
    );
    println!("|---|---:|---:|");
    for (leaf, ours, theirs) in memory {
        println!("| {} | {} | {} |", size_name(leaf), ours * 4, theirs * 4);
    }
    println!();
    println!(
        "Table pages include the root; after unmapping, both sides are back to the root alone."
    );
}
