//! The ACPI IVRS table ("I/O Virtualization Reporting Structure"), parsed.
//!
//! Firmware describes AMD IOMMUs in one ACPI table: a 48-byte header (the standard
//! 36-byte ACPI header, the IVinfo word and 8 reserved bytes), then a sequence of
//! blocks, each starting with type (1 byte), flags (1 byte) and length (2 bytes):
//!
//! - IVHD (I/O Virtualization Hardware Definition), types 10h, 11h and 40h: one
//!   IOMMU, its register base, PCI function and features, and a list of device
//!   entries naming the requester ids it translates ([`entry`]). Newer firmware
//!   describes each IOMMU several times, once per IVHD type, so older operating
//!   systems that only know type 10h still find it (QEMU 9.0 and later emit 10h
//!   *and* 11h). Software uses the blocks of one type only: see
//!   [`Ivrs::selected_ivhd_type`].
//! - IVMD (I/O Virtualization Memory Definition), types 20h..22h: memory ranges
//!   some devices must keep reaching (unity-mapped) or that are excluded from
//!   translation.
//!
//! The table comes from firmware and is treated as hostile input: every length is
//! checked against the table's end before anything is read, every loop advances by
//! at least 4 bytes, and nothing here panics. Structural faults (header, checksum,
//! block lengths) make [`Ivrs::parse`] fail, because block boundaries can no longer
//! be trusted. Faults inside one IVHD's device-entry list (a truncated entry, an
//! unknown variable-length entry type, an unpaired range) stop the walk of that
//! IVHD only: the entries before the fault are kept and the error is stored in
//! [`Ivhd::entry_error`]. Whoever uses that IVHD must then refuse it, since its
//! device list is incomplete; [`crate::IvrsTopology::new`] does.

pub mod entry;
mod error;

use alloc::vec::Vec;
use core::fmt;

use sluice_pci::PciAddress;

use crate::regs::{ExtendedFeatures, FeatureReporting, IommuInfo, IvhdAttributes, IvhdFlags};
pub use entry::{DeviceEntry, DeviceEntryKind, DteSetting, ExtendedDteSetting, SpecialVariety};
pub use error::{IvrsError, IvrsErrorKind};

/// Bytes of the standard ACPI table header.
pub const ACPI_HEADER_LEN: usize = 36;
/// Bytes before the first block: ACPI header, IVinfo, 8 reserved bytes.
pub const IVRS_HEADER_LEN: usize = 48;
/// Size of an IVMD block.
pub const IVMD_LEN: u16 = 32;
/// The register block an IOMMU decodes without performance counters (Linux's
/// `MMIO_CNTR_CONF_OFFSET`): control registers at 0x0000..0x2000, the
/// head/tail pointers at 0x2000..0x3000.
pub const MMIO_SIZE_BASE: u64 = 0x4000;
/// The register block with the performance counter banks at 0x40000..0x80000
/// (Linux's `MMIO_REG_END_OFFSET`).
pub const MMIO_SIZE_WITH_COUNTERS: u64 = 0x8_0000;

/// The standard ACPI table header as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiHeader {
    /// `IVRS`.
    pub signature: [u8; 4],
    /// Table length in bytes, header included.
    pub length: u32,
    /// IVRS revision: 1 = only IVHD types 10h/11h, 2 = types 10h, 11h and 40h.
    pub revision: u8,
    /// Makes the table's bytes sum to 0.
    pub checksum: u8,
    /// OEM id (`BOCHS ` under QEMU).
    pub oem_id: [u8; 6],
    /// OEM table id (`BXPC    ` under QEMU).
    pub oem_table_id: [u8; 8],
    /// OEM revision.
    pub oem_revision: u32,
    /// Creator id.
    pub creator_id: [u8; 4],
    /// Creator revision.
    pub creator_revision: u32,
}

/// The IVinfo word (offset 36): facts common to all IOMMUs of the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct IvInfo {
    /// The field as read.
    pub raw: u32,
    /// Bit 0, EFRSup: the IVHD 11h/40h EFR images are valid.
    pub efr_sup: bool,
    /// Bit 1, DMA remap support: firmware used the IOMMU for pre-boot DMA
    /// protection (newer spec revisions).
    pub dma_remap_sup: bool,
    /// Bits 7:5, GVAsize: guest virtual address size (2 = 48 bits).
    pub gva_size: u8,
    /// Bits 14:8, PAsize: system physical address bits the IOMMU handles.
    pub pa_size: u8,
    /// Bits 21:15, VAsize: maximum virtual (IOVA) address bits; 0 means unstated
    /// (Linux then assumes 64).
    pub va_size: u8,
    /// Bit 22, HtAtsResv: the HyperTransport ATS-response address range
    /// (0xFD_0000_0000..0xFF_FFFF_FFFF) is reserved and cannot be used as IOVA.
    pub ht_ats_resv: bool,
}

