// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Builds the guest test kit (`vmm/guest-kit`, its own cargo workspace) in release into
//! `<target>/guest-kit` and exports each program's path as `GUEST_ELF_<NAME>`.
//!
//! The nested cargo gets a separate target directory (the outer cargo holds the lock on its
//! own) and none of the outer build's flags or wrappers: the kit's link settings come from its
//! own build.rs and must not leak into, or be overridden by, the host build.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Programs of the kit, by binary name.
const PROGRAMS: &[&str] = &[
    "boot",
    "mmio",
    "blk",
    "rng",
    "vsock",
    "fs",
    "net",
    "bench",
    "bench-pvh",
    "tiny-pvh",
    "tiny-64",
];

fn target_dir(out_dir: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        if dir.is_absolute() {
            return dir;
        }
    }
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out (or one level deeper with --target).
    out_dir
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("OUT_DIR lies inside a cargo target directory")
}

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let kit = manifest_dir.join("../vmm/guest-kit");
    let kit_target = target_dir(&out_dir).join("guest-kit");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| String::from("cargo"));

    for path in [
        "src",
        "tiny/src",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "linker.ld",
        "tiny/Cargo.toml",
        "tiny/build.rs",
        "tiny/linker.ld",
    ] {
        println!("cargo:rerun-if-changed={}", kit.join(path).display());
    }

    let status = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--workspace",
            "--manifest-path",
        ])
        .arg(kit.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&kit_target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_PROFILE_RELEASE_LTO")
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cargo} to build the guest kit: {e}"));
    assert!(
        status.success(),
        "building the guest kit ({}) failed: {status}",
        kit.display()
    );

    for name in PROGRAMS {
        let elf = kit_target.join("release").join(name);
        assert!(
            elf.exists(),
            "guest kit program {} was not built",
            elf.display()
        );
        let var = name.to_ascii_uppercase().replace('-', "_");
        println!("cargo:rustc-env=GUEST_ELF_{var}={}", elf.display());
    }
}
