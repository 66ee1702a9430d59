//! Pure decoders for AMD-Vi feature words (no MMIO access happens here).
//!
//! The same facts reach software by several routes: the IOMMU's Extended Feature
//! Register (EFR, MMIO offset 0x30) and its verbatim image in IVHD types 11h/40h, the
//! older "IOMMU Feature Reporting" word of IVHD type 10h (a subset of the EFR with
//! its own bit layout), the IVHD flags byte and the IOMMU Info word. Each is decoded
//! here exactly once, into named fields that follow the AMD I/O Virtualization
//! Technology (IOMMU) Specification (48882), so no other code in the kernel does its
//! own bit twiddling on them. Every decoder keeps the raw value and which bits it
//! did not recognise (spec revisions keep adding features), and prints itself in
//! words for the boot log.

use core::fmt;

/// Extracts `width` bits starting at `shift`.
const fn bits(value: u64, shift: u32, width: u32) -> u64 {
    (value >> shift) & ((1u64 << width) - 1)
}

const fn bit(value: u64, shift: u32) -> bool {
    bits(value, shift, 1) != 0
}

/// Writes comma-separated items, remembering whether anything was written.
struct WordList<'a, 'b> {
    f: &'a mut fmt::Formatter<'b>,
    first: bool,
}

impl<'a, 'b> WordList<'a, 'b> {
    fn new(f: &'a mut fmt::Formatter<'b>) -> Self {
        Self { f, first: true }
    }

    fn item(&mut self, args: fmt::Arguments<'_>) -> fmt::Result {
        if !self.first {
            self.f.write_str(", ")?;
        }
        self.first = false;
        self.f.write_fmt(args)
    }

    fn flag(&mut self, set: bool, word: &str) -> fmt::Result {
        if set {
            self.item(format_args!("{word}"))
        } else {
            Ok(())
        }
    }

    fn finish(self) -> fmt::Result {
        if self.first {
            self.f.write_str("none")
        } else {
            Ok(())
        }
    }
}

/// Page-table depth an address-translation-size field (HATS/GATS) allows:
/// 0 = 4 levels, 1 = 5 levels, 2 = 6 levels (HATS only), anything else reserved.
fn write_translation_size(
    list: &mut WordList<'_, '_>,
    what: &str,
    value: u8,
    max_encoding: u8,
) -> fmt::Result {
    if value <= max_encoding {
        list.item(format_args!("{what} translation size {} levels", value + 4))
    } else {
        list.item(format_args!("{what} translation size reserved ({value})"))
    }
}

