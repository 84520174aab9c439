// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The 8250/16550 UART on COM1 (vm-superio `Serial`), its output sink and its stdin feeder.
//!
//! Output is written unbuffered to stdout, a file or nowhere. Input comes from the event loop
//! ([`SerialInput`]) when stdin is a TTY, or a pipe if explicitly enabled; a TTY is put into
//! raw mode for the VM's lifetime.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use crate::devices::bus::{lock, BusAction, BusDevice};
use crate::devices::irq::IrqLine;

/// Where serial output goes.
#[derive(Debug)]
pub enum SerialSink {
    /// Discard.
    Sink,
    /// A file or a duplicate of stdout; written unbuffered.
    File(File),
}

impl SerialSink {
    /// A sink on a duplicate of the process's stdout.
    pub fn stdout() -> std::io::Result<Self> {
        // SAFETY: fd 1 is open for the process's lifetime; we only borrow it to duplicate it.
        let fd = unsafe { BorrowedFd::borrow_raw(1) };
        Ok(Self::File(File::from(fd.try_clone_to_owned()?)))
    }
}

impl Write for SerialSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Sink => Ok(buf.len()),
            Self::File(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Sink => Ok(()),
            Self::File(f) => f.flush(),
        }
    }
}

/// Serial counters.
#[derive(Debug, Default)]
pub struct SerialMetrics {
    /// Bytes the guest wrote.
    pub tx_bytes: AtomicU64,
    /// Bytes the guest wrote that could not be delivered.
    pub tx_lost: AtomicU64,
    /// Bytes fed to the guest.
    pub rx_bytes: AtomicU64,
    /// Input bytes dropped because the FIFO was full.
    pub rx_dropped: AtomicU64,
}

/// COM1 on the PIO bus.
#[derive(Debug)]
pub struct SerialDevice {
    serial: Serial<IrqLine, NoEvents, SerialSink>,
    metrics: Arc<SerialMetrics>,
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `sink`.
    pub fn new(irq: IrqLine, sink: SerialSink) -> Self {
        Self {
            serial: Serial::new(irq, sink),
            metrics: Arc::new(SerialMetrics::default()),
        }
    }

    /// The counters.
    pub fn metrics(&self) -> Arc<SerialMetrics> {
        self.metrics.clone()
    }

    /// Queues input bytes for the guest; returns how many were accepted.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.serial.fifo_capacity().min(bytes.len());
        let accepted = self.serial.enqueue_raw_bytes(&bytes[..room]).unwrap_or(0);
        self.metrics
            .rx_bytes
            .fetch_add(accepted as u64, Ordering::Relaxed);
        self.metrics
            .rx_dropped
            .fetch_add((bytes.len() - accepted) as u64, Ordering::Relaxed);
        accepted
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Ok(off) = u8::try_from(offset) else {
            return;
        };
        if let Some(b) = data.first_mut() {
            *b = self.serial.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
        let (Ok(off), Some(v)) = (u8::try_from(offset), data.first()) else {
            return BusAction::None;
        };
        if off == 0 {
            self.metrics.tx_bytes.fetch_add(1, Ordering::Relaxed);
        }
        if self.serial.write(off, *v).is_err() {
            self.metrics.tx_lost.fetch_add(1, Ordering::Relaxed);
        }
        BusAction::None
    }
}

/// Saved terminal state, restored on drop.
#[derive(Debug)]
pub struct RawTerminal {
    fd: i32,
    saved: libc::termios,
}

impl RawTerminal {
    /// Puts the TTY on `fd` into raw mode (no echo, no line editing, no signals).
    pub fn enable(fd: i32) -> std::io::Result<Self> {
        // SAFETY: tcgetattr writes into the zeroed termios we own.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `t` is a valid termios; an invalid fd is reported as an error.
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let saved = t;
        // SAFETY: cfmakeraw only modifies the struct it is given.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: `t` is a valid termios derived from the current one.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { fd, saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enable` on the same fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Event-loop subscriber feeding stdin into the UART.
#[derive(Debug)]
pub struct SerialInput {
    stdin: File,
    serial: Arc<Mutex<SerialDevice>>,
    open: bool,
}

impl SerialInput {
    /// Reads from a duplicate of fd 0.
    pub fn new(serial: Arc<Mutex<SerialDevice>>) -> std::io::Result<Self> {
        // SAFETY: fd 0 is the process's stdin; duplicated at once into an owned fd.
        let fd = unsafe { libc::dup(0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by dup(2) and is owned by nobody else.
        let stdin = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(Self {
            stdin,
            serial,
            open: true,
        })
    }
}

impl SerialInput {
    fn close(&mut self, ops: &mut EventOps) {
        if self.open {
            self.open = false;
            let _ = ops.remove(Events::new(&self.stdin, EventSet::IN));
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn process(&mut self, _events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        match self.stdin.read(&mut buf) {
            Ok(0) => self.close(ops),
            Ok(n) => {
                lock(&self.serial).enqueue_input(&buf[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) => {}
            Err(_) => self.close(ops),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.stdin, EventSet::IN)) {
            log::warn!("cannot watch stdin for serial input: {e}");
        }
    }
}

/// True when fd 0 is a terminal.
pub fn stdin_is_tty() -> bool {
    // SAFETY: isatty only inspects the fd.
    unsafe { libc::isatty(std::io::stdin().as_raw_fd()) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_reach_the_sink_and_lsr_reads() {
        let path = std::env::temp_dir().join(format!("vmrun-serial-{}", std::process::id()));
        let f = File::create(&path).unwrap();
        let irq = IrqLine::new(4).unwrap();
        let mut s = SerialDevice::new(irq.clone(), SerialSink::File(f));
        for b in b"hi\n" {
            assert_eq!(s.write(0, &[*b]), BusAction::None);
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"hi\n");
        std::fs::remove_file(&path).unwrap();
        // LSR (offset 5): transmitter empty bits set.
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60);
        assert_eq!(s.metrics().tx_bytes.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn input_is_queued_and_read_back() {
        let irq = IrqLine::new(4).unwrap();
        let mut s = SerialDevice::new(irq.clone(), SerialSink::Sink);
        s.write(1, &[0x01]); // IER: received-data interrupt
        assert_eq!(s.enqueue_input(b"ab"), 2);
        assert!(irq.trigger_count() > 0);
        let mut d = [0u8];
        s.read(0, &mut d);
        assert_eq!(d[0], b'a');
        s.read(0, &mut d);
        assert_eq!(d[0], b'b');
    }
}
