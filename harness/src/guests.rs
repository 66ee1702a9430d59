//! Guests: the `NAME[:SIZE]` specs of `--guest`, the guest archive the kernel gets as
//! its `-initrd`, the `guest=` / `expect=` command-line words, and the judge of the
//! kernel's guest report.
//!
//! # The archive (`SLCGARCH`)
//!
//! The format of `kernel/src/guest_image.rs`, little-endian: magic `"SLCGARCH"` (8
//! bytes), `count: u32`, `reserved: u32` (0), then `count` entries of 48 bytes
//! `{ name: [u8; 32] NUL-padded, offset: u64, size: u64 }` (offset from the start of the
//! archive), then the blobs (the guests' ELF files) in entry order, each starting at a
//! multiple of 16 bytes (zero padding), like the kernel's own `pack`.
//!
//! # The kernel's report (kernel contract)
//!
//! ```text
//! [INFO  guest] NAME: started, RAM 16 MiB, entry 0x200000
//! [INFO  guest] [NAME] a line the guest wrote (CONSOLE_WRITE or COM1)
//! [INFO  guest] NAME: exited with status N
//! [WARN  guest] NAME: terminated: REASON
//! [INFO  guest] guests: N ran, N passed, N failed
//! ```
//!
//! The kernel exits QEMU with 33 if every guest exited with status 0 or was terminated
//! as its `expect=NAME:terminated` word said, else 35.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::serial::{hex_after, split_line};

/// Archive magic.
pub const ARCHIVE_MAGIC: [u8; 8] = *b"SLCGARCH";
pub const ARCHIVE_HEADER_SIZE: usize = 16;
pub const ARCHIVE_ENTRY_SIZE: usize = 48;
pub const ARCHIVE_NAME_MAX: usize = 32;
pub const ARCHIVE_MAX_ENTRIES: usize = 64;
pub const ARCHIVE_BLOB_ALIGN: usize = 16;

/// Guest RAM limits of the kernel (`guest_image.rs`): 2 MiB..=256 MiB, 2 MiB multiples.
pub const RAM_MIN: u64 = 2 << 20;
pub const RAM_MAX: u64 = 256 << 20;
pub const RAM_ALIGN: u64 = 2 << 20;
/// `--guest NAME` without a size.
pub const DEFAULT_SIZE: &str = "16M";
/// Where every guest program is linked and entered (guest/linker.ld).
pub const GUEST_ENTRY: u64 = 0x20_0000;
/// The package that builds the guest programs.
pub const GUEST_PACKAGE: &str = "sluice-guest";

/// Whether `name` may name a guest: 1..=32 bytes of `[A-Za-z0-9_.-]` (a subset of what
/// the kernel accepts; the name is also a cargo binary name and a command-line word).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= ARCHIVE_NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// `16M`, `512K`, `1G` or a byte count (K/M/G binary, either case), like the kernel.
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// The canonical spelling of a size for a `guest=` word (`16M`, `1G`, ...).
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes % (1u64 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Whether `list` may be the value of `groups=`: comma-separated references, each an
/// IOMMU group id (decimal) or a PCI function (`BB:DD.F` or `SSSS:BB:DD.F`, hex) that
/// stands for its group. The kernel judges the references; this only keeps the word
/// well formed.
pub fn is_valid_groups(list: &str) -> bool {
    !list.is_empty()
        && list.split(',').all(|r| {
            !r.is_empty()
                && r.len() <= 12
                && r.bytes()
                    .all(|b| b.is_ascii_hexdigit() || b":.".contains(&b))
        })
}

/// One guest to start: the archive entry `name` with `ram` bytes of RAM, and the IOMMU
/// groups it may own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestSpec {
    pub name: String,
    pub ram: u64,
    /// The value of `groups=` (see [`is_valid_groups`]), if any.
    pub groups: Option<String>,
}

