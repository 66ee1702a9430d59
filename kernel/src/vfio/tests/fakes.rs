//! Fakes: an IOMMU that keeps mappings as intervals and checks its callers the way a
//! driver does, and guest RAM as a byte vector.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use sluice_abi::Errno;
use sluice_iommu::{
    Access, DeviceDma, DomainHandle, FaultRecord, IoApicPinRoute, Iommu, IommuError, IovaRange,
    RemappedMsi, UnitId, Vendor,
};
use sluice_pci::PciAddress;

use crate::vfio::GuestRam;

/// The IOMMU as tests compare it: each attached function with its domain's mappings
/// `(iova, size, paddr)`, sorted.
pub type AttachedView = Vec<(PciAddress, Vec<(u64, u64, u64)>)>;

/// Page sizes of new domains by default: 4K, 2M, 1G.
pub const DEFAULT_PAGE_SIZES: u64 = (1 << 12) | (1 << 21) | (1 << 30);

/// Usable ranges of new domains by default: a 39-bit aperture minus the interrupt window.
pub fn default_ranges() -> Vec<IovaRange> {
    vec![
        IovaRange {
            start: 0,
            last: 0xfedf_ffff,
        },
        IovaRange {
            start: 0xfef0_0000,
            last: (1 << 39) - 1,
        },
    ]
}

#[derive(Clone, Debug, Default)]
pub struct FakeDomain {
    /// iova → (size, paddr, access).
    pub mappings: BTreeMap<u64, (u64, u64, Access)>,
    pub devices: BTreeSet<PciAddress>,
    pub page_sizes: u64,
    pub ranges: Vec<IovaRange>,
    pub commits: u32,
}

/// The fake's state, shared with the test through an `Rc`.
#[derive(Debug)]
pub struct FakeState {
    pub domains: BTreeMap<DomainHandle, FakeDomain>,
    pub next: u32,
    /// Device → the domain it is attached to.
    pub attached: BTreeMap<PciAddress, DomainHandle>,
    /// Page sizes and ranges given to the next domains created.
    pub page_sizes: u64,
    pub ranges: Vec<IovaRange>,
    /// `Some(n)`: the next `n` calls succeed, the ones after fail.
    pub create_budget: Option<u32>,
    pub create_error: IommuError,
    pub map_budget: Option<u32>,
    pub fail_attach: Option<PciAddress>,
    pub fail_commit: bool,
    pub fail_detach: bool,
    pub created: u32,
    pub destroyed: u32,
    /// Interrupt remapping offered (off by default: compatibility format).
    pub remapping: bool,
    /// Remapping entries in use: first index → (device, first vector, count, APIC id).
    pub irtes: BTreeMap<u32, (PciAddress, u8, u32, u32)>,
    /// The next index handed out.
    pub next_irte: u32,
    /// `map_msi` fails with this.
    pub fail_map_msi: Option<IommuError>,
    pub msi_unmaps: u32,
    /// I/O APIC pins with a remapping entry: index → (I/O APIC id, pin).
    pub ioapic_pins: BTreeMap<u32, (u8, u8)>,
    /// `map_ioapic_pin` fails with this.
    pub fail_map_ioapic: Option<IommuError>,
}

impl FakeState {
    pub fn new() -> Self {
        Self {
            domains: BTreeMap::new(),
            next: 1,
            attached: BTreeMap::new(),
            page_sizes: DEFAULT_PAGE_SIZES,
            ranges: default_ranges(),
            create_budget: None,
            create_error: IommuError::NoDomainId,
            map_budget: None,
            fail_attach: None,
            fail_commit: false,
            fail_detach: false,
            created: 0,
            destroyed: 0,
            remapping: false,
            irtes: BTreeMap::new(),
            next_irte: 0x100,
            fail_map_msi: None,
            msi_unmaps: 0,
            ioapic_pins: BTreeMap::new(),
            fail_map_ioapic: None,
        }
    }

    /// The fake's remappable message for index `first`: a made-up address naming it.
    pub fn msi_address(first: u32) -> u64 {
        0xfee0_0000 | u64::from(first) << 5 | 0x18
    }

