//! x86-64 specifics: descriptor tables, traps, the boot page tables, legacy PIC, CPUID,
//! the local APIC and the I/O APICs.
pub mod cpu;
pub mod gdt;
pub mod idt;
pub mod ioapic;
pub mod lapic;
pub mod paging;
pub mod pic;
pub mod traps;
