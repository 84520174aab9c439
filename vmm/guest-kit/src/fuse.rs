// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! A minimal FUSE client over a virtio-fs request queue (virtio 1.2 §5.11, FUSE protocol 7.31):
//! one request in flight, two descriptors per request (the request, device-readable; the reply,
//! device-writable), completion by polling the used ring. Enough to drive a real `virtiofsd`
//! through INIT, LOOKUP, GETATTR, OPEN/CREATE, READ, WRITE, FSYNC, OPENDIR/READDIR and RELEASE.

use crate::arch::Deadline;
use crate::rawq::{NEXT, RawQueue, WRITE};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// FUSE opcodes used here.
pub mod op {
    /// FUSE_LOOKUP.
    pub const LOOKUP: u32 = 1;
    /// FUSE_GETATTR.
    pub const GETATTR: u32 = 3;
    /// FUSE_OPEN.
    pub const OPEN: u32 = 14;
    /// FUSE_READ.
    pub const READ: u32 = 15;
    /// FUSE_WRITE.
    pub const WRITE: u32 = 16;
    /// FUSE_RELEASE.
    pub const RELEASE: u32 = 18;
    /// FUSE_FSYNC.
    pub const FSYNC: u32 = 20;
    /// FUSE_INIT.
    pub const INIT: u32 = 26;
    /// FUSE_OPENDIR.
    pub const OPENDIR: u32 = 27;
    /// FUSE_READDIR.
    pub const READDIR: u32 = 28;
    /// FUSE_RELEASEDIR.
    pub const RELEASEDIR: u32 = 29;
    /// FUSE_CREATE.
    pub const CREATE: u32 = 35;
}

/// The root directory's node id.
pub const ROOT: u64 = 1;
/// ENOENT.
pub const ENOENT: i32 = 2;
/// Size of `fuse_in_header`.
const IN_HEADER: usize = 40;
/// Size of `fuse_out_header`.
const OUT_HEADER: usize = 16;
/// Largest READ/WRITE payload this client sends or asks for.
pub const MAX_IO: usize = 64 << 10;
/// How long one request may take.
const REQUEST_MS: u64 = 5_000;

/// A failed request: the server's errno or a transport problem.
#[derive(Debug)]
pub enum FuseError {
    /// The server answered with `-errno`.
    Errno(i32),
    /// The queue or the reply was broken.
    Transport(String),
}

impl core::fmt::Display for FuseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Errno(e) => write!(f, "errno {e}"),
            Self::Transport(s) => f.write_str(s),
        }
    }
}

impl From<FuseError> for String {
    fn from(e: FuseError) -> Self {
        format!("{e}")
    }
}

/// The attributes of a node (`fuse_attr`, the fields used here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Mode (type and permission bits).
    pub mode: u32,
}

impl Attr {
    fn parse(b: &[u8]) -> Option<Self> {
        Some(Self {
            ino: u64_at(b, 0)?,
            size: u64_at(b, 8)?,
            mode: u32_at(b, 60)?,
        })
    }

    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.mode & 0o170_000 == 0o100_000
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & 0o170_000 == 0o040_000
    }
}

/// A directory entry from READDIR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number.
    pub ino: u64,
    /// Offset of the next entry.
    pub off: u64,
    /// Name.
    pub name: String,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn short(what: &str, len: usize) -> FuseError {
    FuseError::Transport(format!("{what} reply of {len} bytes is too short"))
}

/// A FUSE session on one request queue.
#[derive(Debug)]
pub struct Fuse {
    q: RawQueue,
    unique: u64,
    req: Vec<u8>,
    resp: Vec<u8>,
    /// `max_write` from the INIT reply.
    pub max_write: u32,
}

impl Fuse {
    /// A session on request queue `q` (not yet initialised: call [`Fuse::init`]).
    pub fn new(q: RawQueue) -> Self {
        Self {
            q,
            unique: 0,
            req: Vec::with_capacity(IN_HEADER + 64 + MAX_IO),
            resp: vec![0u8; OUT_HEADER + MAX_IO + 4096],
            max_write: 0,
        }
    }

    /// Sends one request (`opcode` on `nodeid`, body = `args` concatenated) and returns the
    /// reply payload (after `fuse_out_header`).
    pub fn call(&mut self, opcode: u32, nodeid: u64, args: &[&[u8]]) -> Result<&[u8], FuseError> {
        self.call_sized(opcode, nodeid, args, MAX_IO + 4096)
    }

