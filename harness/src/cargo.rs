//! Driving cargo: building the kernel and running the host unit tests.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// The kernel package and its binary target.
pub const KERNEL_PACKAGE: &str = "sluice-kernel";
pub const KERNEL_BIN: &str = "sluice";

fn cargo() -> OsString {
    // Set by cargo when the harness runs under `cargo run`.
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// `cargo build --release -p sluice-kernel`; returns the path of the `sluice` ELF
/// as cargo reports it (so a `[build] target` in .cargo/config is honoured).
pub fn build_kernel(root: &Path) -> Result<PathBuf, String> {
    let mut child = Command::new(cargo())
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-p",
            KERNEL_PACKAGE,
            "--message-format=json-render-diagnostics",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let mut exe = None;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(path) = kernel_artifact(&line) {
                exe = Some(path);
            }
        }
    }
    let status = child.wait().map_err(|e| format!("cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`cargo build --release -p {KERNEL_PACKAGE}` failed ({status})"
        ));
    }
    exe.ok_or_else(|| {
        format!("cargo built {KERNEL_PACKAGE} but reported no `{KERNEL_BIN}` executable")
    })
}

/// Extracts the executable of the kernel's bin target from a cargo JSON message.
pub fn kernel_artifact(line: &str) -> Option<PathBuf> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v.get("reason")?.as_str()? != "compiler-artifact" {
        return None;
    }
    let target = v.get("target")?;
    let is_bin = target
        .get("kind")?
        .as_array()?
        .iter()
        .any(|k| k.as_str() == Some("bin"));
    if target.get("name")?.as_str()? != KERNEL_BIN || !is_bin {
        return None;
    }
    v.get("executable")?.as_str().map(PathBuf::from)
}

/// Totals of `cargo test`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitTests {
    pub passed: u64,
    pub failed: u64,
    /// Set when cargo itself failed beyond failing tests (e.g. a build error).
    pub error: Option<String>,
}

/// Adds up `test result: ok. 12 passed; 0 failed; ...` lines.
pub fn add_test_result(line: &str, totals: &mut UnitTests) -> bool {
    let Some(rest) = line.trim().strip_prefix("test result: ") else {
        return false;
    };
    let mut found = false;
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(label), Some(count)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = count.parse::<u64>() else {
            continue;
        };
        match label {
            "passed" => totals.passed += n,
            "failed" => totals.failed += n,
            _ => continue,
        }
        found = true;
    }
    found
}

/// `cargo test --workspace --no-fail-fast`, echoing its output.
pub fn run_unit_tests(root: &Path) -> UnitTests {
    let mut totals = UnitTests::default();
    let child = Command::new(cargo())
        .current_dir(root)
        .args(["test", "--workspace", "--no-fail-fast"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            totals.error = Some(format!("cannot run cargo: {e}"));
            return totals;
        }
    };
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            add_test_result(&line, &mut totals);
        }
    }
    match child.wait() {
        Ok(s) if s.success() => {}
        Ok(s) if totals.failed > 0 => {
            let _ = s; // failing tests explain the status
        }
        Ok(s) => {
            totals.error = Some(format!(
                "`cargo test --workspace` failed ({s}) without a failing test: build error?"
            ))
        }
        Err(e) => totals.error = Some(format!("cargo test: {e}")),
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_test_results() {
        let mut t = UnitTests::default();
        assert!(add_test_result(
            "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            &mut t
        ));
        assert!(add_test_result(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
            &mut t
        ));
        assert!(!add_test_result("running 12 tests", &mut t));
        assert!(!add_test_result("test serial::tests::x ... ok", &mut t));
        assert_eq!((t.passed, t.failed), (15, 2));
    }

    #[test]
    fn finds_kernel_executable() {
        let msg = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/kernel#sluice-kernel@0.1.0","target":{"kind":["bin"],"crate_types":["bin"],"name":"sluice","src_path":"/w/kernel/src/main.rs"},"executable":"/w/target/release/sluice","fresh":true}"#;
        assert_eq!(
            kernel_artifact(msg),
            Some(PathBuf::from("/w/target/release/sluice"))
        );
        let lib = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"sluice"},"executable":null}"#;
        assert_eq!(kernel_artifact(lib), None);
        assert_eq!(
            kernel_artifact(r#"{"reason":"build-finished","success":true}"#),
            None
        );
        assert_eq!(kernel_artifact("not json"), None);
    }
}
