//! Driver for QEMU's `edu` test device (PCI 1234:11e8), hardware-independent.
//!
//! The edu is QEMU's teaching device: a 1 MiB MMIO BAR0 with an identification and a
//! liveness register, and a DMA engine that copies between guest memory ("RAM", as
//! the device sees it: a bus address, translated by the IOMMU) and a 4 KiB buffer
//! inside the device at device address [`DMA_BUFFER_ADDR`]. Sluice uses it to prove
//! that IOMMU mappings work and that everything else is blocked.
//!
//! Registers go through [`EduRegisters`], implemented for [`MmioRegion`] (the real
//! BAR) and, in the tests, by a model of QEMU's device. Facts the driver depends on
//! (QEMU 7.2 `hw/misc/edu.c`, checked against QEMU 10):
//!
//! - A transfer is described by source (0x80), destination (0x88) and count (0x90)
//!   and started by writing the command (0x98) with bit 0 set; bit 1 is the
//!   direction (0: RAM → edu, 1: edu → RAM), bit 2 raises the DMA interrupt when done.
//!   While bit 0 is set every write to 0x80..0x98 is ignored.
//! - The transfer runs ~100 ms of *virtual* time after the start (a QEMU timer),
//!   then bit 0 clears. Without icount that is 100 ms of wall time, during which a
//!   polling loop may spin millions of times: the wait is bounded by a poll budget.
//! - QEMU 7.2 checks the device-side range with an end-exclusive test and calls
//!   `hw_error` (QEMU **aborts**) when it fails: a count of 0, and any transfer that
//!   ends exactly at the end of the buffer (`offset + len == 4096`, so also a full
//!   4096-byte transfer), abort the whole machine. This driver refuses both, so the
//!   largest transfer is 4095 bytes and the last buffer byte is never touched.
//! - The RAM-side address is ANDed with the device's `dma_mask` property (default
//!   28 bits) before the access; QEMU prints `EDU: clamping DMA ...` on stdout when
//!   that changes it. The driver refuses bus addresses above the mask instead of
//!   letting the DMA silently land elsewhere.
//! - DMA needs Bus Master Enable in the PCI command register ([`enable_bus_master`]);
//!   without it QEMU drops the accesses (the transfer still "completes").

use core::fmt;
use core::sync::atomic::{Ordering, fence};

use sluice_pci::{ConfigSpace, PciAddress, reg};

use crate::mmio::MmioRegion;

/// PCI vendor id of QEMU's edu device.
pub const VENDOR_ID: u16 = 0x1234;
/// PCI device id of QEMU's edu device.
pub const DEVICE_ID: u16 = 0x11e8;
/// Size of BAR0 (the register block).
pub const BAR0_SIZE: u64 = 1 << 20;

/// Register offsets in BAR0.
pub mod regs {
    /// Identification: `0xRRrr00ed`, major RR, minor rr (QEMU: 0x010000ed, 1.0).
    pub const ID: u64 = 0x00;
    /// Liveness check: reads back the bitwise NOT of the last value written.
    pub const LIVENESS: u64 = 0x04;
    /// Factorial computation (unused here).
    pub const FACTORIAL: u64 = 0x08;
    /// Status: bit 0 factorial busy, bit 7 raise interrupt after factorial.
    pub const STATUS: u64 = 0x20;
    /// Interrupt status (bit 8: DMA done, when the command asked for it).
    pub const IRQ_STATUS: u64 = 0x24;
    /// Raise an interrupt: the value is ORed into the interrupt status.
    pub const IRQ_RAISE: u64 = 0x60;
    /// Acknowledge interrupts: the value's bits are cleared from the status.
    pub const IRQ_ACK: u64 = 0x64;
    /// DMA source address (bus address for RAM → edu, device address otherwise).
    pub const DMA_SRC: u64 = 0x80;
    /// DMA destination address.
    pub const DMA_DST: u64 = 0x88;
    /// DMA byte count.
    pub const DMA_COUNT: u64 = 0x90;
    /// DMA command: [`super::CMD_START`], [`super::CMD_TO_RAM`], [`super::CMD_IRQ`].
    pub const DMA_CMD: u64 = 0x98;
}

