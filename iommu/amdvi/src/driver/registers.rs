//! The MMIO registers the driver uses (AMD I/O Virtualization Technology (IOMMU)
//! Specification 48882, §3.4), as named offsets and bits, and typed helpers over
//! [`RegisterBlock`].
//!
//! All of them are 64-bit registers and are accessed with 64-bit reads and writes (QEMU's
//! model and the hardware accept both widths). The Control register is only ever changed
//! by read-modify-write, so bits the driver does not own keep the value they had.

use sluice_iommu::hw::RegisterBlock;

/// Register offsets from the unit's MMIO base.
pub mod offset {
    /// Device Table Base Address: base (bits 51:12) | Size (bits 8:0, 4 KiB pages - 1).
    pub const DEVICE_TABLE_BASE: usize = 0x0000;
    /// Command Buffer Base Address: base (bits 51:12) | ComLen (bits 59:56, log2 entries).
    pub const COMMAND_BUFFER_BASE: usize = 0x0008;
    /// Event Log Base Address: base (bits 51:12) | EventLen (bits 59:56, log2 entries).
    pub const EVENT_LOG_BASE: usize = 0x0010;
    /// IOMMU Control.
    pub const CONTROL: usize = 0x0018;
    /// Exclusion Base (ExEn bit 0, Allow bit 1, base 51:12).
    pub const EXCLUSION_BASE: usize = 0x0020;
    /// Exclusion Range Limit.
    pub const EXCLUSION_LIMIT: usize = 0x0028;
    /// Extended Feature Register.
    pub const EXTENDED_FEATURES: usize = 0x0030;
    /// Command Buffer Head Pointer (bits 18:4: byte offset of the next command the unit
    /// reads).
    pub const COMMAND_HEAD: usize = 0x2000;
    /// Command Buffer Tail Pointer (bits 18:4: byte offset of the next free slot).
    pub const COMMAND_TAIL: usize = 0x2008;
    /// Event Log Head Pointer (software's read position).
    pub const EVENT_HEAD: usize = 0x2010;
    /// Event Log Tail Pointer (the unit's write position).
    pub const EVENT_TAIL: usize = 0x2018;
    /// IOMMU Status.
    pub const STATUS: usize = 0x2020;
}

/// Bits of the Control register.
pub mod control {
    /// IommuEn: translation (and command/log processing) on.
    pub const IOMMU_EN: u64 = 1 << 0;
    /// HtTunEn: HyperTransport tunnel translation.
    pub const HT_TUN_EN: u64 = 1 << 1;
    /// EventLogEn.
    pub const EVENT_LOG_EN: u64 = 1 << 2;
    /// EventIntEn: interrupt on event-log writes.
    pub const EVENT_INT_EN: u64 = 1 << 3;
    /// ComWaitIntEn: interrupt on COMPLETION_WAIT with I = 1.
    pub const COM_WAIT_INT_EN: u64 = 1 << 4;
    /// PassPW.
    pub const PASS_PW: u64 = 1 << 8;
    /// ResPassPW.
    pub const RES_PASS_PW: u64 = 1 << 9;
    /// Coherent: the unit's reads of its tables snoop the CPU caches.
    pub const COHERENT: u64 = 1 << 10;
    /// Isoc.
    pub const ISOC: u64 = 1 << 11;
    /// CmdBufEn.
    pub const CMD_BUF_EN: u64 = 1 << 12;
    /// PPRLogEn.
    pub const PPR_LOG_EN: u64 = 1 << 13;
    /// PprIntEn.
    pub const PPR_INT_EN: u64 = 1 << 14;
    /// PPREn.
    pub const PPR_EN: u64 = 1 << 15;
    /// GALogEn.
    pub const GA_LOG_EN: u64 = 1 << 28;
    /// GAIntEn.
    pub const GA_INT_EN: u64 = 1 << 29;

    /// What a previous owner may have left on and the driver turns off before it
    /// reprograms the unit (Linux's `iommu_disable` clears the same bits).
    pub const PREVIOUS_OWNER: u64 = IOMMU_EN
        | EVENT_LOG_EN
        | EVENT_INT_EN
        | COM_WAIT_INT_EN
        | CMD_BUF_EN
        | PPR_LOG_EN
        | PPR_INT_EN
        | GA_LOG_EN
        | GA_INT_EN;
}

/// Bits of the Status register.
pub mod status {
    /// EventOverflow (write 1 to clear): the event log was full, events were dropped and
    /// logging stopped.
    pub const EVENT_OVERFLOW: u64 = 1 << 0;
    /// EventLogInt (write 1 to clear).
    pub const EVENT_LOG_INT: u64 = 1 << 1;
    /// ComWaitInt (write 1 to clear).
    pub const COM_WAIT_INT: u64 = 1 << 2;
    /// EventLogRun (read-only): the unit is logging events.
    pub const EVENT_LOG_RUN: u64 = 1 << 3;
    /// CmdBufRun (read-only): the unit is fetching commands.
    pub const CMD_BUF_RUN: u64 = 1 << 4;
    /// The write-1-to-clear bits the driver clears at bring-up.
    pub const STALE: u64 = EVENT_OVERFLOW | EVENT_LOG_INT | COM_WAIT_INT;
}

/// The byte-offset field of the head and tail pointer registers (bits 18:4).
pub const RING_POINTER_MASK: u64 = 0x7_fff0;

/// Physical address field of the base registers (bits 51:12).
pub const BASE_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The Device Table Base value for a table at `base` of `pages` 4 KiB pages (1..=512).
pub const fn device_table_base(base: u64, pages: u64) -> u64 {
    (base & BASE_MASK) | ((pages - 1) & 0x1ff)
}

/// The Command Buffer / Event Log Base value for a ring of `2^log2_entries` entries.
pub const fn ring_base(base: u64, log2_entries: u32) -> u64 {
    (base & BASE_MASK) | ((log2_entries as u64 & 0xf) << 56)
}

/// Sets `set` and clears `clear` in the Control register, keeping every other bit as
/// the register holds it. Returns the value written.
pub fn update_control<R: RegisterBlock>(regs: &mut R, set: u64, clear: u64) -> u64 {
    let value = (regs.read64(offset::CONTROL) & !clear) | set;
    regs.write64(offset::CONTROL, value);
    value
}

/// Reads Status until `done` holds, at most `budget` times.
pub fn poll_status<R: RegisterBlock>(regs: &R, budget: u64, done: impl Fn(u64) -> bool) -> bool {
    (0..budget.max(1)).any(|_| done(regs.read64(offset::STATUS)))
}

/// The entry index a head or tail register points at, in a ring of `entries`.
pub fn ring_index<R: RegisterBlock>(regs: &R, register: usize, entries: u32) -> u32 {
    (((regs.read64(register) & RING_POINTER_MASK) >> 4) as u32) % entries
}

/// Writes a head or tail register to point at entry `index`.
pub fn set_ring_index<R: RegisterBlock>(regs: &mut R, register: usize, index: u32) {
    regs.write64(register, (u64::from(index) << 4) & RING_POINTER_MASK);
}
