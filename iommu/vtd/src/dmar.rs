//! The ACPI DMAR table ("DMA Remapping Reporting", VT-d spec chapter 8), parsed.
//!
//! Firmware describes Intel's remapping hardware in one ACPI table: a 48-byte header
//! (the standard 36-byte ACPI header, the host address width, flags, 10 reserved bytes)
//! followed by a list of remapping structures, each `type: u16, length: u16, ...`:
//!
//! | type | structure | what it says |
//! |------|-----------|--------------|
//! | 0 | [`Drhd`] | one remapping unit: register base, segment, the devices it translates |
//! | 1 | [`Rmrr`] | memory that devices keep DMA-ing into behind the OS's back (USB legacy, GPUs) |
//! | 2 | [`Atsr`] | root ports below which devices may use ATS (device-side IOTLBs) |
//! | 3 | [`Rhsa`] | the NUMA proximity domain of a unit |
//! | 4 | [`Andd`] | an ACPI namespace device (not PCI) that issues DMA |
//! | 5 | [`Satc`] | root-complex integrated devices with ATS requirements |
//!
//! DRHD, RMRR, ATSR and SATC end with [`DeviceScope`]s (`type: u8, length: u8, ...,
//! start bus, path of (device, function) hops`) naming the devices they apply to.
//!
//! The table comes from firmware, so it is hostile input: a broken BIOS (or a malicious
//! one) can put anything there. The parser is bounds-checked everywhere, never panics,
//! and every loop advances by a length it has checked to be at least the entry's fixed
//! size, so it terminates on any input. Anything structurally wrong (a length that is
//! zero, too short, runs past its container, an odd path, a bad checksum) rejects the
//! whole table with a [`DmarError`] naming the offset: a table that lies about one
//! length cannot be trusted about the rest, and an IOMMU set up from half a table is
//! worse than none (it looks like protection). Unknown structure types are skipped
//! by their (checked) length and counted, as the spec asks for forward compatibility;
//! unknown device-scope types are kept as [`ScopeType::Unknown`].
//!
//! Nothing here looks at the PCI topology: scopes are kept as firmware wrote them.
//! [`crate::scope`] resolves them against the live bus tree.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use bitflags::bitflags;

/// The table's signature.
pub const SIGNATURE: [u8; 4] = *b"DMAR";

/// The DMAR header: 36-byte ACPI header, host address width, flags, 10 reserved bytes.
pub const HEADER_LEN: usize = 48;

/// Every remapping structure starts with `type: u16, length: u16`.
pub const STRUCTURE_HEADER_LEN: usize = 4;

/// A device scope's fixed part (type, length, flags, reserved, enumeration id, start bus).
pub const SCOPE_HEADER_LEN: usize = 6;

/// The shortest valid device scope: the fixed part and one (device, function) hop.
pub const MIN_SCOPE_LEN: usize = SCOPE_HEADER_LEN + 2;

/// Offsets of the header fields the parser checks.
mod header_offset {
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 9;
    pub const HOST_ADDRESS_WIDTH: usize = 36;
}

bitflags! {
    /// Flags of the DMAR header (byte 37).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct DmarFlags: u8 {
        /// INTR_REMAP: the platform supports interrupt remapping.
        const INTR_REMAP = 1 << 0;
        /// X2APIC_OPT_OUT: firmware asks the OS not to enable x2APIC mode.
        const X2APIC_OPT_OUT = 1 << 1;
        /// DMA_CTRL_PLATFORM_OPT_IN: firmware set up DMA protection (e.g. for
        /// Thunderbolt) and asks the OS to keep the IOMMU on.
        const DMA_CTRL_PLATFORM_OPT_IN = 1 << 2;
    }
}

bitflags! {
    /// Flags of a DRHD.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct DrhdFlags: u8 {
        /// INCLUDE_PCI_ALL: the unit translates every PCI device of its segment that no
        /// other unit's scope names. Its own scopes then list only IOAPICs and HPETs
        /// (and ACPI namespace devices).
        const INCLUDE_PCI_ALL = 1 << 0;
    }
}

bitflags! {
    /// Flags of an ATSR.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct AtsrFlags: u8 {
        /// ALL_PORTS: every root port of the segment supports ATS (the scopes are then
        /// empty).
        const ALL_PORTS = 1 << 0;
    }
}

