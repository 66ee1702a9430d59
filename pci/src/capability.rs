//! Capability lists: what a function can do beyond the standard header.
//!
//! Two linked lists live in config space:
//! - the classic list, in the first 256 bytes: it starts at the pointer at 0x34
//!   (only if status bit 4 says there is a list); each entry is `id: u8, next: u8`
//!   followed by the capability's registers;
//! - the PCI Express extended list, from 0x100 to 0xFFF, present only on PCIe
//!   functions: each entry starts with a dword `id: 16 | version: 4 | next: 12`.
//!
//! Both lists are written by the device, so they are walked defensively: pointers
//! into the header or outside the list's area end the walk, a visited bitmap stops
//! loops (A→B→A), and the number of steps is capped by the number of slots.
//!
//! The walk keeps every (id, offset) it meets in [`Capabilities::classic`] and
//! [`Capabilities::extended`]; the few capabilities the hypervisor needs are then
//! decoded into typed values. Only the first instance of each is decoded.

use alloc::vec::Vec;

use bitflags::bitflags;

use crate::config::{ALL_ONES, CONFIG_SPACE_SIZE, reg};
use crate::{ConfigDefect, ConfigSpace, PciAddress};

/// Classic capability ids (PCI Code and ID Assignment spec, §2).
pub mod cap_id {
    /// PCI Power Management.
    pub const POWER_MANAGEMENT: u8 = 0x01;
    /// Message Signalled Interrupts.
    pub const MSI: u8 = 0x05;
    /// Vendor specific.
    pub const VENDOR_SPECIFIC: u8 = 0x09;
    /// PCI Express.
    pub const PCI_EXPRESS: u8 = 0x10;
    /// MSI-X.
    pub const MSIX: u8 = 0x11;
}

/// Extended capability ids (PCI Code and ID Assignment spec, §3).
pub mod ext_cap_id {
    /// Advanced Error Reporting.
    pub const AER: u16 = 0x0001;
    /// Access Control Services.
    pub const ACS: u16 = 0x000D;
    /// Alternative Routing-ID Interpretation.
    pub const ARI: u16 = 0x000E;
    /// Single Root I/O Virtualization.
    pub const SRIOV: u16 = 0x0010;
}

/// One entry of the classic capability list, undecoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClassicCapability {
    /// Capability id.
    pub id: u8,
    /// Config-space offset of the entry.
    pub offset: u8,
}

/// One entry of the extended capability list, undecoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExtendedCapability {
    /// Extended capability id.
    pub id: u16,
    /// Capability structure version.
    pub version: u8,
    /// Config-space offset of the entry.
    pub offset: u16,
}

/// Device/port type field of the PCI Express capability: where in the PCIe
/// hierarchy this function sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PciePortType {
    /// PCI Express endpoint.
    Endpoint,
    /// Legacy PCI Express endpoint (may use I/O and locked requests).
    LegacyEndpoint,
    /// Root port of a root complex.
    RootPort,
    /// Upstream port of a switch.
    UpstreamPort,
    /// Downstream port of a switch.
    DownstreamPort,
    /// PCI Express to PCI/PCI-X bridge.
    PcieToPciBridge,
    /// PCI/PCI-X to PCI Express bridge.
    PciToPcieBridge,
    /// Root-complex integrated endpoint (on the root bus, no link).
    RcIntegratedEndpoint,
    /// Root-complex event collector.
    RcEventCollector,
    /// A reserved encoding.
    Unknown(u8),
}

impl PciePortType {
    /// Decodes the 4-bit field.
    pub fn from_raw(value: u8) -> Self {
        match value & 0xF {
            0x0 => Self::Endpoint,
            0x1 => Self::LegacyEndpoint,
            0x4 => Self::RootPort,
            0x5 => Self::UpstreamPort,
            0x6 => Self::DownstreamPort,
            0x7 => Self::PcieToPciBridge,
            0x8 => Self::PciToPcieBridge,
            0x9 => Self::RcIntegratedEndpoint,
            0xA => Self::RcEventCollector,
            other => Self::Unknown(other),
        }
    }

    /// The 4-bit field value.
    pub fn raw(self) -> u8 {
        match self {
            Self::Endpoint => 0x0,
            Self::LegacyEndpoint => 0x1,
            Self::RootPort => 0x4,
            Self::UpstreamPort => 0x5,
            Self::DownstreamPort => 0x6,
            Self::PcieToPciBridge => 0x7,
            Self::PciToPcieBridge => 0x8,
            Self::RcIntegratedEndpoint => 0x9,
            Self::RcEventCollector => 0xA,
            Self::Unknown(other) => other & 0xF,
        }
    }
}

