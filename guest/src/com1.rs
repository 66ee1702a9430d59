//! The legacy serial port COM1 (`out 0x3F8`), which the hypervisor emulates for
//! guests: it collects the bytes a guest writes to the data register and shows each
//! line like a console line. Only the data register is written; no status register is
//! polled (a guest may touch no other port).

use core::fmt::{self, Write};

use crate::x86;

/// COM1's data register.
pub const PORT: u16 = 0x3F8;

/// Writes the bytes to COM1, one `out` each.
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        // SAFETY: COM1's data register; the hypervisor emulates it for guests.
        unsafe { x86::outb(PORT, b) };
    }
}

/// A [`fmt::Write`] to COM1.
#[derive(Clone, Copy, Debug, Default)]
pub struct Com1;

impl Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let _ = Com1.write_fmt(args);
}

/// Prints to COM1 (port I/O to 0x3F8).
#[macro_export]
macro_rules! com1_print {
    ($($arg:tt)*) => {
        $crate::com1::_print(::core::format_args!($($arg)*))
    };
}

/// Prints a line to COM1 (port I/O to 0x3F8).
#[macro_export]
macro_rules! com1_println {
    () => {
        $crate::com1_print!("\n")
    };
    ($($arg:tt)*) => {
        $crate::com1::_print(::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}
