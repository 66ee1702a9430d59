//! `sluice-harness`: boots the Sluice kernel in QEMU (`run`) and runs the QEMU
//! scenario suite (`test`). `qemu-run.sh` at the repository root is a thin wrapper.

mod acpi;
mod amdvi_event;
mod blocked;
mod capture;
mod cargo;
mod compare;
mod dmatest;
mod groups;
mod guests;
mod ioapic;
mod machine;
mod model;
mod nvme;
mod oracle;
mod runner;
mod scenarios;
mod serial;
mod vfio;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use guests::GuestSpec;
use machine::{Iommu, Machine, Qemu, Topology, Wiring};
use scenarios::SCENARIOS;

const HELP: &str = "\
sluice-harness: launcher and QEMU test harness for the Sluice kernel

USAGE (via ./qemu-run.sh, which installs QEMU if needed and builds this tool):
  qemu-run.sh [run] [OPTIONS] [-- QEMU-ARGS...]   build the kernel, boot it, serial on this terminal
  qemu-run.sh test [OPTIONS] [-- QEMU-ARGS...]    host unit tests + every QEMU scenario
  qemu-run.sh list                                list the QEMU scenarios
  qemu-run.sh capture [--qemu PATH] [--check]     regenerate the DMAR/IVRS fixtures from QEMU
  qemu-run.sh bench [OPTIONS] [-- QEMU-ARGS...]   boot the `bench` guest, print its numbers
  qemu-run.sh help                                this text

