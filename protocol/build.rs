// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Generates the ttrpc (async client + server) and protobuf code from `protos/*.proto` into
//! `OUT_DIR` with `ttrpc-codegen` (pure Rust, no `protoc`), then strips the inner `#![...]`
//! attributes of the generated files, which `include!` does not accept.

use std::fs;
use std::path::{Path, PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

const PROTOS: [&str; 2] = ["protos/health.proto", "protos/agent.proto"];

fn main() {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo always sets OUT_DIR"));
    Codegen::new()
        .out_dir(&out)
        .inputs(PROTOS)
        .include("protos")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .run()
        .expect("ttrpc-codegen failed on protos/*.proto");
    for name in ["health", "health_ttrpc", "agent", "agent_ttrpc"] {
        strip_inner_attributes(&out.join(format!("{name}.rs")));
    }
}

/// Removes lines holding inner attributes (`#![...]`) and inner doc comments (`//!`), which
/// `include!` rejects inside a module.
fn strip_inner_attributes(path: &Path) {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !t.starts_with("#![") && !t.starts_with("//!")
        })
        .collect();
    fs::write(path, kept.join("\n") + "\n")
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
