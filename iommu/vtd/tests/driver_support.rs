//! Test material for the VT-d driver tests (`driver.rs`, `driver_props.rs`): a fake
//! remapping unit, the memory it shares with the driver, an independent walker of the
//! structures in that memory, and descriptor decoding.
//!
//! The fake ([`FakeVtdUnit`]) models what the driver relies on and checks what QEMU 7.2
//! checks: GCMD→GSTS (with QEMU's "changed bits" semantics for the enables), RTADDR
//! latched by SRTP, the invalidation queue processed synchronously on an IQT write
//! (reserved bits checked, IQE on a bad descriptor, a panic on Status Write + Interrupt
//! Flag, which aborts QEMU), CCMD/IOTLB register invalidation, fault recording registers
//! and FSTS. It also caches like hardware — context entries and translations, tagged by
//! domain id, not-present ones too in caching mode — so a missing or mis-tagged
//! invalidation shows up as a stale result of [`FakeVtdUnit::dma`].
//!
//! Everything here decodes raw bits itself (nothing from `sluice_vtd::driver`): the
//! tests compare the driver against this, not against itself.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use sluice_iommu::{DeviceDma, UnitId};
use sluice_pci::PciAddress;
use sluice_vtd::driver::{DriverConfig, IdentityRegion, UnitSetup, VtdIommu};
use sluice_vtd::hw::{DmaMemory, RegisterBlock};

/// QEMU 7.2's intel-iommu with default properties (platform facts).
pub const QEMU_CAP: u64 = 0x00d2_008c_2226_0206;
pub const QEMU_ECAP: u64 = 0x00f0_0f4a;

/// `aw-bits=48`: SAGAW 3+4-level, MGAW 48.
pub const fn aw48(cap: u64) -> u64 {
    (cap & !(0x1f << 8) & !(0x3f << 16)) | (0b0110 << 8) | (47 << 16)
}
/// `caching-mode=on`.
pub const fn caching_mode(cap: u64) -> u64 {
    cap | 1 << 7
}
/// CAP.RWBF.
pub const fn rwbf(cap: u64) -> u64 {
    cap | 1 << 4
}
/// CAP.ND (domain ids 2^(4+2nd)).
pub const fn nd(cap: u64, nd: u64) -> u64 {
    (cap & !7) | nd
}
/// CAP.NFR (records = n).
pub const fn nfr(cap: u64, n: u64) -> u64 {
    (cap & !(0xff << 40)) | (n - 1) << 40
}
/// Without page-selective invalidation.
pub const fn no_psi(cap: u64) -> u64 {
    cap & !(1 << 39)
}
/// Queued invalidation off.
pub const fn no_qi(ecap: u64) -> u64 {
    ecap & !2
}
/// Page-walk coherent.
pub const fn coherent(ecap: u64) -> u64 {
    ecap | 1
}

// ---------------------------------------------------------------------------------------
// Memory shared by the driver and the fake units.
// ---------------------------------------------------------------------------------------

/// What happened, in order: memory writes, barriers, flushes, register writes and the
/// descriptors the fake processed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Write {
        addr: u64,
        value: u64,
    },
    Barrier,
    Flush {
        addr: u64,
        len: usize,
    },
    Alloc {
        addr: u64,
        pages: usize,
    },
    Free {
        addr: u64,
        pages: usize,
    },
    Reg32 {
        unit: usize,
        offset: usize,
        value: u32,
    },
    Reg64 {
        unit: usize,
        offset: usize,
        value: u64,
    },
    Descriptor {
        unit: usize,
        lo: u64,
        hi: u64,
    },
}

#[derive(Default)]
pub struct TestMem {
    pub pages: BTreeMap<u64, Box<[u64; 512]>>,
    next: u64,
    pub allocated: usize,
    pub limit: Option<usize>,
    pub log: Vec<Event>,
    pub reads: u64,
    /// Status words the fake must never write (to simulate a lost completion).
    pub frozen: Vec<u64>,
}

impl TestMem {
    pub fn new() -> Self {
        Self {
            next: 0x10_0000,
            ..Self::default()
        }
    }

    pub fn read(&self, addr: u64) -> u64 {
        assert_eq!(addr % 8, 0, "unaligned read {addr:#x}");
        self.pages
            .get(&(addr & !0xfff))
            .unwrap_or_else(|| panic!("read of unallocated {addr:#x}"))
            [((addr & 0xfff) / 8) as usize]
    }

    pub fn write(&mut self, addr: u64, value: u64) {
        assert_eq!(addr % 8, 0, "unaligned write {addr:#x}");
        self.pages
            .get_mut(&(addr & !0xfff))
            .unwrap_or_else(|| panic!("write of unallocated {addr:#x}"))
            [((addr & 0xfff) / 8) as usize] = value;
    }

    pub fn is_allocated(&self, addr: u64) -> bool {
        self.pages.contains_key(&(addr & !0xfff))
    }

    /// Log entries of one kind, for assertions.
    pub fn descriptors(&self, unit: usize) -> Vec<Desc> {
        self.log
            .iter()
            .filter_map(|event| match *event {
                Event::Descriptor { unit: u, lo, hi } if u == unit => Some(Desc::decode(lo, hi)),
                _ => None,
            })
            .collect()
    }
}

