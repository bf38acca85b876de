//! `dispatch submit`: one task from flags (optionally waiting for its end,
//! with an exit code that says how it ended), or many from JSON lines on
//! stdin (`--batch`), sent in chunks through `POST /v1/tasks/batch`.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use dispatch_client::{Client, ClientError};
use dispatch_proto::{BackoffJson, SubmitTask, TaskJson, TaskRef};

use crate::Exit;
use crate::cli::SubmitArgs;
use crate::output;

/// Exit code of `submit --wait` when the task ended `dead`.
pub(crate) const EXIT_DEAD: u8 = 3;
/// Exit code of `submit --wait` when the task ended `cancelled`.
pub(crate) const EXIT_CANCELLED: u8 = 4;
/// Exit code of `submit --wait` when the wait ran out first.
pub(crate) const EXIT_WAIT_TIMEOUT: u8 = 5;

/// Runs `dispatch submit`.
pub(crate) async fn run(client: &Client, args: SubmitArgs, json: bool) -> Result<()> {
    if args.batch {
        return batch(client, args.chunk as usize, json).await;
    }
    let wait = args.wait.then_some(Duration::from_secs(args.wait_timeout));
    let req = request(args)?;
    let (mut task, created) = client.submit(&req).await?;
    let Some(timeout) = wait else {
        if json {
            output::print_json(&task)?;
        } else {
            let verb = if created {
                "submitted"
            } else {
                "already submitted (idempotency key) as"
            };
            println!("{verb} task {} ({})", task.id, task.state);
        }
        return Ok(());
    };
    task = client
        .wait(&task.id, timeout)
        .await
        .map_err(crate::commands::about(format!("task {}", task.id)))?;
    if json {
        output::print_json(&task)?;
    } else {
        output::print_task(&task);
    }
    match ending(&task) {
        Ending::Succeeded => Ok(()),
        Ending::Dead => Err(Exit {
            code: EXIT_DEAD,
            message: (!json).then(|| format!("task {} ended dead", task.id)),
        }
        .into()),
        Ending::Cancelled => Err(Exit {
            code: EXIT_CANCELLED,
            message: (!json).then(|| format!("task {} ended cancelled", task.id)),
        }
        .into()),
        Ending::StillLive => Err(Exit {
            code: EXIT_WAIT_TIMEOUT,
            message: Some(format!(
                "timed out after {} s waiting for task {} (still {}); raise --wait-timeout \
                 or look again with `dispatch task {}`",
                timeout.as_secs(),
                task.id,
                task.state,
                task.id
            )),
        }
        .into()),
    }
}

/// How a waited-for task ended.
enum Ending {
    Succeeded,
    Dead,
    Cancelled,
    /// Not ended: the wait ran out.
    StillLive,
}

fn ending(t: &TaskJson) -> Ending {
    match t.state.as_str() {
        "succeeded" => Ending::Succeeded,
        "dead" => Ending::Dead,
        "cancelled" => Ending::Cancelled,
        _ => Ending::StillLive,
    }
}

/// The submission the flags describe.
fn request(a: SubmitArgs) -> Result<SubmitTask> {
    let kind = a.kind.context("give the task's TYPE")?;
    let payload = serde_json::value::RawValue::from_string(a.payload)
        .context("--payload is not valid JSON")?;
    let labels = if a.labels.is_empty() {
        None
    } else {
        let mut map = BTreeMap::new();
        for l in &a.labels {
            let (k, v) = l
                .split_once('=')
                .with_context(|| format!("--label {l:?}: expected KEY=VALUE"))?;
            map.insert(k.to_owned(), v.to_owned());
        }
        Some(map)
    };
    Ok(SubmitTask {
        priority: a.priority,
        queue: a.queue,
        run_at: a.run_at,
        delay_ms: a
            .delay
            .map(|d| duration_ms(&d).with_context(|| format!("--delay {d:?}")))
            .transpose()?,
        timeout_ms: a
            .timeout
            .map(|d| duration_ms(&d).with_context(|| format!("--timeout {d:?}")))
            .transpose()?,
        max_attempts: a.max_attempts,
        backoff: a
            .backoff
            .map(|b| backoff(&b).with_context(|| format!("--backoff {b:?}")))
            .transpose()?,
        idempotency_key: a.idempotency_key,
        routing_key: a.routing_key,
        strategy: a.strategy,
        labels,
        depends_on: (!a.depends_on.is_empty()).then_some(a.depends_on),
        shards: a.shards,
        ..SubmitTask::new(&kind, payload)
    })
}

/// A duration in milliseconds: a bare integer is milliseconds, else an
/// integer with a unit: `ms`, `s`, `m`, `h` or `d`.
pub(crate) fn duration_ms(s: &str) -> Result<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        bail!("expected milliseconds or a number with a unit (ms, s, m, h, d), like 30s");
    }
    let n: i64 = digits.parse().context("the number is too large")?;
    let scale = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        u => bail!("unknown unit {u:?}; use ms, s, m, h or d"),
    };
    n.checked_mul(scale).context("the duration is too large")
}

