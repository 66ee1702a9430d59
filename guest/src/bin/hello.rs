//! `hello`: greets, then checks the hypercall ABI from the inside: VERSION, the CPUID
//! leaves, CONSOLE_WRITE (valid buffer, outside RAM, straddling the end of RAM, too
//! long), an unknown hypercall number, NULL, and the heap. Exit status 0 only if every
//! check passed.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::vec::Vec;

use sluice_guest::abi::{self, nr};
use sluice_guest::check::{ensure, expect_eq};
use sluice_guest::{Checks, GuestStartInfo, client, println, x86};

sluice_guest::entry!(guest_main);

/// A guest-physical address far outside any guest's RAM (256 GiB).
const OUTSIDE_RAM: u64 = 0x40_0000_0000;
/// A hypercall number nobody defines.
const UNKNOWN_NR: u64 = 0xdead;

static TOO_LONG: [u8; abi::CONSOLE_WRITE_MAX as usize + 1] =
    [b'x'; abi::CONSOLE_WRITE_MAX as usize + 1];

fn raw(nr: u64, a0: u64, a1: u64) -> i64 {
    // SAFETY: we are a Sluice guest; the calls made here either pass no memory or a
    // buffer the hypervisor only reads (or must refuse: the point of the checks).
    unsafe { client::hypercall(nr, a0, a1, 0, 0, 0, 0) }
}

fn guest_main(info: &GuestStartInfo) -> i32 {
    let name = info.name().unwrap_or("?");
    println!(
        "Hello from the Sluice guest `{name}`: RAM {:#x}..{:#x} ({} MiB)",
        info.ram_base,
        info.ram_base + info.ram_size,
        info.ram_size >> 20
    );
    let mut c = Checks::console();
    c.check("start-info", || {
        ensure(info.ram_base == abi::GUEST_RAM_BASE, || {
            format!("ram_base {:#x}, expected 0", info.ram_base)
        })?;
        ensure(info.ram_size >= 4 << 20, || {
            format!("ram_size {:#x} below 4 MiB", info.ram_size)
        })?;
        ensure(info.name().is_some_and(|n| !n.is_empty()), || {
            format!("no name (name_len {})", info.name_len)
        })
    });
    c.check("version", || {
        expect_eq("VERSION", client::version(), Ok(abi::ABI_VERSION))
    });
    c.check("cpuid-hypervisor-bit", || {
        let ecx = x86::cpuid(1)[2];
        ensure(ecx & (1 << 31) != 0, || {
            format!("CPUID.1:ECX = {ecx:#x}, bit 31 clear")
        })
    });
    c.check("cpuid-signature", || {
        let [eax, ebx, ecx, edx] = x86::cpuid(abi::CPUID_LEAF_SIGNATURE);
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&ebx.to_le_bytes());
        sig[4..8].copy_from_slice(&ecx.to_le_bytes());
        sig[8..].copy_from_slice(&edx.to_le_bytes());
        ensure(abi::is_signature(ebx, ecx, edx), || {
            format!(
                "CPUID 0x40000000 signature {:?}, expected \"SluiceSluice\"",
                core::str::from_utf8(&sig).unwrap_or("<not UTF-8>")
            )
        })?;
        ensure(eax >= abi::CPUID_MAX_LEAF, || {
            format!("CPUID 0x40000000 EAX = {eax:#x}, expected >= 0x40000001")
        })
    });
    c.check("cpuid-version", || {
        expect_eq(
            "CPUID 0x40000001 EAX",
            x86::cpuid(abi::CPUID_LEAF_VERSION)[0],
            abi::ABI_VERSION,
        )
    });
    c.check("console-write", || {
        let msg = b"console_write probe\n";
        expect_eq(
            "CONSOLE_WRITE result",
            raw(nr::CONSOLE_WRITE, msg.as_ptr() as u64, msg.len() as u64),
            msg.len() as i64,
        )
    });
    c.check("console-write-outside-ram", || {
        expect_eq(
            "CONSOLE_WRITE at GPA 0x4000000000",
            raw(nr::CONSOLE_WRITE, OUTSIDE_RAM, 16),
            -14,
        )
    });
    c.check("console-write-straddling-ram-end", || {
        let end = info.ram_base + info.ram_size;
        expect_eq(
            "CONSOLE_WRITE of 16 bytes 8 before the end of RAM",
            raw(nr::CONSOLE_WRITE, end - 8, 16),
            -14,
        )
    });
    c.check("console-write-too-long", || {
        expect_eq(
            "CONSOLE_WRITE of CONSOLE_WRITE_MAX + 1 bytes",
            raw(
                nr::CONSOLE_WRITE,
                TOO_LONG.as_ptr() as u64,
                TOO_LONG.len() as u64,
            ),
            -7,
        )
    });
    c.check("unknown-hypercall", || {
        expect_eq("hypercall 0xdead", raw(UNKNOWN_NR, 0, 0), -38)
    });
    c.check("null", || expect_eq("NULL", raw(nr::NULL, 0, 0), 0));
    c.check("heap", || {
        let v: Vec<u64> = (1..=1000).collect();
        expect_eq("sum of a 1000-element Vec", v.iter().sum::<u64>(), 500_500)
    });
    c.finish()
}
