//! IOMMU groups: the kernel's group report (parsed from the serial log) and the
//! checks `Check::Groups` / `Check::RequesterIds` against an expected partition.
//!
//! The kernel prints, after the PCI listing and before `holding:` (target `iommu`):
//!
//! ```text
//! [INFO  iommu] dmar0: ...                                   (free text, not parsed)
//! [INFO  iommu] group 3 (dmar0): 0000:00:1f.0 0000:00:1f.2 0000:00:1f.3
//! [INFO  iommu]     0000:00:1f.0 requester-ids 00:1f.0 (...)
//! [INFO  iommu] no group: 0000:00:00.0 (not translated by any IOMMU unit)
//! [INFO  iommu] formed 5 IOMMU groups
//! ```
//!
//! Expected groups name devices by token: a `qdev_id` (`e1`, `rp1`, `iommu`; the
//! `id=` of a `-device`) or a fixed `bb:dd.f` for q35's built-in functions. Tokens are
//! resolved with QEMU's `query-pci` reply, so slot shifts (amd-iommu at 00:01.0) do
//! not matter.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::machine::Iommu;
use crate::model::Bdf;
use crate::oracle::PciNode;

/// One `group N (unit): ...` line and the member lines after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelGroup {
    /// 1-based log line number.
    pub line: usize,
    pub id: u32,
    pub unit: String,
    pub devices: Vec<Bdf>,
    pub members: Vec<Member>,
}

/// `    0000:03:01.0 requester-ids 03:01.0,03:00.0 (...)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub line: usize,
    pub device: Bdf,
    pub requester_ids: Vec<Bdf>,
}

/// Everything the kernel said about IOMMU groups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupReport {
    pub groups: Vec<KernelGroup>,
    /// `no group: BDF (...)` lines: (line, function).
    pub no_group: Vec<(usize, Bdf)>,
    /// `N` of `formed N IOMMU groups` (the last such line).
    pub formed: Option<usize>,
    /// Lines that look like group report lines but break the format.
    pub problems: Vec<String>,
}

impl GroupReport {
    /// Parses the report out of the log lines (message part after `[LEVEL target] `).
    pub fn parse<S: AsRef<str>>(lines: &[S]) -> GroupReport {
        let mut r = GroupReport::default();
        for (i, raw) in lines.iter().enumerate() {
            let line_no = i + 1;
            let msg = crate::serial::split_line(raw.as_ref().trim_end_matches('\r')).message;
            let trimmed = msg.trim();
            if let Some(rest) = trimmed.strip_prefix("group ") {
                if !rest.contains("): ") {
                    continue; // some other sentence starting with "group"
                }
                match parse_group_line(rest) {
                    Ok((id, unit, devices)) => r.groups.push(KernelGroup {
                        line: line_no,
                        id,
                        unit,
                        devices,
                        members: Vec::new(),
                    }),
                    Err(e) => r
                        .problems
                        .push(format!("line {line_no}: bad group line ({e}): {trimmed:?}")),
                }
            } else if trimmed.contains(" requester-ids ") {
                let indented = msg.starts_with(char::is_whitespace);
                match parse_member_line(trimmed) {
                    Ok(_) if !indented => r.problems.push(format!(
                        "line {line_no}: member line must be indented: {trimmed:?}"
                    )),
                    Ok((device, requester_ids)) => match r.groups.last_mut() {
                        Some(g) => g.members.push(Member {
                            line: line_no,
                            device,
                            requester_ids,
                        }),
                        None => r.problems.push(format!(
                            "line {line_no}: member line before any group line: {trimmed:?}"
                        )),
                    },
                    Err(e) => r.problems.push(format!(
                        "line {line_no}: bad member line ({e}): {trimmed:?}"
                    )),
                }
            } else if let Some(rest) = trimmed.strip_prefix("no group: ") {
                let word = rest.split_whitespace().next().unwrap_or("");
                match parse_seg_bdf(word) {
                    Ok(bdf) => r.no_group.push((line_no, bdf)),
                    Err(e) => r.problems.push(format!(
                        "line {line_no}: bad `no group` line ({e}): {trimmed:?}"
                    )),
                }
            } else if let Some(n) = parse_formed(trimmed) {
                r.formed = Some(n);
            }
        }
        r
    }

    /// True when the kernel printed nothing about groups at all.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.no_group.is_empty() && self.formed.is_none()
    }

    fn member(&self, bdf: Bdf) -> Option<&Member> {
        self.groups
            .iter()
            .flat_map(|g| &g.members)
            .find(|m| m.device == bdf)
    }
}

/// `3 (dmar0): 0000:00:1f.0 0000:00:1f.2` (after `group `).
fn parse_group_line(rest: &str) -> Result<(u32, String, Vec<Bdf>), String> {
    let (id, rest) = rest
        .split_once(" (")
        .ok_or("expected `group N (unit): ...`")?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("group id must be a decimal number, got {id:?}"));
    }
    let id: u32 = id
        .parse()
        .map_err(|_| format!("group id {id:?} too large"))?;
    let (unit, devs) = rest.split_once("): ").ok_or("expected `(unit): `")?;
    let letters = unit.trim_end_matches(|c: char| c.is_ascii_digit());
    if letters.is_empty()
        || letters.len() == unit.len()
        || !letters.bytes().all(|b| b.is_ascii_lowercase())
    {
        return Err(format!(
            "unit must be lowercase letters and a number (dmar0, ivhd0), got {unit:?}"
        ));
    }
    if devs.is_empty() || devs.starts_with(' ') || devs.ends_with(' ') || devs.contains("  ") {
        return Err("devices must be `ssss:bb:dd.f` separated by single spaces".into());
    }
    let devices = devs
        .split(' ')
        .map(parse_seg_bdf)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((id, unit.to_string(), devices))
}

