// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! The host <-> guest agent contract of vmrun.
//!
//! * The ttrpc API, generated at build time from `protos/*.proto` by `ttrpc-codegen` (async
//!   client and server): [`health`]/[`health_ttrpc`] (Check, Version) and
//!   [`agent`]/[`agent_ttrpc`] (the container API). Every rpc and field is documented in the
//!   `.proto` files; `docs/protocol.md` describes the semantics.
//! * The vsock ports and exit-status constants both sides share ([`AGENT_PORT`],
//!   [`LOG_PORT`], [`STDIO_PORT`], [`EXIT_PORT`], [`CLEAN_SHUTDOWN_CODE`]) and the
//!   [`API_VERSION`] the runtime checks with `Version`.
//! * The header line that opens every stdio stream ([`StdioHeader`]).
//!
//! Trust boundary: the agent treats everything it receives from the host as input to
//! validate; the host treats everything from the guest as hostile. [`StdioHeader::parse`] never
//! panics and bounds the line length.

use std::fmt;

/// Generated protobuf messages of `protos/health.proto`.
#[allow(
    warnings,
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::restriction
)]
pub mod health {
    include!(concat!(env!("OUT_DIR"), "/health.rs"));
}

/// Generated async ttrpc client and server of the `Health` service.
#[allow(
    warnings,
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::restriction
)]
pub mod health_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/health_ttrpc.rs"));
}

/// Generated protobuf messages of `protos/agent.proto`.
#[allow(
    warnings,
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::restriction
)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// Generated async ttrpc client and server of the `AgentService` service.
#[allow(
    warnings,
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::restriction
)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

/// Version of this protocol. The runtime refuses an agent whose `Version` answer carries a
/// different `api_version`, with an error naming both. Bump it on any incompatible change.
pub const API_VERSION: u32 = 1;

/// vsock port of the agent's ttrpc API; the guest listens.
pub const AGENT_PORT: u32 = 1024;

/// vsock port of the agent's log stream; the guest connects OUT to CID 2 on this port (the
/// host listens on `<uds>_1025` before boot) and the agent tolerates its absence.
pub const LOG_PORT: u32 = 1025;

/// vsock port of the stdio streams; the guest listens, the host connects once per stream and
/// first sends a [`StdioHeader`] line.
pub const STDIO_PORT: u32 = 1026;

/// x86 I/O port of the exit-status device (`vmrun-vmm`'s, or QEMU's `isa-debug-exit`).
pub const EXIT_PORT: u16 = 0xf4;

/// Byte the agent writes to [`EXIT_PORT`] just before it reboots on a clean shutdown
/// (`vmrun-vmm` then exits with 32, QEMU with `(0x20 << 1) | 1` = 65).
pub const CLEAN_SHUTDOWN_CODE: u8 = 0x20;

/// Exit status of QEMU (`isa-debug-exit`) after a clean agent shutdown.
pub const QEMU_CLEAN_SHUTDOWN_STATUS: i32 = ((CLEAN_SHUTDOWN_CODE as i32) << 1) | 1;

/// The `exec_id` word of a stdio header that names a container's init process.
pub const INIT_EXEC_ID: &str = "-";

/// What the agent prints on the console, at the start of a line, once its ttrpc server listens
/// (followed by ` in <ms> ms since kernel start ...`). The host waits for it before its first
/// `CONNECT` to [`AGENT_PORT`]: vhost-device-vsock 0.3 can wedge a host connection that arrives
/// before the guest's vsock driver is up.
pub const READY_LINE: &str = "vmrun-agent: ready";

/// Longest stdio header line accepted, including the final `\n`.
pub const STDIO_HEADER_MAX_LEN: usize = 2100;

/// Longest container or exec id accepted.
pub const ID_MAX_LEN: usize = 1024;

/// The kind of a stdio stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StdioStream {
    /// Host -> process standard input; the host closing the connection means EOF.
    Stdin,
    /// Process standard output -> host.
    Stdout,
    /// Process standard error -> host.
    Stderr,
    /// Both directions of the process's pty master (processes with `terminal: true`).
    Tty,
}

impl StdioStream {
    /// The word used in the header line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdin => "stdin",
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Tty => "tty",
        }
    }

    fn from_word(word: &str) -> Option<Self> {
        match word {
            "stdin" => Some(Self::Stdin),
            "stdout" => Some(Self::Stdout),
            "stderr" => Some(Self::Stderr),
            "tty" => Some(Self::Tty),
            _ => None,
        }
    }
}

