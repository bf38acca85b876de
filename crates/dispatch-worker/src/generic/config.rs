//! The generic worker's config file: [`load`] reads and checks it into a
//! [`Config`], one [`TypeConfig`] per task type, each a [`Command`] or an
//! [`Endpoint`]. Every error names the file and the key at fault, on one
//! line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::section::{ConfigError, Section, key, parse_toml, read};

/// Tasks run at once when the config does not say.
const DEFAULT_CONCURRENCY: i64 = 4;

/// The SDK's largest concurrency.
const MAX_CONCURRENCY: i64 = 10_000;

/// What the generic worker runs (`dispatch worker`): the parsed config file.
#[derive(Debug)]
pub struct Config {
    /// `server`: the scheduler's URL, unless the CLI names one.
    pub server: Option<String>,
    /// `name`: shown in `dispatch workers`.
    pub name: String,
    /// `concurrency`: tasks run at once.
    pub concurrency: usize,
    /// `labels`: describe this worker to the scheduler.
    pub labels: BTreeMap<String, String>,
    /// `types`: one handler per task type.
    pub types: BTreeMap<String, TypeConfig>,
}

/// One `[types."..."]` table.
#[derive(Debug)]
pub struct TypeConfig {
    /// What runs a task of this type.
    pub action: Action,
    /// `timeout_ms`: a local cap on one attempt, on top of the task's own.
    pub timeout: Option<Duration>,
}

/// A command or an HTTP endpoint.
#[derive(Debug)]
pub enum Action {
    /// `command = [...]`.
    Command(Command),
    /// `url = "..."`.
    Http(Endpoint),
}

/// A process to start per task.
#[derive(Debug)]
pub struct Command {
    /// The program and its arguments; never through a shell.
    pub argv: Vec<String>,
    /// Variables added to the worker's own environment.
    pub env: BTreeMap<String, String>,
    /// Where it runs: `cwd`, relative to the config file's folder (which is
    /// also the default).
    pub cwd: PathBuf,
}

/// An HTTP endpoint to call per task.
#[derive(Debug)]
pub struct Endpoint {
    /// `url`: `http://...`.
    pub url: reqwest::Url,
    /// `method`: POST unless told.
    pub method: reqwest::Method,
    /// `headers`: sent with every call.
    pub headers: HeaderMap,
}

/// Reads and checks the config file at `path`; every error names the file
/// and the key at fault, on one line.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read("worker config", path)?;
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let config = parse(&path.display().to_string(), &text, &base)?;
    check_programs(&path.display().to_string(), &config)?;
    Ok(config)
}

/// Parses a config: `file` names it in errors, `base` is the folder that
/// relative `cwd`s start from.
pub fn parse(file: &str, text: &str, base: &Path) -> Result<Config, ConfigError> {
    let table = parse_toml(file, text)?;
    let top = Section {
        file,
        path: String::new(),
        table: &table,
    };
    top.only(&["server", "name", "concurrency", "labels", "types"])?;
    let server = top.string("server")?;
    if let Some(s) = &server
        && !(s.starts_with("http://") || s.starts_with("https://"))
    {
        return Err(top.error(
            "server",
            format!("must be an http:// or https:// URL, got {s:?}"),
        ));
    }
    let name = top
        .string("name")?
        .unwrap_or_else(|| "dispatch-worker".into());
    if name.is_empty() {
        return Err(top.error("name", "must not be empty"));
    }
    let concurrency = top
        .integer("concurrency", 1, MAX_CONCURRENCY)?
        .unwrap_or(DEFAULT_CONCURRENCY) as usize;
    let labels = top.string_table("labels")?;
    let Some(types) = top.table("types")? else {
        return Err(top.error(
            "types",
            "is missing: add a [types.\"TYPE\"] table per task type",
        ));
    };
    if types.table.is_empty() {
        return Err(top.error("types", "give at least one task type"));
    }
    let mut parsed = BTreeMap::new();
    for kind in types.table.keys() {
        let Some(section) = types.table(kind)? else {
            unreachable!("the key exists")
        };
        if let Err(e) = dispatch_proto::task::validate_name("type", kind) {
            return Err(section.error_here(format!("is not a valid task type: {}", e.message)));
        }
        parsed.insert(kind.clone(), parse_type(&section, base)?);
    }
    Ok(Config {
        server,
        name,
        concurrency,
        labels,
        types: parsed,
    })
}

