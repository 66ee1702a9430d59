//! Physical frame allocator.
//!
//! Free memory is a sorted list of disjoint, page-aligned ranges kept in a fixed array, so
//! it works before the heap exists. IOMMU tables need physically contiguous, aligned runs
//! (a context table is one page, a command buffer may be many), so allocation is "n pages
//! at this alignment", first fit. Freed runs coalesce with their neighbours; freeing memory
//! that is already free is refused (a double free would hand the same frame out twice).

use sluice_boot::start_info::{MemoryRegion, MemoryType};

pub const PAGE_SIZE: u64 = 4096;
/// Free ranges tracked at most; past this, freed memory that cannot merge is refused.
pub const MAX_FREE_RANGES: usize = 256;

/// `[start, end)`, both page aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    pub start: u64,
    pub end: u64,
}

impl PhysRange {
    pub fn pages(&self) -> u64 {
        (self.end - self.start) / PAGE_SIZE
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The range list is full; the memory stays unusable.
    TooFragmented,
    /// Part of the range is already free.
    DoubleFree { addr: u64 },
    /// Address or size not page aligned, zero, or wrapping.
    BadRange,
}

pub struct FrameAllocator {
    free: [PhysRange; MAX_FREE_RANGES],
    len: usize,
}

impl Default for FrameAllocator {
    fn default() -> Self {
        Self::new()
    }
}

const fn align_up(x: u64, align: u64) -> Option<u64> {
    match x.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

impl FrameAllocator {
    pub const fn new() -> Self {
        Self {
            free: [PhysRange { start: 0, end: 0 }; MAX_FREE_RANGES],
            len: 0,
        }
    }

    /// Build from a firmware memory map: RAM entries clipped to `[min_addr, max_addr)`,
    /// minus every non-RAM entry (firmware maps can overlap: reserved wins) and minus the
    /// `occupied` ranges (kernel image, loader structures, ACPI tables, modules).
    pub fn from_memory_map(
        map: &[MemoryRegion],
        occupied: impl IntoIterator<Item = (u64, u64)>,
        min_addr: u64,
        max_addr: u64,
    ) -> (Self, u64) {
        let mut fa = Self::new();
        let mut lost = 0;
        for r in map.iter().filter(|r| r.kind == MemoryType::Ram) {
            let start = r.base.max(min_addr);
            let end = r.end().min(max_addr);
            if start < end && fa.add_free(start, end).is_err() {
                lost += end - start;
            }
        }
        for r in map.iter().filter(|r| r.kind != MemoryType::Ram) {
            fa.reserve(r.base, r.end());
        }
        for (base, len) in occupied {
            fa.reserve(base, base.saturating_add(len));
        }
        (fa, lost)
    }

    /// The free ranges, sorted.
    pub fn ranges(&self) -> &[PhysRange] {
        &self.free[..self.len]
    }

    pub fn free_bytes(&self) -> u64 {
        self.ranges().iter().map(|r| r.end - r.start).sum()
    }

    /// Add `[start, end)` (shrunk inward to page boundaries) as free memory.
    pub fn add_free(&mut self, start: u64, end: u64) -> Result<(), FrameError> {
        let Some(start) = align_up(start, PAGE_SIZE) else {
            return Ok(());
        };
        let end = end & !(PAGE_SIZE - 1);
        if start >= end {
            return Ok(());
        }
        self.insert(PhysRange { start, end })
    }

    /// Remove `[start, end)` (grown outward to page boundaries) from the free memory.
    pub fn reserve(&mut self, start: u64, end: u64) {
        let start = start & !(PAGE_SIZE - 1);
        let end = align_up(end, PAGE_SIZE).unwrap_or(!(PAGE_SIZE - 1));
        if start >= end {
            return;
        }
        let mut i = 0;
        while i < self.len {
            let r = self.free[i];
            if r.end <= start || r.start >= end {
                i += 1;
                continue;
            }
            let (cut_start, cut_end) = (start.max(r.start), end.min(r.end));
            match self.carve(i, cut_start, cut_end) {
                Some(remaining) => i += remaining,
                None => {
                    // No room to split: keep the larger side. The other is lost, which
                    // is safe (never handed out twice), just wasteful.
                    let left = PhysRange {
                        start: r.start,
                        end: cut_start,
                    };
                    let right = PhysRange {
                        start: cut_end,
                        end: r.end,
                    };
                    self.free[i] = if left.pages() >= right.pages() {
                        left
                    } else {
                        right
                    };
                    i += 1;
                }
            }
        }
    }

    /// Allocate `pages` contiguous frames whose start is a multiple of `align` bytes
    /// (a power of two, at least one page). Returns the physical address.
    pub fn alloc(&mut self, pages: u64, align: u64) -> Option<u64> {
        if pages == 0 || !align.is_power_of_two() {
            return None;
        }
        let align = align.max(PAGE_SIZE);
        let size = pages.checked_mul(PAGE_SIZE)?;
        for i in 0..self.len {
            let r = self.free[i];
            let Some(start) = align_up(r.start, align) else {
                continue;
            };
            let Some(end) = start.checked_add(size) else {
                continue;
            };
            if end > r.end {
                continue;
            }
            if self.carve(i, start, end).is_some() {
                return Some(start);
            }
        }
        None
    }

    /// Remove `[start, end)`, which lies within free range `i`, from it. Returns how many
    /// ranges now stand where range `i` stood (0, 1 or 2), or `None`, changing nothing,
    /// when the cut needs a split and the table is full.
    fn carve(&mut self, i: usize, start: u64, end: u64) -> Option<usize> {
        let r = self.free[i];
        let left = PhysRange {
            start: r.start,
            end: start,
        };
        let right = PhysRange {
            start: end,
            end: r.end,
        };
        match (left.start < left.end, right.start < right.end) {
            (false, false) => {
                self.remove_at(i);
                Some(0)
            }
            (true, false) => {
                self.free[i] = left;
                Some(1)
            }
            (false, true) => {
                self.free[i] = right;
                Some(1)
            }
            (true, true) if self.len < MAX_FREE_RANGES => {
                self.free[i] = left;
                self.insert_at(i + 1, right);
                Some(2)
            }
            (true, true) => None,
        }
    }

    /// Return `pages` frames at `addr` to the allocator.
    pub fn free(&mut self, addr: u64, pages: u64) -> Result<(), FrameError> {
        if addr % PAGE_SIZE != 0 || pages == 0 {
            return Err(FrameError::BadRange);
        }
        let end = pages
            .checked_mul(PAGE_SIZE)
            .and_then(|s| addr.checked_add(s))
            .ok_or(FrameError::BadRange)?;
        self.insert(PhysRange { start: addr, end })
    }

    /// Insert a range, refusing overlap, merging with touching neighbours.
    fn insert(&mut self, new: PhysRange) -> Result<(), FrameError> {
        // First index whose range starts at or after the new one.
        let pos = self.ranges().partition_point(|r| r.start < new.start);
        if pos > 0 && self.free[pos - 1].end > new.start {
            return Err(FrameError::DoubleFree { addr: new.start });
        }
        if pos < self.len && self.free[pos].start < new.end {
            return Err(FrameError::DoubleFree {
                addr: self.free[pos].start,
            });
        }
        let merge_left = pos > 0 && self.free[pos - 1].end == new.start;
        let merge_right = pos < self.len && self.free[pos].start == new.end;
        match (merge_left, merge_right) {
            (true, true) => {
                self.free[pos - 1].end = self.free[pos].end;
                self.remove_at(pos);
            }
            (true, false) => self.free[pos - 1].end = new.end,
            (false, true) => self.free[pos].start = new.start,
            (false, false) => {
                if self.len == MAX_FREE_RANGES {
                    return Err(FrameError::TooFragmented);
                }
                self.insert_at(pos, new);
            }
        }
        Ok(())
    }

    fn insert_at(&mut self, pos: usize, r: PhysRange) {
        self.free.copy_within(pos..self.len, pos + 1);
        self.free[pos] = r;
        self.len += 1;
    }

    fn remove_at(&mut self, pos: usize) {
        self.free.copy_within(pos + 1..self.len, pos);
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn ram(base: u64, size: u64) -> MemoryRegion {
        MemoryRegion {
            base,
            size,
            kind: MemoryType::Ram,
        }
    }

    #[test]
    fn builds_from_memory_map_excluding_reserved_and_occupied() {
        let map = [
            ram(0, 0x9fc00),
            ram(MIB, 127 * MIB),
            MemoryRegion {
                base: 0x7000000,
                size: MIB,
                kind: MemoryType::Reserved,
            }, // overlaps RAM
        ];
        let kernel = (MIB, 0x40000);
        let (fa, lost) =
            FrameAllocator::from_memory_map(&map, [kernel, (0x0200_0000, 5)], MIB, 4 << 30);
        assert_eq!(lost, 0);
        assert_eq!(
            fa.ranges(),
            &[
                PhysRange {
                    start: MIB + 0x40000,
                    end: 0x2000000
                },
                PhysRange {
                    start: 0x2001000,
                    end: 0x7000000
                },
                PhysRange {
                    start: 0x7100000,
                    end: 128 * MIB
                },
            ]
        );
    }

    #[test]
    fn aligned_contiguous_allocation() {
        let mut fa = FrameAllocator::new();
        fa.add_free(0x1000, 0x400000).unwrap();
        let a = fa.alloc(1, PAGE_SIZE).unwrap();
        assert_eq!(a, 0x1000);
        let b = fa.alloc(16, 0x200000).unwrap();
        assert_eq!(b, 0x200000);
        // The hole below the 2 MiB run is still free and used next.
        assert_eq!(fa.alloc(2, PAGE_SIZE).unwrap(), 0x2000);
        assert_eq!(
            fa.free_bytes(),
            0x400000 - 0x1000 - 0x1000 - 16 * 0x1000 - 0x2000
        );
        // Nothing left that is 4 MiB aligned and 1 MiB long.
        assert_eq!(fa.alloc(256, 0x400000), None);
        assert_eq!(fa.alloc(0, PAGE_SIZE), None);
        assert_eq!(fa.alloc(1, 3000), None);
    }

    #[test]
    fn free_merges_and_refuses_double_free() {
        let mut fa = FrameAllocator::new();
        fa.add_free(0, 0x10000).unwrap();
        let a = fa.alloc(4, PAGE_SIZE).unwrap();
        let b = fa.alloc(4, PAGE_SIZE).unwrap();
        fa.free(a, 4).unwrap();
        assert_eq!(fa.free(a, 1), Err(FrameError::DoubleFree { addr: a }));
        fa.free(b, 4).unwrap();
        assert_eq!(
            fa.ranges(),
            &[PhysRange {
                start: 0,
                end: 0x10000
            }]
        );
        assert_eq!(
            fa.free(0x10000 - 0x1000, 2),
            Err(FrameError::DoubleFree { addr: 0xf000 })
        );
        assert_eq!(fa.free(0x123, 1), Err(FrameError::BadRange));
        assert_eq!(fa.free(!0xfff, 2), Err(FrameError::BadRange));
    }

    #[test]
    fn exhaustion_returns_none() {
        let mut fa = FrameAllocator::new();
        fa.add_free(0x1000, 0x3000).unwrap();
        assert!(fa.alloc(1, PAGE_SIZE).is_some());
        assert!(fa.alloc(1, PAGE_SIZE).is_some());
        assert_eq!(fa.alloc(1, PAGE_SIZE), None);
    }

    #[test]
    fn fragmentation_limit_never_double_hands_out() {
        let mut fa = FrameAllocator::new();
        fa.add_free(0, (MAX_FREE_RANGES as u64 * 4) * PAGE_SIZE)
            .unwrap();
        // Punch holes until the table is full, then keep punching.
        for i in 0..(MAX_FREE_RANGES as u64 * 2) {
            fa.reserve(
                i * 2 * PAGE_SIZE + PAGE_SIZE,
                i * 2 * PAGE_SIZE + 2 * PAGE_SIZE,
            );
        }
        assert!(fa.ranges().len() <= MAX_FREE_RANGES);
        let mut seen = std::collections::BTreeSet::new();
        while let Some(a) = fa.alloc(1, PAGE_SIZE) {
            assert!(seen.insert(a), "frame {a:#x} handed out twice");
            assert_eq!((a / PAGE_SIZE) % 2, 0, "reserved frame {a:#x} handed out");
        }
    }

    #[test]
    fn hostile_map_entries_do_not_panic() {
        let map = [
            ram(u64::MAX - 0x1000, u64::MAX),
            ram(0x5000, 0),
            ram(0x10_0fff, 1),
        ];
        let (fa, _) = FrameAllocator::from_memory_map(&map, [(u64::MAX, u64::MAX)], 0, u64::MAX);
        assert!(
            fa.ranges()
                .iter()
                .all(|r| r.start < r.end && r.start % PAGE_SIZE == 0)
        );
    }
}
