// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Guest RAM: memfd-backed, shared mappings, laid out around the 32-bit MMIO gap.
//!
//! RAM starts at guest physical address 0. Below 4 GiB it stops at [`MMIO_GAP_START`]; any rest
//! is placed from 4 GiB up. The memfd backing lets a vhost-user back-end map the same pages.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// Start of the 32-bit MMIO gap (no RAM from here to 4 GiB).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 1 << 32;

/// Errors from allocating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The request does not fit the host.
    #[error("guest memory of {requested_mib} MiB exceeds the host's {host_mib} MiB of RAM")]
    TooLarge {
        /// What was asked.
        requested_mib: u64,
        /// What the host has.
        host_mib: u64,
    },
    /// `memfd_create` failed.
    #[error("memfd_create failed")]
    Memfd(#[source] std::io::Error),
    /// Sizing the memfd failed.
    #[error("cannot size guest memory file to {0} bytes")]
    Truncate(u64, #[source] std::io::Error),
    /// Mapping the regions failed.
    #[error("cannot map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    /// The size does not fit this host's address types.
    #[error("guest memory size overflows")]
    Overflow,
}

/// The RAM regions `(start, size)` for `size_bytes` of guest memory.
pub fn ram_regions(size_bytes: u64) -> Vec<(GuestAddress, u64)> {
    if size_bytes <= MMIO_GAP_START {
        vec![(GuestAddress(0), size_bytes)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), size_bytes - MMIO_GAP_START),
        ]
    }
}

/// Total RAM of the host in bytes (from `sysinfo(2)`).
fn host_ram_bytes() -> Option<u64> {
    // SAFETY: sysinfo only writes into the zeroed struct we pass, which lives for the call.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    info.totalram.checked_mul(u64::from(info.mem_unit))
}

/// Allocates `mib` MiB of guest RAM backed by one memfd.
///
/// Refuses sizes larger than the host's RAM with a clear error (a memfd mapping would otherwise
/// succeed and fail only when the guest touches the pages).
pub fn allocate(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let size = mib.checked_mul(1 << 20).ok_or(MemoryError::Overflow)?;
    if let Some(host) = host_ram_bytes() {
        if size > host {
            return Err(MemoryError::TooLarge {
                requested_mib: mib,
                host_mib: host >> 20,
            });
        }
    }
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"vmrun-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create, is valid and owned by nobody else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(size)
        .map_err(|e| MemoryError::Truncate(size, e))?;
    let file = std::sync::Arc::new(file);
    let mut ranges = Vec::new();
    let mut offset = 0u64;
    for (start, len) in ram_regions(size) {
        let len_usize = usize::try_from(len).map_err(|_| MemoryError::Overflow)?;
        ranges.push((
            start,
            len_usize,
            Some(FileOffset::from_arc(file.clone(), offset)),
        ));
        offset = offset.checked_add(len).ok_or(MemoryError::Overflow)?;
    }
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn regions_split_around_the_gap() {
        assert_eq!(ram_regions(1 << 30), vec![(GuestAddress(0), 1 << 30)]);
        let r = ram_regions(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(r[1], (GuestAddress(1 << 32), (4 << 30) - MMIO_GAP_START));
    }

    #[test]
    fn allocate_is_usable_and_shared() {
        let mem = allocate(16).unwrap();
        assert_eq!(mem.num_regions(), 1);
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        let region = mem.iter().next().unwrap();
        assert!(vm_memory::GuestMemoryRegion::file_offset(region).is_some());
    }

    #[test]
    fn allocate_refuses_more_than_the_host_has() {
        let err = allocate(super::super::config::MAX_MEMORY_MIB).unwrap_err();
        assert!(matches!(err, MemoryError::TooLarge { .. }), "{err}");
    }
}
