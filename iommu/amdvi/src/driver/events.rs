//! The event log (spec §2.5): a ring of 128-bit entries the unit writes at its tail and
//! software consumes from the head. Decoding and naming of the entries.
//!
//! Common layout of an entry, as four little-endian dwords:
//!
//! | dword | bits  | field                                                         |
//! |-------|-------|---------------------------------------------------------------|
//! | 0     | 15:0  | DeviceID (requester id)                                        |
//! | 0     | 19:16 | PASID bits 19:16 (IO_PAGE_FAULT and others: high bits)         |
//! | 1     | 15:0  | DomainID or PASID bits 15:0                                    |
//! | 1     | 27:16 | flags (meaning per event code)                                 |
//! | 1     | 31:28 | event code                                                     |
//! | 2, 3  |       | address (dword 2 low, dword 3 high)                            |
//!
//! Flags of IO_PAGE_FAULT (and, partly, ILLEGAL_DEV_TABLE_ENTRY): GN (0), NX (1), US (2),
//! I (3: an interrupt request), PR (4: the page was present, so a permission fault), RW
//! (5: a write), PE (6: permission denied), RZ (7: reserved bit set), TR (8: an ATS
//! translation request).
//!
//! # QEMU
//!
//! QEMU's model (hw/i386/amd_iommu.c) deviates in ways the decoding must know about:
//!
//! - QEMU up to 10.0 never writes an event at all: its overflow test ORs instead of
//!   ANDs (`amdvi_test_mask`), so the log looks permanently overflowed and every event
//!   is dropped (fixed in QEMU 10.1, "Fix event log generation"). On those versions the
//!   log stays empty; blocked DMA leaves no trace here.
//! - Where it writes IO_PAGE_FAULTs, the DeviceID is the device's devfn only: the bus
//!   number is lost (`amdvi_page_fault(s, as->devfn, ...)`), so `01:00.0` reports as
//!   `00:00.0`. The driver reports the id as logged and offers
//!   [`crate::driver::AmdViIommu::event_requester_candidates`].
//! - Its flags are `I | access` where access is 1 for a read and 2 for a write (bits 0
//!   and 1, which the specification calls GN and NX); PR and RW are never set. An entry
//!   with exactly that pattern is decoded as QEMU's: write = bit 1.

use alloc::vec::Vec;
use core::fmt;

use sluice_iommu::{FaultRecord, UnitId};

/// Event codes (dword 1, bits 31:28).
pub mod code {
    /// ILLEGAL_DEV_TABLE_ENTRY.
    pub const ILLEGAL_DEV_TABLE_ENTRY: u8 = 0x1;
    /// IO_PAGE_FAULT.
    pub const IO_PAGE_FAULT: u8 = 0x2;
    /// DEV_TAB_HARDWARE_ERROR.
    pub const DEV_TAB_HARDWARE_ERROR: u8 = 0x3;
    /// PAGE_TAB_HARDWARE_ERROR.
    pub const PAGE_TAB_HARDWARE_ERROR: u8 = 0x4;
    /// ILLEGAL_COMMAND_ERROR.
    pub const ILLEGAL_COMMAND_ERROR: u8 = 0x5;
    /// COMMAND_HARDWARE_ERROR.
    pub const COMMAND_HARDWARE_ERROR: u8 = 0x6;
    /// IOTLB_INV_TIMEOUT.
    pub const IOTLB_INV_TIMEOUT: u8 = 0x7;
    /// INVALID_DEVICE_REQUEST.
    pub const INVALID_DEVICE_REQUEST: u8 = 0x8;
    /// INVALID_PPR_REQUEST.
    pub const INVALID_PPR_REQUEST: u8 = 0x9;
    /// EVENT_COUNTER_ZERO.
    pub const EVENT_COUNTER_ZERO: u8 = 0xA;
}

/// Flag bits (dword 1, bits 27:16, shifted down).
pub mod flag {
    /// GN: guest (PASID) request.
    pub const GN: u16 = 1 << 0;
    /// NX: execute request.
    pub const NX: u16 = 1 << 1;
    /// US: user request.
    pub const US: u16 = 1 << 2;
    /// I: interrupt request.
    pub const I: u16 = 1 << 3;
    /// PR: the page was present (permission fault).
    pub const PR: u16 = 1 << 4;
    /// RW: write request.
    pub const RW: u16 = 1 << 5;
    /// PE: permission denied.
    pub const PE: u16 = 1 << 6;
    /// RZ: reserved bit not zero.
    pub const RZ: u16 = 1 << 7;
    /// TR: translation request (ATS).
    pub const TR: u16 = 1 << 8;
}

/// One event-log entry as the unit wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// The unit whose log held it.
    pub unit: UnitId,
    /// The four dwords.
    pub raw: [u32; 4],
}

impl RawEvent {
    /// From the two quadwords read from the log.
    pub fn from_quads(unit: UnitId, lo: u64, hi: u64) -> Self {
        Self {
            unit,
            raw: [lo as u32, (lo >> 32) as u32, hi as u32, (hi >> 32) as u32],
        }
    }

