//! Interrupts and exceptions for guests: the guest's own GDT (with a TSS), an IDT of
//! 256 gates that all run on IST1, exception reports, and handlers for vectors 32..=255.
//!
//! # Why the guest loads its own GDT
//!
//! The hypervisor enters a guest with the CS/SS/DS... *caches* set (CS selector 0x08,
//! 64-bit code; data 0x10) but with **GDTR = base 0, limit 0** and IDTR empty. That is
//! enough to run, but not to take an interrupt: `iretq` reloads CS and SS from the GDT
//! and would raise #GP. [`init`] therefore builds a small GDT in `.data`/`.bss` —
//! null, 0x08 = 64-bit code (DPL 0), 0x10 = data, 0x18 = 64-bit TSS (16 bytes) —
//! loads it, reloads CS with a far return (`lretq`) and DS/ES/SS/FS/GS with 0x10,
//! loads TR with 0x18 and then the IDT. The selectors equal the hypervisor's, so
//! nothing the guest saw before changes.
//!
//! # Why IST1
//!
//! Guest code (ours and the prebuilt `core`/`alloc`) is compiled for the host target,
//! which uses the 128-byte red zone below RSP. An interrupt delivered on the current
//! stack would push its frame over that live data. Every gate therefore uses IST1: the
//! CPU switches to a separate 16 KiB interrupt stack ([`IST_STACK_SIZE`]) for each
//! interrupt or exception, whatever was running. Consequence: handlers must not enable
//! interrupts (gates are interrupt gates, IF = 0 inside; a nested interrupt would reuse
//! the IST stack from its top and overwrite the outer frame). An exception inside a
//! handler is fatal anyway (it reports and exits).
//!
//! # What the stubs save
//!
//! The 256 stubs (`global_asm!`, 16 bytes apart) push a zero error code where the CPU
//! pushes none, push the vector, then the common path saves all 15 GPRs **and the
//! x87/SSE state** (`fxsave` into 512 bytes on the IST stack), clears DF and calls
//! [`sluice_guest_interrupt`]; after it returns everything is restored and `iretq`
//! resumes the interrupted code. Handlers are ordinary Rust `fn()`s and may use SSE.
//!
//! # Vectors
//!
//! - 0..=31 (exceptions): `PANIC: exception N at RIP (#XX, error E[, CR2 A])` on the
//!   console, then exit with [`EXCEPTION_STATUS`] (102).
//! - 32..=255: the count of the vector ([`count`]) is incremented, then the handler
//!   registered with [`register`] (if any) runs; then `iretq`.
//!
//! Nothing here runs unless the program calls [`init`]; guests that never do keep the
//! hypervisor's entry state (no GDT, no IDT).

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::rt;

/// Exit status of a guest that took a CPU exception (vector 0..=31).
pub const EXCEPTION_STATUS: i32 = 102;
/// The first vector that is an interrupt, not an exception.
pub const FIRST_INTERRUPT: u8 = 32;
/// Size of the IST1 stack every gate switches to.
pub const IST_STACK_SIZE: usize = 16 * 1024;

/// GDT selectors (the same as the hypervisor's entry state).
pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;
pub const TSS_SELECTOR: u16 = 0x18;

/// Flat 64-bit code, DPL 0: P, S, type execute/read, L, G, limit 0xfffff.
pub const CODE64_DESCRIPTOR: u64 = 0x00AF_9A00_0000_FFFF;
/// Flat data, DPL 0: P, S, type read/write, D/B, G, limit 0xfffff.
pub const DATA_DESCRIPTOR: u64 = 0x00CF_9200_0000_FFFF;
/// Size of a 64-bit TSS (no I/O bitmap).
pub const TSS_SIZE: usize = 104;

