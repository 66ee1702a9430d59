//! IVHD device entries: which requester ids an IOMMU translates, and how.
//!
//! After its fixed header an IVHD holds a list of device entries. Their size follows
//! from the type byte alone (types 00h..3Fh are 4 bytes, 40h..7Fh are 8 bytes), except
//! for types 80h and up, which are variable-length and must be known to be skipped.
//! That rule lets a parser step over 4- and 8-byte types it does not know, but an
//! unknown variable-length type ends the IVHD: its size cannot be guessed.
//!
//! Every entry starts with the same 4 bytes: type, 16-bit device id (the requester id
//! `bus << 8 | devfn`, little endian) and the DTE setting byte, which says which
//! legacy interrupts and system-management messages the device may pass through
//! untranslated. Range entries come in pairs: a start (03h, 43h or 47h) and an end
//! (04h); entries between them are allowed, a second start is not.

use alloc::vec::Vec;
use core::fmt;

use super::error::{IvrsError, IvrsErrorKind};

bitflags::bitflags! {
    /// The DTE setting byte of a device entry: what the IOMMU should copy into the
    /// device's Device Table Entry for interrupts it passes through untranslated.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct DteSetting: u8 {
        /// INITPass: INIT interrupts pass through.
        const INIT_PASS = 1 << 0;
        /// EIntPass: ExtINT interrupts pass through.
        const EINT_PASS = 1 << 1;
        /// NMIPass: NMIs pass through.
        const NMI_PASS = 1 << 2;
        /// SysMgt bit 0 (bits 5:4 form the SysMgt field, see [`DteSetting::sys_mgt`]).
        const SYS_MGT1 = 1 << 4;
        /// SysMgt bit 1.
        const SYS_MGT2 = 1 << 5;
        /// Lint0Pass: LINT0 interrupts pass through.
        const LINT0_PASS = 1 << 6;
        /// Lint1Pass: LINT1 interrupts pass through.
        const LINT1_PASS = 1 << 7;
    }
}

impl DteSetting {
    /// The 2-bit SysMgt field: 0 = system-management requests are target-aborted,
    /// 1 = forwarded untranslated, 2 = INTx forwarded untranslated, 3 = translated.
    pub const fn sys_mgt(self) -> u8 {
        (self.bits() >> 4) & 0x3
    }
}

/// `none` or e.g. `INITPass, NMIPass, SysMgt 1`.
impl fmt::Display for DteSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bits() == 0 {
            return f.write_str("none");
        }
        let mut first = true;
        let mut word = |f: &mut fmt::Formatter<'_>, args: fmt::Arguments<'_>| {
            let separator = if first { "" } else { ", " };
            first = false;
            write!(f, "{separator}{args}")
        };
        for (flag, name) in [
            (Self::INIT_PASS, "INITPass"),
            (Self::EINT_PASS, "EIntPass"),
            (Self::NMI_PASS, "NMIPass"),
        ] {
            if self.contains(flag) {
                word(f, format_args!("{name}"))?;
            }
        }
        if self.sys_mgt() != 0 {
            word(f, format_args!("SysMgt {}", self.sys_mgt()))?;
        }
        for (flag, name) in [
            (Self::LINT0_PASS, "Lint0Pass"),
            (Self::LINT1_PASS, "Lint1Pass"),
        ] {
            if self.contains(flag) {
                word(f, format_args!("{name}"))?;
            }
        }
        if self.bits() & 0x08 != 0 {
            word(f, format_args!("reserved bit 3"))?;
        }
        Ok(())
    }
}

/// The extended DTE setting word of entries 46h/47h.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ExtendedDteSetting(pub u32);

impl ExtendedDteSetting {
    /// Bit 31, AtsDisabled: firmware asks that ATS stay off for the device. (This
    /// follows the spec and ACPICA; Linux's `ACPI_DEVFLAG_ATSDIS` tests bit 28.)
    pub const fn ats_disabled(self) -> bool {
        self.0 & (1 << 31) != 0
    }
}

/// The kind of device a special entry (48h) names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpecialVariety {
    /// An I/O APIC; the handle is its APIC id (as in the MADT).
    IoApic,
    /// An HPET; the handle is its HPET number.
    Hpet,
    /// Any other variety byte.
    Unknown(u8),
}