impl fmt::Display for StdioStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stdio header was malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The line exceeds [`STDIO_HEADER_MAX_LEN`].
    #[error("stdio header longer than {STDIO_HEADER_MAX_LEN} bytes")]
    TooLong,
    /// The line does not end with `\n`.
    #[error("stdio header is not terminated by a newline")]
    Unterminated,
    /// The line is not UTF-8.
    #[error("stdio header is not valid UTF-8")]
    NotUtf8,
    /// The line does not have exactly three space-separated words.
    #[error("stdio header must be '<container_id> <exec_id> <stream>', got {0} words")]
    WordCount(usize),
    /// An id is empty, too long or has a character outside `[A-Za-z0-9_.+-]`.
    #[error("invalid {what} {value:?}: must be 1 to {ID_MAX_LEN} characters of [A-Za-z0-9_.+-]")]
    BadId {
        /// Which id ("container id" or "exec id").
        what: &'static str,
        /// The offending value (lossy, as received).
        value: String,
    },
    /// The stream word is not `stdin`, `stdout`, `stderr` or `tty`.
    #[error("unknown stdio stream {0:?}: expected stdin, stdout, stderr or tty")]
    BadStream(String),
}

/// Checks a container or exec id: 1 to [`ID_MAX_LEN`] characters of `[A-Za-z0-9_.+-]`, and not
/// `.` or `..` (ids become path components in the guest).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= ID_MAX_LEN
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'))
}

/// The header line `<container_id> <exec_id> <stream>\n` that opens a stdio connection on
/// [`STDIO_PORT`]; `exec_id` is [`INIT_EXEC_ID`] (`-`) for the container's init process.
///
/// # Example
/// ```
/// use vmrun_protocol::{StdioHeader, StdioStream};
/// let h = StdioHeader::new("web", None, StdioStream::Stdout).unwrap();
/// assert_eq!(h.to_line(), "web - stdout\n");
/// assert_eq!(StdioHeader::parse(b"web - stdout\n").unwrap(), h);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StdioHeader {
    container_id: String,
    exec_id: Option<String>,
    stream: StdioStream,
}

impl StdioHeader {
    /// Builds a header; `exec_id` `None` names the init process. Fails on an invalid id.
    pub fn new(
        container_id: &str,
        exec_id: Option<&str>,
        stream: StdioStream,
    ) -> Result<Self, HeaderError> {
        if !is_valid_id(container_id) {
            return Err(HeaderError::BadId {
                what: "container id",
                value: container_id.to_owned(),
            });
        }
        if let Some(e) = exec_id {
            if !is_valid_id(e) || e == INIT_EXEC_ID {
                return Err(HeaderError::BadId {
                    what: "exec id",
                    value: e.to_owned(),
                });
            }
        }
        Ok(Self {
            container_id: container_id.to_owned(),
            exec_id: exec_id.map(str::to_owned),
            stream,
        })
    }

    /// Parses one header line, including its final `\n` (a trailing `\r` is not accepted).
    pub fn parse(line: &[u8]) -> Result<Self, HeaderError> {
        if line.len() > STDIO_HEADER_MAX_LEN {
            return Err(HeaderError::TooLong);
        }
        let Some(body) = line.strip_suffix(b"\n") else {
            return Err(HeaderError::Unterminated);
        };
        let text = std::str::from_utf8(body).map_err(|_| HeaderError::NotUtf8)?;
        let words: Vec<&str> = text.split(' ').collect();
        let [container_id, exec_id, stream] = words[..] else {
            return Err(HeaderError::WordCount(words.len()));
        };
        let stream = StdioStream::from_word(stream)
            .ok_or_else(|| HeaderError::BadStream(stream.to_owned()))?;
        let exec_id = (exec_id != INIT_EXEC_ID).then_some(exec_id);
        Self::new(container_id, exec_id, stream)
    }

    /// The header line, `\n`-terminated, as it goes on the wire.
    pub fn to_line(&self) -> String {
        format!(
            "{} {} {}\n",
            self.container_id,
            self.exec_id.as_deref().unwrap_or(INIT_EXEC_ID),
            self.stream
        )
    }

    /// The container id.
    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    /// The exec id; `None` for the container's init process.
    pub fn exec_id(&self) -> Option<&str> {
        self.exec_id.as_deref()
    }

