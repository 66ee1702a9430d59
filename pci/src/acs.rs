//! Access Control Services: turning peer-to-peer isolation on, and asking whether a
//! function counts as isolated.
//!
//! An IOMMU only sees DMA that reaches the root complex. A switch (or a
//! multifunction device) could route a request from one of its devices straight to
//! a sibling, and the IOMMU would never see it. ACS is the PCIe feature that stops
//! that: with Source Validation, P2P Request Redirect, P2P Completion Redirect and
//! Upstream Forwarding enabled ([`AcsFlags::ISOLATION`], Linux's `REQ_ACS_FLAGS`), a
//! port sends its downstream devices' traffic up to the root instead.
//!
//! Two halves, both mirroring Linux (`drivers/pci/pci.c`), without Linux's
//! device-specific quirks:
//! - [`enable_acs()`] is `pci_std_enable_acs`: set whichever of those four controls
//!   the capability supports, leave every other control bit as firmware left it.
//!   Unlike Linux it reads the register back and keeps *that* in the table, so IOMMU
//!   grouping trusts what the hardware holds, not what was asked for (a control
//!   that ignores the write must not make a device look isolated).
//! - [`acs_enabled()`], [`acs_flags_enabled()`] and [`acs_path_enabled()`] are
//!   `pci_acs_enabled`, `pci_acs_flags_enabled` and `pci_acs_path_enabled`: the
//!   *effective* ACS of a function, where "not applicable" counts as enabled (a
//!   single-function endpoint has no peer to talk to) and conventional PCI never
//!   counts (a shared bus lets every device see every transaction).
//!
//! The predicates read the [`DeviceTable`] snapshot, not config space: call
//! [`enable_acs()`] first so the snapshot holds the read-back control values.

use alloc::vec::Vec;
use core::fmt;

use crate::{AcsFlags, ConfigSpace, DeviceTable, PciAddress, PciDevice, PciePortType};

/// The most bridges [`acs_path_enabled()`] follows before giving up on a parent
/// chain as corrupt (real chains are at most a few dozen long).
pub const MAX_PATH_HOPS: usize = 256;

/// What [`enable_acs()`] did to one function's ACS Control register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcsChange {
    /// The function.
    pub address: PciAddress,
    /// Its ACS Capability register (what it implements).
    pub capabilities: AcsFlags,
    /// The control register before the write.
    pub before: AcsFlags,
    /// The value written: `before` plus every supported bit of
    /// [`AcsFlags::ISOLATION`].
    pub requested: AcsFlags,
    /// The control register read back after the write; this is what the table
    /// now holds.
    pub after: AcsFlags,
    /// Whether the read-back equals the value written. False also when the
    /// register read all-ones (function gone): then nothing was written and the
    /// table records no control bit enabled.
    pub write_stuck: bool,
}

impl AcsChange {
    /// Whether the control register holds a different value than before.
    pub fn changed(&self) -> bool {
        self.before != self.after
    }
}

/// `0000:00:01.0 ACS control 0x0000 -> 0x001d (caps 0x005f)`, then `, ignored:
/// wrote 0x001d` when the read-back differs from what was written.
impl fmt::Display for AcsChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ACS control {:#06x} -> {:#06x} (caps {:#06x})",
            self.address,
            self.before.bits(),
            self.after.bits(),
            self.capabilities.bits()
        )?;
        if !self.write_stuck {
            write!(f, ", ignored: wrote {:#06x}", self.requested.bits())?;
        }
        Ok(())
    }
}