/// Vectors for which the CPU pushes an error code.
pub const fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// The 16-byte 64-bit TSS descriptor of a TSS at `base` (type 9: available).
pub const fn tss_descriptor(base: u64) -> [u64; 2] {
    let limit = (TSS_SIZE - 1) as u64;
    let low = (limit & 0xFFFF)
        | ((base & 0xFF_FFFF) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xF) << 48)
        | (((base >> 24) & 0xFF) << 56);
    [low, base >> 32]
}

/// The 16-byte 64-bit interrupt gate to `handler` (present, DPL 0, type 0xE, IST `ist`).
pub const fn interrupt_gate(handler: u64, selector: u16, ist: u8) -> [u64; 2] {
    let low = (handler & 0xFFFF)
        | ((selector as u64) << 16)
        | (((ist & 7) as u64) << 32)
        | (0x8E << 40)
        | (((handler >> 16) & 0xFFFF) << 48);
    [low, handler >> 32]
}

/// Short mnemonic of an exception vector (`#PF`), `"#?"` for reserved ones.
pub const fn exception_name(vector: u8) -> &'static str {
    match vector {
        0 => "#DE",
        1 => "#DB",
        2 => "NMI",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        8 => "#DF",
        10 => "#TS",
        11 => "#NP",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        18 => "#MC",
        19 => "#XM",
        20 => "#VE",
        21 => "#CP",
        28 => "#HV",
        29 => "#VC",
        30 => "#SX",
        _ => "#?",
    }
}

// ---- The tables (in the image's RW segment: guest RAM above 2 MiB) ----

#[repr(C, align(16))]
struct Tables {
    gdt: [u64; 5],
    tss: [u32; TSS_SIZE / 4],
    idt: [[u64; 2]; 256],
}

struct Shared(UnsafeCell<Tables>);

// SAFETY: written only by `init`, once (guarded by INITIALIZED), before the tables are
// loaded; afterwards only the CPU reads them.
unsafe impl Sync for Shared {}

static TABLES: Shared = Shared(UnsafeCell::new(Tables {
    gdt: [0; 5],
    tss: [0; TSS_SIZE / 4],
    idt: [[0; 2]; 256],
}));

#[repr(C, align(16))]
struct IstStack(UnsafeCell<[u8; IST_STACK_SIZE]>);

// SAFETY: only the CPU uses it (as the IST1 stack); Rust never accesses it.
unsafe impl Sync for IstStack {}

static IST1: IstStack = IstStack(UnsafeCell::new([0; IST_STACK_SIZE]));

static INITIALIZED: AtomicBool = AtomicBool::new(false);
static IN_EXCEPTION: AtomicBool = AtomicBool::new(false);

const NO_HANDLER: usize = 0;
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_HANDLER: AtomicUsize = AtomicUsize::new(NO_HANDLER);
#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
static HANDLERS: [AtomicUsize; 256] = [EMPTY_HANDLER; 256];
static COUNTS: [AtomicU64; 256] = [ZERO; 256];

#[repr(C, packed)]
struct DescriptorTablePointer {
    limit: u16,
    base: u64,
}

unsafe extern "C" {
    /// The first of the 256 entry stubs (`global_asm!` below), 16 bytes apart.
    static sluice_guest_isr_stubs: [u8; 256 * 16];
}