/// The IOMMU Extended Feature Register (MMIO 0x30), or its image in IVHD 11h/40h.
///
/// Field names follow the spec (`PreFSup` becomes `pref_sup`, ...). Multi-bit fields
/// keep their encoded value; the helper methods translate the ones software needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ExtendedFeatures {
    /// The register value as read.
    pub raw: u64,
    /// Bit 0, PreFSup: prefetch of IOMMU page-table entries (INVALIDATE_IOMMU_PAGES
    /// with prefetch) supported.
    pub pref_sup: bool,
    /// Bit 1, PPRSup: peripheral page requests (PRI/ATS page faults) supported.
    pub ppr_sup: bool,
    /// Bit 2, XTSup: x2APIC (32-bit destination ids) for interrupt remapping.
    pub xt_sup: bool,
    /// Bit 3, NXSup: no-execute and privilege-level protection.
    pub nx_sup: bool,
    /// Bit 4, GTSup: guest (two-level, PASID) translation.
    pub gt_sup: bool,
    /// Bit 5, GAPPISup: guest APPI (reserved in older spec revisions).
    pub gappi_sup: bool,
    /// Bit 6, IASup: the INVALIDATE_IOMMU_ALL command.
    pub ia_sup: bool,
    /// Bit 7, GASup: guest virtual APIC (128-bit IRTEs).
    pub ga_sup: bool,
    /// Bit 8, HESup: hardware error registers.
    pub he_sup: bool,
    /// Bit 9, PCSup: performance counters (MMIO 0x4000 and 0x40000..0x80000).
    pub pc_sup: bool,
    /// Bits 11:10, HATS: host address translation size (0 = 4 levels, 1 = 5, 2 = 6).
    pub hats: u8,
    /// Bits 13:12, GATS: guest address translation size (0 = 4 levels, 1 = 5).
    pub gats: u8,
    /// Bits 15:14, GLXSup: guest CR3 root table levels (0 = 1 level, 1 = 2, 2 = 3).
    pub glx_sup: u8,
    /// Bits 17:16, SmiFSup: SMI filter register support.
    pub smif_sup: u8,
    /// Bits 20:18, SmiFRC: SMI filter register count (`1 << SmiFRC` registers).
    pub smif_rc: u8,
    /// Bits 23:21, GAMSup: guest virtual APIC modes (1 = vAPIC interrupt posting).
    pub gam_sup: u8,
    /// Bits 25:24, DualPprLogSup: dual PPR log support.
    pub dual_ppr_log_sup: u8,
    /// Bits 29:28, DualEventLogSup: dual event log support.
    pub dual_event_log_sup: u8,
    /// Bit 31, SATSSup: secure ATS.
    pub sats_sup: bool,
    /// Bits 36:32, PASmax: the largest PASID is `2^(PASmax + 1) - 1`.
    pub pas_max: u8,
    /// Bit 37, USSup: user/supervisor page protection.
    pub us_sup: bool,
    /// Bits 39:38, DevTblSegSup: segmented device table (`1 << n` segments).
    pub dev_tbl_seg_sup: u8,
    /// Bit 40, PPROvrflwEarlySup: PPR log overflow early warning.
    pub ppr_ovrflw_early_sup: bool,
    /// Bit 41, PPRAutoRspSup: PPR automatic response.
    pub ppr_auto_rsp_sup: bool,
    /// Bits 43:42, MarcSup: memory access routing and control.
    pub marc_sup: u8,
    /// Bit 44, BlkStopMrkSup: block StopMark messages.
    pub blk_stop_mrk_sup: bool,
    /// Bit 45, PerfOptSup: performance optimisation control.
    pub perf_opt_sup: bool,
    /// Bit 46, MsiCapMmioSup: the MSI capability is also in MMIO space.
    pub msi_cap_mmio_sup: bool,
    /// Bit 48, GIOSup: guest I/O protection.
    pub gio_sup: bool,
    /// Bit 49, HASup: host access (the DTE HA bit).
    pub ha_sup: bool,
    /// Bit 50, EPHSup: enhanced peripheral page request handling.
    pub eph_sup: bool,
    /// Bit 51, AttrFWSup: attribute forwarding.
    pub attr_fw_sup: bool,
    /// Bit 52, HDSup: host dirty-bit tracking.
    pub hd_sup: bool,
    /// Bit 54, InvIotlbTypeSup: invalidate-IOTLB type.
    pub inv_iotlb_type_sup: bool,
    /// Bit 55, VIOMMUSup: virtualised IOMMU.
    pub viommu_sup: bool,
    /// Bit 61, GAUpdateDisSup: disabling hardware A/D updates of guest page tables.
    pub ga_update_dis_sup: bool,
    /// Bit 62, ForcePhyDestSup: force physical destination mode for remapped interrupts.
    pub force_phy_dest_sup: bool,
    /// Bit 63, SNPSup: SEV-SNP support.
    pub snp_sup: bool,
}

/// EFR bits this decoder names; the rest are reserved (or newer than this code).
const EFR_KNOWN_BITS: u64 = 0x3FF // bits 0..=9
    | (0x3 << 10)
    | (0x3 << 12)
    | (0x3 << 14)
    | (0x3 << 16)
    | (0x7 << 18)
    | (0x7 << 21)
    | (0x3 << 24)
    | (0x3 << 28)
    | (1 << 31)
    | (0x1F << 32)
    | (1 << 37)
    | (0x3 << 38)
    | (1 << 40)
    | (1 << 41)
    | (0x3 << 42)
    | (1 << 44)
    | (1 << 45)
    | (1 << 46)
    | (0x1F << 48)
    | (1 << 54)
    | (1 << 55)
    | (1 << 61)
    | (1 << 62)
    | (1 << 63);

