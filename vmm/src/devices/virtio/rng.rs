// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! virtio-rng (virtio 1.2 §5.4): one queue of device-writable buffers filled from the host's
//! `getrandom(2)`.

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::QueueT;
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

use super::queue_util::{add_used, notify_if_needed};
use super::{ActivateError, ActiveState, SingleQueue, VirtioDevice, TYPE_RNG, VIRTIO_F_VERSION_1};
use crate::metrics::{Counter, MetricsSource};
use crate::warn_ratelimited;

/// Queue size.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes served per request.
pub const MAX_REQUEST: usize = 64 * 1024;

/// rng counters.
#[derive(Debug, Default)]
pub struct RngMetrics {
    /// Requests served.
    pub requests: Counter,
    /// Bytes given to the guest.
    pub bytes: Counter,
    /// Malformed requests.
    pub invalid: Counter,
    /// Host entropy failures.
    pub host_errors: Counter,
}

impl MetricsSource for RngMetrics {
    fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests.get(),
            "bytes": self.bytes.get(),
            "invalid": self.invalid.get(),
            "host_errors": self.host_errors.get(),
        })
    }
}

/// The entropy device.
pub struct Rng {
    evts: Vec<EventFd>,
    active: Option<SingleQueue>,
    metrics: Arc<RngMetrics>,
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rng")
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into the buffer we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            filled += usize::try_from(n).unwrap_or(0);
        }
    }
    Ok(())
}

impl Rng {
    /// A new rng device.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evts: vec![EventFd::new(libc::EFD_NONBLOCK)?],
            active: None,
            metrics: Arc::new(RngMetrics::default()),
        })
    }

    /// The counters.
    pub fn metrics(&self) -> Arc<RngMetrics> {
        self.metrics.clone()
    }

    /// Serves every available request.
    pub fn process_queue(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut served = false;
        while let Some(chain) = a.queue.pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            let mut written: u32 = 0;
            for desc in chain {
                if !desc.is_write_only() {
                    self.metrics.invalid.inc();
                    warn_ratelimited!("rng: device-readable descriptor in request");
                    continue;
                }
                let len = usize::try_from(desc.len())
                    .unwrap_or(usize::MAX)
                    .min(MAX_REQUEST.saturating_sub(written as usize));
                if len == 0 {
                    continue;
                }
                let mut buf = vec![0u8; len];
                if getrandom(&mut buf).is_err() {
                    self.metrics.host_errors.inc();
                    break;
                }
                if a.mem.write_slice(&buf, desc.addr()).is_err() {
                    self.metrics.invalid.inc();
                    warn_ratelimited!("rng: buffer outside guest memory");
                    break;
                }
                written = written.saturating_add(u32::try_from(len).unwrap_or(0));
            }
            self.metrics.requests.inc();
            self.metrics.bytes.add(u64::from(written));
            add_used(&mut a.queue, &a.mem, head, written);
            served = true;
        }
        if served {
            notify_if_needed(&mut a.queue, &a.mem, &a.interrupt);
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.evts
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, state: ActiveState) -> Result<(), ActivateError> {
        self.active = Some(state.into_single_queue()?);
        // Requests may have been queued before DRIVER_OK: let the event loop look (device work
        // never runs on the vCPU thread that wrote DRIVER_OK).
        let _ = self.evts[0].write(1);
        Ok(())
    }
    fn queue_progress(&self) -> Option<Vec<(u16, u16)>> {
        self.active
            .as_ref()
            .map(|a| vec![(a.queue.next_avail(), a.queue.next_used())])
    }
    fn reset(&mut self) {
        self.active = None;
    }
}

