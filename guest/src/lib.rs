//! `sluice_guest`: the runtime of the Sluice test guests, and the guests themselves
//! (`src/bin/*.rs`).
//!
//! # How a guest program is built and entered
//!
//! Every guest is a `no_std`, `no_main` static ELF for the host target, linked by
//! `guest/linker.ld` at guest-physical (= virtual) `0x200000`, one `PT_LOAD` segment per
//! permission (text RX, rodata R, data+bss RW) with `p_vaddr == p_paddr`. The entry
//! point `_start` is the first byte of the image, so `e_entry` is `0x200000`.
//!
//! The hypervisor enters `_start` in 64-bit long mode at CPL 0, paging on with the
//! guest's RAM identity-mapped, interrupts off, RDI = guest-physical address of the
//! [`GuestStartInfo`] (see `sluice_abi`). `_start` (in [`entry!`]):
//!
//! 1. keeps RDI;
//! 2. makes sure SSE is usable — the hypervisor already sets CR0.MP, clears CR0.EM and
//!    sets CR4.OSFXSR|OSXMMEXCPT; `_start` verifies that and only writes CR0/CR4 if a
//!    bit is missing (recorded in [`rt::cr_fixups`], which the `sse` guest checks is 0),
//!    because the prebuilt `core` uses SSE and would otherwise hit #UD (a triple fault
//!    in a guest without an IDT);
//! 3. zeroes `.bss` and switches to a 64 KiB stack in `.bss` ([`STACK_SIZE`]);
//! 4. calls [`rt::start`], which sets up the heap ([`heap`]: the free RAM between the
//!    image and the hypervisor's reserved top), calls the program's
//!    `guest_main(&GuestStartInfo) -> i32` and ends the guest with the EXIT hypercall
//!    and that status.
//!
//! A panic prints `PANIC at file:line:col: message` and exits with status
//! [`rt::PANIC_STATUS`] (101).
//!
//! A program that wants interrupts calls [`interrupts::init`] first: it loads the
//! guest's own GDT (code 0x08, data 0x10, TSS 0x18), a TSS with IST1 and a 256-gate IDT
//! (every gate on IST1, so the red zone of interrupted code is safe); exceptions then
//! print `PANIC: exception N at RIP` and exit with status
//! [`interrupts::EXCEPTION_STATUS`] (102). Without it, a guest has no GDT and no IDT.
//!
//! For device passthrough (the VFIO hypercalls, client `sluice_abi::client::vfio`):
//! [`paging::map_mmio`] maps a device region the hypervisor put at a guest-physical
//! address into the guest's own page tables (uncached), [`dma::alloc`] gives zeroed,
//! aligned DMA buffers from the heap, and [`edu`] drives QEMU's edu device through its
//! mapped BAR0 (`vfio-edu`, `vfio-hostile`); [`passthrough`] holds the steps the
//! guests that hand an edu from one owner to the next share (`vfio-killed`,
//! `vfio-next`).
//!
//! # What a program writes
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! use sluice_guest::{GuestStartInfo, println};
//! sluice_guest::entry!(guest_main);
//! fn guest_main(_info: &GuestStartInfo) -> i32 {
//!     println!("hello");
//!     0
//! }
//! ```
//!
//! The memory functions (`memcpy` & co, in assembly), the panic handler,
//! `rust_eh_personality`, `_Unwind_Resume` and the global allocator are generated in
//! the binary by [`entry!`]; this library stays linkable into host unit tests.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod check;
pub mod com1;
pub mod console;
pub mod dma;
pub mod edu;
pub mod heap;
pub mod interrupts;
pub mod nvme;
pub mod paging;
pub mod passthrough;
pub mod rt;
pub mod x86;

pub use check::Checks;
pub use sluice_abi::{self as abi, Errno, GuestStartInfo, client};

/// Size of the stack `_start` sets up in `.bss`.
pub const STACK_SIZE: usize = 64 * 1024;

/// The guest-physical (= virtual) address every guest program is linked at.
pub const LINK_ADDRESS: u64 = 0x20_0000;

