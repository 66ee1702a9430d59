//! The Virtual Machine Control Block: one 4 KiB page, a control area (0x000-0x3FF: what
//! to intercept, where the permission maps are, why the guest exited) and a state-save
//! area (0x400-: the guest's registers, loaded by VMRUN and stored by #VMEXIT).
//!
//! The layout is AMD's (APM vol. 2, appendix B); the offsets below are the ones seen to
//! work on QEMU 7.2 TCG (`platform-facts.md`, "A minimal SVM guest that worked"), and the
//! unit tests pin them. The page is kept as raw little-endian bytes with typed accessors
//! at those offsets, so no Rust struct layout can drift from the hardware's.

/// Control-area offsets.
pub mod off {
    /// Intercepts: CR reads (bits 15:0) / writes (31:16).
    pub const INTERCEPT_CR: usize = 0x000;
    /// Intercepts: DR reads / writes.
    pub const INTERCEPT_DR: usize = 0x004;
    /// Intercepts: exception vectors (bit n: vector n).
    pub const INTERCEPT_EXCEPTIONS: usize = 0x008;
    /// Intercepts: misc word 1 (INTR, NMI, ..., CPUID, HLT, IOIO_PROT, MSR_PROT, SHUTDOWN).
    pub const INTERCEPT_MISC1: usize = 0x00C;
    /// Intercepts: misc word 2 (VMRUN, VMMCALL, ..., XSETBV).
    pub const INTERCEPT_MISC2: usize = 0x010;
    pub const IOPM_BASE_PA: usize = 0x040;
    pub const MSRPM_BASE_PA: usize = 0x048;
    pub const TSC_OFFSET: usize = 0x050;
    pub const GUEST_ASID: usize = 0x058;
    pub const TLB_CONTROL: usize = 0x05C;
    /// V_TPR (7:0), V_IRQ (8), V_INTR_PRIO (19:16), V_IGN_TPR (20), V_INTR_MASKING (24).
    pub const V_INTR: usize = 0x060;
    pub const V_INTR_VECTOR: usize = 0x064;
    pub const INTERRUPT_SHADOW: usize = 0x068;
    pub const EXITCODE: usize = 0x070;
    pub const EXITINFO1: usize = 0x078;
    pub const EXITINFO2: usize = 0x080;
    pub const EXITINTINFO: usize = 0x088;
    /// Bit 0: nested paging on.
    pub const NP_ENABLE: usize = 0x090;
    pub const EVENTINJ: usize = 0x0A8;
    pub const N_CR3: usize = 0x0B0;
    pub const VMCB_CLEAN: usize = 0x0C0;
    /// Next sequential RIP (only with NRIP save, which QEMU TCG lacks: always 0 there).
    pub const NRIP: usize = 0x0C8;

    /// Save-area segments: selector u16, attrib u16, limit u32, base u64.
    pub const ES: usize = 0x400;
    pub const CS: usize = 0x410;
    pub const SS: usize = 0x420;
    pub const DS: usize = 0x430;
    pub const FS: usize = 0x440;
    pub const GS: usize = 0x450;
    pub const GDTR: usize = 0x460;
    pub const LDTR: usize = 0x470;
    pub const IDTR: usize = 0x480;
    pub const TR: usize = 0x490;
    pub const CPL: usize = 0x4CB;
    pub const EFER: usize = 0x4D0;
    pub const CR4: usize = 0x548;
    pub const CR3: usize = 0x550;
    pub const CR0: usize = 0x558;
    pub const DR7: usize = 0x560;
    pub const DR6: usize = 0x568;
    pub const RFLAGS: usize = 0x570;
    pub const RIP: usize = 0x578;
    pub const RSP: usize = 0x5D8;
    pub const RAX: usize = 0x5F8;
    pub const STAR: usize = 0x600;
    pub const LSTAR: usize = 0x608;
    pub const CSTAR: usize = 0x610;
    pub const SFMASK: usize = 0x618;
    pub const KERNEL_GS_BASE: usize = 0x620;
    pub const SYSENTER_CS: usize = 0x628;
    pub const SYSENTER_ESP: usize = 0x630;
    pub const SYSENTER_EIP: usize = 0x638;
    pub const CR2: usize = 0x640;
    pub const G_PAT: usize = 0x668;
}

