//! The kernel's DMA self-test (`dmatest` on the command line): parser and judge.
//!
//! On q35 + intel-iommu or amd-iommu + topology `dma` (edus `e1`, `e2`), the kernel
//! runs six experiments and prints one line each (target `dmatest`):
//!
//! ```text
//! [INFO  dmatest] dmatest N NAME: key=value key=value ...
//! [INFO  dmatest] dmatest done: 6 experiments
//! ```
//!
//! Values: numbers `0x` + hex; byte strings lowercase hex, two digits a byte, no
//! separators; fault records `frcd=0x<high qword>:0x<low qword>` (the raw 128-bit
//! VT-d fault recording register, read after the attempt and before clearing it). On
//! amd-iommu the raw fault evidence is `event=0x<hi>:0x<lo>` (the experiment's last
//! new event log entry, see `amdvi_event.rs`) or `event=none` instead of `frcd=`, and
//! the 2 MiB leaf of experiment 5 is an AMD v1 PTE; everything else is the same.
//! Tokens without `=` are ignored; unknown keys too. The keys per experiment and
//! what passes are in [`EXPERIMENTS`] and the `judge_*` functions; `harness/README.md`
//! has the contract.
//!
//! Everything is judged here, independently of the kernel's own verdict: fault records
//! are decoded from the raw value, expected requester ids come from `query-pci` (the
//! edus' qdev ids `e1`/`e2`, never fixed BDFs), and the buffers whose addresses the
//! kernel printed are read back from guest-physical memory with the monitor's `xp`
//! while the kernel holds ([`monitor_commands`] picks them from the serial output).

use std::fmt::Write as _;

use crate::amdvi_event::{self, EventEntry};
use crate::groups::Names;
use crate::machine::Iommu;
use crate::model::Bdf;
use crate::runner::OracleView;
use crate::serial::split_line;

/// Experiment numbers 1..=6 and their names, in order.
pub const EXPERIMENTS: [&str; 6] = [
    "map-dma",
    "unmapped-blocked",
    "unmap-invalidates",
    "readonly-blocks-write",
    "superpage",
    "never-attached",
];

/// The remapping hardware the kernel reports on: it decides the fault evidence key
/// (`frcd=` / `event=`), the leaf format of experiment 5 and the registers read at hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// intel-iommu: `frcd=` fault records, second-level PTEs.
    Vtd,
    /// amd-iommu: `event=` event log entries, v1 PTEs.
    AmdVi,
}

impl Unit {
    /// The unit of a machine (the DMA scenarios always name one; no IOMMU counts as
    /// VT-d, whose judge then reports the missing faults).
    pub fn of(iommu: Iommu) -> Unit {
        match iommu {
            Iommu::AmdVi => Unit::AmdVi,
            Iommu::Vtd | Iommu::None => Unit::Vtd,
        }
    }

    /// The key of the raw fault evidence.
    pub fn fault_key(self) -> &'static str {
        match self {
            Unit::Vtd => "frcd",
            Unit::AmdVi => "event",
        }
    }

    fn other(self) -> Unit {
        match self {
            Unit::Vtd => Unit::AmdVi,
            Unit::AmdVi => Unit::Vtd,
        }
    }

    fn device(self) -> &'static str {
        match self {
            Unit::Vtd => "intel-iommu",
            Unit::AmdVi => "amd-iommu",
        }
    }
}

/// QEMU's edu keeps 28 bits of every RAM-side DMA address (its `dma_mask` default).
pub const EDU_DMA_MASK: u64 = (1 << 28) - 1;
/// intel-iommu's fault status register (the unit sits at 0xfed90000 on q35).
pub const VTD_FSTS: u64 = 0xfed9_0034;
/// The monitor command that reads it.
pub fn fsts_command() -> String {
    format!("xp /1xw 0x{VTD_FSTS:x}")
}

const PAGE: u64 = 0x1000;
const SUPERPAGE: u64 = 0x20_0000;
/// Byte strings longer than this are refused (they would make huge `xp` reads).
const MAX_BYTES: usize = 4096;

/// VT-d fault reasons (legacy/second-level translation; VT-d spec, "Non-recoverable
/// fault reason encodings").
pub fn fault_reason_name(reason: u8) -> &'static str {
    match reason {
        0x00 => "no reason (not a fault)",
        0x01 => "root entry not present",
        0x02 => "context entry not present",
        0x03 => "invalid context entry",
        0x04 => "address beyond the address width",
        0x05 => "write to a page without write permission",
        0x06 => "read from a page without read permission",
        0x07 => "error accessing a paging entry",
        0x08 => "error accessing the root table",
        0x09 => "error accessing the context table",
        0x0a => "reserved bits set in the root entry",
        0x0b => "reserved bits set in the context entry",
        0x0c => "reserved bits set in a paging entry",
        0x0d => "translation blocked by the context entry's type",
        _ => "unknown reason",
    }
}

const ROOT_ENTRY_NOT_PRESENT: u8 = 0x01;
const CONTEXT_ENTRY_NOT_PRESENT: u8 = 0x02;
const INVALID_CONTEXT_ENTRY: u8 = 0x03;
const WRITE_NOT_PERMITTED: u8 = 0x05;

/// A raw VT-d fault recording register (FRCD), 128 bits as two qwords.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    pub hi: u64,
    pub lo: u64,
}

impl FaultRecord {
    /// F, bit 127: the record holds a fault.
    pub fn fault(self) -> bool {
        self.hi >> 63 & 1 == 1
    }
    /// T, bit 126: 1 = read request, 0 = write request.
    pub fn is_read(self) -> bool {
        self.hi >> 62 & 1 == 1
    }
    /// FR, bits 103:96.
    pub fn reason(self) -> u8 {
        (self.hi >> 32) as u8
    }
    /// SID, bits 79:64: the requester id.
    pub fn source_id(self) -> u16 {
        self.hi as u16
    }
    /// FI, bits 63:12: the faulting page.
    pub fn page(self) -> u64 {
        self.lo & !(PAGE - 1)
    }
}

impl std::fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0x{:016x}:0x{:016x}", self.hi, self.lo)
    }
}

/// One `dmatest N NAME: ...` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Experiment {
    /// 1-based line number in the serial log.
    pub line: usize,
    pub number: u32,
    pub name: String,
    pub fields: Vec<(String, String)>,
}

impl Experiment {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Everything the kernel printed about the DMA self-test.
#[derive(Clone, Debug, Default)]
pub struct DmaReport {
    pub experiments: Vec<Experiment>,
    /// `(line, N)` of `dmatest done: N experiments`.
    pub done: Option<(usize, u32)>,
    /// ERROR lines of target `dmatest` (the kernel could not run the experiments).
    pub errors: Vec<(usize, String)>,
    /// QEMU's edu complaining on stdout (which is the serial log): `EDU: clamping DMA`.
    pub edu_messages: Vec<(usize, String)>,
    /// Malformed `dmatest` lines.
    pub problems: Vec<String>,
}

impl DmaReport {
    pub fn parse<S: AsRef<str>>(lines: &[S]) -> DmaReport {
        let mut r = DmaReport::default();
        for (i, raw) in lines.iter().enumerate() {
            let n = i + 1;
            let raw = raw.as_ref().trim_end_matches('\r');
            if raw.contains("EDU: ") {
                r.edu_messages.push((n, raw.trim().to_string()));
                continue;
            }
            let parts = split_line(raw);
            let msg = parts.message.trim();
            let ours = parts.target == Some("dmatest") || msg.starts_with("dmatest ");
            if !ours {
                continue;
            }
            if parts.level == Some("ERROR") {
                r.errors.push((n, raw.trim().to_string()));
                continue;
            }
            let Some(rest) = msg.strip_prefix("dmatest ") else {
                continue; // free text of target dmatest
            };
            if let Some(done) = rest.strip_prefix("done:") {
                match done.split_whitespace().next().map(str::parse::<u32>) {
                    Some(Ok(count)) => r.done = Some((n, count)),
                    _ => r.problems.push(format!(
                        "line {n}: malformed `dmatest done: N experiments` line: {msg:?}"
                    )),
                }
                continue;
            }
            match parse_experiment(n, rest) {
                Ok(Some(e)) => r.experiments.push(e),
                Ok(None) => {}
                Err(e) => r.problems.push(format!("line {n}: {e}: {msg:?}")),
            }
        }
        r
    }

    pub fn is_empty(&self) -> bool {
        self.experiments.is_empty() && self.done.is_none()
    }
}

/// `N NAME: k=v ...`; `Ok(None)` for text that does not start with a number.
fn parse_experiment(line: usize, rest: &str) -> Result<Option<Experiment>, String> {
    let (num, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    let Ok(number) = num.parse::<u32>() else {
        return Ok(None);
    };
    let (name, kvs) = tail
        .split_once(':')
        .ok_or("experiment line without `NAME:`")?;
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!("bad experiment name {name:?}"));
    }
    let mut fields: Vec<(String, String)> = Vec::new();
    for token in kvs.split_whitespace() {
        let Some((k, v)) = token.split_once('=') else {
            continue;
        };
        if fields.iter().any(|(key, _)| key == k) {
            return Err(format!("key `{k}` given twice"));
        }
        fields.push((k.to_string(), v.to_string()));
    }
    Ok(Some(Experiment {
        line,
        number,
        name: name.to_string(),
        fields,
    }))
}

/// `0x` + 1..=16 hex digits.
pub fn parse_hex(v: &str) -> Result<u64, String> {
    let digits = v
        .strip_prefix("0x")
        .ok_or_else(|| format!("{v:?} is not 0x-hex"))?;
    if digits.is_empty() || digits.len() > 16 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{v:?} is not 0x-hex (at most 16 digits)"));
    }
    u64::from_str_radix(digits, 16).map_err(|e| format!("{v:?}: {e}"))
}

/// Hex digits, two per byte, no separators (no `0x`).
pub fn parse_bytes(v: &str) -> Result<Vec<u8>, String> {
    if v.is_empty() || v.len() % 2 != 0 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{} is not a byte string (an even number of hex digits)",
            abbreviate(v)
        ));
    }
    if v.len() / 2 > MAX_BYTES {
        return Err(format!("{} bytes is more than {MAX_BYTES}", v.len() / 2));
    }
    Ok((0..v.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&v[i..i + 2], 16).expect("checked hex"))
        .collect())
}

/// `0x<hi>:0x<lo>`.
pub fn parse_frcd(v: &str) -> Result<FaultRecord, String> {
    let (hi, lo) = v
        .split_once(':')
        .ok_or_else(|| format!("{v:?} is not 0x<high>:0x<low>"))?;
    Ok(FaultRecord {
        hi: parse_hex(hi)?,
        lo: parse_hex(lo)?,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn abbreviate(s: &str) -> String {
    if s.len() <= 40 {
        format!("{s:?}")
    } else {
        format!("{:?}...", &s[..32])
    }
}

/// `first difference at byte i: 0x.. vs 0x..` (or the length difference).
fn difference(a: &[u8], a_name: &str, b: &[u8], b_name: &str) -> Option<String> {
    if a.len() != b.len() {
        return Some(format!(
            "{a_name} has {} bytes, {b_name} {}",
            a.len(),
            b.len()
        ));
    }
    let i = a.iter().zip(b).position(|(x, y)| x != y)?;
    Some(format!(
        "first difference at byte {i}: {a_name} 0x{:02x}, {b_name} 0x{:02x}",
        a[i], b[i]
    ))
}

fn rid_label(rid: u16) -> String {
    let bdf = Bdf {
        bus: (rid >> 8) as u8,
        dev: (rid >> 3 & 0x1f) as u8,
        func: (rid & 7) as u8,
    };
    format!("0x{rid:04x} ({bdf})")
}

/// A guest-memory cross-check: the bytes at `addr_key` must equal `value_key`. Made
/// whenever both keys are there; the experiments whose address keys are mandatory
/// (1: `buf`, `buf_b`; 2 and 6: `target`) report a missing key themselves.
struct MemCheck {
    number: u32,
    addr_key: &'static str,
    value_key: &'static str,
}

const MEM_CHECKS: &[MemCheck] = &[
    // Buffer A: the CPU wrote the pattern, the device only read it.
    MemCheck {
        number: 1,
        addr_key: "buf",
        value_key: "pattern",
    },
    // Buffer B: what the device wrote through IOVA B.
    MemCheck {
        number: 1,
        addr_key: "buf_b",
        value_key: "result",
    },
    // The canary the blocked DMA must not have touched.
    MemCheck {
        number: 2,
        addr_key: "target",
        value_key: "after",
    },
    MemCheck {
        number: 3,
        addr_key: "target",
        value_key: "second_target_after",
    },
    MemCheck {
        number: 4,
        addr_key: "target",
        value_key: "after",
    },
    MemCheck {
        number: 5,
        addr_key: "buf",
        value_key: "result",
    },
    MemCheck {
        number: 6,
        addr_key: "target",
        value_key: "after",
    },
];

/// A planned `xp` read: the address and byte string the kernel printed.
struct MemRead<'a> {
    exp: &'a Experiment,
    check: &'a MemCheck,
    addr: u64,
    expected: Vec<u8>,
}

impl MemRead<'_> {
    fn command(&self) -> String {
        xp_bytes_command(self.addr, self.expected.len())
    }
}

pub fn xp_bytes_command(addr: u64, len: usize) -> String {
    format!("xp /{len}xb 0x{addr:x}")
}

/// The first line of each experiment number (duplicates are reported by the judge).
fn first_of(report: &DmaReport, number: u32) -> Option<&Experiment> {
    report.experiments.iter().find(|e| e.number == number)
}

fn mem_reads(report: &DmaReport) -> Vec<MemRead<'_>> {
    MEM_CHECKS
        .iter()
        .filter_map(|c| {
            let exp = first_of(report, c.number)?;
            let addr = parse_hex(exp.get(c.addr_key)?).ok()?;
            let expected = parse_bytes(exp.get(c.value_key)?).ok()?;
            Some(MemRead {
                exp,
                check: c,
                addr,
                expected,
            })
        })
        .collect()
}

