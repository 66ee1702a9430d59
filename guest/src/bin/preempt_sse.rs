//! `preempt-sse`: xmm0-xmm15 must survive preemption. Each round loads xmm0-xmm15 with a
//! known pattern and spins reading the TSC, counting gaps of at least
//! [`JUMP_CYCLES`] between two reads (the guest was not running: preempted), until it
//! has seen [`JUMPS_PER_ROUND`] of them (or a bound), then stores the registers and
//! compares. Run next to a `spinner` so that the scheduler really switches guests.
//! Exit status 0 if every check passed (including: at least [`MIN_JUMPS`] preemptions
//! seen), else 1.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use core::arch::asm;

use sluice_guest::check::{CheckResult, ensure};
use sluice_guest::{Checks, GuestStartInfo, println};

sluice_guest::entry!(guest_main);

type Xmm = [[u64; 2]; 16];

/// A gap between two TSC reads this large means the guest was off the CPU.
const JUMP_CYCLES: u64 = 500_000;
const ROUNDS: u64 = 4;
const JUMPS_PER_ROUND: u64 = 5;
/// Preemptions the whole run must see.
const MIN_JUMPS: u64 = ROUNDS * JUMPS_PER_ROUND;
/// Bounds of one round: loop iterations and TSC cycles.
const MAX_ITERATIONS: u64 = 500_000_000;
const MAX_CYCLES: u64 = 6_000_000_000;

fn pattern(seed: u64) -> Xmm {
    let mut x = [[0u64; 2]; 16];
    for (i, r) in x.iter_mut().enumerate() {
        let i = i as u64 + 1;
        r[0] = 0x0123_4567_89ab_cdefu64.wrapping_mul(i) ^ seed;
        r[1] = !(0x1111_2222_3333_4444u64.rotate_left(i as u32 * 3)) ^ seed.rotate_left(29);
    }
    x
}

/// Parameters and results of one spinning round (read and written by the asm).
#[repr(C)]
struct Round {
    /// In: the gap that counts as a jump, the jumps wanted, iteration and cycle bounds.
    threshold: u64,
    want: u64,
    max_iterations: u64,
    max_cycles: u64,
    /// Out.
    jumps: u64,
    iterations: u64,
    largest_gap: u64,
}