/// Bits of the misc-1 intercept word (offset 0x00C).
pub mod misc1 {
    pub const INTR: u32 = 1 << 0;
    pub const NMI: u32 = 1 << 1;
    pub const SMI: u32 = 1 << 2;
    pub const INIT: u32 = 1 << 3;
    pub const VINTR: u32 = 1 << 4;
    pub const CPUID: u32 = 1 << 18;
    pub const HLT: u32 = 1 << 24;
    pub const INVLPGA: u32 = 1 << 26;
    pub const IOIO_PROT: u32 = 1 << 27;
    pub const MSR_PROT: u32 = 1 << 28;
    pub const SHUTDOWN: u32 = 1 << 31;
}

/// Bits of the misc-2 intercept word (offset 0x010).
pub mod misc2 {
    /// Mandatory: without it VMRUN fails with VMEXIT_INVALID.
    pub const VMRUN: u32 = 1 << 0;
    pub const VMMCALL: u32 = 1 << 1;
    pub const VMLOAD: u32 = 1 << 2;
    pub const VMSAVE: u32 = 1 << 3;
    pub const STGI: u32 = 1 << 4;
    pub const CLGI: u32 = 1 << 5;
    pub const SKINIT: u32 = 1 << 6;
    pub const XSETBV: u32 = 1 << 13;
}

/// V_INTR word (offset 0x060) bits.
pub mod vintr {
    pub const V_IRQ: u32 = 1 << 8;
    pub const V_INTR_PRIO_SHIFT: u32 = 16;
    pub const V_IGN_TPR: u32 = 1 << 20;
    pub const V_INTR_MASKING: u32 = 1 << 24;
}

/// TLB_CONTROL values.
pub mod tlb {
    pub const NOTHING: u8 = 0;
    pub const FLUSH_ALL: u8 = 1;
    pub const FLUSH_ASID: u8 = 3;
}

/// One segment register in the save area.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    /// Packed attributes: descriptor bits 47:40 in 7:0 and 55:52 in 11:8.
    pub attrib: u16,
    pub limit: u32,
    pub base: u64,
}

impl Segment {
    /// 64-bit code: present, S, code/readable/accessed, L, G (0x0A9B).
    pub const CODE64_ATTRIB: u16 = 0x0A9B;
    /// Data: present, S, data/writable/accessed, D/B, G (0x0C93).
    pub const DATA_ATTRIB: u16 = 0x0C93;
    /// LDT (system type 2), present.
    pub const LDT_ATTRIB: u16 = 0x0082;
    /// Busy 64-bit TSS (system type 0xB), present.
    pub const TSS_ATTRIB: u16 = 0x008B;
}

/// The VMCB page.
#[repr(C, align(4096))]
pub struct Vmcb {
    bytes: [u8; 4096],
}

impl Default for Vmcb {
    fn default() -> Self {
        Self::new()
    }
}

macro_rules! field {
    ($get:ident, $set:ident, $ty:ty, $off:expr) => {
        #[inline]
        pub fn $get(&self) -> $ty {
            self.read::<{ core::mem::size_of::<$ty>() }>($off) as $ty
        }
        #[inline]
        pub fn $set(&mut self, value: $ty) {
            self.write::<{ core::mem::size_of::<$ty>() }>($off, value as u64)
        }
    };
}

impl Vmcb {
    pub const fn new() -> Self {
        Self { bytes: [0; 4096] }
    }

    pub fn clear(&mut self) {
        self.bytes = [0; 4096];
    }

    pub fn as_bytes(&self) -> &[u8; 4096] {
        &self.bytes
    }

    /// The little-endian `N`-byte value at `offset`, zero-extended.
    #[inline]
    pub fn read<const N: usize>(&self, offset: usize) -> u64 {
        let mut buf = [0u8; 8];
        buf[..N].copy_from_slice(&self.bytes[offset..offset + N]);
        u64::from_le_bytes(buf)
    }

    /// Store the low `N` bytes of `value` at `offset`, little endian.
    #[inline]
    pub fn write<const N: usize>(&mut self, offset: usize, value: u64) {
        self.bytes[offset..offset + N].copy_from_slice(&value.to_le_bytes()[..N]);
    }