/// The monitor commands to run while the kernel holds (intel-iommu), from the serial
/// output so far: one `xp /Nxb` per buffer the kernel printed, and the unit's fault
/// status.
pub fn monitor_commands(serial: &str) -> Vec<String> {
    commands_for(serial, Unit::Vtd)
}

/// The same for amd-iommu: the buffers, then the Control register and Event Log
/// Head/Tail/Status (shown as context with event failures).
pub fn amd_monitor_commands(serial: &str) -> Vec<String> {
    commands_for(serial, Unit::AmdVi)
}

fn commands_for(serial: &str, unit: Unit) -> Vec<String> {
    let lines: Vec<&str> = serial.lines().collect();
    let report = DmaReport::parse(&lines);
    if report.experiments.is_empty() {
        return Vec::new();
    }
    let mut cmds: Vec<String> = mem_reads(&report).iter().map(MemRead::command).collect();
    match unit {
        Unit::Vtd => cmds.push(fsts_command()),
        Unit::AmdVi => {
            cmds.push(amdvi_event::control_command());
            cmds.push(amdvi_event::log_registers_command());
        }
    }
    cmds.dedup();
    cmds
}

/// Parses the monitor's `xp` output (`%016x: 0x.. 0x..` lines, `\r\n` or `\n`) for
/// `count` units of `unit` bytes starting at `addr`.
pub fn parse_xp(output: &str, addr: u64, unit: u64, count: usize) -> Result<Vec<u64>, String> {
    let mut values = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (at, rest) = line
            .split_once(':')
            .ok_or_else(|| format!("unexpected xp output line {line:?}"))?;
        let at = u64::from_str_radix(at.trim(), 16)
            .map_err(|_| format!("unexpected xp output line {line:?}"))?;
        let want = addr + values.len() as u64 * unit;
        if at != want {
            return Err(format!(
                "xp output line for 0x{at:x}, expected 0x{want:x}: {line:?}"
            ));
        }
        if rest.contains("Cannot access memory") {
            return Err(format!("QEMU cannot access guest memory at 0x{at:x}"));
        }
        for word in rest.split_whitespace() {
            values.push(parse_hex(word).map_err(|e| format!("xp output: {e}"))?);
        }
    }
    if values.len() != count {
        return Err(format!(
            "xp returned {} values, expected {count}: {}",
            values.len(),
            abbreviate(output)
        ));
    }
    Ok(values)
}

fn parse_xp_bytes(output: &str, addr: u64, len: usize) -> Result<Vec<u8>, String> {
    let v = parse_xp(output, addr, 1, len)?;
    v.iter()
        .map(|&x| u8::try_from(x).map_err(|_| format!("xp /xb value 0x{x:x} is not a byte")))
        .collect()
}

/// Requester ids of the two edus, from QEMU's view.
#[derive(Clone, Copy, Debug)]
struct Rids {
    e1: Option<u16>,
    e2: Option<u16>,
}

/// Judges the log against the experiments' pass criteria and (with QEMU's view) the
/// requester ids and the guest memory. Returns failure reasons; empty = pass.
pub fn check<S: AsRef<str>>(
    lines: &[S],
    unit: Unit,
    qemu: Result<&OracleView, String>,
    qemu_stderr: &str,
) -> Vec<String> {
    let report = DmaReport::parse(lines);
    let mut fails = Vec::new();
    for (n, l) in &report.edu_messages {
        fails.push(format!(
            "line {n}: QEMU's edu complains: {l} (bus addresses must stay below the edu's 28-bit DMA mask 0x{EDU_DMA_MASK:x})"
        ));
    }
    if let Some(l) = qemu_stderr.lines().find(|l| l.contains("EDU: DMA range")) {
        fails.push(format!(
            "QEMU's edu aborted the machine: {} (a DMA count of 0 or a transfer ending at the buffer end aborts QEMU 7.2)",
            l.trim()
        ));
    }
    for (n, l) in &report.errors {
        fails.push(format!("line {n}: the kernel reports: {l}"));
    }
    if report.is_empty() {
        fails.push(format!(
            "the kernel printed no `dmatest` results (expected `dmatest N NAME: key=value ...` for {} and `dmatest done: 6 experiments`)",
            EXPERIMENTS
                .iter()
                .enumerate()
                .map(|(i, n)| format!("{} {n}", i + 1))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if let Err(e) = &qemu {
            fails.push(e.clone());
        }
        return fails;
    }
    fails.extend(report.problems.iter().cloned());

    let (rids, view) = match &qemu {
        Ok(view) => {
            let names = Names::new(&view.nodes);
            let mut rid = |token: &str| match names.resolve(token) {
                Ok(bdf) => Some(bdf.requester_id()),
                Err(e) => {
                    fails.push(format!("cannot name the expected requester id: {e}"));
                    None
                }
            };
            let rids = Rids {
                e1: rid("e1"),
                e2: rid("e2"),
            };
            (rids, Some(*view))
        }
        Err(e) => {
            fails.push(format!(
                "{e}: requester ids and guest memory not cross-checked"
            ));
            (Rids { e1: None, e2: None }, None)
        }
    };

    for (i, name) in EXPERIMENTS.iter().enumerate() {
        let number = i as u32 + 1;
        let lines: Vec<&Experiment> = report
            .experiments
            .iter()
            .filter(|e| e.number == number)
            .collect();
        let Some(&exp) = lines.first() else {
            fails.push(format!(
                "experiment {number} ({name}): no `dmatest {number} {name}: ...` line"
            ));
            continue;
        };
        if lines.len() > 1 {
            let at: Vec<String> = lines.iter().map(|e| e.line.to_string()).collect();
            fails.push(format!(
                "experiment {number} ({name}) printed {} times (lines {})",
                lines.len(),
                at.join(", ")
            ));
        }
        let mut j = Judge {
            exp,
            unit,
            fails: Vec::new(),
        };
        if exp.name != *name {
            j.fail(format!("experiment {number} must be named `{name}`"));
        } else {
            match number {
                1 => judge_map_dma(&mut j),
                2 => judge_unmapped_blocked(&mut j, rids),
                3 => judge_unmap_invalidates(&mut j, rids),
                4 => judge_readonly(&mut j, rids),
                5 => judge_superpage(&mut j),
                _ => judge_never_attached(&mut j, rids),
            }
        }
        fails.extend(j.fails);
    }
    match unit {
        Unit::Vtd => stale_fault_records(&report, &mut fails),
        Unit::AmdVi => stale_events(&report, &mut fails),
    }
    let bypass = bypass_diagnosis(&report, unit);
    fails.extend(bypass.iter().cloned());
    for e in &report.experiments {
        if e.number == 0 || e.number as usize > EXPERIMENTS.len() {
            fails.push(format!(
                "line {}: unknown experiment {} ({})",
                e.line, e.number, e.name
            ));
        }
    }
    match report.done {
        None => fails.push("no `dmatest done: 6 experiments` line".into()),
        Some((n, count)) if count as usize != EXPERIMENTS.len() => fails.push(format!(
            "line {n}: the kernel says `dmatest done: {count} experiments`, expected {}",
            EXPERIMENTS.len()
        )),
        Some((n, _)) => {
            if let Some(late) = report.experiments.iter().find(|e| e.line > n) {
                fails.push(format!(
                    "line {}: experiment {} printed after `dmatest done` (line {n})",
                    late.line, late.number
                ));
            }
        }
    }

    if let Some(view) = view {
        check_memory(&report, view, &mut fails);
        let key = format!("{}=", unit.fault_key());
        if bypass.is_some() || fails.iter().any(|f| f.contains(&key)) {
            let ctx = match unit {
                Unit::Vtd => fsts_context(view),
                Unit::AmdVi => amd_context(view),
            };
            fails.extend(ctx);
        }
    }
    fails
}

/// The never-mapped IOVA (2) and the never-attached device (6) both reached memory:
/// nothing was translated at all.
fn bypass_diagnosis(report: &DmaReport, unit: Unit) -> Option<String> {
    let landed = |number: u32, before_key: &str| {
        let e = first_of(report, number)?;
        let before = parse_bytes(e.get(before_key)?).ok()?;
        let after = parse_bytes(e.get("after")?).ok()?;
        Some(before != after)
    };
    if landed(2, "canary")? && landed(6, "before")? {
        let why = match unit {
            Unit::Vtd => {
                "the kernel did not enable translation (GCMD.TE), or the edus have pass-through context entries"
            }
            Unit::AmdVi => {
                "QEMU 9.2-10.0 with amd-iommu's default pt=on do not translate emulated devices at all (the amdvi-dma scenario passes pt=off; with `run` use --amd-pt off), or the kernel left the IOMMU off (Control.IommuEn) or the edus' DTEs invalid (V=0 passes DMA untranslated)"
            }
        };
        return Some(format!(
            "DMA bypassed translation: the write to the never-mapped IOVA (experiment 2) and the never-attached edu's write (experiment 6) both reached memory: {why}"
        ));
    }
    None
}

/// amd-iommu's registers at hold, as context for event failures.
fn amd_context(view: &OracleView) -> Option<String> {
    let words = |command: String, addr: u64, count: usize| {
        let out = view.monitor_reply(&command)?.as_ref().ok()?;
        parse_xp(out, addr, 4, count).ok()
    };
    let control = words(
        amdvi_event::control_command(),
        amdvi_event::AMDVI_CONTROL,
        2,
    );
    let log = words(
        amdvi_event::log_registers_command(),
        amdvi_event::AMDVI_EVENT_HEAD,
        6,
    );
    amdvi_event::Registers::from_words(control.as_deref(), log.as_deref()).context()
}

/// An event log entry equal to an earlier experiment's is an old entry reported
/// again (each experiment's blocked write has its own address or device).
fn stale_events(report: &DmaReport, fails: &mut Vec<String>) {
    let mut seen: Vec<(&Experiment, EventEntry)> = Vec::new();
    for e in &report.experiments {
        let Some(Ok(Some(ev))) = e.get("event").map(amdvi_event::parse_event) else {
            continue;
        };
        if seen.iter().any(|(x, _)| x.number == e.number) {
            continue; // a repeated line: reported as such
        }
        if let Some((earlier, _)) = seen.iter().find(|(_, g)| *g == ev) {
            fails.push(format!(
                "dmatest {} {} (line {}): event={ev} is experiment {}'s entry again: report only entries QEMU wrote after the experiment started (QEMU 7.2 and 10.0 never move the Event Log Tail register: find new entries in the log memory, and clear consumed ones)",
                e.number, e.name, e.line, earlier.number
            ));
        } else {
            seen.push((e, ev));
        }
    }
}

/// A fault record identical to an earlier experiment's was never cleared: QEMU
/// records nothing new while the register is full (and collapses further faults of
/// the same requester into the pending one).
fn stale_fault_records(report: &DmaReport, fails: &mut Vec<String>) {
    let mut seen: Vec<(&Experiment, FaultRecord)> = Vec::new();
    for e in &report.experiments {
        let Some(f) = e.get("frcd").and_then(|v| parse_frcd(v).ok()) else {
            continue;
        };
        if !f.fault() {
            continue;
        }
        if seen.iter().any(|(x, _)| x.number == e.number) {
            continue; // a repeated line: reported as such
        }
        if let Some((earlier, _)) = seen.iter().find(|(_, g)| *g == f) {
            fails.push(format!(
                "dmatest {} {} (line {}): frcd={f} is experiment {}'s record again: the kernel did not clear F (write 1 to bit 127) after experiment {}, so the unit recorded nothing new",
                e.number, e.name, e.line, earlier.number, earlier.number
            ));
        } else {
            seen.push((e, f));
        }
    }
}

fn check_memory(report: &DmaReport, view: &OracleView, fails: &mut Vec<String>) {
    for r in &mem_reads(report) {
        let what = format!(
            "dmatest {} {} (line {}): guest memory at {}=0x{:x}",
            r.exp.number, r.exp.name, r.exp.line, r.check.addr_key, r.addr
        );
        let command = r.command();
        match view.monitor_reply(&command) {
            None => fails.push(format!(
                "{what}: not read (QEMU was not asked `{command}` while the kernel held)"
            )),
            Some(Err(e)) => fails.push(format!("{what}: `{command}` failed: {e}")),
            Some(Ok(out)) => match parse_xp_bytes(out, r.addr, r.expected.len()) {
                Err(e) => fails.push(format!("{what}: {e}")),
                Ok(actual) => {
                    if let Some(d) = difference(&actual, "memory", &r.expected, r.check.value_key) {
                        fails.push(format!(
                            "{what} holds {}, the kernel printed {}={} ({d}; was the buffer reused or freed before `holding:`?)",
                            hex(&actual),
                            r.check.value_key,
                            hex(&r.expected)
                        ));
                    }
                }
            },
        }
    }
}

/// A context line with the unit's fault status at hold, if QEMU was asked (added to
/// fault-record failures).
fn fsts_context(view: &OracleView) -> Option<String> {
    let out = view.monitor_reply(&fsts_command())?.as_ref().ok()?;
    let fsts = *parse_xp(out, VTD_FSTS, 4, 1).ok()?.first()?;
    let mut s = format!("  context: intel-iommu FSTS at hold = 0x{fsts:08x}");
    let mut bits = Vec::new();
    if fsts & 1 != 0 {
        bits.push("PFO: a fault was lost because the recording register was still full — clear F (write 1 to bit 127) after each experiment".to_string());
    }
    if fsts & 2 != 0 {
        bits.push(format!(
            "PPF: a fault is pending in record {}",
            fsts >> 8 & 0xff
        ));
    }
    if !bits.is_empty() {
        let _ = write!(s, " ({})", bits.join("; "));
    }
    Some(s)
}

/// Per-experiment checks, each failure prefixed with the experiment and line.
struct Judge<'a> {
    exp: &'a Experiment,
    unit: Unit,
    fails: Vec<String>,
}

/// What the fault record of a blocked edu write must show.
struct FaultExpectation<'a> {
    source: Option<u16>,
    /// Where `source` comes from: `e1 per query-pci`, `the printed rid`.
    source_name: &'a str,
    /// Address whose page FI must be.
    address: u64,
    address_key: &'a str,
    /// Accepted reasons; empty = any nonzero reason outside `refused`.
    reasons: &'a [u8],
    refused: &'a [(u8, &'a str)],
}

