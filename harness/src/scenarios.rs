//! The QEMU scenarios: ONE table (`SCENARIOS`) says what each boots and asserts.
//!
//! To add a scenario, append an entry to `SCENARIOS`: a name, a one-line
//! description, the machine (`Machine::DEFAULT` plus `with_iommu`/`with_topology`;
//! new topologies go in `machine.rs`), extra kernel command-line words, extra ACPI
//! tables, the expected kernel exit and the checks. `hold` (and the QMP oracle)
//! is added automatically when a check needs QEMU's view of the PCI bus.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::acpi::ExtraTable;
use crate::compare;
use crate::machine::{self, Iommu, Machine, Qemu, Topology, Wiring};
use crate::runner::{self, Exit, Outcome};
use crate::serial::{HOLDING_MARKER, KernelLog};

/// The kernel's isa-debug-exit codes, as QEMU exit statuses ((v << 1) | 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelExit {
    /// 0x10: boot completed.
    BootCompleted,
    /// 0x11: boot stopped cleanly (a required feature is missing; the log says which).
    Stopped,
    /// 0x12: kernel panic.
    Panic,
    /// 0x13: CPU exception.
    Exception,
}

impl KernelExit {
    pub const ALL: [KernelExit; 4] = [
        KernelExit::BootCompleted,
        KernelExit::Stopped,
        KernelExit::Panic,
        KernelExit::Exception,
    ];

    pub const fn status(self) -> i32 {
        match self {
            KernelExit::BootCompleted => 33,
            KernelExit::Stopped => 35,
            KernelExit::Panic => 37,
            KernelExit::Exception => 39,
        }
    }

    pub const fn describe(self) -> &'static str {
        match self {
            KernelExit::BootCompleted => "boot completed",
            KernelExit::Stopped => "boot stopped: a required feature is missing",
            KernelExit::Panic => "kernel panic",
            KernelExit::Exception => "CPU exception",
        }
    }
}

/// What a QEMU exit status means for this kernel.
pub fn describe_status(code: i32) -> String {
    if let Some(k) = KernelExit::ALL.iter().find(|k| k.status() == code) {
        return k.describe().into();
    }
    match code {
        0 => "triple fault or reset (QEMU -no-reboot exits 0)".into(),
        1 => "QEMU failed (bad option or device?) or the kernel wrote 0 to isa-debug-exit".into(),
        c if c > 1 && c % 2 == 1 => format!(
            "the kernel wrote unknown value 0x{:x} to isa-debug-exit",
            (c - 1) / 2
        ),
        _ => "unexpected QEMU exit status".into(),
    }
}

pub fn describe_exit(exit: Exit) -> String {
    match exit {
        Exit::Status(c) => format!("exit status {c} ({})", describe_status(c)),
        Exit::Signal(s) => format!("QEMU killed by signal {s}"),
        Exit::TimedOut => "timed out".into(),
    }
}

/// An assertion about one run.
#[derive(Clone, Copy, Debug)]
pub enum Check {
    /// The kernel's PCI listing equals QEMU's `query-pci` (functions, ids, classes, BARs).
    PciMatchesQemu,
    /// The kernel printed no PCI function while QEMU shows some (e.g. no ECAM).
    NoPciFunctions,
    /// Some log line contains `needle` and, case-insensitively, one of `any`.
    LogLine {
        needle: &'static str,
        any: &'static [&'static str],
    },
    /// The first exception has this vector (and CR2 value, if given).
    Exception { vector: u8, cr2: Option<u64> },
    /// A `PANIC at file.rs:line:col: ...` line.
    Panic,
}

impl Check {
    fn needs_oracle(self) -> bool {
        matches!(self, Check::PciMatchesQemu | Check::NoPciFunctions)
    }
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub machine: Machine,
    /// Extra kernel command-line words.
    pub cmdline: &'static str,
    pub acpi: &'static [ExtraTable],
    pub expect: KernelExit,
    pub checks: &'static [Check],
}

impl Scenario {
    pub fn needs_oracle(&self) -> bool {
        self.checks.iter().any(|c| c.needs_oracle())
    }
}

