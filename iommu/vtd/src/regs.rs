//! The identification registers of a remapping unit, decoded (no MMIO here).
//!
//! A unit tells software what it can do in three read-only registers at the start of
//! its register set: VER (offset 0x0), CAP (0x8) and ECAP (0x10). Everything the
//! driver does later depends on them (how many domain ids exist, which page-table
//! depths the unit walks, whether page-table writes must be flushed from the CPU
//! caches, where the fault-recording and IOTLB registers are), and guessing any of it
//! is a classic source of IOMMU bugs. So they are decoded once, here, into named fields
//! ([`Capability`], [`ExtendedCapability`]) that the rest of the driver reads; nothing
//! else should shift and mask the raw values.
//!
//! Field names are the VT-d specification's abbreviations (chapter 11, "Register
//! Descriptions"), lowercased; where the register stores an encoding (N-1, a multiple
//! of 16, a power of two), the field holds the decoded value and its doc says how.

use core::fmt;

use bitflags::bitflags;

/// Register offsets from the unit's register base.
pub mod offset {
    /// Version register (32-bit).
    pub const VER: usize = 0x00;
    /// Capability register (64-bit).
    pub const CAP: usize = 0x08;
    /// Extended capability register (64-bit).
    pub const ECAP: usize = 0x10;
}

/// VER: the architecture version the unit implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    /// Bits 7:4.
    pub major: u8,
    /// Bits 3:0.
    pub minor: u8,
}

impl Version {
    pub const fn decode(raw: u32) -> Self {
        Self {
            major: ((raw >> 4) & 0xf) as u8,
            minor: (raw & 0xf) as u8,
        }
    }
}

/// `1.0`
impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

bitflags! {
    /// SAGAW: the second-level page-table depths the unit can walk.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Sagaw: u8 {
        /// 2-level, 30-bit (defined by old specs, reserved since).
        const TWO_LEVEL = 1 << 0;
        /// 3-level, 39-bit.
        const THREE_LEVEL = 1 << 1;
        /// 4-level, 48-bit.
        const FOUR_LEVEL = 1 << 2;
        /// 5-level, 57-bit.
        const FIVE_LEVEL = 1 << 3;
        /// 6-level, 64-bit (reserved).
        const SIX_LEVEL = 1 << 4;
    }
}

/// A second-level page-table format: how many levels, and the address width they
/// translate (12 + 9 bits per level).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableFormat {
    pub levels: u8,
    pub address_width: u8,
}

const TABLE_FORMATS: [(Sagaw, TableFormat); 5] = [
    (Sagaw::TWO_LEVEL, TableFormat::new(2)),
    (Sagaw::THREE_LEVEL, TableFormat::new(3)),
    (Sagaw::FOUR_LEVEL, TableFormat::new(4)),
    (Sagaw::FIVE_LEVEL, TableFormat::new(5)),
    (Sagaw::SIX_LEVEL, TableFormat::new(6)),
];

impl TableFormat {
    const fn new(levels: u8) -> Self {
        Self {
            levels,
            address_width: 12 + 9 * levels,
        }
    }
}

impl Sagaw {
    /// The formats the bits name, shallowest first.
    pub fn formats(self) -> impl Iterator<Item = TableFormat> {
        TABLE_FORMATS
            .into_iter()
            .filter(move |(bit, _)| self.contains(*bit))
            .map(|(_, format)| format)
    }
}

bitflags! {
    /// SLLPS: the large pages second-level tables may map.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct LargePages: u8 {
        /// 2 MiB pages (21-bit offset).
        const SIZE_2M = 1 << 0;
        /// 1 GiB pages (30-bit offset).
        const SIZE_1G = 1 << 1;
        /// 512 GiB (defined by old specs, reserved since).
        const SIZE_512G = 1 << 2;
        /// 1 TiB (defined by old specs, reserved since).
        const SIZE_1T = 1 << 3;
    }
}

