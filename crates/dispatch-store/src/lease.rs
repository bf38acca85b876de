//! Leadership of the scheduler replicas: a lease per partition, with an
//! epoch that fences out a leader that lost it.
//!
//! Several schedulers share one store; one of them leads a partition (one
//! partition, [`DEFAULT_PARTITION`], today) and runs the core, the others
//! stand by. The lease lives in the store, timed by the store's own clock,
//! so that the replicas' clocks do not matter. Every takeover raises the
//! partition's epoch, and the leader's write batches begin with a
//! [`crate::Write::Fence`] naming the epoch it leads under: once another
//! replica has taken over, the old leader's batches fail with
//! [`crate::ErrorKind::Fenced`] and store nothing, however late they come.

use dispatch_core::Millis;

/// The partition every replica contends for today.
pub const DEFAULT_PARTITION: &str = "default";

/// A scheduler replica, as it names itself to the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// Unique among the replicas of one store.
    pub id: String,
    /// Where clients, workers and the other replicas reach it.
    pub url: String,
}

/// A partition's lease, as a claim left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Raised by one at every takeover: a new holder, or a holder taking
    /// back its own lease after it expired.
    pub epoch: u64,
    /// The holder's replica id.
    pub holder: String,
    /// The holder's URL.
    pub holder_url: String,
    /// Whether the replica that claimed holds it now.
    pub held: bool,
    /// Time left on the lease, on the store's clock; 0 once it expired.
    pub remaining_ms: u64,
}

/// A replica as the store last saw it (at its last claim).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaRecord {
    /// Its id.
    pub id: String,
    /// Its URL.
    pub url: String,
    /// When it last claimed or renewed, on the store's clock (milliseconds
    /// since the Unix epoch).
    pub last_seen_at: Millis,
}
