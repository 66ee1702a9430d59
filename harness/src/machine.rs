//! The one place where QEMU command lines are built.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The IOMMU model of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Iommu {
    /// Intel VT-d (`-device intel-iommu`), q35 only.
    Vtd,
    /// AMD-Vi (`-device amd-iommu`, itself a PCI function), q35 only.
    AmdVi,
    None,
}

impl Iommu {
    pub fn parse(s: &str) -> Result<Iommu, String> {
        match s {
            "vtd" | "intel" => Ok(Iommu::Vtd),
            "amdvi" | "amd" => Ok(Iommu::AmdVi),
            "none" => Ok(Iommu::None),
            _ => Err(format!("--iommu: expected vtd, amdvi or none, got {s:?}")),
        }
    }
}

/// Named device topologies. Every device the topology adds carries an `id=`, which
/// `query-pci` reports as `qdev_id`: scenarios name devices by it, because slot
/// numbers shift (amd-iommu takes 00:01.0, pushing auto-placed devices one slot on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// q35, one edu (e1) on the root bus.
    Flat,
    /// q35 with root ports, a PCIe-to-PCI bridge and a PCIe switch, an edu behind each.
    Bridges,
    /// i440fx (`-machine pc`): no MCFG/ECAM, no IOMMU possible; one edu.
    Legacy,
    /// q35, two root ports (rp1, rp2; ACS capability present) with an edu below each.
    RootPorts,
    /// `RootPorts` with `disable-acs=on` on both ports.
    RootPortsNoAcs,
    /// q35: rp1 > pcie-pci-bridge pb1 > e1 (1.0), e2 (2.0); conventional pci-bridge cb1
    /// on the root bus > e3 (1.0), e4 (2.0).
    PciBridge,
    /// q35: e1 and e2 as functions 0 and 1 of slot 3 on the root bus.
    Multifunction,
    /// q35: rp1 > x3130-upstream up1 > xio3130-downstream dn1 > e1, dn2 > e2.
    Switch,
    /// q35: two edus e1 and e2 on the root bus (the DMA self-test: e1 is attached to
    /// a domain, e2 never is).
    Dma,
    /// q35: edus e1 at 00:03.0 and e2 at 00:04.0 on the root bus, at fixed addresses
    /// because the VFIO scenarios name them on the kernel command line
    /// (`groups=00:03.0`); slots 3 and 4 are free with either IOMMU.
    Vfio,
    /// `Vfio` plus an NVMe controller nv1 at 00:05.0 (QEMU's nvme advertises FLR in
    /// Device Capabilities: the device reset scenarios).
    VfioNvme,
    /// q35: QEMU's pci-testdev t1 at 00:05.0 (BAR0 memory, BAR1 I/O) with an expansion
    /// ROM loaded from `harness/testdata/vfio-rom.bin`: the I/O BAR and ROM region
    /// scenarios. The image is 3072 bytes (QEMU rounds the ROM BAR up to 4096): 0x55
    /// 0xAA, the length in 512-byte blocks (6), then byte `i` = `(31 i + 7) ^ (i >> 8)`
    /// (mod 256) — the pattern the `vfio-testdev` guest compares the ROM region with
    /// (checked by `vfio_rom_image_is_the_pattern_the_guest_expects`). `romfile=` is an
    /// absolute path: QEMU opens it relative to its own working directory otherwise.
    VfioTestdev,
}