impl ExtendedFeatures {
    /// Decodes a raw EFR value.
    pub const fn from_raw(raw: u64) -> Self {
        Self {
            raw,
            pref_sup: bit(raw, 0),
            ppr_sup: bit(raw, 1),
            xt_sup: bit(raw, 2),
            nx_sup: bit(raw, 3),
            gt_sup: bit(raw, 4),
            gappi_sup: bit(raw, 5),
            ia_sup: bit(raw, 6),
            ga_sup: bit(raw, 7),
            he_sup: bit(raw, 8),
            pc_sup: bit(raw, 9),
            hats: bits(raw, 10, 2) as u8,
            gats: bits(raw, 12, 2) as u8,
            glx_sup: bits(raw, 14, 2) as u8,
            smif_sup: bits(raw, 16, 2) as u8,
            smif_rc: bits(raw, 18, 3) as u8,
            gam_sup: bits(raw, 21, 3) as u8,
            dual_ppr_log_sup: bits(raw, 24, 2) as u8,
            dual_event_log_sup: bits(raw, 28, 2) as u8,
            sats_sup: bit(raw, 31),
            pas_max: bits(raw, 32, 5) as u8,
            us_sup: bit(raw, 37),
            dev_tbl_seg_sup: bits(raw, 38, 2) as u8,
            ppr_ovrflw_early_sup: bit(raw, 40),
            ppr_auto_rsp_sup: bit(raw, 41),
            marc_sup: bits(raw, 42, 2) as u8,
            blk_stop_mrk_sup: bit(raw, 44),
            perf_opt_sup: bit(raw, 45),
            msi_cap_mmio_sup: bit(raw, 46),
            gio_sup: bit(raw, 48),
            ha_sup: bit(raw, 49),
            eph_sup: bit(raw, 50),
            attr_fw_sup: bit(raw, 51),
            hd_sup: bit(raw, 52),
            inv_iotlb_type_sup: bit(raw, 54),
            viommu_sup: bit(raw, 55),
            ga_update_dis_sup: bit(raw, 61),
            force_phy_dest_sup: bit(raw, 62),
            snp_sup: bit(raw, 63),
        }
    }

    /// Host page-table levels the IOMMU walks at most (from HATS), or `None` for the
    /// reserved encoding 3 (Linux then disables host translation altogether).
    pub const fn host_page_table_levels(&self) -> Option<u8> {
        match self.hats {
            0..=2 => Some(self.hats + 4),
            _ => None,
        }
    }

    /// Guest page-table levels (from GATS): 4 or 5, `None` for reserved encodings.
    pub const fn guest_page_table_levels(&self) -> Option<u8> {
        match self.gats {
            0 | 1 => Some(self.gats + 4),
            _ => None,
        }
    }

    /// The largest PASID the IOMMU accepts, `2^(PASmax + 1) - 1` (meaningful with
    /// [`Self::gt_sup`]; the spec allows up to 20-bit PASIDs, a hostile value of 31
    /// gives `u32::MAX` rather than an overflow).
    pub const fn max_pasid(&self) -> u32 {
        let pas_max = if self.pas_max > 31 { 31 } else { self.pas_max };
        u32::MAX >> (31 - pas_max)
    }

    /// Set bits this decoder does not name.
    pub const fn unknown_bits(&self) -> u64 {
        self.raw & !EFR_KNOWN_BITS
    }
}