impl<'a> Judge<'a> {
    fn fail(&mut self, msg: impl AsRef<str>) {
        self.fails.push(format!(
            "dmatest {} {} (line {}): {}",
            self.exp.number,
            self.exp.name,
            self.exp.line,
            msg.as_ref()
        ));
    }

    fn raw(&mut self, key: &str) -> Option<&'a str> {
        let v = self.exp.get(key);
        if v.is_none() {
            self.fail(format!("no `{key}=` value"));
        }
        v
    }

    fn num(&mut self, key: &str) -> Option<u64> {
        let v = self.raw(key)?;
        parse_hex(v)
            .map_err(|e| self.fail(format!("{key}: {e}")))
            .ok()
    }

    /// A small count: decimal, or `0x`-hex.
    fn count(&mut self, key: &str) -> Option<u64> {
        let v = self.raw(key)?;
        if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
            return v
                .parse()
                .map_err(|_| self.fail(format!("{key}: {v:?} is too large")))
                .ok();
        }
        parse_hex(v)
            .map_err(|e| self.fail(format!("{key}: {e} (or decimal)")))
            .ok()
    }

    fn bytes(&mut self, key: &str) -> Option<Vec<u8>> {
        let v = self.raw(key)?;
        parse_bytes(v)
            .map_err(|e| self.fail(format!("{key}: {e}")))
            .ok()
    }

    fn optional_bytes(&mut self, key: &str) -> Option<Vec<u8>> {
        self.exp.get(key)?;
        self.bytes(key)
    }

    fn frcd(&mut self, key: &str) -> Option<FaultRecord> {
        let v = self.raw(key)?;
        parse_frcd(v)
            .map_err(|e| self.fail(format!("{key}: {e}")))
            .ok()
    }

    /// A bus address the edu uses must survive its 28-bit mask.
    fn below_mask(&mut self, key: &str, addr: u64, len: u64) {
        let last = addr.saturating_add(len.max(1) - 1);
        if last > EDU_DMA_MASK {
            self.fail(format!(
                "{key}=0x{addr:x} is beyond the edu's 28-bit DMA mask (0x{EDU_DMA_MASK:x}): the edu would DMA to 0x{:x} instead",
                addr & EDU_DMA_MASK
            ));
        }
    }

    fn equal(&mut self, a: &[u8], a_key: &str, b: &[u8], b_key: &str, meaning: &str) {
        if let Some(d) = difference(a, a_key, b, b_key) {
            self.fail(format!(
                "{a_key} != {b_key} ({d}): {meaning}; {a_key}={}",
                hex(a)
            ));
        }
    }

    /// The data must be recognisable: not all 0x00 or all 0xff (what failed accesses give).
    fn distinctive(&mut self, v: &[u8], key: &str) {
        if v.iter().all(|&b| b == 0) || v.iter().all(|&b| b == 0xff) {
            self.fail(format!(
                "{key} is all 0x{:02x}: indistinguishable from a failed access; use varied bytes",
                v.first().copied().unwrap_or(0)
            ));
        }
    }

    /// The bytes the device sends must differ from what the target held, or a write
    /// that got through would go unnoticed.
    fn detectable(&mut self, sent: &[u8], sent_key: &str, before: &[u8], before_key: &str) {
        if sent == before {
            self.fail(format!(
                "{before_key} equals {sent_key} (what the edu writes): a DMA that got through would go unnoticed; fill the target with other bytes first"
            ));
        }
    }

    fn fault(&mut self, key: &str, want: &FaultExpectation<'_>) {
        let Some(f) = self.frcd(key) else {
            return;
        };
        if !f.fault() {
            self.fail(format!(
                "{key}={f}: F (bit 127) is clear: the unit recorded no fault for the blocked DMA"
            ));
            return;
        }
        if f.is_read() {
            self.fail(format!(
                "{key}={f}: T (bit 126) = 1, a read request; the edu's blocked access was a write (edu → RAM)"
            ));
        }
        if let Some(sid) = want.source {
            if f.source_id() != sid {
                self.fail(format!(
                    "{key}={f}: source id {}, expected {} = {}",
                    rid_label(f.source_id()),
                    rid_label(sid),
                    want.source_name
                ));
            }
        }
        let page = want.address & !(PAGE - 1);
        if f.page() != page {
            self.fail(format!(
                "{key}={f}: fault address 0x{:x}, expected the page of {}=0x{:x} (0x{page:x})",
                f.page(),
                want.address_key,
                want.address
            ));
        }
        let r = f.reason();
        let named = |r: u8| format!("0x{r:02x} ({})", fault_reason_name(r));
        if r == 0 {
            self.fail(format!("{key}={f}: fault reason 0"));
        } else if let Some((_, why)) = want.refused.iter().find(|(x, _)| *x == r) {
            self.fail(format!("{key}={f}: fault reason {}: {why}", named(r)));
        } else if !want.reasons.is_empty() && !want.reasons.contains(&r) {
            let expected: Vec<String> = want.reasons.iter().map(|&x| named(x)).collect();
            self.fail(format!(
                "{key}={f}: fault reason {}, expected {}",
                named(r),
                expected.join(" or ")
            ));
        }
    }

    /// The raw fault evidence of a blocked edu write: `frcd=` (VT-d) or `event=` (AMD).
    fn evidence(&mut self, want: &FaultExpectation<'_>) {
        let key = self.unit.fault_key();
        let other = self.unit.other().fault_key();
        if self.exp.get(key).is_none() && self.exp.get(other).is_some() {
            let how = match self.unit {
                Unit::Vtd => "the fault recording register as frcd=0x<high>:0x<low>",
                Unit::AmdVi => {
                    "the experiment's last new event log entry as event=0x<hi>:0x<lo>, or event=none"
                }
            };
            self.fail(format!(
                "no `{key}=` value (`{other}=` is {}'s; on {} print {how})",
                self.unit.other().device(),
                self.unit.device()
            ));
            return;
        }
        match self.unit {
            Unit::Vtd => self.fault(key, want),
            Unit::AmdVi => self.amd_event(key, want),
        }
    }

    /// An AMD event log entry: `none`, or an IO_PAGE_FAULT of the device at the page.
    fn amd_event(&mut self, key: &str, want: &FaultExpectation<'_>) {
        let Some(v) = self.raw(key) else {
            return;
        };
        let e = match amdvi_event::parse_event(v) {
            Err(e) => {
                self.fail(format!("{key}: {e}"));
                return;
            }
            // QEMU 7.2 and 10.0 write no event log entries (amdvi_event.rs): there the
            // untouched memory is all the evidence a blocked write leaves.
            Ok(None) => return,
            Ok(Some(e)) => e,
        };
        // The raw value and its decoding, at the start of every message.
        let shown = format!("{key}={e} [{}]", e.describe());
        let code = e.code();
        if code != amdvi_event::IO_PAGE_FAULT {
            self.fail(format!(
                "{shown}: event code 0x{code:x} ({}), expected 0x2 (IO_PAGE_FAULT): {}",
                amdvi_event::event_code_name(code),
                amdvi_event::event_code_hint(code)
            ));
            return;
        }
        if let Some(rid) = want.source {
            if !amdvi_event::device_matches(e.device_id(), rid) {
                self.fail(format!(
                    "{shown}: device id {}, expected {} = {} (QEMU logs the devfn only: an id with bus 0 matches on devfn)",
                    rid_label(e.device_id()),
                    rid_label(rid),
                    want.source_name
                ));
            }
        }
        let page = want.address & !(PAGE - 1);
        if e.address() & !(PAGE - 1) != page {
            self.fail(format!(
                "{shown}: fault address 0x{:x}, expected an address in the page of {}=0x{:x} (0x{page:x})",
                e.address(),
                want.address_key,
                want.address
            ));
        }
        if e.access() == amdvi_event::Access::Read {
            self.fail(format!(
                "{shown}: a read request (RW, flag bit 5, clear; QEMU's permission bits 1:0 = {}); the edu's blocked access was a write (edu → RAM)",
                e.flags() & 3
            ));
        }
    }

    fn printed_rid(&mut self, expected: Option<u16>, name: &str) -> Option<u16> {
        let rid = self.num("rid")?;
        let Ok(rid) = u16::try_from(rid) else {
            self.fail(format!("rid=0x{rid:x} is not a 16-bit requester id"));
            return None;
        };
        if let Some(want) = expected {
            if rid != want {
                self.fail(format!(
                    "rid={} but QEMU has {name} at requester id {}",
                    rid_label(rid),
                    rid_label(want)
                ));
            }
        }
        Some(rid)
    }
}

/// A context-level fault on e1 means e1 is not attached at all: the fault then says
/// nothing about the mapping under test.
const E1_ATTACHED: &[(u8, &str)] = &[
    (
        ROOT_ENTRY_NOT_PRESENT,
        "e1 has no translation at all, so the fault does not show the mapping blocked the DMA",
    ),
    (
        CONTEXT_ENTRY_NOT_PRESENT,
        "e1 is not attached, so the fault does not show the mapping blocked the DMA",
    ),
    (
        INVALID_CONTEXT_ENTRY,
        "e1's context entry is malformed, so the fault does not show the mapping blocked the DMA",
    ),
];

