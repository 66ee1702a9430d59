//! Address-range helpers every vendor's driver shares.

use alloc::vec::Vec;

use crate::IommuError;

/// The IOMMU page size every mapping is aligned to.
pub const PAGE: u64 = 4096;

/// `whole` minus the `holes` (all `[start, end)`), as sorted, disjoint pieces.
pub fn subtract(whole: (u64, u64), holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut holes: Vec<(u64, u64)> = holes.to_vec();
    holes.sort_unstable();
    let mut pieces = Vec::new();
    let mut cursor = whole.0;
    for (start, end) in holes {
        if end <= cursor || start >= whole.1 {
            continue;
        }
        if start > cursor {
            pieces.push((cursor, start));
        }
        cursor = cursor.max(end);
    }
    if cursor < whole.1 {
        pieces.push((cursor, whole.1));
    }
    pieces
}

/// The checks every map/unmap shares: page-aligned, non-empty, not wrapping. Returns the
/// IOVA range's end.
pub fn check_map_args(iova: u64, paddr: u64, size: u64) -> Result<u64, IommuError> {
    if size == 0 || (iova | paddr | size) % PAGE != 0 {
        return Err(IommuError::Misaligned);
    }
    paddr.checked_add(size).ok_or(IommuError::Wraps)?;
    iova.checked_add(size).ok_or(IommuError::Wraps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtract_cuts_holes_in_any_order() {
        let whole = (0, 0x1_0000_0000);
        let holes = [
            (0xfee0_0000, 0xfef0_0000),
            (0x1000, 0x2000),
            (0x1800, 0x3000),
        ];
        assert_eq!(
            subtract(whole, &holes),
            vec![
                (0, 0x1000),
                (0x3000, 0xfee0_0000),
                (0xfef0_0000, 0x1_0000_0000)
            ]
        );
        assert_eq!(subtract((0, 0x1000), &[(0, 0x1000)]), vec![]);
        assert_eq!(
            subtract((0x1000, 0x2000), &[(0x3000, 0x4000)]),
            vec![(0x1000, 0x2000)]
        );
    }

    #[test]
    fn map_arguments() {
        assert_eq!(check_map_args(0x1000, 0x2000, 0x1000), Ok(0x2000));
        assert_eq!(
            check_map_args(0x1000, 0x2000, 0),
            Err(IommuError::Misaligned)
        );
        assert_eq!(
            check_map_args(0x1001, 0x2000, 0x1000),
            Err(IommuError::Misaligned)
        );
        assert_eq!(check_map_args(!0xfff, 0, 0x2000), Err(IommuError::Wraps));
        assert_eq!(check_map_args(0, !0xfff, 0x2000), Err(IommuError::Wraps));
    }
}