impl SpecialVariety {
    /// Decodes the variety byte (1 = IOAPIC, 2 = HPET).
    pub const fn from_raw(raw: u8) -> Self {
        match raw {
            1 => SpecialVariety::IoApic,
            2 => SpecialVariety::Hpet,
            other => SpecialVariety::Unknown(other),
        }
    }
}

impl fmt::Display for SpecialVariety {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecialVariety::IoApic => f.write_str("IOAPIC"),
            SpecialVariety::Hpet => f.write_str("HPET"),
            SpecialVariety::Unknown(raw) => write!(f, "variety {raw:#04x}"),
        }
    }
}

/// One device entry of an IVHD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceEntry {
    /// Offset of the entry's type byte from the start of the IVRS table.
    pub offset: usize,
    /// The type byte.
    pub entry_type: u8,
    /// Bytes 1..3: the requester id the entry names (reserved, usually 0, for
    /// types 01h and 48h).
    pub device_id: u16,
    /// Byte 3: the DTE setting (reserved for 04h).
    pub dte: DteSetting,
    /// What the type adds.
    pub kind: DeviceEntryKind,
}

/// The types of device entries and the data each adds to the common 4 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceEntryKind {
    /// 00h: padding.
    Pad,
    /// 01h: every requester id of the segment.
    All,
    /// 02h: the requester id in `device_id`.
    Select,
    /// 03h: start of a range, closed by a [`DeviceEntryKind::RangeEnd`].
    RangeStart,
    /// 04h: end of a range (inclusive).
    RangeEnd,
    /// 42h: `device_id`'s DMA carries requester id `alias`.
    AliasSelect {
        /// Bytes 5..7: the requester id the device's requests carry.
        alias: u16,
    },
    /// 43h: start of a range whose DMA carries requester id `alias`.
    AliasRangeStart {
        /// Bytes 5..7: the requester id the devices' requests carry.
        alias: u16,
    },
    /// 46h: select with an extended DTE setting.
    ExtendedSelect {
        /// Bytes 4..8.
        ext: ExtendedDteSetting,
    },
    /// 47h: range start with an extended DTE setting.
    ExtendedRangeStart {
        /// Bytes 4..8.
        ext: ExtendedDteSetting,
    },
    /// 48h: an IOAPIC or HPET and the requester id its interrupts carry.
    Special {
        /// Byte 4: IOAPIC id or HPET number.
        handle: u8,
        /// Bytes 5..7: the requester id its messages carry ("used id").
        source_id: u16,
        /// Byte 7.
        variety: SpecialVariety,
    },
    /// F0h: an ACPI-namespace device (e.g. an embedded controller) identified by
    /// HID/UID rather than PCI address, with the requester id in `device_id`.
    AcpiHid {
        /// Bytes 4..12: _HID (ASCII, or an EISA id).
        hid: [u8; 8],
        /// Bytes 12..20: _CID.
        cid: [u8; 8],
        /// Byte 20: 0 = no UID, 1 = integer, 2 = string.
        uid_format: u8,
        /// Bytes 22..: the UID (byte 21 is its length).
        uid: Vec<u8>,
    },
    /// A 4- or 8-byte type this parser does not know (skipped, recorded).
    Reserved,
}

impl DeviceEntry {
    /// Size of the entry in bytes.
    pub fn len(&self) -> usize {
        match &self.kind {
            DeviceEntryKind::AcpiHid { uid, .. } => ACPI_HID_FIXED_LEN + uid.len(),
            _ => fixed_entry_len(self.entry_type).unwrap_or(4),
        }
    }

    /// Entries always hold at least their 4 common bytes.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Size of the fixed part of an F0h entry (the UID follows).
pub(crate) const ACPI_HID_FIXED_LEN: usize = 22;

/// Size of 4- and 8-byte entry types, decided by the type range alone.
pub(crate) const fn fixed_entry_len(entry_type: u8) -> Option<usize> {
    match entry_type {
        0x00..=0x3F => Some(4),
        0x40..=0x7F => Some(8),
        _ => None,
    }
}

/// A requester id printed as `bb:dd.f`.
#[derive(Clone, Copy)]
pub(crate) struct Bdf(pub u16);

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{:x}",
            self.0 >> 8,
            (self.0 >> 3) & 0x1f,
            self.0 & 0x7
        )
    }
}

