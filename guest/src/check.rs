//! A tiny test harness for guests: [`Checks`] runs named checks and prints one line
//! each, `check NAME: ok` or `check NAME: FAILED: reason`, then a summary
//! `checks: N passed, N failed`; [`Checks::status`] is the exit status (0 only if at
//! least one check ran and all passed).
//!
//! ```ignore
//! let mut c = Checks::console();
//! c.check("version", || expect_eq("VERSION", client::version(), Ok(1)));
//! c.finish()
//! ```

use alloc::format;
use alloc::string::String;
use core::fmt::{Debug, Write};

use crate::console::Console;

/// The outcome of one check: `Err(reason)` fails it.
pub type CheckResult = Result<(), String>;

/// Runs checks and reports them to `out`.
pub struct Checks<W: Write> {
    out: W,
    passed: u32,
    failed: u32,
}

impl Checks<Console> {
    /// Checks that report on the guest console.
    pub fn console() -> Self {
        Checks::new(Console)
    }
}

impl<W: Write> Checks<W> {
    pub fn new(out: W) -> Self {
        Checks {
            out,
            passed: 0,
            failed: 0,
        }
    }

    /// Runs one check and prints its line; returns whether it passed.
    pub fn check(&mut self, name: &str, f: impl FnOnce() -> CheckResult) -> bool {
        match f() {
            Ok(()) => {
                self.passed += 1;
                let _ = writeln!(self.out, "check {name}: ok");
                true
            }
            Err(reason) => {
                self.failed += 1;
                let _ = writeln!(self.out, "check {name}: FAILED: {reason}");
                false
            }
        }
    }

    pub fn passed(&self) -> u32 {
        self.passed
    }

    pub fn failed(&self) -> u32 {
        self.failed
    }

    /// 0 if at least one check ran and none failed, else 1.
    pub fn status(&self) -> i32 {
        if self.failed == 0 && self.passed > 0 {
            0
        } else {
            1
        }
    }

    /// Prints `checks: N passed, N failed` and returns [`Checks::status`].
    pub fn finish(mut self) -> i32 {
        let _ = writeln!(
            self.out,
            "checks: {} passed, {} failed",
            self.passed, self.failed
        );
        self.status()
    }

    /// The output sink (for tests).
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// `Ok` if `got == want`, else `Err("WHAT: got G, expected W")`.
pub fn expect_eq<T: PartialEq + Debug>(what: &str, got: T, want: T) -> CheckResult {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, expected {want:?}"))
    }
}

/// `Ok` if `cond`, else `Err(reason())`.
pub fn ensure(cond: bool, reason: impl FnOnce() -> String) -> CheckResult {
    if cond { Ok(()) } else { Err(reason()) }
}

/// Runs named checks on the console and evaluates to the exit status:
/// `checks!("a" => || Ok(()), "b" => || expect_eq("x", 1, 1))`.
#[macro_export]
macro_rules! checks {
    ($($name:expr => $f:expr),+ $(,)?) => {{
        let mut c = $crate::check::Checks::console();
        $( c.check($name, $f); )+
        c.finish()
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_check_and_the_status() {
        let mut c = Checks::new(String::new());
        assert!(c.check("one", || Ok(())));
        assert!(!c.check("two", || expect_eq("VERSION", 2, 1)));
        assert!(c.check("three", || ensure(true, || "no".into())));
        assert!(!c.check("four", || ensure(false, || "it was false".into())));
        assert_eq!((c.passed(), c.failed(), c.status()), (2, 2, 1));
        let out = c.into_inner();
        assert_eq!(
            out,
            "check one: ok\n\
             check two: FAILED: VERSION: got 2, expected 1\n\
             check three: ok\n\
             check four: FAILED: it was false\n"
        );
    }

    #[test]
    fn all_passed_is_status_zero_and_none_is_failure() {
        let mut c = Checks::new(String::new());
        assert_eq!(c.status(), 1, "no check at all is not a pass");
        c.check("a", || Ok(()));
        assert_eq!(c.finish(), 0);
        let mut c = Checks::new(String::new());
        c.check("a", || Err("x".into()));
        assert_eq!(c.finish(), 1);
    }
}
