//! RSDP, system description table headers and the root table directory.

use core::fmt;

use sluice_boot::phys::PhysRead;

pub const SDT_HEADER_LEN: usize = 36;
/// No table we read is anywhere near this; a larger length is treated as corrupt.
pub const MAX_TABLE_LEN: u32 = 4 << 20;
/// Tables listed at most (QEMU's q35 has about eight).
pub const MAX_TABLES: usize = 64;

/// A four-character table signature such as `MCFG`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 4]);

impl Signature {
    pub const RSDT: Self = Self(*b"RSDT");
    pub const XSDT: Self = Self(*b"XSDT");
    pub const FADT: Self = Self(*b"FACP");
    pub const DSDT: Self = Self(*b"DSDT");
    pub const MADT: Self = Self(*b"APIC");
    pub const MCFG: Self = Self(*b"MCFG");
    pub const DMAR: Self = Self(*b"DMAR");
    pub const IVRS: Self = Self(*b"IVRS");
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in &self.0 {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Printable form of a fixed-size OEM field (non-printable bytes become '?').
struct OemText<'a>(&'a [u8]);

impl fmt::Display for OemText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            let c = if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// The common 36-byte header of every system description table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SdtHeader {
    pub signature: Signature,
    pub length: u32,
    pub revision: u8,
    pub checksum: u8,
    pub oem_id: [u8; 6],
    pub oem_table_id: [u8; 8],
    pub oem_revision: u32,
    pub creator_id: [u8; 4],
    pub creator_revision: u32,
}

impl SdtHeader {
    pub fn from_bytes(b: &[u8; SDT_HEADER_LEN]) -> Self {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut oem_id = [0; 6];
        oem_id.copy_from_slice(&b[10..16]);
        let mut oem_table_id = [0; 8];
        oem_table_id.copy_from_slice(&b[16..24]);
        SdtHeader {
            signature: Signature([b[0], b[1], b[2], b[3]]),
            length: u32_at(4),
            revision: b[8],
            checksum: b[9],
            oem_id,
            oem_table_id,
            oem_revision: u32_at(24),
            creator_id: [b[28], b[29], b[30], b[31]],
            creator_revision: u32_at(32),
        }
    }
}

/// Why one table cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableError {
    /// The root table lists address 0.
    NullAddress,
    /// Not readable at that address (outside mapped memory).
    Unreadable { address: u64 },
    /// `length` smaller than the structure's fixed part.
    TooShort { length: u32, minimum: u32 },
    /// `length` above [`MAX_TABLE_LEN`].
    TooLong { length: u32 },
    /// The bytes do not sum to zero (`sum` is what they sum to).
    BadChecksum { sum: u8 },
    /// Signature differs from what the referencing structure promised.
    WrongSignature {
        expected: Signature,
        found: Signature,
    },
    /// A length that the table's format does not allow.
    BadLength { length: u32, rule: &'static str },
    /// A sub-structure with length 0 or 1 (would loop forever).
    ZeroLengthEntry { offset: usize },
    /// A sub-structure that runs past the end of the table.
    EntryOverrun {
        offset: usize,
        entry_length: usize,
        table_length: usize,
    },
    /// A sub-structure shorter than its type requires.
    EntryTooShort {
        offset: usize,
        entry_type: u8,
        length: usize,
        needed: usize,
    },
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NullAddress => write!(f, "listed at address 0"),
            Self::Unreadable { address } => write!(f, "not readable at {address:#x}"),
            Self::TooShort { length, minimum } => {
                write!(f, "length {length} is below the minimum {minimum}")
            }
            Self::TooLong { length } => write!(
                f,
                "length {length} exceeds the sanity limit {MAX_TABLE_LEN}"
            ),
            Self::BadChecksum { sum } => write!(f, "bad checksum (bytes sum to {sum:#04x}, not 0)"),
            Self::WrongSignature { expected, found } => {
                write!(f, "signature {found}, expected {expected}")
            }
            Self::BadLength { length, rule } => write!(f, "length {length} is invalid: {rule}"),
            Self::ZeroLengthEntry { offset } => {
                write!(f, "entry at offset {offset:#x} has length < 2")
            }
            Self::EntryOverrun {
                offset,
                entry_length,
                table_length,
            } => write!(
                f,
                "entry at offset {offset:#x} (length {entry_length}) runs past the table end {table_length:#x}"
            ),
            Self::EntryTooShort {
                offset,
                entry_type,
                length,
                needed,
            } => write!(
                f,
                "entry type {entry_type} at offset {offset:#x} has length {length}, needs {needed}"
            ),
        }
    }
}