RUN OPTIONS:
  --iommu vtd|amdvi|none   IOMMU model (default vtd; amdvi = -device amd-iommu, q35 only)
  --aw-bits N              intel-iommu address width (vtd only; QEMU's default otherwise:
                           39 on QEMU 7.2, 48 on QEMU 10)
  --intremap on|off        interrupt remapping of the IOMMU (QEMU's default otherwise)
  --device-iotlb on|off    device IOTLB (ATS) support of the IOMMU (vtd and amdvi)
  --amd-pt on|off          amd-iommu `pt` property (amdvi only; QEMU's default otherwise):
                           QEMU 9.2-10.0 translate emulated-device DMA only with pt=off,
                           QEMU 7.2 always translates
  --topology NAME          device topology (default flat):
TOPOLOGIES
  --gdb                    start paused, gdb stub on tcp::1234 (-s -S)
  --log LEVEL              kernel log level: error|warn|info|debug|trace (log=LEVEL)
  --append \"WORDS\"         extra kernel command line (e.g. \"selftest=panic\" or \"hold\")
  --kernel PATH            boot this ELF instead of building sluice-kernel
  --guest NAME[:SIZE[:groups=G,...]]
                           run the guest program NAME (guest/src/bin, built with
                           `cargo build --release -p sluice-guest`) with SIZE of RAM
                           (default 16M; 2M..256M, a multiple of 2M), owning the IOMMU
                           groups G (a group id, or a PCI function like 00:03.0 for its
                           group); repeatable. The guests are packed into
                           target/guests/run.img (-initrd) and started with kernel words
                           guest=NAME:SIZE[:groups=...]; a guest that must be stopped
                           needs --append expect=NAME:terminated
  --no-demo                boot the bare machine (flat topology, no guest) instead of the
                           default passthrough demo (topology vfio + guest vfio-demo owning
                           edu 00:03.0's group); any --guest, --topology, --kernel or
                           --iommu none also replaces the demo
  --print                  print the QEMU command line and exit
  --qemu PATH              QEMU binary (default $QEMU, else qemu-system-x86_64)
  -- ARGS...               extra QEMU arguments, appended last

TEST OPTIONS:
  --filter SUBSTR          only scenarios whose name contains SUBSTR
  --timeout SECS           per-scenario timeout (default 60)
  --no-unit                skip `cargo test --workspace`
  --also-qemu PATH|none    run every scenario again on this QEMU (names get a suffix
                           like ` [qemu10]`); default: target/qemu10/qemu-system-x86_64
                           if it exists (scripts/fetch-qemu10.sh makes it), `none` = off
  --qemu, --kernel, --log, --append, -- ARGS   as for run, applied to every scenario
  Output: one `PASS name (1.2s)` / `FAIL name: reason` line per scenario, the serial
  log of every scenario in target/scenarios/NAME.log (with NAME.cmd, NAME.stderr,
  NAME.query-pci.json; the --also-qemu run in target/scenarios/TAG/), and last the
  line `N passed, N failed` (unit tests and both QEMU runs included).
  Exit status 0 only if everything passed.

CAPTURE (regenerate the parser fixtures from QEMU's firmware):
  Boots the kernel with `acpidump` once per variant (q35 + edu; intel-iommu default,
  aw-bits=39, aw-bits=48, intremap=off, intremap=on, device-iotlb=on, bridges topology;
  amd-iommu default, intremap=on, intremap=off, device-iotlb=on, bridges topology) and
  writes the dumped DMAR/IVRS to iommu/vtd/tests/fixtures/TAG-VARIANT.dmar and
  iommu/amdvi/tests/fixtures/TAG-VARIANT.ivrs, TAG from `qemu --version` (qemu72,
  qemu10, else qemuMAJORMINOR). Files that are byte-identical are left alone.
  --qemu PATH              the QEMU to capture from (default as for run)
  --check                  compare only, write nothing; exit 1 if a file differs or is new
  --kernel, --timeout, -- ARGS   as for test

BENCH (a benchmark, not a test: no PASS/FAIL, not part of `test`):
  Boots the kernel with the guest `bench` alone (target/guests/bench.img, serial log
  target/bench.log) and prints its lines `bench null-hypercall: N cycles/call`,
  `bench cpuid-exit: N cycles/call`, `bench ratio: X.XX` (guest RDTSC, 10,000 calls
  each), then the host side: QEMU, machine, wall time, the ratio recomputed from the
  two counts, and how the kernel exited. Exit status 1 only if the numbers are missing.
  Takes the run options (machine, --qemu, --kernel, --log, --append, -- ARGS) and
  --timeout (default 60).

KERNEL EXIT (QEMU exit status): 33 boot completed, 35 boot stopped (feature missing),
37 panic, 39 CPU exception, 0 triple fault. `run` exits 0 for 33, else QEMU's status.
With guests: 33 if every guest exited with status 0 or was terminated as an
expect=NAME:terminated word said, else 35.
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Run,
    Test,
    List,
    Help,
    Capture,
    Bench,
}

/// `--also-qemu`: a second QEMU for `test`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum AlsoQemu {
    /// `--also-qemu none`.
    Off,
    Path(PathBuf),
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
    /// `None`: the default (target/qemu10/qemu-system-x86_64 when it exists).
    also_qemu: Option<AlsoQemu>,
    /// capture: compare only.
    check: bool,
    timeout_set: bool,
    /// `--guest NAME[:SIZE]` (run).
    guests: Vec<GuestSpec>,
    /// `--no-demo` (run): boot the bare machine instead of the passthrough demo.
    no_demo: bool,
    topology_set: bool,
}

/// The guest `./qemu-run.sh` runs by default: the passthrough demo.
pub const DEMO_GUEST: &str = "vfio-demo:16M:groups=00:03.0";

/// `./qemu-run.sh` with no `--guest` shows the passthrough demo: the `vfio` topology
/// (edu e1 at 00:03.0, e2 at 00:04.0) and the demo guest owning e1's group, on the IOMMU
/// chosen (intel-iommu by default; amd-iommu with `pt=off` unless `--amd-pt` says
/// otherwise). `--no-demo`, `--guest`, `--topology`, `--iommu none` or `--kernel` boot
/// what they say instead.
fn apply_demo(o: &mut Options) -> Result<(), String> {
    let wants_demo = o.mode == Mode::Run
        && !o.no_demo
        && o.guests.is_empty()
        && !o.topology_set
        && o.kernel.is_none()
        && o.machine.iommu != Some(Iommu::None);
    if wants_demo {
        o.machine.topology = Topology::Vfio;
        if o.machine.iommu == Some(Iommu::AmdVi) && o.machine.amd_pt.is_none() {
            o.machine.amd_pt = Some(false);
        }
        o.guests.push(GuestSpec::parse(DEMO_GUEST)?);
    }
    Ok(())
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
        also_qemu: None,
        check: false,
        timeout_set: false,
        guests: Vec::new(),
        no_demo: false,
        topology_set: false,
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
            "run" | "test" | "list" | "help" | "capture" | "bench" if first => {
                o.mode = match arg.as_str() {
                    "run" => Mode::Run,
                    "bench" => Mode::Bench,
                    "test" => Mode::Test,
                    "list" => Mode::List,
                    "capture" => Mode::Capture,
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
                o.machine.intremap = Some(on_off("--intremap", &value("--intremap")?)?);
                o.machine_set = true;
            }
            "--device-iotlb" => {
                o.machine.device_iotlb = Some(on_off("--device-iotlb", &value("--device-iotlb")?)?);
                o.machine_set = true;
            }
            "--amd-pt" => {
                o.machine.amd_pt = Some(on_off("--amd-pt", &value("--amd-pt")?)?);
                o.machine_set = true;
            }
            "--topology" => {
                o.machine.topology = Topology::parse(&value("--topology")?)?;
                o.machine_set = true;
                o.topology_set = true;
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
            "--guest" => o.guests.push(GuestSpec::parse(&value("--guest")?)?),
            "--no-demo" => o.no_demo = true,
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
                o.timeout_set = true;
            }
            "--also-qemu" => {
                let v = value("--also-qemu")?;
                o.also_qemu = Some(match v.as_str() {
                    "none" | "off" => AlsoQemu::Off,
                    "" => return Err("--also-qemu: expected a path or `none`".into()),
                    _ => AlsoQemu::Path(PathBuf::from(v)),
                });
            }
            "--check" => o.check = true,
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
            Err("--iommu/--aw-bits/--intremap/--device-iotlb/--amd-pt/--topology/--gdb/--print apply to run; scenarios define their machines".into())
        }
        Mode::Test | Mode::Capture if !o.guests.is_empty() => {
            Err("--guest applies to run; scenarios define their guests".into())
        }
        Mode::Run if o.filter.is_some() || !o.unit || o.also_qemu.is_some() => {
            Err("--filter/--no-unit/--also-qemu apply to test".into())
        }
        Mode::Capture
            if o.machine_set
                || o.gdb
                || o.print_only
                || o.filter.is_some()
                || !o.unit
                || o.also_qemu.is_some()
                || o.log.is_some()
                || !o.append.is_empty() =>
        {
            Err("capture takes only --qemu, --kernel, --timeout, --check and -- ARGS: its machines are fixed".into())
        }
        Mode::Bench
            if o.gdb
                || o.print_only
                || o.filter.is_some()
                || !o.unit
                || o.also_qemu.is_some()
                || !o.guests.is_empty() =>
        {
            Err("bench takes the machine options, --qemu, --kernel, --log, --append, --timeout and -- ARGS: its guest is `bench`".into())
        }
        Mode::Run | Mode::Test | Mode::List | Mode::Help | Mode::Bench if o.check => {
            Err("--check applies to capture".into())
        }
        Mode::Test | Mode::List | Mode::Help | Mode::Bench | Mode::Capture if o.no_demo => {
            Err("--no-demo applies to run".into())
        }
        _ => {
            apply_demo(&mut o)?;
            Ok(o)
        }
    }
}

fn on_off(name: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{name}: expected on or off, got {v:?}")),
    }
}

