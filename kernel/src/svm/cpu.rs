//! Turning SVM on: is it there (CPUID), is it allowed (VM_CR.SVMDIS), EFER.SVME, and the
//! host save area VMRUN stores host state in (VM_HSAVE_PA).

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::memory::FRAMES;

/// EFER (MSR 0xC000_0080).
pub const MSR_EFER: u32 = 0xC000_0080;
/// VM_CR: bit 4 SVMDIS (firmware disabled SVM), bit 3 LOCK.
pub const MSR_VM_CR: u32 = 0xC001_0114;
/// Physical address of the host save area.
pub const MSR_VM_HSAVE_PA: u32 = 0xC001_0117;

pub const EFER_SCE: u64 = 1 << 0;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_NXE: u64 = 1 << 11;
pub const EFER_SVME: u64 = 1 << 12;
pub const VM_CR_SVMDIS: u64 = 1 << 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SvmError {
    /// Not an AMD-style CPU with the extended leaves at all.
    NoExtendedLeaves,
    /// CPUID 0x8000_0001 ECX bit 2 is clear. (QEMU: `-cpu qemu64,+svm,+npt`.)
    NoSvm,
    /// CPUID 0x8000_000A EDX bit 0 (NP) is clear: Sluice needs nested paging.
    NoNestedPaging,
    /// VM_CR.SVMDIS is set: the firmware turned SVM off.
    DisabledByFirmware,
    /// No free frame for the host save area.
    NoMemory,
    /// [`enable`] has not run.
    NotEnabled,
}

impl fmt::Display for SvmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoExtendedLeaves => "no CPUID leaf 0x80000001: this CPU has no SVM",
            Self::NoSvm => {
                "CPUID 0x80000001 ECX.SVM is clear: no AMD-V (QEMU: -cpu qemu64,+svm,+npt)"
            }
            Self::NoNestedPaging => {
                "CPUID 0x8000000A EDX.NP is clear: SVM without nested paging is not supported \
                 (QEMU: add +npt)"
            }
            Self::DisabledByFirmware => "VM_CR.SVMDIS is set: SVM disabled by firmware",
            Self::NoMemory => "no free frame for the SVM host save area",
            Self::NotEnabled => "SVM is not enabled (call svm::cpu::enable first)",
        })
    }
}

/// What CPUID says about SVM, as raw register values (so the decision is host tested).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvmCpuid {
    /// CPUID 0x8000_0000 EAX.
    pub max_extended_leaf: u32,
    /// CPUID 0x8000_0001 ECX.
    pub ext_features_ecx: u32,
    /// CPUID 0x8000_000A EBX (number of ASIDs) and EDX (SVM features).
    pub svm_asids: u32,
    pub svm_features_edx: u32,
}

/// What the hypervisor can rely on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SvmInfo {
    /// ASIDs the CPU has (guests use 1..asids; 0 is the host's). QEMU: 16.
    pub asids: u32,
    /// NRIP save (QEMU TCG: no; RIP is advanced by the hypervisor).
    pub nrip_save: bool,
}

impl SvmCpuid {
    pub fn read() -> Self {
        use core::arch::x86_64::__cpuid;
        let max_extended_leaf = __cpuid(0x8000_0000).eax;
        let mut c = Self {
            max_extended_leaf,
            ..Self::default()
        };
        if max_extended_leaf >= 0x8000_0001 {
            c.ext_features_ecx = __cpuid(0x8000_0001).ecx;
        }
        if max_extended_leaf >= 0x8000_000A {
            let l = __cpuid(0x8000_000A);
            c.svm_asids = l.ebx;
            c.svm_features_edx = l.edx;
        }
        c
    }

    /// Is SVM with nested paging available (VM_CR aside)?
    pub fn check(&self) -> Result<SvmInfo, SvmError> {
        if self.max_extended_leaf < 0x8000_0001 {
            return Err(SvmError::NoExtendedLeaves);
        }
        if self.ext_features_ecx & (1 << 2) == 0 {
            return Err(SvmError::NoSvm);
        }
        if self.max_extended_leaf < 0x8000_000A || self.svm_features_edx & 1 == 0 {
            return Err(SvmError::NoNestedPaging);
        }
        Ok(SvmInfo {
            asids: self.svm_asids,
            nrip_save: self.svm_features_edx & (1 << 3) != 0,
        })
    }
}

