//! `vfio-testdev`: the I/O BAR and the expansion ROM through DEVICE_REGION_READ /
//! WRITE, on QEMU's `pci-testdev` (1b36:0005, topology `vfio-testdev`: 00:05.0, its ROM
//! loaded from `harness/testdata/vfio-rom.bin`).
//!
//! pci-testdev (QEMU `hw/misc/pci-testdev.c`) decodes BAR0 (memory, 4 KiB) and BAR1
//! (I/O, 256 ports) with the same handlers, one byte at a time: writing test number
//! `n` to offset 0 *through the I/O BAR* selects the test `3 + n` ("portio-…"); reads
//! return the selected test's header byte by byte — `test`, `width`, two pad bytes,
//! `offset` (u32: 128 + test), `data` (0xFA for a data-matching test), three pad bytes,
//! `count` (u32), then the NUL-terminated name — and a 1-byte write of `data` at
//! `offset` through the I/O BAR increments `count`. No byte of that is in guest
//! memory or in the hypervisor: the name and the count can only come from the device.
//!
//! 1. the testdev's group: container (type1v2), device; region info: BAR1 is I/O,
//!    READ|WRITE without MMAP, 256 bytes; the ROM READ only, 4096 bytes (QEMU rounds
//!    the 3072-byte image up to a power of two);
//! 2. test 0 selected through the I/O BAR: the header read back through the I/O BAR in
//!    1-, 2- and 4-byte accesses is test 3 "portio-no-eventfd", offset 131, data 0xFA;
//!    the same bytes through BAR0 (memory), so the ports reached *this* device;
//! 3. 1-byte writes of 0xFA at offset 131 through the I/O BAR: `count` goes 0, 1, 2; a
//!    write of another value does not count (exact data and width reach the port);
//! 4. bad I/O accesses (past the BAR, misaligned, 8 bytes) are EINVAL, and the device
//!    state is unchanged by them;
//! 5. COMMAND's I/O space bit is on and the guest cannot clear it (the I/O BAR still
//!    answers after a write that clears it);
//! 6. the ROM: the bytes read (the first 256 in full, then samples across all 4096 in
//!    4-byte accesses, plus 1- and 2-byte ones) equal the image's pattern, the padding
//!    QEMU adds reads 0 — also with the guest's memory decoding off and its virtual ROM
//!    BAR moved elsewhere (the hypervisor reads at the address firmware assigned); the
//!    virtual ROM BAR and COMMAND read back as the guest left them;
//! 7. ROM writes, reads past 4096, misaligned or 8-byte reads are EINVAL.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use sluice_guest::abi::vfio::{
    GROUP_LIST_OWNABLE, REGION_BAR0, REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_READ,
    REGION_INFO_FLAG_WRITE, REGION_ROM,
};
use sluice_guest::client::vfio::{Container, Device, Group};
use sluice_guest::console::Console;
use sluice_guest::passthrough::{
    call, cfg_read, cfg_write, device_name, group_list, step, type1v2_container,
};
use sluice_guest::{Checks, Errno, GuestStartInfo, println};

sluice_guest::entry!(guest_main);

/// QEMU's pci-testdev (PCI_VENDOR_ID_REDHAT, PCI_DEVICE_ID_REDHAT_TEST).
const TESTDEV_VENDOR: u16 = 0x1b36;
const TESTDEV_DEVICE: u16 = 0x0005;
/// Its I/O BAR.
const REGION_IO: u32 = 1;
const IO_SIZE: u64 = 256;
/// Test 0 of the port I/O half ("no-eventfd": no host notifier, just the counter).
const PORTIO_TEST: u8 = 3;
const PORTIO_NAME: &[u8] = b"portio-no-eventfd";
/// The header's `offset` field for test 3: IOTEST_IOSIZE (128) + 3 × the access width.
const PORTIO_OFFSET: u64 = 128 + 3;
/// IOTEST_DATAMATCH: the value a counted write must carry.
const DATAMATCH: u64 = 0xFA;
/// Header offsets.
const HDR_OFFSET: u64 = 4;
const HDR_DATA: u64 = 8;
const HDR_COUNT: u64 = 12;
const HDR_NAME: u64 = 16;