/// Generates the program's entry point and the pieces only a binary may define:
/// `_start`, the stack, `memcpy`/`memset`/`memmove`/`memcmp`/`bcmp`, the panic
/// handler, `rust_eh_personality`, `_Unwind_Resume` and the global allocator.
///
/// `entry!(guest_main)` where `fn guest_main(info: &GuestStartInfo) -> i32`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        ::core::arch::global_asm!(
            ".section .text.start, \"ax\"",
            ".global _start",
            ".type _start, @function",
            "_start:",
            "    cld",
            // RDI = GPA of the GuestStartInfo: keep it while we set up.
            "    mov %rdi, %r12",
            // R13: which control-register bits _start had to fix (see rt::cr_fixups).
            "    xor %r13d, %r13d",
            // SSE: CR0.EM = 0, CR0.MP = 1 (write only if needed).
            "    mov %cr0, %rax",
            "    mov %rax, %rcx",
            "    and $~0x4, %rcx",
            "    or $0x2, %rcx",
            "    cmp %rax, %rcx",
            "    je 1f",
            "    mov %rcx, %cr0",
            "    or $1, %r13",
            "1:",
            // CR4.OSFXSR (bit 9) | CR4.OSXMMEXCPT (bit 10) (write only if needed).
            "    mov %cr4, %rax",
            "    mov %rax, %rcx",
            "    or $0x600, %rcx",
            "    cmp %rax, %rcx",
            "    je 2f",
            "    mov %rcx, %cr4",
            "    or $2, %r13",
            "2:",
            // Zero .bss (the stack is in it and not yet in use).
            "    lea __bss_start(%rip), %rdi",
            "    lea __bss_end(%rip), %rcx",
            "    sub %rdi, %rcx",
            "    xor %eax, %eax",
            "    rep stosb",
            "    lea sluice_guest_stack_top(%rip), %rsp",
            "    xor %ebp, %ebp",
            "    mov %r12, %rdi",
            "    mov %r13, %rsi",
            "    call sluice_guest_rust_start",
            // rt::start never returns.
            "    ud2",
            ".size _start, . - _start",
            "",
            ".section .bss.sluice_guest_stack, \"aw\", @nobits",
            ".balign 16",
            "sluice_guest_stack_bottom:",
            ".skip {stack}",
            "sluice_guest_stack_top:",
            "",
            // memcpy & co: the prebuilt compiler_builtins lacks its "mem" feature on this
            // target. Assembly, not Rust loops (LLVM turns those back into calls).
            ".section .text.sluice_guest_mem, \"ax\"",
            ".global memcpy",
            "memcpy:",
            "    mov %rdi, %rax",
            "    mov %rdx, %rcx",
            "    rep movsb",
            "    ret",
            ".global memset",
            "memset:",
            "    mov %rdi, %r9",
            "    mov %esi, %eax",
            "    mov %rdx, %rcx",
            "    rep stosb",
            "    mov %r9, %rax",
            "    ret",
            ".global memmove",
            "memmove:",
            "    mov %rdi, %rax",
            "    mov %rdx, %rcx",
            "    cmp %rsi, %rdi",
            "    jbe 1f",
            "    lea -1(%rsi, %rcx), %rsi",
            "    lea -1(%rdi, %rcx), %rdi",
            "    std",
            "    rep movsb",
            "    cld",
            "    ret",
            "1:",
            "    rep movsb",
            "    ret",
            ".global memcmp",
            ".global bcmp",
            "memcmp:",
            "bcmp:",
            "    xor %eax, %eax",
            "    test %rdx, %rdx",
            "    jz 3f",
            "2:",
            "    movzbl (%rdi), %eax",
            "    movzbl (%rsi), %ecx",
            "    sub %ecx, %eax",
            "    jnz 3f",
            "    inc %rdi",
            "    inc %rsi",
            "    dec %rdx",
            "    jnz 2b",
            "3:",
            "    ret",
            stack = const $crate::STACK_SIZE,
            options(att_syntax)
        );

        #[unsafe(no_mangle)]
        extern "C" fn sluice_guest_rust_start(start_info: u64, cr_fixups: u64) -> ! {
            unsafe extern "C" {
                /// The end of the image (guest/linker.ld), page aligned.
                static __guest_end: u8;
            }
            // The symbol's address is all we take; nothing is read.
            let image_end = &raw const __guest_end as u64;
            $crate::rt::start(start_info, cr_fixups, image_end, $main)
        }

        #[panic_handler]
        fn sluice_guest_panic(info: &::core::panic::PanicInfo<'_>) -> ! {
            $crate::rt::panic(info)
        }

        /// The prebuilt `core` was compiled with unwinding; with `panic = "abort"` this
        /// is never called, but the linker wants the symbol.
        #[unsafe(no_mangle)]
        extern "C" fn rust_eh_personality() {}

        /// Named by unwinding landing pads in the prebuilt `alloc`; never reached with
        /// `panic = "abort"`. Arriving here is a bug: report it and fail the guest.
        #[unsafe(no_mangle)]
        extern "C" fn _Unwind_Resume() -> ! {
            $crate::rt::unwind_resume()
        }

        #[global_allocator]
        static SLUICE_GUEST_ALLOCATOR: $crate::heap::GuestHeap = $crate::heap::GuestHeap;
    };
}
