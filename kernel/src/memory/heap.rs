//! The kernel heap: one contiguous run of frames handed to `linked_list_allocator`.

use linked_list_allocator::LockedHeap;

use super::frame::{FrameAllocator, PAGE_SIZE};

/// Carve `bytes` (rounded up to pages) out of `frames` and give it to `heap`.
/// Returns the heap's physical range, or `None` if no such run is free.
pub fn init(heap: &LockedHeap, frames: &mut FrameAllocator, bytes: u64) -> Option<(u64, u64)> {
    let pages = bytes.div_ceil(PAGE_SIZE);
    let base = frames.alloc(pages, PAGE_SIZE)?;
    let size = pages * PAGE_SIZE;
    // SAFETY: the frames were just taken from the allocator, so nothing else uses them,
    // and they are identity mapped (the allocator only holds memory below the map limit).
    unsafe { heap.lock().init(base as *mut u8, size as usize) };
    Some((base, size))
}
