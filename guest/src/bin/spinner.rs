//! `spinner`: spins forever without a hypercall or an exit. Only preemption (or the
//! end of the run) stops it: for the scheduler's tests.
#![no_std]
#![no_main]

use sluice_guest::{GuestStartInfo, println};

sluice_guest::entry!(guest_main);

fn guest_main(_info: &GuestStartInfo) -> i32 {
    println!("spinner: spinning forever");
    loop {
        core::hint::spin_loop();
    }
}
