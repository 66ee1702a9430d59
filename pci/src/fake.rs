//! An in-memory configuration space for host tests.
//!
//! [`FakeConfigSpace`] holds a 4 KiB image per function and behaves like hardware
//! where enumeration can tell the difference:
//! - absent functions and bad offsets read all-ones, writes to them vanish;
//! - every byte has a write mask: ids, class, header type and capability headers
//!   are read-only, and a BAR's address bits below its size are hard-wired to zero,
//!   which is what makes BAR sizing (write all-ones, read back) work;
//! - status error bits are write-1-to-clear;
//! - it records BAR writes made while the function had memory or I/O decoding
//!   enabled (a real device would briefly decode the all-ones address), so tests
//!   can check that sizing switched decoding off first.
//!
//! [`FakeFunction`] builds images: endpoints, the bridge flavours, BARs, classic
//! and extended capabilities, and raw bytes for the malformed cases. Builder methods
//! panic on misuse (a BAR slot that does not exist, a full capability area): they
//! are test tooling, not part of the hostile-input path.
//!
//! Available in this crate's tests and, with the `fake` feature, to other crates.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use crate::capability::{AcsFlags, PciePortType, cap_id, ext_cap_id};
use crate::config::{ALL_ONES, CONFIG_SPACE_SIZE, reg};
use crate::{ConfigSpace, PciAddress};

const SIZE: usize = CONFIG_SPACE_SIZE as usize;

/// Config space made of in-memory function images.
#[derive(Default)]
pub struct FakeConfigSpace {
    functions: RefCell<BTreeMap<PciAddress, FakeFunction>>,
    bar_writes_while_decoding: RefCell<Vec<(PciAddress, u16)>>,
    bar_writes: Cell<usize>,
    reads: Cell<u64>,
    resets: RefCell<Vec<(PciAddress, FakeReset)>>,
}

/// A reset the fake carried out (see [`FakeConfigSpace::resets`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeReset {
    /// Device Control "Initiate FLR" written to a function that advertises FLR.
    Flr,
    /// PMCSR went from D3hot to D0 on a function without No_Soft_Reset.
    PowerManagement,
    /// The parent bridge's Secondary Bus Reset bit was released.
    Bus,
}

impl FakeConfigSpace {
    /// An empty config space: every read is all-ones.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the function at `addr`, builder style.
    pub fn with(mut self, addr: PciAddress, function: FakeFunction) -> Self {
        self.insert(addr, function);
        self
    }

    /// Adds (or replaces) the function at `addr`. Its image now is its power-on state,
    /// which a reset returns it to (with the header's writable registers cleared).
    pub fn insert(&mut self, addr: PciAddress, mut function: FakeFunction) {
        function.power_on = Some(function.image.clone());
        self.functions.get_mut().insert(addr, function);
    }

    /// Resets the fake carried out, in order.
    ///
    /// The fake models FLR (Device Control bit 15 of a function whose Device
    /// Capabilities has bit 28), PM reset (D3hot → D0 without No_Soft_Reset) and
    /// secondary bus reset (a bridge's Bridge Control bit 6 going from 1 to 0 resets
    /// every function on its secondary bus). A reset function gets its power-on image
    /// back with every writable bit of the header (0x04..0x40) cleared: no decoding,
    /// BARs at 0, as hardware after a reset.
    pub fn resets(&self) -> Vec<(PciAddress, FakeReset)> {
        self.resets.borrow().clone()
    }

    /// A copy of the function's current image (for comparisons in tests).
    pub fn image(&self, addr: PciAddress) -> Option<Vec<u8>> {
        self.functions.borrow().get(&addr).map(|f| f.image.to_vec())
    }

    /// BAR writes `(function, offset)` that happened while the function had memory
    /// or I/O decoding enabled.
    pub fn bar_writes_while_decoding(&self) -> Vec<(PciAddress, u16)> {
        self.bar_writes_while_decoding.borrow().clone()
    }

    /// How many BAR writes happened in total.
    pub fn bar_write_count(&self) -> usize {
        self.bar_writes.get()
    }

