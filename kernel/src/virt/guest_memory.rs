//! A guest's RAM: one physically contiguous, 2 MiB-aligned run of host frames, mapped at
//! guest-physical `[ram_base, ram_base + size)` by the guest's nested page tables and by
//! nothing else (every other guest-physical address faults with an NPF exit).
//!
//! # Guest-physical layout
//!
//! QEMU 7.2 bypasses nested paging while the guest runs with CR0.PG = 0 (guest-physical
//! would be host-physical!), so guests start in 64-bit mode with paging already on, on
//! page tables Sluice builds for them inside their own RAM, in the top 2 MiB:
//!
//! ```text
//! ram_base                                         ram_end - 2 MiB          ram_end
//! |------------- loadable (ELF segments) ----------|-- reserved --------------|
//!                                                  | PML4 | PDPT | PD × n | stack ↓ |
//! ```
//!
//! - [`GuestMemory::page_tables_gpa`] = `ram_end - 2 MiB`: the PML4, then the PDPT at
//!   +0x1000, then one page directory per GiB of RAM at +0x2000. They identity-map the
//!   whole RAM (reserved part included) with 2 MiB pages, read/write/executable,
//!   supervisor. Nothing else is mapped, so the guest sees exactly its RAM. The tables
//!   belong to the guest from then on (it may replace them, through CR3 or in place).
//! - [`GuestMemory::stack_top`] = `ram_end`: the initial RSP (16-byte aligned); the stack
//!   grows down through the reserved region towards the tables (about 1.7 MiB for 64 GiB
//!   of RAM, more for less).
//! - [`GuestMemory::loadable`]: where images may be loaded, `[ram_base, ram_end - 2 MiB)`.
//!
//! All RAM is zeroed before the guest gets it (no host data leaks into a guest).

use alloc::boxed::Box;
use core::fmt;

use sluice_iommu::Access;
use sluice_iommu::hw::DmaMemory;
use sluice_iommu::pagetable::Translation;

use sluice_iommu::pagetable::IoPageTable;

use super::NestedFormat;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// Granule of guest RAM (base and size): one 2 MiB page, of both the NPT and the guest's
/// own tables.
pub const LARGE_PAGE: u64 = 2 * MIB;
/// Size of the reserved region at the top of RAM (page tables and boot stack).
pub const RESERVED_TOP: u64 = LARGE_PAGE;
/// Smallest guest: one 2 MiB page to load into, plus the reserved one.
pub const MIN_RAM: u64 = 2 * LARGE_PAGE;
/// Largest guest RAM end (`ram_base + size`): the first PML4 entry (512 GiB) would hold
/// it, but 64 GiB keeps the page directories well inside the reserved region.
pub const MAX_RAM_END: u64 = 64 * GIB;

/// Guest page-table entry bits (the guest's own tables, not the NPT).
const PT_PRESENT: u64 = 1 << 0;
const PT_WRITABLE: u64 = 1 << 1;
const PT_LARGE: u64 = 1 << 7;

/// Host memory guests are built from: the [`DmaMemory`] frame interface (the NPT
/// engine uses it for tables) plus direct access to what it hands out.
pub trait HostMemory: DmaMemory {
    /// A host pointer to host-physical `paddr` (which lies in memory this backing
    /// allocated).
    fn host_ptr(&self, paddr: u64) -> *mut u8;

    /// Self as the plain frame interface.
    fn as_dma(&mut self) -> &mut dyn DmaMemory;

    /// Self as the plain frame interface, read only.
    fn as_dma_ref(&self) -> &dyn DmaMemory;
}

impl HostMemory for crate::memory::dma::FrameDmaMemory {
    fn host_ptr(&self, paddr: u64) -> *mut u8 {
        assert!(
            paddr < crate::arch::paging::IDENTITY_MAP_LIMIT && paddr != 0,
            "host address {paddr:#x} outside the identity map"
        );
        paddr as usize as *mut u8
    }

    fn as_dma(&mut self) -> &mut dyn DmaMemory {
        self
    }

    fn as_dma_ref(&self) -> &dyn DmaMemory {
        self
    }
}

