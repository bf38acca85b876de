//! `dispatch`: the one binary of Dispatch.
//!
//! `dispatch server` runs the scheduler (`--config dispatch.toml` for queue
//! and type settings, see `server_config`); `dispatch submit`, `task`,
//! `tasks`, `cancel`, `retry`, `workers`, `queues`, `queue`, `schedules`
//! and `schedule` talk to a running one over its REST API (`commands`,
//! `submit`); `dispatch demo` starts a server on a throw-away store with a
//! few workers and shows tasks flowing; `dispatch worker --config
//! worker.toml` runs tasks with shell commands or HTTP calls, as the file
//! says; `dispatch token create` makes a bearer token for `dispatch server
//! --tokens`, and `--token` / `DISPATCH_TOKEN` sends one. `dispatch server
//! --tls-cert --tls-key` serves HTTPS; `--ca` / `DISPATCH_CA` makes client
//! commands and `dispatch worker` trust a private CA.
//!
//! The flags live in `cli`. Errors are `anyhow` with context, printed on
//! one line (one JSON object with `--json`); the exit code says what kind
//! of failure it was (see [`cli`]'s `EXIT_CODES`).

mod cli;
mod commands;
mod demo;
mod install_files;
mod output;
mod server_config;
mod server_limits;
mod store;
mod submit;
mod worker;

use std::io::IsTerminal as _;
use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use clap::parser::ValueSource;
use clap::{CommandFactory as _, FromArgMatches as _};
use dispatch_client::ClientError;

use cli::{Cli, ClientOpts, Command, LogFormat, ServerArgs, TokenAction};

/// Exit code of an error: bad input, a refusal, an unreachable server.
pub(crate) const EXIT_ERROR: u8 = 1;

/// An error that ends the command with a given exit code (`submit
/// --wait`'s outcomes) rather than [`EXIT_ERROR`].
#[derive(Debug)]
pub(crate) struct Exit {
    /// The process's exit code.
    pub(crate) code: u8,
    /// What to say on stderr, if anything.
    pub(crate) message: Option<String>,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message.as_deref().unwrap_or(""))
    }
}

impl std::error::Error for Exit {}

fn main() {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => usage_error(e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
    let json = cli.command.client_opts().is_some_and(|c| c.json) || cli.client.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(EXIT_ERROR.into());
        }
    };
    if let Err(e) = runtime.block_on(run(cli, &matches)) {
        std::process::exit(report(&e, json).into());
    }
}

/// Ends the process on a command line that does not parse: clap's own
/// report (exit code 2), or with `--json` among the arguments, one JSON
/// object on stderr. Help and version requests print as usual.
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    let wants_json = std::env::args_os().skip(1).any(|a| a == "--json");
    let help = matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if !wants_json || help {
        e.exit();
    }
    // clap's first line is the error itself ("error: unexpected argument
    // '--bogus' found"); the rest is usage for people.
    let full = e.to_string();
    let message = full
        .lines()
        .next()
        .unwrap_or("invalid command line")
        .trim_start_matches("error: ")
        .to_owned();
    eprintln!("{}", serde_json::json!({"error": message, "exit_code": 2}));
    std::process::exit(2);
}