/// 1: map, DMA buf A → edu → buf B through IOVAs; result must equal pattern.
fn judge_map_dma(j: &mut Judge<'_>) {
    let iova = j.num("iova");
    let iova_b = j.num("iova_b");
    let _buf = j.num("buf");
    let _buf_b = j.num("buf_b");
    let pattern = j.bytes("pattern");
    let result = j.bytes("result");
    let len = pattern.as_ref().map_or(1, |p| p.len() as u64);
    if let Some(a) = iova {
        j.below_mask("iova", a, len);
    }
    if let Some(b) = iova_b {
        j.below_mask("iova_b", b, len);
        if iova == Some(b) {
            j.fail("iova_b equals iova: buffers A and B need their own IOVAs");
        }
    }
    if let (Some(p), Some(r)) = (pattern, result) {
        j.distinctive(&p, "pattern");
        j.equal(
            &r,
            "result",
            &p,
            "pattern",
            "the DMA through the mappings did not deliver the data",
        );
    }
}

/// 2: the edu writes to a never-mapped IOVA: blocked, canary intact, fault recorded.
fn judge_unmapped_blocked(j: &mut Judge<'_>, rids: Rids) {
    let iova = j.num("iova");
    let target = j.num("target");
    let canary = j.bytes("canary");
    let after = j.bytes("after");
    let sent = j.optional_bytes("sent");
    let rid = j.printed_rid(rids.e1, "e1");
    let len = canary.as_ref().map_or(1, |c| c.len() as u64);
    if let Some(i) = iova {
        j.below_mask("iova", i, len);
    }
    if let (Some(i), Some(t)) = (iova, target) {
        if i & !(PAGE - 1) != t & !(PAGE - 1) {
            j.fail(format!(
                "target=0x{t:x} is not the page of iova=0x{i:x}: a DMA that bypassed translation would miss the canary (use the canary's physical address as the unmapped IOVA)"
            ));
        }
    }
    if let (Some(c), Some(a)) = (&canary, &after) {
        j.equal(
            a,
            "after",
            c,
            "canary",
            "the DMA to the unmapped IOVA reached memory",
        );
    }
    if let (Some(s), Some(c)) = (&sent, &canary) {
        j.detectable(s, "sent", c, "canary");
    }
    if let Some(i) = iova {
        j.evidence(&FaultExpectation {
            source: rids.e1.or(rid),
            source_name: if rids.e1.is_some() {
                "e1 per query-pci"
            } else {
                "the printed rid"
            },
            address: i,
            address_key: "iova",
            reasons: &[],
            refused: E1_ATTACHED,
        });
    }
}

/// 3: map, DMA works; unmap + commit; the same DMA must now be blocked and fault.
fn judge_unmap_invalidates(j: &mut Judge<'_>, rids: Rids) {
    let iova = j.num("iova");
    let first = j.bytes("first");
    let pattern = j.bytes("pattern");
    let before = j.bytes("second_target_before");
    let after = j.bytes("second_target_after");
    let sent = j.optional_bytes("sent");
    if let Some(i) = iova {
        j.below_mask("iova", i, pattern.as_ref().map_or(1, |p| p.len() as u64));
    }
    if let (Some(f), Some(p)) = (&first, &pattern) {
        j.distinctive(p, "pattern");
        j.equal(
            f,
            "first",
            p,
            "pattern",
            "the DMA through the mapping (before unmap) did not deliver the data",
        );
    }
    if let (Some(b), Some(a)) = (&before, &after) {
        let meaning = match j.unit {
            Unit::Vtd => {
                "the DMA after unmap reached memory: the unmap did not take effect (a stale IOTLB entry? QEMU caches translations, unmap needs an IOTLB invalidation)"
            }
            Unit::AmdVi => {
                "the DMA after unmap reached memory: the unmap did not take effect (a stale IOTLB entry? QEMU's amd-iommu caches translations per device and page: after unmap send INVALIDATE_IOMMU_PAGES for the domain and a COMPLETION_WAIT; QEMU also still uses a leaf whose PR bit is clear but IR/IW are set: clear the whole PTE)"
            }
        };
        j.equal(a, "second_target_after", b, "second_target_before", meaning);
    }
    match (&sent, &pattern, &before) {
        (Some(s), _, Some(b)) => j.detectable(s, "sent", b, "second_target_before"),
        (None, Some(p), Some(b)) => j.detectable(p, "pattern", b, "second_target_before"),
        _ => {}
    }
    if let Some(i) = iova {
        j.evidence(&FaultExpectation {
            source: rids.e1,
            source_name: "e1 per query-pci",
            address: i,
            address_key: "iova",
            reasons: &[],
            refused: E1_ATTACHED,
        });
    }
}

/// 4: a read-only mapping; the edu's write is blocked with reason 5.
fn judge_readonly(j: &mut Judge<'_>, rids: Rids) {
    let iova = j.num("iova");
    let before = j.bytes("before");
    let after = j.bytes("after");
    let sent = j.optional_bytes("sent");
    if let Some(i) = iova {
        j.below_mask("iova", i, before.as_ref().map_or(1, |b| b.len() as u64));
    }
    if let (Some(b), Some(a)) = (&before, &after) {
        j.equal(
            a,
            "after",
            b,
            "before",
            "the device wrote through a read-only mapping",
        );
    }
    if let (Some(s), Some(b)) = (&sent, &before) {
        j.detectable(s, "sent", b, "before");
    }
    if let Some(i) = iova {
        j.evidence(&FaultExpectation {
            source: rids.e1,
            source_name: "e1 per query-pci",
            address: i,
            address_key: "iova",
            reasons: &[WRITE_NOT_PERMITTED],
            refused: &[],
        });
    }
}

/// 5: a 2 MiB mapping: the leaf is a level-2 entry with PS set, DMA through it works.
fn judge_superpage(j: &mut Judge<'_>) {
    let iova = j.num("iova");
    let size = j.num("size");
    let leaf_level = j.count("leaf_level");
    let page_size = j.num("page_size");
    let pte = j.num("pte");
    let pattern = j.bytes("pattern");
    let result = j.bytes("result");
    if let Some(s) = size.filter(|&s| s != SUPERPAGE) {
        j.fail(format!("size=0x{s:x}, expected 0x{SUPERPAGE:x}"));
    }
    if let Some(i) = iova {
        if i % SUPERPAGE != 0 {
            j.fail(format!("iova=0x{i:x} is not 2 MiB aligned"));
        }
        j.below_mask("iova", i, size.unwrap_or(SUPERPAGE));
    }
    if let Some(p) = page_size.filter(|&p| p != SUPERPAGE) {
        j.fail(format!(
            "page_size=0x{p:x}: the mapping was not made with a 2 MiB page (expected 0x{SUPERPAGE:x})"
        ));
    }
    if let Some(l) = leaf_level.filter(|&l| l != 2) {
        let table = match j.unit {
            Unit::Vtd => "second-level table",
            Unit::AmdVi => "I/O page table",
        };
        j.fail(format!(
            "leaf_level={l}: a 2 MiB leaf sits at level 2 of the {table}"
        ));
    }
    if let (Some(p), Unit::AmdVi) = (pte, j.unit) {
        amd_superpage_leaf(j, p);
    } else if let Some(p) = pte {
        if p & (1 << 7) == 0 {
            j.fail(format!(
                "pte=0x{p:x}: PS (bit 7) is clear, the leaf is not a superpage entry"
            ));
        }
        if p & 3 == 0 {
            j.fail(format!(
                "pte=0x{p:x}: neither R nor W (bits 0, 1) is set: not present"
            ));
        }
        if p & 0x1f_f000 != 0 {
            j.fail(format!(
                "pte=0x{p:x}: bits 20:12 must be zero in a 2 MiB leaf (address not 2 MiB aligned / reserved)"
            ));
        }
    }
    if let (Some(p), Some(r)) = (pattern, result) {
        j.distinctive(&p, "pattern");
        j.equal(
            &r,
            "result",
            &p,
            "pattern",
            "the DMA through the 2 MiB mapping did not deliver the data",
        );
    }
}

/// An AMD v1 PTE mapping 2 MiB at level 2: PR, NextLevel 0 (no PS bit in this format),
/// IR or IW, a 2 MiB aligned address.
fn amd_superpage_leaf(j: &mut Judge<'_>, p: u64) {
    if p & 1 == 0 {
        j.fail(format!(
            "pte=0x{p:x}: PR (bit 0) is clear: the leaf is not present"
        ));
    }
    match p >> 9 & 7 {
        0 => {}
        7 => j.fail(format!(
            "pte=0x{p:x}: NextLevel (bits 11:9) = 7, a page-size-encoded leaf; a 2 MiB leaf at level 2 has NextLevel 0"
        )),
        n => j.fail(format!(
            "pte=0x{p:x}: NextLevel (bits 11:9) = {n}: the entry points to a level-{n} table, it is not a 2 MiB leaf"
        )),
    }
    if p & (3 << 61) == 0 {
        j.fail(format!(
            "pte=0x{p:x}: neither IR (bit 61) nor IW (bit 62) is set: the leaf grants no access"
        ));
    }
    if p & 0x1f_f000 != 0 {
        j.fail(format!(
            "pte=0x{p:x}: bits 20:12 must be zero in a 2 MiB leaf (address not 2 MiB aligned)"
        ));
    }
}