fn help_text() -> String {
    // `name` in a 16-column field, the description wrapped at 100 columns.
    const INDENT: usize = 29;
    const WIDTH: usize = 100;
    let mut topologies = String::new();
    for (name, _, about) in Topology::ALL {
        let mut line = format!("{:INDENT$}{name:<16}", "");
        let start = line.len();
        for word in about.split_whitespace() {
            if line.len() > start && line.len() + 1 + word.len() > WIDTH {
                topologies.push_str(line.trim_end());
                topologies.push('\n');
                line = format!("{:w$}", "", w = start);
            } else if line.len() > start {
                line.push(' ');
            }
            line.push_str(word);
        }
        topologies.push_str(&line);
        topologies.push('\n');
    }
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

/// `run`'s kernel command line: `log=`, the `guest=` words, then `--append`.
fn run_cmdline(o: &Options) -> Vec<String> {
    o.log
        .iter()
        .map(|l| format!("log={l}"))
        .chain(o.guests.iter().map(GuestSpec::word))
        .chain(o.append.iter().cloned())
        .collect()
}

/// Builds the guest programs and packs those `--guest` names into `path`.
fn pack_run_guests(o: &Options, root: &Path, path: &Path) -> Result<(), String> {
    let bins = cargo::build_guests(root)?;
    let names = guests::distinct_names(o.guests.iter().map(|g| g.name.as_str()));
    guests::write_archive(path, &names, &bins)
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
                println!("{:<30} expects {}  {}", s.name, s.expect.status(), s.about);
            }
            ExitCode::SUCCESS
        }
        Mode::Run => cmd_run(&opts),
        Mode::Test => cmd_test(&opts),
        Mode::Capture => cmd_capture(&opts),
        Mode::Bench => cmd_bench(&opts),
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
    let mut wiring = Wiring {
        gdb: o.gdb,
        ..Wiring::default()
    };
    if !o.guests.is_empty() {
        let img = target_dir(&root).join("guests").join("run.img");
        if let Err(e) = pack_run_guests(o, &root, &img) {
            return fail(e);
        }
        wiring.initrd = Some(img);
    }
    let cmdline = run_cmdline(o).join(" ");
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

