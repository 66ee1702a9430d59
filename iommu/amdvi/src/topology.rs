//! The IVRS resolved against the live PCI topology: Sluice's view of the AMD IOMMUs.
//!
//! [`IvrsTopology`] is what the rest of the kernel uses (through
//! [`sluice_iommu::IommuTopology`]): the units, which unit translates a function's
//! DMA and with which firmware-declared alias, plus what the AMD-Vi driver needs
//! later (the IOAPIC/HPET interrupt sources, the memory ranges that must stay
//! unity-mapped, each unit's own PCI function and capability offset, its features).
//!
//! Decisions made here, and why:
//! - Only the IVHDs of the selected type count (see
//!   [`crate::Ivrs::selected_ivhd_type`]); the others describe the same IOMMUs again.
//! - A selected IVHD whose entry list could not be read to the end is refused as a
//!   whole ([`TopologyError::MalformedIvhd`]): a partial device list would leave
//!   devices silently untranslated.
//! - When two units cover one requester id, the first in table order wins and a
//!   warning is recorded. (Linux's table walk lets the last IVHD overwrite its
//!   lookup table; such firmware is broken either way, and the warning says so.)
//! - An IOMMU's own PCI function is never bound to a unit, although QEMU's IVRS
//!   lists it: the IOMMU's own memory accesses (device table, command buffer, logs)
//!   are not translated. Linux makes the same exception ("The IVRS table tells us
//!   so, but this is a lie!"). Such a function can therefore never be assigned.

use alloc::format;
use alloc::vec::Vec;
use core::fmt;

use sluice_iommu::{FirmwareBinding, IommuTopology, UnitDescription, UnitId, Vendor};
use sluice_pci::{DeviceTable, PciAddress};

use crate::devmap::{DeviceIdMap, DeviceSettings};
use crate::ivrs::entry::Bdf;
use crate::ivrs::{
    DeviceEntryKind, DteSetting, IvInfo, Ivhd, IvhdFeatures, IvhdType, Ivmd, Ivrs, IvrsError,
    SpecialVariety,
};
use crate::regs::{ExtendedFeatures, IommuInfo, IvhdFlags};

/// One AMD IOMMU: its IVHD, decoded, with the requester ids it covers expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmdViUnit {
    /// The vendor-neutral description (id, segment, registers, `ivhdN` name).
    pub description: UnitDescription,
    /// Table offset of the IVHD this unit comes from.
    pub ivhd_offset: usize,
    /// The IVHD's type.
    pub ivhd_type: IvhdType,
    /// The IVHD flags byte.
    pub flags: IvhdFlags,
    /// The IOMMU's own PCI function (the IVHD's device id field).
    pub iommu_function: PciAddress,
    /// Offset of the IOMMU capability block in that function's config space.
    pub capability_offset: u16,
    /// The IVHD's IOMMU Info word.
    pub info: IommuInfo,
    /// The IVHD's feature words.
    pub features: IvhdFeatures,
    /// IVinfo.EFRSup: whether the EFR image in `features` may be trusted.
    pub efr_image_valid: bool,
    /// The requester ids the unit covers.
    pub device_map: DeviceIdMap,
}

impl AmdViUnit {
    /// The unit's id (its index in table order among the selected IVHDs).
    pub fn id(&self) -> UnitId {
        self.description.id
    }

    /// The EFR as firmware copied it into the IVHD (types 11h/40h, and only when
    /// IVinfo says the images are valid). The MMIO register is authoritative; the
    /// driver should read it and warn on a mismatch, as Linux does.
    pub fn efr_image(&self) -> Option<ExtendedFeatures> {
        match self.features {
            IvhdFeatures::Efr { efr, .. } if self.efr_image_valid => Some(efr),
            _ => None,
        }
    }
}

/// An interrupt source named by a special entry (48h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpecialDevice {
    /// The unit whose IVHD lists it (it remaps the source's interrupts).
    pub unit: UnitId,
    /// IOAPIC or HPET.
    pub variety: SpecialVariety,
    /// IOAPIC id (as in the MADT) or HPET number.
    pub handle: u8,
    /// The requester id its interrupt messages carry, in the unit's segment.
    pub source: PciAddress,
    /// The DTE setting of the entry.
    pub dte: DteSetting,
    /// Table offset of the entry.
    pub entry_offset: usize,
}