/// Guest-physical addresses of MMIO mappings end at or below this (48-bit nested
/// tables).
pub const MMIO_GPA_LIMIT: u64 = 1 << 48;

/// Why [`GuestMemory::map_mmio`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioMapError {
    /// Misaligned, empty, wrapping, over RAM or beyond [`MMIO_GPA_LIMIT`].
    Invalid,
    /// Something is mapped there already.
    Exists,
    /// No memory for nested tables.
    NoMemory,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMemoryError {
    /// Base or size not a multiple of 2 MiB, size below [`MIN_RAM`], or the end above
    /// [`MAX_RAM_END`].
    BadLayout { ram_base: u64, size: u64 },
    /// No contiguous, 2 MiB-aligned run of that many free frames (or no memory for the
    /// nested page tables).
    NoMemory { size: u64 },
    /// `[gpa, gpa + len)` is not all guest RAM.
    OutOfBounds { gpa: u64, len: u64 },
}

impl fmt::Display for GuestMemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadLayout { ram_base, size } => write!(
                f,
                "guest RAM at {ram_base:#x}, {size:#x} bytes: base and size must be 2 MiB multiples, \
                 size at least {MIN_RAM:#x}, end at most {MAX_RAM_END:#x}"
            ),
            Self::NoMemory { size } => write!(
                f,
                "no {} MiB of contiguous 2 MiB-aligned host memory for guest RAM",
                size / MIB
            ),
            Self::OutOfBounds { gpa, len } => write!(
                f,
                "guest-physical range {gpa:#x}+{len:#x} is outside guest RAM"
            ),
        }
    }
}

/// Guest RAM behind nested page tables in the backend's entry format `F` (AMD NPT,
/// Intel EPT: see [`NestedFormat`]).
pub struct GuestMemory<F: NestedFormat> {
    ram_base: u64,
    size: u64,
    host_base: u64,
    /// `None` only while being torn down.
    npt: Option<IoPageTable<F>>,
    backing: Box<dyn HostMemory>,
}

impl<F: NestedFormat> fmt::Debug for GuestMemory<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestMemory")
            .field("ram_base", &format_args!("{:#x}", self.ram_base))
            .field("size", &format_args!("{:#x}", self.size))
            .field("host_base", &format_args!("{:#x}", self.host_base))
            .field("nested_root", &format_args!("{:#x}", self.nested_root()))
            .finish()
    }
}

impl<F: NestedFormat> GuestMemory<F> {
    /// Guest RAM from the kernel's frame allocator.
    pub fn new(ram_base: u64, size: u64) -> Result<Self, GuestMemoryError> {
        Self::with_backing(ram_base, size, Box::new(crate::memory::dma::FrameDmaMemory))
    }

    /// Guest RAM of `size` bytes at guest-physical `ram_base`, zeroed, mapped by fresh
    /// nested page tables, with the guest's own first page tables built in (see the
    /// module docs for the layout).
    pub fn with_backing(
        ram_base: u64,
        size: u64,
        mut backing: Box<dyn HostMemory>,
    ) -> Result<Self, GuestMemoryError> {
        let end = ram_base.checked_add(size);
        if ram_base % LARGE_PAGE != 0
            || size % LARGE_PAGE != 0
            || size < MIN_RAM
            || end.is_none_or(|e| e > MAX_RAM_END)
        {
            return Err(GuestMemoryError::BadLayout { ram_base, size });
        }
        let pages = (size / 4096) as usize;
        let host_base = backing
            .alloc_zeroed(pages, LARGE_PAGE)
            .ok_or(GuestMemoryError::NoMemory { size })?;
        let mut npt = match IoPageTable::<F>::new(backing.as_dma(), F::config()) {
            Ok(npt) => npt,
            Err(_) => {
                backing.free(host_base, pages);
                return Err(GuestMemoryError::NoMemory { size });
            }
        };
        if npt
            .map(
                backing.as_dma(),
                ram_base,
                host_base,
                size,
                Access::READ | Access::WRITE,
            )
            .is_err()
        {
            npt.destroy(backing.as_dma());
            backing.free(host_base, pages);
            return Err(GuestMemoryError::NoMemory { size });
        }
        let mut mem = Self {
            ram_base,
            size,
            host_base,
            npt: Some(npt),
            backing,
        };
        mem.build_guest_page_tables();
        Ok(mem)
    }

