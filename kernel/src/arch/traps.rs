//! Traps and panics. Every exception (and every unexpected vector) is fatal: report
//! everything the CPU told us, then end the QEMU run with a failure status (a fault must
//! never look like success). The local APIC's timer and spurious vectors and the device
//! (MSI) vectors 0x40..=0xEF are ordinary interrupts ([`super::lapic`]): counted or
//! recorded as pending, EOIed, and returned from.

use core::fmt::{self, Write};
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::exit::{ExitCode, exit_qemu};
use crate::serial::EmergencyWriter;

/// What `asm/traps.S` pushes, lowest address first.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    /// The CPU's error code, or 0 for vectors that push none.
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

pub const fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        9 => "coprocessor segment overrun",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 floating point",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD floating point",
        20 => "#VE virtualization",
        21 => "#CP control protection",
        28 => "#HV hypervisor injection",
        29 => "#VC VMM communication",
        30 => "#SX security",
        15 | 22..=27 | 31 => "reserved exception",
        _ => "unexpected interrupt",
    }
}

/// Vectors for which the CPU pushes an error code (the stubs push 0 for the others).
pub const fn has_error_code(vector: u64) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// Page-fault error code bits in words.
pub struct PageFaultCode(pub u64);

impl fmt::Display for PageFaultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        write!(
            f,
            "{} {} in {} mode{}{}",
            if c & 1 != 0 {
                "protection violation"
            } else {
                "not-present page"
            },
            if c & 2 != 0 {
                "write"
            } else if c & 16 != 0 {
                "instruction fetch"
            } else {
                "read"
            },
            if c & 4 != 0 { "user" } else { "supervisor" },
            if c & 8 != 0 { ", reserved bit set" } else { "" },
            if c & 32 != 0 { ", protection key" } else { "" },
        )
    }
}

/// Write the full report of a trap. `cr2`/`cr3` are passed in so this is host testable.
pub fn write_report(w: &mut dyn Write, f: &TrapFrame, cr2: u64, cr3: u64) -> fmt::Result {
    writeln!(w)?;
    writeln!(
        w,
        "!!! EXCEPTION vector {} ({}) error code {:#x}",
        f.vector,
        exception_name(f.vector),
        f.error_code
    )?;
    if f.vector == 14 {
        writeln!(w, "!!! page fault: {}", PageFaultCode(f.error_code))?;
    }
    writeln!(
        w,
        "!!! RIP={:#018x} CS={:#06x} RFLAGS={:#010x}",
        f.rip, f.cs, f.rflags
    )?;
    writeln!(
        w,
        "!!! RSP={:#018x} SS={:#06x} CR2={:#x} CR3={:#x}",
        f.rsp, f.ss, cr2, cr3
    )?;
    writeln!(
        w,
        "!!! RAX={:#018x} RBX={:#018x} RCX={:#018x} RDX={:#018x}",
        f.rax, f.rbx, f.rcx, f.rdx
    )?;
    writeln!(
        w,
        "!!! RSI={:#018x} RDI={:#018x} RBP={:#018x} R8 ={:#018x}",
        f.rsi, f.rdi, f.rbp, f.r8
    )?;
    writeln!(
        w,
        "!!! R9 ={:#018x} R10={:#018x} R11={:#018x} R12={:#018x}",
        f.r9, f.r10, f.r11, f.r12
    )?;
    writeln!(
        w,
        "!!! R13={:#018x} R14={:#018x} R15={:#018x}",
        f.r13, f.r14, f.r15
    )
}

static IN_TRAP: AtomicU32 = AtomicU32::new(0);
static PANICKING: AtomicBool = AtomicBool::new(false);

/// Called by the assembly stubs for every vector. The LAPIC timer and spurious vectors
/// are handled and return (the stub then IRETs); anything else is fatal
/// ([`fatal_trap`]).
pub fn handle_trap(frame: &TrapFrame) {
    if super::lapic::is_host_interrupt(frame.vector) {
        super::lapic::handle_interrupt(frame.vector);
        return;
    }
    fatal_trap(frame)
}

/// Report the trap and exit with [`ExitCode::Exception`].
pub fn fatal_trap(frame: &TrapFrame) -> ! {
    if IN_TRAP.fetch_add(1, Ordering::SeqCst) > 0 {
        // A fault while reporting a fault: say the least possible and leave.
        let _ = writeln!(
            EmergencyWriter,
            "\n!!! EXCEPTION vector {} while handling an exception",
            frame.vector
        );
        exit_qemu(ExitCode::Exception);
    }
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    let cr3 = x86_64::registers::control::Cr3::read_raw()
        .0
        .start_address()
        .as_u64();
    let _ = write_report(&mut EmergencyWriter, frame, cr2, cr3);
    exit_qemu(ExitCode::Exception)
}

/// The panic handler's body: location and message, then [`ExitCode::Panic`].
pub fn handle_panic(info: &PanicInfo<'_>) -> ! {
    if PANICKING.swap(true, Ordering::SeqCst) {
        let _ = writeln!(EmergencyWriter, "\n!!! PANIC while panicking");
        exit_qemu(ExitCode::Panic);
    }
    let _ = write_panic(&mut EmergencyWriter, info);
    exit_qemu(ExitCode::Panic)
}

fn write_panic(w: &mut dyn Write, info: &PanicInfo<'_>) -> fmt::Result {
    match info.location() {
        Some(l) => writeln!(
            w,
            "\n!!! PANIC at {}:{}:{}: {}",
            l.file(),
            l.line(),
            l.column(),
            info.message()
        ),
        None => writeln!(w, "\n!!! PANIC at unknown location: {}", info.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout_matches_the_stub() {
        // 15 GPRs + vector + error code + 5 words the CPU pushes.
        assert_eq!(core::mem::size_of::<TrapFrame>(), 22 * 8);
        assert_eq!(core::mem::offset_of!(TrapFrame, vector), 15 * 8);
        assert_eq!(core::mem::offset_of!(TrapFrame, rip), 17 * 8);
    }

    #[test]
    fn report_has_everything() {
        let f = TrapFrame {
            vector: 14,
            error_code: 0,
            rip: 0x10_2345,
            rsp: 0x20_0000,
            rax: 7,
            ..Default::default()
        };
        let mut s = String::new();
        write_report(&mut s, &f, 0x4000_0000_0000, 0x10_3000).unwrap();
        assert!(
            s.contains("EXCEPTION vector 14 (#PF page fault) error code 0x0"),
            "{s}"
        );
        assert!(
            s.contains("not-present page read in supervisor mode"),
            "{s}"
        );
        assert!(s.contains("RIP=0x0000000000102345"), "{s}");
        assert!(s.contains("CR2=0x400000000000"), "{s}");
        assert!(s.contains("RAX=0x0000000000000007"), "{s}");
    }

    #[test]
    fn names_and_error_codes() {
        assert_eq!(exception_name(6), "#UD invalid opcode");
        assert_eq!(exception_name(77), "unexpected interrupt");
        assert!(
            has_error_code(14) && has_error_code(8) && !has_error_code(6) && !has_error_code(3)
        );
    }
}
