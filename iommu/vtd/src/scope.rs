//! Device scopes resolved through the live PCI topology.
//!
//! A DMAR device scope does not say "bus 3, device 1": it says "start at bus 0, take
//! device 2 function 0 (a bridge), then on its secondary bus take device 0 function 0,
//! ...". Firmware writes paths because bus numbers below the root bus are whatever the
//! bridges were programmed with, and may change; the path stays valid. So a scope only
//! means something together with the bus tree: every hop but the last must be a bridge
//! present in the [`DeviceTable`], and its secondary bus is where the next hop is.
//!
//! The result is a [`ResolvedScope`]. A path that cannot be followed (a hop that is
//! absent, or not a bridge, or a bridge with impossible bus numbers) resolves to
//! [`ResolvedScope::Unresolved`] naming the hop: a warning, not an error, because the
//! rest of the table is still good (firmware routinely lists devices the BIOS has
//! since hidden). A scope whose type contradicts the device it names (an endpoint
//! scope naming a bridge, a bridge scope naming an endpoint) is also reported; the
//! resolution then follows the device actually found, see [`resolve`].

use core::fmt;

use sluice_pci::{DeviceTable, PciAddress};

use crate::dmar::{DeviceScope, ScopeType};

/// PCI base class of bridges (06h). A type 0 function of this class named by a bridge
/// scope is not a mismatch: Linux accepts it for non-transparent bridges.
const BRIDGE_CLASS: u8 = 0x06;

/// A device scope after following its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolvedScope {
    /// A function (usually from an endpoint scope): only its own DMA.
    Device(PciAddress),
    /// A bridge: its own DMA and that of every function whose bus is in
    /// `secondary..=subordinate` (everything below it).
    Bridge {
        bridge: PciAddress,
        secondary: u8,
        subordinate: u8,
    },
    /// An I/O APIC with APIC id `id`, whose interrupt messages carry `source_id`
    /// (`bus << 8 | device << 3 | function`): what interrupt remapping must validate.
    IoApic { id: u8, source_id: u16 },
    /// HPET block number `id` and its source id.
    Hpet { id: u8, source_id: u16 },
    /// The ACPI namespace device with ANDD device number `device_number`.
    AcpiNamespace { device_number: u8, source_id: u16 },
    /// The path could not be followed.
    Unresolved(PathError),
    /// A scope type this code does not know; ignored.
    Unknown { scope_type: u8 },
}

impl ResolvedScope {
    /// The PCI function a device or bridge scope names.
    pub fn pci_address(&self) -> Option<PciAddress> {
        match self {
            Self::Device(address) => Some(*address),
            Self::Bridge { bridge, .. } => Some(*bridge),
            _ => None,
        }
    }

    /// Whether `device` is the function named or (for a bridge) below it by bus range.
    pub fn covers(&self, device: PciAddress) -> bool {
        match *self {
            Self::Device(address) => address == device,
            Self::Bridge {
                bridge,
                secondary,
                subordinate,
            } => {
                bridge == device
                    || (bridge.segment == device.segment
                        && (secondary..=subordinate).contains(&device.bus))
            }
            _ => false,
        }
    }
}

/// Why a path could not be followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HopProblem {
    /// No function at that address.
    Absent,
    /// A hop before the last is not a bridge (no type 1 header).
    NotABridge,
    /// A bridge whose secondary bus is not above its own bus, or above its subordinate
    /// bus: following it could lead anywhere (enumeration did not follow it either).
    BadBridgeBuses { secondary: u8, subordinate: u8 },
    /// Device number >= 32 or function number >= 8.
    InvalidDeviceFunction,
    /// The scope has no hops at all (only hand-built scopes: the parser rejects it).
    EmptyPath,
}

impl fmt::Display for HopProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Absent => f.write_str("no function there"),
            Self::NotABridge => f.write_str("not a bridge, but the path goes through it"),
            Self::BadBridgeBuses {
                secondary,
                subordinate,
            } => write!(
                f,
                "bridge with impossible bus numbers (secondary {secondary:02x}, subordinate {subordinate:02x})"
            ),
            Self::InvalidDeviceFunction => f.write_str("device or function number out of range"),
            Self::EmptyPath => f.write_str("empty path"),
        }
    }
}

/// The hop at which a path stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PathError {
    /// Index of the failing hop in the path (0 = the first hop, on the start bus).
    pub hop: usize,
    /// The address the hop named (bus as reached so far).
    pub at: PciAddress,
    pub problem: HopProblem,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hop {} at {}: {}", self.hop, self.at, self.problem)
    }
}

/// `bb:dd.f` of a source id.
pub struct SourceId(pub u16);

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let address = PciAddress::from_bdf(0, self.0);
        write!(
            f,
            "{:02x}:{:02x}.{:x}",
            address.bus, address.device, address.function
        )
    }
}

/// `0000:00:1f.2`, `bridge 0000:00:02.0 (buses 02-03)`, `ioapic 0 (ff:00.0)`, ...
impl fmt::Display for ResolvedScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Device(address) => write!(f, "{address}"),
            Self::Bridge {
                bridge,
                secondary,
                subordinate,
            } => write!(
                f,
                "bridge {bridge} (buses {secondary:02x}-{subordinate:02x})"
            ),
            Self::IoApic { id, source_id } => write!(f, "ioapic {id} ({})", SourceId(source_id)),
            Self::Hpet { id, source_id } => write!(f, "hpet {id} ({})", SourceId(source_id)),
            Self::AcpiNamespace {
                device_number,
                source_id,
            } => write!(f, "acpi-device {device_number} ({})", SourceId(source_id)),
            Self::Unresolved(error) => write!(f, "unresolved ({error})"),
            Self::Unknown { scope_type } => write!(f, "unknown scope type {scope_type:#x}"),
        }
    }
}

