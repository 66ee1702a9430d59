//! `sluice-harness`: boots the Sluice kernel in QEMU (`run`) and runs the QEMU
//! scenario suite (`test`). `qemu-run.sh` at the repository root is a thin wrapper.

mod acpi;
mod cargo;
mod compare;
mod machine;
mod model;
mod oracle;
mod runner;
mod scenarios;
mod serial;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use machine::{Iommu, Machine, Qemu, Topology, Wiring};
use scenarios::SCENARIOS;

const HELP: &str = "\
sluice-harness: launcher and QEMU test harness for the Sluice kernel

USAGE (via ./qemu-run.sh, which installs QEMU if needed and builds this tool):
  qemu-run.sh [run] [OPTIONS] [-- QEMU-ARGS...]   build the kernel, boot it, serial on this terminal
  qemu-run.sh test [OPTIONS] [-- QEMU-ARGS...]    host unit tests + every QEMU scenario
  qemu-run.sh list                                list the QEMU scenarios
  qemu-run.sh help                                this text

RUN OPTIONS:
  --iommu vtd|amdvi|none   IOMMU model (default vtd; amdvi = -device amd-iommu, q35 only)
  --aw-bits N              intel-iommu address width (vtd only; QEMU's default otherwise:
                           39 on QEMU 7.2, 48 on QEMU 10)
  --intremap on|off        interrupt remapping of the IOMMU (QEMU's default otherwise)
  --topology NAME          device topology (default flat):
TOPOLOGIES
  --gdb                    start paused, gdb stub on tcp::1234 (-s -S)
  --log LEVEL              kernel log level: error|warn|info|debug|trace (log=LEVEL)
  --append \"WORDS\"         extra kernel command line (e.g. \"selftest=panic\" or \"hold\")
  --kernel PATH            boot this ELF instead of building sluice-kernel
  --print                  print the QEMU command line and exit
  --qemu PATH              QEMU binary (default $QEMU, else qemu-system-x86_64)
  -- ARGS...               extra QEMU arguments, appended last

TEST OPTIONS:
  --filter SUBSTR          only scenarios whose name contains SUBSTR
  --timeout SECS           per-scenario timeout (default 60)
  --no-unit                skip `cargo test --workspace`
  --qemu, --kernel, --log, --append, -- ARGS   as for run, applied to every scenario
  Output: one `PASS name (1.2s)` / `FAIL name: reason` line per scenario, the serial
  log of every scenario in target/scenarios/NAME.log (with NAME.cmd, NAME.stderr,
  NAME.query-pci.json), and last the line `N passed, N failed` (unit tests included).
  Exit status 0 only if everything passed.

KERNEL EXIT (QEMU exit status): 33 boot completed, 35 boot stopped (feature missing),
37 panic, 39 CPU exception, 0 triple fault. `run` exits 0 for 33, else QEMU's status.
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Run,
    Test,
    List,
    Help,
}

