//! `bad-port`: writes to I/O port 0x80 (POST codes), which no guest may touch. The
//! hypervisor must stop the guest (`port I/O to 0x80 not allowed`); if it survives,
//! exit 99.
#![no_std]
#![no_main]

use sluice_guest::{GuestStartInfo, println, x86};

sluice_guest::entry!(guest_main);

const PORT: u16 = 0x80;

fn guest_main(_info: &GuestStartInfo) -> i32 {
    println!("bad-port: out {PORT:#x}");
    // SAFETY: deliberately forbidden: the hypervisor must stop us here.
    unsafe { x86::outb(PORT, 0x42) };
    println!("bad-port: the write to port {PORT:#x} returned: not isolated");
    99
}
