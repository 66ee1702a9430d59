//! `sluice-harness capture`: regenerates the DMAR/IVRS parser fixtures from the
//! firmware of a real QEMU.
//!
//! The kernel, booted with the command-line word `acpidump`, prints every ACPI table
//! as one log line `[INFO  acpi] dump SIG 0xADDRESS HEX` (lowercase hex of the whole
//! table). Each variant of `MATRIX` boots once; the first `dump DMAR` / `dump IVRS`
//! line becomes `iommu/vtd/tests/fixtures/{tag}-{variant}.dmar` or
//! `iommu/amdvi/tests/fixtures/{tag}-{variant}.ivrs`, where the tag comes from
//! `qemu --version` (`qemu72`, `qemu10`; see `tag`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::machine::{self, Iommu, Machine, Qemu, Topology, Wiring};
use crate::runner::{self, Exit};
use crate::serial::split_line;

/// The table a variant captures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Dmar,
    Ivrs,
}

impl Table {
    pub const fn signature(self) -> &'static str {
        match self {
            Table::Dmar => "DMAR",
            Table::Ivrs => "IVRS",
        }
    }

    /// Folder (relative to the workspace root) and file extension.
    pub const fn location(self) -> (&'static str, &'static str) {
        match self {
            Table::Dmar => ("iommu/vtd/tests/fixtures", "dmar"),
            Table::Ivrs => ("iommu/amdvi/tests/fixtures", "ivrs"),
        }
    }
}

/// One fixture: a machine and the table taken from it.
#[derive(Clone, Debug)]
pub struct Variant {
    pub name: &'static str,
    pub table: Table,
    pub machine: Machine,
}

const VTD: Machine = Machine::DEFAULT.with_iommu(Iommu::Vtd);
const AMD: Machine = Machine::DEFAULT.with_iommu(Iommu::AmdVi);

/// The fixture matrix. Every variant boots q35 + the flat topology (one edu) unless
/// it says otherwise; the options go on the IOMMU device.
pub const MATRIX: &[Variant] = &[
    Variant {
        name: "default",
        table: Table::Dmar,
        machine: VTD,
    },
    Variant {
        name: "aw39",
        table: Table::Dmar,
        machine: Machine {
            aw_bits: Some(39),
            ..VTD
        },
    },
    Variant {
        name: "aw48",
        table: Table::Dmar,
        machine: Machine {
            aw_bits: Some(48),
            ..VTD
        },
    },
    Variant {
        name: "intremap-off",
        table: Table::Dmar,
        machine: Machine {
            intremap: Some(false),
            ..VTD
        },
    },
    Variant {
        name: "intremap-on",
        table: Table::Dmar,
        machine: Machine {
            intremap: Some(true),
            ..VTD
        },
    },
    Variant {
        name: "device-iotlb",
        table: Table::Dmar,
        machine: Machine {
            device_iotlb: Some(true),
            ..VTD
        },
    },
    Variant {
        name: "bridges",
        table: Table::Dmar,
        machine: VTD.with_topology(Topology::Bridges),
    },
    Variant {
        name: "default",
        table: Table::Ivrs,
        machine: AMD,
    },
    Variant {
        name: "intremap-on",
        table: Table::Ivrs,
        machine: Machine {
            intremap: Some(true),
            ..AMD
        },
    },
    Variant {
        name: "intremap-off",
        table: Table::Ivrs,
        machine: Machine {
            intremap: Some(false),
            ..AMD
        },
    },
    Variant {
        name: "device-iotlb",
        table: Table::Ivrs,
        machine: Machine {
            device_iotlb: Some(true),
            ..AMD
        },
    },
    Variant {
        name: "bridges",
        table: Table::Ivrs,
        machine: AMD.with_topology(Topology::Bridges),
    },
];

/// The kernel command line for a capture boot.
pub const CMDLINE: &str = "acpidump";

/// `qemu72` for 7.2.x, `qemu10` for 10.0.x, else `qemu{major}{minor}`.
pub fn tag(version: (u32, u32, u32)) -> String {
    match version {
        (10, 0, _) => "qemu10".into(),
        (major, minor, _) => format!("qemu{major}{minor}"),
    }
}

impl Variant {
    /// `iommu/vtd/tests/fixtures/qemu72-default.dmar` (relative to the workspace root).
    pub fn path(&self, tag: &str) -> PathBuf {
        let (dir, ext) = self.table.location();
        Path::new(dir).join(format!("{tag}-{}.{ext}", self.name))
    }
}