    /// Device → its domain's mappings `(iova, size, paddr)`, sorted.
    pub fn attached_mappings(&self) -> AttachedView {
        self.attached
            .iter()
            .map(|(&device, domain)| {
                let mappings = self
                    .domains
                    .get(domain)
                    .map(|d| {
                        d.mappings
                            .iter()
                            .map(|(&iova, &(size, paddr, _))| (iova, size, paddr))
                            .collect()
                    })
                    .unwrap_or_default();
                (device, mappings)
            })
            .collect()
    }

    /// Total commits over live domains.
    pub fn commits(&self) -> BTreeMap<DomainHandle, u32> {
        self.domains.iter().map(|(&h, d)| (h, d.commits)).collect()
    }

    fn domain(&mut self, handle: DomainHandle) -> Result<&mut FakeDomain, IommuError> {
        self.domains
            .get_mut(&handle)
            .ok_or(IommuError::UnknownDomain)
    }
}

fn spend(budget: &mut Option<u32>) -> bool {
    match budget {
        None => true,
        Some(0) => false,
        Some(n) => {
            *n -= 1;
            true
        }
    }
}

pub struct FakeIommu(pub Rc<RefCell<FakeState>>);

impl Iommu for FakeIommu {
    fn vendor(&self) -> Vendor {
        Vendor::IntelVtd
    }

    fn create_domain(&mut self) -> Result<DomainHandle, IommuError> {
        let mut s = self.0.borrow_mut();
        if !spend(&mut s.create_budget) {
            return Err(s.create_error);
        }
        let handle = DomainHandle(s.next);
        s.next += 1;
        s.created += 1;
        let domain = FakeDomain {
            page_sizes: s.page_sizes,
            ranges: s.ranges.clone(),
            ..FakeDomain::default()
        };
        s.domains.insert(handle, domain);
        Ok(handle)
    }

    fn destroy_domain(&mut self, domain: DomainHandle) -> Result<(), IommuError> {
        let mut s = self.0.borrow_mut();
        if !s.domain(domain)?.devices.is_empty() {
            return Err(IommuError::Busy);
        }
        s.domains.remove(&domain);
        s.destroyed += 1;
        Ok(())
    }

    fn page_sizes(&self, domain: DomainHandle) -> Result<u64, IommuError> {
        let s = self.0.borrow();
        let d = s.domains.get(&domain).ok_or(IommuError::UnknownDomain)?;
        Ok(d.page_sizes)
    }

    fn iova_ranges(&self, domain: DomainHandle) -> Result<Vec<IovaRange>, IommuError> {
        let s = self.0.borrow();
        let d = s.domains.get(&domain).ok_or(IommuError::UnknownDomain)?;
        Ok(d.ranges.clone())
    }

    fn map(
        &mut self,
        domain: DomainHandle,
        iova: u64,
        paddr: u64,
        size: u64,
        access: Access,
    ) -> Result<(), IommuError> {
        let mut s = self.0.borrow_mut();
        s.domain(domain)?;
        if !spend(&mut s.map_budget) {
            return Err(IommuError::NoMemory);
        }
        let d = s.domain(domain)?;
        let page = 1u64 << d.page_sizes.trailing_zeros();
        if size == 0 || (iova | paddr | size) & (page - 1) != 0 {
            return Err(IommuError::Misaligned);
        }
        let end = iova.checked_add(size).ok_or(IommuError::Wraps)?;
        paddr.checked_add(size).ok_or(IommuError::Wraps)?;
        if !d
            .ranges
            .iter()
            .any(|r| r.start <= iova && end - 1 <= r.last)
        {
            return Err(IommuError::OutOfRange);
        }
        if access.is_empty() {
            return Err(IommuError::NoAccess);
        }
        if let Some((&other, &(other_size, _, _))) = d.mappings.range(..end).next_back() {
            if other + other_size > iova {
                return Err(IommuError::Overlap { iova: other });
            }
        }
        d.mappings.insert(iova, (size, paddr, access));
        Ok(())
    }

