//! The server's own state on the wire: `GET /healthz` ([`HealthJson`]) and
//! `GET /v1/cluster` ([`ClusterJson`]).

use serde::{Deserialize, Serialize};

/// `GET /healthz`: 200 while the leader's store takes writes, 503 while it
/// fails; a standby always answers 200 with its role.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthJson {
    /// `ok`, `store_unavailable` (the leader cannot write: nothing new is
    /// accepted) or `taking_over` (this replica is becoming the leader).
    pub status: String,
    /// `leader` or `standby` (a lone server always leads).
    pub role: String,
    /// The leadership term this replica knows of (0 on the embedded store).
    pub epoch: u64,
    /// This replica's id.
    pub replica: String,
    /// The leader's URL, when one is known.
    pub leader_url: Option<String>,
    /// Live (unfinished) tasks; the leader only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_tasks: Option<u64>,
    /// Registered workers; the leader only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<u64>,
    /// Why the store fails, while it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreFailureJson>,
}

/// The store's failure, as `/healthz` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoreFailureJson {
    /// The last error the store gave.
    pub error: Option<String>,
    /// Writes kept in memory, to be stored once the store works again.
    pub retained_writes: u64,
}

/// `GET /v1/cluster`: the replicas sharing the store.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterJson {
    /// The partition the leader holds the lease of.
    pub partition: String,
    /// The current leadership term.
    pub epoch: u64,
    /// The leader's replica id, when one is known.
    pub leader: Option<String>,
    /// The id of the replica that answered.
    pub replica: String,
    /// Every replica the store knows of.
    pub replicas: Vec<ReplicaJson>,
}

/// One replica in [`ClusterJson`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaJson {
    /// Its id.
    pub id: String,
    /// The URL it advertises.
    pub url: String,
    /// `leader` or `standby`.
    pub role: String,
    /// When it last claimed or renewed its presence.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub last_seen_at: String,
    /// Seen within the last two leases.
    pub alive: bool,
}
