//! The few privileged instructions the test guests use.

use core::arch::asm;

/// `out dx, al`.
///
/// # Safety
///
/// Port I/O has side effects on the device behind `port` (or, in a Sluice guest, may end
/// the guest if the port is not allowed).
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller vouches for the port.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// `rdmsr`: the MSR's value (EDX:EAX).
///
/// # Safety
///
/// Reading an MSR the CPU does not have raises #GP; in a Sluice guest an MSR that is
/// not allowed ends the guest.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller vouches for the MSR.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// CPUID: `[eax, ebx, ecx, edx]` of `leaf` (subleaf 0).
pub fn cpuid(leaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// CR3: the guest-physical address of the top-level page table (low 12 bits cleared).
pub fn cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 at CPL 0 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v & !0xfff
}

/// CR3 as it is (table address and the PWT/PCD bits).
pub fn cr3_raw() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 at CPL 0 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Loads CR3 (switches page tables, flushes the non-global TLB entries).
///
/// # Safety
///
/// `value` must point to page tables that map everything the guest uses, including the
/// code running now and its stack.
pub unsafe fn write_cr3(value: u64) {
    // SAFETY: the caller vouches for the tables.
    unsafe { asm!("mov cr3, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// Invalidates the TLB entry of `addr`.
pub fn invlpg(addr: u64) {
    // SAFETY: dropping a TLB entry only makes the CPU re-walk the page tables.
    unsafe { asm!("invlpg [{}]", in(reg) addr, options(nostack, preserves_flags)) };
}

/// CR0 and CR4.
pub fn cr0_cr4() -> (u64, u64) {
    let (cr0, cr4): (u64, u64);
    // SAFETY: reading control registers at CPL 0 has no side effects.
    unsafe {
        asm!("mov {}, cr0", "mov {}, cr4", out(reg) cr0, out(reg) cr4, options(nomem, nostack, preserves_flags));
    }
    (cr0, cr4)
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the counter (a Sluice guest may execute it).
    unsafe { core::arch::x86_64::_rdtsc() }
}
