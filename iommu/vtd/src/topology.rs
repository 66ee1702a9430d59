//! The DMAR resolved against the live PCI topology: which unit translates which device.
//!
//! [`DmarTopology::new`] resolves every device scope of a parsed [`Dmar`] once (see
//! [`crate::scope`]) and keeps the results and the warnings. It then answers the one
//! question the rest of the hypervisor asks ([`IommuTopology::binding`]): which
//! remapping unit's tables must hold a device's mappings. Intel's rule, as Linux's
//! `dmar_find_matched_drhd_unit` applies it:
//!
//! 1. a unit (not INCLUDE_PCI_ALL, same segment) whose endpoint or bridge scope names
//!    the device itself;
//! 2. else a unit with a bridge scope naming one of the device's bridges, nearest
//!    first (the device's bus is in that bridge's `secondary..=subordinate`);
//! 3. else the INCLUDE_PCI_ALL unit of the device's segment, whatever its position in
//!    the table (firmware usually lists it last; the spec requires it, Linux does not
//!    rely on it and neither does this);
//! 4. else none: the device's DMA is not translated at all, and the device cannot be
//!    isolated (it must never be handed to a guest).
//!
//! When two units name the same device (a firmware bug, reported as a warning), the
//! later one in the table wins, as in Linux (which keeps scoped units in reverse table
//! order); of two INCLUDE_PCI_ALL units of one segment the first wins, as in Linux.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use sluice_iommu::{FirmwareBinding, IommuTopology, UnitDescription, UnitId, Vendor};
use sluice_pci::{DeviceTable, PciAddress};

use crate::dmar::{
    Andd, AtsrFlags, DeviceScope, Dmar, DmarError, DmarFlags, Drhd, DrhdFlags, HEADER_LEN,
    SatcFlags, ScopeType, StructureType,
};
use crate::scope::{PathError, ResolvedScope, resolve};

/// One remapping unit (one DRHD) with its scopes resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VtdUnit {
    pub id: UnitId,
    /// `dmar0`, `dmar1`, ... in DRHD order, like Linux.
    pub name: String,
    /// The DRHD as parsed.
    pub drhd: Drhd,
    /// `drhd.scopes`, resolved, in the same order.
    pub scopes: Vec<ResolvedScope>,
    /// From the RHSA naming this unit's register base, if any.
    pub proximity_domain: Option<u32>,
}

impl VtdUnit {
    pub fn include_pci_all(&self) -> bool {
        self.drhd.include_pci_all()
    }

    pub fn segment(&self) -> u16 {
        self.drhd.segment
    }

    pub fn register_base(&self) -> u64 {
        self.drhd.register_base
    }

    /// Bytes of register space firmware declares (4 KiB << size field). The registers
    /// actually used may extend further: see [`crate::regs::register_set_size`].
    pub fn register_size(&self) -> u64 {
        self.drhd.register_size()
    }

    /// Functions named by device scopes (endpoints).
    pub fn devices(&self) -> impl Iterator<Item = PciAddress> + '_ {
        self.scopes.iter().filter_map(|scope| match scope {
            ResolvedScope::Device(address) => Some(*address),
            _ => None,
        })
    }

    /// Bridges named by bridge scopes, with their bus ranges.
    pub fn bridges(&self) -> impl Iterator<Item = (PciAddress, u8, u8)> + '_ {
        self.scopes.iter().filter_map(|scope| match *scope {
            ResolvedScope::Bridge {
                bridge,
                secondary,
                subordinate,
            } => Some((bridge, secondary, subordinate)),
            _ => None,
        })
    }

    /// `(APIC id, source id)` of the I/O APICs whose interrupts this unit remaps.
    pub fn io_apics(&self) -> impl Iterator<Item = (u8, u16)> + '_ {
        self.scopes.iter().filter_map(|scope| match *scope {
            ResolvedScope::IoApic { id, source_id } => Some((id, source_id)),
            _ => None,
        })
    }

    /// `(HPET number, source id)` of the HPET blocks whose interrupts this unit remaps.
    pub fn hpets(&self) -> impl Iterator<Item = (u8, u16)> + '_ {
        self.scopes.iter().filter_map(|scope| match *scope {
            ResolvedScope::Hpet { id, source_id } => Some((id, source_id)),
            _ => None,
        })
    }

    /// The unit's own scope naming `device` exactly (device or bridge scope).
    fn names(&self, device: PciAddress) -> bool {
        self.scopes
            .iter()
            .any(|scope| scope.pci_address() == Some(device))
    }

    /// Whether a bridge scope of this unit names `bridge`.
    fn names_bridge(&self, bridge: PciAddress) -> bool {
        self.bridges().any(|(address, _, _)| address == bridge)
    }
}