bitflags! {
    /// Flags of a SATC.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct SatcFlags: u8 {
        /// ATC_REQUIRED: the listed devices need their device-TLB enabled to work.
        const ATC_REQUIRED = 1 << 0;
    }
}

/// The remapping structure types this parser knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StructureType {
    /// 0: DMA Remapping Hardware Unit Definition.
    Drhd,
    /// 1: Reserved Memory Region Reporting.
    Rmrr,
    /// 2: Root Port ATS Capability Reporting.
    Atsr,
    /// 3: Remapping Hardware Static Affinity.
    Rhsa,
    /// 4: ACPI Name-space Device Declaration.
    Andd,
    /// 5: SoC Integrated Address Translation Cache.
    Satc,
    /// Any other type: skipped by its length.
    Unknown(u16),
}

impl StructureType {
    /// The type for a raw `type` field.
    pub const fn from_raw(raw: u16) -> Self {
        match raw {
            0 => Self::Drhd,
            1 => Self::Rmrr,
            2 => Self::Atsr,
            3 => Self::Rhsa,
            4 => Self::Andd,
            5 => Self::Satc,
            other => Self::Unknown(other),
        }
    }

    /// The raw `type` field.
    pub const fn raw(self) -> u16 {
        match self {
            Self::Drhd => 0,
            Self::Rmrr => 1,
            Self::Atsr => 2,
            Self::Rhsa => 3,
            Self::Andd => 4,
            Self::Satc => 5,
            Self::Unknown(other) => other,
        }
    }

    /// Length of the structure's fixed part: a smaller `length` field is an error.
    pub const fn min_length(self) -> usize {
        match self {
            Self::Drhd => 16,
            Self::Rmrr => 24,
            Self::Atsr | Self::Andd | Self::Satc => 8,
            Self::Rhsa => 20,
            Self::Unknown(_) => STRUCTURE_HEADER_LEN,
        }
    }
}

impl fmt::Display for StructureType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Drhd => f.write_str("DRHD"),
            Self::Rmrr => f.write_str("RMRR"),
            Self::Atsr => f.write_str("ATSR"),
            Self::Rhsa => f.write_str("RHSA"),
            Self::Andd => f.write_str("ANDD"),
            Self::Satc => f.write_str("SATC"),
            Self::Unknown(raw) => write!(f, "structure type {raw:#x}"),
        }
    }
}

/// What a device scope names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScopeType {
    /// 1: a PCI endpoint function.
    Endpoint,
    /// 2: a PCI-to-PCI bridge and everything below it.
    Bridge,
    /// 3: an I/O APIC (enumeration id = its APIC id); the path gives its source id.
    IoApic,
    /// 4: an HPET block (enumeration id = its number); the path gives its source id.
    Hpet,
    /// 5: an ACPI namespace device (enumeration id = the ANDD device number).
    AcpiNamespace,
    /// Any other type: kept, never used.
    Unknown(u8),
}

impl ScopeType {
    /// The type for a raw `type` field.
    pub const fn from_raw(raw: u8) -> Self {
        match raw {
            1 => Self::Endpoint,
            2 => Self::Bridge,
            3 => Self::IoApic,
            4 => Self::Hpet,
            5 => Self::AcpiNamespace,
            other => Self::Unknown(other),
        }
    }

    /// The raw `type` field.
    pub const fn raw(self) -> u8 {
        match self {
            Self::Endpoint => 1,
            Self::Bridge => 2,
            Self::IoApic => 3,
            Self::Hpet => 4,
            Self::AcpiNamespace => 5,
            Self::Unknown(other) => other,
        }
    }
}

impl fmt::Display for ScopeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Endpoint => f.write_str("endpoint"),
            Self::Bridge => f.write_str("bridge"),
            Self::IoApic => f.write_str("ioapic"),
            Self::Hpet => f.write_str("hpet"),
            Self::AcpiNamespace => f.write_str("acpi-namespace"),
            Self::Unknown(raw) => write!(f, "scope type {raw:#x}"),
        }
    }
}

/// One hop of a device-scope path: a (device, function) on the current bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PathEntry {
    pub device: u8,
    pub function: u8,
}