impl GuestSpec {
    /// `NAME[:SIZE[:groups=G,...]]` (the value of `--guest`); SIZE defaults to 16M.
    pub fn parse(s: &str) -> Result<GuestSpec, String> {
        let mut parts = s.splitn(3, ':');
        let name = parts.next().unwrap_or_default();
        let size = parts.next().unwrap_or(DEFAULT_SIZE);
        let rest = parts.next();
        if !is_valid_name(name) {
            return Err(format!(
                "--guest {s:?}: bad guest name {name:?} (1-32 characters of A-Z a-z 0-9 - _ .)"
            ));
        }
        let ram = parse_size(size).ok_or_else(|| {
            format!("--guest {s:?}: bad size {size:?} (e.g. 16M, 512K, 1G or bytes)")
        })?;
        if !(RAM_MIN..=RAM_MAX).contains(&ram) || ram % RAM_ALIGN != 0 {
            return Err(format!(
                "--guest {s:?}: RAM must be a multiple of 2M between 2M and 256M, not {size}"
            ));
        }
        let groups = match rest {
            None => None,
            Some(rest) => match rest.strip_prefix("groups=") {
                Some(list) if is_valid_groups(list) => Some(list.to_string()),
                _ => {
                    return Err(format!(
                        "--guest {s:?}: expected groups=G,... after the size (G: a group id or a PCI function like 00:03.0), got {rest:?}"
                    ));
                }
            },
        };
        Ok(GuestSpec {
            name: name.into(),
            ram,
            groups,
        })
    }

    /// The kernel command-line word `guest=NAME:SIZE[:groups=G,...]`.
    pub fn word(&self) -> String {
        let mut w = format!("guest={}:{}", self.name, format_size(self.ram));
        if let Some(g) = &self.groups {
            w.push_str(":groups=");
            w.push_str(g);
        }
        w
    }
}

/// The distinct names of `specs`, in first-seen order (one archive entry each).
pub fn distinct_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// Writes an archive holding `entries` (name, ELF bytes) in that order.
pub fn pack_archive(entries: &[(&str, &[u8])]) -> Result<Vec<u8>, String> {
    if entries.len() > ARCHIVE_MAX_ENTRIES {
        return Err(format!(
            "{} guests: an archive holds at most {ARCHIVE_MAX_ENTRIES}",
            entries.len()
        ));
    }
    for (i, (name, _)) in entries.iter().enumerate() {
        if !is_valid_name(name) {
            return Err(format!("bad guest name {name:?}"));
        }
        if entries[..i].iter().any(|(n, _)| n == name) {
            return Err(format!("guest {name:?} is in the archive twice"));
        }
    }
    let align = |x: usize| x.div_ceil(ARCHIVE_BLOB_ALIGN) * ARCHIVE_BLOB_ALIGN;
    let table_end = ARCHIVE_HEADER_SIZE + entries.len() * ARCHIVE_ENTRY_SIZE;
    let mut out = Vec::new();
    out.extend_from_slice(&ARCHIVE_MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut offset = align(table_end);
    for (name, data) in entries {
        let mut field = [0u8; ARCHIVE_NAME_MAX];
        field[..name.len()].copy_from_slice(name.as_bytes());
        out.extend_from_slice(&field);
        out.extend_from_slice(&(offset as u64).to_le_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        offset = align(offset + data.len());
    }
    for (_, data) in entries {
        out.resize(align(out.len()), 0);
        out.extend_from_slice(data);
    }
    Ok(out)
}

/// Reads the guest ELFs named `names` from `bins` (name → built executable), packs them
/// and writes the archive to `path` (creating its directory).
pub fn write_archive(
    path: &Path,
    names: &[&str],
    bins: &BTreeMap<String, PathBuf>,
) -> Result<(), String> {
    let mut blobs = Vec::new();
    for name in names {
        let elf = bins.get(*name).ok_or_else(|| {
            format!(
                "no guest program {name:?} (cargo built: {})",
                bins.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        let bytes = std::fs::read(elf).map_err(|e| format!("{}: {e}", elf.display()))?;
        blobs.push((*name, bytes));
    }
    let entries: Vec<(&str, &[u8])> = blobs.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    let archive = pack_archive(&entries)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, archive).map_err(|e| format!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------
// The `bench` guest's report (`./qemu-run.sh bench`)
// ---------------------------------------------------------------------------------------

/// `N cycles/call`.
pub fn parse_cycles_per_call(s: &str) -> Option<u64> {
    let n = s.trim().strip_suffix("cycles/call")?.trim();
    n.parse().ok()
}

/// What the `bench` guest printed: `bench null-hypercall: N cycles/call`,
/// `bench cpuid-exit: N cycles/call`, `bench ratio: X.XX`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BenchResult {
    pub null_cycles: Option<u64>,
    pub cpuid_cycles: Option<u64>,
    pub ratio: Option<String>,
    /// Every `bench ...` line the guest wrote, in order.
    pub lines: Vec<String>,
}

impl BenchResult {
    pub fn from_report(report: &GuestReport, guest: &str) -> BenchResult {
        let mut b = BenchResult::default();
        for line in report.console.get(guest).into_iter().flatten() {
            let Some(rest) = line.strip_prefix("bench ") else {
                continue;
            };
            b.lines.push(line.clone());
            if let Some(v) = rest.strip_prefix("null-hypercall:") {
                b.null_cycles = parse_cycles_per_call(v);
            } else if let Some(v) = rest.strip_prefix("cpuid-exit:") {
                b.cpuid_cycles = parse_cycles_per_call(v);
            } else if let Some(v) = rest.strip_prefix("ratio:") {
                b.ratio = Some(v.trim().to_string());
            }
        }
        b
    }

    /// cpuid / null recomputed from the two cycle counts (`X.XX`), as a cross-check of
    /// the guest's own ratio.
    pub fn host_ratio(&self) -> Option<String> {
        let (c, n) = (self.cpuid_cycles?, self.null_cycles?);
        (n != 0).then(|| format!("{:.2}", c as f64 / n as f64))
    }
}

// ---------------------------------------------------------------------------------------
// Expectations and the judge
// ---------------------------------------------------------------------------------------

/// Why the hypervisor must stop a guest (the `terminated: REASON` text is checked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Termination {
    /// A nested page fault: `access outside its memory at GPA 0x..` (this GPA).
    OutsideMemory { gpa: u64 },
    /// `port I/O to 0x80 not allowed`.
    Port(u16),
    /// `MSR 0x10 access not allowed`.
    Msr(u32),
    /// `triple fault`.
    TripleFault,
    /// The scheduler stopped a guest that exceeded its time budget: `ran out of time`
    /// (any further text, e.g. the budget, is allowed).
    OutOfTime,
}

impl fmt::Display for Termination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Termination::OutsideMemory { gpa } => {
                write!(f, "access outside its memory at GPA {gpa:#x}")
            }
            Termination::Port(p) => write!(f, "port I/O to {p:#x} not allowed"),
            Termination::Msr(m) => write!(f, "MSR {m:#x} access not allowed"),
            Termination::TripleFault => f.write_str("triple fault"),
            Termination::OutOfTime => f.write_str("ran out of time"),
        }
    }
}

impl Termination {
    /// Why `reason` (the kernel's text) is not this termination, or `None` if it is.
    fn mismatch(&self, reason: &str) -> Option<String> {
        let lower = reason.to_ascii_lowercase();
        let ok = match self {
            Termination::OutsideMemory { gpa } => {
                lower.contains("outside its memory") && hex_after(reason, "GPA ") == Some(*gpa)
            }
            Termination::Port(p) => hex_after(reason, "port I/O to ") == Some(u64::from(*p)),
            Termination::Msr(m) => hex_after(reason, "MSR ") == Some(u64::from(*m)),
            Termination::TripleFault => lower.contains("triple fault"),
            Termination::OutOfTime => lower.contains("ran out of time"),
        };
        (!ok).then(|| format!("terminated: {reason}, expected terminated: {self}"))
    }
}

/// How a guest must end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExpect {
    /// `exited with status N`.
    Exit(i64),
    /// `terminated: REASON` (and the command line says `expect=NAME:terminated`).
    Terminated(Termination),
}

