//! Ending a QEMU run with a status the test harness can tell apart.
//!
//! `isa-debug-exit` (port 0xf4) makes QEMU exit with `(value << 1) | 1`. Every value we
//! write gives an odd status >= 33, so none can be confused with a triple fault under
//! `-no-reboot` (status 0) or a `timeout` kill (124).

use x86_64::instructions::port::Port;

pub const DEBUG_EXIT_PORT: u16 = 0xf4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// Bring-up completed (QEMU status 33).
    Success = 0x10,
    /// The boot stopped cleanly because something it needs is missing (status 35).
    BootFailed = 0x11,
    /// A Rust panic (status 37).
    Panic = 0x12,
    /// A CPU exception or unexpected interrupt (status 39).
    Exception = 0x13,
}

impl ExitCode {
    /// The process status QEMU exits with.
    pub const fn qemu_status(self) -> i32 {
        ((self as i32) << 1) | 1
    }
}

/// Exit QEMU; if no debug-exit device is present, halt forever with interrupts off.
pub fn exit_qemu(code: ExitCode) -> ! {
    let mut port: Port<u32> = Port::new(DEBUG_EXIT_PORT);
    // SAFETY: writing to the isa-debug-exit port terminates QEMU; on a machine without
    // the device the write goes nowhere.
    unsafe { port.write(code as u32) };
    halt_forever()
}

pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

#[cfg(test)]
mod tests {
    use super::ExitCode;

    #[test]
    fn statuses_are_distinct_from_triple_fault_and_timeout() {
        let all = [
            ExitCode::Success,
            ExitCode::BootFailed,
            ExitCode::Panic,
            ExitCode::Exception,
        ];
        let statuses: Vec<i32> = all.iter().map(|c| c.qemu_status()).collect();
        assert_eq!(statuses, vec![33, 35, 37, 39]);
        assert!(!statuses.contains(&0) && !statuses.contains(&124));
    }
}