#[derive(Debug)]
struct Options {
    mode: Mode,
    machine: Machine,
    machine_set: bool,
    qemu: Option<PathBuf>,
    gdb: bool,
    log: Option<String>,
    append: Vec<String>,
    kernel: Option<PathBuf>,
    print_only: bool,
    filter: Option<String>,
    timeout: Duration,
    unit: bool,
    qemu_extra: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        mode: Mode::Run,
        machine: Machine::DEFAULT,
        machine_set: false,
        qemu: None,
        gdb: false,
        log: None,
        append: Vec::new(),
        kernel: None,
        print_only: false,
        filter: None,
        timeout: Duration::from_secs(60),
        unit: true,
        qemu_extra: Vec::new(),
    };
    let mut it = args.iter();
    let mut first = true;
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "run" | "test" | "list" | "help" if first => {
                o.mode = match arg.as_str() {
                    "run" => Mode::Run,
                    "test" => Mode::Test,
                    "list" => Mode::List,
                    _ => Mode::Help,
                };
            }
            "-h" | "--help" => o.mode = Mode::Help,
            "--iommu" => {
                o.machine.iommu = Some(Iommu::parse(&value("--iommu")?)?);
                o.machine_set = true;
            }
            "--aw-bits" => {
                let v = value("--aw-bits")?;
                o.machine.aw_bits = Some(
                    v.parse()
                        .map_err(|_| format!("--aw-bits: not a number: {v:?}"))?,
                );
                o.machine_set = true;
            }
            "--intremap" => {
                o.machine.intremap = Some(match value("--intremap")?.as_str() {
                    "on" => true,
                    "off" => false,
                    v => return Err(format!("--intremap: expected on or off, got {v:?}")),
                });
                o.machine_set = true;
            }
            "--topology" => {
                o.machine.topology = Topology::parse(&value("--topology")?)?;
                o.machine_set = true;
            }
            "--qemu" => o.qemu = Some(PathBuf::from(value("--qemu")?)),
            "--gdb" => o.gdb = true,
            "--log" => {
                let v = value("--log")?;
                if !["error", "warn", "info", "debug", "trace"].contains(&v.as_str()) {
                    return Err(format!(
                        "--log: expected error|warn|info|debug|trace, got {v:?}"
                    ));
                }
                o.log = Some(v);
            }
            "--append" => o
                .append
                .extend(value("--append")?.split_whitespace().map(String::from)),
            "--kernel" => o.kernel = Some(PathBuf::from(value("--kernel")?)),
            "--print" | "--dry-run" => o.print_only = true,
            "--filter" => o.filter = Some(value("--filter")?),
            "--timeout" => {
                let v = value("--timeout")?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0 && s.is_finite())
                    .ok_or_else(|| format!("--timeout: not a positive number: {v:?}"))?;
                o.timeout = Duration::from_secs_f64(secs);
            }
            "--no-unit" => o.unit = false,
            "--" => {
                o.qemu_extra.extend(it.by_ref().cloned());
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
        first = false;
    }
    match o.mode {
        Mode::Test if o.machine_set || o.gdb || o.print_only => {
            Err("--iommu/--aw-bits/--intremap/--topology/--gdb/--print apply to run; scenarios define their machines".into())
        }
        Mode::Run if o.filter.is_some() || !o.unit => Err("--filter/--no-unit apply to test".into()),
        _ => Ok(o),
    }
}

fn help_text() -> String {
    let topologies: String = Topology::ALL
        .iter()
        .map(|(name, _, about)| format!("                             {name:<8} {about}\n"))
        .collect();
    HELP.replace("TOPOLOGIES\n", &topologies)
}

/// The workspace root (this crate lives in `<root>/harness`).
fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root.join(d),
        _ => root.join("target"),
    }
}

fn kernel_cmdline(o: &Options) -> Vec<String> {
    o.log
        .iter()
        .map(|l| format!("log={l}"))
        .chain(o.append.iter().cloned())
        .collect()
}

fn resolve_kernel(o: &Options, root: &Path) -> Result<PathBuf, String> {
    match &o.kernel {
        Some(k) if k.is_file() => Ok(k.clone()),
        Some(k) => Err(format!("--kernel {}: no such file", k.display())),
        None => cargo::build_kernel(root),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sluice-harness: {e}");
            return ExitCode::from(2);
        }
    };
    match opts.mode {
        Mode::Help => {
            print!("{}", help_text());
            ExitCode::SUCCESS
        }
        Mode::List => {
            for s in SCENARIOS {
                println!("{:<24} expects {}  {}", s.name, s.expect.status(), s.about);
            }
            ExitCode::SUCCESS
        }
        Mode::Run => cmd_run(&opts),
        Mode::Test => cmd_test(&opts),
    }
}

