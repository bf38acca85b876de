//! The command line: every command, flag and its help text (clap).
//!
//! Client options (`--server`, `--token`, `--ca`, `--json`) belong to the
//! commands that talk to a running server, under their own help heading;
//! they may also come before the command (`dispatch --server URL tasks`).
//! `dispatch worker` takes `--server`, `--token` and `--ca`; `server`,
//! `demo`, `token create`, `completions` and `man` take none of them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The default server of client commands.
pub(crate) const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// Exit codes, as `--help` shows them.
const EXIT_CODES: &str = "\
Exit codes:
  0  success (with submit --wait: the task succeeded)
  1  error: bad input, the server refused, cannot reach the server
  2  usage error (unknown flag, missing argument)
  3  submit --wait: the task ended dead
  4  submit --wait: the task ended cancelled
  5  submit --wait: the wait timed out before the task ended";

#[derive(Parser)]
#[command(
    name = "dispatch",
    version,
    about = "A distributed task scheduler and dispatcher",
    after_help = EXIT_CODES
)]
pub(crate) struct Cli {
    /// Client options given before the command.
    #[command(flatten)]
    pub(crate) client: RootClientOpts,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Client options before the command (`dispatch --server URL tasks`):
/// they apply to client commands only.
#[derive(Args, Clone, Debug, Default)]
#[command(next_help_heading = "Client options (for client commands)")]
pub(crate) struct RootClientOpts {
    /// Server URL [default: http://127.0.0.1:7070]; several replicas
    /// comma-separated (the next is tried when one cannot be reached).
    #[arg(long, env = "DISPATCH_SERVER", value_name = "URL")]
    pub(crate) server: Option<String>,
    /// Bearer token for a server started with `--tokens`.
    #[arg(long, env = "DISPATCH_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// PEM file of a CA certificate to trust, besides the system's, for an
    /// https:// server.
    #[arg(long, env = "DISPATCH_CA", value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// Print JSON instead of tables; an error is then one JSON object on
    /// stderr.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Options of every command that talks to a running server.
#[derive(Args, Clone, Debug, Default)]
#[command(next_help_heading = "Client options")]
pub(crate) struct ClientOpts {
    /// Server URL [default: http://127.0.0.1:7070]; several replicas
    /// comma-separated (the next is tried when one cannot be reached).
    #[arg(long, global = true, env = "DISPATCH_SERVER", value_name = "URL")]
    pub(crate) server: Option<String>,
    /// Bearer token for a server started with `--tokens`.
    #[arg(long, global = true, env = "DISPATCH_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// PEM file of a CA certificate to trust, besides the system's, for an
    /// https:// server (e.g. the private CA that signed its certificate).
    #[arg(long, global = true, env = "DISPATCH_CA", value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// Print JSON instead of tables; an error is then one JSON object on
    /// stderr: {"error": "...", "exit_code": N} (plus "status" and
    /// "problem" when the server refused).
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// The options of `dispatch worker` that reach the scheduler.
#[derive(Args, Clone, Debug, Default)]
#[command(next_help_heading = "Client options")]
pub(crate) struct WorkerClientOpts {
    /// Scheduler URL; wins over the config file's `server` [default: the
    /// file's, else http://127.0.0.1:7070].
    #[arg(long, env = "DISPATCH_SERVER", value_name = "URL")]
    pub(crate) server: Option<String>,
    /// Bearer token (scope `work`) for a server started with `--tokens`.
    #[arg(long, env = "DISPATCH_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// PEM file of a CA certificate to trust, besides the system's, for the
    /// scheduler and the config's https:// endpoints.
    #[arg(long, env = "DISPATCH_CA", value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
}

/// How the server and the worker write their logs on stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// One line of text per event, for people.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`,
    /// `fields`), for log collectors.
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum DurabilityArg {
    /// Acknowledge a write after it is fsynced (group commit).
    Durable,
    /// Acknowledge after the commit, without waiting for fsync.
    Relaxed,
}

/// `dispatch server`'s flags.
#[derive(Args)]
pub(crate) struct ServerArgs {
    /// Address to listen on: IP:PORT or HOST:PORT. A host name is resolved
    /// and the server binds its first IPv4 address (else its first one);
    /// without --tokens, every address the name resolves to must be
    /// loopback.
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
    pub(crate) listen: String,
    /// Folder of the embedded store. The server locks it (file `lock`,
    /// holding its pid) for its whole life: a second server on the same
    /// folder exits at once with an error naming the holder.
    #[arg(long, default_value = "./dispatch-data", conflicts_with = "store")]
    pub(crate) data: PathBuf,
    /// A PostgreSQL database to keep the tasks in, instead of --data:
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`. Several servers
    /// on one database are replicas: one leads, the others stand by and
    /// forward to it, and one takes over when the leader dies.
    #[arg(long, env = "DISPATCH_STORE", value_name = "URL")]
    pub(crate) store: Option<String>,
    /// With --store: the URL the other replicas, clients and workers reach
    /// this server at (default: http://LISTEN-ADDRESS, which must then not
    /// be a wildcard address).
    #[arg(long, value_name = "URL", requires = "store")]
    pub(crate) advertise_url: Option<String>,
    /// With --store: this replica's id among the replicas (default: its
    /// advertised URL).
    #[arg(long, value_name = "ID", requires = "store")]
    pub(crate) replica_id: Option<String>,
    /// With --store: the leader's lease on the database's clock, renewed
    /// every third of it. A dead leader is replaced within about this long.
    #[arg(long, default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(300..))]
    pub(crate) leader_lease_ms: u64,
    /// A worker silent for this long is declared dead.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) lease_ms: u64,
    /// The longest the scheduler's timer sleeps when nothing is due. Run
    /// times, backoffs, leases and timeouts wake it when they fall due;
    /// this tick is a safety net, and the tests raise it to prove so.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) idle_tick_ms: u64,
    /// An HTTP worker must collect (poll) a task assigned to it within this
    /// long; otherwise every task assigned to it and not collected goes
    /// back to the queue, no attempt spent, and it is given nothing until
    /// it polls again.
    #[arg(long, default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) collect_timeout_ms: u64,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub(crate) max_body_bytes: usize,
    /// When writes are acknowledged.
    #[arg(long, value_enum, default_value = "durable")]
    pub(crate) durability: DurabilityArg,
    /// How long finished tasks and their results are kept (default 7
    /// days).
    #[arg(long, default_value_t = 7 * 24 * 3_600_000)]
    pub(crate) retention_ms: u64,
    /// Queue and task type settings (TOML): weights, concurrency and
    /// rate limits, default strategies.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Token file (SHA-256 digests, see `dispatch token create`): every
    /// endpoint but /healthz then needs a bearer token.
    #[arg(long)]
    pub(crate) tokens: Option<PathBuf>,
    /// Allow listening beyond loopback without --tokens.
    #[arg(long)]
    pub(crate) insecure: bool,
    /// Most live tasks the server holds; submissions beyond answer 429.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) max_live_tasks: usize,
    /// Most tasks one request may create, the copies of a broadcast and
    /// the shards of a sharding task included; requests beyond answer 413
    /// before any is built.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_tasks_per_request: u64,
    /// Most memory live tasks may take, in MiB (each is charged its
    /// payload and strings plus a fixed overhead); submissions beyond
    /// answer 429.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_memory_mb: u64,
    /// Append admin actions and refused requests to FILE, one JSON
    /// line each.
    #[arg(long, value_name = "FILE")]
    pub(crate) audit_log: Option<PathBuf>,
    /// Serve HTTPS (REST and gRPC) with this PEM certificate chain, the
    /// server's certificate first; needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Log format on stderr: text, or JSON lines for a log collector
    /// (`RUST_LOG` sets the level in both).
    #[arg(long, value_enum, env = "DISPATCH_LOG_FORMAT", default_value = "text")]
    pub(crate) log_format: LogFormat,
    #[command(flatten)]
    pub(crate) limits: crate::server_limits::ServerLimits,
}

/// `dispatch submit`'s flags.
#[derive(Args)]
#[command(after_help = "\
Durations (--delay, --timeout, --backoff) are milliseconds (`1500`) or a
number with a unit: ms, s, m, h, d (`250ms`, `30s`, `5m`, `1h`, `2d`).

--batch reads one task per line from stdin, each a JSON object with the
fields of POST /v1/tasks (`{\"type\": \"email.send\", \"payload\": {...}}`);
blank lines are skipped. Every line is parsed before anything is sent; the
tasks then go in chunks of --chunk through POST /v1/tasks/batch, each chunk
all or nothing. It prints one id per line (with --json: {\"tasks\":
[{\"id\", \"state\"}, ...]}); on a terminal, a progress bar on stderr.

With --wait it exits 0 only when the task succeeded: 3 when it ended dead,
4 cancelled, 5 when the wait ran out first (see `dispatch --help`).")]
pub(crate) struct SubmitArgs {
    /// Task type (not with --batch).
    #[arg(value_name = "TYPE", required_unless_present = "batch")]
    pub(crate) kind: Option<String>,
    /// Payload, as JSON.
    #[arg(long, default_value = "null")]
    pub(crate) payload: String,
    /// Priority, -100..=100 (higher runs first).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) priority: Option<i64>,
    /// Queue (default `default`).
    #[arg(long)]
    pub(crate) queue: Option<String>,
    /// Run no earlier than this time (RFC 3339, e.g.
    /// 2026-12-01T09:00:00Z).
    #[arg(long, value_name = "TIME", conflicts_with = "delay")]
    pub(crate) run_at: Option<String>,
    /// Run no earlier than this long from now (ms, or 30s, 5m, 1h, 2d).
    #[arg(long, alias = "delay-ms", value_name = "DURATION")]
    pub(crate) delay: Option<String>,
    /// Routing strategy: round_robin, weighted_round_robin, random,
    /// least_loaded, consistent_hash (needs --routing-key), failover,
    /// broadcast, sharding (needs --shards).
    #[arg(long)]
    pub(crate) strategy: Option<String>,
    /// Key of consistent_hash routing and per-key limits.
    #[arg(long, value_name = "KEY")]
    pub(crate) routing_key: Option<String>,
    /// A worker label the task requires, as key=value; repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub(crate) labels: Vec<String>,
    /// A parent task: this one runs once every parent succeeded; repeat
    /// for more.
    #[arg(long = "depends-on", value_name = "ID")]
    pub(crate) depends_on: Vec<String>,
    /// Attempts before the task is dead (default 3).
    #[arg(long)]
    pub(crate) max_attempts: Option<i64>,
    /// Time limit of each attempt (ms, or 30s, 5m, 1h).
    #[arg(long, alias = "timeout-ms", value_name = "DURATION")]
    pub(crate) timeout: Option<String>,
    /// Retry backoff: INITIAL[,MAX[,MULTIPLIER]], durations and a factor,
    /// e.g. `1s,5m,2` (default 1s,5m,2).
    #[arg(long, value_name = "INITIAL[,MAX[,MULT]]")]
    pub(crate) backoff: Option<String>,
    /// Deduplication key: a resubmission with it returns the original.
    #[arg(long)]
    pub(crate) idempotency_key: Option<String>,
    /// Number of shards, with --strategy sharding (1 to 1000).
    #[arg(long)]
    pub(crate) shards: Option<i64>,
    /// Wait until the task ends and print it; the exit code says how it
    /// ended.
    #[arg(long)]
    pub(crate) wait: bool,
    /// Give up waiting after this many seconds (exit code 5).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub(crate) wait_timeout: u64,
    /// Read tasks as JSON lines from stdin and submit them in batches.
    #[arg(long, conflicts_with_all = [
        "kind", "payload", "priority", "queue", "run_at", "delay", "strategy",
        "routing_key", "labels", "depends_on", "max_attempts", "timeout",
        "backoff", "idempotency_key", "shards", "wait",
    ])]
    pub(crate) batch: bool,
    /// Tasks per request with --batch (1 to 10000).
    #[arg(long, default_value_t = 1000, requires = "batch",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) chunk: u32,
    #[command(flatten)]
    pub(crate) client: ClientOpts,
}

/// Filters of a bulk retry or cancel.
#[derive(Args)]
pub(crate) struct BulkArgs {
    /// Only tasks in this state.
    #[arg(long, conflicts_with = "id")]
    pub(crate) state: Option<String>,
    /// Only tasks of this type.
    #[arg(long = "type", value_name = "TYPE", conflicts_with = "id")]
    pub(crate) kind: Option<String>,
    /// Only tasks in this queue.
    #[arg(long, conflicts_with = "id")]
    pub(crate) queue: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the scheduler on the embedded store.
    Server(Box<ServerArgs>),
    /// Manage bearer tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Submit a task, or many with --batch.
    Submit(Box<SubmitArgs>),
    /// Show one task with every field (or, with --attempts, its attempts).
    Task {
        /// Task id.
        id: String,
        /// List the task's attempts instead: number, worker, times,
        /// outcome, error and retry delay.
        #[arg(long)]
        attempts: bool,
        #[command(flatten)]
        client: ClientOpts,
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
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Cancel a task, or every live task matching the filters (scheduled,
    /// queued or running; at least one filter).
    #[command(
        after_help = "Examples:\n  dispatch cancel 42\n  dispatch cancel --queue bulk\n  dispatch cancel --type report.build --state queued"
    )]
    Cancel {
        /// Task id.
        #[arg(required_unless_present_any = ["state", "kind", "queue"])]
        id: Option<String>,
        #[command(flatten)]
        filter: BulkArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Requeue a dead task with a fresh set of attempts, or every dead task
    /// matching the filters (at least one; --state can only be dead).
    #[command(
        after_help = "Examples:\n  dispatch retry 42\n  dispatch retry --state dead --type email.send\n  dispatch retry --queue mail"
    )]
    Retry {
        /// Task id.
        #[arg(required_unless_present_any = ["state", "kind", "queue"])]
        id: Option<String>,
        #[command(flatten)]
        filter: BulkArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List registered workers.
    Workers {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List queues with their settings and tasks by state.
    Queues {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Pause, resume or change a queue.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List cron schedules, with the next fire in UTC and in the
    /// schedule's time zone.
    Schedules {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Create, change, pause, resume, trigger or delete a cron schedule.
    Schedule {
        #[command(subcommand)]
        action: ScheduleAction,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Run tasks with shell commands or HTTP calls, as a config file says.
    Worker {
        /// The worker config (TOML): one command or URL per task type.
        #[arg(long)]
        config: PathBuf,
        /// Log format on stderr: text, or JSON lines.
        #[arg(long, value_enum, env = "DISPATCH_LOG_FORMAT", default_value = "text")]
        log_format: LogFormat,
        #[command(flatten)]
        client: WorkerClientOpts,
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
    /// Print a shell completion script for `dispatch` on stdout.
    #[command(after_help = "\
Install, for example:
  bash: dispatch completions bash > ~/.local/share/bash-completion/completions/dispatch
  zsh:  dispatch completions zsh > \"${fpath[1]}/_dispatch\"
  fish: dispatch completions fish > ~/.config/fish/completions/dispatch.fish")]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page of `dispatch` (roff) on stdout, or write one page
    /// per command into a folder.
    #[command(after_help = "\
Read it with `dispatch man | man -l -`, or install the pages:
  dispatch man --out /usr/local/share/man/man1")]
    Man {
        /// Write dispatch.1 and a page per command (dispatch-server.1, ...)
        /// into this folder (created if missing) instead.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

impl Command {
    /// The command's name, for messages.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Command::Server(_) => "server",
            Command::Token { .. } => "token",
            Command::Submit(_) => "submit",
            Command::Task { .. } => "task",
            Command::Tasks { .. } => "tasks",
            Command::Cancel { .. } => "cancel",
            Command::Retry { .. } => "retry",
            Command::Workers { .. } => "workers",
            Command::Queues { .. } => "queues",
            Command::Queue { .. } => "queue",
            Command::Schedules { .. } => "schedules",
            Command::Schedule { .. } => "schedule",
            Command::Worker { .. } => "worker",
            Command::Demo { .. } => "demo",
            Command::Completions { .. } => "completions",
            Command::Man { .. } => "man",
        }
    }

    /// The client options given after a client command, if it is one.
    pub(crate) fn client_opts(&self) -> Option<&ClientOpts> {
        match self {
            Command::Submit(a) => Some(&a.client),
            Command::Task { client, .. }
            | Command::Tasks { client, .. }
            | Command::Cancel { client, .. }
            | Command::Retry { client, .. }
            | Command::Workers { client }
            | Command::Queues { client }
            | Command::Queue { client, .. }
            | Command::Schedules { client }
            | Command::Schedule { client, .. } => Some(client),
            Command::Server(_)
            | Command::Token { .. }
            | Command::Worker { .. }
            | Command::Demo { .. }
            | Command::Completions { .. }
            | Command::Man { .. } => None,
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum TokenAction {
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
    /// List the tokens of a token file: names, scopes and creation times,
    /// never the secrets (the file holds only their digests).
    List {
        /// The token file.
        #[arg(long)]
        tokens: PathBuf,
        /// One JSON object per token.
        #[arg(long)]
        json: bool,
    },
    /// Remove the tokens named NAME from a token file. A running server
    /// refuses them once it has read the file again (it does within a
    /// second of the change, and on SIGHUP).
    Revoke {
        /// The token's name.
        name: String,
        /// The token file.
        #[arg(long)]
        tokens: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum QueueAction {
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
    /// Change a queue's settings at once, for good (stored: the config
    /// file no longer decides them). Each value may be `none` to clear it.
    Set {
        /// The queue.
        name: String,
        /// Share of the workers under saturation (1 to 1000; none: 1).
        #[arg(long)]
        weight: Option<String>,
        /// Most of its tasks running at once.
        #[arg(long)]
        max_running: Option<String>,
        /// Most of its tasks started per second.
        #[arg(long)]
        rate_per_sec: Option<String>,
        /// Starts the rate limit allows at once.
        #[arg(long)]
        burst: Option<String>,
        /// Most of its tasks running at once per routing key.
        #[arg(long)]
        max_per_key: Option<String>,
        /// Most of its tasks waiting before submissions get 429.
        #[arg(long)]
        max_depth: Option<String>,
        /// Routing strategy of its tasks that name none.
        #[arg(long)]
        strategy: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum ScheduleAction {
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
    /// Change a schedule; what is not given stays.
    Set {
        /// Its name.
        name: String,
        /// A new cron expression.
        #[arg(long)]
        cron: Option<String>,
        /// A new IANA time zone.
        #[arg(long)]
        timezone: Option<String>,
        /// A new task template, as a JSON object (replaces the old one).
        #[arg(long)]
        task: Option<String>,
        /// A new misfire policy: skip, fire_once or catch_up.
        #[arg(long)]
        misfire: Option<String>,
        /// A new catch-up limit.
        #[arg(long)]
        catch_up_limit: Option<i64>,
    },
    /// Stop a schedule's fires until it is resumed.
    Pause {
        /// Its name.
        name: String,
    },
    /// Fire again; fires missed while paused follow the misfire policy.
    Resume {
        /// Its name.
        name: String,
    },
    /// Fire once now, whatever the expression (even when paused).
    Trigger {
        /// Its name.
        name: String,
    },
}
