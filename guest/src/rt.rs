//! Start and end of a guest program: [`start`] (called by `_start`), [`exit`],
//! [`panic`].

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sluice_abi::{GuestStartInfo, client};

use crate::{console, heap};

/// Exit status of a guest that panicked.
pub const PANIC_STATUS: i32 = 101;
/// Exit status of a guest whose start info is unusable (null, misaligned, bad magic).
pub const BAD_START_INFO_STATUS: i32 = 100;

/// [`cr_fixups`] bit: `_start` had to clear CR0.EM or set CR0.MP.
pub const FIXED_CR0: u64 = 1;
/// [`cr_fixups`] bit: `_start` had to set CR4.OSFXSR or CR4.OSXMMEXCPT.
pub const FIXED_CR4: u64 = 2;

static CR_FIXUPS: AtomicU64 = AtomicU64::new(0);

/// Which SSE control bits the hypervisor had not set at entry and `_start` set itself
/// ([`FIXED_CR0`], [`FIXED_CR4`]); 0 when the hypervisor enabled SSE as documented.
pub fn cr_fixups() -> u64 {
    CR_FIXUPS.load(Ordering::Relaxed)
}

/// Called by `_start` on the guest's stack with RDI = the start info's address,
/// RSI = the control-register bits it fixed and RDX = the end of the image
/// (`__guest_end`): sets up the heap over the free RAM ([`heap::free_ram`], else the
/// static arena), runs `main` and exits with its status.
pub fn start(
    start_info: u64,
    cr_fixups: u64,
    image_end: u64,
    main: fn(&GuestStartInfo) -> i32,
) -> ! {
    CR_FIXUPS.store(cr_fixups, Ordering::Relaxed);
    let aligned = start_info % core::mem::align_of::<GuestStartInfo>() as u64 == 0;
    if start_info == 0 || !aligned {
        crate::println!("bad start info address {start_info:#x}");
        exit(BAD_START_INFO_STATUS);
    }
    // SAFETY: the hypervisor put a GuestStartInfo at this guest-physical address, which is
    // identity-mapped RAM; it is aligned (checked above) and nothing writes it while the
    // guest runs.
    let info = unsafe { &*(start_info as *const GuestStartInfo) };
    if !info.is_valid() {
        crate::println!(
            "bad start info at {start_info:#x}: magic {:#x}, ABI version {}",
            info.magic,
            info.abi_version
        );
        exit(BAD_START_INFO_STATUS);
    }
    match heap::free_ram(info.ram_base, info.ram_size, image_end, crate::x86::cr3()) {
        Some((start, len)) if len >= heap::HEAP_SIZE as u64 => {
            // SAFETY: free_ram lies between the end of the loaded image (code, data,
            // .bss with the stack) and the hypervisor's page tables and boot stack, inside
            // the guest's RAM, which the hypervisor identity-mapped; nothing else uses it.
            unsafe { heap::init_region(start, len) };
        }
        _ => heap::init(),
    }
    exit(main(info))
}

/// Ends the guest with `status` (the EXIT hypercall; a negative status is passed as its
/// two's-complement `u64`). Never returns.
pub fn exit(status: i32) -> ! {
    client::exit(status as i64 as u64)
}

static PANICKING: AtomicBool = AtomicBool::new(false);

/// The guests' panic handler: `PANIC at file:line:col: message`, then exit 101.
pub fn panic(info: &PanicInfo<'_>) -> ! {
    if !PANICKING.swap(true, Ordering::Relaxed) {
        let mut out = console::Console;
        let _ = core::fmt::Write::write_fmt(&mut out, format_args!("{}\n", PanicLine(info)));
    }
    exit(PANIC_STATUS)
}

/// `_Unwind_Resume` was reached (never with `panic = "abort"`).
pub fn unwind_resume() -> ! {
    let _ = console::write_str("PANIC at unwind: _Unwind_Resume reached\n");
    exit(PANIC_STATUS)
}

/// Formats a panic as `PANIC at file:line:col: message`.
pub struct PanicLine<'a, 'b>(pub &'a PanicInfo<'b>);

impl core::fmt::Display for PanicLine<'_, '_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("PANIC at ")?;
        match self.0.location() {
            Some(l) => write!(f, "{}:{}:{}", l.file(), l.line(), l.column())?,
            None => f.write_str("unknown location")?,
        }
        write!(f, ": {}", self.0.message())
    }
}
