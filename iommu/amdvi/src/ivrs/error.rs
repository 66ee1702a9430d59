//! What can be wrong with an IVRS table, and where.
//!
//! Every error carries the byte offset (from the start of the table) of the field
//! that is wrong, so a boot log line can be checked against a hex dump of the
//! table, and so tests can pin down exactly which check fired.

use core::fmt;

/// A malformed IVRS table: the offset of the offending field and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IvrsError {
    /// Byte offset from the start of the table of the structure or field at fault
    /// (for block and entry errors: the first byte of that block or entry).
    pub offset: usize,
    /// What is wrong there.
    pub kind: IvrsErrorKind,
}

impl IvrsError {
    pub(crate) const fn new(offset: usize, kind: IvrsErrorKind) -> Self {
        Self { offset, kind }
    }
}

/// The kinds of [`IvrsError`]. The names say which field is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IvrsErrorKind {
    /// The slice is shorter than the 48-byte IVRS header (or the length field
    /// claims less than that).
    TableTooShort {
        /// Bytes available (or claimed).
        length: usize,
        /// The least a table can have.
        minimum: usize,
    },
    /// The signature is not `IVRS`.
    WrongSignature {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// The header's length field differs from the size of the table handed in: a
    /// table lying about its size is not trusted at all.
    LengthMismatch {
        /// The header's length field.
        declared: u32,
        /// Bytes actually handed in.
        actual: usize,
    },
    /// The bytes of the table do not add up to zero (mod 256).
    BadChecksum {
        /// What they add up to.
        sum: u8,
    },
    /// Fewer than the 4 bytes of a block header (type, flags, length) remain.
    TruncatedBlockHeader {
        /// Bytes left in the table.
        remaining: usize,
    },
    /// A block's length field is 0: walking on would loop forever.
    ZeroBlockLength {
        /// The block's type byte.
        block_type: u8,
    },
    /// A block's length field is smaller than its type's fixed header.
    ShortBlock {
        /// The block's type byte.
        block_type: u8,
        /// The length field.
        length: u16,
        /// The type's header size.
        minimum: u16,
    },
    /// A block's length field runs past the end of the table.
    BlockOverrun {
        /// The block's type byte.
        block_type: u8,
        /// The length field.
        length: u16,
        /// Bytes left in the table from the block's start.
        remaining: usize,
    },
    /// A device entry does not fit in what is left of its IVHD.
    TruncatedEntry {
        /// The entry's type byte.
        entry_type: u8,
        /// Bytes the entry needs.
        needed: usize,
        /// Bytes left in the IVHD.
        remaining: usize,
    },
    /// A variable-length device entry type (>= 0x80) this parser does not know:
    /// its size is unknowable, so the rest of the IVHD cannot be read.
    UnknownVariableEntry {
        /// The entry's type byte.
        entry_type: u8,
    },
    /// A start-of-range entry (03h, 43h or 47h) not closed by an end-of-range entry
    /// (04h) before another range starts or the IVHD ends. The offset is the start's.
    RangeStartWithoutEnd {
        /// The start entry's type byte.
        entry_type: u8,
    },
    /// An end-of-range entry (04h) with no range open.
    RangeEndWithoutStart,
    /// An end-of-range entry whose device id is below its start's.
    RangeEndBeforeStart {
        /// Device id of the start entry.
        start: u16,
        /// Device id of the end entry.
        end: u16,
    },
    /// An IVMD of type 22h whose end device id (auxiliary data) is below its start.
    IvmdRangeEndBeforeStart {
        /// Start device id.
        start: u16,
        /// End device id.
        end: u16,
    },
    /// An IVMD whose start address plus length wraps around 2^64.
    IvmdAddressOverflow {
        /// Start address field.
        start: u64,
        /// Length field.
        length: u64,
    },
}

impl fmt::Display for IvrsErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IvrsErrorKind::TableTooShort { length, minimum } => write!(
                f,
                "table length {length} is shorter than the {minimum}-byte IVRS header"
            ),
            IvrsErrorKind::WrongSignature { found } => {
                write!(f, "signature is \"{}\", not \"IVRS\"", found.escape_ascii())
            }
            IvrsErrorKind::LengthMismatch { declared, actual } => write!(
                f,
                "header length field says {declared} bytes but the table has {actual}"
            ),
            IvrsErrorKind::BadChecksum { sum } => {
                write!(f, "checksum: table bytes sum to {sum:#04x}, not 0")
            }
            IvrsErrorKind::TruncatedBlockHeader { remaining } => write!(
                f,
                "block header (type, flags, length) needs 4 bytes, {remaining} left"
            ),
            IvrsErrorKind::ZeroBlockLength { block_type } => {
                write!(f, "block type {block_type:#04x}: length field is 0")
            }
            IvrsErrorKind::ShortBlock {
                block_type,
                length,
                minimum,
            } => write!(
                f,
                "block type {block_type:#04x}: length field {length} is below its \
                 {minimum}-byte header"
            ),
            IvrsErrorKind::BlockOverrun {
                block_type,
                length,
                remaining,
            } => write!(
                f,
                "block type {block_type:#04x}: length field {length} runs past the end \
                 of the table ({remaining} bytes left)"
            ),
            IvrsErrorKind::TruncatedEntry {
                entry_type,
                needed,
                remaining,
            } => write!(
                f,
                "device entry type {entry_type:#04x} needs {needed} bytes, \
                 {remaining} left in its IVHD"
            ),
            IvrsErrorKind::UnknownVariableEntry { entry_type } => write!(
                f,
                "unknown variable-length device entry type {entry_type:#04x}: \
                 the rest of this IVHD cannot be read"
            ),
            IvrsErrorKind::RangeStartWithoutEnd { entry_type } => write!(
                f,
                "start-of-range entry (type {entry_type:#04x}) without an end-of-range entry"
            ),
            IvrsErrorKind::RangeEndWithoutStart => {
                f.write_str("end-of-range entry without a start-of-range entry")
            }
            IvrsErrorKind::RangeEndBeforeStart { start, end } => write!(
                f,
                "end-of-range device id {end:#06x} is below its start {start:#06x}"
            ),
            IvrsErrorKind::IvmdRangeEndBeforeStart { start, end } => write!(
                f,
                "IVMD end device id {end:#06x} is below its start {start:#06x}"
            ),
            IvrsErrorKind::IvmdAddressOverflow { start, length } => write!(
                f,
                "IVMD start address {start:#x} + length {length:#x} overflows"
            ),
        }
    }
}

/// `IVRS offset 0x30: block type 0x10: length field is 0`.
impl fmt::Display for IvrsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IVRS offset {:#x}: {}", self.offset, self.kind)
    }
}

impl core::error::Error for IvrsError {}