/// The driver's handle on the shared memory.
#[derive(Clone)]
pub struct SharedMem(pub Rc<RefCell<TestMem>>);

impl DmaMemory for SharedMem {
    fn alloc_zeroed(&mut self, pages: usize, align: u64) -> Option<u64> {
        let mut mem = self.0.borrow_mut();
        if pages == 0 || mem.limit.is_some_and(|l| mem.allocated + pages > l) {
            return None;
        }
        let align = align.max(4096);
        let base = mem.next.div_ceil(align) * align;
        for i in 0..pages as u64 {
            mem.pages.insert(base + i * 4096, Box::new([0; 512]));
        }
        mem.next = base + pages as u64 * 4096;
        mem.allocated += pages;
        mem.log.push(Event::Alloc { addr: base, pages });
        Some(base)
    }

    fn free(&mut self, paddr: u64, pages: usize) {
        let mut mem = self.0.borrow_mut();
        for i in 0..pages as u64 {
            assert!(
                mem.pages.remove(&(paddr + i * 4096)).is_some(),
                "double free of {paddr:#x}"
            );
        }
        mem.allocated -= pages;
        mem.log.push(Event::Free { addr: paddr, pages });
    }

    fn read_u64(&self, paddr: u64) -> u64 {
        let mut mem = self.0.borrow_mut();
        mem.reads += 1;
        mem.read(paddr)
    }

    fn write_u64(&mut self, paddr: u64, value: u64) {
        let mut mem = self.0.borrow_mut();
        mem.write(paddr, value);
        mem.log.push(Event::Write { addr: paddr, value });
    }

    fn flush(&mut self, paddr: u64, len: usize) {
        self.0
            .borrow_mut()
            .log
            .push(Event::Flush { addr: paddr, len });
    }

    fn barrier(&self) {
        self.0.borrow_mut().log.push(Event::Barrier);
    }
}

// ---------------------------------------------------------------------------------------
// Descriptors, decoded independently.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Desc {
    /// Context-cache invalidation: granularity 1 global, 2 domain, 3 device.
    Context {
        g: u8,
        did: u16,
        sid: u16,
        fm: u8,
    },
    /// IOTLB invalidation: granularity 1 global, 2 domain, 3 page.
    Iotlb {
        g: u8,
        did: u16,
        dr: bool,
        dw: bool,
        addr: u64,
        ih: bool,
        am: u8,
    },
    InterruptEntry {
        global: bool,
        index: u16,
        mask: u8,
    },
    Wait {
        sw: bool,
        iflag: bool,
        fence: bool,
        data: u32,
        addr: u64,
    },
    Other {
        lo: u64,
        hi: u64,
    },
}

impl Desc {
    pub fn decode(lo: u64, hi: u64) -> Self {
        match lo & 0xf {
            1 => Desc::Context {
                g: ((lo >> 4) & 3) as u8,
                did: (lo >> 16) as u16,
                sid: (lo >> 32) as u16,
                fm: ((lo >> 48) & 3) as u8,
            },
            2 => Desc::Iotlb {
                g: ((lo >> 4) & 3) as u8,
                dw: lo & (1 << 6) != 0,
                dr: lo & (1 << 7) != 0,
                did: (lo >> 16) as u16,
                addr: hi & !0xfff,
                ih: hi & (1 << 6) != 0,
                am: (hi & 0x3f) as u8,
            },
            4 => Desc::InterruptEntry {
                global: lo & (1 << 4) == 0,
                index: (lo >> 32) as u16,
                mask: ((lo >> 27) & 0x1f) as u8,
            },
            5 => Desc::Wait {
                iflag: lo & (1 << 4) != 0,
                sw: lo & (1 << 5) != 0,
                fence: lo & (1 << 6) != 0,
                data: (lo >> 32) as u32,
                addr: hi,
            },
            _ => Desc::Other { lo, hi },
        }
    }

    pub fn is_wait(&self) -> bool {
        matches!(self, Desc::Wait { .. })
    }
}

// ---------------------------------------------------------------------------------------
// The independent walker.
// ---------------------------------------------------------------------------------------

/// A leaf of a second-level table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Leaf {
    pub iova: u64,
    pub paddr: u64,
    pub size: u64,
    pub read: bool,
    pub write: bool,
}

const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// The context entry (lo, hi) of `rid` under the root table at `root`, if the root
/// entry is present.
pub fn context_of(mem: &TestMem, root: u64, rid: u16) -> Option<(u64, u64)> {
    let root_lo = mem.read(root + u64::from(rid >> 8) * 16);
    if root_lo & 1 == 0 {
        return None;
    }
    let ctx = (root_lo & ADDR) + u64::from(rid & 0xff) * 16;
    Some((mem.read(ctx), mem.read(ctx + 8)))
}

