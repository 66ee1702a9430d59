//! Host-side evidence for the VFIO scenarios.
//!
//! The guests judge the hypervisor themselves (exit statuses and `check` lines,
//! `guests.rs`). On intel-iommu the harness adds one fact the guests cannot see: the
//! unit's fault recording register, read with the monitor's `xp` while the kernel holds
//! after the guests have ended, must hold the write fault of a DMA a guest saw blocked
//! (`vfio-edu` unmaps its buffer, then has the edu write to the old IOVA), naming the
//! right requester id (resolved from QEMU's `query-pci`) and IOVA page.
//!
//! QEMU's intel-iommu has a single fault recording register (at 0x220, as the kernel's
//! `1 fault record at 0x220` says) and records nothing new while it is full, so the
//! record is the *first* blocked DMA since boot. The kernel does not drain fault records
//! while guests run (if it starts to, this check has to move to its log). With several
//! guests blocked, any of the expected DMAs may be the first.

use crate::dmatest::{self, FaultRecord, fault_reason_name};
use crate::groups::Names;
use crate::runner::OracleView;

/// intel-iommu's fault recording register 0 (QEMU's `DMAR_FRCD_REG_OFFSET`, q35 unit at
/// 0xfed90000).
pub const VTD_FRCD: u64 = 0xfed9_0220;
/// VT-d fault reason of a write to a page without write permission (QEMU reports it for
/// a write through a not-present entry too).
pub const WRITE_NOT_PERMITTED: u8 = 0x05;

/// The monitor command that reads the 128-bit record as four 32-bit words.
pub fn frcd_command() -> String {
    format!("xp /4xw 0x{VTD_FRCD:x}")
}

/// Monitor commands at `holding:` (the serial output does not matter).
pub fn monitor_commands(_serial: &str) -> Vec<String> {
    vec![frcd_command(), dmatest::fsts_command()]
}