/// Loads xmm0-xmm15 from `input`, spins as `r` says, stores xmm0-xmm15.
fn spin_with_xmm(input: &Xmm, r: &mut Round) -> Xmm {
    let mut out: Xmm = [[0; 2]; 16];
    // SAFETY: only registers declared below and the two buffers are touched; RDTSC is
    // allowed at CPL 0.
    unsafe {
        asm!(
            "movdqu xmm0, [{inp}]",
            "movdqu xmm1, [{inp} + 16]",
            "movdqu xmm2, [{inp} + 32]",
            "movdqu xmm3, [{inp} + 48]",
            "movdqu xmm4, [{inp} + 64]",
            "movdqu xmm5, [{inp} + 80]",
            "movdqu xmm6, [{inp} + 96]",
            "movdqu xmm7, [{inp} + 112]",
            "movdqu xmm8, [{inp} + 128]",
            "movdqu xmm9, [{inp} + 144]",
            "movdqu xmm10, [{inp} + 160]",
            "movdqu xmm11, [{inp} + 176]",
            "movdqu xmm12, [{inp} + 192]",
            "movdqu xmm13, [{inp} + 208]",
            "movdqu xmm14, [{inp} + 224]",
            "movdqu xmm15, [{inp} + 240]",
            "xor {jumps:e}, {jumps:e}",
            "xor {iters:e}, {iters:e}",
            "xor {largest:e}, {largest:e}",
            "rdtsc",
            "shl rdx, 32",
            "or rax, rdx",
            "mov {prev}, rax",
            "mov {start}, rax",
            "2:",
            "rdtsc",
            "shl rdx, 32",
            "or rax, rdx",
            "mov {gap}, rax",
            "sub {gap}, {prev}",
            "mov {prev}, rax",
            "cmp {gap}, {largest}",
            "jbe 3f",
            "mov {largest}, {gap}",
            "3:",
            "cmp {gap}, [{r}]",
            "jb 4f",
            "inc {jumps}",
            "4:",
            "inc {iters}",
            "cmp {jumps}, [{r} + 8]",
            "jae 5f",
            "cmp {iters}, [{r} + 16]",
            "jae 5f",
            "sub rax, {start}",
            "cmp rax, [{r} + 24]",
            "jb 2b",
            "5:",
            "mov [{r} + 32], {jumps}",
            "mov [{r} + 40], {iters}",
            "mov [{r} + 48], {largest}",
            "movdqu [{out}], xmm0",
            "movdqu [{out} + 16], xmm1",
            "movdqu [{out} + 32], xmm2",
            "movdqu [{out} + 48], xmm3",
            "movdqu [{out} + 64], xmm4",
            "movdqu [{out} + 80], xmm5",
            "movdqu [{out} + 96], xmm6",
            "movdqu [{out} + 112], xmm7",
            "movdqu [{out} + 128], xmm8",
            "movdqu [{out} + 144], xmm9",
            "movdqu [{out} + 160], xmm10",
            "movdqu [{out} + 176], xmm11",
            "movdqu [{out} + 192], xmm12",
            "movdqu [{out} + 208], xmm13",
            "movdqu [{out} + 224], xmm14",
            "movdqu [{out} + 240], xmm15",
            inp = in(reg) input.as_ptr(),
            out = in(reg) out.as_mut_ptr(),
            r = in(reg) r as *mut Round,
            jumps = out(reg) _,
            iters = out(reg) _,
            largest = out(reg) _,
            prev = out(reg) _,
            start = out(reg) _,
            gap = out(reg) _,
            out("rax") _, out("rdx") _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            options(nostack),
        );
    }
    out
}

fn compare(got: &Xmm, want: &Xmm, r: &Round) -> CheckResult {
    let mut diffs = String::new();
    for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
        if g != w && diffs.len() < 200 {
            diffs.push_str(&format!(
                " xmm{i}={:016x}{:016x} (expected {:016x}{:016x})",
                g[1], g[0], w[1], w[0]
            ));
        }
    }
    ensure(diffs.is_empty(), || {
        format!(
            "after {} preemptions in {} iterations:{diffs}",
            r.jumps, r.iterations
        )
    })
}

fn guest_main(_info: &GuestStartInfo) -> i32 {
    println!(
        "preempt-sse: xmm0-xmm15 across preemption ({ROUNDS} rounds of {JUMPS_PER_ROUND} TSC gaps >= {JUMP_CYCLES} cycles)"
    );
    let mut c = Checks::console();
    let mut total_jumps = 0;
    for round in 1..=ROUNDS {
        let want = pattern(0x5eed_0000_0000_0000 | round);
        let mut r = Round {
            threshold: JUMP_CYCLES,
            want: JUMPS_PER_ROUND,
            max_iterations: MAX_ITERATIONS,
            max_cycles: MAX_CYCLES,
            jumps: 0,
            iterations: 0,
            largest_gap: 0,
        };
        let got = spin_with_xmm(&want, &mut r);
        total_jumps += r.jumps;
        println!(
            "preempt-sse: round {round}: {} gaps in {} iterations, largest {} cycles",
            r.jumps, r.iterations, r.largest_gap
        );
        c.check(&format!("xmm-across-preemption-round-{round}"), || {
            compare(&got, &want, &r)
        });
    }
    c.check("preempted", || {
        ensure(total_jumps >= MIN_JUMPS, || {
            format!("saw {total_jumps} TSC gaps >= {JUMP_CYCLES} cycles, expected at least {MIN_JUMPS}: not preempted (often enough) to test anything")
        })
    });
    c.finish()
}
