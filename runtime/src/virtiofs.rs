// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! The sandbox's virtio-fs share: a per-sandbox directory `<state>/shared`, served to the guest
//! by one `virtiofsd` per boot, into which container rootfs and volumes are bind-mounted.
//!
//! The agent mounts the share (tag [`SHARED_FS_TAG`]) when the sandbox calls `CreateSandbox`
//! with it. Layout inside the share (the guest sees it under [`GUEST_SHARED_DIR`]):
//! `<container_id>/rootfs` and `<container_id>/volumes/<name>`.
//!
//! Mount propagation: `/` is a private mount on this kind of host, and virtiofsd's namespace
//! sandbox copies the mount table when it starts. The share is therefore made an `rshared` bind
//! mount of itself *before* virtiofsd starts, so that rootfs and volume mounts added later (a
//! pod's second container) propagate into virtiofsd's namespace and so into the guest.
//!
//! Trust boundary: the paths handed in (rootfs, volume sources) come from an OCI bundle and are
//! trusted as much as the runtime's caller; the ids and names are validated so that they cannot
//! escape the share (`..`, `/`).

use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// The virtio-fs tag the share is exported under (QEMU `tag=`).
pub const SHARED_FS_TAG: &str = crate::hypervisor::SHARED_FS_TAG;
/// Where the agent mounts the share in the guest.
pub const GUEST_SHARED_DIR: &str = "/run/vmrun/shared";

/// Errors from the share.
#[derive(Debug, thiserror::Error)]
pub enum VirtiofsError {
    /// A directory or file in the share could not be created.
    #[error("cannot create {path}")]
    Create {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A mount operation failed.
    #[error("cannot {op} {path}")]
    Mount {
        /// What was attempted.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// A container id or volume name that could escape the share.
    #[error("invalid {what} {value:?}: use 1-128 characters from [A-Za-z0-9_.-], not . or ..")]
    InvalidName {
        /// What it names.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// A bind source that does not exist.
    #[error("bind source {0} does not exist")]
    MissingSource(PathBuf),
    /// The target is already mounted.
    #[error("{0} is already mounted")]
    AlreadyMounted(PathBuf),
    /// virtiofsd's listening socket could not be created.
    #[error("cannot listen on {path}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Checks a container id or volume name used as one path component of the share.
pub fn validate_name(what: &'static str, value: &str) -> Result<(), VirtiofsError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(VirtiofsError::InvalidName {
            what,
            value: value.to_owned(),
        })
    }
}

/// The share directory of one sandbox. Dropping it does not unmount: the sandbox calls
/// [`SharedDir::teardown`] explicitly, after virtiofsd is gone.
#[derive(Debug)]
pub struct SharedDir {
    path: PathBuf,
    self_mounted: bool,
}

impl SharedDir {
    /// Creates `path` (0700) and makes it an `rshared` bind mount of itself.
    pub fn create(path: &Path) -> Result<Self, VirtiofsError> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(|source| VirtiofsError::Create {
                path: path.to_path_buf(),
                source,
            })?;
        let mut dir = Self {
            path: path.to_path_buf(),
            self_mounted: false,
        };
        mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|source| VirtiofsError::Mount {
            op: "bind-mount the share onto itself:",
            path: path.to_path_buf(),
            source,
        })?;
        dir.self_mounted = true;
        mount(
            None::<&str>,
            path,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|source| VirtiofsError::Mount {
            op: "make rshared:",
            path: path.to_path_buf(),
            source,
        })?;
        Ok(dir)
    }

    /// The share's host path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bind-mounts a container's rootfs at `<share>/<container_id>/rootfs`, read-only if asked.
    /// Returns the guest path of the rootfs.
    pub fn mount_rootfs(
        &self,
        container_id: &str,
        rootfs: &Path,
        readonly: bool,
    ) -> Result<PathBuf, VirtiofsError> {
        validate_name("container id", container_id)?;
        let target = self.path.join(container_id).join("rootfs");
        self.bind(rootfs, &target, readonly)?;
        Ok(Path::new(GUEST_SHARED_DIR)
            .join(container_id)
            .join("rootfs"))
    }

    /// Bind-mounts a volume source (directory or file) at
    /// `<share>/<container_id>/volumes/<name>`. Returns its guest path.
    pub fn mount_volume(
        &self,
        container_id: &str,
        name: &str,
        source: &Path,
        readonly: bool,
    ) -> Result<PathBuf, VirtiofsError> {
        validate_name("container id", container_id)?;
        validate_name("volume name", name)?;
        let target = self.path.join(container_id).join("volumes").join(name);
        self.bind(source, &target, readonly)?;
        Ok(Path::new(GUEST_SHARED_DIR)
            .join(container_id)
            .join("volumes")
            .join(name))
    }

    /// Unmounts everything of one container (rootfs and volumes) and removes its directory.
    pub fn unmount_container(&self, container_id: &str) -> Result<(), VirtiofsError> {
        validate_name("container id", container_id)?;
        let dir = self.path.join(container_id);
        detach_all_under(&dir)?;
        remove_empty_tree(&dir);
        Ok(())
    }

    /// Unmounts every container mount and the share itself. Idempotent.
    pub fn teardown(&mut self) -> Result<(), VirtiofsError> {
        detach_all_under(&self.path)?;
        self.self_mounted = false;
        Ok(())
    }

    fn bind(&self, source: &Path, target: &Path, readonly: bool) -> Result<(), VirtiofsError> {
        let meta = std::fs::metadata(source)
            .map_err(|_| VirtiofsError::MissingSource(source.to_path_buf()))?;
        if is_mount_point(target) {
            return Err(VirtiofsError::AlreadyMounted(target.to_path_buf()));
        }
        let create = |path: &Path, source| VirtiofsError::Create {
            path: path.to_path_buf(),
            source,
        };
        let parent = target.parent().unwrap_or(&self.path);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| create(parent, e))?;
        if meta.is_dir() {
            match std::fs::create_dir(target) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(create(target, e)),
            }
        } else {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(target)
                .map_err(|e| create(target, e))?;
        }
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|source| VirtiofsError::Mount {
            op: "bind-mount",
            path: target.to_path_buf(),
            source,
        })?;
        if readonly {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            if let Err(source) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
                let _ = umount2(target, MntFlags::MNT_DETACH);
                return Err(VirtiofsError::Mount {
                    op: "remount read-only",
                    path: target.to_path_buf(),
                    source,
                });
            }
        }
        Ok(())
    }
}