/// Prints the text of an 8-byte ACPI id, without trailing NULs.
struct AcpiId<'a>(&'a [u8]);

impl fmt::Display for AcpiId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self
            .0
            .iter()
            .rposition(|&byte| byte != 0)
            .map_or(0, |last| last + 1);
        write!(f, "{}", self.0[..end].escape_ascii())
    }
}

/// One line per entry, as the tests and the boot log use it: `select 00:02.0`,
/// `alias-range-start 03:00.0 alias 03:00.0`, `special IOAPIC 0 source 00:14.0`,
/// with ` [dte ...]` appended when the DTE setting is not zero.
impl fmt::Display for DeviceEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = Bdf(self.device_id);
        match &self.kind {
            DeviceEntryKind::Pad => f.write_str("pad")?,
            DeviceEntryKind::All => f.write_str("all")?,
            DeviceEntryKind::Select => write!(f, "select {id}")?,
            DeviceEntryKind::RangeStart => write!(f, "range-start {id}")?,
            DeviceEntryKind::RangeEnd => write!(f, "range-end {id}")?,
            DeviceEntryKind::AliasSelect { alias } => {
                write!(f, "alias-select {id} alias {}", Bdf(*alias))?
            }
            DeviceEntryKind::AliasRangeStart { alias } => {
                write!(f, "alias-range-start {id} alias {}", Bdf(*alias))?
            }
            DeviceEntryKind::ExtendedSelect { ext } => {
                write!(f, "ext-select {id} ext {:#010x}", ext.0)?
            }
            DeviceEntryKind::ExtendedRangeStart { ext } => {
                write!(f, "ext-range-start {id} ext {:#010x}", ext.0)?
            }
            DeviceEntryKind::Special {
                handle,
                source_id,
                variety,
            } => write!(f, "special {variety} {handle} source {}", Bdf(*source_id))?,
            DeviceEntryKind::AcpiHid {
                hid,
                cid,
                uid_format,
                uid,
            } => {
                write!(f, "acpi-hid {} cid {}", AcpiId(hid), AcpiId(cid))?;
                match uid_format {
                    0 => {}
                    2 => write!(f, " uid {}", AcpiId(uid))?,
                    _ => write!(f, " uid {uid:02x?}")?,
                }
                write!(f, " {id}")?
            }
            DeviceEntryKind::Reserved => write!(f, "reserved type {:#04x} {id}", self.entry_type)?,
        }
        if !self.dte.is_empty() && !matches!(self.kind, DeviceEntryKind::RangeEnd) {
            write!(f, " [dte {}]", self.dte)?;
        }
        Ok(())
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// An open range: where its start entry is, its type and first device id.
struct OpenRange {
    offset: usize,
    entry_type: u8,
    device_id: u16,
}

