// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! `/etc/passwd` and `/etc/group` of a container rootfs, parsed directly (the static agent has
//! no NSS). Used like runc: a process without `HOME` gets the user's home directory, and the
//! user's supplementary groups from `/etc/group` join `additionalGids`.

use std::path::Path;

/// One `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// One `/etc/group` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Member login names.
    pub members: Vec<String>,
}

/// Parses passwd text; malformed lines are skipped.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_owned(),
            })
        })
        .collect()
}

/// Parses group text; malformed lines are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_owned(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })
        .collect()
}

/// The passwd entry of `uid` in `rootfs`, if the file exists and has one.
pub fn lookup_uid(rootfs: &Path, uid: u32) -> Option<PasswdEntry> {
    let text = std::fs::read_to_string(rootfs.join("etc/passwd")).ok()?;
    parse_passwd(&text).into_iter().find(|e| e.uid == uid)
}

/// Gids of the groups in `rootfs`'s `/etc/group` that list `user` as a member.
pub fn supplementary_gids(rootfs: &Path, user: &str) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(rootfs.join("etc/group")) else {
        return Vec::new();
    };
    parse_group(&text)
        .into_iter()
        .filter(|g| g.members.iter().any(|m| m == user))
        .map(|g| g.gid)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_skips_garbage() {
        let p = parse_passwd("root:x:0:0:root:/root:/bin/sh\n# c\nbad line\nnobody:x:65534:65534::/nonexistent:/bin/false\nx:x:notanumber:0::/:/bin/sh\n");
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].name, "nobody");
        assert_eq!(
            (p[1].uid, p[1].gid, p[1].home.as_str()),
            (65534, 65534, "/nonexistent")
        );
        let g = parse_group("wheel:x:10:alice,bob\nusers:x:100:\nbroken\n");
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].members, vec!["alice".to_owned(), "bob".to_owned()]);
        assert!(g[1].members.is_empty());
    }

    #[test]
    fn lookups_in_a_rootfs() {
        let dir = std::env::temp_dir().join(format!("vmrun-passwd-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(
            dir.join("etc/passwd"),
            "alice:x:1000:1000::/home/alice:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("etc/group"),
            "wheel:x:10:alice\naudio:x:29:bob,alice\n",
        )
        .unwrap();
        assert_eq!(lookup_uid(&dir, 1000).unwrap().home, "/home/alice");
        assert!(lookup_uid(&dir, 1).is_none());
        assert_eq!(supplementary_gids(&dir, "alice"), vec![10, 29]);
        assert!(supplementary_gids(&dir, "carol").is_empty());
        assert!(lookup_uid(Path::new("/nonexistent"), 0).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
