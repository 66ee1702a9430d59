//! `triple-fault`: loads an IDT with limit 0 and executes `int3`: #BP cannot be
//! delivered (#GP), nor can #GP (#DF), nor #DF: a shutdown. The hypervisor must stop
//! the guest (`triple fault`); if it survives, exit 99.
#![no_std]
#![no_main]

use core::arch::asm;

use sluice_guest::{GuestStartInfo, println};

sluice_guest::entry!(guest_main);

#[repr(C, packed)]
struct Idtr {
    limit: u16,
    base: u64,
}

fn guest_main(_info: &GuestStartInfo) -> i32 {
    println!("triple-fault: empty IDT, then int3");
    let idtr = Idtr { limit: 0, base: 0 };
    // SAFETY: deliberately fatal: with an empty IDT every exception escalates to a
    // shutdown, which the hypervisor must turn into the end of this guest.
    unsafe { asm!("lidt [{}]", "int3", in(reg) &idtr, options(nostack)) };
    println!("triple-fault: int3 with an empty IDT returned");
    99
}