/// CAP: the capability register, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Capability {
    /// The register as read.
    pub raw: u64,
    /// ND (bits 2:0), raw: domain ids are 4 + 2*ND bits wide. 7 is reserved.
    pub nd: u8,
    /// Number of domain ids, 2^(4 + 2*ND); `None` for the reserved ND = 7.
    pub domains: Option<u32>,
    /// AFL (bit 3): advanced fault logging.
    pub afl: bool,
    /// RWBF (bit 4): required write-buffer flushing. When set, software must flush the
    /// unit's write buffer (GCMD.WBF) after changing tables.
    pub rwbf: bool,
    /// PLMR (bit 5): protected low-memory region.
    pub plmr: bool,
    /// PHMR (bit 6): protected high-memory region.
    pub phmr: bool,
    /// CM (bit 7): caching mode. Not-present entries may be cached too: every new
    /// mapping needs an invalidation, and domain id 0 is reserved (virtual IOMMUs).
    pub cm: bool,
    /// SAGAW (bits 12:8): supported second-level table depths.
    pub sagaw: Sagaw,
    /// MGAW (bits 21:16): maximum guest address width in bits (field + 1).
    pub mgaw: u8,
    /// ZLR (bit 22): zero-length reads are supported.
    pub zlr: bool,
    /// FRO (bits 33:24): byte offset of the first fault-recording register (field × 16).
    pub fro: u16,
    /// SLLPS (bits 37:34): second-level large-page sizes.
    pub sllps: LargePages,
    /// PSI (bit 39): page-selective IOTLB invalidation.
    pub psi: bool,
    /// NFR (bits 47:40): number of fault-recording registers (field + 1).
    pub nfr: u16,
    /// MAMV (bits 53:48): largest address mask for page-selective invalidation.
    pub mamv: u8,
    /// DWD (bit 54): write draining on IOTLB invalidation.
    pub dwd: bool,
    /// DRD (bit 55): read draining on IOTLB invalidation.
    pub drd: bool,
    /// FL1GP (bit 56): first-level 1 GiB pages.
    pub fl1gp: bool,
    /// PI (bit 59): posted interrupts.
    pub pi: bool,
    /// FL5LP (bit 60): first-level 5-level paging.
    pub fl5lp: bool,
    /// ECMDS (bit 61): enhanced command interface.
    pub ecmds: bool,
    /// ESIRTPS (bit 62): setting the interrupt-remapping table pointer also
    /// invalidates the interrupt entry cache.
    pub esirtps: bool,
    /// ESRTPS (bit 63): setting the root-table pointer also invalidates the caches.
    pub esrtps: bool,
}

const fn bit(raw: u64, at: u32) -> bool {
    (raw >> at) & 1 == 1
}

const fn field(raw: u64, low: u32, width: u32) -> u64 {
    (raw >> low) & ((1 << width) - 1)
}

impl Capability {
    pub const fn decode(raw: u64) -> Self {
        let nd = field(raw, 0, 3) as u8;
        Self {
            raw,
            nd,
            domains: if nd == 7 {
                None
            } else {
                Some(1 << (4 + 2 * nd as u32))
            },
            afl: bit(raw, 3),
            rwbf: bit(raw, 4),
            plmr: bit(raw, 5),
            phmr: bit(raw, 6),
            cm: bit(raw, 7),
            sagaw: Sagaw::from_bits_retain(field(raw, 8, 5) as u8),
            mgaw: field(raw, 16, 6) as u8 + 1,
            zlr: bit(raw, 22),
            fro: field(raw, 24, 10) as u16 * 16,
            sllps: LargePages::from_bits_retain(field(raw, 34, 4) as u8),
            psi: bit(raw, 39),
            nfr: field(raw, 40, 8) as u16 + 1,
            mamv: field(raw, 48, 6) as u8,
            dwd: bit(raw, 54),
            drd: bit(raw, 55),
            fl1gp: bit(raw, 56),
            pi: bit(raw, 59),
            fl5lp: bit(raw, 60),
            ecmds: bit(raw, 61),
            esirtps: bit(raw, 62),
            esrtps: bit(raw, 63),
        }
    }

    /// The second-level table formats SAGAW offers, shallowest first. The depth of every
    /// table must be one of these (never assumed).
    pub fn table_formats(&self) -> impl Iterator<Item = TableFormat> {
        self.sagaw.formats()
    }

    /// Whether `levels`-level second-level tables are supported.
    pub fn supports_levels(&self, levels: u8) -> bool {
        self.table_formats().any(|format| format.levels == levels)
    }

    /// One past the last fault-recording register (FRO + 16 × NFR).
    pub fn fault_registers_end(&self) -> u64 {
        u64::from(self.fro) + 16 * u64::from(self.nfr)
    }
}

