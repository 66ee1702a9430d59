//! The guest's own page tables: map device MMIO next to the identity-mapped RAM.
//!
//! A guest starts on 4-level tables the hypervisor built in the top 2 MiB of its RAM
//! (`kernel/src/virt/guest_memory.rs`): CR3 → PML4 → PDPT → one page directory per GiB
//! of RAM, identity-mapping exactly the RAM with 2 MiB pages (present, writable,
//! supervisor). Nothing else is mapped, so a guest that has had a device region put at
//! guest-physical `gpa` (VFIO `DEVICE_MAP_REGION`) must map it itself before it can
//! touch it: [`map_mmio`] does that, identity (virtual = guest-physical), uncached
//! (PCD | PWT: PAT entry 3, UC, with the default PAT), present and writable. It uses a
//! 2 MiB page where the range covers a whole aligned 2 MiB and 4 KiB pages elsewhere,
//! allocates missing tables (zeroed 4 KiB pages from the heap, never freed), splits a
//! 2 MiB page it has to map 4 KiB pages inside, and invalidates the TLB afterwards.
//!
//! The table walk is generic over [`TableMemory`] so that host tests run it on fake
//! tables; in the guest, tables are read and written directly (identity map).

use core::fmt;

/// 4 KiB.
pub const PAGE_4K: u64 = 0x1000;
/// 2 MiB.
pub const PAGE_2M: u64 = 0x20_0000;

/// Entry bits.
pub const PRESENT: u64 = 1 << 0;
pub const WRITABLE: u64 = 1 << 1;
pub const USER: u64 = 1 << 2;
/// Page-level write-through (PAT index bit 0).
pub const PWT: u64 = 1 << 3;
/// Page-level cache disable (PAT index bit 1).
pub const PCD: u64 = 1 << 4;
pub const ACCESSED: u64 = 1 << 5;
pub const DIRTY: u64 = 1 << 6;
/// In a PDPT or PD entry: the entry maps a 1 GiB / 2 MiB page.
pub const PAGE_SIZE: u64 = 1 << 7;
pub const GLOBAL: u64 = 1 << 8;
/// PAT index bit 2 of a 4 KiB page (bit 7 of a PTE).
pub const PAT_4K: u64 = 1 << 7;
/// PAT index bit 2 of a 2 MiB / 1 GiB page.
pub const PAT_LARGE: u64 = 1 << 12;
pub const NO_EXECUTE: u64 = 1 << 63;
/// Physical address bits of an entry pointing to a table or a 4 KiB page.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Physical address bits of a 2 MiB page.
pub const ADDR_MASK_2M: u64 = 0x000f_ffff_ffe0_0000;

/// What a leaf of [`map_mmio`] gets: present, writable, uncached.
pub const MMIO_FLAGS: u64 = PRESENT | WRITABLE | PWT | PCD;
/// What a new table entry (PML4E, PDPTE, PDE → table) gets.
const TABLE_FLAGS: u64 = PRESENT | WRITABLE;
/// Addresses a 4-level table maps without sign extension (the lower canonical half).
pub const ADDRESS_LIMIT: u64 = 1 << 47;

/// Access to page tables by physical address.
pub trait TableMemory {
    /// Entry `index` (0..512) of the table at `table`.
    fn read(&self, table: u64, index: usize) -> u64;
    /// Writes entry `index` of the table at `table`.
    fn write(&mut self, table: u64, index: usize, value: u64);
    /// A new zeroed, 4 KiB-aligned table; its physical address.
    fn alloc_table(&mut self) -> Option<u64>;
}

/// Why a range could not be mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// `size` is 0.
    Empty,
    /// `gpa` or `size` is not a multiple of 4 KiB.
    Unaligned { gpa: u64, size: u64 },
    /// The range wraps or ends above [`ADDRESS_LIMIT`].
    OutOfRange { gpa: u64, size: u64 },
    /// A 1 GiB page covers `va` (never split here).
    HugePage { va: u64 },
    /// No memory for a table. Pages before `va` are mapped.
    NoMemory { va: u64 },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Empty => write!(f, "nothing to map (size 0)"),
            Self::Unaligned { gpa, size } => write!(
                f,
                "{gpa:#x}+{size:#x} is not 4 KiB aligned (address and size)"
            ),
            Self::OutOfRange { gpa, size } => write!(
                f,
                "{gpa:#x}+{size:#x} wraps or ends above {ADDRESS_LIMIT:#x} (4-level paging)"
            ),
            Self::HugePage { va } => write!(f, "{va:#x} lies in a 1 GiB page (not split)"),
            Self::NoMemory { va } => write!(f, "no memory for a page table at {va:#x}"),
        }
    }
}