impl IvInfo {
    /// Decodes the raw word.
    pub const fn from_raw(raw: u32) -> Self {
        Self {
            raw,
            efr_sup: raw & 1 != 0,
            dma_remap_sup: raw & 2 != 0,
            gva_size: ((raw >> 5) & 0x7) as u8,
            pa_size: ((raw >> 8) & 0x7F) as u8,
            va_size: ((raw >> 15) & 0x7F) as u8,
            ht_ats_resv: raw & (1 << 22) != 0,
        }
    }
}

/// `PA 40 bits, VA unstated, EFR images valid`.
impl fmt::Display for IvInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PA {} bits, VA ", self.pa_size)?;
        if self.va_size == 0 {
            f.write_str("unstated")?;
        } else {
            write!(f, "{} bits", self.va_size)?;
        }
        if self.gva_size == 2 {
            f.write_str(", GVA 48 bits")?;
        } else if self.gva_size != 0 {
            write!(f, ", GVAsize {}", self.gva_size)?;
        }
        if self.efr_sup {
            f.write_str(", EFR images valid")?;
        }
        if self.dma_remap_sup {
            f.write_str(", pre-boot DMA remapping")?;
        }
        if self.ht_ats_resv {
            f.write_str(", HT ATS range reserved")?;
        }
        Ok(())
    }
}

/// The IVHD types this parser understands, ordered by how much they describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IvhdType {
    /// 10h: 24-byte header with the "IOMMU Feature Reporting" word.
    Type10,
    /// 11h: 40-byte header with the EFR register image.
    Type11,
    /// 40h: like 11h, plus ACPI-HID device entries (F0h).
    Type40,
}

impl IvhdType {
    /// The type byte.
    pub const fn raw(self) -> u8 {
        match self {
            IvhdType::Type10 => 0x10,
            IvhdType::Type11 => 0x11,
            IvhdType::Type40 => 0x40,
        }
    }

    /// The type for a block type byte, if it is an IVHD type this parser knows.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0x10 => Some(IvhdType::Type10),
            0x11 => Some(IvhdType::Type11),
            0x40 => Some(IvhdType::Type40),
            _ => None,
        }
    }

    /// Size of the fixed header, before the device entries.
    pub const fn header_len(self) -> usize {
        match self {
            IvhdType::Type10 => 24,
            IvhdType::Type11 | IvhdType::Type40 => 40,
        }
    }
}

impl fmt::Display for IvhdType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#04x}", self.raw())
    }
}

/// What an IVHD says about the IOMMU's features: the two layouts of offset 20..
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IvhdFeatures {
    /// Type 10h: the "IOMMU Feature Reporting" word.
    Reporting(FeatureReporting),
    /// Types 11h/40h: the attributes word and the EFR register images.
    Efr {
        /// Offset 20: "IOMMU Attributes".
        attributes: IvhdAttributes,
        /// Offset 24: a copy of the Extended Feature Register (MMIO 0x30).
        efr: ExtendedFeatures,
        /// Offset 32: a copy of Extended Feature Register 2 (MMIO 0x1A0); reserved,
        /// and zero, in 11h blocks of tables older than spec revision 3.07.
        efr2: u64,
    },
}

/// One IVHD block: one IOMMU as described by one IVHD type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ivhd {
    /// Offset of the block from the start of the table.
    pub offset: usize,
    /// The block type.
    pub ivhd_type: IvhdType,
    /// Offset 1: control-register settings firmware recommends.
    pub flags: IvhdFlags,
    /// Offset 2: block length, header and entries.
    pub length: u16,
    /// Offset 4: the IOMMU's own PCI function (requester id in [`Self::segment`]).
    pub device_id: u16,
    /// Offset 6: offset of the IOMMU's capability block in its config space.
    pub capability_offset: u16,
    /// Offset 8: physical address of the IOMMU's MMIO registers.
    pub base_address: u64,
    /// Offset 16: the PCI segment whose requester ids the entries name.
    pub segment: u16,
    /// Offset 18: MSI number and HyperTransport unit id.
    pub info: IommuInfo,
    /// Offset 20 onwards: features, in the layout of the block type.
    pub features: IvhdFeatures,
    /// The device entries, in table order (up to [`Self::entry_error`], if any).
    pub entries: Vec<DeviceEntry>,
    /// Why the entry walk stopped early; `None` if every entry was read.
    pub entry_error: Option<IvrsError>,
}

