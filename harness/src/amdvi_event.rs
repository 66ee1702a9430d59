//! AMD-Vi event log entries (the `event=` value of the amd-iommu DMA self-test) and
//! the amd-iommu registers the harness reads while the kernel holds.
//!
//! An event log entry is 16 bytes; the kernel prints it as two little-endian qwords,
//! `event=0x<hi>:0x<lo>` (`lo` = bytes 0..8 = dwords 0-1, `hi` = bytes 8..16 = dwords
//! 2-3), or `event=none` when the log got no new entry. Layout (AMD I/O Virtualization
//! spec, "Event Log"; the same fields Linux decodes in `amd_iommu_types.h`):
//!
//! | bits of `lo` | field |
//! |---|---|
//! | 15:0  | DeviceID (requester id) |
//! | 19:16 | PASID[19:16] (IO_PAGE_FAULT) |
//! | 47:32 | DomainID / PASID[15:0] |
//! | 59:48 | Flags (IO_PAGE_FAULT: 0 GN, 1 NX, 2 US, 3 I, 4 PR, 5 RW, 6 PE, 7 RZ, 8 TR) |
//! | 63:60 | EventCode (2 = IO_PAGE_FAULT) |
//!
//! and `hi` is the address (IO_PAGE_FAULT: the faulting device address).
//!
//! What QEMU's amd-iommu (`hw/i386/amd_iommu.c`, 7.2 and 10.0 alike) would write for a
//! fault in its page walk (`amdvi_page_fault` → `amdvi_encode_event`): DeviceID = the
//! device's **devfn only** (the walk passes `as->devfn`, the bus is dropped), Flags =
//! I (bit 3) plus QEMU's own permission number in bits 1:0 (1 = read, 2 = write — the
//! spec's GN/NX positions; RW, PR, PE and TR are never set), EventCode 2, address = the
//! exact address of the access (the edu's blocked 64-byte write is retried in 4-byte
//! pieces: 16 faults at iova, iova+4, ..., iova+0x3c). A blocked edu write would be
//! `lo = 0x200a0000_000000XX` (XX = devfn). ILLEGAL_DEV_TABLE_ENTRY (reserved DTE bits)
//! would carry the full requester id and the DTE's address.
//!
//! But the Debian builds of QEMU 7.2.22 and 10.0.2 write **no event at all**:
//! `amdvi_setevent_bits(evt, addr, 64, 64)` builds its mask with
//! `MAKE_64BIT_MASK(64, 64)`, a shift by 64 (undefined behaviour), and GCC dropped the
//! whole encode-and-log path (in the 7.2 binary the fault path goes straight from the
//! permission check to setting Signaled Target Abort in the IOMMU's PCI status). Seen
//! with QEMU's own trace (`amdvi_page_fault` and `amdvi_invalid_dte` fire) while the
//! log memory, the tail register and the status register stay untouched. Besides, both
//! versions keep the tail pointer internally and never update the Event Log Tail
//! register (0x2018). So on these QEMUs `event=none` is all a correct kernel can print.

use std::fmt;

/// amd-iommu's MMIO registers on q35 (IVHD base address).
pub const AMDVI_MMIO: u64 = 0xfed8_0000;
/// Control register (IommuEn, EventLogEn, ...).
pub const AMDVI_CONTROL: u64 = AMDVI_MMIO + 0x18;
/// Event Log Head; Tail and Status follow at +8 and +0x10.
pub const AMDVI_EVENT_HEAD: u64 = AMDVI_MMIO + 0x2010;

/// `xp` of the Control register (two 32-bit words, low first).
pub fn control_command() -> String {
    format!("xp /2xw 0x{AMDVI_CONTROL:x}")
}

/// `xp` of Event Log Head, Event Log Tail and Status (six 32-bit words).
pub fn log_registers_command() -> String {
    format!("xp /6xw 0x{AMDVI_EVENT_HEAD:x}")
}

pub const IO_PAGE_FAULT: u8 = 0x2;
/// IO_PAGE_FAULT flags (bits 59:48 of `lo`).
pub const FLAG_I: u16 = 1 << 3;
pub const FLAG_PR: u16 = 1 << 4;
pub const FLAG_RW: u16 = 1 << 5;
pub const FLAG_PE: u16 = 1 << 6;
pub const FLAG_TR: u16 = 1 << 8;