/// `dmar0: base 0xfed90000 (4 KiB) segment 0000 flags: none; scope: ioapic 0 (ff:00.0), ...`
impl fmt::Display for VtdUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: base {:#x} ({}) segment {:04x} flags: ",
            self.name,
            self.register_base(),
            Size(self.register_size()),
            self.segment()
        )?;
        let mut words = Words::new(f);
        if self.drhd.flags.contains(DrhdFlags::INCLUDE_PCI_ALL) {
            words.word(format_args!("include-pci-all"))?;
        }
        let unknown = self.drhd.flags.bits() & !DrhdFlags::all().bits();
        if unknown != 0 {
            words.word(format_args!("{unknown:#04x}"))?;
        }
        words.finish()?;
        if let Some(domain) = self.proximity_domain {
            write!(f, ", proximity domain {domain}")?;
        }
        f.write_str("; scope:")?;
        if self.scopes.is_empty() {
            f.write_str(" none")?;
        }
        for (index, scope) in self.scopes.iter().enumerate() {
            let separator = if index == 0 { " " } else { ", " };
            write!(f, "{separator}{scope}")?;
        }
        Ok(())
    }
}

/// An RMRR with its scopes resolved: `base..=limit` must stay identity-mapped in the
/// domain of each device in `devices`, or firmware-initiated DMA breaks (or worse,
/// lands in a guest's memory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedRmrr {
    /// Offset of the RMRR in the table.
    pub offset: usize,
    pub segment: u16,
    pub base: u64,
    /// Last byte, inclusive.
    pub limit: u64,
    pub scopes: Vec<ResolvedScope>,
    /// The functions of the table the region applies to, sorted: named endpoints, and
    /// named bridges with every function below them (as Linux applies a bridge scope).
    pub devices: Vec<PciAddress>,
}

impl ResolvedRmrr {
    /// Whether the region applies to `device`: a named function, a named bridge or a
    /// function below a named bridge (by `table`'s parents, or by bus range for a
    /// function not in `table`, e.g. a VF created later).
    pub fn applies_to(&self, table: &DeviceTable, device: PciAddress) -> bool {
        device.segment == self.segment
            && self
                .scopes
                .iter()
                .any(|scope| scope_applies(scope, table, device))
    }

    /// Size in bytes (0 for an inverted range).
    pub fn size(&self) -> u64 {
        self.limit
            .checked_sub(self.base)
            .map_or(0, |span| span.saturating_add(1))
    }
}

/// An ATSR with its scopes resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedAtsr {
    pub offset: usize,
    pub flags: AtsrFlags,
    pub segment: u16,
    /// Root ports (bridge scopes).
    pub scopes: Vec<ResolvedScope>,
}

impl ResolvedAtsr {
    pub fn all_ports(&self) -> bool {
        self.flags.contains(AtsrFlags::ALL_PORTS)
    }