/// What [`map_identity`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapStats {
    /// 2 MiB leaves written.
    pub pages_2m: u64,
    /// 4 KiB leaves written.
    pub pages_4k: u64,
    /// Tables allocated (PDPT, PD, PT; split tables included).
    pub tables: u64,
    /// 2 MiB pages split into 512 4 KiB pages to map inside them.
    pub splits: u64,
}

impl fmt::Display for MapStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} x 2 MiB + {} x 4 KiB pages, {} new table(s), {} 2 MiB page(s) split",
            self.pages_2m, self.pages_4k, self.tables, self.splits
        )
    }
}

/// A leaf found by [`lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Physical address `va` translates to.
    pub pa: u64,
    /// Page size (4 KiB, 2 MiB or 1 GiB).
    pub size: u64,
    /// The leaf entry as it is.
    pub entry: u64,
}

impl Leaf {
    /// Whether the page is uncached (PCD and PWT set, PAT bit clear: UC with the
    /// default PAT).
    pub fn uncached(&self) -> bool {
        let pat = if self.size == PAGE_4K {
            PAT_4K
        } else {
            PAT_LARGE
        };
        self.entry & (PCD | PWT) == (PCD | PWT) && self.entry & pat == 0
    }
}

fn index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * level)) & 0x1ff) as usize
}

/// The table entry `table[idx]` points to, creating the table if missing; ensures the
/// entry is writable. `None` when it maps a large page (the caller decides).
fn next_table<M: TableMemory>(
    mem: &mut M,
    table: u64,
    idx: usize,
    stats: &mut MapStats,
    va: u64,
) -> Result<Option<u64>, MapError> {
    let e = mem.read(table, idx);
    if e & PRESENT == 0 {
        let t = mem.alloc_table().ok_or(MapError::NoMemory { va })?;
        stats.tables += 1;
        mem.write(table, idx, t | TABLE_FLAGS);
        return Ok(Some(t));
    }
    if e & PAGE_SIZE != 0 {
        return Ok(None);
    }
    if e & WRITABLE == 0 {
        mem.write(table, idx, e | WRITABLE);
    }
    Ok(Some(e & ADDR_MASK))
}

/// Replaces the 2 MiB page in `pd[idx]` by a page table mapping the same 512 4 KiB
/// pages with the same attributes.
fn split_2m<M: TableMemory>(
    mem: &mut M,
    pd: u64,
    idx: usize,
    stats: &mut MapStats,
    va: u64,
) -> Result<u64, MapError> {
    let e = mem.read(pd, idx);
    let pt = mem.alloc_table().ok_or(MapError::NoMemory { va })?;
    stats.tables += 1;
    stats.splits += 1;
    let attrs =
        e & (PRESENT | WRITABLE | USER | PWT | PCD | ACCESSED | DIRTY | GLOBAL | NO_EXECUTE);
    let pat = if e & PAT_LARGE != 0 { PAT_4K } else { 0 };
    let base = e & ADDR_MASK_2M;
    for i in 0..512 {
        mem.write(pt, i, (base + i as u64 * PAGE_4K) | attrs | pat);
    }
    mem.write(pd, idx, pt | (e & (PRESENT | WRITABLE | USER)) | WRITABLE);
    Ok(pt)
}