pub fn event_code_name(code: u8) -> &'static str {
    match code {
        0x0 => "no event (an empty log slot)",
        0x1 => "ILLEGAL_DEV_TABLE_ENTRY",
        0x2 => "IO_PAGE_FAULT",
        0x3 => "DEV_TAB_HARDWARE_ERROR",
        0x4 => "PAGE_TAB_HARDWARE_ERROR",
        0x5 => "ILLEGAL_COMMAND_ERROR",
        0x6 => "COMMAND_HARDWARE_ERROR",
        0x7 => "IOTLB_INV_TIMEOUT",
        0x8 => "INVALID_DEVICE_REQUEST",
        0x9 => "INVALID_PPR_REQUEST",
        0xa => "EVENT_COUNTER_ZERO",
        0xb => "GUEST_EVENT_FAULT",
        0xc => "VIOMMU_HARDWARE_ERROR",
        0xd => "RMP_PAGE_FAULT",
        0xe => "RMP_HARDWARE_ERROR",
        _ => "unknown event code",
    }
}

/// What an unexpected event code says about the kernel's setup (for failure messages).
pub fn event_code_hint(code: u8) -> &'static str {
    match code {
        0x0 => "print `event=none` when the log got no new entry",
        0x1 => {
            "the device's DTE has reserved bits set (QEMU 7.2: bits 6:2 and 63 of qword 0 among others; QEMU 10.0 also wants qword 3 all zero); such a DTE blocks every DMA of the device"
        }
        0x3 => {
            "the device table could not be read: check the Device Table Base register (address, size)"
        }
        0x4 => "a page-table pointer leads where QEMU cannot read",
        0x5 | 0x6 => "a command-buffer error, not the blocked DMA",
        _ => "not the fault of a blocked DMA",
    }
}

/// One 16-byte event log entry as the kernel printed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventEntry {
    pub hi: u64,
    pub lo: u64,
}

/// Whether an IO_PAGE_FAULT says read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl EventEntry {
    /// EventCode, bits 63:60 of `lo` (bits 31:28 of dword 1).
    pub fn code(self) -> u8 {
        (self.lo >> 60) as u8
    }
    /// DeviceID, bits 15:0.
    pub fn device_id(self) -> u16 {
        self.lo as u16
    }
    /// Flags, bits 59:48 of `lo` (bits 27:16 of dword 1).
    pub fn flags(self) -> u16 {
        (self.lo >> 48) as u16 & 0xfff
    }
    /// DomainID / PASID[15:0], bits 47:32 of `lo`.
    pub fn domain_or_pasid(self) -> u16 {
        (self.lo >> 32) as u16
    }
    /// The address (dwords 2-3).
    pub fn address(self) -> u64 {
        self.hi
    }
    /// The direction of an IO_PAGE_FAULT: RW (flag bit 5) set = write, as the spec
    /// says; with RW clear, QEMU's permission number in flag bits 1:0 (2 = write,
    /// 1 = read) decides; with neither, RW = 0 means read.
    pub fn access(self) -> Access {
        let f = self.flags();
        if f & FLAG_RW != 0 || f & 3 == 2 {
            Access::Write
        } else {
            Access::Read
        }
    }

    /// `IO_PAGE_FAULT device 0x0010 address 0x31003c flags 0x00a (I, QEMU write)`.
    pub fn describe(self) -> String {
        let mut names = Vec::new();
        let f = self.flags();
        if self.code() == IO_PAGE_FAULT {
            for (bit, name) in [
                (FLAG_I, "I"),
                (FLAG_PR, "PR"),
                (FLAG_RW, "RW"),
                (FLAG_PE, "PE"),
                (FLAG_TR, "TR"),
            ] {
                if f & bit != 0 {
                    names.push(name.to_string());
                }
            }
            if f & FLAG_RW == 0 {
                match f & 3 {
                    1 => names.push("QEMU read".into()),
                    2 => names.push("QEMU write".into()),
                    _ => {}
                }
            }
        }
        let flags = if names.is_empty() {
            format!("0x{f:03x}")
        } else {
            format!("0x{f:03x} ({})", names.join(", "))
        };
        let domain = match self.domain_or_pasid() {
            0 => String::new(),
            d => format!(" domain/PASID 0x{d:x}"),
        };
        format!(
            "{} device 0x{:04x}{domain} address 0x{:x} flags {flags}",
            event_code_name(self.code()),
            self.device_id(),
            self.address()
        )
    }
}