    fn unmap(&mut self, domain: DomainHandle, iova: u64, size: u64) -> Result<u64, IommuError> {
        let mut s = self.0.borrow_mut();
        let d = s.domain(domain)?;
        let end = iova.checked_add(size).ok_or(IommuError::Wraps)?;
        let inside: Vec<(u64, u64)> = d
            .mappings
            .range(..end)
            .map(|(&i, &(sz, _, _))| (i, sz))
            .filter(|&(i, sz)| i + sz > iova)
            .collect();
        if let Some(&(i, sz)) = inside.iter().find(|&&(i, sz)| i < iova || i + sz > end) {
            let _ = sz;
            return Err(IommuError::PartialUnmap { iova: i });
        }
        let mut bytes = 0;
        for (i, sz) in inside {
            d.mappings.remove(&i);
            bytes += sz;
        }
        Ok(bytes)
    }

    fn commit(&mut self, domain: DomainHandle) -> Result<(), IommuError> {
        let mut s = self.0.borrow_mut();
        let fail = s.fail_commit;
        let d = s.domain(domain)?;
        if fail {
            return Err(IommuError::InvalidationTimeout { unit: UnitId(0) });
        }
        d.commits += 1;
        Ok(())
    }

    fn attach(&mut self, domain: DomainHandle, device: &DeviceDma) -> Result<(), IommuError> {
        let mut s = self.0.borrow_mut();
        s.domain(domain)?;
        if s.fail_attach == Some(device.device) {
            return Err(IommuError::NoMemory);
        }
        if s.attached.contains_key(&device.device) {
            return Err(IommuError::Busy);
        }
        s.attached.insert(device.device, domain);
        s.domain(domain)?.devices.insert(device.device);
        Ok(())
    }

    fn detach(&mut self, domain: DomainHandle, device: &DeviceDma) -> Result<(), IommuError> {
        let mut s = self.0.borrow_mut();
        if s.fail_detach {
            return Err(IommuError::HardwareTimeout { unit: device.unit });
        }
        if s.attached.get(&device.device) != Some(&domain) {
            return Err(IommuError::UnknownDevice);
        }
        s.attached.remove(&device.device);
        s.domain(domain)?.devices.remove(&device.device);
        Ok(())
    }

    fn take_faults(&mut self) -> Vec<FaultRecord> {
        Vec::new()
    }

    /// Unit 0 coherent, unit 1 not, no other unit.
    fn dma_coherent(&self, unit: UnitId) -> Option<bool> {
        match unit.0 {
            0 => Some(true),
            1 => Some(false),
            _ => None,
        }
    }

    fn interrupt_remapping(&self) -> bool {
        self.0.borrow().remapping
    }

    /// Hands out indexes from `next_irte` on, never reused; checks what a driver checks.
    fn map_msi(
        &mut self,
        device: &DeviceDma,
        first_vector: u8,
        count: u32,
        dest_apic_id: u32,
    ) -> Result<RemappedMsi, IommuError> {
        let mut s = self.0.borrow_mut();
        if !s.remapping || !count.is_power_of_two() || count > 32 {
            return Err(IommuError::Unsupported { unit: device.unit });
        }
        if let Some(e) = s.fail_map_msi {
            return Err(e);
        }
        let first = s.next_irte;
        s.next_irte += count;
        s.irtes
            .insert(first, (device.device, first_vector, count, dest_apic_id));
        Ok(RemappedMsi {
            unit: device.unit,
            first,
            count,
            address: FakeState::msi_address(first),
            data: 0,
        })
    }

    fn unmap_msi(&mut self, device: &DeviceDma, msi: &RemappedMsi) -> Result<(), IommuError> {
        let mut s = self.0.borrow_mut();
        match s.irtes.get(&msi.first) {
            Some(&(owner, _, count, _)) if owner == device.device && count == msi.count => {
                s.irtes.remove(&msi.first);
                s.msi_unmaps += 1;
                Ok(())
            }
            _ => Err(IommuError::UnknownDevice),
        }
    }

    /// Compatibility format without remapping; with it, an entry from `next_irte` and a
    /// remappable-format redirection entry naming it.
    fn map_ioapic_pin(
        &mut self,
        ioapic_id: u8,
        pin: u8,
        vector: u8,
        dest_apic_id: u32,
        level_triggered: bool,
        active_low: bool,
    ) -> Result<IoApicPinRoute, IommuError> {
        let mut s = self.0.borrow_mut();
        if let Some(e) = s.fail_map_ioapic {
            return Err(e);
        }
        if !s.remapping {
            return IoApicPinRoute::compatibility(
                vector,
                dest_apic_id,
                level_triggered,
                active_low,
            )
            .ok_or(IommuError::Unsupported { unit: UnitId(0) });
        }
        let index = s.next_irte;
        s.next_irte += 1;
        s.ioapic_pins.insert(index, (ioapic_id, pin));
        let rte = u64::from(vector)
            | sluice_iommu::ioapic::shared_bits(level_triggered, active_low, false)
            | sluice_iommu::ioapic::rte::REMAPPABLE
            | u64::from(index) << sluice_iommu::ioapic::rte::HANDLE_SHIFT;
        Ok(IoApicPinRoute {
            unit: Some(UnitId(0)),
            index: Some(index),
            rte,
        })
    }

