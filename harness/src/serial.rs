//! Parser for the kernel's serial log.
//!
//! Line format: `[LEVEL target] message`. Lines without that prefix are kept and
//! parsed as if the whole line were the message. Recognised messages (see the
//! kernel contract in `harness/README.md`):
//!
//! - PCI function: `0000:00:03.0 [1234:11e8] class 00ff00 ...`
//! - BAR of the function printed last: `    BAR0 mem32 0x00000000fea00000 size 0x100000`
//! - end of the list: `... pci: enumerated N functions`
//! - CPU exception: `EXCEPTION vector N`, then `error code 0x..`, `RIP=0x..`, `CR2=0x..`
//! - panic: `PANIC at file.rs:line:col: message`
//! - `holding:` (the kernel waits for one byte on COM1)

use std::collections::BTreeSet;

use crate::model::{Bar, BarKind, Bdf, Function};

/// Text that marks the line the kernel prints before it waits for a byte on COM1.
pub const HOLDING_MARKER: &str = "holding:";

/// A line split into its `[LEVEL target]` prefix and message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLine<'a> {
    pub level: Option<&'a str>,
    pub target: Option<&'a str>,
    pub message: &'a str,
}

const LEVELS: [&str; 5] = ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"];

/// Splits `[LEVEL target] message`; a line without a valid prefix is all message.
pub fn split_line(line: &str) -> LogLine<'_> {
    let raw = LogLine {
        level: None,
        target: None,
        message: line,
    };
    let Some(rest) = line.strip_prefix('[') else {
        return raw;
    };
    let Some(close) = rest.find(']') else {
        return raw;
    };
    let inside = &rest[..close];
    let mut parts = inside.splitn(2, char::is_whitespace);
    let level = parts.next().unwrap_or("");
    if !LEVELS.contains(&level) {
        return raw;
    }
    let target = parts.next().map(str::trim).filter(|t| !t.is_empty());
    let after = &rest[close + 1..];
    let message = after.strip_prefix(' ').unwrap_or(after);
    LogLine {
        level: Some(level),
        target,
        message,
    }
}

/// A CPU exception report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExceptionReport {
    /// 1-based line number of the `EXCEPTION vector` line.
    pub line: usize,
    pub vector: u8,
    pub error_code: Option<u64>,
    pub rip: Option<u64>,
    pub cr2: Option<u64>,
}

/// A kernel panic report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PanicReport {
    pub line: usize,
    /// `file:line:col` when the location parsed, else `None`.
    pub location: Option<(String, u32, u32)>,
    pub text: String,
}

/// Everything the harness extracts from one serial log.
#[derive(Clone, Debug, Default)]
pub struct KernelLog {
    /// The log lines, without line terminators.
    pub lines: Vec<String>,
    /// PCI functions in the order printed.
    pub functions: Vec<Function>,
    /// `N` from `pci: enumerated N functions` (the last such line).
    pub enumerated: Option<usize>,
    pub exceptions: Vec<ExceptionReport>,
    pub panics: Vec<PanicReport>,
    pub holding: bool,
    /// Lines that look like PCI listing lines but break the format, and other
    /// inconsistencies in the listing (each entry names its line number).
    pub problems: Vec<String>,
}

