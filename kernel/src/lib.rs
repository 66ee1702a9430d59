//! The Sluice hypervisor kernel, as a library.
//!
//! Everything here builds for the host too: the hardware-independent parts (command line,
//! frame allocator, ACPI parsing, trap reports, IDT layout) are unit tested with
//! `cargo test`, and the parts that touch hardware are only ever *run* by the `sluice`
//! binary (`main.rs`), which owns the entry point, the assembly and the global allocator.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod acpi;
pub mod arch;
pub mod cmdline;
pub mod devhw;
pub mod discovery;
pub mod dmatest;
pub mod edu;
pub mod exit;
pub mod guest_image;
pub mod memory;
pub mod mmio;
pub mod phys;
pub mod serial;
pub mod svm;
pub mod vfio;
pub mod virt;