fn cmd_run(o: &Options) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("sluice-harness: {msg}");
        ExitCode::FAILURE
    };
    let qemu = match Qemu::probe(o.qemu.as_deref()) {
        Ok(q) => q,
        Err(e) => return fail(e),
    };
    // Validate the machine before a possibly long build.
    if let Err(e) = o.machine.device_args() {
        return fail(e);
    }
    let root = workspace_root();
    let kernel = match resolve_kernel(o, &root) {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    let wiring = Wiring {
        gdb: o.gdb,
        ..Wiring::default()
    };
    let cmdline = kernel_cmdline(o).join(" ");
    let args =
        match machine::qemu_args(&qemu, &o.machine, &kernel, &cmdline, &wiring, &o.qemu_extra) {
            Ok(a) => a,
            Err(e) => return fail(e),
        };
    let shown = machine::shell_quote(&qemu.program, &args);
    if o.print_only {
        println!("{shown}");
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "sluice: QEMU {} ({}), {}",
        qemu.version_string(),
        qemu.program.display(),
        o.machine
    );
    eprintln!("sluice: {shown}");
    if o.gdb {
        eprintln!(
            "sluice: paused for gdb: gdb {} -ex 'target remote :1234'",
            kernel.display()
        );
    }
    let mut child = match Command::new(&qemu.program).args(&args).spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start {}: {e}", qemu.program.display())),
    };
    catch_sigint();
    let status = match child.wait() {
        Ok(s) => s,
        Err(e) => return fail(format!("waiting for QEMU: {e}")),
    };
    let exit = match status.code() {
        Some(c) => runner::Exit::Status(c),
        None => {
            use std::os::unix::process::ExitStatusExt;
            runner::Exit::Signal(status.signal().unwrap_or(0))
        }
    };
    if INTERRUPTED.load(Ordering::Relaxed) {
        eprintln!("sluice: interrupted (Ctrl-C)");
        return ExitCode::from(130);
    }
    eprintln!("sluice: {}", scenarios::describe_exit(exit));
    match exit {
        runner::Exit::Status(33) => ExitCode::SUCCESS,
        runner::Exit::Status(c) => ExitCode::from(u8::try_from(c).unwrap_or(1).max(1)),
        runner::Exit::Signal(s) => ExitCode::from(u8::try_from(128 + s).unwrap_or(1)),
        runner::Exit::TimedOut => ExitCode::FAILURE,
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_signum: i32) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Notes Ctrl-C instead of dying from it: QEMU gets the same SIGINT (same
/// process group), exits (with status 0), and the harness reports why.
fn catch_sigint() {
    unsafe extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGINT: i32 = 2;
    let handler: extern "C" fn(i32) = on_sigint;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe;
    // glibc's signal() restarts the interrupted waitpid (SA_RESTART). The child
    // was spawned before, so it keeps the default disposition.
    unsafe {
        signal(SIGINT, handler as usize);
    }
}

fn cmd_test(o: &Options) -> ExitCode {
    let root = workspace_root();
    let mut passed: u64 = 0;
    let mut failed: u64 = 0;

    if o.unit {
        println!("== host unit tests: cargo test --workspace");
        let t = cargo::run_unit_tests(&root);
        passed += t.passed;
        failed += t.failed;
        match &t.error {
            Some(e) => {
                failed += 1;
                println!("FAIL host-unit-tests: {e}");
            }
            None => println!("host unit tests: {} passed; {} failed", t.passed, t.failed),
        }
    }

    let selected: Vec<&scenarios::Scenario> = SCENARIOS
        .iter()
        .filter(|s| o.filter.as_deref().is_none_or(|f| s.name.contains(f)))
        .collect();
    if selected.is_empty() {
        failed += 1;
        println!(
            "FAIL filter: no scenario name contains {:?}",
            o.filter.as_deref().unwrap_or("")
        );
    } else {
        println!("== QEMU scenarios");
        let (p, f) = run_scenarios(o, &root, &selected);
        passed += p;
        failed += f;
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs the scenarios, printing one line each; returns (passed, failed).
fn run_scenarios(o: &Options, root: &Path, selected: &[&scenarios::Scenario]) -> (u64, u64) {
    let all_fail = |reason: &str| {
        for s in selected {
            println!("FAIL {}: {reason}", s.name);
        }
        (0, selected.len() as u64)
    };
    let qemu = match Qemu::probe(o.qemu.as_deref()) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("sluice-harness: {e}");
            return all_fail("QEMU not available");
        }
    };
    let kernel = match resolve_kernel(o, root) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("sluice-harness: {e}");
            return all_fail("the kernel did not build");
        }
    };
    let out_dir = target_dir(root).join("scenarios");
    let sock_dir = std::env::temp_dir().join(format!("sluice-harness-{}", std::process::id()));
    for dir in [&out_dir, &sock_dir] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("sluice-harness: cannot create {}: {e}", dir.display());
            return all_fail("no scratch directory");
        }
    }
    println!(
        "QEMU {} ({}), kernel {}",
        qemu.version_string(),
        qemu.program.display(),
        kernel.display()
    );
    let cmdline_extra = kernel_cmdline(o);
    let ctx = scenarios::Context {
        qemu: &qemu,
        kernel: &kernel,
        out_dir: &out_dir,
        sock_dir: &sock_dir,
        timeout: o.timeout,
        cmdline_extra: &cmdline_extra,
        qemu_extra: &o.qemu_extra,
    };
    let (mut passed, mut failed) = (0, 0);
    for s in selected {
        let r = scenarios::run_scenario(s, &ctx);
        if r.failures.is_empty() {
            passed += 1;
            println!("PASS {} ({:.1}s)", s.name, r.elapsed.as_secs_f64());
            continue;
        }
        failed += 1;
        println!("FAIL {}: {}", s.name, r.failures[0]);
        for more in &r.failures[1..] {
            println!("    {more}");
        }
        let lines: Vec<&str> = r.serial.lines().collect();
        let tail = &lines[lines.len().saturating_sub(15)..];
        let shown = match tail.len() {
            0 => "empty".to_string(),
            n => format!("last {n} lines:"),
        };
        println!(
            "    serial log: {} ({shown})",
            display_rel(&r.log_path, root)
        );
        for l in tail {
            println!("    | {}", l.trim_end_matches('\r'));
        }
    }
    let _ = std::fs::remove_dir_all(&sock_dir);
    (passed, failed)
}

