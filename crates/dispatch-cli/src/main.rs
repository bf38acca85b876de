//! `dispatch`: the one binary of Dispatch.
//!
//! `dispatch server` runs the scheduler (`--config dispatch.toml` for queue
//! and type settings, see `server_config`); `dispatch submit`, `task`,
//! `tasks`, `cancel`, `workers`, `queues`, `queue`, `schedules` and
//! `schedule` talk to a running one over its REST API;
//! `dispatch demo` starts a server on a throw-away store with a few workers
//! and shows tasks flowing; `dispatch worker --config worker.toml` runs
//! tasks with shell commands or HTTP calls, as the file says;
//! `dispatch token create` makes a bearer token for `dispatch server
//! --tokens`, and `--token` / `DISPATCH_TOKEN` sends one. `dispatch server
//! --tls-cert --tls-key` serves HTTPS; `--ca` / `DISPATCH_CA` makes client
//! commands and `dispatch worker` trust a private CA. Errors are `anyhow`
//! with context, printed on one line.

mod demo;
mod output;
mod server_config;
mod server_limits;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use dispatch_client::{Client, ClientError};
use dispatch_proto::{CreateSchedule, ListTasks, SubmitTask};

#[derive(Parser)]
#[command(
    name = "dispatch",
    version,
    about = "A distributed task scheduler and dispatcher"
)]
struct Cli {
    /// Server URL for client commands.
    #[arg(
        long,
        global = true,
        env = "DISPATCH_SERVER",
        default_value = "http://127.0.0.1:7070"
    )]
    server: String,
    /// Bearer token for a server started with `--tokens`.
    #[arg(long, global = true, env = "DISPATCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM file of a CA certificate to trust, besides the system's, for an
    /// https:// server (e.g. the private CA that signed its certificate).
    #[arg(long, global = true, env = "DISPATCH_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    /// Acknowledge a write after it is fsynced (group commit).
    Durable,
    /// Acknowledge after the commit, without waiting for fsync.
    Relaxed,
}

