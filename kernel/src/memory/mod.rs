//! Physical memory: the frame allocator (pure logic, host tested) and the kernel heap.
pub mod frame;
pub mod heap;