/// A device scope as firmware wrote it.
///
/// The path is resolved by starting at `start_bus`: every hop but the last names a
/// bridge whose secondary bus is where the next hop is looked up. Bus numbers below the
/// start bus are thus never written in the table, which keeps it valid whatever bus
/// numbers the bridges get (see [`crate::scope`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceScope {
    /// Offset of the scope in the table.
    pub offset: usize,
    pub scope_type: ScopeType,
    /// Byte 2 (reserved before VT-d 3.x; flags about PASID and ATC since). Kept raw.
    pub flags: u8,
    /// IOAPIC id, HPET number or ANDD device number; 0 for PCI scopes.
    pub enumeration_id: u8,
    pub start_bus: u8,
    /// At least one hop (the parser rejects empty paths).
    pub path: Vec<PathEntry>,
}

/// `endpoint 00:[1f.2]`, `bridge 00:[02.0 00.0]`: the type, start bus and path hops.
impl fmt::Display for DeviceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:02x}:[", self.scope_type, self.start_bus)?;
        for (index, hop) in self.path.iter().enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{:02x}.{:x}", hop.device, hop.function)?;
        }
        f.write_str("]")
    }
}

/// DMA Remapping Hardware Unit Definition: one remapping unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drhd {
    /// Offset of the structure in the table.
    pub offset: usize,
    pub flags: DrhdFlags,
    /// Size field: the register set is 2^(bits 3:0) 4 KiB pages (0 in older tables:
    /// one page). Bits 7:4 are reserved.
    pub size: u8,
    /// PCI segment whose devices the unit translates.
    pub segment: u16,
    /// Physical address of the register set (non-zero, 4 KiB aligned: checked).
    pub register_base: u64,
    pub scopes: Vec<DeviceScope>,
}

impl Drhd {
    /// Whether the unit translates every device of its segment no other unit claims.
    pub fn include_pci_all(&self) -> bool {
        self.flags.contains(DrhdFlags::INCLUDE_PCI_ALL)
    }

    /// Size of the register set in bytes: 4 KiB << size (bits 3:0 of the size field).
    pub fn register_size(&self) -> u64 {
        4096u64 << (self.size & 0x0f)
    }
}

/// Reserved Memory Region Reporting: `base..=limit` must stay identity-mapped for the
/// scoped devices, which firmware lets DMA there (USB keyboard emulation, GPU stolen
/// memory) even after the OS took over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rmrr {
    pub offset: usize,
    pub segment: u16,
    /// First byte (4 KiB aligned per the spec; not enforced here).
    pub base: u64,
    /// Last byte (inclusive; `limit + 1` 4 KiB aligned per the spec).
    pub limit: u64,
    pub scopes: Vec<DeviceScope>,
}

/// Root Port ATS Capability Reporting: which root ports let devices below them use
/// Address Translation Services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Atsr {
    pub offset: usize,
    pub flags: AtsrFlags,
    pub segment: u16,
    /// Root ports (bridge scopes); empty when `ALL_PORTS` is set.
    pub scopes: Vec<DeviceScope>,
}

impl Atsr {
    pub fn all_ports(&self) -> bool {
        self.flags.contains(AtsrFlags::ALL_PORTS)
    }
}

/// Remapping Hardware Static Affinity: the NUMA node of a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rhsa {
    pub offset: usize,
    /// Register base of the DRHD this applies to.
    pub register_base: u64,
    pub proximity_domain: u32,
}

/// ACPI Name-space Device Declaration: names an ACPI device that issues DMA; a scope
/// of type [`ScopeType::AcpiNamespace`] with the same device number says which unit
/// translates it and which source id it uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Andd {
    pub offset: usize,
    pub device_number: u8,
    /// The object path, e.g. `\_SB.PCI0.I2C0` (up to the NUL; non-ASCII replaced).
    pub object_name: String,
}

/// SoC Integrated Address Translation Cache: root-complex integrated devices whose
/// device-TLB the OS may (or, with `ATC_REQUIRED`, must) enable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Satc {
    pub offset: usize,
    pub flags: SatcFlags,
    pub segment: u16,
    pub scopes: Vec<DeviceScope>,
}

impl Satc {
    pub fn atc_required(&self) -> bool {
        self.flags.contains(SatcFlags::ATC_REQUIRED)
    }
}

/// The whole DMAR table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dmar {
    pub revision: u8,
    pub oem_id: [u8; 6],
    pub oem_table_id: [u8; 8],
    pub oem_revision: u32,
    /// Host address width in bits: the header's HAW field + 1 (the most physical
    /// address bits DMA can reach). Checked to be 12..=64.
    pub host_address_width: u8,
    pub flags: DmarFlags,
    /// The DRHDs, in table order (unit `dmarN` is `units[N]`).
    pub units: Vec<Drhd>,
    pub rmrrs: Vec<Rmrr>,
    pub atsrs: Vec<Atsr>,
    pub rhsas: Vec<Rhsa>,
    pub andds: Vec<Andd>,
    pub satcs: Vec<Satc>,
    /// Structures of an unknown type, skipped.
    pub unknown_structures: usize,
}