    field!(intercept_cr, set_intercept_cr, u32, off::INTERCEPT_CR);
    field!(intercept_dr, set_intercept_dr, u32, off::INTERCEPT_DR);
    field!(
        intercept_exceptions,
        set_intercept_exceptions,
        u32,
        off::INTERCEPT_EXCEPTIONS
    );
    field!(
        intercept_misc1,
        set_intercept_misc1,
        u32,
        off::INTERCEPT_MISC1
    );
    field!(
        intercept_misc2,
        set_intercept_misc2,
        u32,
        off::INTERCEPT_MISC2
    );
    field!(iopm_base, set_iopm_base, u64, off::IOPM_BASE_PA);
    field!(msrpm_base, set_msrpm_base, u64, off::MSRPM_BASE_PA);
    field!(tsc_offset, set_tsc_offset, u64, off::TSC_OFFSET);
    field!(asid, set_asid, u32, off::GUEST_ASID);
    field!(tlb_control, set_tlb_control, u8, off::TLB_CONTROL);
    field!(v_intr, set_v_intr, u32, off::V_INTR);
    field!(v_intr_vector, set_v_intr_vector, u8, off::V_INTR_VECTOR);
    field!(
        interrupt_shadow,
        set_interrupt_shadow,
        u64,
        off::INTERRUPT_SHADOW
    );
    field!(exit_code, set_exit_code, u64, off::EXITCODE);
    field!(exit_info1, set_exit_info1, u64, off::EXITINFO1);
    field!(exit_info2, set_exit_info2, u64, off::EXITINFO2);
    field!(exit_int_info, set_exit_int_info, u64, off::EXITINTINFO);
    field!(np_enable, set_np_enable, u64, off::NP_ENABLE);
    field!(event_inj, set_event_inj, u64, off::EVENTINJ);
    field!(n_cr3, set_n_cr3, u64, off::N_CR3);
    field!(vmcb_clean, set_vmcb_clean, u32, off::VMCB_CLEAN);
    field!(nrip, set_nrip, u64, off::NRIP);

    field!(cpl, set_cpl, u8, off::CPL);
    field!(efer, set_efer, u64, off::EFER);
    field!(cr4, set_cr4, u64, off::CR4);
    field!(cr3, set_cr3, u64, off::CR3);
    field!(cr0, set_cr0, u64, off::CR0);
    field!(dr7, set_dr7, u64, off::DR7);
    field!(dr6, set_dr6, u64, off::DR6);
    field!(rflags, set_rflags, u64, off::RFLAGS);
    field!(rip, set_rip, u64, off::RIP);
    field!(rsp, set_rsp, u64, off::RSP);
    field!(rax, set_rax, u64, off::RAX);
    field!(star, set_star, u64, off::STAR);
    field!(lstar, set_lstar, u64, off::LSTAR);
    field!(cstar, set_cstar, u64, off::CSTAR);
    field!(sfmask, set_sfmask, u64, off::SFMASK);
    field!(kernel_gs_base, set_kernel_gs_base, u64, off::KERNEL_GS_BASE);
    field!(cr2, set_cr2, u64, off::CR2);
    field!(g_pat, set_g_pat, u64, off::G_PAT);

    /// The segment register at `offset` (one of [`off::ES`] .. [`off::TR`]).
    pub fn segment(&self, offset: usize) -> Segment {
        Segment {
            selector: self.read::<2>(offset) as u16,
            attrib: self.read::<2>(offset + 2) as u16,
            limit: self.read::<4>(offset + 4) as u32,
            base: self.read::<8>(offset + 8),
        }
    }