/// Prints an error on stderr (one line, or one JSON object with `--json`)
/// and returns the exit code.
fn report(e: &anyhow::Error, json: bool) -> u8 {
    let (code, message) = match e.downcast_ref::<Exit>() {
        Some(exit) => (exit.code, exit.message.clone()),
        None => (EXIT_ERROR, Some(one_line(e))),
    };
    let Some(message) = message else {
        return code;
    };
    if json {
        let mut doc = serde_json::json!({"error": message, "exit_code": code});
        let problem = e
            .downcast_ref::<commands::Refused>()
            .map(|r| &r.problem)
            .or_else(
                || match e.chain().find_map(|c| c.downcast_ref::<ClientError>()) {
                    Some(ClientError::Api(p)) => Some(p),
                    _ => None,
                },
            );
        if let Some(p) = problem {
            doc["status"] = p.status.into();
            doc["problem"] = serde_json::to_value(p).unwrap_or_default();
        }
        eprintln!("{doc}");
    } else {
        eprintln!("error: {message}");
    }
    code
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

/// Logs to stderr at `default` level (`RUST_LOG` changes it). As text,
/// coloured only when stderr is a terminal and `NO_COLOR` is unset or
/// empty; as JSON, one object per line with the event's `timestamp`,
/// `level`, `target` and `fields` (`message` among them).
pub(crate) fn init_logs(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => logs
            .with_ansi(colour_allowed(std::io::stderr().is_terminal()))
            .with_target(false)
            .try_init(),
        LogFormat::Json => logs.json().with_ansi(false).try_init(),
    };
}