    /// Whether devices at `device` may use ATS per this structure: all ports of the
    /// segment, or `device` is below (or is) a listed root port.
    pub fn allows_ats(&self, table: &DeviceTable, device: PciAddress) -> bool {
        device.segment == self.segment
            && (self.all_ports()
                || self
                    .scopes
                    .iter()
                    .any(|scope| scope_applies(scope, table, device)))
    }
}

/// A SATC with its scopes resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedSatc {
    pub offset: usize,
    pub flags: SatcFlags,
    pub segment: u16,
    pub scopes: Vec<ResolvedScope>,
}

impl ResolvedSatc {
    pub fn atc_required(&self) -> bool {
        self.flags.contains(SatcFlags::ATC_REQUIRED)
    }
}

/// Whether a resolved scope names `device` or a bridge above it.
fn scope_applies(scope: &ResolvedScope, table: &DeviceTable, device: PciAddress) -> bool {
    match *scope {
        ResolvedScope::Device(address) => address == device,
        ResolvedScope::Bridge { bridge, .. } => {
            bridge == device
                || if table.get(device).is_some() {
                    table
                        .ancestors(device)
                        .iter()
                        .any(|ancestor| ancestor.address == bridge)
                } else {
                    scope.covers(device)
                }
        }
        _ => false,
    }
}

/// Which kind of interrupt source a scope names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InterruptSourceKind {
    IoApic,
    Hpet,
}

/// An I/O APIC or HPET and the unit that remaps its interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InterruptSource {
    pub unit: UnitId,
    pub kind: InterruptSourceKind,
    /// APIC id (IOAPIC) or HPET number: the scope's enumeration id.
    pub id: u8,
    /// Requester id its interrupt messages carry.
    pub source_id: u16,
}

/// Something odd in the table that does not stop it from being used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WarningKind {
    /// A scope whose path could not be followed; it matches nothing.
    UnresolvedScope {
        structure: StructureType,
        scope: DeviceScope,
        error: PathError,
    },
    /// The scope type contradicts the device found (used anyway, following the device).
    ScopeTypeMismatch {
        structure: StructureType,
        scope: DeviceScope,
        device: PciAddress,
    },
    /// A scope type this code does not know; ignored.
    UnknownScopeType {
        structure: StructureType,
        scope: DeviceScope,
    },
    /// An IOAPIC/HPET/ACPI scope where only PCI scopes make sense (RMRR, ATSR, SATC);
    /// ignored.
    UnexpectedScopeType {
        structure: StructureType,
        scope: DeviceScope,
    },
    /// Two units' scopes name the same function; `used` translates it.
    DuplicateScope {
        device: PciAddress,
        ignored: UnitId,
        used: UnitId,
    },
    /// A second INCLUDE_PCI_ALL unit in a segment; only `used` is consulted.
    ExtraIncludeAll {
        segment: u16,
        used: UnitId,
        ignored: UnitId,
    },
    /// An RMRR that is not whole 4 KiB pages, or whose limit is below its base.
    RmrrBadRange { base: u64, limit: u64 },
    /// An RHSA naming a register base no DRHD has.
    RhsaWithoutUnit { register_base: u64 },
    /// No DRHD at all: nothing is translated.
    NoUnits,
    /// More DRHDs than unit ids (65536); the rest are ignored.
    TooManyUnits { ignored: usize },
}