/// Every leaf of the `levels`-level table at `table`, in IOVA order. R/W are the AND
/// along the walk. Panics on an entry with PS at level 1 or above level 3.
pub fn leaves(mem: &TestMem, table: u64, levels: u8) -> Vec<Leaf> {
    let mut out = Vec::new();
    collect(mem, table, levels, 0, true, true, &mut out);
    out
}

fn collect(
    mem: &TestMem,
    table: u64,
    level: u8,
    base: u64,
    read: bool,
    write: bool,
    out: &mut Vec<Leaf>,
) {
    let span = 1u64 << (12 + 9 * (u32::from(level) - 1));
    for index in 0..512u64 {
        let entry = mem.read(table + index * 8);
        let (r, w) = (entry & 1 != 0, entry & 2 != 0);
        if !r && !w {
            continue;
        }
        let iova = base + index * span;
        let page_size = entry & (1 << 7) != 0;
        if level == 1 || page_size {
            assert!(level <= 3, "PS at level {level}");
            assert_eq!(entry & ADDR & (span - 1), 0, "misaligned leaf at {iova:#x}");
            out.push(Leaf {
                iova,
                paddr: entry & ADDR,
                size: span,
                read: read && r,
                write: write && w,
            });
        } else {
            collect(
                mem,
                entry & ADDR,
                level - 1,
                iova,
                read && r,
                write && w,
                out,
            );
        }
    }
}

/// Translates `iova` by walking the table: (physical address, read, write).
pub fn walk_table(mem: &TestMem, table: u64, levels: u8, iova: u64) -> Option<Walked> {
    let mut table = table;
    let (mut read, mut write) = (true, true);
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (u32::from(level) - 1);
        let entry = mem.read(table + ((iova >> shift) & 0x1ff) * 8);
        read &= entry & 1 != 0;
        write &= entry & 2 != 0;
        if entry & 3 == 0 {
            return None;
        }
        if level == 1 || entry & (1 << 7) != 0 {
            let mask = (1u64 << shift) - 1;
            return Some(((entry & ADDR & !mask) | (iova & mask), read, write));
        }
        table = entry & ADDR;
    }
    None
}

// ---------------------------------------------------------------------------------------
// The fake unit.
// ---------------------------------------------------------------------------------------

pub mod reg {
    pub const VER: usize = 0x00;
    pub const CAP: usize = 0x08;
    pub const ECAP: usize = 0x10;
    pub const GCMD: usize = 0x18;
    pub const GSTS: usize = 0x1c;
    pub const RTADDR: usize = 0x20;
    pub const CCMD: usize = 0x28;
    pub const FSTS: usize = 0x34;
    pub const FECTL: usize = 0x38;
    pub const IQH: usize = 0x80;
    pub const IQT: usize = 0x88;
    pub const IQA: usize = 0x90;
    pub const ICS: usize = 0x9c;
    pub const IRTA: usize = 0xb8;
}

pub const TE: u32 = 1 << 31;
pub const SRTP: u32 = 1 << 30;
pub const WBF: u32 = 1 << 27;
pub const QIE: u32 = 1 << 26;
pub const IRE: u32 = 1 << 25;
pub const SIRTP: u32 = 1 << 24;
pub const CFI: u32 = 1 << 23;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedContext {
    pub present: bool,
    pub did: u16,
    pub table: u64,
    pub levels: u8,
}

/// State of one fake unit (tests reach it through the `Rc`).
pub struct UnitState {
    pub index: usize,
    pub ver: u32,
    pub cap: u64,
    pub ecap: u64,
    pub gsts: u32,
    pub rtaddr: u64,
    /// RTADDR as latched by the last SRTP.
    pub root: Option<u64>,
    pub ccmd: u64,
    pub iva: u64,
    pub iotlb_reg: u64,
    pub iqa: u64,
    pub iqh: u64,
    pub iqt: u64,
    pub qi_enabled: bool,
    pub fsts: u32,
    pub fectl: u32,
    pub frcd: Vec<[u64; 2]>,
    next_frcd: usize,
    /// GCMD values written, in order.
    pub gcmd_writes: Vec<u32>,
    pub srtp_count: usize,
    pub wbf_count: usize,
    /// Register-based invalidations performed: (offset, value).
    pub register_invalidations: Vec<(usize, u64)>,
    /// Anything the driver did that hardware (or QEMU) would reject.
    pub violations: Vec<String>,
    // Knobs.
    /// IQT writes are recorded but nothing is processed (a hung queue).
    pub ignore_iqt: bool,
    /// GCMD bits the unit never acknowledges.
    pub ignore_gcmd: u32,
    /// CCMD/IOTLB register invalidations never complete.
    pub stuck_registers: bool,
    /// Descriptors of this type are rejected with IQE.
    pub reject_type: Option<u64>,
    /// Every cleared fault record is refilled at once (a fault storm).
    pub storm: bool,
    pub faults_recorded: u64,
    pub faults_dropped: u64,
    /// IRTA as written, and as latched by the last SIRTP: (table, entries, EIME).
    pub irta: u64,
    pub ir_table: Option<(u64, u32, bool)>,
    pub sirtp_count: usize,
    // Caches.
    /// Interrupt-entry cache: index → IRTE (lo, hi), present entries only.
    pub iec: BTreeMap<u32, (u64, u64)>,
    pub context_cache: BTreeMap<u16, CachedContext>,
    /// (domain id, 4 KiB page) → (physical page, read, write), or a cached not-present
    /// result (caching mode only).
    pub iotlb: BTreeMap<(u16, u64), Option<Walked>>,
}