    /// The device's side of a register: set (or clear) `bits` of the 16-bit register at
    /// `offset`, whatever software may write there — e.g. STATUS's Interrupt Status
    /// while the function asserts INTx.
    pub fn device_set_bits16(&self, addr: PciAddress, offset: u16, bits: u16, on: bool) {
        let at = usize::from(offset);
        if at + 2 > SIZE {
            return;
        }
        if let Some(f) = self.functions.borrow_mut().get_mut(&addr) {
            let old = u16::from_le_bytes([f.image[at], f.image[at + 1]]);
            let new = if on { old | bits } else { old & !bits };
            f.image[at..at + 2].copy_from_slice(&new.to_le_bytes());
        }
    }

    /// How many `read32` calls were made (narrow reads count once each).
    pub fn read_count(&self) -> u64 {
        self.reads.get()
    }
}

impl ConfigSpace for FakeConfigSpace {
    fn read32(&self, addr: PciAddress, offset: u16) -> u32 {
        self.reads.set(self.reads.get() + 1);
        if offset >= CONFIG_SPACE_SIZE || offset % 4 != 0 {
            return ALL_ONES;
        }
        match self.functions.borrow().get(&addr) {
            Some(function) => function.read_u32(offset),
            None => ALL_ONES,
        }
    }

    fn write32(&self, addr: PciAddress, offset: u16, value: u32) {
        if offset >= CONFIG_SPACE_SIZE || offset % 4 != 0 {
            return;
        }
        let mut functions = self.functions.borrow_mut();
        let Some(function) = functions.get_mut(&addr) else {
            return;
        };
        if function.is_bar_offset(offset) {
            self.bar_writes.set(self.bar_writes.get() + 1);
            if function.is_decoding() {
                self.bar_writes_while_decoding
                    .borrow_mut()
                    .push((addr, offset));
            }
        }
        let before = function.read_u32(offset);
        function.hardware_write_u32(offset, value);
        let reset = function.reset_triggered(offset, before, value);
        match reset {
            Some(FakeReset::Bus) => {
                let secondary = function.image[usize::from(reg::BRIDGE_BUS_NUMBERS) + 1];
                for (&other, f) in functions.iter_mut() {
                    if other.segment == addr.segment && other.bus == secondary {
                        f.power_on_reset();
                        self.resets.borrow_mut().push((other, FakeReset::Bus));
                    }
                }
            }
            Some(kind) => {
                function.power_on_reset();
                self.resets.borrow_mut().push((addr, kind));
            }
            None => {}
        }
    }
}

/// One function's config image with its write behaviour, built step by step.
#[derive(Clone, Debug)]
pub struct FakeFunction {
    image: Box<[u8; SIZE]>,
    /// Bits software can change.
    writable: Box<[u8; SIZE]>,
    /// Bits cleared by writing 1.
    write_one_to_clear: Box<[u8; SIZE]>,
    last_classic: Option<u8>,
    next_classic: u16,
    last_extended: Option<u16>,
    next_extended: u16,
    /// Set when inserted into a [`FakeConfigSpace`].
    power_on: Option<Box<[u8; SIZE]>>,
}

/// Vendor ids used by the convenience constructors (QEMU's devices).
const REDHAT: u16 = 0x1b36;
const TEXAS_INSTRUMENTS: u16 = 0x104c;

impl FakeFunction {
    /// A function with a type 0 header (no capabilities, no BARs).
    pub fn endpoint(vendor_id: u16, device_id: u16, class: u32) -> Self {
        Self::blank(reg::HEADER_TYPE_ENDPOINT, vendor_id, device_id, class)
    }

    /// A conventional PCI function of class 00/ff/00, like QEMU's `edu`.
    pub fn conventional_endpoint(vendor_id: u16, device_id: u16) -> Self {
        Self::endpoint(vendor_id, device_id, 0x00_ff_00)
    }

    /// A PCIe endpoint (Ethernet class) with a PCI Express capability.
    pub fn pcie_endpoint(vendor_id: u16, device_id: u16) -> Self {
        Self::endpoint(vendor_id, device_id, 0x02_00_00).with_pcie(PciePortType::Endpoint)
    }