/// Parses the device entries in `table[start..end]` (the caller guarantees
/// `start <= end <= table.len()`).
///
/// Returns the entries read and, if the list is malformed, the error that stopped
/// the walk: the entries before it are kept, nothing after it is read. The walk
/// always advances by at least 4 bytes, so it ends.
pub(crate) fn parse_entries(
    table: &[u8],
    start: usize,
    end: usize,
) -> (Vec<DeviceEntry>, Option<IvrsError>) {
    let mut entries = Vec::new();
    let mut open: Option<OpenRange> = None;
    let mut at = start;
    while at < end {
        let remaining = end - at;
        let entry_type = table[at];
        let length = match fixed_entry_len(entry_type) {
            Some(length) => length,
            None if entry_type == 0xF0 => {
                if remaining < ACPI_HID_FIXED_LEN {
                    return (entries, Some(truncated(at, entry_type, 22, remaining)));
                }
                ACPI_HID_FIXED_LEN + usize::from(table[at + 21])
            }
            None => {
                let kind = IvrsErrorKind::UnknownVariableEntry { entry_type };
                return (entries, Some(IvrsError::new(at, kind)));
            }
        };
        if remaining < length {
            return (entries, Some(truncated(at, entry_type, length, remaining)));
        }
        let bytes = &table[at..at + length];
        let device_id = u16_at(bytes, 1);
        let kind = match entry_type {
            0x00 => DeviceEntryKind::Pad,
            0x01 => DeviceEntryKind::All,
            0x02 => DeviceEntryKind::Select,
            0x03 => DeviceEntryKind::RangeStart,
            0x04 => DeviceEntryKind::RangeEnd,
            0x42 => DeviceEntryKind::AliasSelect {
                alias: u16_at(bytes, 5),
            },
            0x43 => DeviceEntryKind::AliasRangeStart {
                alias: u16_at(bytes, 5),
            },
            0x46 => DeviceEntryKind::ExtendedSelect {
                ext: ExtendedDteSetting(u32_at(bytes, 4)),
            },
            0x47 => DeviceEntryKind::ExtendedRangeStart {
                ext: ExtendedDteSetting(u32_at(bytes, 4)),
            },
            0x48 => DeviceEntryKind::Special {
                handle: bytes[4],
                source_id: u16_at(bytes, 5),
                variety: SpecialVariety::from_raw(bytes[7]),
            },
            0xF0 => {
                let mut hid = [0; 8];
                hid.copy_from_slice(&bytes[4..12]);
                let mut cid = [0; 8];
                cid.copy_from_slice(&bytes[12..20]);
                DeviceEntryKind::AcpiHid {
                    hid,
                    cid,
                    uid_format: bytes[20],
                    uid: bytes[ACPI_HID_FIXED_LEN..].to_vec(),
                }
            }
            _ => DeviceEntryKind::Reserved,
        };

        // Range pairing.
        match kind {
            DeviceEntryKind::RangeStart
            | DeviceEntryKind::AliasRangeStart { .. }
            | DeviceEntryKind::ExtendedRangeStart { .. } => {
                if let Some(previous) = open {
                    return (entries, Some(unclosed(&previous)));
                }
                open = Some(OpenRange {
                    offset: at,
                    entry_type,
                    device_id,
                });
            }
            DeviceEntryKind::RangeEnd => match open.take() {
                None => {
                    let error = IvrsError::new(at, IvrsErrorKind::RangeEndWithoutStart);
                    return (entries, Some(error));
                }
                Some(range) if device_id < range.device_id => {
                    let kind = IvrsErrorKind::RangeEndBeforeStart {
                        start: range.device_id,
                        end: device_id,
                    };
                    return (entries, Some(IvrsError::new(at, kind)));
                }
                Some(_) => {}
            },
            _ => {}
        }

        entries.push(DeviceEntry {
            offset: at,
            entry_type,
            device_id,
            dte: DteSetting::from_bits_retain(bytes[3]),
            kind,
        });
        at += length;
    }
    let error = open.map(|range| unclosed(&range));
    (entries, error)
}

fn truncated(at: usize, entry_type: u8, needed: usize, remaining: usize) -> IvrsError {
    IvrsError::new(
        at,
        IvrsErrorKind::TruncatedEntry {
            entry_type,
            needed,
            remaining,
        },
    )
}