/// An ACPI-namespace device named by an F0h entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiHidDevice {
    /// The unit whose IVHD lists it.
    pub unit: UnitId,
    /// _HID bytes.
    pub hid: [u8; 8],
    /// _CID bytes.
    pub cid: [u8; 8],
    /// UID format (0 none, 1 integer, 2 string).
    pub uid_format: u8,
    /// UID bytes.
    pub uid: Vec<u8>,
    /// The requester id its DMA carries.
    pub requester: PciAddress,
    /// Table offset of the entry.
    pub entry_offset: usize,
}

/// A function an IVMD applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IvmdDevice {
    /// The function.
    pub address: PciAddress,
    /// The requester id that matched the IVMD: the function's own, or (when
    /// `via_alias`) the alias its DMA carries.
    pub matched_id: u16,
    /// Whether the match was through the firmware alias.
    pub via_alias: bool,
}

/// An IVMD and the functions of the PCI table it applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryDefinition {
    /// The block as parsed.
    pub ivmd: Ivmd,
    /// Functions bound to a unit whose own requester id, or whose firmware alias,
    /// lies in the IVMD's device ids (a shared alias means a shared Device Table
    /// Entry, so the range must be mapped for all of them).
    pub devices: Vec<IvmdDevice>,
}

/// Things worth a line in the boot log that do not stop Sluice using the IOMMUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopologyWarning {
    /// The IVRS has no IVHD of a type this code understands: no IOMMU is used.
    NoUnits,
    /// A block of an unknown type was skipped.
    SkippedBlock {
        /// Its table offset.
        offset: usize,
        /// Its type byte.
        block_type: u8,
    },
    /// An IVHD of a type that is not used has a malformed entry list.
    IgnoredIvhdMalformed {
        /// The IVHD's offset.
        offset: usize,
        /// What is wrong with it.
        error: IvrsError,
    },
    /// More than one unit covers the function; the first is used.
    DuplicateCoverage {
        /// The function.
        device: PciAddress,
        /// Every unit that covers it, in table order.
        units: Vec<UnitId>,
    },
    /// A function of the PCI table no unit covers: its DMA is not translated, so it
    /// cannot be isolated (and must never be assigned).
    UncoveredDevice {
        /// The function.
        device: PciAddress,
    },
    /// A function's firmware alias names a requester id that is neither a function
    /// in the table nor on the secondary bus of a bridge in it.
    AliasTargetUnreachable {
        /// The function.
        device: PciAddress,
        /// The alias requester id.
        alias: u16,
    },
    /// A unit's own PCI function is not in the PCI table.
    IommuFunctionMissing {
        /// The unit.
        unit: UnitId,
        /// The function its IVHD names.
        function: PciAddress,
    },
    /// An ACPI-HID entry in an IVHD of type 10h/11h (allowed only in 40h; ignored,
    /// as Linux does).
    AcpiHidOutsideType40 {
        /// Table offset of the entry.
        entry_offset: usize,
    },
}

impl fmt::Display for TopologyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyWarning::NoUnits => {
                f.write_str("IVRS has no IVHD of a supported type: no IOMMU units")
            }
            TopologyWarning::SkippedBlock { offset, block_type } => write!(
                f,
                "IVRS offset {offset:#x}: skipped block of unknown type {block_type:#04x}"
            ),
            TopologyWarning::IgnoredIvhdMalformed { offset, error } => write!(
                f,
                "ignored IVHD at offset {offset:#x} is malformed: {error}"
            ),
            TopologyWarning::DuplicateCoverage { device, units } => {
                write!(f, "{device} is covered by several units:")?;
                for unit in units {
                    write!(f, " ivhd{}", unit.0)?;
                }
                write!(f, "; using the first")
            }
            TopologyWarning::UncoveredDevice { device } => write!(
                f,
                "{device} is covered by no IOMMU unit: its DMA is untranslated"
            ),
            TopologyWarning::AliasTargetUnreachable { device, alias } => write!(
                f,
                "{device}: firmware alias {} names no function or bridge secondary bus",
                Bdf(*alias)
            ),
            TopologyWarning::IommuFunctionMissing { unit, function } => write!(
                f,
                "ivhd{}: its IOMMU function {function} is not in the PCI table",
                unit.0
            ),
            TopologyWarning::AcpiHidOutsideType40 { entry_offset } => write!(
                f,
                "IVRS offset {entry_offset:#x}: ACPI HID entry outside an IVHD type 0x40; ignored"
            ),
        }
    }
}

