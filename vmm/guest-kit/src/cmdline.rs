// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0

//! Kernel command-line parsing: `virtio_mmio.device=<size>@<base>:<irq>` words (the format the
//! Linux virtio-mmio driver accepts) and the kit's own `kit.<key>=<value>` words.

/// One `virtio_mmio.device=` announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    /// Register window size in bytes.
    pub size: u64,
    /// Base guest-physical address.
    pub base: u64,
    /// Interrupt line.
    pub irq: u32,
}

fn parse_num(s: &str) -> Option<u64> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else {
        s.parse().ok()
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let (num, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    parse_num(num)?.checked_mul(1u64 << shift)
}

/// Parses the value of one `virtio_mmio.device=` word.
pub fn parse_mmio_device(value: &str) -> Option<MmioDevice> {
    let (size, rest) = value.split_once('@')?;
    let (base, irq) = rest.split_once(':')?;
    // Linux also accepts ":<irq>:<id>"; only the irq matters here.
    let irq = irq.split(':').next()?;
    Some(MmioDevice {
        size: parse_size(size)?,
        base: parse_num(base)?,
        irq: u32::try_from(parse_num(irq)?).ok()?,
    })
}

/// All `virtio_mmio.device=` words, in command-line order; malformed ones are `None`.
pub fn mmio_devices(cmdline: &str) -> impl Iterator<Item = Option<MmioDevice>> + '_ {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix("virtio_mmio.device="))
        .map(parse_mmio_device)
}

/// The value of the last `kit.<key>=` word.
pub fn kit_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix("kit."))
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .next_back()
}

/// A numeric `kit.<key>=` value.
pub fn kit_number(cmdline: &str, key: &str) -> Option<u64> {
    kit_value(cmdline, key).and_then(parse_num)
}

/// The test selector `kit.test=a,b,c`: whether `name` is selected (everything is when the word
/// is absent).
pub fn selected(cmdline: &str, name: &str) -> bool {
    match kit_value(cmdline, "test") {
        None => true,
        Some(list) => list.split(',').any(|t| t == name),
    }
}
