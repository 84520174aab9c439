// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Deterministic test data shared with the host side (tests/src/vmm.rs has the same functions):
//! the byte at offset `i` of stream `seed` is byte `i % 8` of `splitmix64(seed, i / 8)`, and
//! streams are compared by FNV-1a 64.

/// splitmix64 of `seed` and word index `n`.
pub fn word(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with the stream `seed` starting at byte `offset`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let at = offset + i as u64;
        *b = word(seed, at / 8).to_le_bytes()[(at % 8) as usize];
    }
}

/// Index of the first byte of `buf` that differs from stream `seed` at `offset`.
pub fn mismatch(seed: u64, offset: u64, buf: &[u8]) -> Option<usize> {
    buf.iter().enumerate().position(|(i, b)| {
        let at = offset + i as u64;
        *b != word(seed, at / 8).to_le_bytes()[(at % 8) as usize]
    })
}

/// FNV-1a 64 state.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}
