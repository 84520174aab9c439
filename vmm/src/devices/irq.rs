// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! [`IrqLine`]: an edge-triggered interrupt towards the guest through a KVM irqfd.
//!
//! Devices never hold a `VmFd`; the builder registers the line's eventfd with
//! `KVM_IRQFD` for its GSI. In test-payload mode the eventfd is not attached to the VM (such
//! guests poll), but triggers are still counted so the host side can observe them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// One interrupt line.
#[derive(Debug, Clone)]
pub struct IrqLine {
    evt: Arc<EventFd>,
    gsi: u32,
    triggers: Arc<AtomicU64>,
}

impl IrqLine {
    /// A new line for `gsi` with its own eventfd.
    pub fn new(gsi: u32) -> std::io::Result<Self> {
        Ok(Self {
            evt: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
            gsi,
            triggers: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The eventfd to register with `KVM_IRQFD`.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// The GSI (IOAPIC pin) this line drives.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// How many times the line fired.
    pub fn trigger_count(&self) -> u64 {
        self.triggers.load(Ordering::Relaxed)
    }

    /// Raises the interrupt (an edge).
    pub fn trigger(&self) -> std::io::Result<()> {
        self.triggers.fetch_add(1, Ordering::Relaxed);
        self.evt.write(1)
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        IrqLine::trigger(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_writes_the_eventfd_and_counts() {
        let l = IrqLine::new(5).unwrap();
        l.trigger().unwrap();
        l.clone().trigger().unwrap();
        assert_eq!(l.eventfd().read().unwrap(), 2);
        assert_eq!(l.trigger_count(), 2);
        assert_eq!(l.gsi(), 5);
    }
}