impl Topology {
    pub const ALL: [(&'static str, Topology, &'static str); 12] = [
        (
            "flat",
            Topology::Flat,
            "q35, edu e1 on the root bus (default)",
        ),
        (
            "bridges",
            Topology::Bridges,
            "q35: root port rp1 > edu e1; rp2 > pcie-pci-bridge pb1 > edu e2 (1.0); rp3 > x3130 switch up1 > dn1 > edu e3, empty dn2 (the `bridges` fixtures)",
        ),
        (
            "legacy",
            Topology::Legacy,
            "machine pc (i440fx): no MCFG, no IOMMU; edu e1 on the root bus",
        ),
        (
            "rootports",
            Topology::RootPorts,
            "q35: pcie-root-port rp1 > edu e1, rp2 > edu e2 (ports with ACS)",
        ),
        (
            "rootports-noacs",
            Topology::RootPortsNoAcs,
            "as rootports, with disable-acs=on on rp1 and rp2",
        ),
        (
            "pcibridge",
            Topology::PciBridge,
            "q35: rp1 > pcie-pci-bridge pb1 > edus e1 (1.0), e2 (2.0); pci-bridge cb1 on the root bus > edus e3 (1.0), e4 (2.0)",
        ),
        (
            "multifunction",
            Topology::Multifunction,
            "q35: edus e1, e2 as functions 00:03.0 and 00:03.1 (one multifunction slot)",
        ),
        (
            "switch",
            Topology::Switch,
            "q35: rp1 > x3130-upstream up1 > xio3130-downstream dn1 > edu e1, dn2 > edu e2",
        ),
        (
            "dma",
            Topology::Dma,
            "q35: edus e1 and e2 on the root bus (the dmatest scenarios: e1 attached, e2 never)",
        ),
        (
            "vfio",
            Topology::Vfio,
            "q35: edus e1 at 00:03.0 and e2 at 00:04.0 on the root bus (the vfio scenarios name them in groups=)",
        ),
        (
            "vfio-nvme",
            Topology::VfioNvme,
            "as vfio, plus an NVMe controller nv1 (FLR capable) at 00:05.0 (the vfio-reset scenarios)",
        ),
        (
            "vfio-testdev",
            Topology::VfioTestdev,
            "q35: pci-testdev t1 at 00:05.0 (memory BAR0, I/O BAR1) with a 3 KiB expansion ROM from harness/testdata/vfio-rom.bin (the vfio-testdev scenarios)",
        ),
    ];

    pub fn parse(s: &str) -> Result<Topology, String> {
        Self::ALL
            .iter()
            .find(|(name, _, _)| *name == s)
            .map(|(_, t, _)| *t)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|(n, _, _)| *n).collect();
                format!(
                    "--topology: expected one of {}, got {s:?}",
                    names.join(", ")
                )
            })
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, t, _)| *t == self)
            .map_or("?", |(n, _, _)| n)
    }

    pub fn machine_type(self) -> &'static str {
        match self {
            Topology::Legacy => "pc",
            _ => "q35",
        }
    }

    fn devices(self) -> &'static [&'static str] {
        match self {
            Topology::Flat | Topology::Legacy => &["edu,id=e1"],
            // Keep this one as it is: the `bridges` fixtures were captured with it.
            Topology::Bridges => &[
                // Root port 1: an edu directly below.
                "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1",
                "edu,id=e1,bus=rp1",
                // Root port 2: a PCIe-to-PCI bridge, a conventional edu behind it
                // (slot 0 of a bridge with SHPC is avoided).
                "pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2",
                "pcie-pci-bridge,id=pb1,bus=rp2",
                "edu,id=e2,bus=pb1,addr=1.0",
                // Root port 3: a switch (upstream port + two downstream ports), an edu
                // below the first downstream port, the second one empty.
                "pcie-root-port,id=rp3,bus=pcie.0,chassis=3,slot=3",
                "x3130-upstream,id=up1,bus=rp3",
                "xio3130-downstream,id=dn1,bus=up1,chassis=4,slot=0",
                "xio3130-downstream,id=dn2,bus=up1,chassis=5,slot=0",
                "edu,id=e3,bus=dn1",
            ],
            Topology::RootPorts => &[
                "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1",
                "edu,id=e1,bus=rp1",
                "pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2",
                "edu,id=e2,bus=rp2",
            ],
            Topology::RootPortsNoAcs => &[
                "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,disable-acs=on",
                "edu,id=e1,bus=rp1",
                "pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2,disable-acs=on",
                "edu,id=e2,bus=rp2",
            ],
            Topology::PciBridge => &[
                // PCIe side: root port > PCIe-to-PCI bridge > two conventional edus
                // (slot 0 of a bridge with SHPC is avoided).
                "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1",
                "pcie-pci-bridge,id=pb1,bus=rp1",
                "edu,id=e1,bus=pb1,addr=1.0",
                "edu,id=e2,bus=pb1,addr=2.0",
                // Conventional PCI-to-PCI bridge straight on the root bus.
                "pci-bridge,id=cb1,bus=pcie.0,chassis_nr=2",
                "edu,id=e3,bus=cb1,addr=1.0",
                "edu,id=e4,bus=cb1,addr=2.0",
            ],
            // Slot 3 is free on both vendors (amd-iommu sits at 00:01.0).
            Topology::Multifunction => &[
                "edu,id=e1,bus=pcie.0,addr=03.0,multifunction=on",
                "edu,id=e2,bus=pcie.0,addr=03.1",
            ],
            Topology::Switch => &[
                "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1",
                "x3130-upstream,id=up1,bus=rp1",
                "xio3130-downstream,id=dn1,bus=up1,addr=0.0,chassis=2,slot=0",
                "xio3130-downstream,id=dn2,bus=up1,addr=1.0,chassis=3,slot=0",
                "edu,id=e1,bus=dn1",
                "edu,id=e2,bus=dn2",
            ],
            Topology::Dma => &["edu,id=e1,bus=pcie.0", "edu,id=e2,bus=pcie.0"],
            // Addresses named by the vfio scenarios' groups= (VFIO_E1, VFIO_E2 in
            // scenarios.rs).
            Topology::Vfio => &[
                "edu,id=e1,bus=pcie.0,addr=03.0",
                "edu,id=e2,bus=pcie.0,addr=04.0",
            ],
            Topology::VfioNvme => &[
                "edu,id=e1,bus=pcie.0,addr=03.0",
                "edu,id=e2,bus=pcie.0,addr=04.0",
                "nvme,serial=deadbeef,id=nv1,bus=pcie.0,addr=05.0",
            ],
            // Slot 5 is free with either IOMMU; the vfio-testdev scenarios name it in
            // groups= (VFIO_T1 in scenarios.rs).
            Topology::VfioTestdev => &[concat!(
                "pci-testdev,id=t1,bus=pcie.0,addr=05.0,romfile=",
                env!("CARGO_MANIFEST_DIR"),
                "/testdata/vfio-rom.bin"
            )],
        }
    }
}