/// Finds the first `dump SIG 0xADDR HEX` line for `sig` and decodes the table.
/// The table is checked: length field = byte count, signature, checksum.
pub fn extract_table(serial: &str, sig: &str) -> Result<Vec<u8>, String> {
    let mut seen = Vec::new();
    for (i, raw) in serial.lines().enumerate() {
        let msg = split_line(raw.trim_end_matches('\r')).message.trim();
        let Some(rest) = msg.strip_prefix("dump ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(s), Some(addr), hex, None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err(format!(
                "line {}: malformed dump line (expected `dump SIG 0xADDRESS HEX`): {:.80}",
                i + 1,
                msg
            ));
        };
        if s != sig {
            seen.push(s.to_string());
            continue;
        }
        if addr
            .strip_prefix("0x")
            .is_none_or(|d| d.is_empty() || !d.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!("line {}: dump {sig}: bad address {addr:?}", i + 1));
        }
        let bytes = decode_hex(hex.unwrap_or(""))
            .map_err(|e| format!("line {}: dump {sig} at {addr}: {e}", i + 1))?;
        validate(&bytes, sig).map_err(|e| format!("line {}: dump {sig} at {addr}: {e}", i + 1))?;
        return Ok(bytes);
    }
    Err(if seen.is_empty() {
        format!(
            "no `dump {sig}` line: the kernel printed no table dump (does it know `{CMDLINE}`?)"
        )
    } else {
        format!("no `dump {sig}` line; dumped tables: {}", seen.join(" "))
    })
}

fn decode_hex(hex: &str) -> Result<Vec<u8>, String> {
    if hex.is_empty() {
        return Err("no hex bytes".into());
    }
    if hex.len() % 2 != 0 {
        return Err(format!("odd number of hex digits ({})", hex.len()));
    }
    hex.as_bytes()
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            let s = std::str::from_utf8(pair).unwrap_or("");
            if pair == b"??" {
                return Err(format!("byte {i} was unreadable for the kernel (`??`)"));
            }
            if !pair
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            {
                return Err(format!("byte {i}: not two lowercase hex digits: {s:?}"));
            }
            u8::from_str_radix(s, 16).map_err(|e| format!("byte {i}: {e}"))
        })
        .collect()
}

fn validate(t: &[u8], sig: &str) -> Result<(), String> {
    if t.len() < 36 {
        return Err(format!("{} bytes, shorter than an ACPI header", t.len()));
    }
    if &t[0..4] != sig.as_bytes() {
        return Err(format!(
            "the bytes start with {:?}, not {sig}",
            String::from_utf8_lossy(&t[0..4])
        ));
    }
    let len = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as usize;
    if len != t.len() {
        return Err(format!("header length {len}, but {} bytes dumped", t.len()));
    }
    let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    if sum != 0 {
        return Err(format!(
            "checksum does not add up (sum 0x{sum:02x}): garbled serial output?"
        ));
    }
    Ok(())
}

/// How a captured table relates to the file on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Same,
    New,
    /// Differs: a human-readable description.
    Differs(String),
}

pub fn compare(old: Option<&[u8]>, new: &[u8]) -> Verdict {
    let Some(old) = old else {
        return Verdict::New;
    };
    if old == new {
        return Verdict::Same;
    }
    let first = old
        .iter()
        .zip(new)
        .position(|(a, b)| a != b)
        .unwrap_or(old.len().min(new.len()));
    let at = |v: &[u8]| v.get(first).map_or("end".into(), |b| format!("0x{b:02x}"));
    Verdict::Differs(format!(
        "{} bytes on disk, {} captured; first difference at offset 0x{first:x} (disk {}, captured {})",
        old.len(),
        new.len(),
        at(old),
        at(new)
    ))
}

pub struct Options<'a> {
    pub qemu: &'a Qemu,
    pub kernel: &'a Path,
    pub root: &'a Path,
    pub timeout: Duration,
    /// Compare only, write nothing.
    pub check: bool,
    pub qemu_extra: &'a [String],
}

/// Counts of one capture run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub same: usize,
    /// No file on disk yet.
    pub new: usize,
    pub differ: usize,
    pub written: usize,
    pub failed: usize,
}