/// The guest `bench` measures (guest/src/bin/bench.rs).
const BENCH_GUEST: &str = "bench";

/// `bench`'s kernel command line: `log=`, `guest=bench:16M`, then `--append`.
fn bench_cmdline(o: &Options) -> Vec<String> {
    o.log
        .iter()
        .map(|l| format!("log={l}"))
        .chain(std::iter::once(format!(
            "guest={BENCH_GUEST}:{}",
            guests::DEFAULT_SIZE
        )))
        .chain(o.append.iter().cloned())
        .collect()
}

fn cmd_bench(o: &Options) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("sluice-harness: {msg}");
        ExitCode::FAILURE
    };
    let qemu = match Qemu::probe(o.qemu.as_deref()) {
        Ok(q) => q,
        Err(e) => return fail(e),
    };
    if let Err(e) = o.machine.device_args() {
        return fail(e);
    }
    let root = workspace_root();
    let kernel = match resolve_kernel(o, &root) {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    let img = target_dir(&root).join("guests").join("bench.img");
    let packed = cargo::build_guests(&root)
        .and_then(|bins| guests::write_archive(&img, &[BENCH_GUEST], &bins));
    if let Err(e) = packed {
        return fail(e);
    }
    let wiring = Wiring {
        initrd: Some(img),
        ..Wiring::default()
    };
    let cmdline = bench_cmdline(o).join(" ");
    let args =
        match machine::qemu_args(&qemu, &o.machine, &kernel, &cmdline, &wiring, &o.qemu_extra) {
            Ok(a) => a,
            Err(e) => return fail(e),
        };
    eprintln!("sluice: {}", machine::shell_quote(&qemu.program, &args));
    let outcome = match runner::run(&runner::RunRequest {
        program: &qemu.program,
        args: &args,
        timeout: o.timeout,
        qmp_socket: None,
        monitor: None,
        follow_up: None,
    }) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let log_path = target_dir(&root).join("bench.log");
    let _ = std::fs::write(&log_path, &outcome.serial);
    let lines: Vec<String> = outcome.serial.lines().map(String::from).collect();
    let report = guests::GuestReport::parse(&lines);
    let bench = guests::BenchResult::from_report(&report, BENCH_GUEST);
    for l in &bench.lines {
        println!("{l}");
    }
    println!(
        "host: QEMU {} ({}), {}",
        qemu.version_string(),
        qemu.program.display(),
        o.machine
    );
    println!(
        "host: wall time {:.2}s for the whole boot; {}",
        outcome.elapsed.as_secs_f64(),
        scenarios::describe_exit(outcome.exit)
    );
    if let Some(r) = bench.host_ratio() {
        println!("host: ratio recomputed from the cycle counts: {r}");
    }
    for (line, end) in report.ends.get(BENCH_GUEST).into_iter().flatten() {
        println!("host: kernel says {BENCH_GUEST}: {end} (log line {line})");
    }
    println!("host: serial log {}", display_rel(&log_path, &root));
    if bench.null_cycles.is_none() || bench.cpuid_cycles.is_none() {
        return fail(format!(
            "the bench guest printed no numbers (see {})",
            log_path.display()
        ));
    }
    ExitCode::SUCCESS
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
        let (p, f) = run_all_qemus(o, &root, &selected);
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

/// Where `scripts/fetch-qemu10.sh` puts its QEMU 10 wrapper.
fn default_also_qemu(root: &Path) -> PathBuf {
    root.join("target/qemu10/qemu-system-x86_64")
}

/// The scenarios on the main QEMU, then on the second one (if any); (passed, failed).
fn run_all_qemus(o: &Options, root: &Path, selected: &[&scenarios::Scenario]) -> (u64, u64) {
    let fail_all = |suffix: &str, reason: &str| {
        for s in selected {
            println!("FAIL {}{suffix}: {reason}", s.name);
        }
        (0, selected.len() as u64)
    };
    let main_qemu = Qemu::probe(o.qemu.as_deref());
    let also = match &o.also_qemu {
        Some(AlsoQemu::Off) => None,
        Some(AlsoQemu::Path(p)) => Some(p.clone()),
        None => Some(default_also_qemu(root)).filter(|p| p.exists()),
    };
    let kernel = match resolve_kernel(o, root) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("sluice-harness: {e}");
            let (mut p, mut f) = fail_all("", "the kernel did not build");
            if let Some(path) = &also {
                let suffix = match Qemu::probe(Some(path)) {
                    Ok(q) => format!(" [{}]", capture::tag(q.version)),
                    Err(_) => " [also-qemu]".into(),
                };
                let (p2, f2) = fail_all(&suffix, "the kernel did not build");
                p += p2;
                f += f2;
            }
            return (p, f);
        }
    };
    let out_dir = target_dir(root).join("scenarios");
    let guest_dir = target_dir(root).join("guests");
    let guest_bins = selected
        .iter()
        .any(|s| !s.guests().is_empty())
        .then(|| cargo::build_guests(root));
    if let Some(Err(e)) = &guest_bins {
        eprintln!("sluice-harness: {e}");
    }
    let guests = guest_bins.as_ref().map(|bins| scenarios::GuestBins {
        dir: &guest_dir,
        bins,
    });

    println!("== QEMU scenarios");
    let (mut passed, mut failed) = match &main_qemu {
        Ok(q) => run_scenarios(o, q, &kernel, guests, &out_dir, "", selected),
        Err(e) => {
            eprintln!("sluice-harness: {e}");
            fail_all("", "QEMU not available")
        }
    };
    let Some(path) = also else {
        return (passed, failed);
    };
    match Qemu::probe(Some(&path)) {
        Err(e) => {
            eprintln!("sluice-harness: --also-qemu: {e}");
            println!("== QEMU scenarios again on {}", path.display());
            let (p, f) = fail_all(" [also-qemu]", "the second QEMU does not run");
            passed += p;
            failed += f;
        }
        Ok(q) if main_qemu.as_ref().is_ok_and(|m| m.version == q.version) => {
            println!(
                "== second QEMU {} is the same version ({}) as the first: not run twice",
                path.display(),
                q.version_string()
            );
        }
        Ok(q) => {
            let tag = capture::tag(q.version);
            println!(
                "== QEMU scenarios again on QEMU {} [{tag}]",
                q.version_string()
            );
            let (p, f) = run_scenarios(
                o,
                &q,
                &kernel,
                guests,
                &out_dir.join(&tag),
                &format!(" [{tag}]"),
                selected,
            );
            passed += p;
            failed += f;
        }
    }
    (passed, failed)
}