impl Dmar {
    /// Parses a whole DMAR table, header included. `table` must be exactly the table:
    /// its length field has to equal `table.len()`.
    pub fn parse(table: &[u8]) -> Result<Self, DmarError> {
        parse(table)
    }
}

/// Which kind of entry an error is about, when its type could not be read yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Structure,
    DeviceScope,
}

/// The entry an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Entry {
    Structure(StructureType),
    DeviceScope(ScopeType),
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Structure(kind) => write!(f, "{kind}"),
            Entry::DeviceScope(kind) => write!(f, "{kind} device scope"),
        }
    }
}

/// What is wrong with a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DmarErrorKind {
    /// Shorter than the 48-byte DMAR header.
    TruncatedHeader {
        length: usize,
    },
    WrongSignature {
        found: [u8; 4],
    },
    /// The header's length field disagrees with the bytes given.
    LengthMismatch {
        declared: u32,
        actual: usize,
    },
    /// The bytes do not sum to zero (mod 256); `sum` is what they sum to.
    BadChecksum {
        sum: u8,
    },
    /// HAW + 1 outside 12..=64 bits (Linux rejects below 12 too).
    BadHostAddressWidth {
        bits: u16,
    },
    /// Fewer bytes left than an entry header (4 for a structure, 2 for a scope).
    TruncatedEntryHeader {
        entry: EntryKind,
        remaining: usize,
    },
    ZeroLength {
        entry: Entry,
    },
    /// Length below the entry's fixed part.
    TooShort {
        entry: Entry,
        length: usize,
        minimum: usize,
    },
    /// Length runs past the end of the table (or of the structure holding the scope).
    Overrun {
        entry: Entry,
        length: usize,
        available: usize,
    },
    /// A device scope whose path is not made of whole (device, function) pairs.
    OddPathLength {
        scope_type: ScopeType,
        length: usize,
    },
    /// An ANDD object name without its terminating NUL (Linux rejects the table too).
    AnddNameNotTerminated {
        device_number: u8,
    },
    /// A DRHD register base that is zero or not 4 KiB aligned.
    BadRegisterBase {
        base: u64,
    },
}

/// Why a table was rejected, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmarError {
    /// Byte offset, from the start of the table, of the field at fault: 0 for the
    /// signature and a short header, 4 for the length, 9 for the checksum, 36 for the
    /// host address width; for entries, the offset of their length field (structure
    /// start + 2, scope start + 1), of the entry itself for a truncated entry header,
    /// of the name for an ANDD and of the register base for a DRHD.
    pub offset: usize,
    pub kind: DmarErrorKind,
}

impl DmarError {
    const fn new(offset: usize, kind: DmarErrorKind) -> Self {
        Self { offset, kind }
    }
}

impl fmt::Display for DmarErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TruncatedHeader { length } => write!(
                f,
                "table is {length} bytes, shorter than the {HEADER_LEN}-byte DMAR header"
            ),
            Self::WrongSignature { found } => {
                write!(f, "signature is {:?}, not \"DMAR\"", Ascii(found))
            }
            Self::LengthMismatch { declared, actual } => write!(
                f,
                "length field says {declared} bytes but the table is {actual} bytes"
            ),
            Self::BadChecksum { sum } => {
                write!(f, "bad checksum: the bytes sum to {sum:#04x}, not 0")
            }
            Self::BadHostAddressWidth { bits } => {
                write!(f, "host address width {bits} bits is outside 12..=64")
            }
            Self::TruncatedEntryHeader { entry, remaining } => {
                let (what, needed) = match entry {
                    EntryKind::Structure => ("structure", STRUCTURE_HEADER_LEN),
                    EntryKind::DeviceScope => ("device scope", 2),
                };
                write!(
                    f,
                    "{remaining} trailing bytes, too few for a {what} header ({needed} bytes)"
                )
            }
            Self::ZeroLength { entry } => write!(f, "{entry} length is 0"),
            Self::TooShort {
                entry,
                length,
                minimum,
            } => write!(
                f,
                "{entry} length {length} is shorter than its fixed part ({minimum} bytes)"
            ),
            Self::Overrun {
                entry,
                length,
                available,
            } => write!(
                f,
                "{entry} length {length} runs past the end ({available} bytes left)"
            ),
            Self::OddPathLength { scope_type, length } => write!(
                f,
                "{scope_type} device scope length {length} leaves a path of odd length"
            ),
            Self::AnddNameNotTerminated { device_number } => write!(
                f,
                "ANDD device {device_number}: object name is not NUL-terminated"
            ),
            Self::BadRegisterBase { base } => write!(
                f,
                "DRHD register base {base:#x} is zero or not 4 KiB aligned"
            ),
        }
    }
}

