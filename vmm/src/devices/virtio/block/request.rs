// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! One virtio-blk request: header (type, sector), data, status byte (virtio 1.2 §5.2.6).
//!
//! Everything here is guest input: the chain may be short, point outside guest memory, ask for
//! sectors past the end of the disk or for more data than [`MAX_DATA`]. A chain without room
//! for the status byte is malformed (used length 0); any other bad request completes with
//! `VIRTIO_BLK_S_IOERR` or `VIRTIO_BLK_S_UNSUPP`.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;

/// Read.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Flush.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Get device id.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// I/O error.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Unsupported request.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// Sector size.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the device id.
pub const ID_LEN: usize = 20;
/// Largest data transfer per request (bounds the bounce buffer).
pub const MAX_DATA: usize = 16 << 20;

/// Why a chain could not be processed at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// A descriptor is outside guest memory or the chain is otherwise invalid.
    #[error("invalid descriptor chain")]
    InvalidChain,
    /// Fewer than 16 readable header bytes.
    #[error("request header too short")]
    ShortHeader,
    /// No writable byte for the status.
    #[error("no room for the status byte")]
    NoStatus,
}

/// The request kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// `VIRTIO_BLK_T_IN`.
    In,
    /// `VIRTIO_BLK_T_OUT`.
    Out,
    /// `VIRTIO_BLK_T_FLUSH`.
    Flush,
    /// `VIRTIO_BLK_T_GET_ID`.
    GetId,
    /// Anything else.
    Unsupported(u32),
}

/// The parsed 16-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// Kind.
    pub kind: RequestType,
    /// Starting sector.
    pub sector: u64,
}

impl RequestHeader {
    /// Parses `le32 type; le32 reserved; le64 sector`.
    pub fn parse(b: &[u8; 16]) -> Self {
        let t = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let sector = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
        let kind = match t {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            other => RequestType::Unsupported(other),
        };
        Self { kind, sector }
    }
}

/// The disk a request runs against.
#[derive(Debug)]
pub struct Disk {
    /// Backing file.
    pub file: std::fs::File,
    /// Size in bytes (a multiple of the sector size).
    pub capacity: u64,
    /// Refuse writes.
    pub read_only: bool,
    /// `GET_ID` answer, NUL-padded.
    pub id: [u8; ID_LEN],
}

/// Outcome of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The request's kind.
    pub kind: RequestType,
    /// Status byte written.
    pub status: u8,
    /// Bytes written to device-writable descriptors (data + status).
    pub used_len: u32,
    /// Data bytes moved.
    pub data_len: u64,
}

/// Checks that `len` bytes at `sector` are sector-aligned in length, not too large and inside
/// the disk.
pub fn check_range(sector: u64, len: usize, capacity: u64) -> Option<u64> {
    let len64 = u64::try_from(len).ok()?;
    if len > MAX_DATA || len64 % SECTOR_SIZE != 0 {
        return None;
    }
    let start = sector.checked_mul(SECTOR_SIZE)?;
    let end = start.checked_add(len64)?;
    (end <= capacity).then_some(start)
}

fn execute(
    disk: &Disk,
    hdr: RequestHeader,
    reader: &mut Reader<'_>,
    data: &mut Writer<'_>,
) -> (u8, u32, u64) {
    match hdr.kind {
        RequestType::In => {
            let len = data.available_bytes();
            let Some(offset) = check_range(hdr.sector, len, disk.capacity) else {
                return (VIRTIO_BLK_S_IOERR, 0, 0);
            };
            let mut buf = vec![0u8; len];
            if disk.file.read_exact_at(&mut buf, offset).is_err() || data.write_all(&buf).is_err() {
                return (VIRTIO_BLK_S_IOERR, 0, 0);
            }
            let n = u32::try_from(len).unwrap_or(0);
            (VIRTIO_BLK_S_OK, n, u64::from(n))
        }
        RequestType::Out => {
            if disk.read_only {
                return (VIRTIO_BLK_S_IOERR, 0, 0);
            }
            let len = reader.available_bytes();
            let Some(offset) = check_range(hdr.sector, len, disk.capacity) else {
                return (VIRTIO_BLK_S_IOERR, 0, 0);
            };
            let mut buf = vec![0u8; len];
            if reader.read_exact(&mut buf).is_err() || disk.file.write_all_at(&buf, offset).is_err()
            {
                return (VIRTIO_BLK_S_IOERR, 0, 0);
            }
            (VIRTIO_BLK_S_OK, 0, u64::try_from(len).unwrap_or(0))
        }
        RequestType::Flush => {
            if disk.read_only || disk.file.sync_data().is_ok() {
                (VIRTIO_BLK_S_OK, 0, 0)
            } else {
                (VIRTIO_BLK_S_IOERR, 0, 0)
            }
        }
        RequestType::GetId => {
            let n = data.available_bytes().min(ID_LEN);
            if data.write_all(&disk.id[..n]).is_err() {
                return (VIRTIO_BLK_S_IOERR, 0, 0);
            }
            (VIRTIO_BLK_S_OK, u32::try_from(n).unwrap_or(0), 0)
        }
        RequestType::Unsupported(_) => (VIRTIO_BLK_S_UNSUPP, 0, 0),
    }
}

/// Parses and executes the request in `chain`, writing data and the status byte to guest
/// memory.
pub fn process(
    disk: &Disk,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<Completion, RequestError> {
    let mut reader = Reader::new(mem, chain.clone()).map_err(|_| RequestError::InvalidChain)?;
    let mut writer = Writer::new(mem, chain).map_err(|_| RequestError::InvalidChain)?;
    let mut hdr = [0u8; 16];
    reader
        .read_exact(&mut hdr)
        .map_err(|_| RequestError::ShortHeader)?;
    let hdr = RequestHeader::parse(&hdr);
    let avail = writer.available_bytes();
    if avail == 0 {
        return Err(RequestError::NoStatus);
    }
    let mut status_writer = writer
        .split_at(avail - 1)
        .map_err(|_| RequestError::NoStatus)?;
    let (status, data_used, data_len) = execute(disk, hdr, &mut reader, &mut writer);
    status_writer
        .write_all(&[status])
        .map_err(|_| RequestError::NoStatus)?;
    Ok(Completion {
        kind: hdr.kind,
        status,
        used_len: data_used.saturating_add(1),
        data_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parses() {
        let mut b = [0u8; 16];
        b[0] = 1;
        b[8..16].copy_from_slice(&7u64.to_le_bytes());
        assert_eq!(
            RequestHeader::parse(&b),
            RequestHeader {
                kind: RequestType::Out,
                sector: 7
            }
        );
        b[0] = 0x42;
        assert_eq!(
            RequestHeader::parse(&b).kind,
            RequestType::Unsupported(0x42)
        );
    }

    #[test]
    fn range_checks() {
        assert_eq!(check_range(0, 512, 1024), Some(0));
        assert_eq!(check_range(1, 512, 1024), Some(512));
        assert_eq!(check_range(2, 512, 1024), None);
        assert_eq!(check_range(0, 100, 1024), None);
        assert_eq!(check_range(u64::MAX, 512, u64::MAX), None);
        assert_eq!(check_range(0, MAX_DATA + 512, u64::MAX), None);
        assert_eq!(check_range(0, 0, 0), Some(0));
    }
}
