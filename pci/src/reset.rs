//! Resetting one function, the way device assignment needs it: Function Level Reset,
//! a power-management reset (D3hot and back), or a secondary bus reset through the
//! parent bridge, with the config header saved before and restored after.
//!
//! A reset returns a function to its power-on state: BARs, command register and MSI
//! are cleared, so without the restore the function would no longer decode the
//! addresses the host assigned it. Internal state (queues, registers behind the BARs)
//! is gone, which is the point.
//!
//! Waiting is the caller's: every function here takes a `delay(us)` callback, so the
//! kernel can wait on a real timer and host tests don't sleep. Every wait is bounded.

use alloc::vec::Vec;
use core::fmt;

use crate::capability::{Capabilities, read_capabilities};
use crate::config::{ALL_ONES, reg};
use crate::device::{DeviceTable, PciDevice};
use crate::{ConfigSpace, PciAddress};

/// How a function can be reset, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResetMethod {
    /// Function Level Reset (PCIe Device Capabilities bit 28).
    Flr,
    /// D0 → D3hot → D0 of a function whose PMCSR No_Soft_Reset bit is 0.
    PowerManagement,
    /// Secondary bus reset through `bridge`'s Bridge Control (bit 6): resets every
    /// function on the bus, so only offered when they all belong to one group.
    BusReset {
        /// The parent bridge or port.
        bridge: PciAddress,
    },
}

impl fmt::Display for ResetMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flr => f.write_str("FLR"),
            Self::PowerManagement => f.write_str("PM reset (D3hot -> D0)"),
            Self::BusReset { bridge } => write!(f, "secondary bus reset via {bridge}"),
        }
    }
}

/// Why a reset did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetError {
    /// The function (no longer) has the capability the method needs.
    Unsupported,
    /// The function did not answer config reads after the reset (bounded wait).
    NotReady,
}

/// PCIe capability registers (offsets from the capability).
const PCIE_DEVICE_CONTROL: u16 = 0x08;
/// Device Control bit 15: Initiate Function Level Reset.
const DEVCTL_INITIATE_FLR: u32 = 1 << 15;
/// Device Status (upper half of the Device Control dword) bit 5: Transactions Pending.
const DEVSTA_TRANSACTIONS_PENDING: u32 = 1 << (16 + 5);
/// PM capability: PMCSR at +4; power state in bits 1:0; PME status (RW1C) bit 15.
const PM_CONTROL_STATUS: u16 = 0x04;
const PMCSR_STATE_MASK: u32 = 0x3;
const PMCSR_D3HOT: u32 = 0x3;
const PMCSR_PME_STATUS: u32 = 1 << 15;
/// Bridge Control (upper half of the dword at 0x3C) bit 6: Secondary Bus Reset.
const BRIDGE_CONTROL_BUS_RESET: u32 = 1 << (16 + 6);
/// Type 0 expansion ROM BAR.
pub const EXPANSION_ROM: u16 = 0x30;
/// Type 1 expansion ROM BAR.
pub const BRIDGE_EXPANSION_ROM: u16 = 0x38;

/// The PCIe spec's wait after an FLR or a reset before the first config request.
pub const RESET_WAIT_US: u32 = 100_000;
/// D3hot → D0 and D0 → D3hot transition time (PCI PM 1.2: 10 ms).
pub const PM_WAIT_US: u32 = 10_000;
/// How long the Secondary Bus Reset bit is held (Linux: 2 ms; the spec's minimum is 1 ms).
pub const BUS_RESET_HOLD_US: u32 = 2_000;
/// Further 100 ms waits for a function that still answers all-ones after a reset.
const READY_RETRIES: u32 = 10;

/// Decode `addr`'s capabilities from config space now (defects are ignored: the same
/// function was decoded, and its defects logged, at enumeration).
pub fn read_function_capabilities(cfg: &dyn ConfigSpace, addr: PciAddress) -> Capabilities {
    let header_type = cfg.read8(addr, reg::HEADER_TYPE) & 0x7F;
    let status = cfg.read16(addr, reg::STATUS);
    let mut defects = Vec::new();
    read_capabilities(cfg, addr, header_type, status, &mut defects)
}

