//! Decoded functions and the table of all of them.
//!
//! [`PciDevice`] is a snapshot of one function's config space as firmware left it,
//! taken during [`crate::enumerate()`]; nothing in it changes afterwards. The
//! `Display` formats are one line each and are parsed by the test harness, so they
//! are part of the interface.

use alloc::vec::Vec;
use core::fmt;

use crate::capability::PciePortType;
use crate::{Bar, Capabilities, ConfigDefect, PciAddress};

/// What kind of function this is, as config space describes it.
///
/// For PCIe functions this is the device/port type of the PCI Express capability;
/// otherwise it follows from the header type and class code. The `Display` form
/// is kebab-case (`root-port`, `conventional-endpoint`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// PCIe endpoint or legacy PCIe endpoint.
    Endpoint,
    /// Root-complex integrated endpoint.
    RcIntegratedEndpoint,
    /// Root-complex event collector.
    RcEventCollector,
    /// PCIe root port.
    RootPort,
    /// Switch upstream port.
    UpstreamPort,
    /// Switch downstream port.
    DownstreamPort,
    /// PCIe-to-PCI/PCI-X bridge: devices behind it are conventional PCI and DMA
    /// with the bridge's requester id (an alias).
    PcieToPciBridge,
    /// PCI/PCI-X-to-PCIe bridge.
    PciToPcieBridge,
    /// Conventional PCI-to-PCI bridge (type 1 header, no PCIe capability).
    PciBridge,
    /// Conventional PCI function (type 0 header, no PCIe capability).
    ConventionalEndpoint,
    /// Host bridge (class 06/00) without a PCIe capability.
    HostBridge,
    /// Anything else (unknown header type or PCIe port type).
    Unknown,
}

impl DeviceKind {
    /// The kebab-case name the boot log prints.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Endpoint => "endpoint",
            DeviceKind::RcIntegratedEndpoint => "rc-integrated-endpoint",
            DeviceKind::RcEventCollector => "rc-event-collector",
            DeviceKind::RootPort => "root-port",
            DeviceKind::UpstreamPort => "upstream-port",
            DeviceKind::DownstreamPort => "downstream-port",
            DeviceKind::PcieToPciBridge => "pcie-to-pci-bridge",
            DeviceKind::PciToPcieBridge => "pci-to-pcie-bridge",
            DeviceKind::PciBridge => "pci-bridge",
            DeviceKind::ConventionalEndpoint => "conventional-endpoint",
            DeviceKind::HostBridge => "host-bridge",
            DeviceKind::Unknown => "unknown",
        }
    }

    /// Classifies a function from its header type (low 7 bits), class code and
    /// PCIe port type (if it has a PCI Express capability).
    pub fn classify(header_type: u8, class: u32, pcie_port_type: Option<PciePortType>) -> Self {
        const HOST_BRIDGE_CLASS: u32 = 0x06_00;
        match pcie_port_type {
            Some(port_type) => match port_type {
                PciePortType::Endpoint | PciePortType::LegacyEndpoint => DeviceKind::Endpoint,
                PciePortType::RootPort => DeviceKind::RootPort,
                PciePortType::UpstreamPort => DeviceKind::UpstreamPort,
                PciePortType::DownstreamPort => DeviceKind::DownstreamPort,
                PciePortType::PcieToPciBridge => DeviceKind::PcieToPciBridge,
                PciePortType::PciToPcieBridge => DeviceKind::PciToPcieBridge,
                PciePortType::RcIntegratedEndpoint => DeviceKind::RcIntegratedEndpoint,
                PciePortType::RcEventCollector => DeviceKind::RcEventCollector,
                PciePortType::Unknown(_) => DeviceKind::Unknown,
            },
            None => match header_type {
                crate::reg::HEADER_TYPE_BRIDGE => DeviceKind::PciBridge,
                crate::reg::HEADER_TYPE_ENDPOINT if class >> 8 == HOST_BRIDGE_CLASS => {
                    DeviceKind::HostBridge
                }
                crate::reg::HEADER_TYPE_ENDPOINT => DeviceKind::ConventionalEndpoint,
                _ => DeviceKind::Unknown,
            },
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Subsystem vendor and device id of a type 0 function (identifies the board).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubsystemId {
    /// Subsystem vendor id.
    pub vendor_id: u16,
    /// Subsystem device id.
    pub device_id: u16,
}

/// One PCI function as found during enumeration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDevice {
    /// Where it is.
    pub address: PciAddress,
    /// Vendor id.
    pub vendor_id: u16,
    /// Device id.
    pub device_id: u16,
    /// Class code: base class, subclass and programming interface, 24 bits.
    pub class: u32,
    /// Revision id.
    pub revision: u8,
    /// Header layout (low 7 bits of the header type register): 0 general device,
    /// 1 PCI-to-PCI bridge, 2 CardBus bridge, anything else unknown.
    pub header_type: u8,
    /// Bit 7 of the header type register (meaningful on function 0).
    pub multifunction: bool,
    /// Classification, see [`DeviceKind`].
    pub kind: DeviceKind,
    /// Implemented BARs (type 0 and 1 headers only), by slot.
    pub bars: Vec<Bar>,
    /// Interrupt pin: 0 none, 1..=4 INTA#..INTD#.
    pub interrupt_pin: u8,
    /// Interrupt line as firmware left it (informational only).
    pub interrupt_line: u8,
    /// Command register at enumeration time.
    pub command: u16,
    /// Status register at enumeration time.
    pub status: u16,
    /// Subsystem ids (type 0 headers only).
    pub subsystem: Option<SubsystemId>,
    /// Capability lists and their decoded values.
    pub capabilities: Capabilities,
    /// The bridge whose secondary bus this function is on; `None` on a root bus.
    pub parent: Option<PciAddress>,
    /// Type 1 headers: (primary, secondary, subordinate) bus numbers, as firmware
    /// assigned them.
    pub bridge_buses: Option<(u8, u8, u8)>,
    /// Problems found in this function's config space.
    pub defects: Vec<ConfigDefect>,
}

impl PciDevice {
    /// Base class (bits 23:16 of the class code).
    pub fn base_class(&self) -> u8 {
        (self.class >> 16) as u8
    }

    /// Subclass (bits 15:8 of the class code).
    pub fn subclass(&self) -> u8 {
        (self.class >> 8) as u8
    }

    /// Programming interface (bits 7:0 of the class code).
    pub fn prog_if(&self) -> u8 {
        self.class as u8
    }

    /// Whether this function has a type 1 (bridge) header.
    pub fn is_bridge(&self) -> bool {
        self.bridge_buses.is_some()
    }

    /// Secondary bus of a bridge.
    pub fn secondary_bus(&self) -> Option<u8> {
        self.bridge_buses.map(|(_, secondary, _)| secondary)
    }

    /// The bus range `secondary..=subordinate` below a bridge.
    pub fn bus_range(&self) -> Option<core::ops::RangeInclusive<u8>> {
        self.bridge_buses
            .map(|(_, secondary, subordinate)| secondary..=subordinate)
    }

    /// Whether the function has a PCI Express capability.
    pub fn is_pcie(&self) -> bool {
        self.capabilities.pcie.is_some()
    }

    /// The BAR in slot `index`, if implemented.
    pub fn bar(&self, index: u8) -> Option<&Bar> {
        self.bars.iter().find(|bar| bar.index == index)
    }
}

/// One line: `0000:00:03.0 [1234:11e8] class 00ff00 rev 10 conventional-endpoint`,
/// then ` buses 00/01-03` for bridges, then ` caps: pcie msi ...` if any known
/// capability was decoded (names from [`Capabilities::short_names`]).
impl fmt::Display for PciDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{:04x}:{:04x}] class {:06x} rev {:02x} {}",
            self.address, self.vendor_id, self.device_id, self.class, self.revision, self.kind
        )?;
        if let Some((primary, secondary, subordinate)) = self.bridge_buses {
            write!(f, " buses {primary:02x}/{secondary:02x}-{subordinate:02x}")?;
        }
        let mut names = self.capabilities.short_names().peekable();
        if names.peek().is_some() {
            f.write_str(" caps:")?;
            for name in names {
                write!(f, " {name}")?;
            }
        }
        Ok(())
    }
}