/// Host save area physical address, 0 until [`enable`] ran.
static HSAVE_PA: AtomicU64 = AtomicU64::new(0);
/// A VMCB-format page for VMSAVE/VMLOAD of the host's FS, GS, TR, LDTR, KernelGsBase,
/// STAR/LSTAR/CSTAR/SFMASK and SYSENTER MSRs around every guest run (VMRUN itself does
/// not switch them).
static HOST_STATE_PA: AtomicU64 = AtomicU64::new(0);
/// ASIDs the CPU has, recorded by [`enable`].
static ASIDS: AtomicU64 = AtomicU64::new(0);

/// Has [`enable`] succeeded?
pub fn enabled() -> bool {
    HSAVE_PA.load(Ordering::Acquire) != 0
}

/// The host's VMSAVE area (0 before [`enable`]).
pub fn host_state_pa() -> u64 {
    HOST_STATE_PA.load(Ordering::Acquire)
}

/// ASIDs reported by the CPU (0 before [`enable`]).
pub fn asid_count() -> u32 {
    ASIDS.load(Ordering::Relaxed) as u32
}

/// Check for SVM and nested paging, set EFER.SVME, and give the CPU a host save area
/// (one zeroed frame, kept for the kernel's lifetime). Idempotent. Single CPU: call on
/// the bootstrap processor before creating guests.
pub fn enable() -> Result<SvmInfo, SvmError> {
    let info = SvmCpuid::read().check()?;
    if enabled() {
        return Ok(info);
    }
    // SAFETY: VM_CR exists on every CPU with SVM (checked above); reading it has no side
    // effects. (QEMU TCG reads it as 0.)
    let vm_cr = unsafe { x86_64::registers::model_specific::Msr::new(MSR_VM_CR).read() };
    if vm_cr & VM_CR_SVMDIS != 0 {
        return Err(SvmError::DisabledByFirmware);
    }
    // Two frames: the host save area, then the host VMSAVE area.
    let hsave = FRAMES.lock().alloc(2, 4096).ok_or(SvmError::NoMemory)?;
    // SAFETY: the frames were just taken from the allocator (no one else uses them) and
    // are identity mapped like all allocator memory.
    unsafe { core::ptr::write_bytes(hsave as usize as *mut u8, 0, 2 * 4096) };
    // SAFETY: SVM is present and not disabled, so setting EFER.SVME is allowed; it only
    // makes the SVM instructions legal. VM_HSAVE_PA gets a page-aligned frame that stays
    // allocated forever (the CPU writes host state there on every VMRUN).
    unsafe {
        let mut efer = x86_64::registers::model_specific::Msr::new(MSR_EFER);
        efer.write(efer.read() | EFER_SVME);
        x86_64::registers::model_specific::Msr::new(MSR_VM_HSAVE_PA).write(hsave);
    }
    ASIDS.store(info.asids.into(), Ordering::Relaxed);
    HOST_STATE_PA.store(hsave + 4096, Ordering::Release);
    HSAVE_PA.store(hsave, Ordering::Release);
    log::info!(target: "svm", "SVM enabled: EFER.SVME set, host save area at {hsave:#x}, {} ASIDs, NRIP save {}",
        info.asids, if info.nrip_save { "yes" } else { "no (RIP advanced by Sluice)" });
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_checks() {
        let good = SvmCpuid {
            max_extended_leaf: 0x8000_001F,
            ext_features_ecx: 1 << 2,
            svm_asids: 16,
            svm_features_edx: 1,
        };
        assert_eq!(
            good.check(),
            Ok(SvmInfo {
                asids: 16,
                nrip_save: false
            })
        );
        assert_eq!(
            SvmCpuid {
                max_extended_leaf: 0x8000_0000,
                ..good
            }
            .check(),
            Err(SvmError::NoExtendedLeaves)
        );
        assert_eq!(
            SvmCpuid {
                ext_features_ecx: 0,
                ..good
            }
            .check(),
            Err(SvmError::NoSvm)
        );
        assert_eq!(
            SvmCpuid {
                svm_features_edx: 1 << 3,
                ..good
            }
            .check(),
            Err(SvmError::NoNestedPaging)
        );
        assert_eq!(
            SvmCpuid {
                max_extended_leaf: 0x8000_0008,
                ..good
            }
            .check(),
            Err(SvmError::NoNestedPaging)
        );
        assert!(
            SvmCpuid {
                svm_features_edx: 0b1001,
                ..good
            }
            .check()
            .unwrap()
            .nrip_save
        );
    }
}
