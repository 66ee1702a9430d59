//! Primary fault recording (VT-d specification §7.2): decoding the fault-recording
//! registers and naming the fault reasons.
//!
//! A unit records a blocked DMA request in one of CAP.NFR 128-bit registers starting at
//! CAP.FRO: F (bit 127) says the record is valid, T (bit 126) the request type, FR (bits
//! 103:96) the reason, SID (bits 79:64) the requester id and FI (bits 63:12) the page
//! address. Software clears a record by writing 1 to F; while records are full the unit
//! drops further faults and sets FSTS.PFO (overflow).

use sluice_iommu::{FaultRecord, UnitId};

/// F, as bit 31 of the record's last 32-bit word (offset + 12).
pub const F_DWORD: u32 = 1 << 31;

/// Decodes one record (`lo` = bits 63:0, `hi` = bits 127:64) if F is set.
pub fn decode(unit: UnitId, lo: u64, hi: u64) -> Option<FaultRecord> {
    if hi >> 63 == 0 {
        return None;
    }
    let reason = (hi >> 32) as u8;
    Some(FaultRecord {
        unit,
        requester_id: hi as u16,
        address: lo & !0xfff,
        // T: 0 = write request, 1 = read (or AtomicOp) request.
        write: (hi >> 62) & 1 == 0,
        reason,
        reason_text: reason_text(reason),
    })
}

/// The specification's meaning of a fault reason code (legacy-mode DMA remapping faults
/// 0x1–0xD and interrupt-remapping faults 0x20–0x27; scalable-mode codes by range).
pub fn reason_text(reason: u8) -> &'static str {
    match reason {
        0x0 => "reserved (advanced fault logging)",
        0x1 => "root entry not present",
        0x2 => "context entry not present (device not attached)",
        0x3 => "invalid context entry (unsupported AW or translation type)",
        0x4 => "address beyond the domain's address width",
        0x5 => "write to a page without write permission",
        0x6 => "read of a page without read permission",
        0x7 => "error reading a second-level paging entry",
        0x8 => "error reading the root entry (root table address invalid)",
        0x9 => "error reading the context entry (context table address invalid)",
        0xA => "reserved bit set in a present root entry",
        0xB => "reserved bit set in a present context entry",
        0xC => "reserved bit set in a present second-level paging entry",
        0xD => "translation type in the context entry blocks the request (ATS)",
        0x20 => "interrupt request with reserved fields set",
        0x21 => "interrupt index beyond the remapping table",
        0x22 => "interrupt remapping entry not present",
        0x23 => "error reading the interrupt remapping table",
        0x24 => "reserved bit set in a present interrupt remapping entry",
        0x25 => "compatibility-format interrupt blocked",
        0x26 => "interrupt blocked: source id verification failed",
        0x27 => "error reading a posted-interrupt descriptor",
        0x30..=0x7f => "scalable-mode translation fault",
        _ => "unknown fault reason",
    }
}

/// Fault counters of one unit since the driver started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Fault records read and cleared.
    pub records: u64,
    /// Times FSTS.PFO (records full, faults dropped) was found set and cleared.
    pub overflows: u64,
}