/// The ROM image the harness gives the device (`harness/testdata/vfio-rom.bin`, see
/// the `VfioTestdev` topology in harness/src/machine.rs): 3072 bytes; QEMU makes the
/// ROM BAR 4096 (the next power of two) and fills the rest with zeros.
const ROM_IMAGE_LEN: u64 = 3072;
const ROM_BAR_SIZE: u64 = 4096;
const EXPANSION_ROM: u64 = 0x30;
const COMMAND: u64 = 0x04;
const COMMAND_IO: u64 = 1 << 0;
const COMMAND_MEMORY: u64 = 1 << 1;

/// Byte `i` of the ROM image: 0x55 0xAA (the option ROM signature), the length in
/// 512-byte blocks, then `(31 i + 7) ^ (i >> 8)` (mod 256); 0 past the image.
fn rom_byte(i: u64) -> u8 {
    match i {
        0 => 0x55,
        1 => 0xAA,
        2 => (ROM_IMAGE_LEN / 512) as u8,
        i if i < ROM_IMAGE_LEN => ((i * 31 + 7) ^ (i >> 8)) as u8,
        _ => 0,
    }
}

/// `size` little-endian bytes of the ROM image at `offset`.
fn rom_value(offset: u64, size: u32) -> u64 {
    (0..u64::from(size)).fold(0, |v, i| v | u64::from(rom_byte(offset + i)) << (8 * i))
}

fn guest_main(_info: &GuestStartInfo) -> i32 {
    println!("vfio-testdev: an I/O BAR and the expansion ROM through DEVICE_REGION_READ/WRITE");
    let mut c = Checks::console();
    if run(&mut c).is_none() {
        println!("vfio-testdev: stopped at the first failure (later steps depend on it)");
    }
    c.finish()
}

fn open() -> Result<(Group, Container, Device), String> {
    let entries = group_list()?;
    let e = entries
        .iter()
        .find(|e| {
            e.vendor_id == TESTDEV_VENDOR
                && e.device_id == TESTDEV_DEVICE
                && e.group_flags & GROUP_LIST_OWNABLE != 0
        })
        .copied()
        .ok_or(format!(
            "no pci-testdev ({TESTDEV_VENDOR:04x}:{TESTDEV_DEVICE:04x}) in a group this guest may own"
        ))?;
    let name = device_name(&e);
    println!("pci-testdev is {name} in group {}", e.group_id);
    let g = call("GROUP_OPEN", Group::open(e.group_id))?;
    let ct = type1v2_container(&g)?;
    let d = call("GROUP_GET_DEVICE", g.device(&name))?;
    Ok((g, ct, d))
}

fn io_read(d: &Device, offset: u64, size: u32) -> Result<u64, String> {
    call(
        &format!("DEVICE_REGION_READ(BAR1 {offset:#x}, {size})"),
        d.region_read(REGION_IO, offset, size),
    )
}

fn io_write(d: &Device, offset: u64, size: u32, value: u64) -> Result<(), String> {
    call(
        &format!("DEVICE_REGION_WRITE(BAR1 {offset:#x}, {size}, {value:#x})"),
        d.region_write(REGION_IO, offset, size, value),
    )
}

fn rom_read(d: &Device, offset: u64, size: u32) -> Result<u64, String> {
    call(
        &format!("DEVICE_REGION_READ(ROM {offset:#x}, {size})"),
        d.region_read(REGION_ROM, offset, size),
    )
}

/// `Ok` if `r` is `EINVAL`.
fn einval<T: core::fmt::Debug>(what: &str, r: Result<T, Errno>) -> Result<(), String> {
    match r {
        Err(Errno::EINVAL) => Ok(()),
        other => Err(format!("{what}: {other:?}, expected EINVAL")),
    }
}