impl Ivhd {
    /// The IOMMU's own PCI function.
    pub const fn iommu_function(&self) -> PciAddress {
        PciAddress::from_bdf(self.segment, self.device_id)
    }

    /// The EFR image (types 11h/40h only).
    pub const fn efr(&self) -> Option<&ExtendedFeatures> {
        match &self.features {
            IvhdFeatures::Efr { efr, .. } => Some(efr),
            IvhdFeatures::Reporting(_) => None,
        }
    }

    /// Whether the block reports performance counters: type 10h by non-zero
    /// PNCounters and PNBanks, types 11h/40h by EFR.PCSup (the rule Linux uses).
    pub const fn has_performance_counters(&self) -> bool {
        match &self.features {
            IvhdFeatures::Reporting(reporting) => reporting.has_performance_counters(),
            IvhdFeatures::Efr { efr, .. } => efr.pc_sup,
        }
    }

    /// How many bytes of registers to map at [`Self::base_address`]: 16 KiB, or
    /// 512 KiB when the performance counter banks (0x40000..0x80000) exist.
    ///
    /// The IVHD does not state a size; the spec defines the registers up to 0x4000
    /// for every IOMMU and the counter banks only with PCSup, so this is what Linux
    /// maps too (`MMIO_CNTR_CONF_OFFSET` / `MMIO_REG_END_OFFSET`).
    pub const fn register_size(&self) -> u64 {
        if self.has_performance_counters() {
            MMIO_SIZE_WITH_COUNTERS
        } else {
            MMIO_SIZE_BASE
        }
    }
}

/// The IVMD block types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IvmdType {
    /// 20h: applies to every peripheral.
    All,
    /// 21h: applies to the peripheral in the device id field.
    Peripheral,
    /// 22h: applies to the device ids from the device id field to the auxiliary
    /// data field, inclusive.
    Range,
}

impl IvmdType {
    /// The type byte.
    pub const fn raw(self) -> u8 {
        match self {
            IvmdType::All => 0x20,
            IvmdType::Peripheral => 0x21,
            IvmdType::Range => 0x22,
        }
    }

    /// The type for a block type byte, if it is an IVMD type.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0x20 => Some(IvmdType::All),
            0x21 => Some(IvmdType::Peripheral),
            0x22 => Some(IvmdType::Range),
            _ => None,
        }
    }
}

bitflags::bitflags! {
    /// The IVMD flags byte.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct IvmdFlags: u8 {
        /// Unity: the range must be identity-mapped for the devices.
        const UNITY = 1 << 0;
        /// IR: the devices may read the range.
        const IR = 1 << 1;
        /// IW: the devices may write the range.
        const IW = 1 << 2;
        /// ExclusionRange: accesses to the range are not translated at all (Linux
        /// treats this as a read/write unity map).
        const EXCLUSION_RANGE = 1 << 3;
    }
}

impl fmt::Display for IvmdFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (flag, name) in [
            (Self::UNITY, "unity"),
            (Self::IR, "read"),
            (Self::IW, "write"),
            (Self::EXCLUSION_RANGE, "exclusion"),
        ] {
            if self.contains(flag) {
                f.write_str(if first { "" } else { ", " })?;
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// One IVMD block: a memory range and the devices it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ivmd {
    /// Offset of the block from the start of the table.
    pub offset: usize,
    /// The block type.
    pub ivmd_type: IvmdType,
    /// Offset 1.
    pub flags: IvmdFlags,
    /// Offset 2: block length (32).
    pub length: u16,
    /// Offset 4: the (first) device id (reserved for 20h).
    pub device_id: u16,
    /// Offset 6: the last device id for 22h (reserved otherwise).
    pub aux_data: u16,
    /// Offset 8: the PCI segment (spec revision 3.07 and later; reserved, 0, before).
    pub segment: u16,
    /// Offset 16: first byte of the range.
    pub start_address: u64,
    /// Offset 24: length of the range in bytes.
    pub memory_length: u64,
}

impl Ivmd {
    /// The requester ids the block applies to.
    pub fn device_ids(&self) -> core::ops::RangeInclusive<u16> {
        match self.ivmd_type {
            IvmdType::All => 0..=u16::MAX,
            IvmdType::Peripheral => self.device_id..=self.device_id,
            IvmdType::Range => self.device_id..=self.aux_data,
        }
    }

    /// One past the last byte of the range (checked at parse time not to wrap).
    pub const fn end_address(&self) -> u64 {
        self.start_address.saturating_add(self.memory_length)
    }

    /// Whether the range must be mapped 1:1 for its devices (unity, or an exclusion
    /// range, which Linux also turns into a read/write unity map).
    pub fn requires_unity_map(&self) -> bool {
        self.flags
            .intersects(IvmdFlags::UNITY | IvmdFlags::EXCLUSION_RANGE)
    }
}

/// A block whose type this parser does not know, skipped by its length field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkippedBlock {
    /// Offset of the block from the start of the table.
    pub offset: usize,
    /// Its type byte.
    pub block_type: u8,
    /// Its length field.
    pub length: u16,
}

