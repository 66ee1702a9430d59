//! QEMU's `edu` teaching device (PCI 1234:11e8) from inside a guest: its 1 MiB BAR0
//! mapped by the hypervisor (VFIO `DEVICE_MAP_REGION`) and by the guest
//! ([`crate::paging::map_mmio`]), accessed with volatile loads and stores.
//!
//! Facts from QEMU's `hw/misc/edu.c` (7.2 and 10) this depends on (the hypervisor's own
//! driver, `kernel/src/edu.rs`, explains them at length):
//!
//! - 0x00 identification `0xRRrr00ed` (QEMU: `0x010000ed`); 0x04 liveness: reads the
//!   complement of the last value written.
//! - DMA: source 0x80, destination 0x88, count 0x90, command 0x98 (bit 0 start and
//!   busy, bit 1 direction: set = edu → RAM, bit 2 interrupt when done). The device
//!   side is the 4 KiB buffer at device address 0x40000. The transfer runs ~100 ms of
//!   virtual time after the start, then bit 0 clears.
//! - QEMU 7.2 *aborts the machine* when a transfer's count is 0 or it ends exactly at
//!   the end of the buffer: `offset + len` must stay below 4096 ([`check_transfer`]).
//! - The RAM-side address (an IOVA) is ANDed with a 28-bit DMA mask: keep IOVAs below
//!   256 MiB ([`DMA_MASK`]).
//! - A DMA that the IOMMU blocks still "completes": bit 0 clears, nothing is written.

use core::fmt;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{Ordering, fence};

pub const VENDOR_ID: u16 = 0x1234;
pub const DEVICE_ID: u16 = 0x11e8;
/// BAR0 size.
pub const BAR0_SIZE: u64 = 1 << 20;

/// Register offsets in BAR0.
pub mod regs {
    pub const ID: u64 = 0x00;
    pub const LIVENESS: u64 = 0x04;
    pub const DMA_SRC: u64 = 0x80;
    pub const DMA_DST: u64 = 0x88;
    pub const DMA_COUNT: u64 = 0x90;
    pub const DMA_CMD: u64 = 0x98;
    /// Interrupt status (read), raise (write: OR into the status), acknowledge (write:
    /// clear those bits). The edu signals while any status bit is set.
    pub const IRQ_STATUS: u64 = 0x24;
    pub const IRQ_RAISE: u64 = 0x60;
    pub const IRQ_ACK: u64 = 0x64;
}

/// Interrupt status bit of a finished DMA (with [`CMD_IRQ`]).
pub const IRQ_DMA: u32 = 0x100;

/// Command bit 0: start; reads 1 while the transfer runs.
pub const CMD_START: u64 = 1 << 0;
/// Command bit 1: direction edu → RAM (clear: RAM → edu).
pub const CMD_TO_RAM: u64 = 1 << 1;
/// Command bit 2: raise the DMA interrupt when done.
pub const CMD_IRQ: u64 = 1 << 2;

/// The identification register of QEMU's edu 1.0.
pub const ID_VALUE: u32 = 0x0100_00ed;
/// Device address of the transfer buffer.
pub const BUFFER_ADDR: u64 = 0x4_0000;
/// Size of the transfer buffer.
pub const BUFFER_SIZE: u64 = 4096;
/// RAM-side addresses keep 28 bits (QEMU's default `dma_mask`).
pub const DMA_MASK: u64 = (1 << 28) - 1;
/// Command-register polls before a transfer counts as lost (a transfer takes ~100 ms;
/// an MMIO poll under TCG well under a microsecond).
pub const POLL_BUDGET: u64 = 20_000_000;

/// Why a transfer was refused or did not finish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EduError {
    /// Count 0 (QEMU 7.2 aborts on it).
    ZeroLength,
    /// `offset + len` reaches the end of the 4 KiB buffer (QEMU 7.2 aborts).
    OutOfBuffer { offset: u64, len: u64 },
    /// The RAM-side range is not below [`DMA_MASK`] (QEMU would clamp it).
    AboveDmaMask { iova: u64, len: u64 },
    /// A transfer is running already.
    Busy,
    /// The command register still said busy after this many polls.
    Timeout { polls: u64 },
}

