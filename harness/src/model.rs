//! PCI data model shared by the kernel-log parser and QEMU's `query-pci` oracle.

use std::fmt;

/// Bus/device/function of a PCI function in segment 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
}

impl Bdf {
    /// The requester id the function's DMA carries: `bus << 8 | dev << 3 | func`.
    pub fn requester_id(self) -> u16 {
        u16::from(self.bus) << 8 | u16::from(self.dev & 0x1f) << 3 | u16::from(self.func & 7)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{:x}", self.bus, self.dev, self.func)
    }
}

/// Address space a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Io,
    Mem32,
    Mem64,
}

/// What a BAR is: its address space and, for memory, whether it is prefetchable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarKind {
    pub space: Space,
    pub prefetchable: bool,
}

impl BarKind {
    pub const IO: BarKind = BarKind {
        space: Space::Io,
        prefetchable: false,
    };
    pub const MEM32: BarKind = BarKind {
        space: Space::Mem32,
        prefetchable: false,
    };
    pub const MEM64: BarKind = BarKind {
        space: Space::Mem64,
        prefetchable: false,
    };

    pub const fn pref(self) -> BarKind {
        BarKind {
            space: self.space,
            prefetchable: true,
        }
    }
}

impl fmt::Display for BarKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.space {
            Space::Io => "io",
            Space::Mem32 => "mem32",
            Space::Mem64 => "mem64",
        })?;
        if self.prefetchable {
            f.write_str(" pref")?;
        }
        Ok(())
    }
}

/// One base address register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bar {
    /// BAR number 0..=5 (a 64-bit BAR is reported under its lower index only).
    pub index: u8,
    pub kind: BarKind,
    /// `None` when the BAR is not mapped (QEMU reports address -1).
    pub address: Option<u64>,
    pub size: u64,
}

impl fmt::Display for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BAR{} {} ", self.index, self.kind)?;
        match self.address {
            Some(a) => write!(f, "0x{a:x}")?,
            None => f.write_str("unmapped")?,
        }
        write!(f, " size 0x{:x}", self.size)
    }
}

/// One PCI function as seen by the kernel or by QEMU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub segment: u16,
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    /// Base class and subclass (`class_code >> 8`), as in QEMU's `class_info.class`.
    pub class: u16,
    /// Programming interface, when known (the kernel prints it, QEMU does not).
    pub prog_if: Option<u8>,
    pub bars: Vec<Bar>,
}

impl Function {
    pub fn bar(&self, index: u8) -> Option<&Bar> {
        self.bars.iter().find(|b| b.index == index)
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{:04x}:{:04x}] class {:04x}",
            self.bdf, self.vendor, self.device, self.class
        )
    }
}