/// A translation: (physical address, read, write).
pub type Walked = (u64, bool, bool);

impl UnitState {
    fn cap_field(&self, low: u32, width: u32) -> u64 {
        (self.cap >> low) & ((1 << width) - 1)
    }
    pub fn cm(&self) -> bool {
        self.cap & (1 << 7) != 0
    }
    pub fn fro(&self) -> usize {
        self.cap_field(24, 10) as usize * 16
    }
    pub fn nfr(&self) -> usize {
        self.cap_field(40, 8) as usize + 1
    }
    pub fn mamv(&self) -> u64 {
        self.cap_field(48, 6)
    }
    pub fn mgaw(&self) -> u32 {
        self.cap_field(16, 6) as u32 + 1
    }
    pub fn iro(&self) -> usize {
        ((self.ecap >> 8) & 0x3ff) as usize * 16
    }

    /// Records a primary fault as QEMU does: dropped (PFO) when the next record is full.
    pub fn record_fault(&mut self, rid: u16, addr: u64, write: bool, reason: u8) {
        if self.fsts & 1 != 0 {
            self.faults_dropped += 1;
            return;
        }
        let index = self.next_frcd;
        if self.frcd[index][1] >> 63 != 0 {
            self.fsts |= 1;
            self.faults_dropped += 1;
            return;
        }
        let mut hi = u64::from(rid) | u64::from(reason) << 32 | 1 << 63;
        if !write {
            hi |= 1 << 62;
        }
        self.frcd[index] = [addr & !0xfff, hi];
        if self.fsts & 2 == 0 {
            self.fsts = (self.fsts & !0xff00) | (index as u32) << 8;
        }
        self.fsts |= 2;
        self.next_frcd = (index + 1) % self.nfr();
        self.faults_recorded += 1;
    }

    fn update_ppf(&mut self) {
        if self.frcd.iter().any(|r| r[1] >> 63 != 0) {
            self.fsts |= 2;
        } else {
            self.fsts &= !2;
        }
    }

    fn clear_record(&mut self, index: usize) {
        if self.frcd[index][1] >> 63 != 0 {
            self.frcd[index][1] &= !(1 << 63);
            if self.storm {
                let rid = self.frcd[index][1] as u16;
                let addr = self.frcd[index][0] + 0x1000;
                self.fsts &= !1;
                self.next_frcd = index;
                self.record_fault(rid, addr, true, 2);
            }
        }
        self.update_ppf();
    }

    fn invalidate_context(&mut self, g: u64, did: u16, sid: u16, fm: u8) {
        match g {
            1 => self.context_cache.clear(),
            2 => self.context_cache.retain(|_, c| c.did != did),
            3 => {
                // FM masks the top `fm` bits of the function number.
                let mask: u16 = !(((1u16 << fm) - 1) << (3 - fm));
                self.context_cache
                    .retain(|&rid, c| !(rid & mask == sid & mask && c.did == did));
            }
            _ => unreachable!(),
        }
    }

    fn invalidate_iotlb(&mut self, g: u64, did: u16, addr: u64, am: u64) {
        match g {
            1 => self.iotlb.clear(),
            2 => self.iotlb.retain(|&(d, _), _| d != did),
            3 => {
                let first = addr >> 12;
                let last = first + (1 << am) - 1;
                self.iotlb
                    .retain(|&(d, page), _| !(d == did && page >= first && page <= last));
            }
            _ => unreachable!(),
        }
    }
}

/// A fake unit: the driver's `RegisterBlock`.
pub struct FakeVtdUnit {
    pub state: Rc<RefCell<UnitState>>,
    pub mem: Rc<RefCell<TestMem>>,
}

impl FakeVtdUnit {
    pub fn new(index: usize, cap: u64, ecap: u64, mem: Rc<RefCell<TestMem>>) -> Self {
        let nfr = ((cap >> 40) & 0xff) as usize + 1;
        let state = UnitState {
            index,
            ver: 0x10,
            cap,
            ecap,
            gsts: 0,
            rtaddr: 0,
            root: None,
            ccmd: 0,
            iva: 0,
            iotlb_reg: 0,
            iqa: 0,
            iqh: 0,
            iqt: 0,
            qi_enabled: false,
            fsts: 0,
            fectl: 1 << 31,
            frcd: vec![[0, 0]; nfr],
            next_frcd: 0,
            gcmd_writes: Vec::new(),
            srtp_count: 0,
            wbf_count: 0,
            register_invalidations: Vec::new(),
            violations: Vec::new(),
            ignore_iqt: false,
            ignore_gcmd: 0,
            stuck_registers: false,
            reject_type: None,
            storm: false,
            faults_recorded: 0,
            faults_dropped: 0,
            irta: 0,
            ir_table: None,
            sirtp_count: 0,
            iec: BTreeMap::new(),
            context_cache: BTreeMap::new(),
            iotlb: BTreeMap::new(),
        };
        Self {
            state: Rc::new(RefCell::new(state)),
            mem,
        }
    }