/// Machine model: everything `--iommu/--aw-bits/--intremap/--device-iotlb/--amd-pt/
/// --topology` select. `None` options are left out of the command line (QEMU's default applies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// `None` = default: VT-d on q35, none on the legacy machine.
    pub iommu: Option<Iommu>,
    pub aw_bits: Option<u32>,
    pub intremap: Option<bool>,
    /// `device-iotlb=on|off` on the IOMMU (ATS; both intel-iommu and amd-iommu).
    pub device_iotlb: Option<bool>,
    /// `pt=on|off` on amd-iommu. QEMU 9.2–10.0 with the default `pt=on` give every
    /// device an address space that aliases system memory (DMA bypasses translation,
    /// `info mtree`: `alias amdvi-sys`); `pt=off` puts the translating `amd_iommu`
    /// region there. QEMU 7.2 accepts the property and always translates.
    pub amd_pt: Option<bool>,
    pub topology: Topology,
}

impl Machine {
    pub const DEFAULT: Machine = Machine {
        iommu: None,
        aw_bits: None,
        intremap: None,
        device_iotlb: None,
        amd_pt: None,
        topology: Topology::Flat,
    };

    pub const fn with_iommu(self, iommu: Iommu) -> Machine {
        Machine {
            iommu: Some(iommu),
            ..self
        }
    }

    pub const fn with_topology(self, topology: Topology) -> Machine {
        Machine { topology, ..self }
    }

    pub fn effective_iommu(&self) -> Iommu {
        self.iommu.unwrap_or(match self.topology {
            Topology::Legacy => Iommu::None,
            _ => Iommu::Vtd,
        })
    }

