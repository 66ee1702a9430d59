//! `bad-msr`: reads MSR 0x10 (the TSC), which no guest may touch. The hypervisor must
//! stop the guest (`MSR 0x10 access not allowed`); if it survives, exit 99.
#![no_std]
#![no_main]

use sluice_guest::{GuestStartInfo, println, x86};

sluice_guest::entry!(guest_main);

const MSR: u32 = 0x10;

fn guest_main(_info: &GuestStartInfo) -> i32 {
    println!("bad-msr: rdmsr {MSR:#x}");
    // SAFETY: deliberately forbidden: the hypervisor must stop us here.
    let v = unsafe { x86::rdmsr(MSR) };
    println!("bad-msr: rdmsr {MSR:#x} returned {v:#x}: not isolated");
    99
}
