//! The legacy 8259 PICs. SeaBIOS leaves them unmasked with the PIT on IRQ 0, which would
//! arrive as vector 8 and look like a double fault once interrupts are on: mask both.

use x86_64::instructions::port::Port;

pub fn mask_all() {
    let mut master: Port<u8> = Port::new(0x21);
    let mut slave: Port<u8> = Port::new(0xA1);
    // SAFETY: writing the interrupt mask registers of the 8259s only masks IRQ lines.
    unsafe {
        master.write(0xFF);
        slave.write(0xFF);
    }
}
