// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Agent settings.
//!
//! In the guest they arrive as kernel command-line words `VMRUN_AGENT_<NAME>=value`, which the
//! kernel puts into init's environment (words with a dot in the name do not arrive). The same
//! variables work in the host-side test mode.

use std::collections::BTreeMap;

/// Prefix of every agent setting in the environment.
pub const ENV_PREFIX: &str = "VMRUN_AGENT_";

/// A setting had a bad value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `VMRUN_AGENT_LOG_LEVEL` is not a log level.
    #[error("VMRUN_AGENT_LOG_LEVEL={0:?}: expected off, error, warn, info, debug or trace")]
    LogLevel(String),
    /// A numeric setting did not parse.
    #[error("{name}={value:?}: expected a non-negative integer")]
    Number {
        /// The variable name.
        name: String,
        /// Its value.
        value: String,
    },
    /// A boolean setting did not parse.
    #[error("{name}={value:?}: expected 0, 1, true, false, on or off")]
    Bool {
        /// The variable name.
        name: String,
        /// Its value.
        value: String,
    },
}

/// The agent's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Maximum log level (`VMRUN_AGENT_LOG_LEVEL`, default `info`).
    pub log_level: log::LevelFilter,
    /// Send log lines to the host on vsock port 1025 (`VMRUN_AGENT_LOG_VSOCK`, default on).
    pub log_vsock: bool,
    /// Default grace period between SIGTERM and SIGKILL on Shutdown, milliseconds
    /// (`VMRUN_AGENT_SHUTDOWN_TIMEOUT_MS`, default 5000).
    pub shutdown_timeout_ms: u64,
    /// How long CreateContainer/ExecProcess wait for announced stdio streams, milliseconds
    /// (`VMRUN_AGENT_STDIO_TIMEOUT_MS`, default 10000).
    pub stdio_timeout_ms: u64,
    /// Variables with the prefix that the agent does not know (reported as a warning).
    pub unknown: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            log_level: log::LevelFilter::Info,
            log_vsock: true,
            shutdown_timeout_ms: 5000,
            stdio_timeout_ms: 10_000,
            unknown: Vec::new(),
        }
    }
}

impl Config {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads the settings from `(name, value)` pairs; names without [`ENV_PREFIX`] are ignored.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut cfg = Self::default();
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        for (name, value) in vars {
            match &name[ENV_PREFIX.len()..] {
                "LOG_LEVEL" => {
                    cfg.log_level = value
                        .parse()
                        .map_err(|_| ConfigError::LogLevel(value.clone()))?;
                }
                "LOG_VSOCK" => cfg.log_vsock = parse_bool(&name, &value)?,
                "SHUTDOWN_TIMEOUT_MS" => cfg.shutdown_timeout_ms = parse_u64(&name, &value)?,
                "STDIO_TIMEOUT_MS" => cfg.stdio_timeout_ms = parse_u64(&name, &value)?,
                _ => cfg.unknown.push(name),
            }
        }
        Ok(cfg)
    }
}

fn parse_u64(name: &str, value: &str) -> Result<u64, ConfigError> {
    value.parse().map_err(|_| ConfigError::Number {
        name: name.to_owned(),
        value: value.to_owned(),
    })
}

fn parse_bool(name: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "1" | "true" | "on" | "yes" => Ok(true),
        "0" | "false" | "off" | "no" => Ok(false),
        _ => Err(ConfigError::Bool {
            name: name.to_owned(),
            value: value.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_and_overrides() {
        let c = Config::from_vars(vars(&[("PATH", "/bin"), ("HOME", "/")])).unwrap();
        assert_eq!(c, Config::default());
        let c = Config::from_vars(vars(&[
            ("VMRUN_AGENT_LOG_LEVEL", "debug"),
            ("VMRUN_AGENT_LOG_VSOCK", "off"),
            ("VMRUN_AGENT_SHUTDOWN_TIMEOUT_MS", "250"),
            ("VMRUN_AGENT_FOO", "x"),
        ]))
        .unwrap();
        assert_eq!(c.log_level, log::LevelFilter::Debug);
        assert!(!c.log_vsock);
        assert_eq!(c.shutdown_timeout_ms, 250);
        assert_eq!(c.unknown, vec!["VMRUN_AGENT_FOO".to_owned()]);
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(matches!(
            Config::from_vars(vars(&[("VMRUN_AGENT_LOG_LEVEL", "loud")])),
            Err(ConfigError::LogLevel(_))
        ));
        assert!(matches!(
            Config::from_vars(vars(&[("VMRUN_AGENT_SHUTDOWN_TIMEOUT_MS", "-1")])),
            Err(ConfigError::Number { .. })
        ));
        assert!(matches!(
            Config::from_vars(vars(&[("VMRUN_AGENT_LOG_VSOCK", "maybe")])),
            Err(ConfigError::Bool { .. })
        ));
    }
}