/// The set features in words, e.g. `prefetch, PPR, guest translation, ...`.
impl fmt::Display for ExtendedFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = WordList::new(f);
        list.flag(self.pref_sup, "prefetch")?;
        list.flag(self.ppr_sup, "PPR")?;
        list.flag(self.xt_sup, "x2APIC")?;
        list.flag(self.nx_sup, "NX")?;
        list.flag(self.gt_sup, "guest translation")?;
        list.flag(self.gappi_sup, "guest APPI")?;
        list.flag(self.ia_sup, "invalidate-all")?;
        list.flag(self.ga_sup, "guest vAPIC")?;
        list.flag(self.he_sup, "hardware error regs")?;
        list.flag(self.pc_sup, "performance counters")?;
        write_translation_size(&mut list, "host address", self.hats, 2)?;
        if self.gt_sup || self.gats != 0 {
            write_translation_size(&mut list, "guest address", self.gats, 1)?;
        }
        if self.glx_sup != 0 {
            list.item(format_args!("guest CR3 root {} levels", self.glx_sup + 1))?;
        }
        if self.smif_sup != 0 {
            list.item(format_args!(
                "SMI filter ({} registers)",
                1u32 << self.smif_rc
            ))?;
        }
        if self.gam_sup != 0 {
            list.item(format_args!("guest vAPIC modes {}", self.gam_sup))?;
        }
        if self.dual_ppr_log_sup != 0 {
            list.item(format_args!("dual PPR log ({})", self.dual_ppr_log_sup))?;
        }
        if self.dual_event_log_sup != 0 {
            list.item(format_args!("dual event log ({})", self.dual_event_log_sup))?;
        }
        list.flag(self.sats_sup, "secure ATS")?;
        if self.gt_sup || self.pas_max != 0 {
            list.item(format_args!("max PASID {:#x}", self.max_pasid()))?;
        }
        list.flag(self.us_sup, "user/supervisor")?;
        if self.dev_tbl_seg_sup != 0 {
            list.item(format_args!(
                "{} device table segments",
                1u32 << self.dev_tbl_seg_sup
            ))?;
        }
        list.flag(self.ppr_ovrflw_early_sup, "PPR overflow early warning")?;
        list.flag(self.ppr_auto_rsp_sup, "PPR auto response")?;
        if self.marc_sup != 0 {
            list.item(format_args!("MARC ({})", self.marc_sup))?;
        }
        list.flag(self.blk_stop_mrk_sup, "block StopMark")?;
        list.flag(self.perf_opt_sup, "performance optimisation")?;
        list.flag(self.msi_cap_mmio_sup, "MSI capability in MMIO")?;
        list.flag(self.gio_sup, "guest I/O protection")?;
        list.flag(self.ha_sup, "host access")?;
        list.flag(self.eph_sup, "enhanced PPR handling")?;
        list.flag(self.attr_fw_sup, "attribute forwarding")?;
        list.flag(self.hd_sup, "host dirty")?;
        list.flag(self.inv_iotlb_type_sup, "invalidate-IOTLB type")?;
        list.flag(self.viommu_sup, "vIOMMU")?;
        list.flag(self.ga_update_dis_sup, "guest A/D update disable")?;
        list.flag(self.force_phy_dest_sup, "force physical destination")?;
        list.flag(self.snp_sup, "SNP")?;
        if self.unknown_bits() != 0 {
            list.item(format_args!("unknown bits {:#x}", self.unknown_bits()))?;
        }
        list.finish()
    }
}

bitflags::bitflags! {
    /// The IVHD flags byte: how firmware wants the IOMMU's control register set up.
    ///
    /// Bits 6 and 7 (PreFSup, PPRSup) are defined for IVHD type 10h only; types
    /// 11h/40h report those features in the EFR image instead.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct IvhdFlags: u8 {
        /// HtTunEn: HyperTransport tunnel translation.
        const HT_TUN_EN = 1 << 0;
        /// PassPW: pass posted writes.
        const PASS_PW = 1 << 1;
        /// ResPassPW: reset PassPW in responses.
        const RES_PASS_PW = 1 << 2;
        /// Isoc: isochronous IOMMU accesses.
        const ISOC = 1 << 3;
        /// IotlbSup: remote (device) IOTLBs, i.e. ATS, supported.
        const IOTLB_SUP = 1 << 4;
        /// Coherent: IOMMU memory accesses are cache coherent.
        const COHERENT = 1 << 5;
        /// PreFSup: prefetch supported (type 10h only).
        const PREF_SUP = 1 << 6;
        /// PPRSup: peripheral page requests supported (type 10h only).
        const PPR_SUP = 1 << 7;
    }
}