/// The function's own reset methods: FLR, else a PM reset.
pub fn function_reset_method(caps: &Capabilities) -> Option<ResetMethod> {
    if caps.flr_supported() {
        Some(ResetMethod::Flr)
    } else if caps.power_management.is_some_and(|pm| !pm.no_soft_reset) {
        Some(ResetMethod::PowerManagement)
    } else {
        None
    }
}

/// The best reset method for `device`: its own (FLR, PM), else a secondary bus reset of
/// its parent bridge when every function on that bus satisfies `same_group` (a bus reset
/// resets them all, so it must not reach a function someone else owns). Functions on a
/// root bus have no parent bridge.
pub fn reset_method(
    table: &DeviceTable,
    device: &PciDevice,
    same_group: impl Fn(PciAddress) -> bool,
) -> Option<ResetMethod> {
    if let Some(method) = function_reset_method(&device.capabilities) {
        return Some(method);
    }
    let address = device.address;
    let parent = table.iter().find(|d| {
        d.is_bridge()
            && d.address.segment == address.segment
            && d.secondary_bus() == Some(address.bus)
    })?;
    let all_ours = table
        .iter()
        .filter(|d| d.address.segment == address.segment && d.address.bus == address.bus)
        .all(|d| same_group(d.address));
    all_ours.then_some(ResetMethod::BusReset {
        bridge: parent.address,
    })
}

/// What a reset clears and [`restore`] puts back: the header dwords 0x04..0x40 and the
/// capability registers that hold host-assigned state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedConfig {
    address: PciAddress,
    header_type: u8,
    /// Dwords 0x00..0x40.
    header: [u32; 16],
    /// `(offset, dwords)`: MSI control and message registers.
    msi: Option<(u16, [u32; 6])>,
    /// `(offset, control dword)`.
    msix: Option<(u16, u32)>,
    /// `(offset of Device Control, value)`.
    pcie_device_control: Option<(u16, u32)>,
}

impl SavedConfig {
    /// The function it was saved from.
    pub fn address(&self) -> PciAddress {
        self.address
    }
}

/// Save what a reset clears.
pub fn save(cfg: &dyn ConfigSpace, addr: PciAddress) -> SavedConfig {
    let caps = read_function_capabilities(cfg, addr);
    let mut header = [0u32; 16];
    for (i, dword) in header.iter_mut().enumerate() {
        *dword = cfg.read32(addr, 4 * i as u16);
    }
    let msi = caps.msi.map(|m| {
        let at = u16::from(m.offset);
        let mut regs = [0u32; 6];
        for (i, r) in regs.iter_mut().enumerate() {
            // Reads past a short MSI capability read the next capability's registers;
            // restore writes only the ones the layout has (see `restore`).
            *r = cfg.read32(addr, at + 4 * i as u16);
        }
        (at, regs)
    });
    let msix = caps
        .msix
        .map(|m| (u16::from(m.offset), cfg.read32(addr, u16::from(m.offset))));
    let pcie_device_control = caps.pcie.map(|p| {
        let at = u16::from(p.offset) + PCIE_DEVICE_CONTROL;
        (at, cfg.read32(addr, at) & 0xFFFF)
    });
    SavedConfig {
        address: addr,
        header_type: (header[3] >> 16) as u8 & 0x7F,
        header,
        msi,
        msix,
        pcie_device_control,
    }
}