impl fmt::Display for EventEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:016x}:0x{:016x}", self.hi, self.lo)
    }
}

/// `none` or `0x<hi>:0x<lo>`.
pub fn parse_event(v: &str) -> Result<Option<EventEntry>, String> {
    if v == "none" {
        return Ok(None);
    }
    let (hi, lo) = v
        .split_once(':')
        .ok_or_else(|| format!("{v:?} is neither `none` nor 0x<high qword>:0x<low qword>"))?;
    Ok(Some(EventEntry {
        hi: crate::dmatest::parse_hex(hi)?,
        lo: crate::dmatest::parse_hex(lo)?,
    }))
}

/// Does the event's DeviceID name requester id `rid`? Exactly, or — QEMU's page-walk
/// events carry only the devfn, the bus dropped — on the devfn alone when the event's
/// bus byte is 0.
pub fn device_matches(device_id: u16, rid: u16) -> bool {
    device_id == rid || (device_id >> 8 == 0 && device_id & 0xff == rid & 0xff)
}

/// The amd-iommu registers read while the kernel held (each part optional).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Registers {
    pub control: Option<u64>,
    /// (head, tail, status)
    pub log: Option<(u64, u64, u64)>,
}

impl Registers {
    /// From the replies to [`control_command`] and [`log_registers_command`].
    pub fn from_words(control: Option<&[u64]>, log: Option<&[u64]>) -> Registers {
        let qword = |w: &[u64], i: usize| w[i] | w[i + 1] << 32;
        Registers {
            control: control.filter(|w| w.len() == 2).map(|w| qword(w, 0)),
            log: log
                .filter(|w| w.len() == 6)
                .map(|w| (qword(w, 0), qword(w, 2), qword(w, 4))),
        }
    }