    /// `(high quadword, low quadword)`, for printing as `event=0x<hi>:0x<lo>`.
    pub fn quads(&self) -> (u64, u64) {
        let lo = u64::from(self.raw[0]) | u64::from(self.raw[1]) << 32;
        let hi = u64::from(self.raw[2]) | u64::from(self.raw[3]) << 32;
        (hi, lo)
    }

    /// The event code.
    pub fn code(&self) -> u8 {
        (self.raw[1] >> 28) as u8
    }

    /// DeviceID (see the module docs about QEMU's).
    pub fn device_id(&self) -> u16 {
        self.raw[0] as u16
    }

    /// DomainID or PASID (20 bits).
    pub fn domain_or_pasid(&self) -> u32 {
        (self.raw[0] & 0xf_0000) | (self.raw[1] & 0xffff)
    }

    /// The flags field.
    pub fn flags(&self) -> u16 {
        ((self.raw[1] >> 16) & 0xfff) as u16
    }

    /// The address field.
    pub fn address(&self) -> u64 {
        u64::from(self.raw[2]) | u64::from(self.raw[3]) << 32
    }

    /// Whether the flags have QEMU's `I | access` pattern (see the module docs).
    pub fn qemu_flags(&self) -> bool {
        let flags = self.flags();
        self.code() == code::IO_PAGE_FAULT
            && flags & !(flag::GN | flag::NX) == flag::I
            && flags & (flag::GN | flag::NX) != 0
    }

    /// Was the faulting request a write? (RW; bit 1 in QEMU's encoding.)
    pub fn write(&self) -> bool {
        if self.qemu_flags() {
            self.flags() & flag::NX != 0
        } else {
            self.flags() & flag::RW != 0
        }
    }

    /// The event's name in the specification.
    pub fn name(&self) -> &'static str {
        event_name(self.code())
    }

    /// What happened, in words (flags included for faults).
    pub fn reason_text(&self) -> &'static str {
        match self.code() {
            code::IO_PAGE_FAULT => io_page_fault_text(self.flags(), self.qemu_flags()),
            code::ILLEGAL_DEV_TABLE_ENTRY => {
                if self.flags() & flag::RZ != 0 {
                    "illegal device table entry: reserved bit set"
                } else if self.flags() & flag::I != 0 {
                    "illegal device table entry (interrupt request)"
                } else {
                    "illegal device table entry (invalid mode or reserved field)"
                }
            }
            code::DEV_TAB_HARDWARE_ERROR => "hardware error reading the device table",
            code::PAGE_TAB_HARDWARE_ERROR => "hardware error reading a page table",
            code::ILLEGAL_COMMAND_ERROR => "illegal command in the command buffer",
            code::COMMAND_HARDWARE_ERROR => "hardware error reading the command buffer",
            code::IOTLB_INV_TIMEOUT => "device IOTLB invalidation timed out",
            code::INVALID_DEVICE_REQUEST => "invalid device request",
            code::INVALID_PPR_REQUEST => "invalid peripheral page request",
            code::EVENT_COUNTER_ZERO => "event counter reached zero",
            _ => "unknown event",
        }
    }

    /// A [`FaultRecord`] for IO_PAGE_FAULT and ILLEGAL_DEV_TABLE_ENTRY events (the
    /// translation faults of a DMA request); `None` for the others.
    pub fn to_fault(&self) -> Option<FaultRecord> {
        match self.code() {
            code::IO_PAGE_FAULT | code::ILLEGAL_DEV_TABLE_ENTRY => Some(FaultRecord {
                unit: self.unit,
                requester_id: self.device_id(),
                address: self.address(),
                write: self.write(),
                reason: self.code(),
                reason_text: self.reason_text(),
            }),
            _ => None,
        }
    }
}

/// `IO_PAGE_FAULT device 00:02.0 domain 0x0001 address 0x1000 flags 0x030: write to a
/// page without write permission` (ivhd numbering as the unit id).
impl fmt::Display for RawEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.device_id();
        write!(
            f,
            "ivhd{}: {} device {:02x}:{:02x}.{} domain/pasid {:#06x} address {:#x} flags {:#05x}: {}",
            self.unit.0,
            self.name(),
            id >> 8,
            (id >> 3) & 0x1f,
            id & 7,
            self.domain_or_pasid(),
            self.address(),
            self.flags(),
            self.reason_text()
        )
    }
}

/// The specification's name of an event code.
pub fn event_name(code: u8) -> &'static str {
    match code {
        code::ILLEGAL_DEV_TABLE_ENTRY => "ILLEGAL_DEV_TABLE_ENTRY",
        code::IO_PAGE_FAULT => "IO_PAGE_FAULT",
        code::DEV_TAB_HARDWARE_ERROR => "DEV_TAB_HARDWARE_ERROR",
        code::PAGE_TAB_HARDWARE_ERROR => "PAGE_TAB_HARDWARE_ERROR",
        code::ILLEGAL_COMMAND_ERROR => "ILLEGAL_COMMAND_ERROR",
        code::COMMAND_HARDWARE_ERROR => "COMMAND_HARDWARE_ERROR",
        code::IOTLB_INV_TIMEOUT => "IOTLB_INV_TIMEOUT",
        code::INVALID_DEVICE_REQUEST => "INVALID_DEVICE_REQUEST",
        code::INVALID_PPR_REQUEST => "INVALID_PPR_REQUEST",
        code::EVENT_COUNTER_ZERO => "EVENT_COUNTER_ZERO",
        0 => "EMPTY",
        _ => "UNKNOWN_EVENT",
    }
}