/// One guest of a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRun {
    pub name: &'static str,
    /// RAM, e.g. `16M`.
    pub size: &'static str,
    pub expect: GuestExpect,
    /// The guest reports `check NAME: ok|FAILED: ...` lines: at least one must appear,
    /// and all must be ok.
    pub checks: bool,
    /// IOMMU groups the guest may own: the value of `groups=` (group ids or PCI
    /// functions such as `00:03.0`, standing for their group), `""` for none.
    pub groups: &'static str,
}

impl GuestRun {
    pub const fn exits(name: &'static str, status: i64) -> GuestRun {
        GuestRun {
            name,
            size: DEFAULT_SIZE,
            expect: GuestExpect::Exit(status),
            checks: true,
            groups: "",
        }
    }

    pub const fn terminated(name: &'static str, why: Termination) -> GuestRun {
        GuestRun {
            name,
            size: DEFAULT_SIZE,
            expect: GuestExpect::Terminated(why),
            checks: false,
            groups: "",
        }
    }

    /// The same run with `groups=GROUPS` on its `guest=` word.
    pub const fn with_groups(self, groups: &'static str) -> GuestRun {
        GuestRun { groups, ..self }
    }

    pub fn ram(&self) -> Option<u64> {
        parse_size(self.size)
    }
}

