//! How IOMMU code touches the machine: two small traits, so the same code runs on the
//! host against fakes (unit tests, property tests, benchmarks) and in the kernel against
//! real memory and MMIO.

/// Memory the remapping hardware reads: root/context tables, second-level page tables,
/// the invalidation queue, status words. Physical addresses throughout.
pub trait DmaMemory {
    /// `pages` zeroed, physically contiguous 4 KiB pages whose address is a multiple of
    /// `align` bytes (a power of two, at least 4096). `None` when memory is exhausted.
    fn alloc_zeroed(&mut self, pages: usize, align: u64) -> Option<u64>;

    /// Give back pages from `alloc_zeroed` (same `paddr`, same `pages`).
    fn free(&mut self, paddr: u64, pages: usize);

    /// Read the naturally aligned 64-bit word at `paddr` (volatile: the hardware may
    /// write it, e.g. an invalidation-wait status).
    fn read_u64(&self, paddr: u64) -> u64;

    /// Write the naturally aligned 64-bit word at `paddr` (volatile).
    fn write_u64(&mut self, paddr: u64, value: u64);

    /// Write back the CPU cache lines covering `[paddr, paddr + len)` so a non-coherent
    /// unit (ECAP.C = 0) sees what was written. A no-op where caches are coherent.
    fn flush(&mut self, paddr: u64, len: usize);

    /// Order every earlier write before every later one (as seen by the hardware).
    fn barrier(&self);
}

/// A unit's register block (MMIO). Offsets are byte offsets from the unit's base.
pub trait RegisterBlock {
    fn read32(&self, offset: usize) -> u32;
    fn read64(&self, offset: usize) -> u64;
    fn write32(&mut self, offset: usize, value: u32);
    fn write64(&mut self, offset: usize, value: u64);
}

/// A fake [`DmaMemory`] for host tests: sparse pages in a map, with counters.
#[cfg(any(test, feature = "fake"))]
pub mod fake {
    extern crate alloc;
    use alloc::collections::BTreeMap;
    use core::cell::Cell;

    use super::DmaMemory;

    #[derive(Default)]
    pub struct FakeDmaMemory {
        /// 4 KiB pages by physical address, as 512 words.
        pub pages: BTreeMap<u64, [u64; 512]>,
        next: u64,
        /// Pages currently allocated.
        pub allocated: usize,
        /// Allocation limit in pages (None: unlimited).
        pub limit: Option<usize>,
        pub flushed_lines: usize,
        pub barriers: Cell<usize>,
    }

    impl FakeDmaMemory {
        pub fn new() -> Self {
            Self {
                next: 0x10_0000,
                ..Self::default()
            }
        }
    }

    impl DmaMemory for FakeDmaMemory {
        fn alloc_zeroed(&mut self, pages: usize, align: u64) -> Option<u64> {
            if self.limit.is_some_and(|l| self.allocated + pages > l) || pages == 0 {
                return None;
            }
            let align = align.max(4096);
            let base = self.next.div_ceil(align) * align;
            for i in 0..pages as u64 {
                self.pages.insert(base + i * 4096, [0; 512]);
            }
            self.next = base + pages as u64 * 4096;
            self.allocated += pages;
            Some(base)
        }

        fn free(&mut self, paddr: u64, pages: usize) {
            for i in 0..pages as u64 {
                assert!(
                    self.pages.remove(&(paddr + i * 4096)).is_some(),
                    "double free of {paddr:#x}"
                );
            }
            self.allocated -= pages;
        }

        fn read_u64(&self, paddr: u64) -> u64 {
            let page = self
                .pages
                .get(&(paddr & !0xfff))
                .unwrap_or_else(|| panic!("read of unallocated {paddr:#x}"));
            page[((paddr & 0xfff) / 8) as usize]
        }

        fn write_u64(&mut self, paddr: u64, value: u64) {
            let page = self
                .pages
                .get_mut(&(paddr & !0xfff))
                .unwrap_or_else(|| panic!("write of unallocated {paddr:#x}"));
            page[((paddr & 0xfff) / 8) as usize] = value;
        }

        fn flush(&mut self, paddr: u64, len: usize) {
            let first = paddr / 64;
            let last = (paddr + len.max(1) as u64 - 1) / 64;
            self.flushed_lines += (last - first + 1) as usize;
        }

        fn barrier(&self) {
            self.barriers.set(self.barriers.get() + 1);
        }
    }
}