/// `0000:03:01.0 requester-ids 03:01.0,03:00.0 (...)` (trimmed).
fn parse_member_line(s: &str) -> Result<(Bdf, Vec<Bdf>), String> {
    let mut words = s.split_whitespace();
    let dev = parse_seg_bdf(words.next().unwrap_or(""))?;
    if words.next() != Some("requester-ids") {
        return Err("expected `ssss:bb:dd.f requester-ids ...`".into());
    }
    let rids = words.next().ok_or("no requester ids")?;
    let rids = rids
        .split(',')
        .map(parse_bdf)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((dev, rids))
}

/// `formed N IOMMU groups` (or `group` for N = 1).
fn parse_formed(s: &str) -> Option<usize> {
    let rest = s.strip_prefix("formed ")?;
    let (n, rest) = rest.split_once(' ')?;
    rest.starts_with("IOMMU group").then(|| n.parse().ok())?
}

fn lower_hex(s: &str, len: usize) -> Option<u8> {
    (s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| u8::from_str_radix(s, 16).ok())?
}

/// `bb:dd.f`, lowercase hex, device <= 0x1f, function 0..7.
pub fn parse_bdf(s: &str) -> Result<Bdf, String> {
    let err = || format!("expected `bb:dd.f` (lowercase hex), got {s:?}");
    let (bus, rest) = s.split_once(':').ok_or_else(err)?;
    let (dev, func) = rest.split_once('.').ok_or_else(err)?;
    let bus = lower_hex(bus, 2).ok_or_else(err)?;
    let dev = lower_hex(dev, 2).ok_or_else(err)?;
    if dev > 0x1f {
        return Err(format!("device number 0x{dev:x} > 0x1f in {s:?}"));
    }
    let func = match func.as_bytes() {
        [f @ b'0'..=b'7'] => f - b'0',
        _ => return Err(err()),
    };
    Ok(Bdf { bus, dev, func })
}

/// `ssss:bb:dd.f` with segment 0000 (QEMU has segment 0 only).
fn parse_seg_bdf(s: &str) -> Result<Bdf, String> {
    let (seg, rest) = s
        .split_once(':')
        .filter(|(seg, _)| seg.len() == 4)
        .ok_or_else(|| format!("expected `ssss:bb:dd.f`, got {s:?}"))?;
    if seg != "0000" {
        return Err(format!("segment must be 0000, got {s:?}"));
    }
    parse_bdf(rest)
}

/// One requester id a device is expected to use, relative to named devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rid {
    /// The device's own bus:dev.fn.
    Own,
    /// The own id of device X (a conventional PCI bridge X forwards DMA under its
    /// own id).
    Of(&'static str),
    /// (secondary bus of X, device 00.0): the id a PCIe-to-PCI bridge X uses for
    /// DMA it forwards.
    SecondaryOf(&'static str),
}

impl fmt::Display for Rid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rid::Own => f.write_str("own id"),
            Rid::Of(x) => write!(f, "{x}'s id"),
            Rid::SecondaryOf(x) => write!(f, "{x}'s secondary bus, 00.0"),
        }
    }
}

/// The token naming the IOMMU's own PCI function (amd-iommu).
pub const IOMMU_TOKEN: &str = "iommu";
/// PCI class 08 06: IOMMU.
const CLASS_IOMMU: u16 = 0x0806;

/// Resolves device tokens with QEMU's view.
pub struct Names<'a> {
    nodes: &'a [PciNode],
}

impl<'a> Names<'a> {
    pub fn new(nodes: &'a [PciNode]) -> Names<'a> {
        Names { nodes }
    }

    fn node(&self, bdf: Bdf) -> Option<&PciNode> {
        self.nodes.iter().find(|n| n.bdf == bdf)
    }

    /// A qdev id or `bb:dd.f` to the function's address. `iommu` falls back to the
    /// one function of class 0806 (IOMMU): amd-iommu is a sysbus device that creates
    /// its PCI function itself, so `query-pci` shows that function without the
    /// `id=iommu` of the `-device` (QEMU 7.2 and 10.0 alike).
    pub fn resolve(&self, token: &str) -> Result<Bdf, String> {
        if token.contains(':') {
            let bdf = parse_bdf(token)?;
            return match self.node(bdf) {
                Some(_) => Ok(bdf),
                None => Err(format!("QEMU has no PCI function at {token}")),
            };
        }
        let hits: Vec<&PciNode> = self
            .nodes
            .iter()
            .filter(|n| n.qdev_id.as_deref() == Some(token))
            .collect();
        let hits = if hits.is_empty() && token == IOMMU_TOKEN {
            self.nodes
                .iter()
                .filter(|n| n.class == CLASS_IOMMU)
                .collect()
        } else {
            hits
        };
        match hits.as_slice() {
            [one] => Ok(one.bdf),
            [] => {
                let known: Vec<&str> = self
                    .nodes
                    .iter()
                    .filter_map(|n| n.qdev_id.as_deref())
                    .collect();
                Err(format!(
                    "QEMU has no PCI device with id {token:?} (ids: {})",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ))
            }
            _ => Err(format!(
                "id {token:?} names {} functions in QEMU",
                hits.len()
            )),
        }
    }

    fn name(&self, bdf: Bdf) -> Option<&str> {
        let node = self.node(bdf)?;
        match node.qdev_id.as_deref() {
            Some(id) => Some(id),
            None if node.class == CLASS_IOMMU => Some(IOMMU_TOKEN),
            None => None,
        }
    }

    /// `e1 (01:00.0)` for a named device, `00:1f.2` otherwise.
    pub fn label(&self, bdf: Bdf) -> String {
        match self.name(bdf) {
            Some(id) => format!("{id} ({bdf})"),
            None => bdf.to_string(),
        }
    }

    /// `e1` for a named device, `00:1f.2` otherwise (for compact sets).
    fn short(&self, bdf: Bdf) -> String {
        match self.name(bdf) {
            Some(id) => id.to_string(),
            None => bdf.to_string(),
        }
    }

    fn set(&self, s: &BTreeSet<Bdf>) -> String {
        let v: Vec<String> = s.iter().map(|b| self.short(*b)).collect();
        format!("{{{}}}", v.join(", "))
    }

    fn rid(&self, own: Bdf, r: Rid) -> Result<Bdf, String> {
        match r {
            Rid::Own => Ok(own),
            Rid::Of(x) => self.resolve(x),
            Rid::SecondaryOf(x) => {
                let b = self.resolve(x)?;
                let sec = self
                    .node(b)
                    .and_then(|n| n.secondary)
                    .ok_or_else(|| format!("{x} ({b}) is not a bridge in QEMU's view"))?;
                Ok(Bdf {
                    bus: sec,
                    dev: 0,
                    func: 0,
                })
            }
        }
    }
}

fn unit_prefix(iommu: Iommu) -> Option<&'static str> {
    match iommu {
        Iommu::Vtd => Some("dmar"),
        Iommu::AmdVi => Some("ivhd"),
        Iommu::None => None,
    }
}