/// The kernel command-line words for `runs`: `guest=NAME:SIZE[:groups=G,...]` each,
/// then `expect=NAME:terminated` for those that must be stopped.
pub fn cmdline_words(runs: &[GuestRun]) -> Vec<String> {
    let mut words: Vec<String> = runs
        .iter()
        .map(|r| {
            if r.groups.is_empty() {
                format!("guest={}:{}", r.name, r.size)
            } else {
                format!("guest={}:{}:groups={}", r.name, r.size, r.groups)
            }
        })
        .collect();
    words.extend(
        runs.iter()
            .filter(|r| matches!(r.expect, GuestExpect::Terminated(_)))
            .map(|r| format!("expect={}:terminated", r.name)),
    );
    words
}

/// How the kernel says a guest ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestEnd {
    Exited(i64),
    Terminated(String),
}

impl fmt::Display for GuestEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestEnd::Exited(s) => write!(f, "exited with status {s}"),
            GuestEnd::Terminated(r) => write!(f, "terminated: {r}"),
        }
    }
}

/// A `NAME: started, RAM 16 MiB, entry 0x200000` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestStart {
    pub line: usize,
    pub ram: Option<u64>,
    pub entry: Option<u64>,
}

/// What the kernel's log says about its guests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestReport {
    pub starts: BTreeMap<String, Vec<GuestStart>>,
    pub ends: BTreeMap<String, Vec<(usize, GuestEnd)>>,
    /// The lines each guest wrote, in order.
    pub console: BTreeMap<String, Vec<String>>,
    /// `guests: N ran, N passed, N failed` (the last one).
    pub summary: Option<(u64, u64, u64)>,
}

