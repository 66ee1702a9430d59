//! Was an NVMe controller reset when its owner was killed? Read from the controller
//! itself, with the monitor's `xp` of its registers while the kernel holds — not from
//! anything the kernel prints.
//!
//! A guest killed with the controller enabled (CC.EN = 1, CSTS.RDY = 1, admin queues
//! pointing at its IOVAs) leaves it enabled unless the hypervisor resets it on release
//! (Sluice: FLR in `release_group`). After an FLR, CC = 0 and CSTS.RDY = 0. BAR0's
//! address comes from QEMU's `query-pci` — QEMU reports a BAR unmapped (address -1)
//! when the function's memory decode is off, and then there is nothing to read: the
//! reset must restore COMMAND, or the controller is unreachable (and this check fails).
//! The version register must read as a controller's (not 0, not all-ones), or the read
//! reached no controller.

use crate::dmatest;
use crate::groups::Names;
use crate::runner::OracleView;

/// Controller registers read (offsets in BAR0): 8 words from CAP to CSTS.
pub const REGS_WORDS: usize = 8;
pub const VS: usize = 0x08 / 4;
pub const CC: usize = 0x14 / 4;
pub const CSTS: usize = 0x1c / 4;
/// CC.EN and CSTS.RDY.
pub const CC_EN: u64 = 1;
pub const CSTS_RDY: u64 = 1;

/// BAR0's address of `device` (qdev id or `bb:dd.f`) in QEMU's `query-pci`.
fn bar0(view: &OracleView, device: &str) -> Result<u64, String> {
    let bdf = Names::new(&view.nodes).resolve(device)?;
    let f = view
        .functions
        .iter()
        .find(|f| f.bdf == bdf)
        .ok_or_else(|| format!("{device} ({bdf}) is not in QEMU's query-pci functions"))?;
    let bar = f
        .bar(0)
        .ok_or_else(|| format!("{device} ({bdf}) has no BAR0 in query-pci"))?;
    bar.address.ok_or_else(|| {
        format!(
            "{device} ({bdf}): BAR0 is unmapped in query-pci (memory decode off): the controller's registers cannot be read, and a guest could not reach it either (COMMAND not restored after the reset?)"
        )
    })
}

fn read_command(addr: u64) -> String {
    crate::blocked::xp_words(addr, REGS_WORDS)
}

/// The monitor reads: each controller's registers, once query-pci gave BAR0.
pub fn reads(devices: &[&str], view: &OracleView) -> Vec<String> {
    devices
        .iter()
        .filter_map(|d| bar0(view, d).ok())
        .map(read_command)
        .collect()
}