/// Builds and loads the GDT (with TSS, TR = 0x18), reloads the segment registers and
/// loads the IDT (every gate an interrupt gate on IST1). Interrupts stay as they are
/// (off at entry). Idempotent.
pub fn init() {
    if INITIALIZED.swap(true, Ordering::AcqRel) {
        return;
    }
    let t = TABLES.0.get();
    // Only the address of the stub table (global_asm! below) is taken.
    let stubs = core::ptr::addr_of!(sluice_guest_isr_stubs) as u64;
    let ist_top = IST1.0.get() as u64 + IST_STACK_SIZE as u64;
    // SAFETY: INITIALIZED makes this the only writer; nothing has loaded the tables yet.
    unsafe {
        let tables = &mut *t;
        tables.gdt[1] = CODE64_DESCRIPTOR;
        tables.gdt[2] = DATA_DESCRIPTOR;
        let [lo, hi] = tss_descriptor(core::ptr::addr_of!(tables.tss) as u64);
        tables.gdt[3] = lo;
        tables.gdt[4] = hi;
        // IST1 at byte 0x24; the I/O map base (byte 0x66) past the limit: no bitmap.
        tables.tss[9] = ist_top as u32;
        tables.tss[10] = (ist_top >> 32) as u32;
        tables.tss[25] = (TSS_SIZE as u32) << 16;
        for (v, gate) in tables.idt.iter_mut().enumerate() {
            *gate = interrupt_gate(stubs + 16 * v as u64, CODE_SELECTOR, 1);
        }
    }
    // SAFETY: the tables are static and now complete.
    let (gdtr, idtr) = unsafe {
        (
            DescriptorTablePointer {
                limit: (core::mem::size_of::<[u64; 5]>() - 1) as u16,
                base: core::ptr::addr_of!((*t).gdt) as u64,
            },
            DescriptorTablePointer {
                limit: (core::mem::size_of::<[[u64; 2]; 256]>() - 1) as u16,
                base: core::ptr::addr_of!((*t).idt) as u64,
            },
        )
    };
    // SAFETY: the GDT's 0x08/0x10 match the segments we run with, so reloading them
    // changes nothing but makes them backed by a table; the TSS descriptor is
    // available (not busy: INITIALIZED runs this once); the IDT's gates point at the
    // stubs. The far return uses the stack (no `nostack`).
    unsafe {
        asm!(
            "lgdt [{gdtr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov {tmp:e}, {ds}",
            "mov ds, {tmp:e}",
            "mov es, {tmp:e}",
            "mov ss, {tmp:e}",
            "mov fs, {tmp:e}",
            "mov gs, {tmp:e}",
            "mov {tmp:e}, {tr}",
            "ltr {tmp:x}",
            "lidt [{idtr}]",
            gdtr = in(reg) &gdtr,
            idtr = in(reg) &idtr,
            cs = const CODE_SELECTOR as u64,
            ds = const DATA_SELECTOR as u32,
            tr = const TSS_SELECTOR as u32,
            tmp = out(reg) _,
        );
    }
}

/// Whether [`init`] has run.
pub fn initialized() -> bool {
    INITIALIZED.load(Ordering::Acquire)
}

/// Registers `handler` for `vector` (32..=255; others are refused with `false`). It runs
/// with interrupts off, on the IST1 stack, after the vector's count was incremented.
pub fn register(vector: u8, handler: fn()) -> bool {
    if vector < FIRST_INTERRUPT {
        return false;
    }
    HANDLERS[vector as usize].store(handler as usize, Ordering::Release);
    true
}

/// Removes the handler of `vector` (the count keeps counting).
pub fn unregister(vector: u8) {
    HANDLERS[vector as usize].store(NO_HANDLER, Ordering::Release);
}

/// How often `vector` was delivered since the start (or [`reset_count`]).
pub fn count(vector: u8) -> u64 {
    COUNTS[vector as usize].load(Ordering::Acquire)
}

/// Sets the count of `vector` to 0.
pub fn reset_count(vector: u8) {
    COUNTS[vector as usize].store(0, Ordering::Release);
}

/// `sti`: interrupts on. A compiler barrier too (handlers change memory).
pub fn enable() {
    // SAFETY: sti only lets the CPU deliver interrupts, which [`init`] made safe to take
    // (call it first).
    unsafe { asm!("sti", options(nostack)) };
}

/// `cli`: interrupts off. A compiler barrier too.
pub fn disable() {
    // SAFETY: cli has no other effect.
    unsafe { asm!("cli", options(nostack)) };
}