/// `64K domains, 3-level (39-bit) tables, MGAW 39, 2M+1G superpages, page-selective
/// invalidation, 1 fault record at 0x220, caching mode off, write-buffer flush not
/// needed`, then any of AFL, PLMR, PHMR, ZLR, PI, first-level and enhanced-command
/// features that are present. The alternate form (`{:#}`) adds draining and MAMV.
impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.domains {
            Some(domains) if domains >= 1024 => write!(f, "{}K domains", domains / 1024)?,
            Some(domains) => write!(f, "{domains} domains")?,
            None => f.write_str("reserved ND 7")?,
        }
        let formats = || self.table_formats();
        if formats().next().is_none() {
            f.write_str(", no second-level tables")?;
        } else {
            f.write_str(", ")?;
            join(f, formats().map(|format| format.levels), "/")?;
            f.write_str("-level (")?;
            join(f, formats().map(|format| format.address_width), "/")?;
            f.write_str("-bit) tables")?;
        }
        write!(f, ", MGAW {}", self.mgaw)?;
        let sizes = [
            (LargePages::SIZE_2M, "2M"),
            (LargePages::SIZE_1G, "1G"),
            (LargePages::SIZE_512G, "512G"),
            (LargePages::SIZE_1T, "1T"),
        ];
        if self.sllps.is_empty() {
            f.write_str(", no superpages")?;
        } else {
            f.write_str(", ")?;
            join(
                f,
                sizes
                    .iter()
                    .filter(|(size, _)| self.sllps.contains(*size))
                    .map(|(_, name)| name),
                "+",
            )?;
            f.write_str(" superpages")?;
        }
        f.write_str(if self.psi {
            ", page-selective invalidation"
        } else {
            ", no page-selective invalidation"
        })?;
        write!(
            f,
            ", {} fault record{} at {:#x}",
            self.nfr,
            if self.nfr == 1 { "" } else { "s" },
            self.fro
        )?;
        f.write_str(if self.cm {
            ", caching mode ON (domain 0 reserved, invalidate after every map)"
        } else {
            ", caching mode off"
        })?;
        f.write_str(if self.rwbf {
            ", write-buffer flush REQUIRED"
        } else {
            ", write-buffer flush not needed"
        })?;
        for (present, word) in [
            (self.afl, "advanced fault logging"),
            (self.plmr, "protected low-memory region"),
            (self.phmr, "protected high-memory region"),
            (self.zlr, "zero-length reads"),
            (self.pi, "posted interrupts"),
            (self.fl1gp, "first-level 1G pages"),
            (self.fl5lp, "first-level 5-level paging"),
            (self.ecmds, "enhanced commands"),
            (self.esrtps, "root-table pointer set invalidates"),
            (self.esirtps, "IR-table pointer set invalidates"),
        ] {
            if present {
                write!(f, ", {word}")?;
            }
        }
        if f.alternate() {
            for (present, word) in [(self.drd, "read draining"), (self.dwd, "write draining")] {
                if present {
                    write!(f, ", {word}")?;
                }
            }
            write!(f, ", MAMV {}", self.mamv)?;
        }
        Ok(())
    }
}