impl fmt::Display for IvhdFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = WordList::new(f);
        list.flag(self.contains(Self::HT_TUN_EN), "HT tunnel")?;
        list.flag(self.contains(Self::PASS_PW), "PassPW")?;
        list.flag(self.contains(Self::RES_PASS_PW), "ResPassPW")?;
        list.flag(self.contains(Self::ISOC), "isochronous")?;
        list.flag(self.contains(Self::IOTLB_SUP), "IOTLB")?;
        list.flag(self.contains(Self::COHERENT), "coherent")?;
        list.flag(self.contains(Self::PREF_SUP), "prefetch")?;
        list.flag(self.contains(Self::PPR_SUP), "PPR")?;
        list.finish()
    }
}

/// The "IOMMU Feature Reporting" word of IVHD type 10h (offset 20).
///
/// A subset of the EFR with its own layout. QEMU (7.2 and 10.0) writes `0x44`
/// (GTSup | GASup): its source tries to put 48 into HATS/GATS but the shifted value
/// falls off the 32-bit word, so those fields read 0 (4 levels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FeatureReporting {
    /// The field as read.
    pub raw: u32,
    /// Bit 0, XTSup: x2APIC interrupt remapping.
    pub xt_sup: bool,
    /// Bit 1, NXSup: no-execute protection.
    pub nx_sup: bool,
    /// Bit 2, GTSup: guest translation.
    pub gt_sup: bool,
    /// Bits 4:3, GLXSup: guest CR3 root table levels minus one.
    pub glx_sup: u8,
    /// Bit 5, IASup: INVALIDATE_IOMMU_ALL.
    pub ia_sup: bool,
    /// Bit 6, GASup: guest virtual APIC.
    pub ga_sup: bool,
    /// Bit 7, HESup: hardware error registers.
    pub he_sup: bool,
    /// Bits 12:8, PASmax.
    pub pas_max: u8,
    /// Bits 16:13, PNCounters: performance counters per bank.
    pub pn_counters: u8,
    /// Bits 22:17, PNBanks: performance counter banks.
    pub pn_banks: u8,
    /// Bits 27:23, MsiNumPPR: MSI message number for PPR log interrupts.
    pub msi_num_ppr: u8,
    /// Bits 29:28, GATS.
    pub gats: u8,
    /// Bits 31:30, HATS.
    pub hats: u8,
}

impl FeatureReporting {
    /// Decodes the raw field.
    pub const fn from_raw(raw: u32) -> Self {
        let value = raw as u64;
        Self {
            raw,
            xt_sup: bit(value, 0),
            nx_sup: bit(value, 1),
            gt_sup: bit(value, 2),
            glx_sup: bits(value, 3, 2) as u8,
            ia_sup: bit(value, 5),
            ga_sup: bit(value, 6),
            he_sup: bit(value, 7),
            pas_max: bits(value, 8, 5) as u8,
            pn_counters: bits(value, 13, 4) as u8,
            pn_banks: bits(value, 17, 6) as u8,
            msi_num_ppr: bits(value, 23, 5) as u8,
            gats: bits(value, 28, 2) as u8,
            hats: bits(value, 30, 2) as u8,
        }
    }

    /// Whether performance counter banks are reported (Linux then maps 512 KiB of
    /// registers instead of 16 KiB).
    pub const fn has_performance_counters(&self) -> bool {
        self.pn_counters != 0 && self.pn_banks != 0
    }
}