/// Why no topology can be built from an IVRS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopologyError {
    /// A selected IVHD's device-entry list is malformed, so which devices that
    /// IOMMU translates is unknown.
    MalformedIvhd {
        /// The IVHD's table offset.
        offset: usize,
        /// What is wrong.
        error: IvrsError,
    },
    /// More IVHDs than unit ids (65536).
    TooManyUnits {
        /// How many IVHDs were selected.
        count: usize,
    },
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyError::MalformedIvhd { offset, error } => {
                write!(f, "IVHD at offset {offset:#x} is unusable: {error}")
            }
            TopologyError::TooManyUnits { count } => {
                write!(f, "{count} IVHDs: more than 65536 units")
            }
        }
    }
}

impl core::error::Error for TopologyError {}

/// Firmware's AMD IOMMUs resolved against the PCI topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IvrsTopology {
    iv_info: IvInfo,
    selected_type: Option<IvhdType>,
    ignored_ivhds: usize,
    units: Vec<AmdViUnit>,
    descriptions: Vec<UnitDescription>,
    special_devices: Vec<SpecialDevice>,
    acpi_hid_devices: Vec<AcpiHidDevice>,
    memory_definitions: Vec<MemoryDefinition>,
    warnings: Vec<TopologyWarning>,
}

impl IvrsTopology {
    /// Resolves `ivrs` against `table`. Warnings are recorded (see
    /// [`Self::warnings`]) and logged at `warn` level.
    ///
    /// # Errors
    /// [`TopologyError`] when a selected IVHD is malformed or there are too many.
    pub fn new(ivrs: &Ivrs, table: &DeviceTable) -> Result<IvrsTopology, TopologyError> {
        let selected_type = ivrs.selected_ivhd_type();
        let mut warnings = Vec::new();
        for block in &ivrs.skipped_blocks {
            warnings.push(TopologyWarning::SkippedBlock {
                offset: block.offset,
                block_type: block.block_type,
            });
        }
        let mut ignored_ivhds = 0;
        for ivhd in &ivrs.ivhds {
            match (&ivhd.entry_error, Some(ivhd.ivhd_type) == selected_type) {
                (Some(error), true) => {
                    return Err(TopologyError::MalformedIvhd {
                        offset: ivhd.offset,
                        error: error.clone(),
                    });
                }
                (Some(error), false) => {
                    ignored_ivhds += 1;
                    warnings.push(TopologyWarning::IgnoredIvhdMalformed {
                        offset: ivhd.offset,
                        error: error.clone(),
                    });
                }
                (None, false) => ignored_ivhds += 1,
                (None, true) => {}
            }
        }

        let mut units = Vec::new();
        let mut special_devices = Vec::new();
        let mut acpi_hid_devices = Vec::new();
        let count = ivrs.selected_ivhds().count();
        for (index, ivhd) in ivrs.selected_ivhds().enumerate() {
            let id = u16::try_from(index)
                .map(UnitId)
                .map_err(|_| TopologyError::TooManyUnits { count })?;
            collect_entry_devices(
                ivhd,
                id,
                &mut special_devices,
                &mut acpi_hid_devices,
                &mut warnings,
            );
            units.push(unit_from_ivhd(ivhd, id, ivrs.iv_info.efr_sup));
        }
        if units.is_empty() {
            warnings.push(TopologyWarning::NoUnits);
        }
        let descriptions = units.iter().map(|unit| unit.description.clone()).collect();
        let mut topology = IvrsTopology {
            iv_info: ivrs.iv_info,
            selected_type,
            ignored_ivhds,
            units,
            descriptions,
            special_devices,
            acpi_hid_devices,
            memory_definitions: Vec::new(),
            warnings,
        };
        topology.check_devices(table);
        topology.memory_definitions = ivrs
            .ivmds
            .iter()
            .map(|ivmd| topology.resolve_ivmd(ivmd, table))
            .collect();
        for warning in &topology.warnings {
            log::warn!("amd-vi: {warning}");
        }
        Ok(topology)
    }