fn parse_type(s: &Section<'_>, base: &Path) -> Result<TypeConfig, ConfigError> {
    s.only(&[
        "command",
        "env",
        "cwd",
        "url",
        "method",
        "headers",
        "timeout_ms",
    ])?;
    let has = |k: &str| s.table.contains_key(k);
    let action = match (has("command"), has("url")) {
        (true, true) => return Err(s.error_here("give either command or url, not both")),
        (false, false) => return Err(s.error_here("give either command or url")),
        (true, false) => {
            for k in ["method", "headers"] {
                if has(k) {
                    return Err(s.error(k, "applies to url, not to command"));
                }
            }
            let argv = s.string_array("command")?.unwrap_or_default();
            if argv.is_empty() || argv[0].is_empty() {
                return Err(s.error(
                    "command",
                    "must name a program, e.g. [\"/usr/bin/env\", \"python3\", \"job.py\"]",
                ));
            }
            let env = s.string_table("env")?;
            if let Some(k) = env.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
                return Err(s.error("env", format!("{k:?} is not a variable name")));
            }
            let cwd = match s.string("cwd")? {
                Some(c) => base.join(c),
                None => base.to_path_buf(),
            };
            Action::Command(Command { argv, env, cwd })
        }
        (false, true) => {
            for k in ["env", "cwd"] {
                if has(k) {
                    return Err(s.error(k, "applies to command, not to url"));
                }
            }
            let raw = s.string("url")?.unwrap_or_default();
            let url = reqwest::Url::parse(&raw)
                .map_err(|e| s.error("url", format!("{raw:?} is not a URL: {e}")))?;
            match url.scheme() {
                "http" | "https" => {}
                other => {
                    return Err(
                        s.error("url", format!("must be http:// or https://, not {other}:"))
                    );
                }
            }
            let method = match s.string("method")? {
                None => reqwest::Method::POST,
                Some(m) => reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| s.error("method", format!("{m:?} is not an HTTP method")))?,
            };
            let mut headers = HeaderMap::new();
            for (k, v) in s.string_table("headers")? {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| s.error("headers", format!("{k:?} is not a valid header name")))?;
                let value = HeaderValue::from_str(&v).map_err(|_| {
                    s.error(
                        "headers",
                        format!("the value of {k:?} is not a valid header"),
                    )
                })?;
                headers.insert(name, value);
            }
            Action::Http(Endpoint {
                url,
                method,
                headers,
            })
        }
    };
    let timeout = s
        .integer("timeout_ms", 1, i64::MAX)?
        .map(|ms| Duration::from_millis(ms as u64));
    Ok(TypeConfig { action, timeout })
}

/// Checks, before registering, that every command's program and folder
/// exist, so a typo is an error at start and not a dead task per attempt.
pub(super) fn check_programs(file: &str, config: &Config) -> Result<(), ConfigError> {
    for (kind, t) in &config.types {
        let Action::Command(c) = &t.action else {
            continue;
        };
        let at = format!("{file}: types.{}", key(kind));
        if !c.cwd.is_dir() {
            return Err(ConfigError::Invalid(format!(
                "{at}.cwd: {} is not a folder",
                c.cwd.display()
            )));
        }
        let program = &c.argv[0];
        let found = if program.contains('/') {
            c.cwd.join(program).is_file()
        } else {
            let path = c
                .env
                .get("PATH")
                .cloned()
                .or_else(|| std::env::var("PATH").ok())
                .unwrap_or_default();
            std::env::split_paths(&path).any(|d| d.join(program).is_file())
        };
        if !found {
            return Err(ConfigError::Invalid(format!(
                "{at}.command: program {program:?} not found"
            )));
        }
    }
    Ok(())
}