/// Whether RFLAGS.IF is set.
pub fn enabled() -> bool {
    let flags: u64;
    // SAFETY: reads RFLAGS through the stack (no `nostack`).
    unsafe { asm!("pushfq", "pop {}", out(reg) flags) };
    flags & (1 << 9) != 0
}

/// `sti; hlt`: enables interrupts and halts until one arrives (the one-instruction
/// shadow of `sti` makes the pair atomic: an interrupt pending before cannot be missed).
/// Returns with interrupts on.
pub fn enable_and_halt() {
    // SAFETY: as for `enable`; HLT at CPL 0 only waits.
    unsafe { asm!("sti", "hlt", options(nostack)) };
}

/// Waits with interrupts on until `done()`: first up to `spins` checks with `pause`,
/// then up to `halts` rounds of `cli; check; sti; hlt`. Returns with interrupts off and
/// whether `done()` became true.
pub fn wait_until(mut done: impl FnMut() -> bool, spins: u64, halts: u64) -> bool {
    enable();
    for _ in 0..spins {
        if done() {
            disable();
            return true;
        }
        core::hint::spin_loop();
    }
    for _ in 0..halts {
        disable();
        if done() {
            return true;
        }
        enable_and_halt();
    }
    disable();
    done()
}

/// The stubs' common path calls this with the vector and a pointer to
/// `[vector, error code, RIP, CS, RFLAGS, RSP, SS]` on the IST stack.
#[unsafe(no_mangle)]
extern "C" fn sluice_guest_interrupt(vector: u64, frame: *const u64) {
    let vector = vector as u8;
    if vector < FIRST_INTERRUPT {
        // SAFETY: the stub passes its frame: 7 words on the IST stack.
        let frame = unsafe { core::slice::from_raw_parts(frame, 7) };
        exception(vector, frame[1], frame[2]);
    }
    COUNTS[vector as usize].fetch_add(1, Ordering::AcqRel);
    let h = HANDLERS[vector as usize].load(Ordering::Acquire);
    if h != NO_HANDLER {
        // SAFETY: only `register` stores non-zero values, and those are `fn()`s.
        let f: fn() = unsafe { core::mem::transmute::<usize, fn()>(h) };
        f();
    }
}

fn exception(vector: u8, error: u64, rip: u64) -> ! {
    if IN_EXCEPTION.swap(true, Ordering::AcqRel) {
        // An exception while reporting one: do not try to print again.
        rt::exit(EXCEPTION_STATUS);
    }
    let name = exception_name(vector);
    if vector == 14 {
        let cr2: u64;
        // SAFETY: reading CR2 at CPL 0 has no side effects.
        unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
        crate::println!(
            "PANIC: exception {vector} at {rip:#x} ({name}, error {error:#x}, CR2 {cr2:#x})"
        );
    } else {
        crate::println!("PANIC: exception {vector} at {rip:#x} ({name}, error {error:#x})");
    }
    rt::exit(EXCEPTION_STATUS)
}