/// A warning and the table offset of the structure or scope it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub offset: usize,
    pub kind: WarningKind,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DMAR offset {:#x}: ", self.offset)?;
        match &self.kind {
            WarningKind::UnresolvedScope {
                structure,
                scope,
                error,
            } => write!(f, "{structure} scope {scope} unresolved: {error}"),
            WarningKind::ScopeTypeMismatch {
                structure,
                scope,
                device,
            } => write!(
                f,
                "{structure} scope {scope} names {device}, which is {}; used as found",
                if scope.scope_type == ScopeType::Endpoint {
                    "a bridge"
                } else {
                    "not a bridge"
                }
            ),
            WarningKind::UnknownScopeType { structure, scope } => {
                write!(f, "{structure} scope {scope} of unknown type ignored")
            }
            WarningKind::UnexpectedScopeType { structure, scope } => {
                write!(f, "{structure} scope {scope} makes no sense there; ignored")
            }
            WarningKind::DuplicateScope {
                device,
                ignored,
                used,
            } => write!(
                f,
                "{device} is named by dmar{} and dmar{}; dmar{} used",
                ignored.0, used.0, used.0
            ),
            WarningKind::ExtraIncludeAll {
                segment,
                used,
                ignored,
            } => write!(
                f,
                "second INCLUDE_PCI_ALL unit dmar{} for segment {segment:04x} ignored (dmar{} used)",
                ignored.0, used.0
            ),
            WarningKind::RmrrBadRange { base, limit } => write!(
                f,
                "RMRR {base:#x}-{limit:#x} is not a range of whole 4 KiB pages"
            ),
            WarningKind::RhsaWithoutUnit { register_base } => {
                write!(f, "RHSA names no unit (register base {register_base:#x})")
            }
            WarningKind::NoUnits => f.write_str("no DRHD: no device is translated"),
            WarningKind::TooManyUnits { ignored } => {
                write!(f, "{ignored} DRHDs beyond 65536 ignored")
            }
        }
    }
}

/// The DMAR resolved against a [`DeviceTable`]. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmarTopology {
    host_address_width: u8,
    flags: DmarFlags,
    units: Vec<VtdUnit>,
    descriptions: Vec<UnitDescription>,
    rmrrs: Vec<ResolvedRmrr>,
    atsrs: Vec<ResolvedAtsr>,
    satcs: Vec<ResolvedSatc>,
    andds: Vec<Andd>,
    unknown_structures: usize,
    warnings: Vec<Warning>,
}

/// Resolves scopes and collects the warnings about them.
struct Resolver<'a> {
    table: &'a DeviceTable,
    warnings: Vec<Warning>,
}

impl Resolver<'_> {
    /// Resolves the scopes of one structure. `pci_only`: non-PCI scope types are
    /// reported and left unresolved-but-harmless.
    fn scopes(
        &mut self,
        structure: StructureType,
        segment: u16,
        scopes: &[DeviceScope],
        pci_only: bool,
    ) -> Vec<ResolvedScope> {
        scopes
            .iter()
            .map(|scope| self.scope(structure, segment, scope, pci_only))
            .collect()
    }

    fn scope(
        &mut self,
        structure: StructureType,
        segment: u16,
        scope: &DeviceScope,
        pci_only: bool,
    ) -> ResolvedScope {
        let warn = |kind| Warning {
            offset: scope.offset,
            kind,
        };
        let resolution = resolve(scope, segment, self.table);
        match &resolution.scope {
            ResolvedScope::Unresolved(error) => {
                self.warnings.push(warn(WarningKind::UnresolvedScope {
                    structure,
                    scope: scope.clone(),
                    error: *error,
                }));
            }
            ResolvedScope::Unknown { .. } => {
                self.warnings.push(warn(WarningKind::UnknownScopeType {
                    structure,
                    scope: scope.clone(),
                }));
            }
            ResolvedScope::IoApic { .. }
            | ResolvedScope::Hpet { .. }
            | ResolvedScope::AcpiNamespace { .. }
                if pci_only =>
            {
                self.warnings.push(warn(WarningKind::UnexpectedScopeType {
                    structure,
                    scope: scope.clone(),
                }));
            }
            _ => {}
        }
        if let Some(mismatch) = resolution.mismatch {
            self.warnings.push(warn(WarningKind::ScopeTypeMismatch {
                structure,
                scope: scope.clone(),
                device: mismatch.device,
            }));
        }
        resolution.scope
    }
}