/// Put back what [`save`] saved: BARs, ROM, bridge windows and bus numbers, interrupt
/// line, PCIe Device Control, MSI and MSI-X, and the command register last (so the
/// function decodes again only once its BARs are right). Status bits (RW1C) are written
/// as zero.
pub fn restore(cfg: &dyn ConfigSpace, saved: &SavedConfig) {
    let addr = saved.address;
    let h = &saved.header;
    // Cache line size, latency timer (0x0C; BIST and header type are read-only).
    cfg.write32(addr, 0x0C, h[3] & 0xFFFF);
    match saved.header_type {
        reg::HEADER_TYPE_BRIDGE => {
            for offset in [0x10u16, 0x14, 0x18, 0x20, 0x24, 0x28, 0x2C, 0x30, 0x38] {
                cfg.write32(addr, offset, h[usize::from(offset / 4)]);
            }
            // I/O base/limit next to the secondary status (RW1C): status half zero.
            cfg.write32(addr, 0x1C, h[7] & 0xFFFF);
            // Interrupt line and bridge control, without the bus reset bit.
            cfg.write32(addr, 0x3C, h[15] & !BRIDGE_CONTROL_BUS_RESET);
        }
        _ => {
            for offset in (reg::BAR0..reg::BAR0 + 24).step_by(4) {
                cfg.write32(addr, offset, h[usize::from(offset / 4)]);
            }
            cfg.write32(addr, EXPANSION_ROM, h[usize::from(EXPANSION_ROM / 4)]);
            cfg.write32(addr, reg::INTERRUPT_LINE, h[15]);
        }
    }
    if let Some((at, value)) = saved.pcie_device_control {
        // Device Status (upper half) is RW1C: zero; never re-initiate an FLR.
        cfg.write32(addr, at, value & !DEVCTL_INITIATE_FLR);
    }
    if let Some((at, regs)) = saved.msi {
        let control = regs[0] >> 16;
        let is_64bit = control & (1 << 7) != 0;
        let masking = control & (1 << 8) != 0;
        // Message registers first, control (enable) last.
        cfg.write32(addr, at + 4, regs[1]);
        let data_at = if is_64bit {
            cfg.write32(addr, at + 8, regs[2]);
            3
        } else {
            2
        };
        // Data is 16 bits; the upper half is reserved (or extended data): keep it.
        cfg.write32(addr, at + 4 * data_at, regs[data_at as usize]);
        if masking {
            cfg.write32(addr, at + 4 * (data_at + 1), regs[data_at as usize + 1]);
        }
        cfg.write32(addr, at, regs[0]);
    }
    if let Some((at, value)) = saved.msix {
        cfg.write32(addr, at, value);
    }
    // Command last; status half zero (RW1C).
    cfg.write32(addr, reg::COMMAND, h[1] & 0xFFFF);
}

/// Every present function on `bus` of `segment`.
fn functions_on_bus(cfg: &dyn ConfigSpace, like: PciAddress, bus: u8) -> Vec<PciAddress> {
    let mut found = Vec::new();
    for device in 0..32u8 {
        for function in 0..8u8 {
            let addr = PciAddress::new(like.segment, bus, device, function);
            if cfg.read16(addr, reg::VENDOR_ID) == 0xFFFF {
                if function == 0 {
                    break;
                }
                continue;
            }
            found.push(addr);
            let multifunction = cfg.read8(addr, reg::HEADER_TYPE) & reg::HEADER_TYPE_MULTIFUNCTION;
            if function == 0 && multifunction == 0 {
                break;
            }
        }
    }
    found
}

/// Wait (bounded) until `addr` answers config reads again.
fn wait_ready(
    cfg: &dyn ConfigSpace,
    addr: PciAddress,
    delay: &mut dyn FnMut(u32),
) -> Result<(), ResetError> {
    for _ in 0..READY_RETRIES {
        if cfg.read32(addr, reg::VENDOR_ID) != ALL_ONES {
            return Ok(());
        }
        delay(RESET_WAIT_US);
    }
    if cfg.read32(addr, reg::VENDOR_ID) != ALL_ONES {
        Ok(())
    } else {
        Err(ResetError::NotReady)
    }
}

