//! The client commands: each one request (or a few) to a running server,
//! printed as a table or JSON.
//!
//! A refusal is worded by its status, and a 404 names what was not found
//! (`not found: task 42`) rather than repeating the server's text.

use anyhow::{Context, Result};
use dispatch_client::{Client, ClientError};
use dispatch_proto::{BulkFilter, CreateSchedule, ListTasks, SubmitTask};

use crate::cli::{BulkArgs, ClientOpts, Command, QueueAction, ScheduleAction};
use crate::output;

/// A setting given on the command line as JSON: `none` clears it, a
/// number is a number, anything else a string (the server names what it
/// refuses).
fn setting_value(v: &str) -> serde_json::Value {
    if v == "none" {
        return serde_json::Value::Null;
    }
    if let Ok(n) = v.parse::<u64>() {
        return n.into();
    }
    match v.parse::<f64>() {
        Ok(f) if f.is_finite() => f.into(),
        _ => v.into(),
    }
}

/// Runs a client command with the options in force.
pub(crate) async fn run(command: Command, opts: &ClientOpts) -> Result<()> {
    let server = opts
        .server
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| crate::cli::DEFAULT_SERVER.to_owned());
    let trust = crate::trust_store(opts.ca.as_deref(), server.starts_with("https://"))?;
    let mut client = Client::with_trust(&server, &trust)?;
    if let Some(t) = &opts.token {
        client = client.with_token(t.clone());
    }
    let ca_given = opts.ca.is_some();
    dispatch(&client, command, opts.json)
        .await
        .map_err(|e| explain(e, ca_given))
}

/// What a request was about, for a 404: `task 42`, `schedule nightly`.
#[derive(Debug)]
pub(crate) struct About(pub(crate) String);