    /// [`Fuse::call`] with a reply buffer of exactly `OUT_HEADER + payload` bytes. READ needs
    /// this: like Linux, the driver sizes the buffer to the requested count, and virtiofsd
    /// (1.14) fails a read with EIO when the buffer is larger and the file has more data.
    pub fn call_sized(
        &mut self,
        opcode: u32,
        nodeid: u64,
        args: &[&[u8]],
        payload: usize,
    ) -> Result<&[u8], FuseError> {
        self.unique += 1;
        let unique = self.unique;
        let body: usize = args.iter().map(|a| a.len()).sum();
        let len = IN_HEADER + body;
        self.req.clear();
        self.req
            .extend_from_slice(&u32::try_from(len).unwrap_or(0).to_le_bytes());
        self.req.extend_from_slice(&opcode.to_le_bytes());
        self.req.extend_from_slice(&unique.to_le_bytes());
        self.req.extend_from_slice(&nodeid.to_le_bytes());
        // uid, gid, pid (0), total_extlen and padding.
        self.req.extend_from_slice(&[0u8; 16]);
        for a in args {
            self.req.extend_from_slice(a);
        }
        self.resp[..OUT_HEADER].fill(0);
        let req_len = u32::try_from(self.req.len()).unwrap_or(0);
        let resp_len = u32::try_from((OUT_HEADER + payload).min(self.resp.len())).unwrap_or(0);
        self.q
            .set_desc(0, self.req.as_ptr() as u64, req_len, NEXT, 1);
        self.q.set_desc(1, self.resp.as_ptr() as u64, resp_len, WRITE, 0);
        self.q.publish(0);
        self.q.notify();
        let used = self
            .q
            .wait_for(0, Deadline::after_ms(REQUEST_MS))
            .ok_or_else(|| {
                FuseError::Transport(format!("no reply to opcode {opcode} within {REQUEST_MS} ms"))
            })?;
        let used = usize::try_from(used).unwrap_or(usize::MAX);
        let out_len = u32_at(&self.resp, 0).unwrap_or(0) as usize;
        let error = u32_at(&self.resp, 4).unwrap_or(0) as i32;
        let got_unique = u64_at(&self.resp, 8).unwrap_or(0);
        if got_unique != unique {
            return Err(FuseError::Transport(format!(
                "reply for request {got_unique}, expected {unique}"
            )));
        }
        if error != 0 {
            return Err(FuseError::Errno(-error));
        }
        if out_len < OUT_HEADER || out_len > used || out_len > self.resp.len() {
            return Err(FuseError::Transport(format!(
                "reply length {out_len} (used length {used})"
            )));
        }
        Ok(&self.resp[OUT_HEADER..out_len])
    }

    /// FUSE_INIT (protocol 7.31); returns the server's (major, minor).
    pub fn init(&mut self) -> Result<(u32, u32), FuseError> {
        let mut a = [0u8; 16];
        a[0..4].copy_from_slice(&7u32.to_le_bytes());
        a[4..8].copy_from_slice(&31u32.to_le_bytes());
        let r = self.call(op::INIT, 0, &[&a])?;
        let (major, minor) = (u32_at(r, 0), u32_at(r, 4));
        let max_write = u32_at(r, 20);
        let (Some(major), Some(minor), Some(max_write)) = (major, minor, max_write) else {
            return Err(short("INIT", r.len()));
        };
        self.max_write = max_write;
        Ok((major, minor))
    }

    /// FUSE_LOOKUP of `name` in directory `parent`: (node id, attributes).
    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<(u64, Attr), FuseError> {
        let r = self.call(op::LOOKUP, parent, &[name.as_bytes(), &[0]])?;
        entry(r, "LOOKUP")
    }

    /// FUSE_GETATTR.
    pub fn getattr(&mut self, node: u64) -> Result<Attr, FuseError> {
        let r = self.call(op::GETATTR, node, &[&[0u8; 16]])?;
        r.get(16..)
            .and_then(Attr::parse)
            .ok_or_else(|| short("GETATTR", r.len()))
    }

    /// FUSE_OPEN (or OPENDIR) with `flags`; returns the file handle.
    pub fn open(&mut self, node: u64, flags: u32, dir: bool) -> Result<u64, FuseError> {
        let mut a = [0u8; 8];
        a[0..4].copy_from_slice(&flags.to_le_bytes());
        let opcode = if dir { op::OPENDIR } else { op::OPEN };
        let r = self.call(opcode, node, &[&a])?;
        u64_at(r, 0).ok_or_else(|| short("OPEN", r.len()))
    }

    /// FUSE_CREATE of `name` in `parent` (`flags` as for open(2), `mode` with the type bits):
    /// (node id, attributes, file handle).
    pub fn create(
        &mut self,
        parent: u64,
        name: &str,
        flags: u32,
        mode: u32,
    ) -> Result<(u64, Attr, u64), FuseError> {
        let mut a = [0u8; 16];
        a[0..4].copy_from_slice(&flags.to_le_bytes());
        a[4..8].copy_from_slice(&mode.to_le_bytes());
        let r = self.call(op::CREATE, parent, &[&a, name.as_bytes(), &[0]])?;
        let (node, attr) = entry(r, "CREATE")?;
        let fh = u64_at(r, 128).ok_or_else(|| short("CREATE", r.len()))?;
        Ok((node, attr, fh))
    }