impl DmarTopology {
    /// Resolves every scope of `dmar` against `table` (the enumeration of the live bus
    /// tree) and checks the table's cross-references. Never fails: what cannot be used
    /// is left out and reported in [`DmarTopology::warnings`].
    pub fn new(dmar: Dmar, table: &DeviceTable) -> Self {
        let mut resolver = Resolver {
            table,
            warnings: Vec::new(),
        };
        if dmar.units.is_empty() {
            resolver.warnings.push(Warning {
                offset: HEADER_LEN,
                kind: WarningKind::NoUnits,
            });
        }
        let total_units = dmar.units.len();
        let mut units = Vec::new();
        for (index, drhd) in dmar.units.into_iter().enumerate() {
            let Ok(id) = u16::try_from(index) else {
                resolver.warnings.push(Warning {
                    offset: drhd.offset,
                    kind: WarningKind::TooManyUnits {
                        ignored: total_units - index,
                    },
                });
                break;
            };
            let scopes = resolver.scopes(StructureType::Drhd, drhd.segment, &drhd.scopes, false);
            units.push(VtdUnit {
                id: UnitId(id),
                name: format!("dmar{id}"),
                drhd,
                scopes,
                proximity_domain: None,
            });
        }

        for rhsa in &dmar.rhsas {
            match units
                .iter_mut()
                .find(|unit| unit.register_base() == rhsa.register_base)
            {
                Some(unit) => unit.proximity_domain = Some(rhsa.proximity_domain),
                None => resolver.warnings.push(Warning {
                    offset: rhsa.offset,
                    kind: WarningKind::RhsaWithoutUnit {
                        register_base: rhsa.register_base,
                    },
                }),
            }
        }

        let rmrrs = dmar
            .rmrrs
            .iter()
            .map(|rmrr| {
                let base_aligned = rmrr.base % 4096 == 0;
                let end_aligned = rmrr.limit.wrapping_add(1) % 4096 == 0;
                if !base_aligned || !end_aligned || rmrr.limit < rmrr.base {
                    resolver.warnings.push(Warning {
                        offset: rmrr.offset,
                        kind: WarningKind::RmrrBadRange {
                            base: rmrr.base,
                            limit: rmrr.limit,
                        },
                    });
                }
                let scopes = resolver.scopes(StructureType::Rmrr, rmrr.segment, &rmrr.scopes, true);
                let mut devices: Vec<PciAddress> = table
                    .iter()
                    .map(|device| device.address)
                    .filter(|&address| {
                        address.segment == rmrr.segment
                            && scopes
                                .iter()
                                .any(|scope| scope_applies(scope, table, address))
                    })
                    .collect();
                devices.sort();
                devices.dedup();
                ResolvedRmrr {
                    offset: rmrr.offset,
                    segment: rmrr.segment,
                    base: rmrr.base,
                    limit: rmrr.limit,
                    scopes,
                    devices,
                }
            })
            .collect();

        let atsrs = dmar
            .atsrs
            .iter()
            .map(|atsr| ResolvedAtsr {
                offset: atsr.offset,
                flags: atsr.flags,
                segment: atsr.segment,
                scopes: resolver.scopes(StructureType::Atsr, atsr.segment, &atsr.scopes, true),
            })
            .collect();
        let satcs = dmar
            .satcs
            .iter()
            .map(|satc| ResolvedSatc {
                offset: satc.offset,
                flags: satc.flags,
                segment: satc.segment,
                scopes: resolver.scopes(StructureType::Satc, satc.segment, &satc.scopes, true),
            })
            .collect();

        check_units(&units, &mut resolver.warnings);

        let descriptions = units
            .iter()
            .map(|unit| UnitDescription {
                id: unit.id,
                vendor: Vendor::IntelVtd,
                segment: unit.segment(),
                register_base: unit.register_base(),
                register_size: unit.register_size(),
                name: unit.name.clone(),
            })
            .collect();

        Self {
            host_address_width: dmar.host_address_width,
            flags: dmar.flags,
            units,
            descriptions,
            rmrrs,
            atsrs,
            satcs,
            andds: dmar.andds,
            unknown_structures: dmar.unknown_structures,
            warnings: resolver.warnings,
        }
    }