/// Command bit 0: start the transfer; reads as 1 while it runs.
pub const CMD_START: u32 = 1 << 0;
/// Command bit 1: direction, set = edu → RAM, clear = RAM → edu.
pub const CMD_TO_RAM: u32 = 1 << 1;
/// Command bit 2: raise the DMA interrupt (status bit 8) when done.
pub const CMD_IRQ: u32 = 1 << 2;
/// Interrupt status bit of a finished DMA (when [`CMD_IRQ`] was given).
pub const IRQ_DMA: u32 = 0x100;

/// The identification register of QEMU's edu (version 1.0).
pub const ID_VALUE: u32 = 0x0100_00ed;
/// Device address of the 4 KiB transfer buffer.
pub const DMA_BUFFER_ADDR: u64 = 0x4_0000;
/// Size of the transfer buffer.
pub const DMA_BUFFER_SIZE: u32 = 4096;
/// Largest transfer QEMU 7.2 survives: `offset + len` must stay below 4096.
pub const MAX_TRANSFER: u32 = DMA_BUFFER_SIZE - 1;
/// QEMU's default `dma_mask` property: RAM-side addresses keep 28 bits.
pub const DEFAULT_DMA_MASK: u64 = (1 << 28) - 1;
/// Default number of command-register polls before a transfer counts as lost.
///
/// A transfer takes ~100 ms of virtual time; under TCG an MMIO poll costs tens to
/// hundreds of nanoseconds, so 100 ms is at most a few million polls. 200 million
/// is two orders of magnitude of headroom and still finite (tens of seconds).
pub const DEFAULT_POLL_BUDGET: u64 = 200_000_000;

/// Register access to one edu. Implementations map failed accesses to all-ones reads
/// and ignored writes, as a PCI master abort would.
pub trait EduRegisters {
    fn read32(&self, off: u64) -> u32;
    fn write32(&self, off: u64, v: u32);
    fn read64(&self, off: u64) -> u64;
    fn write64(&self, off: u64, v: u64);
}

impl EduRegisters for MmioRegion {
    fn read32(&self, off: u64) -> u32 {
        MmioRegion::read32(self, off).unwrap_or(u32::MAX)
    }
    fn write32(&self, off: u64, v: u32) {
        let _ = MmioRegion::write32(self, off, v);
    }
    fn read64(&self, off: u64) -> u64 {
        MmioRegion::read64(self, off).unwrap_or(u64::MAX)
    }
    fn write64(&self, off: u64, v: u64) {
        let _ = MmioRegion::write64(self, off, v);
    }
}

impl<T: EduRegisters + ?Sized> EduRegisters for &T {
    fn read32(&self, off: u64) -> u32 {
        (**self).read32(off)
    }
    fn write32(&self, off: u64, v: u32) {
        (**self).write32(off, v)
    }
    fn read64(&self, off: u64) -> u64 {
        (**self).read64(off)
    }
    fn write64(&self, off: u64, v: u64) {
        (**self).write64(off, v)
    }
}

/// What can go wrong talking to an edu.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EduError {
    /// The identification register does not read `0x010000ed`-style (`0xRRrr00ed`).
    NotEdu { id: u32 },
    /// The liveness register did not return the complement of what was written.
    LivenessFailed { wrote: u32, read: u32 },
    /// A count of 0 (QEMU 7.2 aborts on it).
    ZeroLength,
    /// `offset + len` reaches or passes the end of the 4 KiB buffer (reaching it
    /// exactly aborts QEMU 7.2; passing it is out of bounds everywhere).
    OutOfBuffer { offset: u32, len: u32 },
    /// The RAM-side range is not below the device's DMA mask: QEMU would clamp the
    /// address and the transfer would hit other memory.
    AboveDmaMask { addr: u64, len: u32, mask: u64 },
    /// A transfer is already running (the device would ignore the new one).
    Busy,
    /// The transfer did not finish within the poll budget.
    Timeout { polls: u64 },
}