fn display_rel(p: &Path, root: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Options, String> {
        parse_args(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn run_options() {
        let o = parse("--iommu amdvi --intremap off --log debug --append selftest=panic -- -d int")
            .unwrap();
        assert_eq!(o.mode, Mode::Run);
        assert_eq!(o.machine.iommu, Some(Iommu::AmdVi));
        assert_eq!(o.machine.intremap, Some(false));
        assert_eq!(kernel_cmdline(&o), ["log=debug", "selftest=panic"]);
        assert_eq!(o.qemu_extra, ["-d", "int"]);
        let o = parse("run --topology bridges --aw-bits 48 --gdb --print").unwrap();
        assert_eq!(
            (o.machine.topology, o.machine.aw_bits, o.gdb, o.print_only),
            (Topology::Bridges, Some(48), true, true)
        );
    }

    #[test]
    fn test_options() {
        let o = parse("test --qemu /opt/q --filter boot --timeout 5 --no-unit").unwrap();
        assert_eq!(o.mode, Mode::Test);
        assert_eq!(o.qemu.as_deref(), Some(Path::new("/opt/q")));
        assert_eq!(o.filter.as_deref(), Some("boot"));
        assert_eq!(o.timeout, Duration::from_secs(5));
        assert!(!o.unit);
    }

    #[test]
    fn rejects_bad_options() {
        for (args, needle) in [
            ("--iommu foo", "--iommu"),
            ("--intremap maybe", "--intremap"),
            ("--log loud", "--log"),
            ("--topology star", "--topology"),
            ("--aw-bits", "needs a value"),
            ("--bogus", "unknown argument"),
            ("test --iommu vtd", "apply to run"),
            ("--filter x", "apply to test"),
            ("test --timeout -1", "--timeout"),
            ("list run", "unknown argument"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(needle), "{args}: {e}");
        }
        assert_eq!(parse("test --help").unwrap().mode, Mode::Help);
    }

    #[test]
    fn help_lists_topologies() {
        let h = help_text();
        for t in ["flat", "bridges", "legacy"] {
            assert!(h.contains(&format!(" {t} ")), "{t}");
        }
        assert!(!h.contains("TOPOLOGIES"));
    }
}