    /// Parses `table_bytes` (see [`Dmar::parse`]) and resolves it against `table`.
    pub fn parse(table_bytes: &[u8], table: &DeviceTable) -> Result<Self, DmarError> {
        Ok(Self::new(Dmar::parse(table_bytes)?, table))
    }

    /// Host address width in bits (HAW + 1).
    pub fn host_address_width(&self) -> u8 {
        self.host_address_width
    }

    pub fn flags(&self) -> DmarFlags {
        self.flags
    }

    /// Whether firmware says interrupt remapping is supported (DMAR flag INTR_REMAP).
    pub fn interrupt_remapping(&self) -> bool {
        self.flags.contains(DmarFlags::INTR_REMAP)
    }

    /// The units with their resolved scopes, in DRHD order (`vtd_units()[i].id == UnitId(i)`).
    pub fn vtd_units(&self) -> &[VtdUnit] {
        &self.units
    }

    pub fn unit(&self, id: UnitId) -> Option<&VtdUnit> {
        self.units.get(usize::from(id.0))
    }

    pub fn rmrrs(&self) -> &[ResolvedRmrr] {
        &self.rmrrs
    }

    /// The RMRRs that apply to `device`: regions to identity-map in its domain.
    pub fn rmrrs_for<'a>(
        &'a self,
        table: &'a DeviceTable,
        device: PciAddress,
    ) -> impl Iterator<Item = &'a ResolvedRmrr> + 'a {
        self.rmrrs
            .iter()
            .filter(move |rmrr| rmrr.applies_to(table, device))
    }

    pub fn atsrs(&self) -> &[ResolvedAtsr] {
        &self.atsrs
    }

    pub fn satcs(&self) -> &[ResolvedSatc] {
        &self.satcs
    }

    pub fn andds(&self) -> &[Andd] {
        &self.andds
    }

    /// Structures of unknown type the parser skipped.
    pub fn unknown_structures(&self) -> usize {
        self.unknown_structures
    }

    /// Everything odd found while resolving, in table order per kind.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Every IOAPIC and HPET scope, with its unit: the sources interrupt remapping
    /// must know (an interrupt from a source id no unit lists is not remapped).
    pub fn interrupt_sources(&self) -> impl Iterator<Item = InterruptSource> + '_ {
        self.units.iter().flat_map(|unit| {
            unit.scopes.iter().filter_map(move |scope| match *scope {
                ResolvedScope::IoApic { id, source_id } => Some(InterruptSource {
                    unit: unit.id,
                    kind: InterruptSourceKind::IoApic,
                    id,
                    source_id,
                }),
                ResolvedScope::Hpet { id, source_id } => Some(InterruptSource {
                    unit: unit.id,
                    kind: InterruptSourceKind::Hpet,
                    id,
                    source_id,
                }),
                _ => None,
            })
        })
    }

    /// The unit that translates `device`'s DMA (see the module docs for the rule), or
    /// `None` if no unit does. `table` supplies the device's bridges; for a function
    /// not in `table` (a VF enabled later, a hot-plugged device) the bus ranges of the
    /// bridge scopes are used instead. For a VF, Linux asks about its PF: do the same
    /// when the PF is known.
    pub fn unit_for(&self, table: &DeviceTable, device: PciAddress) -> Option<UnitId> {
        let scoped = || {
            self.units
                .iter()
                .filter(move |unit| !unit.include_pci_all() && unit.segment() == device.segment)
        };
        // 1. The device itself, named exactly. `rev()`: the later unit wins, as in Linux.
        if let Some(unit) = scoped().rev().find(|unit| unit.names(device)) {
            return Some(unit.id);
        }
        // 2. A bridge above it, nearest first.
        if table.get(device).is_some() {
            for ancestor in table.ancestors(device) {
                if let Some(unit) = scoped()
                    .rev()
                    .find(|unit| unit.names_bridge(ancestor.address))
                {
                    return Some(unit.id);
                }
            }
        } else {
            // Not enumerated: the narrowest bridge range holding its bus is its
            // nearest bridge scope.
            let mut best: Option<(u16, UnitId)> = None;
            for unit in scoped() {
                for (bridge, secondary, subordinate) in unit.bridges() {
                    if bridge.segment == device.segment
                        && (secondary..=subordinate).contains(&device.bus)
                    {
                        let width = u16::from(subordinate.saturating_sub(secondary));
                        if best.is_none_or(|(narrowest, _)| width <= narrowest) {
                            best = Some((width, unit.id));
                        }
                    }
                }
            }
            if let Some((_, id)) = best {
                return Some(id);
            }
        }
        // 3. The segment's INCLUDE_PCI_ALL unit (the first one, as in Linux).
        self.units
            .iter()
            .find(|unit| unit.include_pci_all() && unit.segment() == device.segment)
            .map(|unit| unit.id)
    }

    /// Functions of `table` no unit translates: their DMA goes untranslated, so they
    /// can never be isolated (or assigned).
    pub fn uncovered(&self, table: &DeviceTable) -> Vec<PciAddress> {
        table
            .iter()
            .map(|device| device.address)
            .filter(|&address| self.unit_for(table, address).is_none())
            .collect()
    }
}

