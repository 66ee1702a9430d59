//! A small heap for `alloc`: `linked_list_allocator` over a static array in `.bss`.
//! [`rt::start`](crate::rt::start) calls [`init`] before the program's `guest_main`;
//! [`entry!`](crate::entry) makes [`GuestHeap`] the global allocator of the binary.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use linked_list_allocator::LockedHeap;

/// Bytes of heap every guest gets.
pub const HEAP_SIZE: usize = 256 * 1024;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; HEAP_SIZE]>);

// SAFETY: the arena is handed to the heap once (guarded by INITIALIZED) and only ever
// accessed through it afterwards.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; HEAP_SIZE]));
static HEAP: LockedHeap = LockedHeap::empty();
static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// Gives the arena to the heap (idempotent).
pub fn init() {
    if INITIALIZED.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: the arena is static, HEAP_SIZE bytes long, used by nothing else, and this
    // runs once.
    unsafe { HEAP.lock().init(ARENA.0.get().cast::<u8>(), HEAP_SIZE) };
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
        let too_big = Layout::from_size_align(HEAP_SIZE * 2, 8).unwrap();
        // SAFETY: non-zero size.
        assert!(unsafe { GuestHeap.alloc(too_big) }.is_null());
    }
}