// The 256 entry stubs, 16 bytes apart, and their common path. Stack on entry (IST1,
// 16-byte aligned by the CPU): SS, RSP, RFLAGS, CS, RIP[, error code].
global_asm!(
    ".section .text.sluice_guest_isr, \"ax\"",
    ".balign 16",
    ".global sluice_guest_isr_stubs",
    "sluice_guest_isr_stubs:",
    ".set sluice_isr_vec, 0",
    ".rept 256",
    ".balign 16",
    ".if (sluice_isr_vec == 8) || ((sluice_isr_vec >= 10) && (sluice_isr_vec <= 14)) || (sluice_isr_vec == 17) || (sluice_isr_vec == 21) || (sluice_isr_vec == 29) || (sluice_isr_vec == 30)",
    ".else",
    "    push 0",
    ".endif",
    "    push sluice_isr_vec",
    "    jmp sluice_guest_isr_common",
    ".set sluice_isr_vec, sluice_isr_vec + 1",
    ".endr",
    ".balign 16",
    "sluice_guest_isr_common:",
    "    push rax",
    "    push rbx",
    "    push rcx",
    "    push rdx",
    "    push rsi",
    "    push rdi",
    "    push rbp",
    "    push r8",
    "    push r9",
    "    push r10",
    "    push r11",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    // 5 (+error, +vector) + 15 words = 176 bytes below a 16-byte boundary: aligned.
    "    sub rsp, 512",
    "    fxsave [rsp]",
    "    cld",
    "    mov rdi, [rsp + 512 + 15 * 8]",
    "    lea rsi, [rsp + 512 + 15 * 8]",
    "    call sluice_guest_interrupt",
    "    fxrstor [rsp]",
    "    add rsp, 512",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop r11",
    "    pop r10",
    "    pop r9",
    "    pop r8",
    "    pop rbp",
    "    pop rdi",
    "    pop rsi",
    "    pop rdx",
    "    pop rcx",
    "    pop rbx",
    "    pop rax",
    // Vector and error code.
    "    add rsp, 16",
    "    iretq",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors() {
        // The same values the kernel's own GDT uses for 64-bit code and flat data.
        assert_eq!(CODE64_DESCRIPTOR >> 40 & 0xFF, 0x9A);
        assert_eq!(CODE64_DESCRIPTOR >> 52 & 0xF, 0xA); // G | L
        assert_eq!(DATA_DESCRIPTOR >> 40 & 0xFF, 0x92);
        let [lo, hi] = tss_descriptor(0x1234_5678_9ABC_DEF0);
        assert_eq!(lo & 0xFFFF, 103);
        assert_eq!(lo >> 16 & 0xFF_FFFF, 0xBC_DEF0);
        assert_eq!(lo >> 40 & 0xFF, 0x89);
        assert_eq!(lo >> 56, 0x9A);
        assert_eq!(hi, 0x1234_5678);
    }

    #[test]
    fn gates() {
        let [lo, hi] = interrupt_gate(0xFFFF_8000_0020_1230, 0x08, 1);
        assert_eq!(lo & 0xFFFF, 0x1230);
        assert_eq!(lo >> 16 & 0xFFFF, 0x08);
        assert_eq!(lo >> 32 & 7, 1);
        assert_eq!(lo >> 40 & 0xFF, 0x8E);
        assert_eq!(lo >> 48, 0x0020);
        assert_eq!(hi, 0xFFFF_8000);
    }

    #[test]
    fn error_codes_and_names() {
        let with: Vec<u8> = (0..32).filter(|&v| has_error_code(v)).collect();
        assert_eq!(with, [8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);
        assert_eq!(exception_name(14), "#PF");
        assert_eq!(exception_name(15), "#?");
    }

    #[test]
    fn stubs_are_16_bytes_apart() {
        // The stub table is assembled into the test binary too: check the layout the
        // gates rely on (push 0 / push vec / jmp fits 16 bytes for every vector).
        // SAFETY: reading code bytes of our own binary.
        let stubs = unsafe { &*core::ptr::addr_of!(sluice_guest_isr_stubs) };
        // Vector 0: `push 0` (6a 00), `push 0` (6a 00).
        assert_eq!(&stubs[..4], &[0x6a, 0x00, 0x6a, 0x00]);
        // Vector 8 has an error code: `push 8` (6a 08) first.
        assert_eq!(&stubs[8 * 16..8 * 16 + 2], &[0x6a, 0x08]);
        // Vector 0x40: `push 0` then `push 0x40`.
        assert_eq!(&stubs[0x40 * 16..0x40 * 16 + 4], &[0x6a, 0x00, 0x6a, 0x40]);
        // Vector 200: `push 0` then `push imm32 200` (68 c8 00 00 00).
        assert_eq!(
            &stubs[200 * 16..200 * 16 + 7],
            &[0x6a, 0x00, 0x68, 0xc8, 0, 0, 0]
        );
    }
}