/// Cross-unit checks: functions named by two units, extra include-all units.
fn check_units(units: &[VtdUnit], warnings: &mut Vec<Warning>) {
    let mut named: BTreeMap<PciAddress, UnitId> = BTreeMap::new();
    let mut include_all: BTreeMap<u16, UnitId> = BTreeMap::new();
    for unit in units {
        if unit.include_pci_all() {
            if let Some(&used) = include_all.get(&unit.segment()) {
                warnings.push(Warning {
                    offset: unit.drhd.offset,
                    kind: WarningKind::ExtraIncludeAll {
                        segment: unit.segment(),
                        used,
                        ignored: unit.id,
                    },
                });
            } else {
                include_all.insert(unit.segment(), unit.id);
            }
            continue;
        }
        for (scope, resolved) in unit.drhd.scopes.iter().zip(&unit.scopes) {
            let Some(device) = resolved.pci_address() else {
                continue;
            };
            if let Some(previous) = named.insert(device, unit.id)
                && previous != unit.id
            {
                warnings.push(Warning {
                    offset: scope.offset,
                    kind: WarningKind::DuplicateScope {
                        device,
                        ignored: previous,
                        used: unit.id,
                    },
                });
            }
        }
    }
}

impl IommuTopology for DmarTopology {
    fn vendor(&self) -> Vendor {
        Vendor::IntelVtd
    }

    fn units(&self) -> &[UnitDescription] {
        &self.descriptions
    }

    fn binding(&self, table: &DeviceTable, device: PciAddress) -> Option<FirmwareBinding> {
        self.unit_for(table, device).map(|unit| FirmwareBinding {
            unit,
            firmware_aliases: Vec::new(),
        })
    }

    /// The RMRRs that apply to `device`.
    fn reserved_regions(&self, table: &DeviceTable, device: PciAddress) -> Vec<(u64, u64)> {
        self.rmrrs_for(table, device)
            .map(|rmrr| (rmrr.base, rmrr.limit))
            .collect()
    }
}