impl fmt::Display for EduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotEdu { id: u32::MAX } => write!(
                f,
                "identification register reads all-ones: BAR0 not decoded (memory space off?) or not mapped"
            ),
            Self::NotEdu { id } => write!(
                f,
                "identification register reads {id:#010x}, not an edu (expected 0xRRrr00ed)"
            ),
            Self::LivenessFailed { wrote, read } => write!(
                f,
                "liveness check failed: wrote {wrote:#010x}, read {read:#010x} (expected {:#010x})",
                !wrote
            ),
            Self::ZeroLength => write!(f, "DMA count 0 refused (QEMU 7.2 aborts on it)"),
            Self::OutOfBuffer { offset, len } => write!(
                f,
                "DMA of {len:#x} bytes at buffer offset {offset:#x} refused: offset + len must stay below {DMA_BUFFER_SIZE:#x} (QEMU 7.2 aborts on a transfer that ends at the buffer end)"
            ),
            Self::AboveDmaMask { addr, len, mask } => write!(
                f,
                "DMA of {len:#x} bytes at bus address {addr:#x} refused: beyond the edu's DMA mask {mask:#x} (QEMU would clamp it)"
            ),
            Self::Busy => write!(f, "a DMA transfer is already running"),
            Self::Timeout { polls } => {
                write!(f, "DMA did not complete after {polls} polls")
            }
        }
    }
}

/// Checks a device-buffer range (pure): `len > 0` and `offset + len < 4096`.
pub fn check_transfer(device_offset: u32, len: u32) -> Result<(), EduError> {
    if len == 0 {
        return Err(EduError::ZeroLength);
    }
    match device_offset.checked_add(len) {
        Some(end) if end < DMA_BUFFER_SIZE => Ok(()),
        _ => Err(EduError::OutOfBuffer {
            offset: device_offset,
            len,
        }),
    }
}

/// One edu, identified and alive.
pub struct Edu<R: EduRegisters> {
    regs: R,
    poll_budget: u64,
    dma_mask: u64,
    version: (u8, u8),
}

impl<R: EduRegisters> Edu<R> {
    /// Checks identification (`0xRRrr00ed`) and liveness (0x04 returns `!written`).
    pub fn new(regs: R) -> Result<Self, EduError> {
        let id = regs.read32(regs::ID);
        if id & 0xffff != 0x00ed || id == u32::MAX {
            return Err(EduError::NotEdu { id });
        }
        for wrote in [0x5aa5_c33c, 0x0123_4567] {
            regs.write32(regs::LIVENESS, wrote);
            let read = regs.read32(regs::LIVENESS);
            if read != !wrote {
                return Err(EduError::LivenessFailed { wrote, read });
            }
        }
        Ok(Edu {
            regs,
            poll_budget: DEFAULT_POLL_BUDGET,
            dma_mask: DEFAULT_DMA_MASK,
            version: ((id >> 24) as u8, (id >> 16) as u8),
        })
    }

    /// Replaces the poll budget of [`Edu::wait_idle`] (at least 1).
    pub fn with_poll_budget(mut self, polls: u64) -> Self {
        self.poll_budget = polls.max(1);
        self
    }

    /// Replaces the DMA mask (QEMU's `dma_mask` property, if the machine sets it).
    pub fn with_dma_mask(mut self, mask: u64) -> Self {
        self.dma_mask = mask;
        self
    }

    /// `(major, minor)` from the identification register.
    pub fn version(&self) -> (u8, u8) {
        self.version
    }

    pub fn poll_budget(&self) -> u64 {
        self.poll_budget
    }

    pub fn dma_mask(&self) -> u64 {
        self.dma_mask
    }

    pub fn registers(&self) -> &R {
        &self.regs
    }

    pub fn into_registers(self) -> R {
        self.regs
    }

    /// Whether a transfer is running (command bit 0).
    pub fn busy(&self) -> bool {
        self.regs.read32(regs::DMA_CMD) & CMD_START != 0
    }

    /// Interrupt status register (bit 8 [`IRQ_DMA`]: a DMA with [`CMD_IRQ`] finished).
    pub fn irq_status(&self) -> u32 {
        self.regs.read32(regs::IRQ_STATUS)
    }

    /// Acknowledges (clears) the given interrupt status bits.
    pub fn ack_irq(&self, bits: u32) {
        self.regs.write32(regs::IRQ_ACK, bits);
    }