/// ECAP: the extended capability register, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExtendedCapability {
    /// The register as read.
    pub raw: u64,
    /// C (bit 0): page-walk coherency. When clear, the unit reads tables from memory
    /// without snooping CPU caches: every table write must be flushed (clflush) first.
    pub c: bool,
    /// QI (bit 1): queued invalidation.
    pub qi: bool,
    /// DT (bit 2): device-TLBs (ATS) supported.
    pub dt: bool,
    /// IR (bit 3): interrupt remapping.
    pub ir: bool,
    /// EIM (bit 4): extended (x2APIC, 32-bit destination) interrupt mode.
    pub eim: bool,
    /// PT (bit 6): pass-through translation type.
    pub pt: bool,
    /// SC (bit 7): snoop control.
    pub sc: bool,
    /// IRO (bits 17:8): byte offset of the IOTLB registers (field × 16).
    pub iro: u16,
    /// MHMV (bits 23:20): largest handle mask for interrupt-entry-cache invalidation.
    pub mhmv: u8,
    /// MTS (bit 25): memory-type support.
    pub mts: bool,
    /// NEST (bit 26): nested translation.
    pub nest: bool,
    /// PRS (bit 29): page requests.
    pub prs: bool,
    /// ERS (bit 30): execute requests.
    pub ers: bool,
    /// SRS (bit 31): supervisor requests.
    pub srs: bool,
    /// NWFS (bit 33): no-write flag.
    pub nwfs: bool,
    /// EAFS (bit 34): extended accessed flag.
    pub eafs: bool,
    /// PSS (bits 39:35), raw: PASIDs are PSS + 1 bits wide.
    pub pss: u8,
    /// PASID (bit 40): process address space ids.
    pub pasid: bool,
    /// DIT (bit 41): device-TLB invalidation throttling.
    pub dit: bool,
    /// PDS (bit 42): page-request drain.
    pub pds: bool,
    /// SMTS (bit 43): scalable-mode translation.
    pub smts: bool,
    /// VCS (bit 44): virtual command interface.
    pub vcs: bool,
    /// SLADS (bit 45): second-level accessed/dirty bits.
    pub slads: bool,
    /// SLTS (bit 46): second-level translation in scalable mode.
    pub slts: bool,
    /// FLTS (bit 47): first-level translation in scalable mode.
    pub flts: bool,
    /// SMPWCS (bit 48): scalable-mode page-walk coherency.
    pub smpwcs: bool,
    /// RPS (bit 49): RID_PASID field in scalable-mode context entries.
    pub rps: bool,
    /// PMS (bit 51): performance monitoring.
    pub pms: bool,
}

impl ExtendedCapability {
    pub const fn decode(raw: u64) -> Self {
        Self {
            raw,
            c: bit(raw, 0),
            qi: bit(raw, 1),
            dt: bit(raw, 2),
            ir: bit(raw, 3),
            eim: bit(raw, 4),
            pt: bit(raw, 6),
            sc: bit(raw, 7),
            iro: field(raw, 8, 10) as u16 * 16,
            mhmv: field(raw, 20, 4) as u8,
            mts: bit(raw, 25),
            nest: bit(raw, 26),
            prs: bit(raw, 29),
            ers: bit(raw, 30),
            srs: bit(raw, 31),
            nwfs: bit(raw, 33),
            eafs: bit(raw, 34),
            pss: field(raw, 35, 5) as u8,
            pasid: bit(raw, 40),
            dit: bit(raw, 41),
            pds: bit(raw, 42),
            smts: bit(raw, 43),
            vcs: bit(raw, 44),
            slads: bit(raw, 45),
            slts: bit(raw, 46),
            flts: bit(raw, 47),
            smpwcs: bit(raw, 48),
            rps: bit(raw, 49),
            pms: bit(raw, 51),
        }
    }

    /// Whether the unit snoops CPU caches when walking tables (C).
    pub const fn coherent(&self) -> bool {
        self.c
    }

    /// PASID width in bits, if PASIDs are supported.
    pub const fn pasid_bits(&self) -> Option<u8> {
        if self.pasid { Some(self.pss + 1) } else { None }
    }

    /// One past the IOTLB registers (IRO + 16: IVA and IOTLB, 8 bytes each).
    pub fn iotlb_registers_end(&self) -> u64 {
        u64::from(self.iro) + 16
    }
}

/// `queued invalidation, interrupt remapping, pass-through, IOTLB regs at 0xf0, NOT
/// coherent (page-table writes must be flushed)`: the features present, the IOTLB
/// register offset, and coherency last. The alternate form (`{:#}`) adds MHMV.
impl fmt::Display for ExtendedCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pasids = PasidWidth(self.pss + 1);
        let features: [(bool, &dyn fmt::Display); 24] = [
            (self.qi, &"queued invalidation"),
            (self.dt, &"device-TLB"),
            (self.ir, &"interrupt remapping"),
            (self.eim, &"x2APIC interrupt mode"),
            (self.pt, &"pass-through"),
            (self.sc, &"snoop control"),
            (self.mts, &"memory types"),
            (self.nest, &"nested translation"),
            (self.prs, &"page requests"),
            (self.ers, &"execute requests"),
            (self.srs, &"supervisor requests"),
            (self.nwfs, &"no-write flag"),
            (self.eafs, &"extended accessed flag"),
            (self.pasid, &pasids),
            (self.dit, &"device-TLB invalidation throttling"),
            (self.pds, &"page-request drain"),
            (self.smts, &"scalable mode"),
            (self.vcs, &"virtual commands"),
            (self.slads, &"second-level A/D bits"),
            (self.slts, &"second-level translation"),
            (self.flts, &"first-level translation"),
            (self.smpwcs, &"scalable-mode coherent walks"),
            (self.rps, &"RID_PASID"),
            (self.pms, &"performance monitoring"),
        ];
        for (present, word) in features {
            if present {
                write!(f, "{word}, ")?;
            }
        }
        write!(f, "IOTLB regs at {:#x}, ", self.iro)?;
        f.write_str(if self.c {
            "coherent"
        } else {
            "NOT coherent (page-table writes must be flushed)"
        })?;
        if f.alternate() {
            write!(f, ", MHMV {}", self.mhmv)?;
        }
        Ok(())
    }
}