/// The boot-log summary: a header line, one line per unit, one per RMRR, ATSR, SATC
/// and ANDD, and counts of skipped structures and warnings (lines separated by `\n`,
/// no trailing newline). Warnings themselves are printed from
/// [`DmarTopology::warnings`].
impl fmt::Display for DmarTopology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DMAR: {}-bit host addresses, flags: ",
            self.host_address_width
        )?;
        let mut words = Words::new(f);
        for (flag, word) in [
            (DmarFlags::INTR_REMAP, "interrupt-remapping"),
            (DmarFlags::X2APIC_OPT_OUT, "x2apic-opt-out"),
            (DmarFlags::DMA_CTRL_PLATFORM_OPT_IN, "dma-control-opt-in"),
        ] {
            if self.flags.contains(flag) {
                words.word(format_args!("{word}"))?;
            }
        }
        let unknown = self.flags.bits() & !DmarFlags::all().bits();
        if unknown != 0 {
            words.word(format_args!("{unknown:#04x}"))?;
        }
        words.finish()?;
        let count = self.units.len();
        write!(f, ", {count} unit{}", plural(count))?;
        for unit in &self.units {
            write!(f, "\n{unit}")?;
        }
        for rmrr in &self.rmrrs {
            write!(
                f,
                "\nrmrr: {:#x}-{:#x} segment {:04x} for",
                rmrr.base, rmrr.limit, rmrr.segment
            )?;
            write_scopes(f, &rmrr.scopes)?;
        }
        for atsr in &self.atsrs {
            write!(f, "\natsr: segment {:04x}", atsr.segment)?;
            if atsr.all_ports() {
                f.write_str(" all root ports")?;
            } else {
                f.write_str(" root ports")?;
                write_scopes(f, &atsr.scopes)?;
            }
        }
        for satc in &self.satcs {
            write!(
                f,
                "\nsatc: segment {:04x}{}",
                satc.segment,
                if satc.atc_required() {
                    " atc-required"
                } else {
                    ""
                }
            )?;
            write_scopes(f, &satc.scopes)?;
        }
        for andd in &self.andds {
            write!(f, "\nandd: device {} \"", andd.device_number)?;
            // Firmware's string: keep the log line one line.
            for c in andd.object_name.chars() {
                let printable = if c.is_control() || c == '"' { '?' } else { c };
                write!(f, "{printable}")?;
            }
            f.write_str("\"")?;
        }
        if self.unknown_structures > 0 {
            write!(
                f,
                "\n{} structure{} of unknown type skipped",
                self.unknown_structures,
                plural(self.unknown_structures)
            )?;
        }
        if !self.warnings.is_empty() {
            let count = self.warnings.len();
            write!(f, "\n{count} warning{}", plural(count))?;
        }
        Ok(())
    }
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

fn write_scopes(f: &mut fmt::Formatter<'_>, scopes: &[ResolvedScope]) -> fmt::Result {
    if scopes.is_empty() {
        return f.write_str(" nothing");
    }
    for (index, scope) in scopes.iter().enumerate() {
        let separator = if index == 0 { " " } else { ", " };
        write!(f, "{separator}{scope}")?;
    }
    Ok(())
}

/// Writes words separated by `+`, or `none` if there were none.
struct Words<'a, 'b> {
    f: &'a mut fmt::Formatter<'b>,
    any: bool,
}

impl<'a, 'b> Words<'a, 'b> {
    fn new(f: &'a mut fmt::Formatter<'b>) -> Self {
        Self { f, any: false }
    }

    fn word(&mut self, word: fmt::Arguments<'_>) -> fmt::Result {
        if self.any {
            self.f.write_str("+")?;
        }
        self.any = true;
        self.f.write_fmt(word)
    }

    fn finish(self) -> fmt::Result {
        if self.any {
            Ok(())
        } else {
            self.f.write_str("none")
        }
    }
}

/// `4 KiB`, `64 KiB`, `1 MiB`, or bytes.
struct Size(u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const KIB: u64 = 1024;
        const MIB: u64 = 1024 * KIB;
        match self.0 {
            size if size >= MIB && size % MIB == 0 => write!(f, "{} MiB", size / MIB),
            size if size >= KIB && size % KIB == 0 => write!(f, "{} KiB", size / KIB),
            size => write!(f, "{size} bytes"),
        }
    }
}
