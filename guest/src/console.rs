//! The guest console through the CONSOLE_WRITE hypercall: [`print!`](crate::print) and
//! [`println!`](crate::println).
//!
//! Output is collected into lines (at most [`LINE_MAX`] bytes per hypercall) and each
//! complete line is sent with its `\n`; a `print!` without a newline sends its rest at
//! its end. The hypervisor shows every line as `[INFO  guest] [NAME] text`.

use core::fmt::{self, Write};

use sluice_abi::{Errno, client};

/// Bytes buffered before a hypercall.
pub const LINE_MAX: usize = 256;

/// Writes bytes straight to the console hypercall (no buffering).
pub fn write_bytes(bytes: &[u8]) -> Result<usize, Errno> {
    client::console_write(bytes)
}

/// Writes a string straight to the console hypercall.
pub fn write_str(s: &str) -> Result<usize, Errno> {
    write_bytes(s.as_bytes())
}

/// A [`fmt::Write`] to the console hypercall. `write_str` sends its string as is;
/// `write_fmt` (`write!`, `writeln!`) collects the formatted text into lines first, so
/// that a line reaches the hypervisor in one hypercall, not in pieces.
#[derive(Clone, Copy, Debug, Default)]
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_str(s).map(|_| ()).map_err(|_| fmt::Error)
    }

    fn write_fmt(&mut self, args: fmt::Arguments<'_>) -> fmt::Result {
        _print(args);
        Ok(())
    }
}

/// Collects formatted text into lines and hands each to `sink` (a line ends with `\n`;
/// a full buffer or [`LineBuffer::flush`] also hands it over).
pub struct LineBuffer<F: FnMut(&[u8])> {
    buf: [u8; LINE_MAX],
    len: usize,
    sink: F,
}

impl<F: FnMut(&[u8])> LineBuffer<F> {
    pub fn new(sink: F) -> Self {
        LineBuffer {
            buf: [0; LINE_MAX],
            len: 0,
            sink,
        }
    }

    /// Hands over whatever is buffered.
    pub fn flush(&mut self) {
        if self.len > 0 {
            (self.sink)(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl<F: FnMut(&[u8])> Write for LineBuffer<F> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            self.buf[self.len] = b;
            self.len += 1;
            if b == b'\n' || self.len == LINE_MAX {
                self.flush();
            }
        }
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let mut line = LineBuffer::new(|bytes: &[u8]| {
        let _ = write_bytes(bytes);
    });
    let _ = line.write_fmt(args);
    line.flush();
}

/// Prints to the guest console (CONSOLE_WRITE hypercall).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::_print(::core::format_args!($($arg)*))
    };
}

/// Prints a line to the guest console (CONSOLE_WRITE hypercall).
#[macro_export]
macro_rules! println {
    () => {
        $crate::print!("\n")
    };
    ($($arg:tt)*) => {
        $crate::console::_print(::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec::Vec;

    fn lines_of(f: impl FnOnce(&mut dyn Write)) -> Vec<String> {
        let mut out = Vec::new();
        {
            let mut lb = LineBuffer::new(|b: &[u8]| out.push(String::from_utf8_lossy(b).into()));
            f(&mut lb);
            lb.flush();
        }
        out
    }

    #[test]
    fn splits_into_lines() {
        let got = lines_of(|w| {
            let _ = write!(w, "a{}\nbc\n", 1);
            let _ = w.write_str("tail");
        });
        assert_eq!(got, ["a1\n", "bc\n", "tail"]);
    }

    #[test]
    fn long_lines_are_cut_at_the_buffer_size() {
        let long = "x".repeat(LINE_MAX + 3);
        let got = lines_of(|w| {
            let _ = writeln!(w, "{long}");
        });
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), LINE_MAX);
        assert_eq!(got[1], "xxx\n");
    }
}
