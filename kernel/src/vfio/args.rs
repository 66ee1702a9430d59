//! Argument structures in guest memory: read them the way the ABI says (argsz first,
//! then at most the structure), write back at most `argsz` bytes.

use sluice_abi::vfio::{MAX_ARGSZ, check_argsz};
use sluice_abi::{Errno, validate_guest_range};

use super::GuestRam;

/// Read an argument structure of `N` bytes whose calls need at least `min` of them.
///
/// Order of checks (each an errno of the ABI's "argument structures" rules): the 4-byte
/// `argsz` must be readable (`EFAULT`); `argsz >= min` (`EINVAL`) and `<= MAX_ARGSZ`
/// (`E2BIG`); all of `[gpa, gpa + argsz)` must be RAM (`EFAULT`). Then the first
/// `min(argsz, N)` bytes are read and the rest of the returned image is zero.
///
/// Returns `argsz` and the image; nothing is written to the guest.
pub fn read_args<const N: usize>(
    mem: &dyn GuestRam,
    gpa: u64,
    min: usize,
) -> Result<(u32, [u8; N]), Errno> {
    let mut head = [0u8; 4];
    mem.read(gpa, &mut head)?;
    let argsz = u32::from_le_bytes(head);
    check_argsz(argsz, min)?;
    let (base, size) = mem.ram();
    validate_guest_range(gpa, u64::from(argsz), base, size, u64::from(MAX_ARGSZ))?;
    let mut image = [0u8; N];
    let n = (argsz as usize).min(N);
    let prefix = image.get_mut(..n).ok_or(Errno::EINVAL)?;
    mem.read(gpa, prefix)?;
    Ok((argsz, image))
}

/// How many bytes of an `N`-byte output structure whose minimum is `min` to write back:
/// the whole structure when `argsz` holds it, else only the minimum — never a field cut
/// in half (the fields past the minimum, `cap_offset` and padding, come whole or not at
/// all, as in Linux).
pub fn out_len(argsz: u32, min: usize, n: usize) -> usize {
    if argsz as usize >= n { n } else { min.min(n) }
}