impl KernelLog {
    pub fn parse(text: &str) -> KernelLog {
        let mut log = KernelLog::default();
        let mut current: Option<usize> = None; // index into functions
        let mut seen = BTreeSet::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let raw = raw.trim_end_matches('\r');
            log.lines.push(raw.to_string());
            let parts = split_line(raw);
            let msg = parts.message;
            let trimmed = msg.trim();

            if raw.contains(HOLDING_MARKER) {
                log.holding = true;
            }
            if let Some(n) = parse_enumerated(&parts) {
                log.enumerated = Some(n);
                current = None;
                continue;
            }
            if let Some(vector) = parse_exception_vector(msg) {
                log.exceptions.push(ExceptionReport {
                    line: line_no,
                    vector,
                    error_code: None,
                    rip: None,
                    cr2: None,
                });
            }
            if let Some(exc) = log.exceptions.last_mut() {
                // The dump follows the EXCEPTION line; take the first value of each.
                if line_no - exc.line < 64 {
                    exc.error_code = exc.error_code.or_else(|| hex_after(msg, "error code "));
                    exc.rip = exc.rip.or_else(|| hex_after(msg, "RIP="));
                    exc.cr2 = exc.cr2.or_else(|| hex_after(msg, "CR2="));
                }
            }
            if let Some(pos) = msg.find("PANIC at ") {
                let text = &msg[pos + "PANIC at ".len()..];
                log.panics.push(PanicReport {
                    line: line_no,
                    location: parse_panic_location(text),
                    text: text.to_string(),
                });
            }

            if looks_like_device(trimmed) {
                match parse_device(trimmed) {
                    Ok(f) => {
                        if !seen.insert((f.segment, f.bdf)) {
                            log.problems.push(format!(
                                "line {line_no}: PCI function {:04x}:{} listed twice",
                                f.segment, f.bdf
                            ));
                        }
                        log.functions.push(f);
                        current = Some(log.functions.len() - 1);
                    }
                    Err(e) => {
                        log.problems.push(format!(
                            "line {line_no}: bad PCI function line ({e}): {trimmed:?}"
                        ));
                        current = None;
                    }
                }
            } else if looks_like_bar(trimmed) {
                match (parse_bar(trimmed), current) {
                    (Ok(bar), Some(idx)) => {
                        let f = &mut log.functions[idx];
                        if f.bar(bar.index).is_some() {
                            log.problems.push(format!(
                                "line {line_no}: BAR{} of {} listed twice",
                                bar.index, f.bdf
                            ));
                        } else {
                            f.bars.push(bar);
                        }
                    }
                    (Ok(_), None) => log
                        .problems
                        .push(format!("line {line_no}: BAR line without a PCI function line before it: {trimmed:?}")),
                    (Err(e), _) => log.problems.push(format!("line {line_no}: bad BAR line ({e}): {trimmed:?}")),
                }
            }
        }
        log
    }

    /// Lines that report an exception or a panic (for boots that must not have any).
    pub fn fault_lines(&self) -> Vec<(usize, &str)> {
        self.lines
            .iter()
            .enumerate()
            .filter(|(_, l)| contains_word(l, "EXCEPTION") || contains_word(l, "PANIC"))
            .map(|(i, l)| (i + 1, l.as_str()))
            .collect()
    }

    /// True if the log has no visible text at all.
    pub fn is_empty(&self) -> bool {
        self.lines.iter().all(|l| l.trim().is_empty())
    }

    /// Lines containing `needle` and, case-insensitively, any of `keywords`.
    pub fn lines_with(&self, needle: &str, keywords: &[&str]) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|l| l.contains(needle))
            .filter(|l| {
                let lower = l.to_ascii_lowercase();
                keywords
                    .iter()
                    .any(|k| lower.contains(&k.to_ascii_lowercase()))
            })
            .map(String::as_str)
            .collect()
    }
}