    /// A host bridge (class 06/00/00) without a PCIe capability, like q35's MCH.
    pub fn host_bridge(vendor_id: u16, device_id: u16) -> Self {
        Self::endpoint(vendor_id, device_id, 0x06_00_00)
    }

    /// A function with a type 1 header (class 06/04/00) and the given bus numbers.
    pub fn bridge(
        vendor_id: u16,
        device_id: u16,
        primary: u8,
        secondary: u8,
        subordinate: u8,
    ) -> Self {
        Self::blank(reg::HEADER_TYPE_BRIDGE, vendor_id, device_id, 0x06_04_00).with_bus_numbers(
            primary,
            secondary,
            subordinate,
        )
    }

    /// A PCIe root port with a slot (QEMU `pcie-root-port`, 1b36:000c).
    pub fn root_port(primary: u8, secondary: u8, subordinate: u8) -> Self {
        Self::bridge(REDHAT, 0x000c, primary, secondary, subordinate).with_pcie_flags(
            PciePortType::RootPort,
            false,
            true,
        )
    }

    /// A switch upstream port (QEMU `x3130-upstream`, 104c:8232).
    pub fn upstream_port(primary: u8, secondary: u8, subordinate: u8) -> Self {
        Self::bridge(TEXAS_INSTRUMENTS, 0x8232, primary, secondary, subordinate)
            .with_pcie(PciePortType::UpstreamPort)
    }

    /// A switch downstream port with a slot (QEMU `xio3130-downstream`, 104c:8233).
    pub fn downstream_port(primary: u8, secondary: u8, subordinate: u8) -> Self {
        Self::bridge(TEXAS_INSTRUMENTS, 0x8233, primary, secondary, subordinate).with_pcie_flags(
            PciePortType::DownstreamPort,
            false,
            true,
        )
    }

    /// A PCIe-to-PCI bridge (QEMU `pcie-pci-bridge`, 1b36:000e).
    pub fn pcie_to_pci_bridge(primary: u8, secondary: u8, subordinate: u8) -> Self {
        Self::bridge(REDHAT, 0x000e, primary, secondary, subordinate)
            .with_pcie(PciePortType::PcieToPciBridge)
    }

    /// A conventional PCI-to-PCI bridge without PCIe capability (QEMU `pci-bridge`,
    /// 1b36:0001).
    pub fn pci_bridge(primary: u8, secondary: u8, subordinate: u8) -> Self {
        Self::bridge(REDHAT, 0x0001, primary, secondary, subordinate)
    }

    /// A function whose image is `bytes` (up to 4096; the rest zero), with the
    /// write masks of its header type, for random-input tests. BARs are read-only.
    pub fn from_image(bytes: &[u8]) -> Self {
        let header_type = bytes
            .get(usize::from(reg::HEADER_TYPE))
            .copied()
            .unwrap_or(0)
            & 0x7F;
        let mut function = Self::blank(header_type, 0, 0, 0);
        let length = bytes.len().min(SIZE);
        function.image[..length].copy_from_slice(&bytes[..length]);
        function.image[length..].fill(0);
        function
    }