/// A scope type contradicting the function found at the end of the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TypeMismatch {
    pub scope_type: ScopeType,
    pub device: PciAddress,
}

/// What [`resolve`] found: the resolved scope, and whether the scope's type
/// contradicted the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub scope: ResolvedScope,
    pub mismatch: Option<TypeMismatch>,
}

/// Follows `scope`'s path in `segment` through `table`.
///
/// Endpoint and bridge scopes must end at a function present in the table. What they
/// resolve to follows that function, not the scope type: a bridge (type 1 header)
/// becomes [`ResolvedScope::Bridge`] with its bus range, anything else
/// [`ResolvedScope::Device`]. If the type disagrees (endpoint scope on a bridge, or
/// bridge scope on a type 0 function whose class is not "bridge"), the result says so in
/// `mismatch`. Linux warns about the same cases (and then leaves the device out of that
/// unit's scope). Here the scope is still used, following the device: all DMA from below
/// a bridge enters the root complex through that bridge, so the unit named for the bridge
/// is the one that sees it.
///
/// IOAPIC, HPET and ACPI namespace scopes need not name a PCI function (the IOAPIC of
/// QEMU's q35 is "ff:00.0" on a bus that does not exist): only the hops before the
/// last must be bridges in the table, and the result is the source id.
pub fn resolve(scope: &DeviceScope, segment: u16, table: &DeviceTable) -> Resolution {
    let resolved = |scope| Resolution {
        scope,
        mismatch: None,
    };
    let last = match walk(scope, segment, table) {
        Ok(last) => last,
        Err(error) => return resolved(ResolvedScope::Unresolved(error)),
    };
    let id = scope.enumeration_id;
    let source_id = last.bdf();
    match scope.scope_type {
        ScopeType::Endpoint | ScopeType::Bridge => resolve_pci(scope, last, table),
        ScopeType::IoApic => resolved(ResolvedScope::IoApic { id, source_id }),
        ScopeType::Hpet => resolved(ResolvedScope::Hpet { id, source_id }),
        ScopeType::AcpiNamespace => resolved(ResolvedScope::AcpiNamespace {
            device_number: id,
            source_id,
        }),
        ScopeType::Unknown(scope_type) => resolved(ResolvedScope::Unknown { scope_type }),
    }
}

fn resolve_pci(scope: &DeviceScope, last: PciAddress, table: &DeviceTable) -> Resolution {
    let hop = scope.path.len().saturating_sub(1);
    let unresolved = |problem| Resolution {
        scope: ResolvedScope::Unresolved(PathError {
            hop,
            at: last,
            problem,
        }),
        mismatch: None,
    };
    let Some(device) = table.get(last) else {
        return unresolved(HopProblem::Absent);
    };
    let mismatch = match scope.scope_type {
        ScopeType::Endpoint => device.header_type != 0,
        ScopeType::Bridge => device.header_type == 0 && device.base_class() != BRIDGE_CLASS,
        _ => false,
    }
    .then_some(TypeMismatch {
        scope_type: scope.scope_type,
        device: last,
    });
    let scope = match device.bridge_buses {
        Some((_, secondary, subordinate)) => {
            if !bridge_buses_valid(last.bus, secondary, subordinate) {
                return unresolved(HopProblem::BadBridgeBuses {
                    secondary,
                    subordinate,
                });
            }
            ResolvedScope::Bridge {
                bridge: last,
                secondary,
                subordinate,
            }
        }
        None => ResolvedScope::Device(last),
    };
    Resolution { scope, mismatch }
}

fn bridge_buses_valid(bus: u8, secondary: u8, subordinate: u8) -> bool {
    secondary > bus && secondary <= subordinate
}

/// Follows every hop but the last through bridges; returns the address of the last.
/// At most `path.len()` iterations (a path has at most 124 hops).
fn walk(scope: &DeviceScope, segment: u16, table: &DeviceTable) -> Result<PciAddress, PathError> {
    let Some(last_hop) = scope.path.len().checked_sub(1) else {
        return Err(PathError {
            hop: 0,
            at: PciAddress::new(segment, scope.start_bus, 0, 0),
            problem: HopProblem::EmptyPath,
        });
    };
    let mut bus = scope.start_bus;
    for (hop, entry) in scope.path.iter().enumerate() {
        let at = PciAddress::new(segment, bus, entry.device, entry.function);
        let fail = |problem| PathError { hop, at, problem };
        if !at.is_valid() {
            return Err(fail(HopProblem::InvalidDeviceFunction));
        }
        if hop == last_hop {
            return Ok(at);
        }
        let device = table.get(at).ok_or(fail(HopProblem::Absent))?;
        let (_, secondary, subordinate) =
            device.bridge_buses.ok_or(fail(HopProblem::NotABridge))?;
        if !bridge_buses_valid(bus, secondary, subordinate) {
            return Err(fail(HopProblem::BadBridgeBuses {
                secondary,
                subordinate,
            }));
        }
        bus = secondary;
    }
    // Not reached: the loop returns at the last hop.
    Err(PathError {
        hop: last_hop,
        at: PciAddress::new(segment, bus, 0, 0),
        problem: HopProblem::EmptyPath,
    })
}