/// 6: the never-attached e2 writes to `target`: blocked at the context level.
fn judge_never_attached(j: &mut Judge<'_>, rids: Rids) {
    let rid = j.printed_rid(rids.e2, "e2");
    let target = j.num("target");
    let before = j.bytes("before");
    let after = j.bytes("after");
    let sent = j.optional_bytes("sent");
    if let (Some(r), Some(e1)) = (rid, rids.e1) {
        if r == e1 && rids.e2 != Some(e1) {
            j.fail("rid is e1's: the experiment must use the second edu e2");
        }
    }
    if let Some(t) = target {
        j.below_mask("target", t, before.as_ref().map_or(1, |b| b.len() as u64));
    }
    if let (Some(b), Some(a)) = (&before, &after) {
        let meaning = match j.unit {
            Unit::Vtd => "the DMA of the never-attached edu reached memory",
            Unit::AmdVi => {
                "the DMA of the never-attached edu reached memory (a DTE with V=0 passes DMA untranslated: give never-attached devices V=1, TV=1, IR=IW=0)"
            }
        };
        j.equal(a, "after", b, "before", meaning);
    }
    if let (Some(s), Some(b)) = (&sent, &before) {
        j.detectable(s, "sent", b, "before");
    }
    if let Some(t) = target {
        j.evidence(&FaultExpectation {
            source: rids.e2.or(rid),
            source_name: if rids.e2.is_some() {
                "e2 per query-pci"
            } else {
                "the printed rid"
            },
            address: t,
            address_key: "target",
            reasons: &[CONTEXT_ENTRY_NOT_PRESENT, ROOT_ENTRY_NOT_PRESENT],
            refused: &[],
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::oracle::{MonitorReply, PciNode};
    use std::collections::BTreeMap;

    /// q35 + intel-iommu + topology `dma`, as QEMU 7.2 and 10.0 list it.
    pub fn nodes() -> Vec<PciNode> {
        let node = |bus, dev, func, id: &str, class| PciNode {
            bdf: Bdf { bus, dev, func },
            qdev_id: (!id.is_empty()).then(|| id.to_string()),
            class,
            secondary: None,
        };
        vec![
            node(0, 0, 0, "", 0x0600),
            node(0, 1, 0, "e1", 0x00ff),
            node(0, 2, 0, "e2", 0x00ff),
            node(0, 0x1f, 0, "", 0x0601),
            node(0, 0x1f, 2, "", 0x0106),
            node(0, 0x1f, 3, "", 0x0c05),
        ]
    }

    /// The byte-string format of the log (`hex` for other test modules).
    pub fn hex_of(bytes: &[u8]) -> String {
        hex(bytes)
    }

    pub fn pattern(seed: u8) -> Vec<u8> {
        (0..64u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(seed))
            .collect()
    }

    pub const BUF_A: u64 = 0x0030_0000;
    pub const BUF_B: u64 = 0x0030_1000;
    pub const CANARY: u64 = 0x0031_0000;
    pub const RO_BUF: u64 = 0x0032_0000;
    pub const UNMAP_BUF: u64 = 0x0033_0000;
    pub const SUPER_BUF: u64 = 0x0040_0000;
    pub const E2_TARGET: u64 = 0x0034_0000;

    /// Fault record of a blocked edu write.
    pub fn frcd(reason: u8, sid: u16, addr: u64) -> String {
        let hi = 1u64 << 63 | u64::from(reason) << 32 | u64::from(sid);
        format!("0x{hi:016x}:0x{:016x}", addr & !0xfff)
    }

    /// A complete, passing report as the kernel should print it.
    pub fn good_log() -> String {
        let p = hex(&pattern(1));
        let canary = hex(&[0xc5; 64]);
        let ro = hex(&pattern(9));
        let fill = hex(&pattern(200));
        let sp = hex(&pattern(77));
        let lines = [
            "[INFO  boot] sluice starting".to_string(),
            format!(
                "[INFO  dmatest] dmatest 1 map-dma: iova=0x1000000 buf=0x{BUF_A:x} iova_b=0x1001000 buf_b=0x{BUF_B:x} pattern={p} result={p}"
            ),
            format!(
                "[INFO  dmatest] dmatest 2 unmapped-blocked: iova=0x{CANARY:x} target=0x{CANARY:x} canary={canary} after={canary} frcd={} rid=0x0008",
                frcd(5, 0x0008, CANARY)
            ),
            format!(
                "[INFO  dmatest] dmatest 3 unmap-invalidates: iova=0x1100000 target=0x{UNMAP_BUF:x} first={p} pattern={p} second_target_before={fill} second_target_after={fill} frcd={}",
                frcd(5, 0x0008, 0x110_0000)
            ),
            format!(
                "[INFO  dmatest] dmatest 4 readonly-blocks-write: iova=0x1200000 target=0x{RO_BUF:x} before={ro} after={ro} frcd={}",
                frcd(5, 0x0008, 0x120_0000)
            ),
            format!(
                "[INFO  dmatest] dmatest 5 superpage: iova=0x1400000 size=0x200000 leaf_level=2 page_size=0x200000 pte=0x{:x} buf=0x{SUPER_BUF:x} pattern={sp} result={sp}",
                SUPER_BUF | 0x83
            ),
            format!(
                "[INFO  dmatest] dmatest 6 never-attached: rid=0x0010 target=0x{E2_TARGET:x} before={canary} after={canary} frcd={}",
                frcd(2, 0x0010, E2_TARGET)
            ),
            "[INFO  dmatest] dmatest done: 6 experiments".to_string(),
            "[INFO  boot] holding: press a key".to_string(),
        ];
        lines.join("\n") + "\n"
    }

    /// Guest memory matching `good_log`.
    pub fn good_memory() -> BTreeMap<u64, Vec<u8>> {
        BTreeMap::from([
            (BUF_A, pattern(1)),
            (BUF_B, pattern(1)),
            (CANARY, vec![0xc5; 64]),
            (UNMAP_BUF, pattern(200)),
            (RO_BUF, pattern(9)),
            (SUPER_BUF, pattern(77)),
            (E2_TARGET, vec![0xc5; 64]),
        ])
    }

    /// Renders `xp /Nxb` and `xp /1xw` the way QEMU's monitor does (checked on 7.2
    /// and 10.0): `%016x:` then ` 0x%02x` per byte, 8 bytes a line, `\r\n`.
    pub fn fake_xp(command: &str, mem: &BTreeMap<u64, Vec<u8>>, fsts: u32) -> String {
        fake_xp_words(command, mem, &BTreeMap::from([(VTD_FSTS, fsts)]))
    }

    /// `fake_xp` with 32-bit MMIO words (`xp /Nxw`, 4 a line, like QEMU; unknown
    /// addresses read 0).
    pub fn fake_xp_words(
        command: &str,
        mem: &BTreeMap<u64, Vec<u8>>,
        regs: &BTreeMap<u64, u32>,
    ) -> String {
        let mut words = command.split_whitespace().skip(1);
        let fmt = words.next().unwrap();
        let addr = parse_hex(words.next().unwrap()).unwrap();
        let n: usize = fmt[1..fmt.len() - 2].parse().unwrap();
        if fmt.ends_with("xw") {
            let mut out = String::new();
            for i in 0..n as u64 {
                let at = addr + 4 * i;
                if i % 4 == 0 {
                    if i > 0 {
                        out.push_str("\r\n");
                    }
                    let _ = write!(out, "{at:016x}:");
                }
                let _ = write!(out, " 0x{:08x}", regs.get(&at).copied().unwrap_or(0));
            }
            out.push_str("\r\n");
            return out;
        }
        let Some((base, bytes)) = mem
            .range(..=addr)
            .next_back()
            .filter(|(b, v)| addr + n as u64 <= **b + v.len() as u64)
        else {
            return format!("{addr:016x}: Cannot access memory\r\n");
        };
        let off = (addr - base) as usize;
        let data = &bytes[off..off + n];
        let mut out = String::new();
        for (i, chunk) in data.chunks(8).enumerate() {
            let _ = write!(out, "{:016x}:", addr + i as u64 * 8);
            for b in chunk {
                let _ = write!(out, " 0x{b:02x}");
            }
            out.push_str("\r\n");
        }
        out
    }

    pub fn view_for(serial: &str, mem: &BTreeMap<u64, Vec<u8>>, fsts: u32) -> OracleView {
        OracleView {
            functions: Vec::new(),
            nodes: nodes(),
            raw_json: String::new(),
            monitor: monitor_commands(serial)
                .into_iter()
                .map(|c| MonitorReply {
                    output: Ok(fake_xp(&c, mem, fsts)),
                    command: c,
                })
                .collect(),
        }
    }

    fn lines(s: &str) -> Vec<&str> {
        s.lines().collect()
    }

    fn judge(serial: &str) -> Vec<String> {
        judge_with(serial, &good_memory())
    }

    fn judge_with(serial: &str, mem: &BTreeMap<u64, Vec<u8>>) -> Vec<String> {
        let view = view_for(serial, mem, 0);
        check(&lines(serial), Unit::Vtd, Ok(&view), "")
    }

    /// Replaces exactly one occurrence.
    fn edit(s: &str, from: &str, to: &str) -> String {
        assert_eq!(s.matches(from).count(), 1, "{from:?}");
        s.replacen(from, to, 1)
    }

    /// The line of experiment `n` in `good_log`.
    fn exp_line(n: u32) -> String {
        good_log()
            .lines()
            .find(|l| l.contains(&format!("dmatest {n} ")))
            .unwrap()
            .to_string()
    }

    #[test]
    fn decodes_fault_records() {
        // QEMU 7.2: write by 00:01.0 to 0x310000, reason 5.
        let f = parse_frcd("0x8000000500000008:0x0000000000310000").unwrap();
        assert!(f.fault());
        assert!(!f.is_read());
        assert_eq!(f.reason(), 5);
        assert_eq!(f.source_id(), 0x0008);
        assert_eq!(f.page(), 0x31_0000);
        let f = parse_frcd("0x4000000200000010:0x1234").unwrap();
        assert!(!f.fault());
        assert!(f.is_read());
        assert_eq!((f.reason(), f.source_id(), f.page()), (2, 0x10, 0x1000));
        assert_eq!(f.to_string(), "0x4000000200000010:0x0000000000001234");
        assert!(parse_frcd("0x1").is_err());
        assert!(parse_frcd("1:2").is_err());
        assert_eq!(fault_reason_name(2), "context entry not present");
        assert_eq!(rid_label(0x0010), "0x0010 (00:02.0)");
        assert_eq!(
            Bdf::requester_id(Bdf {
                bus: 3,
                dev: 1,
                func: 2
            }),
            0x030a
        );
    }

    #[test]
    fn parses_values() {
        assert_eq!(parse_hex("0x00ff"), Ok(0xff));
        assert!(parse_hex("ff").is_err());
        assert!(parse_hex("0x").is_err());
        assert!(parse_hex("0x1_0").is_err());
        assert!(parse_hex("0x11112222333344445").is_err());
        assert_eq!(parse_bytes("00a5FF"), Ok(vec![0, 0xa5, 0xff]));
        assert!(parse_bytes("0a5").is_err());
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("0xab").is_err());
        assert!(parse_bytes(&"00".repeat(4097)).is_err());
    }

    #[test]
    fn parses_the_report() {
        let log =
            good_log() + "[INFO  dmatest] running on dmar0\n[INFO  dmatest] dmatest 7 bogus\n";
        let r = DmaReport::parse(&lines(&log));
        assert_eq!(r.experiments.len(), 6);
        let e = &r.experiments[0];
        assert_eq!((e.line, e.number, e.name.as_str()), (2, 1, "map-dma"));
        assert_eq!(e.get("iova"), Some("0x1000000"));
        assert_eq!(e.get("nope"), None);
        assert_eq!(r.done, Some((8, 6)));
        assert!(r.errors.is_empty());
        assert_eq!(
            r.problems,
            ["line 11: experiment line without `NAME:`: \"dmatest 7 bogus\""]
        );
        // Bare lines (no prefix), free text and annotations after values are fine.
        let r = DmaReport::parse(&[
            "dmatest 1 map-dma: iova=0x1000 (an IOVA) buf=0x2000",
            "[ERROR dmatest] no IOMMU: cannot run the DMA self-test",
            "EDU: clamping DMA 0x0000000010001000 to 0x0000000000001000!",
            "dmatest 2 x: a=1 a=2",
            "dmatest done: six",
        ]);
        assert_eq!(r.experiments.len(), 1);
        assert_eq!(r.experiments[0].fields.len(), 2);
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.edu_messages.len(), 1);
        assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
    }

    #[test]
    fn parses_qemu_xp_output() {
        // Verbatim from QEMU 7.2.22 (`human-monitor-command`), the same on 10.0.2.
        let out = "0000000000100000: 0x04 0x00 0x00 0x00 0x08 0x00 0x00 0x00\r\n0000000000100008: 0x12 0x00 0x00 0x00 0x58 0x65 0x6e 0x00\r\n";
        assert_eq!(
            parse_xp_bytes(out, 0x10_0000, 16).unwrap(),
            [4, 0, 0, 0, 8, 0, 0, 0, 0x12, 0, 0, 0, 0x58, 0x65, 0x6e, 0]
        );
        assert!(
            parse_xp_bytes(out, 0x10_0000, 15)
                .unwrap_err()
                .contains("returned 16 values, expected 15")
        );
        assert!(
            parse_xp_bytes(out, 0x10_0008, 16)
                .unwrap_err()
                .contains("expected 0x100008")
        );
        assert_eq!(
            parse_xp("00000000fed90034: 0x00000002\r\n", VTD_FSTS, 4, 1),
            Ok(vec![2])
        );
        assert_eq!(
            parse_xp(
                "0000000020000000: Cannot access memory\r\n",
                0x2000_0000,
                1,
                8
            ),
            Err("QEMU cannot access guest memory at 0x20000000".into())
        );
        assert!(parse_xp("garbage", 0, 1, 1).is_err());
        // The fake renders the same format.
        let mem = BTreeMap::from([(0x10_0000, (0u8..16).collect::<Vec<u8>>())]);
        let f = fake_xp("xp /10xb 0x100002", &mem, 0);
        assert_eq!(
            f,
            "0000000000100002: 0x02 0x03 0x04 0x05 0x06 0x07 0x08 0x09\r\n000000000010000a: 0x0a 0x0b\r\n"
        );
        assert_eq!(
            parse_xp_bytes(&f, 0x10_0002, 10).unwrap(),
            (2u8..12).collect::<Vec<_>>()
        );
    }

    #[test]
    fn monitor_commands_read_every_printed_buffer() {
        let c = monitor_commands(&good_log());
        assert_eq!(
            c,
            [
                "xp /64xb 0x300000",
                "xp /64xb 0x301000",
                "xp /64xb 0x310000",
                "xp /64xb 0x330000",
                "xp /64xb 0x320000",
                "xp /64xb 0x400000",
                "xp /64xb 0x340000",
                "xp /1xw 0xfed90034",
            ]
        );
        assert!(monitor_commands("[INFO  boot] holding:\n").is_empty());
    }

    #[test]
    fn a_correct_run_passes() {
        assert_eq!(judge(&good_log()), Vec::<String>::new());
    }

    #[test]
    fn the_kernel_as_it_is_today_fails_with_the_expectation() {
        let log = "[INFO  boot] pci: enumerated 6 functions\n[INFO  boot] holding:\n";
        let f = judge(log);
        assert_eq!(
            f,
            [
                "the kernel printed no `dmatest` results (expected `dmatest N NAME: key=value ...` for 1 map-dma, 2 unmapped-blocked, 3 unmap-invalidates, 4 readonly-blocks-write, 5 superpage, 6 never-attached and `dmatest done: 6 experiments`)"
            ]
        );
        // The kernel could not run them: its ERROR line is shown.
        let log = "[ERROR dmatest] dmatest: no remapping unit for 0000:00:01.0\n";
        let f = check(&lines(log), Unit::Vtd, Err("no QEMU view".into()), "");
        assert_eq!(f.len(), 3, "{f:?}");
        assert_eq!(
            f[0],
            "line 1: the kernel reports: [ERROR dmatest] dmatest: no remapping unit for 0000:00:01.0"
        );
        assert_eq!(f[2], "no QEMU view");
    }

    #[test]
    fn map_dma_failures() {
        let bad = hex(&[0u8; 64]);
        let line = exp_line(1);
        let p = hex(&pattern(1));
        let new = line.replacen(&format!("result={p}"), &format!("result={bad}"), 1);
        let mut mem = good_memory();
        mem.insert(BUF_B, vec![0; 64]);
        let f = judge_with(&edit(&good_log(), &line, &new), &mem);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].starts_with(
                "dmatest 1 map-dma (line 2): result != pattern (first difference at byte 0: result 0x00, pattern 0x01): the DMA through the mappings did not deliver the data; result=0000"
            ),
            "{f:?}"
        );
        // The kernel printed the right result, but memory says otherwise.
        let mut mem = good_memory();
        mem.get_mut(&BUF_B).unwrap()[63] ^= 0xff;
        let f = judge_with(&good_log(), &mem);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].starts_with("dmatest 1 map-dma (line 2): guest memory at buf_b=0x301000 holds "),
            "{f:?}"
        );
        assert!(
            f[0].contains("(first difference at byte 63: memory 0x"),
            "{f:?}"
        );
        // Missing and malformed keys, an IOVA the edu would clamp, a flat pattern.
        let new = line
            .replacen("iova_b=0x1001000 ", "", 1)
            .replacen("iova=0x1000000", "iova=0x10000000", 1)
            .replacen("buf=0x300000", "buf=300000", 1)
            .replace(&p, &bad);
        let f = judge_with(&edit(&good_log(), &line, &new), &BTreeMap::new());
        let want = [
            "dmatest 1 map-dma (line 2): no `iova_b=` value",
            "dmatest 1 map-dma (line 2): buf: \"300000\" is not 0x-hex",
            "dmatest 1 map-dma (line 2): iova=0x10000000 is beyond the edu's 28-bit DMA mask (0xfffffff): the edu would DMA to 0x0 instead",
            "dmatest 1 map-dma (line 2): pattern is all 0x00: indistinguishable from a failed access; use varied bytes",
        ];
        assert_eq!(&f[..4], want, "{f:?}");
        assert!(
            f[4].contains("guest memory at buf_b=0x301000: QEMU cannot access"),
            "{f:?}"
        );
    }

    #[test]
    fn unmapped_blocked_failures() {
        let line = exp_line(2);
        let canary = hex(&[0xc5; 64]);
        let p = hex(&pattern(1));
        // The DMA got through (canary overwritten), no fault recorded, wrong rid.
        let new = line
            .replacen(&format!("after={canary}"), &format!("after={p}"), 1)
            .replacen(
                &frcd(5, 8, CANARY),
                "0x0000000000000000:0x0000000000000000",
                1,
            )
            .replacen("rid=0x0008", "rid=0x0010", 1);
        let mut mem = good_memory();
        mem.insert(CANARY, pattern(1));
        let f = judge_with(&edit(&good_log(), &line, &new), &mem);
        assert_eq!(
            f,
            [
                "dmatest 2 unmapped-blocked (line 3): rid=0x0010 (00:02.0) but QEMU has e1 at requester id 0x0008 (00:01.0)",
                &format!(
                    "dmatest 2 unmapped-blocked (line 3): after != canary (first difference at byte 0: after 0x01, canary 0xc5): the DMA to the unmapped IOVA reached memory; after={p}"
                ),
                "dmatest 2 unmapped-blocked (line 3): frcd=0x0000000000000000:0x0000000000000000: F (bit 127) is clear: the unit recorded no fault for the blocked DMA",
                "  context: intel-iommu FSTS at hold = 0x00000000",
            ]
        );
        // A fault, but from the wrong device, page, type and with a context-level reason.
        let hi = 1u64 << 63 | 1 << 62 | 2 << 32 | 0x10;
        let new = line.replacen(
            &frcd(5, 8, CANARY),
            &format!("0x{hi:x}:0x{:x}", CANARY + 0x1000),
            1,
        );
        let f = judge(&edit(&good_log(), &line, &new));
        let tail: Vec<&str> = f.iter().map(|s| s.split(": ").last().unwrap()).collect();
        assert_eq!(f.len(), 5, "{f:?}");
        assert!(f[0].contains("T (bit 126) = 1, a read request"), "{f:?}");
        assert!(
            f[1].ends_with(
                "source id 0x0010 (00:02.0), expected 0x0008 (00:01.0) = e1 per query-pci"
            ),
            "{f:?}"
        );
        assert!(
            f[2].ends_with("fault address 0x311000, expected the page of iova=0x310000 (0x310000)"),
            "{f:?}"
        );
        assert!(
            f[3].contains("fault reason 0x02 (context entry not present): e1 is not attached"),
            "{tail:?}"
        );
        // A canary elsewhere than the IOVA proves less.
        let new = line
            .replacen("iova=0x310000", "iova=0x2000000", 1)
            .replacen(&frcd(5, 8, CANARY), &frcd(5, 8, 0x200_0000), 1);
        let f = judge(&edit(&good_log(), &line, &new));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].contains("target=0x310000 is not the page of iova=0x2000000"),
            "{f:?}"
        );
        // The bytes sent equal the canary: the experiment cannot tell.
        let new = format!("{line} sent={canary}");
        let f = judge(&edit(&good_log(), &line, &new));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].ends_with("canary equals sent (what the edu writes): a DMA that got through would go unnoticed; fill the target with other bytes first"),
            "{f:?}"
        );
    }

    #[test]
    fn unmap_invalidates_failures() {
        let line = exp_line(3);
        let p = hex(&pattern(1));
        let fill = hex(&pattern(200));
        // Stale IOTLB: the second DMA still lands, and no fault is recorded.
        let new = line
            .replacen(
                &format!("second_target_after={fill}"),
                &format!("second_target_after={p}"),
                1,
            )
            .replacen(
                &frcd(5, 8, 0x110_0000),
                "0x0000000000000000:0x0000000000000000",
                1,
            );
        let mut mem = good_memory();
        mem.insert(UNMAP_BUF, pattern(1));
        let f = judge_with(&edit(&good_log(), &line, &new), &mem);
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(
            f[0].contains("second_target_after != second_target_before (first difference at byte 0: second_target_after 0x01, second_target_before 0xc8): the DMA after unmap reached memory: the unmap did not take effect (a stale IOTLB entry?"),
            "{f:?}"
        );
        assert!(f[1].contains("F (bit 127) is clear"), "{f:?}");
        // The first DMA failed; the target was not refilled before the second.
        let new = line
            .replace(&fill, "TMP")
            .replacen(&format!("first={p}"), &format!("first={fill}"), 1)
            .replace("TMP", &p);
        let f = judge_with(&edit(&good_log(), &line, &new), &BTreeMap::new());
        assert!(
            f[0].contains("first != pattern (first difference at byte 0"),
            "{f:?}"
        );
        assert!(
            f[1].ends_with("second_target_before equals pattern (what the edu writes): a DMA that got through would go unnoticed; fill the target with other bytes first"),
            "{f:?}"
        );
    }

    #[test]
    fn readonly_failures() {
        let line = exp_line(4);
        let ro = hex(&pattern(9));
        let p = hex(&pattern(1));
        // Written through, and the fault reason is not "write to read-only".
        let new = line
            .replacen(&format!("after={ro}"), &format!("after={p}"), 1)
            .replacen(&frcd(5, 8, 0x120_0000), &frcd(7, 8, 0x120_0000), 1);
        let mut mem = good_memory();
        mem.insert(RO_BUF, pattern(1));
        let f = judge_with(&edit(&good_log(), &line, &new), &mem);
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(
            f[0].contains("after != before (first difference at byte 0: after 0x01, before 0x09): the device wrote through a read-only mapping"),
            "{f:?}"
        );
        assert!(
            f[1].ends_with("fault reason 0x07 (error accessing a paging entry), expected 0x05 (write to a page without write permission)"),
            "{f:?}"
        );
        assert!(f[2].starts_with("  context: intel-iommu FSTS"), "{f:?}");
    }

    #[test]
    fn uncleared_fault_record() {
        let old = frcd(5, 8, 0x110_0000);
        let log = edit(&good_log(), &old, &frcd(5, 8, CANARY));
        let f = judge(&log);
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(
            f[0].ends_with(
                "fault address 0x310000, expected the page of iova=0x1100000 (0x1100000)"
            ),
            "{f:?}"
        );
        assert_eq!(
            f[1],
            "dmatest 3 unmap-invalidates (line 4): frcd=0x8000000500000008:0x0000000000310000 is experiment 2's record again: the kernel did not clear F (write 1 to bit 127) after experiment 2, so the unit recorded nothing new"
        );
        assert!(f[2].starts_with("  context: "), "{f:?}");
    }

    #[test]
    fn superpage_failures() {
        let line = exp_line(5);
        let new = line
            .replacen("page_size=0x200000", "page_size=0x1000", 1)
            .replacen("leaf_level=2", "leaf_level=1", 1)
            .replacen(&format!("pte=0x{:x}", SUPER_BUF | 0x83), "pte=0x401003", 1)
            .replacen("iova=0x1400000", "iova=0x1401000", 1);
        let f = judge(&edit(&good_log(), &line, &new));
        assert_eq!(
            f,
            [
                "dmatest 5 superpage (line 6): iova=0x1401000 is not 2 MiB aligned",
                "dmatest 5 superpage (line 6): page_size=0x1000: the mapping was not made with a 2 MiB page (expected 0x200000)",
                "dmatest 5 superpage (line 6): leaf_level=1: a 2 MiB leaf sits at level 2 of the second-level table",
                "dmatest 5 superpage (line 6): pte=0x401003: PS (bit 7) is clear, the leaf is not a superpage entry",
                "dmatest 5 superpage (line 6): pte=0x401003: bits 20:12 must be zero in a 2 MiB leaf (address not 2 MiB aligned / reserved)",
            ]
        );
    }

    #[test]
    fn never_attached_failures() {
        let line = exp_line(6);
        let canary = hex(&[0xc5; 64]);
        let p = hex(&pattern(1));
        // e1 used instead of e2, the write landed, a translation-level reason.
        let new = line
            .replacen("rid=0x0010", "rid=0x0008", 1)
            .replacen(&format!("after={canary}"), &format!("after={p}"), 1)
            .replacen(&frcd(2, 0x10, E2_TARGET), &frcd(5, 0x08, E2_TARGET), 1);
        let mut mem = good_memory();
        mem.insert(E2_TARGET, pattern(1));
        let f = judge_with(&edit(&good_log(), &line, &new), &mem);
        assert_eq!(f.len(), 6, "{f:?}");
        assert!(
            f[0].ends_with("rid=0x0008 (00:01.0) but QEMU has e2 at requester id 0x0010 (00:02.0)"),
            "{f:?}"
        );
        assert!(
            f[1].ends_with("rid is e1's: the experiment must use the second edu e2"),
            "{f:?}"
        );
        assert!(
            f[2].contains("the DMA of the never-attached edu reached memory"),
            "{f:?}"
        );
        assert!(
            f[3].ends_with(
                "source id 0x0008 (00:01.0), expected 0x0010 (00:02.0) = e2 per query-pci"
            ),
            "{f:?}"
        );
        assert!(
            f[4].ends_with("fault reason 0x05 (write to a page without write permission), expected 0x02 (context entry not present) or 0x01 (root entry not present)"),
            "{f:?}"
        );
        // Root entry not present is fine too.
        let new = line.replacen(&frcd(2, 0x10, E2_TARGET), &frcd(1, 0x10, E2_TARGET), 1);
        assert!(judge(&edit(&good_log(), &line, &new)).is_empty());
    }

    #[test]
    fn bookkeeping_failures() {
        let log = good_log();
        // Missing experiment, wrong name, a duplicate, unknown number, bad done count.
        let log = edit(&log, &(exp_line(4) + "\n"), "");
        let log = edit(&log, "dmatest 5 superpage:", "dmatest 5 super-page:");
        let log = edit(
            &log,
            "[INFO  dmatest] dmatest done: 6 experiments\n",
            &format!(
                "{}\n[INFO  dmatest] dmatest 9 extra: a=1\n[INFO  dmatest] dmatest done: 5 experiments\n",
                exp_line(6)
            ),
        );
        let f = judge(&log);
        assert_eq!(
            f,
            [
                "experiment 4 (readonly-blocks-write): no `dmatest 4 readonly-blocks-write: ...` line",
                "dmatest 5 super-page (line 5): experiment 5 must be named `superpage`",
                "experiment 6 (never-attached) printed 2 times (lines 6, 7)",
                "line 8: unknown experiment 9 (extra)",
                "line 9: the kernel says `dmatest done: 5 experiments`, expected 6",
            ]
        );
        // No done line; an experiment after it; QEMU's edu complaining.
        let log = edit(
            &good_log(),
            "[INFO  dmatest] dmatest done: 6 experiments\n",
            "",
        );
        let f = judge(&log);
        assert_eq!(f, ["no `dmatest done: 6 experiments` line"]);
        let log = format!(
            "{}EDU: clamping DMA 0x0000000010001000 to 0x0000000000001000!\n",
            good_log()
        );
        let f = check(
            &lines(&log),
            Unit::Vtd,
            Ok(&view_for(&log, &good_memory(), 3)),
            "qemu: hardware error: EDU: DMA range 0x40000-0x40fff out of bounds (0x40000-0x40fff)!\nCPU #0:\n",
        );
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(
            f[0],
            "line 10: QEMU's edu complains: EDU: clamping DMA 0x0000000010001000 to 0x0000000000001000! (bus addresses must stay below the edu's 28-bit DMA mask 0xfffffff)"
        );
        assert!(
            f[1].starts_with(
                "QEMU's edu aborted the machine: qemu: hardware error: EDU: DMA range"
            )
        );
        assert_eq!(
            fsts_context(&view_for(&log, &good_memory(), 3)).unwrap(),
            "  context: intel-iommu FSTS at hold = 0x00000003 (PFO: a fault was lost because the recording register was still full — clear F (write 1 to bit 127) after each experiment; PPF: a fault is pending in record 0)"
        );
    }

    #[test]
    fn without_qemu_the_log_is_still_judged() {
        let f = check(
            &lines(&good_log()),
            Unit::Vtd,
            Err("no QEMU view of the PCI bus: x".into()),
            "",
        );
        assert_eq!(
            f,
            ["no QEMU view of the PCI bus: x: requester ids and guest memory not cross-checked"]
        );
        // The printed rid is then used for the source id check.
        let log = edit(&good_log(), "rid=0x0008", "rid=0x0018");
        let f = check(&lines(&log), Unit::Vtd, Err("none".into()), "");
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[1].contains("source id 0x0008 (00:01.0), expected 0x0018 (00:03.0)"));
        // QEMU without e2: the rid cannot be named.
        let mut view = view_for(&good_log(), &good_memory(), 0);
        view.nodes.retain(|n| n.qdev_id.as_deref() != Some("e2"));
        let f = check(&lines(&good_log()), Unit::Vtd, Ok(&view), "");
        assert!(
            f[0].starts_with(
                "cannot name the expected requester id: QEMU has no PCI device with id \"e2\""
            ),
            "{f:?}"
        );
    }

    #[test]
    fn monitor_failures_are_reported() {
        let log = good_log();
        let mut view = view_for(&log, &good_memory(), 0);
        view.monitor.retain(|r| !r.command.contains("0x301000"));
        view.monitor[0].output = Err("QMP connection closed".into());
        let f = check(&lines(&log), Unit::Vtd, Ok(&view), "");
        assert_eq!(
            f,
            [
                "dmatest 1 map-dma (line 2): guest memory at buf=0x300000: `xp /64xb 0x300000` failed: QMP connection closed",
                "dmatest 1 map-dma (line 2): guest memory at buf_b=0x301000: not read (QEMU was not asked `xp /64xb 0x301000` while the kernel held)",
            ]
        );
    }

    #[test]
    fn never_panics_on_garbage() {
        for s in [
            "dmatest",
            "dmatest ",
            "dmatest 1",
            "dmatest 1 :",
            "dmatest 1 map-dma:",
            "dmatest 99999999999 x: a=b",
            "dmatest 5 superpage: iova=0xffffffffffffffff size=0xffffffffffffffff pte=0x",
            "dmatest 2 unmapped-blocked: frcd=0x:0x rid=0x10000 iova=0xfffffffffffff000 canary=00 after=",
            "dmatest done:",
            "[ERROR dmatest]",
            "[INFO  dmatest] \u{1b}[0m\u{fffd}",
        ] {
            let f = check(&[s], Unit::Vtd, Err("x".into()), "");
            let _ = monitor_commands(s);
            assert!(!f.is_empty(), "{s:?}");
        }
    }

    // ---- amd-iommu ----

    /// q35 + amd-iommu + topology `dma` as QEMU 7.2 and 10.0 list it: the IOMMU's own
    /// function (no qdev id) at 00:01.0 pushes the edus to 00:02.0 and 00:03.0.
    pub fn amd_nodes() -> Vec<PciNode> {
        let node = |bus, dev, func, id: &str, class| PciNode {
            bdf: Bdf { bus, dev, func },
            qdev_id: (!id.is_empty()).then(|| id.to_string()),
            class,
            secondary: None,
        };
        vec![
            node(0, 0, 0, "", 0x0600),
            node(0, 1, 0, "", 0x0806),
            node(0, 2, 0, "e1", 0x00ff),
            node(0, 3, 0, "e2", 0x00ff),
            node(0, 0x1f, 0, "", 0x0601),
            node(0, 0x1f, 2, "", 0x0106),
            node(0, 0x1f, 3, "", 0x0c05),
        ]
    }

    /// The IO_PAGE_FAULT QEMU's `amdvi_page_fault` would log for the edu's blocked
    /// 64-byte write to `addr` (its last 4-byte piece), had the Debian builds not
    /// compiled the logging out: devfn only, flags I | QEMU's write permission (2).
    pub fn amd_event(devfn: u16, addr: u64) -> String {
        format!(
            "0x{:016x}:0x{:016x}",
            addr + 0x3c,
            0x200a_u64 << 48 | u64::from(devfn)
        )
    }

    /// An AMD v1 PTE mapping 2 MiB at level 2: NextLevel 0, PR, IR, IW.
    pub fn amd_leaf(addr: u64) -> u64 {
        addr | 1 | 3 << 61
    }

    /// A passing amd-iommu report; `events` are the `event=` values of experiments
    /// 2, 3, 4 and 6.
    pub fn amd_log_with(events: [&str; 4]) -> String {
        let mut log = good_log();
        for (i, (n, reason, sid, addr)) in [
            (2, 5, 0x08, CANARY),
            (3, 5, 0x08, 0x110_0000),
            (4, 5, 0x08, 0x120_0000),
            (6, 2, 0x10, E2_TARGET),
        ]
        .into_iter()
        .enumerate()
        {
            let line = exp_line(n);
            let new = line.replacen(
                &format!("frcd={}", frcd(reason, sid, addr)),
                &format!("event={}", events[i]),
                1,
            );
            log = edit(&log, &line, &new);
        }
        let log = edit(&log, "rid=0x0010", "rid=0x0018");
        let log = edit(&log, "rid=0x0008", "rid=0x0010");
        edit(
            &log,
            &format!("pte=0x{:x}", SUPER_BUF | 0x83),
            &format!("pte=0x{:x}", amd_leaf(SUPER_BUF)),
        )
    }

    /// What QEMU 7.2 and 10.0 give a correct kernel: no event log entries.
    pub fn amd_log_none() -> String {
        amd_log_with(["none"; 4])
    }

    /// A correct kernel on a QEMU that logs IO_PAGE_FAULTs as `amdvi_page_fault`
    /// encodes them.
    pub fn amd_log_events() -> String {
        amd_log_with([
            &amd_event(0x10, CANARY),
            &amd_event(0x10, 0x110_0000),
            &amd_event(0x10, 0x120_0000),
            &amd_event(0x18, E2_TARGET),
        ])
    }

    /// amd-iommu's registers at hold: Control = IommuEn | EventLogEn, Status =
    /// EventLogRun, head = tail = 0 (what QEMU shows after the experiments).
    pub fn amd_regs(control: u32) -> BTreeMap<u64, u32> {
        BTreeMap::from([
            (amdvi_event::AMDVI_CONTROL, control),
            (amdvi_event::AMDVI_EVENT_HEAD + 0x10, 0x8),
        ])
    }

    pub fn amd_view_for(
        serial: &str,
        mem: &BTreeMap<u64, Vec<u8>>,
        regs: &BTreeMap<u64, u32>,
    ) -> OracleView {
        OracleView {
            functions: Vec::new(),
            nodes: amd_nodes(),
            raw_json: String::new(),
            monitor: amd_monitor_commands(serial)
                .into_iter()
                .map(|c| MonitorReply {
                    output: Ok(fake_xp_words(&c, mem, regs)),
                    command: c,
                })
                .collect(),
        }
    }

    fn amd_judge_with(serial: &str, mem: &BTreeMap<u64, Vec<u8>>) -> Vec<String> {
        let view = amd_view_for(serial, mem, &amd_regs(0x5));
        check(&lines(serial), Unit::AmdVi, Ok(&view), "")
    }

    fn amd_judge(serial: &str) -> Vec<String> {
        amd_judge_with(serial, &good_memory())
    }

    /// The line of experiment `n` in `log`.
    fn line_of(log: &str, n: u32) -> String {
        log.lines()
            .find(|l| l.contains(&format!("dmatest {n} ")))
            .unwrap()
            .to_string()
    }

    #[test]
    fn amd_correct_runs_pass() {
        // What QEMU 7.2/10.0 can give (no event log entries), and decoded entries.
        assert_eq!(amd_judge(&amd_log_none()), Vec::<String>::new());
        assert_eq!(amd_judge(&amd_log_events()), Vec::<String>::new());
        // A spec-style IO_PAGE_FAULT (RW and PR set, full requester id) passes too.
        let spec = format!(
            "0x{CANARY:016x}:0x{:016x}",
            0x2030_u64 << 48 | 1 << 32 | 0x10
        );
        let log = amd_log_with([&spec, "none", "none", "none"]);
        assert_eq!(amd_judge(&log), Vec::<String>::new());
        assert_eq!(
            amd_monitor_commands(&amd_log_none()),
            [
                "xp /64xb 0x300000",
                "xp /64xb 0x301000",
                "xp /64xb 0x310000",
                "xp /64xb 0x330000",
                "xp /64xb 0x320000",
                "xp /64xb 0x400000",
                "xp /64xb 0x340000",
                "xp /2xw 0xfed80018",
                "xp /6xw 0xfed82010",
            ]
        );
        // The fake renders MMIO words as QEMU does (4 a line).
        assert_eq!(
            fake_xp_words("xp /6xw 0xfed82010", &BTreeMap::new(), &amd_regs(5)),
            "00000000fed82010: 0x00000000 0x00000000 0x00000000 0x00000000\r\n00000000fed82020: 0x00000008 0x00000000\r\n"
        );
    }

    #[test]
    fn amd_wrong_device_address_and_direction() {
        let log = amd_log_events();
        let line = line_of(&log, 2);
        // Logged for 00:01.0 (the IOMMU's own function), the next page, a read.
        let bad = format!(
            "0x{:016x}:0x{:016x}",
            CANARY + 0x1000,
            0x2009_u64 << 48 | 0x08
        );
        let new = line.replacen(&amd_event(0x10, CANARY), &bad, 1);
        let f = amd_judge(&edit(&log, &line, &new));
        let shown = format!(
            "dmatest 2 unmapped-blocked (line 3): event={bad} [IO_PAGE_FAULT device 0x0008 address 0x311000 flags 0x009 (I, QEMU read)]"
        );
        assert_eq!(
            f,
            [
                format!(
                    "{shown}: device id 0x0008 (00:01.0), expected 0x0010 (00:02.0) = e1 per query-pci (QEMU logs the devfn only: an id with bus 0 matches on devfn)"
                ),
                format!(
                    "{shown}: fault address 0x311000, expected an address in the page of iova=0x310000 (0x310000)"
                ),
                format!(
                    "{shown}: a read request (RW, flag bit 5, clear; QEMU's permission bits 1:0 = 1); the edu's blocked access was a write (edu → RAM)"
                ),
                "  context: amd-iommu at hold: Control 0x5 (IommuEn, EventLogEn); event log head 0x0, tail 0x0, Status 0x8 (EventLogRun) (QEMU 7.2 and 10.0 write no event log entries and never move the tail register)".to_string(),
            ]
        );
        // Experiment 6 logged with e1's devfn: the never-attached edu is e2 (00:03.0).
        let line = line_of(&log, 6);
        let new = line.replacen(&amd_event(0x18, E2_TARGET), &amd_event(0x10, E2_TARGET), 1);
        let f = amd_judge(&edit(&log, &line, &new));
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(
            f[0].ends_with(
                "device id 0x0010 (00:02.0), expected 0x0018 (00:03.0) = e2 per query-pci (QEMU logs the devfn only: an id with bus 0 matches on devfn)"
            ),
            "{f:?}"
        );
    }

    /// QEMU drops the bus from page-walk events: a device behind a bridge is matched on
    /// its devfn when the event's bus byte is 0, never across buses otherwise.
    #[test]
    fn amd_device_id_without_bus_matches_on_devfn() {
        let log = amd_log_with([&amd_event(0x08, CANARY), "none", "none", "none"]);
        let log = edit(&log, "rid=0x0010", "rid=0x0308");
        let mut view = amd_view_for(&log, &good_memory(), &amd_regs(5));
        for n in &mut view.nodes {
            if n.qdev_id.as_deref() == Some("e1") {
                n.bdf = Bdf {
                    bus: 3,
                    dev: 1,
                    func: 0,
                };
            }
        }
        assert_eq!(
            check(&lines(&log), Unit::AmdVi, Ok(&view), ""),
            Vec::<String>::new()
        );
        // The same id with another bus in the event is another device.
        let log = edit(&log, &amd_event(0x08, CANARY), &amd_event(0x0108, CANARY));
        let view = OracleView {
            monitor: amd_view_for(&log, &good_memory(), &amd_regs(5)).monitor,
            ..view
        };
        let f = check(&lines(&log), Unit::AmdVi, Ok(&view), "");
        assert!(
            f[0].contains("device id 0x0108 (01:01.0), expected 0x0308 (03:01.0) = e1"),
            "{f:?}"
        );
    }

    #[test]
    fn amd_missing_malformed_and_foreign_events() {
        let log = amd_log_none();
        // No event= at all; the VT-d key instead; an empty slot; garbage.
        let l4 = line_of(&log, 4);
        let l3 = line_of(&log, 3);
        let l2 = line_of(&log, 2);
        let log = edit(&log, &l4, &l4.replacen("event=none", "frcd=0x0:0x0", 1));
        let log = edit(&log, &l3, &l3.replacen("event=none", "event=0x0:0x0", 1));
        let log = edit(&log, &l2, &l2.replacen(" event=none", "", 1));
        let l6 = line_of(&log, 6);
        let log = edit(&log, &l6, &l6.replacen("event=none", "event=blocked", 1));
        let f = amd_judge(&log);
        assert_eq!(
            f[..4],
            [
                "dmatest 2 unmapped-blocked (line 3): no `event=` value",
                "dmatest 3 unmap-invalidates (line 4): event=0x0000000000000000:0x0000000000000000 [no event (an empty log slot) device 0x0000 address 0x0 flags 0x000]: event code 0x0 (no event (an empty log slot)), expected 0x2 (IO_PAGE_FAULT): print `event=none` when the log got no new entry",
                "dmatest 4 readonly-blocks-write (line 5): no `event=` value (`frcd=` is intel-iommu's; on amd-iommu print the experiment's last new event log entry as event=0x<hi>:0x<lo>, or event=none)",
                "dmatest 6 never-attached (line 7): event: \"blocked\" is neither `none` nor 0x<high qword>:0x<low qword>",
            ]
        );
        assert!(f[4].starts_with("  context: amd-iommu at hold"), "{f:?}");
        assert_eq!(f.len(), 5, "{f:?}");
        // An ILLEGAL_DEV_TABLE_ENTRY for e2 (full requester id, the DTE's address).
        let log = amd_log_none();
        let l6 = line_of(&log, 6);
        let ill = format!("0x{:016x}:0x{:016x}", 0x10_0300, 0x1000_u64 << 48 | 0x18);
        let f = amd_judge(&edit(
            &log,
            &l6,
            &l6.replacen("event=none", &format!("event={ill}"), 1),
        ));
        assert!(
            f[0].ends_with("event code 0x1 (ILLEGAL_DEV_TABLE_ENTRY), expected 0x2 (IO_PAGE_FAULT): the device's DTE has reserved bits set (QEMU 7.2: bits 6:2 and 63 of qword 0 among others; QEMU 10.0 also wants qword 3 all zero); such a DTE blocks every DMA of the device"),
            "{f:?}"
        );
        // A VT-d scenario given AMD evidence.
        let f = judge(&edit(
            &good_log(),
            &exp_line(4),
            &exp_line(4).replacen(&format!("frcd={}", frcd(5, 8, 0x120_0000)), "event=none", 1),
        ));
        assert!(
            f[0].ends_with("no `frcd=` value (`event=` is amd-iommu's; on intel-iommu print the fault recording register as frcd=0x<high>:0x<low>)"),
            "{f:?}"
        );
    }

    #[test]
    fn amd_stale_event() {
        // Experiment 3 reports experiment 2's entry again.
        let log = amd_log_with([
            &amd_event(0x10, CANARY),
            &amd_event(0x10, CANARY),
            "none",
            "none",
        ]);
        let f = amd_judge(&log);
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(
            f[0].ends_with("fault address 0x31003c, expected an address in the page of iova=0x1100000 (0x1100000)"),
            "{f:?}"
        );
        assert_eq!(
            f[1],
            "dmatest 3 unmap-invalidates (line 4): event=0x000000000031003c:0x200a000000000010 is experiment 2's entry again: report only entries QEMU wrote after the experiment started (QEMU 7.2 and 10.0 never move the Event Log Tail register: find new entries in the log memory, and clear consumed ones)"
        );
        assert!(f[2].starts_with("  context: "), "{f:?}");
    }

    /// The DMA went straight to memory: what QEMU 10 with amd-iommu's default pt=on
    /// does. Experiments 2 and 6 show it, and the run-level diagnosis names the cause.
    #[test]
    fn amd_bypass_is_detected() {
        let log = amd_log_none();
        let canary = hex(&[0xc5; 64]);
        let p = hex(&pattern(1));
        let l2 = line_of(&log, 2);
        let l6 = line_of(&log, 6);
        let log = edit(
            &log,
            &l2,
            &l2.replacen(&format!("after={canary}"), &format!("after={p}"), 1),
        );
        let log = edit(
            &log,
            &l6,
            &l6.replacen(&format!("after={canary}"), &format!("after={p}"), 1),
        );
        let mut mem = good_memory();
        mem.insert(CANARY, pattern(1));
        mem.insert(E2_TARGET, pattern(1));
        let view = amd_view_for(&log, &mem, &amd_regs(0));
        let f = check(&lines(&log), Unit::AmdVi, Ok(&view), "");
        assert_eq!(f.len(), 4, "{f:?}");
        assert!(
            f[0].contains("after != canary (first difference at byte 0: after 0x01, canary 0xc5): the DMA to the unmapped IOVA reached memory"),
            "{f:?}"
        );
        assert!(
            f[1].contains("the DMA of the never-attached edu reached memory (a DTE with V=0 passes DMA untranslated: give never-attached devices V=1, TV=1, IR=IW=0)"),
            "{f:?}"
        );
        assert_eq!(
            f[2],
            "DMA bypassed translation: the write to the never-mapped IOVA (experiment 2) and the never-attached edu's write (experiment 6) both reached memory: QEMU 9.2-10.0 with amd-iommu's default pt=on do not translate emulated devices at all (the amdvi-dma scenario passes pt=off; with `run` use --amd-pt off), or the kernel left the IOMMU off (Control.IommuEn) or the edus' DTEs invalid (V=0 passes DMA untranslated)"
        );
        assert!(
            f[3].starts_with(
                "  context: amd-iommu at hold: Control 0x0 (IommuEn clear: the IOMMU was off)"
            ),
            "{f:?}"
        );
        // One of them alone is not a bypass.
        let log2 = edit(&log, &line_of(&log, 6), &l6);
        let mut mem = good_memory();
        mem.insert(CANARY, pattern(1));
        let f = amd_judge_with(&log2, &mem);
        assert_eq!(f.len(), 1, "{f:?}");
        // The VT-d wording of the same diagnosis.
        let vlog = good_log();
        let v2 = exp_line(2);
        let v6 = exp_line(6);
        let vlog = edit(
            &vlog,
            &v2,
            &v2.replacen(&format!("after={canary}"), &format!("after={p}"), 1),
        );
        let vlog = edit(
            &vlog,
            &v6,
            &v6.replacen(&format!("after={canary}"), &format!("after={p}"), 1),
        );
        let f = judge_with(&vlog, &mem);
        assert!(
            f.iter().any(|l| l.ends_with("both reached memory: the kernel did not enable translation (GCMD.TE), or the edus have pass-through context entries")),
            "{f:?}"
        );
    }

    #[test]
    fn amd_superpage_leaf() {
        let log = amd_log_none();
        let line = line_of(&log, 5);
        let good = format!("pte=0x{:x}", amd_leaf(SUPER_BUF));
        let cases = [
            // The VT-d leaf format: PS bit, R/W in bits 0-1, no IR/IW.
            (
                SUPER_BUF | 0x83,
                vec![
                    "pte=0x400083: neither IR (bit 61) nor IW (bit 62) is set: the leaf grants no access",
                ],
            ),
            // A pointer to a level-1 table, not present, misaligned.
            (
                0x40_1000 | 1 << 9 | 3 << 61,
                vec![
                    "pte=0x6000000000401200: PR (bit 0) is clear: the leaf is not present",
                    "pte=0x6000000000401200: NextLevel (bits 11:9) = 1: the entry points to a level-1 table, it is not a 2 MiB leaf",
                    "pte=0x6000000000401200: bits 20:12 must be zero in a 2 MiB leaf (address not 2 MiB aligned)",
                ],
            ),
            (
                amd_leaf(SUPER_BUF) | 7 << 9,
                vec![
                    "pte=0x6000000000400e01: NextLevel (bits 11:9) = 7, a page-size-encoded leaf; a 2 MiB leaf at level 2 has NextLevel 0",
                ],
            ),
        ];
        for (pte, want) in cases {
            let new = line.replacen(&good, &format!("pte=0x{pte:x}"), 1);
            let f = amd_judge(&edit(&log, &line, &new));
            let tails: Vec<&str> = f
                .iter()
                .map(|l| l.strip_prefix("dmatest 5 superpage (line 6): ").unwrap())
                .collect();
            assert_eq!(tails, want);
        }
        let new = line.replacen("leaf_level=2", "leaf_level=1", 1);
        assert_eq!(
            amd_judge(&edit(&log, &line, &new)),
            [
                "dmatest 5 superpage (line 6): leaf_level=1: a 2 MiB leaf sits at level 2 of the I/O page table"
            ]
        );
    }

    #[test]
    fn amd_never_panics_on_garbage() {
        for s in [
            "dmatest 2 unmapped-blocked: event= rid=0x10",
            "dmatest 2 unmapped-blocked: event=: iova=0x1",
            "dmatest 6 never-attached: event=0xffffffffffffffff:0xffffffffffffffff target=0xfffffffffffff000 rid=0x18",
            "dmatest 5 superpage: pte=0xffffffffffffffff leaf_level=99999999999999999999",
        ] {
            let f = check(&[s], Unit::AmdVi, Err("x".into()), "");
            let _ = amd_monitor_commands(s);
            assert!(!f.is_empty(), "{s:?}");
        }
    }
}