    /// `  context: amd-iommu at hold: ...`, or `None` if nothing was read.
    pub fn context(&self) -> Option<String> {
        if self.control.is_none() && self.log.is_none() {
            return None;
        }
        let mut parts = Vec::new();
        if let Some(c) = self.control {
            let bits: Vec<&str> = [
                (0, "IommuEn"),
                (2, "EventLogEn"),
                (3, "EventIntEn"),
                (12, "CmdBufEn"),
            ]
            .iter()
            .filter(|(b, _)| c >> b & 1 == 1)
            .map(|(_, n)| *n)
            .collect();
            let mut s = format!("Control 0x{c:x}");
            if c & 1 == 0 {
                s.push_str(" (IommuEn clear: the IOMMU was off)");
            } else {
                let _ = std::fmt::Write::write_fmt(&mut s, format_args!(" ({})", bits.join(", ")));
            }
            parts.push(s);
        }
        if let Some((head, tail, status)) = self.log {
            let bits: Vec<&str> = [
                (0, "EventOverflow"),
                (1, "EventLogInt"),
                (2, "ComWaitInt"),
                (3, "EventLogRun"),
                (4, "CmdBufRun"),
            ]
            .iter()
            .filter(|(b, _)| status >> b & 1 == 1)
            .map(|(_, n)| *n)
            .collect();
            let mut s = format!("event log head 0x{head:x}, tail 0x{tail:x}, Status 0x{status:x}");
            if !bits.is_empty() {
                let _ = std::fmt::Write::write_fmt(&mut s, format_args!(" ({})", bits.join(", ")));
            }
            parts.push(s);
        }
        Some(format!(
            "  context: amd-iommu at hold: {} (QEMU 7.2 and 10.0 write no event log entries and never move the tail register)",
            parts.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What QEMU's `amdvi_page_fault` would log for the edu at 00:02.0 writing to
    /// 0x310000 (last 4-byte piece): info = IOPF (2 << 12) | I (8) | write (2).
    const QEMU_WRITE_FAULT: &str = "0x000000000031003c:0x200a000000000010";

    #[test]
    fn decodes_a_qemu_io_page_fault() {
        let e = parse_event(QEMU_WRITE_FAULT).unwrap().unwrap();
        assert_eq!(e.code(), IO_PAGE_FAULT);
        assert_eq!(e.device_id(), 0x0010);
        assert_eq!(e.flags(), 0x00a);
        assert_eq!(e.domain_or_pasid(), 0);
        assert_eq!(e.address(), 0x31_003c);
        assert_eq!(e.access(), Access::Write);
        assert_eq!(e.to_string(), QEMU_WRITE_FAULT);
        assert_eq!(
            e.describe(),
            "IO_PAGE_FAULT device 0x0010 address 0x31003c flags 0x00a (I, QEMU write)"
        );
        // QEMU's read: permission 1.
        let r = EventEntry {
            hi: 0x1000,
            lo: 0x2009 << 48 | 0x10,
        };
        assert_eq!(r.access(), Access::Read);
        assert!(r.describe().ends_with("flags 0x009 (I, QEMU read)"));
        // The spec's encoding: RW (bit 5) set, PR set, domain 1.
        let s = EventEntry {
            hi: 0x31_0000,
            lo: 0x2030 << 48 | 1 << 32 | 0x0110,
        };
        assert_eq!(
            (s.access(), s.domain_or_pasid(), s.device_id()),
            (Access::Write, 1, 0x110)
        );
        assert_eq!(
            s.describe(),
            "IO_PAGE_FAULT device 0x0110 domain/PASID 0x1 address 0x310000 flags 0x030 (PR, RW)"
        );
        // RW clear and no QEMU permission: a read per the spec.
        let s = EventEntry {
            hi: 0,
            lo: 0x2010 << 48,
        };
        assert_eq!(s.access(), Access::Read);
    }

    #[test]
    fn parses_values() {
        assert_eq!(parse_event("none"), Ok(None));
        assert!(parse_event("None").is_err());
        assert!(parse_event("0x1").unwrap_err().contains("neither `none`"));
        assert!(parse_event("0x1:2").is_err());
        assert_eq!(
            parse_event("0x1:0x10000000000001a").unwrap(),
            Some(EventEntry {
                hi: 1,
                lo: 0x0100_0000_0000_001a
            })
        );
        assert_eq!(event_code_name(1), "ILLEGAL_DEV_TABLE_ENTRY");
        assert_eq!(event_code_name(0xf), "unknown event code");
    }

    #[test]
    fn device_id_quirk() {
        // Exact.
        assert!(device_matches(0x0010, 0x0010));
        // QEMU drops the bus: 03:01.0 (0x0308) is logged as 0x0008.
        assert!(device_matches(0x0008, 0x0308));
        // A bus-0 device is matched exactly: 00:01.0 is not 00:02.0.
        assert!(!device_matches(0x0008, 0x0010));
        // An event that names a bus must name the right one.
        assert!(!device_matches(0x0108, 0x0308));
    }

    #[test]
    fn register_context() {
        let r = Registers::from_words(Some(&[0x5, 0]), Some(&[0, 0, 0, 0, 0x8, 0]));
        assert_eq!(r.control, Some(5));
        assert_eq!(r.log, Some((0, 0, 8)));
        assert_eq!(
            r.context().unwrap(),
            "  context: amd-iommu at hold: Control 0x5 (IommuEn, EventLogEn); event log head 0x0, tail 0x0, Status 0x8 (EventLogRun) (QEMU 7.2 and 10.0 write no event log entries and never move the tail register)"
        );
        let r = Registers::from_words(Some(&[0, 0]), None);
        assert!(
            r.context()
                .unwrap()
                .contains("Control 0x0 (IommuEn clear: the IOMMU was off)")
        );
        assert_eq!(Registers::from_words(Some(&[1]), None).context(), None);
        assert_eq!(control_command(), "xp /2xw 0xfed80018");
        assert_eq!(log_registers_command(), "xp /6xw 0xfed82010");
    }
}