/// The PCI Express capability (id 0x10): marks a PCIe function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PcieCapability {
    /// Config-space offset of the capability.
    pub offset: u8,
    /// Capability structure version (1 or 2).
    pub version: u8,
    /// Where the function sits in the hierarchy.
    pub port_type: PciePortType,
    /// Ports only: the link leads to a slot (hot-plug capable, has slot registers).
    pub slot_implemented: bool,
    /// Function Level Reset supported (Device Capabilities bit 28): the function
    /// can be reset alone, which device assignment relies on.
    pub flr_supported: bool,
    /// The whole Device Capabilities register, for fields not decoded here.
    pub device_capabilities: u32,
}

/// MSI (id 0x05): interrupts as memory writes, up to 32 consecutive vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MsiCapability {
    /// Config-space offset of the capability.
    pub offset: u8,
    /// The message address register is 64 bits wide.
    pub is_64bit: bool,
    /// Per-vector mask and pending registers exist.
    pub per_vector_masking: bool,
    /// Vectors the function can request (Multiple Message Capable): 1, 2, 4, 8, 16
    /// or 32. Reserved encodings are clamped to 32.
    pub vectors: u8,
    /// MSI is currently enabled.
    pub enabled: bool,
}

/// MSI-X (id 0x11): up to 2048 vectors in a table inside one of the BARs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MsixCapability {
    /// Config-space offset of the capability.
    pub offset: u8,
    /// Number of table entries (1..=2048).
    pub table_size: u16,
    /// BAR holding the vector table (0..=5; validated, see [`ConfigDefect::MsixInvalidBir`]).
    pub table_bar: u8,
    /// Offset of the table within that BAR (8-byte aligned).
    pub table_offset: u32,
    /// BAR holding the pending bit array.
    pub pba_bar: u8,
    /// Offset of the pending bit array within that BAR.
    pub pba_offset: u32,
    /// MSI-X is currently enabled.
    pub enabled: bool,
    /// All vectors are currently masked (Function Mask).
    pub function_masked: bool,
}

/// PCI Power Management (id 0x01): D-states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PowerManagementCapability {
    /// Config-space offset of the capability.
    pub offset: u8,
    /// Version of the PM spec implemented (bits 2:0 of PMC).
    pub version: u8,
    /// D1 supported.
    pub d1_supported: bool,
    /// D2 supported.
    pub d2_supported: bool,
    /// No_Soft_Reset (PMCSR bit 3): going D3hot→D0 keeps the function's state, so a
    /// D3 round trip is *not* a usable reset.
    pub no_soft_reset: bool,
    /// Current power state, 0..=3 (D0..D3hot).
    pub power_state: u8,
}

bitflags! {
    /// ACS capability and control bits (PCIe Base spec, ACS Extended Capability).
    /// The capability register says which controls exist; the control register,
    /// with the same layout, which are enabled.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct AcsFlags: u16 {
        /// Source Validation: the port checks requester ids of upstream requests.
        const SOURCE_VALIDATION = 1 << 0;
        /// Translation Blocking: requests with pre-translated addresses are blocked.
        const TRANSLATION_BLOCKING = 1 << 1;
        /// P2P Request Redirect: peer-to-peer requests go up to the root complex.
        const REQUEST_REDIRECT = 1 << 2;
        /// P2P Completion Redirect.
        const COMPLETION_REDIRECT = 1 << 3;
        /// Upstream Forwarding.
        const UPSTREAM_FORWARDING = 1 << 4;
        /// P2P Egress Control.
        const EGRESS_CONTROL = 1 << 5;
        /// Direct Translated P2P.
        const DIRECT_TRANSLATED_P2P = 1 << 6;
    }
}

impl AcsFlags {
    /// The controls Linux requires enabled on every bridge up to the root before it
    /// counts a device as isolated (see the IOMMU-group rules).
    pub const ISOLATION: AcsFlags = AcsFlags::SOURCE_VALIDATION
        .union(AcsFlags::REQUEST_REDIRECT)
        .union(AcsFlags::COMPLETION_REDIRECT)
        .union(AcsFlags::UPSTREAM_FORWARDING);
}

/// Access Control Services (extended id 0x000D): whether a port keeps
/// peer-to-peer traffic from bypassing the IOMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AcsCapability {
    /// Config-space offset of the capability.
    pub offset: u16,
    /// Controls the port implements (bits 15:7 of the raw register are kept).
    pub capabilities: AcsFlags,
    /// Controls enabled (raw register value retained): as enumerated, then the
    /// read-back value once [`crate::enable_acs()`] has run.
    pub control: AcsFlags,
}

impl AcsCapability {
    /// Offset of the 16-bit ACS Control register within the capability.
    pub const CONTROL_REGISTER: u16 = 0x06;

    /// Config-space offset of the ACS Control register. It shares a dword with the
    /// read-only capability register, so `write16` there is safe.
    pub fn control_register_offset(&self) -> u16 {
        self.offset + Self::CONTROL_REGISTER
    }
}

/// Alternative Routing-ID Interpretation (extended id 0x000E): device number is
/// folded into the function number, allowing up to 256 functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AriCapability {
    /// Config-space offset of the capability.
    pub offset: u16,
    /// The next function number in this device's ARI chain (0 ends it).
    pub next_function: u8,
}