impl std::fmt::Display for About {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client error about `what`: a 404 becomes `not found: <what>`.
pub(crate) fn about(what: impl Into<String>) -> impl FnOnce(ClientError) -> anyhow::Error {
    let what = what.into();
    move |e| match e {
        ClientError::Api(ref p) if p.status == 404 => anyhow::Error::new(e).context(About(what)),
        e => anyhow::Error::new(e),
    }
}

/// Words a failed call for people: by the refusal's status, naming what
/// was not found, and with a hint for a missing token or an untrusted
/// certificate.
fn explain(e: anyhow::Error, ca_given: bool) -> anyhow::Error {
    let about = e.downcast_ref::<About>().map(|a| a.0.clone());
    // Only a bare failed call (or one about something) is reworded: an
    // error with context of its own (a refused --batch chunk) says more.
    let Some(client_error) = e.chain().find_map(|c| c.downcast_ref::<ClientError>()) else {
        return e;
    };
    if about.is_none() && e.to_string() != client_error.to_string() {
        return e;
    }
    let message = match client_error {
        ClientError::Api(p) => {
            let detail = &p.detail;
            match p.status {
                401 => format!("unauthorized: {detail} (pass --token or set DISPATCH_TOKEN)"),
                403 => format!("forbidden: {detail}"),
                404 => match about {
                    Some(what) => format!("not found: {what}"),
                    None => format!("not found: {detail}"),
                },
                409 => format!("conflict: {detail}"),
                413 => format!("too large: {detail}"),
                429 => format!("the server is busy: {detail}"),
                400 | 422 => format!("invalid request: {detail}"),
                s => format!("the server answered {s}: {detail}"),
            }
        }
        other if !ca_given && is_certificate_error(other) => format!(
            "the server's certificate is not trusted: if a private CA signed it, pass --ca \
             FILE or set DISPATCH_CA: {other}"
        ),
        _ => return e,
    };
    match client_error {
        ClientError::Api(p) => Refused {
            message,
            problem: p.clone(),
        }
        .into(),
        _ => e.context(message),
    }
}

/// A request the server refused, worded for people; the problem it
/// answered is kept for `--json`.
#[derive(Debug)]
pub(crate) struct Refused {
    /// What to print.
    pub(crate) message: String,
    /// The server's problem+json answer.
    pub(crate) problem: dispatch_proto::Problem,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refused {}

/// True when `e` failed on the server's certificate (unknown issuer, wrong
/// name, expired), as rustls words it somewhere in the error's causes.
fn is_certificate_error(e: &ClientError) -> bool {
    let mut cause: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cause {
        if c.to_string().contains("invalid peer certificate") {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Prints `v` as JSON or, for people, with `human`.
fn show<T: serde::Serialize>(json: bool, v: &T, human: impl FnOnce(&T)) -> Result<()> {
    if json {
        output::print_json(v)
    } else {
        human(v);
        Ok(())
    }
}

/// The filters of a bulk retry or cancel.
fn bulk_filter(f: BulkArgs) -> BulkFilter {
    BulkFilter {
        state: f.state,
        kind: f.kind,
        queue: f.queue,
    }
}

async fn dispatch(client: &Client, command: Command, json: bool) -> Result<()> {
    match command {
        Command::Submit(args) => crate::submit::run(client, *args, json).await,
        Command::Task {
            id, attempts: true, ..
        } => {
            let list = client
                .attempts(&id)
                .await
                .map_err(about(format!("task {id}")))?;
            show(json, &list, |l| {
                println!(
                    "{:<8} {:<20} {:<24} {:<24} {:<10} {:<8} ERROR",
                    "ATTEMPT", "WORKER", "COLLECTED", "FINISHED", "OUTCOME", "RETRY_MS"
                );
                for a in &l.attempts {
                    println!(
                        "{:<8} {:<20} {:<24} {:<24} {:<10} {:<8} {}",
                        a.attempt,
                        a.worker_name,
                        a.collected_at,
                        a.finished_at.as_deref().unwrap_or("-"),
                        a.outcome.as_deref().unwrap_or("running"),
                        a.retry_delay_ms.map_or("-".to_owned(), |d| d.to_string()),
                        a.error.as_deref().unwrap_or(""),
                    );
                }
            })
        }
        Command::Task { id, .. } => {
            let task = client
                .task(&id)
                .await
                .map_err(about(format!("task {id}")))?;
            show(json, &task, output::print_task)
        }
        Command::Tasks {
            state,
            kind,
            queue,
            limit,
            cursor,
            ..
        } => {
            let q = ListTasks {
                state,
                kind,
                queue,
                limit: limit.map(|l| l.to_string()),
                cursor,
            };
            let page = client.tasks(&q).await?;
            show(json, &page, output::print_tasks)
        }
        Command::Cancel { id: Some(id), .. } => {
            let task = client
                .cancel(&id)
                .await
                .map_err(about(format!("task {id}")))?;
            show(json, &task, |t| println!("cancelled task {}", t.id))
        }
        Command::Cancel { filter, .. } => {
            let n = client.cancel_matching(&bulk_filter(filter)).await?;
            show(json, &n, |n| println!("cancelled {} tasks", n.count))
        }
        Command::Retry { id: Some(id), .. } => {
            let task = client
                .retry(&id)
                .await
                .map_err(about(format!("task {id}")))?;
            show(json, &task, |t| {
                println!("requeued task {} ({})", t.id, t.state)
            })
        }
        Command::Retry { filter, .. } => {
            let n = client.retry_matching(&bulk_filter(filter)).await?;
            show(json, &n, |n| println!("requeued {} dead tasks", n.count))
        }
        Command::Workers { .. } => {
            let list = client.workers().await?;
            show(json, &list, output::print_workers)
        }
        Command::Queues { .. } => {
            let list = client.queues().await?;
            show(json, &list, output::print_queues)
        }
        Command::Queue { action, .. } => {
            let (q, verb) = match action {
                QueueAction::Pause { name } => (client.pause_queue(&name).await?, "paused"),
                QueueAction::Resume { name } => (client.resume_queue(&name).await?, "resumed"),
                QueueAction::Set {
                    name,
                    weight,
                    max_running,
                    rate_per_sec,
                    burst,
                    max_per_key,
                    max_depth,
                    strategy,
                } => {
                    let mut changes = serde_json::Map::new();
                    for (field, value) in [
                        ("weight", weight),
                        ("max_running", max_running),
                        ("rate_per_sec", rate_per_sec),
                        ("burst", burst),
                        ("max_per_key", max_per_key),
                        ("max_depth", max_depth),
                        ("strategy", strategy),
                    ] {
                        if let Some(v) = value {
                            changes.insert(field.to_owned(), setting_value(&v));
                        }
                    }
                    if changes.is_empty() {
                        anyhow::bail!(
                            "nothing to change: give at least one of --weight, --max-running, \
                             --rate-per-sec, --burst, --max-per-key, --max-depth, --strategy"
                        );
                    }
                    (client.update_queue(&name, &changes).await?, "updated")
                }
            };
            show(json, &q, |q| {
                let c = &q.counts;
                println!(
                    "{verb} queue {} ({} queued, {} running)",
                    q.name, c.queued, c.running
                );
            })
        }
        Command::Schedules { .. } => {
            let list = client.schedules().await?;
            show(json, &list, output::print_schedules)
        }
        Command::Schedule {
            action:
                ScheduleAction::Create {
                    name,
                    cron,
                    timezone,
                    kind,
                    payload,
                    queue,
                    priority,
                    misfire,
                    catch_up_limit,
                    paused,
                },
            ..
        } => {
            let payload = serde_json::value::RawValue::from_string(payload)
                .context("--payload is not valid JSON")?;
            let req = CreateSchedule {
                name: Some(name),
                cron: Some(cron),
                timezone: Some(timezone),
                task: Some(SubmitTask {
                    queue,
                    priority,
                    ..SubmitTask::new(&kind, payload)
                }),
                misfire,
                catch_up_limit,
                paused: Some(paused),
            };
            let s = client.create_schedule(&req).await?;
            show(json, &s, |s| {
                let next = match &s.next_fire_at {
                    Some(at) => output::fire_time(at, &s.timezone),
                    None => "- (paused)".to_owned(),
                };
                println!("created schedule {}; next fire {next}", s.name);
            })
        }
        Command::Schedule {
            action:
                ScheduleAction::Set {
                    name,
                    cron,
                    timezone,
                    task,
                    misfire,
                    catch_up_limit,
                },
            ..
        } => {
            let task = task
                .map(|t| serde_json::from_str(&t))
                .transpose()
                .context("--task is not a JSON task template")?;
            let req = dispatch_proto::PatchSchedule {
                cron,
                timezone,
                task,
                misfire,
                catch_up_limit,
                ..Default::default()
            };
            let s = client
                .update_schedule(&name, &req)
                .await
                .map_err(about(format!("schedule {name}")))?;
            show(json, &s, |s| println!("changed schedule {}", s.name))
        }
        Command::Schedule {
            action: ScheduleAction::Pause { name },
            ..
        } => {
            let s = client
                .pause_schedule(&name)
                .await
                .map_err(about(format!("schedule {name}")))?;
            show(json, &s, |s| println!("paused schedule {}", s.name))
        }
        Command::Schedule {
            action: ScheduleAction::Resume { name },
            ..
        } => {
            let s = client
                .resume_schedule(&name)
                .await
                .map_err(about(format!("schedule {name}")))?;
            show(json, &s, |s| {
                let next = s
                    .next_fire_at
                    .as_deref()
                    .map_or("-".to_owned(), |at| output::fire_time(at, &s.timezone));
                println!("resumed schedule {}; next fire {next}", s.name)
            })
        }
        Command::Schedule {
            action: ScheduleAction::Trigger { name },
            ..
        } => {
            let t = client
                .trigger_schedule(&name)
                .await
                .map_err(about(format!("schedule {name}")))?;
            show(json, &t, |t| {
                println!("triggered schedule {name}: task {} ({})", t.id, t.state)
            })
        }
        Command::Schedule {
            action: ScheduleAction::Delete { name },
            ..
        } => {
            client
                .delete_schedule(&name)
                .await
                .map_err(about(format!("schedule {name}")))?;
            if json {
                output::print_json(&serde_json::json!({"deleted": name}))
            } else {
                println!("deleted schedule {name}");
                Ok(())
            }
        }
        Command::Server(_)
        | Command::Demo { .. }
        | Command::Worker { .. }
        | Command::Token { .. }
        | Command::Completions { .. }
        | Command::Man { .. } => {
            unreachable!("not a client command")
        }
    }
}
