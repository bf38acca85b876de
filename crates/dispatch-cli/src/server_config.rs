//! `dispatch server --config dispatch.toml`: queue and task type settings.
//!
//! ```toml
//! [queues.critical]
//! weight = 5                 # share of the workers under load (default 1)
//! max_running = 20           # most of its tasks running at once
//! rate_per_sec = 50          # most starts per second (a token bucket)
//! burst = 10                 # starts allowed at once (default: a second's worth)
//! max_per_key = 1            # most running at once per routing_key
//! max_depth = 10000          # most queued and scheduled; beyond, 429
//! strategy = "least_loaded"  # for its tasks that name none
//!
//! [types."report.render"]
//! max_running = 2
//! rate_per_sec = 0.5
//! strategy = "weighted_round_robin"
//! ```
//!
//! Every error names the file and the key at fault, on one line; unknown
//! keys are errors, so a misspelt limit is not silently ignored.

use std::path::Path;

use dispatch_server::{
    QueueConfig, QueueDefaults, QueueSettings, Strategy, TypeConfig, TypeDefaults,
};

use dispatch_worker::generic::section::{ConfigError, Section, parse_toml, read};

/// Every error of the file names it and the key at fault, on one line.
type Result<T> = std::result::Result<T, ConfigError>;

/// Most weight a queue may have.
const MAX_WEIGHT: i64 = 1_000;

/// Most starts per second a rate limit may allow.
const MAX_RATE: f64 = 1_000_000.0;

/// Reads and checks the server config file at `path`.
pub(crate) fn load(path: &Path) -> Result<QueueSettings> {
    let text = read("server config", path)?;
    parse(&path.display().to_string(), &text)
}

/// Parses a server config; `file` names it in errors.
pub(crate) fn parse(file: &str, text: &str) -> Result<QueueSettings> {
    let table = parse_toml(file, text)?;
    let top = Section {
        file,
        path: String::new(),
        table: &table,
    };
    top.only(&["queues", "types"])?;
    let mut settings = QueueSettings::default();
    if let Some(queues) = top.table("queues")? {
        for name in queues.table.keys() {
            let Some(s) = queues.table(name)? else {
                unreachable!("the key exists")
            };
            if let Err(e) = dispatch_proto::task::validate_name("queue", name) {
                return Err(s.error_here(format!("is not a valid queue name: {}", e.message)));
            }
            settings.queues.insert(name.clone(), parse_queue(&s)?);
        }
    }
    if let Some(types) = top.table("types")? {
        for kind in types.table.keys() {
            let Some(s) = types.table(kind)? else {
                unreachable!("the key exists")
            };
            if let Err(e) = dispatch_proto::task::validate_name("type", kind) {
                return Err(s.error_here(format!("is not a valid task type: {}", e.message)));
            }
            settings.types.insert(kind.clone(), parse_type(&s)?);
        }
    }
    Ok(settings)
}

fn parse_queue(s: &Section<'_>) -> Result<QueueDefaults> {
    s.only(&[
        "weight",
        "max_running",
        "rate_per_sec",
        "burst",
        "max_per_key",
        "max_depth",
        "strategy",
    ])?;
    let (rate_per_sec, burst) = rate(s)?;
    Ok(QueueDefaults {
        config: QueueConfig {
            weight: s.integer("weight", 1, MAX_WEIGHT)?.unwrap_or(1) as u32,
            max_running: count(s, "max_running")?,
            rate_per_sec,
            burst,
            max_per_key: count(s, "max_per_key")?,
        },
        strategy: strategy(s)?,
        max_depth: s.integer("max_depth", 1, i64::MAX)?.map(|n| n as u64),
    })
}

fn parse_type(s: &Section<'_>) -> Result<TypeDefaults> {
    s.only(&["max_running", "rate_per_sec", "burst", "strategy"])?;
    let (rate_per_sec, burst) = rate(s)?;
    Ok(TypeDefaults {
        config: TypeConfig {
            max_running: count(s, "max_running")?,
            rate_per_sec,
            burst,
        },
        strategy: strategy(s)?,
    })
}

/// A limit of at least 1.
fn count(s: &Section<'_>, k: &str) -> Result<Option<u32>> {
    Ok(s.integer(k, 1, i64::from(u32::MAX))?.map(|n| n as u32))
}

/// `rate_per_sec` (an integer or a float, above 0) and its `burst`.
fn rate(s: &Section<'_>) -> Result<(Option<f64>, Option<u32>)> {
    let rate = match s.table.get("rate_per_sec") {
        None => None,
        Some(toml::Value::Integer(i)) => Some(*i as f64),
        Some(toml::Value::Float(f)) => Some(*f),
        Some(v) => return Err(s.wrong_type("rate_per_sec", "a number", v)),
    };
    if let Some(r) = rate
        && !(r > 0.0 && r <= MAX_RATE)
    {
        return Err(s.error(
            "rate_per_sec",
            format!("must be above 0 and at most {MAX_RATE}, got {r}"),
        ));
    }
    let burst = count(s, "burst")?;
    if burst.is_some() && rate.is_none() {
        return Err(s.error("burst", "applies to rate_per_sec, which is not set"));
    }
    Ok((rate, burst))
}

