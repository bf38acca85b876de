//! The TOML helper of Dispatch's config files (the generic worker's and
//! the server's): [`parse_toml`] and [`Section`], a table with its place in
//! the file, whose readers refuse unknown keys and wrong types with one
//! line naming the file and the key at fault ([`ConfigError`]).

use std::collections::BTreeMap;

/// Why a config file is refused, on one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the {what} {path}")]
    Read {
        /// Which config (`worker config`, `server config`).
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid: `file: key: message`.
    #[error("{0}")]
    Invalid(String),
}

/// Reads a config file whole; `what` names the kind of config in the
/// error.
pub fn read(what: &'static str, path: &std::path::Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// Parses TOML text; a syntax error names the file, line and column, on
/// one line.
pub fn parse_toml(file: &str, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse().map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map(|s| {
                let before = &text[..s.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}: ")
            })
            .unwrap_or_default();
        let message = e.message().trim().replace('\n', "; ");
        ConfigError::Invalid(format!("{file}: {at}{message}"))
    })
}

/// A key as TOML writes it: bare when it can be, quoted otherwise.
pub fn key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare { k.to_owned() } else { format!("{k:?}") }
}

/// One table of a config file, with its place for error messages (also
/// used by the server's config file).
pub struct Section<'a> {
    /// The file, as errors name it.
    pub file: &'a str,
    /// `types."email.send"`; empty at the top level.
    pub path: String,
    /// The table's keys and values.
    pub table: &'a toml::Table,
}

impl<'a> Section<'a> {
    /// Where key `k` of this table is, as errors name it: `types.a.url`.
    pub fn key_path(&self, k: &str) -> String {
        if self.path.is_empty() {
            key(k)
        } else {
            format!("{}.{}", self.path, key(k))
        }
    }

    /// `file: path.key: message`.
    pub fn error(&self, k: &str, message: impl std::fmt::Display) -> ConfigError {
        ConfigError::Invalid(format!("{}: {}: {message}", self.file, self.key_path(k)))
    }

    /// `file: path: message`, about the table itself.
    pub fn error_here(&self, message: impl std::fmt::Display) -> ConfigError {
        ConfigError::Invalid(format!("{}: {}: {message}", self.file, self.path))
    }

    /// Refuses keys not in `allowed`.
    pub fn only(&self, allowed: &[&str]) -> Result<(), ConfigError> {
        match self.table.keys().find(|k| !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => {
                let (last, rest) = allowed.split_last().expect("allowed is not empty");
                Err(self.error(
                    k,
                    format!("unknown key (expected {} or {last})", rest.join(", ")),
                ))
            }
        }
    }

    /// `file: path.key: must be WANT, not TYPE`.
    pub fn wrong_type(&self, k: &str, want: &str, got: &toml::Value) -> ConfigError {
        self.error(k, format!("must be {want}, not {}", got.type_str()))
    }

    /// The string at `k`, if given.
    pub fn string(&self, k: &str) -> Result<Option<String>, ConfigError> {
        match self.table.get(k) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.wrong_type(k, "a string", v)),
        }
    }

    /// The integer at `k`, if given, within `lo..=hi`.
    pub fn integer(&self, k: &str, lo: i64, hi: i64) -> Result<Option<i64>, ConfigError> {
        match self.table.get(k) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) if (lo..=hi).contains(i) => Ok(Some(*i)),
            Some(toml::Value::Integer(i)) if hi == i64::MAX => {
                Err(self.error(k, format!("must be at least {lo}, got {i}")))
            }
            Some(toml::Value::Integer(i)) => {
                Err(self.error(k, format!("must be from {lo} to {hi}, got {i}")))
            }
            Some(v) => Err(self.wrong_type(k, "an integer", v)),
        }
    }

    /// The array of strings at `k`, if given.
    pub fn string_array(&self, k: &str) -> Result<Option<Vec<String>>, ConfigError> {
        match self.table.get(k) {
            None => Ok(None),
            Some(toml::Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    v => Err(self.error(
                        k,
                        format!("item {i} must be a string, not {}", v.type_str()),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(self.wrong_type(k, "an array of strings", v)),
        }
    }

    /// The table at `k`, if given, as a section of its own.
    pub fn table(&self, k: &str) -> Result<Option<Section<'a>>, ConfigError> {
        match self.table.get(k) {
            None => Ok(None),
            Some(toml::Value::Table(t)) => Ok(Some(Section {
                file: self.file,
                path: self.key_path(k),
                table: t,
            })),
            Some(v) => Err(self.wrong_type(k, "a table", v)),
        }
    }

    /// The table of strings at `k` (`labels`, `env`, `headers`); empty
    /// when not given.
    pub fn string_table(&self, k: &str) -> Result<BTreeMap<String, String>, ConfigError> {
        let Some(t) = self.table(k)? else {
            return Ok(BTreeMap::new());
        };
        t.table
            .keys()
            .map(|name| Ok((name.clone(), t.string(name)?.unwrap_or_default())))
            .collect()
    }
}