    fn unmap_ioapic_pin(&mut self, route: &IoApicPinRoute) -> Result<(), IommuError> {
        let mut s = self.0.borrow_mut();
        match route.index {
            None => Ok(()),
            Some(i) => s
                .ioapic_pins
                .remove(&i)
                .map(drop)
                .ok_or(IommuError::UnknownDevice),
        }
    }

    fn explain(&self, domain: DomainHandle, device: &DeviceDma, iova: u64) -> Vec<String> {
        vec![
            alloc::format!("context of {} -> domain {}", device.device, domain.0),
            alloc::format!("walk of {iova:#x}"),
        ]
    }
}

/// Guest RAM at guest-physical 0, backed by a vector, at a made-up host address.
pub struct FakeRam {
    pub ram: Vec<u8>,
    pub host_base: u64,
    /// gpa → (hpa, size) of region mappings.
    pub mmio: BTreeMap<u64, (u64, u64)>,
    pub mmio_unmaps: u32,
    /// Make the next `map_mmio` fail with this.
    pub fail_map_mmio: Option<Errno>,
}

impl FakeRam {
    pub fn new(size: u64, host_base: u64) -> Self {
        Self {
            ram: vec![0; size as usize],
            host_base,
            mmio: BTreeMap::new(),
            mmio_unmaps: 0,
            fail_map_mmio: None,
        }
    }

    fn range(&self, gpa: u64, len: usize) -> Option<core::ops::Range<usize>> {
        let start = usize::try_from(gpa).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.ram.len()).then_some(start..end)
    }

    /// Test helper: store bytes (panics outside RAM).
    pub fn put(&mut self, gpa: u64, data: &[u8]) {
        let r = self.range(gpa, data.len()).expect("inside RAM");
        self.ram[r].copy_from_slice(data);
    }

    /// Test helper: load bytes (panics outside RAM).
    pub fn get(&self, gpa: u64, len: usize) -> &[u8] {
        let r = self.range(gpa, len).expect("inside RAM");
        &self.ram[r]
    }
}

impl GuestRam for FakeRam {
    fn ram(&self) -> (u64, u64) {
        (0, self.ram.len() as u64)
    }

    fn host_address(&self, gpa: u64, len: u64) -> Option<u64> {
        let len = usize::try_from(len).ok()?;
        self.range(gpa, len)?;
        Some(self.host_base + gpa)
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let r = self.range(gpa, buf.len()).ok_or(Errno::EFAULT)?;
        buf.copy_from_slice(&self.ram[r]);
        Ok(())
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), Errno> {
        let r = self.range(gpa, data.len()).ok_or(Errno::EFAULT)?;
        self.ram[r].copy_from_slice(data);
        Ok(())
    }

    fn map_mmio(&mut self, gpa: u64, hpa: u64, size: u64) -> Result<(), Errno> {
        if let Some(e) = self.fail_map_mmio.take() {
            return Err(e);
        }
        assert!(gpa % 4096 == 0 && hpa % 4096 == 0 && size % 4096 == 0 && size > 0);
        assert!(gpa >= self.ram.len() as u64, "map_mmio over RAM");
        let end = gpa + size;
        if self.mmio.iter().any(|(&g, &(_, s))| g < end && gpa < g + s) {
            return Err(Errno::EEXIST);
        }
        self.mmio.insert(gpa, (hpa, size));
        Ok(())
    }

    fn unmap_mmio(&mut self, gpa: u64, size: u64) {
        let removed = self.mmio.remove(&gpa);
        assert_eq!(removed.map(|(_, s)| s), Some(size), "unmap of {gpa:#x}");
        self.mmio_unmaps += 1;
    }
}