    /// The IVinfo word.
    pub fn iv_info(&self) -> IvInfo {
        self.iv_info
    }

    /// The IVHD type the units come from (`None` without units).
    pub fn selected_ivhd_type(&self) -> Option<IvhdType> {
        self.selected_type
    }

    /// How many IVHDs of other types were ignored (QEMU 9.0+: one 10h per 11h).
    pub fn ignored_ivhds(&self) -> usize {
        self.ignored_ivhds
    }

    /// The units with everything their IVHD says.
    pub fn amd_units(&self) -> &[AmdViUnit] {
        &self.units
    }

    /// The unit with id `id`.
    pub fn unit(&self, id: UnitId) -> Option<&AmdViUnit> {
        self.units.get(usize::from(id.0))
    }

    /// The IOAPICs and HPETs the units remap interrupts for.
    pub fn special_devices(&self) -> &[SpecialDevice] {
        &self.special_devices
    }

    /// ACPI-namespace devices (F0h entries of type 40h IVHDs).
    pub fn acpi_hid_devices(&self) -> &[AcpiHidDevice] {
        &self.acpi_hid_devices
    }

    /// The IVMDs, each with the functions it applies to.
    pub fn memory_definitions(&self) -> &[MemoryDefinition] {
        &self.memory_definitions
    }

    /// What looked wrong while resolving.
    pub fn warnings(&self) -> &[TopologyWarning] {
        &self.warnings
    }

    /// Whether `address` is some unit's own PCI function.
    pub fn is_iommu_function(&self, address: PciAddress) -> bool {
        self.units.iter().any(|unit| unit.iommu_function == address)
    }

    /// Every unit covering `device`'s requester id in its segment, in table order,
    /// with the settings its IVHD gives (an IOMMU's own function is covered by
    /// none, see the module docs).
    pub fn covering_units(
        &self,
        device: PciAddress,
    ) -> impl Iterator<Item = (&AmdViUnit, &DeviceSettings)> {
        let usable = device.is_valid() && !self.is_iommu_function(device);
        self.units
            .iter()
            .filter(move |unit| usable && unit.description.segment == device.segment)
            .filter_map(move |unit| {
                unit.device_map
                    .lookup(device.bdf())
                    .map(|settings| (unit, settings))
            })
    }

    /// The unit translating `device` and the settings it gives, as
    /// [`IommuTopology::binding`] decides.
    pub fn device_settings(&self, device: PciAddress) -> Option<(UnitId, &DeviceSettings)> {
        self.covering_units(device)
            .next()
            .map(|(unit, settings)| (unit.id(), settings))
    }

    /// Records coverage warnings for every function of the table.
    fn check_devices(&mut self, table: &DeviceTable) {
        let mut warnings = Vec::new();
        for unit in &self.units {
            if table.get(unit.iommu_function).is_none() {
                warnings.push(TopologyWarning::IommuFunctionMissing {
                    unit: unit.id(),
                    function: unit.iommu_function,
                });
            }
        }
        for device in table {
            let address = device.address;
            if self.is_iommu_function(address) {
                continue;
            }
            let covering: Vec<(UnitId, Option<u16>)> = self
                .covering_units(address)
                .map(|(unit, settings)| (unit.id(), settings.alias))
                .collect();
            match covering.as_slice() {
                [] => warnings.push(TopologyWarning::UncoveredDevice { device: address }),
                [_] => {}
                several => warnings.push(TopologyWarning::DuplicateCoverage {
                    device: address,
                    units: several.iter().map(|(unit, _)| *unit).collect(),
                }),
            }
            if let Some((_, Some(alias))) = covering.first() {
                if !alias_reachable(table, address.segment, *alias) {
                    warnings.push(TopologyWarning::AliasTargetUnreachable {
                        device: address,
                        alias: *alias,
                    });
                }
            }
        }
        self.warnings.extend(warnings);
    }