/// All functions found by [`crate::enumerate()`], sorted by address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceTable {
    /// The functions, sorted by address, each address once.
    pub devices: Vec<PciDevice>,
}

impl DeviceTable {
    /// Builds a table, sorting by address and dropping duplicate addresses (the
    /// first one of each address is kept).
    pub fn new(mut devices: Vec<PciDevice>) -> Self {
        devices.sort_by_key(|device| device.address);
        devices.dedup_by_key(|device| device.address);
        Self { devices }
    }

    /// The function at `address`.
    pub fn get(&self, address: PciAddress) -> Option<&PciDevice> {
        self.devices
            .binary_search_by_key(&address, |device| device.address)
            .ok()
            .map(|index| &self.devices[index])
    }

    /// All functions in address order.
    pub fn iter(&self) -> core::slice::Iter<'_, PciDevice> {
        self.devices.iter()
    }

    /// Number of functions.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether no function was found.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Functions directly below `bridge` (on its secondary bus).
    pub fn children_of(&self, bridge: PciAddress) -> impl Iterator<Item = &PciDevice> {
        self.devices
            .iter()
            .filter(move |device| device.parent == Some(bridge))
    }

    /// Bridges above `address`, nearest first, up to the root bus. Empty for a
    /// function on a root bus or not in the table.
    pub fn ancestors(&self, address: PciAddress) -> Vec<&PciDevice> {
        let mut chain = Vec::new();
        let mut next = self.get(address).and_then(|device| device.parent);
        // Parents form a tree by construction; the bound just makes that local.
        while let Some(parent) = next {
            if chain.len() >= self.devices.len() {
                break;
            }
            let Some(bridge) = self.get(parent) else {
                break;
            };
            chain.push(bridge);
            next = bridge.parent;
        }
        chain
    }
}

impl<'a> IntoIterator for &'a DeviceTable {
    type Item = &'a PciDevice;
    type IntoIter = core::slice::Iter<'a, PciDevice>;

    fn into_iter(self) -> Self::IntoIter {
        self.devices.iter()
    }
}
