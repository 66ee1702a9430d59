//! Per-guest handle tables: the hypervisor's file-descriptor tables.
//!
//! A handle is `(generation << 16) | (slot + 1)`. The slot number makes lookups a plain
//! index into the caller's own table, so one guest's handles can only ever reach its
//! own objects. The generation makes a handle name one object only:
//!
//! - a stale handle (closed, its slot perhaps reused) fails with `EBADF` rather than
//!   reaching the slot's new object, because the new object got a new generation;
//! - another guest's handle fails with `EBADF` too, rather than naming the caller's own
//!   object in the same slot: generations come from one counter shared by every table
//!   ([`Generations`]), so no two handles ever issued have the same value, in any guest.
//!   (With a count per slot starting at 1, every guest's first handle would be
//!   `0x10001`, and the ABI promises `EBADF` for another guest's handle.)
//!
//! Handles are always positive `i64` values (the ABI returns them in RAX next to negative
//! errnos): slots are below 2^16 and generations in `1..2^47`.

use alloc::vec::Vec;

use sluice_abi::Errno;

/// The most handles one guest may hold at once; one more is `ENOSPC`.
///
/// Small on purpose: a guest needs a container, a few groups and their devices, and a
/// bound keeps a hostile guest from growing the hypervisor's heap without limit.
pub const MAX_HANDLES: usize = 64;

/// Bits of a handle that carry the slot number (plus one).
const SLOT_BITS: u32 = 16;
/// Generations stay below this so that `generation << 16` stays below 2^63.
const GENERATION_LIMIT: u64 = 1 << (63 - SLOT_BITS);

/// The source of generations: one counter for every guest's table, so a handle value
/// is never issued twice (until 2^47 handles have been issued).
#[derive(Clone, Debug)]
pub struct Generations(u64);

impl Default for Generations {
    fn default() -> Self {
        Self(1)
    }
}

impl Generations {
    fn take(&mut self) -> u64 {
        let generation = self.0;
        // Wrapping back to 1 after 2^47 handles: staying a positive i64 matters more
        // than uniqueness over that many.
        self.0 = match generation + 1 {
            g if g >= GENERATION_LIMIT => 1,
            g => g,
        };
        generation
    }
}

/// A container, by creation order (never reused, so a log line names one container).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerId(pub u64);

/// A group, by its position in [`super::Vfio`]'s group list (sorted by group id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupIndex(pub usize);

/// An open device, by opening order (never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub u64);

/// What a handle names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    Container(ContainerId),
    Group(GroupIndex),
    Device(DeviceId),
}

#[derive(Clone, Debug)]
struct Slot {
    /// The generation of the handle this slot holds (or held last).
    generation: u64,
    object: Option<Object>,
}

/// One guest's handles.
#[derive(Clone, Debug, Default)]
pub struct HandleTable {
    slots: Vec<Slot>,
}

impl HandleTable {
    /// Store `object` in a free slot under a fresh generation and return its handle;
    /// `ENOSPC` when the guest already holds [`MAX_HANDLES`] handles (nothing changes
    /// then).
    pub fn insert(&mut self, object: Object, generations: &mut Generations) -> Result<u64, Errno> {
        let slot = match self.slots.iter().position(|s| s.object.is_none()) {
            Some(free) => free,
            None if self.slots.len() < MAX_HANDLES => {
                self.slots.push(Slot {
                    generation: 0,
                    object: None,
                });
                self.slots.len() - 1
            }
            None => return Err(Errno::ENOSPC),
        };
        let entry = self.slots.get_mut(slot).ok_or(Errno::ENOSPC)?;
        entry.generation = generations.take();
        entry.object = Some(object);
        Ok(encode(entry.generation, slot))
    }

    /// The object a live handle names; `EBADF` for anything else.
    pub fn get(&self, handle: u64) -> Result<Object, Errno> {
        let (generation, slot) = decode(handle).ok_or(Errno::EBADF)?;
        let entry = self.slots.get(slot).ok_or(Errno::EBADF)?;
        match entry.object {
            Some(object) if entry.generation == generation => Ok(object),
            _ => Err(Errno::EBADF),
        }
    }

    /// Close a live handle: the slot is freed, and whatever it holds next gets a new
    /// generation, so the handle is dead for good. Returns what it named.
    pub fn remove(&mut self, handle: u64) -> Result<Object, Errno> {
        let object = self.get(handle)?;
        let (_, slot) = decode(handle).ok_or(Errno::EBADF)?;
        let entry = self.slots.get_mut(slot).ok_or(Errno::EBADF)?;
        entry.object = None;
        Ok(object)
    }

