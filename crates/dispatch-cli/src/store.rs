//! `dispatch server`'s store: the embedded SQLite folder (`--data`), or a
//! PostgreSQL database shared by replicas (`--store`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use dispatch_server::ClusterConfig;
use dispatch_store::{Replica, Store};
use dispatch_store_postgres::{PgOptions, PgStore};
use dispatch_store_sqlite::{Durability, FolderLock, SqliteStore};

use crate::cli::{DurabilityArg, ServerArgs};

/// An open store and what must live as long as the server.
pub(crate) struct Opened {
    pub(crate) store: Arc<dyn Store>,
    /// How logs and errors name it.
    pub(crate) name: String,
    /// The data folder's lock (SQLite), released when dropped.
    _lock: Option<FolderLock>,
}

/// Opens the store the flags name: the PostgreSQL database `url`
/// (`--store`), else the SQLite folder `data` (`--data`). Blocks: call it
/// off the async runtime.
pub(crate) fn open(data: &Path, url: Option<&str>, durability: DurabilityArg) -> Result<Opened> {
    match url {
        Some(url) => open_postgres(url, durability),
        None => open_sqlite(data, durability),
    }
}

fn open_sqlite(data: &Path, durability: DurabilityArg) -> Result<Opened> {
    // The lock first: a second server on the folder is refused before it
    // touches the database.
    let lock = dispatch_store_sqlite::lock_folder(data)?;
    let durability = match durability {
        DurabilityArg::Durable => Durability::Durable,
        DurabilityArg::Relaxed => Durability::Relaxed,
    };
    let store = SqliteStore::open(data, durability)
        .with_context(|| format!("cannot open the store in {}", data.display()))?;
    Ok(Opened {
        store: Arc::new(store),
        name: data.display().to_string(),
        _lock: Some(lock),
    })
}

fn open_postgres(url: &str, durability: DurabilityArg) -> Result<Opened> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        bail!(
            "--store takes a postgres://USER@HOST:PORT/DATABASE URL, not {:?}",
            redact(url)
        );
    }
    let options = PgOptions {
        durability: match durability {
            DurabilityArg::Durable => dispatch_store_postgres::Durability::Durable,
            DurabilityArg::Relaxed => dispatch_store_postgres::Durability::Relaxed,
        },
        ..PgOptions::default()
    };
    let name = redact(url);
    let store = PgStore::connect_with(url, options)
        .with_context(|| format!("cannot open the store {name}"))?;
    Ok(Opened {
        store: Arc::new(store),
        name,
        _lock: None,
    })
}

/// The replica's part of the cluster, from `--advertise-url`,
/// `--replica-id` and `--leader-lease-ms`.
pub(crate) fn cluster_config(
    args: &ServerArgs,
    listen: SocketAddr,
    scheme: &str,
) -> Result<ClusterConfig> {
    let url = match &args.advertise_url {
        Some(u) => {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                bail!("--advertise-url must be an http:// or https:// URL, not {u:?}");
            }
            u.trim_end_matches('/').to_owned()
        }
        None if listen.ip().is_unspecified() => bail!(
            "--listen {listen} is a wildcard address: give --advertise-url, the URL other replicas, clients and workers reach this server at"
        ),
        None => format!("{scheme}://{listen}"),
    };
    let id = args.replica_id.clone().unwrap_or_else(|| url.clone());
    if id.is_empty() || id.len() > 200 {
        bail!("--replica-id must be 1 to 200 characters");
    }
    Ok(ClusterConfig {
        replica: Replica { id, url },
        lease_ms: args.leader_lease_ms,
    })
}

/// The URL without its password, for logs and errors.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