/// The selected test's name, read byte by byte through region `index` (I/O or BAR0).
fn name_via(d: &Device, index: u32) -> Result<Vec<u8>, String> {
    let mut name = Vec::new();
    for i in 0..PORTIO_NAME.len() as u64 {
        let b = call(
            &format!("DEVICE_REGION_READ(region {index} {:#x}, 1)", HDR_NAME + i),
            d.region_read(index, HDR_NAME + i, 1),
        )?;
        name.push(b as u8);
    }
    Ok(name)
}

/// Dword offsets of the ROM to compare with the image: every dword of the first 256
/// bytes, then one every `stride` bytes, the two around the end of the image (QEMU's
/// zero padding starts at 3072) and the last one. Not every dword: each ROM read costs
/// QEMU two memory-map updates (the ROM BAR switched on and off), about a millisecond
/// under TCG, and a guest has about a second of machine time (200 slices of 5 ms).
fn rom_sample(stride: u64) -> impl Iterator<Item = u64> {
    (0..0x100)
        .step_by(4)
        .chain((0x100..ROM_BAR_SIZE).step_by(stride as usize))
        .chain([ROM_IMAGE_LEN - 4, ROM_IMAGE_LEN, ROM_BAR_SIZE - 4])
}

/// The ROM dwords at `offsets`, compared with the image: `Ok((compared, mismatches))`.
fn rom_mismatches(d: &Device, offsets: impl Iterator<Item = u64>) -> Result<(u32, u32), String> {
    let (mut compared, mut bad) = (0, 0);
    for offset in offsets {
        let got = rom_read(d, offset, 4)?;
        let want = rom_value(offset, 4);
        if got != want {
            if bad < 4 {
                println!("ROM {offset:#x}: read {got:#010x}, image {want:#010x}");
            }
            bad += 1;
        }
        compared += 1;
    }
    Ok((compared, bad))
}