/// Judges that each of `devices` (NVMe controllers) is disabled: CC.EN = 0 and
/// CSTS.RDY = 0, read through BAR0. Returns the failure reasons; empty = pass.
pub fn check(devices: &[&str], qemu: Result<&OracleView, String>) -> Vec<String> {
    let view = match qemu {
        Ok(v) => v,
        Err(e) => return vec![format!("{e}: the NVMe registers were not read")],
    };
    let mut fails = Vec::new();
    for device in devices {
        let addr = match bar0(view, device) {
            Ok(a) => a,
            Err(e) => {
                fails.push(e);
                continue;
            }
        };
        let cmd = read_command(addr);
        let words = match view.monitor_reply(&cmd) {
            None => {
                fails.push(format!(
                    "{device}: `{cmd}` was not run while the kernel held: whether the controller was reset is unknown"
                ));
                continue;
            }
            Some(Err(e)) => {
                fails.push(format!("{device}: `{cmd}` failed: {e}"));
                continue;
            }
            Some(Ok(out)) => match dmatest::parse_xp(out, addr, 4, REGS_WORDS) {
                Ok(w) => w,
                Err(e) => {
                    fails.push(format!("{device}: `{cmd}`: {e}"));
                    continue;
                }
            },
        };
        let (vs, cc, csts) = (words[VS], words[CC], words[CSTS]);
        let regs = format!("BAR0 0x{addr:x}: VS 0x{vs:08x} CC 0x{cc:08x} CSTS 0x{csts:08x}");
        if vs == 0 || vs == 0xffff_ffff {
            fails.push(format!(
                "{device}: {regs}: the version register reads no controller"
            ));
            continue;
        }
        if cc & CC_EN != 0 || csts & CSTS_RDY != 0 {
            fails.push(format!(
                "{device} is still enabled after every guest ended ({regs}: EN={} RDY={}): its owner's controller state survived the release (no reset)",
                cc & CC_EN,
                csts & CSTS_RDY
            ));
        }
    }
    fails
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::blocked::tests::{Words, put64};
    use crate::dmatest::tests::fake_xp_words;
    use crate::model::{Bar, BarKind, Bdf, Function};
    use crate::oracle::{PciNode, follow_up_rounds};

    const BAR0: u64 = 0xfebd_0000;

    fn view(bar0: Option<u64>, mem: &Words) -> OracleView {
        let bdf = Bdf {
            bus: 0,
            dev: 5,
            func: 0,
        };
        let mut v = OracleView {
            functions: vec![Function {
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
            }],
            nodes: vec![PciNode {
                bdf,
                qdev_id: Some("nv1".into()),
                class: 0x0108,
                secondary: None,
            }],
            raw_json: String::new(),
            monitor: Vec::new(),
        };
        follow_up_rounds(&mut v, &|v| reads(&["nv1"], v), &mut |c| {
            Ok(fake_xp_words(c, &BTreeMap::new(), mem))
        });
        v
    }

    /// QEMU's nvme registers: CAP, VS 1.4, CC and CSTS as given.
    fn regs(cc: u32, csts: u32) -> Words {
        let mut m = Words::new();
        put64(&mut m, BAR0, 0x0020_0030_0f00_07ff);
        m.insert(BAR0 + 0x08, 0x0001_0400);
        m.insert(BAR0 + 0x14, cc);
        m.insert(BAR0 + 0x1c, csts);
        m
    }

    #[test]
    fn reset_controller_passes_and_the_read_uses_bar0() {
        let v = view(Some(BAR0), &regs(0, 0));
        assert_eq!(reads(&["nv1"], &v), ["xp /8xw 0xfebd0000"]);
        assert!(v.monitor_reply("xp /8xw 0xfebd0000").is_some());
        assert_eq!(check(&["nv1"], Ok(&v)), Vec::<String>::new());
    }

    #[test]
    fn enabled_controller_fails() {
        let v = view(Some(BAR0), &regs(0x0046_0001, 1));
        assert_eq!(
            check(&["nv1"], Ok(&v)),
            [
                "nv1 is still enabled after every guest ended (BAR0 0xfebd0000: VS 0x00010400 \
              CC 0x00460001 CSTS 0x00000001: EN=1 RDY=1): its owner's controller state \
              survived the release (no reset)"
            ]
        );
        // EN cleared but not yet idle (RDY still 1) is not reset either.
        let f = check(&["nv1"], Ok(&view(Some(BAR0), &regs(0x0046_0000, 1))));
        assert_eq!(f.len(), 1);
        assert!(f[0].contains("EN=0 RDY=1"), "{f:?}");
    }

    #[test]
    fn unreadable_controller_fails() {
        // Memory decode off: QEMU reports BAR0 unmapped, nothing is read.
        let v = view(None, &regs(0, 0));
        assert!(v.monitor.is_empty());
        let f = check(&["nv1"], Ok(&v));
        assert_eq!(f.len(), 1);
        assert!(f[0].contains("BAR0 is unmapped"), "{f:?}");
        // Registers reading all-ones (or zeros) are no controller, even with EN=0.
        let mut m = regs(0, 0);
        m.insert(BAR0 + 0x08, 0xffff_ffff);
        let f = check(&["nv1"], Ok(&view(Some(BAR0), &m)));
        assert!(f[0].contains("reads no controller"), "{f:?}");
        // The read was not run, or there is no QEMU view at all.
        let mut v = view(Some(BAR0), &regs(0, 0));
        v.monitor.clear();
        let f = check(&["nv1"], Ok(&v));
        assert!(f[0].contains("was not run while the kernel held"), "{f:?}");
        let f = check(&["nv1"], Err("no QEMU view".into()));
        assert_eq!(f, ["no QEMU view: the NVMe registers were not read"]);
        // An unknown device.
        let f = check(&["nv9"], Ok(&view(Some(BAR0), &regs(0, 0))));
        assert_eq!(f.len(), 1);
    }
}