    fn blank(header_type: u8, vendor_id: u16, device_id: u16, class: u32) -> Self {
        let mut function = Self {
            image: Box::new([0; SIZE]),
            writable: Box::new([0xFF; SIZE]),
            write_one_to_clear: Box::new([0; SIZE]),
            last_classic: None,
            next_classic: u16::from(reg::FIRST_CAPABILITY_OFFSET),
            last_extended: None,
            next_extended: reg::EXTENDED_CAPABILITIES_OFFSET,
            power_on: None,
        };
        function.put_u16(reg::VENDOR_ID, vendor_id);
        function.put_u16(reg::DEVICE_ID, device_id);
        function.put_u32(reg::REVISION_ID, class << 8);
        function.image[usize::from(reg::HEADER_TYPE)] = header_type;

        // Read-only: ids, revision/class, header type, capability pointer, pin.
        function.read_only(reg::VENDOR_ID, 4);
        function.read_only(reg::REVISION_ID, 4);
        function.read_only(reg::HEADER_TYPE, 1);
        function.read_only(reg::CAPABILITY_POINTER, 1);
        function.read_only(reg::INTERRUPT_PIN, 1);
        // Status: bit 8 and bits 15:11 are RW1C, the rest read-only.
        function.read_only(reg::STATUS, 2);
        function.write_one_to_clear[usize::from(reg::STATUS) + 1] = 0xF9;
        match header_type {
            reg::HEADER_TYPE_ENDPOINT => {
                // BARs 0..=5 unimplemented until a builder says otherwise; subsystem
                // ids and expansion ROM read-only.
                function.read_only(reg::BAR0, 24);
                function.read_only(reg::SUBSYSTEM_VENDOR_ID, 8);
            }
            reg::HEADER_TYPE_BRIDGE => {
                function.read_only(reg::BAR0, 8);
                function.read_only(reg::BRIDGE_SECONDARY_STATUS, 2);
                function.write_one_to_clear[usize::from(reg::BRIDGE_SECONDARY_STATUS) + 1] = 0xF9;
            }
            _ => {}
        }
        function
    }

    fn read_only(&mut self, offset: u16, length: usize) {
        let start = usize::from(offset);
        self.writable[start..start + length].fill(0);
    }

