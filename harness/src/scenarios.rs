//! The QEMU scenarios: ONE table (`SCENARIOS`) says what each boots and asserts.
//!
//! To add a scenario, append an entry to `SCENARIOS`: a name, a one-line
//! description, the machine (`Machine::DEFAULT` plus `with_iommu`/`with_topology`;
//! new topologies go in `machine.rs`), extra kernel command-line words, extra ACPI
//! tables, the expected kernel exit and the checks. `hold` (and the QMP oracle)
//! is added automatically when a check needs QEMU's view of the PCI bus.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::acpi::ExtraTable;
use crate::blocked;
use crate::compare;
use crate::dmatest;
use crate::groups::{self, GroupReport, Rid};
use crate::guests::{self, GuestRun, Termination};
use crate::ioapic;
use crate::machine::{self, Iommu, Machine, Qemu, Topology, Wiring};
use crate::nvme;
use crate::oracle::FollowUp;
use crate::runner::{self, Exit, MonitorPlan, Outcome};
use crate::serial::{HOLDING_MARKER, KernelLog};
use crate::vfio;

/// The kernel's isa-debug-exit codes, as QEMU exit statuses ((v << 1) | 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelExit {
    /// 0x10: boot completed.
    BootCompleted,
    /// 0x11: boot stopped cleanly (a required feature is missing; the log says which).
    Stopped,
    /// 0x12: kernel panic.
    Panic,
    /// 0x13: CPU exception.
    Exception,
}

impl KernelExit {
    pub const ALL: [KernelExit; 4] = [
        KernelExit::BootCompleted,
        KernelExit::Stopped,
        KernelExit::Panic,
        KernelExit::Exception,
    ];

    pub const fn status(self) -> i32 {
        match self {
            KernelExit::BootCompleted => 33,
            KernelExit::Stopped => 35,
            KernelExit::Panic => 37,
            KernelExit::Exception => 39,
        }
    }

    pub const fn describe(self) -> &'static str {
        match self {
            KernelExit::BootCompleted => "boot completed",
            KernelExit::Stopped => "boot stopped: a required feature is missing",
            KernelExit::Panic => "kernel panic",
            KernelExit::Exception => "CPU exception",
        }
    }
}

/// What a QEMU exit status means for this kernel.
pub fn describe_status(code: i32) -> String {
    if let Some(k) = KernelExit::ALL.iter().find(|k| k.status() == code) {
        return k.describe().into();
    }
    match code {
        0 => "triple fault or reset (QEMU -no-reboot exits 0)".into(),
        1 => "QEMU failed (bad option or device?) or the kernel wrote 0 to isa-debug-exit".into(),
        c if c > 1 && c % 2 == 1 => format!(
            "the kernel wrote unknown value 0x{:x} to isa-debug-exit",
            (c - 1) / 2
        ),
        _ => "unexpected QEMU exit status".into(),
    }
}

pub fn describe_exit(exit: Exit) -> String {
    match exit {
        Exit::Status(c) => format!("exit status {c} ({})", describe_status(c)),
        Exit::Signal(s) => format!("QEMU killed by signal {s}"),
        Exit::TimedOut => "timed out".into(),
    }
}

