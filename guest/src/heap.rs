//! The heap for `alloc`: `linked_list_allocator` over the guest's free RAM.
//!
//! [`rt::start`](crate::rt::start) gives it, before the program's `guest_main`, the RAM
//! between the end of the image and the hypervisor's reserved top ([`free_ram`]) with
//! [`init_region`] — about 12 MiB in a 16 MiB guest, enough for 2 MiB-aligned DMA
//! buffers ([`crate::dma`]) and page tables ([`crate::paging`]). When that region is
//! smaller than [`HEAP_SIZE`] (a guest with almost no free RAM) it falls back to
//! [`init`], a static [`HEAP_SIZE`]-byte arena in `.bss` (also what host tests use).
//! [`entry!`](crate::entry) makes [`GuestHeap`] the global allocator of the binary.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use linked_list_allocator::LockedHeap;

/// Bytes of the static fallback arena (the least heap every guest gets).
pub const HEAP_SIZE: usize = 256 * 1024;

/// Size of the region at the top of a guest's RAM that the hypervisor keeps for the
/// guest's first page tables and boot stack (`kernel/src/virt/guest_memory.rs`).
pub const RESERVED_TOP: u64 = 2 << 20;

/// Heap granule: regions are trimmed to 4 KiB pages.
const PAGE: u64 = 4096;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; HEAP_SIZE]>);

// SAFETY: the arena is handed to the heap once (guarded by INITIALIZED) and only ever
// accessed through it afterwards.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; HEAP_SIZE]));
static HEAP: LockedHeap = LockedHeap::empty();
static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// Gives the static arena to the heap (idempotent: does nothing once a heap exists).
pub fn init() {
    if INITIALIZED.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: the arena is static, HEAP_SIZE bytes long, used by nothing else, and this
    // runs once.
    unsafe { HEAP.lock().init(ARENA.0.get().cast::<u8>(), HEAP_SIZE) };
}

/// Gives `[start, start + len)` to the heap instead of the arena. Returns `false` (and
/// does nothing) if a heap already exists.
///
/// # Safety
///
/// The range must be identity-mapped, writable RAM that nothing else uses, now or
/// later (not the image, not the stack, not page tables in use).
pub unsafe fn init_region(start: u64, len: u64) -> bool {
    if INITIALIZED.swap(true, Ordering::AcqRel) {
        return false;
    }
    // SAFETY: the caller vouches for the range; this runs once.
    unsafe { HEAP.lock().init(start as usize as *mut u8, len as usize) };
    true
}

/// The free RAM of a guest, page aligned: from the end of its image (`image_end`) to
/// the reserved top of its RAM ([`RESERVED_TOP`]), and below the page tables it was
/// started on (`cr3`) should those lie inside that range. `None` if that leaves
/// nothing.
pub fn free_ram(ram_base: u64, ram_size: u64, image_end: u64, cr3: u64) -> Option<(u64, u64)> {
    let start = image_end.checked_add(PAGE - 1)? & !(PAGE - 1);
    let ram_end = ram_base.checked_add(ram_size)?;
    let mut end = ram_end.checked_sub(RESERVED_TOP)? & !(PAGE - 1);
    let tables = cr3 & !(PAGE - 1);
    if (start..end).contains(&tables) {
        end = tables;
    }
    (start >= ram_base && end > start).then(|| (start, end - start))
}

/// Bytes the heap manages.
pub fn size() -> usize {
    HEAP.lock().size()
}

/// Bytes currently allocated.
pub fn used() -> usize {
    HEAP.lock().used()
}

/// The guests' global allocator (an empty heap until [`init`]: allocations fail).
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestHeap;

// SAFETY: forwards to LockedHeap, a correct GlobalAlloc.
unsafe impl GlobalAlloc for GuestHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds GlobalAlloc::alloc's contract.
        unsafe { HEAP.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds GlobalAlloc::dealloc's contract; ptr came from HEAP.
        unsafe { HEAP.dealloc(ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_after_init() {
        init();
        init();
        let layout = Layout::from_size_align(1000, 64).unwrap();
        let before = used();
        // SAFETY: non-zero size; freed with the same layout below.
        let p = unsafe { GuestHeap.alloc(layout) };
        assert!(!p.is_null());
        assert_eq!(p as usize % 64, 0);
        assert!(used() >= before + 1000);
        // SAFETY: allocated above with this layout.
        unsafe { GuestHeap.dealloc(p, layout) };
        // SAFETY: not reached: a heap exists, so the range is not taken.
        assert!(!unsafe { init_region(0x1000, 0x1000) });
        let too_big = Layout::from_size_align(size() * 2, 8).unwrap();
        // SAFETY: non-zero size.
        assert!(unsafe { GuestHeap.alloc(too_big) }.is_null());
    }

    #[test]
    fn free_ram_between_image_and_reserved_top() {
        const MIB: u64 = 1 << 20;
        // 16 MiB guest, image ends at 0x263456, tables at the top (the kernel's layout).
        assert_eq!(
            free_ram(0, 16 * MIB, 0x26_3456, 14 * MIB),
            Some((0x26_4000, 14 * MIB - 0x26_4000))
        );
        // Tables in the first MiB (the ABI's older wording): no effect.
        assert_eq!(
            free_ram(0, 16 * MIB, 0x26_4000, 0x1_0000),
            Some((0x26_4000, 14 * MIB - 0x26_4000))
        );
        // Tables somewhere inside the free range: the heap stops below them.
        assert_eq!(
            free_ram(0, 16 * MIB, 0x26_4000, 0x80_0000),
            Some((0x26_4000, 0x80_0000 - 0x26_4000))
        );
        // No room, or nonsense.
        assert_eq!(free_ram(0, 4 * MIB, 0x20_1000, 0x20_0000), None);
        assert_eq!(free_ram(0, 4 * MIB, 0x30_0000, 0x20_0000), None);
        assert_eq!(free_ram(0, MIB, 0x1000, 0), None);
        assert_eq!(free_ram(u64::MAX, 2, 0, 0), None);
        assert_eq!(free_ram(0, 16 * MIB, u64::MAX, 0), None);
    }
}
