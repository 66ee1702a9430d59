//! An NVMe controller (QEMU's `nvme`, 1b36:0010) driven through the VFIO calls: its
//! registers in BAR0, mapped by the guest at [`BAR0_GPA`], and the admin IDENTIFY
//! command — what the NVMe guests (`vfio-reset`, `vfio-nvme-killed`, `vfio-msix`)
//! share.

pub const VENDOR: u16 = 0x1b36;
pub const DEVICE: u16 = 0x0010;
/// Where the NVMe guests map BAR0 (`DEVICE_MAP_REGION`, uncached).
pub const BAR0_GPA: u64 = 0xD000_0000;

/// Controller registers (offsets in BAR0).
pub const CAP: u64 = 0x00;
pub const VS: u64 = 0x08;
pub const CC: u64 = 0x14;
pub const CSTS: u64 = 0x1C;
pub const AQA: u64 = 0x24;
pub const ASQ: u64 = 0x28;
pub const ACQ: u64 = 0x30;
/// The admin queues' doorbells (submission tail, completion head 4 bytes on with
/// CAP.DSTRD = 0).
pub const DOORBELLS: u64 = 0x1000;
/// CC: EN, IOSQES = 6 (64-byte entries), IOCQES = 4 (16-byte entries).
pub const CC_ENABLE: u32 = 1 | (6 << 16) | (4 << 20);
/// Admin queue entries (each queue); AQA holds them minus one.
pub const QUEUE_ENTRIES: u32 = 2;
/// Polls of CSTS.RDY after a CC.EN change.
pub const RDY_POLLS: u32 = 100_000;
/// Admin opcode IDENTIFY, CNS 1 (the controller).
pub const OPC_IDENTIFY: u8 = 0x06;
pub const CNS_CONTROLLER: u32 = 1;

/// Read the 32-bit register at `offset` of BAR0. Only once BAR0 is mapped at
/// [`BAR0_GPA`] (else the hypervisor ends the guest on the nested page fault).
pub fn reg_read(offset: u64) -> u32 {
    // SAFETY: BAR0 is mapped uncached at BAR0_GPA (hypervisor and the guest's tables)
    // while the device is open; offsets are inside it (registers, doorbells, MSI-X).
    unsafe { core::ptr::read_volatile((BAR0_GPA + offset) as *const u32) }
}

/// Write the 32-bit register at `offset` of BAR0 (as [`reg_read`]).
pub fn reg_write(offset: u64, value: u32) {
    // SAFETY: as in `reg_read`.
    unsafe { core::ptr::write_volatile((BAR0_GPA + offset) as *mut u32, value) }
}

/// The 64-byte IDENTIFY (controller) command with id `cid`, its 4 KiB of data to go to
/// IOVA `data` (page aligned: PRP1 alone, no PRP2).
pub fn identify_command(cid: u16, data: u64) -> [u8; 64] {
    let mut cmd = [0u8; 64];
    cmd[0] = OPC_IDENTIFY;
    cmd[2..4].copy_from_slice(&cid.to_le_bytes());
    cmd[24..32].copy_from_slice(&data.to_le_bytes());
    cmd[40..44].copy_from_slice(&CNS_CONTROLLER.to_le_bytes());
    cmd
}