    /// The `-device` arguments: the IOMMU first, then the topology.
    pub fn device_args(&self) -> Result<Vec<String>, String> {
        let iommu = self.effective_iommu();
        if self.topology == Topology::Legacy && iommu != Iommu::None {
            return Err(
                "topology legacy (machine pc) cannot have an IOMMU: use --iommu none".into(),
            );
        }
        if self.aw_bits.is_some() && iommu != Iommu::Vtd {
            return Err("--aw-bits applies to --iommu vtd only".into());
        }
        if self.intremap.is_some() && iommu == Iommu::None {
            return Err("--intremap needs an IOMMU (--iommu vtd or amdvi)".into());
        }
        if self.device_iotlb.is_some() && iommu == Iommu::None {
            return Err("--device-iotlb needs an IOMMU (--iommu vtd or amdvi)".into());
        }
        if self.amd_pt.is_some() && iommu != Iommu::AmdVi {
            return Err("--amd-pt applies to --iommu amdvi only".into());
        }
        let mut args = Vec::new();
        let onoff = |b: bool| if b { "on" } else { "off" };
        let mut iommu_dev = match iommu {
            Iommu::Vtd => Some("intel-iommu".to_string()),
            // amd-iommu is itself a PCI function: give it a name for query-pci.
            Iommu::AmdVi => Some("amd-iommu,id=iommu".to_string()),
            Iommu::None => None,
        };
        if let Some(dev) = iommu_dev.as_mut() {
            if let Some(bits) = self.aw_bits {
                dev.push_str(&format!(",aw-bits={bits}"));
            }
            if let Some(ir) = self.intremap {
                dev.push_str(&format!(",intremap={}", onoff(ir)));
            }
            if let Some(dt) = self.device_iotlb {
                dev.push_str(&format!(",device-iotlb={}", onoff(dt)));
            }
            if let Some(pt) = self.amd_pt {
                dev.push_str(&format!(",pt={}", onoff(pt)));
            }
            // intel-iommu must precede every other -device.
            args.extend(["-device".to_string(), dev.clone()]);
        }
        for dev in self.topology.devices() {
            args.extend(["-device".to_string(), dev.to_string()]);
        }
        Ok(args)
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let topo = self.topology.name();
        let iommu = match self.effective_iommu() {
            Iommu::Vtd => "vtd",
            Iommu::AmdVi => "amdvi",
            Iommu::None => "none",
        };
        write!(f, "topology {topo}, iommu {iommu}")?;
        if let Some(pt) = self.amd_pt {
            write!(f, ", pt={}", if pt { "on" } else { "off" })?;
        }
        Ok(())
    }
}

/// A QEMU binary and its version (for version-specific flags).
#[derive(Clone, Debug)]
pub struct Qemu {
    pub program: PathBuf,
    pub version: (u32, u32, u32),
}