#[derive(Subcommand)]
enum Command {
    /// Run the scheduler on the embedded store.
    Server {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: SocketAddr,
        /// Folder of the embedded store.
        #[arg(long, default_value = "./dispatch-data")]
        data: PathBuf,
        /// A worker silent for this long is declared dead.
        #[arg(long, default_value_t = 10_000)]
        lease_ms: u64,
        /// Largest request body, in bytes.
        #[arg(long, default_value_t = 10 * 1024 * 1024)]
        max_body_bytes: usize,
        /// When writes are acknowledged.
        #[arg(long, value_enum, default_value = "durable")]
        durability: DurabilityArg,
        /// How long finished tasks and their results are kept (default 7
        /// days).
        #[arg(long, default_value_t = 7 * 24 * 3_600_000)]
        retention_ms: u64,
        /// Queue and task type settings (TOML): weights, concurrency and
        /// rate limits, default strategies.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Token file (SHA-256 digests, see `dispatch token create`): every
        /// endpoint but /healthz then needs a bearer token.
        #[arg(long)]
        tokens: Option<PathBuf>,
        /// Allow listening beyond loopback without --tokens.
        #[arg(long)]
        insecure: bool,
        /// Most live tasks the server holds; submissions beyond answer 429.
        #[arg(long, default_value_t = 1_000_000)]
        max_live_tasks: usize,
        /// Most memory live tasks may take, in MiB (each is charged its
        /// payload and strings plus a fixed overhead); submissions beyond
        /// answer 429.
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
        max_memory_mb: u64,
        /// Append admin actions and refused requests to FILE, one JSON
        /// line each.
        #[arg(long, value_name = "FILE")]
        audit_log: Option<PathBuf>,
        /// Serve HTTPS (REST and gRPC) with this PEM certificate chain, the
        /// server's certificate first; needs --tls-key.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        #[command(flatten)]
        limits: server_limits::ServerLimits,
    },
    /// Manage bearer tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Submit a task.
    Submit {
        /// Task type.
        #[arg(value_name = "TYPE")]
        kind: String,
        /// Payload, as JSON.
        #[arg(long, default_value = "null")]
        payload: String,
        /// Priority, -100..=100 (higher runs first).
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i64>,
        /// Queue.
        #[arg(long)]
        queue: Option<String>,
        /// Run no earlier than this many milliseconds from now.
        #[arg(long)]
        delay_ms: Option<i64>,
        /// Attempts before the task is dead.
        #[arg(long)]
        max_attempts: Option<i64>,
        /// Per-attempt time limit.
        #[arg(long)]
        timeout_ms: Option<i64>,
        /// Deduplication key.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait until the task ends and print it.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 60)]
        wait_timeout: u64,
    },
    /// Show one task.
    Task {
        /// Task id.
        id: String,
    },
    /// List tasks, newest first.
    Tasks {
        /// Only this state (scheduled, queued, running, succeeded, dead, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only this type.
        #[arg(long = "type")]
        kind: Option<String>,
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Page size (1..=1000).
        #[arg(long)]
        limit: Option<u32>,
        /// Continue after this cursor.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Cancel a task.
    Cancel {
        /// Task id.
        id: String,
    },
    /// Requeue a dead task with a fresh set of attempts.
    Retry {
        /// Task id.
        id: String,
    },
    /// List registered workers.
    Workers,
    /// List queues with their settings and tasks by state.
    Queues,
    /// Pause or resume a queue.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// List cron schedules.
    Schedules,
    /// Create or delete a cron schedule.
    Schedule {
        #[command(subcommand)]
        action: ScheduleAction,
    },
    /// Run tasks with shell commands or HTTP calls, as a config file says.
    Worker {
        /// The worker config (TOML): one command or URL per task type.
        #[arg(long)]
        config: PathBuf,
    },
    /// Start a server on a temporary store with a few workers, submit a few
    /// hundred tasks and show them flow.
    Demo {
        /// Tasks to submit.
        #[arg(long, default_value_t = 400)]
        tasks: usize,
        /// Workers to start.
        #[arg(long, default_value_t = 4)]
        workers: usize,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a token: print it once, append its SHA-256 digest to the
    /// token file (created with mode 0600).
    Create {
        /// Scopes, comma-separated: submit, work, admin.
        #[arg(long)]
        scope: String,
        /// A name for the token, kept in the file.
        #[arg(long)]
        name: Option<String>,
        /// The token file the server reads (`dispatch server --tokens`).
        #[arg(long)]
        tokens: PathBuf,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// Stop dispatching the queue's tasks (running ones go on); survives
    /// restarts.
    Pause {
        /// The queue (any name: a queue exists once named).
        name: String,
    },
    /// Dispatch the queue's tasks again.
    Resume {
        /// The queue.
        name: String,
    },
}

#[derive(Subcommand)]
enum ScheduleAction {
    /// Create a schedule that submits a task at every fire.
    Create {
        /// Unique name (letters, digits and . _ : -).
        name: String,
        /// Cron expression: 5 fields, or 6 with seconds first.
        #[arg(long)]
        cron: String,
        /// IANA time zone of the expression.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// Type of the task each fire submits.
        #[arg(long = "type", value_name = "TYPE")]
        kind: String,
        /// Payload of each task, as JSON.
        #[arg(long, default_value = "null")]
        payload: String,
        /// Queue of each task.
        #[arg(long)]
        queue: Option<String>,
        /// Priority of each task, -100..=100.
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i64>,
        /// What to do with fires missed while the server was down: skip,
        /// fire_once or catch_up.
        #[arg(long)]
        misfire: Option<String>,
        /// Most missed fires one catch-up runs.
        #[arg(long)]
        catch_up_limit: Option<i64>,
        /// Create it paused: it does not fire.
        #[arg(long)]
        paused: bool,
    },
    /// Delete a schedule; the tasks of its past fires stay.
    Delete {
        /// Its name.
        name: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// An error and its causes on one line, without repeating a cause that the
/// message already includes.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
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

fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

async fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Server {
            listen,
            data,
            lease_ms,
            max_body_bytes,
            durability,
            retention_ms,
            config: config_file,
            tokens,
            insecure,
            max_live_tasks,
            max_memory_mb,
            audit_log,
            tls_cert,
            tls_key,
            limits,
        } => {
            init_logs("info");
            if lease_ms == 0 {
                bail!("--lease-ms must be at least 1");
            }
            let mut config = dispatch_server::ServerConfig::new(listen, data);
            if let Some(path) = config_file {
                config.queue_settings = server_config::load(&path)?;
            }
            if let Some(path) = tokens {
                config.tokens = Some(dispatch_server::Tokens::load(&path)?);
            }
            config.insecure = insecure;
            config.max_live_tasks = max_live_tasks;
            config.max_memory_bytes = max_memory_mb.saturating_mul(1 << 20);
            config.audit_log = audit_log;
            limits.apply(&mut config);
            if let (Some(cert), Some(key)) = (tls_cert, tls_key) {
                config.tls = Some(dispatch_server::TlsFiles { cert, key });
            }
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            config.lease_ms = lease_ms;
            config.retention_ms = retention_ms;
            config.max_body_bytes = max_body_bytes;
            config.durability = match durability {
                DurabilityArg::Durable => dispatch_server::Durability::Durable,
                DurabilityArg::Relaxed => dispatch_server::Durability::Relaxed,
            };
            let server = dispatch_server::start(config).await?;
            println!(
                "dispatch server listening on {scheme}://{}",
                server.local_addr()
            );
            server.run_until_signal().await;
            Ok(())
        }
        Command::Demo { tasks, workers } => demo::run(tasks, workers).await,
        Command::Token {
            action:
                TokenAction::Create {
                    scope,
                    name,
                    tokens,
                },
        } => create_token(&scope, name.as_deref(), &tokens),
        Command::Worker { config } => {
            let server = worker::server_given().then_some(cli.server);
            worker::run(&config, server, cli.token, cli.ca.as_deref()).await
        }
        command => {
            let trust = trust_store(cli.ca.as_deref(), cli.server.starts_with("https://"))?;
            let mut client = Client::with_trust(&cli.server, &trust)?;
            if let Some(t) = cli.token {
                client = client.with_token(t);
            }
            client_command(&client, command, json).await.map_err(|e| {
                match e.downcast::<ClientError>() {
                    Ok(ClientError::Api(p)) if p.status == 401 => anyhow::anyhow!(
                        "the server refused: {} (pass --token or set DISPATCH_TOKEN)",
                        p.detail
                    ),
                    Ok(ClientError::Api(p)) => anyhow::anyhow!("the server refused: {}", p.detail),
                    Ok(other) if cli.ca.is_none() && is_certificate_error(&other) => {
                        anyhow::Error::new(other).context(
                            "the server's certificate is not trusted: if a private CA signed it, \
                             pass --ca FILE or set DISPATCH_CA",
                        )
                    }
                    Ok(other) => anyhow::Error::new(other),
                    Err(e) => e,
                }
            })
        }
    }
}

/// The certificate authorities to trust: the system's when `needed` (an
/// https:// URL), plus the `--ca` file when given (read and checked even for
/// http://, so that a wrong path is reported).
pub(crate) fn trust_store(
    ca: Option<&std::path::Path>,
    needed: bool,
) -> Result<dispatch_client::TrustStore> {
    use dispatch_client::TrustStore;
    match ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the CA certificate {}", path.display()))?;
            TrustStore::with_ca_pem(&pem).with_context(|| format!("--ca {}", path.display()))
        }
        None if needed => TrustStore::system().context("cannot verify an https:// server"),
        None => Ok(TrustStore::empty()),
    }
}

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

/// `dispatch token create`: a new token on stdout, its digest in the file.
fn create_token(scope: &str, name: Option<&str>, file: &std::path::Path) -> Result<()> {
    use std::io::Write as _;
    let scopes =
        dispatch_server::Scope::parse_list(scope).map_err(|e| anyhow::anyhow!("--scope: {e}"))?;
    if let Some(n) = name
        && (n.is_empty() || n.chars().any(|c| c.is_whitespace() || c == '#'))
    {
        bail!("--name must be one word, without spaces or #");
    }
    let token = dispatch_server::auth::generate_token().map_err(|e| anyhow::anyhow!(e))?;
    let line = dispatch_server::auth::token_line(&token, &scopes, name);
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options
        .open(file)
        .with_context(|| format!("cannot open the token file {}", file.display()))?;
    // Begin on a new line even if the file's last line has no newline.
    let needs_newline = std::fs::read(file)
        .map(|b| b.last().is_some_and(|c| *c != b'\n'))
        .unwrap_or(false);
    let text = if needs_newline {
        format!("\n{line}\n")
    } else {
        format!("{line}\n")
    };
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write the token file {}", file.display()))?;
    println!("{token}");
    eprintln!(
        "token with scope {scope} added to {}; it is shown only once",
        file.display()
    );
    Ok(())
}

async fn client_command(client: &Client, command: Command, json: bool) -> Result<()> {
    match command {
        Command::Submit {
            kind,
            payload,
            priority,
            queue,
            delay_ms,
            max_attempts,
            timeout_ms,
            idempotency_key,
            wait,
            wait_timeout,
        } => {
            let payload = serde_json::value::RawValue::from_string(payload)
                .context("--payload is not valid JSON")?;
            let req = SubmitTask {
                priority,
                queue,
                delay_ms,
                max_attempts,
                timeout_ms,
                idempotency_key,
                ..SubmitTask::new(&kind, payload)
            };
            let (mut task, created) = client.submit(&req).await?;
            if wait {
                task = client
                    .wait(&task.id, Duration::from_secs(wait_timeout))
                    .await?;
            }
            if json {
                output::print_json(&task)?;
            } else if wait {
                output::print_task(&task);
            } else {
                let verb = if created {
                    "submitted"
                } else {
                    "already submitted (idempotency key) as"
                };
                println!("{verb} task {} ({})", task.id, task.state);
            }
            Ok(())
        }
        Command::Task { id } => {
            let task = client.task(&id).await?;
            show(json, &task, output::print_task)
        }
        Command::Tasks {
            state,
            kind,
            queue,
            limit,
            cursor,
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
        Command::Cancel { id } => {
            let task = client.cancel(&id).await?;
            show(json, &task, |t| println!("cancelled task {}", t.id))
        }
        Command::Retry { id } => {
            let task = client.retry(&id).await?;
            show(json, &task, |t| {
                println!("requeued task {} ({})", t.id, t.state)
            })
        }
        Command::Workers => {
            let list = client.workers().await?;
            show(json, &list, output::print_workers)
        }
        Command::Queues => {
            let list = client.queues().await?;
            show(json, &list, output::print_queues)
        }
        Command::Queue { action } => {
            let (q, verb) = match action {
                QueueAction::Pause { name } => (client.pause_queue(&name).await?, "paused"),
                QueueAction::Resume { name } => (client.resume_queue(&name).await?, "resumed"),
            };
            show(json, &q, |q| {
                let c = &q.counts;
                println!(
                    "{verb} queue {} ({} queued, {} running)",
                    q.name, c.queued, c.running
                );
            })
        }
        Command::Schedules => {
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
                let next = s.next_fire_at.as_deref().unwrap_or("- (paused)");
                println!("created schedule {}; next fire {next}", s.name);
            })
        }
        Command::Schedule {
            action: ScheduleAction::Delete { name },
        } => {
            client.delete_schedule(&name).await?;
            if json {
                output::print_json(&serde_json::json!({"deleted": name}))
            } else {
                println!("deleted schedule {name}");
                Ok(())
            }
        }
        Command::Server { .. }
        | Command::Demo { .. }
        | Command::Worker { .. }
        | Command::Token { .. } => {
            unreachable!("handled by run")
        }
    }
}
