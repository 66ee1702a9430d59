//! Host tests of the VT-d crate: the DMAR tables captured from QEMU 7.2 and 10.0,
//! bindings resolved against fake PCI machines mirroring them, malformed variants made
//! by editing those tables, and random input.

mod bindings;
mod common;
mod corrupt;
mod fixtures;
mod props;