/// A parsed IVRS table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ivrs {
    /// The ACPI header.
    pub header: AcpiHeader,
    /// The IVinfo word (offset 36).
    pub iv_info: IvInfo,
    /// The 8 reserved bytes at offset 40.
    pub reserved: [u8; 8],
    /// Every IVHD of a known type, in table order (all types, see
    /// [`Ivrs::selected_ivhd_type`] for which ones describe the system).
    pub ivhds: Vec<Ivhd>,
    /// Every IVMD, in table order.
    pub ivmds: Vec<Ivmd>,
    /// Blocks of unknown types, skipped.
    pub skipped_blocks: Vec<SkippedBlock>,
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn array_at<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut array = [0; N];
    array.copy_from_slice(&bytes[at..at + N]);
    array
}

impl Ivrs {
    /// Parses a whole IVRS table, header included. `bytes` must be exactly the
    /// table: its length field must equal `bytes.len()`.
    ///
    /// # Errors
    /// An [`IvrsError`] naming the offset and field when the header, checksum or a
    /// block's length is wrong. Faults inside an IVHD's entry list do not fail the
    /// parse: see [`Ivhd::entry_error`].
    pub fn parse(bytes: &[u8]) -> Result<Ivrs, IvrsError> {
        let header = parse_header(bytes)?;
        let mut ivrs = Ivrs {
            header,
            iv_info: IvInfo::from_raw(u32_at(bytes, ACPI_HEADER_LEN)),
            reserved: array_at(bytes, 40),
            ivhds: Vec::new(),
            ivmds: Vec::new(),
            skipped_blocks: Vec::new(),
        };
        let mut at = IVRS_HEADER_LEN;
        while at < bytes.len() {
            let remaining = bytes.len() - at;
            if remaining < 4 {
                let kind = IvrsErrorKind::TruncatedBlockHeader { remaining };
                return Err(IvrsError::new(at, kind));
            }
            let block_type = bytes[at];
            let length = u16_at(bytes, at + 2);
            let minimum = block_minimum(block_type);
            if length == 0 {
                let kind = IvrsErrorKind::ZeroBlockLength { block_type };
                return Err(IvrsError::new(at, kind));
            }
            if length < minimum {
                let kind = IvrsErrorKind::ShortBlock {
                    block_type,
                    length,
                    minimum,
                };
                return Err(IvrsError::new(at, kind));
            }
            if usize::from(length) > remaining {
                let kind = IvrsErrorKind::BlockOverrun {
                    block_type,
                    length,
                    remaining,
                };
                return Err(IvrsError::new(at, kind));
            }
            let end = at + usize::from(length);
            if let Some(ivhd_type) = IvhdType::from_raw(block_type) {
                ivrs.ivhds.push(parse_ivhd(bytes, at, end, ivhd_type));
            } else if let Some(ivmd_type) = IvmdType::from_raw(block_type) {
                ivrs.ivmds.push(parse_ivmd(bytes, at, ivmd_type)?);
            } else {
                ivrs.skipped_blocks.push(SkippedBlock {
                    offset: at,
                    block_type,
                    length,
                });
            }
            at = end;
        }
        Ok(ivrs)
    }

    /// The IVHD type that describes the system: like Linux, the most capable type
    /// present among 10h < 11h < 40h. Blocks of the other types describe the same
    /// IOMMUs again (for older software) and are ignored. `None` without IVHDs.
    ///
    /// (Linux's `get_highest_supported_ivhd_type` takes the last type listed for
    /// the first IVHD's IOMMU; for tables that list each IOMMU in ascending type
    /// order, as the spec intends and QEMU does, that is the same type.)
    pub fn selected_ivhd_type(&self) -> Option<IvhdType> {
        self.ivhds.iter().map(|ivhd| ivhd.ivhd_type).max()
    }

    /// The IVHDs of [`Ivrs::selected_ivhd_type`], in table order: one per IOMMU.
    pub fn selected_ivhds(&self) -> impl Iterator<Item = &Ivhd> {
        let selected = self.selected_ivhd_type();
        self.ivhds
            .iter()
            .filter(move |ivhd| Some(ivhd.ivhd_type) == selected)
    }
}