/// Why ACPI as a whole is unavailable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// No valid RSDP at the hint nor in the BIOS areas.
    NoRsdp,
    /// Neither the XSDT nor the RSDT could be used.
    BadRootTable {
        signature: Signature,
        address: u64,
        error: TableError,
    },
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRsdp => write!(
                f,
                "no valid RSDP (start info hint and BIOS area scan both failed)"
            ),
            Self::BadRootTable {
                signature,
                address,
                error,
            } => {
                write!(f, "{signature} at {address:#x} is unusable: {error}")
            }
        }
    }
}

/// The Root System Description Pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rsdp {
    pub address: u64,
    pub revision: u8,
    pub oem_id: [u8; 6],
    pub rsdt_address: u32,
    /// Only for revision >= 2 with a valid extended checksum.
    pub xsdt_address: Option<u64>,
    pub length: u32,
}

impl fmt::Display for Rsdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RSDP 0x{:016x} {:06x} (v{:02} {})",
            self.address,
            self.length,
            self.revision,
            OemText(&self.oem_id)
        )
    }
}

fn sum_bytes(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// Check the RSDP at `address`; `None` if there is none there.
fn rsdp_at(mem: &dyn PhysRead, address: u64) -> Option<Rsdp> {
    let mut b = [0u8; 36];
    if !mem.read(address, &mut b[..20]) || &b[0..8] != b"RSD PTR " || sum_bytes(&b[..20]) != 0 {
        return None;
    }
    let revision = b[15];
    let mut oem_id = [0; 6];
    oem_id.copy_from_slice(&b[9..15]);
    let rsdt_address = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
    let mut rsdp = Rsdp {
        address,
        revision,
        oem_id,
        rsdt_address,
        xsdt_address: None,
        length: 20,
    };
    if revision >= 2 && mem.read(address, &mut b) {
        let length = u32::from_le_bytes([b[20], b[21], b[22], b[23]]);
        // ACPI 2.0+ RSDP is 36 bytes; its extended checksum covers `length` bytes.
        if length == 36 && sum_bytes(&b) == 0 {
            rsdp.length = length;
            let xsdt = u64::from_le_bytes([b[24], b[25], b[26], b[27], b[28], b[29], b[30], b[31]]);
            rsdp.xsdt_address = (xsdt != 0).then_some(xsdt);
        }
    }
    Some(rsdp)
}

/// Find the RSDP: at `hint` (from the PVH start info) if valid, else by the legacy BIOS
/// scan (first KiB of the EBDA, then 0xE0000..0xFFFFF on 16-byte boundaries).
/// The second value says whether the hint was present but invalid.
pub fn find_rsdp(mem: &dyn PhysRead, hint: Option<u64>) -> Result<(Rsdp, bool), AcpiError> {
    if let Some(h) = hint {
        if let Some(r) = rsdp_at(mem, h) {
            return Ok((r, false));
        }
    }
    let hint_bad = hint.is_some();
    let ebda = mem
        .read_u16(0x40E)
        .map(|seg| (seg as u64) << 4)
        .filter(|a| (0x400..0xA0000).contains(a));
    let areas = ebda
        .map(|a| (a, a + 1024))
        .into_iter()
        .chain(core::iter::once((0xE0000, 0x100000)));
    for (start, end) in areas {
        let mut a = start & !0xF;
        while a + 20 <= end {
            if let Some(r) = rsdp_at(mem, a) {
                return Ok((r, hint_bad));
            }
            a += 16;
        }
    }
    Err(AcpiError::NoRsdp)
}

/// One table found through the root table (or the FADT, for the DSDT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableEntry {
    pub address: u64,
    /// The header, when it could be read.
    pub header: Option<SdtHeader>,
    pub status: Result<(), TableError>,
}

