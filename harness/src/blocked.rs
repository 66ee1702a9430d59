//! Is a device blocked from DMA once every guest has ended? Read the way the IOMMU
//! itself reads it, from QEMU's memory and the unit's registers, with the monitor's
//! `xp` while the kernel holds — not from anything the kernel prints.
//!
//! A group released (closed, or its guest ended or killed) must leave its devices
//! blocked, ready for the next owner: no mapping survives its owner. Sluice's blocked
//! state is, per vendor:
//!
//! - **VT-d** (legacy translation mode, as the kernel programs it): no context entry.
//!   The unit reads RTADDR (register 0x20 of the unit at 0xfed90000; bits 11:10 TTM =
//!   00 legacy), the 128-bit root entry of the device's bus (P = bit 0, context-table
//!   pointer bits 63:12), and the 128-bit context entry of its devfn (P = bit 0): P = 0
//!   in either means the DMA faults (reason 1 or 2) instead of being translated.
//!   Translation must be on at all (GSTS.TES, bit 31 of register 0x1c), or nothing is
//!   blocked.
//! - **AMD-Vi**: the device table entry of the device id. The unit reads the Device
//!   Table Base Address register (offset 0 of its MMIO block at 0xfed80000: base bits
//!   51:12, size bits 8:0 = 4 KiB pages − 1), then the 256-bit entry at base + id × 32.
//!   Blocked = V = 1 (bit 0), TV = 1 (bit 1), IR = 0 (bit 61), IW = 0 (bit 62): a DTE
//!   with V = 0 or TV = 0 lets DMA through untranslated, IR/IW grant access. The unit
//!   must be on (Control.IommuEn, bit 0 of register 0x18).
//!
//! The reads form a walk, each address taken from the reply before it, so they run in
//! rounds ([`reads`] is the [`crate::oracle::FollowUp`] plan); [`check`] judges the
//! replies. Requester ids come from QEMU's `query-pci` (qdev ids such as `e1`).

use crate::dmatest::{self, Unit};
use crate::groups::Names;
use crate::model::Bdf;
use crate::runner::OracleView;

/// intel-iommu's registers on q35 (DMAR unit base 0xfed90000): Global Status and Root
/// Table Address.
pub const VTD_GSTS: u64 = 0xfed9_001c;
pub const VTD_RTADDR: u64 = 0xfed9_0020;
/// GSTS.TES: translation enabled.
pub const GSTS_TES: u64 = 1 << 31;
/// amd-iommu's Device Table Base Address register (offset 0 of its MMIO block) and
/// Control register.
pub const AMDVI_DEVTAB_BASE: u64 = crate::amdvi_event::AMDVI_MMIO;
pub const AMDVI_CONTROL: u64 = crate::amdvi_event::AMDVI_CONTROL;

/// DTE bits (quadword 0).
pub const DTE_V: u64 = 1 << 0;
pub const DTE_TV: u64 = 1 << 1;
pub const DTE_IR: u64 = 1 << 61;
pub const DTE_IW: u64 = 1 << 62;

/// `xp` of `count` 32-bit words at `addr`.
pub fn xp_words(addr: u64, count: usize) -> String {
    format!("xp /{count}xw 0x{addr:x}")
}

/// Where the walk for one device stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Walk {
    /// This read comes next.
    Need(String),
    /// Blocked; what the unit reads.
    Blocked(String),
    /// DMA is not blocked; why.
    Open(String),
    /// A read failed or made no sense.
    Unreadable(String),
}

/// The words at `addr` as replied, or where the walk stops.
fn words(view: &OracleView, addr: u64, count: usize) -> Result<Vec<u64>, Walk> {
    let cmd = xp_words(addr, count);
    match view.monitor_reply(&cmd) {
        None => Err(Walk::Need(cmd)),
        Some(Err(e)) => Err(Walk::Unreadable(format!("`{cmd}` failed: {e}"))),
        Some(Ok(out)) => dmatest::parse_xp(out, addr, 4, count)
            .map_err(|e| Walk::Unreadable(format!("`{cmd}`: {e}"))),
    }
}