impl fmt::Display for DmarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DMAR offset {:#x}: {}", self.offset, self.kind)
    }
}

impl core::error::Error for DmarError {}

/// Prints bytes as ASCII with escapes (for signatures).
struct Ascii<'a>(&'a [u8]);

impl fmt::Debug for Ascii<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for byte in self.0 {
            write!(f, "{}", byte.escape_ascii())?;
        }
        f.write_str("\"")
    }
}

/// `N` bytes at `at`, or `None` past the end (never panics, even on overflow).
fn array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn le16(bytes: [u8; 2]) -> u16 {
    u16::from_le_bytes(bytes)
}

/// Parses a whole DMAR table, header included. See [`Dmar::parse`].
pub fn parse(table: &[u8]) -> Result<Dmar, DmarError> {
    let mut dmar = parse_header(table)?;
    let mut offset = HEADER_LEN;
    // Each iteration either returns or advances `offset` by a length that is at least
    // STRUCTURE_HEADER_LEN and fits in the table: the loop ends.
    while offset < table.len() {
        let remaining = table.len() - offset;
        let Some([t0, t1, l0, l1]) = array::<4>(table, offset) else {
            return Err(DmarError::new(
                offset,
                DmarErrorKind::TruncatedEntryHeader {
                    entry: EntryKind::Structure,
                    remaining,
                },
            ));
        };
        let kind = StructureType::from_raw(le16([t0, t1]));
        let length = usize::from(le16([l0, l1]));
        let body = checked_entry(
            table,
            offset,
            offset + 2,
            length,
            Entry::Structure(kind),
            kind.min_length(),
        )?;
        match kind {
            StructureType::Drhd => dmar.units.push(parse_drhd(body, offset)?),
            StructureType::Rmrr => dmar.rmrrs.push(parse_rmrr(body, offset)?),
            StructureType::Atsr => dmar.atsrs.push(parse_atsr(body, offset)?),
            StructureType::Rhsa => dmar.rhsas.push(parse_rhsa(body, offset)?),
            StructureType::Andd => dmar.andds.push(parse_andd(body, offset)?),
            StructureType::Satc => dmar.satcs.push(parse_satc(body, offset)?),
            StructureType::Unknown(_) => dmar.unknown_structures += 1,
        }
        offset += length;
    }
    Ok(dmar)
}

/// Checks an entry's length (non-zero, at least `minimum`, within `container`) and
/// returns its bytes. `start` is the entry's offset in `container`; `length_at` the
/// absolute offset of its length field (for errors).
fn checked_entry(
    container: &[u8],
    start: usize,
    length_at: usize,
    length: usize,
    entry: Entry,
    minimum: usize,
) -> Result<&[u8], DmarError> {
    let available = container.len().saturating_sub(start);
    let kind = if length == 0 {
        DmarErrorKind::ZeroLength { entry }
    } else if length < minimum {
        DmarErrorKind::TooShort {
            entry,
            length,
            minimum,
        }
    } else if length > available {
        DmarErrorKind::Overrun {
            entry,
            length,
            available,
        }
    } else {
        return container.get(start..start + length).ok_or(DmarError::new(
            length_at,
            DmarErrorKind::Overrun {
                entry,
                length,
                available,
            },
        ));
    };
    Err(DmarError::new(length_at, kind))
}

