//! The chaos run: a durable server, worker processes on both transports,
//! concurrent submitters, and SIGKILLs of workers and of the server on a
//! seeded schedule; then the check that every acknowledged task ended and
//! that every task run twice was run twice for a reason.
//!
//! With `--store postgres` the run starts its own PostgreSQL cluster and
//! `--replicas` servers on it; the workers are given every replica's URL,
//! and instead of server kills the leader is struck, alternately SIGKILLed
//! (then restarted on its port) and SIGSTOPped past its lease (then
//! SIGCONTed). Each takeover is timed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use dispatch_client::Client;
use dispatch_proto::ListTasks;

use crate::analysis::{self, FinalTask, Kills, ResultMark};
use crate::execlog;
use crate::pgcluster::PgCluster;
use crate::plan::{self, Target};
use crate::procs::{self, Proc, ServerSpec};
use crate::report::{Replicas, Report};
use crate::servers::{Servers, Strike};
use crate::submit;
use crate::worker::TASK_TYPE;

#[derive(Args, Debug)]
pub(crate) struct ChaosArgs {
    /// The `dispatch` binary (default: next to this one).
    #[arg(long, env = "DISPATCH_BIN")]
    dispatch: Option<PathBuf>,
    /// Tasks submitted.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    tasks: u64,
    /// Worker processes at any time, half HTTP and half gRPC.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(2..=64))]
    workers: u64,
    /// Tasks each worker runs at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    concurrency: u64,
    /// Worker processes SIGKILLed (each replaced by a new one).
    #[arg(long, default_value_t = 20)]
    worker_kills: u32,
    /// Server SIGKILLs (each restarted on the same data and port).
    #[arg(long, default_value_t = 3)]
    server_kills: u32,
    /// The store: `embedded` (one server on its data folder) or `postgres`
    /// (a throwaway PostgreSQL cluster the run starts, and `--replicas`
    /// servers on it, whose leader is struck instead of server kills).
    #[arg(long, default_value = "embedded", value_parser = ["embedded", "postgres"])]
    store: String,
    /// With `--store postgres`: the replicas of `dispatch server`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=9))]
    replicas: u64,
    /// With `--store postgres`: strikes of the leader, alternately SIGKILL
    /// (restarted on its port) and SIGSTOP for twice its lease (then
    /// SIGCONT).
    #[arg(long, default_value_t = 5)]
    leader_kills: u32,
    /// With `--store postgres`: the replicas' `--leader-lease-ms`.
    #[arg(long, default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(300..))]
    leader_lease_ms: u64,
    /// Seed of the kill schedule and the tasks' work.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Server durability mode.
    #[arg(long, default_value = "durable", value_parser = ["durable", "relaxed"])]
    durability: String,
    /// The server's `--lease-ms`: how soon a silent worker is declared dead.
    #[arg(long, default_value_t = 1_500)]
    lease_ms: u64,
    /// Tasks per batch submission.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch: u64,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    submitters: u64,
    /// Longest work of a task, in ms (each sleeps a seeded 0..=this).
    #[arg(long, default_value_t = 20)]
    max_sleep_ms: u64,
    /// Each task's `max_attempts`.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i64).range(1..=100))]
    max_attempts: i64,
    /// How long the server stays down after each SIGKILL, in ms.
    #[arg(long, default_value_t = 500)]
    server_down_ms: u64,
    /// The loopback port (default: a free one, kept across restarts); the
    /// replicas take the ports from it up.
    #[arg(long)]
    port: Option<u16>,
    /// Give up (and clean up) after this many seconds in all.
    #[arg(long, default_value_t = 280, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) timeout_secs: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Keep the temporary folder (servers' logs, execution logs), whatever
    /// the outcome, and print where it is.
    #[arg(long)]
    keep: bool,
    /// Stop (and clean up) when standard input closes: a parent that
    /// holds the other end dies, and takes the run with it.
    #[arg(long, hide = true)]
    pub(crate) stop_when_stdin_closes: bool,
}

fn progress(msg: &str) {
    eprintln!("[dispatch-chaos] {msg}");
}