    fn read_reg64(&self, offset: usize) -> u64 {
        let s = self.state.borrow();
        let fro = s.fro();
        let iro = s.iro();
        match offset {
            reg::CAP => s.cap,
            reg::ECAP => s.ecap,
            reg::RTADDR => s.rtaddr,
            reg::CCMD => s.ccmd,
            reg::IQH => s.iqh,
            reg::IQT => s.iqt,
            reg::IQA => s.iqa,
            reg::IRTA => s.irta,
            o if o == iro => s.iva,
            o if o == iro + 8 => s.iotlb_reg,
            o if o >= fro && o < fro + 16 * s.nfr() => {
                let record = s.frcd[(o - fro) / 16];
                if (o - fro) % 16 == 0 {
                    record[0]
                } else {
                    record[1]
                }
            }
            _ => panic!("64-bit read of unknown register {offset:#x}"),
        }
    }

    fn process_queue(&self) {
        loop {
            let (base, entries, head, tail) = {
                let s = self.state.borrow();
                let qs = s.iqa & 7;
                (s.iqa & !0xfff, 256u64 << qs, s.iqh >> 4, s.iqt >> 4)
            };
            if head == tail {
                return;
            }
            let slot = base + head * 16;
            let (lo, hi) = {
                let mem = self.mem.borrow();
                (mem.read(slot), mem.read(slot + 8))
            };
            let mut s = self.state.borrow_mut();
            if !self.descriptor_valid(&mut s, lo, hi) {
                s.fsts |= 1 << 4;
                return;
            }
            let index = s.index;
            self.mem.borrow_mut().log.push(Event::Descriptor {
                unit: index,
                lo,
                hi,
            });
            match lo & 0xf {
                1 => s.invalidate_context(
                    (lo >> 4) & 3,
                    (lo >> 16) as u16,
                    (lo >> 32) as u16,
                    ((lo >> 48) & 3) as u8,
                ),
                2 => s.invalidate_iotlb((lo >> 4) & 3, (lo >> 16) as u16, hi & !0xfff, hi & 0x3f),
                4 => {
                    if lo & (1 << 4) == 0 {
                        s.iec.clear();
                    } else {
                        let index = (lo >> 32) as u32 & 0xffff;
                        let count = 1u32 << ((lo >> 27) & 0x1f);
                        s.iec.retain(|&i, _| i < index || i >= index + count);
                    }
                }
                5 => {
                    let sw = lo & (1 << 5) != 0;
                    let iflag = lo & (1 << 4) != 0;
                    assert!(
                        !(sw && iflag),
                        "invalidation wait with Status Write and Interrupt Flag: QEMU 7.2 aborts"
                    );
                    if sw {
                        let mut mem = self.mem.borrow_mut();
                        if !mem.frozen.contains(&(hi & !7)) {
                            let word = mem.read(hi & !7);
                            let data = lo >> 32;
                            let value = if hi & 4 != 0 {
                                (word & 0xffff_ffff) | data << 32
                            } else {
                                (word & !0xffff_ffff) | data
                            };
                            mem.write(hi & !7, value);
                        }
                    }
                }
                _ => {}
            }
            s.iqh = ((head + 1) % entries) << 4;
        }
    }

    fn descriptor_valid(&self, s: &mut UnitState, lo: u64, hi: u64) -> bool {
        let kind = lo & 0xf;
        if s.reject_type == Some(kind) {
            return false;
        }
        let ok = match kind {
            1 => lo & 0xfffc_0000_0000_ffc0 == 0 && hi == 0 && (lo >> 4) & 3 != 0,
            2 => {
                let g = (lo >> 4) & 3;
                let mut ok = lo & 0xffff_ffff_0000_ff00 == 0 && hi & 0xf80 == 0 && g != 0;
                if g == 3 {
                    let am = hi & 0x3f;
                    ok &= am <= s.mamv() && (hi >> 12) & ((1 << am) - 1) == 0;
                    if s.cap & (1 << 39) == 0 {
                        s.violations
                            .push("page-selective invalidation without CAP.PSI".into());
                    }
                } else {
                    ok &= hi == 0;
                }
                if lo & (1 << 7) != 0 && s.cap & (1 << 55) == 0 {
                    s.violations.push("read drain without CAP.DRD".into());
                }
                if lo & (1 << 6) != 0 && s.cap & (1 << 54) == 0 {
                    s.violations.push("write drain without CAP.DWD".into());
                }
                ok
            }
            // QEMU's reserved mask for the interrupt-entry-cache descriptor; the handle
            // mask may not exceed ECAP.MHMV.
            4 => {
                let mhmv = (s.ecap >> 20) & 0xf;
                if s.ecap & (1 << 3) == 0 {
                    s.violations.push("IEC invalidation without ECAP.IR".into());
                }
                lo & 0xffff_0000_07ff_f1e0 == 0
                    && hi == 0
                    && (lo & (1 << 4) == 0 || (lo >> 27) & 0x1f <= mhmv)
            }
            5 => lo & 0xffff_ff80 == 0 && hi & 3 == 0,
            _ => false,
        };
        if !ok {
            s.violations.push(format!("bad descriptor {lo:#x} {hi:#x}"));
        }
        ok
    }

