// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The exit-status port at 0xf4: a one-byte `out` of value v makes the VMM exit with status v.
//!
//! Like QEMU's `isa-debug-exit`, except that the status is v itself (QEMU exits with
//! `(v << 1) | 1`). Test programs write 0 (pass) or 1 (fail); the agent writes 0x20 before a
//! clean shutdown.

use crate::devices::bus::{BusAction, BusDevice};

/// The exit-status port device.
#[derive(Debug, Default)]
pub struct ExitPort;

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
        match (offset, data.first()) {
            (0, Some(v)) => BusAction::Exit(*v),
            _ => BusAction::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_requests_exit_with_the_value() {
        let mut p = ExitPort;
        assert_eq!(p.write(0, &[0x20]), BusAction::Exit(0x20));
        assert_eq!(p.write(0, &[1, 0, 0, 0]), BusAction::Exit(1));
        assert_eq!(p.write(0, &[]), BusAction::None);
        let mut d = [9u8];
        p.read(0, &mut d);
        assert_eq!(d, [0]);
    }
}
