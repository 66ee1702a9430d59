//! Extra ACPI tables that scenarios hand to QEMU with `-acpitable file=...`.
//!
//! QEMU (checked with 7.2) appends such tables to the RSDT after its own ones,
//! sets the header's length to the file size (warning if they differ) and
//! recomputes the checksum. The file therefore has to carry the whole table,
//! header included; the harness still writes a correct checksum so that only the
//! intended defect is present.

/// Length of the common ACPI table header.
pub const HEADER_LEN: usize = 36;

/// Extra ACPI tables a scenario may add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtraTable {
    /// An `MCFG` whose length is not 44 + 16·n: valid header and reserved field,
    /// then 7 bytes of garbage (a truncated allocation entry).
    CorruptMcfg,
}

impl ExtraTable {
    pub fn file_name(self) -> &'static str {
        match self {
            ExtraTable::CorruptMcfg => "corrupt-mcfg.aml",
        }
    }

    pub fn bytes(self) -> Vec<u8> {
        match self {
            ExtraTable::CorruptMcfg => {
                let mut body = vec![0u8; 8]; // reserved
                body.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0x5a, 0xa5, 0x07]);
                table(*b"MCFG", 1, &body)
            }
        }
    }
}

/// Builds a table: header (OEM "SLUICE"/"HARNESS ") + body, with a valid checksum.
pub fn table(signature: [u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(HEADER_LEN + body.len()).unwrap_or(u32::MAX);
    let mut t = Vec::with_capacity(HEADER_LEN + body.len());
    t.extend_from_slice(&signature);
    t.extend_from_slice(&len.to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, fixed below
    t.extend_from_slice(b"SLUICE"); // OEM ID
    t.extend_from_slice(b"HARNESS "); // OEM table ID
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(b"SLCE"); // creator ID
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    t[9] = 0u8.wrapping_sub(sum);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_mcfg_layout() {
        let t = ExtraTable::CorruptMcfg.bytes();
        assert_eq!(t.len(), 44 + 7);
        assert_ne!((t.len() - 44) % 16, 0, "length must not be 44 + 16n");
        assert_eq!(&t[0..4], b"MCFG");
        assert_eq!(
            u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as usize,
            t.len()
        );
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0, "checksum");
        assert_eq!(&t[10..16], b"SLUICE");
        assert!(t[36..44].iter().all(|b| *b == 0), "reserved field");
    }
}