impl Config {
    /// Whether running this config speaks TLS: to an `https://`
    /// scheduler at `server`, or to an `https://` endpoint.
    pub fn needs_tls(&self, server: &str) -> bool {
        server.starts_with("https://")
            || self
                .types
                .values()
                .any(|t| matches!(&t.action, Action::Http(e) if e.url.scheme() == "https"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` as `w.toml` and returns the error, on one line.
    #[track_caller]
    fn error_of(text: &str) -> String {
        match parse("w.toml", text, Path::new("/base")) {
            Ok(c) => panic!("parsed but should not have: {c:?}"),
            Err(e) => {
                let e = e.to_string();
                assert!(!e.contains('\n'), "not one line: {e}");
                e
            }
        }
    }

    #[track_caller]
    fn check(text: &str, expected: &str) {
        let e = error_of(text);
        assert!(e.starts_with(expected), "got {e:?}\nwanted {expected:?}...");
    }

    #[test]
    fn a_full_config_parses() {
        let c = parse(
            "w.toml",
            r#"
            server = "http://10.0.0.1:7070"
            name = "media-1"
            concurrency = 2
            labels = { zone = "eu" }

            [types."image.resize"]
            command = ["sh", "resize.sh"]
            env = { QUALITY = "80" }
            cwd = "jobs"
            timeout_ms = 500

            [types."email.send"]
            url = "http://127.0.0.1:8080/hooks/email"
            method = "put"
            headers = { Authorization = "Bearer x" }
            "#,
            Path::new("/etc/dispatch"),
        )
        .unwrap();
        assert_eq!(c.server.as_deref(), Some("http://10.0.0.1:7070"));
        assert_eq!(c.name, "media-1");
        assert_eq!(c.concurrency, 2);
        assert_eq!(c.labels["zone"], "eu");
        let resize = &c.types["image.resize"];
        assert_eq!(resize.timeout, Some(Duration::from_millis(500)));
        let Action::Command(cmd) = &resize.action else {
            panic!("not a command")
        };
        assert_eq!(cmd.argv, ["sh", "resize.sh"]);
        assert_eq!(cmd.env["QUALITY"], "80");
        assert_eq!(cmd.cwd, Path::new("/etc/dispatch/jobs"));
        let Action::Http(ep) = &c.types["email.send"].action else {
            panic!("not http")
        };
        assert_eq!(ep.method, reqwest::Method::PUT);
        assert_eq!(ep.headers["authorization"], "Bearer x");
    }

    #[test]
    fn defaults() {
        let c = parse(
            "w.toml",
            "[types.a]\ncommand = [\"true\"]\n[types.b]\nurl = \"http://h/\"\n",
            Path::new("/base"),
        )
        .unwrap();
        assert_eq!(c.server, None);
        assert_eq!(c.concurrency, 4);
        assert_eq!(c.name, "dispatch-worker");
        let Action::Command(cmd) = &c.types["a"].action else {
            panic!("not a command")
        };
        assert_eq!(cmd.cwd, Path::new("/base"));
        let Action::Http(ep) = &c.types["b"].action else {
            panic!("not http")
        };
        assert_eq!(ep.method, reqwest::Method::POST);
        assert_eq!(c.types["a"].timeout, None);
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let cmd = "command = [\"true\"]";
        let cases: &[(&str, &str)] = &[
            (
                "[types.\"email.send\"]\ncommand = [\"x\"]\nurl = \"http://h/\"",
                "w.toml: types.\"email.send\": give either command or url, not both",
            ),
            (
                "[types.\"email.send\"]\nenv = {}",
                "w.toml: types.\"email.send\": give either command or url",
            ),
            (
                "[types.a]\ncomand = [\"x\"]",
                "w.toml: types.a.comand: unknown key (expected command, env",
            ),
            (
                "sever = \"x\"\n[types.a]\ncommand = [\"x\"]",
                "w.toml: sever: unknown key",
            ),
            ("name = \"w\"", "w.toml: types: is missing"),
            ("types = {}", "w.toml: types: give at least one task type"),
            ("types = 3", "w.toml: types: must be a table, not integer"),
            (
                "[types]\na = 1",
                "w.toml: types.a: must be a table, not integer",
            ),
            (
                "concurrency = 0\n[types.a]\ncommand = [\"x\"]",
                "w.toml: concurrency: must be from 1 to 10000, got 0",
            ),
            (
                "concurrency = \"4\"\n[types.a]\ncommand = [\"x\"]",
                "w.toml: concurrency: must be an integer, not string",
            ),
            (
                "server = \"localhost:7070\"\n[types.a]\ncommand = [\"x\"]",
                "w.toml: server: must be an http:// or https:// URL",
            ),
            (
                "labels = { zone = 1 }\n[types.a]\ncommand = [\"x\"]",
                "w.toml: labels.zone: must be a string, not integer",
            ),
            (
                "[types.a]\ncommand = []",
                "w.toml: types.a.command: must name a program",
            ),
            (
                "[types.a]\ncommand = \"echo hi\"",
                "w.toml: types.a.command: must be an array of strings, not string",
            ),
            (
                "[types.a]\ncommand = [\"sh\", 1]",
                "w.toml: types.a.command: item 1 must be a string, not integer",
            ),
            (
                "[types.a]\ncommand = [\"x\"]\ntimeout_ms = 0",
                "w.toml: types.a.timeout_ms: must be at least 1, got 0",
            ),
            (
                "[types.a]\ncommand = [\"x\"]\nmethod = \"GET\"",
                "w.toml: types.a.method: applies to url, not to command",
            ),
            (
                "[types.a]\nurl = \"http://h/\"\ncwd = \"/\"",
                "w.toml: types.a.cwd: applies to command, not to url",
            ),
            (
                "[types.a]\nurl = \"not a url\"",
                "w.toml: types.a.url: \"not a url\" is not a URL",
            ),
            (
                "[types.a]\nurl = \"ftp://h/\"",
                "w.toml: types.a.url: must be http:// or https://, not ftp:",
            ),
            (
                "[types.a]\nurl = \"http://h/\"\nmethod = \"G T\"",
                "w.toml: types.a.method: \"G T\" is not an HTTP method",
            ),
            (
                "[types.a]\nurl = \"http://h/\"\nheaders = { \"a b\" = \"x\" }",
                "w.toml: types.a.headers: \"a b\" is not a valid header name",
            ),
            (
                "[types.\"bad type!\"]\ncommand = [\"x\"]",
                "w.toml: types.\"bad type!\": is not a valid task type",
            ),
            ("[types.a]\ncommand = [\"x\"\n", "w.toml: line 2, column"),
        ];
        for (text, expected) in cases {
            check(text, expected);
        }
        // And a valid type beside them parses.
        parse("w.toml", &format!("[types.a]\n{cmd}"), Path::new("/")).unwrap();
    }

    #[test]
    fn missing_programs_and_folders_are_errors_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let parse_in = |text: &str| parse("w.toml", text, dir.path()).unwrap();
        let c = parse_in("[types.a]\ncommand = [\"no-such-program-here\"]");
        let e = check_programs("w.toml", &c).unwrap_err().to_string();
        assert_eq!(
            e,
            "w.toml: types.a.command: program \"no-such-program-here\" not found"
        );
        let c = parse_in("[types.a]\ncommand = [\"./missing.sh\"]");
        let e = check_programs("w.toml", &c).unwrap_err().to_string();
        assert!(e.starts_with("w.toml: types.a.command: program"), "{e}");
        let c = parse_in("[types.a]\ncommand = [\"sh\"]\ncwd = \"nope\"");
        let e = check_programs("w.toml", &c).unwrap_err().to_string();
        assert!(e.starts_with("w.toml: types.a.cwd: "), "{e}");
        let c = parse_in("[types.a]\ncommand = [\"sh\"]");
        check_programs("w.toml", &c).unwrap();
    }

    #[test]
    fn the_example_config_is_valid() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let c = load(&examples.join("worker.toml")).unwrap();
        assert!(matches!(c.types["image.resize"].action, Action::Command(_)));
        assert!(matches!(c.types["email.send"].action, Action::Http(_)));
    }
}
