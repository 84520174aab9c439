// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! `vmrun check` as a user runs it: the real binary, the artifacts of `VMRUN_ARTIFACTS`, and
//! with `--boot` a real throw-away sandbox on the selected backend.

use std::process::Command;

use vmrun_tests::sandbox::{assert_cleaned_up, TestRoot};
use vmrun_tests::{artifact, host_bin};

fn vmrun_check(root: &TestRoot, config: &std::path::Path, args: &[&str]) -> (i32, String) {
    // The artifacts must exist (VMRUN_ARTIFACTS is inherited by the child).
    let _ = artifact("initramfs.cpio");
    let out = Command::new(host_bin("vmrun"))
        .arg("--root")
        .arg(root.path())
        .arg("check")
        .args(args)
        .env("VMRUN_CONFIG", config)
        .env("VMRUN_ARTIFACTS", vmrun_tests::artifacts_dir())
        .output()
        .expect("run vmrun check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn vmrun_check_boot_boots_a_sandbox_and_reports_the_agent() {
    let root = TestRoot::new("check");
    let config = root.path().join("no-config.toml");
    let (code, text) = vmrun_check(&root, &config, &["--boot"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("[ok  ] backend: "), "{text}");
    assert!(text.contains("sha256 "), "{text}");
    assert!(
        text.contains(&format!("(API {})", vmrun_protocol::API_VERSION)),
        "{text}"
    );
    assert!(text.contains("stop: clean shutdown"), "{text}");
    assert!(
        text.contains("vmrun check: this host can run vmrun sandboxes"),
        "{text}"
    );
    // The throw-away sandbox left nothing behind: `vmrun` keeps sandboxes under
    // `<root>/@sandboxes`, which must be empty again.
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .flat_map(|p| {
            if p.file_name().is_some_and(|n| n == "@sandboxes") {
                std::fs::read_dir(&p)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path())
                    .collect()
            } else {
                vec![p]
            }
        })
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    assert_cleaned_up(root.path(), "none", &[]);
    // The (empty) sandbox directory `vmrun` created, so that the test root goes too.
    std::fs::remove_dir(root.path().join("@sandboxes")).expect("remove @sandboxes");
}

#[test]
fn vmrun_check_fails_with_the_fix_when_an_artifact_is_missing() {
    let root = TestRoot::new("checkbad");
    let config = root.path().join("config.toml");
    std::fs::write(
        &config,
        "[artifacts]\ninitrd = \"/nonexistent/initramfs.cpio\"\n",
    )
    .unwrap();
    let (code, text) = vmrun_check(&root, &config, &["--boot"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("[FAIL] initramfs: /nonexistent/initramfs.cpio"),
        "{text}"
    );
    assert!(text.contains("fix: run scripts/setup"), "{text}");
    assert!(text.contains("[FAIL] boot: not attempted"), "{text}");
    std::fs::remove_file(&config).unwrap();
}
