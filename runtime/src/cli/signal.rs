// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Signal names and numbers as `runc kill` accepts them: `9`, `KILL`, `SIGKILL`, `kill`,
//! `RTMIN+3`, `SIGRTMAX-1` (Linux x86_64 numbering: 1..=31 standard, 34..=64 real-time).

/// Standard signals (Linux x86_64), number and name without the `SIG` prefix.
const SIGNALS: &[(u32, &str)] = &[
    (1, "HUP"),
    (2, "INT"),
    (3, "QUIT"),
    (4, "ILL"),
    (5, "TRAP"),
    (6, "ABRT"),
    (6, "IOT"),
    (7, "BUS"),
    (8, "FPE"),
    (9, "KILL"),
    (10, "USR1"),
    (11, "SEGV"),
    (12, "USR2"),
    (13, "PIPE"),
    (14, "ALRM"),
    (15, "TERM"),
    (16, "STKFLT"),
    (17, "CHLD"),
    (17, "CLD"),
    (18, "CONT"),
    (19, "STOP"),
    (20, "TSTP"),
    (21, "TTIN"),
    (22, "TTOU"),
    (23, "URG"),
    (24, "XCPU"),
    (25, "XFSZ"),
    (26, "VTALRM"),
    (27, "PROF"),
    (28, "WINCH"),
    (29, "IO"),
    (29, "POLL"),
    (30, "PWR"),
    (31, "SYS"),
];

/// The first real-time signal as user space sees it (glibc reserves 32 and 33).
pub const SIGRTMIN: u32 = 34;
/// The last real-time signal.
pub const SIGRTMAX: u32 = 64;

/// A signal name or number that is not a Linux signal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown signal {0:?}")]
pub struct SignalError(pub String);

/// Parses a signal as `runc kill` does: a number 1..=64, or a name with or without `SIG`, in
/// any case, including `RTMIN`, `RTMIN+n` and `RTMAX-n`.
pub fn parse_signal(text: &str) -> Result<u32, SignalError> {
    let err = || SignalError(text.to_owned());
    if let Ok(n) = text.parse::<u32>() {
        return if (1..=SIGRTMAX).contains(&n) {
            Ok(n)
        } else {
            Err(err())
        };
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(&(n, _)) = SIGNALS.iter().find(|(_, s)| *s == name) {
        return Ok(n);
    }
    let rt = |base: u32, rest: &str| -> Option<u32> {
        if rest.is_empty() {
            return Some(base);
        }
        let (plus, digits) = match rest.as_bytes().first()? {
            b'+' => (true, &rest[1..]),
            b'-' => (false, &rest[1..]),
            _ => return None,
        };
        let off: u32 = digits.parse().ok()?;
        let n = if plus {
            base.checked_add(off)?
        } else {
            base.checked_sub(off)?
        };
        (SIGRTMIN..=SIGRTMAX).contains(&n).then_some(n)
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(SIGRTMIN, rest).ok_or_else(err);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(SIGRTMAX, rest).ok_or_else(err);
    }
    Err(err())
}

/// The name (`SIGTERM`) of a standard signal number, for messages.
pub fn signal_name(n: u32) -> Option<&'static str> {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    let idx = usize::try_from(n.checked_sub(1)?).ok()?;
    NAMES.get(idx).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_signal("9"), Ok(9));
        assert_eq!(parse_signal("15"), Ok(15));
        assert_eq!(parse_signal("64"), Ok(64));
        for bad in ["0", "65", "-1", "99999999999", "1.5", ""] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(parse_signal("KILL"), Ok(9));
        assert_eq!(parse_signal("SIGKILL"), Ok(9));
        assert_eq!(parse_signal("sigterm"), Ok(15));
        assert_eq!(parse_signal("term"), Ok(15));
        assert_eq!(parse_signal("SIGWINCH"), Ok(28));
        assert_eq!(parse_signal("CHLD"), Ok(17));
        assert_eq!(parse_signal("SIGCLD"), Ok(17));
        assert_eq!(parse_signal("SIGSYS"), Ok(31));
        assert_eq!(parse_signal("SIGFOO"), Err(SignalError("SIGFOO".into())));
        assert!(parse_signal("SIG").is_err());
        assert!(parse_signal("KILL9").is_err());
    }

    #[test]
    fn realtime() {
        assert_eq!(parse_signal("RTMIN"), Ok(34));
        assert_eq!(parse_signal("SIGRTMIN+3"), Ok(37));
        assert_eq!(parse_signal("RTMAX"), Ok(64));
        assert_eq!(parse_signal("sigrtmax-2"), Ok(62));
        assert!(parse_signal("RTMIN+31").is_err());
        assert!(parse_signal("RTMIN-1").is_err());
        assert!(parse_signal("RTMAX+1").is_err());
        assert!(parse_signal("RTMIN*2").is_err());
    }

    #[test]
    fn names_match_numbers() {
        for n in 1..=31 {
            let name = signal_name(n).unwrap();
            assert_eq!(parse_signal(name), Ok(n), "{name}");
        }
        assert_eq!(signal_name(0), None);
        assert_eq!(signal_name(32), None);
    }
}