impl fmt::Display for EduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ZeroLength => write!(f, "DMA count 0 refused (QEMU 7.2 aborts on it)"),
            Self::OutOfBuffer { offset, len } => write!(
                f,
                "DMA of {len:#x} bytes at edu buffer offset {offset:#x} refused: must end below {BUFFER_SIZE:#x}"
            ),
            Self::AboveDmaMask { iova, len } => write!(
                f,
                "DMA of {len:#x} bytes at IOVA {iova:#x} refused: beyond the edu's 28-bit DMA mask"
            ),
            Self::Busy => write!(f, "a DMA transfer is already running"),
            Self::Timeout { polls } => write!(f, "DMA still busy after {polls} polls"),
        }
    }
}

/// Checks a transfer (pure): count > 0, `offset + len` below the buffer end, the RAM
/// side below the DMA mask.
pub fn check_transfer(offset: u64, iova: u64, len: u64) -> Result<(), EduError> {
    if len == 0 {
        return Err(EduError::ZeroLength);
    }
    if offset.checked_add(len).is_none_or(|end| end >= BUFFER_SIZE) {
        return Err(EduError::OutOfBuffer { offset, len });
    }
    if iova.checked_add(len).is_none_or(|end| end > DMA_MASK + 1) {
        return Err(EduError::AboveDmaMask { iova, len });
    }
    Ok(())
}

/// One edu, through its BAR0 mapped at `base` in this guest.
#[derive(Clone, Copy, Debug)]
pub struct Edu {
    base: u64,
}