/// Little-endian quadwords from 32-bit words.
fn quads(w: &[u64]) -> Vec<u64> {
    w.chunks(2)
        .map(|p| p[0] | p.get(1).unwrap_or(&0) << 32)
        .collect()
}

fn vtd_walk(view: &OracleView, bdf: Bdf) -> Result<Walk, Walk> {
    let gsts = words(view, VTD_GSTS, 1)?[0];
    if gsts & GSTS_TES == 0 {
        return Ok(Walk::Open(format!(
            "GSTS 0x{gsts:08x} has TES clear: translation is off, every DMA reaches memory untranslated"
        )));
    }
    let rtaddr = quads(&words(view, VTD_RTADDR, 2)?)[0];
    let ttm = rtaddr >> 10 & 3;
    if ttm != 0 {
        return Ok(Walk::Unreadable(format!(
            "RTADDR 0x{rtaddr:x} has TTM {ttm:#b}, not legacy mode (00): this check reads legacy root and context entries only"
        )));
    }
    let root_at = (rtaddr & !0xfff) + u64::from(bdf.bus) * 16;
    let root = quads(&words(view, root_at, 4)?);
    if root[0] & 1 == 0 {
        return Ok(Walk::Blocked(format!(
            "root entry [bus 0x{:02x}] at 0x{root_at:x} = 0x{:016x}_{:016x}: P=0, no context table (fault reason 1)",
            bdf.bus, root[1], root[0]
        )));
    }
    let devfn = bdf.dev << 3 | bdf.func;
    let ctx_at = (root[0] & !0xfff) + u64::from(devfn) * 16;
    let ctx = quads(&words(view, ctx_at, 4)?);
    let text = format!(
        "root entry [bus 0x{:02x}] at 0x{root_at:x} P=1 CTP=0x{:x}; context entry [devfn 0x{devfn:02x}] at 0x{ctx_at:x} = 0x{:016x}_{:016x}",
        bdf.bus,
        root[0] & !0xfff,
        ctx[1],
        ctx[0]
    );
    Ok(if ctx[0] & 1 == 0 {
        Walk::Blocked(format!("{text}: P=0 (fault reason 2)"))
    } else {
        Walk::Open(format!(
            "{text}: P=1 T={} AW={} DID=0x{:x} SLPTPTR=0x{:x}: the unit still translates its DMA through a domain",
            ctx[0] >> 2 & 3,
            ctx[1] & 7,
            ctx[1] >> 8 & 0xffff,
            ctx[0] & !0xfff
        ))
    })
}

fn amd_walk(view: &OracleView, bdf: Bdf) -> Result<Walk, Walk> {
    let control = quads(&words(view, AMDVI_CONTROL, 2)?)[0];
    if control & 1 == 0 {
        return Ok(Walk::Open(format!(
            "Control 0x{control:x} has IommuEn clear: the IOMMU is off, every DMA reaches memory untranslated"
        )));
    }
    let reg = quads(&words(view, AMDVI_DEVTAB_BASE, 2)?)[0];
    let base = reg & 0x000f_ffff_ffff_f000;
    let entries = ((reg & 0x1ff) + 1) * 4096 / 32;
    let id = bdf.requester_id();
    if u64::from(id) >= entries {
        return Ok(Walk::Open(format!(
            "device id 0x{id:04x} lies beyond the device table (base register 0x{reg:x}: {entries} entries): the unit reads memory past it"
        )));
    }
    let at = base + u64::from(id) * 32;
    let q = quads(&words(view, at, 8)?);
    let bit = |m: u64| u8::from(q[0] & m != 0);
    let text = format!(
        "DTE [device id 0x{id:04x}] at 0x{at:x} (table 0x{base:x}) = 0x{:016x}_{:016x}_{:016x}_{:016x}: V={} TV={} IR={} IW={} Mode={} DomainID=0x{:x}",
        q[3],
        q[2],
        q[1],
        q[0],
        bit(DTE_V),
        bit(DTE_TV),
        bit(DTE_IR),
        bit(DTE_IW),
        q[0] >> 9 & 7,
        q[1] & 0xffff
    );
    Ok(
        if q[0] & (DTE_V | DTE_TV | DTE_IR | DTE_IW) == DTE_V | DTE_TV {
            Walk::Blocked(text)
        } else if q[0] & DTE_V == 0 || q[0] & DTE_TV == 0 {
            Walk::Open(format!(
                "{text}: without V=1 and TV=1 the unit passes the DMA untranslated"
            ))
        } else {
            Walk::Open(format!(
                "{text}: IR/IW still grant access (a domain's entry outlived its owner)"
            ))
        },
    )
}

