//! Driving cargo: building the kernel and the guest programs, running the host unit
//! tests.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

pub use crate::guests::GUEST_PACKAGE;

/// The kernel package and its binary target.
pub const KERNEL_PACKAGE: &str = "sluice-kernel";
pub const KERNEL_BIN: &str = "sluice";

fn cargo() -> OsString {
    // Set by cargo when the harness runs under `cargo run`.
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// `cargo build --release -p PACKAGE`; returns every executable cargo reported
/// (binary name → path, as cargo reports it, so a `[build] target` is honoured).
fn build_bins(root: &Path, package: &str) -> Result<BTreeMap<String, PathBuf>, String> {
    let mut child = Command::new(cargo())
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-p",
            package,
            "--message-format=json-render-diagnostics",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let mut bins = BTreeMap::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some((name, path)) = bin_artifact(&line) {
                bins.insert(name, path);
            }
        }
    }
    let status = child.wait().map_err(|e| format!("cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`cargo build --release -p {package}` failed ({status})"
        ));
    }
    Ok(bins)
}

/// `cargo build --release -p sluice-kernel`; returns the path of the `sluice` ELF.
pub fn build_kernel(root: &Path) -> Result<PathBuf, String> {
    build_bins(root, KERNEL_PACKAGE)?
        .remove(KERNEL_BIN)
        .ok_or_else(|| {
            format!("cargo built {KERNEL_PACKAGE} but reported no `{KERNEL_BIN}` executable")
        })
}

/// `cargo build --release -p sluice-guest`; returns the guest programs (name → ELF).
pub fn build_guests(root: &Path) -> Result<BTreeMap<String, PathBuf>, String> {
    let bins = build_bins(root, GUEST_PACKAGE)?;
    if bins.is_empty() {
        return Err(format!(
            "cargo built {GUEST_PACKAGE} but reported no executable"
        ));
    }
    Ok(bins)
}

/// A bin target's (name, executable) from a cargo `compiler-artifact` JSON message.
pub fn bin_artifact(line: &str) -> Option<(String, PathBuf)> {
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
    if !is_bin {
        return None;
    }
    let name = target.get("name")?.as_str()?.to_string();
    let exe = v.get("executable")?.as_str().map(PathBuf::from)?;
    Some((name, exe))
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

    fn kernel_artifact(line: &str) -> Option<PathBuf> {
        bin_artifact(line)
            .filter(|(name, _)| name == KERNEL_BIN)
            .map(|(_, path)| path)
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

    #[test]
    fn finds_guest_executables() {
        let msg = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/guest#sluice-guest@0.1.0","target":{"kind":["bin"],"crate_types":["bin"],"name":"bad-port","src_path":"/w/guest/src/bin/bad_port.rs"},"executable":"/w/target/release/bad-port","fresh":false}"#;
        assert_eq!(
            bin_artifact(msg),
            Some((
                "bad-port".into(),
                PathBuf::from("/w/target/release/bad-port")
            ))
        );
        assert_eq!(kernel_artifact(msg), None);
        let lib = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"sluice_guest"},"executable":null}"#;
        assert_eq!(bin_artifact(lib), None);
    }
}