/// One DMA a guest expects the IOMMU to block: the device (a qdev id or `bb:dd.f`) and
/// the IOVA it writes.
pub type BlockedDma = (&'static str, u64);

/// Judges the fault record against `expected` (any one of them). Returns failure
/// reasons; empty = pass.
pub fn check_fault(expected: &[BlockedDma], qemu: Result<&OracleView, String>) -> Vec<String> {
    let view = match qemu {
        Ok(v) => v,
        Err(e) => return vec![format!("{e}: the IOMMU's fault record was not read")],
    };
    let names = Names::new(&view.nodes);
    let mut want = Vec::new();
    for (device, iova) in expected {
        match names.resolve(device) {
            Ok(bdf) => want.push((*device, bdf.requester_id(), iova & !0xfff)),
            Err(e) => return vec![format!("cannot name the expected requester id: {e}")],
        }
    }
    let fsts = match view.monitor_reply(&dmatest::fsts_command()) {
        Some(Ok(out)) => dmatest::parse_xp(out, dmatest::VTD_FSTS, 4, 1)
            .map(|v| format!("FSTS 0x{:08x}", v[0]))
            .unwrap_or_else(|e| format!("FSTS unreadable: {e}")),
        _ => "FSTS not read".into(),
    };
    let record = match view.monitor_reply(&frcd_command()) {
        None => {
            return vec![format!(
                "`{}` was not run while the kernel held",
                frcd_command()
            )];
        }
        Some(Err(e)) => return vec![format!("`{}` failed: {e}", frcd_command())],
        Some(Ok(out)) => match dmatest::parse_xp(out, VTD_FRCD, 4, 4) {
            Ok(w) => FaultRecord {
                hi: w[3] << 32 | w[2],
                lo: w[1] << 32 | w[0],
            },
            Err(e) => return vec![format!("fault record: {e}")],
        },
    };
    let expected_text = want
        .iter()
        .map(|(d, r, iova)| format!("{d} (rid 0x{r:04x}) writing IOVA 0x{iova:x}"))
        .collect::<Vec<_>>()
        .join(" or ");
    if !record.fault() {
        return vec![format!(
            "the IOMMU recorded no fault (FRCD {record}, {fsts}), expected one by {expected_text}: \
             was the blocked DMA blocked by the IOMMU, or did the kernel clear the record?"
        )];
    }
    let matches = want
        .iter()
        .any(|(_, r, iova)| record.source_id() == *r && record.page() == *iova);
    let mut fails = Vec::new();
    if !matches {
        fails.push(format!(
            "the IOMMU's fault record names rid 0x{:04x} at IOVA 0x{:x}, expected {expected_text} (FRCD {record}, {fsts})",
            record.source_id(),
            record.page()
        ));
    }
    if record.is_read() || record.reason() != WRITE_NOT_PERMITTED {
        fails.push(format!(
            "the fault record is a {} with reason 0x{:02x} ({}), expected a write with reason 0x{WRITE_NOT_PERMITTED:02x} ({}) (FRCD {record})",
            if record.is_read() { "read" } else { "write" },
            record.reason(),
            fault_reason_name(record.reason()),
            fault_reason_name(WRITE_NOT_PERMITTED)
        ));
    }
    fails
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::Bdf;
    use crate::oracle::{MonitorReply, PciNode};

    pub(crate) fn node(id: &str, dev: u8) -> PciNode {
        PciNode {
            bdf: Bdf {
                bus: 0,
                dev,
                func: 0,
            },
            qdev_id: Some(id.into()),
            class: 0x00ff,
            secondary: None,
        }
    }

    /// QEMU's view of the `vfio` topology with the monitor's answers: FRCD words as QEMU
    /// 7.2 printed them after vfio-edu's blocked DMA, and FSTS.
    pub fn view(frcd: Option<&str>) -> OracleView {
        let mut monitor = vec![MonitorReply {
            command: dmatest::fsts_command(),
            output: Ok("00000000fed90034: 0x00000002\r\n".into()),
        }];
        if let Some(words) = frcd {
            monitor.push(MonitorReply {
                command: frcd_command(),
                output: Ok(format!("00000000fed90220: {words}\r\n")),
            });
        }
        OracleView {
            functions: Vec::new(),
            nodes: vec![node("e1", 3), node("e2", 4)],
            raw_json: String::new(),
            monitor,
        }
    }

    /// The record QEMU 7.2 holds after vfio-edu: write, reason 5, rid 00:03.0, 0x202000.
    pub const E1_RECORD: &str = "0x00202000 0x00000000 0x00000018 0x80ffff05";

    #[test]
    fn the_record_qemu_wrote_passes() {
        let v = view(Some(E1_RECORD));
        assert_eq!(
            check_fault(&[("e1", 0x20_2000)], Ok(&v)),
            Vec::<String>::new()
        );
        assert_eq!(
            check_fault(&[("e2", 0x40_0000), ("e1", 0x20_2abc)], Ok(&v)),
            Vec::<String>::new()
        );
        assert_eq!(
            monitor_commands(""),
            ["xp /4xw 0xfed90220", "xp /1xw 0xfed90034"]
        );
    }

    #[test]
    fn wrong_or_missing_records_fail() {
        let f = check_fault(&[("e2", 0x40_0000)], Ok(&view(Some(E1_RECORD))));
        assert_eq!(
            f,
            [
                "the IOMMU's fault record names rid 0x0018 at IOVA 0x202000, expected e2 (rid 0x0020) writing IOVA 0x400000 (FRCD 0x80ffff0500000018:0x0000000000202000, FSTS 0x00000002)"
            ]
        );
        let f = check_fault(
            &[("e1", 0x20_2000)],
            Ok(&view(Some("0x00202000 0x00000000 0x00000018 0x00ffff05"))),
        );
        assert!(f[0].starts_with("the IOMMU recorded no fault"), "{f:?}");
        let f = check_fault(
            &[("e1", 0x20_2000)],
            Ok(&view(Some("0x00202000 0x00000000 0x00000018 0xc0ffff06"))),
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].starts_with("the fault record is a read with reason 0x06"),
            "{f:?}"
        );
        let f = check_fault(&[("e1", 0x20_2000)], Ok(&view(None)));
        assert_eq!(
            f,
            ["`xp /4xw 0xfed90220` was not run while the kernel held"]
        );
        let f = check_fault(&[("e9", 0x20_2000)], Ok(&view(Some(E1_RECORD))));
        assert!(
            f[0].starts_with("cannot name the expected requester id"),
            "{f:?}"
        );
        let f = check_fault(&[("e1", 0x20_2000)], Err("no QEMU view".into()));
        assert_eq!(f, ["no QEMU view: the IOMMU's fault record was not read"]);
    }
}