/// An assertion about one run.
#[derive(Clone, Copy, Debug)]
pub enum Check {
    /// The kernel's PCI listing equals QEMU's `query-pci` (functions, ids, classes, BARs).
    PciMatchesQemu,
    /// The kernel printed no PCI function while QEMU shows some (e.g. no ECAM).
    NoPciFunctions,
    /// Some log line contains `needle` and, case-insensitively, one of `any`.
    LogLine {
        needle: &'static str,
        any: &'static [&'static str],
    },
    /// The first exception has this vector (and CR2 value, if given).
    Exception { vector: u8, cr2: Option<u64> },
    /// A `PANIC at file.rs:line:col: ...` line.
    Panic,
    /// The kernel's IOMMU groups are exactly this partition. Each inner list is one
    /// group of device tokens: a qdev id (`e1`, `rp1`, `pb1`, `iommu`, ...) or a fixed
    /// `bb:dd.f` of q35's built-in functions (`00:00.0`, `00:1f.0`, ...); ids are
    /// resolved with QEMU's `query-pci`. Also checked: `formed N IOMMU groups` = the
    /// number of group lines, group ids 0..n-1, a member line per device (own
    /// requester id first), units `dmarN` (vtd) / `ivhdN` (amdvi). See `groups.rs`.
    Groups(&'static [&'static [&'static str]]),
    /// The member line of each named device lists exactly these requester ids:
    /// `Rid::Own` first, then e.g. `Rid::SecondaryOf("pb1")` (pb1's secondary bus,
    /// 00.0) or `Rid::Of("cb1")` (cb1's own id), in any order.
    RequesterIds(&'static [(&'static str, &'static [Rid])]),
    /// The kernel's DMA self-test (`dmatest`, topology `dma`): six experiment lines
    /// judged by `dmatest.rs` (fault records — VT-d `frcd=` or AMD `event=`, by the
    /// machine's IOMMU — decoded here, requester ids of `e1`/`e2` from `query-pci`),
    /// the buffers they name read back with the monitor's `xp` while the kernel holds.
    DmaTest,
    /// The kernel runs these guests (packed into the `-initrd` archive, started with
    /// `guest=NAME:SIZE` words, `expect=NAME:terminated` for those that must be
    /// stopped) and reports each as expected: start line, end line (exit status or
    /// termination reason), the guest's own `check ...: ok` lines, and the summary
    /// `guests: N ran, N passed, 0 failed`. See `guests.rs`.
    Guests(&'static [GuestRun]),
    /// intel-iommu only: the unit's fault recording register, read with `xp` while the
    /// kernel holds after its guests, holds a write fault by one of these (device,
    /// IOVA): the DMA a guest saw blocked was blocked by the IOMMU. See `vfio.rs`.
    VtdFault(&'static [vfio::BlockedDma]),
    /// After every guest has ended (read while the kernel holds), the IOMMU blocks these
    /// devices (qdev ids or `bb:dd.f`), as the unit itself reads its tables with `xp`:
    /// VT-d no present context entry (RTADDR → root entry → context entry, translation
    /// on), AMD-Vi a device table entry with V=1 TV=1 IR=0 IW=0 (IommuEn on). See
    /// `blocked.rs`.
    DevicesBlocked(&'static [&'static str]),
    /// intel-iommu only: the unit's GSTS, as `DevicesBlocked` reads it while the kernel
    /// holds, shows interrupt remapping on (IRES) and compatibility format off (CFIS
    /// clear). Needs `DevicesBlocked` in the same scenario. See `blocked.rs`.
    VtdInterruptRemapping,
    /// After every guest has ended (read while the kernel holds), these NVMe controllers
    /// (qdev ids or `bb:dd.f`) are disabled: CC.EN = 0 and CSTS.RDY = 0, read with `xp`
    /// through BAR0 at the address `query-pci` reports (unmapped = memory decode off =
    /// fail), the version register a controller's. See `nvme.rs`.
    NvmeDisabled(&'static [&'static str]),
    /// After every guest has ended (read while the kernel holds), I/O APIC pin `pin`
    /// (`info pic`) holds the INTx route the kernel programmed and released: level,
    /// a device vector, masked, remappable format with a handle exactly when
    /// `remappable`. See `ioapic.rs`.
    IoApicPin { pin: u32, remappable: bool },
}

impl Check {
    fn needs_oracle(self) -> bool {
        matches!(
            self,
            Check::PciMatchesQemu
                | Check::NoPciFunctions
                | Check::Groups(_)
                | Check::RequesterIds(_)
                | Check::DmaTest
                | Check::VtdFault(_)
                | Check::DevicesBlocked(_)
                | Check::VtdInterruptRemapping
                | Check::NvmeDisabled(_)
                | Check::IoApicPin { .. }
        )
    }
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub machine: Machine,
    /// Extra kernel command-line words.
    pub cmdline: &'static str,
    pub acpi: &'static [ExtraTable],
    pub expect: KernelExit,
    pub checks: &'static [Check],
}

impl Scenario {
    pub fn needs_oracle(&self) -> bool {
        self.checks.iter().any(|c| c.needs_oracle())
    }

    /// The guests the scenario runs (from its `Check::Guests`).
    pub fn guests(&self) -> Vec<GuestRun> {
        self.checks
            .iter()
            .filter_map(|c| match c {
                Check::Guests(runs) => Some(*runs),
                _ => None,
            })
            .flatten()
            .copied()
            .collect()
    }

    /// The devices of the scenario's `Check::DevicesBlocked` (all of them).
    pub fn devices_blocked(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter_map(|c| match c {
                Check::DevicesBlocked(d) => Some(*d),
                _ => None,
            })
            .flatten()
            .copied()
            .collect()
    }

    /// The controllers of the scenario's `Check::NvmeDisabled` (all of them).
    pub fn nvme_disabled(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter_map(|c| match c {
                Check::NvmeDisabled(d) => Some(*d),
                _ => None,
            })
            .flatten()
            .copied()
            .collect()
    }

    /// Monitor commands chosen in rounds from the replies so far, after those of
    /// [`Scenario::monitor_plan`]: the walks of the IOMMU's tables for
    /// `Check::DevicesBlocked`, the NVMe registers for `Check::NvmeDisabled`.
    pub fn follow_up_plan(&self) -> Option<Box<FollowUp<'static>>> {
        let devices = self.devices_blocked();
        let controllers = self.nvme_disabled();
        let ioapic = self
            .checks
            .iter()
            .any(|c| matches!(c, Check::IoApicPin { .. }));
        if devices.is_empty() && controllers.is_empty() && !ioapic {
            return None;
        }
        let unit = dmatest::Unit::of(self.machine.effective_iommu());
        Some(Box::new(move |view| {
            let mut reads = if devices.is_empty() {
                Vec::new()
            } else {
                blocked::reads(unit, &devices, view)
            };
            reads.extend(nvme::reads(&controllers, view));
            if ioapic {
                reads.extend(ioapic::reads());
            }
            reads
        }))
    }

    /// Monitor commands (beyond `query-pci`) the checks want while the kernel holds.
    pub fn monitor_plan(&self) -> Option<&'static MonitorPlan<'static>> {
        if self.checks.iter().any(|c| matches!(c, Check::VtdFault(_))) {
            return Some(&vfio::monitor_commands as &MonitorPlan<'static>);
        }
        if !self.checks.iter().any(|c| matches!(c, Check::DmaTest)) {
            return None;
        }
        Some(match dmatest::Unit::of(self.machine.effective_iommu()) {
            dmatest::Unit::Vtd => &dmatest::monitor_commands as &MonitorPlan<'static>,
            dmatest::Unit::AmdVi => &dmatest::amd_monitor_commands as &MonitorPlan<'static>,
        })
    }
}

const MCFG_CORRUPT_WORDS: &[&str] = &["invalid", "corrupt", "malformed"];

/// The address `selftest=page-fault` reads (unmapped, canonical).
pub const PAGE_FAULT_ADDRESS: u64 = 0x0000_4000_0000_0000;

// IOMMU group expectations. The rules are Linux's `pci_device_group()`; every
// function QEMU lists is assumed translated (host bridge included), except on AMD the
// IOMMU's own function, which is in no group (see below ICH9).
//
// - A function's DMA may carry an alias requester id (`pci_for_each_dma_alias`):
//   behind a PCIe-to-PCI bridge the id (bridge's secondary bus, 00.0); behind a
//   conventional PCI bridge the bridge's own id; PCIe ports forward ids unchanged.
//   Functions that share an alias share a group, and the group continues at the
//   bridge that introduced the alias.
// - Going upstream from there, the walk stops at the first bridge with ACS
//   SV|RR|CR|UF enabled (root/downstream ports: the ACS capability must be present
//   and enabled; single-function upstream ports and endpoints: ACS does not apply,
//   they count as isolating). A bridge without it joins the device to its group.
// - Functions of one multifunction slot without ACS share a group.

/// q35's host bridge: single function on the root bus, alone.
const HOST: &[&str] = &["00:00.0"];
/// ICH9 LPC, SATA, SMBus: conventional functions of one multifunction slot (1f),
/// no ACS: one group.
const ICH9: &[&str] = &["00:1f.0", "00:1f.2", "00:1f.3"];
// amd-iommu's own PCI function is in NO expected group: the IOMMU does not translate its
// own accesses, and its config space must never be handed to a guest (Linux likewise
// refuses to bind drivers to it). The kernel must report it as `no group`; a group that
// contains it is "not expected" and fails the check.

/// Conventional endpoints below PCIe ports: no alias, just their own id.
const OWN_ONLY_E1_E2: &[(&str, &[Rid])] = &[("e1", &[Rid::Own]), ("e2", &[Rid::Own])];
/// Behind pcie-pci-bridge pb1: (pb1's secondary bus, 00.0); behind the
/// conventional pci-bridge cb1: cb1's own id.
const PCIBRIDGE_RIDS: &[(&str, &[Rid])] = &[
    ("e1", &[Rid::Own, Rid::SecondaryOf("pb1")]),
    ("e2", &[Rid::Own, Rid::SecondaryOf("pb1")]),
    ("e3", &[Rid::Own, Rid::Of("cb1")]),
    ("e4", &[Rid::Own, Rid::Of("cb1")]),
    ("pb1", &[Rid::Own]),
    ("cb1", &[Rid::Own]),
];

/// The address `bad-memory` writes (guest/src/bin/bad_memory.rs): 16 GiB.
pub const BAD_MEMORY_GPA: u64 = 0x4_0000_0000;

// VFIO guests (topology `vfio`: edu e1 at 00:03.0, e2 at 00:04.0; machine.rs). The
// kernel resolves each `groups=` reference that names a PCI function to that function's
// IOMMU group. vfio-edu owns e1's group and drives e1 through the VFIO hypercalls.
// vfio-hostile owns e2's group (its own edu), the ICH9 group (00:1f.0: never viable,
// the LPC bridge behind COM1 is the hypervisor's) and e1's group too, which vfio-edu
// (started first) holds open, so that opening it must fail with EBUSY, not EPERM.
const VFIO_EDU: GuestRun = GuestRun::exits("vfio-edu", 0).with_groups("00:03.0");
/// Device interrupts: vfio-irq binds e1's MSI to its vector 0x60, sees a loopback, the
/// DMA-completion MSI (waiting in HLT) and a raised edu interrupt arrive as 0x60, and
/// none once MSI is disabled (see its source).
const VFIO_IRQ: GuestRun = GuestRun::exits("vfio-irq", 0).with_groups("00:03.0");
/// The kernel's log of the MSI programming: the host vectors and the APIC address.
const VFIO_IRQ_LOG: Check = Check::LogLine {
    needle: "MSI enabled: 1 vectors on host vectors",
    any: &["no interrupt remapping"],
};
/// Legacy INTx: vfio-intx binds e1's INTx to its vector 0x61 (the DSDT's `_PRT` puts
/// slot 3's INTA on GSI 23); a raised edu interrupt arrives once and not again while the
/// device is automasked, a loopback, the DMA-completion INTx (waiting in HLT), a hand
/// mask that holds it, nothing once INTx is disabled, then MSI (see its source).
const VFIO_INTX: GuestRun = GuestRun::exits("vfio-intx", 0).with_groups("00:03.0");
/// e1's INTA (slot 3) in QEMU q35's DSDT `_PRT`, APIC mode: GSI 20 + (3 + 0) mod 4 = 23,
/// pin 23 of the one I/O APIC (GSI base 0).
const EDU_E1_GSI: u32 = 23;
const VFIO_HOSTILE: GuestRun =
    GuestRun::exits("vfio-hostile", 0).with_groups("00:04.0,00:1f.0,00:03.0");
/// The DMAs the guests expect the IOMMU to block (edu writes, see their sources):
/// vfio-edu's to its unmapped buffer (IOVA 0x202000), vfio-hostile's to IOVAs only its
/// rejected MAP_DMA calls named (0x400000, 0xff000). QEMU's VT-d keeps only the first.
const VFIO_EDU_BLOCKED: &[vfio::BlockedDma] = &[("e1", 0x20_2000)];
const VFIO_ALL_BLOCKED: &[vfio::BlockedDma] =
    &[("e1", 0x20_2000), ("e2", 0x40_0000), ("e2", 0xf_f000)];
// Release: vfio-killed owns e1's group, maps IOVA 0x200000, DMAs, starts another edu
// write to IOVA 0x203000 and, without waiting, writes port 0x80: the kernel terminates
// it mid-DMA and releases its handles at once. vfio-next, granted the same group, waits
// until it sees the group busy, opens it once free (EBUSY until then), builds a fresh
// container (65535 mappings available), maps its own buffer at IOVA 0x800000 and shows
// that e1's write to the killed guest's IOVA 0x205000 reaches nothing while one to its
// own mapping arrives. vfio-killed must print ok checks up to the port write (a failed
// step makes it exit 1 instead, never reaching the port).
const VFIO_KILLED: GuestRun = GuestRun {
    checks: true,
    ..GuestRun::terminated("vfio-killed", Termination::Port(0x80)).with_groups("00:03.0")
};
const VFIO_NEXT: GuestRun = GuestRun::exits("vfio-next", 0).with_groups("00:03.0");
/// The edu writes the IOMMU must block in the release scenarios: vfio-next's to the
/// killed guest's IOVA 0x205000, or — when it lands after vfio-next attached e1 to its
/// own domain — the killed guest's in-flight write to 0x203000 (QEMU keeps the first).
const VFIO_RELEASE_BLOCKED: &[vfio::BlockedDma] = &[("e1", 0x20_3000), ("e1", 0x20_5000)];
/// Both edus must be blocked once every guest has ended (e1 released by its owners, e2
/// by vfio-hostile or never attached): the IOMMU's own tables, read at hold.
const VFIO_DEVICES: &[&str] = &["e1", "e2"];
// Reset (topology `vfio-nvme`: nv1 at 00:05.0, FLR capable): vfio-reset owns the NVMe's
// and e1's groups; it enables the controller, resets it (DEVICE_RESET: CSTS.RDY back to
// 0, BAR0 still decoding), checks config mediation, and that e1 (no reset method) gives
// EINVAL.
const VFIO_RESET: GuestRun = GuestRun::exits("vfio-reset", 0).with_groups("00:05.0,00:03.0");
const VFIO_NVME_DEVICES: &[&str] = &["e1", "e2", "nv1"];
// Killed with the NVMe enabled (issue 8): vfio-nvme-killed owns nv1's group, maps IOVA
// 0x200000, puts the admin queues there, enables the controller (CSTS.RDY = 1), has an
// IDENTIFY completed through the IOMMU, submits another and, without waiting, writes
// port 0x80. The kernel terminates it and releases the group: nv1's DMA blocked and
// nv1 reset by FLR (CC.EN = CSTS.RDY = 0, read through BAR0 at hold).
const VFIO_NVME_KILLED: GuestRun = GuestRun {
    checks: true,
    ..GuestRun::terminated("vfio-nvme-killed", Termination::Port(0x80)).with_groups("00:05.0")
};
const NVME_CONTROLLERS: &[&str] = &["nv1"];
/// The passthrough demo (`./qemu-run.sh`'s default guest): vfio-demo owns e1's group,
/// maps 2 MiB at IOVA 0x200000, binds the group, maps BAR0, routes e1's MSI to its
/// vector 0x50, DMAs both ways waiting in HLT for each completion MSI, and shows a DMA
/// to the unmapped IOVA 0x600000 blocked (the fault the unit records on VT-d).
const VFIO_DEMO: GuestRun = GuestRun::exits("vfio-demo", 0).with_groups("00:03.0");
const VFIO_DEMO_BLOCKED: &[vfio::BlockedDma] = &[("e1", 0x60_0000)];
const DEMO_VTD_MACHINE: Machine = Machine::DEFAULT
    .with_iommu(Iommu::Vtd)
    .with_topology(Topology::Vfio);
const DEMO_VTD_CHECKS: &[Check] = &[
    Check::Guests(&[VFIO_DEMO]),
    Check::VtdFault(VFIO_DEMO_BLOCKED),
    Check::DevicesBlocked(VFIO_DEVICES),
];

// I/O BARs and the expansion ROM (topology `vfio-testdev`: QEMU's pci-testdev t1 at
// 00:05.0, BAR1 256 ports of I/O, a 3 KiB ROM from harness/testdata/vfio-rom.bin):
// vfio-testdev selects a test through the I/O BAR (DEVICE_REGION_WRITE), reads its header
// back through the I/O BAR and BAR0 ("portio-no-eventfd": bytes only the device holds),
// has its counter incremented by exact 1-byte writes, sees bad I/O accesses EINVAL and
// COMMAND's I/O bit out of its reach, and reads the whole ROM region (4096 bytes: QEMU's
// power-of-two rounding) equal to the image, also with its virtual ROM BAR moved and
// memory decoding off; ROM writes are EINVAL.
const VFIO_TESTDEV: GuestRun = GuestRun::exits("vfio-testdev", 0).with_groups("00:05.0");
const VFIO_TESTDEV_DEVICES: &[&str] = &["t1"];

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "boot-vtd",
        about: "q35 + intel-iommu + edu: boots; PCI listing equals QEMU's",
        machine: Machine::DEFAULT.with_iommu(Iommu::Vtd),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[Check::PciMatchesQemu],
    },
    Scenario {
        name: "boot-amdvi",
        about: "q35 + amd-iommu (itself a PCI function) + edu: boots; PCI listing equals QEMU's",
        machine: Machine::DEFAULT.with_iommu(Iommu::AmdVi),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[Check::PciMatchesQemu],
    },
    Scenario {
        name: "boot-noiommu",
        about: "q35 without IOMMU + edu: boots; PCI listing equals QEMU's",
        machine: Machine::DEFAULT.with_iommu(Iommu::None),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[Check::PciMatchesQemu],
    },
    Scenario {
        name: "pci-bridges",
        about: "q35 + intel-iommu, root ports, PCIe-to-PCI bridge, switch: PCI listing equals QEMU's",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::Vtd)
            .with_topology(Topology::Bridges),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[Check::PciMatchesQemu],
    },
    Scenario {
        name: "missing-mcfg",
        about: "machine pc (no MCFG): boots, says MCFG is missing, lists no PCI function",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::None)
            .with_topology(Topology::Legacy),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::LogLine {
                needle: "MCFG",
                any: &["missing"],
            },
            Check::NoPciFunctions,
        ],
    },
    Scenario {
        name: "corrupt-mcfg",
        about: "q35 + an extra MCFG of bad length: reported as invalid, the valid MCFG is used",
        machine: Machine::DEFAULT,
        cmdline: "",
        acpi: &[ExtraTable::CorruptMcfg],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::LogLine {
                needle: "MCFG",
                any: MCFG_CORRUPT_WORDS,
            },
            Check::PciMatchesQemu,
        ],
    },
    Scenario {
        name: "selftest-page-fault",
        about: "selftest=page-fault: #PF (vector 14) with CR2 = 0x400000000000",
        machine: Machine::DEFAULT,
        cmdline: "selftest=page-fault",
        acpi: &[],
        expect: KernelExit::Exception,
        checks: &[Check::Exception {
            vector: 14,
            cr2: Some(PAGE_FAULT_ADDRESS),
        }],
    },
    Scenario {
        name: "selftest-invalid-opcode",
        about: "selftest=invalid-opcode: #UD (vector 6)",
        machine: Machine::DEFAULT,
        cmdline: "selftest=invalid-opcode",
        acpi: &[],
        expect: KernelExit::Exception,
        checks: &[Check::Exception {
            vector: 6,
            cr2: None,
        }],
    },
    Scenario {
        name: "selftest-panic",
        about: "selftest=panic: PANIC at file.rs:line:col",
        machine: Machine::DEFAULT,
        cmdline: "selftest=panic",
        acpi: &[],
        expect: KernelExit::Panic,
        checks: &[Check::Panic],
    },
    // ---- IOMMU groups (see the rules above HOST) ----
    // flat: the edu e1 sits alone on the root bus (single function, no bridge above).
    Scenario {
        name: "groups-flat-vtd",
        about: "IOMMU groups: host bridge, edu, ICH9 slot (intel-iommu)",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::Vtd)
            .with_topology(Topology::Flat),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[Check::PciMatchesQemu, Check::Groups(&[HOST, &["e1"], ICH9])],
    },
    Scenario {
        name: "groups-flat-amdvi",
        about: "IOMMU groups: host bridge, edu, ICH9 slot (amd-iommu)",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::AmdVi)
            .with_topology(Topology::Flat),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[Check::PciMatchesQemu, Check::Groups(&[HOST, &["e1"], ICH9])],
    },
    // rootports: rp1/rp2 have ACS (enabled by the kernel: SV|RR|CR|UF), so the edu
    // below each is isolated from its port; each port is a single function on the root bus.
    Scenario {
        name: "groups-rootports-vtd",
        about: "IOMMU groups: root ports with ACS isolate their edus (intel-iommu)",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::Vtd)
            .with_topology(Topology::RootPorts),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::PciMatchesQemu,
            Check::Groups(&[HOST, &["rp1"], &["e1"], &["rp2"], &["e2"], ICH9]),
            Check::RequesterIds(OWN_ONLY_E1_E2),
        ],
    },
    Scenario {
        name: "groups-rootports-amdvi",
        about: "IOMMU groups: root ports with ACS isolate their edus (amd-iommu)",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::AmdVi)
            .with_topology(Topology::RootPorts),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::PciMatchesQemu,
            Check::Groups(&[HOST, &["rp1"], &["e1"], &["rp2"], &["e2"], ICH9]),
            Check::RequesterIds(OWN_ONLY_E1_E2),
        ],
    },
    // rootports-noacs: no ACS capability on the ports (disable-acs=on): the walk from
    // each edu does not stop at its port, so the edu joins the port's group.
    Scenario {
        name: "groups-rootports-noacs-vtd",
        about: "IOMMU groups: root ports without ACS share a group with their edu (intel-iommu)",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::Vtd)
            .with_topology(Topology::RootPortsNoAcs),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::PciMatchesQemu,
            Check::Groups(&[HOST, &["rp1", "e1"], &["rp2", "e2"], ICH9]),
            Check::RequesterIds(OWN_ONLY_E1_E2),
        ],
    },
    Scenario {
        name: "groups-rootports-noacs-amdvi",
        about: "IOMMU groups: root ports without ACS share a group with their edu (amd-iommu)",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::AmdVi)
            .with_topology(Topology::RootPortsNoAcs),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::PciMatchesQemu,
            Check::Groups(&[HOST, &["rp1", "e1"], &["rp2", "e2"], ICH9]),
            Check::RequesterIds(OWN_ONLY_E1_E2),
        ],
    },
    // pcibridge: e1/e2 behind the PCIe-to-PCI bridge pb1 alias to (pb1's secondary bus,
    // 00.0), which pb1 introduces: e1, e2 and pb1 form one group; rp1 (ACS) stops the walk
    // and stays alone. e3/e4 behind the conventional bridge cb1 alias to cb1's own id:
    // one group {cb1, e3, e4}; cb1 sits on the root bus.
    Scenario {
        name: "groups-pcibridge-vtd",
        about: "IOMMU groups: PCIe-to-PCI and PCI-PCI bridges group what is behind them (intel-iommu)",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::Vtd)
            .with_topology(Topology::PciBridge),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::PciMatchesQemu,
            Check::Groups(&[
                HOST,
                &["rp1"],
                &["pb1", "e1", "e2"],
                &["cb1", "e3", "e4"],
                ICH9,
            ]),
            Check::RequesterIds(PCIBRIDGE_RIDS),
        ],
    },
    Scenario {
        name: "groups-pcibridge-amdvi",
        about: "IOMMU groups: PCIe-to-PCI and PCI-PCI bridges group what is behind them (amd-iommu)",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::AmdVi)
            .with_topology(Topology::PciBridge),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::PciMatchesQemu,
            Check::Groups(&[
                HOST,
                &["rp1"],
                &["pb1", "e1", "e2"],
                &["cb1", "e3", "e4"],
                ICH9,
            ]),
            Check::RequesterIds(PCIBRIDGE_RIDS),
        ],
    },
    // multifunction: e1 and e2 are functions 0 and 1 of slot 3, conventional PCI
    // without ACS: peer-to-peer between them cannot be excluded, one group.
    Scenario {
        name: "groups-multifunction-vtd",
        about: "IOMMU groups: two functions of one slot without ACS share a group (intel-iommu)",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::Vtd)
            .with_topology(Topology::Multifunction),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::PciMatchesQemu,
            Check::Groups(&[HOST, &["e1", "e2"], ICH9]),
            Check::RequesterIds(OWN_ONLY_E1_E2),
        ],
    },
    Scenario {
        name: "groups-multifunction-amdvi",
        about: "IOMMU groups: two functions of one slot without ACS share a group (amd-iommu)",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::AmdVi)
            .with_topology(Topology::Multifunction),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::PciMatchesQemu,
            Check::Groups(&[HOST, &["e1", "e2"], ICH9]),
            Check::RequesterIds(OWN_ONLY_E1_E2),
        ],
    },
    // switch: xio3130 downstream ports have no ACS capability, so each edu joins its
    // downstream port's group; the x3130 upstream port is single-function (ACS does not
    // apply to it) and rp1 has ACS: the walk stops there, up1 and rp1 stay alone.
    Scenario {
        name: "groups-switch-vtd",
        about: "IOMMU groups: switch downstream ports without ACS group with their edu (intel-iommu)",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::Vtd)
            .with_topology(Topology::Switch),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::PciMatchesQemu,
            Check::Groups(&[
                HOST,
                &["rp1"],
                &["up1"],
                &["dn1", "e1"],
                &["dn2", "e2"],
                ICH9,
            ]),
            Check::RequesterIds(OWN_ONLY_E1_E2),
        ],
    },
    Scenario {
        name: "groups-switch-amdvi",
        about: "IOMMU groups: switch downstream ports without ACS group with their edu (amd-iommu)",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::AmdVi)
            .with_topology(Topology::Switch),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::PciMatchesQemu,
            Check::Groups(&[
                HOST,
                &["rp1"],
                &["up1"],
                &["dn1", "e1"],
                &["dn2", "e2"],
                ICH9,
            ]),
            Check::RequesterIds(OWN_ONLY_E1_E2),
        ],
    },
    // ---- DMA through the IOMMU (see dmatest.rs and the README's kernel contract) ----
    // e1 is attached to a domain and DMAs through map/unmap/read-only/2 MiB mappings;
    // e2 is never attached. aw-bits is explicit: QEMU 7.2 defaults to 39 (3-level
    // tables only), QEMU 10 to 48 (4-level too); each scenario is the same on both.
    Scenario {
        name: "vtd-dma-aw39",
        about: "dmatest on intel-iommu aw-bits=39 (3-level tables): edu DMA mapped, blocked, unmapped, read-only, 2 MiB, unattached",
        machine: Machine {
            aw_bits: Some(39),
            ..Machine::DEFAULT
                .with_iommu(Iommu::Vtd)
                .with_topology(Topology::Dma)
        },
        cmdline: "dmatest",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[Check::DmaTest],
    },
    Scenario {
        name: "vtd-dma-aw48",
        about: "dmatest on intel-iommu aw-bits=48 (4-level tables): edu DMA mapped, blocked, unmapped, read-only, 2 MiB, unattached",
        machine: Machine {
            aw_bits: Some(48),
            ..Machine::DEFAULT
                .with_iommu(Iommu::Vtd)
                .with_topology(Topology::Dma)
        },
        cmdline: "dmatest",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[Check::DmaTest],
    },
    // The same six experiments on amd-iommu (e1 00:02.0, e2 00:03.0: the IOMMU takes
    // 00:01.0), judged with AMD event log entries (`event=`) and v1 PTEs. `pt=off`:
    // QEMU 9.2-10.0 with amd-iommu's default pt=on map every device's DMA address space
    // straight onto system memory (`info mtree`: alias amdvi-sys), so nothing would be
    // translated; pt=off puts the translating amd_iommu region there (read in 10.0.2's
    // amdvi_host_dma_iommu, seen in `info mtree`). QEMU 7.2 accepts pt=off and
    // translates either way. So one scenario runs on both QEMUs, no skip.
    // Neither QEMU writes event log entries (see amdvi_event.rs): `event=none` passes,
    // a printed entry must be an IO_PAGE_FAULT of the right device and page.
    Scenario {
        name: "amdvi-dma",
        about: "dmatest on amd-iommu (pt=off): edu DMA mapped, blocked, unmapped, read-only, 2 MiB, unattached",
        machine: Machine {
            amd_pt: Some(false),
            ..Machine::DEFAULT
                .with_iommu(Iommu::AmdVi)
                .with_topology(Topology::Dma)
        },
        cmdline: "dmatest",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[Check::DmaTest],
    },
    // ---- Guests (guest/: built with `cargo build --release -p sluice-guest`, packed
    // into target/guests/NAME.img, the -initrd; see guests.rs) ----
    Scenario {
        name: "guest-hello",
        about: "guest hello (16M): greets, checks VERSION, CPUID signature, CONSOLE_WRITE, errnos, NULL; exits 0",
        machine: Machine::DEFAULT,
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[Check::Guests(&[GuestRun::exits("hello", 0)])],
    },
    Scenario {
        name: "guest-isolation",
        about: "guests bad-memory, bad-port, bad-msr, triple-fault are terminated with the right reason; hello then exits 0",
        machine: Machine::DEFAULT,
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[Check::Guests(&[
            GuestRun::terminated(
                "bad-memory",
                Termination::OutsideMemory {
                    gpa: BAD_MEMORY_GPA,
                },
            ),
            GuestRun::terminated("bad-port", Termination::Port(0x80)),
            GuestRun::terminated("bad-msr", Termination::Msr(0x10)),
            GuestRun::terminated("triple-fault", Termination::TripleFault),
            GuestRun::exits("hello", 0),
        ])],
    },
    Scenario {
        name: "guest-sse",
        about: "guest sse: xmm0-15 and MXCSR survive 1000 NULL hypercalls and CONSOLE_WRITEs; exits 0",
        machine: Machine::DEFAULT,
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[Check::Guests(&[GuestRun::exits("sse", 0)])],
    },
    // Preemption and virtual interrupts (kernel: host-timer round-robin, a time budget
    // per guest, SELF_INTERRUPT). The spinner never ends by itself: the scheduler must
    // stop it (`terminated: ran out of time`) while the other guest still gets the CPU.
    Scenario {
        name: "guest-preemption",
        about: "guests spinner then hello in one run: the spinner is preempted and terminated (ran out of time), hello exits 0",
        machine: Machine::DEFAULT,
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[Check::Guests(&[
            GuestRun::terminated("spinner", Termination::OutOfTime),
            GuestRun::exits("hello", 0),
        ])],
    },
    Scenario {
        name: "guest-preempt-sse",
        about: "guest preempt-sse next to a spinner: xmm0-15 survive >= 20 preemptions; exits 0; the spinner runs out of time",
        machine: Machine::DEFAULT,
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[Check::Guests(&[
            GuestRun::terminated("spinner", Termination::OutOfTime),
            GuestRun::exits("preempt-sse", 0),
        ])],
    },
    Scenario {
        name: "guest-vint",
        about: "guest vint: own GDT/TSS/IDT, SELF_INTERRUPT(0x40) delivered exactly once, 10 times; exits 0",
        machine: Machine::DEFAULT,
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[Check::Guests(&[GuestRun::exits("vint", 0)])],
    },
    // ---- VFIO: containers, groups and devices as hypercalls (abi/src/vfio.rs) ----
    // The guests judge the hypervisor themselves (step by step, exact errnos, DMA
    // through their own mappings, DMA blocked after UNMAP_DMA) and exit 0 only if all
    // held; the harness judges their exit statuses and `check` lines, and, once every
    // guest has ended, reads the IOMMU's own tables while the kernel holds: the edus
    // must be blocked (nothing a guest mapped survives it; blocked.rs).
    Scenario {
        name: "vfio-edu-vtd",
        about: "guest vfio-edu owns e1's group: container, type1v2, MAP_DMA, BAR0 mapped, edu DMA both ways, blocked after unmap (the unit's fault record names e1 and the IOVA); exits 0; e1/e2 blocked in the IOMMU's tables at the end (intel-iommu)",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::Vtd)
            .with_topology(Topology::Vfio),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_EDU]),
            Check::VtdFault(VFIO_EDU_BLOCKED),
            Check::DevicesBlocked(VFIO_DEVICES),
        ],
    },
    // pt=off: see amdvi-dma (QEMU 9.2-10.0 bypass translation with pt=on).
    Scenario {
        name: "vfio-edu-amdvi",
        about: "guest vfio-edu owns e1's group: container, type1v2, MAP_DMA, BAR0 mapped, edu DMA both ways, blocked after unmap; exits 0; e1/e2 blocked in the device table at the end (amd-iommu, pt=off)",
        machine: Machine {
            amd_pt: Some(false),
            ..Machine::DEFAULT
                .with_iommu(Iommu::AmdVi)
                .with_topology(Topology::Vfio)
        },
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_EDU]),
            Check::DevicesBlocked(VFIO_DEVICES),
        ],
    },
    // The demo `./qemu-run.sh` boots, on both VT-d address widths (3- and 4-level
    // tables; aw-bits explicit because QEMU 7.2 and 10 default differently) and AMD-Vi.
    Scenario {
        name: "demo-vtd-aw39",
        about: "the default demo: guest vfio-demo walks e1 through the VFIO calls (2 MiB superpage mapping, BAR0 after GROUP_BIND_VM, MSI to vector 0x50, DMA both ways with completion interrupts, an unmapped IOVA blocked: fault record) and exits 0; e1/e2 blocked at the end (intel-iommu aw-bits=39)",
        machine: Machine {
            aw_bits: Some(39),
            ..DEMO_VTD_MACHINE
        },
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: DEMO_VTD_CHECKS,
    },
    Scenario {
        name: "demo-vtd-aw48",
        about: "demo-vtd-aw39 on intel-iommu aw-bits=48 (4-level tables)",
        machine: Machine {
            aw_bits: Some(48),
            ..DEMO_VTD_MACHINE
        },
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: DEMO_VTD_CHECKS,
    },
    Scenario {
        name: "demo-amdvi",
        about: "the default demo on amd-iommu (pt=off): guest vfio-demo walks e1 through the VFIO calls, DMA both ways with completion interrupts, an unmapped IOVA blocked; exits 0; e1/e2 blocked in the device table at the end",
        machine: Machine {
            amd_pt: Some(false),
            ..Machine::DEFAULT
                .with_iommu(Iommu::AmdVi)
                .with_topology(Topology::Vfio)
        },
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_DEMO]),
            Check::DevicesBlocked(VFIO_DEVICES),
        ],
    },
    Scenario {
        name: "vfio-hostile-vtd",
        about: "vfio-edu next to vfio-hostile, which abuses every VFIO call (forged handles, busy/foreign/non-viable groups, bad mappings) and checks each errno; both exit 0; a blocked DMA is in the fault record; e1/e2 blocked in the IOMMU's tables at the end (intel-iommu)",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::Vtd)
            .with_topology(Topology::Vfio),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_EDU, VFIO_HOSTILE]),
            Check::VtdFault(VFIO_ALL_BLOCKED),
            Check::DevicesBlocked(VFIO_DEVICES),
        ],
    },
    Scenario {
        name: "vfio-hostile-amdvi",
        about: "vfio-edu next to vfio-hostile, which abuses every VFIO call (forged handles, busy/foreign/non-viable groups, bad mappings) and checks each errno; both exit 0; e1/e2 blocked in the device table at the end (amd-iommu, pt=off)",
        machine: Machine {
            amd_pt: Some(false),
            ..Machine::DEFAULT
                .with_iommu(Iommu::AmdVi)
                .with_topology(Topology::Vfio)
        },
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_EDU, VFIO_HOSTILE]),
            Check::DevicesBlocked(VFIO_DEVICES),
        ],
    },
    Scenario {
        name: "vfio-release-vtd",
        about: "vfio-killed is terminated (port 0x80) with an edu DMA in flight; vfio-next gets the group once released, a fresh container, its DMA to the killed guest's IOVA is blocked (fault record), to its own mapping arrives; e1/e2 blocked in the IOMMU's tables at the end (intel-iommu)",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::Vtd)
            .with_topology(Topology::Vfio),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_KILLED, VFIO_NEXT]),
            Check::VtdFault(VFIO_RELEASE_BLOCKED),
            Check::DevicesBlocked(VFIO_DEVICES),
        ],
    },
    Scenario {
        name: "vfio-release-amdvi",
        about: "vfio-killed is terminated (port 0x80) with an edu DMA in flight; vfio-next gets the group once released, a fresh container, its DMA to the killed guest's IOVA is blocked, to its own mapping arrives; e1/e2 blocked in the device table at the end (amd-iommu, pt=off)",
        machine: Machine {
            amd_pt: Some(false),
            ..Machine::DEFAULT
                .with_iommu(Iommu::AmdVi)
                .with_topology(Topology::Vfio)
        },
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_KILLED, VFIO_NEXT]),
            Check::DevicesBlocked(VFIO_DEVICES),
        ],
    },
    Scenario {
        name: "vfio-reset-vtd",
        about: "guest vfio-reset: the NVMe (FLR) has DEVICE_FLAGS_RESET, enabled (CSTS.RDY=1) then DEVICE_RESET (RDY=0, BAR0 still decodes); config writes to BAR0/COMMAND/MSI stay virtual; e1 (no method) gives EINVAL; e1/e2/nv1 blocked at the end (intel-iommu)",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::Vtd)
            .with_topology(Topology::VfioNvme),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_RESET]),
            Check::DevicesBlocked(VFIO_NVME_DEVICES),
        ],
    },
    Scenario {
        name: "vfio-reset-amdvi",
        about: "guest vfio-reset: NVMe FLR through DEVICE_RESET, config mediation, EINVAL for e1 without a reset method; e1/e2/nv1 blocked in the device table at the end (amd-iommu, pt=off)",
        machine: Machine {
            amd_pt: Some(false),
            ..Machine::DEFAULT
                .with_iommu(Iommu::AmdVi)
                .with_topology(Topology::VfioNvme)
        },
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_RESET]),
            Check::DevicesBlocked(VFIO_NVME_DEVICES),
        ],
    },
    // Killed with the NVMe enabled: the release blocks its DMA and resets it (issue 8).
    Scenario {
        name: "vfio-nvme-killed-vtd",
        about: "vfio-nvme-killed enables the NVMe (admin queues at its IOVAs, CSTS.RDY=1, an IDENTIFY through the IOMMU, another submitted) and is terminated (port 0x80): at the end nv1 is reset (CC.EN=0, CSTS.RDY=0 read through BAR0, still decoding) and blocked, e1/e2 blocked (intel-iommu)",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::Vtd)
            .with_topology(Topology::VfioNvme),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_NVME_KILLED]),
            Check::NvmeDisabled(NVME_CONTROLLERS),
            Check::DevicesBlocked(VFIO_NVME_DEVICES),
        ],
    },
    Scenario {
        name: "vfio-nvme-killed-amdvi",
        about: "vfio-nvme-killed enables the NVMe and is terminated (port 0x80) with an IDENTIFY submitted: at the end nv1 is reset (CC.EN=0, CSTS.RDY=0 through BAR0) and its device-table entry blocks it, e1/e2 blocked (amd-iommu, pt=off)",
        machine: Machine {
            amd_pt: Some(false),
            ..Machine::DEFAULT
                .with_iommu(Iommu::AmdVi)
                .with_topology(Topology::VfioNvme)
        },
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_NVME_KILLED]),
            Check::NvmeDisabled(NVME_CONTROLLERS),
            Check::DevicesBlocked(VFIO_NVME_DEVICES),
        ],
    },
    // The kill path alone: nobody takes the group over, so the tables read at the end
    // show what killing the owner left behind.
    Scenario {
        name: "vfio-killed-vtd",
        about: "vfio-killed is terminated (port 0x80) with an edu DMA in flight and nobody takes its group: e1's context entry is gone at the end (intel-iommu)",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::Vtd)
            .with_topology(Topology::Vfio),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_KILLED]),
            Check::DevicesBlocked(VFIO_DEVICES),
        ],
    },
    Scenario {
        name: "vfio-killed-amdvi",
        about: "vfio-killed is terminated (port 0x80) with an edu DMA in flight and nobody takes its group: e1's device-table entry blocks it at the end (amd-iommu, pt=off)",
        machine: Machine {
            amd_pt: Some(false),
            ..Machine::DEFAULT
                .with_iommu(Iommu::AmdVi)
                .with_topology(Topology::Vfio)
        },
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_KILLED]),
            Check::DevicesBlocked(VFIO_DEVICES),
        ],
    },
    // Device interrupts (issue 8): e1's MSI goes to the host's local APIC on a host
    // vector of the kernel's pool and is injected into vfio-irq as 0x60. Both units pass
    // the compatibility-format MSI through (no interrupt remapping: VT-d with IR off;
    // AMD-Vi with the DTE's IV = 0, which QEMU's amd-iommu treats as pass-through).
    Scenario {
        name: "vfio-irq-vtd",
        about: "guest vfio-irq binds e1's MSI to vector 0x60 (after GROUP_BIND_VM; EPERM before): a loopback, the edu DMA-completion MSI while halted, and a raised edu interrupt arrive as 0x60, none after MSI is disabled; bytes match; e1/e2 blocked at the end (intel-iommu, intremap=off: the compatibility-format path)",
        // QEMU's intel-iommu offers interrupt remapping by default under TCG; this one
        // pins it off to cover the compatibility-format path (vfio-irq-vtd-ir: on).
        machine: Machine {
            intremap: Some(false),
            ..Machine::DEFAULT
                .with_iommu(Iommu::Vtd)
                .with_topology(Topology::Vfio)
        },
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_IRQ]),
            VFIO_IRQ_LOG,
            Check::DevicesBlocked(VFIO_DEVICES),
        ],
    },
    // The same on intel-iommu with interrupt remapping asked for explicitly: the kernel
    // enables it (empty table, compatibility format blocked) and programs e1's MSI in
    // remappable format naming an entry only e1's requester id may use; the guest's
    // checks prove the interrupt arrives, the harness reads GSTS.IRES.
    Scenario {
        name: "vfio-irq-vtd-ir",
        about: "vfio-irq-vtd with intremap=on: the kernel enables VT-d interrupt remapping (GSTS.IRES set, CFIS clear, read while the kernel holds) and e1's MSI goes through an IRTE that only e1 may use; loopback, completion MSI and raised interrupt arrive as 0x60; e1/e2 blocked at the end",
        machine: Machine {
            intremap: Some(true),
            ..Machine::DEFAULT
                .with_iommu(Iommu::Vtd)
                .with_topology(Topology::Vfio)
        },
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_IRQ]),
            Check::LogLine {
                needle: "VT-d: interrupt remapping enabled on 1 unit(s)",
                any: &["compatibility format blocked"],
            },
            Check::LogLine {
                needle: "MSI enabled: 1 vectors on host vectors",
                any: &["through interrupt remapping"],
            },
            Check::DevicesBlocked(VFIO_DEVICES),
            Check::VtdInterruptRemapping,
        ],
    },
    Scenario {
        name: "vfio-irq-amdvi",
        about: "guest vfio-irq binds e1's MSI to vector 0x60 (after GROUP_BIND_VM; EPERM before): a loopback, the edu DMA-completion MSI while halted, and a raised edu interrupt arrive as 0x60, none after MSI is disabled; bytes match; e1/e2 blocked at the end (amd-iommu, pt=off)",
        machine: Machine {
            amd_pt: Some(false),
            // Interrupt remapping (on by default under TCG) pinned off: the
            // compatibility path (vfio-irq-amdvi-ir: on).
            intremap: Some(false),
            ..Machine::DEFAULT
                .with_iommu(Iommu::AmdVi)
                .with_topology(Topology::Vfio)
        },
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_IRQ]),
            VFIO_IRQ_LOG,
            Check::DevicesBlocked(VFIO_DEVICES),
        ],
    },
    // The same on amd-iommu with interrupt remapping asked for explicitly: the IVRS
    // names the IOAPIC, the kernel gives e1 its own (empty) interrupt remapping table
    // when it is attached and writes e1's MSI entry there; the guest's checks prove the
    // interrupt arrives.
    Scenario {
        name: "vfio-irq-amdvi-ir",
        about: "vfio-irq-amdvi with intremap=on: the kernel enables AMD-Vi interrupt remapping (IVRS names the IOAPIC) and e1's MSI goes through an IRTE in e1's own table (DTE IV = 1, IntCtl = remapped); loopback, completion MSI and raised interrupt arrive as 0x60; e1/e2 blocked at the end (pt=off)",
        machine: Machine {
            amd_pt: Some(false),
            intremap: Some(true),
            ..Machine::DEFAULT
                .with_iommu(Iommu::AmdVi)
                .with_topology(Topology::Vfio)
        },
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_IRQ]),
            Check::LogLine {
                needle: "AMD-Vi: interrupt remapping enabled on 1 unit(s)",
                any: &["blocked until mapped"],
            },
            Check::LogLine {
                needle: "MSI enabled: 1 vectors on host vectors",
                any: &["through interrupt remapping"],
            },
            Check::DevicesBlocked(VFIO_DEVICES),
        ],
    },
    // Legacy INTx (issue 8): the edu's pin → GSI (DSDT `_PRT`) → I/O APIC pin → a
    // host vector, level-triggered, masked at the device on each interrupt until the
    // guest unmasks. On VT-d with interrupt remapping the I/O APIC entry is in
    // remappable format naming an IRTE only the I/O APIC's source-id may use.
    Scenario {
        name: "vfio-intx-vtd",
        about: "guest vfio-intx binds e1's INTx to vector 0x61 (GET_IRQ_INFO: count 1, AUTOMASKED): a raised edu interrupt arrives once (automasked while still asserted), a loopback, the DMA-completion INTx while halted, held while masked by hand and delivered on unmask, none once disabled, then MSI; bytes match; e1/e2 blocked at the end (intel-iommu, intremap=on: the I/O APIC entry goes through an IRTE)",
        machine: Machine {
            intremap: Some(true),
            ..Machine::DEFAULT
                .with_iommu(Iommu::Vtd)
                .with_topology(Topology::Vfio)
        },
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_INTX]),
            Check::DevicesBlocked(VFIO_DEVICES),
            Check::VtdInterruptRemapping,
            Check::IoApicPin {
                pin: EDU_E1_GSI,
                remappable: true,
            },
        ],
    },
    Scenario {
        name: "vfio-intx-vtd-compat",
        about: "vfio-intx-vtd with intremap=off: the I/O APIC entry in compatibility format; the same checks",
        machine: Machine {
            intremap: Some(false),
            ..Machine::DEFAULT
                .with_iommu(Iommu::Vtd)
                .with_topology(Topology::Vfio)
        },
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_INTX]),
            Check::DevicesBlocked(VFIO_DEVICES),
            Check::IoApicPin {
                pin: EDU_E1_GSI,
                remappable: false,
            },
        ],
    },
    Scenario {
        name: "vfio-intx-amdvi",
        about: "guest vfio-intx on amd-iommu (pt=off, intremap=on: device MSIs remapped, the I/O APIC's own DTE passes its interrupts): INTx delivered, automasked, masked/unmasked, disabled, then MSI; e1/e2 blocked at the end",
        machine: Machine {
            amd_pt: Some(false),
            intremap: Some(true),
            ..Machine::DEFAULT
                .with_iommu(Iommu::AmdVi)
                .with_topology(Topology::Vfio)
        },
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_INTX]),
            Check::DevicesBlocked(VFIO_DEVICES),
            Check::IoApicPin {
                pin: EDU_E1_GSI,
                remappable: false,
            },
        ],
    },
    // I/O BARs and the ROM region through DEVICE_REGION_READ/WRITE (pci-testdev).
    Scenario {
        name: "vfio-testdev-vtd",
        about: "guest vfio-testdev: pci-testdev's I/O BAR through DEVICE_REGION_READ/WRITE (test selected and header read through the ports, the same bytes through BAR0, the counter incremented by exact 1-byte writes, bad accesses EINVAL, COMMAND's I/O bit the hypervisor's) and its ROM region equal to harness/testdata/vfio-rom.bin (4096 bytes, read at the firmware's address with the virtual ROM BAR moved and memory decoding off; writes EINVAL); t1 blocked at the end (intel-iommu)",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::Vtd)
            .with_topology(Topology::VfioTestdev),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_TESTDEV]),
            Check::DevicesBlocked(VFIO_TESTDEV_DEVICES),
        ],
    },
    Scenario {
        name: "vfio-testdev-amdvi",
        about: "guest vfio-testdev on amd-iommu (pt=off): pci-testdev's I/O BAR read and written through the hypervisor's port I/O, its ROM region equal to the image; t1 blocked in the device table at the end",
        machine: Machine {
            amd_pt: Some(false),
            ..Machine::DEFAULT
                .with_iommu(Iommu::AmdVi)
                .with_topology(Topology::VfioTestdev)
        },
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_TESTDEV]),
            Check::DevicesBlocked(VFIO_TESTDEV_DEVICES),
        ],
    },
    // MSI-X (QEMU's nvme: MSI-X only, the table in BAR0): programmed by the hypervisor
    // through its checked MMIO, delivered as the guest's vector, masked through the
    // entry's mask bit (held, delivered on unmask), disabled with the table cleared.
    Scenario {
        name: "vfio-msix-vtd",
        about: "guest vfio-msix binds nv1's MSI-X vector 0 to 0x70 before enabling the controller: the IDENTIFY completion arrives exactly once while halted; masked (entry 0's mask bit) the next completion's interrupt is held and delivered once on unmask; loopback; MSI/INTx refused while MSI-X is on; disabled (entry 0 masked and zeroed): a completion without interrupt; e1/e2/nv1 blocked at the end (intel-iommu, intremap=on: the table entry names an IRTE)",
        machine: Machine {
            intremap: Some(true),
            ..Machine::DEFAULT
                .with_iommu(Iommu::Vtd)
                .with_topology(Topology::VfioNvme)
        },
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_MSIX]),
            Check::DevicesBlocked(VFIO_NVME_DEVICES),
            Check::VtdInterruptRemapping,
            Check::LogLine {
                needle: "MSI-X enabled: 1 of",
                any: &["through interrupt remapping"],
            },
        ],
    },
    Scenario {
        name: "vfio-msix-vtd-compat",
        about: "vfio-msix-vtd with intremap=off: the table entry holds a compatibility-format message (0xFEE00000, data = the host vector); the same checks",
        machine: Machine {
            intremap: Some(false),
            ..Machine::DEFAULT
                .with_iommu(Iommu::Vtd)
                .with_topology(Topology::VfioNvme)
        },
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_MSIX]),
            Check::DevicesBlocked(VFIO_NVME_DEVICES),
            Check::LogLine {
                needle: "MSI-X enabled: 1 of",
                any: &["compatibility format"],
            },
        ],
    },
    Scenario {
        name: "vfio-msix-amdvi",
        about: "guest vfio-msix on amd-iommu (pt=off, intremap=on: the table entry's data indexes nv1's own interrupt remapping table): delivered, held while masked, loopback, disabled; e1/e2/nv1 blocked in the device table at the end",
        machine: Machine {
            amd_pt: Some(false),
            intremap: Some(true),
            ..Machine::DEFAULT
                .with_iommu(Iommu::AmdVi)
                .with_topology(Topology::VfioNvme)
        },
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::Guests(&[VFIO_MSIX]),
            Check::DevicesBlocked(VFIO_NVME_DEVICES),
            Check::LogLine {
                needle: "MSI-X enabled: 1 of",
                any: &["through interrupt remapping"],
            },
        ],
    },
];