/// Whether output to a stream may carry ANSI colours: only to a terminal,
/// and not when `NO_COLOR` is set to anything but "" (no-color.org).
pub(crate) fn colour_allowed(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The client options given on the command line before the command, which
/// only client commands (and `worker`, but for `--json`) use.
fn refuse_root_client_options(matches: &clap::ArgMatches, command: &Command) -> Result<()> {
    let allowed: &[&str] = match command {
        c if c.client_opts().is_some() => return Ok(()),
        Command::Worker { .. } => &["server", "token", "ca"],
        _ => &[],
    };
    for flag in ["server", "token", "ca", "json"] {
        if !allowed.contains(&flag) && matches.value_source(flag) == Some(ValueSource::CommandLine)
        {
            bail!(
                "--{flag} is a client option; `dispatch {}` does not use it",
                command.name()
            );
        }
    }
    Ok(())
}

/// The client options in force: those after the command, else those
/// before it; a flag on the command line wins over the environment.
fn client_options(
    root: &cli::RootClientOpts,
    sub: &ClientOpts,
    matches: &clap::ArgMatches,
) -> ClientOpts {
    let sub_matches = matches.subcommand().map(|(_, m)| m);
    let from_sub_line = |id: &str| {
        // The value may sit one level further down (`queue pause`).
        let mut m = sub_matches;
        while let Some(x) = m {
            if x.try_get_raw(id).ok().flatten().is_some()
                && x.value_source(id) == Some(ValueSource::CommandLine)
            {
                return true;
            }
            m = x.subcommand().map(|(_, m)| m);
        }
        false
    };
    fn pick<T: Clone>(from_sub_line: bool, sub: &Option<T>, root: &Option<T>) -> Option<T> {
        if from_sub_line || root.is_none() {
            sub.clone()
        } else {
            root.clone()
        }
    }
    ClientOpts {
        server: pick(from_sub_line("server"), &sub.server, &root.server),
        token: pick(from_sub_line("token"), &sub.token, &root.token),
        ca: pick(from_sub_line("ca"), &sub.ca, &root.ca),
        json: sub.json || root.json,
    }
}

async fn run(cli: Cli, matches: &clap::ArgMatches) -> Result<()> {
    refuse_root_client_options(matches, &cli.command)?;
    match cli.command {
        Command::Server(args) => run_server(*args).await,
        Command::Demo { tasks, workers } => demo::run(tasks, workers).await,
        Command::Token {
            action:
                TokenAction::Create {
                    scope,
                    name,
                    tokens,
                },
        } => create_token(&scope, name.as_deref(), &tokens),
        Command::Token {
            action: TokenAction::List { tokens, json },
        } => list_tokens(&tokens, json),
        Command::Token {
            action: TokenAction::Revoke { name, tokens },
        } => revoke_token(&name, &tokens),
        Command::Completions { shell } => install_files::completions(shell),
        Command::Man { out } => install_files::man(out.as_deref()),
        Command::Worker {
            config,
            log_format,
            client,
        } => {
            let root = &cli.client;
            let sub_given = |id: &str| {
                matches
                    .subcommand()
                    .is_some_and(|(_, m)| m.value_source(id) == Some(ValueSource::CommandLine))
            };
            let server = if sub_given("server") {
                client.server
            } else {
                root.server.clone().or(client.server)
            };
            let token = if sub_given("token") {
                client.token
            } else {
                root.token.clone().or(client.token)
            };
            let ca = if sub_given("ca") {
                client.ca
            } else {
                root.ca.clone().or(client.ca)
            };
            let server = server.filter(|s| !s.is_empty());
            worker::run(&config, server, token, ca.as_deref(), log_format).await
        }
        command => {
            let sub = command.client_opts().cloned().unwrap_or_default();
            let opts = client_options(&cli.client, &sub, matches);
            commands::run(command, &opts).await
        }
    }
}

/// `dispatch server`.
async fn run_server(args: ServerArgs) -> Result<()> {
    init_logs("info", args.log_format);
    if args.lease_ms == 0 {
        bail!("--lease-ms must be at least 1");
    }
    let listen = resolve_listen(&args.listen, args.tokens.is_some(), args.insecure)?;
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    // The config file is checked before the store is opened: a mistake in
    // it is the one line the server prints.
    let queue_settings = args
        .config
        .as_deref()
        .map(server_config::load)
        .transpose()?;
    // Opening blocks (PostgreSQL's client drives its own runtime).
    let opened = {
        let (data, url, durability) = (args.data.clone(), args.store.clone(), args.durability);
        tokio::task::spawn_blocking(move || store::open(&data, url.as_deref(), durability))
            .await??
    };
    let mut config = dispatch_server::ServerConfig::new(listen, opened.name.clone());
    if args.store.is_some() {
        config.cluster = Some(store::cluster_config(&args, listen, scheme)?);
    }
    if let Some(settings) = queue_settings {
        config.queue_settings = settings;
    }
    if let Some(path) = args.tokens {
        config.tokens = Some(dispatch_server::Tokens::load(&path)?);
    }
    config.insecure = args.insecure;
    config.max_live_tasks = args.max_live_tasks;
    config.max_tasks_per_request = args.max_tasks_per_request;
    config.max_memory_bytes = args.max_memory_mb.saturating_mul(1 << 20);
    config.audit_log = args.audit_log;
    args.limits.apply(&mut config);
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(dispatch_server::TlsFiles { cert, key });
    }
    config.lease_ms = args.lease_ms;
    config.collect_ms = args.collect_timeout_ms;
    config.idle_tick_ms = args.idle_tick_ms;
    config.retention_ms = args.retention_ms;
    config.max_body_bytes = args.max_body_bytes;
    let server = dispatch_server::start(config, opened.store.clone()).await?;
    println!(
        "dispatch server listening on {scheme}://{}",
        server.local_addr()
    );
    server.run_until_signal().await;
    // The folder's lock is released only now, after the last commit.
    drop(opened);
    Ok(())
}

/// The address to bind for `--listen`: an IP:PORT, or a HOST:PORT whose
/// name is resolved. Without tokens (and without `--insecure`) every
/// address the name resolves to must be loopback, so that a name that also
/// points beyond the machine is refused like a public address.
fn resolve_listen(listen: &str, tokens: bool, insecure: bool) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs as _;
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .with_context(|| format!("--listen {listen}: expected IP:PORT or HOST:PORT"))?
        .collect();
    choose_listen(listen, &addrs, tokens || insecure)
}