fn run(c: &mut Checks<Console>) -> Option<()> {
    let (_g, _ct, d) = step(c, "testdev-open", open)?;
    step(c, "region-info", || {
        let io = call("DEVICE_GET_REGION_INFO(1)", d.region_info(REGION_IO))?;
        let rom = call("DEVICE_GET_REGION_INFO(ROM)", d.region_info(REGION_ROM))?;
        let bar0 = call("DEVICE_GET_REGION_INFO(0)", d.region_info(REGION_BAR0))?;
        println!(
            "BAR0 size {:#x} flags {:#x}; BAR1 (I/O) size {:#x} flags {:#x}; ROM size {:#x} flags {:#x}",
            bar0.size, bar0.flags, io.size, io.flags, rom.size, rom.flags
        );
        let rw = REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE;
        if (io.size, io.flags) != (IO_SIZE, rw) {
            return Err(format!(
                "BAR1: size {:#x} flags {:#x}, expected {IO_SIZE:#x} READ|WRITE (no MMAP)",
                io.size, io.flags
            ));
        }
        if (rom.size, rom.flags) != (ROM_BAR_SIZE, REGION_INFO_FLAG_READ) {
            return Err(format!(
                "ROM: size {:#x} flags {:#x}, expected {ROM_BAR_SIZE:#x} READ",
                rom.size, rom.flags
            ));
        }
        if bar0.flags & REGION_INFO_FLAG_MMAP == 0 {
            return Err(format!("BAR0 flags {:#x}: not mappable", bar0.flags));
        }
        Ok(())
    })?;
    step(c, "io-header", || {
        // Test 0 of the port I/O half, selected through the port.
        io_write(&d, 0, 1, 0)?;
        let first = io_read(&d, 0, 4)?;
        let offset = io_read(&d, HDR_OFFSET, 4)?;
        let data = io_read(&d, HDR_DATA, 1)?;
        let count = io_read(&d, HDR_COUNT, 4)?;
        let name = name_via(&d, REGION_IO)?;
        let po = io_read(&d, HDR_NAME, 2)?;
        println!(
            "I/O BAR: test {:#x} width {}, offset {offset}, data {data:#x}, count {count}, name \"{}\" (2-byte read {po:#06x})",
            first & 0xFF,
            (first >> 8) & 0xFF,
            String::from_utf8_lossy(&name)
        );
        if first != u64::from(PORTIO_TEST) | 1 << 8 {
            return Err(format!(
                "test/width dword {first:#x}, expected {:#x}",
                u64::from(PORTIO_TEST) | 1 << 8
            ));
        }
        if (offset, data, count) != (PORTIO_OFFSET, DATAMATCH, 0) {
            return Err(format!(
                "offset {offset} data {data:#x} count {count}, expected {PORTIO_OFFSET} {DATAMATCH:#x} 0"
            ));
        }
        if name != PORTIO_NAME || po != u64::from(u16::from_le_bytes([b'p', b'o'])) {
            return Err(format!(
                "name {:?} / {po:#x}: not the device's",
                String::from_utf8_lossy(&name)
            ));
        }
        let via_memory = name_via(&d, REGION_BAR0)?;
        if via_memory != PORTIO_NAME {
            return Err(format!(
                "BAR0 shows {:?}: the ports reached another device",
                String::from_utf8_lossy(&via_memory)
            ));
        }
        println!("the same name through BAR0 (memory): the ports are this device's");
        Ok(())
    })?;
    step(c, "io-write-counts", || {
        let mut counts = Vec::new();
        for value in [DATAMATCH, DATAMATCH, 0x00, 0x1FA] {
            io_write(&d, PORTIO_OFFSET, 1, value)?;
            counts.push(io_read(&d, HDR_COUNT, 4)?);
        }
        println!("writes of 0xfa, 0xfa, 0x00, 0x1fa (1 byte) at {PORTIO_OFFSET}: count {counts:?}");
        // 0x1FA written as one byte is 0xFA: counted.
        if counts != [1, 2, 2, 3] {
            return Err(format!("counts {counts:?}, expected [1, 2, 2, 3]"));
        }
        Ok(())
    })?;
    step(c, "io-bad-accesses", || {
        einval("read past the BAR", d.region_read(REGION_IO, IO_SIZE, 1))?;
        einval(
            "read across the end",
            d.region_read(REGION_IO, IO_SIZE - 2, 4),
        )?;
        einval("8-byte read", d.region_read(REGION_IO, 0, 8))?;
        einval("misaligned read", d.region_read(REGION_IO, 1, 2))?;
        einval(
            "misaligned write",
            d.region_write(REGION_IO, PORTIO_OFFSET, 2, DATAMATCH),
        )?;
        einval(
            "write past the BAR",
            d.region_write(REGION_IO, IO_SIZE, 1, 0),
        )?;
        let count = io_read(&d, HDR_COUNT, 4)?;
        if count != 3 {
            return Err(format!("count {count} after refused writes, expected 3"));
        }
        println!("past the BAR, misaligned, 8 bytes: EINVAL; count still {count}");
        Ok(())
    })?;
    step(c, "io-decoding-is-the-hypervisors", || {
        let command = cfg_read(&d, COMMAND, 2)?;
        if command & COMMAND_IO == 0 {
            return Err(format!("COMMAND {command:#x}: I/O decoding off"));
        }
        cfg_write(&d, COMMAND, 2, command & !COMMAND_IO)?;
        let after = cfg_read(&d, COMMAND, 2)?;
        let name = name_via(&d, REGION_IO)?;
        println!(
            "COMMAND {command:#x}; I/O bit cleared in a write: reads {after:#x}, the I/O BAR still answers"
        );
        if after & COMMAND_IO == 0 || name != PORTIO_NAME {
            return Err(format!(
                "COMMAND {after:#x}, name {:?}: the guest turned I/O decoding off",
                String::from_utf8_lossy(&name)
            ));
        }
        Ok(())
    })?;
    step(c, "rom-contents", || {
        let signature = rom_read(&d, 0, 2)?;
        let blocks = rom_read(&d, 2, 1)?;
        println!("ROM: signature {signature:#06x}, {blocks} blocks of 512 bytes");
        if signature != 0xAA55 || blocks != ROM_IMAGE_LEN / 512 {
            return Err(format!("signature {signature:#x}, blocks {blocks}"));
        }
        for (offset, size) in [(3, 1), (0x101, 1), (0x202, 2), (0xbfe, 2), (0xbff, 1)] {
            let got = rom_read(&d, offset, size)?;
            if got != rom_value(offset, size) {
                return Err(format!(
                    "ROM {offset:#x}/{size}: {got:#x}, image {:#x}",
                    rom_value(offset, size)
                ));
            }
        }
        let (compared, bad) = rom_mismatches(&d, rom_sample(0x40))?;
        if bad != 0 {
            return Err(format!("{bad} of {compared} dwords differ"));
        }
        println!(
            "ROM: {compared} dwords across all {ROM_BAR_SIZE} bytes as the image ({ROM_IMAGE_LEN} bytes, then zeros)"
        );
        Ok(())
    })?;
    step(c, "rom-host-address", || {
        // The guest moves its (virtual) ROM BAR and turns memory decoding off: the
        // hypervisor still reads the ROM where firmware put it, and leaves both as the
        // guest set them.
        let original = cfg_read(&d, EXPANSION_ROM, 4)?;
        let command = cfg_read(&d, COMMAND, 2)?;
        cfg_write(&d, EXPANSION_ROM, 4, 0xFFFF_FFFF)?;
        let sized = cfg_read(&d, EXPANSION_ROM, 4)?;
        cfg_write(&d, EXPANSION_ROM, 4, 0x1234_5001)?;
        cfg_write(&d, COMMAND, 2, command & !COMMAND_MEMORY)?;
        let (compared, bad) = rom_mismatches(&d, rom_sample(0x100))?;
        let (moved, command_after) = (cfg_read(&d, EXPANSION_ROM, 4)?, cfg_read(&d, COMMAND, 2)?);
        cfg_write(&d, COMMAND, 2, command)?;
        cfg_write(&d, EXPANSION_ROM, 4, original)?;
        println!(
            "ROM BAR (virtual) {original:#x}, sizes as {sized:#x}; moved to {moved:#x} with memory decoding off (COMMAND {command_after:#x}): {bad} of {compared} dwords differ"
        );
        if original & 0xFFFF_F800 == 0 {
            return Err(format!(
                "ROM BAR {original:#x}: firmware assigned no address"
            ));
        }
        if sized != 0xFFFF_F001 {
            return Err(format!(
                "sizing read {sized:#x}, expected 0xfffff001 (4 KiB)"
            ));
        }
        if bad != 0 {
            return Err(format!(
                "{bad} dwords differ: not read at the host's address"
            ));
        }
        if moved != 0x1234_5001 || command_after & COMMAND_MEMORY != 0 {
            return Err(format!(
                "ROM BAR {moved:#x}, COMMAND {command_after:#x} afterwards: the read changed the guest's view"
            ));
        }
        Ok(())
    })?;
    step(c, "rom-bad-accesses", || {
        einval("ROM write", d.region_write(REGION_ROM, 0, 4, 0))?;
        einval("ROM 1-byte write", d.region_write(REGION_ROM, 0x10, 1, 0))?;
        einval(
            "read past the ROM",
            d.region_read(REGION_ROM, ROM_BAR_SIZE, 1),
        )?;
        einval("8-byte ROM read", d.region_read(REGION_ROM, 0, 8))?;
        einval("misaligned ROM read", d.region_read(REGION_ROM, 2, 4))?;
        let signature = rom_read(&d, 0, 2)?;
        if signature != 0xAA55 {
            return Err(format!("signature {signature:#x} after the refused writes"));
        }
        println!("ROM writes, reads past {ROM_BAR_SIZE:#x}, 8-byte and misaligned reads: EINVAL");
        Ok(())
    })?;
    Some(())
}