const MCFG_CORRUPT_WORDS: &[&str] = &["invalid", "corrupt", "malformed"];

/// The address `selftest=page-fault` reads (unmapped, canonical).
pub const PAGE_FAULT_ADDRESS: u64 = 0x0000_4000_0000_0000;

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "boot-vtd",
        about: "q35 + intel-iommu + edu: boots; PCI listing equals QEMU's",
        machine: Machine::DEFAULT.with_iommu(Iommu::Vtd),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[Check::PciMatchesQemu],
    },
    Scenario {
        name: "boot-amdvi",
        about: "q35 + amd-iommu (itself a PCI function) + edu: boots; PCI listing equals QEMU's",
        machine: Machine::DEFAULT.with_iommu(Iommu::AmdVi),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[Check::PciMatchesQemu],
    },
    Scenario {
        name: "boot-noiommu",
        about: "q35 without IOMMU + edu: boots; PCI listing equals QEMU's",
        machine: Machine::DEFAULT.with_iommu(Iommu::None),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[Check::PciMatchesQemu],
    },
    Scenario {
        name: "pci-bridges",
        about: "q35 + intel-iommu, root ports, PCIe-to-PCI bridge, switch: PCI listing equals QEMU's",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::Vtd)
            .with_topology(Topology::Bridges),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[Check::PciMatchesQemu],
    },
    Scenario {
        name: "missing-mcfg",
        about: "machine pc (no MCFG): boots, says MCFG is missing, lists no PCI function",
        machine: Machine::DEFAULT
            .with_iommu(Iommu::None)
            .with_topology(Topology::Legacy),
        cmdline: "",
        acpi: &[],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::LogLine {
                needle: "MCFG",
                any: &["missing"],
            },
            Check::NoPciFunctions,
        ],
    },
    Scenario {
        name: "corrupt-mcfg",
        about: "q35 + an extra MCFG of bad length: reported as invalid, the valid MCFG is used",
        machine: Machine::DEFAULT,
        cmdline: "",
        acpi: &[ExtraTable::CorruptMcfg],
        expect: KernelExit::BootCompleted,
        checks: &[
            Check::LogLine {
                needle: "MCFG",
                any: MCFG_CORRUPT_WORDS,
            },
            Check::PciMatchesQemu,
        ],
    },
    Scenario {
        name: "selftest-page-fault",
        about: "selftest=page-fault: #PF (vector 14) with CR2 = 0x400000000000",
        machine: Machine::DEFAULT,
        cmdline: "selftest=page-fault",
        acpi: &[],
        expect: KernelExit::Exception,
        checks: &[Check::Exception {
            vector: 14,
            cr2: Some(PAGE_FAULT_ADDRESS),
        }],
    },
    Scenario {
        name: "selftest-invalid-opcode",
        about: "selftest=invalid-opcode: #UD (vector 6)",
        machine: Machine::DEFAULT,
        cmdline: "selftest=invalid-opcode",
        acpi: &[],
        expect: KernelExit::Exception,
        checks: &[Check::Exception {
            vector: 6,
            cr2: None,
        }],
    },
    Scenario {
        name: "selftest-panic",
        about: "selftest=panic: PANIC at file.rs:line:col",
        machine: Machine::DEFAULT,
        cmdline: "selftest=panic",
        acpi: &[],
        expect: KernelExit::Panic,
        checks: &[Check::Panic],
    },
];