    fn gcmd(&self, value: u32) {
        let mut s = self.state.borrow_mut();
        s.gcmd_writes.push(value);
        let changed = s.gsts ^ value;
        let ignore = s.ignore_gcmd;
        if value & SRTP != 0 && ignore & SRTP == 0 {
            s.root = Some(s.rtaddr);
            s.srtp_count += 1;
            s.gsts |= SRTP;
        }
        if value & WBF != 0 {
            s.wbf_count += 1;
            if s.cap & (1 << 4) == 0 {
                s.violations.push("WBF without CAP.RWBF".into());
            }
        }
        if changed & QIE != 0 && ignore & QIE == 0 {
            if value & QIE != 0 {
                if s.iqt != 0 {
                    s.violations.push("QIE set with IQT != 0".into());
                } else {
                    s.qi_enabled = true;
                    s.iqh = 0;
                    s.gsts |= QIE;
                }
            } else if s.iqh == s.iqt {
                s.qi_enabled = false;
                s.iqh = 0;
                s.gsts &= !QIE;
            } else {
                s.violations.push("QIE cleared with a busy queue".into());
            }
        }
        if changed & TE != 0 && ignore & TE == 0 {
            if value & TE != 0 {
                if s.root.is_none() {
                    s.violations.push("TE before SRTP".into());
                }
                s.gsts |= TE;
            } else {
                s.violations.push("translation disabled".into());
                s.gsts &= !TE;
            }
        }
        if value & SIRTP != 0 && ignore & SIRTP == 0 {
            let irta = s.irta;
            if irta & (1 << 11) != 0 && s.ecap & (1 << 4) == 0 {
                s.violations.push("IRTA.EIME without ECAP.EIM".into());
            }
            if s.gsts & IRE != 0 {
                s.violations
                    .push("SIRTP with interrupt remapping on".into());
            }
            s.ir_table = Some((irta & ADDR, 2 << (irta & 0xf), irta & (1 << 11) != 0));
            s.sirtp_count += 1;
            s.gsts |= SIRTP;
        }
        if changed & IRE != 0 && ignore & IRE == 0 {
            if value & IRE != 0 && s.ir_table.is_none() {
                s.violations.push("IRE before SIRTP".into());
            }
            s.gsts ^= IRE;
        }
        if changed & CFI != 0 && ignore & CFI == 0 {
            s.gsts ^= CFI;
        }
    }

    /// An interrupt request (a write of `data` to `address` in the interrupt window) by
    /// `rid`: Ok((vector, APIC id)) as delivered, or Err(VT-d interrupt-remapping fault
    /// reason). Present entries are cached until an interrupt-entry-cache invalidation.
    pub fn interrupt(&self, rid: u16, address: u32, data: u32) -> Result<(u8, u8), u8> {
        let mem = self.mem.borrow();
        let mut s = self.state.borrow_mut();
        assert_eq!(address >> 20, 0xfee, "not an interrupt-window address");
        if s.gsts & IRE == 0 {
            return Ok((data as u8, (address >> 12) as u8));
        }
        if address & (1 << 4) == 0 {
            // Compatibility format: only with CFI set.
            return if s.gsts & CFI != 0 {
                Ok((data as u8, (address >> 12) as u8))
            } else {
                Err(0x25)
            };
        }
        let mut index = (address >> 5) & 0x7fff | ((address >> 2) & 1) << 15;
        if address & (1 << 3) != 0 {
            if data >> 16 != 0 {
                return Err(0x24);
            }
            index += data & 0xffff;
        }
        let (table, entries, eime) = s.ir_table.expect("IRE without a table");
        if index >= entries {
            return Err(0x21);
        }
        let (lo, hi) = match s.iec.get(&index) {
            Some(&cached) => cached,
            None => {
                let at = table + u64::from(index) * 16;
                (mem.read(at), mem.read(at + 8))
            }
        };
        if lo & 1 == 0 {
            return Err(0x22);
        }
        // Reserved: lo bits 14:12 and 31:24 (remapped format), hi bits 63:20.
        if lo & 0xff00_7000 != 0 || hi >> 20 != 0 {
            return Err(0x24);
        }
        s.iec.insert(index, (lo, hi));
        let sid = hi as u16;
        let ok = match (hi >> 18) & 3 {
            0 => true,
            1 => {
                let mask = [0xffffu16, 0xfffb, 0xfff9, 0xfff8][((hi >> 16) & 3) as usize];
                rid & mask == sid & mask
            }
            2 => {
                let bus = (rid >> 8) as u8;
                bus >= (sid >> 8) as u8 && bus <= sid as u8
            }
            _ => false,
        };
        if !ok {
            return Err(0x26);
        }
        let dest = if eime {
            (lo >> 32) as u8
        } else {
            (lo >> 40) as u8
        };
        Ok(((lo >> 16) as u8, dest))
    }

