//! Compares the kernel's PCI listing with QEMU's (`query-pci`).

use std::collections::BTreeMap;

use crate::model::{Bdf, Function};

/// Returns one human-readable line per difference; empty means equal.
///
/// Rules: the same set of (bus, device, function); per function the same vendor,
/// device and class (base/sub class); every BAR QEMU lists must be listed by the
/// kernel with the same kind, size and (unless QEMU reports it unmapped) address;
/// the kernel must not list BARs QEMU does not.
pub fn compare(kernel: &[Function], qemu: &[Function]) -> Vec<String> {
    let mut diffs = Vec::new();
    let k: BTreeMap<Bdf, &Function> = kernel.iter().map(|f| (f.bdf, f)).collect();
    let q: BTreeMap<Bdf, &Function> = qemu.iter().map(|f| (f.bdf, f)).collect();

    for f in kernel.iter().filter(|f| f.segment != 0) {
        diffs.push(format!(
            "{:04x}:{}: kernel lists segment {:04x}, QEMU has only segment 0000",
            f.segment, f.bdf, f.segment
        ));
    }
    for (bdf, qf) in &q {
        let Some(kf) = k.get(bdf) else {
            diffs.push(format!(
                "{qf}: missing from the kernel's list (QEMU has it)"
            ));
            continue;
        };
        if (kf.vendor, kf.device) != (qf.vendor, qf.device) {
            diffs.push(format!(
                "{bdf}: vendor:device kernel {:04x}:{:04x}, QEMU {:04x}:{:04x}",
                kf.vendor, kf.device, qf.vendor, qf.device
            ));
        }
        if kf.class != qf.class {
            diffs.push(format!(
                "{bdf}: class kernel {:04x}xx, QEMU {:04x}xx",
                kf.class, qf.class
            ));
        }
        for qb in &qf.bars {
            let Some(kb) = kf.bar(qb.index) else {
                diffs.push(format!(
                    "{bdf}: QEMU lists {qb}, the kernel does not list BAR{}",
                    qb.index
                ));
                continue;
            };
            let mut what = Vec::new();
            if kb.kind != qb.kind {
                what.push(format!("kind kernel {}, QEMU {}", kb.kind, qb.kind));
            }
            if kb.size != qb.size {
                what.push(format!("size kernel 0x{:x}, QEMU 0x{:x}", kb.size, qb.size));
            }
            if let (Some(qa), Some(ka)) = (qb.address, kb.address) {
                if qa != ka {
                    what.push(format!("address kernel 0x{ka:x}, QEMU 0x{qa:x}"));
                }
            }
            if !what.is_empty() {
                diffs.push(format!("{bdf} BAR{}: {}", qb.index, what.join("; ")));
            }
        }
        for kb in &kf.bars {
            if qf.bar(kb.index).is_none() {
                diffs.push(format!(
                    "{bdf}: kernel lists {kb}, QEMU has no BAR{}",
                    kb.index
                ));
            }
        }
    }
    for (bdf, kf) in &k {
        if !q.contains_key(bdf) {
            diffs.push(format!(
                "{kf}: listed by the kernel, QEMU has no function at {bdf}"
            ));
        }
    }
    diffs
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::oracle::{parse_query_pci, tests::BRIDGES_JSON};
    use crate::serial::KernelLog;

    /// A kernel log whose listing matches `oracle::tests::BRIDGES_JSON`, up to `holding:`.
    pub(crate) const MATCHING_LOG: &str = "\
[INFO  pci] 0000:00:00.0 [8086:29c0] class 060000 rev 00 host-bridge
[INFO  pci] 0000:00:02.0 [1b36:000c] class 060400 rev 00 pcie-root-port
[INFO  pci]     BAR0 mem32 0x00000000fe500000 size 0x1000
[INFO  pci] 0000:01:00.0 [1b36:000e] class 060400 rev 00 pcie-to-pci-bridge
[INFO  pci]     BAR0 mem64 pref 0x00000000fde00000 size 0x100
[INFO  pci] 0000:02:01.0 [1234:11e8] class 00ff00 rev 10 conventional-endpoint
[INFO  pci]     BAR0 mem32 0x00000000fdc00000 size 0x100000
[INFO  pci] 0000:00:1f.2 [8086:2922] class 010601 rev 02 conventional-endpoint
[INFO  pci]     BAR4 io 0x000000000000d040 size 0x20
[INFO  pci]     BAR5 mem32 0x00000000fe503000 size 0x1000
[INFO  pci] pci: enumerated 5 functions
[INFO  main] holding: waiting for one byte on COM1
";

    fn oracle() -> Vec<Function> {
        parse_query_pci(&serde_json::from_str(BRIDGES_JSON).unwrap()).unwrap()
    }

    #[test]
    fn equal_listings_have_no_diff() {
        let log = KernelLog::parse(MATCHING_LOG);
        assert!(log.problems.is_empty());
        assert_eq!(compare(&log.functions, &oracle()), Vec::<String>::new());
    }

    #[test]
    fn detects_every_kind_of_mismatch() {
        let broken = MATCHING_LOG
            // wrong device id and class of the host bridge
            .replace("[8086:29c0] class 060000", "[8086:29c1] class 060100")
            // root port BAR: wrong size
            .replace(
                "0x00000000fe500000 size 0x1000",
                "0x00000000fe500000 size 0x2000",
            )
            // bridge BAR: not prefetchable, wrong address
            .replace(
                "BAR0 mem64 pref 0x00000000fde00000",
                "BAR0 mem64 0x00000000fde10000",
            )
            // SATA: drop BAR5, add BAR3
            .replace(
                "[INFO  pci]     BAR5 mem32 0x00000000fe503000 size 0x1000\n",
                "[INFO  pci]     BAR3 io 0x0000000000000100 size 0x8\n",
            )
            // the edu behind the PCI bridge vanished, a phantom appeared
            .replace("0000:02:01.0 [1234:11e8]", "0000:03:01.0 [1234:11e8]");
        let log = KernelLog::parse(&broken);
        assert!(log.problems.is_empty(), "{:?}", log.problems);
        let diffs = compare(&log.functions, &oracle());
        let expected = [
            "00:00.0: vendor:device kernel 8086:29c1, QEMU 8086:29c0",
            "00:00.0: class kernel 0601xx, QEMU 0600xx",
            "00:02.0 BAR0: size kernel 0x2000, QEMU 0x1000",
            "00:1f.2: QEMU lists BAR5 mem32 0xfe503000 size 0x1000, the kernel does not list BAR5",
            "00:1f.2: kernel lists BAR3 io 0x100 size 0x8, QEMU has no BAR3",
            "01:00.0 BAR0: kind kernel mem64, QEMU mem64 pref; address kernel 0xfde10000, QEMU 0xfde00000",
            "02:01.0 [1234:11e8] class 00ff: missing from the kernel's list (QEMU has it)",
            "03:01.0 [1234:11e8] class 00ff: listed by the kernel, QEMU has no function at 03:01.0",
        ];
        assert_eq!(diffs, expected);
    }

    #[test]
    fn unmapped_bar_address_is_not_compared() {
        // QEMU reports the edu BAR as unmapped (-1): any kernel address is accepted,
        // but size and kind still count.
        let log = KernelLog::parse(&MATCHING_LOG.replace(
            "0x00000000fdc00000 size 0x100000",
            "0x0000000000000000 size 0x100000",
        ));
        assert!(compare(&log.functions, &oracle()).is_empty());
        let log = KernelLog::parse(&MATCHING_LOG.replace(
            "0x00000000fdc00000 size 0x100000",
            "0x0000000000000000 size 0x1000",
        ));
        assert_eq!(
            compare(&log.functions, &oracle()),
            ["02:01.0 BAR0: size kernel 0x1000, QEMU 0x100000"]
        );
    }

    #[test]
    fn empty_kernel_listing_reports_everything_missing() {
        let diffs = compare(&[], &oracle());
        assert_eq!(diffs.len(), 5);
        assert!(
            diffs
                .iter()
                .all(|d| d.contains("missing from the kernel's list"))
        );
    }

    #[test]
    fn nonzero_segment_is_a_difference() {
        let log = KernelLog::parse(&MATCHING_LOG.replace("0000:00:00.0", "0001:00:00.0"));
        let diffs = compare(&log.functions, &oracle());
        assert!(
            diffs[0].starts_with("0001:00:00.0: kernel lists segment 0001"),
            "{diffs:?}"
        );
    }
}