    /// Every live handle with its object, in slot order.
    pub fn live(&self) -> impl Iterator<Item = (u64, Object)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| s.object.map(|o| (encode(s.generation, slot), o)))
    }

    /// How many handles are live.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.object.is_some()).count()
    }
}

fn encode(generation: u64, slot: usize) -> u64 {
    (generation << SLOT_BITS) | (slot as u64 + 1)
}

/// `(generation, slot)` of a handle value, or `None` when it cannot be one.
fn decode(handle: u64) -> Option<(u64, usize)> {
    let low = handle & ((1 << SLOT_BITS) - 1);
    let generation = handle >> SLOT_BITS;
    if low == 0 || generation == 0 || generation >= GENERATION_LIMIT {
        return None;
    }
    Some((generation, (low - 1) as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_positive_and_die_when_closed() {
        let mut g = Generations::default();
        let mut t = HandleTable::default();
        let a = t.insert(Object::Container(ContainerId(7)), &mut g).unwrap();
        assert_eq!(a, (1 << 16) | 1);
        assert!(a as i64 > 0);
        assert_eq!(t.get(a), Ok(Object::Container(ContainerId(7))));
        assert_eq!(t.remove(a), Ok(Object::Container(ContainerId(7))));
        assert_eq!(t.get(a), Err(Errno::EBADF));
        assert_eq!(t.remove(a), Err(Errno::EBADF));
        // The slot is reused with a new generation: the old handle stays dead.
        let b = t.insert(Object::Group(GroupIndex(1)), &mut g).unwrap();
        assert_eq!(b, (2 << 16) | 1);
        assert_eq!(t.get(a), Err(Errno::EBADF));
        assert_eq!(t.get(b), Ok(Object::Group(GroupIndex(1))));
    }

    #[test]
    fn tables_sharing_generations_never_issue_the_same_value() {
        let mut g = Generations::default();
        let (mut t1, mut t2) = (HandleTable::default(), HandleTable::default());
        let a = t1
            .insert(Object::Container(ContainerId(1)), &mut g)
            .unwrap();
        let b = t2
            .insert(Object::Container(ContainerId(2)), &mut g)
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(a & 0xffff, b & 0xffff, "same slot");
        assert_eq!(t1.get(b), Err(Errno::EBADF));
        assert_eq!(t2.get(a), Err(Errno::EBADF));
    }

    #[test]
    fn forged_values_are_ebadf() {
        let mut g = Generations::default();
        let mut t = HandleTable::default();
        let a = t.insert(Object::Device(DeviceId(1)), &mut g).unwrap();
        for forged in [
            0,
            1,
            a + 1,
            a - (1 << 16),
            a + (1 << 16),
            a & 0xffff,
            u64::MAX,
            i64::MAX as u64,
            1 << 63 | a,
            GENERATION_LIMIT << 16 | 1,
        ] {
            assert_eq!(t.get(forged), Err(Errno::EBADF), "{forged:#x}");
        }
    }

    #[test]
    fn the_table_is_bounded() {
        let mut g = Generations::default();
        let mut t = HandleTable::default();
        let handles: Vec<u64> = (0..MAX_HANDLES)
            .map(|i| {
                t.insert(Object::Device(DeviceId(i as u64)), &mut g)
                    .unwrap()
            })
            .collect();
        assert_eq!(
            t.insert(Object::Device(DeviceId(99)), &mut g),
            Err(Errno::ENOSPC)
        );
        assert_eq!(t.len(), MAX_HANDLES);
        t.remove(handles[10]).unwrap();
        let again = t.insert(Object::Device(DeviceId(100)), &mut g).unwrap();
        assert_eq!(again & 0xffff, 11, "the freed slot is reused");
        assert_eq!(
            again >> 16,
            MAX_HANDLES as u64 + 1,
            "ENOSPC used no generation"
        );
        assert_ne!(again, handles[10]);
        assert_eq!(t.live().count(), MAX_HANDLES);
    }

    #[test]
    fn generations_wrap_to_one_and_stay_positive() {
        let mut g = Generations(GENERATION_LIMIT - 1);
        let mut t = HandleTable::default();
        let h = t.insert(Object::Device(DeviceId(0)), &mut g).unwrap();
        assert!((h as i64) > 0);
        assert_eq!(h >> 16, GENERATION_LIMIT - 1);
        t.remove(h).unwrap();
        let h2 = t.insert(Object::Device(DeviceId(0)), &mut g).unwrap();
        assert_eq!(h2, (1 << 16) | 1);
    }
}