/// `INITIAL[,MAX[,MULTIPLIER]]`: durations and a factor.
fn backoff(s: &str) -> Result<BackoffJson> {
    let mut parts = s.split(',');
    let initial = parts.next().filter(|p| !p.trim().is_empty());
    let initial_ms = initial.map(duration_ms).transpose()?;
    let max_ms = parts.next().map(duration_ms).transpose()?;
    let multiplier = parts
        .next()
        .map(|m| {
            m.trim()
                .parse::<f64>()
                .with_context(|| format!("multiplier {m:?} is not a number"))
        })
        .transpose()?;
    if parts.next().is_some() {
        bail!("expected INITIAL[,MAX[,MULTIPLIER]], e.g. 1s,5m,2");
    }
    if initial_ms.is_none() {
        bail!("expected INITIAL[,MAX[,MULTIPLIER]], e.g. 1s,5m,2");
    }
    Ok(BackoffJson {
        initial_ms,
        max_ms,
        multiplier,
    })
}

/// One task read from stdin and the line it came from.
struct Line {
    number: usize,
    task: SubmitTask,
}

/// Reads every task from stdin: one JSON object per line, blank lines
/// skipped; an unreadable line stops everything before anything is sent.
fn read_lines(input: impl std::io::BufRead) -> Result<Vec<Line>> {
    let mut out = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let number = i + 1;
        let line = line.with_context(|| format!("cannot read stdin at line {number}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let task: SubmitTask = serde_json::from_str(&line)
            .with_context(|| format!("stdin line {number} is not a task"))?;
        out.push(Line { number, task });
    }
    if out.is_empty() {
        bail!(
            "no tasks on stdin: give one JSON object per line, e.g. {{\"type\": \"email.send\"}}"
        );
    }
    Ok(out)
}

/// `dispatch submit --batch`: every line of stdin, in chunks.
async fn batch(client: &Client, chunk: usize, json: bool) -> Result<()> {
    let lines = read_lines(std::io::stdin().lock())?;
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(lines.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} tasks submitted ({per_sec}, {eta} left)",
        ) {
            bar.set_style(style);
        }
        Some(bar)
    } else {
        None
    };
    let mut submitted: Vec<TaskRef> = Vec::with_capacity(lines.len());
    for part in lines.chunks(chunk) {
        let tasks = part.iter().map(|l| l.task.clone()).collect();
        let refs = match client.submit_batch_minimal(tasks).await {
            Ok(refs) => refs,
            Err(e) => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                return Err(chunk_error(e, part, &submitted, json));
            }
        };
        if !json {
            for r in &refs {
                match &bar {
                    Some(bar) => bar.suspend(|| println!("{}", r.id)),
                    None => println!("{}", r.id),
                }
            }
        }
        if let Some(bar) = &bar {
            bar.inc(refs.len() as u64);
        }
        submitted.extend(refs);
    }
    if let Some(bar) = &bar {
        bar.finish();
    }
    if json {
        output::print_json(&serde_json::json!({ "tasks": submitted }))?;
    }
    Ok(())
}

/// The error of a refused chunk: which line was at fault (the problem's
/// `tasks[i]` field), and what was already submitted.
fn chunk_error(e: ClientError, part: &[Line], done: &[TaskRef], json: bool) -> anyhow::Error {
    let first = part.first().map_or(0, |l| l.number);
    let last = part.last().map_or(0, |l| l.number);
    let at_fault = match &e {
        ClientError::Api(p) => p
            .field
            .as_deref()
            .and_then(|f| f.strip_prefix("tasks["))
            .and_then(|f| f.split(']').next())
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| part.get(i))
            .map(|l| format!("line {}: ", l.number)),
        _ => None,
    };
    let before = if done.is_empty() {
        "nothing was submitted".to_owned()
    } else if json {
        let ids: Vec<&str> = done.iter().map(|r| r.id.as_str()).collect();
        format!(
            "the {} tasks of the lines before were submitted: {}",
            done.len(),
            ids.join(",")
        )
    } else {
        format!(
            "the {} tasks of the lines before were submitted (ids above)",
            done.len()
        )
    };
    anyhow::Error::new(e).context(format!(
        "{}the chunk of lines {first} to {last} was refused, none of it stored; {before}",
        at_fault.unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_milliseconds_or_a_unit() {
        assert_eq!(duration_ms("1500").unwrap(), 1500);
        assert_eq!(duration_ms("250ms").unwrap(), 250);
        assert_eq!(duration_ms("30s").unwrap(), 30_000);
        assert_eq!(duration_ms("5m").unwrap(), 300_000);
        assert_eq!(duration_ms("1h").unwrap(), 3_600_000);
        assert_eq!(duration_ms("2d").unwrap(), 172_800_000);
        for bad in ["", "s", "1.5s", "3w", "-1", "99999999999999999999"] {
            assert!(duration_ms(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backoff_takes_one_to_three_parts() {
        let b = backoff("1s,5m,2").unwrap();
        assert_eq!(
            (b.initial_ms, b.max_ms, b.multiplier),
            (Some(1000), Some(300_000), Some(2.0))
        );
        let b = backoff("500").unwrap();
        assert_eq!(
            (b.initial_ms, b.max_ms, b.multiplier),
            (Some(500), None, None)
        );
        for bad in ["", ",1s", "1s,2s,x", "1s,2s,2,9"] {
            assert!(backoff(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn batch_lines_skip_blanks_and_name_the_bad_line() {
        let lines =
            read_lines(&b"{\"type\":\"a\"}\n\n{\"type\":\"b\",\"priority\":3}\n"[..]).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].number, 3);
        let err = read_lines(&b"{\"type\":\"a\"}\n{\"prioirty\":1}\n"[..])
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("line 2") && err.contains("prioirty"), "{err}");
    }
}