/// Reset `addr` with `method`, saving its config before and restoring it after (for a
/// bus reset: every function on the bus). `delay(us)` waits at least `us`
/// microseconds. Bus mastering is off while the reset runs; restored after.
pub fn reset(
    cfg: &dyn ConfigSpace,
    addr: PciAddress,
    method: ResetMethod,
    delay: &mut dyn FnMut(u32),
) -> Result<(), ResetError> {
    let caps = read_function_capabilities(cfg, addr);
    match method {
        ResetMethod::Flr => {
            let pcie = caps
                .pcie
                .filter(|p| p.flr_supported)
                .ok_or(ResetError::Unsupported)?;
            let saved = save(cfg, addr);
            let command = saved.header[1] & 0xFFFF;
            cfg.write32(
                addr,
                reg::COMMAND,
                command & !u32::from(reg::COMMAND_BUS_MASTER),
            );
            let at = u16::from(pcie.offset) + PCIE_DEVICE_CONTROL;
            // Let outstanding transactions drain (bounded: 4 x 10 ms, then go ahead).
            for _ in 0..4 {
                if cfg.read32(addr, at) & DEVSTA_TRANSACTIONS_PENDING == 0 {
                    break;
                }
                delay(PM_WAIT_US);
            }
            let control = cfg.read32(addr, at) & 0xFFFF;
            cfg.write32(addr, at, control | DEVCTL_INITIATE_FLR);
            delay(RESET_WAIT_US);
            wait_ready(cfg, addr, delay)?;
            restore(cfg, &saved);
        }
        ResetMethod::PowerManagement => {
            let pm = caps
                .power_management
                .filter(|pm| !pm.no_soft_reset)
                .ok_or(ResetError::Unsupported)?;
            let saved = save(cfg, addr);
            let at = u16::from(pm.offset) + PM_CONTROL_STATUS;
            let pmcsr = cfg.read32(addr, at) & !PMCSR_PME_STATUS & 0xFFFF;
            cfg.write32(addr, at, (pmcsr & !PMCSR_STATE_MASK) | PMCSR_D3HOT);
            delay(PM_WAIT_US);
            cfg.write32(addr, at, pmcsr & !PMCSR_STATE_MASK);
            delay(PM_WAIT_US);
            wait_ready(cfg, addr, delay)?;
            restore(cfg, &saved);
        }
        ResetMethod::BusReset { bridge } => {
            let secondary = cfg.read8(bridge, reg::BRIDGE_BUS_NUMBERS + 1);
            if cfg.read8(bridge, reg::HEADER_TYPE) & 0x7F != reg::HEADER_TYPE_BRIDGE
                || secondary != addr.bus
            {
                return Err(ResetError::Unsupported);
            }
            let saved: Vec<SavedConfig> = functions_on_bus(cfg, addr, secondary)
                .into_iter()
                .map(|f| save(cfg, f))
                .collect();
            let control = cfg.read32(bridge, reg::INTERRUPT_LINE);
            cfg.write32(
                bridge,
                reg::INTERRUPT_LINE,
                control | BRIDGE_CONTROL_BUS_RESET,
            );
            delay(BUS_RESET_HOLD_US);
            cfg.write32(
                bridge,
                reg::INTERRUPT_LINE,
                control & !BRIDGE_CONTROL_BUS_RESET,
            );
            delay(RESET_WAIT_US);
            wait_ready(cfg, addr, delay)?;
            for s in &saved {
                restore(cfg, s);
            }
        }
    }
    Ok(())
}