fn walk(unit: Unit, view: &OracleView, bdf: Bdf) -> Walk {
    let r = match unit {
        Unit::Vtd => vtd_walk(view, bdf),
        Unit::AmdVi => amd_walk(view, bdf),
    };
    r.unwrap_or_else(|w| w)
}

/// The follow-up plan: the next read of each device's walk, as far as the replies so
/// far allow (first the registers, then the entries they point at).
pub fn reads(unit: Unit, devices: &[&str], view: &OracleView) -> Vec<String> {
    let names = Names::new(&view.nodes);
    let mut out: Vec<String> = Vec::new();
    for device in devices {
        let Ok(bdf) = names.resolve(device) else {
            continue;
        };
        if let Walk::Need(cmd) = walk(unit, view, bdf) {
            if !out.contains(&cmd) {
                out.push(cmd);
            }
        }
    }
    out
}

/// Judges whether each of `devices` (qdev ids or `bb:dd.f`) is blocked. Returns the
/// failure reasons; empty = pass.
pub fn check(unit: Unit, devices: &[&str], qemu: Result<&OracleView, String>) -> Vec<String> {
    let view = match qemu {
        Ok(v) => v,
        Err(e) => return vec![format!("{e}: the IOMMU's tables were not read")],
    };
    let names = Names::new(&view.nodes);
    let mut fails = Vec::new();
    for device in devices {
        let bdf = match names.resolve(device) {
            Ok(b) => b,
            Err(e) => {
                fails.push(format!("cannot name the device to check: {e}"));
                continue;
            }
        };
        let who = format!(
            "{device} ({bdf}, requester id 0x{:04x})",
            bdf.requester_id()
        );
        match walk(unit, view, bdf) {
            Walk::Blocked(_) => {}
            Walk::Need(cmd) => fails.push(format!(
                "{who}: `{cmd}` was not run while the kernel held: whether the IOMMU blocks it is unknown"
            )),
            Walk::Open(why) => fails.push(format!(
                "{who} is not blocked after every guest ended: {why}"
            )),
            Walk::Unreadable(why) => fails.push(format!("{who}: {why}")),
        }
    }
    fails
}

/// GSTS.IRES (bit 25): interrupt remapping enabled; GSTS.CFIS (bit 23): compatibility
/// format interrupts allowed.
pub const GSTS_IRES: u64 = 1 << 25;
pub const GSTS_CFIS: u64 = 1 << 23;

