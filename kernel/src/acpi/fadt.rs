//! FADT ("FACP"): only what the kernel needs from it, the address of the DSDT.
//!
//! The FADT grew over ACPI revisions: ACPI 1.0 has a 32-bit `DSDT` field at offset 40, and
//! ACPI 2.0 added a 64-bit `X_DSDT` at offset 140. Which fields exist is told by the
//! table's length, not by its revision (firmware gets the revision wrong more often), so
//! every field is read only when the length covers it.

use super::{SDT_HEADER_LEN, TableError};

/// `DSDT` (u32) lives at offset 40: a FADT shorter than 44 bytes cannot name a DSDT.
const DSDT_OFFSET: usize = 40;
const MIN_LEN: usize = DSDT_OFFSET + 4;
/// `X_DSDT` (u64) lives at offset 140 (ACPI 2.0+).
const X_DSDT_OFFSET: usize = 140;

/// The fields of the FADT this kernel reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fadt {
    pub revision: u8,
    /// The 32-bit `DSDT` field (0 when absent).
    pub dsdt: u32,
    /// The 64-bit `X_DSDT` field, when the table is long enough to have one.
    pub x_dsdt: Option<u64>,
}

impl Fadt {
    /// The DSDT's physical address: `X_DSDT` when present and nonzero (ACPI 2.0+ says it
    /// wins), else `DSDT`; `None` when both are 0.
    pub fn dsdt_address(&self) -> Option<u64> {
        self.x_dsdt
            .filter(|&a| a != 0)
            .or(Some(self.dsdt as u64))
            .filter(|&a| a != 0)
    }

    /// Both fields are set and point at different places: a firmware bug worth a warning
    /// (the `X_DSDT` one is used).
    pub fn dsdt_fields_disagree(&self) -> bool {
        matches!(self.x_dsdt, Some(x) if x != 0 && self.dsdt != 0 && x != self.dsdt as u64)
    }
}

/// Parse a whole FADT (header included; its checksum was verified when it was listed).
pub fn parse(table: &[u8]) -> Result<Fadt, TableError> {
    if table.len() < MIN_LEN {
        return Err(TableError::TooShort {
            length: table.len() as u32,
            minimum: MIN_LEN as u32,
        });
    }
    let u32_at =
        |o: usize| u32::from_le_bytes([table[o], table[o + 1], table[o + 2], table[o + 3]]);
    let declared = u32_at(4) as usize;
    if declared != table.len() {
        return Err(TableError::BadLength {
            length: declared as u32,
            rule: "differs from the bytes provided",
        });
    }
    let x_dsdt = table
        .get(X_DSDT_OFFSET..X_DSDT_OFFSET + 8)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]));
    Ok(Fadt {
        revision: table[8],
        dsdt: u32_at(DSDT_OFFSET),
        x_dsdt,
    })
}

// The header is 36 bytes; the DSDT field must come after it.
const _: () = assert!(DSDT_OFFSET >= SDT_HEADER_LEN);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::testutil::table;

    /// A FADT `len` bytes long with the given DSDT / X_DSDT fields.
    fn fadt(len: usize, dsdt: u32, x_dsdt: u64) -> Vec<u8> {
        let mut body = vec![0u8; len - 36];
        body[DSDT_OFFSET - 36..DSDT_OFFSET - 36 + 4].copy_from_slice(&dsdt.to_le_bytes());
        if len >= X_DSDT_OFFSET + 8 {
            body[X_DSDT_OFFSET - 36..X_DSDT_OFFSET - 36 + 8].copy_from_slice(&x_dsdt.to_le_bytes());
        }
        table(b"FACP", 3, &body)
    }

    #[test]
    fn real_qemu_fadts_name_the_dsdt() {
        // Captured from QEMU 7.2 and 10.0 (q35): both fields set, to the same address.
        for bytes in [
            &include_bytes!("testdata/facp-q35-qemu72.bin")[..],
            &include_bytes!("testdata/facp-q35-qemu10.bin")[..],
        ] {
            let f = parse(bytes).unwrap();
            assert_eq!(f.dsdt, 0x1ffe_0040);
            assert_eq!(f.x_dsdt, Some(0x1ffe_0040));
            assert_eq!(f.dsdt_address(), Some(0x1ffe_0040));
            assert!(!f.dsdt_fields_disagree());
        }
    }

    #[test]
    fn x_dsdt_wins_when_nonzero_else_dsdt() {
        let f = parse(&fadt(244, 0x1000, 0x2_0000_0000)).unwrap();
        assert_eq!(f.dsdt_address(), Some(0x2_0000_0000));
        assert!(f.dsdt_fields_disagree());
        let f = parse(&fadt(244, 0x1000, 0)).unwrap();
        assert_eq!(f.dsdt_address(), Some(0x1000));
        // An ACPI 1.0 FADT (116 bytes) has no X_DSDT at all.
        let f = parse(&fadt(116, 0x1000, 0)).unwrap();
        assert_eq!((f.x_dsdt, f.dsdt_address()), (None, Some(0x1000)));
        // A FADT just long enough for DSDT, and one that names none.
        assert_eq!(
            parse(&fadt(44, 0x3000, 0)).unwrap().dsdt_address(),
            Some(0x3000)
        );
        assert_eq!(parse(&fadt(244, 0, 0)).unwrap().dsdt_address(), None);
    }

    #[test]
    fn short_or_lying_lengths_are_errors() {
        assert_eq!(
            parse(&fadt(244, 1, 1)[..43]),
            Err(TableError::TooShort {
                length: 43,
                minimum: 44
            })
        );
        let mut t = fadt(244, 1, 1);
        t[4..8].copy_from_slice(&4000u32.to_le_bytes());
        assert_eq!(
            parse(&t),
            Err(TableError::BadLength {
                length: 4000,
                rule: "differs from the bytes provided"
            })
        );
        // Every truncation of a real FADT parses or fails cleanly.
        let real = include_bytes!("testdata/facp-q35-qemu10.bin");
        for n in 0..real.len() {
            let _ = parse(&real[..n]);
        }
    }
}
