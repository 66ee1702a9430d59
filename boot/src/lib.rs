//! Boot support for the Sluice kernel.
//!
//! * `entry.S` (included by the kernel binary with `global_asm!`) is the PVH entry: it
//!   switches to long mode with the first 4 GiB identity-mapped and calls `kernel_main`.
//! * `linker.ld` lays the image out at 1 MiB with the Xen PVH note QEMU looks for.
//! * [`start_info`] turns the `hvm_start_info` QEMU hands over into typed, bounds-checked
//!   data. It reads physical memory only through [`phys::PhysRead`], so the same parser
//!   runs on the host against a fake memory in unit tests.
#![cfg_attr(not(test), no_std)]

pub mod phys;
pub mod start_info;