/// The size mask of an expansion ROM BAR at `offset` (0x30 or 0x38): all-ones written
/// with the enable bit clear, read back, the original restored. 0 if not implemented.
/// Decoding of the ROM needs its enable bit, so the probe never makes it decode.
pub fn probe_rom(cfg: &dyn ConfigSpace, addr: PciAddress, offset: u16) -> u32 {
    let original = cfg.read32(addr, offset);
    cfg.write32(addr, offset, 0xFFFF_F800);
    let mask = cfg.read32(addr, offset) & 0xFFFF_F800;
    cfg.write32(addr, offset, original);
    mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EcamRegion;
    use crate::PciePortType;
    use crate::enumerate;
    use crate::fake::{FakeConfigSpace, FakeFunction, FakeReset};

    const DEV: PciAddress = PciAddress::new(0, 0, 3, 0);
    const PORT: PciAddress = PciAddress::new(0, 0, 0x1c, 0);
    const BEHIND: PciAddress = PciAddress::new(0, 1, 0, 0);
    const BEHIND_FN1: PciAddress = PciAddress::new(0, 1, 0, 1);
    const WINDOW: EcamRegion = EcamRegion {
        segment: 0,
        bus_start: 0,
        bus_end: 0xff,
        base: 0xb000_0000,
    };
    /// A scratch register (device state a reset must clear).
    const SCRATCH: u16 = 0xF0;
    const ON: u16 = reg::COMMAND_MEMORY_SPACE | reg::COMMAND_BUS_MASTER;

    fn nvme_like() -> FakeFunction {
        FakeFunction::endpoint(0x1b36, 0x0010, 0x01_08_02)
            .with_pcie_flags(PciePortType::Endpoint, true, false)
            .with_msi(0, true, true)
            .with_msix(64, 0, 0x2000, 0, 0x3000)
            .with_mem64_bar(0, 0xfe00_0000, 0x4000, false)
            .with_interrupt_pin(1)
            .with_u32(SCRATCH, 0x1111_1111)
            .with_u8(reg::INTERRUPT_LINE, 11)
    }

    /// Program host state into `addr` and change its internal state.
    fn program(cfg: &FakeConfigSpace, addr: PciAddress) -> SavedConfig {
        cfg.write32(addr, reg::COMMAND, u32::from(ON));
        let caps = read_function_capabilities(cfg, addr);
        if let Some(msi) = caps.msi {
            let at = u16::from(msi.offset);
            cfg.write32(addr, at + 4, 0xfee0_1000);
            let data_at = if msi.is_64bit { at + 12 } else { at + 8 };
            cfg.write32(addr, data_at, 0x41);
        }
        cfg.write32(addr, SCRATCH, 0xdead_beef);
        save(cfg, addr)
    }

    fn check_restored(cfg: &FakeConfigSpace, addr: PciAddress, before: &SavedConfig) {
        assert_eq!(&save(cfg, addr), before, "config restored");
        assert_eq!(cfg.read32(addr, SCRATCH), 0x1111_1111, "device state reset");
        assert_eq!(cfg.read16(addr, reg::COMMAND), ON);
    }

    #[test]
    fn flr_resets_and_restores_the_header() {
        let cfg = FakeConfigSpace::new().with(DEV, nvme_like());
        let before = program(&cfg, DEV);
        let mut waited = 0u64;
        let caps = read_function_capabilities(&cfg, DEV);
        assert_eq!(function_reset_method(&caps), Some(ResetMethod::Flr));
        reset(&cfg, DEV, ResetMethod::Flr, &mut |us| {
            waited += u64::from(us)
        })
        .unwrap();
        assert_eq!(cfg.resets(), [(DEV, FakeReset::Flr)]);
        assert!(waited >= u64::from(RESET_WAIT_US));
        check_restored(&cfg, DEV, &before);
        assert_eq!(cfg.read32(DEV, reg::BAR0), 0xfe00_0004);
        assert_eq!(cfg.read8(DEV, reg::INTERRUPT_LINE), 11);
    }

    #[test]
    fn pm_reset_without_no_soft_reset() {
        let function = FakeFunction::conventional_endpoint(0x8086, 0x100e)
            .with_power_management(false, false, false)
            .with_msi(0, false, false)
            .with_mem32_bar(0, 0xfeb0_0000, 0x2_0000, false)
            .with_u32(SCRATCH, 0x1111_1111);
        let cfg = FakeConfigSpace::new().with(DEV, function);
        let before = program(&cfg, DEV);
        let caps = read_function_capabilities(&cfg, DEV);
        assert_eq!(
            function_reset_method(&caps),
            Some(ResetMethod::PowerManagement)
        );
        let mut waits = Vec::new();
        reset(&cfg, DEV, ResetMethod::PowerManagement, &mut |us| {
            waits.push(us)
        })
        .unwrap();
        assert_eq!(cfg.resets(), [(DEV, FakeReset::PowerManagement)]);
        assert_eq!(waits, [PM_WAIT_US, PM_WAIT_US]);
        check_restored(&cfg, DEV, &before);
        assert_eq!(cfg.read32(DEV, 0x40 + 4) & 3, 0, "back in D0");
    }

    #[test]
    fn no_method_without_flr_or_soft_reset() {
        let no_soft =
            FakeFunction::conventional_endpoint(1, 2).with_power_management(false, false, true);
        let plain = FakeFunction::pcie_endpoint(1, 3);
        let cfg = FakeConfigSpace::new()
            .with(DEV, no_soft)
            .with(PciAddress::new(0, 0, 4, 0), plain);
        assert_eq!(
            function_reset_method(&read_function_capabilities(&cfg, DEV)),
            None
        );
        assert_eq!(
            function_reset_method(&read_function_capabilities(
                &cfg,
                PciAddress::new(0, 0, 4, 0)
            )),
            None
        );
        assert_eq!(
            reset(&cfg, DEV, ResetMethod::Flr, &mut |_| {}),
            Err(ResetError::Unsupported)
        );
        assert_eq!(
            reset(&cfg, DEV, ResetMethod::PowerManagement, &mut |_| {}),
            Err(ResetError::Unsupported)
        );
        assert!(cfg.resets().is_empty());
    }

    fn behind_port(second_function_in_group: bool) -> (FakeConfigSpace, crate::DeviceTable, bool) {
        let plain = || {
            FakeFunction::pcie_endpoint(0x1234, 0x11e8)
                .multifunction()
                .with_mem32_bar(0, 0xfd00_0000, 0x1000, false)
                .with_u32(SCRATCH, 0x1111_1111)
        };
        let cfg = FakeConfigSpace::new()
            .with(
                PciAddress::new(0, 0, 0, 0),
                FakeFunction::host_bridge(0x8086, 0x29c0),
            )
            .with(PORT, FakeFunction::root_port(0, 1, 1))
            .with(BEHIND, plain())
            .with(
                BEHIND_FN1,
                plain().with_mem32_bar(0, 0xfd00_1000, 0x1000, false),
            );
        let table = enumerate(&cfg, &[WINDOW]);
        (cfg, table, second_function_in_group)
    }

    #[test]
    fn bus_reset_only_when_the_whole_bus_is_one_group() {
        let (cfg, table, _) = behind_port(true);
        let device = table.get(BEHIND).expect("enumerated");
        assert_eq!(
            reset_method(&table, device, |a| a.bus == 1),
            Some(ResetMethod::BusReset { bridge: PORT })
        );
        assert_eq!(reset_method(&table, device, |a| a == BEHIND), None);
        let root = table.get(PciAddress::new(0, 0, 0, 0)).expect("host bridge");
        assert_eq!(
            reset_method(&table, root, |_| true),
            None,
            "root bus: no parent"
        );

        let before = program(&cfg, BEHIND);
        let before_fn1 = program(&cfg, BEHIND_FN1);
        let bridge_control = cfg.read32(PORT, reg::INTERRUPT_LINE);
        let mut waited = 0u64;
        reset(
            &cfg,
            BEHIND,
            ResetMethod::BusReset { bridge: PORT },
            &mut |us| waited += u64::from(us),
        )
        .unwrap();
        assert_eq!(
            cfg.resets(),
            [(BEHIND, FakeReset::Bus), (BEHIND_FN1, FakeReset::Bus)]
        );
        assert!(waited >= u64::from(RESET_WAIT_US + BUS_RESET_HOLD_US));
        check_restored(&cfg, BEHIND, &before);
        check_restored(&cfg, BEHIND_FN1, &before_fn1);
        assert_eq!(cfg.read32(PORT, reg::INTERRUPT_LINE), bridge_control);
        // A bridge that is not the parent is refused.
        assert_eq!(
            reset(
                &cfg,
                BEHIND,
                ResetMethod::BusReset { bridge: DEV },
                &mut |_| {}
            ),
            Err(ResetError::Unsupported)
        );
    }

    #[test]
    fn rom_probe_restores_the_register() {
        let function = FakeFunction::endpoint(1, 2, 0)
            .with_u32(EXPANSION_ROM, 0xfeb4_0000)
            .with_writable_mask(EXPANSION_ROM, 0xFFFC_0001);
        let cfg = FakeConfigSpace::new().with(DEV, function);
        assert_eq!(probe_rom(&cfg, DEV, EXPANSION_ROM), 0xFFFC_0000);
        assert_eq!(cfg.read32(DEV, EXPANSION_ROM), 0xfeb4_0000);
    }
}