/// Single Root I/O Virtualization (extended id 0x0010): a physical function that
/// can spawn virtual functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SriovCapability {
    /// Config-space offset of the capability.
    pub offset: u16,
    /// VFs initially associated with the PF.
    pub initial_vfs: u16,
    /// Maximum VFs the PF supports.
    pub total_vfs: u16,
    /// VFs currently configured.
    pub num_vfs: u16,
    /// Routing-id offset of the first VF from the PF.
    pub first_vf_offset: u16,
    /// Routing-id distance between consecutive VFs.
    pub vf_stride: u16,
    /// Device id the VFs report.
    pub vf_device_id: u16,
}

/// Everything found in a function's capability lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Every classic capability met, in list order.
    pub classic: Vec<ClassicCapability>,
    /// Every extended capability met, in list order.
    pub extended: Vec<ExtendedCapability>,
    /// The PCI Express capability, if this is a PCIe function.
    pub pcie: Option<PcieCapability>,
    /// MSI.
    pub msi: Option<MsiCapability>,
    /// MSI-X.
    pub msix: Option<MsixCapability>,
    /// Power management.
    pub power_management: Option<PowerManagementCapability>,
    /// Access Control Services.
    pub acs: Option<AcsCapability>,
    /// Alternative Routing-ID Interpretation.
    pub ari: Option<AriCapability>,
    /// SR-IOV.
    pub sriov: Option<SriovCapability>,
}

impl Capabilities {
    /// Whether the function has Function Level Reset.
    pub fn flr_supported(&self) -> bool {
        self.pcie.is_some_and(|pcie| pcie.flr_supported)
    }

    /// Short names of the decoded capabilities in a fixed order, as the boot log
    /// prints them: `pcie msi msix pm acs ari sriov flr`.
    pub fn short_names(&self) -> impl Iterator<Item = &'static str> {
        [
            ("pcie", self.pcie.is_some()),
            ("msi", self.msi.is_some()),
            ("msix", self.msix.is_some()),
            ("pm", self.power_management.is_some()),
            ("acs", self.acs.is_some()),
            ("ari", self.ari.is_some()),
            ("sriov", self.sriov.is_some()),
            ("flr", self.flr_supported()),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
    }

    /// Offset of the first classic capability with `id`.
    pub fn find_classic(&self, id: u8) -> Option<u8> {
        self.classic
            .iter()
            .find(|cap| cap.id == id)
            .map(|cap| cap.offset)
    }

    /// Offset of the first extended capability with `id`.
    pub fn find_extended(&self, id: u16) -> Option<u16> {
        self.extended
            .iter()
            .find(|cap| cap.id == id)
            .map(|cap| cap.offset)
    }
}

/// Classic capabilities live in 0x40..0x100: 48 dword slots.
const CLASSIC_SLOTS: usize = 48;
/// Extended capabilities live in 0x100..0x1000: 960 dword slots.
const EXTENDED_SLOTS: usize = (CONFIG_SPACE_SIZE as usize - 0x100) / 4;

/// Registers the typed decoders read, per capability (bytes from its start). A
/// capability that would not fit in its area is kept in the raw list only.
const PCIE_READ_LENGTH: u16 = 0x08;
const MSI_READ_LENGTH: u16 = 0x04;
const MSIX_LENGTH: u16 = 0x0C;
const PM_READ_LENGTH: u16 = 0x06;
const ACS_READ_LENGTH: u16 = 0x08;
const ARI_READ_LENGTH: u16 = 0x08;
const SRIOV_LENGTH: u16 = 0x40;

/// Walks and decodes both capability lists of `addr`.
///
/// `header_type` (low 7 bits) picks where the list pointer is; `status` says
/// whether there is a list at all. The extended list is only walked for PCIe
/// functions: on conventional PCI, offsets past 0xFF are not the function's.
pub(crate) fn read_capabilities(
    cfg: &dyn ConfigSpace,
    addr: PciAddress,
    header_type: u8,
    status: u16,
    defects: &mut Vec<ConfigDefect>,
) -> Capabilities {
    let mut caps = Capabilities::default();
    let pointer_register = match header_type {
        reg::HEADER_TYPE_ENDPOINT | reg::HEADER_TYPE_BRIDGE => reg::CAPABILITY_POINTER,
        reg::HEADER_TYPE_CARDBUS => reg::CARDBUS_CAPABILITY_POINTER,
        _ => return caps,
    };
    if status & reg::STATUS_CAPABILITY_LIST == 0 {
        return caps;
    }
    caps.classic = walk_classic(cfg, addr, pointer_register, defects);
    decode_classic(cfg, addr, &mut caps, defects);
    if caps.pcie.is_some() {
        caps.extended = walk_extended(cfg, addr, defects);
        decode_extended(cfg, addr, &mut caps, defects);
    }
    caps
}