/// Maps `[gpa, gpa + size)` identity with leaf entries `gpa | flags` in the 4-level
/// tables at `root` (`flags` without [`PAGE_SIZE`]/[`PAT_4K`]: they are set as the
/// page size needs). Whatever was mapped there before is replaced. `invalidate(va)` is
/// called for every leaf written (and for each split 2 MiB page); the caller flushes
/// the TLB (reloading CR3) afterwards.
pub fn map_identity<M: TableMemory>(
    mem: &mut M,
    root: u64,
    gpa: u64,
    size: u64,
    flags: u64,
    invalidate: &mut dyn FnMut(u64),
) -> Result<MapStats, MapError> {
    if size == 0 {
        return Err(MapError::Empty);
    }
    if gpa % PAGE_4K != 0 || size % PAGE_4K != 0 {
        return Err(MapError::Unaligned { gpa, size });
    }
    let end = match gpa.checked_add(size) {
        Some(e) if e <= ADDRESS_LIMIT => e,
        _ => return Err(MapError::OutOfRange { gpa, size }),
    };
    let flags = flags & !(PAGE_SIZE | PAT_LARGE) & !ADDR_MASK;
    let mut stats = MapStats::default();
    let mut va = gpa;
    while va < end {
        let pdpt = next_table(mem, root & ADDR_MASK, index(va, 3), &mut stats, va)?
            .ok_or(MapError::HugePage { va })?;
        let pd = next_table(mem, pdpt, index(va, 2), &mut stats, va)?
            .ok_or(MapError::HugePage { va })?;
        let pde_idx = index(va, 1);
        let pde = mem.read(pd, pde_idx);
        let pde_is_table = pde & PRESENT != 0 && pde & PAGE_SIZE == 0;
        if va % PAGE_2M == 0 && end - va >= PAGE_2M && !pde_is_table {
            mem.write(pd, pde_idx, va | flags | PAGE_SIZE);
            invalidate(va);
            stats.pages_2m += 1;
            va += PAGE_2M;
            continue;
        }
        let pt = match next_table(mem, pd, pde_idx, &mut stats, va)? {
            Some(pt) => pt,
            None => {
                let pt = split_2m(mem, pd, pde_idx, &mut stats, va)?;
                invalidate(va & !(PAGE_2M - 1));
                pt
            }
        };
        // Fill this page table as far as the range goes.
        let stop = end.min((va | (PAGE_2M - 1)) + 1);
        while va < stop {
            mem.write(pt, index(va, 0), va | flags);
            invalidate(va);
            stats.pages_4k += 1;
            va += PAGE_4K;
        }
    }
    Ok(stats)
}

/// The leaf that maps `va` in the tables at `root`, if any.
pub fn lookup<M: TableMemory>(mem: &M, root: u64, va: u64) -> Option<Leaf> {
    let mut table = root & ADDR_MASK;
    for level in (0..4).rev() {
        let e = mem.read(table, index(va, level));
        if e & PRESENT == 0 {
            return None;
        }
        let size = 1u64 << (12 + 9 * level);
        if level == 0 || (level < 3 && e & PAGE_SIZE != 0) {
            let base = e & ADDR_MASK & !(size - 1);
            return Some(Leaf {
                pa: base | (va & (size - 1)),
                size,
                entry: e,
            });
        }
        table = e & ADDR_MASK;
    }
    None
}

/// The guest's live page tables: read and written in place through the identity map;
/// new tables come from the heap (zeroed, 4 KiB aligned, never freed).
#[cfg(target_arch = "x86_64")]
pub struct LiveTables;

#[cfg(target_arch = "x86_64")]
impl TableMemory for LiveTables {
    fn read(&self, table: u64, index: usize) -> u64 {
        assert!(index < 512);
        // SAFETY: `table` is a page table of this guest (reached from CR3, or allocated
        // by alloc_table), identity-mapped RAM, 512 aligned u64 entries.
        unsafe { core::ptr::read_volatile((table as *const u64).add(index)) }
    }

    fn write(&mut self, table: u64, index: usize, value: u64) {
        assert!(index < 512);
        // SAFETY: as in `read`; the guest owns its tables and runs single-threaded.
        unsafe { core::ptr::write_volatile((table as *mut u64).add(index), value) }
    }

    fn alloc_table(&mut self) -> Option<u64> {
        let layout = core::alloc::Layout::from_size_align(4096, 4096).ok()?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
        (!p.is_null()).then_some(p as u64)
    }
}