fn parse_header(table: &[u8]) -> Result<Dmar, DmarError> {
    let truncated = DmarError::new(
        0,
        DmarErrorKind::TruncatedHeader {
            length: table.len(),
        },
    );
    let signature = array::<4>(table, 0).ok_or_else(|| truncated.clone())?;
    if signature != SIGNATURE {
        return Err(DmarError::new(
            0,
            DmarErrorKind::WrongSignature { found: signature },
        ));
    }
    let header = array::<HEADER_LEN>(table, 0).ok_or(truncated)?;
    let field = |at: usize| array::<4>(&header, at).unwrap_or_default();

    let declared = u32::from_le_bytes(field(header_offset::LENGTH));
    if usize::try_from(declared) != Ok(table.len()) {
        return Err(DmarError::new(
            header_offset::LENGTH,
            DmarErrorKind::LengthMismatch {
                declared,
                actual: table.len(),
            },
        ));
    }
    let sum = table.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte));
    if sum != 0 {
        return Err(DmarError::new(
            header_offset::CHECKSUM,
            DmarErrorKind::BadChecksum { sum },
        ));
    }
    let [.., haw, flags, _, _, _, _, _, _, _, _, _, _] = header;
    let bits = u16::from(haw) + 1;
    if !(12..=64).contains(&bits) {
        return Err(DmarError::new(
            header_offset::HOST_ADDRESS_WIDTH,
            DmarErrorKind::BadHostAddressWidth { bits },
        ));
    }
    Ok(Dmar {
        revision: header[8],
        oem_id: array(&header, 10).unwrap_or_default(),
        oem_table_id: array(&header, 16).unwrap_or_default(),
        oem_revision: u32::from_le_bytes(field(24)),
        host_address_width: haw + 1,
        flags: DmarFlags::from_bits_retain(flags),
        units: Vec::new(),
        rmrrs: Vec::new(),
        atsrs: Vec::new(),
        rhsas: Vec::new(),
        andds: Vec::new(),
        satcs: Vec::new(),
        unknown_structures: 0,
    })
}

/// The error for a structure whose fixed part is missing (unreachable after
/// [`checked_entry`], but returned rather than assumed).
fn short(body: &[u8], at: usize, kind: StructureType) -> DmarError {
    DmarError::new(
        at + 2,
        DmarErrorKind::TooShort {
            entry: Entry::Structure(kind),
            length: body.len(),
            minimum: kind.min_length(),
        },
    )
}

fn parse_drhd(body: &[u8], at: usize) -> Result<Drhd, DmarError> {
    let [
        _,
        _,
        _,
        _,
        flags,
        size,
        s0,
        s1,
        b0,
        b1,
        b2,
        b3,
        b4,
        b5,
        b6,
        b7,
    ] = array::<16>(body, 0).ok_or_else(|| short(body, at, StructureType::Drhd))?;
    let register_base = u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7]);
    if register_base == 0 || register_base % 4096 != 0 {
        return Err(DmarError::new(
            at + 8,
            DmarErrorKind::BadRegisterBase {
                base: register_base,
            },
        ));
    }
    Ok(Drhd {
        offset: at,
        flags: DrhdFlags::from_bits_retain(flags),
        size,
        segment: le16([s0, s1]),
        register_base,
        scopes: parse_scopes(body, 16, at)?,
    })
}

fn parse_rmrr(body: &[u8], at: usize) -> Result<Rmrr, DmarError> {
    let fixed = array::<24>(body, 0).ok_or_else(|| short(body, at, StructureType::Rmrr))?;
    let [_, _, _, _, _, _, s0, s1, ..] = fixed;
    Ok(Rmrr {
        offset: at,
        segment: le16([s0, s1]),
        base: u64::from_le_bytes(array(&fixed, 8).unwrap_or_default()),
        limit: u64::from_le_bytes(array(&fixed, 16).unwrap_or_default()),
        scopes: parse_scopes(body, 24, at)?,
    })
}

fn parse_atsr(body: &[u8], at: usize) -> Result<Atsr, DmarError> {
    let [_, _, _, _, flags, _, s0, s1] =
        array::<8>(body, 0).ok_or_else(|| short(body, at, StructureType::Atsr))?;
    Ok(Atsr {
        offset: at,
        flags: AtsrFlags::from_bits_retain(flags),
        segment: le16([s0, s1]),
        scopes: parse_scopes(body, 8, at)?,
    })
}

fn parse_rhsa(body: &[u8], at: usize) -> Result<Rhsa, DmarError> {
    let fixed = array::<20>(body, 0).ok_or_else(|| short(body, at, StructureType::Rhsa))?;
    Ok(Rhsa {
        offset: at,
        register_base: u64::from_le_bytes(array(&fixed, 8).unwrap_or_default()),
        proximity_domain: u32::from_le_bytes(array(&fixed, 16).unwrap_or_default()),
    })
}