impl TableEntry {
    pub fn signature(&self) -> Option<Signature> {
        self.header.map(|h| h.signature)
    }

    pub fn is_valid(&self) -> bool {
        self.status.is_ok()
    }

    /// The bytes the table occupies, if its header could be read and its length is sane.
    pub fn range(&self) -> Option<(u64, u64)> {
        let h = self.header?;
        (h.length as usize >= SDT_HEADER_LEN && h.length <= MAX_TABLE_LEN)
            .then_some((self.address, h.length as u64))
    }
}

impl fmt::Display for TableEntry {
    /// Linux-like: `MCFG 0x000000007ffe2a8e 00003C (v01 BOCHS  BXPCMCFG 00000001 BXPC 00000001)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.header {
            Some(h) => write!(
                f,
                "{} 0x{:016x} {:06X} (v{:02} {:6} {:8} {:08x} {:4} {:08x})",
                h.signature,
                self.address,
                h.length,
                h.revision,
                OemText(&h.oem_id),
                OemText(&h.oem_table_id),
                h.oem_revision,
                OemText(&h.creator_id),
                h.creator_revision
            )?,
            None => write!(f, "???? 0x{:016x}", self.address)?,
        }
        if let Err(e) = self.status {
            write!(f, " INVALID: {e}")?;
        }
        Ok(())
    }
}

/// A table's bytes as one lowercase hex string, read from physical memory as it is
/// formatted (no buffer, so it works before the heap exists). Unreadable bytes print `??`.
pub struct HexDump<'a> {
    pub mem: &'a dyn PhysRead,
    pub address: u64,
    pub length: u64,
}

impl fmt::Display for HexDump<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for i in 0..self.length {
            match self
                .address
                .checked_add(i)
                .and_then(|a| self.mem.read_u8(a))
            {
                Some(b) => write!(f, "{b:02x}")?,
                None => f.write_str("??")?,
            }
        }
        Ok(())
    }
}

/// Read and validate the table at `address`: header readable, sane length, checksum.
/// `expected` additionally pins the signature.
pub fn probe_table(mem: &dyn PhysRead, address: u64, expected: Option<Signature>) -> TableEntry {
    let mut entry = TableEntry {
        address,
        header: None,
        status: Ok(()),
    };
    if address == 0 {
        entry.status = Err(TableError::NullAddress);
        return entry;
    }
    let mut hb = [0u8; SDT_HEADER_LEN];
    if !mem.read(address, &mut hb) {
        entry.status = Err(TableError::Unreadable { address });
        return entry;
    }
    let h = SdtHeader::from_bytes(&hb);
    entry.header = Some(h);
    entry.status = check_table(mem, address, &h, expected);
    entry
}

fn check_table(
    mem: &dyn PhysRead,
    address: u64,
    h: &SdtHeader,
    expected: Option<Signature>,
) -> Result<(), TableError> {
    if let Some(e) = expected {
        if e != h.signature {
            return Err(TableError::WrongSignature {
                expected: e,
                found: h.signature,
            });
        }
    }
    if (h.length as usize) < SDT_HEADER_LEN {
        return Err(TableError::TooShort {
            length: h.length,
            minimum: SDT_HEADER_LEN as u32,
        });
    }
    if h.length > MAX_TABLE_LEN {
        return Err(TableError::TooLong { length: h.length });
    }
    // Checksum in chunks: no heap, and a stack buffer of bounded size.
    let mut sum = 0u8;
    let mut chunk = [0u8; 256];
    let mut off = 0u64;
    while off < h.length as u64 {
        let n = (h.length as u64 - off).min(chunk.len() as u64) as usize;
        let Some(at) = address.checked_add(off) else {
            return Err(TableError::Unreadable { address });
        };
        if !mem.read(at, &mut chunk[..n]) {
            return Err(TableError::Unreadable { address: at });
        }
        sum = sum.wrapping_add(sum_bytes(&chunk[..n]));
        off += n as u64;
    }
    if sum != 0 {
        return Err(TableError::BadChecksum { sum });
    }
    Ok(())
}

