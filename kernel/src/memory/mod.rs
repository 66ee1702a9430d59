//! Physical memory: the frame allocator (pure logic, host tested), the kernel heap, and
//! the memory handed to IOMMUs.
pub mod dma;
pub mod frame;
pub mod heap;

/// The machine's free frames, filled once at boot from the memory map.
pub static FRAMES: spin::Mutex<frame::FrameAllocator> =
    spin::Mutex::new(frame::FrameAllocator::new());
