//! x86-64 specifics: descriptor tables, traps, the boot page tables, legacy PIC, CPUID.
pub mod cpu;
pub mod gdt;
pub mod idt;
pub mod lapic;
pub mod paging;
pub mod pic;
pub mod traps;