fn parse_header(bytes: &[u8]) -> Result<AcpiHeader, IvrsError> {
    if bytes.len() < IVRS_HEADER_LEN {
        let kind = IvrsErrorKind::TableTooShort {
            length: bytes.len(),
            minimum: IVRS_HEADER_LEN,
        };
        return Err(IvrsError::new(0, kind));
    }
    let signature: [u8; 4] = array_at(bytes, 0);
    if &signature != b"IVRS" {
        let kind = IvrsErrorKind::WrongSignature { found: signature };
        return Err(IvrsError::new(0, kind));
    }
    let length = u32_at(bytes, 4);
    if usize::try_from(length).ok() != Some(bytes.len()) {
        let kind = IvrsErrorKind::LengthMismatch {
            declared: length,
            actual: bytes.len(),
        };
        return Err(IvrsError::new(4, kind));
    }
    let sum = bytes.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte));
    if sum != 0 {
        return Err(IvrsError::new(9, IvrsErrorKind::BadChecksum { sum }));
    }
    Ok(AcpiHeader {
        signature,
        length,
        revision: bytes[8],
        checksum: bytes[9],
        oem_id: array_at(bytes, 10),
        oem_table_id: array_at(bytes, 16),
        oem_revision: u32_at(bytes, 24),
        creator_id: array_at(bytes, 28),
        creator_revision: u32_at(bytes, 32),
    })
}

/// The least length a block of this type can have.
fn block_minimum(block_type: u8) -> u16 {
    match (
        IvhdType::from_raw(block_type),
        IvmdType::from_raw(block_type),
    ) {
        (Some(ivhd_type), _) => ivhd_type.header_len() as u16,
        (None, Some(_)) => IVMD_LEN,
        // Unknown types: at least their own type/flags/length, so the walk advances.
        (None, None) => 4,
    }
}

/// Parses an IVHD whose bounds `at..end` the caller has checked (and whose length
/// is at least the type's header).
fn parse_ivhd(bytes: &[u8], at: usize, end: usize, ivhd_type: IvhdType) -> Ivhd {
    let features = match ivhd_type {
        IvhdType::Type10 => {
            IvhdFeatures::Reporting(FeatureReporting::from_raw(u32_at(bytes, at + 20)))
        }
        IvhdType::Type11 | IvhdType::Type40 => IvhdFeatures::Efr {
            attributes: IvhdAttributes::from_raw(u32_at(bytes, at + 20)),
            efr: ExtendedFeatures::from_raw(u64_at(bytes, at + 24)),
            efr2: u64_at(bytes, at + 32),
        },
    };
    let (entries, entry_error) = entry::parse_entries(bytes, at + ivhd_type.header_len(), end);
    Ivhd {
        offset: at,
        ivhd_type,
        flags: IvhdFlags::from_bits_retain(bytes[at + 1]),
        length: u16_at(bytes, at + 2),
        device_id: u16_at(bytes, at + 4),
        capability_offset: u16_at(bytes, at + 6),
        base_address: u64_at(bytes, at + 8),
        segment: u16_at(bytes, at + 16),
        info: IommuInfo::from_raw(u16_at(bytes, at + 18)),
        features,
        entries,
        entry_error,
    }
}

/// Parses an IVMD whose 32 bytes at `at` the caller has checked.
fn parse_ivmd(bytes: &[u8], at: usize, ivmd_type: IvmdType) -> Result<Ivmd, IvrsError> {
    let ivmd = Ivmd {
        offset: at,
        ivmd_type,
        flags: IvmdFlags::from_bits_retain(bytes[at + 1]),
        length: u16_at(bytes, at + 2),
        device_id: u16_at(bytes, at + 4),
        aux_data: u16_at(bytes, at + 6),
        segment: u16_at(bytes, at + 8),
        start_address: u64_at(bytes, at + 16),
        memory_length: u64_at(bytes, at + 24),
    };
    if ivmd_type == IvmdType::Range && ivmd.aux_data < ivmd.device_id {
        let kind = IvrsErrorKind::IvmdRangeEndBeforeStart {
            start: ivmd.device_id,
            end: ivmd.aux_data,
        };
        return Err(IvrsError::new(at, kind));
    }
    if ivmd.start_address.checked_add(ivmd.memory_length).is_none() {
        let kind = IvrsErrorKind::IvmdAddressOverflow {
            start: ivmd.start_address,
            length: ivmd.memory_length,
        };
        return Err(IvrsError::new(at, kind));
    }
    Ok(ivmd)
}