    fn register_invalidation(&self, offset: usize, value: u64) {
        let mut s = self.state.borrow_mut();
        if s.qi_enabled {
            // QEMU ignores register-based invalidation once QI is on: it never completes.
            s.violations
                .push("register invalidation with QI enabled".into());
            return;
        }
        if s.stuck_registers {
            return;
        }
        s.register_invalidations.push((offset, value));
        if offset == reg::CCMD {
            let g = (value >> 61) & 3;
            s.invalidate_context(
                g,
                value as u16,
                (value >> 16) as u16,
                ((value >> 32) & 3) as u8,
            );
            s.ccmd = (value & !(1 << 63) & !(3 << 59)) | g << 59;
        } else {
            let g = (value >> 60) & 3;
            let iva = s.iva;
            s.invalidate_iotlb(g, (value >> 32) as u16, iva & !0xfff, iva & 0x3f);
            s.iotlb_reg = (value & !(1 << 63) & !(3 << 57)) | g << 57;
        }
    }

    /// A DMA by `rid` at `iova`: through the caches, walking memory on a miss, recording
    /// a fault on failure. Ok(physical address) or Err(fault reason).
    pub fn dma(&self, rid: u16, iova: u64, write: bool) -> Result<u64, u8> {
        let outcome = self.translate(rid, iova, write);
        if let Err(reason) = outcome {
            self.state
                .borrow_mut()
                .record_fault(rid, iova, write, reason);
        }
        outcome
    }

    fn translate(&self, rid: u16, iova: u64, write: bool) -> Result<u64, u8> {
        let mem = self.mem.borrow();
        let mut s = self.state.borrow_mut();
        if s.gsts & TE == 0 {
            return Ok(iova);
        }
        let root = s.root.expect("TE without root");
        let context = match s.context_cache.get(&rid) {
            Some(&cached) => cached,
            None => {
                let context = match context_of(&mem, root, rid) {
                    None => return Err(1),
                    Some((lo, hi)) if lo & 1 == 0 => {
                        let _ = hi;
                        CachedContext {
                            present: false,
                            did: 0,
                            table: 0,
                            levels: 0,
                        }
                    }
                    Some((lo, hi)) => CachedContext {
                        present: true,
                        did: (hi >> 8) as u16,
                        table: lo & ADDR,
                        levels: (hi & 7) as u8 + 2,
                    },
                };
                if context.present || s.cm() {
                    s.context_cache.insert(rid, context);
                }
                context
            }
        };
        if !context.present {
            return Err(2);
        }
        let width = (12 + 9 * u32::from(context.levels)).min(s.mgaw());
        if iova >> width != 0 {
            return Err(4);
        }
        let key = (context.did, iova >> 12);
        let entry = match s.iotlb.get(&key) {
            Some(&cached) => cached,
            None => {
                let walked = walk_table(&mem, context.table, context.levels, iova & !0xfff);
                if walked.is_some() || s.cm() {
                    s.iotlb.insert(key, walked);
                }
                walked
            }
        };
        match entry {
            Some((page, read, can_write)) => {
                if write && !can_write {
                    Err(5)
                } else if !write && !read {
                    Err(6)
                } else {
                    Ok(page | (iova & 0xfff))
                }
            }
            None => Err(if write { 5 } else { 6 }),
        }
    }
}

impl RegisterBlock for FakeVtdUnit {
    fn read32(&self, offset: usize) -> u32 {
        let s = self.state.borrow();
        match offset {
            reg::VER => s.ver,
            reg::GSTS => s.gsts,
            reg::FSTS => s.fsts,
            reg::FECTL => s.fectl,
            reg::ICS => 0,
            reg::GCMD => 0,
            o if o % 8 == 4 => {
                drop(s);
                (self.read_reg64(o - 4) >> 32) as u32
            }
            o => {
                drop(s);
                self.read_reg64(o) as u32
            }
        }
    }

    fn read64(&self, offset: usize) -> u64 {
        self.read_reg64(offset)
    }

    fn write32(&mut self, offset: usize, value: u32) {
        let index = self.state.borrow().index;
        self.mem.borrow_mut().log.push(Event::Reg32 {
            unit: index,
            offset,
            value,
        });
        let (fro, nfr) = {
            let s = self.state.borrow();
            (s.fro(), s.nfr())
        };
        match offset {
            reg::GCMD => self.gcmd(value),
            reg::FSTS => {
                let mut s = self.state.borrow_mut();
                // RW1C: PFO, AFO, APF, IQE, ICE, ITE. PPF is read-only.
                s.fsts &= !(value & 0x7d);
            }
            reg::FECTL => self.state.borrow_mut().fectl = value,
            o if o >= fro && o < fro + 16 * nfr && (o - fro) % 16 == 12 => {
                if value & (1 << 31) != 0 {
                    self.state.borrow_mut().clear_record((o - fro) / 16);
                }
            }
            _ => self
                .state
                .borrow_mut()
                .violations
                .push(format!("32-bit write to {offset:#x}")),
        }
    }