impl Qemu {
    /// Resolves `--qemu`, else `$QEMU`, else `qemu-system-x86_64`, and asks it for its version.
    pub fn probe(explicit: Option<&Path>) -> Result<Qemu, String> {
        let program = explicit
            .map(Path::to_path_buf)
            .or_else(|| {
                std::env::var_os("QEMU")
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
        let out = Command::new(&program)
            .arg("--version")
            .output()
            .map_err(|e| {
                format!(
                    "cannot run QEMU `{}`: {e}\n{}",
                    program.display(),
                    install_hint()
                )
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = parse_version(&text).ok_or_else(|| {
            format!(
                "`{} --version` printed no QEMU version: {text:?}",
                program.display()
            )
        })?;
        Ok(Qemu { program, version })
    }

    /// `-audio none` (no model) exists since QEMU 8.2; 7.2 rejects it. Newer QEMUs
    /// installed beside an older one need it to avoid loading foreign audio modules.
    pub fn supports_audio_none(&self) -> bool {
        self.version >= (8, 2, 0)
    }

    pub fn version_string(&self) -> String {
        format!("{}.{}.{}", self.version.0, self.version.1, self.version.2)
    }
}

pub fn install_hint() -> &'static str {
    "Install QEMU: Debian/Ubuntu `sudo apt-get install qemu-system-x86`, Fedora `sudo dnf install qemu-system-x86`, \
     Arch `sudo pacman -S qemu-system-x86`, macOS `brew install qemu`; or pass --qemu PATH / set QEMU=PATH."
}

/// Parses `QEMU emulator version 7.2.22 (Debian ...)`.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let rest = &text[text.find("version ")? + "version ".len()..];
    let word = rest.split_whitespace().next()?;
    let mut nums = word.split('.').map(|n| {
        let digits: String = n.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = nums.next()??;
    let minor = nums.next().flatten().unwrap_or(0);
    let micro = nums.next().flatten().unwrap_or(0);
    Some((major, minor, micro))
}

/// How the serial port and QMP are wired.
#[derive(Clone, Debug, Default)]
pub struct Wiring {
    /// QMP on this Unix socket (`-qmp unix:...,server=on,wait=off`).
    pub qmp_socket: Option<PathBuf>,
    /// Extra ACPI tables (`-acpitable file=...`).
    pub acpi_tables: Vec<PathBuf>,
    /// `-s -S`: wait for gdb on TCP port 1234.
    pub gdb: bool,
    /// `-initrd FILE`: the guest archive (the kernel's PVH boot module).
    pub initrd: Option<PathBuf>,
}

/// QEMU option values are comma-separated: a literal comma is written `,,`.
fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The full QEMU argument list (without the program).
pub fn qemu_args(
    qemu: &Qemu,
    machine: &Machine,
    kernel: &Path,
    cmdline: &str,
    wiring: &Wiring,
    extra: &[String],
) -> Result<Vec<String>, String> {
    let mut args: Vec<String> = Vec::new();
    let mut push = |a: &[&str]| args.extend(a.iter().map(|s| s.to_string()));
    push(&["-machine", machine.topology.machine_type(), "-accel", "tcg"]);
    push(&["-cpu", "qemu64,+svm,+npt", "-m", "512M"]);
    push(&["-nodefaults", "-display", "none", "-no-reboot"]);
    if qemu.supports_audio_none() {
        push(&["-audio", "none"]);
    }
    // Serial on stdio; the monitor must then not be on stdio too.
    push(&["-serial", "stdio", "-monitor", "none"]);
    // The IOMMU is the first -device (intel-iommu must precede the others).
    args.extend(machine.device_args()?);
    args.extend([
        "-device".into(),
        "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
    ]);
    if let Some(sock) = &wiring.qmp_socket {
        args.extend([
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", opt_path(sock)),
        ]);
    }
    for table in &wiring.acpi_tables {
        args.extend(["-acpitable".into(), format!("file={}", opt_path(table))]);
    }
    args.extend(["-kernel".into(), kernel.display().to_string()]);
    args.extend(["-append".into(), cmdline.to_string()]);
    if let Some(initrd) = &wiring.initrd {
        args.extend(["-initrd".into(), initrd.display().to_string()]);
    }
    if wiring.gdb {
        args.extend(["-s".into(), "-S".into()]);
    }
    args.extend(extra.iter().cloned());
    Ok(args)
}

/// Renders a command line so that it can be pasted into a shell.
pub fn shell_quote(program: &Path, args: &[String]) -> String {
    std::iter::once(program.display().to_string())
        .chain(args.iter().cloned())
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu(v: (u32, u32, u32)) -> Qemu {
        Qemu {
            program: "qemu-system-x86_64".into(),
            version: v,
        }
    }

    fn args_of(m: &Machine) -> String {
        args_vec(m).join(" ")
    }

    fn args_vec(m: &Machine) -> Vec<String> {
        qemu_args(
            &qemu((7, 2, 22)),
            m,
            Path::new("target/release/sluice"),
            "log=info hold",
            &Wiring::default(),
            &[],
        )
        .unwrap()
    }

    /// The devices part, starting at the first -device.
    fn devices_of(m: &Machine) -> String {
        let a = args_vec(m);
        let first = a.iter().position(|x| x == "-device").unwrap();
        a[first..].join(" ")
    }

    #[test]
    fn initrd_follows_the_kernel() {
        let wiring = Wiring {
            initrd: Some("target/guests/guest-hello.img".into()),
            ..Wiring::default()
        };
        let a = qemu_args(
            &qemu((7, 2, 22)),
            &Machine::DEFAULT,
            Path::new("k"),
            "guest=hello:16M",
            &wiring,
            &[],
        )
        .unwrap()
        .join(" ");
        assert!(
            a.ends_with("-kernel k -append guest=hello:16M -initrd target/guests/guest-hello.img"),
            "{a}"
        );
    }

    #[test]
    fn default_machine() {
        let a = args_of(&Machine::DEFAULT);
        assert_eq!(
            a,
            "-machine q35 -accel tcg -cpu qemu64,+svm,+npt -m 512M \
             -nodefaults -display none -no-reboot -serial stdio -monitor none \
             -device intel-iommu -device edu,id=e1 -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel target/release/sluice -append log=info hold"
        );
    }

    #[test]
    fn iommu_first_and_options() {
        let m = Machine {
            aw_bits: Some(48),
            intremap: Some(false),
            ..Machine::DEFAULT.with_topology(Topology::Bridges)
        };
        let a = devices_of(&m);
        assert!(
            a.starts_with("-device intel-iommu,aw-bits=48,intremap=off -device pcie-root-port"),
            "{a}"
        );
        let a = devices_of(&Machine::DEFAULT.with_iommu(Iommu::AmdVi));
        assert!(
            a.starts_with("-device amd-iommu,id=iommu -device edu,id=e1 -device isa-debug-exit"),
            "{a}"
        );
        let a = devices_of(&Machine::DEFAULT.with_iommu(Iommu::None));
        assert!(
            a.starts_with("-device edu,id=e1 -device isa-debug-exit"),
            "{a}"
        );
        let a = args_of(&Machine::DEFAULT.with_topology(Topology::Legacy));
        assert!(a.starts_with("-machine pc "), "{a}");
        assert!(
            devices_of(&Machine::DEFAULT.with_topology(Topology::Legacy))
                .starts_with("-device edu,id=e1 -device isa")
        );
    }

    #[test]
    fn device_iotlb_on_both_vendors() {
        let m = Machine {
            device_iotlb: Some(true),
            intremap: Some(true),
            ..Machine::DEFAULT
        };
        assert!(
            devices_of(&m)
                .starts_with("-device intel-iommu,intremap=on,device-iotlb=on -device edu,id=e1"),
            "{}",
            devices_of(&m)
        );
        let m = Machine {
            device_iotlb: Some(false),
            ..Machine::DEFAULT.with_iommu(Iommu::AmdVi)
        };
        assert!(
            devices_of(&m).starts_with("-device amd-iommu,id=iommu,device-iotlb=off -device edu"),
            "{}",
            devices_of(&m)
        );
    }

    #[test]
    fn amd_passthrough_option() {
        let m = Machine {
            amd_pt: Some(false),
            intremap: Some(true),
            ..Machine::DEFAULT
                .with_iommu(Iommu::AmdVi)
                .with_topology(Topology::Dma)
        };
        assert_eq!(
            devices_of(&m),
            "-device amd-iommu,id=iommu,intremap=on,pt=off -device edu,id=e1,bus=pcie.0 -device edu,id=e2,bus=pcie.0 \
             -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel target/release/sluice -append log=info hold"
        );
        let m = Machine {
            amd_pt: Some(true),
            ..Machine::DEFAULT.with_iommu(Iommu::AmdVi)
        };
        assert!(devices_of(&m).starts_with("-device amd-iommu,id=iommu,pt=on -device edu"));
        for iommu in [Iommu::Vtd, Iommu::None] {
            let m = Machine {
                amd_pt: Some(false),
                ..Machine::DEFAULT.with_iommu(iommu)
            };
            assert!(m.device_args().unwrap_err().contains("--amd-pt"));
        }
    }

    /// Every device of every topology has an id (query-pci names devices by it), ids
    /// are unique, and every `bus=` names a device of the topology or the root bus.
    #[test]
    fn topologies_name_every_device() {
        for (name, t, about) in Topology::ALL {
            assert_eq!(Topology::parse(name), Ok(t));
            assert_eq!(t.name(), name);
            assert!(!about.is_empty());
            let mut ids = Vec::new();
            for dev in t.devices() {
                let prop = |key: &str| {
                    dev.split(',')
                        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                };
                let id = prop("id").unwrap_or_else(|| panic!("{name}: {dev} has no id"));
                if let Some(bus) = prop("bus") {
                    assert!(bus == "pcie.0" || ids.contains(&bus), "{name}: {dev}");
                }
                assert!(!ids.contains(&id), "{name}: id {id} twice");
                ids.push(id);
            }
        }
        let ids = |t: Topology| -> String {
            devices_of(&Machine::DEFAULT.with_topology(t))
                .split_whitespace()
                .filter_map(|a| a.split(',').find_map(|kv| kv.strip_prefix("id=")))
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(ids(Topology::RootPorts), "rp1 e1 rp2 e2");
        assert_eq!(ids(Topology::PciBridge), "rp1 pb1 e1 e2 cb1 e3 e4");
        assert_eq!(ids(Topology::Multifunction), "e1 e2");
        assert_eq!(ids(Topology::Switch), "rp1 up1 dn1 dn2 e1 e2");
        assert_eq!(ids(Topology::Dma), "e1 e2");
        assert_eq!(ids(Topology::Vfio), "e1 e2");
        assert!(
            devices_of(&Machine::DEFAULT.with_topology(Topology::Vfio)).contains(
                "-device edu,id=e1,bus=pcie.0,addr=03.0 -device edu,id=e2,bus=pcie.0,addr=04.0"
            )
        );
        let noacs = devices_of(&Machine::DEFAULT.with_topology(Topology::RootPortsNoAcs));
        assert_eq!(noacs.matches("disable-acs=on").count(), 2, "{noacs}");
        assert!(
            devices_of(&Machine::DEFAULT.with_topology(Topology::Multifunction))
                .contains("-device edu,id=e1,bus=pcie.0,addr=03.0,multifunction=on -device edu,id=e2,bus=pcie.0,addr=03.1")
        );
        assert!(
            Topology::parse("star")
                .unwrap_err()
                .contains("rootports-noacs")
        );
    }

    /// The `vfio-testdev` topology's ROM image.
    const VFIO_ROM_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/vfio-rom.bin");
    const VFIO_ROM_LEN: usize = 3072;

    /// Byte `i` of the image (guest/src/bin/vfio_testdev.rs computes the same).
    fn vfio_rom_byte(i: usize) -> u8 {
        match i {
            0 => 0x55,
            1 => 0xAA,
            2 => (VFIO_ROM_LEN / 512) as u8,
            _ => ((i * 31 + 7) ^ (i >> 8)) as u8,
        }
    }

    #[test]
    fn vfio_rom_image_is_the_pattern_the_guest_expects() {
        let image = std::fs::read(VFIO_ROM_FILE).unwrap();
        assert_eq!(image.len(), VFIO_ROM_LEN);
        for (i, &b) in image.iter().enumerate() {
            assert_eq!(b, vfio_rom_byte(i), "byte {i:#x}");
        }
        let devices = devices_of(&Machine::DEFAULT.with_topology(Topology::VfioTestdev));
        assert!(
            devices.contains(&format!("romfile={VFIO_ROM_FILE}")),
            "{devices}"
        );
        assert!(!VFIO_ROM_FILE.contains(','), "QEMU would split the option");
    }

    #[test]
    fn invalid_combinations() {
        let m = Machine::DEFAULT
            .with_topology(Topology::Legacy)
            .with_iommu(Iommu::Vtd);
        assert!(m.device_args().unwrap_err().contains("legacy"));
        let m = Machine {
            aw_bits: Some(48),
            ..Machine::DEFAULT.with_iommu(Iommu::AmdVi)
        };
        assert!(m.device_args().unwrap_err().contains("--aw-bits"));
        let m = Machine {
            intremap: Some(true),
            ..Machine::DEFAULT.with_iommu(Iommu::None)
        };
        assert!(m.device_args().unwrap_err().contains("--intremap"));
        let m = Machine {
            device_iotlb: Some(true),
            ..Machine::DEFAULT.with_iommu(Iommu::None)
        };
        assert!(m.device_args().unwrap_err().contains("--device-iotlb"));
    }

    #[test]
    fn version_guarded_flags_and_wiring() {
        let w = Wiring {
            qmp_socket: Some("/tmp/x,y/qmp.sock".into()),
            acpi_tables: vec!["/t/mcfg.aml".into()],
            gdb: true,
            initrd: None,
        };
        let a = qemu_args(
            &qemu((10, 0, 2)),
            &Machine::DEFAULT,
            Path::new("k"),
            "",
            &w,
            &["-d".into(), "int".into()],
        )
        .unwrap()
        .join(" ");
        assert!(a.contains("-audio none"), "{a}");
        assert!(
            a.contains("-qmp unix:/tmp/x,,y/qmp.sock,server=on,wait=off"),
            "{a}"
        );
        assert!(a.contains("-acpitable file=/t/mcfg.aml"), "{a}");
        assert!(a.ends_with("-s -S -d int"), "{a}");
        assert!(!args_of(&Machine::DEFAULT).contains("-audio"));
    }

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n"),
            Some((7, 2, 22))
        );
        assert_eq!(
            parse_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)"),
            Some((10, 0, 2))
        );
        assert_eq!(
            parse_version("QEMU emulator version 8.2.0-rc1"),
            Some((8, 2, 0))
        );
        assert_eq!(parse_version("nothing"), None);
    }

    #[test]
    fn quotes_for_shell() {
        let q = shell_quote(
            Path::new("qemu"),
            &["-append".into(), "log=info hold".into(), "it's".into()],
        );
        assert_eq!(q, r"qemu -append 'log=info hold' 'it'\''s'");
    }
}