    fn check_bus_addr(&self, addr: u64, len: u32) -> Result<(), EduError> {
        let last = addr.checked_add(u64::from(len) - 1);
        match last {
            Some(last) if addr & !self.dma_mask == 0 && last & !self.dma_mask == 0 => Ok(()),
            _ => Err(EduError::AboveDmaMask {
                addr,
                len,
                mask: self.dma_mask,
            }),
        }
    }

    /// Copies `len` bytes from bus address `src_bus_addr` (through the IOMMU) into the
    /// device buffer at `device_offset`, and waits. Returns the number of polls.
    pub fn dma_to_device(
        &self,
        src_bus_addr: u64,
        device_offset: u32,
        len: u32,
    ) -> Result<u64, EduError> {
        self.start_to_device(src_bus_addr, device_offset, len, false)?;
        self.wait_idle()
    }

    /// Copies `len` bytes from the device buffer at `device_offset` to bus address
    /// `dst_bus_addr` (through the IOMMU), and waits. Returns the number of polls.
    pub fn dma_from_device(
        &self,
        device_offset: u32,
        dst_bus_addr: u64,
        len: u32,
    ) -> Result<u64, EduError> {
        self.start_from_device(device_offset, dst_bus_addr, len, false)?;
        self.wait_idle()
    }

    /// Starts RAM → edu without waiting (`irq`: raise the DMA interrupt when done).
    pub fn start_to_device(
        &self,
        src_bus_addr: u64,
        device_offset: u32,
        len: u32,
        irq: bool,
    ) -> Result<(), EduError> {
        check_transfer(device_offset, len)?;
        self.check_bus_addr(src_bus_addr, len)?;
        let dst = DMA_BUFFER_ADDR + u64::from(device_offset);
        self.start(src_bus_addr, dst, len, irq_bit(irq))
    }

    /// Starts edu → RAM without waiting (`irq`: raise the DMA interrupt when done).
    pub fn start_from_device(
        &self,
        device_offset: u32,
        dst_bus_addr: u64,
        len: u32,
        irq: bool,
    ) -> Result<(), EduError> {
        check_transfer(device_offset, len)?;
        self.check_bus_addr(dst_bus_addr, len)?;
        let src = DMA_BUFFER_ADDR + u64::from(device_offset);
        self.start(src, dst_bus_addr, len, CMD_TO_RAM | irq_bit(irq))
    }

    fn start(&self, src: u64, dst: u64, len: u32, cmd: u32) -> Result<(), EduError> {
        if self.busy() {
            return Err(EduError::Busy);
        }
        self.regs.write64(regs::DMA_SRC, src);
        self.regs.write64(regs::DMA_DST, dst);
        self.regs.write64(regs::DMA_COUNT, u64::from(len));
        // The CPU's plain stores to the source buffer must be globally visible before
        // the device reads it (volatile MMIO alone does not order ordinary accesses).
        fence(Ordering::SeqCst);
        self.regs.write32(regs::DMA_CMD, cmd | CMD_START);
        Ok(())
    }

    /// Polls command bit 0 until the transfer is over, at most `poll_budget` times.
    /// Returns the number of polls that saw it running.
    pub fn wait_idle(&self) -> Result<u64, EduError> {
        let mut polls = 0;
        while self.busy() {
            polls += 1;
            if polls >= self.poll_budget {
                return Err(EduError::Timeout { polls });
            }
            core::hint::spin_loop();
        }
        // Later plain loads of the destination buffer must see the device's writes.
        fence(Ordering::SeqCst);
        Ok(polls)
    }
}

fn irq_bit(irq: bool) -> u32 {
    if irq { CMD_IRQ } else { 0 }
}

/// Whether config space at `addr` holds an edu (vendor 1234, device 11e8).
pub fn is_edu(cfg: &dyn ConfigSpace, addr: PciAddress) -> bool {
    cfg.read16(addr, reg::VENDOR_ID) == VENDOR_ID && cfg.read16(addr, reg::DEVICE_ID) == DEVICE_ID
}

