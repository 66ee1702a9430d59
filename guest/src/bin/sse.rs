//! `sse`: puts known values in xmm0-xmm15, makes 1000 NULL hypercalls (and a few
//! CONSOLE_WRITEs, whose handling in the hypervisor formats text with SSE) without
//! touching them, and checks they kept their values; the same for MXCSR. VMRUN does not
//! switch x87/SSE state, so this fails unless the hypervisor saves and restores it.
//! Exit status 0 if every check passed, else 1.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use core::arch::asm;

use sluice_guest::abi::nr;
use sluice_guest::check::{CheckResult, ensure};
use sluice_guest::{Checks, GuestStartInfo, println, rt, x86};

sluice_guest::entry!(guest_main);

type Xmm = [[u64; 2]; 16];

/// One hypercall, repeated: RAX = `nr`, RDI = `a0`, RSI = `a1`, expected result.
#[repr(C)]
struct Call {
    nr: u64,
    a0: u64,
    a1: u64,
    expect: u64,
}

fn pattern(seed: u64) -> Xmm {
    let mut x = [[0u64; 2]; 16];
    for (i, r) in x.iter_mut().enumerate() {
        let i = i as u64 + 1;
        r[0] = 0x0101_0101_0101_0101u64.wrapping_mul(i) ^ seed;
        r[1] = !(0x1111_0000_2222_0000u64.wrapping_add(i << 8)) ^ seed.rotate_left(17);
    }
    x
}

/// Loads xmm0-xmm15 from `input`, makes `count` hypercalls `call` back to back, stores
/// xmm0-xmm15 to the result. Returns (registers after, number of unexpected results).
fn xmm_across(call: &Call, count: u64, input: &Xmm) -> (Xmm, u64) {
    let mut out: Xmm = [[0; 2]; 16];
    let bad: u64;
    // SAFETY: we are a Sluice guest; the calls made pass either no memory or a buffer the
    // hypervisor only reads. Every register the asm writes is declared.
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
            "2:",
            "mov rax, [{call}]",
            "mov rdi, [{call} + 8]",
            "mov rsi, [{call} + 16]",
            "xor edx, edx",
            "xor r10d, r10d",
            "xor r8d, r8d",
            "xor r9d, r9d",
            "vmmcall",
            "cmp rax, [{call} + 24]",
            "je 3f",
            "inc {bad}",
            "3:",
            "dec {count}",
            "jnz 2b",
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
            call = in(reg) call as *const Call,
            count = inout(reg) count.max(1) => _,
            bad = inout(reg) 0u64 => bad,
            out("rax") _, out("rdi") _, out("rsi") _, out("rdx") _,
            out("r10") _, out("r8") _, out("r9") _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            options(nostack),
        );
    }
    (out, bad)
}

fn compare(what: &str, call: &Call, count: u64, seed: u64) -> CheckResult {
    let want = pattern(seed);
    let (got, bad) = xmm_across(call, count, &want);
    ensure(bad == 0, || {
        format!(
            "{bad} of {count} {what} hypercalls did not return {}",
            call.expect as i64
        )
    })?;
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
        format!("after {count} {what} hypercalls:{diffs}")
    })
}

fn mxcsr_across_null(value: u32, count: u64) -> u32 {
    let before: u32 = 0;
    let mut after: u32 = 0;
    // SAFETY: saves MXCSR, loads `value` (valid: reserved bits clear), makes NULL
    // hypercalls, reads MXCSR and puts the old value back.
    unsafe {
        asm!(
            "stmxcsr [{before}]",
            "ldmxcsr [{value}]",
            "2:",
            "mov eax, 3",
            "xor edi, edi",
            "xor esi, esi",
            "vmmcall",
            "dec {count}",
            "jnz 2b",
            "stmxcsr [{after}]",
            "ldmxcsr [{before}]",
            before = in(reg) &before as *const u32,
            value = in(reg) &value as *const u32,
            after = in(reg) &mut after as *mut u32,
            count = inout(reg) count.max(1) => _,
            out("rax") _, out("rdi") _, out("rsi") _,
            options(nostack),
        );
    }
    after
}

fn guest_main(_info: &GuestStartInfo) -> i32 {
    println!("sse: xmm0-xmm15 and MXCSR across hypercalls");
    let mut c = Checks::console();
    c.check("sse-enabled-by-hypervisor", || {
        let (cr0, cr4) = x86::cr0_cr4();
        ensure(rt::cr_fixups() == 0, || {
            format!(
                "_start had to enable SSE itself (fixups {:#x}; now CR0 {cr0:#x}, CR4 {cr4:#x})",
                rt::cr_fixups()
            )
        })
    });
    let null = Call {
        nr: nr::NULL,
        a0: 0,
        a1: 0,
        expect: 0,
    };
    c.check("xmm-across-1000-null", || {
        compare("NULL", &null, 1000, 0x5eed_0000_0000_0001)
    });
    let line = b"sse: a CONSOLE_WRITE with live xmm registers\n";
    let write = Call {
        nr: nr::CONSOLE_WRITE,
        a0: line.as_ptr() as u64,
        a1: line.len() as u64,
        expect: line.len() as u64,
    };
    c.check("xmm-across-console-write", || {
        compare("CONSOLE_WRITE", &write, 3, 0x5eed_0000_0000_0002)
    });
    c.check("mxcsr-across-null", || {
        // Round toward zero, all exceptions masked (default is 0x1f80).
        let want = 0x7f80;
        let got = mxcsr_across_null(want, 100);
        ensure(got == want, || {
            format!("MXCSR {got:#x} after 100 NULL hypercalls, expected {want:#x}")
        })
    });
    c.finish()
}