/// intel-iommu: the unit's GSTS (read for `DevicesBlocked`, while the kernel holds) must
/// show interrupt remapping on and compatibility format off. Returns the failure
/// reasons; empty = pass.
pub fn check_vtd_interrupt_remapping(qemu: Result<&OracleView, String>) -> Vec<String> {
    let view = match qemu {
        Ok(v) => v,
        Err(e) => return vec![format!("{e}: GSTS was not read")],
    };
    let gsts = match words(view, VTD_GSTS, 1) {
        Ok(w) => w[0],
        Err(Walk::Need(cmd)) => {
            return vec![format!(
                "`{cmd}` was not run while the kernel held (VtdInterruptRemapping reads what DevicesBlocked reads)"
            )];
        }
        Err(Walk::Unreadable(why) | Walk::Open(why) | Walk::Blocked(why)) => return vec![why],
    };
    let mut fails = Vec::new();
    if gsts & GSTS_IRES == 0 {
        fails.push(format!(
            "GSTS 0x{gsts:08x} has IRES clear: interrupt remapping is off"
        ));
    }
    if gsts & GSTS_CFIS != 0 {
        fails.push(format!(
            "GSTS 0x{gsts:08x} has CFIS set: compatibility-format interrupts bypass remapping"
        ));
    }
    fails
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::dmatest::tests::fake_xp_words;
    use crate::oracle::{PciNode, follow_up_rounds};
    use crate::vfio::tests::node;

    /// 32-bit words of QEMU's memory and registers; unknown addresses read 0.
    pub type Words = BTreeMap<u64, u32>;

    pub fn put64(m: &mut Words, addr: u64, v: u64) {
        m.insert(addr, v as u32);
        m.insert(addr + 4, (v >> 32) as u32);
    }

    /// The `vfio` topology's view after the follow-up rounds ran against `mem`, the way
    /// the oracle runs them (each `xp` answered as QEMU prints it).
    pub fn view_after_rounds(unit: Unit, devices: &[&str], mem: &Words) -> OracleView {
        let mut v = OracleView {
            functions: Vec::new(),
            nodes: vec![
                node("e1", 3),
                node("e2", 4),
                PciNode {
                    qdev_id: None,
                    ..node("", 0x1f)
                },
            ],
            raw_json: String::new(),
            monitor: Vec::new(),
        };
        follow_up_rounds(&mut v, &|v| reads(unit, devices, v), &mut |c| {
            Ok(fake_xp_words(c, &BTreeMap::new(), mem))
        });
        v
    }

    pub const ROOT: u64 = 0x122_4000;
    pub const CTX_TABLE: u64 = 0x123_1000;

    /// intel-iommu as QEMU 7.2 holds it after vfio-edu (kernel log): translation on,
    /// root table 0x1224000, bus 0's root entry present, e1's and e2's context entries
    /// clear.
    pub fn vtd_blocked() -> Words {
        let mut m = Words::new();
        m.insert(VTD_GSTS, 0xc000_0000);
        put64(&mut m, VTD_RTADDR, ROOT);
        put64(&mut m, ROOT, CTX_TABLE | 1);
        m
    }

    /// e1 still attached: the context entry the kernel logged while vfio-edu ran.
    pub fn vtd_e1_attached() -> Words {
        let mut m = vtd_blocked();
        put64(&mut m, CTX_TABLE + 0x18 * 16, 0x0000_0000_0123_0001);
        put64(&mut m, CTX_TABLE + 0x18 * 16 + 8, 0x101);
        m
    }

    pub const DEVTAB: u64 = 0x122_2000;
    const BLOCKING_ROOT: u64 = 0x142_2000;

    /// amd-iommu as QEMU 7.2 holds it after vfio-release-amdvi (read with `xp`): on
    /// (Control 0x1407), a full 2 MiB device table (size 0x1ff), e1 and e2 blocked as
    /// the kernel writes it: 0x01422803 = V, TV, Mode 4, the empty root 0x1422000.
    pub fn amd_blocked() -> Words {
        let mut m = Words::new();
        put64(&mut m, AMDVI_CONTROL, 0x1407);
        put64(&mut m, AMDVI_DEVTAB_BASE, DEVTAB | 0x1ff);
        for id in [0x18u64, 0x20] {
            put64(
                &mut m,
                DEVTAB + id * 32,
                BLOCKING_ROOT | 4 << 9 | DTE_TV | DTE_V,
            );
        }
        m
    }

    fn vtd(mem: &Words) -> Vec<String> {
        let v = view_after_rounds(Unit::Vtd, &["e1", "e2"], mem);
        check(Unit::Vtd, &["e1", "e2"], Ok(&v))
    }

    fn amd(mem: &Words) -> Vec<String> {
        let v = view_after_rounds(Unit::AmdVi, &["e1", "e2"], mem);
        check(Unit::AmdVi, &["e1", "e2"], Ok(&v))
    }

    #[test]
    fn vtd_reads_follow_the_walk() {
        let v = view_after_rounds(Unit::Vtd, &["e1", "e2"], &vtd_blocked());
        let cmds: Vec<&str> = v.monitor.iter().map(|r| r.command.as_str()).collect();
        assert_eq!(
            cmds,
            [
                "xp /1xw 0xfed9001c",
                "xp /2xw 0xfed90020",
                "xp /4xw 0x1224000",
                "xp /4xw 0x1231180",
                "xp /4xw 0x1231200",
            ]
        );
        // Everything read: no further round.
        assert!(
            reads(Unit::Vtd, &["e1", "e2"], &v)
                .iter()
                .all(|c| v.monitor_reply(c).is_some())
        );
        assert_eq!(
            check(Unit::Vtd, &["e1", "e2"], Ok(&v)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn vtd_interrupt_remapping_reads_gsts() {
        let mut mem = vtd_blocked();
        let view = |mem: &Words| view_after_rounds(Unit::Vtd, &["e1"], mem);
        let fails = check_vtd_interrupt_remapping(Ok(&view(&mem)));
        assert_eq!(
            fails,
            ["GSTS 0xc0000000 has IRES clear: interrupt remapping is off"]
        );
        // TES | RTPS | QIES | IRES | IRTPS, as QEMU shows it with remapping on.
        mem.insert(VTD_GSTS, 0xc700_0000);
        assert!(check_vtd_interrupt_remapping(Ok(&view(&mem))).is_empty());
        mem.insert(VTD_GSTS, 0xc780_0000);
        assert_eq!(check_vtd_interrupt_remapping(Ok(&view(&mem))).len(), 1);
        // Not read at all.
        let mut v = view(&mem);
        v.monitor.clear();
        assert!(check_vtd_interrupt_remapping(Ok(&v))[0].contains("was not run"));
        assert_eq!(
            check_vtd_interrupt_remapping(Err("no QEMU".into())).len(),
            1
        );
    }

    #[test]
    fn vtd_present_context_entry_fails() {
        let f = vtd(&vtd_e1_attached());
        assert_eq!(
            f,
            [
                "e1 (00:03.0, requester id 0x0018) is not blocked after every guest ended: \
              root entry [bus 0x00] at 0x1224000 P=1 CTP=0x1231000; context entry [devfn 0x18] \
              at 0x1231180 = 0x0000000000000101_0000000001230001: P=1 T=0 AW=1 DID=0x1 \
              SLPTPTR=0x1230000: the unit still translates its DMA through a domain"
            ]
        );
    }

    #[test]
    fn vtd_other_states() {
        // No root entry for bus 0: blocked as well (the unit finds no context table).
        let mut m = vtd_e1_attached();
        put64(&mut m, ROOT, 0);
        assert_eq!(vtd(&m), Vec::<String>::new());
        // Translation off: nothing is blocked.
        let mut m = vtd_blocked();
        m.insert(VTD_GSTS, 0x4000_0000);
        let f = vtd(&m);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].contains("TES clear"), "{f:?}");
        // Scalable mode (TTM 01): not judged as legacy.
        let mut m = vtd_blocked();
        put64(&mut m, VTD_RTADDR, ROOT | 1 << 10);
        let f = vtd(&m);
        assert!(f[0].contains("not legacy mode"), "{f:?}");
    }

    #[test]
    fn amd_blocked_passes_and_reads_follow_the_walk() {
        let v = view_after_rounds(Unit::AmdVi, &["e1", "e2"], &amd_blocked());
        let cmds: Vec<&str> = v.monitor.iter().map(|r| r.command.as_str()).collect();
        assert_eq!(
            cmds,
            [
                "xp /2xw 0xfed80018",
                "xp /2xw 0xfed80000",
                "xp /8xw 0x1222300",
                "xp /8xw 0x1222400",
            ]
        );
        assert_eq!(amd(&amd_blocked()), Vec::<String>::new());
    }

    #[test]
    fn amd_open_entries_fail() {
        let e1 = DEVTAB + 0x18 * 32;
        // Still attached: IR=1 IW=1, domain 1.
        let mut m = amd_blocked();
        put64(
            &mut m,
            e1,
            0x170_0000 | 3 << 9 | DTE_IR | DTE_IW | DTE_TV | DTE_V,
        );
        put64(&mut m, e1 + 8, 1);
        let f = amd(&m);
        assert_eq!(
            f,
            [
                "e1 (00:03.0, requester id 0x0018) is not blocked after every guest ended: \
              DTE [device id 0x0018] at 0x1222300 (table 0x1222000) = \
              0x0000000000000000_0000000000000000_0000000000000001_6000000001700603: \
              V=1 TV=1 IR=1 IW=1 Mode=3 DomainID=0x1: IR/IW still grant access (a domain's entry outlived its owner)"
            ]
        );
        // Read permission alone is enough to fail.
        let mut m = amd_blocked();
        put64(&mut m, e1, BLOCKING_ROOT | 4 << 9 | DTE_IR | DTE_TV | DTE_V);
        assert!(amd(&m)[0].contains("IR=1 IW=0"), "{:?}", amd(&m));
        // V=0: untranslated.
        let mut m = amd_blocked();
        put64(&mut m, e1, 0);
        assert!(amd(&m)[0].contains("passes the DMA untranslated"));
        // The IOMMU off.
        let mut m = amd_blocked();
        put64(&mut m, AMDVI_CONTROL, 0x1406);
        assert!(amd(&m)[0].contains("IommuEn clear"));
        // A one-page device table (ids 0..0x7f): e1 and e2 fit, ICH9's LPC (0xf8) not.
        let mut m = amd_blocked();
        put64(&mut m, AMDVI_DEVTAB_BASE, DEVTAB);
        assert_eq!(amd(&m), Vec::<String>::new());
        let v = view_after_rounds(Unit::AmdVi, &["00:1f.0"], &m);
        let f = check(Unit::AmdVi, &["00:1f.0"], Ok(&v));
        assert_eq!(
            f,
            [
                "00:1f.0 (00:1f.0, requester id 0x00f8) is not blocked after every guest ended: \
              device id 0x00f8 lies beyond the device table (base register 0x1222000: 128 entries): \
              the unit reads memory past it"
            ]
        );
    }

    #[test]
    fn missing_or_failed_reads_fail() {
        let v = view_after_rounds(Unit::Vtd, &["e1"], &vtd_blocked());
        // The walk was planned for e1 only: e2's context entry was never read.
        let f = check(Unit::Vtd, &["e1", "e2"], Ok(&v));
        assert_eq!(
            f,
            [
                "e2 (00:04.0, requester id 0x0020): `xp /4xw 0x1231200` was not run while the kernel held: whether the IOMMU blocks it is unknown"
            ]
        );
        let mut v = view_after_rounds(Unit::AmdVi, &["e1"], &amd_blocked());
        v.monitor[2].output = Err("QMP connection closed".into());
        let f = check(Unit::AmdVi, &["e1"], Ok(&v));
        assert_eq!(
            f,
            [
                "e1 (00:03.0, requester id 0x0018): `xp /8xw 0x1222300` failed: QMP connection closed"
            ]
        );
        v.monitor[2].output = Ok("0000000001222300: Cannot access memory\r\n".into());
        let f = check(Unit::AmdVi, &["e1"], Ok(&v));
        assert!(f[0].contains("QEMU cannot access guest memory"), "{f:?}");
        let f = check(Unit::Vtd, &["e9"], Ok(&v));
        assert!(f[0].starts_with("cannot name the device to check"), "{f:?}");
        let f = check(Unit::Vtd, &["e1"], Err("no QEMU view".into()));
        assert_eq!(f, ["no QEMU view: the IOMMU's tables were not read"]);
    }
}