/// Enables the isolation controls on every function with an ACS capability, as
/// Linux's `pci_std_enable_acs` does, and stores the read-back control value in
/// the table (`capabilities.acs.control`).
///
/// For each such function: read ACS Control, set the bits of Source Validation,
/// Request Redirect, Completion Redirect and Upstream Forwarding that the ACS
/// Capability register advertises, leave all other bits (Translation Blocking,
/// Egress Control, Direct Translated P2P, ...) unchanged, write, read back.
/// Linux writes even when nothing changes; so does this (it is harmless).
///
/// A control register that reads all-ones (the function no longer answers) is not
/// written, and the table then records no control bit as enabled, so the function
/// is treated as not isolating.
///
/// Returns one [`AcsChange`] per function with an ACS capability, in table order.
pub fn enable_acs(cfg: &dyn ConfigSpace, table: &mut DeviceTable) -> Vec<AcsChange> {
    let mut changes = Vec::new();
    for device in &mut table.devices {
        let address = device.address;
        let Some(acs) = device.capabilities.acs.as_mut() else {
            continue;
        };
        let register = acs.control_register_offset();
        let before = cfg.read16(address, register);
        if before == 0xFFFF {
            log::warn!("pci: {address}: ACS control reads all-ones; not enabling ACS");
            acs.control = AcsFlags::empty();
            changes.push(AcsChange {
                address,
                capabilities: acs.capabilities,
                before: AcsFlags::from_bits_retain(before),
                requested: AcsFlags::from_bits_retain(before),
                after: AcsFlags::empty(),
                write_stuck: false,
            });
            continue;
        }
        let requested = before | (acs.capabilities.bits() & AcsFlags::ISOLATION.bits());
        // ACS Control shares its dword with the read-only ACS Capability register,
        // so the read-modify-write of `write16` rewrites nothing that can change.
        cfg.write16(address, register, requested);
        let after = cfg.read16(address, register);
        acs.control = AcsFlags::from_bits_retain(after);
        let change = AcsChange {
            address,
            capabilities: acs.capabilities,
            before: AcsFlags::from_bits_retain(before),
            requested: AcsFlags::from_bits_retain(requested),
            after: AcsFlags::from_bits_retain(after),
            write_stuck: after == requested,
        };
        if change.write_stuck {
            log::debug!("pci: {change}");
        } else {
            log::warn!("pci: {change}");
        }
        changes.push(change);
    }
    changes
}

/// Whether a function counts as part of a multifunction device, as Linux decides
/// it (`pci_dev.multifunction`): function 0 by bit 7 of its header type, every
/// other function always (`pci_scan_slot` sets the flag for any function found
/// after function 0, whatever its own header type says).
pub fn is_multifunction(device: &PciDevice) -> bool {
    device.multifunction || device.address.function != 0
}

/// Linux's `pci_acs_flags_enabled`: whether the function's ACS Control holds all
/// of `flags`, where controls its ACS Capability does not advertise count as
/// hard-wired on (the spec makes them "required only if controllable"), except
/// Egress Control, which is only ever on if enabled. No ACS capability: false.
pub fn acs_flags_enabled(device: &PciDevice, flags: AcsFlags) -> bool {
    let Some(acs) = device.capabilities.acs else {
        return false;
    };
    let required = flags.bits() & (acs.capabilities.bits() | AcsFlags::EGRESS_CONTROL.bits());
    acs.control.bits() & required == required
}

/// Linux's `pci_acs_enabled` without device-specific quirks: whether the function
/// effectively provides the ACS controls in `flags`.
///
/// - No PCI Express capability (conventional PCI, PCI-X): false. A shared bus
///   lets any device receive or snoop any other's DMA.
/// - PCIe-to-PCI bridges, PCI-to-PCIe bridges and root-complex event collectors:
///   false (the spec excludes ACS there; Linux takes that conservatively).
/// - Root ports and switch downstream ports: [`acs_flags_enabled()`], whether
///   single- or multifunction.
/// - Endpoints, legacy endpoints, switch upstream ports and root-complex integrated
///   endpoints: [`acs_flags_enabled()`] if part of a multifunction device (see
///   [`is_multifunction()`]), else true: a single function has no peer to reach.
/// - Reserved port types: true, as in Linux (they fall out of its `switch`).
pub fn acs_enabled(device: &PciDevice, flags: AcsFlags) -> bool {
    let Some(pcie) = device.capabilities.pcie else {
        return false;
    };
    match pcie.port_type {
        PciePortType::PciToPcieBridge
        | PciePortType::PcieToPciBridge
        | PciePortType::RcEventCollector => false,
        PciePortType::DownstreamPort | PciePortType::RootPort => acs_flags_enabled(device, flags),
        PciePortType::Endpoint
        | PciePortType::UpstreamPort
        | PciePortType::LegacyEndpoint
        | PciePortType::RcIntegratedEndpoint => {
            !is_multifunction(device) || acs_flags_enabled(device, flags)
        }
        PciePortType::Unknown(_) => true,
    }
}

/// Linux's `pci_acs_path_enabled(start, NULL, flags)`: whether `start` and every
/// bridge above it up to its root bus satisfy [`acs_enabled()`].
///
/// False if `start` is not in the table, if a parent is missing from it, or if the
/// chain is longer than [`MAX_PATH_HOPS`] (a corrupt, looping table): an unknown
/// path is not an isolating one.
pub fn acs_path_enabled(table: &DeviceTable, start: PciAddress, flags: AcsFlags) -> bool {
    path_enabled(|address| table.get(address), start, flags)
}

