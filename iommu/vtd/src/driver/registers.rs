//! The remapping unit's command and status registers the driver programs (offsets and
//! bits from the VT-d specification, chapter 11), and the bounded register polls.
//!
//! VER/CAP/ECAP decoding lives in [`crate::regs`]; this file only names what the driver
//! writes. Every wait for the hardware is a bounded loop: a unit that never answers must
//! produce an error, never a hang.

use crate::hw::RegisterBlock;

/// Global command (32-bit, write-only).
pub const GCMD: usize = 0x18;
/// Global status (32-bit).
pub const GSTS: usize = 0x1c;
/// Root table address (64-bit).
pub const RTADDR: usize = 0x20;
/// Context command (64-bit): register-based context-cache invalidation.
pub const CCMD: usize = 0x28;
/// Fault status (32-bit).
pub const FSTS: usize = 0x34;
/// Invalidation queue head (64-bit).
pub const IQH: usize = 0x80;
/// Invalidation queue tail (64-bit).
pub const IQT: usize = 0x88;
/// Invalidation queue address (64-bit).
pub const IQA: usize = 0x90;
/// Interrupt remapping table address (64-bit): base | EIME (bit 11) | S (bits 3:0).
pub const IRTA: usize = 0xB8;

/// GCMD/GSTS bits. The command bit and its status bit share a position.
pub mod gcmd {
    /// Translation enable / TES.
    pub const TE: u32 = 1 << 31;
    /// Set root table pointer (one-shot) / RTPS.
    pub const SRTP: u32 = 1 << 30;
    /// Set fault log (one-shot) / FLS.
    pub const SFL: u32 = 1 << 29;
    /// Enable advanced fault logging / AFLS.
    pub const EAFL: u32 = 1 << 28;
    /// Write-buffer flush (one-shot) / WBFS.
    pub const WBF: u32 = 1 << 27;
    /// Queued invalidation enable / QIES.
    pub const QIE: u32 = 1 << 26;
    /// Interrupt remapping enable / IRES.
    pub const IRE: u32 = 1 << 25;
    /// Set interrupt remap table pointer (one-shot) / IRTPS.
    pub const SIRTP: u32 = 1 << 24;
    /// Compatibility format interrupts / CFIS.
    pub const CFI: u32 = 1 << 23;

    /// The enables that stay on until software turns them off. A GCMD write must carry
    /// the ones currently set (read from GSTS), or it turns them off; it must never carry
    /// a one-shot status bit (RTPS, FLS, WBFS, IRTPS read back as 1 after their command
    /// completes: echoing them would re-issue that command).
    pub const PERSISTENT: u32 = TE | EAFL | QIE | IRE | CFI;
}

/// CCMD fields.
pub mod ccmd {
    /// Invalidate context cache: software sets it, hardware clears it when done.
    pub const ICC: u64 = 1 << 63;
    pub const CIRG_SHIFT: u32 = 61;
    /// Actual granularity (hardware), 0 = request not performed.
    pub const CAIG_SHIFT: u32 = 59;
    pub const FM_SHIFT: u32 = 32;
    pub const SID_SHIFT: u32 = 16;
}

/// IOTLB invalidate register fields (at ECAP.IRO + 8; IVA at ECAP.IRO).
pub mod iotlb {
    /// Invalidate IOTLB: software sets it, hardware clears it when done.
    pub const IVT: u64 = 1 << 63;
    pub const IIRG_SHIFT: u32 = 60;
    /// Actual granularity (hardware), 0 = request not performed.
    pub const IAIG_SHIFT: u32 = 57;
    pub const DR: u64 = 1 << 49;
    pub const DW: u64 = 1 << 48;
    pub const DID_SHIFT: u32 = 32;
}

/// FSTS bits.
pub mod fsts {
    /// Primary fault overflow (RW1C).
    pub const PFO: u32 = 1 << 0;
    /// Primary pending fault (RO: some fault record has F set).
    pub const PPF: u32 = 1 << 1;
    /// Invalidation queue error (RW1C): hardware stopped at a bad descriptor.
    pub const IQE: u32 = 1 << 4;
    /// Invalidation completion error (RW1C).
    pub const ICE: u32 = 1 << 5;
    /// Invalidation time-out error (RW1C, device-TLB invalidations).
    pub const ITE: u32 = 1 << 6;
    /// Fault record index: bits 15:8.
    pub const FRI_SHIFT: u32 = 8;
}

/// Polls `done(read32(offset))` at most `budget` times. True when it held.
pub fn poll32<R: RegisterBlock>(
    regs: &R,
    offset: usize,
    budget: u64,
    done: impl Fn(u32) -> bool,
) -> bool {
    (0..budget.max(1)).any(|_| done(regs.read32(offset)))
}

/// Polls `done(read64(offset))` at most `budget` times. The last value read is returned
/// with the outcome.
pub fn poll64<R: RegisterBlock>(
    regs: &R,
    offset: usize,
    budget: u64,
    done: impl Fn(u64) -> bool,
) -> (bool, u64) {
    let mut last = 0;
    for _ in 0..budget.max(1) {
        last = regs.read64(offset);
        if done(last) {
            return (true, last);
        }
    }
    (false, last)
}

/// The GCMD value that keeps every persistent enable as GSTS reports it, with `bit`
/// set or cleared.
pub fn gcmd_value<R: RegisterBlock>(regs: &R, bit: u32, on: bool) -> u32 {
    let current = regs.read32(GSTS) & gcmd::PERSISTENT;
    if on { current | bit } else { current & !bit }
}