/// Runs the scenarios on one QEMU, printing one line each (names + `suffix`);
/// returns (passed, failed).
fn run_scenarios(
    o: &Options,
    qemu: &Qemu,
    kernel: &Path,
    guests: Option<scenarios::GuestBins<'_>>,
    out_dir: &Path,
    suffix: &str,
    selected: &[&scenarios::Scenario],
) -> (u64, u64) {
    let root = workspace_root();
    let all_fail = |reason: &str| {
        for s in selected {
            println!("FAIL {}{suffix}: {reason}", s.name);
        }
        (0, selected.len() as u64)
    };
    let sock_dir = std::env::temp_dir().join(format!("sluice-harness-{}", std::process::id()));
    for dir in [out_dir, sock_dir.as_path()] {
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
        qemu,
        kernel,
        out_dir,
        sock_dir: &sock_dir,
        timeout: o.timeout,
        cmdline_extra: &cmdline_extra,
        qemu_extra: &o.qemu_extra,
        guests,
    };
    let (mut passed, mut failed) = (0, 0);
    for s in selected {
        let r = scenarios::run_scenario(s, &ctx);
        if r.failures.is_empty() {
            passed += 1;
            println!("PASS {}{suffix} ({:.1}s)", s.name, r.elapsed.as_secs_f64());
            continue;
        }
        failed += 1;
        println!("FAIL {}{suffix}: {}", s.name, r.failures[0]);
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
            display_rel(&r.log_path, &root)
        );
        for l in tail {
            println!("    | {}", l.trim_end_matches('\r'));
        }
    }
    let _ = std::fs::remove_dir_all(&sock_dir);
    (passed, failed)
}