fn contains_word(haystack: &str, word: &str) -> bool {
    haystack.match_indices(word).any(|(pos, _)| {
        let before = haystack[..pos].chars().next_back();
        let after = haystack[pos + word.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn is_lower_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses exactly `len` lowercase hex digits.
fn hex_fixed(s: &str, len: usize, what: &str) -> Result<u32, String> {
    if s.len() != len || !is_lower_hex(s) {
        return Err(format!(
            "{what} must be {len} lowercase hex digits, got {s:?}"
        ));
    }
    u32::from_str_radix(s, 16).map_err(|e| format!("{what}: {e}"))
}

/// `0x` followed by 1..=16 lowercase hex digits.
fn hex_prefixed(s: &str, what: &str) -> Result<u64, String> {
    let digits = s
        .strip_prefix("0x")
        .ok_or_else(|| format!("{what} must start with 0x, got {s:?}"))?;
    if digits.len() > 16 || !is_lower_hex(digits) {
        return Err(format!(
            "{what} must be 0x and 1..16 lowercase hex digits, got {s:?}"
        ));
    }
    u64::from_str_radix(digits, 16).map_err(|e| format!("{what}: {e}"))
}

/// The hex number after `key` (with or without `0x`), e.g. `CR2=0x4000`.
pub(crate) fn hex_after(msg: &str, key: &str) -> Option<u64> {
    let pos = msg.find(key)?;
    let rest = &msg[pos + key.len()..];
    let rest = rest.strip_prefix("0x").unwrap_or(rest);
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || *c == '_')
        .filter(|c| *c != '_')
        .collect();
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(&digits, 16).ok()
}

/// `pci: enumerated N functions` anywhere in the message, or (as the kernel's
/// logger renders it) target `pci` with the message `enumerated N functions`.
fn parse_enumerated(line: &LogLine<'_>) -> Option<usize> {
    const KEY: &str = "enumerated ";
    let rest = if let Some(pos) = line.message.find("pci: enumerated ") {
        &line.message[pos + "pci: ".len() + KEY.len()..]
    } else if line
        .target
        .is_some_and(|t| t.rsplit("::").next() == Some("pci"))
    {
        line.message.trim_start().strip_prefix(KEY)?
    } else {
        return None;
    };
    let mut words = rest.split_whitespace();
    let n = words.next()?.parse().ok()?;
    words.next()?.starts_with("function").then_some(n)
}

fn parse_exception_vector(msg: &str) -> Option<u8> {
    let pos = msg.find("EXCEPTION vector ")?;
    let rest = &msg[pos + "EXCEPTION vector ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn parse_panic_location(text: &str) -> Option<(String, u32, u32)> {
    // `file.rs:line:col: message`; the file may itself contain ':' (not on Linux paths).
    let rs = text.find(".rs:")?;
    let file = &text[..rs + 3];
    let mut nums = text[rs + 4..].splitn(3, ':');
    let line = nums.next()?.parse().ok()?;
    let col_str = nums.next()?;
    let col = col_str.trim().parse().ok()?;
    Some((file.to_string(), line, col))
}

/// `ssss:bb:dd.f [` — the start of a PCI function line.
fn looks_like_device(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 14
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && s.get(12..14) == Some(" [")
        && b[..4].iter().all(u8::is_ascii_hexdigit)
}

fn looks_like_bar(s: &str) -> bool {
    s.strip_prefix("BAR")
        .and_then(|r| r.chars().next())
        .is_some_and(|c| c.is_ascii_digit())
}

/// Parses `0000:00:03.0 [1234:11e8] class 00ff00 ...` (anything after the class is ignored).
pub fn parse_device(s: &str) -> Result<Function, String> {
    let mut words = s.split_whitespace();
    let addr = words.next().ok_or("empty line")?;
    let ids = words.next().ok_or("missing [vendor:device]")?;
    if words.next() != Some("class") {
        return Err("missing `class` after [vendor:device]".into());
    }
    let class = words.next().ok_or("missing class code")?;

    let (seg, rest) = addr.split_once(':').ok_or("bad address")?;
    let (bus, rest) = rest.split_once(':').ok_or("bad address")?;
    let (dev, func) = rest.split_once('.').ok_or("bad address")?;
    let segment = hex_fixed(seg, 4, "segment")? as u16;
    let bus = hex_fixed(bus, 2, "bus")? as u8;
    let dev = hex_fixed(dev, 2, "device")?;
    if dev > 0x1f {
        return Err(format!("device number 0x{dev:x} > 0x1f"));
    }
    if func.len() != 1 || !matches!(func.as_bytes()[0], b'0'..=b'7') {
        return Err(format!("function must be 0..7, got {func:?}"));
    }
    let func = func.as_bytes()[0] - b'0';

    let ids = ids
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or("ids must be [vvvv:dddd]")?;
    let (ven, did) = ids.split_once(':').ok_or("ids must be [vvvv:dddd]")?;
    let vendor = hex_fixed(ven, 4, "vendor id")? as u16;
    let device = hex_fixed(did, 4, "device id")? as u16;
    let class = hex_fixed(class, 6, "class code")?;

    Ok(Function {
        segment,
        bdf: Bdf {
            bus,
            dev: dev as u8,
            func,
        },
        vendor,
        device,
        class: (class >> 8) as u16,
        prog_if: Some((class & 0xff) as u8),
        bars: Vec::new(),
    })
}

/// Parses `BAR2 mem64 pref 0x0000000800000000 size 0x4000` (trailing words are ignored).
pub fn parse_bar(s: &str) -> Result<Bar, String> {
    let mut words = s.split_whitespace();
    let name = words.next().ok_or("empty line")?;
    let index: u8 = name
        .strip_prefix("BAR")
        .and_then(|n| n.parse().ok())
        .filter(|n| *n <= 5)
        .ok_or_else(|| format!("BAR index must be BAR0..BAR5, got {name:?}"))?;
    let kind = match words.next() {
        Some("io") => BarKind::IO,
        Some("mem32") => BarKind::MEM32,
        Some("mem64") => BarKind::MEM64,
        other => {
            return Err(format!(
                "BAR kind must be io, mem32 or mem64, got {other:?}"
            ));
        }
    };
    let mut word = words.next().ok_or("missing address")?;
    let kind = if word == "pref" {
        if kind == BarKind::IO {
            return Err("an io BAR cannot be `pref`".into());
        }
        word = words.next().ok_or("missing address")?;
        kind.pref()
    } else {
        kind
    };
    let address = hex_prefixed(word, "address")?;
    if words.next() != Some("size") {
        return Err("missing `size` after the address".into());
    }
    let size = hex_prefixed(words.next().ok_or("missing size")?, "size")?;
    Ok(Bar {
        index,
        kind,
        address: Some(address),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
[INFO  boot] Sluice starting\r
[INFO  acpi] RSDP at 0xf5b60 rev 0 OEM BOCHS
[DEBUG sluice_kernel::pci] scanning bus 0
[INFO  pci] 0000:00:00.0 [8086:29c0] class 060000 rev 00 conventional-endpoint
[INFO  pci] 0000:00:01.0 [1234:11e8] class 00ff00 rev 10 conventional-endpoint msi
[INFO  pci]     BAR0 mem32 0x00000000fea00000 size 0x100000
[INFO  pci] 0000:00:1f.2 [8086:2922] class 010601 rev 02 conventional-endpoint
[INFO  pci]     BAR4 io 0x000000000000c040 size 0x20
[INFO  pci]     BAR5 mem32 0x00000000feb00000 size 0x1000
[INFO  pci] 0000:02:00.0 [1b36:000e] class 060400 rev 00 pci-bridge
[INFO  pci]     BAR0 mem64 pref 0x0000000800000000 size 0x4000
[INFO  pci] pci: enumerated 4 functions
[INFO  main] holding: send one byte on COM1
[INFO  main] boot complete
";

    #[test]
    fn splits_prefix() {
        let l = split_line("[INFO  acpi] RSDP at 0xf5b60");
        assert_eq!(l.level, Some("INFO"));
        assert_eq!(l.target, Some("acpi"));
        assert_eq!(l.message, "RSDP at 0xf5b60");
        let l = split_line("[ERROR sluice::pci::ecam] x");
        assert_eq!(
            (l.level, l.target, l.message),
            (Some("ERROR"), Some("sluice::pci::ecam"), "x")
        );
        let l = split_line("[not a prefix] x");
        assert_eq!(l.message, "[not a prefix] x");
        assert_eq!(split_line("plain").message, "plain");
        assert_eq!(split_line("[WARN ").message, "[WARN ");
    }

    #[test]
    fn parses_pci_listing() {
        let log = KernelLog::parse(SAMPLE);
        assert!(log.problems.is_empty(), "{:?}", log.problems);
        assert_eq!(log.functions.len(), 4);
        assert_eq!(log.enumerated, Some(4));
        assert!(log.holding);
        let edu = &log.functions[1];
        assert_eq!(
            edu.bdf,
            Bdf {
                bus: 0,
                dev: 1,
                func: 0
            }
        );
        assert_eq!(
            (edu.vendor, edu.device, edu.class, edu.prog_if),
            (0x1234, 0x11e8, 0x00ff, Some(0))
        );
        assert_eq!(
            edu.bars,
            vec![Bar {
                index: 0,
                kind: BarKind::MEM32,
                address: Some(0xfea0_0000),
                size: 0x10_0000
            }]
        );
        let sata = &log.functions[2];
        assert_eq!(sata.class, 0x0106);
        assert_eq!(sata.prog_if, Some(1));
        assert_eq!(sata.bars.len(), 2);
        assert_eq!(
            sata.bar(4).map(|b| (b.kind, b.address, b.size)),
            Some((BarKind::IO, Some(0xc040), 0x20))
        );
        let br = &log.functions[3];
        assert_eq!(
            br.bdf,
            Bdf {
                bus: 2,
                dev: 0,
                func: 0
            }
        );
        assert_eq!(br.bars[0].kind, BarKind::MEM64.pref());
        assert_eq!(br.bars[0].address, Some(0x8_0000_0000));
        assert!(log.exceptions.is_empty() && log.panics.is_empty());
        assert!(log.fault_lines().is_empty());
    }

    #[test]
    fn device_and_bar_lines_without_prefix_or_with_indent() {
        let log = KernelLog::parse(
            "0000:00:03.0 [1234:11e8] class 00ff00\n    BAR0 mem32 0xfea00000 size 0x100000\n",
        );
        assert!(log.problems.is_empty(), "{:?}", log.problems);
        assert_eq!(log.functions.len(), 1);
        assert_eq!(log.functions[0].bars[0].address, Some(0xfea0_0000));
    }

    #[test]
    fn reports_malformed_listing_lines() {
        let text = "\
[INFO  pci]     BAR0 mem32 0x1000 size 0x1000
[INFO  pci] 0000:00:03.0 [1234:11E8] class 00ff00
[INFO  pci] 0000:00:04.0 [1234:11e8] class 00ff00
[INFO  pci]     BAR0 mem16 0x1000 size 0x10
[INFO  pci]     BAR1 io pref 0x1000 size 0x10
[INFO  pci]     BAR2 mem32 0x1000
[INFO  pci]     BAR3 mem32 1000 size 0x10
[INFO  pci]     BAR4 mem32 0x1000 size 0x10
[INFO  pci]     BAR4 mem32 0x2000 size 0x10
[INFO  pci]     BAR7 mem32 0x1000 size 0x10
[INFO  pci] 0000:00:04.0 [1234:11e8] class 00ff00
[INFO  pci] 0000:00:20.0 [1234:11e8] class 00ff00
[INFO  iommu] 0000:00:04.0 -> domain 1
";
        let log = KernelLog::parse(text);
        assert_eq!(log.functions.len(), 2, "{:?}", log.functions);
        let p = log.problems.join("\n");
        for needle in [
            "line 1: BAR line without a PCI function",
            "line 2: bad PCI function line (device id",
            "line 4: bad BAR line (BAR kind",
            "line 5: bad BAR line (an io BAR cannot be `pref`",
            "line 6: bad BAR line (missing `size`",
            "line 7: bad BAR line (address must start with 0x",
            "line 9: BAR4 of 00:04.0 listed twice",
            "line 10: bad BAR line (BAR index",
            "line 11: PCI function 0000:00:04.0 listed twice",
            "line 12: bad PCI function line (device number 0x20",
        ] {
            assert!(p.contains(needle), "missing {needle:?} in\n{p}");
        }
        assert_eq!(log.problems.len(), 10, "{p}");
    }

    #[test]
    fn parses_exception_dump() {
        let text = "\
[INFO  selftest] touching 0x400000000000
[ERROR exception] EXCEPTION vector 14 (#PF) error code 0x0
[ERROR exception] RIP=0xffffffff80012345 CS=0x8 RFLAGS=0x10046
[ERROR exception] RAX=0x0000000000000000 CR2=0x0000400000000000 CR3=0x1000
";
        let log = KernelLog::parse(text);
        assert_eq!(log.exceptions.len(), 1);
        let e = &log.exceptions[0];
        assert_eq!((e.line, e.vector), (2, 14));
        assert_eq!(e.error_code, Some(0));
        assert_eq!(e.rip, Some(0xffff_ffff_8001_2345));
        assert_eq!(e.cr2, Some(0x4000_0000_0000));
        assert_eq!(log.fault_lines().len(), 1);
    }

    #[test]
    fn parses_panic() {
        let log = KernelLog::parse(
            "[ERROR panic] PANIC at kernel/src/selftest.rs:42:9: deliberate panic\n",
        );
        assert_eq!(log.panics.len(), 1);
        assert_eq!(
            log.panics[0].location,
            Some(("kernel/src/selftest.rs".to_string(), 42, 9))
        );
        let log = KernelLog::parse("PANIC at somewhere: oops\n");
        assert_eq!(log.panics[0].location, None);
    }

    #[test]
    fn fault_words_are_whole_words() {
        let log =
            KernelLog::parse("[INFO  x] PANIC_ON_OOPS=0 NOEXCEPTION\n[INFO  x] no panic here\n");
        assert!(log.fault_lines().is_empty());
        let log = KernelLog::parse("[ERROR x] EXCEPTION: double fault\n");
        assert_eq!(log.fault_lines().len(), 1);
    }

    #[test]
    fn keyword_lines_and_empty_log() {
        let log = KernelLog::parse(
            "[WARN  acpi] MCFG table missing: no ECAM\n[WARN  acpi] MCFG length 51 Invalid\n",
        );
        assert_eq!(log.lines_with("MCFG", &["missing"]).len(), 1);
        assert_eq!(
            log.lines_with("MCFG", &["invalid", "corrupt", "malformed"])
                .len(),
            1
        );
        assert!(log.lines_with("DMAR", &["missing"]).is_empty());
        assert!(KernelLog::parse("\r\n  \n").is_empty());
        assert!(!log.is_empty());
    }

    #[test]
    fn enumerated_line_needs_count() {
        let n = |l: &str| parse_enumerated(&split_line(l));
        assert_eq!(n("pci: enumerated 12 functions"), Some(12));
        assert_eq!(n("[INFO  pci] pci: enumerated 1 function"), Some(1));
        assert_eq!(n("[INFO  boot] pci: enumerated 3 functions"), Some(3));
        assert_eq!(n("[INFO  pci] enumerated 5 functions"), Some(5));
        assert_eq!(
            n("[INFO  sluice::pci] enumerated 5 functions in 2 ms"),
            Some(5)
        );
        assert_eq!(n("[INFO  boot] enumerated 5 functions"), None);
        assert_eq!(n("[INFO  pci] enumerated 5 buses"), None);
        assert_eq!(n("pci: enumerated all functions"), None);
    }

    #[test]
    fn never_panics_on_garbage() {
        // Fragments of every recognised form, mixed with multi-byte characters.
        let pieces = [
            "[INFO  pci] ",
            "[",
            "]",
            "0000:00:01.0 [",
            "1234:11e8] class ",
            "00ff00",
            "BAR0 ",
            "mem64 ",
            "pref ",
            "0x",
            "fea00000",
            " size ",
            "EXCEPTION vector ",
            "14",
            "CR2=",
            "RIP=0x",
            "PANIC at ",
            "a.rs:",
            "1:2: ",
            "pci: enumerated ",
            "3 functions",
            "holding:",
            "ü",
            "\u{1F600}",
            " ",
            "\n",
            "\r",
        ];
        let mut seed: u64 = 0x5eed;
        for _ in 0..2000 {
            let mut text = String::new();
            for _ in 0..40 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                text.push_str(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            let log = KernelLog::parse(&text);
            let _ = (
                log.fault_lines(),
                log.lines_with("MCFG", &["missing"]),
                log.is_empty(),
            );
        }
    }
}
