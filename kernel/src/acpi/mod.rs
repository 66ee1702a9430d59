//! ACPI: finding the RSDP, walking the RSDT/XSDT, and the tables the kernel reads.
//!
//! Firmware tables are input, not truth: every length is checked against the table's own
//! header and a sanity cap, every checksum is verified, and a bad table is recorded as
//! invalid *by name* while the rest of the boot goes on. (The `acpi` crate was not used:
//! its 5.x root-table walk subtracts the header size from the RSDT length unchecked and
//! checksums `length` bytes of whatever is there — fine for trusted firmware, not here.)
//!
//! [`AcpiTables`] reads headers only and needs no heap, so the frame allocator can leave
//! the tables' memory alone. Table bodies are then copied out ([`AcpiTables::copy_table`])
//! and parsed as byte slices by [`madt`] and [`mcfg`], which is what the host tests feed.

pub mod aml;
pub mod fadt;
pub mod madt;
pub mod mcfg;
pub mod prt;
mod sdt;

pub use sdt::{
    AcpiError, AcpiTables, HexDump, MAX_TABLE_LEN, MAX_TABLES, Rsdp, SDT_HEADER_LEN, SdtHeader,
    Signature, TableEntry, TableError, find_rsdp,
};

#[cfg(test)]
pub(crate) mod testutil {
    //! Building ACPI tables with correct checksums for tests.
    pub fn checksum_fix(table: &mut [u8], at: usize) {
        table[at] = 0;
        let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        table[at] = 0u8.wrapping_sub(sum);
    }

    /// A table with a standard 36-byte header, the given body, and a valid checksum.
    pub fn table(sig: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
        let len = 36 + body.len();
        let mut t = vec![0u8; len];
        t[0..4].copy_from_slice(sig);
        t[4..8].copy_from_slice(&(len as u32).to_le_bytes());
        t[8] = revision;
        t[10..16].copy_from_slice(b"BOCHS ");
        t[16..24].copy_from_slice(b"BXPC    ");
        t[24..28].copy_from_slice(&1u32.to_le_bytes());
        t[28..32].copy_from_slice(b"BXPC");
        t[32..36].copy_from_slice(&1u32.to_le_bytes());
        t[36..].copy_from_slice(body);
        checksum_fix(&mut t, 9);
        t
    }
}