/// [`acs_path_enabled()`] over any lookup (the grouping code has its own index).
pub(crate) fn path_enabled<'a>(
    lookup: impl Fn(PciAddress) -> Option<&'a PciDevice>,
    start: PciAddress,
    flags: AcsFlags,
) -> bool {
    let mut next = start;
    for _ in 0..=MAX_PATH_HOPS {
        let Some(device) = lookup(next) else {
            return false;
        };
        if !acs_enabled(device, flags) {
            return false;
        }
        match device.parent {
            None => return true,
            Some(parent) => next = parent,
        }
    }
    log::warn!("pci: parent chain above {start} is longer than {MAX_PATH_HOPS}; not isolated");
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeConfigSpace, FakeFunction};
    use crate::{EcamRegion, enumerate};
    use alloc::format;

    const WINDOW: EcamRegion = EcamRegion {
        segment: 0,
        bus_start: 0,
        bus_end: 255,
        base: 0xB000_0000,
    };

    fn at(bus: u8, device: u8, function: u8) -> PciAddress {
        PciAddress::new(0, bus, device, function)
    }

    /// What QEMU's `pcie_acs_init` advertises on downstream and root ports.
    const QEMU_PORT_ACS: AcsFlags = AcsFlags::ISOLATION
        .union(AcsFlags::TRANSLATION_BLOCKING)
        .union(AcsFlags::DIRECT_TRANSLATED_P2P);

    fn flags(bits: u16) -> AcsFlags {
        AcsFlags::from_bits_retain(bits)
    }

    #[test]
    fn enables_supported_isolation_bits_and_stores_the_read_back() {
        let cfg = FakeConfigSpace::new()
            .with(
                at(0, 1, 0),
                FakeFunction::root_port(0, 1, 1).with_acs(QEMU_PORT_ACS, AcsFlags::empty()),
            )
            .with(
                at(0, 2, 0),
                FakeFunction::conventional_endpoint(0x1234, 0x11e8),
            );
        let mut table = enumerate(&cfg, &[WINDOW]);
        let changes = enable_acs(&cfg, &mut table);

        // Only the function with an ACS capability is touched; TB and DT stay off.
        assert_eq!(changes.len(), 1);
        let change = changes[0];
        assert_eq!(change.address, at(0, 1, 0));
        assert_eq!(change.before, AcsFlags::empty());
        assert_eq!(change.requested, AcsFlags::ISOLATION);
        assert_eq!(change.after, AcsFlags::ISOLATION);
        assert!(change.write_stuck && change.changed());
        let acs = table.get(at(0, 1, 0)).unwrap().capabilities.acs.unwrap();
        assert_eq!(acs.control, AcsFlags::ISOLATION);
        assert_eq!(
            cfg.read16(at(0, 1, 0), acs.control_register_offset()),
            0x001d
        );
        // The read-only capability register survived the read-modify-write.
        assert_eq!(
            cfg.read16(at(0, 1, 0), acs.offset + 4),
            QEMU_PORT_ACS.bits()
        );
        assert_eq!(
            format!("{change}"),
            "0000:00:01.0 ACS control 0x0000 -> 0x001d (caps 0x005f)"
        );
    }

    #[test]
    fn only_supported_bits_are_requested_and_other_controls_are_kept() {
        // Capability: RR, CR, EC. Firmware left TB and DT on (DT is not even in the
        // capability: the fake lets firmware state be anything).
        let capability = AcsFlags::REQUEST_REDIRECT
            | AcsFlags::COMPLETION_REDIRECT
            | AcsFlags::EGRESS_CONTROL
            | AcsFlags::TRANSLATION_BLOCKING;
        let firmware = AcsFlags::TRANSLATION_BLOCKING | AcsFlags::DIRECT_TRANSLATED_P2P;
        let cfg = FakeConfigSpace::new().with(
            at(0, 1, 0),
            FakeFunction::downstream_port(0, 1, 1).with_acs(capability, firmware),
        );
        let mut table = enumerate(&cfg, &[WINDOW]);
        let change = enable_acs(&cfg, &mut table)[0];
        let expected = firmware | AcsFlags::REQUEST_REDIRECT | AcsFlags::COMPLETION_REDIRECT;
        assert_eq!(change.requested, expected);
        assert_eq!(change.after, expected);
        assert!(change.write_stuck);
        // SV and UF are not implemented, so they count as hard-wired on; EC is
        // never assumed.
        let device = table.get(at(0, 1, 0)).unwrap();
        assert!(acs_flags_enabled(device, AcsFlags::ISOLATION));
        assert!(!acs_flags_enabled(
            device,
            AcsFlags::ISOLATION | AcsFlags::EGRESS_CONTROL
        ));
    }

    #[test]
    fn a_control_register_that_ignores_writes_keeps_its_old_value() {
        let cfg = FakeConfigSpace::new()
            .with(
                at(0, 1, 0),
                FakeFunction::root_port(0, 1, 1).with_acs_writable(
                    AcsFlags::ISOLATION,
                    AcsFlags::empty(),
                    AcsFlags::empty(),
                ),
            )
            .with(
                at(0, 2, 0),
                // Only SV and RR are really writable.
                FakeFunction::root_port(0, 2, 2).with_acs_writable(
                    AcsFlags::ISOLATION,
                    AcsFlags::empty(),
                    AcsFlags::SOURCE_VALIDATION | AcsFlags::REQUEST_REDIRECT,
                ),
            );
        let mut table = enumerate(&cfg, &[WINDOW]);
        let changes = enable_acs(&cfg, &mut table);
        assert_eq!(changes[0].after, AcsFlags::empty());
        assert!(!changes[0].write_stuck && !changes[0].changed());
        assert_eq!(
            format!("{}", changes[0]),
            "0000:00:01.0 ACS control 0x0000 -> 0x0000 (caps 0x001d), ignored: wrote 0x001d"
        );
        assert_eq!(
            changes[1].after,
            AcsFlags::SOURCE_VALIDATION | AcsFlags::REQUEST_REDIRECT
        );
        assert!(!changes[1].write_stuck && changes[1].changed());
        for address in [at(0, 1, 0), at(0, 2, 0)] {
            let device = table.get(address).unwrap();
            assert!(!acs_enabled(device, AcsFlags::ISOLATION), "{address}");
        }
        assert_eq!(
            table
                .get(at(0, 2, 0))
                .unwrap()
                .capabilities
                .acs
                .unwrap()
                .control,
            AcsFlags::SOURCE_VALIDATION | AcsFlags::REQUEST_REDIRECT
        );
    }

    #[test]
    fn all_ones_control_is_not_written_and_counts_as_disabled() {
        let cfg = FakeConfigSpace::new().with(
            at(0, 1, 0),
            FakeFunction::root_port(0, 1, 1).with_acs(AcsFlags::ISOLATION, AcsFlags::empty()),
        );
        let mut table = enumerate(&cfg, &[WINDOW]);
        // The function disappears between enumeration and enabling.
        let gone = FakeConfigSpace::new();
        let changes = enable_acs(&gone, &mut table);
        assert_eq!(changes.len(), 1);
        assert!(!changes[0].write_stuck);
        let device = table.get(at(0, 1, 0)).unwrap();
        assert_eq!(device.capabilities.acs.unwrap().control, AcsFlags::empty());
        assert!(!acs_enabled(device, AcsFlags::ISOLATION));
    }

    /// One function of each PCIe port type (plus conventional), with and without
    /// ACS, single and multifunction: Linux's `pci_acs_enabled` table.
    #[test]
    fn acs_enabled_follows_linux_per_port_type() {
        use PciePortType::*;
        let types = [
            Endpoint,
            LegacyEndpoint,
            RootPort,
            UpstreamPort,
            DownstreamPort,
            PcieToPciBridge,
            PciToPcieBridge,
            RcIntegratedEndpoint,
            RcEventCollector,
            Unknown(0xC),
        ];
        // (single without ACS, multi without ACS, multi with ACS enabled)
        let expected = |port: PciePortType| -> (bool, bool, bool) {
            match port {
                RootPort | DownstreamPort => (false, false, true),
                PcieToPciBridge | PciToPcieBridge | RcEventCollector => (false, false, false),
                Unknown(_) => (true, true, true),
                _ => (true, false, true),
            }
        };
        for port in types {
            let single = FakeFunction::endpoint(1, 1, 0).with_pcie(port);
            let multi = FakeFunction::endpoint(1, 2, 0)
                .with_pcie(port)
                .multifunction();
            let multi_acs = FakeFunction::endpoint(1, 3, 0)
                .with_pcie(port)
                .multifunction()
                .with_acs(AcsFlags::ISOLATION, AcsFlags::ISOLATION);
            let cfg = FakeConfigSpace::new()
                .with(at(0, 1, 0), single)
                .with(at(0, 2, 0), multi)
                .with(at(0, 3, 0), multi_acs);
            let table = enumerate(&cfg, &[WINDOW]);
            let got =
                |device: u8| acs_enabled(table.get(at(0, device, 0)).unwrap(), AcsFlags::ISOLATION);
            assert_eq!((got(1), got(2), got(3)), expected(port), "{port:?}");
        }
        // Conventional PCI never counts, even with the (unreachable) ACS bits.
        let cfg = FakeConfigSpace::new()
            .with(at(0, 1, 0), FakeFunction::conventional_endpoint(1, 1))
            .with(at(0, 2, 0), FakeFunction::pci_bridge(0, 1, 1));
        let table = enumerate(&cfg, &[WINDOW]);
        for device in &table {
            assert!(!acs_enabled(device, AcsFlags::ISOLATION));
            assert!(!acs_enabled(device, AcsFlags::empty()));
        }
    }

    #[test]
    fn functions_after_zero_count_as_multifunction_like_linux() {
        // Function 0 says multifunction; function 1's own header type does not.
        let cfg = FakeConfigSpace::new()
            .with(
                at(0, 1, 0),
                FakeFunction::pcie_endpoint(1, 1).multifunction(),
            )
            .with(at(0, 1, 1), FakeFunction::pcie_endpoint(1, 2));
        let table = enumerate(&cfg, &[WINDOW]);
        let function_1 = table.get(at(0, 1, 1)).unwrap();
        assert!(!function_1.multifunction);
        assert!(is_multifunction(function_1));
        assert!(!acs_enabled(function_1, AcsFlags::ISOLATION));
    }

    #[test]
    fn egress_control_is_never_assumed_and_missing_caps_are() {
        let cfg = FakeConfigSpace::new().with(
            at(0, 1, 0),
            FakeFunction::root_port(0, 1, 1).with_acs(flags(0), flags(0)),
        );
        let table = enumerate(&cfg, &[WINDOW]);
        let port = table.get(at(0, 1, 0)).unwrap();
        // An ACS capability that implements nothing: everything but EC is
        // "hard-wired", so the isolation check passes.
        assert!(acs_flags_enabled(port, AcsFlags::ISOLATION));
        assert!(!acs_flags_enabled(port, AcsFlags::EGRESS_CONTROL));
    }

    #[test]
    fn path_needs_every_bridge_up_to_the_root() {
        // root port (ACS) -> upstream port (no ACS, single function: fine) ->
        // downstream port (ACS) -> endpoint; and a second root port without ACS.
        let cfg = FakeConfigSpace::new()
            .with(
                at(0, 1, 0),
                FakeFunction::root_port(0, 1, 3).with_acs(QEMU_PORT_ACS, AcsFlags::empty()),
            )
            .with(at(1, 0, 0), FakeFunction::upstream_port(1, 2, 3))
            .with(
                at(2, 0, 0),
                FakeFunction::downstream_port(2, 3, 3).with_acs(QEMU_PORT_ACS, AcsFlags::empty()),
            )
            .with(at(3, 0, 0), FakeFunction::pcie_endpoint(1, 1))
            .with(at(0, 2, 0), FakeFunction::root_port(0, 4, 4))
            .with(at(4, 0, 0), FakeFunction::pcie_endpoint(1, 2));
        let mut table = enumerate(&cfg, &[WINDOW]);
        assert!(!acs_path_enabled(&table, at(3, 0, 0), AcsFlags::ISOLATION));
        enable_acs(&cfg, &mut table);
        assert!(acs_path_enabled(&table, at(3, 0, 0), AcsFlags::ISOLATION));
        assert!(acs_path_enabled(&table, at(2, 0, 0), AcsFlags::ISOLATION));
        assert!(!acs_path_enabled(&table, at(4, 0, 0), AcsFlags::ISOLATION));
        assert!(!acs_path_enabled(&table, at(9, 9, 0), AcsFlags::ISOLATION));

        // A corrupt table whose parents loop is not isolated, and the walk ends.
        let mut looped = table.clone();
        for device in &mut looped.devices {
            if device.address == at(0, 1, 0) {
                device.parent = Some(at(2, 0, 0));
            }
        }
        assert!(!acs_path_enabled(&looped, at(3, 0, 0), AcsFlags::ISOLATION));
    }
}