/// The worker processes, one per slot; even slots speak HTTP, odd gRPC.
struct Fleet {
    exe: PathBuf,
    url: String,
    logs: PathBuf,
    stderr: PathBuf,
    concurrency: u64,
    slots: Vec<Proc>,
    started: u32,
    /// The pids of every gRPC worker started.
    grpc_pids: HashSet<u32>,
}

impl Fleet {
    fn transport(slot: usize) -> &'static str {
        if slot.is_multiple_of(2) {
            "http"
        } else {
            "grpc"
        }
    }

    fn spawn(&mut self, slot: usize) -> Result<Proc> {
        self.started += 1;
        let name = format!("chaos-{}-{}", Fleet::transport(slot), self.started);
        let err = procs::open_append(&self.stderr)?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("worker")
            .args(["--server", &self.url, "--name", &name])
            .args(["--transport", Fleet::transport(slot)])
            .args(["--concurrency", &self.concurrency.to_string()])
            .arg("--log")
            .arg(self.logs.join(format!("{name}.log")))
            .stdout(err.try_clone()?)
            .stderr(err);
        let p = Proc::spawn(&name, cmd, false)?;
        if Fleet::transport(slot) == "grpc" {
            self.grpc_pids.insert(p.pid());
        }
        Ok(p)
    }

    fn start(&mut self, n: usize) -> Result<()> {
        for slot in 0..n {
            let p = self.spawn(slot)?;
            self.slots.push(p);
        }
        Ok(())
    }

    /// SIGKILLs the worker in `slot` and starts its replacement; returns
    /// the killed pid and the time of the kill.
    fn kill(&mut self, slot: usize) -> Result<(u32, u64)> {
        let fresh = self.spawn(slot)?;
        let mut old = std::mem::replace(&mut self.slots[slot], fresh);
        let pid = old.pid();
        Ok((pid, old.sigkill()?))
    }

    /// Fails if a worker exited without being killed.
    fn check(&mut self) -> Result<()> {
        for p in &mut self.slots {
            if let Some(status) = p.exited()? {
                let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                bail!(
                    "worker {} exited on its own: {status}\nworkers' output:\n{}",
                    p.name(),
                    lines[lines.len().saturating_sub(20)..].join("\n")
                );
            }
        }
        Ok(())
    }
}