fn strategy(s: &Section<'_>) -> Result<Option<Strategy>> {
    let Some(name) = s.string("strategy")? else {
        return Ok(None);
    };
    if let Some(st) = Strategy::parse(&name) {
        if st.fans_out() {
            return Err(s.error(
                "strategy",
                format!(
                    "{name:?} cannot be a default: a task asks for it (with shards for sharding)"
                ),
            ));
        }
        return Ok(Some(st));
    }
    let names: Vec<&str> = Strategy::ALL.iter().map(|st| st.as_str()).collect();
    Err(s.error(
        "strategy",
        format!("unknown strategy {name:?}; one of {}", names.join(", ")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        match parse("d.toml", text) {
            Ok(s) => panic!("{text:?} parsed: {s:?}"),
            Err(e) => {
                let e = format!("{e:#}");
                assert!(!e.contains('\n'), "not one line: {e}");
                e
            }
        }
    }

    #[test]
    fn a_full_config_parses() {
        let s = parse(
            "d.toml",
            r#"
            [queues.critical]
            weight = 5
            max_running = 20
            rate_per_sec = 50
            burst = 10
            max_per_key = 1
            max_depth = 500
            strategy = "least_loaded"

            [queues."bulk.v2"]

            [types."report.render"]
            max_running = 2
            rate_per_sec = 0.5
            strategy = "weighted_round_robin"
            "#,
        )
        .unwrap();
        let critical = &s.queues["critical"];
        assert_eq!(critical.max_depth, Some(500));
        assert_eq!(
            critical.config,
            QueueConfig {
                weight: 5,
                max_running: Some(20),
                rate_per_sec: Some(50.0),
                burst: Some(10),
                max_per_key: Some(1),
            }
        );
        assert_eq!(critical.strategy, Some(Strategy::LeastLoaded));
        assert_eq!(s.queues["bulk.v2"], QueueDefaults::default());
        let render = &s.types["report.render"];
        assert_eq!(render.config.max_running, Some(2));
        assert_eq!(render.config.rate_per_sec, Some(0.5));
        assert_eq!(render.config.burst, None);
        assert_eq!(render.strategy, Some(Strategy::WeightedRoundRobin));
        assert_eq!(parse("d.toml", "").unwrap(), QueueSettings::default());
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let cases = [
            (
                "listen = \"x\"",
                "d.toml: listen: unknown key (expected queues or types)",
            ),
            (
                "[queues.a]\nmax_runing = 2",
                "d.toml: queues.a.max_runing: unknown key (expected weight,",
            ),
            (
                "[types.a]\nweight = 2",
                "d.toml: types.a.weight: unknown key (expected max_running,",
            ),
            (
                "[queues.a]\nmax_running = 0",
                "d.toml: queues.a.max_running: must be from 1 to 4294967295, got 0",
            ),
            (
                "[queues.a]\nmax_running = \"2\"",
                "d.toml: queues.a.max_running: must be an integer, not string",
            ),
            (
                "[queues.a]\nweight = 1001",
                "d.toml: queues.a.weight: must be from 1 to 1000, got 1001",
            ),
            (
                "[queues.a]\nrate_per_sec = 0",
                "d.toml: queues.a.rate_per_sec: must be above 0",
            ),
            (
                "[types.a]\nrate_per_sec = \"fast\"",
                "d.toml: types.a.rate_per_sec: must be a number, not string",
            ),
            (
                "[queues.a]\nburst = 3",
                "d.toml: queues.a.burst: applies to rate_per_sec, which is not set",
            ),
            (
                "[queues.a]\nstrategy = \"fastest\"",
                "d.toml: queues.a.strategy: unknown strategy \"fastest\"; one of round_robin,",
            ),
            (
                "[types.a]\nstrategy = \"broadcast\"",
                "d.toml: types.a.strategy: \"broadcast\" cannot be a default",
            ),
            (
                "[queues.\"a b\"]",
                "d.toml: queues.\"a b\": is not a valid queue name",
            ),
            (
                "[types.\"a/b\"]",
                "d.toml: types.\"a/b\": is not a valid task type",
            ),
            ("queues = 3", "d.toml: queues: must be a table, not integer"),
            (
                "[queues]\na = 1",
                "d.toml: queues.a: must be a table, not integer",
            ),
            ("[queues.a\n", "d.toml: line 1, column"),
        ];
        for (text, expected) in cases {
            let e = error_of(text);
            assert!(
                e.starts_with(expected),
                "{text:?}:\n  got  {e}\n  want {expected}"
            );
        }
    }
}
