//! Serial console (COM1) and the `log` facade on top of it.
//!
//! Normal logging goes through `uart_16550` behind a spin lock. Fault and panic reports
//! use [`EmergencyWriter`], which polls the UART's registers directly and takes no lock:
//! a fault taken while the logger holds its lock must still be reported.

use core::fmt::{self, Write};

use log::{LevelFilter, Log, Metadata, Record};
use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550Tty};
use x86_64::instructions::port::Port;

pub const COM1: u16 = 0x3F8;

static CONSOLE: Mutex<Option<Uart16550Tty<PioBackend>>> = Mutex::new(None);
static LOGGER: SerialLogger = SerialLogger;

/// Initialise COM1 and install the logger at `level`. Safe to call once, first thing.
pub fn init(level: LevelFilter) {
    // SAFETY: COM1's eight I/O ports belong to this console for the kernel's lifetime.
    let tty = unsafe { Uart16550Tty::new_port(COM1, Config::default()) };
    // If the UART fails its loopback self-test we still have the emergency writer.
    *CONSOLE.lock() = tty.ok();
    // Only fails if a logger was already set: then the existing one keeps working.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Change the level after the command line has been read.
pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}

/// Wait for one byte on COM1 (used by the `hold` option). Returns `None` if the console
/// is not available.
pub fn read_byte_blocking() -> Option<u8> {
    loop {
        let mut guard = CONSOLE.lock();
        let tty = guard.as_mut()?;
        if let Ok(b) = tty.inner_mut().try_receive_byte() {
            return Some(b);
        }
        drop(guard);
        core::hint::spin_loop();
    }
}

/// `sluice_kernel::acpi::madt` -> `acpi::madt`, `sluice_pci::enumerate` -> `pci::enumerate`:
/// short module prefixes keep the log readable.
pub fn short_target(target: &str) -> &str {
    let t = target.strip_prefix("sluice_").unwrap_or(target);
    t.strip_prefix("kernel::").unwrap_or(t)
}

struct SerialLogger;

impl Log for SerialLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let target = short_target(record.target());
        let mut guard = CONSOLE.lock();
        match guard.as_mut() {
            Some(tty) => {
                let _ = writeln!(tty, "[{:<5} {}] {}", record.level(), target, record.args());
            }
            None => {
                drop(guard);
                let _ = writeln!(
                    EmergencyWriter,
                    "[{:<5} {}] {}",
                    record.level(),
                    target,
                    record.args()
                );
            }
        }
    }

    fn flush(&self) {}
}

/// Lock-free, polling COM1 writer for fault and panic reports.
pub struct EmergencyWriter;

impl EmergencyWriter {
    fn put(byte: u8) {
        let mut lsr: Port<u8> = Port::new(COM1 + 5);
        let mut thr: Port<u8> = Port::new(COM1);
        // Bounded wait for "transmit holding register empty": a dead UART must not hang
        // the fault path.
        for _ in 0..100_000 {
            // SAFETY: reading the line status register of COM1 has no side effects.
            if unsafe { lsr.read() } & 0x20 != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        // SAFETY: writing a byte to COM1's transmit register only sends it.
        unsafe { thr.write(byte) };
    }
}

impl Write for EmergencyWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                Self::put(b'\r');
            }
            Self::put(b);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::short_target;

    #[test]
    fn targets_are_shortened() {
        assert_eq!(short_target("sluice_kernel::acpi::madt"), "acpi::madt");
        assert_eq!(short_target("sluice_pci::enumerate"), "pci::enumerate");
        assert_eq!(short_target("sluice_kernel"), "kernel");
        assert_eq!(short_target("other::x"), "other::x");
    }
}