/// Maps guest-physical `[gpa, gpa + size)` identity, uncached (PCD | PWT), present and
/// writable into this guest's own page tables (CR3), then invalidates each page and
/// reloads CR3. For device regions the hypervisor has mapped at `gpa` (never RAM: that
/// would make RAM uncached).
#[cfg(target_arch = "x86_64")]
pub fn map_mmio(gpa: u64, size: u64) -> Result<MapStats, MapError> {
    use core::sync::atomic::{Ordering, compiler_fence};
    let root = crate::x86::cr3();
    let stats = map_identity(
        &mut LiveTables,
        root,
        gpa,
        size,
        MMIO_FLAGS,
        &mut crate::x86::invlpg,
    );
    compiler_fence(Ordering::SeqCst);
    // SAFETY: the same tables, with entries added: everything mapped before still is.
    unsafe { crate::x86::write_cr3(crate::x86::cr3_raw()) };
    stats
}

/// The leaf mapping `va` in this guest's live tables.
#[cfg(target_arch = "x86_64")]
pub fn lookup_live(va: u64) -> Option<Leaf> {
    lookup(&LiveTables, crate::x86::cr3(), va)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;

    /// Tables in a map, allocated from 0x100_0000 up.
    struct Fake {
        tables: BTreeMap<u64, [u64; 512]>,
        next: u64,
        limit: usize,
    }

    impl Fake {
        /// The hypervisor's layout for a 16 MiB guest: PML4 at 0xe0_0000, PDPT at
        /// +0x1000, PD at +0x2000 with 8 2 MiB pages.
        fn guest_16m() -> (Fake, u64) {
            let mut f = Fake {
                tables: BTreeMap::new(),
                next: 0x100_0000,
                limit: usize::MAX,
            };
            let (pml4, pdpt, pd) = (0xe0_0000, 0xe0_1000, 0xe0_2000);
            f.tables.insert(pml4, [0; 512]);
            f.tables.insert(pdpt, [0; 512]);
            f.tables.insert(pd, [0; 512]);
            f.write(pml4, 0, pdpt | PRESENT | WRITABLE);
            f.write(pdpt, 0, pd | PRESENT | WRITABLE);
            for i in 0..8 {
                f.write(pd, i, (i as u64) << 21 | PRESENT | WRITABLE | PAGE_SIZE);
            }
            (f, pml4)
        }
    }

    impl TableMemory for Fake {
        fn read(&self, table: u64, index: usize) -> u64 {
            self.tables[&table][index]
        }
        fn write(&mut self, table: u64, index: usize, value: u64) {
            self.tables.get_mut(&table).expect("a table")[index] = value;
        }
        fn alloc_table(&mut self) -> Option<u64> {
            if self.tables.len() >= self.limit {
                return None;
            }
            let t = self.next;
            self.next += 0x1000;
            self.tables.insert(t, [0; 512]);
            Some(t)
        }
    }

    fn map(f: &mut Fake, root: u64, gpa: u64, size: u64) -> (Result<MapStats, MapError>, Vec<u64>) {
        let mut inv = Vec::new();
        let r = map_identity(f, root, gpa, size, MMIO_FLAGS, &mut |va| inv.push(va));
        (r, inv)
    }

    #[test]
    fn one_mib_bar_at_3_gib_gets_a_pd_and_a_pt() {
        let (mut f, root) = Fake::guest_16m();
        let (r, inv) = map(&mut f, root, 0xc000_0000, 0x10_0000);
        assert_eq!(
            r,
            Ok(MapStats {
                pages_2m: 0,
                pages_4k: 256,
                tables: 2,
                splits: 0
            })
        );
        assert_eq!(inv.len(), 256);
        for va in [0xc000_0000, 0xc000_1000, 0xc00f_f000, 0xc00f_fabc] {
            let l = lookup(&f, root, va).unwrap();
            assert_eq!((l.pa, l.size), (va, PAGE_4K));
            assert!(l.uncached());
            assert_eq!(l.entry & (PRESENT | WRITABLE), PRESENT | WRITABLE);
        }
        assert_eq!(lookup(&f, root, 0xc010_0000), None);
        assert_eq!(lookup(&f, root, 0xbfff_f000), None);
        // RAM is untouched: still 2 MiB pages, cached.
        let ram = lookup(&f, root, 0x20_1234).unwrap();
        assert_eq!((ram.pa, ram.size), (0x20_1234, PAGE_2M));
        assert!(!ram.uncached());
        // Mapping it again changes nothing and allocates nothing.
        let (r, _) = map(&mut f, root, 0xc000_0000, 0x10_0000);
        assert_eq!(r.unwrap().tables, 0);
    }

    #[test]
    fn aligned_2m_uses_large_pages_and_edges_use_4k() {
        let (mut f, root) = Fake::guest_16m();
        // 0x1_401f_f000 .. 0x1_4040_1000: a 4 KiB piece, a 2 MiB page, a 4 KiB piece, in
        // a new PDPT slot (GiB 5) under the PML4 entry that exists.
        let (r, _) = map(&mut f, root, 0x1_401f_f000, 0x20_2000);
        let s = r.unwrap();
        assert_eq!((s.pages_2m, s.pages_4k), (1, 2));
        assert_eq!(lookup(&f, root, 0x1_4020_0000).unwrap().size, PAGE_2M);
        assert!(lookup(&f, root, 0x1_4020_0000).unwrap().uncached());
        assert_eq!(lookup(&f, root, 0x1_401f_f000).unwrap().size, PAGE_4K);
        assert_eq!(lookup(&f, root, 0x1_4040_0000).unwrap().size, PAGE_4K);
        assert_eq!(lookup(&f, root, 0x1_4040_1000), None);
        assert_eq!(lookup(&f, root, 0x1_401f_e000), None);
        // Above 512 GiB: a new PML4 entry too.
        let (r, _) = map(&mut f, root, 0x80_0000_0000, 0x40_0000);
        assert_eq!(
            r,
            Ok(MapStats {
                pages_2m: 2,
                pages_4k: 0,
                tables: 2,
                splits: 0
            })
        );
    }

    #[test]
    fn splits_a_2m_page_keeping_the_rest() {
        let (mut f, root) = Fake::guest_16m();
        let (r, inv) = map(&mut f, root, 0x60_3000, 0x2000);
        assert_eq!(
            r,
            Ok(MapStats {
                pages_2m: 0,
                pages_4k: 2,
                tables: 1,
                splits: 1
            })
        );
        assert_eq!(inv, [0x60_0000, 0x60_3000, 0x60_4000]);
        let l = lookup(&f, root, 0x60_3008).unwrap();
        assert_eq!((l.pa, l.size), (0x60_3008, PAGE_4K));
        assert!(l.uncached());
        // The rest of that 2 MiB keeps its mapping and attributes.
        for va in [0x60_0000, 0x60_2fff, 0x60_5000, 0x7f_ffff] {
            let l = lookup(&f, root, va).unwrap();
            assert_eq!((l.pa, l.size), (va, PAGE_4K));
            assert!(!l.uncached());
            assert_eq!(
                l.entry & (PRESENT | WRITABLE | PAGE_SIZE),
                PRESENT | WRITABLE
            );
        }
    }

    #[test]
    fn refuses_bad_ranges_and_reports_huge_pages_and_no_memory() {
        let (mut f, root) = Fake::guest_16m();
        assert_eq!(map(&mut f, root, 0xc000_0000, 0).0, Err(MapError::Empty));
        assert_eq!(
            map(&mut f, root, 0xc000_0800, 0x1000).0,
            Err(MapError::Unaligned {
                gpa: 0xc000_0800,
                size: 0x1000
            })
        );
        assert!(matches!(
            map(&mut f, root, 0xc000_0000, 0x1800).0,
            Err(MapError::Unaligned { .. })
        ));
        assert!(matches!(
            map(&mut f, root, !0xfff, 0x2000).0,
            Err(MapError::OutOfRange { .. })
        ));
        assert!(matches!(
            map(&mut f, root, ADDRESS_LIMIT - 0x1000, 0x2000).0,
            Err(MapError::OutOfRange { .. })
        ));
        // A 1 GiB page at GiB 2.
        f.write(0xe0_1000, 2, 0x8000_0000 | PRESENT | WRITABLE | PAGE_SIZE);
        assert_eq!(
            map(&mut f, root, 0x8020_0000, 0x1000).0,
            Err(MapError::HugePage { va: 0x8020_0000 })
        );
        assert_eq!(lookup(&f, root, 0x8123_4567).unwrap().size, 1 << 30);
        f.limit = f.tables.len();
        assert_eq!(
            map(&mut f, root, 0xc000_0000, 0x1000).0,
            Err(MapError::NoMemory { va: 0xc000_0000 })
        );
    }
}