    fn write64(&mut self, offset: usize, value: u64) {
        let index = self.state.borrow().index;
        self.mem.borrow_mut().log.push(Event::Reg64 {
            unit: index,
            offset,
            value,
        });
        let (iro, fro, nfr) = {
            let s = self.state.borrow();
            (s.iro(), s.fro(), s.nfr())
        };
        match offset {
            reg::RTADDR => self.state.borrow_mut().rtaddr = value,
            reg::CCMD => {
                self.state.borrow_mut().ccmd = value;
                if value >> 63 != 0 {
                    self.register_invalidation(offset, value);
                }
            }
            reg::IQA => {
                let mut s = self.state.borrow_mut();
                if s.qi_enabled {
                    s.violations.push("IQA written with QI enabled".into());
                }
                s.iqa = value;
            }
            reg::IRTA => self.state.borrow_mut().irta = value,
            reg::IQT => {
                let process = {
                    let mut s = self.state.borrow_mut();
                    s.iqt = value & 0x7fff0;
                    s.qi_enabled && !s.ignore_iqt && s.fsts & (1 << 4) == 0
                };
                if process {
                    self.process_queue();
                }
            }
            o if o == iro => self.state.borrow_mut().iva = value,
            o if o == iro + 8 => {
                self.state.borrow_mut().iotlb_reg = value;
                if value >> 63 != 0 {
                    self.register_invalidation(offset, value);
                }
            }
            o if o >= fro && o < fro + 16 * nfr && (o - fro) % 16 == 8 => {
                if value >> 63 != 0 {
                    self.state.borrow_mut().clear_record((o - fro) / 16);
                }
            }
            _ => self
                .state
                .borrow_mut()
                .violations
                .push(format!("64-bit write to {offset:#x}")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// A driver on fake units.
// ---------------------------------------------------------------------------------------

pub type Driver = VtdIommu<FakeVtdUnit, SharedMem>;

pub struct Rig {
    pub mem: Rc<RefCell<TestMem>>,
    pub units: Vec<Rc<RefCell<UnitState>>>,
    /// Handles on the same fakes the driver owns (for DMA and fault injection).
    pub fakes: Vec<FakeVtdUnit>,
}

impl Rig {
    /// Fake units with these (CAP, ECAP), not yet handed to a driver.
    pub fn new(variants: &[(u64, u64)]) -> (Self, Vec<UnitSetup<FakeVtdUnit>>) {
        let mem = Rc::new(RefCell::new(TestMem::new()));
        let mut units = Vec::new();
        let mut fakes = Vec::new();
        let mut setups = Vec::new();
        for (index, &(cap, ecap)) in variants.iter().enumerate() {
            let fake = FakeVtdUnit::new(index, cap, ecap, mem.clone());
            units.push(fake.state.clone());
            fakes.push(FakeVtdUnit {
                state: fake.state.clone(),
                mem: mem.clone(),
            });
            setups.push(UnitSetup {
                id: UnitId(index as u16),
                segment: 0,
                registers: fake,
            });
        }
        (Self { mem, units, fakes }, setups)
    }

    pub fn unit(&self, index: usize) -> std::cell::RefMut<'_, UnitState> {
        self.units[index].borrow_mut()
    }

    pub fn descriptors(&self, unit: usize) -> Vec<Desc> {
        self.mem.borrow().descriptors(unit)
    }

    /// Forget the log so far.
    pub fn clear_log(&self) {
        self.mem.borrow_mut().log.clear();
    }

    pub fn violations(&self) -> Vec<String> {
        self.units
            .iter()
            .flat_map(|u| u.borrow().violations.clone())
            .collect()
    }
}

/// A driver on one unit per variant, with these identity regions.
pub fn driver_with(
    variants: &[(u64, u64)],
    regions: Vec<IdentityRegion>,
    config: DriverConfig,
) -> (Rig, Driver) {
    let (rig, setups) = Rig::new(variants);
    let mem = SharedMem(rig.mem.clone());
    let driver = VtdIommu::with_units(setups, regions, mem, config).expect("driver init");
    (rig, driver)
}

pub fn setup(variants: &[(u64, u64)]) -> (Rig, Driver) {
    driver_with(variants, Vec::new(), DriverConfig::default())
}

pub fn qemu() -> (Rig, Driver) {
    setup(&[(QEMU_CAP, QEMU_ECAP)])
}

/// A device at `bus:dev.fn` (segment 0) behind `unit`, with its own requester id and
/// the given aliases.
pub fn device(unit: u16, bus: u8, dev: u8, function: u8, aliases: &[u16]) -> DeviceDma {
    let rid = u16::from(bus) << 8 | u16::from(dev) << 3 | u16::from(function);
    let mut requester_ids = vec![rid];
    requester_ids.extend_from_slice(aliases);
    DeviceDma {
        device: PciAddress::new(0, bus, dev, function),
        unit: UnitId(unit),
        requester_ids,
    }
}

pub fn rid_of(device: &DeviceDma) -> u16 {
    device.requester_ids[0]
}