/// An IO_PAGE_FAULT's flags in words.
pub fn io_page_fault_text(flags: u16, qemu: bool) -> &'static str {
    if qemu {
        return if flags & flag::NX != 0 {
            "I/O page fault on a write (QEMU: no present/permission detail)"
        } else {
            "I/O page fault on a read (QEMU: no present/permission detail)"
        };
    }
    let write = flags & flag::RW != 0;
    if flags & flag::TR != 0 {
        "I/O page fault on an ATS translation request"
    } else if flags & flag::RZ != 0 {
        "I/O page fault: reserved bit set in a page-table entry"
    } else if flags & flag::I != 0 {
        "I/O page fault on an interrupt request"
    } else if flags & (flag::PR | flag::PE) != 0 {
        if write {
            "I/O page fault: write to a page without write permission"
        } else {
            "I/O page fault: read of a page without read permission"
        }
    } else if write {
        "I/O page fault: write to an unmapped address (not present)"
    } else {
        "I/O page fault: read of an unmapped address (not present)"
    }
}

/// Event counters of one unit since the driver started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Entries read from the log.
    pub total: u64,
    /// Entries per event code (index: code, 0..=15).
    pub by_code: [u64; 16],
    /// Times Status.EventOverflow (log full, events dropped) was found and logging
    /// restarted.
    pub overflows: u64,
    /// Calls that stopped at the per-call bound with entries left in the log.
    pub truncated_reads: u64,
}

impl EventStats {
    /// Counts one entry.
    pub fn count(&mut self, event: &RawEvent) {
        self.total += 1;
        self.by_code[usize::from(event.code() & 0xf)] += 1;
    }

    /// Entries that were translation faults (IO_PAGE_FAULT, ILLEGAL_DEV_TABLE_ENTRY).
    pub fn faults(&self) -> u64 {
        self.by_code[usize::from(code::IO_PAGE_FAULT)]
            + self.by_code[usize::from(code::ILLEGAL_DEV_TABLE_ENTRY)]
    }
}

/// The last events of a unit, oldest first, at most [`RecentEvents::CAPACITY`].
#[derive(Clone, Debug, Default)]
pub struct RecentEvents {
    events: Vec<RawEvent>,
}

impl RecentEvents {
    /// How many are kept.
    pub const CAPACITY: usize = 32;

    /// Remembers `event`, forgetting the oldest beyond the capacity.
    pub fn push(&mut self, event: RawEvent) {
        if self.events.len() == Self::CAPACITY {
            self.events.remove(0);
        }
        self.events.push(event);
    }

    /// Oldest first.
    pub fn as_slice(&self) -> &[RawEvent] {
        &self.events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(code: u8, device: u16, flags: u16, address: u64) -> RawEvent {
        let dword1 = u32::from(code) << 28 | u32::from(flags) << 16 | 0x0005;
        RawEvent {
            unit: UnitId(0),
            raw: [
                u32::from(device),
                dword1,
                address as u32,
                (address >> 32) as u32,
            ],
        }
    }

    #[test]
    fn io_page_fault_decoding() {
        let e = event(2, 0x0110, flag::PR | flag::RW | flag::PE, 0x1_2345_6000);
        assert_eq!(e.code(), 2);
        assert_eq!(e.device_id(), 0x0110);
        assert_eq!(e.domain_or_pasid(), 5);
        assert_eq!(e.address(), 0x1_2345_6000);
        assert!(e.write());
        assert!(!e.qemu_flags());
        let fault = e.to_fault().unwrap();
        assert_eq!(fault.reason, 2);
        assert_eq!(
            fault.reason_text,
            "I/O page fault: write to a page without write permission"
        );
        assert_eq!(
            e.to_string(),
            "ivhd0: IO_PAGE_FAULT device 01:02.0 domain/pasid 0x0005 address 0x123456000 \
             flags 0x070: I/O page fault: write to a page without write permission"
        );
        let (hi, lo) = e.quads();
        assert_eq!(RawEvent::from_quads(UnitId(0), lo, hi), e);
        // QEMU's encoding: I | 2 for a write.
        let q = event(2, 0x0010, flag::I | 2, 0x4000);
        assert!(q.qemu_flags() && q.write());
        let q = event(2, 0x0010, flag::I | 1, 0x4000);
        assert!(q.qemu_flags() && !q.write());
        assert!(event(5, 0, 0, 0).to_fault().is_none());
        assert_eq!(event(5, 0, 0, 0).name(), "ILLEGAL_COMMAND_ERROR");
    }
}