/// Sets Memory Space (bit 1) and Bus Master Enable (bit 2) in the command register,
/// keeping the other bits; returns the previous command value. `write16` of the
/// command register writes zeros to the status half, which leaves its RW1C bits alone.
pub fn enable_bus_master(cfg: &dyn ConfigSpace, addr: PciAddress) -> u16 {
    let before = cfg.read16(addr, reg::COMMAND);
    let want = before | reg::COMMAND_MEMORY_SPACE | reg::COMMAND_BUS_MASTER;
    if want != before {
        cfg.write16(addr, reg::COMMAND, want);
    }
    before
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::{Cell, RefCell};
    use sluice_pci::fake::{FakeConfigSpace, FakeFunction};

    /// Bus addresses the fake RAM covers: [0, RAM_SIZE).
    const RAM_SIZE: usize = 64 * 1024;

    /// A model of QEMU 7.2's edu: registers, the 4 KiB buffer, the DMA engine with
    /// QEMU's range check (it panics where QEMU calls `hw_error` and aborts) and
    /// address clamping, and a delay of `delay` command polls before a transfer runs.
    struct FakeEdu {
        id: u32,
        liveness_ok: bool,
        addr4: Cell<u32>,
        src: Cell<u64>,
        dst: Cell<u64>,
        cnt: Cell<u64>,
        cmd: Cell<u64>,
        irq_status: Cell<u32>,
        /// Polls of the command register before a started transfer runs;
        /// `u64::MAX` = never.
        delay: Cell<u64>,
        remaining: Cell<u64>,
        dma_mask: u64,
        ram: RefCell<Vec<u8>>,
        buf: RefCell<[u8; 4096]>,
        starts: Cell<u32>,
        /// Bus addresses the transfers actually used (after clamping).
        used: RefCell<Vec<u64>>,
    }

    impl FakeEdu {
        fn new() -> Self {
            FakeEdu {
                id: ID_VALUE,
                liveness_ok: true,
                addr4: Cell::new(0),
                src: Cell::new(0),
                dst: Cell::new(0),
                cnt: Cell::new(0),
                cmd: Cell::new(0),
                irq_status: Cell::new(0),
                delay: Cell::new(3),
                remaining: Cell::new(0),
                dma_mask: DEFAULT_DMA_MASK,
                ram: RefCell::new((0..RAM_SIZE).map(|i| (i * 7 + 3) as u8).collect()),
                buf: RefCell::new([0; 4096]),
                starts: Cell::new(0),
                used: RefCell::new(Vec::new()),
            }
        }

        fn running(&self) -> bool {
            self.cmd.get() & u64::from(CMD_START) != 0
        }

        /// QEMU 7.2's `edu_check_range`: end-exclusive, so an end at the buffer end fails.
        fn check_range(addr: u64, size: u64) {
            let (start, end2) = (DMA_BUFFER_ADDR, DMA_BUFFER_ADDR + 4096);
            let end1 = addr.wrapping_add(size);
            let within = |a: u64| start <= a && a < end2;
            if !(within(addr) && end1 > addr && within(end1)) {
                panic!(
                    "EDU: DMA range {addr:#018x}-{:#018x} out of bounds ({start:#018x}-{:#018x})!",
                    end1.wrapping_sub(1),
                    end2 - 1
                );
            }
        }

        /// The timer callback: the transfer itself.
        fn run_transfer(&self) {
            let cnt = self.cnt.get();
            let cmd = self.cmd.get();
            let mut ram = self.ram.borrow_mut();
            let mut buf = self.buf.borrow_mut();
            if cmd & u64::from(CMD_TO_RAM) == 0 {
                let dst = self.dst.get();
                Self::check_range(dst, cnt);
                let off = (dst - DMA_BUFFER_ADDR) as usize;
                let src = self.src.get() & self.dma_mask;
                self.used.borrow_mut().push(src);
                for i in 0..cnt as usize {
                    // Outside the fake RAM: reads as zero (an unbacked or blocked access).
                    buf[off + i] = ram.get(src as usize + i).copied().unwrap_or(0);
                }
            } else {
                let src = self.src.get();
                Self::check_range(src, cnt);
                let off = (src - DMA_BUFFER_ADDR) as usize;
                let dst = self.dst.get() & self.dma_mask;
                self.used.borrow_mut().push(dst);
                for i in 0..cnt as usize {
                    if let Some(b) = ram.get_mut(dst as usize + i) {
                        *b = buf[off + i];
                    }
                }
            }
            self.cmd.set(cmd & !u64::from(CMD_START));
            if cmd & u64::from(CMD_IRQ) != 0 {
                self.irq_status.set(self.irq_status.get() | IRQ_DMA);
            }
        }

        fn poll_cmd(&self) -> u64 {
            if self.running() {
                match self.remaining.get() {
                    u64::MAX => {}
                    0 => self.run_transfer(),
                    n => self.remaining.set(n - 1),
                }
            }
            self.cmd.get()
        }

        fn write(&self, off: u64, v: u64) {
            match off {
                regs::LIVENESS => self.addr4.set(!(v as u32)),
                regs::IRQ_ACK => self.irq_status.set(self.irq_status.get() & !(v as u32)),
                regs::DMA_SRC | regs::DMA_DST | regs::DMA_COUNT if self.running() => {}
                regs::DMA_SRC => self.src.set(v),
                regs::DMA_DST => self.dst.set(v),
                regs::DMA_COUNT => self.cnt.set(v),
                regs::DMA_CMD if v & u64::from(CMD_START) != 0 && !self.running() => {
                    self.cmd.set(v);
                    self.remaining.set(self.delay.get());
                    self.starts.set(self.starts.get() + 1);
                }
                _ => {}
            }
        }

        fn read(&self, off: u64) -> u64 {
            match off {
                regs::ID => u64::from(self.id),
                regs::LIVENESS if self.liveness_ok => u64::from(self.addr4.get()),
                regs::LIVENESS => 0,
                regs::IRQ_STATUS => u64::from(self.irq_status.get()),
                regs::DMA_SRC => self.src.get(),
                regs::DMA_DST => self.dst.get(),
                regs::DMA_COUNT => self.cnt.get(),
                regs::DMA_CMD => self.poll_cmd(),
                _ => u64::MAX,
            }
        }
    }

    impl EduRegisters for FakeEdu {
        fn read32(&self, off: u64) -> u32 {
            self.read(off) as u32
        }
        fn write32(&self, off: u64, v: u32) {
            self.write(off, u64::from(v))
        }
        fn read64(&self, off: u64) -> u64 {
            self.read(off)
        }
        fn write64(&self, off: u64, v: u64) {
            self.write(off, v)
        }
    }

    fn edu(fake: &FakeEdu) -> Edu<&FakeEdu> {
        Edu::new(fake).unwrap()
    }

    #[test]
    fn identifies_and_checks_liveness() {
        let fake = FakeEdu::new();
        let e = edu(&fake);
        assert_eq!(e.version(), (1, 0));
        assert_eq!(e.poll_budget(), DEFAULT_POLL_BUDGET);
        assert_eq!(e.dma_mask(), 0x0fff_ffff);

        let mut other = FakeEdu::new();
        other.id = 0xffff_ffff; // an MMIO failure reads all-ones
        assert_eq!(
            Edu::new(&other).err(),
            Some(EduError::NotEdu { id: 0xffff_ffff })
        );
        assert!(
            Edu::new(&other)
                .err()
                .unwrap()
                .to_string()
                .contains("all-ones")
        );
        other.id = 0x0100_00ee;
        assert!(matches!(Edu::new(&other), Err(EduError::NotEdu { .. })));

        let mut dead = FakeEdu::new();
        dead.liveness_ok = false;
        let err = Edu::new(&dead).err().unwrap();
        assert_eq!(
            err,
            EduError::LivenessFailed {
                wrote: 0x5aa5_c33c,
                read: 0
            }
        );
        assert!(err.to_string().contains("expected 0xa55a3cc3"), "{err}");
    }

    #[test]
    fn round_trip_through_the_device_buffer() {
        let fake = FakeEdu::new();
        let e = edu(&fake);
        let pattern: Vec<u8> = (0..64u8).map(|i| i ^ 0xa5).collect();
        fake.ram.borrow_mut()[0x1000..0x1040].copy_from_slice(&pattern);
        let polls = e.dma_to_device(0x1000, 0x10, 64).unwrap();
        assert_eq!(polls, 3, "the polls that saw it running");
        assert_eq!(&fake.buf.borrow()[0x10..0x50], pattern.as_slice());
        e.dma_from_device(0x10, 0x3000, 64).unwrap();
        assert_eq!(&fake.ram.borrow()[0x3000..0x3040], pattern.as_slice());
        assert_eq!(*fake.used.borrow(), [0x1000, 0x3000]);
        assert_eq!(fake.cnt.get(), 64);
        assert_eq!(
            fake.cmd.get(),
            u64::from(CMD_TO_RAM),
            "bit 0 cleared when done"
        );
        // The largest transfer QEMU 7.2 survives: 4095 bytes from offset 0.
        e.dma_to_device(0x2000, 0, MAX_TRANSFER).unwrap();
        assert_eq!(fake.buf.borrow()[4094], fake.ram.borrow()[0x2000 + 4094]);
    }

    #[test]
    fn refuses_lengths_that_abort_qemu() {
        let fake = FakeEdu::new();
        let e = edu(&fake);
        assert_eq!(e.dma_to_device(0x1000, 0, 0), Err(EduError::ZeroLength));
        assert_eq!(e.dma_from_device(0, 0x1000, 0), Err(EduError::ZeroLength));
        let full = EduError::OutOfBuffer {
            offset: 0,
            len: 4096,
        };
        assert_eq!(e.dma_to_device(0x1000, 0, 4096), Err(full));
        assert_eq!(e.dma_from_device(0, 0x1000, 4096), Err(full));
        // Ending exactly at the buffer end aborts QEMU 7.2 as well, whatever the length.
        assert_eq!(
            e.dma_from_device(4095, 0x1000, 1),
            Err(EduError::OutOfBuffer {
                offset: 4095,
                len: 1
            })
        );
        assert!(e.dma_to_device(0x1000, 96, 4000).is_err());
        assert!(e.dma_to_device(0x1000, 4096, 1).is_err());
        assert!(e.dma_to_device(0x1000, u32::MAX, 2).is_err(), "no overflow");
        assert!(e.dma_to_device(0x1000, 0, u32::MAX).is_err());
        assert_eq!(fake.starts.get(), 0, "nothing reached the device");
        assert!(
            full.to_string().contains("must stay below 0x1000"),
            "{full}"
        );
        // The pure check agrees.
        assert_eq!(check_transfer(4094, 1), Ok(()));
        assert_eq!(check_transfer(0, 4095), Ok(()));
        assert!(check_transfer(1, 4095).is_err());
    }

    /// The model is faithful where it matters: QEMU 7.2 aborts on these.
    #[test]
    #[should_panic(expected = "EDU: DMA range")]
    fn the_model_aborts_like_qemu_on_a_full_buffer() {
        let fake = FakeEdu::new();
        fake.write32(regs::DMA_SRC, 0x1000);
        fake.write64(regs::DMA_DST, DMA_BUFFER_ADDR);
        fake.write64(regs::DMA_COUNT, 4096);
        fake.write32(regs::DMA_CMD, CMD_START);
        while fake.read32(regs::DMA_CMD) & CMD_START != 0 {}
    }

    #[test]
    #[should_panic(expected = "EDU: DMA range")]
    fn the_model_aborts_like_qemu_on_a_zero_count() {
        let fake = FakeEdu::new();
        fake.write64(regs::DMA_SRC, DMA_BUFFER_ADDR + 8);
        fake.write64(regs::DMA_DST, 0x1000);
        fake.write64(regs::DMA_COUNT, 0);
        fake.write32(regs::DMA_CMD, CMD_START | CMD_TO_RAM);
        while fake.read32(regs::DMA_CMD) & CMD_START != 0 {}
    }

    #[test]
    fn a_transfer_that_never_ends_times_out() {
        let fake = FakeEdu::new();
        fake.delay.set(u64::MAX);
        let e = edu(&fake).with_poll_budget(1000);
        assert_eq!(
            e.dma_to_device(0x1000, 0, 16),
            Err(EduError::Timeout { polls: 1000 })
        );
        assert!(e.busy());
        // The device ignores a new transfer while one runs; the driver says so.
        assert_eq!(e.dma_from_device(0, 0x2000, 16), Err(EduError::Busy));
        assert_eq!(fake.starts.get(), 1);
        // A slow transfer within the budget is fine; one beyond it is not.
        let fake = FakeEdu::new();
        fake.delay.set(999);
        let e = edu(&fake).with_poll_budget(1000);
        assert_eq!(e.dma_to_device(0x1000, 0, 16), Ok(999));
        fake.delay.set(1000);
        assert_eq!(
            e.dma_to_device(0x1000, 0, 16),
            Err(EduError::Timeout { polls: 1000 })
        );
        assert_eq!(edu(&fake).with_poll_budget(0).poll_budget(), 1);
    }

    #[test]
    fn bus_addresses_beyond_the_dma_mask_are_refused() {
        let fake = FakeEdu::new();
        let e = edu(&fake);
        let err = e.dma_from_device(0, 0x1000_0000, 16).unwrap_err();
        assert_eq!(
            err,
            EduError::AboveDmaMask {
                addr: 0x1000_0000,
                len: 16,
                mask: 0x0fff_ffff
            }
        );
        // Crossing the mask boundary is refused too.
        assert!(e.dma_to_device(0x0fff_fff8, 0, 16).is_err());
        assert!(e.dma_to_device(0x0fff_fff0, 0, 16).is_ok());
        assert!(e.dma_to_device(u64::MAX, 0, 16).is_err());
        // Why: with the check off, the device clamps to 28 bits and hits address 0x1000.
        let e = e.with_dma_mask(u64::MAX);
        fake.buf.borrow_mut()[..4].copy_from_slice(b"ABCD");
        e.dma_from_device(0, 0x1000_1000, 4).unwrap();
        assert_eq!(fake.used.borrow().last(), Some(&0x1000));
        assert_eq!(&fake.ram.borrow()[0x1000..0x1004], b"ABCD");
    }

    #[test]
    fn interrupt_on_completion_and_acknowledge() {
        let fake = FakeEdu::new();
        let e = edu(&fake);
        e.start_from_device(0, 0x100, 8, true).unwrap();
        assert_eq!(e.irq_status(), 0);
        assert!(e.wait_idle().is_ok());
        assert_eq!(e.irq_status(), IRQ_DMA);
        e.ack_irq(IRQ_DMA);
        assert_eq!(e.irq_status(), 0);
        assert_eq!(
            fake.cmd.get(),
            u64::from(CMD_TO_RAM | CMD_IRQ),
            "direction and irq bits as programmed"
        );
        e.start_to_device(0x100, 0, 8, false).unwrap();
        assert!(e.busy());
        e.wait_idle().unwrap();
        assert_eq!(e.irq_status(), 0);
        let _regs: &FakeEdu = e.into_registers();
    }

    #[test]
    fn bus_master_enable_keeps_status_and_other_bits() {
        let dev = PciAddress::new(0, 0, 1, 0);
        let status = reg::STATUS_CAPABILITY_LIST | (1 << 13);
        let cfg = FakeConfigSpace::new().with(
            dev,
            FakeFunction::conventional_endpoint(VENDOR_ID, DEVICE_ID)
                .with_command(reg::COMMAND_IO_SPACE | reg::COMMAND_INTX_DISABLE)
                .with_u16(reg::STATUS, status),
        );
        assert!(is_edu(&cfg, dev));
        assert!(!is_edu(&cfg, PciAddress::new(0, 0, 2, 0)));
        let before = enable_bus_master(&cfg, dev);
        assert_eq!(before, reg::COMMAND_IO_SPACE | reg::COMMAND_INTX_DISABLE);
        assert_eq!(
            cfg.read16(dev, reg::COMMAND),
            before | reg::COMMAND_MEMORY_SPACE | reg::COMMAND_BUS_MASTER
        );
        assert_eq!(cfg.read16(dev, reg::STATUS), status, "RW1C bits untouched");
        // Idempotent.
        let again = enable_bus_master(&cfg, dev);
        assert_eq!(again, cfg.read16(dev, reg::COMMAND));
    }
}