    fn resolve_ivmd(&self, ivmd: &Ivmd, table: &DeviceTable) -> MemoryDefinition {
        let ids = ivmd.device_ids();
        let mut devices = Vec::new();
        for device in table {
            let address = device.address;
            if address.segment != ivmd.segment {
                continue;
            }
            let Some((_, settings)) = self.device_settings(address) else {
                continue;
            };
            let own = address.bdf();
            if ids.contains(&own) {
                devices.push(IvmdDevice {
                    address,
                    matched_id: own,
                    via_alias: false,
                });
            } else if let Some(alias) = settings.alias.filter(|alias| ids.contains(alias)) {
                devices.push(IvmdDevice {
                    address,
                    matched_id: alias,
                    via_alias: true,
                });
            }
        }
        MemoryDefinition {
            ivmd: ivmd.clone(),
            devices,
        }
    }
}

/// Whether an alias requester id is plausible on this PCI table: a function there,
/// or devfn on the secondary bus of a bridge (PCIe-to-PCI bridges tag their
/// secondary side's requests with `secondary:00.0`, which need not exist).
fn alias_reachable(table: &DeviceTable, segment: u16, alias: u16) -> bool {
    let target = PciAddress::from_bdf(segment, alias);
    table.get(target).is_some()
        || table.iter().any(|device| {
            device.address.segment == segment && device.secondary_bus() == Some(target.bus)
        })
}

fn unit_from_ivhd(ivhd: &Ivhd, id: UnitId, efr_image_valid: bool) -> AmdViUnit {
    AmdViUnit {
        description: UnitDescription {
            id,
            vendor: Vendor::AmdVi,
            segment: ivhd.segment,
            register_base: ivhd.base_address,
            register_size: ivhd.register_size(),
            name: format!("ivhd{}", id.0),
        },
        ivhd_offset: ivhd.offset,
        ivhd_type: ivhd.ivhd_type,
        flags: ivhd.flags,
        iommu_function: ivhd.iommu_function(),
        capability_offset: ivhd.capability_offset,
        info: ivhd.info,
        features: ivhd.features,
        efr_image_valid,
        device_map: DeviceIdMap::from_ivhd(ivhd),
    }
}

fn collect_entry_devices(
    ivhd: &Ivhd,
    unit: UnitId,
    special_devices: &mut Vec<SpecialDevice>,
    acpi_hid_devices: &mut Vec<AcpiHidDevice>,
    warnings: &mut Vec<TopologyWarning>,
) {
    for entry in &ivhd.entries {
        match &entry.kind {
            DeviceEntryKind::Special {
                handle,
                source_id,
                variety,
            } => special_devices.push(SpecialDevice {
                unit,
                variety: *variety,
                handle: *handle,
                source: PciAddress::from_bdf(ivhd.segment, *source_id),
                dte: entry.dte,
                entry_offset: entry.offset,
            }),
            DeviceEntryKind::AcpiHid {
                hid,
                cid,
                uid_format,
                uid,
            } => {
                if ivhd.ivhd_type == IvhdType::Type40 {
                    acpi_hid_devices.push(AcpiHidDevice {
                        unit,
                        hid: *hid,
                        cid: *cid,
                        uid_format: *uid_format,
                        uid: uid.clone(),
                        requester: PciAddress::from_bdf(ivhd.segment, entry.device_id),
                        entry_offset: entry.offset,
                    });
                } else {
                    warnings.push(TopologyWarning::AcpiHidOutsideType40 {
                        entry_offset: entry.offset,
                    });
                }
            }
            _ => {}
        }
    }
}

impl IommuTopology for IvrsTopology {
    fn vendor(&self) -> Vendor {
        Vendor::AmdVi
    }

    fn is_remapping_unit(&self, device: PciAddress) -> bool {
        self.is_iommu_function(device)
    }

    fn units(&self) -> &[UnitDescription] {
        &self.descriptions
    }

    /// The first unit (in table order) whose entries cover `device`'s requester id
    /// in its segment; `firmware_aliases` holds the alias entry's requester id when
    /// it differs from the device's own. Answers from firmware alone: `device` need
    /// not be in `table`.
    fn binding(&self, _table: &DeviceTable, device: PciAddress) -> Option<FirmwareBinding> {
        let (unit, settings) = self.device_settings(device)?;
        let firmware_aliases = settings
            .alias
            .filter(|alias| *alias != device.bdf())
            .into_iter()
            .collect();
        Some(FirmwareBinding {
            unit,
            firmware_aliases,
        })
    }