/// MSI-X (topology `vfio-nvme`): vfio-msix owns nv1's group; see `guest/src/bin/vfio_msix.rs`.
const VFIO_MSIX: GuestRun = GuestRun::exits("vfio-msix", 0).with_groups("00:05.0");

/// Judges one run. Returns the failure reasons; empty means PASS.
pub fn evaluate(s: &Scenario, o: &Outcome) -> Vec<String> {
    let mut fails = Vec::new();
    let log = KernelLog::parse(&o.serial);
    let qemu_said = o
        .stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::trim);

    match o.exit {
        Exit::TimedOut => {
            let mut r = format!(
                "timed out after {:.1}s (QEMU killed)",
                o.elapsed.as_secs_f64()
            );
            if s.needs_oracle() && !log.holding {
                let _ = write!(r, "; the kernel never printed `{HOLDING_MARKER}`");
            } else if log.holding {
                let _ = write!(r, "; last seen: the kernel holding");
            }
            fails.push(r);
            return fails;
        }
        Exit::Status(c) if c == s.expect.status() => {}
        other => {
            let mut r = format!(
                "{}, expected {} ({})",
                describe_exit(other),
                s.expect.status(),
                describe_status(s.expect.status())
            );
            if let Some(msg) = qemu_said {
                let _ = write!(r, "; QEMU said: {msg}");
            }
            fails.push(r);
        }
    }
    if log.is_empty() {
        fails.push("serial log is empty".into());
        return fails;
    }
    if s.expect == KernelExit::BootCompleted {
        for (n, line) in log.fault_lines().into_iter().take(3) {
            fails.push(format!(
                "unexpected fault report on line {n}: {}",
                line.trim()
            ));
        }
    }
    for check in s.checks {
        check_one(*check, s, &log, o, &mut fails);
    }
    fails
}