/// Judges one run. Returns the failure reasons; empty means PASS.
pub fn evaluate(s: &Scenario, o: &Outcome) -> Vec<String> {
    let mut fails = Vec::new();
    let log = KernelLog::parse(&o.serial);
    let qemu_said = o
        .stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::trim);

    match o.exit {
        Exit::TimedOut => {
            let mut r = format!(
                "timed out after {:.1}s (QEMU killed)",
                o.elapsed.as_secs_f64()
            );
            if s.needs_oracle() && !log.holding {
                let _ = write!(r, "; the kernel never printed `{HOLDING_MARKER}`");
            } else if log.holding {
                let _ = write!(r, "; last seen: the kernel holding");
            }
            fails.push(r);
            return fails;
        }
        Exit::Status(c) if c == s.expect.status() => {}
        other => {
            let mut r = format!(
                "{}, expected {} ({})",
                describe_exit(other),
                s.expect.status(),
                describe_status(s.expect.status())
            );
            if let Some(msg) = qemu_said {
                let _ = write!(r, "; QEMU said: {msg}");
            }
            fails.push(r);
        }
    }
    if log.is_empty() {
        fails.push("serial log is empty".into());
        return fails;
    }
    if s.expect == KernelExit::BootCompleted {
        for (n, line) in log.fault_lines().into_iter().take(3) {
            fails.push(format!(
                "unexpected fault report on line {n}: {}",
                line.trim()
            ));
        }
    }
    for check in s.checks {
        check_one(*check, &log, o, &mut fails);
    }
    fails
}

fn oracle_view(o: &Outcome) -> Result<&[crate::model::Function], String> {
    match &o.oracle {
        Some(Ok(view)) => Ok(&view.functions),
        Some(Err(e)) => Err(format!("no QEMU view of the PCI bus: {e}")),
        None => Err("no QEMU view of the PCI bus (oracle not requested)".into()),
    }
}

fn check_one(check: Check, log: &KernelLog, o: &Outcome, fails: &mut Vec<String>) {
    match check {
        Check::PciMatchesQemu => {
            for p in &log.problems {
                fails.push(format!("PCI listing format: {p}"));
            }
            match log.enumerated {
                None => fails.push("no `pci: enumerated N functions` line".into()),
                Some(n) if n != log.functions.len() => fails.push(format!(
                    "the kernel says `pci: enumerated {n} functions` but printed {} function lines",
                    log.functions.len()
                )),
                Some(_) => {}
            }
            match oracle_view(o) {
                Err(e) => fails.push(e),
                Ok(qemu) => {
                    let diffs = compare::compare(&log.functions, qemu);
                    if !diffs.is_empty() {
                        fails.push(format!(
                            "PCI listing differs from QEMU's ({} functions in QEMU, {} printed): {} difference(s)",
                            qemu.len(),
                            log.functions.len(),
                            diffs.len()
                        ));
                        fails.extend(diffs.into_iter().map(|d| format!("  {d}")));
                    }
                }
            }
        }
        Check::NoPciFunctions => {
            if !log.functions.is_empty() {
                fails.push(format!(
                    "the kernel printed {} PCI function line(s), expected none (first: {})",
                    log.functions.len(),
                    log.functions[0]
                ));
            }
            if let Some(n) = log.enumerated.filter(|n| *n != 0) {
                fails.push(format!(
                    "the kernel says `pci: enumerated {n} functions`, expected 0"
                ));
            }
            match oracle_view(o) {
                Err(e) => fails.push(e),
                Ok([]) => fails
                    .push("QEMU shows no PCI function either: the scenario proves nothing".into()),
                Ok(_) => {}
            }
        }
        Check::LogLine { needle, any } => {
            if log.lines_with(needle, any).is_empty() {
                fails.push(format!(
                    "no log line contains `{needle}` and one of: {}",
                    any.join(", ")
                ));
            }
        }
        Check::Exception { vector, cr2 } => match log.exceptions.first() {
            None => fails.push("no `EXCEPTION vector N` line".into()),
            Some(e) => {
                if e.vector != vector {
                    fails.push(format!(
                        "first exception (line {}) is vector {}, expected {vector}",
                        e.line, e.vector
                    ));
                }
                if e.rip.is_none() {
                    fails.push(format!("no `RIP=0x..` after the EXCEPTION line {}", e.line));
                }
                if let Some(want) = cr2 {
                    match e.cr2 {
                        None => {
                            fails.push(format!("no `CR2=0x..` after the EXCEPTION line {}", e.line))
                        }
                        Some(got) if got != want => {
                            fails.push(format!("CR2=0x{got:x}, expected 0x{want:x}"))
                        }
                        Some(_) => {}
                    }
                }
            }
        },
        Check::Panic => match log.panics.first() {
            None => fails.push("no `PANIC at` line".into()),
            Some(p) if p.location.is_none() => fails.push(format!(
                "the PANIC line {} has no `file.rs:line:col` location: {}",
                p.line, p.text
            )),
            Some(_) => {}
        },
    }
}