impl fmt::Display for FeatureReporting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = WordList::new(f);
        list.flag(self.xt_sup, "x2APIC")?;
        list.flag(self.nx_sup, "NX")?;
        list.flag(self.gt_sup, "guest translation")?;
        list.flag(self.ia_sup, "invalidate-all")?;
        list.flag(self.ga_sup, "guest vAPIC")?;
        list.flag(self.he_sup, "hardware error regs")?;
        write_translation_size(&mut list, "host address", self.hats, 2)?;
        if self.gt_sup || self.gats != 0 {
            write_translation_size(&mut list, "guest address", self.gats, 1)?;
        }
        if self.glx_sup != 0 {
            list.item(format_args!("guest CR3 root {} levels", self.glx_sup + 1))?;
        }
        if self.gt_sup || self.pas_max != 0 {
            list.item(format_args!("PASmax {}", self.pas_max))?;
        }
        if self.has_performance_counters() {
            list.item(format_args!(
                "performance counters {} banks x {}",
                self.pn_banks, self.pn_counters
            ))?;
        }
        if self.msi_num_ppr != 0 {
            list.item(format_args!("PPR MSI {}", self.msi_num_ppr))?;
        }
        list.finish()
    }
}

/// The "IOMMU Attributes" word of IVHD types 11h/40h (offset 20); the features
/// themselves are in the EFR image that follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct IvhdAttributes {
    /// The field as read.
    pub raw: u32,
    /// Bit 0, HATDis: host address translation is not supported (only guest page
    /// tables can be used).
    pub hat_dis: bool,
    /// Bits 16:13, PNCounters.
    pub pn_counters: u8,
    /// Bits 22:17, PNBanks.
    pub pn_banks: u8,
    /// Bits 27:23, MsiNumPPR.
    pub msi_num_ppr: u8,
}

impl IvhdAttributes {
    /// Decodes the raw field.
    pub const fn from_raw(raw: u32) -> Self {
        let value = raw as u64;
        Self {
            raw,
            hat_dis: bit(value, 0),
            pn_counters: bits(value, 13, 4) as u8,
            pn_banks: bits(value, 17, 6) as u8,
            msi_num_ppr: bits(value, 23, 5) as u8,
        }
    }
}

impl fmt::Display for IvhdAttributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = WordList::new(f);
        list.flag(self.hat_dis, "host translation disabled")?;
        if self.pn_counters != 0 || self.pn_banks != 0 {
            list.item(format_args!(
                "performance counters {} banks x {}",
                self.pn_banks, self.pn_counters
            ))?;
        }
        if self.msi_num_ppr != 0 {
            list.item(format_args!("PPR MSI {}", self.msi_num_ppr))?;
        }
        list.finish()
    }
}

/// The "IOMMU Info" word of an IVHD (offset 18).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct IommuInfo {
    /// The field as read.
    pub raw: u16,
    /// Bits 4:0, MSINum: MSI message number of the IOMMU's event interrupts.
    pub msi_num: u8,
    /// Bits 12:8, UnitID: HyperTransport unit id.
    pub unit_id: u8,
}

impl IommuInfo {
    /// Decodes the raw field.
    pub const fn from_raw(raw: u16) -> Self {
        let value = raw as u64;
        Self {
            raw,
            msi_num: bits(value, 0, 5) as u8,
            unit_id: bits(value, 8, 5) as u8,
        }
    }
}