/// Follows the classic list from the pointer at `pointer_register`.
fn walk_classic(
    cfg: &dyn ConfigSpace,
    addr: PciAddress,
    pointer_register: u16,
    defects: &mut Vec<ConfigDefect>,
) -> Vec<ClassicCapability> {
    let mut list = Vec::new();
    let mut visited = [false; CLASSIC_SLOTS];
    // The low two bits of every pointer are reserved and must be ignored.
    let mut pointer = cfg.read8(addr, pointer_register) & 0xFC;
    // Each step marks a fresh slot, so the visited check alone bounds the walk;
    // the explicit cap keeps that obvious.
    for _ in 0..CLASSIC_SLOTS {
        if pointer == 0 {
            break;
        }
        if pointer < reg::FIRST_CAPABILITY_OFFSET {
            defects.push(ConfigDefect::CapabilityPointerIntoHeader { pointer });
            break;
        }
        let slot = usize::from((pointer - reg::FIRST_CAPABILITY_OFFSET) / 4);
        if visited[slot] {
            defects.push(ConfigDefect::CapabilityLoop { pointer });
            break;
        }
        visited[slot] = true;
        let header = cfg.read16(addr, u16::from(pointer));
        let id = header as u8;
        // Id 0xFF is not assigned; it is what an absent or surprise-removed
        // function returns, so the list ends.
        if id == 0xFF {
            break;
        }
        list.push(ClassicCapability {
            id,
            offset: pointer,
        });
        pointer = (header >> 8) as u8 & 0xFC;
    }
    list
}

/// Follows the extended list from 0x100.
fn walk_extended(
    cfg: &dyn ConfigSpace,
    addr: PciAddress,
    defects: &mut Vec<ConfigDefect>,
) -> Vec<ExtendedCapability> {
    let mut list = Vec::new();
    let mut visited = [false; EXTENDED_SLOTS];
    let mut pointer = reg::EXTENDED_CAPABILITIES_OFFSET;
    for _ in 0..EXTENDED_SLOTS {
        if pointer < reg::EXTENDED_CAPABILITIES_OFFSET
            || pointer % 4 != 0
            || pointer >= CONFIG_SPACE_SIZE
        {
            defects.push(ConfigDefect::ExtendedPointerInvalid { pointer });
            break;
        }
        let slot = usize::from((pointer - reg::EXTENDED_CAPABILITIES_OFFSET) / 4);
        if visited[slot] {
            defects.push(ConfigDefect::ExtendedCapabilityLoop { pointer });
            break;
        }
        visited[slot] = true;
        let header = cfg.read32(addr, pointer);
        // 0: no extended capabilities at all; all-ones: nothing answers there
        // (e.g. a PCIe function reached through a non-ECAM path).
        if header == 0 || header == ALL_ONES {
            break;
        }
        list.push(ExtendedCapability {
            id: header as u16,
            version: ((header >> 16) & 0xF) as u8,
            offset: pointer,
        });
        let next = (header >> 20) as u16;
        if next == 0 {
            break;
        }
        pointer = next;
    }
    list
}

/// Whether `length` bytes from `offset` stay below `end`; if not, records it.
fn fits(id: u16, offset: u16, length: u16, end: u16, defects: &mut Vec<ConfigDefect>) -> bool {
    let fits = u32::from(offset) + u32::from(length) <= u32::from(end);
    if !fits {
        defects.push(ConfigDefect::CapabilityTruncated { id, offset });
    }
    fits
}

fn decode_classic(
    cfg: &dyn ConfigSpace,
    addr: PciAddress,
    caps: &mut Capabilities,
    defects: &mut Vec<ConfigDefect>,
) {
    const END: u16 = 0x100;
    for entry in caps.classic.clone() {
        let (id, at, offset) = (u16::from(entry.id), u16::from(entry.offset), entry.offset);
        match entry.id {
            cap_id::PCI_EXPRESS if caps.pcie.is_none() => {
                caps.pcie = fits(id, at, PCIE_READ_LENGTH, END, defects)
                    .then(|| decode_pcie(cfg, addr, offset));
            }
            cap_id::MSI if caps.msi.is_none() => {
                caps.msi = fits(id, at, MSI_READ_LENGTH, END, defects)
                    .then(|| decode_msi(cfg, addr, offset));
            }
            cap_id::MSIX if caps.msix.is_none() => {
                caps.msix = fits(id, at, MSIX_LENGTH, END, defects)
                    .then(|| decode_msix(cfg, addr, offset, defects));
            }
            cap_id::POWER_MANAGEMENT if caps.power_management.is_none() => {
                caps.power_management = fits(id, at, PM_READ_LENGTH, END, defects)
                    .then(|| decode_power_management(cfg, addr, offset));
            }
            _ => {}
        }
    }
}

