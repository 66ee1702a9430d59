//! `vint`: the virtual-interrupt path. Loads the guest GDT/TSS/IDT
//! (`interrupts::init`), registers a handler for vector 0x40, then 10 times: asks the
//! hypervisor for that vector (SELF_INTERRUPT), enables interrupts, waits (bounded)
//! until the handler ran and checks it ran exactly once. Exit status 0 if every round
//! passed, 1 if one failed, 3 if the hypervisor does not know SELF_INTERRUPT yet
//! (`-ENOSYS`).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use core::sync::atomic::{AtomicU64, Ordering};

use sluice_guest::abi::{Errno, decode_result, nr};
use sluice_guest::check::{ensure, expect_eq};
use sluice_guest::{Checks, GuestStartInfo, client, interrupts, println};

sluice_guest::entry!(guest_main);

const VECTOR: u8 = 0x40;
const ROUNDS: u64 = 10;
/// Exit status when the hypervisor answers SELF_INTERRUPT with -ENOSYS.
const NOT_SUPPORTED: i32 = 3;
/// Checks with `pause` before falling back to `hlt`.
const SPINS: u64 = 10_000_000;
/// `hlt`s before giving up.
const HALTS: u64 = 100;

static HANDLED: AtomicU64 = AtomicU64::new(0);

fn on_vector() {
    HANDLED.fetch_add(1, Ordering::AcqRel);
}

fn self_interrupt(vector: u8) -> Result<u64, Errno> {
    // SAFETY: SELF_INTERRUPT takes a vector number and touches no memory.
    decode_result(unsafe {
        client::hypercall(nr::SELF_INTERRUPT, u64::from(vector), 0, 0, 0, 0, 0)
    })
}

fn guest_main(_info: &GuestStartInfo) -> i32 {
    println!("vint: SELF_INTERRUPT({VECTOR:#x}) x{ROUNDS}, handler counts");
    interrupts::init();
    interrupts::register(VECTOR, on_vector);
    let mut c = Checks::console();
    for round in 1..=ROUNDS {
        let before = HANDLED.load(Ordering::Acquire);
        match self_interrupt(VECTOR) {
            Err(Errno::ENOSYS) => {
                println!(
                    "vint: SELF_INTERRUPT returned -ENOSYS: the hypervisor does not inject interrupts yet"
                );
                return NOT_SUPPORTED;
            }
            r => {
                if !c.check(&format!("self-interrupt-{round}-accepted"), || {
                    expect_eq("SELF_INTERRUPT result", r, Ok(0))
                }) {
                    break;
                }
            }
        }
        let arrived =
            interrupts::wait_until(|| HANDLED.load(Ordering::Acquire) != before, SPINS, HALTS);
        // Give a wrongly repeated injection a chance to show up before counting.
        for _ in 0..10_000 {
            core::hint::spin_loop();
        }
        let ok = c.check(&format!("vector-{round}-handled-once"), || {
            ensure(arrived, || {
                format!("vector {VECTOR:#x} not delivered after {SPINS} spins and {HALTS} hlts with IF=1")
            })?;
            let got = HANDLED.load(Ordering::Acquire) - before;
            ensure(got == 1, || format!("handler ran {got} times, expected 1"))?;
            expect_eq("interrupts::count", interrupts::count(VECTOR), round)
        });
        if !ok {
            break;
        }
    }
    c.check("interrupts-off-again", || {
        ensure(!interrupts::enabled(), || "RFLAGS.IF still set".into())
    });
    c.finish()
}