/// The root table and every table it lists, with each one's validity.
#[derive(Clone, Debug)]
pub struct AcpiTables {
    pub rsdp: Rsdp,
    /// The root table actually used (XSDT when valid, else RSDT).
    pub root: TableEntry,
    /// Set when an XSDT was offered but invalid, so the RSDT was used instead.
    pub xsdt_rejected: Option<TableError>,
    entries: [TableEntry; MAX_TABLES],
    count: usize,
    /// Root-table entries beyond [`MAX_TABLES`].
    pub dropped: usize,
    /// Bytes at the end of the root table that do not form a whole entry.
    pub trailing_bytes: usize,
}

impl AcpiTables {
    /// Walk the root table the RSDP points at and probe every table it lists, plus the
    /// DSDT named by the FADT.
    pub fn load(mem: &dyn PhysRead, rsdp: Rsdp) -> Result<Self, AcpiError> {
        let mut xsdt_rejected = None;
        let mut root = None;
        if let Some(xsdt) = rsdp.xsdt_address {
            let e = probe_table(mem, xsdt, Some(Signature::XSDT));
            match e.status {
                Ok(()) => root = Some((e, 8usize)),
                Err(err) => xsdt_rejected = Some(err),
            }
        }
        let (root, entry_size) = match root {
            Some(r) => r,
            None => {
                let address = rsdp.rsdt_address as u64;
                let e = probe_table(mem, address, Some(Signature::RSDT));
                if let Err(error) = e.status {
                    return Err(AcpiError::BadRootTable {
                        signature: Signature::RSDT,
                        address,
                        error,
                    });
                }
                (e, 4usize)
            }
        };
        let length = root.header.map_or(0, |h| h.length as usize);
        let body = length - SDT_HEADER_LEN; // check_table guaranteed length >= 36
        let mut tables = AcpiTables {
            rsdp,
            root,
            xsdt_rejected,
            entries: [TableEntry {
                address: 0,
                header: None,
                status: Ok(()),
            }; MAX_TABLES],
            count: 0,
            dropped: 0,
            trailing_bytes: body % entry_size,
        };
        for i in 0..body / entry_size {
            let at = root.address + (SDT_HEADER_LEN + i * entry_size) as u64;
            let address = if entry_size == 8 {
                mem.read_u64(at)
            } else {
                mem.read_u32(at).map(u64::from)
            };
            let entry = match address {
                Some(a) => probe_table(mem, a, None),
                None => TableEntry {
                    address: at,
                    header: None,
                    status: Err(TableError::Unreadable { address: at }),
                },
            };
            tables.push(entry);
        }
        if let Some(dsdt) = tables.dsdt_address(mem) {
            tables.push(probe_table(mem, dsdt, Some(Signature::DSDT)));
        }
        Ok(tables)
    }

    fn push(&mut self, e: TableEntry) {
        if self.count < MAX_TABLES {
            self.entries[self.count] = e;
            self.count += 1;
        } else {
            self.dropped += 1;
        }
    }

    /// The DSDT address from the first valid FADT (X_DSDT when present, else DSDT).
    fn dsdt_address(&self, mem: &dyn PhysRead) -> Option<u64> {
        let fadt = self.find(Signature::FADT)?;
        let len = fadt.header?.length as u64;
        let x_dsdt = if len >= 148 {
            mem.read_u64(fadt.address + 140).filter(|&a| a != 0)
        } else {
            None
        };
        x_dsdt
            .or_else(|| {
                (len >= 44)
                    .then(|| mem.read_u32(fadt.address + 40))
                    .flatten()
                    .map(u64::from)
            })
            .filter(|&a| a != 0)
    }