/// Boots every variant and writes (or checks) the fixtures, printing a line each.
pub fn run(o: &Options<'_>) -> Summary {
    let tag = tag(o.qemu.version);
    let mut sum = Summary::default();
    println!(
        "capture: QEMU {} ({}) -> tag {tag}, kernel {}",
        o.qemu.version_string(),
        o.qemu.program.display(),
        o.kernel.display()
    );
    for v in MATRIX {
        let rel = v.path(&tag);
        let label = rel.display().to_string();
        match capture_one(o, v) {
            Err(e) => {
                sum.failed += 1;
                println!("FAIL {label}: {e}");
            }
            Ok(bytes) => {
                let path = o.root.join(&rel);
                let old = std::fs::read(&path).ok();
                match compare(old.as_deref(), &bytes) {
                    Verdict::Same => {
                        sum.same += 1;
                        println!("same {label} ({} bytes)", bytes.len());
                    }
                    verdict => {
                        let what = match &verdict {
                            Verdict::Differs(d) => {
                                sum.differ += 1;
                                format!("DIFFERS {label}: {d}")
                            }
                            _ => {
                                sum.new += 1;
                                format!("NEW {label} ({} bytes)", bytes.len())
                            }
                        };
                        if o.check {
                            println!("{what} (not written: --check)");
                            continue;
                        }
                        let written = path
                            .parent()
                            .map_or(Ok(()), std::fs::create_dir_all)
                            .and_then(|()| std::fs::write(&path, &bytes));
                        match written {
                            Ok(()) => {
                                sum.written += 1;
                                println!("{what}; written");
                            }
                            Err(e) => {
                                sum.failed += 1;
                                println!("{what}; FAIL cannot write: {e}");
                            }
                        }
                    }
                }
            }
        }
    }
    println!(
        "capture: {} same, {} new, {} differ, {} written, {} failed",
        sum.same, sum.new, sum.differ, sum.written, sum.failed
    );
    sum
}