/// `Check::Groups`: the kernel's groups must be exactly `expected` (a partition of
/// device tokens). Returns failure lines; empty means pass.
pub fn check_groups(
    expected: &[&[&str]],
    report: &GroupReport,
    nodes: &[PciNode],
    iommu: Iommu,
) -> Vec<String> {
    let names = Names::new(nodes);
    let mut fails = Vec::new();

    // The expectation, in QEMU's addresses.
    let mut want: Vec<BTreeSet<Bdf>> = Vec::new();
    for set in expected {
        let mut s = BTreeSet::new();
        for token in *set {
            match names.resolve(token) {
                Ok(b) => {
                    if !s.insert(b) || want.iter().any(|w| w.contains(&b)) {
                        fails.push(format!(
                            "scenario bug: {token} is named twice in the expected groups"
                        ));
                    }
                }
                Err(e) => fails.push(format!("expected group member {token}: {e}")),
            }
        }
        want.push(s);
    }
    if !fails.is_empty() {
        return fails;
    }
    let want_text = || {
        want.iter()
            .map(|s| names.set(s))
            .collect::<Vec<_>>()
            .join(" ")
    };

    if report.is_empty() {
        fails.push(format!(
            "the kernel printed no IOMMU groups (no `group N (unit): ...`, `no group: ...` or `formed N IOMMU groups` line); expected {} groups: {}",
            want.len(),
            want_text()
        ));
        fails.extend(report.problems.iter().map(|p| format!("  {p}")));
        return fails;
    }
    for p in &report.problems {
        fails.push(format!("IOMMU group report format: {p}"));
    }

    // Count line and ids.
    let n = report.groups.len();
    match report.formed {
        None => fails.push("no `formed N IOMMU groups` line".into()),
        Some(f) if f != n => fails.push(format!(
            "the kernel says `formed {f} IOMMU groups` but printed {n} group lines"
        )),
        Some(_) => {}
    }
    let mut ids: Vec<u32> = report.groups.iter().map(|g| g.id).collect();
    ids.sort_unstable();
    let expected_ids: Vec<u32> = (0..n as u32).collect();
    if ids != expected_ids {
        fails.push(format!(
            "group ids must be 0..{} (each once), got {}",
            n.saturating_sub(1),
            ids.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(prefix) = unit_prefix(iommu) {
        for g in &report.groups {
            if !g.unit.starts_with(prefix) {
                fails.push(format!(
                    "group {} (line {}): unit {} is not a {prefix}N unit",
                    g.id, g.line, g.unit
                ));
            }
        }
    }

    // Where the kernel put each function.
    let mut kernel_of: BTreeMap<Bdf, &KernelGroup> = BTreeMap::new();
    for g in &report.groups {
        let mut seen = BTreeSet::new();
        for d in &g.devices {
            if !seen.insert(*d) {
                fails.push(format!("group {} lists {} twice", g.id, names.label(*d)));
            } else if let Some(other) = kernel_of.insert(*d, g) {
                fails.push(format!(
                    "{} is in group {} (line {}) and in group {} (line {})",
                    names.label(*d),
                    other.id,
                    other.line,
                    g.id,
                    g.line
                ));
            }
        }
        // Member lines: one per device, own requester id first.
        for d in &g.devices {
            let lines: Vec<&Member> = g.members.iter().filter(|m| m.device == *d).collect();
            match lines.as_slice() {
                [] => fails.push(format!(
                    "group {}: no member line `    0000:{d} requester-ids ...` for {}",
                    g.id,
                    names.label(*d)
                )),
                [m] if m.requester_ids.first() != Some(d) => fails.push(format!(
                    "line {}: the requester ids of {} must start with its own id {d}, got {}",
                    m.line,
                    names.label(*d),
                    join_bdfs(&m.requester_ids)
                )),
                [_] => {}
                _ => fails.push(format!(
                    "group {}: {} member lines for {}",
                    g.id,
                    lines.len(),
                    names.label(*d)
                )),
            }
        }
        for m in &g.members {
            if !g.devices.contains(&m.device) {
                fails.push(format!(
                    "line {}: member line for {}, which group {} does not list",
                    m.line,
                    names.label(m.device),
                    g.id
                ));
            }
        }
    }
    let no_group: BTreeMap<Bdf, usize> = report.no_group.iter().map(|(l, b)| (*b, *l)).collect();
    for (bdf, line) in &no_group {
        if let Some(g) = kernel_of.get(bdf) {
            fails.push(format!(
                "line {line}: {} is reported as `no group` but is in group {}",
                names.label(*bdf),
                g.id
            ));
        }
    }

    // The partition itself.
    let kernel_set = |g: &KernelGroup| g.devices.iter().copied().collect::<BTreeSet<Bdf>>();
    let where_kernel = |b: Bdf| match (kernel_of.get(&b), no_group.get(&b)) {
        (Some(g), _) => format!(
            "{} in group {} {}",
            names.short(b),
            g.id,
            names.set(&kernel_set(g))
        ),
        (None, Some(line)) => format!("{} in no group (`no group` on line {line})", names.short(b)),
        (None, None) => format!("{} not reported at all", names.short(b)),
    };
    let mut diffs = Vec::new();
    for w in &want {
        if report.groups.iter().any(|g| kernel_set(g) == *w) {
            continue;
        }
        let parts: Vec<String> = w.iter().map(|b| where_kernel(*b)).collect();
        diffs.push(format!(
            "expected group {} not formed; kernel: {}",
            names.set(w),
            parts.join("; ")
        ));
    }
    for g in &report.groups {
        let k = kernel_set(g);
        if want.contains(&k) {
            continue;
        }
        let parts: Vec<String> = k
            .iter()
            .map(|b| match want.iter().find(|w| w.contains(b)) {
                Some(w) if w.len() == 1 => format!("{} alone", names.short(*b)),
                Some(w) => format!("{} in {}", names.short(*b), names.set(w)),
                None => format!("{} in no expected group", names.label(*b)),
            })
            .collect();
        diffs.push(format!(
            "kernel group {} ({}) {} is not expected; expected: {}",
            g.id,
            g.unit,
            names.set(&k),
            parts.join("; ")
        ));
    }
    // Functions QEMU has that neither the expectation nor the kernel accounts for.
    for node in nodes {
        let b = node.bdf;
        if !want.iter().any(|w| w.contains(&b))
            && !kernel_of.contains_key(&b)
            && !no_group.contains_key(&b)
        {
            diffs.push(format!(
                "{}: QEMU has it, the kernel printed neither a group nor `no group` for it",
                names.label(b)
            ));
        }
    }
    if !diffs.is_empty() {
        fails.push(format!(
            "IOMMU groups differ: kernel {} groups, expected {}: {}",
            n,
            want.len(),
            want_text()
        ));
        fails.extend(diffs.into_iter().map(|d| format!("  {d}")));
    }
    fails
}

/// All but the first (the own id).
fn rest(v: &[Bdf]) -> &[Bdf] {
    v.get(1..).unwrap_or(&[])
}

fn join_bdfs(v: &[Bdf]) -> String {
    v.iter().map(Bdf::to_string).collect::<Vec<_>>().join(",")
}

/// `Check::RequesterIds`: each named device's member line lists exactly these
/// requester ids (the own id first, the rest in any order).
pub fn check_requester_ids(
    expected: &[(&str, &[Rid])],
    report: &GroupReport,
    nodes: &[PciNode],
) -> Vec<String> {
    let names = Names::new(nodes);
    let mut fails = Vec::new();
    for (token, rids) in expected {
        let dev = match names.resolve(token) {
            Ok(b) => b,
            Err(e) => {
                fails.push(format!("requester ids of {token}: {e}"));
                continue;
            }
        };
        let want: Result<Vec<Bdf>, String> = rids.iter().map(|r| names.rid(dev, *r)).collect();
        let want = match want {
            Ok(w) => w,
            Err(e) => {
                fails.push(format!("requester ids of {token}: {e}"));
                continue;
            }
        };
        let want_text = want
            .iter()
            .zip(rids.iter())
            .map(|(b, r)| format!("{b} ({r})"))
            .collect::<Vec<_>>()
            .join(",");
        let Some(m) = report.member(dev) else {
            fails.push(format!(
                "no member line `    0000:{dev} requester-ids ...` for {}; expected requester ids {want_text}",
                names.label(dev)
            ));
            continue;
        };
        let got = &m.requester_ids;
        let same = got.len() == want.len()
            && got.first() == want.first()
            && rest(got).iter().collect::<BTreeSet<_>>()
                == rest(&want).iter().collect::<BTreeSet<_>>();
        if !same {
            fails.push(format!(
                "line {}: requester ids of {}: kernel {}, expected {want_text}",
                m.line,
                names.label(dev),
                join_bdfs(got)
            ));
        }
    }
    fails
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::oracle::parse_query_pci_nodes;

    /// `query-pci` reply of the `pcibridge` topology with amd-iommu (QEMU 7.2.22),
    /// as the harness saved it (`target/scenarios/groups-pcibridge-amdvi.query-pci.json`).
    pub const PCIBRIDGE_AMD_JSON: &str =
        include_str!("../testdata/pcibridge-amdvi-qemu72.query-pci.json");

    fn nodes() -> Vec<PciNode> {
        parse_query_pci_nodes(&serde_json::from_str(PCIBRIDGE_AMD_JSON).unwrap()).unwrap()
    }

    const HOST: &[&str] = &["00:00.0"];
    const ICH9: &[&str] = &["00:1f.0", "00:1f.2", "00:1f.3"];
    /// The `groups-pcibridge-amdvi` expectation: amd-iommu's own function (00:01.0) is in
    /// no group (the kernel reports it as `no group`).
    const EXPECTED: &[&[&str]] = &[
        HOST,
        &["rp1"],
        &["pb1", "e1", "e2"],
        &["cb1", "e3", "e4"],
        ICH9,
    ];
    const EXPECTED_TEXT: &str =
        "{00:00.0} {rp1} {pb1, e1, e2} {cb1, e3, e4} {00:1f.0, 00:1f.2, 00:1f.3}";

    /// What a correct kernel prints for `pcibridge` on amd-iommu.
    pub const GOOD_LOG: &str = "\
[INFO  pci] enumerated 12 functions
[INFO  iommu] ivhd0: IOMMU 00:01.0 at 0xfed80000, translating segment 0
[INFO  iommu] group 0 (ivhd0): 0000:00:00.0
[INFO  iommu]     0000:00:00.0 requester-ids 00:00.0 (isolated)
[INFO  iommu] group 1 (ivhd0): 0000:00:02.0
[INFO  iommu]     0000:00:02.0 requester-ids 00:02.0 (isolated)
[INFO  iommu] group 2 (ivhd0): 0000:00:03.0 0000:03:01.0 0000:03:02.0
[INFO  iommu]     0000:00:03.0 requester-ids 00:03.0 (isolated)
[INFO  iommu]     0000:03:01.0 requester-ids 03:01.0,00:03.0 (DMA alias of 0000:00:03.0 (PCI bridge))
[INFO  iommu]     0000:03:02.0 requester-ids 03:02.0,00:03.0 (DMA alias of 0000:00:03.0 (PCI bridge))
[INFO  iommu] group 3 (ivhd0): 0000:00:1f.0 0000:00:1f.2 0000:00:1f.3
[INFO  iommu]     0000:00:1f.0 requester-ids 00:1f.0 (isolated)
[INFO  iommu]     0000:00:1f.2 requester-ids 00:1f.2 (multifunction slot without ACS, with 0000:00:1f.0)
[INFO  iommu]     0000:00:1f.3 requester-ids 00:1f.3 (multifunction slot without ACS, with 0000:00:1f.0)
[INFO  iommu] group 4 (ivhd0): 0000:01:00.0 0000:02:01.0 0000:02:02.0
[INFO  iommu]     0000:01:00.0 requester-ids 01:00.0 (isolated)
[INFO  iommu]     0000:02:01.0 requester-ids 02:01.0,02:00.0 (DMA alias of 0000:01:00.0 (PCIe-to-PCI bridge))
[INFO  iommu]     0000:02:02.0 requester-ids 02:02.0,02:00.0 (DMA alias of 0000:01:00.0 (PCIe-to-PCI bridge))
[INFO  iommu] no group: 0000:00:01.0 (the IOMMU itself: never translated, never assignable)
[INFO  iommu] formed 5 IOMMU groups
[INFO  main] holding: waiting for one byte on COM1
";

    const RIDS: &[(&str, &[Rid])] = &[
        ("e1", &[Rid::Own, Rid::SecondaryOf("pb1")]),
        ("e2", &[Rid::Own, Rid::SecondaryOf("pb1")]),
        ("e3", &[Rid::Own, Rid::Of("cb1")]),
        ("e4", &[Rid::Own, Rid::Of("cb1")]),
        ("rp1", &[Rid::Own]),
    ];

    fn lines(s: &str) -> Vec<&str> {
        s.lines().collect()
    }

    /// `s` with each `(from, to)` applied in turn; panics unless `from` occurs exactly
    /// once at that point, so a corruption can never silently do nothing.
    pub(crate) fn edits(s: &str, pairs: &[(&str, &str)]) -> String {
        let mut s = s.to_string();
        for (from, to) in pairs {
            assert_eq!(
                s.matches(from).count(),
                1,
                "{from:?} must occur exactly once in\n{s}"
            );
            s = s.replacen(from, to, 1);
        }
        s
    }

    fn bdf(s: &str) -> Bdf {
        parse_bdf(s).unwrap()
    }

    #[test]
    fn parses_the_report() {
        let r = GroupReport::parse(&lines(GOOD_LOG));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.groups.len(), 5);
        assert_eq!(r.formed, Some(5));
        let ids: Vec<u32> = r.groups.iter().map(|g| g.id).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4]);
        let g = &r.groups[4];
        assert_eq!((g.line, g.id, g.unit.as_str()), (15, 4, "ivhd0"));
        assert_eq!(g.devices, [bdf("01:00.0"), bdf("02:01.0"), bdf("02:02.0")]);
        assert_eq!(g.members.len(), 3);
        assert_eq!(g.members[1].line, 17);
        assert_eq!(g.members[1].device, bdf("02:01.0"));
        assert_eq!(g.members[1].requester_ids, [bdf("02:01.0"), bdf("02:00.0")]);
        // The IOMMU's own function: in no group, and in no group's device list.
        assert_eq!(r.no_group, [(19, bdf("00:01.0"))]);
        assert!(!r.groups.iter().any(|g| g.devices.contains(&bdf("00:01.0"))));
        let r = GroupReport::parse(&lines(
            "[INFO  iommu] no group: 0000:00:00.0 (not translated by any IOMMU unit)\r\n\
             [INFO  iommu] formed 1 IOMMU group\n\
             [INFO  iommu] group 0 (dmar0): 0000:00:01.0\r\n\
             [INFO  iommu]     0000:00:01.0 requester-ids 00:01.0\r\n",
        ));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.no_group, [(1, bdf("00:00.0"))]);
        assert_eq!(r.formed, Some(1));
        assert_eq!(r.groups[0].members[0].requester_ids, [bdf("00:01.0")]);
    }

    #[test]
    fn reports_malformed_report_lines() {
        let text = "\
[INFO  iommu]     0000:00:01.0 requester-ids 00:01.0
[INFO  iommu] group x (dmar0): 0000:00:01.0
[INFO  iommu] group 1 (DMAR0): 0000:00:01.0
[INFO  iommu] group 2 (dmar0): 0000:00:01.0  0000:00:02.0
[INFO  iommu] group 3 (dmar0): 0000:00:1F.0
[INFO  iommu] group 4 (dmar0): 0001:00:01.0
[INFO  iommu] group 5 (dmar0): 0000:00:20.0
[INFO  iommu] group 6 (dmar0): 0000:00:01.0
[INFO  iommu]     0000:00:01.0 requester-ids 0:1.0
[INFO  iommu] 0000:00:01.0 requester-ids 00:01.0
[INFO  iommu] no group: 00:00.0 (not translated)
[INFO  iommu] group policy: ACS required
[INFO  iommu] formed many IOMMU groups
";
        let r = GroupReport::parse(&lines(text));
        let p = r.problems.join("\n");
        for needle in [
            "line 1: member line before any group line",
            "line 2: bad group line (group id must be a decimal number",
            "line 3: bad group line (unit must be lowercase letters",
            "line 4: bad group line (devices must be `ssss:bb:dd.f` separated by single spaces",
            "line 5: bad group line (expected `bb:dd.f` (lowercase hex), got \"00:1F.0\"",
            "line 6: bad group line (segment must be 0000",
            "line 7: bad group line (device number 0x20 > 0x1f",
            "line 9: bad member line (expected `bb:dd.f`",
            "line 10: member line must be indented",
            "line 11: bad `no group` line (expected `ssss:bb:dd.f`",
        ] {
            assert!(p.contains(needle), "missing {needle:?} in\n{p}");
        }
        assert_eq!(r.problems.len(), 10, "{p}");
        assert_eq!(r.groups.len(), 1);
        assert_eq!(r.formed, None);
    }

    #[test]
    fn query_pci_names_resolve() {
        let nodes = nodes();
        let n = Names::new(&nodes);
        assert_eq!(n.resolve("iommu"), Ok(bdf("00:01.0")));
        assert_eq!(n.resolve("rp1"), Ok(bdf("00:02.0")));
        assert_eq!(n.resolve("cb1"), Ok(bdf("00:03.0")));
        assert_eq!(n.resolve("pb1"), Ok(bdf("01:00.0")));
        assert_eq!(n.resolve("e2"), Ok(bdf("02:02.0")));
        assert_eq!(n.resolve("e4"), Ok(bdf("03:02.0")));
        assert_eq!(n.resolve("00:1f.3"), Ok(bdf("00:1f.3")));
        assert_eq!(
            n.rid(bdf("02:01.0"), Rid::SecondaryOf("pb1")),
            Ok(bdf("02:00.0"))
        );
        assert_eq!(n.rid(bdf("03:01.0"), Rid::Of("cb1")), Ok(bdf("00:03.0")));
        assert!(
            n.rid(bdf("00:01.0"), Rid::SecondaryOf("e1"))
                .unwrap_err()
                .contains("not a bridge")
        );
        let e = n.resolve("e9").unwrap_err();
        assert!(
            e.contains("no PCI device with id \"e9\" (ids: rp1, cb1, pb1, e1, e2, e3, e4)"),
            "{e}"
        );
        assert!(
            n.resolve("00:05.0")
                .unwrap_err()
                .contains("no PCI function at 00:05.0")
        );
        assert_eq!(n.label(bdf("02:01.0")), "e1 (02:01.0)");
        assert_eq!(n.label(bdf("00:1f.2")), "00:1f.2");
    }

    #[test]
    fn correct_report_passes() {
        let r = GroupReport::parse(&lines(GOOD_LOG));
        assert_eq!(
            check_groups(EXPECTED, &r, &nodes(), Iommu::AmdVi),
            Vec::<String>::new()
        );
        assert_eq!(
            check_requester_ids(RIDS, &r, &nodes()),
            Vec::<String>::new()
        );
        // Group order in the log (GOOD_LOG's differs from EXPECTED's) and the order
        // inside a group do not matter.
        let shuffled = edits(
            GOOD_LOG,
            &[(
                "group 4 (ivhd0): 0000:01:00.0 0000:02:01.0 0000:02:02.0",
                "group 4 (ivhd0): 0000:02:02.0 0000:01:00.0 0000:02:01.0",
            )],
        );
        let r = GroupReport::parse(&lines(&shuffled));
        assert_eq!(
            check_groups(EXPECTED, &r, &nodes(), Iommu::AmdVi),
            Vec::<String>::new()
        );
    }

    #[test]
    fn silent_kernel_gets_the_expectation_shown() {
        let r = GroupReport::parse(&lines("[INFO  pci] enumerated 12 functions\n"));
        let f = check_groups(EXPECTED, &r, &nodes(), Iommu::AmdVi);
        assert_eq!(
            f,
            [
                "the kernel printed no IOMMU groups (no `group N (unit): ...`, `no group: ...` or `formed N IOMMU groups` line); \
              expected 5 groups: {00:00.0} {rp1} {pb1, e1, e2} {cb1, e3, e4} {00:1f.0, 00:1f.2, 00:1f.3}"
            ]
        );
        let f = check_requester_ids(RIDS, &r, &nodes());
        assert_eq!(
            f[0],
            "no member line `    0000:02:01.0 requester-ids ...` for e1 (02:01.0); expected requester ids 02:01.0 (own id),02:00.0 (pb1's secondary bus, 00.0)"
        );
    }

    /// The kernel puts e3/e4 in their own groups (ignoring the conventional bridge
    /// alias) and e2 with rp1: every misplaced device is named with both groups.
    #[test]
    fn deliberate_mismatch_is_reported_precisely() {
        let bad = edits(
            GOOD_LOG,
            &[
                (
                    "group 1 (ivhd0): 0000:00:02.0\n\
                     [INFO  iommu]     0000:00:02.0 requester-ids 00:02.0 (isolated)\n",
                    "group 1 (ivhd0): 0000:00:02.0 0000:02:02.0\n\
                     [INFO  iommu]     0000:00:02.0 requester-ids 00:02.0 (isolated)\n\
                     [INFO  iommu]     0000:02:02.0 requester-ids 02:02.0 (isolated)\n",
                ),
                (
                    "group 4 (ivhd0): 0000:01:00.0 0000:02:01.0 0000:02:02.0",
                    "group 4 (ivhd0): 0000:01:00.0 0000:02:01.0",
                ),
                (
                    "[INFO  iommu]     0000:02:02.0 requester-ids 02:02.0,02:00.0 (DMA alias of 0000:01:00.0 (PCIe-to-PCI bridge))\n",
                    "",
                ),
                (
                    "group 2 (ivhd0): 0000:00:03.0 0000:03:01.0 0000:03:02.0\n\
                     [INFO  iommu]     0000:00:03.0 requester-ids 00:03.0 (isolated)\n\
                     [INFO  iommu]     0000:03:01.0 requester-ids 03:01.0,00:03.0 (DMA alias of 0000:00:03.0 (PCI bridge))\n\
                     [INFO  iommu]     0000:03:02.0 requester-ids 03:02.0,00:03.0 (DMA alias of 0000:00:03.0 (PCI bridge))\n",
                    "group 2 (ivhd0): 0000:00:03.0\n\
                     [INFO  iommu]     0000:00:03.0 requester-ids 00:03.0 (isolated)\n\
                     [INFO  iommu] group 5 (ivhd0): 0000:03:01.0\n\
                     [INFO  iommu]     0000:03:01.0 requester-ids 03:01.0 (isolated)\n\
                     [INFO  iommu] group 6 (ivhd0): 0000:03:02.0\n\
                     [INFO  iommu]     0000:03:02.0 requester-ids 03:02.0 (isolated)\n",
                ),
            ],
        );
        let r = GroupReport::parse(&lines(&bad));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let f = check_groups(EXPECTED, &r, &nodes(), Iommu::AmdVi);
        let partition = [
            format!("IOMMU groups differ: kernel 7 groups, expected 5: {EXPECTED_TEXT}"),
            "  expected group {rp1} not formed; kernel: rp1 in group 1 {rp1, e2}".into(),
            "  expected group {pb1, e1, e2} not formed; kernel: pb1 in group 4 {pb1, e1}; e1 in group 4 {pb1, e1}; e2 in group 1 {rp1, e2}".into(),
            "  expected group {cb1, e3, e4} not formed; kernel: cb1 in group 2 {cb1}; e3 in group 5 {e3}; e4 in group 6 {e4}".into(),
            "  kernel group 1 (ivhd0) {rp1, e2} is not expected; expected: rp1 alone; e2 in {pb1, e1, e2}".into(),
            "  kernel group 2 (ivhd0) {cb1} is not expected; expected: cb1 in {cb1, e3, e4}".into(),
            "  kernel group 5 (ivhd0) {e3} is not expected; expected: e3 in {cb1, e3, e4}".into(),
            "  kernel group 6 (ivhd0) {e4} is not expected; expected: e4 in {cb1, e3, e4}".into(),
            "  kernel group 4 (ivhd0) {pb1, e1} is not expected; expected: pb1 in {pb1, e1, e2}; e1 in {pb1, e1, e2}".into(),
        ];
        let mut want =
            vec!["the kernel says `formed 5 IOMMU groups` but printed 7 group lines".to_string()];
        want.extend(partition.iter().cloned());
        assert_eq!(f, want);
        // With the count fixed only the partition differs (ids 0..6 are all there).
        let r = GroupReport::parse(&lines(&edits(&bad, &[("formed 5", "formed 7")])));
        let f = check_groups(EXPECTED, &r, &nodes(), Iommu::AmdVi);
        assert_eq!(f, partition);
        let f = check_requester_ids(RIDS, &r, &nodes());
        assert_eq!(
            f,
            [
                "line 7: requester ids of e2 (02:02.0): kernel 02:02.0, expected 02:02.0 (own id),02:00.0 (pb1's secondary bus, 00.0)",
                "line 11: requester ids of e3 (03:01.0): kernel 03:01.0, expected 03:01.0 (own id),00:03.0 (cb1's id)",
                "line 13: requester ids of e4 (03:02.0): kernel 03:02.0, expected 03:02.0 (own id),00:03.0 (cb1's id)",
            ]
        );
    }

    #[test]
    fn bookkeeping_errors() {
        // id 4 twice (3 missing), wrong unit, a device in two groups, a member line
        // missing, a foreign member line, own id not first, a `no group` line for a
        // grouped device.
        let bad = edits(
            GOOD_LOG,
            &[
                ("group 3 (ivhd0)", "group 4 (dmar0)"),
                (
                    "group 0 (ivhd0): 0000:00:00.0\n",
                    "group 0 (ivhd0): 0000:00:00.0 0000:00:1f.3\n",
                ),
                (
                    "[INFO  iommu]     0000:00:1f.2 requester-ids 00:1f.2 (multifunction slot without ACS, with 0000:00:1f.0)\n",
                    "",
                ),
                (
                    "[INFO  iommu]     0000:00:00.0 requester-ids 00:00.0 (isolated)\n",
                    "[INFO  iommu]     0000:00:00.0 requester-ids 00:00.0 (isolated)\n\
                     [INFO  iommu]     0000:00:02.0 requester-ids 00:02.0\n",
                ),
                (
                    "0000:03:01.0 requester-ids 03:01.0,00:03.0",
                    "0000:03:01.0 requester-ids 00:03.0,03:01.0",
                ),
                (
                    "[INFO  iommu] formed 5",
                    "[INFO  iommu] no group: 0000:00:02.0 (bogus)\n[INFO  iommu] formed 5",
                ),
            ],
        );
        let r = GroupReport::parse(&lines(&bad));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let f = check_groups(EXPECTED, &r, &nodes(), Iommu::AmdVi);
        assert_eq!(
            f,
            [
                "group ids must be 0..4 (each once), got 0, 1, 2, 4, 4".to_string(),
                "group 4 (line 12): unit dmar0 is not a ivhdN unit".into(),
                "group 0: no member line `    0000:00:1f.3 requester-ids ...` for 00:1f.3".into(),
                "line 5: member line for rp1 (00:02.0), which group 0 does not list".into(),
                "line 10: the requester ids of e3 (03:01.0) must start with its own id 03:01.0, got 00:03.0,03:01.0".into(),
                "00:1f.3 is in group 0 (line 3) and in group 4 (line 12)".into(),
                "group 4: no member line `    0000:00:1f.2 requester-ids ...` for 00:1f.2".into(),
                "line 20: rp1 (00:02.0) is reported as `no group` but is in group 1".into(),
                format!("IOMMU groups differ: kernel 5 groups, expected 5: {EXPECTED_TEXT}"),
                "  expected group {00:00.0} not formed; kernel: 00:00.0 in group 0 {00:00.0, 00:1f.3}".into(),
                "  kernel group 0 (ivhd0) {00:00.0, 00:1f.3} is not expected; expected: 00:00.0 alone; 00:1f.3 in {00:1f.0, 00:1f.2, 00:1f.3}".into(),
            ]
        );
        // A wrong count on its own.
        let r = GroupReport::parse(&lines(&edits(GOOD_LOG, &[("formed 5", "formed 6")])));
        assert_eq!(
            check_groups(EXPECTED, &r, &nodes(), Iommu::AmdVi),
            ["the kernel says `formed 6 IOMMU groups` but printed 5 group lines"]
        );
    }

    #[test]
    fn ungrouped_and_unreported_functions() {
        // The kernel leaves the host bridge untranslated and forgets the IOMMU's own
        // function (neither a group nor its `no group` line).
        let bad = edits(
            GOOD_LOG,
            &[
                (
                    "[INFO  iommu] group 0 (ivhd0): 0000:00:00.0\n[INFO  iommu]     0000:00:00.0 requester-ids 00:00.0 (isolated)\n",
                    "[INFO  iommu] no group: 0000:00:00.0 (not translated by any IOMMU unit)\n",
                ),
                (
                    "[INFO  iommu] no group: 0000:00:01.0 (the IOMMU itself: never translated, never assignable)\n",
                    "",
                ),
            ],
        );
        let r = GroupReport::parse(&lines(&bad));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let f = check_groups(EXPECTED, &r, &nodes(), Iommu::AmdVi);
        assert_eq!(
            f,
            [
                "the kernel says `formed 5 IOMMU groups` but printed 4 group lines".to_string(),
                "group ids must be 0..3 (each once), got 1, 2, 3, 4".into(),
                format!("IOMMU groups differ: kernel 4 groups, expected 5: {EXPECTED_TEXT}"),
                "  expected group {00:00.0} not formed; kernel: 00:00.0 in no group (`no group` on line 3)".into(),
                "  iommu (00:01.0): QEMU has it, the kernel printed neither a group nor `no group` for it".into(),
            ]
        );
        // A function the expectation forgot is still accounted for.
        let partial: &[&[&str]] = &[&["rp1"]];
        let f = check_groups(
            partial,
            &GroupReport::parse(&lines("[INFO  iommu] formed 0 IOMMU groups\n")),
            &nodes(),
            Iommu::AmdVi,
        );
        assert!(f.iter().any(|l| l == "  e1 (02:01.0): QEMU has it, the kernel printed neither a group nor `no group` for it"), "{f:?}");
    }

    #[test]
    fn bad_expectations_are_scenario_bugs() {
        let r = GroupReport::parse(&lines(GOOD_LOG));
        let f = check_groups(&[&["e1", "e9"], &["e1"]], &r, &nodes(), Iommu::AmdVi);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(
            f[0].starts_with("expected group member e9: QEMU has no PCI device with id \"e9\"")
        );
        assert_eq!(
            f[1],
            "scenario bug: e1 is named twice in the expected groups"
        );
    }

    #[test]
    fn never_panics_on_garbage() {
        let pieces = [
            "[INFO  iommu] ",
            "group ",
            "1",
            " (",
            "dmar0",
            "): ",
            "0000:00:01.0",
            " ",
            "    ",
            "requester-ids ",
            "00:01.0",
            ",",
            "no group: ",
            "formed ",
            "IOMMU groups",
            "ü",
            "\u{1F600}",
            "\n",
            "\r",
            ":",
            ".",
        ];
        let nodes = nodes();
        let mut seed: u64 = 0x9e37;
        for _ in 0..2000 {
            let mut text = String::new();
            for _ in 0..30 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                text.push_str(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            let r = GroupReport::parse(&lines(&text));
            let _ = check_groups(EXPECTED, &r, &nodes, Iommu::Vtd);
            let _ = check_requester_ids(RIDS, &r, &nodes);
        }
    }
}