    pub fn set_segment(&mut self, offset: usize, seg: Segment) {
        self.write::<2>(offset, seg.selector.into());
        self.write::<2>(offset + 2, seg.attrib.into());
        self.write::<4>(offset + 4, seg.limit.into());
        self.write::<8>(offset + 8, seg.base);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_and_alignment() {
        assert_eq!(core::mem::size_of::<Vmcb>(), 4096);
        assert_eq!(core::mem::align_of::<Vmcb>(), 4096);
    }

    #[test]
    fn control_offsets_match_platform_facts() {
        let mut v = Vmcb::new();
        type Setter = fn(&mut Vmcb);
        let cases: &[(usize, Setter)] = &[
            (0x008, |v| v.set_intercept_exceptions(0xAABB_CCDD)),
            (0x00C, |v| v.set_intercept_misc1(0xAABB_CCDD)),
            (0x010, |v| v.set_intercept_misc2(0xAABB_CCDD)),
            (0x040, |v| v.set_iopm_base(0xAABB_CCDD)),
            (0x048, |v| v.set_msrpm_base(0xAABB_CCDD)),
            (0x058, |v| v.set_asid(0xAABB_CCDD)),
            (0x070, |v| v.set_exit_code(0xAABB_CCDD)),
            (0x078, |v| v.set_exit_info1(0xAABB_CCDD)),
            (0x080, |v| v.set_exit_info2(0xAABB_CCDD)),
            (0x088, |v| v.set_exit_int_info(0xAABB_CCDD)),
            (0x090, |v| v.set_np_enable(0xAABB_CCDD)),
            (0x0A8, |v| v.set_event_inj(0xAABB_CCDD)),
            (0x0B0, |v| v.set_n_cr3(0xAABB_CCDD)),
            (0x548, |v| v.set_cr4(0xAABB_CCDD)),
            (0x550, |v| v.set_cr3(0xAABB_CCDD)),
            (0x558, |v| v.set_cr0(0xAABB_CCDD)),
            (0x560, |v| v.set_dr7(0xAABB_CCDD)),
            (0x568, |v| v.set_dr6(0xAABB_CCDD)),
            (0x570, |v| v.set_rflags(0xAABB_CCDD)),
            (0x578, |v| v.set_rip(0xAABB_CCDD)),
            (0x5D8, |v| v.set_rsp(0xAABB_CCDD)),
            (0x5F8, |v| v.set_rax(0xAABB_CCDD)),
            (0x640, |v| v.set_cr2(0xAABB_CCDD)),
            (0x668, |v| v.set_g_pat(0xAABB_CCDD)),
            (0x4D0, |v| v.set_efer(0xAABB_CCDD)),
        ];
        for (offset, set) in cases {
            v.clear();
            set(&mut v);
            assert_eq!(
                &v.as_bytes()[*offset..*offset + 4],
                &[0xDD, 0xCC, 0xBB, 0xAA],
                "field at {offset:#x}"
            );
            let nonzero = v.as_bytes().iter().filter(|&&b| b != 0).count();
            assert_eq!(nonzero, 4, "field at {offset:#x} wrote elsewhere");
        }
    }

    #[test]
    fn byte_fields() {
        let mut v = Vmcb::new();
        v.set_tlb_control(tlb::FLUSH_ALL);
        v.set_cpl(3);
        v.set_v_intr_vector(0x20);
        assert_eq!(v.as_bytes()[0x05C], 1);
        assert_eq!(v.as_bytes()[0x4CB], 3);
        assert_eq!(v.as_bytes()[0x064], 0x20);
        assert_eq!(v.as_bytes().iter().filter(|&&b| b != 0).count(), 3);
        assert_eq!(v.tlb_control(), 1);
        assert_eq!(v.cpl(), 3);
    }

    #[test]
    fn segments_are_selector_attrib_limit_base() {
        let mut v = Vmcb::new();
        let cs = Segment {
            selector: 0x08,
            attrib: Segment::CODE64_ATTRIB,
            limit: 0xFFFF_FFFF,
            base: 0x1122_3344_5566_7788,
        };
        for (i, offset) in [
            0x400, 0x410, 0x420, 0x430, 0x440, 0x450, 0x460, 0x470, 0x480, 0x490,
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(
                offset,
                [
                    off::ES,
                    off::CS,
                    off::SS,
                    off::DS,
                    off::FS,
                    off::GS,
                    off::GDTR,
                    off::LDTR,
                    off::IDTR,
                    off::TR
                ][i]
            );
            v.clear();
            v.set_segment(offset, cs);
            assert_eq!(
                &v.as_bytes()[offset..offset + 16],
                &[
                    0x08, 0, 0x9B, 0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x88, 0x77, 0x66, 0x55, 0x44,
                    0x33, 0x22, 0x11
                ]
            );
            assert_eq!(v.segment(offset), cs);
        }
    }

    #[test]
    fn intercept_bits() {
        assert_eq!(misc1::CPUID, 1 << 18);
        assert_eq!(misc1::HLT, 1 << 24);
        assert_eq!(misc1::IOIO_PROT, 1 << 27);
        assert_eq!(misc1::MSR_PROT, 1 << 28);
        assert_eq!(misc1::SHUTDOWN, 1 << 31);
        assert_eq!(misc2::VMRUN | misc2::VMMCALL, 0b11);
    }
}