fn parse_andd(body: &[u8], at: usize) -> Result<Andd, DmarError> {
    let [_, _, _, _, _, _, _, device_number] =
        array::<8>(body, 0).ok_or_else(|| short(body, at, StructureType::Andd))?;
    let name = body.get(8..).unwrap_or_default();
    let Some(end) = name.iter().position(|&byte| byte == 0) else {
        return Err(DmarError::new(
            at + 8,
            DmarErrorKind::AnddNameNotTerminated { device_number },
        ));
    };
    Ok(Andd {
        offset: at,
        device_number,
        object_name: String::from_utf8_lossy(name.get(..end).unwrap_or_default()).into_owned(),
    })
}

fn parse_satc(body: &[u8], at: usize) -> Result<Satc, DmarError> {
    let [_, _, _, _, flags, _, s0, s1] =
        array::<8>(body, 0).ok_or_else(|| short(body, at, StructureType::Satc))?;
    Ok(Satc {
        offset: at,
        flags: SatcFlags::from_bits_retain(flags),
        segment: le16([s0, s1]),
        scopes: parse_scopes(body, 8, at)?,
    })
}

/// Parses the device scopes filling `structure[first..]`; `base` is the structure's
/// offset in the table. The scopes must fill the rest of the structure exactly.
fn parse_scopes(
    structure: &[u8],
    first: usize,
    base: usize,
) -> Result<Vec<DeviceScope>, DmarError> {
    let mut scopes = Vec::new();
    let mut pos = first;
    // Each iteration returns or advances by a checked length >= MIN_SCOPE_LEN.
    while pos < structure.len() {
        let Some([raw_type, length]) = array::<2>(structure, pos) else {
            return Err(DmarError::new(
                base + pos,
                DmarErrorKind::TruncatedEntryHeader {
                    entry: EntryKind::DeviceScope,
                    remaining: structure.len() - pos,
                },
            ));
        };
        let scope_type = ScopeType::from_raw(raw_type);
        let length = usize::from(length);
        let bytes = checked_entry(
            structure,
            pos,
            base + pos + 1,
            length,
            Entry::DeviceScope(scope_type),
            MIN_SCOPE_LEN,
        )?;
        if (length - SCOPE_HEADER_LEN) % 2 != 0 {
            return Err(DmarError::new(
                base + pos + 1,
                DmarErrorKind::OddPathLength { scope_type, length },
            ));
        }
        let [_, _, flags, _, enumeration_id, start_bus] =
            array::<SCOPE_HEADER_LEN>(bytes, 0).unwrap_or_default();
        let path = bytes
            .get(SCOPE_HEADER_LEN..)
            .unwrap_or_default()
            .chunks_exact(2)
            .filter_map(|hop| <[u8; 2]>::try_from(hop).ok())
            .map(|[device, function]| PathEntry { device, function })
            .collect();
        scopes.push(DeviceScope {
            offset: base + pos,
            scope_type,
            flags,
            enumeration_id,
            start_bus,
            path,
        });
        pos += length;
    }
    Ok(scopes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table with the given structures and a correct length and checksum.
    fn table(structures: &[&[u8]]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"DMAR");
        bytes.extend_from_slice(&[0; 4]);
        bytes.push(1);
        bytes.push(0);
        bytes.extend_from_slice(b"BOCHS BXPC    ");
        bytes.extend_from_slice(&[0; 12]);
        bytes.push(38);
        bytes.push(1);
        bytes.extend_from_slice(&[0; 10]);
        for structure in structures {
            bytes.extend_from_slice(structure);
        }
        let length = bytes.len() as u32;
        bytes[4..8].copy_from_slice(&length.to_le_bytes());
        let sum = bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        bytes[9] = 0u8.wrapping_sub(sum);
        bytes
    }

    #[test]
    fn header_only_table_is_empty() {
        let dmar = parse(&table(&[])).unwrap();
        assert_eq!(dmar.host_address_width, 39);
        assert_eq!(dmar.flags, DmarFlags::INTR_REMAP);
        assert_eq!(&dmar.oem_id, b"BOCHS ");
        assert_eq!(&dmar.oem_table_id, b"BXPC    ");
        assert!(dmar.units.is_empty());
    }

    #[test]
    fn every_structure_type_parses() {
        let rmrr = [
            1, 0, 32, 0, 0, 0, 0, 0, // type, length, reserved, segment
            0, 0, 0x0e, 0, 0, 0, 0, 0, // base 0xe0000
            0xff, 0x3f, 0x0e, 0, 0, 0, 0, 0, // limit 0xe3fff
            1, 8, 0, 0, 0, 0, 0x14, 0, // endpoint 00:14.0
        ];
        let rhsa = [
            3, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0xd9, 0xfe, 0, 0, 0, 0, 2, 0, 0, 0,
        ];
        let andd = [4, 0, 13, 0, 0, 0, 0, 7, b'\\', b'_', b'S', b'B', 0];
        let satc = [5, 0, 16, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0, 2, 0];
        let dmar = parse(&table(&[&rmrr, &rhsa, &andd, &satc])).unwrap();
        assert_eq!(dmar.rmrrs.len(), 1);
        assert_eq!(dmar.rmrrs[0].base, 0xe0000);
        assert_eq!(dmar.rmrrs[0].limit, 0xe3fff);
        assert_eq!(
            dmar.rmrrs[0].scopes[0].path,
            [PathEntry {
                device: 0x14,
                function: 0
            }]
        );
        assert_eq!(dmar.rhsas[0].register_base, 0xfed9_0000);
        assert_eq!(dmar.rhsas[0].proximity_domain, 2);
        assert_eq!(dmar.andds[0].device_number, 7);
        assert_eq!(dmar.andds[0].object_name, "\\_SB");
        assert!(dmar.satcs[0].atc_required());
        assert_eq!(dmar.satcs[0].scopes[0].scope_type, ScopeType::Endpoint);
    }

    #[test]
    fn andd_without_nul_is_rejected() {
        let andd = [4, 0, 12, 0, 0, 0, 0, 7, b'\\', b'_', b'S', b'B'];
        let error = parse(&table(&[&andd])).unwrap_err();
        assert_eq!(error.offset, HEADER_LEN + 8);
        assert_eq!(
            error.kind,
            DmarErrorKind::AnddNameNotTerminated { device_number: 7 }
        );
    }

    #[test]
    fn drhd_register_base_must_be_page_aligned_and_non_zero() {
        for base in [0u64, 0xfed9_0800] {
            let mut drhd = vec![0, 0, 16, 0, 0, 0, 0, 0];
            drhd.extend_from_slice(&base.to_le_bytes());
            let error = parse(&table(&[&drhd])).unwrap_err();
            assert_eq!(error.offset, HEADER_LEN + 8);
            assert_eq!(error.kind, DmarErrorKind::BadRegisterBase { base });
        }
    }

    #[test]
    fn scope_without_path_is_too_short() {
        let mut drhd = vec![0, 0, 22, 0, 0, 0, 0, 0];
        drhd.extend_from_slice(&0xfed9_0000u64.to_le_bytes());
        drhd.extend_from_slice(&[1, 6, 0, 0, 0, 0]);
        let error = parse(&table(&[&drhd])).unwrap_err();
        assert_eq!(error.offset, HEADER_LEN + 16 + 1);
        assert_eq!(
            error.kind,
            DmarErrorKind::TooShort {
                entry: Entry::DeviceScope(ScopeType::Endpoint),
                length: 6,
                minimum: 8
            }
        );
    }

    #[test]
    fn trailing_bytes_after_the_last_structure_are_an_error() {
        let error = parse(&table(&[&[9, 0]])).unwrap_err();
        assert_eq!(error.offset, HEADER_LEN);
        assert_eq!(
            error.kind,
            DmarErrorKind::TruncatedEntryHeader {
                entry: EntryKind::Structure,
                remaining: 2
            }
        );
    }

    #[test]
    fn host_address_width_below_12_bits_is_rejected() {
        let mut bytes = table(&[]);
        bytes[36] = 10;
        bytes[9] = bytes[9].wrapping_add(28);
        let error = parse(&bytes).unwrap_err();
        assert_eq!(error.offset, 36);
        assert_eq!(error.kind, DmarErrorKind::BadHostAddressWidth { bits: 11 });
    }

    #[test]
    fn errors_display_offset_and_field() {
        let error = DmarError::new(
            0x32,
            DmarErrorKind::ZeroLength {
                entry: Entry::Structure(StructureType::Drhd),
            },
        );
        assert_eq!(error.to_string(), "DMAR offset 0x32: DRHD length is 0");
        let error = DmarError::new(0, DmarErrorKind::WrongSignature { found: *b"AP\0C" });
        assert_eq!(
            error.to_string(),
            "DMAR offset 0x0: signature is \"AP\\x00C\", not \"DMAR\""
        );
    }
}