fn decode_extended(
    cfg: &dyn ConfigSpace,
    addr: PciAddress,
    caps: &mut Capabilities,
    defects: &mut Vec<ConfigDefect>,
) {
    const END: u16 = CONFIG_SPACE_SIZE;
    for entry in caps.extended.clone() {
        let (id, at) = (entry.id, entry.offset);
        match id {
            ext_cap_id::ACS if caps.acs.is_none() => {
                caps.acs = fits(id, at, ACS_READ_LENGTH, END, defects).then(|| AcsCapability {
                    offset: at,
                    capabilities: AcsFlags::from_bits_retain(cfg.read16(addr, at + 4)),
                    control: AcsFlags::from_bits_retain(cfg.read16(addr, at + 6)),
                });
            }
            ext_cap_id::ARI if caps.ari.is_none() => {
                caps.ari = fits(id, at, ARI_READ_LENGTH, END, defects).then(|| AriCapability {
                    offset: at,
                    next_function: (cfg.read16(addr, at + 4) >> 8) as u8,
                });
            }
            ext_cap_id::SRIOV if caps.sriov.is_none() => {
                caps.sriov = fits(id, at, SRIOV_LENGTH, END, defects).then(|| SriovCapability {
                    offset: at,
                    initial_vfs: cfg.read16(addr, at + 0x0C),
                    total_vfs: cfg.read16(addr, at + 0x0E),
                    num_vfs: cfg.read16(addr, at + 0x10),
                    first_vf_offset: cfg.read16(addr, at + 0x14),
                    vf_stride: cfg.read16(addr, at + 0x16),
                    vf_device_id: cfg.read16(addr, at + 0x1A),
                });
            }
            _ => {}
        }
    }
}

fn decode_pcie(cfg: &dyn ConfigSpace, addr: PciAddress, offset: u8) -> PcieCapability {
    let at = u16::from(offset);
    // PCI Express Capabilities register: version 3:0, port type 7:4, slot 8.
    let flags = cfg.read16(addr, at + 2);
    let device_capabilities = cfg.read32(addr, at + 4);
    PcieCapability {
        offset,
        version: (flags & 0xF) as u8,
        port_type: PciePortType::from_raw(((flags >> 4) & 0xF) as u8),
        slot_implemented: flags & (1 << 8) != 0,
        flr_supported: device_capabilities & (1 << 28) != 0,
        device_capabilities,
    }
}

fn decode_msi(cfg: &dyn ConfigSpace, addr: PciAddress, offset: u8) -> MsiCapability {
    // Message Control: enable 0, multiple message capable 3:1, 64-bit 7, masking 8.
    let control = cfg.read16(addr, u16::from(offset) + 2);
    let log2_vectors = ((control >> 1) & 0x7).min(5);
    MsiCapability {
        offset,
        is_64bit: control & (1 << 7) != 0,
        per_vector_masking: control & (1 << 8) != 0,
        vectors: 1 << log2_vectors,
        enabled: control & 1 != 0,
    }
}

fn decode_msix(
    cfg: &dyn ConfigSpace,
    addr: PciAddress,
    offset: u8,
    defects: &mut Vec<ConfigDefect>,
) -> MsixCapability {
    let at = u16::from(offset);
    // Message Control: table size - 1 in 10:0, function mask 14, enable 15.
    let control = cfg.read16(addr, at + 2);
    // Table and PBA registers: BAR indicator in 2:0, 8-byte aligned offset above.
    let table = cfg.read32(addr, at + 4);
    let pba = cfg.read32(addr, at + 8);
    let (table_bar, pba_bar) = ((table & 0x7) as u8, (pba & 0x7) as u8);
    for bir in [table_bar, pba_bar] {
        if bir > 5 {
            defects.push(ConfigDefect::MsixInvalidBir { bir });
        }
    }
    MsixCapability {
        offset,
        table_size: (control & 0x7FF) + 1,
        table_bar,
        table_offset: table & !0x7,
        pba_bar,
        pba_offset: pba & !0x7,
        enabled: control & (1 << 15) != 0,
        function_masked: control & (1 << 14) != 0,
    }
}