fn unclosed(range: &OpenRange) -> IvrsError {
    IvrsError::new(
        range.offset,
        IvrsErrorKind::RangeStartWithoutEnd {
            entry_type: range.entry_type,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::{String, ToString};
    use alloc::vec;

    fn parse(bytes: &[u8]) -> (Vec<String>, Option<IvrsError>) {
        let (entries, error) = parse_entries(bytes, 0, bytes.len());
        (entries.iter().map(ToString::to_string).collect(), error)
    }

    #[test]
    fn every_known_type_decodes() {
        let mut bytes = vec![
            0x00, 0, 0, 0, // pad
            0x01, 0, 0, 0x01, // all, INITPass
            0x02, 0x10, 0x00, 0x00, // select 00:02.0
            0x42, 0x18, 0x00, 0x00, 0, 0x00, 0x01, 0, // alias-select 00:03.0 -> 01:00.0
            0x46, 0x20, 0x00, 0xC0, 0, 0, 0, 0x80, // ext-select 00:04.0, Lint0|Lint1
            0x47, 0x00, 0x02, 0x00, 0, 0, 0, 0, // ext-range-start 02:00.0
            0x04, 0xFF, 0x02, 0x00, // range-end 02:1f.7
            0x48, 0, 0, 0x17, 0x21, 0xA0, 0x00, 0x02, // special HPET 0x21 @ 00:14.0
            0x05, 0x28, 0x00, 0x00, // unknown 4-byte type
            0x77, 0, 0, 0, 0, 0, 0, 0, // unknown 8-byte type
        ];
        bytes.extend_from_slice(&[0xF0, 0xAD, 0x00, 0x00]);
        bytes.extend_from_slice(b"AMDI0020PNP0C09\0");
        bytes.extend_from_slice(&[2, 3]);
        bytes.extend_from_slice(b"ID0");
        let (entries, error) = parse(&bytes);
        assert_eq!(error, None);
        assert_eq!(
            entries,
            [
                "pad",
                "all [dte INITPass]",
                "select 00:02.0",
                "alias-select 00:03.0 alias 01:00.0",
                "ext-select 00:04.0 ext 0x80000000 [dte Lint0Pass, Lint1Pass]",
                "ext-range-start 02:00.0 ext 0x00000000",
                "range-end 02:1f.7",
                "special HPET 33 source 00:14.0 [dte INITPass, EIntPass, NMIPass, SysMgt 1]",
                "reserved type 0x05 00:05.0",
                "reserved type 0x77 00:00.0",
                "acpi-hid AMDI0020 cid PNP0C09 uid ID0 00:15.5",
            ]
        );
        let (entries, _) = parse_entries(&bytes, 0, bytes.len());
        assert_eq!(entries.last().map(DeviceEntry::len), Some(25));
        assert!(matches!(
            entries[4].kind,
            DeviceEntryKind::ExtendedSelect { ext } if ext.ats_disabled()
        ));
    }

    #[test]
    fn range_pairing_errors_name_the_offset() {
        let (_, error) = parse(&[0x03, 0, 1, 0, 0x02, 0, 0, 0]);
        assert_eq!(
            error,
            Some(IvrsError::new(
                0,
                IvrsErrorKind::RangeStartWithoutEnd { entry_type: 3 }
            ))
        );
        let (entries, error) = parse(&[0x02, 0, 0, 0, 0x04, 0xff, 1, 0]);
        assert_eq!(entries.len(), 1);
        assert_eq!(
            error,
            Some(IvrsError::new(4, IvrsErrorKind::RangeEndWithoutStart))
        );
        let (_, error) = parse(&[0x03, 0, 2, 0, 0x04, 0xff, 1, 0]);
        assert_eq!(
            error,
            Some(IvrsError::new(
                4,
                IvrsErrorKind::RangeEndBeforeStart {
                    start: 0x200,
                    end: 0x1ff
                }
            ))
        );
        let (_, error) = parse(&[0x03, 0, 2, 0, 0x43, 0, 3, 0, 0, 0, 3, 0]);
        assert_eq!(
            error,
            Some(IvrsError::new(
                0,
                IvrsErrorKind::RangeStartWithoutEnd { entry_type: 3 }
            ))
        );
    }

    #[test]
    fn sizes_come_from_the_type() {
        let (entries, error) = parse(&[0x42, 0, 0, 0]);
        assert!(entries.is_empty());
        assert_eq!(
            error.map(|e| e.kind),
            Some(IvrsErrorKind::TruncatedEntry {
                entry_type: 0x42,
                needed: 8,
                remaining: 4
            })
        );
        let (_, error) = parse(&[0x80, 0, 0, 0]);
        assert_eq!(
            error,
            Some(IvrsError::new(
                0,
                IvrsErrorKind::UnknownVariableEntry { entry_type: 0x80 }
            ))
        );
        let mut hid = vec![0xF0; 22];
        hid[21] = 200;
        let (_, error) = parse(&hid);
        assert_eq!(
            error.map(|e| e.kind),
            Some(IvrsErrorKind::TruncatedEntry {
                entry_type: 0xF0,
                needed: 222,
                remaining: 22
            })
        );
        let (_, error) = parse(&[0xF0; 21]);
        assert_eq!(
            error.map(|e| e.kind),
            Some(IvrsErrorKind::TruncatedEntry {
                entry_type: 0xF0,
                needed: 22,
                remaining: 21
            })
        );
    }

    #[test]
    fn dte_setting_words() {
        assert_eq!(DteSetting::empty().to_string(), "none");
        let all = DteSetting::from_bits_retain(0xFF);
        assert_eq!(all.sys_mgt(), 3);
        assert_eq!(
            all.to_string(),
            "INITPass, EIntPass, NMIPass, SysMgt 3, Lint0Pass, Lint1Pass, reserved bit 3"
        );
    }
}