fn oracle_view(o: &Outcome) -> Result<&[crate::model::Function], String> {
    oracle_full(o).map(|v| v.functions.as_slice())
}

fn oracle_full(o: &Outcome) -> Result<&crate::runner::OracleView, String> {
    match &o.oracle {
        Some(Ok(view)) => Ok(view),
        Some(Err(e)) => Err(format!("no QEMU view of the PCI bus: {e}")),
        None => Err("no QEMU view of the PCI bus (oracle not requested)".into()),
    }
}

fn check_one(check: Check, s: &Scenario, log: &KernelLog, o: &Outcome, fails: &mut Vec<String>) {
    match check {
        Check::Guests(runs) => fails.extend(guests::check_guests(runs, &log.lines)),
        Check::VtdFault(expected) => {
            if s.machine.effective_iommu() != Iommu::Vtd {
                fails.push("VtdFault needs intel-iommu (a scenario bug)".into());
            } else {
                fails.extend(vfio::check_fault(expected, oracle_full(o)));
            }
        }
        Check::VtdInterruptRemapping => {
            if s.machine.effective_iommu() != Iommu::Vtd || s.devices_blocked().is_empty() {
                fails.push(
                    "VtdInterruptRemapping needs intel-iommu and DevicesBlocked (a scenario bug)"
                        .into(),
                );
            } else {
                fails.extend(blocked::check_vtd_interrupt_remapping(oracle_full(o)));
            }
        }
        Check::NvmeDisabled(controllers) => {
            fails.extend(nvme::check(controllers, oracle_full(o)));
        }
        Check::IoApicPin { pin, remappable } => {
            fails.extend(ioapic::check(pin, remappable, oracle_full(o)));
        }
        Check::DevicesBlocked(devices) => {
            if s.machine.effective_iommu() == Iommu::None {
                fails.push("DevicesBlocked needs an IOMMU (a scenario bug)".into());
            } else {
                fails.extend(blocked::check(
                    dmatest::Unit::of(s.machine.effective_iommu()),
                    devices,
                    oracle_full(o),
                ));
            }
        }
        Check::Groups(expected) => match oracle_full(o) {
            Err(e) => fails.push(e),
            Ok(view) => fails.extend(groups::check_groups(
                expected,
                &GroupReport::parse(&log.lines),
                &view.nodes,
                s.machine.effective_iommu(),
            )),
        },
        Check::DmaTest => fails.extend(dmatest::check(
            &log.lines,
            dmatest::Unit::of(s.machine.effective_iommu()),
            oracle_full(o),
            &o.stderr,
        )),
        Check::RequesterIds(expected) => match oracle_full(o) {
            Err(e) => fails.push(e),
            Ok(view) => fails.extend(groups::check_requester_ids(
                expected,
                &GroupReport::parse(&log.lines),
                &view.nodes,
            )),
        },
        Check::PciMatchesQemu => {
            for p in &log.problems {
                fails.push(format!("PCI listing format: {p}"));
            }
            match log.enumerated {
                None => fails.push("no `pci: enumerated N functions` line".into()),
                Some(n) if n != log.functions.len() => fails.push(format!(
                    "the kernel says `pci: enumerated {n} functions` but printed {} function lines",
                    log.functions.len()
                )),
                Some(_) => {}
            }
            match oracle_view(o) {
                Err(e) => fails.push(e),
                Ok(qemu) => {
                    let diffs = compare::compare(&log.functions, qemu);
                    if !diffs.is_empty() {
                        fails.push(format!(
                            "PCI listing differs from QEMU's ({} functions in QEMU, {} printed): {} difference(s)",
                            qemu.len(),
                            log.functions.len(),
                            diffs.len()
                        ));
                        fails.extend(diffs.into_iter().map(|d| format!("  {d}")));
                    }
                }
            }
        }
        Check::NoPciFunctions => {
            if !log.functions.is_empty() {
                fails.push(format!(
                    "the kernel printed {} PCI function line(s), expected none (first: {})",
                    log.functions.len(),
                    log.functions[0]
                ));
            }
            if let Some(n) = log.enumerated.filter(|n| *n != 0) {
                fails.push(format!(
                    "the kernel says `pci: enumerated {n} functions`, expected 0"
                ));
            }
            match oracle_view(o) {
                Err(e) => fails.push(e),
                Ok([]) => fails
                    .push("QEMU shows no PCI function either: the scenario proves nothing".into()),
                Ok(_) => {}
            }
        }
        Check::LogLine { needle, any } => {
            if log.lines_with(needle, any).is_empty() {
                fails.push(format!(
                    "no log line contains `{needle}` and one of: {}",
                    any.join(", ")
                ));
            }
        }
        Check::Exception { vector, cr2 } => match log.exceptions.first() {
            None => fails.push("no `EXCEPTION vector N` line".into()),
            Some(e) => {
                if e.vector != vector {
                    fails.push(format!(
                        "first exception (line {}) is vector {}, expected {vector}",
                        e.line, e.vector
                    ));
                }
                if e.rip.is_none() {
                    fails.push(format!("no `RIP=0x..` after the EXCEPTION line {}", e.line));
                }
                if let Some(want) = cr2 {
                    match e.cr2 {
                        None => {
                            fails.push(format!("no `CR2=0x..` after the EXCEPTION line {}", e.line))
                        }
                        Some(got) if got != want => {
                            fails.push(format!("CR2=0x{got:x}, expected 0x{want:x}"))
                        }
                        Some(_) => {}
                    }
                }
            }
        },
        Check::Panic => match log.panics.first() {
            None => fails.push("no `PANIC at` line".into()),
            Some(p) if p.location.is_none() => fails.push(format!(
                "the PANIC line {} has no `file.rs:line:col` location: {}",
                p.line, p.text
            )),
            Some(_) => {}
        },
    }
}

