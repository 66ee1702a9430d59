//! CPUID: what this CPU offers the hypervisor (vendor, SVM, nested paging, ASIDs).

use core::arch::x86_64::{__cpuid, __cpuid_count};
use core::fmt;

#[derive(Clone, Copy, Debug)]
pub struct CpuFeatures {
    pub vendor: [u8; 12],
    pub max_extended_leaf: u32,
    pub svm: bool,
    pub npt: bool,
    pub nrip_save: bool,
    pub asids: u32,
}

impl CpuFeatures {
    pub fn read() -> Self {
        let l0 = __cpuid(0);
        let mut vendor = [0u8; 12];
        vendor[0..4].copy_from_slice(&l0.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&l0.edx.to_le_bytes());
        vendor[8..12].copy_from_slice(&l0.ecx.to_le_bytes());
        let max_extended_leaf = __cpuid(0x8000_0000).eax;
        let svm = max_extended_leaf >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 2) != 0;
        let (mut npt, mut nrip_save, mut asids) = (false, false, 0);
        if svm && max_extended_leaf >= 0x8000_000A {
            let l = __cpuid_count(0x8000_000A, 0);
            npt = l.edx & 1 != 0;
            nrip_save = l.edx & (1 << 3) != 0;
            asids = l.ebx;
        }
        CpuFeatures {
            vendor,
            max_extended_leaf,
            svm,
            npt,
            nrip_save,
            asids,
        }
    }
}

impl fmt::Display for CpuFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vendor = core::str::from_utf8(&self.vendor).unwrap_or("?");
        if self.svm {
            write!(
                f,
                "{vendor}: SVM yes, nested paging {}, NRIP save {}, {} ASIDs",
                if self.npt { "yes" } else { "no" },
                if self.nrip_save { "yes" } else { "no" },
                self.asids
            )
        } else {
            write!(f, "{vendor}: SVM no (guests unavailable)")
        }
    }
}