fn decode_power_management(
    cfg: &dyn ConfigSpace,
    addr: PciAddress,
    offset: u8,
) -> PowerManagementCapability {
    let at = u16::from(offset);
    // PMC: version 2:0, D1 9, D2 10. PMCSR: power state 1:0, No_Soft_Reset 3.
    let capabilities = cfg.read16(addr, at + 2);
    let control_status = cfg.read16(addr, at + 4);
    PowerManagementCapability {
        offset,
        version: (capabilities & 0x7) as u8,
        d1_supported: capabilities & (1 << 9) != 0,
        d2_supported: capabilities & (1 << 10) != 0,
        no_soft_reset: control_status & (1 << 3) != 0,
        power_state: (control_status & 0x3) as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeConfigSpace, FakeFunction};
    use alloc::vec;

    const DEV: PciAddress = PciAddress::new(0, 3, 0, 0);

    fn read(cfg: &FakeConfigSpace) -> (Capabilities, Vec<ConfigDefect>) {
        let mut defects = Vec::new();
        let header_type = cfg.read8(DEV, reg::HEADER_TYPE) & 0x7F;
        let status = cfg.read16(DEV, reg::STATUS);
        let caps = read_capabilities(cfg, DEV, header_type, status, &mut defects);
        (caps, defects)
    }

    #[test]
    fn decodes_every_known_capability() {
        let acs_caps = AcsFlags::SOURCE_VALIDATION
            | AcsFlags::REQUEST_REDIRECT
            | AcsFlags::COMPLETION_REDIRECT
            | AcsFlags::UPSTREAM_FORWARDING
            | AcsFlags::EGRESS_CONTROL;
        let cfg = FakeConfigSpace::new().with(
            DEV,
            FakeFunction::endpoint(0x8086, 0x10fb, 0x02_00_00)
                .with_pcie_flags(PciePortType::Endpoint, true, false)
                .with_power_management(true, false, true)
                .with_msi(3, true, true)
                .with_msix(64, 2, 0x2000, 4, 0x3000)
                .with_capability(cap_id::VENDOR_SPECIFIC, &[4, 0, 0, 0])
                .with_extended_capability(ext_cap_id::AER, 2, &[0; 0x44])
                .with_acs(acs_caps, AcsFlags::SOURCE_VALIDATION)
                .with_ari(2)
                .with_sriov(8, 64, 4, 0x80, 2, 0x10ed),
        );
        let (caps, defects) = read(&cfg);
        assert!(defects.is_empty(), "{defects:?}");

        let pcie = caps.pcie.expect("pcie");
        assert_eq!(pcie.version, 2);
        assert_eq!(pcie.port_type, PciePortType::Endpoint);
        assert!(pcie.flr_supported && caps.flr_supported());
        assert!(!pcie.slot_implemented);

        let pm = caps.power_management.expect("pm");
        assert_eq!(
            (
                pm.version,
                pm.d1_supported,
                pm.d2_supported,
                pm.no_soft_reset,
                pm.power_state
            ),
            (3, true, false, true, 0)
        );

        let msi = caps.msi.expect("msi");
        assert_eq!(
            (
                msi.vectors,
                msi.is_64bit,
                msi.per_vector_masking,
                msi.enabled
            ),
            (8, true, true, false)
        );

        let msix = caps.msix.expect("msix");
        assert_eq!(
            (
                msix.table_size,
                msix.table_bar,
                msix.table_offset,
                msix.pba_bar,
                msix.pba_offset
            ),
            (64, 2, 0x2000, 4, 0x3000)
        );

        let acs = caps.acs.expect("acs");
        assert_eq!(acs.capabilities, acs_caps);
        assert_eq!(acs.control, AcsFlags::SOURCE_VALIDATION);
        assert_eq!(
            cfg.read16(DEV, acs.control_register_offset()),
            AcsFlags::SOURCE_VALIDATION.bits()
        );
        assert!(acs.capabilities.contains(AcsFlags::ISOLATION));

        assert_eq!(caps.ari.expect("ari").next_function, 2);

        let sriov = caps.sriov.expect("sriov");
        assert_eq!(
            (
                sriov.initial_vfs,
                sriov.total_vfs,
                sriov.num_vfs,
                sriov.first_vf_offset,
                sriov.vf_stride,
                sriov.vf_device_id
            ),
            (8, 64, 4, 0x80, 2, 0x10ed)
        );

        let classic_ids: Vec<u8> = caps.classic.iter().map(|c| c.id).collect();
        assert_eq!(classic_ids, vec![0x10, 0x01, 0x05, 0x11, 0x09]);
        assert_eq!(caps.classic[0].offset, 0x40);
        let extended: Vec<(u16, u8)> = caps.extended.iter().map(|c| (c.id, c.version)).collect();
        assert_eq!(
            extended,
            vec![(0x0001, 2), (0x000D, 1), (0x000E, 1), (0x0010, 1)]
        );
        assert_eq!(caps.extended[0].offset, 0x100);
        assert_eq!(caps.find_extended(ext_cap_id::ACS), Some(acs.offset));
        assert_eq!(caps.find_classic(cap_id::MSIX), Some(msix.offset));

        let names: Vec<&str> = caps.short_names().collect();
        assert_eq!(
            names,
            vec!["pcie", "msi", "msix", "pm", "acs", "ari", "sriov", "flr"]
        );
    }

    /// Hand-placed bytes, independent of the fake's capability builders, so a
    /// builder and a decoder that agree on a wrong layout cannot both pass.
    #[test]
    fn decodes_hand_written_registers_at_spec_offsets() {
        let cfg = FakeConfigSpace::new().with(
            DEV,
            FakeFunction::conventional_endpoint(1, 2)
                .with_u16(reg::STATUS, reg::STATUS_CAPABILITY_LIST)
                .with_u8(reg::CAPABILITY_POINTER, 0x50)
                // MSI at 0x50 -> 0x60: control = 32-bit, 4 vectors capable, enabled.
                .with_u32(0x50, 0x0005_6005)
                // MSI-X at 0x60 -> 0x70: 3 entries (field 2), enabled; table BAR 1 at
                // 0x800, PBA BAR 1 at 0xC00.
                .with_u32(0x60, 0x8002_7011)
                .with_u32(0x64, 0x0000_0801)
                .with_u32(0x68, 0x0000_0C01)
                // PCIe at 0x70, end: v2 root port with slot; DevCap FLR bit.
                .with_u32(0x70, 0x0142_0010)
                .with_u32(0x74, 0x1000_0000)
                // Extended: ACS at 0x100 -> 0x140, ARI at 0x140, end.
                .with_u32(0x100, 0x1401_000D)
                .with_u32(0x104, 0x001D_005F)
                .with_u32(0x140, 0x0001_000E)
                .with_u32(0x144, 0x0000_0300),
        );
        let (caps, defects) = read(&cfg);
        assert!(defects.is_empty(), "{defects:?}");
        let msi = caps.msi.unwrap();
        assert_eq!(
            (msi.offset, msi.vectors, msi.is_64bit, msi.enabled),
            (0x50, 4, false, true)
        );
        let msix = caps.msix.unwrap();
        assert_eq!(
            (
                msix.table_size,
                msix.table_bar,
                msix.table_offset,
                msix.pba_offset,
                msix.enabled
            ),
            (3, 1, 0x800, 0xC00, true)
        );
        let pcie = caps.pcie.unwrap();
        assert_eq!(pcie.port_type, PciePortType::RootPort);
        assert!(pcie.slot_implemented && pcie.flr_supported);
        let acs = caps.acs.unwrap();
        assert_eq!(acs.offset, 0x100);
        assert_eq!(acs.capabilities.bits(), 0x005F);
        assert_eq!(acs.control.bits(), 0x001D);
        assert_eq!(acs.control_register_offset(), 0x106);
        assert_eq!(caps.ari.unwrap().next_function, 3);
    }

    #[test]
    fn no_list_unless_status_says_so() {
        let cfg = FakeConfigSpace::new().with(
            DEV,
            FakeFunction::pcie_endpoint(1, 2).with_u16(reg::STATUS, 0),
        );
        let (caps, _) = read(&cfg);
        assert_eq!(caps, Capabilities::default());
    }

    #[test]
    fn extended_list_needs_a_pcie_capability() {
        let cfg = FakeConfigSpace::new().with(
            DEV,
            FakeFunction::conventional_endpoint(1, 2)
                .with_power_management(false, false, false)
                .with_acs(AcsFlags::all(), AcsFlags::empty()),
        );
        let (caps, _) = read(&cfg);
        assert!(caps.extended.is_empty() && caps.acs.is_none());
        assert!(caps.power_management.is_some());
    }

    #[test]
    fn classic_loop_terminates() {
        // 0x40 -> 0x50 -> 0x40
        let cfg = FakeConfigSpace::new().with(
            DEV,
            FakeFunction::conventional_endpoint(1, 2)
                .with_u16(reg::STATUS, reg::STATUS_CAPABILITY_LIST)
                .with_u8(reg::CAPABILITY_POINTER, 0x40)
                .with_u16(0x40, 0x5001)
                .with_u16(0x50, 0x4005),
        );
        let (caps, defects) = read(&cfg);
        assert_eq!(caps.classic.len(), 2);
        assert!(caps.msi.is_some() && caps.power_management.is_some());
        assert_eq!(
            defects,
            vec![ConfigDefect::CapabilityLoop { pointer: 0x40 }]
        );
    }

    #[test]
    fn classic_self_loop_and_low_bits_are_handled() {
        // Points to itself with the reserved low bits set: 0x63 & 0xFC == 0x60.
        let cfg = FakeConfigSpace::new().with(
            DEV,
            FakeFunction::conventional_endpoint(1, 2)
                .with_u16(reg::STATUS, reg::STATUS_CAPABILITY_LIST)
                .with_u8(reg::CAPABILITY_POINTER, 0x62)
                .with_u16(0x60, 0x6309),
        );
        let (caps, defects) = read(&cfg);
        assert_eq!(
            caps.classic,
            vec![ClassicCapability {
                id: 9,
                offset: 0x60
            }]
        );
        assert_eq!(
            defects,
            vec![ConfigDefect::CapabilityLoop { pointer: 0x60 }]
        );
    }

    #[test]
    fn pointer_into_the_header_ends_the_walk() {
        let cfg = FakeConfigSpace::new().with(
            DEV,
            FakeFunction::conventional_endpoint(1, 2)
                .with_u16(reg::STATUS, reg::STATUS_CAPABILITY_LIST)
                .with_u8(reg::CAPABILITY_POINTER, 0x40)
                .with_u16(0x40, 0x1001), // next = 0x10: a BAR
        );
        let (caps, defects) = read(&cfg);
        assert_eq!(caps.classic.len(), 1);
        assert_eq!(
            defects,
            vec![ConfigDefect::CapabilityPointerIntoHeader { pointer: 0x10 }]
        );
    }

    #[test]
    fn capability_running_past_the_classic_area_is_not_decoded() {
        // MSI-X needs 12 bytes; at 0xF8 it would run into extended space.
        let cfg = FakeConfigSpace::new().with(
            DEV,
            FakeFunction::conventional_endpoint(1, 2)
                .with_u16(reg::STATUS, reg::STATUS_CAPABILITY_LIST)
                .with_u8(reg::CAPABILITY_POINTER, 0xF8)
                .with_u16(0xF8, 0x0011),
        );
        let (caps, defects) = read(&cfg);
        assert_eq!(caps.classic.len(), 1);
        assert!(caps.msix.is_none());
        assert_eq!(
            defects,
            vec![ConfigDefect::CapabilityTruncated {
                id: 0x11,
                offset: 0xF8
            }]
        );
    }

    #[test]
    fn extended_loop_terminates() {
        // 0x100 -> 0x200 -> 0x100
        let cfg = FakeConfigSpace::new().with(
            DEV,
            FakeFunction::pcie_endpoint(1, 2)
                .with_u32(0x100, 0x2001_0001)
                .with_u32(0x200, 0x1001_000D),
        );
        let (caps, defects) = read(&cfg);
        assert_eq!(caps.extended.len(), 2);
        assert!(caps.acs.is_some());
        assert_eq!(
            defects,
            vec![ConfigDefect::ExtendedCapabilityLoop { pointer: 0x100 }]
        );
    }

    #[test]
    fn extended_pointer_below_0x100_or_unaligned_ends_the_walk() {
        for (next, expected_pointer) in [(0x0F0u32, 0x0F0u16), (0x102, 0x102), (0xFFF, 0xFFF)] {
            let cfg = FakeConfigSpace::new().with(
                DEV,
                FakeFunction::pcie_endpoint(1, 2).with_u32(0x100, (next << 20) | 0x0001_0001),
            );
            let (caps, defects) = read(&cfg);
            assert_eq!(caps.extended.len(), 1);
            assert_eq!(
                defects,
                vec![ConfigDefect::ExtendedPointerInvalid {
                    pointer: expected_pointer
                }]
            );
        }
    }

    #[test]
    fn extended_capability_running_past_4k_is_not_decoded() {
        // SR-IOV is 0x40 bytes; at 0xFF0 it does not fit.
        let cfg = FakeConfigSpace::new().with(
            DEV,
            FakeFunction::pcie_endpoint(1, 2)
                .with_u32(0x100, 0xFF01_0001)
                .with_u32(0xFF0, 0x0001_0010),
        );
        let (caps, defects) = read(&cfg);
        assert_eq!(caps.extended.len(), 2);
        assert!(caps.sriov.is_none());
        assert_eq!(
            defects,
            vec![ConfigDefect::CapabilityTruncated {
                id: 0x10,
                offset: 0xFF0
            }]
        );
    }

    #[test]
    fn invalid_msix_bir_is_reported() {
        let cfg = FakeConfigSpace::new().with(
            DEV,
            FakeFunction::conventional_endpoint(1, 2).with_msix(4, 7, 0, 0, 0x100),
        );
        let (caps, defects) = read(&cfg);
        assert_eq!(caps.msix.unwrap().table_bar, 7);
        assert_eq!(defects, vec![ConfigDefect::MsixInvalidBir { bir: 7 }]);
    }

    #[test]
    fn msi_reserved_vector_encoding_is_clamped() {
        let cfg = FakeConfigSpace::new().with(
            DEV,
            FakeFunction::conventional_endpoint(1, 2).with_msi(7, false, false),
        );
        assert_eq!(read(&cfg).0.msi.unwrap().vectors, 32);
    }

    #[test]
    fn longest_possible_chains_are_walked_completely() {
        // 48 classic capabilities back to back fill 0x40..0x100.
        let mut function = FakeFunction::conventional_endpoint(1, 2);
        for _ in 0..48 {
            function = function.with_capability(cap_id::VENDOR_SPECIFIC, &[0, 0]);
        }
        assert_eq!(function.last_classic_offset(), Some(0xFC));
        let cfg = FakeConfigSpace::new().with(DEV, function);
        let (caps, defects) = read(&cfg);
        assert!(defects.is_empty(), "{defects:?}");
        assert_eq!(caps.classic.len(), 48);

        // 960 four-byte extended capabilities fill 0x100..0x1000.
        let mut function = FakeFunction::pcie_endpoint(1, 2);
        for _ in 0..960 {
            function = function.with_extended_capability(0x000B, 1, &[]);
        }
        let cfg = FakeConfigSpace::new().with(DEV, function);
        let (caps, defects) = read(&cfg);
        assert!(defects.is_empty(), "{defects:?}");
        assert_eq!(caps.extended.len(), 960);
        assert_eq!(caps.extended.last().map(|c| c.offset), Some(0xFFC));
    }
}