/// Runs the chaos run; the report says whether it passed.
pub(crate) async fn run(args: &ChaosArgs, deadline: Instant) -> Result<Report> {
    let dispatch = procs::dispatch_binary(args.dispatch.as_deref())?;
    // Declared first, dropped last: after every process using it.
    let mut dir = tempfile::Builder::new()
        .prefix("dispatch-chaos-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    if args.keep {
        dir.disable_cleanup(true);
        progress(&format!("keeping {}", dir.path().display()));
    }
    let logs = dir.path().join("exec");
    std::fs::create_dir(&logs)?;
    let postgres = args.store == "postgres";
    if args.replicas > 1 && !postgres {
        bail!("--replicas needs --store postgres");
    }
    let replicas = if postgres { args.replicas as usize } else { 1 };
    let ports = ports(args.port, replicas)?;
    // Dropped after the servers, before the folder it lives in.
    let pg = if postgres {
        progress("starting a throwaway PostgreSQL cluster");
        Some(PgCluster::start(&dir.path().join("postgres"))?)
    } else {
        None
    };
    let mut common = vec![
        "--durability".to_owned(),
        args.durability.clone(),
        "--lease-ms".to_owned(),
        args.lease_ms.to_string(),
    ];
    let specs: Vec<ServerSpec> = match &pg {
        Some(pg) => {
            common.extend([
                "--store".to_owned(),
                pg.url(),
                "--leader-lease-ms".to_owned(),
                args.leader_lease_ms.to_string(),
            ]);
            (0..replicas)
                .map(|i| ServerSpec {
                    name: format!("replica {i}"),
                    bin: dispatch.clone(),
                    port: ports[i],
                    log: dir.path().join(format!("replica-{i}.log")),
                    args: common.clone(),
                })
                .collect()
        }
        None => {
            common.extend([
                "--data".to_owned(),
                dir.path().join("data").display().to_string(),
            ]);
            vec![ServerSpec {
                name: "dispatch server".to_owned(),
                bin: dispatch.clone(),
                port: ports[0],
                log: dir.path().join("server.log"),
                args: common,
            }]
        }
    };
    progress(&format!(
        "starting {} {} on 127.0.0.1:{ports:?} ({} store, {} mode, lease {} ms)",
        replicas,
        dispatch.display(),
        args.store,
        args.durability,
        args.lease_ms
    ));
    let mut servers = Servers::start(specs, postgres, deadline).await?;
    let client = Client::new(&servers.urls())?;
    let workers = args.workers as usize;
    let mut fleet = Fleet {
        exe: std::env::current_exe().context("cannot locate this binary")?,
        url: servers.urls(),
        logs: logs.clone(),
        stderr: dir.path().join("workers.txt"),
        concurrency: args.concurrency,
        slots: Vec::new(),
        started: 0,
        grpc_pids: HashSet::new(),
    };
    fleet.start(workers)?;
    let strikes = if postgres {
        args.leader_kills
    } else {
        args.server_kills
    };
    let schedule = plan::schedule(args.seed, args.worker_kills, strikes, workers);
    progress(&format!(
        "{} tasks, {workers} workers of {} slots, {} worker SIGKILLs and {strikes} {} (seed {})",
        args.tasks,
        args.concurrency,
        args.worker_kills,
        if postgres {
            "leader SIGKILLs/SIGSTOPs"
        } else {
            "server SIGKILLs"
        },
        args.seed
    ));
    let stop_for = Duration::from_millis(2 * args.leader_lease_ms);
    let mut takeovers = Vec::new();
    let (mut leader_sigkills, mut leader_sigstops) = (0u32, 0u32);

    let started = Instant::now();
    let (acks, mut submitters) = submit::spawn(
        &client,
        submit::Plan {
            tasks: args.tasks,
            batch: args.batch,
            submitters: args.submitters,
            max_sleep_ms: args.max_sleep_ms,
            max_attempts: args.max_attempts,
            seed: args.seed,
        },
    );
    let mut kills = Kills::default();
    let (mut worker_kills, mut server_kills) = (0u32, 0u32);
    let mut submit_time = None;
    let mut live = u64::MAX;
    let mut due = schedule.iter().peekable();
    let drain_time = loop {
        while let Some(r) = submitters.try_join_next() {
            r.context("a submitter panicked")??;
        }
        let acked = acks.count.load(Ordering::Relaxed);
        if submit_time.is_none() && submitters.is_empty() {
            submit_time = Some(started.elapsed());
            progress(&format!("{acked} tasks acknowledged"));
        }
        servers.check_alive()?;
        fleet.check()?;
        if let Some(n) = servers.live_tasks().await {
            live = n;
        }
        let done = plan::progress(args.tasks, acked, acked.saturating_sub(live));
        if let Some(kill) = due.next_if(|k| k.at <= done) {
            match kill.target {
                Target::Worker(slot) => {
                    let (pid, at) = fleet.kill(slot)?;
                    kills.workers.insert(pid, at);
                    worker_kills += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Target::Server if postgres => {
                    // Alternately: SIGKILL, SIGSTOP, SIGKILL, ...
                    let how = if leader_sigkills <= leader_sigstops {
                        leader_sigkills += 1;
                        Strike::Kill
                    } else {
                        leader_sigstops += 1;
                        Strike::Stop(stop_for)
                    };
                    let struck = servers.strike_leader(how, deadline).await?;
                    kills.leader.push(struck.at);
                    progress(&format!(
                        "leader {} at {:.0}% ({acked} acknowledged, {live} live); {}",
                        if how == Strike::Kill {
                            "SIGKILLed, restarted"
                        } else {
                            "SIGSTOPped, continued"
                        },
                        done * 100.0,
                        struck
                            .takeover
                            .map_or("no takeover while it was frozen".to_owned(), |t| {
                                format!("a replica led {} ms later", t.as_millis())
                            })
                    ));
                    takeovers.push(struck.takeover);
                }
                Target::Server => {
                    let at = servers
                        .kill_server(Duration::from_millis(args.server_down_ms))
                        .await?;
                    kills.server.push(at);
                    server_kills += 1;
                    progress(&format!(
                        "server SIGKILLed at {:.0}% ({acked} acknowledged, {live} live); restarted",
                        done * 100.0
                    ));
                }
            }
            continue;
        }
        if submit_time.is_some() && due.peek().is_none() && live == 0 {
            break started.elapsed();
        }
        if Instant::now() >= deadline {
            bail!(
                "not drained in time: {acked} of {} acknowledged, {live} live, {worker_kills} worker \
                 and {} server kills done\nserver log:\n{}",
                args.tasks,
                server_kills + leader_sigkills + leader_sigstops,
                servers.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    progress(&format!(
        "drained in {:.1} s; checking every task",
        drain_time.as_secs_f64()
    ));

    let ids = std::mem::take(&mut *acks.ids.lock().unwrap_or_else(|e| e.into_inner()));
    // The store may still be committing the last finishes when the core
    // holds no live task: look again for up to 5 s before calling a task lost.
    let mut looks = 0;
    let (finals, terminal, lost) = loop {
        looks += 1;
        let finals = list_tasks(&client).await?;
        let (terminal, lost) = check_acknowledged(&ids, &finals);
        if lost.is_empty() || looks == 10 {
            break (finals, terminal, lost);
        }
        progress(&format!(
            "{} acknowledged tasks not terminal in the listing yet; looking again",
            lost.len()
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    kills.grpc_workers = std::mem::take(&mut fleet.grpc_pids);
    drop(fleet);
    drop(servers);
    drop(pg);
    let records = execlog::read_dir(&logs)?;
    let findings = analysis::analyse(&records, &kills, &finals);
    Ok(Report {
        seed: args.seed,
        tasks: args.tasks,
        http_workers: workers.div_ceil(2),
        grpc_workers: workers / 2,
        durability: args.durability.clone(),
        acknowledged: acks.count.load(Ordering::Relaxed),
        submit_retries: acks.retries.load(Ordering::Relaxed),
        terminal,
        lost,
        findings,
        worker_kills,
        server_kills,
        replicas: postgres.then_some(Replicas {
            count: replicas,
            leader_lease_ms: args.leader_lease_ms,
            sigkills: leader_sigkills,
            sigstops: leader_sigstops,
            stop_ms: stop_for.as_millis() as u64,
            takeovers,
        }),
        submit_time: submit_time.unwrap_or(drain_time),
        drain_time,
    })
}

/// `n` loopback ports: from `first` up, or free ones, all different.
fn ports(first: Option<u16>, n: usize) -> Result<Vec<u16>> {
    if let Some(p) = first {
        return Ok((0..n).map(|i| p + i as u16).collect());
    }
    let mut out: Vec<u16> = Vec::new();
    while out.len() < n {
        let p = procs::free_port()?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Every chaos task the server holds, by id.
async fn list_tasks(client: &Client) -> Result<HashMap<String, FinalTask>> {
    let mut out = HashMap::new();
    let mut cursor = None;
    loop {
        let page = client
            .tasks(&ListTasks {
                kind: Some(TASK_TYPE.to_owned()),
                limit: Some("1000".to_owned()),
                cursor: cursor.take(),
                ..ListTasks::default()
            })
            .await
            .context("cannot list the tasks")?;
        for t in page.tasks {
            let result = t
                .result
                .as_ref()
                .and_then(|r| serde_json::from_str::<ResultMark>(r.get()).ok());
            out.insert(
                t.id,
                FinalTask {
                    state: t.state,
                    result,
                },
            );
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

/// Counts the acknowledged tasks by terminal state, and describes the ones
/// missing or not terminal.
fn check_acknowledged(
    ids: &[Option<String>],
    finals: &HashMap<String, FinalTask>,
) -> (BTreeMap<String, u64>, Vec<String>) {
    let mut terminal = BTreeMap::new();
    let mut lost = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let Some(id) = id else { continue };
        match finals.get(id) {
            Some(t) if matches!(t.state.as_str(), "succeeded" | "dead" | "cancelled") => {
                *terminal.entry(t.state.clone()).or_insert(0) += 1;
            }
            Some(t) => lost.push(format!("task {i} ({id}) is still {}", t.state)),
            None => lost.push(format!("task {i} ({id}) is missing")),
        }
    }
    (terminal, lost)
}