    pub fn ram_base(&self) -> u64 {
        self.ram_base
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn ram_end(&self) -> u64 {
        self.ram_base + self.size
    }

    /// Host-physical address of guest RAM's first byte.
    pub fn host_base(&self) -> u64 {
        self.host_base
    }

    /// Host-physical address of the nested root table (the VMCB's N_CR3 on AMD, the EPT
    /// pointer's address on Intel).
    pub fn nested_root(&self) -> u64 {
        self.npt.as_ref().map_or(0, |n| n.root())
    }

    pub fn nested_tables(&self) -> &IoPageTable<F> {
        self.npt.as_ref().expect("nested tables present until drop")
    }

    /// What the nested page tables map `gpa` to (read from the tables, as the CPU walks
    /// them): for diagnostics and tests.
    pub fn nested_translate(&self, gpa: u64) -> Option<Translation> {
        self.nested_tables()
            .translate(self.backing.as_dma_ref(), gpa)
    }

    /// Guest-physical address of the guest's PML4 (its initial CR3).
    pub fn page_tables_gpa(&self) -> u64 {
        self.ram_end() - RESERVED_TOP
    }

    /// The initial guest RSP.
    pub fn stack_top(&self) -> u64 {
        self.ram_end()
    }

    /// Where images may be loaded: `[start, end)`.
    pub fn loadable(&self) -> (u64, u64) {
        (self.ram_base, self.ram_end() - RESERVED_TOP)
    }

    /// Page directories the guest's first tables use (one per GiB of RAM touched).
    fn page_directories(&self) -> u64 {
        ((self.ram_end() - 1) >> 30) - (self.ram_base >> 30) + 1
    }

    /// The host-physical address of `gpa`, if `[gpa, gpa + len)` is all guest RAM.
    pub fn translate(&self, gpa: u64, len: u64) -> Option<u64> {
        let end = gpa.checked_add(len)?;
        (gpa >= self.ram_base && end <= self.ram_end())
            .then(|| self.host_base + (gpa - self.ram_base))
    }

    fn host_range(&self, gpa: u64, len: usize) -> Result<*mut u8, GuestMemoryError> {
        let host = self
            .translate(gpa, len as u64)
            .ok_or(GuestMemoryError::OutOfBounds {
                gpa,
                len: len as u64,
            })?;
        Ok(self.backing.host_ptr(host))
    }

    /// Map host MMIO `[hpa, hpa + size)` (a device's BAR) at guest-physical `gpa`,
    /// uncached, read/write. Page-aligned arguments; the range must not overlap RAM and
    /// must end at or below [`MMIO_GPA_LIMIT`]. The caller checked that `hpa` is device
    /// memory, never RAM.
    pub fn map_mmio(&mut self, gpa: u64, hpa: u64, size: u64) -> Result<(), MmioMapError> {
        let end = gpa.checked_add(size).ok_or(MmioMapError::Invalid)?;
        if size == 0 || gpa % 4096 != 0 || hpa % 4096 != 0 || size % 4096 != 0 {
            return Err(MmioMapError::Invalid);
        }
        if end > MMIO_GPA_LIMIT || (gpa < self.ram_end() && end > self.ram_base) {
            return Err(MmioMapError::Invalid);
        }
        let npt = self.npt.as_mut().ok_or(MmioMapError::NoMemory)?;
        let access = Access::READ | Access::WRITE | Access::UNCACHED;
        match npt.map(self.backing.as_dma(), gpa, hpa, size, access) {
            Ok(()) => Ok(()),
            Err(sluice_iommu::IommuError::Overlap { .. }) => Err(MmioMapError::Exists),
            Err(sluice_iommu::IommuError::NoMemory) => Err(MmioMapError::NoMemory),
            Err(_) => Err(MmioMapError::Invalid),
        }
    }

    /// Remove a mapping made by [`Self::map_mmio`]. The caller must flush the guest's
    /// TLB before it runs again ([`super::VirtualCpu::flush_tlb`]). Tables the unmap
    /// emptied are freed at once: the guest is not running (one CPU, and it is the caller
    /// who holds it), and its cached walks are flushed before it runs again; no other
    /// address space ever pointed at them. Without this, map/unmap loops would leak
    /// host frames.
    pub fn unmap_mmio(&mut self, gpa: u64, size: u64) {
        let overlaps_ram = gpa < self.ram_end() && gpa.saturating_add(size) > self.ram_base;
        if overlaps_ram {
            return; // never unmap RAM through this door
        }
        if let Some(npt) = self.npt.as_mut() {
            let _ = npt.unmap(self.backing.as_dma(), gpa, size);
            npt.reclaim(self.backing.as_dma());
        }
    }

    /// Copy guest RAM at `gpa` into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        let src = self.host_range(gpa, buf.len())?;
        // SAFETY: `src..src + len` lies inside the guest's RAM (checked by host_range),
        // which this struct owns; the guest is not running while `self` is borrowed, and
        // `buf` is ordinary host memory, not part of guest RAM.
        unsafe { core::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copy `data` into guest RAM at `gpa`.
    pub fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestMemoryError> {
        let dst = self.host_range(gpa, data.len())?;
        // SAFETY: as for `read`, with `self` borrowed mutably.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    /// Set `len` bytes of guest RAM at `gpa` to `byte`.
    pub fn fill(&mut self, gpa: u64, len: u64, byte: u8) -> Result<(), GuestMemoryError> {
        let dst = self.host_range(gpa, len as usize)?;
        // SAFETY: as for `write`.
        unsafe { core::ptr::write_bytes(dst, byte, len as usize) };
        Ok(())
    }

    pub fn read_u64(&self, gpa: u64) -> Result<u64, GuestMemoryError> {
        let mut b = [0; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn write_u64(&mut self, gpa: u64, value: u64) -> Result<(), GuestMemoryError> {
        self.write(gpa, &value.to_le_bytes())
    }

    /// (Re)build the guest's first page tables in the reserved region: an identity map
    /// of all guest RAM with 2 MiB pages. Call again to reset a guest that overwrote them.
    pub fn build_guest_page_tables(&mut self) {
        let pml4 = self.page_tables_gpa();
        let pdpt = pml4 + 0x1000;
        let first_pd = pml4 + 0x2000;
        let tables_len = 0x2000 + self.page_directories() * 0x1000;
        self.fill(pml4, tables_len, 0).expect("tables inside RAM");
        // Every RAM address lies below 512 GiB: PML4 entry 0 only.
        self.write_u64(pml4, pdpt | PT_PRESENT | PT_WRITABLE)
            .expect("inside RAM");
        let first_gib = self.ram_base >> 30;
        for i in 0..self.page_directories() {
            let pd = first_pd + i * 0x1000;
            self.write_u64(pdpt + (first_gib + i) * 8, pd | PT_PRESENT | PT_WRITABLE)
                .expect("inside RAM");
        }
        let mut gpa = self.ram_base;
        while gpa < self.ram_end() {
            let pd = first_pd + ((gpa >> 30) - first_gib) * 0x1000;
            let entry = gpa | PT_PRESENT | PT_WRITABLE | PT_LARGE;
            self.write_u64(pd + ((gpa >> 21) & 0x1ff) * 8, entry)
                .expect("inside RAM");
            gpa += LARGE_PAGE;
        }
    }
}

impl<F: NestedFormat> GuestMemory<F> {
    /// Are the guest's first page tables still exactly what
    /// [`Self::build_guest_page_tables`] wrote (nothing loaded over them)?
    pub fn guest_page_tables_intact(&self) -> bool {
        let pml4 = self.page_tables_gpa();
        let pdpt = pml4 + 0x1000;
        let first_pd = pml4 + 0x2000;
        let first_gib = self.ram_base >> 30;
        let entry = |gpa| self.read_u64(gpa).ok();
        let mut ok = entry(pml4) == Some(pdpt | PT_PRESENT | PT_WRITABLE);
        for i in 0..self.page_directories() {
            let pd = first_pd + i * 0x1000;
            ok &= entry(pdpt + (first_gib + i) * 8) == Some(pd | PT_PRESENT | PT_WRITABLE);
        }
        let mut gpa = self.ram_base;
        while ok && gpa < self.ram_end() {
            let pd = first_pd + ((gpa >> 30) - first_gib) * 0x1000;
            ok &= entry(pd + ((gpa >> 21) & 0x1ff) * 8)
                == Some(gpa | PT_PRESENT | PT_WRITABLE | PT_LARGE);
            gpa += LARGE_PAGE;
        }
        ok
    }
}

impl<F: NestedFormat> Drop for GuestMemory<F> {
    fn drop(&mut self) {
        // The caller (Guest) guarantees no vCPU runs on these tables any more; TLB entries
        // tagged with the guest's ASID are flushed on the ASID's next use (TLB_CONTROL).
        if let Some(npt) = self.npt.take() {
            npt.destroy(self.backing.as_dma());
        }
        self.backing
            .free(self.host_base, (self.size / 4096) as usize);
    }
}

/// Host-test memory: an arena of real host memory whose "physical" addresses are its
/// host addresses (identity mapped, like the kernel's frames).
#[cfg(test)]
pub(crate) mod test_support {
    extern crate std;

    use std::alloc::{Layout, alloc_zeroed, dealloc};
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;

    use super::*;

    pub struct Arena {
        base: *mut u8,
        layout: Layout,
        next: u64,
        /// Live allocations: address → pages (shared so tests can look after a drop).
        pub live: Rc<RefCell<BTreeMap<u64, usize>>>,
    }

    impl Arena {
        pub fn new(bytes: usize) -> Self {
            let layout = Layout::from_size_align(bytes, 2 << 20).unwrap();
            // SAFETY: a non-zero size.
            let base = unsafe { alloc_zeroed(layout) };
            assert!(!base.is_null());
            Self {
                base,
                layout,
                next: base as u64,
                live: Rc::default(),
            }
        }

        fn end(&self) -> u64 {
            self.base as u64 + self.layout.size() as u64
        }
    }

    impl Drop for Arena {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { dealloc(self.base, self.layout) };
        }
    }

    impl DmaMemory for Arena {
        fn alloc_zeroed(&mut self, pages: usize, align: u64) -> Option<u64> {
            let start = self.next.div_ceil(align) * align;
            let end = start + pages as u64 * 4096;
            if end > self.end() {
                return None;
            }
            self.next = end;
            self.live.borrow_mut().insert(start, pages);
            // SAFETY: inside the arena, not handed out before (bump allocation).
            unsafe { core::ptr::write_bytes(start as *mut u8, 0, pages * 4096) };
            Some(start)
        }

        fn free(&mut self, paddr: u64, pages: usize) {
            assert_eq!(self.live.borrow_mut().remove(&paddr), Some(pages));
        }

        fn read_u64(&self, paddr: u64) -> u64 {
            assert!(paddr >= self.base as u64 && paddr + 8 <= self.end());
            // SAFETY: inside the arena (checked), aligned by the callers.
            unsafe { (paddr as *const u64).read() }
        }

        fn write_u64(&mut self, paddr: u64, value: u64) {
            assert!(paddr >= self.base as u64 && paddr + 8 <= self.end());
            // SAFETY: as for read_u64.
            unsafe { (paddr as *mut u64).write(value) }
        }

        fn flush(&mut self, _paddr: u64, _len: usize) {}

        fn barrier(&self) {}
    }

    impl HostMemory for Arena {
        fn host_ptr(&self, paddr: u64) -> *mut u8 {
            assert!(paddr >= self.base as u64 && paddr < self.end());
            paddr as *mut u8
        }

        fn as_dma(&mut self) -> &mut dyn DmaMemory {
            self
        }

        fn as_dma_ref(&self) -> &dyn DmaMemory {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::Arena;
    use super::*;

    /// The tests use AMD's NPT entries (any [`NestedFormat`] would do).
    type GuestMemory = super::GuestMemory<crate::svm::npt::NptFormat>;

    fn guest(
        ram_base: u64,
        size: u64,
    ) -> (
        GuestMemory,
        std::rc::Rc<core::cell::RefCell<std::collections::BTreeMap<u64, usize>>>,
    ) {
        let arena = Arena::new(40 << 20);
        let live = arena.live.clone();
        (
            GuestMemory::with_backing(ram_base, size, Box::new(arena)).unwrap(),
            live,
        )
    }

    /// Walk the guest's own tables (as the CPU would, long mode) from CR3.
    fn guest_walk(mem: &GuestMemory, cr3: u64, va: u64) -> Option<u64> {
        let mut table = cr3;
        for level in (2..=4u32).rev() {
            let shift = 12 + 9 * (level - 1);
            let e = mem.read_u64(table + ((va >> shift) & 0x1ff) * 8).ok()?;
            if e & 1 == 0 {
                return None;
            }
            if level == 2 {
                assert_ne!(e & PT_LARGE, 0);
                return Some((e & 0x000f_ffff_ffe0_0000) + (va & (LARGE_PAGE - 1)));
            }
            assert_eq!(e & PT_LARGE, 0);
            table = e & 0x000f_ffff_ffff_f000;
        }
        None
    }

    #[test]
    fn layout_checks() {
        let arena = || Box::new(Arena::new(8 << 20));
        for (base, size) in [
            (0, 0),
            (0, 2 * MIB),
            (0x1000, 4 * MIB),
            (0, 5 * MIB),
            (MAX_RAM_END, 4 * MIB),
        ] {
            assert_eq!(
                GuestMemory::with_backing(base, size, arena()).unwrap_err(),
                GuestMemoryError::BadLayout {
                    ram_base: base,
                    size
                }
            );
        }
        assert_eq!(
            GuestMemory::with_backing(0, 16 * MIB, arena()).unwrap_err(),
            GuestMemoryError::NoMemory { size: 16 * MIB }
        );
    }

    #[test]
    fn read_write_translate_are_bounds_checked() {
        let (mut mem, _) = guest(0, 8 * MIB);
        assert_eq!(mem.translate(0, 8 * MIB), Some(mem.host_base()));
        assert_eq!(mem.translate(0x1234, 4), Some(mem.host_base() + 0x1234));
        assert_eq!(mem.translate(8 * MIB - 4, 5), None);
        assert_eq!(mem.translate(u64::MAX, 2), None);
        mem.write(0x10_0000, b"hello").unwrap();
        let mut buf = [0; 5];
        mem.read(0x10_0000, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(
            mem.write(8 * MIB - 2, b"abc"),
            Err(GuestMemoryError::OutOfBounds {
                gpa: 8 * MIB - 2,
                len: 3
            })
        );
        assert!(mem.read(8 * MIB, &mut [0u8; 0]).is_ok());
        assert!(mem.read(8 * MIB + 1, &mut [0u8; 0]).is_err());
        // The NPT maps gpa → host exactly like translate.
        let t = mem.nested_translate(0x10_0000).unwrap();
        assert_eq!(t.paddr, mem.host_base() + 0x10_0000);
        assert_eq!(t.page_size, 2 * MIB);
        assert!(mem.nested_translate(8 * MIB).is_none());
    }

    #[test]
    fn guest_page_tables_identity_map_ram_only() {
        let (mem, _) = guest(0, 8 * MIB);
        assert_eq!(mem.page_tables_gpa(), 6 * MIB);
        assert_eq!(mem.stack_top(), 8 * MIB);
        assert_eq!(mem.loadable(), (0, 6 * MIB));
        let cr3 = mem.page_tables_gpa();
        assert_eq!(mem.read_u64(cr3).unwrap(), (cr3 + 0x1000) | 3);
        assert_eq!(mem.read_u64(cr3 + 0x1000).unwrap(), (cr3 + 0x2000) | 3);
        assert_eq!(mem.read_u64(cr3 + 0x2000).unwrap(), 0x83);
        assert_eq!(mem.read_u64(cr3 + 0x2018).unwrap(), (6 * MIB) | 0x83);
        for va in [0, 0x1234, 2 * MIB + 8, 8 * MIB - 1] {
            assert_eq!(guest_walk(&mem, cr3, va), Some(va));
        }
        for va in [8 * MIB, GIB, 1 << 39] {
            assert_eq!(guest_walk(&mem, cr3, va), None, "va {va:#x}");
        }
    }

    #[test]
    fn loading_over_the_tables_is_detected() {
        let (mut mem, _) = guest(0, 4 * MIB);
        assert!(mem.guest_page_tables_intact());
        mem.write(mem.loadable().1 - 8, &[0xAA; 8]).unwrap();
        assert!(mem.guest_page_tables_intact());
        mem.write(mem.page_tables_gpa() + 0x2008, &[0xAA]).unwrap();
        assert!(!mem.guest_page_tables_intact());
        mem.build_guest_page_tables();
        assert!(mem.guest_page_tables_intact());
    }

    #[test]
    fn guest_page_tables_across_gib_boundaries() {
        // RAM from 1 GiB - 2 MiB to 1 GiB + 4 MiB: two page directories.
        let (mem, _) = guest(GIB - 2 * MIB, 6 * MIB);
        let cr3 = mem.page_tables_gpa();
        assert_eq!(mem.page_directories(), 2);
        for va in [GIB - 2 * MIB, GIB - 1, GIB, GIB + 4 * MIB - 1] {
            assert_eq!(guest_walk(&mem, cr3, va), Some(va), "va {va:#x}");
        }
        assert_eq!(guest_walk(&mem, cr3, GIB - 2 * MIB - 1), None);
        assert_eq!(guest_walk(&mem, cr3, 0), None);
    }

    #[test]
    fn mmio_maps_outside_ram_only() {
        let (mut mem, _live) = guest(0, 16 * MIB);
        assert_eq!(
            mem.map_mmio(0, 0xfe00_0000, 4096),
            Err(MmioMapError::Invalid)
        );
        assert_eq!(
            mem.map_mmio(16 * MIB - 4096, 0xfe00_0000, 8192),
            Err(MmioMapError::Invalid)
        );
        assert_eq!(
            mem.map_mmio(0xc000_0001, 0xfe00_0000, 4096),
            Err(MmioMapError::Invalid)
        );
        assert_eq!(
            mem.map_mmio(0xc000_0000, 0xfe00_0000, 0),
            Err(MmioMapError::Invalid)
        );
        assert_eq!(
            mem.map_mmio(u64::MAX - 4095, 0xfe00_0000, 4096),
            Err(MmioMapError::Invalid)
        );
        assert_eq!(mem.map_mmio(0xc000_0000, 0xfe00_0000, 0x10_0000), Ok(()));
        assert_eq!(
            mem.map_mmio(0xc00f_f000, 0xfe00_0000, 4096),
            Err(MmioMapError::Exists)
        );
        let t = mem.nested_translate(0xc000_1000).expect("mapped");
        assert_eq!(t.paddr, 0xfe00_1000);
        let tables = mem.nested_tables().table_pages();
        mem.unmap_mmio(0xc000_0000, 0x10_0000);
        assert!(mem.nested_translate(0xc000_1000).is_none());
        // The emptied tables are freed, not kept: map/unmap loops leak nothing.
        assert!(mem.nested_tables().table_pages() < tables);
        assert_eq!(mem.nested_tables().retired_tables(), 0);
        let after_unmap = mem.nested_tables().table_pages();
        for _ in 0..100 {
            mem.map_mmio(0x80_0000_0000, 0xfe00_0000, 4096).unwrap();
            mem.unmap_mmio(0x80_0000_0000, 4096);
        }
        assert_eq!(mem.nested_tables().table_pages(), after_unmap);
        assert_eq!(mem.nested_tables().retired_tables(), 0);
        // RAM stays mapped whatever unmap_mmio is asked.
        mem.unmap_mmio(0, 16 * MIB);
        assert!(mem.nested_translate(0x20_0000).is_some());
    }

    #[test]
    fn drop_frees_ram_and_tables() {
        let (mem, live) = guest(0, 4 * MIB);
        assert!(live.borrow().len() >= 4); // RAM + 3 NPT tables
        drop(mem);
        assert!(live.borrow().is_empty());
    }
}