/// The address to bind among those `listen` resolved to: the first IPv4
/// one (clients default to 127.0.0.1), else the first. `exposed_ok`: a
/// non-loopback address is allowed (tokens or `--insecure`).
fn choose_listen(listen: &str, addrs: &[SocketAddr], exposed_ok: bool) -> Result<SocketAddr> {
    let Some(first) = addrs.first() else {
        bail!("--listen {listen}: the name resolves to no address");
    };
    if !exposed_ok && let Some(open) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        bail!(
            "refusing to listen on {listen} ({}, not loopback) without tokens: anyone who can \
             reach it could submit and run tasks; pass --tokens FILE (see `dispatch token \
             create`) or --insecure",
            open.ip()
        );
    }
    Ok(*addrs.iter().find(|a| a.is_ipv4()).unwrap_or(first))
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

/// `dispatch token list`: the tokens of a file, without their secrets.
fn list_tokens(file: &std::path::Path, json: bool) -> Result<()> {
    let tokens = dispatch_server::Tokens::load(file)?;
    for t in tokens.list() {
        let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
        if json {
            println!(
                "{}",
                serde_json::json!({"name": t.name, "scopes": scopes, "created": t.created})
            );
        } else {
            println!(
                "{:<24} {:<20} {}",
                t.name.as_deref().unwrap_or("-"),
                scopes.join(","),
                t.created.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}

/// `dispatch token revoke`: the file without the tokens of that name,
/// written whole to a new file that then replaces it.
fn revoke_token(name: &str, file: &std::path::Path) -> Result<()> {
    use std::io::Write as _;
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the token file {}", file.display()))?;
    // Refuse a file the server would refuse too, before changing it.
    dispatch_server::Tokens::parse(&text).with_context(|| file.display().to_string())?;
    let (kept, removed) = dispatch_server::auth::without_token(&text, name);
    if removed == 0 {
        bail!("no token named {name:?} in {}", file.display());
    }
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
    let mut tmp = tempfile::NamedTempFile::new_in(dir.unwrap_or(std::path::Path::new(".")))
        .with_context(|| format!("cannot write next to {}", file.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(file).map_or(0o600, |m| m.permissions().mode());
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))?;
    }
    tmp.write_all(kept.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write the token file {}", file.display()))?;
    tmp.persist(file)
        .with_context(|| format!("cannot replace the token file {}", file.display()))?;
    eprintln!(
        "revoked {removed} token(s) named {name} in {}; a running server refuses them once it reads the file (within a second, or on SIGHUP)",
        file.display()
    );
    Ok(())
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
    let created = dispatch_proto::time::format_rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    );
    let line = dispatch_server::auth::token_line_created(&token, &scopes, name, &created);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_host_name_binds_its_first_ipv4_address() {
        let both = [addr("[::1]:7070"), addr("127.0.0.1:7070")];
        assert_eq!(
            choose_listen("localhost:7070", &both, false).unwrap(),
            addr("127.0.0.1:7070")
        );
        let v6 = [addr("[::1]:7070")];
        assert_eq!(
            choose_listen("ip6-localhost:7070", &v6, false).unwrap(),
            addr("[::1]:7070")
        );
        assert!(choose_listen("nothing:7070", &[], true).is_err());
    }

    #[test]
    fn a_name_that_resolves_beyond_loopback_needs_tokens_or_insecure() {
        let mixed = [addr("127.0.0.1:7070"), addr("10.0.0.7:7070")];
        let err = choose_listen("box.lan:7070", &mixed, false).unwrap_err();
        let err = err.to_string();
        assert!(
            err.contains("box.lan:7070") && err.contains("10.0.0.7"),
            "{err}"
        );
        assert!(
            err.contains("--tokens") && err.contains("--insecure"),
            "{err}"
        );
        assert_eq!(
            choose_listen("box.lan:7070", &mixed, true).unwrap(),
            addr("127.0.0.1:7070")
        );
        assert!(choose_listen("0.0.0.0:0", &[addr("0.0.0.0:0")], false).is_err());
    }

    #[test]
    fn colours_need_a_terminal() {
        assert!(!colour_allowed(false));
    }

    #[test]
    fn the_command_line_parses() {
        Cli::command().debug_assert();
    }
}
