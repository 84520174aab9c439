// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! A minimal i8042 keyboard controller: enough for Linux's `reboot=k` (command 0xfe on port
//! 0x64 pulses the CPU reset line, which makes the VMM exit with status 0).
//!
//! The status register always reads 0 (input and output buffers empty), so `kb_wait()` in the
//! guest returns at once.

use crate::devices::bus::{BusAction, BusDevice};

/// Offset of the command/status port (0x64) from the device base (0x60).
pub const COMMAND_OFFSET: u64 = 4;
/// "Pulse output line 0" = CPU reset.
pub const CMD_RESET_CPU: u8 = 0xfe;

/// The i8042 device.
#[derive(Debug, Default)]
pub struct I8042 {
    /// Commands seen, for diagnostics.
    commands: u64,
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
        if offset == COMMAND_OFFSET {
            self.commands = self.commands.wrapping_add(1);
            if data.first() == Some(&CMD_RESET_CPU) {
                return BusAction::Reset;
            }
        }
        BusAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_resets_others_do_not() {
        let mut k = I8042::default();
        assert_eq!(k.write(COMMAND_OFFSET, &[0xfe]), BusAction::Reset);
        assert_eq!(k.write(COMMAND_OFFSET, &[0xad]), BusAction::None);
        assert_eq!(k.write(0, &[0xfe]), BusAction::None);
        let mut s = [0xffu8];
        k.read(COMMAND_OFFSET, &mut s);
        assert_eq!(s, [0]);
    }
}
