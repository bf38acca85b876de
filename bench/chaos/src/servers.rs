//! The servers of a chaos run: one `dispatch server` on the embedded store,
//! or several replicas on one PostgreSQL database, of which one leads. The
//! run asks them for the live tasks, and kills the server or strikes the
//! leader (SIGKILL, or SIGSTOP past its lease then SIGCONT) and measures
//! the takeover.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use dispatch_client::Client;
use serde_json::Value;

use crate::procs::{Server, ServerSpec};

/// How long one `/healthz` probe may take: a frozen replica accepts the
/// connection and never answers.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How the leader is struck.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Strike {
    /// SIGKILL, then a restart on its port once another replica leads.
    Kill,
    /// SIGSTOP for the given time (past the lease), then SIGCONT.
    Stop(Duration),
}

/// What one strike of the leader did.
pub(crate) struct Struck {
    /// When the leader was killed or stopped (epoch µs).
    pub(crate) at: u64,
    /// From the strike to the first `/healthz` of another replica saying
    /// it leads at a higher epoch; `None` if none did while the leader was
    /// frozen.
    pub(crate) takeover: Option<Duration>,
}

/// The run's servers, one or several.
pub(crate) struct Servers {
    list: Vec<Server>,
    probes: Vec<Client>,
    /// Replicas on one store, one of which leads.
    clustered: bool,
    /// The replica that led at the last look.
    leader: usize,
}

impl Servers {
    /// Starts every server in turn (each answering `/healthz`), then, for
    /// replicas (`clustered`), waits until one leads.
    pub(crate) async fn start(
        specs: Vec<ServerSpec>,
        clustered: bool,
        deadline: Instant,
    ) -> Result<Servers> {
        let mut list = Vec::new();
        let mut probes = Vec::new();
        for spec in specs {
            let server = Server::start(spec).await?;
            probes.push(Client::new(server.url())?);
            list.push(server);
        }
        let mut servers = Servers {
            list,
            probes,
            clustered,
            leader: 0,
        };
        if clustered {
            servers.find_leader(None, deadline).await?;
        }
        Ok(servers)
    }

    /// Every server's URL, comma-separated.
    pub(crate) fn urls(&self) -> String {
        let urls: Vec<&str> = self.list.iter().map(Server::url).collect();
        urls.join(",")
    }

    /// Fails if a server exited on its own.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        for s in &mut self.list {
            s.check_alive()?;
        }
        Ok(())
    }

    async fn probe(&self, i: usize) -> Option<Value> {
        tokio::time::timeout(PROBE_TIMEOUT, self.probes[i].health())
            .await
            .ok()?
            .ok()
    }

    /// The live tasks of the lone server or of the leader, if it answers.
    pub(crate) async fn live_tasks(&mut self) -> Option<u64> {
        if !self.clustered {
            let h = tokio::time::timeout(Duration::from_secs(2), self.probes[0].health())
                .await
                .ok()?
                .ok()?;
            return h["live_tasks"].as_u64();
        }
        if let Some(h) = self.probe(self.leader).await
            && h["role"] == "leader"
        {
            return h["live_tasks"].as_u64();
        }
        let (i, _) = self.scan(None).await?;
        self.leader = i;
        self.probe(i).await?["live_tasks"].as_u64()
    }

    /// One look at every replica: the one that leads at the highest epoch
    /// (above `above`, if given), and that epoch.
    async fn scan(&self, above: Option<u64>) -> Option<(usize, u64)> {
        let mut best: Option<(usize, u64)> = None;
        for i in 0..self.list.len() {
            let Some(h) = self.probe(i).await else {
                continue;
            };
            let epoch = h["epoch"].as_u64().unwrap_or(0);
            if h["role"] == "leader"
                && above.is_none_or(|a| epoch > a)
                && best.is_none_or(|(_, e)| epoch > e)
            {
                best = Some((i, epoch));
            }
        }
        best
    }

    /// Waits (until `deadline`) for a replica to lead, at an epoch above
    /// `above` if given.
    async fn find_leader(&mut self, above: Option<u64>, deadline: Instant) -> Result<(usize, u64)> {
        loop {
            if let Some((i, epoch)) = self.scan(above).await {
                self.leader = i;
                return Ok((i, epoch));
            }
            if Instant::now() >= deadline {
                bail!(
                    "no replica leads (above epoch {above:?})\nlast replica's log:\n{}",
                    self.list[self.list.len() - 1].log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs the lone server, waits `down`, and restarts it; returns the
    /// time of the kill.
    pub(crate) async fn kill_server(&mut self, down: Duration) -> Result<u64> {
        let at = self.list[0].sigkill()?;
        tokio::time::sleep(down).await;
        self.list[0].restart().await?;
        Ok(at)
    }

    /// Strikes the leader, measures the takeover, then brings the struck
    /// replica back: restarted on its port after a kill, continued after a
    /// stop; returns once it answers `/healthz` again.
    pub(crate) async fn strike_leader(&mut self, how: Strike, deadline: Instant) -> Result<Struck> {
        let (old, epoch) = self.find_leader(None, deadline).await?;
        let at = match how {
            Strike::Kill => self.list[old].sigkill()?,
            Strike::Stop(_) => self.list[old].sigstop()?,
        };
        let struck = Instant::now();
        let thaw = match how {
            Strike::Stop(d) => Some(struck + d),
            Strike::Kill => None,
        };
        let mut takeover = None;
        loop {
            let mut found = None;
            for i in (0..self.list.len()).filter(|&i| i != old) {
                if let Some(h) = self.probe(i).await
                    && h["role"] == "leader"
                    && h["epoch"].as_u64().is_some_and(|e| e > epoch)
                {
                    found = Some(i);
                    break;
                }
            }
            if let Some(i) = found {
                takeover = Some(struck.elapsed());
                self.leader = i;
                break;
            }
            if thaw.is_some_and(|t| Instant::now() >= t) {
                break;
            }
            if Instant::now() >= deadline {
                bail!("no replica took over from replica {old} (epoch {epoch}) in time");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match thaw {
            None => self.list[old].restart().await?,
            Some(t) => {
                tokio::time::sleep_until(t.into()).await;
                self.list[old].sigcont();
                // Back: it answers again, as a standby once fenced.
                while self.probe(old).await.is_none() {
                    if Instant::now() >= deadline {
                        bail!("replica {old} did not answer after SIGCONT");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Ok(Struck { at, takeover })
    }

    /// The last lines of the logs of every server.
    pub(crate) fn log_tail(&self) -> String {
        let tails: Vec<String> = self
            .list
            .iter()
            .enumerate()
            .map(|(i, s)| format!("-- server {i} --\n{}", s.log_tail()))
            .collect();
        tails.join("\n")
    }
}
