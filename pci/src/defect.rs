//! Things found wrong in config space.
//!
//! Enumeration never gives up on a whole bus because one function is odd: it skips
//! the bad part, records what it skipped here, and carries on. Keeping the reason
//! (instead of a silent skip) lets the boot log and tests tell a device that has no
//! MSI from one whose capability list was broken before reaching it.

/// One problem found while decoding a function's config space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfigDefect {
    /// A classic capability pointer pointed into the standard header (below 0x40).
    CapabilityPointerIntoHeader {
        /// The offending pointer value (low two bits already cleared).
        pointer: u8,
    },
    /// The classic capability list came back to a capability already seen.
    CapabilityLoop {
        /// The pointer that would have been visited twice.
        pointer: u8,
    },
    /// An extended capability pointer was below 0x100 or not dword aligned.
    ExtendedPointerInvalid {
        /// The offending 12-bit pointer.
        pointer: u16,
    },
    /// The extended capability list came back to a capability already seen.
    ExtendedCapabilityLoop {
        /// The pointer that would have been visited twice.
        pointer: u16,
    },
    /// A known capability's registers would run past the end of config space
    /// (classic ones past 0x100, extended ones past 0x1000); it was not decoded.
    CapabilityTruncated {
        /// Capability id (classic ids are zero-extended).
        id: u16,
        /// Where the capability starts.
        offset: u16,
    },
    /// An MSI-X table or PBA names BAR 6 or 7, which do not exist.
    MsixInvalidBir {
        /// The BAR indicator register value.
        bir: u8,
    },
    /// A 64-bit memory BAR sits in the last BAR slot, so it has no upper half.
    Bar64InLastSlot {
        /// BAR index.
        index: u8,
    },
    /// A memory BAR has the reserved type 0b11.
    BarReservedType {
        /// BAR index.
        index: u8,
    },
    /// A bridge's secondary bus is not above the bus the bridge sits on (it would
    /// point back to itself or to an ancestor).
    BridgeSecondaryNotBelow {
        /// The bus the bridge is on.
        bus: u8,
        /// The secondary bus it claims.
        secondary: u8,
    },
    /// A bridge's secondary bus is above its subordinate bus.
    BridgeSecondaryAboveSubordinate {
        /// The secondary bus.
        secondary: u8,
        /// The subordinate bus.
        subordinate: u8,
    },
    /// A bridge's secondary bus is outside the ECAM window being walked.
    BridgeSecondaryOutsideWindow {
        /// The secondary bus.
        secondary: u8,
    },
    /// A bridge's secondary bus was already reached through another bridge.
    BridgeSecondaryAlreadyScanned {
        /// The secondary bus.
        secondary: u8,
    },
    /// The bridge is nested [`crate::MAX_BRIDGE_DEPTH`] deep; its bus was not
    /// walked as its child (it is still scanned as an extra root bus).
    BridgeTooDeep {
        /// The secondary bus that was not followed.
        secondary: u8,
    },
}
