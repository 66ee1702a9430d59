//! Did the kernel route a device's INTx line through the I/O APIC the way it must? Read
//! from QEMU's I/O APIC itself — `info pic` prints every redirection entry raw — while
//! the kernel holds after its guests, not from anything the kernel prints.
//!
//! After the guest that used the line ended, the kernel released it: the entry stays
//! as programmed, masked. It must be level-triggered, name a vector of the kernel's
//! device pool (0x40..=0xEF), and be in the format the IOMMU requires: with VT-d
//! interrupt remapping, remappable (bit 48) with a nonzero handle (bits 63:49; handle 0
//! is never handed out); otherwise compatibility format (bit 48 clear).

use crate::runner::OracleView;

/// The monitor command.
pub const INFO_PIC: &str = "info pic";

/// Redirection entry bits.
const LEVEL: u64 = 1 << 15;
const MASKED: u64 = 1 << 16;
const REMAPPABLE: u64 = 1 << 48;
const HANDLE_SHIFT: u32 = 49;

/// The monitor reads.
pub fn reads() -> Vec<String> {
    vec![INFO_PIC.to_string()]
}

/// Redirection entry `pin` of the first I/O APIC in an `info pic` reply
/// (`  pin 23 0x0003000000018040 ...`).
pub fn entry(reply: &str, pin: u32) -> Option<u64> {
    reply.lines().find_map(|line| {
        let mut words = line.trim_start().strip_prefix("pin ")?.split_whitespace();
        if words.next()?.parse::<u32>().ok()? != pin {
            return None;
        }
        u64::from_str_radix(words.next()?.strip_prefix("0x")?, 16).ok()
    })
}

/// Judges entry `pin` (see the module docs). Returns the failure reasons; empty = pass.
pub fn check(pin: u32, remappable: bool, qemu: Result<&OracleView, String>) -> Vec<String> {
    let view = match qemu {
        Ok(v) => v,
        Err(e) => return vec![format!("{e}: the I/O APIC was not read")],
    };
    let reply = match view.monitor_reply(INFO_PIC) {
        None => return vec![format!("`{INFO_PIC}` was not run while the kernel held")],
        Some(Err(e)) => return vec![format!("`{INFO_PIC}` failed: {e}")],
        Some(Ok(r)) => r,
    };
    let Some(rte) = entry(reply, pin) else {
        return vec![format!("`{INFO_PIC}` shows no I/O APIC pin {pin}")];
    };
    check_entry(pin, rte, remappable)
}

fn check_entry(pin: u32, rte: u64, remappable: bool) -> Vec<String> {
    let mut fails = Vec::new();
    let vector = rte & 0xff;
    if !(0x40..=0xef).contains(&vector) {
        fails.push(format!(
            "I/O APIC pin {pin} = {rte:#018x}: vector {vector:#x} is not one of the kernel's device vectors (never routed?)"
        ));
    }
    if rte & LEVEL == 0 {
        fails.push(format!(
            "I/O APIC pin {pin} = {rte:#018x}: edge-triggered, INTx is level"
        ));
    }
    if rte & MASKED == 0 {
        fails.push(format!(
            "I/O APIC pin {pin} = {rte:#018x}: still unmasked after its guest ended"
        ));
    }
    match (remappable, rte & REMAPPABLE != 0) {
        (true, false) => fails.push(format!(
            "I/O APIC pin {pin} = {rte:#018x}: compatibility format, but interrupt remapping is on (the message would bypass the IRTE)"
        )),
        (true, true) if rte >> HANDLE_SHIFT == 0 => fails.push(format!(
            "I/O APIC pin {pin} = {rte:#018x}: remappable with handle 0 (never handed out)"
        )),
        (false, true) => fails.push(format!(
            "I/O APIC pin {pin} = {rte:#018x}: remappable format without interrupt remapping"
        )),
        _ => {}
    }
    fails
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPLY: &str = "ioapic0: ver=0x20 id=0x00 sel=0x2e (redir[15])\n  pin 0  0x0000000000010000 dest=0 vec=0   active-hi edge  masked fixed  physical\n  pin 23 0x0003000000018040 dest=1 vec=64  active-hi level masked fixed  physical\n  IRR        (none)\n";

    #[test]
    fn entries_are_read_by_pin() {
        assert_eq!(entry(REPLY, 23), Some(0x0003_0000_0001_8040));
        assert_eq!(entry(REPLY, 0), Some(0x1_0000));
        assert_eq!(entry(REPLY, 2), None);
        assert_eq!(entry("garbage\npin x 0x1", 1), None);
    }

    #[test]
    fn entries_are_judged() {
        assert!(check_entry(23, 0x0003_0000_0001_8040, true).is_empty());
        assert!(check_entry(23, 0x1_8040, false).is_empty());
        assert_eq!(check_entry(23, 0x1_8040, true).len(), 1, "compat with IR");
        assert_eq!(
            check_entry(23, 0x0001_0000_0001_8040, true).len(),
            1,
            "handle 0"
        );
        assert_eq!(check_entry(23, 0x0003_0000_0001_8040, false).len(), 1);
        assert_eq!(
            check_entry(23, 0x1_0000, false).len(),
            2,
            "never routed, edge"
        );
        assert_eq!(check_entry(23, 0x8040, false).len(), 1, "left unmasked");
    }
}