    fn put_u16(&mut self, offset: u16, value: u16) {
        let start = usize::from(offset);
        self.image[start..start + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn put_u32(&mut self, offset: u16, value: u32) {
        let start = usize::from(offset);
        self.image[start..start + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn read_u32(&self, offset: u16) -> u32 {
        let start = usize::from(offset);
        let mut bytes = [0; 4];
        bytes.copy_from_slice(&self.image[start..start + 4]);
        u32::from_le_bytes(bytes)
    }

    /// A write as the device sees it: masked by `writable`, RW1C bits cleared.
    fn hardware_write_u32(&mut self, offset: u16, value: u32) {
        let start = usize::from(offset);
        for (lane, byte) in value.to_le_bytes().into_iter().enumerate() {
            let at = start + lane;
            let writable = self.writable[at];
            let mut new = (self.image[at] & !writable) | (byte & writable);
            new &= !(byte & self.write_one_to_clear[at]);
            self.image[at] = new;
        }
    }

    /// Offset of the first classic capability `id` in the image.
    fn find_capability(&self, id: u8) -> Option<u16> {
        let mut pointer = self.image[usize::from(reg::CAPABILITY_POINTER)] & 0xFC;
        for _ in 0..48 {
            if pointer < reg::FIRST_CAPABILITY_OFFSET {
                return None;
            }
            if self.image[usize::from(pointer)] == id {
                return Some(u16::from(pointer));
            }
            pointer = self.image[usize::from(pointer) + 1] & 0xFC;
        }
        None
    }

    /// Whether the write of `value` at `offset` (which held `before`) resets something.
    fn reset_triggered(&self, offset: u16, before: u32, value: u32) -> Option<FakeReset> {
        if let Some(pcie) = self.find_capability(cap_id::PCI_EXPRESS) {
            let flr_capable = self.read_u32(pcie + 4) & (1 << 28) != 0;
            if offset == pcie + 8 && flr_capable && value & (1 << 15) != 0 {
                return Some(FakeReset::Flr);
            }
        }
        if let Some(pm) = self.find_capability(cap_id::POWER_MANAGEMENT) {
            let no_soft_reset = self.read_u32(pm + 4) & (1 << 3) != 0;
            if offset == pm + 4 && before & 3 == 3 && value & 3 == 0 && !no_soft_reset {
                return Some(FakeReset::PowerManagement);
            }
        }
        let bridge = self.image[usize::from(reg::HEADER_TYPE)] & 0x7F == reg::HEADER_TYPE_BRIDGE;
        let bus_reset = 1 << (16 + 6);
        if bridge
            && offset == reg::INTERRUPT_LINE
            && before & bus_reset != 0
            && value & bus_reset == 0
        {
            return Some(FakeReset::Bus);
        }
        None
    }

    /// Back to the power-on image, the header's writable bits cleared.
    fn power_on_reset(&mut self) {
        if let Some(power_on) = &self.power_on {
            self.image.copy_from_slice(&power_on[..]);
        }
        for at in usize::from(reg::COMMAND)..0x40 {
            self.image[at] &= !self.writable[at];
        }
    }

    fn bar_slots(&self) -> u16 {
        match self.image[usize::from(reg::HEADER_TYPE)] & 0x7F {
            reg::HEADER_TYPE_ENDPOINT => 6,
            reg::HEADER_TYPE_BRIDGE => 2,
            _ => 0,
        }
    }

    fn is_bar_offset(&self, offset: u16) -> bool {
        (reg::BAR0..reg::BAR0 + 4 * self.bar_slots()).contains(&offset)
    }

    fn is_decoding(&self) -> bool {
        let command = self.image[usize::from(reg::COMMAND)];
        u16::from(command) & (reg::COMMAND_IO_SPACE | reg::COMMAND_MEMORY_SPACE) != 0
    }

    /// Makes exactly the `mask` bits of the dword at `offset` writable.
    pub fn with_writable_mask(mut self, offset: u16, mask: u32) -> Self {
        let start = usize::from(offset);
        self.writable[start..start + 4].copy_from_slice(&mask.to_le_bytes());
        self
    }

    /// Sets the byte at `offset`, bypassing write masks.
    pub fn with_u8(mut self, offset: u16, value: u8) -> Self {
        self.image[usize::from(offset)] = value;
        self
    }

    /// Sets the 16-bit value at `offset` (little endian), bypassing write masks.
    pub fn with_u16(mut self, offset: u16, value: u16) -> Self {
        self.put_u16(offset, value);
        self
    }

    /// Sets the 32-bit value at `offset` (little endian), bypassing write masks.
    pub fn with_u32(mut self, offset: u16, value: u32) -> Self {
        self.put_u32(offset, value);
        self
    }

    /// Sets header type bit 7 (use on function 0 of a multifunction device).
    pub fn multifunction(mut self) -> Self {
        self.image[usize::from(reg::HEADER_TYPE)] |= reg::HEADER_TYPE_MULTIFUNCTION;
        self
    }

    /// Sets the 24-bit class code.
    pub fn with_class(mut self, class: u32) -> Self {
        let revision = self.image[usize::from(reg::REVISION_ID)];
        self.put_u32(reg::REVISION_ID, (class << 8) | u32::from(revision));
        self
    }

    /// Sets the revision id.
    pub fn with_revision(mut self, revision: u8) -> Self {
        self.image[usize::from(reg::REVISION_ID)] = revision;
        self
    }

    /// Sets the command register.
    pub fn with_command(self, command: u16) -> Self {
        self.with_u16(reg::COMMAND, command)
    }

    /// Sets the interrupt pin (1..=4 for INTA#..INTD#).
    pub fn with_interrupt_pin(self, pin: u8) -> Self {
        self.with_u8(reg::INTERRUPT_PIN, pin)
    }

    /// Sets the subsystem ids (type 0 header).
    pub fn with_subsystem(self, vendor_id: u16, device_id: u16) -> Self {
        self.with_u32(
            reg::SUBSYSTEM_VENDOR_ID,
            u32::from(vendor_id) | (u32::from(device_id) << 16),
        )
    }

    /// Sets a type 1 header's primary, secondary and subordinate bus numbers.
    pub fn with_bus_numbers(self, primary: u8, secondary: u8, subordinate: u8) -> Self {
        let numbers = u32::from_le_bytes([primary, secondary, subordinate, 0]);
        self.with_u32(reg::BRIDGE_BUS_NUMBERS, numbers)
    }

    /// Sets BAR slot `index` to `value`, of which only `writable_mask` bits can be
    /// changed by software. The raw building block of the BAR helpers below.
    ///
    /// # Panics
    /// If the header has no such slot.
    pub fn with_bar_register(mut self, index: u8, value: u32, writable_mask: u32) -> Self {
        assert!(u16::from(index) < self.bar_slots(), "no BAR slot {index}");
        let offset = reg::BAR0 + 4 * u16::from(index);
        self.put_u32(offset, value);
        let start = usize::from(offset);
        self.writable[start..start + 4].copy_from_slice(&writable_mask.to_le_bytes());
        self
    }

    /// A 32-bit memory BAR of `size` bytes (a power of two, at least 16) at `address`.
    pub fn with_mem32_bar(self, index: u8, address: u32, size: u32, prefetchable: bool) -> Self {
        assert!(
            size.is_power_of_two() && size >= 16,
            "bad BAR size {size:#x}"
        );
        let flags = if prefetchable { 1 << 3 } else { 0 };
        self.with_bar_register(index, (address & !0xF) | flags, !(size - 1) & !0xF)
    }

    /// A 64-bit memory BAR in slots `index` and `index + 1`.
    pub fn with_mem64_bar(self, index: u8, address: u64, size: u64, prefetchable: bool) -> Self {
        assert!(
            size.is_power_of_two() && size >= 16,
            "bad BAR size {size:#x}"
        );
        let flags = 0b100 | if prefetchable { 1 << 3 } else { 0 };
        let mask = !(size - 1);
        self.with_bar_register(index, (address as u32 & !0xF) | flags, mask as u32 & !0xF)
            .with_bar_register(index + 1, (address >> 32) as u32, (mask >> 32) as u32)
    }

    /// An I/O BAR of `size` bytes (a power of two, 4..=256) decoding 16 address bits,
    /// so its upper half reads zero as on most real devices.
    pub fn with_io_bar(self, index: u8, address: u16, size: u16) -> Self {
        assert!(
            size.is_power_of_two() && (4..=256).contains(&size),
            "bad I/O size {size:#x}"
        );
        let mask = u32::from(!(size - 1)) & 0xFFFC;
        self.with_bar_register(index, u32::from(address & !0x3) | 1, mask)
    }

    /// Offset of the classic capability added last.
    pub fn last_classic_offset(&self) -> Option<u8> {
        self.last_classic
    }

    /// Appends a classic capability with registers `body` (the bytes after the
    /// id/next header) and links it into the list.
    ///
    /// # Panics
    /// If it does not fit below 0x100.
    pub fn with_capability(mut self, id: u8, body: &[u8]) -> Self {
        let offset = self.next_classic;
        let end = offset + 2 + body.len() as u16;
        assert!(end <= 0x100, "classic capability area full");
        let start = usize::from(offset);
        self.image[start] = id;
        self.image[start + 1] = 0;
        self.image[start + 2..usize::from(end)].copy_from_slice(body);
        self.read_only(offset, 2);
        let pointer_at = match self.last_classic {
            Some(previous) => u16::from(previous) + 1,
            None => reg::CAPABILITY_POINTER,
        };
        self.image[usize::from(pointer_at)] = offset as u8;
        self.image[usize::from(reg::STATUS)] |= reg::STATUS_CAPABILITY_LIST as u8;
        self.last_classic = Some(offset as u8);
        self.next_classic = end.next_multiple_of(4);
        self
    }

    /// Appends an extended capability with registers `body` (the bytes after the
    /// header dword) and links it into the list starting at 0x100.
    ///
    /// # Panics
    /// If it does not fit below 0x1000.
    pub fn with_extended_capability(mut self, id: u16, version: u8, body: &[u8]) -> Self {
        let offset = self.next_extended;
        let end = offset + 4 + body.len() as u16;
        assert!(end <= CONFIG_SPACE_SIZE, "extended capability area full");
        self.put_u32(offset, u32::from(id) | (u32::from(version & 0xF) << 16));
        let start = usize::from(offset);
        self.image[start + 4..usize::from(end)].copy_from_slice(body);
        self.read_only(offset, 4);
        if let Some(previous) = self.last_extended {
            let header = self.read_u32(previous);
            self.put_u32(previous, (header & 0x000F_FFFF) | (u32::from(offset) << 20));
        }
        self.last_extended = Some(offset);
        self.next_extended = end.next_multiple_of(4);
        self
    }

    /// Adds a version 2 PCI Express capability of the given port type.
    pub fn with_pcie(self, port_type: PciePortType) -> Self {
        self.with_pcie_flags(port_type, false, false)
    }

    /// Adds a version 2 PCI Express capability, with FLR and "slot implemented" as
    /// given.
    pub fn with_pcie_flags(self, port_type: PciePortType, flr: bool, slot: bool) -> Self {
        // Body starts at capability offset 2; the v2 structure is 0x3C bytes.
        let mut body = [0u8; 0x3A];
        let flags = 2 | (u16::from(port_type.raw()) << 4) | (u16::from(slot) << 8);
        body[0..2].copy_from_slice(&flags.to_le_bytes());
        let device_capabilities = u32::from(flr) << 28;
        body[2..6].copy_from_slice(&device_capabilities.to_le_bytes());
        self.with_capability(cap_id::PCI_EXPRESS, &body)
    }

    /// Adds an MSI capability that can request `1 << log2_vectors` vectors.
    pub fn with_msi(self, log2_vectors: u8, is_64bit: bool, per_vector_masking: bool) -> Self {
        let control = (u16::from(log2_vectors & 0x7) << 1)
            | (u16::from(is_64bit) << 7)
            | (u16::from(per_vector_masking) << 8);
        // control, address low, [address high], data, [reserved, mask, pending]
        let length =
            2 + 4 + if is_64bit { 4 } else { 0 } + 2 + if per_vector_masking { 10 } else { 0 };
        let mut body = [0u8; 22];
        body[0..2].copy_from_slice(&control.to_le_bytes());
        self.with_capability(cap_id::MSI, &body[..length])
    }

    /// Adds an MSI-X capability with `table_size` entries.
    pub fn with_msix(
        self,
        table_size: u16,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> Self {
        let control = table_size.saturating_sub(1) & 0x7FF;
        let table = (table_offset & !0x7) | u32::from(table_bar & 0x7);
        let pba = (pba_offset & !0x7) | u32::from(pba_bar & 0x7);
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&control.to_le_bytes());
        body[2..6].copy_from_slice(&table.to_le_bytes());
        body[6..10].copy_from_slice(&pba.to_le_bytes());
        self.with_capability(cap_id::MSIX, &body)
    }

    /// Adds a power management capability (version 3), in D0.
    pub fn with_power_management(self, d1: bool, d2: bool, no_soft_reset: bool) -> Self {
        let capabilities = 3 | (u16::from(d1) << 9) | (u16::from(d2) << 10);
        let control_status = u16::from(no_soft_reset) << 3;
        let mut body = [0u8; 6];
        body[0..2].copy_from_slice(&capabilities.to_le_bytes());
        body[2..4].copy_from_slice(&control_status.to_le_bytes());
        self.with_capability(cap_id::POWER_MANAGEMENT, &body)
    }

    /// Adds an ACS extended capability that behaves like real (and QEMU's) ports:
    /// the capability register is read-only and a control bit is writable exactly
    /// when its capability bit is set (unsupported controls are hard-wired to the
    /// value given here, normally 0).
    pub fn with_acs(self, capability: AcsFlags, control: AcsFlags) -> Self {
        let writable = capability & AcsFlags::all();
        self.with_acs_writable(capability, control, writable)
    }

    /// Adds an ACS extended capability whose control register only lets the
    /// `writable` bits change: models hardware that ignores (some) writes.
    pub fn with_acs_writable(
        mut self,
        capability: AcsFlags,
        control: AcsFlags,
        writable: AcsFlags,
    ) -> Self {
        let mut body = [0u8; 4];
        body[0..2].copy_from_slice(&capability.bits().to_le_bytes());
        body[2..4].copy_from_slice(&control.bits().to_le_bytes());
        self = self.with_extended_capability(ext_cap_id::ACS, 1, &body);
        let offset = self.last_extended.expect("just added");
        self.read_only(offset + 4, 2);
        let control_at = usize::from(offset) + 6;
        self.writable[control_at..control_at + 2].copy_from_slice(&writable.bits().to_le_bytes());
        self
    }

    /// Adds an ARI extended capability.
    pub fn with_ari(self, next_function: u8) -> Self {
        let capability = u16::from(next_function) << 8;
        let mut body = [0u8; 4];
        body[0..2].copy_from_slice(&capability.to_le_bytes());
        self.with_extended_capability(ext_cap_id::ARI, 1, &body)
    }

    /// Adds an SR-IOV extended capability.
    pub fn with_sriov(
        self,
        initial_vfs: u16,
        total_vfs: u16,
        num_vfs: u16,
        first_vf_offset: u16,
        vf_stride: u16,
        vf_device_id: u16,
    ) -> Self {
        // Body index = offset within the capability - 4 (the header dword).
        let mut body = [0u8; 0x3C];
        let mut put = |offset: usize, value: u16| {
            body[offset - 4..offset - 2].copy_from_slice(&value.to_le_bytes());
        };
        put(0x0C, initial_vfs);
        put(0x0E, total_vfs);
        put(0x10, num_vfs);
        put(0x14, first_vf_offset);
        put(0x16, vf_stride);
        put(0x1A, vf_device_id);
        put(0x1C, 0x0553); // supported page sizes: 4K, 8K, 64K, 256K, 1M, 4M
        put(0x20, 0x0001); // system page size: 4K
        self.with_extended_capability(ext_cap_id::SRIOV, 1, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: PciAddress = PciAddress::new(0, 0, 2, 0);

    #[test]
    fn absent_functions_read_all_ones_and_ignore_writes() {
        let cfg = FakeConfigSpace::new();
        assert_eq!(cfg.read32(DEV, 0), ALL_ONES);
        cfg.write32(DEV, 0, 0);
        assert_eq!(cfg.read32(DEV, 0), ALL_ONES);
    }

    #[test]
    fn ids_are_read_only_and_bars_answer_sizing() {
        let cfg = FakeConfigSpace::new().with(
            DEV,
            FakeFunction::conventional_endpoint(0x1234, 0x11e8).with_mem32_bar(
                0,
                0xfea0_0000,
                0x10_0000,
                false,
            ),
        );
        cfg.write32(DEV, reg::VENDOR_ID, 0);
        assert_eq!(cfg.read32(DEV, reg::VENDOR_ID), 0x11e8_1234);
        cfg.write32(DEV, reg::BAR0, ALL_ONES);
        assert_eq!(cfg.read32(DEV, reg::BAR0), 0xFFF0_0000);
        cfg.write32(DEV, reg::BAR0 + 4, ALL_ONES);
        assert_eq!(cfg.read32(DEV, reg::BAR0 + 4), 0, "unimplemented BAR");
    }

    #[test]
    fn records_bar_writes_while_decoding() {
        let cfg = FakeConfigSpace::new().with(
            DEV,
            FakeFunction::conventional_endpoint(1, 2)
                .with_mem32_bar(0, 0xfea0_0000, 0x1000, false)
                .with_command(reg::COMMAND_MEMORY_SPACE),
        );
        cfg.write32(DEV, reg::BAR0, ALL_ONES);
        cfg.write32(DEV, 0x40, ALL_ONES); // not a BAR
        assert_eq!(cfg.bar_writes_while_decoding(), [(DEV, reg::BAR0)]);
        cfg.write16(DEV, reg::COMMAND, 0);
        cfg.write32(DEV, reg::BAR0, 0);
        assert_eq!(cfg.bar_writes_while_decoding().len(), 1);
        assert_eq!(cfg.bar_write_count(), 2);
    }

    #[test]
    fn capabilities_are_linked_in_order() {
        let function = FakeFunction::conventional_endpoint(1, 2)
            .with_power_management(false, false, false)
            .with_msi(0, false, false);
        let cfg = FakeConfigSpace::new().with(DEV, function);
        assert_eq!(cfg.read8(DEV, reg::CAPABILITY_POINTER), 0x40);
        assert_eq!(cfg.read16(DEV, 0x40), 0x4801, "PM at 0x40, next at 0x48");
        assert_eq!(cfg.read16(DEV, 0x48), 0x0005, "MSI at 0x48, end of list");
        assert_ne!(
            cfg.read16(DEV, reg::STATUS) & reg::STATUS_CAPABILITY_LIST,
            0
        );
    }
}