impl Edu {
    /// # Safety
    ///
    /// `base` must be the guest-virtual address of an edu's BAR0, mapped (uncached) for
    /// [`BAR0_SIZE`] bytes, for as long as this value is used.
    pub unsafe fn new(base: u64) -> Edu {
        Edu { base }
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn read32(&self, off: u64) -> u32 {
        assert!(off % 4 == 0 && off < BAR0_SIZE);
        // SAFETY: inside the mapped BAR (the contract of `new`), aligned.
        unsafe { read_volatile((self.base + off) as *const u32) }
    }

    pub fn write32(&self, off: u64, v: u32) {
        assert!(off % 4 == 0 && off < BAR0_SIZE);
        // SAFETY: inside the mapped BAR (the contract of `new`), aligned.
        unsafe { write_volatile((self.base + off) as *mut u32, v) }
    }

    pub fn read64(&self, off: u64) -> u64 {
        assert!(off % 8 == 0 && off < BAR0_SIZE);
        // SAFETY: inside the mapped BAR (the contract of `new`), aligned.
        unsafe { read_volatile((self.base + off) as *const u64) }
    }

    pub fn write64(&self, off: u64, v: u64) {
        assert!(off % 8 == 0 && off < BAR0_SIZE);
        // SAFETY: inside the mapped BAR (the contract of `new`), aligned.
        unsafe { write_volatile((self.base + off) as *mut u64, v) }
    }

    /// The identification register.
    pub fn ident(&self) -> u32 {
        self.read32(regs::ID)
    }

    /// Writes `x` to the liveness register and reads it back (an edu answers `!x`).
    pub fn liveness(&self, x: u32) -> u32 {
        self.write32(regs::LIVENESS, x);
        self.read32(regs::LIVENESS)
    }

    /// Whether a transfer is running.
    pub fn busy(&self) -> bool {
        self.read64(regs::DMA_CMD) & CMD_START != 0
    }

    /// Starts a transfer of `len` bytes with `cmd` (plus [`CMD_START`]) and returns at
    /// once (the device runs it on its own).
    fn start(&self, src: u64, dst: u64, len: u64, cmd: u64) -> Result<(), EduError> {
        if self.busy() {
            return Err(EduError::Busy);
        }
        // The device must see what the CPU wrote to the buffer.
        fence(Ordering::SeqCst);
        self.write64(regs::DMA_SRC, src);
        self.write64(regs::DMA_DST, dst);
        self.write64(regs::DMA_COUNT, len);
        self.write64(regs::DMA_CMD, cmd | CMD_START);
        Ok(())
    }

    /// Polls until no transfer runs (at most `budget` polls); returns the number of
    /// polls (1: idle at once).
    pub fn wait_idle(&self, budget: u64) -> Result<u64, EduError> {
        for polls in 1..=budget {
            if !self.busy() {
                fence(Ordering::SeqCst);
                return Ok(polls);
            }
            core::hint::spin_loop();
        }
        Err(EduError::Timeout { polls: budget })
    }

    /// Starts a transfer of `len` bytes with `cmd` (plus [`CMD_START`]) and polls until
    /// it is done; returns the number of polls.
    fn transfer(&self, src: u64, dst: u64, len: u64, cmd: u64) -> Result<u64, EduError> {
        self.start(src, dst, len, cmd)?;
        self.wait_idle(POLL_BUDGET)
    }

    /// RAM → edu: `len` bytes from bus address `iova` into the edu buffer at `offset`.
    pub fn dma_from_ram(&self, iova: u64, offset: u64, len: u64) -> Result<u64, EduError> {
        check_transfer(offset, iova, len)?;
        self.transfer(iova, BUFFER_ADDR + offset, len, 0)
    }

    /// edu → RAM: `len` bytes from the edu buffer at `offset` to bus address `iova`.
    pub fn dma_to_ram(&self, offset: u64, iova: u64, len: u64) -> Result<u64, EduError> {
        check_transfer(offset, iova, len)?;
        self.transfer(BUFFER_ADDR + offset, iova, len, CMD_TO_RAM)
    }

    /// edu → RAM without waiting: starts the transfer and returns while it runs (the
    /// device writes ~100 ms of virtual time later). [`Edu::wait_idle`] waits for it.
    pub fn start_dma_to_ram(&self, offset: u64, iova: u64, len: u64) -> Result<(), EduError> {
        check_transfer(offset, iova, len)?;
        self.start(BUFFER_ADDR + offset, iova, len, CMD_TO_RAM)
    }

    /// RAM → edu with the completion interrupt ([`CMD_IRQ`]), not waited for: the edu
    /// sets [`IRQ_DMA`] in its interrupt status and signals when done.
    pub fn start_dma_from_ram_irq(&self, iova: u64, offset: u64, len: u64) -> Result<(), EduError> {
        check_transfer(offset, iova, len)?;
        self.start(iova, BUFFER_ADDR + offset, len, CMD_IRQ)
    }

    /// edu → RAM with the completion interrupt ([`CMD_IRQ`]), not waited for.
    pub fn start_dma_to_ram_irq(&self, offset: u64, iova: u64, len: u64) -> Result<(), EduError> {
        check_transfer(offset, iova, len)?;
        self.start(BUFFER_ADDR + offset, iova, len, CMD_TO_RAM | CMD_IRQ)
    }

    /// Sets `bits` in the interrupt status: the edu signals its interrupt.
    pub fn raise_irq(&self, bits: u32) {
        self.write32(regs::IRQ_RAISE, bits);
    }

    /// Reads the interrupt status and acknowledges all of it; returns what it was.
    pub fn ack_irq(&self) -> u32 {
        let status = self.read32(regs::IRQ_STATUS);
        self.write32(regs::IRQ_ACK, status);
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_that_would_abort_qemu_are_refused() {
        assert_eq!(check_transfer(0, 0x20_0000, 256), Ok(()));
        assert_eq!(check_transfer(0, 0x20_0000, 4095), Ok(()));
        assert_eq!(check_transfer(0, 0, 0), Err(EduError::ZeroLength));
        assert_eq!(
            check_transfer(3840, 0, 256),
            Err(EduError::OutOfBuffer {
                offset: 3840,
                len: 256
            })
        );
        assert_eq!(
            check_transfer(u64::MAX, 0, 2),
            Err(EduError::OutOfBuffer {
                offset: u64::MAX,
                len: 2
            })
        );
        assert_eq!(check_transfer(0, DMA_MASK + 1 - 256, 256), Ok(()));
        assert_eq!(
            check_transfer(0, DMA_MASK + 1 - 255, 256),
            Err(EduError::AboveDmaMask {
                iova: DMA_MASK + 1 - 255,
                len: 256
            })
        );
    }
}