    /// Every table listed, valid or not, in root-table order (then the DSDT).
    pub fn entries(&self) -> &[TableEntry] {
        &self.entries[..self.count]
    }

    /// The first *valid* table with this signature.
    pub fn find(&self, sig: Signature) -> Option<&TableEntry> {
        self.entries()
            .iter()
            .find(|e| e.is_valid() && e.signature() == Some(sig))
    }

    /// All tables with this signature, valid or not.
    pub fn find_all(&self, sig: Signature) -> impl Iterator<Item = &TableEntry> {
        self.entries()
            .iter()
            .filter(move |e| e.signature() == Some(sig))
    }

    /// Memory the ACPI tables occupy (RSDP, root table, each listed table with a sane
    /// length): the frame allocator must not hand it out.
    pub fn occupied_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        core::iter::once((self.rsdp.address, self.rsdp.length as u64))
            .chain(self.root.range())
            .chain(self.entries().iter().filter_map(|e| e.range()))
    }

    /// Copy a valid table's bytes into `out` (which must be exactly its length).
    pub fn copy_table(
        mem: &dyn PhysRead,
        entry: &TableEntry,
        out: &mut [u8],
    ) -> Result<(), TableError> {
        entry.status?;
        if mem.read(entry.address, out) {
            Ok(())
        } else {
            Err(TableError::Unreadable {
                address: entry.address,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::testutil::{checksum_fix, table};
    use sluice_boot::phys::fake::FakePhys;

    fn rsdp_v0(rsdt: u32) -> Vec<u8> {
        let mut r = vec![0u8; 20];
        r[0..8].copy_from_slice(b"RSD PTR ");
        r[9..15].copy_from_slice(b"BOCHS ");
        r[16..20].copy_from_slice(&rsdt.to_le_bytes());
        checksum_fix(&mut r, 8);
        r
    }

    fn rsdt(addrs: &[u32]) -> Vec<u8> {
        let body: Vec<u8> = addrs.iter().flat_map(|a| a.to_le_bytes()).collect();
        table(b"RSDT", 1, &body)
    }

    /// A q35-like set: RSDP in the BIOS area, RSDT listing FACP, APIC, MCFG.
    fn q35_like() -> FakePhys {
        let mut mem = FakePhys::new();
        mem.put(0xF5B60, &rsdp_v0(0x7FFE_0000));
        mem.put(0x7FFE_0000, &rsdt(&[0x7FFE_1000, 0x7FFE_2000, 0x7FFE_3000]));
        let mut fadt_body = vec![0u8; 244 - 36];
        fadt_body[40 - 36..44 - 36].copy_from_slice(&0x7FFE_4000u32.to_le_bytes());
        mem.put(0x7FFE_1000, &table(b"FACP", 3, &fadt_body));
        mem.put(0x7FFE_2000, &table(b"APIC", 1, &[0; 8]));
        mem.put(0x7FFE_3000, &table(b"MCFG", 1, &[0; 8]));
        mem.put(0x7FFE_4000, &table(b"DSDT", 1, &[0x10; 100]));
        mem
    }

    #[test]
    fn hex_dump_prints_bytes_and_marks_unreadable_ones() {
        let mut mem = FakePhys::new();
        mem.put(0x1000, &[0xde, 0xad, 0x01]);
        let hex = HexDump {
            mem: &mem,
            address: 0x1000,
            length: 4,
        }
        .to_string();
        assert_eq!(hex, "dead01??");
    }

    #[test]
    fn finds_rsdp_by_hint_and_by_scan() {
        let mem = q35_like();
        let (r, hint_bad) = find_rsdp(&mem, Some(0xF5B60)).unwrap();
        assert_eq!(
            (r.address, r.revision, r.rsdt_address, hint_bad),
            (0xF5B60, 0, 0x7FFE_0000, false)
        );
        // A wrong hint falls back to the scan, and says so.
        let (r, hint_bad) = find_rsdp(&mem, Some(0x1234)).unwrap();
        assert_eq!((r.address, hint_bad), (0xF5B60, true));
        assert_eq!(find_rsdp(&FakePhys::new(), None), Err(AcpiError::NoRsdp));
    }

    #[test]
    fn rsdp_with_bad_checksum_is_not_found() {
        let mut mem = FakePhys::new();
        let mut r = rsdp_v0(0x1000);
        r[8] ^= 0xFF;
        mem.put(0xE0000, &r);
        assert_eq!(find_rsdp(&mem, Some(0xE0000)), Err(AcpiError::NoRsdp));
    }

    #[test]
    fn lists_tables_and_the_dsdt() {
        let mem = q35_like();
        let (rsdp, _) = find_rsdp(&mem, Some(0xF5B60)).unwrap();
        let t = AcpiTables::load(&mem, rsdp).unwrap();
        let sigs: Vec<String> = t
            .entries()
            .iter()
            .map(|e| e.signature().unwrap().to_string())
            .collect();
        assert_eq!(sigs, ["FACP", "APIC", "MCFG", "DSDT"]);
        assert!(t.entries().iter().all(|e| e.is_valid()));
        assert_eq!(t.find(Signature::MCFG).unwrap().address, 0x7FFE_3000);
        assert_eq!(t.occupied_ranges().count(), 6);
        let line = t.find(Signature::MCFG).unwrap().to_string();
        assert!(
            line.starts_with("MCFG 0x000000007ffe3000 00002C (v01 BOCHS  BXPC    "),
            "{line}"
        );
    }

    #[test]
    fn corrupt_tables_are_named_and_the_rest_survive() {
        let mut mem = q35_like();
        // A table with a broken checksum, one with length 0, one at an unreadable address,
        // one with an absurd length, and a null pointer.
        let mut bad_sum = table(b"HPET", 1, &[1, 2, 3]);
        bad_sum[36] ^= 0x55;
        mem.put(0x7FFE_5000, &bad_sum);
        let mut zero_len = table(b"WAET", 1, &[]);
        zero_len[4..8].copy_from_slice(&0u32.to_le_bytes());
        mem.put(0x7FFE_6000, &zero_len);
        let mut huge = table(b"SSDT", 1, &[]);
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        mem.put(0x7FFE_7000, &huge);
        mem.put(
            0x7FFE_0000,
            &rsdt(&[
                0x7FFE_1000,
                0x7FFE_5000,
                0x7FFE_6000,
                0xDEAD_0000,
                0x7FFE_7000,
                0,
                0x7FFE_3000,
            ]),
        );
        let (rsdp, _) = find_rsdp(&mem, Some(0xF5B60)).unwrap();
        let t = AcpiTables::load(&mem, rsdp).unwrap();
        let st: Vec<_> = t.entries().iter().map(|e| e.status).collect();
        assert_eq!(st[0], Ok(()));
        assert!(matches!(st[1], Err(TableError::BadChecksum { .. })));
        assert_eq!(
            st[2],
            Err(TableError::TooShort {
                length: 0,
                minimum: 36
            })
        );
        assert_eq!(
            st[3],
            Err(TableError::Unreadable {
                address: 0xDEAD_0000
            })
        );
        assert_eq!(st[4], Err(TableError::TooLong { length: u32::MAX }));
        assert_eq!(st[5], Err(TableError::NullAddress));
        assert_eq!(st[6], Ok(()));
        assert!(t.find(Signature::MCFG).is_some());
        assert!(
            t.entries()[1].to_string().contains("HPET")
                && t.entries()[1].to_string().contains("INVALID")
        );
        // Only tables with a sane length count as occupied memory.
        assert!(
            t.occupied_ranges()
                .all(|(_, len)| len <= MAX_TABLE_LEN as u64)
        );
    }

    #[test]
    fn bad_root_table_is_an_error_and_bad_xsdt_falls_back() {
        let mut mem = q35_like();
        let mut r = rsdt(&[0x7FFE_1000]);
        r[4..8].copy_from_slice(&10u32.to_le_bytes()); // shorter than a header
        mem.put(0x7FFE_0000, &r);
        let (rsdp, _) = find_rsdp(&mem, Some(0xF5B60)).unwrap();
        assert!(matches!(
            AcpiTables::load(&mem, rsdp),
            Err(AcpiError::BadRootTable {
                error: TableError::TooShort { length: 10, .. },
                ..
            })
        ));

        // v2 RSDP whose XSDT is corrupt: the RSDT is used and the rejection recorded.
        let mut mem = q35_like();
        let mut v2 = vec![0u8; 36];
        v2[..20].copy_from_slice(&rsdp_v0(0x7FFE_0000));
        v2[15] = 2;
        v2[20..24].copy_from_slice(&36u32.to_le_bytes());
        v2[24..32].copy_from_slice(&0x7FFF_0000u64.to_le_bytes());
        checksum_fix(&mut v2[..20], 8);
        checksum_fix(&mut v2, 32);
        mem.put(0xF5B60, &v2);
        let mut x = table(b"XSDT", 1, &0x7FFE_2000u64.to_le_bytes());
        x[9] ^= 1;
        mem.put(0x7FFF_0000, &x);
        let (rsdp, _) = find_rsdp(&mem, Some(0xF5B60)).unwrap();
        assert_eq!(rsdp.xsdt_address, Some(0x7FFF_0000));
        let t = AcpiTables::load(&mem, rsdp).unwrap();
        assert!(matches!(
            t.xsdt_rejected,
            Some(TableError::BadChecksum { .. })
        ));
        assert_eq!(t.root.signature(), Some(Signature::RSDT));
    }

    #[test]
    fn xsdt_is_preferred_and_trailing_bytes_counted() {
        let mut mem = q35_like();
        let mut v2 = vec![0u8; 36];
        v2[..20].copy_from_slice(&rsdp_v0(0x7FFE_0000));
        v2[15] = 2;
        v2[20..24].copy_from_slice(&36u32.to_le_bytes());
        v2[24..32].copy_from_slice(&0x7FFF_0000u64.to_le_bytes());
        checksum_fix(&mut v2[..20], 8);
        checksum_fix(&mut v2, 32);
        mem.put(0xF5B60, &v2);
        let mut body = 0x7FFE_3000u64.to_le_bytes().to_vec();
        body.extend_from_slice(&[0xAA, 0xBB, 0xCC]);
        mem.put(0x7FFF_0000, &table(b"XSDT", 1, &body));
        let (rsdp, _) = find_rsdp(&mem, None).unwrap();
        let t = AcpiTables::load(&mem, rsdp).unwrap();
        assert_eq!(t.root.signature(), Some(Signature::XSDT));
        assert_eq!(t.entries().len(), 1);
        assert_eq!(t.trailing_bytes, 3);
    }

    #[test]
    fn huge_root_table_is_bounded() {
        let mut mem = FakePhys::new();
        mem.put(0xF5B60, &rsdp_v0(0x10_0000));
        let addrs: Vec<u32> = (0..200).map(|i| 0x20_0000 + i * 0x100).collect();
        mem.put(0x10_0000, &rsdt(&addrs));
        for &a in &addrs {
            mem.put(a as u64, &table(b"SSDT", 1, &[]));
        }
        let (rsdp, _) = find_rsdp(&mem, None).unwrap();
        let t = AcpiTables::load(&mem, rsdp).unwrap();
        assert_eq!(t.entries().len(), MAX_TABLES);
        assert_eq!(t.dropped, 200 - MAX_TABLES);
    }
}
