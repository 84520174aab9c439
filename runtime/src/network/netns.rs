// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Running code inside another network namespace.
//!
//! `setns(2)` changes the namespace of the calling thread only, so the work runs on a short-lived
//! thread that enters the namespace and ends: the caller's threads (and the tokio runtime) never
//! change namespace. Netlink sockets and taps created on that thread belong to the namespace and
//! stay there after the thread ends.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

/// Errors from entering a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file cannot be opened.
    #[error("network namespace {path}: {source}")]
    Open {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a network namespace, or setns failed.
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        /// The path.
        path: String,
        /// Why.
        source: nix::Error,
    },
    /// The worker thread could not be started or panicked.
    #[error("network namespace worker thread: {0}")]
    Thread(String),
}

/// Opens the namespace file (checking it exists before anything else is done).
pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| NetnsError::Open {
        path: path.display().to_string(),
        source,
    })
}

/// Runs `f` on a new thread that has entered the network namespace `ns` (opened with [`open`]).
pub fn run_in<T, E, F>(ns: &File, path: &Path, f: F) -> Result<Result<T, E>, NetnsError>
where
    T: Send,
    E: Send,
    F: FnOnce() -> Result<T, E> + Send,
{
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("vmrun-netns".to_owned())
            .spawn_scoped(scope, move || {
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                    NetnsError::Enter {
                        path: path.display().to_string(),
                        source,
                    }
                })?;
                Ok(f())
            })
            .map_err(|e| NetnsError::Thread(e.to_string()))?;
        handle
            .join()
            .map_err(|_| NetnsError::Thread("panicked".to_owned()))?
    })
}