    /// The IVMD unity and exclusion ranges that apply to `device` (directly or through
    /// its alias); hint-only IVMDs don't count.
    fn reserved_regions(&self, _table: &DeviceTable, device: PciAddress) -> Vec<(u64, u64)> {
        self.memory_definitions
            .iter()
            .filter(|m| m.ivmd.requires_unity_map())
            .filter(|m| m.devices.iter().any(|d| d.address == device))
            .map(|m| {
                let first = m.ivmd.start_address;
                (
                    first,
                    first.saturating_add(m.ivmd.memory_length).saturating_sub(1),
                )
            })
            .collect()
    }
}

/// Prints a requester-id range as `bb:dd.f` or `bb:dd.f-bb:dd.f`.
struct IdRange(u16, u16);

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == self.1 {
            write!(f, "{}", Bdf(self.0))
        } else {
            write!(f, "{}-{}", Bdf(self.0), Bdf(self.1))
        }
    }
}

/// Writes one unit's boot-log line (without the specials, which need the topology).
fn write_unit(f: &mut fmt::Formatter<'_>, unit: &AmdViUnit) -> fmt::Result {
    let description = &unit.description;
    write!(
        f,
        "{}: AMD-Vi IVHD type {} at {:#x} ({} KiB), segment {:04x}, IOMMU function {} \
         cap {:#x}, flags [{}], ",
        description.name,
        unit.ivhd_type,
        description.register_base,
        description.register_size / 1024,
        description.segment,
        unit.iommu_function,
        unit.capability_offset,
        unit.flags,
    )?;
    match &unit.features {
        IvhdFeatures::Reporting(reporting) => write!(f, "features [{reporting}]")?,
        IvhdFeatures::Efr {
            attributes,
            efr,
            efr2,
        } => {
            write!(f, "EFR [{efr}]")?;
            if !unit.efr_image_valid {
                f.write_str(" (image not valid per IVinfo)")?;
            }
            if attributes.raw != 0 {
                write!(f, ", attributes [{attributes}]")?;
            }
            if *efr2 != 0 {
                write!(f, ", EFR2 {efr2:#x}")?;
            }
        }
    }
    let map = &unit.device_map;
    write!(
        f,
        ", covers {} device ids in {} runs, aliases [",
        map.covered_count(),
        map.ranges().len()
    )?;
    let aliases = map.aliases();
    const SHOWN: usize = 4;
    for (index, (ids, alias)) in aliases.iter().take(SHOWN).enumerate() {
        let separator = if index == 0 { "" } else { ", " };
        write!(
            f,
            "{separator}{} -> {}",
            IdRange(*ids.start(), *ids.end()),
            Bdf(*alias)
        )?;
    }
    if aliases.len() > SHOWN {
        write!(f, ", +{} more", aliases.len() - SHOWN)?;
    }
    f.write_str("]")
}

/// One line per unit for the boot log, e.g.
/// `ivhd0: AMD-Vi IVHD type 0x11 at 0xfed80000 (16 KiB), segment 0000, IOMMU
/// function 0000:00:01.0 cap 0x40, flags [HT tunnel, IOTLB], EFR [...], covers 6
/// device ids in 6 runs, aliases [], specials [IOAPIC 0 @ 0000:00:14.0]`.
impl fmt::Display for IvrsTopology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.units.is_empty() {
            return f.write_str("AMD-Vi: no IOMMU units");
        }
        for (index, unit) in self.units.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write_unit(f, unit)?;
            f.write_str(", specials [")?;
            let specials = self
                .special_devices
                .iter()
                .filter(|special| special.unit == unit.id());
            for (n, special) in specials.enumerate() {
                let separator = if n == 0 { "" } else { ", " };
                write!(
                    f,
                    "{separator}{} {} @ {}",
                    special.variety, special.handle, special.source
                )?;
            }
            f.write_str("]")?;
        }
        Ok(())
    }
}

/// `ivhd0: ...` as in the topology's summary, without the specials.
impl fmt::Display for AmdViUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_unit(f, self)
    }
}