impl fmt::Display for IommuInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MSI {} unit {}", self.msi_num, self.unit_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;

    #[test]
    fn qemu_efr_decodes_to_named_fields() {
        // QEMU's AMDVI_DEFAULT_EXT_FEATURES as found in the IVHD 11h of QEMU 10.
        let efr = ExtendedFeatures::from_raw(0x29d3);
        assert!(efr.pref_sup && efr.ppr_sup && efr.gt_sup && efr.ia_sup);
        assert!(efr.ga_sup && efr.he_sup);
        assert!(!efr.xt_sup && !efr.nx_sup && !efr.pc_sup && !efr.gappi_sup);
        assert_eq!((efr.hats, efr.gats, efr.glx_sup, efr.pas_max), (2, 2, 0, 0));
        assert_eq!(efr.host_page_table_levels(), Some(6));
        assert_eq!(efr.guest_page_table_levels(), None);
        assert_eq!(efr.unknown_bits(), 0);
        assert_eq!(
            efr.to_string(),
            "prefetch, PPR, guest translation, invalidate-all, guest vAPIC, \
             hardware error regs, host address translation size 6 levels, \
             guest address translation size reserved (2), max PASID 0x1"
        );
    }

    #[test]
    fn efr_high_fields_and_unknown_bits() {
        let raw = (0x0Fu64 << 32) // PASmax 15: 16-bit PASIDs
            | (1 << 37)
            | (2 << 38)
            | (1 << 49)
            | (1 << 52)
            | (1 << 53) // reserved
            | (1 << 63)
            | (1 << 9)
            | (1 << 10);
        let efr = ExtendedFeatures::from_raw(raw);
        assert_eq!(efr.pas_max, 15);
        assert_eq!(efr.max_pasid(), 0xFFFF);
        assert!(efr.us_sup && efr.ha_sup && efr.hd_sup && efr.snp_sup && efr.pc_sup);
        assert_eq!(efr.dev_tbl_seg_sup, 2);
        assert_eq!(efr.host_page_table_levels(), Some(5));
        assert_eq!(efr.unknown_bits(), 1 << 53);
        assert_eq!(ExtendedFeatures::from_raw(0x1F << 32).max_pasid(), u32::MAX);
        let text = efr.to_string();
        for word in [
            "performance counters",
            "host address translation size 5 levels",
            "max PASID 0xffff",
            "user/supervisor",
            "4 device table segments",
            "host access",
            "host dirty",
            "SNP",
            "unknown bits 0x20000000000000",
        ] {
            assert!(text.contains(word), "{word:?} missing from {text:?}");
        }
        assert_eq!(
            ExtendedFeatures::from_raw(3 << 10).host_page_table_levels(),
            None
        );
        assert_eq!(
            ExtendedFeatures::from_raw(0).to_string(),
            "host address translation size 4 levels"
        );
    }

    #[test]
    fn ivhd_flags_in_words() {
        let qemu_type10 = IvhdFlags::from_bits_retain(0xd1);
        assert_eq!(qemu_type10.to_string(), "HT tunnel, IOTLB, prefetch, PPR");
        let qemu_type11 = IvhdFlags::from_bits_retain(0x11);
        assert_eq!(qemu_type11.to_string(), "HT tunnel, IOTLB");
        assert_eq!(IvhdFlags::empty().to_string(), "none");
    }

    #[test]
    fn feature_reporting_of_qemu_and_of_real_hardware() {
        let qemu = FeatureReporting::from_raw(0x44);
        assert!(qemu.gt_sup && qemu.ga_sup && !qemu.ia_sup && !qemu.xt_sup);
        assert_eq!((qemu.hats, qemu.gats), (0, 0));
        assert!(!qemu.has_performance_counters());
        assert_eq!(
            qemu.to_string(),
            "guest translation, guest vAPIC, host address translation size 4 levels, \
             guest address translation size 4 levels, PASmax 0"
        );
        // An AMD board's IVHD 10h (from an acpidump): 0x80048F6E.
        let real = FeatureReporting::from_raw(0x8004_8F6E);
        assert!(real.nx_sup && real.gt_sup && real.ia_sup && real.ga_sup && !real.he_sup);
        assert_eq!(real.glx_sup, 1);
        assert_eq!(real.pas_max, 0x0F);
        assert_eq!((real.pn_counters, real.pn_banks), (4, 2));
        assert!(real.has_performance_counters());
        assert_eq!(real.hats, 2);
        assert!(format!("{real}").contains("performance counters 2 banks x 4"));
    }

    #[test]
    fn attributes_and_info() {
        let attributes = IvhdAttributes::from_raw(1 | (4 << 13) | (2 << 17) | (3 << 23));
        assert!(attributes.hat_dis);
        assert_eq!(
            (
                attributes.pn_counters,
                attributes.pn_banks,
                attributes.msi_num_ppr
            ),
            (4, 2, 3)
        );
        assert_eq!(IvhdAttributes::from_raw(0).to_string(), "none");
        let info = IommuInfo::from_raw(0x1f05);
        assert_eq!((info.msi_num, info.unit_id), (5, 0x1f));
        assert_eq!(info.to_string(), "MSI 5 unit 31");
    }
}