    /// The stream kind.
    pub fn stream(&self) -> StdioStream {
        self.stream
    }
}

impl fmt::Display for StdioHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_line().trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        for (cid, eid, s) in [
            ("c1", None, StdioStream::Stdin),
            ("my.container_2+x-y", Some("exec-1"), StdioStream::Stderr),
            ("a", Some("b"), StdioStream::Tty),
            ("abc", None, StdioStream::Stdout),
        ] {
            let h = StdioHeader::new(cid, eid, s).unwrap();
            let line = h.to_line();
            assert!(line.ends_with('\n'));
            let back = StdioHeader::parse(line.as_bytes()).unwrap();
            assert_eq!(back, h);
            assert_eq!(back.container_id(), cid);
            assert_eq!(back.exec_id(), eid);
            assert_eq!(back.stream(), s);
        }
    }

    #[test]
    fn header_wire_form() {
        let h = StdioHeader::new("c1", Some("e2"), StdioStream::Stdout).unwrap();
        assert_eq!(h.to_line(), "c1 e2 stdout\n");
        assert_eq!(h.to_string(), "c1 e2 stdout");
        let init = StdioHeader::parse(b"c1 - tty\n").unwrap();
        assert_eq!(init.exec_id(), None);
    }

    #[test]
    fn header_rejects_malformed() {
        let cases: &[(&[u8], HeaderError)] = &[
            (b"c1 - stdout", HeaderError::Unterminated),
            (
                b"c1 - stdout\r\n",
                HeaderError::BadStream("stdout\r".into()),
            ),
            (b"c1 stdout\n", HeaderError::WordCount(2)),
            (b"c1 - stdout extra\n", HeaderError::WordCount(4)),
            (b"c1  - stdout\n", HeaderError::WordCount(4)),
            (b"\n", HeaderError::WordCount(1)),
            (b"c1 - stdbad\n", HeaderError::BadStream("stdbad".into())),
            (b"c\xff1 - stdout\n", HeaderError::NotUtf8),
            (
                b"../x - stdout\n",
                HeaderError::BadId {
                    what: "container id",
                    value: "../x".into(),
                },
            ),
            (
                b".. - stdout\n",
                HeaderError::BadId {
                    what: "container id",
                    value: "..".into(),
                },
            ),
            (
                b"c1 e/1 stdin\n",
                HeaderError::BadId {
                    what: "exec id",
                    value: "e/1".into(),
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(StdioHeader::parse(line).as_ref(), Err(want), "{line:?}");
        }
        let long = format!("{} - stdout\n", "a".repeat(STDIO_HEADER_MAX_LEN));
        assert_eq!(
            StdioHeader::parse(long.as_bytes()),
            Err(HeaderError::TooLong)
        );
        let long_id = format!("{} - stdout\n", "a".repeat(ID_MAX_LEN + 1));
        assert!(matches!(
            StdioHeader::parse(long_id.as_bytes()),
            Err(HeaderError::BadId { .. })
        ));
        assert!(StdioHeader::new("c", Some("-"), StdioStream::Stdin).is_err());
        assert!(StdioHeader::new("", None, StdioStream::Stdin).is_err());
    }

    #[test]
    fn constants_match_the_contract() {
        assert_eq!(
            (AGENT_PORT, LOG_PORT, STDIO_PORT, EXIT_PORT),
            (1024, 1025, 1026, 0xf4)
        );
        assert_eq!(CLEAN_SHUTDOWN_CODE, 0x20);
        assert_eq!(QEMU_CLEAN_SHUTDOWN_STATUS, 65);
    }

    #[test]
    fn generated_messages_round_trip() {
        use protobuf::Message;
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = "c1".into();
        req.oci_spec = br#"{"ociVersion":"1.0.2"}"#.to_vec();
        req.terminal = true;
        let bytes = req.write_to_bytes().unwrap();
        let back = agent::CreateContainerRequest::parse_from_bytes(&bytes).unwrap();
        assert_eq!(back, req);
        let v = health::VersionResponse {
            agent_version: "0.1.0".into(),
            api_version: API_VERSION,
            ..Default::default()
        };
        let back = health::VersionResponse::parse_from_bytes(&v.write_to_bytes().unwrap()).unwrap();
        assert_eq!(back.api_version, API_VERSION);
    }
}