impl MutEventSubscriber for Rng {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evts[0].read();
        self.process_queue();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.evts[0], 0, EventSet::IN)) {
            log::error!("rng: cannot watch the queue event: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::queue_util::fixture::*;
    use super::super::Interrupt;
    use super::*;
    use crate::devices::irq::IrqLine;
    use virtio_queue::Queue;
    use vm_memory::GuestAddress;
    use vm_memory::GuestMemoryMmap;

    fn activate(rng: &mut Rng, mem: &GuestMemoryMmap, q: Queue) -> Interrupt {
        let interrupt = Interrupt::new(IrqLine::new(5).unwrap());
        rng.activate(ActiveState {
            mem: mem.clone(),
            queues: vec![q],
            acked_features: VIRTIO_F_VERSION_1,
            interrupt: interrupt.clone(),
        })
        .unwrap();
        rng.process_queue();
        interrupt
    }

    #[test]
    fn fills_writable_buffers_and_interrupts() {
        let mem = memory();
        let m = mock(&mem, 0);
        m.add_desc_chains(
            &chain(&[(0x10_0000, 64, WRITE), (0x10_1000, 32, WRITE)], 0),
            0,
        )
        .unwrap();
        let mut rng = Rng::new().unwrap();
        let q = queue(&m);
        let i = activate(&mut rng, &mem, q);
        let a = rng.active.as_ref().unwrap();
        assert_eq!(used_idx(&mem, &a.queue), 1);
        assert_eq!(used(&mem, &a.queue, 0), (0, 96));
        let mut buf = [0u8; 64];
        mem.read_slice(&mut buf, GuestAddress(0x10_0000)).unwrap();
        assert_ne!(buf, [0u8; 64]);
        assert_eq!(i.status() & 1, 1);
        assert_eq!(rng.metrics.bytes.get(), 96);
    }

    #[test]
    fn hostile_buffers_fail_only_the_request() {
        let mem = memory();
        let m = mock(&mem, 0);
        // Outside guest memory, then a readable descriptor, then a good request.
        m.add_desc_chains(&chain(&[(0xffff_0000, 64, WRITE)], 0), 0)
            .unwrap();
        m.add_desc_chains(&chain(&[(0x10_0000, 8, 0)], 1), 1)
            .unwrap();
        m.add_desc_chains(&chain(&[(0x10_0000, 8, WRITE)], 2), 2)
            .unwrap();
        let mut rng = Rng::new().unwrap();
        let q = queue(&m);
        activate(&mut rng, &mem, q);
        let a = rng.active.as_ref().unwrap();
        assert_eq!(used_idx(&mem, &a.queue), 3);
        assert_eq!(used(&mem, &a.queue, 0).1, 0);
        assert_eq!(used(&mem, &a.queue, 1).1, 0);
        assert_eq!(used(&mem, &a.queue, 2), (2, 8));
        assert_eq!(rng.metrics.invalid.get(), 2);
    }
}

/// Bounded random-input test: random descriptor chains never panic virtio-rng.
#[cfg(test)]
mod fuzz_tests {
    use super::super::queue_util::fixture::*;
    use super::*;
    use crate::devices::irq::IrqLine;
    use crate::devices::virtio::Interrupt;

    #[test]
    fn fuzz_rng_random_chains() {
        let mut dev = Rng::new().unwrap();
        let mem = memory();
        let m = mock(&mem, 0);
        let q = queue(&m);
        dev.activate(ActiveState {
            mem: mem.clone(),
            queues: vec![queue(&m)],
            acked_features: VIRTIO_F_VERSION_1,
            interrupt: Interrupt::new(IrqLine::new(5).unwrap()),
        })
        .unwrap();
        let mut f = Fuzz::new(0x4e6);
        let mut published = 0u16;
        let mut uc_published = UsedCheck::default();
        let iters = Fuzz::iters(20_000);
        for _ in 0..iters {
            random_chain(&mem, &q, &mut f, &mut published);
            uc_published.published_one();
            if f.below(3) == 0 {
                dev.process_queue();
                uc_published.check(dev.active.as_ref().unwrap().queue.next_used());
            }
        }
        eprintln!("fuzz_rng_random_chains: {iters} chains");
    }
}
