//! `bench`: the cost of a trip to the hypervisor, measured with RDTSC in one run:
//! 10,000 NULL hypercalls (VMMCALL) and 10,000 CPUID(0x40000000) (intercepted CPUID).
//! Prints `bench null-hypercall: N cycles/call`, `bench cpuid-exit: N cycles/call` and
//! `bench ratio: X.XX` (cpuid / null). Not a test: exit status 0 unless a call failed.
#![no_std]
#![no_main]

use core::arch::asm;
use core::arch::x86_64::_rdtsc;

use sluice_guest::abi::{CPUID_LEAF_SIGNATURE, nr};
use sluice_guest::{GuestStartInfo, println};

sluice_guest::entry!(guest_main);

const CALLS: u64 = 10_000;

/// `CALLS` NULL hypercalls back to back; returns (cycles, calls that did not return 0).
fn null_calls() -> (u64, u64) {
    let bad: u64;
    // SAFETY: RDTSC at CPL 0.
    let start = unsafe { _rdtsc() };
    // SAFETY: NULL touches no memory and preserves every register but RAX.
    unsafe {
        asm!(
            "2:",
            "mov eax, {nr}",
            "vmmcall",
            "test rax, rax",
            "jz 3f",
            "inc {bad}",
            "3:",
            "dec {n}",
            "jnz 2b",
            nr = const nr::NULL,
            n = inout(reg) CALLS => _,
            bad = inout(reg) 0u64 => bad,
            out("rax") _,
            in("rdi") 0u64, in("rsi") 0u64, in("rdx") 0u64,
            in("r10") 0u64, in("r8") 0u64, in("r9") 0u64,
            options(nostack, nomem),
        );
    }
    // SAFETY: RDTSC at CPL 0.
    let end = unsafe { _rdtsc() };
    (end - start, bad)
}

/// `CALLS` CPUID(0x40000000) back to back; returns the cycles.
fn cpuid_calls() -> u64 {
    // SAFETY: RDTSC at CPL 0.
    let start = unsafe { _rdtsc() };
    // SAFETY: CPUID only writes the declared registers (RBX is saved by hand: LLVM
    // reserves it).
    unsafe {
        asm!(
            "mov {save}, rbx",
            "2:",
            "mov eax, {leaf}",
            "xor ecx, ecx",
            "cpuid",
            "dec {n}",
            "jnz 2b",
            "mov rbx, {save}",
            leaf = const CPUID_LEAF_SIGNATURE,
            n = inout(reg) CALLS => _,
            save = out(reg) _,
            out("rax") _, out("rcx") _, out("rdx") _,
            options(nostack, nomem),
        );
    }
    // SAFETY: RDTSC at CPL 0.
    let end = unsafe { _rdtsc() };
    end - start
}

/// `a / b` as `X.XX` (rounded), from integers.
fn ratio(a: u64, b: u64) -> (u64, u64) {
    if b == 0 {
        return (0, 0);
    }
    let hundredths = (u128::from(a) * 100 + u128::from(b) / 2) / u128::from(b);
    ((hundredths / 100) as u64, (hundredths % 100) as u64)
}

fn guest_main(_info: &GuestStartInfo) -> i32 {
    // Warm up (first-touch costs in the hypervisor and QEMU's translation cache).
    let _ = null_calls();
    let _ = cpuid_calls();
    let (null, bad) = null_calls();
    let cpuid = cpuid_calls();
    let per_null = null / CALLS;
    let per_cpuid = cpuid / CALLS;
    println!("bench null-hypercall: {per_null} cycles/call");
    println!("bench cpuid-exit: {per_cpuid} cycles/call");
    let (i, f) = ratio(per_cpuid, per_null);
    println!("bench ratio: {i}.{f:02}");
    if bad != 0 {
        println!("bench: {bad} of {CALLS} NULL hypercalls did not return 0");
        return 1;
    }
    0
}