    /// FUSE_READ (or READDIR) of up to `size` bytes at `offset`; returns the data.
    pub fn read(
        &mut self,
        node: u64,
        fh: u64,
        offset: u64,
        size: u32,
        dir: bool,
    ) -> Result<&[u8], FuseError> {
        let a = io_args(fh, offset, size);
        let opcode = if dir { op::READDIR } else { op::READ };
        let size = usize::try_from(size).unwrap_or(MAX_IO).min(MAX_IO);
        self.call_sized(opcode, node, &[&a], size)
    }

    /// FUSE_WRITE of `data` at `offset`; returns the count written.
    pub fn write(
        &mut self,
        node: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<u32, FuseError> {
        let a = io_args(fh, offset, u32::try_from(data.len()).unwrap_or(u32::MAX));
        let r = self.call(op::WRITE, node, &[&a, data])?;
        u32_at(r, 0).ok_or_else(|| short("WRITE", r.len()))
    }

    /// FUSE_FSYNC.
    pub fn fsync(&mut self, node: u64, fh: u64) -> Result<(), FuseError> {
        let mut a = [0u8; 16];
        a[0..8].copy_from_slice(&fh.to_le_bytes());
        self.call(op::FSYNC, node, &[&a]).map(|_| ())
    }

    /// FUSE_RELEASE (or RELEASEDIR).
    pub fn release(&mut self, node: u64, fh: u64, dir: bool) -> Result<(), FuseError> {
        let mut a = [0u8; 24];
        a[0..8].copy_from_slice(&fh.to_le_bytes());
        let opcode = if dir { op::RELEASEDIR } else { op::RELEASE };
        self.call(opcode, node, &[&a]).map(|_| ())
    }

    /// Every entry of directory `node` (OPENDIR, READDIR until an empty reply, RELEASEDIR).
    pub fn list(&mut self, node: u64) -> Result<Vec<DirEntry>, FuseError> {
        let fh = self.open(node, 0, true)?;
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let r = self.read(node, fh, offset, 4096, true)?;
            if r.is_empty() {
                break;
            }
            let batch = parse_dirents(r)?;
            let Some(last) = batch.last() else {
                return Err(FuseError::Transport(String::from("READDIR: no whole entry")));
            };
            if last.off <= offset && offset != 0 {
                return Err(FuseError::Transport(format!(
                    "READDIR offset went from {offset} to {}",
                    last.off
                )));
            }
            offset = last.off;
            out.extend(batch);
            if out.len() > 10_000 {
                return Err(FuseError::Transport(String::from("READDIR never ends")));
            }
        }
        self.release(node, fh, true)?;
        Ok(out)
    }
}

fn io_args(fh: u64, offset: u64, size: u32) -> [u8; 40] {
    let mut a = [0u8; 40];
    a[0..8].copy_from_slice(&fh.to_le_bytes());
    a[8..16].copy_from_slice(&offset.to_le_bytes());
    a[16..20].copy_from_slice(&size.to_le_bytes());
    a
}

/// `fuse_entry_out`: node id at 0, attributes at 40.
fn entry(r: &[u8], what: &str) -> Result<(u64, Attr), FuseError> {
    let node = u64_at(r, 0).ok_or_else(|| short(what, r.len()))?;
    let attr = r
        .get(40..)
        .and_then(Attr::parse)
        .ok_or_else(|| short(what, r.len()))?;
    Ok((node, attr))
}

/// Parses a READDIR reply: `fuse_dirent` records (ino, off, namelen, type, name) padded to 8.
pub fn parse_dirents(mut b: &[u8]) -> Result<Vec<DirEntry>, FuseError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let bad = || FuseError::Transport(String::from("truncated fuse_dirent"));
        let ino = u64_at(b, 0).ok_or_else(bad)?;
        let off = u64_at(b, 8).ok_or_else(bad)?;
        let namelen = u32_at(b, 16).ok_or_else(bad)? as usize;
        let name = b.get(24..24 + namelen).ok_or_else(bad)?;
        let name = core::str::from_utf8(name)
            .map_err(|_| FuseError::Transport(String::from("entry name is not UTF-8")))?;
        out.push(DirEntry {
            ino,
            off,
            name: String::from(name),
        });
        let rec = (24 + namelen).div_ceil(8) * 8;
        b = b.get(rec..).unwrap_or(&[]);
    }
    Ok(out)
}