/// Everything a scenario run needs besides the scenario itself.
pub struct Context<'a> {
    pub qemu: &'a Qemu,
    pub kernel: &'a Path,
    /// `target/scenarios`: logs, command lines, query-pci replies, ACPI tables.
    pub out_dir: &'a Path,
    /// Short directory for QMP sockets (Unix socket paths are limited to ~107 bytes).
    pub sock_dir: &'a Path,
    pub timeout: Duration,
    /// Kernel command-line words added to every scenario (`--log`, `--append`).
    pub cmdline_extra: &'a [String],
    /// Extra QEMU arguments (after `--`).
    pub qemu_extra: &'a [String],
}

pub struct Report {
    pub failures: Vec<String>,
    pub elapsed: Duration,
    pub log_path: PathBuf,
    pub serial: String,
}

/// The kernel command line of a scenario.
pub fn kernel_cmdline(s: &Scenario, extra: &[String]) -> String {
    let mut words: Vec<&str> = extra.iter().map(String::as_str).collect();
    words.extend(s.cmdline.split_whitespace());
    if s.needs_oracle() {
        words.push("hold");
    }
    words.join(" ")
}

pub fn run_scenario(s: &Scenario, ctx: &Context<'_>) -> Report {
    let log_path = ctx.out_dir.join(format!("{}.log", s.name));
    let fail = |reason: String| Report {
        failures: vec![reason],
        elapsed: Duration::ZERO,
        log_path: log_path.clone(),
        serial: String::new(),
    };
    let mut wiring = Wiring::default();
    for table in s.acpi {
        let path = ctx.out_dir.join(table.file_name());
        if let Err(e) = std::fs::write(&path, table.bytes()) {
            return fail(format!("cannot write {}: {e}", path.display()));
        }
        wiring.acpi_tables.push(path);
    }
    if s.needs_oracle() {
        let sock = ctx.sock_dir.join(format!("{}.qmp", s.name));
        let _ = std::fs::remove_file(&sock);
        wiring.qmp_socket = Some(sock);
    }
    let cmdline = kernel_cmdline(s, ctx.cmdline_extra);
    let args = match machine::qemu_args(
        ctx.qemu,
        &s.machine,
        ctx.kernel,
        &cmdline,
        &wiring,
        ctx.qemu_extra,
    ) {
        Ok(a) => a,
        Err(e) => return fail(format!("bad machine definition: {e}")),
    };
    let command = machine::shell_quote(&ctx.qemu.program, &args);
    let _ = std::fs::write(
        ctx.out_dir.join(format!("{}.cmd", s.name)),
        format!("{command}\n"),
    );

    let outcome = runner::run(&runner::RunRequest {
        program: &ctx.qemu.program,
        args: &args,
        timeout: ctx.timeout,
        qmp_socket: wiring.qmp_socket.clone(),
    });
    if let Some(sock) = &wiring.qmp_socket {
        let _ = std::fs::remove_file(sock);
    }
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let _ = std::fs::write(&log_path, &outcome.serial);
    let stderr_path = ctx.out_dir.join(format!("{}.stderr", s.name));
    if outcome.stderr.is_empty() {
        let _ = std::fs::remove_file(&stderr_path);
    } else {
        let _ = std::fs::write(&stderr_path, &outcome.stderr);
    }
    if let Some(Ok(view)) = &outcome.oracle {
        let _ = std::fs::write(
            ctx.out_dir.join(format!("{}.query-pci.json", s.name)),
            &view.raw_json,
        );
    }
    Report {
        failures: evaluate(s, &outcome),
        elapsed: outcome.elapsed,
        log_path,
        serial: outcome.serial,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::{parse_query_pci, tests::BRIDGES_JSON};
    use crate::runner::OracleView;

    type OracleFunctions = Vec<crate::model::Function>;

    fn scenario(name: &str) -> &'static Scenario {
        SCENARIOS.iter().find(|s| s.name == name).unwrap()
    }

    fn outcome(
        status: i32,
        serial: &str,
        oracle: Option<Result<OracleFunctions, String>>,
    ) -> Outcome {
        Outcome {
            exit: Exit::Status(status),
            serial: serial.into(),
            stderr: String::new(),
            oracle: oracle.map(|r| {
                r.map(|functions| OracleView {
                    functions,
                    raw_json: String::new(),
                })
            }),
            elapsed: Duration::from_millis(1200),
        }
    }

    fn bridges() -> OracleFunctions {
        parse_query_pci(&serde_json::from_str(BRIDGES_JSON).unwrap()).unwrap()
    }

    use crate::compare::tests::MATCHING_LOG as GOOD_BRIDGES_LOG;

    #[test]
    fn names_are_unique_and_tidy() {
        let mut names: Vec<_> = SCENARIOS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len());
        for s in SCENARIOS {
            assert!(
                s.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{}",
                s.name
            );
            assert!(s.machine.device_args().is_ok(), "{}", s.name);
        }
    }

    #[test]
    fn cmdline_gets_hold_only_with_oracle() {
        assert_eq!(kernel_cmdline(scenario("boot-vtd"), &[]), "hold");
        assert_eq!(
            kernel_cmdline(scenario("selftest-panic"), &["log=debug".into()]),
            "log=debug selftest=panic"
        );
    }

    #[test]
    fn pass_with_matching_oracle() {
        let o = outcome(33, GOOD_BRIDGES_LOG, Some(Ok(bridges())));
        assert_eq!(evaluate(scenario("pci-bridges"), &o), Vec::<String>::new());
    }

    #[test]
    fn fail_on_mismatch_with_precise_diff() {
        let log = GOOD_BRIDGES_LOG.replace("size 0x100\n", "size 0x200\n");
        let f = evaluate(
            scenario("pci-bridges"),
            &outcome(33, &log, Some(Ok(bridges()))),
        );
        assert_eq!(
            f[0],
            "PCI listing differs from QEMU's (5 functions in QEMU, 5 printed): 1 difference(s)"
        );
        assert_eq!(f[1], "  01:00.0 BAR0: size kernel 0x200, QEMU 0x100");
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn fail_on_wrong_status_fault_lines_and_missing_oracle() {
        let log =
            format!("{GOOD_BRIDGES_LOG}[ERROR x] EXCEPTION vector 13 error code 0x0 RIP=0x1\n");
        let mut o = outcome(
            39,
            &log,
            Some(Err("the kernel never printed `holding:`".into())),
        );
        o.stderr = "qemu-system-x86_64: warning: something\n".into();
        let f = evaluate(scenario("boot-vtd"), &o);
        assert_eq!(
            f[0],
            "exit status 39 (CPU exception), expected 33 (boot completed); QEMU said: qemu-system-x86_64: warning: something"
        );
        assert!(
            f[1].starts_with("unexpected fault report on line 13: [ERROR x] EXCEPTION vector 13"),
            "{f:?}"
        );
        assert_eq!(
            f[2],
            "no QEMU view of the PCI bus: the kernel never printed `holding:`"
        );
    }

    #[test]
    fn triple_fault_empty_log_and_timeout() {
        let f = evaluate(scenario("boot-vtd"), &outcome(0, "", None));
        assert_eq!(
            f,
            [
                "exit status 0 (triple fault or reset (QEMU -no-reboot exits 0)), expected 33 (boot completed)",
                "serial log is empty"
            ]
        );
        let mut o = outcome(0, "[INFO  main] hi\n", None);
        o.exit = Exit::TimedOut;
        let f = evaluate(scenario("boot-vtd"), &o);
        assert_eq!(
            f,
            ["timed out after 1.2s (QEMU killed); the kernel never printed `holding:`"]
        );
    }

    #[test]
    fn listing_count_must_match_summary() {
        let log = GOOD_BRIDGES_LOG.replace("enumerated 5 functions", "enumerated 6 functions");
        let f = evaluate(
            scenario("pci-bridges"),
            &outcome(33, &log, Some(Ok(bridges()))),
        );
        assert_eq!(
            f,
            ["the kernel says `pci: enumerated 6 functions` but printed 5 function lines"]
        );
        let log = GOOD_BRIDGES_LOG.replace("[INFO  pci] pci: enumerated 5 functions\n", "");
        let f = evaluate(
            scenario("pci-bridges"),
            &outcome(33, &log, Some(Ok(bridges()))),
        );
        assert_eq!(f, ["no `pci: enumerated N functions` line"]);
    }

    #[test]
    fn missing_mcfg() {
        let s = scenario("missing-mcfg");
        let good =
            "[WARN  acpi] MCFG table missing: PCI enumeration disabled\n[INFO  main] holding:\n";
        assert!(evaluate(s, &outcome(33, good, Some(Ok(bridges())))).is_empty());
        let f = evaluate(s, &outcome(33, GOOD_BRIDGES_LOG, Some(Ok(bridges()))));
        assert_eq!(f[0], "no log line contains `MCFG` and one of: missing");
        assert!(f[1].starts_with("the kernel printed 5 PCI function line(s), expected none (first: 00:00.0 [8086:29c0]"), "{f:?}");
        assert_eq!(
            f[2],
            "the kernel says `pci: enumerated 5 functions`, expected 0"
        );
        let f = evaluate(s, &outcome(33, good, Some(Ok(Vec::new()))));
        assert_eq!(
            f,
            ["QEMU shows no PCI function either: the scenario proves nothing"]
        );
    }

    #[test]
    fn corrupt_mcfg_needs_the_warning() {
        let s = scenario("corrupt-mcfg");
        let f = evaluate(s, &outcome(33, GOOD_BRIDGES_LOG, Some(Ok(bridges()))));
        assert_eq!(
            f,
            ["no log line contains `MCFG` and one of: invalid, corrupt, malformed"]
        );
        let log =
            format!("[WARN  acpi] MCFG at 0x7ffe1234: Malformed length 51\n{GOOD_BRIDGES_LOG}");
        assert!(evaluate(s, &outcome(33, &log, Some(Ok(bridges())))).is_empty());
    }

    #[test]
    fn page_fault_selftest() {
        let s = scenario("selftest-page-fault");
        let good = "[ERROR x] EXCEPTION vector 14 (#PF) error code 0x0\n[ERROR x] RIP=0x0000000000104000 CR2=0x0000400000000000\n";
        assert!(evaluate(s, &outcome(39, good, None)).is_empty());
        let f = evaluate(
            s,
            &outcome(39, &good.replace("CR2=0x0000400000000000", "CR2=0x0"), None),
        );
        assert_eq!(f, ["CR2=0x0, expected 0x400000000000"]);
        let f = evaluate(
            s,
            &outcome(39, &good.replace("vector 14", "vector 13"), None),
        );
        assert_eq!(f, ["first exception (line 1) is vector 13, expected 14"]);
        let f = evaluate(s, &outcome(37, "[ERROR x] PANIC at a.rs:1:1: x\n", None));
        assert_eq!(
            f[0],
            "exit status 37 (kernel panic), expected 39 (CPU exception)"
        );
        assert_eq!(f[1], "no `EXCEPTION vector N` line");
    }

    #[test]
    fn panic_selftest() {
        let s = scenario("selftest-panic");
        assert!(
            evaluate(
                s,
                &outcome(
                    37,
                    "[ERROR p] PANIC at kernel/src/main.rs:10:5: boom\n",
                    None
                )
            )
            .is_empty()
        );
        let f = evaluate(s, &outcome(37, "[ERROR p] PANIC at unknown: boom\n", None));
        assert_eq!(
            f,
            ["the PANIC line 1 has no `file.rs:line:col` location: unknown: boom"]
        );
    }

    #[test]
    fn status_descriptions() {
        assert_eq!(
            describe_status(41),
            "the kernel wrote unknown value 0x14 to isa-debug-exit"
        );
        assert_eq!(describe_exit(Exit::Signal(9)), "QEMU killed by signal 9");
    }
}
