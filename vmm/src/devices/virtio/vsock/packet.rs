// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The 44-byte `virtio_vsock_hdr` (virtio 1.2 §5.10.6), little-endian on the wire.

/// Header size.
pub const HDR_SIZE: usize = 44;
/// `VIRTIO_VSOCK_TYPE_STREAM`.
pub const TYPE_STREAM: u16 = 1;
/// Connection request.
pub const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Reset.
pub const OP_RST: u16 = 3;
/// Shutdown (flags say which direction).
pub const OP_SHUTDOWN: u16 = 4;
/// Data.
pub const OP_RW: u16 = 5;
/// Credit update.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Credit request.
pub const OP_CREDIT_REQUEST: u16 = 7;
/// Shutdown flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// Shutdown flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Largest payload accepted in one TX packet (Linux sends at most 64 KiB).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// A vsock packet header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketHeader {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer.
    pub fwd_cnt: u32,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

impl PacketHeader {
    /// Parses a header.
    pub fn parse(b: &[u8; HDR_SIZE]) -> Self {
        Self {
            src_cid: le64(b, 0),
            dst_cid: le64(b, 8),
            src_port: le32(b, 16),
            dst_port: le32(b, 20),
            len: le32(b, 24),
            type_: le16(b, 28),
            op: le16(b, 30),
            flags: le32(b, 32),
            buf_alloc: le32(b, 36),
            fwd_cnt: le32(b, 40),
        }
    }

    /// Serialises the header.
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Parses the host's `CONNECT <port>` line (without the newline); the keyword is
/// case-insensitive, as in Firecracker and Dragonball.
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut words = s.split_ascii_whitespace();
    let kw = words.next()?;
    if !kw.eq_ignore_ascii_case("connect") {
        return None;
    }
    let port = words.next()?.parse().ok()?;
    words.next().is_none().then_some(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1234,
            dst_port: 1024,
            len: 5,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 262_144,
            fwd_cnt: 77,
        };
        let b = h.to_bytes();
        assert_eq!(PacketHeader::parse(&b), h);
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
    }

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"connect 52\r"), Some(52));
        assert_eq!(parse_connect(b"Connect  7"), Some(7));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT x"), None);
        assert_eq!(parse_connect(b"CONNECT 1 2"), None);
        assert_eq!(parse_connect(b"LISTEN 1"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(&[0xff, 0xfe]), None);
    }
}

/// Bounded random-input tests of the packet header and the host's CONNECT line.
#[cfg(test)]
mod fuzz_tests {
    use super::*;
    use crate::devices::virtio::queue_util::fixture::Fuzz;

    #[test]
    fn fuzz_header_round_trips_and_connect_lines() {
        let mut f = Fuzz::new(0x5c0c);
        let iters = Fuzz::iters(100_000);
        for _ in 0..iters {
            let mut b = [0u8; HDR_SIZE];
            for chunk in b.chunks_mut(8) {
                let r = f.next_u64().to_le_bytes();
                chunk.copy_from_slice(&r[..chunk.len()]);
            }
            assert_eq!(PacketHeader::parse(&b).to_bytes(), b);
            let n = usize::try_from(f.below(24)).unwrap_or(0);
            const ALPHABET: &[u8] = b"CONNECTconnect 0123456789 \r\t\xff-+";
            let line: Vec<u8> = (0..n)
                .map(|_| ALPHABET[usize::try_from(f.below(ALPHABET.len() as u64)).unwrap_or(0)])
                .collect();
            if let Some(port) = parse_connect(&line) {
                let s = String::from_utf8_lossy(&line);
                assert!(s.to_ascii_lowercase().starts_with("connect"), "{s:?}");
                assert!(
                    s.contains(&port.to_string()) || port == 0,
                    "{s:?} -> {port}"
                );
            }
            let port = u32::try_from(f.next_u64() >> 32).unwrap_or(0);
            assert_eq!(
                parse_connect(format!("CONNECT {port}").as_bytes()),
                Some(port)
            );
        }
        eprintln!("fuzz_header_round_trips_and_connect_lines: {iters} inputs");
    }
}