fn cmd_capture(o: &Options) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("sluice-harness: {msg}");
        ExitCode::FAILURE
    };
    let qemu = match Qemu::probe(o.qemu.as_deref()) {
        Ok(q) => q,
        Err(e) => return fail(e),
    };
    let root = workspace_root();
    let kernel = match resolve_kernel(o, &root) {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    let sum = capture::run(&capture::Options {
        qemu: &qemu,
        kernel: &kernel,
        root: &root,
        timeout: if o.timeout_set {
            o.timeout
        } else {
            Duration::from_secs(30)
        },
        check: o.check,
        qemu_extra: &o.qemu_extra,
    });
    if sum.failed > 0 || (o.check && sum.new + sum.differ > 0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
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
    fn the_passthrough_demo_is_the_default() {
        let demo = GuestSpec::parse(DEMO_GUEST).unwrap();
        for args in ["", "run", "run --log debug", "--iommu vtd --aw-bits 48"] {
            let o = parse(args).unwrap();
            assert_eq!(o.guests, std::slice::from_ref(&demo), "{args:?}");
            assert_eq!(o.machine.topology, Topology::Vfio, "{args:?}");
            assert_eq!(
                run_cmdline(&o).last().unwrap(),
                "guest=vfio-demo:16M:groups=00:03.0"
            );
        }
        let o = parse("--iommu amdvi").unwrap();
        assert_eq!(
            (o.machine.topology, o.machine.amd_pt),
            (Topology::Vfio, Some(false))
        );
        let o = parse("--iommu amdvi --amd-pt on").unwrap();
        assert_eq!(o.machine.amd_pt, Some(true), "the user's choice stands");
        for args in [
            "--no-demo",
            "--topology bridges",
            "--iommu none",
            "--kernel /tmp/k",
            "--guest hello",
        ] {
            let o = parse(args).unwrap();
            assert!(
                o.guests.iter().all(|g| g.name != "vfio-demo"),
                "{args:?} replaces the demo"
            );
            assert_ne!(o.machine.topology, Topology::Vfio, "{args:?}");
        }
        assert!(
            parse("test --no-demo")
                .unwrap_err()
                .contains("--no-demo applies to run")
        );
        assert!(
            parse("test").unwrap().guests.is_empty(),
            "scenarios define their guests"
        );
    }

    #[test]
    fn guest_options() {
        let o = parse("--guest hello --guest sse:32M --log debug --append expect=x:terminated")
            .unwrap();
        assert_eq!(o.mode, Mode::Run);
        assert_eq!(
            o.guests,
            [
                GuestSpec {
                    name: "hello".into(),
                    ram: 16 << 20,
                    groups: None,
                },
                GuestSpec {
                    name: "sse".into(),
                    ram: 32 << 20,
                    groups: None,
                }
            ]
        );
        assert_eq!(
            run_cmdline(&o),
            [
                "log=debug",
                "guest=hello:16M",
                "guest=sse:32M",
                "expect=x:terminated"
            ]
        );
        assert_eq!(kernel_cmdline(&o), ["log=debug", "expect=x:terminated"]);
        assert!(parse("run --no-demo").unwrap().guests.is_empty());
        for (args, needle) in [
            ("--guest", "needs a value"),
            ("--guest a:3M", "multiple of 2M"),
            ("--guest a:b:c", "bad size"),
            ("test --guest hello", "--guest applies to run"),
            ("capture --guest hello", "--guest applies to run"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(needle), "{args}: {e}");
        }
        assert!(help_text().contains("--guest NAME[:SIZE[:groups=G,...]]"));
        let o = parse("--topology vfio --guest vfio-edu:16M:groups=00:03.0").unwrap();
        assert_eq!(run_cmdline(&o), ["guest=vfio-edu:16M:groups=00:03.0"]);
        assert!(
            parse("--guest vfio-edu:16M:group=3")
                .unwrap_err()
                .contains("expected groups=")
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
        for (t, _, _) in Topology::ALL {
            assert!(h.contains(&format!(" {t} ")), "{t}");
        }
        assert!(!h.contains("TOPOLOGIES"));
        for opt in [
            "--device-iotlb",
            "--amd-pt",
            "--also-qemu",
            "--check",
            "capture",
        ] {
            assert!(h.contains(opt), "{opt}");
        }
    }

    #[test]
    fn bench_options() {
        let o = parse("bench --timeout 30 --log debug --append hold").unwrap();
        assert_eq!(o.mode, Mode::Bench);
        assert_eq!(bench_cmdline(&o), ["log=debug", "guest=bench:16M", "hold"]);
        assert!(parse("bench --guest hello").is_err());
        assert!(parse("bench --filter x").is_err());
        assert!(parse("bench --check").is_err());
        assert!(parse("test bench").is_err());
    }

    #[test]
    fn new_options() {
        let o = parse("--topology switch --iommu amdvi --device-iotlb on").unwrap();
        assert_eq!(o.machine.topology, Topology::Switch);
        assert_eq!(o.machine.device_iotlb, Some(true));
        let o = parse("--iommu amdvi --amd-pt off --topology dma").unwrap();
        assert_eq!(o.machine.amd_pt, Some(false));
        assert!(o.machine.device_args().unwrap()[1].ends_with(",pt=off"));
        let o = parse("test --also-qemu /opt/qemu10/q").unwrap();
        assert_eq!(
            o.also_qemu,
            Some(AlsoQemu::Path(PathBuf::from("/opt/qemu10/q")))
        );
        assert_eq!(
            parse("test --also-qemu none").unwrap().also_qemu,
            Some(AlsoQemu::Off)
        );
        assert_eq!(parse("test").unwrap().also_qemu, None);
        let o = parse("capture --qemu /q --check --timeout 9").unwrap();
        assert_eq!(o.mode, Mode::Capture);
        assert!(o.check && o.timeout_set);
        assert_eq!(o.qemu.as_deref(), Some(Path::new("/q")));
        for (args, needle) in [
            ("--device-iotlb maybe", "--device-iotlb: expected on or off"),
            ("--amd-pt yes", "--amd-pt: expected on or off"),
            ("test --amd-pt off", "apply to run"),
            ("test --device-iotlb on", "apply to run"),
            ("--also-qemu /q", "apply to test"),
            ("test --check", "--check applies to capture"),
            ("capture --iommu vtd", "capture takes only"),
            ("capture --filter x", "capture takes only"),
            ("capture --append hold", "capture takes only"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(needle), "{args}: {e}");
        }
    }
}