/// Everything a scenario run needs besides the scenario itself.
pub struct Context<'a> {
    pub qemu: &'a Qemu,
    pub kernel: &'a Path,
    /// `target/scenarios`: logs, command lines, query-pci replies, ACPI tables.
    pub out_dir: &'a Path,
    /// Short directory for QMP sockets (Unix socket paths are limited to ~107 bytes).
    pub sock_dir: &'a Path,
    pub timeout: Duration,
    /// Kernel command-line words added to every scenario (`--log`, `--append`).
    pub cmdline_extra: &'a [String],
    /// Extra QEMU arguments (after `--`).
    pub qemu_extra: &'a [String],
    /// The guest programs, for scenarios with guests (`None`: not built).
    pub guests: Option<GuestBins<'a>>,
}

/// The built guest programs and where their archives go.
#[derive(Clone, Copy)]
pub struct GuestBins<'a> {
    /// `target/guests`: one `SCENARIO.img` per scenario with guests.
    pub dir: &'a Path,
    /// Guest name → ELF, or why `cargo build -p sluice-guest` failed.
    pub bins: &'a Result<BTreeMap<String, PathBuf>, String>,
}

pub struct Report {
    pub failures: Vec<String>,
    pub elapsed: Duration,
    pub log_path: PathBuf,
    pub serial: String,
}

/// The kernel command line of a scenario.
pub fn kernel_cmdline(s: &Scenario, extra: &[String]) -> String {
    let mut words: Vec<&str> = extra.iter().map(String::as_str).collect();
    words.extend(s.cmdline.split_whitespace());
    let guest_words = guests::cmdline_words(&s.guests());
    words.extend(guest_words.iter().map(String::as_str));
    if s.needs_oracle() {
        words.push("hold");
    }
    words.join(" ")
}