/// `20-bit PASIDs`
struct PasidWidth(u8);

impl fmt::Display for PasidWidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-bit PASIDs", self.0)
    }
}

/// Bytes of register space the unit's registers actually span, rounded up to 4 KiB:
/// the larger of the fault-recording and IOTLB register ends (what Linux maps when it
/// exceeds the DRHD's declared size).
pub fn register_set_size(cap: &Capability, ecap: &ExtendedCapability) -> u64 {
    cap.fault_registers_end()
        .max(ecap.iotlb_registers_end())
        .next_multiple_of(4096)
}

fn join<T: fmt::Display>(
    f: &mut fmt::Formatter<'_>,
    items: impl Iterator<Item = T>,
    separator: &str,
) -> fmt::Result {
    for (index, item) in items.enumerate() {
        if index > 0 {
            f.write_str(separator)?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    /// QEMU's intel-iommu with default properties (platform-facts.md).
    const QEMU_CAP: u64 = 0x00d2_008c_2226_0206;
    const QEMU_ECAP: u64 = 0x00f0_0f4a;

    #[test]
    fn qemu_default_cap_decodes_field_by_field() {
        // By hand: 0x00d2008c22260206
        //   bits  2:0  = 0b110        ND 6 -> 2^(4+12) = 65536 domains
        //   bit   3..7 = 0            AFL, RWBF, PLMR, PHMR, CM clear (0x06 low byte)
        //   bits 12:8  = 0b00010      SAGAW: 3-level only (0x02 in byte 1)
        //   bits 21:16 = 0x26         MGAW 38 + 1 = 39 (byte 2 = 0x26: bit 22 ZLR clear)
        //   bits 33:24 = 0x022        FRO 0x22 * 16 = 0x220 (byte 3 = 0x22, bits 33:32 = 0)
        //   bits 37:34 = 0b0011       SLLPS 2M + 1G (byte 4 = 0x8c: bits 34, 35, 39)
        //   bit  39    = 1            PSI
        //   bits 47:40 = 0            NFR 0 + 1 = 1
        //   bits 53:48 = 0x12         MAMV 18 (byte 6 = 0xd2 = 0b1101_0010)
        //   bit  54    = 1, 55 = 1    DWD, DRD
        //   bits 63:56 = 0            FL1GP, PI, FL5LP, ECMDS, ESIRTPS, ESRTPS clear
        let cap = Capability::decode(QEMU_CAP);
        assert_eq!(cap.nd, 6);
        assert_eq!(cap.domains, Some(65536));
        assert!(!cap.afl && !cap.rwbf && !cap.plmr && !cap.phmr && !cap.cm);
        assert_eq!(cap.sagaw, Sagaw::THREE_LEVEL);
        assert_eq!(
            cap.table_formats().collect::<Vec<_>>(),
            [TableFormat {
                levels: 3,
                address_width: 39
            }]
        );
        assert!(cap.supports_levels(3) && !cap.supports_levels(4));
        assert_eq!(cap.mgaw, 39);
        assert!(!cap.zlr);
        assert_eq!(cap.fro, 0x220);
        assert_eq!(cap.sllps, LargePages::SIZE_2M | LargePages::SIZE_1G);
        assert!(cap.psi);
        assert_eq!(cap.nfr, 1);
        assert_eq!(cap.mamv, 18);
        assert!(cap.dwd && cap.drd);
        assert!(!cap.fl1gp && !cap.pi && !cap.fl5lp && !cap.ecmds);
        assert!(!cap.esirtps && !cap.esrtps);
        assert_eq!(cap.fault_registers_end(), 0x230);
    }

    #[test]
    fn qemu_default_ecap_decodes_field_by_field() {
        // By hand: 0xf00f4a
        //   byte 0 = 0x4a = 0b0100_1010: QI (1), IR (3), PT (6); C (0), DT (2),
        //            EIM (4), SC (7) clear
        //   bits 17:8  = 0x00f        IRO 0xf * 16 = 0xf0
        //   bits 23:20 = 0xf          MHMV 15
        //   bits 63:24 = 0            everything scalable-mode/PASID clear
        let ecap = ExtendedCapability::decode(QEMU_ECAP);
        assert!(!ecap.c && !ecap.coherent());
        assert!(ecap.qi && ecap.ir && ecap.pt);
        assert!(!ecap.dt && !ecap.eim && !ecap.sc);
        assert_eq!(ecap.iro, 0xf0);
        assert_eq!(ecap.iotlb_registers_end(), 0x100);
        assert_eq!(ecap.mhmv, 15);
        assert!(!ecap.mts && !ecap.nest && !ecap.prs && !ecap.ers && !ecap.srs);
        assert!(!ecap.nwfs && !ecap.eafs && !ecap.pasid && !ecap.dit && !ecap.pds);
        assert!(!ecap.smts && !ecap.vcs && !ecap.slads && !ecap.slts && !ecap.flts);
        assert!(!ecap.smpwcs && !ecap.rps && !ecap.pms);
        assert_eq!(ecap.pss, 0);
        assert_eq!(ecap.pasid_bits(), None);
    }

    #[test]
    fn qemu_default_display_in_words() {
        let cap = Capability::decode(QEMU_CAP);
        assert_eq!(
            format!("{cap}"),
            "64K domains, 3-level (39-bit) tables, MGAW 39, 2M+1G superpages, \
             page-selective invalidation, 1 fault record at 0x220, caching mode off, \
             write-buffer flush not needed"
        );
        assert!(format!("{cap:#}").ends_with(", read draining, write draining, MAMV 18"));
        let ecap = ExtendedCapability::decode(QEMU_ECAP);
        assert_eq!(
            format!("{ecap}"),
            "queued invalidation, interrupt remapping, pass-through, IOTLB regs at 0xf0, \
             NOT coherent (page-table writes must be flushed)"
        );
        assert_eq!(register_set_size(&cap, &ecap), 0x1000);
    }

    #[test]
    fn aw48_and_caching_mode_variants() {
        // aw-bits=48: SAGAW 3+4-level, MGAW 47+1; caching-mode=on: bit 7.
        let raw = (QEMU_CAP & !(0x1f << 8) & !(0x3f << 16)) | (0b0110 << 8) | (47 << 16) | 1 << 7;
        let cap = Capability::decode(raw);
        assert_eq!(cap.sagaw, Sagaw::THREE_LEVEL | Sagaw::FOUR_LEVEL);
        assert_eq!(cap.mgaw, 48);
        assert!(cap.cm);
        let text = format!("{cap}");
        assert!(
            text.contains("3/4-level (39/48-bit) tables, MGAW 48"),
            "{text}"
        );
        assert!(text.contains("caching mode ON"), "{text}");
    }

    #[test]
    fn every_cap_bit_lands_in_one_field() {
        let all = Capability::decode(u64::MAX);
        assert_eq!(all.domains, None);
        assert_eq!(all.mgaw, 64);
        assert_eq!(all.fro, 0x3ff0);
        assert_eq!(all.nfr, 256);
        assert_eq!(all.mamv, 63);
        assert_eq!(all.sagaw.bits(), 0x1f);
        assert_eq!(all.sllps.bits(), 0xf);
        let none = Capability::decode(0);
        assert_eq!(none.domains, Some(16));
        assert_eq!(none.mgaw, 1);
        assert_eq!(none.nfr, 1);
        assert_eq!(none.table_formats().count(), 0);
        assert!(format!("{none}").contains("no second-level tables"));
        let ecap = ExtendedCapability::decode(u64::MAX);
        assert_eq!(ecap.iro, 0x3ff0);
        assert_eq!(ecap.pasid_bits(), Some(32));
        assert!(format!("{ecap}").ends_with("IOTLB regs at 0x3ff0, coherent"));
    }

    #[test]
    fn version_nibbles() {
        assert_eq!(Version::decode(0x10), Version { major: 1, minor: 0 });
        assert_eq!(format!("{}", Version::decode(0x0000_0031)), "3.1");
    }
}