/// Mount points of this process's mount namespace at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

fn is_mount_point(path: &Path) -> bool {
    mounts_under(path).iter().any(|p| p == path)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (u32::from(b[i + 1] - b'0') << 6)
                | (u32::from(b[i + 2] - b'0') << 3)
                | u32::from(b[i + 3] - b'0');
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lazily detaches every mount at or below `dir` (deepest first; a detach of a parent also
/// takes its children, so "not mounted" on a later entry is fine).
fn detach_all_under(dir: &Path) -> Result<(), VirtiofsError> {
    for m in mounts_under(dir) {
        match umount2(&m, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
            Err(source) => {
                return Err(VirtiofsError::Mount {
                    op: "unmount",
                    path: m,
                    source,
                })
            }
        }
    }
    let left = mounts_under(dir);
    if let Some(m) = left.into_iter().next() {
        return Err(VirtiofsError::Mount {
            op: "unmount (still mounted)",
            path: m,
            source: nix::Error::EBUSY,
        });
    }
    Ok(())
}

/// Removes the empty directories and placeholder files left after unmounting. Never follows
/// into anything mounted (checked by the caller) and never removes non-empty files.
fn remove_empty_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        let _ = std::fs::remove_file(dir);
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => remove_empty_tree(&p),
            Ok(_) if e.metadata().is_ok_and(|m| m.len() == 0) => {
                let _ = std::fs::remove_file(&p);
            }
            _ => {}
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Binds and listens on virtiofsd's vhost-user socket, so that it exists before QEMU starts
/// (virtiofsd gets the fd with `--fd`; no race on the socket file appearing).
pub fn listen(path: &Path) -> Result<UnixListener, VirtiofsError> {
    UnixListener::bind(path).map_err(|source| VirtiofsError::Listen {
        path: path.to_path_buf(),
        source,
    })
}

/// The virtiofsd command serving `shared` on the inherited listening socket `listener`.
///
/// `--sandbox namespace` (its own mount namespace, pivoted into the share), `--cache auto`,
/// `--announce-submounts` (the guest sees each bind mount as its own filesystem, so inode numbers
/// of different host filesystems cannot collide) and `--inode-file-handles=never` (no
/// CAP_DAC_READ_SEARCH tricks needed). It exits when the VM disconnects, so it runs once per boot.
pub fn virtiofsd_command(binary: &Path, listener: &UnixListener, shared: &Path) -> Command {
    let mut cmd = Command::new(binary);
    cmd.arg("--fd")
        .arg(listener.as_raw_fd().to_string())
        .arg("--shared-dir")
        .arg(shared)
        .args([
            "--sandbox",
            "namespace",
            "--cache",
            "auto",
            "--announce-submounts",
        ]);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_share() {
        for bad in ["", ".", "..", "a/b", "../x", "a b", &"x".repeat(129)] {
            assert!(validate_name("container id", bad).is_err(), "{bad:?}");
        }
        for good in ["c1", "abc-DEF_0.9", &"x".repeat(128)] {
            validate_name("container id", good).unwrap();
        }
    }

    #[test]
    fn mountinfo_unescaping() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/t\\"), "/t\\");
    }

    fn is_root() -> bool {
        // SAFETY: geteuid(2) has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn share_mounts_rootfs_and_volumes_and_cleans_up() {
        if !is_root() {
            println!("skipped: mounting needs root");
            return;
        }
        let base = std::env::temp_dir().join(format!("vmrun-share-{}", std::process::id()));
        let src = base.join("src");
        std::fs::create_dir_all(src.join("rootfs/etc")).unwrap();
        std::fs::write(src.join("rootfs/etc/hostname"), "c1\n").unwrap();
        std::fs::create_dir_all(src.join("vol")).unwrap();
        std::fs::write(src.join("file.txt"), "single file").unwrap();

        let mut share = SharedDir::create(&base.join("shared")).unwrap();
        let guest = share.mount_rootfs("c1", &src.join("rootfs"), true).unwrap();
        assert_eq!(guest, Path::new("/run/vmrun/shared/c1/rootfs"));
        let visible = share.path().join("c1/rootfs/etc/hostname");
        assert_eq!(std::fs::read_to_string(&visible).unwrap(), "c1\n");
        let err = std::fs::write(share.path().join("c1/rootfs/new"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        let err = share
            .mount_rootfs("c1", &src.join("rootfs"), true)
            .unwrap_err();
        assert!(matches!(err, VirtiofsError::AlreadyMounted(_)), "{err}");

        share
            .mount_volume("c1", "data", &src.join("vol"), false)
            .unwrap();
        std::fs::write(share.path().join("c1/volumes/data/w"), "from host").unwrap();
        assert_eq!(
            std::fs::read_to_string(src.join("vol/w")).unwrap(),
            "from host"
        );
        share
            .mount_volume("c1", "f", &src.join("file.txt"), true)
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(share.path().join("c1/volumes/f")).unwrap(),
            "single file"
        );
        let err = share
            .mount_volume("c1", "x", &src.join("missing"), true)
            .unwrap_err();
        assert!(matches!(err, VirtiofsError::MissingSource(_)), "{err}");

        share.unmount_container("c1").unwrap();
        assert!(!share.path().join("c1").exists());
        assert_eq!(mounts_under(share.path()), vec![share.path().to_path_buf()]);
        share.teardown().unwrap();
        assert!(mounts_under(&base).is_empty());
        // The sources are untouched.
        assert_eq!(
            std::fs::read_to_string(src.join("rootfs/etc/hostname")).unwrap(),
            "c1\n"
        );
        assert_eq!(
            std::fs::read_to_string(src.join("file.txt")).unwrap(),
            "single file"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