pub fn run_scenario(s: &Scenario, ctx: &Context<'_>) -> Report {
    let log_path = ctx.out_dir.join(format!("{}.log", s.name));
    let fail = |reason: String| Report {
        failures: vec![reason],
        elapsed: Duration::ZERO,
        log_path: log_path.clone(),
        serial: String::new(),
    };
    let mut wiring = Wiring::default();
    for table in s.acpi {
        let path = ctx.out_dir.join(table.file_name());
        if let Err(e) = std::fs::write(&path, table.bytes()) {
            return fail(format!("cannot write {}: {e}", path.display()));
        }
        wiring.acpi_tables.push(path);
    }
    let runs = s.guests();
    if !runs.is_empty() {
        let Some(g) = ctx.guests else {
            return fail("the guest programs were not built".into());
        };
        let bins = match g.bins {
            Ok(b) => b,
            Err(e) => return fail(format!("the guests did not build: {e}")),
        };
        let path = g.dir.join(format!("{}.img", s.name));
        let names = guests::distinct_names(runs.iter().map(|r| r.name));
        if let Err(e) = guests::write_archive(&path, &names, bins) {
            return fail(format!("cannot write the guest archive: {e}"));
        }
        wiring.initrd = Some(path);
    }
    if s.needs_oracle() {
        let sock = ctx.sock_dir.join(format!("{}.qmp", s.name));
        let _ = std::fs::remove_file(&sock);
        wiring.qmp_socket = Some(sock);
    }
    let cmdline = kernel_cmdline(s, ctx.cmdline_extra);
    let args = match machine::qemu_args(
        ctx.qemu,
        &s.machine,
        ctx.kernel,
        &cmdline,
        &wiring,
        ctx.qemu_extra,
    ) {
        Ok(a) => a,
        Err(e) => return fail(format!("bad machine definition: {e}")),
    };
    let command = machine::shell_quote(&ctx.qemu.program, &args);
    let _ = std::fs::write(
        ctx.out_dir.join(format!("{}.cmd", s.name)),
        format!("{command}\n"),
    );

    let follow_up = s.follow_up_plan();
    let outcome = runner::run(&runner::RunRequest {
        program: &ctx.qemu.program,
        args: &args,
        timeout: ctx.timeout,
        qmp_socket: wiring.qmp_socket.clone(),
        monitor: s.monitor_plan(),
        follow_up: follow_up.as_deref(),
    });
    if let Some(sock) = &wiring.qmp_socket {
        let _ = std::fs::remove_file(sock);
    }
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let _ = std::fs::write(&log_path, &outcome.serial);
    let stderr_path = ctx.out_dir.join(format!("{}.stderr", s.name));
    if outcome.stderr.is_empty() {
        let _ = std::fs::remove_file(&stderr_path);
    } else {
        let _ = std::fs::write(&stderr_path, &outcome.stderr);
    }
    if let Some(Ok(view)) = &outcome.oracle {
        let _ = std::fs::write(
            ctx.out_dir.join(format!("{}.query-pci.json", s.name)),
            &view.raw_json,
        );
        // What the monitor answered (xp reads of registers, tables, buffers), in order.
        let monitor_path = ctx.out_dir.join(format!("{}.monitor.txt", s.name));
        if view.monitor.is_empty() {
            let _ = std::fs::remove_file(&monitor_path);
        } else {
            let transcript: String = view
                .monitor
                .iter()
                .map(|r| match &r.output {
                    Ok(out) => format!("(qemu) {}\n{}\n", r.command, out.trim_end()),
                    Err(e) => format!("(qemu) {}\nERROR: {e}\n", r.command),
                })
                .collect();
            let _ = std::fs::write(monitor_path, transcript);
        }
    }
    Report {
        failures: evaluate(s, &outcome),
        elapsed: outcome.elapsed,
        log_path,
        serial: outcome.serial,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::tests::edits;
    use crate::oracle::{parse_query_pci, tests::BRIDGES_JSON};
    use crate::runner::OracleView;

    type OracleFunctions = Vec<crate::model::Function>;

    fn scenario(name: &str) -> &'static Scenario {
        SCENARIOS.iter().find(|s| s.name == name).unwrap()
    }

    fn outcome(
        status: i32,
        serial: &str,
        oracle: Option<Result<OracleFunctions, String>>,
    ) -> Outcome {
        Outcome {
            exit: Exit::Status(status),
            serial: serial.into(),
            stderr: String::new(),
            oracle: oracle.map(|r| {
                r.map(|functions| OracleView {
                    functions,
                    nodes: Vec::new(),
                    raw_json: String::new(),
                    monitor: Vec::new(),
                })
            }),
            elapsed: Duration::from_millis(1200),
        }
    }

    fn bridges() -> OracleFunctions {
        parse_query_pci(&serde_json::from_str(BRIDGES_JSON).unwrap()).unwrap()
    }

    use crate::compare::tests::MATCHING_LOG as GOOD_BRIDGES_LOG;

    #[test]
    fn names_are_unique_and_tidy() {
        let mut names: Vec<_> = SCENARIOS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len());
        for s in SCENARIOS {
            assert!(
                s.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{}",
                s.name
            );
            assert!(s.machine.device_args().is_ok(), "{}", s.name);
        }
    }

    #[test]
    fn cmdline_gets_hold_only_with_oracle() {
        assert_eq!(kernel_cmdline(scenario("boot-vtd"), &[]), "hold");
        assert_eq!(
            kernel_cmdline(scenario("selftest-panic"), &["log=debug".into()]),
            "log=debug selftest=panic"
        );
    }

    #[test]
    fn pass_with_matching_oracle() {
        let o = outcome(33, GOOD_BRIDGES_LOG, Some(Ok(bridges())));
        assert_eq!(evaluate(scenario("pci-bridges"), &o), Vec::<String>::new());
    }

    #[test]
    fn fail_on_mismatch_with_precise_diff() {
        let log = GOOD_BRIDGES_LOG.replace("size 0x100\n", "size 0x200\n");
        let f = evaluate(
            scenario("pci-bridges"),
            &outcome(33, &log, Some(Ok(bridges()))),
        );
        assert_eq!(
            f[0],
            "PCI listing differs from QEMU's (5 functions in QEMU, 5 printed): 1 difference(s)"
        );
        assert_eq!(f[1], "  01:00.0 BAR0: size kernel 0x200, QEMU 0x100");
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn fail_on_wrong_status_fault_lines_and_missing_oracle() {
        let log =
            format!("{GOOD_BRIDGES_LOG}[ERROR x] EXCEPTION vector 13 error code 0x0 RIP=0x1\n");
        let mut o = outcome(
            39,
            &log,
            Some(Err("the kernel never printed `holding:`".into())),
        );
        o.stderr = "qemu-system-x86_64: warning: something\n".into();
        let f = evaluate(scenario("boot-vtd"), &o);
        assert_eq!(
            f[0],
            "exit status 39 (CPU exception), expected 33 (boot completed); QEMU said: qemu-system-x86_64: warning: something"
        );
        assert!(
            f[1].starts_with("unexpected fault report on line 13: [ERROR x] EXCEPTION vector 13"),
            "{f:?}"
        );
        assert_eq!(
            f[2],
            "no QEMU view of the PCI bus: the kernel never printed `holding:`"
        );
    }

    #[test]
    fn triple_fault_empty_log_and_timeout() {
        let f = evaluate(scenario("boot-vtd"), &outcome(0, "", None));
        assert_eq!(
            f,
            [
                "exit status 0 (triple fault or reset (QEMU -no-reboot exits 0)), expected 33 (boot completed)",
                "serial log is empty"
            ]
        );
        let mut o = outcome(0, "[INFO  main] hi\n", None);
        o.exit = Exit::TimedOut;
        let f = evaluate(scenario("boot-vtd"), &o);
        assert_eq!(
            f,
            ["timed out after 1.2s (QEMU killed); the kernel never printed `holding:`"]
        );
    }

    #[test]
    fn listing_count_must_match_summary() {
        let log = GOOD_BRIDGES_LOG.replace("enumerated 5 functions", "enumerated 6 functions");
        let f = evaluate(
            scenario("pci-bridges"),
            &outcome(33, &log, Some(Ok(bridges()))),
        );
        assert_eq!(
            f,
            ["the kernel says `pci: enumerated 6 functions` but printed 5 function lines"]
        );
        let log = GOOD_BRIDGES_LOG.replace("[INFO  pci] pci: enumerated 5 functions\n", "");
        let f = evaluate(
            scenario("pci-bridges"),
            &outcome(33, &log, Some(Ok(bridges()))),
        );
        assert_eq!(f, ["no `pci: enumerated N functions` line"]);
    }

    #[test]
    fn missing_mcfg() {
        let s = scenario("missing-mcfg");
        let good =
            "[WARN  acpi] MCFG table missing: PCI enumeration disabled\n[INFO  main] holding:\n";
        assert!(evaluate(s, &outcome(33, good, Some(Ok(bridges())))).is_empty());
        let f = evaluate(s, &outcome(33, GOOD_BRIDGES_LOG, Some(Ok(bridges()))));
        assert_eq!(f[0], "no log line contains `MCFG` and one of: missing");
        assert!(f[1].starts_with("the kernel printed 5 PCI function line(s), expected none (first: 00:00.0 [8086:29c0]"), "{f:?}");
        assert_eq!(
            f[2],
            "the kernel says `pci: enumerated 5 functions`, expected 0"
        );
        let f = evaluate(s, &outcome(33, good, Some(Ok(Vec::new()))));
        assert_eq!(
            f,
            ["QEMU shows no PCI function either: the scenario proves nothing"]
        );
    }

    #[test]
    fn corrupt_mcfg_needs_the_warning() {
        let s = scenario("corrupt-mcfg");
        let f = evaluate(s, &outcome(33, GOOD_BRIDGES_LOG, Some(Ok(bridges()))));
        assert_eq!(
            f,
            ["no log line contains `MCFG` and one of: invalid, corrupt, malformed"]
        );
        let log =
            format!("[WARN  acpi] MCFG at 0x7ffe1234: Malformed length 51\n{GOOD_BRIDGES_LOG}");
        assert!(evaluate(s, &outcome(33, &log, Some(Ok(bridges())))).is_empty());
    }

    #[test]
    fn page_fault_selftest() {
        let s = scenario("selftest-page-fault");
        let good = "[ERROR x] EXCEPTION vector 14 (#PF) error code 0x0\n[ERROR x] RIP=0x0000000000104000 CR2=0x0000400000000000\n";
        assert!(evaluate(s, &outcome(39, good, None)).is_empty());
        let f = evaluate(
            s,
            &outcome(39, &good.replace("CR2=0x0000400000000000", "CR2=0x0"), None),
        );
        assert_eq!(f, ["CR2=0x0, expected 0x400000000000"]);
        let f = evaluate(
            s,
            &outcome(39, &good.replace("vector 14", "vector 13"), None),
        );
        assert_eq!(f, ["first exception (line 1) is vector 13, expected 14"]);
        let f = evaluate(s, &outcome(37, "[ERROR x] PANIC at a.rs:1:1: x\n", None));
        assert_eq!(
            f[0],
            "exit status 37 (kernel panic), expected 39 (CPU exception)"
        );
        assert_eq!(f[1], "no `EXCEPTION vector N` line");
    }

    #[test]
    fn panic_selftest() {
        let s = scenario("selftest-panic");
        assert!(
            evaluate(
                s,
                &outcome(
                    37,
                    "[ERROR p] PANIC at kernel/src/main.rs:10:5: boom\n",
                    None
                )
            )
            .is_empty()
        );
        let f = evaluate(s, &outcome(37, "[ERROR p] PANIC at unknown: boom\n", None));
        assert_eq!(
            f,
            ["the PANIC line 1 has no `file.rs:line:col` location: unknown: boom"]
        );
    }

    /// The real QEMU 7.2 run of `groups-pcibridge-amdvi` (kernel log up to `holding:`
    /// and the `query-pci` reply taken then), before the kernel printed groups.
    const PCIBRIDGE_LOG: &str = include_str!("../testdata/pcibridge-amdvi-qemu72.log");

    fn pcibridge_oracle() -> OracleView {
        let v: serde_json::Value =
            serde_json::from_str(crate::groups::tests::PCIBRIDGE_AMD_JSON).unwrap();
        OracleView {
            functions: parse_query_pci(&v).unwrap(),
            nodes: crate::oracle::parse_query_pci_nodes(&v).unwrap(),
            raw_json: String::new(),
            monitor: Vec::new(),
        }
    }

    fn with_oracle(status: i32, serial: &str, view: OracleView) -> Outcome {
        let mut o = outcome(status, serial, None);
        o.oracle = Some(Ok(view));
        o
    }

    /// The real log with the group report of `groups::tests::GOOD_LOG` spliced in.
    fn pcibridge_log_with_groups() -> String {
        let report: String = crate::groups::tests::GOOD_LOG
            .lines()
            .filter(|l| l.starts_with("[INFO  iommu]"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(PCIBRIDGE_LOG.contains("[INFO  boot] holding:"));
        PCIBRIDGE_LOG.replace(
            "[INFO  boot] holding:",
            &format!("{report}[INFO  boot] holding:"),
        )
    }

    #[test]
    fn groups_scenario_passes_with_a_correct_kernel() {
        let s = scenario("groups-pcibridge-amdvi");
        assert_eq!(kernel_cmdline(s, &[]), "hold");
        let o = with_oracle(33, &pcibridge_log_with_groups(), pcibridge_oracle());
        assert_eq!(evaluate(s, &o), Vec::<String>::new());
    }

    #[test]
    fn groups_scenario_fails_today_and_on_a_wrong_partition() {
        let s = scenario("groups-pcibridge-amdvi");
        // The kernel as it is now: PCI listing fine, no groups.
        let f = evaluate(s, &with_oracle(33, PCIBRIDGE_LOG, pcibridge_oracle()));
        assert!(
            f[0].starts_with("the kernel printed no IOMMU groups"),
            "{f:?}"
        );
        assert!(f[0].ends_with(
            "expected 5 groups: {00:00.0} {rp1} {pb1, e1, e2} {cb1, e3, e4} {00:1f.0, 00:1f.2, 00:1f.3}"
        ));
        assert_eq!(f.len(), 7, "{f:?}"); // + six requester-id lines
        // A kernel that forgets the conventional bridge's alias.
        let log = edits(
            &pcibridge_log_with_groups(),
            &[
                (
                    "group 2 (ivhd0): 0000:00:03.0 0000:03:01.0 0000:03:02.0",
                    "group 2 (ivhd0): 0000:00:03.0 0000:03:01.0",
                ),
                (
                    "[INFO  iommu]     0000:03:02.0 requester-ids 03:02.0,00:03.0 (DMA alias of 0000:00:03.0 (PCI bridge))\n",
                    "[INFO  iommu] group 5 (ivhd0): 0000:03:02.0\n[INFO  iommu]     0000:03:02.0 requester-ids 03:02.0 (isolated)\n",
                ),
                ("formed 5 IOMMU groups", "formed 6 IOMMU groups"),
            ],
        );
        let f = evaluate(s, &with_oracle(33, &log, pcibridge_oracle()));
        assert_eq!(
            f,
            [
                "IOMMU groups differ: kernel 6 groups, expected 5: {00:00.0} {rp1} {pb1, e1, e2} {cb1, e3, e4} {00:1f.0, 00:1f.2, 00:1f.3}",
                "  expected group {cb1, e3, e4} not formed; kernel: cb1 in group 2 {cb1, e3}; e3 in group 2 {cb1, e3}; e4 in group 5 {e4}",
                "  kernel group 2 (ivhd0) {cb1, e3} is not expected; expected: cb1 in {cb1, e3, e4}; e3 in {cb1, e3, e4}",
                "  kernel group 5 (ivhd0) {e4} is not expected; expected: e4 in {cb1, e3, e4}",
                "line 63: requester ids of e4 (03:02.0): kernel 03:02.0, expected 03:02.0 (own id),00:03.0 (cb1's id)",
            ]
        );
        // Without QEMU's view the ids cannot be resolved.
        let f = evaluate(s, &outcome(33, &pcibridge_log_with_groups(), None));
        assert_eq!(
            f,
            [
                "no QEMU view of the PCI bus (oracle not requested)",
                "no QEMU view of the PCI bus (oracle not requested)",
                "no QEMU view of the PCI bus (oracle not requested)",
            ]
        );
    }

    /// amd-iommu's own function (00:01.0) must be in no group: a kernel that gives it a
    /// group of its own (as the kernel once did) fails the pcibridge scenario.
    #[test]
    fn groups_scenario_fails_when_the_iommu_function_is_grouped() {
        let s = scenario("groups-pcibridge-amdvi");
        let log = edits(
            &pcibridge_log_with_groups(),
            &[
                (
                    "[INFO  iommu] no group: 0000:00:01.0 (the IOMMU itself: never translated, never assignable)\n",
                    "[INFO  iommu] group 5 (ivhd0): 0000:00:01.0\n[INFO  iommu]     0000:00:01.0 requester-ids 00:01.0 (isolated)\n",
                ),
                ("formed 5 IOMMU groups", "formed 6 IOMMU groups"),
            ],
        );
        let f = evaluate(s, &with_oracle(33, &log, pcibridge_oracle()));
        assert_eq!(
            f,
            [
                "IOMMU groups differ: kernel 6 groups, expected 5: {00:00.0} {rp1} {pb1, e1, e2} {cb1, e3, e4} {00:1f.0, 00:1f.2, 00:1f.3}",
                "  kernel group 5 (ivhd0) {iommu} is not expected; expected: iommu (00:01.0) in no expected group",
            ]
        );
    }

    /// The group scenarios are named after topology and vendor, name each device
    /// once, and name the IOMMU function exactly when it is one (amd-iommu).
    #[test]
    fn group_scenarios_are_consistent() {
        let mut count = 0;
        for s in SCENARIOS {
            let Some(groups) = s.checks.iter().find_map(|c| match c {
                Check::Groups(g) => Some(*g),
                _ => None,
            }) else {
                continue;
            };
            count += 1;
            let vendor = match s.machine.effective_iommu() {
                Iommu::Vtd => "vtd",
                Iommu::AmdVi => "amdvi",
                Iommu::None => panic!("{}: groups without an IOMMU", s.name),
            };
            assert_eq!(
                s.name,
                format!("groups-{}-{vendor}", s.machine.topology.name())
            );
            assert!(s.needs_oracle());
            let tokens: Vec<&str> = groups.iter().flat_map(|g| g.iter().copied()).collect();
            let mut unique = tokens.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), tokens.len(), "{}: a token twice", s.name);
            for builtin in ["00:00.0", "00:1f.0", "00:1f.2", "00:1f.3"] {
                assert!(tokens.contains(&builtin), "{}: {builtin}", s.name);
            }
            assert!(!groups.iter().any(|g| g.contains(&"iommu")), "{}", s.name);
        }
        assert_eq!(count, 12);
    }

    /// The DMA scenarios: machine, command line, the QMP plan, and the verdicts on
    /// today's kernel (no `dmatest` lines), a correct report, and a kernel that could
    /// not run the experiments.
    #[test]
    fn dma_scenarios() {
        use crate::dmatest::tests::{good_log, good_memory, view_for};
        for (name, bits) in [("vtd-dma-aw39", 39), ("vtd-dma-aw48", 48)] {
            let s = scenario(name);
            assert_eq!(kernel_cmdline(s, &[]), "dmatest hold");
            let devices = s.machine.device_args().unwrap().join(" ");
            assert_eq!(
                devices,
                format!(
                    "-device intel-iommu,aw-bits={bits} -device edu,id=e1,bus=pcie.0 -device edu,id=e2,bus=pcie.0"
                )
            );
            let plan = s.monitor_plan().expect("dmatest reads guest memory");
            assert_eq!(plan(&good_log()).len(), 8);
            assert!(scenario("boot-vtd").monitor_plan().is_none());

            // Today's kernel: boots, holds, prints no dmatest lines.
            let today = "[INFO  boot] pci: enumerated 6 functions\n[INFO  boot] holding:\n";
            let f = evaluate(
                s,
                &with_oracle(33, today, view_for(today, &good_memory(), 0)),
            );
            assert_eq!(f.len(), 1, "{f:?}");
            assert!(
                f[0].starts_with("the kernel printed no `dmatest` results"),
                "{f:?}"
            );

            // A correct kernel.
            let log = good_log();
            let o = with_oracle(33, &log, view_for(&log, &good_memory(), 0));
            assert_eq!(evaluate(s, &o), Vec::<String>::new());

            // The kernel could not run the experiments: status 35 and its ERROR line.
            let log = "[ERROR dmatest] dmatest: cannot run: no DRHD\n[INFO  boot] holding:\n";
            let f = evaluate(s, &with_oracle(35, log, view_for(log, &good_memory(), 0)));
            assert_eq!(
                f[0],
                "exit status 35 (boot stopped: a required feature is missing), expected 33 (boot completed)"
            );
            assert_eq!(
                f[1],
                "line 1: the kernel reports: [ERROR dmatest] dmatest: cannot run: no DRHD"
            );
            assert_eq!(f.len(), 3, "{f:?}");
        }
    }

    /// The amd-iommu DMA scenario: pt=off (QEMU 10 translates only then), the AMD
    /// monitor plan, and the verdicts on today's kernel, on what QEMU 7.2/10.0 give a
    /// correct kernel (`event=none`), on decoded events, and on a bypass.
    #[test]
    fn amdvi_dma_scenario() {
        use crate::dmatest::tests::{
            amd_log_events, amd_log_none, amd_regs, amd_view_for, good_memory, pattern,
        };
        let s = scenario("amdvi-dma");
        assert_eq!(kernel_cmdline(s, &[]), "dmatest hold");
        assert_eq!(
            s.machine.device_args().unwrap().join(" "),
            "-device amd-iommu,id=iommu,pt=off -device edu,id=e1,bus=pcie.0 -device edu,id=e2,bus=pcie.0"
        );
        let plan = s.monitor_plan().expect("dmatest reads guest memory");
        let cmds = plan(&amd_log_none());
        assert_eq!(cmds.len(), 9, "{cmds:?}");
        assert_eq!(cmds[7..], ["xp /2xw 0xfed80018", "xp /6xw 0xfed82010"]);
        // The VT-d scenarios keep their plan.
        assert_eq!(
            scenario("vtd-dma-aw39").monitor_plan().unwrap()(&amd_log_none())[7],
            "xp /1xw 0xfed90034"
        );

        let today = "[INFO  boot] pci: enumerated 7 functions\n[INFO  boot] holding:\n";
        let f = evaluate(
            s,
            &with_oracle(33, today, amd_view_for(today, &good_memory(), &amd_regs(5))),
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].starts_with("the kernel printed no `dmatest` results"),
            "{f:?}"
        );

        for log in [amd_log_none(), amd_log_events()] {
            let o = with_oracle(33, &log, amd_view_for(&log, &good_memory(), &amd_regs(5)));
            assert_eq!(evaluate(s, &o), Vec::<String>::new());
            // The same lines fail the VT-d judge: they carry no frcd=.
            let o = with_oracle(33, &log, amd_view_for(&log, &good_memory(), &amd_regs(5)));
            let f = evaluate(scenario("vtd-dma-aw48"), &o);
            assert!(f.iter().any(|l| l.contains("no `frcd=` value")), "{f:?}");
        }

        // Everything went straight to memory (QEMU 10 with pt=on).
        let canary = crate::dmatest::tests::hex_of(&[0xc5; 64]);
        let p = crate::dmatest::tests::hex_of(&pattern(1));
        let log = amd_log_none().replace(&format!("after={canary}"), &format!("after={p}"));
        let mut mem = good_memory();
        mem.insert(crate::dmatest::tests::CANARY, pattern(1));
        mem.insert(crate::dmatest::tests::E2_TARGET, pattern(1));
        let f = evaluate(
            s,
            &with_oracle(33, &log, amd_view_for(&log, &mem, &amd_regs(5))),
        );
        assert!(
            f.iter().any(|l| l.starts_with("DMA bypassed translation")),
            "{f:?}"
        );
    }

    #[test]
    fn guest_scenarios() {
        assert_eq!(
            kernel_cmdline(scenario("guest-hello"), &["log=debug".into()]),
            "log=debug guest=hello:16M"
        );
        assert_eq!(
            kernel_cmdline(scenario("guest-isolation"), &[]),
            "guest=bad-memory:16M guest=bad-port:16M guest=bad-msr:16M guest=triple-fault:16M \
             guest=hello:16M expect=bad-memory:terminated expect=bad-port:terminated \
             expect=bad-msr:terminated expect=triple-fault:terminated"
        );
        assert_eq!(kernel_cmdline(scenario("guest-sse"), &[]), "guest=sse:16M");
        assert_eq!(
            kernel_cmdline(scenario("guest-preemption"), &[]),
            "guest=spinner:16M guest=hello:16M expect=spinner:terminated"
        );
        assert_eq!(
            kernel_cmdline(scenario("guest-preempt-sse"), &[]),
            "guest=spinner:16M guest=preempt-sse:16M expect=spinner:terminated"
        );
        assert_eq!(
            kernel_cmdline(scenario("guest-vint"), &[]),
            "guest=vint:16M"
        );
        // `hold` on both vendors: the IOMMU's tables (and on VT-d the fault record) are
        // read while the kernel holds (see blocked.rs, vfio.rs).
        for vendor in ["vtd", "amdvi"] {
            assert_eq!(
                kernel_cmdline(scenario(&format!("vfio-edu-{vendor}")), &[]),
                "guest=vfio-edu:16M:groups=00:03.0 hold"
            );
            assert_eq!(
                kernel_cmdline(
                    scenario(&format!("vfio-hostile-{vendor}")),
                    &["log=debug".into()]
                ),
                "log=debug guest=vfio-edu:16M:groups=00:03.0 \
                 guest=vfio-hostile:16M:groups=00:04.0,00:1f.0,00:03.0 hold"
            );
            assert_eq!(
                kernel_cmdline(scenario(&format!("vfio-release-{vendor}")), &[]),
                "guest=vfio-killed:16M:groups=00:03.0 guest=vfio-next:16M:groups=00:03.0 \
                 expect=vfio-killed:terminated hold"
            );
        }
        // `bench` is a benchmark (`qemu-run.sh bench`), never a scenario.
        assert!(
            !SCENARIOS
                .iter()
                .any(|s| s.guests().iter().any(|g| g.name == "bench"))
        );
        assert!(scenario("boot-vtd").guests().is_empty());
        assert!(!SCENARIOS.iter().any(|s| s.name.contains("spinner")));

        // Every guest a scenario runs is a [[bin]] of guest/Cargo.toml, once per scenario.
        let manifest = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest/Cargo.toml"),
        )
        .unwrap();
        for s in SCENARIOS {
            let runs = s.guests();
            let names = guests::distinct_names(runs.iter().map(|r| r.name));
            assert_eq!(names.len(), runs.len(), "{}", s.name);
            for r in &runs {
                assert!(
                    manifest.contains(&format!("name = \"{}\"", r.name)),
                    "{}: no guest bin {}",
                    s.name,
                    r.name
                );
                assert!(r.ram().is_some(), "{}: {}", s.name, r.size);
            }
        }
    }

    #[test]
    fn guest_scenario_judging() {
        let s = scenario("guest-hello");
        // Today's kernel: boots, runs no guest.
        let f = evaluate(s, &outcome(33, "[INFO  main] boot completed\n", None));
        assert_eq!(
            f,
            [
                "hello: no `hello: started, RAM .., entry ..` line (the kernel did not run it)",
                "no `guests: N ran, N passed, N failed` line",
            ]
        );
        let good = "\
[INFO  guest] hello: started, RAM 16 MiB, entry 0x200000
[INFO  guest] [hello] Hello from the Sluice guest `hello`
[INFO  guest] [hello] check version: ok
[INFO  guest] [hello] check null: ok
[INFO  guest] hello: exited with status 0
[INFO  guest] guests: 1 ran, 1 passed, 0 failed
";
        assert_eq!(evaluate(s, &outcome(33, good, None)), Vec::<String>::new());
        // A failed guest check fails the scenario even when the status is right.
        let bad = good.replace(
            "check null: ok",
            "check null: FAILED: NULL: got 1, expected 0",
        );
        assert_eq!(
            evaluate(s, &outcome(33, &bad, None)),
            ["hello: check null: FAILED: NULL: got 1, expected 0"]
        );
        // A guest panic is a fault line; the kernel's 35 is reported too.
        let panicked = good
            .replace(
                "check null: ok",
                "PANIC at guest/src/bin/hello.rs:1:1: boom",
            )
            .replace("exited with status 0", "exited with status 101")
            .replace("1 passed, 0 failed", "0 passed, 1 failed");
        let f = evaluate(s, &outcome(35, &panicked, None));
        assert!(f[0].starts_with("exit status 35"), "{f:?}");
        assert!(
            f[1].starts_with("unexpected fault report on line 4"),
            "{f:?}"
        );
        assert_eq!(
            f[2..],
            [
                "hello: exited with status 101 (line 5), expected exited with status 0",
                "`guests: 1 ran, 0 passed, 1 failed`, expected 1 ran, 1 passed, 0 failed",
            ]
        );
    }

    /// What the oracle holds for a VFIO scenario at hold: `vfio::tests::view` (the fault
    /// record `frcd`, FSTS) plus the scenario's own follow-up rounds (the walks of
    /// `blocked.rs`) answered from `tables`, as QEMU prints `xp`.
    fn vfio_view(
        s: &Scenario,
        frcd: Option<&str>,
        tables: &crate::blocked::tests::Words,
    ) -> OracleView {
        let mut v = crate::vfio::tests::view(frcd);
        let plan = s.follow_up_plan().expect("a DevicesBlocked check");
        crate::oracle::follow_up_rounds(&mut v, &*plan, &mut |c| {
            Ok(crate::dmatest::tests::fake_xp_words(
                c,
                &BTreeMap::new(),
                tables,
            ))
        });
        v
    }

    /// The VFIO scenarios: the machine puts e1/e2 where `groups=` names them, amd-iommu
    /// translates (pt=off), every one holds to read the IOMMU's tables (and on VT-d the
    /// fault record), and the verdicts on a kernel without the VFIO calls, on a good run
    /// and on a run that leaves a device attached.
    #[test]
    fn vfio_scenarios() {
        use crate::blocked::tests::{amd_blocked, vtd_blocked, vtd_e1_attached};
        use crate::guests::GuestExpect;
        for (name, iommu) in [
            ("vfio-edu-vtd", "-device intel-iommu"),
            ("vfio-edu-amdvi", "-device amd-iommu,id=iommu,pt=off"),
            ("vfio-hostile-vtd", "-device intel-iommu"),
            ("vfio-hostile-amdvi", "-device amd-iommu,id=iommu,pt=off"),
            ("vfio-release-vtd", "-device intel-iommu"),
            ("vfio-release-amdvi", "-device amd-iommu,id=iommu,pt=off"),
        ] {
            let s = scenario(name);
            assert_eq!(
                s.machine.device_args().unwrap().join(" "),
                format!(
                    "{iommu} -device edu,id=e1,bus=pcie.0,addr=03.0 -device edu,id=e2,bus=pcie.0,addr=04.0"
                )
            );
            let vtd = name.ends_with("-vtd");
            assert!(s.needs_oracle(), "{name}");
            assert_eq!(s.devices_blocked(), ["e1", "e2"], "{name}");
            assert!(s.follow_up_plan().is_some(), "{name}");
            assert_eq!(
                s.monitor_plan().map(|plan| plan("")),
                vtd.then(|| vec![
                    "xp /4xw 0xfed90220".to_string(),
                    "xp /1xw 0xfed90034".to_string()
                ]),
                "{name}"
            );
            assert_eq!(s.expect, KernelExit::BootCompleted);
            let runs = s.guests();
            if name.starts_with("vfio-release") {
                assert_eq!(runs.len(), 2);
                assert_eq!((runs[0].name, runs[1].name), ("vfio-killed", "vfio-next"));
                assert_eq!((runs[0].groups, runs[1].groups), ("00:03.0", "00:03.0"));
                assert_eq!(
                    runs[0].expect,
                    GuestExpect::Terminated(Termination::Port(0x80))
                );
                assert!(runs[0].checks, "vfio-killed must show its steps passed");
                assert_eq!(runs[1].expect, GuestExpect::Exit(0));
                continue;
            }
            assert_eq!(runs[0].name, "vfio-edu", "vfio-edu starts first");
            assert_eq!(runs[0].groups, "00:03.0");
            if name.starts_with("vfio-hostile") {
                assert_eq!(runs.len(), 2);
                assert!(runs[1].groups.split(',').any(|g| g == "00:1f.0"));
                assert!(runs[1].groups.split(',').any(|g| g == runs[0].groups));
            }
        }
        let s = scenario("vfio-hostile-amdvi");
        // A kernel without the VFIO calls: the guests fail their first check, the kernel
        // ends with 35 and never holds.
        let enosys = "\
[INFO  guest] vfio-edu: started, RAM 16 MiB, entry 0x200000
[INFO  guest] vfio-hostile: started, RAM 16 MiB, entry 0x200000
[INFO  guest] [vfio-edu] check api-version: FAILED: GET_API_VERSION: ENOSYS (38)
[INFO  guest] [vfio-hostile] check forged-handles: FAILED: CLOSE(0): got Err(ENOSYS), expected Err(EBADF)
[INFO  guest] vfio-edu: exited with status 1
[INFO  guest] vfio-hostile: exited with status 1
[INFO  guest] guests: 2 ran, 0 passed, 2 failed
";
        let f = evaluate(
            s,
            &outcome(
                35,
                enosys,
                Some(Err("the kernel never printed `holding:`".into())),
            ),
        );
        assert_eq!(
            f,
            [
                "exit status 35 (boot stopped: a required feature is missing), expected 33 (boot completed)",
                "vfio-edu: exited with status 1 (line 5), expected exited with status 0",
                "vfio-edu: check api-version: FAILED: GET_API_VERSION: ENOSYS (38)",
                "vfio-hostile: exited with status 1 (line 6), expected exited with status 0",
                "vfio-hostile: check forged-handles: FAILED: CLOSE(0): got Err(ENOSYS), expected Err(EBADF)",
                "`guests: 2 ran, 0 passed, 2 failed`, expected 2 ran, 2 passed, 0 failed",
                "no QEMU view of the PCI bus: the kernel never printed `holding:`: the IOMMU's tables were not read",
            ]
        );
        let good = "\
[INFO  guest] vfio-edu: started, RAM 16 MiB, entry 0x200000
[INFO  guest] vfio-hostile: started, RAM 16 MiB, entry 0x200000
[INFO  guest] [vfio-edu] check api-version: ok
[INFO  guest] [vfio-hostile] check group-open-busy: ok
[INFO  guest] vfio-hostile: exited with status 0
[INFO  guest] vfio-edu: exited with status 0
[INFO  guest] guests: 2 ran, 2 passed, 0 failed
[INFO  boot] holding: send one byte on the serial port to finish
";
        assert_eq!(
            evaluate(
                s,
                &with_oracle(33, good, vfio_view(s, None, &amd_blocked()))
            ),
            Vec::<String>::new()
        );
        // e1's DTE still grants access after every guest ended.
        let mut attached = amd_blocked();
        crate::blocked::tests::put64(
            &mut attached,
            crate::blocked::tests::DEVTAB + 0x18 * 32,
            0x170_0000 | 3 << 9 | crate::blocked::DTE_IR | crate::blocked::DTE_IW | 3,
        );
        let f = evaluate(s, &with_oracle(33, good, vfio_view(s, None, &attached)));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].starts_with(
                "e1 (00:03.0, requester id 0x0018) is not blocked after every guest ended: DTE"
            ),
            "{f:?}"
        );

        // intel-iommu: the same guests, the fault record and the tables read at hold.
        use crate::vfio::tests::E1_RECORD;
        let s = scenario("vfio-hostile-vtd");
        assert_eq!(
            evaluate(
                s,
                &with_oracle(33, good, vfio_view(s, Some(E1_RECORD), &vtd_blocked()))
            ),
            Vec::<String>::new()
        );
        let e2 = "0x000ff000 0x00000000 0x00000020 0x80ffff05";
        assert_eq!(
            evaluate(
                s,
                &with_oracle(33, good, vfio_view(s, Some(e2), &vtd_blocked()))
            ),
            Vec::<String>::new()
        );
        let f = evaluate(
            s,
            &with_oracle(33, good, vfio_view(s, Some(E1_RECORD), &vtd_e1_attached())),
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].contains(
                "context entry [devfn 0x18] at 0x1231180 = 0x0000000000000101_0000000001230001: P=1"
            ),
            "{f:?}"
        );
        // vfio-edu alone: only e1's fault will do.
        let edu_log = "\
[INFO  guest] vfio-edu: started, RAM 16 MiB, entry 0x200000
[INFO  guest] [vfio-edu] check dma-blocked-after-unmap: ok
[INFO  guest] vfio-edu: exited with status 0
[INFO  guest] guests: 1 ran, 1 passed, 0 failed
[INFO  boot] holding: send one byte on the serial port to finish
";
        let s = scenario("vfio-edu-vtd");
        assert_eq!(
            evaluate(
                s,
                &with_oracle(33, edu_log, vfio_view(s, Some(E1_RECORD), &vtd_blocked()))
            ),
            Vec::<String>::new()
        );
        let f = evaluate(
            s,
            &with_oracle(33, edu_log, vfio_view(s, Some(e2), &vtd_blocked())),
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].starts_with("the IOMMU's fault record names rid 0x0020 at IOVA 0xff000"),
            "{f:?}"
        );
        let none = "0x00000000 0x00000000 0x00000000 0x00000000";
        let f = evaluate(
            s,
            &with_oracle(33, edu_log, vfio_view(s, Some(none), &vtd_blocked())),
        );
        assert!(f[0].starts_with("the IOMMU recorded no fault"), "{f:?}");
    }

    /// The release scenarios: vfio-killed terminated at port 0x80 after its checks,
    /// vfio-next exits 0, the fault record names one of the two blocked writes (VT-d),
    /// and the edus are blocked in the IOMMU's tables at the end.
    #[test]
    fn vfio_release_judging() {
        use crate::blocked::tests::{amd_blocked, vtd_blocked, vtd_e1_attached};
        let good = "\
[INFO  guest] vfio-killed: started, RAM 16 MiB, entry 0x200000
[INFO  guest] vfio-next: started, RAM 16 MiB, entry 0x200000
[INFO  guest] [vfio-killed] check dma-in-flight: ok
[INFO  guest] [vfio-next] check group-open: ok
[INFO  guest] [vfio-next] check dma-to-killed-iova-blocked: ok
[WARN  guest] vfio-killed: terminated: port I/O to 0x80 not allowed (OUT 1 bytes, RIP 0x200c12)
[INFO  guest] vfio-next: exited with status 0
[INFO  guest] guests: 2 ran, 2 passed, 0 failed
[INFO  boot] holding: send one byte on the serial port to finish
";
        let s = scenario("vfio-release-vtd");
        // The killed guest's in-flight write (after vfio-next attached e1) or vfio-next's
        // own write to the killed guest's IOVA: either may be the recorded fault.
        for record in [
            "0x00203000 0x00000000 0x00000018 0x80ffff05",
            "0x00205000 0x00000000 0x00000018 0x80ffff05",
        ] {
            assert_eq!(
                evaluate(
                    s,
                    &with_oracle(33, good, vfio_view(s, Some(record), &vtd_blocked()))
                ),
                Vec::<String>::new(),
                "{record}"
            );
        }
        let record = "0x00205000 0x00000000 0x00000018 0x80ffff05";
        // e1's context entry still present at the end.
        let f = evaluate(
            s,
            &with_oracle(33, good, vfio_view(s, Some(record), &vtd_e1_attached())),
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].starts_with("e1 (00:03.0, requester id 0x0018) is not blocked"),
            "{f:?}"
        );
        // A fault at vfio-next's own IOVA is not the expected one.
        let own = "0x00801000 0x00000000 0x00000018 0x80ffff05";
        let f = evaluate(
            s,
            &with_oracle(33, good, vfio_view(s, Some(own), &vtd_blocked())),
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].starts_with("the IOMMU's fault record names rid 0x0018 at IOVA 0x801000"),
            "{f:?}"
        );

        let s = scenario("vfio-release-amdvi");
        assert_eq!(
            evaluate(
                s,
                &with_oracle(33, good, vfio_view(s, None, &amd_blocked()))
            ),
            Vec::<String>::new()
        );
        // vfio-killed failed a step and exited instead of reaching the port; vfio-next,
        // never given the group, ran out of attempts: the kernel does not hold.
        let failed = good
            .replace("check dma-in-flight: ok", "check dma-round-trip: FAILED: no")
            .replace(
                "[WARN  guest] vfio-killed: terminated: port I/O to 0x80 not allowed (OUT 1 bytes, RIP 0x200c12)",
                "[INFO  guest] vfio-killed: exited with status 1",
            )
            .replace("vfio-next: exited with status 0", "vfio-next: exited with status 1")
            .replace("2 passed, 0 failed", "0 passed, 2 failed")
            .replace("[INFO  boot] holding: send one byte on the serial port to finish\n", "");
        let f = evaluate(
            s,
            &outcome(
                35,
                &failed,
                Some(Err("the kernel never printed `holding:`".into())),
            ),
        );
        assert!(
            f.iter().any(|l| l.starts_with(
                "vfio-killed: exited with status 1 (line 6), expected terminated: port I/O to 0x80 not allowed"
            )),
            "{f:?}"
        );
        assert!(
            f.iter()
                .any(|l| l == "vfio-killed: check dma-round-trip: FAILED: no"),
            "{f:?}"
        );
        assert!(
            f.iter()
                .any(|l| l.ends_with("the IOMMU's tables were not read")),
            "{f:?}"
        );
        // Killed before any check line: the run proves nothing about the DMA in flight.
        let silent = good.replace("[INFO  guest] [vfio-killed] check dma-in-flight: ok\n", "");
        let f = evaluate(
            s,
            &with_oracle(33, &silent, vfio_view(s, None, &amd_blocked())),
        );
        assert_eq!(f, ["vfio-killed: printed no `check NAME: ok` line"]);
    }

    /// The NVMe kill scenarios: vfio-nvme-killed terminated at port 0x80 after its
    /// checks; at hold nv1's registers are read through the BAR0 address of query-pci
    /// (CC.EN = CSTS.RDY = 0 passes, a controller left enabled fails) and nv1 is blocked.
    #[test]
    fn vfio_nvme_killed_judging() {
        use crate::blocked::tests::{Words, put64, vtd_blocked};
        use crate::guests::GuestExpect;
        use crate::model::{Bar, BarKind, Bdf, Function};
        use crate::oracle::PciNode;
        const BAR0: u64 = 0xfebd_0000;
        for (name, vtd) in [
            ("vfio-nvme-killed-vtd", true),
            ("vfio-nvme-killed-amdvi", false),
        ] {
            let s = scenario(name);
            assert_eq!(s.machine.topology, Topology::VfioNvme, "{name}");
            assert_eq!(s.machine.effective_iommu() == Iommu::Vtd, vtd, "{name}");
            assert_eq!(s.devices_blocked(), ["e1", "e2", "nv1"], "{name}");
            assert_eq!(s.nvme_disabled(), ["nv1"], "{name}");
            let runs = s.guests();
            assert_eq!(runs.len(), 1);
            assert_eq!(
                (runs[0].name, runs[0].groups),
                ("vfio-nvme-killed", "00:05.0")
            );
            assert_eq!(
                runs[0].expect,
                GuestExpect::Terminated(Termination::Port(0x80))
            );
            assert!(
                runs[0].checks,
                "vfio-nvme-killed must show its steps passed"
            );
            assert!(
                kernel_cmdline(s, &[]).ends_with(
                    "guest=vfio-nvme-killed:16M:groups=00:05.0 expect=vfio-nvme-killed:terminated hold"
                ),
                "{}",
                kernel_cmdline(s, &[])
            );
        }
        let s = scenario("vfio-nvme-killed-vtd");
        let view = |cc: u32, csts: u32, bar0: Option<u64>| {
            let bdf = Bdf {
                bus: 0,
                dev: 5,
                func: 0,
            };
            let mut v = crate::vfio::tests::view(None);
            v.nodes.push(PciNode {
                bdf,
                qdev_id: Some("nv1".into()),
                class: 0x0108,
                secondary: None,
            });
            v.functions.push(Function {
                segment: 0,
                bdf,
                vendor: 0x1b36,
                device: 0x0010,
                class: 0x0108,
                prog_if: None,
                bars: vec![Bar {
                    index: 0,
                    kind: BarKind::MEM64,
                    address: bar0,
                    size: 0x4000,
                }],
            });
            let mut mem: Words = vtd_blocked();
            put64(&mut mem, BAR0, 0x0020_0030_0f00_07ff);
            mem.insert(BAR0 + 0x08, 0x0001_0400);
            mem.insert(BAR0 + 0x14, cc);
            mem.insert(BAR0 + 0x1c, csts);
            let plan = s.follow_up_plan().expect("a follow-up plan");
            crate::oracle::follow_up_rounds(&mut v, &*plan, &mut |c| {
                Ok(crate::dmatest::tests::fake_xp_words(
                    c,
                    &BTreeMap::new(),
                    &mem,
                ))
            });
            v
        };
        let good = "\
[INFO  guest] vfio-nvme-killed: started, RAM 16 MiB, entry 0x200000
[INFO  guest] [vfio-nvme-killed] check nvme-enable: ok
[INFO  guest] [vfio-nvme-killed] check identify-in-flight: ok
[WARN  guest] vfio-nvme-killed: terminated: port I/O to 0x80 not allowed (OUT 1 bytes, RIP 0x200c12)
[INFO  guest] guests: 1 ran, 1 passed, 0 failed
[INFO  boot] holding: send one byte on the serial port to finish
";
        let reset = view(0, 0, Some(BAR0));
        assert!(reset.monitor_reply("xp /8xw 0xfebd0000").is_some());
        assert_eq!(
            evaluate(s, &with_oracle(33, good, reset)),
            Vec::<String>::new()
        );
        // Released without the reset: the controller the guest enabled is still enabled.
        let f = evaluate(s, &with_oracle(33, good, view(0x0046_0001, 1, Some(BAR0))));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].starts_with("nv1 is still enabled after every guest ended"),
            "{f:?}"
        );
        // Memory decode lost with the reset: BAR0 unmapped, nothing to read.
        let f = evaluate(s, &with_oracle(33, good, view(0, 0, None)));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("BAR0 is unmapped"), "{f:?}");
    }

    #[test]
    fn status_descriptions() {
        assert_eq!(
            describe_status(41),
            "the kernel wrote unknown value 0x14 to isa-debug-exit"
        );
        assert_eq!(describe_exit(Exit::Signal(9)), "QEMU killed by signal 9");
    }
}