/// `16 MiB`, `512 KiB`, `1 GiB` or `N bytes` at the start of `s`.
fn parse_ram(s: &str) -> Option<u64> {
    let mut words = s.split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    let unit = words.next().unwrap_or("").trim_end_matches([',', ';']);
    let shift = match unit {
        "GiB" | "G" => 30,
        "MiB" | "M" => 20,
        "KiB" | "K" => 10,
        "B" | "bytes" | "" => 0,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

/// `N ran, N passed, N failed`.
fn parse_summary(s: &str) -> Option<(u64, u64, u64)> {
    let mut vals = [None; 3];
    for part in s.split(',') {
        let mut w = part.split_whitespace();
        let (Some(n), Some(label)) = (w.next(), w.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match label {
            "ran" => vals[0] = Some(n),
            "passed" => vals[1] = Some(n),
            "failed" => vals[2] = Some(n),
            _ => {}
        }
    }
    Some((vals[0]?, vals[1]?, vals[2]?))
}

impl GuestReport {
    pub fn parse(lines: &[String]) -> GuestReport {
        let mut r = GuestReport::default();
        for (i, raw) in lines.iter().enumerate() {
            let line_no = i + 1;
            let parts = split_line(raw);
            if parts.target != Some("guest") {
                continue;
            }
            let msg = parts.message.trim_end();
            if let Some(rest) = msg.strip_prefix('[') {
                if let Some((name, text)) = rest.split_once(']') {
                    let text = text.strip_prefix(' ').unwrap_or(text);
                    r.console
                        .entry(name.to_string())
                        .or_default()
                        .push(text.to_string());
                }
                continue;
            }
            if let Some(rest) = msg.strip_prefix("guests: ") {
                if let Some(s) = parse_summary(rest) {
                    r.summary = Some(s);
                }
                continue;
            }
            let Some((name, what)) = msg.split_once(": ") else {
                continue;
            };
            if name.contains(char::is_whitespace) {
                continue;
            }
            if let Some(rest) = what.strip_prefix("started") {
                let ram = rest.find("RAM ").and_then(|p| parse_ram(&rest[p + 4..]));
                r.starts
                    .entry(name.to_string())
                    .or_default()
                    .push(GuestStart {
                        line: line_no,
                        ram,
                        entry: hex_after(rest, "entry "),
                    });
            } else if let Some(rest) = what.strip_prefix("exited with status ") {
                if let Some(n) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
                    r.ends
                        .entry(name.to_string())
                        .or_default()
                        .push((line_no, GuestEnd::Exited(n)));
                }
            } else if let Some(reason) = what.strip_prefix("terminated") {
                let reason = reason.trim_start_matches(':').trim();
                r.ends
                    .entry(name.to_string())
                    .or_default()
                    .push((line_no, GuestEnd::Terminated(reason.to_string())));
            }
        }
        r
    }
}

/// Judges the guests of a scenario against the log; returns the failure reasons.
pub fn check_guests(runs: &[GuestRun], lines: &[String]) -> Vec<String> {
    let report = GuestReport::parse(lines);
    let mut fails = Vec::new();
    for run in runs {
        let name = run.name;
        let starts = report.starts.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let Some(start) = starts.first() else {
            fails.push(format!(
                "{name}: no `{name}: started, RAM .., entry ..` line (the kernel did not run it)"
            ));
            continue;
        };
        if starts.len() > 1 {
            fails.push(format!("{name}: started {} times", starts.len()));
        }
        match (start.ram, run.ram()) {
            (Some(got), Some(want)) if got != want => fails.push(format!(
                "{name}: started with RAM {} MiB, expected {} MiB ({})",
                got >> 20,
                want >> 20,
                run.size
            )),
            (None, _) => fails.push(format!(
                "{name}: the start line (line {}) has no `RAM N MiB`",
                start.line
            )),
            _ => {}
        }
        match start.entry {
            Some(GUEST_ENTRY) => {}
            Some(e) => fails.push(format!(
                "{name}: entry {e:#x}, expected {GUEST_ENTRY:#x} (guest/linker.ld)"
            )),
            None => fails.push(format!(
                "{name}: the start line (line {}) has no `entry 0x..`",
                start.line
            )),
        }
        let ends = report.ends.get(name).map(Vec::as_slice).unwrap_or(&[]);
        match ends {
            [] => fails.push(format!(
                "{name}: started (line {}) but never `exited with status N` or `terminated: REASON`",
                start.line
            )),
            [(line, end), ..] => {
                if ends.len() > 1 {
                    fails.push(format!("{name}: ended {} times", ends.len()));
                }
                match (run.expect, end) {
                    (GuestExpect::Exit(want), GuestEnd::Exited(got)) if *got == want => {}
                    (GuestExpect::Terminated(why), GuestEnd::Terminated(reason)) => {
                        if let Some(m) = why.mismatch(reason) {
                            fails.push(format!("{name}: {m} (line {line})"));
                        }
                    }
                    (GuestExpect::Exit(want), got) => fails.push(format!(
                        "{name}: {got} (line {line}), expected exited with status {want}"
                    )),
                    (GuestExpect::Terminated(why), got) => fails.push(format!(
                        "{name}: {got} (line {line}), expected terminated: {why}"
                    )),
                }
            }
        }
        let console = report.console.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let checks: Vec<&String> = console
            .iter()
            .filter(|l| l.trim_start().starts_with("check "))
            .collect();
        for c in &checks {
            if !c.trim_end().ends_with(": ok") {
                fails.push(format!("{name}: {}", c.trim()));
            }
        }
        if run.checks && checks.is_empty() {
            fails.push(format!("{name}: printed no `check NAME: ok` line"));
        }
    }
    let n = runs.len() as u64;
    match report.summary {
        None => fails.push("no `guests: N ran, N passed, N failed` line".into()),
        Some(s) if s != (n, n, 0) => fails.push(format!(
            "`guests: {} ran, {} passed, {} failed`, expected {n} ran, {n} passed, 0 failed",
            s.0, s.1, s.2
        )),
        Some(_) => {}
    }
    fails
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_golden_bytes() {
        let a = pack_archive(&[("hello", b"\x7fELF-one"), ("bad-port", b"xyz")]).unwrap();
        #[rustfmt::skip]
        let mut want: Vec<u8> = vec![
            b'S', b'L', b'C', b'G', b'A', b'R', b'C', b'H', // magic
            2, 0, 0, 0, // count
            0, 0, 0, 0, // reserved
        ];
        let mut name = [0u8; 32];
        name[..5].copy_from_slice(b"hello");
        want.extend_from_slice(&name);
        want.extend_from_slice(&[112, 0, 0, 0, 0, 0, 0, 0]); // offset: 16 + 2*48
        want.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0]); // size
        let mut name = [0u8; 32];
        name[..8].copy_from_slice(b"bad-port");
        want.extend_from_slice(&name);
        want.extend_from_slice(&[128, 0, 0, 0, 0, 0, 0, 0]); // offset: 112 + 8 -> 16-aligned
        want.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]); // size
        assert_eq!(want.len(), 112);
        want.extend_from_slice(b"\x7fELF-one");
        want.extend_from_slice(&[0; 8]); // padding to 128
        want.extend_from_slice(b"xyz");
        assert_eq!(a, want);
        assert_eq!(a.len(), 131);
    }

    #[test]
    fn archive_edge_cases() {
        assert_eq!(
            pack_archive(&[]).unwrap(),
            b"SLCGARCH\0\0\0\0\0\0\0\0".to_vec()
        );
        let name32 = "a".repeat(32);
        let a = pack_archive(&[(&name32, b"")]).unwrap();
        assert_eq!(&a[16..48], name32.as_bytes());
        assert_eq!(a.len(), 64, "header + one entry, empty blob at 64");
        assert_eq!(&a[48..56], &64u64.to_le_bytes());
        for (entries, needle) in [
            (vec![("", &b""[..])], "bad guest name"),
            (vec![("a b", &b""[..])], "bad guest name"),
            (vec![("x:y", &b""[..])], "bad guest name"),
            (vec![("a", &b""[..]), ("a", &b""[..])], "twice"),
        ] {
            let e = pack_archive(&entries).unwrap_err();
            assert!(e.contains(needle), "{entries:?}: {e}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("g{i}")).collect();
        let entries: Vec<(&str, &[u8])> = many.iter().map(|n| (n.as_str(), &b""[..])).collect();
        assert!(pack_archive(&entries).unwrap_err().contains("at most 64"));
    }

    #[test]
    fn writes_archive_from_built_bins() {
        let dir = std::env::temp_dir().join(format!("sluice-guests-test-{}", std::process::id()));
        let elf = dir.join("hello.elf");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&elf, b"ELF!").unwrap();
        let bins = BTreeMap::from([("hello".to_string(), elf)]);
        let img = dir.join("sub").join("x.img");
        write_archive(&img, &["hello"], &bins).unwrap();
        assert_eq!(
            std::fs::read(&img).unwrap(),
            pack_archive(&[("hello", b"ELF!")]).unwrap()
        );
        let e = write_archive(&img, &["nope"], &bins).unwrap_err();
        assert!(
            e.contains("no guest program \"nope\" (cargo built: hello)"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn specs_and_sizes() {
        assert_eq!(
            GuestSpec::parse("hello").unwrap(),
            GuestSpec {
                name: "hello".into(),
                ram: 16 << 20,
                groups: None,
            }
        );
        let g = GuestSpec::parse("vfio-edu:16M:groups=00:03.0,0000:00:1f.0,7").unwrap();
        assert_eq!(g.groups.as_deref(), Some("00:03.0,0000:00:1f.0,7"));
        assert_eq!(g.word(), "guest=vfio-edu:16M:groups=00:03.0,0000:00:1f.0,7");
        assert_eq!(GuestSpec::parse("hello").unwrap().word(), "guest=hello:16M");
        assert_eq!(GuestSpec::parse("sse:32m").unwrap().word(), "guest=sse:32M");
        assert_eq!(GuestSpec::parse("a:4194304").unwrap().word(), "guest=a:4M");
        assert_eq!(GuestSpec::parse("a:2048K").unwrap().ram, 2 << 20);
        assert_eq!(GuestSpec::parse("a:256M").unwrap().ram, 256 << 20);
        for (s, needle) in [
            ("", "bad guest name"),
            ("a b", "bad guest name"),
            (&"x".repeat(33), "bad guest name"),
            ("a:", "bad size"),
            ("a:16Q", "bad size"),
            ("a:-1M", "bad size"),
            ("a:3M", "multiple of 2M"),
            ("a:512M", "between 2M and 256M"),
            ("a:0", "between"),
            ("a:16M:3", "expected groups="),
            ("a:16M:groups=", "expected groups="),
            ("a:16M:groups=1,,2", "expected groups="),
            ("a:16M:groups=00:03.0 x", "expected groups="),
            ("a:16M:groups=0000:00:03.0:1", "expected groups="),
        ] {
            let e = GuestSpec::parse(s).unwrap_err();
            assert!(e.contains(needle), "{s}: {e}");
        }
        assert_eq!(format_size(1 << 30), "1G");
        assert_eq!(format_size(3 << 10), "3K");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(0), "0");
        assert_eq!(distinct_names(["a", "b", "a", "c"]), ["a", "b", "c"]);
    }

    const ISOLATION: &[GuestRun] = &[
        GuestRun::terminated(
            "bad-memory",
            Termination::OutsideMemory { gpa: 0x4_0000_0000 },
        ),
        GuestRun::terminated("bad-port", Termination::Port(0x80)),
        GuestRun::terminated("bad-msr", Termination::Msr(0x10)),
        GuestRun::terminated("triple-fault", Termination::TripleFault),
        GuestRun::exits("hello", 0),
    ];

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(String::from).collect()
    }

    const GOOD_LOG: &str = "\
[INFO  svm] SVM enabled
[INFO  guest] bad-memory: started, RAM 16 MiB, entry 0x200000
[INFO  guest] [bad-memory] bad-memory: writing to GPA 0x400000000
[WARN  guest] bad-memory: terminated: access outside its memory at GPA 0x400000000
[INFO  guest] bad-port: started, RAM 16 MiB, entry 0x200000
[WARN  guest] bad-port: terminated: port I/O to 0x80 not allowed
[INFO  guest] bad-msr: started, RAM 16 MiB, entry 0x200000
[WARN  guest] bad-msr: terminated: MSR 0x10 access not allowed
[INFO  guest] triple-fault: started, RAM 16 MiB, entry 0x200000
[WARN  guest] triple-fault: terminated: triple fault
[INFO  guest] hello: started, RAM 16 MiB, entry 0x200000
[INFO  guest] [hello] Hello
[INFO  guest] [hello] check version: ok
[INFO  guest] [hello] check null: ok
[INFO  guest] hello: exited with status 0
[INFO  guest] guests: 5 ran, 5 passed, 0 failed
";

    #[test]
    fn words_for_the_command_line() {
        assert_eq!(
            cmdline_words(ISOLATION),
            [
                "guest=bad-memory:16M",
                "guest=bad-port:16M",
                "guest=bad-msr:16M",
                "guest=triple-fault:16M",
                "guest=hello:16M",
                "expect=bad-memory:terminated",
                "expect=bad-port:terminated",
                "expect=bad-msr:terminated",
                "expect=triple-fault:terminated",
            ]
        );
    }

    #[test]
    fn parses_the_report() {
        let r = GuestReport::parse(&lines(GOOD_LOG));
        assert_eq!(r.summary, Some((5, 5, 0)));
        assert_eq!(
            r.starts["hello"],
            [GuestStart {
                line: 11,
                ram: Some(16 << 20),
                entry: Some(0x200000)
            }]
        );
        assert_eq!(r.ends["hello"], [(15, GuestEnd::Exited(0))]);
        assert_eq!(
            r.ends["bad-port"],
            [(
                6,
                GuestEnd::Terminated("port I/O to 0x80 not allowed".into())
            )]
        );
        assert_eq!(
            r.console["hello"],
            ["Hello", "check version: ok", "check null: ok"]
        );
        assert_eq!(parse_ram("1 GiB"), Some(1 << 30));
        assert_eq!(parse_ram("512 KiB,"), Some(512 << 10));
        assert_eq!(parse_ram("x MiB"), None);
    }

    #[test]
    fn judges_a_good_run() {
        assert_eq!(
            check_guests(ISOLATION, &lines(GOOD_LOG)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn judges_wrong_endings() {
        let log = GOOD_LOG
            .replace(
                "at GPA 0x400000000\n[INFO  guest] bad-port",
                "at GPA 0x1000\n[INFO  guest] bad-port",
            )
            .replace("port I/O to 0x80 not", "port I/O to 0x3f8 not")
            .replace("MSR 0x10 access", "MSR 0x1b access")
            .replace("terminated: triple fault", "exited with status 99")
            .replace(
                "check null: ok",
                "check null: FAILED: NULL: got -38, expected 0",
            )
            .replace(
                "hello: exited with status 0",
                "hello: terminated: triple fault",
            )
            .replace("5 passed, 0 failed", "0 passed, 5 failed");
        let f = check_guests(ISOLATION, &lines(&log));
        assert_eq!(
            f,
            [
                "bad-memory: terminated: access outside its memory at GPA 0x1000, expected terminated: access outside its memory at GPA 0x400000000 (line 4)",
                "bad-port: terminated: port I/O to 0x3f8 not allowed, expected terminated: port I/O to 0x80 not allowed (line 6)",
                "bad-msr: terminated: MSR 0x1b access not allowed, expected terminated: MSR 0x10 access not allowed (line 8)",
                "triple-fault: exited with status 99 (line 10), expected terminated: triple fault",
                "hello: terminated: triple fault (line 15), expected exited with status 0",
                "hello: check null: FAILED: NULL: got -38, expected 0",
                "`guests: 5 ran, 0 passed, 5 failed`, expected 5 ran, 5 passed, 0 failed",
            ]
        );
    }

    #[test]
    fn judges_missing_lines() {
        // A kernel that does not run guests yet.
        let f = check_guests(
            &[GuestRun::exits("hello", 0)],
            &lines("[INFO  main] boot completed\n"),
        );
        assert_eq!(
            f,
            [
                "hello: no `hello: started, RAM .., entry ..` line (the kernel did not run it)",
                "no `guests: N ran, N passed, N failed` line",
            ]
        );
        let log = "\
[INFO  guest] hello: started, RAM 32 MiB, entry 0x201000
[INFO  guest] [hello] Hello
[INFO  guest] guests: 1 ran, 1 passed, 0 failed
";
        let f = check_guests(&[GuestRun::exits("hello", 0)], &lines(log));
        assert_eq!(
            f,
            [
                "hello: started with RAM 32 MiB, expected 16 MiB (16M)",
                "hello: entry 0x201000, expected 0x200000 (guest/linker.ld)",
                "hello: started (line 1) but never `exited with status N` or `terminated: REASON`",
                "hello: printed no `check NAME: ok` line",
            ]
        );
    }

    #[test]
    fn words_with_groups() {
        let runs = [
            GuestRun::exits("vfio-edu", 0).with_groups("00:03.0"),
            GuestRun::exits("hello", 0),
            GuestRun::exits("vfio-hostile", 0).with_groups("00:04.0,00:1f.0,00:03.0"),
        ];
        assert_eq!(
            cmdline_words(&runs),
            [
                "guest=vfio-edu:16M:groups=00:03.0",
                "guest=hello:16M",
                "guest=vfio-hostile:16M:groups=00:04.0,00:1f.0,00:03.0",
            ]
        );
        assert!(
            runs.iter()
                .all(|r| r.groups.is_empty() || is_valid_groups(r.groups))
        );
    }

    #[test]
    fn judges_out_of_time() {
        let runs = [
            GuestRun::terminated("spinner", Termination::OutOfTime),
            GuestRun::exits("hello", 0),
        ];
        assert_eq!(
            cmdline_words(&runs),
            [
                "guest=spinner:16M",
                "guest=hello:16M",
                "expect=spinner:terminated"
            ]
        );
        let log = "\
[INFO  guest] spinner: started, RAM 16 MiB, entry 0x200000
[INFO  guest] hello: started, RAM 16 MiB, entry 0x200000
[INFO  guest] [spinner] spinner: spinning forever
[INFO  guest] [hello] check null: ok
[INFO  guest] hello: exited with status 0
[WARN  guest] spinner: terminated: ran out of time (budget 2000 ms)
[INFO  guest] guests: 2 ran, 2 passed, 0 failed
";
        assert_eq!(check_guests(&runs, &lines(log)), Vec::<String>::new());
        let other = log.replace("ran out of time (budget 2000 ms)", "triple fault");
        assert_eq!(
            check_guests(&runs, &lines(&other)),
            ["spinner: terminated: triple fault, expected terminated: ran out of time (line 6)"]
        );
    }

    #[test]
    fn parses_bench_lines() {
        let log = "\
[INFO  guest] bench: started, RAM 16 MiB, entry 0x200000
[INFO  guest] [bench] bench null-hypercall: 2103 cycles/call
[INFO  guest] [bench] bench cpuid-exit: 1988 cycles/call
[INFO  guest] [bench] bench ratio: 0.95
[INFO  guest] bench: exited with status 0
";
        let r = GuestReport::parse(&lines(log));
        let b = BenchResult::from_report(&r, "bench");
        assert_eq!(
            b,
            BenchResult {
                null_cycles: Some(2103),
                cpuid_cycles: Some(1988),
                ratio: Some("0.95".into()),
                lines: vec![
                    "bench null-hypercall: 2103 cycles/call".into(),
                    "bench cpuid-exit: 1988 cycles/call".into(),
                    "bench ratio: 0.95".into(),
                ],
            }
        );
        assert_eq!(b.host_ratio().as_deref(), Some("0.95"));
        let empty = BenchResult::from_report(&GuestReport::default(), "bench");
        assert_eq!(empty.null_cycles, None);
        assert_eq!(empty.host_ratio(), None);
        assert_eq!(parse_cycles_per_call("12 cycles/call"), Some(12));
        assert_eq!(parse_cycles_per_call("x cycles/call"), None);
        assert_eq!(parse_cycles_per_call("12 cycles"), None);
    }
}