fn capture_one(o: &Options<'_>, v: &Variant) -> Result<Vec<u8>, String> {
    let args = machine::qemu_args(
        o.qemu,
        &v.machine,
        o.kernel,
        CMDLINE,
        &Wiring::default(),
        o.qemu_extra,
    )?;
    let out = runner::run(&runner::RunRequest {
        program: &o.qemu.program,
        args: &args,
        timeout: o.timeout,
        qmp_socket: None,
        monitor: None,
        follow_up: None,
    })?;
    let table = extract_table(&out.serial, v.table.signature());
    match (table, out.exit) {
        (Ok(t), _) => Ok(t),
        (Err(e), Exit::Status(33)) => Err(e),
        (Err(e), exit) => {
            let qemu_said = out
                .stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| format!("; QEMU said: {}", l.trim()))
                .unwrap_or_default();
            Err(format!(
                "{e}; {}{qemu_said}",
                crate::scenarios::describe_exit(exit)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The QEMU 7.2 default DMAR as the kernel dumps it.
    const DMAR_HEX: &str = "444d4152700000000128424f43485320425850432020202001000000425850430100000026010000000000000000000000004000000000000000d9fe000000000308000000ff000001080000000000000108000000000100010800000000001f0001080000000000";

    fn dmar() -> Vec<u8> {
        // Build a valid table around the captured header: fix length and checksum.
        let mut t = decode_hex(DMAR_HEX).unwrap();
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        t[9] = 0;
        let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        t[9] = 0u8.wrapping_sub(sum);
        t
    }

    fn hex(t: &[u8]) -> String {
        t.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn tags() {
        assert_eq!(tag((7, 2, 22)), "qemu72");
        assert_eq!(tag((10, 0, 2)), "qemu10");
        assert_eq!(tag((9, 2, 0)), "qemu92");
        assert_eq!(tag((10, 1, 0)), "qemu101");
    }

    #[test]
    fn matrix_names_and_paths() {
        let tag = "qemu72";
        let paths: Vec<String> = MATRIX
            .iter()
            .map(|v| v.path(tag).display().to_string())
            .collect();
        assert_eq!(paths.len(), 12);
        assert!(paths.contains(&"iommu/vtd/tests/fixtures/qemu72-aw39.dmar".to_string()));
        assert!(paths.contains(&"iommu/amdvi/tests/fixtures/qemu72-intremap-off.ivrs".to_string()));
        let mut dedup = paths.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), paths.len());
        for v in MATRIX {
            assert!(v.machine.device_args().is_ok(), "{}", v.name);
            let want = match v.table {
                Table::Dmar => Iommu::Vtd,
                Table::Ivrs => Iommu::AmdVi,
            };
            assert_eq!(v.machine.effective_iommu(), want, "{}", v.name);
        }
        let dev = |name: &str, t: Table| {
            let v = MATRIX
                .iter()
                .find(|v| v.name == name && v.table == t)
                .unwrap();
            v.machine.device_args().unwrap()[1].clone()
        };
        assert_eq!(dev("aw39", Table::Dmar), "intel-iommu,aw-bits=39");
        assert_eq!(
            dev("device-iotlb", Table::Dmar),
            "intel-iommu,device-iotlb=on"
        );
        assert_eq!(
            dev("intremap-off", Table::Ivrs),
            "amd-iommu,id=iommu,intremap=off"
        );
        assert_eq!(dev("default", Table::Ivrs), "amd-iommu,id=iommu");
    }

    #[test]
    fn extracts_the_first_matching_dump() {
        let t = dmar();
        let log = format!(
            "[INFO  acpi] dump FACP 0x1ffe2079 46414350\r\n\
             [INFO  acpi] dump DMAR 0x1ffe2259 {}\r\n\
             [INFO  acpi] dump DMAR 0x1ffe3000 {}\n",
            hex(&t),
            "00"
        );
        assert_eq!(extract_table(&log, "DMAR"), Ok(t.clone()));
        // Without the `[LEVEL target]` prefix too.
        assert_eq!(
            extract_table(&format!("dump DMAR 0x1 {}\n", hex(&t)), "DMAR"),
            Ok(t)
        );
        let e = extract_table(&log, "IVRS").unwrap_err();
        assert_eq!(e, "no `dump IVRS` line; dumped tables: FACP DMAR DMAR");
        let e = extract_table("[INFO  boot] hello\n", "IVRS").unwrap_err();
        assert!(e.contains("printed no table dump"), "{e}");
    }

    #[test]
    fn rejects_damaged_dumps() {
        let t = dmar();
        let good = hex(&t);
        let header_msg = format!(
            "header length {}, but {} bytes dumped",
            t.len(),
            t.len() + 1
        );
        let cases = [
            (
                format!("dump DMAR 0x10 {}", &good[..good.len() - 1]),
                "odd number of hex digits",
            ),
            (
                format!("dump DMAR 0x10 {}??", &good[..good.len() - 2]),
                "unreadable for the kernel",
            ),
            (
                format!("dump DMAR 0x10 {}", good.to_uppercase()),
                "not two lowercase hex digits",
            ),
            (
                format!("dump DMAR 0x10 {}", &good[..60]),
                "shorter than an ACPI header",
            ),
            (format!("dump DMAR 0x10 {}00", good), header_msg.as_str()),
            (
                format!("dump DMAR 0x10 {}", good.replacen("01", "02", 1)),
                "checksum does not add up",
            ),
            (
                format!(
                    "dump DMAR 0x10 {}",
                    good.replacen("444d4152", "49565253", 1)
                ),
                "not DMAR",
            ),
            (format!("dump DMAR zz {good}"), "bad address"),
            ("dump DMAR 0x10".to_string(), "no hex bytes"),
            (
                format!("dump DMAR 0x10 {good} trailing"),
                "malformed dump line",
            ),
        ];
        for (line, needle) in cases {
            let e = extract_table(&format!("[INFO  acpi] {line}\n"), "DMAR").unwrap_err();
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
        }
    }

    #[test]
    fn compares_with_the_file_on_disk() {
        assert_eq!(compare(None, b"ab"), Verdict::New);
        assert_eq!(compare(Some(b"ab"), b"ab"), Verdict::Same);
        assert_eq!(
            compare(Some(b"abc"), b"abd"),
            Verdict::Differs(
                "3 bytes on disk, 3 captured; first difference at offset 0x2 (disk 0x63, captured 0x64)".into()
            )
        );
        assert_eq!(
            compare(Some(b"ab"), b"abc"),
            Verdict::Differs(
                "2 bytes on disk, 3 captured; first difference at offset 0x2 (disk end, captured 0x63)".into()
            )
        );
    }

    #[test]
    fn never_panics_on_garbage() {
        let pieces = [
            "[INFO  acpi] ",
            "dump ",
            "DMAR ",
            "IVRS ",
            "0x",
            "1f ",
            "44",
            "4d",
            "??",
            "ü",
            "\n",
            "\r",
            " ",
        ];
        let mut seed: u64 = 0x51ce;
        for _ in 0..2000 {
            let mut text = String::new();
            for _ in 0..30 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                text.push_str(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            let _ = extract_table(&text, "DMAR");
        }
    }
}
