//! The kernel command line (`-append "..."`): space-separated `key=value` words or flags.
//!
//! Unknown words are kept and reported at boot rather than rejected: a typo must not stop
//! a machine, but it must not pass silently either.

use log::LevelFilter;

/// Faults the kernel raises on purpose, to prove that a fault never looks like success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfTest {
    /// Read an unmapped canonical address: #PF (vector 14) with CR2 = [`SELFTEST_FAULT_ADDR`].
    PageFault,
    /// Execute `ud2`: #UD (vector 6).
    InvalidOpcode,
    /// Call `panic!`.
    Panic,
}

/// The address `selftest=page-fault` reads: canonical, and outside the boot identity map.
pub const SELFTEST_FAULT_ADDR: u64 = 0x0000_4000_0000_0000;

/// At most this many unrecognised words are remembered for the boot report.
pub const MAX_UNKNOWN: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options<'a> {
    pub log_level: LevelFilter,
    pub selftest: Option<SelfTest>,
    /// After bring-up, wait for one byte on the serial port before finishing (lets a test
    /// harness inspect the running machine through QEMU's monitor).
    pub hold: bool,
    /// Print every ACPI table's bytes as hex (`acpi: dump SIG ADDRESS HEX`), which is how
    /// the test fixtures of the DMAR/IVRS parsers are captured from QEMU.
    pub acpi_dump: bool,
    /// Run the IOMMU DMA experiments with the `edu` device (`dmatest N NAME: ...` lines).
    pub dma_test: bool,
    /// `guest=NAME:SIZE[:groups=..]` words were given (parsed by `guest_image`), and
    /// `expect=NAME:terminated` words say which guests must be stopped by the hypervisor.
    pub guests: bool,
    unknown: [&'a str; MAX_UNKNOWN],
    unknown_count: usize,
    /// Unknown words beyond [`MAX_UNKNOWN`].
    pub unknown_dropped: usize,
}

impl<'a> Options<'a> {
    pub fn parse(cmdline: &'a str) -> Self {
        let mut opts = Options {
            log_level: LevelFilter::Info,
            selftest: None,
            hold: false,
            acpi_dump: false,
            dma_test: false,
            guests: false,
            unknown: [""; MAX_UNKNOWN],
            unknown_count: 0,
            unknown_dropped: 0,
        };
        for word in cmdline.split_ascii_whitespace() {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            };
            let understood = match (key, value) {
                ("log", Some(v)) => match parse_level(v) {
                    Some(level) => {
                        opts.log_level = level;
                        true
                    }
                    None => false,
                },
                ("selftest", Some("page-fault")) => {
                    opts.selftest = Some(SelfTest::PageFault);
                    true
                }
                ("selftest", Some("invalid-opcode")) => {
                    opts.selftest = Some(SelfTest::InvalidOpcode);
                    true
                }
                ("selftest", Some("panic")) => {
                    opts.selftest = Some(SelfTest::Panic);
                    true
                }
                ("hold", None) => {
                    opts.hold = true;
                    true
                }
                ("acpidump", None) => {
                    opts.acpi_dump = true;
                    true
                }
                ("dmatest", None) => {
                    opts.dma_test = true;
                    true
                }
                ("guest", Some(_)) => {
                    opts.guests = true;
                    true
                }
                ("expect", Some(v)) => v.ends_with(":terminated"),
                _ => false,
            };
            if !understood {
                if opts.unknown_count < MAX_UNKNOWN {
                    opts.unknown[opts.unknown_count] = word;
                    opts.unknown_count += 1;
                } else {
                    opts.unknown_dropped += 1;
                }
            }
        }
        opts
    }

    /// Words that were not understood (reported at boot).
    pub fn unknown(&self) -> &[&'a str] {
        &self.unknown[..self.unknown_count]
    }
}

fn parse_level(v: &str) -> Option<LevelFilter> {
    Some(match v {
        "off" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let o = Options::parse("");
        assert_eq!(o.log_level, LevelFilter::Info);
        assert_eq!(o.selftest, None);
        assert!(!o.hold);
        assert!(o.unknown().is_empty());
    }

    #[test]
    fn parses_known_words() {
        let o = Options::parse("  log=trace   hold selftest=page-fault acpidump dmatest");
        assert!(o.acpi_dump && o.dma_test);
        assert_eq!(o.log_level, LevelFilter::Trace);
        assert!(o.hold);
        assert_eq!(o.selftest, Some(SelfTest::PageFault));
        assert_eq!(
            Options::parse("selftest=panic").selftest,
            Some(SelfTest::Panic)
        );
        assert_eq!(
            Options::parse("selftest=invalid-opcode").selftest,
            Some(SelfTest::InvalidOpcode)
        );
    }

    #[test]
    fn unknown_words_are_kept_not_fatal() {
        let o = Options::parse("log=loud hold=1 selftest=boom frobnicate log=warn");
        assert_eq!(
            o.unknown(),
            &["log=loud", "hold=1", "selftest=boom", "frobnicate"]
        );
        assert_eq!(o.log_level, LevelFilter::Warn);
        assert!(!o.hold);
        let many = "a b c d e f g h i j";
        let o = Options::parse(many);
        assert_eq!(o.unknown().len(), MAX_UNKNOWN);
        assert_eq!(o.unknown_dropped, 2);
    }
}
